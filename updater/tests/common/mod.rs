//! Fixtures for the updater's integration tests: a GPT disk image with Keel's layout made
//! by `sgdisk`, a host root with trusted keys, payloads, and a loopback HTTP server that
//! serves Range requests and injects faults.
#![allow(dead_code)]

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ed25519_dalek::SigningKey;
use keel_updater::boot::Slot;
use keel_updater::install::HostConfig;
use keel_updater::payload::Compression;
use keel_updater::payload::build::{BuildOptions, build};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SLOT_MIB: u64 = 8;

/// Runs a tool and returns stdout; panics with its stderr.
pub fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} (apt: gdisk / grub-common): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 40 MiB disk image: 1 EFI-SYSTEM, 3 USR-A, 4 USR-B (8 MiB each), 9 ROOT, with
/// Flatcar's type GUIDs and USR partition GUIDs; USR-A filled with "running" bytes.
pub fn make_disk(dir: &Path) -> PathBuf {
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    let d = disk.to_str().unwrap();
    tool(
        "sgdisk",
        &[
            "-Z",
            "-n",
            "1:2048:+4M",
            "-t",
            "1:C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "-c",
            "1:EFI-SYSTEM",
            "-n",
            "3:0:+8M",
            "-t",
            "3:5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6",
            "-c",
            "3:USR-A",
            "-u",
            "3:7130c94a-213a-4e5a-8e26-6cce9662f132",
            "-n",
            "4:0:+8M",
            "-t",
            "4:5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6",
            "-c",
            "4:USR-B",
            "-u",
            "4:e03dd35c-7c2d-4a47-b3fe-27f15780a57c",
            "-n",
            "9:0:0",
            "-t",
            "9:3884DD41-8582-4404-B9A8-E9B84F2DF50E",
            "-c",
            "9:ROOT",
            "-A",
            "3:set:48",
            "-A",
            "3:set:56",
            d,
        ],
    );
    let disk_info = keel_updater::boot::Disk::open(&disk).unwrap();
    let running: Vec<u8> = (0..disk_info.a.size).map(|i| (i * 7 % 253) as u8).collect();
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&running, disk_info.a.offset).unwrap();
    disk
}

/// SHA-256 of a slot's whole partition.
pub fn slot_hash(disk: &Path, slot: Slot) -> String {
    let d = keel_updater::boot::Disk::open(disk).unwrap();
    let p = d.slot(slot);
    keel_updater::install::slot_sha256(disk, p.offset, p.size).unwrap()
}

/// The first `len` bytes of a slot.
pub fn slot_bytes(disk: &Path, slot: Slot, len: usize) -> Vec<u8> {
    let d = keel_updater::boot::Disk::open(disk).unwrap();
    let mut buf = vec![0u8; len];
    use std::os::unix::fs::FileExt;
    std::fs::File::open(disk)
        .unwrap()
        .read_exact_at(&mut buf, d.slot(slot).offset)
        .unwrap();
    buf
}

/// A test host: root with a trusted key, a disk, a grubenv, a state dir; booted from A.
pub struct TestHost {
    pub dir: tempfile::TempDir,
    pub key: SigningKey,
    pub host: HostConfig,
}

impl TestHost {
    pub fn new() -> TestHost {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let keys = root.join("usr/share/keel/update-keys");
        std::fs::create_dir_all(&keys).unwrap();
        keel_updater::payload::keys::generate(&dir.path().join("release")).unwrap();
        std::fs::copy(dir.path().join("release.pub"), keys.join("release.pub")).unwrap();
        let key =
            keel_updater::payload::keys::read_private(&dir.path().join("release.key")).unwrap();
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(
            root.join("proc/cmdline"),
            "root=LABEL=ROOT mount.usr=PARTUUID=7130c94a-213a-4e5a-8e26-6cce9662f132 ro\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::write(root.join("usr/lib/os-release"), "ID=keel\nVERSION=1.0.0\n").unwrap();
        let disk = make_disk(dir.path());
        let grubenv = dir.path().join("esp/grub/grubenv");
        std::fs::create_dir_all(grubenv.parent().unwrap()).unwrap();
        tool("grub-editenv", &[grubenv.to_str().unwrap(), "create"]);
        tool(
            "grub-editenv",
            &[
                grubenv.to_str().unwrap(),
                "set",
                "ORDER=A B",
                "A_OK=1",
                "A_LEFT=0",
                "B_OK=0",
                "B_LEFT=0",
            ],
        );
        let host = HostConfig {
            root,
            disk,
            grubenv,
            state_dir: dir.path().join("state"),
            board: "amd64-usr".into(),
            arch: "x86_64".into(),
            booted: None,
        };
        TestHost { dir, key, host }
    }

    /// Builds a payload of `image` signed by this host's key.
    pub fn payload(
        &self,
        name: &str,
        image: &[u8],
        version: &str,
        index: u64,
        compression: Compression,
    ) -> PathBuf {
        let img = self.dir.path().join(format!("{name}.img"));
        std::fs::write(&img, image).unwrap();
        let out = self.dir.path().join(name);
        build(
            &img,
            &out,
            &options(version, index, compression),
            std::slice::from_ref(&self.key),
        )
        .unwrap();
        out
    }

    /// `grub-editenv list` of the environment block.
    pub fn grub_list(&self) -> String {
        tool(
            "grub-editenv",
            &[self.host.grubenv.to_str().unwrap(), "list"],
        )
    }

    /// `sgdisk -i N` attribute flags of a partition.
    pub fn sgdisk_attrs(&self, part: u32) -> String {
        let out = tool(
            "sgdisk",
            &["-i", &part.to_string(), self.host.disk.to_str().unwrap()],
        );
        out.lines()
            .find_map(|l| l.strip_prefix("Attribute flags: "))
            .unwrap()
            .to_string()
    }
}

pub fn options(version: &str, index: u64, compression: Compression) -> BuildOptions {
    BuildOptions {
        version: version.into(),
        rollback_index: index,
        expires: 4_000_000_000,
        board: "amd64-usr".into(),
        arch: "x86_64".into(),
        chunk_size: 64 << 10,
        compression,
    }
}

/// A "new USR image": 5 MiB and a bit, not chunk aligned.
pub fn image(seed: u8) -> Vec<u8> {
    (0..(5 << 20) + 1234u32)
        .map(|i| (i.wrapping_mul(31) as u8) ^ seed ^ ((i >> 12) as u8))
        .collect()
}

/// Faults the server injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// 500 on every second request.
    ErrorEveryOther,
    /// Every second data response stalls after 100 KiB.
    StallEveryOther,
    /// Every second response is cut short (Content-Length kept).
    TruncateEveryOther,
    /// Every second response declares and sends one byte less than asked.
    WrongLengthEveryOther,
    /// Every second response ignores the Range and sends an endless 200 body.
    EndlessEveryOther,
    /// Every second response flips one byte of data.
    CorruptEveryOther,
    /// Always flips one byte in the data area.
    CorruptAlways,
}

#[derive(Debug)]
pub struct ServerState {
    pub payload: Vec<u8>,
    pub fault: Mutex<Fault>,
    pub requests: AtomicU64,
    /// Pause per 64 KiB sent (slows installs for kill tests).
    pub delay_per_64k: Mutex<Duration>,
    pub data_offset: u64,
}

/// Serves `payload` at `/payload` on loopback; returns the URL and the shared state.
pub async fn serve(payload: Vec<u8>, data_offset: u64) -> (String, Arc<ServerState>) {
    let state = Arc::new(ServerState {
        payload,
        fault: Mutex::new(Fault::None),
        requests: AtomicU64::new(0),
        delay_per_64k: Mutex::new(Duration::ZERO),
        data_offset,
    });
    let app = axum::Router::new()
        .route("/payload", axum::routing::get(handler))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/payload"), state)
}

fn parse_range(h: &HeaderMap, total: u64) -> Option<(u64, u64)> {
    let v = h
        .get(header::RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?;
    let (a, b) = v.split_once('-')?;
    let start: u64 = a.parse().ok()?;
    let end: u64 = if b.is_empty() {
        total - 1
    } else {
        b.parse().ok()?
    };
    Some((start, end.min(total - 1)))
}

async fn handler(State(s): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    let n = s.requests.fetch_add(1, Ordering::SeqCst);
    let fault = *s.fault.lock().unwrap();
    let odd = n % 2 == 1;
    let total = s.payload.len() as u64;
    let Some((start, end)) = parse_range(&headers, total) else {
        return (StatusCode::OK, s.payload.clone()).into_response();
    };
    let is_data = start >= s.data_offset;
    let mut body = s.payload[start as usize..=end as usize].to_vec();
    let content_range = format!("bytes {start}-{end}/{total}");
    let delay = *s.delay_per_64k.lock().unwrap();
    match fault {
        Fault::ErrorEveryOther if odd => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Fault::EndlessEveryOther if odd && is_data => {
            let stream = futures_util::stream::repeat_with(|| {
                Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 65536]))
            });
            return (StatusCode::OK, Body::from_stream(stream)).into_response();
        }
        Fault::WrongLengthEveryOther if odd && is_data && body.len() > 1 => {
            body.pop();
            return (
                StatusCode::PARTIAL_CONTENT,
                [(header::CONTENT_RANGE, content_range)],
                body,
            )
                .into_response();
        }
        Fault::CorruptEveryOther if odd && is_data => {
            let mid = body.len() / 2;
            body[mid] ^= 0xff
        }
        Fault::CorruptAlways if is_data => body[0] ^= 0xff,
        _ => {}
    }
    let len = body.len();
    let cut = match fault {
        Fault::TruncateEveryOther if odd && is_data => Some(len / 2),
        Fault::StallEveryOther if odd && is_data => Some(len.min(100 << 10)),
        _ => None,
    };
    let stall = fault == Fault::StallEveryOther;
    let stream = async_stream(body, cut, stall, delay);
    Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header(header::CONTENT_RANGE, content_range)
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(stream))
        .unwrap()
}

fn async_stream(
    body: Vec<u8>,
    cut: Option<usize>,
    stall: bool,
    delay: Duration,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    let limit = cut.unwrap_or(body.len());
    let pieces: Vec<bytes::Bytes> = body[..limit]
        .chunks(64 << 10)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let tail = cut.is_some();
    futures_util::stream::unfold(
        (pieces.into_iter(), tail),
        move |(mut it, tail)| async move {
            match it.next() {
                Some(p) => {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Some((Ok(p), (it, tail)))
                }
                None if tail && stall => {
                    std::future::pending::<()>().await;
                    None
                }
                None if tail => Some((Err(std::io::Error::other("cut")), (it, false))),
                None => None,
            }
        },
    )
}
