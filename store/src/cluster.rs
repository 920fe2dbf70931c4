//! Cluster and member identity, computed the way etcd computes it so that the same
//! flags give the same ids (`membership.NewMember`, `RaftCluster.genID`): a member id is
//! the first 8 bytes (big-endian) of SHA-1 over its sorted peer URLs and the cluster
//! token; the cluster id likewise over the sorted member ids.

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// One member as `/v2/members` shows it. `name` and `client_urls` stay empty until
/// the member has started and published them through the log (etcd's "unstarted").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// The replicated membership: part of the state machine and of every snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    pub cluster_id: u64,
    /// By member id, so listings come out sorted as etcd sorts them.
    pub members: BTreeMap<u64, Member>,
    /// Ids removed from the cluster; they may never rejoin (etcd keeps the same list).
    pub removed: Vec<u64>,
}

impl Members {
    /// The bootstrap membership of a new cluster.
    pub fn bootstrap(initial: &[(String, Vec<String>)], token: &str) -> Self {
        let members: BTreeMap<u64, Member> = initial
            .iter()
            .map(|(name, urls)| {
                let id = member_id(urls, token);
                (
                    id,
                    Member {
                        id,
                        name: name.clone(),
                        peer_urls: urls.clone(),
                        client_urls: Vec::new(),
                        is_learner: false,
                    },
                )
            })
            .collect();
        let ids: Vec<u64> = members.keys().copied().collect();
        Members {
            cluster_id: cluster_id(&ids),
            members,
            removed: Vec::new(),
        }
    }

    pub fn get(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn list(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The member that advertises `url` as a peer URL, if any.
    pub fn by_peer_url(&self, url: &str) -> Option<&Member> {
        self.list().find(|m| m.peer_urls.iter().any(|u| u == url))
    }
}

/// What this server knows about itself; the membership lives in the engine's state.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub local: Member,
    /// When this process started.
    pub start_time: SystemTime,
}

/// etcd's member id for `peer_urls` in a cluster with `token`.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    for u in &urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    first_u64(&h.finalize())
}

/// etcd's cluster id for a set of member ids.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

impl Cluster {
    /// This member, as identified by its flags.
    pub fn local(
        name: &str,
        peer_urls: Vec<String>,
        client_urls: Vec<String>,
        token: &str,
    ) -> Self {
        let id = member_id(&peer_urls, token);
        Cluster {
            local: Member {
                id,
                name: name.to_string(),
                peer_urls,
                client_urls,
                is_learner: false,
            },
            start_time: SystemTime::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_etcd() {
        // Observed on etcd 3.4.23 with --initial-cluster default=http://127.0.0.1:23800
        // and the default token: member 2e1259d415f2a040, cluster 48276a8f75b6a87.
        let m = member_id(&["http://127.0.0.1:23800".to_string()], "etcd-cluster");
        assert_eq!(format!("{m:x}"), "2e1259d415f2a040");
        assert_eq!(format!("{:x}", cluster_id(&[m])), "48276a8f75b6a87");
    }
}
