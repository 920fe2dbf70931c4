//! etcd's v2 discovery protocol (`--discovery URL`): members of a new cluster find each
//! other through a directory in another etcd-compatible store (keel-store serves one
//! as it is).
//!
//! The operator creates `<URL>/_config/size` holding the cluster size. Each member
//! registers `<URL>/<member id in hex>` = `name=peerURL[,name=peerURL]` (create only),
//! then waits until `size` members have registered; the first `size` by creation index
//! form the cluster, and a member not among them refuses to start ("cluster is full").
//! As in etcd, the cluster token is the discovery URL itself.
//!
//! DNS discovery (`--discovery-srv`) finds the members in SRV records instead; the
//! cluster token is then `--initial-cluster-token`, as in etcd.

use std::time::Duration;

/// Errors of discovery.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery {url}: {reason}")]
    Failed { url: String, reason: String },
    #[error("discovery {url}: size key not found (create {url}/_config/size first)")]
    SizeNotFound { url: String },
    #[error("discovery {url}: cluster is full ({size} members already registered)")]
    Full { url: String, size: usize },
    #[error("discovery {url}: no complete cluster within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("discovery-srv {domain}: {reason}")]
    Srv { domain: String, reason: String },
}

/// How long to wait for the other members to register.
pub const WAIT: Duration = Duration::from_secs(300);

/// Register this member at `url` and return the initial cluster once complete.
pub async fn join(
    url: &str,
    id: u64,
    name: &str,
    peer_urls: &[String],
) -> Result<Vec<(String, Vec<String>)>, DiscoveryError> {
    let url = url.trim_end_matches('/').to_string();
    let fail = |reason: String| DiscoveryError::Failed {
        url: url.clone(),
        reason,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| fail(e.to_string()))?;

    let size = client
        .get(format!("{url}/_config/size"))
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if size.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(DiscoveryError::SizeNotFound { url });
    }
    let size: serde_json::Value = size.json().await.map_err(|e| fail(e.to_string()))?;
    let size: usize = size["node"]["value"]
        .as_str()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| fail(format!("bad cluster size {}", size["node"]["value"])))?;

    let mut urls = peer_urls.to_vec();
    urls.sort();
    let entry = urls
        .iter()
        .map(|u| format!("{name}={u}"))
        .collect::<Vec<_>>()
        .join(",");
    let key = format!("{id:x}");
    let r = client
        .put(format!("{url}/{key}?prevExist=false"))
        .form(&[("value", entry.as_str())])
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    // 412: registered before (a restart during discovery).
    if !r.status().is_success() && r.status() != reqwest::StatusCode::PRECONDITION_FAILED {
        return Err(fail(format!("registering: HTTP {}", r.status())));
    }
    tracing::info!(%url, member = %key, size, "registered for discovery");

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = client
            .get(format!("{url}?recursive=true"))
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let index: u64 = r
            .headers()
            .get("x-etcd-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body: serde_json::Value = r.json().await.map_err(|e| fail(e.to_string()))?;
        let mut nodes: Vec<(u64, String, String)> = body["node"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| !n["dir"].as_bool().unwrap_or(false))
            .filter_map(|n| {
                let k = n["key"].as_str()?.rsplit('/').next()?.to_string();
                Some((
                    n["createdIndex"].as_u64()?,
                    k,
                    n["value"].as_str()?.to_string(),
                ))
            })
            .collect();
        nodes.sort();
        if nodes.len() >= size {
            let first = &nodes[..size];
            if !first.iter().any(|(_, k, _)| *k == key) {
                return Err(DiscoveryError::Full { url, size });
            }
            return parse_cluster(first.iter().map(|(_, _, v)| v.as_str())).map_err(fail);
        }
        tracing::info!(
            registered = nodes.len(),
            size,
            "waiting for the other members"
        );
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(DiscoveryError::Timeout { url, timeout: WAIT });
        }
        // Wait for the next change (or poll again after a while).
        let _ = client
            .get(format!(
                "{url}?wait=true&recursive=true&waitIndex={}",
                index + 1
            ))
            .timeout(left.min(Duration::from_secs(5)))
            .send()
            .await;
    }
}

/// etcd's DNS discovery (`--discovery-srv DOMAIN`): the members of a new cluster are
/// the targets of the SRV records `_etcd-server-ssl._tcp.DOMAIN` (https peer URLs) and
/// `_etcd-server._tcp.DOMAIN` (http); `--discovery-srv-name NAME` makes them
/// `_etcd-server-ssl-NAME._tcp` and `_etcd-server-NAME._tcp`. The target that resolves
/// to the address of one of this member's advertised peer URLs is this member, named
/// `name`; the others are named `0`, `1`, … as etcd names them, until they publish
/// their own names. The URLs keep the targets' host names, so every member computes the
/// same member ids.
pub async fn srv_cluster(
    srv: &crate::config::SrvDiscovery,
    name: &str,
    peer_urls: &[String],
) -> Result<Vec<(String, Vec<String>)>, DiscoveryError> {
    let fail = |reason: String| DiscoveryError::Srv {
        domain: srv.domain.clone(),
        reason,
    };
    let resolver = hickory_resolver::TokioResolver::builder_tokio()
        .and_then(|b| b.build())
        .map_err(|e| fail(format!("DNS resolver: {e}")))?;
    // This member's advertised peer addresses.
    let mut mine: Vec<(std::net::SocketAddr, &str)> = Vec::new();
    for u in peer_urls {
        let (_, hostport, _) = crate::peer::url_addr(u).map_err(|e| fail(e.to_string()))?;
        let addrs = tokio::net::lookup_host(hostport)
            .await
            .map_err(|e| fail(format!("resolve this member's peer URL {u}: {e}")))?;
        mine.extend(addrs.map(|a| (a, u.as_str())));
    }
    let suffix = srv
        .service_name
        .as_deref()
        .map(|n| format!("-{n}"))
        .unwrap_or_default();
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    let mut misses = Vec::new();
    let mut others = 0;
    for (scheme, service) in [("https", "etcd-server-ssl"), ("http", "etcd-server")] {
        let query = format!(
            "_{service}{suffix}._tcp.{}.",
            srv.domain.trim_end_matches('.')
        );
        let records = match resolver.srv_lookup(query.as_str()).await {
            Ok(r) => r,
            Err(e) => {
                misses.push(format!("{query}: {e}"));
                continue;
            }
        };
        let mut targets: Vec<(String, u16)> = records
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                hickory_resolver::proto::rr::RData::SRV(srv) => Some((
                    srv.target.to_utf8().trim_end_matches('.').to_string(),
                    srv.port,
                )),
                _ => None,
            })
            .collect();
        // DNS servers rotate records; every member must list the same cluster.
        targets.sort();
        targets.dedup();
        for (host, port) in targets {
            let hostport = format!("{host}:{port}");
            let url = format!("{scheme}://{hostport}");
            let addrs: Vec<_> = tokio::net::lookup_host(hostport.as_str())
                .await
                .map_err(|e| fail(format!("resolve {hostport} (from {query}): {e}")))?
                .collect();
            let me = mine.iter().find(|(a, _)| addrs.contains(a));
            let member = match me {
                Some((_, advertised)) if !advertised.starts_with(&format!("{scheme}://")) => {
                    return Err(fail(format!(
                        "{url} (from {query}) is this member, whose peer URL is {advertised}: the schemes differ"
                    )));
                }
                Some(_) => name.to_string(),
                None => {
                    others += 1;
                    (others - 1).to_string()
                }
            };
            match members.iter_mut().find(|(n, _)| *n == member) {
                Some((_, urls)) => urls.push(url),
                None => members.push((member, vec![url])),
            }
        }
    }
    if members.is_empty() {
        return Err(fail(format!("no SRV records ({})", misses.join("; "))));
    }
    if !members.iter().any(|(n, _)| n == name) {
        return Err(fail(format!(
            "no SRV target resolves to this member's --initial-advertise-peer-urls {peer_urls:?}"
        )));
    }
    Ok(members)
}

/// `name=url,name=url` values into an initial cluster.
fn parse_cluster<'a>(
    values: impl Iterator<Item = &'a str>,
) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for v in values {
        for part in v.split(',').filter(|p| !p.is_empty()) {
            let (name, u) = part
                .split_once('=')
                .ok_or_else(|| format!("bad registration {v:?}"))?;
            match members.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(u.to_string()),
                None => members.push((name.to_string(), vec![u.to_string()])),
            }
        }
    }
    Ok(members)
}
