//! Small durable-filesystem helpers shared by the WAL and the snapshot code.
//!
//! POSIX only guarantees that a new or renamed directory entry survives a
//! crash once the *directory* itself has been fsynced, so every helper here
//! that creates, renames or removes a file is paired with [`sync_dir`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Suffix appended to a file name to form the temporary file used by
/// [`atomic_write`].
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// Atomically replace (or create) `path` with `data`.
///
/// The data is written to `{path}.tmp` in the same directory, fsynced,
/// renamed over `path`, and then the directory is fsynced so the rename
/// itself is durable. After a crash, `path` holds either the old or the new
/// contents in full, never a mix; a stray `{path}.tmp` may be left behind and
/// is safe to delete.
pub fn atomic_write(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path)?;
    let result = write_then_rename(&tmp, path, data);
    if result.is_err() {
        // Best effort: do not leave a half-written temp file around. The
        // original error is what the caller needs to see.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_then_rename(tmp: &Path, path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, path)?;
    sync_dir(parent_dir(path))
}

/// The temporary sibling used by [`atomic_write`] for `path`.
pub(crate) fn tmp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(TMP_SUFFIX);
    Ok(path.with_file_name(tmp_name))
}

/// The directory containing `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsync a directory so that entries created, renamed or removed in it are
/// durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        // Directories cannot be opened and fsynced this way elsewhere; the
        // platform's own metadata journaling is all we get.
        let _ = dir;
        Ok(())
    }
}

/// `create_dir_all`, then fsync the parent of every directory that had to
/// be created so the new directory entries survive a crash.
pub(crate) fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    // Collect the missing ancestors, outermost last.
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(p) = cur {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        missing.push(p);
        cur = p.parent();
    }
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        sync_dir(parent_dir(created))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_creates_and_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/file.bin");
        create_dir_all_durable(path.parent().unwrap()).unwrap();
        atomic_write(&path, b"first").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        atomic_write(&path, b"second, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        assert!(!tmp_path(&path).unwrap().exists(), "temp file left behind");
    }

    #[test]
    fn atomic_write_into_missing_dir_fails_cleanly() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("missing/file.bin");
        assert!(atomic_write(&path, b"x").is_err());
    }

    #[test]
    fn parent_dir_of_bare_name_is_cwd() {
        assert_eq!(parent_dir(Path::new("x.snap")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/d/x.snap")), Path::new("/d"));
    }
}
