//! The v2 event and node shapes as clients see them (etcd `v2store/event.go`,
//! `node_extern.go`). Field order and `omitempty` rules follow etcd's Go structs.

use serde::{Deserialize, Serialize, Serializer};

/// What happened to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "get")]
    Get,
    #[serde(rename = "create")]
    Create,
    #[serde(rename = "set")]
    Set,
    #[serde(rename = "update")]
    Update,
    #[serde(rename = "delete")]
    Delete,
    #[serde(rename = "compareAndSwap")]
    CompareAndSwap,
    #[serde(rename = "compareAndDelete")]
    CompareAndDelete,
    #[serde(rename = "expire")]
    Expire,
}

/// A node as rendered in responses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeExtern {
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "is_false", default)]
    pub dir: bool,
    /// Unix nanoseconds; rendered as RFC 3339 UTC.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_expiration",
        deserialize_with = "de_expiration",
        default
    )]
    pub expiration: Option<i64>,
    #[serde(skip_serializing_if = "is_zero_i64", default)]
    pub ttl: i64,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub nodes: Vec<NodeExtern>,
    #[serde(rename = "modifiedIndex", skip_serializing_if = "is_zero", default)]
    pub modified_index: u64,
    #[serde(rename = "createdIndex", skip_serializing_if = "is_zero", default)]
    pub created_index: u64,
}

/// A change (or a read) of the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub node: Option<NodeExtern>,
    #[serde(rename = "prevNode", skip_serializing_if = "Option::is_none", default)]
    pub prev_node: Option<NodeExtern>,
    /// Store index after the operation (the `X-Etcd-Index` header); not in the body.
    #[serde(skip_serializing, default)]
    pub etcd_index: u64,
    /// A TTL refresh: kept in history for index continuity, never sent to watchers.
    #[serde(skip_serializing, default)]
    pub refresh: bool,
}

impl Event {
    pub(crate) fn new(action: Action, key: &str, modified: u64, created: u64) -> Self {
        Event {
            action,
            node: Some(NodeExtern {
                key: key.to_string(),
                modified_index: modified,
                created_index: created,
                ..NodeExtern::default()
            }),
            prev_node: None,
            etcd_index: 0,
            refresh: false,
        }
    }

    /// The key the event happened on.
    pub fn key(&self) -> &str {
        self.node.as_ref().map(|n| n.key.as_str()).unwrap_or("")
    }

    /// The store index of the event (its node's modifiedIndex).
    pub fn index(&self) -> u64 {
        self.node.as_ref().map(|n| n.modified_index).unwrap_or(0)
    }

    /// etcd answers 201 Created for `create` and for a `set` of a new key.
    pub fn is_created(&self) -> bool {
        self.action == Action::Create || (self.action == Action::Set && self.prev_node.is_none())
    }

    pub(crate) fn node_mut(&mut self) -> &mut NodeExtern {
        self.node.get_or_insert_with(NodeExtern::default)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero(v: &u64) -> bool {
    *v == 0
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

fn ser_expiration<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(nanos) => s.serialize_str(&crate::json::rfc3339_nano(*nanos)),
        None => s.serialize_none(),
    }
}

fn de_expiration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| {
        time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
            .map(|t| t.unix_timestamp_nanos() as i64)
            .map_err(serde::de::Error::custom)
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_etcd() {
        let mut e = Event::new(Action::Set, "/message", 5, 5);
        e.node_mut().value = Some("Hello world".into());
        e.prev_node = Some(NodeExtern {
            key: "/message".into(),
            value: Some("Hello".into()),
            modified_index: 4,
            created_index: 4,
            ..Default::default()
        });
        assert_eq!(
            String::from_utf8(crate::json::to_vec(&e)).unwrap(),
            r#"{"action":"set","node":{"key":"/message","value":"Hello world","modifiedIndex":5,"createdIndex":5},"prevNode":{"key":"/message","value":"Hello","modifiedIndex":4,"createdIndex":4}}"#
        );
    }
}
