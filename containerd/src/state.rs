//! Container state under `--root/<id>/`: `state.json` (written atomically) and, between
//! `create` and `start`, the `exec.fifo` the container's init blocks on.
//!
//! The status is derived, not stored: `created` while the init waits on the fifo,
//! `running` while the process lives (same pid and start time), `stopped` after.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("invalid container id {0:?}: use letters, digits, '_', '+', '-' and '.'")]
    BadId(String),
    #[error("{path}: cannot {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a container state file")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The runtime-spec status values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// What the runtime remembers about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`, so a reused pid is not mistaken for the container.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339.
    pub created: String,
    /// Cgroup directories the container's processes live in.
    #[serde(default)]
    pub cgroup_dirs: Vec<PathBuf>,
    /// The container's cgroup path relative to each hierarchy.
    #[serde(default)]
    pub cgroup_path: PathBuf,
    /// The transient scope holding the cgroup (systemd driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<String>,
    /// Hooks to run after the container stops (`poststop`), from the spec.
    #[serde(default)]
    pub poststop: Vec<crate::hooks::Hook>,
}

/// Whether `id` is a valid container id (runc's rule).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'))
}

pub fn dir(root: &Path, id: &str) -> Result<PathBuf, StateError> {
    if !valid_id(id) {
        return Err(StateError::BadId(id.to_string()));
    }
    Ok(root.join(id))
}

/// The start time of `pid` (field 22 of /proc/pid/stat) and whether it is a zombie.
pub fn proc_start(pid: i32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // after ')' : state is field 3 → index 0; starttime is field 22 → index 19.
    let zombie = fields.first().is_some_and(|s| *s == "Z" || *s == "X");
    Some((fields.get(19)?.parse().ok()?, zombie))
}

impl Saved {
    pub fn load(root: &Path, id: &str) -> Result<Saved, StateError> {
        let path = dir(root, id)?.join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_string()));
            }
            Err(source) => {
                return Err(StateError::Io {
                    path,
                    op: "read",
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes).map_err(|source| StateError::Json { path, source })
    }

    /// Writes state.json atomically.
    pub fn save(&self, root: &Path) -> Result<(), StateError> {
        let d = dir(root, &self.id)?;
        let path = d.join(STATE_FILE);
        let io = |op: &'static str| {
            let path = path.clone();
            move |source| StateError::Io { path, op, source }
        };
        let mut tmp =
            tempfile::NamedTempFile::new_in(&d).map_err(io("create a temp file beside"))?;
        tmp.write_all(&serde_json::to_vec(self).expect("state serialises"))
            .map_err(io("write"))?;
        tmp.as_file().sync_all().map_err(io("fsync"))?;
        tmp.persist(&path)
            .map_err(|e| e.error)
            .map_err(io("rename onto"))?;
        Ok(())
    }

    /// Whether the container's process still exists (same start time, not a zombie).
    pub fn alive(&self) -> bool {
        self.pid > 0
            && proc_start(self.pid).is_some_and(|(t, zombie)| t == self.start_time && !zombie)
    }

    pub fn status(&self, root: &Path) -> Status {
        if !self.alive() {
            return Status::Stopped;
        }
        let fifo = root.join(&self.id).join(EXEC_FIFO);
        if fifo.exists() {
            Status::Created
        } else if crate::cgroups::Layout::detect()
            .is_ok_and(|l| crate::cgroups::is_frozen(&l, &self.cgroup_path))
        {
            Status::Paused
        } else {
            Status::Running
        }
    }

    /// The runtime-spec state document.
    pub fn oci_state(&self, root: &Path) -> serde_json::Value {
        let status = self.status(root);
        serde_json::json!({
            "ociVersion": self.oci_version,
            "id": self.id,
            "status": status.as_str(),
            "pid": if status == Status::Stopped { 0 } else { self.pid },
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "annotations": self.annotations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("web-1.a_b+c"));
        for bad in ["", ".", "..", "a/b", "a b", "ü"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn own_process_start_time() {
        let (t, zombie) = proc_start(std::process::id() as i32).unwrap();
        assert!(t > 0 && !zombie);
    }
}
