//! `keel-store`'s configuration: etcd's own flags and `ETCD_*` environment variables.
//!
//! Flags parse into [`EtcdFlags`] (clap reads the environment for each flag), then
//! [`EtcdFlags::validate`] turns them into typed [`Settings`]. An etcd flag that Keel
//! does not implement yet is still recognised, so the operator gets an error that says
//! so instead of "unknown argument"; an `ETCD_*` variable that names no flag is an error
//! too, never silently ignored. Go-style single-dash long flags (`-name x`) are accepted
//! as etcd accepts them (see [`normalize_go_flags`]).

use crate::engine::DEFAULT_SNAPSHOT_COUNT;
use std::net::SocketAddr;
use std::path::PathBuf;

/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1_572_864;
/// etcd's default client URL.
pub const DEFAULT_CLIENT_URL: &str = "http://localhost:2379";
/// etcd's default peer URL.
pub const DEFAULT_PEER_URL: &str = "http://localhost:2380";

/// Configuration errors; each names the flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
    #[error("--{flag} is an etcd flag that keel-store does not support yet ({why})")]
    Unsupported {
        flag: &'static str,
        why: &'static str,
    },
    #[error("environment variable {name} does not name any etcd flag keel-store knows")]
    UnknownEnv { name: String },
}

/// etcd's member and clustering flags that keel-store serves today, plus the ones it
/// recognises but refuses until the feature lands.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "etcd flags")]
pub struct EtcdFlags {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory [default: ${name}.etcd].
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Path to a dedicated WAL directory [default: ${data-dir}/member/wal].
    #[arg(long, env = "ETCD_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(long, env = "ETCD_LISTEN_CLIENT_URLS", default_value = DEFAULT_CLIENT_URL)]
    pub listen_client_urls: String,
    /// Client URLs advertised to the cluster and clients (comma-separated).
    #[arg(long, env = "ETCD_ADVERTISE_CLIENT_URLS", default_value = DEFAULT_CLIENT_URL)]
    pub advertise_client_urls: String,
    /// URLs to listen on for peer traffic.
    #[arg(long, env = "ETCD_LISTEN_PEER_URLS", default_value = DEFAULT_PEER_URL)]
    pub listen_peer_urls: String,
    /// This member's peer URLs to advertise to the cluster.
    #[arg(long, env = "ETCD_INITIAL_ADVERTISE_PEER_URLS", default_value = DEFAULT_PEER_URL)]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping (`name=peerURL,...`).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state (`new` or `existing`).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    /// Initial cluster token; part of the member and cluster ids.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// Number of committed transactions that trigger a snapshot to disk.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = DEFAULT_SNAPSHOT_COUNT)]
    pub snapshot_count: u64,
    /// Maximum client request size in bytes (v3 requests; v2 bodies are limited to 10 MiB as in etcd).
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: u64,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = crate::v3::api::DEFAULT_MAX_TXN_OPS)]
    pub max_txn_ops: usize,
    /// Interval (ms) of watch progress notifications (etcd: --experimental-watch-progress-notify-interval, 10m).
    #[arg(long = "experimental-watch-progress-notify-interval", env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
          default_value_t = 600_000, value_parser = parse_go_duration_ms)]
    pub experimental_watch_progress_notify_interval_ms: u64,
    /// Time (ms) of a heartbeat interval: one Raft tick.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (ms) for an election to time out.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Accept etcd v2 API requests (keel-store always serves v2; accepted for etcd compatibility).
    #[arg(long, env = "ETCD_ENABLE_V2", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub enable_v2: Option<bool>,
    /// Comma-separated origins for CORS (`*` is what keel-store sends).
    #[arg(long, env = "ETCD_CORS", default_value = "*")]
    pub cors: String,
    /// Log level: debug, info, warn, error.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Logger (`zap` or `capnslog`); keel-store logs through tracing either way.
    #[arg(long, env = "ETCD_LOGGER", default_value = "zap")]
    pub logger: String,
    /// Log outputs (`default`, `stderr`, `stdout`).
    #[arg(long, env = "ETCD_LOG_OUTPUTS", default_value = "default")]
    pub log_outputs: String,

    /// Path to the client server TLS cert file (for https:// client URLs).
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<String>,
    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<String>,
    /// Path to the client server TLS trusted CA cert file.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<String>,
    /// Require client certificates signed by --trusted-ca-file.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: Option<String>,

    /// Path to the peer server TLS cert file (also presented to peers as a client).
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<String>,
    /// Path to the peer server TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<String>,
    /// Path to the peer TLS trusted CA file (verifies peers both ways).
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<String>,
    /// Require peers to present certificates signed by --peer-trusted-ca-file.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub peer_client_cert_auth: Option<String>,

    // Recognised etcd flags that are not supported yet.
    #[arg(long, env = "ETCD_AUTO_TLS", hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub auto_tls: Option<String>,
    /// Discovery URL used to bootstrap the cluster (etcd's v2 discovery protocol).
    #[arg(long, env = "ETCD_DISCOVERY")]
    pub discovery: Option<String>,
    /// DNS domain whose SRV records (`_etcd-server-ssl._tcp`, `_etcd-server._tcp`) list
    /// the members of a new cluster.
    #[arg(long, env = "ETCD_DISCOVERY_SRV")]
    pub discovery_srv: Option<String>,
    /// Suffix to the SRV service names queried with --discovery-srv
    /// (`_etcd-server-ssl-NAME._tcp`).
    #[arg(long, env = "ETCD_DISCOVERY_SRV_NAME")]
    pub discovery_srv_name: Option<String>,
    #[arg(long, env = "ETCD_PROXY", hide = true)]
    pub proxy: Option<String>,
    #[arg(long, env = "ETCD_FORCE_NEW_CLUSTER", hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub force_new_cluster: Option<String>,
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", hide = true)]
    pub auto_compaction_retention: Option<String>,
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", hide = true)]
    pub quota_backend_bytes: Option<String>,
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", hide = true)]
    pub listen_metrics_urls: Option<String>,
}

/// Every `ETCD_*` variable a flag above reads, plus etcd's own non-flag variables.
pub const KNOWN_ENV: &[&str] = &[
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
    "ETCD_MAX_REQUEST_BYTES",
    "ETCD_HEARTBEAT_INTERVAL",
    "ETCD_ELECTION_TIMEOUT",
    "ETCD_ENABLE_V2",
    "ETCD_CORS",
    "ETCD_LOG_LEVEL",
    "ETCD_LOGGER",
    "ETCD_LOG_OUTPUTS",
    "ETCD_CERT_FILE",
    "ETCD_KEY_FILE",
    "ETCD_TRUSTED_CA_FILE",
    "ETCD_CLIENT_CERT_AUTH",
    "ETCD_AUTO_TLS",
    "ETCD_PEER_CERT_FILE",
    "ETCD_PEER_KEY_FILE",
    "ETCD_PEER_TRUSTED_CA_FILE",
    "ETCD_PEER_CLIENT_CERT_AUTH",
    "ETCD_DISCOVERY",
    "ETCD_DISCOVERY_SRV",
    "ETCD_DISCOVERY_SRV_NAME",
    "ETCD_PROXY",
    "ETCD_FORCE_NEW_CLUSTER",
    "ETCD_AUTO_COMPACTION_RETENTION",
    "ETCD_QUOTA_BACKEND_BYTES",
    "ETCD_LISTEN_METRICS_URLS",
    "ETCD_UNSUPPORTED_ARCH",
    "ETCD_MAX_TXN_OPS",
    "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
];

/// A client listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    /// Serve TLS (an `https://` listen URL).
    pub https: bool,
}

/// `--discovery-srv DOMAIN` and `--discovery-srv-name NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvDiscovery {
    pub domain: String,
    pub service_name: Option<String>,
}

/// Validated settings for the server.
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: String,
    pub data_dir: PathBuf,
    pub wal_dir: Option<PathBuf>,
    pub listen_client: Vec<Listen>,
    /// TLS for `https://` client URLs.
    pub tls: Option<crate::tls::TlsFiles>,
    pub advertise_client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
    /// Where peer traffic is accepted (`--listen-peer-urls`).
    pub listen_peer: Vec<Listen>,
    /// TLS towards and from peers (`--peer-cert-file` …).
    pub peer_tls: Option<crate::tls::TlsFiles>,
    /// The members of a new cluster (`--initial-cluster`; just this member by default).
    pub initial_cluster: Vec<(String, Vec<String>)>,
    /// Join a running cluster (`--initial-cluster-state existing`).
    pub join_existing: bool,
    /// Find the other members of a new cluster through this discovery URL.
    pub discovery: Option<String>,
    /// Or through DNS SRV records.
    pub discovery_srv: Option<SrvDiscovery>,
    pub cluster_token: String,
    /// One Raft tick (`--heartbeat-interval`).
    pub heartbeat: std::time::Duration,
    /// `--election-timeout`.
    pub election: std::time::Duration,
    pub snapshot_count: u64,
    pub max_request_bytes: u64,
    pub log_level: String,
    pub v3: crate::v3::api::V3Options,
}

impl EtcdFlags {
    /// Check the flags and produce settings; `env` is the process environment (passed
    /// in so tests need not touch global state).
    pub fn validate<I>(&self, env: I) -> Result<Settings, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        for (name, _) in env {
            if name.starts_with("ETCD_") && !KNOWN_ENV.contains(&name.as_str()) {
                return Err(ConfigError::UnknownEnv { name });
            }
        }
        let unsupported: [(&'static str, bool, &'static str); 7] = [
            (
                "auto-tls",
                self.auto_tls.is_some(),
                "give --cert-file and --key-file",
            ),
            ("proxy", self.proxy.is_some(), "proxy mode is not planned"),
            (
                "force-new-cluster",
                self.force_new_cluster.is_some(),
                "arrives with clustering",
            ),
            (
                "auto-compaction-retention",
                self.auto_compaction_retention.is_some(),
                "v3 MVCC compaction arrives with the v3 API",
            ),
            (
                "quota-backend-bytes",
                self.quota_backend_bytes.is_some(),
                "the v3 backend arrives with the v3 API",
            ),
            (
                "listen-metrics-urls",
                self.listen_metrics_urls.is_some(),
                "metrics are not served yet",
            ),
            (
                "enable-v2",
                self.enable_v2 == Some(false),
                "the v2 API is always on in this release",
            ),
        ];
        if let Some((flag, _, why)) = unsupported.iter().find(|(_, set, _)| *set) {
            return Err(ConfigError::Unsupported { flag, why });
        }
        if self.name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        let listen_client = parse_listen_urls("listen-client-urls", &self.listen_client_urls)?;
        let client_cert_auth = match self.client_cert_auth.as_deref() {
            None => false,
            Some(v) => crate::http::form::parse_bool(v)
                .ok()
                .ok_or_else(|| invalid("client-cert-auth", format!("{v:?} is not a boolean")))?,
        };
        let tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert: cert.into(),
                key: key.into(),
                trusted_ca: self.trusted_ca_file.as_ref().map(Into::into),
                client_cert_auth,
            }),
            (None, None) => None,
            (Some(_), None) => return Err(invalid("key-file", "is required with --cert-file")),
            (None, Some(_)) => return Err(invalid("cert-file", "is required with --key-file")),
        };
        if listen_client.iter().any(|l| l.https) && tls.is_none() {
            return Err(invalid(
                "listen-client-urls",
                "https URLs need --cert-file and --key-file",
            ));
        }
        if client_cert_auth && self.trusted_ca_file.is_none() {
            return Err(invalid("client-cert-auth", "needs --trusted-ca-file"));
        }
        let advertise_client_urls =
            parse_urls("advertise-client-urls", &self.advertise_client_urls)?;
        let peer_urls = parse_urls(
            "initial-advertise-peer-urls",
            &self.initial_advertise_peer_urls,
        )?;
        let listen_peer = parse_listen_urls("listen-peer-urls", &self.listen_peer_urls)?;
        let peer_client_cert_auth = match self.peer_client_cert_auth.as_deref() {
            None => false,
            Some(v) => crate::http::form::parse_bool(v).ok().ok_or_else(|| {
                invalid("peer-client-cert-auth", format!("{v:?} is not a boolean"))
            })?,
        };
        let peer_tls = match (&self.peer_cert_file, &self.peer_key_file) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert: cert.into(),
                key: key.into(),
                trusted_ca: self.peer_trusted_ca_file.as_ref().map(Into::into),
                client_cert_auth: peer_client_cert_auth,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "peer-key-file",
                    "is required with --peer-cert-file",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "peer-cert-file",
                    "is required with --peer-key-file",
                ));
            }
        };
        let https_peers = listen_peer.iter().any(|l| l.https)
            || peer_urls.iter().any(|u| u.starts_with("https://"))
            || self
                .initial_cluster
                .as_deref()
                .is_some_and(|c| c.contains("https://"));
        if https_peers && peer_tls.is_none() {
            return Err(invalid(
                "listen-peer-urls",
                "https peer URLs need --peer-cert-file and --peer-key-file",
            ));
        }
        if (https_peers || peer_client_cert_auth) && self.peer_trusted_ca_file.is_none() {
            return Err(invalid(
                "peer-trusted-ca-file",
                "is required to verify peers over https (and for --peer-client-cert-auth)",
            ));
        }
        if self.initial_cluster_state != "new" && self.initial_cluster_state != "existing" {
            return Err(invalid(
                "initial-cluster-state",
                format!(
                    "must be new or existing, not {:?}",
                    self.initial_cluster_state
                ),
            ));
        }
        let bootstrap_flags = [
            self.initial_cluster.is_some(),
            self.discovery.is_some(),
            self.discovery_srv.is_some(),
        ];
        if bootstrap_flags.iter().filter(|set| **set).count() > 1 {
            return Err(invalid(
                if self.discovery.is_some() {
                    "discovery"
                } else {
                    "discovery-srv"
                },
                "multiple discovery or bootstrap flags are set: choose one of --initial-cluster, --discovery or --discovery-srv",
            ));
        }
        if let Some(domain) = &self.discovery_srv
            && (domain.is_empty() || domain.contains('/') || domain.contains(':'))
        {
            return Err(invalid(
                "discovery-srv",
                format!("{domain:?} is not a DNS domain"),
            ));
        }
        if self.discovery_srv_name.is_some() && self.discovery_srv.is_none() {
            return Err(invalid("discovery-srv-name", "needs --discovery-srv"));
        }
        if let Some(d) = &self.discovery
            && !d.starts_with("http://")
            && !d.starts_with("https://")
        {
            return Err(invalid("discovery", format!("{d:?} is not an http(s) URL")));
        }
        let initial_cluster = match &self.initial_cluster {
            None => vec![(self.name.clone(), peer_urls.clone())],
            Some(ic) => parse_initial_cluster(ic)?,
        };
        if self.snapshot_count == 0 {
            return Err(invalid("snapshot-count", "must be at least 1"));
        }
        if self.max_request_bytes == 0 {
            return Err(invalid("max-request-bytes", "must be at least 1"));
        }
        if self.heartbeat_interval == 0 || self.election_timeout < 5 * self.heartbeat_interval {
            return Err(invalid(
                "election-timeout",
                "must be at least 5 times --heartbeat-interval, as etcd requires",
            ));
        }
        if !matches!(
            self.log_level.as_str(),
            "debug" | "info" | "warn" | "error" | "panic" | "fatal"
        ) {
            return Err(invalid(
                "log-level",
                format!("unknown level {:?}", self.log_level),
            ));
        }
        if !matches!(self.logger.as_str(), "zap" | "capnslog") {
            return Err(invalid(
                "logger",
                format!("unknown logger {:?} (zap or capnslog)", self.logger),
            ));
        }
        Ok(Settings {
            name: self.name.clone(),
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name))),
            wal_dir: self.wal_dir.clone(),
            listen_client,
            tls,
            advertise_client_urls,
            peer_urls,
            listen_peer,
            peer_tls,
            initial_cluster,
            join_existing: self.initial_cluster_state == "existing",
            discovery: self.discovery.clone(),
            discovery_srv: self.discovery_srv.clone().map(|domain| SrvDiscovery {
                domain,
                service_name: self.discovery_srv_name.clone(),
            }),
            cluster_token: self.initial_cluster_token.clone(),
            heartbeat: std::time::Duration::from_millis(self.heartbeat_interval),
            election: std::time::Duration::from_millis(self.election_timeout),
            snapshot_count: self.snapshot_count,
            max_request_bytes: self.max_request_bytes,
            log_level: self.log_level.clone(),
            v3: crate::v3::api::V3Options {
                max_request_bytes: self.max_request_bytes as usize,
                max_txn_ops: self.max_txn_ops,
                // etcd: 1.5 election timeouts, rounded up to whole seconds.
                min_lease_ttl_secs: (self.election_timeout * 3 / 2).div_ceil(1000) as i64,
                progress_notify_interval: std::time::Duration::from_millis(
                    self.experimental_watch_progress_notify_interval_ms,
                ),
            },
        })
    }
}

/// A Go duration (`10m`, `1.5s`, `500ms`) or a plain number of milliseconds.
impl Settings {
    /// etcd's bootstrap checks of `--initial-cluster`, made only when this member has
    /// no data yet (etcd ignores the `--initial-*` flags on later starts, so a member
    /// moved by `member update` restarts with only its new peer URLs): the initial
    /// cluster names this member, and in a new cluster it lists exactly the advertised
    /// peer URLs.
    pub fn verify_bootstrap(&self) -> Result<(), ConfigError> {
        let Some((_, urls)) = self.initial_cluster.iter().find(|(n, _)| n == &self.name) else {
            return Err(invalid(
                "initial-cluster",
                format!("does not name this member {:?}", self.name),
            ));
        };
        let (mut listed, mut advertised) = (urls.clone(), self.peer_urls.clone());
        listed.sort();
        advertised.sort();
        if !self.join_existing && listed != advertised {
            return Err(invalid(
                "initial-cluster",
                format!(
                    "peer URLs {urls:?} of {:?} differ from --initial-advertise-peer-urls {:?}",
                    self.name, self.peer_urls
                ),
            ));
        }
        Ok(())
    }
}

fn parse_go_duration_ms(s: &str) -> Result<u64, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .ok_or_else(|| format!("{s:?} is not a duration"))?;
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    let factor = match unit {
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}")),
    };
    Ok((n * factor) as u64)
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        reason: reason.into(),
    }
}

/// `http://host:port` URLs, comma-separated; https is refused until TLS lands.
fn parse_urls(flag: &'static str, list: &str) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let rest = if let Some(rest) = raw
            .strip_prefix("http://")
            .or_else(|| raw.strip_prefix("https://"))
        {
            rest
        } else {
            return Err(invalid(
                flag,
                format!("URL scheme must be http or https (got {raw:?})"),
            ));
        };
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('/')
            || hostport
                .rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return Err(invalid(
                flag,
                format!("{raw:?} is not of the form http://host:port"),
            ));
        }
        out.push(raw.trim_end_matches('/').to_string());
    }
    if out.is_empty() {
        return Err(invalid(flag, "needs at least one URL"));
    }
    Ok(out)
}

fn parse_listen_urls(flag: &'static str, list: &str) -> Result<Vec<Listen>, ConfigError> {
    let mut addrs = Vec::new();
    for url in parse_urls(flag, list)? {
        let https = url.starts_with("https://");
        let hostport = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "2379"));
        let port: u16 = port
            .parse()
            .map_err(|_| invalid(flag, format!("bad port in {url:?}")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = match host {
            "localhost" => std::net::IpAddr::from([127, 0, 0, 1]),
            "" => std::net::IpAddr::from([0, 0, 0, 0]),
            h => h.parse().map_err(|_| {
                invalid(
                    flag,
                    format!("{url:?}: listen URLs need an IP address (or localhost), as in etcd"),
                )
            })?,
        };
        addrs.push(Listen {
            addr: SocketAddr::new(ip, port),
            https,
        });
    }
    Ok(addrs)
}

fn parse_initial_cluster(s: &str) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| invalid("initial-cluster", format!("{part:?} is not name=URL")))?;
        let url = parse_urls("initial-cluster", url)?.remove(0);
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url),
            None => members.push((name.to_string(), vec![url])),
        }
    }
    Ok(members)
}

/// Go's flag package accepts `-flag` as well as `--flag`; rewrite single-dash long
/// flags so clap sees `--flag`. Short flags (`-h`) and values are left alone.
pub fn normalize_go_flags(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let is_go_long = i > 0
                && a.starts_with('-')
                && !a.starts_with("--")
                && a.len() > 2
                && a.as_bytes()[1].is_ascii_alphabetic();
            if is_go_long { format!("-{a}") } else { a }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        f: EtcdFlags,
    }

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let argv = normalize_go_flags(
            std::iter::once("keel-store".to_string()).chain(args.iter().map(|s| s.to_string())),
        );
        let t = T::try_parse_from(argv).map_err(|e| e.to_string())?;
        t.f.validate(Vec::new()).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_etcd() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(
            s.listen_client,
            vec![Listen {
                addr: "127.0.0.1:2379".parse().unwrap(),
                https: false
            }]
        );
        assert_eq!(s.snapshot_count, 100_000);
        assert_eq!(s.max_request_bytes, 1_572_864);
    }

    #[test]
    fn go_style_flags() {
        let s = parse(&[
            "-name",
            "n1",
            "-data-dir=/tmp/x",
            "--listen-client-urls",
            "http://127.0.0.1:1234",
        ])
        .unwrap();
        assert_eq!(s.name, "n1");
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(
            s.listen_client,
            vec![Listen {
                addr: "127.0.0.1:1234".parse().unwrap(),
                https: false
            }]
        );
    }

    #[test]
    fn clear_errors() {
        assert!(
            parse(&["--no-such-flag"])
                .unwrap_err()
                .contains("--no-such-flag")
        );
        assert!(
            parse(&["--auto-tls"])
                .unwrap_err()
                .contains("does not support yet")
        );
        assert!(
            parse(&["--cert-file", "x"])
                .unwrap_err()
                .contains("--key-file")
        );
        let https = parse(&["--listen-client-urls", "https://127.0.0.1:1"]).unwrap_err();
        assert!(https.contains("--cert-file"), "{https}");
        let tls =
            parse(&["--cert-file", "c", "--key-file", "k", "--client-cert-auth"]).unwrap_err();
        assert!(tls.contains("--trusted-ca-file"), "{tls}");
        assert!(
            parse(&["--snapshot-count", "abc"])
                .unwrap_err()
                .contains("snapshot-count")
        );
        assert!(
            parse(&["--listen-client-urls", "http://example.com:1"])
                .unwrap_err()
                .contains("IP address")
        );
        let two = "a=http://localhost:2380,b=http://localhost:2381";
        let bootstrap = |args: &[&str]| parse(args)?.verify_bootstrap().map_err(|e| e.to_string());
        assert!(
            bootstrap(&["--initial-cluster", two])
                .unwrap_err()
                .contains("does not name this member \"default\"")
        );
        let moved = ["--name", "b", "--initial-cluster", two];
        assert!(
            bootstrap(&moved)
                .unwrap_err()
                .contains("differ from --initial-advertise-peer-urls")
        );
        // Joining a running cluster (or restarting with data) does not compare them.
        let join = [&moved[..], &["--initial-cluster-state", "existing"]].concat();
        assert_eq!(bootstrap(&join), Ok(()));
        assert!(parse(&moved).is_ok());
        let both = parse(&["--discovery-srv", "example.com", "--initial-cluster", two]);
        assert!(
            both.unwrap_err()
                .contains("--discovery-srv: multiple discovery or bootstrap flags"),
        );
        assert!(
            parse(&["--discovery-srv", "http://example.com"])
                .unwrap_err()
                .contains("is not a DNS domain")
        );
        assert!(
            parse(&["--discovery-srv-name", "prod"])
                .unwrap_err()
                .contains("needs --discovery-srv")
        );
        let e = T::try_parse_from(["x"])
            .unwrap()
            .f
            .validate(vec![("ETCD_BOGUS".to_string(), "1".to_string())]);
        assert!(e.unwrap_err().to_string().contains("ETCD_BOGUS"));
    }
}
