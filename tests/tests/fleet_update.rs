//! Issue 10, scenario 1 (update and bless) on a booted Keel image: a node on 1.0.0 (USR-A)
//! finds 1.1.0 on an Omaha server on the host, installs it into USR-B, reboots under
//! keel-locksmith's etcd-lock (the semaphore in a keel-store on the host), comes up on
//! USR-B, passes its health gate, is blessed, and gives the slot back.

use keel_tests::fleet::{Extra, Fleet, field};
use keel_tests::image::shared_image;
use std::time::Duration;

#[test]
fn vm_update_reboot_under_lock_and_bless() {
    let (next, m2) = shared_image("1.1.0");
    let f = Fleet::start(
        "update-1",
        &next.join(&m2.payload),
        &m2.payload,
        "1.1.0",
        &Extra::default(),
    );
    let (node, server, start) = (&f.node, f.server(), f.start);
    let ctl = |args: &[&str]| f.services.locksmithctl(args);
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
        &Extra::default(),
    );
    let (node, server, start) = (&f.node, f.server(), f.start);
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
        &Extra::default(),
    );
    let (node, start) = (&f.node, f.start);
    let ctl = |args: &[&str]| f.services.locksmithctl(args);
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

#[test]
fn vm_power_loss_mid_install_resumes_and_a_container_app_survives_reboots_and_the_update() {
    // Issue 10 scenarios 4 and 5: a cloud-config unit runs an app in a keel-containerd
    // container with `--memory=64M`; QEMU is killed while the updater writes USR-B.
    let (next, m2) = shared_image("1.1.0");
    let payload_len = std::fs::metadata(next.join(&m2.payload)).unwrap().len();
    let mut f = Fleet::start(
        "powerloss-1",
        &next.join(&m2.payload),
        &m2.payload,
        "1.1.0",
        &app_cloud_config(),
    );
    // The payload crawls (1 MiB/s) so the install is still writing when the power goes.
    f.server().set_rate(1 << 20);
    let first = f.node.wait_ready(1, Duration::from_secs(480)).unwrap();
    f.log(&format!("first boot: {first}"));
    assert_eq!(field(&first, "slot"), Some("A"), "{first}");
    app_is_up_and_limited(&f, "on the first boot", true);

    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while f.server().sent() < 40 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the install never got going: {} bytes sent",
            f.server().sent()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    f.node.kill();
    let sent = f.server().sent();
    f.log(&format!(
        "power off after {sent} of {payload_len} payload bytes"
    ));
    assert!(sent < payload_len, "the install had finished");
    let asked_before = f.server().ranges().len();
    f.server().set_rate(0);

    // Power back: the old slot boots, the app comes back, the install resumes.
    let mut o = f.node.options().clone();
    o.fresh = false;
    f.node = keel_images::qemu::Node::start(o).unwrap();
    let second = f.node.wait_ready(2, Duration::from_secs(480)).unwrap();
    f.log(&format!("boot after the power loss: {second}"));
    assert_eq!(field(&second, "version"), Some("1.0.0"), "{second}");
    assert_eq!(field(&second, "slot"), Some("A"), "{second}");
    app_is_up_and_limited(&f, "after the power loss", false);

    let third = f.node.wait_ready(3, Duration::from_secs(900)).unwrap();
    f.log(&format!("boot after the update: {third}"));
    assert_eq!(field(&third, "version"), Some("1.1.0"), "{third}");
    assert_eq!(field(&third, "slot"), Some("B"), "{third}");
    // Resumed, not restarted: after the header and manifest, the chunks are asked for
    // from the last one synced before the power went (a multiple of 8 MiB in), and
    // what was written before is not sent again.
    let asked: Vec<u64> = f.server().ranges()[asked_before..].to_vec();
    let again = f.server().sent() - sent;
    eprintln!("payload requests after the power loss start at {asked:?}; {again} bytes sent");
    let resumed_at = asked.iter().copied().max().unwrap_or(0);
    assert!(
        resumed_at >= 16 << 20 && again <= payload_len - (16 << 20),
        "the install started over instead of resuming: {asked:?}, {again} bytes sent again"
    );
    let v = f.wait_until("blessed and released", |v, free| {
        v["slots"][1]["ok"] == true && free.contains("Available: 1")
    });
    assert_eq!(v["booted_slot"], "USR-B");
    app_is_up_and_limited(&f, "after the update", false);
    systemd_driver_makes_a_scope(&f);
}

/// `keel-containerd --systemd-cgroup`: the container's cgroup is a transient scope
/// systemd made (limits in it), gone with the container.
fn systemd_driver_makes_a_scope(f: &Fleet) {
    let node = &f.node;
    ssh(
        node,
        "keel-containerd --systemd-cgroup run -d --name sd --memory 32Mi app:1 -- 'busybox sleep 300' \
         </dev/null >/dev/null 2>/tmp/sd.err || { cat /tmp/sd.err; exit 1; }",
    );
    let state = ssh(node, "keel-containerd state sd");
    let pid = serde_json::from_str::<serde_json::Value>(&state).unwrap()["pid"]
        .as_i64()
        .unwrap();
    let cgroup = ssh(node, &format!("cat /proc/{pid}/cgroup"));
    assert_eq!(cgroup.trim(), "0::/system.slice/keel-sd.scope", "{state}");
    let max = ssh(
        node,
        "cat /sys/fs/cgroup/system.slice/keel-sd.scope/memory.max; systemctl is-active keel-sd.scope",
    );
    assert_eq!(
        max.split_whitespace().collect::<Vec<_>>(),
        ["33554432", "active"]
    );
    ssh(node, "keel-containerd delete -f sd");
    let after = ssh(
        node,
        "systemctl is-active keel-sd.scope || true; test -e /sys/fs/cgroup/system.slice/keel-sd.scope && echo left || echo gone",
    );
    assert_eq!(
        after.split_whitespace().collect::<Vec<_>>(),
        ["inactive", "gone"],
        "{after}"
    );
    f.log("systemd driver: keel-sd.scope with memory.max 32 MiB, stopped with its container");
}

/// Checks (retrying while the unit starts) that the app's container runs in its own
/// cgroup v2 with `memory.max` = 64M; with `oom`, that an allocation beyond the limit
/// inside it is killed by the kernel while the app lives on.
fn app_is_up_and_limited(f: &Fleet, when: &str, oom: bool) {
    let node = &f.node;
    let state = wait_ssh(
        node,
        "keel-containerd state app",
        |out| out.contains("\"running\""),
        when,
    );
    let pid = serde_json::from_str::<serde_json::Value>(&state).unwrap()["pid"]
        .as_i64()
        .unwrap();
    let cgroup = ssh(node, &format!("cat /proc/{pid}/cgroup"));
    assert_eq!(cgroup.trim(), "0::/keel/app", "{when}: the app's cgroup");
    let max = ssh(node, "cat /sys/fs/cgroup/keel/app/memory.max");
    assert_eq!(max.trim(), "64000000", "{when}: memory.max");
    if oom {
        let out = ssh(
            node,
            "keel-containerd exec app /bin/busybox dd if=/dev/zero of=/dev/null bs=100M count=1; \
             echo rc=$?; cat /sys/fs/cgroup/keel/app/memory.events",
        );
        eprintln!("{when}: 100M allocation in the app's container: {out}");
        assert!(out.contains("rc=137"), "{when}: not killed: {out}");
        assert!(!out.contains("oom_kill 0"), "{when}: no OOM kill: {out}");
        let after = ssh(node, "keel-containerd state app");
        assert!(
            after.contains("\"running\""),
            "{when}: the app died: {after}"
        );
    }
    f.log(&format!("app {when}: running as pid {pid}, memory.max 64M"));
}

fn ssh(node: &keel_images::qemu::Node, command: &str) -> String {
    node.ssh_ok("root", command, Duration::from_secs(120))
        .unwrap()
}

/// Runs `command` in the guest every 2 s (up to 3 min) until `done(stdout)`.
fn wait_ssh(
    node: &keel_images::qemu::Node,
    command: &str,
    done: impl Fn(&str) -> bool,
    when: &str,
) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let out = node.ssh("root", command).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && done(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{when}: {command}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A unit (applied on every boot) that imports a busybox image and runs it with
/// `keel-containerd run --memory=64M`.
fn app_cloud_config() -> Extra {
    use base64::Engine;
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&busybox_image_tar()).unwrap();
    let image = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    Extra {
        files: format!(
            "  - path: /var/lib/keel-app/app.tar\n    encoding: gzip+base64\n    content: {image}\n"
        ),
        coreos: r#"  units:
    - name: keel-app.service
      command: start
      content: |
        [Unit]
        Description=An app in a keel-containerd container
        [Service]
        ExecStartPre=/usr/bin/keel-containerd image import /var/lib/keel-app/app.tar --name app:1
        ExecStart=/usr/bin/keel-containerd run --name app --memory=64M app:1 -- "trap 'exit 0' TERM; echo app up; while :; do busybox sleep 1; done"
        Restart=always
        TimeoutStopSec=15
"#
        .into(),
    }
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(b);
    format!(
        "sha256:{}",
        d.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// An OCI image layout (as a tar) of one layer: static busybox as `/bin/sh`.
fn busybox_image_tar() -> Vec<u8> {
    fn tar(entries: &[(&str, &[u8], u32)], links: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        for (path, target) in links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            h.set_cksum();
            b.append_link(&mut h, path, target).unwrap();
        }
        b.into_inner().unwrap()
    }
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let layer = tar(
        &[("bin/busybox", &busybox, 0o755)],
        &[("bin/sh", "busybox")],
    );
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/sh", "-c"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]}
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": layer.len()}]
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(&manifest), "size": manifest.len()}]
    })
    .to_string();
    let blob = |b: &[u8]| format!("blobs/{}", sha256(b).replace(':', "/"));
    let (lp, cp, mp) = (blob(&layer), blob(&config), blob(&manifest));
    tar(
        &[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644),
            ("index.json", index.as_bytes(), 0o644),
            (&lp, &layer, 0o644),
            (&cp, &config, 0o644),
            (&mp, &manifest, 0o644),
        ],
        &[],
    )
}
