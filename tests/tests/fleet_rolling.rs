//! Issue 10, scenario 3 (coordinated reboots) on booted Keel images: three nodes on
//! 1.0.0 with `reboot-strategy: etcd-lock` against a keel-store on the host, max 1, all
//! offered 1.1.0. A watcher on the semaphore records every version of it. The first
//! node to take the slot is killed while it holds it (QEMU quit); the others wait for
//! its lease to expire, then update one at a time; the killed node, powered on again,
//! finishes on 1.1.0 too.

use keel_images::qemu::Node;
use keel_locksmith::sim::{Observation, watch_semaphore};
use keel_tests::fleet::{Extra, Services, field, updater_status};
use keel_tests::image::shared_image;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NAMES: [&str; 3] = ["fleet-1", "fleet-2", "fleet-3"];
/// Lease TTL behind each slot (the policy's `--lease-ttl`).
const LEASE_TTL: u64 = 60;

/// The unix time of the first journal line of this boot matching `pattern`.
fn journal_time(node: &Node, unit: &str, pattern: &str) -> f64 {
    let out = node
        .ssh_ok(
            "root",
            &format!("journalctl -b -o short-unix -u {unit} --no-pager | grep -F '{pattern}'"),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("{}: no {pattern:?} from {unit}: {e}", node.info.name));
    out.lines()
        .find_map(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}: no {pattern:?} from {unit}: {out}", node.info.name))
}

/// Holder changes seen: `(when, holders)` for every semaphore version that differs
/// from the one before.
fn changes(seen: &Arc<Mutex<Vec<Observation>>>) -> Vec<(Instant, Vec<String>)> {
    let mut out: Vec<(Instant, Vec<String>)> = Vec::new();
    for o in seen.lock().unwrap().iter() {
        if out.last().map(|(_, h)| h) != Some(&o.holders) {
            out.push((o.at, o.holders.clone()));
        }
    }
    out
}

#[test]
fn vm_nodes_update_one_at_a_time_and_a_killed_holder_is_reclaimed() {
    let (next, m2) = shared_image("1.1.0");
    let s = Services::start(&next.join(&m2.payload), &m2.payload, "1.1.0");
    s.locksmithctl(&["set-max", "1"]);
    s.locksmithctl(&["policy", "--lease-ttl", &LEASE_TTL.to_string()]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let seen = runtime.block_on(async {
        let client = etcd_client::Client::connect([s.store.client_url()], None)
            .await
            .unwrap();
        watch_semaphore(client, "", 1).await.unwrap()
    });
    let start = Instant::now();
    let log = |what: &str| eprintln!("[{:>5.1}s] {what}", start.elapsed().as_secs_f64());
    let mut nodes: Vec<Node> = NAMES.iter().map(|n| s.boot(n, &Extra::default())).collect();
    let mut ids = BTreeMap::new();
    for node in &nodes {
        let first = node.wait_ready(1, Duration::from_secs(600)).unwrap();
        assert_eq!(field(&first, "version"), Some("1.0.0"), "{first}");
        let id = node
            .ssh_ok("root", "cat /etc/machine-id", Duration::from_secs(120))
            .unwrap();
        ids.insert(id.trim().to_string(), node.info.name.clone());
    }
    log(&format!("all booted: {ids:?}"));

    // The first holder is killed while it holds the slot.
    let deadline = Instant::now() + Duration::from_secs(600);
    let victim_id = loop {
        if let Some((_, h)) = changes(&seen).iter().find(|(_, h)| !h.is_empty()) {
            break h[0].clone();
        }
        assert!(Instant::now() < deadline, "nobody took the slot");
        std::thread::sleep(Duration::from_millis(200));
    };
    let victim = NAMES
        .iter()
        .position(|n| Some(&n.to_string()) == ids.get(&victim_id))
        .expect("the holder is one of the nodes");
    nodes[victim].kill();
    let killed_at = Instant::now();
    log(&format!("killed {} holding the slot", NAMES[victim]));

    // The others take the slot one at a time after the lease expired, reboot into
    // 1.1.0, pass their health gate and give it back.
    let deadline = Instant::now() + Duration::from_secs(1200);
    let others: Vec<usize> = (0..NAMES.len()).filter(|&i| i != victim).collect();
    loop {
        let updated = others.iter().all(|&i| {
            nodes[i]
                .console()
                .contains("keel-ready version=1.1.0 slot=B")
        });
        let c = changes(&seen);
        let holds = c.iter().filter(|(_, h)| !h.is_empty()).count();
        if updated && holds == NAMES.len() && c.last().is_some_and(|(_, h)| h.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the others did not finish: holders {:?}",
            c.iter().map(|(_, h)| h).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    log("the others updated and released");

    let c = changes(&seen);
    for (at, h) in &c {
        eprintln!(
            "  +{:>5.1}s holders {:?}",
            at.duration_since(start).as_secs_f64(),
            h.iter().map(|id| &ids[id]).collect::<Vec<_>>()
        );
    }
    // Never two holders; the victim first, reclaimed only after its lease ran out,
    // then each of the others exactly once.
    assert!(c.iter().all(|(_, h)| h.len() <= 1), "overlap: {c:?}");
    let order: Vec<&String> = c.iter().filter_map(|(_, h)| h.first()).collect();
    assert_eq!(order.len(), NAMES.len(), "holders in turn: {order:?}");
    assert_eq!(order[0], &victim_id);
    let reclaimed = c
        .iter()
        .skip_while(|(_, h)| h.is_empty())
        .find(|(_, h)| h.is_empty())
        .map(|(at, _)| *at)
        .unwrap();
    let waited = reclaimed.saturating_duration_since(killed_at);
    log(&format!(
        "victim's slot reclaimed {waited:?} after the kill"
    ));
    assert!(
        waited >= Duration::from_secs(LEASE_TTL / 2),
        "reclaimed {waited:?} after the kill, before its lease could expire"
    );
    for &i in &others {
        let node = &nodes[i];
        assert_eq!(node.launches(), 2, "{}: one reboot", NAMES[i]);
        // Released on the new boot, after the updater blessed the slot.
        let blessed = journal_time(node, "keel-updater", "healthy and blessed");
        let released = journal_time(node, "keel-locksmith", "released the reboot slot");
        log(&format!(
            "{}: blessed at {blessed}, released at {released}",
            NAMES[i]
        ));
        assert!(blessed <= released, "{}: released before healthy", NAMES[i]);
        let v = updater_status(node);
        assert_eq!(v["booted_slot"], "USR-B", "{}: {v}", NAMES[i]);
        assert_eq!(v["slots"][1]["ok"], true, "{}: {v}", NAMES[i]);
    }
    let history = s.locksmithctl(&["history"]);
    eprintln!("{history}");
    assert!(history.contains("reclaim"), "{history}");

    // Power back on: the killed node boots the slot it had installed and is blessed.
    let mut o = nodes[victim].options().clone();
    o.fresh = false;
    nodes[victim] = Node::start(o).unwrap();
    let back = nodes[victim]
        .wait_ready(2, Duration::from_secs(600))
        .unwrap();
    log(&format!("{} back: {back}", NAMES[victim]));
    assert_eq!(field(&back, "version"), Some("1.1.0"), "{back}");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let v = updater_status(&nodes[victim]);
        if v["slots"][1]["ok"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} not blessed: {v}",
            NAMES[victim]
        );
        std::thread::sleep(Duration::from_secs(5));
    }
    let c = changes(&seen);
    assert!(c.iter().all(|(_, h)| h.len() <= 1), "overlap: {c:?}");
    assert!(c.last().is_some_and(|(_, h)| h.is_empty()), "{c:?}");
    log("all nodes on 1.1.0");
}
