//! Command line: `validate` and `apply`, with coreos-cloudinit's datasource flags.

use crate::apply::{self, PlanOptions};
use crate::datasource::{self, Source, http};
use crate::systemd::{SystemdManager, dbus::DbusManager, root::RootManager};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Applies cloud-config (coreos-cloudinit compatible) to a Keel host.
#[derive(Debug, Parser)]
#[command(name = "keel-cloudinit", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check user-data and print `line N: kind: message` entries; exit 1 on errors.
    Validate {
        #[command(flatten)]
        sources: SourceArgs,
        /// Report format.
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Apply user-data: nothing is touched if it has errors; a second run changes nothing.
    Apply {
        #[command(flatten)]
        sources: SourceArgs,
        /// Apply into this root instead of `/`.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// How to reach systemd: D-Bus, writing unit links into the root, or auto
        /// (D-Bus when the root is `/` and systemd is running, else the root).
        #[arg(long, value_enum, default_value = "auto")]
        systemd: SystemdBackend,
        /// D-Bus address of the system bus (default: the standard system bus).
        #[arg(long)]
        bus_address: Option<String>,
        /// Name of the `authorized_keys.d` fragment written for each user.
        #[arg(long, default_value = apply::DEFAULT_KEY_NAME)]
        ssh_key_name: String,
        /// Report format.
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SystemdBackend {
    Auto,
    Dbus,
    Root,
}

/// OEM presets: the datasources a cloud's image would configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Oem {
    /// EC2 metadata service plus an OpenStack config-drive.
    Ec2Compat,
    /// OpenStack: config-drive.
    Openstack,
    /// QEMU: `fw_cfg` entry, then a NoCloud `cidata` drive.
    Qemu,
    /// NoCloud `cidata` drive.
    Nocloud,
}

/// Where the user-data comes from (several may be given; the first available wins).
#[derive(Debug, Clone, Default, Args)]
pub struct SourceArgs {
    /// Read user-data from a local file.
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,
    /// Download user-data from a URL.
    #[arg(long, value_name = "URL")]
    pub from_url: Option<String>,
    /// Read an OpenStack config-drive (label `config-2`): a mounted directory, or an
    /// image or block device (ISO9660, VFAT or ext2/3/4).
    #[arg(long, value_name = "PATH")]
    pub from_configdrive: Option<PathBuf>,
    /// Download user-data from `cloud-config-url=` on the kernel command line.
    #[arg(long)]
    pub from_proc_cmdline: bool,
    /// Kernel command line file read by `--from-proc-cmdline`.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/proc/cmdline",
        hide = true
    )]
    pub proc_cmdline_path: PathBuf,
    /// Use an EC2-style metadata service.
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = datasource::EC2_METADATA_URL, require_equals = true)]
    pub from_ec2_metadata: Option<String>,
    /// Read a NoCloud `cidata` drive: a directory, or an image or block device (ISO9660,
    /// VFAT or ext2/3/4).
    #[arg(long, value_name = "PATH")]
    pub from_nocloud: Option<PathBuf>,
    /// Read a QEMU `fw_cfg` entry (`opt/…`), or a path to its `raw` file.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = datasource::DEFAULT_FW_CFG_NAME, require_equals = true)]
    pub from_fw_cfg: Option<String>,
    /// Host root under which the presets look for devices (`dev/disk/by-label/…`).
    #[arg(long, value_name = "PATH", default_value = "/", hide = true)]
    pub host_root: PathBuf,
    /// Datasources of a cloud preset.
    #[arg(long, value_enum)]
    pub oem: Option<Oem>,
    /// Give up waiting for a datasource after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = datasource::DEFAULT_OVERALL_TIMEOUT.as_secs())]
    pub timeout: u64,
}

impl SourceArgs {
    pub fn sources(&self) -> Vec<Source> {
        let mut s = Vec::new();
        let config_drive = || {
            Source::ConfigDrive(datasource::by_label_path(
                &self.host_root,
                datasource::CONFIG_DRIVE_LABEL,
            ))
        };
        let nocloud = || {
            Source::NoCloud(datasource::by_label_path(
                &self.host_root,
                datasource::NOCLOUD_LABEL,
            ))
        };
        if let Some(p) = &self.from_file {
            s.push(Source::File(p.clone()));
        }
        if let Some(u) = &self.from_url {
            s.push(Source::Url(u.clone()));
        }
        if let Some(p) = &self.from_configdrive {
            s.push(Source::ConfigDrive(p.clone()));
        }
        if self.from_proc_cmdline {
            s.push(Source::ProcCmdline(self.proc_cmdline_path.clone()));
        }
        if let Some(u) = &self.from_ec2_metadata {
            s.push(Source::Ec2(u.clone()));
        }
        if let Some(p) = &self.from_nocloud {
            s.push(Source::NoCloud(p.clone()));
        }
        if let Some(n) = &self.from_fw_cfg {
            let path = if n.starts_with('/') {
                PathBuf::from(n)
            } else {
                datasource::fw_cfg_path(n)
            };
            s.push(Source::FwCfg(path));
        }
        match self.oem {
            Some(Oem::Ec2Compat) => {
                s.push(Source::Ec2(datasource::EC2_METADATA_URL.into()));
                s.push(config_drive());
            }
            Some(Oem::Openstack) => s.push(config_drive()),
            Some(Oem::Qemu) => {
                s.push(Source::FwCfg(datasource::fw_cfg_path(
                    datasource::DEFAULT_FW_CFG_NAME,
                )));
                s.push(nocloud());
            }
            Some(Oem::Nocloud) => s.push(nocloud()),
            None => {}
        }
        s
    }
}

/// Why a run failed; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the user-data has errors; nothing was applied")]
    Invalid,
    #[error("fetching user-data")]
    Datasource(#[from] datasource::DatasourceError),
    #[error("applying the config")]
    Apply(#[from] apply::ApplyError),
    #[error("connecting to systemd")]
    Systemd(#[from] crate::systemd::SystemdError),
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("setting up HTTP")]
    Http(#[from] http::HttpError),
}

impl RunError {
    /// 1: the config is invalid; 2: no user-data could be fetched; 3: applying failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Invalid => 1,
            RunError::Datasource(_) | RunError::Http(_) | RunError::Runtime(_) => 2,
            RunError::Apply(_) | RunError::Systemd(_) => 3,
        }
    }
}

fn fetch(args: &SourceArgs) -> Result<datasource::Fetched, RunError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let client = http::Client::new(http::RetryPolicy::default())?;
    let sources = args.sources();
    Ok(runtime.block_on(datasource::fetch_first(
        &sources,
        &client,
        Duration::from_secs(args.timeout),
    ))?)
}

fn print_report(report: &crate::report::Report, format: OutputFormat) {
    match format {
        OutputFormat::Text => print!("{}", report.to_text()),
        OutputFormat::Json => println!("{}", report.to_json()),
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), RunError> {
    match cli.command {
        Command::Validate { sources, format } => {
            let fetched = fetch(&sources)?;
            let doc = crate::load(&fetched.user_data);
            print_report(&doc.report, format);
            if doc.report.has_errors() {
                return Err(RunError::Invalid);
            }
            Ok(())
        }
        Command::Apply {
            sources,
            root,
            dry_run,
            systemd,
            bus_address,
            ssh_key_name,
            format,
        } => {
            let fetched = fetch(&sources)?;
            let mut doc = crate::load(&fetched.user_data);
            print_report(&doc.report, format);
            if !doc.is_applicable() {
                return Err(RunError::Invalid);
            }
            crate::metadata::apply_metadata(&mut doc.config, &fetched.metadata);
            let mut opts = PlanOptions::new(&root);
            opts.key_name = ssh_key_name;
            opts.metadata = fetched.metadata;
            opts.source = fetched.source;
            let plan = apply::plan(&doc.config, &doc.scripts, &opts)?;
            if dry_run {
                print!("{plan}");
                return Ok(());
            }
            let live = root == std::path::Path::new("/")
                && std::path::Path::new("/run/systemd/system").is_dir();
            let mut manager: Box<dyn SystemdManager> = match (systemd, live) {
                (SystemdBackend::Dbus, _) | (SystemdBackend::Auto, true) => {
                    Box::new(DbusManager::connect(bus_address.as_deref())?)
                }
                _ => Box::new(RootManager::new(&root)),
            };
            let outcome = apply::execute(&plan, &root, manager.as_mut())?;
            tracing::info!(
                written = outcome.written.len(),
                unit_changes = outcome.unit_changes.len(),
                jobs = outcome.jobs.len(),
                "applied"
            );
            print!("{plan}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "keel-cloudinit",
            "apply",
            "--from-ec2-metadata",
            "--from-fw-cfg=opt/x",
            "--root",
            "/tmp/r",
            "--dry-run",
        ])
        .unwrap();
        let Command::Apply { sources, .. } = cli.command else {
            panic!("not apply")
        };
        assert_eq!(
            sources.sources(),
            vec![
                Source::Ec2(datasource::EC2_METADATA_URL.into()),
                Source::FwCfg(datasource::fw_cfg_path("opt/x")),
            ]
        );
    }
}
