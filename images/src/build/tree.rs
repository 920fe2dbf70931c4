//! Turns a copy of the Debian base into a Keel root: the workspace's binaries, every
//! agent's unit (enabled under `/usr`, the way CoreOS enabled its agents, so an update
//! can add or change them), the kernel and initramfs inside `/usr`, `os-release`, the
//! update signing key, networking, SSH, and masks for the timers an image never needs.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// Keel's binaries installed to `/usr/bin`.
pub const BINARIES: &[&str] = &[
    "keel-store",
    "keel-locksmith",
    "keel-updater",
    "keel-cloudinit",
    "keel-containerd",
];

/// Where each unit comes from.
const UNITS: &[(&str, &str)] = &[
    (
        "keel-store.service",
        include_str!("../../dist/keel-store.service"),
    ),
    (
        "keel-locksmith.service",
        include_str!("../../../locksmith/dist/keel-locksmith.service"),
    ),
    (
        "keel-locksmith-fleetlock.service",
        include_str!("../../../locksmith/dist/keel-locksmith-fleetlock.service"),
    ),
    (
        "keel-updater.service",
        include_str!("../../../updater/dist/keel-updater.service"),
    ),
    (
        "keel-cloudinit-oem.service",
        include_str!("../../dist/keel-cloudinit-oem.service"),
    ),
    (
        "keel-cloudinit.service",
        include_str!("../../dist/keel-cloudinit.service"),
    ),
    (
        "keel-sshd-keygen.service",
        include_str!("../../dist/keel-sshd-keygen.service"),
    ),
    (
        "keel-ready.service",
        include_str!("../../dist/keel-ready.service"),
    ),
    (
        "keel-grow-root.service",
        include_str!("../../dist/keel-grow-root.service"),
    ),
];

/// `(target, unit)`: `/usr/lib/systemd/system/<target>.wants/<unit>`.
const ENABLED: &[(&str, &str)] = &[
    ("multi-user.target", "keel-updater.service"),
    ("multi-user.target", "keel-locksmith.service"),
    ("multi-user.target", "keel-cloudinit-oem.service"),
    ("multi-user.target", "keel-cloudinit.service"),
    ("multi-user.target", "keel-ready.service"),
    ("multi-user.target", "ssh.service"),
    ("multi-user.target", "systemd-networkd.service"),
    ("sockets.target", "systemd-networkd.socket"),
    (
        "network-online.target",
        "systemd-networkd-wait-online.service",
    ),
    ("ssh.service", "keel-sshd-keygen.service"),
    ("local-fs.target", "keel-grow-root.service"),
];

/// Units masked in `/etc` (timers and services a read-only, image-based host never needs).
const MASKED: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "apt-daily.service",
    "apt-daily-upgrade.service",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "getty@tty1.service",
];

/// A digest over every unit and file this module installs (part of the build's key).
pub fn dist_digest() -> Vec<u8> {
    let mut all = Vec::new();
    for (name, text) in UNITS {
        all.extend_from_slice(name.as_bytes());
        all.extend_from_slice(text.as_bytes());
    }
    for f in DIST_FILES {
        all.extend_from_slice(f);
    }
    for (t, u) in ENABLED {
        all.extend_from_slice(format!("{t}/{u}\n").as_bytes());
    }
    for m in MASKED {
        all.extend_from_slice(m.as_bytes());
    }
    all
}

const DIST_FILES: &[&[u8]] = &[
    include_bytes!("../../dist/report-ready"),
    include_bytes!("../../dist/90-keel-dhcp.network"),
    include_bytes!("../../dist/wait-online-any.conf"),
    include_bytes!("../../dist/update.conf"),
    include_bytes!("../../dist/fstab"),
    include_bytes!("../../dist/sshd-keel.conf"),
    include_bytes!("../../dist/sudoers-core"),
    include_bytes!("../../../updater/dist/10-keel.conf"),
    include_bytes!("../../../updater/dist/com.coreos.update1.conf"),
];

/// Everything a build puts into the tree.
#[derive(Debug, Clone)]
pub struct TreeInputs {
    pub version: String,
    pub build_id: String,
    pub bin_dir: PathBuf,
    pub kernel_version: String,
    /// The public update key (`keel-updater payload keygen` format).
    pub update_key_pub: String,
    pub update_key_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(transparent)]
    Io(#[from] crate::IoError),
    #[error(transparent)]
    Cmd(#[from] crate::cmd::CmdError),
    #[error(
        "{0}: missing; build the release binaries first (`cargo build --release --bins`) or pass --bin-dir"
    )]
    MissingBinary(PathBuf),
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> TreeError {
    let path = path.to_path_buf();
    move |source| TreeError::Io(crate::IoError { path, op, source })
}

fn write(root: &Path, rel: &str, content: &[u8], mode: u32) -> Result<(), TreeError> {
    let p = root.join(rel);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(io(d, "create"))?;
    }
    if p.symlink_metadata().is_ok() {
        std::fs::remove_file(&p).map_err(io(&p, "replace"))?;
    }
    std::fs::write(&p, content).map_err(io(&p, "write"))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(io(&p, "chmod"))
}

fn link(root: &Path, rel: &str, target: &str) -> Result<(), TreeError> {
    let p = root.join(rel);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(io(d, "create"))?;
    }
    if p.symlink_metadata().is_ok() {
        std::fs::remove_file(&p).map_err(io(&p, "replace"))?;
    }
    symlink(target, &p).map_err(io(&p, "symlink"))
}

/// The `os-release` of a build.
pub fn os_release(version: &str, build_id: &str) -> String {
    format!(
        "NAME=\"Keel\"\nID=keel\nID_LIKE=debian\nVERSION=\"{version}\"\nVERSION_ID={version}\n\
         BUILD_ID={build_id}\nPRETTY_NAME=\"Keel {version}\"\nANSI_COLOR=\"38;5;75\"\n\
         HOME_URL=\"https://example.invalid/keel\"\n"
    )
}

/// Installs Keel into `tree` (a copy of the base). `initramfs` goes next to the kernel.
pub fn customise(tree: &Path, inputs: &TreeInputs, initramfs: &[u8]) -> Result<(), TreeError> {
    for b in BINARIES {
        let src = inputs.bin_dir.join(b);
        if !src.is_file() {
            return Err(TreeError::MissingBinary(src));
        }
        let dst = tree.join("usr/bin").join(b);
        // Debug info stays with the build; the image carries stripped binaries.
        crate::cmd::Cmd::new("objcopy")
            .arg("--strip-debug")
            .arg(&src)
            .arg(&dst)
            .run()?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
            .map_err(io(&dst, "chmod"))?;
    }
    let units = "usr/lib/systemd/system";
    for (name, text) in UNITS {
        write(tree, &format!("{units}/{name}"), text.as_bytes(), 0o644)?;
    }
    for (target, unit) in ENABLED {
        link(
            tree,
            &format!("{units}/{target}.wants/{unit}"),
            &format!("../{unit}"),
        )?;
    }
    for unit in MASKED {
        link(tree, &format!("etc/systemd/system/{unit}"), "/dev/null")?;
    }
    // Debian enabled these in /etc; Keel enables them under /usr (above).
    for stale in [
        "etc/systemd/system/multi-user.target.wants/ssh.service",
        "etc/systemd/system/sshd.service",
    ] {
        let _ = std::fs::remove_file(tree.join(stale));
    }
    link(tree, &format!("{units}/sshd.service"), "ssh.service")?;
    write(
        tree,
        "usr/lib/keel/report-ready",
        include_bytes!("../../dist/report-ready"),
        0o755,
    )?;
    write(
        tree,
        "usr/lib/systemd/network/90-keel-dhcp.network",
        include_bytes!("../../dist/90-keel-dhcp.network"),
        0o644,
    )?;
    write(
        tree,
        "usr/lib/systemd/system/systemd-networkd-wait-online.service.d/10-keel-any.conf",
        include_bytes!("../../dist/wait-online-any.conf"),
        0o644,
    )?;
    write(
        tree,
        "usr/share/coreos/update.conf",
        include_bytes!("../../dist/update.conf"),
        0o644,
    )?;
    write(
        tree,
        "usr/lib/keel/updater.d/10-keel.conf",
        include_bytes!("../../../updater/dist/10-keel.conf"),
        0o644,
    )?;
    write(
        tree,
        "usr/share/dbus-1/system.d/com.coreos.update1.conf",
        include_bytes!("../../../updater/dist/com.coreos.update1.conf"),
        0o644,
    )?;
    write(
        tree,
        &format!("usr/share/keel/update-keys/{}.pub", inputs.update_key_name),
        inputs.update_key_pub.as_bytes(),
        0o644,
    )?;
    write(
        tree,
        "usr/lib/os-release",
        os_release(&inputs.version, &inputs.build_id).as_bytes(),
        0o644,
    )?;
    link(tree, "etc/os-release", "../usr/lib/os-release")?;
    // The kernel and initramfs live inside /usr, so each slot boots its own.
    let kdir = format!("usr/lib/modules/{}", inputs.kernel_version);
    let vmlinuz = tree.join(&kdir).join("vmlinuz");
    let kernel = std::fs::read(&vmlinuz).map_err(io(&vmlinuz, "read"))?;
    write(tree, "usr/lib/keel/vmlinuz", &kernel, 0o644)?;
    write(tree, "usr/lib/keel/initrd.img", initramfs, 0o644)?;
    // Per-host state on ROOT.
    write(tree, "etc/fstab", include_bytes!("../../dist/fstab"), 0o644)?;
    write(
        tree,
        "etc/ssh/sshd_config.d/50-keel.conf",
        include_bytes!("../../dist/sshd-keel.conf"),
        0o644,
    )?;
    write(
        tree,
        "etc/sudoers.d/keel-core",
        include_bytes!("../../dist/sudoers-core"),
        0o440,
    )?;
    write(tree, "etc/hostname", b"keel\n", 0o644)?;
    write(tree, "etc/machine-id", b"", 0o444)?;
    let _ = std::fs::remove_file(tree.join("var/lib/dbus/machine-id"));
    for d in ["oem", "boot", "var/lib/keel", "etc/keel"] {
        let p = tree.join(d);
        std::fs::create_dir_all(&p).map_err(io(&p, "create"))?;
    }
    Ok(())
}
