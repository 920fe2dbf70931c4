//! What `apply` asks of systemd, behind one narrow trait with two backends:
//! [`dbus::DbusManager`] talks to `org.freedesktop.systemd1` (and `hostname1`) over
//! D-Bus, as on a booted host; [`root::RootManager`] writes what `systemctl --root`
//! would (mask links, `[Install]` enablement symlinks) into a target root and records
//! the unit commands instead of running them. `systemctl` is never spawned.

pub mod dbus;
pub mod root;

/// A unit command from `coreos.units[].command` (or a generated unit's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitCommand {
    Start,
    Stop,
    Restart,
    Reload,
    TryRestart,
    ReloadOrRestart,
    ReloadOrTryRestart,
}

impl UnitCommand {
    pub fn parse(s: &str) -> Option<UnitCommand> {
        Some(match s {
            "start" => UnitCommand::Start,
            "stop" => UnitCommand::Stop,
            "restart" => UnitCommand::Restart,
            "reload" => UnitCommand::Reload,
            "try-restart" => UnitCommand::TryRestart,
            "reload-or-restart" => UnitCommand::ReloadOrRestart,
            "reload-or-try-restart" => UnitCommand::ReloadOrTryRestart,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            UnitCommand::Start => "start",
            UnitCommand::Stop => "stop",
            UnitCommand::Restart => "restart",
            UnitCommand::Reload => "reload",
            UnitCommand::TryRestart => "try-restart",
            UnitCommand::ReloadOrRestart => "reload-or-restart",
            UnitCommand::ReloadOrTryRestart => "reload-or-try-restart",
        }
    }

    /// The `org.freedesktop.systemd1.Manager` method for this command.
    pub fn method(&self) -> &'static str {
        match self {
            UnitCommand::Start => "StartUnit",
            UnitCommand::Stop => "StopUnit",
            UnitCommand::Restart => "RestartUnit",
            UnitCommand::Reload => "ReloadUnit",
            UnitCommand::TryRestart => "TryRestartUnit",
            UnitCommand::ReloadOrRestart => "ReloadOrRestartUnit",
            UnitCommand::ReloadOrTryRestart => "ReloadOrTryRestartUnit",
        }
    }
}

/// One change systemd reports (`(type, file, destination)` from `EnableUnitFiles`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub kind: String,
    pub path: String,
    pub target: String,
}

/// Failures talking to systemd or writing into the root.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("D-Bus call {method} failed")]
    Dbus {
        method: &'static str,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("cannot connect to the system bus at {address}")]
    Connect {
        address: String,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("unit {unit:?}: no unit file found to enable")]
    NoUnitFile { unit: String },
    #[error(transparent)]
    Fs(#[from] crate::apply::fsops::FsError),
}

/// The systemd operations `apply` needs. Implementations report the filesystem changes
/// they made so that a second, identical apply can show it changed nothing.
pub trait SystemdManager: std::fmt::Debug {
    /// Replaces the units with links to /dev/null (`MaskUnitFiles`, force).
    fn mask(&mut self, units: &[String], runtime: bool) -> Result<Vec<Change>, SystemdError>;
    /// Removes /dev/null links for the units (`UnmaskUnitFiles`).
    fn unmask(&mut self, units: &[String], runtime: bool) -> Result<Vec<Change>, SystemdError>;
    /// Enables per `[Install]` (`EnableUnitFiles`, force).
    fn enable(&mut self, units: &[String], runtime: bool) -> Result<Vec<Change>, SystemdError>;
    /// `daemon-reload`.
    fn reload(&mut self) -> Result<(), SystemdError>;
    /// Queues a start/stop/… job with mode "replace"; returns the job (or a record).
    fn command(&mut self, unit: &str, command: UnitCommand) -> Result<String, SystemdError>;
    /// Starts a transient service running `exec` (`StartTransientUnit`).
    fn start_transient(&mut self, unit: &str, exec: &[String]) -> Result<String, SystemdError>;
    /// Sets the running (transient) hostname; the static one is `/etc/hostname`.
    fn set_hostname(&mut self, name: &str) -> Result<(), SystemdError>;
}
