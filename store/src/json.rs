//! JSON and time rendering byte-compatible with Go's `encoding/json` and `time`, so
//! responses match what etcd (built with Go 1.19) sends: `<`, `>`, `&`, U+2028 and U+2029
//! are escaped as `\u003c`…, control characters other than `\n`, `\r`, `\t` as `\u00XX`,
//! times as RFC 3339 with nanoseconds and trailing zeros trimmed, durations as Go prints them.

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};
use std::io;

/// Serialize like Go's `json.Marshal` (no trailing newline).
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    // Serializing our own types into a Vec cannot fail.
    value
        .serialize(&mut ser)
        .expect("serializing to memory cannot fail");
    out
}

/// Serialize like Go's `json.NewEncoder(w).Encode(v)`: with a trailing newline.
pub fn to_vec_line<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = to_vec(value);
    out.push(b'\n');
    out
}

#[derive(Debug, Clone, Copy)]
struct GoFormatter;

impl Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, ch) in fragment.char_indices() {
            let esc: Option<&[u8]> = match ch {
                '<' => Some(b"\\u003c"),
                '>' => Some(b"\\u003e"),
                '&' => Some(b"\\u0026"),
                '\u{2028}' => Some(b"\\u2028"),
                '\u{2029}' => Some(b"\\u2029"),
                _ => None,
            };
            if let Some(esc) = esc {
                writer.write_all(&fragment.as_bytes()[start..i])?;
                writer.write_all(esc)?;
                start = i + ch.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        char_escape: CharEscape,
    ) -> io::Result<()> {
        let s: &[u8] = match char_escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::Solidus => b"/",
            CharEscape::Backspace => b"\\u0008",
            CharEscape::FormFeed => b"\\u000c",
            CharEscape::AsciiControl(byte) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let buf = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(byte >> 4) as usize],
                    HEX[(byte & 0xf) as usize],
                ];
                return writer.write_all(&buf);
            }
        };
        writer.write_all(s)
    }
}

/// Format Unix nanoseconds as Go's `time.RFC3339Nano` in UTC, e.g.
/// `2026-11-21T23:31:25.214887591Z` (trailing zeros of the fraction trimmed).
pub fn rfc3339_nano(unix_nanos: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_nanos))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let nanos = t.nanosecond();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Format a duration the way Go's `time.Duration.String` does (`99.848235ms`, `1m2.5s`).
pub fn go_duration(d: std::time::Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return frac_unit(nanos, 1_000, "µs");
    }
    if nanos < 1_000_000_000 {
        return frac_unit(nanos, 1_000_000, "ms");
    }
    let total_secs = nanos / 1_000_000_000;
    let sub = nanos % 1_000_000_000;
    let hours = total_secs / 3600;
    let mins = (total_secs % 3600) / 60;
    let secs = total_secs % 60;
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || mins > 0 {
        out.push_str(&format!("{mins}m"));
    }
    out.push_str(&frac_unit(
        u128::from(secs as u64) * 1_000_000_000 + sub,
        1_000_000_000,
        "s",
    ));
    out
}

fn frac_unit(value: u128, unit: u128, suffix: &str) -> String {
    let whole = value / unit;
    let rest = value % unit;
    if rest == 0 {
        return format!("{whole}{suffix}");
    }
    let width = unit.ilog10() as usize;
    let frac = format!("{rest:0width$}");
    format!("{whole}.{}{suffix}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_go() {
        let v = serde_json::json!({"v": "<a&b>\u{8}\u{c}\u{1}\n\u{2028}é"});
        assert_eq!(
            String::from_utf8(to_vec(&v)).unwrap(),
            r#"{"v":"\u003ca\u0026b\u003e\u0008\u000c\u0001\n\u2028é"}"#
        );
    }

    #[test]
    fn rfc3339_trims_zeros() {
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_nano(1_500_000_000), "1970-01-01T00:00:01.5Z");
        assert_eq!(
            rfc3339_nano(1_795_390_285_214_887_591),
            "2026-11-22T23:31:25.214887591Z"
        );
    }

    #[test]
    fn durations_like_go() {
        use std::time::Duration;
        assert_eq!(go_duration(Duration::from_nanos(99_848_235)), "99.848235ms");
        assert_eq!(go_duration(Duration::from_millis(62_500)), "1m2.5s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_nanos(1500)), "1.5µs");
        assert_eq!(go_duration(Duration::from_secs(2)), "2s");
    }
}
