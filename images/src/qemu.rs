//! Booting images in QEMU: a qcow2 overlay per node over the read-only base image, the
//! cloud-config as an OpenStack `config-2` drive and as a QEMU `fw_cfg` entry, the serial
//! console appended to a log, SSH and agent ports forwarded on 127.0.0.1, and `-no-reboot`
//! with a relaunch on every guest reset (warm resets stall under TCG; a relaunch also
//! makes the firmware and GRUB read the boot state from disk like a real reboot).

use crate::cmd::{Cmd, CmdError};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `fw_cfg` name keel-cloudinit reads by default.
pub const FW_CFG_NAME: &str = "opt/org.keel/user-data";
/// Where a guest reaches a port forwarded to the host (`guestfwd`).
pub const HOST_ALIAS: &str = "10.0.2.100";

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error(transparent)]
    Io(#[from] crate::IoError),
    #[error("starting QEMU (is qemu-system-x86 installed?)")]
    Spawn(#[source] std::io::Error),
    #[error("{node}: timed out after {secs} s waiting for {what}; last console lines:\n{tail}")]
    Timeout {
        node: String,
        secs: u64,
        what: String,
        tail: String,
    },
    #[error("{node}: QEMU stopped ({why}) while waiting for {what}; last console lines:\n{tail}")]
    Stopped {
        node: String,
        why: String,
        what: String,
        tail: String,
    },
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    let path = path.to_path_buf();
    move |source| VmError::Io(crate::IoError { path, op, source })
}

/// How to run one node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub name: String,
    /// The base disk image (left untouched).
    pub image: PathBuf,
    /// The node's own directory: overlay, console log, config drive, SSH key.
    pub dir: PathBuf,
    pub cloud_config: Option<PathBuf>,
    /// Pass the cloud-config on an OpenStack `config-2` drive.
    pub config_drive: bool,
    /// Pass the cloud-config through QEMU `fw_cfg`.
    pub fw_cfg: bool,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Virtual disk size of the overlay (ROOT grows into it on first boot).
    pub disk_size: String,
    /// `(host port, guest port)` forwards on 127.0.0.1.
    pub forwards: Vec<(u16, u16)>,
    /// `(guest port on HOST_ALIAS, host port)`: guest connections reach 127.0.0.1.
    pub guest_forwards: Vec<(u16, u16)>,
    pub accel: String,
    /// The `keel-images` binary QEMU runs (`relay`) for each guest connection to a
    /// guest forward; default: the running executable.
    pub relay: Option<PathBuf>,
    /// Start from a fresh overlay.
    pub fresh: bool,
}

impl NodeOptions {
    pub fn new(name: &str, image: &Path, dir: &Path) -> NodeOptions {
        NodeOptions {
            name: name.into(),
            image: image.to_path_buf(),
            dir: dir.to_path_buf(),
            cloud_config: None,
            config_drive: true,
            fw_cfg: false,
            memory_mib: 1024,
            cpus: 1,
            disk_size: "6G".into(),
            forwards: Vec::new(),
            guest_forwards: Vec::new(),
            accel: "tcg".into(),
            relay: None,
            fresh: true,
        }
    }
}

/// What a running node exposes (written to `node.json` in its directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub ssh_port: u16,
    pub ssh_key: PathBuf,
    pub console_log: PathBuf,
    pub forwards: Vec<(u16, u16)>,
}

impl NodeInfo {
    pub fn load(dir: &Path) -> Result<NodeInfo, VmError> {
        let p = dir.join("node.json");
        let text = std::fs::read_to_string(&p).map_err(io(&p, "read"))?;
        serde_json::from_str(&text).map_err(|e| io(&p, "parse")(std::io::Error::other(e)))
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// An ed25519 key for the node's SSH (made with `ssh-keygen`).
pub fn ensure_ssh_key(dir: &Path) -> Result<(PathBuf, String), VmError> {
    let key = dir.join("ssh_key");
    if !key.exists() {
        Cmd::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "keel-images", "-f"])
            .arg(&key)
            .run()?;
    }
    let public = key.with_extension("pub");
    let text = std::fs::read_to_string(&public).map_err(io(&public, "read"))?;
    Ok((key, text.trim().to_string()))
}

/// A config drive: ISO9660 labelled `config-2` with `openstack/latest/user_data`.
pub fn config_drive(cloud_config: &Path, dir: &Path) -> Result<PathBuf, VmError> {
    let tree = dir.join("config-drive");
    let _ = std::fs::remove_dir_all(&tree);
    let latest = tree.join("openstack/latest");
    std::fs::create_dir_all(&latest).map_err(io(&latest, "create"))?;
    std::fs::copy(cloud_config, latest.join("user_data")).map_err(io(cloud_config, "copy"))?;
    let iso = dir.join("config-2.iso");
    Cmd::new("genisoimage")
        .args(["-quiet", "-V", "config-2", "-R", "-J", "-o"])
        .arg(&iso)
        .arg(&tree)
        .run()?;
    Ok(iso)
}

/// A node: QEMU under a supervisor thread that relaunches it after every guest reset.
#[derive(Debug)]
pub struct Node {
    pub info: NodeInfo,
    opts: NodeOptions,
    state: Arc<Shared>,
    supervisor: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    child: Mutex<Option<Child>>,
    stop: AtomicBool,
    /// QEMU launches so far.
    launches: AtomicU32,
    /// Set when the guest powered off (or QEMU failed) and no relaunch follows.
    ended: Mutex<Option<String>>,
}

impl Node {
    /// Prepares the node directory and starts QEMU.
    pub fn start(opts: NodeOptions) -> Result<Node, VmError> {
        std::fs::create_dir_all(&opts.dir).map_err(io(&opts.dir, "create"))?;
        let overlay = opts.dir.join("disk.qcow2");
        if opts.fresh || !overlay.exists() {
            let _ = std::fs::remove_file(&overlay);
            let image = std::fs::canonicalize(&opts.image).map_err(io(&opts.image, "find"))?;
            Cmd::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&image)
                .arg(&overlay)
                .arg(&opts.disk_size)
                .run()?;
        }
        let (ssh_key, _) = ensure_ssh_key(&opts.dir)?;
        let ssh_port = free_port();
        let console_log = opts.dir.join("console.log");
        if opts.fresh {
            let _ = std::fs::remove_file(&console_log);
        }
        let info = NodeInfo {
            name: opts.name.clone(),
            ssh_port,
            ssh_key,
            console_log,
            forwards: opts.forwards.clone(),
        };
        let p = opts.dir.join("node.json");
        std::fs::write(&p, serde_json::to_string_pretty(&info).unwrap_or_default())
            .map_err(io(&p, "write"))?;
        let state = Arc::new(Shared::default());
        let args = qemu_args(&opts, &info)?;
        let first = launch(&args, &info.console_log)?;
        *state.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(first);
        state.launches.store(1, Ordering::SeqCst);
        let sup_state = state.clone();
        let log = info.console_log.clone();
        let name = opts.name.clone();
        let supervisor = std::thread::spawn(move || supervise(&name, &args, &log, &sup_state));
        Ok(Node {
            info,
            opts,
            state,
            supervisor: Some(supervisor),
        })
    }

    pub fn options(&self) -> &NodeOptions {
        &self.opts
    }

    /// QEMU launches so far (1 + relaunches after guest resets).
    pub fn launches(&self) -> u32 {
        self.state.launches.load(Ordering::SeqCst)
    }

    /// Why the node ended, if it did (guest power-off, QEMU error).
    pub fn ended(&self) -> Option<String> {
        self.state
            .ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The console log so far.
    pub fn console(&self) -> String {
        std::fs::read(&self.info.console_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn tail(&self) -> String {
        let c = self.console();
        let lines: Vec<&str> = c.lines().rev().take(25).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Waits until the console has at least `count` lines containing `needle`; returns
    /// the last such line.
    pub fn wait_console(
        &self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<String, VmError> {
        let start = Instant::now();
        let what = format!("{count}× {needle:?} on the console");
        loop {
            let c = self.console();
            let hits: Vec<&str> = c.lines().filter(|l| l.contains(needle)).collect();
            if hits.len() >= count {
                return Ok(hits[count - 1].trim().to_string());
            }
            if let Some(why) = self.ended() {
                return Err(VmError::Stopped {
                    node: self.info.name.clone(),
                    why,
                    what,
                    tail: self.tail(),
                });
            }
            if start.elapsed() > timeout {
                return Err(VmError::Timeout {
                    node: self.info.name.clone(),
                    secs: timeout.as_secs(),
                    what,
                    tail: self.tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the `count`-th `keel-ready` report (one per boot).
    pub fn wait_ready(&self, count: usize, timeout: Duration) -> Result<String, VmError> {
        self.wait_console("keel-ready version=", count, timeout)
    }

    /// Runs a shell command in the guest over SSH as `user`.
    pub fn ssh(&self, user: &str, command: &str) -> std::io::Result<std::process::Output> {
        ssh_command(&self.info, user, command).output()
    }

    /// Like [`Node::ssh`], retrying until SSH answers (sshd may still be starting).
    pub fn ssh_ok(&self, user: &str, command: &str, timeout: Duration) -> Result<String, VmError> {
        let start = Instant::now();
        loop {
            let out = self
                .ssh(user, command)
                .map_err(io(Path::new("ssh"), "run"))?;
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            // 255 = ssh itself failed (connection); anything else is the command's status.
            if out.status.code() != Some(255) || start.elapsed() > timeout {
                let what = PathBuf::from(format!("ssh {user}@{}: {command}", self.info.name));
                return Err(io(&what, "run")(std::io::Error::other(format!(
                    "{}; stdout: {}; stderr: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Stops QEMU at once (power loss) and ends supervision.
    pub fn kill(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(c) = self
            .state
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            let _ = c.kill();
        }
        if let Some(h) = self.supervisor.take() {
            let _ = h.join();
        }
    }

    /// Waits until the node ends by itself (guest power-off), up to `timeout`.
    pub fn wait_end(&self, timeout: Duration) -> Option<String> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(e) = self.ended() {
                return Some(e);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `ssh` command line for a node.
pub fn ssh_command(info: &NodeInfo, user: &str, command: &str) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-i")
        .arg(&info.ssh_key)
        .args(["-p", &info.ssh_port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg(format!("{user}@127.0.0.1"))
        .arg(command)
        .stdin(Stdio::null());
    c
}

fn qemu_args(opts: &NodeOptions, info: &NodeInfo) -> Result<Vec<String>, VmError> {
    let d = |p: &Path| p.display().to_string();
    let mut a: Vec<String> = vec![
        "-name".into(),
        opts.name.clone(),
        "-accel".into(),
        opts.accel.clone(),
        "-m".into(),
        opts.memory_mib.to_string(),
        "-smp".into(),
        opts.cpus.to_string(),
        "-nodefaults".into(),
        "-no-reboot".into(),
        "-display".into(),
        "none".into(),
        "-chardev".into(),
        format!("file,id=console,path={},append=on", d(&info.console_log)),
        "-serial".into(),
        "chardev:console".into(),
        "-drive".into(),
        format!(
            "if=none,id=disk,file={},format=qcow2,cache=unsafe",
            d(&opts.dir.join("disk.qcow2"))
        ),
        "-device".into(),
        "virtio-blk-pci,drive=disk,bootindex=1".into(),
        "-device".into(),
        "virtio-rng-pci".into(),
    ];
    if opts.accel == "tcg" {
        a.extend(["-cpu".into(), "max".into()]);
    } else {
        a.extend(["-cpu".into(), "host".into()]);
    }
    let mut net = format!(
        "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{}-:22",
        info.ssh_port
    );
    for (h, g) in &opts.forwards {
        net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
    }
    if !opts.guest_forwards.is_empty() {
        // A `tcp:` chardev would connect once, at QEMU's start; `cmd:` runs the relay for
        // every connection the guest opens.
        let relay = match &opts.relay {
            Some(r) => r.clone(),
            None => std::env::current_exe().map_err(io(Path::new("/proc/self/exe"), "read"))?,
        };
        for (g, h) in &opts.guest_forwards {
            net.push_str(&format!(
                ",guestfwd=tcp:{HOST_ALIAS}:{g}-cmd:{} relay 127.0.0.1:{h}",
                d(&relay)
            ));
        }
    }
    a.extend([
        "-netdev".into(),
        net,
        "-device".into(),
        "virtio-net-pci,netdev=net0".into(),
    ]);
    if let Some(cc) = &opts.cloud_config {
        if opts.config_drive {
            let iso = config_drive(cc, &opts.dir)?;
            a.extend([
                "-drive".into(),
                format!("if=none,id=config,file={},format=raw,readonly=on", d(&iso)),
                "-device".into(),
                "virtio-blk-pci,drive=config".into(),
            ]);
        }
        if opts.fw_cfg {
            let abs = std::fs::canonicalize(cc).map_err(io(cc, "find"))?;
            a.extend([
                "-fw_cfg".into(),
                format!("name={FW_CFG_NAME},file={}", d(&abs)),
            ]);
        }
    }
    Ok(a)
}

fn launch(args: &[String], log: &Path) -> Result<Child, VmError> {
    let qemu_log = log.with_file_name("qemu.log");
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&qemu_log)
        .map_err(io(&qemu_log, "open"))?;
    tracing::debug!(?args, "qemu-system-x86_64");
    Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(VmError::Spawn)
}

/// Length of the console log now.
fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// What the guest printed since `from`.
fn log_since(log: &Path, from: u64) -> String {
    let mut s = Vec::new();
    if let Ok(mut f) = std::fs::File::open(log)
        && f.seek(SeekFrom::Start(from)).is_ok()
    {
        let _ = f.read_to_end(&mut s);
    }
    String::from_utf8_lossy(&s).into_owned()
}

fn supervise(name: &str, args: &[String], log: &Path, state: &Shared) {
    let mut boot_start = 0u64;
    loop {
        let status = loop {
            if state.stop.load(Ordering::SeqCst) {
                return;
            }
            let mut guard = state.child.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(st))) => break st,
                Some(Ok(None)) => {}
                _ => return,
            }
            drop(guard);
            std::thread::sleep(Duration::from_millis(100));
        };
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        let printed = log_since(log, boot_start);
        let powered_off =
            printed.contains("reboot: Power down") || printed.contains("reboot: System halted");
        let end = |why: String| {
            tracing::info!(node = name, %why, "node ended");
            *state.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        };
        if !status.success() {
            end(format!("QEMU exited with {status}"));
            return;
        }
        if powered_off {
            end("the guest powered off".into());
            return;
        }
        tracing::info!(
            node = name,
            "guest reset: relaunching QEMU on the same disk"
        );
        boot_start = log_len(log);
        match launch(args, log) {
            Ok(c) => {
                *state.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
                state.launches.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                end(format!("relaunch failed: {e}"));
                return;
            }
        }
    }
}

/// Copies stdin to a TCP connection to `addr` and the connection to stdout, until both
/// directions end (QEMU's `guestfwd=…-cmd:` runs this per guest connection).
pub fn relay(addr: &str) -> std::io::Result<()> {
    let stream = std::net::TcpStream::connect(addr)?;
    let mut up = stream.try_clone()?;
    let mut down = stream;
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    // Stdout is line-buffered: flush after every read, the protocol is binary.
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = down.read(&mut buf)?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut out, &buf[..n])?;
        std::io::Write::flush(&mut out)?;
    }
    drop(t);
    Ok(())
}
