//! keel-locksmith refuses bad input clearly and never loses a slot: a corrupt semaphore
//! in the store, a max below the holders, an unknown strategy; and it keeps what old
//! locksmith clients wrote (`holders: null`, extra fields, slots without Keel records).

use keel_locksmith::sim::SimHost;
use keel_tests::server::keel_locksmith_bin;
use keel_tests::v3::run;
use keel_tests::{Flavor, Server};
use std::process::Command;
use std::time::{Duration, Instant};

const KEY: &str = "coreos.com/updateengine/rebootlock/semaphore";

fn ctl(server: &Server, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(keel_locksmith_bin())
        .args(["--endpoint", &server.client_url()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn get(etcd: &etcd_client::Client, key: &str) -> String {
    let r = etcd.clone().get(key, None).await.unwrap();
    String::from_utf8(r.kvs()[0].value().to_vec()).unwrap()
}

#[test]
fn corrupt_semaphore_is_refused_with_its_key_and_nothing_is_lost() {
    run(|| async {
        let server = Server::start(Flavor::Keel);
        let etcd = etcd_client::Client::connect([server.client_url()], None)
            .await
            .unwrap();
        let corrupt = r#"{"semaphore":1,"max":"#;
        etcd.clone().put(KEY, corrupt, None).await.unwrap();
        for args in [
            vec!["status"],
            vec!["lock", "m1"],
            vec!["unlock", "m1"],
            vec!["set-max", "3"],
        ] {
            let (code, _, err) = ctl(&server, &args);
            assert_ne!(code, 0, "{args:?} must fail");
            assert!(
                err.contains(KEY),
                "{args:?}: the error names the key: {err}"
            );
        }
        assert_eq!(get(&etcd, KEY).await, corrupt, "nothing was written");
        // A daemon that needs a reboot waits (and says why) instead of rebooting.
        let dir = tempfile::tempdir().unwrap();
        let host = SimHost::create(dir.path(), 0).unwrap();
        let mut d = host
            .spawn(&keel_locksmith_bin(), &server.client_url(), "", &[])
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !host.log().contains(KEY) {
            assert!(
                Instant::now() < deadline,
                "no error naming the key:\n{}",
                host.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            d.try_wait().unwrap().is_none(),
            "no reboot on a corrupt semaphore"
        );
        assert_eq!(get(&etcd, KEY).await, corrupt);
        // Repaired by the operator: the daemon goes on.
        etcd.clone()
            .put(KEY, r#"{"semaphore":1,"max":1,"holders":null}"#, None)
            .await
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), d.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(75), "{}", host.log());
    });
}

#[test]
fn max_below_holders_and_old_client_values() {
    run(|| async {
        let server = Server::start(Flavor::Keel);
        let etcd = etcd_client::Client::connect([server.client_url()], None)
            .await
            .unwrap();
        // Written by an old client or by hand: two holders without Keel records, max 1,
        // a field Keel does not know.
        etcd.clone()
            .put(
                KEY,
                r#"{"semaphore":-1,"max":1,"holders":["a","b"],"note":"ceph"}"#,
                None,
            )
            .await
            .unwrap();
        let (code, out, _) = ctl(&server, &["status"]);
        assert_eq!(code, 0);
        assert!(
            out.starts_with("Available: -1\nMax: 1\n\nMACHINE ID\na\nb\n"),
            "{out}"
        );
        assert!(out.contains("legacy"), "{out}");
        let (code, _, err) = ctl(&server, &["lock", "c"]);
        assert_eq!(code, 1);
        assert!(
            err.starts_with("Error locking: ") && err.contains("semaphore is at -1"),
            "{err}"
        );
        // Lowering max below the holders needs --force; raising it is fine.
        let (code, _, err) = ctl(&server, &["set-max", "0"]);
        assert_eq!(code, 1);
        assert!(err.contains("below the 2 current holders"), "{err}");
        let (code, _, err) = ctl(&server, &["set-max", "-1", "--force"]);
        assert_eq!(code, 1);
        assert!(err.contains("zero or more"), "{err}");
        assert_eq!(
            get(&etcd, KEY).await,
            r#"{"semaphore":-1,"max":1,"holders":["a","b"],"note":"ceph"}"#
        );
        let (code, out, _) = ctl(&server, &["set-max", "3"]);
        assert_eq!((code, out.as_str()), (0, "Old-Max: 1\nMax: 3\n"));
        let (code, _, _) = ctl(&server, &["lock", "c"]);
        assert_eq!(code, 0);
        assert_eq!(
            get(&etcd, KEY).await,
            r#"{"semaphore":0,"max":3,"holders":["a","b","c"],"note":"ceph"}"#
        );
        let (code, _, err) = ctl(&server, &["unlock", "zz"]);
        assert_eq!(
            (code, err.as_str()),
            (1, "Error unlocking: holder does not exist\n")
        );
        for id in ["a", "b", "c"] {
            assert_eq!(ctl(&server, &["unlock", id]).0, 0);
        }
        assert_eq!(
            get(&etcd, KEY).await,
            r#"{"semaphore":3,"max":3,"holders":[],"note":"ceph"}"#
        );

        // A slot this host took without Keel (old locksmith, `lock` while the daemon was
        // stopped) is released when the daemon starts, as locksmith does.
        let dir = tempfile::tempdir().unwrap();
        let host = SimHost::create(dir.path(), 0).unwrap();
        std::fs::remove_file(host.root.join("run/reboot-required")).unwrap();
        etcd.clone()
            .put(
                KEY,
                format!(r#"{{"semaphore":2,"max":3,"holders":["{}"]}}"#, host.id),
                None,
            )
            .await
            .unwrap();
        let mut d = host
            .spawn(&keel_locksmith_bin(), &server.client_url(), "", &[])
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while get(&etcd, KEY).await != r#"{"semaphore":3,"max":3,"holders":[]}"# {
            assert!(Instant::now() < deadline, "not released:\n{}", host.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = d.start_kill();
    });
}

#[test]
fn unknown_strategy_is_refused_naming_its_source() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc/coreos")).unwrap();
    std::fs::write(
        dir.path().join("etc/coreos/update.conf"),
        "GROUP=stable\nREBOOT_STRATEGY=sometimes\n",
    )
    .unwrap();
    let out = Command::new(keel_locksmith_bin())
        .args(["daemon", "--no-dbus", "--reboot-method", "exit", "--root"])
        .arg(dir.path())
        .env_remove("REBOOT_STRATEGY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("\"sometimes\"") && err.contains("etc/coreos/update.conf:2"),
        "{err}"
    );
    let out = Command::new(keel_locksmith_bin())
        .args(["daemon", "--no-dbus", "--reboot-method", "exit", "--root"])
        .arg(dir.path())
        .env("REBOOT_STRATEGY", "best_effort")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("environment variable REBOOT_STRATEGY"),
        "{err}"
    );
    // `off` exits 0 at once, as locksmithd.
    let out = Command::new(keel_locksmith_bin())
        .args(["daemon", "--no-dbus", "--reboot-method", "exit", "--root"])
        .arg(dir.path())
        .env("REBOOT_STRATEGY", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}
