//! Real containers on this machine (root, cgroup v1 hybrid): isolation, exit codes, the
//! lifecycle and its errors, memory/pids/cpu limits, hooks, bad bundles, and nothing left
//! behind after `delete`.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_keel-containerd");

struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
    bundle: PathBuf,
}

/// A bundle with a busybox rootfs and `keel-containerd spec`'s config, changed by `edit`.
fn fixture(edit: impl FnOnce(&mut Value)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/usr/bin/busybox", bin.join("busybox"))
        .expect("busybox-static must be installed");
    for app in [
        "sh", "true", "sleep", "ls", "cat", "echo", "hostname", "touch", "dd", "seq", "head", "id",
        "mount", "wc",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(app)).unwrap();
    }
    std::fs::create_dir_all(bundle.join("rootfs/tmp")).unwrap();
    let out = Command::new(BIN)
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["process"]["terminal"] = json!(false);
    config["hostname"] = json!("keel-test");
    edit(&mut config);
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    Fixture {
        root: dir.path().join("state"),
        bundle,
        dir,
    }
}

fn args(cmd: &str) -> impl FnOnce(&mut Value) {
    let cmd = cmd.to_string();
    move |c: &mut Value| c["process"]["args"] = json!(["sh", "-c", cmd])
}

impl Fixture {
    fn rt(&self, a: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--root")
            .arg(&self.root)
            .args(a)
            .output()
            .unwrap()
    }

    /// For commands whose container outlives them (`create`, `run -d`): the container
    /// inherits stdout/stderr, so they go to files instead of pipes.
    fn rt_detached(&self, a: &[&str]) -> (bool, String) {
        let err = self.dir.path().join(format!("err-{}", fastrand_name()));
        let out = Command::new(BIN)
            .arg("--root")
            .arg(&self.root)
            .args(a)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(self.dir.path().join("container.out")).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        (
            out.success(),
            std::fs::read_to_string(&err).unwrap_or_default(),
        )
    }

    fn run(&self, id: &str) -> Output {
        self.rt(&["run", id, "--bundle", self.bundle.to_str().unwrap()])
    }

    fn state(&self, id: &str) -> Value {
        let out = self.rt(&["state", id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn wait_stopped(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.state(id)["status"] != "stopped" {
            assert!(Instant::now() < deadline, "{id} never stopped");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn fastrand_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst).to_string()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn mountinfo_mentions(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(p.to_str().unwrap())
}

fn cgroup_dir(controller: &str, id: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join("keel")
        .join(id)
}

#[test]
fn isolation() {
    let f = fixture(|c| {
        c["process"]["args"] = json!([
            "sh",
            "-c",
            "echo pid=$$; echo host=$(hostname); ls /; cat /proc/net/dev | tail -n +3 | cut -d: -f1; \
             touch /x 2>&1 || echo ro-root; echo keys=$(cat /proc/keys | wc -c); \
             echo timer=$(cat /proc/timer_list | wc -c); echo acpi=$(ls /proc/acpi | wc -l); id -u"
        ]);
        c["root"]["readonly"] = json!(true);
    });
    let out = f.run("iso");
    let so = text(&out.stdout);
    assert!(out.status.success(), "{so}{}", text(&out.stderr));
    assert!(so.contains("pid=1\n"), "PID 1 inside: {so}");
    assert!(so.contains("host=keel-test\n"), "{so}");
    let listing: Vec<&str> = so
        .lines()
        .skip(2)
        .take_while(|l| !l.contains("lo"))
        .collect();
    assert_eq!(
        listing,
        ["bin", "dev", "proc", "sys", "tmp"],
        "only the rootfs: {so}"
    );
    let ifaces: Vec<&str> = so
        .lines()
        .filter(|l| l.trim() == "lo" || l.trim().starts_with("eth"))
        .collect();
    assert_eq!(
        ifaces.iter().map(|s| s.trim()).collect::<Vec<_>>(),
        ["lo"],
        "only lo: {so}"
    );
    assert!(
        so.contains("ro-root"),
        "a write to the read-only root fails: {so}"
    );
    // Masked paths present on this kernel read as empty.
    for (p, line) in [
        ("/proc/keys", "keys=0"),
        ("/proc/timer_list", "timer=0"),
        ("/proc/acpi", "acpi=0"),
    ] {
        if Path::new(p).exists() {
            assert!(so.contains(line), "{p} must be masked: {so}");
        }
    }
    assert!(so.trim_end().ends_with('0'), "uid 0: {so}");
}

#[test]
fn exit_codes_pass_through() {
    let f = fixture(args("exit 7"));
    assert_eq!(f.run("e7").status.code(), Some(7));
    // Killed from outside (PID 1 ignores signals it has no handler for from inside).
    let f = fixture(args("sleep 30"));
    let mut run = Command::new(BIN)
        .arg("--root")
        .arg(&f.root)
        .args(["run", "e9", "--bundle", f.bundle.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f.rt(&["state", "e9"]).status.success() || f.state("e9")["status"] != "running" {
        assert!(Instant::now() < deadline, "never running");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(f.rt(&["kill", "e9", "KILL"]).status.success());
    assert_eq!(run.wait().unwrap().code(), Some(137));
    assert!(!f.root.join("e9").exists(), "run deletes the container");
}

#[test]
fn lifecycle_and_its_errors() {
    let f = fixture(args("sleep 30"));
    let b = f.bundle.to_str().unwrap();
    let pid_file = f.dir.path().join("pid");
    let (ok, err) = f.rt_detached(&[
        "create",
        "c1",
        "--bundle",
        b,
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let s = f.state("c1");
    assert_eq!(
        (s["id"].as_str(), s["status"].as_str()),
        (Some("c1"), Some("created"))
    );
    assert_eq!(
        s["pid"].as_i64().unwrap().to_string(),
        std::fs::read_to_string(&pid_file).unwrap()
    );
    assert_eq!(s["bundle"].as_str(), Some(b));
    assert!(s["ociVersion"].as_str().unwrap().starts_with("1."));
    // Create again: refused.
    let (ok, err) = f.rt_detached(&["create", "c1", "--bundle", b]);
    assert!(!ok && err.contains("already exists"), "{err}");
    assert!(f.rt(&["start", "c1"]).status.success());
    assert_eq!(f.state("c1")["status"], "running");
    let twice = f.rt(&["start", "c1"]);
    assert!(!twice.status.success() && text(&twice.stderr).contains("is running, not created"));
    let del = f.rt(&["delete", "c1"]);
    assert!(!del.status.success() && text(&del.stderr).contains("not stopped"));
    let list = f.rt(&["list", "--format", "json"]);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list[0]["id"], "c1");
    assert!(f.rt(&["kill", "c1", "KILL"]).status.success());
    f.wait_stopped("c1");
    assert_eq!(f.state("c1")["pid"], 0);
    let k = f.rt(&["kill", "c1", "TERM"]);
    assert!(!k.status.success() && text(&k.stderr).contains("stopped"));
    assert!(f.rt(&["delete", "c1"]).status.success());
    let gone = f.rt(&["state", "c1"]);
    assert!(!gone.status.success() && text(&gone.stderr).contains("does not exist"));
    // A running container goes with --force, and nothing is left.
    assert!(f.rt_detached(&["create", "c2", "--bundle", b]).0);
    assert!(f.rt(&["start", "c2"]).status.success());
    assert!(cgroup_dir("memory", "c2").exists());
    assert!(f.rt(&["delete", "--force", "c2"]).status.success());
    for ctrl in [
        "memory", "pids", "cpu", "cpuacct", "cpuset", "freezer", "unified",
    ] {
        assert!(!cgroup_dir(ctrl, "c2").exists(), "{ctrl} cgroup left");
    }
    assert!(!f.root.join("c2").exists(), "state left");
    assert!(
        !mountinfo_mentions(&f.bundle),
        "mounts leaked into the host"
    );
    // A created (never started) container is deleted too.
    assert!(f.rt_detached(&["create", "c3", "--bundle", b]).0);
    assert!(f.rt(&["delete", "-f", "c3"]).status.success());
    assert!(!cgroup_dir("pids", "c3").exists());
}

#[test]
fn memory_limit_oom_kills() {
    let f = fixture(|c| {
        c["process"]["args"] = json!(["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
        c["linux"]["resources"] =
            json!({"memory": {"limit": 16 * 1024 * 1024, "swap": 16 * 1024 * 1024}});
    });
    let b = f.bundle.to_str().unwrap();
    assert!(f.rt_detached(&["create", "oom", "--bundle", b]).0);
    let limit =
        std::fs::read_to_string(cgroup_dir("memory", "oom").join("memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), (16 * 1024 * 1024).to_string());
    assert!(f.rt(&["start", "oom"]).status.success());
    f.wait_stopped("oom");
    let oom =
        std::fs::read_to_string(cgroup_dir("memory", "oom").join("memory.oom_control")).unwrap();
    let kills: u64 = oom
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(kills >= 1, "{oom}");
    assert!(f.rt(&["delete", "oom"]).status.success());
}

#[test]
fn memory_swappiness_oom_killer_and_tcp_limit_on_v1() {
    let f = fixture(|c| {
        c["process"]["args"] = json!(["true"]);
        c["linux"]["resources"] = json!({"memory": {
            "limit": 64 * 1024 * 1024,
            "swappiness": 10,
            "disableOOMKiller": true,
            "kernelTCP": 50593792
        }});
    });
    let b = f.bundle.to_str().unwrap();
    let (ok, err) = f.rt_detached(&["create", "memset", "--bundle", b]);
    assert!(ok, "{err}");
    let read =
        |file: &str| std::fs::read_to_string(cgroup_dir("memory", "memset").join(file)).unwrap();
    assert_eq!(read("memory.swappiness").trim(), "10");
    assert!(read("memory.oom_control").contains("oom_kill_disable 1"));
    assert_eq!(read("memory.kmem.tcp.limit_in_bytes").trim(), "50593792");
    assert!(f.rt(&["delete", "-f", "memset"]).status.success());
    let f = fixture(|c| c["linux"]["resources"] = json!({"memory": {"swappiness": 101}}));
    let out = f.run("swappy");
    let e = text(&out.stderr);
    assert!(
        !out.status.success() && e.contains("linux.resources.memory.swappiness"),
        "{e}"
    );
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let f = fixture(|c| {
        c["process"]["args"] = json!(["sh", "-c", "for i in $(seq 40); do sleep 1 & done; wait"]);
        c["linux"]["resources"] = json!({"pids": {"limit": 10}});
    });
    let out = f.run("bomb");
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(
        all.contains("can't fork") || all.contains("Resource temporarily unavailable"),
        "{all}"
    );
}

#[test]
fn cpu_quota_throttles() {
    let f = fixture(|c| {
        c["process"]["args"] = json!(["sh", "-c", "while :; do :; done"]);
        c["linux"]["resources"] = json!({"cpu": {"quota": 10000, "period": 100000, "shares": 512}});
    });
    let b = f.bundle.to_str().unwrap();
    assert!(f.rt_detached(&["create", "cpu", "--bundle", b]).0);
    let dir = cgroup_dir("cpu", "cpu");
    assert_eq!(
        std::fs::read_to_string(dir.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "10000"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("cpu.shares"))
            .unwrap()
            .trim(),
        "512"
    );
    assert!(f.rt(&["start", "cpu"]).status.success());
    std::thread::sleep(Duration::from_millis(700));
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).unwrap();
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(throttled > 0, "{stat}");
    assert!(f.rt(&["delete", "-f", "cpu"]).status.success());
}

/// A loop device over a 16 MiB file (detached when dropped).
struct Loop {
    dev: PathBuf,
    _file: tempfile::NamedTempFile,
}

impl Loop {
    fn new() -> Loop {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(16 << 20).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {}", text(&out.stderr));
        Loop {
            dev: PathBuf::from(text(&out.stdout).trim()),
            _file: file,
        }
    }

    fn major_minor(&self) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(&self.dev).unwrap().rdev();
        (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[test]
fn block_io_throttles_a_device() {
    let disk = Loop::new();
    let (major, minor) = disk.major_minor();
    let dev = disk.dev.to_str().unwrap().to_string();
    // 3 MiB of direct writes to the device, throttled to 1 MiB/s.
    let f = fixture(|c| {
        c["process"]["args"] = json!([
            "dd",
            "if=/dev/zero",
            "of=/dev/xvdb",
            "bs=64k",
            "count=48",
            "oflag=direct"
        ]);
        c["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/dev/xvdb", "type": "bind", "source": dev, "options": ["bind"]}),
        );
        c["linux"]["resources"] = json!({"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "b", "major": major, "minor": minor, "access": "rw"}
        ], "blockIO": {
            "throttleWriteBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}],
            "throttleReadIOPSDevice": [{"major": major, "minor": minor, "rate": 100}]
        }});
    });
    let b = f.bundle.to_str().unwrap();
    let (ok, err) = f.rt_detached(&["create", "bio", "--bundle", b]);
    assert!(ok, "{err}");
    let dir = cgroup_dir("blkio", "bio");
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
    let dev_line = format!("{major}:{minor}");
    assert_eq!(
        read("blkio.throttle.write_bps_device").trim(),
        format!("{dev_line} 1048576")
    );
    assert_eq!(
        read("blkio.throttle.read_iops_device").trim(),
        format!("{dev_line} 100")
    );
    let started = Instant::now();
    assert!(f.rt(&["start", "bio"]).status.success());
    f.wait_stopped("bio");
    let took = started.elapsed();
    // The kernel counted the writes against the container and held them to the rate.
    let served = read("blkio.throttle.io_service_bytes");
    let written: u64 = served
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{dev_line} Write ")))
        .unwrap_or_else(|| panic!("{served}"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(written, 3 << 20, "{served}");
    assert!(
        took >= Duration::from_millis(1500),
        "3 MiB at 1 MiB/s took only {took:?}"
    );
    assert!(f.rt(&["delete", "bio"]).status.success());

    // A weight needs a proportional I/O scheduler (BFQ here); without one it is refused
    // by name, and nothing is left. (Weight files exist below the root cgroup only.)
    let f = fixture(|c| c["linux"]["resources"] = json!({"blockIO": {"weight": 500}}));
    let b = f.bundle.to_str().unwrap();
    let blkio = cgroup_dir("blkio", "");
    let weight_file = ["blkio.bfq.weight", "blkio.weight"]
        .into_iter()
        .find(|w| blkio.join(w).exists());
    let (ok, err) = f.rt_detached(&["create", "bw", "--bundle", b]);
    match weight_file {
        None => {
            assert!(
                !ok && err.contains("linux.resources.blockIO.weight"),
                "{err}"
            );
            assert!(!cgroup_dir("blkio", "bw").exists());
            assert!(!f.root.join("bw").exists());
        }
        Some(w) => {
            assert!(ok, "{err}");
            let set = std::fs::read_to_string(cgroup_dir("blkio", "bw").join(w)).unwrap();
            assert!(set.contains("500"), "{w}: {set}");
            assert!(f.rt(&["delete", "-f", "bw"]).status.success());
        }
    }
}

#[test]
fn devices_are_created_and_only_allowed_ones_open() {
    let disk = Loop::new();
    let (major, minor) = disk.major_minor();
    // The device node comes from linux.devices (mknod, mode, owner); the default
    // spec's rules deny every device but the defaults.
    let spec = |allow: bool| {
        move |c: &mut Value| {
            c["process"]["args"] = json!([
                "sh",
                "-c",
                "ls -ln /dev/xvdc; dd if=/dev/xvdc of=/dev/null bs=512 count=1 && echo read-ok; echo x > /dev/null && echo null-ok"
            ]);
            c["linux"]["devices"] = json!([{
                "path": "/dev/xvdc", "type": "b", "major": major, "minor": minor,
                "fileMode": 0o640, "uid": 0, "gid": 6
            }]);
            if allow {
                c["linux"]["resources"]["devices"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"allow": true, "type": "b", "major": major, "minor": minor, "access": "r"}));
            }
        }
    };
    let denied = fixture(spec(false));
    let out = denied.run("dev-denied");
    let so = text(&out.stdout) + &text(&out.stderr);
    let ls: Vec<&str> = so
        .lines()
        .find(|l| l.ends_with("/dev/xvdc"))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        ls[..5],
        ["brw-r-----", "1", "0", "6", &format!("{major},")],
        "{so}"
    );
    assert!(
        !so.contains("read-ok") && so.contains("Operation not permitted"),
        "{so}"
    );
    assert!(so.contains("null-ok"), "{so}");
    let rules = std::fs::read_to_string(cgroup_dir("devices", "").join("devices.list"));
    assert!(rules.is_ok(), "the devices controller is mounted");
    let allowed = fixture(spec(true));
    let out = allowed.run("dev-allowed");
    let so = text(&out.stdout) + &text(&out.stderr);
    assert!(so.contains("read-ok") && so.contains("null-ok"), "{so}");
    // On cgroup2 the same rules are a device program on the container's directory
    // (this hybrid host's unified hierarchy gets it too).
    let b = allowed.bundle.to_str().unwrap();
    assert!(allowed.rt_detached(&["create", "dev-bpf", "--bundle", b]).0);
    let unified = Path::new("/sys/fs/cgroup/unified/keel/dev-bpf");
    assert_eq!(keel_containerd::devices::attached(unified).unwrap(), 1);
    assert!(allowed.rt(&["delete", "-f", "dev-bpf"]).status.success());
    assert!(!unified.exists());
}

#[test]
fn hooks_run_in_order_with_the_state_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("read s; echo \"{name} $s\" >> {}", log.display())]});
    let f = fixture(|c| {
        c["process"]["args"] = json!(["true"]);
        c["hooks"] = json!({
            "createRuntime": [hook("createRuntime")],
            "prestart": [hook("prestart")],
            "createContainer": [hook("createContainer")],
            // A failing poststart or poststop hook only warns; the next still runs.
            "poststart": [{"path": "/bin/false"}, hook("poststart")],
            "poststop": [{"path": "/bin/false"}, hook("poststop")],
        });
    });
    let out = f.run("hooked");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let warned = text(&out.stderr);
    assert!(warned.contains("warning: poststart"), "{warned}");
    let text = std::fs::read_to_string(&log).unwrap();
    let order: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    // The spec's order: prestart and createRuntime (in the runtime's namespaces, the
    // init waiting before pivot_root), then createContainer (in the container's).
    assert_eq!(
        order,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "poststart",
            "poststop"
        ],
        "{text}"
    );
    let prestart: Value =
        serde_json::from_str(text.lines().next().unwrap().split_once(' ').unwrap().1).unwrap();
    assert_eq!(prestart["id"], "hooked");
    assert_eq!(prestart["status"], "creating");
    assert!(prestart["pid"].as_i64().unwrap() > 0, "{prestart}");
    let poststop: Value =
        serde_json::from_str(text.lines().last().unwrap().split_once(' ').unwrap().1).unwrap();
    assert_eq!(poststop["id"], "hooked");
    assert_eq!(poststop["status"], "stopped");
}

#[test]
fn bad_bundles_name_the_field_and_leave_nothing() {
    let f = fixture(|c| c["ociVersion"] = json!("2.0.0"));
    let out = f.run("v2");
    let e = text(&out.stderr);
    assert!(
        !out.status.success() && e.contains("config.json") && e.contains("ociVersion"),
        "{e}"
    );
    let f = fixture(|c| c["root"]["path"] = json!("missing"));
    let e = text(&f.run("nr").stderr);
    assert!(e.contains("root.path"), "{e}");
    let f = fixture(|c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/data", "type": "nosuchfs", "source": "x"}));
    });
    let out = f.run("badmount");
    let e = text(&out.stderr);
    assert!(
        !out.status.success() && e.contains("/data") && e.contains("nosuchfs"),
        "{e}"
    );
    assert!(!f.root.join("badmount").exists(), "no state left");
    for ctrl in ["memory", "pids", "unified"] {
        assert!(!cgroup_dir(ctrl, "badmount").exists(), "{ctrl} cgroup left");
    }
    let f = fixture(args("true"));
    let e = text(&f.rt(&["state", "../x"]).stderr);
    assert!(e.contains("invalid container id"), "{e}");
}

#[test]
fn every_rootfs_propagation_pivots_and_applies_to_the_root() {
    // A shared parent made pivot_root fail (EINVAL), an unbindable one the rootfs bind.
    for (mode, mark) in [
        ("shared", "shared:"),
        // (a slave of a private mount has no master: nothing to look for)
        ("slave", ""),
        ("private", ""),
        ("unbindable", "unbindable"),
    ] {
        let f = fixture(|c| {
            c["process"]["args"] = json!([
                "sh",
                "-c",
                "while read -r a b c d e f; do [ \"$e\" = / ] && echo \"$f\"; done < /proc/self/mountinfo; true"
            ]);
            c["linux"]["rootfsPropagation"] = json!(mode);
        });
        let out = f.run(&format!("prop-{mode}"));
        let root = text(&out.stdout);
        assert!(out.status.success(), "{mode}: {}", text(&out.stderr));
        assert!(root.contains(mark), "{mode}: {root}");
        if mode == "private" {
            assert!(
                !root.contains("shared:") && !root.contains("master:"),
                "{root}"
            );
        }
    }
}

#[test]
fn a_container_without_namespaces_runs_in_a_chroot() {
    // No mount namespace: no /proc in the new root; the init still reaches its exec
    // fifo after the chroot (runtime-tools' linux_ns_itype runs this way).
    let f = fixture(|c| {
        c["process"]["args"] = json!(["sh", "-c", "echo in-chroot; ls /"]);
        c["linux"]["namespaces"] = json!([]);
        c.as_object_mut().unwrap().remove("hostname");
    });
    let b = f.bundle.to_str().unwrap();
    let (ok, err) = f.rt_detached(&["create", "bare", "--bundle", b]);
    assert!(ok, "{err}");
    assert_eq!(f.state("bare")["status"], "created");
    assert!(f.rt(&["start", "bare"]).status.success());
    f.wait_stopped("bare");
    let out = std::fs::read_to_string(f.dir.path().join("container.out")).unwrap();
    assert!(
        out.starts_with("in-chroot\n") && out.contains("bin"),
        "{out}"
    );
    assert!(f.rt(&["delete", "bare"]).status.success());
}

#[test]
fn a_leftover_cgroup_is_replaced_and_a_busy_one_refused() {
    // What a container that was never deleted (killed runtime, power loss) left: its
    // limit must not carry over into a new container of the same name.
    let mem = cgroup_dir("memory", "left");
    std::fs::create_dir_all(mem.join("child")).unwrap();
    std::fs::write(mem.join("memory.limit_in_bytes"), "8388608").unwrap();
    let f = fixture(args("true"));
    let out = f.run("left");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!mem.exists(), "removed with the container");
    let f = fixture(|c| {
        c["process"]["args"] = json!(["sleep", "10"]);
        c["linux"]["resources"] = json!({"memory": {"limit": 67108864}});
    });
    let b = f.bundle.to_str().unwrap();
    let (ok, err) = f.rt_detached(&["create", "left", "--bundle", b]);
    assert!(ok, "{err}");
    let limit = std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), "67108864");
    assert!(f.rt(&["delete", "-f", "left"]).status.success());

    // A process already in the directory: refused by path, and the process stays there.
    let pids = cgroup_dir("pids", "busy");
    std::fs::create_dir_all(&pids).unwrap();
    let mut squatter = Command::new("sleep").arg("30").spawn().unwrap();
    std::fs::write(pids.join("cgroup.procs"), squatter.id().to_string()).unwrap();
    let f = fixture(args("true"));
    let out = f.run("busy");
    let e = text(&out.stderr);
    assert!(
        !out.status.success() && e.contains("keel/busy") && e.contains("1 process"),
        "{e}"
    );
    assert!(!f.root.join("busy").exists(), "no state left");
    let procs = std::fs::read_to_string(pids.join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), squatter.id().to_string());
    squatter.kill().unwrap();
    squatter.wait().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    std::fs::remove_dir(&pids).unwrap();
}

#[test]
fn user_capabilities_no_new_privs_and_rlimits() {
    let f = fixture(|c| {
        c["process"]["args"] = json!([
            "sh",
            "-c",
            "grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status; id; ulimit -n"
        ]);
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [5]});
        c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]);
    });
    let out = f.run("caps");
    let so = text(&out.stdout);
    assert!(out.status.success(), "{so}{}", text(&out.stderr));
    // The spec's default sets: CAP_KILL, CAP_NET_BIND_SERVICE, CAP_AUDIT_WRITE.
    for set in ["CapEff", "CapBnd", "CapAmb"] {
        assert!(
            so.contains(&format!("{set}:\t0000000020000420")),
            "{set}: {so}"
        );
    }
    assert!(so.contains("NoNewPrivs:\t1"), "{so}");
    assert!(so.contains("uid=1000 gid=1000 groups=5"), "{so}");
    assert!(so.trim_end().ends_with("256"), "{so}");
    let f = fixture(|c| c["process"]["capabilities"]["bounding"] = json!(["CAP_NOPE"]));
    let e = text(&f.run("badcap").stderr);
    assert!(
        e.contains("process.capabilities") || e.contains("CAP_NOPE") || e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn pause_resume_ps_and_stats() {
    let f = fixture(|c| {
        c["process"]["args"] = json!(["sh", "-c", "sleep 30 & wait"]);
        c["linux"]["resources"] =
            json!({"pids": {"limit": 20}, "memory": {"limit": 64 * 1024 * 1024}});
    });
    let b = f.bundle.to_str().unwrap();
    assert!(f.rt_detached(&["create", "p1", "--bundle", b]).0);
    assert!(f.rt(&["start", "p1"]).status.success());
    let init = f.state("p1")["pid"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let pids: Vec<i64> = loop {
        let out = f.rt(&["ps", "p1", "--format", "json"]);
        let pids: Vec<i64> = serde_json::from_slice(&out.stdout).unwrap();
        if pids.len() == 2 {
            break pids;
        }
        assert!(Instant::now() < deadline, "expected sh and sleep: {pids:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(pids.contains(&init), "{pids:?} {init}");
    let table = text(&f.rt(&["ps", "p1"]).stdout);
    assert!(
        table.starts_with("UID") && table.contains("sleep 30"),
        "{table}"
    );
    let stats: Value = serde_json::from_slice(&f.rt(&["events", "p1", "--stats"]).stdout).unwrap();
    assert_eq!(stats["type"], "stats");
    assert_eq!(stats["data"]["pids"]["current"], 2);
    assert_eq!(stats["data"]["pids"]["limit"], 20);
    assert_eq!(stats["data"]["memory"]["usage"]["limit"], 64 * 1024 * 1024);
    assert!(stats["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0);

    assert!(f.rt(&["pause", "p1"]).status.success());
    assert_eq!(f.state("p1")["status"], "paused");
    let freezer =
        std::fs::read_to_string(cgroup_dir("freezer", "p1").join("freezer.state")).unwrap();
    assert_eq!(freezer.trim(), "FROZEN");
    let again = f.rt(&["pause", "p1"]);
    assert!(!again.status.success() && text(&again.stderr).contains("is paused, not running"));
    assert!(f.rt(&["resume", "p1"]).status.success());
    assert_eq!(f.state("p1")["status"], "running");
    let not_paused = f.rt(&["resume", "p1"]);
    assert!(!not_paused.status.success() && text(&not_paused.stderr).contains("not paused"));
    // A paused container is deleted with --force (thawed first, then killed).
    assert!(f.rt(&["pause", "p1"]).status.success());
    let del = f.rt(&["delete", "--force", "p1"]);
    assert!(del.status.success(), "{}", text(&del.stderr));
    assert!(!cgroup_dir("freezer", "p1").exists());
    assert!(!f.root.join("p1").exists());
}

#[test]
fn exec_joins_the_container() {
    let f = fixture(args("sleep 30"));
    let b = f.bundle.to_str().unwrap();
    assert!(f.rt_detached(&["run", "-d", "x1", "--bundle", b]).0);
    let out = f.rt(&[
        "exec",
        "x1",
        "sh",
        "-c",
        "echo pid=$$; hostname; ls /; cat /proc/1/cmdline",
    ]);
    let so = text(&out.stdout);
    assert!(out.status.success(), "{so}{}", text(&out.stderr));
    assert!(
        !so.contains("pid=1\n") && so.contains("pid="),
        "not the init: {so}"
    );
    assert!(so.contains("keel-test\n"), "the container's hostname: {so}");
    assert!(
        so.contains("bin\ndev\nproc\nsys\ntmp\n"),
        "the container's root: {so}"
    );
    assert!(so.contains("sleep"), "sees the container's processes: {so}");
    let out = f.rt(&[
        "exec",
        "--user",
        "1000:1000",
        "--cwd",
        "/bin",
        "-e",
        "FOO=bar",
        "x1",
        "sh",
        "-c",
        "id -u; pwd; echo $FOO; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "1000\n/bin\nbar\n");
    let process = f.dir.path().join("process.json");
    std::fs::write(
        &process,
        json!({"cwd": "/", "args": ["sh", "-c", "echo from-file"], "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]}).to_string(),
    )
    .unwrap();
    let out = f.rt(&["exec", "--process", process.to_str().unwrap(), "x1"]);
    assert_eq!(text(&out.stdout), "from-file\n", "{}", text(&out.stderr));
    let missing = f.rt(&["exec", "x1", "nosuch"]);
    assert!(
        !missing.status.success() && text(&missing.stderr).contains("not found in the container")
    );
    // Processes started by exec are in the container's cgroups and die with it.
    assert!(f.rt_detached(&["exec", "-d", "x1", "sleep", "40"]).0);
    let pids: Vec<i64> =
        serde_json::from_slice(&f.rt(&["ps", "x1", "--format", "json"]).stdout).unwrap();
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(f.rt(&["delete", "-f", "x1"]).status.success());
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z"),
            "{pid} survived"
        );
    }
    let stopped = fixture(args("true"));
    assert!(
        stopped
            .rt_detached(&["create", "s1", "--bundle", stopped.bundle.to_str().unwrap()])
            .0
    );
    assert!(stopped.rt(&["start", "s1"]).status.success());
    stopped.wait_stopped("s1");
    let e = stopped.rt(&["exec", "s1", "true"]);
    assert!(!e.status.success() && text(&e.stderr).contains("stopped"));
    assert!(stopped.rt(&["delete", "s1"]).status.success());
}

#[test]
fn user_namespace_maps_root_to_an_unprivileged_uid() {
    let f = fixture(|c| {
        c["process"]["args"] = json!([
            "sh",
            "-c",
            "id -u; cat /proc/self/uid_map; touch /tmp/x && echo wrote; sleep 30"
        ]);
        c["root"]["readonly"] = json!(false);
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    });
    // The rootfs belongs to the mapped root, as a user-namespaced image would be unpacked.
    let chown = Command::new("chown")
        .args(["-R", "200000:200000"])
        .arg(f.bundle.join("rootfs"))
        .status()
        .unwrap();
    assert!(chown.success());
    let b = f.bundle.to_str().unwrap();
    assert!(f.rt_detached(&["run", "-d", "u1", "--bundle", b]).0);
    let pid = f.state("u1")["pid"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = std::fs::read_to_string(f.dir.path().join("container.out")).unwrap_or_default();
        if out.contains("wrote") {
            assert!(out.starts_with("0\n"), "root inside: {out}");
            assert!(out.contains("200000"), "the map: {out}");
            break;
        }
        assert!(Instant::now() < deadline, "no output: {out}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.contains("200000"),
        "an unprivileged uid on the host: {uid_line}"
    );
    // exec joins the user namespace too: its root is the mapped uid, not the host's.
    let out = f.rt(&["exec", "u1", "cat", "/proc/self/uid_map"]);
    assert!(
        text(&out.stdout).contains("200000"),
        "{}",
        text(&out.stderr)
    );
    let out = f.rt(&["exec", "-d", "u1", "sleep", "5"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let procs = text(&f.rt(&["ps", "u1", "--format", "json"]).stdout);
    let pids: Vec<i32> = serde_json::from_str(&procs).unwrap();
    for p in pids {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let uid = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap_or("Uid: 200000");
        assert!(uid.contains("200000"), "pid {p} runs as {uid}");
    }
    assert!(f.rt(&["delete", "-f", "u1"]).status.success());
    // A user namespace without mappings is refused by name.
    let bad = fixture(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
    });
    let e = text(&bad.run("u2").stderr);
    assert!(e.contains("linux.uidMappings"), "{e}");
    assert!(!bad.root.join("u2").exists());
}

#[test]
fn seccomp_profile_from_the_spec() {
    let f = fixture(|c| {
        c["process"]["args"] = json!([
            "sh",
            "-c",
            "mkdir /tmp/d 2>&1; echo mkdir=$?; ls / >/dev/null && echo ls-ok"
        ]);
        c["root"]["readonly"] = json!(false);
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["no_such_syscall_anywhere"], "action": "SCMP_ACT_ERRNO"}
            ]
        });
    });
    let out = f.run("sc");
    let so = text(&out.stdout);
    assert!(out.status.success(), "{so}{}", text(&out.stderr));
    assert!(
        so.contains("Operation not permitted") && so.contains("mkdir=1"),
        "{so}"
    );
    assert!(so.contains("ls-ok"), "{so}");
    let f = fixture(|c| {
        c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_NOTIFY"}]});
    });
    // SCMP_ACT_NOTIFY without a listener is refused by field at create.
    let e = text(&f.run("notify").stderr);
    assert!(
        e.contains("linux.seccomp.listenerPath") && e.contains("NOTIFY"),
        "{e}"
    );
    assert!(!f.root.join("notify").exists());
}

/// Receives the descriptor a runtime sends to a socket it connected to (`--console-socket`).
fn receive_fd(listener: std::os::unix::net::UnixListener) -> std::os::fd::OwnedFd {
    let (conn, _) = listener.accept().unwrap();
    keel_containerd::terminal::receive_fd(&conn).unwrap().1
}

#[test]
fn terminal_through_the_console_socket() {
    let f = fixture(|c| {
        c["process"]["terminal"] = json!(true);
        c["process"]["args"] = json!(["sh", "-c", "tty; read line; echo got:$line"]);
    });
    let sock = f.dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let receiver = std::thread::spawn(move || receive_fd(listener));
    let b = f.bundle.to_str().unwrap();
    let (ok, err) = f.rt_detached(&[
        "create",
        "t1",
        "--bundle",
        b,
        "--console-socket",
        sock.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let master = receiver.join().unwrap();
    assert!(f.rt(&["start", "t1"]).status.success());
    let mut tty = std::fs::File::from(master);
    use std::io::{Read, Write};
    tty.write_all(b"hello\n").unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("got:hello") {
        assert!(Instant::now() < deadline, "{seen:?}");
        match tty.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert!(
        seen.contains("/dev/pts/0"),
        "a pty of the container's own devpts: {seen:?}"
    );
    assert!(seen.contains("got:hello"), "{seen:?}");
    f.wait_stopped("t1");
    assert!(f.rt(&["delete", "t1"]).status.success());
    // terminal: true without a socket is refused by name.
    let f = fixture(|c| c["process"]["terminal"] = json!(true));
    let e = text(&f.run("t2").stderr);
    assert!(
        e.contains("process.terminal") && e.contains("--console-socket"),
        "{e}"
    );
}

#[test]
fn exec_with_a_terminal_through_a_socket_or_relayed() {
    let f = fixture(args("sleep 30"));
    let b = f.bundle.to_str().unwrap();
    let (ok, err) = f.rt_detached(&["run", "-d", "te", "--bundle", b]);
    assert!(ok, "{err}");
    // --console-socket: the pty master goes to the caller, as containerd's shim asks.
    let sock = f.dir.path().join("exec.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let receiver = std::thread::spawn(move || receive_fd(listener));
    let exec = Command::new(BIN)
        .arg("--root")
        .arg(&f.root)
        .args([
            "exec",
            "-t",
            "--console-socket",
            sock.to_str().unwrap(),
            "te",
        ])
        .args(["sh", "-c", "tty; read line; echo got:$line"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut tty = std::fs::File::from(receiver.join().unwrap());
    use std::io::{Read, Write};
    tty.write_all(b"hi\n").unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains("got:hi") {
        match tty.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert!(
        seen.contains("/dev/pts/") && seen.contains("got:hi"),
        "{seen:?}"
    );
    let out = exec.wait_with_output().unwrap();
    assert!(out.status.success());
    // Without a socket, a foreground exec relays the terminal itself.
    let out = f.rt(&["exec", "-t", "te", "sh", "-c", "tty; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("/dev/pts/"),
        "{}",
        text(&out.stdout)
    );
    // A detached one has nowhere to relay to.
    let out = f.rt(&["exec", "-t", "-d", "te", "true"]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("--console-socket"),
        "{}",
        text(&out.stderr)
    );
    assert!(f.rt(&["delete", "-f", "te"]).status.success());
}

/// The runtime as the unprivileged user `nobody`; `detached` for commands whose
/// container keeps their stdio.
fn as_nobody(root: &Path, a: &[&str], detached: bool) -> Output {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BIN,
        "--root",
    ])
    .arg(root)
    .args(a)
    .stdin(std::process::Stdio::null());
    if !detached {
        return c.output().unwrap();
    }
    let err = tempfile::NamedTempFile::new().unwrap();
    let status = c
        .stdout(std::process::Stdio::null())
        .stderr(err.reopen().unwrap())
        .status()
        .unwrap();
    Output {
        status,
        stdout: Vec::new(),
        stderr: std::fs::read(err.path()).unwrap(),
    }
}

#[test]
fn rootless_containers_as_an_unprivileged_user() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/usr/bin/busybox", bin.join("busybox")).unwrap();
    for app in ["sh", "sleep", "id", "cat", "hostname", "touch"] {
        std::os::unix::fs::symlink("busybox", bin.join(app)).unwrap();
    }
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(chown.success());
    let b = bundle.to_str().unwrap();
    let out = as_nobody(&state, &["spec", "--rootless", "--bundle", b], false);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = bundle.join("config.json");
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(&mut c);
        std::fs::write(&path, serde_json::to_vec(&c).unwrap()).unwrap();
    };
    edit(&|c| {
        c["process"]["terminal"] = json!(false);
        c["process"]["args"] = json!(["sh", "-c", "id -u; cat /proc/self/uid_map; hostname"]);
    });
    // The invoking user is root inside, mapped to itself; no cgroup is needed.
    let out = as_nobody(&state, &["run", "rl1", "--bundle", b], false);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let so = text(&out.stdout);
    let lines: Vec<Vec<&str>> = so.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        lines,
        [vec!["0"], vec!["0", "65534", "1"], vec!["keel"]],
        "{so}"
    );
    // The lifecycle: exec joins its namespaces (the user namespace first), ps and kill
    // --all find the processes of its PID namespace, the freezer needs a cgroup.
    edit(&|c| c["process"]["args"] = json!(["sleep", "100"]));
    let out = as_nobody(&state, &["run", "-d", "rl2", "--bundle", b], true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = as_nobody(&state, &["exec", "rl2", "id", "-u"], false);
    assert_eq!(text(&out.stdout), "0\n", "{}", text(&out.stderr));
    assert!(
        as_nobody(&state, &["exec", "-d", "rl2", "sleep", "99"], true)
            .status
            .success()
    );
    let out = as_nobody(&state, &["ps", "rl2", "--format", "json"], false);
    let pids: Vec<i32> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pids.len(), 2, "{pids:?}");
    let out = as_nobody(&state, &["pause", "rl2"], false);
    assert!(
        !out.status.success() && text(&out.stderr).contains("without a cgroup"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        as_nobody(&state, &["kill", "--all", "rl2", "KILL"], false)
            .status
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text(&as_nobody(&state, &["state", "rl2"], false).stdout).contains("\"stopped\"") {
        assert!(Instant::now() < deadline, "rl2 never stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        as_nobody(&state, &["delete", "rl2"], false)
            .status
            .success()
    );
    // Limits need a cgroup the user may write: refused by name, nothing left.
    edit(&|c| c["linux"]["resources"] = json!({"memory": {"limit": 64 << 20}}));
    let out = as_nobody(&state, &["create", "rl3", "--bundle", b], true);
    let err = text(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("unprivileged user")
            && err.contains("linux.resources"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
}

#[test]
fn systemd_driver_without_systemd_fails_cleanly() {
    // This host runs no systemd (the driver is shown in a booted Keel image, see
    // tests/tests/fleet_update.rs): the error names the bus and nothing is left.
    let f = fixture(args("true"));
    let b = f.bundle.to_str().unwrap();
    let (ok, err) = f.rt_detached(&["--systemd-cgroup", "create", "sd1", "--bundle", b]);
    assert!(!ok && err.contains("systemd over D-Bus"), "{err}");
    assert!(!f.root.join("sd1").exists());
    let (ok, err) = f.rt_detached(&[
        "--cgroup-manager",
        "cgroupv3",
        "create",
        "sd2",
        "--bundle",
        b,
    ]);
    assert!(!ok && err.contains("--cgroup-manager"), "{err}");
    // A cgroupsPath the driver cannot read is refused by name.
    let f = fixture(|c| c["linux"]["cgroupsPath"] = json!("/keel/plain"));
    let b = f.bundle.to_str().unwrap();
    let (ok, err) = f.rt_detached(&["--systemd-cgroup", "create", "sd3", "--bundle", b]);
    assert!(!ok && err.contains("linux.cgroupsPath"), "{err}");
    assert!(!f.root.join("sd3").exists());
}

#[test]
fn seccomp_notify_hands_the_listener_to_an_agent() {
    use libseccomp::{ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags};
    let agent_dir = tempfile::tempdir().unwrap();
    let sock = agent_dir.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let sock_path = sock.to_str().unwrap().to_string();
    let f = fixture(move |c| {
        c["process"]["args"] = json!(["sh", "-c", "mkdir /tmp/d; echo rc=$?"]);
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": sock_path,
            "listenerMetadata": "agent-test",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
        });
    });
    // The agent: the process state and the descriptor, then one notification answered
    // with EACCES.
    let agent = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let (conn, _) = listener.accept().unwrap();
        let (msg, fd) = keel_containerd::terminal::receive_fd(&conn).unwrap();
        let state: Value = serde_json::from_slice(&msg).unwrap();
        let req = ScmpNotifReq::receive(fd.as_raw_fd()).unwrap();
        let name = req.data.syscall.get_name().unwrap();
        ScmpNotifResp::new_error(req.id, -13, ScmpNotifRespFlags::empty())
            .respond(fd.as_raw_fd())
            .unwrap();
        (state, name)
    });
    let out = f.run("sn");
    let (state, name) = agent.join().unwrap();
    assert_eq!(state["fds"], json!(["seccompFd"]), "{state}");
    assert_eq!(state["metadata"], "agent-test");
    assert_eq!(state["state"]["id"], "sn");
    assert!(state["pid"].as_i64().unwrap() > 1, "{state}");
    assert!(name.starts_with("mkdir"), "{name}");
    let so = text(&out.stdout) + &text(&out.stderr);
    assert!(
        so.contains("Permission denied") && so.contains("rc=1"),
        "{so}"
    );
}

#[test]
fn update_changes_limits_live() {
    let f = fixture(|c| {
        c["process"]["args"] = json!(["sleep", "30"]);
        c["linux"]["resources"] =
            json!({"pids": {"limit": 10}, "memory": {"limit": 64 * 1024 * 1024}});
    });
    assert!(
        f.rt_detached(&["run", "-d", "up1", "--bundle", f.bundle.to_str().unwrap()])
            .0
    );
    let out = f.rt(&[
        "update",
        "up1",
        "--pids-limit",
        "42",
        "--memory",
        "33554432",
        "--cpu-quota",
        "20000",
        "--cpu-period",
        "100000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let read = |ctrl: &str, file: &str| {
        std::fs::read_to_string(cgroup_dir(ctrl, "up1").join(file))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("pids", "pids.max"), "42");
    assert_eq!(read("memory", "memory.limit_in_bytes"), "33554432");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "20000");
    let res = f.dir.path().join("res.json");
    std::fs::write(&res, json!({"pids": {"limit": 7}}).to_string()).unwrap();
    assert!(
        f.rt(&["update", "up1", "-r", res.to_str().unwrap()])
            .status
            .success()
    );
    assert_eq!(read("pids", "pids.max"), "7");
    assert!(f.rt(&["delete", "-f", "up1"]).status.success());
}
