//! Running a member: recover the engine, bind the client listeners, expire TTLs, serve
//! until shutdown, then let the log writer finish.

use crate::cluster::{Cluster, Members};
use crate::config::Settings;
use crate::engine::command::Command;
use crate::engine::{Bootstrap, Engine, EngineError, EngineOptions, Outbox, RaftOptions};
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
    #[error(
        "cannot join the cluster: {0} (add this member with `etcdctl member add` first, and list the running members in --initial-cluster)"
    )]
    JoinCluster(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot bootstrap through discovery: {0}")]
    Discovery(#[from] crate::discovery::DiscoveryError),
    #[error("cannot read or write the member id file {path}")]
    IdFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who this member is and how it starts.
struct Identity {
    id: u64,
    /// Peers a joining member learned from the running ones.
    known: Members,
    /// The members of a new cluster (from the flags, or found by discovery).
    initial: Vec<(String, Vec<String>)>,
    /// The token the member ids of the new cluster are computed with.
    token: String,
}

/// This member's id: kept in `member/id` once known. A new cluster's members compute
/// theirs from the flags as etcd does (with the discovery URL as the token when
/// discovering); a joining member finds itself in the membership of the running
/// members by its peer URLs.
async fn identity(settings: &Settings) -> Result<Identity, ServerError> {
    let token = settings
        .discovery
        .clone()
        .unwrap_or_else(|| settings.cluster_token.clone());
    let mut initial = settings.initial_cluster.clone();
    let path = settings.data_dir.join("member").join("id");
    let id_err = |source| ServerError::IdFile {
        path: path.clone(),
        source,
    };
    let saved = match std::fs::read_to_string(&path) {
        Ok(s) => Some(
            u64::from_str_radix(s.trim(), 16)
                .map_err(|e| id_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(id_err(e)),
    };
    let has_snapshot = settings.data_dir.join("member").join("snap").is_dir();
    if let Some(id) = saved
        && has_snapshot
    {
        return Ok(Identity {
            id,
            known: Members::default(),
            initial,
            token,
        });
    }
    if settings.discovery.is_none() && settings.discovery_srv.is_none() {
        settings.verify_bootstrap()?;
    }
    if let Some(srv) = &settings.discovery_srv {
        initial = crate::discovery::srv_cluster(srv, &settings.name, &settings.peer_urls).await?;
        tracing::info!(?initial, domain = %srv.domain, "found the cluster in DNS SRV records");
    }
    let (id, known) = if settings.join_existing {
        let others: Vec<String> = initial
            .iter()
            .filter(|(n, _)| n != &settings.name)
            .flat_map(|(_, urls)| urls.clone())
            .collect();
        let tls = match &settings.peer_tls {
            Some(files) => Some(crate::peer::PeerTls::new(files)?),
            None => None,
        };
        let members = crate::peer::fetch_members(&others, tls.as_ref())
            .await
            .map_err(|e| ServerError::JoinCluster(e.to_string()))?;
        let me = settings
            .peer_urls
            .iter()
            .find_map(|u| members.by_peer_url(u))
            .ok_or_else(|| {
                ServerError::JoinCluster(format!(
                    "no member has the peer URLs {:?}",
                    settings.peer_urls
                ))
            })?;
        (me.id, members.clone())
    } else {
        // With DNS discovery this member's URLs are its SRV target's, as the others
        // see them.
        let mine = initial
            .iter()
            .find(|(n, _)| n == &settings.name)
            .filter(|_| settings.discovery_srv.is_some())
            .map_or(&settings.peer_urls, |(_, urls)| urls);
        let id = crate::cluster::member_id(mine, &token);
        if let Some(url) = &settings.discovery {
            initial = crate::discovery::join(url, id, &settings.name, &settings.peer_urls).await?;
            tracing::info!(?initial, "discovered the initial cluster");
        }
        (id, Members::default())
    };
    std::fs::create_dir_all(settings.data_dir.join("member")).map_err(id_err)?;
    crate::wal::atomic_write(&path, format!("{id:x}\n").as_bytes()).map_err(id_err)?;
    Ok(Identity {
        id,
        known,
        initial,
        token,
    })
}

/// Open the engine for `settings`.
pub async fn open_engine(settings: &Settings) -> Result<(Engine, Outbox, Members), ServerError> {
    let Identity {
        id,
        known,
        initial,
        token,
    } = identity(settings).await?;
    let mut opts = EngineOptions::new(&settings.data_dir);
    opts.snapshot_count = settings.snapshot_count;
    opts.wal = WalOptions::default();
    opts.wal_dir = settings.wal_dir.clone();
    opts.raft = RaftOptions {
        id,
        heartbeat: settings.heartbeat,
        election: settings.election,
        bootstrap: if settings.join_existing {
            Bootstrap::Existing
        } else {
            Bootstrap::New(Members::bootstrap(&initial, &token))
        },
    };
    let dir = settings.data_dir.clone();
    let started = Instant::now();
    let (engine, recovery, outbox) = tokio::task::spawn_blocking(move || Engine::open(opts))
        .await?
        .map_err(|source| ServerError::Recover { dir, source })?;
    tracing::info!(
        data_dir = %settings.data_dir.display(),
        snapshot_index = recovery.snapshot_index,
        replayed = recovery.replayed_entries,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store recovered"
    );
    Ok((engine, outbox, known))
}

/// Serve a member until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let peer_tls = match &settings.peer_tls {
        Some(files) => Some(crate::peer::PeerTls::new(files)?),
        None => None,
    };
    let (engine, outbox, known) = open_engine(&settings).await?;
    let alone = engine.members().members.len() <= 1 && !settings.join_existing;
    let mut peer_listeners = Vec::new();
    for listen in &settings.listen_peer {
        let addr = listen.addr;
        match TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "serving peer traffic");
                peer_listeners.push(l);
            }
            // A one-member cluster can run without its peer port (as in tests that
            // start many stores on the default peer URL).
            Err(e) if alone => {
                tracing::warn!(%addr, error = %e, "cannot listen for peers; running alone")
            }
            Err(source) => return Err(ServerError::Listen { addr, source }),
        }
    }
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
    let mut cluster = Cluster::local(
        &settings.name,
        settings.peer_urls.clone(),
        settings.advertise_client_urls.clone(),
        &settings.cluster_token,
    );
    cluster.local.id = engine.status().id;
    tracing::info!(member_id = %format!("{:x}", cluster.local.id), cluster_id = %format!("{:x}", engine.cluster_id()), "member ready");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let mut background = Vec::new();
    for l in peer_listeners {
        background.push(tokio::spawn(crate::peer::serve(
            l,
            engine.clone(),
            peer_tls.clone(),
        )));
    }
    background.push(tokio::spawn(crate::peer::send_all(
        engine.clone(),
        outbox,
        known,
        peer_tls.clone(),
    )));
    background.push(tokio::spawn(publish(engine.clone(), cluster.local.clone())));
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
    let removed = {
        let engine = engine.clone();
        async move {
            while !engine.is_removed() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    tokio::select! {
        () = shutdown => {}
        () = removed => tracing::warn!("this member was removed from the cluster; stopping"),
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    for t in background {
        t.abort();
    }
    tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    Ok(())
}

/// Publish this member's name and client URLs through the log once there is a leader
/// (etcd's `publish`), retrying until it is done.
async fn publish(engine: Engine, local: crate::cluster::Member) {
    loop {
        let current = engine.members().get(local.id).cloned();
        match current {
            Some(m) if m.name == local.name && m.client_urls == local.client_urls => return,
            _ => {}
        }
        let cmd = Command::Publish {
            id: local.id,
            name: local.name.clone(),
            client_urls: local.client_urls.clone(),
        };
        match engine.propose(cmd).await {
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "cannot publish this member yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
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
    let mut leading = engine.is_leader();
    loop {
        tick.tick().await;
        let now = Instant::now();
        let was_leading = leading;
        leading = engine.is_leader();
        if !leading {
            continue;
        }
        if !was_leading {
            // A new leader gives every lease its remaining TTL again (etcd's Promote):
            // keep-alives sent to the old leader were not seen here.
            engine.write().v3.resume_leases(now);
            last_checkpoint = now;
            continue;
        }
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
        if !engine.is_leader() {
            continue;
        }
        let now = http::now_nanos();
        let due = engine.read().v2.next_expiry().is_some_and(|at| at <= now);
        if due && let Err(e) = engine.propose(Command::Sync { now }).await {
            tracing::warn!(error = %e, "cannot expire keys");
        }
    }
}
