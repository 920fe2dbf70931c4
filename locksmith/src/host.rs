//! What the daemon reads about its own host, all under a root directory so tests and the
//! simulation run many "hosts" side by side: machine id, boot id, hostname, the booted
//! OS version, the reboot-needed sentinel and locksmith's coordinator state file.

use std::path::{Path, PathBuf};

/// The Debian/Ubuntu (and kured) sentinel: its presence means a reboot is needed. Keel reads
/// optional `VERSION=` and `REASON=` lines from it.
pub const REBOOT_SENTINEL: &str = "run/reboot-required";
/// locksmith's coordinator state file (sourced by host tools).
pub const COORDINATOR_CONF: &str = "run/update-engine/coordinator.conf";

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is empty")]
    Empty { path: PathBuf },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The host seen through `root` (`/` in production).
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

/// A reboot the host asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebootNeed {
    pub target_version: String,
    pub reason: String,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn read_trimmed(&self, rel: &str) -> Result<String, HostError> {
        let path = self.path(rel);
        let s = std::fs::read_to_string(&path).map_err(|source| HostError::Read {
            path: path.clone(),
            source,
        })?;
        let s = s.trim().to_string();
        if s.is_empty() {
            return Err(HostError::Empty { path });
        }
        Ok(s)
    }

    /// `/etc/machine-id`: the holder id, as locksmith uses it.
    pub fn machine_id(&self) -> Result<String, HostError> {
        self.read_trimmed("etc/machine-id")
    }

    /// The kernel's boot id (changes on every boot).
    pub fn boot_id(&self) -> Result<String, HostError> {
        self.read_trimmed("proc/sys/kernel/random/boot_id")
    }

    /// `/etc/hostname`, else the kernel's hostname file, else empty.
    pub fn hostname(&self) -> String {
        self.read_trimmed("etc/hostname")
            .or_else(|_| self.read_trimmed("proc/sys/kernel/hostname"))
            .unwrap_or_default()
    }

    /// `VERSION` (else `VERSION_ID`) of `/usr/lib/os-release` (else `/etc/os-release`).
    pub fn booted_version(&self) -> String {
        for rel in ["usr/lib/os-release", "etc/os-release"] {
            if let Ok(text) = std::fs::read_to_string(self.path(rel)) {
                let vars = parse_env_lines(&text);
                let get = |k: &str| {
                    vars.iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                };
                if let Some(v) = get("VERSION").or_else(|| get("VERSION_ID")) {
                    return v;
                }
            }
        }
        String::new()
    }

    /// The reboot-needed sentinel, if present.
    pub fn reboot_sentinel(&self) -> Option<RebootNeed> {
        let text = std::fs::read_to_string(self.path(REBOOT_SENTINEL)).ok()?;
        let vars = parse_env_lines(&text);
        let get = |k: &str| {
            vars.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        Some(RebootNeed {
            target_version: get("VERSION"),
            reason: match get("REASON") {
                r if r.is_empty() => "reboot-required sentinel".to_string(),
                r => r,
            },
        })
    }

    /// Writes locksmith's coordinator file (`NAME`, `STRATEGY`, `STATE`) atomically.
    pub fn write_coordinator(&self, strategy: &str, state: &str) -> Result<(), HostError> {
        let path = self.path(COORDINATOR_CONF);
        let body = format!("NAME=keel-locksmith\nSTRATEGY={strategy}\nSTATE={state}\n");
        atomic_write(&path, body.as_bytes()).map_err(|source| HostError::Write { path, source })
    }
}

/// Durable replace: temp file in the same directory, fsync, rename, fsync the directory.
pub fn atomic_write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// `KEY=value` lines as systemd's `EnvironmentFile=` and os-release read them: comments and
/// blank lines skipped, one level of single or double quotes removed. Lines without `=` are
/// ignored (the Debian sentinel holds a plain sentence).
pub fn parse_env_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                return None;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (k, v) = line.split_once('=')?;
            let k = k.trim();
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            Some((k.to_string(), unquote(v.trim())))
        })
        .collect()
}

fn unquote(v: &str) -> String {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            let inner = &v[1..v.len() - 1];
            return if q == '"' {
                inner.replace("\\\"", "\"").replace("\\\\", "\\")
            } else {
                inner.to_string()
            };
        }
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_host_files_under_root() {
        let dir = tempfile::tempdir().unwrap();
        let h = Host::new(dir.path());
        assert!(h.machine_id().is_err());
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/machine-id"), "abc\n").unwrap();
        std::fs::write(
            dir.path().join("etc/os-release"),
            "ID=keel\nVERSION=\"1.2.3\"\n",
        )
        .unwrap();
        assert_eq!(h.machine_id().unwrap(), "abc");
        assert_eq!(h.booted_version(), "1.2.3");
        assert_eq!(h.reboot_sentinel(), None);
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        std::fs::write(
            dir.path().join(REBOOT_SENTINEL),
            "*** System restart required ***\nVERSION=1.3.0\n",
        )
        .unwrap();
        assert_eq!(
            h.reboot_sentinel().unwrap(),
            RebootNeed {
                target_version: "1.3.0".into(),
                reason: "reboot-required sentinel".into()
            }
        );
        h.write_coordinator("etcd-lock", "running").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(COORDINATOR_CONF)).unwrap(),
            "NAME=keel-locksmith\nSTRATEGY=etcd-lock\nSTATE=running\n"
        );
    }

    #[test]
    fn env_lines_like_systemd() {
        let v = parse_env_lines("# c\nA=1\n B = \"x y\" \nexport C='q'\nnot a var\n=x\n");
        assert_eq!(
            v,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x y".into()),
                ("C".into(), "q".into())
            ]
        );
    }
}
