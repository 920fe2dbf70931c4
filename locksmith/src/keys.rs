//! Where a reboot group lives in the store.
//!
//! The semaphore key is locksmith's (`coreos.com/updateengine/rebootlock/semaphore`, a
//! group `G` under `…/groups/<QueryEscape(G)>/semaphore`), so locksmith, Flatcar's etcd-v3
//! locksmith and Keel share one semaphore. Everything Keel adds sits beside it under
//! `…/keel/`, where a client that rewrites the semaphore JSON cannot drop it:
//!
//! | key | value |
//! |---|---|
//! | `keel/policy` | [`crate::records::Policy`] (lease TTL, failure limit, pause) |
//! | `keel/holders/<id>` | [`crate::records::Holder`] for each slot Keel granted |
//! | `keel/alive/<id>` | the holder's lease id, attached to that lease |
//! | `keel/waiting/<id>` | [`crate::records::Waiting`], attached to the waiter's session lease |
//! | `keel/failed/<id>` | [`crate::records::Failure`] |
//! | `keel/audit/<time>-<id>` | [`crate::records::Event`] |

/// The default group's prefix.
pub const ROOT: &str = "coreos.com/updateengine/rebootlock";

/// Go's `url.QueryEscape`: letters, digits and `-_.~` stay, space becomes `+`, every other
/// byte `%XX` (upper-case hex).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The keys of one reboot group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKeys {
    /// The group name as given (`""` is the default group).
    pub group: String,
    prefix: String,
}

impl GroupKeys {
    /// Keys of `group` (`""` for the default group).
    pub fn new(group: &str) -> GroupKeys {
        let prefix = if group.is_empty() {
            ROOT.to_string()
        } else {
            format!("{ROOT}/groups/{}", query_escape(group))
        };
        GroupKeys {
            group: group.to_string(),
            prefix,
        }
    }

    /// The shown name of the group.
    pub fn display_name(&self) -> &str {
        if self.group.is_empty() {
            "(default)"
        } else {
            &self.group
        }
    }

    /// locksmith's semaphore key.
    pub fn semaphore(&self) -> String {
        format!("{}/semaphore", self.prefix)
    }

    pub fn policy(&self) -> String {
        format!("{}/keel/policy", self.prefix)
    }

    pub fn holders_prefix(&self) -> String {
        format!("{}/keel/holders/", self.prefix)
    }

    pub fn holder(&self, id: &str) -> String {
        format!("{}{id}", self.holders_prefix())
    }

    pub fn alive_prefix(&self) -> String {
        format!("{}/keel/alive/", self.prefix)
    }

    pub fn alive(&self, id: &str) -> String {
        format!("{}{id}", self.alive_prefix())
    }

    pub fn waiting_prefix(&self) -> String {
        format!("{}/keel/waiting/", self.prefix)
    }

    pub fn waiting(&self, id: &str) -> String {
        format!("{}{id}", self.waiting_prefix())
    }

    pub fn failed_prefix(&self) -> String {
        format!("{}/keel/failed/", self.prefix)
    }

    pub fn failed(&self, id: &str) -> String {
        format!("{}{id}", self.failed_prefix())
    }

    pub fn audit_prefix(&self) -> String {
        format!("{}/keel/audit/", self.prefix)
    }

    /// An audit key that sorts by time: `<unix nanoseconds, 20 digits>-<id>`.
    pub fn audit(&self, unix_nanos: i128, id: &str) -> String {
        format!("{}{unix_nanos:020}-{id}", self.audit_prefix())
    }
}

/// The end of the range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_locksmith() {
        assert_eq!(
            GroupKeys::new("").semaphore(),
            "coreos.com/updateengine/rebootlock/semaphore"
        );
        assert_eq!(
            GroupKeys::new("prod/database").semaphore(),
            "coreos.com/updateengine/rebootlock/groups/prod%2Fdatabase/semaphore"
        );
        assert_eq!(
            GroupKeys::new("lb").holder("m1"),
            "coreos.com/updateengine/rebootlock/groups/lb/keel/holders/m1"
        );
    }

    #[test]
    fn query_escape_is_gos() {
        assert_eq!(query_escape("a b&c=d~e_f.g-h"), "a+b%26c%3Dd~e_f.g-h");
        assert_eq!(query_escape("ü"), "%C3%BC");
    }

    #[test]
    fn prefix_end_bumps_the_last_byte() {
        assert_eq!(prefix_end("a/"), b"a0");
        assert_eq!(
            GroupKeys::new("").audit(5, "m"),
            format!("{ROOT}/keel/audit/00000000000000000005-m")
        );
    }
}
