//! The D-Bus systemd backend: `org.freedesktop.systemd1.Manager` for unit files, reload
//! and jobs, `org.freedesktop.hostname1` for the running hostname. Blocking zbus calls:
//! applying a config is one-shot work.

use super::{Change, SystemdError, SystemdManager, UnitCommand};
use zbus::blocking::Connection;
use zbus::zvariant::Value;

const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const HOSTNAMED: &str = "org.freedesktop.hostname1";
const HOSTNAMED_PATH: &str = "/org/freedesktop/hostname1";
/// Job mode for every queued job, as coreos-cloudinit used.
pub const JOB_MODE: &str = "replace";

/// systemd over D-Bus.
#[derive(Debug)]
pub struct DbusManager {
    conn: Connection,
}

type Changes = Vec<(String, String, String)>;

fn changes(list: Changes) -> Vec<Change> {
    list.into_iter()
        .map(|(kind, path, target)| Change { kind, path, target })
        .collect()
}

impl DbusManager {
    /// Connects to the system bus, or to `address` (a D-Bus address string) if given.
    pub fn connect(address: Option<&str>) -> Result<DbusManager, SystemdError> {
        let shown = address.unwrap_or("(system bus)").to_string();
        let conn = match address {
            Some(a) => zbus::blocking::connection::Builder::address(a).and_then(|b| b.build()),
            None => Connection::system(),
        }
        .map_err(|source| SystemdError::Connect {
            address: shown,
            source: Box::new(source),
        })?;
        Ok(DbusManager { conn })
    }

    fn call<B, R>(&self, method: &'static str, body: &B) -> Result<R, SystemdError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
        R: for<'d> serde::Deserialize<'d> + zbus::zvariant::Type,
    {
        let err = |source| SystemdError::Dbus {
            method,
            source: Box::new(source),
        };
        let reply = self
            .conn
            .call_method(Some(SYSTEMD), SYSTEMD_PATH, Some(MANAGER), method, body)
            .map_err(err)?;
        reply.body().deserialize::<R>().map_err(err)
    }
}

impl SystemdManager for DbusManager {
    fn mask(&mut self, units: &[String], runtime: bool) -> Result<Vec<Change>, SystemdError> {
        let list: Changes = self.call("MaskUnitFiles", &(units, runtime, true))?;
        Ok(changes(list))
    }

    fn unmask(&mut self, units: &[String], runtime: bool) -> Result<Vec<Change>, SystemdError> {
        let list: Changes = self.call("UnmaskUnitFiles", &(units, runtime))?;
        Ok(changes(list))
    }

    fn enable(&mut self, units: &[String], runtime: bool) -> Result<Vec<Change>, SystemdError> {
        let (_, list): (bool, Changes) = self.call("EnableUnitFiles", &(units, runtime, true))?;
        Ok(changes(list))
    }

    fn reload(&mut self) -> Result<(), SystemdError> {
        let err = |source| SystemdError::Dbus {
            method: "Reload",
            source: Box::new(source),
        };
        self.conn
            .call_method(Some(SYSTEMD), SYSTEMD_PATH, Some(MANAGER), "Reload", &())
            .map_err(err)?;
        Ok(())
    }

    fn command(&mut self, unit: &str, command: UnitCommand) -> Result<String, SystemdError> {
        let job: zbus::zvariant::OwnedObjectPath =
            self.call(command.method(), &(unit, JOB_MODE))?;
        Ok(job.to_string())
    }

    fn start_transient(&mut self, unit: &str, exec: &[String]) -> Result<String, SystemdError> {
        let path = exec.first().cloned().unwrap_or_default();
        let exec_start = vec![(path, exec.to_vec(), false)];
        let properties: Vec<(&str, Value<'_>)> = vec![
            (
                "Description",
                Value::from("keel-cloudinit user-data script"),
            ),
            ("Type", Value::from("oneshot")),
            ("ExecStart", Value::from(exec_start)),
        ];
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        let job: zbus::zvariant::OwnedObjectPath =
            self.call("StartTransientUnit", &(unit, JOB_MODE, properties, aux))?;
        Ok(job.to_string())
    }

    fn set_hostname(&mut self, name: &str) -> Result<(), SystemdError> {
        let err = |source| SystemdError::Dbus {
            method: "SetHostname",
            source: Box::new(source),
        };
        self.conn
            .call_method(
                Some(HOSTNAMED),
                HOSTNAMED_PATH,
                Some(HOSTNAMED),
                "SetHostname",
                &(name, false),
            )
            .map_err(err)?;
        Ok(())
    }
}
