//! OCI hooks: each runs with the container's state JSON on stdin, its own args and env,
//! and an optional timeout; a failing hook fails the lifecycle step that ran it
//! (except `poststart`/`poststop`, which only warn, as the spec says).

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub timeout: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{kind} hook {path}: cannot run")]
    Spawn {
        kind: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind} hook {path}: exited with {status}: {stderr}")]
    Failed {
        kind: &'static str,
        path: String,
        status: String,
        stderr: String,
    },
    #[error("{kind} hook {path}: timed out after {secs} s")]
    Timeout {
        kind: &'static str,
        path: String,
        secs: i64,
    },
}

impl Hook {
    pub fn from_spec(h: &oci_spec::runtime::Hook) -> Hook {
        Hook {
            path: h.path().display().to_string(),
            args: h.args().clone().unwrap_or_default(),
            env: h.env().clone().unwrap_or_default(),
            timeout: h.timeout(),
        }
    }
}

/// The hooks of one kind from the spec.
pub fn of(spec: &oci_spec::runtime::Spec, kind: &str) -> Vec<Hook> {
    let Some(h) = spec.hooks() else {
        return Vec::new();
    };
    let list = match kind {
        "prestart" => h.prestart(),
        "createRuntime" => h.create_runtime(),
        "createContainer" => h.create_container(),
        "startContainer" => h.start_container(),
        "poststart" => h.poststart(),
        "poststop" => h.poststop(),
        _ => &None,
    };
    list.as_deref()
        .unwrap_or_default()
        .iter()
        .map(Hook::from_spec)
        .collect()
}

/// Runs every hook of a kind whose failure only warns (`poststart`, `poststop`): a
/// failing hook is reported on stderr and the next one still runs, as the spec says.
pub fn run_warning(kind: &'static str, hooks: &[Hook], state: &str) {
    for h in hooks {
        if let Err(e) = run(kind, std::slice::from_ref(h), state) {
            eprintln!("keel-containerd: warning: {}", crate::error_chain(&e));
        }
    }
}

/// Runs `hooks` in order with `state` on stdin; the first failure stops them.
pub fn run(kind: &'static str, hooks: &[Hook], state: &str) -> Result<(), HookError> {
    for h in hooks {
        let mut cmd = std::process::Command::new(&h.path);
        if h.args.len() > 1 {
            cmd.args(&h.args[1..]);
        }
        if let Some(arg0) = h.args.first() {
            std::os::unix::process::CommandExt::arg0(&mut cmd, arg0);
        }
        cmd.env_clear();
        for e in &h.env {
            if let Some((k, v)) = e.split_once('=') {
                cmd.env(k, v);
            }
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| HookError::Spawn {
                kind,
                path: h.path.clone(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(state.as_bytes());
        }
        let deadline = h
            .timeout
            .filter(|t| *t > 0)
            .map(|t| Instant::now() + Duration::from_secs(t as u64));
        let status = loop {
            if let Some(s) = child.try_wait().map_err(|source| HookError::Spawn {
                kind,
                path: h.path.clone(),
                source,
            })? {
                break s;
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookError::Timeout {
                    kind,
                    path: h.path.clone(),
                    secs: h.timeout.unwrap_or(0),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if !status.success() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut stderr);
            }
            return Err(HookError::Failed {
                kind,
                path: h.path.clone(),
                status: status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
    }
    Ok(())
}
