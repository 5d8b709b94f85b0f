//! Audit exports (`/v1/compliance/audit-exports`): a job that writes a signed ZIP
//! of the tenant's ledger segment, decisions, approvals, guardrail records and
//! intents for a time window, built in the background from one snapshot of the
//! store; and the tenant's signing key (`/v1/compliance/signing-keys`), created on
//! first use and kept in the store. The bundle format is [`crate::audit`].

use paybond_middleware_core::wire::{Principal, Role};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use uuid::Uuid;

use crate::audit::{
    AuditSigner, LEDGER_PATH, LedgerVerifierPack, ManifestHead, VERIFIER_PACK_PATH, write_bundle,
};
use crate::engine::lifecycle::{parse_cursor, rfc3339};
use crate::engine::{Engine, READERS, READERS_AND_AGENTS, ledger, require_role};
use crate::error::ApiError;
use crate::store::{BuiltBundle, JobRow, NewJob, Tx};
use crate::tokens::{random_hex, sha256_hex};

/// What an export may include besides the ledger segment and its verifier pack,
/// which every bundle holds.
pub const AUDIT_INCLUDES: [&str; 5] = [
    "ledger",
    "decisions",
    "approvals",
    "guardrails",
    "harbor_intents",
];

/// The largest page of export jobs.
pub const MAX_EXPORT_PAGE: u32 = 200;

/// How long a bundle is kept when the request names no `retention_hours` (7 days).
const DEFAULT_RETENTION_HOURS: u32 = 168;
/// The longest retention a request may ask for (30 days).
const MAX_RETENTION_HOURS: u32 = 720;
/// How long a download token stays usable.
const DOWNLOAD_TOKEN_TTL_MS: i64 = 15 * 60_000;
/// A queued or running job whose builder has not reported for this long stopped
/// with its gateway.
const STALE_JOB_MS: i64 = 120_000;
/// What marks a bearer credential as a download token rather than an API key.
pub const DOWNLOAD_TOKEN_PREFIX: &str = "pbdl_";

/// What an export covers. Every field is optional: no window is everything so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditExportFilter {
    /// Start of the window (RFC 3339, inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_start: Option<String>,
    /// End of the window (RFC 3339, exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_end: Option<String>,
    /// Only this intent's decisions, approvals, denials and evidence (the ledger
    /// segment stays the whole chain of the window: its continuity is the proof).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent_id: Option<Uuid>,
    /// A case reference, recorded in the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_id: Option<String>,
    /// Who asked for the export, recorded in the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_did: Option<String>,
    /// Artifacts to include, of [`AUDIT_INCLUDES`] (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub includes: Option<Vec<String>>,
}

/// `POST /v1/compliance/audit-exports`. The filter's fields may be given at the
/// top level or inside `filter` (as the Paybond Kit sends them), not both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CreateAuditExportRequest {
    /// `standard` (subjects hashed everywhere but the ledger segment) or
    /// `extended` (agents and approvers in clear in approvals; guardrail records
    /// stay hashed). Default `standard`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disclosure_tier: Option<String>,
    /// The filter, nested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<AuditExportFilter>,
    /// The filter, at the top level.
    #[serde(flatten)]
    pub fields: AuditExportFilter,
    /// How long the bundle is kept, 1 to 720 hours (default 168).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_hours: Option<u32>,
}

/// A download token: a secret, shown only in the job's JSON.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct DownloadToken(String);

impl DownloadToken {
    /// The token.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DownloadToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DownloadToken(***)")
    }
}

/// How far a job has got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditExportProgress {
    /// `queued`, `collecting`, `writing`, `signing`, `done` or `failed`.
    pub stage: String,
    /// 0 to 100.
    pub percent: u32,
}

/// One export job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditExportJob {
    /// The job.
    pub id: Uuid,
    /// `queued`, `running`, `ready`, `failed`, `expired` or `deleted`.
    pub status: String,
    /// The tenant.
    pub tenant_realm_id: String,
    /// `standard` or `extended`.
    pub disclosure_tier: String,
    /// When it was asked for.
    pub created_at: String,
    /// When the bundle is dropped.
    pub expires_at: String,
    /// Why it failed ("" otherwise).
    pub error: String,
    /// SHA-256 of `manifest.json` ("" until ready).
    pub manifest_sha256: String,
    /// SHA-256 of the ZIP ("" until ready).
    pub bundle_sha256: String,
    /// Size of the ZIP, once ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_size_bytes: Option<u64>,
    /// A token for the download route, when asked for (`?issue_download=1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_token: Option<DownloadToken>,
    /// When the download token stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_token_expires: Option<String>,
    /// Where to download the bundle (`POST` with the token as bearer, or `GET` with
    /// an operator key), once ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_path: Option<String>,
    /// How far the job has got.
    pub progress: AuditExportProgress,
    /// What the export covers.
    pub filter: AuditExportFilter,
}

/// `{job}`: the answer of create and get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditExportJobResponse {
    /// The job.
    pub job: AuditExportJob,
}

/// One job in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditExportSummary {
    /// The job.
    pub id: Uuid,
    /// Its status.
    pub status: String,
    /// `standard` or `extended`.
    pub disclosure_tier: String,
    /// When it was asked for.
    pub created_at: String,
    /// When the bundle is dropped.
    pub expires_at: String,
    /// SHA-256 of `manifest.json` ("" until ready).
    pub manifest_sha256: String,
    /// SHA-256 of the ZIP ("" until ready).
    pub bundle_sha256: String,
    /// Size of the ZIP (0 until ready).
    pub bundle_size_bytes: u64,
}

/// `GET /v1/compliance/audit-exports`: the tenant's jobs, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditExportList {
    /// The tenant.
    pub tenant_realm_id: String,
    /// A page of jobs.
    pub jobs: Vec<AuditExportSummary>,
    /// The cursor of the next page, if there is one.
    pub next_cursor: Option<String>,
}

/// `DELETE /v1/compliance/audit-exports/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditExportDeleted {
    /// The job.
    pub job_id: Uuid,
    /// Always true: the bundle is gone (the job stays listed as `deleted`).
    pub deleted: bool,
}

/// A tenant's audit signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SigningKeyView {
    /// `ed25519:` and the first 16 hex digits of the key's SHA-256.
    pub key_id: String,
    /// `ed25519`.
    pub algorithm: String,
    /// The raw 32-byte public key, hex: what manifests are checked against.
    pub public_key_hex: String,
    /// What it signs.
    pub usage: String,
    /// When it was created.
    pub created_at: String,
}

/// `GET /v1/compliance/signing-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SigningKeys {
    /// The tenant.
    pub tenant_realm_id: String,
    /// Its keys (one).
    pub keys: Vec<SigningKeyView>,
}

/// Who asks for a bundle: an operator's API key, or a job's download token.
#[derive(Debug)]
pub enum BundleCredential<'a> {
    /// An authenticated key.
    Principal(&'a Principal),
    /// A download token (`pbdl_…`).
    DownloadToken(&'a str),
}

impl JobRow {
    /// Brings a stored row up to date: a bundle past its retention is dropped, and a
    /// job whose builder stopped reporting failed with it.
    fn settle(&mut self, tx: &dyn Tx, now: i64) -> Result<(), ApiError> {
        let change = if matches!(self.status.as_str(), "ready" | "queued" | "running")
            && now >= self.expires_ms
        {
            Some(("expired", None))
        } else if matches!(self.status.as_str(), "queued" | "running")
            && now - self.heartbeat_ms > STALE_JOB_MS
        {
            Some((
                "failed",
                Some(
                    "interrupted: the gateway building it stopped before it finished; \
                     create the export again",
                ),
            ))
        } else {
            None
        };
        if let Some((status, error)) = change {
            tx.end_export(&self.id, status, error)?;
            status.clone_into(&mut self.status);
            if let Some(e) = error {
                self.error = Some(e.to_owned());
                "failed".clone_into(&mut self.stage);
            }
        }
        Ok(())
    }

    fn job(&self) -> Result<AuditExportJob, ApiError> {
        let ready = self.status == "ready";
        Ok(AuditExportJob {
            id: parse_id(&self.id)?,
            status: self.status.clone(),
            tenant_realm_id: self.tenant.clone(),
            disclosure_tier: self.tier.clone(),
            created_at: rfc3339(self.created_ms),
            expires_at: rfc3339(self.expires_ms),
            error: self.error.clone().unwrap_or_default(),
            manifest_sha256: self.manifest_sha256.clone().unwrap_or_default(),
            bundle_sha256: self.bundle_sha256.clone().unwrap_or_default(),
            bundle_size_bytes: self.bundle_size_bytes.filter(|_| ready),
            download_token: None,
            download_token_expires: None,
            download_path: ready
                .then(|| format!("/v1/compliance/audit-exports/{}/bundle", self.id)),
            progress: AuditExportProgress {
                stage: self.stage.clone(),
                percent: self.percent,
            },
            filter: serde_json::from_str(&self.filter)?,
        })
    }

    fn summary(&self) -> Result<AuditExportSummary, ApiError> {
        Ok(AuditExportSummary {
            id: parse_id(&self.id)?,
            status: self.status.clone(),
            disclosure_tier: self.tier.clone(),
            created_at: rfc3339(self.created_ms),
            expires_at: rfc3339(self.expires_ms),
            manifest_sha256: self.manifest_sha256.clone().unwrap_or_default(),
            bundle_sha256: self.bundle_sha256.clone().unwrap_or_default(),
            bundle_size_bytes: self
                .bundle_size_bytes
                .filter(|_| self.status == "ready")
                .unwrap_or(0),
        })
    }
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|e| ApiError::internal(format_args!("stored export id: {e}")))
}

fn parse_time(field: &str, text: &str) -> Result<i64, ApiError> {
    text.parse::<jiff::Timestamp>()
        .map(jiff::Timestamp::as_millisecond)
        .map_err(|_| {
            ApiError::unprocessable(
                "invalid_field",
                format!("{field}: `{text}` is not an RFC 3339 time (e.g. 2026-01-31T00:00:00Z)"),
            )
        })
}

/// The filter of a request, validated: fields given at the top level and in
/// `filter` merged (the same field in both is refused), times parsed, includes known.
fn validated_filter(req: &CreateAuditExportRequest) -> Result<AuditExportFilter, ApiError> {
    let nested = req.filter.clone().unwrap_or_default();
    let top = req.fields.clone();
    fn pick<T>(name: &str, top: Option<T>, nested: Option<T>) -> Result<Option<T>, ApiError> {
        match (top, nested) {
            (Some(_), Some(_)) => Err(ApiError::unprocessable(
                "invalid_field",
                format!("{name}: given both at the top level and in filter; give it once"),
            )),
            (a, b) => Ok(a.or(b)),
        }
    }
    let filter = AuditExportFilter {
        time_start: pick("time_start", top.time_start, nested.time_start)?,
        time_end: pick("time_end", top.time_end, nested.time_end)?,
        intent_id: pick("intent_id", top.intent_id, nested.intent_id)?,
        case_id: pick("case_id", top.case_id, nested.case_id)?,
        operator_did: pick("operator_did", top.operator_did, nested.operator_did)?,
        includes: pick("includes", top.includes, nested.includes)?,
    };
    let start = filter
        .time_start
        .as_deref()
        .map(|t| parse_time("time_start", t))
        .transpose()?;
    let end = filter
        .time_end
        .as_deref()
        .map(|t| parse_time("time_end", t))
        .transpose()?;
    if let (Some(s), Some(e)) = (start, end)
        && s >= e
    {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "time_end: must be after time_start",
        ));
    }
    let includes = match &filter.includes {
        None => AUDIT_INCLUDES.iter().map(|s| (*s).to_owned()).collect(),
        Some(list) => {
            if let Some(bad) = list.iter().find(|i| !AUDIT_INCLUDES.contains(&i.as_str())) {
                return Err(ApiError::unprocessable(
                    "unsupported_include",
                    format!(
                        "includes: `{bad}` is not one this gateway exports ({})",
                        AUDIT_INCLUDES.join(", ")
                    ),
                ));
            }
            let mut list: Vec<String> = list.clone();
            if !list.iter().any(|i| i == "ledger") {
                // The ledger segment and its verifier pack are in every bundle.
                list.insert(0, "ledger".to_owned());
            }
            list.dedup();
            list
        }
    };
    Ok(AuditExportFilter {
        includes: Some(includes),
        ..filter
    })
}

/// A subject as guardrail records (and a standard-tier export) show it: a SHA-256
/// that is the same for the same subject within the tenant, and no other.
fn hashed(tenant: &str, subject: &str) -> String {
    format!(
        "sha256:{}",
        sha256_hex(format!("{tenant}\n{subject}").as_bytes())
    )
}

fn jsonl(rows: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for row in rows {
        // JSON values always serialize.
        if let Ok(line) = serde_json::to_vec(row) {
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
    }
    out
}

/// What one snapshot of the store gives an export.
struct Collected {
    ledger: Vec<ledger::LedgerEvent>,
    tip: ledger::LedgerTip,
    decisions: Vec<Value>,
    approvals: Vec<Value>,
    intents: Vec<Value>,
    evidence: Vec<Value>,
}

fn collect(
    tx: &dyn Tx,
    tenant: &str,
    window: (i64, i64),
    intent: Option<&str>,
    clear_subjects: bool,
) -> Result<Collected, ApiError> {
    let (start, end) = window;
    let tip = ledger::tip(tx, tenant)?;
    let (first, last) = tx.ledger_span(tenant, (start, end))?;
    let ledger = match (first, last) {
        // Every entry from the window's first to its last: a contiguous segment.
        (Some(first), Some(last)) => ledger::events(tx, tenant, first - 1, last - first + 1)?,
        _ => Vec::new(),
    };
    let decisions = tx
        .decisions_in(tenant, window, intent)?
        .into_iter()
        .map(|d| {
            Ok(json!({
                "decision_id": d.id,
                "intent_id": d.intent,
                "outcome": d.outcome,
                "created_at": rfc3339(d.created_ms),
                "ledger_seq": d.ledger_seq,
                "result": serde_json::from_str::<Value>(&d.response)?,
            }))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let subject = |s: Option<String>| -> Value {
        match s {
            None => Value::Null,
            Some(s) if clear_subjects => Value::from(s),
            Some(s) => Value::from(hashed(tenant, &s)),
        }
    };
    let approvals = tx
        .approvals_in(tenant, window, intent)?
        .into_iter()
        .map(|a| {
            let approvers: Vec<String> = serde_json::from_str(&a.approvers)?;
            Ok(json!({
                "approval_request_id": a.id,
                "intent_id": a.intent,
                "decision_id": a.decision,
                "operation": a.operation,
                "tool": a.tool,
                "vendor": a.vendor,
                "amount_cents": a.amount,
                "reason_codes": serde_json::from_str::<Value>(&a.reasons)?,
                "state": a.state,
                "approvers": approvers.into_iter().map(|a| subject(Some(a))).collect::<Vec<_>>(),
                "quorum": a.quorum,
                "created_at": rfc3339(a.created),
                "expires_at": rfc3339(a.expires),
                "agent": subject(a.agent),
                "token_used_at": a.token_used.map(rfc3339),
            }))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let intents = tx
        .intents_in(tenant, window, intent)?
        .into_iter()
        .map(|i| {
            Ok(json!({
                "intent_id": i.id,
                "allowed_tools": serde_json::from_str::<Value>(&i.operations)?,
                "budget_cents": i.budget_cents,
                "currency": i.currency,
                "state": i.state,
                "deadline": rfc3339(i.deadline_ms),
                "consumed_cents": i.consumed_cents,
                "reserved_cents": i.reserved_cents,
                "created_at": rfc3339(i.created_ms),
            }))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let evidence = tx
        .evidence_in(tenant, window, intent)?
        .into_iter()
        .map(|e| {
            json!({
                "evidence_id": e.id,
                "intent_id": e.intent,
                "decision_id": e.decision,
                "operation": e.operation,
                "status": e.status,
                "cost_cents": e.cost_cents,
                "predicate_passed": e.predicate_passed,
                "created_at": rfc3339(e.created_ms),
            })
        })
        .collect();
    Ok(Collected {
        ledger,
        tip,
        decisions,
        approvals,
        intents,
        evidence,
    })
}

/// `guardrails/policy_lifecycle.jsonl` and `guardrails/denials.jsonl` from the
/// ledger segment; subjects always hashed.
fn guardrail_records(
    tenant: &str,
    events: &[ledger::LedgerEvent],
    intent: Option<&str>,
) -> (Vec<Value>, Vec<Value>) {
    let mut lifecycle = Vec::new();
    let mut denials = Vec::new();
    let text = |p: &Value, k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
    for e in events {
        if e.event.starts_with("policy.")
            || e.event.starts_with("org_policy.")
            || e.event.starts_with("keys.")
        {
            lifecycle.push(json!({
                "ledger_seq": e.seq,
                "event": e.event,
                "at": rfc3339(e.at_ms),
                "payload": e.payload,
            }));
        } else if e.event == "decision.deny"
            && intent.is_none_or(|i| text(&e.payload, "intent_id").as_deref() == Some(i))
        {
            let p = &e.payload;
            let hash = |k: &str| text(p, k).map(|s| hashed(tenant, &s));
            denials.push(json!({
                "ledger_seq": e.seq,
                "at": rfc3339(e.at_ms),
                "decision_id": p.get("decision_id"),
                "intent_id": p.get("intent_id"),
                "tool": p.get("tool"),
                "operation": p.get("operation"),
                "vendor": p.get("vendor"),
                "amount_cents": p.get("amount_cents"),
                "reason_codes": p.get("reason_codes"),
                "policy_version": p.get("policy_version"),
                "agent_sha256": hash("agent"),
                "agent_subject_sha256": hash("agent_subject"),
            }));
        }
    }
    (lifecycle, denials)
}

impl Engine {
    /// `POST /v1/compliance/audit-exports`: records a queued job. The caller then
    /// runs [`Engine::build_audit_export`] (the HTTP server does, in the background).
    pub async fn create_audit_export(
        self: &Arc<Self>,
        principal: &Principal,
        req: &CreateAuditExportRequest,
    ) -> Result<AuditExportJobResponse, ApiError> {
        let principal = principal.clone();
        let req = req.clone();
        self.blocking(move |e| e.create_audit_export_blocking(&principal, &req))
            .await
    }

    /// [`Self::create_audit_export`] on the caller's thread, which waits for the store.
    pub(crate) fn create_audit_export_blocking(
        &self,
        principal: &Principal,
        req: &CreateAuditExportRequest,
    ) -> Result<AuditExportJobResponse, ApiError> {
        require_role(principal, READERS)?;
        let tier = req.disclosure_tier.as_deref().unwrap_or("standard");
        if !matches!(tier, "standard" | "extended") {
            return Err(ApiError::unprocessable(
                "invalid_field",
                format!("disclosure_tier: `{tier}` is not standard or extended"),
            ));
        }
        let hours = req.retention_hours.unwrap_or(DEFAULT_RETENTION_HOURS);
        if !(1..=MAX_RETENTION_HOURS).contains(&hours) {
            return Err(ApiError::unprocessable(
                "invalid_field",
                format!("retention_hours: {hours} is not from 1 to {MAX_RETENTION_HOURS}"),
            ));
        }
        let filter = validated_filter(req)?;
        let filter_text = serde_json::to_string(&filter)?;
        let id = Uuid::new_v4().to_string();
        let tenant = principal.tenant_id.clone();
        self.tx_in(&tenant, |tx, now| {
            tx.queue_export(&NewJob {
                id: &id,
                tenant: &tenant,
                tier,
                filter: &filter_text,
                created_by: &principal.key_id,
                created_ms: now,
                expires_ms: now + i64::from(hours) * 3_600_000,
            })?;
            ledger::append(
                tx,
                &tenant,
                "audit_export.created",
                json!({"job_id": id, "disclosure_tier": tier, "by": principal.key_id,
                       "filter": filter}),
                now,
            )?;
            let row = tx
                .export_job(&tenant, &id)?
                .ok_or_else(|| ApiError::internal("a queued audit export vanished"))?;
            Ok(AuditExportJobResponse { job: row.job()? })
        })
    }

    /// Builds the bundle of a queued job: reads one snapshot of the store, writes
    /// and signs the ZIP, and stores it (the job then reads `ready`); a failure is
    /// recorded on the job (`failed`, with why) and returned. It runs on the
    /// blocking pool whatever the store (a bundle is long work).
    pub async fn build_audit_export(
        self: &Arc<Self>,
        tenant: &str,
        job_id: Uuid,
    ) -> Result<(), ApiError> {
        let tenant = tenant.to_owned();
        let engine = self.clone();
        tokio::task::spawn_blocking(move || engine.build_audit_export_blocking(&tenant, job_id))
            .await
            .map_err(|e| ApiError::internal(format_args!("the export's task failed: {e}")))?
    }

    /// [`Self::build_audit_export`] on the caller's thread, which waits for the store.
    pub(crate) fn build_audit_export_blocking(
        &self,
        tenant: &str,
        job_id: Uuid,
    ) -> Result<(), ApiError> {
        let id = job_id.to_string();
        let result = self.build_export(tenant, &id);
        if let Err(e) = &result {
            let why = e.message.clone();
            self.tx_in(tenant, |tx, now| Ok(tx.fail_export(&id, &why, now)?))?;
        }
        result
    }

    fn export_stage(
        &self,
        tenant: &str,
        id: &str,
        stage: &str,
        percent: u32,
    ) -> Result<bool, ApiError> {
        self.tx_in(tenant, |tx, now| {
            Ok(tx.advance_export(id, stage, percent, now)?)
        })
    }

    fn build_export(&self, tenant: &str, id: &str) -> Result<(), ApiError> {
        let row = self.tx_in(tenant, |tx, _| Ok(tx.export_job(tenant, id)?))?;
        let Some(row) = row else {
            return Err(ApiError::not_found(
                "audit_export_not_found",
                "no such audit export",
            ));
        };
        if !self.export_stage(tenant, id, "collecting", 10)? {
            // Deleted (or given up) before it started.
            return Ok(());
        }
        let filter: AuditExportFilter = serde_json::from_str(&row.filter)?;
        let window = (
            filter
                .time_start
                .as_deref()
                .map(|t| parse_time("time_start", t))
                .transpose()?
                .unwrap_or(i64::MIN),
            filter
                .time_end
                .as_deref()
                .map(|t| parse_time("time_end", t))
                .transpose()?
                .unwrap_or(i64::MAX),
        );
        let intent = filter.intent_id.map(|i| i.to_string());
        let clear = row.tier == "extended";
        let data = self
            .store
            .read(|tx| collect(tx, tenant, window, intent.as_deref(), clear))?;
        if !self.export_stage(tenant, id, "writing", 50)? {
            return Ok(());
        }
        let includes = filter.includes.clone().unwrap_or_default();
        let has = |name: &str| includes.iter().any(|i| i == name);
        let pack = LedgerVerifierPack::describe(tenant, &data.ledger, data.tip.seq, &data.tip.hash);
        let mut artifacts: Vec<(String, Vec<u8>)> = vec![
            (
                LEDGER_PATH.to_owned(),
                jsonl(
                    &data
                        .ledger
                        .iter()
                        .map(serde_json::to_value)
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            ),
            (VERIFIER_PACK_PATH.to_owned(), {
                let mut b = serde_json::to_vec_pretty(&pack)?;
                b.push(b'\n');
                b
            }),
        ];
        if has("decisions") {
            artifacts.push(("decisions.jsonl".to_owned(), jsonl(&data.decisions)));
        }
        if has("approvals") {
            artifacts.push(("approvals.jsonl".to_owned(), jsonl(&data.approvals)));
        }
        if has("guardrails") {
            let (lifecycle, denials) = guardrail_records(tenant, &data.ledger, intent.as_deref());
            artifacts.push((
                "guardrails/policy_lifecycle.jsonl".to_owned(),
                jsonl(&lifecycle),
            ));
            artifacts.push(("guardrails/denials.jsonl".to_owned(), jsonl(&denials)));
        }
        if has("harbor_intents") {
            artifacts.push(("harbor/intents.jsonl".to_owned(), jsonl(&data.intents)));
            artifacts.push(("harbor/evidence.jsonl".to_owned(), jsonl(&data.evidence)));
        }
        if !self.export_stage(tenant, id, "signing", 80)? {
            return Ok(());
        }
        let signer = self
            .tx_in(tenant, |tx, now| signer(self, tx, tenant, now))?
            .0;
        let generated = jiff::Timestamp::from_millisecond(self.now_ms())
            .map_err(|e| ApiError::internal(format_args!("clock: {e}")))?;
        let mut export_filter = Map::new();
        for (key, value) in [
            ("time_start", filter.time_start.clone().map(Value::from)),
            ("time_end", filter.time_end.clone().map(Value::from)),
            ("intent_id", intent.clone().map(Value::from)),
            ("case_id", filter.case_id.clone().map(Value::from)),
            ("operator_did", filter.operator_did.clone().map(Value::from)),
            ("includes", Some(Value::from(includes.clone()))),
        ] {
            if let Some(v) = value {
                export_filter.insert(key.to_owned(), v);
            }
        }
        let bundle = write_bundle(
            ManifestHead {
                tenant: tenant.to_owned(),
                job_id: id.to_owned(),
                generated_at: generated.to_string(),
                disclosure_tier: row.tier.clone(),
                redaction_profile: if clear {
                    "extended: approvers and agents in clear in approvals; guardrail subjects hashed"
                } else {
                    "standard: approvers and agents hashed (sha256 of tenant and subject) outside the ledger segment"
                }
                .to_owned(),
                checkpoint_last_ledger_seq: pack.last_seq,
                export_filter: Value::Object(export_filter),
            },
            &artifacts,
            &signer,
            generated,
        )?;
        self.tx_in(tenant, |tx, now| {
            Ok(tx.store_bundle(
                id,
                &BuiltBundle {
                    manifest_sha256: &bundle.manifest_sha256,
                    bundle_sha256: &bundle.bundle_sha256,
                    bytes: &bundle.bytes,
                },
                now,
            )?)
        })?;
        Ok(())
    }

    /// `GET /v1/compliance/audit-exports`: the tenant's jobs, newest first.
    pub async fn audit_exports(
        self: &Arc<Self>,
        principal: &Principal,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<AuditExportList, ApiError> {
        let principal = principal.clone();
        let cursor = cursor.map(str::to_owned);
        self.blocking(move |e| e.audit_exports_blocking(&principal, limit, cursor.as_deref()))
            .await
    }

    /// [`Self::audit_exports`] on the caller's thread, which waits for the store.
    pub(crate) fn audit_exports_blocking(
        &self,
        principal: &Principal,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<AuditExportList, ApiError> {
        require_role(principal, READERS_AND_AGENTS)?;
        let limit = limit.unwrap_or(50);
        if !(1..=MAX_EXPORT_PAGE).contains(&limit) {
            return Err(ApiError::bad_request(
                "invalid_query_parameter",
                format!("limit {limit} is not from 1 to {MAX_EXPORT_PAGE}"),
            ));
        }
        let (after_ms, after_id) = match cursor {
            Some(c) => parse_cursor(c)?,
            None => (i64::MAX, String::new()),
        };
        self.tx_in(&principal.tenant_id, |tx, now| {
            let mut rows =
                tx.export_page(&principal.tenant_id, (after_ms, &after_id), limit + 1)?;
            let more = rows.len() > limit as usize;
            rows.truncate(limit as usize);
            let next_cursor = more
                .then(|| rows.last().map(|r| format!("{}.{}", r.created_ms, r.id)))
                .flatten();
            let mut jobs = Vec::with_capacity(rows.len());
            for mut row in rows {
                row.settle(tx, now)?;
                jobs.push(row.summary()?);
            }
            Ok(AuditExportList {
                tenant_realm_id: principal.tenant_id.clone(),
                jobs,
                next_cursor,
            })
        })
    }

    /// `GET /v1/compliance/audit-exports/{id}`: one job; with `issue_download`, a
    /// ready job also gets a fresh download token (operator or admin keys only).
    pub async fn audit_export(
        self: &Arc<Self>,
        principal: &Principal,
        job_id: Uuid,
        issue_download: bool,
    ) -> Result<AuditExportJobResponse, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.audit_export_blocking(&principal, job_id, issue_download))
            .await
    }

    /// [`Self::audit_export`] on the caller's thread, which waits for the store.
    pub(crate) fn audit_export_blocking(
        &self,
        principal: &Principal,
        job_id: Uuid,
        issue_download: bool,
    ) -> Result<AuditExportJobResponse, ApiError> {
        if issue_download {
            require_role(principal, READERS)?;
        } else {
            require_role(principal, READERS_AND_AGENTS)?;
        }
        self.tx_in(&principal.tenant_id, |tx, now| {
            let mut row = find_job(tx, &principal.tenant_id, job_id)?;
            row.settle(tx, now)?;
            let mut job = row.job()?;
            if issue_download && row.status == "ready" {
                let token = format!("{DOWNLOAD_TOKEN_PREFIX}{}", random_hex());
                let expires = now + DOWNLOAD_TOKEN_TTL_MS;
                tx.set_download_token(&row.id, &sha256_hex(token.as_bytes()), expires)?;
                job.download_token = Some(DownloadToken(token));
                job.download_token_expires = Some(rfc3339(expires));
            }
            Ok(AuditExportJobResponse { job })
        })
    }

    /// `DELETE /v1/compliance/audit-exports/{id}`: drops the bundle (a running job
    /// stops at its next stage); the job stays listed as `deleted`.
    pub async fn delete_audit_export(
        self: &Arc<Self>,
        principal: &Principal,
        job_id: Uuid,
    ) -> Result<AuditExportDeleted, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.delete_audit_export_blocking(&principal, job_id))
            .await
    }

    /// [`Self::delete_audit_export`] on the caller's thread, which waits for the store.
    pub(crate) fn delete_audit_export_blocking(
        &self,
        principal: &Principal,
        job_id: Uuid,
    ) -> Result<AuditExportDeleted, ApiError> {
        require_role(principal, &[Role::Operator, Role::TenantAdmin])?;
        self.tx_in(&principal.tenant_id, |tx, now| {
            let row = find_job(tx, &principal.tenant_id, job_id)?;
            tx.delete_export(&row.id)?;
            if row.status != "deleted" {
                ledger::append(
                    tx,
                    &principal.tenant_id,
                    "audit_export.deleted",
                    json!({"job_id": row.id, "by": principal.key_id}),
                    now,
                )?;
            }
            Ok(AuditExportDeleted {
                job_id,
                deleted: true,
            })
        })
    }

    /// The ZIP of a ready job, for an operator or admin key of its tenant or the
    /// job's unexpired download token.
    pub async fn audit_export_bundle(
        self: &Arc<Self>,
        credential: BundleCredential<'_>,
        job_id: Uuid,
    ) -> Result<Vec<u8>, ApiError> {
        match credential {
            BundleCredential::Principal(principal) => {
                let principal = principal.clone();
                self.blocking(move |e| {
                    e.audit_export_bundle_blocking(BundleCredential::Principal(&principal), job_id)
                })
                .await
            }
            BundleCredential::DownloadToken(token) => {
                let token = token.to_owned();
                self.blocking(move |e| {
                    e.audit_export_bundle_blocking(BundleCredential::DownloadToken(&token), job_id)
                })
                .await
            }
        }
    }

    /// [`Self::audit_export_bundle`] on the caller's thread, which waits for the store.
    pub(crate) fn audit_export_bundle_blocking(
        &self,
        credential: BundleCredential<'_>,
        job_id: Uuid,
    ) -> Result<Vec<u8>, ApiError> {
        let id = job_id.to_string();
        let bundle = match credential {
            BundleCredential::Principal(principal) => {
                require_role(principal, READERS)?;
                self.tx_in(&principal.tenant_id, |tx, now| {
                    let mut row = find_job(tx, &principal.tenant_id, job_id)?;
                    row.settle(tx, now)?;
                    read_bundle(tx, &row)
                })?
            }
            BundleCredential::DownloadToken(token) => {
                let hash = sha256_hex(token.as_bytes());
                let refused = || {
                    ApiError::unauthorized(
                        "the download token is not valid for this export (expired, replaced by a \
                         newer one, or of another job); ask for a new one with ?issue_download=1",
                    )
                };
                let tenant = self.read(|tx, _| Ok(tx.export_by_download_token(&id, &hash)?))?;
                let Some((tenant, expires)) = tenant else {
                    return Err(refused());
                };
                if self.now_ms() >= expires {
                    return Err(refused());
                }
                self.tx_in(&tenant, |tx, now| {
                    let mut row = find_job(tx, &tenant, job_id)?;
                    row.settle(tx, now)?;
                    read_bundle(tx, &row)
                })?
            }
        };
        Ok(bundle)
    }

    /// `GET /v1/compliance/signing-keys`: the tenant's audit signing key (created on
    /// first use).
    pub async fn signing_keys(
        self: &Arc<Self>,
        principal: &Principal,
    ) -> Result<SigningKeys, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.signing_keys_blocking(&principal))
            .await
    }

    /// [`Self::signing_keys`] on the caller's thread, which waits for the store.
    pub(crate) fn signing_keys_blocking(
        &self,
        principal: &Principal,
    ) -> Result<SigningKeys, ApiError> {
        require_role(principal, READERS_AND_AGENTS)?;
        let tenant = principal.tenant_id.clone();
        let (signer, created) = self.tx_in(&tenant, |tx, now| signer(self, tx, &tenant, now))?;
        let public = signer.public_hex();
        Ok(SigningKeys {
            tenant_realm_id: tenant,
            keys: vec![SigningKeyView {
                key_id: format!(
                    "ed25519:{}",
                    sha256_hex(public.as_bytes()).get(..16).unwrap_or_default()
                ),
                algorithm: "ed25519".to_owned(),
                public_key_hex: public,
                usage: "audit export manifests".to_owned(),
                created_at: rfc3339(created),
            }],
        })
    }
}

fn find_job(tx: &dyn Tx, tenant: &str, job_id: Uuid) -> Result<JobRow, ApiError> {
    tx.export_job(tenant, &job_id.to_string())?.ok_or_else(|| {
        ApiError::not_found(
            "audit_export_not_found",
            "no such audit export for this tenant",
        )
    })
}

fn read_bundle(tx: &dyn Tx, row: &JobRow) -> Result<Vec<u8>, ApiError> {
    if row.status != "ready" {
        return Err(ApiError::new(
            409,
            "audit_export_not_ready",
            format!("the audit export is {}, not ready", row.status),
        ));
    }
    Ok(tx.export_bundle(&row.id)?)
}

/// The tenant's signing key and when it was made, created if it has none (under
/// the tenant's lock, so replicas never make two). The store keeps it XORed with
/// a pad derived from the root key ([`crate::tokens::Minter::audit_key_pad`]).
fn signer(
    engine: &Engine,
    tx: &dyn Tx,
    tenant: &str,
    now: i64,
) -> Result<(AuditSigner, i64), ApiError> {
    let pad = engine.minter.audit_key_pad(tenant);
    let xor = |bytes: &[u8]| -> Vec<u8> { bytes.iter().zip(pad).map(|(b, p)| b ^ p).collect() };
    let stored = tx.signing_key(tenant)?;
    if let Some((wrapped, public, created)) = stored {
        let signer = AuditSigner::from_secret(&xor(&wrapped))?;
        if signer.public_hex() != public {
            return Err(ApiError::unusable(format!(
                "the audit signing key of tenant {tenant} was stored under another root key; \
                 restore the root key it was made with"
            )));
        }
        return Ok((signer, created));
    }
    let new = AuditSigner::generate();
    tx.add_signing_key(tenant, &xor(&new.secret()), &new.public_hex(), now)?;
    ledger::append(
        tx,
        tenant,
        "keys.audit_signing_created",
        json!({"public_key_hex": new.public_hex()}),
        now,
    )?;
    Ok((new, now))
}
