//! Media the crate cannot read itself (ext2/3/4) are mounted to be read: read-only,
//! `nosuid,nodev,noexec`, on a private temporary directory, through a read-only loop
//! device when the medium is an image file. [`Mounted`] is the guard: dropping it
//! unmounts, detaches the loop device and removes the directory, on every path out.
//! The label is read from the superblock before anything is mounted, so a medium with
//! the wrong label is never mounted.

use super::loopdev::{LoopDevice, LoopError};
use nix::mount::{MntFlags, MsFlags};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Filesystem types tried, in order (the ext4 driver also mounts ext2 and ext3).
pub const EXT_FS_TYPES: &[&str] = &["ext4", "ext3", "ext2"];
/// Files larger than this are not read (user-data is small; this bounds memory).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Prefix of the temporary mount point.
pub const MOUNT_DIR_PREFIX: &str = "keel-cloudinit-media.";

const EXT_SUPERBLOCK_OFFSET: u64 = 1024;
const EXT_MAGIC: u16 = 0xef53;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is neither a block device nor a regular file")]
    NotMountable(PathBuf),
    #[error("attaching {0} to a loop device")]
    Loop(PathBuf, #[source] LoopError),
    #[error("mounting {device} read-only (tried {tried})")]
    Mount {
        device: PathBuf,
        tried: String,
        #[source]
        source: nix::Error,
    },
    #[error("{0} leaves the medium")]
    Escapes(PathBuf),
    #[error("{0} is {1} bytes, larger than the limit")]
    TooLarge(PathBuf, u64),
}

/// The volume label of an ext2/3/4 filesystem, or `None` if `path` is not one.
pub fn ext_label(path: &Path) -> Result<Option<String>, MountError> {
    let io = |source| MountError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut sb = [0u8; 1024];
    let mut file = File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(EXT_SUPERBLOCK_OFFSET))
        .map_err(io)?;
    if file.read_exact(&mut sb).is_err() || u16::from_le_bytes([sb[56], sb[57]]) != EXT_MAGIC {
        return Ok(None);
    }
    // s_volume_name: 16 bytes at 0x78, NUL-padded.
    let name = &sb[0x78..0x88];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(Some(String::from_utf8_lossy(&name[..end]).into_owned()))
}

/// A medium mounted read-only; unmounted (and its loop device detached) on drop.
#[derive(Debug)]
pub struct Mounted {
    // Dropped in this order after `Drop::drop` unmounts: loop device, then directory.
    _loop_device: Option<LoopDevice>,
    dir: tempfile::TempDir,
}

impl Mounted {
    /// Mounts `source` (a block device or an image file) read-only, trying each of
    /// `fs_types` in turn.
    pub fn mount(source: &Path, fs_types: &[&str]) -> Result<Mounted, MountError> {
        let io = |source_path: &Path| {
            let path = source_path.to_path_buf();
            move |source| MountError::Io { path, source }
        };
        let kind = std::fs::metadata(source).map_err(io(source))?.file_type();
        let loop_device = if kind.is_block_device() {
            None
        } else if kind.is_file() {
            Some(
                LoopDevice::attach_read_only(source)
                    .map_err(|e| MountError::Loop(source.to_path_buf(), e))?,
            )
        } else {
            return Err(MountError::NotMountable(source.to_path_buf()));
        };
        let device = loop_device
            .as_ref()
            .map_or(source, |l| l.path())
            .to_path_buf();
        let tmp = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix(MOUNT_DIR_PREFIX)
            .tempdir_in(&tmp)
            .map_err(io(&tmp))?;
        let flags =
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let mut last = nix::Error::ENODEV;
        for fs_type in fs_types {
            match nix::mount::mount(
                Some(device.as_path()),
                dir.path(),
                Some(*fs_type),
                flags,
                None::<&str>,
            ) {
                Ok(()) => {
                    return Ok(Mounted {
                        _loop_device: loop_device,
                        dir,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(MountError::Mount {
            device,
            tried: fs_types.join(", "),
            source: last,
        })
    }

    /// Reads a file by its path relative to the medium; `None` if absent. Symlinks that
    /// lead off the medium are refused.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, MountError> {
        let path = self.dir.path().join(rel);
        let io = |source| MountError::Io {
            path: path.clone(),
            source,
        };
        let real = match path.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let root = self.dir.path().canonicalize().map_err(io)?;
        if !real.starts_with(&root) {
            return Err(MountError::Escapes(path));
        }
        let file = File::open(&real).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len > MAX_FILE_BYTES {
            return Err(MountError::TooLarge(path, len));
        }
        let mut data = Vec::with_capacity(len as usize);
        file.take(MAX_FILE_BYTES)
            .read_to_end(&mut data)
            .map_err(io)?;
        Ok(Some(data))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let dir = self.dir.path();
        if let Err(e) = nix::mount::umount2(dir, MntFlags::empty()) {
            // Still busy: detach it now; the kernel finishes when the last user goes.
            tracing::warn!(dir = %dir.display(), error = %e, "unmounting the medium; detaching lazily");
            if let Err(e) = nix::mount::umount2(dir, MntFlags::MNT_DETACH) {
                tracing::warn!(dir = %dir.display(), error = %e, "detaching the medium");
            }
        }
    }
}
