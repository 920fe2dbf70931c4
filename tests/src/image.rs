//! The Keel image the booted-VM tests share: built once per set of inputs (the release
//! binaries, the image sources) under a file lock, so concurrent test processes reuse
//! one build.

use keel_images::build::{self, BuildOptions, Manifest};
use std::path::{Path, PathBuf};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Where test images and nodes live.
/// Cargo's target dir: `$CARGO_TARGET_DIR`, else the workspace's `target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

pub fn test_dir() -> PathBuf {
    target_dir().join("keel-images-test")
}

/// Builds (or reuses) the image of `version` from `target/release`; returns its
/// directory and manifest.
pub fn shared_image(version: &str) -> (PathBuf, Manifest) {
    shared_image_with(version, &[])
}

/// Like [`shared_image`], with paths removed from the tree (a deliberately broken image).
pub fn shared_image_with(version: &str, remove: &[&str]) -> (PathBuf, Manifest) {
    let root = test_dir();
    std::fs::create_dir_all(&root).expect("create the test image directory");
    let lock = std::fs::File::create(root.join(".lock")).expect("lock file");
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the test image directory");
    let out = root.join(format!("image-{version}"));
    let mut opts = BuildOptions::new(
        out.clone(),
        std::env::var_os("KEEL_IMAGES_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/keel-images")),
        version.to_string(),
        target_dir().join("release"),
    );
    opts.key = None;
    opts.remove = remove.iter().map(|s| s.to_string()).collect();
    let start = std::time::Instant::now();
    let m = build::build(&opts).expect("build the Keel image");
    eprintln!(
        "image {version}: {} (base {}, {:.1} s; assemble {:.1} s; this call {:.1} s)",
        out.display(),
        if m.base_cached { "cached" } else { "built" },
        m.base_seconds,
        m.assemble_seconds,
        start.elapsed().as_secs_f64()
    );
    (out, m)
}

/// A fresh directory for one test's node.
pub fn node_dir(test: &str) -> PathBuf {
    let d = test_dir().join("nodes").join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create the node directory");
    d
}

/// Runs `keel-locksmith ARGS --endpoint ENDPOINT` on the host; panics unless it succeeds.
pub fn locksmithctl(endpoint: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(crate::server::keel_locksmith_bin())
        .args(args)
        .args(["--endpoint", endpoint])
        .output()
        .expect("run keel-locksmith");
    assert!(out.status.success(), "keel-locksmith {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
