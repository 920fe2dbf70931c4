//! The lifecycle: create → created → start → running → stopped → delete, each step
//! checking where it may come from, persisted under `--root/<id>/`.

use crate::cgroups::{self, Layout};
use crate::linux;
use crate::spec::Bundle;
use crate::state::{EXEC_FIFO, Saved, StateError, Status};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error(transparent)]
    Create(#[from] linux::CreateError),
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    #[error("{path}: cannot {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("container {id} is {status}, not {wanted}")]
    WrongStatus {
        id: String,
        status: &'static str,
        wanted: &'static str,
    },
    #[error("cannot delete container {0} that is not stopped: {1} (use --force)")]
    Running(String, &'static str),
    #[error("unknown signal {0:?}")]
    Signal(String),
    #[error(transparent)]
    Systemd(#[from] crate::systemd::SystemdError),
    #[error("kill {id}: {source}")]
    Kill {
        id: String,
        #[source]
        source: nix::Error,
    },
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> ContainerError {
    let path = path.to_path_buf();
    move |source| ContainerError::Io { path, op, source }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Whether this process uses the systemd cgroup driver (`--systemd-cgroup`).
static SYSTEMD_DRIVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Selects the systemd cgroup driver for the containers this process creates.
pub fn use_systemd_driver(on: bool) {
    SYSTEMD_DRIVER.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// `create`: the container exists, its init waits for `start`.
pub fn create(
    root: &Path,
    id: &str,
    bundle_dir: &Path,
    pid_file: Option<&Path>,
    console_socket: Option<&Path>,
) -> Result<Saved, ContainerError> {
    let dir = crate::state::dir(root, id)?;
    let bundle = Bundle::load(bundle_dir)?;
    let terminal = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    if terminal && console_socket.is_none() {
        return Err(crate::spec::SpecError::Field {
            path: bundle.config.clone(),
            field: "process.terminal",
            why: "a terminal needs --console-socket to hand the pty to".into(),
        }
        .into());
    }
    // The caller's socket, connected now: the init sends the pty's master through it.
    let console = match (terminal, console_socket) {
        (true, Some(p)) => {
            Some(std::os::unix::net::UnixStream::connect(p).map_err(io(p, "connect to"))?)
        }
        _ => None,
    };
    std::fs::create_dir_all(root).map_err(io(root, "create"))?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(StateError::Exists(id.to_string()).into());
        }
        Err(e) => return Err(io(&dir, "create")(e)),
    }
    let mut cgroup_dirs = Vec::new();
    let mut scope = None;
    let mut scope_unit: Option<String> = None;
    let result = (|| {
        let layout = Layout::detect()?;
        let linux = bundle.spec.linux().as_ref();
        let cgroups_path = linux.and_then(|l| l.cgroups_path().as_deref());
        let resources = linux.and_then(|l| l.resources().as_ref());
        let systemd = SYSTEMD_DRIVER.load(std::sync::atomic::Ordering::SeqCst);
        let rel = if systemd {
            let (slice, unit) = crate::systemd::unit_for(cgroups_path.and_then(Path::to_str), id)?;
            let entered = crate::systemd::enter_scope(&slice, &unit, id, resources, &layout)?;
            let rel = entered.rel.clone();
            scope_unit = Some(entered.unit.clone());
            scope = Some(entered);
            rel
        } else {
            cgroups::relative_path(cgroups_path, id)
        };
        cgroup_dirs = match cgroups::create(&layout, &rel, resources, !systemd) {
            Ok(dirs) => dirs,
            // Rootless without a delegated cgroup: none, as runc, unless limits are asked.
            Err(e) if e.is_permission() && !nix::unistd::geteuid().is_root() => {
                if resources.is_some_and(cgroups::has_limits) {
                    let path = e.path().map(Path::to_path_buf).unwrap_or_default();
                    return Err(cgroups::CgroupError::Rootless(path).into());
                }
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        let fifo = dir.join(EXEC_FIFO);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
            .map_err(|e| io(&fifo, "create")(std::io::Error::from(e)))?;
        // Writable by a container root mapped to another host uid (the umask cut it).
        std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
            .map_err(io(&fifo, "chmod"))?;
        // prestart and createRuntime hooks run while the init waits before pivot_root.
        let mut runtime_hooks = |pid: i32| {
            let state = serde_json::json!({
                "ociVersion": bundle.spec.version(),
                "id": id,
                "status": "creating",
                "pid": pid,
                "bundle": bundle.dir,
                "annotations": bundle.spec.annotations().clone().unwrap_or_default(),
            })
            .to_string();
            for kind in ["prestart", "createRuntime"] {
                crate::hooks::run(kind, &crate::hooks::of(&bundle.spec, kind), &state)
                    .map_err(|e| crate::error_chain(&e))?;
            }
            Ok(())
        };
        let created = linux::spawn(
            &bundle,
            &fifo,
            &cgroup_dirs,
            console.as_ref(),
            &mut runtime_hooks,
        )?;
        // The container's processes hold the scope now.
        drop(scope.take());
        let start_time = crate::state::proc_start(created.pid)
            .map(|s| s.0)
            .unwrap_or(0);
        let saved = Saved {
            oci_version: bundle.spec.version().clone(),
            id: id.to_string(),
            pid: created.pid,
            start_time,
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            annotations: bundle
                .spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            created: now_rfc3339(),
            cgroup_dirs: cgroup_dirs.clone(),
            systemd_unit: scope_unit.clone(),
            cgroup_path: rel.clone(),
            poststop: crate::hooks::of(&bundle.spec, "poststop"),
        };
        saved.save(root)?;
        if let Some(p) = pid_file {
            std::fs::write(p, created.pid.to_string()).map_err(io(p, "write"))?;
        }
        Ok(saved)
    })();
    match result {
        Ok(saved) => Ok(saved),
        Err(e) => {
            // Nothing left behind: the init, its cgroups, the state directory.
            if let Ok(saved) = Saved::load(root, id) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(saved.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = cgroups::destroy(&cgroup_dirs);
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// `start`: release the init.
pub fn start(root: &Path, id: &str) -> Result<(), ContainerError> {
    let saved = load_in(root, id, &[Status::Created], "created")?;
    let fifo = root.join(id).join(EXEC_FIFO);
    linux::release(&fifo).map_err(io(&fifo, "read"))?;
    std::fs::remove_file(&fifo).map_err(io(&fifo, "remove"))?;
    let spec = Bundle::load(&saved.bundle).map(|b| b.spec).ok();
    if let Some(spec) = spec {
        let state = saved.oci_state(root).to_string();
        crate::hooks::run_warning("poststart", &crate::hooks::of(&spec, "poststart"), &state);
    }
    Ok(())
}

/// Signal names and numbers as `kill` takes them (`TERM`, `SIGTERM`, `15`).
pub fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal, ContainerError> {
    use std::str::FromStr;
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).map_err(|_| ContainerError::Signal(s.into()));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&name).map_err(|_| ContainerError::Signal(s.into()))
}

/// `kill`: signal the init (or, with `all`, every process in its cgroups).
pub fn kill(root: &Path, id: &str, signal: &str, all: bool) -> Result<(), ContainerError> {
    let sig = parse_signal(signal)?;
    let saved = load_in(
        root,
        id,
        &[Status::Created, Status::Running, Status::Paused],
        "created or running",
    )?;
    let targets = if all {
        members(&saved)
    } else {
        vec![saved.pid]
    };
    for pid in targets {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(|source| {
            ContainerError::Kill {
                id: id.into(),
                source,
            }
        })?;
    }
    Ok(())
}

/// `delete`: remove a stopped container (`force`: kill it first).
pub fn delete(root: &Path, id: &str, force: bool) -> Result<(), ContainerError> {
    let saved = match Saved::load(root, id) {
        Ok(s) => s,
        Err(StateError::NotFound(_)) if force => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let status = saved.status(root);
    if status != Status::Stopped {
        if !force {
            return Err(ContainerError::Running(id.into(), status.as_str()));
        }
        if status == Status::Paused {
            // A frozen process cannot die: thaw first.
            let layout = Layout::detect()?;
            cgroups::freeze(&layout, &saved.cgroup_path, false)?;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(saved.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        for _ in 0..400 {
            if !saved.alive() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    cgroups::destroy(&saved.cgroup_dirs)?;
    if let Some(unit) = &saved.systemd_unit {
        crate::systemd::stop_scope(unit);
    }
    let state = saved.oci_state(root).to_string();
    crate::hooks::run_warning("poststop", &saved.poststop, &state);
    let dir = root.join(id);
    std::fs::remove_dir_all(&dir).map_err(io(&dir, "remove"))?;
    // A bundle `run IMAGE` generated goes with its container (its overlay unmounted).
    if saved.bundle.join(crate::image::GENERATED).exists()
        && let Err(e) = crate::image::remove_bundle(&saved.bundle)
    {
        eprintln!("keel-containerd: warning: {}", crate::error_chain(&e));
    }
    Ok(())
}

/// `run`: create, start, wait; returns the exit code to pass on (128 + signal when killed).
pub fn run(
    root: &Path,
    id: &str,
    bundle: &Path,
    pid_file: Option<&Path>,
    console_socket: Option<&Path>,
    detach: bool,
) -> Result<i32, ContainerError> {
    if !detach {
        // The init is reparented to us when the intermediate exits, so we can wait for it.
        nix::sys::prctl::set_child_subreaper(true).map_err(|source| ContainerError::Kill {
            id: id.into(),
            source,
        })?;
    }
    let saved = create(root, id, bundle, pid_file, console_socket)?;
    if detach {
        if let Err(e) = start(root, id) {
            let _ = delete(root, id, true);
            return Err(e);
        }
        return Ok(0);
    }
    // From here on the signals an operator or systemd sends the runtime go to the
    // container's init (as `runc run` relays them), and SIGCHLD is taken synchronously
    // so its exit cannot be missed. The init was forked with the old mask.
    let mut waited = SigSet::empty();
    for s in FORWARDED {
        waited.add(s);
    }
    waited.add(Signal::SIGCHLD);
    let mut old = SigSet::empty();
    let blocked = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&waited), Some(&mut old));
    let code = match start(root, id) {
        Ok(()) => Ok(wait_forwarding(saved.pid, &waited)),
        Err(e) => Err(e),
    };
    if blocked.is_ok() {
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    }
    let code = match code {
        Ok(c) => c,
        Err(e) => {
            let _ = delete(root, id, true);
            return Err(e);
        }
    };
    delete(root, id, true)?;
    Ok(code)
}

/// Signals `run` relays to the container's init.
const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Waits for the init (`pid`, our child as subreaper) to end, relaying every signal of
/// `waited` but SIGCHLD to it and reaping orphans on the way; returns its exit code
/// (128+N when killed by signal N).
fn wait_forwarding(pid: i32, waited: &SigSet) -> i32 {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let init = nix::unistd::Pid::from_raw(pid);
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, c)) if p == init => return c,
            Ok(WaitStatus::Signaled(p, s, _)) if p == init => return 128 + s as i32,
            Ok(WaitStatus::StillAlive) => match waited.wait() {
                Ok(Signal::SIGCHLD) | Err(_) => {}
                Ok(sig) => {
                    let _ = nix::sys::signal::kill(init, sig);
                }
            },
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 255,
        }
    }
}

/// Loads `id` and checks its status is one of `allowed` (named in the error as `wanted`).
fn load_in(
    root: &Path,
    id: &str,
    allowed: &[Status],
    wanted: &'static str,
) -> Result<Saved, ContainerError> {
    let saved = Saved::load(root, id)?;
    let status = saved.status(root);
    if !allowed.contains(&status) {
        return Err(ContainerError::WrongStatus {
            id: id.into(),
            status: status.as_str(),
            wanted,
        });
    }
    Ok(saved)
}

/// `update`: new resource limits for a created, running or paused container.
pub fn update(
    root: &Path,
    id: &str,
    r: &oci_spec::runtime::LinuxResources,
) -> Result<(), ContainerError> {
    let saved = load_in(
        root,
        id,
        &[Status::Created, Status::Running, Status::Paused],
        "created, running or paused",
    )?;
    cgroups::apply(&Layout::detect()?, &saved.cgroup_path, r)?;
    Ok(())
}

/// `pause`: freeze every process of a running container.
/// The container's processes: its cgroups' members; without cgroups (rootless without
/// delegation), every process in its init's PID namespace (exec'd ones included, whose
/// parent is outside), or the init's descendants when it has no namespace of its own.
fn members(saved: &Saved) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    if !saved.cgroup_dirs.is_empty() {
        return cgroups::pids(&saved.cgroup_dirs);
    }
    let ns = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/pid")).map(|m| m.ino());
    let theirs = ns(&saved.pid.to_string()).ok();
    let own_ns = theirs.is_some() && theirs != ns("self").ok();
    let procs: Vec<(i32, i32, Option<u64>)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            let pid: i32 = name.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // After the `(comm)`, which may hold spaces: state, then ppid.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid, ns(name).ok()))
        })
        .collect();
    let mut out = if own_ns {
        procs
            .iter()
            .filter(|(_, _, n)| *n == theirs)
            .map(|(p, _, _)| *p)
            .collect()
    } else {
        let mut out = vec![saved.pid];
        let mut i = 0;
        while i < out.len() {
            let p = out[i];
            out.extend(
                procs
                    .iter()
                    .filter(|(_, pp, _)| *pp == p)
                    .map(|(c, _, _)| *c),
            );
            i += 1;
        }
        out
    };
    out.sort_unstable();
    out
}

/// The freezer needs the container's cgroup.
fn needs_cgroup(saved: &Saved, what: &'static str) -> Result<(), ContainerError> {
    if saved.cgroup_dirs.is_empty() {
        return Err(ContainerError::WrongStatus {
            id: saved.id.clone(),
            status: "without a cgroup (rootless, none delegated)",
            wanted: what,
        });
    }
    Ok(())
}

pub fn pause(root: &Path, id: &str) -> Result<(), ContainerError> {
    let saved = load_in(root, id, &[Status::Running], "running")?;
    needs_cgroup(&saved, "in a cgroup to pause it")?;
    cgroups::freeze(&Layout::detect()?, &saved.cgroup_path, true)?;
    Ok(())
}

/// `resume`: thaw a paused container.
pub fn resume(root: &Path, id: &str) -> Result<(), ContainerError> {
    let saved = load_in(root, id, &[Status::Paused], "paused")?;
    needs_cgroup(&saved, "in a cgroup to resume it")?;
    cgroups::freeze(&Layout::detect()?, &saved.cgroup_path, false)?;
    Ok(())
}

/// The processes of a container: (pid, ppid, uid, command line).
pub fn processes(root: &Path, id: &str) -> Result<Vec<(i32, i32, u32, String)>, ContainerError> {
    let saved = Saved::load(root, id)?;
    let mut out = Vec::new();
    for pid in members(&saved) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        out.push((pid, field("PPid:") as i32, field("Uid:") as u32, cmd));
    }
    Ok(out)
}

/// Runtime-style stats of a container (`events --stats`).
pub fn stats(root: &Path, id: &str) -> Result<serde_json::Value, ContainerError> {
    let saved = Saved::load(root, id)?;
    let s = cgroups::stats(&Layout::detect()?, &saved.cgroup_path);
    Ok(serde_json::json!({
        "type": "stats",
        "id": id,
        "data": {
            "cpu": {"usage": {"total": s.cpu_usage_ns}, "throttling": {"throttledPeriods": s.cpu_throttled_periods}},
            "memory": {"usage": {"usage": s.memory_usage, "limit": s.memory_limit}, "oomKills": s.oom_kills},
            "pids": {"current": s.pids_current, "limit": s.pids_limit},
        }
    }))
}

/// What `exec` changes from the container's own process settings.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// A complete process JSON (runtime-spec `process`), instead of the container's.
    pub process_file: Option<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// `UID[:GID]`.
    pub user: Option<String>,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    /// A pseudo-terminal for the process (`--tty`, or `terminal` in the process file).
    pub tty: bool,
    /// Where the pty master goes (SCM_RIGHTS); without it, a foreground exec relays the
    /// terminal between its own stdio and the process.
    pub console_socket: Option<PathBuf>,
}

/// `exec`: run another process in a created or running container; waits for it unless
/// detached and returns its exit code.
pub fn exec(root: &Path, id: &str, o: &ExecOptions) -> Result<i32, ContainerError> {
    let saved = load_in(
        root,
        id,
        &[Status::Created, Status::Running],
        "created or running",
    )?;
    let mut process = match &o.process_file {
        Some(p) => {
            let f = std::fs::File::open(p).map_err(io(p, "open"))?;
            serde_json::from_reader(f).map_err(|e| io(p, "parse")(std::io::Error::other(e)))?
        }
        None => Bundle::load(&saved.bundle)?
            .spec
            .process()
            .clone()
            .unwrap_or_default(),
    };
    if !o.args.is_empty() {
        process.set_args(Some(o.args.clone()));
    }
    if !o.env.is_empty() {
        let mut env = process.env().clone().unwrap_or_default();
        for e in &o.env {
            let key = e.split('=').next().unwrap_or_default();
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        process.set_env(Some(env));
    }
    if let Some(cwd) = &o.cwd {
        process.set_cwd(cwd.clone());
    }
    if let Some(user) = &o.user {
        let (u, g) = user.split_once(':').unwrap_or((user, "0"));
        let mut spec_user = process.user().clone();
        spec_user.set_uid(
            u.parse()
                .map_err(|_| ContainerError::Signal(format!("--user {user}")))?,
        );
        spec_user.set_gid(
            g.parse()
                .map_err(|_| ContainerError::Signal(format!("--user {user}")))?,
        );
        process.set_user(spec_user);
    }
    if !o.detach {
        nix::sys::prctl::set_child_subreaper(true).map_err(|source| ContainerError::Kill {
            id: id.into(),
            source,
        })?;
    }
    let tty = o.tty || process.terminal().unwrap_or(false);
    // The console socket: the caller's, or one end of a pair whose other end this
    // foreground exec relays.
    let (console, relay) = match (&o.console_socket, tty) {
        (_, false) => (None, None),
        (Some(path), true) => (
            Some(std::os::unix::net::UnixStream::connect(path).map_err(io(path, "connect to"))?),
            None,
        ),
        (None, true) if o.detach => {
            return Err(ContainerError::Io {
                path: "--console-socket".into(),
                op: "find",
                source: std::io::Error::other("a detached exec --tty needs --console-socket"),
            });
        }
        (None, true) => {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()
                .map_err(io(Path::new("socketpair"), "create"))?;
            (Some(theirs), Some(ours))
        }
    };
    let pid = linux::exec(saved.pid, &saved.cgroup_dirs, &process, console.as_ref())?;
    drop(console);
    if let Some(p) = &o.pid_file {
        std::fs::write(p, pid.to_string()).map_err(io(p, "write"))?;
    }
    if o.detach {
        return Ok(0);
    }
    if let Some(ours) = relay {
        crate::terminal::relay(&ours).map_err(io(Path::new("the exec terminal"), "relay"))?;
    }
    loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => return Ok(c),
            Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return Ok(255),
        }
    }
}

/// All containers under `root` with their status.
pub fn list(root: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    let mut ids: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    for id in ids {
        if let Ok(s) = Saved::load(root, &id) {
            out.push(s.oci_state(root));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        use nix::sys::signal::Signal;
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("NOPE").is_err());
    }
}
