//! Logging through the host's `tracing` log (`foldhost:plugin/host.log`).
//!
//! ```
//! use foldhost_guest::log;
//! log::info!("opened account for {}", "ann");
//! log::write(log::Level::Warn, "plain message");
//! ```
//!
//! Inside wasm the host tags each line with the plugin; natively (tests,
//! benchmarks) lines go to stderr.

use std::fmt;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Finest detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected.
    Warn,
    /// A failure.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        })
    }
}

/// Writes one line at `level`.
#[cfg(target_arch = "wasm32")]
pub fn write(level: Level, message: &str) {
    use crate::bindings::host::{self, Level as L};
    let level = match level {
        Level::Trace => L::Trace,
        Level::Debug => L::Debug,
        Level::Info => L::Info,
        Level::Warn => L::Warn,
        Level::Error => L::Error,
    };
    host::log(level, message);
}

/// Writes one line at `level`.
#[cfg(not(target_arch = "wasm32"))]
pub fn write(level: Level, message: &str) {
    eprintln!("{level} {message}");
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_trace {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Trace, &::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __log_debug {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Debug, &::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __log_info {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Info, &::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __log_warn {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Warn, &::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __log_error {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Error, &::std::format!($($arg)+)) };
}

/// Logs at [`Level::Debug`] with `format!` arguments.
pub use crate::__log_debug as debug;
/// Logs at [`Level::Error`] with `format!` arguments.
pub use crate::__log_error as error;
/// Logs at [`Level::Info`] with `format!` arguments.
pub use crate::__log_info as info;
/// Logs at [`Level::Trace`] with `format!` arguments.
pub use crate::__log_trace as trace;
/// Logs at [`Level::Warn`] with `format!` arguments.
pub use crate::__log_warn as warn;
