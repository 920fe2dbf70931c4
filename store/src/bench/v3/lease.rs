//! Lease keep-alive throughput: `leases` leases are granted (untimed), then
//! each of `clients` clients opens its own `LeaseKeepAlive` stream and,
//! closed loop, sends a keep-alive for the next of its leases and waits for
//! the answer (a TTL of 0 means the server lost the lease: an error).
//! Afterwards every lease is revoked (untimed, best effort).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use super::super::closed_loop::{self, Bounds, Outcome, Worker};
use super::super::rng::Rng;
use super::{describe, failed};
use crate::v3::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    lease_client::LeaseClient,
};

/// A keep-alive run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Keep-alive streams, one closed-loop client each.
    pub clients: usize,
    /// Leases granted and kept alive (at least one per client).
    pub leases: u64,
    /// TTL the leases are granted with.
    pub ttl: Duration,
    /// How long to run.
    pub bounds: Bounds,
}

struct KeepAliveWorker {
    tx: mpsc::UnboundedSender<LeaseKeepAliveRequest>,
    rx: Streaming<LeaseKeepAliveResponse>,
    leases: Vec<i64>,
    next: usize,
}

impl Worker for KeepAliveWorker {
    async fn call(&mut self, _ticket: u64, _rng: &mut Rng) -> Result<(), String> {
        let id = self.leases[self.next];
        self.next = (self.next + 1) % self.leases.len();
        keep_alive_once(&self.tx, &mut self.rx, id).await
    }
}

async fn keep_alive_once(
    tx: &mpsc::UnboundedSender<LeaseKeepAliveRequest>,
    rx: &mut Streaming<LeaseKeepAliveResponse>,
    id: i64,
) -> Result<(), String> {
    tx.send(LeaseKeepAliveRequest { id })
        .map_err(|_| "keep-alive stream closed".to_owned())?;
    match rx.message().await {
        Ok(Some(r)) if r.id == id && r.ttl > 0 => Ok(()),
        Ok(Some(r)) if r.id == id => Err(format!("lease {id:x} expired or not found (ttl 0)")),
        Ok(Some(r)) => Err(format!("answer for lease {:x}, expected {id:x}", r.id)),
        Ok(None) => Err("keep-alive stream ended".to_owned()),
        Err(s) => Err(failed(&s).await),
    }
}

/// Grants `n` leases of `ttl`, `concurrency` at a time.
async fn grant(
    channel: &Channel,
    n: u64,
    ttl: Duration,
    concurrency: usize,
) -> anyhow::Result<Vec<i64>> {
    let ttl = i64::try_from(ttl.as_secs().max(1))?;
    let per = n.div_ceil(concurrency as u64);
    let mut tasks = Vec::new();
    for c in 0..concurrency as u64 {
        let count = per.min(n.saturating_sub(c * per));
        let mut client = LeaseClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let r = client
                    .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                    .await
                    .map_err(|s| anyhow::anyhow!("lease grant: {}", describe(&s)))?;
                let r = r.into_inner();
                anyhow::ensure!(r.error.is_empty(), "lease grant: {}", r.error);
                ids.push(r.id);
            }
            Ok::<_, anyhow::Error>(ids)
        }));
    }
    let mut ids = Vec::with_capacity(n as usize);
    for t in tasks {
        ids.extend(t.await??);
    }
    Ok(ids)
}

/// Grants the leases, runs the keep-alive loop, revokes the leases.
pub async fn run(channels: &[Channel], plan: &Plan) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!channels.is_empty(), "no connections");
    let leases = plan.leases.max(plan.clients as u64);
    let ids = grant(&channels[0], leases, plan.ttl, plan.clients.min(16)).await?;
    eprintln!("granted {} leases", ids.len());

    let mut workers = Vec::with_capacity(plan.clients);
    for i in 0..plan.clients {
        let mine: Vec<i64> = ids.iter().skip(i).step_by(plan.clients).copied().collect();
        let mut client = LeaseClient::new(channels[i % channels.len()].clone());
        let (tx, rx) = mpsc::unbounded_channel();
        // gRPC servers may hold back response headers until the first
        // message, so queue one keep-alive before opening the stream.
        tx.send(LeaseKeepAliveRequest { id: mine[0] })?;
        let mut stream = client
            .lease_keep_alive(UnboundedReceiverStream::new(rx))
            .await
            .map_err(|s| anyhow::anyhow!("open keep-alive stream: {}", describe(&s)))?
            .into_inner();
        match stream.message().await {
            Ok(Some(r)) if r.ttl > 0 => {}
            other => anyhow::bail!("first keep-alive failed: {other:?}"),
        }
        workers.push(KeepAliveWorker {
            tx,
            rx: stream,
            leases: mine,
            next: 0,
        });
    }
    let out = closed_loop::run(workers, plan.bounds).await?;

    let mut client = LeaseClient::new(channels[0].clone());
    for id in ids {
        // Best effort: the leases expire on their own anyway.
        let _ = client.lease_revoke(LeaseRevokeRequest { id }).await;
    }
    Ok(out)
}
