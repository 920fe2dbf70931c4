//! Normalisation of responses so that two servers' answers to the same
//! request sequence compare equal when they agree on everything but
//! incidental values (absolute indexes, ports, ids, times).
//!
//! Index values are expressed relative to each server's *base*: the
//! `X-Etcd-Index` observed before the scenario's first write. Relative
//! indexes are rendered as strings `"#+N"`; the literal `0` (used by etcd for
//! parameter errors) is kept as the number `0`.

use std::time::SystemTime;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Per-server normalisation context.
#[derive(Debug, Clone)]
pub struct NormCtx {
    /// `X-Etcd-Index` before the first write of the scenario.
    pub base: u64,
    pub client_url: String,
    pub peer_url: String,
    /// Exact strings to replace by `<id>` (member id, cluster id).
    pub ids: Vec<String>,
    /// Index jumps not caused by the scenario's writes (etcd writes member
    /// attributes through raft when it restarts): `(last index before, jump)`.
    /// Indexes above `last index before` are shifted down by `jump`.
    pub gaps: Vec<(u64, u64)>,
}

/// Per-request normalisation options.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// Directory listings were not requested sorted: compare `nodes` as sets.
    pub unordered: bool,
    /// The request's `prevIndex` as sent (numbers in a 101 cause are
    /// indexes; the echoed prevIndex itself becomes `<prevIndex>`).
    pub prev_index: Option<String>,
    /// The request's (decoded) `prevValue`, if any.
    pub prev_value: Option<String>,
}

impl NormCtx {
    /// Render an index relative to the base.
    pub fn idx(&self, n: u64) -> Value {
        if n == 0 {
            Value::from(0)
        } else {
            Value::String(self.idx_str(n))
        }
    }
    pub fn idx_str(&self, n: u64) -> String {
        if n == 0 {
            return "0".into();
        }
        let shift: u64 = self
            .gaps
            .iter()
            .filter(|(after, _)| n > *after)
            .map(|(_, j)| *j)
            .sum();
        let d = n as i128 - self.base as i128 - shift as i128;
        format!("#{d:+}")
    }

    /// Like [`NormCtx::idx_str`] for an index known to be a current index
    /// (never etcd's parameter-error 0).
    pub fn idx_str_current(&self, n: u64) -> String {
        if n == 0 && self.base == 0 {
            "#+0".into()
        } else {
            self.idx_str(n)
        }
    }

    /// Replace URLs and ids inside a free-form string.
    pub fn text(&self, s: &str) -> String {
        let mut s = s
            .replace(&self.client_url, "<client-url>")
            .replace(&self.peer_url, "<peer-url>");
        let cport = self.client_url.rsplit(':').next().unwrap_or("").to_string();
        let pport = self.peer_url.rsplit(':').next().unwrap_or("").to_string();
        if !cport.is_empty() {
            s = s.replace(&format!("127.0.0.1:{cport}"), "<client-addr>");
        }
        if !pport.is_empty() {
            s = s.replace(&format!("127.0.0.1:{pport}"), "<peer-addr>");
        }
        for id in &self.ids {
            if !id.is_empty() {
                s = replace_token(&s, id, "<id>");
            }
        }
        s
    }

    /// A key: numeric in-order components (20 digits) become relative indexes.
    pub fn key(&self, k: &str) -> String {
        let parts: Vec<String> = k
            .split('/')
            .map(|c| {
                if c.len() == 20 && c.bytes().all(|b| b.is_ascii_digit()) {
                    match c.parse::<u64>() {
                        Ok(n) => format!("{{{}}}", self.idx_str(n)),
                        Err(_) => c.to_string(),
                    }
                } else {
                    c.to_string()
                }
            })
            .collect();
        self.text(&parts.join("/"))
    }

    /// Normalise the numbers inside `[a != b]` / `[a/b]` brackets. `which`
    /// selects brackets by position (None = all).
    pub fn cause_brackets(&self, cause: &str, which: Option<usize>) -> String {
        let mut out = String::new();
        let mut rest = cause;
        let mut n = 0usize;
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..open]);
            let Some(close) = rest[open..].find(']') else {
                break;
            };
            let inner = &rest[open + 1..open + close];
            let selected = which.is_none_or(|w| w == n);
            if selected {
                out.push('[');
                out.push_str(&self.numbers_in(inner));
                out.push(']');
            } else {
                out.push_str(&rest[open..=open + close]);
            }
            rest = &rest[open + close + 1..];
            n += 1;
        }
        out.push_str(rest);
        out
    }

    /// Replace every run of decimal digits by its relative index.
    pub fn numbers_in(&self, s: &str) -> String {
        let mut out = String::new();
        let mut digits = String::new();
        let flush = |digits: &mut String, out: &mut String| {
            if !digits.is_empty() {
                match digits.parse::<u64>() {
                    Ok(n) => out.push_str(&self.idx_str(n)),
                    Err(_) => out.push_str(digits),
                }
                digits.clear();
            }
        };
        for ch in s.chars() {
            if ch.is_ascii_digit() {
                digits.push(ch);
            } else {
                flush(&mut digits, &mut out);
                out.push(ch);
            }
        }
        flush(&mut digits, &mut out);
        out
    }
}

/// Replace `needle` where it is not part of a longer alphanumeric token.
pub fn replace_token(s: &str, needle: &str, with: &str) -> String {
    let mut out = String::new();
    let mut i = 0;
    let b = s.as_bytes();
    while i < s.len() {
        if s[i..].starts_with(needle) {
            let before_ok = i == 0 || !b[i - 1].is_ascii_alphanumeric();
            let j = i + needle.len();
            let after_ok = j >= s.len() || !b[j].is_ascii_alphanumeric();
            if before_ok && after_ok {
                out.push_str(with);
                i = j;
                continue;
            }
        }
        let ch = s[i..].chars().next().expect("char");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// etcd's id format: lowercase hex, no leading zeros, non-empty.
pub fn is_hex_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && !s.starts_with('0')
}

/// Normalise a JSON value returned by a v2 endpoint. Problems that are not
/// differences between servers (a bad `expiration`, a malformed id) are
/// pushed to `issues`. `now` is when the response was received.
pub fn normalize_json(
    v: &Value,
    ctx: &NormCtx,
    opts: &Opts,
    now: SystemTime,
    issues: &mut Vec<String>,
) -> Value {
    match v {
        Value::Object(m) => normalize_object(m, ctx, opts, now, issues),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| normalize_json(x, ctx, opts, now, issues))
                .collect(),
        ),
        Value::String(s) => Value::String(ctx.text(s)),
        other => other.clone(),
    }
}

fn normalize_object(
    m: &Map<String, Value>,
    ctx: &NormCtx,
    opts: &Opts,
    now: SystemTime,
    issues: &mut Vec<String>,
) -> Value {
    let error_code = m.get("errorCode").and_then(Value::as_u64);
    let is_member = m.contains_key("peerURLs");
    let mut out = Map::new();
    for (k, val) in m {
        let nv = match (k.as_str(), val) {
            ("createdIndex" | "modifiedIndex" | "index", Value::Number(n))
                if n.as_u64().is_some() =>
            {
                ctx.idx(n.as_u64().expect("u64"))
            }
            ("key", Value::String(s)) => Value::String(ctx.key(s)),
            ("expiration", Value::String(s)) => {
                check_expiration(s, m.get("ttl"), now, issues);
                Value::String("<expiration>".into())
            }
            ("cause", Value::String(s)) => {
                let c = match error_code {
                    Some(401) => ctx.cause_brackets(s, None),
                    Some(101) if opts.prev_index.is_some() => {
                        let pi = opts.prev_index.as_deref().unwrap_or_default();
                        let echo = format!("[{pi} != ");
                        match index_bracket(s, opts.prev_value.as_deref()) {
                            Some(i) => {
                                let marked = match (i, s.rfind(&echo)) {
                                    (_, Some(pos)) if i == 1 || s.find(&echo) == Some(pos) => {
                                        format!(
                                            "{}[<prevIndex> != {}",
                                            &s[..pos],
                                            &s[pos + echo.len()..]
                                        )
                                    }
                                    _ => s.clone(),
                                };
                                ctx.cause_brackets(&marked, Some(i))
                            }
                            None => s.clone(),
                        }
                    }
                    _ => s.clone(),
                };
                Value::String(ctx.text(&c))
            }
            ("id", Value::String(s)) if is_member => {
                if !is_hex_id(s) {
                    issues.push(format!(
                        "member id {s:?} is not lowercase hex without leading zeros"
                    ));
                }
                Value::String("<id>".into())
            }
            ("nodes", Value::Array(a)) => {
                let mut items: Vec<Value> = a
                    .iter()
                    .map(|x| normalize_json(x, ctx, opts, now, issues))
                    .collect();
                if opts.unordered {
                    items.sort_by_key(|x| {
                        x.get("key")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .unwrap_or_default()
                    });
                }
                Value::Array(items)
            }
            _ => normalize_json(val, ctx, opts, now, issues),
        };
        out.insert(k.clone(), nv);
    }
    Value::Object(out)
}

/// Which bracket of a compare-failed cause holds indexes: etcd writes
/// `[pv != v]` (value mismatch), `[pi != i]` (index mismatch) or both.
fn index_bracket(cause: &str, prev_value: Option<&str>) -> Option<usize> {
    match cause.matches('[').count() {
        2 => Some(1),
        1 => {
            let first = cause
                .trim_start_matches('[')
                .split(" != ")
                .next()
                .unwrap_or("");
            match prev_value {
                Some(pv) if pv == first => None,
                _ => Some(0),
            }
        }
        _ => None,
    }
}

/// `expiration` must be RFC 3339 in UTC (`Z`) and lie near now + ttl.
fn check_expiration(s: &str, ttl: Option<&Value>, now: SystemTime, issues: &mut Vec<String>) {
    let parsed = match OffsetDateTime::parse(s, &Rfc3339) {
        Ok(t) => t,
        Err(e) => {
            issues.push(format!("expiration {s:?} is not RFC 3339: {e}"));
            return;
        }
    };
    if !s.ends_with('Z') {
        issues.push(format!("expiration {s:?} is not in UTC (`Z`)"));
    }
    let now = OffsetDateTime::from(now);
    let delta = (parsed - now).as_seconds_f64();
    match ttl.and_then(Value::as_i64) {
        Some(ttl) => {
            // ttl = ceil(expiration - now): expect expiration - now in (ttl-1, ttl].
            let ttl = ttl as f64;
            if delta < ttl - 2.5 || delta > ttl + 1.5 {
                issues.push(format!(
                    "expiration {s:?} is {delta:.3}s from now, but ttl is {ttl} (expected expiration ≈ now + ttl)"
                ));
            }
        }
        None => {
            // No ttl (e.g. an expired node in an `expire` event): must be near now.
            if !(-30.0..=3600.0).contains(&delta) {
                issues.push(format!(
                    "expiration {s:?} is {delta:.3}s from now (no ttl field)"
                ));
            }
        }
    }
}

/// Recursive JSON difference; `ttl` numbers may differ by 1.
pub fn diff_json(path: &str, e: &Value, k: &Value, out: &mut Vec<String>) {
    match (e, k) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, av) in a {
                let p = format!("{path}.{key}");
                match b.get(key) {
                    None => out.push(format!("{p}: etcd has {}, keel lacks it", short(av))),
                    Some(bv) => {
                        if key == "ttl"
                            && let (Some(x), Some(y)) = (av.as_i64(), bv.as_i64())
                        {
                            if (x - y).abs() > 1 {
                                out.push(format!(
                                    "{p}: etcd {x}, keel {y} (differ by more than 1)"
                                ));
                            }
                            continue;
                        }
                        diff_json(&p, av, bv, out);
                    }
                }
            }
            for (key, bv) in b {
                if !a.contains_key(key) {
                    out.push(format!(
                        "{path}.{key}: keel has {}, etcd lacks it",
                        short(bv)
                    ));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                out.push(format!(
                    "{path}: etcd has {} elements, keel has {}: etcd {} | keel {}",
                    a.len(),
                    b.len(),
                    short(e),
                    short(k)
                ));
                return;
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_json(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ => {
            let zero = |v: &Value| v.as_u64() == Some(0) || v.as_str() == Some("0");
            let base = |v: &Value| v.as_str() == Some("#+0");
            // Index 0 (etcd's answer to parameter errors) and "the base index"
            // cannot be told apart on a fresh server whose base is 0.
            let equivalent = (zero(e) && base(k)) || (base(e) && zero(k));
            if e != k && !equivalent {
                out.push(format!("{path}: etcd {} != keel {}", short(e), short(k)));
            }
        }
    }
}

fn short(v: &Value) -> String {
    crate::http::abbreviate(&v.to_string(), 300)
}

/// Shape-only description of a JSON value: object key sets and value types.
pub fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), shape(x))).collect()),
        Value::Array(a) => match a.first() {
            Some(x) => Value::Array(vec![shape(x)]),
            None => Value::Array(vec![]),
        },
        Value::String(_) => Value::String("<string>".into()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Value::String("<integer>".into()),
        Value::Number(_) => Value::String("<number>".into()),
        Value::Bool(_) => Value::String("<bool>".into()),
        Value::Null => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(base: u64) -> NormCtx {
        NormCtx {
            base,
            client_url: "http://127.0.0.1:1111".into(),
            peer_url: "http://127.0.0.1:2222".into(),
            ids: vec!["abc123".into()],
            gaps: Vec::new(),
        }
    }

    fn diff(a: &Value, ca: &NormCtx, b: &Value, cb: &NormCtx, o: &Opts) -> Vec<String> {
        diff2(a, ca, o, b, cb, o)
    }

    fn diff2(
        a: &Value,
        ca: &NormCtx,
        oa: &Opts,
        b: &Value,
        cb: &NormCtx,
        ob: &Opts,
    ) -> Vec<String> {
        let now = SystemTime::now();
        let mut issues = Vec::new();
        let na = normalize_json(a, ca, oa, now, &mut issues);
        let nb = normalize_json(b, cb, ob, now, &mut issues);
        let mut d = issues;
        diff_json("body", &na, &nb, &mut d);
        d
    }

    #[test]
    fn indexes_are_relative_to_base() {
        let a = json!({"action":"set","node":{"key":"/q/00000000000000000005","modifiedIndex":5,"createdIndex":4}});
        let b = json!({"action":"set","node":{"key":"/q/00000000000000000002","modifiedIndex":2,"createdIndex":1}});
        assert!(diff(&a, &ctx(3), &b, &ctx(0), &Opts::default()).is_empty());
        let c = json!({"action":"set","node":{"key":"/q/00000000000000000002","modifiedIndex":2,"createdIndex":2}});
        assert_eq!(diff(&a, &ctx(3), &c, &ctx(0), &Opts::default()).len(), 1);
        // index 0 (parameter errors) stays 0.
        let e = json!({"errorCode":209,"index":0});
        let k = json!({"errorCode":209,"index":7});
        assert_eq!(diff(&e, &ctx(3), &k, &ctx(0), &Opts::default()).len(), 1);
    }

    #[test]
    fn gaps_absorb_restart_jumps() {
        let mut c = ctx(3);
        c.gaps.push((9, 1));
        assert_eq!(c.idx_str(9), "#+6");
        assert_eq!(c.idx_str(11), "#+7");
    }

    #[test]
    fn causes() {
        let oe = |pv: &str| Opts {
            prev_index: Some("1003".into()),
            prev_value: Some(pv.into()),
            ..Opts::default()
        };
        let ok = |pv: &str| Opts {
            prev_index: Some("1000".into()),
            prev_value: Some(pv.into()),
            ..Opts::default()
        };
        let a = json!({"errorCode":101,"cause":"[two != one] [1003 != 4]","index":4});
        let b = json!({"errorCode":101,"cause":"[two != one] [1000 != 1]","index":1});
        assert!(diff2(&a, &ctx(3), &oe("two"), &b, &ctx(0), &ok("two")).is_empty());
        // Only the index bracket (value matched).
        let a = json!({"errorCode":101,"cause":"[1003 != 4]","index":4});
        let b = json!({"errorCode":101,"cause":"[1000 != 1]","index":1});
        assert!(diff2(&a, &ctx(3), &oe("one"), &b, &ctx(0), &ok("one")).is_empty());
        // A literal prevIndex is echoed as is.
        let o = Opts {
            prev_index: Some("18446744073709551615".into()),
            ..Opts::default()
        };
        let a = json!({"errorCode":101,"cause":"[18446744073709551615 != 4]","index":4});
        let b = json!({"errorCode":101,"cause":"[18446744073709551615 != 1]","index":1});
        assert!(diff(&a, &ctx(3), &b, &ctx(0), &o).is_empty());
        let b = json!({"errorCode":101,"cause":"[18446744073709551614 != 1]","index":1});
        assert_eq!(diff(&a, &ctx(3), &b, &ctx(0), &o).len(), 1);
        // Only the value bracket: numbers are values and must match exactly.
        let a = json!({"errorCode":101,"cause":"[9 != 1]","index":4});
        let b = json!({"errorCode":101,"cause":"[9 != 2]","index":1});
        assert_eq!(diff2(&a, &ctx(3), &oe("9"), &b, &ctx(0), &ok("9")).len(), 1);
        let a = json!({"errorCode":401,"cause":"the requested history has been cleared [1104/4]","index":2103});
        let b = json!({"errorCode":401,"cause":"the requested history has been cleared [1101/1]","index":2100});
        assert!(diff(&a, &ctx(3), &b, &ctx(0), &Opts::default()).is_empty());
    }

    #[test]
    fn ttl_tolerance_and_unordered_nodes() {
        let a = json!({"node":{"ttl":10,"nodes":[{"key":"/a"},{"key":"/b"}]}});
        let b = json!({"node":{"ttl":9,"nodes":[{"key":"/b"},{"key":"/a"}]}});
        let unordered = Opts {
            unordered: true,
            ..Opts::default()
        };
        assert!(diff(&a, &ctx(0), &b, &ctx(0), &unordered).is_empty());
        assert_eq!(diff(&a, &ctx(0), &b, &ctx(0), &Opts::default()).len(), 2);
        let c = json!({"node":{"ttl":12,"nodes":[{"key":"/a"},{"key":"/b"}]}});
        assert_eq!(diff(&a, &ctx(0), &c, &ctx(0), &unordered).len(), 1);
        let d = json!({"node":{"ttl":10,"nodes":[{"key":"/a"},{"key":"/b"}],"dir":true}});
        assert_eq!(diff(&a, &ctx(0), &d, &ctx(0), &unordered).len(), 1);
    }

    #[test]
    fn expiration_checked() {
        let now = SystemTime::now();
        let exp = OffsetDateTime::from(now + std::time::Duration::from_secs(10))
            .format(&Rfc3339)
            .expect("fmt");
        let mut issues = Vec::new();
        normalize_json(
            &json!({"expiration": exp, "ttl": 10}),
            &ctx(0),
            &Opts::default(),
            now,
            &mut issues,
        );
        assert!(issues.is_empty(), "{issues:?}");
        normalize_json(
            &json!({"expiration": exp, "ttl": 100}),
            &ctx(0),
            &Opts::default(),
            now,
            &mut issues,
        );
        assert_eq!(issues.len(), 1);
        issues.clear();
        normalize_json(
            &json!({"expiration": "soon", "ttl": 10}),
            &ctx(0),
            &Opts::default(),
            now,
            &mut issues,
        );
        assert_eq!(issues.len(), 1);
    }

    #[test]
    fn urls_and_ids() {
        let c = ctx(0);
        assert_eq!(
            c.text("http://127.0.0.1:1111, abc123: x abc1234"),
            "<client-url>, <id>: x abc1234"
        );
        assert!(is_hex_id("2e1259d415f2a040"));
        assert!(!is_hex_id("0e1259d415f2a040"));
        assert!(!is_hex_id("2E12"));
    }
}
