//! Client compatibility: Debian's `etcdctl` 3.4 in v2 mode (`ETCDCTL_API=2`)
//! runs the same commands against etcd and keel-store; exit codes and
//! (normalised) stdout/stderr must match. Each scenario runs with and
//! without `--no-sync` (with sync, etcdctl first reads `/v2/members` and then
//! talks to the advertised `clientURLs`).
//!
//! Run: `cargo test -p keel-tests --test v2_etcdctl`

use std::time::{Duration, Instant};

use keel_tests::ctl::{self, CtlNorm, CtlOut, LineProc};
use keel_tests::http::Req;
use keel_tests::pair::{Pair, Side};

const CMD_TIMEOUT: Duration = Duration::from_secs(20);

struct Ctl {
    p: Pair,
    sync: bool,
}

impl Ctl {
    fn start(name: &str, sync: bool) -> Ctl {
        let name = format!("{name}{}", if sync { "(sync)" } else { "(--no-sync)" });
        Ctl {
            p: Pair::start(&name),
            sync,
        }
    }

    /// Substitute `{i+N}` and `{cur}` (the side's current X-Etcd-Index).
    fn args(side: &Side, args: &[&str]) -> Vec<String> {
        let cur = if args.iter().any(|a| a.contains("{cur}")) {
            side.send(&Req::get("/v2/keys/"))
                .etcd_index()
                .unwrap_or(0)
                .to_string()
        } else {
            String::new()
        };
        args.iter()
            .map(|a| side.subst(&a.replace("{cur}", &cur)))
            .collect()
    }

    fn run(&mut self, args: &[&str]) -> (CtlOut, CtlOut) {
        self.run_n(args, CtlNorm::default())
    }

    fn run_n(&mut self, args: &[&str], n: CtlNorm) -> (CtlOut, CtlOut) {
        let e = ctl::run(
            &self.p.etcd.server.client_url(),
            self.sync,
            &Self::args(&self.p.etcd, args),
            CMD_TIMEOUT,
        );
        let k = ctl::run(
            &self.p.keel.server.client_url(),
            self.sync,
            &Self::args(&self.p.keel, args),
            CMD_TIMEOUT,
        );
        self.compare(&args.join(" "), &e, &k, n);
        (e, k)
    }

    fn compare(&mut self, label: &str, e: &CtlOut, k: &CtlOut, n: CtlNorm) {
        let (ce, ck) = (&self.p.etcd.ctx, &self.p.keel.ctx);
        let mut diffs = Vec::new();
        if e.code != k.code || e.timed_out != k.timed_out {
            diffs.push(format!(
                "exit code: etcd {:?}{} != keel {:?}{}",
                e.code,
                if e.timed_out { " (timed out)" } else { "" },
                k.code,
                if k.timed_out { " (timed out)" } else { "" }
            ));
        }
        let (so_e, so_k) = (
            ctl::normalize(&e.stdout, ce, n),
            ctl::normalize(&k.stdout, ck, n),
        );
        if so_e != so_k {
            diffs.push(format!("stdout: etcd {so_e:?} != keel {so_k:?}"));
        }
        let n_err = CtlNorm {
            sort_lines: false,
            ..n
        };
        let (se_e, se_k) = (
            ctl::normalize(&e.stderr, ce, n_err),
            ctl::normalize(&k.stderr, ck, n_err),
        );
        if se_e != se_k {
            diffs.push(format!("stderr: etcd {se_e:?} != keel {se_k:?}"));
        }
        if !diffs.is_empty() {
            let mut s = format!("etcdctl {label}\n  differences:\n");
            for d in diffs {
                s.push_str(&format!("    - {d}\n"));
            }
            s.push_str(&format!(
                "  ── etcd: {}\n  ── keel: {}\n",
                e.render(),
                k.render()
            ));
            self.p.fail(s);
        }
    }

    /// Resolve the `watch` arguments (`{cur}` = index before the trigger),
    /// run `trigger` (etcdctl args) on both servers, then run the watch,
    /// which replays the event from history. Starting the watch after the
    /// trigger keeps its `X-Etcd-Index` (printed by `-o extended`)
    /// deterministic; live delivery is covered by the plain/forever/exec
    /// watches below.
    fn watch_then(&mut self, watch_args: &[&str], trigger: &[&str], n: CtlNorm) {
        let resolved: Vec<Vec<String>> = self
            .p
            .sides()
            .iter()
            .map(|side| Self::args(side, watch_args))
            .collect();
        self.run(trigger);
        let mut children = Vec::new();
        for (side, args) in self.p.sides().into_iter().zip(&resolved) {
            children.push(ctl::spawn(&side.server.client_url(), self.sync, args));
        }
        let deadline = Instant::now() + CMD_TIMEOUT;
        let e = ctl::collect(&mut children[0], deadline);
        let k = ctl::collect(&mut children[1], deadline);
        // Guard against a harness mistake that makes both sides silent.
        if e.code != Some(0) || e.stdout.trim().is_empty() {
            self.p.fail(format!(
                "reference etcd: `etcdctl {}` did not report an event: {}",
                watch_args.join(" "),
                e.render()
            ));
        }
        self.compare(
            &format!(
                "{}   (after: etcdctl {})",
                watch_args.join(" "),
                trigger.join(" ")
            ),
            &e,
            &k,
            n,
        );
    }
}

fn cmds(sync: bool) {
    let mut c = Ctl::start("etcdctl_commands", sync);
    let n_idx = CtlNorm {
        cause_indexes: true,
        ..CtlNorm::default()
    };
    let sorted = CtlNorm {
        sort_lines: true,
        ..CtlNorm::default()
    };
    c.run(&["cluster-health"]);
    c.run(&["member", "list"]);
    c.run(&["--debug", "get", "/nothing-yet"]);
    c.run(&["set", "/ctl/a", "1"]);
    c.run(&["get", "/ctl/a"]);
    c.run(&["--debug", "get", "/ctl/a"]);
    c.run(&["-o", "extended", "get", "/ctl/a"]);
    c.run(&["-o", "json", "get", "/ctl/a"]);
    c.run(&["get", "--quorum", "/ctl/a"]);
    c.run(&["mk", "/ctl/a", "2"]);
    c.run(&["set", "/ctl/a", "2", "--swap-with-value", "9"]);
    c.run(&["set", "/ctl/a", "2", "--swap-with-value", "1"]);
    c.run_n(
        &["set", "/ctl/a", "3", "--swap-with-index", "{i+1000}"],
        n_idx,
    );
    c.run_n(&["set", "/ctl/a", "3", "--swap-with-index", "{i+2}"], n_idx);
    c.run(&["-o", "extended", "set", "/ctl/a", "4"]);
    c.run(&["-o", "json", "update", "/ctl/a", "5"]);
    c.run(&["update", "/ctl/nope", "x"]);
    c.run(&["mk", "/ctl/b", "bee"]);
    c.run(&["mk", "--in-order", "/ctl/queue", "job1"]);
    c.run(&["mk", "--in-order", "/ctl/queue", "job2"]);
    c.run_n(&["ls", "--sort", "/ctl/queue"], CtlNorm::default());
    c.run(&["mk", "/ctl/ttl", "v", "--ttl", "100"]);
    c.run(&["mkdir", "/ctl/d"]);
    c.run(&["mkdir", "/ctl/d"]);
    c.run(&["setdir", "/ctl/d2"]);
    c.run(&["updatedir", "/ctl/d2", "--ttl", "100"]);
    c.run(&["updatedir", "/ctl/nodir", "--ttl", "100"]);
    c.run(&["set", "/ctl/d/x", "y", "--ttl", "60"]);
    c.run(&["set", "/ctl/d/_hidden", "h"]);
    c.run_n(&["ls", "/ctl"], sorted);
    c.run_n(&["ls", "--recursive", "/ctl"], sorted);
    c.run_n(&["ls", "--recursive", "-p", "/ctl"], sorted);
    c.run(&["ls", "--sort", "--recursive", "-p", "/ctl"]);
    c.run(&["ls", "/nope"]);
    c.run(&["ls", "/ctl/a"]);
    c.run(&["get", "/ctl/d"]);
    c.run(&["get", "/ctl/d/_hidden"]);
    c.run(&["rm", "/ctl/d"]);
    c.run(&["rmdir", "/ctl/d"]);
    c.run(&["rm", "--dir", "/ctl/d"]);
    c.run(&["rm", "--recursive", "/ctl/d"]);
    c.run(&["rm", "/ctl/a", "--with-value", "nope"]);
    c.run_n(&["rm", "/ctl/a", "--with-index", "{i+1000}"], n_idx);
    c.run(&["rm", "/ctl/a", "--with-value", "5"]);
    c.run(&["rmdir", "/ctl/d2"]);
    c.run(&["rmdir", "/ctl/b"]);
    c.run(&["rmdir", "/ctl/nope"]);
    c.run(&["get", "/ctl/nope"]);
    c.run(&["get", "/ctl/a"]);
    c.run(&["rm", "/ctl/nope"]);
    c.run(&["rm", "--recursive", "/ctl"]);
    c.run(&["ls", "/"]);
    c.run(&["set", "/"]);
    c.run(&["rm", "--recursive", "/"]);
    c.p.finish();
}

fn watches(sync: bool) {
    let mut c = Ctl::start("etcdctl_watch", sync);
    let sorted = CtlNorm {
        sort_lines: true,
        ..CtlNorm::default()
    };
    c.run(&["set", "/w/a", "1"]);
    // watch --after-index: the event is found however late the watch starts.
    c.watch_then(
        &["watch", "--after-index", "{cur}", "/w/a"],
        &["set", "/w/a", "2"],
        CtlNorm::default(),
    );
    c.watch_then(
        &["watch", "--after-index", "{cur}", "/w/gone"],
        &["set", "/w/gone", "x"],
        CtlNorm::default(),
    );
    c.watch_then(
        &["watch", "--recursive", "--after-index", "{cur}", "/w"],
        &["set", "/w/sub/k", "3"],
        CtlNorm::default(),
    );
    c.watch_then(
        &["-o", "extended", "watch", "--after-index", "{cur}", "/w/a"],
        &["rm", "/w/a"],
        CtlNorm::default(),
    );
    c.watch_then(
        &["-o", "json", "watch", "--after-index", "{cur}", "/w/b"],
        &["mk", "/w/b", "bee"],
        CtlNorm::default(),
    );
    c.run(&["watch", "--after-index", "{i+1}", "/w/a"]);

    // A plain watch (no index): keep writing the same value until the watch
    // (registered at some unknown moment) reports it.
    let mut outs = Vec::new();
    for side in c.p.sides() {
        let mut child = ctl::spawn(
            &side.server.client_url(),
            sync,
            &["watch".into(), "/w/plain".into()],
        );
        let deadline = Instant::now() + CMD_TIMEOUT;
        loop {
            let _ = side.send(&Req::put("/v2/keys/w/plain", "value=hello"));
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        outs.push(ctl::collect(
            &mut child,
            Instant::now() + Duration::from_secs(5),
        ));
    }
    // The number of writes above depends on timing: realign the indexes.
    c.p.realign();
    if outs[0].stdout.trim() != "hello" {
        c.p.fail(format!(
            "reference etcd: plain watch gave {}",
            outs[0].render()
        ));
    }
    c.compare(
        "watch /w/plain   (while setting it to hello repeatedly)",
        &outs[0],
        &outs[1],
        CtlNorm::default(),
    );

    // watch --forever: several events, then the process is stopped.
    let mut procs = Vec::new();
    for side in c.p.sides() {
        let args = Ctl::args(
            side,
            &["watch", "--forever", "--after-index", "{cur}", "/w/f"],
        );
        procs.push(LineProc::spawn(&side.server.client_url(), sync, &args));
    }
    c.run(&["set", "/w/f", "1"]);
    c.run(&["set", "/w/f", "2"]);
    c.run(&["rm", "/w/f"]);
    collect_lines(&mut c, procs, 3, "watch --forever /w/f", CtlNorm::default());

    // exec-watch: one command run per event (they may finish out of order).
    let script = r#"echo "$ETCD_WATCH_ACTION $ETCD_WATCH_KEY value=$ETCD_WATCH_VALUE idx=$ETCD_WATCH_MODIFIED_INDEX""#;
    let mut procs = Vec::new();
    for side in c.p.sides() {
        // etcdctl v2 takes the key as the *last* argument when a flag is given.
        let args = Ctl::args(
            side,
            &[
                "exec-watch",
                "--after-index={cur}",
                "sh",
                "-c",
                script,
                "/w/e",
            ],
        );
        procs.push(LineProc::spawn(&side.server.client_url(), sync, &args));
    }
    c.run(&["set", "/w/e", "1"]);
    c.run(&["update", "/w/e", "2"]);
    c.run(&["rm", "/w/e"]);
    collect_lines(&mut c, procs, 3, "exec-watch /w/e", sorted);

    let mut procs = Vec::new();
    for side in c.p.sides() {
        let args = Ctl::args(
            side,
            &[
                "exec-watch",
                "--recursive",
                "--after-index={cur}",
                "sh",
                "-c",
                script,
                "/w/er",
            ],
        );
        procs.push(LineProc::spawn(&side.server.client_url(), sync, &args));
    }
    c.run(&["set", "/w/er/x", "1"]);
    c.run(&["mkdir", "/w/er/dir"]);
    c.run(&["set", "/w/er/y", "2"]);
    collect_lines(&mut c, procs, 2, "exec-watch --recursive /w/er", sorted);
    c.p.finish();
}

/// Read `n` stdout lines from each side's long-running etcdctl, stop them and
/// compare.
fn collect_lines(c: &mut Ctl, procs: Vec<LineProc>, n: usize, label: &str, norm: CtlNorm) {
    let mut outs = Vec::new();
    for (i, p) in procs.into_iter().enumerate() {
        let mut lines = Vec::new();
        let deadline = Instant::now() + CMD_TIMEOUT;
        while lines.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match p.next_line(left) {
                Some(l) => lines.push(l),
                None => break,
            }
        }
        let stderr = p.stop();
        if i == 0 && lines.len() < n {
            c.p.fail(format!("reference etcd: `{label}` printed only {} of {n} lines: {lines:?} (stderr {stderr:?})", lines.len()));
        }
        outs.push(CtlOut {
            code: None,
            stdout: lines.join("\n"),
            stderr: stderr
                .lines()
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("\n"),
            timed_out: false,
        });
    }
    c.compare(label, &outs[0], &outs[1], norm);
}

#[test]
fn etcdctl_commands_no_sync() {
    cmds(false);
}

#[test]
fn etcdctl_commands_sync() {
    cmds(true);
}

#[test]
fn etcdctl_watch_no_sync() {
    watches(false);
}

#[test]
fn etcdctl_watch_sync() {
    watches(true);
}
