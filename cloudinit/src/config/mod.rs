//! The typed cloud-config model and the one decoder that builds it.
//!
//! Flow: user-data text → [`crate::yaml::parse`] (nodes with lines) → [`decode`], which
//! walks the nodes against [`schema`] once, reporting unknown keys, deprecated keys,
//! wrong types and invalid values with their lines, and building [`CloudConfig`].
//! `validate` prints that report; `apply` uses the same [`CloudConfig`] and refuses to
//! run when the report has errors. Keys may be spelled with `-` or `_`.

pub mod schema;

use crate::report::Report;
use crate::yaml::{self, Node, Resolved, Value};
use base64::Engine;
use schema::{Field, Ty};
use std::io::Read;

/// A decoded `#cloud-config` document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CloudConfig {
    pub hostname: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub users: Vec<User>,
    pub write_files: Vec<WriteFile>,
    pub manage_etc_hosts: Option<String>,
    pub coreos: CoreOs,
}

/// The `coreos:` section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoreOs {
    pub etcd: EnvSection,
    pub etcd2: EnvSection,
    pub fleet: EnvSection,
    pub flannel: EnvSection,
    pub locksmith: EnvSection,
    pub update: EnvSection,
    pub oem: EnvSection,
    pub units: Vec<Unit>,
}

/// A daemon section: set values in schema order, each with its field and line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvSection {
    pub line: usize,
    pub values: Vec<EnvValue>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnvValue {
    pub key: &'static str,
    pub env: Option<&'static str>,
    pub value: String,
    pub line: usize,
}

impl EnvSection {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|v| v.key == key)
            .map(|v| v.value.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// A `users[]` entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct User {
    pub line: usize,
    pub name: String,
    pub passwd: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub gecos: Option<String>,
    pub homedir: Option<String>,
    pub no_create_home: bool,
    pub primary_group: Option<String>,
    pub groups: Vec<String>,
    pub no_user_group: bool,
    pub system: bool,
    pub no_log_init: bool,
    pub shell: Option<String>,
}

/// A `write_files[]` entry with its content already decoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteFile {
    pub line: usize,
    pub path: String,
    pub content: Vec<u8>,
    pub owner: Option<String>,
    /// Mode bits; 0644 when unset.
    pub permissions: u32,
}

/// A `coreos.units[]` entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Unit {
    pub line: usize,
    pub name: String,
    pub content: Option<String>,
    pub runtime: bool,
    pub enable: bool,
    pub mask: bool,
    pub command: Option<String>,
    pub drop_ins: Vec<DropIn>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DropIn {
    pub name: String,
    pub content: String,
}

/// Default mode of a written file (coreos-cloudinit's default).
pub const DEFAULT_FILE_MODE: u32 = 0o644;

// ---------------------------------------------------------------------------------
// Generic typed tree, produced by walking nodes against the schema.

#[derive(Debug, Clone)]
enum Typed {
    /// Text as written, plus decoded bytes for `!!binary`.
    Str(String, Option<Vec<u8>>),
    Bool(bool),
    Num(String),
    List(Vec<String>),
    Struct(Fields),
    Structs(Vec<Fields>),
}

#[derive(Debug, Clone, Default)]
struct Fields {
    line: usize,
    entries: Vec<(&'static Field, usize, Typed)>,
}

impl Fields {
    fn get(&self, key: &str) -> Option<(&Typed, usize)> {
        self.entries
            .iter()
            .find(|(f, _, _)| f.key == key)
            .map(|(_, line, t)| (t, *line))
    }

    fn line_of(&self, key: &str) -> usize {
        self.get(key).map(|(_, l)| l).unwrap_or(self.line)
    }

    fn str(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            (Typed::Str(s, _), _) => Some(s.clone()),
            (Typed::Num(s), _) => Some(s.clone()),
            (Typed::Bool(b), _) => Some(b.to_string()),
            _ => None,
        }
    }

    fn non_empty(&self, key: &str) -> Option<String> {
        self.str(key).filter(|s| !s.is_empty())
    }

    fn bytes(&self, key: &str) -> Option<Vec<u8>> {
        match self.get(key)? {
            (Typed::Str(_, Some(b)), _) => Some(b.clone()),
            (Typed::Str(s, None), _) => Some(s.clone().into_bytes()),
            _ => self.str(key).map(String::into_bytes),
        }
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some((Typed::Bool(true), _)))
    }

    fn list(&self, key: &str) -> Vec<String> {
        match self.get(key) {
            Some((Typed::List(l), _)) => l.clone(),
            _ => Vec::new(),
        }
    }

    fn strukt(&self, key: &str) -> Option<&Fields> {
        match self.get(key)? {
            (Typed::Struct(f), _) => Some(f),
            _ => None,
        }
    }

    fn structs(&self, key: &str) -> &[Fields] {
        match self.get(key) {
            Some((Typed::Structs(l), _)) => l,
            _ => &[],
        }
    }
}

struct Walker<'r> {
    report: &'r mut Report,
}

impl Walker<'_> {
    fn incorrect(&mut self, line: usize, name: &str, ty: &Ty) {
        self.report.error(
            line,
            format!("incorrect type for {name:?} (want {})", ty.human()),
        );
    }

    fn walk_struct(&mut self, node: &Node, fields: &'static [Field]) -> Fields {
        let mut out = Fields {
            line: node.line,
            entries: Vec::new(),
        };
        let Some(map) = node.as_map() else {
            return out;
        };
        for (key, value) in map {
            let name = key.name.replace('-', "_");
            let Some(field) = fields.iter().find(|f| f.key == name) else {
                self.report
                    .warning(key.line, format!("unrecognized key {name:?}"));
                continue;
            };
            if out.entries.iter().any(|(f, _, _)| f.key == field.key) {
                self.report.error(
                    key.line,
                    format!("duplicate key {name:?} (keys with - and _ are the same key)"),
                );
                continue;
            }
            if let Some(note) = field.deprecated {
                self.report
                    .warning(key.line, format!("deprecated key {name:?} ({note})"));
            }
            if let Some(typed) = self.walk_value(value, &field.ty, &name, key.line) {
                if let (Some(rule), Typed::Str(text, None)) = (field.valid, &typed)
                    && !text.is_empty()
                    && !rule(text)
                {
                    self.report.error(key.line, format!("invalid value {text}"));
                    continue;
                }
                out.entries.push((field, key.line, typed));
            }
        }
        // Schema order, so generated environment files list variables as upstream did.
        out.entries
            .sort_by_key(|(f, _, _)| fields.iter().position(|x| std::ptr::eq(x, *f)));
        out
    }

    fn walk_value(&mut self, node: &Node, ty: &Ty, name: &str, line: usize) -> Option<Typed> {
        let resolved = match &node.value {
            Value::Scalar(s) => Some((s, s.resolve())),
            _ => None,
        };
        match (ty, &node.value, resolved) {
            (Ty::Str, _, Some((s, Resolved::Binary))) => match decode_base64(&s.text) {
                Ok(bytes) => Some(Typed::Str(
                    String::from_utf8_lossy(&bytes).into_owned(),
                    Some(bytes),
                )),
                Err(_) => {
                    self.report
                        .error(line, format!("invalid !!binary value for {name:?}"));
                    None
                }
            },
            (Ty::Str, _, Some((s, r))) if r != Resolved::Null => {
                Some(Typed::Str(s.text.clone(), None))
            }
            (Ty::Bool, _, Some((_, Resolved::Bool(b)))) => Some(Typed::Bool(b)),
            (Ty::Int, _, Some((s, Resolved::Int))) => Some(Typed::Num(int_text(&s.text))),
            (Ty::Float, _, Some((s, Resolved::Int | Resolved::Float))) => {
                Some(Typed::Num(s.text.clone()))
            }
            (Ty::StrList, Value::Seq(items), _) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let item_name = format!("{name}[{i}]");
                    if let Some(Typed::Str(s, _)) =
                        self.walk_value(item, &Ty::Str, &item_name, item.line)
                    {
                        out.push(s);
                    }
                }
                Some(Typed::List(out))
            }
            (Ty::Struct(fields), Value::Map(_), _) => {
                Some(Typed::Struct(self.walk_struct(node, fields)))
            }
            (Ty::StructList(fields), Value::Seq(items), _) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    if item.as_map().is_some() {
                        out.push(self.walk_struct(item, fields));
                    } else {
                        self.incorrect(item.line, &format!("{name}[{i}]"), &Ty::Struct(fields));
                    }
                }
                Some(Typed::Structs(out))
            }
            _ => {
                self.incorrect(line, name, ty);
                None
            }
        }
    }
}

/// Decimal text of a YAML 1.1 integer (`0x10` → `16`, `010` → `8`), as Go prints it.
fn int_text(t: &str) -> String {
    let clean: String = t.chars().filter(|c| *c != '_').collect();
    let (neg, body) = match clean.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, clean.strip_prefix('+').unwrap_or(&clean)),
    };
    let parsed = if let Some(h) = body.strip_prefix("0x") {
        i128::from_str_radix(h, 16)
    } else if let Some(b) = body.strip_prefix("0b") {
        i128::from_str_radix(b, 2)
    } else if body.len() > 1 && body.starts_with('0') {
        i128::from_str_radix(&body[1..], 8)
    } else {
        body.parse()
    };
    match parsed {
        Ok(n) => (if neg { -n } else { n }).to_string(),
        Err(_) => t.to_string(),
    }
}

fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(clean)
}

/// Why `content` could not be decoded with its `encoding`.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid base64")]
    Base64(#[from] base64::DecodeError),
    #[error("invalid gzip")]
    Gzip(#[from] std::io::Error),
}

/// Decodes `write_files` content (coreos-cloudinit's `DecodeContent`).
pub fn decode_content(content: &[u8], encoding: &str) -> Result<Vec<u8>, DecodeError> {
    let gunzip = |data: &[u8]| -> Result<Vec<u8>, DecodeError> {
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
        Ok(out)
    };
    let b64 =
        |data: &[u8]| decode_base64(&String::from_utf8_lossy(data)).map_err(DecodeError::from);
    match encoding {
        "" => Ok(content.to_vec()),
        "base64" | "b64" => b64(content),
        "gz" | "gzip" => gunzip(content),
        "gz+base64" | "gzip+base64" | "gz+b64" | "gzip+b64" => gunzip(&b64(content)?),
        _ => Ok(content.to_vec()),
    }
}

/// Lexically cleans an absolute path (`/tmp/../usr/x` → `/usr/x`).
pub fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Unit types systemd knows; anything else cannot be a unit name.
const UNIT_SUFFIXES: &[&str] = &[
    ".service",
    ".socket",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".target",
    ".path",
    ".timer",
    ".slice",
    ".scope",
    ".network",
    ".netdev",
    ".link",
];

/// Whether `name` is a unit name Keel will place (no path separators, a known suffix).
pub fn is_unit_name(name: &str) -> bool {
    UNIT_SUFFIXES
        .iter()
        .any(|s| name.ends_with(s) && name.len() > s.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@'))
}

/// Parses and decodes one `#cloud-config` document (the header line included or not).
/// Returns the report and, when the YAML parsed, the config built from the valid parts.
pub fn decode(text: &str) -> (Report, Option<CloudConfig>) {
    let mut report = Report::default();
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            report.error(e.line, e.message);
            return (report, None);
        }
    };
    if root.as_map().is_none() {
        report.error(root.line, "incorrect type for \"\" (want struct)");
        return (report, None);
    }
    let fields = Walker {
        report: &mut report,
    }
    .walk_struct(&root, schema::ROOT);
    let config = build(&fields, &root, &mut report);
    (report, Some(config))
}

fn env_section(fields: Option<&Fields>) -> EnvSection {
    let Some(fields) = fields else {
        return EnvSection::default();
    };
    EnvSection {
        line: fields.line,
        values: fields
            .entries
            .iter()
            .filter_map(|(field, line, typed)| {
                let value = match typed {
                    Typed::Str(s, _) | Typed::Num(s) => s.clone(),
                    Typed::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some(EnvValue {
                    key: field.key,
                    env: field.env,
                    value,
                    line: *line,
                })
            })
            .collect(),
    }
}

fn build(root: &Fields, node: &Node, report: &mut Report) -> CloudConfig {
    let mut config = CloudConfig {
        hostname: root.non_empty("hostname"),
        ssh_authorized_keys: root.list("ssh_authorized_keys"),
        manage_etc_hosts: root.non_empty("manage_etc_hosts"),
        ..CloudConfig::default()
    };
    for u in root.structs("users") {
        let Some(name) = u.non_empty("name") else {
            report.error(u.line, "user has no \"name\"");
            continue;
        };
        config.users.push(User {
            line: u.line,
            name,
            passwd: u.non_empty("passwd"),
            ssh_authorized_keys: u.list("ssh_authorized_keys"),
            gecos: u.non_empty("gecos"),
            homedir: u.non_empty("homedir"),
            no_create_home: u.flag("no_create_home"),
            primary_group: u.non_empty("primary_group"),
            groups: u.list("groups"),
            no_user_group: u.flag("no_user_group"),
            system: u.flag("system"),
            no_log_init: u.flag("no_log_init"),
            shell: u.non_empty("shell"),
        });
    }
    for wf in root.structs("write_files") {
        let encoding = wf.str("encoding").unwrap_or_default();
        let raw = wf.bytes("content").unwrap_or_default();
        let content = match decode_content(&raw, &encoding) {
            Ok(c) => c,
            Err(_) => {
                report.error(
                    wf.line_of("content"),
                    format!("content cannot be decoded as {encoding:?}"),
                );
                Vec::new()
            }
        };
        let path = wf.non_empty("path");
        if let Some(p) = &path {
            let dir = clean_path(p);
            let dir = dir.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            if dir == "/usr" || dir.starts_with("/usr/") {
                report.error(
                    wf.line_of("path"),
                    "file cannot be written to a read-only filesystem",
                );
            }
            if !p.starts_with('/') {
                report.error(wf.line_of("path"), format!("path {p:?} is not absolute"));
            }
        } else {
            report.error(wf.line, "write_files entry has no \"path\"");
        }
        let permissions = wf
            .non_empty("permissions")
            .and_then(|p| u32::from_str_radix(&p, 8).ok())
            .unwrap_or(DEFAULT_FILE_MODE);
        config.write_files.push(WriteFile {
            line: wf.line,
            path: path.unwrap_or_default(),
            content,
            owner: wf.non_empty("owner"),
            permissions,
        });
    }
    let mut seen = std::collections::HashSet::new();
    for wf in &config.write_files {
        if !wf.path.is_empty() && !seen.insert(clean_path(&wf.path)) {
            report.warning(
                wf.line,
                format!(
                    "{:?} is written more than once; the last entry wins",
                    wf.path
                ),
            );
        }
    }
    if let Some(coreos) = root.strukt("coreos") {
        config.coreos = CoreOs {
            etcd: env_section(coreos.strukt("etcd")),
            etcd2: env_section(coreos.strukt("etcd2")),
            fleet: env_section(coreos.strukt("fleet")),
            flannel: env_section(coreos.strukt("flannel")),
            locksmith: env_section(coreos.strukt("locksmith")),
            update: env_section(coreos.strukt("update")),
            oem: env_section(coreos.strukt("oem")),
            units: Vec::new(),
        };
        for v in &config.coreos.etcd2.values {
            if let Some(env) = v.env
                && !schema::KEEL_STORE_ENV.contains(&env)
            {
                report.warning(
                    v.line,
                    format!(
                        "keel-store does not read {env}; {:?} is not passed on",
                        v.key
                    ),
                );
            }
        }
        if let Some((Typed::Str(url, _), line)) =
            coreos.strukt("etcd").and_then(|e| e.get("discovery"))
            && !is_request_uri(url)
        {
            report.warning(line, "discovery URL is not valid");
        }
        for u in coreos.structs("units") {
            let Some(name) = u.non_empty("name") else {
                report.error(u.line, "unit has no \"name\"");
                continue;
            };
            if !is_unit_name(&name) {
                report.error(u.line_of("name"), format!("invalid unit name {name:?}"));
            }
            let mut drop_ins = Vec::new();
            for d in u.structs("drop_ins") {
                match (d.non_empty("name"), d.str("content")) {
                    (None, _) => report.error(d.line, "drop-in has no \"name\""),
                    (Some(n), _) if n.contains('/') => {
                        report.error(d.line_of("name"), format!("invalid drop-in name {n:?}"))
                    }
                    (Some(n), content) => {
                        if !n.ends_with(".conf") {
                            report.warning(
                                d.line_of("name"),
                                format!(
                                    "drop-in {n:?} does not end in \".conf\"; systemd ignores it"
                                ),
                            );
                        }
                        drop_ins.push(DropIn {
                            name: n,
                            content: content.unwrap_or_default(),
                        });
                    }
                }
            }
            let unit = Unit {
                line: u.line,
                name,
                content: u.non_empty("content"),
                runtime: u.flag("runtime"),
                enable: u.flag("enable"),
                mask: u.flag("mask"),
                command: u.non_empty("command"),
                drop_ins,
            };
            if unit.mask && unit.enable {
                report.error(
                    u.line,
                    format!("unit {:?} cannot be both masked and enabled", unit.name),
                );
            }
            config.coreos.units.push(unit);
        }
    }
    // coreos-cloudinit's checkWriteFilesUnderCoreos: the structure check has already
    // reported the key as unrecognised; this adds the hint.
    if let Some((_, coreos)) = node
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.name == "coreos"))
        && let Some((key, _)) = coreos.as_map().and_then(|m| {
            m.iter()
                .find(|(k, _)| k.name.replace('-', "_") == "write_files")
        })
    {
        report.info(key.line, "write_files doesn't belong under coreos");
    }
    config
}

/// Go's `url.ParseRequestURI` acceptance, roughly: an absolute URL or an absolute path.
fn is_request_uri(s: &str) -> bool {
    if s.starts_with('/') {
        return true;
    }
    match s.split_once(':') {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}
