//! The container's filesystem, set up by its init inside the new mount namespace:
//! root propagation, the rootfs bind, the spec's mounts, the default devices, `pivot_root`,
//! masked and read-only paths, a read-only root.

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use oci_spec::runtime::{Mount, Spec};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount {what} on {target}: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{path}: cannot {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("pivot_root into {rootfs}: {source}")]
    Pivot {
        rootfs: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Devices every container gets (bind-mounted from the host, so this works without
/// CAP_MKNOD and in user namespaces).
pub const DEFAULT_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Mount options → flags, propagation flags and the data string.
pub fn parse_options(options: &[String]) -> (MsFlags, MsFlags, String, bool) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    let mut bind = false;
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "suid" => flags &= !MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "dev" => flags &= !MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "exec" => flags &= !MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "async" => flags &= !MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            "remount" => flags |= MsFlags::MS_REMOUNT,
            "mand" => flags |= MsFlags::MS_MANDLOCK,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "bind" => bind = true,
            "rbind" => {
                bind = true;
                flags |= MsFlags::MS_REC;
            }
            "private" => propagation |= MsFlags::MS_PRIVATE,
            "rprivate" => propagation |= MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            "slave" => propagation |= MsFlags::MS_SLAVE,
            "rslave" => propagation |= MsFlags::MS_SLAVE | MsFlags::MS_REC,
            "shared" => propagation |= MsFlags::MS_SHARED,
            "rshared" => propagation |= MsFlags::MS_SHARED | MsFlags::MS_REC,
            "unbindable" => propagation |= MsFlags::MS_UNBINDABLE,
            "runbindable" => propagation |= MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            other => data.push(other.to_string()),
        }
    }
    (flags, propagation, data.join(","), bind)
}

fn mnt(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    mount(source, target, fstype, flags, data).map_err(|source_err| MountError::Mount {
        what: format!(
            "{} ({})",
            source
                .map(|s| s.display().to_string())
                .unwrap_or_else(|| "none".into()),
            fstype.unwrap_or("bind")
        ),
        target: target.to_path_buf(),
        source: source_err,
    })
}

/// `path` inside the rootfs (a destination's leading `/` stripped).
pub fn in_root(rootfs: &Path, dest: &Path) -> PathBuf {
    rootfs.join(dest.strip_prefix("/").unwrap_or(dest))
}

fn ensure_target(target: &Path, source_is_file: bool) -> Result<(), MountError> {
    let io = |op| {
        let path = target.to_path_buf();
        move |source| MountError::Io { path, op, source }
    };
    if target.exists() {
        return Ok(());
    }
    if source_is_file {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("create the parent of"))?;
        }
        std::fs::File::create(target).map_err(io("create"))?;
        Ok(())
    } else {
        std::fs::create_dir_all(target).map_err(io("create"))
    }
}

fn mount_one(rootfs: &Path, m: &Mount) -> Result<(), MountError> {
    let target = in_root(rootfs, m.destination());
    let options = m.options().clone().unwrap_or_default();
    let (flags, propagation, data, bind) = parse_options(&options);
    let fstype = m.typ().as_deref().unwrap_or("");
    let bind = bind || fstype == "bind";
    let source = m.source().as_deref();
    if bind {
        let source = source.unwrap_or(Path::new(""));
        // Anything but a directory (a file, a device node, a socket) binds onto a file.
        ensure_target(&target, source.exists() && !source.is_dir())?;
        mnt(
            Some(source),
            &target,
            None,
            MsFlags::MS_BIND | (flags & MsFlags::MS_REC),
            None,
        )?;
        // Flags other than bind/rec apply through a remount.
        let rest = flags & !MsFlags::MS_REC;
        if !rest.is_empty() {
            mnt(
                None,
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rest,
                None,
            )?;
        }
    } else if fstype == "cgroup" || fstype == "cgroup2" {
        ensure_target(&target, false)?;
        // The container sees its own cgroup (cgroup namespace) through cgroup2 where the
        // host has it; a v1 host gets a read-only empty tmpfs (no controller files).
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        if v2 {
            mnt(
                Some(Path::new("cgroup2")),
                &target,
                Some("cgroup2"),
                flags,
                None,
            )?;
        } else {
            mnt(
                Some(Path::new("tmpfs")),
                &target,
                Some("tmpfs"),
                flags | MsFlags::MS_RDONLY,
                Some("mode=755"),
            )?;
        }
    } else {
        ensure_target(&target, false)?;
        let data = (!data.is_empty()).then_some(data.as_str());
        let r = mnt(source, &target, Some(fstype), flags, data);
        if let Err(e) = r {
            // sysfs needs a network namespace of our own; bind the host's otherwise.
            if fstype == "sysfs" {
                mnt(
                    Some(Path::new("/sys")),
                    &target,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )?;
                mnt(
                    None,
                    &target,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None,
                )?;
            } else {
                return Err(e);
            }
        }
    }
    if !propagation.is_empty() {
        mnt(None, &target, None, propagation, None)?;
    }
    Ok(())
}

/// Everything before `pivot_root`, run inside the new mount namespace.
pub fn prepare_rootfs(spec: &Spec, rootfs: &Path) -> Result<(), MountError> {
    let propagation = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().clone())
        .unwrap_or_else(|| "rprivate".into());
    let (_, prop, _, _) = parse_options(&[propagation]);
    let prop = if prop.is_empty() {
        MsFlags::MS_PRIVATE | MsFlags::MS_REC
    } else {
        prop
    };
    mnt(None, Path::new("/"), None, prop, None)?;
    // pivot_root refuses a shared parent, and an unbindable one cannot be bound from:
    // the mount holding the rootfs goes private here and `/` gets the asked propagation
    // again after pivot_root (see `root_propagation`), as runc does.
    parent_mount_private(rootfs)?;
    mnt(
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    for m in spec.mounts().as_deref().unwrap_or_default() {
        mount_one(rootfs, m)?;
    }
    default_devices(rootfs)?;
    spec_devices(spec, rootfs)
}

/// `linux.devices`: device nodes made with `mknod` (mode, owner), or, inside a user
/// namespace where `mknod` is refused, the host's node at the same path bind-mounted.
fn spec_devices(spec: &Spec, rootfs: &Path) -> Result<(), MountError> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType};
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let userns = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::User);
    for d in linux.devices().iter().flatten() {
        let target = in_root(rootfs, d.path());
        let io = |op: &'static str| {
            let path = target.clone();
            move |source: std::io::Error| MountError::Io { path, op, source }
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("create the parent of"))?;
        }
        if target.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
            std::fs::remove_file(&target).map_err(io("replace"))?;
        }
        if userns {
            ensure_target(&target, true)?;
            mnt(Some(d.path()), &target, None, MsFlags::MS_BIND, None)?;
            continue;
        }
        let kind = match d.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        let mode = d.file_mode().unwrap_or(0o666) & 0o7777;
        let dev = makedev(d.major() as u64, d.minor() as u64);
        mknod(&target, kind, Mode::from_bits_truncate(mode), dev)
            .map_err(|e| io("mknod")(e.into()))?;
        // mknod's mode went through the umask.
        std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(io("chmod"))?;
        std::os::unix::fs::lchown(&target, d.uid(), d.gid()).map_err(io("chown"))?;
    }
    Ok(())
}

fn default_devices(rootfs: &Path) -> Result<(), MountError> {
    let dev = rootfs.join("dev");
    if !dev.is_dir() {
        std::fs::create_dir_all(&dev).map_err(|source| MountError::Io {
            path: dev.clone(),
            op: "create",
            source,
        })?;
    }
    for d in DEFAULT_DEVICES {
        let target = dev.join(d);
        let host = Path::new("/dev").join(d);
        if !host.exists()
            || target.exists()
                && std::fs::metadata(&target).is_ok_and(|m| !m.is_file() || m.len() > 0)
        {
            continue;
        }
        ensure_target(&target, true)?;
        mnt(Some(&host), &target, None, MsFlags::MS_BIND, None)?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        let p = dev.join(link);
        if p.symlink_metadata().is_err() {
            let _ = symlink(to, &p);
        }
    }
    Ok(())
}

/// Makes the mount that holds `path` private (only that mount): tries `path`, then each
/// parent, until one is a mount point (EINVAL means it is not).
fn parent_mount_private(path: &Path) -> Result<(), MountError> {
    let mut at = path;
    loop {
        match mount(
            None::<&str>,
            at,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EINVAL) if at.parent().is_some() => {
                at = at.parent().unwrap_or(Path::new("/"));
            }
            Err(e) => {
                return Err(MountError::Mount {
                    what: "private propagation".into(),
                    target: at.to_path_buf(),
                    source: e,
                });
            }
        }
    }
}

/// After `pivot_root`: `/` gets `linux.rootfsPropagation` (when the spec sets it).
pub fn root_propagation(spec: &Spec) -> Result<(), MountError> {
    let Some(p) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().clone())
    else {
        return Ok(());
    };
    let (_, prop, _, _) = parse_options(std::slice::from_ref(&p));
    if prop.is_empty() {
        return Ok(());
    }
    mount(None::<&str>, "/", None::<&str>, prop, None::<&str>).map_err(|e| MountError::Mount {
        what: format!("linux.rootfsPropagation {p}"),
        target: "/".into(),
        source: e,
    })
}

/// `pivot_root` into `rootfs` and detach the old root.
pub fn pivot(rootfs: &Path) -> Result<(), MountError> {
    let err = |source| MountError::Pivot {
        rootfs: rootfs.to_path_buf(),
        source,
    };
    nix::unistd::chdir(rootfs).map_err(err)?;
    nix::unistd::pivot_root(".", ".").map_err(err)?;
    // The old root is stacked under the new one: make it private, then detach it.
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err)?;
    nix::unistd::chdir("/").map_err(err)?;
    Ok(())
}

/// After `pivot_root`: masked paths, read-only paths, a read-only root.
pub fn finish(spec: &Spec) -> Result<(), MountError> {
    if let Some(linux) = spec.linux() {
        for p in linux.masked_paths().as_deref().unwrap_or_default() {
            let path = Path::new(p);
            match std::fs::metadata(path) {
                Ok(m) if m.is_dir() => mnt(
                    Some(Path::new("tmpfs")),
                    path,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None,
                )?,
                Ok(_) => mnt(
                    Some(Path::new("/dev/null")),
                    path,
                    None,
                    MsFlags::MS_BIND,
                    None,
                )?,
                Err(_) => {}
            }
        }
        for p in linux.readonly_paths().as_deref().unwrap_or_default() {
            let path = Path::new(p);
            if !path.exists() {
                continue;
            }
            mnt(
                Some(path),
                path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            mnt(
                None,
                path,
                None,
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_REC
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC,
                None,
            )?;
        }
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        mnt(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o: Vec<String> = [
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rbind",
            "rslave",
            "ro",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flags, prop, data, bind) = parse_options(&o);
        assert!(bind && flags.contains(MsFlags::MS_REC | MsFlags::MS_NOSUID | MsFlags::MS_RDONLY));
        assert_eq!(prop, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(data, "mode=755,size=65536k");
    }
}
