//! The JSON records Keel keeps beside the semaphore (see [`crate::keys`]). Times are Unix
//! seconds; unknown fields are ignored so newer daemons can add some.

use serde::{Deserialize, Serialize};

/// Lease TTL of a holder when the group's policy does not say (seconds): long enough for a
/// server to reboot through firmware, short enough that a dead host does not stall a
/// rollout for long.
pub const DEFAULT_LEASE_TTL_SECS: i64 = 900;
/// Failed hosts after which a group stops granting slots.
pub const DEFAULT_MAX_FAILURES: u32 = 1;

/// A group's rollout policy (`keel/policy`; absent = defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// TTL of the lease behind each daemon-held slot; 0 = no leases (locksmith's behaviour:
    /// a dead holder keeps its slot until `unlock`).
    pub lease_ttl: i64,
    /// Failed hosts (came back unhealthy or on the wrong version) that pause the group;
    /// 0 = never pause.
    pub max_failures: u32,
    /// No new slots are granted while paused.
    pub paused: bool,
    /// Why and since when the group is paused.
    pub paused_reason: String,
    pub paused_at: i64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            lease_ttl: DEFAULT_LEASE_TTL_SECS,
            max_failures: DEFAULT_MAX_FAILURES,
            paused: false,
            paused_reason: String::new(),
            paused_at: 0,
        }
    }
}

/// What a holder is doing with its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HolderState {
    /// Granted, not rebooting yet (window, logged-in users or inhibitors).
    Granted,
    /// The reboot was requested.
    Rebooting,
    /// Back up, proving it is healthy.
    Verifying,
    /// Taken by an operator (`lock`) or a FleetLock client.
    Manual,
}

impl HolderState {
    pub fn as_str(self) -> &'static str {
        match self {
            HolderState::Granted => "granted",
            HolderState::Rebooting => "rebooting",
            HolderState::Verifying => "verifying",
            HolderState::Manual => "manual",
        }
    }
}

/// A slot Keel granted (`keel/holders/<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub id: String,
    #[serde(default)]
    pub hostname: String,
    /// The boot id when the slot was granted: a different one after boot proves the reboot.
    #[serde(default)]
    pub boot_id: String,
    /// The version the host runs when granted, and the one it must come back with.
    #[serde(default)]
    pub from_version: String,
    #[serde(default)]
    pub target_version: String,
    #[serde(default)]
    pub reason: String,
    pub acquired_at: i64,
    pub state: HolderState,
    /// The store lease keeping the slot (0 = none: held until released).
    #[serde(default)]
    pub lease: i64,
    #[serde(default)]
    pub lease_ttl: i64,
}

/// A host that wants a slot (`keel/waiting/<id>`, gone when its daemon stops).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    pub id: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub target_version: String,
    #[serde(default)]
    pub reason: String,
    pub since: i64,
    /// What it waits for: `slot`, `window`, `paused`, `inhibitor`, `users`.
    #[serde(default)]
    pub waiting_for: String,
}

/// A host that came back unhealthy (`keel/failed/<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub id: String,
    #[serde(default)]
    pub hostname: String,
    pub at: i64,
    pub reason: String,
    #[serde(default)]
    pub target_version: String,
    #[serde(default)]
    pub booted_version: String,
}

/// What happened to a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Granted,
    Released,
    /// The holder's lease expired and another host took the slot back.
    Reclaimed,
    /// Forced `unlock` of another host's slot.
    Unlocked,
    Failed,
    Paused,
    Resumed,
    SetMax,
}

/// One audit entry (`keel/audit/<time>-<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at: i64,
    pub kind: EventKind,
    pub id: String,
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub detail: String,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Nanoseconds since the Unix epoch (audit keys).
pub fn unix_nanos_now() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_policy_fields_take_defaults() {
        let p: Policy = serde_json::from_str(r#"{"paused":true}"#).unwrap();
        assert!(p.paused);
        assert_eq!(p.lease_ttl, DEFAULT_LEASE_TTL_SECS);
        assert_eq!(p.max_failures, DEFAULT_MAX_FAILURES);
    }

    #[test]
    fn holder_state_is_kebab_case() {
        let h = Holder {
            id: "m".into(),
            hostname: "h".into(),
            boot_id: "b".into(),
            from_version: "1".into(),
            target_version: "2".into(),
            reason: "update".into(),
            acquired_at: 1,
            state: HolderState::Rebooting,
            lease: 7,
            lease_ttl: 60,
        };
        let s = serde_json::to_string(&h).unwrap();
        assert!(s.contains(r#""state":"rebooting""#), "{s}");
        assert_eq!(serde_json::from_str::<Holder>(&s).unwrap(), h);
    }
}
