//! Reboot windows as locksmith takes them: `LOCKSMITHD_REBOOT_WINDOW_START` is `"HH:MM"`
//! (every day) or `"Day HH:MM"` (every week, `Sun`..`Sat`), `…_LENGTH` a Go duration
//! (`1h30m`); both or neither. Times are the host's local wall-clock time.
//!
//! Decisions take `now` as a parameter; only [`local_now`] reads the clock.

use chrono::{Datelike, NaiveDateTime, Timelike};
use std::time::Duration;

const DAY_SECS: i64 = 86_400;
const WEEK_SECS: i64 = 7 * DAY_SECS;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("reboot window start {0:?} is not \"HH:MM\" or \"Day HH:MM\" (Day = Sun..Sat)")]
    Start(String),
    #[error("reboot window length {0:?} is not a duration like \"1h30m\"")]
    Length(String),
    #[error("reboot window length {0:?} must be at least 0 and shorter than the {1} period")]
    LengthRange(String, &'static str),
    #[error("reboot window needs both a start and a length (got only the {0})")]
    Half(&'static str),
}

/// A recurring window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Seconds from the start of the period (midnight, or Sunday midnight) to the opening.
    start: i64,
    /// 1 day or 7 days.
    period: i64,
    length: i64,
}

/// Whether the window is open at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    Open { closes_in: Duration },
    Closed { opens_in: Duration },
}

impl WindowState {
    pub fn is_open(self) -> bool {
        matches!(self, WindowState::Open { .. })
    }
}

fn weekday(s: &str) -> Option<i64> {
    let names = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let l = s.to_ascii_lowercase();
    let full = [
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ];
    names
        .iter()
        .position(|n| *n == l)
        .or_else(|| full.iter().position(|n| *n == l))
        .map(|i| i as i64)
}

fn clock(s: &str) -> Option<i64> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: i64 = h.parse().ok()?;
    let m: i64 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 3600 + m * 60)
}

impl Window {
    /// Parses the two settings; `Ok(None)` when both are empty.
    pub fn parse(start: &str, length: &str) -> Result<Option<Window>, WindowError> {
        let (start, length) = (start.trim(), length.trim());
        match (start.is_empty(), length.is_empty()) {
            (true, true) => return Ok(None),
            (false, true) => return Err(WindowError::Half("start")),
            (true, false) => return Err(WindowError::Half("length")),
            _ => {}
        }
        let fields: Vec<&str> = start.split_whitespace().collect();
        let (offset, period, name) = match fields.as_slice() {
            [t] => (clock(t), DAY_SECS, "daily"),
            [d, t] => (
                weekday(d).and_then(|d| clock(t).map(|t| d * DAY_SECS + t)),
                WEEK_SECS,
                "weekly",
            ),
            _ => (None, 0, ""),
        };
        let offset = offset.ok_or_else(|| WindowError::Start(start.to_string()))?;
        let len =
            parse_go_duration(length).ok_or_else(|| WindowError::Length(length.to_string()))?;
        let len_secs = len.as_secs() as i64;
        if len_secs >= period {
            return Err(WindowError::LengthRange(length.to_string(), name));
        }
        Ok(Some(Window {
            start: offset,
            period,
            length: len_secs,
        }))
    }

    /// Open or closed at local time `now`, and for how long.
    pub fn state(&self, now: NaiveDateTime) -> WindowState {
        let mut at = now.num_seconds_from_midnight() as i64;
        if self.period == WEEK_SECS {
            at += now.weekday().num_days_from_sunday() as i64 * DAY_SECS;
        }
        let since = (at - self.start).rem_euclid(self.period);
        if since < self.length {
            WindowState::Open {
                closes_in: Duration::from_secs((self.length - since) as u64),
            }
        } else {
            WindowState::Closed {
                opens_in: Duration::from_secs((self.period - since) as u64),
            }
        }
    }
}

/// The host's local wall-clock time.
pub fn local_now() -> NaiveDateTime {
    chrono::Local::now().naive_local()
}

/// Go's `time.ParseDuration` for non-negative values: `[0-9.]+` followed by a unit
/// (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), repeated; `0` alone is allowed.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use proptest::prelude::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, 0)
            .unwrap()
    }

    #[test]
    fn parse_errors_match_locksmiths_table() {
        for bad in ["25:00", "23:61", "14", "foo 14:00", "Mon 14:00 x", "Mon"] {
            assert!(Window::parse(bad, "1h").is_err(), "{bad}");
        }
        for bad in ["1j", "-1h", "", "h", "24h"] {
            if bad.is_empty() {
                assert_eq!(Window::parse("14:00", bad), Err(WindowError::Half("start")));
            } else {
                assert!(Window::parse("14:00", bad).is_err(), "{bad}");
            }
        }
        assert!(Window::parse("Mon 14:00", "24h").is_ok());
        assert!(Window::parse("Mon 14:00", "168h").is_err());
        assert_eq!(Window::parse("", ""), Ok(None));
        assert_eq!(Window::parse("", "1h"), Err(WindowError::Half("length")));
    }

    #[test]
    fn daily_window_wraps_midnight() {
        let w = Window::parse("23:30", "1h").unwrap().unwrap();
        assert_eq!(
            w.state(at(2026, 11, 22, 23, 45)),
            WindowState::Open {
                closes_in: Duration::from_secs(45 * 60)
            }
        );
        assert_eq!(
            w.state(at(2026, 11, 23, 0, 15)),
            WindowState::Open {
                closes_in: Duration::from_secs(15 * 60)
            }
        );
        assert_eq!(
            w.state(at(2026, 11, 23, 0, 30)),
            WindowState::Closed {
                opens_in: Duration::from_secs(23 * 3600)
            }
        );
    }

    #[test]
    fn weekly_window_wraps_the_week() {
        // 2026-11-22 is a Sunday.
        let w = Window::parse("sat 23:00", "2h").unwrap().unwrap();
        assert!(w.state(at(2026, 11, 22, 0, 59)).is_open());
        assert_eq!(
            w.state(at(2026, 11, 22, 1, 0)),
            WindowState::Closed {
                opens_in: Duration::from_secs(6 * 86400 + 22 * 3600)
            }
        );
        assert!(w.state(at(2026, 11, 28, 23, 0)).is_open());
        assert!(!w.state(at(2026, 11, 28, 22, 59)).is_open());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "1", "1x", "-1h", "1..2h", "h1"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn state_is_consistent(start_h in 0u32..24, start_m in 0u32..60, len_m in 0i64..1440, h in 0u32..24, m in 0u32..60) {
            let w = Window::parse(&format!("{start_h:02}:{start_m:02}"), &format!("{len_m}m")).unwrap().unwrap();
            let now = at(2026, 11, 22, h, m);
            match w.state(now) {
                WindowState::Open { closes_in } => {
                    prop_assert!(closes_in.as_secs() as i64 <= len_m * 60 && closes_in.as_secs() > 0);
                    prop_assert!(!w.state(now + chrono::Duration::seconds(closes_in.as_secs() as i64)).is_open());
                }
                WindowState::Closed { opens_in } => {
                    prop_assert!(opens_in.as_secs() > 0 && opens_in.as_secs() <= 86400);
                    let then = now + chrono::Duration::seconds(opens_in.as_secs() as i64);
                    prop_assert_eq!(w.state(then).is_open(), len_m > 0);
                }
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,12}", l in "\\PC{0,8}") {
            let _ = Window::parse(&s, &l);
        }
    }
}
