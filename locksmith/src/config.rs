//! Settings from locksmith's inputs, lowest to highest: built-in defaults, `update.conf`
//! files (`/usr/share/{coreos,flatcar}/update.conf`, then `/etc/{coreos,flatcar}/update.conf`,
//! under the root), environment (`LOCKSMITHD_*` for the daemon, `LOCKSMITHCTL_*` for the
//! operator commands, plus `REBOOT_STRATEGY`), flags. Every value remembers where it came
//! from so an error names the file and line, the variable or the flag.
//!
//! `GROUP=` in `update.conf` is the update *channel* read by the updater; the reboot group
//! is `LOCKSMITHD_GROUP` / `--group`, as in locksmith.

use crate::host::parse_env_lines;
use crate::window::{Window, WindowError, parse_go_duration};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// locksmith's default endpoints.
pub const DEFAULT_ENDPOINTS: &str = "http://127.0.0.1:2379,http://127.0.0.1:4001";
/// `update.conf` files in the order they are read (later ones win), relative to the root.
pub const UPDATE_CONF_FILES: &[&str] = &[
    "usr/share/coreos/update.conf",
    "usr/share/flatcar/update.conf",
    "etc/coreos/update.conf",
    "etc/flatcar/update.conf",
];
/// Strategy when none is configured (locksmith's default since v0.6.0).
pub const DEFAULT_STRATEGY: Strategy = Strategy::Reboot;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "unknown reboot strategy {value:?} (from {source_name}); expected reboot, etcd-lock, best-effort, fleet-lock or off"
    )]
    Strategy { value: String, source_name: String },
    #[error("invalid reboot window (start from {start_from}, length from {length_from})")]
    Window {
        start_from: String,
        length_from: String,
        #[source]
        source: WindowError,
    },
    #[error("{name} {value:?} (from {source_name}) is not a duration like \"30s\" or \"5m\"")]
    Duration {
        name: &'static str,
        value: String,
        source_name: String,
    },
}

/// How the daemon gets permission to reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Reboot when needed (window honoured), no coordination.
    Reboot,
    /// Take a slot of the semaphore in the store first.
    EtcdLock,
    /// `etcd-lock` when a store is configured or runs on this host, else `reboot`.
    BestEffort,
    /// Ask a FleetLock server (`--endpoint` is its base URL).
    FleetLock,
    /// Do nothing.
    Off,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Strategy> {
        Some(match s.trim() {
            "reboot" => Strategy::Reboot,
            "etcd-lock" => Strategy::EtcdLock,
            "best-effort" => Strategy::BestEffort,
            "fleet-lock" | "fleet_lock" => Strategy::FleetLock,
            "off" => Strategy::Off,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Reboot => "reboot",
            Strategy::EtcdLock => "etcd-lock",
            Strategy::BestEffort => "best-effort",
            Strategy::FleetLock => "fleet-lock",
            Strategy::Off => "off",
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced {
    pub value: String,
    pub from: String,
}

/// The layered inputs: update.conf values, then the process environment.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    files: Vec<(String, Sourced)>,
    env: Vec<(String, String)>,
}

impl Inputs {
    /// Reads the update.conf files under `root` (missing files are skipped) and takes `env`.
    pub fn load(
        root: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Inputs, ConfigError> {
        let mut files = Vec::new();
        for rel in UPDATE_CONF_FILES {
            let path = root.join(rel);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ConfigError::Read { path, source }),
            };
            files.extend(file_values(&path, &text));
        }
        Ok(Inputs {
            files,
            env: env.into_iter().collect(),
        })
    }

    /// Only the environment (operator commands do not read update.conf).
    pub fn env_only(env: impl IntoIterator<Item = (String, String)>) -> Inputs {
        Inputs {
            files: Vec::new(),
            env: env.into_iter().collect(),
        }
    }

    /// The first of `names` set in the environment, else in the files (last file wins).
    pub fn get(&self, names: &[&str]) -> Option<Sourced> {
        for name in names {
            if let Some((_, v)) = self.env.iter().rev().find(|(k, _)| k == name) {
                return Some(Sourced {
                    value: v.clone(),
                    from: format!("environment variable {name}"),
                });
            }
        }
        for name in names {
            if let Some((_, v)) = self.files.iter().rev().find(|(k, _)| k == name) {
                return Some(v.clone());
            }
        }
        None
    }

    /// A flag if given, else the first input of `names`.
    pub fn pick(&self, flag: Option<&str>, flag_name: &str, names: &[&str]) -> Option<Sourced> {
        match flag {
            Some(v) => Some(Sourced {
                value: v.to_string(),
                from: format!("flag --{flag_name}"),
            }),
            None => self.get(names),
        }
    }
}

fn file_values(path: &Path, text: &str) -> Vec<(String, Sourced)> {
    // Keep line numbers: parse line by line.
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for (k, v) in parse_env_lines(line) {
            out.push((
                k,
                Sourced {
                    value: v,
                    from: format!("{}:{}", path.display(), n + 1),
                },
            ));
        }
    }
    out
}

/// The strategy from `REBOOT_STRATEGY` (or the flag), defaulting to `reboot`.
pub fn strategy(inputs: &Inputs, flag: Option<&str>) -> Result<Strategy, ConfigError> {
    match inputs.pick(
        flag,
        "strategy",
        &["REBOOT_STRATEGY", "LOCKSMITHD_REBOOT_STRATEGY"],
    ) {
        None => Ok(DEFAULT_STRATEGY),
        Some(s) if s.value.trim().is_empty() => Ok(DEFAULT_STRATEGY),
        Some(s) => Strategy::parse(&s.value).ok_or(ConfigError::Strategy {
            value: s.value,
            source_name: s.from,
        }),
    }
}

/// The reboot window (prefixed variables first, then locksmith's unprefixed fallbacks).
pub fn window(
    inputs: &Inputs,
    start_flag: Option<&str>,
    length_flag: Option<&str>,
) -> Result<Option<Window>, ConfigError> {
    let start = inputs.pick(
        start_flag,
        "window-start",
        &["LOCKSMITHD_REBOOT_WINDOW_START", "REBOOT_WINDOW_START"],
    );
    let length = inputs.pick(
        length_flag,
        "window-length",
        &["LOCKSMITHD_REBOOT_WINDOW_LENGTH", "REBOOT_WINDOW_LENGTH"],
    );
    let text = |s: &Option<Sourced>| s.as_ref().map(|s| s.value.clone()).unwrap_or_default();
    let from = |s: &Option<Sourced>| {
        s.as_ref()
            .map(|s| s.from.clone())
            .unwrap_or_else(|| "nowhere".into())
    };
    Window::parse(&text(&start), &text(&length)).map_err(|source| ConfigError::Window {
        start_from: from(&start),
        length_from: from(&length),
        source,
    })
}

/// A duration setting in Go syntax.
pub fn duration(
    inputs: &Inputs,
    flag: Option<&str>,
    flag_name: &'static str,
    names: &[&str],
    default: Duration,
) -> Result<Duration, ConfigError> {
    match inputs.pick(flag, flag_name, names) {
        None => Ok(default),
        Some(s) => parse_go_duration(s.value.trim()).ok_or(ConfigError::Duration {
            name: flag_name,
            value: s.value,
            source_name: s.from,
        }),
    }
}

/// Endpoints from a comma list (flag values may repeat).
pub fn endpoints(values: &[String], inputs: &Inputs, prefix: &str) -> Vec<String> {
    let raw: Vec<String> = if values.is_empty() {
        let var = format!("{prefix}_ENDPOINT");
        inputs
            .get(&[var.as_str()])
            .map(|s| vec![s.value])
            .unwrap_or_else(|| vec![DEFAULT_ENDPOINTS.to_string()])
    } else {
        values.to_vec()
    };
    raw.iter()
        .flat_map(|v| v.split(','))
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(conf: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (rel, text) in conf {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn layers_and_sources() {
        let dir = root_with(&[
            (
                "usr/share/coreos/update.conf",
                "GROUP=stable\nREBOOT_STRATEGY=reboot\n",
            ),
            (
                "etc/coreos/update.conf",
                "# ops\nREBOOT_STRATEGY=etcd-lock\nLOCKSMITHD_REBOOT_WINDOW_START=Thu 04:00\nLOCKSMITHD_REBOOT_WINDOW_LENGTH=1h\n",
            ),
        ]);
        let inputs = Inputs::load(dir.path(), Vec::new()).unwrap();
        assert_eq!(strategy(&inputs, None).unwrap(), Strategy::EtcdLock);
        assert!(window(&inputs, None, None).unwrap().is_some());
        let env = vec![("REBOOT_STRATEGY".to_string(), "off".to_string())];
        let inputs = Inputs::load(dir.path(), env).unwrap();
        assert_eq!(strategy(&inputs, None).unwrap(), Strategy::Off);
        assert_eq!(strategy(&inputs, Some("reboot")).unwrap(), Strategy::Reboot);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let dir = root_with(&[(
            "etc/coreos/update.conf",
            "GROUP=stable\nREBOOT_STRATEGY=sometimes\nLOCKSMITHD_REBOOT_WINDOW_START=25:00\nLOCKSMITHD_REBOOT_WINDOW_LENGTH=1h\n",
        )]);
        let inputs = Inputs::load(dir.path(), Vec::new()).unwrap();
        let e = strategy(&inputs, None).unwrap_err().to_string();
        assert!(
            e.contains("\"sometimes\"") && e.contains("etc/coreos/update.conf:2"),
            "{e}"
        );
        let e = window(&inputs, None, None).unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(
            chain.contains("update.conf:3") && chain.contains("25:00"),
            "{chain}"
        );
    }

    #[test]
    fn default_strategy_is_reboot_and_endpoints_split() {
        let inputs = Inputs::env_only(vec![(
            "LOCKSMITHCTL_ENDPOINT".to_string(),
            "http://a:1, http://b:2".to_string(),
        )]);
        assert_eq!(strategy(&inputs, None).unwrap(), Strategy::Reboot);
        assert_eq!(
            endpoints(&[], &inputs, "LOCKSMITHCTL"),
            ["http://a:1", "http://b:2"]
        );
        assert_eq!(
            endpoints(&[], &Inputs::default(), "LOCKSMITHD"),
            ["http://127.0.0.1:2379", "http://127.0.0.1:4001"]
        );
        assert_eq!(
            endpoints(&["x:1,y:2".into(), "z:3".into()], &inputs, "LOCKSMITHCTL"),
            ["x:1", "y:2", "z:3"]
        );
    }
}
