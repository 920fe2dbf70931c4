//! Host packages the build and the VMs need, checked by the file each provides; installed
//! with apt when running as root, otherwise named in one `apt-get install` line.

use crate::cmd::Cmd;
use std::path::Path;

/// `(file that must exist, Debian package providing it)`.
pub const NEEDS: &[(&str, &str)] = &[
    ("/usr/sbin/debootstrap", "debootstrap"),
    ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
    ("/usr/bin/qemu-img", "qemu-utils"),
    ("/usr/sbin/mkfs.ext4", "e2fsprogs"),
    ("/usr/sbin/mkfs.vfat", "dosfstools"),
    ("/usr/bin/mcopy", "mtools"),
    ("/usr/bin/grub-mkimage", "grub-common"),
    ("/usr/lib/grub/i386-pc/boot.img", "grub-pc-bin"),
    ("/bin/busybox", "busybox-static"),
    ("/usr/bin/genisoimage", "genisoimage"),
    ("/usr/bin/ssh", "openssh-client"),
    ("/usr/bin/ssh-keygen", "openssh-client"),
    ("/usr/bin/dpkg-deb", "dpkg"),
    ("/usr/sbin/depmod", "kmod"),
    ("/usr/bin/objcopy", "binutils"),
];

/// Packages whose files are missing.
pub fn missing() -> Vec<&'static str> {
    let mut m: Vec<&str> = NEEDS
        .iter()
        .filter(|(f, _)| !Path::new(f).exists())
        .map(|(_, p)| *p)
        .collect();
    m.dedup();
    m
}

/// Installs the missing packages (as root), or explains which are missing.
pub fn ensure(install: bool) -> anyhow::Result<()> {
    let m = missing();
    if m.is_empty() {
        return Ok(());
    }
    if !install || !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "missing host packages; install them with:\n  sudo apt-get install -y {}",
            m.join(" ")
        );
    }
    tracing::info!(packages = %m.join(" "), "installing host packages");
    Cmd::new("apt-get").args(["update", "-qq"]).run()?;
    Cmd::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&m)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()?;
    let still = missing();
    anyhow::ensure!(
        still.is_empty(),
        "still missing after apt-get: {}",
        still.join(" ")
    );
    Ok(())
}
