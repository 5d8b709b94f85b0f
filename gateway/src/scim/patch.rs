//! PATCH (RFC 7644 §3.5.2): `add`, `replace` and `remove` operations applied in
//! order to a resource's JSON, all or nothing.
//!
//! Besides the RFC's forms this takes what the common identity providers send:
//! operation names in any case (`Replace`), booleans as strings (`"False"`),
//! attribute paths as the keys of a path-less `value` (`{"name.givenName": …}`),
//! a `remove` of `members` listing the members to take out, and an `add` or
//! `replace` through `attr[type eq "work"].sub` when no value of that type exists
//! yet (the value is created).

use serde_json::{Map, Value};

use super::filter::{Filter, Op, PatchPath, is_core, patch_path};
use super::{PATCH_SCHEMA, ScimError};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Add,
    Replace,
    Remove,
}

/// Attributes no PATCH may change.
const READ_ONLY: &[&str] = &["id", "meta", "groups", "schemas"];

/// Applies the PatchOp `body` to `doc`.
pub(crate) fn apply(doc: &mut Value, body: &Value) -> Result<(), ScimError> {
    let schemas_ok = super::filter::member(body, "schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| {
            s.iter().any(|s| {
                s.as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case(PATCH_SCHEMA))
            })
        });
    if !schemas_ok {
        return Err(ScimError::bad(
            "invalidSyntax",
            format!("a PATCH body's `schemas` must be [\"{PATCH_SCHEMA}\"]"),
        ));
    }
    let ops = super::filter::member(body, "Operations")
        .and_then(Value::as_array)
        .filter(|o| !o.is_empty())
        .ok_or_else(|| ScimError::bad("invalidSyntax", "`Operations` must be a non-empty list"))?;
    for (i, op) in ops.iter().enumerate() {
        let kind = match super::filter::member(op, "op").and_then(Value::as_str) {
            Some(o) if o.eq_ignore_ascii_case("add") => Kind::Add,
            Some(o) if o.eq_ignore_ascii_case("replace") => Kind::Replace,
            Some(o) if o.eq_ignore_ascii_case("remove") => Kind::Remove,
            other => {
                return Err(ScimError::bad(
                    "invalidSyntax",
                    format!(
                        "Operations[{i}].op: {} is not add, replace or remove",
                        other.map_or_else(|| "missing".to_owned(), |o| format!("`{o}`"))
                    ),
                ));
            }
        };
        let value = super::filter::member(op, "value").cloned();
        match super::filter::member(op, "path").and_then(Value::as_str) {
            Some(path) => {
                let path = patch_path(path).map_err(|e| ScimError::bad("invalidPath", e))?;
                one(doc, kind, &path, value)?;
            }
            None if kind == Kind::Remove => {
                return Err(ScimError::bad(
                    "noTarget",
                    format!("Operations[{i}]: a remove needs a `path`"),
                ));
            }
            None => {
                let Some(Value::Object(attrs)) = value else {
                    return Err(ScimError::bad(
                        "invalidValue",
                        format!("Operations[{i}]: without a `path`, `value` must be an object"),
                    ));
                };
                for (k, v) in attrs {
                    if is_extension(&k) {
                        // An extension's object: each of its attributes.
                        let Value::Object(inner) = v else {
                            return Err(ScimError::bad(
                                "invalidValue",
                                format!("`{k}` must be an object"),
                            ));
                        };
                        for (a, v) in inner {
                            let path = patch_path(&format!("{k}:{a}"))
                                .map_err(|e| ScimError::bad("invalidPath", e))?;
                            one(doc, kind, &path, Some(v))?;
                        }
                    } else if k.eq_ignore_ascii_case("schemas") {
                        // Sent back as read: nothing to change.
                    } else {
                        let path = patch_path(&k).map_err(|e| ScimError::bad("invalidPath", e))?;
                        one(doc, kind, &path, Some(v))?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn is_extension(key: &str) -> bool {
    key.to_ascii_lowercase().starts_with("urn:") && !is_core(key)
}

fn key_of(object: &Map<String, Value>, name: &str) -> Option<String> {
    object
        .keys()
        .find(|k| k.eq_ignore_ascii_case(name))
        .cloned()
}

/// The object `path` lives in (an extension's object, created for add and
/// replace), or `None` when it is not there to remove from.
fn container<'a>(
    doc: &'a mut Value,
    path: &PatchPath,
    create: bool,
) -> Result<Option<&'a mut Map<String, Value>>, ScimError> {
    let Value::Object(root) = doc else {
        return Err(ScimError::new(
            500,
            None,
            "the stored resource is not an object",
        ));
    };
    match &path.attr.schema {
        Some(s) if !is_core(s) => {
            let key = match key_of(root, s) {
                Some(k) => k,
                None if create => {
                    root.insert(s.clone(), Value::Object(Map::new()));
                    // A new extension is named in `schemas` too.
                    if let Some(Value::Array(schemas)) = root.get_mut("schemas")
                        && !schemas.iter().any(|x| x.as_str() == Some(s))
                    {
                        schemas.push(Value::String(s.clone()));
                    }
                    s.clone()
                }
                None => return Ok(None),
            };
            match root.get_mut(&key) {
                Some(Value::Object(o)) => Ok(Some(o)),
                _ => Err(ScimError::bad(
                    "invalidValue",
                    format!("`{key}` is not an object"),
                )),
            }
        }
        _ => Ok(Some(root)),
    }
}

/// One operation at one path.
fn one(
    doc: &mut Value,
    kind: Kind,
    path: &PatchPath,
    value: Option<Value>,
) -> Result<(), ScimError> {
    if path.attr.schema.as_deref().is_none_or(is_core)
        && READ_ONLY
            .iter()
            .any(|r| path.attr.attr.eq_ignore_ascii_case(r))
        && !(path.attr.attr.eq_ignore_ascii_case("groups") && is_group(doc))
    {
        return Err(ScimError::bad(
            "mutability",
            format!("`{}` cannot be changed", path.attr),
        ));
    }
    if kind != Kind::Remove && value.is_none() {
        return Err(ScimError::bad(
            "invalidValue",
            format!("`{}`: add and replace need a `value`", path.attr),
        ));
    }
    let Some(object) = container(doc, path, kind != Kind::Remove)? else {
        return Ok(());
    };
    let key = key_of(object, &path.attr.attr).unwrap_or_else(|| path.attr.attr.clone());
    match &path.filter {
        None => plain(object, &key, path.attr.sub.as_deref(), kind, value),
        Some(filter) => filtered(object, &key, filter, path.sub.as_deref(), kind, value, path),
    }
}

fn is_group(doc: &Value) -> bool {
    super::filter::member(doc, "members").is_some()
}

/// An attribute or sub-attribute without a value filter.
fn plain(
    object: &mut Map<String, Value>,
    key: &str,
    sub: Option<&str>,
    kind: Kind,
    value: Option<Value>,
) -> Result<(), ScimError> {
    if let Some(sub) = sub {
        match kind {
            Kind::Remove => {
                if let Some(Value::Object(inner)) = object.get_mut(key)
                    && let Some(k) = key_of(inner, sub)
                {
                    inner.remove(&k);
                }
            }
            Kind::Add | Kind::Replace => {
                let entry = object
                    .entry(key.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                let Value::Object(inner) = entry else {
                    return Err(ScimError::bad(
                        "invalidPath",
                        format!("`{key}` has no sub-attributes"),
                    ));
                };
                let k = key_of(inner, sub).unwrap_or_else(|| sub.to_owned());
                inner.insert(k, value.unwrap_or(Value::Null));
            }
        }
        return Ok(());
    }
    match kind {
        Kind::Remove => {
            match (object.get_mut(key), value) {
                // A remove listing the values to take out (of `members`, say).
                (Some(Value::Array(items)), Some(Value::Array(gone))) => {
                    let ids: Vec<&Value> = gone
                        .iter()
                        .filter_map(|g| super::filter::member(g, "value"))
                        .collect();
                    items.retain(|i| {
                        super::filter::member(i, "value").is_none_or(|v| !ids.contains(&v))
                    });
                }
                _ => {
                    object.remove(key);
                }
            }
            Ok(())
        }
        Kind::Add => {
            let value = value.unwrap_or(Value::Null);
            match (object.get_mut(key), value) {
                (Some(Value::Array(items)), Value::Array(more)) => {
                    for v in more {
                        push_new(items, v);
                    }
                }
                (Some(Value::Array(items)), v) => push_new(items, v),
                (Some(Value::Object(have)), Value::Object(more)) => merge(have, more),
                (_, v) => {
                    object.insert(key.to_owned(), v);
                }
            }
            Ok(())
        }
        Kind::Replace => {
            let value = value.unwrap_or(Value::Null);
            match (object.get_mut(key), value) {
                (Some(Value::Object(have)), Value::Object(more)) => merge(have, more),
                (_, v) => {
                    object.insert(key.to_owned(), v);
                }
            }
            Ok(())
        }
    }
}

/// Sets each of `more`'s attributes in `have` (matching names case-insensitively).
fn merge(have: &mut Map<String, Value>, more: Map<String, Value>) {
    for (k, v) in more {
        let k = key_of(have, &k).unwrap_or(k);
        have.insert(k, v);
    }
}

/// Adds `v` to a multi-valued attribute unless an equal value (or one with the
/// same `value`) is there.
fn push_new(items: &mut Vec<Value>, v: Value) {
    let same = |i: &Value| {
        i == &v
            || matches!(
                (super::filter::member(i, "value"), super::filter::member(&v, "value")),
                (Some(a), Some(b)) if a == b
            )
    };
    if !items.iter().any(same) {
        items.push(v);
    }
}

/// An attribute's values selected by a filter, or a sub-attribute of them.
fn filtered(
    object: &mut Map<String, Value>,
    key: &str,
    filter: &Filter,
    sub: Option<&str>,
    kind: Kind,
    value: Option<Value>,
    path: &PatchPath,
) -> Result<(), ScimError> {
    let items = match object.get_mut(key) {
        Some(Value::Array(items)) => Some(items),
        Some(_) => {
            return Err(ScimError::bad(
                "invalidPath",
                format!("`{key}` is not multi-valued"),
            ));
        }
        None => None,
    };
    let matched: Vec<usize> = items
        .as_ref()
        .map(|items| {
            items
                .iter()
                .enumerate()
                .filter(|(_, i)| filter.matches(i))
                .map(|(n, _)| n)
                .collect()
        })
        .unwrap_or_default();
    match kind {
        Kind::Remove => {
            let Some(items) = items else { return Ok(()) };
            match sub {
                Some(sub) => {
                    for n in matched {
                        if let Some(Value::Object(o)) = items.get_mut(n)
                            && let Some(k) = key_of(o, sub)
                        {
                            o.remove(&k);
                        }
                    }
                }
                None => {
                    let mut n = 0;
                    items.retain(|_| {
                        let keep = !matched.contains(&n);
                        n += 1;
                        keep
                    });
                }
            }
            Ok(())
        }
        Kind::Add | Kind::Replace => {
            let value = value.unwrap_or(Value::Null);
            if matched.is_empty() {
                // `attr[type eq "work"].value` with no work value yet: made.
                if let (Filter::Compare(p, Op::Eq, Value::String(want)), Some(sub)) = (filter, sub)
                    && p.sub.is_none()
                {
                    let mut item = Map::new();
                    item.insert(p.attr.clone(), Value::String(want.clone()));
                    item.insert(sub.to_owned(), value);
                    match object.get_mut(key) {
                        Some(Value::Array(items)) => items.push(Value::Object(item)),
                        _ => {
                            object.insert(key.to_owned(), Value::Array(vec![Value::Object(item)]));
                        }
                    }
                    return Ok(());
                }
                return Err(ScimError::bad(
                    "noTarget",
                    format!("no value of `{}` matches the path's filter", path.attr),
                ));
            }
            let Some(items) = object.get_mut(key).and_then(Value::as_array_mut) else {
                return Ok(());
            };
            for n in matched {
                let Some(item) = items.get_mut(n) else {
                    continue;
                };
                match (sub, item, &value) {
                    (Some(sub), Value::Object(o), v) => {
                        let k = key_of(o, sub).unwrap_or_else(|| sub.to_owned());
                        o.insert(k, v.clone());
                    }
                    (None, Value::Object(o), Value::Object(more)) => {
                        for (k, v) in more {
                            let k = key_of(o, k).unwrap_or_else(|| k.clone());
                            o.insert(k, v.clone());
                        }
                    }
                    (_, item, v) => *item = v.clone(),
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn patched(doc: Value, ops: Value) -> Result<Value, ScimError> {
        let mut doc = doc;
        apply(
            &mut doc,
            &json!({"schemas": [PATCH_SCHEMA], "Operations": ops}),
        )?;
        Ok(doc)
    }

    fn user() -> Value {
        json!({
            "schemas": [super::super::USER_SCHEMA],
            "userName": "ada@example.com",
            "active": true,
            "name": {"givenName": "Ada", "familyName": "Lovelace"},
            "emails": [{"value": "ada@example.com", "type": "work", "primary": true}]
        })
    }

    #[test]
    fn add_replace_and_remove_by_path() {
        let doc = patched(
            user(),
            json!([
                {"op": "Replace", "path": "active", "value": false},
                {"op": "replace", "path": "name.givenName", "value": "Augusta"},
                {"op": "add", "path": "emails", "value": [{"value": "ada@home.example", "type": "home"}]},
                {"op": "replace", "path": "emails[type eq \"work\"].value", "value": "ada@corp.example"},
                {"op": "add", "path": "nickName", "value": "AAL"},
                {"op": "remove", "path": "name.familyName"}
            ]),
        )
        .unwrap();
        assert_eq!(doc["active"], false);
        assert_eq!(doc["name"], json!({"givenName": "Augusta"}));
        assert_eq!(doc["emails"][0]["value"], "ada@corp.example");
        assert_eq!(doc["emails"][1]["type"], "home");
        assert_eq!(doc["nickName"], "AAL");
        let doc = patched(
            doc,
            json!([{"op": "remove", "path": "emails[type eq \"home\"]"}]),
        )
        .unwrap();
        assert_eq!(doc["emails"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_pathless_value_sets_each_attribute() {
        let doc = patched(
            user(),
            json!([{"op": "replace", "value": {
                "active": "False",
                "name.familyName": "King",
                "displayName": "Ada King",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "R&D"}
            }}]),
        )
        .unwrap();
        assert_eq!(doc["active"], "False"); // turned into a boolean when stored
        assert_eq!(doc["name"]["familyName"], "King");
        assert_eq!(doc["name"]["givenName"], "Ada");
        assert_eq!(doc["displayName"], "Ada King");
        assert_eq!(
            doc["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"],
            "R&D"
        );
        assert!(
            doc["schemas"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")
        );
    }

    #[test]
    fn a_missing_work_email_is_made_and_an_unmatched_complex_filter_is_no_target() {
        let doc = patched(
            json!({"schemas": [super::super::USER_SCHEMA], "userName": "x"}),
            json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "x@corp"}]),
        )
        .unwrap();
        assert_eq!(doc["emails"], json!([{"type": "work", "value": "x@corp"}]));
        let err = patched(
            user(),
            json!([{"op": "replace", "path": "emails[type eq \"home\" and primary eq true].value", "value": "y"}]),
        )
        .unwrap_err();
        assert_eq!(err.scim_type, Some("noTarget"));
    }

    #[test]
    fn members_are_added_and_removed() {
        let group = json!({"schemas": [super::super::GROUP_SCHEMA], "displayName": "ops",
                           "members": [{"value": "u1"}, {"value": "u2"}]});
        let doc = patched(
            group,
            json!([
                {"op": "add", "path": "members", "value": [{"value": "u3"}, {"value": "u1"}]},
                {"op": "remove", "path": "members[value eq \"u2\"]"}
            ]),
        )
        .unwrap();
        assert_eq!(doc["members"], json!([{"value": "u1"}, {"value": "u3"}]));
        let doc = patched(
            doc,
            json!([{"op": "Remove", "path": "members", "value": [{"value": "u1"}]}]),
        )
        .unwrap();
        assert_eq!(doc["members"], json!([{"value": "u3"}]));
        let doc = patched(doc, json!([{"op": "remove", "path": "members"}])).unwrap();
        assert!(doc.get("members").is_none());
    }

    #[test]
    fn bad_operations_are_refused_with_their_scim_type() {
        let cases = [
            (
                json!([{"op": "move", "path": "x", "value": 1}]),
                "invalidSyntax",
            ),
            (json!([{"op": "remove"}]), "noTarget"),
            (
                json!([{"op": "replace", "path": "id", "value": "x"}]),
                "mutability",
            ),
            (
                json!([{"op": "replace", "path": "meta.created", "value": "x"}]),
                "mutability",
            ),
            (
                json!([{"op": "replace", "path": "emails[type eq", "value": "x"}]),
                "invalidPath",
            ),
            (
                json!([{"op": "add", "value": "not an object"}]),
                "invalidValue",
            ),
            (json!([{"op": "add", "path": "nickName"}]), "invalidValue"),
            (json!([]), "invalidSyntax"),
        ];
        for (ops, code) in cases {
            let err = patched(user(), ops.clone()).unwrap_err();
            assert_eq!(err.scim_type, Some(code), "{ops}");
        }
        let mut doc = user();
        let err = apply(
            &mut doc,
            &json!({"Operations": [{"op": "add", "path": "x", "value": 1}]}),
        )
        .unwrap_err();
        assert_eq!(err.scim_type, Some("invalidSyntax"));
    }
}
