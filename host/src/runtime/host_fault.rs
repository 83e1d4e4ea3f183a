//! A failure of the host itself while it loads a plugin (the compiler could not start or died,
//! memory ran out): never the plugin's fault, and never reported as if it were.

use std::fmt::Display;
use std::io;

/// The host failed, for the reason its message names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HostFault {
    /// What failed and why, in one line.
    pub message: String,
    /// Whether it may pass by itself: something others give back (memory, disk space,
    /// processes, open files) ran out.
    pub transient: bool,
}

impl HostFault {
    /// A fault described by `message`.
    pub fn new(message: impl Into<String>, transient: bool) -> Self {
        Self {
            message: message.into(),
            transient,
        }
    }

    /// `what` failed with the I/O `error`.
    pub fn io(what: impl Display, error: &io::Error) -> Self {
        Self::new(format!("{what}: {error}"), runs_out(error))
    }
}

/// Whether `error` says that something others give back ran out.
fn runs_out(error: &io::Error) -> bool {
    use io::ErrorKind::{OutOfMemory, QuotaExceeded, StorageFull, WouldBlock};
    matches!(
        error.kind(),
        StorageFull | QuotaExceeded | OutOfMemory | WouldBlock
    ) || matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausted_resources_are_transient_and_broken_ones_are_not() {
        let transient = |errno| HostFault::io("x", &io::Error::from_raw_os_error(errno)).transient;
        for errno in [
            libc::ENOSPC,
            libc::EDQUOT,
            libc::ENOMEM,
            libc::EAGAIN,
            libc::EMFILE,
            libc::ENFILE,
        ] {
            assert!(transient(errno), "errno {errno}");
        }
        for errno in [libc::EROFS, libc::EIO, libc::EACCES, libc::ENOENT] {
            assert!(!transient(errno), "errno {errno}");
        }
        let fault = HostFault::io(
            "could not start the compiler",
            &io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(
            fault.to_string(),
            "could not start the compiler: No such file or directory (os error 2)"
        );
    }
}
