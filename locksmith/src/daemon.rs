//! `keel-locksmith daemon`: the per-host agent.
//!
//! 1. **After boot.** If this host holds a slot Keel granted before a reboot (its holder
//!    record carries another boot id), keep the slot's lease alive while proving the host
//!    came back healthy — the booted version is the target, the updater marked it good,
//!    the optional health command passes — then release it. A host that comes back
//!    unhealthy is recorded as failed (which may pause the group) and releases. A slot
//!    without a Keel record (taken by `lock` or an old locksmith) is released at once, as
//!    locksmith did.
//! 2. **Wait** until a reboot is needed: update_engine's `StatusUpdate` signal
//!    (`UPDATE_STATUS_UPDATED_NEED_REBOOT`, also asked with `GetStatus` at start) or the
//!    `/run/reboot-required` sentinel.
//! 3. **Coordinate.** Inside the reboot window and with no shutdown-blocking inhibitor,
//!    take a slot (`etcd-lock`: the store's semaphore, waking on every change of it;
//!    `fleet-lock`: a FleetLock server), publish a waiting record meanwhile.
//! 4. **Reboot.** Check the window again (release the slot if it closed), warn logged-in
//!    users and wait for them once, wait for inhibitors, mark the holder `rebooting`, and
//!    ask logind to reboot — once.

use crate::config::Strategy;
use crate::dbus::Bus;
use crate::fleetlock::client::FleetLockClient;
use crate::host::{Host, RebootNeed};
use crate::records::{EventKind, Failure, HolderState, Waiting, unix_now};
use crate::store::{Group, LockRequest, StoreError, StoreOptions};
use crate::window::{Window, WindowState, local_now};
use etcd_client::WatchOptions;
use futures_util::StreamExt;
use std::path::PathBuf;
use std::time::Duration;

/// Exit status of `--reboot-method exit`: the daemon stops instead of rebooting so a
/// supervisor (the simulation, a test) can "reboot" it.
pub const REBOOT_EXIT_CODE: u8 = 75;
/// TTL of the session lease that keeps a waiting record (seconds).
pub const SESSION_TTL_SECS: i64 = 30;
/// How often the sentinel file is looked at.
pub const SENTINEL_POLL: Duration = Duration::from_secs(2);
/// Pause between health probes after boot.
pub const HEALTH_POLL: Duration = Duration::from_secs(2);
/// How a FleetLock client names its state file (under the root).
pub const FLEETLOCK_STATE: &str = "var/lib/keel/locksmith/fleetlock.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootMethod {
    /// `org.freedesktop.login1.Manager.Reboot`.
    Logind,
    /// Exit with [`REBOOT_EXIT_CODE`].
    Exit,
}

/// Everything the daemon was configured with.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub strategy: Strategy,
    pub store: StoreOptions,
    pub group: String,
    pub window: Option<Window>,
    pub root: PathBuf,
    pub reboot_method: RebootMethod,
    /// Use the system D-Bus (logind, update1). Off only for supervised simulations.
    pub dbus: bool,
    /// First and longest pause between lock attempts when no change wakes the daemon.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// How long a rebooted host may take to prove it is healthy.
    pub health_timeout: Duration,
    /// A command that must exit 0 before the slot is released (run with `sh -c`).
    pub health_command: Option<String>,
    /// Wait once for logged-in users after warning them (locksmith: 5 minutes).
    pub login_delay: Duration,
    /// FleetLock group (strategy `fleet-lock`).
    pub fleetlock_group: String,
    /// Holder id instead of `/etc/machine-id`.
    pub id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dbus(#[from] crate::dbus::DbusError),
    #[error(transparent)]
    FleetLock(#[from] crate::fleetlock::client::FleetLockError),
    #[error("strategy {0} needs the system D-Bus to reboot, but it is unavailable")]
    NoBus(&'static str),
}

/// How the daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Strategy `off`.
    Off,
    /// Asked to stop.
    Stopped,
    /// `--reboot-method exit` reached the reboot.
    Rebooted,
}

enum Coordinator {
    Nobody,
    Store(Box<Group>),
    FleetLock(FleetLockClient),
}

struct Ctx {
    cfg: DaemonConfig,
    host: Host,
    id: String,
    boot_id: String,
    hostname: String,
    version: String,
    bus: Option<Bus>,
    coordinator: Coordinator,
    strategy: Strategy,
}

/// A held slot and the task renewing its lease.
struct Held {
    keeper: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(k) = self.keeper.take() {
            k.abort();
        }
    }
}

/// `etcd-lock` unless the store is clearly absent: any non-loopback endpoint, or a store
/// unit running here, means a store (locksmith only looked at the local etcd units, which
/// broke remote stores: coreos/bugs #1062).
pub fn best_effort_strategy(endpoints: &[String], local_store_active: bool) -> Strategy {
    let remote = endpoints.iter().any(|e| {
        let host = e.split("://").last().unwrap_or(e);
        let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
        !(host == "127.0.0.1" || host == "localhost" || host == "[::1]" || host == "::1")
    });
    if remote || local_store_active {
        Strategy::EtcdLock
    } else {
        Strategy::Reboot
    }
}

/// Runs the daemon until it reboots the host, is stopped, or fails.
pub async fn run(
    cfg: DaemonConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Outcome, DaemonError> {
    if cfg.strategy == Strategy::Off {
        tracing::info!("reboot strategy is off; nothing to do");
        return Ok(Outcome::Off);
    }
    tokio::select! {
        r = run_inner(cfg) => r,
        () = shutdown => Ok(Outcome::Stopped),
    }
}

async fn run_inner(cfg: DaemonConfig) -> Result<Outcome, DaemonError> {
    let host = Host::new(&cfg.root);
    let id = match &cfg.id {
        Some(id) => id.clone(),
        None => host.machine_id()?,
    };
    let boot_id = host.boot_id()?;
    let bus = if cfg.dbus {
        match Bus::system().await {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "no system D-Bus: no update signals, no logind");
                None
            }
        }
    } else {
        None
    };
    let strategy = match cfg.strategy {
        Strategy::BestEffort => {
            let mut active = false;
            if let Some(bus) = &bus {
                for unit in [
                    "keel-store.service",
                    "etcd-member.service",
                    "etcd2.service",
                    "etcd.service",
                ] {
                    active |= bus.unit_active(unit).await.unwrap_or(false);
                }
            }
            let s = best_effort_strategy(&cfg.store.endpoints, active);
            tracing::info!(strategy = s.as_str(), "best-effort strategy resolved");
            s
        }
        s => s,
    };
    if cfg.reboot_method == RebootMethod::Logind && bus.is_none() {
        return Err(DaemonError::NoBus(strategy.as_str()));
    }
    let coordinator = match strategy {
        Strategy::EtcdLock => {
            let client =
                retry_forever("connect to the store", || crate::store::connect(&cfg.store)).await;
            let group = Group::new(client, &cfg.group, &id);
            retry_forever("create the semaphore", || group.init()).await;
            Coordinator::Store(Box::new(group))
        }
        Strategy::FleetLock => Coordinator::FleetLock(FleetLockClient::new(
            cfg.store.endpoints.first().cloned().unwrap_or_default(),
            cfg.fleetlock_group.clone(),
            id.clone(),
        )?),
        _ => Coordinator::Nobody,
    };
    let ctx = Ctx {
        hostname: host.hostname(),
        version: host.booted_version(),
        host,
        id,
        boot_id,
        bus,
        coordinator,
        strategy,
        cfg,
    };
    ctx.coordinator_state("starting");
    tracing::info!(id = %ctx.id, boot_id = %ctx.boot_id, version = %ctx.version, strategy = strategy.as_str(), group = %ctx.cfg.group, "keel-locksmith starting");
    let mut held = ctx.after_boot().await;
    ctx.coordinator_state("running");
    let need = match &held {
        Some(_) => match ctx.current_need().await {
            Some(need) => need,
            None => {
                tracing::info!(
                    "held a slot from before a restart but no reboot is needed any more; releasing it"
                );
                ctx.release(EventKind::Released, "no reboot needed any more")
                    .await;
                held = None;
                ctx.wait_for_need().await
            }
        },
        None => ctx.wait_for_need().await,
    };
    tracing::info!(target_version = %need.target_version, reason = %need.reason, "reboot needed");
    ctx.coordinate_and_reboot(need, held).await
}

/// Retries `f` with backoff until it succeeds, logging each failure.
async fn retry_forever<T, E, F, Fut>(what: &str, mut f: F) -> T
where
    E: std::error::Error,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut pause = Duration::from_millis(200);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot {what}; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

impl Ctx {
    fn coordinator_state(&self, state: &str) {
        if let Err(e) = self.host.write_coordinator(self.strategy.as_str(), state) {
            tracing::debug!(error = %crate::error_chain(&e), "cannot write the coordinator state file");
        }
    }

    fn group(&self) -> Option<&Group> {
        match &self.coordinator {
            Coordinator::Store(g) => Some(g),
            _ => None,
        }
    }

    /// Releases this host's slot (best effort, retried a few times).
    async fn release(&self, kind: EventKind, detail: &str) {
        match &self.coordinator {
            Coordinator::Store(g) => {
                for attempt in 0..20u32 {
                    match g.unlock(&self.id, kind, detail).await {
                        Ok(()) => {
                            tracing::info!(detail, "released the reboot slot");
                            return;
                        }
                        Err(e) if e.is_not_holder() => return,
                        Err(e) => {
                            tracing::warn!(error = %crate::error_chain(&e), "cannot release the slot; retrying");
                            tokio::time::sleep(Duration::from_millis(200) * (attempt + 1)).await;
                        }
                    }
                }
            }
            Coordinator::FleetLock(c) => {
                retry_forever("report steady state to the FleetLock server", || {
                    c.steady_state()
                })
                .await;
                let _ = std::fs::remove_file(self.host.path(FLEETLOCK_STATE));
            }
            Coordinator::Nobody => {}
        }
    }

    /// Step 1. Returns the slot if this host holds one it must still reboot with.
    async fn after_boot(&self) -> Option<Held> {
        match &self.coordinator {
            Coordinator::Store(g) => self.after_boot_store(g).await,
            Coordinator::FleetLock(_) => {
                self.after_boot_fleetlock().await;
                None
            }
            Coordinator::Nobody => None,
        }
    }

    async fn after_boot_store(&self, g: &Group) -> Option<Held> {
        let view = retry_forever("read the reboot group", || g.view()).await;
        let holds = view
            .semaphore
            .as_ref()
            .is_some_and(|s| s.value.holds(&self.id));
        let record = view.holder(&self.id).map(|h| h.value.clone());
        if !holds {
            if let Some(h) = record {
                tracing::warn!(
                    acquired_at = h.acquired_at,
                    "the slot was taken back while this host was away; checking health anyway"
                );
                if h.boot_id != self.boot_id
                    && let Err(u) = self.verify_health(&h.target_version).await
                {
                    self.record_failure(g, &h.target_version, &u.reason).await;
                }
            }
            return None;
        }
        let Some(h) = record else {
            self.release(EventKind::Released, "released at daemon start (slot without a Keel record: manual lock or old locksmith)").await;
            return None;
        };
        let keeper = (h.lease != 0).then(|| g.keep_alive(h.lease, h.lease_ttl));
        let held = Held { keeper };
        if h.boot_id == self.boot_id {
            tracing::info!("this host holds a slot but has not rebooted yet (daemon restarted)");
            return Some(held);
        }
        let _ = g.set_holder_state(&self.id, HolderState::Verifying).await;
        match self.verify_health(&h.target_version).await {
            Ok(detail) => {
                self.release(EventKind::Released, &detail).await;
            }
            Err(Unhealthy {
                reason,
                fall_back: true,
            }) => {
                // Keep the slot: the reboot that lets the boot loader fall back is part
                // of this host's turn.
                tracing::error!(
                    reason,
                    "came back unhealthy; rebooting again, holding the slot, so the boot loader falls back"
                );
                return Some(held);
            }
            Err(Unhealthy { reason, .. }) => {
                self.record_failure(g, &h.target_version, &reason).await;
                self.release(
                    EventKind::Released,
                    &format!("came back unhealthy: {reason}"),
                )
                .await;
            }
        }
        drop(held);
        None
    }

    async fn record_failure(&self, g: &Group, target: &str, reason: &str) {
        tracing::error!(reason, "this host came back unhealthy after its reboot");
        let failure = Failure {
            id: self.id.clone(),
            hostname: self.hostname.clone(),
            at: unix_now(),
            reason: reason.to_string(),
            target_version: target.to_string(),
            booted_version: self.host.booted_version(),
        };
        if retry_forever("record the failure", || g.record_failure(&failure)).await {
            tracing::error!("the reboot group is now paused");
        }
    }

    async fn after_boot_fleetlock(&self) {
        let path = self.host.path(FLEETLOCK_STATE);
        let state: Option<serde_json::Value> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(state) = state {
            let old_boot = state["boot_id"].as_str().unwrap_or_default();
            if old_boot == self.boot_id {
                // Not rebooted yet: the daemon restarted; the lock is recursive.
                return;
            }
            let target = state["target_version"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match self.verify_health(&target).await {
                Ok(_) => {}
                // The lock is recursive: the next reboot (to fall back) happens under it.
                Err(Unhealthy {
                    fall_back: true, ..
                }) => return,
                Err(Unhealthy { reason, .. }) => {
                    tracing::error!(
                        reason,
                        "came back unhealthy; keeping the FleetLock slot so the rollout stops here"
                    );
                    std::future::pending::<()>().await;
                }
            }
        }
        self.release(EventKind::Released, "").await;
    }

    /// Proves the host came back healthy; `Err` carries why not.
    async fn verify_health(&self, target: &str) -> Result<String, Unhealthy> {
        let unhealthy = |reason: String| Unhealthy {
            reason,
            fall_back: false,
        };
        let booted = self.host.booted_version();
        if !target.is_empty() && booted != target {
            return Err(unhealthy(format!(
                "booted version {booted:?} is not the target {target:?} (the update was rolled back?)"
            )));
        }
        let deadline = tokio::time::Instant::now() + self.cfg.health_timeout;
        loop {
            let mut pending = Vec::new();
            if let Some(bus) = &self.bus
                && let Ok(Some(status)) = bus.update_status().await
                && status.needs_reboot()
            {
                // The updater's own gate failed on the new slot and wants the reboot
                // that makes the boot loader fall back.
                return Err(Unhealthy {
                    reason: format!(
                        "the updater's health gate failed on {booted:?} and asks for a reboot ({})",
                        status.operation
                    ),
                    fall_back: true,
                });
            }
            if let Some(bus) = &self.bus {
                match bus.boot_status().await {
                    Ok(Some((version, good))) => {
                        if !target.is_empty() && version != target {
                            return Err(unhealthy(format!(
                                "the updater booted {version:?}, not the target {target:?}"
                            )));
                        }
                        if !good {
                            pending.push(format!("the updater has not marked {version} good"));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => pending.push(crate::error_chain(&e)),
                }
            }
            if let Some(cmd) = &self.cfg.health_command {
                match tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .kill_on_drop(true)
                    .output()
                    .await
                {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => pending.push(format!(
                        "health command {cmd:?} exited with {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )),
                    Err(e) => pending.push(format!("cannot run health command {cmd:?}: {e}")),
                }
            }
            if pending.is_empty() {
                return Ok(format!(
                    "rebooted (boot id now {}), running {booted:?}, healthy",
                    self.boot_id
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(unhealthy(format!(
                    "not healthy within {:?}: {}",
                    self.cfg.health_timeout,
                    pending.join("; ")
                )));
            }
            tokio::time::sleep(
                HEALTH_POLL.min(self.cfg.health_timeout / 4 + Duration::from_millis(50)),
            )
            .await;
        }
    }

    /// A reboot need visible right now.
    async fn current_need(&self) -> Option<RebootNeed> {
        if let Some(need) = self.host.reboot_sentinel() {
            return Some(need);
        }
        if let Some(bus) = &self.bus
            && let Ok(Some(status)) = bus.update_status().await
            && status.needs_reboot()
        {
            return Some(need_from(&status));
        }
        None
    }

    /// Step 2.
    async fn wait_for_need(&self) -> RebootNeed {
        let mut signals = match &self.bus {
            Some(bus) => match bus.status_updates().await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "cannot listen for update signals");
                    None
                }
            },
            None => None,
        };
        if let Some(need) = self.current_need().await {
            return need;
        }
        loop {
            let signal = async {
                match signals.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                status = signal => match status {
                    Some(status) if status.needs_reboot() => return need_from(&status),
                    Some(_) => {}
                    None => signals = None,
                },
                () = tokio::time::sleep(SENTINEL_POLL) => {
                    if let Some(need) = self.host.reboot_sentinel() {
                        return need;
                    }
                }
            }
        }
    }

    fn waiting(&self, need: &RebootNeed, waiting_for: &str, since: i64) -> Waiting {
        Waiting {
            id: self.id.clone(),
            hostname: self.hostname.clone(),
            target_version: need.target_version.clone(),
            reason: need.reason.clone(),
            since,
            waiting_for: waiting_for.to_string(),
        }
    }

    async fn publish_waiting(
        &self,
        need: &RebootNeed,
        what: &str,
        since: i64,
        session: &mut Option<(i64, tokio::task::JoinHandle<()>)>,
        last: &mut String,
    ) {
        let Some(g) = self.group() else { return };
        if last == what {
            return;
        }
        if session.is_none()
            && let Ok(lease) = g.grant_lease(SESSION_TTL_SECS).await
        {
            *session = Some((lease, g.keep_alive(lease, SESSION_TTL_SECS)));
        }
        let lease = session.as_ref().map(|s| s.0).unwrap_or(0);
        if g.set_waiting(&self.waiting(need, what, since), lease)
            .await
            .is_ok()
        {
            *last = what.to_string();
        }
    }

    async fn blockers(&self) -> Vec<String> {
        match &self.bus {
            Some(bus) => match bus.shutdown_blockers().await {
                Ok(list) => list
                    .into_iter()
                    .map(|i| format!("{} ({})", i.who, i.why))
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "cannot list inhibitors");
                    Vec::new()
                }
            },
            None => Vec::new(),
        }
    }

    fn window_state(&self) -> Option<WindowState> {
        self.cfg.window.as_ref().map(|w| w.state(local_now()))
    }

    async fn try_lock(&self, need: &RebootNeed) -> Result<Held, DaemonError> {
        match &self.coordinator {
            Coordinator::Store(g) => {
                let req = LockRequest {
                    id: self.id.clone(),
                    hostname: self.hostname.clone(),
                    boot_id: self.boot_id.clone(),
                    from_version: self.version.clone(),
                    target_version: need.target_version.clone(),
                    reason: need.reason.clone(),
                    leased: true,
                    fixed_ttl: None,
                    state: None,
                };
                let grant = g.lock(&req).await?;
                tracing::info!(
                    lease = grant.lease,
                    ttl = grant.lease_ttl,
                    "got a reboot slot"
                );
                let keeper = (grant.lease != 0).then(|| g.keep_alive(grant.lease, grant.lease_ttl));
                Ok(Held { keeper })
            }
            Coordinator::FleetLock(c) => {
                c.pre_reboot().await?;
                let state = serde_json::json!({
                    "boot_id": self.boot_id,
                    "target_version": need.target_version,
                    "from_version": self.version,
                });
                if let Err(e) = crate::host::atomic_write(
                    &self.host.path(FLEETLOCK_STATE),
                    state.to_string().as_bytes(),
                ) {
                    tracing::warn!(error = %e, "cannot record the FleetLock state");
                }
                Ok(Held { keeper: None })
            }
            Coordinator::Nobody => Ok(Held { keeper: None }),
        }
    }

    /// One watch stream on the semaphore key and the holders' `alive` keys: a release, a
    /// `set-max` or an expired lease wakes waiting hosts at once.
    async fn open_watch(&self) -> Option<etcd_client::WatchStream> {
        let g = self.group()?;
        let mut client = g.client().clone();
        let mut stream = client.watch(g.keys.semaphore(), None).await.ok()?;
        stream
            .watch(
                g.keys.alive_prefix(),
                Some(WatchOptions::new().with_prefix()),
            )
            .await
            .ok()?;
        Some(stream)
    }

    /// Waits for a change seen by `watch`, or `pause`, whichever is first.
    async fn wait_for_change(&self, watch: &mut Option<etcd_client::WatchStream>, pause: Duration) {
        if watch.is_none() {
            *watch = self.open_watch().await;
        }
        let Some(stream) = watch.as_mut() else {
            tokio::time::sleep(pause).await;
            return;
        };
        tokio::select! {
            m = stream.message() => {
                if !matches!(m, Ok(Some(_))) {
                    *watch = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            () = tokio::time::sleep(pause) => {}
        }
    }

    /// Steps 3 and 4.
    async fn coordinate_and_reboot(
        &self,
        need: RebootNeed,
        mut held: Option<Held>,
    ) -> Result<Outcome, DaemonError> {
        let since = unix_now();
        let mut pause = self.cfg.retry_min;
        let mut session = None;
        let mut published = String::new();
        let mut users_warned = false;
        let mut watch = None;
        loop {
            if let Some(WindowState::Closed { opens_in }) = self.window_state() {
                if held.take().is_some() {
                    tracing::info!(
                        "the reboot window closed before the reboot; giving the slot back"
                    );
                    self.release(
                        EventKind::Released,
                        "reboot window closed before the reboot",
                    )
                    .await;
                }
                tracing::info!(?opens_in, "outside the reboot window; waiting");
                self.publish_waiting(&need, "window", since, &mut session, &mut published)
                    .await;
                tokio::time::sleep(
                    opens_in
                        .min(Duration::from_secs(60))
                        .max(Duration::from_millis(200)),
                )
                .await;
                continue;
            }
            if held.is_none() {
                let blockers = self.blockers().await;
                if !blockers.is_empty() {
                    tracing::info!(?blockers, "shutdown is inhibited; not taking a slot yet");
                    self.publish_waiting(&need, "inhibitor", since, &mut session, &mut published)
                        .await;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.cfg.retry_max);
                    continue;
                }
                match self.try_lock(&need).await {
                    Ok(h) => {
                        held = Some(h);
                        pause = self.cfg.retry_min;
                    }
                    Err(e) => {
                        let what = match &e {
                            DaemonError::Store(StoreError::Paused { .. }) => "paused",
                            _ => "slot",
                        };
                        tracing::info!(error = %crate::error_chain(&e), "no reboot slot yet");
                        self.publish_waiting(&need, what, since, &mut session, &mut published)
                            .await;
                        self.wait_for_change(&mut watch, pause).await;
                        pause = (pause * 2).min(self.cfg.retry_max);
                        continue;
                    }
                }
            }
            // Holding a slot: last checks right before rebooting.
            if let Some(WindowState::Closed { .. }) = self.window_state() {
                continue;
            }
            if !users_warned && !self.cfg.login_delay.is_zero() {
                users_warned = true;
                if self.warn_users().await {
                    tokio::time::sleep(self.cfg.login_delay).await;
                    continue;
                }
            }
            let blockers = self.blockers().await;
            if !blockers.is_empty() {
                tracing::info!(?blockers, "holding the slot; shutdown is inhibited");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(self.cfg.retry_max);
                continue;
            }
            if let Some(g) = self.group()
                && let Err(e) = g.set_holder_state(&self.id, HolderState::Rebooting).await
            {
                tracing::warn!(error = %crate::error_chain(&e), "cannot mark the slot as rebooting");
            }
            if let Some((lease, keeper)) = session.take() {
                keeper.abort();
                if let Some(g) = self.group() {
                    let _ = g.client().clone().lease_revoke(lease).await;
                }
            }
            self.coordinator_state("rebooting");
            match self.cfg.reboot_method {
                RebootMethod::Exit => {
                    tracing::info!("rebooting (exit {REBOOT_EXIT_CODE})");
                    // The lease stays alive until the process is gone.
                    std::mem::forget(held.take());
                    return Ok(Outcome::Rebooted);
                }
                RebootMethod::Logind => {
                    let bus = self
                        .bus
                        .as_ref()
                        .ok_or(DaemonError::NoBus(self.strategy.as_str()))?;
                    tracing::info!("asking logind to reboot");
                    match bus.reboot().await {
                        Ok(()) => {
                            // systemd stops this service on the way down; the slot stays held.
                            std::future::pending::<()>().await;
                        }
                        Err(e) => {
                            tracing::error!(error = %crate::error_chain(&e), "logind refused to reboot; trying again later");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(self.cfg.retry_max);
                        }
                    }
                }
            }
        }
    }

    /// Warns logged-in users on their terminals; returns whether anyone is logged in.
    async fn warn_users(&self) -> bool {
        let Some(bus) = &self.bus else { return false };
        let sessions = bus.sessions().await.unwrap_or_default();
        if sessions.is_empty() {
            return false;
        }
        let when = chrono::Local::now().format("%a %Y-%m-%d %H:%M:%S %Z");
        let msg = format!(
            "\r\nBroadcast message from keel-locksmith at {when}:\r\nSystem reboot in {} minutes!\r\n",
            self.cfg.login_delay.as_secs().div_ceil(60)
        );
        for (_, user, tty) in &sessions {
            if tty.is_empty() {
                continue;
            }
            let path = self
                .host
                .path(&format!("dev/{}", tty.trim_start_matches("/dev/")));
            if let Err(e) = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut f| {
                    use std::io::Write;
                    f.write_all(msg.as_bytes())
                })
            {
                tracing::debug!(user, tty, error = %e, "cannot write the reboot warning");
            }
        }
        tracing::info!(sessions = sessions.len(), delay = ?self.cfg.login_delay, "users are logged in; warned them and waiting");
        true
    }
}

/// Why a host that rebooted is not (yet) healthy.
#[derive(Debug)]
struct Unhealthy {
    reason: String,
    /// The updater asks for another reboot so the boot loader can fall back.
    fall_back: bool,
}

fn need_from(status: &crate::dbus::UpdateStatus) -> RebootNeed {
    RebootNeed {
        target_version: status.new_version.clone(),
        reason: format!("update agent: {}", status.operation),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_effort_picks_the_lock_when_a_store_is_there() {
        let local = vec![
            "http://127.0.0.1:2379".to_string(),
            "localhost:4001".to_string(),
        ];
        assert_eq!(best_effort_strategy(&local, false), Strategy::Reboot);
        assert_eq!(best_effort_strategy(&local, true), Strategy::EtcdLock);
        let remote = vec!["https://10.0.0.5:2379".to_string()];
        assert_eq!(best_effort_strategy(&remote, false), Strategy::EtcdLock);
    }
}
