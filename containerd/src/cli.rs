//! The runc-compatible command line. Options may follow the container id
//! (`create <id> --bundle <dir>`), runc's and crun's global flags are accepted.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Keel's container runtime (OCI runtime command line).
#[derive(Debug, Parser)]
#[command(name = "keel-containerd", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Directory for container state.
    #[arg(long, global = true, default_value = "/run/keel-containerd")]
    pub root: PathBuf,
    /// Log file (errors are appended; containerd reads them from here).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// `text` or `json`.
    #[arg(long, global = true, default_value = "text")]
    pub log_format: String,
    #[arg(long, global = true)]
    pub debug: bool,
    /// Use the systemd cgroup driver: a transient scope per container, through systemd's
    /// D-Bus API (`linux.cgroupsPath` = `slice:prefix:name`).
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// crun's spelling: cgroupfs, systemd or disabled.
    #[arg(long, global = true)]
    pub cgroup_manager: Option<String>,
    /// Image store.
    #[arg(long, global = true, default_value = "/var/lib/keel-containerd")]
    pub store: PathBuf,
}

impl Global {
    /// Appends an error to `--log` in the requested format.
    pub fn log_error(&self, msg: &str) {
        let Some(path) = &self.log else { return };
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let line = if self.log_format == "json" {
            serde_json::json!({"level": "error", "msg": msg, "time": time}).to_string()
        } else {
            format!(
                "time=\"{time}\" level=error msg=\"{}\"",
                msg.replace('"', "\\\"")
            )
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub id: String,
    /// Bundle directory (holding config.json).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Write the container's pid here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master (SCM_RIGHTS) when `process.terminal` is true.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Accepted for compatibility (pivot_root is always used).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for compatibility.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Accepted for compatibility.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Container id (with a bundle) or image name.
    pub target: String,
    /// Bundle directory; without it `target` may name an imported image.
    #[arg(short, long)]
    pub bundle: Option<PathBuf>,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    #[arg(long)]
    pub no_pivot: bool,
    #[arg(long)]
    pub no_new_keyring: bool,
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Return once started.
    #[arg(short, long)]
    pub detach: bool,
    /// Image runs: CPU limit in Kubernetes units (750m, 2).
    #[arg(long)]
    pub cpu: Option<String>,
    /// Image runs: memory limit (128M, 1Gi).
    #[arg(long)]
    pub memory: Option<String>,
    /// Image runs: `host` to share the host's network.
    #[arg(long)]
    pub net: Option<String>,
    /// Image runs: bind HOST:CONTAINER[:ro] (repeatable).
    #[arg(long)]
    pub volume: Vec<String>,
    /// Image runs: extra environment variable (repeatable).
    #[arg(long)]
    pub env: Vec<String>,
    /// Image runs: container name (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// Image runs: command replacing the image's Cmd (after --).
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Import an OCI image layout (directory or tar) or a `docker save` archive.
    Import {
        path: PathBuf,
        /// Name to store it under (default: its tag).
        #[arg(long)]
        name: Option<String>,
        /// Base64 ed25519 signature over the manifest digest (required once keys are trusted).
        #[arg(long)]
        signature: Option<PathBuf>,
    },
    /// List imported images.
    Ls,
    /// Forget an image (blobs go with `gc`).
    Rm { name: String },
    /// Delete blobs no image uses.
    Gc,
    /// Trust an ed25519 public key (base64) for image signatures.
    Trust { key: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container from a bundle; its process waits for `start`.
    Create(CreateArgs),
    /// Start a created container's process.
    Start { id: String },
    /// Print the container's state (runtime-spec JSON).
    State { id: String },
    /// Send a signal (default SIGTERM) to the container's init.
    Kill {
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
        /// Signal every process in the container.
        #[arg(short, long)]
        all: bool,
    },
    /// Delete a stopped container (--force: kill it first).
    Delete {
        id: String,
        #[arg(short, long)]
        force: bool,
    },
    /// Create, start and wait for a container; exits with its exit code. `run ID -b BUNDLE`
    /// as runc; `run IMAGE [--cpu 750m] [--memory 128M] [--net host] [--volume H:C[:ro]]
    /// [-- ARGS]` for an imported image.
    Run(RunArgs),
    /// Imported images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Run another process in a container (its namespaces, cgroups, user, capabilities).
    Exec {
        id: String,
        /// A runtime-spec process JSON file.
        #[arg(short, long)]
        process: Option<PathBuf>,
        /// Environment variable (repeatable), added to the container's.
        #[arg(short, long)]
        env: Vec<String>,
        /// Working directory inside the container.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// UID[:GID].
        #[arg(short, long)]
        user: Option<String>,
        /// Do not wait for the process.
        #[arg(short, long)]
        detach: bool,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Allocate a pseudo-terminal for the process (in the container's devpts).
        #[arg(short, long)]
        tty: bool,
        /// Unix socket that receives the pty master (SCM_RIGHTS) with --tty; without it a
        /// foreground exec relays the terminal through its own stdin/stdout.
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Change a container's resource limits (runtime-spec `linux.resources` JSON with -r,
    /// or the flags).
    Update {
        id: String,
        /// A `linux.resources` JSON file (`-` for stdin).
        #[arg(short, long)]
        resources: Option<PathBuf>,
        /// Memory limit in bytes.
        #[arg(long)]
        memory: Option<i64>,
        /// Maximum number of processes.
        #[arg(long)]
        pids_limit: Option<i64>,
        /// CPU quota per period (microseconds).
        #[arg(long)]
        cpu_quota: Option<i64>,
        /// CPU period (microseconds).
        #[arg(long)]
        cpu_period: Option<u64>,
        /// CPU shares (relative weight).
        #[arg(long)]
        cpu_shares: Option<u64>,
    },
    /// Freeze every process of a running container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// List the container's processes.
    Ps {
        id: String,
        /// `table` or `json` (pids).
        #[arg(short, long, default_value = "table")]
        format: String,
    },
    /// Print resource usage: once with --stats, else every --interval until it stops.
    Events {
        id: String,
        #[arg(long)]
        stats: bool,
        /// Seconds between samples.
        #[arg(long, default_value_t = 5)]
        interval: u64,
    },
    /// List containers.
    List {
        /// `table` or `json`.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a default config.json into the bundle directory.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// A spec for unprivileged users (user namespace with the caller's ids).
        #[arg(long)]
        rootless: bool,
    },
    /// Print the runtime's features (runtime-spec features.json).
    Features,
}

/// Runs a command; returns the exit code.
pub fn run(cli: &Cli) -> anyhow::Result<u8> {
    let g = &cli.global;
    match g.cgroup_manager.as_deref() {
        // `disabled` is taken as cgroupfs (a container always gets its cgroups).
        None | Some("cgroupfs") | Some("systemd") | Some("disabled") => {}
        Some(other) => {
            anyhow::bail!("--cgroup-manager {other:?}: use cgroupfs, systemd or disabled")
        }
    }
    crate::container::use_systemd_driver(
        g.systemd_cgroup || g.cgroup_manager.as_deref() == Some("systemd"),
    );
    let root = g.root.as_path();
    match &cli.command {
        Command::Create(a) => {
            crate::container::create(
                root,
                &a.id,
                &a.bundle,
                a.pid_file.as_deref(),
                a.console_socket.as_deref(),
            )?;
            Ok(0)
        }
        Command::Start { id } => {
            crate::container::start(root, id)?;
            Ok(0)
        }
        Command::State { id } => {
            let s = crate::state::Saved::load(root, id)?;
            println!("{}", serde_json::to_string_pretty(&s.oci_state(root))?);
            Ok(0)
        }
        Command::Kill { id, signal, all } => {
            crate::container::kill(root, id, signal, *all)?;
            Ok(0)
        }
        Command::Delete { id, force } => {
            crate::container::delete(root, id, *force)?;
            Ok(0)
        }
        Command::Run(r) => {
            let store = crate::image::Store::new(&g.store);
            let is_image = r.bundle.is_none() && store.get(&r.target).is_ok();
            let code = if is_image {
                let id = r.name.clone().unwrap_or_else(|| {
                    let t = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    format!(
                        "{}-{:x}",
                        r.target.replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
                        t.as_nanos() & 0xffff_ffff
                    )
                });
                let dir = g.store.join("containers").join(&id);
                if dir.exists() {
                    if crate::state::Saved::load(root, &id).is_ok() {
                        anyhow::bail!(
                            "container {id} already exists (keel-containerd delete --force {id})"
                        );
                    }
                    // Left by a run that never finished (the host went down, or the
                    // runtime was killed): its container is gone with the state.
                    eprintln!(
                        "keel-containerd: removing {} left by an earlier run of {id}",
                        dir.display()
                    );
                    crate::image::remove_bundle(&dir)?;
                }
                let opts = crate::image::RunImage {
                    cpu: r.cpu.clone(),
                    memory: r.memory.clone(),
                    net: r.net.clone(),
                    volumes: r.volume.clone(),
                    args: r.args.clone(),
                    env: r.env.clone(),
                };
                let result = crate::image::make_bundle(&store, &r.target, &id, &dir, &opts)
                    .map_err(anyhow::Error::from)
                    .and_then(|()| {
                        crate::container::run(
                            root,
                            &id,
                            &dir,
                            r.pid_file.as_deref(),
                            r.console_socket.as_deref(),
                            r.detach,
                        )
                        .map_err(anyhow::Error::from)
                    });
                if !r.detach || result.is_err() {
                    let _ = crate::image::remove_bundle(&dir);
                }
                result?
            } else {
                if r.cpu.is_some() || r.memory.is_some() || r.net.is_some() || !r.volume.is_empty()
                {
                    anyhow::bail!(
                        "--cpu/--memory/--net/--volume apply to images; {:?} is not an imported image",
                        r.target
                    );
                }
                let bundle = r.bundle.clone().unwrap_or_else(|| PathBuf::from("."));
                crate::container::run(
                    root,
                    &r.target,
                    &bundle,
                    r.pid_file.as_deref(),
                    r.console_socket.as_deref(),
                    r.detach,
                )?
            };
            Ok(code.clamp(0, 255) as u8)
        }
        Command::Image(cmd) => {
            let store = crate::image::Store::new(&g.store);
            match cmd {
                ImageCmd::Import {
                    path,
                    name,
                    signature,
                } => {
                    let (name, rec) = store.import(path, name.as_deref(), signature.as_deref())?;
                    println!(
                        "{name} {} ({} layers{})",
                        rec.manifest,
                        rec.layers.len(),
                        rec.signed_by
                            .map(|k| format!(", signed by {k}"))
                            .unwrap_or_default()
                    );
                }
                ImageCmd::Ls => {
                    println!(
                        "{:<32} {:<72} {:>6} SIGNED BY",
                        "NAME", "MANIFEST", "LAYERS"
                    );
                    for (name, rec) in store.list()? {
                        println!(
                            "{name:<32} {:<72} {:>6} {}",
                            rec.manifest,
                            rec.layers.len(),
                            rec.signed_by.unwrap_or_else(|| "-".into())
                        );
                    }
                }
                ImageCmd::Rm { name } => store.remove(name)?,
                ImageCmd::Gc => println!("removed {} blobs", store.gc()?),
                ImageCmd::Trust { key } => store.trust(key)?,
            }
            Ok(0)
        }
        Command::Exec {
            id,
            process,
            env,
            cwd,
            user,
            detach,
            pid_file,
            tty,
            console_socket,
            command,
        } => {
            if process.is_none() && command.is_empty() {
                anyhow::bail!("exec needs a command or --process");
            }
            let code = crate::container::exec(
                root,
                id,
                &crate::container::ExecOptions {
                    process_file: process.clone(),
                    args: command.clone(),
                    env: env.clone(),
                    cwd: cwd.clone(),
                    user: user.clone(),
                    detach: *detach,
                    pid_file: pid_file.clone(),
                    tty: *tty,
                    console_socket: console_socket.clone(),
                },
            )?;
            Ok(code.clamp(0, 255) as u8)
        }
        Command::Update {
            id,
            resources,
            memory,
            pids_limit,
            cpu_quota,
            cpu_period,
            cpu_shares,
        } => {
            let mut r: serde_json::Value = match resources {
                Some(p) if p.as_os_str() == "-" => serde_json::from_reader(std::io::stdin())?,
                Some(p) => serde_json::from_slice(
                    &std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
                )
                .with_context(|| format!("{}: not a linux.resources JSON", p.display()))?,
                None => serde_json::json!({}),
            };
            if let Some(m) = memory {
                r["memory"]["limit"] = (*m).into();
            }
            if let Some(p) = pids_limit {
                r["pids"]["limit"] = (*p).into();
            }
            if let Some(q) = cpu_quota {
                r["cpu"]["quota"] = (*q).into();
            }
            if let Some(p) = cpu_period {
                r["cpu"]["period"] = (*p).into();
            }
            if let Some(s) = cpu_shares {
                r["cpu"]["shares"] = (*s).into();
            }
            let r: oci_spec::runtime::LinuxResources =
                serde_json::from_value(r).context("invalid resources")?;
            crate::container::update(root, id, &r)?;
            Ok(0)
        }
        Command::Pause { id } => {
            crate::container::pause(root, id)?;
            Ok(0)
        }
        Command::Resume { id } => {
            crate::container::resume(root, id)?;
            Ok(0)
        }
        Command::Ps { id, format } => {
            let procs = crate::container::processes(root, id)?;
            if format == "json" {
                let pids: Vec<i32> = procs.iter().map(|p| p.0).collect();
                println!("{}", serde_json::to_string(&pids)?);
            } else {
                println!("{:<8} {:<8} {:<8} CMD", "UID", "PID", "PPID");
                for (pid, ppid, uid, cmd) in procs {
                    println!("{uid:<8} {pid:<8} {ppid:<8} {cmd}");
                }
            }
            Ok(0)
        }
        Command::Events {
            id,
            stats,
            interval,
        } => loop {
            println!("{}", crate::container::stats(root, id)?);
            if *stats {
                return Ok(0);
            }
            let saved = crate::state::Saved::load(root, id)?;
            if saved.status(root) == crate::state::Status::Stopped {
                return Ok(0);
            }
            std::thread::sleep(std::time::Duration::from_secs((*interval).max(1)));
        },
        Command::List { format, quiet } => {
            let list = crate::container::list(root);
            if *quiet {
                for c in &list {
                    println!("{}", c["id"].as_str().unwrap_or_default());
                }
            } else if format == "json" {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                println!(
                    "{:<20} {:<8} {:<10} {:<40} {:<32}",
                    "ID", "PID", "STATUS", "BUNDLE", "CREATED"
                );
                for c in &list {
                    println!(
                        "{:<20} {:<8} {:<10} {:<40} {:<32}",
                        c["id"].as_str().unwrap_or_default(),
                        c["pid"],
                        c["status"].as_str().unwrap_or_default(),
                        c["bundle"].as_str().unwrap_or_default(),
                        c["created"].as_str().unwrap_or_default()
                    );
                }
            }
            Ok(0)
        }
        Command::Spec { bundle, rootless } => {
            write_default_spec(bundle, *rootless)?;
            Ok(0)
        }
        Command::Features => {
            println!("{}", serde_json::to_string_pretty(&features())?);
            Ok(0)
        }
    }
}

/// `spec`: runc's default config (sh in a busybox-style rootfs, the usual namespaces,
/// mounts and masked paths).
pub fn write_default_spec(bundle: &Path, rootless: bool) -> anyhow::Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        anyhow::bail!("{} already exists", path.display());
    }
    let mut spec = oci_spec::runtime::Spec::default();
    spec.set_hostname(Some("keel".into()));
    // As runc's: every device denied but the defaults the runtime always allows.
    spec.set_linux(spec.linux().clone().map(|mut l| {
        let deny_all = oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .ok();
        let resources = oci_spec::runtime::LinuxResourcesBuilder::default()
            .devices(deny_all.into_iter().collect::<Vec<_>>())
            .build()
            .ok();
        l.set_resources(resources);
        l
    }));
    if rootless {
        spec.set_linux(spec.linux().clone().map(|mut l| {
            let mut ns = l.namespaces().clone().unwrap_or_default();
            ns.retain(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Network);
            if let Ok(user) = oci_spec::runtime::LinuxNamespaceBuilder::default()
                .typ(oci_spec::runtime::LinuxNamespaceType::User)
                .build()
            {
                ns.push(user);
            }
            l.set_namespaces(Some(ns));
            l.set_resources(None);
            // The invoking user is root inside, as runc's rootless spec maps it.
            let map = |host: u32| {
                oci_spec::runtime::LinuxIdMappingBuilder::default()
                    .container_id(0u32)
                    .host_id(host)
                    .size(1u32)
                    .build()
                    .ok()
                    .into_iter()
                    .collect::<Vec<_>>()
            };
            l.set_uid_mappings(Some(map(nix::unistd::geteuid().as_raw())));
            l.set_gid_mappings(Some(map(nix::unistd::getegid().as_raw())));
            l
        }));
        // No gid= on mounts (only one gid is mapped) and the host's /sys bound read-only
        // (sysfs needs a network namespace the user owns).
        let mounts = spec
            .mounts()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|mut m| {
                if m.typ().as_deref() == Some("sysfs") {
                    m.set_typ(Some("none".into()));
                    m.set_source(Some("/sys".into()));
                    m.set_options(Some(
                        ["rbind", "nosuid", "noexec", "nodev", "ro"]
                            .map(String::from)
                            .to_vec(),
                    ));
                }
                let opts = m.options().clone().map(|o| {
                    o.into_iter()
                        .filter(|x| !x.starts_with("gid="))
                        .collect::<Vec<_>>()
                });
                m.set_options(opts);
                m
            })
            .collect();
        spec.set_mounts(Some(mounts));
    }
    spec.save(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// What this runtime supports, in runtime-spec `features.json` form.
pub fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async", "dirsync",
            "remount", "mand", "noatime", "nodiratime", "relatime", "strictatime", "bind", "rbind",
            "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": {"v1": true, "v2": true, "systemd": true, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_RISCV64",
                    "SCMP_ARCH_S390X", "SCMP_ARCH_X32", "SCMP_ARCH_X86", "SCMP_ARCH_X86_64"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {"org.opencontainers.runc.version": "keel-containerd"}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_takes_options_after_the_id() {
        Cli::command().debug_assert();
        let cli = Cli::parse_from([
            "keel-containerd",
            "--root",
            "/r",
            "create",
            "c1",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
        ]);
        match cli.command {
            Command::Create(a) => {
                assert_eq!((a.id.as_str(), a.bundle.as_path()), ("c1", Path::new("/b")))
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::parse_from([
            "keel-containerd",
            "kill",
            "c1",
            "KILL",
            "--all",
            "--log",
            "/l",
            "--log-format",
            "json",
        ]);
        assert!(matches!(cli.command, Command::Kill { all: true, .. }));
        assert_eq!(cli.global.log_format, "json");
    }
}
