//! Client compatibility: Debian's `etcdctl` 3.4 in v3 mode
//! (`ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:PORT`) runs the same commands
//! against etcd and keel-store; exit codes and normalised stdout/stderr must
//! match (revisions relative to the scenario start, member/lease ids,
//! endpoints, timings, db sizes and raft indexes replaced by placeholders).
//! Also: `snapshot save` + `keel-store snapshot restore` + start on the
//! restored data dir, and a few thousand concurrent puts.
//!
//! Run: `cargo test -p keel-tests --test v3_etcdctl`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use keel_tests::ctl::CtlOut;
use keel_tests::server::keel_store_bin;
use keel_tests::v3::{self, CtlLines, V3Pair, V3Side, ctl_run, run};
use keel_tests::{Flavor, Server};
use serde_json::{Map, Value, json};

const CMD_TIMEOUT: Duration = Duration::from_secs(20);

/// The side's endpoint in etcdctl's `host:port` form.
fn endpoint(s: &V3Side) -> String {
    format!("127.0.0.1:{}", s.server.client_port)
}

/// Per-side ids to hide in etcdctl output.
#[derive(Debug, Default, Clone)]
struct Ids {
    member: u64,
    cluster: u64,
}

async fn ids(s: &mut V3Side) -> Ids {
    let r = v3::within("member list", s.client.member_list())
        .await
        .expect("member list");
    let h = r.header().expect("member list header");
    Ids {
        member: h.member_id(),
        cluster: h.cluster_id(),
    }
}

/// Replace `{R+n}` by the side's base revision + n and `{L:name}` by the
/// hex id of the lease registered under `name`.
fn subst(s: &V3Side, arg: &str) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(p) = rest.find('{') {
        out.push_str(&rest[..p]);
        let after = &rest[p + 1..];
        let close = after.find('}').expect("unclosed {");
        let expr = &after[..close];
        if let Some(n) = expr.strip_prefix("R+") {
            out.push_str(&s.rel(n.parse().expect("{R+n}")).to_string());
        } else if let Some(name) = expr.strip_prefix("L:") {
            out.push_str(&format!("{:x}", s.lease(name)));
        } else {
            panic!("bad placeholder {{{expr}}}");
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Normalise one JSON value printed by etcdctl (`-w json`).
fn norm_json(s: &V3Side, ids: &Ids, key: &str, v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                match k.as_str() {
                    "cluster_id" | "member_id" | "raft_term" | "raftTerm" => continue,
                    "ttl" => {
                        let granted = m.get("granted-ttl").and_then(Value::as_i64).unwrap_or(0);
                        let ttl = x.as_i64().unwrap_or(0);
                        let v = if granted > 0 && ttl > 0 && ttl <= granted && ttl >= granted - 3 {
                            json!("<remaining>")
                        } else {
                            x.clone()
                        };
                        out.insert(k.clone(), v);
                    }
                    "raftIndex" | "raftAppliedIndex" | "dbSize" | "dbSizeInUse" => {
                        out.insert(k.clone(), json!("<n>"));
                    }
                    _ => {
                        out.insert(k.clone(), norm_json(s, ids, k, x));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| norm_json(s, ids, key, x)).collect()),
        Value::String(x) => json!(
            x.replace(&s.server.client_url(), "<client-url>")
                .replace(&s.server.peer_url(), "<peer-url>")
                .replace(&endpoint(s), "<ep>")
        ),
        Value::Number(n) => {
            let Some(i) = n.as_i64().or_else(|| n.as_u64().map(|u| u as i64)) else {
                return v.clone();
            };
            match key {
                "revision" | "create_revision" | "mod_revision" | "compact_revision" => {
                    s.norm.rev(i)
                }
                "lease" | "id" => s.norm.lease(i),
                "ID" | "leader" => {
                    if n.as_u64() == Some(ids.member) {
                        json!("<member>")
                    } else {
                        s.norm.lease(i)
                    }
                }
                _ => v.clone(),
            }
        }
        _ => v.clone(),
    }
}

/// Normalise etcdctl output for comparison.
fn normalize(s: &V3Side, ids: &Ids, text: &str, sort: bool) -> String {
    let ep = endpoint(s);
    let member_hex = format!("{:x}", ids.member);
    let cluster_hex = format!("{:x}", ids.cluster);
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if (t.starts_with('{') || t.starts_with('['))
            && let Ok(v) = serde_json::from_str::<Value>(t)
        {
            if v.get("level").is_some() {
                // A zap log line: keep the message and any error.
                let mut l = format!("log: {}", v["msg"].as_str().unwrap_or(""));
                if let Some(e) = v.get("error").and_then(Value::as_str) {
                    l.push_str(&format!(" error={e}"));
                }
                lines.push(l);
            } else {
                lines.push(norm_json(s, ids, "", &v).to_string());
            }
            continue;
        }
        let mut l = line.to_string();
        for (id, name) in &s.norm.leases {
            l = l.replace(&format!("{id:016x}"), &format!("<lease {name}>"));
        }
        l = l
            .replace(&s.server.client_url(), "<client-url>")
            .replace(&s.server.peer_url(), "<peer-url>")
            .replace(&ep, "<ep>");
        // Ids printed as hex (member list, endpoint status, tables).
        for (hex, name) in [(&member_hex, "<member>"), (&cluster_hex, "<cluster>")] {
            if hex.len() >= 8 {
                l = l.replace(hex.as_str(), name);
            }
        }
        // `-w fields`: `"Name" : value`
        if let Some((name, val)) = l.split_once(" : ")
            && let Ok(n) = val.trim().parse::<i128>()
        {
            // Ids are uint64; revisions and leases fit in i64.
            let n64 = i64::try_from(n).unwrap_or(i64::MAX);
            let v = match name.trim_matches('"') {
                "ClusterID" | "MemberID" => json!("<id>"),
                "RaftTerm" => json!("<n>"),
                "Revision" | "CreateRevision" | "ModRevision" => s.norm.rev(n64),
                "Lease" | "ID" => s.norm.lease(n64),
                _ => json!(n),
            };
            l = format!("{name} : {v}");
        }
        // endpoint status: ep, id, version, db size, leader, learner, term, index, applied, errors
        if l.starts_with("<ep>, <member>, ") {
            let mut toks: Vec<String> = l.split(", ").map(str::to_string).collect();
            if toks.len() >= 9 {
                toks[3] = "<size>".into();
                for t in toks.iter_mut().take(9).skip(6) {
                    *t = "<n>".into();
                }
            }
            l = toks.join(", ");
        } else if let Some(h) = l.strip_prefix("<ep>, ")
            && h.parse::<u64>().is_ok()
        {
            l = "<ep>, <hash>".into();
        }
        if let Some(p) = l.find("took = ") {
            l = format!("{}took = <t>", &l[..p]);
        }
        if let Some(n) = l
            .strip_prefix("compacted revision ")
            .and_then(|n| n.parse::<i64>().ok())
        {
            l = format!("compacted revision {}", s.norm.rev(n));
        }
        // Remaining TTL depends on timing (etcd truncates: 59s right after a 60s grant).
        if let Some(a) = l.find("remaining(")
            && let Some(b) = l[a..].find("s)")
        {
            l = format!("{}remaining(<n>{}", &l[..a], &l[a + b..]);
        }
        // etcd lists a lease's keys in map order.
        if let Some(a) = l.find("attached keys([")
            && let Some(b) = l[a..].find("])")
        {
            let start = a + "attached keys([".len();
            let mut keys: Vec<&str> = l[start..a + b].split(' ').collect();
            keys.sort_unstable();
            l = format!("{}{}{}", &l[..start], keys.join(" "), &l[a + b..]);
        }
        // Tables: column widths depend on the (normalised) URLs' lengths.
        if l.starts_with('|') || l.starts_with('+') {
            let mut c = String::new();
            for ch in l.chars() {
                if (ch == ' ' || ch == '-') && c.ends_with(ch) {
                    continue;
                }
                c.push(ch);
            }
            l = c;
        }
        if let Some(p) = l.find("Snapshot saved at ") {
            l = format!("{}Snapshot saved at <file>", &l[..p]);
        }
        lines.push(l);
    }
    if sort {
        lines.sort();
    }
    lines.join("\n")
}

struct Ctl {
    p: V3Pair,
    ids: [Ids; 2],
    dir: tempfile::TempDir,
}

impl Ctl {
    async fn start(name: &str) -> Ctl {
        let mut p = V3Pair::start(name).await;
        let ids = [ids(&mut p.etcd).await, ids(&mut p.keel).await];
        Ctl {
            p,
            ids,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn out_json(&self, side: usize, o: &CtlOut, sort: bool) -> Value {
        let s = if side == 0 {
            &self.p.etcd
        } else {
            &self.p.keel
        };
        json!({
            "exit": o.code,
            "timed_out": o.timed_out,
            "stdout": normalize(s, &self.ids[side], &o.stdout, sort),
            "stderr": normalize(s, &self.ids[side], &o.stderr, false),
        })
    }

    /// Run etcdctl with `args` (placeholders substituted per side) on both.
    async fn run_full(&mut self, args: &[&str], stdin: Option<&str>, sort: bool) -> [CtlOut; 2] {
        self.run_grant(args, stdin, sort, None).await
    }

    /// Like [`Ctl::run_full`]; with `lease`, the id printed by `lease grant`
    /// is registered under that name before the outputs are compared.
    async fn run_grant(
        &mut self,
        args: &[&str],
        stdin: Option<&str>,
        sort: bool,
        lease: Option<&str>,
    ) -> [CtlOut; 2] {
        let label = format!("etcdctl {}", args.join(" "));
        let mut outs = Vec::new();
        for side in [&self.p.etcd, &self.p.keel] {
            let a: Vec<String> = args.iter().map(|a| subst(side, a)).collect();
            let input = stdin.map(|i| subst(side, i));
            // Blocking is fine: the test body is not on a runtime worker.
            outs.push(ctl_run(&endpoint(side), &a, input.as_deref(), CMD_TIMEOUT));
        }
        if let Some(name) = lease {
            self.register_lease(&outs, name);
        }
        let (e, k) = (
            self.out_json(0, &outs[0], sort),
            self.out_json(1, &outs[1], sort),
        );
        self.p.compare(&label, &e, &k);
        self.p.realign(&label).await;
        let k = outs.pop().expect("keel");
        let e = outs.pop().expect("etcd");
        [e, k]
    }

    async fn run(&mut self, args: &[&str]) -> [CtlOut; 2] {
        self.run_full(args, None, false).await
    }

    /// Register the lease granted by `lease grant` output under `name`.
    fn register_lease(&mut self, outs: &[CtlOut], name: &str) {
        for (i, o) in outs.iter().enumerate() {
            let side = if i == 0 {
                &mut self.p.etcd
            } else {
                &mut self.p.keel
            };
            let id = o
                .stdout
                .split_whitespace()
                .nth(1)
                .and_then(|h| i64::from_str_radix(h, 16).ok());
            match id {
                Some(id) => side.norm.name_lease(id, name),
                None => {
                    let msg = format!(
                        "{}: no lease id in `lease grant` output: {}",
                        side.name(),
                        o.render()
                    );
                    self.p.fail(msg);
                }
            }
        }
    }
}

#[test]
fn v3_etcdctl_kv_txn_lease_compaction() {
    run(|| async {
        let mut c = Ctl::start("etcdctl v3 kv/txn/lease").await;
        // R+1..R+6
        for (k, v) in [
            ("/k1", "v1"),
            ("/k2", "v2"),
            ("/k3", "v3"),
            ("/k1", "v1b"),
            ("/dir/a", "1"),
            ("/dir/b", "2"),
        ] {
            c.run(&["put", k, v]).await;
        }
        c.run(&["put", "/k2", "v2b", "--prev-kv"]).await; // R+7
        c.run(&["put", "", "v"]).await;
        c.run(&["get", "/k1"]).await;
        c.run(&["get", "/missing"]).await;
        c.run(&["get", "/k", "--prefix"]).await;
        c.run(&["get", "/k", "--prefix", "--keys-only"]).await;
        c.run(&["get", "/k1", "--print-value-only"]).await;
        c.run(&["get", "/k1", "/k3"]).await;
        c.run(&["get", "/k2", "--from-key"]).await;
        c.run(&["get", "/k1", "--rev={R+1}"]).await;
        c.run(&["get", "/k", "--prefix", "--rev={R+3}", "-w", "json"])
            .await;
        c.run(&["get", "/k1", "--rev={R+100}"]).await;
        c.run(&["get", "/k", "--prefix", "--limit=2"]).await;
        c.run(&["get", "/k", "--prefix", "--limit=1", "-w", "json"])
            .await;
        c.run(&["get", "/", "--prefix", "-w", "json"]).await;
        c.run(&["get", "/k1", "-w", "fields"]).await;
        c.run(&["get", "/k", "--prefix", "-w", "table"]).await;
        c.run(&["get", "/k", "--prefix", "--consistency=s"]).await;
        for sort in ["CREATE", "KEY", "MODIFY", "VALUE", "VERSION"] {
            for order in ["ASCEND", "DESCEND"] {
                let s = format!("--sort-by={sort}");
                let o = format!("--order={order}");
                c.run(&["get", "/", "--prefix", &s, &o]).await;
            }
        }
        c.run(&["get", "/", "--prefix", "--sort-by=MODIFY"]).await;
        c.run(&[
            "get",
            "/",
            "--prefix",
            "--order=DESCEND",
            "--limit=2",
            "-w",
            "json",
        ])
        .await;

        // txn (script on stdin): both branches, then json output.
        let script_ok = "value(\"/k1\") = \"v1b\"\n\nput /k1 t1\nget /k1\n\nput /k1 f1\n\n";
        let script_fail = "version(\"/k2\") > \"5\"\nmod(\"/k3\") = \"{R+3}\"\n\nput /k2 t2\n\nput /k2 f2\nget /k2 --prefix\ndel /dir --prefix\n\n";
        c.run_full(&["txn"], Some(script_ok), false).await;
        c.run_full(&["txn"], Some(script_fail), false).await;
        c.run_full(&["txn", "-w", "json"], Some(script_ok), false)
            .await;
        c.run_full(
            &["txn"],
            Some("create(\"/new\") = \"0\"\n\nput /new x\n\nget /new\n\n"),
            false,
        )
        .await;
        c.run_full(
            &["txn"],
            Some("value(\"/k1\") = \"x\"\n\nput /a 1\nput /a 2\n\n\n"),
            false,
        )
        .await;

        // del
        c.run(&["del", "/k3"]).await;
        c.run(&["del", "/missing"]).await;
        c.run(&["del", "/k1", "--prev-kv"]).await;
        c.run(&["del", "/dir", "--prefix"]).await;
        c.run(&["del", "/", "--prefix", "--prev-kv", "-w", "json"])
            .await;
        c.run(&["get", "", "--from-key"]).await;

        // leases
        c.run_grant(&["lease", "grant", "60"], None, false, Some("L1"))
            .await;
        c.run(&["put", "/l/a", "x", "--lease={L:L1}"]).await;
        c.run(&["put", "/l/b", "y", "--lease={L:L1}"]).await;
        c.run(&["put", "/l/c", "z", "--lease=1234abcd"]).await;
        c.run(&["lease", "timetolive", "{L:L1}", "--keys"]).await;
        c.run(&["lease", "timetolive", "{L:L1}"]).await;
        c.run(&["lease", "timetolive", "{L:L1}", "-w", "json"])
            .await;
        c.run(&["lease", "keep-alive", "--once", "{L:L1}"]).await;
        c.run_grant(&["lease", "grant", "100"], None, false, Some("L2"))
            .await;
        c.run_full(&["lease", "list"], None, true).await;
        c.run(&["lease", "revoke", "{L:L1}"]).await;
        c.run(&["get", "/l", "--prefix"]).await;
        c.run(&["lease", "revoke", "{L:L1}"]).await;
        c.run(&["lease", "timetolive", "{L:L1}"]).await;
        c.run(&["lease", "keep-alive", "--once", "{L:L1}"]).await;
        c.run(&["lease", "grant", "9000000001"]).await;
        c.run_full(&["lease", "list"], None, true).await;

        // compaction
        c.run(&["compaction", "{R+3}"]).await;
        c.run(&["get", "/k2", "--rev={R+1}"]).await;
        c.run(&["get", "/k2", "--rev={R+3}"]).await;
        c.run(&["compaction", "{R+2}"]).await;
        c.run(&["compaction", "{R+1000}"]).await;
        c.run(&["compaction", "--physical", "{R+5}"]).await;
        c.p.finish();
    });
}

/// Collect lines from a background etcdctl until `done` says so (or 10 s).
fn collect_until(w: &CtlLines, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    while !done(&lines) && Instant::now() < deadline {
        lines.extend(w.take(1, Duration::from_millis(200)));
    }
    lines
}

fn ends_with_sentinel(lines: &[String]) -> bool {
    lines.len() >= 2 && lines[lines.len() - 2] == "/w/zz" && lines[lines.len() - 1] == "end"
}

#[test]
fn v3_etcdctl_watch() {
    run(|| async {
        let mut c = Ctl::start("etcdctl v3 watch").await;
        c.run(&["put", "/w/a", "0"]).await; // R+1
        c.run(&["put", "/w/b", "0"]).await; // R+2
        // Background watches from the next revision (no race with the writes).
        let mut watchers = Vec::new();
        for side in [&c.p.etcd, &c.p.keel] {
            let ep = endpoint(side);
            let args = |a: &[&str]| a.iter().map(|x| subst(side, x)).collect::<Vec<_>>();
            watchers.push((
                v3::ctl_lines(&ep, &args(&["watch", "/w", "--prefix", "--rev={R+3}"])),
                v3::ctl_lines(
                    &ep,
                    &args(&["watch", "/w/", "--prefix", "--prev-kv", "--rev={R+3}"]),
                ),
                v3::ctl_lines(&ep, &args(&["watch", "/w/a", "/w/c", "--rev={R+3}"])),
            ));
        }
        c.run(&["put", "/w/a", "1"]).await;
        c.run(&["put", "/x/out", "1"]).await;
        c.run(&["put", "/w/b", "2"]).await;
        c.run(&["del", "/w/a"]).await;
        c.run(&["put", "/w/a", "3"]).await;
        c.run(&["del", "/w/", "--prefix"]).await;
        c.run(&["put", "/w/zz", "end"]).await;
        let mut outs: Vec<Value> = Vec::new();
        for (i, (plain, prev, range)) in watchers.into_iter().enumerate() {
            let side = if i == 0 { &c.p.etcd } else { &c.p.keel };
            let a = collect_until(&plain, ends_with_sentinel);
            let b = collect_until(&prev, ends_with_sentinel);
            // The range watch never sees the sentinel: it gets 6 events of 3
            // lines (put /w/a, put /w/b, del /w/a, put /w/a, 2 deletes).
            let r = collect_until(&range, |l| l.len() >= 18);
            let errs = [plain.stop(), prev.stop(), range.stop()];
            let n = |v: Vec<String>| normalize(side, &c.ids[i], &v.join("\n"), false);
            outs.push(json!({
                "watch --prefix --rev": n(a),
                "watch --prefix --prev-kv --rev": n(b),
                "watch range --rev": n(r),
                "stderr": errs.iter().map(|e| normalize(side, &c.ids[i], e, false)).collect::<Vec<_>>(),
            }));
        }
        c.p.compare("background watches", &outs[0], &outs[1]);

        // History replay: a watch from an old revision started afterwards.
        let mut outs = Vec::new();
        for (i, side) in [&c.p.etcd, &c.p.keel].into_iter().enumerate() {
            let ep = endpoint(side);
            let w = v3::ctl_lines(
                &ep,
                &[
                    String::from("watch"),
                    "/w/a".into(),
                    format!("--rev={}", side.rel(1)),
                ],
            );
            // /w/a: put 0, put 1, del, put 3, del = 5 events, 15 lines.
            let lines = collect_until(&w, |l| l.len() >= 15);
            let err = w.stop();
            outs.push(json!({
                "lines": normalize(side, &c.ids[i], &lines.join("\n"), false),
                "stderr": normalize(side, &c.ids[i], &err, false),
            }));
        }
        c.p.compare("etcdctl watch /w/a --rev=R+1 (history)", &outs[0], &outs[1]);

        // A watch from a compacted revision.
        c.run(&["compaction", "{R+4}"]).await;
        c.run(&["watch", "/w", "--prefix", "--rev={R+2}"]).await;
        c.p.finish();
    });
}

#[test]
fn v3_etcdctl_cluster_maintenance_snapshot() {
    run(|| async {
        let mut c = Ctl::start("etcdctl v3 cluster/maintenance/snapshot").await;
        c.run(&["put", "/s/a", "1"]).await;
        c.run(&["put", "/s/b", "2"]).await;
        c.run(&["member", "list"]).await;
        c.run(&["member", "list", "-w", "json"]).await;
        c.run(&["member", "list", "-w", "table"]).await;
        c.run(&["endpoint", "status"]).await;
        c.run(&["endpoint", "status", "-w", "json"]).await;
        c.run(&["endpoint", "health"]).await;
        c.run(&["endpoint", "hashkv"]).await;
        c.run(&["alarm", "list"]).await;
        c.run(&["defrag"]).await;
        c.run(&["member", "remove", "1234"]).await;
        c.run(&["move-leader", "1234"]).await;

        // snapshot save on both
        let files: Vec<PathBuf> = ["etcd.db", "keel.db"]
            .iter()
            .map(|f| c.dir.path().join(f))
            .collect();
        let mut outs = Vec::new();
        for (i, side) in [&c.p.etcd, &c.p.keel].into_iter().enumerate() {
            let ep = endpoint(side);
            let args = vec![
                "snapshot".to_string(),
                "save".into(),
                files[i].display().to_string(),
            ];
            let o = tokio::task::spawn_blocking(move || ctl_run(&ep, &args, None, CMD_TIMEOUT))
                .await
                .expect("etcdctl");
            let size = std::fs::metadata(&files[i]).map(|m| m.len()).unwrap_or(0);
            let mut j = c.out_json(i, &o, false);
            j["file_nonempty"] = json!(size > 0);
            j["sha256_trailer_ok"] = json!(
                std::fs::read(&files[i])
                    .map(|b| v3::snapshot_hash_ok(&b))
                    .unwrap_or(false)
            );
            outs.push(j);
        }
        // The log lines differ in detail (sizes, timings); compare exit code,
        // stdout and the file.
        for o in &mut outs {
            o.as_object_mut().expect("object").remove("stderr");
        }
        c.p.compare("etcdctl snapshot save FILE", &outs[0], &outs[1]);

        if c.p.keel.server.flavor == Flavor::Keel {
            restore_and_start(&mut c.p, &files[1], c.dir.path()).await;
        }

        // `--endpoints=http://…` (URL form): known keel-store limitation for
        // endpoint status / hashkv / defrag; recorded as a note.
        for cmd in [
            &["endpoint", "status"][..],
            &["endpoint", "hashkv"],
            &["defrag"],
            &["get", "/s/a"],
        ] {
            let mut res = Vec::new();
            for side in [&c.p.etcd, &c.p.keel] {
                let url = side.server.client_url();
                let args: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
                let o =
                    tokio::task::spawn_blocking(move || ctl_run(&url, &args, None, CMD_TIMEOUT))
                        .await
                        .expect("etcdctl");
                res.push(o);
            }
            let ok = |o: &CtlOut| o.code == Some(0);
            let msg = format!(
                "--endpoints=http://127.0.0.1:PORT {}: etcd {} / keel-store {}{}",
                cmd.join(" "),
                if ok(&res[0]) { "ok" } else { "FAILS" },
                if ok(&res[1]) { "ok" } else { "FAILS" },
                if ok(&res[1]) {
                    String::new()
                } else {
                    format!(" ({})", res[1].stderr.trim().lines().last().unwrap_or(""))
                }
            );
            eprintln!(
                "NOTE (informational; URL-form endpoints were a known keel-store limitation): {msg}"
            );
            c.p.note(msg);
        }
        c.p.finish();
    });
}

/// `keel-store snapshot restore FILE --data-dir DIR`, start keel-store on DIR,
/// and check the keys are there.
async fn restore_and_start(p: &mut V3Pair, file: &Path, tmp: &Path) {
    let dir = tmp.join("restored");
    let out = Command::new(keel_store_bin())
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("run keel-store snapshot restore");
    if !out.status.success() {
        p.fail(format!(
            "keel-store snapshot restore {} --data-dir {} failed: {}\nstdout: {}\nstderr: {}",
            file.display(),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        return;
    }
    let mut server = tokio::task::spawn_blocking(|| Server::start(Flavor::Keel))
        .await
        .expect("start");
    server.data_dir = dir.clone();
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .expect("restart on the restored dir");
    let mut client = v3::connect(&server).await;
    let r = v3::within(
        "get /s/ on the restored store",
        client.get("/s/", Some(GetOptions::new().with_prefix())),
    )
    .await;
    let got: Vec<(String, String)> = match &r {
        Ok(r) => r
            .kvs()
            .iter()
            .map(|kv| (v3::text(kv.key()), v3::text(kv.value())))
            .collect(),
        Err(e) => {
            p.fail(format!("range on the restored keel-store failed: {e}"));
            return;
        }
    };
    let want = vec![
        ("/s/a".to_string(), "1".to_string()),
        ("/s/b".to_string(), "2".to_string()),
    ];
    if got != want {
        p.fail(format!(
            "keel-store restored from its snapshot: /s/ holds {got:?}, expected {want:?}\n--- log tail:\n{}",
            server.log_tail(20)
        ));
    }
    let rev = v3::current_revision(&mut client).await;
    let orig = v3::current_revision(&mut p.keel.client).await;
    eprintln!(
        "keel-store restored from its snapshot: /s/ = {got:?}, revision {rev} (original {orig})"
    );
    if rev != orig {
        p.fail(format!(
            "keel-store restored from its snapshot is at revision {rev}, the original at {orig}"
        ));
    }
}

#[test]
fn v3_etcdctl_load() {
    run(|| async {
        const WRITERS: usize = 16;
        const PER_WRITER: usize = 200; // 3200 puts per server
        let mut p = V3Pair::start("etcdctl v3 load").await;
        let mut summary = Vec::new();
        for side in [&mut p.etcd, &mut p.keel] {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..WRITERS {
                let mut client = side.client.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..PER_WRITER {
                        let key = format!("/perf/{w:02}/{i:04}");
                        let val = "x".repeat(64);
                        v3::within(&key, client.put(key.as_str(), val, None))
                            .await
                            .unwrap_or_else(|e| panic!("put {key}: {e}"));
                    }
                }));
            }
            for t in tasks {
                t.await.expect("writer");
            }
            let took = start.elapsed();
            eprintln!(
                "{}: {} concurrent puts ({WRITERS} writers) in {took:?} ({:.0}/s)",
                side.name(),
                WRITERS * PER_WRITER,
                (WRITERS * PER_WRITER) as f64 / took.as_secs_f64()
            );
            let ep = endpoint(side);
            let o = tokio::task::spawn_blocking(move || {
                ctl_run(
                    &ep,
                    &[
                        "get".into(),
                        "/perf/".into(),
                        "--prefix".into(),
                        "--limit=1".into(),
                        "-w".into(),
                        "json".into(),
                    ],
                    None,
                    CMD_TIMEOUT,
                )
            })
            .await
            .expect("etcdctl");
            let count = serde_json::from_str::<Value>(o.stdout.trim())
                .ok()
                .and_then(|v| v["count"].as_i64());
            let rev = v3::current_revision(&mut side.client).await;
            let ep = endpoint(side);
            let d = tokio::task::spawn_blocking(move || {
                ctl_run(
                    &ep,
                    &["del".into(), "/perf/".into(), "--prefix".into()],
                    None,
                    CMD_TIMEOUT,
                )
            })
            .await
            .expect("etcdctl");
            summary.push(json!({
                "count": count,
                "revision": side.norm.rev(rev),
                "del_exit": d.code,
                "deleted": d.stdout.trim(),
            }));
        }
        p.compare(
            "3200 concurrent puts, then etcdctl get --prefix --limit=1 -w json / del --prefix",
            &summary[0],
            &summary[1],
        );
        p.finish();
    });
}
