//! The cloud-config schema: every key coreos-cloudinit v1.14 knew, with its type, its
//! `ETCD_*`-style environment name where it has one, its validity rule and its
//! deprecation note. Both the structure check and the typed decoder walk these tables,
//! so the validator and the applier cannot disagree about a key.

/// A key's type, named as coreos-cloudinit's validator names it in reports.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    Str,
    Bool,
    Int,
    Float,
    StrList,
    Struct(&'static [Field]),
    StructList(&'static [Field]),
}

impl Ty {
    /// The name used in `incorrect type for "x" (want …)`.
    pub fn human(&self) -> &'static str {
        match self {
            Ty::Str => "string",
            Ty::Bool => "bool",
            Ty::Int => "int",
            Ty::Float => "float64",
            Ty::StrList => "[]string",
            Ty::Struct(_) => "struct",
            Ty::StructList(_) => "[]struct",
        }
    }
}

/// One key of a mapping.
#[derive(Debug)]
pub struct Field {
    /// Canonical (underscored) spelling.
    pub key: &'static str,
    pub ty: Ty,
    /// Environment variable the value is exported as, for the `coreos.*` daemon sections.
    pub env: Option<&'static str>,
    /// Validity rule for non-empty values; a failure is `invalid value …`.
    pub valid: Option<fn(&str) -> bool>,
    /// Deprecation note: `deprecated key "x" (note)`.
    pub deprecated: Option<&'static str>,
}

const fn f(key: &'static str, ty: Ty) -> Field {
    Field {
        key,
        ty,
        env: None,
        valid: None,
        deprecated: None,
    }
}

const fn e(key: &'static str, ty: Ty, env: &'static str) -> Field {
    Field {
        key,
        ty,
        env: Some(env),
        valid: None,
        deprecated: None,
    }
}

const fn valid(mut field: Field, rule: fn(&str) -> bool) -> Field {
    field.valid = Some(rule);
    field
}

const fn dep(mut field: Field, note: &'static str) -> Field {
    field.deprecated = Some(note);
    field
}

use Ty::{Bool, Float, Int, Str, StrList};

const ETCD2_OPTION: &str = "etcd2 options no longer work for etcd";
const REMOTE_FETCH: &str =
    "trying to fetch from a remote endpoint introduces too many intermittent errors";

pub static ROOT: &[Field] = &[
    f("ssh_authorized_keys", StrList),
    f("coreos", Ty::Struct(COREOS)),
    f("write_files", Ty::StructList(FILE)),
    f("hostname", Str),
    f("users", Ty::StructList(USER)),
    valid(f("manage_etc_hosts", Str), is_etc_hosts),
];

pub static COREOS: &[Field] = &[
    dep(
        f("etcd", Ty::Struct(ETCD)),
        "etcd v1 is not shipped in Keel; use etcd2, which configures keel-store",
    ),
    f("etcd2", Ty::Struct(ETCD2)),
    dep(
        f("flannel", Ty::Struct(FLANNEL)),
        "flannel is not shipped in Keel; its options file is still written",
    ),
    dep(
        f("fleet", Ty::Struct(FLEET)),
        "fleet is not shipped in Keel; its drop-in is still written",
    ),
    f("locksmith", Ty::Struct(LOCKSMITH)),
    f("oem", Ty::Struct(OEM)),
    f("update", Ty::Struct(UPDATE)),
    f("units", Ty::StructList(UNIT)),
];

pub static USER: &[Field] = &[
    f("name", Str),
    f("passwd", Str),
    f("ssh_authorized_keys", StrList),
    dep(f("coreos_ssh_import_github", Str), REMOTE_FETCH),
    dep(f("coreos_ssh_import_github_users", StrList), REMOTE_FETCH),
    dep(f("coreos_ssh_import_url", Str), REMOTE_FETCH),
    f("gecos", Str),
    f("homedir", Str),
    f("no_create_home", Bool),
    f("primary_group", Str),
    f("groups", StrList),
    f("no_user_group", Bool),
    f("system", Bool),
    f("no_log_init", Bool),
    f("shell", Str),
];

pub static FILE: &[Field] = &[
    valid(f("encoding", Str), is_encoding),
    f("content", Str),
    f("owner", Str),
    f("path", Str),
    valid(f("permissions", Str), is_permissions),
];

pub static UNIT: &[Field] = &[
    f("name", Str),
    f("mask", Bool),
    f("enable", Bool),
    f("runtime", Bool),
    f("content", Str),
    valid(f("command", Str), is_command),
    f("drop_ins", Ty::StructList(DROP_IN)),
];

pub static DROP_IN: &[Field] = &[f("name", Str), f("content", Str)];

pub static OEM: &[Field] = &[
    f("id", Str),
    f("name", Str),
    f("version_id", Str),
    f("home_url", Str),
    f("bug_report_url", Str),
];

pub static UPDATE: &[Field] = &[
    valid(
        e("reboot_strategy", Str, "REBOOT_STRATEGY"),
        is_reboot_strategy,
    ),
    e("group", Str, "GROUP"),
    e("server", Str, "SERVER"),
];

pub static LOCKSMITH: &[Field] = &[
    e("endpoint", Str, "LOCKSMITHD_ENDPOINT"),
    e("etcd_cafile", Str, "LOCKSMITHD_ETCD_CAFILE"),
    e("etcd_certfile", Str, "LOCKSMITHD_ETCD_CERTFILE"),
    e("etcd_keyfile", Str, "LOCKSMITHD_ETCD_KEYFILE"),
    e("etcd_username", Str, "LOCKSMITHD_ETCD_USERNAME"),
    e("etcd_password", Str, "LOCKSMITHD_ETCD_PASSWORD"),
    e("group", Str, "LOCKSMITHD_GROUP"),
    valid(
        e("window_start", Str, "LOCKSMITHD_REBOOT_WINDOW_START"),
        is_window_start,
    ),
    valid(
        e("window_length", Str, "LOCKSMITHD_REBOOT_WINDOW_LENGTH"),
        is_window_length,
    ),
];

pub static FLANNEL: &[Field] = &[
    e("etcd_endpoints", Str, "FLANNELD_ETCD_ENDPOINTS"),
    e("etcd_cafile", Str, "FLANNELD_ETCD_CAFILE"),
    e("etcd_certfile", Str, "FLANNELD_ETCD_CERTFILE"),
    e("etcd_keyfile", Str, "FLANNELD_ETCD_KEYFILE"),
    e("etcd_prefix", Str, "FLANNELD_ETCD_PREFIX"),
    e("etcd_username", Str, "FLANNELD_ETCD_USERNAME"),
    e("etcd_password", Str, "FLANNELD_ETCD_PASSWORD"),
    e("ip_masq", Str, "FLANNELD_IP_MASQ"),
    e("subnet_file", Str, "FLANNELD_SUBNET_FILE"),
    e("interface", Str, "FLANNELD_IFACE"),
    e("public_ip", Str, "FLANNELD_PUBLIC_IP"),
];

pub static FLEET: &[Field] = &[
    e("agent_ttl", Str, "FLEET_AGENT_TTL"),
    e("authorized_keys_file", Str, "FLEET_AUTHORIZED_KEYS_FILE"),
    e("disable_engine", Bool, "FLEET_DISABLE_ENGINE"),
    e(
        "engine_reconcile_interval",
        Float,
        "FLEET_ENGINE_RECONCILE_INTERVAL",
    ),
    e("etcd_cafile", Str, "FLEET_ETCD_CAFILE"),
    e("etcd_certfile", Str, "FLEET_ETCD_CERTFILE"),
    e("etcd_keyfile", Str, "FLEET_ETCD_KEYFILE"),
    e("etcd_key_prefix", Str, "FLEET_ETCD_KEY_PREFIX"),
    e("etcd_request_timeout", Float, "FLEET_ETCD_REQUEST_TIMEOUT"),
    e("etcd_servers", Str, "FLEET_ETCD_SERVERS"),
    e("etcd_username", Str, "FLEET_ETCD_USERNAME"),
    e("etcd_password", Str, "FLEET_ETCD_PASSWORD"),
    e("metadata", Str, "FLEET_METADATA"),
    e("public_ip", Str, "FLEET_PUBLIC_IP"),
    e("token_limit", Int, "FLEET_TOKEN_LIMIT"),
    e("verbosity", Int, "FLEET_VERBOSITY"),
    e("verify_units", Bool, "FLEET_VERIFY_UNITS"),
];

pub static ETCD2: &[Field] = &[
    e("advertise_client_urls", Str, "ETCD_ADVERTISE_CLIENT_URLS"),
    dep(
        e("ca_file", Str, "ETCD_CA_FILE"),
        "ca_file obsoleted by trusted_ca_file and client_cert_auth",
    ),
    e("cert_file", Str, "ETCD_CERT_FILE"),
    e("client_cert_auth", Bool, "ETCD_CLIENT_CERT_AUTH"),
    e("cors", Str, "ETCD_CORS"),
    e("data_dir", Str, "ETCD_DATA_DIR"),
    e("debug", Bool, "ETCD_DEBUG"),
    e("discovery", Str, "ETCD_DISCOVERY"),
    e("discovery_fallback", Str, "ETCD_DISCOVERY_FALLBACK"),
    e("discovery_srv", Str, "ETCD_DISCOVERY_SRV"),
    e("discovery_proxy", Str, "ETCD_DISCOVERY_PROXY"),
    e("election_timeout", Int, "ETCD_ELECTION_TIMEOUT"),
    e("enable_pprof", Bool, "ETCD_ENABLE_PPROF"),
    e("force_new_cluster", Bool, "ETCD_FORCE_NEW_CLUSTER"),
    e("heartbeat_interval", Int, "ETCD_HEARTBEAT_INTERVAL"),
    e(
        "initial_advertise_peer_urls",
        Str,
        "ETCD_INITIAL_ADVERTISE_PEER_URLS",
    ),
    e("initial_cluster", Str, "ETCD_INITIAL_CLUSTER"),
    e("initial_cluster_state", Str, "ETCD_INITIAL_CLUSTER_STATE"),
    e("initial_cluster_token", Str, "ETCD_INITIAL_CLUSTER_TOKEN"),
    e("key_file", Str, "ETCD_KEY_FILE"),
    e("listen_client_urls", Str, "ETCD_LISTEN_CLIENT_URLS"),
    e("listen_peer_urls", Str, "ETCD_LISTEN_PEER_URLS"),
    e("log_package_levels", Str, "ETCD_LOG_PACKAGE_LEVELS"),
    e("max_snapshots", Int, "ETCD_MAX_SNAPSHOTS"),
    e("max_wals", Int, "ETCD_MAX_WALS"),
    e("name", Str, "ETCD_NAME"),
    dep(
        e("peer_ca_file", Str, "ETCD_PEER_CA_FILE"),
        "peer_ca_file obsoleted peer_trusted_ca_file and peer_client_cert_auth",
    ),
    e("peer_cert_file", Str, "ETCD_PEER_CERT_FILE"),
    e("peer_key_file", Str, "ETCD_PEER_KEY_FILE"),
    e("peer_client_cert_auth", Bool, "ETCD_PEER_CLIENT_CERT_AUTH"),
    e("peer_trusted_ca_file", Str, "ETCD_PEER_TRUSTED_CA_FILE"),
    valid(e("proxy", Str, "ETCD_PROXY"), is_proxy),
    e("proxy_dial_timeout", Int, "ETCD_PROXY_DIAL_TIMEOUT"),
    e("proxy_failure_wait", Int, "ETCD_PROXY_FAILURE_WAIT"),
    e("proxy_read_timeout", Int, "ETCD_PROXY_READ_TIMEOUT"),
    e("proxy_refresh_interval", Int, "ETCD_PROXY_REFRESH_INTERVAL"),
    e("proxy_write_timeout", Int, "ETCD_PROXY_WRITE_TIMEOUT"),
    e("snapshot_count", Int, "ETCD_SNAPSHOT_COUNT"),
    e("strict_reconfig_check", Bool, "ETCD_STRICT_RECONFIG_CHECK"),
    e("trusted_ca_file", Str, "ETCD_TRUSTED_CA_FILE"),
    e("wal_dir", Str, "ETCD_WAL_DIR"),
];

pub static ETCD: &[Field] = &[
    e("addr", Str, "ETCD_ADDR"),
    dep(
        e("advertise_client_urls", Str, "ETCD_ADVERTISE_CLIENT_URLS"),
        ETCD2_OPTION,
    ),
    e("bind_addr", Str, "ETCD_BIND_ADDR"),
    e("ca_file", Str, "ETCD_CA_FILE"),
    e("cert_file", Str, "ETCD_CERT_FILE"),
    e("cluster_active_size", Int, "ETCD_CLUSTER_ACTIVE_SIZE"),
    e("cluster_remove_delay", Float, "ETCD_CLUSTER_REMOVE_DELAY"),
    e("cluster_sync_interval", Float, "ETCD_CLUSTER_SYNC_INTERVAL"),
    e("cors", Str, "ETCD_CORS"),
    e("data_dir", Str, "ETCD_DATA_DIR"),
    e("discovery", Str, "ETCD_DISCOVERY"),
    dep(
        e("discovery_fallback", Str, "ETCD_DISCOVERY_FALLBACK"),
        ETCD2_OPTION,
    ),
    dep(e("discovery_srv", Str, "ETCD_DISCOVERY_SRV"), ETCD2_OPTION),
    dep(
        e("discovery_proxy", Str, "ETCD_DISCOVERY_PROXY"),
        ETCD2_OPTION,
    ),
    dep(
        e("election_timeout", Int, "ETCD_ELECTION_TIMEOUT"),
        ETCD2_OPTION,
    ),
    dep(
        e("force_new_cluster", Bool, "ETCD_FORCE_NEW_CLUSTER"),
        ETCD2_OPTION,
    ),
    e("graphite_host", Str, "ETCD_GRAPHITE_HOST"),
    dep(
        e("heartbeat_interval", Int, "ETCD_HEARTBEAT_INTERVAL"),
        ETCD2_OPTION,
    ),
    e("http_read_timeout", Float, "ETCD_HTTP_READ_TIMEOUT"),
    e("http_write_timeout", Float, "ETCD_HTTP_WRITE_TIMEOUT"),
    dep(
        e(
            "initial_advertise_peer_urls",
            Str,
            "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        ),
        ETCD2_OPTION,
    ),
    dep(
        e("initial_cluster", Str, "ETCD_INITIAL_CLUSTER"),
        ETCD2_OPTION,
    ),
    dep(
        e("initial_cluster_state", Str, "ETCD_INITIAL_CLUSTER_STATE"),
        ETCD2_OPTION,
    ),
    dep(
        e("initial_cluster_token", Str, "ETCD_INITIAL_CLUSTER_TOKEN"),
        ETCD2_OPTION,
    ),
    e("key_file", Str, "ETCD_KEY_FILE"),
    dep(
        e("listen_client_urls", Str, "ETCD_LISTEN_CLIENT_URLS"),
        ETCD2_OPTION,
    ),
    dep(
        e("listen_peer_urls", Str, "ETCD_LISTEN_PEER_URLS"),
        ETCD2_OPTION,
    ),
    e("max_result_buffer", Int, "ETCD_MAX_RESULT_BUFFER"),
    e("max_retry_attempts", Int, "ETCD_MAX_RETRY_ATTEMPTS"),
    dep(e("max_snapshots", Int, "ETCD_MAX_SNAPSHOTS"), ETCD2_OPTION),
    dep(e("max_wals", Int, "ETCD_MAX_WALS"), ETCD2_OPTION),
    e("name", Str, "ETCD_NAME"),
    e("peer_addr", Str, "ETCD_PEER_ADDR"),
    e("peer_bind_addr", Str, "ETCD_PEER_BIND_ADDR"),
    e("peer_ca_file", Str, "ETCD_PEER_CA_FILE"),
    e("peer_cert_file", Str, "ETCD_PEER_CERT_FILE"),
    e("peer_election_timeout", Int, "ETCD_PEER_ELECTION_TIMEOUT"),
    e(
        "peer_heartbeat_interval",
        Int,
        "ETCD_PEER_HEARTBEAT_INTERVAL",
    ),
    e("peer_key_file", Str, "ETCD_PEER_KEY_FILE"),
    e("peers", Str, "ETCD_PEERS"),
    e("peers_file", Str, "ETCD_PEERS_FILE"),
    dep(e("proxy", Str, "ETCD_PROXY"), ETCD2_OPTION),
    e("retry_interval", Float, "ETCD_RETRY_INTERVAL"),
    e("snapshot", Bool, "ETCD_SNAPSHOT"),
    e("snapshot_count", Int, "ETCD_SNAPSHOTCOUNT"),
    e("trace", Str, "ETCD_TRACE"),
    e("verbose", Bool, "ETCD_VERBOSE"),
    e("very_verbose", Bool, "ETCD_VERY_VERBOSE"),
    e("very_very_verbose", Bool, "ETCD_VERY_VERY_VERBOSE"),
];

/// The `ETCD_*` variables keel-store reads (an unknown one stops it from starting).
pub const KEEL_STORE_ENV: &[&str] = &[
    "ETCD_NAME",
    "ETCD_DATA_DIR",
    "ETCD_WAL_DIR",
    "ETCD_LISTEN_CLIENT_URLS",
    "ETCD_ADVERTISE_CLIENT_URLS",
    "ETCD_LISTEN_PEER_URLS",
    "ETCD_INITIAL_ADVERTISE_PEER_URLS",
    "ETCD_INITIAL_CLUSTER",
    "ETCD_INITIAL_CLUSTER_STATE",
    "ETCD_INITIAL_CLUSTER_TOKEN",
    "ETCD_SNAPSHOT_COUNT",
    "ETCD_HEARTBEAT_INTERVAL",
    "ETCD_ELECTION_TIMEOUT",
    "ETCD_CORS",
    "ETCD_CERT_FILE",
    "ETCD_KEY_FILE",
    "ETCD_TRUSTED_CA_FILE",
    "ETCD_CLIENT_CERT_AUTH",
    "ETCD_PEER_CERT_FILE",
    "ETCD_PEER_KEY_FILE",
    "ETCD_PEER_TRUSTED_CA_FILE",
    "ETCD_PEER_CLIENT_CERT_AUTH",
    "ETCD_DISCOVERY",
    "ETCD_DISCOVERY_SRV",
    "ETCD_PROXY",
    "ETCD_FORCE_NEW_CLUSTER",
];

// ---- validity rules (coreos-cloudinit's `valid:` regular expressions, by hand) ----

pub fn is_etc_hosts(v: &str) -> bool {
    v == "localhost"
}

pub fn is_encoding(v: &str) -> bool {
    matches!(
        v,
        "base64" | "b64" | "gz" | "gzip" | "gz+base64" | "gzip+base64" | "gz+b64" | "gzip+b64"
    )
}

/// `^0?[0-7]{3,4}$`
pub fn is_permissions(v: &str) -> bool {
    let digits = v.strip_prefix('0').filter(|d| d.len() >= 3).unwrap_or(v);
    (3..=4).contains(&digits.len()) && digits.chars().all(|c| ('0'..='7').contains(&c))
}

pub fn is_command(v: &str) -> bool {
    matches!(
        v,
        "start"
            | "stop"
            | "restart"
            | "reload"
            | "try-restart"
            | "reload-or-restart"
            | "reload-or-try-restart"
    )
}

pub fn is_reboot_strategy(v: &str) -> bool {
    matches!(v, "etcd-lock" | "reboot" | "off")
}

pub fn is_proxy(v: &str) -> bool {
    matches!(v, "on" | "off" | "readonly")
}

/// `^((?i:sun|mon|tue|wed|thu|fri|sat|sun) )?0*([0-9]|1[0-9]|2[0-3]):0*([0-9]|[1-5][0-9])$`
pub fn is_window_start(v: &str) -> bool {
    let time = match v.split_once(' ') {
        Some((day, time)) => {
            let day = day.to_ascii_lowercase();
            if !matches!(
                day.as_str(),
                "sun" | "mon" | "tue" | "wed" | "thu" | "fri" | "sat"
            ) {
                return false;
            }
            time
        }
        None => v,
    };
    let Some((h, m)) = time.split_once(':') else {
        return false;
    };
    let number = |s: &str, max: u32| {
        let t = s.trim_start_matches('0');
        let t = if t.is_empty() && !s.is_empty() {
            "0"
        } else {
            t
        };
        t.len() <= 2
            && !t.is_empty()
            && t.chars().all(|c| c.is_ascii_digit())
            && t.parse::<u32>().is_ok_and(|n| n <= max)
    };
    number(h, 23) && number(m, 59)
}

/// `^[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+$`
pub fn is_window_length(v: &str) -> bool {
    let mut s = v.strip_prefix(['-', '+']).unwrap_or(v).as_bytes();
    if s.is_empty() {
        return false;
    }
    while !s.is_empty() {
        let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
        s = &s[digits..];
        if s.first() == Some(&b'.') {
            s = &s[1..];
            let frac = s.iter().take_while(|c| c.is_ascii_digit()).count();
            s = &s[frac..];
        }
        let letters = s.iter().take_while(|c| c.is_ascii_lowercase()).count();
        if letters == 0 {
            return false;
        }
        s = &s[letters..];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_rules_match_coreos_cloudinit() {
        for v in ["744", "0744", "1744", "01744"] {
            assert!(is_permissions(v), "{v}");
        }
        for v in ["11744", "rwxr--r--", "800", "74", "0"] {
            assert!(!is_permissions(v), "{v}");
        }
        for v in ["Sun 0:0", "sUn 23:59", "00:00", "mon 02:00", "0:0"] {
            assert!(is_window_start(v), "{v}");
        }
        for v in ["tues 0:0", "thur 0:0", "sat00:00", "20:60", "24:00", "1:"] {
            assert!(!is_window_start(v), "{v}");
        }
        for v in ["1h", "1d", "0d", "0.5h", "1h30m", "-1h"] {
            assert!(is_window_length(v), "{v}");
        }
        for v in ["0.5.0h", "1", "h1", ""] {
            assert!(!is_window_length(v), "{v}");
        }
        assert!(!is_command("tryrestart"));
        assert!(!is_reboot_strategy("besteffort"));
        assert!(!is_encoding("gzzzzbase64"));
    }
}
