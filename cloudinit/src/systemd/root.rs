//! The "write into root" systemd backend: what `systemctl --root=DIR mask|unmask|enable`
//! would do, done with symlinks under the root; commands are recorded, not run.

use super::{Change, SystemdError, SystemdManager, UnitCommand};
use crate::apply::fsops;
use std::fs;
use std::path::{Path, PathBuf};

/// Where unit files are looked up, highest priority first (systemd's system search path).
pub const UNIT_PATH: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// Deepest `Also=` chain followed when enabling.
const MAX_ALSO_DEPTH: usize = 8;

/// Systemd as files under a root directory.
#[derive(Debug)]
pub struct RootManager {
    root: PathBuf,
    /// Commands that would have been run, in order (`start foo.service`).
    pub recorded: Vec<String>,
}

impl RootManager {
    pub fn new(root: &Path) -> RootManager {
        RootManager {
            root: root.to_path_buf(),
            recorded: Vec::new(),
        }
    }

    fn config_dir(runtime: bool) -> &'static str {
        if runtime {
            "/run/systemd/system"
        } else {
            "/etc/systemd/system"
        }
    }

    /// Finds a unit's file (for `foo@bar.service`, the template `foo@.service`).
    fn find(&self, unit: &str) -> Option<(String, String)> {
        let template = template_of(unit);
        for dir in UNIT_PATH {
            for name in [Some(unit), template.as_deref()].into_iter().flatten() {
                let path = format!("{dir}/{name}");
                let host = fsops::in_root(&self.root, &path);
                if let Ok(meta) = fs::symlink_metadata(&host) {
                    if fs::read_link(&host).is_ok_and(|t| t == Path::new("/dev/null")) {
                        continue;
                    }
                    if meta.is_file() || meta.file_type().is_symlink() {
                        let text = fs::read_to_string(&host).unwrap_or_default();
                        return Some((path, text));
                    }
                }
            }
        }
        None
    }

    fn link(
        &self,
        path: &str,
        target: &str,
        changes: &mut Vec<Change>,
    ) -> Result<(), SystemdError> {
        let host = fsops::in_root(&self.root, path);
        if !fsops::symlink_matches(&host, target) {
            fsops::symlink_atomic(&self.root, &host, target)?;
            changes.push(Change {
                kind: "symlink".into(),
                path: path.into(),
                target: target.into(),
            });
        }
        Ok(())
    }

    fn enable_one(
        &mut self,
        unit: &str,
        runtime: bool,
        depth: usize,
        changes: &mut Vec<Change>,
    ) -> Result<(), SystemdError> {
        let Some((path, text)) = self.find(unit) else {
            return Err(SystemdError::NoUnitFile { unit: unit.into() });
        };
        let install = parse_install(&text);
        let dir = Self::config_dir(runtime);
        let instance_name = if unit.contains("@.") {
            install
                .default_instance
                .as_ref()
                .map(|i| unit.replacen("@.", &format!("@{i}."), 1))
        } else {
            Some(unit.to_string())
        };
        if let Some(name) = instance_name {
            for (kind, targets) in [
                ("wants", &install.wanted_by),
                ("requires", &install.required_by),
            ] {
                for t in targets {
                    self.link(&format!("{dir}/{t}.{kind}/{name}"), &path, changes)?;
                }
            }
        }
        for alias in &install.alias {
            self.link(&format!("{dir}/{alias}"), &path, changes)?;
        }
        if depth < MAX_ALSO_DEPTH {
            for also in install.also {
                self.enable_one(&also, runtime, depth + 1, changes)?;
            }
        }
        Ok(())
    }
}

/// `foo@bar.service` → `foo@.service`.
fn template_of(unit: &str) -> Option<String> {
    let (prefix, rest) = unit.split_once('@')?;
    let (_, suffix) = rest.rsplit_once('.')?;
    (!rest.starts_with('.')).then(|| format!("{prefix}@.{suffix}"))
}

/// The `[Install]` section of a unit file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Install {
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
    pub alias: Vec<String>,
    pub also: Vec<String>,
    pub default_instance: Option<String>,
}

/// Parses `[Install]` (`WantedBy=`, `RequiredBy=`, `Alias=`, `Also=`, `DefaultInstance=`;
/// an empty assignment resets the list, as in systemd).
pub fn parse_install(text: &str) -> Install {
    let mut install = Install::default();
    let mut in_install = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let list = match k.trim() {
            "WantedBy" => &mut install.wanted_by,
            "RequiredBy" => &mut install.required_by,
            "Alias" => &mut install.alias,
            "Also" => &mut install.also,
            "DefaultInstance" => {
                install.default_instance = Some(v.trim().to_string()).filter(|s| !s.is_empty());
                continue;
            }
            _ => continue,
        };
        if v.trim().is_empty() {
            list.clear();
        }
        list.extend(v.split_whitespace().map(str::to_string));
    }
    install
}

impl SystemdManager for RootManager {
    fn mask(&mut self, units: &[String], runtime: bool) -> Result<Vec<Change>, SystemdError> {
        let mut changes = Vec::new();
        for u in units {
            self.link(
                &format!("{}/{u}", Self::config_dir(runtime)),
                "/dev/null",
                &mut changes,
            )?;
        }
        Ok(changes)
    }

    fn unmask(&mut self, units: &[String], runtime: bool) -> Result<Vec<Change>, SystemdError> {
        let mut changes = Vec::new();
        for u in units {
            let path = format!("{}/{u}", Self::config_dir(runtime));
            let host = fsops::in_root(&self.root, &path);
            let masked = fsops::symlink_matches(&host, "/dev/null")
                || fs::symlink_metadata(&host).is_ok_and(|m| m.is_file() && m.len() == 0);
            if masked {
                fsops::remove(&host)?;
                changes.push(Change {
                    kind: "unlink".into(),
                    path,
                    target: String::new(),
                });
            }
        }
        Ok(changes)
    }

    fn enable(&mut self, units: &[String], runtime: bool) -> Result<Vec<Change>, SystemdError> {
        let mut changes = Vec::new();
        for u in units {
            self.enable_one(u, runtime, 0, &mut changes)?;
        }
        Ok(changes)
    }

    fn reload(&mut self) -> Result<(), SystemdError> {
        self.recorded.push("daemon-reload".into());
        Ok(())
    }

    fn command(&mut self, unit: &str, command: UnitCommand) -> Result<String, SystemdError> {
        let line = format!("{} {unit}", command.as_str());
        self.recorded.push(line.clone());
        Ok(line)
    }

    fn start_transient(&mut self, unit: &str, exec: &[String]) -> Result<String, SystemdError> {
        let line = format!("start-transient {unit} {}", exec.join(" "));
        self.recorded.push(line.clone());
        Ok(line)
    }

    fn set_hostname(&mut self, _name: &str) -> Result<(), SystemdError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_section() {
        let i = parse_install(
            "[Unit]\nWantedBy=no.target\n[Install]\nWantedBy=multi-user.target\nWantedBy=\nWantedBy=a.target b.target\nAlias=x.service\nAlso=y.socket\n",
        );
        assert_eq!(i.wanted_by, ["a.target", "b.target"]);
        assert_eq!(i.alias, ["x.service"]);
        assert_eq!(i.also, ["y.socket"]);
        assert_eq!(
            template_of("getty@tty1.service").as_deref(),
            Some("getty@.service")
        );
        assert_eq!(template_of("getty@.service"), None);
    }
}
