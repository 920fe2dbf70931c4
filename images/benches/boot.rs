//! Image build and boot timings: `cargo bench -p keel-images --bench boot` (as root, with
//! the release binaries built). Builds the image (the Debian base from the cache when
//! present), then boots it `KEEL_BENCH_BOOTS` times (default 3) under TCG with the `up`
//! cloud-config and reports, per boot, QEMU start → `keel-ready` (every agent active) on
//! the host clock, the guest's uptime at that point and systemd's kernel/userspace split.

use keel_images::build::{self, BuildOptions};
use keel_images::cli::default_cloud_config;
use keel_images::qemu::{Node, NodeOptions, ensure_ssh_key};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = ws.join("target/keel-images-bench");
    let cache = std::env::var_os("KEEL_IMAGES_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/keel-images".into());
    let opts = BuildOptions::new(
        out.clone(),
        cache,
        "0.0.0-bench".into(),
        ws.join("target/release"),
    );
    let t = Instant::now();
    let m = build::build(&opts)?;
    println!(
        "build: {:.1} s (base {} {:.1} s, assembly {:.1} s); disk {} MiB apparent / {} MiB allocated, USR {} MiB, payload {} MiB",
        t.elapsed().as_secs_f64(),
        if m.base_cached { "cached" } else { "built" },
        m.base_seconds,
        m.assemble_seconds,
        m.disk_bytes >> 20,
        m.disk_allocated_bytes >> 20,
        m.usr_bytes >> 20,
        m.payload_bytes >> 20
    );
    let boots: usize = std::env::var("KEEL_BENCH_BOOTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut walls = Vec::new();
    for i in 1..=boots {
        let dir = out.join(format!("node-{i}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (_, key) = ensure_ssh_key(&dir)?;
        let cc = dir.join("cloud-config.yml");
        std::fs::write(&cc, default_cloud_config(&[key], "bench"))?;
        let mut o = NodeOptions::new("bench", &out.join(&m.disk), &dir);
        o.cloud_config = Some(cc);
        let start = Instant::now();
        let mut node = Node::start(o)?;
        let ready = node.wait_ready(1, Duration::from_secs(600))?;
        let wall = start.elapsed().as_secs_f64();
        let analyze = node
            .ssh_ok(
                "core",
                "systemd-analyze | head -1",
                Duration::from_secs(120),
            )
            .unwrap_or_default();
        let uptime = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("uptime="))
            .unwrap_or("?");
        println!(
            "boot {i}: QEMU start → all agents active {wall:.1} s; guest uptime {uptime} s; {}",
            analyze.trim()
        );
        walls.push(wall);
        node.kill();
    }
    walls.sort_by(f64::total_cmp);
    if !walls.is_empty() {
        println!(
            "median QEMU start → ready: {:.1} s over {} boots",
            walls[walls.len() / 2],
            walls.len()
        );
    }
    Ok(())
}
