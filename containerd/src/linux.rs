//! The creation path: fork an intermediate process that joins or creates the namespaces
//! and its cgroups, fork the container's init (PID 1 in the new PID namespace), set up its
//! filesystem and process attributes, and block it on `exec.fifo` until `start`.
//!
//! ```text
//! runtime ──fork──▶ intermediate: setns/unshare, join cgroups ──fork──▶ init
//!    ▲                    │ "PID <n>" ─────────────┐                      │ mounts, pivot_root,
//!    └──────── sync pipe ◀┘ exits                   └── "READY" / "ERR …" ◀┘ hostname, lo up;
//!                                                          waits on exec.fifo, then execve
//! ```
//!
//! This module holds the workspace's `unsafe`: `fork` (the process is single-threaded: the
//! runtime never starts threads before creating a container), `_exit` in the children, and
//! the `ioctl` that brings `lo` up.
#![allow(unsafe_code)]

use crate::mounts;
use crate::spec::Bundle;
use nix::sched::{CloneFlags, setns, unshare};
use nix::unistd::{ForkResult, Pid, fork};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("cannot {op}: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("container init failed: {0}")]
    Init(String),
    #[error("exec failed: {0}")]
    Exec(String),
}

fn sys(op: &'static str) -> impl FnOnce(nix::Error) -> CreateError {
    move |source| CreateError::Sys { op, source }
}

/// Which namespaces to create (flags) and which to join (type, path).
pub fn namespaces(spec: &Spec) -> (CloneFlags, Vec<(CloneFlags, PathBuf)>) {
    let mut new = CloneFlags::empty();
    let mut join = Vec::new();
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in list {
        let flag = match ns.typ() {
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            LinuxNamespaceType::Time => CloneFlags::empty(),
        };
        match ns.path() {
            Some(p) => join.push((flag, p.clone())),
            None => new |= flag,
        }
    }
    (new, join)
}

/// What `create` learns from the children.
#[derive(Debug)]
pub struct Created {
    pub pid: i32,
}

/// Forks the container. `fifo` must exist; `cgroup_dirs` are joined by the intermediate.
/// `runtime_hooks` runs the `prestart` and `createRuntime` hooks (given the init's pid)
/// while the init waits with its mounts prepared and before `pivot_root`, as the spec
/// orders them before `createContainer`. Returns once the init waits on the fifo (or
/// failed, with its message).
pub fn spawn(
    bundle: &Bundle,
    fifo: &Path,
    cgroup_dirs: &[PathBuf],
    console: Option<&std::os::unix::net::UnixStream>,
    runtime_hooks: &mut dyn FnMut(i32) -> Result<(), String>,
) -> Result<Created, CreateError> {
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("create the sync pipe"))?;
    let (ack_rd, ack_wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("create the sync pipe"))?;
    // SAFETY: the runtime is single-threaded here; the child only runs async-signal-safe
    // work until it execs or exits with `_exit`.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(rd);
            drop(ack_wr);
            let mut w = std::fs::File::from(wr);
            let mut ack = std::fs::File::from(ack_rd);
            let code = match intermediate(bundle, fifo, cgroup_dirs, &mut w, &mut ack, console) {
                Ok(()) => 0,
                Err(msg) => {
                    let _ = sync_line(&mut w, &format!("ERR {msg}"));
                    1
                }
            };
            // SAFETY: leave without running the parent's atexit handlers or destructors.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            drop(ack_rd);
            let mut ack = std::fs::File::from(ack_wr);
            let mut reader = BufReader::new(std::fs::File::from(rd));
            let mut pid = None;
            let mut line = String::new();
            let mut ready = false;
            // The init asked for the runtime's hooks before its pid was reported.
            let mut hooks_asked = false;
            let mut hooks = |pid: i32, ack: &mut std::fs::File| {
                runtime_hooks(pid)?;
                sync_line(ack, "GO").map_err(|_| "the container's init went away".to_string())
            };
            let outcome = loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) => break Err("the container's init exited during setup".to_string()),
                    Ok(_) => {}
                    Err(e) => break Err(format!("sync pipe: {e}")),
                }
                let l = line.trim_end();
                if l == "USERNS" {
                    // The intermediate is in its new user namespace: map its ids.
                    match write_id_maps(child.as_raw(), &bundle.spec) {
                        Ok(()) => {
                            if writeln!(ack, "GO").is_err() {
                                break Err("the intermediate went away".to_string());
                            }
                        }
                        Err(e) => {
                            let _ =
                                nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                            break Err(e);
                        }
                    }
                } else if let Some(p) = l.strip_prefix("PID ") {
                    pid = p.parse::<i32>().ok();
                    if hooks_asked
                        && let Some(p) = pid
                        && let Err(e) = hooks(p, &mut ack)
                    {
                        break Err(e);
                    }
                    if ready {
                        break Ok(());
                    }
                } else if l == "HOOKS" {
                    match pid {
                        Some(p) => {
                            if let Err(e) = hooks(p, &mut ack) {
                                break Err(e);
                            }
                        }
                        None => hooks_asked = true,
                    }
                } else if l == "READY" {
                    // The init can get here before its parent reported its pid.
                    ready = true;
                    if pid.is_some() {
                        break Ok(());
                    }
                } else if let Some(msg) = l.strip_prefix("ERR ") {
                    break Err(msg.to_string());
                }
            };
            let _ = nix::sys::wait::waitpid(child, None);
            match (outcome, pid) {
                (Ok(()), Some(pid)) => Ok(Created { pid }),
                (Ok(()), None) => Err(CreateError::Init("no pid reported".into())),
                (Err(msg), pid) => {
                    if let Some(p) = pid {
                        let _ = nix::sys::signal::kill(
                            Pid::from_raw(p),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    Err(CreateError::Init(msg))
                }
            }
        }
    }
}

/// In the intermediate: namespaces and cgroups, then fork the init and report its pid.
fn intermediate(
    bundle: &Bundle,
    fifo: &Path,
    cgroup_dirs: &[PathBuf],
    w: &mut std::fs::File,
    ack: &mut std::fs::File,
    console: Option<&std::os::unix::net::UnixStream>,
) -> Result<(), String> {
    let spec = &bundle.spec;
    let (new, join) = namespaces(spec);
    for (flag, path) in &join {
        let f = std::fs::File::open(path)
            .map_err(|e| format!("open namespace {}: {e}", path.display()))?;
        setns(f, *flag).map_err(|e| format!("join namespace {}: {e}", path.display()))?;
    }
    // Into the cgroups before the init exists, so it never runs outside them.
    crate::cgroups::attach(cgroup_dirs, std::process::id() as i32)
        .map_err(|e| crate::error_chain(&e))?;
    if new.contains(CloneFlags::CLONE_NEWUSER) {
        // The user namespace first, so it owns the others; the runtime writes our id
        // maps, then we become its root.
        unshare(CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("unshare the user namespace: {e}"))?;
        sync_line(w, "USERNS").map_err(|e| e.to_string())?;
        let mut go = [0u8; 3];
        ack.read_exact(&mut go)
            .map_err(|e| format!("wait for the id maps: {e}"))?;
        nix::unistd::setresgid(0.into(), 0.into(), 0.into())
            .map_err(|e| format!("become gid 0 in the user namespace: {e}"))?;
        nix::unistd::setresuid(0.into(), 0.into(), 0.into())
            .map_err(|e| format!("become uid 0 in the user namespace: {e}"))?;
    }
    let rest = new - CloneFlags::CLONE_NEWUSER;
    if !rest.is_empty() {
        unshare(rest).map_err(|e| format!("unshare {rest:?}: {e}"))?;
    }
    // The init must hold the fifo before pivot_root hides the runtime's directory.
    let fifo_fd: OwnedFd = nix::fcntl::open(
        fifo,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
    .map_err(|e| format!("open {}: {e}", fifo.display()))?;
    // With a seccomp listener, the init connects to it while the host's paths are in
    // reach and later reads the container's state through the runtime's directory.
    let listener = match spec_listener(&bundle.spec) {
        Some(path) => {
            let sock = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
                format!(
                    "linux.seccomp.listenerPath: connect to {}: {e}",
                    path.display()
                )
            })?;
            let dir = fifo.parent().unwrap_or(Path::new("/"));
            let dir_fd: OwnedFd = nix::fcntl::open(
                dir,
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .map_err(|e| format!("open {}: {e}", dir.display()))?;
            Some(Listener { sock, dir_fd })
        }
        None => None,
    };
    // SAFETY: as in `spawn`.
    match unsafe { fork() }.map_err(|e| format!("fork the init: {e}"))? {
        ForkResult::Child => {
            let code = match init(bundle, new, &fifo_fd, w, ack, console, listener.as_ref()) {
                Ok(never) => match never {},
                Err(msg) => {
                    // Before READY the runtime reads this; after, only the container's
                    // stderr is left to tell.
                    eprintln!("keel-containerd: container init: {msg}");
                    let _ = sync_line(w, &format!("ERR {msg}"));
                    127
                }
            };
            // SAFETY: as above.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            sync_line(w, &format!("PID {child}")).map_err(|e| e.to_string())?;
            Ok(())
        }
    }
}

/// Writes one line to a sync pipe in a single `write`: the intermediate and the init
/// share the pipe, and a line written in pieces (as `writeln!` formats) can interleave
/// with the other's ("PID READY\n1234\n"), leaving the runtime waiting forever.
fn sync_line(w: &mut std::fs::File, line: &str) -> std::io::Result<()> {
    w.write_all(format!("{line}\n").as_bytes())
}

enum Never {}

/// A seccomp agent's socket and the runtime's directory for the container.
struct Listener {
    sock: std::os::unix::net::UnixStream,
    dir_fd: OwnedFd,
}

fn spec_listener(spec: &Spec) -> Option<&Path> {
    let s = spec.linux().as_ref()?.seccomp().as_ref()?;
    if !crate::seccomp::uses_notify(s) {
        return None;
    }
    s.listener_path().as_deref()
}

/// Sends the seccomp notify descriptor to the agent with runtime-spec's
/// `ContainerProcessState`, then closes it here (the container must not answer itself).
fn hand_to_agent(l: &Listener, notify_fd: std::os::fd::RawFd, spec: &Spec) -> Result<(), String> {
    // SAFETY: libseccomp returned a descriptor this process owns.
    let notify = unsafe { OwnedFd::from_raw_fd(notify_fd) };
    let state_path = format!(
        "/proc/self/fd/{}/{}",
        l.dir_fd.as_raw_fd(),
        crate::state::STATE_FILE
    );
    let saved: crate::state::Saved = std::fs::read(&state_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("linux.seccomp.listenerPath: read the container state: {e}"))?;
    let metadata = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .and_then(|s| s.listener_metadata().clone())
        .unwrap_or_default();
    let msg = serde_json::json!({
        "ociVersion": saved.oci_version,
        "fds": ["seccompFd"],
        "pid": saved.pid,
        "metadata": metadata,
        "state": {
            "ociVersion": saved.oci_version,
            "id": saved.id,
            "status": "creating",
            "pid": saved.pid,
            "bundle": saved.bundle,
            "annotations": saved.annotations,
        }
    })
    .to_string();
    let fds = [notify.as_raw_fd()];
    nix::sys::socket::sendmsg::<()>(
        l.sock.as_raw_fd(),
        &[std::io::IoSlice::new(msg.as_bytes())],
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("linux.seccomp.listenerPath: send the notify descriptor: {e}"))?;
    Ok(())
}

/// In the init (PID 1 of a new PID namespace when asked): everything up to `execve`.
fn init(
    bundle: &Bundle,
    new: CloneFlags,
    fifo: &OwnedFd,
    w: &mut std::fs::File,
    ack: &mut std::fs::File,
    console: Option<&std::os::unix::net::UnixStream>,
    listener: Option<&Listener>,
) -> Result<Never, String> {
    let spec = &bundle.spec;
    let process = spec.process().as_ref().expect("checked at load");
    let mut fd_dir: Option<OwnedFd> = None;
    if new.contains(CloneFlags::CLONE_NEWNS) {
        mounts::prepare_rootfs(spec, &bundle.rootfs).map_err(|e| crate::error_chain(&e))?;
        wait_for_runtime_hooks(spec, w, ack)?;
        run_hooks_inside(spec, "createContainer", bundle)?;
        mounts::pivot(&bundle.rootfs).map_err(|e| crate::error_chain(&e))?;
        mounts::root_propagation(spec).map_err(|e| crate::error_chain(&e))?;
        mounts::finish(spec).map_err(|e| crate::error_chain(&e))?;
    } else {
        wait_for_runtime_hooks(spec, w, ack)?;
        run_hooks_inside(spec, "createContainer", bundle)?;
        // Without a mount namespace there is no /proc in the new root: keep the host's
        // view of our descriptors to reopen the exec fifo through after the chroot.
        fd_dir = Some(
            rustix::fs::open(
                "/proc/self/fd",
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| format!("open /proc/self/fd: {e}"))?,
        );
        nix::unistd::chroot(&bundle.rootfs)
            .map_err(|e| format!("chroot {}: {e}", bundle.rootfs.display()))?;
        nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    }
    if new.contains(CloneFlags::CLONE_NEWUTS)
        && let Some(h) = spec.hostname()
    {
        nix::unistd::sethostname(h).map_err(|e| format!("hostname {h:?}: {e}"))?;
    }
    if new.contains(CloneFlags::CLONE_NEWNET) {
        loopback_up().map_err(|e| format!("bring lo up: {e}"))?;
    }
    if let Some(linux) = spec.linux() {
        for (k, v) in linux.sysctl().clone().unwrap_or_default() {
            let p = Path::new("/proc/sys").join(k.replace('.', "/"));
            std::fs::write(&p, &v).map_err(|e| format!("sysctl {k}={v}: {e}"))?;
        }
    }
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("oomScoreAdj {adj}: {e}"))?;
    }
    for r in process.rlimits().as_deref().unwrap_or_default() {
        let res = rlimit_resource(&format!("{:?}", r.typ()))
            .ok_or_else(|| format!("process.rlimits: unknown type {:?}", r.typ()))?;
        nix::sys::resource::setrlimit(res, r.soft(), r.hard())
            .map_err(|e| format!("process.rlimits {:?}: {e}", r.typ()))?;
    }
    if let Some(sock) = console {
        setup_terminal(sock)?;
    }
    // Ready: `create` may return. Wait for `start`.
    sync_line(w, "READY").map_err(|e| e.to_string())?;
    let mut f = match &fd_dir {
        Some(dir) => rustix::fs::openat(
            dir,
            fifo.as_raw_fd().to_string(),
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map(std::fs::File::from)
        .map_err(std::io::Error::from),
        None => std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", fifo.as_raw_fd())),
    }
    .map_err(|e| format!("open exec fifo: {e}"))?;
    f.write_all(&[0])
        .map_err(|e| format!("write exec fifo: {e}"))?;
    drop(f);
    run_hooks_inside(spec, "startContainer", bundle)?;
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    let nnp = process.no_new_privileges().unwrap_or(false);
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it while we have it.
    let hand_over = |fd: Option<std::os::fd::RawFd>| match (fd, listener) {
        (Some(fd), Some(l)) => hand_to_agent(l, fd, spec),
        _ => Ok(()),
    };
    if let Some(s) = seccomp
        && !nnp
    {
        hand_over(crate::seccomp::load(s)?)?;
    }
    set_user_and_caps(process)?;
    if nnp {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("noNewPrivileges: {e}"))?;
        if let Some(s) = seccomp {
            hand_over(crate::seccomp::load(s)?)?;
        }
    }
    let cwd = process.cwd();
    nix::unistd::chdir(cwd.as_path()).map_err(|e| format!("process.cwd {}: {e}", cwd.display()))?;
    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let program = find_program(&args[0], &env)
        .ok_or_else(|| format!("process.args[0] {:?}: not found in the container", args[0]))?;
    let c = |s: &str| CString::new(s).map_err(|_| format!("NUL byte in {s:?}"));
    let argv: Vec<CString> = args.iter().map(|a| c(a)).collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env.iter().map(|a| c(a)).collect::<Result<_, _>>()?;
    let prog = CString::new(program.as_os_str().as_encoded_bytes())
        .map_err(|_| "NUL in path".to_string())?;
    let e = nix::unistd::execve(&prog, &argv, &envp).unwrap_err();
    Err(format!("exec {}: {e}", program.display()))
}

/// Asks the runtime to run the `prestart` and `createRuntime` hooks (in its namespaces)
/// and waits until they have, if the spec has any.
fn wait_for_runtime_hooks(
    spec: &Spec,
    w: &mut std::fs::File,
    ack: &mut std::fs::File,
) -> Result<(), String> {
    if crate::hooks::of(spec, "prestart").is_empty()
        && crate::hooks::of(spec, "createRuntime").is_empty()
    {
        return Ok(());
    }
    sync_line(w, "HOOKS").map_err(|e| e.to_string())?;
    let mut go = [0u8; 3];
    ack.read_exact(&mut go)
        .map_err(|e| format!("wait for the prestart and createRuntime hooks: {e}"))
}

fn run_hooks_inside(spec: &Spec, kind: &'static str, bundle: &Bundle) -> Result<(), String> {
    let hooks = crate::hooks::of(spec, kind);
    if hooks.is_empty() {
        return Ok(());
    }
    let state = serde_json::json!({
        "ociVersion": spec.version(),
        "id": "",
        "status": "created",
        "pid": std::process::id(),
        "bundle": bundle.dir,
    })
    .to_string();
    crate::hooks::run(kind, &hooks, &state).map_err(|e| crate::error_chain(&e))
}

fn rlimit_resource(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    let upper = name.to_ascii_uppercase();
    let short = upper.trim_start_matches("RLIMIT").trim_start_matches('_');
    Some(match short {
        "AS" => R::RLIMIT_AS,
        "CORE" => R::RLIMIT_CORE,
        "CPU" => R::RLIMIT_CPU,
        "DATA" => R::RLIMIT_DATA,
        "FSIZE" => R::RLIMIT_FSIZE,
        "LOCKS" => R::RLIMIT_LOCKS,
        "MEMLOCK" => R::RLIMIT_MEMLOCK,
        "MSGQUEUE" => R::RLIMIT_MSGQUEUE,
        "NICE" => R::RLIMIT_NICE,
        "NOFILE" => R::RLIMIT_NOFILE,
        "NPROC" => R::RLIMIT_NPROC,
        "RSS" => R::RLIMIT_RSS,
        "RTPRIO" => R::RLIMIT_RTPRIO,
        "RTTIME" => R::RLIMIT_RTTIME,
        "SIGPENDING" => R::RLIMIT_SIGPENDING,
        "STACK" => R::RLIMIT_STACK,
        _ => return None,
    })
}

/// The capability set named in the spec (unknown names are an error naming the field).
fn cap_set(
    field: &'static str,
    set: Option<&oci_spec::runtime::Capabilities>,
) -> Result<caps::CapsHashSet, String> {
    let mut out = caps::CapsHashSet::new();
    for c in set.into_iter().flatten() {
        let name = c.to_string();
        let name = if name.starts_with("CAP_") {
            name
        } else {
            format!("CAP_{}", name.to_ascii_uppercase())
        };
        let cap: caps::Capability = name
            .parse()
            .map_err(|_| format!("process.capabilities.{field}: unknown capability {name}"))?;
        out.insert(cap);
    }
    Ok(out)
}

fn set_user_and_caps(process: &oci_spec::runtime::Process) -> Result<(), String> {
    let spec_caps = process.capabilities().as_ref();
    let bounding = cap_set("bounding", spec_caps.and_then(|c| c.bounding().as_ref()))?;
    let effective = cap_set("effective", spec_caps.and_then(|c| c.effective().as_ref()))?;
    let permitted = cap_set("permitted", spec_caps.and_then(|c| c.permitted().as_ref()))?;
    let inheritable = cap_set(
        "inheritable",
        spec_caps.and_then(|c| c.inheritable().as_ref()),
    )?;
    let ambient = cap_set("ambient", spec_caps.and_then(|c| c.ambient().as_ref()))?;
    // Bounding set first (needs CAP_SETPCAP, which we still have).
    for cap in caps::all() {
        if !bounding.contains(&cap)
            && caps::has_cap(None, caps::CapSet::Bounding, cap).unwrap_or(false)
        {
            caps::drop(None, caps::CapSet::Bounding, cap)
                .map_err(|e| format!("process.capabilities.bounding: drop {cap}: {e}"))?;
        }
    }
    // Keep the permitted set across the uid change, then set every set exactly.
    nix::sys::prctl::set_keepcaps(true).map_err(|e| format!("keep capabilities: {e}"))?;
    let user = process.user();
    let gids: Vec<nix::unistd::Gid> = user
        .additional_gids()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    // A user namespace mapped by an unprivileged runtime has setgroups denied; with no
    // additional groups asked for there is nothing to set.
    let setgroups_denied =
        std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny");
    if !(gids.is_empty() && setgroups_denied) {
        nix::unistd::setgroups(&gids).map_err(|e| format!("process.user.additionalGids: {e}"))?;
    }
    nix::unistd::setgid(nix::unistd::Gid::from_raw(user.gid()))
        .map_err(|e| format!("process.user.gid {}: {e}", user.gid()))?;
    if user.uid() != 0 {
        nix::unistd::setuid(nix::unistd::Uid::from_raw(user.uid()))
            .map_err(|e| format!("process.user.uid {}: {e}", user.uid()))?;
    }
    let set = |which, name: &'static str, v: &caps::CapsHashSet| {
        caps::set(None, which, v).map_err(|e| format!("process.capabilities.{name}: {e}"))
    };
    // The effective set must stay within the permitted one at every step.
    let narrowed: caps::CapsHashSet = effective.intersection(&permitted).copied().collect();
    set(caps::CapSet::Effective, "effective", &narrowed)?;
    set(caps::CapSet::Permitted, "permitted", &permitted)?;
    set(caps::CapSet::Inheritable, "inheritable", &inheritable)?;
    set(caps::CapSet::Effective, "effective", &effective)?;
    caps::clear(None, caps::CapSet::Ambient)
        .map_err(|e| format!("process.capabilities.ambient: {e}"))?;
    for cap in &ambient {
        caps::raise(None, caps::CapSet::Ambient, *cap)
            .map_err(|e| format!("process.capabilities.ambient: raise {cap}: {e}"))?;
    }
    Ok(())
}

/// `args[0]` as execve needs it: a path, or looked up in the container's `PATH`.
fn find_program(arg0: &str, env: &[String]) -> Option<PathBuf> {
    if arg0.contains('/') {
        return Some(PathBuf::from(arg0));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':').map(|d| Path::new(d).join(arg0)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| {
            m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
        })
    })
}

/// `ip link set lo up`, with the SIOCGIFFLAGS/SIOCSIFFLAGS ioctls.
fn loopback_up() -> std::io::Result<()> {
    use nix::libc;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)?;
    // SAFETY: ifreq is plain data; the name is NUL-terminated; the ioctls only read/write it.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Opens a pty in the container's devpts, sends the master through the console socket,
/// and makes the slave the process's controlling terminal and stdio.
fn setup_terminal(sock: &std::os::unix::net::UnixStream) -> Result<(), String> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| format!("process.terminal: open /dev/ptmx: {e}"))?;
    nix::pty::grantpt(&master).map_err(|e| format!("process.terminal: grantpt: {e}"))?;
    nix::pty::unlockpt(&master).map_err(|e| format!("process.terminal: unlockpt: {e}"))?;
    let name =
        nix::pty::ptsname_r(&master).map_err(|e| format!("process.terminal: ptsname: {e}"))?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(&name)
        .map_err(|e| format!("process.terminal: open {name}: {e}"))?;
    let fds = [master.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"pty")];
    nix::sys::socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("--console-socket: send the pty: {e}"))?;
    drop(master);
    nix::unistd::setsid().map_err(|e| format!("process.terminal: setsid: {e}"))?;
    // SAFETY: TIOCSCTTY takes an int argument; the fd is a valid terminal.
    if unsafe { nix::libc::ioctl(slave.as_raw_fd(), nix::libc::TIOCSCTTY, 0) } < 0 {
        return Err(format!(
            "process.terminal: make {name} the controlling terminal: {}",
            std::io::Error::last_os_error()
        ));
    }
    for fd in 0..3 {
        nix::unistd::dup2(slave.as_raw_fd(), fd)
            .map_err(|e| format!("process.terminal: dup2: {e}"))?;
    }
    Ok(())
}

/// Writes `/proc/<pid>/{uid_map,gid_map}` from `linux.uidMappings`/`gidMappings`.
fn write_id_maps(pid: i32, spec: &Spec) -> Result<(), String> {
    let linux = spec.linux().as_ref();
    // Without CAP_SETGID in the parent namespace (a rootless runtime) the kernel takes a
    // gid_map only once setgroups is denied.
    if !nix::unistd::geteuid().is_root() {
        std::fs::write(format!("/proc/{pid}/setgroups"), "deny")
            .map_err(|e| format!("linux.gidMappings: write setgroups: {e}"))?;
    }
    for (file, field, maps) in [
        (
            "uid_map",
            "linux.uidMappings",
            linux.and_then(|l| l.uid_mappings().clone()),
        ),
        (
            "gid_map",
            "linux.gidMappings",
            linux.and_then(|l| l.gid_mappings().clone()),
        ),
    ] {
        let maps = maps.unwrap_or_default();
        if maps.is_empty() {
            return Err(format!(
                "{field}: a user namespace needs at least one mapping"
            ));
        }
        let text: String = maps
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect();
        std::fs::write(format!("/proc/{pid}/{file}"), text)
            .map_err(|e| format!("{field}: write {file}: {e}"))?;
    }
    Ok(())
}

/// Reads a one-byte token from the fifo, releasing the init (`start`).
pub fn release(fifo: &Path) -> std::io::Result<()> {
    let mut f = std::fs::File::open(fifo)?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)
}

/// Namespaces of `pid` that differ from ours, in the order they are joined: the user
/// namespace first (it owns the others, and gives an unprivileged runtime the right to
/// join them).
fn namespaces_of(pid: i32) -> Vec<(CloneFlags, PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for (name, flag) in [
        ("user", CloneFlags::CLONE_NEWUSER),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let theirs = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        let mine = std::fs::metadata(format!("/proc/self/ns/{name}")).map(|m| m.ino());
        let other = std::fs::metadata(&theirs).map(|m| m.ino());
        if let (Ok(a), Ok(b)) = (mine, other)
            && a != b
        {
            out.push((flag, theirs));
        }
    }
    out
}

/// Runs `process` inside the container whose init is `pid` (its namespaces and cgroups).
/// Returns the new process's pid; the caller (a child subreaper) waits for it.
pub fn exec(
    pid: i32,
    cgroup_dirs: &[PathBuf],
    process: &oci_spec::runtime::Process,
    console: Option<&std::os::unix::net::UnixStream>,
) -> Result<i32, CreateError> {
    // Open the namespace files now: after joining the mount namespace they are out of reach.
    let namespaces: Vec<(CloneFlags, std::fs::File)> = namespaces_of(pid)
        .into_iter()
        .map(|(flag, path)| {
            std::fs::File::open(&path)
                .map(|f| (flag, f))
                .map_err(|e| CreateError::Exec(format!("open {}: {e}", path.display())))
        })
        .collect::<Result<_, _>>()?;
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("create the sync pipe"))?;
    // SAFETY: single-threaded runtime; the child execs or `_exit`s.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(rd);
            let mut w = std::fs::File::from(wr);
            let result = (|| -> Result<(), String> {
                crate::cgroups::attach(cgroup_dirs, std::process::id() as i32)
                    .map_err(|e| crate::error_chain(&e))?;
                for (flag, f) in namespaces {
                    setns(f, flag).map_err(|e| format!("join {flag:?}: {e}"))?;
                }
                // SAFETY: as above.
                match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
                    ForkResult::Parent { child } => {
                        sync_line(&mut w, &format!("PID {child}")).map_err(|e| e.to_string())?;
                        Ok(())
                    }
                    ForkResult::Child => {
                        // In the container's mount namespace: its devpts has the pty.
                        let err = match console.map(setup_terminal).transpose() {
                            Ok(_) => exec_process(process),
                            Err(e) => e,
                        };
                        eprintln!("keel-containerd: exec: {err}");
                        let _ = sync_line(&mut w, &format!("ERR {err}"));
                        // SAFETY: as above.
                        unsafe { nix::libc::_exit(127) }
                    }
                }
            })();
            let code = match result {
                Ok(()) => 0,
                Err(msg) => {
                    let _ = sync_line(&mut w, &format!("ERR {msg}"));
                    1
                }
            };
            // SAFETY: as above.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut text = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut text);
            let _ = nix::sys::wait::waitpid(child, None);
            let pid = text
                .lines()
                .find_map(|l| l.strip_prefix("PID "))
                .and_then(|p| p.parse().ok());
            match (pid, text.lines().find_map(|l| l.strip_prefix("ERR "))) {
                (_, Some(msg)) => Err(CreateError::Exec(msg.to_string())),
                (Some(pid), None) => Ok(pid),
                (None, None) => Err(CreateError::Exec("exec helper exited without a pid".into())),
            }
        }
    }
}

/// In the exec'd process: user, capabilities, no_new_privs, cwd, then execve. Returns only
/// on failure.
fn exec_process(process: &oci_spec::runtime::Process) -> String {
    if let Err(e) = set_user_and_caps(process) {
        return e;
    }
    if process.no_new_privileges().unwrap_or(false)
        && let Err(e) = nix::sys::prctl::set_no_new_privs()
    {
        return format!("noNewPrivileges: {e}");
    }
    if let Err(e) = nix::unistd::chdir(process.cwd().as_path()) {
        return format!("cwd {}: {e}", process.cwd().display());
    }
    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let Some(arg0) = args.first() else {
        return "no command given".into();
    };
    let Some(program) = find_program(arg0, &env) else {
        return format!("{arg0:?}: not found in the container");
    };
    let to_c = |v: &[String]| -> Option<Vec<CString>> {
        v.iter().map(|a| CString::new(a.as_str()).ok()).collect()
    };
    let (Some(argv), Some(envp), Ok(prog)) = (
        to_c(&args),
        to_c(&env),
        CString::new(program.as_os_str().as_encoded_bytes()),
    ) else {
        return "NUL byte in the command or environment".into();
    };
    let e = nix::unistd::execve(&prog, &argv, &envp).unwrap_err();
    format!("exec {}: {e}", program.display())
}
