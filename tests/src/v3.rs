//! etcd v3 (gRPC) helpers: connect the `etcd-client` crate to a [`Server`],
//! render its responses as JSON with revisions relative to a base revision
//! (cluster/member ids and raft terms dropped, lease ids named), run the same
//! request sequence against etcd and keel-store ([`V3Pair`]), and run
//! `etcdctl` in v3 mode.
//!
//! `KEEL_V3_TRACE=1` prints every compared step (both normalised answers).

use std::future::Future;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{
    AlarmResponse, Client, CompactionResponse, ConnectOptions, DeleteResponse, Error, Event,
    EventType, GetResponse, KeyValue, LeaseGrantResponse, LeaseKeepAliveResponse,
    LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse, MemberListResponse,
    PutResponse, ResponseHeader, StatusResponse, TxnOpResponse, TxnResponse, WatchResponse,
    WatchStream,
};
use serde_json::{Value, json};

use crate::ctl::{self, CtlOut};
use crate::norm;
use crate::server::{Flavor, Server, etcdctl_bin, keel_side_flavor};

/// Upper bound for one RPC (or one comparison step).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Await `f`, panicking (naming `what`) if it takes longer than `limit`.
pub async fn within_for<T>(what: &str, limit: Duration, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {limit:?}"),
    }
}

/// Await `f`, panicking after [`RPC_TIMEOUT`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    within_for(what, RPC_TIMEOUT, f).await
}

/// Run an async test body on a fresh multi-threaded runtime, on a thread with
/// a large stack (the scenarios' futures are big in debug builds).
pub fn run<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let t = std::thread::Builder::new()
        .name("v3-test".into())
        .stack_size(64 * 1024 * 1024)
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .thread_stack_size(16 * 1024 * 1024)
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(Box::pin(body()));
        })
        .expect("spawn test thread");
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

/// Connect an etcd-client to `server`'s client URL.
pub async fn connect(server: &Server) -> Client {
    connect_url(&server.client_url()).await
}

/// Connect an etcd-client to `url` (`http://host:port`).
pub async fn connect_url(url: &str) -> Client {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
    within(
        &format!("connect to {url}"),
        Client::connect([url.to_string()], Some(opts)),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// The store's current revision (header of a one-key Range).
pub async fn current_revision(client: &mut Client) -> i64 {
    let r = within(
        "range for the current revision",
        client.get("keel-tests/rev-probe", None),
    )
    .await
    .unwrap_or_else(|e| panic!("range for the current revision: {e}"));
    r.header().map(|h| h.revision()).unwrap_or(0)
}

/// Bytes as text (lossy UTF-8).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A gRPC error as `{"error":{"code","message"}}`; other client errors as
/// `{"client_error": text}`.
pub fn err(e: &Error) -> Value {
    match e {
        Error::GRpcStatus(st) => {
            json!({"error": {"code": format!("{:?}", st.code()), "message": st.message()}})
        }
        other => json!({"client_error": other.to_string()}),
    }
}

/// Per-server normalisation context.
#[derive(Debug, Clone, Default)]
pub struct Norm {
    /// Revisions are rendered relative to this one (`"R+3"` = base + 3).
    pub base: i64,
    /// Lease ids handed out by the server, with the names they render as.
    pub leases: Vec<(i64, String)>,
    pub client_url: String,
    pub peer_url: String,
    /// Revisions this server used that the other one did not: revisions
    /// `>= from` render `shift` lower (see [`V3Pair`]'s realignment).
    pub gaps: Vec<(i64, i64)>,
}

impl Norm {
    /// A revision: 0 stays 0, others become `"R+n"` relative to `base`.
    pub fn rev(&self, r: i64) -> Value {
        if r == 0 {
            json!(0)
        } else {
            json!(format!("R{:+}", self.rel_of(r)))
        }
    }

    /// `r` relative to the base, minus the gaps below it.
    pub fn rel_of(&self, r: i64) -> i64 {
        let shift: i64 = self
            .gaps
            .iter()
            .filter(|(from, _)| r >= *from)
            .map(|(_, s)| s)
            .sum();
        r - self.base - shift
    }

    /// Give a server-chosen lease id a stable name.
    pub fn name_lease(&mut self, id: i64, name: &str) {
        self.leases.retain(|(i, _)| *i != id);
        self.leases.push((id, name.to_string()));
    }

    /// The id registered under `name`.
    pub fn lease_id(&self, name: &str) -> i64 {
        self.leases
            .iter()
            .find(|(_, n)| n == name)
            .map(|(i, _)| *i)
            .unwrap_or_else(|| panic!("no lease named {name:?}"))
    }

    /// A lease id: 0 stays 0, named ids become their name, others stay numbers.
    pub fn lease(&self, id: i64) -> Value {
        if id == 0 {
            return json!(0);
        }
        match self.leases.iter().find(|(i, _)| *i == id) {
            Some((_, n)) => json!(n),
            None => json!(id),
        }
    }

    pub fn header(&self, h: Option<&ResponseHeader>) -> Value {
        match h {
            None => Value::Null,
            Some(h) => json!({"revision": self.rev(h.revision())}),
        }
    }

    pub fn kv(&self, kv: &KeyValue) -> Value {
        json!({
            "key": text(kv.key()),
            "value": text(kv.value()),
            "create_revision": self.rev(kv.create_revision()),
            "mod_revision": self.rev(kv.mod_revision()),
            "version": kv.version(),
            "lease": self.lease(kv.lease()),
        })
    }

    fn opt_kv(&self, kv: Option<&KeyValue>) -> Value {
        kv.map(|k| self.kv(k)).unwrap_or(Value::Null)
    }

    pub fn get(&self, r: &GetResponse) -> Value {
        json!({
            "header": self.header(r.header()),
            "kvs": r.kvs().iter().map(|k| self.kv(k)).collect::<Vec<_>>(),
            "more": r.more(),
            "count": r.count(),
        })
    }

    pub fn put(&self, r: &PutResponse) -> Value {
        json!({"header": self.header(r.header()), "prev_kv": self.opt_kv(r.prev_key())})
    }

    pub fn delete(&self, r: &DeleteResponse) -> Value {
        json!({
            "header": self.header(r.header()),
            "deleted": r.deleted(),
            "prev_kvs": r.prev_kvs().iter().map(|k| self.kv(k)).collect::<Vec<_>>(),
        })
    }

    pub fn txn(&self, r: &TxnResponse) -> Value {
        let responses: Vec<Value> = r
            .op_responses()
            .iter()
            .map(|op| match op {
                TxnOpResponse::Put(p) => json!({"put": self.put(p)}),
                TxnOpResponse::Get(g) => json!({"range": self.get(g)}),
                TxnOpResponse::Delete(d) => json!({"delete_range": self.delete(d)}),
                TxnOpResponse::Txn(t) => json!({"txn": self.txn(t)}),
            })
            .collect();
        json!({"header": self.header(r.header()), "succeeded": r.succeeded(), "responses": responses})
    }

    pub fn compact(&self, r: &CompactionResponse) -> Value {
        json!({"header": self.header(r.header())})
    }

    pub fn grant(&self, r: &LeaseGrantResponse) -> Value {
        json!({
            "header": self.header(r.header()),
            "ID": self.lease(r.id()),
            "TTL": r.ttl(),
            "error": r.error(),
        })
    }

    pub fn revoke(&self, r: &LeaseRevokeResponse) -> Value {
        json!({"header": self.header(r.header())})
    }

    pub fn keep_alive(&self, r: &LeaseKeepAliveResponse) -> Value {
        json!({"header": self.header(r.header()), "ID": self.lease(r.id()), "TTL": r.ttl()})
    }

    /// Remaining TTLs depend on timing: one within 3 s below the granted TTL
    /// renders as `"granted-ish"`.
    pub fn time_to_live(&self, r: &LeaseTimeToLiveResponse) -> Value {
        let (ttl, granted) = (r.ttl(), r.granted_ttl());
        let ttl_v = if granted > 0 && ttl > 0 && ttl <= granted && ttl >= granted - 3 {
            json!("granted-ish")
        } else {
            json!(ttl)
        };
        let mut keys: Vec<String> = r.keys().iter().map(|k| text(k)).collect();
        keys.sort();
        json!({
            "header": self.header(r.header()),
            "ID": self.lease(r.id()),
            "TTL": ttl_v,
            "grantedTTL": granted,
            "keys": keys,
        })
    }

    pub fn leases(&self, r: &LeaseLeasesResponse) -> Value {
        let mut ids: Vec<String> = r
            .leases()
            .iter()
            .map(|l| match self.lease(l.id()) {
                Value::String(s) => s,
                v => v.to_string(),
            })
            .collect();
        ids.sort();
        json!({"header": self.header(r.header()), "leases": ids})
    }

    pub fn event(&self, e: &Event) -> Value {
        json!({
            "type": match e.event_type() { EventType::Put => "PUT", EventType::Delete => "DELETE" },
            "kv": self.opt_kv(e.kv()),
            "prev_kv": self.opt_kv(e.prev_kv()),
        })
    }

    /// A watch response without events (created / canceled / progress).
    /// Event-carrying responses are flattened by [`collect_watch`].
    pub fn watch_msg(&self, r: &WatchResponse) -> Value {
        json!({
            "header": self.header(r.header()),
            "watch_id": r.watch_id(),
            "created": r.created(),
            "canceled": r.canceled(),
            "compact_revision": self.rev(r.compact_revision()),
            "cancel_reason": r.cancel_reason(),
            "events": r.events().len(),
        })
    }

    fn url(&self, u: &str) -> String {
        if u == self.client_url {
            "<client-url>".into()
        } else if u == self.peer_url {
            "<peer-url>".into()
        } else {
            u.to_string()
        }
    }

    pub fn member_list(&self, r: &MemberListResponse) -> Value {
        let self_id = r.header().map(|h| h.member_id()).unwrap_or(0);
        let members: Vec<Value> = r
            .members()
            .iter()
            .map(|m| {
                json!({
                    "id_is_responder": m.id() == self_id,
                    "id_nonzero": m.id() != 0,
                    "name": m.name(),
                    "peerURLs": m.peer_urls().iter().map(|u| self.url(u)).collect::<Vec<_>>(),
                    "clientURLs": m.client_urls().iter().map(|u| self.url(u)).collect::<Vec<_>>(),
                    "isLearner": m.is_learner(),
                })
            })
            .collect();
        json!({"header": self.header(r.header()), "members": members})
    }

    pub fn status(&self, r: &StatusResponse) -> Value {
        let member = r.header().map(|h| h.member_id()).unwrap_or(0);
        json!({
            "header": self.header(r.header()),
            "version": r.version(),
            "dbSize>0": r.db_size() > 0,
            "leader_is_responder": r.leader() == member && member != 0,
            "raftIndex>0": r.raft_index() > 0,
            "raftTerm>0": r.raft_term() > 0,
            "raftAppliedIndex>0": r.raft_applied_index() > 0,
            "errors": r.errors(),
            "isLearner": r.is_learner(),
        })
    }

    pub fn alarm(&self, r: &AlarmResponse) -> Value {
        let alarms: Vec<Value> = r
            .alarms()
            .iter()
            .map(|a| json!({"alarm": format!("{:?}", a.alarm())}))
            .collect();
        json!({"header": self.header(r.header()), "alarms": alarms})
    }
}

/// Render a result with `f`, or the error.
pub fn res<T>(r: &Result<T, Error>, f: impl FnOnce(&T) -> Value) -> Value {
    match r {
        Ok(v) => f(v),
        Err(e) => err(e),
    }
}

/// Read watch responses until `want_events` events arrived, a message
/// matching `until` arrived, or `timeout` passed. Event-carrying responses
/// are flattened into one entry per event (`{"watch_id", "event"}`) because
/// servers may batch events differently; other responses are rendered with
/// [`Norm::watch_msg`]. A stream error or end is recorded as the last entry.
pub async fn collect_watch(
    norm: &Norm,
    stream: &mut WatchStream,
    want_events: usize,
    timeout: Duration,
    until: impl Fn(&WatchResponse) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    let mut events = 0;
    while events < want_events || want_events == 0 {
        let msg = match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => break,
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => {
                out.push(json!("<stream ended>"));
                break;
            }
            Ok(Err(e)) => {
                out.push(err(&e));
                break;
            }
        };
        if msg.events().is_empty() {
            out.push(norm.watch_msg(&msg));
        } else {
            if msg.canceled() || msg.created() || msg.compact_revision() != 0 {
                out.push(norm.watch_msg(&msg));
            }
            for e in msg.events() {
                out.push(json!({"watch_id": msg.watch_id(), "event": norm.event(e)}));
                events += 1;
            }
        }
        if until(&msg) {
            break;
        }
    }
    out
}

/// Wait (up to `timeout`) for one watch response; `None` on timeout.
pub async fn next_watch_msg(
    stream: &mut WatchStream,
    timeout: Duration,
) -> Option<Result<Option<WatchResponse>, Error>> {
    tokio::time::timeout(timeout, stream.message()).await.ok()
}

/// One server of a [`V3Pair`] with its client and normalisation context.
pub struct V3Side {
    pub server: Server,
    pub client: Client,
    pub norm: Norm,
}

impl std::fmt::Debug for V3Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V3Side")
            .field("server", &self.server)
            .field("norm", &self.norm)
            .finish_non_exhaustive()
    }
}

impl V3Side {
    /// Start a fresh server of `flavor` and connect to it.
    pub async fn start(flavor: Flavor) -> V3Side {
        let server = tokio::task::spawn_blocking(move || Server::start(flavor))
            .await
            .expect("server start thread");
        V3Side::attach(server).await
    }

    /// Connect to an already running server; the base is its current revision.
    pub async fn attach(server: Server) -> V3Side {
        let mut client = connect(&server).await;
        let base = current_revision(&mut client).await;
        let norm = Norm {
            base,
            leases: Vec::new(),
            client_url: server.client_url(),
            peer_url: server.peer_url(),
            gaps: Vec::new(),
        };
        V3Side {
            server,
            client,
            norm,
        }
    }

    pub fn name(&self) -> &'static str {
        self.server.flavor.name()
    }

    /// `base + n`.
    pub fn rel(&self, n: i64) -> i64 {
        self.norm.base + n
    }

    /// Make the current revision the new base.
    pub async fn rebase(&mut self) {
        self.norm.base = current_revision(&mut self.client).await;
        self.norm.gaps.clear();
    }

    /// The lease id registered under `name`.
    pub fn lease(&self, name: &str) -> i64 {
        self.norm.lease_id(name)
    }
}

/// etcd and keel-store (or etcd twice with `KEEL_CONFORMANCE_PEER=etcd`)
/// driven with the same sequence of steps; differences are collected and
/// reported together by [`V3Pair::finish`].
#[derive(Debug)]
pub struct V3Pair {
    pub name: String,
    pub etcd: V3Side,
    pub keel: V3Side,
    failures: Vec<String>,
    notes: Vec<String>,
    finished: bool,
}

impl V3Pair {
    pub async fn start(name: &str) -> V3Pair {
        let (etcd, keel) = tokio::join!(
            V3Side::start(Flavor::Etcd),
            V3Side::start(keel_side_flavor())
        );
        V3Pair {
            name: name.to_string(),
            etcd,
            keel,
            failures: Vec::new(),
            notes: Vec::new(),
            finished: false,
        }
    }

    /// Run `f` on etcd, then on keel (each bounded by `limit`), and compare
    /// the JSON values it returns.
    pub async fn step_for<F>(&mut self, label: &str, limit: Duration, mut f: F) -> (Value, Value)
    where
        F: AsyncFnMut(&mut V3Side) -> Value,
    {
        // Boxed: keeps the scenario's own future (and the stack) small.
        let e = within_for(
            &format!("[{}] etcd: {label}", self.name),
            limit,
            Box::pin(f(&mut self.etcd)),
        )
        .await;
        let k = within_for(
            &format!("[{}] keel: {label}", self.name),
            limit,
            Box::pin(f(&mut self.keel)),
        )
        .await;
        self.compare(label, &e, &k);
        self.realign(label).await;
        (e, k)
    }

    /// If the two stores' revisions drifted apart during `label` (one
    /// applied a write the other refused), record it and shift the side
    /// that is ahead so that later steps compare again.
    pub async fn realign(&mut self, label: &str) {
        let ce = current_revision(&mut self.etcd.client).await;
        let ck = current_revision(&mut self.keel.client).await;
        let (de, dk) = (self.etcd.norm.rel_of(ce), self.keel.norm.rel_of(ck));
        if de == dk {
            return;
        }
        self.failures.push(format!(
            "after step `{label}` the revisions drifted apart: etcd at R{de:+}, {} at R{dk:+} \
             (later steps are compared with the extra revision(s) skipped)",
            self.keel.name()
        ));
        let (side, cur, diff) = if dk > de {
            (&mut self.keel, ck, dk - de)
        } else {
            (&mut self.etcd, ce, de - dk)
        };
        side.norm.gaps.push((cur - diff + 1, diff));
    }

    /// [`V3Pair::step_for`] with a 20 s bound.
    pub async fn step<F>(&mut self, label: &str, f: F) -> (Value, Value)
    where
        F: AsyncFnMut(&mut V3Side) -> Value,
    {
        self.step_for(label, Duration::from_secs(20), f).await
    }

    /// Run `f` on both sides without comparing (setup).
    pub async fn both<F>(&mut self, label: &str, mut f: F)
    where
        F: AsyncFnMut(&mut V3Side),
    {
        within_for(
            &format!("[{}] etcd: {label}", self.name),
            Duration::from_secs(20),
            Box::pin(f(&mut self.etcd)),
        )
        .await;
        within_for(
            &format!("[{}] keel: {label}", self.name),
            Duration::from_secs(20),
            Box::pin(f(&mut self.keel)),
        )
        .await;
        self.realign(label).await;
    }

    /// Compare two normalised values; record a failure if they differ.
    pub fn compare(&mut self, label: &str, e: &Value, k: &Value) -> bool {
        if std::env::var_os("KEEL_V3_TRACE").is_some() {
            eprintln!("[{}] {label}\n  etcd: {e}\n  keel: {k}", self.name);
        }
        let mut diffs = Vec::new();
        norm::diff_json("", e, k, &mut diffs);
        if diffs.is_empty() {
            return true;
        }
        let mut s = format!("step `{label}`\n  differences:\n");
        for d in &diffs {
            s.push_str(&format!("    - {d}\n"));
        }
        s.push_str(&format!(
            "  ── etcd: {}\n  ── {}: {}",
            e,
            self.keel.name(),
            k
        ));
        self.failures.push(s);
        false
    }

    /// Record a failure.
    pub fn fail(&mut self, msg: impl Into<String>) {
        self.failures.push(msg.into());
    }

    /// Record an informational note (printed, not a failure).
    pub fn note(&mut self, msg: impl Into<String>) {
        self.notes.push(msg.into());
    }

    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// Panic with every recorded difference (if any).
    pub fn finish(mut self) {
        self.finished = true;
        self.report();
    }

    fn report(&mut self) {
        for n in std::mem::take(&mut self.notes) {
            eprintln!("NOTE [{}] {n}\n", self.name);
        }
        crate::pair::fail_with_differences(&self.name, &self.keel.server, &mut self.failures);
    }
}

impl Drop for V3Pair {
    fn drop(&mut self) {
        if !self.finished && !std::thread::panicking() {
            self.finished = true;
            self.report();
        }
    }
}

// ---------------------------------------------------------------------------
// etcdctl in v3 mode

/// `etcdctl` with `ETCDCTL_API=3`, `--endpoints=<endpoint>` and `args`.
pub fn ctl_command(endpoint: &str, args: &[String]) -> Command {
    let mut c = Command::new(etcdctl_bin());
    c.env("ETCDCTL_API", "3")
        .env_remove("ETCDCTL_ENDPOINTS")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Run etcdctl (v3) to completion, killed after `timeout`; `stdin` is fed
/// to it when given.
pub fn ctl_run(endpoint: &str, args: &[String], stdin: Option<&str>, timeout: Duration) -> CtlOut {
    let mut cmd = ctl_command(endpoint, args);
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("spawn etcdctl");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut w = child.stdin.take().expect("stdin");
        let input = input.to_string();
        // A writer thread: etcdctl may not read all input before exiting.
        std::thread::spawn(move || {
            let _ = w.write_all(input.as_bytes());
        });
    }
    ctl::collect(&mut child, Instant::now() + timeout)
}

/// A background etcdctl (v3) whose stdout lines arrive on a channel.
pub type CtlLines = crate::ctl::LineProc;

/// Start `etcdctl ARGS` (v3) in the background.
pub fn ctl_lines(endpoint: &str, args: &[String]) -> CtlLines {
    crate::ctl::LineProc::from_command(ctl_command(endpoint, args))
}

/// Check the integrity trailer of an etcd snapshot: the last 32 bytes are
/// the sha256 of everything before them.
pub fn snapshot_hash_ok(bytes: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    if bytes.len() < 32 {
        return false;
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    Sha256::digest(body).as_slice() == sum
}
