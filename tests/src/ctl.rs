//! Running `etcdctl` (v2 mode) against a server and normalising its output.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::norm::{self, NormCtx, Opts};
use crate::server::etcdctl_bin;

/// Result of one etcdctl invocation.
#[derive(Debug, Clone)]
pub struct CtlOut {
    /// Exit code (`None` if killed by a signal / timed out).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl CtlOut {
    pub fn render(&self) -> String {
        format!(
            "exit {:?}{}\n    stdout: {:?}\n    stderr: {:?}",
            self.code,
            if self.timed_out {
                " (timed out, killed)"
            } else {
                ""
            },
            self.stdout,
            self.stderr
        )
    }
}

/// Global arguments for `endpoint`, with or without `--no-sync`.
pub fn global_args(endpoint: &str, sync: bool) -> Vec<String> {
    let mut a = vec![format!("--endpoints={endpoint}")];
    if !sync {
        a.push("--no-sync".into());
    }
    a
}

fn command(endpoint: &str, sync: bool, args: &[String]) -> Command {
    let mut c = Command::new(etcdctl_bin());
    c.env("ETCDCTL_API", "2")
        .args(global_args(endpoint, sync))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Run etcdctl to completion (killed after `timeout`).
pub fn run(endpoint: &str, sync: bool, args: &[String], timeout: Duration) -> CtlOut {
    let mut child = command(endpoint, sync, args)
        .spawn()
        .expect("spawn etcdctl");
    collect(&mut child, Instant::now() + timeout)
}

/// Spawn etcdctl (for `watch`), to be completed with [`collect`].
pub fn spawn(endpoint: &str, sync: bool, args: &[String]) -> Child {
    command(endpoint, sync, args)
        .spawn()
        .expect("spawn etcdctl")
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Wait for a child (killing it at `deadline`) and collect its output.
pub fn collect(child: &mut Child, deadline: Instant) -> CtlOut {
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(_) => break None,
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    CtlOut {
        code: status.and_then(|s| s.code()),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
    }
}

/// A long-running etcdctl whose stdout lines arrive on a channel.
#[derive(Debug)]
pub struct LineProc {
    pub child: Child,
    pub lines: Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl LineProc {
    pub fn spawn(endpoint: &str, sync: bool, args: &[String]) -> LineProc {
        Self::from_command(command(endpoint, sync, args))
    }

    /// Run `cmd` (stdout and stderr piped) with its stdout lines arriving on a channel.
    pub fn from_command(mut cmd: std::process::Command) -> LineProc {
        let mut child = cmd.spawn().expect("spawn etcdctl");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                match l {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        let stderr = Some(reader(child.stderr.take()));
        LineProc {
            child,
            lines: rx,
            stderr,
        }
    }

    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Collect lines until `n` arrived or `timeout` passed.
    pub fn take(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => out.push(l),
                Err(_) => break,
            }
        }
        out
    }

    /// Kill the process and return its stderr.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for LineProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Options for normalising etcdctl output.
#[derive(Debug, Clone, Copy, Default)]
pub struct CtlNorm {
    /// Sort stdout lines (unsorted `ls`).
    pub sort_lines: bool,
    /// Numbers inside `[a != b]` of a compare-failed error are indexes.
    pub cause_indexes: bool,
}

/// Normalise etcdctl output (stdout or stderr) for comparison.
pub fn normalize(text: &str, ctx: &NormCtx, opts: CtlNorm) -> String {
    let mut lines: Vec<String> = text.lines().map(|l| normalize_line(l, ctx, opts)).collect();
    if opts.sort_lines {
        lines.sort();
    }
    lines.join("\n")
}

fn normalize_line(line: &str, ctx: &NormCtx, opts: CtlNorm) -> String {
    let t = line.trim_start();
    if t.starts_with('{')
        && let Ok(v) = serde_json::from_str::<Value>(t)
    {
        let mut issues = Vec::new();
        let o = Opts {
            unordered: true,
            ..Opts::default()
        };
        let n = norm::normalize_json(&v, ctx, &o, SystemTime::now(), &mut issues);
        let mut s = n.to_string();
        for i in issues {
            s.push_str(&format!("  <issue: {i}>"));
        }
        return s;
    }
    // "Error:  105: Key already exists (/ctl/a) [1138]"
    if let Some(rest) = line.strip_prefix("Error:") {
        let (mut body, mut tail) = (rest.to_string(), String::new());
        if let Some(open) = rest.rfind(" [")
            && rest.ends_with(']')
            && let Ok(n) = rest[open + 2..rest.len() - 1].parse::<u64>()
        {
            body = rest[..open].to_string();
            tail = format!(" [{}]", ctx.idx_str_current(n));
        }
        if opts.cause_indexes {
            body = ctx.cause_brackets(&body, None);
        }
        return format!("Error:{}{tail}", ctx.text(&body));
    }
    if let Some(n) = line
        .strip_prefix("TTL: ")
        .and_then(|n| n.trim().parse::<i64>().ok())
        && n != 0
    {
        // Remaining TTL depends on timing.
        return "TTL: <nonzero>".into();
    }
    for prefix in ["Created-Index: ", "Modified-Index: ", "Index: "] {
        if let Some(n) = line
            .strip_prefix(prefix)
            .and_then(|n| n.trim().parse::<u64>().ok())
        {
            return format!("{prefix}{}", ctx.idx_str_current(n));
        }
    }
    // Tokens `idx=N` (used by the exec-watch helper script) and key paths
    // (in-order keys contain indexes).
    let mut out = Vec::new();
    for tok in line.split(' ') {
        if let Some(n) = tok.strip_prefix("idx=").and_then(|n| n.parse::<u64>().ok()) {
            out.push(format!("idx={}", ctx.idx_str_current(n)));
        } else if tok.starts_with('/') {
            out.push(ctx.key(tok));
        } else {
            out.push(tok.to_string());
        }
    }
    ctx.text(&out.join(" "))
}
