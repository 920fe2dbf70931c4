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
