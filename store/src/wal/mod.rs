//! Durable write-ahead log (WAL) and snapshot files.
//!
//! The WAL is a directory of append-only *segment* files. Every call to
//! [`Wal::append`] writes one *frame* holding a batch of [`Entry`]s and
//! makes it durable (`fdatasync`) before returning. Snapshots
//! ([`save_snapshot`] / [`load_latest_snapshot`]) capture the state up to
//! some index so that older segments can be deleted with [`Wal::compact`].
//!
//! Only one [`Wal`] may be open on a directory at a time; nothing here
//! locks the directory, that is the caller's job.
//!
//! # On-disk format
//!
//! All integers are little-endian; checksums are CRC-32 (IEEE, `crc32fast`).
//!
//! **Segment files** are named `{seq:016x}-{first_index:016x}.wal` (lower-case
//! hex), where `seq` increases by one per new segment and `first_index` is the
//! index of the first entry in the file. Sorting the names sorts the
//! segments. A segment is a plain concatenation of frames, with no file header
//! and no preallocation. A new segment is started at the first append after
//! the current one has reached [`WalOptions::segment_bytes`], or after
//! [`Wal::roll`].
//!
//! A **frame** is a 16-byte header followed by the payload:
//!
//! ```text
//! offset  size  field
//!      0     4  magic        = "KWAL" (0x4C41574B)
//!      4     4  payload_len
//!      8     4  payload_crc  = crc32(payload)
//!     12     4  header_crc   = crc32(bytes 0..12 of the header)
//!     16     n  payload
//!
//! payload = count u32, then `count` times:
//!           index u64, term u64, data_len u32, data[data_len]
//!           then, if flag STATE: term u64, vote u64, commit u64 (Raft's hard state)
//! ```
//!
//! The top two bits of `count` are flags: bit 31 TRUNCATE (the frame's first entry
//! replaces the log from its index on, as when Raft overwrites a conflicting
//! uncommitted suffix), bit 30 STATE (a hard state follows). A frame holds at least
//! one entry or a hard state. The first frame of every segment carries the current
//! hard state, so compaction never loses it.
//!
//! Entry indices increase by exactly one from entry to entry, across frames
//! and across segments, except at a TRUNCATE frame, whose first index may be any
//! index up to one past the last. Each frame is written with a single `write_all` of a
//! pre-built buffer, followed by `fdatasync`; the directory is fsynced after a
//! segment file is created or deleted.
//!
//! **Snapshot files** are described in the `snapshot` submodule; see
//! [`save_snapshot`].
//!
//! # Recovery
//!
//! [`Wal::open`] reads every segment in name order and verifies every frame:
//!
//! * **Torn tail**: a crash in the middle of an append can leave the last
//!   frame of the *last* segment incomplete. That frame (and anything after
//!   it) is truncated away, the file is fsynced, and a warning naming the
//!   file and offset is logged. A frame counts as torn when its header or
//!   payload runs past end of file, when everything from the frame start to
//!   end of file is zero, when its header is bad and lies in a zeroed
//!   512-byte sector, or when its payload checksum fails, nothing but zeros
//!   follows it, and some 512-byte-aligned piece of the frame is entirely zero
//!   (a page write that never reached the disk). Such a frame was never
//!   acknowledged, because `append` returns only after `fdatasync`.
//! * **Corruption**: any other bad header, checksum mismatch, malformed
//!   payload, or index discontinuity (gap or going backwards), in any
//!   segment, is [`WalError::Corrupt`] naming the file and byte offset of the
//!   offending frame. The WAL refuses to open rather than serve possibly
//!   wrong data.
//! * **Snapshot gap**: with `after_index > 0`, the first entry returned must
//!   be `after_index + 1`; otherwise entries are missing and that is
//!   [`WalError::Corrupt`] too. A jump between two *segments* is tolerated
//!   only where every skipped index is `<= after_index` (covered by the
//!   snapshot).
//! * An empty last segment (a crash right after creating it, or a torn tail
//!   that covered the whole file) is deleted; an empty segment that is not the
//!   last is corruption.
//!
//! After any write or sync failure in [`Wal::append`] the `Wal` is
//! *poisoned*: the state of the file is unknown (a failed `fsync` may have
//! dropped dirty pages), so every later mutating call fails with
//! [`WalError::Poisoned`] until the WAL is reopened, which re-runs recovery.

mod fsutil;
mod segment;
mod snapshot;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use fsutil::atomic_write;
pub use snapshot::{SnapshotMeta, load_latest_snapshot, save_snapshot};

/// Default for [`WalOptions::segment_bytes`]: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// One log entry.
///
/// `index` is strictly increasing by 1 across the whole log; `term` is for a
/// later Raft (always `>= 1`); `data` is opaque to the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log, starting at 1.
    pub index: u64,
    /// Raft term of the entry (`>= 1`).
    pub term: u64,
    /// Opaque payload (at most `u32::MAX` bytes).
    pub data: Vec<u8>,
}

/// Raft's hard state as the WAL stores it: current term, vote in it, commit index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// Tuning knobs for [`Wal::open`].
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Start a new segment file at the next append once the current one has
    /// reached this many bytes. Defaults to [`DEFAULT_SEGMENT_BYTES`].
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// Errors from the WAL and snapshot code. Every variant names the file or
/// directory involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// An operating-system I/O call failed.
    #[error("I/O error {op} {}", path.display())]
    Io {
        /// What was being done, e.g. "syncing".
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The log on disk is damaged or incomplete in a way that is not a torn
    /// tail; the WAL refuses to open.
    #[error(
        "WAL corrupt: {} at offset {offset}: {reason} (refusing to serve possibly wrong data)",
        path.display()
    )]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the offending frame within the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A snapshot file failed verification.
    #[error("snapshot corrupt: {}: {reason} (refusing to load it)", path.display())]
    SnapshotCorrupt {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// [`Wal::append`] was given entries that do not continue the log.
    #[error(
        "WAL append to {}: entry index {got} does not continue the log (expected {expected})",
        dir.display()
    )]
    NonContiguous {
        /// The WAL directory.
        dir: PathBuf,
        /// The index the next entry must have.
        expected: u64,
        /// The index it had.
        got: u64,
    },
    /// [`Wal::append`] was given an entry it cannot store.
    #[error("WAL append to {}: invalid entry {index}: {reason}", dir.display())]
    InvalidEntry {
        /// The WAL directory.
        dir: PathBuf,
        /// Index of the offending entry.
        index: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// An earlier write or sync failed; the WAL must be reopened.
    #[error(
        "WAL in {} is unusable after an earlier write or sync failure; reopen it to recover",
        dir.display()
    )]
    Poisoned {
        /// The WAL directory.
        dir: PathBuf,
    },
}

impl WalError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalError + 'a {
        move |source| WalError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A segment file known to hold at least one entry.
#[derive(Debug)]
struct SegmentInfo {
    path: PathBuf,
    last_index: u64,
}

/// The segment currently appended to.
#[derive(Debug)]
struct ActiveSegment {
    file: File,
    path: PathBuf,
    size: u64,
}

/// An open write-ahead log. See the [module documentation](self).
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    /// Every non-empty segment on disk, oldest first.
    segments: Vec<SegmentInfo>,
    /// The last entry of `segments`, open for appends; `None` after
    /// [`Wal::roll`] (the next append creates a new segment).
    active: Option<ActiveSegment>,
    last_index: u64,
    next_seq: u64,
    poisoned: bool,
    /// The last hard state written or recovered.
    hard_state: Option<HardState>,
    /// The next frame replaces the log from its first entry on (after [`Wal::reset_to`]).
    truncate_next: bool,
}

impl Wal {
    /// Open or create the WAL in `dir` (created with parents if missing) and
    /// replay it.
    ///
    /// Returns the WAL ready for appends plus every entry with index greater
    /// than `after_index`, in order. `after_index` is the index covered by the
    /// snapshot the caller loaded (0 if none); entries up to it are skipped.
    ///
    /// A torn tail of the last segment is truncated away (with a warning);
    /// any other damage, an index discontinuity, or a gap between
    /// `after_index` and the first entry returned is [`WalError::Corrupt`].
    /// See the module documentation for the exact rules.
    pub fn open(
        dir: &Path,
        after_index: u64,
        opts: WalOptions,
    ) -> Result<(Wal, Vec<Entry>), WalError> {
        fsutil::create_dir_all_durable(dir).map_err(WalError::io("creating directory", dir))?;
        let files = list_segments(dir)?;
        let next_seq = files.last().map_or(1, |(seq, _, _)| seq.saturating_add(1));

        let mut segments: Vec<SegmentInfo> = Vec::new();
        let mut out: Vec<Entry> = Vec::new();
        // Index of the last entry seen so far, across segments.
        let mut prev_last: Option<u64> = None;
        let mut repair: Option<Repair> = None;
        let mut hard_state = None;
        let count = files.len();
        for (i, (_seq, first_index, path)) in files.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let bytes = fs::read(&path).map_err(WalError::io("reading", &path))?;
            let scan = segment::scan_segment(&path, &bytes, is_last)?;
            drop(bytes);
            // Repairs of the last segment wait until every check has
            // passed, so a WAL that turns out to be corrupt is left as found.
            if let Some(torn) = scan.torn {
                repair = Some(Repair::Truncate(path.clone(), torn));
            }
            if scan.frames.is_empty() {
                if is_last {
                    repair = Some(Repair::Remove(path));
                    continue;
                }
                return Err(WalError::Corrupt {
                    path,
                    offset: 0,
                    reason: "segment is empty but later segments exist".into(),
                });
            }

            for (n, frame) in scan.frames.into_iter().enumerate() {
                let corrupt = |reason: String| WalError::Corrupt {
                    path: path.clone(),
                    offset: frame.offset,
                    reason,
                };
                if let Some(hs) = frame.extras.state {
                    hard_state = Some(hs);
                }
                let (Some(first), Some(last)) = (frame.entries.first(), frame.entries.last())
                else {
                    // A frame with only a hard state.
                    continue;
                };
                let (first, last) = (first.index, last.index);
                if n == 0 && first != first_index {
                    return Err(corrupt(format!(
                        "file name says the first index is {first_index} but the first entry has index {first}"
                    )));
                }
                if frame.extras.truncate && prev_last.is_some_and(|prev| first <= prev) {
                    // Later entries replace earlier ones from `first` on.
                    out.retain(|e| e.index < first);
                    for seg in &mut segments {
                        seg.last_index = seg.last_index.min(first - 1);
                    }
                } else if let Some(prev) = prev_last
                    && first != prev.saturating_add(1)
                {
                    if first <= prev {
                        return Err(corrupt(format!(
                            "index discontinuity: entry {first} follows entry {prev} (going backwards)"
                        )));
                    }
                    // A jump between segments whose skipped indices are all
                    // covered by the snapshot is harmless.
                    if !(n == 0 && first - 1 <= after_index) {
                        return Err(corrupt(format!(
                            "index discontinuity: entry {first} follows entry {prev} (entries {}..={} are missing)",
                            prev + 1,
                            first - 1
                        )));
                    }
                }
                prev_last = Some(last);
                for entry in frame.entries {
                    if entry.index <= after_index {
                        continue;
                    }
                    if out.is_empty() && after_index > 0 && entry.index != after_index + 1 {
                        return Err(corrupt(format!(
                            "first entry after the snapshot has index {} but the snapshot covers only up to {after_index}: entries {}..={} are missing",
                            entry.index,
                            after_index + 1,
                            entry.index - 1
                        )));
                    }
                    out.push(entry);
                }
            }
            segments.push(SegmentInfo {
                path,
                last_index: prev_last.unwrap_or(0),
            });
        }

        match repair {
            Some(Repair::Truncate(path, torn)) => {
                truncate_file(&path, torn.offset)?;
                tracing::warn!(
                    path = %path.display(),
                    offset = torn.offset,
                    reason = torn.reason,
                    "WAL: truncated torn tail left by an interrupted append"
                );
            }
            Some(Repair::Remove(path)) => {
                fs::remove_file(&path).map_err(WalError::io("removing", &path))?;
                fsutil::sync_dir(dir).map_err(WalError::io("syncing directory", dir))?;
                tracing::warn!(path = %path.display(), "WAL: removed empty last segment");
            }
            None => {}
        }

        let wal_last = prev_last.unwrap_or(0);
        let mut active = None;
        if let Some(seg) = segments.last() {
            if wal_last >= after_index {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .map_err(WalError::io("opening", &seg.path))?;
                let size = file
                    .metadata()
                    .map_err(WalError::io("reading metadata of", &seg.path))?
                    .len();
                active = Some(ActiveSegment {
                    file,
                    path: seg.path.clone(),
                    size,
                });
            } else {
                tracing::warn!(
                    dir = %dir.display(),
                    wal_last,
                    snapshot_index = after_index,
                    "WAL ends before the snapshot index; new entries go to a new segment"
                );
            }
        }
        tracing::debug!(
            dir = %dir.display(),
            segments = segments.len(),
            replayed = out.len(),
            last_index = wal_last.max(after_index),
            "WAL opened"
        );
        let wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            segments,
            active,
            last_index: wal_last.max(after_index),
            next_seq,
            poisoned: false,
            hard_state,
            truncate_next: false,
        };
        Ok((wal, out))
    }

    /// Append a batch of entries as one frame and make it durable (write +
    /// `fdatasync`, plus a directory fsync when a new segment file was
    /// created) before returning.
    ///
    /// The first entry must have index [`last_index`](Self::last_index)` + 1`
    /// (any index `>= 1` while the log is empty and no snapshot index was
    /// given), and the rest must follow consecutively; terms must be `>= 1`.
    /// An empty batch is a no-op. After an I/O failure the WAL is poisoned
    /// (see [`WalError::Poisoned`]).
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), WalError> {
        self.write(entries, None, false)
    }

    /// Like [`append`](Self::append), for Raft: the first entry may also have any index
    /// from 1 to [`last_index`](Self::last_index) (it and everything after it replace
    /// the log from there on), and `state`, if given, is written in the same frame.
    /// Entries and state are durable when this returns.
    pub fn save(&mut self, entries: &[Entry], state: Option<HardState>) -> Result<(), WalError> {
        self.write(entries, state, true)
    }

    fn write(
        &mut self,
        entries: &[Entry],
        state: Option<HardState>,
        may_truncate: bool,
    ) -> Result<(), WalError> {
        self.check_poisoned()?;
        if entries.is_empty() && (state.is_none() || state == self.hard_state) {
            return Ok(());
        }
        let truncate = self.truncate_next
            || (may_truncate
                && entries
                    .first()
                    .is_some_and(|e| e.index <= self.last_index && self.last_index > 0));
        // A new segment starts with the current hard state.
        let new_segment = self.active.is_none()
            || self
                .active
                .as_ref()
                .is_some_and(|a| a.size >= self.opts.segment_bytes);
        let state = state.or(if new_segment { self.hard_state } else { None });
        let payload_len = self.validate(entries, truncate, state.is_some())?;
        let extras = segment::FrameExtras { truncate, state };
        let frame = segment::encode_frame(entries, extras, payload_len);
        let first = entries.first().map_or(self.last_index + 1, |e| e.index);
        let last = entries.last().map_or(self.last_index, |e| e.index);
        if truncate {
            self.supersede_after(first - 1);
        }
        match self.write_frame(&frame, first, last) {
            Ok(()) => {
                self.last_index = last;
                self.truncate_next = false;
                if state.is_some() {
                    self.hard_state = state;
                }
                Ok(())
            }
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    /// The hard state last written or recovered, if any.
    pub fn hard_state(&self) -> Option<HardState> {
        self.hard_state
    }

    /// After a snapshot at `index` replaced the whole log (a Raft follower installing
    /// the leader's snapshot): the next entry is `index + 1`, written to a new segment
    /// as a TRUNCATE frame so that recovery drops whatever the old log held after it.
    /// Recovery must then be given the snapshot's index (`after_index`).
    pub fn reset_to(&mut self, index: u64) -> Result<(), WalError> {
        self.roll()?;
        self.supersede_after(index);
        self.last_index = index;
        self.truncate_next = true;
        Ok(())
    }

    /// Close the current segment; the next append starts a new one.
    ///
    /// Used right after a snapshot so that older segments hold only entries
    /// up to the snapshot index and can be removed with [`compact`](Self::compact).
    pub fn roll(&mut self) -> Result<(), WalError> {
        self.check_poisoned()?;
        // Everything in the segment is already durable; dropping closes it.
        self.active = None;
        Ok(())
    }

    /// Delete the segment files all of whose entries have index `<= index`,
    /// oldest first, never the segment currently appended to; then fsync the
    /// directory. Returns how many files were removed.
    pub fn compact(&mut self, index: u64) -> Result<usize, WalError> {
        self.check_poisoned()?;
        let protected = usize::from(self.active.is_some());
        let removable = self
            .segments
            .iter()
            .take(self.segments.len() - protected)
            .take_while(|s| s.last_index <= index)
            .count();
        let mut removed = 0;
        let mut result = Ok(());
        for seg in &self.segments[..removable] {
            if let Err(e) = fs::remove_file(&seg.path) {
                result = Err(WalError::io("removing", &seg.path)(e));
                break;
            }
            removed += 1;
        }
        self.segments.drain(..removed);
        if removed > 0 {
            fsutil::sync_dir(&self.dir).map_err(WalError::io("syncing directory", &self.dir))?;
            tracing::debug!(dir = %self.dir.display(), removed, index, "WAL compacted");
        }
        result.map(|()| removed)
    }

    /// Index of the last durable entry: the last entry appended or replayed,
    /// or the snapshot index passed to [`open`](Self::open) if that is
    /// larger; 0 if there is neither.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Entries after `index` in existing segments are replaced: for compaction those
    /// segments end at `index`.
    fn supersede_after(&mut self, index: u64) {
        for seg in &mut self.segments {
            seg.last_index = seg.last_index.min(index);
        }
    }

    fn check_poisoned(&self) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Check index continuity, terms and sizes; returns the payload length.
    fn validate(&self, entries: &[Entry], truncate: bool, state: bool) -> Result<u32, WalError> {
        let invalid = |index: u64, reason: &str| WalError::InvalidEntry {
            dir: self.dir.clone(),
            index,
            reason: reason.to_string(),
        };
        let mut expected = if self.last_index == 0 {
            None
        } else if truncate {
            entries.first().map(|e| e.index)
        } else {
            Some(
                self.last_index
                    .checked_add(1)
                    .ok_or_else(|| invalid(self.last_index, "log index space exhausted"))?,
            )
        };
        for e in entries {
            if e.index == 0 {
                return Err(invalid(0, "index must be >= 1"));
            }
            if let Some(exp) = expected
                && e.index != exp
            {
                return Err(WalError::NonContiguous {
                    dir: self.dir.clone(),
                    expected: exp,
                    got: e.index,
                });
            }
            if e.term == 0 {
                return Err(invalid(e.index, "term must be >= 1"));
            }
            if u32::try_from(e.data.len()).is_err() {
                return Err(invalid(e.index, "data larger than 4 GiB"));
            }
            expected = e.index.checked_add(1);
        }
        segment::payload_len(entries, state).ok_or_else(|| {
            invalid(
                entries.first().map_or(0, |e| e.index),
                "batch larger than 4 GiB; split it",
            )
        })
    }

    fn write_frame(&mut self, frame: &[u8], first: u64, last: u64) -> Result<(), WalError> {
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.size >= self.opts.segment_bytes)
        {
            self.active = None;
        }
        let created = self.active.is_none();
        if created {
            let path = self
                .dir
                .join(segment::segment_file_name(self.next_seq, first));
            let file = OpenOptions::new()
                .append(true)
                .create_new(true)
                .open(&path)
                .map_err(WalError::io("creating", &path))?;
            self.next_seq += 1;
            self.segments.push(SegmentInfo {
                path: path.clone(),
                last_index: last,
            });
            self.active = Some(ActiveSegment {
                file,
                path,
                size: 0,
            });
        }
        let Some(active) = self.active.as_mut() else {
            // Unreachable: set just above.
            return Err(WalError::Poisoned {
                dir: self.dir.clone(),
            });
        };
        active
            .file
            .write_all(frame)
            .map_err(WalError::io("writing", &active.path))?;
        active
            .file
            .sync_data()
            .map_err(WalError::io("syncing", &active.path))?;
        active.size += frame.len() as u64;
        if created {
            fsutil::sync_dir(&self.dir).map_err(WalError::io("syncing directory", &self.dir))?;
        }
        if let Some(seg) = self.segments.last_mut() {
            seg.last_index = last;
        }
        Ok(())
    }
}

/// A change to the last segment decided during recovery.
#[derive(Debug)]
enum Repair {
    /// Cut a torn tail off.
    Truncate(PathBuf, segment::TornTail),
    /// Delete a segment left with no frames.
    Remove(PathBuf),
}

/// List `{seq}-{first}.wal` files in `dir`, sorted by sequence number.
fn list_segments(dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>, WalError> {
    let mut files = Vec::new();
    for dent in fs::read_dir(dir).map_err(WalError::io("listing directory", dir))? {
        let dent = dent.map_err(WalError::io("listing directory", dir))?;
        let name = dent.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if !name.ends_with(segment::SEGMENT_EXT) {
            continue;
        }
        let path = dent.path();
        let Some((seq, first)) = segment::parse_segment_name(name) else {
            // Ignoring it could silently drop the newest entries.
            return Err(WalError::Corrupt {
                path,
                offset: 0,
                reason: "unrecognised WAL file name (expected {seq:016x}-{first_index:016x}.wal)"
                    .into(),
            });
        };
        files.push((seq, first, path));
    }
    files.sort();
    for pair in files.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(WalError::Corrupt {
                path: pair[1].2.clone(),
                offset: 0,
                reason: format!(
                    "duplicate segment sequence number {:#x} (also {})",
                    pair[1].0,
                    pair[0].2.display()
                ),
            });
        }
    }
    Ok(files)
}

/// Truncate `path` to `len` bytes and fsync it.
fn truncate_file(path: &Path, len: u64) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(WalError::io("opening", path))?;
    file.set_len(len)
        .map_err(WalError::io("truncating", path))?;
    file.sync_all().map_err(WalError::io("syncing", path))
}

#[cfg(test)]
mod tests;
