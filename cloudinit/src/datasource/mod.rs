//! Where user-data and metadata come from. Every configured [`Source`] is polled
//! concurrently, each with its own backoff (100 ms doubling to 30 s, as
//! coreos-cloudinit); the first that is available wins; the whole wait has an overall
//! timeout. A source that is reachable but has no user-data (a metadata service
//! answering 4xx) yields empty user-data, not an error.
//!
//! Config-drive and NoCloud media may be a directory, an image file or a block device.
//! ISO9660 ([`iso9660`]) and FAT/VFAT ([`fat`]) are read in place, without mounting; an
//! ext2/3/4 medium is mounted read-only for the read ([`mount`], through [`loopdev`] for
//! an image file) and unmounted afterwards. The label (`config-2`, `cidata`) is checked
//! before anything is read or mounted.

pub mod fat;
pub mod http;
pub mod iso9660;
pub mod loopdev;
pub mod mount;

use crate::metadata::Metadata;
use http::{Client, Fetch, HttpError};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// First delay between availability checks of one source.
pub const POLL_INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between availability checks.
pub const POLL_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long to wait for any source (coreos-cloudinit: 5 minutes).
pub const DEFAULT_OVERALL_TIMEOUT: Duration = Duration::from_secs(300);
/// EC2's metadata service.
pub const EC2_METADATA_URL: &str = "http://169.254.169.254/";
/// EC2 API version whose paths coreos-cloudinit used.
pub const EC2_API_VERSION: &str = "2009-04-04";
/// Default QEMU `fw_cfg` entry holding user-data.
pub const DEFAULT_FW_CFG_NAME: &str = "opt/org.keel/user-data";
/// Where the kernel exposes `fw_cfg` entries.
pub const FW_CFG_SYSFS: &str = "/sys/firmware/qemu_fw_cfg/by_name";
/// Filesystem label of an OpenStack config-drive.
pub const CONFIG_DRIVE_LABEL: &str = "config-2";
/// Filesystem label of a NoCloud drive.
pub const NOCLOUD_LABEL: &str = "cidata";
/// Where udev links filesystems by label, relative to the host root.
pub const BY_LABEL_DIR: &str = "dev/disk/by-label";

/// A place user-data may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local file.
    File(PathBuf),
    /// An HTTP(S) URL.
    Url(String),
    /// A config-drive: a mounted directory, or an image file or block device
    /// (ISO9660 and FAT are read directly, ext2/3/4 is mounted read-only).
    ConfigDrive(PathBuf),
    /// `cloud-config-url=` on the kernel command line (the file to read it from).
    ProcCmdline(PathBuf),
    /// An EC2-style metadata service (base URL ending in `/`).
    Ec2(String),
    /// A NoCloud `cidata` directory, image file or block device.
    NoCloud(PathBuf),
    /// A QEMU `fw_cfg` entry file (`…/by_name/opt/…/raw`).
    FwCfg(PathBuf),
}

impl Source {
    pub fn name(&self) -> String {
        match self {
            Source::File(p) => format!("file {}", p.display()),
            Source::Url(u) => format!("url {u}"),
            Source::ConfigDrive(p) => format!("config-drive {}", p.display()),
            Source::ProcCmdline(p) => format!("kernel command line {}", p.display()),
            Source::Ec2(u) => format!("ec2 metadata {u}"),
            Source::NoCloud(p) => format!("nocloud {}", p.display()),
            Source::FwCfg(p) => format!("fw_cfg {}", p.display()),
        }
    }
}

/// User-data and metadata from the source that answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    pub source: String,
    pub user_data: Vec<u8>,
    pub metadata: Metadata,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasourceError {
    #[error("no datasource available within {0:?}")]
    Timeout(Duration),
    #[error("no datasource configured")]
    NoneConfigured,
    #[error("{source_name}")]
    Failed {
        source_name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Http(#[from] HttpError),
}

fn failed(
    source: &Source,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> DatasourceError + '_ {
    move |e| DatasourceError::Failed {
        source_name: source.name(),
        source: e,
    }
}

/// The device udev links for filesystem label `label`, under host root `root`
/// (`/dev/disk/by-label/config-2` on a booted host).
pub fn by_label_path(root: &Path, label: &str) -> PathBuf {
    root.join(BY_LABEL_DIR).join(label)
}

/// The QEMU `fw_cfg` path for `opt/…` name `name`.
pub fn fw_cfg_path(name: &str) -> PathBuf {
    Path::new(FW_CFG_SYSFS).join(name).join("raw")
}

/// Reads user-data from the first available of `sources`.
pub async fn fetch_first(
    sources: &[Source],
    client: &Client,
    overall: Duration,
) -> Result<Fetched, DatasourceError> {
    if sources.is_empty() {
        return Err(DatasourceError::NoneConfigured);
    }
    let mut set = tokio::task::JoinSet::new();
    for s in sources {
        let s = s.clone();
        let client = client.clone();
        set.spawn(async move {
            let mut backoff = POLL_INITIAL_BACKOFF;
            loop {
                match fetch(&s, &client).await {
                    Ok(Some(f)) => return Ok(f),
                    Ok(None) => {}
                    Err(e) => return Err(e),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(POLL_MAX_BACKOFF);
            }
        });
    }
    let wait = async {
        let mut last_err = None;
        while let Some(done) = set.join_next().await {
            match done {
                Ok(Ok(f)) => return Ok(f),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "datasource failed");
                    last_err = Some(e);
                }
                Err(join) => tracing::warn!(error = %join, "datasource task failed"),
            }
        }
        Err(last_err.unwrap_or(DatasourceError::NoneConfigured))
    };
    let result = tokio::time::timeout(overall, wait)
        .await
        .unwrap_or(Err(DatasourceError::Timeout(overall)));
    set.abort_all();
    result
}

/// One attempt: `Ok(None)` while the source is not available yet.
pub async fn fetch(source: &Source, client: &Client) -> Result<Option<Fetched>, DatasourceError> {
    let name = source.name();
    let done = |user_data: Vec<u8>, metadata: Metadata| {
        Some(Fetched {
            source: name.clone(),
            user_data,
            metadata,
        })
    };
    match source {
        Source::File(p) | Source::FwCfg(p) => match tokio::fs::read(p).await {
            Ok(data) => Ok(done(data, Metadata::default())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(failed(source)(Box::new(e))),
        },
        Source::Url(url) => match client.get(url, &[]).await? {
            Fetch::Found(data) => Ok(done(data, Metadata::default())),
            Fetch::NotFound(status) => Err(failed(source)(format!("HTTP status {status}").into())),
        },
        Source::ProcCmdline(p) => {
            let cmdline = tokio::fs::read_to_string(p)
                .await
                .map_err(|e| failed(source)(Box::new(e)))?;
            let Some(url) = cmdline_url(&cmdline) else {
                return Err(failed(source)(
                    "no cloud-config-url= on the kernel command line".into(),
                ));
            };
            match client.get(&url, &[]).await? {
                Fetch::Found(data) => Ok(done(data, Metadata::default())),
                Fetch::NotFound(status) => Err(failed(source)(
                    format!("{url}: HTTP status {status}").into(),
                )),
            }
        }
        Source::ConfigDrive(p) => {
            let p = p.clone();
            let read = tokio::task::spawn_blocking(move || read_config_drive(&p))
                .await
                .map_err(|e| failed(source)(Box::new(e)))?;
            Ok(read.map_err(failed(source))?.and_then(|(u, m)| done(u, m)))
        }
        Source::NoCloud(p) => {
            let p = p.clone();
            let read = tokio::task::spawn_blocking(move || read_nocloud(&p))
                .await
                .map_err(|e| failed(source)(Box::new(e)))?;
            Ok(read.map_err(failed(source))?.and_then(|(u, m)| done(u, m)))
        }
        Source::Ec2(base) => ec2(base, client)
            .await
            .map(|r| r.and_then(|(u, m)| done(u, m))),
    }
}

/// `cloud-config-url=` (or `cloud_config_url=`) from a kernel command line.
pub fn cmdline_url(cmdline: &str) -> Option<String> {
    cmdline.split_whitespace().rev().find_map(|w| {
        w.strip_prefix("cloud-config-url=")
            .or_else(|| w.strip_prefix("cloud_config_url="))
            .map(str::to_string)
    })
}

type Read = Result<Option<(Vec<u8>, Metadata)>, Box<dyn std::error::Error + Send + Sync>>;

/// A directory, an ISO9660 or FAT image, or a mounted ext2/3/4 medium: a reader of
/// relative paths.
#[derive(Debug)]
enum Medium {
    Dir(PathBuf),
    Iso(Box<iso9660::Iso>),
    Fat(Box<fat::Fat>),
    Mounted {
        label: String,
        mounted: mount::Mounted,
    },
}

impl Medium {
    /// Opens `p`; `None` while it does not exist. A medium whose label is not `label`
    /// is refused before anything is mounted.
    fn open(
        p: &Path,
        label: &str,
    ) -> Result<Option<Medium>, Box<dyn std::error::Error + Send + Sync>> {
        let medium = match std::fs::metadata(p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Box::new(e)),
            Ok(m) if m.is_dir() => return Ok(Some(Medium::Dir(p.to_path_buf()))),
            Ok(_) => Self::open_image(p, label)?,
        };
        if let Some(found) = medium.label() {
            check_label(found, label)?;
        }
        Ok(Some(medium))
    }

    fn open_image(
        p: &Path,
        label: &str,
    ) -> Result<Medium, Box<dyn std::error::Error + Send + Sync>> {
        match iso9660::Iso::open(p) {
            Ok(iso) => return Ok(Medium::Iso(Box::new(iso))),
            Err(iso9660::IsoError::NotIso) => {}
            Err(e) => return Err(Box::new(e)),
        }
        match fat::Fat::open(p) {
            Ok(fat) => return Ok(Medium::Fat(Box::new(fat))),
            Err(fat::FatError::NotFat) => {}
            Err(e) => return Err(Box::new(e)),
        }
        let Some(found) = mount::ext_label(p)? else {
            return Err(format!(
                "{} is not an ISO9660, FAT or ext2/3/4 filesystem",
                p.display()
            )
            .into());
        };
        check_label(&found, label)?;
        Ok(Medium::Mounted {
            label: found,
            mounted: mount::Mounted::mount(p, mount::EXT_FS_TYPES)?,
        })
    }

    fn read(
        &mut self,
        rel: &str,
    ) -> Result<Option<Vec<u8>>, Box<dyn std::error::Error + Send + Sync>> {
        match self {
            Medium::Dir(d) => match std::fs::read(d.join(rel)) {
                Ok(c) => Ok(Some(c)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Box::new(e)),
            },
            Medium::Iso(iso) => Ok(iso.read(rel)?),
            Medium::Fat(fat) => Ok(fat.read(rel)?),
            Medium::Mounted { mounted, .. } => Ok(mounted.read(rel)?),
        }
    }

    fn label(&self) -> Option<&str> {
        match self {
            Medium::Dir(_) => None,
            Medium::Iso(iso) => Some(&iso.label),
            Medium::Fat(fat) => Some(&fat.label),
            Medium::Mounted { label, .. } => Some(label),
        }
    }
}

fn check_label(found: &str, want: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if found.eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(format!("image label is {found:?}, not {want:?}").into())
    }
}

/// OpenStack config-drive: `openstack/latest/user_data` and `meta_data.json`.
pub fn read_config_drive(p: &Path) -> Read {
    let Some(mut medium) = Medium::open(p, CONFIG_DRIVE_LABEL)? else {
        return Ok(None);
    };
    let user_data = medium
        .read("openstack/latest/user_data")?
        .unwrap_or_default();
    let mut md = Metadata::default();
    if let Some(json) = medium.read("openstack/latest/meta_data.json")? {
        let v: serde_json::Value = serde_json::from_slice(&json)?;
        if let Some(h) = v.get("hostname").and_then(|h| h.as_str()) {
            md.set_hostname(h);
        }
        if let Some(keys) = v.get("public_keys").and_then(|k| k.as_object()) {
            for (name, key) in keys {
                if let Some(k) = key.as_str() {
                    md.ssh_public_keys
                        .insert(name.clone(), k.trim().to_string());
                }
            }
        }
    }
    Ok(Some((user_data, md)))
}

/// NoCloud: `user-data` and `meta-data` (YAML: `local-hostname`, `public-keys`).
pub fn read_nocloud(p: &Path) -> Read {
    let Some(mut medium) = Medium::open(p, NOCLOUD_LABEL)? else {
        return Ok(None);
    };
    let user_data = medium.read("user-data")?.unwrap_or_default();
    let mut md = Metadata::default();
    if let Some(meta) = medium.read("meta-data")? {
        let text = String::from_utf8_lossy(&meta);
        if let Ok(node) = crate::yaml::parse(&text) {
            for (k, v) in node.as_map().unwrap_or(&[]) {
                match (k.name.as_str(), &v.value) {
                    ("local-hostname" | "hostname", crate::yaml::Value::Scalar(s)) => {
                        md.set_hostname(&s.text)
                    }
                    ("public-keys", crate::yaml::Value::Seq(items)) => {
                        for (i, item) in items.iter().enumerate() {
                            if let crate::yaml::Value::Scalar(s) = &item.value {
                                md.ssh_public_keys
                                    .insert(i.to_string(), s.text.trim().into());
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(Some((user_data, md)))
}

const IMDS_TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
const IMDS_TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
/// Lifetime asked for an IMDSv2 session token.
const IMDS_TOKEN_TTL_SECONDS: &str = "21600";

async fn ec2(base: &str, client: &Client) -> Result<Option<(Vec<u8>, Metadata)>, DatasourceError> {
    let base = if base.ends_with('/') {
        base.to_string()
    } else {
        format!("{base}/")
    };
    // IMDSv2 when the service offers a token; IMDSv1 otherwise.
    let token = match client
        .put(
            &format!("{base}latest/api/token"),
            &[(IMDS_TTL_HEADER, IMDS_TOKEN_TTL_SECONDS)],
        )
        .await
    {
        Ok(Fetch::Found(t)) => Some(String::from_utf8_lossy(&t).trim().to_string()),
        _ => None,
    };
    let headers: Vec<(&str, &str)> = token
        .as_deref()
        .map(|t| vec![(IMDS_TOKEN_HEADER, t)])
        .unwrap_or_default();
    let get = |path: String| {
        let url = format!("{base}{EC2_API_VERSION}/{path}");
        let headers = headers.clone();
        async move { client.get(&url, &headers).await }
    };
    let text = |f: Fetch| match f {
        Fetch::Found(b) => Some(String::from_utf8_lossy(&b).trim().to_string()),
        Fetch::NotFound(_) => None,
    };
    if let Fetch::NotFound(_) = get("meta-data/".into()).await? {
        return Ok(None);
    }
    let mut md = Metadata::default();
    if let Some(h) = text(get("meta-data/hostname".into()).await?) {
        md.set_hostname(&h);
    }
    let ip = |s: Option<String>| s.and_then(|s| s.parse::<IpAddr>().ok());
    md.private_ipv4 = ip(text(get("meta-data/local-ipv4".into()).await?));
    md.public_ipv4 = ip(text(get("meta-data/public-ipv4".into()).await?));
    if let Some(list) = text(get("meta-data/public-keys/".into()).await?) {
        for line in list.lines() {
            let Some((index, name)) = line.split_once('=') else {
                continue;
            };
            if let Some(key) =
                text(get(format!("meta-data/public-keys/{index}/openssh-key")).await?)
            {
                md.ssh_public_keys.insert(name.to_string(), key);
            }
        }
    }
    let user_data = match get("user-data".into()).await? {
        Fetch::Found(b) => b,
        Fetch::NotFound(_) => Vec::new(),
    };
    Ok(Some((user_data, md)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline() {
        assert_eq!(
            cmdline_url("ro quiet cloud-config-url=http://x/y console=ttyS0").as_deref(),
            Some("http://x/y")
        );
        assert_eq!(
            cmdline_url("cloud_config_url=http://a").as_deref(),
            Some("http://a")
        );
        assert_eq!(cmdline_url("ro"), None);
    }
}
