//! Keel's reboot coordinator.
//!
//! Hosts that installed an update take a slot of a counting semaphore kept in the store
//! (locksmith's key and JSON, so locksmith, Flatcar's etcd-v3 locksmith and Keel share it),
//! reboot through logind, and give the slot back once they proved they came back healthy.
//! Beyond locksmith: slots backed by store leases (a dead holder's slot is reclaimed after
//! the TTL), health-gated release, a per-group pause after failed hosts, waiting/failed/
//! audit records, and FleetLock (server and client) on the same semaphore.
//!
//! Flow: [`cli`] resolves settings ([`config`]) and runs a command; the daemon
//! ([`daemon`]) reads the host through [`host`] and [`dbus`], and changes the group through
//! [`store`] (compare-and-swap transactions over [`semaphore`] values at [`keys`]).
//!
//! Limitations: windows are the host's local wall time (no time-zone option, as locksmith);
//! waiting hosts race for a freed slot (no queue order); FleetLock clients have no
//! heartbeat, so their lease is a fixed deadline.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod dbus;
pub mod fleetlock;
pub mod host;
pub mod keys;
pub mod records;
pub mod semaphore;
pub mod sim;
pub mod status;
pub mod store;
pub mod window;

/// An error and its causes on one line (`a: b: c`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
