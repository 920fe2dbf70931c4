//! Instance metadata from a datasource, its merge into the config, and the
//! `$private_ipv4`-style substitution.
//!
//! Substitution runs on the decoded config's string values, never on the raw text, so a
//! value from a metadata service can never add keys or change YAML structure. Addresses
//! are typed (`IpAddr`) and the hostname is checked, so substituted text is always a
//! plain address or hostname. As in coreos-cloudinit, `\$private_ipv4` stays literal
//! and a variable with no value becomes the empty string.

use crate::config::CloudConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// What a datasource knows about the instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub public_ipv4: Option<IpAddr>,
    pub private_ipv4: Option<IpAddr>,
    pub public_ipv6: Option<IpAddr>,
    pub private_ipv6: Option<IpAddr>,
    pub hostname: Option<String>,
    /// SSH public keys by the name the provider gave them.
    pub ssh_public_keys: BTreeMap<String, String>,
}

/// A hostname (or FQDN) systemd would accept: 1–253 chars of `[A-Za-z0-9-.]`, labels of
/// at most 63.
pub fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl Metadata {
    /// Keeps the hostname only if it is a valid hostname (first word, as EC2 sends it).
    pub fn set_hostname(&mut self, raw: &str) {
        let first = raw.split_whitespace().next().unwrap_or("");
        self.hostname = is_hostname(first).then(|| first.to_string());
    }

    fn variable(&self, name: &str) -> Option<String> {
        let ip = |v: &Option<IpAddr>| v.map(|a| a.to_string()).unwrap_or_default();
        Some(match name {
            "public_ipv4" => ip(&self.public_ipv4),
            "private_ipv4" => ip(&self.private_ipv4),
            "public_ipv6" => ip(&self.public_ipv6),
            "private_ipv6" => ip(&self.private_ipv6),
            "hostname" => self.hostname.clone().unwrap_or_default(),
            _ => return None,
        })
    }

    /// `COREOS_*` variables for `/etc/environment`, for the addresses that are known.
    pub fn environment(&self) -> Vec<(&'static str, String)> {
        [
            ("COREOS_PRIVATE_IPV4", self.private_ipv4),
            ("COREOS_PRIVATE_IPV6", self.private_ipv6),
            ("COREOS_PUBLIC_IPV4", self.public_ipv4),
            ("COREOS_PUBLIC_IPV6", self.public_ipv6),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|a| (k, a.to_string())))
        .collect()
    }
}

const VARIABLES: &[&str] = &[
    "private_ipv4",
    "private_ipv6",
    "public_ipv4",
    "public_ipv6",
    "hostname",
];

/// Replaces `$private_ipv4` etc. in `text`; `\$name` is kept as the literal `$name`.
pub fn substitute(text: &str, md: &Metadata) -> String {
    if !text.contains('$') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        let escaped = rest[..i].ends_with('\\');
        let after = &rest[i + 1..];
        let var = VARIABLES.iter().find(|v| after.starts_with(**v));
        match (var, escaped) {
            (Some(v), true) => {
                out.push_str(&rest[..i - 1]);
                out.push('$');
                out.push_str(v);
                rest = &after[v.len()..];
            }
            (Some(v), false) => {
                out.push_str(&rest[..i]);
                out.push_str(&md.variable(v).unwrap_or_default());
                rest = &after[v.len()..];
            }
            (None, _) => {
                out.push_str(&rest[..=i]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Substitutes metadata into every string value of the config and merges the metadata
/// hostname and SSH keys the way coreos-cloudinit did: the user-data hostname wins;
/// metadata keys are added to `ssh_authorized_keys` (for user `core`).
pub fn apply_metadata(config: &mut CloudConfig, md: &Metadata) {
    let s = |v: &mut String| *v = substitute(v, md);
    let so = |v: &mut Option<String>| {
        if let Some(x) = v {
            *x = substitute(x, md);
        }
    };
    so(&mut config.hostname);
    so(&mut config.manage_etc_hosts);
    config.ssh_authorized_keys.iter_mut().for_each(s);
    for u in &mut config.users {
        s(&mut u.name);
        so(&mut u.passwd);
        so(&mut u.gecos);
        so(&mut u.homedir);
        so(&mut u.primary_group);
        so(&mut u.shell);
        u.ssh_authorized_keys.iter_mut().for_each(s);
        u.groups.iter_mut().for_each(s);
    }
    for f in &mut config.write_files {
        s(&mut f.path);
        so(&mut f.owner);
        if let Ok(text) = std::str::from_utf8(&f.content)
            && text.contains('$')
        {
            f.content = substitute(text, md).into_bytes();
        }
    }
    let c = &mut config.coreos;
    for section in [
        &mut c.etcd,
        &mut c.etcd2,
        &mut c.fleet,
        &mut c.flannel,
        &mut c.locksmith,
        &mut c.update,
        &mut c.oem,
    ] {
        section.values.iter_mut().for_each(|v| s(&mut v.value));
    }
    for u in &mut c.units {
        so(&mut u.content);
        for d in &mut u.drop_ins {
            s(&mut d.content);
        }
    }
    if config.hostname.is_none() {
        config.hostname = md.hostname.clone();
    }
    for key in md.ssh_public_keys.values() {
        let key = key.trim().to_string();
        if !key.is_empty() && !config.ssh_authorized_keys.contains(&key) {
            config.ssh_authorized_keys.push(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_is_textual_but_typed() {
        let md = Metadata {
            private_ipv4: Some("10.0.0.5".parse().unwrap()),
            hostname: Some("node1".into()),
            ..Metadata::default()
        };
        assert_eq!(
            substitute(
                "http://$private_ipv4:2379 $public_ipv4|\\$private_ipv4 $HOME $hostname",
                &md
            ),
            "http://10.0.0.5:2379 |$private_ipv4 $HOME node1"
        );
        let mut m = Metadata::default();
        m.set_hostname("bad_host!\nkey: value");
        assert_eq!(m.hostname, None);
        m.set_hostname("ip-10-0-0-5.ec2.internal extra");
        assert_eq!(m.hostname.as_deref(), Some("ip-10-0-0-5.ec2.internal"));
    }
}
