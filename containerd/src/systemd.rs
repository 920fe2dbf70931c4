//! The systemd cgroup driver (`--systemd-cgroup`, crun's `--cgroup-manager systemd`):
//! the container's cgroup is a transient scope systemd creates through its D-Bus API
//! (`StartTransientUnit`, `Delegate=yes`), named from `linux.cgroupsPath` as runc reads it
//! (`slice:prefix:name` → `prefix-name.scope` in `slice`; default
//! `system.slice:keel:<id>`). Limits go to the unit's properties and to cgroupfs.
//!
//! A scope needs a process when it starts: the runtime starts it with itself, makes the
//! container (whose processes are born in it), then moves itself back.

use oci_spec::runtime::LinuxResources;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use zbus::zvariant::{OwnedObjectPath, Value};

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error(
        "linux.cgroupsPath {0:?}: the systemd cgroup driver takes slice:prefix:name (e.g. system.slice:keel:web)"
    )]
    Path(String),
    #[error("systemd over D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("systemd did not put the runtime into {unit} within {secs} s")]
    Timeout { unit: String, secs: u64 },
    #[error("{path}: cannot {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// `(slice, unit)` for `linux.cgroupsPath` (or the default for `id`).
pub fn unit_for(cgroups_path: Option<&str>, id: &str) -> Result<(String, String), SystemdError> {
    let Some(p) = cgroups_path else {
        return Ok(("system.slice".into(), format!("keel-{id}.scope")));
    };
    let parts: Vec<&str> = p.split(':').collect();
    let [slice, prefix, name] = parts.as_slice() else {
        return Err(SystemdError::Path(p.into()));
    };
    if name.is_empty() || !slice.is_empty() && !slice.ends_with(".slice") {
        return Err(SystemdError::Path(p.into()));
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let unit = if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    Ok((slice.to_string(), unit))
}

fn manager(conn: &zbus::blocking::Connection) -> Result<zbus::blocking::Proxy<'_>, SystemdError> {
    Ok(zbus::blocking::Proxy::new(
        conn,
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
    )?)
}

/// This process's cgroup in every hierarchy: `(hierarchy line id, path)` from
/// `/proc/self/cgroup` (`0::/…` on v2, `N:controllers:/…` on v1).
fn own_cgroups() -> Result<Vec<(String, String)>, SystemdError> {
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(|source| SystemdError::Io {
        path: "/proc/self/cgroup".into(),
        op: "read",
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
            Some((ctrl.to_string(), path.to_string()))
        })
        .collect())
}

/// The runtime inside the container's new scope; dropping it (or [`Entered::leave`])
/// moves the runtime back where it was.
#[derive(Debug)]
pub struct Entered {
    pub unit: String,
    /// The scope's cgroup path, relative to each hierarchy.
    pub rel: PathBuf,
    previous: Vec<(String, String)>,
    layout: crate::cgroups::Layout,
}

/// Starts `unit` in `slice` with this process in it and waits until systemd has moved
/// it there.
pub fn enter_scope(
    slice: &str,
    unit: &str,
    id: &str,
    resources: Option<&LinuxResources>,
    layout: &crate::cgroups::Layout,
) -> Result<Entered, SystemdError> {
    let previous = own_cgroups()?;
    let conn = zbus::blocking::Connection::system()?;
    let mut props: Vec<(&str, Value)> = vec![
        (
            "Description",
            Value::from(format!("keel-containerd container {id}")),
        ),
        ("Slice", Value::from(slice)),
        ("Delegate", Value::from(true)),
        ("DefaultDependencies", Value::from(false)),
        ("PIDs", Value::from(vec![std::process::id()])),
    ];
    if let Some(r) = resources {
        if let Some(limit) = r
            .memory()
            .as_ref()
            .and_then(|m| m.limit())
            .filter(|l| *l > 0)
        {
            props.push(("MemoryMax", Value::from(limit as u64)));
        }
        if let Some(p) = r.pids().as_ref().map(|p| p.limit()).filter(|l| *l > 0) {
            props.push(("TasksMax", Value::from(p as u64)));
        }
        if let Some(c) = r.cpu()
            && let Some(quota) = c.quota().filter(|q| *q > 0)
        {
            let period = c.period().unwrap_or(100_000).max(1);
            props.push((
                "CPUQuotaPerSecUSec",
                Value::from(quota as u64 * 1_000_000 / period),
            ));
        }
    }
    let aux: Vec<(&str, Vec<(&str, Value)>)> = Vec::new();
    let _job: OwnedObjectPath =
        manager(&conn)?.call("StartTransientUnit", &(unit, "replace", props, aux))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let suffix = format!("/{unit}");
    loop {
        let now = own_cgroups()?;
        // The v2 line, or v1's name=systemd line, ends in the scope.
        if let Some((_, path)) = now
            .iter()
            .find(|(c, p)| (c.is_empty() || c == "name=systemd") && p.ends_with(&suffix))
        {
            return Ok(Entered {
                unit: unit.to_string(),
                rel: PathBuf::from(path.trim_start_matches('/')),
                previous,
                layout: layout.clone(),
            });
        }
        if Instant::now() > deadline {
            return Err(SystemdError::Timeout {
                unit: unit.into(),
                secs: 10,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Entered {
    /// Moves this process back to the cgroups it had before.
    pub fn leave(&self) {
        for h in &self.layout.hierarchies {
            let wanted = |c: &str| {
                if h.v2 {
                    c.is_empty()
                } else {
                    let ctrls: Vec<&str> = c.split(',').collect();
                    h.controllers.iter().all(|x| ctrls.contains(&x.as_str()))
                }
            };
            if let Some((_, path)) = self.previous.iter().find(|(c, _)| wanted(c)) {
                let procs = h
                    .mount
                    .join(path.trim_start_matches('/'))
                    .join("cgroup.procs");
                if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
                    eprintln!(
                        "keel-containerd: warning: cannot move back to {}: {e}",
                        procs.display()
                    );
                }
            }
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Stops the container's scope (best effort: it ends by itself once empty).
pub fn stop_scope(unit: &str) {
    let stop = || -> Result<(), SystemdError> {
        let conn = zbus::blocking::Connection::system()?;
        let m = manager(&conn)?;
        let _: Result<OwnedObjectPath, _> = m.call("StopUnit", &(unit, "replace"));
        let _: Result<(), _> = m.call("ResetFailedUnit", &(unit,));
        Ok(())
    };
    if let Err(e) = stop() {
        eprintln!("keel-containerd: warning: stop {unit}: {e}");
    }
}

/// Whether `dir` is a cgroup systemd owns (removed by systemd with its unit).
pub fn is_scope_dir(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".scope"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_as_runc_reads_cgroups_path() {
        let u = |p: Option<&str>| unit_for(p, "web");
        assert_eq!(
            u(None).unwrap(),
            ("system.slice".into(), "keel-web.scope".into())
        );
        assert_eq!(
            u(Some("machine.slice:libpod:abc")).unwrap(),
            ("machine.slice".into(), "libpod-abc.scope".into())
        );
        assert_eq!(
            u(Some(":keel:x")).unwrap(),
            ("system.slice".into(), "keel-x.scope".into())
        );
        assert!(u(Some("/keel/web")).is_err());
        assert!(u(Some("notaslice:p:n")).is_err());
    }
}
