//! SCIM filters (RFC 7644 §3.4.2.2) and attribute paths: parsed, then evaluated on
//! a resource's JSON representation.
//!
//! Attribute names match case-insensitively. String comparisons are
//! case-insensitive except on `id`, `externalId` and `meta.version` (the
//! attributes RFC 7643 makes `caseExact`). `gt`, `ge`, `lt` and `le` compare
//! timestamps when both sides are RFC 3339 times, numbers as numbers, and other
//! strings in order. A multi-valued attribute matches when any of its values does;
//! a complex one without a sub-attribute is compared by its `value`.

use std::fmt;

use serde_json::Value;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

/// `[urn:…:]attr[.sub]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttrPath {
    /// The schema URN prefix, if written.
    pub(crate) schema: Option<String>,
    pub(crate) attr: String,
    pub(crate) sub: Option<String>,
}

impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.schema {
            write!(f, "{s}:")?;
        }
        f.write_str(&self.attr)?;
        if let Some(s) = &self.sub {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Filter {
    Compare(AttrPath, Op, Value),
    Present(AttrPath),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    /// `attr[filter]`: some value of the multi-valued `attr` matches `filter`.
    ValuePath(AttrPath, Box<Filter>),
}

/// A PATCH path: an attribute, an attribute's values selected by a filter, and
/// optionally a sub-attribute of those (`emails[type eq "work"].value`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PatchPath {
    pub(crate) attr: AttrPath,
    pub(crate) filter: Option<Filter>,
    /// The sub-attribute after a value filter.
    pub(crate) sub: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Num(serde_json::Number),
    Open,
    Close,
    OpenBracket,
    CloseBracket,
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                out.push(Token::Close);
                i += 1;
            }
            '[' => {
                out.push(Token::OpenBracket);
                i += 1;
            }
            ']' => {
                out.push(Token::CloseBracket);
                i += 1;
            }
            '"' => {
                // A JSON string: find its end, honouring escapes, and decode it.
                let start = i;
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("a string at {start} is not closed")),
                        Some('\\') => i += 2,
                        Some('"') => break,
                        Some(_) => i += 1,
                    }
                }
                let raw: String = chars[start..=i].iter().collect();
                let s: String = serde_json::from_str(&raw)
                    .map_err(|e| format!("the string {raw} is not valid: {e}"))?;
                out.push(Token::Str(s));
                i += 1;
            }
            _ => {
                let start = i;
                while i < chars.len() && !matches!(chars[i], ' ' | '(' | ')' | '[' | ']' | '"') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if word.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
                    let n: serde_json::Number = word
                        .parse()
                        .map_err(|_| format!("`{word}` is not a number"))?;
                    out.push(Token::Num(n));
                } else {
                    out.push(Token::Word(word));
                }
            }
        }
    }
    Ok(out)
}

/// Parses `urn:…:attr.sub`, `attr.sub` or `attr`.
pub(crate) fn attr_path(text: &str) -> Result<AttrPath, String> {
    let valid_name = |n: &str| {
        n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$')
    };
    let (schema, rest) = if text.to_ascii_lowercase().starts_with("urn:") {
        match text.rsplit_once(':') {
            Some((schema, rest)) => (Some(schema.to_owned()), rest),
            None => return Err(format!("`{text}` is not an attribute path")),
        }
    } else {
        (None, text)
    };
    let (attr, sub) = match rest.split_once('.') {
        Some((a, s)) => (a, Some(s)),
        None => (rest, None),
    };
    if !valid_name(attr) || sub.is_some_and(|s| !valid_name(s)) {
        return Err(format!("`{text}` is not an attribute path"));
    }
    Ok(AttrPath {
        schema,
        attr: attr.to_owned(),
        sub: sub.map(str::to_owned),
    })
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    /// Groupings open around the current position.
    depth: usize,
}

/// The longest filter taken, and the deepest nesting of `(`, `[` and `not`.
const MAX_FILTER_LEN: usize = 4096;
const MAX_DEPTH: usize = 32;

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while self.keyword("or") {
            self.at += 1;
            let right = self.and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            self.at += 1;
            let right = self.unary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("the filter nests deeper than {MAX_DEPTH} levels"));
        }
        let f = self.unary_inner();
        self.depth -= 1;
        f
    }

    fn unary_inner(&mut self) -> Result<Filter, String> {
        if self.keyword("not") {
            self.at += 1;
            if self.next() != Some(Token::Open) {
                return Err("`not` must be followed by `(`".to_owned());
            }
            let inner = self.or()?;
            if self.next() != Some(Token::Close) {
                return Err("a `(` is not closed".to_owned());
            }
            return Ok(Filter::Not(Box::new(inner)));
        }
        if self.peek() == Some(&Token::Open) {
            self.at += 1;
            let inner = self.or()?;
            if self.next() != Some(Token::Close) {
                return Err("a `(` is not closed".to_owned());
            }
            return Ok(inner);
        }
        let Some(Token::Word(word)) = self.next() else {
            return Err("expected an attribute path".to_owned());
        };
        let path = attr_path(&word)?;
        if self.peek() == Some(&Token::OpenBracket) {
            self.at += 1;
            let inner = self.or()?;
            if self.next() != Some(Token::CloseBracket) {
                return Err("a `[` is not closed".to_owned());
            }
            return Ok(Filter::ValuePath(path, Box::new(inner)));
        }
        let Some(Token::Word(op)) = self.next() else {
            return Err(format!("expected an operator after `{word}`"));
        };
        let op = match op.to_ascii_lowercase().as_str() {
            "pr" => return Ok(Filter::Present(path)),
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "co" => Op::Co,
            "sw" => Op::Sw,
            "ew" => Op::Ew,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            other => return Err(format!("`{other}` is not a filter operator")),
        };
        let value = match self.next() {
            Some(Token::Str(s)) => Value::String(s),
            Some(Token::Num(n)) => Value::Number(n),
            Some(Token::Word(w)) if w == "true" => Value::Bool(true),
            Some(Token::Word(w)) if w == "false" => Value::Bool(false),
            Some(Token::Word(w)) if w == "null" => Value::Null,
            _ => return Err(format!("expected a value after `{word}`")),
        };
        Ok(Filter::Compare(path, op, value))
    }
}

/// Parses a filter; `Err` says what is wrong (`invalidFilter`).
pub(crate) fn parse(text: &str) -> Result<Filter, String> {
    if text.len() > MAX_FILTER_LEN {
        return Err(format!(
            "the filter is longer than {MAX_FILTER_LEN} characters"
        ));
    }
    let mut p = Parser {
        tokens: tokens(text)?,
        at: 0,
        depth: 0,
    };
    let f = p.or()?;
    if p.at < p.tokens.len() {
        return Err(format!("unexpected text after the filter in `{text}`"));
    }
    Ok(f)
}

/// Parses a PATCH `path` (`invalidPath` when it does not parse).
pub(crate) fn patch_path(text: &str) -> Result<PatchPath, String> {
    let text = text.trim();
    let Some(open) = text.find('[') else {
        return Ok(PatchPath {
            attr: attr_path(text)?,
            filter: None,
            sub: None,
        });
    };
    let close = text
        .rfind(']')
        .ok_or_else(|| format!("`{text}`: a `[` is not closed"))?;
    let attr = attr_path(&text[..open])?;
    let filter = parse(&text[open + 1..close])?;
    let rest = &text[close + 1..];
    let sub = match rest.strip_prefix('.') {
        Some(s) if !s.is_empty() => Some(s.to_owned()),
        None if rest.is_empty() => None,
        _ => return Err(format!("`{text}` is not a path")),
    };
    Ok(PatchPath {
        attr,
        filter: Some(filter),
        sub,
    })
}

/// The member of `object` named `name`, case-insensitively.
pub(crate) fn member<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    object
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// The object the path's attribute lives in: the resource, or its extension
/// object when the path names an extension schema.
fn scope<'a>(resource: &'a Value, path: &AttrPath) -> Option<&'a Value> {
    match &path.schema {
        Some(s) if !is_core(s) => member(resource, s),
        _ => Some(resource),
    }
}

/// Whether `urn` is one of the core schemas (whose attributes sit at the top).
pub(crate) fn is_core(urn: &str) -> bool {
    urn.eq_ignore_ascii_case(super::USER_SCHEMA) || urn.eq_ignore_ascii_case(super::GROUP_SCHEMA)
}

fn case_exact(path: &AttrPath) -> bool {
    matches!(
        (path.attr.to_ascii_lowercase().as_str(), path.sub.as_deref()),
        ("id" | "externalid", None) | ("meta", Some("version"))
    )
}

/// The values the path points at in `resource`, flattened over multi-valued
/// attributes (a complex value stands for its `value` when no sub-attribute is named).
fn values<'a>(resource: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let Some(top) = scope(resource, path).and_then(|s| member(s, &path.attr)) else {
        return Vec::new();
    };
    let items: Vec<&Value> = match top {
        Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    items
        .into_iter()
        .filter_map(|v| match (&path.sub, v) {
            (Some(sub), v) => member(v, sub),
            (None, Value::Object(_)) => member(v, "value"),
            (None, v) => Some(v),
        })
        .collect()
}

fn timestamp(v: &str) -> Option<jiff::Timestamp> {
    v.parse().ok()
}

fn compare(have: &Value, op: Op, want: &Value, exact: bool) -> bool {
    use std::cmp::Ordering;
    let fold = |s: &str| {
        if exact {
            s.to_owned()
        } else {
            s.to_lowercase()
        }
    };
    let order: Option<Ordering> = match (have, want) {
        (Value::String(h), Value::String(w)) => match (timestamp(h), timestamp(w)) {
            (Some(h), Some(w)) => Some(h.cmp(&w)),
            _ => Some(fold(h).cmp(&fold(w))),
        },
        (Value::Number(h), Value::Number(w)) => h
            .as_f64()
            .zip(w.as_f64())
            .and_then(|(h, w)| h.partial_cmp(&w)),
        (Value::Bool(h), Value::Bool(w)) => Some(h.cmp(w)),
        _ => None,
    };
    match op {
        Op::Eq => match (have, want) {
            (_, Value::Null) => have.is_null(),
            _ => order == Some(Ordering::Equal),
        },
        Op::Ne => !compare(have, Op::Eq, want, exact),
        Op::Co | Op::Sw | Op::Ew => match (have, want) {
            (Value::String(h), Value::String(w)) => {
                let (h, w) = (fold(h), fold(w));
                match op {
                    Op::Co => h.contains(&w),
                    Op::Sw => h.starts_with(&w),
                    _ => h.ends_with(&w),
                }
            }
            _ => false,
        },
        // Booleans have no order (RFC 7644: gt and friends on them are an error,
        // which a match can only answer with false).
        Op::Gt | Op::Ge | Op::Lt | Op::Le if matches!(have, Value::Bool(_)) => false,
        Op::Gt => order == Some(Ordering::Greater),
        Op::Ge => matches!(order, Some(Ordering::Greater | Ordering::Equal)),
        Op::Lt => order == Some(Ordering::Less),
        Op::Le => matches!(order, Some(Ordering::Less | Ordering::Equal)),
    }
}

fn present(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

impl Filter {
    /// Whether `resource` matches.
    pub(crate) fn matches(&self, resource: &Value) -> bool {
        match self {
            Self::Compare(path, Op::Ne, want) => {
                !Self::Compare(path.clone(), Op::Eq, want.clone()).matches(resource)
            }
            Self::Compare(path, op, want) => {
                let exact = case_exact(path);
                values(resource, path)
                    .into_iter()
                    .any(|v| compare(v, *op, want, exact))
            }
            Self::Present(path) => values(resource, path).into_iter().any(present),
            Self::And(a, b) => a.matches(resource) && b.matches(resource),
            Self::Or(a, b) => a.matches(resource) || b.matches(resource),
            Self::Not(f) => !f.matches(resource),
            Self::ValuePath(path, f) => {
                let Some(top) = scope(resource, path).and_then(|s| member(s, &path.attr)) else {
                    return false;
                };
                match top {
                    Value::Array(items) => items.iter().any(|item| f.matches(item)),
                    item => f.matches(item),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn user() -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": "2819c223",
            "externalId": "00uAbC",
            "userName": "Ada@Example.com",
            "displayName": "Ada Lovelace",
            "active": true,
            "emails": [
                {"value": "ada@example.com", "type": "work", "primary": true},
                {"value": "ada@home.example", "type": "home"}
            ],
            "name": {"givenName": "Ada", "familyName": "Lovelace"},
            "meta": {"created": "2026-11-01T10:00:00Z", "lastModified": "2026-12-01T10:00:00Z"},
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Finance"}
        })
    }

    fn is(filter: &str) -> bool {
        parse(filter).unwrap().matches(&user())
    }

    #[test]
    fn every_operator_on_strings_dates_and_booleans() {
        assert!(is(r#"userName eq "ada@example.com""#)); // userName is not case-exact
        assert!(!is(r#"externalId eq "00uabc""#)); // externalId is
        assert!(is(r#"externalId eq "00uAbC""#));
        assert!(is(r#"userName ne "bob@example.com""#));
        assert!(is(r#"displayName co "love""#));
        assert!(is(r#"displayName sw "ada""#));
        assert!(is(r#"displayName ew "LACE""#));
        assert!(is("active eq true") && !is("active eq false"));
        assert!(is("displayName pr") && !is("nickName pr"));
        assert!(is(r#"meta.created gt "2026-10-31T23:59:59Z""#));
        assert!(is(r#"meta.lastModified lt "2026-12-02T00:00:00+01:00""#));
        assert!(!is(r#"meta.created gt "2026-11-01T10:00:00Z""#));
        assert!(is(r#"meta.created ge "2026-11-01T10:00:00Z""#));
        assert!(is(r#"emails.value eq "ADA@home.example""#));
        assert!(is(r#"emails co "home""#)); // a complex value by its `value`
        assert!(is(r#"name.familyName eq "lovelace""#));
        assert!(is(
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "finance""#
        ));
        assert!(is(
            r#"urn:ietf:params:scim:schemas:core:2.0:User:userName sw "ada""#
        ));
    }

    #[test]
    fn logic_binds_not_then_and_then_or_and_groups_with_parentheses() {
        assert!(is(
            r#"userName eq "x" or active eq true and displayName pr"#
        ));
        assert!(!is(
            r#"(userName eq "x" or active eq true) and nickName pr"#
        ));
        assert!(is(r#"not (userName eq "x") and active eq true"#));
        assert!(!is(r#"not (active eq true)"#));
        assert!(is(r#"USERNAME EQ "ada@example.com" AND Active Eq true"#));
    }

    #[test]
    fn value_filters_select_within_one_value() {
        assert!(is(r#"emails[type eq "work" and value co "example.com"]"#));
        // Both conditions must hold on the same email.
        assert!(!is(r#"emails[type eq "home" and value co "example.com"]"#));
        assert!(is(r#"emails[type eq "work"] and userName sw "ada""#));
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        for bad in [
            "userName",
            r#"userName eq"#,
            r#"userName zz "x""#,
            r#"(userName eq "x""#,
            r#"userName eq "x" extra"#,
            r#"userName eq "unterminated"#,
            r#"emails[type eq "work""#,
            r#"not userName eq "x""#,
            r#"9abc eq "x""#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deep_or_long_filters_are_refused_not_followed() {
        let deep = format!("{}userName pr{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(parse(&deep).unwrap_err().contains("longer"));
        let nested = format!("{}userName pr{}", "not (".repeat(40), ")".repeat(40));
        assert!(parse(&nested).unwrap_err().contains("deeper"));
        let fine = format!("{}userName pr{}", "(".repeat(20), ")".repeat(20));
        assert!(parse(&fine).is_ok());
    }

    #[test]
    fn patch_paths() {
        let p = patch_path(r#"emails[type eq "work"].value"#).unwrap();
        assert_eq!(p.attr.attr, "emails");
        assert_eq!(p.sub.as_deref(), Some("value"));
        assert!(p.filter.is_some());
        let p = patch_path("name.givenName").unwrap();
        assert_eq!(
            (p.attr.attr.as_str(), p.attr.sub.as_deref()),
            ("name", Some("givenName"))
        );
        let p = patch_path(r#"members[value eq "2819c223"]"#).unwrap();
        assert!(p.sub.is_none());
        assert!(patch_path("emails[type eq").is_err());
        assert!(patch_path(r#"emails[type eq "work"]value"#).is_err());
    }
}
