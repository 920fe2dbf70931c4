//! Applying a validated config to a root: first a [`Plan`] is computed entirely in
//! memory (reading the root, touching nothing), then [`execute`] carries it out.
//!
//! Fail-closed: a config with errors never gets a plan, and everything that can fail
//! because of the config (unknown groups, unresolvable owners, a missing `core` user) fails
//! while planning, before the first write. Idempotent: the plan only holds writes whose
//! result differs from what is on disk, so a second apply of the same config plans no
//! writes. Order: hostname → users → SSH keys → files → units (content, drop-ins,
//! mask/unmask, enable) → daemon-reload → unit commands → scripts → the record under
//! `/var/lib/keel/cloudinit`.

pub mod fsops;
pub mod generated;
pub mod users;

use crate::config::{CloudConfig, Unit, WriteFile, clean_path};
use crate::metadata::Metadata;
use crate::systemd::{Change, SystemdError, SystemdManager, UnitCommand};
use fsops::FsError;
use serde::Serialize;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use users::{Accounts, NewUser, UserError};

/// Where Keel records what it applied.
pub const STATE_DIR: &str = "/var/lib/keel/cloudinit";
/// Name of the `authorized_keys.d` fragment Keel owns for each user.
pub const DEFAULT_KEY_NAME: &str = "keel-cloudinit";
/// The user top-level `ssh_authorized_keys` (and metadata keys) are for.
pub const CORE_USER: &str = "core";
/// Mode of new home directories.
pub const HOME_MODE: u32 = 0o755;

/// Why a config could not be planned or applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error("user {user:?} does not exist under {root}; ssh_authorized_keys need it")]
    NoSuchUser { user: String, root: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Inputs of planning besides the config.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub root: PathBuf,
    /// Today, in days since the epoch (for `shadow`'s last-change field).
    pub today_days: u64,
    /// Name of the `authorized_keys.d` fragment.
    pub key_name: String,
    pub metadata: Metadata,
    /// Where the user-data came from, for the record.
    pub source: String,
}

impl PlanOptions {
    pub fn new(root: &Path) -> PlanOptions {
        let today_days = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() / 86_400)
            .unwrap_or(0);
        PlanOptions {
            root: root.to_path_buf(),
            today_days,
            key_name: DEFAULT_KEY_NAME.into(),
            metadata: Metadata::default(),
            source: String::new(),
        }
    }
}

/// One filesystem step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Step {
    Write {
        path: String,
        #[serde(skip)]
        content: Vec<u8>,
        bytes: usize,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Mkdir {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
        /// Copy `/etc/skel` into it (a new home directory).
        skel: bool,
    },
}

impl Step {
    pub fn path(&self) -> &str {
        match self {
            Step::Write { path, .. } | Step::Mkdir { path, .. } => path,
        }
    }
}

/// A unit-file operation for the systemd backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum UnitOp {
    Mask { unit: String, runtime: bool },
    Unmask { unit: String, runtime: bool },
    Enable { unit: String, runtime: bool },
}

/// A `#!` script to run as a transient unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScriptRun {
    pub unit: String,
    pub path: String,
}

/// Everything an apply will do, in order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub hostname: Option<String>,
    /// Set the running hostname (the static one changed).
    pub set_hostname: bool,
    pub steps: Vec<Step>,
    /// Writes skipped because the root already has that content.
    pub unchanged: usize,
    pub unit_ops: Vec<UnitOp>,
    /// A unit file or drop-in is written: systemd must reload.
    pub reload: bool,
    /// A `.network`/`.netdev`/`.link` file is written: restart systemd-networkd.
    pub restart_networkd: bool,
    pub commands: Vec<(String, UnitCommand)>,
    pub scripts: Vec<ScriptRun>,
    /// Things the operator should know (ignored fields, renamed units, …).
    pub notes: Vec<String>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(h) = &self.hostname {
            writeln!(f, "hostname {h}")?;
        }
        for s in &self.steps {
            match s {
                Step::Write {
                    path,
                    bytes,
                    mode,
                    uid,
                    gid,
                    ..
                } => writeln!(
                    f,
                    "write {path} ({bytes} bytes, mode {mode:04o}, owner {uid}:{gid})"
                )?,
                Step::Mkdir {
                    path,
                    mode,
                    uid,
                    gid,
                    skel,
                } => writeln!(
                    f,
                    "mkdir {path} (mode {mode:04o}, owner {uid}:{gid}{})",
                    if *skel { ", from /etc/skel" } else { "" }
                )?,
            }
        }
        for op in &self.unit_ops {
            let (verb, unit, runtime) = match op {
                UnitOp::Mask { unit, runtime } => ("mask", unit, runtime),
                UnitOp::Unmask { unit, runtime } => ("unmask", unit, runtime),
                UnitOp::Enable { unit, runtime } => ("enable", unit, runtime),
            };
            writeln!(
                f,
                "{verb} {unit}{}",
                if *runtime { " (runtime)" } else { "" }
            )?;
        }
        if self.reload {
            writeln!(f, "daemon-reload")?;
        }
        if self.restart_networkd {
            writeln!(f, "restart systemd-networkd.service")?;
        }
        for (unit, cmd) in &self.commands {
            writeln!(f, "{} {unit}", cmd.as_str())?;
        }
        for s in &self.scripts {
            writeln!(f, "run {} as {}", s.path, s.unit)?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        writeln!(f, "unchanged: {}", self.unchanged)
    }
}

/// What [`execute`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub written: Vec<String>,
    pub unit_changes: Vec<Change>,
    pub reloaded: bool,
    pub jobs: Vec<String>,
}

impl Outcome {
    /// Whether anything on disk or in systemd's unit configuration changed.
    pub fn changed(&self) -> bool {
        !self.written.is_empty() || !self.unit_changes.is_empty()
    }
}

fn is_network_unit(name: &str) -> bool {
    name.ends_with(".network") || name.ends_with(".netdev") || name.ends_with(".link")
}

fn unit_dir(name: &str, runtime: bool) -> &'static str {
    match (is_network_unit(name), runtime) {
        (true, true) => "/run/systemd/network",
        (true, false) => "/etc/systemd/network",
        (false, true) => "/run/systemd/system",
        (false, false) => "/etc/systemd/system",
    }
}

struct Planner<'a> {
    opts: &'a PlanOptions,
    plan: Plan,
}

impl Planner<'_> {
    fn host(&self, p: &str) -> PathBuf {
        fsops::in_root(&self.opts.root, p)
    }

    fn read(&self, p: &str) -> Result<Option<Vec<u8>>, ApplyError> {
        let path = self.host(p);
        match fs::read(&path) {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ApplyError::Read { path, source }),
        }
    }

    fn write(&mut self, path: &str, content: Vec<u8>, mode: u32, uid: u32, gid: u32) {
        let path = clean_path(path);
        // A later write of the same path replaces the earlier one in the plan.
        self.plan.steps.retain(|s| s.path() != path);
        if fsops::file_matches(&self.host(&path), &content, mode, uid, gid) {
            self.plan.unchanged += 1;
            return;
        }
        self.plan.steps.push(Step::Write {
            path,
            bytes: content.len(),
            content,
            mode,
            uid,
            gid,
        });
    }

    fn mkdir(&mut self, path: &str, mode: u32, uid: u32, gid: u32, skel: bool) {
        let path = clean_path(path);
        if fsops::dir_matches(&self.host(&path), mode, uid, gid) {
            self.plan.unchanged += 1;
            return;
        }
        let skel = skel && !self.host(&path).exists();
        self.plan.steps.push(Step::Mkdir {
            path,
            mode,
            uid,
            gid,
            skel,
        });
    }

    /// Keeps the mode and owner an existing file has; `default` otherwise.
    fn existing_mode(&self, p: &str, default: (u32, u32, u32)) -> (u32, u32, u32) {
        fs::metadata(self.host(p))
            .map(|m| (m.mode() & 0o7777, m.uid(), m.gid()))
            .unwrap_or(default)
    }

    fn users(&mut self, config: &CloudConfig, accounts: &mut Accounts) -> Result<(), ApplyError> {
        let before = accounts.clone();
        let days = self.opts.today_days;
        for u in &config.users {
            if accounts.user(&u.name).is_some() {
                if let Some(hash) = &u.passwd {
                    accounts.set_password(&u.name, hash, days);
                }
                let creation_fields = u.gecos.is_some()
                    || u.homedir.is_some()
                    || u.primary_group.is_some()
                    || !u.groups.is_empty()
                    || u.shell.is_some()
                    || u.system
                    || u.no_create_home;
                if creation_fields {
                    self.plan.notes.push(format!(
                        "user {:?} exists; only passwd and ssh_authorized_keys are applied",
                        u.name
                    ));
                }
                continue;
            }
            let home = u
                .homedir
                .clone()
                .unwrap_or_else(|| format!("/home/{}", u.name));
            let (uid, gid) = accounts.add_user(
                &NewUser {
                    name: &u.name,
                    passwd: u.passwd.as_deref(),
                    gecos: u.gecos.as_deref(),
                    home: home.clone(),
                    primary_group: u.primary_group.as_deref(),
                    groups: &u.groups,
                    no_user_group: u.no_user_group,
                    system: u.system,
                    shell: u.shell.as_deref(),
                },
                days,
            )?;
            if !u.no_create_home {
                self.mkdir(&home, HOME_MODE, uid, gid, true);
            }
        }
        let shadow_gid = accounts.gid("shadow").unwrap_or(0);
        for (file, before_t, after_t) in [
            (users::PASSWD, &before.passwd, &accounts.passwd),
            (users::SHADOW, &before.shadow, &accounts.shadow),
            (users::GROUP, &before.group, &accounts.group),
            (users::GSHADOW, &before.gshadow, &accounts.gshadow),
        ] {
            if before_t != after_t {
                let gid = if users::mode_of(file) == 0o640 {
                    shadow_gid
                } else {
                    0
                };
                let (mode, uid, gid) = self.existing_mode(file, (users::mode_of(file), 0, gid));
                self.write(file, after_t.render().into_bytes(), mode, uid, gid);
            }
        }
        Ok(())
    }

    fn ssh_keys(&mut self, config: &CloudConfig, accounts: &Accounts) -> Result<(), ApplyError> {
        let mut per_user: Vec<(String, Vec<String>)> = Vec::new();
        for u in &config.users {
            if !u.ssh_authorized_keys.is_empty() {
                per_user.push((u.name.clone(), u.ssh_authorized_keys.clone()));
            }
        }
        if !config.ssh_authorized_keys.is_empty() {
            match per_user.iter_mut().find(|(n, _)| n == CORE_USER) {
                Some((_, keys)) => keys.extend(config.ssh_authorized_keys.iter().cloned()),
                None => per_user.push((CORE_USER.into(), config.ssh_authorized_keys.clone())),
            }
        }
        for (name, keys) in per_user {
            let Some((uid, gid, home)) = accounts.user(&name) else {
                return Err(ApplyError::NoSuchUser {
                    user: name,
                    root: self.opts.root.clone(),
                });
            };
            let mut keys: Vec<String> = keys
                .iter()
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .collect();
            dedup(&mut keys);
            let ssh = format!("{home}/.ssh");
            self.mkdir(&ssh, 0o700, uid, gid, false);
            self.mkdir(&format!("{ssh}/authorized_keys.d"), 0o700, uid, gid, false);
            let fragment: String = keys.iter().map(|k| format!("{k}\n")).collect();
            self.write(
                &format!("{ssh}/authorized_keys.d/{}", self.opts.key_name),
                fragment.into_bytes(),
                0o600,
                uid,
                gid,
            );
            let auth_path = format!("{ssh}/authorized_keys");
            let existing =
                String::from_utf8_lossy(&self.read(&auth_path)?.unwrap_or_default()).into_owned();
            let mut merged = existing.clone();
            if !merged.is_empty() && !merged.ends_with('\n') {
                merged.push('\n');
            }
            for k in &keys {
                if !existing.lines().any(|l| l.trim() == k) {
                    merged.push_str(k);
                    merged.push('\n');
                }
            }
            self.write(&auth_path, merged.into_bytes(), 0o600, uid, gid);
        }
        Ok(())
    }

    fn files(&mut self, config: &CloudConfig, accounts: &Accounts) -> Result<(), ApplyError> {
        for WriteFile {
            path,
            content,
            owner,
            permissions,
            ..
        } in &config.write_files
        {
            let (uid, gid) = match owner {
                Some(o) => accounts.owner(o)?,
                None => (0, 0),
            };
            self.write(path, content.clone(), *permissions, uid, gid);
        }
        let c = &config.coreos;
        if let Some(oem) = generated::oem_release(&c.oem) {
            self.write("/etc/oem-release", oem.into_bytes(), 0o644, 0, 0);
        }
        if !c.update.is_empty() {
            let existing = match self.read(generated::UPDATE_CONF)? {
                Some(e) => e,
                None => self
                    .read(generated::UPDATE_CONF_DEFAULT)?
                    .unwrap_or_default(),
            };
            if let Some(conf) =
                generated::update_conf(&c.update, &String::from_utf8_lossy(&existing))
            {
                self.write(generated::UPDATE_CONF, conf.into_bytes(), 0o644, 0, 0);
            }
        }
        if config.manage_etc_hosts.as_deref() == Some("localhost") {
            let hostname = match &config.hostname {
                Some(h) => h.clone(),
                None => String::from_utf8_lossy(&self.read("/etc/hostname")?.unwrap_or_default())
                    .trim()
                    .to_string(),
            };
            let hostname = if hostname.is_empty() {
                "localhost".into()
            } else {
                hostname
            };
            self.write(
                "/etc/hosts",
                generated::etc_hosts(&hostname).into_bytes(),
                0o644,
                0,
                0,
            );
        }
        if let Some(env) = generated::flannel_env(&c.flannel) {
            self.write("/run/flannel/options.env", env.into_bytes(), 0o644, 0, 0);
        }
        let user_wrote_environment = config
            .write_files
            .iter()
            .any(|f| clean_path(&f.path) == "/etc/environment");
        if !user_wrote_environment {
            let existing = self.read("/etc/environment")?.unwrap_or_default();
            if let Some(env) =
                generated::environment(&String::from_utf8_lossy(&existing), &self.opts.metadata)
            {
                self.write("/etc/environment", env.into_bytes(), 0o644, 0, 0);
            }
        }
        Ok(())
    }

    fn units(&mut self, config: &CloudConfig) {
        let mut all: Vec<Unit> = config.coreos.units.clone();
        all.extend(generated::units(config));
        let steps_before = self.plan.steps.len();
        for mut unit in all {
            if unit.content.is_none()
                && let Some((_, keel)) = generated::KEEL_UNIT_FOR
                    .iter()
                    .find(|(n, _)| *n == unit.name)
            {
                self.plan
                    .notes
                    .push(format!("{} is provided by {keel} on Keel", unit.name));
                unit.name = (*keel).to_string();
            }
            let dir = unit_dir(&unit.name, unit.runtime);
            let network = is_network_unit(&unit.name);
            let before = self.plan.steps.len();
            if let Some(content) = &unit.content {
                if unit.mask {
                    self.plan.notes.push(format!(
                        "{} is masked; its content is not written",
                        unit.name
                    ));
                } else {
                    self.write(
                        &format!("{dir}/{}", unit.name),
                        content.clone().into_bytes(),
                        0o644,
                        0,
                        0,
                    );
                }
            }
            for d in &unit.drop_ins {
                if !d.content.is_empty() {
                    self.write(
                        &format!("{dir}/{}.d/{}", unit.name, d.name),
                        d.content.clone().into_bytes(),
                        0o644,
                        0,
                        0,
                    );
                }
            }
            if network && self.plan.steps.len() > before {
                self.plan.restart_networkd = true;
            }
            let mut ops = Vec::new();
            if unit.mask {
                ops.push(UnitOp::Mask {
                    unit: unit.name.clone(),
                    runtime: unit.runtime,
                });
            } else if unit.runtime {
                ops.push(UnitOp::Unmask {
                    unit: unit.name.clone(),
                    runtime: true,
                });
            }
            if unit.enable && !network {
                ops.push(UnitOp::Enable {
                    unit: unit.name.clone(),
                    runtime: unit.runtime,
                });
            }
            for op in ops {
                if !self.plan.unit_ops.contains(&op) {
                    self.plan.unit_ops.push(op);
                }
            }
            if let Some(cmd) = unit.command.as_deref().and_then(UnitCommand::parse)
                && !network
            {
                self.plan.commands.push((unit.name.clone(), cmd));
            }
        }
        self.plan.reload = self.plan.steps.len() > steps_before;
    }
}

fn dedup(keys: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
}

/// A `#!` script from the user-data, named for its unit.
#[derive(Debug, Clone)]
pub struct Script {
    pub name: String,
    pub text: String,
}

/// The record written to `/var/lib/keel/cloudinit/applied.json`: what the config asks
/// for (not what changed), so an identical second apply rewrites nothing.
#[derive(Debug, Serialize)]
struct Record<'a> {
    source: &'a str,
    hostname: Option<&'a str>,
    users: Vec<&'a str>,
    files: Vec<&'a str>,
    units: Vec<&'a str>,
    unit_ops: &'a [UnitOp],
    commands: Vec<String>,
    scripts: &'a [ScriptRun],
}

/// Computes the plan for `config` (already validated, metadata merged) and `scripts`.
pub fn plan(
    config: &CloudConfig,
    scripts: &[Script],
    opts: &PlanOptions,
) -> Result<Plan, ApplyError> {
    let mut p = Planner {
        opts,
        plan: Plan::default(),
    };
    if let Some(h) = &config.hostname {
        p.plan.hostname = Some(h.clone());
        let before = p.plan.steps.len();
        p.write("/etc/hostname", format!("{h}\n").into_bytes(), 0o644, 0, 0);
        p.plan.set_hostname = p.plan.steps.len() > before;
    }
    let mut accounts = Accounts::load(&opts.root)?;
    p.users(config, &mut accounts)?;
    p.ssh_keys(config, &accounts)?;
    p.files(config, &accounts)?;
    p.units(config);
    for s in scripts {
        let path = format!("{STATE_DIR}/scripts/{}", s.name);
        p.write(&path, s.text.clone().into_bytes(), 0o744, 0, 0);
        p.plan.scripts.push(ScriptRun {
            unit: format!("keel-cloudinit-{}.service", s.name),
            path,
        });
    }
    let record = Record {
        source: &opts.source,
        hostname: config.hostname.as_deref(),
        users: config.users.iter().map(|u| u.name.as_str()).collect(),
        files: config.write_files.iter().map(|f| f.path.as_str()).collect(),
        units: config
            .coreos
            .units
            .iter()
            .map(|u| u.name.as_str())
            .collect(),
        unit_ops: &p.plan.unit_ops,
        commands: p
            .plan
            .commands
            .iter()
            .map(|(u, c)| format!("{} {u}", c.as_str()))
            .collect(),
        scripts: &p.plan.scripts,
    };
    let mut json = serde_json::to_vec_pretty(&record).unwrap_or_default();
    json.push(b'\n');
    p.write(&format!("{STATE_DIR}/applied.json"), json, 0o600, 0, 0);
    Ok(p.plan)
}

/// Carries out a plan against the root and the systemd backend.
pub fn execute(
    plan: &Plan,
    root: &Path,
    manager: &mut dyn SystemdManager,
) -> Result<Outcome, ApplyError> {
    let mut out = Outcome::default();
    let touches_db = plan
        .steps
        .iter()
        .any(|s| [users::PASSWD, users::SHADOW, users::GROUP, users::GSHADOW].contains(&s.path()));
    let lock = if touches_db {
        Some(users::lock(root)?)
    } else {
        None
    };
    for step in &plan.steps {
        let host = fsops::in_root(root, step.path());
        match step {
            Step::Write {
                content,
                mode,
                uid,
                gid,
                ..
            } => fsops::write_atomic(root, &host, content, *mode, *uid, *gid)?,
            Step::Mkdir {
                mode,
                uid,
                gid,
                skel,
                ..
            } => {
                fsops::ensure_dir(root, &host, *mode, *uid, *gid)?;
                if *skel {
                    fsops::copy_skel(&fsops::in_root(root, "/etc/skel"), &host, *uid, *gid)?;
                }
            }
        }
        out.written.push(step.path().to_string());
    }
    drop(lock);
    if plan.set_hostname
        && let Some(h) = &plan.hostname
    {
        manager.set_hostname(h)?;
    }
    for op in &plan.unit_ops {
        let changes = match op {
            UnitOp::Mask { unit, runtime } => manager.mask(std::slice::from_ref(unit), *runtime)?,
            UnitOp::Unmask { unit, runtime } => {
                manager.unmask(std::slice::from_ref(unit), *runtime)?
            }
            UnitOp::Enable { unit, runtime } => {
                manager.enable(std::slice::from_ref(unit), *runtime)?
            }
        };
        out.unit_changes.extend(changes);
    }
    if plan.reload || !out.unit_changes.is_empty() {
        manager.reload()?;
        out.reloaded = true;
    }
    if plan.restart_networkd {
        out.jobs
            .push(manager.command("systemd-networkd.service", UnitCommand::Restart)?);
    }
    for (unit, cmd) in &plan.commands {
        out.jobs.push(manager.command(unit, *cmd)?);
    }
    for s in &plan.scripts {
        out.jobs
            .push(manager.start_transient(&s.unit, std::slice::from_ref(&s.path))?);
    }
    Ok(out)
}
