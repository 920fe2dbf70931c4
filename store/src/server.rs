//! Running a member: recover the engine, bind the client listeners, expire TTLs, serve
//! until shutdown, then let the log writer finish.

use crate::cluster::Cluster;
use crate::config::Settings;
use crate::engine::command::Command;
use crate::engine::{Engine, EngineError, EngineOptions};
use crate::http::{self, AppState};
use crate::v3::api::V3Api;
use crate::wal::WalOptions;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// How often the member checks for expired v2 keys (etcd's 500 ms SYNC ticker).
pub const TTL_SYNC_INTERVAL: Duration = Duration::from_millis(500);

/// Errors that stop a member.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot recover the store from {dir}")]
    Recover {
        dir: std::path::PathBuf,
        #[source]
        source: EngineError,
    },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid TLS configuration")]
    Tls(#[from] crate::tls::TlsError),
    #[error("the recovery task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Open the engine for `settings`.
pub async fn open_engine(settings: &Settings) -> Result<Engine, ServerError> {
    let mut opts = EngineOptions::new(&settings.data_dir);
    opts.snapshot_count = settings.snapshot_count;
    opts.wal = WalOptions::default();
    opts.wal_dir = settings.wal_dir.clone();
    let dir = settings.data_dir.clone();
    let started = Instant::now();
    let (engine, recovery) = tokio::task::spawn_blocking(move || Engine::open(opts))
        .await?
        .map_err(|source| ServerError::Recover { dir, source })?;
    tracing::info!(
        data_dir = %settings.data_dir.display(),
        snapshot_index = recovery.snapshot_index,
        replayed = recovery.replayed_entries,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store recovered"
    );
    Ok(engine)
}

/// Serve a member until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let engine = open_engine(&settings).await?;
    let tls = match &settings.tls {
        Some(files) => Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
            files,
        )?)),
        None => None,
    };
    let mut listeners = Vec::new();
    for listen in &settings.listen_client {
        let addr = listen.addr;
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Listen { addr, source })?;
        tracing::info!(%addr, tls = listen.https, "serving client requests");
        listeners.push((l, listen.https.then(|| tls.clone()).flatten()));
    }
    let cluster = Cluster::single(
        &settings.name,
        settings.peer_urls.clone(),
        settings.advertise_client_urls.clone(),
        &settings.cluster_token,
    );
    tracing::info!(member_id = %format!("{:x}", cluster.local.id), cluster_id = %format!("{:x}", cluster.id), "member ready");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let cluster = Arc::new(cluster);
    let v3 = V3Api::new(engine.clone(), cluster.clone(), settings.v3.clone());
    let state = AppState {
        engine: engine.clone(),
        v3: v3.clone(),
        cluster,
    };
    let dispatch = http::Dispatch {
        http: http::router(state.clone()),
        grpc: crate::v3::grpc::router(v3.clone()),
    };
    for (l, tls) in listeners {
        let router = dispatch.clone();
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            http::serve(l, tls, router, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        }));
    }
    let ttl_engine = engine.clone();
    let mut rx = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        tokio::select! {
            _ = expire_keys(ttl_engine) => {}
            _ = rx.wait_for(|s| *s) => {}
        }
    }));
    let lease_engine = engine.clone();
    let mut rx = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        tokio::select! {
            _ = run_leases(lease_engine) => {}
            _ = rx.wait_for(|s| *s) => {}
        }
    }));
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    Ok(())
}

/// How often remaining lease TTLs are checkpointed into the log (etcd checkpoints every
/// 5 minutes when enabled; shorter here so a restart loses little lease time).
pub const LEASE_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// Revoke leases whose TTL ran out (checked every 500 ms, like etcd's lessor) and
/// checkpoint the remaining TTLs of the others.
pub async fn run_leases(engine: Engine) {
    use crate::v3::V3Write;
    let mut tick = tokio::time::interval(TTL_SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = Instant::now();
    loop {
        tick.tick().await;
        let now = Instant::now();
        let expired = engine.read().v3.expired_leases(now);
        for id in expired {
            match engine
                .propose(Command::V3(V3Write::LeaseRevoke { id }))
                .await
            {
                Ok(_) => tracing::debug!(lease = id, "lease expired"),
                Err(e) => tracing::warn!(lease = id, error = %e, "cannot revoke expired lease"),
            }
        }
        if now.duration_since(last_checkpoint) >= LEASE_CHECKPOINT_INTERVAL {
            last_checkpoint = now;
            let remaining: Vec<(i64, i64)> = {
                let state = engine.read();
                state
                    .v3
                    .deadlines
                    .iter()
                    .map(|(id, d)| (*id, d.saturating_duration_since(now).as_millis() as i64))
                    .collect()
            };
            if !remaining.is_empty()
                && let Err(e) = engine
                    .propose(Command::V3(V3Write::LeaseCheckpoint(remaining)))
                    .await
            {
                tracing::warn!(error = %e, "cannot checkpoint leases");
            }
        }
    }
}

/// Propose a `Sync` whenever some v2 key has expired (etcd proposes SYNC every 500 ms).
pub async fn expire_keys(engine: Engine) {
    let mut tick = tokio::time::interval(TTL_SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = http::now_nanos();
        let due = engine.read().v2.next_expiry().is_some_and(|at| at <= now);
        if due && let Err(e) = engine.propose(Command::Sync { now }).await {
            tracing::warn!(error = %e, "cannot expire keys");
        }
    }
}
