//! The FleetLock protocol (Zincati's reboot-lock HTTP API): `POST /v1/pre-reboot` takes a
//! slot (recursive), `POST /v1/steady-state` gives it back (if held); both need the header
//! `fleet-lock-protocol: true` and the body `{"client_params":{"id":…,"group":…}}`; a
//! refusal is a 4xx/5xx with `{"kind":…,"value":…}`.
//!
//! [`server`] serves it from the same semaphore locksmith uses (FleetLock group `default`
//! is locksmith's default group); [`client`] lets the daemon use a FleetLock server.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

/// The mandatory header.
pub const PROTOCOL_HEADER: &str = "fleet-lock-protocol";
pub const PRE_REBOOT: &str = "/v1/pre-reboot";
pub const STEADY_STATE: &str = "/v1/steady-state";
/// Zincati's default group.
pub const DEFAULT_GROUP: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientParams {
    pub id: String,
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub client_params: ClientParams,
}

/// An error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub kind: String,
    pub value: String,
}

/// The protocol's group syntax: one or more ASCII letters, digits, `.` or `-`.
pub fn valid_group(group: &str) -> bool {
    !group.is_empty()
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// The locksmith group a FleetLock group maps to.
pub fn locksmith_group(group: &str) -> &str {
    if group == DEFAULT_GROUP { "" } else { group }
}
