//! Request parameters parsed as Go's `http.Request.ParseForm` does, because etcd reads
//! v2 parameters through it: query string and, for PUT/POST/PATCH with
//! `Content-Type: application/x-www-form-urlencoded`, the body; body values come first,
//! so they win over the query. Booleans and integers parse as Go's `strconv` does.

use std::collections::HashMap;

/// Form values by name, in order of appearance (body first, then query).
#[derive(Debug, Default, Clone)]
pub struct Form {
    values: HashMap<String, Vec<String>>,
}

/// Go's error text for a bad form, reported in etcd's 210 error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormError(pub String);

/// A parameter whose value does not parse as its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid value")]
pub struct BadValue;

impl Form {
    /// Parse `query` and, when `body_is_form`, `body`.
    pub fn parse(query: &str, body: Option<&[u8]>) -> Result<Form, FormError> {
        let mut form = Form::default();
        let mut first_err = None;
        if let Some(body) = body {
            let text = String::from_utf8_lossy(body);
            if let Err(e) = form.add_query(&text) {
                first_err.get_or_insert(e);
            }
        }
        if let Err(e) = form.add_query(query) {
            first_err.get_or_insert(e);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(form),
        }
    }

    fn add_query(&mut self, q: &str) -> Result<(), FormError> {
        let mut err = None;
        for pair in q.split('&') {
            if pair.is_empty() {
                continue;
            }
            if pair.contains(';') {
                err.get_or_insert(FormError("invalid semicolon separator in query".into()));
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = match unescape(k) {
                Ok(k) => k,
                Err(e) => {
                    err.get_or_insert(e);
                    continue;
                }
            };
            let v = match unescape(v) {
                Ok(v) => v,
                Err(e) => {
                    err.get_or_insert(e);
                    continue;
                }
            };
            self.values.entry(k).or_default().push(v);
        }
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// First value of `key` (Go's `FormValue`), if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    pub fn has(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// Go `strconv.ParseBool` of the first value; absent = false.
    pub fn bool(&self, key: &str) -> Result<bool, BadValue> {
        match self.get(key) {
            None => Ok(false),
            Some(v) => parse_bool(v),
        }
    }

    /// Go `strconv.ParseUint(v, 10, 64)` of the first value; absent = 0.
    pub fn uint(&self, key: &str) -> Result<u64, BadValue> {
        match self.get(key) {
            None => Ok(0),
            Some(v) => parse_uint(v),
        }
    }
}

pub fn parse_bool(v: &str) -> Result<bool, BadValue> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(BadValue),
    }
}

pub fn parse_uint(v: &str) -> Result<u64, BadValue> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadValue);
    }
    v.parse().map_err(|_| BadValue)
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte; the result must be taken as
/// bytes (invalid UTF-8 is kept lossily).
fn unescape(s: &str) -> Result<String, FormError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    _ => {
                        let end = (i + 3).min(b.len());
                        let bad = String::from_utf8_lossy(&b[i..end]);
                        return Err(FormError(format!("invalid URL escape {bad:?}")));
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Percent-decode a URL path (no `+` rule), as Go fills `URL.Path`.
pub fn unescape_path(s: &str) -> Result<String, FormError> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    unescape(&s.replace('+', "%2B"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn body_wins_over_query() {
        let f = Form::parse("value=q&ttl=5", Some(b"value=b")).unwrap();
        assert_eq!(f.get("value"), Some("b"));
        assert_eq!(f.uint("ttl"), Ok(5));
    }

    #[test]
    fn go_errors() {
        assert_eq!(
            Form::parse("a=%zz", None).unwrap_err().0,
            r#"invalid URL escape "%zz""#
        );
        assert_eq!(
            Form::parse("a=1;b=2", None).unwrap_err().0,
            "invalid semicolon separator in query"
        );
        assert!(parse_bool("yes").is_err());
        assert!(parse_uint("-1").is_err());
        assert!(parse_uint("+1").is_err());
        assert_eq!(
            Form::parse("v=a+b%2Bc", None).unwrap().get("v"),
            Some("a b+c")
        );
    }

    proptest! {
        #[test]
        fn never_panics(q in ".{0,64}", b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Form::parse(&q, Some(&b));
        }
    }
}
