//! Datasources against loopback HTTP servers and generated config-drive images: ISO9660
//! and VFAT (read in place) and ext4 (mounted through a loop device; needs root).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use keel_cloudinit::datasource::http::{Client, RetryPolicy};
use keel_cloudinit::datasource::{self, Source};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        request_timeout: Duration::from_millis(300),
        max_retries: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
    }
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/")
}

const USER_DATA: &str =
    "#cloud-config\ncoreos:\n  etcd2:\n    advertise-client-urls: http://$private_ipv4:2379\n";

fn ec2_app(token_required: bool, user_data_status: StatusCode) -> Router {
    let token = "keel-token";
    let check = move |h: &HeaderMap| {
        !token_required
            || h.get("X-aws-ec2-metadata-token")
                .and_then(|v| v.to_str().ok())
                == Some(token)
    };
    let text = move |body: &'static str| {
        move |h: HeaderMap| async move {
            if check(&h) {
                (StatusCode::OK, body)
            } else {
                (StatusCode::UNAUTHORIZED, "")
            }
        }
    };
    let mut app = Router::new()
        .route(
            "/2009-04-04/meta-data/",
            get(text("hostname\nlocal-ipv4\npublic-ipv4\npublic-keys/")),
        )
        .route(
            "/2009-04-04/meta-data/hostname",
            get(text("ip-10-0-0-7.ec2.internal")),
        )
        .route("/2009-04-04/meta-data/local-ipv4", get(text("10.0.0.7")))
        .route(
            "/2009-04-04/meta-data/public-ipv4",
            get(text("198.51.100.7")),
        )
        .route(
            "/2009-04-04/meta-data/public-keys/",
            get(text("0=ops\n1=backup")),
        )
        .route(
            "/2009-04-04/meta-data/public-keys/0/openssh-key",
            get(text("ssh-ed25519 AAAAOPS ops")),
        )
        .route(
            "/2009-04-04/meta-data/public-keys/1/openssh-key",
            get(text("ssh-ed25519 AAAABACKUP backup")),
        )
        .route(
            "/2009-04-04/user-data",
            get(move |h: HeaderMap| async move {
                if !check(&h) {
                    return (StatusCode::UNAUTHORIZED, "");
                }
                (
                    user_data_status,
                    if user_data_status == StatusCode::OK {
                        USER_DATA
                    } else {
                        ""
                    },
                )
            }),
        );
    if token_required {
        app = app.route(
            "/latest/api/token",
            put(|h: HeaderMap| async move {
                assert!(h.contains_key("X-aws-ec2-metadata-token-ttl-seconds"));
                "keel-token"
            }),
        );
    }
    app
}

#[tokio::test]
async fn ec2_metadata_with_imdsv2_keys_and_addresses() {
    let base = serve(ec2_app(true, StatusCode::OK)).await;
    let client = Client::new(fast_policy()).unwrap();
    let got = datasource::fetch_first(&[Source::Ec2(base)], &client, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(got.user_data, USER_DATA.as_bytes());
    let md = &got.metadata;
    assert_eq!(md.private_ipv4, Some("10.0.0.7".parse().unwrap()));
    assert_eq!(md.public_ipv4, Some("198.51.100.7".parse().unwrap()));
    assert_eq!(md.hostname.as_deref(), Some("ip-10-0-0-7.ec2.internal"));
    assert_eq!(md.ssh_public_keys["ops"], "ssh-ed25519 AAAAOPS ops");
    assert_eq!(
        md.ssh_public_keys["backup"],
        "ssh-ed25519 AAAABACKUP backup"
    );

    // Metadata merges into the decoded config: substituted values and core's keys.
    let mut doc = keel_cloudinit::load(&got.user_data);
    keel_cloudinit::metadata::apply_metadata(&mut doc.config, md);
    assert_eq!(
        doc.config.coreos.etcd2.get("advertise_client_urls"),
        Some("http://10.0.0.7:2379")
    );
    assert_eq!(
        doc.config.hostname.as_deref(),
        Some("ip-10-0-0-7.ec2.internal")
    );
    assert_eq!(doc.config.ssh_authorized_keys.len(), 2);
}

#[tokio::test]
async fn ec2_4xx_user_data_is_empty_user_data() {
    let base = serve(ec2_app(false, StatusCode::NOT_FOUND)).await;
    let client = Client::new(fast_policy()).unwrap();
    let got = datasource::fetch_first(&[Source::Ec2(base)], &client, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(got.user_data.is_empty());
    assert_eq!(got.metadata.private_ipv4, Some("10.0.0.7".parse().unwrap()));
    assert_eq!(
        keel_cloudinit::load(&got.user_data).format,
        keel_cloudinit::Format::Empty
    );
}

#[derive(Clone)]
struct Flaky {
    hits: Arc<AtomicUsize>,
    failures: usize,
}

async fn flaky(State(s): State<Flaky>) -> (StatusCode, &'static str) {
    let n = s.hits.fetch_add(1, Ordering::SeqCst);
    if n < s.failures {
        (StatusCode::SERVICE_UNAVAILABLE, "")
    } else {
        (StatusCode::OK, "#cloud-config\nhostname: from-url\n")
    }
}

#[tokio::test]
async fn url_retries_5xx_then_succeeds() {
    let state = Flaky {
        hits: Arc::new(AtomicUsize::new(0)),
        failures: 2,
    };
    let hits = state.hits.clone();
    let base = serve(
        Router::new()
            .route("/user-data", get(flaky))
            .with_state(state),
    )
    .await;
    let client = Client::new(fast_policy()).unwrap();
    let got = datasource::fetch_first(
        &[Source::Url(format!("{base}user-data"))],
        &client,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(got.user_data, b"#cloud-config\nhostname: from-url\n");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn url_retries_are_bounded() {
    let state = Flaky {
        hits: Arc::new(AtomicUsize::new(0)),
        failures: usize::MAX,
    };
    let hits = state.hits.clone();
    let base = serve(
        Router::new()
            .route("/user-data", get(flaky))
            .with_state(state),
    )
    .await;
    let client = Client::new(fast_policy()).unwrap();
    let err = client
        .get(&format!("{base}user-data"), &[])
        .await
        .unwrap_err();
    assert!(
        err.to_string().ends_with("gave up after 4 attempts"),
        "{err}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn url_request_timeout_is_enforced() {
    let app = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let base = serve(app).await;
    let client = Client::new(RetryPolicy {
        max_retries: 1,
        ..fast_policy()
    })
    .unwrap();
    let start = Instant::now();
    let err = client.get(&format!("{base}slow"), &[]).await.unwrap_err();
    assert!(
        err.to_string().contains("gave up after 2 attempts"),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn url_404_is_an_error_and_overall_timeout_holds() {
    let base = serve(Router::new()).await;
    let client = Client::new(fast_policy()).unwrap();
    let err = datasource::fetch_first(
        &[Source::Url(format!("{base}missing"))],
        &client,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{:#}", anyhow_chain(&err)).contains("HTTP status 404"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("never");
    let start = Instant::now();
    let err = datasource::fetch_first(
        &[Source::File(missing)],
        &client,
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, datasource::DatasourceError::Timeout(_)));
    assert!(start.elapsed() < Duration::from_secs(2));
}

fn anyhow_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[tokio::test]
async fn first_available_source_wins_and_late_files_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    let late = dir.path().join("late-user-data");
    let client = Client::new(fast_policy()).unwrap();
    let writer = {
        let late = late.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            std::fs::write(late, "#cloud-config\nhostname: late\n").unwrap();
        })
    };
    let got = datasource::fetch_first(
        &[Source::File(dir.path().join("never")), Source::File(late)],
        &client,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    writer.await.unwrap();
    assert_eq!(got.user_data, b"#cloud-config\nhostname: late\n");
}

#[tokio::test]
async fn proc_cmdline_downloads_cloud_config_url() {
    let app = Router::new().route(
        "/cc",
        get(|| async { "#cloud-config\nhostname: cmdline\n" }),
    );
    let base = serve(app).await;
    let dir = tempfile::tempdir().unwrap();
    let cmdline = dir.path().join("cmdline");
    std::fs::write(
        &cmdline,
        format!("BOOT_IMAGE=/vmlinuz ro cloud-config-url={base}cc console=ttyS0\n"),
    )
    .unwrap();
    let client = Client::new(fast_policy()).unwrap();
    let got = datasource::fetch_first(
        &[Source::ProcCmdline(cmdline)],
        &client,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(got.user_data, b"#cloud-config\nhostname: cmdline\n");
}

fn make_tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (p, c) in files {
        let path = dir.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, c).unwrap();
    }
    dir
}

fn genisoimage(label: &str, tree: &std::path::Path, out: &std::path::Path, joliet_only: bool) {
    let mut cmd = std::process::Command::new("genisoimage");
    cmd.args(["-quiet", "-V", label, "-o"]).arg(out);
    if joliet_only {
        cmd.arg("-J");
    } else {
        cmd.args(["-R", "-J"]);
    }
    let status = cmd
        .arg(tree)
        .status()
        .expect("genisoimage (apt: genisoimage) must be installed");
    assert!(status.success());
}

const META: &str = r#"{"uuid": "d8e02d56", "hostname": "drive-node.novalocal", "public_keys": {"mykey": "ssh-rsa AAAAB3DRIVE user@host\n"}}"#;

#[tokio::test]
async fn config_drive_iso_directory_and_label() {
    let tree = make_tree(&[
        (
            "openstack/latest/user_data",
            "#cloud-config\nhostname: from-drive\n",
        ),
        ("openstack/latest/meta_data.json", META),
    ]);
    let client = Client::new(fast_policy()).unwrap();
    for joliet_only in [false, true] {
        let img = tempfile::tempdir().unwrap();
        let iso = img.path().join("config.iso");
        genisoimage("config-2", tree.path(), &iso, joliet_only);
        let got = datasource::fetch_first(
            &[Source::ConfigDrive(iso)],
            &client,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(got.user_data, b"#cloud-config\nhostname: from-drive\n");
        assert_eq!(
            got.metadata.hostname.as_deref(),
            Some("drive-node.novalocal")
        );
        assert_eq!(
            got.metadata.ssh_public_keys["mykey"],
            "ssh-rsa AAAAB3DRIVE user@host"
        );
    }
    // A mounted directory works the same.
    let got = datasource::fetch_first(
        &[Source::ConfigDrive(tree.path().into())],
        &client,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(got.user_data, b"#cloud-config\nhostname: from-drive\n");
    // An image with another label is refused.
    let img = tempfile::tempdir().unwrap();
    let iso = img.path().join("other.iso");
    genisoimage("not-config", tree.path(), &iso, false);
    let err = datasource::fetch_first(
        &[Source::ConfigDrive(iso)],
        &client,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert!(anyhow_chain(&err).contains("not \"config-2\""), "{err}");
}

#[tokio::test]
async fn nocloud_cidata_and_fw_cfg() {
    let tree = make_tree(&[
        ("user-data", "#cloud-config\nhostname: from-nocloud\n"),
        (
            "meta-data",
            "instance-id: iid-1\nlocal-hostname: cidata-node\npublic-keys:\n  - ssh-ed25519 AAAANOCLOUD a@b\n",
        ),
    ]);
    let img = tempfile::tempdir().unwrap();
    let iso = img.path().join("seed.iso");
    genisoimage("cidata", tree.path(), &iso, false);
    let client = Client::new(fast_policy()).unwrap();
    let got = datasource::fetch_first(&[Source::NoCloud(iso)], &client, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(got.user_data, b"#cloud-config\nhostname: from-nocloud\n");
    assert_eq!(got.metadata.hostname.as_deref(), Some("cidata-node"));
    assert_eq!(
        got.metadata.ssh_public_keys["0"],
        "ssh-ed25519 AAAANOCLOUD a@b"
    );

    let raw = make_tree(&[(
        "opt/org.keel/user-data/raw",
        "#cloud-config\nhostname: fwcfg\n",
    )]);
    let got = datasource::fetch_first(
        &[Source::FwCfg(raw.path().join("opt/org.keel/user-data/raw"))],
        &client,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(got.user_data, b"#cloud-config\nhostname: fwcfg\n");
}

fn run_tool(cmd: &mut std::process::Command, package: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} (apt: {package}) must be installed: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A VFAT image built and filled with dosfstools and mtools, never mounted.
/// `fat_bits` is 12, 16 or 32.
fn vfat_image(label: &str, fat_bits: u32, files: &[(&str, &str)], out: &std::path::Path) {
    // FAT32 needs 65525 clusters: one sector per cluster on a 64 MiB (sparse) image.
    let (size_kib, cluster_sectors) = match fat_bits {
        32 => ("66000", "1"),
        16 => ("8192", "1"),
        _ => ("1024", "4"),
    };
    let mut mkfs = std::process::Command::new("mkfs.vfat");
    mkfs.args([
        "-C",
        "-F",
        &fat_bits.to_string(),
        "-s",
        cluster_sectors,
        "-n",
        label,
    ])
    .arg(out)
    .arg(size_kib);
    run_tool(&mut mkfs, "dosfstools");
    let src = tempfile::tempdir().unwrap();
    let mut made = std::collections::BTreeSet::new();
    for (path, content) in files {
        let mut dir = String::new();
        for part in path.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            dir = format!("{dir}/{part}");
            if made.insert(dir.clone()) {
                run_tool(
                    std::process::Command::new("mmd")
                        .arg("-i")
                        .arg(out)
                        .arg(format!("::{dir}")),
                    "mtools",
                );
            }
        }
        let local = src.path().join("f");
        std::fs::write(&local, content).unwrap();
        run_tool(
            std::process::Command::new("mcopy")
                .arg("-i")
                .arg(out)
                .arg(&local)
                .arg(format!("::/{path}")),
            "mtools",
        );
    }
}

/// An ext4 image filled from `tree` by `mkfs.ext4 -d`, never mounted by the test.
fn ext4_image(label: &str, tree: &std::path::Path, out: &std::path::Path) {
    run_tool(
        std::process::Command::new("mkfs.ext4")
            .args(["-q", "-L", label, "-d"])
            .arg(tree)
            .arg(out)
            .arg("4M"),
        "e2fsprogs",
    );
}

/// Loop devices (`/dev/loopN`) currently bound to `image`.
fn loops_backed_by(image: &std::path::Path) -> Vec<String> {
    let image = image.canonicalize().unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block").unwrap() {
        let entry = entry.unwrap();
        let backing = entry.path().join("loop/backing_file");
        if let Ok(b) = std::fs::read_to_string(backing)
            && std::path::Path::new(b.trim()) == image
        {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

/// Waits (with a deadline) until no loop device is bound to `image`. A detach is final
/// only once the device's last opener closes it, and a child process forked by another
/// test may hold a copy of the descriptor until it execs.
async fn assert_loops_released(image: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let bound = loops_backed_by(image);
        if bound.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} still attached to {bound:?}",
            image.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `/proc/self/mountinfo` lines of media the datasource mounted (optionally of one
/// filesystem type).
fn media_mounts(fs_type: Option<&str>) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(datasource::mount::MOUNT_DIR_PREFIX))
        .filter(|l| {
            fs_type.is_none_or(|t| {
                l.split_once(" - ")
                    .is_some_and(|(_, rest)| rest.split(' ').next() == Some(t))
            })
        })
        .map(str::to_string)
        .collect()
}

const DRIVE_FILES: &[(&str, &str)] = &[
    (
        "openstack/latest/user_data",
        "#cloud-config\nhostname: from-drive\n",
    ),
    ("openstack/latest/meta_data.json", META),
];

fn assert_drive_contents(got: &datasource::Fetched) {
    assert_eq!(got.user_data, b"#cloud-config\nhostname: from-drive\n");
    assert_eq!(
        got.metadata.hostname.as_deref(),
        Some("drive-node.novalocal")
    );
    assert_eq!(
        got.metadata.ssh_public_keys["mykey"],
        "ssh-rsa AAAAB3DRIVE user@host"
    );
}

#[tokio::test]
async fn config_drive_vfat_image_device_and_discovery() {
    let client = Client::new(fast_policy()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for bits in [12, 16, 32] {
        let img = dir.path().join(format!("config-fat{bits}.img"));
        vfat_image("config-2", bits, DRIVE_FILES, &img);
        let got = datasource::fetch_first(
            &[Source::ConfigDrive(img.clone())],
            &client,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_drive_contents(&got);
        // VFAT is read in place: no loop device, no mount.
        assert_loops_released(&img).await;
        assert_eq!(media_mounts(Some("vfat")), Vec::<String>::new());
    }

    // A block device: the FAT12 image behind a loop device.
    let img = dir.path().join("config-fat12.img");
    let device = keel_cloudinit::datasource::loopdev::LoopDevice::attach_read_only(&img).unwrap();
    let got = datasource::fetch_first(
        &[Source::ConfigDrive(device.path().into())],
        &client,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_drive_contents(&got);
    drop(device);
    assert_loops_released(&img).await;

    // `--oem openstack` finds it by label under the host root.
    let host = tempfile::tempdir().unwrap();
    let by_label = host.path().join("dev/disk/by-label");
    std::fs::create_dir_all(&by_label).unwrap();
    std::os::unix::fs::symlink(&img, by_label.join("config-2")).unwrap();
    let cli = <keel_cloudinit::Cli as clap::Parser>::try_parse_from([
        "keel-cloudinit",
        "validate",
        "--oem",
        "openstack",
        "--host-root",
        host.path().to_str().unwrap(),
    ])
    .unwrap();
    let keel_cloudinit::cli::Command::Validate { sources, .. } = cli.command else {
        panic!("not validate");
    };
    let sources = sources.sources();
    assert_eq!(
        sources,
        vec![Source::ConfigDrive(by_label.join("config-2"))]
    );
    let got = datasource::fetch_first(&sources, &client, Duration::from_secs(10))
        .await
        .unwrap();
    assert_drive_contents(&got);

    // Another label is refused.
    let other = dir.path().join("other.img");
    vfat_image("OTHER", 12, DRIVE_FILES, &other);
    let err = datasource::fetch_first(
        &[Source::ConfigDrive(other)],
        &client,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert!(
        anyhow_chain(&err).contains("label is \"OTHER\", not \"config-2\""),
        "{}",
        anyhow_chain(&err)
    );
}

#[tokio::test]
async fn nocloud_vfat_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("seed.img");
    vfat_image(
        "cidata",
        12,
        &[
            ("user-data", "#cloud-config\nhostname: from-nocloud\n"),
            ("meta-data", "local-hostname: cidata-node\n"),
        ],
        &img,
    );
    let client = Client::new(fast_policy()).unwrap();
    let got = datasource::fetch_first(&[Source::NoCloud(img)], &client, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(got.user_data, b"#cloud-config\nhostname: from-nocloud\n");
    assert_eq!(got.metadata.hostname.as_deref(), Some("cidata-node"));
}

/// The only test here that mounts: so no other mount of the datasource's can be seen.
#[tokio::test]
async fn config_drive_ext4_is_mounted_read_only_and_released() {
    let client = Client::new(fast_policy()).unwrap();
    let tree = make_tree(DRIVE_FILES);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("config.ext4");
    ext4_image("config-2", tree.path(), &img);

    // An image file goes through a loop device.
    let got = datasource::fetch_first(
        &[Source::ConfigDrive(img.clone())],
        &client,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_drive_contents(&got);
    assert_eq!(media_mounts(None), Vec::<String>::new());
    assert_loops_released(&img).await;

    // A block device is mounted directly.
    let device = keel_cloudinit::datasource::loopdev::LoopDevice::attach_read_only(&img).unwrap();
    let got = datasource::fetch_first(
        &[Source::ConfigDrive(device.path().into())],
        &client,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_drive_contents(&got);
    assert_eq!(media_mounts(None), Vec::<String>::new());
    drop(device);
    assert_loops_released(&img).await;

    // Broken metadata fails the read, and the medium is still released.
    let bad = make_tree(&[("openstack/latest/meta_data.json", "{not json")]);
    let bad_img = dir.path().join("bad.ext4");
    ext4_image("config-2", bad.path(), &bad_img);
    datasource::fetch_first(
        &[Source::ConfigDrive(bad_img.clone())],
        &client,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert_eq!(media_mounts(None), Vec::<String>::new());
    assert_loops_released(&bad_img).await;

    // Another label is refused before anything is mounted.
    let other = dir.path().join("other.ext4");
    ext4_image("not-config", tree.path(), &other);
    let err = datasource::fetch_first(
        &[Source::ConfigDrive(other.clone())],
        &client,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert!(
        anyhow_chain(&err).contains("not \"config-2\""),
        "{}",
        anyhow_chain(&err)
    );
    assert_loops_released(&other).await;

    // Neither ISO9660, FAT nor ext: refused with a clear error.
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![0u8; 64 * 1024]).unwrap();
    let err = datasource::fetch_first(
        &[Source::ConfigDrive(junk)],
        &client,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert!(
        anyhow_chain(&err).contains("not an ISO9660, FAT or ext2/3/4 filesystem"),
        "{}",
        anyhow_chain(&err)
    );
}
