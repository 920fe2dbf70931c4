//! Cluster and member identity, computed the way etcd computes it so that the same
//! flags give the same ids (`membership.NewMember`, `RaftCluster.genID`): a member id is
//! the first 8 bytes (big-endian) of SHA-1 over its sorted peer URLs and the cluster
//! token; the cluster id likewise over the sorted member ids.

use sha1::{Digest, Sha1};
use std::time::SystemTime;

/// One member as `/v2/members` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// What this server knows about its cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub id: u64,
    pub local: Member,
    pub members: Vec<Member>,
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
    /// A one-member cluster.
    pub fn single(
        name: &str,
        peer_urls: Vec<String>,
        client_urls: Vec<String>,
        token: &str,
    ) -> Self {
        let id = member_id(&peer_urls, token);
        let local = Member {
            id,
            name: name.to_string(),
            peer_urls,
            client_urls,
        };
        Cluster {
            id: cluster_id(&[id]),
            members: vec![local.clone()],
            local,
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
