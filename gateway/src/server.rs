//! The HTTP server (the contract is `openapi.json` in this crate): every route over the same [`Engine`], the error
//! envelope on every non-2xx answer, a body limit, `/healthz`, `/metrics` and
//! `/openapi.json`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use paybond_middleware_core::wire::{
    ApprovalState, CompleteRequest, ErrorBody, EvidenceRequest, LifecycleStatus, PreflightRequest,
    Principal, SandboxBootstrapRequest, VerifyRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::engine::Engine;
use crate::engine::lifecycle::CreateIntentRequest;
use crate::error::ApiError;

/// Largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
struct AppState {
    engine: Arc<Engine>,
    /// Time a request's body may take to arrive.
    body_timeout: Duration,
}

/// An error answer: the envelope, the status and a request id.
struct HttpError {
    error: ApiError,
    request_id: String,
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: self.error.code.to_owned(),
            message: self.error.message,
            request_id: self.request_id.clone(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            response.headers_mut().insert("x-request-id", v);
        }
        if let Some(secs) = self.error.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

fn fail(error: ApiError) -> HttpError {
    HttpError {
        error,
        request_id: Uuid::new_v4().to_string(),
    }
}

type Answer = Result<Response, HttpError>;

fn json<T: Serialize>(value: &T) -> Answer {
    serde_json::to_vec(value)
        .map(|bytes| {
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                bytes,
            )
                .into_response()
        })
        .map_err(|e| fail(ApiError::internal(e)))
}

/// The credentials of a request, checked before the operation runs.
struct Credentials {
    api_key: Option<String>,
    tenant_header: Option<String>,
    idempotency_key: Option<String>,
}

fn credentials(headers: &HeaderMap) -> Result<Credentials, HttpError> {
    let text = |name: &str| -> Result<Option<String>, HttpError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str().map(str::to_owned).map_err(|_| {
                    fail(ApiError::bad_request(
                        "invalid_header",
                        format!("the {name} header is not visible ASCII"),
                    ))
                })
            })
            .transpose()
    };
    let api_key = text("authorization")?.and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(|k| k.trim().to_owned())
    });
    Ok(Credentials {
        api_key,
        tenant_header: text("x-tenant-id")?,
        idempotency_key: text("idempotency-key")?,
    })
}

/// Authenticates, then runs `f` with the engine and the caller.
async fn with_engine<T, F>(state: &AppState, creds: Credentials, f: F) -> Result<T, HttpError>
where
    F: AsyncFnOnce(&Arc<Engine>, &Principal, Option<String>) -> Result<T, ApiError>,
{
    let (principal, key) = authenticated(state, creds).await?;
    f(&state.engine, &principal, key).await.map_err(fail)
}

/// Who the request's API key is (from the engine's memory when it can, else from
/// the store), checked against `x-tenant-id`; and its idempotency key.
async fn authenticated(
    state: &AppState,
    creds: Credentials,
) -> Result<(Principal, Option<String>), HttpError> {
    let Some(key) = creds.api_key else {
        return Err(fail(ApiError::unauthorized(
            "missing `Authorization: Bearer <api key>`",
        )));
    };
    let principal = match state.engine.authenticate_cached(&key) {
        Some(p) => p,
        None => state.engine.authenticate(&key).await.map_err(fail)?,
    };
    if let Some(t) = &creds.tenant_header
        && *t != principal.tenant_id
    {
        return Err(fail(ApiError::forbidden(
            "tenant_mismatch",
            "x-tenant-id does not match the API key's tenant",
        )));
    }
    Ok((principal, creds.idempotency_key))
}

/// Parses a JSON body; malformed JSON is 400, a wrong or missing field 422, naming it.
/// Runs after authentication, so a caller without a valid key learns nothing about
/// the request's shape.
fn parse<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        if inner.is_data() {
            ApiError::unprocessable("invalid_field", message)
        } else {
            ApiError::bad_request("malformed_json", message)
        }
    })
}

/// What a route's body may be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Accepts {
    /// `application/json` (or `application/*+json`).
    Json,
    /// A policy file: JSON or YAML (`application/yaml`, `text/yaml`, `text/plain`, …).
    PolicyText,
}

/// 415 unless a non-empty body's `Content-Type` is one the route reads. An empty
/// body (an approve, a fund) needs none.
fn check_content_type(
    headers: &HeaderMap,
    bytes: &Bytes,
    accepts: Accepts,
) -> Result<(), HttpError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = given
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    let yaml = matches!(
        essence.as_str(),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" | "text/plain"
    );
    let ok = match accepts {
        Accepts::Json => json,
        Accepts::PolicyText => json || yaml,
    };
    if ok {
        return Ok(());
    }
    let wanted = match accepts {
        Accepts::Json => "application/json",
        Accepts::PolicyText => "application/json or application/yaml",
    };
    let shown = if given.is_empty() { "none" } else { given };
    Err(fail(ApiError::new(
        415,
        "unsupported_media_type",
        format!("Content-Type: expected {wanted}, got {shown}"),
    )))
}

/// Reads a JSON body within [`BODY_LIMIT`].
async fn body(state: &AppState, request: Request) -> Result<(HeaderMap, Bytes), HttpError> {
    body_of(state, request, Accepts::Json).await
}

/// Reads the body within [`BODY_LIMIT`] and the state's body timeout, and checks
/// its content type.
async fn body_of(
    state: &AppState,
    request: Request,
    accepts: Accepts,
) -> Result<(HeaderMap, Bytes), HttpError> {
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, BODY_LIMIT);
    let bytes = match tokio::time::timeout(state.body_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return Err(fail(ApiError::new(
                413,
                "body_too_large",
                format!("the request body is over {BODY_LIMIT} bytes"),
            )));
        }
        Err(_) => {
            return Err(fail(ApiError::new(
                408,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    state.body_timeout.as_secs_f64()
                ),
            )));
        }
    };
    check_content_type(&parts.headers, &bytes, accepts)?;
    Ok((parts.headers, bytes))
}

/// This gateway's base URL as the client reached it: its `Host`, over https when
/// a proxy in front says so (`X-Forwarded-Proto: https`). What it is used for (a
/// redirect URI registered at an identity provider, SCIM locations) is checked
/// by whoever follows it.
pub(crate) fn public_base(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

fn uuid_param(raw: &str, name: &str) -> Result<Uuid, HttpError> {
    Uuid::parse_str(raw).map_err(|_| {
        fail(ApiError::bad_request(
            "invalid_path_parameter",
            format!("{name} `{raw}` is not a UUID"),
        ))
    })
}

/// A request body whose wire type has no `idempotency_key` field of its own.
#[derive(serde::Deserialize)]
struct WithKey<T> {
    #[serde(flatten)]
    request: T,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// The idempotency key of a request: header and body field must agree when both are set.
fn merge_key(header: Option<String>, body: Option<String>) -> Result<Option<String>, ApiError> {
    match (header, body) {
        (Some(h), Some(b)) if h != b => Err(ApiError::bad_request(
            "idempotency_key_mismatch",
            "the idempotency-key header and the body's idempotency_key differ",
        )),
        (h, b) => Ok(h.or(b)),
    }
}

async fn principal(State(s): State<AppState>, headers: HeaderMap) -> Answer {
    let p = with_engine(&s, credentials(&headers)?, async move |_, p, _| {
        Ok(p.clone())
    })
    .await?;
    json(&p)
}

async fn verify(State(s): State<AppState>, request: Request) -> Answer {
    let (headers, bytes) = body(&s, request).await?;
    let (principal, key) = authenticated(&s, credentials(&headers)?).await?;
    let mut req: VerifyRequest = parse(&bytes).map_err(fail)?;
    req.idempotency_key = merge_key(key, req.idempotency_key.take()).map_err(fail)?;
    // The decision, as a span: what was asked and what was decided, never the
    // token, the approval token or the idempotency key.
    let span = tracing::info_span!(
        "paybond.verify",
        "gen_ai.tool.name" = req.tool_name.as_deref(),
        "gen_ai.tool.call.id" = req.tool_call_id.as_deref(),
        "paybond.tenant" = %principal.tenant_id,
        "paybond.intent_id" = %req.intent_id,
        "paybond.operation" = %req.operation,
        "paybond.amount_cents" = req.requested_spend_cents,
        "paybond.currency" = req.currency.as_deref(),
        "paybond.outcome" = tracing::field::Empty,
        "paybond.reason_code" = tracing::field::Empty,
        "paybond.decision_id" = tracing::field::Empty,
        "paybond.policy_version" = tracing::field::Empty,
    );
    let r = s
        .engine
        .verify(principal, req)
        .instrument(span.clone())
        .await
        .map_err(fail)?;
    span.record("paybond.outcome", r.decision().as_str());
    if let Some(code) = r.reason_codes.first() {
        span.record("paybond.reason_code", code.as_str());
    }
    if let Some(id) = r.decision_id {
        span.record("paybond.decision_id", tracing::field::display(id));
    }
    if let Some(version) = r.policy_version {
        span.record("paybond.policy_version", version);
    }
    json(&r)
}

async fn preflight(State(s): State<AppState>, request: Request) -> Answer {
    let (headers, bytes) = body(&s, request).await?;
    let creds = credentials(&headers)?;
    let r = with_engine(&s, creds, async move |e, p, _| {
        let req: PreflightRequest = parse(&bytes)?;
        e.preflight(p, &req).await
    })
    .await?;
    json(&r)
}

async fn complete(State(s): State<AppState>, Path(id): Path<String>, request: Request) -> Answer {
    let id = uuid_param(&id, "decision_id")?;
    let (headers, bytes) = body(&s, request).await?;
    let (principal, key) = authenticated(&s, credentials(&headers)?).await?;
    let req: WithKey<CompleteRequest> = parse(&bytes).map_err(fail)?;
    let key = merge_key(key, req.idempotency_key).map_err(fail)?;
    let span = tracing::info_span!(
        "paybond.complete",
        "paybond.tenant" = %principal.tenant_id,
        "paybond.decision_id" = %id,
        "paybond.finalization" = req.request.outcome.as_str(),
        "paybond.amount_cents" = req.request.actual_spend_cents,
    );
    let r = s
        .engine
        .complete(principal, id, req.request, key)
        .instrument(span)
        .await
        .map_err(fail)?;
    json(&r)
}

async fn compensation(
    State(s): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Answer {
    let id = uuid_param(&id, "decision_id")?;
    let (headers, bytes) = body(&s, request).await?;
    let creds = credentials(&headers)?;
    let r = with_engine(&s, creds, async move |e, p, key| {
        let req: paybond_middleware_core::wire::CompensationRequest = parse(&bytes)?;
        e.record_compensation(p, id, &req, key.as_deref()).await
    })
    .await?;
    json(&r)
}

async fn bootstrap(State(s): State<AppState>, request: Request) -> Answer {
    let (headers, bytes) = body(&s, request).await?;
    let creds = credentials(&headers)?;
    let r = with_engine(&s, creds, async move |e, p, key| {
        let mut req: SandboxBootstrapRequest = parse(&bytes)?;
        req.idempotency_key = merge_key(key, req.idempotency_key.take())?;
        e.bootstrap_sandbox(p, &req).await
    })
    .await?;
    json(&r)
}

async fn evidence(State(s): State<AppState>, Path(id): Path<String>, request: Request) -> Answer {
    let id = uuid_param(&id, "intent_id")?;
    let (headers, bytes) = body(&s, request).await?;
    let (principal, key) = authenticated(&s, credentials(&headers)?).await?;
    let req: WithKey<EvidenceRequest> = parse(&bytes).map_err(fail)?;
    let key = merge_key(key, req.idempotency_key).map_err(fail)?;
    let r = s
        .engine
        .submit_evidence(principal, id, req.request, key)
        .await
        .map_err(fail)?;
    json(&r)
}

async fn create_intent(State(s): State<AppState>, request: Request) -> Answer {
    let (headers, bytes) = body(&s, request).await?;
    let creds = credentials(&headers)?;
    let r = with_engine(&s, creds, async move |e, p, key| {
        let mut req: CreateIntentRequest = parse(&bytes)?;
        req.idempotency_key = merge_key(key, req.idempotency_key.take())?;
        e.create_intent(p, &req).await
    })
    .await?;
    json(&r)
}

async fn fund_intent(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let id = uuid_param(&id, "intent_id")?;
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.fund_intent(p, id).await
    })
    .await?;
    json(&r)
}

async fn get_intent(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let id = uuid_param(&id, "intent_id")?;
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.get_intent(p, id).await
    })
    .await?;
    json(&r)
}

async fn list_approvals(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer {
    let state = match q.get("state").map(String::as_str) {
        None | Some("" | "all") => None,
        Some("pending") => Some(ApprovalState::Pending),
        Some("approved") => Some(ApprovalState::Approved),
        Some("denied") => Some(ApprovalState::Denied),
        Some("expired") => Some(ApprovalState::Expired),
        Some(other) => {
            return Err(fail(ApiError::bad_request(
                "invalid_query_parameter",
                format!("state `{other}` is not pending, approved, denied or expired"),
            )));
        }
    };
    let limit = number_param(
        &q,
        "limit",
        100,
        1..=u64::from(crate::engine::lifecycle::MAX_APPROVAL_PAGE),
    )?;
    let oldest_first = match q.get("order").map(String::as_str) {
        None | Some("newest") => false,
        Some("oldest") => true,
        Some(other) => {
            return Err(fail(ApiError::bad_request(
                "invalid_query_parameter",
                format!("order `{other}` is not newest or oldest"),
            )));
        }
    };
    let amount = |name: &str| {
        q.contains_key(name)
            .then(|| number_param(&q, name, 0, 0..=crate::engine::decide::MAX_AMOUNT_CENTS))
            .transpose()
    };
    let text = |name: &str| -> Result<Option<String>, HttpError> {
        let value = q.get(name).filter(|v| !v.is_empty()).cloned();
        if let Some(v) = &value {
            crate::engine::bounded(name, Some(v)).map_err(|mut e| {
                e.status = 400;
                e.code = "invalid_query_parameter";
                fail(e)
            })?;
        }
        Ok(value)
    };
    let query = crate::engine::lifecycle::ApprovalQuery {
        state,
        limit: u32::try_from(limit).ok(),
        cursor: q.get("cursor").cloned(),
        oldest_first,
        agent: text("agent")?,
        tool: text("tool")?,
        min_amount_cents: amount("min_amount_cents")?,
        max_amount_cents: amount("max_amount_cents")?,
    };
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.list_approvals(p, &query).await
    })
    .await?;
    json(&r)
}

async fn operator_intents(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer {
    // `state`, or `status` as the Paybond CLI sends it.
    let state = match q
        .get("state")
        .or_else(|| q.get("status"))
        .map(String::as_str)
    {
        None | Some("" | "all") => None,
        Some(name) => Some(
            serde_json::from_value::<LifecycleStatus>(serde_json::Value::String(name.to_owned()))
                .map_err(|_| {
                fail(ApiError::bad_request(
                    "invalid_query_parameter",
                    format!(
                        "state `{name}` is not created, funded, evidence_submitted, \
                             released, refunded or expired"
                    ),
                ))
            })?,
        ),
    };
    let limit = number_param(
        &q,
        "limit",
        100,
        1..=u64::from(crate::engine::operator::MAX_INTENT_PAGE),
    )?;
    let query = crate::engine::operator::IntentQuery {
        state,
        limit: u32::try_from(limit).ok(),
        cursor: q.get("cursor").cloned(),
    };
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.operator_intents(p, &query).await
    })
    .await?;
    json(&r)
}

async fn get_decision(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let id = uuid_param(&id, "decision_id")?;
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.decision(p, id).await
    })
    .await?;
    json(&r)
}

async fn operator_intent(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let id = uuid_param(&id, "intent_id")?;
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.operator_intent(p, id).await
    })
    .await?;
    json(&r)
}

async fn get_approval(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let id = uuid_param(&id, "approval_request_id")?;
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.approval(p, id).await
    })
    .await?;
    json(&r)
}

async fn approve(State(s): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Answer {
    let id = uuid_param(&id, "approval_request_id")?;
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.approve(p, id).await
    })
    .await?;
    json(&r)
}

async fn deny(State(s): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Answer {
    let id = uuid_param(&id, "approval_request_id")?;
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.deny_approval(p, id).await
    })
    .await?;
    json(&r)
}

fn body_text(bytes: &Bytes) -> Result<String, HttpError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        fail(ApiError::bad_request(
            "malformed_body",
            "the body is not UTF-8",
        ))
    })
}

async fn put_org_policy(
    State(s): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Answer {
    let (headers, bytes) = body_of(&s, request, Accepts::PolicyText).await?;
    let creds = credentials(&headers)?;
    let text = body_text(&bytes)?;
    let r = with_engine(&s, creds, async move |e, p, _| {
        e.publish_org_policy(p, &id, &text).await
    })
    .await?;
    json(&r)
}

async fn put_tenant_policy(State(s): State<AppState>, request: Request) -> Answer {
    let (headers, bytes) = body_of(&s, request, Accepts::PolicyText).await?;
    let creds = credentials(&headers)?;
    let text = body_text(&bytes)?;
    let r = with_engine(&s, creds, async move |e, p, _| {
        e.publish_tenant_policy(p, &text).await
    })
    .await?;
    json(&r)
}

async fn issue_key(State(s): State<AppState>, request: Request) -> Answer {
    let (headers, bytes) = body(&s, request).await?;
    let creds = credentials(&headers)?;
    let r = with_engine(&s, creds, async move |e, p, _| {
        let req: crate::engine::IssueKeyRequest = parse(&bytes)?;
        e.issue_api_key(p, &req).await
    })
    .await?;
    json(&r)
}

// ---- identity (tenant admin) ----

async fn create_scim_token(State(s): State<AppState>, request: Request) -> Answer {
    let (headers, bytes) = body(&s, request).await?;
    let creds = credentials(&headers)?;
    let r = with_engine(&s, creds, async move |e, p, _| {
        let req: crate::engine::identity::ScimTokenRequest = if bytes.is_empty() {
            crate::engine::identity::ScimTokenRequest::default()
        } else {
            parse(&bytes)?
        };
        e.create_scim_token(p, &req).await
    })
    .await?;
    json(&r)
}

async fn scim_tokens(State(s): State<AppState>, headers: HeaderMap) -> Answer {
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.scim_tokens(p).await
    })
    .await?;
    json(&r)
}

async fn revoke_scim_token(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.revoke_scim_token(p, &id).await
    })
    .await?;
    json(&r)
}

async fn role_mappings(State(s): State<AppState>, headers: HeaderMap) -> Answer {
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.role_mappings(p).await
    })
    .await?;
    json(&r)
}

/// `PUT /v1/admin/identity/role-mappings/{group}`: `{"role": "operator"}`.
#[derive(serde::Deserialize)]
struct RoleBody {
    role: String,
}

async fn set_role_mapping(
    State(s): State<AppState>,
    Path(group): Path<String>,
    request: Request,
) -> Answer {
    let (headers, bytes) = body(&s, request).await?;
    let creds = credentials(&headers)?;
    let r = with_engine(&s, creds, async move |e, p, _| {
        let req: RoleBody = parse(&bytes)?;
        e.set_role_mapping(p, &group, &req.role).await
    })
    .await?;
    json(&r)
}

async fn remove_role_mapping(
    State(s): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let removed = group.clone();
    with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.remove_role_mapping(p, &group).await
    })
    .await?;
    json(&serde_json::json!({"group": removed, "removed": true}))
}

/// `PUT /v1/admin/identity/oidc`: checked against the issuer's discovery document
/// before it is kept.
async fn configure_oidc(State(s): State<AppState>, request: Request) -> Answer {
    let (headers, bytes) = body(&s, request).await?;
    let creds = credentials(&headers)?;
    let req: crate::engine::identity::OidcRequest = parse(&bytes).map_err(fail)?;
    let issuer = req.issuer.trim_end_matches('/').to_owned();
    if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
        return Err(fail(ApiError::unprocessable(
            "invalid_field",
            format!("issuer `{issuer}` is not an http(s) URL"),
        )));
    }
    // The caller must be a tenant admin before the gateway fetches anything.
    with_engine(&s, credentials(&headers)?, async move |_, p, _| {
        crate::engine::require_role(p, &[paybond_middleware_core::wire::Role::TenantAdmin])
    })
    .await?;
    crate::console::oidc::check_issuer(&issuer)
        .await
        .map_err(|why| fail(ApiError::unprocessable("oidc_issuer_unreachable", why)))?;
    let r = with_engine(&s, creds, async move |e, p, _| {
        e.configure_oidc(p, &req).await
    })
    .await?;
    json(&r)
}

async fn oidc_settings(State(s): State<AppState>, headers: HeaderMap) -> Answer {
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.oidc_settings(p).await
    })
    .await?;
    json(&r)
}

async fn create_service_account(State(s): State<AppState>, request: Request) -> Answer {
    let (headers, bytes) = body(&s, request).await?;
    let creds = credentials(&headers)?;
    let r = with_engine(&s, creds, async move |e, p, _| {
        let req: crate::engine::identity::ServiceAccountRequest = parse(&bytes)?;
        e.create_service_account(p, &req).await
    })
    .await?;
    json(&r)
}

async fn service_accounts(State(s): State<AppState>, headers: HeaderMap) -> Answer {
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.service_accounts(p).await
    })
    .await?;
    json(&r)
}

async fn revoke_service_account(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let revoked = id.clone();
    with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.revoke_service_account(p, &id).await
    })
    .await?;
    json(&serde_json::json!({"id": revoked, "revoked": true}))
}

async fn effective_policy(State(s): State<AppState>, headers: HeaderMap) -> Answer {
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.effective_policy(p).await
    })
    .await?;
    json(&r)
}

async fn ledger_tip(State(s): State<AppState>, headers: HeaderMap) -> Answer {
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.ledger_tip(p).await
    })
    .await?;
    json(&r)
}

/// The largest ledger sequence number a query may name (the store's integer range).
const MAX_SEQ: u64 = i64::MAX as u64;

/// A whole-number query parameter within `range`; absent → `default`; else 400.
fn number_param(
    q: &HashMap<String, String>,
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, HttpError> {
    let Some(raw) = q.get(name) else {
        return Ok(default);
    };
    match raw.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(fail(ApiError::bad_request(
            "invalid_query_parameter",
            format!(
                "{name} `{raw}` is not a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        ))),
    }
}

async fn ledger_events(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer {
    let after = number_param(&q, "after_seq", 0, 0..=MAX_SEQ)?;
    let limit = number_param(&q, "limit", 100, 1..=1000)?;
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.ledger_events(p, after, limit)
            .await
            .map(|events| serde_json::json!({ "events": events }))
    })
    .await?;
    json(&r)
}

async fn create_audit_export(State(s): State<AppState>, request: Request) -> Answer {
    let (headers, bytes) = body(&s, request).await?;
    let creds = credentials(&headers)?;
    let r = with_engine(&s, creds, async move |e, p, _| {
        let req: crate::engine::audit::CreateAuditExportRequest = if bytes.is_empty() {
            crate::engine::audit::CreateAuditExportRequest::default()
        } else {
            parse(&bytes)?
        };
        e.create_audit_export(p, &req).await
    })
    .await?;
    // The bundle is built in the background; the job reports its progress.
    let engine = s.engine.clone();
    let (tenant, job_id) = (r.job.tenant_realm_id.clone(), r.job.id);
    tokio::spawn(async move {
        if let Err(e) = engine.build_audit_export(&tenant, job_id).await {
            tracing::warn!(%job_id, code = e.code, message = %e.message, "an audit export failed");
        }
    });
    let mut response = json(&r)?;
    *response.status_mut() = StatusCode::ACCEPTED;
    Ok(response)
}

async fn audit_exports(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer {
    let limit = number_param(
        &q,
        "limit",
        50,
        1..=u64::from(crate::engine::audit::MAX_EXPORT_PAGE),
    )?;
    let cursor = q.get("cursor").cloned();
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.audit_exports(p, u32::try_from(limit).ok(), cursor.as_deref())
            .await
    })
    .await?;
    json(&r)
}

async fn audit_export(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer {
    let id = uuid_param(&id, "job_id")?;
    let issue = match q.get("issue_download").map(String::as_str) {
        None | Some("" | "0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return Err(fail(ApiError::bad_request(
                "invalid_query_parameter",
                format!("issue_download `{other}` is not 1, true, 0 or false"),
            )));
        }
    };
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.audit_export(p, id, issue).await
    })
    .await?;
    json(&r)
}

async fn delete_audit_export(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let id = uuid_param(&id, "job_id")?;
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.delete_audit_export(p, id).await
    })
    .await?;
    json(&r)
}

/// The ZIP, for a download token (`Authorization: Bearer pbdl_…`) or an operator key.
async fn audit_export_bundle(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    use crate::engine::audit::{BundleCredential, DOWNLOAD_TOKEN_PREFIX};
    let id = uuid_param(&id, "job_id")?;
    let creds = credentials(&headers)?;
    let bytes = match creds.api_key.clone() {
        Some(token) if token.starts_with(DOWNLOAD_TOKEN_PREFIX) => s
            .engine
            .audit_export_bundle(BundleCredential::DownloadToken(&token), id)
            .await
            .map_err(fail)?,
        _ => {
            with_engine(&s, creds, async move |e, p, _| {
                e.audit_export_bundle(BundleCredential::Principal(p), id)
                    .await
            })
            .await?
        }
    };
    let disposition = format!("attachment; filename=\"paybond-audit-export-{id}.zip\"");
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/zip"),
        )],
        bytes,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

async fn signing_keys(State(s): State<AppState>, headers: HeaderMap) -> Answer {
    let r = with_engine(&s, credentials(&headers)?, async move |e, p, _| {
        e.signing_keys(p).await
    })
    .await?;
    json(&r)
}

async fn healthz() -> Answer {
    json(&serde_json::json!({"status": "ok"}))
}

async fn metrics(State(s): State<AppState>) -> Answer {
    let text = s.engine.render_metrics().await.map_err(fail)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response())
}

async fn openapi() -> Answer {
    json(&crate::openapi::document())
}

async fn not_found(request: Request<Body>) -> HttpError {
    fail(ApiError::not_found(
        "route_not_found",
        format!("no route {} {}", request.method(), request.uri().path()),
    ))
}

async fn method_not_allowed(request: Request<Body>) -> HttpError {
    fail(ApiError::new(
        405,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    ))
}

/// The router over `engine`: every route of the contract.
pub fn router(engine: Arc<Engine>) -> Router {
    router_with(engine, ServeLimits::default().body_timeout)
}

fn router_with(engine: Arc<Engine>, body_timeout: Duration) -> Router {
    Router::new()
        .route("/v1/auth/principal", get(principal))
        .route("/verify", post(verify))
        .route("/v1/spend/decisions/{decision_id}", get(get_decision))
        .route("/v1/spend/decisions/{decision_id}/complete", post(complete))
        .route(
            "/v1/spend/decisions/{decision_id}/compensation",
            post(compensation),
        )
        .route("/v1/sandbox/guardrails/bootstrap", post(bootstrap))
        .route(
            "/v1/sandbox/guardrails/{intent_id}/evidence",
            post(evidence),
        )
        .route("/harbor/intents", post(create_intent))
        .route("/harbor/intents/{intent_id}", get(get_intent))
        .route("/harbor/operator/v1/intents", get(operator_intents))
        .route(
            "/harbor/operator/v1/intents/{intent_id}",
            get(operator_intent),
        )
        .route("/harbor/intents/{intent_id}/fund", post(fund_intent))
        .route("/harbor/intents/{intent_id}/evidence", post(evidence))
        .route("/v1/approvals", get(list_approvals))
        .route("/v1/approvals/{approval_request_id}", get(get_approval))
        .route("/v1/approvals/{approval_request_id}/approve", post(approve))
        .route("/v1/approvals/{approval_request_id}/deny", post(deny))
        .route(
            "/v1/admin/org-policies/{org_policy_id}",
            put(put_org_policy),
        )
        .route("/v1/tenant/policy", put(put_tenant_policy))
        .route("/v1/admin/api-keys", post(issue_key))
        .route(
            "/v1/admin/identity/scim-tokens",
            post(create_scim_token).get(scim_tokens),
        )
        .route(
            "/v1/admin/identity/scim-tokens/{id}",
            axum::routing::delete(revoke_scim_token),
        )
        .route(
            "/v1/admin/identity/oidc",
            put(configure_oidc).get(oidc_settings),
        )
        .route("/v1/admin/identity/role-mappings", get(role_mappings))
        .route(
            "/v1/admin/identity/role-mappings/{group}",
            put(set_role_mapping).delete(remove_role_mapping),
        )
        .route(
            "/v1/admin/identity/service-accounts",
            post(create_service_account).get(service_accounts),
        )
        .route(
            "/v1/admin/identity/service-accounts/{id}",
            axum::routing::delete(revoke_service_account),
        )
        .route("/v1/policy/effective", get(effective_policy))
        .route("/v1/spend/preflight", post(preflight))
        .route(
            "/v1/compliance/audit-exports",
            post(create_audit_export).get(audit_exports),
        )
        .route(
            "/v1/compliance/audit-exports/{job_id}",
            get(audit_export).delete(delete_audit_export),
        )
        .route(
            "/v1/compliance/audit-exports/{job_id}/bundle",
            post(audit_export_bundle).get(audit_export_bundle),
        )
        .route("/v1/compliance/signing-keys", get(signing_keys))
        .route("/ledger/v1/tip", get(ledger_tip))
        .route("/ledger/v1/events", get(ledger_events))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .nest_service("/console", crate::console::router(engine.clone()))
        .nest_service("/scim/v2", crate::scim::router(engine.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(traced))
        .with_state(AppState {
            engine,
            body_timeout,
        })
}

/// Serves `request` inside an OpenTelemetry HTTP server span (`<method> <route>`),
/// continuing the caller's W3C trace context when export is on.
async fn traced(request: Request, next: axum::middleware::Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("", |p| p.as_str());
    let method = request.method();
    let span = tracing::info_span!(
        "paybond.http_request",
        "otel.name" = %format_args!("{method} {route}"),
        "otel.kind" = "server",
        "http.request.method" = %method,
        "http.route" = route,
        "url.path" = request.uri().path(),
        "http.response.status_code" = tracing::field::Empty,
    );
    // Nothing listens (no export, logs below INFO): serve it as it is.
    if span.is_disabled() {
        return next.run(request).await;
    }
    #[cfg(feature = "otel")]
    crate::telemetry::continue_trace(&span, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// Runs the expiry sweep every `every` until the engine is dropped elsewhere.
pub fn spawn_sweeper(engine: Arc<Engine>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match engine.sweep().await {
                Ok(report) if report != crate::engine::lifecycle::SweepReport::default() => {
                    tracing::info!(?report, "sweep");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sweep failed"),
            }
        }
    })
}

/// What one server lets its clients hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections served at once. At the cap, the connection idle longest is
    /// closed once it has been idle [`Self::idle_under_pressure`]; until then new
    /// connections wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one peer address may hold at once. Over it, the peer's own
    /// longest-idle connection is closed to make room, or when all of them are
    /// busy the new one is answered 503 `too_many_connections` and closed.
    pub max_connections_per_peer: usize,
    /// How long a connection must have been idle before it is closed to make room
    /// when every slot is taken (instead of at [`Self::header_timeout`]).
    pub idle_under_pressure: Duration,
    /// Time a client has to send a request's headers, counted from when the
    /// connection opens or its previous answer was sent: it bounds slow headers
    /// (slowloris) and idle keep-alive connections alike.
    pub header_timeout: Duration,
    /// Time a request's body may take to arrive (408 after it).
    pub body_timeout: Duration,
}

impl Default for ServeLimits {
    /// 1,024 connections, 256 per peer address, idle connections closed after
    /// 1 s under pressure, 10 s for headers, 30 s for a body.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_peer: 256,
            idle_under_pressure: Duration::from_secs(1),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `engine` on `listener` until `shutdown` resolves, within the default
/// [`ServeLimits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, engine, shutdown, ServeLimits::default()).await
}

/// Serves `engine` on `listener` (HTTP/1.1) until `shutdown` resolves, within
/// `limits`; then stops accepting, lets requests in flight finish, and returns.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
) -> std::io::Result<()> {
    crate::connections::serve(
        listener,
        router_with(engine, limits.body_timeout),
        shutdown,
        limits,
    )
    .await
}
