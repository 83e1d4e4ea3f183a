//! Writing files so that a power cut leaves either the old content or the new, never a mix, and
//! never loses a file the host reported as written.
//!
//! `fsync` of a file makes its bytes durable, not its name: a new or renamed file is durable
//! only once the directory holding it is synced too.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` atomically and durably (see [`replace_with`]).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_with(path, |file| file.write_all(bytes))
}

/// Replaces `path` atomically and durably with what `write` writes: into a temporary file with
/// a unique name beside it, which is synced, renamed into place, and its directory synced. If
/// `write` fails, `path` is left as it was and the temporary file is removed.
pub fn replace_with<E: From<std::io::Error>>(
    path: &Path,
    write: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    write_into_place(path, write, true)
}

/// As [`replace_with`], but creates `path`: if a file appeared under its name meanwhile (one
/// checked for before a long write), that file is left as it is, the temporary file is removed
/// and the error is [`std::io::ErrorKind::AlreadyExists`].
pub fn create_with<E: From<std::io::Error>>(
    path: &Path,
    write: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    write_into_place(path, write, false)
}

fn write_into_place<E: From<std::io::Error>>(
    path: &Path,
    write: impl FnOnce(&mut File) -> Result<(), E>,
    replace: bool,
) -> Result<(), E> {
    let dir = parent(path);
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    write(file.as_file_mut())?;
    file.as_file().sync_all()?;
    if replace {
        file.persist(path).map_err(|error| error.error)?;
    } else {
        file.persist_noclobber(path).map_err(|error| error.error)?;
    }
    Ok(sync_dir(dir)?)
}

/// Creates `dir` and its missing parents durably: the entry of each new directory is synced.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|ancestor| !ancestor.as_os_str().is_empty() && !ancestor.exists())
        .collect();
    std::fs::create_dir_all(dir)?;
    missing
        .iter()
        .rev()
        .try_for_each(|created| sync_parent(created))
}

/// Makes the directory entry of `path` durable (after creating or renaming it).
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    sync_dir(parent(path))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("artifact");
        write_atomically(&path, b"old").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["artifact"]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export");
        write_atomically(&path, b"old").unwrap();
        let failed = replace_with(&path, |file| {
            file.write_all(b"half")?;
            Err(std::io::Error::other("interrupted"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn creating_leaves_a_file_that_appeared_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let refused = create_with(&path, |file| {
            file.write_all(b"restored")?;
            // Another process creates the file while this one writes.
            std::fs::write(&path, b"created meanwhile")
        })
        .unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"created meanwhile");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let fresh = dir.path().join("fresh");
        create_with(&fresh, |file| file.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&fresh).unwrap(), b"new");
    }

    #[test]
    fn creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/c");
        create_dir_all(&nested).unwrap();
        assert!(nested.is_dir());
        create_dir_all(&nested).unwrap();
    }

    #[test]
    fn a_bare_file_name_lives_in_the_current_directory() {
        assert_eq!(parent(Path::new("journal.redb")), Path::new("."));
        assert_eq!(parent(Path::new("data/journal.redb")), Path::new("data"));
    }
}
