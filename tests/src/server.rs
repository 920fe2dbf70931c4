//! Start etcd or keel-store as a child process on free loopback ports.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::http::{self, Req};

/// How long a server may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Which implementation a [`Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Debian's etcd 3.4 (`/usr/bin/etcd`, or `$ETCD_BIN`), run with `--enable-v2`.
    Etcd,
    /// Keel's `keel-store` binary.
    Keel,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Etcd => "etcd",
            Flavor::Keel => "keel-store",
        }
    }

    pub fn binary(self) -> PathBuf {
        match self {
            Flavor::Etcd => etcd_bin(),
            Flavor::Keel => keel_store_bin(),
        }
    }

    /// Flags added after the common etcd flags.
    pub fn extra_args(self) -> Vec<String> {
        match self {
            // etcd 3.4 serves the v2 API only when asked to.
            Flavor::Etcd => vec!["--enable-v2".to_string()],
            // keel-store always serves v2.
            Flavor::Keel => vec![],
        }
    }
}

/// The flavor of the "keel" side of a comparison: keel-store, unless
/// `KEEL_CONFORMANCE_PEER=etcd` (development aid: compare etcd with etcd).
pub fn keel_side_flavor() -> Flavor {
    match std::env::var("KEEL_CONFORMANCE_PEER").ok().as_deref() {
        Some("etcd") => Flavor::Etcd,
        None | Some("") | Some("keel") | Some("keel-store") => Flavor::Keel,
        Some(other) => panic!("KEEL_CONFORMANCE_PEER={other:?}: expected `etcd` or `keel-store`"),
    }
}

fn etcd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ETCD_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "ETCD_BIN={} does not exist", p.display());
        return p;
    }
    let p = PathBuf::from("/usr/bin/etcd");
    assert!(
        p.is_file(),
        "etcd not found at /usr/bin/etcd (install the Debian package `etcd-server`, or set ETCD_BIN)"
    );
    p
}

/// The etcdctl binary (`$ETCDCTL_BIN` or `/usr/bin/etcdctl`).
pub fn etcdctl_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ETCDCTL_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "ETCDCTL_BIN={} does not exist", p.display());
        return p;
    }
    let p = PathBuf::from("/usr/bin/etcdctl");
    assert!(
        p.is_file(),
        "etcdctl not found at /usr/bin/etcdctl (install the Debian package `etcd-client`, or set ETCDCTL_BIN)"
    );
    p
}

/// Locate the keel-store binary (`$KEEL_STORE_BIN` or the workspace's target dirs).
pub fn keel_store_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("keel-store", "KEEL_STORE_BIN"))
        .clone()
}

/// Locate the keel-locksmith binary (`$KEEL_LOCKSMITH_BIN` or the workspace's target dirs).
pub fn keel_locksmith_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("keel-locksmith", "KEEL_LOCKSMITH_BIN"))
        .clone()
}

/// Locate a workspace binary: `$<env_var>`, else next to the test executable's target dir
/// (`<target>/<profile>/<name>`), else the workspace's `target/debug` / `target/release`.
/// Panics if none exists.
pub fn workspace_bin(name: &str, env_var: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env_var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env_var}={} is not a file", p.display());
        return p;
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // <target>/<profile>/deps/<test>-<hash>
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            candidates.push(profile_dir.join(name));
            if let Some(target) = profile_dir.parent() {
                candidates.push(target.join("debug").join(name));
                candidates.push(target.join("release").join(name));
            }
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace dir")
        .to_path_buf();
    candidates.push(workspace.join("target/debug").join(name));
    candidates.push(workspace.join("target/release").join(name));
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "{name} binary not found. Build it (`cargo build --workspace --bins`) or set \
         {env_var}=/path/to/{name}. Looked at: {candidates:#?}"
    );
}

/// A free loopback port (bind port 0, read it, release it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A running (or stopped) server with its own data dir and ports.
#[derive(Debug)]
pub struct Server {
    pub flavor: Flavor,
    pub bin: PathBuf,
    _root: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
}

impl Server {
    /// Start a fresh server on free ports and wait until it is ready.
    pub fn start(flavor: Flavor) -> Server {
        let bin = flavor.binary();
        let root = tempfile::Builder::new()
            .prefix(&format!("keel-tests-{}-", flavor.name()))
            .tempdir()
            .expect("tempdir");
        let data_dir = root.path().join("data");
        let log_path = root.path().join("server.log");
        let mut last_err = String::new();
        for _attempt in 0..6 {
            let client_port = free_port();
            let mut peer_port = free_port();
            while peer_port == client_port {
                peer_port = free_port();
            }
            // A failed attempt may have left a partial data dir behind.
            let _ = fs::remove_dir_all(&data_dir);
            let mut s = Server {
                flavor,
                bin: bin.clone(),
                _root: tempfile::TempDir::new().expect("tempdir"),
                data_dir: data_dir.clone(),
                log_path: log_path.clone(),
                client_port,
                peer_port,
                child: None,
            };
            match s.spawn_and_wait() {
                Ok(()) => {
                    s._root = root;
                    return s;
                }
                Err(e) => {
                    let log = s.log_tail(40);
                    s.kill_quietly();
                    s.child = None;
                    // Keep `root` alive: `s` is dropped here and must not remove it.
                    let port_clash = log.contains("address already in use")
                        || log.contains("Address already in use");
                    last_err = format!("{e}\n--- {} log tail ---\n{log}", flavor.name());
                    if !port_clash {
                        break;
                    }
                }
            }
        }
        panic!(
            "could not start {} ({}): {last_err}",
            flavor.name(),
            bin.display()
        );
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// The full command line used to start the server.
    pub fn args(&self) -> Vec<String> {
        let c = self.client_url();
        let p = self.peer_url();
        let mut a: Vec<String> = vec![
            "--name".into(),
            "default".into(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--listen-client-urls".into(),
            c.clone(),
            "--advertise-client-urls".into(),
            c,
            "--listen-peer-urls".into(),
            p.clone(),
            "--initial-advertise-peer-urls".into(),
            p.clone(),
            "--initial-cluster".into(),
            format!("default={p}"),
        ];
        a.extend(self.flavor.extra_args());
        a
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("open log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.bin)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log2))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready(Instant::now() + READY_TIMEOUT)
    }

    /// Poll `GET /version` until it answers 200 with a decided cluster version.
    fn wait_ready(&mut self, deadline: Instant) -> Result<(), String> {
        let addr = self.addr();
        let mut last = String::from("no attempt");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(st)) = child.try_wait()
            {
                return Err(format!(
                    "{} exited during startup: {st}",
                    self.flavor.name()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not ready within {READY_TIMEOUT:?} (last /version attempt: {last})",
                    self.flavor.name()
                ));
            }
            match http::send(addr, &Req::get("/version"), Duration::from_secs(2)) {
                Ok(r) if r.status == 200 => {
                    let decided = r
                        .json()
                        .and_then(|v| {
                            v.get("etcdcluster")
                                .and_then(|c| c.as_str())
                                .map(str::to_string)
                        })
                        .is_none_or(|c| c != "not_decided");
                    if decided {
                        return Ok(());
                    }
                    last = format!("200 {}", r.text());
                }
                Ok(r) => last = format!("HTTP {} {}", r.status, r.text()),
                Err(e) => last = e.to_string(),
            }
            // Poll interval while waiting for the condition.
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Send `sig` and wait (up to 20 s, then SIGKILL) for the process to exit.
    pub fn kill(&mut self, sig: Signal) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Ok(Some(st)) = child.try_wait() {
            self.child = None;
            return Some(st);
        }
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let _ = signal::kill(pid, sig);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let st = child.wait().ok();
                self.child = None;
                return st;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill_quietly(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restart with the same data dir and ports (SIGKILLs a running process
    /// first) and wait until ready.
    pub fn restart(&mut self) {
        if self.is_running() {
            self.kill(Signal::SIGKILL);
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        // The old listener may linger for a moment; retry on a port clash.
        while Instant::now() < deadline {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) => {
                    let log = self.log_tail(40);
                    self.kill_quietly();
                    last = format!("{e}\n--- log tail ---\n{log}");
                    if !log.contains("address already in use") {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!("restart of {} failed: {last}", self.flavor.name());
    }

    /// The last `n` lines of the server's combined stdout/stderr.
    pub fn log_tail(&self, n: usize) -> String {
        let mut f = match File::open(&self.log_path) {
            Ok(f) => f,
            Err(e) => return format!("<no log: {e}>"),
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(64 * 1024);
        let _ = f.seek(SeekFrom::Start(start));
        let mut s = String::new();
        let mut bytes = Vec::new();
        if f.read_to_end(&mut bytes).is_ok() {
            s = String::from_utf8_lossy(&bytes).into_owned();
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Send a request to this server (panics on transport errors).
    pub fn request(&self, req: &Req) -> http::Resp {
        http::send(self.addr(), req, http::DEFAULT_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "{} at {}: `{}` failed: {e}\n--- log tail ---\n{}",
                self.flavor.name(),
                self.client_url(),
                req.describe(),
                self.log_tail(30)
            )
        })
    }

    /// Like [`Server::request`] but returns transport errors.
    pub fn try_request(&self, req: &Req) -> io::Result<http::Resp> {
        http::send(self.addr(), req, http::DEFAULT_TIMEOUT)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

/// Wait until something answers `GET /version` on `addr` (a server started by hand).
pub fn wait_until_serving(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while http::send(addr, &http::Req::get("/version"), Duration::from_secs(1)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing serves {addr} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
