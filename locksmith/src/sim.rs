//! A simulated fleet: each host is a directory (machine id, boot id, os-release, the
//! reboot-needed sentinel) and a real `keel-locksmith daemon` process run with
//! `--reboot-method exit`. A supervisor per host "reboots" it when the daemon exits with
//! status 75: `/run` is wiped, a new boot id is written, the OS version becomes the
//! target (or stays old for a host whose update fails), and after the reboot time the
//! daemon starts again. A watcher records every version of the semaphore.
//!
//! Used by `keel-locksmith bench` and by the multi-process tests.

use crate::keys::GroupKeys;
use crate::semaphore::Semaphore;
use crate::store::{Group, StoreOptions};
use anyhow::{Context, bail};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The version simulated hosts start with and the one their update installs.
pub const FROM_VERSION: &str = "1.0.0";
pub const TARGET_VERSION: &str = "1.1.0";

/// One simulated host's files.
#[derive(Debug, Clone)]
pub struct SimHost {
    pub index: usize,
    pub root: PathBuf,
    pub id: String,
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(path.parent().expect("absolute"))?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

impl SimHost {
    /// Creates host `index` under `base` running [`FROM_VERSION`], needing a reboot into
    /// [`TARGET_VERSION`].
    pub fn create(base: &Path, index: usize) -> anyhow::Result<SimHost> {
        let root = base.join(format!("host-{index:03}"));
        let id = random_hex(16);
        write(&root.join("etc/machine-id"), &format!("{id}\n"))?;
        write(&root.join("etc/hostname"), &format!("sim-{index:03}\n"))?;
        let host = SimHost { index, root, id };
        host.new_boot(FROM_VERSION)?;
        host.need_reboot(TARGET_VERSION)?;
        Ok(host)
    }

    /// A fresh boot: new boot id, empty `/run`, `version` in os-release.
    pub fn new_boot(&self, version: &str) -> anyhow::Result<()> {
        let _ = std::fs::remove_dir_all(self.root.join("run"));
        std::fs::create_dir_all(self.root.join("run"))?;
        write(
            &self.root.join("proc/sys/kernel/random/boot_id"),
            &format!("{}\n", random_hex(16)),
        )?;
        write(
            &self.root.join("usr/lib/os-release"),
            &format!("ID=keel\nNAME=Keel\nVERSION={version}\n"),
        )
    }

    /// Creates the reboot-needed sentinel.
    pub fn need_reboot(&self, target: &str) -> anyhow::Result<()> {
        write(
            &self.root.join(crate::host::REBOOT_SENTINEL),
            &format!(
                "*** System restart required ***\nVERSION={target}\nREASON=update to {target}\n"
            ),
        )
    }

    /// Starts the daemon for this host.
    pub fn spawn(
        &self,
        binary: &Path,
        endpoint: &str,
        group: &str,
        extra: &[String],
    ) -> anyhow::Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("daemon.log"))?;
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(["daemon", "--root"])
            .arg(&self.root)
            .args([
                "--reboot-method",
                "exit",
                "--no-dbus",
                "--strategy",
                "etcd-lock",
            ])
            .args(["--endpoint", endpoint, "--group", group])
            .args([
                "--retry-interval",
                "200ms",
                "--retry-max",
                "2s",
                "--health-timeout",
                "5s",
            ])
            .args(["--login-delay", "0s"])
            .args(extra)
            .env_remove("REBOOT_STRATEGY")
            .env("KEEL_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        cmd.spawn()
            .with_context(|| format!("cannot start {}", binary.display()))
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("daemon.log")).unwrap_or_default()
    }
}

/// One observed version of the semaphore.
#[derive(Debug, Clone)]
pub struct Observation {
    pub at: Instant,
    pub revision: i64,
    pub holders: Vec<String>,
    pub max: i64,
}

/// Records every version of a group's semaphore from `from_revision` on.
pub async fn watch_semaphore(
    client: etcd_client::Client,
    group: &str,
    from_revision: i64,
) -> anyhow::Result<Arc<Mutex<Vec<Observation>>>> {
    let key = GroupKeys::new(group).semaphore();
    let mut stream = client
        .clone()
        .watch(
            key.clone(),
            Some(etcd_client::WatchOptions::new().with_start_revision(from_revision)),
        )
        .await?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                if kv.value().is_empty() {
                    continue;
                }
                match Semaphore::parse(&key, kv.value()) {
                    Ok(s) => out.lock().expect("not poisoned").push(Observation {
                        at: Instant::now(),
                        revision: kv.mod_revision(),
                        holders: s.holders().to_vec(),
                        max: s.max,
                    }),
                    Err(e) => tracing::error!(error = %e, "semaphore value unreadable"),
                }
            }
        }
    });
    Ok(seen)
}

/// A rollout to simulate.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub binary: PathBuf,
    pub endpoint: String,
    pub group: String,
    pub hosts: usize,
    pub max: i64,
    pub reboot_time: Duration,
    /// Hosts whose update fails: they come back on the old version.
    pub failing: BTreeSet<usize>,
    pub lease_ttl: i64,
    pub max_failures: u32,
    pub timeout: Duration,
    pub extra_args: Vec<String>,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct FleetReport {
    pub elapsed: Duration,
    pub reboots: Vec<usize>,
    pub observations: Vec<Observation>,
    /// Most holders at any revision.
    pub peak_holders: usize,
    /// From a slot being freed to the next grant, for grants that had to wait.
    pub grant_latencies: Vec<Duration>,
    pub ids: Vec<String>,
}

impl FleetReport {
    /// Ids that appear as holders at least once.
    pub fn ever_held(&self) -> BTreeSet<String> {
        self.observations
            .iter()
            .flat_map(|o| o.holders.iter().cloned())
            .collect()
    }
}

/// Grant latencies from the observed versions: for each grant while the semaphore was full
/// just before the preceding release, the time since that release.
pub fn grant_latencies(obs: &[Observation]) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut last_release: Option<(Instant, bool)> = None;
    for w in obs.windows(2) {
        let (prev, cur) = (&w[0], &w[1]);
        let before: BTreeSet<&String> = prev.holders.iter().collect();
        let after: BTreeSet<&String> = cur.holders.iter().collect();
        if after.len() < before.len() {
            last_release = Some((cur.at, before.len() as i64 >= prev.max));
        } else if after.len() > before.len()
            && let Some((at, true)) = last_release.take()
        {
            out.push(cur.at.duration_since(at));
        }
    }
    out
}

/// Runs the rollout: every host needs one reboot; done when all rebooted and no slot is held.
pub async fn run_fleet(spec: &FleetSpec, base: &Path) -> anyhow::Result<FleetReport> {
    let client = crate::store::connect(&StoreOptions {
        endpoints: vec![spec.endpoint.clone()],
        ..StoreOptions::default()
    })
    .await?;
    let group = Group::new(client.clone(), &spec.group, "simulation");
    group.init().await?;
    group.set_max(spec.max, true).await?;
    group
        .update_policy(None, true, |p| {
            p.lease_ttl = spec.lease_ttl;
            p.max_failures = spec.max_failures;
            p.paused = false;
        })
        .await?;
    let start_rev = group.view().await?.revision + 1;
    let seen = watch_semaphore(client.clone(), &spec.group, start_rev).await?;
    let hosts: Vec<SimHost> = (0..spec.hosts)
        .map(|i| SimHost::create(base, i))
        .collect::<anyhow::Result<_>>()?;
    let reboots = Arc::new(Mutex::new(vec![0usize; spec.hosts]));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for host in hosts.clone() {
        let spec = spec.clone();
        let reboots = reboots.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let mut child =
                    host.spawn(&spec.binary, &spec.endpoint, &spec.group, &spec.extra_args)?;
                let status = child.wait().await?;
                if status.code() != Some(crate::daemon::REBOOT_EXIT_CODE as i32) {
                    bail!(
                        "host {} daemon exited with {status}:\n{}",
                        host.index,
                        host.log()
                    );
                }
                reboots.lock().expect("not poisoned")[host.index] += 1;
                tokio::time::sleep(spec.reboot_time).await;
                let version = if spec.failing.contains(&host.index) {
                    FROM_VERSION
                } else {
                    TARGET_VERSION
                };
                host.new_boot(version)?;
            }
        }));
    }
    let deadline = started + spec.timeout;
    let result = loop {
        if let Some(t) = tasks.iter().position(|t| t.is_finished()) {
            let t = tasks.remove(t);
            break Err(match t.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => anyhow::anyhow!("a host supervisor ended"),
                Err(e) => e.into(),
            });
        }
        let all_rebooted = reboots
            .lock()
            .expect("not poisoned")
            .iter()
            .all(|&n| n >= 1);
        if all_rebooted {
            let view = group.view().await?;
            let free = view
                .semaphore
                .as_ref()
                .is_some_and(|s| s.value.holders().is_empty());
            if free {
                break Ok(started.elapsed());
            }
        }
        if Instant::now() > deadline {
            let view = group.view().await?;
            break Err(anyhow::anyhow!(
                "rollout not finished after {:?}: reboots {:?}, semaphore {:?}, paused {}; log of host 0:\n{}",
                spec.timeout,
                reboots.lock().expect("not poisoned"),
                view.semaphore.map(|s| s.value),
                view.policy.value.paused,
                hosts[0].log()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Let late events arrive, then stop every daemon.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for t in &tasks {
        t.abort();
    }
    let elapsed = result?;
    let observations = seen.lock().expect("not poisoned").clone();
    let peak_holders = observations
        .iter()
        .map(|o| o.holders.len())
        .max()
        .unwrap_or(0);
    let reboots = reboots.lock().expect("not poisoned").clone();
    Ok(FleetReport {
        elapsed,
        reboots,
        grant_latencies: grant_latencies(&observations),
        observations,
        peak_holders,
        ids: hosts.iter().map(|h| h.id.clone()).collect(),
    })
}

/// `keel-locksmith bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Store endpoint (keel-store or etcd).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub store: String,
    /// Simulated hosts.
    #[arg(long, default_value_t = 100)]
    pub hosts: usize,
    /// Hosts allowed to reboot at once.
    #[arg(long, default_value_t = 5)]
    pub max: i64,
    /// Time a simulated reboot takes (Go duration).
    #[arg(long, default_value = "1s")]
    pub reboot_time: String,
    /// Give up after (Go duration).
    #[arg(long, default_value = "10m")]
    pub timeout: String,
}

/// Runs the simulation with this binary and prints the measurements.
pub async fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let reboot_time = crate::window::parse_go_duration(&args.reboot_time)
        .with_context(|| format!("--reboot-time {:?} is not a duration", args.reboot_time))?;
    let timeout = crate::window::parse_go_duration(&args.timeout)
        .with_context(|| format!("--timeout {:?} is not a duration", args.timeout))?;
    let dir = tempfile::tempdir()?;
    let spec = FleetSpec {
        binary: std::env::current_exe()?,
        endpoint: args.store.clone(),
        group: format!("bench-{}", random_hex(4)),
        hosts: args.hosts,
        max: args.max,
        reboot_time,
        failing: BTreeSet::new(),
        lease_ttl: 60,
        max_failures: 1,
        timeout,
        extra_args: Vec::new(),
    };
    let report = run_fleet(&spec, dir.path()).await?;
    let waves = (args.hosts as f64 / args.max as f64).ceil();
    let ideal = reboot_time.mul_f64(waves);
    let mut lat = report.grant_latencies.clone();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "hosts {} max {} reboot time {:?}",
        args.hosts, args.max, reboot_time
    );
    println!(
        "all rebooted in {:.2} s; ideal ceil({}/{}) x {:?} = {:.2} s; ratio {:.2}",
        report.elapsed.as_secs_f64(),
        args.hosts,
        args.max,
        reboot_time,
        ideal.as_secs_f64(),
        report.elapsed.as_secs_f64() / ideal.as_secs_f64()
    );
    println!(
        "peak holders {}; semaphore versions {}; reboots per host min {} max {}",
        report.peak_holders,
        report.observations.len(),
        report.reboots.iter().min().unwrap_or(&0),
        report.reboots.iter().max().unwrap_or(&0)
    );
    println!(
        "grant latency (slot freed -> next holder), {} grants: p50 {} p90 {} p99 {} max {}",
        lat.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    if report.peak_holders as i64 > args.max {
        bail!(
            "oversubscribed: {} holders at once with max {}",
            report.peak_holders,
            args.max
        );
    }
    Ok(())
}
