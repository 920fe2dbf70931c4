//! Tests for [`Wal`]: round trips, segmenting, compaction, torn-tail
//! recovery and corruption detection.

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::segment::{self, HEADER_LEN};
use super::*;

/// Entry `index` with `len` bytes of never-zero data (so that no sector of
/// a frame is all zero unless a test makes it so).
fn ent_len(index: u64, len: usize) -> Entry {
    Entry {
        index,
        term: 1 + index / 10,
        data: (0..len)
            .map(|k| ((index as usize * 7 + k) % 251 + 1) as u8)
            .collect(),
    }
}

fn ent(index: u64) -> Entry {
    ent_len(index, 1 + (index as usize * 13) % 40)
}

fn batch(first: u64, n: u64) -> Vec<Entry> {
    (first..first + n).map(ent).collect()
}

fn opts(segment_bytes: u64) -> WalOptions {
    WalOptions { segment_bytes }
}

/// Encoded size of the frame holding `entries`.
fn frame_len(entries: &[Entry]) -> u64 {
    HEADER_LEN as u64 + u64::from(segment::payload_len(entries, false).unwrap())
}

fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

fn open(dir: &Path, after: u64) -> (Wal, Vec<Entry>) {
    Wal::open(dir, after, opts(DEFAULT_SEGMENT_BYTES)).unwrap()
}

fn open_err(dir: &Path, after: u64) -> WalError {
    Wal::open(dir, after, opts(DEFAULT_SEGMENT_BYTES)).unwrap_err()
}

fn assert_corrupt(err: &WalError, want_path: &Path, want_offset: u64) {
    match err {
        WalError::Corrupt { path, offset, .. } => {
            assert_eq!(path, want_path, "wrong file in {err}");
            assert_eq!(*offset, want_offset, "wrong offset in {err}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.starts_with("WAL corrupt: "), "{msg}");
    assert!(msg.contains(&want_path.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("at offset {want_offset}:")), "{msg}");
}

/// Write a segment file by hand from a list of batches.
fn write_segment(dir: &Path, seq: u64, first_index: u64, batches: &[Vec<Entry>]) -> PathBuf {
    let path = dir.join(segment::segment_file_name(seq, first_index));
    let mut bytes = Vec::new();
    for b in batches {
        bytes.extend(segment::encode_frame(
            b,
            Default::default(),
            segment::payload_len(b, false).unwrap(),
        ));
    }
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn append_reopen_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("member/wal");
    let (mut wal, entries) = open(&dir, 0);
    assert!(entries.is_empty());
    assert_eq!(wal.last_index(), 0);
    assert_eq!(wal.dir(), dir);
    assert!(
        seg_files(&dir).is_empty(),
        "no segment before the first append"
    );

    wal.append(&batch(1, 3)).unwrap();
    wal.append(&[]).unwrap();
    wal.append(&batch(4, 1)).unwrap();
    wal.append(&[ent_len(5, 0)]).unwrap();
    assert_eq!(wal.last_index(), 5);
    drop(wal);

    let (mut wal, entries) = open(&dir, 0);
    let mut want = batch(1, 4);
    want.push(ent_len(5, 0));
    assert_eq!(entries, want);
    assert_eq!(wal.last_index(), 5);
    // Appends continue in the same segment after reopening.
    wal.append(&batch(6, 2)).unwrap();
    drop(wal);
    assert_eq!(
        seg_files(&dir),
        vec![dir.join("0000000000000001-0000000000000001.wal")]
    );
    let (_, entries) = open(&dir, 0);
    assert_eq!(entries.len(), 7);
    assert_eq!(entries[6], ent(7));
}

#[test]
fn many_batches_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut wal, _) = Wal::open(dir, 0, opts(300)).unwrap();
    let mut want = Vec::new();
    let mut next = 1;
    for i in 0..40u64 {
        let b = batch(next, 1 + i % 4);
        next += b.len() as u64;
        wal.append(&b).unwrap();
        want.extend(b);
    }
    drop(wal);
    let files = seg_files(dir);
    assert!(files.len() >= 5, "expected several segments, got {files:?}");
    for (i, f) in files.iter().enumerate() {
        let name = f.file_name().unwrap().to_str().unwrap();
        let (seq, first) = segment::parse_segment_name(name).unwrap();
        assert_eq!(seq, i as u64 + 1);
        // Every segment but the last reached the limit before rolling.
        if i + 1 < files.len() {
            assert!(fs::metadata(f).unwrap().len() >= 300);
        }
        assert!(want.iter().any(|e| e.index == first));
    }
    let (mut wal, entries) = Wal::open(dir, 0, opts(300)).unwrap();
    assert_eq!(entries, want);
    wal.append(&batch(next, 2)).unwrap();
    drop(wal);
    let (_, entries) = Wal::open(dir, 0, opts(300)).unwrap();
    assert_eq!(entries.len(), want.len() + 2);
}

#[test]
fn after_index_skips_covered_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(tmp.path(), 0, opts(200)).unwrap();
    for first in (1..=30).step_by(3) {
        wal.append(&batch(first, 3)).unwrap();
    }
    drop(wal);
    for after in [0, 1, 2, 3, 4, 17, 29] {
        let (wal, entries) = Wal::open(tmp.path(), after, opts(200)).unwrap();
        assert_eq!(entries, batch(after + 1, 30 - after), "after_index {after}");
        assert_eq!(wal.last_index(), 30);
    }
    let (wal, entries) = Wal::open(tmp.path(), 30, opts(200)).unwrap();
    assert!(entries.is_empty());
    assert_eq!(wal.last_index(), 30);
}

#[test]
fn first_append_to_empty_log_may_start_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), 0);
    wal.append(&batch(100, 2)).unwrap();
    assert!(matches!(
        wal.append(&batch(103, 1)),
        Err(WalError::NonContiguous {
            expected: 102,
            got: 103,
            ..
        })
    ));
    drop(wal);
    let (wal, entries) = open(tmp.path(), 0);
    assert_eq!(entries, batch(100, 2));
    assert_eq!(wal.last_index(), 101);
}

#[test]
fn append_validates_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), 10);
    assert_eq!(wal.last_index(), 10);
    let err = wal.append(&batch(12, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            WalError::NonContiguous {
                expected: 11,
                got: 12,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("expected 11"), "{err}");
    // Gap inside the batch.
    let err = wal.append(&[ent(11), ent(13)]).unwrap_err();
    assert!(matches!(
        err,
        WalError::NonContiguous {
            expected: 12,
            got: 13,
            ..
        }
    ));
    // Going backwards.
    assert!(matches!(
        wal.append(&batch(10, 1)),
        Err(WalError::NonContiguous { .. })
    ));
    let mut bad = ent(11);
    bad.term = 0;
    assert!(matches!(
        wal.append(&[bad]),
        Err(WalError::InvalidEntry { index: 11, .. })
    ));
    // Rejected batches wrote nothing and did not poison the WAL.
    assert!(seg_files(tmp.path()).is_empty());
    wal.append(&batch(11, 2)).unwrap();
    drop(wal);
    let (_, entries) = open(tmp.path(), 10);
    assert_eq!(entries, batch(11, 2));
}

#[test]
fn index_zero_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path(), 0);
    assert!(matches!(
        wal.append(&[ent(0)]),
        Err(WalError::InvalidEntry { index: 0, .. })
    ));
}

#[test]
fn compact_removes_only_fully_covered_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut wal, _) = Wal::open(dir, 0, opts(1)).unwrap();
    // segment_bytes = 1: every batch gets its own segment.
    for first in (1..=15).step_by(3) {
        wal.append(&batch(first, 3)).unwrap();
    }
    // Segments: [1-3] [4-6] [7-9] [10-12] [13-15].
    assert_eq!(seg_files(dir).len(), 5);
    assert_eq!(wal.compact(0).unwrap(), 0);
    assert_eq!(wal.compact(2).unwrap(), 0, "segment 1-3 still holds 3");
    assert_eq!(wal.compact(3).unwrap(), 1);
    assert_eq!(wal.compact(8).unwrap(), 1, "4-6 goes, 7-9 stays");
    assert_eq!(
        seg_files(dir)
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        vec![
            "0000000000000003-0000000000000007.wal",
            "0000000000000004-000000000000000a.wal",
            "0000000000000005-000000000000000d.wal",
        ]
    );
    // The active segment is never removed, even if fully covered.
    assert_eq!(wal.compact(u64::MAX).unwrap(), 2);
    assert_eq!(seg_files(dir).len(), 1);
    // After a roll it may go too.
    wal.roll().unwrap();
    assert_eq!(wal.compact(15).unwrap(), 1);
    assert!(seg_files(dir).is_empty());
    assert_eq!(wal.last_index(), 15);
    // Appends continue from the last index in a fresh segment.
    wal.append(&batch(16, 2)).unwrap();
    drop(wal);

    let (wal, entries) = Wal::open(dir, 15, opts(1)).unwrap();
    assert_eq!(entries, batch(16, 2));
    assert_eq!(wal.last_index(), 17);
    // Without the snapshot, entries 1..=15 are missing: corrupt.
    drop(wal);
    let err = open_err(dir, 10);
    assert_corrupt(&err, &seg_files(dir)[0], 0);
    assert!(
        err.to_string().contains("entries 11..=15 are missing"),
        "{err}"
    );
}

#[test]
fn roll_then_compact_after_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut wal, _) = open(dir, 0);
    wal.append(&batch(1, 5)).unwrap();
    wal.append(&batch(6, 5)).unwrap();
    // Snapshot at 10, roll, keep writing, compact.
    wal.roll().unwrap();
    wal.append(&batch(11, 2)).unwrap();
    assert_eq!(seg_files(dir).len(), 2);
    assert_eq!(wal.compact(10).unwrap(), 1);
    drop(wal);
    assert_eq!(
        seg_files(dir),
        vec![dir.join("0000000000000002-000000000000000b.wal")]
    );
    let (_, entries) = open(dir, 10);
    assert_eq!(entries, batch(11, 2));
}

#[test]
fn snapshot_gap_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let seg = write_segment(dir, 1, 8, &[batch(8, 3), batch(11, 2)]);
    // No snapshot: the log may start anywhere.
    let (_, entries) = open(dir, 0);
    assert_eq!(entries.first().map(|e| e.index), Some(8));
    // Snapshot at 7 or later: fine.
    assert_eq!(open(dir, 7).1.len(), 5);
    assert_eq!(open(dir, 9).1.len(), 3);
    // Snapshot at 5: entries 6 and 7 are missing.
    let err = open_err(dir, 5);
    assert_corrupt(&err, &seg, 0);
    assert!(
        err.to_string().contains("entries 6..=7 are missing"),
        "{err}"
    );
}

#[test]
fn wal_behind_snapshot_continues_in_new_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut wal, _) = open(dir, 0);
    wal.append(&batch(1, 10)).unwrap();
    drop(wal);
    let (mut wal, entries) = open(dir, 20);
    assert!(entries.is_empty());
    assert_eq!(wal.last_index(), 20);
    wal.append(&batch(21, 2)).unwrap();
    drop(wal);
    assert_eq!(seg_files(dir).len(), 2);
    // The jump 10 -> 21 lies between segments and is covered by the snapshot.
    assert_eq!(open(dir, 20).1, batch(21, 2));
    // With an older snapshot, 11..=20 are missing.
    let err = open_err(dir, 15);
    assert_corrupt(&err, &seg_files(dir)[1], 0);
}

#[test]
fn index_gaps_and_regressions_are_corrupt() {
    let tmp = tempfile::tempdir().unwrap();

    // Gap between frames of one segment.
    let d = tmp.path().join("a");
    fs::create_dir(&d).unwrap();
    let (b1, b2) = (batch(1, 2), batch(4, 2));
    let seg = write_segment(&d, 1, 1, &[b1.clone(), b2.clone()]);
    let err = open_err(&d, 0);
    assert_corrupt(&err, &seg, frame_len(&b1));
    assert!(
        err.to_string().contains("entries 3..=3 are missing"),
        "{err}"
    );
    // Even a snapshot covering the gap does not excuse it within a segment.
    assert_corrupt(&open_err(&d, 3), &seg, frame_len(&b1));

    // A torn tail after the gap is not repaired: a corrupt WAL is left as
    // found.
    let mut bytes = fs::read(&seg).unwrap();
    bytes.extend_from_slice(
        &segment::encode_frame(
            &batch(6, 1),
            Default::default(),
            segment::payload_len(&batch(6, 1), false).unwrap(),
        )[..30],
    );
    fs::write(&seg, &bytes).unwrap();
    assert_corrupt(&open_err(&d, 0), &seg, frame_len(&b1));
    assert_eq!(fs::read(&seg).unwrap(), bytes);

    // Going backwards between frames.
    let d = tmp.path().join("b");
    fs::create_dir(&d).unwrap();
    let seg = write_segment(&d, 1, 1, &[b1.clone(), batch(2, 2)]);
    let err = open_err(&d, 0);
    assert_corrupt(&err, &seg, frame_len(&b1));
    assert!(err.to_string().contains("going backwards"), "{err}");

    // Gap between segments (the later one is the last segment).
    let d = tmp.path().join("c");
    fs::create_dir(&d).unwrap();
    write_segment(&d, 1, 1, std::slice::from_ref(&b1));
    let seg2 = write_segment(&d, 2, 5, &[batch(5, 2)]);
    assert_corrupt(&open_err(&d, 0), &seg2, 0);
    // ... tolerated when the snapshot covers the missing entries.
    assert_eq!(open(&d, 4).1, batch(5, 2));

    // File name disagrees with the first entry.
    let d = tmp.path().join("d");
    fs::create_dir(&d).unwrap();
    write_segment(&d, 1, 1, std::slice::from_ref(&b1));
    let seg2 = write_segment(&d, 2, 4, &[batch(3, 2)]);
    let err = open_err(&d, 0);
    assert_corrupt(&err, &seg2, 0);
    assert!(err.to_string().contains("file name says"), "{err}");

    // Empty segment in the middle.
    let d = tmp.path().join("e");
    fs::create_dir(&d).unwrap();
    write_segment(&d, 1, 1, std::slice::from_ref(&b1));
    let empty = write_segment(&d, 2, 3, &[]);
    write_segment(&d, 3, 3, &[batch(3, 1)]);
    assert_corrupt(&open_err(&d, 0), &empty, 0);

    // Unrecognised segment name.
    let d = tmp.path().join("f");
    fs::create_dir(&d).unwrap();
    write_segment(&d, 1, 1, std::slice::from_ref(&b1));
    let odd = d.join("0001-0003.wal");
    fs::write(&odd, b"").unwrap();
    assert_corrupt(&open_err(&d, 0), &odd, 0);
}

#[test]
fn empty_last_segment_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_segment(dir, 1, 1, &[batch(1, 2)]);
    let empty = write_segment(dir, 2, 3, &[]);
    let (mut wal, entries) = open(dir, 0);
    assert_eq!(entries, batch(1, 2));
    assert!(!empty.exists());
    wal.append(&batch(3, 1)).unwrap();
    drop(wal);
    assert_eq!(open(dir, 0).1, batch(1, 3));
}

/// A log of three batches in one segment; returns (dir, segment path,
/// batches, offset of the last frame).
fn three_frame_log(
    root: &Path,
    name: &str,
    last_len: usize,
) -> (PathBuf, PathBuf, Vec<Vec<Entry>>, u64) {
    let dir = root.join(name);
    let batches = vec![
        batch(1, 3),
        batch(4, 2),
        vec![ent_len(6, 10), ent_len(7, last_len)],
    ];
    let (mut wal, _) = open(&dir, 0);
    for b in &batches {
        wal.append(b).unwrap();
    }
    drop(wal);
    let seg = seg_files(&dir).remove(0);
    let last_off = frame_len(&batches[0]) + frame_len(&batches[1]);
    assert_eq!(
        fs::metadata(&seg).unwrap().len(),
        last_off + frame_len(&batches[2])
    );
    (dir, seg, batches, last_off)
}

/// Reopen after damaging the tail: the last batch is gone, the file is cut
/// back to `last_off`, and appending continues.
fn assert_torn_tail_recovered(dir: &Path, seg: &Path, batches: &[Vec<Entry>], last_off: u64) {
    let (mut wal, entries) = open(dir, 0);
    let want: Vec<Entry> = batches[..2].concat();
    assert_eq!(entries, want);
    assert_eq!(wal.last_index(), 5);
    assert_eq!(fs::metadata(seg).unwrap().len(), last_off, "not truncated");
    wal.append(&batches[2]).unwrap();
    wal.append(&batch(8, 1)).unwrap();
    drop(wal);
    let (_, entries) = open(dir, 0);
    assert_eq!(entries, [batches.concat(), batch(8, 1)].concat());
}

#[test]
fn torn_tail_truncated_mid_header() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, seg, batches, last_off) = three_frame_log(tmp.path(), "w", 20);
    let clean = fs::read(&seg).unwrap();
    for cut in [1, 7, HEADER_LEN - 1] {
        fs::write(&seg, &clean[..last_off as usize + cut]).unwrap();
        let (_, entries) = open(&dir, 0);
        assert_eq!(entries, batches[..2].concat(), "cut {cut}");
        assert_eq!(fs::metadata(&seg).unwrap().len(), last_off);
    }
    fs::write(&seg, &clean[..last_off as usize + 3]).unwrap();
    assert_torn_tail_recovered(&dir, &seg, &batches, last_off);
}

#[test]
fn torn_tail_truncated_mid_payload() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, seg, batches, last_off) = three_frame_log(tmp.path(), "w", 20);
    let full = last_off + frame_len(&batches[2]);
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(full - 1)
        .unwrap();
    assert_torn_tail_recovered(&dir, &seg, &batches, last_off);
}

#[test]
fn torn_tail_of_zeros() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, seg, batches, last_off) = three_frame_log(tmp.path(), "w", 20);
    // Zeros appended after a complete log are dropped, the log is intact.
    let mut bytes = fs::read(&seg).unwrap();
    let full = bytes.len() as u64;
    bytes.extend(vec![0u8; 5000]);
    fs::write(&seg, &bytes).unwrap();
    let (_, entries) = open(&dir, 0);
    assert_eq!(entries, batches.concat());
    assert_eq!(fs::metadata(&seg).unwrap().len(), full);
    // Zeros in place of the whole last frame (file size made it to disk,
    // the data did not).
    let mut bytes = fs::read(&seg).unwrap();
    bytes[last_off as usize..].fill(0);
    fs::write(&seg, &bytes).unwrap();
    assert_torn_tail_recovered(&dir, &seg, &batches, last_off);
}

#[test]
fn torn_tail_with_zeroed_sector() {
    let tmp = tempfile::tempdir().unwrap();
    // The last frame spans several sectors.
    let (dir, seg, batches, last_off) = three_frame_log(tmp.path(), "w", 3000);
    let mut bytes = fs::read(&seg).unwrap();
    let sector = (last_off as usize / 512 + 2) * 512;
    assert!(sector + 512 < bytes.len());
    bytes[sector..sector + 512].fill(0);
    fs::write(&seg, &bytes).unwrap();
    assert_torn_tail_recovered(&dir, &seg, &batches, last_off);

    // A lost page covering the frame's end (zero from a sector boundary to
    // end of file).
    let (dir, seg, batches, last_off) = three_frame_log(tmp.path(), "x", 3000);
    let mut bytes = fs::read(&seg).unwrap();
    let from = (bytes.len() / 512) * 512;
    assert!(from > last_off as usize);
    bytes[from..].fill(0);
    fs::write(&seg, &bytes).unwrap();
    assert_torn_tail_recovered(&dir, &seg, &batches, last_off);

    // A lost page covering the frame's header (zero from the frame start to
    // the end of its sector, payload present after that).
    let (dir, seg, batches, last_off) = three_frame_log(tmp.path(), "y", 3000);
    let mut bytes = fs::read(&seg).unwrap();
    let start = last_off as usize;
    bytes[start..(start / 512 + 1) * 512].fill(0);
    fs::write(&seg, &bytes).unwrap();
    assert_torn_tail_recovered(&dir, &seg, &batches, last_off);
}

#[test]
fn zeroed_sector_before_the_tail_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut wal, _) = open(dir, 0);
    let big = vec![ent_len(1, 3000)];
    wal.append(&big).unwrap();
    wal.append(&batch(2, 2)).unwrap();
    drop(wal);
    let seg = seg_files(dir).remove(0);
    let mut bytes = fs::read(&seg).unwrap();
    bytes[1024..1536].fill(0);
    fs::write(&seg, &bytes).unwrap();
    let err = open_err(dir, 0);
    assert_corrupt(&err, &seg, 0);
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert_eq!(
        fs::read(&seg).unwrap(),
        bytes,
        "corrupt file must not be modified"
    );
}

#[test]
fn flipped_byte_is_corrupt_with_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut wal, _) = Wal::open(dir, 0, opts(200)).unwrap();
    let mut batches = Vec::new();
    let mut next = 1;
    for i in 0..8u64 {
        let b = batch(next, 1 + i % 3);
        next += b.len() as u64;
        wal.append(&b).unwrap();
        batches.push(b);
    }
    drop(wal);
    let files = seg_files(dir);
    assert!(files.len() >= 2);

    // Frame boundaries of every segment.
    let mut frames: Vec<(PathBuf, u64, u64)> = Vec::new(); // (file, start, end)
    let mut bi = 0;
    for f in &files {
        let len = fs::metadata(f).unwrap().len();
        let mut off = 0;
        while off < len {
            let l = frame_len(&batches[bi]);
            frames.push((f.clone(), off, off + l));
            off += l;
            bi += 1;
        }
        assert_eq!(off, len);
    }
    assert_eq!(bi, batches.len());

    for (file, start, end) in &frames {
        let clean = fs::read(file).unwrap();
        for at in *start..*end {
            let mut bytes = clean.clone();
            bytes[at as usize] ^= 0x10;
            fs::write(file, &bytes).unwrap();
            let err = Wal::open(dir, 0, opts(200)).unwrap_err();
            assert_corrupt(&err, file, *start);
            if at >= start + HEADER_LEN as u64 {
                assert!(err.to_string().contains("checksum mismatch"), "{err}");
            }
        }
        fs::write(file, &clean).unwrap();
    }
    // Untouched again: opens fine.
    assert_eq!(Wal::open(dir, 0, opts(200)).unwrap().1, batches.concat());
}

#[test]
fn corrupt_display_names_file_and_offset() {
    let err = WalError::Corrupt {
        path: PathBuf::from("/d/member/wal/0000000000000001-0000000000000001.wal"),
        offset: 4096,
        reason: "checksum mismatch".into(),
    };
    assert_eq!(
        err.to_string(),
        "WAL corrupt: /d/member/wal/0000000000000001-0000000000000001.wal at offset 4096: \
         checksum mismatch (refusing to serve possibly wrong data)"
    );
}

#[test]
fn io_failure_poisons_until_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut wal, _) = open(dir, 0);
    wal.append(&batch(1, 2)).unwrap();
    // Swap the segment's handle for a read-only one so the next write fails.
    let active = wal.active.as_mut().unwrap();
    active.file = fs::File::open(&active.path).unwrap();
    let err = wal.append(&batch(3, 1)).unwrap_err();
    assert!(matches!(err, WalError::Io { op: "writing", .. }), "{err:?}");
    assert!(std::error::Error::source(&err).is_some());
    assert!(matches!(
        wal.append(&batch(3, 1)),
        Err(WalError::Poisoned { .. })
    ));
    assert!(matches!(wal.roll(), Err(WalError::Poisoned { .. })));
    assert!(matches!(wal.compact(10), Err(WalError::Poisoned { .. })));
    assert_eq!(wal.last_index(), 2);
    drop(wal);
    let (mut wal, entries) = open(dir, 0);
    assert_eq!(entries, batch(1, 2));
    wal.append(&batch(3, 1)).unwrap();
}

#[test]
fn open_fails_cleanly_when_dir_is_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f");
    fs::write(&file, b"").unwrap();
    let err = open_err(&file.join("wal"), 0);
    assert!(matches!(err, WalError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random batches survive a reopen; cutting the last segment at a random
    /// point loses exactly the frames that were not wholly before the cut.
    #[test]
    fn random_batches_and_truncation(
        sizes in prop::collection::vec(prop::collection::vec(0usize..300, 1..4), 1..14),
        segment_bytes in 64u64..1500,
        cut_frac in 0.0f64..=1.0,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut batches: Vec<Vec<Entry>> = Vec::new();
        let mut next = 1;
        let (mut wal, _) = Wal::open(dir, 0, opts(segment_bytes)).unwrap();
        for s in &sizes {
            let b: Vec<Entry> = s.iter().enumerate().map(|(k, &len)| {
                let mut e = ent_len(next + k as u64, len);
                // Arbitrary data, zeros included.
                for (j, x) in e.data.iter_mut().enumerate() {
                    if (j + k) % 5 == 0 { *x = 0; }
                }
                e
            }).collect();
            next += b.len() as u64;
            wal.append(&b).unwrap();
            batches.push(b);
        }
        drop(wal);
        let all: Vec<Entry> = batches.concat();
        let (wal, entries) = Wal::open(dir, 0, opts(segment_bytes)).unwrap();
        prop_assert_eq!(&entries, &all);
        prop_assert_eq!(wal.last_index(), next - 1);
        drop(wal);

        // Cut the last segment.
        let files = seg_files(dir);
        let last = files.last().unwrap().clone();
        let name = last.file_name().unwrap().to_str().unwrap().to_string();
        let (_, first_in_last) = segment::parse_segment_name(&name).unwrap();
        let len = fs::metadata(&last).unwrap().len();
        let cut = ((len as f64) * cut_frac) as u64;
        fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(cut).unwrap();

        // Expected: batches before the last segment, plus the last
        // segment's frames that end at or before the cut.
        let first_batch_in_last = batches.iter().position(|b| b[0].index == first_in_last).unwrap();
        let mut kept = first_batch_in_last;
        let mut end = 0;
        for b in &batches[first_batch_in_last..] {
            end += frame_len(b);
            if end > cut { break; }
            kept += 1;
        }
        let want: Vec<Entry> = batches[..kept].concat();
        let (mut wal, entries) = Wal::open(dir, 0, opts(segment_bytes)).unwrap();
        prop_assert_eq!(&entries, &want);
        // Appends continue where the recovered log ends.
        for b in &batches[kept..] {
            wal.append(b).unwrap();
        }
        drop(wal);
        let (_, entries) = Wal::open(dir, 0, opts(segment_bytes)).unwrap();
        prop_assert_eq!(&entries, &all);
    }
}

fn hs(term: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote: 1,
        commit,
    }
}

#[test]
fn raft_truncation_and_hard_state_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = open(dir.path(), 0);
        wal.save(&batch(1, 5), Some(hs(1, 3))).unwrap();
        // A new leader overwrites the uncommitted 4..=5 with 4..=6 of term 2.
        let mut replaced = batch(4, 3);
        for e in &mut replaced {
            e.term = 2;
        }
        wal.save(&replaced, None).unwrap();
        // Only the hard state changes.
        wal.save(&[], Some(hs(2, 6))).unwrap();
        assert_eq!(wal.last_index(), 6);
    }
    let (wal, entries) = open(dir.path(), 0);
    assert_eq!(wal.hard_state(), Some(hs(2, 6)));
    let got: Vec<(u64, u64)> = entries.iter().map(|e| (e.index, e.term)).collect();
    assert_eq!(got, vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]);
}

#[test]
fn reset_to_a_snapshot_drops_the_old_log_and_new_segments_carry_the_hard_state() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = open(dir.path(), 0);
        wal.save(&batch(1, 10), Some(hs(3, 10))).unwrap();
        // A snapshot at 7 from the leader replaces the log (8..=10 were never committed).
        wal.reset_to(7).unwrap();
        wal.save(&batch(8, 2), None).unwrap();
    }
    let files = seg_files(dir.path());
    assert_eq!(files.len(), 2);
    // Recovery is given the snapshot index; the old 8..=10 are gone.
    let (mut wal, entries) = open(dir.path(), 7);
    assert_eq!(entries.iter().map(|e| e.index).collect::<Vec<_>>(), [8, 9]);
    assert_eq!(wal.hard_state(), Some(hs(3, 10)));
    // Compacting the first segment away keeps the hard state (the second repeats it).
    wal.roll().unwrap();
    wal.save(&batch(10, 1), None).unwrap();
    assert_eq!(wal.compact(9).unwrap(), 2);
    drop(wal);
    let (wal, entries) = open(dir.path(), 9);
    assert_eq!(entries.iter().map(|e| e.index).collect::<Vec<_>>(), [10]);
    assert_eq!(wal.hard_state(), Some(hs(3, 10)));
}
