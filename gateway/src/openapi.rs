//! The OpenAPI 3.1 document of the HTTP contract, built from the route table below
//! and the JSON Schemas of the request and response types (schemars). Served at
//! `/openapi.json` and checked in as `gateway/openapi.json`; tests keep the three
//! (table, router, file) in step.

use paybond_middleware_core::wire::{
    ApprovalStatus, CompensationRecorded, CompensationRequest, CompleteRequest, CompleteResponse,
    ErrorBody, EvidenceRequest, EvidenceResponse, PreflightRequest, PreflightResult, Principal,
    SandboxBootstrapRequest, SandboxBootstrapResponse, VerifyRequest, VerifyResult,
};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::engine::audit::{
    AuditExportDeleted, AuditExportJobResponse, AuditExportList, CreateAuditExportRequest,
    SigningKeys,
};
use crate::engine::identity::{
    CreatedScimToken, CreatedServiceAccount, OidcRequest, OidcSettings, RoleMapping, ScimToken,
    ScimTokenRequest, ServiceAccount, ServiceAccountRequest,
};
use crate::engine::operator::{DecisionRecord, OperatorIntentDetail, OperatorIntentList};
use crate::engine::{EffectivePolicy, IssueKeyRequest, IssuedKey};
use crate::ledger::{LedgerEvent, LedgerTip};
use crate::lifecycle::{ApprovalList, CreateIntentRequest, IntentView};

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// One documented route.
pub struct RouteDoc {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub method: &'static str,
    /// Path with `{param}` placeholders, as routed.
    pub path: &'static str,
    /// Roles that may call it (`none`: no credentials).
    pub roles: &'static str,
    /// What it does.
    pub summary: &'static str,
    request: Option<SchemaFn>,
    response: SchemaFn,
    /// Error statuses it can answer besides 401/403/5xx.
    errors: &'static [u16],
    /// Query parameters.
    query: &'static [(&'static str, &'static str)],
}

#[derive(JsonSchema)]
#[allow(dead_code)] // documents a response shape
struct LedgerEvents {
    events: Vec<LedgerEvent>,
}

#[derive(JsonSchema)]
#[allow(dead_code)] // documents a response shape
struct Health {
    status: String,
}

#[derive(JsonSchema)]
#[allow(dead_code)] // documents a response shape
struct OrgPolicyPublished {
    org_policy_id: String,
    digest: String,
}

#[derive(JsonSchema)]
#[allow(dead_code)] // documents a request shape
struct RoleBody {
    /// `tenant_admin`, `operator` or `analyst`.
    role: String,
}

#[derive(JsonSchema)]
#[allow(dead_code)] // documents a response shape
struct RoleMappingRemoved {
    group: String,
    removed: bool,
}

#[derive(JsonSchema)]
#[allow(dead_code)] // documents a response shape
struct ServiceAccountRevoked {
    id: String,
    revoked: bool,
}

/// A policy file (YAML or JSON): see `policies/policy.schema.json`.
#[derive(JsonSchema)]
#[allow(dead_code)] // documents a request shape
struct PolicyFileBody(paybond_policies::PolicyDocument);

/// Every route of the contract.
pub const ROUTES: &[RouteDoc] = &[
    RouteDoc {
        method: "GET",
        path: "/v1/auth/principal",
        roles: "agent, operator, tenant_admin",
        summary: "Who the API key is: tenant, environment, role.",
        request: None,
        response: schema::<Principal>,
        errors: &[],
        query: &[],
    },
    RouteDoc {
        method: "POST",
        path: "/verify",
        roles: "agent",
        summary: "Decide one call: allow (reserves the amount), hold for approval, or deny. A hold or deny is HTTP 200 with allow false.",
        request: Some(schema::<VerifyRequest>),
        response: schema::<VerifyResult>,
        errors: &[400, 409, 413, 415, 422],
        query: &[],
    },
    RouteDoc {
        method: "GET",
        path: "/harbor/operator/v1/intents",
        roles: "operator, tenant_admin, analyst, agent (read-only)",
        summary: "The tenant's intents, newest first, with their money: budget, consumed, reserved, remaining, open reservations. `state` (or `status`) filters; `next_cursor` pages.",
        request: None,
        response: schema::<OperatorIntentList>,
        errors: &[400],
        query: &[
            (
                "state",
                "created, funded, evidence_submitted, released, refunded, expired or all (`status` is accepted too)",
            ),
            ("limit", "1 to 500 (default 100)"),
            ("cursor", "the previous page's next_cursor"),
        ],
    },
    RouteDoc {
        method: "GET",
        path: "/harbor/operator/v1/intents/{intent_id}",
        roles: "operator, tenant_admin, analyst, agent (read-only)",
        summary: "One intent with its reservations, its decisions (outcome, reason codes, approval request; the latest 200) and the evidence submitted.",
        request: None,
        response: schema::<OperatorIntentDetail>,
        errors: &[400, 404],
        query: &[],
    },
    RouteDoc {
        method: "POST",
        path: "/v1/spend/preflight",
        roles: "agent, operator, tenant_admin",
        summary: "What verify would decide for this call now, with every check it evaluated (name, inputs, result), without reserving, holding or recording anything. Operation `*`: the intent's budget only.",
        request: Some(schema::<PreflightRequest>),
        response: schema::<PreflightResult>,
        errors: &[400, 413, 415, 422],
        query: &[],
    },
    RouteDoc {
        method: "POST",
        path: "/v1/spend/decisions/{decision_id}/compensation",
        roles: "agent, operator, tenant_admin",
        summary: "Records a paid step's compensation (compensated, or compensation_failed with the error) as a `compensation` ledger event linked to its allowed decision.",
        request: Some(schema::<CompensationRequest>),
        response: schema::<CompensationRecorded>,
        errors: &[400, 404, 409, 413, 415, 422],
        query: &[],
    },
    RouteDoc {
        method: "GET",
        path: "/v1/spend/decisions/{decision_id}",
        roles: "agent, operator, tenant_admin",
        summary: "A decision as it was made: its outcome and verify's answer, with the checks it evaluated (name, inputs, result) in order.",
        request: None,
        response: schema::<DecisionRecord>,
        errors: &[400, 404],
        query: &[],
    },
    RouteDoc {
        method: "POST",
        path: "/v1/spend/decisions/{decision_id}/complete",
        roles: "agent",
        summary: "Finalize an allowed decision's reservation: consumed (actual ≤ reserved) or released.",
        request: Some(schema::<CompleteRequest>),
        response: schema::<CompleteResponse>,
        errors: &[400, 404, 409, 413, 415, 422],
        query: &[],
    },
    RouteDoc {
        method: "POST",
        path: "/v1/sandbox/guardrails/bootstrap",
        roles: "agent (sandbox keys)",
        summary: "A funded sandbox intent (budget = requested_spend_cents, one operation) and its capability token.",
        request: Some(schema::<SandboxBootstrapRequest>),
        response: schema::<SandboxBootstrapResponse>,
        errors: &[400, 409, 413, 415, 422],
        query: &[],
    },
    RouteDoc {
        method: "POST",
        path: "/v1/sandbox/guardrails/{intent_id}/evidence",
        roles: "agent",
        summary: "Submit evidence; the cost_and_completion predicate moves the intent's state.",
        request: Some(schema::<EvidenceRequest>),
        response: schema::<EvidenceResponse>,
        errors: &[400, 404, 409, 413, 415, 422],
        query: &[],
    },
    RouteDoc {
        method: "POST",
        path: "/harbor/intents",
        roles: "agent",
        summary: "Create an intent on the simulator rail; it is funded at once and carries a capability token.",
        request: Some(schema::<CreateIntentRequest>),
        response: schema::<IntentView>,
        errors: &[400, 409, 413, 415, 422],
        query: &[],
    },
    RouteDoc {
        method: "GET",
        path: "/harbor/intents/{intent_id}",
        roles: "agent, operator, tenant_admin",
        summary: "An intent's state, budget, consumed and reserved amounts.",
        request: None,
        response: schema::<IntentView>,
        errors: &[400, 404],
        query: &[],
    },
    RouteDoc {
        method: "POST",
        path: "/harbor/intents/{intent_id}/fund",
        roles: "agent",
        summary: "Fund an intent (already funded on the simulator rail): answers it with a fresh capability token.",
        request: None,
        response: schema::<IntentView>,
        errors: &[400, 404, 409],
        query: &[],
    },
    RouteDoc {
        method: "POST",
        path: "/harbor/intents/{intent_id}/evidence",
        roles: "agent",
        summary: "Submit evidence (same as the sandbox route).",
        request: Some(schema::<EvidenceRequest>),
        response: schema::<EvidenceResponse>,
        errors: &[400, 404, 409, 413, 415, 422],
        query: &[],
    },
    RouteDoc {
        method: "GET",
        path: "/v1/approvals",
        roles: "operator, tenant_admin; agent (its tenant's, read-only)",
        summary: "The tenant's approval requests, newest first unless asked otherwise.",
        request: None,
        response: schema::<ApprovalList>,
        errors: &[400],
        query: &[
            (
                "state",
                "pending, approved, denied or expired (default: all)",
            ),
            ("limit", "at most this many, 1 to 500 (default 100)"),
            ("cursor", "next_cursor of the previous page"),
            ("order", "newest (default) or oldest first"),
            ("agent", "only requests this agent (its key's subject) made"),
            ("tool", "only requests for this tool or operation"),
            (
                "min_amount_cents",
                "only requests of at least this many cents",
            ),
            (
                "max_amount_cents",
                "only requests of at most this many cents",
            ),
        ],
    },
    RouteDoc {
        method: "GET",
        path: "/v1/approvals/{approval_request_id}",
        roles: "operator, tenant_admin; agent (its tenant's, read-only)",
        summary: "Where an approval request stands; once approved, carries the approval token once, to the agent key whose call was held.",
        request: None,
        response: schema::<ApprovalStatus>,
        errors: &[400, 404],
        query: &[],
    },
    RouteDoc {
        method: "POST",
        path: "/v1/approvals/{approval_request_id}/approve",
        roles: "operator",
        summary: "One approver's approval (409 approval_already_given for a second by the same subject); at quorum a short-lived, single-use approval token is minted.",
        request: None,
        response: schema::<ApprovalStatus>,
        errors: &[400, 404, 409],
        query: &[],
    },
    RouteDoc {
        method: "POST",
        path: "/v1/approvals/{approval_request_id}/deny",
        roles: "operator",
        summary: "Deny an approval request.",
        request: None,
        response: schema::<ApprovalStatus>,
        errors: &[400, 404, 409],
        query: &[],
    },
    RouteDoc {
        method: "PUT",
        path: "/v1/admin/org-policies/{org_policy_id}",
        roles: "tenant_admin",
        summary: "Publish an org base policy (YAML or JSON body).",
        request: Some(schema::<PolicyFileBody>),
        response: schema::<OrgPolicyPublished>,
        errors: &[400, 413, 415, 422],
        query: &[],
    },
    RouteDoc {
        method: "PUT",
        path: "/v1/tenant/policy",
        roles: "tenant_admin",
        summary: "Publish the tenant's policy; an invalid or widening overlay is refused whole (422) with every problem.",
        request: Some(schema::<PolicyFileBody>),
        response: schema::<EffectivePolicy>,
        errors: &[400, 413, 415, 422],
        query: &[],
    },
    RouteDoc {
        method: "POST",
        path: "/v1/admin/api-keys",
        roles: "tenant_admin",
        summary: "One more API key of the caller's tenant (e.g. a second operator for an approval quorum); the key is shown once.",
        request: Some(schema::<IssueKeyRequest>),
        response: schema::<IssuedKey>,
        errors: &[400, 413, 415, 422],
        query: &[],
    },
    RouteDoc {
        method: "POST",
        path: "/v1/admin/identity/scim-tokens",
        roles: "tenant_admin",
        summary: "A bearer token for the identity provider's SCIM connector (`/scim/v2`); shown once, kept as a digest.",
        request: Some(schema::<ScimTokenRequest>),
        response: schema::<CreatedScimToken>,
        errors: &[400, 413, 415],
        query: &[],
    },
    RouteDoc {
        method: "GET",
        path: "/v1/admin/identity/scim-tokens",
        roles: "tenant_admin",
        summary: "The tenant's SCIM tokens (never the tokens themselves).",
        request: None,
        response: schema::<Vec<ScimToken>>,
        errors: &[],
        query: &[],
    },
    RouteDoc {
        method: "DELETE",
        path: "/v1/admin/identity/scim-tokens/{id}",
        roles: "tenant_admin",
        summary: "Revokes a SCIM token: refused from the next request on.",
        request: None,
        response: schema::<ScimToken>,
        errors: &[404],
        query: &[],
    },
    RouteDoc {
        method: "PUT",
        path: "/v1/admin/identity/oidc",
        roles: "tenant_admin",
        summary: "The console's single sign-on client (OpenID Connect): issuer, client id and secret; checked against the issuer's discovery document first. Register <gateway>/console/oidc/callback as its redirect URI.",
        request: Some(schema::<OidcRequest>),
        response: schema::<OidcSettings>,
        errors: &[400, 413, 415, 422],
        query: &[],
    },
    RouteDoc {
        method: "GET",
        path: "/v1/admin/identity/oidc",
        roles: "tenant_admin",
        summary: "The console's single sign-on settings (never the secret).",
        request: None,
        response: schema::<OidcSettings>,
        errors: &[404],
        query: &[],
    },
    RouteDoc {
        method: "GET",
        path: "/v1/admin/identity/role-mappings",
        roles: "tenant_admin",
        summary: "Which IdP group (its SCIM displayName) grants which tenant role.",
        request: None,
        response: schema::<Vec<RoleMapping>>,
        errors: &[],
        query: &[],
    },
    RouteDoc {
        method: "PUT",
        path: "/v1/admin/identity/role-mappings/{group}",
        roles: "tenant_admin",
        summary: "Maps an IdP group to tenant_admin, operator or analyst; a person's roles are the union of their groups'.",
        request: Some(schema::<RoleBody>),
        response: schema::<RoleMapping>,
        errors: &[400, 413, 415, 422],
        query: &[],
    },
    RouteDoc {
        method: "DELETE",
        path: "/v1/admin/identity/role-mappings/{group}",
        roles: "tenant_admin",
        summary: "Removes a group's mapping; its members lose the role at their next request.",
        request: None,
        response: schema::<RoleMappingRemoved>,
        errors: &[404],
        query: &[],
    },
    RouteDoc {
        method: "POST",
        path: "/v1/admin/identity/service-accounts",
        roles: "tenant_admin",
        summary: "A named API key for a workload (agent or operator), with its own id on the ledger; shown once.",
        request: Some(schema::<ServiceAccountRequest>),
        response: schema::<CreatedServiceAccount>,
        errors: &[400, 409, 413, 415, 422],
        query: &[],
    },
    RouteDoc {
        method: "GET",
        path: "/v1/admin/identity/service-accounts",
        roles: "tenant_admin",
        summary: "The tenant's service accounts.",
        request: None,
        response: schema::<Vec<ServiceAccount>>,
        errors: &[],
        query: &[],
    },
    RouteDoc {
        method: "DELETE",
        path: "/v1/admin/identity/service-accounts/{id}",
        roles: "tenant_admin",
        summary: "Revokes a service account: its key is refused from the next request on.",
        request: None,
        response: schema::<ServiceAccountRevoked>,
        errors: &[404],
        query: &[],
    },
    RouteDoc {
        method: "GET",
        path: "/v1/policy/effective",
        roles: "agent, operator, tenant_admin",
        summary: "The tenant's effective policy, its version and digest.",
        request: None,
        response: schema::<EffectivePolicy>,
        errors: &[404],
        query: &[],
    },
    RouteDoc {
        method: "GET",
        path: "/ledger/v1/tip",
        roles: "operator, tenant_admin, analyst",
        summary: "The last entry of the tenant's hash chain.",
        request: None,
        response: schema::<LedgerTip>,
        errors: &[],
        query: &[],
    },
    RouteDoc {
        method: "GET",
        path: "/ledger/v1/events",
        roles: "operator, tenant_admin, analyst",
        summary: "The tenant's ledger entries after after_seq.",
        request: None,
        response: schema::<LedgerEvents>,
        errors: &[400],
        query: &[
            ("after_seq", "entries after this seq (default 0)"),
            ("limit", "at most this many, 1 to 1000 (default 100)"),
        ],
    },
    RouteDoc {
        method: "GET",
        path: "/healthz",
        roles: "none",
        summary: "Liveness.",
        request: None,
        response: schema::<Health>,
        errors: &[],
        query: &[],
    },
    RouteDoc {
        method: "GET",
        path: "/metrics",
        roles: "none",
        summary: "Prometheus text: decisions by outcome, verify latency histogram, open reservations.",
        request: None,
        response: schema::<String>,
        errors: &[],
        query: &[],
    },
    RouteDoc {
        method: "POST",
        path: "/v1/compliance/audit-exports",
        roles: "operator, tenant_admin, analyst",
        summary: "Starts an audit export (202): a signed ZIP of the ledger segment of the window, decisions, approvals, guardrail records and intents, built in the background. The filter fields may be given at the top level or in `filter`.",
        request: Some(schema::<CreateAuditExportRequest>),
        response: schema::<AuditExportJobResponse>,
        errors: &[400, 413, 415, 422],
        query: &[],
    },
    RouteDoc {
        method: "GET",
        path: "/v1/compliance/audit-exports",
        roles: "operator, tenant_admin, analyst, agent (read-only)",
        summary: "The tenant's audit export jobs, newest first.",
        request: None,
        response: schema::<AuditExportList>,
        errors: &[400],
        query: &[
            ("limit", "1 to 200 (default 50)"),
            ("cursor", "the previous page's next_cursor"),
        ],
    },
    RouteDoc {
        method: "GET",
        path: "/v1/compliance/audit-exports/{job_id}",
        roles: "operator, tenant_admin, analyst, agent (read-only, no download token)",
        summary: "One audit export job: status, progress, digests; with issue_download=1 a ready job also answers a download token (15 minutes) and its download_path.",
        request: None,
        response: schema::<AuditExportJobResponse>,
        errors: &[400, 404],
        query: &[("issue_download", "1 or true: issue a download token")],
    },
    RouteDoc {
        method: "DELETE",
        path: "/v1/compliance/audit-exports/{job_id}",
        roles: "operator, tenant_admin",
        summary: "Drops the job's bundle; the job stays listed as deleted.",
        request: None,
        response: schema::<AuditExportDeleted>,
        errors: &[400, 404],
        query: &[],
    },
    RouteDoc {
        method: "POST",
        path: "/v1/compliance/audit-exports/{job_id}/bundle",
        roles: "the job's download token as bearer, or operator, tenant_admin, analyst",
        summary: "The ZIP (application/zip) of a ready job.",
        request: None,
        response: schema::<String>,
        errors: &[400, 404, 409],
        query: &[],
    },
    RouteDoc {
        method: "GET",
        path: "/v1/compliance/audit-exports/{job_id}/bundle",
        roles: "the job's download token as bearer, or operator, tenant_admin, analyst",
        summary: "The ZIP (application/zip) of a ready job.",
        request: None,
        response: schema::<String>,
        errors: &[400, 404, 409],
        query: &[],
    },
    RouteDoc {
        method: "GET",
        path: "/v1/compliance/signing-keys",
        roles: "agent, operator, tenant_admin",
        summary: "The tenant's Ed25519 audit signing key (created on first use): the public key audit manifests are checked against.",
        request: None,
        response: schema::<SigningKeys>,
        errors: &[],
        query: &[],
    },
    RouteDoc {
        method: "GET",
        path: "/openapi.json",
        roles: "none",
        summary: "This document.",
        request: None,
        response: schema::<Value>,
        errors: &[],
        query: &[],
    },
];

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Malformed request (bad JSON, a bad path or query parameter)",
        401 => "Missing or unknown API key",
        403 => "The key's role or tenant may not do this",
        404 => "No such thing for this tenant",
        409 => "Conflicts with the current state, or an idempotency key reused with another body",
        413 => "Body over 64 KiB",
        422 => "Well-formed but unacceptable (a field's value)",
        429 => "Too many requests; see Retry-After",
        _ => "Error",
    }
}

/// The OpenAPI document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let error_ref = schema::<ErrorBody>(&mut generator).to_value();
    let mut paths = Map::new();
    for route in ROUTES {
        let mut op = Map::new();
        op.insert("summary".into(), json!(route.summary));
        op.insert(
            "description".into(),
            json!(format!("Roles: {}.", route.roles)),
        );
        let mut params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({"name": name, "in": "path", "required": true,
                       "schema": {"type": "string", "format": if name == "org_policy_id" { "policy-name" } else { "uuid" }}})
            })
            .collect();
        params.extend(route.query.iter().map(|(name, what)| {
            json!({"name": name, "in": "query", "required": false, "description": what, "schema": {"type": "string"}})
        }));
        if route.roles != "none" {
            params.push(json!({"name": "x-tenant-id", "in": "header", "required": false,
                "description": "Must equal the API key's tenant (else 403).", "schema": {"type": "string"}}));
        }
        if route.method != "GET" && route.roles != "none" {
            params.push(json!({"name": "idempotency-key", "in": "header", "required": false,
                "description": "Same key and body: the same answer, nothing new. Same key, other body: 409.",
                "schema": {"type": "string"}}));
        }
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some(request) = route.request {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": request(&mut generator).to_value()}}}),
            );
        }
        let mut responses = Map::new();
        let ok_type = if route.path == "/metrics" {
            "text/plain"
        } else if route.path.ends_with("/bundle") {
            "application/zip"
        } else {
            "application/json"
        };
        let ok_status = if route.method == "POST" && route.path == "/v1/compliance/audit-exports" {
            "202"
        } else {
            "200"
        };
        responses.insert(
            ok_status.into(),
            json!({"description": "OK", "content": {ok_type: {"schema": (route.response)(&mut generator).to_value()}}}),
        );
        let mut statuses: Vec<u16> = route.errors.to_vec();
        if route.roles != "none" {
            statuses.extend([401, 403]);
        }
        statuses.sort_unstable();
        for status in statuses {
            responses.insert(
                status.to_string(),
                json!({"description": status_text(status), "content": {"application/json": {"schema": error_ref}}}),
            );
        }
        op.insert("responses".into(), Value::Object(responses));
        if route.roles == "none" {
            op.insert("security".into(), json!([]));
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = entry {
            methods.insert(route.method.to_lowercase(), Value::Object(op));
        }
    }
    let schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    paybond_policies::sort_keys(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Paybond Gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Authorizes an AI agent's paid tool calls before they run. All bodies JSON, snake_case; errors are {error, message, request_id}."
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "paybond_sk_sandbox_… / paybond_sk_live_…"}}
        }
    }))
}
