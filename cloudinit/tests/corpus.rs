//! Every fixture in tests/fixtures/corpus: its exact report, then (when valid) applied
//! into a fresh root with its results checked, then applied again to show that the second
//! run changes nothing.

mod common;

use common::*;
use std::io::Write;
use std::path::Path;

const FIXTURES: &[&str] = &[
    "vagrant-cluster.yml",
    "kube-master.yml",
    "kube-worker.yml",
    "write-files-encodings.yml",
    "users-all-fields.yml",
    "cloud-oem.yml",
    "script.sh",
    "mime-multipart.txt",
    "ignition.json",
    "one-error.yml",
];

fn expected_report(name: &str) -> String {
    let stem = name.rsplit_once('.').unwrap().0;
    std::fs::read_to_string(fixture(&format!("corpus/{stem}.report"))).unwrap()
}

#[test]
fn every_fixture_has_its_exact_report() {
    for name in FIXTURES {
        let bytes = std::fs::read(fixture(&format!("corpus/{name}"))).unwrap();
        let doc = keel_cloudinit::load(&bytes);
        assert_eq!(doc.report.to_text(), expected_report(name), "{name}");
    }
}

#[test]
fn every_valid_fixture_applies_and_is_idempotent() {
    for name in FIXTURES {
        let bytes = std::fs::read(fixture(&format!("corpus/{name}"))).unwrap();
        if !keel_cloudinit::load(&bytes).is_applicable() {
            continue;
        }
        let root = base_root();
        let (plan, first, recorded) = apply_bytes(root.path(), &bytes, &metadata());
        assert!(first.changed(), "{name}: first apply changed nothing");
        check(name, root.path(), &recorded);
        let (again, second, _) = apply_bytes(root.path(), &bytes, &metadata());
        assert!(
            again.steps.is_empty() && !second.changed(),
            "{name}: second apply changed {:?} {:?}",
            again.steps,
            second.unit_changes
        );
        assert!(!second.reloaded, "{name}: second apply reloaded systemd");
        assert!(plan.unchanged < again.unchanged, "{name}");
    }
}

fn check(name: &str, r: &Path, recorded: &[String]) {
    match name {
        "vagrant-cluster.yml" => {
            let store = read(
                r,
                "/run/systemd/system/keel-store.service.d/20-cloudinit.conf",
            );
            assert_eq!(
                store,
                "[Service]\n\
                 Environment=\"ETCD_ADVERTISE_CLIENT_URLS=http://10.0.0.5:2379,http://10.0.0.5:4001\"\n\
                 Environment=\"ETCD_DISCOVERY=https://discovery.example.invalid/6a28e078895c5ec737174db2419bb2f3\"\n\
                 Environment=\"ETCD_INITIAL_ADVERTISE_PEER_URLS=http://10.0.0.5:2380\"\n\
                 Environment=\"ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379,http://0.0.0.0:4001\"\n\
                 Environment=\"ETCD_LISTEN_PEER_URLS=http://10.0.0.5:2380\"\n\
                 Environment=\"ETCD_NAME=core-01\"\n"
            );
            assert_eq!(
                read(r, "/run/systemd/system/fleet.service.d/20-cloudinit.conf"),
                "[Service]\nEnvironment=\"FLEET_METADATA=role=vagrant\"\nEnvironment=\"FLEET_PUBLIC_IP=203.0.113.5\"\n"
            );
            assert_eq!(
                read(r, "/run/flannel/options.env"),
                "FLANNELD_IFACE=203.0.113.5"
            );
            assert!(
                read(
                    r,
                    "/etc/systemd/system/flanneld.service.d/50-network-config.conf"
                )
                .contains("10.1.0.0/16")
            );
            assert_eq!(
                link(
                    r,
                    "/etc/systemd/system/sockets.target.wants/docker-tcp.socket"
                ),
                "/etc/systemd/system/docker-tcp.socket"
            );
            // reboot-strategy off: locksmith masked (runtime) and stopped.
            assert_eq!(
                link(r, "/run/systemd/system/keel-locksmith.service"),
                "/dev/null"
            );
            assert_eq!(
                read(r, "/etc/coreos/update.conf"),
                "GROUP=stable\nREBOOT_STRATEGY=off\n"
            );
            assert_eq!(
                recorded,
                [
                    "daemon-reload",
                    "start keel-store.service",
                    "start fleet.service",
                    "start flanneld.service",
                    "start docker-tcp.socket",
                    "stop keel-locksmith.service",
                ]
            );
            assert!(read(r, "/etc/environment").contains("COREOS_PRIVATE_IPV4=10.0.0.5\n"));
        }
        "kube-master.yml" => {
            assert_eq!(read(r, "/etc/hostname"), "kube-master-1\n");
            let manifest = read(r, "/etc/kubernetes/manifests/kube-apiserver.yaml");
            assert!(manifest.contains("--etcd-servers=http://10.0.0.5:2379"));
            assert_eq!(
                read(r, "/etc/kubernetes/ssl/ca.pem"),
                "-----BEGIN CERTIFICATE-----\nkeel-test-ca\n-----END CERTIFICATE-----\n"
            );
            assert_eq!(mode(r, "/etc/kubernetes/ssl/ca.pem"), 0o600);
            assert_eq!(mode(r, "/opt/bin/wait-for-apiserver"), 0o755);
            assert_eq!(mode(r, "/opt/bin"), 0o755);
            let keys = read(r, "/home/core/.ssh/authorized_keys.d/keel-cloudinit");
            assert!(keys.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeelMaster"));
            assert_eq!(mode(r, "/home/core/.ssh/authorized_keys"), 0o600);
            assert_eq!(mode(r, "/home/core/.ssh"), 0o700);
            assert_eq!(owner(r, "/home/core/.ssh/authorized_keys"), (500, 500));
            assert!(
                read(r, "/etc/systemd/system/kubelet.service")
                    .contains("--hostname-override=10.0.0.5")
            );
            assert_eq!(
                link(
                    r,
                    "/etc/systemd/system/multi-user.target.wants/kubelet.service"
                ),
                "/etc/systemd/system/kubelet.service"
            );
            assert!(
                read(r, "/etc/systemd/system/docker.service.d/40-flannel.conf")
                    .contains("flanneld")
            );
            assert_eq!(
                read(
                    r,
                    "/run/systemd/system/keel-locksmith.service.d/20-cloudinit.conf"
                ),
                "[Service]\nEnvironment=\"LOCKSMITHD_GROUP=masters\"\n\
                 Environment=\"LOCKSMITHD_REBOOT_WINDOW_START=Thu 04:00\"\n\
                 Environment=\"LOCKSMITHD_REBOOT_WINDOW_LENGTH=1h\"\n"
            );
            assert_eq!(
                read(r, "/etc/coreos/update.conf"),
                "GROUP=stable\nREBOOT_STRATEGY=etcd-lock\n"
            );
            assert_eq!(
                recorded,
                [
                    "daemon-reload",
                    "start keel-store.service",
                    "start kubelet.service",
                    "restart keel-locksmith.service",
                    "restart keel-updater.service",
                ]
            );
        }
        "kube-worker.yml" => {
            assert_eq!(read(r, "/etc/hostname"), "node-5\n");
            assert_eq!(read(r, "/etc/hosts"), "127.0.0.1 node-5\n");
            assert_eq!(read(r, "/etc/kubernetes/worker.env"), "KUBE_NODE=worker\n");
            let passwd = read(r, "/etc/passwd");
            assert!(
                passwd.contains("deploy:x:1000:1000:Deploy Bot:/home/deploy:/bin/bash\n"),
                "{passwd}"
            );
            let group = read(r, "/etc/group");
            assert!(group.contains("docker:x:233:core,deploy\n"));
            assert!(group.contains("sudo:x:150:core,deploy\n"));
            assert!(group.contains("deploy:x:1000:\n"));
            assert!(read(r, "/etc/gshadow").contains("deploy:!::\n"));
            assert!(read(r, "/etc/shadow").contains("deploy:*:20000:0:99999:7:::\n"));
            assert_eq!(mode(r, "/etc/shadow"), 0o640);
            assert_eq!(owner(r, "/etc/shadow"), (0, 42));
            assert_eq!(owner(r, "/home/deploy"), (1000, 1000));
            assert_eq!(read(r, "/home/deploy/.bashrc"), "# keel skel\n");
            assert_eq!(
                read(r, "/home/deploy/.ssh/authorized_keys"),
                "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQKeelDeployKey deploy@ci\n"
            );
            assert_eq!(owner(r, "/home/deploy/.ssh/authorized_keys"), (1000, 1000));
            assert_eq!(
                owner(r, "/etc/kubernetes/worker-kubeconfig.yaml"),
                (1000, 233)
            );
            assert_eq!(mode(r, "/etc/kubernetes/worker-kubeconfig.yaml"), 0o640);
            assert!(
                read(r, "/etc/kubernetes/worker-kubeconfig.yaml").contains("https://10.0.0.5:443")
            );
            // locksmithd.service is keel-locksmith on Keel; mask: true is persistent.
            assert_eq!(
                link(r, "/etc/systemd/system/keel-locksmith.service"),
                "/dev/null"
            );
            assert!(recorded.contains(&"restart kubelet.service".to_string()));
        }
        "write-files-encodings.yml" => {
            let script = "#!/bin/sh\necho base64\n";
            assert_eq!(read(r, "/etc/enc/plain"), "plain text");
            assert_eq!(mode(r, "/etc/enc/plain"), 0o644);
            assert_eq!(read(r, "/etc/enc/base64"), script);
            assert_eq!(mode(r, "/etc/enc/base64"), 0o755);
            assert_eq!(read(r, "/etc/enc/b64"), script);
            assert_eq!(mode(r, "/etc/enc/b64"), 0o744);
            for p in ["/etc/enc/gz", "/etc/enc/gzip"] {
                assert_eq!(read(r, p), "gzip-binary\n", "{p}");
            }
            for p in [
                "/etc/enc/gz+base64",
                "/etc/enc/gzip+base64",
                "/etc/enc/gz+b64",
                "/etc/enc/gzip+b64",
            ] {
                assert_eq!(read(r, p), "plain gz+b64\n", "{p}");
            }
            assert_eq!(mode(r, "/etc/enc/gzip+b64"), 0o1750);
            assert_eq!(owner(r, "/srv/deep/new/dir/file.conf"), (500, 500));
            assert_eq!(owner(r, "/srv/deep/new"), (0, 0));
            assert_eq!(mode(r, "/srv/deep/new/dir"), 0o755);
        }
        "users-all-fields.yml" => {
            let passwd = read(r, "/etc/passwd");
            assert!(
                passwd.contains("elroy:x:1000:1000:Elroy Jetson:/home/elroy:/bin/zsh\n"),
                "{passwd}"
            );
            assert!(
                passwd.contains("etcd-backup:x:999:100::/var/lib/etcd-backup:/sbin/nologin\n"),
                "{passwd}"
            );
            assert!(
                passwd.contains("builder:x:1001:233::/home/builder:/bin/bash\n"),
                "{passwd}"
            );
            let shadow = read(r, "/etc/shadow");
            assert!(shadow.contains(
                "elroy:$6$5s2u6/jR$un0AvWnqilcgaNB3Mkxd5yYv6mTlWfOoCYHZmfi3LDKVltj.E8XNKEcwWm...:20000:0:99999:7:::\n"
            ));
            assert!(shadow.contains("core:$6$rounds=4096$keel$corehash:20000:0:99999:7:::\n"));
            assert!(!r.join("var/lib/etcd-backup").exists());
            assert!(!read(r, "/etc/group").contains("etcd-backup"));
            assert!(!read(r, "/etc/group").contains("builder:"));
            assert_eq!(
                read(r, "/home/core/.ssh/authorized_keys"),
                "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABCoreUserKey core@laptop\n"
            );
            assert_eq!(owner(r, "/home/elroy/.ssh"), (1000, 1000));
        }
        "cloud-oem.yml" => {
            assert_eq!(
                read(r, "/etc/oem-release"),
                "ID=keelcloud\nVERSION_ID=0.0.4\nNAME=\"Keel Test Cloud\"\n\
                 HOME_URL=\"https://cloud.example.invalid/\"\nBUG_REPORT_URL=\"https://cloud.example.invalid/bugs\"\n"
            );
            assert!(read(r, "/run/systemd/system/oem-metadata.service").contains("fetch-metadata"));
            assert!(read(r, "/run/systemd/network/10-eth0.network").contains("DHCP=yes"));
            assert_eq!(
                link(r, "/run/systemd/system/systemd-timesyncd.service"),
                "/dev/null"
            );
            assert_eq!(
                recorded,
                [
                    "daemon-reload",
                    "restart systemd-networkd.service",
                    "start oem-metadata.service",
                    "restart keel-updater.service",
                ]
            );
        }
        "script.sh" => {
            let path = "/var/lib/keel/cloudinit/scripts/user-data";
            assert!(read(r, path).contains("echo \"node ip: $private_ipv4\""));
            assert_eq!(mode(r, path), 0o744);
            assert_eq!(
                recorded,
                [format!(
                    "start-transient keel-cloudinit-user-data.service {path}"
                )]
            );
        }
        "mime-multipart.txt" => {
            assert_eq!(read(r, "/etc/hostname"), "mime-node\n");
            assert_eq!(read(r, "/etc/mime-part"), "from part one");
            assert_eq!(
                read(r, "/var/lib/keel/cloudinit/scripts/part-2"),
                "#!/bin/sh\necho base64\n"
            );
        }
        other => panic!("no checks for {other}"),
    }
    let record = read(r, "/var/lib/keel/cloudinit/applied.json");
    assert!(record.contains("\"source\": \"test\""), "{record}");
}

#[test]
fn gzip_user_data_is_applied() {
    let plain = std::fs::read(fixture("corpus/kube-master.yml")).unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&plain).unwrap();
    let gz = enc.finish().unwrap();
    let root = base_root();
    apply_bytes(root.path(), &gz, &metadata());
    assert_eq!(read(root.path(), "/etc/hostname"), "kube-master-1\n");
}

#[test]
fn a_config_with_one_error_applies_nothing() {
    let root = base_root();
    let before = snapshot(root.path());
    let bytes = std::fs::read(fixture("corpus/one-error.yml")).unwrap();
    let doc = keel_cloudinit::load(&bytes);
    assert!(!doc.is_applicable());
    // The binary refuses too, and exits 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel-cloudinit"))
        .args(["apply", "--root"])
        .arg(root.path())
        .arg("--from-file")
        .arg(fixture("corpus/one-error.yml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line 11: error: invalid value lol\n"
    );
    assert_eq!(snapshot(root.path()), before);
}

#[test]
fn planning_errors_touch_nothing() {
    let root = base_root();
    let before = snapshot(root.path());
    let bytes = b"#cloud-config\nhostname: x\nusers:\n  - name: a\n    groups: [no-such-group]\n";
    let doc = keel_cloudinit::load(bytes);
    assert!(doc.is_applicable());
    let opts = keel_cloudinit::apply::PlanOptions::new(root.path());
    let err = keel_cloudinit::apply::plan(&doc.config, &doc.scripts, &opts).unwrap_err();
    assert_eq!(
        err.to_string(),
        "user \"a\": group \"no-such-group\" does not exist"
    );
    assert_eq!(snapshot(root.path()), before);
}

#[test]
fn binary_dry_run_prints_the_plan_and_writes_nothing() {
    let root = base_root();
    let before = snapshot(root.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel-cloudinit"))
        .args(["apply", "--dry-run", "--root"])
        .arg(root.path())
        .arg("--from-file")
        .arg(fixture("corpus/kube-master.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("hostname kube-master-1\n"), "{plan}");
    assert!(
        plan.contains("write /etc/kubernetes/ssl/ca.pem (67 bytes, mode 0600, owner 0:0)\n"),
        "{plan}"
    );
    assert!(plan.contains("enable kubelet.service\n"), "{plan}");
    assert!(
        plan.contains("daemon-reload\nstart keel-store.service\nstart kubelet.service\n"),
        "{plan}"
    );
    assert_eq!(snapshot(root.path()), before);

    // validate via the binary: exit 0, warnings printed.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel-cloudinit"))
        .args(["validate", "--format", "json", "--from-file"])
        .arg(fixture("corpus/vagrant-cluster.yml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["kind"], "warning");
    assert_eq!(v[0]["line"], 13);
}

/// Every path under the root with its content (or link target) and mode.
fn snapshot(root: &Path) -> Vec<(String, String, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_dir() {
                stack.push(p.clone());
                String::new()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().display().to_string()
            } else {
                std::fs::read_to_string(&p).unwrap_or_default()
            };
            out.push((p.display().to_string(), content, m.mode()));
        }
    }
    out.sort();
    out
}
