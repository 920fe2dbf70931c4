//! A read-only ISO9660 reader, enough to take `openstack/latest/user_data` off a
//! config-drive image (or `user-data` off a NoCloud `cidata` one) without mounting it.
//! Names come from Rock Ridge `NM` entries when present (what `genisoimage -R` writes),
//! else from the Joliet tree, else from the plain ISO name (`;1` and a trailing `.`
//! dropped, compared case-insensitively).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const SECTOR: u64 = 2048;
/// Files larger than this are not read (user-data is small; this bounds memory).
pub const MAX_FILE_BYTES: u32 = 16 * 1024 * 1024;
/// Most directory entries read per directory.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("cannot read the image")]
    Io(#[from] std::io::Error),
    #[error("not an ISO9660 image (no primary volume descriptor)")]
    NotIso,
    #[error("file is {0} bytes, larger than the limit")]
    TooLarge(u32),
}

/// An open image.
#[derive(Debug)]
pub struct Iso {
    file: File,
    /// Volume label (trailing spaces trimmed).
    pub label: String,
    root: DirRef,
    joliet_root: Option<DirRef>,
}

#[derive(Debug, Clone, Copy)]
struct DirRef {
    lba: u32,
    len: u32,
}

#[derive(Debug)]
struct Entry {
    name: String,
    dir: bool,
    lba: u32,
    len: u32,
}

impl Iso {
    pub fn open(path: &Path) -> Result<Iso, IsoError> {
        let mut file = File::open(path)?;
        let mut label = None;
        let mut root = None;
        let mut joliet_root = None;
        for i in 16..64u64 {
            let mut vd = [0u8; 2048];
            file.seek(SeekFrom::Start(i * SECTOR))?;
            if file.read_exact(&mut vd).is_err() || &vd[1..6] != b"CD001" {
                break;
            }
            let dir = DirRef {
                lba: u32::from_le_bytes([vd[158], vd[159], vd[160], vd[161]]),
                len: u32::from_le_bytes([vd[166], vd[167], vd[168], vd[169]]),
            };
            match vd[0] {
                1 => {
                    label = Some(String::from_utf8_lossy(&vd[40..72]).trim_end().to_string());
                    root = Some(dir);
                }
                2 if vd[88] == 0x25 && vd[89] == 0x2f => joliet_root = Some(dir),
                255 => break,
                _ => {}
            }
        }
        let (Some(label), Some(root)) = (label, root) else {
            return Err(IsoError::NotIso);
        };
        Ok(Iso {
            file,
            label,
            root,
            joliet_root,
        })
    }

    fn read_dir(&mut self, dir: DirRef, joliet: bool) -> Result<Vec<Entry>, IsoError> {
        let len = dir.len.min(MAX_FILE_BYTES);
        let mut buf = vec![0u8; len as usize];
        self.file.seek(SeekFrom::Start(dir.lba as u64 * SECTOR))?;
        self.file.read_exact(&mut buf)?;
        let mut out = Vec::new();
        let mut pos = 0usize;
        while pos < buf.len() && out.len() < MAX_ENTRIES {
            let rec_len = buf[pos] as usize;
            if rec_len == 0 {
                // Records do not cross sectors: skip to the next one.
                pos = (pos / SECTOR as usize + 1) * SECTOR as usize;
                continue;
            }
            if pos + rec_len > buf.len() || rec_len < 34 {
                break;
            }
            let rec = &buf[pos..pos + rec_len];
            pos += rec_len;
            let name_len = rec[32] as usize;
            if 33 + name_len > rec.len() {
                continue;
            }
            let raw = &rec[33..33 + name_len];
            if raw == [0] || raw == [1] {
                continue;
            }
            let mut name = if joliet {
                let units: Vec<u16> = raw
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                String::from_utf16_lossy(&units)
            } else {
                String::from_utf8_lossy(raw).into_owned()
            };
            if !joliet {
                let su_start = 33 + name_len + (name_len + 1) % 2;
                if let Some(nm) = rock_ridge_name(rec.get(su_start..).unwrap_or(&[])) {
                    name = nm;
                }
            }
            if let Some(i) = name.find(';') {
                name.truncate(i);
            }
            if name.ends_with('.') {
                name.pop();
            }
            out.push(Entry {
                name,
                dir: rec[25] & 2 != 0,
                lba: u32::from_le_bytes([rec[2], rec[3], rec[4], rec[5]]),
                len: u32::from_le_bytes([rec[10], rec[11], rec[12], rec[13]]),
            });
        }
        Ok(out)
    }

    fn lookup(&mut self, path: &str, joliet: bool) -> Result<Option<Entry>, IsoError> {
        let Some(mut dir) = (if joliet {
            self.joliet_root
        } else {
            Some(self.root)
        }) else {
            return Ok(None);
        };
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let entries = self.read_dir(dir, joliet)?;
            let exact = entries.iter().position(|e| e.name == *part);
            let found = exact
                .or_else(|| {
                    entries
                        .iter()
                        .position(|e| e.name.eq_ignore_ascii_case(part))
                })
                .and_then(|i| entries.into_iter().nth(i));
            let Some(entry) = found else {
                return Ok(None);
            };
            if i + 1 == parts.len() {
                return Ok(Some(entry));
            }
            if !entry.dir {
                return Ok(None);
            }
            dir = DirRef {
                lba: entry.lba,
                len: entry.len,
            };
        }
        Ok(None)
    }

    /// Reads a file by its path (`openstack/latest/user_data`); `None` if absent.
    pub fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, IsoError> {
        let mut entry = self.lookup(path, false)?;
        if entry.is_none() {
            entry = self.lookup(path, true)?;
        }
        let Some(entry) = entry.filter(|e| !e.dir) else {
            return Ok(None);
        };
        if entry.len > MAX_FILE_BYTES {
            return Err(IsoError::TooLarge(entry.len));
        }
        let mut buf = vec![0u8; entry.len as usize];
        self.file.seek(SeekFrom::Start(entry.lba as u64 * SECTOR))?;
        self.file.read_exact(&mut buf)?;
        Ok(Some(buf))
    }
}

/// The name from Rock Ridge `NM` entries in a System Use area, if any.
fn rock_ridge_name(mut su: &[u8]) -> Option<String> {
    let mut name: Option<Vec<u8>> = None;
    while su.len() >= 4 {
        let len = su[2] as usize;
        if len < 4 || len > su.len() {
            break;
        }
        if &su[0..2] == b"NM" && len >= 5 {
            let flags = su[4];
            if flags & 0b110 == 0 {
                name.get_or_insert_with(Vec::new)
                    .extend_from_slice(&su[5..len]);
            }
        }
        su = &su[len..];
    }
    name.map(|n| String::from_utf8_lossy(&n).into_owned())
}
