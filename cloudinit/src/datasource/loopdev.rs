//! A read-only loop device over an image file, detached when dropped: the small safe
//! wrapper around the kernel's loop ioctls that mounting an image file needs.
//! A free device comes from `/dev/loop-control` (`LOOP_CTL_GET_FREE`) and is bound with
//! one `LOOP_CONFIGURE` (Linux 5.8+), read-only and with autoclear set, so the kernel
//! also detaches it if this process dies. The `unsafe` is confined to the ioctl calls,
//! whose arguments are a file descriptor this type owns and a `#[repr(C)]` struct laid
//! out as `<linux/loop.h>`.
#![allow(unsafe_code)]

use nix::errno::Errno;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The loop control device.
pub const LOOP_CONTROL: &str = "/dev/loop-control";
/// How often to retry when another process takes the free device first.
const ATTACH_ATTEMPTS: usize = 8;

const LOOP_CLR_FD: u32 = 0x4C01;
const LOOP_CONFIGURE: u32 = 0x4C0A;
const LOOP_CTL_GET_FREE: u32 = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

nix::ioctl_none_bad!(loop_ctl_get_free, LOOP_CTL_GET_FREE);
nix::ioctl_write_ptr_bad!(loop_configure, LOOP_CONFIGURE, LoopConfig);
nix::ioctl_none_bad!(loop_clr_fd, LOOP_CLR_FD);

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("opening {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("finding a free loop device through {LOOP_CONTROL}")]
    GetFree(#[source] Errno),
    #[error("binding {device} to {backing}")]
    Configure {
        device: PathBuf,
        backing: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("no free loop device after {ATTACH_ATTEMPTS} attempts")]
    Busy,
}

/// An attached loop device; dropping it detaches it.
#[derive(Debug)]
pub struct LoopDevice {
    device: File,
    path: PathBuf,
}

fn open(path: &Path, write: bool) -> Result<File, LoopError> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|source| LoopError::Open {
            path: path.to_path_buf(),
            source,
        })
}

impl LoopDevice {
    /// Binds `backing` read-only to a free loop device.
    pub fn attach_read_only(backing: &Path) -> Result<LoopDevice, LoopError> {
        let image = open(backing, false)?;
        let control = open(Path::new(LOOP_CONTROL), true)?;
        let mut info = LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        };
        // Shown by `losetup` and in sysfs; truncated, always NUL-terminated.
        let name = backing.as_os_str().as_bytes();
        let n = name.len().min(LO_NAME_SIZE - 1);
        info.lo_file_name[..n].copy_from_slice(&name[..n]);
        let config = LoopConfig {
            fd: image.as_raw_fd() as u32,
            block_size: 0,
            info,
            reserved: [0; 8],
        };
        for _ in 0..ATTACH_ATTEMPTS {
            // SAFETY: `control` is an open loop-control descriptor; the ioctl takes no
            // argument.
            let number =
                unsafe { loop_ctl_get_free(control.as_raw_fd()) }.map_err(LoopError::GetFree)?;
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let device = open(&path, false)?;
            // SAFETY: `device` is an open loop device and `config` a live, fully
            // initialised `struct loop_config` the kernel only reads.
            match unsafe { loop_configure(device.as_raw_fd(), &config) } {
                Ok(_) => return Ok(LoopDevice { device, path }),
                // Another process bound it between GET_FREE and CONFIGURE.
                Err(Errno::EBUSY) => continue,
                Err(source) => {
                    return Err(LoopError::Configure {
                        device: path,
                        backing: backing.to_path_buf(),
                        source,
                    });
                }
            }
        }
        Err(LoopError::Busy)
    }

    /// The device node (`/dev/loopN`).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // SAFETY: `device` is the loop device this value bound; the ioctl takes no
        // argument. With autoclear set the kernel finishes the detach when `device` is
        // closed right after this, if it is still open elsewhere.
        if let Err(e) = unsafe { loop_clr_fd(self.device.as_raw_fd()) }
            && e != Errno::ENXIO
        {
            tracing::warn!(device = %self.path.display(), error = %e, "detaching loop device");
        }
    }
}
