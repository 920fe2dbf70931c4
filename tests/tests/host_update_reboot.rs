//! One host, both agents, real binaries: keel-updater installs a signed update into USR-B,
//! keel-locksmith sees the reboot-needed sentinel, takes a slot in keel-store and reboots
//! through (fake) logind on a private D-Bus. After the "reboot" into USR-B the updater's
//! health gate holds the bless until the health command passes, and keel-locksmith keeps
//! the slot until the updater's `GetBootStatus` says the booted version is blessed — then
//! releases it. The contract between the two crates, end to end.

use keel_locksmith::store::{Group, StoreOptions};
use keel_tests::dbus::PrivateBus;
use keel_tests::server::{keel_locksmith_bin, workspace_bin};
use keel_tests::v3::run;
use keel_tests::{Flavor, Server};
use keel_updater::boot::{BootEnv, BootState, Slot, select};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Host {
    dir: tempfile::TempDir,
    root: PathBuf,
    disk: PathBuf,
    grubenv: PathBuf,
    state: PathBuf,
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn host() -> Host {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write(
        &root.join("etc/machine-id"),
        "5e1f0c3a9b7d4e2f8a6c1b3d5e7f9a0b\n",
    );
    write(&root.join("etc/hostname"), "node-1\n");
    write(&root.join("proc/sys/kernel/random/boot_id"), "boot-1\n");
    write(&root.join("proc/cmdline"), "keel.slot=A\n");
    write(&root.join("usr/lib/os-release"), "ID=keel\nVERSION=1.0.0\n");
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(160 << 20)
        .unwrap();
    keel_updater::layout::create_disk(&disk, &keel_updater::layout::keel_partitions(16, 32, 8))
        .unwrap();
    let grubenv = dir.path().join("esp/grubenv");
    BootState::load(&grubenv)
        .unwrap()
        .commit(BootEnv::initial(), None)
        .unwrap();
    Host {
        state: dir.path().join("state"),
        root,
        disk,
        grubenv,
        dir,
    }
}

fn updater_bin() -> PathBuf {
    workspace_bin("keel-updater", "KEEL_UPDATER_BIN")
}

fn updater(h: &Host) -> std::process::Command {
    let mut c = std::process::Command::new(updater_bin());
    c.arg("--root").arg(&h.root).arg("--disk").arg(&h.disk);
    c.arg("--grubenv")
        .arg(&h.grubenv)
        .arg("--state-dir")
        .arg(&h.state);
    c.args(["--board", "amd64-usr", "--arch", std::env::consts::ARCH]);
    c
}

fn spawn(mut c: std::process::Command, log: &Path, bus: &PrivateBus) -> tokio::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    c.env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .env_remove("REBOOT_STRATEGY")
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut c = tokio::process::Command::from(c);
    c.kill_on_drop(true);
    c.spawn().unwrap()
}

fn locksmith(h: &Host, store: &str) -> std::process::Command {
    let mut c = std::process::Command::new(keel_locksmith_bin());
    c.args(["daemon", "--root"]).arg(&h.root);
    c.args([
        "--strategy",
        "etcd-lock",
        "--endpoint",
        store,
        "--retry-interval",
        "200ms",
        "--login-delay",
        "0s",
    ]);
    c
}

fn updater_daemon(h: &Host) -> std::process::Command {
    let mut c = updater(h);
    let healthy = h.root.join("run/healthy");
    c.args([
        "daemon",
        "--server",
        "disabled",
        "--interval",
        "1h",
        "--allow-failed-units",
    ]);
    c.args([
        "--health-grace",
        "0s",
        "--health-command",
        &format!("test -e {}", healthy.display()),
    ]);
    c
}

/// Release engineering: a key, the image's trusted copy of it, a signed 1.1.0 payload.
fn release_payload(h: &Host) -> PathBuf {
    // Release engineering: a key, the image's trusted copy of it, a payload.
    let key = h.dir.path().join("release");
    assert!(
        updater(h)
            .args(["payload", "keygen", "--out"])
            .arg(&key)
            .status()
            .unwrap()
            .success()
    );
    write(
        &h.root.join("usr/share/keel/update-keys/release.pub"),
        &std::fs::read_to_string(key.with_extension("pub")).unwrap(),
    );
    let image = h.dir.path().join("usr-1.1.0.img");
    std::fs::write(
        &image,
        (0..(3 << 20))
            .map(|i: u32| (i % 241) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let payload = h.dir.path().join("keel-1.1.0.keelpay");
    let built = updater(h)
        .args(["payload", "build"])
        .arg(&image)
        .arg("--out")
        .arg(&payload)
        .args([
            "--version",
            "1.1.0",
            "--rollback-index",
            "2",
            "--zstd",
            "--key",
        ])
        .arg(key.with_extension("key"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );

    payload
}

/// The machine reboots (its agents already stopped): GRUB's choice is committed to
/// grubenv, /run is emptied, and the kernel command line, boot id and os-release say
/// what booted (USR-A holds 1.0.0, USR-B 1.1.0).
fn boot_again(h: &Host, n: u32) -> Slot {
    let mut boot = BootState::load(&h.grubenv).unwrap();
    let (slot, after) = select(&boot.boot);
    let slot = slot.expect("a bootable slot");
    boot.commit(after, None).unwrap();
    let _ = std::fs::remove_dir_all(h.root.join("run"));
    write(
        &h.root.join("proc/sys/kernel/random/boot_id"),
        &format!("boot-{n}\n"),
    );
    write(
        &h.root.join("proc/cmdline"),
        &format!("keel.slot={}\n", slot.name()),
    );
    let version = if slot == Slot::B { "1.1.0" } else { "1.0.0" };
    write(
        &h.root.join("usr/lib/os-release"),
        &format!("ID=keel\nVERSION={version}\n"),
    );
    slot
}

/// Wait until fake logind has seen `n` reboots.
async fn wait_reboots(logind: &keel_tests::dbus::LogindState, n: usize, logs: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while logind.reboots.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "reboot {n} never came; updater log:\n{}\nlocksmith log:\n{}",
            std::fs::read_to_string(logs.join("updater.log")).unwrap_or_default(),
            std::fs::read_to_string(logs.join("locksmith.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The reboot group in the test's store, seen as keel-locksmith sees it.
async fn group_of(store: &str) -> Group {
    let client = keel_locksmith::store::connect(&StoreOptions {
        endpoints: vec![store.to_string()],
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    Group::new(client, "", "test")
}

/// Wait until nobody holds a slot of the group.
async fn wait_released(group: &Group, logs: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = group.view().await.unwrap();
        if view.semaphore.unwrap().value.holders().is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never released; updater log:\n{}\nlocksmith log:\n{}",
            std::fs::read_to_string(logs.join("updater.log")).unwrap_or_default(),
            std::fs::read_to_string(logs.join("locksmith.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What both scenarios start from: a private bus with fake logind, a keel-store, a
/// host on USR-A with 1.0.0, and a signed 1.1.0 payload.
struct Scene {
    bus: PrivateBus,
    _logind_conn: zbus::Connection,
    logind: std::sync::Arc<keel_tests::dbus::LogindState>,
    _server: Server,
    store: String,
    host: Host,
    payload: PathBuf,
}

type Child = tokio::process::Child;

impl Scene {
    /// Start both agents on the host (the updater with `updater_args` added).
    fn agents(&self, updater_args: &[&str]) -> (Child, Child) {
        let logs = self.host.dir.path();
        let mut u = updater_daemon(&self.host);
        u.args(updater_args);
        (
            spawn(u, &logs.join("updater.log"), &self.bus),
            spawn(
                locksmith(&self.host, &self.store),
                &logs.join("locksmith.log"),
                &self.bus,
            ),
        )
    }

    /// `keel-updater install` of the 1.1.0 payload.
    fn install(&self) {
        let out = updater(&self.host)
            .arg("install")
            .arg(&self.payload)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn start() -> Scene {
        let bus = PrivateBus::start();
        let (_logind_conn, logind) = bus.serve_logind().await;
        let server = Server::start(Flavor::Keel);
        let host = host();
        let payload = release_payload(&host);
        Scene {
            bus,
            _logind_conn,
            logind,
            store: server.client_url(),
            _server: server,
            host,
            payload,
        }
    }
}

#[test]
fn update_reboot_and_health_gated_release_across_both_agents() {
    run(|| async {
        let scene = Scene::start().await;
        let (h, logind) = (&scene.host, &scene.logind);
        let logs = h.dir.path();
        let (mut upd, mut lsm) = scene.agents(&[]);
        scene.install();

        // keel-locksmith reboots the host once, holding a slot for target 1.1.0.
        let group = group_of(&scene.store).await;
        wait_reboots(logind, 1, logs).await;
        let view = group.view().await.unwrap();
        let holder = &view
            .holder("5e1f0c3a9b7d4e2f8a6c1b3d5e7f9a0b")
            .unwrap()
            .value;
        assert_eq!(
            (holder.target_version.as_str(), holder.state.as_str()),
            ("1.1.0", "rebooting")
        );
        assert_eq!(holder.hostname, "node-1");

        // The machine reboots: both agents stop, GRUB picks USR-B, /run is empty.
        upd.start_kill().unwrap();
        lsm.start_kill().unwrap();
        let _ = upd.wait().await;
        let _ = lsm.wait().await;
        assert_eq!(boot_again(h, 2), Slot::B);
        let (mut upd, mut lsm) = scene.agents(&[]);

        // Not healthy yet: the slot stays held.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let view = group.view().await.unwrap();
        assert!(
            view.semaphore
                .unwrap()
                .value
                .holds("5e1f0c3a9b7d4e2f8a6c1b3d5e7f9a0b"),
            "released before the updater blessed the boot; locksmith log:\n{}",
            std::fs::read_to_string(logs.join("locksmith.log")).unwrap()
        );
        // Healthy: the updater blesses USR-B, keel-locksmith releases.
        write(&h.root.join("run/healthy"), "");
        wait_released(&group, logs).await;
        let env = BootState::load(&h.grubenv).unwrap().boot;
        assert!(
            env.b.ok && env.order[0] == keel_updater::boot::Slot::B,
            "{env:?}"
        );
        let history = group.history(10).await.unwrap();
        let released = history
            .iter()
            .rev()
            .find(|e| serde_json::to_value(e.kind).unwrap() == "released")
            .unwrap();
        assert!(
            released.detail.contains("1.1.0") && released.detail.contains("healthy"),
            "{released:?}"
        );
        assert_eq!(
            *logind.reboots.lock().unwrap(),
            vec![false],
            "exactly one reboot"
        );
        let _ = upd.start_kill();
        let _ = lsm.start_kill();
    });
}

#[test]
fn an_update_that_fails_its_health_gate_is_rebooted_until_grub_falls_back() {
    run(|| async {
        let scene = Scene::start().await;
        let (h, logind) = (&scene.host, &scene.logind);
        let logs = h.dir.path();
        // The health command never passes on 1.1.0; the updater gives up after 2 s.
        const GATE: &[&str] = &["--health-timeout", "2s"];
        let (mut upd, mut lsm) = scene.agents(GATE);
        scene.install();
        let group = group_of(&scene.store).await;
        const ID: &str = "5e1f0c3a9b7d4e2f8a6c1b3d5e7f9a0b";
        let mut reboots = 1;
        let mut tries_of_b = 0;
        loop {
            wait_reboots(logind, reboots, logs).await;
            // Every reboot of this host happens while it holds the slot.
            let view = group.view().await.unwrap();
            assert!(view.semaphore.unwrap().value.holds(ID), "slot not held");
            upd.start_kill().unwrap();
            lsm.start_kill().unwrap();
            let _ = upd.wait().await;
            let _ = lsm.wait().await;
            let slot = boot_again(h, reboots as u32 + 1);
            (upd, lsm) = scene.agents(GATE);
            if slot == Slot::A {
                break;
            }
            tries_of_b += 1;
            assert!(tries_of_b <= 3, "USR-B booted more than its 3 tries");
            reboots += 1;
        }
        assert_eq!(tries_of_b, 3, "USR-B gets exactly its 3 tries");

        // Back on USR-A: the updater records the rollback, keel-locksmith records the
        // failed update and releases the slot; no further reboot.
        wait_released(&group, logs).await;
        let history = group.history(50).await.unwrap();
        let failed = history
            .iter()
            .find(|e| serde_json::to_value(e.kind).unwrap() == "failed")
            .unwrap_or_else(|| panic!("no failure recorded: {history:?}"));
        assert!(failed.detail.contains("1.1.0"), "{failed:?}");
        let status = updater(h).arg("status").output().unwrap();
        let status = String::from_utf8_lossy(&status.stdout);
        assert!(status.contains("rolled back: 1.1.0"), "{status}");
        let env = BootState::load(&h.grubenv).unwrap().boot;
        assert!(env.a.ok && !env.b.ok, "{env:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(logind.reboots.lock().unwrap().len(), 4, "1 + 3 tries");
        let _ = upd.start_kill();
        let _ = lsm.start_kill();
    });
}
