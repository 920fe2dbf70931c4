//! The reboot semaphore exactly as CoreOS locksmith stores it:
//! `{"semaphore":N,"max":M,"holders":[ids]}`, `holders` possibly `null`, `semaphore`
//! possibly negative after `set-max` went below the current holders. Fields other clients
//! may have added are kept in order and written back unchanged.
//!
//! Pure data: the compare-and-swap against the store lives in [`crate::store`].

use serde::{Deserialize, Serialize};

/// What `Init` writes for a semaphore that does not exist yet (locksmith's value).
pub const INITIAL_MAX: i64 = 1;

/// The semaphore value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Semaphore {
    /// Free slots as locksmith counts them (`max - holders` unless someone edited it).
    pub semaphore: i64,
    /// Slots in total.
    pub max: i64,
    /// Machine ids holding a slot, sorted; `None` is serialised as `null` (a new semaphore).
    pub holders: Option<Vec<String>>,
    /// Fields written by other tools, kept as they were.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Why a semaphore operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SemaphoreError {
    /// No free slot (locksmith's text).
    #[error("semaphore is at {0}")]
    Full(i64),
    /// `unlock` of an id that holds no slot (locksmith's text).
    #[error("holder does not exist")]
    NotHolder,
    /// `set-max` below zero.
    #[error("max must be zero or more, not {0}")]
    NegativeMax(i64),
    /// `set-max` below the current number of holders, without `force`.
    #[error(
        "max {max} is below the {held} current holders ({holders}); lowering it anyway (--force) only stops new grants until they release"
    )]
    BelowHolders {
        max: i64,
        held: usize,
        holders: String,
    },
}

impl Default for Semaphore {
    fn default() -> Semaphore {
        Semaphore {
            semaphore: INITIAL_MAX,
            max: INITIAL_MAX,
            holders: None,
            extra: serde_json::Map::new(),
        }
    }
}

impl Semaphore {
    /// Parses a stored value; `key` names it in the error.
    pub fn parse(key: &str, raw: &[u8]) -> Result<Semaphore, crate::store::StoreError> {
        serde_json::from_slice(raw).map_err(|source| crate::store::StoreError::BadValue {
            key: key.to_string(),
            source,
        })
    }

    /// The value as locksmith writes it (compact JSON, field order semaphore, max, holders).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a semaphore always serialises")
    }

    /// Holders, empty when `null`.
    pub fn holders(&self) -> &[String] {
        self.holders.as_deref().unwrap_or(&[])
    }

    /// Whether `id` holds a slot.
    pub fn holds(&self, id: &str) -> bool {
        self.holders().iter().any(|h| h == id)
    }

    /// Slots that may still be granted: locksmith trusts `semaphore`; Keel also never grants
    /// beyond `max - holders`, so a hand-edited value cannot oversubscribe.
    pub fn available(&self) -> i64 {
        self.semaphore.min(self.max - self.holders().len() as i64)
    }

    /// Whether `semaphore` agrees with `max - holders`.
    pub fn is_consistent(&self) -> bool {
        self.semaphore == self.max - self.holders().len() as i64
    }

    /// Takes a slot for `id`. Returns `false` if `id` already holds one (recursive lock:
    /// a holder asking again is not an error, unlike locksmith's "semaphore is at 0").
    pub fn lock(&mut self, id: &str) -> Result<bool, SemaphoreError> {
        if self.holds(id) {
            return Ok(false);
        }
        if self.available() <= 0 {
            return Err(SemaphoreError::Full(self.semaphore));
        }
        let holders = self.holders.get_or_insert_with(Vec::new);
        let at = holders.partition_point(|h| h.as_str() < id);
        holders.insert(at, id.to_string());
        self.semaphore -= 1;
        Ok(true)
    }

    /// Gives back `id`'s slot.
    pub fn unlock(&mut self, id: &str) -> Result<(), SemaphoreError> {
        let holders = self.holders.get_or_insert_with(Vec::new);
        let Some(at) = holders.iter().position(|h| h == id) else {
            return Err(SemaphoreError::NotHolder);
        };
        holders.remove(at);
        self.semaphore += 1;
        Ok(())
    }

    /// Sets the number of slots with locksmith's arithmetic (`semaphore` moves by the same
    /// amount as `max`). Refuses a max below the current holders unless `force`.
    pub fn set_max(&mut self, max: i64, force: bool) -> Result<i64, SemaphoreError> {
        if max < 0 {
            return Err(SemaphoreError::NegativeMax(max));
        }
        let held = self.holders().len();
        if max < held as i64 && !force {
            return Err(SemaphoreError::BelowHolders {
                max,
                held,
                holders: self.holders().join(", "),
            });
        }
        let old = self.max;
        self.semaphore -= old - max;
        self.max = max;
        Ok(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn initial_value_is_lockmiths_bytes() {
        assert_eq!(
            Semaphore::default().to_json(),
            r#"{"semaphore":1,"max":1,"holders":null}"#
        );
    }

    #[test]
    fn lock_unlock_round_trip_matches_locksmith() {
        let mut s = Semaphore::default();
        assert_eq!(s.lock("69d27b356a94476da859461d3a3bc6fd"), Ok(true));
        assert_eq!(
            s.to_json(),
            r#"{"semaphore":0,"max":1,"holders":["69d27b356a94476da859461d3a3bc6fd"]}"#
        );
        assert_eq!(s.lock("other"), Err(SemaphoreError::Full(0)));
        assert_eq!(s.lock("69d27b356a94476da859461d3a3bc6fd"), Ok(false));
        s.unlock("69d27b356a94476da859461d3a3bc6fd").unwrap();
        assert_eq!(s.to_json(), r#"{"semaphore":1,"max":1,"holders":[]}"#);
        assert_eq!(s.unlock("x"), Err(SemaphoreError::NotHolder));
        assert_eq!(
            s.unlock("x").unwrap_err().to_string(),
            "holder does not exist"
        );
    }

    #[test]
    fn holders_stay_sorted() {
        let mut s = Semaphore::default();
        s.set_max(3, false).unwrap();
        for id in ["c", "a", "b"] {
            s.lock(id).unwrap();
        }
        assert_eq!(s.holders(), ["a", "b", "c"]);
    }

    #[test]
    fn set_max_arithmetic_and_refusals() {
        let mut s = Semaphore::default();
        assert_eq!(s.set_max(3, false), Ok(1));
        assert_eq!((s.semaphore, s.max), (3, 3));
        s.lock("a").unwrap();
        s.lock("b").unwrap();
        assert!(matches!(
            s.set_max(1, false),
            Err(SemaphoreError::BelowHolders { held: 2, .. })
        ));
        assert_eq!(
            (s.semaphore, s.max),
            (1, 3),
            "a refused set-max changes nothing"
        );
        assert_eq!(s.set_max(0, true), Ok(3));
        assert_eq!((s.semaphore, s.max), (-2, 0));
        assert_eq!(s.available(), -2);
        assert_eq!(s.set_max(-1, true), Err(SemaphoreError::NegativeMax(-1)));
        s.unlock("a").unwrap();
        s.unlock("b").unwrap();
        assert_eq!((s.semaphore, s.max), (0, 0));
    }

    #[test]
    fn foreign_fields_and_null_holders_survive() {
        let raw = br#"{"semaphore":1,"max":2,"holders":null,"note":"ceph repair"}"#;
        let mut s = Semaphore::parse("k", raw).unwrap();
        s.lock("a").unwrap();
        assert_eq!(
            s.to_json(),
            r#"{"semaphore":0,"max":2,"holders":["a"],"note":"ceph repair"}"#
        );
    }

    #[test]
    fn edited_value_never_oversubscribes() {
        // semaphore says 5 free, but max 2 with 2 holders: nothing may be granted.
        let mut s =
            Semaphore::parse("k", br#"{"semaphore":5,"max":2,"holders":["a","b"]}"#).unwrap();
        assert!(!s.is_consistent());
        assert_eq!(s.lock("c"), Err(SemaphoreError::Full(5)));
    }

    #[test]
    fn corrupt_value_names_the_key() {
        let e = Semaphore::parse("coreos.com/updateengine/rebootlock/semaphore", b"{\"max\":")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("coreos.com/updateengine/rebootlock/semaphore"),
            "{e}"
        );
        let e = Semaphore::parse("k", br#"{"semaphore":"1","max":1,"holders":[]}"#).unwrap_err();
        let e = crate::error_chain(&e);
        assert!(e.contains("invalid type"), "{e}");
    }

    proptest! {
        #[test]
        fn never_more_holders_than_max(ops in proptest::collection::vec((0u8..3, 0u8..6), 0..60), max in 0i64..4) {
            let mut s = Semaphore::default();
            s.set_max(max, true).unwrap();
            for (op, id) in ops {
                let id = format!("m{id}");
                match op {
                    0 => { let _ = s.lock(&id); }
                    1 => { let _ = s.unlock(&id); }
                    _ => {
                        let raw = s.to_json();
                        prop_assert_eq!(&Semaphore::parse("k", raw.as_bytes()).unwrap(), &s);
                    }
                }
                prop_assert!(s.holders().len() as i64 <= max);
                prop_assert!(s.is_consistent());
                prop_assert!(s.holders().windows(2).all(|w| w[0] < w[1]));
            }
        }
    }
}
