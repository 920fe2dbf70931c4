//! Shared test helpers: a minimal Keel-like root and apply-into-root.
#![allow(dead_code)]

use keel_cloudinit::apply::{self, Outcome, Plan, PlanOptions};
use keel_cloudinit::metadata::Metadata;
use keel_cloudinit::systemd::root::RootManager;
use std::fs;
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A temp root with the account files of a Keel image (root, core and common groups).
pub fn base_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let w = |p: &str, c: &str| {
        let path = dir.path().join(p.trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, c).unwrap();
    };
    w(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\ncore:x:500:500:CoreOS Admin:/home/core:/bin/bash\n",
    );
    w(
        "/etc/shadow",
        "root:*:19000:0:99999:7:::\ncore:*:19000:0:99999:7:::\n",
    );
    w(
        "/etc/group",
        "root:x:0:\nshadow:x:42:\nusers:x:100:\ndocker:x:233:core\nsudo:x:150:core\ncore:x:500:\n",
    );
    w(
        "/etc/gshadow",
        "root:*::\nshadow:*::\nusers:*::\ndocker:!::core\nsudo:!::core\ncore:!::\n",
    );
    w("/etc/skel/.bashrc", "# keel skel\n");
    w("/usr/share/coreos/update.conf", "GROUP=stable\n");
    w(
        "/usr/lib/systemd/system/docker.service",
        "[Service]\nExecStart=/usr/bin/dockerd\n[Install]\nWantedBy=multi-user.target\n",
    );
    for shadow in ["etc/shadow", "etc/gshadow"] {
        let p = dir.path().join(shadow);
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(&p, Some(0), Some(42)).unwrap();
    }
    fs::create_dir_all(dir.path().join("home/core")).unwrap();
    std::os::unix::fs::chown(dir.path().join("home/core"), Some(500), Some(500)).unwrap();
    dir
}

/// Metadata as a cloud would give it.
pub fn metadata() -> Metadata {
    Metadata {
        private_ipv4: Some("10.0.0.5".parse().unwrap()),
        public_ipv4: Some("203.0.113.5".parse().unwrap()),
        hostname: Some("node-5".into()),
        ..Metadata::default()
    }
}

/// Fixed "today" so shadow lines are deterministic.
pub const TODAY: u64 = 20_000;

/// Loads, merges metadata, plans and executes into `root` with the root backend.
pub fn apply_bytes(root: &Path, bytes: &[u8], md: &Metadata) -> (Plan, Outcome, Vec<String>) {
    let mut doc = keel_cloudinit::load(bytes);
    assert!(doc.is_applicable(), "{}", doc.report.to_text());
    keel_cloudinit::metadata::apply_metadata(&mut doc.config, md);
    let mut opts = PlanOptions::new(root);
    opts.today_days = TODAY;
    opts.metadata = md.clone();
    opts.source = "test".into();
    let plan = apply::plan(&doc.config, &doc.scripts, &opts).unwrap();
    let mut mgr = RootManager::new(root);
    let outcome = apply::execute(&plan, root, &mut mgr).unwrap();
    (plan, outcome, mgr.recorded)
}

pub fn read(root: &Path, p: &str) -> String {
    fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap_or_else(|e| panic!("{p}: {e}"))
}

pub fn mode(root: &Path, p: &str) -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(root.join(p.trim_start_matches('/')))
        .unwrap()
        .mode()
        & 0o7777
}

pub fn owner(root: &Path, p: &str) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(root.join(p.trim_start_matches('/'))).unwrap();
    (m.uid(), m.gid())
}

pub fn link(root: &Path, p: &str) -> String {
    fs::read_link(root.join(p.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{p}: {e}"))
        .display()
        .to_string()
}
