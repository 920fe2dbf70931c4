//! `keel-updater daemon`: the update agent.
//!
//! At start it settles the boot: an update that was installed but came back on the old
//! slot is recorded as rolled back (Omaha event 3/0, error 44) and never retried; a slot
//! booted for the first time passes the health gate before it is blessed (event 3/2 with
//! the previous version). Then it checks the update source every interval (or when asked
//! with `AttemptUpdate`), installs what it finds and reports `UPDATE_STATUS_*` through
//! update_engine's D-Bus interface, so keel-locksmith (and Flatcar's locksmithd) reboot the
//! host when it says `UPDATE_STATUS_UPDATED_NEED_REBOOT`.
//!
//! D-Bus: `com.coreos.update1` at `/com/coreos/update1`, interface
//! `com.coreos.update1.Manager` (`AttemptUpdate`, `ResetStatus`, `GetStatus`,
//! `GetBootStatus`, signal `StatusUpdate`) and Keel's `dev.keel.Updater1` (`Pause`,
//! `Resume`, `Cancel`, `MarkGood`, `Rollback`; properties `BootedSlot`, `NextSlot`,
//! `Paused`, `PendingVersion`).

use crate::boot::{BootState, Disk, select};
use crate::fetch::{STALL_TIMEOUT, Source};
use crate::health::HealthConfig;
use crate::install::{HostConfig, InstallOptions};
use crate::lifecycle::BootOutcome;
use crate::source::{self, Client, Event, UpdateSource};
use crate::state::State;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zbus::object_server::SignalEmitter;

pub const BUS_NAME: &str = "com.coreos.update1";
pub const OBJECT_PATH: &str = "/com/coreos/update1";

/// update_engine's status strings.
pub mod op {
    pub const IDLE: &str = "UPDATE_STATUS_IDLE";
    pub const CHECKING: &str = "UPDATE_STATUS_CHECKING_FOR_UPDATE";
    pub const AVAILABLE: &str = "UPDATE_STATUS_UPDATE_AVAILABLE";
    pub const DOWNLOADING: &str = "UPDATE_STATUS_DOWNLOADING";
    pub const VERIFYING: &str = "UPDATE_STATUS_VERIFYING";
    pub const FINALIZING: &str = "UPDATE_STATUS_FINALIZING";
    pub const NEED_REBOOT: &str = "UPDATE_STATUS_UPDATED_NEED_REBOOT";
    pub const ERROR: &str = "UPDATE_STATUS_REPORTING_ERROR_EVENT";
}

/// update_engine's `GetStatus` tuple.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub last_checked: i64,
    pub progress: f64,
    pub operation: &'static str,
    pub new_version: String,
    pub new_size: i64,
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub host: HostConfig,
    pub source: Option<UpdateSource>,
    pub group: String,
    pub app_id: String,
    pub interval: Duration,
    pub health: HealthConfig,
    pub dbus: bool,
}

/// State shared by the loop and the D-Bus objects.
#[derive(Debug)]
pub struct Shared {
    cfg: DaemonConfig,
    status: Mutex<Status>,
    check_now: tokio::sync::Notify,
    marked_good: Mutex<bool>,
    conn: Mutex<Option<zbus::Connection>>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn fdo(e: impl std::error::Error) -> zbus::fdo::Error {
    zbus::fdo::Error::Failed(crate::error_chain(&e))
}

impl Shared {
    fn new(cfg: DaemonConfig) -> Arc<Shared> {
        Arc::new(Shared {
            status: Mutex::new(Status {
                last_checked: 0,
                progress: 0.0,
                operation: op::IDLE,
                new_version: String::new(),
                new_size: 0,
            }),
            check_now: tokio::sync::Notify::new(),
            marked_good: Mutex::new(false),
            conn: Mutex::new(None),
            cfg,
        })
    }

    fn status(&self) -> Status {
        self.status.lock().expect("not poisoned").clone()
    }

    /// Changes the status and emits `StatusUpdate`.
    async fn set(&self, operation: &'static str, progress: f64, new_version: &str, new_size: i64) {
        let s = {
            let mut s = self.status.lock().expect("not poisoned");
            s.operation = operation;
            s.progress = progress;
            s.new_version = new_version.to_string();
            s.new_size = new_size;
            s.clone()
        };
        tracing::info!(operation, progress, new_version, "status");
        self.emit(&s).await;
    }

    async fn emit(&self, s: &Status) {
        let conn = self.conn.lock().expect("not poisoned").clone();
        let Some(conn) = conn else { return };
        match conn
            .object_server()
            .interface::<_, Manager>(OBJECT_PATH)
            .await
        {
            Ok(iface) => {
                if let Err(e) = Manager::status_update(
                    iface.signal_emitter(),
                    s.last_checked,
                    s.progress,
                    s.operation,
                    &s.new_version,
                    s.new_size,
                )
                .await
                {
                    tracing::warn!(error = %e, "cannot emit StatusUpdate");
                }
            }
            Err(e) => tracing::warn!(error = %e, "no Manager object to emit from"),
        }
    }

    fn client(&self) -> Client {
        let host = &self.cfg.host;
        Client {
            machine_id: std::fs::read_to_string(host.root.join("etc/machine-id"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            boot_id: host.boot_id(),
            version: crate::host_version(&host.root),
            group: self.cfg.group.clone(),
            board: host.board.clone(),
            arch: host.arch.clone(),
            app_id: self.cfg.app_id.clone(),
        }
    }

    async fn report(&self, http: &reqwest::Client, event: Event) {
        if let Some(src) = &self.cfg.source
            && let Err(e) = src.report(http, &self.client(), &event).await
        {
            tracing::warn!(error = %crate::error_chain(&e), "cannot report event {event:?}");
        }
    }
}

/// `com.coreos.update1.Manager`.
#[derive(Debug)]
pub struct Manager(pub Arc<Shared>);

#[zbus::interface(name = "com.coreos.update1.Manager")]
impl Manager {
    /// Check for an update now.
    async fn attempt_update(&self) {
        self.0.check_now.notify_one();
    }

    /// From `UPDATED_NEED_REBOOT`: abandon the installed update (the other slot becomes
    /// unbootable); from `IDLE`: nothing. Refused while an update is in flight.
    async fn reset_status(&self) -> zbus::fdo::Result<()> {
        match self.0.status().operation {
            op::IDLE | op::ERROR => Ok(()),
            op::NEED_REBOOT => {
                cancel(&self.0.cfg.host).map_err(fdo)?;
                self.0.set(op::IDLE, 0.0, "", 0).await;
                Ok(())
            }
            other => Err(zbus::fdo::Error::Failed(format!(
                "cannot reset while {other}"
            ))),
        }
    }

    async fn get_status(&self) -> (i64, f64, String, String, i64) {
        let s = self.0.status();
        (
            s.last_checked,
            s.progress,
            s.operation.to_string(),
            s.new_version,
            s.new_size,
        )
    }

    /// Keel: the booted version and whether it is blessed (keel-locksmith waits for this
    /// before releasing its reboot slot).
    async fn get_boot_status(&self) -> (String, bool) {
        (
            crate::host_version(&self.0.cfg.host.root),
            *self.0.marked_good.lock().expect("not poisoned"),
        )
    }

    #[zbus(signal)]
    pub async fn status_update(
        emitter: &SignalEmitter<'_>,
        last_checked_time: i64,
        progress: f64,
        current_operation: &str,
        new_version: &str,
        new_size: i64,
    ) -> zbus::Result<()>;
}

/// `dev.keel.Updater1`.
#[derive(Debug)]
pub struct Keel(pub Arc<Shared>);

#[zbus::interface(name = "dev.keel.Updater1")]
impl Keel {
    async fn pause(&self) -> zbus::fdo::Result<()> {
        set_paused(&self.0.cfg.host, true).map_err(fdo)
    }

    async fn resume(&self) -> zbus::fdo::Result<()> {
        set_paused(&self.0.cfg.host, false).map_err(fdo)
    }

    async fn cancel(&self) -> zbus::fdo::Result<()> {
        cancel(&self.0.cfg.host).map_err(fdo)?;
        self.0.set(op::IDLE, 0.0, "", 0).await;
        Ok(())
    }

    async fn mark_good(&self) -> zbus::fdo::Result<String> {
        let outcome = crate::lifecycle::mark_good(&self.0.cfg.host).map_err(fdo)?;
        *self.0.marked_good.lock().expect("not poisoned") = true;
        Ok(format!("{outcome:?}"))
    }

    async fn rollback(&self, force: bool) -> zbus::fdo::Result<String> {
        let slot = crate::lifecycle::rollback(&self.0.cfg.host, force).map_err(fdo)?;
        Ok(slot.label().to_string())
    }

    #[zbus(property)]
    async fn booted_slot(&self) -> String {
        self.0
            .cfg
            .host
            .booted_slot()
            .map(|s| s.label().to_string())
            .unwrap_or_default()
    }

    #[zbus(property)]
    async fn next_slot(&self) -> String {
        BootState::load(&self.0.cfg.host.grubenv)
            .ok()
            .and_then(|b| select(&b.boot).0)
            .map(|s| s.label().to_string())
            .unwrap_or_default()
    }

    #[zbus(property)]
    async fn paused(&self) -> bool {
        State::load(&self.0.cfg.host.state_dir).is_ok_and(|s| s.paused)
    }

    #[zbus(property)]
    async fn pending_version(&self) -> String {
        State::load(&self.0.cfg.host.state_dir)
            .ok()
            .and_then(|s| s.pending)
            .map(|p| p.version)
            .unwrap_or_default()
    }
}

/// Pauses or resumes installs.
pub fn set_paused(host: &HostConfig, paused: bool) -> Result<(), crate::state::StateError> {
    let mut state = State::load(&host.state_dir)?;
    state.paused = paused;
    state.save(&host.state_dir)
}

/// Abandons an interrupted or installed update: the inactive slot becomes unbootable.
pub fn cancel(host: &HostConfig) -> Result<(), crate::install::InstallError> {
    let booted = host.booted_slot()?;
    let mut disk = Disk::open(&host.disk)?;
    let mut boot = BootState::load(&host.grubenv)?;
    let mut next = boot.boot.clone();
    next.make_unbootable(booted.other());
    boot.commit(next, Some(&mut disk))?;
    let mut state = State::load(&host.state_dir)?;
    state.progress = None;
    state.pending = None;
    state.save(&host.state_dir)?;
    let _ = std::fs::remove_file(host.root.join("run/reboot-required"));
    Ok(())
}

fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(60))
        .build()
}

/// Runs the agent until `shutdown`.
pub async fn run(
    cfg: DaemonConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let shared = Shared::new(cfg);
    if shared.cfg.dbus {
        let conn = zbus::connection::Builder::system()?
            .name(BUS_NAME)?
            .serve_at(OBJECT_PATH, Manager(shared.clone()))?
            .serve_at(OBJECT_PATH, Keel(shared.clone()))?
            .build()
            .await?;
        *shared.conn.lock().expect("not poisoned") = Some(conn);
    }
    tokio::select! {
        r = agent(shared.clone()) => r,
        () = shutdown => Ok(()),
    }
}

async fn agent(shared: Arc<Shared>) -> anyhow::Result<()> {
    let http = http_client()?;
    settle_boot(&shared, &http).await;
    loop {
        let fuzz = Duration::from_millis(fastrand_ms(shared.cfg.interval / 10));
        tokio::select! {
            () = shared.check_now.notified() => {}
            () = tokio::time::sleep(shared.cfg.interval + fuzz) => {}
        }
        check_and_install(&shared, &http).await;
    }
}

fn fastrand_ms(max: Duration) -> u64 {
    fastrand::u64(0..=max.as_millis() as u64)
}

/// Step 1: rollback detection and the health gate.
async fn settle_boot(shared: &Arc<Shared>, http: &reqwest::Client) {
    let host = &shared.cfg.host;
    let state = match State::load(&host.state_dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %crate::error_chain(&e), "cannot read the updater state");
            return;
        }
    };
    let booted = match host.booted_slot() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %crate::error_chain(&e), "cannot tell the booted slot; not settling the boot");
            return;
        }
    };
    let blessed = BootState::load(&host.grubenv).is_ok_and(|b| b.boot.slot(booted).ok);
    if let Some(p) = &state.pending {
        if p.slot != booted && !p.boot_id.is_empty() && p.boot_id == host.boot_id() {
            // Installed in this boot; still waiting for the reboot.
            shared.set(op::NEED_REBOOT, 1.0, &p.version, 0).await;
            *shared.marked_good.lock().expect("not poisoned") = blessed;
            return;
        }
        if p.slot != booted {
            match crate::lifecycle::mark_good(host) {
                Ok(BootOutcome::RolledBack { version, slot }) => {
                    tracing::error!(
                        version,
                        slot = slot.label(),
                        "the update did not boot; rolled back"
                    );
                    shared
                        .report(
                            http,
                            Event::new(
                                source::EVENT_UPDATE_COMPLETE,
                                source::RESULT_ERROR,
                                Some(source::ERROR_ROLLBACK),
                                None,
                            ),
                        )
                        .await;
                }
                Ok(other) => tracing::info!(?other, "boot settled"),
                Err(e) => {
                    tracing::error!(error = %crate::error_chain(&e), "cannot record the rollback")
                }
            }
            *shared.marked_good.lock().expect("not poisoned") = true;
            return;
        }
    } else if blessed {
        *shared.marked_good.lock().expect("not poisoned") = true;
        return;
    }
    // First boot of this slot: prove it healthy before blessing it.
    let conn = shared.conn.lock().expect("not poisoned").clone();
    match crate::health::gate(&shared.cfg.health, conn.as_ref()).await {
        Ok(()) => match crate::lifecycle::mark_good(host) {
            Ok(outcome) => {
                tracing::info!(?outcome, "booted slot is healthy and blessed");
                *shared.marked_good.lock().expect("not poisoned") = true;
                if let BootOutcome::Blessed { .. } = outcome {
                    let previous = state.pending.as_ref().map(|p| p.from_version.clone());
                    shared
                        .report(
                            http,
                            Event::new(
                                source::EVENT_UPDATE_COMPLETE,
                                source::RESULT_SUCCESS_REBOOT,
                                None,
                                previous,
                            ),
                        )
                        .await;
                }
            }
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "cannot bless the booted slot")
            }
        },
        Err(problems) => {
            // A freshly installed slot that fails its gate is rebooted (by keel-locksmith,
            // which still holds the reboot slot) so the boot loader uses up its tries
            // and falls back to the previous slot by itself.
            match state.pending.as_ref().filter(|p| p.slot == booted) {
                Some(p) => {
                    tracing::error!(
                        ?problems,
                        version = p.version,
                        "the booted update is not healthy; leaving it unblessed and asking for a reboot so the boot loader falls back once its tries are used"
                    );
                    shared.set(op::NEED_REBOOT, 0.0, &p.version, 0).await;
                }
                None => {
                    tracing::error!(
                        ?problems,
                        "the booted slot is not healthy; leaving it unblessed"
                    );
                    shared.set(op::ERROR, 0.0, "", 0).await;
                }
            }
            shared
                .report(
                    http,
                    Event::new(
                        source::EVENT_UPDATE_COMPLETE,
                        source::RESULT_ERROR,
                        Some(source::ERROR_GENERIC),
                        None,
                    ),
                )
                .await;
        }
    }
}

/// One update check and, if something new is offered, its install.
pub async fn check_and_install(shared: &Arc<Shared>, http: &reqwest::Client) {
    let host = &shared.cfg.host;
    let Some(src) = &shared.cfg.source else {
        tracing::info!("no update source configured");
        return;
    };
    let state = State::load(&host.state_dir).unwrap_or_default();
    let current = shared.status().operation;
    if state.paused || current == op::NEED_REBOOT {
        tracing::info!(paused = state.paused, current, "not checking");
        return;
    }
    shared.status.lock().expect("not poisoned").last_checked = unix_now();
    shared.set(op::CHECKING, 0.0, "", 0).await;
    let offer = match src.check(http, &shared.client(), unix_now()).await {
        Ok(Some(o)) => o,
        Ok(None) => {
            shared.set(op::IDLE, 0.0, "", 0).await;
            return;
        }
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "update check failed");
            shared.set(op::IDLE, 0.0, "", 0).await;
            return;
        }
    };
    if offer.version == crate::host_version(&host.root) || state.is_rolled_back(&offer.version) {
        shared.set(op::IDLE, 0.0, "", 0).await;
        return;
    }
    let size = offer.size.unwrap_or(0) as i64;
    shared.set(op::AVAILABLE, 0.0, &offer.version, size).await;
    shared
        .report(
            http,
            Event::new(
                source::EVENT_DOWNLOAD_STARTED,
                source::RESULT_SUCCESS,
                None,
                None,
            ),
        )
        .await;
    shared.set(op::DOWNLOADING, 0.0, &offer.version, size).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    let emitter = {
        let shared = shared.clone();
        let version = offer.version.clone();
        tokio::spawn(async move {
            let mut last = 0.0f64;
            while let Some((done, total)) = rx.recv().await {
                let p = done as f64 / total.max(1) as f64;
                if p - last >= 0.01 || done == total {
                    last = p;
                    shared.set(op::DOWNLOADING, p, &version, size).await;
                }
            }
        })
    };
    let progress: crate::install::ProgressFn = Arc::new(move |done, total| {
        let _ = tx.send((done, total));
    });
    let result = match Source::parse(&offer.payload_url, STALL_TIMEOUT) {
        Ok(payload) => crate::install::install(
            host,
            &payload,
            &InstallOptions {
                force: false,
                progress: Some(progress),
            },
        )
        .await
        .map_err(|e| crate::error_chain(&e)),
        Err(e) => Err(crate::error_chain(&e)),
    };
    let _ = emitter.await;
    match result {
        Ok(report) => {
            shared
                .report(
                    http,
                    Event::new(
                        source::EVENT_DOWNLOAD_FINISHED,
                        source::RESULT_SUCCESS,
                        None,
                        None,
                    ),
                )
                .await;
            shared.set(op::VERIFYING, 1.0, &report.version, size).await;
            shared.set(op::FINALIZING, 1.0, &report.version, size).await;
            shared
                .report(
                    http,
                    Event::new(
                        source::EVENT_UPDATE_COMPLETE,
                        source::RESULT_SUCCESS,
                        None,
                        None,
                    ),
                )
                .await;
            shared
                .set(op::NEED_REBOOT, 1.0, &report.version, size)
                .await;
        }
        Err(e) => {
            tracing::error!(error = %e, "install failed");
            shared.set(op::ERROR, 0.0, &offer.version, size).await;
            shared
                .report(
                    http,
                    Event::new(
                        source::EVENT_UPDATE_COMPLETE,
                        source::RESULT_ERROR,
                        Some(source::ERROR_GENERIC),
                        None,
                    ),
                )
                .await;
            shared.set(op::IDLE, 0.0, "", 0).await;
        }
    }
}

/// `keel-updater check`: one check and install, printing the resulting status.
pub async fn check_once(cfg: DaemonConfig) -> anyhow::Result<()> {
    let shared = Shared::new(cfg);
    let http = http_client()?;
    check_and_install(&shared, &http).await;
    let s = shared.status();
    println!("{} {}", s.operation, s.new_version);
    Ok(())
}
