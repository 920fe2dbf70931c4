//! `keel-store bench`: a closed-loop load generator for any etcd endpoint,
//! speaking either the v2 keys API over HTTP/1.1 (`--api v2`, the default:
//! Keel's store or `etcd --enable-v2`) or the v3 gRPC API (`--api v3`), so
//! Keel's store and etcd can be measured with the same client.
//!
//! What it measures, per workload:
//!
//! * `put`   - writes of `--value-size`-byte values to keys
//!   `<prefix>/k%08d` from `--clients` concurrent clients, each with exactly
//!   one request in flight (closed loop), so throughput = clients / latency.
//!   v2: `PUT /v2/keys/<prefix>/k%08d`, each client on its own keep-alive
//!   HTTP/1.1 connection. v3: `KV.Put`, the clients sharing `--conns` HTTP/2
//!   connections round-robin (like etcd's `benchmark` tool).
//! * `get` (alias `range`) - reads of keys that exist (the key space is
//!   bulk-loaded first unless `--no-preload`): v2 `GET`, v3 linearizable
//!   `KV.Range` of one key.
//! * `txn`   - (v3) compare-and-swap: `Txn(mod_revision(key) == last seen ?
//!   put : range)`. Each client owns a disjoint slice of the key space, so
//!   every compare must succeed; a failed one is an error.
//! * `watch` - watch fan-out with one closed-loop writer. v2: `--watchers`
//!   long-polls (`?wait=true&waitIndex=N`) on one key, one connection each,
//!   re-arming after every event. v3: `--watchers` watchers spread over
//!   `--streams` watch streams on `--conns` connections, on one key or (with
//!   `--watch-prefix`) on a prefix the writer writes random keys under.
//!   Reports delivered events/s and delivery latency (writer's put
//!   acknowledged -> watcher has the event; 0 if the watcher got it first),
//!   and verifies that every watcher saw every revision the writer produced
//!   (v3: exactly once and in order).
//! * `keepalive` - (v3) `--leases` leases are granted, then each client keeps
//!   them alive over its own `LeaseKeepAlive` stream, one keep-alive in
//!   flight; reports keep-alives/s.
//! * `load`  - bulk load of `--key-space` distinct keys (starting at
//!   `--key-start`), reporting the rate; used to fill a server to 1M / 2M
//!   keys before reading its memory with `--pid`.
//!
//! Every run reports total ops, errors, ops/s and p50/p90/p99/max latency
//! (from a fixed-bucket log-linear histogram with ~1.6% resolution). With
//! `--pid` it also reports the server's `VmRSS`/`VmHWM` after the run and the
//! server CPU time (utime+stime) spent per op during the timed phase.
//! Note that the generator runs on the same machine as the server, so on a
//! small box both compete for CPU; compare servers under identical settings.
//!
//! Layout: [`closed_loop`] drives N workers with one request in flight each
//! (shared by v2 [`kv`] and [`v3`]); [`watch`] is the v2 fan-out, [`v3`] holds
//! the gRPC workloads; [`hist`], [`procstat`] and [`report`] measure and
//! print.

mod client;
mod closed_loop;
mod hist;
mod kv;
mod procstat;
mod report;
mod rng;
mod v3;
mod watch;

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;

use self::client::Endpoint;
use self::closed_loop::{Bounds, KeySpace};
use self::report::Report;

/// Which API to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// etcd v2 keys API over HTTP/1.1.
    V2,
    /// etcd v3 gRPC API over HTTP/2.
    V3,
}

/// Which workload to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Closed-loop writes of `--value-size`-byte values.
    Put,
    /// Closed-loop reads of existing keys (preloaded unless `--no-preload`);
    /// v3: linearizable ranges.
    #[value(alias = "range")]
    Get,
    /// v3 only: compare-and-swap txns (compare mod revision, then put).
    Txn,
    /// Watch fan-out: `--watchers` watchers on one key, one writer.
    Watch,
    /// v3 only: lease keep-alives over `--clients` keep-alive streams.
    #[value(alias = "keep-alive")]
    Keepalive,
    /// Bulk load of `--key-space` distinct keys; reports the rate.
    Load,
}

impl Workload {
    fn name(self, api: Api) -> &'static str {
        match (self, api) {
            (Self::Put, _) => "put",
            (Self::Get, Api::V2) => "get",
            (Self::Get, Api::V3) => "range",
            (Self::Txn, _) => "txn",
            (Self::Watch, _) => "watch",
            (Self::Keepalive, _) => "keepalive",
            (Self::Load, _) => "load",
        }
    }
}

/// How request keys are chosen from the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyOrder {
    /// Uniformly random key per request.
    Random,
    /// k0, k1, k2, ... wrapping around at `--key-space`.
    Sequential,
}

/// Report format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable report.
    Text,
    /// One flat JSON object per run on a single line (for scripts).
    Json,
}

/// Options for `keel-store bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// etcd endpoint to drive (http only): the client URL, for v2 and v3
    /// alike.
    #[arg(
        long,
        env = "KEEL_BENCH_ENDPOINT",
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoint: String,

    /// API to drive: the v2 keys API over HTTP/1.1 or the v3 gRPC API.
    #[arg(long, value_enum, default_value_t = Api::V2)]
    pub api: Api,

    /// Workload to run (`txn` and `keepalive` need `--api v3`).
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    pub workload: Workload,

    /// Concurrent clients, each with one request in flight. v2: each on its
    /// own keep-alive connection; v3: sharing `--conns` connections
    /// (`keepalive`: one keep-alive stream each). Ignored by `watch`, which
    /// has one writer.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,

    /// v3 only: HTTP/2 connections the clients (or watch streams) share,
    /// round-robin [default: 1, like etcd's benchmark tool].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub conns: Option<u32>,

    /// Stop after this many requests (for `watch`: writer puts). Without
    /// `--total` and `--duration`, put/get/txn/keepalive run for 10s and
    /// watch does 1000 puts. Ignored by `load`, which writes exactly
    /// `--key-space` keys.
    #[arg(long)]
    pub total: Option<u64>,

    /// Stop after this long, e.g. `30s`, `500ms`, `2m` (bare number =
    /// seconds). Combined with `--total`, whichever comes first.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Size in bytes of each written value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,

    /// Number of distinct keys used (and written by `load` / the get
    /// preload).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub key_space: u64,

    /// First key number: keys are k<key-start> .. k<key-start + key-space - 1>
    /// (lets `load` extend an already loaded range).
    #[arg(long, default_value_t = 0)]
    pub key_start: u64,

    /// Key selection order for put/get/txn.
    #[arg(long, value_enum, default_value_t = KeyOrder::Random)]
    pub key_order: KeyOrder,

    /// Where all benchmark keys live: a directory under /v2/keys (v2) or a
    /// key prefix (v3; keys are `<prefix>/k%08d`).
    #[arg(long, default_value = "keel-bench")]
    pub prefix: String,

    /// For `get`: assume the keys already exist instead of loading them
    /// (the preload uses max(--clients, 16) clients).
    #[arg(long)]
    pub no_preload: bool,

    /// For `watch`: number of concurrent watchers (v2: one connection each).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub watchers: u32,

    /// For v3 `watch`: watch streams the watchers are spread over (at most
    /// one per watcher) [default: 10].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub streams: Option<u32>,

    /// For v3 `watch`: watch the prefix `<prefix>/watch/` (the writer puts
    /// random keys from the key space under it) instead of the single key
    /// `<prefix>/watch`.
    #[arg(long)]
    pub watch_prefix: bool,

    /// For `watch`: how long watchers may keep catching up after the writer
    /// finished before undelivered events are counted as missed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub watch_grace: Duration,

    /// For `keepalive`: leases to grant and keep alive, spread over the
    /// clients (at least one each) [default: 1000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub leases: Option<u64>,

    /// For `keepalive`: TTL the leases are granted with [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    pub lease_ttl: Option<Duration>,

    /// Server process id: report its VmRSS/VmHWM after the run and its CPU
    /// time per op (Linux /proc).
    #[arg(long)]
    pub pid: Option<u32>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

impl BenchArgs {
    /// Rejects options that do not apply to the chosen API.
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.prefix.is_empty() && !self.prefix.contains(['?', '#', ' ']),
            "--prefix must be a non-empty URL path segment"
        );
        if self.api == Api::V2 {
            let v3_only = [
                (matches!(self.workload, Workload::Txn), "--workload txn"),
                (
                    matches!(self.workload, Workload::Keepalive),
                    "--workload keepalive",
                ),
                (self.conns.is_some(), "--conns"),
                (self.streams.is_some(), "--streams"),
                (self.watch_prefix, "--watch-prefix"),
                (self.leases.is_some(), "--leases"),
                (self.lease_ttl.is_some(), "--lease-ttl"),
            ];
            if let Some((_, what)) = v3_only.iter().find(|(set, _)| *set) {
                anyhow::bail!("{what} needs --api v3");
            }
        }
        Ok(())
    }
}

/// Parses `250ms`, `10s`, `1.5m`, `1h`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (try 10s, 500ms, 2m)"))?;
    Duration::try_from_secs_f64(v * scale).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// `size` random alphanumeric bytes (the same for every run): v3 values, and
/// v2 form bodies need no URL encoding for them.
fn payload(size: usize) -> Bytes {
    let mut rng = rng::Rng::with_seed(0x6b65656c);
    Bytes::from((0..size).map(|_| rng.alphanumeric()).collect::<String>())
}

/// The v2 form body `value=<size bytes>`.
fn form_value(size: usize) -> Bytes {
    let mut body = Vec::with_capacity(size + 6);
    body.extend_from_slice(b"value=");
    body.extend_from_slice(&payload(size));
    Bytes::from(body)
}

/// Default bound when neither `--total` nor `--duration` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
const DEFAULT_WATCH_PUTS: u64 = 1000;
/// Minimum concurrency of the `get` preload.
const PRELOAD_CLIENTS: usize = 16;
/// v3 connections when `--conns` is not given (etcd's benchmark default).
const DEFAULT_CONNS: u32 = 1;
/// v3 watch streams when `--streams` is not given.
const DEFAULT_WATCH_STREAMS: u32 = 10;
/// Leases kept alive when `--leases` is not given.
const DEFAULT_LEASES: u64 = 1000;
/// Lease TTL when `--lease-ttl` is not given: long enough that no lease
/// expires during a run even if keep-alives stall.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);

/// Runs the benchmark described by `args` and prints its report to stdout.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let endpoint = Endpoint::parse(&args.endpoint)?;
    let (mut report, before) = match args.api {
        Api::V2 => run_v2(&args, &endpoint).await?,
        Api::V3 => run_v3(&args, &endpoint).await?,
    };
    if let (Some(pid), Some(before)) = (args.pid, before) {
        let after = procstat::sample(pid).with_context(|| format!("sampling server pid {pid}"))?;
        report.set_server(before, after);
    }
    report.print(args.format)?;
    anyhow::ensure!(report.succeeded() > 0, "no request succeeded");
    Ok(())
}

/// The timed phase's limits for put/get/txn/keepalive.
fn timed_bounds(args: &BenchArgs) -> Bounds {
    let (total, duration) = match (args.total, args.duration) {
        (None, None) => (None, Some(DEFAULT_DURATION)),
        bounds => bounds,
    };
    Bounds {
        total,
        duration,
        progress: false,
    }
}

/// Writer puts for `watch`.
fn watch_total(args: &BenchArgs) -> Option<u64> {
    match (args.total, args.duration) {
        (None, None) => Some(DEFAULT_WATCH_PUTS),
        (t, _) => t,
    }
}

fn key_space(args: &BenchArgs) -> KeySpace {
    KeySpace {
        prefix: args.prefix.trim_matches('/').to_owned(),
        start: args.key_start,
        len: args.key_space,
        order: args.key_order,
    }
}

fn report_preload(out: &closed_loop::Outcome) -> anyhow::Result<()> {
    eprintln!(
        "preloaded {} keys in {:.1}s ({} errors)",
        out.ok,
        out.elapsed.as_secs_f64(),
        out.errors
    );
    anyhow::ensure!(out.errors == 0, "preload failed: {}", out.error_summary());
    Ok(())
}

type Started = (Report, Option<procstat::ProcSample>);

async fn run_v2(args: &BenchArgs, endpoint: &Endpoint) -> anyhow::Result<Started> {
    let value = form_value(args.value_size);
    let keys = key_space(args);
    let clients = args.clients as usize;
    let name = args.workload.name(Api::V2);
    match args.workload {
        Workload::Put | Workload::Get | Workload::Load => {
            if args.workload == Workload::Get && !args.no_preload {
                // Load with at least PRELOAD_CLIENTS connections, even for
                // a 1-client read benchmark.
                let plan =
                    kv::Plan::load(clients.max(PRELOAD_CLIENTS), keys.clone(), value.clone());
                report_preload(&kv::run(endpoint, &plan).await?)?;
            }
            let plan = match args.workload {
                Workload::Load => {
                    let mut plan = kv::Plan::load(clients, keys, value);
                    plan.bounds.duration = args.duration;
                    plan
                }
                w => kv::Plan {
                    op: if w == Workload::Put {
                        kv::Op::Put(value)
                    } else {
                        kv::Op::Get
                    },
                    clients,
                    keys,
                    bounds: timed_bounds(args),
                },
            };
            let before = sample_pid(args.pid)?;
            let out = kv::run(endpoint, &plan).await?;
            Ok((Report::from_kv(name, args, &out), before))
        }
        Workload::Watch => {
            let plan = watch::Plan {
                key_path: format!("/v2/keys/{}/watch", keys.prefix),
                value,
                watchers: args.watchers as usize,
                total: watch_total(args),
                duration: args.duration,
                grace: args.watch_grace,
            };
            let before = sample_pid(args.pid)?;
            let out = watch::run(endpoint, &plan).await?;
            Ok((Report::from_watch(args, &out), before))
        }
        Workload::Txn | Workload::Keepalive => {
            anyhow::bail!("--workload {name} needs --api v3")
        }
    }
}

async fn run_v3(args: &BenchArgs, endpoint: &Endpoint) -> anyhow::Result<Started> {
    let value = payload(args.value_size);
    let keys = key_space(args);
    let clients = args.clients as usize;
    let conns = args.conns.unwrap_or(DEFAULT_CONNS) as usize;
    let channels = v3::connect(endpoint, conns).await?;
    let name = args.workload.name(Api::V3);
    let (report, before) = match args.workload {
        Workload::Put | Workload::Get | Workload::Txn | Workload::Load => {
            if args.workload == Workload::Get && !args.no_preload {
                let plan =
                    v3::kv::Plan::load(clients.max(PRELOAD_CLIENTS), keys.clone(), value.clone());
                report_preload(&v3::kv::run(&channels, &plan).await?)?;
            }
            let plan = match args.workload {
                Workload::Load => {
                    let mut plan = v3::kv::Plan::load(clients, keys, value);
                    plan.bounds.duration = args.duration;
                    plan
                }
                w => v3::kv::Plan {
                    op: match w {
                        Workload::Put => v3::kv::Op::Put(value),
                        Workload::Txn => v3::kv::Op::Txn(value),
                        _ => v3::kv::Op::Range,
                    },
                    clients,
                    keys,
                    bounds: timed_bounds(args),
                },
            };
            let before = sample_pid(args.pid)?;
            let out = v3::kv::run(&channels, &plan).await?;
            (Report::from_kv(name, args, &out), before)
        }
        Workload::Keepalive => {
            let plan = v3::lease::Plan {
                clients,
                leases: args.leases.unwrap_or(DEFAULT_LEASES),
                ttl: args.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL),
                bounds: timed_bounds(args),
            };
            let before = sample_pid(args.pid)?;
            let out = v3::lease::run(&channels, &plan).await?;
            let mut report = Report::from_kv(name, args, &out);
            report.set_leases(plan.leases.max(plan.clients as u64));
            (report, before)
        }
        Workload::Watch => {
            let target = if args.watch_prefix {
                v3::watch::Target::Prefix(KeySpace {
                    prefix: format!("{}/watch", keys.prefix),
                    ..keys
                })
            } else {
                v3::watch::Target::Key(Bytes::from(format!("{}/watch", keys.prefix)))
            };
            let streams = args.streams.unwrap_or(DEFAULT_WATCH_STREAMS) as usize;
            let plan = v3::watch::Plan {
                target,
                value,
                watchers: args.watchers as usize,
                streams: streams.min(args.watchers as usize),
                total: watch_total(args),
                duration: args.duration,
                grace: args.watch_grace,
            };
            // The writer gets its own connection so the fan-out traffic
            // cannot hold back its puts.
            let writer = v3::connect(endpoint, 1).await?.remove(0);
            let before = sample_pid(args.pid)?;
            let out = v3::watch::run(writer, &channels, &plan).await?;
            let mut report = Report::from_watch(args, &out);
            report.set_streams(plan.streams as u64);
            (report, before)
        }
    };
    let mut report = report;
    report.set_conns(conns as u64);
    Ok((report, before))
}

fn sample_pid(pid: Option<u32>) -> anyhow::Result<Option<procstat::ProcSample>> {
    pid.map(|p| procstat::sample(p).with_context(|| format!("sampling server pid {p}")))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn v3_only_options_need_v3() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let parse = |argv: &[&str]| {
            Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
                .map(|c| c.bench)
        };
        let ok = parse(&["--api", "v3", "--workload", "range", "--conns", "4"]).expect("parses");
        assert_eq!(ok.workload, Workload::Get);
        assert!(ok.validate().is_ok());
        for argv in [
            &["--workload", "txn"][..],
            &["--workload", "keep-alive"],
            &["--conns", "2"],
            &["--workload", "watch", "--watch-prefix"],
        ] {
            let args = parse(argv).expect("parses");
            assert!(args.validate().is_err(), "{argv:?} accepted for v2");
        }
        assert!(parse(&["--api", "v4"]).is_err());
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn form_value_has_requested_size() {
        let b = form_value(256);
        assert_eq!(b.len(), 256 + "value=".len());
        assert!(b[6..].iter().all(u8::is_ascii_alphanumeric));
    }
}
