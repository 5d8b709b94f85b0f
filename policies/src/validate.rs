//! Validating a policy file: every problem at once, each with file, line, column,
//! field path, code and message.
//!
//! The file is read as a plain YAML value and checked field by field, so one run
//! reports all problems instead of stopping at the first (as deserializing would).
//! Only a file without errors is then deserialized into a [`PolicyDocument`].

use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::document::PolicyDocument;
use crate::locate::{Locations, index_path, key_path};
use crate::tool::{entry_problems, is_valid_tool_name};

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file (as given), or `<input>`.
    pub file: String,
    /// 1-based line; 0 when the position is unknown.
    pub line: usize,
    /// 1-based column; 0 when the position is unknown.
    pub column: usize,
    /// Field path, e.g. `spend_controls.caps[0].timezone`; empty for the whole file.
    pub path: String,
    /// Machine-readable code, e.g. `policy.unknown_timezone`.
    pub code: String,
    /// What is wrong and what is expected instead.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{} [{}]", self.message, self.code)
    }
}

/// The result of checking one policy file.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The document, when there are no errors.
    pub document: Option<PolicyDocument>,
    /// Problems that make the file invalid, in file order.
    pub errors: Vec<Diagnostic>,
    /// Problems that do not (a control for a tool the file does not list, ...).
    pub warnings: Vec<Diagnostic>,
}

impl Checked {
    /// Whether the file has no errors.
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A policy file refused, with every error found in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// Every error, in file order (at least one).
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        let file = self.errors.first().map_or("<input>", |d| d.file.as_str());
        write!(f, "{file}: {n} problem{}", if n == 1 { "" } else { "s" })?;
        for d in &self.errors {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

/// Checks a policy document written in YAML (or JSON) and collects every problem.
/// `file` names the source in diagnostics.
pub fn check_policy(text: &str, file: &str) -> Checked {
    let locations = Locations::of(text);
    let mut cx = Cx {
        file,
        locations: &locations,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let value: Value = match serde_yaml_ng::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            return Checked {
                document: None,
                errors: vec![Diagnostic {
                    file: file.to_owned(),
                    line,
                    column,
                    path: String::new(),
                    code: "policy.syntax".to_owned(),
                    message: syntax_message(&e.to_string()),
                }],
                warnings: Vec::new(),
            };
        }
    };
    document(&mut cx, &value);
    let mut errors = cx.errors;
    let mut warnings = cx.warnings;
    let document = if errors.is_empty() {
        match serde_json::from_value::<PolicyDocument>(value) {
            Ok(doc) => Some(doc),
            Err(e) => {
                // The checks above admit only what the types accept; a test feeds
                // mutated files through both to keep it so. Should they ever differ,
                // the file is still refused, with serde's message.
                errors.push(Diagnostic {
                    file: file.to_owned(),
                    line: 0,
                    column: 0,
                    path: String::new(),
                    code: "policy.invalid".to_owned(),
                    message: e.to_string(),
                });
                None
            }
        }
    } else {
        None
    };
    let by_position = |a: &Diagnostic, b: &Diagnostic| (a.line, a.column).cmp(&(b.line, b.column));
    errors.sort_by(by_position);
    warnings.sort_by(by_position);
    Checked {
        document,
        errors,
        warnings,
    }
}

/// Parses a policy document, refusing it whole with every error if it has any.
pub fn parse_policy(text: &str, file: &str) -> Result<PolicyDocument, PolicyError> {
    let checked = check_policy(text, file);
    match checked.document {
        Some(doc) => Ok(doc),
        None => Err(PolicyError {
            errors: checked.errors,
        }),
    }
}

/// Reads a policy file and checks it.
pub fn check_policy_file(path: &Path) -> Checked {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => check_policy(&text, &file),
        Err(e) => Checked {
            document: None,
            errors: vec![Diagnostic {
                file,
                line: 0,
                column: 0,
                path: String::new(),
                code: "policy.unreadable".to_owned(),
                message: format!("cannot read the file: {e}"),
            }],
            warnings: Vec::new(),
        },
    }
}

/// Reads and parses a policy file, refusing it whole with every error if it has any.
pub fn read_policy(path: &Path) -> Result<PolicyDocument, PolicyError> {
    let checked = check_policy_file(path);
    match checked.document {
        Some(doc) => Ok(doc),
        None => Err(PolicyError {
            errors: checked.errors,
        }),
    }
}

struct Cx<'a> {
    file: &'a str,
    locations: &'a Locations,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Cx<'_> {
    fn diagnostic(&self, path: &str, code: &str, message: String) -> Diagnostic {
        let (line, column) = self.locations.find(path);
        Diagnostic {
            file: self.file.to_owned(),
            line,
            column,
            path: path.to_owned(),
            code: code.to_owned(),
            message,
        }
    }

    fn error(&mut self, path: &str, code: &str, message: impl Into<String>) {
        let d = self.diagnostic(path, code, message.into());
        self.errors.push(d);
    }

    fn warn(&mut self, path: &str, code: &str, message: impl Into<String>) {
        let d = self.diagnostic(path, code, message.into());
        self.warnings.push(d);
    }

    fn wrong_type(&mut self, path: &str, expected: &str, found: &Value) {
        self.error(
            path,
            "policy.invalid_type",
            format!("expected {expected}, found {}", describe(found)),
        );
    }

    /// `v` as a mapping with only `known` keys and every `required` one; reports
    /// each unknown key and each missing field.
    fn section<'v>(
        &mut self,
        path: &str,
        v: &'v Value,
        known: &[&str],
        required: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Value::Object(map) = v else {
            self.wrong_type(path, "a mapping", v);
            return None;
        };
        // A misspelt required key is one problem (the typo), not two.
        let mut meant: Vec<&str> = Vec::new();
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                let nearest = closest(key, known);
                meant.extend(nearest);
                let hint = nearest
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                self.error(
                    &key_path(path, key),
                    "policy.unknown_key",
                    format!(
                        "unknown key `{key}`{hint}; {} takes: {}",
                        if path.is_empty() { "a policy" } else { path },
                        known.join(", ")
                    ),
                );
            }
        }
        for key in required {
            if !map.contains_key(*key) && !meant.contains(key) {
                self.error(
                    &key_path(path, key),
                    "policy.missing_field",
                    format!("missing required field `{key}`"),
                );
            }
        }
        Some(map)
    }

    /// An optional field: absent and `null` both mean "not set".
    fn opt<'v>(map: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
        map.get(key).filter(|v| !v.is_null())
    }

    fn bool(&mut self, path: &str, v: &Value) -> Option<bool> {
        let b = v.as_bool();
        if b.is_none() {
            self.wrong_type(path, "true or false", v);
        }
        b
    }

    fn u64(&mut self, path: &str, v: &Value) -> Option<u64> {
        let n = v.as_u64();
        if n.is_none() {
            self.wrong_type(path, "a whole number of at least 0", v);
        }
        n
    }

    fn u32(&mut self, path: &str, v: &Value) -> Option<u32> {
        match v.as_u64().map(u32::try_from) {
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => {
                self.error(
                    path,
                    "policy.out_of_range",
                    format!("{v} is too large (at most {})", u32::MAX),
                );
                None
            }
            None => {
                self.wrong_type(path, "a whole number of at least 0", v);
                None
            }
        }
    }

    fn number(&mut self, path: &str, v: &Value) -> Option<f64> {
        let n = v.as_f64();
        if n.is_none() {
            self.wrong_type(path, "a number", v);
        }
        n
    }

    fn str<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v str> {
        let s = v.as_str();
        if s.is_none() {
            self.wrong_type(path, "a string", v);
        }
        s
    }

    /// A `sha256:<64 lowercase hex>` digest.
    fn digest<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v str> {
        let d = self.str(path, v)?;
        if !is_sha256_digest(d) {
            self.error(
                path,
                "policy.invalid_digest",
                format!("`{d}` is not `sha256:` followed by 64 lowercase hex digits"),
            );
        }
        Some(d)
    }

    fn list<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v Vec<Value>> {
        let l = v.as_array();
        if l.is_none() {
            self.wrong_type(path, "a list", v);
        }
        l
    }

    /// A list of strings; each item that is not one is reported.
    fn strings<'v>(&mut self, path: &str, v: &'v Value) -> Vec<(String, &'v str)> {
        let Some(items) = self.list(path, v) else {
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let p = index_path(path, i);
                self.str(&p, item).map(|s| (p, s))
            })
            .collect()
    }

    /// An optional field (absent or null is fine) checked by `f`.
    fn optional<'v, T>(
        &mut self,
        map: &'v Map<String, Value>,
        path: &str,
        key: &str,
        f: impl FnOnce(&mut Self, &str, &'v Value) -> Option<T>,
    ) -> Option<T> {
        let v = Self::opt(map, key)?;
        f(self, &key_path(path, key), v)
    }

    /// A required field: absence is reported by [`Cx::section`], `null` here.
    fn required<'v, T>(
        &mut self,
        map: &'v Map<String, Value>,
        path: &str,
        key: &str,
        expected: &str,
        f: impl FnOnce(&mut Self, &str, &'v Value) -> Option<T>,
    ) -> Option<T> {
        let v = map.get(key)?;
        let p = key_path(path, key);
        if v.is_null() {
            self.wrong_type(&p, expected, v);
            return None;
        }
        f(self, &p, v)
    }

    /// A field with a default whose type does not accept `null` (a map or list).
    fn defaulted<'v, T>(
        &mut self,
        map: &'v Map<String, Value>,
        path: &str,
        key: &str,
        f: impl FnOnce(&mut Self, &str, &'v Value) -> Option<T>,
    ) -> Option<T> {
        let v = map.get(key)?;
        f(self, &key_path(path, key), v)
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing (null)".to_owned(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.chars().count() > 40 => "a string".to_owned(),
        Value::String(s) => format!("the string \"{s}\""),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a mapping".to_owned(),
    }
}

/// A YAML parser's message in the house format: the position is the diagnostic's
/// own, so `at line L column C` is dropped from the message, and the context the
/// parser names is given as `line:column`.
///
/// `did not find expected ',' or '}' at line 5 column 1, while parsing a flow
/// mapping at line 4 column 6` → `did not find expected ',' or '}' (in the flow
/// mapping that starts at 4:6)`.
fn syntax_message(raw: &str) -> String {
    fn strip_position(s: &str) -> (String, Option<String>) {
        match s.rfind(" at line ") {
            Some(i) => {
                let position = s[i + " at line ".len()..].replacen(" column ", ":", 1);
                (s[..i].to_owned(), Some(position))
            }
            None => (s.to_owned(), None),
        }
    }
    let (head, context) = match raw.split_once(", while ") {
        Some((head, context)) => (head, Some(context)),
        None => (raw, None),
    };
    let (head, _) = strip_position(head);
    match context.map(strip_position) {
        Some((what, Some(at))) => {
            let what = what
                .trim_start_matches("parsing ")
                .trim_start_matches("scanning ")
                .trim_start_matches("a ")
                .trim_start_matches("an ");
            format!("{head} (in the {what} that starts at {at})")
        }
        Some((what, None)) => format!("{head} (while {what})"),
        None => head,
    }
}

/// The known key nearest to a misspelt one, when it is close enough to be a typo.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn is_policy_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    matches!(bytes.split_first(), Some((first, rest))
        if first.is_ascii_lowercase()
            && rest.len() <= 63
            && rest.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-')))
}

fn is_org_id(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("org_") else {
        return false;
    };
    let bytes = rest.as_bytes();
    matches!(bytes.split_first(), Some((first, tail))
        if first.is_ascii_lowercase()
            && tail.len() <= 57
            && tail.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_'))
}

fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `HH:MM` on a 24-hour clock → minutes after midnight.
fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// The IANA timezone nearest to a misspelt one (ignoring case), when close enough.
fn nearest_timezone(name: &str) -> Option<String> {
    let wanted = name.to_ascii_lowercase();
    jiff::tz::db()
        .available()
        .map(|n| n.as_str().to_owned())
        .map(|n| (edit_distance(&wanted, &n.to_ascii_lowercase()), n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 4))
        .min()
        .map(|(_, n)| n)
}

/// Whether `name` is a timezone of the IANA database (bundled, so every machine agrees).
pub(crate) fn is_iana_timezone(name: &str) -> bool {
    jiff::tz::TimeZone::get(name).is_ok()
}

const TOP: &[&str] = &[
    "$schema",
    "version",
    "name",
    "default_deny",
    "tools",
    "intent",
    "adapter",
    "extends",
    "overrides",
    "spend_controls",
];

fn document(cx: &mut Cx<'_>, v: &Value) {
    let Some(map) = cx.section("", v, TOP, &["version", "name"]) else {
        return;
    };
    cx.optional(map, "", "$schema", Cx::str);
    let version = cx.required(map, "", "version", "1 or 2", |cx, p, v| match v.as_u64() {
        Some(n @ (1 | 2)) => Some(n),
        _ => {
            cx.error(
                p,
                "policy.unsupported_version",
                format!("version must be 1 or 2, found {}", describe(v)),
            );
            None
        }
    });
    cx.required(map, "", "name", "a policy name", |cx, p, v| {
        let name = cx.str(p, v)?;
        if !is_policy_name(name) {
            cx.error(
                p,
                "policy.invalid_name",
                format!(
                    "`{name}` must match ^[a-z][a-z0-9_-]{{0,63}}$ (lowercase letter first, \
                     then lowercase letters, digits, `_` or `-`)"
                ),
            );
        }
        Some(())
    });
    cx.optional(map, "", "default_deny", Cx::bool);
    let tools = cx.defaulted(map, "", "tools", |cx, p, v| Some(tools(cx, p, v)));
    let listed: Vec<String> = tools.unwrap_or_default();
    cx.optional(map, "", "intent", |cx, p, v| {
        intent(cx, p, v, &listed);
        Some(())
    });
    cx.optional(map, "", "adapter", |cx, p, v| {
        adapter(cx, p, v);
        Some(())
    });
    for key in ["extends", "overrides"] {
        if version == Some(1) && Cx::opt(map, key).is_some() {
            cx.error(
                key,
                "policy.requires_version_2",
                format!("`{key}` is a version 2 key; set `version: 2` to extend an org base"),
            );
        }
    }
    if Cx::opt(map, "overrides").is_some() && Cx::opt(map, "extends").is_none() {
        cx.error(
            "overrides",
            "policy.overrides_without_extends",
            "`overrides` changes an org base: name it under `extends`",
        );
    }
    cx.optional(map, "", "extends", |cx, p, v| {
        extends(cx, p, v);
        Some(())
    });
    cx.optional(map, "", "overrides", |cx, p, v| {
        overrides(cx, p, v);
        Some(())
    });
    cx.optional(map, "", "spend_controls", |cx, p, v| {
        spend_controls(cx, p, v, &listed);
        Some(())
    });
}

const TOOL: &[&str] = &[
    "side_effecting",
    "max_spend_cents",
    "spend_from_args",
    "evidence_preset",
    "vendor_pack",
    "operation",
];

fn tool_name(cx: &mut Cx<'_>, path: &str, name: &str) {
    if !is_valid_tool_name(name) {
        cx.error(
            path,
            "policy.invalid_tool_name",
            format!(
                "tool name `{name}` must match ^[a-z][a-z0-9_.-]{{0,127}}$ (lowercase letter \
                 first, then lowercase letters, digits, `_`, `.` or `-`)"
            ),
        );
    }
}

/// `tools:`; returns the names listed.
fn tools(cx: &mut Cx<'_>, path: &str, v: &Value) -> Vec<String> {
    let Value::Object(map) = v else {
        cx.wrong_type(path, "a mapping of tool names to entries", v);
        return Vec::new();
    };
    for (name, entry) in map {
        let p = key_path(path, name);
        tool_name(cx, &p, name);
        tool_entry(cx, &p, entry, TOOL, &["side_effecting"]);
    }
    map.keys().cloned().collect()
}

/// A tool entry (`tools.<name>`) or an override of one (`overrides.tools.<name>`).
fn tool_entry(cx: &mut Cx<'_>, path: &str, v: &Value, known: &[&str], required: &[&str]) {
    let Some(map) = cx.section(path, v, known, required) else {
        return;
    };
    let side_effecting = if required.contains(&"side_effecting") {
        cx.required(map, path, "side_effecting", "true or false", Cx::bool)
    } else {
        cx.optional(map, path, "side_effecting", Cx::bool)
    };
    let max = cx.optional(map, path, "max_spend_cents", Cx::u64);
    let from_args = cx.optional(map, path, "spend_from_args", Cx::str);
    let preset = cx.optional(map, path, "evidence_preset", Cx::str);
    cx.optional(map, path, "vendor_pack", Cx::str);
    if let Some(op) = cx.optional(map, path, "operation", Cx::str)
        && op.trim().is_empty()
    {
        cx.error(
            &key_path(path, "operation"),
            "policy.empty_value",
            "operation must not be empty; leave it out to use the tool name",
        );
    }
    // An override is judged against the org entry it changes, by the merge (which
    // reports a missing preset or both spend fields with its own codes); here only
    // its own syntax is checked.
    let is_override = !required.contains(&"side_effecting");
    let side_effecting = side_effecting.unwrap_or(false);
    for (field, code, message) in entry_problems(side_effecting, max.is_some(), from_args, preset) {
        if !is_override || code == "policy.invalid_spend_path" {
            cx.error(&key_path(path, field), code, message);
        }
    }
}

fn intent(cx: &mut Cx<'_>, path: &str, v: &Value, listed: &[String]) {
    let Some(map) = cx.section(path, v, &["policy_binding", "budget", "allowed_tools"], &[]) else {
        return;
    };
    cx.optional(map, path, "policy_binding", |cx, p, v| {
        let b = cx.section(
            p,
            v,
            &["template_id", "version_seq", "head_digest"],
            &["template_id"],
        )?;
        cx.required(b, p, "template_id", "a string", Cx::str);
        cx.optional(b, p, "version_seq", Cx::u64);
        cx.optional(b, p, "head_digest", Cx::digest);
        Some(())
    });
    cx.optional(map, path, "budget", |cx, p, v| {
        let b = cx.section(p, v, &["currency", "max_spend_usd"], &[])?;
        if let Some(c) = cx.optional(b, p, "currency", Cx::str)
            && !(c.len() == 3 && c.bytes().all(|b| b.is_ascii_lowercase()))
        {
            cx.error(
                &key_path(p, "currency"),
                "policy.invalid_currency",
                format!("`{c}` is not a currency code of three lowercase letters, e.g. `usd`"),
            );
        }
        if let Some(usd) = cx.optional(b, p, "max_spend_usd", Cx::number)
            && !(usd.is_finite() && usd >= 0.0)
        {
            cx.error(
                &key_path(p, "max_spend_usd"),
                "policy.out_of_range",
                format!("a budget is a finite amount of at least 0, not {usd}"),
            );
        }
        Some(())
    });
    cx.optional(map, path, "allowed_tools", |cx, p, v| {
        for (item, name) in cx.strings(p, v) {
            tool_name(cx, &item, name);
            if !listed.is_empty() && !listed.iter().any(|t| t == name) {
                cx.warn(
                    &item,
                    "policy.allowed_tool_not_listed",
                    format!("`{name}` is not among this file's tools"),
                );
            }
        }
        Some(())
    });
}

fn adapter(cx: &mut Cx<'_>, path: &str, v: &Value) {
    if let Some(map) = cx.section(path, v, &["deny_provider_executed_tools"], &[]) {
        cx.optional(map, path, "deny_provider_executed_tools", Cx::bool);
    }
}

fn extends(cx: &mut Cx<'_>, path: &str, v: &Value) {
    let Some(map) = cx.section(
        path,
        v,
        &["org_policy_id", "org_id", "base_digest", "base_policy"],
        &["org_policy_id", "org_id"],
    ) else {
        return;
    };
    if let Some(id) = cx.required(map, path, "org_policy_id", "a policy name", Cx::str)
        && !is_policy_name(id)
    {
        cx.error(
            &key_path(path, "org_policy_id"),
            "policy.invalid_name",
            format!("`{id}` is not a policy name (^[a-z][a-z0-9_-]{{0,63}}$)"),
        );
    }
    if let Some(org) = cx.required(map, path, "org_id", "an org id", Cx::str)
        && !is_org_id(org)
    {
        cx.error(
            &key_path(path, "org_id"),
            "policy.invalid_org_id",
            format!("`{org}` must match ^org_[a-z][a-z0-9_]{{0,57}}$, e.g. `org_acme_corp`"),
        );
    }
    cx.optional(map, path, "base_digest", Cx::digest);
    cx.optional(map, path, "base_policy", Cx::str);
}

fn overrides(cx: &mut Cx<'_>, path: &str, v: &Value) {
    let Some(map) = cx.section(
        path,
        v,
        &["default_deny", "tools", "intent", "adapter"],
        &[],
    ) else {
        return;
    };
    cx.optional(map, path, "default_deny", Cx::bool);
    cx.optional(map, path, "tools", |cx, p, v| {
        let Value::Object(tools) = v else {
            cx.wrong_type(p, "a mapping of org tool names to changes", v);
            return None;
        };
        for (name, entry) in tools {
            let tp = key_path(p, name);
            tool_name(cx, &tp, name);
            tool_entry(cx, &tp, entry, TOOL, &[]);
        }
        Some(())
    });
    cx.optional(map, path, "intent", |cx, p, v| {
        intent(cx, p, v, &[]);
        Some(())
    });
    cx.optional(map, path, "adapter", |cx, p, v| {
        adapter(cx, p, v);
        Some(())
    });
}

const SPEND_CONTROLS: &[&str] = &[
    "tools", "caps", "gates", "schedule", "vendors", "approval", "phases", "data",
];

fn spend_controls(cx: &mut Cx<'_>, path: &str, v: &Value, listed: &[String]) {
    let Some(map) = cx.section(path, v, SPEND_CONTROLS, &[]) else {
        return;
    };
    cx.defaulted(map, path, "tools", |cx, p, v| {
        let Value::Object(tools) = v else {
            cx.wrong_type(p, "a mapping of tool names to controls", v);
            return None;
        };
        for (name, entry) in tools {
            let tp = key_path(p, name);
            tool_name(cx, &tp, name);
            if !listed.is_empty() && !listed.iter().any(|t| t == name) {
                cx.warn(
                    &tp,
                    "policy.controls_for_unlisted_tool",
                    format!("`{name}` is not among this file's tools; an org base may list it"),
                );
            }
            tool_controls(cx, &tp, entry);
        }
        Some(())
    });
    cx.defaulted(map, path, "caps", |cx, p, v| {
        for (i, cap) in cx.list(p, v)?.iter().enumerate() {
            rolling_cap(cx, &index_path(p, i), cap);
        }
        Some(())
    });
    cx.optional(map, path, "gates", |cx, p, v| {
        gates(cx, p, v);
        Some(())
    });
    cx.optional(map, path, "schedule", |cx, p, v| {
        let s = cx.section(p, v, &["active_hours"], &["active_hours"])?;
        cx.required(s, p, "active_hours", "a mapping", |cx, p, v| {
            active_hours(cx, p, v);
            Some(())
        })
    });
    cx.optional(map, path, "vendors", |cx, p, v| {
        let s = cx.section(p, v, &["allow"], &["allow"])?;
        cx.required(s, p, "allow", "a list of vendor ids", |cx, p, v| {
            for (item, id) in cx.strings(p, v) {
                if id.trim().is_empty() {
                    cx.error(&item, "policy.empty_value", "a vendor id must not be empty");
                }
            }
            Some(())
        })
    });
    cx.optional(map, path, "approval", |cx, p, v| {
        let s = cx.section(p, v, &["quorum", "timeout_seconds"], &[])?;
        if cx.defaulted(s, p, "quorum", Cx::u32) == Some(0) {
            cx.error(
                &key_path(p, "quorum"),
                "policy.out_of_range",
                "quorum must be at least 1 operator",
            );
        }
        if cx.optional(s, p, "timeout_seconds", Cx::u64) == Some(0) {
            cx.error(
                &key_path(p, "timeout_seconds"),
                "policy.out_of_range",
                "timeout_seconds must be at least 1",
            );
        }
        Some(())
    });
    cx.optional(map, path, "phases", |cx, p, v| {
        let s = cx.section(p, v, &["payment_phase"], &["payment_phase"])?;
        let phase = cx.required(s, p, "payment_phase", "a phase", Cx::str)?;
        if !matches!(phase, "EXPLORE" | "DECIDE" | "COMMIT") {
            cx.error(
                &key_path(p, "payment_phase"),
                "policy.invalid_value",
                format!("payment_phase `{phase}` is not one of EXPLORE, DECIDE, COMMIT"),
            );
        }
        Some(())
    });
    cx.optional(map, path, "data", |cx, p, v| {
        let s = cx.section(p, v, &["sensitive_patterns"], &[])?;
        cx.defaulted(s, p, "sensitive_patterns", |cx, p, v| {
            for (item, pattern) in cx.strings(p, v) {
                if let Err(e) = regex::Regex::new(pattern) {
                    let detail = e.to_string();
                    let last = detail.lines().last().unwrap_or_default().trim().to_owned();
                    cx.error(
                        &item,
                        "policy.invalid_pattern",
                        format!("`{pattern}` is not a valid regular expression: {last}"),
                    );
                }
            }
            Some(())
        })
    });
}

fn tool_controls(cx: &mut Cx<'_>, path: &str, v: &Value) {
    let Some(map) = cx.section(
        path,
        v,
        &[
            "max_per_call_cents",
            "approval_threshold_cents",
            "limit_per_hour",
            "allow",
        ],
        &[],
    ) else {
        return;
    };
    let cap = cx.optional(map, path, "max_per_call_cents", Cx::u64);
    let threshold = cx.optional(map, path, "approval_threshold_cents", Cx::u64);
    cx.optional(map, path, "limit_per_hour", Cx::u32);
    cx.optional(map, path, "allow", Cx::bool);
    if let (Some(cap), Some(threshold)) = (cap, threshold)
        && threshold >= cap
    {
        cx.warn(
            &key_path(path, "approval_threshold_cents"),
            "policy.threshold_not_below_cap",
            format!(
                "approval threshold {threshold} is not below the per-call cap {cap}: \
                 no call can be held for approval"
            ),
        );
    }
}

fn rolling_cap(cx: &mut Cx<'_>, path: &str, v: &Value) {
    let Some(map) = cx.section(
        path,
        v,
        &["scope", "key", "window", "limit_cents", "timezone"],
        &["scope", "window", "limit_cents"],
    ) else {
        return;
    };
    cx.required(
        map,
        path,
        "scope",
        "tenant, agent, vendor or tool",
        |cx, p, v| one_of(cx, p, v, &["tenant", "agent", "vendor", "tool"]),
    );
    cx.optional(map, path, "key", Cx::str);
    cx.required(map, path, "window", "hour, day or month", |cx, p, v| {
        one_of(cx, p, v, &["hour", "day", "month"])
    });
    cx.required(map, path, "limit_cents", "a whole number", Cx::u64);
    cx.optional(map, path, "timezone", |cx, p, v| timezone(cx, p, v));
}

fn one_of(cx: &mut Cx<'_>, path: &str, v: &Value, allowed: &[&str]) -> Option<()> {
    let s = cx.str(path, v)?;
    if !allowed.contains(&s) {
        cx.error(
            path,
            "policy.invalid_value",
            format!("`{s}` is not one of: {}", allowed.join(", ")),
        );
    }
    Some(())
}

fn timezone(cx: &mut Cx<'_>, path: &str, v: &Value) -> Option<()> {
    let tz = cx.str(path, v)?;
    if !is_iana_timezone(tz) {
        let hint = nearest_timezone(tz).map_or_else(
            || "e.g. `UTC` or `America/New_York`".to_owned(),
            |near| format!("did you mean `{near}`?"),
        );
        cx.error(
            path,
            "policy.unknown_timezone",
            format!("`{tz}` is not an IANA timezone; {hint}"),
        );
    }
    Some(())
}

fn gates(cx: &mut Cx<'_>, path: &str, v: &Value) {
    let names = ["warning", "restrict", "halt"];
    let Some(map) = cx.section(path, v, &names, &names) else {
        return;
    };
    let mut values = Vec::new();
    for name in names {
        let value = cx.required(map, path, name, "a fraction between 0 and 1", Cx::number);
        if let Some(x) = value
            && !(0.0..=1.0).contains(&x)
        {
            cx.error(
                &key_path(path, name),
                "policy.gate_out_of_range",
                format!("{name} is {x}; a gate is a fraction of the intent budget, from 0 to 1"),
            );
        }
        values.push((name, value));
    }
    for pair in values.windows(2) {
        if let [(lo_name, Some(lo)), (hi_name, Some(hi))] = pair
            && lo >= hi
        {
            cx.error(
                &key_path(path, hi_name),
                "policy.gates_out_of_order",
                format!(
                    "{hi_name} ({hi}) must be above {lo_name} ({lo}): warning < restrict < halt"
                ),
            );
        }
    }
}

fn active_hours(cx: &mut Cx<'_>, path: &str, v: &Value) {
    let names = ["start", "end", "timezone"];
    let Some(map) = cx.section(path, v, &names, &names) else {
        return;
    };
    let mut minutes = [None, None];
    for (slot, name) in minutes.iter_mut().zip(["start", "end"]) {
        *slot = cx.required(map, path, name, "a time as HH:MM", |cx, p, v| {
            let s = cx.str(p, v)?;
            let m = parse_hhmm(s);
            if m.is_none() {
                cx.error(
                    p,
                    "policy.invalid_time",
                    format!("`{s}` is not a time as HH:MM on a 24-hour clock, e.g. `09:00`"),
                );
            }
            m
        });
    }
    if let [Some(start), Some(end)] = minutes
        && start >= end
    {
        cx.error(
            &key_path(path, "end"),
            "policy.invalid_active_hours",
            "end must be after start (the window lies within one day)",
        );
    }
    cx.required(map, path, "timezone", "an IANA timezone", |cx, p, v| {
        timezone(cx, p, v)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hhmm_and_names() {
        assert_eq!(parse_hhmm("09:00"), Some(540));
        assert_eq!(parse_hhmm("23:59"), Some(1439));
        assert_eq!(parse_hhmm("24:00"), None);
        assert_eq!(parse_hhmm("9:00"), None);
        assert_eq!(parse_hhmm("09:60"), None);
        assert_eq!(parse_hhmm("+9:00"), None);
        assert!(is_org_id("org_acme_corp"));
        assert!(!is_org_id("org_"));
        assert!(!is_org_id("acme"));
        assert!(is_policy_name("acme-agent-spend-v1"));
        assert!(!is_policy_name("Acme"));
        assert!(is_sha256_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_sha256_digest(&format!("sha256:{}", "A".repeat(64))));
        assert!(is_iana_timezone("America/New_York"));
        assert!(is_iana_timezone("UTC"));
        assert!(!is_iana_timezone("Mars/Olympus"));
        assert_eq!(closest("max_spend_cent", TOOL), Some("max_spend_cents"));
        assert_eq!(closest("zzz", TOOL), None);
    }

    #[test]
    fn yaml_syntax_errors_read_in_the_house_format() {
        assert_eq!(
            super::syntax_message(
                "did not find expected ',' or '}' at line 5 column 1, while parsing a flow mapping at line 4 column 6"
            ),
            "did not find expected ',' or '}' (in the flow mapping that starts at 4:6)"
        );
        assert_eq!(
            super::syntax_message(
                "found a tab character that violates indentation at line 3 column 1, while scanning a plain scalar at line 2 column 7"
            ),
            "found a tab character that violates indentation (in the plain scalar that starts at 2:7)"
        );
        assert_eq!(
            super::syntax_message(
                "mapping values are not allowed in this context at line 1 column 5"
            ),
            "mapping values are not allowed in this context"
        );
        let checked = super::check_policy(
            "version: 1\nname: p\ntools:\n  a: {side_effecting: true\n",
            "p.yaml",
        );
        let e = &checked.errors[0];
        assert_eq!((e.line, e.column, e.code.as_str()), (5, 1, "policy.syntax"));
        assert!(!e.message.contains("at line"), "{}", e.message);
    }
}
