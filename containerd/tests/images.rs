//! Images: OCI layouts and `docker save` archives built here, imported with digest and
//! signature checks, and run with rkt's flags.

use base64::Engine;
use ed25519_dalek::Signer;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_keel-containerd");

fn digest(b: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    )
}

/// A tar with `(path, contents, mode)` regular files and `(path, target)` symlinks.
fn tar_of(files: &[(&str, &[u8], u32)], links: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_cksum();
        b.append_data(&mut h, p, *data).unwrap();
    }
    for (p, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_cksum();
        b.append_link(&mut h, p, target).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

struct Layers {
    base: Vec<u8>,
    top: Vec<u8>,
    config: Vec<u8>,
}

fn layers() -> Layers {
    let busybox = std::fs::read("/usr/bin/busybox").unwrap();
    let base = tar_of(
        &[
            ("bin/busybox", &busybox, 0o755),
            ("etc/motd", b"old motd\n", 0o644),
            ("data/old", b"old\n", 0o644),
            ("app/keep", b"kept\n", 0o644),
        ],
        &[
            ("bin/sh", "busybox"),
            ("bin/cat", "busybox"),
            ("bin/ls", "busybox"),
            ("bin/echo", "busybox"),
            ("bin/touch", "busybox"),
        ],
    );
    let top = tar_of(
        &[
            ("etc/.wh.motd", b"", 0o644),
            ("data/.wh..wh..opq", b"", 0o644),
            ("data/new", b"new\n", 0o644),
            ("app/hello.txt", b"hello from the image\n", 0o644),
        ],
        &[],
    );
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["cat hello.txt; echo $GREETING"], "Env": ["GREETING=hi"], "WorkingDir": "/app"},
        "rootfs": {"type": "layers", "diff_ids": [digest(&base), digest(&top)]}
    }))
    .unwrap();
    Layers { base, top, config }
}

/// An OCI image layout directory with gzip layers.
fn oci_layout(dir: &Path, l: &Layers) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| {
        let d = digest(b);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), b).unwrap();
        d
    };
    let (gb, gt) = (gzip(&l.base), gzip(&l.top));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(&l.config), "size": l.config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(&gb), "size": gb.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(&gt), "size": gt.len()}
        ]
    }))
    .unwrap();
    let md = put(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "demo:1"}}]}).to_string(),
    )
    .unwrap();
    md
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn rt(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--root")
            .arg(self.dir.path().join("state"))
            .arg("--store")
            .arg(self.dir.path().join("store"))
            .args(args)
            .output()
            .unwrap()
    }

    /// For detached runs: the container keeps its stdio, so no pipes.
    fn rt_detached(&self, args: &[&str]) -> bool {
        Command::new(BIN)
            .arg("--root")
            .arg(self.dir.path().join("state"))
            .arg("--store")
            .arg(self.dir.path().join("store"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn import_oci_layout_and_run_with_whiteouts_and_limits() {
    let e = Env::new();
    let layout = e.path("layout");
    oci_layout(&layout, &layers());
    let out = e.rt(&["image", "import", layout.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&e.rt(&["image", "ls"]).stdout).contains("demo:1"));
    let out = e.rt(&["run", "demo:1"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "hello from the image\nhi\n");
    // Whiteouts: the motd is gone, /data is only the top layer's, lower files stay.
    let out = e.rt(&[
        "run",
        "demo:1",
        "--",
        "ls /etc /data; cat /app/keep; echo $FOO",
    ]);
    assert_eq!(
        text(&out.stdout),
        "/data:\nnew\n\n/etc:\nkept\n\n",
        "{}",
        text(&out.stderr)
    );
    let out = e.rt(&["run", "--env", "FOO=bar", "demo:1", "--", "echo $FOO"]);
    assert_eq!(text(&out.stdout), "bar\n");
    // Exit codes pass through.
    assert_eq!(
        e.rt(&["run", "demo:1", "--", "exit 9"]).status.code(),
        Some(9)
    );
    // rkt's flags: limits land in the cgroups; --net=host sees the host's interfaces.
    assert!(e.rt_detached(&[
        "run",
        "-d",
        "--name",
        "lim",
        "--cpu",
        "500m",
        "--memory",
        "64Mi",
        "demo:1",
        "--",
        "busybox sleep 20"
    ]));
    let quota = std::fs::read_to_string("/sys/fs/cgroup/cpu/keel/lim/cpu.cfs_quota_us").unwrap();
    assert_eq!(quota.trim(), "50000");
    let mem =
        std::fs::read_to_string("/sys/fs/cgroup/memory/keel/lim/memory.limit_in_bytes").unwrap();
    assert_eq!(mem.trim(), (64u64 << 20).to_string());
    // Its rootfs is an overlay of the layers unpacked once in the store, whiteouts as
    // overlayfs reads them; delete unmounts it and removes the generated bundle.
    let bundle = e.path("store/containers/lim");
    let overlay_at = format!("{} ", bundle.join("rootfs").display());
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.contains(&overlay_at) && l.contains(" - overlay "))
    };
    assert!(mounted(), "no overlay at {overlay_at}");
    let unpacked: Vec<PathBuf> = std::fs::read_dir(e.path("store/layers"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .collect();
    assert_eq!(unpacked.len(), 2, "{unpacked:?}");
    assert!(unpacked.iter().any(|l| {
        use std::os::unix::fs::FileTypeExt;
        std::fs::symlink_metadata(l.join("etc/motd")).is_ok_and(|m| m.file_type().is_char_device())
    }));
    assert!(e.rt(&["delete", "-f", "lim"]).status.success());
    assert!(!mounted() && !bundle.exists());
    let host_ifaces = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .count();
    let out = e.rt(&["run", "--net", "host", "demo:1", "--", "cat /proc/net/dev"]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        host_ifaces,
        "{}",
        text(&out.stdout)
    );
    // Volumes: read-only bind.
    std::fs::write(e.path("shared.txt"), "from the host\n").unwrap();
    let vol = format!("{}:/mnt:ro", e.dir.path().display());
    let out = e.rt(&[
        "run",
        "--volume",
        &vol,
        "demo:1",
        "--",
        "cat /mnt/shared.txt; touch /mnt/x 2>&1 || echo read-only",
    ]);
    let so = text(&out.stdout);
    assert!(
        so.contains("from the host") && so.contains("read-only"),
        "{so}"
    );
    // Bad flags name themselves.
    let out = e.rt(&["run", "--memory", "lots", "demo:1"]);
    assert!(!out.status.success() && text(&out.stderr).contains("--memory"));
    // rm + gc drop the blobs.
    assert!(e.rt(&["image", "rm", "demo:1"]).status.success());
    assert!(text(&e.rt(&["image", "gc"]).stdout).contains("removed 4 blobs"));
    assert_eq!(
        std::fs::read_dir(e.path("store/layers")).unwrap().count(),
        0
    );
}

#[test]
fn run_relays_signals_and_replaces_what_an_unfinished_run_left() {
    let e = Env::new();
    let layout = e.path("layout");
    oci_layout(&layout, &layers());
    assert!(
        e.rt(&["image", "import", layout.to_str().unwrap()])
            .status
            .success()
    );
    // A run that never finished (the host lost power) left its bundle but no state.
    std::fs::create_dir_all(e.path("store/containers/app/rootfs")).unwrap();
    let child = Command::new(BIN)
        .arg("--root")
        .arg(e.path("state"))
        .arg("--store")
        .arg(e.path("store"))
        .args([
            "run",
            "--name",
            "app",
            "demo:1",
            "--",
            "trap 'echo got TERM; exit 3' TERM; touch /app/up; while :; do busybox sleep 0.1; done",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Running, with its trap in place (it touches a file in its rootfs after the trap).
    let up = e.path("store/containers/app/rootfs/app/up");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !up.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the container never came up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // systemd stopping the unit signals the runtime: the container's init gets it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "got TERM\n");
    assert!(
        text(&out.stderr).contains("left by an earlier run of app"),
        "{}",
        text(&out.stderr)
    );
    assert!(!e.path("store/containers/app").exists());
    // A name whose container still lives is refused, not replaced.
    assert!(e.rt_detached(&[
        "run",
        "-d",
        "--name",
        "live",
        "demo:1",
        "--",
        "busybox sleep 20"
    ]));
    let out = e.rt(&["run", "--name", "live", "demo:1", "--", "true"]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("container live already exists"),
        "{}",
        text(&out.stderr)
    );
    assert!(e.rt(&["delete", "-f", "live"]).status.success());
}

#[test]
fn tampered_layer_and_signatures_are_refused() {
    let e = Env::new();
    let layout = e.path("layout");
    let manifest_digest = oci_layout(&layout, &layers());
    // Tamper with the biggest blob (the base layer).
    let blobs = layout.join("blobs/sha256");
    let biggest = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .max_by_key(|f| f.metadata().unwrap().len())
        .unwrap()
        .path();
    let original = std::fs::read(&biggest).unwrap();
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    std::fs::write(&biggest, &bad).unwrap();
    let out = e.rt(&["image", "import", layout.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("digest mismatch") && err.contains("layer 0"),
        "{err}"
    );
    std::fs::write(&biggest, &original).unwrap();
    // Trust a key: unsigned and wrongly signed images are refused, a good signature passes.
    let key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let b64 = base64::engine::general_purpose::STANDARD;
    std::fs::write(
        e.path("release.pub"),
        b64.encode(key.verifying_key().as_bytes()),
    )
    .unwrap();
    assert!(
        e.rt(&["image", "trust", e.path("release.pub").to_str().unwrap()])
            .status
            .success()
    );
    let out = e.rt(&["image", "import", layout.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out.stderr).contains("signed by no trusted key"));
    let other = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    std::fs::write(
        e.path("bad.sig"),
        b64.encode(other.sign(manifest_digest.as_bytes()).to_bytes()),
    )
    .unwrap();
    let out = e.rt(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--signature",
        e.path("bad.sig").to_str().unwrap(),
    ]);
    assert!(!out.status.success() && text(&out.stderr).contains("signed by no trusted key"));
    std::fs::write(
        e.path("good.sig"),
        b64.encode(key.sign(manifest_digest.as_bytes()).to_bytes()),
    )
    .unwrap();
    let out = e.rt(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--signature",
        e.path("good.sig").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("signed by release.pub"));
}

#[test]
fn docker_save_archive() {
    let e = Env::new();
    let l = layers();
    let cfg_hex = digest(&l.config).trim_start_matches("sha256:").to_string();
    let manifest = json!([{"Config": format!("{cfg_hex}.json"), "RepoTags": ["dockerish:latest"], "Layers": ["a/layer.tar", "b/layer.tar"]}]);
    let archive = tar_of(
        &[
            ("manifest.json", manifest.to_string().as_bytes(), 0o644),
            (&format!("{cfg_hex}.json"), &l.config, 0o644),
            ("a/layer.tar", &l.base, 0o644),
            ("b/layer.tar", &l.top, 0o644),
        ],
        &[],
    );
    std::fs::write(e.path("image.tar"), &archive).unwrap();
    let out = e.rt(&["image", "import", e.path("image.tar").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = e.rt(&["run", "dockerish:latest"]);
    assert_eq!(
        text(&out.stdout),
        "hello from the image\nhi\n",
        "{}",
        text(&out.stderr)
    );
    // A layer that is not its diff_id is refused.
    let mut top = l.top.clone();
    top[600] ^= 1;
    let archive = tar_of(
        &[
            ("manifest.json", manifest.to_string().as_bytes(), 0o644),
            (&format!("{cfg_hex}.json"), &l.config, 0o644),
            ("a/layer.tar", &l.base, 0o644),
            ("b/layer.tar", &top, 0o644),
        ],
        &[],
    );
    std::fs::write(e.path("bad.tar"), &archive).unwrap();
    let out = e.rt(&[
        "image",
        "import",
        e.path("bad.tar").to_str().unwrap(),
        "--name",
        "bad",
    ]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("digest mismatch"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn not_an_image() {
    let e = Env::new();
    std::fs::write(e.path("junk.tar"), tar_of(&[("hello", b"x", 0o644)], &[])).unwrap();
    let out = e.rt(&["image", "import", e.path("junk.tar").to_str().unwrap()]);
    assert!(
        !out.status.success()
            && text(&out.stderr).contains("neither an OCI image layout nor a docker save archive")
    );
    let _: Value = json!({});
}
