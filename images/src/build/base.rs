//! The Debian base: `debootstrap` of a minimal bookworm with systemd, plus the Debian
//! cloud kernel and its modules under `/usr/lib/modules/<version>`. Cached by a key over
//! everything that decides its content, so a rebuild with only Keel changes skips it.

use crate::cmd::{Cmd, CmdError};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Packages on top of debootstrap's minbase.
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "iproute2",
    "kmod",
    "openssh-server",
    "libseccomp2",
    "e2fsprogs",
    "ca-certificates",
    "sudo",
    "libnss-myhostname",
];

/// What the base is made of.
#[derive(Debug, Clone)]
pub struct BaseSpec {
    pub suite: String,
    pub mirror: String,
    pub packages: Vec<String>,
    /// Debian's kernel meta package (its versioned dependency is what gets installed).
    pub kernel_package: String,
}

impl Default for BaseSpec {
    fn default() -> BaseSpec {
        BaseSpec {
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            packages: PACKAGES.iter().map(|s| s.to_string()).collect(),
            kernel_package: "linux-image-cloud-amd64".into(),
        }
    }
}

impl BaseSpec {
    /// The cache key: changes whenever the content would.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!(
            "v1\n{}\n{}\n{}\n{}\n",
            self.suite,
            self.mirror,
            self.packages.join(","),
            self.kernel_package
        ));
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// A cached base tree.
#[derive(Debug, Clone)]
pub struct Base {
    pub tree: PathBuf,
    pub kernel_version: String,
    /// True when this call built it (false: taken from the cache).
    pub built: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error(transparent)]
    Io(#[from] crate::IoError),
    #[error("{0}: the kernel package has no versioned linux-image dependency")]
    NoKernelDep(String),
    #[error("{0}: no vmlinuz or modules in the kernel package")]
    NoKernel(PathBuf),
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> BaseError {
    let path = path.to_path_buf();
    move |source| BaseError::Io(crate::IoError { path, op, source })
}

/// Returns the base for `spec` from `cache`, building it first when missing.
pub fn ensure(cache: &Path, spec: &BaseSpec) -> Result<Base, BaseError> {
    let dir = cache.join(format!("base-{}", spec.key()));
    let tree = dir.join("tree");
    let stamp = dir.join("kernel-version");
    if let Ok(kver) = std::fs::read_to_string(&stamp) {
        return Ok(Base {
            tree,
            kernel_version: kver.trim().to_string(),
            built: false,
        });
    }
    std::fs::create_dir_all(cache).map_err(io(cache, "create"))?;
    let tmp = cache.join(format!("base-{}.partial", spec.key()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp, "remove the partial base"))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp, "create"))?;
    let tmp_tree = tmp.join("tree");
    tracing::info!(suite = %spec.suite, mirror = %spec.mirror, "debootstrap (minbase + systemd)");
    Cmd::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", spec.packages.join(",")))
        .arg(&spec.suite)
        .arg(&tmp_tree)
        .arg(&spec.mirror)
        .run()?;
    let kver = install_kernel(&tmp, &tmp_tree, &spec.kernel_package)?;
    trim(&tmp_tree)?;
    std::fs::write(tmp.join("kernel-version"), format!("{kver}\n"))
        .map_err(io(&tmp, "write the kernel version into"))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir, "remove the stale base"))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io(&dir, "move the finished base to"))?;
    Ok(Base {
        tree,
        kernel_version: kver,
        built: true,
    })
}

/// Downloads the kernel package (through the host's apt), unpacks it and moves the
/// kernel and its modules to `/usr/lib/modules/<version>` in `tree`.
fn install_kernel(work: &Path, tree: &Path, meta: &str) -> Result<String, BaseError> {
    let debs = work.join("debs");
    std::fs::create_dir_all(&debs).map_err(io(&debs, "create"))?;
    Cmd::new("apt-get")
        .args(["download", "-q", meta])
        .current_dir(&debs)
        .run()?;
    let meta_deb = find_deb(&debs, meta)?;
    let depends = Cmd::new("dpkg-deb")
        .arg("-f")
        .arg(&meta_deb)
        .arg("Depends")
        .output()?;
    let depends = String::from_utf8_lossy(&depends);
    let image = depends
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-"))
        .ok_or_else(|| BaseError::NoKernelDep(meta.to_string()))?
        .to_string();
    Cmd::new("apt-get")
        .args(["download", "-q", &image])
        .current_dir(&debs)
        .run()?;
    let deb = find_deb(&debs, &image)?;
    let x = work.join("kernel");
    Cmd::new("dpkg-deb").arg("-x").arg(&deb).arg(&x).run()?;
    let modules = x.join("lib/modules");
    let kver = std::fs::read_dir(&modules)
        .map_err(io(&modules, "list"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| BaseError::NoKernel(deb.clone()))?;
    let dest = tree.join("usr/lib/modules").join(&kver);
    std::fs::create_dir_all(dest.parent().unwrap_or(tree)).map_err(io(&dest, "create"))?;
    std::fs::rename(modules.join(&kver), &dest).map_err(io(&dest, "move the modules to"))?;
    let vmlinuz = x.join("boot").join(format!("vmlinuz-{kver}"));
    std::fs::rename(&vmlinuz, dest.join("vmlinuz")).map_err(io(&vmlinuz, "move"))?;
    Cmd::new("depmod").arg("-b").arg(tree).arg(&kver).run()?;
    std::fs::remove_dir_all(&x).map_err(io(&x, "remove"))?;
    Ok(kver)
}

fn find_deb(dir: &Path, package: &str) -> Result<PathBuf, BaseError> {
    std::fs::read_dir(dir)
        .map_err(io(dir, "list"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .ok_or_else(|| BaseError::NoKernel(dir.join(package)))
}

/// Drops what an image-based host never uses: apt's caches and lists, docs, man pages,
/// locales, and the host keys debootstrap generated (each host makes its own).
fn trim(tree: &Path) -> Result<(), BaseError> {
    for rel in [
        "var/cache/apt",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "var/log/apt",
        "var/log/dpkg.log",
        "var/log/bootstrap.log",
        "var/log/alternatives.log",
    ] {
        let p = tree.join(rel);
        let res = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&p, "remove")(e)),
        }
    }
    let ssh = tree.join("etc/ssh");
    if let Ok(rd) = std::fs::read_dir(&ssh) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                std::fs::remove_file(e.path()).map_err(io(&e.path(), "remove"))?;
            }
        }
    }
    Ok(())
}
