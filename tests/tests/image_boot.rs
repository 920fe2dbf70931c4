//! The Keel image booted in QEMU (TCG): every agent up, the cloud-config from a
//! config-2 drive applied through the guest's real systemd and D-Bus, `/usr` read-only on
//! USR-A, ROOT grown, and a broken cloud-config refused without losing the host.

use base64::Engine;
use keel_images::qemu::{Node, NodeOptions};
use keel_tests::image::{node_dir, shared_image};
use std::io::Write;
use std::time::{Duration, Instant};

const BOOT_TIMEOUT: Duration = Duration::from_secs(480);
const SSH_TIMEOUT: Duration = Duration::from_secs(120);

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
}

#[test]
fn vm_image_boots_and_applies_cloud_config() {
    let (image, manifest) = shared_image("1.0.0");
    let dir = node_dir("boots");
    let (_, key) = keel_images::qemu::ensure_ssh_key(&dir).unwrap();
    let gz_text = b"gzip binary content\n";
    let cc = format!(
        r#"#cloud-config
hostname: keel-test-1
users:
  - name: root
    ssh_authorized_keys: ["{key}"]
  - name: core
    groups: [sudo]
    ssh_authorized_keys: ["{key}"]
write_files:
  - path: /etc/keel-test/plain
    permissions: '0640'
    content: |
      plain text
  - path: /etc/keel-test/b64
    encoding: b64
    content: {b64}
  - path: /etc/keel-test/gzip
    encoding: gzip
    content: !!binary {gz}
  - path: /etc/keel-test/gz-b64
    encoding: gz+b64
    content: {gzb64}
  - path: /var/lib/keel-test/deep/owned
    owner: core
    content: owned by core
coreos:
  etcd2:
    name: keel-test-1
    listen-client-urls: http://0.0.0.0:2379
    advertise-client-urls: http://127.0.0.1:2379
  update:
    reboot-strategy: etcd-lock
  locksmith:
    endpoint: http://127.0.0.1:2379
  units:
    - name: etcd2.service
      command: start
    - name: hello.service
      command: start
      content: |
        [Unit]
        Description=cloud-config test unit
        [Service]
        Type=oneshot
        RemainAfterExit=yes
        ExecStart=/bin/sh -c 'echo hello from cloud-config > /run/hello'
"#,
        b64 = b64(b"base64 text\n"),
        gz = b64(&gz(gz_text)),
        gzb64 = b64(&gz(b"gzip+base64 text\n")),
    );
    let cc_path = dir.join("cloud-config.yml");
    std::fs::write(&cc_path, cc).unwrap();
    let store_port = keel_images::qemu::free_port();
    let mut o = NodeOptions::new("boots", &image.join(&manifest.disk), &dir);
    o.cloud_config = Some(cc_path);
    o.forwards.push((store_port, 2379));
    let start = Instant::now();
    let node = Node::start(o).unwrap();
    let ready = node.wait_ready(1, BOOT_TIMEOUT).unwrap();
    let wall = start.elapsed().as_secs_f64();
    eprintln!("boot: {ready} (QEMU start → ready: {wall:.1} s)");
    assert_eq!(field(&ready, "version"), Some("1.0.0"), "{ready}");
    assert_eq!(field(&ready, "slot"), Some("A"), "{ready}");
    for agent in [
        "keel-store",
        "keel-locksmith",
        "keel-updater",
        "keel-cloudinit",
        "ssh",
    ] {
        assert_eq!(field(&ready, agent), Some("active"), "{agent} in {ready}");
    }
    assert_eq!(field(&ready, "host"), Some("keel-test-1"), "{ready}");

    let sh = |cmd: &str| node.ssh_ok("root", cmd, SSH_TIMEOUT).unwrap();
    // Files in every encoding, with their modes and owners.
    assert_eq!(sh("cat /etc/keel-test/plain"), "plain text\n");
    assert_eq!(sh("stat -c %a /etc/keel-test/plain").trim(), "640");
    assert_eq!(sh("cat /etc/keel-test/b64"), "base64 text\n");
    assert_eq!(sh("cat /etc/keel-test/gzip").as_bytes(), gz_text);
    assert_eq!(sh("cat /etc/keel-test/gz-b64"), "gzip+base64 text\n");
    assert_eq!(
        sh("stat -c %U /var/lib/keel-test/deep/owned").trim(),
        "core"
    );
    // Hostname through hostnamed, the unit through systemd's D-Bus API.
    assert_eq!(sh("hostname").trim(), "keel-test-1");
    assert_eq!(sh("cat /etc/hostname").trim(), "keel-test-1");
    assert_eq!(sh("cat /run/hello"), "hello from cloud-config\n");
    assert_eq!(sh("systemctl is-active hello.service").trim(), "active");
    // The user and its key: core logs in and has sudo.
    assert_eq!(
        node.ssh_ok("core", "id -un; sudo -n id -u", SSH_TIMEOUT)
            .unwrap(),
        "core\n0\n"
    );
    // keel-store configured by coreos.etcd2 and serving the host through the forward.
    let env = sh("systemctl show -p Environment keel-store.service");
    assert!(env.contains("ETCD_NAME=keel-test-1"), "{env}");
    assert!(
        env.contains("ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379"),
        "{env}"
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{store_port}").parse().unwrap();
    let put = keel_tests::http::send(
        addr,
        &keel_tests::Req::put("/v2/keys/from-host", "value=hello"),
        Duration::from_secs(30),
    )
    .unwrap()
    .text();
    assert!(put.contains("\"value\":\"hello\""), "{put}");
    assert!(sh("cat /etc/coreos/update.conf").contains("REBOOT_STRATEGY=etcd-lock"));

    // /usr: USR-A, read-only; ROOT grown to the 6 GiB overlay.
    let usr_dev = sh("findmnt -no SOURCE /usr").trim().to_string();
    let usr_a = sh("readlink -f /dev/disk/by-partlabel/USR-A")
        .trim()
        .to_string();
    assert_eq!(usr_dev, usr_a);
    assert!(sh("findmnt -no OPTIONS /usr").split(',').any(|o| o == "ro"));
    let touch = node.ssh("root", "touch /usr/keel-test").unwrap();
    assert!(!touch.status.success());
    assert!(String::from_utf8_lossy(&touch.stderr).contains("Read-only file system"));
    let root_bytes: u64 = sh("df -B1 --output=size / | tail -1")
        .trim()
        .parse()
        .unwrap();
    // The image's ROOT is 1 GiB; the overlay disk leaves it about 3.7 GiB.
    assert!(root_bytes > 3 << 30, "ROOT not grown: {root_bytes}");
    assert!(sh("test -e /var/lib/keel/root-grown && echo grown").contains("grown"));
    // The updater sees both slots and the booted one.
    let status = sh("keel-updater status --json");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    eprintln!("keel-updater status: {v}");
    assert_eq!(v["booted_slot"], "USR-A", "{v}");
    assert_eq!(v["next_boot"], "USR-A", "{v}");
    let labels: Vec<&str> = v["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["label"].as_str())
        .collect();
    assert_eq!(labels, ["USR-A", "USR-B"], "{v}");
    // os-release stamped with the build's version.
    assert!(sh("cat /etc/os-release").contains("VERSION_ID=1.0.0"));
    // No unit failed on the way up.
    assert_eq!(
        sh("systemctl list-units --failed --plain --no-legend | wc -l").trim(),
        "0",
        "{}",
        sh("systemctl list-units --failed")
    );
}

#[test]
fn vm_bad_cloud_config_is_refused_and_host_stays_up() {
    let (image, manifest) = shared_image("1.0.0");
    let dir = node_dir("bad-config");
    let cc_path = dir.join("cloud-config.yml");
    // Line 3 has an error; the valid parts (hostname, the file) must not be applied.
    std::fs::write(
        &cc_path,
        "#cloud-config\nhostname: should-not-apply\nwrite_files: not-a-list\n",
    )
    .unwrap();
    let mut o = NodeOptions::new("bad-config", &image.join(&manifest.disk), &dir);
    o.cloud_config = Some(cc_path);
    // This one comes through QEMU fw_cfg only (the other tests use the config-2 drive).
    o.config_drive = false;
    o.fw_cfg = true;
    let node = Node::start(o).unwrap();
    let ready = node.wait_ready(1, BOOT_TIMEOUT).unwrap();
    eprintln!("boot: {ready}");
    assert_eq!(field(&ready, "keel-cloudinit"), Some("failed"), "{ready}");
    assert_eq!(
        field(&ready, "host"),
        Some("keel"),
        "nothing applied: {ready}"
    );
    for agent in ["keel-locksmith", "keel-updater", "ssh"] {
        assert_eq!(field(&ready, agent), Some("active"), "{agent} in {ready}");
    }
    // The refusal names the line, on the console an operator would look at.
    let console = node.console();
    assert!(
        console
            .lines()
            .any(|l| l.contains("line 3") && l.contains("write_files")),
        "no error naming line 3 on the console:\n{console}"
    );
    // Reachable: sshd answers on the forwarded port.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", node.info.ssh_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut banner = [0u8; 8];
    std::io::Read::read_exact(&mut s, &mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
}

#[test]
fn vm_two_nodes_share_a_store_on_the_host() {
    let (image, manifest) = shared_image("1.0.0");
    let store = keel_tests::Server::start(keel_tests::Flavor::Keel);
    let ctl = |args: &[&str]| keel_tests::image::locksmithctl(&store.client_url(), args);
    ctl(&["set-max", "2"]);
    let mut nodes = Vec::new();
    for i in 1..=2 {
        let name = format!("fleet-{i}");
        let dir = node_dir(&name);
        let (_, key) = keel_images::qemu::ensure_ssh_key(&dir).unwrap();
        let cc = dir.join("cloud-config.yml");
        std::fs::write(
            &cc,
            format!(
                "#cloud-config\nhostname: {name}\nusers:\n  - name: root\n    ssh_authorized_keys: [\"{key}\"]\n\
                 coreos:\n  update:\n    reboot-strategy: etcd-lock\n  locksmith:\n    endpoint: http://{}:2379\n",
                keel_images::qemu::HOST_ALIAS
            ),
        )
        .unwrap();
        let mut o = NodeOptions::new(&name, &image.join(&manifest.disk), &dir);
        o.cloud_config = Some(cc);
        o.guest_forwards.push((2379, store.addr().port()));
        o.relay = Some(keel_tests::server::workspace_bin(
            "keel-images",
            "KEEL_IMAGES_BIN",
        ));
        nodes.push(Node::start(o).unwrap());
    }
    let mut ids = Vec::new();
    for n in &nodes {
        let ready = n.wait_ready(1, BOOT_TIMEOUT).unwrap();
        eprintln!("{ready}");
        assert_eq!(field(&ready, "keel-locksmith"), Some("active"), "{ready}");
        // Each node takes a slot in the host's store through QEMU's user network.
        let out = n
            .ssh_ok(
                "root",
                &format!(
                    "keel-locksmith lock --reason fleet-test --endpoint http://{}:2379 && cat /etc/machine-id",
                    keel_images::qemu::HOST_ALIAS
                ),
                SSH_TIMEOUT,
            )
            .unwrap();
        ids.push(out.lines().last().unwrap().trim().to_string());
    }
    assert_ne!(ids[0], ids[1], "each node has its own machine id");
    let status = ctl(&["status"]);
    for id in &ids {
        assert!(status.contains(id.as_str()), "{id} not holding: {status}");
    }
    assert!(status.contains("fleet-test"), "{status}");
}
