//! The host over the system D-Bus (zbus): logind for rebooting, inhibitors and sessions;
//! the update agent's `com.coreos.update1` interface (Keel's updater or Flatcar's
//! update_engine) for "reboot needed" and the booted version's health; systemd for
//! `best-effort`. `DBUS_SYSTEM_BUS_ADDRESS` points it at a private bus in tests.

use futures_util::StreamExt;
use zbus::Connection;
use zbus::names::BusName;

const LOGIND: &str = "org.freedesktop.login1";
const LOGIND_PATH: &str = "/org/freedesktop/login1";
const LOGIND_MANAGER: &str = "org.freedesktop.login1.Manager";
/// update_engine's bus name, object and interface.
pub const UPDATE1: &str = "com.coreos.update1";
pub const UPDATE1_PATH: &str = "/com/coreos/update1";
pub const UPDATE1_MANAGER: &str = "com.coreos.update1.Manager";
/// The operation update_engine reports once an update is installed.
pub const NEED_REBOOT: &str = "UPDATE_STATUS_UPDATED_NEED_REBOOT";
const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const SYSTEMD_MANAGER: &str = "org.freedesktop.systemd1.Manager";

#[derive(Debug, thiserror::Error)]
pub enum DbusError {
    #[error("cannot connect to the system D-Bus")]
    Connect(#[source] zbus::Error),
    #[error("D-Bus call {method} failed")]
    Call {
        method: &'static str,
        #[source]
        source: zbus::Error,
    },
}

/// update_engine's status: `(last_checked_time, progress, current_operation, new_version,
/// new_size)`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateStatus {
    pub last_checked: i64,
    pub progress: f64,
    pub operation: String,
    pub new_version: String,
    pub new_size: i64,
}

impl UpdateStatus {
    pub fn needs_reboot(&self) -> bool {
        self.operation == NEED_REBOOT
    }
}

/// A `block` inhibitor on shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inhibitor {
    pub who: String,
    pub why: String,
}

/// The system bus.
#[derive(Debug, Clone)]
pub struct Bus {
    conn: Connection,
}

fn is_absent(e: &zbus::Error) -> bool {
    match e {
        zbus::Error::MethodError(name, _, _) => matches!(
            name.as_str(),
            "org.freedesktop.DBus.Error.ServiceUnknown"
                | "org.freedesktop.DBus.Error.UnknownMethod"
                | "org.freedesktop.DBus.Error.UnknownObject"
                | "org.freedesktop.DBus.Error.UnknownInterface"
                | "org.freedesktop.DBus.Error.NameHasNoOwner"
        ),
        zbus::Error::FDO(fdo) => matches!(
            **fdo,
            zbus::fdo::Error::ServiceUnknown(_)
                | zbus::fdo::Error::UnknownMethod(_)
                | zbus::fdo::Error::UnknownObject(_)
                | zbus::fdo::Error::UnknownInterface(_)
                | zbus::fdo::Error::NameHasNoOwner(_)
        ),
        _ => false,
    }
}

impl Bus {
    /// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` if set).
    pub async fn system() -> Result<Bus, DbusError> {
        Ok(Bus {
            conn: Connection::system().await.map_err(DbusError::Connect)?,
        })
    }

    async fn call<B, R>(
        &self,
        dest: &'static str,
        path: &'static str,
        iface: &'static str,
        method: &'static str,
        body: &B,
    ) -> Result<R, zbus::Error>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
        R: for<'d> serde::Deserialize<'d> + zbus::zvariant::Type,
    {
        let reply = self
            .conn
            .call_method(Some(dest), path, Some(iface), method, body)
            .await?;
        reply.body().deserialize::<R>()
    }

    /// logind `Reboot(false)`: not interactive, so logind refuses while a `block`
    /// inhibitor is held by anyone without the right to override it.
    pub async fn reboot(&self) -> Result<(), DbusError> {
        self.conn
            .call_method(
                Some(LOGIND),
                LOGIND_PATH,
                Some(LOGIND_MANAGER),
                "Reboot",
                &(false,),
            )
            .await
            .map(|_| ())
            .map_err(|source| DbusError::Call {
                method: "org.freedesktop.login1.Manager.Reboot",
                source,
            })
    }

    /// `block` inhibitors that cover `shutdown`.
    pub async fn shutdown_blockers(&self) -> Result<Vec<Inhibitor>, DbusError> {
        let list: Vec<(String, String, String, String, u32, u32)> = self
            .call(LOGIND, LOGIND_PATH, LOGIND_MANAGER, "ListInhibitors", &())
            .await
            .map_err(|source| DbusError::Call {
                method: "org.freedesktop.login1.Manager.ListInhibitors",
                source,
            })?;
        Ok(list
            .into_iter()
            .filter(|(what, _, _, mode, _, _)| {
                mode == "block" && what.split(':').any(|w| w == "shutdown")
            })
            .map(|(_, who, why, _, _, _)| Inhibitor { who, why })
            .collect())
    }

    /// Logged-in sessions as `(session id, user, tty)`; the tty is empty when logind does
    /// not say.
    pub async fn sessions(&self) -> Result<Vec<(String, String, String)>, DbusError> {
        let list: Vec<(String, u32, String, String, zbus::zvariant::OwnedObjectPath)> = self
            .call(LOGIND, LOGIND_PATH, LOGIND_MANAGER, "ListSessions", &())
            .await
            .map_err(|source| DbusError::Call {
                method: "org.freedesktop.login1.Manager.ListSessions",
                source,
            })?;
        let mut out = Vec::new();
        for (id, _uid, user, _seat, path) in list {
            let tty = self
                .conn
                .call_method(
                    Some(LOGIND),
                    path.as_str(),
                    Some("org.freedesktop.DBus.Properties"),
                    "Get",
                    &("org.freedesktop.login1.Session", "TTY"),
                )
                .await
                .ok()
                .and_then(|r| r.body().deserialize::<zbus::zvariant::OwnedValue>().ok())
                .and_then(|v| String::try_from(v).ok())
                .unwrap_or_default();
            out.push((id, user, tty));
        }
        Ok(out)
    }

    /// update_engine's `GetStatus`; `None` when no update agent is on the bus.
    pub async fn update_status(&self) -> Result<Option<UpdateStatus>, DbusError> {
        let r: Result<(i64, f64, String, String, i64), _> = self
            .call(UPDATE1, UPDATE1_PATH, UPDATE1_MANAGER, "GetStatus", &())
            .await;
        match r {
            Ok((last_checked, progress, operation, new_version, new_size)) => {
                Ok(Some(UpdateStatus {
                    last_checked,
                    progress,
                    operation,
                    new_version,
                    new_size,
                }))
            }
            Err(e) if is_absent(&e) => Ok(None),
            Err(source) => Err(DbusError::Call {
                method: "com.coreos.update1.Manager.GetStatus",
                source,
            }),
        }
    }

    /// Keel's updater: `GetBootStatus() -> (s booted_version, b marked_good)`. `None` when
    /// the agent does not have it (Flatcar's update_engine) or is not running.
    pub async fn boot_status(&self) -> Result<Option<(String, bool)>, DbusError> {
        let r: Result<(String, bool), _> = self
            .call(UPDATE1, UPDATE1_PATH, UPDATE1_MANAGER, "GetBootStatus", &())
            .await;
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(source) => Err(DbusError::Call {
                method: "com.coreos.update1.Manager.GetBootStatus",
                source,
            }),
        }
    }

    /// `StatusUpdate` signals, decoded; malformed ones are skipped (as locksmith v0.6.2).
    pub async fn status_updates(
        &self,
    ) -> Result<impl futures_util::Stream<Item = UpdateStatus> + Unpin + use<>, DbusError> {
        let err = |source| DbusError::Call {
            method: "AddMatch com.coreos.update1.Manager.StatusUpdate",
            source,
        };
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface(UPDATE1_MANAGER)
            .map_err(err)?
            .member("StatusUpdate")
            .map_err(err)?
            .build();
        let stream = zbus::MessageStream::for_match_rule(rule, &self.conn, Some(64))
            .await
            .map_err(err)?;
        Ok(Box::pin(stream.filter_map(|m| async move {
            let m = m.ok()?;
            let (last_checked, progress, operation, new_version, new_size): (
                i64,
                f64,
                String,
                String,
                i64,
            ) = m.body().deserialize().ok()?;
            Some(UpdateStatus {
                last_checked,
                progress,
                operation,
                new_version,
                new_size,
            })
        })))
    }

    /// Emits update_engine's "reboot needed" signal (`locksmithctl send-need-reboot`).
    pub async fn send_need_reboot(&self) -> Result<(), DbusError> {
        self.conn
            .emit_signal(
                None::<BusName<'_>>,
                UPDATE1_PATH,
                UPDATE1_MANAGER,
                "StatusUpdate",
                &(0i64, 0f64, NEED_REBOOT, "", 0i64),
            )
            .await
            .map_err(|source| DbusError::Call {
                method: "emit com.coreos.update1.Manager.StatusUpdate",
                source,
            })
    }

    /// Whether systemd has `unit` loaded and not inactive (`best-effort`).
    pub async fn unit_active(&self, unit: &str) -> Result<bool, DbusError> {
        let path: Result<zbus::zvariant::OwnedObjectPath, _> = self
            .call(SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER, "GetUnit", &(unit,))
            .await;
        let path = match path {
            Ok(p) => p,
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                return Ok(false);
            }
            Err(source) => {
                return Err(DbusError::Call {
                    method: "org.freedesktop.systemd1.Manager.GetUnit",
                    source,
                });
            }
        };
        let state = self
            .conn
            .call_method(
                Some(SYSTEMD),
                path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &("org.freedesktop.systemd1.Unit", "ActiveState"),
            )
            .await
            .and_then(|r| r.body().deserialize::<zbus::zvariant::OwnedValue>())
            .map_err(|source| DbusError::Call {
                method: "org.freedesktop.systemd1.Unit.ActiveState",
                source,
            })?;
        let state = String::try_from(state).unwrap_or_default();
        Ok(state != "inactive" && !state.is_empty())
    }
}
