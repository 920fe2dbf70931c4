//! Server-side resource sampling from Linux procfs (`--pid`): resident memory
//! (`VmRSS`, `VmHWM` from `/proc/PID/status`) and consumed CPU time
//! (`utime + stime` from `/proc/PID/stat`).

use std::time::Duration;

/// One sample of a process's resource usage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// Current resident set size, KiB.
    pub rss_kib: u64,
    /// Peak resident set size ("high water mark"), KiB.
    pub hwm_kib: u64,
    /// User + system CPU time consumed so far.
    pub cpu: Duration,
}

/// Errors reading procfs.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (no such process, not Linux, ...).
    #[error("read {path}: {source}")]
    Read {
        /// The procfs path.
        path: String,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The file did not have the expected shape.
    #[error("parse {0}: unexpected format")]
    Parse(String),
}

/// Kernel clock ticks per second for `/proc/PID/stat` times. `USER_HZ` is 100
/// on every mainstream Linux architecture; `getconf CLK_TCK` confirms it when
/// available.
fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Reads a sample for `pid`.
pub fn sample(pid: u32) -> Result<ProcSample, ProcError> {
    let read = |path: String| {
        std::fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
    };
    let status_path = format!("/proc/{pid}/status");
    let status = read(status_path.clone())?;
    let stat_path = format!("/proc/{pid}/stat");
    let stat = read(stat_path.clone())?;
    let (rss_kib, hwm_kib) = parse_status(&status).ok_or(ProcError::Parse(status_path))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or(ProcError::Parse(stat_path))?;
    let hz = clock_ticks_per_sec();
    let cpu = Duration::from_micros(ticks.saturating_mul(1_000_000) / hz);
    Ok(ProcSample {
        rss_kib,
        hwm_kib,
        cpu,
    })
}

/// `(VmRSS, VmHWM)` in KiB from the text of `/proc/PID/status`.
fn parse_status(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// `utime + stime` (clock ticks) from the text of `/proc/PID/stat`. The
/// command name (field 2) may contain spaces and parentheses, so fields are
/// counted after the last `)`.
fn parse_stat_cpu_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    // After ")": field 3 (state) is index 0, so utime (14) is 11, stime 12.
    let mut it = rest.split_whitespace().skip(11);
    let utime: u64 = it.next()?.parse().ok()?;
    let stime: u64 = it.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tetcd\nVmPeak:\t  900 kB\nVmHWM:\t   51234 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(parse_status(status), Some((40960, 51234)));
        let stat = "1234 (we ird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 8 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(287));
    }

    #[test]
    fn samples_self() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
    }
}
