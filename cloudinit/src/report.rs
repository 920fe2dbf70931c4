//! The validation report: entries in coreos-cloudinit's form `line N: kind: message`,
//! kept in a deterministic order (by line, then by the order the checks found them) and
//! printable as text or as coreos-cloudinit's JSON (`{"kind","line","message"}`).

use serde::Serialize;
use std::fmt;

/// How serious an entry is. Only errors block `apply` and fail `validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Error,
    Warning,
    Info,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Error => "error",
            Kind::Warning => "warning",
            Kind::Info => "info",
        })
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub kind: Kind,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.kind, self.message)
    }
}

/// All findings for one user-data document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    entries: Vec<Entry>,
}

impl Report {
    pub fn error(&mut self, line: usize, message: impl Into<String>) {
        self.push(Kind::Error, line, message);
    }

    pub fn warning(&mut self, line: usize, message: impl Into<String>) {
        self.push(Kind::Warning, line, message);
    }

    pub fn info(&mut self, line: usize, message: impl Into<String>) {
        self.push(Kind::Info, line, message);
    }

    fn push(&mut self, kind: Kind, line: usize, message: impl Into<String>) {
        self.entries.push(Entry {
            kind,
            line,
            message: message.into(),
        });
    }

    /// Entries sorted by line; entries on one line keep the order they were found in.
    pub fn entries(&self) -> Vec<Entry> {
        let mut sorted = self.entries.clone();
        sorted.sort_by_key(|e| e.line);
        sorted
    }

    pub fn has_errors(&self) -> bool {
        self.entries.iter().any(|e| e.kind == Kind::Error)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends another report's entries (e.g. one MIME part's).
    pub fn extend(&mut self, other: Report) {
        self.entries.extend(other.entries);
    }

    /// One `line N: kind: message` line per entry, each ending in a newline.
    pub fn to_text(&self) -> String {
        self.entries().iter().map(|e| format!("{e}\n")).collect()
    }

    /// A JSON array of `{"kind","line","message"}` objects.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.entries()).unwrap_or_else(|_| "[]".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_are_ordered_by_line() {
        let mut r = Report::default();
        r.warning(3, "b");
        r.error(1, "a");
        r.info(3, "c");
        assert_eq!(
            r.to_text(),
            "line 1: error: a\nline 3: warning: b\nline 3: info: c\n"
        );
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v[0]["kind"], "error");
        assert_eq!(v[2]["message"], "c");
        assert!(r.has_errors());
    }
}
