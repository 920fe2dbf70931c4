//! Installing A→B on a GPT disk image with Keel's layout, from a loopback HTTP server:
//! bytes, GRUB environment (checked with `grub-editenv`) and GPT attributes (checked with
//! `sgdisk`); server faults; every payload refusal; SIGKILL of the updater mid-install.
//! The running slot's bytes never change in any test.

mod common;

use common::*;
use keel_updater::boot::{BootEnv, BootState, Slot, select};
use keel_updater::fetch::Source;
use keel_updater::install::{InstallError, InstallOptions, install};
use keel_updater::lifecycle::{BootOutcome, mark_good};
use keel_updater::payload::Compression;
use keel_updater::state::State;
use std::time::Duration;

fn data_offset(payload: &std::path::Path) -> u64 {
    keel_updater::payload::build::read_header(payload)
        .unwrap()
        .0
        .data_offset
}

async fn serve_file(payload: &std::path::Path) -> (String, std::sync::Arc<ServerState>) {
    serve(std::fs::read(payload).unwrap(), data_offset(payload)).await
}

fn source(url: &str) -> Source {
    Source::parse(url, Duration::from_secs(1)).unwrap()
}

const INSTALLED: &str = "ORDER=B A\nA_OK=1\nA_LEFT=0\nB_OK=0\nB_LEFT=3\n";
const UNTOUCHED: &str = "ORDER=A B\nA_OK=1\nA_LEFT=0\nB_OK=0\nB_LEFT=0\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_a_to_b_then_boot_and_bless() {
    for compression in [Compression::None, Compression::Zstd] {
        let t = TestHost::new();
        let running = slot_hash(&t.host.disk, Slot::A);
        let img = image(1);
        let p = t.payload("update", &img, "1.1.0", 5, compression);
        let (url, _server) = serve_file(&p).await;
        let report = install(&t.host, &source(&url), &InstallOptions::default())
            .await
            .unwrap();
        assert_eq!(
            (report.slot, report.version.as_str(), report.resumed_at),
            (Slot::B, "1.1.0", 0)
        );
        assert_eq!(
            slot_hash(&t.host.disk, Slot::A),
            running,
            "the running slot never changes"
        );
        assert_eq!(slot_bytes(&t.host.disk, Slot::B, img.len()), img);
        // GRUB reads exactly what grub-editenv would have written.
        assert_eq!(t.grub_list(), INSTALLED);
        let reference = t.dir.path().join("reference.env");
        let r = reference.to_str().unwrap();
        tool("grub-editenv", &[r, "create"]);
        tool(
            "grub-editenv",
            &[
                r,
                "set",
                "ORDER=B A",
                "A_OK=1",
                "A_LEFT=0",
                "B_OK=0",
                "B_LEFT=3",
            ],
        );
        assert_eq!(
            std::fs::read(&t.host.grubenv).unwrap(),
            std::fs::read(&reference).unwrap()
        );
        // GPT: A priority 1 + successful, B priority 2 with 3 tries (sgdisk's view).
        assert_eq!(t.sgdisk_attrs(3), "0101000000000000");
        assert_eq!(t.sgdisk_attrs(4), "0032000000000000");
        let sentinel = std::fs::read_to_string(t.host.root.join("run/reboot-required")).unwrap();
        assert!(sentinel.contains("VERSION=1.1.0"), "{sentinel}");
        let state = State::load(&t.host.state_dir).unwrap();
        assert_eq!(state.pending.as_ref().unwrap().version, "1.1.0");
        assert!(state.progress.is_none());

        // GRUB picks B; the host boots it and blesses it.
        let boot = BootState::load(&t.host.grubenv).unwrap();
        let (slot, after) = select(&boot.boot);
        assert_eq!(slot, Some(Slot::B));
        let mut boot = boot;
        boot.commit(after, None).unwrap();
        std::fs::write(t.host.root.join("proc/cmdline"), "keel.slot=B\n").unwrap();
        assert_eq!(
            mark_good(&t.host).unwrap(),
            BootOutcome::Blessed {
                version: "1.1.0".into(),
                slot: Slot::B
            }
        );
        assert_eq!(
            t.grub_list(),
            "ORDER=B A\nA_OK=1\nA_LEFT=0\nB_OK=1\nB_LEFT=0\n"
        );
        assert_eq!(t.sgdisk_attrs(4), "0102000000000000");
        assert_eq!(
            State::load(&t.host.state_dir).unwrap().min_rollback_index,
            5
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_back_on_the_old_slot_is_a_rollback_and_not_retried() {
    let t = TestHost::new();
    let p = t.payload("update", &image(2), "1.1.0", 5, Compression::None);
    install(
        &t.host,
        &Source::File(p.clone()),
        &InstallOptions::default(),
    )
    .await
    .unwrap();
    // B fails three times; GRUB falls back to A.
    let mut env = BootState::load(&t.host.grubenv).unwrap().boot;
    for _ in 0..3 {
        let (s, next) = select(&env);
        assert_eq!(s, Some(Slot::B));
        env = next;
    }
    assert_eq!(select(&env).0, Some(Slot::A));
    BootState::load(&t.host.grubenv)
        .unwrap()
        .commit(env, None)
        .unwrap();
    assert_eq!(
        mark_good(&t.host).unwrap(),
        BootOutcome::RolledBack {
            version: "1.1.0".into(),
            slot: Slot::B
        }
    );
    assert_eq!(t.grub_list(), UNTOUCHED);
    let e = install(
        &t.host,
        &Source::File(p.clone()),
        &InstallOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, InstallError::RolledBack(_)), "{e}");
    assert!(e.to_string().contains("rolled back on this host"), "{e}");
    install(
        &t.host,
        &Source::File(p),
        &InstallOptions {
            force: true,
            progress: None,
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_faults_end_in_a_correct_install() {
    for fault in [
        Fault::ErrorEveryOther,
        Fault::StallEveryOther,
        Fault::TruncateEveryOther,
        Fault::WrongLengthEveryOther,
        Fault::EndlessEveryOther,
        Fault::CorruptEveryOther,
    ] {
        let t = TestHost::new();
        let running = slot_hash(&t.host.disk, Slot::A);
        let img = image(3);
        let p = t.payload("update", &img, "1.1.0", 5, Compression::Zstd);
        let (url, server) = serve_file(&p).await;
        *server.fault.lock().unwrap() = fault;
        let r = install(&t.host, &source(&url), &InstallOptions::default()).await;
        assert!(
            r.is_ok(),
            "{fault:?}: {}",
            keel_updater::error_chain(&r.unwrap_err())
        );
        assert_eq!(
            slot_bytes(&t.host.disk, Slot::B, img.len()),
            img,
            "{fault:?}"
        );
        assert_eq!(slot_hash(&t.host.disk, Slot::A), running, "{fault:?}");
        assert_eq!(t.grub_list(), INSTALLED, "{fault:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_keeps_corrupting_leaves_the_slot_unbootable_and_resumable() {
    let t = TestHost::new();
    let running = slot_hash(&t.host.disk, Slot::A);
    let img = image(4);
    let p = t.payload("update", &img, "1.1.0", 5, Compression::None);
    let (url, server) = serve_file(&p).await;
    *server.fault.lock().unwrap() = Fault::CorruptAlways;
    let e = install(&t.host, &source(&url), &InstallOptions::default())
        .await
        .unwrap_err();
    let text = keel_updater::error_chain(&e);
    assert!(
        text.contains("giving up") && text.contains("does not match its hash"),
        "{text}"
    );
    assert_eq!(t.grub_list(), UNTOUCHED, "B must stay unbootable");
    assert_eq!(slot_hash(&t.host.disk, Slot::A), running);
    assert!(
        State::load(&t.host.state_dir).unwrap().progress.is_some(),
        "resumable"
    );
    // The server is fixed: the install completes.
    *server.fault.lock().unwrap() = Fault::None;
    install(&t.host, &source(&url), &InstallOptions::default())
        .await
        .unwrap();
    assert_eq!(slot_bytes(&t.host.disk, Slot::B, img.len()), img);
}

/// Builds a variant payload, expects `install` to refuse it with `needle`, and checks that
/// nothing became bootable and the running slot is unchanged.
async fn refused(t: &TestHost, payload: &std::path::Path, needle: &str) {
    let running = slot_hash(&t.host.disk, Slot::A);
    let before_b = slot_hash(&t.host.disk, Slot::B);
    let e = install(
        &t.host,
        &Source::File(payload.to_path_buf()),
        &InstallOptions::default(),
    )
    .await
    .unwrap_err();
    let text = keel_updater::error_chain(&e);
    assert!(text.contains(needle), "expected {needle:?} in: {text}");
    assert!(
        text.contains(&payload.display().to_string()) || needle == "giving up",
        "names the payload: {text}"
    );
    assert_eq!(
        t.grub_list(),
        UNTOUCHED,
        "{needle}: nothing marked bootable"
    );
    assert_eq!(slot_hash(&t.host.disk, Slot::A), running);
    if needle != "giving up" {
        assert_eq!(
            slot_hash(&t.host.disk, Slot::B),
            before_b,
            "{needle}: refused before writing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_payload_refusal() {
    let t = TestHost::new();
    let img = image(5);
    let good = t.payload("good", &img, "1.1.0", 5, Compression::None);
    let dir = t.dir.path();
    let variant = |name: &str, bytes: Vec<u8>| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let raw = std::fs::read(&good).unwrap();
    let off = data_offset(&good) as usize;

    // Bad signature: one byte of the signed manifest changed (the version's last digit).
    let mut bad = raw.clone();
    let pos = raw.windows(7).position(|w| w == b"\"1.1.0\"").unwrap() + 5;
    bad[pos] = b'9';
    refused(&t, &variant("badsig", bad), "bad signature by key").await;
    // Missing signature.
    let img_path = dir.join("img");
    std::fs::write(&img_path, &img).unwrap();
    let unsigned = dir.join("unsigned");
    keel_updater::payload::build::build(
        &img_path,
        &unsigned,
        &options("1.1.0", 5, Compression::None),
        &[],
    )
    .unwrap();
    refused(&t, &unsigned, "is not signed").await;
    // Unknown key.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let foreign = dir.join("foreign");
    keel_updater::payload::build::build(
        &img_path,
        &foreign,
        &options("1.1.0", 5, Compression::None),
        &[stranger],
    )
    .unwrap();
    refused(&t, &foreign, "signed only by unknown key").await;
    // Expired.
    let mut o = options("1.1.0", 5, Compression::None);
    o.expires = 1_000_000_000;
    let expired = dir.join("expired");
    keel_updater::payload::build::build(&img_path, &expired, &o, std::slice::from_ref(&t.key))
        .unwrap();
    refused(&t, &expired, "expired at 1000000000").await;
    // Wrong board.
    let mut o = options("1.1.0", 5, Compression::None);
    o.board = "arm64-usr".into();
    let board = dir.join("board");
    keel_updater::payload::build::build(&img_path, &board, &o, std::slice::from_ref(&t.key))
        .unwrap();
    refused(&t, &board, "image is for board arm64-usr").await;
    // Larger than the slot.
    let big = t.payload(
        "big",
        &vec![1u8; (SLOT_MIB as usize + 1) << 20],
        "1.1.0",
        5,
        Compression::Zstd,
    );
    refused(&t, &big, "does not fit").await;
    // Truncated and trailing data.
    refused(
        &t,
        &variant("truncated", raw[..raw.len() - 10].to_vec()),
        "truncated",
    )
    .await;
    let mut trailing = raw.clone();
    trailing.extend_from_slice(b"extra");
    refused(&t, &variant("trailing", trailing), "trailing data").await;
    refused(
        &t,
        &variant("header", raw[..20].to_vec()),
        "header is truncated",
    )
    .await;
    // Downgrade: this host already blessed rollback index 9.
    let mut state = State::load(&t.host.state_dir).unwrap();
    state.min_rollback_index = 9;
    state.save(&t.host.state_dir).unwrap();
    refused(&t, &good, "below this host's minimum 9 (downgrade refused)").await;
    state.min_rollback_index = 0;
    state.save(&t.host.state_dir).unwrap();
    // A chunk that does not match its hash (signature fine, data tampered).
    let mut tampered = raw.clone();
    tampered[off + 100_000] ^= 1;
    refused(&t, &variant("tampered", tampered), "giving up").await;
    // And the good one still installs.
    install(&t.host, &Source::File(good), &InstallOptions::default())
        .await
        .unwrap();
    assert_eq!(t.grub_list(), INSTALLED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_never_leaves_a_bad_slot_bootable() {
    let t = TestHost::new();
    let running = slot_hash(&t.host.disk, Slot::A);
    let img = image(6);
    let p = t.payload("update", &img, "1.1.0", 5, Compression::None);
    let (url, server) = serve_file(&p).await;
    // ~3.3 s for the whole image: every kill lands mid-download.
    *server.delay_per_64k.lock().unwrap() = Duration::from_millis(40);
    let bin = env!("CARGO_BIN_EXE_keel-updater");
    let h = &t.host;
    let run = || {
        tokio::process::Command::new(bin)
            .arg("--root")
            .arg(&h.root)
            .arg("--disk")
            .arg(&h.disk)
            .arg("--grubenv")
            .arg(&h.grubenv)
            .arg("--state-dir")
            .arg(&h.state_dir)
            .args(["--board", "amd64-usr", "--arch", "x86_64", "install", &url])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut resumed_rounds = 0;
    let mut kills = 0;
    let mut completed = false;
    for round in 0..24 {
        let mut child = run();
        tokio::time::sleep(Duration::from_millis(fastrand::u64(100..400))).await;
        let _ = child.start_kill();
        let status = child.wait().await.unwrap();
        kills += 1;
        let list = t.grub_list();
        if list == INSTALLED {
            // Only a finished, verified install may be bootable.
            assert_eq!(
                slot_bytes(&t.host.disk, Slot::B, img.len()),
                img,
                "round {round}"
            );
            completed = true;
            break;
        }
        assert_eq!(
            list, UNTOUCHED,
            "round {round} (exit {status:?}): B must be unbootable"
        );
        assert_eq!(slot_hash(&t.host.disk, Slot::A), running, "round {round}");
        if State::load(&t.host.state_dir)
            .unwrap()
            .progress
            .is_some_and(|p| p.next_chunk > 0)
        {
            resumed_rounds += 1;
        }
    }
    if !completed {
        let out = run().wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("resumed at chunk"),
            "the last run resumes: {text}"
        );
    }
    assert!(kills >= 20 || completed, "{kills} kill rounds");
    assert!(
        resumed_rounds >= 3,
        "progress was checkpointed across kills ({resumed_rounds} of {kills} rounds)"
    );
    assert_eq!(t.grub_list(), INSTALLED);
    assert_eq!(slot_bytes(&t.host.disk, Slot::B, img.len()), img);
    assert_eq!(slot_hash(&t.host.disk, Slot::A), running);
    let env = BootEnv::from_env(
        &t.host.grubenv,
        &keel_updater::grubenv::GrubEnv::read(&t.host.grubenv).unwrap(),
    )
    .unwrap();
    assert_eq!(select(&env).0, Some(Slot::B));
}

#[test]
fn created_disk_matches_sgdisk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    keel_updater::layout::create_disk(&disk, &keel_updater::layout::keel_partitions(32, 64, 16))
        .unwrap();
    let d = disk.to_str().unwrap();
    let verify = tool("sgdisk", &["-v", d]);
    assert!(verify.contains("No problems found"), "{verify}");
    let info = |n: &str| tool("sgdisk", &["-i", n, d]);
    let usr_a = info("3");
    assert!(
        usr_a.contains("Partition GUID code: 5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6"),
        "{usr_a}"
    );
    assert!(
        usr_a.contains("Partition unique GUID: 7130C94A-213A-4E5A-8E26-6CCE9662F132"),
        "{usr_a}"
    );
    assert!(
        usr_a.contains("Partition name: 'USR-A'")
            && usr_a.contains("Attribute flags: 0101000000000000"),
        "{usr_a}"
    );
    assert!(info("4").contains("Partition unique GUID: E03DD35C-7C2D-4A47-B3FE-27F15780A57C"));
    assert!(info("1").contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"));
    let root = info("9");
    assert!(
        root.contains("3884DD41-8582-4404-B9A8-E9B84F2DF50E") && root.contains("'ROOT'"),
        "{root}"
    );
    let disk_info = keel_updater::boot::Disk::open(&disk).unwrap();
    assert_eq!((disk_info.a.size, disk_info.b.size), (64 << 20, 64 << 20));
    assert_eq!(disk_info.a.offset % (1 << 20), 0, "1 MiB aligned");
}
