//! Issue 10, scenario 1 (update and bless) on a booted Keel image: a node on 1.0.0 (USR-A)
//! finds 1.1.0 on an Omaha server on the host, installs it into USR-B, reboots under
//! keel-locksmith's etcd-lock (the semaphore in a keel-store on the host), comes up on
//! USR-B, passes its health gate, is blessed, and gives the slot back.

use keel_images::qemu::{HOST_ALIAS, Node, NodeOptions, ensure_ssh_key};
use keel_tests::image::{node_dir, shared_image};
use keel_tests::update_server::UpdateServer;
use std::path::Path;
use std::time::{Duration, Instant};

const OMAHA_GUEST_PORT: u16 = 8080;

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
}

/// One node on image 1.0.0, a keel-store and an Omaha server offering `payload` on the
/// host, both reachable from the guest.
struct Fleet {
    node: Node,
    server: UpdateServer,
    store: keel_tests::Server,
    start: Instant,
}

impl Fleet {
    fn start(name: &str, payload: &Path, payload_name: &str, version: &str) -> Fleet {
        let (image, m1) = shared_image("1.0.0");
        let store = keel_tests::Server::start(keel_tests::Flavor::Keel);
        let server = UpdateServer::start(
            std::fs::read(payload).unwrap(),
            payload_name,
            version,
            &format!("http://{HOST_ALIAS}:{OMAHA_GUEST_PORT}"),
        );
        let dir = node_dir(name);
        let (_, key) = ensure_ssh_key(&dir).unwrap();
        let cc = dir.join("cloud-config.yml");
        std::fs::write(&cc, update_cloud_config(name, &key)).unwrap();
        let mut o = NodeOptions::new(name, &image.join(&m1.disk), &dir);
        o.cloud_config = Some(cc);
        o.relay = Some(keel_tests::server::workspace_bin(
            "keel-images",
            "KEEL_IMAGES_BIN",
        ));
        o.guest_forwards.push((2379, store.addr().port()));
        o.guest_forwards.push((OMAHA_GUEST_PORT, server.port));
        let start = Instant::now();
        let node = Node::start(o).unwrap();
        Fleet {
            node,
            server,
            store,
            start,
        }
    }

    /// Poll the guest's updater status and the host store's reboot group (every 5 s,
    /// up to 5 min) until `done(status, locksmith status)`; returns the updater status.
    fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&serde_json::Value, &str) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let v = self.updater_status();
            let group = keel_tests::image::locksmithctl(&self.store.client_url(), &["status"]);
            if done(&v, &group) {
                eprintln!(
                    "[{:>5.1}s] {what}: {v}\n{group}",
                    self.start.elapsed().as_secs_f64()
                );
                return v;
            }
            assert!(Instant::now() < deadline, "not {what}: {v}\n{group}");
            std::thread::sleep(Duration::from_secs(5));
        }
    }

    /// The updater recorded the rollback of `version` and told the Omaha server
    /// (error 44).
    fn rollback_reported(&self, v: &serde_json::Value, version: &str) -> bool {
        v["state"]["rolled_back"].to_string().contains(version)
            && self
                .server
                .requests()
                .iter()
                .any(|r| r.contains("errorcode=\"44\""))
    }

    /// `keel-updater status --json` in the guest.
    fn updater_status(&self) -> serde_json::Value {
        let status = self
            .node
            .ssh_ok(
                "root",
                "keel-updater status --json",
                Duration::from_secs(120),
            )
            .unwrap();
        serde_json::from_str(&status).unwrap()
    }
}

#[test]
fn vm_update_reboot_under_lock_and_bless() {
    let (next, m2) = shared_image("1.1.0");
    let f = Fleet::start("update-1", &next.join(&m2.payload), &m2.payload, "1.1.0");
    let (node, server, start) = (&f.node, &f.server, f.start);
    let ctl = |args: &[&str]| keel_tests::image::locksmithctl(&f.store.client_url(), args);
    let first = node.wait_ready(1, Duration::from_secs(480)).unwrap();
    eprintln!(
        "[{:>5.1}s] first boot: {first}",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(field(&first, "version"), Some("1.0.0"));
    assert_eq!(field(&first, "slot"), Some("A"));

    // The updater installs, keel-locksmith takes the slot and reboots; QEMU is relaunched.
    let second = node.wait_ready(2, Duration::from_secs(900)).unwrap();
    eprintln!(
        "[{:>5.1}s] second boot: {second}",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(field(&second, "version"), Some("1.1.0"), "{second}");
    assert_eq!(field(&second, "slot"), Some("B"), "{second}");
    assert_eq!(node.launches(), 2, "one reboot");

    // Health gate passes → USR-B blessed; the slot goes back to the store.
    let v = f.wait_until("blessed and released", |v, free| {
        v["slots"][1]["ok"] == true && free.contains("Available: 1")
    });
    assert_eq!(v["booted_slot"], "USR-B");
    assert_eq!(v["next_boot"], "USR-B");
    // Omaha saw the download start and finish, and the completed update after the reboot.
    let events = server.events();
    eprintln!("omaha events: {events:?}");
    for (t, what) in [
        (13, "download started"),
        (14, "download finished"),
        (3, "update complete"),
    ] {
        assert!(
            events.iter().any(|(et, _)| *et == t),
            "no {what} event: {events:?}"
        );
    }
    let history = ctl(&["history"]);
    eprintln!("{history}");
}

/// The cloud-config of a node that checks every 10 s against the host's Omaha server
/// and reboots under etcd-lock in the host's store.
fn update_cloud_config(name: &str, key: &str) -> String {
    format!(
        r#"#cloud-config
hostname: {name}
users:
  - name: root
    ssh_authorized_keys: ["{key}"]
write_files:
  - path: /etc/keel/updater.d/50-test.conf
    content: |
      CHECK_INTERVAL=10s
      HEALTH_GRACE=5s
      HEALTH_TIMEOUT=30s
coreos:
  update:
    server: http://{HOST_ALIAS}:{OMAHA_GUEST_PORT}/v1/update/
    reboot-strategy: etcd-lock
  locksmith:
    endpoint: http://{HOST_ALIAS}:2379
"#
    )
}

#[test]
fn vm_unbootable_update_falls_back_and_is_not_retried() {
    // Issue 10 scenario 2, second case: a USR that fails before userspace (no systemd).
    let (bad, m3) =
        keel_tests::image::shared_image_with("1.2.0-nosystemd", &["usr/lib/systemd/systemd"]);
    let f = Fleet::start(
        "rollback-1",
        &bad.join(&m3.payload),
        &m3.payload,
        "1.2.0-nosystemd",
    );
    let (node, server, start) = (&f.node, &f.server, f.start);
    let first = node.wait_ready(1, Duration::from_secs(480)).unwrap();
    eprintln!(
        "[{:>5.1}s] first boot: {first}",
        start.elapsed().as_secs_f64()
    );
    // Install, reboot under the lock, three tries of USR-B that die in the initramfs,
    // then GRUB falls back to USR-A by itself.
    let second = node.wait_ready(2, Duration::from_secs(900)).unwrap();
    eprintln!(
        "[{:>5.1}s] after the tries: {second}",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(field(&second, "version"), Some("1.0.0"), "{second}");
    assert_eq!(field(&second, "slot"), Some("A"), "{second}");
    let tries = keel_updater::boot::TRIES as usize;
    let console = node.console();
    let b_boots = console
        .lines()
        .filter(|l| l.contains("keel-initramfs: slot B:"))
        .count();
    assert_eq!(b_boots, tries, "USR-B tried {b_boots} times");
    // Each try ends before userspace: the initramfs finds no init in USR-B, the kernel
    // panics and reboots (`panic=5`), and QEMU is relaunched.
    let panics = console.matches("Kernel panic").count();
    assert_eq!(panics, tries, "expected a panic per try of USR-B");
    assert_eq!(node.launches() as usize, 2 + tries);
    // The updater records and reports the rollback, and does not install 1.2.0 again.
    let v = f.wait_until("rolled back and reported", |v, _| {
        f.rollback_reported(v, "1.2.0-nosystemd")
    });
    assert_eq!(v["booted_slot"], "USR-A");
    assert_eq!(v["next_boot"], "USR-A");
    let checks_before = server.requests().len();
    std::thread::sleep(Duration::from_secs(40));
    let events = server.events();
    eprintln!("omaha events: {events:?}");
    assert!(
        server.requests().len() > checks_before,
        "the node stopped checking"
    );
    assert_eq!(
        events.iter().filter(|(t, _)| *t == 13).count(),
        1,
        "downloaded again: {events:?}"
    );
}

#[test]
fn vm_update_failing_its_health_gate_is_rebooted_until_grub_falls_back() {
    // Issue 10 scenario 2, first case: a USR that boots but fails its health gate (its
    // sshd is missing, so ssh.service fails and "no failed units" never holds).
    let (bad, m4) = keel_tests::image::shared_image_with("1.3.0-nossh", &["usr/sbin/sshd"]);
    let f = Fleet::start(
        "unhealthy-1",
        &bad.join(&m4.payload),
        &m4.payload,
        "1.3.0-nossh",
    );
    let (node, start) = (&f.node, f.start);
    let ctl = |args: &[&str]| keel_tests::image::locksmithctl(&f.store.client_url(), args);
    let first = node.wait_ready(1, Duration::from_secs(480)).unwrap();
    eprintln!(
        "[{:>5.1}s] first boot: {first}",
        start.elapsed().as_secs_f64()
    );
    // Install, reboot under the lock; each try of USR-B reaches userspace, fails the
    // gate after 30 s and is rebooted by keel-locksmith (still holding the slot); then
    // GRUB falls back to USR-A by itself.
    let tries = keel_updater::boot::TRIES as usize;
    let fallback = node
        .wait_ready(2 + tries, Duration::from_secs(1500))
        .unwrap();
    eprintln!(
        "[{:>5.1}s] after the tries: {fallback}",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(field(&fallback, "version"), Some("1.0.0"), "{fallback}");
    assert_eq!(field(&fallback, "slot"), Some("A"), "{fallback}");
    let console = node.console();
    let b_ready = console
        .lines()
        .filter(|l| l.contains("keel-ready") && l.contains("version=1.3.0-nossh"))
        .count();
    assert_eq!(b_ready, tries, "USR-B booted {b_ready} times:\n{console}");
    assert_eq!(node.launches() as usize, 2 + tries);
    // The rollback is recorded and reported; keel-locksmith records the failed update
    // and gives the slot back.
    let v = f.wait_until("rolled back, reported and released", |v, free| {
        f.rollback_reported(v, "1.3.0-nossh") && free.contains("Available: 1")
    });
    assert_eq!(v["booted_slot"], "USR-A");
    assert_eq!(v["next_boot"], "USR-A");
    let history = ctl(&["history"]);
    eprintln!("{history}");
    assert!(history.contains("1.3.0-nossh"), "{history}");
}
