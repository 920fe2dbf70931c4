//! Host writes under a root directory: atomic file replacement (temp file in the same
//! directory, fsync, chmod/chown, rename, fsync the directory), directory creation,
//! symlinks, and the check that a path stays inside the root.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of directories created on the way to a written file (as coreos-cloudinit).
pub const PARENT_DIR_MODE: u32 = 0o755;

/// A failed host write, with the path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} resolves outside the target root")]
    Escapes { path: PathBuf },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The host path of absolute path `p` under `root` (`..` cannot climb out).
pub fn in_root(root: &Path, p: &str) -> PathBuf {
    let clean = crate::config::clean_path(p);
    root.join(clean.trim_start_matches('/'))
}

/// Creates missing parents of `path` with mode 0755, root-owned, and checks that the
/// existing parent does not lead outside `root` through a symlink.
pub fn ensure_parent(root: &Path, path: &Path) -> Result<(), FsError> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    if !parent.exists() {
        let mut missing = Vec::new();
        let mut cur = parent;
        while !cur.exists() {
            missing.push(cur.to_path_buf());
            match cur.parent() {
                Some(p) => cur = p,
                None => break,
            }
        }
        check_inside(root, cur)?;
        for dir in missing.iter().rev() {
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io("create directory", dir)(e)),
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(PARENT_DIR_MODE))
                .map_err(io("chmod", dir))?;
        }
    }
    check_inside(root, parent)
}

fn check_inside(root: &Path, dir: &Path) -> Result<(), FsError> {
    let real_root = fs::canonicalize(root).map_err(io("resolve", root))?;
    let real = fs::canonicalize(dir).map_err(io("resolve", dir))?;
    if real.starts_with(&real_root) {
        Ok(())
    } else {
        Err(FsError::Escapes {
            path: dir.to_path_buf(),
        })
    }
}

/// Whether `path` already is a regular file with exactly this content, mode and owner.
pub fn file_matches(path: &Path, content: &[u8], mode: u32, uid: u32, gid: u32) -> bool {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => {
            m.mode() & 0o7777 == mode
                && m.uid() == uid
                && m.gid() == gid
                && m.len() == content.len() as u64
                && fs::read(path).is_ok_and(|c| c == content)
        }
        _ => false,
    }
}

/// Atomically replaces `path` with `content`, mode and owner.
pub fn write_atomic(
    root: &Path,
    path: &Path,
    content: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<(), FsError> {
    ensure_parent(root, path)?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".keel-cloudinit.{}", std::process::id()));
    let tmp = dir.join(name);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(content).map_err(io("write", &tmp))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io("chmod", &tmp))?;
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).map_err(io("chown", &tmp))?;
        // chown clears setuid/setgid bits; set the mode again afterwards.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io("chmod", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io("rename", path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsyncs a directory so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// Creates a directory (and parents) with mode and owner, or fixes them if it exists.
pub fn ensure_dir(root: &Path, path: &Path, mode: u32, uid: u32, gid: u32) -> Result<(), FsError> {
    ensure_parent(root, path)?;
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("create directory", path)(e)),
    }
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io("chown", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

/// Whether `path` is a directory with this mode and owner.
pub fn dir_matches(path: &Path, mode: u32, uid: u32, gid: u32) -> bool {
    fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_dir() && m.mode() & 0o7777 == mode && m.uid() == uid && m.gid() == gid)
}

/// Whether `path` is a symlink to `target`.
pub fn symlink_matches(path: &Path, target: &str) -> bool {
    fs::read_link(path).is_ok_and(|t| t == Path::new(target))
}

/// Replaces whatever is at `path` with a symlink to `target` (atomically, via rename).
pub fn symlink_atomic(root: &Path, path: &Path, target: &str) -> Result<(), FsError> {
    ensure_parent(root, path)?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".keel-cloudinit-link.{}", std::process::id()));
    let tmp = dir.join(name);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io("symlink", &tmp))?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io("rename", path)(e));
    }
    sync_dir(dir)
}

/// Removes a file or symlink if present.
pub fn remove(path: &Path) -> Result<(), FsError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", path)(e)),
    }
}

/// Copies `/etc/skel` into a new home directory, owned by the user.
pub fn copy_skel(skel: &Path, home: &Path, uid: u32, gid: u32) -> Result<(), FsError> {
    let Ok(entries) = fs::read_dir(skel) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let from = entry.path();
        let to = home.join(entry.file_name());
        let meta = fs::symlink_metadata(&from).map_err(io("stat", &from))?;
        if to.exists() {
            continue;
        }
        if meta.is_dir() {
            fs::create_dir(&to).map_err(io("create directory", &to))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io("chmod", &to))?;
            copy_skel(&from, &to, uid, gid)?;
        } else if meta.is_file() {
            fs::copy(&from, &to).map_err(io("copy", &to))?;
        } else {
            continue;
        }
        std::os::unix::fs::lchown(&to, Some(uid), Some(gid)).map_err(io("chown", &to))?;
    }
    Ok(())
}
