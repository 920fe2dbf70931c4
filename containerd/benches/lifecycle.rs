//! Container start-up cost, keel-containerd against Debian's crun and runc on the same
//! busybox bundle running `/bin/true`, interleaved so load changes hit all three alike.
//!
//! Per runtime and iteration: `run` (create + start + wait + delete in one command) and
//! the four-command lifecycle `create`, `start`, poll `state` until stopped, `delete`.
//! Peak RSS of `run` from `/usr/bin/time -f %M`. Medians with p10–p90.
//!
//! crun refuses hybrid cgroup hosts whose unified hierarchy holds controllers (this
//! machine's `hugetlb`); the bench runs in its own mount namespace with that controller
//! list hidden, so all three runtimes see the same layout and the host is untouched.
//!
//! Run: `cargo build --release -p keel-containerd && cargo bench -p keel-containerd --bench lifecycle`
//! (`KEEL_BENCH_RUNS`, default 60).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Rt {
    name: &'static str,
    bin: PathBuf,
    root: PathBuf,
}

impl Rt {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root);
        c
    }

    fn run(&self, bundle: &Path, id: &str) -> Duration {
        let t = Instant::now();
        assert!(
            quiet(self.cmd().args(["run", "-b", bundle.to_str().unwrap(), id])),
            "{} run failed",
            self.name
        );
        t.elapsed()
    }

    fn lifecycle(&self, bundle: &Path, id: &str) -> Duration {
        let t = Instant::now();
        assert!(
            quiet(
                self.cmd()
                    .args(["create", "-b", bundle.to_str().unwrap(), id])
            ),
            "{} create",
            self.name
        );
        assert!(quiet(self.cmd().args(["start", id])), "{} start", self.name);
        loop {
            let out = self.cmd().args(["state", id]).output().unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("\"stopped\"") {
                break;
            }
        }
        assert!(
            quiet(self.cmd().args(["delete", id])),
            "{} delete",
            self.name
        );
        t.elapsed()
    }

    fn peak_rss_kib(&self, bundle: &Path, id: &str) -> u64 {
        let out = Command::new("/usr/bin/time")
            .args(["-f", "%M"])
            .arg(&self.bin)
            .arg("--root")
            .arg(&self.root)
            .args(["run", "-b", bundle.to_str().unwrap(), id])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("0")
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

fn main() {
    let runs: usize = std::env::var("KEEL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let keel = workspace.join("target/release/keel-containerd");
    assert!(
        keel.exists(),
        "build first: cargo build --release -p keel-containerd"
    );
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
    std::fs::copy("/usr/bin/busybox", bundle.join("rootfs/bin/busybox")).unwrap();
    for app in ["sh", "true"] {
        std::os::unix::fs::symlink("busybox", bundle.join("rootfs/bin").join(app)).unwrap();
    }
    assert!(quiet(Command::new(&keel).args([
        "spec",
        "--bundle",
        bundle.to_str().unwrap()
    ])));
    let cfg = bundle.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["process"]["terminal"] = serde_json::json!(false);
    v["process"]["args"] = serde_json::json!(["/bin/true"]);
    std::fs::write(&cfg, serde_json::to_vec(&v).unwrap()).unwrap();

    // crun refuses hybrid hosts whose unified hierarchy lists controllers (this machine's
    // `hugetlb`, which v1 cannot take over while v2 holds it). In a private mount
    // namespace the bench hides that list (an empty file over `cgroup.controllers`), so
    // all three runtimes see a hybrid host with an empty unified hierarchy.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .expect("unshare the mount namespace (root)");
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .unwrap();
    let controllers = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    if std::fs::read_to_string(controllers).is_ok_and(|c| !c.trim().is_empty()) {
        nix::mount::mount(
            Some("/dev/null"),
            controllers,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
    }

    let rts: Vec<Rt> = [
        ("keel-containerd", keel.clone()),
        ("crun", "/usr/bin/crun".into()),
        ("runc", "/usr/sbin/runc".into()),
    ]
    .into_iter()
    .map(|(name, bin)| Rt {
        name,
        bin,
        root: dir.path().join(format!("root-{name}")),
    })
    .collect();
    let mut run_ms: Vec<Vec<f64>> = vec![Vec::new(); rts.len()];
    let mut life_ms: Vec<Vec<f64>> = vec![Vec::new(); rts.len()];
    for i in 0..runs + 3 {
        for (k, rt) in rts.iter().enumerate() {
            let r = rt.run(&bundle, &format!("r{i}")).as_secs_f64() * 1000.0;
            let l = rt.lifecycle(&bundle, &format!("l{i}")).as_secs_f64() * 1000.0;
            if i >= 3 {
                run_ms[k].push(r);
                life_ms[k].push(l);
            }
        }
    }
    let rss: Vec<Vec<f64>> = rts
        .iter()
        .map(|rt| {
            (0..10)
                .map(|i| rt.peak_rss_kib(&bundle, &format!("m{i}")) as f64 / 1024.0)
                .collect()
        })
        .collect();
    println!(
        "{runs} interleaved iterations (after 3 warm-ups), busybox bundle, /bin/true, root, cgroupfs"
    );
    println!(
        "{:<16} {:>26} {:>34} {:>14}",
        "runtime", "run: median (p10-p90) ms", "create+start+wait+delete ms", "peak RSS MiB"
    );
    for (k, rt) in rts.iter().enumerate() {
        let (mut r, mut l, mut m) = (run_ms[k].clone(), life_ms[k].clone(), rss[k].clone());
        println!(
            "{:<16} {:>8.1} ({:>5.1}-{:>5.1}) {:>14.1} ({:>5.1}-{:>5.1}) {:>16.1}",
            rt.name,
            percentile(&mut r, 0.5),
            percentile(&mut r, 0.1),
            percentile(&mut r, 0.9),
            percentile(&mut l, 0.5),
            percentile(&mut l, 0.1),
            percentile(&mut l, 0.9),
            percentile(&mut m, 0.5)
        );
    }
}
