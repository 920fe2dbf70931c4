//! The health gate before a freshly booted slot is blessed: systemd reports no failed
//! units, the listed units are active, the listed commands exit 0 — all at once, retried
//! until a deadline. systemd is asked over D-Bus, never through `systemctl`.

use std::time::Duration;

const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// What must hold before `mark-good`.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Wait this long after start before the first check (Flatcar blesses after 45 s up).
    pub grace: Duration,
    /// Give up (leave the slot unblessed) after this long.
    pub timeout: Duration,
    /// No unit in the `failed` state.
    pub no_failed_units: bool,
    /// Units that must be `active`.
    pub units: Vec<String>,
    /// Commands (`sh -c`) that must exit 0.
    pub commands: Vec<String>,
    /// Pause between rounds.
    pub interval: Duration,
}

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig {
            grace: Duration::from_secs(45),
            timeout: Duration::from_secs(600),
            no_failed_units: true,
            units: Vec::new(),
            commands: Vec::new(),
            interval: Duration::from_secs(5),
        }
    }
}

async fn failed_units(bus: &zbus::Connection) -> Result<Vec<String>, zbus::Error> {
    type Unit = (
        String,
        String,
        String,
        String,
        String,
        String,
        zbus::zvariant::OwnedObjectPath,
        u32,
        String,
        zbus::zvariant::OwnedObjectPath,
    );
    let reply = bus
        .call_method(
            Some(SYSTEMD),
            SYSTEMD_PATH,
            Some(MANAGER),
            "ListUnitsFiltered",
            &(vec!["failed"],),
        )
        .await?;
    let units: Vec<Unit> = reply.body().deserialize()?;
    Ok(units.into_iter().map(|u| u.0).collect())
}

async fn unit_state(bus: &zbus::Connection, unit: &str) -> Result<String, zbus::Error> {
    let reply = bus
        .call_method(
            Some(SYSTEMD),
            SYSTEMD_PATH,
            Some(MANAGER),
            "GetUnit",
            &(unit,),
        )
        .await?;
    let path: zbus::zvariant::OwnedObjectPath = reply.body().deserialize()?;
    let reply = bus
        .call_method(
            Some(SYSTEMD),
            path.as_str(),
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &("org.freedesktop.systemd1.Unit", "ActiveState"),
        )
        .await?;
    let v: zbus::zvariant::OwnedValue = reply.body().deserialize()?;
    Ok(String::try_from(v).unwrap_or_default())
}

/// One round of checks; returns what is not healthy yet (empty = healthy).
pub async fn check(cfg: &HealthConfig, bus: Option<&zbus::Connection>) -> Vec<String> {
    let mut problems = Vec::new();
    if cfg.no_failed_units || !cfg.units.is_empty() {
        match bus {
            None => problems.push("no system D-Bus to ask systemd".to_string()),
            Some(bus) => {
                if cfg.no_failed_units {
                    match failed_units(bus).await {
                        Ok(f) if f.is_empty() => {}
                        Ok(f) => problems.push(format!("failed units: {}", f.join(", "))),
                        Err(e) => problems.push(format!("cannot list failed units: {e}")),
                    }
                }
                for unit in &cfg.units {
                    match unit_state(bus, unit).await {
                        Ok(s) if s == "active" => {}
                        Ok(s) => problems.push(format!("{unit} is {s}")),
                        Err(e) => problems.push(format!("{unit}: {e}")),
                    }
                }
            }
        }
    }
    for cmd in &cfg.commands {
        match tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .kill_on_drop(true)
            .output()
            .await
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => problems.push(format!(
                "{cmd:?} exited with {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => problems.push(format!("cannot run {cmd:?}: {e}")),
        }
    }
    problems
}

/// Waits out the grace period, then checks until healthy (Ok) or the timeout (Err with
/// the last problems).
pub async fn gate(cfg: &HealthConfig, bus: Option<&zbus::Connection>) -> Result<(), Vec<String>> {
    tokio::time::sleep(cfg.grace).await;
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    loop {
        let problems = check(cfg, bus).await;
        if problems.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(problems);
        }
        tracing::info!(?problems, "not healthy yet");
        tokio::time::sleep(cfg.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_decide_without_systemd() {
        let cfg = HealthConfig {
            grace: Duration::ZERO,
            timeout: Duration::from_millis(300),
            no_failed_units: false,
            units: vec![],
            commands: vec!["true".into()],
            interval: Duration::from_millis(50),
        };
        assert_eq!(gate(&cfg, None).await, Ok(()));
        let bad = HealthConfig {
            commands: vec!["echo nope >&2; exit 3".into()],
            ..cfg.clone()
        };
        let problems = gate(&bad, None).await.unwrap_err();
        assert!(
            problems[0].contains("nope") && problems[0].contains("3"),
            "{problems:?}"
        );
        let needs_bus = HealthConfig {
            no_failed_units: true,
            ..cfg
        };
        assert!(gate(&needs_bus, None).await.is_err());
    }
}
