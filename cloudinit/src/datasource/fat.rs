//! A read-only FAT12/16/32 (VFAT) reader, enough to take `openstack/latest/user_data`
//! off a config-drive (or `user-data` off a NoCloud `cidata` drive) without mounting it,
//! so it needs neither root nor the kernel's `vfat` driver.
//! The label is the root directory's volume-label entry when there is one (what
//! `fatlabel` and Windows change), else the boot sector's. Names match the long (VFAT)
//! name or the 8.3 name, compared case-insensitively as FAT does.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Files larger than this are not read (user-data is small; this bounds memory).
pub const MAX_FILE_BYTES: u32 = 16 * 1024 * 1024;
/// Most directory entries read per directory.
const MAX_ENTRIES: usize = 10_000;
const ENTRY_BYTES: usize = 32;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LONG_NAME: u8 = 0x0f;
/// The label `mkfs.fat` writes when none is given.
const NO_LABEL: &str = "NO NAME";

#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("cannot read the image")]
    Io(#[from] std::io::Error),
    #[error("not a FAT filesystem (no valid boot sector)")]
    NotFat,
    #[error("corrupt FAT filesystem: {0}")]
    Corrupt(&'static str),
    #[error("file is {0} bytes, larger than the limit")]
    TooLarge(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fat12,
    Fat16,
    Fat32,
}

#[derive(Debug, Clone, Copy)]
enum Dir {
    /// FAT12/16: the fixed root directory region (byte offset, length).
    FixedRoot { offset: u64, len: u64 },
    /// A directory stored in a cluster chain.
    Chain(u32),
}

/// An open filesystem.
#[derive(Debug)]
pub struct Fat {
    file: File,
    /// Volume label (trailing spaces trimmed; empty when there is none).
    pub label: String,
    kind: Kind,
    fat_offset: u64,
    data_offset: u64,
    cluster_bytes: u64,
    /// Highest valid cluster number.
    max_cluster: u32,
    root: Dir,
}

#[derive(Debug)]
struct Entry {
    long_name: Option<String>,
    short_name: String,
    attr: u8,
    cluster: u32,
    size: u32,
}

impl Entry {
    fn is_named(&self, name: &str) -> bool {
        self.long_name
            .as_deref()
            .is_some_and(|l| l.eq_ignore_ascii_case(name))
            || self.short_name.eq_ignore_ascii_case(name)
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn label_text(raw: &[u8]) -> String {
    let mut raw = raw.to_vec();
    if raw.first() == Some(&0x05) {
        raw[0] = 0xe5;
    }
    String::from_utf8_lossy(&raw).trim_end().to_string()
}

impl Fat {
    pub fn open(path: &Path) -> Result<Fat, FatError> {
        let mut file = File::open(path)?;
        let mut bs = [0u8; 512];
        if file.read_exact(&mut bs).is_err() || bs[510..512] != [0x55, 0xaa] {
            return Err(FatError::NotFat);
        }
        let bytes_per_sector = u16_at(&bs, 11) as u64;
        let sectors_per_cluster = bs[13] as u64;
        let reserved = u16_at(&bs, 14) as u64;
        let fats = bs[16] as u64;
        let root_entries = u16_at(&bs, 17) as u64;
        let total = match u16_at(&bs, 19) {
            0 => u32_at(&bs, 32) as u64,
            n => n as u64,
        };
        let fat_sectors = match u16_at(&bs, 22) {
            0 => u32_at(&bs, 36) as u64,
            n => n as u64,
        };
        if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
            || !sectors_per_cluster.is_power_of_two()
            || reserved == 0
            || fats == 0
            || fat_sectors == 0
        {
            return Err(FatError::NotFat);
        }
        let root_sectors = (root_entries * ENTRY_BYTES as u64).div_ceil(bytes_per_sector);
        let data_sector = reserved + fats * fat_sectors + root_sectors;
        if total <= data_sector {
            return Err(FatError::NotFat);
        }
        let clusters = (total - data_sector) / sectors_per_cluster;
        // The FAT type follows from the cluster count alone (Microsoft's FAT spec).
        let kind = match clusters {
            0..4085 => Kind::Fat12,
            4085..65525 => Kind::Fat16,
            _ => Kind::Fat32,
        };
        let max_cluster = u32::try_from(clusters + 1).map_err(|_| FatError::NotFat)?;
        // Extended boot signature and label: offset 38/43 (FAT12/16) or 66/71 (FAT32).
        let (sig, label_at) = if kind == Kind::Fat32 {
            (66, 71)
        } else {
            (38, 43)
        };
        let boot_label = (bs[sig] == 0x29).then(|| label_text(&bs[label_at..label_at + 11]));
        let root = if kind == Kind::Fat32 {
            if root_entries != 0 {
                return Err(FatError::NotFat);
            }
            Dir::Chain(u32_at(&bs, 44))
        } else {
            Dir::FixedRoot {
                offset: (reserved + fats * fat_sectors) * bytes_per_sector,
                len: root_entries * ENTRY_BYTES as u64,
            }
        };
        let mut fat = Fat {
            file,
            label: String::new(),
            kind,
            fat_offset: reserved * bytes_per_sector,
            data_offset: data_sector * bytes_per_sector,
            cluster_bytes: sectors_per_cluster * bytes_per_sector,
            max_cluster,
            root,
        };
        let root_label = fat
            .read_dir(root)?
            .into_iter()
            .find(|e| e.attr & ATTR_LONG_NAME == ATTR_VOLUME_ID)
            .map(|e| e.short_name);
        fat.label = root_label
            .or(boot_label)
            .filter(|l| l != NO_LABEL)
            .unwrap_or_default();
        Ok(fat)
    }

    /// The FAT entry of `cluster`: the next cluster, or `None` at the end of the chain.
    fn next(&mut self, cluster: u32) -> Result<Option<u32>, FatError> {
        let (offset, end) = match self.kind {
            Kind::Fat12 => (cluster as u64 * 3 / 2, 0xff8),
            Kind::Fat16 => (cluster as u64 * 2, 0xfff8),
            Kind::Fat32 => (cluster as u64 * 4, 0x0fff_fff8),
        };
        let mut buf = [0u8; 4];
        let width = if self.kind == Kind::Fat32 { 4 } else { 2 };
        self.file.seek(SeekFrom::Start(self.fat_offset + offset))?;
        self.file.read_exact(&mut buf[..width])?;
        let raw = u32::from_le_bytes(buf);
        let value = match self.kind {
            Kind::Fat12 if cluster % 2 == 1 => (raw & 0xffff) >> 4,
            Kind::Fat12 => raw & 0x0fff,
            Kind::Fat16 => raw & 0xffff,
            Kind::Fat32 => raw & 0x0fff_ffff,
        };
        Ok((value < end).then_some(value))
    }

    /// Reads the cluster chain from `first`, at most `limit` bytes.
    fn read_chain(&mut self, first: u32, limit: u64) -> Result<Vec<u8>, FatError> {
        let mut out = Vec::new();
        let mut cluster = Some(first);
        let mut steps = 0u32;
        while let Some(c) = cluster {
            if (out.len() as u64) >= limit {
                break;
            }
            if c < 2 || c > self.max_cluster {
                return Err(FatError::Corrupt("cluster number out of range"));
            }
            steps += 1;
            if steps > self.max_cluster {
                return Err(FatError::Corrupt("cluster chain loops"));
            }
            let start = out.len();
            let take = self.cluster_bytes.min(limit - start as u64) as usize;
            out.resize(start + take, 0);
            self.file.seek(SeekFrom::Start(
                self.data_offset + (c as u64 - 2) * self.cluster_bytes,
            ))?;
            self.file.read_exact(&mut out[start..])?;
            cluster = self.next(c)?;
        }
        Ok(out)
    }

    fn read_dir(&mut self, dir: Dir) -> Result<Vec<Entry>, FatError> {
        let limit = (MAX_ENTRIES * ENTRY_BYTES) as u64;
        let buf = match dir {
            Dir::FixedRoot { offset, len } => {
                let mut buf = vec![0u8; len.min(limit) as usize];
                self.file.seek(SeekFrom::Start(offset))?;
                self.file.read_exact(&mut buf)?;
                buf
            }
            Dir::Chain(first) => self.read_chain(first, limit)?,
        };
        let mut out = Vec::new();
        // Long-name fragments (sequence number, 13 UTF-16 units) and their checksum.
        let mut lfn: Vec<(u8, [u16; 13])> = Vec::new();
        let mut lfn_sum = 0u8;
        for e in buf.chunks_exact(ENTRY_BYTES) {
            match e[0] {
                0 => break,
                0xe5 => {
                    lfn.clear();
                    continue;
                }
                _ => {}
            }
            let attr = e[11];
            if attr & 0x3f == ATTR_LONG_NAME {
                if e[0] & 0x40 != 0 {
                    lfn.clear();
                    lfn_sum = e[13];
                }
                let mut units = [0u16; 13];
                for (i, at) in (1..11)
                    .step_by(2)
                    .chain((14..26).step_by(2))
                    .chain((28..32).step_by(2))
                    .enumerate()
                {
                    units[i] = u16_at(e, at);
                }
                lfn.push((e[0] & 0x1f, units));
                continue;
            }
            let short = &e[0..11];
            let checksum = short
                .iter()
                .fold(0u8, |s, &b| s.rotate_right(1).wrapping_add(b));
            let long_name = (!lfn.is_empty() && checksum == lfn_sum).then(|| {
                lfn.sort_by_key(|(seq, _)| *seq);
                let units: Vec<u16> = lfn
                    .iter()
                    .flat_map(|(_, u)| u.iter().copied())
                    .take_while(|&u| u != 0)
                    .collect();
                String::from_utf16_lossy(&units)
            });
            lfn.clear();
            let short_name = if attr & ATTR_VOLUME_ID != 0 {
                label_text(short)
            } else {
                short_name(e)
            };
            let hi = if self.kind == Kind::Fat32 {
                u16_at(e, 20) as u32
            } else {
                0
            };
            out.push(Entry {
                long_name,
                short_name,
                attr,
                cluster: hi << 16 | u16_at(e, 26) as u32,
                size: u32_at(e, 28),
            });
            if out.len() >= MAX_ENTRIES {
                break;
            }
        }
        Ok(out)
    }

    fn lookup(&mut self, path: &str) -> Result<Option<Entry>, FatError> {
        let mut dir = self.root;
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let found = self
                .read_dir(dir)?
                .into_iter()
                .find(|e| e.attr & ATTR_VOLUME_ID == 0 && e.is_named(part));
            let Some(entry) = found else {
                return Ok(None);
            };
            if i + 1 == parts.len() {
                return Ok(Some(entry));
            }
            if entry.attr & ATTR_DIRECTORY == 0 {
                return Ok(None);
            }
            dir = match (entry.cluster, self.root) {
                // `..` pointing at the root is stored as cluster 0.
                (0, root) => root,
                (c, _) => Dir::Chain(c),
            };
        }
        Ok(None)
    }

    /// Reads a file by its path (`openstack/latest/user_data`); `None` if absent.
    pub fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, FatError> {
        let Some(entry) = self.lookup(path)?.filter(|e| e.attr & ATTR_DIRECTORY == 0) else {
            return Ok(None);
        };
        if entry.size > MAX_FILE_BYTES {
            return Err(FatError::TooLarge(entry.size));
        }
        if entry.size == 0 {
            return Ok(Some(Vec::new()));
        }
        let data = self.read_chain(entry.cluster, entry.size as u64)?;
        if data.len() < entry.size as usize {
            return Err(FatError::Corrupt("cluster chain shorter than the file"));
        }
        Ok(Some(data))
    }
}

/// The 8.3 name of a directory entry, lowered where the NT case bits say so.
fn short_name(e: &[u8]) -> String {
    let part = |raw: &[u8], lower: bool| {
        let mut s = label_text(raw);
        if lower {
            s.make_ascii_lowercase();
        }
        s
    };
    let base = part(&e[0..8], e[12] & 0x08 != 0);
    let ext = part(&e[8..11], e[12] & 0x10 != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_and_case_bits() {
        let mut e = [0u8; 32];
        e[0..11].copy_from_slice(b"META    JSO");
        assert_eq!(short_name(&e), "META.JSO");
        e[12] = 0x18;
        assert_eq!(short_name(&e), "meta.jso");
        e[0..11].copy_from_slice(b"LATEST     ");
        assert_eq!(short_name(&e), "latest");
    }

    #[test]
    fn rejects_what_is_not_fat() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("zero.img");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        assert!(matches!(Fat::open(&p), Err(FatError::NotFat)));
        std::fs::write(&p, b"short").unwrap();
        assert!(matches!(Fat::open(&p), Err(FatError::NotFat)));
    }
}
