//! The command line: locksmithd's daemon and locksmithctl's commands in one binary.
//!
//! Flags are locksmith's (`--endpoint`, `--etcd-cafile`, `--etcd-certfile`,
//! `--etcd-keyfile`, `--etcd-username`, `--etcd-password`, `--group`); each can also come
//! from `LOCKSMITHD_<FLAG>` (daemon, FleetLock server) or `LOCKSMITHCTL_<FLAG>` (operator
//! commands), with `-` as `_`. Explicit flags win. Output of `status`, `set-max`, `lock`
//! and `unlock` starts like locksmithctl's.

use crate::config::{self, Inputs};
use crate::daemon::{DaemonConfig, Outcome, REBOOT_EXIT_CODE, RebootMethod};
use crate::records::{EventKind, HolderState, unix_now};
use crate::store::{Group, LockRequest, StoreOptions};
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Keel's reboot coordinator: locksmith-compatible reboot slots in the store, leases,
/// health-gated release, FleetLock.
#[derive(Debug, Parser)]
#[command(name = "keel-locksmith", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Store (etcd v3) endpoint; repeat or comma-separate [env: LOCKSMITHD_ENDPOINT /
    /// LOCKSMITHCTL_ENDPOINT] [default: http://127.0.0.1:2379,http://127.0.0.1:4001].
    /// With strategy fleet-lock: the FleetLock server's base URL.
    #[arg(long = "endpoint", global = true, value_delimiter = ',')]
    pub endpoint: Vec<String>,
    /// CA certificate to verify the store with (alone: server-verified TLS).
    #[arg(long, global = true)]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate for the store (with --etcd-keyfile).
    #[arg(long, global = true)]
    pub etcd_certfile: Option<PathBuf>,
    /// Client key for the store.
    #[arg(long, global = true)]
    pub etcd_keyfile: Option<PathBuf>,
    /// User for the store's authentication.
    #[arg(long, global = true)]
    pub etcd_username: Option<String>,
    /// Password for the store's authentication.
    #[arg(long, global = true)]
    pub etcd_password: Option<String>,
    /// Reboot group; each group has its own semaphore and max [default: the default group].
    #[arg(long, global = true)]
    pub group: Option<String>,
    /// Debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host agent (locksmithd): reboot when an update needs it, coordinated by the
    /// strategy; release the slot once the host is back and healthy.
    Daemon(DaemonArgs),
    /// Show the semaphore, holders (hostname, state, age, versions, lease), waiting and
    /// failed hosts, and recent grants and releases.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Audit entries to show.
        #[arg(long, default_value_t = 10)]
        history: i64,
    },
    /// Take a slot for this machine or ID (held until `unlock` unless --ttl).
    Lock {
        id: Option<String>,
        /// Why (shown by status).
        #[arg(long, default_value = "locked by an operator")]
        reason: String,
        /// Free the slot automatically after this many seconds.
        #[arg(long)]
        ttl: Option<i64>,
    },
    /// Release the slot of this machine or ID.
    Unlock { id: Option<String> },
    /// Set the number of hosts that may reboot at once.
    SetMax {
        #[arg(allow_negative_numbers = true)]
        max: i64,
        /// Allow a max below the current number of holders (no grants until they release).
        #[arg(long)]
        force: bool,
    },
    /// Stop granting slots in the group.
    Pause {
        #[arg(long, default_value = "paused by an operator")]
        reason: String,
    },
    /// Grant again, forgetting the failed hosts.
    Resume,
    /// Show or change the group's policy.
    Policy {
        /// Lease TTL behind daemon-held slots in seconds; 0 = no leases (locksmith's behaviour).
        #[arg(long)]
        lease_ttl: Option<i64>,
        /// Failed hosts that pause the group; 0 = never.
        #[arg(long)]
        max_failures: Option<u32>,
    },
    /// Print the audit trail (oldest first).
    History {
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Lock and reboot this machine now through logind (no window, no health gate).
    Reboot,
    /// Emit update_engine's "reboot needed" D-Bus signal (a test hook, as locksmithctl's).
    SendNeedReboot,
    /// Serve the FleetLock protocol from the store's semaphore.
    FleetlockServer {
        /// Address to listen on.
        #[arg(
            long,
            default_value = "127.0.0.1:3333",
            env = "LOCKSMITHD_FLEETLOCK_LISTEN"
        )]
        listen: String,
    },
    /// Simulate a fleet of hosts (separate daemon processes) rebooting through the store and
    /// report how close the rollout is to ideal.
    Bench(crate::sim::BenchArgs),
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// reboot, etcd-lock, best-effort, fleet-lock or off [env: REBOOT_STRATEGY; default: reboot].
    #[arg(long)]
    pub strategy: Option<String>,
    /// Reboot window start, "HH:MM" or "Day HH:MM" [env: LOCKSMITHD_REBOOT_WINDOW_START].
    #[arg(long)]
    pub window_start: Option<String>,
    /// Reboot window length, e.g. "1h30m" [env: LOCKSMITHD_REBOOT_WINDOW_LENGTH].
    #[arg(long)]
    pub window_length: Option<String>,
    /// Root of the host's files (machine id, boot id, os-release, update.conf, /run).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// How to reboot: logind, or exit with status 75 for a supervisor.
    #[arg(long, value_enum, default_value = "logind")]
    pub reboot_method: RebootMethodArg,
    /// Do not use the system D-Bus (only with --reboot-method exit).
    #[arg(long)]
    pub no_dbus: bool,
    /// First pause between lock attempts [env: LOCKSMITHD_RETRY_INTERVAL; default: 5s].
    #[arg(long)]
    pub retry_interval: Option<String>,
    /// Longest pause between lock attempts [env: LOCKSMITHD_RETRY_MAX; default: 5m].
    #[arg(long)]
    pub retry_max: Option<String>,
    /// Time a rebooted host has to prove it is healthy [env: LOCKSMITHD_HEALTH_TIMEOUT; default: 15m, longer than keel-updater's own gate].
    #[arg(long)]
    pub health_timeout: Option<String>,
    /// Command (sh -c) that must succeed before the slot is released [env: LOCKSMITHD_HEALTH_COMMAND].
    #[arg(long)]
    pub health_command: Option<String>,
    /// Wait after warning logged-in users [env: LOCKSMITHD_LOGIN_DELAY; default: 5m].
    #[arg(long)]
    pub login_delay: Option<String>,
    /// Holder id instead of /etc/machine-id [env: LOCKSMITHD_ID].
    #[arg(long)]
    pub id: Option<String>,
    /// FleetLock group (strategy fleet-lock) [env: LOCKSMITHD_FLEETLOCK_GROUP; default: default].
    #[arg(long)]
    pub fleetlock_group: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RebootMethodArg {
    Logind,
    Exit,
}

/// Default pauses between lock attempts (locksmith: 5 s doubling to 5 min).
pub const RETRY_MIN: Duration = Duration::from_secs(5);
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// Default time a rebooted host has to become healthy.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(900);
/// locksmith's wait after warning logged-in users.
pub const LOGIN_DELAY: Duration = Duration::from_secs(300);

fn store_options(g: &Global, inputs: &Inputs, prefix: &str) -> StoreOptions {
    let var = |name: &str| {
        inputs
            .get(&[format!("{prefix}_{name}").as_str()])
            .map(|s| s.value)
    };
    StoreOptions {
        endpoints: config::endpoints(&g.endpoint, inputs, prefix),
        ca_file: g
            .etcd_cafile
            .clone()
            .or_else(|| var("ETCD_CAFILE").map(PathBuf::from)),
        cert_file: g
            .etcd_certfile
            .clone()
            .or_else(|| var("ETCD_CERTFILE").map(PathBuf::from)),
        key_file: g
            .etcd_keyfile
            .clone()
            .or_else(|| var("ETCD_KEYFILE").map(PathBuf::from)),
        username: g.etcd_username.clone().or_else(|| var("ETCD_USERNAME")),
        password: g.etcd_password.clone().or_else(|| var("ETCD_PASSWORD")),
    }
    .with_empty_files_dropped()
}

impl StoreOptions {
    fn with_empty_files_dropped(mut self) -> StoreOptions {
        for f in [&mut self.ca_file, &mut self.cert_file, &mut self.key_file] {
            if f.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                *f = None;
            }
        }
        self
    }
}

fn group_name(g: &Global, inputs: &Inputs, prefix: &str) -> String {
    g.group
        .clone()
        .or_else(|| {
            inputs
                .get(&[format!("{prefix}_GROUP").as_str()])
                .map(|s| s.value)
        })
        .unwrap_or_default()
}

/// Resolves the daemon's settings from flags, environment and update.conf under the root.
pub fn daemon_config(
    g: &Global,
    a: &DaemonArgs,
    env: Vec<(String, String)>,
) -> anyhow::Result<DaemonConfig> {
    let inputs = Inputs::load(&a.root, env)?;
    let strategy = config::strategy(&inputs, a.strategy.as_deref())?;
    let window = config::window(
        &inputs,
        a.window_start.as_deref(),
        a.window_length.as_deref(),
    )?;
    let dur = |flag: &Option<String>, name: &'static str, var: &str, default| {
        config::duration(&inputs, flag.as_deref(), name, &[var], default)
    };
    let reboot_method = match a.reboot_method {
        RebootMethodArg::Logind => RebootMethod::Logind,
        RebootMethodArg::Exit => RebootMethod::Exit,
    };
    if a.no_dbus && reboot_method == RebootMethod::Logind {
        bail!("--no-dbus needs --reboot-method exit: rebooting goes through logind on D-Bus");
    }
    let pick = |flag: &Option<String>, name: &str| {
        inputs
            .pick(
                flag.as_deref(),
                name,
                &[format!("LOCKSMITHD_{}", name.to_uppercase().replace('-', "_")).as_str()],
            )
            .map(|s| s.value)
            .filter(|v| !v.is_empty())
    };
    Ok(DaemonConfig {
        strategy,
        store: store_options(g, &inputs, "LOCKSMITHD"),
        group: group_name(g, &inputs, "LOCKSMITHD"),
        window,
        root: a.root.clone(),
        reboot_method,
        dbus: !a.no_dbus,
        retry_min: dur(
            &a.retry_interval,
            "retry-interval",
            "LOCKSMITHD_RETRY_INTERVAL",
            RETRY_MIN,
        )?,
        retry_max: dur(&a.retry_max, "retry-max", "LOCKSMITHD_RETRY_MAX", RETRY_MAX)?,
        health_timeout: dur(
            &a.health_timeout,
            "health-timeout",
            "LOCKSMITHD_HEALTH_TIMEOUT",
            HEALTH_TIMEOUT,
        )?,
        health_command: pick(&a.health_command, "health-command"),
        login_delay: dur(
            &a.login_delay,
            "login-delay",
            "LOCKSMITHD_LOGIN_DELAY",
            LOGIN_DELAY,
        )?,
        fleetlock_group: pick(&a.fleetlock_group, "fleetlock-group")
            .unwrap_or_else(|| crate::fleetlock::DEFAULT_GROUP.to_string()),
        id: pick(&a.id, "id"),
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn own_machine_id() -> anyhow::Result<String> {
    crate::host::Host::new("/")
        .machine_id()
        .context("no holder id given and /etc/machine-id is unreadable")
}

fn operator() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "root".into());
    let host = crate::host::Host::new("/").hostname();
    format!("{user}@{host}")
}

async fn ctl_group(g: &Global, inputs: &Inputs) -> anyhow::Result<Group> {
    let opts = store_options(g, inputs, "LOCKSMITHCTL");
    let client = crate::store::connect(&opts).await?;
    Ok(Group::new(
        client,
        &group_name(g, inputs, "LOCKSMITHCTL"),
        &operator(),
    ))
}

/// Runs one command; returns the process exit code.
pub async fn run(cli: Cli, env: Vec<(String, String)>) -> anyhow::Result<u8> {
    let g = &cli.global;
    match &cli.command {
        Command::Daemon(a) => {
            let cfg = daemon_config(g, a, env).context("invalid configuration")?;
            let outcome = crate::daemon::run(cfg, shutdown_signal()).await?;
            Ok(match outcome {
                Outcome::Rebooted => REBOOT_EXIT_CODE,
                Outcome::Off | Outcome::Stopped => 0,
            })
        }
        Command::FleetlockServer { listen } => {
            let inputs = Inputs::env_only(env);
            let opts = store_options(g, &inputs, "LOCKSMITHD");
            let client = crate::store::connect(&opts).await?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::info!(address = %listener.local_addr()?, "serving FleetLock");
            crate::fleetlock::server::serve(listener, client, shutdown_signal()).await?;
            Ok(0)
        }
        Command::SendNeedReboot => {
            let bus = crate::dbus::Bus::system().await?;
            bus.send_need_reboot().await?;
            Ok(0)
        }
        Command::Bench(args) => {
            crate::sim::bench(args).await?;
            Ok(0)
        }
        cmd => {
            let inputs = Inputs::env_only(env);
            let group = ctl_group(g, &inputs).await?;
            ctl(&group, cmd).await
        }
    }
}

async fn ctl(group: &Group, cmd: &Command) -> anyhow::Result<u8> {
    match cmd {
        Command::Status { json, history } => {
            let view = group.view().await.context("Error reading the semaphore")?;
            let events = group.history(*history).await.unwrap_or_default();
            let name = group.keys.display_name();
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&crate::status::json(name, &view, &events))?
                );
            } else {
                print!(
                    "{}",
                    crate::status::render(name, &view, &events, unix_now())
                );
            }
            Ok(0)
        }
        Command::Lock { id, reason, ttl } => {
            let id = match id {
                Some(id) => id.clone(),
                None => own_machine_id()?,
            };
            let req = LockRequest {
                id: id.clone(),
                hostname: if id == own_machine_id().unwrap_or_default() {
                    crate::host::Host::new("/").hostname()
                } else {
                    String::new()
                },
                reason: reason.clone(),
                fixed_ttl: *ttl,
                state: Some(HolderState::Manual),
                ..LockRequest::default()
            };
            match group.lock(&req).await {
                Ok(grant) if !grant.new => {
                    println!("{id} already holds a slot");
                    Ok(0)
                }
                Ok(_) => Ok(0),
                Err(e) => {
                    eprintln!("Error locking: {}", crate::error_chain(&e));
                    Ok(1)
                }
            }
        }
        Command::Unlock { id } => {
            let (id, kind) = match id {
                Some(id) => (id.clone(), EventKind::Unlocked),
                None => (own_machine_id()?, EventKind::Released),
            };
            match group.unlock(&id, kind, "unlocked by an operator").await {
                Ok(()) => Ok(0),
                Err(e) => {
                    let text = if e.is_not_holder() {
                        "holder does not exist".to_string()
                    } else {
                        crate::error_chain(&e)
                    };
                    eprintln!("Error unlocking: {text}");
                    Ok(1)
                }
            }
        }
        Command::SetMax { max, force } => match group.set_max(*max, *force).await {
            Ok(old) => {
                println!("Old-Max: {old}\nMax: {max}");
                Ok(0)
            }
            Err(e) => {
                eprintln!("Error setting value: {}", crate::error_chain(&e));
                Ok(1)
            }
        },
        Command::Pause { reason } => {
            group.pause(reason).await?;
            println!("group {} paused: {reason}", group.keys.display_name());
            Ok(0)
        }
        Command::Resume => {
            group.resume().await?;
            println!(
                "group {} granting again (failed hosts forgotten)",
                group.keys.display_name()
            );
            Ok(0)
        }
        Command::Policy {
            lease_ttl,
            max_failures,
        } => {
            if let Some(ttl) = lease_ttl
                && *ttl < 0
            {
                bail!("--lease-ttl must be 0 (off) or more seconds, not {ttl}");
            }
            let policy = if lease_ttl.is_some() || max_failures.is_some() {
                group
                    .update_policy(None, false, |p| {
                        if let Some(t) = lease_ttl {
                            p.lease_ttl = *t;
                        }
                        if let Some(m) = max_failures {
                            p.max_failures = *m;
                        }
                    })
                    .await?
            } else {
                group.view().await?.policy.value
            };
            println!("{}", serde_json::to_string_pretty(&policy)?);
            Ok(0)
        }
        Command::History { limit } => {
            let now = unix_now();
            for e in group.history(*limit).await? {
                println!("{}", crate::status::event_line(&e, now));
            }
            Ok(0)
        }
        Command::Reboot => {
            if !nix::unistd::geteuid().is_root() {
                bail!("reboot must be run as root");
            }
            let id = own_machine_id()?;
            let req = LockRequest {
                id,
                hostname: crate::host::Host::new("/").hostname(),
                boot_id: crate::host::Host::new("/").boot_id().unwrap_or_default(),
                reason: "keel-locksmith reboot".into(),
                state: Some(HolderState::Rebooting),
                ..LockRequest::default()
            };
            if let Err(e) = group.lock(&req).await {
                eprintln!("Error locking: {}", crate::error_chain(&e));
                return Ok(1);
            }
            crate::dbus::Bus::system().await?.reboot().await?;
            Ok(0)
        }
        Command::Daemon(_)
        | Command::FleetlockServer { .. }
        | Command::SendNeedReboot
        | Command::Bench(_) => {
            unreachable!("handled by run")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Strategy;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn daemon_settings_from_env_and_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/coreos")).unwrap();
        std::fs::write(
            dir.path().join("etc/coreos/update.conf"),
            "GROUP=stable\nREBOOT_STRATEGY=etcd-lock\nLOCKSMITHD_GROUP=workers\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "keel-locksmith",
            "daemon",
            "--root",
            dir.path().to_str().unwrap(),
            "--retry-interval",
            "200ms",
        ]);
        let Command::Daemon(a) = &cli.command else {
            panic!()
        };
        let env = vec![
            (
                "LOCKSMITHD_ENDPOINT".to_string(),
                "http://10.0.0.1:2379".to_string(),
            ),
            ("LOCKSMITHD_ETCD_CAFILE".to_string(), String::new()),
        ];
        let cfg = daemon_config(&cli.global, a, env).unwrap();
        assert_eq!(cfg.strategy, Strategy::EtcdLock);
        assert_eq!(cfg.group, "workers");
        assert_eq!(cfg.store.endpoints, ["http://10.0.0.1:2379"]);
        assert_eq!(cfg.store.ca_file, None);
        assert_eq!(cfg.retry_min, Duration::from_millis(200));
        assert_eq!(cfg.retry_max, RETRY_MAX);
    }

    #[test]
    fn shipped_update_conf_parses() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/coreos")).unwrap();
        std::fs::write(
            dir.path().join("etc/coreos/update.conf"),
            include_str!("../dist/update.conf"),
        )
        .unwrap();
        let cli = Cli::parse_from([
            "keel-locksmith",
            "daemon",
            "--root",
            dir.path().to_str().unwrap(),
        ]);
        let Command::Daemon(a) = &cli.command else {
            panic!()
        };
        let cfg = daemon_config(&cli.global, a, Vec::new()).unwrap();
        assert_eq!(cfg.strategy, Strategy::EtcdLock);
        assert_eq!(cfg.group, "workers");
        assert!(cfg.window.is_some());
        assert_eq!(cfg.store.endpoints, ["http://127.0.0.1:2379"]);
    }

    #[test]
    fn bad_strategy_names_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let cli = Cli::parse_from([
            "keel-locksmith",
            "daemon",
            "--root",
            dir.path().to_str().unwrap(),
        ]);
        let Command::Daemon(a) = &cli.command else {
            panic!()
        };
        let env = vec![("REBOOT_STRATEGY".to_string(), "whenever".to_string())];
        let e = format!("{:#}", daemon_config(&cli.global, a, env).unwrap_err());
        assert!(
            e.contains("whenever") && e.contains("REBOOT_STRATEGY"),
            "{e}"
        );
    }
}
