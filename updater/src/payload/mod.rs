//! Keel's update payload: a small manifest signed with ed25519, then the USR image in
//! chunks (each stored raw or zstd-compressed on its own, so any chunk can be fetched with
//! a Range request and verified before it is written).
//!
//! ```text
//! "KEELPAY1"                    8 bytes
//! manifest length               u32 big-endian, ≤ 16 MiB
//! manifest                      JSON (these exact bytes are signed)
//! signatures length             u32 big-endian, ≤ 64 KiB
//! signatures                    JSON [{"key_id","signature"}] (base64 ed25519)
//! chunk 0 … chunk n-1           stored bytes, sizes from the manifest
//! ```
//!
//! Nothing is trusted before the signature over the manifest bytes checks out against a
//! trusted key; then the manifest's chunk hashes vouch for every byte of the image.

pub mod build;
pub mod keys;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Magic at the start of every payload.
pub const MAGIC: &[u8; 8] = b"KEELPAY1";
/// Manifest format this updater reads.
pub const FORMAT: u32 = 1;
/// Upper bounds that keep a hostile payload from making us allocate without end.
pub const MAX_MANIFEST: u32 = 16 << 20;
pub const MAX_SIGNATURES: u32 = 64 << 10;
pub const MAX_CHUNK: u64 = 64 << 20;

/// How chunks are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
}

/// One chunk of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// SHA-256 (hex) of the chunk's image bytes (after decompression).
    pub sha256: String,
    /// Bytes the chunk takes in the payload.
    pub stored_size: u64,
}

/// What the signature vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// The OS version the image boots (`VERSION` in its os-release).
    pub version: String,
    /// Monotonically increasing; a host refuses anything below its stored minimum.
    pub rollback_index: u64,
    /// Unix seconds after which the manifest is refused (freeze attacks).
    pub expires: i64,
    /// Hardware the image is for (e.g. `amd64-usr`) and its CPU architecture.
    pub board: String,
    pub arch: String,
    pub image_size: u64,
    /// SHA-256 (hex) of the whole image.
    pub image_sha256: String,
    pub chunk_size: u64,
    pub compression: Compression,
    pub chunks: Vec<Chunk>,
}

/// A signature in the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureEntry {
    pub key_id: String,
    /// base64 of the 64-byte ed25519 signature over the manifest bytes.
    pub signature: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("{what}: not a Keel payload (bad magic)")]
    Magic { what: String },
    #[error("{what}: payload header is truncated ({have} bytes, need {need})")]
    ShortHeader { what: String, have: u64, need: u64 },
    #[error("{what}: {field} length {len} exceeds the limit {limit}")]
    TooLarge {
        what: String,
        field: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("{what}: the signature block is not valid JSON")]
    SignatureBlock {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: the payload is not signed")]
    Unsigned { what: String },
    #[error("{what}: signed only by unknown key(s) {ids} (trusted: {trusted})")]
    UnknownKey {
        what: String,
        ids: String,
        trusted: String,
    },
    #[error("{what}: bad signature by key {key_id}")]
    BadSignature { what: String, key_id: String },
    #[error("{what}: the signed manifest is not valid")]
    ManifestJson {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: manifest format {0} is not supported (this updater reads {FORMAT})", .format)]
    Format { what: String, format: u32 },
    #[error("{what}: manifest for version {version} expired at {expires} (now {now})")]
    Expired {
        what: String,
        version: String,
        expires: i64,
        now: i64,
    },
    #[error(
        "{what}: version {version} has rollback index {index}, below this host's minimum {min} (downgrade refused)"
    )]
    Downgrade {
        what: String,
        version: String,
        index: u64,
        min: u64,
    },
    #[error("{what}: image is for board {board}/{arch}, this host is {host_board}/{host_arch}")]
    WrongBoard {
        what: String,
        board: String,
        arch: String,
        host_board: String,
        host_arch: String,
    },
    #[error("{what}: image of {image} bytes does not fit the {slot}-byte slot")]
    TooBig { what: String, image: u64, slot: u64 },
    #[error("{what}: manifest is inconsistent: {why}")]
    Inconsistent { what: String, why: String },
    #[error("{what}: payload is {actual} bytes, the manifest describes {expected} ({kind})")]
    Length {
        what: String,
        actual: u64,
        expected: u64,
        kind: &'static str,
    },
    #[error("{what}: chunk {index} does not match its hash (expected {expected}, got {actual})")]
    ChunkHash {
        what: String,
        index: usize,
        expected: String,
        actual: String,
    },
    #[error("{what}: chunk {index} does not decompress to {expected} bytes")]
    ChunkSize {
        what: String,
        index: usize,
        expected: u64,
    },
    #[error(
        "{what}: the image does not match the manifest's hash (expected {expected}, got {actual})"
    )]
    ImageHash {
        what: String,
        expected: String,
        actual: String,
    },
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The parsed header of a payload: where things are, before any trust.
#[derive(Debug, Clone)]
pub struct Header {
    pub manifest_bytes: Vec<u8>,
    pub signatures: Vec<SignatureEntry>,
    /// Offset of chunk 0 in the payload.
    pub data_offset: u64,
}

/// Bytes needed to read the lengths: magic and the manifest length.
pub const PREFIX_LEN: u64 = 12;

/// The manifest length from the first [`PREFIX_LEN`] bytes.
pub fn manifest_len(what: &str, prefix: &[u8]) -> Result<u32, PayloadError> {
    if prefix.len() < PREFIX_LEN as usize {
        return Err(PayloadError::ShortHeader {
            what: what.into(),
            have: prefix.len() as u64,
            need: PREFIX_LEN,
        });
    }
    if &prefix[..8] != MAGIC {
        return Err(PayloadError::Magic { what: what.into() });
    }
    let len = u32::from_be_bytes(prefix[8..12].try_into().expect("4 bytes"));
    if len > MAX_MANIFEST {
        return Err(PayloadError::TooLarge {
            what: what.into(),
            field: "manifest",
            len: len as u64,
            limit: MAX_MANIFEST as u64,
        });
    }
    Ok(len)
}

/// The signatures length from the 4 bytes after the manifest.
pub fn signatures_len(what: &str, bytes: &[u8]) -> Result<u32, PayloadError> {
    let len = u32::from_be_bytes(bytes.try_into().map_err(|_| PayloadError::ShortHeader {
        what: what.into(),
        have: bytes.len() as u64,
        need: 4,
    })?);
    if len > MAX_SIGNATURES {
        return Err(PayloadError::TooLarge {
            what: what.into(),
            field: "signatures",
            len: len as u64,
            limit: MAX_SIGNATURES as u64,
        });
    }
    Ok(len)
}

impl Header {
    /// Parses a header from the start of a payload (`bytes` may hold more).
    pub fn parse(what: &str, bytes: &[u8]) -> Result<Header, PayloadError> {
        let short = |need: u64| PayloadError::ShortHeader {
            what: what.into(),
            have: bytes.len() as u64,
            need,
        };
        let mlen = manifest_len(what, bytes)? as usize;
        let m_end = PREFIX_LEN as usize + mlen;
        if bytes.len() < m_end + 4 {
            return Err(short(m_end as u64 + 4));
        }
        let slen = signatures_len(what, &bytes[m_end..m_end + 4])? as usize;
        let s_end = m_end + 4 + slen;
        if bytes.len() < s_end {
            return Err(short(s_end as u64));
        }
        let signatures = if slen == 0 {
            Vec::new()
        } else {
            serde_json::from_slice(&bytes[m_end + 4..s_end]).map_err(|source| {
                PayloadError::SignatureBlock {
                    what: what.into(),
                    source,
                }
            })?
        };
        Ok(Header {
            manifest_bytes: bytes[PREFIX_LEN as usize..m_end].to_vec(),
            signatures,
            data_offset: s_end as u64,
        })
    }

    /// Serialises a header.
    pub fn encode(manifest_bytes: &[u8], signatures: &[SignatureEntry]) -> Vec<u8> {
        let sigs = if signatures.is_empty() {
            Vec::new()
        } else {
            serde_json::to_vec(signatures).expect("signatures serialise")
        };
        let mut out = Vec::with_capacity(16 + manifest_bytes.len() + sigs.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(manifest_bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(manifest_bytes);
        out.extend_from_slice(&(sigs.len() as u32).to_be_bytes());
        out.extend_from_slice(&sigs);
        out
    }
}

/// What the host accepts.
#[derive(Debug, Clone)]
pub struct Policy {
    pub now: i64,
    pub min_rollback_index: u64,
    pub board: String,
    pub arch: String,
    /// Size of the slot the image goes to (0 = do not check).
    pub slot_size: u64,
}

impl Manifest {
    /// Bytes of the chunks as stored.
    pub fn data_len(&self) -> u64 {
        self.chunks.iter().map(|c| c.stored_size).sum()
    }

    /// Image bytes in chunk `i`.
    pub fn chunk_len(&self, i: usize) -> u64 {
        let start = i as u64 * self.chunk_size;
        self.chunk_size.min(self.image_size.saturating_sub(start))
    }

    /// Offset of chunk `i` within the data area.
    pub fn stored_offset(&self, i: usize) -> u64 {
        self.chunks[..i].iter().map(|c| c.stored_size).sum()
    }

    fn check_shape(&self, what: &str) -> Result<(), PayloadError> {
        let bad = |why: String| PayloadError::Inconsistent {
            what: what.into(),
            why,
        };
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK {
            return Err(bad(format!(
                "chunk size {} is not in 1..={MAX_CHUNK}",
                self.chunk_size
            )));
        }
        let want = self.image_size.div_ceil(self.chunk_size);
        if self.chunks.len() as u64 != want {
            return Err(bad(format!(
                "{} chunks listed, {want} needed for {} bytes in chunks of {}",
                self.chunks.len(),
                self.image_size,
                self.chunk_size
            )));
        }
        for (i, c) in self.chunks.iter().enumerate() {
            if c.sha256.len() != 64 || !c.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "chunk {i} hash {:?} is not SHA-256 hex",
                    c.sha256
                )));
            }
            let limit = match self.compression {
                Compression::None => self.chunk_len(i),
                Compression::Zstd => zstd_bound(self.chunk_len(i)),
            };
            if c.stored_size == 0 || c.stored_size > limit {
                return Err(bad(format!(
                    "chunk {i} stored size {} is not in 1..={limit}",
                    c.stored_size
                )));
            }
        }
        if self.image_sha256.len() != 64 {
            return Err(bad("image hash is not SHA-256 hex".into()));
        }
        Ok(())
    }

    /// Applies the host's policy.
    pub fn check_policy(&self, what: &str, p: &Policy) -> Result<(), PayloadError> {
        if self.format != FORMAT {
            return Err(PayloadError::Format {
                what: what.into(),
                format: self.format,
            });
        }
        if self.expires <= p.now {
            return Err(PayloadError::Expired {
                what: what.into(),
                version: self.version.clone(),
                expires: self.expires,
                now: p.now,
            });
        }
        if self.rollback_index < p.min_rollback_index {
            return Err(PayloadError::Downgrade {
                what: what.into(),
                version: self.version.clone(),
                index: self.rollback_index,
                min: p.min_rollback_index,
            });
        }
        if self.board != p.board || self.arch != p.arch {
            return Err(PayloadError::WrongBoard {
                what: what.into(),
                board: self.board.clone(),
                arch: self.arch.clone(),
                host_board: p.board.clone(),
                host_arch: p.arch.clone(),
            });
        }
        if p.slot_size != 0 && self.image_size > p.slot_size {
            return Err(PayloadError::TooBig {
                what: what.into(),
                image: self.image_size,
                slot: p.slot_size,
            });
        }
        self.check_shape(what)
    }
}

/// zstd's worst case for `n` input bytes (ZSTD_COMPRESSBOUND).
pub fn zstd_bound(n: u64) -> u64 {
    n + (n >> 8)
        + if n < (128 << 10) {
            ((128 << 10) - n) >> 11
        } else {
            0
        }
}

/// Checks the signatures over the manifest bytes, then parses and checks the manifest.
pub fn verify(
    what: &str,
    header: &Header,
    trusted: &keys::TrustedKeys,
    policy: &Policy,
) -> Result<Manifest, PayloadError> {
    trusted.verify(what, &header.manifest_bytes, &header.signatures)?;
    let manifest: Manifest = serde_json::from_slice(&header.manifest_bytes).map_err(|source| {
        PayloadError::ManifestJson {
            what: what.into(),
            source,
        }
    })?;
    manifest.check_policy(what, policy)?;
    Ok(manifest)
}

/// Turns a stored chunk into image bytes and checks its hash.
pub fn decode_chunk(
    what: &str,
    manifest: &Manifest,
    index: usize,
    stored: &[u8],
) -> Result<Vec<u8>, PayloadError> {
    let expected_len = manifest.chunk_len(index);
    let data = match manifest.compression {
        Compression::None => stored.to_vec(),
        Compression::Zstd => {
            let mut out = Vec::with_capacity(expected_len as usize);
            let mut dec =
                zstd::stream::read::Decoder::new(stored).map_err(|_| PayloadError::ChunkSize {
                    what: what.into(),
                    index,
                    expected: expected_len,
                })?;
            // Read at most one byte more than expected, so a zstd bomb cannot grow it.
            use std::io::Read;
            (&mut dec)
                .take(expected_len + 1)
                .read_to_end(&mut out)
                .map_err(|_| PayloadError::ChunkSize {
                    what: what.into(),
                    index,
                    expected: expected_len,
                })?;
            out
        }
    };
    if data.len() as u64 != expected_len {
        return Err(PayloadError::ChunkSize {
            what: what.into(),
            index,
            expected: expected_len,
        });
    }
    let actual = sha256_hex(&data);
    if actual != manifest.chunks[index].sha256 {
        return Err(PayloadError::ChunkHash {
            what: what.into(),
            index,
            expected: manifest.chunks[index].sha256.clone(),
            actual,
        });
    }
    Ok(data)
}
