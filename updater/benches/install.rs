//! Install throughput of a large image against the machine's limit.
//!
//! Builds an incompressible image (`KEEL_BENCH_MIB`, default 1024 MiB), its payload, and a
//! GPT disk with slots big enough; serves the payload from a loopback HTTP server (Range
//! requests, streamed from the file) and runs the release `keel-updater install` under
//! `/usr/bin/time` for its wall time and peak RSS. Baseline: `dd` of the same bytes into the
//! same slot with `conv=fsync` plus `sha256sum` of the image. Also the SHA-256 rate in
//! process and an install from the local file.
//!
//! Run: `cargo build --release -p keel-updater && cargo bench -p keel-updater --bench install`

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

async fn serve_file(State(path): State<PathBuf>, headers: HeaderMap) -> Response {
    let total = std::fs::metadata(&path).unwrap().len();
    let (start, end) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .map(|(a, b)| {
            (
                a.parse::<u64>().unwrap(),
                b.parse::<u64>().unwrap_or(total - 1).min(total - 1),
            )
        })
        .unwrap_or((0, total - 1));
    let mut f = tokio::fs::File::open(&path).await.unwrap();
    f.seek(std::io::SeekFrom::Start(start)).await.unwrap();
    let body = Body::from_stream(tokio_util_stream(f.take(end - start + 1)));
    Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{total}"),
        )
        .header(header::CONTENT_LENGTH, end - start + 1)
        .body(body)
        .unwrap()
}

fn tokio_util_stream(
    r: tokio::io::Take<tokio::fs::File>,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures_util::stream::unfold(r, |mut r| async move {
        let mut buf = vec![0u8; 1 << 20];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), r))
            }
            Err(e) => Some((Err(e), r)),
        }
    })
}

fn timed(cmd: &mut Command) -> (f64, u64, String) {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let last = err.lines().last().unwrap_or_default().to_string();
    let mut it = last.split_whitespace();
    let secs: f64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let kib: u64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (secs, kib, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn main() {
    let mib: u64 = std::env::var("KEEL_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let bin = workspace.join("target/release/keel-updater");
    assert!(
        bin.exists(),
        "build first: cargo build --release -p keel-updater"
    );
    let dir =
        tempfile::tempdir_in(std::env::var("KEEL_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .unwrap();
    let d = dir.path();
    let image = d.join("usr.img");
    {
        let mut f = std::fs::File::create(&image).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        for i in 0..mib {
            for (j, b) in buf.iter_mut().enumerate() {
                *b = ((j as u64).wrapping_mul(2654435761).wrapping_add(i * 97) >> 7) as u8;
            }
            getrandom::getrandom(&mut buf[..4096]).unwrap();
            f.write_all(&buf).unwrap();
        }
        f.sync_all().unwrap();
    }
    // Disk: slots of mib + 64 MiB.
    let disk = d.join("disk.img");
    let slot = mib + 64;
    std::fs::File::create(&disk)
        .unwrap()
        .set_len((2 * slot + 16) << 20)
        .unwrap();
    sh(
        "sgdisk",
        &[
            "-Z",
            "-n",
            &format!("3:2048:+{slot}M"),
            "-c",
            "3:USR-A",
            "-t",
            "3:5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6",
            "-n",
            &format!("4:0:+{slot}M"),
            "-c",
            "4:USR-B",
            "-t",
            "4:5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6",
            disk.to_str().unwrap(),
        ],
    );
    let root = d.join("root");
    std::fs::create_dir_all(root.join("usr/share/keel/update-keys")).unwrap();
    let key = d.join("k");
    sh(
        bin.to_str().unwrap(),
        &["payload", "keygen", "--out", key.to_str().unwrap()],
    );
    std::fs::copy(
        key.with_extension("pub"),
        root.join("usr/share/keel/update-keys/k.pub"),
    )
    .unwrap();
    let payload = d.join("update.keelpay");
    let t = Instant::now();
    sh(
        bin.to_str().unwrap(),
        &[
            "payload",
            "build",
            image.to_str().unwrap(),
            "--out",
            payload.to_str().unwrap(),
            "--version",
            "2.0.0",
            "--rollback-index",
            "2",
            "--key",
            key.with_extension("key").to_str().unwrap(),
        ],
    );
    let build_s = t.elapsed().as_secs_f64();

    // SHA-256 in process.
    let t = Instant::now();
    let f = std::fs::File::open(&image).unwrap();
    keel_updater::install::hash_range(&f, 0, mib << 20, 4 << 20).unwrap();
    let sha_s = t.elapsed().as_secs_f64();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(async {
        let app = axum::Router::new()
            .route("/update.keelpay", axum::routing::get(serve_file))
            .with_state(payload.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}/update.keelpay")
    });
    let install = |source: &str, state: &str| {
        let grubenv = d.join(format!("{state}.grubenv"));
        let mut cmd = Command::new("/usr/bin/time");
        cmd.args(["-f", "%e %M"])
            .arg(&bin)
            .args([
                "--root",
                root.to_str().unwrap(),
                "--disk",
                disk.to_str().unwrap(),
            ])
            .args(["--grubenv", grubenv.to_str().unwrap()])
            .args([
                "--state-dir",
                d.join(state).to_str().unwrap(),
                "--booted-slot",
                "A",
            ])
            .args(["--arch", std::env::consts::ARCH, "install", source]);
        timed(&mut cmd)
    };
    let (http_s, http_kib, http_out) = install(&url, "s1");
    let (file_s, file_kib, _) = install(payload.to_str().unwrap(), "s2");
    // Baseline: dd into the same slot with fsync, then sha256sum.
    let seek = (2048u64 * 512 + slot * (1 << 20)) / (4 << 20);
    let off_ok = (2048u64 * 512 + slot * (1 << 20)).is_multiple_of(4 << 20);
    let (dd_bs, dd_seek) = if off_ok {
        ("4M".to_string(), seek)
    } else {
        ("1M".to_string(), (2048 * 512 + slot * (1 << 20)) >> 20)
    };
    let t = Instant::now();
    sh(
        "dd",
        &[
            &format!("if={}", image.display()),
            &format!("of={}", disk.display()),
            &format!("bs={dd_bs}"),
            &format!("seek={dd_seek}"),
            "conv=fsync,notrunc",
            "status=none",
        ],
    );
    let dd_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    sh("sha256sum", &[image.to_str().unwrap()]);
    let sum_s = t.elapsed().as_secs_f64();
    drop(rt);
    let rate = |s: f64| mib as f64 / s;
    println!("image {mib} MiB (incompressible), chunk 4 MiB, release build");
    println!(
        "payload build (hash + sign):        {build_s:.2} s ({:.0} MiB/s)",
        rate(build_s)
    );
    println!(
        "SHA-256 in process:                 {sha_s:.2} s ({:.0} MiB/s)",
        rate(sha_s)
    );
    println!(
        "install from loopback HTTP:         {http_s:.2} s ({:.0} MiB/s), peak RSS {} MiB",
        rate(http_s),
        http_kib / 1024
    );
    println!("  {}", http_out.trim());
    println!(
        "install from a local file:          {file_s:.2} s ({:.0} MiB/s), peak RSS {} MiB",
        rate(file_s),
        file_kib / 1024
    );
    println!(
        "baseline dd conv=fsync + sha256sum: {:.2} s ({dd_s:.2} + {sum_s:.2}) ({:.0} MiB/s)",
        dd_s + sum_s,
        rate(dd_s + sum_s)
    );
}
