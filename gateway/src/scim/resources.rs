//! Users and groups as the store keeps them and as SCIM shows them.

use serde_json::{Map, Value, json};

use super::filter::{AttrPath, attr_path, is_core, member};
use super::{GROUP_SCHEMA, ScimError, USER_SCHEMA};
use crate::engine::lifecycle::rfc3339;
use crate::store::{ScimGroup, ScimUser, Tx};

/// A stored user: the attributes the client set (not `id`, `meta` or `groups`).
#[derive(Debug, Clone)]
pub(crate) struct UserRow {
    pub(crate) id: String,
    pub(crate) active: bool,
    pub(crate) resource: Value,
    pub(crate) version: u64,
    pub(crate) created_ms: i64,
    pub(crate) updated_ms: i64,
}

/// A stored group: its attributes but `id`, `meta` and `members` (kept apart).
#[derive(Debug, Clone)]
pub(crate) struct GroupRow {
    pub(crate) id: String,
    pub(crate) display_name: String,
    pub(crate) resource: Value,
    pub(crate) version: u64,
    pub(crate) created_ms: i64,
    pub(crate) updated_ms: i64,
}

pub(crate) fn load_user(tx: &dyn Tx, tenant: &str, id: &str) -> Result<Option<UserRow>, ScimError> {
    Ok(tx.scim_user(tenant, id)?)
}

pub(crate) fn all_users(tx: &dyn Tx, tenant: &str) -> Result<Vec<UserRow>, ScimError> {
    Ok(tx.scim_users(tenant)?)
}

pub(crate) fn load_group(
    tx: &dyn Tx,
    tenant: &str,
    id: &str,
) -> Result<Option<GroupRow>, ScimError> {
    Ok(tx.scim_group(tenant, id)?)
}

pub(crate) fn all_groups(tx: &dyn Tx, tenant: &str) -> Result<Vec<GroupRow>, ScimError> {
    Ok(tx.scim_groups(tenant)?)
}

/// The groups a user is in: `(id, displayName)`.
pub(crate) fn groups_of(tx: &dyn Tx, user: &str) -> Result<Vec<(String, String)>, ScimError> {
    Ok(tx.scim_groups_of(user)?)
}

/// A group's members: `(id, userName)`.
pub(crate) fn members_of(tx: &dyn Tx, group: &str) -> Result<Vec<(String, String)>, ScimError> {
    Ok(tx.scim_members_of(group)?)
}

/// `W/"<version>"`.
pub(crate) fn etag(version: u64) -> String {
    format!("W/\"{version}\"")
}

fn meta(kind: &str, base: &str, id: &str, version: u64, created: i64, updated: i64) -> Value {
    json!({
        "resourceType": kind,
        "created": rfc3339(created),
        "lastModified": rfc3339(updated),
        "location": format!("{base}/{kind}s/{id}"),
        "version": etag(version),
    })
}

/// A user as SCIM shows it.
pub(crate) fn user_json(user: &UserRow, groups: &[(String, String)], base: &str) -> Value {
    let mut out = Map::new();
    out.insert("id".to_owned(), json!(user.id));
    if let Value::Object(attrs) = &user.resource {
        for (k, v) in attrs {
            out.insert(k.clone(), v.clone());
        }
    }
    out.insert("active".to_owned(), json!(user.active));
    if !groups.is_empty() {
        out.insert(
            "groups".to_owned(),
            Value::Array(
                groups
                    .iter()
                    .map(|(id, name)| {
                        json!({"value": id, "display": name, "type": "direct",
                               "$ref": format!("{base}/Groups/{id}")})
                    })
                    .collect(),
            ),
        );
    }
    out.insert(
        "meta".to_owned(),
        meta(
            "User",
            base,
            &user.id,
            user.version,
            user.created_ms,
            user.updated_ms,
        ),
    );
    Value::Object(out)
}

/// A group as SCIM shows it.
pub(crate) fn group_json(group: &GroupRow, members: &[(String, String)], base: &str) -> Value {
    let mut out = Map::new();
    out.insert("id".to_owned(), json!(group.id));
    if let Value::Object(attrs) = &group.resource {
        for (k, v) in attrs {
            out.insert(k.clone(), v.clone());
        }
    }
    out.insert(
        "members".to_owned(),
        Value::Array(
            members
                .iter()
                .map(|(id, name)| {
                    json!({"value": id, "display": name, "type": "User",
                           "$ref": format!("{base}/Users/{id}")})
                })
                .collect(),
        ),
    );
    out.insert(
        "meta".to_owned(),
        meta(
            "Group",
            base,
            &group.id,
            group.version,
            group.created_ms,
            group.updated_ms,
        ),
    );
    Value::Object(out)
}

/// Booleans some identity providers send as strings (`"True"`, `"false"`).
fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// The name of `object`'s member matching `name` case-insensitively, if any.
fn key_of(object: &Map<String, Value>, name: &str) -> Option<String> {
    object
        .keys()
        .find(|k| k.eq_ignore_ascii_case(name))
        .cloned()
}

/// Checks `schemas` names `core` (and only schemas this provider knows or
/// extension objects present in the resource).
fn check_schemas(input: &Map<String, Value>, core: &str) -> Result<(), ScimError> {
    let Some(Value::Array(schemas)) = key_of(input, "schemas").and_then(|k| input.get(&k)) else {
        return Err(ScimError::bad(
            "invalidSyntax",
            format!("`schemas` must be a list naming {core}"),
        ));
    };
    if !schemas
        .iter()
        .any(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(core)))
    {
        return Err(ScimError::bad(
            "invalidSyntax",
            format!("`schemas` must name {core}"),
        ));
    }
    Ok(())
}

/// What a client sent for a user, as it is kept: read-only attributes dropped,
/// `active` a boolean, `userName` checked. Returns the attributes, the userName
/// and whether the user is active.
pub(crate) fn user_input(input: &Value) -> Result<(Value, String, bool), ScimError> {
    let Value::Object(input) = input else {
        return Err(ScimError::bad(
            "invalidSyntax",
            "a user must be a JSON object",
        ));
    };
    check_schemas(input, USER_SCHEMA)?;
    let mut kept = Map::new();
    let mut active = true;
    for (k, v) in input {
        match k.to_ascii_lowercase().as_str() {
            // Read-only, or kept apart.
            "id" | "meta" | "groups" => {}
            "active" => {
                active = boolean(v).ok_or_else(|| {
                    ScimError::bad("invalidValue", "`active` must be true or false")
                })?;
            }
            "password" => {
                return Err(ScimError::bad(
                    "invalidValue",
                    "passwords are not kept here: people sign in through single sign-on",
                ));
            }
            _ => {
                kept.insert(k.clone(), v.clone());
            }
        }
    }
    let user_name = key_of(&kept, "userName")
        .and_then(|k| kept.get(&k))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ScimError::bad("invalidValue", "`userName` is required"))?
        .to_owned();
    if user_name.chars().count() > 256 || user_name.chars().any(char::is_control) {
        return Err(ScimError::bad(
            "invalidValue",
            "`userName` must be at most 256 characters, with no control characters",
        ));
    }
    for text in ["externalId", "displayName"] {
        if let Some(v) = key_of(&kept, text).and_then(|k| kept.get(&k))
            && !v.is_string()
            && !v.is_null()
        {
            return Err(ScimError::bad(
                "invalidValue",
                format!("`{text}` must be a string"),
            ));
        }
    }
    if let Some(emails) = key_of(&kept, "emails").and_then(|k| kept.get(&k))
        && !emails.is_array()
    {
        return Err(ScimError::bad("invalidValue", "`emails` must be a list"));
    }
    Ok((Value::Object(kept), user_name, active))
}

/// What a client sent for a group: its attributes (without `id`, `meta` and
/// `members`), its displayName and its members' ids.
pub(crate) fn group_input(input: &Value) -> Result<(Value, String, Vec<String>), ScimError> {
    let Value::Object(input) = input else {
        return Err(ScimError::bad(
            "invalidSyntax",
            "a group must be a JSON object",
        ));
    };
    check_schemas(input, GROUP_SCHEMA)?;
    let mut kept = Map::new();
    let mut members = Vec::new();
    for (k, v) in input {
        match k.to_ascii_lowercase().as_str() {
            "id" | "meta" => {}
            "members" => {
                let Value::Array(list) = v else {
                    if v.is_null() {
                        continue;
                    }
                    return Err(ScimError::bad("invalidValue", "`members` must be a list"));
                };
                for m in list {
                    let id = member(m, "value").and_then(Value::as_str).ok_or_else(|| {
                        ScimError::bad("invalidValue", "each member needs a `value` (a user id)")
                    })?;
                    if !members.iter().any(|x: &String| x == id) {
                        members.push(id.to_owned());
                    }
                }
            }
            _ => {
                kept.insert(k.clone(), v.clone());
            }
        }
    }
    let name = key_of(&kept, "displayName")
        .and_then(|k| kept.get(&k))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ScimError::bad("invalidValue", "`displayName` is required"))?
        .to_owned();
    Ok((Value::Object(kept), name, members))
}

fn text_of(resource: &Value, name: &str) -> Option<String> {
    member(resource, name)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Inserts or updates a user (`version` is the new version); 409 `uniqueness`
/// when another user of the tenant has the userName.
#[allow(clippy::too_many_arguments)] // one row's columns
pub(crate) fn save_user(
    tx: &dyn Tx,
    tenant: &str,
    id: &str,
    resource: &Value,
    user_name: &str,
    active: bool,
    version: u64,
    created_ms: i64,
    now: i64,
) -> Result<(), ScimError> {
    let taken = tx.scim_user_name_taken(tenant, user_name, id)?;
    if taken {
        return Err(ScimError::new(
            409,
            Some("uniqueness"),
            format!("another user has the userName `{user_name}`"),
        ));
    }
    let text = serde_json::to_string(resource).map_err(crate::error::ApiError::internal)?;
    tx.save_scim_user(&ScimUser {
        id,
        tenant,
        user_name,
        external_id: text_of(resource, "externalId").as_deref(),
        active,
        resource: &text,
        version,
        created_ms,
        updated_ms: now,
    })?;
    Ok(())
}

/// Inserts or updates a group and sets its members (every one a user of the
/// tenant, else 400 `invalidValue`). Returns the users whose membership changed.
#[allow(clippy::too_many_arguments)] // one row's columns and its members
pub(crate) fn save_group(
    tx: &dyn Tx,
    tenant: &str,
    id: &str,
    resource: &Value,
    display_name: &str,
    members: &[String],
    version: u64,
    created_ms: i64,
    now: i64,
) -> Result<Vec<String>, ScimError> {
    for m in members {
        if load_user(tx, tenant, m)?.is_none() {
            return Err(ScimError::bad(
                "invalidValue",
                format!("member `{m}` is not a user of this tenant"),
            ));
        }
    }
    let text = serde_json::to_string(resource).map_err(crate::error::ApiError::internal)?;
    tx.save_scim_group(&ScimGroup {
        id,
        tenant,
        display_name,
        external_id: text_of(resource, "externalId").as_deref(),
        resource: &text,
        version,
        created_ms,
        updated_ms: now,
    })?;
    let before: Vec<String> = members_of(tx, id)?.into_iter().map(|(u, _)| u).collect();
    let mut changed = Vec::new();
    for gone in before.iter().filter(|u| !members.contains(u)) {
        tx.remove_scim_member(id, gone)?;
        changed.push(gone.clone());
    }
    for new in members.iter().filter(|u| !before.contains(u)) {
        tx.add_scim_member(tenant, id, new)?;
        changed.push(new.clone());
    }
    Ok(changed)
}

/// Keeps only `attributes` (plus `id` and `schemas`), or drops `excluded`
/// (never `id` or `schemas`).
pub(crate) fn project(resource: &Value, attributes: &[AttrPath], excluded: &[AttrPath]) -> Value {
    let Value::Object(all) = resource else {
        return resource.clone();
    };
    let named = |path: &AttrPath| -> Option<String> {
        match &path.schema {
            Some(s) if !is_core(s) => key_of(all, s),
            _ => key_of(all, &path.attr),
        }
    };
    let mut out = Map::new();
    if attributes.is_empty() {
        out = all.clone();
    } else {
        for keep in ["id", "schemas"] {
            if let Some(v) = all.get(keep) {
                out.insert(keep.to_owned(), v.clone());
            }
        }
        for path in attributes {
            let Some(k) = named(path) else { continue };
            let Some(v) = all.get(&k) else { continue };
            // An extension attribute, or a sub-attribute: only that part.
            let (inner, sub) = match (&path.schema, &path.sub) {
                (Some(s), _) if !is_core(s) => (Some(&path.attr), path.sub.as_ref()),
                (_, Some(sub)) => (None, Some(sub)),
                _ => (None, None),
            };
            let part = match (inner, sub) {
                (None, None) => v.clone(),
                (Some(attr), sub) => pick(v, attr, sub),
                (None, Some(sub)) => pick_sub(v, sub),
            };
            merge(&mut out, &k, part);
        }
    }
    for path in excluded {
        if path.attr.eq_ignore_ascii_case("id") || path.attr.eq_ignore_ascii_case("schemas") {
            continue;
        }
        let Some(k) = named(path) else { continue };
        match (&path.schema, &path.sub) {
            (Some(s), _) if !is_core(s) => {
                if let Some(Value::Object(ext)) = out.get_mut(&k)
                    && let Some(a) = key_of(ext, &path.attr)
                {
                    ext.remove(&a);
                }
            }
            (_, Some(sub)) => {
                if let Some(v) = out.get_mut(&k) {
                    drop_sub(v, sub);
                }
            }
            _ => {
                out.remove(&k);
            }
        }
    }
    Value::Object(out)
}

fn pick(v: &Value, attr: &str, sub: Option<&String>) -> Value {
    let Value::Object(o) = v else {
        return Value::Null;
    };
    let mut out = Map::new();
    if let Some(k) = key_of(o, attr)
        && let Some(inner) = o.get(&k)
    {
        out.insert(
            k,
            match sub {
                Some(s) => pick_sub(inner, s),
                None => inner.clone(),
            },
        );
    }
    Value::Object(out)
}

fn pick_sub(v: &Value, sub: &str) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.iter().map(|i| pick_sub(i, sub)).collect()),
        Value::Object(o) => {
            let mut out = Map::new();
            if let Some(k) = key_of(o, sub)
                && let Some(x) = o.get(&k)
            {
                out.insert(k, x.clone());
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn drop_sub(v: &mut Value, sub: &str) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(|i| drop_sub(i, sub)),
        Value::Object(o) => {
            if let Some(k) = key_of(o, sub) {
                o.remove(&k);
            }
        }
        _ => {}
    }
}

/// Puts `part` under `key`, merging objects and lists of objects field by field
/// (two sub-attributes of one attribute asked for separately).
fn merge(out: &mut Map<String, Value>, key: &str, part: Value) {
    match (out.get_mut(key), part) {
        (Some(Value::Object(have)), Value::Object(add)) => {
            for (k, v) in add {
                have.insert(k, v);
            }
        }
        (Some(Value::Array(have)), Value::Array(add)) if have.len() == add.len() => {
            for (h, a) in have.iter_mut().zip(add) {
                if let (Value::Object(h), Value::Object(a)) = (h, a) {
                    for (k, v) in a {
                        h.insert(k, v);
                    }
                }
            }
        }
        (_, part) => {
            out.insert(key.to_owned(), part);
        }
    }
}

/// Parses an `attributes` or `excludedAttributes` parameter.
pub(crate) fn attribute_list(text: Option<&str>) -> Result<Vec<AttrPath>, ScimError> {
    text.map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| attr_path(p).map_err(|e| ScimError::bad("invalidValue", e)))
            .collect()
    })
    .unwrap_or_else(|| Ok(Vec::new()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn attributes_keep_what_is_asked_and_excluded_drops_it() {
        let user = json!({
            "id": "1", "schemas": [USER_SCHEMA], "userName": "ada",
            "name": {"givenName": "Ada", "familyName": "Lovelace"},
            "emails": [{"value": "a@x", "type": "work"}, {"value": "b@x", "type": "home"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "F", "costCenter": "9"},
            "meta": {"version": "W/\"1\""}
        });
        let only = project(
            &user,
            &attribute_list(Some("userName, name.familyName,emails.value,urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department")).unwrap(),
            &[],
        );
        assert_eq!(
            only,
            json!({"id": "1", "schemas": [USER_SCHEMA], "userName": "ada",
                   "name": {"familyName": "Lovelace"},
                   "emails": [{"value": "a@x"}, {"value": "b@x"}],
                   "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "F"}})
        );
        let without = project(
            &user,
            &[],
            &attribute_list(Some("emails,name.givenName,id,meta")).unwrap(),
        );
        assert!(without.get("emails").is_none() && without.get("meta").is_none());
        assert_eq!(without["name"], json!({"familyName": "Lovelace"}));
        assert_eq!(without["id"], "1");
        assert!(attribute_list(Some("user name")).is_err());
    }

    #[test]
    fn user_input_drops_read_only_attributes_and_reads_string_booleans() {
        let (kept, name, active) = user_input(&json!({
            "schemas": [USER_SCHEMA], "id": "forged", "meta": {}, "groups": [{"value": "g"}],
            "userName": " ada@example.com ", "active": "False"
        }))
        .unwrap();
        assert_eq!(name, "ada@example.com");
        assert!(!active);
        assert!(
            kept.get("id").is_none()
                && kept.get("groups").is_none()
                && kept.get("active").is_none()
        );
        for bad in [
            json!({"userName": "x"}),
            json!({"schemas": [GROUP_SCHEMA], "userName": "x"}),
            json!({"schemas": [USER_SCHEMA]}),
            json!({"schemas": [USER_SCHEMA], "userName": "x", "active": "maybe"}),
            json!({"schemas": [USER_SCHEMA], "userName": "x", "emails": "a@x"}),
            json!({"schemas": [USER_SCHEMA], "userName": "x", "password": "hunter2"}),
        ] {
            assert!(user_input(&bad).is_err(), "{bad}");
        }
    }
}
