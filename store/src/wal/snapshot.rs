//! Snapshot files.
//!
//! A snapshot is one file named `{term:016x}-{index:016x}.snap` (lower-case
//! hex) holding a 32-byte header followed by the opaque snapshot data:
//!
//! ```text
//! offset  size  field
//!      0     4  magic  = "KSNP" (0x504E534B)
//!      4     8  index
//!     12     8  term
//!     20     8  len    (number of data bytes)
//!     28     4  crc32 over bytes 0..28 of the header followed by the data
//!     32   len  data
//! ```
//!
//! All integers are little-endian. Files are written with
//! [`atomic_write`](super::atomic_write), so a crash leaves either the whole
//! file or only a stray `*.snap.tmp`, which [`load_latest_snapshot`] removes.
//! The newest snapshot is the one with the highest `(index, term)`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::WalError;
use super::fsutil;
use super::segment::parse_hex16;

/// Snapshot magic; the first four bytes of every snapshot file read `KSNP`.
const SNAP_MAGIC: u32 = u32::from_le_bytes(*b"KSNP");
/// Bytes before the data.
const SNAP_HEADER_LEN: usize = 32;
/// File name extension of snapshot files.
const SNAP_EXT: &str = ".snap";

/// What a snapshot covers: every log entry up to and including `index`,
/// whose entry has term `term`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Index of the last log entry included in the snapshot.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
}

fn snapshot_file_name(meta: &SnapshotMeta) -> String {
    format!("{:016x}-{:016x}{SNAP_EXT}", meta.term, meta.index)
}

fn parse_snapshot_name(name: &str) -> Option<SnapshotMeta> {
    let stem = name.strip_suffix(SNAP_EXT)?;
    let (term, index) = stem.split_once('-')?;
    Some(SnapshotMeta {
        index: parse_hex16(index)?,
        term: parse_hex16(term)?,
    })
}

fn encode(meta: &SnapshotMeta, data: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(SNAP_HEADER_LEN + data.len());
    buf.extend_from_slice(&SNAP_MAGIC.to_le_bytes());
    buf.extend_from_slice(&meta.index.to_le_bytes());
    buf.extend_from_slice(&meta.term.to_le_bytes());
    buf.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&buf);
    hasher.update(data);
    buf.extend_from_slice(&hasher.finalize().to_le_bytes());
    buf.extend_from_slice(data);
    buf
}

/// Verify a snapshot file's contents; `expected` comes from its name.
fn decode(bytes: &[u8], expected: &SnapshotMeta) -> Result<Vec<u8>, String> {
    if bytes.len() < SNAP_HEADER_LEN {
        return Err(format!(
            "file is {} bytes, shorter than the {SNAP_HEADER_LEN}-byte header",
            bytes.len()
        ));
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let u32_at = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&bytes[at..at + 4]);
        u32::from_le_bytes(b)
    };
    let magic = u32_at(0);
    if magic != SNAP_MAGIC {
        return Err(format!("bad magic {magic:#010x}"));
    }
    let (index, term, len, crc) = (u64_at(4), u64_at(12), u64_at(20), u32_at(28));
    let actual_len = (bytes.len() - SNAP_HEADER_LEN) as u64;
    if len != actual_len {
        return Err(format!(
            "header says {len} data bytes but the file holds {actual_len}"
        ));
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..28]);
    hasher.update(&bytes[SNAP_HEADER_LEN..]);
    if hasher.finalize() != crc {
        return Err("checksum mismatch".into());
    }
    if index != expected.index || term != expected.term {
        return Err(format!(
            "header says index {index} term {term} but the file name says index {} term {}",
            expected.index, expected.term
        ));
    }
    Ok(bytes[SNAP_HEADER_LEN..].to_vec())
}

/// Snapshot files in `dir` as `(meta, path)`, newest first. Stray temp
/// files are removed when `remove_tmp` is set. A missing `dir` is empty.
fn list_snapshots(dir: &Path, remove_tmp: bool) -> Result<Vec<(SnapshotMeta, PathBuf)>, WalError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(WalError::io("listing directory", dir)(e)),
    };
    let tmp_ext = format!("{SNAP_EXT}{}", fsutil::TMP_SUFFIX);
    let mut removed_tmp = false;
    let mut snaps = Vec::new();
    for dent in rd {
        let dent = dent.map_err(WalError::io("listing directory", dir))?;
        let name = dent.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let path = dent.path();
        if name.ends_with(&tmp_ext) {
            if remove_tmp {
                fs::remove_file(&path).map_err(WalError::io("removing", &path))?;
                tracing::warn!(path = %path.display(), "removed stray temporary snapshot file");
                removed_tmp = true;
            }
            continue;
        }
        if !name.ends_with(SNAP_EXT) {
            continue;
        }
        match parse_snapshot_name(name) {
            Some(meta) => snaps.push((meta, path)),
            None => tracing::warn!(
                path = %path.display(),
                "ignoring snapshot file with an unrecognised name"
            ),
        }
    }
    if removed_tmp {
        fsutil::sync_dir(dir).map_err(WalError::io("syncing directory", dir))?;
    }
    snaps.sort_by_key(|(m, _)| std::cmp::Reverse((m.index, m.term)));
    Ok(snaps)
}

/// Atomically write `data` as `{dir}/{term:016x}-{index:016x}.snap`, then
/// delete all but the newest `keep` snapshots (`keep` is treated as at least
/// 1; the file just written is never deleted).
///
/// The file is written to a temp file in the same directory, fsynced,
/// renamed into place, and the directory is fsynced. `dir` is created if
/// missing. Returns the path of the new snapshot.
pub fn save_snapshot(
    dir: &Path,
    meta: &SnapshotMeta,
    data: &[u8],
    keep: usize,
) -> Result<PathBuf, WalError> {
    fsutil::create_dir_all_durable(dir).map_err(WalError::io("creating directory", dir))?;
    let path = dir.join(snapshot_file_name(meta));
    fsutil::atomic_write(&path, &encode(meta, data)).map_err(WalError::io("writing", &path))?;
    tracing::debug!(path = %path.display(), index = meta.index, term = meta.term, bytes = data.len(), "snapshot saved");

    let mut removed = 0usize;
    for (_, old) in list_snapshots(dir, false)?.into_iter().skip(keep.max(1)) {
        if old == path {
            continue;
        }
        fs::remove_file(&old).map_err(WalError::io("removing", &old))?;
        removed += 1;
    }
    if removed > 0 {
        fsutil::sync_dir(dir).map_err(WalError::io("syncing directory", dir))?;
    }
    Ok(path)
}

/// Load the newest snapshot in `dir` (highest index, then term), verifying
/// its checksum.
///
/// Returns `Ok(None)` when there is none (or `dir` does not exist). A corrupt
/// newest snapshot is [`WalError::SnapshotCorrupt`] naming the file; older
/// snapshots are deliberately not tried, since the WAL may already have been
/// compacted past them. Stray temp files left by an interrupted save are
/// removed.
pub fn load_latest_snapshot(dir: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, WalError> {
    let Some((meta, path)) = list_snapshots(dir, true)?.into_iter().next() else {
        return Ok(None);
    };
    let bytes = fs::read(&path).map_err(WalError::io("reading", &path))?;
    let data = decode(&bytes, &meta).map_err(|reason| WalError::SnapshotCorrupt {
        path: path.clone(),
        reason,
    })?;
    Ok(Some((meta, data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u64, term: u64) -> SnapshotMeta {
        SnapshotMeta { index, term }
    }

    fn snap_names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn missing_or_empty_dir_has_no_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(
            load_latest_snapshot(&tmp.path().join("nope"))
                .unwrap()
                .is_none()
        );
        assert!(load_latest_snapshot(tmp.path()).unwrap().is_none());
    }

    #[test]
    fn save_and_load_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("member/snap");
        let path = save_snapshot(&dir, &meta(42, 3), b"state at 42", 2).unwrap();
        assert_eq!(path, dir.join("0000000000000003-000000000000002a.snap"));
        let (m, data) = load_latest_snapshot(&dir).unwrap().unwrap();
        assert_eq!(m, meta(42, 3));
        assert_eq!(data, b"state at 42");

        save_snapshot(&dir, &meta(50, 3), b"", 2).unwrap();
        let (m, data) = load_latest_snapshot(&dir).unwrap().unwrap();
        assert_eq!(m, meta(50, 3));
        assert!(data.is_empty());
    }

    #[test]
    fn newest_is_highest_index_then_term() {
        let tmp = tempfile::tempdir().unwrap();
        save_snapshot(tmp.path(), &meta(100, 1), b"a", 10).unwrap();
        save_snapshot(tmp.path(), &meta(90, 2), b"b", 10).unwrap();
        save_snapshot(tmp.path(), &meta(100, 2), b"c", 10).unwrap();
        let (m, data) = load_latest_snapshot(tmp.path()).unwrap().unwrap();
        assert_eq!((m, data.as_slice()), (meta(100, 2), &b"c"[..]));
    }

    #[test]
    fn keep_prunes_older_snapshots() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 1..=5u64 {
            save_snapshot(tmp.path(), &meta(i * 10, 1), &[i as u8; 10], 2).unwrap();
        }
        assert_eq!(
            snap_names(tmp.path()),
            vec![
                "0000000000000001-0000000000000028.snap",
                "0000000000000001-0000000000000032.snap"
            ]
        );
        // keep = 0 behaves like keep = 1.
        save_snapshot(tmp.path(), &meta(60, 1), b"six", 0).unwrap();
        assert_eq!(
            snap_names(tmp.path()),
            vec!["0000000000000001-000000000000003c.snap"]
        );
        // An older snapshot saved later is not deleted by its own save.
        save_snapshot(tmp.path(), &meta(5, 1), b"old", 1).unwrap();
        assert_eq!(snap_names(tmp.path()).len(), 2);
        assert_eq!(
            load_latest_snapshot(tmp.path()).unwrap().unwrap().0,
            meta(60, 1)
        );
    }

    #[test]
    fn corrupt_newest_snapshot_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        save_snapshot(tmp.path(), &meta(10, 1), b"older, fine", 5).unwrap();
        let newest = save_snapshot(tmp.path(), &meta(20, 1), b"newest data", 5).unwrap();
        let clean = fs::read(&newest).unwrap();

        // Flip a byte anywhere (header or data): always detected.
        for at in 0..clean.len() {
            let mut b = clean.clone();
            b[at] ^= 0x40;
            fs::write(&newest, &b).unwrap();
            let err = load_latest_snapshot(tmp.path()).unwrap_err();
            match &err {
                WalError::SnapshotCorrupt { path, .. } => assert_eq!(path, &newest),
                other => panic!("byte {at}: expected SnapshotCorrupt, got {other:?}"),
            }
            assert!(err.to_string().contains(&newest.display().to_string()));
        }
        // Truncated file.
        fs::write(&newest, &clean[..clean.len() - 1]).unwrap();
        assert!(matches!(
            load_latest_snapshot(tmp.path()),
            Err(WalError::SnapshotCorrupt { .. })
        ));
        fs::write(&newest, &clean[..10]).unwrap();
        assert!(matches!(
            load_latest_snapshot(tmp.path()),
            Err(WalError::SnapshotCorrupt { .. })
        ));
        // Content valid but renamed to claim another index.
        fs::write(&newest, &clean).unwrap();
        fs::rename(
            &newest,
            tmp.path().join("0000000000000001-0000000000000015.snap"),
        )
        .unwrap();
        let err = load_latest_snapshot(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("file name says index 21"), "{err}");
    }

    #[test]
    fn stray_temp_files_are_removed_and_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        save_snapshot(tmp.path(), &meta(10, 1), b"ten", 1).unwrap();
        let stray = tmp
            .path()
            .join("0000000000000001-0000000000000014.snap.tmp");
        fs::write(&stray, b"half written").unwrap();
        fs::write(tmp.path().join("notes.txt"), b"unrelated").unwrap();
        let (m, data) = load_latest_snapshot(tmp.path()).unwrap().unwrap();
        assert_eq!((m, data.as_slice()), (meta(10, 1), &b"ten"[..]));
        assert!(!stray.exists());
        assert!(tmp.path().join("notes.txt").exists());
    }
}
