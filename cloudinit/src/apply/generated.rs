//! Files and units generated from the `coreos.*` daemon sections and top-level keys:
//! `etcd2` → keel-store's `ETCD_*` drop-in, `locksmith`/`update` → keel-locksmith and
//! keel-updater (through `update.conf` and a drop-in), `fleet`/`etcd`/`flannel` written
//! as coreos-cloudinit wrote them, `oem` → `/etc/oem-release`, `manage_etc_hosts` →
//! `/etc/hosts`, metadata addresses → `/etc/environment`.

use crate::config::{CloudConfig, EnvSection, Unit, schema};
use crate::metadata::Metadata;

/// The unit keel-store runs as (it reads the `ETCD_*` variables).
pub const STORE_UNIT: &str = "keel-store.service";
/// The reboot coordinator's unit (reads `REBOOT_STRATEGY` and `LOCKSMITHD_*`).
pub const LOCKSMITH_UNIT: &str = "keel-locksmith.service";
/// The update agent's unit (reads `GROUP` and `SERVER`).
pub const UPDATER_UNIT: &str = "keel-updater.service";
/// Name of every generated drop-in (coreos-cloudinit's).
pub const DROP_IN_NAME: &str = "20-cloudinit.conf";
/// The update configuration coreos-cloudinit rewrote, and its image default.
pub const UPDATE_CONF: &str = "/etc/coreos/update.conf";
pub const UPDATE_CONF_DEFAULT: &str = "/usr/share/coreos/update.conf";

/// CoreOS unit names and the Keel unit that provides them. A config that only starts,
/// enables or adds drop-ins to `etcd2.service` means the store; a config that ships its
/// own unit content keeps its own name.
pub const KEEL_UNIT_FOR: &[(&str, &str)] = &[
    ("etcd.service", STORE_UNIT),
    ("etcd2.service", STORE_UNIT),
    ("etcd-member.service", STORE_UNIT),
    ("locksmithd.service", LOCKSMITH_UNIT),
    ("update-engine.service", UPDATER_UNIT),
];

/// Escapes a value for a quoted systemd `Environment="K=V"` assignment.
fn systemd_quote(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('\n', " ")
}

/// A `[Service]` drop-in with one `Environment=` per set value, in schema order.
pub fn env_drop_in(values: &[(&str, String)]) -> String {
    let mut out = String::from("[Service]\n");
    for (k, v) in values {
        out.push_str(&format!("Environment=\"{k}={}\"\n", systemd_quote(v)));
    }
    out
}

/// Set, non-zero values of a section with their variable names (zero values are skipped,
/// as coreos-cloudinit skipped Go zero values).
fn env_values(section: &EnvSection, keep: impl Fn(&str) -> bool) -> Vec<(&'static str, String)> {
    section
        .values
        .iter()
        .filter_map(|v| {
            let env = v.env?;
            let zero = v.value.is_empty() || v.value == "false" || v.value == "0";
            (!zero && keep(env)).then(|| (env, v.value.clone()))
        })
        .collect()
}

/// A unit carrying only a runtime drop-in.
fn drop_in_unit(name: &str, content: String) -> Unit {
    Unit {
        name: name.into(),
        runtime: true,
        drop_ins: vec![crate::config::DropIn {
            name: DROP_IN_NAME.into(),
            content,
        }],
        ..Unit::default()
    }
}

/// Units generated from `coreos.*`, in coreos-cloudinit's order (etcd, etcd2, fleet,
/// locksmith, update).
pub fn units(config: &CloudConfig) -> Vec<Unit> {
    let c = &config.coreos;
    let mut out = Vec::new();
    let etcd = env_values(&c.etcd, |_| true);
    if !etcd.is_empty() {
        out.push(drop_in_unit("etcd.service", env_drop_in(&etcd)));
    }
    let etcd2 = env_values(&c.etcd2, |e| schema::KEEL_STORE_ENV.contains(&e));
    if !etcd2.is_empty() {
        out.push(drop_in_unit(STORE_UNIT, env_drop_in(&etcd2)));
    }
    let fleet = env_values(&c.fleet, |_| true);
    if !fleet.is_empty() {
        out.push(drop_in_unit("fleet.service", env_drop_in(&fleet)));
    }
    let locksmith = env_values(&c.locksmith, |_| true);
    if !locksmith.is_empty() {
        out.push(drop_in_unit(LOCKSMITH_UNIT, env_drop_in(&locksmith)));
    }
    if let Some(strategy) = c.update.get("reboot_strategy").filter(|s| !s.is_empty()) {
        out.push(Unit {
            name: LOCKSMITH_UNIT.into(),
            runtime: true,
            mask: strategy == "off",
            command: Some(if strategy == "off" { "stop" } else { "restart" }.into()),
            ..Unit::default()
        });
    }
    let group = c.update.get("group").filter(|s| !s.is_empty());
    let server = c.update.get("server").filter(|s| !s.is_empty());
    if group.is_some() || server.is_some() {
        out.push(Unit {
            name: UPDATER_UNIT.into(),
            command: Some("restart".into()),
            ..Unit::default()
        });
    }
    out
}

/// `/etc/coreos/update.conf` rewritten from `existing`: matching `KEY=` lines replaced,
/// missing keys appended sorted.
pub fn update_conf(section: &EnvSection, existing: &str) -> Option<String> {
    let mut subs: Vec<(&str, String)> = env_values(section, |_| true);
    if subs.is_empty() {
        return None;
    }
    let mut out = String::new();
    for line in existing.lines() {
        let replaced = subs
            .iter()
            .position(|(k, _)| line.starts_with(&format!("{k}=")));
        match replaced {
            Some(i) => {
                let (k, v) = subs.remove(i);
                out.push_str(&format!("{k}={v}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    subs.sort();
    for (k, v) in subs {
        out.push_str(&format!("{k}={v}\n"));
    }
    Some(out)
}

/// `/etc/oem-release` when `coreos.oem.id` is set.
pub fn oem_release(section: &EnvSection) -> Option<String> {
    let id = section.get("id").filter(|s| !s.is_empty())?;
    let get = |k| section.get(k).unwrap_or("");
    Some(format!(
        "ID={id}\nVERSION_ID={}\nNAME={:?}\nHOME_URL={:?}\nBUG_REPORT_URL={:?}\n",
        get("version_id"),
        get("name"),
        get("home_url"),
        get("bug_report_url"),
    ))
}

/// `/run/flannel/options.env` (lines joined by `\n`, no trailing newline, as upstream).
pub fn flannel_env(section: &EnvSection) -> Option<String> {
    let values = env_values(section, |_| true);
    (!values.is_empty()).then(|| {
        values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// `/etc/hosts` for `manage_etc_hosts: localhost`.
pub fn etc_hosts(hostname: &str) -> String {
    format!("127.0.0.1 {hostname}\n")
}

/// `/etc/environment` with the metadata's `COREOS_*` addresses merged in: unknown lines
/// and order kept, known keys replaced in place, new keys appended sorted. `None` when
/// there is nothing to set.
pub fn environment(existing: &str, md: &Metadata) -> Option<String> {
    let mut vars = md.environment();
    if vars.is_empty() {
        return None;
    }
    let mut out = String::new();
    for line in existing.lines() {
        let key = line.split_once('=').map(|(k, _)| k.trim());
        match vars.iter().position(|(k, _)| Some(*k) == key) {
            Some(i) => {
                let (k, v) = vars.remove(i);
                out.push_str(&format!("{k}={v}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    vars.sort();
    for (k, v) in vars {
        out.push_str(&format!("{k}={v}\n"));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EnvValue;

    fn section(values: &[(&'static str, &'static str, &str)]) -> EnvSection {
        EnvSection {
            line: 1,
            values: values
                .iter()
                .map(|(k, e, v)| EnvValue {
                    key: k,
                    env: Some(e),
                    value: v.to_string(),
                    line: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn update_conf_rewrites_in_place_and_appends_sorted() {
        let s = section(&[
            ("reboot_strategy", "REBOOT_STRATEGY", "etcd-lock"),
            ("server", "SERVER", "https://u.example/v1"),
            ("group", "GROUP", "beta"),
        ]);
        assert_eq!(
            update_conf(&s, "# comment\nGROUP=stable\nOTHER=1\n").unwrap(),
            "# comment\nGROUP=beta\nOTHER=1\nREBOOT_STRATEGY=etcd-lock\nSERVER=https://u.example/v1\n"
        );
    }

    #[test]
    fn drop_in_quotes_values() {
        assert_eq!(
            env_drop_in(&[("ETCD_NAME", "a\"b%c".into())]),
            "[Service]\nEnvironment=\"ETCD_NAME=a\\\"b%%c\"\n"
        );
    }
}
