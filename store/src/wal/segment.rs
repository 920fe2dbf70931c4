//! Segment files: naming, frame encoding, and the recovery scanner.
//!
//! See the parent module's documentation for the on-disk format and the
//! recovery rules implemented by [`scan_segment`].

use std::path::Path;

use super::{Entry, HardState, WalError};

/// Frame magic; the first four bytes of every frame read `KWAL` on disk.
pub(super) const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"KWAL");
/// Frame header: magic, payload length, payload crc32, header crc32.
pub(super) const HEADER_LEN: usize = 16;
/// Per-entry fixed part of the payload: index u64, term u64, data length u32.
pub(super) const ENTRY_HEADER_LEN: usize = 20;
/// Payload prefix: entry count u32, with the flags below in its top bits.
pub(super) const COUNT_LEN: usize = 4;
/// Flag: the frame's first entry replaces the log from its index on (Raft truncating
/// a conflicting suffix, or a snapshot replacing the log).
pub(super) const FLAG_TRUNCATE: u32 = 1 << 31;
/// Flag: a hard state (term u64, vote u64, commit u64) follows the entries.
pub(super) const FLAG_STATE: u32 = 1 << 30;
const COUNT_MASK: u32 = !(FLAG_TRUNCATE | FLAG_STATE);
/// Size of an encoded hard state.
pub(super) const STATE_LEN: usize = 24;
/// Sector size used to recognise lost page writes in a torn tail.
pub(super) const SECTOR: usize = 512;
/// File name extension of segment files.
pub(super) const SEGMENT_EXT: &str = ".wal";

/// `{seq:016x}-{first_index:016x}.wal`
pub(super) fn segment_file_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}{SEGMENT_EXT}")
}

/// Parse a segment file name into `(seq, first_index)`.
pub(super) fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SEGMENT_EXT)?;
    let (seq, first) = stem.split_once('-')?;
    Some((parse_hex16(seq)?, parse_hex16(first)?))
}

/// Parse exactly 16 lowercase-or-uppercase hex digits.
pub(super) fn parse_hex16(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Size of the payload that encodes `entries`, or `None` if it would not fit
/// the frame's u32 length field (or an entry's data its u32 length field).
pub(super) fn payload_len(entries: &[Entry], state: bool) -> Option<u32> {
    if entries.len() as u64 > u64::from(COUNT_MASK) {
        return None;
    }
    let mut total: u64 = (COUNT_LEN + if state { STATE_LEN } else { 0 }) as u64;
    for e in entries {
        let len = u32::try_from(e.data.len()).ok()?;
        total = total.checked_add(ENTRY_HEADER_LEN as u64 + u64::from(len))?;
    }
    u32::try_from(total).ok()
}

/// What a frame carries besides its entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct FrameExtras {
    pub truncate: bool,
    pub state: Option<HardState>,
}

/// Build a complete frame (header + payload) for `entries`.
///
/// The caller has validated the batch with [`payload_len`]; `payload_len`
/// is its result.
pub(super) fn encode_frame(entries: &[Entry], extras: FrameExtras, payload_len: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + payload_len as usize);
    buf.resize(HEADER_LEN, 0);
    // Lengths were checked by `payload_len`, so these casts cannot truncate.
    let mut count = entries.len() as u32;
    if extras.truncate {
        count |= FLAG_TRUNCATE;
    }
    if extras.state.is_some() {
        count |= FLAG_STATE;
    }
    buf.extend_from_slice(&count.to_le_bytes());
    for e in entries {
        buf.extend_from_slice(&e.index.to_le_bytes());
        buf.extend_from_slice(&e.term.to_le_bytes());
        buf.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        buf.extend_from_slice(&e.data);
    }
    if let Some(hs) = extras.state {
        buf.extend_from_slice(&hs.term.to_le_bytes());
        buf.extend_from_slice(&hs.vote.to_le_bytes());
        buf.extend_from_slice(&hs.commit.to_le_bytes());
    }
    debug_assert_eq!(buf.len(), HEADER_LEN + payload_len as usize);
    let payload_crc = crc32fast::hash(&buf[HEADER_LEN..]);
    buf[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&payload_len.to_le_bytes());
    buf[8..12].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&buf[0..12]);
    buf[12..16].copy_from_slice(&header_crc.to_le_bytes());
    buf
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Decode a payload whose checksum has already been verified. Errors are
/// human-readable reasons; the caller attaches path and offset.
pub(super) fn decode_payload(payload: &[u8]) -> Result<(Vec<Entry>, FrameExtras), String> {
    let raw = read_u32(payload, 0).ok_or("payload too short for entry count")?;
    let count = (raw & COUNT_MASK) as usize;
    let has_state = raw & FLAG_STATE != 0;
    if count == 0 && !has_state {
        return Err("frame holds no entries".into());
    }
    // Each entry needs at least ENTRY_HEADER_LEN bytes; bound the
    // allocation by what the payload can actually hold.
    let max_entries = payload.len().saturating_sub(COUNT_LEN) / ENTRY_HEADER_LEN;
    if count > max_entries {
        return Err(format!(
            "entry count {count} does not fit a {}-byte payload",
            payload.len()
        ));
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(count);
    let mut at = COUNT_LEN;
    for i in 0..count {
        let (Some(index), Some(term), Some(len)) = (
            read_u64(payload, at),
            read_u64(payload, at + 8),
            read_u32(payload, at + 16),
        ) else {
            return Err(format!(
                "entry {i} of {count} runs past the end of the payload"
            ));
        };
        at += ENTRY_HEADER_LEN;
        let data = payload.get(at..at + len as usize).ok_or_else(|| {
            format!("data of entry {i} of {count} runs past the end of the payload")
        })?;
        at += len as usize;
        if index == 0 {
            return Err("entry with index 0".into());
        }
        if let Some(prev) = entries.last()
            && prev.index.checked_add(1) != Some(index)
        {
            return Err(format!(
                "index discontinuity inside frame: entry {index} follows {}",
                prev.index
            ));
        }
        entries.push(Entry {
            index,
            term,
            data: data.to_vec(),
        });
    }
    let mut extras = FrameExtras {
        truncate: raw & FLAG_TRUNCATE != 0,
        state: None,
    };
    if has_state {
        let (Some(term), Some(vote), Some(commit)) = (
            read_u64(payload, at),
            read_u64(payload, at + 8),
            read_u64(payload, at + 16),
        ) else {
            return Err("hard state runs past the end of the payload".into());
        };
        at += STATE_LEN;
        extras.state = Some(HardState { term, vote, commit });
    }
    if at != payload.len() {
        return Err(format!(
            "{} unexpected trailing bytes after {count} entries",
            payload.len() - at
        ));
    }
    Ok((entries, extras))
}

/// One intact frame found by [`scan_segment`].
#[derive(Debug)]
pub(super) struct ScannedFrame {
    /// Byte offset of the frame header within the segment.
    pub offset: u64,
    /// The frame's entries (indices consecutive; none only in a hard-state frame).
    pub entries: Vec<Entry>,
    pub extras: FrameExtras,
}

/// A torn tail found at the end of the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TornTail {
    /// Offset to truncate the file to (start of the torn frame).
    pub offset: u64,
    /// Why the bytes from `offset` on were judged torn.
    pub reason: &'static str,
}

/// Result of scanning one segment.
#[derive(Debug)]
pub(super) struct Scan {
    pub frames: Vec<ScannedFrame>,
    /// Set only for the last segment: where its valid data ends.
    pub torn: Option<TornTail>,
}

fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Split `[start, end)` at 512-byte-aligned boundaries (absolute file
/// offsets) and report whether any piece is entirely zero: the signature of
/// a page that was never persisted.
fn has_zero_sector(bytes: &[u8], start: usize, end: usize) -> bool {
    let end = end.min(bytes.len());
    let mut at = start;
    while at < end {
        let next = ((at / SECTOR) + 1) * SECTOR;
        let chunk_end = next.min(end);
        if all_zero(&bytes[at..chunk_end]) {
            return true;
        }
        at = chunk_end;
    }
    false
}

/// A bad header at `off` is a lost write if a sector it overlaps is zero
/// from the header (or the sector start) to the sector end / end of file.
fn header_in_zero_sector(bytes: &[u8], off: usize) -> bool {
    let header_end = (off + HEADER_LEN).min(bytes.len());
    let mut at = off;
    while at < header_end {
        let next = ((at / SECTOR) + 1) * SECTOR;
        if all_zero(&bytes[at..next.min(bytes.len())]) {
            return true;
        }
        at = next;
    }
    false
}

/// Scan the frames of one segment held in `bytes`.
///
/// For the last segment (`is_last`), an incomplete final frame is reported
/// as [`Scan::torn`] (the caller truncates it); everything else that is not
/// a well-formed frame is [`WalError::Corrupt`]. Index continuity *between*
/// frames is checked by the caller, which knows the whole log.
pub(super) fn scan_segment(path: &Path, bytes: &[u8], is_last: bool) -> Result<Scan, WalError> {
    let corrupt = |offset: usize, reason: String| WalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let torn = |frames: Vec<ScannedFrame>, offset: usize, reason: &'static str| Scan {
        frames,
        torn: Some(TornTail {
            offset: offset as u64,
            reason,
        }),
    };

    let mut frames = Vec::new();
    let mut off = 0usize;
    while off < bytes.len() {
        let rest = &bytes[off..];
        if is_last && all_zero(rest) {
            return Ok(torn(frames, off, "zero-filled tail"));
        }
        if rest.len() < HEADER_LEN {
            if is_last {
                return Ok(torn(frames, off, "frame header runs past end of file"));
            }
            return Err(corrupt(
                off,
                format!("truncated frame header ({} bytes)", rest.len()),
            ));
        }
        let (Some(magic), Some(len), Some(payload_crc), Some(header_crc)) = (
            read_u32(rest, 0),
            read_u32(rest, 4),
            read_u32(rest, 8),
            read_u32(rest, 12),
        ) else {
            // Unreachable: rest.len() >= HEADER_LEN was checked above.
            return Err(corrupt(off, "unreadable frame header".into()));
        };
        if magic != FRAME_MAGIC || crc32fast::hash(&rest[0..12]) != header_crc {
            if is_last && header_in_zero_sector(bytes, off) {
                return Ok(torn(frames, off, "frame header lost (zeroed sector)"));
            }
            let what = if magic != FRAME_MAGIC {
                format!("bad frame magic {magic:#010x}")
            } else {
                "frame header checksum mismatch".to_string()
            };
            return Err(corrupt(off, what));
        }
        let end = off + HEADER_LEN + len as usize;
        if end > bytes.len() {
            if is_last {
                return Ok(torn(frames, off, "frame payload runs past end of file"));
            }
            return Err(corrupt(
                off,
                format!(
                    "frame payload of {len} bytes runs past end of file ({} bytes)",
                    bytes.len()
                ),
            ));
        }
        let payload = &bytes[off + HEADER_LEN..end];
        if crc32fast::hash(payload) != payload_crc {
            // Only the very last frame of the last segment may be torn, and
            // only if part of it is a zeroed sector (a lost page write).
            if is_last && all_zero(&bytes[end..]) && has_zero_sector(bytes, off, end) {
                return Ok(torn(
                    frames,
                    off,
                    "checksum mismatch in final frame with a zeroed sector (lost write)",
                ));
            }
            return Err(corrupt(off, "checksum mismatch".into()));
        }
        let (entries, extras) = decode_payload(payload).map_err(|r| corrupt(off, r))?;
        frames.push(ScannedFrame {
            offset: off as u64,
            entries,
            extras,
        });
        off = end;
    }
    Ok(Scan { frames, torn: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term: 1,
            data: data.to_vec(),
        }
    }

    fn frame(entries: &[Entry]) -> Vec<u8> {
        encode_frame(
            entries,
            FrameExtras::default(),
            payload_len(entries, false).unwrap(),
        )
    }

    #[test]
    fn names_round_trip() {
        let n = segment_file_name(1, 0x2a);
        assert_eq!(n, "0000000000000001-000000000000002a.wal");
        assert_eq!(parse_segment_name(&n), Some((1, 0x2a)));
        assert_eq!(parse_segment_name("1-2.wal"), None);
        assert_eq!(
            parse_segment_name("0000000000000001-000000000000002a.snap"),
            None
        );
        assert_eq!(
            parse_segment_name("000000000000000g-000000000000002a.wal"),
            None
        );
    }

    #[test]
    fn frame_round_trip() {
        let entries = vec![e(7, b"hello"), e(8, b""), e(9, &[0u8; 3])];
        let f = frame(&entries);
        assert_eq!(&f[0..4], b"KWAL");
        let scan = scan_segment(Path::new("x"), &f, false).unwrap();
        assert_eq!(scan.frames.len(), 1);
        assert_eq!(scan.frames[0].entries, entries);
        assert!(scan.torn.is_none());
    }

    #[test]
    fn decode_rejects_malformed_payloads() {
        assert!(decode_payload(&[]).is_err());
        assert!(decode_payload(&0u32.to_le_bytes()).is_err());
        assert!(decode_payload(&u32::MAX.to_le_bytes()).is_err());
        let f = frame(&[e(1, b"ab")]);
        let mut p = f[HEADER_LEN..].to_vec();
        p.push(0);
        assert!(decode_payload(&p).unwrap_err().contains("trailing"));
        let f = frame(&[e(1, b"ab"), e(2, b"c")]);
        let mut p = f[HEADER_LEN..].to_vec();
        // Make the second entry's index 3 (gap inside the frame).
        let second = COUNT_LEN + ENTRY_HEADER_LEN + 2;
        p[second..second + 8].copy_from_slice(&3u64.to_le_bytes());
        assert!(decode_payload(&p).unwrap_err().contains("discontinuity"));
    }

    #[test]
    fn flags_and_hard_state_round_trip() {
        let entries = vec![e(3, b"x")];
        let extras = FrameExtras {
            truncate: true,
            state: Some(HardState {
                term: 5,
                vote: 7,
                commit: 2,
            }),
        };
        let f = encode_frame(&entries, extras, payload_len(&entries, true).unwrap());
        let scan = scan_segment(Path::new("x"), &f, false).unwrap();
        assert_eq!(scan.frames[0].entries, entries);
        assert_eq!(scan.frames[0].extras, extras);
        // A frame may carry only a hard state.
        let only = FrameExtras {
            truncate: false,
            state: extras.state,
        };
        let f = encode_frame(&[], only, payload_len(&[], true).unwrap());
        let (got, x) = decode_payload(&f[HEADER_LEN..]).unwrap();
        assert!(got.is_empty());
        assert_eq!(x, only);
    }

    #[test]
    fn zero_sector_detection() {
        let mut b = vec![1u8; 2048];
        assert!(!has_zero_sector(&b, 100, 2000));
        b[1024..1536].fill(0);
        assert!(has_zero_sector(&b, 100, 2000));
        assert!(!has_zero_sector(&b, 100, 1000));
        // A zeroed partial chunk at the end of the range counts too.
        let mut b = vec![1u8; 1030];
        b[1024..].fill(0);
        assert!(has_zero_sector(&b, 0, 1030));
    }
}
