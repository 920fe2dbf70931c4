//! Loading and checking a bundle's `config.json` (runtime-spec 1.x, through `oci-spec`).
//! Every error names the bundle file and the field.

use oci_spec::runtime::Spec;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: cannot read the bundle's config")]
    Read {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("{path}: {field}: {why}")]
    Field {
        path: PathBuf,
        field: &'static str,
        why: String,
    },
}

/// A checked bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub spec: Spec,
    /// `root.path`, resolved against the bundle directory.
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Reads `<dir>/config.json`.
    pub fn load(dir: &Path) -> Result<Bundle, SpecError> {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let config = dir.join("config.json");
        let spec = Spec::load(&config).map_err(|source| SpecError::Read {
            path: config.clone(),
            source,
        })?;
        let field = |field: &'static str, why: String| SpecError::Field {
            path: config.clone(),
            field,
            why,
        };
        let version = spec.version();
        if !version.starts_with("1.") {
            return Err(field(
                "ociVersion",
                format!("{version:?} is not a runtime-spec 1.x version"),
            ));
        }
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| field("root", "missing".into()))?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            dir.join(root.path())
        };
        if !rootfs.is_dir() {
            return Err(field(
                "root.path",
                format!("{} is not a directory", rootfs.display()),
            ));
        }
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| field("process", "missing".into()))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(field("process.args", "must name the program to run".into()));
        }
        if !process.cwd().is_absolute() {
            return Err(field(
                "process.cwd",
                format!("{} is not absolute", process.cwd().display()),
            ));
        }
        for m in spec.mounts().as_deref().unwrap_or_default() {
            if !m.destination().is_absolute() {
                return Err(field(
                    "mounts.destination",
                    format!("{} is not absolute", m.destination().display()),
                ));
            }
        }
        if let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            crate::seccomp::compile(seccomp).map_err(|why| field("linux.seccomp", why))?;
        }
        Ok(Bundle {
            dir,
            config,
            spec,
            rootfs,
        })
    }
}
