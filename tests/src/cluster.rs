//! Multi-member clusters of keel-store (or etcd, for comparisons) as separate
//! processes on loopback ports, with the faults the cluster tests inject: SIGKILL,
//! SIGSTOP/SIGCONT, restart from disk, members added and removed at runtime.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::http::{self, Req};
use crate::server::{Flavor, etcdctl_bin, free_port};

/// Raft timing used by the tests (etcd's defaults are 100 ms / 1000 ms): faster
/// failover keeps the fault rounds short.
pub const HEARTBEAT_MS: u64 = 50;
pub const ELECTION_MS: u64 = 500;

/// One member process.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    /// The address it listens on: 127.0.0.1, or its own address in its namespace.
    pub host: String,
    /// Its network namespace, if the cluster runs in namespaces.
    pub netns: Option<String>,
    /// Peer URLs are `https://`.
    pub peer_tls: bool,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// `--initial-cluster` and `--initial-cluster-state` it was started with.
    initial_cluster: String,
    state: &'static str,
    child: Option<Child>,
    paused: bool,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("http://{}:{}", self.host, self.client_port)
    }
    pub fn peer_url(&self) -> String {
        let scheme = if self.peer_tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.peer_port)
    }
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host.parse().expect("member address"), self.client_port)
    }
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.client_port)
    }
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A cluster of members sharing a temporary directory.
#[derive(Debug)]
pub struct Cluster {
    pub flavor: Flavor,
    root: tempfile::TempDir,
    pub members: Vec<Member>,
    extra: Vec<String>,
    /// The namespaces, when the cluster runs in them (dropped after the members).
    pub net: Option<Netns>,
    /// How a new cluster's members find each other.
    bootstrap: Bootstrap,
    /// A command (and its arguments) the members run under, e.g. `unshare …`.
    wrapper: Vec<String>,
}

/// How a new cluster's members find each other.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bootstrap {
    /// `--initial-cluster`.
    Flags,
    /// `--discovery URL`.
    Discovery(String),
    /// `--discovery-srv DOMAIN`; member `i` advertises `m<i>.DOMAIN`.
    Srv(String),
}

impl Cluster {
    /// Start `n` members of a new cluster and wait until each is healthy.
    pub fn start(flavor: Flavor, n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with(flavor, n, extra, None)
    }

    /// Start `n` members, each in its own network namespace joined to the others by a
    /// veth pair and a bridge, so that [`Netns::cut`] can isolate any of them. The
    /// calling thread moves into the bridge's namespace to reach them.
    pub fn start_in_netns(flavor: Flavor, n: usize, extra: &[&str]) -> Cluster {
        let net = Netns::create(n);
        Cluster::start_with(flavor, n, extra, Some(net))
    }

    fn start_with(flavor: Flavor, n: usize, extra: &[&str], net: Option<Netns>) -> Cluster {
        let mut c = Cluster::prepare_with(flavor, n, extra, net);
        c.start_all();
        c
    }

    /// A new cluster's members, not started yet (so a test can fill their data dirs).
    pub fn prepare(flavor: Flavor, n: usize, extra: &[&str]) -> Cluster {
        Cluster::prepare_with(flavor, n, extra, None)
    }

    /// Switch a prepared cluster to `https://` peer URLs (the TLS flags go in `extra`).
    pub fn use_https_peers(&mut self) {
        for m in &mut self.members {
            m.peer_tls = true;
        }
        let initial = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut self.members {
            m.initial_cluster.clone_from(&initial);
        }
    }

    /// Start every member and wait until each is healthy.
    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            self.spawn(i);
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i, Duration::from_secs(60));
        }
    }

    fn prepare_with(flavor: Flavor, n: usize, extra: &[&str], net: Option<Netns>) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix(&format!("keel-cluster-{}-", flavor.name()))
            .tempdir()
            .expect("tempdir");
        let mut members: Vec<Member> = (0..n)
            .map(|i| match &net {
                None => new_member(root.path(), &format!("m{i}")),
                Some(net) => {
                    let mut m = new_member(root.path(), &format!("m{i}"));
                    m.host = net.address(i);
                    m.netns = Some(net.member(i));
                    m.client_port = 2379;
                    m.peer_port = 2380;
                    m
                }
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster.clone_from(&initial);
        }
        Cluster {
            flavor,
            root,
            members,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            net,
            bootstrap: Bootstrap::Flags,
            wrapper: Vec::new(),
        }
    }

    /// `n` members of a new cluster that find each other in the DNS SRV records of
    /// `domain` (`--discovery-srv`), advertising their peer URLs by the names of
    /// [`Cluster::peer_name`]; not started (the test serves the records first).
    pub fn prepare_srv(flavor: Flavor, n: usize, domain: &str) -> Cluster {
        let mut c = Cluster::prepare_with(flavor, n, &[], None);
        c.bootstrap = Bootstrap::Srv(domain.to_string());
        c
    }

    /// The host name member `i` advertises with DNS discovery.
    pub fn peer_name(&self, i: usize) -> String {
        match &self.bootstrap {
            Bootstrap::Srv(domain) => format!("{}.{domain}", self.members[i].name),
            _ => self.members[i].host.clone(),
        }
    }

    /// Run the members under `wrapper` (a command that ends by running its arguments).
    pub fn wrap(&mut self, wrapper: Vec<String>) {
        self.wrapper = wrapper;
    }

    /// A cluster of `n` members that find each other through `discovery_url`; they
    /// are started but not waited for (a member beyond the size fails).
    pub fn spawn_discovery(flavor: Flavor, n: usize, discovery_url: &str) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix(&format!("keel-cluster-{}-", flavor.name()))
            .tempdir()
            .expect("tempdir");
        let members = (0..n)
            .map(|i| new_member(root.path(), &format!("m{i}")))
            .collect();
        let mut c = Cluster {
            flavor,
            root,
            members,
            extra: Vec::new(),
            net: None,
            bootstrap: Bootstrap::Discovery(discovery_url.to_string()),
            wrapper: Vec::new(),
        };
        for i in 0..n {
            c.spawn(i);
        }
        c
    }

    /// Wait until member `i`'s process has exited; returns its log tail.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while self.members[i].is_running() {
            assert!(Instant::now() < deadline, "member {i} still running");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.log_tail(i, 5)
    }

    fn args(&self, i: usize) -> Vec<String> {
        let m = &self.members[i];
        let advertise = match &self.bootstrap {
            Bootstrap::Srv(_) => format!("http://{}:{}", self.peer_name(i), m.peer_port),
            _ => m.peer_url(),
        };
        let mut a: Vec<String> = [
            "--name",
            &m.name,
            "--data-dir",
            &m.data_dir.display().to_string(),
            "--listen-client-urls",
            &m.client_url(),
            "--advertise-client-urls",
            &m.client_url(),
            "--listen-peer-urls",
            &m.peer_url(),
            "--initial-advertise-peer-urls",
            &advertise,
            "--initial-cluster",
            &m.initial_cluster,
            "--initial-cluster-state",
            m.state,
            "--initial-cluster-token",
            "keel-test-cluster",
            "--heartbeat-interval",
            &HEARTBEAT_MS.to_string(),
            "--election-timeout",
            &ELECTION_MS.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Discovery replaces the bootstrap flags (etcd refuses both); the v2 protocol
        // takes its token from the URL, DNS discovery keeps --initial-cluster-token.
        let at = a
            .iter()
            .position(|x| x == "--initial-cluster")
            .unwrap_or(a.len());
        match &self.bootstrap {
            Bootstrap::Flags => {}
            Bootstrap::Discovery(url) => {
                a.drain(at..(at + 6).min(a.len()));
                a.extend(["--discovery".to_string(), url.clone()]);
            }
            Bootstrap::Srv(domain) => {
                a.drain(at..(at + 2).min(a.len()));
                a.extend(["--discovery-srv".to_string(), domain.clone()]);
            }
        }
        a.extend(self.flavor.extra_args());
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Start member `i`'s process (its data dir is kept across restarts).
    pub fn spawn(&mut self, i: usize) {
        let args = self.args(i);
        let m = &mut self.members[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log_path)
            .expect("open member log");
        let log2 = log.try_clone().expect("clone log handle");
        let mut cmd = match (&m.netns, self.wrapper.split_first()) {
            (Some(ns), _) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(self.flavor.binary());
                c
            }
            (None, Some((program, wrapper_args))) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(self.flavor.binary());
                c
            }
            (None, None) => Command::new(self.flavor.binary()),
        };
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log2))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn member");
        m.child = Some(child);
        m.paused = false;
    }

    /// Wait until member `i` answers `/health` with true (it has a leader and a
    /// linearizable read went through).
    pub fn wait_healthy(&mut self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.members[i].child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("member {i} exited: {st}\n{}", self.log_tail(i, 30));
            }
            if self.healthy(i) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "member {i} not healthy within {timeout:?}\n{}",
                self.log_tail(i, 30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn healthy(&self, i: usize) -> bool {
        http::send(
            self.members[i].addr(),
            &Req::get("/health"),
            Duration::from_secs(2),
        )
        .is_ok_and(|r| r.status == 200 && r.text().contains("true"))
    }

    /// Send `sig` to member `i` and, unless it is SIGSTOP/SIGCONT, wait for it to exit.
    pub fn signal(&mut self, i: usize, sig: Signal) {
        let m = &mut self.members[i];
        let Some(child) = m.child.as_mut() else {
            return;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        // A stopped member is woken for a signal it should handle; SIGKILL takes it
        // as it is (woken first, it could still send what it had queued).
        if m.paused && sig != Signal::SIGCONT && sig != Signal::SIGKILL {
            let _ = signal::kill(pid, Signal::SIGCONT);
        }
        let _ = signal::kill(pid, sig);
        match sig {
            Signal::SIGSTOP => m.paused = true,
            Signal::SIGCONT => m.paused = false,
            _ => {
                let _ = child.wait();
                m.child = None;
                m.paused = false;
            }
        }
    }

    pub fn kill(&mut self, i: usize) {
        self.signal(i, Signal::SIGKILL);
    }

    /// SIGKILL (if running) and start again from the same data dir.
    pub fn restart(&mut self, i: usize) {
        if self.members[i].is_running() {
            self.kill(i);
        }
        self.spawn(i);
    }

    pub fn is_paused(&self, i: usize) -> bool {
        self.members[i].paused
    }

    /// Index of the member that says it leads, asking every running member.
    pub fn leader(&mut self) -> Option<usize> {
        for i in 0..self.members.len() {
            if !self.members[i].is_running() || self.members[i].paused {
                continue;
            }
            let Ok(r) = http::send(
                self.members[i].addr(),
                &Req::get("/v2/stats/self"),
                Duration::from_secs(1),
            ) else {
                continue;
            };
            if r.text().contains("StateLeader") {
                return Some(i);
            }
        }
        None
    }

    pub fn wait_leader(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader() {
                return l;
            }
            assert!(Instant::now() < deadline, "no leader within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run etcdctl (v3 API) against member `i`; returns (success, stdout + stderr).
    pub fn etcdctl(&self, i: usize, args: &[&str]) -> (bool, String) {
        etcdctl_output(self.etcdctl_command(i, args).output().expect("run etcdctl"))
    }

    /// `etcdctl` (v3 API, 10 s command timeout) against member `i`, not yet started.
    pub fn etcdctl_command(&self, i: usize, args: &[&str]) -> Command {
        let mut cmd = Command::new(etcdctl_bin());
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.members[i].endpoint()))
            .arg("--command-timeout=10s")
            .args(args);
        cmd
    }

    /// Add a member through member `via` (`etcdctl member add`) and start it with
    /// `--initial-cluster-state existing`. Returns its index.
    pub fn add_member(&mut self, via: usize, learner: bool) -> usize {
        let name = format!("m{}", self.members.len());
        let mut m = new_member(self.root.path(), &name);
        let peer = m.peer_url();
        let mut args = vec!["member", "add", &name, "--peer-urls", &peer];
        if learner {
            args.push("--learner");
        }
        let (ok, out) = self.etcdctl(via, &args);
        assert!(ok, "member add failed: {out}");
        let initial = out
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in: {out}"));
        m.initial_cluster = initial;
        m.state = "existing";
        self.members.push(m);
        let i = self.members.len() - 1;
        self.spawn(i);
        i
    }

    /// Give member `i` a new peer port (after `member update` moved it there): it
    /// listens and advertises there from its next start. Every member's
    /// `--initial-cluster` keeps the old URL, as etcd's runtime-configuration guide has
    /// it: the `--initial-*` flags only matter when a member bootstraps.
    pub fn move_peer(&mut self, i: usize, port: u16) {
        self.members[i].peer_port = port;
    }

    /// The last `n` lines of member `i`'s log.
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        let text = std::fs::read_to_string(&self.members[i].log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                // (members first; the namespaces go when `net` drops after this)
                if m.paused {
                    let pid = Pid::from_raw(i32::try_from(c.id()).unwrap_or(0));
                    let _ = signal::kill(pid, Signal::SIGCONT);
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // A failed test's member logs and data dirs, kept for a look.
        if std::thread::panicking() && std::env::var_os("KEEL_KEEP_CLUSTER").is_some() {
            let kept = std::mem::replace(&mut self.root, tempfile::tempdir().expect("tempdir"));
            eprintln!("cluster kept in {}", kept.keep().display());
        }
    }
}

fn new_member(root: &std::path::Path, name: &str) -> Member {
    let client_port = free_port();
    let mut peer_port = free_port();
    while peer_port == client_port {
        peer_port = free_port();
    }
    Member {
        name: name.to_string(),
        host: "127.0.0.1".to_string(),
        netns: None,
        peer_tls: false,
        client_port,
        peer_port,
        data_dir: root.join(name),
        log_path: root.join(format!("{name}.log")),
        initial_cluster: String::new(),
        state: "new",
        child: None,
        paused: false,
    }
}

/// Network namespaces for a cluster: one per member plus a hub holding a bridge that
/// every member's veth pair plugs into. The hub has 10.99.0.254 on the bridge; member
/// `i` has 10.99.0.(i+1).
#[derive(Debug)]
pub struct Netns {
    prefix: String,
    n: usize,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// Create the namespaces and links, then move the calling thread into the hub.
    pub fn create(n: usize) -> Netns {
        let prefix = format!("kc{}", std::process::id());
        let net = Netns { prefix, n };
        let hub = net.hub();
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "addr", "add", "10.99.0.254/24", "dev", "br0"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for i in 0..n {
            let ns = net.member(i);
            let side = format!("h{i}");
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &hub, "link", "add", &side, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &hub, "link", "set", &side, "master", "br0", "up"]);
            let addr = format!("{}/24", net.address(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        let f = std::fs::File::open(format!("/var/run/netns/{hub}")).expect("open hub netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter hub netns");
        net
    }

    pub fn hub(&self) -> String {
        format!("{}h", self.prefix)
    }

    pub fn member(&self, i: usize) -> String {
        format!("{}m{i}", self.prefix)
    }

    pub fn address(&self, i: usize) -> String {
        format!("10.99.0.{}", i + 1)
    }

    /// Cut member `i` off from everyone (its link to the bridge goes down).
    pub fn cut(&self, i: usize) {
        ip(&["-n", &self.hub(), "link", "set", &format!("h{i}"), "down"]);
    }

    pub fn heal(&self, i: usize) {
        ip(&["-n", &self.hub(), "link", "set", &format!("h{i}"), "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for i in 0..self.n {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.member(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub()])
            .status();
    }
}

/// Whether an `etcdctl` run succeeded, and what it printed (stdout, then stderr).
pub fn etcdctl_output(out: std::process::Output) -> (bool, String) {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
