//! Reboot coordination across a simulated fleet: 20 hosts, each a real
//! `keel-locksmith daemon` process with its own machine id, rebooted by a supervisor
//! (new boot id, new OS version) when the daemon asks, against Debian's etcd 3.4 and
//! against keel-store. A watcher records every version of the semaphore.
//!
//! Also: a holder killed for good (lease reclaim vs. locksmith's behaviour), reboot
//! windows, and a host whose update fails stopping its group until `resume`.

use keel_locksmith::keys::GroupKeys;
use keel_locksmith::sim::{FleetSpec, SimHost, TARGET_VERSION, run_fleet, watch_semaphore};
use keel_locksmith::store::{Group, StoreOptions};
use keel_tests::server::keel_locksmith_bin;
use keel_tests::v3::run;
use keel_tests::{Flavor, Server};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

async fn group(server: &Server, name: &str) -> Group {
    let client = keel_locksmith::store::connect(&StoreOptions {
        endpoints: vec![server.client_url()],
        ..StoreOptions::default()
    })
    .await
    .expect("connect");
    Group::new(client, name, "test")
}

/// Waits until `f` holds, polling; panics with `what` after `timeout`.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fleet(flavor: Flavor) {
    run(move || async move {
        let server = Server::start(flavor);
        let dir = tempfile::tempdir().unwrap();
        let spec = FleetSpec {
            binary: keel_locksmith_bin(),
            endpoint: server.client_url(),
            group: String::new(),
            hosts: 20,
            max: 2,
            reboot_time: Duration::from_millis(300),
            failing: BTreeSet::new(),
            lease_ttl: 30,
            max_failures: 1,
            timeout: Duration::from_secs(150),
            extra_args: Vec::new(),
        };
        let report = run_fleet(&spec, dir.path()).await.unwrap();
        assert!(
            report.observations.len() >= 40,
            "every grant and release is a version: {}",
            report.observations.len()
        );
        for o in &report.observations {
            assert!(
                o.holders.len() <= 2,
                "revision {} has {} holders: {:?}",
                o.revision,
                o.holders.len(),
                o.holders
            );
        }
        assert_eq!(report.peak_holders, 2, "max=2 should be used");
        assert_eq!(
            report.reboots,
            vec![1; 20],
            "every host reboots exactly once"
        );
        let ids: BTreeSet<String> = report.ids.iter().cloned().collect();
        assert_eq!(report.ever_held(), ids, "every host held a slot");
        let g = group(&server, "").await;
        let view = g.view().await.unwrap();
        let sem = view.semaphore.unwrap().value;
        assert_eq!(
            (sem.semaphore, sem.max, sem.holders().len()),
            (2, 2, 0),
            "all slots free"
        );
        assert!(view.holders.is_empty() && view.failed.is_empty() && !view.policy.value.paused);
        let history = g.history(1000).await.unwrap();
        let count = |k: &str| {
            history
                .iter()
                .filter(|e| serde_json::to_value(e.kind).unwrap() == k)
                .count()
        };
        assert_eq!(
            (count("granted"), count("released"), count("reclaimed")),
            (20, 20, 0)
        );
        for e in history
            .iter()
            .filter(|e| serde_json::to_value(e.kind).unwrap() == "released")
        {
            assert!(
                e.detail.contains(TARGET_VERSION) && e.detail.contains("healthy"),
                "{e:?}"
            );
        }
    });
}

#[test]
fn fleet_of_20_against_etcd() {
    fleet(Flavor::Etcd);
}

#[test]
fn fleet_of_20_against_keel_store() {
    fleet(Flavor::Keel);
}

/// Starts one simulated host's daemon with `extra` flags.
fn start(host: &SimHost, server: &Server, group: &str, extra: &[&str]) -> tokio::process::Child {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    host.spawn(&keel_locksmith_bin(), &server.client_url(), group, &extra)
        .unwrap()
}

fn holders(view: &keel_locksmith::store::GroupView) -> Vec<String> {
    view.semaphore
        .as_ref()
        .map(|s| s.value.holders().to_vec())
        .unwrap_or_default()
}

#[test]
fn dead_holder_frees_its_slot_after_the_lease_ttl() {
    run(|| async {
        let server = Server::start(Flavor::Keel);
        let dir = tempfile::tempdir().unwrap();
        let g = group(&server, "leased").await;
        g.init().await.unwrap();
        g.update_policy(None, false, |p| p.lease_ttl = 2)
            .await
            .unwrap();
        let a = SimHost::create(dir.path(), 0).unwrap();
        let b = SimHost::create(dir.path(), 1).unwrap();
        // `a` takes the slot and is killed for good right before rebooting: the login
        // delay keeps it holding (no sessions without D-Bus, so use a closed-window trick
        // instead: kill it as soon as it holds).
        let mut da = start(&a, &server, "leased", &[]);
        wait_for("a to hold the slot", Duration::from_secs(20), || async {
            holders(&g.view().await.unwrap()) == vec![a.id.clone()]
        })
        .await;
        da.start_kill().unwrap();
        let _ = da.wait().await;
        // With max 1 and `a` dead, `b` gets the slot only once `a`'s lease expired.
        let killed = Instant::now();
        let mut db = start(&b, &server, "leased", &[]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let view = g.view().await.unwrap();
            if holders(&view) == vec![b.id.clone()] || db.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "b never got the slot:\n{}",
                b.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            killed.elapsed() >= Duration::from_millis(1500),
            "lease of 2 s respected: {:?}",
            killed.elapsed()
        );
        let history = g.history(100).await.unwrap();
        let reclaimed: Vec<_> = history
            .iter()
            .filter(|e| e.id == a.id && serde_json::to_value(e.kind).unwrap() == "reclaimed")
            .collect();
        assert_eq!(reclaimed.len(), 1, "the reclaim is recorded: {history:#?}");
        assert!(
            reclaimed[0].detail.contains("lease expired"),
            "{:?}",
            reclaimed[0]
        );
        let _ = db.start_kill();
        let _ = db.wait().await;

        // Leases off: locksmith's behaviour, the dead holder keeps the slot until unlock.
        let g2 = group(&server, "unleased").await;
        g2.init().await.unwrap();
        g2.update_policy(None, false, |p| p.lease_ttl = 0)
            .await
            .unwrap();
        let c = SimHost::create(dir.path(), 2).unwrap();
        let d = SimHost::create(dir.path(), 3).unwrap();
        let mut dc = start(&c, &server, "unleased", &[]);
        wait_for("c to hold", Duration::from_secs(20), || async {
            holders(&g2.view().await.unwrap()) == vec![c.id.clone()]
        })
        .await;
        dc.start_kill().unwrap();
        let _ = dc.wait().await;
        let mut dd = start(&d, &server, "unleased", &[]);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            holders(&g2.view().await.unwrap()),
            vec![c.id.clone()],
            "no lease, no reclaim"
        );
        assert!(dd.try_wait().unwrap().is_none(), "d must still be waiting");
        // The operator frees it with `unlock`; d then reboots.
        let out = std::process::Command::new(keel_locksmith_bin())
            .args([
                "--endpoint",
                &server.client_url(),
                "--group",
                "unleased",
                "unlock",
                &c.id,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = tokio::time::timeout(Duration::from_secs(30), dd.wait())
            .await
            .expect("d reboots")
            .unwrap();
        assert_eq!(status.code(), Some(75), "{}", d.log());
    });
}

#[test]
fn window_closed_nobody_reboots_then_open_they_do() {
    run(|| async {
        let server = Server::start(Flavor::Keel);
        let dir = tempfile::tempdir().unwrap();
        let g = group(&server, "windowed").await;
        g.init().await.unwrap();
        g.set_max(3, false).await.unwrap();
        let hosts: Vec<SimHost> = (0..3)
            .map(|i| SimHost::create(dir.path(), i).unwrap())
            .collect();
        // A one-minute window twelve hours from now is closed.
        let now = chrono::Local::now();
        let closed = (now + chrono::Duration::hours(12))
            .format("%H:%M")
            .to_string();
        let mut daemons: Vec<_> = hosts
            .iter()
            .map(|h| {
                start(
                    h,
                    &server,
                    "windowed",
                    &["--window-start", &closed, "--window-length", "1m"],
                )
            })
            .collect();
        wait_for(
            "all three to report waiting for the window",
            Duration::from_secs(20),
            || async {
                let view = g.view().await.unwrap();
                view.waiting.len() == 3 && view.waiting.iter().all(|w| w.waiting_for == "window")
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let view = g.view().await.unwrap();
        assert!(
            holders(&view).is_empty(),
            "nobody may lock outside the window"
        );
        for d in &mut daemons {
            assert!(
                d.try_wait().unwrap().is_none(),
                "nobody may reboot outside the window"
            );
            d.start_kill().unwrap();
            let _ = d.wait().await;
        }
        // A window that opened a minute ago and lasts two hours: all reboot.
        let open = (now - chrono::Duration::minutes(1))
            .format("%H:%M")
            .to_string();
        for h in &hosts {
            let mut d = start(
                h,
                &server,
                "windowed",
                &["--window-start", &open, "--window-length", "2h"],
            );
            let status = tokio::time::timeout(Duration::from_secs(30), d.wait())
                .await
                .expect("reboots")
                .unwrap();
            assert_eq!(status.code(), Some(75), "{}", h.log());
        }
    });
}

#[test]
fn a_failed_host_pauses_its_group_until_resume() {
    run(|| async {
        let server = Server::start(Flavor::Keel);
        let dir = tempfile::tempdir().unwrap();
        let g = group(&server, "canary").await;
        g.init().await.unwrap();
        let seen = watch_semaphore(
            g.client().clone(),
            "canary",
            g.view().await.unwrap().revision + 1,
        )
        .await
        .unwrap();
        let bad = SimHost::create(dir.path(), 0).unwrap();
        let good = SimHost::create(dir.path(), 1).unwrap();
        // The canary reboots, but comes back on the old version (its update rolled back).
        let mut d = start(&bad, &server, "canary", &[]);
        let status = tokio::time::timeout(Duration::from_secs(30), d.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(75), "{}", bad.log());
        bad.new_boot(keel_locksmith::sim::FROM_VERSION).unwrap();
        let mut d = start(&bad, &server, "canary", &[]);
        wait_for("the group to pause", Duration::from_secs(30), || async {
            g.view().await.unwrap().policy.value.paused
        })
        .await;
        let view = g.view().await.unwrap();
        assert_eq!(view.failed.len(), 1);
        assert!(
            view.failed[0].reason.contains("not the target"),
            "{:?}",
            view.failed[0]
        );
        assert!(
            holders(&view).is_empty(),
            "the failed host gave its slot back"
        );
        // Another host wants to reboot: refused while paused.
        let mut dg = start(&good, &server, "canary", &[]);
        wait_for(
            "the good host to wait on the pause",
            Duration::from_secs(20),
            || async {
                g.view()
                    .await
                    .unwrap()
                    .waiting
                    .iter()
                    .any(|w| w.id == good.id && w.waiting_for == "paused")
            },
        )
        .await;
        assert!(dg.try_wait().unwrap().is_none());
        let status_out = std::process::Command::new(keel_locksmith_bin())
            .args([
                "--endpoint",
                &server.client_url(),
                "--group",
                "canary",
                "status",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&status_out.stdout);
        assert!(text.starts_with("Available: 1\nMax: 1\n"), "{text}");
        assert!(
            text.contains("PAUSED")
                && text.contains("FAILED")
                && text.contains(&bad.id)
                && text.contains("WAITING"),
            "{text}"
        );
        // The operator resumes: the good host reboots.
        let out = std::process::Command::new(keel_locksmith_bin())
            .args([
                "--endpoint",
                &server.client_url(),
                "--group",
                "canary",
                "resume",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        let status = tokio::time::timeout(Duration::from_secs(30), dg.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(75), "{}", good.log());
        let _ = d.start_kill();
        let obs = seen.lock().unwrap().clone();
        assert!(obs.iter().all(|o| o.holders.len() <= 1));
        let keys = GroupKeys::new("canary");
        assert!(keys.semaphore().contains("groups/canary"));
    });
}
