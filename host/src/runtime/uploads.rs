//! Uploaded plugins kept in the data directory, one `NAME.wasm` each, so that a restart loads
//! them again (KurrentDB keeps the projections created through its API the same way).
//!
//! An upload replaces the plugin's file here before it is installed, so a plugin that answered
//! an upload is loaded again after a restart, even after `kill -9` or a power cut. Unloading
//! the plugin removes its file. The last build deployed wins: a file of the plugins directory
//! that loads as the same plugin replaces the upload (and removes it) if it changed after the
//! upload was stored, and is passed over if it did not (see [`Runtime::install_file`]).
//!
//! [`Runtime::install_file`]: super::Runtime::install_file

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// The directory of uploaded plugins.
#[derive(Clone)]
pub struct Uploads {
    dir: Arc<Path>,
}

/// An upload's file as it was before [`Uploads::store`] replaced it.
pub struct Before {
    bytes: Vec<u8>,
    modified: SystemTime,
}

impl Uploads {
    /// The uploads kept in `dir`, created (durably) if missing.
    pub fn open(dir: &Path) -> io::Result<Self> {
        crate::durable::create_dir_all(dir)?;
        Ok(Self {
            dir: Arc::from(dir),
        })
    }

    /// Replaces the upload of `name` with `bytes`, atomically and durably; returns what it
    /// held before, for [`restore`](Self::restore).
    pub fn store(&self, name: &str, bytes: &[u8]) -> io::Result<Option<Before>> {
        let path = self.path(name);
        let before = match File::open(&path) {
            Ok(mut file) => {
                let modified = file.metadata()?.modified()?;
                let mut bytes = Vec::new();
                io::Read::read_to_end(&mut file, &mut bytes)?;
                Some(Before { bytes, modified })
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        crate::durable::write_atomically(&path, bytes)?;
        Ok(before)
    }

    /// Puts back what [`store`](Self::store) replaced: the file as it was, its modification
    /// time too (which decides what a file of the plugins directory supersedes), or no file.
    pub fn restore(&self, name: &str, before: Option<Before>) -> io::Result<()> {
        let Some(Before { bytes, modified }) = before else {
            return self.remove(name).map(drop);
        };
        crate::durable::replace_with(&self.path(name), |file: &mut File| {
            file.write_all(&bytes)?;
            file.set_modified(modified)
        })
    }

    /// Removes the upload of `name`, durably; whether there was one.
    pub fn remove(&self, name: &str) -> io::Result<bool> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => crate::durable::sync_parent(&path).map(|()| true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// When the upload of `name` was stored, if there is one.
    pub fn modified(&self, name: &str) -> io::Result<Option<SystemTime>> {
        match std::fs::metadata(self.path(name)) {
            Ok(metadata) => metadata.modified().map(Some),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The file of the upload of `name` (plugin names are lowercase letters, digits, `-` and
    /// `_`, so a name is one path component).
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.wasm"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_refused_upload_puts_back_the_file_and_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = Uploads::open(&dir.path().join("uploads")).unwrap();
        assert!(uploads.store("a", b"one").unwrap().is_none());
        let earlier = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(uploads.path("a"))
            .unwrap()
            .set_modified(earlier)
            .unwrap();
        let before = uploads.store("a", b"two").unwrap();
        assert_ne!(uploads.modified("a").unwrap(), Some(earlier));
        uploads.restore("a", before).unwrap();
        assert_eq!(std::fs::read(uploads.path("a")).unwrap(), b"one");
        assert_eq!(uploads.modified("a").unwrap(), Some(earlier));

        let before = uploads.store("b", b"new").unwrap();
        uploads.restore("b", before).unwrap();
        assert_eq!(uploads.modified("b").unwrap(), None);
        assert!(uploads.remove("a").unwrap());
        assert!(!uploads.remove("a").unwrap());
    }
}
