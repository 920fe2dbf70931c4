//! Booted Keel nodes updating from the host: a keel-store for keel-locksmith's
//! etcd-lock and an Omaha + payload server, both reachable from every guest, and nodes
//! on a cloud-config that checks for updates every 10 s and reboots under the lock.

use crate::image::{locksmithctl, node_dir, shared_image};
use crate::update_server::UpdateServer;
use keel_images::qemu::{HOST_ALIAS, Node, NodeOptions, ensure_ssh_key};
use std::path::Path;
use std::time::{Duration, Instant};

/// Where guests reach the Omaha server.
pub const OMAHA_GUEST_PORT: u16 = 8080;

/// `key=value` out of a `keel-ready` console line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
}

/// The host side of a fleet: a keel-store and an Omaha server offering one payload.
#[derive(Debug)]
pub struct Services {
    pub store: crate::Server,
    pub server: UpdateServer,
}

impl Services {
    /// Serves `payload` (file name `payload_name`) as `version`.
    pub fn start(payload: &Path, payload_name: &str, version: &str) -> Services {
        let store = crate::Server::start(crate::Flavor::Keel);
        let server = UpdateServer::start(
            std::fs::read(payload).expect("read the payload"),
            payload_name,
            version,
            &format!("http://{HOST_ALIAS}:{OMAHA_GUEST_PORT}"),
        );
        Services { store, server }
    }

    /// `keel-locksmith ARGS` against the store.
    pub fn locksmithctl(&self, args: &[&str]) -> String {
        locksmithctl(&self.store.client_url(), args)
    }

    /// Boots node `name` on the image of version 1.0.0 with the update cloud-config plus
    /// `extra`.
    pub fn boot(&self, name: &str, extra: &Extra) -> Node {
        let (image, m1) = shared_image("1.0.0");
        let dir = node_dir(name);
        let (_, key) = ensure_ssh_key(&dir).expect("node SSH key");
        let cc = dir.join("cloud-config.yml");
        std::fs::write(&cc, update_cloud_config(name, &key, extra)).expect("cloud-config");
        let mut o = NodeOptions::new(name, &image.join(&m1.disk), &dir);
        o.cloud_config = Some(cc);
        o.relay = Some(crate::server::workspace_bin(
            "keel-images",
            "KEEL_IMAGES_BIN",
        ));
        o.guest_forwards.push((2379, self.store.addr().port()));
        o.guest_forwards.push((OMAHA_GUEST_PORT, self.server.port));
        Node::start(o).expect("start the node")
    }
}

/// One node on image 1.0.0 and the services it updates from.
#[derive(Debug)]
pub struct Fleet {
    pub node: Node,
    pub services: Services,
    pub start: Instant,
}

impl Fleet {
    /// Boots node `name`, offered `payload` as `version`; `extra` as in [`Services::boot`].
    pub fn start(
        name: &str,
        payload: &Path,
        payload_name: &str,
        version: &str,
        extra: &Extra,
    ) -> Fleet {
        let services = Services::start(payload, payload_name, version);
        let start = Instant::now();
        let node = services.boot(name, extra);
        Fleet {
            node,
            services,
            start,
        }
    }

    pub fn server(&self) -> &UpdateServer {
        &self.services.server
    }

    /// Seconds since the node started, for the log.
    pub fn log(&self, what: &str) {
        eprintln!("[{:>5.1}s] {what}", self.start.elapsed().as_secs_f64());
    }

    /// Poll the guest's updater status and the store's reboot group (every 5 s, up to
    /// 5 min) until `done(status, locksmith status)`; returns the updater status.
    pub fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&serde_json::Value, &str) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let v = updater_status(&self.node);
            let group = self.services.locksmithctl(&["status"]);
            if done(&v, &group) {
                self.log(&format!("{what}: {v}\n{group}"));
                return v;
            }
            assert!(Instant::now() < deadline, "not {what}: {v}\n{group}");
            std::thread::sleep(Duration::from_secs(5));
        }
    }

    /// The updater recorded the rollback of `version` and told the Omaha server
    /// (error 44).
    pub fn rollback_reported(&self, v: &serde_json::Value, version: &str) -> bool {
        v["state"]["rolled_back"].to_string().contains(version)
            && self
                .server()
                .requests()
                .iter()
                .any(|r| r.contains("errorcode=\"44\""))
    }
}

/// `keel-updater status --json` in the guest.
pub fn updater_status(node: &Node) -> serde_json::Value {
    let status = node
        .ssh_ok(
            "root",
            "keel-updater status --json",
            Duration::from_secs(120),
        )
        .expect("keel-updater status");
    serde_json::from_str(&status).expect("keel-updater status JSON")
}

/// More for a node's cloud-config.
#[derive(Debug, Default, Clone)]
pub struct Extra {
    /// `write_files` items (YAML, indented two spaces: `  - path: ...`).
    pub files: String,
    /// Keys under `coreos:` (YAML, indented two spaces: `  units: ...`).
    pub coreos: String,
}

/// The cloud-config of a node that checks every 10 s against the host's Omaha server
/// and reboots under etcd-lock in the host's store, plus `extra`.
pub fn update_cloud_config(name: &str, key: &str, extra: &Extra) -> String {
    let Extra { files, coreos } = extra;
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
{files}coreos:
  update:
    server: http://{HOST_ALIAS}:{OMAHA_GUEST_PORT}/v1/update/
    reboot-strategy: etcd-lock
  locksmith:
    endpoint: http://{HOST_ALIAS}:2379
{coreos}"#
    )
}
