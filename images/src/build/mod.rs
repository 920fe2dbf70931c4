//! `keel-images build`: the Debian base (cached), Keel's binaries and units, USR-A as a
//! read-only ext4 image carrying its own kernel and initramfs, ROOT, OEM, the ESP with
//! GRUB's config and boot-counting environment, the GPT disk, and the signed update
//! payload of the same USR — one command, one version.

pub mod base;
pub mod disk;
pub mod initramfs;
pub mod tree;

use crate::cmd::{Cmd, CmdError};
use base::{BaseError, BaseSpec};
use disk::{DiskError, Ext4, Sizes};
use keel_updater::boot::BootEnv;
use keel_updater::grubenv::GrubEnv;
use keel_updater::payload;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bumped whenever the build recipe changes in a way the hashed inputs do not show.
pub const RECIPE: u32 = 2;

/// File names inside the output directory.
pub const DISK: &str = "keel.img";
pub const USR: &str = "usr.img";
pub const MANIFEST: &str = "manifest.json";

/// Everything a build needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out: PathBuf,
    pub cache: PathBuf,
    pub version: String,
    pub rollback_index: u64,
    pub bin_dir: PathBuf,
    /// Private update-signing key; default: one generated once in the cache.
    pub key: Option<PathBuf>,
    pub base: BaseSpec,
    pub sizes: Sizes,
    /// Timestamp given to every file and filesystem (SOURCE_DATE_EPOCH).
    pub epoch: i64,
    pub busybox: PathBuf,
    pub grub_dir: PathBuf,
    /// Extra kernel command line for every boot of this image.
    pub cmdline: String,
    /// Rebuild even when nothing changed.
    pub force: bool,
    /// Paths (relative to `/`) removed from the tree before the filesystems are made:
    /// for deliberately broken test images (e.g. a USR without systemd).
    pub remove: Vec<String>,
}

impl BuildOptions {
    pub fn new(out: PathBuf, cache: PathBuf, version: String, bin_dir: PathBuf) -> BuildOptions {
        BuildOptions {
            out,
            cache,
            version,
            rollback_index: 0,
            bin_dir,
            key: None,
            base: BaseSpec::default(),
            sizes: Sizes::default(),
            epoch: std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1_767_225_600),
            busybox: PathBuf::from("/bin/busybox"),
            grub_dir: PathBuf::from("/usr/lib/grub/i386-pc"),
            cmdline: String::new(),
            force: false,
            remove: Vec::new(),
        }
    }
}

/// What a build produced (`manifest.json` in the output directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: String,
    pub build_id: String,
    pub kernel_version: String,
    /// Hash over every input; an unchanged key means an unchanged image.
    pub input_key: String,
    pub disk: String,
    pub disk_bytes: u64,
    pub disk_allocated_bytes: u64,
    pub usr: String,
    pub usr_bytes: u64,
    pub usr_sha256: String,
    pub payload: String,
    pub payload_bytes: u64,
    pub update_key_public: String,
    pub base_cached: bool,
    pub base_seconds: f64,
    pub assemble_seconds: f64,
}

impl Manifest {
    pub fn load(out: &Path) -> Option<Manifest> {
        let text = std::fs::read_to_string(out.join(MANIFEST)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Tree(#[from] tree::TreeError),
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error(transparent)]
    Key(#[from] payload::keys::KeyError),
    #[error(transparent)]
    Payload(#[from] payload::build::BuildError),
    #[error(transparent)]
    Env(#[from] keel_updater::grubenv::GrubEnvError),
    #[error(transparent)]
    Io(#[from] crate::IoError),
    #[error("USR is {size} bytes but the USR partitions hold {room}; raise --usr-mib")]
    UsrTooBig { size: u64, room: u64 },
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |source| BuildError::Io(crate::IoError { path, op, source })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A UUID string derived from `seed` (stable across builds of the same version).
fn uuid_from(seed: &str) -> String {
    let h = Sha256::digest(seed.as_bytes());
    let mut b: [u8; 16] = h[..16].try_into().unwrap_or([0; 16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

fn hash_file(h: &mut Sha256, path: &Path) -> Result<(), BuildError> {
    let mut f = std::fs::File::open(path).map_err(io(path, "read"))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path, "read"))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

fn ensure_key(opts: &BuildOptions) -> Result<(PathBuf, String), BuildError> {
    let private = match &opts.key {
        Some(k) => k.clone(),
        None => {
            let stem = opts.cache.join("update-signing");
            let private = stem.with_extension("key");
            if !private.exists() {
                std::fs::create_dir_all(&opts.cache).map_err(io(&opts.cache, "create"))?;
                let id = payload::keys::generate(&stem)?;
                tracing::info!(key = %private.display(), %id, "generated an update signing key");
            }
            private
        }
    };
    let key = payload::keys::read_private(&private)?;
    let id = payload::keys::key_id(&key.verifying_key());
    use base64::Engine;
    let public = format!(
        "# keel update key {id}\n{}\n",
        base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes())
    );
    Ok((private, public))
}

/// Sets every file's times in `dir` to `epoch` (symlinks themselves, not their targets).
fn clamp_times(dir: &Path, epoch: i64) -> Result<(), BuildError> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let ts = TimeSpec::new(epoch, 0);
    let mut stack = vec![dir.to_path_buf()];
    let set = |p: &Path| {
        utimensat(None, p, &ts, &ts, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| io(p, "set the times of")(e.into()))
    };
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d, "list"))? {
            let e = e.map_err(io(&d, "list"))?;
            let p = e.path();
            if e.file_type().map_err(io(&p, "stat"))?.is_dir() {
                stack.push(p.clone());
            }
            set(&p)?;
        }
    }
    set(dir)
}

/// Logs how long each build step took.
struct Steps(Instant);

impl Steps {
    fn done(&mut self, step: &str) {
        tracing::info!(
            step,
            seconds = format!("{:.1}", self.0.elapsed().as_secs_f64()),
            "built"
        );
        self.0 = Instant::now();
    }
}

/// Runs the build (or returns the existing manifest when no input changed).
pub fn build(opts: &BuildOptions) -> Result<Manifest, BuildError> {
    let t0 = Instant::now();
    let base = base::ensure(&opts.cache, &opts.base)?;
    let base_seconds = t0.elapsed().as_secs_f64();
    let (key_path, key_public) = ensure_key(opts)?;

    let mut h = Sha256::new();
    h.update(format!(
        "keel-images {} recipe {RECIPE}\n{}\n{}\n{}\n{}\n{:?}\n{}\n{}\n{:?}\n",
        env!("CARGO_PKG_VERSION"),
        opts.version,
        opts.rollback_index,
        opts.base.key(),
        key_public,
        opts.sizes,
        opts.epoch,
        opts.cmdline,
        opts.remove
    ));
    h.update(initramfs::INIT);
    h.update(tree::dist_digest());
    h.update(disk::grub_cfg(&opts.cmdline));
    for b in tree::BINARIES {
        hash_file(&mut h, &opts.bin_dir.join(b))
            .map_err(|_| tree::TreeError::MissingBinary(opts.bin_dir.join(b)))?;
    }
    let input_key = hex(&h.finalize()[..16]);
    if !opts.force
        && let Some(m) = Manifest::load(&opts.out)
        && m.input_key == input_key
        && opts.out.join(&m.disk).exists()
        && opts.out.join(&m.payload).exists()
    {
        tracing::info!(out = %opts.out.display(), "image up to date");
        return Ok(m);
    }

    let t1 = Instant::now();
    let mut steps = Steps(t1);
    let out = &opts.out;
    let work = out.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(io(&work, "remove"))?;
    }
    std::fs::create_dir_all(&work).map_err(io(&work, "create"))?;
    let tree_dir = work.join("tree");
    // Hard links: every change below replaces files (never writes into them), so the
    // cached base stays as it was.
    Cmd::new("cp")
        .args(["-a", "-l"])
        .arg(&base.tree)
        .arg(&tree_dir)
        .run()?;
    steps.done("copy of the base tree");
    let kver = &base.kernel_version;
    let initrd = initramfs::build(
        &tree_dir.join("usr/lib/modules").join(kver),
        kver,
        &opts.busybox,
    )?;
    let build_id = format!("{}-{}", opts.version, &input_key[..8]);
    tree::customise(
        &tree_dir,
        &tree::TreeInputs {
            version: opts.version.clone(),
            build_id: build_id.clone(),
            bin_dir: opts.bin_dir.clone(),
            kernel_version: kver.clone(),
            update_key_pub: key_public.clone(),
            update_key_name: "keel-build".into(),
        },
        &initrd,
    )?;
    steps.done("initramfs and Keel files");
    for rel in &opts.remove {
        let p = tree_dir.join(rel.trim_start_matches('/'));
        let res = if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        res.map_err(io(&p, "remove (--remove)"))?;
    }
    // /usr goes to USR-A; ROOT keeps an empty /usr to mount it on.
    let usr_dir = work.join("usr");
    std::fs::rename(tree_dir.join("usr"), &usr_dir).map_err(io(&usr_dir, "move /usr to"))?;
    std::fs::create_dir(tree_dir.join("usr")).map_err(io(&tree_dir, "create usr in"))?;
    let oem_dir = work.join("oem");
    std::fs::create_dir_all(&oem_dir).map_err(io(&oem_dir, "create"))?;
    let esp_dir = work.join("esp");
    let grub_dir = esp_dir.join("grub");
    std::fs::create_dir_all(&grub_dir).map_err(io(&grub_dir, "create"))?;
    std::fs::write(grub_dir.join("grub.cfg"), disk::grub_cfg(&opts.cmdline))
        .map_err(io(&grub_dir, "write grub.cfg in"))?;
    let mut env = GrubEnv::new();
    BootEnv::initial().to_env(&mut env)?;
    env.write(&grub_dir.join("grubenv"))?;
    for d in [&tree_dir, &usr_dir, &oem_dir, &esp_dir] {
        clamp_times(d, opts.epoch)?;
    }
    steps.done("timestamps");

    let mib = 1u64 << 20;
    let usr_size = (disk::tree_size(&usr_dir)? * 11 / 10 + 64 * mib).div_ceil(4 * mib) * 4 * mib;
    if usr_size > opts.sizes.usr * mib {
        return Err(BuildError::UsrTooBig {
            size: usr_size,
            room: opts.sizes.usr * mib,
        });
    }
    let usr_img = out.join(USR);
    let ext4 = |label: &str, size: u64, features: &str| Ext4 {
        label: label.into(),
        uuid: uuid_from(&format!("{label} {}", opts.version)),
        size,
        features: features.into(),
        epoch: opts.epoch,
    };
    disk::mkfs_ext4(
        &usr_dir,
        &usr_img,
        &ext4(
            "USR",
            usr_size,
            "^has_journal,^orphan_file,^metadata_csum_seed",
        ),
    )?;
    steps.done("USR filesystem");
    let root_img = work.join("root.img");
    disk::mkfs_ext4(
        &tree_dir,
        &root_img,
        &ext4("ROOT", opts.sizes.root * mib, ""),
    )?;
    let oem_img = work.join("oem.img");
    disk::mkfs_ext4(&oem_dir, &oem_img, &ext4("OEM", opts.sizes.oem * mib, ""))?;
    let esp_img = work.join("esp.img");
    let volid = &uuid_from(&format!("ESP {}", opts.version))[..8];
    disk::mkfs_vfat(
        &esp_dir,
        &esp_img,
        "EFI-SYSTEM",
        volid,
        opts.sizes.efi * mib,
        opts.epoch,
    )?;
    let core_img = work.join("core.img");
    disk::grub_core_img(&core_img)?;
    steps.done("ROOT, OEM, ESP filesystems and GRUB");
    let disk_path = out.join(DISK);
    disk::assemble(
        &disk_path,
        &opts.sizes,
        &disk::Parts {
            esp: &esp_img,
            usr_a: &usr_img,
            usr_b: None,
            oem: &oem_img,
            root: &root_img,
            core_img: &core_img,
            boot_img: &opts.grub_dir.join("boot.img"),
        },
        format!("keel {}", opts.version).as_bytes(),
    )?;
    steps.done("disk");

    let payload_name = format!("keel-usr-{}.payload", opts.version);
    let payload_path = out.join(&payload_name);
    let key = payload::keys::read_private(&key_path)?;
    let pm = payload::build::build(
        &usr_img,
        &payload_path,
        &payload::build::BuildOptions {
            version: opts.version.clone(),
            rollback_index: opts.rollback_index,
            expires: opts.epoch.max(now()) + 365 * 86_400,
            board: "amd64-usr".into(),
            arch: std::env::consts::ARCH.into(),
            chunk_size: payload::build::DEFAULT_CHUNK_SIZE,
            compression: payload::Compression::Zstd,
        },
        &[key],
    )?;
    steps.done("update payload");
    std::fs::remove_dir_all(&work).map_err(io(&work, "remove"))?;

    let md = |p: &Path| std::fs::metadata(p).map_err(io(p, "stat"));
    let disk_md = md(&disk_path)?;
    use std::os::unix::fs::MetadataExt;
    let m = Manifest {
        version: opts.version.clone(),
        build_id,
        kernel_version: kver.clone(),
        input_key,
        disk: DISK.into(),
        disk_bytes: disk_md.len(),
        disk_allocated_bytes: disk_md.blocks() * 512,
        usr: USR.into(),
        usr_bytes: md(&usr_img)?.len(),
        usr_sha256: pm.image_sha256.clone(),
        payload: payload_name,
        payload_bytes: md(&payload_path)?.len(),
        update_key_public: key_public,
        base_cached: !base.built,
        base_seconds,
        assemble_seconds: t1.elapsed().as_secs_f64(),
    };
    let text = serde_json::to_string_pretty(&m).unwrap_or_default();
    let tmp = out.join(".manifest.json.tmp");
    std::fs::write(&tmp, text + "\n").map_err(io(&tmp, "write"))?;
    std::fs::rename(&tmp, out.join(MANIFEST)).map_err(io(out, "write the manifest in"))?;
    Ok(m)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
