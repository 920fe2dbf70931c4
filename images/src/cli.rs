//! Command line: `build`, `boot`, `up`, `ssh`.

use crate::build::{self, BuildOptions};
use crate::qemu::{self, Node, NodeOptions};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Builds Keel's disk image and boots it in QEMU.
#[derive(Debug, Parser)]
#[command(name = "keel-images", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Output directory (disk image, USR image, update payload, manifest.json).
    #[arg(long, default_value = "build/keel")]
    pub out: PathBuf,
    /// Cache for the Debian base and the generated signing key.
    #[arg(
        long,
        default_value = "/var/cache/keel-images",
        env = "KEEL_IMAGES_CACHE"
    )]
    pub cache: PathBuf,
    /// Version stamped into os-release and the update payload.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub version: String,
    /// Rollback index of the payload (installs below a host's minimum are refused).
    #[arg(long, default_value_t = 0)]
    pub rollback_index: u64,
    /// Directory of the release binaries.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Private update-signing key (`keel-updater payload keygen`); default: one kept in
    /// the cache.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Debian mirror for debootstrap.
    #[arg(long, default_value = "http://deb.debian.org/debian")]
    pub mirror: String,
    /// Size of each USR partition (MiB).
    #[arg(long, default_value_t = 1024)]
    pub usr_mib: u64,
    /// Size of ROOT in the image (MiB); it grows to the disk on first boot.
    #[arg(long, default_value_t = 1024)]
    pub root_mib: u64,
    /// Extra kernel command line.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Rebuild even if no input changed.
    #[arg(long)]
    pub force: bool,
    /// Remove a path from the image (repeatable): builds deliberately broken versions
    /// for rollback tests.
    #[arg(long, hide = true)]
    pub remove: Vec<String>,
}

impl BuildArgs {
    pub fn options(&self) -> BuildOptions {
        let mut o = BuildOptions::new(
            self.out.clone(),
            self.cache.clone(),
            self.version.clone(),
            self.bin_dir.clone(),
        );
        o.rollback_index = self.rollback_index;
        o.key = self.key.clone();
        o.base.mirror = self.mirror.clone();
        o.sizes.usr = self.usr_mib;
        o.sizes.root = self.root_mib;
        o.cmdline = self.cmdline.clone();
        o.force = self.force;
        o.remove = self.remove.clone();
        o
    }
}

#[derive(Debug, Args)]
pub struct BootArgs {
    /// Image directory (from `build`) or disk image file.
    #[arg(default_value = "build/keel")]
    pub image: PathBuf,
    /// cloud-config for every node (config-2 drive and fw_cfg).
    #[arg(long)]
    pub cloud_config: Option<PathBuf>,
    /// Number of nodes.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Directory for the nodes' overlays, console logs and keys.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Extra forwards `HOST:GUEST` (127.0.0.1 only); with several nodes the host port is
    /// offset by the node's index.
    #[arg(long = "forward", value_parser = parse_forward)]
    pub forwards: Vec<(u16, u16)>,
    /// Host port of a store shared by all nodes: guests reach it at 10.0.2.100:2379.
    #[arg(long)]
    pub store_port: Option<u16>,
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Use KVM instead of TCG.
    #[arg(long)]
    pub kvm: bool,
    /// Keep the nodes' disks from a previous run.
    #[arg(long)]
    pub keep: bool,
}

fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    let (h, g) = s.split_once(':').ok_or("expected HOST:GUEST")?;
    Ok((
        h.parse().map_err(|_| format!("bad host port {h:?}"))?,
        g.parse().map_err(|_| format!("bad guest port {g:?}"))?,
    ))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the disk image and its matching signed USR update payload.
    Build(BuildArgs),
    /// Boot the image in QEMU (foreground; Ctrl-C stops the nodes).
    Boot(BootArgs),
    /// Build if needed, boot one node with a default cloud-config, wait until it is ready
    /// and print how to log in. Installs missing host packages when run as root.
    Up {
        #[command(flatten)]
        build: BuildArgs,
        /// Skip `cargo build --release --bins`.
        #[arg(long)]
        no_cargo: bool,
        /// Return once the node is ready (the VM keeps running in the background).
        #[arg(long)]
        detach: bool,
    },
    /// Relay stdin/stdout to a TCP address (used by QEMU for guest forwards).
    #[command(hide = true)]
    Relay { addr: String },
    /// Run a command in a node over SSH (or log in without one).
    Ssh {
        /// The node's directory (default: the first node of `up`/`boot`).
        #[arg(long, default_value = "build/keel/nodes/node-1")]
        node: PathBuf,
        #[arg(long, default_value = "core")]
        user: String,
        command: Vec<String>,
    },
}

/// The default cloud-config of `up`: user `core` with the invoking user's and the node's
/// SSH keys, keel-store started, keel-locksmith coordinating through it.
pub fn default_cloud_config(keys: &[String], hostname: &str) -> String {
    let mut s = String::from("#cloud-config\n");
    s.push_str(&format!("hostname: {hostname}\n"));
    s.push_str("users:\n  - name: core\n    groups: [sudo]\n    ssh_authorized_keys:\n");
    for k in keys {
        s.push_str(&format!("      - \"{k}\"\n"));
    }
    s.push_str(
        "coreos:\n  etcd2:\n    listen-client-urls: http://0.0.0.0:2379\n    advertise-client-urls: http://127.0.0.1:2379\n  \
         update:\n    reboot-strategy: etcd-lock\n  locksmith:\n    endpoint: http://127.0.0.1:2379\n  \
         units:\n    - name: etcd2.service\n      command: start\n",
    );
    s
}

/// The invoking user's SSH public keys (`~/.ssh/id_*.pub`).
fn user_keys() -> Vec<String> {
    let Some(home) = std::env::var_os("HOME") else {
        return Vec::new();
    };
    let dir = Path::new(&home).join(".ssh");
    let mut keys = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("id_")
                && name.ends_with(".pub")
                && let Ok(t) = std::fs::read_to_string(&p)
            {
                keys.push(t.trim().to_string());
            }
        }
    }
    keys
}

fn disk_of(image: &Path) -> PathBuf {
    if image.is_dir() {
        image.join(build::DISK)
    } else {
        image.to_path_buf()
    }
}

fn print_manifest(m: &build::Manifest, out: &Path) {
    println!(
        "{}: Keel {} (kernel {}), {} MiB disk ({} MiB allocated), USR {} MiB, payload {} ({} MiB); base {} in {:.1} s, assembled in {:.1} s",
        out.join(&m.disk).display(),
        m.version,
        m.kernel_version,
        m.disk_bytes >> 20,
        m.disk_allocated_bytes >> 20,
        m.usr_bytes >> 20,
        out.join(&m.payload).display(),
        m.payload_bytes >> 20,
        if m.base_cached { "cached" } else { "built" },
        m.base_seconds,
        m.assemble_seconds
    );
}

/// Runs a parsed command line; returns the exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Build(b) => {
            crate::deps::ensure(false)?;
            let m = build::build(&b.options())?;
            print_manifest(&m, &b.out);
            Ok(0)
        }
        Command::Boot(a) => {
            crate::deps::ensure(false)?;
            let disk = disk_of(&a.image);
            anyhow::ensure!(
                disk.exists(),
                "{}: no disk image; run `keel-images build`",
                disk.display()
            );
            let state = a.state.clone().unwrap_or_else(|| {
                if a.image.is_dir() {
                    a.image.join("nodes")
                } else {
                    PathBuf::from("keel-nodes")
                }
            });
            let mut nodes = Vec::new();
            for i in 1..=a.count {
                let name = format!("node-{i}");
                let mut o = NodeOptions::new(&name, &disk, &state.join(&name));
                o.cloud_config = a.cloud_config.clone();
                o.fw_cfg = a.cloud_config.is_some();
                o.memory_mib = a.memory;
                o.cpus = a.cpus;
                o.fresh = !a.keep;
                o.accel = if a.kvm { "kvm".into() } else { "tcg".into() };
                o.forwards = a
                    .forwards
                    .iter()
                    .map(|(h, g)| (h + (i as u16 - 1), *g))
                    .collect();
                if let Some(p) = a.store_port {
                    o.guest_forwards.push((2379, p));
                }
                let node = Node::start(o)?;
                println!(
                    "{name}: console {}, ssh -p {} (keel-images ssh --node {})",
                    node.info.console_log.display(),
                    node.info.ssh_port,
                    state.join(&name).display()
                );
                nodes.push(node);
            }
            wait_all(&nodes);
            Ok(0)
        }
        Command::Up {
            build: b,
            no_cargo,
            detach,
        } => up(&b, no_cargo, detach),
        Command::Relay { addr } => {
            qemu::relay(&addr).with_context(|| format!("relaying to {addr}"))?;
            Ok(0)
        }
        Command::Ssh {
            node,
            user,
            command,
        } => {
            let info = qemu::NodeInfo::load(&node)?;
            let mut c = qemu::ssh_command(&info, &user, &command.join(" "));
            c.stdin(std::process::Stdio::inherit());
            if command.is_empty() {
                c.arg("-t");
            }
            let st = c.status().context("running ssh")?;
            Ok(st.code().unwrap_or(255) as u8)
        }
    }
}

fn wait_all(nodes: &[Node]) {
    loop {
        if nodes.iter().all(|n| n.ended().is_some()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn up(b: &BuildArgs, no_cargo: bool, detach: bool) -> anyhow::Result<u8> {
    crate::deps::ensure(true)?;
    if !no_cargo && Path::new("Cargo.toml").exists() {
        println!("== cargo build --release --bins");
        let st = std::process::Command::new("cargo")
            .args(["build", "--release", "--bins"])
            .status()
            .context("running cargo")?;
        anyhow::ensure!(st.success(), "cargo build --release failed");
    }
    println!("== building the image into {}", b.out.display());
    let m = build::build(&b.options())?;
    print_manifest(&m, &b.out);
    let dir = b.out.join("nodes/node-1");
    std::fs::create_dir_all(&dir)?;
    let (_, node_key) = qemu::ensure_ssh_key(&dir)?;
    let mut keys = user_keys();
    keys.push(node_key);
    let cc = dir.join("cloud-config.yml");
    std::fs::write(&cc, default_cloud_config(&keys, "keel-1"))?;
    let mut o = NodeOptions::new("node-1", &b.out.join(&m.disk), &dir);
    o.cloud_config = Some(cc);
    o.fw_cfg = true;
    let started = std::time::Instant::now();
    println!(
        "== booting (QEMU, TCG); console: {}",
        dir.join("console.log").display()
    );
    let mut node = Node::start(o)?;
    let ready = node.wait_ready(1, Duration::from_secs(600))?;
    println!(
        "== ready after {:.0} s: {ready}\n\nLog in:\n  keel-images ssh --node {}\n  ssh -p {} core@127.0.0.1{}",
        started.elapsed().as_secs_f64(),
        dir.display(),
        node.info.ssh_port,
        if user_keys().is_empty() {
            format!(" -i {}", node.info.ssh_key.display())
        } else {
            String::new()
        }
    );
    if detach {
        // Leave QEMU running; supervision (relaunch after a guest reboot) ends with us.
        std::mem::forget(node);
        return Ok(0);
    }
    println!("\nCtrl-C stops the node.");
    while node.ended().is_none() {
        std::thread::sleep(Duration::from_millis(500));
    }
    node.kill();
    Ok(0)
}
