//! Cgroups v1 and v2 through cgroupfs, for every layout: pure v1, hybrid with an empty
//! unified hierarchy, hybrid with controllers on the unified hierarchy (this machine's
//! `hugetlb`), pure v2. The layout is read from a mountinfo text, so tests can hand in any.
//!
//! A container gets one directory per hierarchy (`<hierarchy>/<cgroupsPath>`); limits go
//! to whichever hierarchy holds the controller.

use oci_spec::runtime::LinuxResources;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path}: cannot {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup hierarchy is mounted (read {0})")]
    NoCgroups(String),
    #[error("{path}: still has processes after kill")]
    Busy { path: PathBuf },
    #[error(
        "{path}: the container's cgroup already exists and has {count} process(es) in it (stop them, or set another linux.cgroupsPath)"
    )]
    InUse { path: PathBuf, count: usize },
    #[error(
        "{0}: cannot create the container's cgroup as an unprivileged user, and linux.resources sets limits (give it a delegated cgroup via linux.cgroupsPath, or drop the limits)"
    )]
    Rootless(PathBuf),
    #[error("linux.resources.devices: {0}")]
    Devices(#[from] crate::devices::DeviceError),
    #[error("linux.resources.blockIO.{field}: {why}")]
    BlockIo { field: &'static str, why: String },
    #[error("{field}: {why}")]
    Invalid { field: &'static str, why: String },
}

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    /// v1 controllers (`memory`, `cpu`, `cpuacct`, …, `name=systemd`); empty for cgroup2.
    pub controllers: Vec<String>,
    pub v2: bool,
}

/// The hierarchies of this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub hierarchies: Vec<Hierarchy>,
}

impl Layout {
    /// Parses `/proc/self/mountinfo` text.
    pub fn parse(mountinfo: &str) -> Layout {
        let mut hierarchies = Vec::new();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = left.split(' ').collect();
            let rfields: Vec<&str> = right.split(' ').collect();
            let (Some(mount), Some(fstype)) = (fields.get(4), rfields.first()) else {
                continue;
            };
            let mount = PathBuf::from(unescape(mount));
            match *fstype {
                "cgroup2" => hierarchies.push(Hierarchy {
                    mount,
                    controllers: Vec::new(),
                    v2: true,
                }),
                "cgroup" => {
                    let opts = rfields.get(2).copied().unwrap_or_default();
                    let controllers: Vec<String> = opts
                        .split(',')
                        .filter(|o| {
                            !matches!(
                                *o,
                                "rw" | "ro" | "nosuid" | "nodev" | "noexec" | "relatime" | "xattr"
                            )
                        })
                        .filter(|o| {
                            !o.starts_with("release_agent") && !o.starts_with("clone_children")
                        })
                        .map(str::to_string)
                        .collect();
                    if !hierarchies
                        .iter()
                        .any(|h: &Hierarchy| h.controllers == controllers && !h.v2)
                    {
                        hierarchies.push(Hierarchy {
                            mount,
                            controllers,
                            v2: false,
                        });
                    }
                }
                _ => {}
            }
        }
        Layout { hierarchies }
    }

    /// This process's view.
    pub fn detect() -> Result<Layout, CgroupError> {
        let text =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| CgroupError::Io {
                path: "/proc/self/mountinfo".into(),
                op: "read",
                source,
            })?;
        let l = Layout::parse(&text);
        if l.hierarchies.is_empty() {
            return Err(CgroupError::NoCgroups("/proc/self/mountinfo".into()));
        }
        Ok(l)
    }

    /// Whether any v1 controller hierarchy exists (pure v1 or hybrid).
    pub fn has_v1(&self) -> bool {
        self.hierarchies.iter().any(|h| !h.v2)
    }

    fn v1(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| !h.v2 && h.controllers.iter().any(|c| c == controller))
    }

    fn v2(&self) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.v2)
    }

    /// The directory holding `controller`'s files for `rel`, and whether it is v2.
    fn dir_for(&self, controller: &str, rel: &Path) -> Option<(PathBuf, bool)> {
        if let Some(h) = self.v1(controller) {
            return Some((h.mount.join(rel), false));
        }
        let h = self.v2()?;
        let avail = std::fs::read_to_string(h.mount.join("cgroup.controllers")).unwrap_or_default();
        avail
            .split_whitespace()
            .any(|c| c == controller)
            .then(|| (h.mount.join(rel), true))
    }
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { path, op, source }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io(path, "write"))
}

/// The cgroup path relative to each hierarchy: `linux.cgroupsPath` or `/keel/<id>`.
pub fn relative_path(spec_path: Option<&Path>, id: &str) -> PathBuf {
    let p = spec_path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(format!("/keel/{id}")));
    p.strip_prefix("/").map(Path::to_path_buf).unwrap_or(p)
}

impl CgroupError {
    /// Whether this is the kernel refusing an unprivileged user.
    pub fn is_permission(&self) -> bool {
        matches!(self, CgroupError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            CgroupError::Io { path, .. } | CgroupError::Busy { path } => Some(path),
            _ => None,
        }
    }
}

/// Whether `r` asks for a limit (device rules aside: a rootless container cannot make
/// device nodes anyway).
pub fn has_limits(r: &LinuxResources) -> bool {
    r.memory().is_some()
        || r.cpu().is_some()
        || r.pids().is_some()
        || r.block_io().is_some()
        || r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty())
}

/// Creates the container's directories (every hierarchy, so its processes are tracked
/// everywhere), applies `resources` and returns the directories. With `fresh`, what a
/// container that was never deleted left there is removed first (see
/// [`remove_leftovers`]); without, existing directories are used as they are (the
/// systemd driver's scope, made for this container just before).
pub fn create(
    layout: &Layout,
    rel: &Path,
    resources: Option<&LinuxResources>,
    fresh: bool,
) -> Result<Vec<PathBuf>, CgroupError> {
    let leaves: Vec<PathBuf> = layout
        .hierarchies
        .iter()
        .map(|h| h.mount.join(rel))
        .collect();
    if fresh {
        remove_leftovers(&leaves)?;
    }
    let mut dirs = Vec::new();
    let result = (|| {
        for h in &layout.hierarchies {
            let dir = h.mount.join(rel);
            if h.v2 {
                enable_v2_controllers(&h.mount, rel)?;
            }
            if !dir.exists() {
                // Create level by level so cpuset levels get their parent's cpus/mems.
                let mut cur = h.mount.clone();
                for comp in rel.components() {
                    cur.push(comp);
                    if !cur.exists() {
                        std::fs::create_dir(&cur).map_err(io(&cur, "create"))?;
                        dirs.push(cur.clone());
                        if h.controllers.iter().any(|c| c == "cpuset") {
                            inherit_cpuset(&cur)?;
                        }
                    }
                }
            }
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        if let Some(r) = resources {
            apply(layout, rel, r)?;
            // Device rules on cgroup2 are a device program on the container's directory
            // (on a hybrid host as well as the v1 controller).
            if let Some(rules) = r.devices()
                && let Some(h) = layout.v2()
            {
                crate::devices::attach(&h.mount.join(rel), &crate::devices::rules(rules))?;
            }
        }
        Ok(())
    })();
    match result {
        // Only the leaf directories belong to the container.
        Ok(()) => Ok(leaves),
        Err(e) => {
            for d in dirs.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
            Err(e)
        }
    }
}

/// A container's cgroup that is already there is what a container that was never
/// deleted left (a killed runtime, a power loss): its limits and device rules would
/// carry over into the new one. Empty, it is removed so the container starts from a fresh
/// directory; with processes in it, creating the container is refused (as runc does).
fn remove_leftovers(leaves: &[PathBuf]) -> Result<(), CgroupError> {
    for leaf in leaves {
        let count = pids(std::slice::from_ref(leaf)).len();
        if count > 0 {
            return Err(CgroupError::InUse {
                path: leaf.clone(),
                count,
            });
        }
    }
    for leaf in leaves.iter().filter(|l| l.exists()) {
        remove_tree(leaf)?;
    }
    Ok(())
}

/// Removes an empty cgroup directory and the empty ones under it, deepest first.
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let children = std::fs::read_dir(dir).map_err(io(dir, "list"))?;
    for entry in children {
        let entry = entry.map_err(io(dir, "list"))?;
        if entry
            .file_type()
            .map_err(io(&entry.path(), "stat"))?
            .is_dir()
        {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir).map_err(io(dir, "remove"))
}

fn enable_v2_controllers(root: &Path, rel: &Path) -> Result<(), CgroupError> {
    let avail = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<&str> = avail
        .split_whitespace()
        .filter(|c| matches!(*c, "cpu" | "cpuset" | "memory" | "pids" | "io" | "hugetlb"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for (i, comp) in comps.iter().enumerate() {
        if i + 1 == comps.len() {
            break;
        }
        let line: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
        let ctl = cur.join("cgroup.subtree_control");
        // Best effort: a controller may be unavailable at this level.
        let _ = std::fs::write(&ctl, line.join(" "));
        cur.push(comp);
        if !cur.exists() {
            std::fs::create_dir(&cur).map_err(io(&cur, "create"))?;
        }
    }
    let line: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
    let _ = std::fs::write(cur.join("cgroup.subtree_control"), line.join(" "));
    Ok(())
}

fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let parent = dir.parent().expect("a child cgroup has a parent");
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let mine = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        if mine.trim().is_empty() {
            let theirs =
                std::fs::read_to_string(parent.join(f)).map_err(io(&parent.join(f), "read"))?;
            write(&dir.join(f), theirs.trim())?;
        }
    }
    Ok(())
}

/// cpu.shares (v1, 2–262144) to cpu.weight (v2, 1–10000), as runc converts.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.saturating_sub(2)) * 9999) / 262142
}

/// Writes the limits of `r`.
pub fn apply(layout: &Layout, rel: &Path, r: &LinuxResources) -> Result<(), CgroupError> {
    if let Some(m) = r.memory()
        && let Some((dir, v2)) = layout.dir_for("memory", rel)
    {
        if let Some(limit) = m.limit() {
            let v = if limit < 0 {
                "max".to_string()
            } else {
                limit.to_string()
            };
            if v2 {
                write(&dir.join("memory.max"), &v)?;
            } else {
                write(
                    &dir.join("memory.limit_in_bytes"),
                    if limit < 0 { "-1" } else { &v },
                )?;
            }
        }
        if let Some(res) = m.reservation() {
            let f = if v2 {
                "memory.low"
            } else {
                "memory.soft_limit_in_bytes"
            };
            write(&dir.join(f), &res.to_string())?;
        }
        if let Some(swap) = m.swap() {
            if v2 {
                // v1's memsw counts memory + swap; v2's swap.max is swap alone.
                let swap_only = m.limit().map(|l| (swap - l).max(0)).unwrap_or(swap);
                let f = dir.join("memory.swap.max");
                if f.exists() {
                    write(&f, &swap_only.to_string())?;
                }
            } else {
                let f = dir.join("memory.memsw.limit_in_bytes");
                if f.exists() {
                    write(&f, &swap.to_string())?;
                }
            }
        }
        // v1 only, as in runc: cgroup2 has no swappiness, OOM-killer switch or TCP
        // buffer limit per cgroup. (`kernel`, deprecated by the spec, is ignored as runc
        // ignores it.)
        if !v2 {
            if let Some(sw) = m.swappiness() {
                if sw > 100 {
                    return Err(CgroupError::Invalid {
                        field: "linux.resources.memory.swappiness",
                        why: format!("{sw} is not within 0..=100"),
                    });
                }
                write(&dir.join("memory.swappiness"), &sw.to_string())?;
            }
            if m.disable_oom_killer() == Some(true) {
                write(&dir.join("memory.oom_control"), "1")?;
            }
            if let Some(tcp) = m.kernel_tcp() {
                write(
                    &dir.join("memory.kmem.tcp.limit_in_bytes"),
                    &tcp.to_string(),
                )?;
            }
        }
    }
    if let Some(p) = r.pids()
        && let Some((dir, _)) = layout.dir_for("pids", rel)
    {
        let limit = p.limit();
        write(
            &dir.join("pids.max"),
            &if limit <= 0 {
                "max".to_string()
            } else {
                limit.to_string()
            },
        )?;
    }
    if let Some(c) = r.cpu() {
        if let Some((dir, v2)) = layout.dir_for("cpu", rel) {
            if v2 {
                if let Some(shares) = c.shares() {
                    write(
                        &dir.join("cpu.weight"),
                        &shares_to_weight(shares).to_string(),
                    )?;
                }
                if c.quota().is_some() || c.period().is_some() {
                    let quota = c
                        .quota()
                        .filter(|q| *q > 0)
                        .map(|q| q.to_string())
                        .unwrap_or_else(|| "max".into());
                    let period = c.period().unwrap_or(100_000);
                    write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
                }
            } else {
                if let Some(shares) = c.shares() {
                    write(&dir.join("cpu.shares"), &shares.to_string())?;
                }
                if let Some(period) = c.period() {
                    write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                }
                if let Some(quota) = c.quota() {
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
        }
        if let Some((dir, _)) = layout.dir_for("cpuset", rel) {
            if let Some(cpus) = c.cpus() {
                write(&dir.join("cpuset.cpus"), cpus)?;
            }
            if let Some(mems) = c.mems() {
                write(&dir.join("cpuset.mems"), mems)?;
            }
        }
    }
    if let Some(b) = r.block_io() {
        apply_block_io(layout, rel, b)?;
    }
    if let Some(rules) = r.devices()
        && let Some((dir, false)) = layout.dir_for("devices", rel)
    {
        for rule in crate::devices::rules(rules) {
            let file = if rule.allow {
                "devices.allow"
            } else {
                "devices.deny"
            };
            write(&dir.join(file), &rule.v1_line())?;
        }
    }
    Ok(())
}

/// blkio weight (10–1000) to io.weight (1–10000), as runc converts.
pub fn blkio_weight_to_io(weight: u16) -> u64 {
    1 + (u64::from(weight.max(10)) - 10) * 9999 / 990
}

/// Block I/O: weights and throttles. v1 writes `blkio.{bfq.,}weight`,
/// `blkio.{bfq.,}weight_device` and `blkio.throttle.*_device` (`MAJ:MIN VALUE` each);
/// v2 writes `io.bfq.weight` (1–1000) where BFQ is active, else `io.weight`
/// (converted), and one `io.max` line per device.
fn apply_block_io(
    layout: &Layout,
    rel: &Path,
    b: &oci_spec::runtime::LinuxBlockIo,
) -> Result<(), CgroupError> {
    let throttles = [
        ("rbps", "read_bps_device", b.throttle_read_bps_device()),
        ("wbps", "write_bps_device", b.throttle_write_bps_device()),
        ("riops", "read_iops_device", b.throttle_read_iops_device()),
        ("wiops", "write_iops_device", b.throttle_write_iops_device()),
    ];
    let wants_weight = b.weight().is_some() || b.weight_device().is_some();
    let wants_throttle = throttles.iter().any(|(_, _, t)| t.is_some());
    if !wants_weight && !wants_throttle {
        return Ok(());
    }
    let (dir, v2) = match layout.dir_for("blkio", rel) {
        Some(d) => d,
        None => layout
            .dir_for("io", rel)
            .ok_or_else(|| CgroupError::BlockIo {
                field: if wants_weight {
                    "weight"
                } else {
                    "throttleReadBpsDevice"
                },
                why: "no blkio (v1) or io (v2) controller on this host".into(),
            })?,
    };
    if v2 {
        let bfq = dir.join("io.bfq.weight").exists();
        let (file, prefix) = if bfq {
            ("io.bfq.weight", "")
        } else {
            ("io.weight", "default ")
        };
        let convert = |w: u16| {
            if bfq {
                u64::from(w)
            } else {
                blkio_weight_to_io(w)
            }
        };
        if let Some(w) = b.weight() {
            write(&dir.join(file), &format!("{prefix}{}", convert(w)))?;
        }
        for d in b.weight_device().iter().flatten() {
            if let Some(w) = d.weight() {
                write(
                    &dir.join(file),
                    &format!("{}:{} {}", d.major(), d.minor(), convert(w)),
                )?;
            }
        }
        let mut lines: std::collections::BTreeMap<(i64, i64), Vec<String>> = Default::default();
        for (key, _, list) in &throttles {
            for t in list.iter().flatten() {
                lines
                    .entry((t.major(), t.minor()))
                    .or_default()
                    .push(format!("{key}={}", t.rate()));
            }
        }
        for ((major, minor), limits) in lines {
            write(
                &dir.join("io.max"),
                &format!("{major}:{minor} {}", limits.join(" ")),
            )?;
        }
    } else {
        if wants_weight {
            let file = ["blkio.bfq.weight", "blkio.weight"]
                .into_iter()
                .find(|f| dir.join(f).exists())
                .ok_or_else(|| CgroupError::BlockIo {
                    field: "weight",
                    why: format!(
                        "{} has neither blkio.weight nor blkio.bfq.weight (no proportional I/O scheduler on this host)",
                        dir.display()
                    ),
                })?;
            if let Some(w) = b.weight() {
                write(&dir.join(file), &w.to_string())?;
            }
            for d in b.weight_device().iter().flatten() {
                if let Some(w) = d.weight() {
                    write(
                        &dir.join(format!("{file}_device")),
                        &format!("{}:{} {w}", d.major(), d.minor()),
                    )?;
                }
            }
        }
        for (_, file, list) in &throttles {
            for t in list.iter().flatten() {
                write(
                    &dir.join(format!("blkio.throttle.{file}")),
                    &format!("{}:{} {}", t.major(), t.minor(), t.rate()),
                )?;
            }
        }
    }
    Ok(())
}

/// Freezes (or thaws) the container's processes: the v1 freezer (`freezer.state`), else
/// cgroup v2's `cgroup.freeze`; waits until the kernel reports the new state.
pub fn freeze(layout: &Layout, rel: &Path, frozen: bool) -> Result<(), CgroupError> {
    let (dir, v2) = layout
        .dir_for("freezer", rel)
        .or_else(|| layout.v2().map(|h| (h.mount.join(rel), true)))
        .ok_or_else(|| CgroupError::NoCgroups("no freezer".into()))?;
    // (file to write, value, file to read back, what it says when done)
    let (file, value, check, expect) = match (v2, frozen) {
        (true, true) => ("cgroup.freeze", "1", "cgroup.events", "frozen 1"),
        (true, false) => ("cgroup.freeze", "0", "cgroup.events", "frozen 0"),
        (false, true) => ("freezer.state", "FROZEN", "freezer.state", "FROZEN"),
        (false, false) => ("freezer.state", "THAWED", "freezer.state", "THAWED"),
    };
    for _ in 0..2000 {
        write(&dir.join(file), value)?;
        let now = std::fs::read_to_string(dir.join(check)).unwrap_or_default();
        if now.lines().any(|l| l.trim() == expect) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    Err(CgroupError::Busy { path: dir })
}

/// Whether the container's cgroup is frozen.
pub fn is_frozen(layout: &Layout, rel: &Path) -> bool {
    match layout.dir_for("freezer", rel) {
        Some((d, false)) => {
            std::fs::read_to_string(d.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
        }
        _ => layout.v2().is_some_and(|h| {
            std::fs::read_to_string(h.mount.join(rel).join("cgroup.events"))
                .is_ok_and(|e| e.contains("frozen 1"))
        }),
    }
}

/// Moves `pid` into every directory.
pub fn attach(dirs: &[PathBuf], pid: i32) -> Result<(), CgroupError> {
    for d in dirs {
        write(&d.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(())
}

/// Pids in the container's cgroups.
pub fn pids(dirs: &[PathBuf]) -> Vec<i32> {
    let mut out: Vec<i32> = dirs
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Kills every process in the directories and removes them.
pub fn destroy(dirs: &[PathBuf]) -> Result<(), CgroupError> {
    for _ in 0..5000 {
        let left = pids(dirs);
        if left.is_empty() {
            break;
        }
        for pid in left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    for d in dirs {
        if !d.exists() {
            continue;
        }
        let mut ok = false;
        for _ in 0..5000 {
            match std::fs::remove_dir(d) {
                Ok(()) => {
                    ok = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    ok = true;
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_micros(200)),
            }
        }
        if !ok {
            return Err(CgroupError::Busy { path: d.clone() });
        }
    }
    Ok(())
}

/// A few counters for `events --stats` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub memory_usage: Option<u64>,
    pub memory_limit: Option<u64>,
    pub oom_kills: Option<u64>,
    pub pids_current: Option<u64>,
    pub pids_limit: Option<u64>,
    pub cpu_usage_ns: Option<u64>,
    pub cpu_throttled_periods: Option<u64>,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn kv(p: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(p)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
}

pub fn stats(layout: &Layout, rel: &Path) -> Stats {
    let mut s = Stats::default();
    if let Some((d, v2)) = layout.dir_for("memory", rel) {
        if v2 {
            s.memory_usage = read_u64(&d.join("memory.current"));
            s.memory_limit = read_u64(&d.join("memory.max"));
            s.oom_kills = kv(&d.join("memory.events"), "oom_kill ");
        } else {
            s.memory_usage = read_u64(&d.join("memory.usage_in_bytes"));
            s.memory_limit = read_u64(&d.join("memory.limit_in_bytes"));
            s.oom_kills = kv(&d.join("memory.oom_control"), "oom_kill ");
        }
    }
    if let Some((d, _)) = layout.dir_for("pids", rel) {
        s.pids_current = read_u64(&d.join("pids.current"));
        s.pids_limit = read_u64(&d.join("pids.max"));
    }
    if let Some((d, v2)) = layout.dir_for("cpu", rel) {
        if v2 {
            s.cpu_usage_ns = kv(&d.join("cpu.stat"), "usage_usec ").map(|u| u * 1000);
            s.cpu_throttled_periods = kv(&d.join("cpu.stat"), "nr_throttled ");
        } else {
            s.cpu_throttled_periods = kv(&d.join("cpu.stat"), "nr_throttled ");
        }
    }
    if s.cpu_usage_ns.is_none()
        && let Some((d, false)) = layout.dir_for("cpuacct", rel)
    {
        s.cpu_usage_ns = read_u64(&d.join("cpuacct.usage"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
31 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
32 25 0:30 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
";

    #[test]
    fn parses_hybrid_and_pure_v2() {
        let l = Layout::parse(HYBRID);
        assert!(l.has_v1());
        assert_eq!(l.hierarchies.len(), 5);
        assert_eq!(
            l.v1("cpuacct").unwrap().mount,
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(
            l.v1("name=systemd").unwrap().mount,
            Path::new("/sys/fs/cgroup/systemd")
        );
        assert!(l.v2().is_some());
        let v2 = Layout::parse("40 1 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n");
        assert!(!v2.has_v1() && v2.v2().is_some());
    }

    /// A pure-v2 layout whose hierarchy is a temp dir offering `io`.
    fn fake_v2(bfq: bool) -> (tempfile::TempDir, Layout) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        let leaf = d.path().join("keel/c");
        std::fs::create_dir_all(&leaf).unwrap();
        if bfq {
            std::fs::write(leaf.join("io.bfq.weight"), "default 100\n").unwrap();
        }
        let mountinfo = format!(
            "40 1 0:30 / {} rw,nosuid - cgroup2 cgroup2 rw\n",
            d.path().display()
        );
        (d, Layout::parse(&mountinfo))
    }

    fn block_io(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(serde_json::json!({ "blockIO": v })).unwrap()
    }

    #[test]
    fn block_io_on_v2_writes_io_weight_and_one_io_max_line_per_device() {
        let (d, l) = fake_v2(false);
        let r = block_io(serde_json::json!({
            "weight": 500,
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
            "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}]
        }));
        apply(&l, Path::new("keel/c"), &r).unwrap();
        let leaf = d.path().join("keel/c");
        let read = |f: &str| std::fs::read_to_string(leaf.join(f)).unwrap();
        assert_eq!(
            read("io.weight"),
            format!("default {}", blkio_weight_to_io(500))
        );
        assert_eq!(read("io.max"), "8:0 rbps=1048576 wiops=100");
        // With BFQ the weight goes to io.bfq.weight unconverted.
        let (d, l) = fake_v2(true);
        apply(
            &l,
            Path::new("keel/c"),
            &block_io(serde_json::json!({"weight": 500})),
        )
        .unwrap();
        let bfq = std::fs::read_to_string(d.path().join("keel/c/io.bfq.weight")).unwrap();
        assert_eq!(bfq, "500");
    }

    #[test]
    fn blkio_weights_convert_like_runc() {
        assert_eq!(blkio_weight_to_io(10), 1);
        assert_eq!(blkio_weight_to_io(1000), 10000);
        assert_eq!(blkio_weight_to_io(500), 4950);
    }

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262144), 10000);
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative_path(None, "a"), Path::new("keel/a"));
        assert_eq!(
            relative_path(Some(Path::new("/x/y")), "a"),
            Path::new("x/y")
        );
    }
}
