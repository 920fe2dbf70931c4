//! `keel-store bench`: a closed-loop load generator for any etcd v2 keys API
//! endpoint (Keel's store or `etcd --enable-v2`), so both can be measured with
//! the same client.
//!
//! What it measures, per workload:
//!
//! * `put`   - `PUT /v2/keys/<prefix>/k%08d` with a form body `value=<N bytes>`
//!   from `--clients` concurrent clients; each client owns one keep-alive
//!   HTTP/1.1 connection and has exactly one request in flight (closed
//!   loop), so throughput = clients / latency.
//! * `get`   - `GET` of keys that exist (the key space is bulk-loaded first
//!   unless `--no-preload`).
//! * `watch` - watch fan-out: `--watchers` long-polls
//!   (`?wait=true&waitIndex=N`) on one key, each re-arming with the next
//!   index after every event, while one writer performs `--total` puts on
//!   that key. Reports delivered events/s, delivery latency (writer's put
//!   acknowledged -> watcher has the event; 0 if the watcher got it first),
//!   and verifies that every watcher saw every index the writer produced.
//! * `load`  - bulk load of `--key-space` distinct keys (starting at
//!   `--key-start`), reporting the rate; used to fill a server to 100k / 1M
//!   keys before reading its memory with `--pid`.
//!
//! Every run reports total ops, errors, ops/s and p50/p90/p99/max latency
//! (from a fixed-bucket log-linear histogram with ~1.6% resolution). With
//! `--pid` it also reports the server's `VmRSS`/`VmHWM` after the run and the
//! server CPU time (utime+stime) spent per op during the timed phase.
//! Note that the generator runs on the same machine as the server, so on a
//! small box both compete for CPU; compare servers under identical settings.

mod client;
mod hist;
mod kv;
mod procstat;
mod report;
mod rng;
mod watch;

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;

use self::client::Endpoint;
use self::report::Report;

/// Which workload to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Closed-loop PUTs of `--value-size`-byte values.
    Put,
    /// Closed-loop GETs of existing keys (preloaded unless `--no-preload`).
    Get,
    /// Watch fan-out: `--watchers` long-polls on one key, one writer.
    Watch,
    /// Bulk load of `--key-space` distinct keys; reports the rate.
    Load,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Get => "get",
            Self::Watch => "watch",
            Self::Load => "load",
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
    /// etcd v2 endpoint to drive (http only).
    #[arg(
        long,
        env = "KEEL_BENCH_ENDPOINT",
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoint: String,

    /// Workload to run.
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    pub workload: Workload,

    /// Concurrent clients, each with its own keep-alive connection and one
    /// request in flight (for `watch`: ignored, there is one writer).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,

    /// Stop after this many requests (for `watch`: writer puts). Without
    /// `--total` and `--duration`, put/get run for 10s and watch does 1000
    /// puts. Ignored by `load`, which writes exactly `--key-space` keys.
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

    /// Key selection order for put/get.
    #[arg(long, value_enum, default_value_t = KeyOrder::Random)]
    pub key_order: KeyOrder,

    /// Directory under /v2/keys that all benchmark keys live in.
    #[arg(long, default_value = "keel-bench")]
    pub prefix: String,

    /// For `get`: assume the keys already exist instead of loading them
    /// (the preload uses max(--clients, 16) connections).
    #[arg(long)]
    pub no_preload: bool,

    /// For `watch`: number of concurrent watchers (one connection each).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub watchers: u32,

    /// For `watch`: how long watchers may keep catching up after the writer
    /// finished before undelivered events are counted as missed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub watch_grace: Duration,

    /// Server process id: report its VmRSS/VmHWM after the run and its CPU
    /// time per op (Linux /proc).
    #[arg(long)]
    pub pid: Option<u32>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
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

/// The form body `value=<size bytes>`; the value is alphanumeric so it needs
/// no URL encoding and is the same size on the server.
fn form_value(size: usize) -> Bytes {
    let mut rng = rng::Rng::with_seed(0x6b65656c);
    let mut body = String::with_capacity(size + 6);
    body.push_str("value=");
    body.extend((0..size).map(|_| rng.alphanumeric()));
    Bytes::from(body)
}

/// Default bound when neither `--total` nor `--duration` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
const DEFAULT_WATCH_PUTS: u64 = 1000;
/// Minimum concurrency of the `get` preload.
const PRELOAD_CLIENTS: usize = 16;

/// Runs the benchmark described by `args` and prints its report to stdout.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let endpoint = Endpoint::parse(&args.endpoint)?;
    anyhow::ensure!(
        !args.prefix.is_empty() && !args.prefix.contains(['?', '#', ' ']),
        "--prefix must be a non-empty URL path segment"
    );
    let prefix = args.prefix.trim_matches('/').to_owned();
    let value = form_value(args.value_size);
    let keys = kv::KeySpace {
        prefix: prefix.clone(),
        start: args.key_start,
        len: args.key_space,
        order: args.key_order,
    };
    let clients = args.clients as usize;

    let (mut report, before) = match args.workload {
        Workload::Put | Workload::Get => {
            if args.workload == Workload::Get && !args.no_preload {
                // Load with at least PRELOAD_CLIENTS connections, even for
                // a 1-client read benchmark.
                let plan =
                    kv::Plan::load(clients.max(PRELOAD_CLIENTS), keys.clone(), value.clone());
                let pre = kv::run(&endpoint, &plan).await?;
                eprintln!(
                    "preloaded {} keys in {:.1}s ({} errors)",
                    pre.ok,
                    pre.elapsed.as_secs_f64(),
                    pre.errors
                );
                anyhow::ensure!(pre.errors == 0, "preload failed: {}", pre.error_summary());
            }
            let (total, duration) = match (args.total, args.duration) {
                (None, None) => (None, Some(DEFAULT_DURATION)),
                bounds => bounds,
            };
            let plan = kv::Plan {
                op: if args.workload == Workload::Put {
                    kv::Op::Put(value)
                } else {
                    kv::Op::Get
                },
                clients,
                total,
                duration,
                keys,
                progress: false,
            };
            let before = sample_pid(args.pid)?;
            let out = kv::run(&endpoint, &plan).await?;
            (Report::from_kv(args.workload.name(), &args, &out), before)
        }
        Workload::Load => {
            let plan = kv::Plan {
                duration: args.duration,
                ..kv::Plan::load(clients, keys, value)
            };
            let before = sample_pid(args.pid)?;
            let out = kv::run(&endpoint, &plan).await?;
            (Report::from_kv("load", &args, &out), before)
        }
        Workload::Watch => {
            let total = match (args.total, args.duration) {
                (None, None) => Some(DEFAULT_WATCH_PUTS),
                (t, _) => t,
            };
            let plan = watch::Plan {
                key_path: format!("/v2/keys/{prefix}/watch"),
                value,
                watchers: args.watchers as usize,
                total,
                duration: args.duration,
                grace: args.watch_grace,
            };
            let before = sample_pid(args.pid)?;
            let out = watch::run(&endpoint, &plan).await?;
            (Report::from_watch(&args, &out), before)
        }
    };
    if let (Some(pid), Some(before)) = (args.pid, before) {
        let after = procstat::sample(pid).with_context(|| format!("sampling server pid {pid}"))?;
        report.set_server(before, after);
    }
    report.print(args.format)?;
    anyhow::ensure!(report.succeeded() > 0, "no request succeeded");
    Ok(())
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
    fn form_value_has_requested_size() {
        let b = form_value(256);
        assert_eq!(b.len(), 256 + "value=".len());
        assert!(b[6..].iter().all(u8::is_ascii_alphanumeric));
    }
}
