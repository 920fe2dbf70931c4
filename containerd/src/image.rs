//! Images: import OCI image layouts (directory or tar) and `docker save` archives into a
//! content-addressed store, verifying every blob against its sha256 digest (and, when
//! trusted keys are configured, an ed25519 signature over the manifest digest); compose a
//! container rootfs from the layers with whiteouts; `run IMAGE` with rkt's flags.
//!
//! Store layout (`--store`, default `/var/lib/keel-containerd`): `blobs/sha256/<hex>`,
//! `images.json` (name → manifest, config, layers), `trust/*.pub`, `layers/<hex>/` (each
//! layer unpacked once, whiteouts in overlayfs form), `containers/<id>/` (the generated
//! bundles of running images: `rootfs` an overlay of the unpacked layers with the
//! container's `upper` and `work`, or a copy where overlayfs is not available).

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: cannot {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: not valid JSON")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: neither an OCI image layout nor a docker save archive")]
    Format { path: PathBuf },
    #[error(
        "{what}: digest mismatch (expected {expected}, got {actual}) — the blob was tampered with or corrupted"
    )]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("image {0} is signed by no trusted key (trusted keys are in {1})")]
    Signature(String, String),
    #[error("no image named {0}")]
    NotFound(String),
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { path, op, source }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An imported image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub manifest: String,
    pub config: String,
    /// Layer blob digests, bottom first.
    pub layers: Vec<String>,
    pub imported: String,
    pub signed_by: Option<String>,
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
}

/// A blob source: where to read the bytes of a digest from.
trait Blobs {
    fn read(&self, digest: &str) -> Result<Vec<u8>, ImageError>;
}

struct LayoutDir(PathBuf);

impl Blobs for LayoutDir {
    fn read(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let (alg, h) = digest
            .split_once(':')
            .ok_or_else(|| ImageError::Invalid(format!("digest {digest:?} has no algorithm")))?;
        if alg != "sha256" || h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImageError::Invalid(format!(
                "digest {digest:?}: only sha256 is supported"
            )));
        }
        let p = self.0.join("blobs").join(alg).join(h);
        std::fs::read(&p).map_err(io(&p, "read"))
    }
}

/// Checks `bytes` against `digest`.
fn verify(what: &str, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
    let actual = format!("sha256:{}", hex(&Sha256::digest(bytes)));
    if actual != digest {
        return Err(ImageError::Digest {
            what: what.to_string(),
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(())
}

fn json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        what: what.to_string(),
        source,
    })
}

/// Extracts a tar file into `dir` (no path may leave it).
fn untar(file: &Path, dir: &Path) -> Result<(), ImageError> {
    let f = std::fs::File::open(file).map_err(io(file, "open"))?;
    let mut a = tar::Archive::new(f);
    for entry in a.entries().map_err(io(file, "read"))? {
        let mut e = entry.map_err(io(file, "read"))?;
        e.unpack_in(dir).map_err(io(file, "unpack"))?;
    }
    Ok(())
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn records(&self) -> Result<BTreeMap<String, ImageRecord>, ImageError> {
        let p = self.dir.join("images.json");
        match std::fs::read(&p) {
            Ok(b) => json(&p.display().to_string(), &b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io(&p, "read")(e)),
        }
    }

    fn save_records(&self, r: &BTreeMap<String, ImageRecord>) -> Result<(), ImageError> {
        let p = self.dir.join("images.json");
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir, "create"))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)
            .map_err(io(&self.dir, "create a temp file in"))?;
        tmp.write_all(&serde_json::to_vec_pretty(r).expect("records serialise"))
            .map_err(io(&p, "write"))?;
        tmp.as_file().sync_all().map_err(io(&p, "fsync"))?;
        tmp.persist(&p)
            .map_err(|e| e.error)
            .map_err(io(&p, "rename onto"))?;
        Ok(())
    }

    fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let p = self.blob_path(digest);
        if p.exists() {
            return Ok(());
        }
        let dir = p.parent().expect("blob dir");
        std::fs::create_dir_all(dir).map_err(io(dir, "create"))?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(dir).map_err(io(dir, "create a temp file in"))?;
        tmp.write_all(bytes).map_err(io(&p, "write"))?;
        tmp.persist(&p)
            .map_err(|e| e.error)
            .map_err(io(&p, "rename onto"))?;
        Ok(())
    }

    /// Trusted keys (`trust/*.pub`, base64 ed25519 public keys).
    pub fn trusted_keys(&self) -> Result<Vec<(String, ed25519_dalek::VerifyingKey)>, ImageError> {
        let dir = self.dir.join("trust");
        let mut out = Vec::new();
        let Ok(list) = std::fs::read_dir(&dir) else {
            return Ok(out);
        };
        for e in list.flatten() {
            let p = e.path();
            let text = std::fs::read_to_string(&p).map_err(io(&p, "read"))?;
            let line: String = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<String>()
                .trim()
                .to_string();
            let key = base64::engine::general_purpose::STANDARD
                .decode(line)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
                .ok_or_else(|| {
                    ImageError::Invalid(format!("{}: not a base64 ed25519 public key", p.display()))
                })?;
            out.push((e.file_name().to_string_lossy().into_owned(), key));
        }
        Ok(out)
    }

    /// Adds a trusted key.
    pub fn trust(&self, key_file: &Path) -> Result<(), ImageError> {
        let dir = self.dir.join("trust");
        std::fs::create_dir_all(&dir).map_err(io(&dir, "create"))?;
        let name = key_file
            .file_name()
            .ok_or_else(|| ImageError::Invalid("key file has no name".into()))?;
        std::fs::copy(key_file, dir.join(name)).map_err(io(key_file, "copy"))?;
        self.trusted_keys().map(|_| ())
    }

    /// Imports an OCI layout (dir or tar) or a docker save archive as `name`.
    pub fn import(
        &self,
        path: &Path,
        name: Option<&str>,
        signature: Option<&Path>,
    ) -> Result<(String, ImageRecord), ImageError> {
        let tmp = tempfile::tempdir_in(std::env::temp_dir())
            .map_err(io(path, "create a temp dir for"))?;
        let root = if path.is_dir() {
            path.to_path_buf()
        } else {
            untar(path, tmp.path())?;
            tmp.path().to_path_buf()
        };
        let (manifest_digest, manifest_bytes, default_name, blobs): (
            String,
            Vec<u8>,
            Option<String>,
            Box<dyn Blobs>,
        ) = if root.join("oci-layout").exists() {
            let index: serde_json::Value = json(
                "index.json",
                &std::fs::read(root.join("index.json"))
                    .map_err(io(&root.join("index.json"), "read"))?,
            )?;
            let m = index["manifests"]
                .as_array()
                .and_then(|a| a.first())
                .ok_or_else(|| ImageError::Invalid("index.json lists no manifest".into()))?;
            let digest = m["digest"].as_str().unwrap_or_default().to_string();
            let blobs = LayoutDir(root.clone());
            let bytes = blobs.read(&digest)?;
            verify("manifest", &digest, &bytes)?;
            let tag = m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .map(str::to_string);
            (digest, bytes, tag, Box::new(blobs))
        } else if root.join("manifest.json").exists() {
            return self.import_docker(&root, name, signature);
        } else {
            return Err(ImageError::Format {
                path: path.to_path_buf(),
            });
        };
        let manifest: serde_json::Value = json("manifest", &manifest_bytes)?;
        let config = manifest["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let config_bytes = blobs.read(&config)?;
        verify("config", &config, &config_bytes)?;
        let mut layers = Vec::new();
        let mut layer_bytes = Vec::new();
        for (i, l) in manifest["layers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let d = l["digest"].as_str().unwrap_or_default().to_string();
            let b = blobs.read(&d)?;
            verify(&format!("layer {i}"), &d, &b)?;
            layers.push(d);
            layer_bytes.push(b);
        }
        let name = name
            .map(str::to_string)
            .or(default_name)
            .unwrap_or_else(|| manifest_digest.clone());
        let signed_by = self.check_signature(&name, &manifest_digest, signature)?;
        self.commit(
            name,
            signed_by,
            (manifest_digest, manifest_bytes),
            (config, config_bytes),
            layers,
            layer_bytes,
        )
    }

    fn import_docker(
        &self,
        root: &Path,
        name: Option<&str>,
        signature: Option<&Path>,
    ) -> Result<(String, ImageRecord), ImageError> {
        let mpath = root.join("manifest.json");
        let m: serde_json::Value = json(
            "manifest.json",
            &std::fs::read(&mpath).map_err(io(&mpath, "read"))?,
        )?;
        let entry = m
            .as_array()
            .and_then(|a| a.first())
            .ok_or_else(|| ImageError::Invalid("manifest.json lists no image".into()))?;
        let config_file = entry["Config"].as_str().unwrap_or_default();
        let config_bytes =
            std::fs::read(root.join(config_file)).map_err(io(&root.join(config_file), "read"))?;
        // The config's file name is its digest (`<hex>.json` or `blobs/sha256/<hex>`).
        let stem = Path::new(config_file)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let config = format!("sha256:{stem}");
        verify("config", &config, &config_bytes)?;
        let cfg: serde_json::Value = json("config", &config_bytes)?;
        let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let files: Vec<String> = entry["Layers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if files.len() != diff_ids.len() {
            return Err(ImageError::Invalid(format!(
                "manifest.json lists {} layers, the config {} diff_ids",
                files.len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        let mut layer_bytes = Vec::new();
        let mut descs = Vec::new();
        for (i, (f, diff)) in files.iter().zip(&diff_ids).enumerate() {
            let b = std::fs::read(root.join(f)).map_err(io(&root.join(f), "read"))?;
            // docker save layers are uncompressed tars: their digest is the diff_id.
            verify(&format!("layer {i} ({f})"), diff, &b)?;
            descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": diff, "size": b.len()}));
            layers.push(diff.clone());
            layer_bytes.push(b);
        }
        // An OCI manifest for the store, so both formats look alike afterwards.
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_bytes.len()},
            "layers": descs,
        });
        let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serialises");
        let manifest_digest = format!("sha256:{}", hex(&Sha256::digest(&manifest_bytes)));
        let tag = entry["RepoTags"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let name = name
            .map(str::to_string)
            .or(tag)
            .unwrap_or_else(|| config.clone());
        // A docker archive's manifest is made here, so its signature covers the config digest.
        let signed_by = self.check_signature(&name, &config, signature)?;
        self.commit(
            name,
            signed_by,
            (manifest_digest, manifest_bytes),
            (config, config_bytes),
            layers,
            layer_bytes,
        )
    }

    /// With trusted keys configured, an image must carry a signature (base64 ed25519 over
    /// the digest string) by one of them.
    fn check_signature(
        &self,
        name: &str,
        digest: &str,
        signature: Option<&Path>,
    ) -> Result<Option<String>, ImageError> {
        let keys = self.trusted_keys()?;
        if keys.is_empty() && signature.is_none() {
            return Ok(None);
        }
        let trust_dir = self.dir.join("trust").display().to_string();
        let Some(sig_path) = signature else {
            return Err(ImageError::Signature(name.to_string(), trust_dir));
        };
        let text = std::fs::read_to_string(sig_path).map_err(io(sig_path, "read"))?;
        let sig = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| ed25519_dalek::Signature::from_bytes(&b))
            .ok_or_else(|| {
                ImageError::Invalid(format!(
                    "{}: not a base64 ed25519 signature",
                    sig_path.display()
                ))
            })?;
        for (key_name, key) in keys {
            if key.verify_strict(digest.as_bytes(), &sig).is_ok() {
                return Ok(Some(key_name));
            }
        }
        Err(ImageError::Signature(name.to_string(), trust_dir))
    }

    /// Stores the verified blobs and records the image.
    fn commit(
        &self,
        name: String,
        signed_by: Option<String>,
        (manifest, manifest_bytes): (String, Vec<u8>),
        (config, config_bytes): (String, Vec<u8>),
        layers: Vec<String>,
        layer_bytes: Vec<Vec<u8>>,
    ) -> Result<(String, ImageRecord), ImageError> {
        self.put_blob(&manifest, &manifest_bytes)?;
        self.put_blob(&config, &config_bytes)?;
        for (d, b) in layers.iter().zip(&layer_bytes) {
            self.put_blob(d, b)?;
        }
        let mut records = self.records()?;
        let rec = ImageRecord {
            manifest,
            config,
            layers,
            imported: now(),
            signed_by,
        };
        records.insert(name.clone(), rec.clone());
        self.save_records(&records)?;
        Ok((name, rec))
    }

    pub fn list(&self) -> Result<BTreeMap<String, ImageRecord>, ImageError> {
        self.records()
    }

    pub fn get(&self, name: &str) -> Result<ImageRecord, ImageError> {
        self.records()?
            .remove(name)
            .ok_or_else(|| ImageError::NotFound(name.to_string()))
    }

    pub fn remove(&self, name: &str) -> Result<(), ImageError> {
        let mut r = self.records()?;
        r.remove(name)
            .ok_or_else(|| ImageError::NotFound(name.to_string()))?;
        self.save_records(&r)
    }

    /// Deletes blobs no image refers to; returns how many.
    pub fn gc(&self) -> Result<usize, ImageError> {
        let used: std::collections::BTreeSet<String> = self
            .records()?
            .values()
            .flat_map(|r| {
                [r.manifest.clone(), r.config.clone()]
                    .into_iter()
                    .chain(r.layers.clone())
            })
            .map(|d| d.trim_start_matches("sha256:").to_string())
            .collect();
        let dir = self.dir.join("blobs/sha256");
        let mut removed = 0;
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !used.contains(&n) {
                std::fs::remove_file(e.path()).map_err(io(&e.path(), "remove"))?;
                removed += 1;
            }
        }
        // Unpacked layers go with their blobs (left-over staging dirs too); a running
        // container still holding one keeps its overlay (the kernel holds the dirs).
        let layers = self.dir.join("layers");
        for e in std::fs::read_dir(&layers).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !used.contains(&n) {
                std::fs::remove_dir_all(e.path()).map_err(io(&e.path(), "remove"))?;
            }
        }
        Ok(removed)
    }

    /// The image config (`config` part of the image config JSON).
    pub fn config(&self, rec: &ImageRecord) -> Result<serde_json::Value, ImageError> {
        let p = self.blob_path(&rec.config);
        let v: serde_json::Value = json(&rec.config, &std::fs::read(&p).map_err(io(&p, "read"))?)?;
        Ok(v.get("config").cloned().unwrap_or_default())
    }

    /// The layer `digest` unpacked for overlayfs (once; later calls reuse it): regular
    /// entries as they are, `.wh.<name>` as a 0:0 character device `<name>`,
    /// `.wh..wh..opq` as `trusted.overlay.opaque=y` on its directory.
    pub fn unpacked_layer(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let hex = digest.trim_start_matches("sha256:");
        let dir = self.dir.join("layers").join(hex);
        if dir.is_dir() {
            return Ok(dir);
        }
        let parent = self.dir.join("layers");
        std::fs::create_dir_all(&parent).map_err(io(&parent, "create"))?;
        let tmp = tempfile::tempdir_in(&parent).map_err(io(&parent, "create a temp dir in"))?;
        let p = self.blob_path(digest);
        let bytes = std::fs::read(&p).map_err(io(&p, "read"))?;
        verify(&format!("layer {digest}"), digest, &bytes)?;
        unpack_layer(&bytes, tmp.path(), Whiteouts::Overlay).map_err(io(&p, "unpack"))?;
        let staged = tmp.keep();
        match std::fs::rename(&staged, &dir) {
            Ok(()) => Ok(dir),
            // Another run unpacked it first.
            Err(_) if dir.is_dir() => {
                let _ = std::fs::remove_dir_all(&staged);
                Ok(dir)
            }
            Err(e) => Err(io(&dir, "rename into")(e)),
        }
    }

    /// The container rootfs at `bundle/rootfs`: an overlay of the image's unpacked
    /// layers with `bundle/upper` and `bundle/work`; a copy where overlayfs cannot be
    /// mounted (no overlay support, a store on overlayfs, odd characters in the path).
    /// Returns whether it is an overlay.
    pub fn mount_rootfs(&self, rec: &ImageRecord, bundle: &Path) -> Result<bool, ImageError> {
        let rootfs = bundle.join("rootfs");
        let mut lower = Vec::new();
        for d in rec.layers.iter().rev() {
            lower.push(self.unpacked_layer(d)?);
        }
        let (upper, work) = (bundle.join("upper"), bundle.join("work"));
        for d in [&rootfs, &upper, &work] {
            std::fs::create_dir_all(d).map_err(io(d, "create"))?;
        }
        let paths: Vec<String> = lower
            .iter()
            .chain([&upper, &work])
            .map(|p| p.display().to_string())
            .collect();
        let plain = paths.iter().all(|p| !p.contains([':', ',']));
        if plain && !lower.is_empty() {
            let n = lower.len();
            let data = format!(
                "lowerdir={},upperdir={},workdir={}",
                paths[..n].join(":"),
                paths[n],
                paths[n + 1]
            );
            let mounted = nix::mount::mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(data.as_str()),
            );
            if mounted.is_ok() {
                return Ok(true);
            }
        }
        self.compose(rec, &rootfs)?;
        Ok(false)
    }

    /// Builds a rootfs at `dest` from the layers, applying whiteouts (copy composition).
    pub fn compose(&self, rec: &ImageRecord, dest: &Path) -> Result<(), ImageError> {
        std::fs::create_dir_all(dest).map_err(io(dest, "create"))?;
        for d in &rec.layers {
            let p = self.blob_path(d);
            let bytes = std::fs::read(&p).map_err(io(&p, "read"))?;
            verify(&format!("layer {d}"), d, &bytes)?;
            unpack_layer(&bytes, dest, Whiteouts::Apply).map_err(io(&p, "unpack"))?;
        }
        Ok(())
    }
}

/// Marks a bundle `run IMAGE` generated (removed with its container).
pub const GENERATED: &str = "keel-run-image";

/// Unmounts a bundle's overlay rootfs (if any) and removes the bundle directory.
pub fn remove_bundle(bundle: &Path) -> Result<(), ImageError> {
    let rootfs = bundle.join("rootfs");
    // Not mounted (a copy, or already gone) is fine.
    let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
    match std::fs::remove_dir_all(bundle) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(bundle, "remove")(e)),
    }
}

/// What to do with a layer's whiteout entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whiteouts {
    /// Delete what they name in `dest` (composing layers by copy).
    Apply,
    /// Record them the way overlayfs reads them (a layer unpacked on its own).
    Overlay,
}

/// Unpacks one layer tar (gzip or plain) into `dest`; `.wh.<name>` and `.wh..wh..opq`
/// as `whiteouts` says; entries never leave `dest`.
fn unpack_layer(bytes: &[u8], dest: &Path, whiteouts: Whiteouts) -> std::io::Result<()> {
    let reader: Box<dyn Read> = if bytes.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let mut a = tar::Archive::new(reader);
    a.set_preserve_permissions(true);
    a.set_overwrite(true);
    for entry in a.entries()? {
        let mut e = entry?;
        let path = e.path()?.into_owned();
        let Some(file_name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            e.unpack_in(dest)?;
            continue;
        };
        let parent = path.parent().unwrap_or(Path::new(""));
        if parent
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(std::io::Error::other(format!(
                "layer entry {} leaves the rootfs",
                path.display()
            )));
        }
        if whiteouts == Whiteouts::Overlay {
            if file_name == ".wh..wh..opq" {
                let dir = dest.join(parent);
                std::fs::create_dir_all(&dir)?;
                rustix::fs::setxattr(
                    &dir,
                    "trusted.overlay.opaque",
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )?;
                continue;
            }
            if let Some(victim) = file_name.strip_prefix(".wh.") {
                let dir = dest.join(parent);
                std::fs::create_dir_all(&dir)?;
                nix::sys::stat::mknod(
                    &dir.join(victim),
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::empty(),
                    0,
                )?;
                continue;
            }
            e.unpack_in(dest)?;
            continue;
        }
        if file_name == ".wh..wh..opq" {
            let dir = dest.join(parent);
            if let Ok(list) = std::fs::read_dir(&dir) {
                for c in list.flatten() {
                    let p = c.path();
                    if p.is_dir() && !p.is_symlink() {
                        std::fs::remove_dir_all(&p)?;
                    } else {
                        std::fs::remove_file(&p)?;
                    }
                }
            }
            continue;
        }
        if let Some(victim) = file_name.strip_prefix(".wh.") {
            let p = dest.join(parent).join(victim);
            if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)?;
            } else if p.symlink_metadata().is_ok() {
                std::fs::remove_file(&p)?;
            }
            continue;
        }
        e.unpack_in(dest)?;
    }
    Ok(())
}

/// rkt-style options of `run IMAGE`.
#[derive(Debug, Clone, Default)]
pub struct RunImage {
    /// Kubernetes CPU units: `750m`, `2`.
    pub cpu: Option<String>,
    /// Bytes with an optional unit: `128M`, `1Gi`, `65536`.
    pub memory: Option<String>,
    /// `host` shares the host's network; default: a new namespace with only `lo`.
    pub net: Option<String>,
    /// `HOST:CONTAINER[:ro]`.
    pub volumes: Vec<String>,
    /// Replaces the image's Cmd (after its Entrypoint).
    pub args: Vec<String>,
    pub env: Vec<String>,
}

/// `750m` → 0.75, `2` → 2.0.
pub fn parse_cpu(s: &str) -> Option<f64> {
    match s.strip_suffix('m') {
        Some(m) => m.parse::<f64>().ok().map(|v| v / 1000.0),
        None => s.parse::<f64>().ok(),
    }
    .filter(|v| *v > 0.0)
}

/// `128M`, `128Mi`, `1G`, `65536` → bytes.
pub fn parse_memory(s: &str) -> Option<i64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().ok()?;
    let mult: i64 = match unit {
        "" => 1,
        "k" | "K" => 1000,
        "Ki" => 1 << 10,
        "M" => 1_000_000,
        "Mi" => 1 << 20,
        "G" => 1_000_000_000,
        "Gi" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult).filter(|v| *v > 0)
}

/// Writes a bundle for `image` at `dir` (rootfs composed from the layers, config.json from
/// the image config and `opts`).
pub fn make_bundle(
    store: &Store,
    image: &str,
    id: &str,
    dir: &Path,
    opts: &RunImage,
) -> Result<(), ImageError> {
    let rec = store.get(image)?;
    let cfg = store.config(&rec)?;
    store.mount_rootfs(&rec, dir)?;
    let mut spec =
        serde_json::to_value(oci_spec::runtime::Spec::default()).expect("spec serialises");
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut args = strings(&cfg["Entrypoint"]);
    if opts.args.is_empty() {
        args.extend(strings(&cfg["Cmd"]));
    } else {
        args.extend(opts.args.iter().cloned());
    }
    if args.is_empty() {
        return Err(ImageError::Invalid(format!(
            "image {image} has no Entrypoint or Cmd; give a command after --"
        )));
    }
    let mut env = strings(&cfg["Env"]);
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    env.extend(opts.env.iter().cloned());
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = args.into();
    spec["process"]["env"] = env.into();
    if let Some(wd) = cfg["WorkingDir"].as_str().filter(|w| !w.is_empty()) {
        spec["process"]["cwd"] = wd.into();
    }
    if let Some(user) = cfg["User"].as_str().filter(|u| !u.is_empty()) {
        let (u, g) = user.split_once(':').unwrap_or((user, "0"));
        let (Ok(uid), Ok(gid)) = (u.parse::<u32>(), g.parse::<u32>()) else {
            return Err(ImageError::Invalid(format!(
                "image user {user:?}: only numeric uid[:gid] is supported"
            )));
        };
        spec["process"]["user"] = serde_json::json!({"uid": uid, "gid": gid});
    }
    spec["hostname"] = id.into();
    spec["root"]["readonly"] = false.into();
    // runc's default: every device denied but the ones the runtime always allows.
    let mut resources = serde_json::json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(c) = &opts.cpu {
        let cpus = parse_cpu(c)
            .ok_or_else(|| ImageError::Invalid(format!("--cpu {c:?} is not like 750m or 2")))?;
        resources["cpu"] =
            serde_json::json!({"quota": (cpus * 100_000.0) as i64, "period": 100_000});
    }
    if let Some(m) = &opts.memory {
        let bytes = parse_memory(m).ok_or_else(|| {
            ImageError::Invalid(format!("--memory {m:?} is not like 128M or 1Gi"))
        })?;
        resources["memory"] = serde_json::json!({"limit": bytes});
    }
    spec["linux"]["resources"] = resources;
    match opts.net.as_deref() {
        None | Some("default") => {}
        Some("host") => {
            if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
                ns.retain(|n| n["type"] != "network");
            }
        }
        Some(other) => {
            return Err(ImageError::Invalid(format!(
                "--net {other:?}: use host or default"
            )));
        }
    }
    for v in &opts.volumes {
        let parts: Vec<&str> = v.split(':').collect();
        let (host, ctr, ro) = match parts.as_slice() {
            [h, c] => (*h, *c, false),
            [h, c, "ro"] => (*h, *c, true),
            [h, c, "rw"] => (*h, *c, false),
            _ => {
                return Err(ImageError::Invalid(format!(
                    "--volume {v:?} is not HOST:CONTAINER[:ro]"
                )));
            }
        };
        let mut options = vec!["rbind", "rprivate"];
        if ro {
            options.push("ro");
        }
        if let Some(m) = spec["mounts"].as_array_mut() {
            m.push(serde_json::json!({"destination": ctr, "type": "bind", "source": host, "options": options}));
        }
    }
    let cfg_path = dir.join("config.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_vec_pretty(&spec).expect("spec serialises"),
    )
    .map_err(io(&cfg_path, "write"))?;
    let mark = dir.join(GENERATED);
    std::fs::write(&mark, image).map_err(io(&mark, "write"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_cpu("750m"), Some(0.75));
        assert_eq!(parse_cpu("2"), Some(2.0));
        assert_eq!(parse_cpu("0"), None);
        assert_eq!(parse_memory("128M"), Some(128_000_000));
        assert_eq!(parse_memory("128Mi"), Some(128 << 20));
        assert_eq!(parse_memory("1x"), None);
    }
}
