//! The updater's persistent state (`/var/lib/keel/updater/state.json`, atomic writes):
//! the minimum rollback index, an install in progress (for resume), the installed update
//! waiting for its first good boot, and versions that rolled back (never retried).

use crate::boot::Slot;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: cannot {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid updater state")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// An install that has started writing the inactive slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// SHA-256 of the signed manifest bytes: resume only the same payload.
    pub manifest_sha256: String,
    pub version: String,
    pub slot: Slot,
    /// Chunks before this one are written, verified and synced.
    pub next_chunk: u64,
    pub source: String,
}

/// An installed update waiting for its first good boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub version: String,
    pub slot: Slot,
    pub rollback_index: u64,
    pub from_version: String,
    pub from_slot: Slot,
    pub installed_at: i64,
    /// The boot the update was installed in: the same boot id later means "not rebooted
    /// yet", another one on the old slot means the update rolled back.
    #[serde(default)]
    pub boot_id: String,
}

/// A version that came back on the old slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    pub version: String,
    pub at: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub min_rollback_index: u64,
    pub progress: Option<Progress>,
    pub pending: Option<Pending>,
    pub rolled_back: Vec<RolledBack>,
    /// Installs paused by the operator.
    pub paused: bool,
}

impl State {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Reads the state (missing = fresh).
    pub fn load(dir: &Path) -> Result<State, StateError> {
        let path = State::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| StateError::Json { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(source) => Err(StateError::Io {
                path,
                op: "read",
                source,
            }),
        }
    }

    /// Writes the state durably (temp file, fsync, rename, fsync dir).
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = State::path(dir);
        let io = |op: &'static str| {
            let path = path.clone();
            move |source| StateError::Io { path, op, source }
        };
        std::fs::create_dir_all(dir).map_err(io("create the directory of"))?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(dir).map_err(io("create a temp file beside"))?;
        let json = serde_json::to_vec_pretty(self).expect("state serialises");
        tmp.write_all(&json).map_err(io("write"))?;
        tmp.as_file().sync_all().map_err(io("fsync"))?;
        tmp.persist(&path)
            .map_err(|e| e.error)
            .map_err(io("rename onto"))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync the directory of"))
    }

    pub fn is_rolled_back(&self, version: &str) -> bool {
        self.rolled_back.iter().any(|r| r.version == version)
    }
}
