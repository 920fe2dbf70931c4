//! A YAML document as a tree of nodes that remember their line, read the way
//! coreos-cloudinit's YAML 1.1 parser read it.
//!
//! The parser (`yaml-rust2`, YAML 1.2) only tokenises; this module keeps every scalar's
//! raw text, its style (plain or quoted) and its tag, so the typed decoder can resolve
//! scalars by YAML 1.1 rules for the field they land in: a plain `off` is a bool for a
//! bool field and the string `"off"` for a string field (as the coreos/yaml fork did),
//! and a plain `0644` stays `"0644"` for `permissions`. Aliases are expanded with a node
//! budget; YAML 1.1 merge keys (`<<`) are applied.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// The most nodes one document may expand to (aliases included): bounds memory on
/// "billion laughs" inputs while leaving real configs (hundreds of nodes) far below it.
pub const MAX_NODES: usize = 200_000;

/// A node and the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub value: Value,
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key: its text as written and its line.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub line: usize,
}

/// A scalar as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub text: String,
    /// Plain (unquoted, not a block scalar): only plain scalars resolve to bool/int/null.
    pub plain: bool,
    /// The tag suffix for `!!x` tags (`binary`, `str`, …), or the whole tag otherwise.
    pub tag: Option<String>,
}

/// A YAML 1.1 scalar resolved without a target type (what go-yaml's "weak" parse saw).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    Null,
    Bool(bool),
    Int,
    Float,
    Str,
    Binary,
}

/// A syntax error with the line it was found on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

impl Scalar {
    /// Resolves the scalar by YAML 1.1 rules (go-yaml v1's resolve table).
    pub fn resolve(&self) -> Resolved {
        match self.tag.as_deref() {
            Some("binary") => return Resolved::Binary,
            Some("str") => return Resolved::Str,
            Some("bool") => {
                return match bool_value(&self.text) {
                    Some(b) => Resolved::Bool(b),
                    None => Resolved::Str,
                };
            }
            Some("int") if is_int(&self.text) => return Resolved::Int,
            Some("float") if is_float(&self.text) || is_int(&self.text) => {
                return Resolved::Float;
            }
            Some("null") => return Resolved::Null,
            _ => {}
        }
        if !self.plain {
            return Resolved::Str;
        }
        let t = self.text.as_str();
        if matches!(t, "" | "~" | "null" | "Null" | "NULL") {
            Resolved::Null
        } else if let Some(b) = bool_value(t) {
            Resolved::Bool(b)
        } else if is_int(t) {
            Resolved::Int
        } else if is_float(t) {
            Resolved::Float
        } else {
            Resolved::Str
        }
    }
}

/// YAML 1.1 booleans, as coreos-cloudinit's parser accepted them.
pub fn bool_value(t: &str) -> Option<bool> {
    match t {
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            Some(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            Some(false)
        }
        _ => None,
    }
}

/// YAML 1.1 integers: decimal, `0` octal, `0x` hex, `0b` binary, `_` separators.
pub fn is_int(t: &str) -> bool {
    let t = t.strip_prefix(['-', '+']).unwrap_or(t);
    let digits = |s: &str, ok: fn(char) -> bool| {
        !s.is_empty() && s.chars().all(|c| c == '_' || ok(c)) && s.chars().any(ok)
    };
    if let Some(h) = t.strip_prefix("0x") {
        digits(h, |c| c.is_ascii_hexdigit())
    } else if let Some(b) = t.strip_prefix("0b") {
        digits(b, |c| c == '0' || c == '1')
    } else if t.len() > 1 && t.starts_with('0') {
        digits(&t[1..], |c| ('0'..='7').contains(&c))
    } else {
        digits(t, |c| c.is_ascii_digit()) && !t.starts_with('_')
    }
}

/// YAML 1.1 floats: `1.5`, `.5`, `1e3` forms, `.inf`, `.nan`.
pub fn is_float(t: &str) -> bool {
    let u = t.strip_prefix(['-', '+']).unwrap_or(t);
    if matches!(u, ".inf" | ".Inf" | ".INF") || matches!(t, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let (mantissa, exp) = match u.find(['e', 'E']) {
        Some(i) => (&u[..i], Some(&u[i + 1..])),
        None => (u, None),
    };
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    let mut parts = mantissa.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    let int_ok = int.chars().all(|c| c.is_ascii_digit() || c == '_');
    let frac_ok = frac.is_some_and(|f| f.chars().all(|c| c.is_ascii_digit()));
    exp_ok && int_ok && frac_ok && (!int.is_empty() || frac.is_some_and(|f| !f.is_empty()))
}

impl Node {
    /// The mapping's entries, if this is a mapping.
    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// How go-yaml would have typed this node when reading into `interface{}`.
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Seq(_) => "sequence",
            Value::Map(_) => "mapping",
            Value::Scalar(s) => match s.resolve() {
                Resolved::Null => "null",
                Resolved::Bool(_) => "bool",
                Resolved::Int => "int",
                Resolved::Float => "float",
                Resolved::Str | Resolved::Binary => "string",
            },
        }
    }
}

/// Parses one YAML document. An empty document (only comments) is an empty mapping.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    // libyaml (and so coreos-cloudinit) rejects a tab that starts a line; yaml-rust2
    // accepts some of those as YAML 1.2 whitespace.
    if let Some(i) = text.split('\n').position(|l| l.starts_with('\t')) {
        return Err(SyntaxError {
            line: i + 1,
            message: "found character that cannot start any token".into(),
        });
    }
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, false) {
        let lines = text.split('\n').count().max(1);
        return Err(SyntaxError {
            line: e.marker().line().clamp(1, lines),
            message: libyaml_message(e.info()),
        });
    }
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.root.unwrap_or(Node {
        line: 1,
        value: Value::Map(Vec::new()),
    }))
}

/// libyaml's wording for the errors coreos-cloudinit users saw most.
fn libyaml_message(info: &str) -> String {
    if info.starts_with("simple key expect") {
        "could not find expected ':'".into()
    } else if info.contains("tab") {
        "found character that cannot start any token".into()
    } else {
        info.to_string()
    }
}

#[derive(Debug)]
enum Frame {
    Seq(Node, usize),
    /// A mapping under construction, the key waiting for its value and the `<<` merges.
    Map(Node, usize, Option<Key>, Vec<Node>),
}

#[derive(Debug, Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: std::collections::HashMap<usize, Node>,
    root: Option<Node>,
    nodes: usize,
    error: Option<SyntaxError>,
    done: bool,
}

fn tag_name(tag: Option<Tag>) -> Option<String> {
    tag.map(|t| {
        if t.handle == "!!" || t.handle == "tag:yaml.org,2002:" {
            t.suffix
        } else {
            format!("{}{}", t.handle, t.suffix)
        }
    })
}

fn count(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        Value::Map(entries) => 1 + entries.iter().map(|(_, v)| 1 + count(v)).sum::<usize>(),
        _ => 1,
    }
}

impl Builder {
    fn fail(&mut self, line: usize, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(SyntaxError {
                line,
                message: message.into(),
            });
        }
    }

    /// Places a finished node into its parent (or as the root).
    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq(seq, _)) => {
                if let Value::Seq(items) = &mut seq.value {
                    items.push(node);
                }
            }
            Some(Frame::Map(map, _, pending, merges)) => match pending.take() {
                None => {
                    let name = match &node.value {
                        Value::Scalar(s) => s.text.clone(),
                        Value::Null => String::new(),
                        _ => {
                            let line = node.line;
                            self.fail(line, "mapping keys must be scalars");
                            return;
                        }
                    };
                    *pending = Some(Key {
                        name,
                        line: node.line,
                    });
                }
                Some(key) => {
                    if key.name == "<<" && matches!(node.value, Value::Map(_) | Value::Seq(_)) {
                        merges.push(node);
                    } else if let Value::Map(entries) = &mut map.value {
                        entries.push((key, node));
                    }
                }
            },
        }
    }
}

/// YAML 1.1 merge key: entries of the merged mapping(s) the mapping does not set yet.
fn merge_into(entries: &mut Vec<(Key, Node)>, merged: Node) {
    let sources = match merged.value {
        Value::Map(m) => vec![m],
        Value::Seq(items) => items
            .into_iter()
            .filter_map(|n| match n.value {
                Value::Map(m) => Some(m),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    for source in sources {
        for (k, v) in source {
            if !entries.iter().any(|(e, _)| e.name == k.name) {
                entries.push((k, v));
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() || self.done {
            return;
        }
        let line = mark.line().max(1);
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            self.fail(line, "document has too many nodes");
            return;
        }
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let plain = matches!(style, TScalarStyle::Plain);
                let tag = tag_name(tag);
                let value = if plain && tag.is_none() && matches!(text.as_str(), "" | "~")
                    || plain && tag.is_none() && matches!(text.as_str(), "null" | "Null" | "NULL")
                {
                    Value::Null
                } else {
                    Value::Scalar(Scalar { text, plain, tag })
                };
                self.finish(Node { line, value }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(
                Node {
                    line,
                    value: Value::Seq(Vec::new()),
                },
                anchor,
            )),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map(
                Node {
                    line,
                    value: Value::Map(Vec::new()),
                },
                anchor,
                None,
                Vec::new(),
            )),
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq(node, anchor)) => self.finish(node, anchor),
                Some(Frame::Map(mut node, anchor, _, merges)) => {
                    if let Value::Map(entries) = &mut node.value {
                        for merged in merges {
                            merge_into(entries, merged);
                        }
                    }
                    self.finish(node, anchor)
                }
                None => self.fail(line, "unbalanced collection end"),
            },
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(mut node) => {
                    self.nodes += count(&node);
                    if self.nodes > MAX_NODES {
                        self.fail(line, "document has too many nodes");
                        return;
                    }
                    node.line = line;
                    self.finish(node, 0);
                }
                None => self.fail(line, "unknown anchor"),
            },
            Event::DocumentEnd => self.done = self.root.is_some(),
            Event::StreamStart | Event::StreamEnd | Event::DocumentStart | Event::Nothing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(text: &str) -> Scalar {
        Scalar {
            text: text.into(),
            plain: true,
            tag: None,
        }
    }

    #[test]
    fn yaml_1_1_scalars() {
        for t in ["yes", "No", "on", "OFF", "y", "true"] {
            assert!(matches!(scalar(t).resolve(), Resolved::Bool(_)), "{t}");
        }
        for t in ["0644", "644", "0x1F", "-3", "1_000", "0b101"] {
            assert_eq!(scalar(t).resolve(), Resolved::Int, "{t}");
        }
        for t in ["1.5", ".5", "1.0e+3", "-.inf"] {
            assert_eq!(scalar(t).resolve(), Resolved::Float, "{t}");
        }
        for t in ["0.5.0h", "0800", "hello", "1h", "etcd-lock", "1e3"] {
            assert_eq!(scalar(t).resolve(), Resolved::Str, "{t}");
        }
        let quoted = Scalar {
            text: "yes".into(),
            plain: false,
            tag: None,
        };
        assert_eq!(quoted.resolve(), Resolved::Str);
    }

    #[test]
    fn lines_keys_and_aliases() {
        let doc = parse("a: &x\n  b: 1\nc: *x\nd:\n  - one\n  - two\n").unwrap();
        let map = doc.as_map().unwrap();
        assert_eq!(map[0].0.line, 1);
        assert_eq!(map[1].0.line, 3);
        assert_eq!(map[1].1.as_map().unwrap()[0].0.name, "b");
        let Value::Seq(items) = &map[2].1.value else {
            panic!("not a seq")
        };
        assert_eq!(items[1].line, 6);
    }

    #[test]
    fn merge_keys_and_errors() {
        let doc = parse("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n").unwrap();
        let m = doc.as_map().unwrap()[1].1.as_map().unwrap();
        let names: Vec<_> = m.iter().map(|(k, _)| k.name.as_str()).collect();
        assert_eq!(names, ["y", "x"]);
        let err = parse("#hello\na:\na").unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(err.message, "could not find expected ':'");
        let tab = parse("\t").unwrap_err();
        assert_eq!(
            (tab.line, tab.message.as_str()),
            (1, "found character that cannot start any token")
        );
        assert_eq!(
            parse("# only a comment\n").unwrap().as_map().unwrap().len(),
            0
        );
    }
}
