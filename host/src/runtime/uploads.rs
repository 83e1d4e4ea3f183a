//! Uploaded plugins kept in the data directory, so that a restart loads them again (KurrentDB
//! keeps the projections created through its API the same way).
//!
//! Each upload is one file, `NAME.upload`: a header line naming the plugins directory's file it
//! replaced, then the component as uploaded:
//!
//! ```text
//! foldhost-upload 2 replaces=<SHA-256 of that file's bytes, or "none">\n<component bytes>
//! ```
//!
//! An upload is stored before it is installed, so a plugin that answered an upload loads
//! again after a restart, even after `kill -9` or a power cut; unloading the plugin removes
//! it. The last build deployed wins: a file of the plugins directory that loads as the same
//! plugin, at start or while serving, is passed over if it is the file the upload replaced
//! (also copied again since), and replaces the upload (which is removed) if it is another one,
//! deployed since. No clock is compared: copies, `chmod` and clock steps cannot make an old
//! file look new, and a host upgrade that compiles a file into another component does not
//! make it another file.

use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// The start of every kept upload's header.
const MAGIC: &str = "foldhost-upload 2 replaces=";
/// What the header says when the upload replaced no build of the plugins directory.
const NONE: &str = "none";
/// The longest header read: the magic and a hex SHA-256.
const MAX_HEADER: u64 = 128;

/// The directory of uploaded plugins.
#[derive(Clone)]
pub struct Uploads {
    dir: Arc<Path>,
}

/// An upload as kept (what it replaced is read with [`Uploads::replaces`]).
pub struct Kept {
    /// The component as uploaded.
    pub bytes: Vec<u8>,
    /// The SHA-256 of the whole file, which tells whether it changed since it was read.
    pub digest: [u8; 32],
}

impl Uploads {
    /// The uploads kept in `dir`, created (durably) if missing.
    pub fn open(dir: &Path) -> io::Result<Self> {
        crate::durable::create_dir_all(dir)?;
        Ok(Self {
            dir: Arc::from(dir),
        })
    }

    /// The uploads kept in `dir`, which is not created (a backup's, to read).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: Arc::from(dir),
        }
    }

    /// The kept uploads' files, smallest first.
    pub fn files(&self) -> io::Result<Vec<PathBuf>> {
        super::plugin_dir::list_with(&self.dir, "upload")
    }

    /// The plugins with a kept upload, by name (a file no plugin's name would give is not one).
    pub fn names(&self) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = (self.files()?.iter())
            .filter_map(|path| Self::name_of(path))
            .filter(|name| self.path(name).is_some())
            .map(str::to_owned)
            .collect();
        names.sort();
        Ok(names)
    }

    /// The kept upload of `name` as its file holds it (header and component), for a backup.
    pub fn file(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let Some(path) = self.path(name) else {
            return Ok(None);
        };
        match std::fs::read(&path) {
            Ok(file) => Ok(Some(file)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Keeps `file`, a kept upload's file as [`file`](Self::file) read it, as the upload of
    /// `name`, atomically and durably (a backup's copy, or a restore's); refused unless it
    /// starts with a kept upload's header.
    pub fn put_file(&self, name: &str, file: &[u8]) -> io::Result<()> {
        let path = self.path(name).ok_or_else(|| invalid_name(name))?;
        let line = file.split(|&b| b == b'\n').next().unwrap_or_default();
        if line.len() == file.len() || header(line).is_none() {
            return Err(malformed(&path));
        }
        crate::durable::write_atomically(&path, file)
    }

    /// The plugin the kept upload at `path` is of.
    pub fn name_of(path: &Path) -> Option<&str> {
        path.file_stem()?.to_str()
    }

    /// The kept upload at `path`.
    pub fn read_file(path: &Path) -> io::Result<Kept> {
        let file = std::fs::read(path)?;
        let digest = Sha256::digest(&file).into();
        let split = file.iter().position(|&b| b == b'\n');
        let Some(at) = split.filter(|&at| header(&file[..at]).is_some()) else {
            return Err(malformed(path));
        };
        let mut bytes = file;
        bytes.drain(..=at);
        Ok(Kept { bytes, digest })
    }

    /// The kept upload of `name`, if any.
    pub fn read(&self, name: &str) -> io::Result<Option<Kept>> {
        let Some(path) = self.path(name) else {
            return Ok(None);
        };
        match Self::read_file(&path) {
            Ok(kept) => Ok(Some(kept)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// What the kept upload of `name` replaced (its header only): `None` if there is none.
    pub fn replaces(&self, name: &str) -> io::Result<Option<Option<String>>> {
        let Some(path) = self.path(name) else {
            return Ok(None);
        };
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let mut line = Vec::new();
        io::BufReader::new(file.take(MAX_HEADER)).read_until(b'\n', &mut line)?;
        let line = line.strip_suffix(b"\n").ok_or_else(|| malformed(&path))?;
        header(line).map(Some).ok_or_else(|| malformed(&path))
    }

    /// Replaces the kept upload of `name` with `bytes`, which replace the plugins directory's
    /// build `replaces`, atomically and durably; returns the file as it was, for
    /// [`restore`](Self::restore).
    pub fn store(
        &self,
        name: &str,
        replaces: Option<&str>,
        bytes: &[u8],
    ) -> io::Result<Option<Vec<u8>>> {
        let path = self.path(name).ok_or_else(|| invalid_name(name))?;
        let before = match std::fs::read(&path) {
            Ok(before) => Some(before),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        let header = format!("{MAGIC}{}\n", replaces.unwrap_or(NONE));
        crate::durable::replace_with(&path, |file: &mut std::fs::File| {
            io::Write::write_all(file, header.as_bytes())?;
            io::Write::write_all(file, bytes)
        })?;
        Ok(before)
    }

    /// Puts back what [`store`](Self::store) replaced: the file as it was, or no file.
    pub fn restore(&self, name: &str, before: Option<Vec<u8>>) -> io::Result<()> {
        match (before, self.path(name)) {
            (Some(file), Some(path)) => crate::durable::write_atomically(&path, &file),
            _ => self.remove(name).map(drop),
        }
    }

    /// Removes the kept upload of `name`, durably; whether there was one.
    pub fn remove(&self, name: &str) -> io::Result<bool> {
        let Some(path) = self.path(name) else {
            return Ok(false);
        };
        match std::fs::remove_file(&path) {
            Ok(()) => crate::durable::sync_parent(&path).map(|()| true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The file of the upload of `name`; none for a name no plugin can have (a plugin name is
    /// one path component of lowercase letters, digits, `-` and `_`).
    fn path(&self, name: &str) -> Option<PathBuf> {
        super::plugin::validate_name(name).ok()?;
        Some(self.dir.join(format!("{name}.upload")))
    }
}

/// What a header line says the upload replaced, if it is one.
fn header(line: &[u8]) -> Option<Option<String>> {
    let replaces = std::str::from_utf8(line).ok()?.strip_prefix(MAGIC)?;
    match replaces {
        NONE => Some(None),
        hash if hash.len() == 64
            && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Some(Some(hash.to_owned()))
        }
        _ => None,
    }
}

fn malformed(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is not a kept upload (no valid header)", path.display()),
    )
}

fn invalid_name(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("no plugin is named {name:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_keeps_what_it_replaced_and_a_refused_one_is_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = Uploads::open(&dir.path().join("uploads")).unwrap();
        let hash = "ab".repeat(32);
        assert!(uploads.store("a", Some(&hash), b"one").unwrap().is_none());
        let before = uploads.store("a", None, b"two\nlines").unwrap();
        assert_eq!(uploads.read("a").unwrap().unwrap().bytes, b"two\nlines");
        assert_eq!(uploads.replaces("a").unwrap(), Some(None));
        uploads.restore("a", before).unwrap();
        assert_eq!(uploads.read("a").unwrap().unwrap().bytes, b"one");
        assert_eq!(uploads.replaces("a").unwrap(), Some(Some(hash)));
        let [path] = &uploads.files().unwrap()[..] else {
            panic!("one file");
        };
        assert_eq!(Uploads::name_of(path), Some("a"));

        let before = uploads.store("b", None, b"new").unwrap();
        uploads.restore("b", before).unwrap();
        assert!(uploads.read("b").unwrap().is_none());
        assert!(uploads.remove("a").unwrap());
        assert!(!uploads.remove("a").unwrap());
    }

    #[test]
    fn a_kept_file_copied_elsewhere_is_the_same_upload() {
        let root = tempfile::tempdir().unwrap();
        let from = Uploads::open(&root.path().join("from")).unwrap();
        let to = Uploads::open(&root.path().join("to")).unwrap();
        let hash = "cd".repeat(32);
        from.store("b", Some(&hash), b"two\nlines").unwrap();
        from.store("a", None, b"one").unwrap();
        assert_eq!(from.names().unwrap(), ["a", "b"]);
        for name in from.names().unwrap() {
            to.put_file(&name, &from.file(&name).unwrap().unwrap())
                .unwrap();
        }
        assert_eq!(to.read("b").unwrap().unwrap().bytes, b"two\nlines");
        assert_eq!(to.replaces("b").unwrap(), Some(Some(hash)));
        assert_eq!(to.names().unwrap(), ["a", "b"]);
        assert!(from.file("c").unwrap().is_none());

        for (name, file) in [("c", &b"no header\n"[..]), ("c", b""), ("../c", b"x")] {
            assert!(to.put_file(name, file).is_err(), "{name}: {file:?}");
        }
        let header_only = format!("{MAGIC}{NONE}");
        assert!(to.put_file("c", header_only.as_bytes()).is_err());
        assert!(to.file("c").unwrap().is_none());
        std::fs::write(root.path().join("to/Not a name.upload"), b"x").unwrap();
        assert_eq!(to.names().unwrap(), ["a", "b"]);
    }

    #[test]
    fn names_no_plugin_can_have_reach_no_file() {
        let root = tempfile::tempdir().unwrap();
        let uploads = Uploads::open(&root.path().join("uploads")).unwrap();
        let outside = root.path().join("outside.upload");
        std::fs::write(&outside, b"x").unwrap();
        for name in ["../outside", "/etc/passwd", "", "A"] {
            assert!(!uploads.remove(name).unwrap(), "{name}");
            assert!(uploads.read(name).unwrap().is_none(), "{name}");
            assert!(uploads.store(name, None, b"x").is_err(), "{name}");
        }
        assert!(outside.exists());
        std::fs::write(uploads.dir.join("bad.upload"), b"no header\n").unwrap();
        let error = uploads.read("bad").err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
