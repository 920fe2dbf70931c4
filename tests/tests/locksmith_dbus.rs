//! keel-locksmith's host integration over D-Bus, on a private `dbus-daemon` where test
//! services play logind (`Reboot`, `ListInhibitors`, `ListSessions`) and the update agent
//! (`com.coreos.update1`: `GetStatus`, `GetBootStatus`, the `StatusUpdate` signal sent by
//! `keel-locksmith send-need-reboot`). The daemon must call `Reboot` exactly once, only
//! after a reboot is needed, a slot is held and no inhibitor blocks shutdown; after the
//! "reboot" it must keep the slot until the updater marks the booted version good.

use keel_locksmith::sim::SimHost;
use keel_locksmith::store::{Group, StoreOptions};
use keel_tests::dbus::PrivateBus;
use keel_tests::server::keel_locksmith_bin;
use keel_tests::v3::run;
use keel_tests::{Flavor, Server};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Fake {
    marked_good: Mutex<bool>,
}

struct Updater(Arc<Fake>);

#[zbus::interface(name = "com.coreos.update1.Manager")]
impl Updater {
    fn get_status(&self) -> (i64, f64, String, String, i64) {
        (0, 0.0, "UPDATE_STATUS_IDLE".into(), String::new(), 0)
    }

    fn get_boot_status(&self) -> (String, bool) {
        ("1.1.0".into(), *self.0.marked_good.lock().unwrap())
    }
}

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

fn daemon(host: &SimHost, server: &Server, bus: &PrivateBus) -> tokio::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(host.root.join("daemon.log"))
        .unwrap();
    tokio::process::Command::new(keel_locksmith_bin())
        .args(["daemon", "--root"])
        .arg(&host.root)
        .args([
            "--strategy",
            "etcd-lock",
            "--endpoint",
            &server.client_url(),
        ])
        .args([
            "--retry-interval",
            "200ms",
            "--retry-max",
            "1s",
            "--login-delay",
            "0s",
        ])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .env_remove("REBOOT_STRATEGY")
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[test]
fn reboots_once_through_logind_only_when_allowed() {
    run(|| async {
        let bus = PrivateBus::start();
        let fake = Arc::new(Fake::default());
        let (_logind, logind) = bus.serve_logind().await;
        let _updater = zbus::connection::Builder::address(bus.address.as_str())
            .unwrap()
            .name("com.coreos.update1")
            .unwrap()
            .serve_at("/com/coreos/update1", Updater(fake.clone()))
            .unwrap()
            .build()
            .await
            .unwrap();
        let server = Server::start(Flavor::Keel);
        let client = keel_locksmith::store::connect(&StoreOptions {
            endpoints: vec![server.client_url()],
            ..StoreOptions::default()
        })
        .await
        .unwrap();
        let g = Group::new(client, "", "test");
        let dir = tempfile::tempdir().unwrap();
        let host = SimHost::create(dir.path(), 0).unwrap();
        // No sentinel: the update agent's signal is the trigger here.
        std::fs::remove_file(host.root.join("run/reboot-required")).unwrap();
        let mut d = daemon(&host, &server, &bus);

        // Nothing needed yet: no reboot.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(logind.reboots.lock().unwrap().is_empty());
        assert!(d.try_wait().unwrap().is_none(), "{}", host.log());

        // A maintenance job inhibits shutdown; the update agent says a reboot is needed.
        logind.inhibitors.lock().unwrap().push((
            "shutdown:sleep".into(),
            "ceph".into(),
            "rebalancing".into(),
            "block".into(),
            0,
            42,
        ));
        let out = std::process::Command::new(keel_locksmith_bin())
            .arg("send-need-reboot")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(
            "the daemon to wait on the inhibitor",
            Duration::from_secs(20),
            || async {
                g.view()
                    .await
                    .unwrap()
                    .waiting
                    .iter()
                    .any(|w| w.waiting_for == "inhibitor")
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            logind.reboots.lock().unwrap().is_empty(),
            "inhibited: no reboot"
        );
        let view = g.view().await.unwrap();
        assert!(
            view.semaphore.unwrap().value.holders().is_empty(),
            "no slot taken while inhibited"
        );

        // The inhibitor goes away: one reboot, not interactive, with the slot held.
        logind.inhibitors.lock().unwrap().clear();
        wait_for("Reboot", Duration::from_secs(20), || async {
            !logind.reboots.lock().unwrap().is_empty()
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            *logind.reboots.lock().unwrap(),
            vec![false],
            "exactly one Reboot(false)"
        );
        let view = g.view().await.unwrap();
        assert_eq!(
            view.semaphore.as_ref().unwrap().value.holders(),
            std::slice::from_ref(&host.id)
        );
        let holder = &view.holder(&host.id).unwrap().value;
        assert_eq!(holder.state.as_str(), "rebooting");
        assert!(
            holder.reason.contains("UPDATE_STATUS_UPDATED_NEED_REBOOT"),
            "{holder:?}"
        );
        assert_eq!(holder.from_version, keel_locksmith::sim::FROM_VERSION);

        // "Reboot": systemd stops the daemon, the host comes back with a new boot id.
        d.start_kill().unwrap();
        let _ = d.wait().await;
        host.new_boot("1.1.0").unwrap();
        let mut d = daemon(&host, &server, &bus);
        wait_for(
            "the slot to be verifying",
            Duration::from_secs(20),
            || async {
                g.view()
                    .await
                    .unwrap()
                    .holder(&host.id)
                    .is_some_and(|h| h.value.state.as_str() == "verifying")
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            g.view()
                .await
                .unwrap()
                .semaphore
                .unwrap()
                .value
                .holds(&host.id),
            "the slot is kept until the updater marks the boot good"
        );
        *fake.marked_good.lock().unwrap() = true;
        wait_for("the release", Duration::from_secs(20), || async {
            g.view()
                .await
                .unwrap()
                .semaphore
                .unwrap()
                .value
                .holders()
                .is_empty()
        })
        .await;
        let history = g.history(10).await.unwrap();
        let released = history.iter().rev().find(|e| e.id == host.id).unwrap();
        assert!(released.detail.contains("healthy"), "{released:?}");
        assert_eq!(
            *logind.reboots.lock().unwrap(),
            vec![false],
            "no second reboot"
        );
        let _ = d.start_kill();
    });
}
