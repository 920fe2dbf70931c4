//! `status`: locksmith's output first (`Available:`, `Max:`, the holders' machine ids),
//! then what Keel knows beyond it: each holder's hostname, state, age, versions and lease,
//! the waiting and failed hosts, the pause, and the latest audit entries.

use crate::records::{Event, unix_now};
use crate::store::GroupView;
use std::fmt::Write;

/// Seconds as `42s`, `3m10s`, `2h5m`, `3d4h`.
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// The text `status` prints.
pub fn render(group: &str, view: &GroupView, history: &[Event], now: i64) -> String {
    let mut out = String::new();
    let Some(sem) = &view.semaphore else {
        let _ = writeln!(
            out,
            "Available: 1\nMax: 1\n\n(no semaphore yet for group {group}: it is created with max 1 on first use)"
        );
        return out;
    };
    let s = &sem.value;
    let _ = writeln!(out, "Available: {}\nMax: {}", s.semaphore, s.max);
    if !s.holders().is_empty() {
        let _ = writeln!(out, "\nMACHINE ID");
        for h in s.holders() {
            let _ = writeln!(out, "{h}");
        }
    }
    let _ = writeln!(out);
    let p = &view.policy.value;
    if p.paused {
        let _ = writeln!(
            out,
            "Group {group}: PAUSED for {} — {} (resume with `keel-locksmith resume`)",
            age(now - p.paused_at),
            p.paused_reason
        );
    } else {
        let _ = writeln!(out, "Group {group}: granting");
    }
    let lease = if p.lease_ttl > 0 {
        format!("{}s", p.lease_ttl)
    } else {
        "off".into()
    };
    let _ = writeln!(
        out,
        "Policy: lease ttl {lease}, pause after {} failed host(s)",
        p.max_failures
    );
    if !s.is_consistent() {
        let _ = writeln!(
            out,
            "Warning: semaphore {} does not match max {} minus {} holder(s); grants use the smaller",
            s.semaphore,
            s.max,
            s.holders().len()
        );
    }
    if !s.holders().is_empty() {
        let _ = writeln!(
            out,
            "\n{:<34} {:<16} {:<10} {:>7} {:<12} {:<12} {:<14} REASON",
            "HOLDER", "HOSTNAME", "STATE", "AGE", "FROM", "TARGET", "LEASE"
        );
        for id in s.holders() {
            match view.holder(id) {
                Some(h) => {
                    let h = &h.value;
                    let lease = if h.lease == 0 {
                        "none".to_string()
                    } else if view.alive.contains(id) {
                        format!("{}s ttl", h.lease_ttl)
                    } else {
                        "EXPIRED".to_string()
                    };
                    let _ = writeln!(
                        out,
                        "{:<34} {:<16} {:<10} {:>7} {:<12} {:<12} {:<14} {}",
                        id,
                        dash(&h.hostname),
                        h.state.as_str(),
                        age(now - h.acquired_at),
                        dash(&h.from_version),
                        dash(&h.target_version),
                        lease,
                        h.reason
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{:<34} {:<16} {:<10} {:>7} {:<12} {:<12} {:<14} (no Keel record: old locksmith client or edited by hand)",
                        id, "-", "legacy", "-", "-", "-", "none"
                    );
                }
            }
        }
    }
    if !view.waiting.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<34} {:<16} {:<10} {:>7} {:<12} REASON",
            "WAITING", "HOSTNAME", "FOR", "AGE", "TARGET"
        );
        let mut waiting = view.waiting.clone();
        waiting.sort_by_key(|w| (w.since, w.id.clone()));
        for w in &waiting {
            let _ = writeln!(
                out,
                "{:<34} {:<16} {:<10} {:>7} {:<12} {}",
                w.id,
                dash(&w.hostname),
                dash(&w.waiting_for),
                age(now - w.since),
                dash(&w.target_version),
                w.reason
            );
        }
    }
    if !view.failed.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<34} {:<16} {:>7} REASON",
            "FAILED", "HOSTNAME", "AGE"
        );
        for f in &view.failed {
            let _ = writeln!(
                out,
                "{:<34} {:<16} {:>7} {}",
                f.id,
                dash(&f.hostname),
                age(now - f.at),
                f.reason
            );
        }
    }
    if !history.is_empty() {
        let _ = writeln!(out, "\nRECENT");
        for e in history {
            let _ = writeln!(out, "{}", event_line(e, now));
        }
    }
    out
}

/// One audit entry as a line.
pub fn event_line(e: &Event, now: i64) -> String {
    let kind = serde_json::to_value(e.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    format!(
        "{:>8} ago  {:<10} {:<34} by {:<20} {}",
        age(now - e.at),
        kind,
        dash(&e.id),
        dash(&e.by),
        e.detail
    )
}

/// The JSON `status --json` prints.
pub fn json(group: &str, view: &GroupView, history: &[Event]) -> serde_json::Value {
    serde_json::json!({
        "group": group,
        "revision": view.revision,
        "semaphore": view.semaphore.as_ref().map(|s| &s.value),
        "policy": view.policy.value,
        "holders": view.holders.iter().map(|h| {
            let mut v = serde_json::to_value(&h.value).unwrap_or_default();
            v["lease_alive"] = serde_json::Value::Bool(view.alive.contains(&h.value.id));
            v
        }).collect::<Vec<_>>(),
        "waiting": view.waiting,
        "failed": view.failed,
        "history": history,
        "now": unix_now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(190), "3m10s");
        assert_eq!(age(7500), "2h5m");
        assert_eq!(age(90000), "1d1h");
    }
}
