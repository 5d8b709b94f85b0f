//! The SCIM routes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use uuid::Uuid;

use super::filter::{self, Filter};
use super::resources::{self, GroupRow, UserRow, etag};
use super::{
    ENTERPRISE_USER_SCHEMA, ERROR_SCHEMA, GROUP_SCHEMA, LIST_SCHEMA, MAX_RESULTS, ScimError,
    USER_SCHEMA, patch,
};
use crate::engine::Engine;
use crate::engine::identity::{end_person_sessions, end_sessions_without_roles};
use crate::engine::ledger;
use crate::error::ApiError;
use crate::store::Tx;

/// Largest SCIM request body (a group PUT lists every member).
const SCIM_BODY_LIMIT: usize = 1024 * 1024;
const CONTENT_TYPE: &str = "application/scim+json";

/// The `scimType`s of RFC 7644 §3.12, which travel through the engine as error codes.
const SCIM_TYPES: &[&str] = &[
    "invalidFilter",
    "tooMany",
    "uniqueness",
    "mutability",
    "invalidSyntax",
    "invalidPath",
    "noTarget",
    "invalidValue",
    "invalidVers",
    "sensitive",
];

impl From<ScimError> for ApiError {
    fn from(e: ScimError) -> Self {
        let code = e
            .scim_type
            .and_then(|t| SCIM_TYPES.iter().find(|s| **s == t).copied())
            .unwrap_or("scim_error");
        ApiError::new(e.status, code, e.detail)
    }
}

fn scim_error(e: ApiError) -> ScimError {
    let scim_type = SCIM_TYPES.iter().find(|s| **s == e.code).copied();
    ScimError::new(e.status, scim_type, e.message)
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut body = json!({
            "schemas": [ERROR_SCHEMA],
            "status": self.status.to_string(),
            "detail": self.detail,
        });
        if let Some(t) = self.scim_type {
            body["scimType"] = json!(t);
        }
        let mut r = scim_json(status, &body);
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"paybond-scim\""),
            );
        }
        r
    }
}

fn scim_json(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}

type Answer = Result<Response, ScimError>;

/// The SCIM routes, to nest under `/scim/v2`.
pub(crate) fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/ServiceProviderConfig", get(service_provider_config))
        .route("/Schemas", get(schemas))
        .route("/Schemas/{id}", get(schema))
        .route("/ResourceTypes", get(resource_types))
        .route("/ResourceTypes/{id}", get(resource_type))
        .route("/Users", get(list_all::<Users>).post(create::<Users>))
        .route("/Users/.search", post(search::<Users>))
        .route(
            "/Users/{id}",
            get(get_one::<Users>)
                .put(put::<Users>)
                .patch(patch_one::<Users>)
                .delete(delete::<Users>),
        )
        .route("/Groups", get(list_all::<Groups>).post(create::<Groups>))
        .route("/Groups/.search", post(search::<Groups>))
        .route(
            "/Groups/{id}",
            get(get_one::<Groups>)
                .put(put::<Groups>)
                .patch(patch_one::<Groups>)
                .delete(delete::<Groups>),
        )
        .fallback(|| async { ScimError::not_found("no such SCIM endpoint").into_response() })
        .with_state(engine)
}

/// The tenant of the request's SCIM bearer token, and the base URL resources are
/// located under.
async fn authorized(
    engine: &Arc<Engine>,
    headers: &HeaderMap,
) -> Result<(String, String), ScimError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned())
        .ok_or_else(|| ScimError::new(401, None, "a SCIM bearer token is required"))?;
    let e = engine.clone();
    let tenant = tokio::task::spawn_blocking(move || e.scim_tenant(&token))
        .await
        .map_err(|e| ScimError::new(500, None, e.to_string()))?
        .map_err(scim_error)?;
    Ok((
        tenant,
        format!("{}/scim/v2", crate::server::public_base(headers)),
    ))
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    engine: &Arc<Engine>,
    f: impl FnOnce(&Engine) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ScimError> {
    let e = engine.clone();
    tokio::task::spawn_blocking(move || f(&e))
        .await
        .map_err(|e| ScimError::new(500, None, e.to_string()))?
        .map_err(scim_error)
}

/// A request body as JSON (`application/scim+json` or `application/json`).
fn body_json(headers: &HeaderMap, bytes: &Bytes) -> Result<Value, ScimError> {
    if bytes.len() > SCIM_BODY_LIMIT {
        return Err(ScimError::new(
            413,
            None,
            format!("the request body is over {SCIM_BODY_LIMIT} bytes"),
        ));
    }
    if let Some(kind) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        let kind = kind
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if kind != CONTENT_TYPE && kind != "application/json" {
            return Err(ScimError::new(
                415,
                None,
                format!("Content-Type: expected {CONTENT_TYPE}, got {kind}"),
            ));
        }
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ScimError::bad("invalidSyntax", format!("the body is not JSON: {e}")))
}

/// Whether `If-Match` (absent, `*`, or listing the current ETag) lets a change
/// through; 412 otherwise.
fn check_if_match(headers: &HeaderMap, version: u64) -> Result<(), ScimError> {
    let Some(wanted) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let current = etag(version);
    let strong = format!("\"{version}\"");
    let ok = wanted
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == current || t == strong);
    if ok {
        Ok(())
    } else {
        Err(ScimError::new(
            412,
            None,
            format!("the resource has changed: its version is {current}"),
        ))
    }
}

fn with_etag(mut r: Response, version: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn not_modified(headers: &HeaderMap, version: u64) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t == etag(version))
        })
}

// ---- discovery ----

async fn service_provider_config(State(engine): State<Arc<Engine>>, headers: HeaderMap) -> Answer {
    let (_, base) = authorized(&engine, &headers).await?;
    Ok(scim_json(
        StatusCode::OK,
        &json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "documentationUri": "https://paybond.dev/docs/identity",
            "patch": {"supported": true},
            "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": true, "maxResults": MAX_RESULTS},
            "changePassword": {"supported": false},
            "sort": {"supported": false},
            "etag": {"supported": true},
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "OAuth Bearer Token",
                "description": "A token made with `paybond identity scim-token create`",
                "primary": true
            }],
            "meta": {"resourceType": "ServiceProviderConfig",
                     "location": format!("{base}/ServiceProviderConfig")}
        }),
    ))
}

fn attribute(name: &str, kind: &str, extra: Value) -> Value {
    let mut a = json!({
        "name": name, "type": kind, "multiValued": false, "description": name,
        "required": false, "caseExact": false, "mutability": "readWrite",
        "returned": "default", "uniqueness": "none"
    });
    if let (Value::Object(a), Value::Object(extra)) = (&mut a, extra) {
        for (k, v) in extra {
            a.insert(k, v);
        }
    }
    a
}

fn sub_attributes(names: &[(&str, &str)]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|(n, t)| attribute(n, t, json!({})))
            .collect(),
    )
}

fn multi_complex(name: &str, subs: &[(&str, &str)], extra: Value) -> Value {
    let mut a = attribute(
        name,
        "complex",
        json!({"multiValued": true, "subAttributes": sub_attributes(subs)}),
    );
    if let (Value::Object(a), Value::Object(extra)) = (&mut a, extra) {
        for (k, v) in extra {
            a.insert(k, v);
        }
    }
    a
}

fn schema_documents(base: &str) -> Vec<Value> {
    let user = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": USER_SCHEMA, "name": "User", "description": "A person of the tenant",
        "attributes": [
            attribute("userName", "string", json!({"required": true, "uniqueness": "server"})),
            attribute("name", "complex", json!({"subAttributes": sub_attributes(&[
                ("formatted", "string"), ("familyName", "string"), ("givenName", "string"),
                ("middleName", "string"), ("honorificPrefix", "string"), ("honorificSuffix", "string")])})),
            attribute("displayName", "string", json!({})),
            attribute("nickName", "string", json!({})),
            attribute("title", "string", json!({})),
            attribute("userType", "string", json!({})),
            attribute("preferredLanguage", "string", json!({})),
            attribute("locale", "string", json!({})),
            attribute("timezone", "string", json!({})),
            attribute("active", "boolean", json!({})),
            multi_complex("emails", &[("value", "string"), ("display", "string"), ("type", "string"), ("primary", "boolean")], json!({})),
            multi_complex("phoneNumbers", &[("value", "string"), ("type", "string"), ("primary", "boolean")], json!({})),
            multi_complex("groups", &[("value", "string"), ("$ref", "reference"), ("display", "string"), ("type", "string")],
                json!({"mutability": "readOnly"})),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{USER_SCHEMA}")}
    });
    let group = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": GROUP_SCHEMA, "name": "Group", "description": "A group of people; mapped to a tenant role",
        "attributes": [
            attribute("displayName", "string", json!({"required": true})),
            multi_complex("members", &[("value", "string"), ("$ref", "reference"), ("display", "string"), ("type", "string")],
                json!({})),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{GROUP_SCHEMA}")}
    });
    let enterprise = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": ENTERPRISE_USER_SCHEMA, "name": "EnterpriseUser", "description": "Enterprise User",
        "attributes": [
            attribute("employeeNumber", "string", json!({})),
            attribute("costCenter", "string", json!({})),
            attribute("organization", "string", json!({})),
            attribute("division", "string", json!({})),
            attribute("department", "string", json!({})),
            attribute("manager", "complex", json!({"subAttributes": sub_attributes(&[
                ("value", "string"), ("$ref", "reference"), ("displayName", "string")])})),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{ENTERPRISE_USER_SCHEMA}")}
    });
    vec![user, group, enterprise]
}

fn list(resources: Vec<Value>, total: usize, start: usize) -> Value {
    json!({
        "schemas": [LIST_SCHEMA],
        "totalResults": total,
        "startIndex": start,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

async fn schemas(State(engine): State<Arc<Engine>>, headers: HeaderMap) -> Answer {
    let (_, base) = authorized(&engine, &headers).await?;
    let all = schema_documents(&base);
    let n = all.len();
    Ok(scim_json(StatusCode::OK, &list(all, n, 1)))
}

async fn schema(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let (_, base) = authorized(&engine, &headers).await?;
    schema_documents(&base)
        .into_iter()
        .find(|s| {
            s["id"]
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case(&id))
        })
        .map(|s| scim_json(StatusCode::OK, &s))
        .ok_or_else(|| ScimError::not_found(format!("no schema `{id}`")))
}

fn resource_type_documents(base: &str) -> Vec<Value> {
    vec![
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "User", "name": "User", "endpoint": "/Users", "description": "People",
            "schema": USER_SCHEMA,
            "schemaExtensions": [{"schema": ENTERPRISE_USER_SCHEMA, "required": false}],
            "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User")}
        }),
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "Group", "name": "Group", "endpoint": "/Groups", "description": "Groups",
            "schema": GROUP_SCHEMA, "schemaExtensions": [],
            "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/Group")}
        }),
    ]
}

async fn resource_types(State(engine): State<Arc<Engine>>, headers: HeaderMap) -> Answer {
    let (_, base) = authorized(&engine, &headers).await?;
    let all = resource_type_documents(&base);
    let n = all.len();
    Ok(scim_json(StatusCode::OK, &list(all, n, 1)))
}

async fn resource_type(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let (_, base) = authorized(&engine, &headers).await?;
    resource_type_documents(&base)
        .into_iter()
        .find(|s| {
            s["id"]
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case(&id))
        })
        .map(|s| scim_json(StatusCode::OK, &s))
        .ok_or_else(|| ScimError::not_found(format!("no resource type `{id}`")))
}

// ---- queries ----

/// A list's parameters (query string or `.search` body).
#[derive(Debug, Default)]
struct ListQuery {
    filter: Option<Filter>,
    start: usize,
    count: usize,
    attributes: Vec<filter::AttrPath>,
    excluded: Vec<filter::AttrPath>,
}

fn number(text: Option<&str>, name: &str) -> Result<Option<i64>, ScimError> {
    text.map(|t| {
        t.trim()
            .parse::<i64>()
            .map_err(|_| ScimError::bad("invalidValue", format!("`{name}` must be an integer")))
    })
    .transpose()
}

impl ListQuery {
    fn parse(
        filter: Option<&str>,
        start: Option<i64>,
        count: Option<i64>,
        attributes: Option<&str>,
        excluded: Option<&str>,
    ) -> Result<Self, ScimError> {
        Ok(Self {
            filter: filter
                .map(|f| filter::parse(f).map_err(|e| ScimError::bad("invalidFilter", e)))
                .transpose()?,
            start: usize::try_from(start.unwrap_or(1).max(1)).unwrap_or(1),
            count: usize::try_from(count.unwrap_or(100).max(0))
                .unwrap_or(0)
                .min(MAX_RESULTS),
            attributes: resources::attribute_list(attributes)?,
            excluded: resources::attribute_list(excluded)?,
        })
    }

    fn from_params(q: &HashMap<String, String>) -> Result<Self, ScimError> {
        let get = |k: &str| {
            q.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        Self::parse(
            get("filter"),
            number(get("startIndex"), "startIndex")?,
            number(get("count"), "count")?,
            get("attributes"),
            get("excludedAttributes"),
        )
    }

    fn from_body(body: &Value) -> Result<Self, ScimError> {
        let text = |k: &str| -> Option<String> {
            match filter::member(body, k)? {
                Value::String(s) => Some(s.clone()),
                Value::Array(a) => Some(
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                _ => None,
            }
        };
        let int = |k: &str| filter::member(body, k).and_then(Value::as_i64);
        Self::parse(
            text("filter").as_deref(),
            int("startIndex"),
            int("count"),
            text("attributes").as_deref(),
            text("excludedAttributes").as_deref(),
        )
    }

    /// The page of `all` (already in order) that matches.
    fn answer(&self, all: Vec<Value>) -> Value {
        let matching: Vec<Value> = all
            .into_iter()
            .filter(|r| self.filter.as_ref().is_none_or(|f| f.matches(r)))
            .collect();
        let total = matching.len();
        let page: Vec<Value> = matching
            .into_iter()
            .skip(self.start - 1)
            .take(self.count)
            .map(|r| resources::project(&r, &self.attributes, &self.excluded))
            .collect();
        list(page, total, self.start)
    }
}

/// Every user of the tenant as SCIM shows them.
fn users_json(tx: &dyn Tx, tenant: &str, base: &str) -> Result<Vec<Value>, ScimError> {
    let mut groups: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let rows = tx.scim_memberships_by_user(tenant)?;
    for (user, gid, name) in rows {
        groups.entry(user).or_default().push((gid, name));
    }
    Ok(resources::all_users(tx, tenant)?
        .iter()
        .map(|u| resources::user_json(u, groups.get(&u.id).map_or(&[][..], Vec::as_slice), base))
        .collect())
}

fn groups_json(tx: &dyn Tx, tenant: &str, base: &str) -> Result<Vec<Value>, ScimError> {
    let mut members: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let rows = tx.scim_memberships_by_group(tenant)?;
    for (group, uid, name) in rows {
        members.entry(group).or_default().push((uid, name));
    }
    Ok(resources::all_groups(tx, tenant)?
        .iter()
        .map(|g| resources::group_json(g, members.get(&g.id).map_or(&[][..], Vec::as_slice), base))
        .collect())
}

/// A SCIM resource type (users or groups): what the handlers below read and
/// change of it, so that each handler is written once for both.
trait Resource: Send + 'static {
    /// A stored resource.
    type Row: Send;

    /// Every resource of the tenant as SCIM shows them.
    fn all_json(tx: &dyn Tx, tenant: &str, base: &str) -> Result<Vec<Value>, ScimError>;

    /// Resource `id` of the tenant, or 404.
    fn load(tx: &dyn Tx, tenant: &str, id: &str) -> Result<Self::Row, ScimError>;

    /// Its version (its ETag).
    fn version(row: &Self::Row) -> u64;

    /// Resource `id` as SCIM shows it, with its version.
    fn answer(tx: &dyn Tx, tenant: &str, id: &str, base: &str) -> Result<(Value, u64), ScimError>;

    /// Saves `input` as resource `id` (`before`: as it stood), with what that
    /// means for sessions, and puts it on the ledger.
    fn store(
        tx: &dyn Tx,
        tenant: &str,
        now: i64,
        before: Option<&Self::Row>,
        id: &str,
        input: &Value,
    ) -> Result<(), ScimError>;

    /// The document a PATCH edits.
    fn editable(tx: &dyn Tx, row: &Self::Row) -> Result<Value, ScimError>;

    /// Deletes it, with what that means for sessions, and puts it on the ledger.
    fn remove(tx: &dyn Tx, tenant: &str, now: i64, row: Self::Row) -> Result<(), ApiError>;
}

struct Users;
struct Groups;

impl Resource for Users {
    type Row = UserRow;

    fn all_json(tx: &dyn Tx, tenant: &str, base: &str) -> Result<Vec<Value>, ScimError> {
        users_json(tx, tenant, base)
    }

    fn load(tx: &dyn Tx, tenant: &str, id: &str) -> Result<UserRow, ScimError> {
        resources::load_user(tx, tenant, id)?
            .ok_or_else(|| ScimError::not_found(format!("no user `{id}`")))
    }

    fn version(row: &UserRow) -> u64 {
        row.version
    }

    fn answer(tx: &dyn Tx, tenant: &str, id: &str, base: &str) -> Result<(Value, u64), ScimError> {
        let user = Self::load(tx, tenant, id)?;
        let groups = resources::groups_of(tx, id)?;
        Ok((resources::user_json(&user, &groups, base), user.version))
    }

    fn store(
        tx: &dyn Tx,
        tenant: &str,
        now: i64,
        before: Option<&UserRow>,
        id: &str,
        input: &Value,
    ) -> Result<(), ScimError> {
        store_user(tx, tenant, now, before, id, input)
    }

    fn editable(_: &dyn Tx, row: &UserRow) -> Result<Value, ScimError> {
        let mut doc = row.resource.clone();
        if let Value::Object(o) = &mut doc {
            o.insert("active".to_owned(), json!(row.active));
        }
        Ok(doc)
    }

    fn remove(tx: &dyn Tx, tenant: &str, now: i64, row: UserRow) -> Result<(), ApiError> {
        let id = &row.id;
        tx.delete_scim_user(tenant, id)?;
        end_person_sessions(tx, id)?;
        ledger::append(
            tx,
            tenant,
            "identity.user_deleted",
            json!({"user_id": id}),
            now,
        )?;
        Ok(())
    }
}

impl Resource for Groups {
    type Row = GroupRow;

    fn all_json(tx: &dyn Tx, tenant: &str, base: &str) -> Result<Vec<Value>, ScimError> {
        groups_json(tx, tenant, base)
    }

    fn load(tx: &dyn Tx, tenant: &str, id: &str) -> Result<GroupRow, ScimError> {
        resources::load_group(tx, tenant, id)?
            .ok_or_else(|| ScimError::not_found(format!("no group `{id}`")))
    }

    fn version(row: &GroupRow) -> u64 {
        row.version
    }

    fn answer(tx: &dyn Tx, tenant: &str, id: &str, base: &str) -> Result<(Value, u64), ScimError> {
        let group = Self::load(tx, tenant, id)?;
        let members = resources::members_of(tx, id)?;
        Ok((resources::group_json(&group, &members, base), group.version))
    }

    fn store(
        tx: &dyn Tx,
        tenant: &str,
        now: i64,
        before: Option<&GroupRow>,
        id: &str,
        input: &Value,
    ) -> Result<(), ScimError> {
        store_group(tx, tenant, now, before, id, input)
    }

    /// Its attributes and its members' ids.
    fn editable(tx: &dyn Tx, row: &GroupRow) -> Result<Value, ScimError> {
        let mut doc = row.resource.clone();
        let members: Vec<Value> = resources::members_of(tx, &row.id)?
            .into_iter()
            .map(|(id, _)| json!({"value": id}))
            .collect();
        if let Value::Object(o) = &mut doc {
            o.insert("members".to_owned(), Value::Array(members));
        }
        Ok(doc)
    }

    fn remove(tx: &dyn Tx, tenant: &str, now: i64, row: GroupRow) -> Result<(), ApiError> {
        let id = &row.id;
        let members: Vec<String> = resources::members_of(tx, id)?
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        tx.delete_scim_group(tenant, id)?;
        end_sessions_without_roles(tx, tenant, &members)?;
        ledger::append(
            tx,
            tenant,
            "identity.group_deleted",
            json!({"group_id": id, "display_name": row.display_name}),
            now,
        )?;
        Ok(())
    }
}

/// A page of `R` as `query` (read once the token is checked) asks for it.
async fn list_of<R: Resource>(
    engine: &Arc<Engine>,
    headers: &HeaderMap,
    query: impl FnOnce() -> Result<ListQuery, ScimError>,
) -> Answer {
    let (tenant, base) = authorized(engine, headers).await?;
    let query = query()?;
    let all = blocking(engine, move |e| {
        e.read(|tx, _| R::all_json(tx, &tenant, &base).map_err(ApiError::from))
    })
    .await?;
    Ok(scim_json(StatusCode::OK, &query.answer(all)))
}

async fn list_all<R: Resource>(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    list_of::<R>(&engine, &headers, || ListQuery::from_params(&q)).await
}

async fn search<R: Resource>(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let body = || ListQuery::from_body(&body_json(&headers, &bytes)?);
    list_of::<R>(&engine, &headers, body).await
}

/// One resource, answered with its ETag (304 when `If-None-Match` has it).
fn one_answer(
    headers: &HeaderMap,
    status: StatusCode,
    resource: &Value,
    version: u64,
    q: &ListQuery,
) -> Response {
    if status == StatusCode::OK && not_modified(headers, version) {
        return with_etag(StatusCode::NOT_MODIFIED.into_response(), version);
    }
    with_etag(
        scim_json(
            status,
            &resources::project(resource, &q.attributes, &q.excluded),
        ),
        version,
    )
}

async fn get_one<R: Resource>(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let (tenant, base) = authorized(&engine, &headers).await?;
    let query = ListQuery::from_params(&q)?;
    let (json, version) = blocking(&engine, move |e| {
        e.read(|tx, _| R::answer(tx, &tenant, &id, &base).map_err(ApiError::from))
    })
    .await?;
    Ok(one_answer(&headers, StatusCode::OK, &json, version, &query))
}

// ---- changes ----

/// Runs `change` in one transaction holding the tenant's lock and answers the
/// resource it leaves, with its ETag (and its Location when `status` is 201).
async fn answer_change(
    engine: &Arc<Engine>,
    headers: &HeaderMap,
    tenant: String,
    status: StatusCode,
    change: impl FnOnce(&dyn Tx, i64) -> Result<(Value, u64), ApiError> + Send + 'static,
) -> Answer {
    let (json, version) = blocking(engine, move |e| e.tx_in(&tenant, change)).await?;
    let mut r = one_answer(headers, status, &json, version, &ListQuery::default());
    if status == StatusCode::CREATED
        && let Some(loc) = json["meta"]["location"].as_str()
        && let Ok(v) = HeaderValue::from_str(loc)
    {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

/// Resource `id` as it stands, if `If-Match` lets a change through.
fn to_change<R: Resource>(
    tx: &dyn Tx,
    tenant: &str,
    id: &str,
    headers: &HeaderMap,
) -> Result<R::Row, ScimError> {
    let row = R::load(tx, tenant, id)?;
    check_if_match(headers, R::version(&row))?;
    Ok(row)
}

async fn create<R: Resource>(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let (tenant, base) = authorized(&engine, &headers).await?;
    let input = body_json(&headers, &bytes)?;
    let id = Uuid::now_v7().to_string();
    let t = tenant.clone();
    answer_change(
        &engine,
        &headers,
        tenant,
        StatusCode::CREATED,
        move |tx, now| {
            R::store(tx, &t, now, None, &id, &input)?;
            Ok(R::answer(tx, &t, &id, &base)?)
        },
    )
    .await
}

async fn put<R: Resource>(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Answer {
    let (tenant, base) = authorized(&engine, &headers).await?;
    let input = body_json(&headers, &bytes)?;
    let (t, h) = (tenant.clone(), headers.clone());
    answer_change(&engine, &headers, tenant, StatusCode::OK, move |tx, now| {
        let before = to_change::<R>(tx, &t, &id, &h)?;
        R::store(tx, &t, now, Some(&before), &id, &input)?;
        Ok(R::answer(tx, &t, &id, &base)?)
    })
    .await
}

async fn patch_one<R: Resource>(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Answer {
    let (tenant, base) = authorized(&engine, &headers).await?;
    let ops = body_json(&headers, &bytes)?;
    let (t, h) = (tenant.clone(), headers.clone());
    answer_change(&engine, &headers, tenant, StatusCode::OK, move |tx, now| {
        let before = to_change::<R>(tx, &t, &id, &h)?;
        let mut doc = R::editable(tx, &before)?;
        patch::apply(&mut doc, &ops)?;
        R::store(tx, &t, now, Some(&before), &id, &doc)?;
        Ok(R::answer(tx, &t, &id, &base)?)
    })
    .await
}

async fn delete<R: Resource>(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    let (tenant, _) = authorized(&engine, &headers).await?;
    blocking(&engine, move |e| {
        e.tx_in(&tenant, |tx, now| {
            let row = to_change::<R>(tx, &tenant, &id, &headers)?;
            R::remove(tx, &tenant, now, row)
        })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- users: changes ----

/// Saves a user and does what its state means for sessions; on the ledger.
fn store_user(
    tx: &dyn Tx,
    tenant: &str,
    now: i64,
    before: Option<&UserRow>,
    id: &str,
    input: &Value,
) -> Result<(), ScimError> {
    let (resource, user_name, active) = resources::user_input(input)?;
    let version = before.map_or(1, |u| u.version + 1);
    let created = before.map_or(now, |u| u.created_ms);
    resources::save_user(
        tx, tenant, id, &resource, &user_name, active, version, created, now,
    )?;
    if !active {
        end_person_sessions(tx, id)?;
    }
    ledger::append(
        tx,
        tenant,
        if before.is_some() {
            "identity.user_updated"
        } else {
            "identity.user_created"
        },
        json!({"user_id": id, "active": active}),
        now,
    )?;
    Ok(())
}

// ---- groups: changes ----

fn store_group(
    tx: &dyn Tx,
    tenant: &str,
    now: i64,
    before: Option<&GroupRow>,
    id: &str,
    input: &Value,
) -> Result<(), ScimError> {
    let (resource, name, members) = resources::group_input(input)?;
    let version = before.map_or(1, |g| g.version + 1);
    let created = before.map_or(now, |g| g.created_ms);
    let mut changed = resources::save_group(
        tx, tenant, id, &resource, &name, &members, version, created, now,
    )?;
    if before.is_some_and(|g| g.display_name != name) {
        // Renamed: its role mapping may have changed for every member.
        changed.extend(members.iter().cloned());
    }
    end_sessions_without_roles(tx, tenant, &changed)?;
    ledger::append(
        tx,
        tenant,
        if before.is_some() {
            "identity.group_updated"
        } else {
            "identity.group_created"
        },
        json!({"group_id": id, "display_name": name, "members": members.len()}),
        now,
    )?;
    Ok(())
}
