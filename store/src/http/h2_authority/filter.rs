//! The sans-IO core: follows the client→server byte stream of one connection and
//! rewrites header blocks whose `:authority` carries a scheme.
//!
//! [`Filter::feed`] takes each chunk as read from the client and says how much of its
//! start goes to the server as it is, in place; from the first byte it must hold back
//! (a frame head split across reads, or a header block) to the end of the chunk, what
//! the server is to get instead is appended to [`Filter::output`], in order. Only
//! HEADERS and CONTINUATION frames are held; every other frame passes in place after a
//! look at its 9-byte head.

use super::hpack::{self, Decoder, Field, HpackError};
use bytes::Bytes;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_HEAD_BYTES: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Stream dependency (4 bytes) and weight (1) of a HEADERS frame with PRIORITY.
const PRIORITY_BYTES: usize = 5;

/// Largest frame payload written: the initial SETTINGS_MAX_FRAME_SIZE, which every
/// HTTP/2 server accepts (hyper's server also advertises it).
const MAX_FRAME_PAYLOAD_BYTES: usize = 16_384;

/// The server's SETTINGS_HEADER_TABLE_SIZE: the protocol's initial value, which `serve`
/// leaves as it is. The client may not grow its dynamic table past it.
const SERVER_HEADER_TABLE_SIZE_BYTES: usize = 4096;

/// A header block (all its frames) larger than this is not held back: the connection
/// is passed through untouched from there on. Far above the 16 KiB header list hyper's
/// server accepts.
const MAX_BLOCK_BYTES: usize = 1 << 20;

/// A decoded header list (RFC 7541 §4.1 sizes) larger than this is not rewritten; as
/// above, the connection is passed through from there on.
const MAX_LIST_BYTES: usize = 1 << 20;

/// Why the filter stopped following a connection (it then passes bytes unchanged, and
/// the server reports whatever is wrong).
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("header block of stream {stream} cannot be decoded")]
    Hpack {
        stream: u32,
        #[source]
        source: HpackError,
    },
    #[error("HEADERS frame of stream {stream} has bad padding or priority fields")]
    BadHeadersFrame { stream: u32 },
    #[error(
        "frame of type {frame_type:#x} on stream {stream} interrupts the header block of stream {block_stream}"
    )]
    Interleaved {
        frame_type: u8,
        stream: u32,
        block_stream: u32,
    },
    #[error("header block of stream {stream} exceeds {MAX_BLOCK_BYTES} bytes")]
    BlockTooLarge { stream: u32 },
}

#[derive(Debug)]
enum State {
    /// Comparing the first bytes with the HTTP/2 preface; `matched` so far.
    Preface { matched: usize },
    /// Not HTTP/2, or given up: every byte passes in place.
    Opaque,
    /// Following HTTP/2 frames.
    Frames,
}

/// A header block being collected: a HEADERS frame and its CONTINUATIONs.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_BYTES]>,
    /// Every byte of the block's frames as received.
    raw: Vec<u8>,
    /// The header block fragments, without padding and priority fields.
    fragments: Vec<u8>,
    /// Type, flags and where the payload starts in `raw`, of the frame being received.
    frame_type: u8,
    frame_flags: u8,
    payload_start: usize,
}

/// Where a chunk's bytes go: in place up to `split`, then into `out`.
#[derive(Debug)]
struct Sink {
    split: Option<usize>,
    out: Vec<u8>,
}

impl Sink {
    /// `bytes`, the chunk's next bytes, pass unchanged.
    fn pass(&mut self, bytes: &[u8]) {
        if self.split.is_some() {
            self.out.extend_from_slice(bytes);
        }
    }

    /// From the chunk's byte `at` on, nothing passes in place.
    fn hold_from(&mut self, at: usize) {
        self.split.get_or_insert(at);
    }

    /// Bytes produced for the server (only ever after a hold, so in order).
    fn emit(&mut self, bytes: &[u8]) {
        debug_assert!(self.split.is_some());
        self.out.extend_from_slice(bytes);
    }
}

/// The state of one client→server byte stream.
#[derive(Debug)]
pub struct Filter {
    state: State,
    /// Bytes of the next frame head received so far.
    head: [u8; FRAME_HEAD_BYTES],
    head_len: usize,
    /// Payload bytes left in the current frame.
    payload_left: usize,
    block: Option<Block>,
    decoder: Decoder,
    /// A block has been rewritten: the server's dynamic table no longer follows the
    /// client's, so every later block is re-encoded too.
    reencode: bool,
    /// Bytes for the server, to be delivered before anything read later.
    out: Vec<u8>,
    out_pos: usize,
}

impl Default for Filter {
    fn default() -> Self {
        Filter::new()
    }
}

impl Filter {
    pub fn new() -> Filter {
        Filter {
            state: State::Preface { matched: 0 },
            head: [0; FRAME_HEAD_BYTES],
            head_len: 0,
            payload_left: 0,
            block: None,
            decoder: Decoder::new(SERVER_HEADER_TABLE_SIZE_BYTES, MAX_LIST_BYTES),
            reencode: false,
            out: Vec::new(),
            out_pos: 0,
        }
    }

    /// Every later byte passes unchanged, and nothing is held.
    pub fn is_opaque(&self) -> bool {
        matches!(self.state, State::Opaque) && self.output().is_empty()
    }

    /// Bytes waiting for the server; they go before any byte of a later chunk.
    pub fn output(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` bytes of [`Filter::output`] were delivered.
    pub fn consume(&mut self, n: usize) {
        self.out_pos += n;
        if self.out_pos >= self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// Take `chunk`, the next bytes from the client (with [`Filter::output`] empty).
    /// Returns how many of its first bytes go to the server unchanged; what is to
    /// follow them is in [`Filter::output`] (possibly nothing yet).
    pub fn feed(&mut self, chunk: &[u8]) -> usize {
        debug_assert!(self.output().is_empty());
        let mut sink = Sink {
            split: None,
            out: std::mem::take(&mut self.out),
        };
        self.out_pos = 0;
        // Bytes held from an earlier chunk go before any of this one.
        if self.head_len > 0 || self.block.is_some() {
            sink.hold_from(0);
        }
        let mut i = 0;
        while i < chunk.len() {
            let rest = &chunk[i..];
            match &mut self.state {
                State::Opaque => {
                    sink.pass(rest);
                    i = chunk.len();
                }
                State::Preface { matched } => {
                    let n = rest.len().min(PREFACE.len() - *matched);
                    if rest[..n] != PREFACE[*matched..*matched + n] {
                        self.state = State::Opaque;
                        continue;
                    }
                    sink.pass(&rest[..n]);
                    *matched += n;
                    i += n;
                    if *matched == PREFACE.len() {
                        self.state = State::Frames;
                    }
                }
                State::Frames if self.payload_left > 0 => {
                    let n = rest.len().min(self.payload_left);
                    self.payload_left -= n;
                    i += n;
                    match &mut self.block {
                        None => sink.pass(&rest[..n]),
                        Some(block) => {
                            block.raw.extend_from_slice(&rest[..n]);
                            if self.payload_left == 0 {
                                self.frame_done(&mut sink);
                            }
                        }
                    }
                }
                State::Frames => {
                    // Fast path: a whole head of a frame that passes.
                    if self.head_len == 0
                        && self.block.is_none()
                        && rest.len() >= FRAME_HEAD_BYTES
                        && rest[3] != TYPE_HEADERS
                    {
                        sink.pass(&rest[..FRAME_HEAD_BYTES]);
                        self.payload_left = frame_len(&rest[..FRAME_HEAD_BYTES]);
                        i += FRAME_HEAD_BYTES;
                        continue;
                    }
                    sink.hold_from(i);
                    let n = rest.len().min(FRAME_HEAD_BYTES - self.head_len);
                    self.head[self.head_len..self.head_len + n].copy_from_slice(&rest[..n]);
                    self.head_len += n;
                    i += n;
                    if self.head_len == FRAME_HEAD_BYTES {
                        self.head_len = 0;
                        self.frame_head(&mut sink);
                    }
                }
            }
        }
        self.out = sink.out;
        sink.split.unwrap_or(chunk.len())
    }

    /// The client closed its side: whatever is held goes to the server as it came.
    pub fn finish(&mut self) {
        if let Some(block) = self.block.take() {
            self.out.extend_from_slice(&block.raw);
        }
        self.out.extend_from_slice(&self.head[..self.head_len]);
        self.head_len = 0;
        self.state = State::Opaque;
    }

    /// A complete frame head is in `self.head` (and held).
    fn frame_head(&mut self, sink: &mut Sink) {
        let head = self.head;
        let len = frame_len(&head);
        let frame_type = head[3];
        let flags = head[4];
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        self.payload_left = len;
        match &mut self.block {
            None if frame_type == TYPE_HEADERS => {
                if len > MAX_BLOCK_BYTES {
                    sink.emit(&head);
                    self.give_up(sink, FilterError::BlockTooLarge { stream });
                    return;
                }
                let mut raw = Vec::with_capacity(FRAME_HEAD_BYTES + len);
                raw.extend_from_slice(&head);
                self.block = Some(Block {
                    stream,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority: None,
                    raw,
                    fragments: Vec::new(),
                    frame_type,
                    frame_flags: flags,
                    payload_start: FRAME_HEAD_BYTES,
                });
            }
            None => {
                sink.emit(&head);
                return;
            }
            Some(block) if frame_type == TYPE_CONTINUATION && stream == block.stream => {
                let block_stream = block.stream;
                block.raw.extend_from_slice(&head);
                if block.raw.len() + len > MAX_BLOCK_BYTES {
                    self.give_up(
                        sink,
                        FilterError::BlockTooLarge {
                            stream: block_stream,
                        },
                    );
                    return;
                }
                block.frame_type = frame_type;
                block.frame_flags = flags;
                block.payload_start = block.raw.len();
            }
            Some(block) => {
                // A protocol error the server will report; let it see the bytes.
                let err = FilterError::Interleaved {
                    frame_type,
                    stream,
                    block_stream: block.stream,
                };
                block.raw.extend_from_slice(&head);
                self.give_up(sink, err);
                return;
            }
        }
        if len == 0 {
            self.frame_done(sink);
        }
    }

    /// The frame being collected into the block is complete.
    fn frame_done(&mut self, sink: &mut Sink) {
        let Some(block) = &mut self.block else {
            return;
        };
        let mut payload = &block.raw[block.payload_start..];
        if block.frame_type == TYPE_HEADERS {
            let mut pad = 0;
            if block.frame_flags & FLAG_PADDED != 0 {
                let Some((&p, rest)) = payload.split_first() else {
                    let stream = block.stream;
                    self.give_up(sink, FilterError::BadHeadersFrame { stream });
                    return;
                };
                pad = usize::from(p);
                payload = rest;
            }
            if block.frame_flags & FLAG_PRIORITY != 0 {
                let Some((priority, rest)) = payload.split_first_chunk::<PRIORITY_BYTES>() else {
                    let stream = block.stream;
                    self.give_up(sink, FilterError::BadHeadersFrame { stream });
                    return;
                };
                block.priority = Some(*priority);
                payload = rest;
            }
            let Some(fragment_len) = payload.len().checked_sub(pad) else {
                let stream = block.stream;
                self.give_up(sink, FilterError::BadHeadersFrame { stream });
                return;
            };
            payload = &payload[..fragment_len];
        }
        block.fragments.extend_from_slice(payload);
        if block.frame_flags & FLAG_END_HEADERS != 0
            && let Some(block) = self.block.take()
        {
            self.block_done(block, sink);
        }
    }

    /// A whole header block has arrived: pass it, or re-encode it.
    fn block_done(&mut self, block: Block, sink: &mut Sink) {
        let mut fields = match self.decoder.decode(&block.fragments) {
            Ok(fields) => fields,
            Err(source) => {
                let stream = block.stream;
                self.block = Some(block);
                self.give_up(sink, FilterError::Hpack { stream, source });
                return;
            }
        };
        let fixed = fix_authority(&mut fields);
        if let Some(original) = &fixed {
            tracing::debug!(
                stream = block.stream,
                authority = %String::from_utf8_lossy(original),
                "HTTP/2 request's :authority carries a scheme; passing the bare authority"
            );
        }
        if fixed.is_none() && !self.reencode {
            sink.emit(&block.raw);
            return;
        }
        self.reencode = true;
        let mut encoded = Vec::new();
        hpack::encode_literal(&fields, &mut encoded);
        write_frames(&block, &encoded, sink);
    }

    /// Stop following the connection: what is held goes out as it came.
    fn give_up(&mut self, sink: &mut Sink, why: FilterError) {
        tracing::debug!(error = %why, "no longer rewriting HTTP/2 :authority on this connection");
        if let Some(block) = self.block.take() {
            sink.emit(&block.raw);
        }
        self.payload_left = 0;
        self.state = State::Opaque;
    }
}

/// The payload length of a frame head.
fn frame_len(head: &[u8]) -> usize {
    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2])
}

/// Replace each `:authority` written as a URL by its authority; returns the first
/// original value replaced.
fn fix_authority(fields: &mut [Field]) -> Option<Bytes> {
    let mut original = None;
    for f in fields
        .iter_mut()
        .filter(|f| f.name.as_ref() == b":authority")
    {
        if let Some(bare) = bare_authority(&f.value) {
            let old = std::mem::replace(&mut f.value, bare);
            original.get_or_insert(old);
        }
    }
    original
}

/// `scheme://authority[/path…]` → `authority`; `None` when `value` has no scheme. An
/// empty authority (`unix:///run/x.sock`) becomes `localhost`, as gRPC-Go names it.
fn bare_authority(value: &[u8]) -> Option<Bytes> {
    let sep = value.windows(3).position(|w| w == b"://")?;
    let scheme = &value[..sep];
    let valid_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !valid_scheme {
        return None;
    }
    let rest = &value[sep + 3..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(if end == 0 {
        Bytes::from_static(b"localhost")
    } else {
        Bytes::copy_from_slice(&rest[..end])
    })
}

/// Frame the re-encoded `encoded` block as `block` was: HEADERS with its END_STREAM
/// and priority (padding dropped), then CONTINUATIONs as needed.
fn write_frames(block: &Block, encoded: &[u8], sink: &mut Sink) {
    let priority_len = if block.priority.is_some() {
        PRIORITY_BYTES
    } else {
        0
    };
    let first_len = encoded.len().min(MAX_FRAME_PAYLOAD_BYTES - priority_len);
    let (first, mut rest) = encoded.split_at(first_len);
    let mut flags = 0;
    if block.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if block.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    let mut frame = Vec::with_capacity(encoded.len() + 2 * FRAME_HEAD_BYTES + priority_len);
    push_head(
        &mut frame,
        priority_len + first.len(),
        TYPE_HEADERS,
        flags,
        block.stream,
    );
    if let Some(priority) = &block.priority {
        frame.extend_from_slice(priority);
    }
    frame.extend_from_slice(first);
    while !rest.is_empty() {
        let (part, after) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD_BYTES));
        let flags = if after.is_empty() {
            FLAG_END_HEADERS
        } else {
            0
        };
        push_head(
            &mut frame,
            part.len(),
            TYPE_CONTINUATION,
            flags,
            block.stream,
        );
        frame.extend_from_slice(part);
        rest = after;
    }
    sink.emit(&frame);
}

fn push_head(out: &mut Vec<u8>, len: usize, frame_type: u8, flags: u8, stream: u32) {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(frame_type);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::http::h2_authority::hpack::test_encode as enc;
    use proptest::prelude::*;

    pub(crate) const TYPE_DATA: u8 = 0x0;
    pub(crate) const TYPE_SETTINGS: u8 = 0x4;
    pub(crate) const TYPE_PING: u8 = 0x6;
    pub(crate) const TYPE_WINDOW_UPDATE: u8 = 0x8;

    pub(crate) fn frame(frame_type: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_head(&mut out, payload.len(), frame_type, flags, stream);
        out.extend_from_slice(payload);
        out
    }

    /// Preface, SETTINGS, a WINDOW_UPDATE: how a client opens.
    pub(crate) fn opening() -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(frame(TYPE_SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 0]));
        out.extend(frame(TYPE_WINDOW_UPDATE, 0, 0, &[0, 0, 0xff, 0]));
        out
    }

    /// The start of a GET request block.
    fn get_start(b: &mut Vec<u8>) {
        enc::indexed(b, 2); // :method GET
        enc::indexed(b, 6); // :scheme http
        enc::indexed(b, 4); // :path /
    }

    /// The blocks of four requests on one connection, gRPC-Go style (literals with
    /// incremental indexing, Huffman): stream 1 with a good authority and `x-a`;
    /// stream 3 by reference only; stream 5 with `http://…` and `x-b`; stream 7
    /// referencing everything, the bad authority included.
    pub(crate) fn dynamic_table_blocks() -> Vec<(u32, Vec<u8>)> {
        let mut b1 = Vec::new();
        get_start(&mut b1);
        enc::incremental(&mut b1, Some(1), "", "127.0.0.1:2379", true);
        enc::incremental(&mut b1, None, "x-a", "one", true);
        // Table: [62] x-a: one, [63] :authority: 127.0.0.1:2379.
        let mut b3 = Vec::new();
        get_start(&mut b3);
        enc::indexed(&mut b3, 63);
        enc::indexed(&mut b3, 62);
        let mut b5 = Vec::new();
        get_start(&mut b5);
        enc::incremental(&mut b5, Some(1), "", "http://127.0.0.1:2379", true);
        enc::incremental(&mut b5, None, "x-b", "two", false);
        // Table: [62] x-b, [63] :authority http://…, [64] x-a, [65] :authority good.
        let mut b7 = Vec::new();
        get_start(&mut b7);
        enc::indexed(&mut b7, 63);
        enc::indexed(&mut b7, 64);
        enc::indexed(&mut b7, 62);
        vec![(1, b1), (3, b3), (5, b5), (7, b7)]
    }

    fn run(filter: &mut Filter, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in chunks {
            let keep = filter.feed(chunk);
            out.extend_from_slice(&chunk[..keep]);
            out.extend_from_slice(filter.output());
            let n = filter.output().len();
            filter.consume(n);
        }
        out
    }

    fn run_whole(input: &[u8]) -> Vec<u8> {
        run(&mut Filter::new(), &[input])
    }

    #[derive(Debug, PartialEq)]
    struct Frame {
        frame_type: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    }

    fn parse_frames(mut bytes: &[u8]) -> Vec<Frame> {
        bytes = bytes.strip_prefix(PREFACE).expect("preface");
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let len = frame_len(bytes);
            frames.push(Frame {
                frame_type: bytes[3],
                flags: bytes[4],
                stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]),
                payload: bytes[9..9 + len].to_vec(),
            });
            bytes = &bytes[9 + len..];
        }
        frames
    }

    /// Decode the header blocks of `frames` as the server would, one decoder for the
    /// connection; returns (stream, fields) per block.
    fn server_view(frames: &[Frame]) -> Vec<(u32, Vec<(String, String)>)> {
        let mut decoder = Decoder::new(SERVER_HEADER_TABLE_SIZE_BYTES, MAX_LIST_BYTES);
        let mut blocks = Vec::new();
        let mut fragments = Vec::new();
        for f in frames {
            match f.frame_type {
                TYPE_HEADERS => {
                    let mut p = &f.payload[..];
                    let mut pad = 0;
                    if f.flags & FLAG_PADDED != 0 {
                        pad = usize::from(p[0]);
                        p = &p[1..];
                    }
                    if f.flags & FLAG_PRIORITY != 0 {
                        p = &p[5..];
                    }
                    fragments = p[..p.len() - pad].to_vec();
                }
                TYPE_CONTINUATION => fragments.extend_from_slice(&f.payload),
                _ => continue,
            }
            if f.flags & FLAG_END_HEADERS != 0 {
                let fields = decoder
                    .decode(&fragments)
                    .expect("server decodes the block");
                let fields = fields
                    .into_iter()
                    .map(|f| {
                        (
                            String::from_utf8_lossy(&f.name).into_owned(),
                            String::from_utf8_lossy(&f.value).into_owned(),
                        )
                    })
                    .collect();
                blocks.push((f.stream, fields));
            }
        }
        blocks
    }

    fn authority_of(fields: &[(String, String)]) -> &str {
        &fields
            .iter()
            .find(|(n, _)| n == ":authority")
            .expect(":authority")
            .1
    }

    fn header<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
        &fields.iter().find(|(n, _)| n == name).expect(name).1
    }

    #[test]
    fn http1_passes_untouched() {
        let req = b"GET /v2/keys/foo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        let mut f = Filter::new();
        assert_eq!(f.feed(&req[..1]), 1);
        assert!(f.is_opaque());
        assert_eq!(f.feed(&req[1..]), req.len() - 1);

        // A start that looks like the preface for a while.
        let req = b"PRI * HTTP/1.1\r\n\r\n";
        let mut f = Filter::new();
        assert_eq!(run(&mut f, &[&req[..5], &req[5..]]), req);
        assert!(f.is_opaque());
    }

    #[test]
    fn good_authority_passes_byte_for_byte() {
        let mut input = opening();
        let mut b = Vec::new();
        get_start(&mut b);
        enc::incremental(&mut b, Some(1), "", "127.0.0.1:2379", true);
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b));
        input.extend(frame(TYPE_DATA, FLAG_END_STREAM, 1, b"hello"));
        input.extend(frame(TYPE_PING, 0, 0, &[7; 8]));
        let mut b = Vec::new();
        get_start(&mut b);
        enc::indexed(&mut b, 62);
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &b,
        ));
        assert_eq!(run_whole(&input), input);
    }

    #[test]
    fn rewrites_huffman_coded_authority() {
        let mut input = opening();
        let mut b = Vec::new();
        enc::indexed(&mut b, 3); // :method POST
        enc::indexed(&mut b, 6);
        enc::incremental(
            &mut b,
            Some(4),
            "",
            "/etcdserverpb.Maintenance/Status",
            true,
        );
        enc::incremental(&mut b, Some(1), "", "http://127.0.0.1:24001", true);
        enc::incremental(&mut b, Some(31), "", "application/grpc", true);
        enc::incremental(&mut b, None, "te", "trailers", true);
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &b));
        input.extend(frame(TYPE_DATA, FLAG_END_STREAM, 1, &[0, 0, 0, 0, 0]));

        let out = run_whole(&input);
        let frames = parse_frames(&out);
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[2].frame_type, TYPE_HEADERS);
        assert_eq!(frames[2].flags, FLAG_END_HEADERS);
        assert_eq!(frames[3].payload, vec![0, 0, 0, 0, 0]);
        let view = server_view(&frames);
        assert_eq!(
            view,
            vec![(
                1,
                [
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", "/etcdserverpb.Maintenance/Status"),
                    (":authority", "127.0.0.1:24001"),
                    ("content-type", "application/grpc"),
                    ("te", "trailers"),
                ]
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .to_vec()
            )]
        );
    }

    #[test]
    fn dynamic_table_before_and_after_a_rewrite() {
        let mut input = opening();
        for (stream, b) in dynamic_table_blocks() {
            input.extend(frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                stream,
                &b,
            ));
        }
        let out = run_whole(&input);
        let frames = parse_frames(&out);
        let input_frames = parse_frames(&input);
        // The first two blocks pass as they came; the last two are re-encoded.
        assert_eq!(frames.len(), 6);
        assert_eq!(frames[..4], input_frames[..4]);
        assert_ne!(frames[4], input_frames[4]);
        assert_ne!(frames[5], input_frames[5]);
        let view = server_view(&frames);
        let authorities: Vec<_> = view.iter().map(|(_, f)| authority_of(f)).collect();
        assert_eq!(authorities, ["127.0.0.1:2379"; 4]);
        assert_eq!(header(&view[1].1, "x-a"), "one");
        assert_eq!(header(&view[2].1, "x-b"), "two");
        assert_eq!(header(&view[3].1, "x-a"), "one");
        assert_eq!(header(&view[3].1, "x-b"), "two");
        for (_, fields) in &view {
            assert_eq!(&fields[..3], &server_view(&input_frames)[0].1[..3]);
        }
    }

    #[test]
    fn continuation_padding_and_priority() {
        let mut block = Vec::new();
        get_start(&mut block);
        enc::incremental(&mut block, Some(1), "", "https://etcd.example:2379/", true);
        enc::incremental(&mut block, None, "x-c", "three", false);
        let (part1, part2) = block.split_at(5);
        let mut payload = vec![3]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 0, 15]); // exclusive dependency, weight
        payload.extend_from_slice(part1);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = opening();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_STREAM | FLAG_PADDED | FLAG_PRIORITY,
            1,
            &payload,
        ));
        let (c1, c2) = part2.split_at(4);
        input.extend(frame(TYPE_CONTINUATION, 0, 1, c1));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, c2));
        input.extend(frame(TYPE_PING, 0, 0, &[1; 8]));

        let frames = parse_frames(&run_whole(&input));
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[2].frame_type, TYPE_HEADERS);
        assert_eq!(
            frames[2].flags,
            FLAG_END_STREAM | FLAG_PRIORITY | FLAG_END_HEADERS
        );
        assert_eq!(&frames[2].payload[..5], &[0x80, 0, 0, 0, 15]);
        assert_eq!(frames[3].payload, vec![1; 8]);
        let view = server_view(&frames);
        assert_eq!(authority_of(&view[0].1), "etcd.example:2379");
        assert_eq!(header(&view[0].1, "x-c"), "three");
    }

    #[test]
    fn large_rewritten_block_is_split() {
        let big = "v".repeat(40_000);
        let mut block = Vec::new();
        get_start(&mut block);
        enc::incremental(&mut block, Some(1), "", "http://127.0.0.1:2379", false);
        enc::incremental(&mut block, None, "x-big", &big, true);
        let mut input = opening();
        // Sent in frames of at most 16384 bytes, as the client must.
        let mut chunks = block.chunks(MAX_FRAME_PAYLOAD_BYTES).peekable();
        let first = chunks.next().unwrap();
        input.extend(frame(TYPE_HEADERS, FLAG_END_STREAM, 1, first));
        while let Some(c) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                FLAG_END_HEADERS
            } else {
                0
            };
            input.extend(frame(TYPE_CONTINUATION, flags, 1, c));
        }
        let frames = parse_frames(&run_whole(&input));
        let block_frames: Vec<_> = frames
            .iter()
            .filter(|f| matches!(f.frame_type, TYPE_HEADERS | TYPE_CONTINUATION))
            .collect();
        assert_eq!(block_frames.len(), 3);
        assert!(
            block_frames
                .iter()
                .all(|f| f.payload.len() <= MAX_FRAME_PAYLOAD_BYTES)
        );
        assert_eq!(block_frames[0].flags, FLAG_END_STREAM);
        assert_eq!(block_frames[1].flags, 0);
        assert_eq!(block_frames[2].flags, FLAG_END_HEADERS);
        let view = server_view(&frames);
        assert_eq!(authority_of(&view[0].1), "127.0.0.1:2379");
        assert_eq!(header(&view[0].1, "x-big"), big);
    }

    #[test]
    fn undecodable_block_passes_and_stops_the_filter() {
        let mut input = opening();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x80]));
        let mut b = Vec::new();
        get_start(&mut b);
        enc::incremental(&mut b, Some(1), "", "http://127.0.0.1:2379", false);
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &b));
        let mut f = Filter::new();
        assert_eq!(run(&mut f, &[&input]), input);
        assert!(f.is_opaque());
    }

    #[test]
    fn interleaved_frame_passes_and_stops_the_filter() {
        let mut input = opening();
        let mut b = Vec::new();
        get_start(&mut b);
        enc::incremental(&mut b, Some(1), "", "http://127.0.0.1:2379", false);
        input.extend(frame(TYPE_HEADERS, 0, 1, &b));
        input.extend(frame(TYPE_PING, 0, 0, &[0; 8]));
        let mut f = Filter::new();
        assert_eq!(run(&mut f, &[&input]), input);
        assert!(f.is_opaque());
    }

    #[test]
    fn eof_inside_a_block_flushes_it() {
        let mut input = opening();
        let mut b = Vec::new();
        get_start(&mut b);
        input.extend(frame(TYPE_HEADERS, 0, 1, &b));
        input.extend_from_slice(&[0, 0]); // part of the next head
        let mut f = Filter::new();
        let mut out = run(&mut f, &[&input]);
        f.finish();
        out.extend_from_slice(f.output());
        assert_eq!(out, input);
    }

    #[test]
    fn authority_forms() {
        let bare =
            |v: &str| bare_authority(v.as_bytes()).map(|b| String::from_utf8(b.to_vec()).unwrap());
        assert_eq!(
            bare("http://127.0.0.1:2379").as_deref(),
            Some("127.0.0.1:2379")
        );
        assert_eq!(bare("https://h:1/x?y").as_deref(), Some("h:1"));
        assert_eq!(
            bare("unix://localhost:2379").as_deref(),
            Some("localhost:2379")
        );
        assert_eq!(bare("unix:///run/etcd.sock").as_deref(), Some("localhost"));
        assert_eq!(bare("127.0.0.1:2379"), None);
        assert_eq!(bare("://x"), None);
        assert_eq!(bare("1http://x"), None);
    }

    fn scenario() -> Vec<u8> {
        let mut input = opening();
        for (stream, b) in dynamic_table_blocks() {
            input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, stream, &b));
            input.extend(frame(
                TYPE_DATA,
                FLAG_END_STREAM,
                stream,
                &[stream as u8; 20],
            ));
        }
        input
    }

    proptest! {
        /// However the stream is cut into reads, the server gets the same bytes.
        #[test]
        fn any_chunking_gives_the_same_output(
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12)
        ) {
            let input = scenario();
            let want = run_whole(&input);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len())).collect();
            points.sort_unstable();
            points.dedup();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&input[last..p]);
                last = p;
            }
            chunks.push(&input[last..]);
            let chunks: Vec<&[u8]> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
            prop_assert_eq!(run(&mut Filter::new(), &chunks), want);
        }

        /// Arbitrary bytes after the preface never panic, and no byte is lost when
        /// nothing is rewritten.
        #[test]
        fn garbage_frames(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut input = PREFACE.to_vec();
            input.extend_from_slice(&data);
            let mut f = Filter::new();
            let mut out = run(&mut f, &[&input]);
            f.finish();
            out.extend_from_slice(f.output());
            if !f.reencode {
                prop_assert_eq!(out, input);
            }
        }
    }
}
