//! First boot: ROOT (partition 9, last on the disk) grows to the end of its disk. The
//! backup GPT moves to the disk's new end, ROOT's entry is extended, the kernel is told
//! the new partition size (`BLKPG_RESIZE_PARTITION`, the disk stays in use) and the
//! mounted ext4 is grown online (`EXT4_IOC_RESIZE_FS`), like Flatcar's first-boot resize.
//!
//! This module holds the updater's only `unsafe`: the two ioctls, each on a descriptor
//! this function opened, with arguments built right before the call.
#![allow(unsafe_code)]

use crate::layout;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error("{path}: cannot {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot read or write its GPT")]
    Gpt {
        path: PathBuf,
        #[source]
        source: gptman::Error,
    },
    #[error("{0}: no partition labelled ROOT")]
    NoRoot(PathBuf),
    #[error("{0}: ROOT is not the last partition; not growing it")]
    NotLast(PathBuf),
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> GrowError {
    let path = path.to_path_buf();
    move |source| GrowError::Io { path, op, source }
}

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    pub number: u32,
    /// Partition size before and after, in bytes.
    pub old_bytes: u64,
    pub new_bytes: u64,
    /// Byte offset of the partition on the disk.
    pub start_bytes: u64,
}

/// Extends ROOT's GPT entry to the disk's last usable sector (moving the backup GPT to
/// the end first). Returns `None` when there is nothing to grow.
pub fn grow_partition(disk: &Path) -> Result<Option<Grown>, GrowError> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(io(disk, "open"))?;
    let gpt_err = |source| GrowError::Gpt {
        path: disk.to_path_buf(),
        source,
    };
    let mut gpt = gptman::GPT::find_from(&mut f).map_err(gpt_err)?;
    let ss = gpt.sector_size;
    gpt.header.update_from(&mut f, ss).map_err(gpt_err)?;
    let last = gpt.header.last_usable_lba;
    let (n, entry) = gpt
        .iter()
        .find(|(_, p)| p.is_used() && p.partition_name.as_str() == "ROOT")
        .map(|(n, p)| (n, p.clone()))
        .ok_or_else(|| GrowError::NoRoot(disk.to_path_buf()))?;
    if gpt
        .iter()
        .any(|(m, p)| m != n && p.is_used() && p.starting_lba > entry.starting_lba)
    {
        return Err(GrowError::NotLast(disk.to_path_buf()));
    }
    // Keep the end 1 MiB aligned, as the image's layout is.
    let align = (1 << 20) / ss;
    let new_end = (last + 1) / align * align - 1;
    if new_end <= entry.ending_lba {
        return Ok(None);
    }
    let old_bytes = (entry.ending_lba - entry.starting_lba + 1) * ss;
    gpt[n].ending_lba = new_end;
    gpt.write_into(&mut f).map_err(gpt_err)?;
    f.sync_all().map_err(io(disk, "fsync"))?;
    Ok(Some(Grown {
        number: n,
        old_bytes,
        new_bytes: (new_end - entry.starting_lba + 1) * ss,
        start_bytes: entry.starting_lba * ss,
    }))
}

#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

const BLKPG_RESIZE_PARTITION: i32 = 3;
nix::ioctl_write_ptr_bad!(blkpg, nix::request_code_none!(0x12, 105), BlkpgIoctlArg);
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

/// Tells the kernel partition `g.number` of `disk` (a block device) has its new size.
pub fn tell_kernel(disk: &Path, g: &Grown) -> Result<(), GrowError> {
    let f = std::fs::File::open(disk).map_err(io(disk, "open"))?;
    let mut part = BlkpgPartition {
        start: g.start_bytes as i64,
        length: g.new_bytes as i64,
        pno: g.number as i32,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: &mut part,
    };
    // SAFETY: `f` is open; `arg` and the `part` it points to live across the call and
    // have the kernel's `struct blkpg_ioctl_arg` / `struct blkpg_partition` layout.
    unsafe { blkpg(f.as_raw_fd(), &arg) }
        .map_err(|e| io(disk, "resize the partition in the kernel (BLKPG)")(e.into()))?;
    Ok(())
}

/// Grows the ext4 mounted at `mountpoint` to `bytes` online.
pub fn grow_ext4(mountpoint: &Path, bytes: u64) -> Result<(), GrowError> {
    let st =
        nix::sys::statvfs::statvfs(mountpoint).map_err(|e| io(mountpoint, "statvfs")(e.into()))?;
    let blocks: u64 = bytes / st.block_size();
    let f = std::fs::File::open(mountpoint).map_err(io(mountpoint, "open"))?;
    // SAFETY: `f` is an open descriptor of the mounted filesystem; `blocks` outlives the
    // call, which only reads it.
    unsafe { ext4_resize_fs(f.as_raw_fd(), &blocks) }
        .map_err(|e| io(mountpoint, "grow the filesystem (EXT4_IOC_RESIZE_FS)")(e.into()))?;
    Ok(())
}

/// The whole first-boot step on `disk` with ROOT mounted at `mountpoint`.
pub fn grow_root(disk: &Path, mountpoint: &Path) -> Result<Option<Grown>, GrowError> {
    let Some(g) = grow_partition(disk)? else {
        return Ok(None);
    };
    let is_block = std::fs::metadata(disk)
        .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
        .unwrap_or(false);
    if is_block {
        tell_kernel(disk, &g)?;
        grow_ext4(mountpoint, g.new_bytes)?;
    }
    Ok(Some(g))
}

/// Keel's ROOT partition number (for messages).
pub const ROOT: u32 = layout::ROOT;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_grows_to_the_new_end_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        layout::create_disk(&img, &layout::keel_partitions(4, 8, 4)).unwrap();
        assert_eq!(grow_partition(&img).unwrap(), None, "already at the end");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(128 << 20)
            .unwrap();
        let g = grow_partition(&img).unwrap().expect("grown");
        assert_eq!(g.number, ROOT);
        assert!(g.new_bytes - g.old_bytes > 63 << 20, "{g:?}");
        // Both GPT copies valid at the new size, ROOT ending on the last aligned sector.
        let mut f = std::fs::File::open(&img).unwrap();
        let gpt = gptman::GPT::read_from(&mut f, 512).unwrap();
        assert_eq!(gpt.header.backup_lba, (128 << 20) / 512 - 1);
        assert_eq!((gpt[ROOT].ending_lba + 1) % 2048, 0);
        assert!(gpt[ROOT].ending_lba <= gpt.header.last_usable_lba);
        assert_eq!(grow_partition(&img).unwrap(), None, "idempotent");
        let out = std::process::Command::new("sgdisk")
            .arg("-v")
            .arg(&img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("No problems found"), "{text}");
    }
}
