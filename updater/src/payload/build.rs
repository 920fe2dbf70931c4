//! Building, signing and reading payload files (`keel-updater payload …`, and the images
//! crate, which makes the payload from the same USR image it puts on the disk).

use super::keys::sign;
use super::{Chunk, Compression, FORMAT, Header, Manifest, PayloadError, hex, sha256_hex};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Default chunk size: small enough to resume cheaply, large enough for few requests.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
/// zstd level used for compressed payloads.
pub const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{path}: cannot {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("chunk size must be between 4 KiB and 64 MiB, not {0}")]
    ChunkSize(u64),
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |source| BuildError::Io { path, op, source }
}

/// What to put in the manifest besides the image.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub version: String,
    pub rollback_index: u64,
    pub expires: i64,
    pub board: String,
    pub arch: String,
    pub chunk_size: u64,
    pub compression: Compression,
}

/// Builds `out` from `image`, signed by `keys` (possibly none). Returns the manifest.
pub fn build(
    image: &Path,
    out: &Path,
    opts: &BuildOptions,
    keys: &[SigningKey],
) -> Result<Manifest, BuildError> {
    if !(4096..=super::MAX_CHUNK).contains(&opts.chunk_size) {
        return Err(BuildError::ChunkSize(opts.chunk_size));
    }
    let mut input = std::fs::File::open(image).map_err(io(image, "open"))?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut data = tempfile::tempfile_in(dir).map_err(io(dir, "create a temp file in"))?;
    let mut chunks = Vec::new();
    let mut whole = Sha256::new();
    let mut image_size = 0u64;
    let mut buf = vec![0u8; opts.chunk_size as usize];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = input.read(&mut buf[filled..]).map_err(io(image, "read"))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        let piece = &buf[..filled];
        whole.update(piece);
        image_size += filled as u64;
        let stored = match opts.compression {
            Compression::None => piece.to_vec(),
            Compression::Zstd => {
                zstd::bulk::compress(piece, ZSTD_LEVEL).map_err(io(image, "compress"))?
            }
        };
        data.write_all(&stored).map_err(io(out, "write"))?;
        chunks.push(Chunk {
            sha256: sha256_hex(piece),
            stored_size: stored.len() as u64,
        });
        if filled < buf.len() {
            break;
        }
    }
    let manifest = Manifest {
        format: FORMAT,
        version: opts.version.clone(),
        rollback_index: opts.rollback_index,
        expires: opts.expires,
        board: opts.board.clone(),
        arch: opts.arch.clone(),
        image_size,
        image_sha256: hex(&whole.finalize()),
        chunk_size: opts.chunk_size,
        compression: opts.compression,
        chunks,
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    let signatures: Vec<_> = keys.iter().map(|k| sign(k, &manifest_bytes)).collect();
    write_payload(
        out,
        &Header::encode(&manifest_bytes, &signatures),
        &mut data,
    )?;
    Ok(manifest)
}

/// Writes header + data atomically to `out`.
fn write_payload(out: &Path, header: &[u8], data: &mut std::fs::File) -> Result<(), BuildError> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir, "create a temp file in"))?;
    tmp.write_all(header).map_err(io(out, "write"))?;
    data.seek(SeekFrom::Start(0)).map_err(io(out, "rewind"))?;
    std::io::copy(data, &mut tmp).map_err(io(out, "write"))?;
    tmp.as_file().sync_all().map_err(io(out, "fsync"))?;
    tmp.persist(out)
        .map_err(|e| e.error)
        .map_err(io(out, "rename onto"))?;
    Ok(())
}

/// Reads the header of a payload file.
pub fn read_header(path: &Path) -> Result<(Header, u64), BuildError> {
    let what = path.display().to_string();
    let mut f = std::fs::File::open(path).map_err(io(path, "open"))?;
    let total = f.metadata().map_err(io(path, "stat"))?.len();
    let mut prefix = [0u8; super::PREFIX_LEN as usize];
    let n = read_up_to(&mut f, &mut prefix).map_err(io(path, "read"))?;
    let mlen = super::manifest_len(&what, &prefix[..n])? as u64;
    let mut rest = vec![0u8; (mlen + 4) as usize];
    let got = read_up_to(&mut f, &mut rest).map_err(io(path, "read"))?;
    if got < rest.len() {
        return Err(PayloadError::ShortHeader {
            what,
            have: super::PREFIX_LEN + got as u64,
            need: super::PREFIX_LEN + mlen + 4,
        }
        .into());
    }
    let slen = super::signatures_len(&what, &rest[mlen as usize..])? as usize;
    let mut sigs = vec![0u8; slen];
    let got = read_up_to(&mut f, &mut sigs).map_err(io(path, "read"))?;
    let mut all = prefix[..n].to_vec();
    all.extend_from_slice(&rest);
    all.extend_from_slice(&sigs[..got]);
    Ok((Header::parse(&what, &all)?, total))
}

fn read_up_to(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = f.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Adds signatures by `keys` to an existing payload.
pub fn add_signatures(path: &Path, keys: &[SigningKey]) -> Result<(), BuildError> {
    let (header, _) = read_header(path)?;
    let mut sigs = header.signatures.clone();
    for k in keys {
        let entry = sign(k, &header.manifest_bytes);
        sigs.retain(|s| s.key_id != entry.key_id);
        sigs.push(entry);
    }
    let mut f = std::fs::File::open(path).map_err(io(path, "open"))?;
    f.seek(SeekFrom::Start(header.data_offset))
        .map_err(io(path, "seek"))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut data = tempfile::tempfile_in(dir).map_err(io(dir, "create a temp file in"))?;
    std::io::copy(&mut f, &mut data).map_err(io(path, "copy"))?;
    write_payload(
        path,
        &Header::encode(&header.manifest_bytes, &sigs),
        &mut data,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::keys::TrustedKeys;
    use crate::payload::{Policy, decode_chunk, verify};

    fn opts(compression: Compression) -> BuildOptions {
        BuildOptions {
            version: "1.1.0".into(),
            rollback_index: 7,
            expires: 4_000_000_000,
            board: "amd64-usr".into(),
            arch: "x86_64".into(),
            chunk_size: 4096,
            compression,
        }
    }

    fn policy() -> Policy {
        Policy {
            now: 1_800_000_000,
            min_rollback_index: 7,
            board: "amd64-usr".into(),
            arch: "x86_64".into(),
            slot_size: 1 << 20,
        }
    }

    #[test]
    fn build_sign_verify_decode() {
        for compression in [Compression::None, Compression::Zstd] {
            let dir = tempfile::tempdir().unwrap();
            let image = dir.path().join("usr.img");
            let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
            std::fs::write(&image, &bytes).unwrap();
            let key = SigningKey::from_bytes(&[9; 32]);
            let out = dir.path().join("p");
            let m = build(&image, &out, &opts(compression), &[]).unwrap();
            assert_eq!((m.image_size, m.chunks.len()), (10_000, 3));
            let (h, total) = read_header(&out).unwrap();
            assert!(h.signatures.is_empty());
            assert_eq!(total, h.data_offset + m.data_len());
            let trusted = TrustedKeys::from_keys([key.verifying_key()]);
            assert!(matches!(
                verify("p", &h, &trusted, &policy()),
                Err(PayloadError::Unsigned { .. })
            ));
            add_signatures(&out, &[key]).unwrap();
            let (h, _) = read_header(&out).unwrap();
            let m2 = verify("p", &h, &trusted, &policy()).unwrap();
            assert_eq!(m2, m);
            let raw = std::fs::read(&out).unwrap();
            let mut image_back = Vec::new();
            for i in 0..m.chunks.len() {
                let start = (h.data_offset + m.stored_offset(i)) as usize;
                let stored = &raw[start..start + m.chunks[i].stored_size as usize];
                image_back.extend(decode_chunk("p", &m, i, stored).unwrap());
            }
            assert_eq!(image_back, bytes);
        }
    }
}
