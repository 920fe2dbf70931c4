//! Ed25519 keys. Trusted public keys ship in the USR image (`/usr/share/keel/update-keys/`)
//! and can be overridden in `/etc/keel/update-keys/`: a file there replaces the image's file
//! of the same name, an empty file removes it, other names add keys. A key file holds the
//! base64 of the 32-byte public key (`#` comments allowed); a private key file the base64 of
//! the 32-byte seed. A key's id is the hex of the first 8 bytes of SHA-256 of the public key.

use super::{PayloadError, SignatureEntry, hex};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Key directories under the root, lowest priority first.
pub const KEY_DIRS: &[&str] = &["usr/share/keel/update-keys", "etc/keel/update-keys"];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a base64 ed25519 {kind} key (32 bytes)")]
    Format { path: PathBuf, kind: &'static str },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot get random bytes for a new key")]
    Random(#[source] getrandom::Error),
}

/// The id of a public key.
pub fn key_id(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.as_bytes())[..8])
}

fn decode32(path: &Path, text: &str, kind: &'static str) -> Result<[u8; 32], KeyError> {
    let line: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    B64.decode(line.as_bytes())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or(KeyError::Format {
            path: path.to_path_buf(),
            kind,
        })
}

/// Reads a public key file.
pub fn read_public(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    VerifyingKey::from_bytes(&decode32(path, &text, "public")?).map_err(|_| KeyError::Format {
        path: path.to_path_buf(),
        kind: "public",
    })
}

/// Reads a private key file.
pub fn read_private(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(SigningKey::from_bytes(&decode32(path, &text, "private")?))
}

/// Creates `<out>.key` (mode 0600) and `<out>.pub`; returns the key id.
pub fn generate(out: &Path) -> Result<String, KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(KeyError::Random)?;
    let key = SigningKey::from_bytes(&seed);
    let private = out.with_extension("key");
    let public = out.with_extension("pub");
    let write = |path: &Path, text: String, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .map_err(|source| KeyError::Write {
                path: path.to_path_buf(),
                source,
            })
    };
    let id = key_id(&key.verifying_key());
    write(
        &private,
        format!(
            "# keel update signing key {id}\n{}\n",
            B64.encode(key.to_bytes())
        ),
        0o600,
    )?;
    write(
        &public,
        format!(
            "# keel update key {id}\n{}\n",
            B64.encode(key.verifying_key().as_bytes())
        ),
        0o644,
    )?;
    Ok(id)
}

/// Signs manifest bytes.
pub fn sign(key: &SigningKey, manifest: &[u8]) -> SignatureEntry {
    SignatureEntry {
        key_id: key_id(&key.verifying_key()),
        signature: B64.encode(key.sign(manifest).to_bytes()),
    }
}

/// The keys this host trusts, by id.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<String, (VerifyingKey, PathBuf)>,
}

impl TrustedKeys {
    /// Loads the key directories under `root` (missing directories are fine).
    pub fn load(root: &Path) -> Result<TrustedKeys, KeyError> {
        let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
        for dir in KEY_DIRS {
            let dir = root.join(dir);
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(KeyError::Read { path: dir, source }),
            };
            for entry in entries {
                let entry = entry.map_err(|source| KeyError::Read {
                    path: dir.clone(),
                    source,
                })?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                by_name.insert(name, entry.path());
            }
        }
        let mut keys = BTreeMap::new();
        for path in by_name.into_values() {
            let len = std::fs::metadata(&path)
                .map_err(|source| KeyError::Read {
                    path: path.clone(),
                    source,
                })?
                .len();
            if len == 0 {
                continue; // masked by an empty override
            }
            let key = read_public(&path)?;
            keys.insert(key_id(&key), (key, path));
        }
        Ok(TrustedKeys { keys })
    }

    /// Trusts exactly these keys.
    pub fn from_keys(keys: impl IntoIterator<Item = VerifyingKey>) -> TrustedKeys {
        TrustedKeys {
            keys: keys
                .into_iter()
                .map(|k| (key_id(&k), (k, PathBuf::new())))
                .collect(),
        }
    }

    pub fn ids(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    /// Succeeds when a trusted key signed `manifest`; a bad signature by a trusted key is
    /// an error even if another signature is good.
    pub fn verify(
        &self,
        what: &str,
        manifest: &[u8],
        signatures: &[SignatureEntry],
    ) -> Result<(), PayloadError> {
        if signatures.is_empty() {
            return Err(PayloadError::Unsigned { what: what.into() });
        }
        let mut good = false;
        for s in signatures {
            let Some((key, _)) = self.keys.get(&s.key_id) else {
                continue;
            };
            let ok = B64
                .decode(s.signature.as_bytes())
                .ok()
                .and_then(|b| <[u8; 64]>::try_from(b).ok())
                .map(|b| Signature::from_bytes(&b))
                .is_some_and(|sig| {
                    key.verify(manifest, &sig).is_ok() && key.verify_strict(manifest, &sig).is_ok()
                });
            if !ok {
                return Err(PayloadError::BadSignature {
                    what: what.into(),
                    key_id: s.key_id.clone(),
                });
            }
            good = true;
        }
        if good {
            Ok(())
        } else {
            Err(PayloadError::UnknownKey {
                what: what.into(),
                ids: signatures
                    .iter()
                    .map(|s| s.key_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                trusted: if self.keys.is_empty() {
                    "none".into()
                } else {
                    self.ids().join(", ")
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_dir_replaces_and_masks() {
        let dir = tempfile::tempdir().unwrap();
        let usr = dir.path().join(KEY_DIRS[0]);
        let etc = dir.path().join(KEY_DIRS[1]);
        std::fs::create_dir_all(&usr).unwrap();
        std::fs::create_dir_all(&etc).unwrap();
        let a = generate(&dir.path().join("a")).unwrap();
        let b = generate(&dir.path().join("b")).unwrap();
        std::fs::copy(dir.path().join("a.pub"), usr.join("release.pub")).unwrap();
        std::fs::copy(dir.path().join("b.pub"), usr.join("old.pub")).unwrap();
        assert_eq!(TrustedKeys::load(dir.path()).unwrap().ids().len(), 2);
        // Mask `old.pub`, replace `release.pub` by b.
        std::fs::write(etc.join("old.pub"), "").unwrap();
        std::fs::copy(dir.path().join("b.pub"), etc.join("release.pub")).unwrap();
        assert_eq!(
            TrustedKeys::load(dir.path()).unwrap().ids(),
            vec![b.clone()]
        );
        assert_ne!(a, b);
        std::fs::write(etc.join("junk.pub"), "not base64!").unwrap();
        let e = TrustedKeys::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("junk.pub"), "{e}");
    }

    #[test]
    fn verify_outcomes() {
        let k1 = SigningKey::from_bytes(&[1; 32]);
        let k2 = SigningKey::from_bytes(&[2; 32]);
        let trusted = TrustedKeys::from_keys([k1.verifying_key()]);
        let m = b"manifest";
        assert!(trusted.verify("p", m, &[sign(&k1, m)]).is_ok());
        assert!(matches!(
            trusted.verify("p", m, &[]),
            Err(PayloadError::Unsigned { .. })
        ));
        assert!(matches!(
            trusted.verify("p", m, &[sign(&k2, m)]),
            Err(PayloadError::UnknownKey { .. })
        ));
        let mut forged = sign(&k1, b"other");
        assert!(matches!(
            trusted.verify("p", m, &[forged.clone()]),
            Err(PayloadError::BadSignature { .. })
        ));
        forged.signature = "AAAA".into();
        assert!(matches!(
            trusted.verify("p", m, &[forged]),
            Err(PayloadError::BadSignature { .. })
        ));
        // An unknown key beside a good one is fine.
        assert!(
            trusted
                .verify("p", m, &[sign(&k2, m), sign(&k1, m)])
                .is_ok()
        );
    }
}
