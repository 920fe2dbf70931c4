//! Run the same request sequence against etcd and keel-store side by side.
//!
//! A [`Pair`] owns one etcd and one "keel" server (keel-store, or etcd again
//! with `KEEL_CONFORMANCE_PEER=etcd`). Every [`Pair::step`] sends the same
//! request to both — with `{i+N}` placeholders in the target/body replaced by
//! each server's own base index + N — and compares the responses after
//! normalisation. Differences are collected and reported together when the
//! pair is finished (or dropped), each with both responses in full.

use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::http::{self, HttpStream, Req, Resp, abbreviate};
use crate::norm::{self, NormCtx, Opts};
use crate::server::{Flavor, Server, keel_side_flavor};

/// How the bodies of a step are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyMode {
    /// JSON bodies are normalised and diffed; other bodies compared as text.
    #[default]
    Auto,
    /// Only the JSON shape (key sets and value types) is compared.
    Shape,
    /// Bodies are not compared.
    Ignore,
}

/// Comparison options for one step.
#[derive(Debug, Clone, Default)]
pub struct Cmp {
    pub body: BodyMode,
    /// Override the options derived from the request.
    pub opts: Option<Opts>,
}

impl Cmp {
    pub fn shape() -> Cmp {
        Cmp {
            body: BodyMode::Shape,
            ..Cmp::default()
        }
    }
    pub fn ignore_body() -> Cmp {
        Cmp {
            body: BodyMode::Ignore,
            ..Cmp::default()
        }
    }
}

/// Normalisation options implied by a request.
pub fn opts_for(req: &Req) -> Opts {
    Opts {
        unordered: !req.flag("sorted"),
        prev_index: req.param("prevIndex").filter(|v| !v.is_empty() && v != "0"),
        prev_value: req
            .param("prevValue")
            .filter(|v| !v.is_empty())
            .map(|v| http::urldecode(&v)),
    }
}

/// One server of a pair with its normalisation context.
#[derive(Debug)]
pub struct Side {
    pub server: Server,
    pub ctx: NormCtx,
    /// Problems found while establishing the context (reported as failures).
    pub setup_issues: Vec<String>,
}

impl Side {
    pub fn start(flavor: Flavor) -> Side {
        let server = Server::start(flavor);
        let mut setup_issues = Vec::new();
        let root = server.try_request(&Req::get("/v2/keys/"));
        let (base, cluster_id) = match &root {
            Ok(r) if r.etcd_index().is_some() => (
                r.etcd_index().expect("index"),
                r.header("x-etcd-cluster-id").map(str::to_string),
            ),
            Ok(r) => {
                setup_issues.push(format!(
                    "{}: GET /v2/keys/ gave no usable X-Etcd-Index, using base 0:\n{}",
                    flavor.name(),
                    r.render()
                ));
                (0, r.header("x-etcd-cluster-id").map(str::to_string))
            }
            Err(e) => {
                setup_issues.push(format!(
                    "{}: GET /v2/keys/ failed: {e}; using base 0",
                    flavor.name()
                ));
                (0, None)
            }
        };
        let mut ids: Vec<String> = cluster_id.into_iter().collect();
        if let Ok(r) = server.try_request(&Req::get("/v2/members"))
            && let Some(v) = r.json()
            && let Some(ms) = v.get("members").and_then(Value::as_array)
        {
            for m in ms {
                if let Some(id) = m.get("id").and_then(Value::as_str) {
                    ids.push(id.to_string());
                }
            }
        }
        let ctx = NormCtx {
            base,
            client_url: server.client_url(),
            peer_url: server.peer_url(),
            ids,
            gaps: Vec::new(),
        };
        Side {
            server,
            ctx,
            setup_issues,
        }
    }

    pub fn name(&self) -> &'static str {
        self.server.flavor.name()
    }

    /// Replace `{i}`, `{i+N}`, `{i-N}` by base-relative absolute indexes.
    pub fn subst(&self, s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(p) = rest.find("{i") {
            out.push_str(&rest[..p]);
            let after = &rest[p + 2..];
            let Some(close) = after.find('}') else {
                out.push_str(&rest[p..]);
                return out;
            };
            let expr = &after[..close];
            let off: i64 = if expr.is_empty() {
                0
            } else if let Some(n) = expr.strip_prefix('+') {
                n.parse()
                    .unwrap_or_else(|_| panic!("bad placeholder {{i{expr}}}"))
            } else if let Some(n) = expr.strip_prefix('-') {
                -n.parse::<i64>()
                    .unwrap_or_else(|_| panic!("bad placeholder {{i{expr}}}"))
            } else {
                panic!("bad placeholder {{i{expr}}}")
            };
            let v = self.ctx.base as i64 + off;
            out.push_str(&v.max(0).to_string());
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        out
    }

    /// A copy of `req` with placeholders substituted.
    pub fn req(&self, req: &Req) -> Req {
        let mut r = req.clone();
        r.target = self.subst(&req.target);
        if let Some(b) = &req.body
            && let Ok(s) = std::str::from_utf8(b)
            && s.contains("{i")
        {
            r.body = Some(self.subst(s).into_bytes());
        }
        r
    }

    pub fn send(&self, req: &Req) -> Resp {
        let r = self.req(req);
        match http::send(self.server.addr(), &r, http::DEFAULT_TIMEOUT) {
            Ok(resp) => resp,
            Err(e) => transport_error(&e.to_string()),
        }
    }

    /// Send with a custom timeout; transport errors become status-0 responses.
    pub fn send_timeout(&self, req: &Req, timeout: Duration) -> Resp {
        let r = self.req(req);
        match http::send(self.server.addr(), &r, timeout) {
            Ok(resp) => resp,
            Err(e) => transport_error(&e.to_string()),
        }
    }
}

/// A pseudo response standing for "no HTTP response" (status 0).
pub fn transport_error(msg: &str) -> Resp {
    Resp {
        status: 0,
        reason: format!("<no HTTP response: {msg}>"),
        headers: Vec::new(),
        body: Vec::new(),
        received_at: SystemTime::now(),
    }
}

/// etcd and the keel side, started for one scenario.
#[derive(Debug)]
pub struct Pair {
    pub name: String,
    pub etcd: Side,
    pub keel: Side,
    failures: Vec<String>,
    /// Informational differences (not failures), printed when finished.
    notes: Vec<String>,
    steps: usize,
    finished: bool,
}

impl Pair {
    /// Start etcd and the keel side (in parallel) for scenario `name`.
    pub fn start(name: &str) -> Pair {
        let keel_flavor = keel_side_flavor();
        // Resolve the binary first so a missing keel-store panics clearly.
        let _ = keel_flavor.binary();
        let (etcd, keel) = std::thread::scope(|s| {
            let e = s.spawn(|| Side::start(Flavor::Etcd));
            let k = s.spawn(|| Side::start(keel_flavor));
            let e = e.join();
            let k = k.join();
            match (e, k) {
                (Ok(e), Ok(k)) => (e, k),
                (Err(p), _) | (_, Err(p)) => std::panic::resume_unwind(p),
            }
        });
        let mut failures = Vec::new();
        for s in [&etcd, &keel] {
            for i in &s.setup_issues {
                failures.push(format!("[{name}] setup: {i}"));
            }
        }
        Pair {
            name: name.to_string(),
            etcd,
            keel,
            failures,
            notes: Vec::new(),
            steps: 0,
            finished: false,
        }
    }

    pub fn sides(&self) -> [&Side; 2] {
        [&self.etcd, &self.keel]
    }

    /// Record a failure.
    pub fn fail(&mut self, msg: impl Into<String>) {
        self.failures
            .push(format!("[{}] {}", self.name, msg.into()));
    }

    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// Send `req` to both servers and compare (options derived from `req`).
    pub fn step(&mut self, req: Req) -> (Resp, Resp) {
        self.step_cmp(req, Cmp::default())
    }

    pub fn step_cmp(&mut self, req: Req, cmp: Cmp) -> (Resp, Resp) {
        let e = self.etcd.send(&req);
        let k = self.keel.send(&req);
        self.compare(&req, &e, &k, &cmp);
        (e, k)
    }

    /// Send to both without comparing (setup steps).
    pub fn both(&mut self, req: Req) -> (Resp, Resp) {
        (self.etcd.send(&req), self.keel.send(&req))
    }

    /// Send to both; only require a 2xx status on both.
    pub fn setup(&mut self, req: Req) -> (Resp, Resp) {
        let (e, k) = self.both(req.clone());
        for (side, r) in [(&self.etcd, &e), (&self.keel, &k)] {
            if !(200..300).contains(&r.status) {
                let msg = format!(
                    "setup step `{}` failed on {}:\n{}",
                    side.req(&req).describe(),
                    side.name(),
                    r.render()
                );
                self.failures.push(format!("[{}] {msg}", self.name));
            }
        }
        (e, k)
    }

    /// Compare two responses to (the templated) `req`.
    pub fn compare(&mut self, req: &Req, e: &Resp, k: &Resp, cmp: &Cmp) -> bool {
        self.steps += 1;
        let oe = cmp
            .opts
            .clone()
            .unwrap_or_else(|| opts_for(&self.etcd.req(req)));
        let ok = cmp
            .opts
            .clone()
            .unwrap_or_else(|| opts_for(&self.keel.req(req)));
        let mut diffs = Vec::new();
        compare_heads(&self.etcd.ctx, e, &self.keel.ctx, k, &mut diffs);
        let (ne, nk) = compare_bodies(
            &self.etcd.ctx,
            e,
            &self.keel.ctx,
            k,
            cmp.body,
            (&oe, &ok),
            &mut diffs,
        );
        if diffs.is_empty() {
            return true;
        }
        if e.status != k.status
            && let Some(note) = self.realign()
        {
            diffs.push(note);
        }
        let msg = self.render_failure(req, e, k, &diffs, ne.as_deref(), nk.as_deref());
        self.failures.push(msg);
        false
    }

    /// After a step on which the servers disagreed (one wrote, the other
    /// did not), bring their relative indexes back in line so that later
    /// steps do not all report the same offset again. Returns a note.
    pub fn realign(&mut self) -> Option<String> {
        let cur = |side: &Side| {
            side.server
                .try_request(&Req::get("/v2/keys/"))
                .ok()
                .and_then(|r| r.etcd_index())
        };
        let (Some(ie), Some(ik)) = (cur(&self.etcd), cur(&self.keel)) else {
            return None;
        };
        let rel = |side: &Side, i: u64| -> i128 {
            let shift: u64 = side
                .ctx
                .gaps
                .iter()
                .filter(|(a, _)| i > *a)
                .map(|(_, j)| *j)
                .sum();
            i as i128 - side.ctx.base as i128 - shift as i128
        };
        let d = rel(&self.keel, ik) - rel(&self.etcd, ie);
        if d == 0 {
            return None;
        }
        let (side, cur_i) = if d > 0 {
            (&mut self.keel, ik)
        } else {
            (&mut self.etcd, ie)
        };
        let jump = d.unsigned_abs() as u64;
        side.ctx.gaps.push((cur_i.saturating_sub(jump), jump));
        Some(format!(
            "(after this step {} is {jump} index(es) ahead; later indexes are realigned)",
            side.name()
        ))
    }

    fn render_failure(
        &self,
        req: &Req,
        e: &Resp,
        k: &Resp,
        diffs: &[String],
        ne: Option<&str>,
        nk: Option<&str>,
    ) -> String {
        let mut s = format!(
            "[{}] step {}: {}\n  differences:\n",
            self.name,
            self.steps,
            req.describe()
        );
        for d in diffs {
            s.push_str(&format!("    - {d}\n"));
        }
        for side in [&self.etcd, &self.keel] {
            s.push_str(&format!(
                "  {} (base index {}) was sent: {}\n",
                side.name(),
                side.ctx.base,
                abbreviate(&side.req(req).target, 200)
            ));
        }
        let left = response_lines(e, ne, &self.etcd.ctx);
        let right = response_lines(k, nk, &self.keel.ctx);
        s.push_str(&side_by_side(
            &format!("etcd ({})", self.etcd.name()),
            &left,
            &format!("keel ({})", self.keel.name()),
            &right,
        ));
        s
    }

    /// Open a watch (or any long-poll) on both servers and compare the
    /// response heads, which must arrive before any event is produced.
    pub fn watch(&mut self, req: Req) -> PairWatch {
        let opts = opts_for(&req);
        let mut streams = Vec::new();
        for side in [&self.etcd, &self.keel] {
            let r = side.req(&req);
            let deadline = Instant::now() + Duration::from_secs(10);
            match HttpStream::open(side.server.addr(), &r, deadline) {
                Ok(s) => streams.push(Ok(s)),
                Err(e) => streams.push(Err(e.to_string())),
            }
        }
        let mut heads = Vec::new();
        for (i, s) in streams.iter_mut().enumerate() {
            let name = if i == 0 {
                self.etcd.name()
            } else {
                self.keel.name()
            };
            match s {
                Ok(st) => match st.read_head(Instant::now() + Duration::from_secs(10)) {
                    Ok(h) => heads.push(Some(Resp {
                        status: h.status,
                        reason: h.reason.clone(),
                        headers: h.headers.clone(),
                        body: Vec::new(),
                        received_at: h.received_at,
                    })),
                    Err(e) => {
                        self.failures.push(format!(
                            "[{}] watch `{}`: {name} sent no response head within 10 s ({e}); \
                             etcd flushes the head (status + X-Etcd-Index) as soon as the watcher is registered",
                            self.name,
                            req.describe()
                        ));
                        heads.push(None);
                    }
                },
                Err(e) => {
                    self.failures.push(format!(
                        "[{}] watch `{}`: {name}: connect failed: {e}",
                        self.name,
                        req.describe()
                    ));
                    heads.push(None);
                }
            }
        }
        if let (Some(Some(e)), Some(Some(k))) = (heads.first(), heads.get(1)) {
            let (e, k) = (e.clone(), k.clone());
            self.compare(&req, &e, &k, &Cmp::ignore_body());
        }
        let mut it = streams.into_iter();
        PairWatch {
            label: req.describe(),
            req,
            opts,
            etcd: it.next().expect("etcd").ok(),
            keel: it.next().expect("keel").ok(),
        }
    }

    /// Read the next event line (JSON) from both sides of a watch and compare.
    pub fn watch_event(
        &mut self,
        w: &mut PairWatch,
        timeout: Duration,
    ) -> (Option<Value>, Option<Value>) {
        let mut got: Vec<(Option<String>, String)> = Vec::new();
        for s in [&mut w.etcd, &mut w.keel] {
            match s {
                None => got.push((None, "<no connection>".into())),
                Some(st) => match st.next_nonempty_line(Instant::now() + timeout) {
                    Ok(Some(l)) => got.push((Some(l), String::new())),
                    Ok(None) => got.push((None, "<response ended without an event>".into())),
                    Err(e) => got.push((None, format!("<no event within {timeout:?}: {e}>"))),
                },
            }
        }
        let now = SystemTime::now();
        let mut issues = Vec::new();
        let mut vals = Vec::new();
        let mut norms = Vec::new();
        for ((line, err), side) in got.iter().zip([&self.etcd, &self.keel]) {
            match line {
                Some(l) => match serde_json::from_str::<Value>(l) {
                    Ok(v) => {
                        let mut iss = Vec::new();
                        let n = norm::normalize_json(&v, &side.ctx, &w.opts, now, &mut iss);
                        for i in iss {
                            issues.push(format!("{}: {i}", side.name()));
                        }
                        norms.push(Some(n));
                        vals.push(Some(v));
                    }
                    Err(e) => {
                        issues.push(format!(
                            "{}: event line is not JSON ({e}): {}",
                            side.name(),
                            abbreviate(l, 300)
                        ));
                        norms.push(None);
                        vals.push(None);
                    }
                },
                None => {
                    norms.push(None);
                    vals.push(None);
                    let _ = err;
                }
            }
        }
        let mut diffs = issues;
        match (&norms[0], &norms[1]) {
            (Some(a), Some(b)) => norm::diff_json("event", a, b, &mut diffs),
            _ => {
                if norms[0].is_some() != norms[1].is_some() || norms[0].is_none() {
                    diffs.push(format!(
                        "event: etcd {} | keel {}",
                        got[0].0.clone().unwrap_or_else(|| got[0].1.clone()),
                        got[1].0.clone().unwrap_or_else(|| got[1].1.clone())
                    ));
                }
            }
        }
        if !diffs.is_empty() {
            let mut s = format!("[{}] watch `{}`: next event differs:\n", self.name, w.label);
            for d in &diffs {
                s.push_str(&format!("    - {d}\n"));
            }
            let lines = |i: usize| -> Vec<String> {
                let mut v = vec![abbreviate(
                    &got[i].0.clone().unwrap_or_else(|| got[i].1.clone()),
                    400,
                )];
                if let Some(n) = &norms[i] {
                    v.push("(normalised)".into());
                    v.extend(
                        serde_json::to_string_pretty(n)
                            .unwrap_or_default()
                            .lines()
                            .map(str::to_string),
                    );
                }
                v
            };
            s.push_str(&side_by_side(
                &format!("etcd ({})", self.etcd.name()),
                &lines(0),
                &format!("keel ({})", self.keel.name()),
                &lines(1),
            ));
            self.failures.push(s);
        }
        let mut it = vals.into_iter();
        (it.next().flatten(), it.next().flatten())
    }

    /// Both long-polls must end their body after the event.
    pub fn watch_end(&mut self, w: &mut PairWatch, timeout: Duration) {
        let mut results = Vec::new();
        for s in [&mut w.etcd, &mut w.keel] {
            let r = match s {
                None => "<no connection>".to_string(),
                Some(st) => match st.next_nonempty_line(Instant::now() + timeout) {
                    Ok(None) => "end".to_string(),
                    Ok(Some(l)) => format!("extra data: {}", abbreviate(&l, 300)),
                    Err(e) => format!("not terminated within {timeout:?}: {e}"),
                },
            };
            results.push(r);
        }
        if results[0] != results[1] {
            self.fail(format!(
                "watch `{}`: after the event etcd: {} | keel: {}",
                w.label, results[0], results[1]
            ));
        }
    }

    /// Restart both servers (kill with `sig` first) on the same data dirs and
    /// ports. Index jumps across the restart (etcd republishes its member
    /// attributes through raft) are absorbed into the normalisation; an index
    /// that goes backwards is a failure.
    pub fn restart_both(&mut self, sig: nix::sys::signal::Signal) {
        let mut msgs = Vec::new();
        for side in [&mut self.etcd, &mut self.keel] {
            let before = side
                .server
                .try_request(&Req::get("/v2/keys/"))
                .ok()
                .and_then(|r| r.etcd_index());
            side.server.kill(sig);
            side.server.restart();
            let after = side
                .server
                .try_request(&Req::get("/v2/keys/"))
                .ok()
                .and_then(|r| r.etcd_index());
            match (before, after) {
                (Some(b), Some(a)) if a > b => side.ctx.gaps.push((b, a - b)),
                (Some(b), Some(a)) if a < b => msgs.push(format!(
                    "{}: X-Etcd-Index went backwards across a restart ({sig:?}): {b} before, {a} after",
                    side.name()
                )),
                (Some(_), Some(_)) => {}
                (b, a) => msgs.push(format!(
                    "{}: no X-Etcd-Index from GET /v2/keys/ around the restart: before {b:?}, after {a:?}",
                    side.name()
                )),
            }
        }
        for m in msgs {
            self.fail(m);
        }
    }

    /// Panic with every recorded difference (if any).
    pub fn finish(mut self) {
        self.finished = true;
        self.report();
    }

    /// Record an informational difference (printed, does not fail).
    pub fn note(&mut self, msg: impl Into<String>) {
        self.notes.push(format!("[{}] {}", self.name, msg.into()));
    }

    /// Compare like [`Pair::compare`] but record differences as notes.
    pub fn compare_lenient(&mut self, req: &Req, e: &Resp, k: &Resp, cmp: &Cmp) -> bool {
        let before = self.failures.len();
        let same = self.compare(req, e, k, cmp);
        let moved: Vec<String> = self.failures.drain(before..).collect();
        for m in moved {
            self.notes
                .push(format!("(informational, not a failure)\n{m}"));
        }
        same
    }

    fn report(&mut self) {
        for n in std::mem::take(&mut self.notes) {
            eprintln!("NOTE {n}\n");
        }
        fail_with_differences(&self.name, &self.keel.server, &mut self.failures);
    }
}

/// Panic with every difference found in `scenario` and the keel-store log tail, if any.
pub fn fail_with_differences(scenario: &str, keel: &Server, failures: &mut Vec<String>) {
    if failures.is_empty() {
        return;
    }
    let mut s = format!(
        "\n{} difference(s) between etcd and {} in scenario `{scenario}`:\n\n",
        failures.len(),
        keel.flavor.name(),
    );
    for f in failures.iter() {
        s.push_str(f);
        s.push_str("\n\n");
    }
    s.push_str(&format!(
        "--- {} binary {}; log tail:\n{}\n",
        keel.flavor.name(),
        keel.bin.display(),
        keel.log_tail(15)
    ));
    failures.clear();
    panic!("{s}");
}

impl Drop for Pair {
    fn drop(&mut self) {
        if !self.finished && !std::thread::panicking() {
            self.finished = true;
            self.report();
        }
    }
}

/// A watch open on both servers.
#[derive(Debug)]
pub struct PairWatch {
    pub label: String,
    pub req: Req,
    pub opts: Opts,
    pub etcd: Option<HttpStream>,
    pub keel: Option<HttpStream>,
}

const COMPARED_EXACT: &[&str] = &[
    "content-type",
    "access-control-allow-origin",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "x-content-type-options",
];

/// Compare status and the headers that matter.
pub fn compare_heads(ce: &NormCtx, e: &Resp, ck: &NormCtx, k: &Resp, diffs: &mut Vec<String>) {
    if e.status != k.status {
        diffs.push(format!("status: etcd {} != keel {}", e.status, k.status));
    }
    for h in COMPARED_EXACT {
        let (a, b) = (e.header(h), k.header(h));
        if a != b {
            diffs.push(format!("header {h}: etcd {a:?} != keel {b:?}"));
        }
    }
    // Allow: compared as a set of methods.
    let set = |v: Option<&str>| {
        v.map(|v| {
            let mut m: Vec<String> = v
                .split(',')
                .map(|x| x.trim().to_ascii_uppercase())
                .collect();
            m.sort();
            m
        })
    };
    if set(e.header("allow")) != set(k.header("allow")) {
        diffs.push(format!(
            "header allow: etcd {:?} != keel {:?}",
            e.header("allow"),
            k.header("allow")
        ));
    }
    // Location: compared after URL normalisation.
    let (a, b) = (
        e.header("location").map(|v| ce.text(v)),
        k.header("location").map(|v| ck.text(v)),
    );
    if a != b {
        diffs.push(format!("header location: etcd {a:?} != keel {b:?}"));
    }
    // X-Etcd-Index: compared relative to each base.
    match (e.header("x-etcd-index"), k.header("x-etcd-index")) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            let na = a.trim().parse::<u64>().map(|n| ce.idx_str(n));
            let nb = b.trim().parse::<u64>().map(|n| ck.idx_str(n));
            match (na, nb) {
                (Ok(x), Ok(y))
                    if x == y || (x == "0" && y == "#+0") || (x == "#+0" && y == "0") => {}
                (Ok(x), Ok(y)) => diffs.push(format!(
                    "header x-etcd-index: etcd {a} ({x}) != keel {b} ({y})"
                )),
                _ => diffs.push(format!(
                    "header x-etcd-index: not a number: etcd {a:?}, keel {b:?}"
                )),
            }
        }
        (a, b) => diffs.push(format!(
            "header x-etcd-index presence: etcd {a:?}, keel {b:?}"
        )),
    }
    for h in ["x-raft-index", "x-raft-term"] {
        let (a, b) = (e.header(h), k.header(h));
        if a.is_some() != b.is_some() {
            diffs.push(format!("header {h} presence: etcd {a:?}, keel {b:?}"));
        }
        if let Some(b) = b
            && b.trim().parse::<u64>().is_err()
        {
            diffs.push(format!("header {h}: keel value {b:?} is not a number"));
        }
    }
    let (a, b) = (e.header("x-etcd-cluster-id"), k.header("x-etcd-cluster-id"));
    if a.is_some() != b.is_some() {
        diffs.push(format!(
            "header x-etcd-cluster-id presence: etcd {a:?}, keel {b:?}"
        ));
    }
    if let Some(b) = b
        && !norm::is_hex_id(b)
    {
        diffs.push(format!(
            "header x-etcd-cluster-id: keel value {b:?} is not lowercase hex without leading zeros"
        ));
    }
}

/// Compare bodies; returns the normalised renderings (for messages).
pub fn compare_bodies(
    ce: &NormCtx,
    e: &Resp,
    ck: &NormCtx,
    k: &Resp,
    mode: BodyMode,
    opts: (&Opts, &Opts),
    diffs: &mut Vec<String>,
) -> (Option<String>, Option<String>) {
    if mode == BodyMode::Ignore {
        return (None, None);
    }
    let je: Option<Value> = if e.body.is_empty() { None } else { e.json() };
    let jk: Option<Value> = if k.body.is_empty() { None } else { k.json() };
    match (je, jk) {
        (Some(a), Some(b)) => {
            if mode == BodyMode::Shape {
                let (sa, sb) = (norm::shape(&a), norm::shape(&b));
                norm::diff_json("body(shape)", &sa, &sb, diffs);
                return (Some(sa.to_string()), Some(sb.to_string()));
            }
            let mut issues = Vec::new();
            let na = norm::normalize_json(&a, ce, opts.0, e.received_at, &mut issues);
            let mut kissues = Vec::new();
            let nb = norm::normalize_json(&b, ck, opts.1, k.received_at, &mut kissues);
            for i in issues {
                diffs.push(format!("etcd: {i}"));
            }
            for i in kissues {
                diffs.push(format!("keel: {i}"));
            }
            norm::diff_json("body", &na, &nb, diffs);
            if e.body.ends_with(b"\n") != k.body.ends_with(b"\n") {
                diffs.push(format!(
                    "body trailing newline: etcd {}, keel {}",
                    e.body.ends_with(b"\n"),
                    k.body.ends_with(b"\n")
                ));
            }
            (Some(na.to_string()), Some(nb.to_string()))
        }
        (a, b) => {
            if a.is_some() != b.is_some() && (!e.body.is_empty() || !k.body.is_empty()) {
                diffs.push(format!(
                    "body: etcd {} JSON, keel {} JSON",
                    if a.is_some() { "is" } else { "is not" },
                    if b.is_some() { "is" } else { "is not" }
                ));
            }
            let (ta, tb) = (ce.text(&e.text()), ck.text(&k.text()));
            if a.is_none() && b.is_none() && ta != tb {
                diffs.push(format!(
                    "body text: etcd {:?} != keel {:?}",
                    abbreviate(&ta, 300),
                    abbreviate(&tb, 300)
                ));
            }
            (None, None)
        }
    }
}

/// A response as display lines: status, headers (sorted, `date` omitted),
/// then the normalised JSON body pretty-printed (or the raw text body).
/// Volatile header values are shown normalised, the raw value after
/// ` (raw `; [`side_by_side`] compares only what precedes it.
pub fn response_lines(r: &Resp, normalised: Option<&str>, ctx: &NormCtx) -> Vec<String> {
    let mut out = vec![format!("HTTP {} {}", r.status, r.reason)];
    let mut hs: Vec<&(String, String)> = r.headers.iter().filter(|(n, _)| n != "date").collect();
    hs.sort_by(|a, b| a.0.cmp(&b.0));
    for (n, v) in hs {
        let shown = match n.as_str() {
            "x-etcd-index" => v
                .trim()
                .parse::<u64>()
                .map(|i| ctx.idx_str_current(i))
                .unwrap_or_else(|_| v.clone()),
            "x-etcd-cluster-id" => "<id>".to_string(),
            "x-raft-index" | "x-raft-term" | "content-length" => "<n>".to_string(),
            "location" => ctx.text(v),
            _ => {
                out.push(format!("{n}: {v}"));
                continue;
            }
        };
        out.push(format!("{n}: {shown} (raw {v})"));
    }
    out.push(String::new());
    let pretty = normalised
        .and_then(|n| serde_json::from_str::<Value>(n).ok())
        .and_then(|v| serde_json::to_string_pretty(&v).ok());
    match pretty {
        Some(p) => {
            out.push("(normalised body)".into());
            out.extend(p.lines().map(str::to_string));
        }
        None => out.extend(r.text().lines().map(str::to_string)),
    }
    out
}

/// Two columns; rows that differ are marked with `≠`.
pub fn side_by_side(ltitle: &str, left: &[String], rtitle: &str, right: &[String]) -> String {
    const W: usize = 70;
    const MAX_ROWS: usize = 80;
    let cut = |s: &str| -> String {
        let n = s.chars().count();
        if n <= W {
            format!("{s}{}", " ".repeat(W - n))
        } else {
            format!("{}…", s.chars().take(W - 1).collect::<String>())
        }
    };
    let mut out = format!("    {} | {}\n", cut(ltitle), rtitle);
    out.push_str(&format!("    {}-+-{}\n", "-".repeat(W), "-".repeat(W)));
    let rows = left.len().max(right.len());
    for i in 0..rows.min(MAX_ROWS) {
        let l = left.get(i).map(String::as_str).unwrap_or("");
        let r = right.get(i).map(String::as_str).unwrap_or("");
        let key = |s: &str| s.split(" (raw ").next().unwrap_or("").to_string();
        let mark = if key(l) == key(r) { '|' } else { '≠' };
        out.push_str(&format!("    {} {mark} {}\n", cut(l), abbreviate(r, W)));
    }
    if rows > MAX_ROWS {
        out.push_str(&format!("    … {} more lines\n", rows - MAX_ROWS));
    }
    out
}
