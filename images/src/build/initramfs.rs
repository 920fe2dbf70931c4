//! The initramfs each USR slot carries: busybox, the few modules the Debian cloud kernel
//! has as modules but the boot needs (virtio), and an `/init` that mounts ROOT read-write
//! on `/`, the chosen USR slot read-only on `/usr`, and switches root. Written as a `newc`
//! cpio archive, gzip-compressed, with fixed timestamps.
//!
//! Kernel parameters are Keel's own (`keel.slot=`, `keel.root=`): systemd in the real root
//! interprets `usr=`-like names (`mount.usr=`, `usrhash=`), so none of those are used.

use flate2::Compression;
use flate2::write::GzEncoder;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

/// Modules the initramfs loads (with their dependencies, from `modules.dep`).
pub const MODULES: &[&str] = &["virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod"];

/// The `/init` script (busybox sh).
pub const INIT: &str = r#"#!/bin/sh
# Keel initramfs: ROOT (read-write) on /, USR-<slot> (read-only) on /usr, then systemd.
export PATH=/bin
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
say() { echo "keel-initramfs: $*" > /dev/console; }
die() {
  say "FAILED: $*"
  say "rebooting so the boot loader can count this try"
  sleep 2
  reboot -f
}
slot=""
root_label=ROOT
init=/sbin/init
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    keel.slot=*) slot="${arg#keel.slot=}" ;;
    keel.root=*) root_label="${arg#keel.root=}" ;;
    keel.init=*) init="${arg#keel.init=}" ;;
  esac
done
case "$slot" in
  A|B) usr_label="USR-$slot" ;;
  *) die "no keel.slot=A or keel.slot=B on the kernel command line" ;;
esac
while read -r m; do
  [ -n "$m" ] || continue
  insmod "/lib/modules/$m" 2>/dev/null || grep -q "^${m%.ko} " /proc/modules || die "cannot load module $m"
done < /etc/keel-modules
find_part() {
  for u in /sys/class/block/*/uevent; do
    if grep -qx "PARTNAME=$1" "$u"; then
      echo "/dev/$(sed -n 's/^DEVNAME=//p' "$u")"
      return 0
    fi
  done
  return 1
}
tries=0
while :; do
  usr_dev=$(find_part "$usr_label") && root_dev=$(find_part "$root_label") && \
    [ -b "$usr_dev" ] && [ -b "$root_dev" ] && break
  tries=$((tries + 1))
  [ "$tries" -lt 600 ] || die "partitions $usr_label and $root_label not found"
  sleep 0.1
done
say "slot $slot: $usr_label=$usr_dev $root_label=$root_dev"
mount -t ext4 -o rw "$root_dev" /newroot || die "cannot mount $root_label ($root_dev)"
mkdir -p /newroot/usr
mount -t ext4 -o ro "$usr_dev" /newroot/usr || die "cannot mount $usr_label ($usr_dev) read-only"
[ -x "/newroot$init" ] || [ -L "/newroot$init" ] || die "$usr_label has no $init"
for d in dev proc sys; do
  mkdir -p "/newroot/$d"
  mount --move "/$d" "/newroot/$d"
done
exec switch_root /newroot "$init"
"#;

/// Why the initramfs could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error(transparent)]
    Io(#[from] crate::IoError),
    #[error("module {0:?} is not in modules.dep (kernel {1})")]
    NoModule(String, String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitramfsError + '_ {
    move |source| {
        InitramfsError::Io(crate::IoError {
            path: path.to_path_buf(),
            op: "read",
            source,
        })
    }
}

/// Module paths (relative to the kernel's module directory) in load order: every module
/// after the modules it needs.
pub fn load_order(
    modules_dep: &str,
    builtin: &str,
    wanted: &[&str],
    kver: &str,
) -> Result<Vec<String>, InitramfsError> {
    let norm = |s: &str| s.replace('-', "_");
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((m, d)) = line.split_once(':') else {
            continue;
        };
        let name = Path::new(m)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
            .map(norm);
        if let Some(name) = name {
            by_name.insert(name, m.to_string());
        }
        deps.insert(
            m.to_string(),
            d.split_whitespace().map(String::from).collect(),
        );
    }
    fn visit(
        m: &str,
        deps: &BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(m.to_string()) {
            return;
        }
        // modules.dep lists the whole closure, nearest last: load from the end.
        for d in deps.get(m).into_iter().flatten().rev() {
            visit(d, deps, seen, out);
        }
        out.push(m.to_string());
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for w in wanted {
        match by_name.get(&norm(w)) {
            Some(path) => visit(path, &deps, &mut seen, &mut out),
            // Built into this kernel (modules.builtin): nothing to load.
            None if builtin.lines().any(|l| {
                Path::new(l.trim())
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".ko"))
                    .is_some_and(|n| norm(n) == norm(w))
            }) => {}
            None => return Err(InitramfsError::NoModule(w.to_string(), kver.to_string())),
        }
    }
    Ok(out)
}

/// A `newc` cpio archive in memory.
#[derive(Debug, Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data, (0, 0));
    }

    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, &[], (major, minor));
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.out
    }
}

/// Builds the gzip-compressed initramfs for the kernel `kver` whose modules are under
/// `modules_dir` (`…/lib/modules/<kver>`), with `busybox` (a static binary).
pub fn build(modules_dir: &Path, kver: &str, busybox: &Path) -> Result<Vec<u8>, InitramfsError> {
    let dep_path = modules_dir.join("modules.dep");
    let dep = std::fs::read_to_string(&dep_path).map_err(io(&dep_path))?;
    let builtin_path = modules_dir.join("modules.builtin");
    let builtin = std::fs::read_to_string(&builtin_path).unwrap_or_default();
    let order = load_order(&dep, &builtin, MODULES, kver)?;
    let bb = std::fs::read(busybox).map_err(io(busybox))?;
    let mut c = Cpio::default();
    for d in [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "newroot",
        "proc",
        "sys",
    ] {
        c.dir(d);
    }
    c.char_dev("dev/console", 5, 1);
    c.char_dev("dev/null", 1, 3);
    c.file("bin/busybox", 0o755, &bb);
    c.file("bin/sh", 0o755, &bb);
    c.file("init", 0o755, INIT.as_bytes());
    let mut list = String::new();
    for m in &order {
        let path = modules_dir.join(m);
        let data = std::fs::read(&path).map_err(io(&path))?;
        let base = Path::new(m)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(m)
            .to_string();
        c.file(&format!("lib/modules/{base}"), 0o644, &data);
        list.push_str(&base);
        list.push('\n');
    }
    c.file("etc/keel-modules", 0o644, list.as_bytes());
    let raw = c.finish();
    let mut gz = GzEncoder::new(Vec::new(), Compression::new(6));
    gz.write_all(&raw).map_err(io(busybox))?;
    gz.finish().map_err(io(busybox))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio_ring.ko:\n\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n";

    #[test]
    fn dependencies_load_first_and_once() {
        let order = load_order(
            DEP,
            "kernel/drivers/scsi/sd_mod.ko\n",
            &["virtio_pci", "virtio-blk", "sd_mod"],
            "6.1",
        )
        .unwrap();
        let names: Vec<&str> = order
            .iter()
            .map(|p| p.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "virtio_ring.ko",
                "virtio.ko",
                "virtio_pci_modern_dev.ko",
                "virtio_pci.ko",
                "virtio_blk.ko"
            ]
        );
        let err = load_order(DEP, "", &["nope"], "6.1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"nope\"") && err.contains("6.1"), "{err}");
    }

    #[test]
    fn cpio_newc_layout() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"abc");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        // header 110 + "init\0" (5) padded to 116, data 3 padded to 4.
        assert_eq!(&out[110..114], b"init");
        assert_eq!(&out[116..119], b"abc");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
