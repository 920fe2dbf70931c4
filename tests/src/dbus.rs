//! A private message bus for tests: `dbus-daemon` with its own config in a temp dir,
//! where test services can own any name (logind, update1, systemd).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running private bus; killed on drop.
#[derive(Debug)]
pub struct PrivateBus {
    child: Child,
    /// The D-Bus address (`unix:path=…,guid=…`).
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PrivateBus {
    /// Starts `dbus-daemon` (Debian package `dbus`).
    pub fn start() -> PrivateBus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                dir.path().display()
            ),
        )
        .expect("write bus config");
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("dbus-daemon (apt: dbus) must be installed");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("bus address");
        PrivateBus {
            child,
            address: line.trim().to_string(),
            _dir: dir,
        }
    }
}

/// `block` inhibitors as logind lists them: (what, who, why, mode, uid, pid).
pub type Inhibitors = Vec<(String, String, String, String, u32, u32)>;

/// What the fake logind saw and answers.
#[derive(Debug, Default)]
pub struct LogindState {
    /// The `interactive` argument of every `Reboot` call.
    pub reboots: std::sync::Mutex<Vec<bool>>,
    pub inhibitors: std::sync::Mutex<Inhibitors>,
}

/// `org.freedesktop.login1.Manager` for tests: records `Reboot`, lists the configured
/// inhibitors and no sessions.
#[derive(Debug)]
pub struct FakeLogind(pub std::sync::Arc<LogindState>);

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl FakeLogind {
    fn reboot(&self, interactive: bool) {
        self.0
            .reboots
            .lock()
            .expect("not poisoned")
            .push(interactive);
    }

    fn list_inhibitors(&self) -> Inhibitors {
        self.0.inhibitors.lock().expect("not poisoned").clone()
    }

    fn list_sessions(&self) -> Vec<(String, u32, String, String, zbus::zvariant::OwnedObjectPath)> {
        Vec::new()
    }
}

impl PrivateBus {
    /// Serves a fake logind on this bus; keep the connection alive while it is needed.
    pub async fn serve_logind(&self) -> (zbus::Connection, std::sync::Arc<LogindState>) {
        let state = std::sync::Arc::new(LogindState::default());
        let conn = zbus::connection::Builder::address(self.address.as_str())
            .expect("bus address")
            .name("org.freedesktop.login1")
            .expect("name")
            .serve_at("/org/freedesktop/login1", FakeLogind(state.clone()))
            .expect("serve")
            .build()
            .await
            .expect("connect to the private bus");
        (conn, state)
    }
}
