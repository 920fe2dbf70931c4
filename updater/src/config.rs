//! The daemon's settings: `update.conf` (`SERVER=` Omaha URL or `disabled`, `GROUP=` the
//! update channel/track; `/usr/share/{coreos,flatcar}/update.conf` then
//! `/etc/{coreos,flatcar}/update.conf`), then drop-ins `*.conf` from
//! `/usr/lib/keel/updater.d`, `/run/keel/updater.d`, `/etc/keel/updater.d` (lexical order,
//! later wins): `CHANNEL=`, `CHECK_INTERVAL=`, `HEALTH_GRACE=`, `HEALTH_TIMEOUT=`,
//! `HEALTH_UNITS=` (space-separated), `HEALTH_COMMAND=` (repeatable),
//! `HEALTH_NO_FAILED_UNITS=0|1`, `APP_ID=`; then flags. Errors name file and line.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub const UPDATE_CONF: &[&str] = &[
    "usr/share/coreos/update.conf",
    "usr/share/flatcar/update.conf",
    "etc/coreos/update.conf",
    "etc/flatcar/update.conf",
];
pub const DROP_IN_DIRS: &[&str] = &[
    "usr/lib/keel/updater.d",
    "run/keel/updater.d",
    "etc/keel/updater.d",
];
/// Default group (update channel), as update_engine.
pub const DEFAULT_GROUP: &str = "stable";
/// How often to look for updates (update_engine: 45 min).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(45 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {why}")]
    Line {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

/// One `KEY=value` with its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub path: PathBuf,
    pub line: usize,
}

/// All entries in reading order.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub entries: Vec<Entry>,
}

fn parse_file(path: &Path, text: &str, out: &mut Vec<Entry>) -> Result<(), ConfigError> {
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ConfigError::Line {
                path: path.to_path_buf(),
                line: n + 1,
                why: format!("{line:?} is not KEY=value"),
            });
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
            .unwrap_or(v);
        out.push(Entry {
            key: k.trim().to_string(),
            value: v.to_string(),
            path: path.to_path_buf(),
            line: n + 1,
        });
    }
    Ok(())
}

fn read_optional(path: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl Settings {
    /// Reads update.conf files and drop-ins under `root`.
    pub fn load(root: &Path) -> Result<Settings, ConfigError> {
        let mut entries = Vec::new();
        for rel in UPDATE_CONF {
            let p = root.join(rel);
            if let Some(t) = read_optional(&p)? {
                parse_file(&p, &t, &mut entries)?;
            }
        }
        let mut drop_ins: std::collections::BTreeMap<String, PathBuf> = Default::default();
        for dir in DROP_IN_DIRS {
            let d = root.join(dir);
            let Ok(list) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in list.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".conf") {
                    drop_ins.insert(name, e.path());
                }
            }
        }
        for p in drop_ins.values() {
            if let Some(t) = read_optional(p)? {
                parse_file(p, &t, &mut entries)?;
            }
        }
        Ok(Settings { entries })
    }

    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.key == key)
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&Entry> {
        self.entries.iter().filter(|e| e.key == key).collect()
    }

    /// A duration setting (`90`, `90s`, `45m`, `2h`).
    pub fn duration(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(e) => parse_duration(&e.value)
                .map(Some)
                .ok_or_else(|| ConfigError::Line {
                    path: e.path.clone(),
                    line: e.line,
                    why: format!("{key}={:?} is not a duration like 45s, 10m or 2h", e.value),
                }),
        }
    }
}

/// `90`, `90s`, `45m`, `2h`, `500ms`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_drop_in_parses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("usr/lib/keel/updater.d/10-keel.conf");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, include_str!("../dist/10-keel.conf")).unwrap();
        let s = Settings::load(dir.path()).unwrap();
        assert_eq!(
            s.duration("CHECK_INTERVAL").unwrap(),
            Some(DEFAULT_INTERVAL)
        );
        assert_eq!(
            s.duration("HEALTH_GRACE").unwrap(),
            Some(Duration::from_secs(45))
        );
        assert!(s.get("HEALTH_UNITS").is_none());
    }

    #[test]
    fn layers_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let w = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        w(
            "usr/share/coreos/update.conf",
            "GROUP=stable\nSERVER=https://a/v1/update/\n",
        );
        w("etc/coreos/update.conf", "GROUP=beta\n");
        w(
            "usr/lib/keel/updater.d/10-defaults.conf",
            "CHECK_INTERVAL=45m\nHEALTH_COMMAND=true\n",
        );
        w(
            "etc/keel/updater.d/10-defaults.conf",
            "CHECK_INTERVAL=5m\nHEALTH_COMMAND=test -e /run/ok\n",
        );
        let s = Settings::load(dir.path()).unwrap();
        assert_eq!(s.get("GROUP").unwrap().value, "beta");
        assert_eq!(
            s.duration("CHECK_INTERVAL").unwrap(),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            s.all("HEALTH_COMMAND").len(),
            1,
            "the /etc drop-in replaces the /usr one"
        );
        w(
            "etc/keel/updater.d/20-bad.conf",
            "\nHEALTH_GRACE=soon\nnonsense\n",
        );
        let e = Settings::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("20-bad.conf:3"), "{e}");
        std::fs::write(
            dir.path().join("etc/keel/updater.d/20-bad.conf"),
            "HEALTH_GRACE=soon\n",
        )
        .unwrap();
        let e = Settings::load(dir.path())
            .unwrap()
            .duration("HEALTH_GRACE")
            .unwrap_err()
            .to_string();
        assert!(e.contains("20-bad.conf:1") && e.contains("soon"), "{e}");
    }
}
