//! The reboot group in an etcd v3 store (keel-store or any etcd), through `etcd-client`.
//!
//! Every change is one transaction that compares the semaphore key's `version` with the one
//! read (Flatcar's etcd-v3 locksmith does the same), so concurrent lockers — Keel daemons,
//! old locksmith, `etcdctl` users — never oversubscribe. A grant also compares the policy
//! key's version (a concurrent `pause` wins) and writes the holder record, the lease-bound
//! `alive` key and an audit entry in the same transaction. A lost compare is retried with
//! fresh values a bounded number of times.

use crate::keys::{GroupKeys, prefix_end};
use crate::records::{
    Event, EventKind, Failure, Holder, HolderState, Policy, Waiting, unix_nanos_now, unix_now,
};
use crate::semaphore::{Semaphore, SemaphoreError};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// Attempts of one operation when other writers keep changing the semaphore.
pub const CAS_ATTEMPTS: usize = 50;
/// Audit entries kept per group; older ones are trimmed after each release.
pub const AUDIT_KEEP: usize = 1000;
/// Per-request timeout towards the store.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures talking to the store or refusals by the semaphore.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to {endpoints}")]
    Connect {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("cannot read {what} {path}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid store options: {0}")]
    Options(String),
    #[error("store request {op} on {key} failed")]
    Etcd {
        op: &'static str,
        key: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("the value of {key} is not valid JSON for it")]
    BadValue {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{key}: {refusal}")]
    Semaphore {
        key: String,
        refusal: SemaphoreError,
    },
    #[error("reboot group {group} is paused: {reason} (resume it with `keel-locksmith resume`)")]
    Paused { group: String, reason: String },
    #[error("{key} kept changing under {attempts} attempts; giving up this round")]
    Contended { key: String, attempts: usize },
}

impl StoreError {
    /// The semaphore refused because it is full.
    pub fn is_full(&self) -> bool {
        matches!(
            self,
            StoreError::Semaphore {
                refusal: SemaphoreError::Full(_),
                ..
            }
        )
    }

    /// `unlock` of an id that holds nothing.
    pub fn is_not_holder(&self) -> bool {
        matches!(
            self,
            StoreError::Semaphore {
                refusal: SemaphoreError::NotHolder,
                ..
            }
        )
    }
}

/// How to reach the store (locksmith's flags).
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    pub endpoints: Vec<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

fn read(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::ReadFile {
        what,
        path: path.clone(),
        source,
    })
}

/// Connects to the store. A CA alone gives server-verified TLS (locksmith required a client
/// certificate whenever any TLS file was set, Flatcar #948); certificate and key go together.
pub async fn connect(opts: &StoreOptions) -> Result<Client, StoreError> {
    let mut connect = ConnectOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    let tls_wanted = opts.ca_file.is_some() || opts.cert_file.is_some() || opts.key_file.is_some();
    if tls_wanted {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &opts.ca_file {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read("CA file", ca)?));
        }
        match (&opts.cert_file, &opts.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(etcd_client::Identity::from_pem(
                    read("certificate file", cert)?,
                    read("key file", key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(StoreError::Options(
                    "--etcd-certfile and --etcd-keyfile must be given together".into(),
                ));
            }
        }
        connect = connect.with_tls(tls);
    }
    if let (Some(user), Some(password)) = (&opts.username, &opts.password) {
        connect = connect.with_user(user.clone(), password.clone());
    }
    let endpoints: Vec<String> = opts
        .endpoints
        .iter()
        .map(|e| {
            if e.contains("://") {
                e.clone()
            } else if tls_wanted {
                format!("https://{e}")
            } else {
                format!("http://{e}")
            }
        })
        .collect();
    if tls_wanted && endpoints.iter().any(|e| e.starts_with("http://")) {
        return Err(StoreError::Options(format!(
            "TLS files were given but an endpoint is plain http: {}",
            endpoints.join(",")
        )));
    }
    Client::connect(endpoints.clone(), Some(connect))
        .await
        .map_err(|source| StoreError::Connect {
            endpoints: endpoints.join(","),
            source,
        })
}

/// Who asks for a slot and why.
#[derive(Debug, Clone, Default)]
pub struct LockRequest {
    pub id: String,
    pub hostname: String,
    pub boot_id: String,
    pub from_version: String,
    pub target_version: String,
    pub reason: String,
    /// Back the slot with a lease of the group's TTL (daemons); operators' and FleetLock
    /// locks are held until released unless `fixed_ttl` is set.
    pub leased: bool,
    /// A lease that nobody renews: the slot is reclaimed after this many seconds.
    pub fixed_ttl: Option<i64>,
    pub state: Option<HolderState>,
}

/// A granted slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// `false` if the id already held a slot.
    pub new: bool,
    /// The lease behind the slot (0 = none).
    pub lease: i64,
    pub lease_ttl: i64,
}

/// A value read with its version and modification revision.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    pub version: i64,
    pub mod_revision: i64,
}

/// Everything about a group at one revision.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub revision: i64,
    pub semaphore: Option<Versioned<Semaphore>>,
    pub policy: Versioned<Policy>,
    pub holders: Vec<Versioned<Holder>>,
    /// Ids whose `alive` key exists (their lease has not expired).
    pub alive: BTreeSet<String>,
    pub waiting: Vec<Waiting>,
    pub failed: Vec<Failure>,
}

impl GroupView {
    pub fn holder(&self, id: &str) -> Option<&Versioned<Holder>> {
        self.holders.iter().find(|h| h.value.id == id)
    }

    /// Holders Keel granted with a lease that has expired.
    pub fn expired(&self) -> Vec<&Versioned<Holder>> {
        let Some(sem) = &self.semaphore else {
            return Vec::new();
        };
        self.holders
            .iter()
            .filter(|h| {
                h.value.lease != 0
                    && !self.alive.contains(&h.value.id)
                    && sem.value.holds(&h.value.id)
            })
            .collect()
    }
}

/// One reboot group in the store.
#[derive(Clone)]
pub struct Group {
    client: Client,
    pub keys: GroupKeys,
    /// Who acts (machine id or `operator@host`), written into audit entries.
    pub actor: String,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("keys", &self.keys)
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T, StoreError> {
    serde_json::from_slice(kv.value()).map_err(|source| StoreError::BadValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        source,
    })
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records always serialise")
}

fn get_prefix(prefix: String) -> TxnOp {
    TxnOp::get(prefix, Some(GetOptions::new().with_prefix()))
}

fn kvs(resp: &TxnOpResponse) -> &[KeyValue] {
    match resp {
        TxnOpResponse::Get(g) => g.kvs(),
        _ => &[],
    }
}

impl Group {
    pub fn new(client: Client, group: &str, actor: &str) -> Group {
        Group {
            client,
            keys: GroupKeys::new(group),
            actor: actor.to_string(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn etcd(&self, op: &'static str, key: String) -> impl FnOnce(etcd_client::Error) -> StoreError {
        move |source| StoreError::Etcd { op, key, source }
    }

    fn semaphore_error(&self, source: SemaphoreError) -> StoreError {
        StoreError::Semaphore {
            key: self.keys.semaphore(),
            refusal: source,
        }
    }

    async fn txn(
        &self,
        op: &'static str,
        txn: Txn,
    ) -> Result<etcd_client::TxnResponse, StoreError> {
        self.client
            .clone()
            .txn(txn)
            .await
            .map_err(self.etcd(op, self.keys.semaphore()))
    }

    /// Creates the semaphore with locksmith's initial value if it does not exist.
    pub async fn init(&self) -> Result<(), StoreError> {
        let key = self.keys.semaphore();
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, Semaphore::default().to_json(), None)]);
        self.txn("init", txn).await.map(|_| ())
    }

    /// Reads the whole group in one consistent transaction.
    pub async fn view(&self) -> Result<GroupView, StoreError> {
        let k = &self.keys;
        let txn = Txn::new().and_then([
            TxnOp::get(k.semaphore(), None),
            TxnOp::get(k.policy(), None),
            get_prefix(k.holders_prefix()),
            get_prefix(k.alive_prefix()),
            get_prefix(k.waiting_prefix()),
            get_prefix(k.failed_prefix()),
        ]);
        let resp = self.txn("read", txn).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let ops = resp.op_responses();
        let semaphore = match kvs(&ops[0]).first() {
            Some(kv) => Some(Versioned {
                value: Semaphore::parse(&self.keys.semaphore(), kv.value())?,
                version: kv.version(),
                mod_revision: kv.mod_revision(),
            }),
            None => None,
        };
        let policy = match kvs(&ops[1]).first() {
            Some(kv) => Versioned {
                value: decode(kv)?,
                version: kv.version(),
                mod_revision: kv.mod_revision(),
            },
            None => Versioned {
                value: Policy::default(),
                version: 0,
                mod_revision: 0,
            },
        };
        let holders = kvs(&ops[2])
            .iter()
            .map(|kv| {
                Ok(Versioned {
                    value: decode(kv)?,
                    version: kv.version(),
                    mod_revision: kv.mod_revision(),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let alive_prefix = self.keys.alive_prefix();
        let alive = kvs(&ops[3])
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                key.strip_prefix(&alive_prefix).map(str::to_string)
            })
            .collect();
        let waiting = kvs(&ops[4]).iter().map(decode).collect::<Result<_, _>>()?;
        let failed = kvs(&ops[5]).iter().map(decode).collect::<Result<_, _>>()?;
        Ok(GroupView {
            revision,
            semaphore,
            policy,
            holders,
            alive,
            waiting,
            failed,
        })
    }

    /// The view, creating the semaphore first if it is missing.
    async fn view_with_semaphore(&self) -> Result<(GroupView, Versioned<Semaphore>), StoreError> {
        for _ in 0..3 {
            let view = self.view().await?;
            if let Some(sem) = view.semaphore.clone() {
                return Ok((view, sem));
            }
            self.init().await?;
        }
        Err(StoreError::Contended {
            key: self.keys.semaphore(),
            attempts: 3,
        })
    }

    fn audit_op(&self, kind: EventKind, id: &str, detail: String) -> TxnOp {
        let event = Event {
            at: unix_now(),
            kind,
            id: id.to_string(),
            by: self.actor.clone(),
            detail,
        };
        TxnOp::put(self.keys.audit(unix_nanos_now(), id), json(&event), None)
    }

    async fn backoff(attempt: usize) {
        let ms = 2 + fastrand::u64(0..(5 * (attempt as u64 + 1)).min(100));
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    fn contended(&self) -> StoreError {
        StoreError::Contended {
            key: self.keys.semaphore(),
            attempts: CAS_ATTEMPTS,
        }
    }

    /// Takes a slot for `req.id` (recursive: a holder gets its slot again). Expired leased
    /// holders are reclaimed first when the semaphore is full.
    pub async fn lock(&self, req: &LockRequest) -> Result<Grant, StoreError> {
        for attempt in 0..CAS_ATTEMPTS {
            let (view, sem) = self.view_with_semaphore().await?;
            let mut next = sem.value.clone();
            if next.holds(&req.id) {
                let (lease, lease_ttl) = view
                    .holder(&req.id)
                    .map(|h| (h.value.lease, h.value.lease_ttl))
                    .unwrap_or((0, 0));
                return Ok(Grant {
                    new: false,
                    lease,
                    lease_ttl,
                });
            }
            if view.policy.value.paused {
                return Err(StoreError::Paused {
                    group: self.keys.display_name().to_string(),
                    reason: view.policy.value.paused_reason.clone(),
                });
            }
            if let Err(e) = next.lock(&req.id) {
                if self.reclaim_in(&view).await? > 0 {
                    continue;
                }
                return Err(self.semaphore_error(e));
            }
            let ttl = match (req.fixed_ttl, req.leased) {
                (Some(ttl), _) if ttl > 0 => ttl,
                (_, true) => view.policy.value.lease_ttl.max(0),
                _ => 0,
            };
            let lease = if ttl > 0 {
                self.client
                    .clone()
                    .lease_grant(ttl, None)
                    .await
                    .map_err(self.etcd("lease grant", self.keys.alive(&req.id)))?
                    .id()
            } else {
                0
            };
            let holder = Holder {
                id: req.id.clone(),
                hostname: req.hostname.clone(),
                boot_id: req.boot_id.clone(),
                from_version: req.from_version.clone(),
                target_version: req.target_version.clone(),
                reason: req.reason.clone(),
                acquired_at: unix_now(),
                state: req.state.unwrap_or(HolderState::Granted),
                lease,
                lease_ttl: ttl,
            };
            let mut ops = vec![
                TxnOp::put(self.keys.semaphore(), next.to_json(), None),
                TxnOp::put(self.keys.holder(&req.id), json(&holder), None),
                TxnOp::delete(self.keys.waiting(&req.id), None),
                self.audit_op(
                    EventKind::Granted,
                    &req.id,
                    format!(
                        "{} slot {}/{}{}",
                        req.hostname,
                        next.holders().len(),
                        next.max,
                        if ttl > 0 {
                            format!(", lease ttl {ttl}s")
                        } else {
                            String::new()
                        }
                    ),
                ),
            ];
            if lease != 0 {
                ops.push(TxnOp::put(
                    self.keys.alive(&req.id),
                    lease.to_string(),
                    Some(PutOptions::new().with_lease(lease)),
                ));
            }
            let txn = Txn::new()
                .when([
                    Compare::version(self.keys.semaphore(), CompareOp::Equal, sem.version),
                    Compare::version(self.keys.policy(), CompareOp::Equal, view.policy.version),
                ])
                .and_then(ops);
            let done = self.txn("lock", txn).await;
            match done {
                Ok(resp) if resp.succeeded() => {
                    return Ok(Grant {
                        new: true,
                        lease,
                        lease_ttl: ttl,
                    });
                }
                other => {
                    if lease != 0 {
                        let _ = self.client.clone().lease_revoke(lease).await;
                    }
                    other?;
                    Self::backoff(attempt).await;
                }
            }
        }
        Err(self.contended())
    }

    /// Gives back `id`'s slot, removing its records; `kind` and `detail` go to the audit
    /// trail (`Released` by the holder itself, `Unlocked` when forced by someone else).
    pub async fn unlock(&self, id: &str, kind: EventKind, detail: &str) -> Result<(), StoreError> {
        for attempt in 0..CAS_ATTEMPTS {
            let (view, sem) = self.view_with_semaphore().await?;
            let mut next = sem.value.clone();
            next.unlock(id).map_err(|e| self.semaphore_error(e))?;
            let lease = view.holder(id).map(|h| h.value.lease).unwrap_or(0);
            let txn = Txn::new()
                .when([Compare::version(
                    self.keys.semaphore(),
                    CompareOp::Equal,
                    sem.version,
                )])
                .and_then([
                    TxnOp::put(self.keys.semaphore(), next.to_json(), None),
                    TxnOp::delete(self.keys.holder(id), None),
                    TxnOp::delete(self.keys.alive(id), None),
                    self.audit_op(kind, id, detail.to_string()),
                ]);
            if self.txn("unlock", txn).await?.succeeded() {
                if lease != 0 {
                    let _ = self.client.clone().lease_revoke(lease).await;
                }
                let _ = self.trim_audit(AUDIT_KEEP).await;
                return Ok(());
            }
            Self::backoff(attempt).await;
        }
        Err(self.contended())
    }

    /// Takes back the slots of holders whose lease expired. Returns how many.
    pub async fn reclaim_expired(&self) -> Result<usize, StoreError> {
        let view = self.view().await?;
        self.reclaim_in(&view).await
    }

    async fn reclaim_in(&self, view: &GroupView) -> Result<usize, StoreError> {
        let Some(sem) = &view.semaphore else {
            return Ok(0);
        };
        let expired = view.expired();
        if expired.is_empty() {
            return Ok(0);
        }
        let mut next = sem.value.clone();
        let mut ops = Vec::new();
        let mut compares = vec![Compare::version(
            self.keys.semaphore(),
            CompareOp::Equal,
            sem.version,
        )];
        for h in &expired {
            let id = &h.value.id;
            next.unlock(id).map_err(|e| self.semaphore_error(e))?;
            compares.push(Compare::version(self.keys.alive(id), CompareOp::Equal, 0));
            compares.push(Compare::mod_revision(
                self.keys.holder(id),
                CompareOp::Equal,
                h.mod_revision,
            ));
            ops.push(TxnOp::delete(self.keys.holder(id), None));
            ops.push(self.audit_op(
                EventKind::Reclaimed,
                id,
                format!(
                    "{} held the slot since {} ({}); its {}s lease expired",
                    h.value.hostname,
                    h.value.acquired_at,
                    h.value.state.as_str(),
                    h.value.lease_ttl
                ),
            ));
        }
        ops.insert(0, TxnOp::put(self.keys.semaphore(), next.to_json(), None));
        let txn = Txn::new().when(compares).and_then(ops);
        let resp = self.txn("reclaim", txn).await?;
        if resp.succeeded() {
            for h in &expired {
                tracing::warn!(id = %h.value.id, hostname = %h.value.hostname, "reclaimed the slot of a holder whose lease expired");
            }
            Ok(expired.len())
        } else {
            // Someone else changed the semaphore meanwhile: report progress so the caller
            // reads again.
            Ok(1)
        }
    }

    /// Sets the number of slots. Returns the old max.
    pub async fn set_max(&self, max: i64, force: bool) -> Result<i64, StoreError> {
        for attempt in 0..CAS_ATTEMPTS {
            let (_, sem) = self.view_with_semaphore().await?;
            let mut next = sem.value.clone();
            let old = next
                .set_max(max, force)
                .map_err(|e| self.semaphore_error(e))?;
            let txn = Txn::new()
                .when([Compare::version(
                    self.keys.semaphore(),
                    CompareOp::Equal,
                    sem.version,
                )])
                .and_then([
                    TxnOp::put(self.keys.semaphore(), next.to_json(), None),
                    self.audit_op(EventKind::SetMax, "", format!("max {old} -> {max}")),
                ]);
            if self.txn("set-max", txn).await?.succeeded() {
                return Ok(old);
            }
            Self::backoff(attempt).await;
        }
        Err(self.contended())
    }

    /// Changes the policy with `f` (compare-and-swap on the policy key).
    pub async fn update_policy(
        &self,
        event: Option<(EventKind, String)>,
        clear_failed: bool,
        f: impl Fn(&mut Policy),
    ) -> Result<Policy, StoreError> {
        for attempt in 0..CAS_ATTEMPTS {
            let view = self.view().await?;
            let mut policy = view.policy.value.clone();
            f(&mut policy);
            let mut ops = vec![TxnOp::put(self.keys.policy(), json(&policy), None)];
            if let Some((kind, detail)) = &event {
                ops.push(self.audit_op(*kind, "", detail.clone()));
            }
            if clear_failed {
                ops.push(TxnOp::delete(
                    self.keys.failed_prefix(),
                    Some(DeleteOptions::new().with_prefix()),
                ));
            }
            let txn = Txn::new()
                .when([Compare::version(
                    self.keys.policy(),
                    CompareOp::Equal,
                    view.policy.version,
                )])
                .and_then(ops);
            if self.txn("policy", txn).await?.succeeded() {
                return Ok(policy);
            }
            Self::backoff(attempt).await;
        }
        Err(self.contended())
    }

    /// Stops granting slots.
    pub async fn pause(&self, reason: &str) -> Result<Policy, StoreError> {
        let reason = reason.to_string();
        self.update_policy(Some((EventKind::Paused, reason.clone())), false, |p| {
            if !p.paused {
                p.paused = true;
                p.paused_reason = reason.clone();
                p.paused_at = unix_now();
            }
        })
        .await
    }

    /// Grants again and forgets the failed hosts.
    pub async fn resume(&self) -> Result<Policy, StoreError> {
        self.update_policy(Some((EventKind::Resumed, String::new())), true, |p| {
            p.paused = false;
            p.paused_reason.clear();
            p.paused_at = 0;
        })
        .await
    }

    /// Records that `failure.id` came back unhealthy; pauses the group when the failures
    /// reach the policy's limit. Returns whether the group is now paused.
    pub async fn record_failure(&self, failure: &Failure) -> Result<bool, StoreError> {
        let txn = Txn::new().and_then([
            TxnOp::put(self.keys.failed(&failure.id), json(failure), None),
            self.audit_op(EventKind::Failed, &failure.id, failure.reason.clone()),
        ]);
        self.txn("record failure", txn).await?;
        let view = self.view().await?;
        let limit = view.policy.value.max_failures;
        if limit > 0 && view.failed.len() >= limit as usize {
            let reason = format!(
                "{} failed host(s) reached the limit of {limit}: {}",
                view.failed.len(),
                view.failed
                    .iter()
                    .map(|f| format!("{} ({})", f.id, f.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            self.pause(&reason).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Changes the state in `id`'s holder record (if Keel holds it).
    pub async fn set_holder_state(&self, id: &str, state: HolderState) -> Result<(), StoreError> {
        for attempt in 0..CAS_ATTEMPTS {
            let view = self.view().await?;
            let Some(h) = view.holder(id) else {
                return Ok(());
            };
            let mut next = h.value.clone();
            next.state = state;
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    self.keys.holder(id),
                    CompareOp::Equal,
                    h.mod_revision,
                )])
                .and_then([TxnOp::put(self.keys.holder(id), json(&next), None)]);
            if self.txn("holder state", txn).await?.succeeded() {
                return Ok(());
            }
            Self::backoff(attempt).await;
        }
        Err(self.contended())
    }

    /// Publishes that a host waits, bound to `lease` so it vanishes with the daemon.
    pub async fn set_waiting(&self, waiting: &Waiting, lease: i64) -> Result<(), StoreError> {
        let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        self.client
            .clone()
            .put(self.keys.waiting(&waiting.id), json(waiting), opts)
            .await
            .map_err(self.etcd("put", self.keys.waiting(&waiting.id)))
            .map(|_| ())
    }

    pub async fn clear_waiting(&self, id: &str) -> Result<(), StoreError> {
        self.client
            .clone()
            .delete(self.keys.waiting(id), None)
            .await
            .map_err(self.etcd("delete", self.keys.waiting(id)))
            .map(|_| ())
    }

    /// The newest `limit` audit entries, oldest first.
    pub async fn history(&self, limit: i64) -> Result<Vec<Event>, StoreError> {
        let prefix = self.keys.audit_prefix();
        let resp = self
            .client
            .clone()
            .get(
                prefix.clone(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(limit),
                ),
            )
            .await
            .map_err(self.etcd("get", prefix))?;
        let mut events = resp
            .kvs()
            .iter()
            .map(decode)
            .collect::<Result<Vec<Event>, _>>()?;
        events.reverse();
        Ok(events)
    }

    /// Deletes all but the newest `keep` audit entries.
    pub async fn trim_audit(&self, keep: usize) -> Result<(), StoreError> {
        let prefix = self.keys.audit_prefix();
        let resp = self
            .client
            .clone()
            .get(
                prefix.clone(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(keep as i64 + 1),
                ),
            )
            .await
            .map_err(self.etcd("get", prefix.clone()))?;
        if let Some(oldest_kept) = resp.kvs().get(keep) {
            // Delete [prefix, key-after-oldest-dropped): everything up to and including it.
            let mut end = oldest_kept.key().to_vec();
            end.push(0);
            self.client
                .clone()
                .delete(prefix.clone(), Some(DeleteOptions::new().with_range(end)))
                .await
                .map_err(self.etcd("delete", prefix))?;
        }
        Ok(())
    }

    /// Keeps `lease` alive until the returned task is aborted; logs when the store says the
    /// lease is gone.
    pub fn keep_alive(&self, lease: i64, ttl: i64) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let period =
            Duration::from_millis((ttl.max(1) as u64 * 1000) / 3).max(Duration::from_millis(200));
        tokio::spawn(async move {
            loop {
                match client.clone().lease_keep_alive(lease).await {
                    Ok((mut keeper, mut stream)) => loop {
                        if keeper.keep_alive().await.is_err() {
                            break;
                        }
                        match stream.message().await {
                            Ok(Some(resp)) if resp.ttl() <= 0 => {
                                tracing::error!(lease, "the store says the lease expired");
                                return;
                            }
                            Ok(Some(_)) => {}
                            _ => break,
                        }
                        tokio::time::sleep(period).await;
                    },
                    Err(e) => tracing::warn!(lease, error = %e, "cannot renew lease; retrying"),
                }
                tokio::time::sleep(period.min(Duration::from_secs(1))).await;
            }
        })
    }

    /// Grants a lease of `ttl` seconds.
    pub async fn grant_lease(&self, ttl: i64) -> Result<i64, StoreError> {
        Ok(self
            .client
            .clone()
            .lease_grant(ttl, None)
            .await
            .map_err(self.etcd("lease grant", self.keys.waiting_prefix()))?
            .id())
    }
}

/// The range end for a prefix, as bytes (re-exported for callers that watch a group).
pub fn range_end(prefix: &str) -> Vec<u8> {
    prefix_end(prefix)
}
