//! Filesystem images and the GPT disk: ext4 via `mkfs.ext4 -d` and FAT via
//! `mkfs.vfat` + `mcopy` (no loop devices, no mounts), Keel's partition table from
//! `keel_updater::layout`, each filesystem copied to its partition with holes kept, and
//! GRUB's BIOS boot code written by hand (Debian's `grub-bios-setup` cannot target a
//! plain image file).

use crate::cmd::{Cmd, CmdError};
use keel_updater::layout;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error(transparent)]
    Io(#[from] crate::IoError),
    #[error("{path}: cannot write the partition table")]
    Gpt {
        path: PathBuf,
        #[source]
        source: gptman::Error,
    },
    #[error("{what} is {size} bytes but its partition holds {room}")]
    TooBig { what: String, size: u64, room: u64 },
    #[error("{0}: core.img is larger than the BIOS-BOOT partition")]
    CoreTooBig(PathBuf),
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> DiskError {
    let path = path.to_path_buf();
    move |source| DiskError::Io(crate::IoError { path, op, source })
}

/// Bytes a directory tree takes on ext4 with 4 KiB blocks (files rounded up, plus an inode
/// and a directory entry for each).
pub fn tree_size(dir: &Path) -> Result<u64, DiskError> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d, "list"))? {
            let e = e.map_err(io(&d, "list"))?;
            let md = e.path().symlink_metadata().map_err(io(&e.path(), "stat"))?;
            total += 512;
            if md.is_dir() {
                total += 4096;
                stack.push(e.path());
            } else if md.is_file() {
                total += md.len().div_ceil(4096) * 4096;
            }
        }
    }
    Ok(total)
}

/// Options shared by every ext4 image: fixed UUID, hash seed and timestamps.
#[derive(Debug, Clone)]
pub struct Ext4 {
    pub label: String,
    pub uuid: String,
    pub size: u64,
    /// Extra `-O` features (e.g. `^has_journal` for the read-only USR).
    pub features: String,
    pub epoch: i64,
}

/// `mkfs.ext4 -d` of `dir` into a new file `out` of `size` bytes.
pub fn mkfs_ext4(dir: &Path, out: &Path, o: &Ext4) -> Result<(), DiskError> {
    let f = std::fs::File::create(out).map_err(io(out, "create"))?;
    f.set_len(o.size).map_err(io(out, "size"))?;
    drop(f);
    let mut cmd = Cmd::new("mkfs.ext4")
        .args([
            "-q", "-F", "-b", "4096", "-m", "0", "-L", &o.label, "-U", &o.uuid,
        ])
        .arg("-E")
        .arg(format!("hash_seed={},root_owner=0:0", o.uuid));
    if !o.features.is_empty() {
        cmd = cmd.arg("-O").arg(&o.features);
    }
    cmd.arg("-d")
        .arg(dir)
        .arg(out)
        .env("E2FSPROGS_FAKE_TIME", o.epoch.to_string())
        .run()?;
    fix_inode_times(out, o.epoch)
}

/// `mkfs.ext4 -d` copies each file's ctime (the moment the build touched it) and atime
/// (reads during the build move it); set both to `epoch` on every used inode so two
/// builds of the same inputs give the same bytes.
fn fix_inode_times(img: &Path, epoch: i64) -> Result<(), DiskError> {
    let header = Cmd::new("dumpe2fs").arg("-h").arg(img).output()?;
    let header = String::from_utf8_lossy(&header);
    let field = |name: &str| {
        header
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim_start_matches(':').trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let used = field("Inode count").saturating_sub(field("Free inodes"));
    let mut script = String::new();
    // Inode 2 is the root; 11 is lost+found, then files in creation order.
    for n in std::iter::once(2).chain(11..=used + 11) {
        for f in ["ctime", "atime"] {
            script.push_str(&format!("sif <{n}> {f} @{epoch}\n"));
        }
    }
    let script_path = img.with_extension("times");
    std::fs::write(&script_path, script).map_err(io(&script_path, "write"))?;
    let res = Cmd::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(img)
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .run();
    let _ = std::fs::remove_file(&script_path);
    Ok(res?)
}

/// A FAT32 image of `size` bytes labelled `label` holding the files under `dir`.
pub fn mkfs_vfat(
    dir: &Path,
    out: &Path,
    label: &str,
    volume_id: &str,
    size: u64,
    epoch: i64,
) -> Result<(), DiskError> {
    let _ = std::fs::remove_file(out);
    Cmd::new("mkfs.vfat")
        .args(["-F", "32", "-n", label, "-i", volume_id, "-C"])
        .arg(out)
        .arg((size / 1024).to_string())
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .run()?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir, "list"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    if !entries.is_empty() {
        Cmd::new("mcopy")
            .args(["-s", "-m", "-i"])
            .arg(out)
            .args(&entries)
            .arg("::/")
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .run()?;
    }
    Ok(())
}

/// Copies `src` into `dst` at `offset`: only the data extents of `src` (SEEK_DATA /
/// SEEK_HOLE), and of those only the MiB blocks that are not all zero, so the disk stays
/// sparse. Fails if `src` is larger than `room`.
pub fn place(
    dst: &mut std::fs::File,
    dst_path: &Path,
    src: &Path,
    offset: u64,
    room: u64,
) -> Result<(), DiskError> {
    use nix::unistd::{Whence, lseek};
    use std::os::fd::AsRawFd;
    let mut f = std::fs::File::open(src).map_err(io(src, "open"))?;
    let size = f.metadata().map_err(io(src, "stat"))?.len();
    if size > room {
        return Err(DiskError::TooBig {
            what: src.display().to_string(),
            size,
            room,
        });
    }
    let seek = |f: &std::fs::File, pos: u64, whence| {
        lseek(f.as_raw_fd(), pos as i64, whence).map(|p| p as u64)
    };
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = 0u64;
    while pos < size {
        // ENXIO: no data after `pos`.
        let Ok(data) = seek(&f, pos, Whence::SeekData) else {
            break;
        };
        let hole = seek(&f, data, Whence::SeekHole).unwrap_or(size).min(size);
        f.seek(SeekFrom::Start(data)).map_err(io(src, "seek"))?;
        let mut at = data;
        while at < hole {
            let n = (hole - at).min(MIB) as usize;
            f.read_exact(&mut buf[..n]).map_err(io(src, "read"))?;
            if buf[..n].iter().any(|b| *b != 0) {
                dst.seek(SeekFrom::Start(offset + at))
                    .map_err(io(dst_path, "seek"))?;
                dst.write_all(&buf[..n]).map_err(io(dst_path, "write"))?;
            }
            at += n as u64;
        }
        pos = hole;
    }
    Ok(())
}

/// Partition sizes of an image, in MiB.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub efi: u64,
    pub usr: u64,
    pub oem: u64,
    pub root: u64,
}

impl Default for Sizes {
    fn default() -> Sizes {
        Sizes {
            efi: 128,
            usr: 1024,
            oem: 128,
            root: 1024,
        }
    }
}

impl Sizes {
    /// The disk: 1 MiB for the primary GPT, the partitions, 1 MiB for the backup GPT.
    pub fn disk_bytes(&self) -> u64 {
        (1 + self.efi + 2 + 2 * self.usr + self.oem + self.root + 1) * MIB
    }
}

/// Partition images to lay out.
#[derive(Debug, Clone)]
pub struct Parts<'a> {
    pub esp: &'a Path,
    pub usr_a: &'a Path,
    pub usr_b: Option<&'a Path>,
    pub oem: &'a Path,
    pub root: &'a Path,
    pub core_img: &'a Path,
    pub boot_img: &'a Path,
}

/// Writes the disk image `out`: GPT, partitions, GRUB BIOS boot code.
pub fn assemble(
    out: &Path,
    sizes: &Sizes,
    parts: &Parts<'_>,
    seed: &[u8],
) -> Result<(), DiskError> {
    let t = std::time::Instant::now();
    let _ = std::fs::remove_file(out);
    tracing::debug!(seconds = t.elapsed().as_secs_f64(), "removed the old disk");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(io(out, "create"))?;
    f.set_len(sizes.disk_bytes()).map_err(io(out, "size"))?;
    drop(f);
    let specs = layout::keel_partitions(sizes.efi, sizes.usr, sizes.oem);
    layout::create_disk_seeded(out, &specs, Some(seed)).map_err(|source| DiskError::Gpt {
        path: out.to_path_buf(),
        source,
    })?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(out)
        .map_err(io(out, "open"))?;
    let gpt = gptman::GPT::find_from(&mut f).map_err(|source| DiskError::Gpt {
        path: out.to_path_buf(),
        source,
    })?;
    let range = |n: u32| {
        let p = &gpt[n];
        (
            p.starting_lba * 512,
            (p.ending_lba - p.starting_lba + 1) * 512,
        )
    };
    let mut put = |n: u32, src: &Path| -> Result<(), DiskError> {
        let (off, room) = range(n);
        let t = std::time::Instant::now();
        place(&mut f, out, src, off, room)?;
        tracing::debug!(partition = n, seconds = t.elapsed().as_secs_f64(), "placed");
        Ok(())
    };
    put(layout::EFI_SYSTEM, parts.esp)?;
    put(layout::USR_A, parts.usr_a)?;
    if let Some(b) = parts.usr_b {
        put(layout::USR_B, b)?;
    }
    put(layout::OEM, parts.oem)?;
    put(layout::ROOT, parts.root)?;
    let (core_off, core_room) = range(layout::BIOS_BOOT);
    install_grub_bios(
        &mut f,
        out,
        parts.boot_img,
        parts.core_img,
        core_off,
        core_room,
    )?;
    let t = std::time::Instant::now();
    f.sync_all().map_err(io(out, "fsync"))?;
    tracing::debug!(seconds = t.elapsed().as_secs_f64(), "disk fsync");
    Ok(())
}

/// What `grub-bios-setup` does, on a plain file: boot.img's code into the MBR (keeping
/// the partition table), the core.img location patched into it, core.img into
/// BIOS-BOOT with its first sector's blocklist pointing at the rest.
pub fn install_grub_bios(
    f: &mut std::fs::File,
    path: &Path,
    boot_img: &Path,
    core_img: &Path,
    core_offset: u64,
    core_room: u64,
) -> Result<(), DiskError> {
    let boot = std::fs::read(boot_img).map_err(io(boot_img, "read"))?;
    let mut core = std::fs::read(core_img).map_err(io(core_img, "read"))?;
    if core.len() as u64 > core_room || boot.len() < 512 || core.len() < 512 {
        return Err(DiskError::CoreTooBig(core_img.to_path_buf()));
    }
    let mut mbr = [0u8; 512];
    f.seek(SeekFrom::Start(0)).map_err(io(path, "seek"))?;
    f.read_exact(&mut mbr)
        .map_err(io(path, "read the MBR of"))?;
    let old = mbr;
    mbr[..440].copy_from_slice(&boot[..440]);
    mbr[3..0x5a].copy_from_slice(&old[3..0x5a]);
    let core_lba = core_offset / 512;
    mbr[0x5c..0x64].copy_from_slice(&core_lba.to_le_bytes());
    mbr[0x66] = 0x90;
    mbr[0x67] = 0x90;
    let sectors = core.len().div_ceil(512) as u64;
    core.resize((sectors * 512) as usize, 0);
    core[0x1f4..0x1fc].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[0x1fc..0x1fe].copy_from_slice(&((sectors - 1) as u16).to_le_bytes());
    core[0x1fe..0x200].copy_from_slice(&0x820u16.to_le_bytes());
    f.seek(SeekFrom::Start(0)).map_err(io(path, "seek"))?;
    f.write_all(&mbr).map_err(io(path, "write the MBR of"))?;
    f.seek(SeekFrom::Start(core_offset))
        .map_err(io(path, "seek"))?;
    f.write_all(&core)
        .map_err(io(path, "write core.img into"))?;
    Ok(())
}

/// GRUB modules core.img carries (it reads grub.cfg and the grubenv from the ESP, and the
/// kernel from the ext4 USR slot).
pub const GRUB_MODULES: &[&str] = &[
    "biosdisk",
    "part_gpt",
    "fat",
    "ext2",
    "normal",
    "configfile",
    "linux",
    "echo",
    "test",
    "loadenv",
    "serial",
    "terminal",
    "search",
    "ls",
    "cat",
    "sleep",
];

/// `grub-mkimage` for i386-pc with the config prefix on the ESP.
pub fn grub_core_img(out: &Path) -> Result<(), DiskError> {
    Cmd::new("grub-mkimage")
        .args(["-O", "i386-pc", "-o"])
        .arg(out)
        .args(["-p", &format!("(hd0,gpt{})/grub", layout::EFI_SYSTEM)])
        .args(GRUB_MODULES)
        .run()?;
    Ok(())
}

/// grub.cfg: pick the slot with the updater's boot counting, then boot that slot's own
/// kernel and initramfs from inside its `/usr`.
pub fn grub_cfg(extra_cmdline: &str) -> String {
    format!(
        r#"# Keel boot: generated by keel-images. The A/B state is in grubenv (keel-updater).
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set keel_env=($root)/grub/grubenv
set keel_cmdline=""
if [ -f (hd0,gpt{oem})/grub.cfg ]; then source (hd0,gpt{oem})/grub.cfg; fi
{select}
if [ -z "$usr_slot" ]; then
  echo "keel: no USR slot has tries left; booting USR-A"
  set usr_slot=A
fi
if [ "$usr_slot" = "B" ]; then set usr_part=(hd0,gpt{b}); else set usr_part=(hd0,gpt{a}); fi
echo "keel: booting USR-$usr_slot"
linux $usr_part/lib/keel/vmlinuz keel.slot=$usr_slot console=tty0 console=ttyS0,115200n8 panic=5 quiet {extra} $keel_cmdline
initrd $usr_part/lib/keel/initrd.img
boot
"#,
        oem = layout::OEM,
        a = layout::USR_A,
        b = layout::USR_B,
        select = keel_updater::boot::GRUB_SELECT,
        extra = extra_cmdline,
    )
}
