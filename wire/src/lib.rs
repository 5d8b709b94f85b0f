//! The gateway's HTTP wire types (`gateway/openapi.json`), shared by the client, the server and the embedded gateway.
//!
//! Bodies are JSON with snake_case fields. Optional response fields default when
//! absent, so a client written to this contract also reads the hosted gateway's
//! leaner answers; fields the layer depends on (`allow`, `tenant`, `intent_id`) are
//! required, so an answer without them is malformed and fails closed.
//!
//! ```
//! use paybond_wire::{CapabilityToken, VerifyRequest, VerifyResult};
//!
//! let request = VerifyRequest {
//!     intent_id: uuid::Uuid::new_v4(),
//!     token: CapabilityToken::new("capability-token"),
//!     operation: "travel.book_hotel".into(),
//!     requested_spend_cents: 12_000,
//!     vendor_id: None,
//!     task_id: None,
//!     workflow_id: None,
//!     tool_call_id: Some("call-1".into()),
//!     tool_name: None,
//!     currency: None,
//!     agent_subject: None,
//!     approval_token: None,
//!     idempotency_key: None,
//!     phase: None,
//! };
//! let body = serde_json::to_value(&request)?;
//! assert_eq!(body["requested_spend_cents"], 12_000);
//! assert_eq!(body["token"], "capability-token"); // on the wire, and only there
//! assert!(!format!("{request:?}").contains("capability-token"));
//!
//! // An answer without the fields the layer depends on is malformed: it fails closed.
//! assert!(serde_json::from_str::<VerifyResult>(r#"{"allow": true}"#).is_err());
//! # Ok::<_, serde_json::Error>(())
//! ```

use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod secret;

pub use secret::{ApiKey, ApprovalToken, CapabilityToken};

/// Sandbox or live: which rail an API key and its tenant act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    /// Simulated money.
    Sandbox,
    /// Real money.
    Live,
}

/// The role of a service account's API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Role {
    /// Runs agents: verify, complete, evidence; reads its tenant's approvals.
    Agent,
    /// Approves or denies held requests; reads the ledger.
    Operator,
    /// Publishes policies.
    TenantAdmin,
    /// Reads spend, decisions, the ledger and audit exports; decides nothing and
    /// changes no policy.
    Analyst,
    /// A role this version does not know.
    #[serde(other)]
    Unknown,
}

/// `GET /v1/auth/principal`: who an API key is. The tenant comes from here, never from user input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct Principal {
    /// The key's tenant.
    pub tenant_id: String,
    /// Sandbox or live.
    pub environment: Environment,
    /// The key's primary role.
    pub service_account_role: Role,
    /// Every role the key holds.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// The service account's subject.
    #[serde(default)]
    pub subject: String,
    /// Public identifier of the key (never the key itself).
    #[serde(default)]
    pub key_id: String,
}

/// Where a run stands in its plan: EXPLORE, then DECIDE, then COMMIT, forward
/// only. A policy's `spend_controls.phases.payment_phase` refuses side-effecting
/// calls made before that phase (`phase_not_committed`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    /// Looking around: read-only tools only, when the policy names a payment phase.
    #[default]
    #[serde(alias = "explore")]
    Explore,
    /// Choosing what to do.
    #[serde(alias = "decide")]
    Decide,
    /// Committed to a plan: paid steps may run.
    #[serde(alias = "commit")]
    Commit,
}

impl Phase {
    /// `EXPLORE`, `DECIDE` or `COMMIT`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Explore => "EXPLORE",
            Self::Decide => "DECIDE",
            Self::Commit => "COMMIT",
        }
    }

    /// A phase by its name, in any case.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "EXPLORE" => Some(Self::Explore),
            "DECIDE" => Some(Self::Decide),
            "COMMIT" => Some(Self::Commit),
            _ => None,
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `POST /verify`: may this call run?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct VerifyRequest {
    /// The intent the capability token was minted for.
    pub intent_id: Uuid,
    /// The intent-scoped capability token.
    pub token: CapabilityToken,
    /// Operation to authorize, e.g. `travel.book_hotel`.
    pub operation: String,
    /// Amount to reserve, in cents.
    pub requested_spend_cents: u64,
    /// Vendor the money goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<String>,
    /// Task the call belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Workflow the call belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// The agent framework's id for this tool call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The tool the agent called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    /// ISO 4217 currency, lowercase (`usd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Which agent asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_subject: Option<String>,
    /// The token an operator's approval yielded, for the retry of a held request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_token: Option<ApprovalToken>,
    /// Same meaning as the `idempotency-key` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The run's phase when the call was made; where the policy names a payment
    /// phase, a call without one, or before it, is denied `phase_not_committed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
}

impl VerifyRequest {
    /// A verify of `requested_spend_cents` for `operation` on `intent_id`, every
    /// optional field unset (set those with struct update syntax).
    pub fn new(
        intent_id: Uuid,
        token: CapabilityToken,
        operation: impl Into<String>,
        requested_spend_cents: u64,
    ) -> Self {
        Self {
            intent_id,
            token,
            operation: operation.into(),
            requested_spend_cents,
            vendor_id: None,
            task_id: None,
            workflow_id: None,
            tool_call_id: None,
            tool_name: None,
            currency: None,
            agent_subject: None,
            approval_token: None,
            idempotency_key: None,
            phase: None,
        }
    }
}

/// The scope whose budget governed a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct SpendScope {
    /// `intent`, `tenant`, `agent`, `vendor` or `tool`.
    pub scope_type: String,
    /// Which one of that type.
    pub scope_key: String,
}

/// The answer to `POST /verify`. A denial or a hold is a 200 with `allow: false`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct VerifyResult {
    /// The final decision.
    pub allow: bool,
    /// Audit record of the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_id: Option<String>,
    /// Tenant that decided (must equal the caller's).
    pub tenant: String,
    /// Echo of the request's intent.
    pub intent_id: Uuid,
    /// `allowed`, `approval_required`, or the first denial reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Human-readable explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The decision, used to finalize its reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<Uuid>,
    /// The approval request a hold created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_request_id: Option<Uuid>,
    /// Version of the effective policy that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
    /// `sha256:` digest of the effective policy that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_digest: Option<String>,
    /// Machine-readable policy outcomes, e.g. `tool_cap_exceeded`.
    #[serde(default)]
    pub reason_codes: Vec<String>,
    /// Scope that governed the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_scope: Option<SpendScope>,
    /// Remaining headroom in that scope, in cents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_cents: Option<u64>,
    /// Seconds to wait before asking again (rate limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// A policy hold: an operator must approve before the call may run.
    #[serde(default)]
    pub approval_required: bool,
    /// The checks this decision evaluated, in order, each with its inputs and
    /// result: the proof of why it was decided so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<PolicyCheck>,
}

/// The three outcomes of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Run the tool.
    Allow,
    /// Wait for an operator, then retry with the approval token.
    Hold,
    /// Never run the tool.
    Deny,
}

impl Decision {
    /// Its name, as serialized: `allow`, `hold` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Hold => "hold",
            Self::Deny => "deny",
        }
    }
}

impl Finalization {
    /// Its name, as serialized: `consumed` or `released`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Consumed => "consumed",
            Self::Released => "released",
        }
    }
}

impl VerifyResult {
    /// Allow, hold or deny.
    pub fn decision(&self) -> Decision {
        match (self.allow, self.approval_required) {
            (true, _) => Decision::Allow,
            (false, true) => Decision::Hold,
            (false, false) => Decision::Deny,
        }
    }
}

/// How a reservation is finalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Finalization {
    /// The tool ran: settle its actual cost, return the rest.
    Consumed,
    /// The tool failed or was cancelled: return the whole reservation.
    Released,
}

/// `POST /v1/spend/decisions/{decision_id}/complete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct CompleteRequest {
    /// Consumed or released.
    pub outcome: Finalization,
    /// The actual cost when consumed; never more than reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_spend_cents: Option<u64>,
}

/// The answer to a complete. Every field is optional on the wire; when the gateway
/// echoes the decision id it must be the one finalized.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct CompleteResponse {
    /// The finalized decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<Uuid>,
    /// How it was finalized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Finalization>,
    /// Cost settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_spend_cents: Option<u64>,
    /// Amount returned to the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned_cents: Option<u64>,
    /// The cost the caller reported, when it was above the reservation: the
    /// reservation was settled instead, and the overrun recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_spend_cents: Option<u64>,
}

/// Lifecycle of an intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LifecycleStatus {
    /// Created, not yet funded.
    Created,
    /// Funded: calls may be verified.
    Funded,
    /// Evidence received.
    EvidenceSubmitted,
    /// Settled to the payee.
    Released,
    /// Returned to the payer.
    Refunded,
    /// Past its deadline.
    Expired,
}

/// `POST /v1/sandbox/guardrails/bootstrap`: a funded sandbox intent and its capability token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct SandboxBootstrapRequest {
    /// The intent's one allowed operation.
    pub operation: String,
    /// The intent's budget, in cents.
    pub requested_spend_cents: u64,
    /// Currency, lowercase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// JSON Schema evidence payloads must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_schema: Option<serde_json::Value>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Same meaning as the `idempotency-key` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The answer to a sandbox bootstrap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct SandboxBootstrapResponse {
    /// The caller's tenant.
    pub tenant_id: String,
    /// The new intent.
    pub intent_id: Uuid,
    /// Its allowed operation.
    pub operation: String,
    /// Its budget.
    pub requested_spend_cents: u64,
    /// `funded`.
    pub sandbox_lifecycle_status: LifecycleStatus,
    /// The capability token minted for it.
    pub capability_token: CapabilityToken,
}

/// `POST /v1/sandbox/guardrails/{intent_id}/evidence`: what a call did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct EvidenceRequest {
    /// The preset's payload, e.g. `{"status": "completed", "cost_cents": 18700}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// Attached artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Vec<serde_json::Value>>,
    /// Operation the evidence is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Amount reserved for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_spend_cents: Option<u64>,
    /// Free-form metadata (decision id, tool call id, evidence preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// The answer to an evidence submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct EvidenceResponse {
    /// The caller's tenant.
    pub tenant_id: String,
    /// Echo of the intent.
    pub intent_id: Uuid,
    /// The operation the evidence is for (the request's, else the intent's).
    pub operation: String,
    /// The amount it is for (the request's, else the decision's reservation, else
    /// the intent's budget).
    pub requested_spend_cents: u64,
    /// The intent's state after the evidence.
    pub sandbox_lifecycle_status: LifecycleStatus,
    /// Whether the evidence satisfied the preset's predicate.
    pub predicate_passed: bool,
}

/// State of an approval request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for operators.
    Pending,
    /// Quorum reached: an approval token is available.
    Approved,
    /// An operator denied it.
    Denied,
    /// Nobody decided in time.
    Expired,
}

/// `GET /v1/approvals/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct ApprovalStatus {
    /// The approval request.
    pub approval_request_id: Uuid,
    /// Where it stands.
    pub state: ApprovalState,
    /// The held decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<Uuid>,
    /// Intent of the held request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent_id: Option<Uuid>,
    /// Operation of the held request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Amount of the held request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_spend_cents: Option<u64>,
    /// Why it was held.
    #[serde(default)]
    pub reason_codes: Vec<String>,
    /// Approvals so far.
    #[serde(default)]
    pub approvals: u32,
    /// Approvals needed.
    #[serde(default)]
    pub quorum: u32,
    /// Present once approved: retry the same request with it, once, before it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_token: Option<ApprovalToken>,
    /// When the request or its token expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The policy tool of the held request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The vendor of the held request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<String>,
    /// The key id of the agent that asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// When it was held (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// The error envelope of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `idempotency_key_reused`.
    pub error: String,
    /// What was wrong.
    #[serde(default)]
    pub message: String,
    /// Correlation id.
    #[serde(default)]
    pub request_id: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn verify_result_reads_a_minimal_hold_and_ignores_unknown_fields() {
        let intent = Uuid::new_v4();
        let result: VerifyResult = serde_json::from_value(json!({
            "allow": false,
            "tenant": "t1",
            "intent_id": intent,
            "code": "approval_required",
            "approval_required": true,
            "approval_request_id": Uuid::nil(),
            "reason_codes": ["approval_threshold_exceeded"],
            "something_new": 1
        }))
        .unwrap();
        assert_eq!(result.decision(), Decision::Hold);
        assert_eq!(result.reason_codes, ["approval_threshold_exceeded"]);
        assert_eq!(result.decision_id, None);
    }

    #[test]
    fn verify_result_without_tenant_is_malformed() {
        let err = serde_json::from_value::<VerifyResult>(json!({
            "allow": true, "intent_id": Uuid::nil()
        }))
        .unwrap_err();
        assert!(err.to_string().contains("tenant"), "{err}");
    }

    #[test]
    fn verify_request_omits_absent_fields() {
        let req = VerifyRequest {
            tool_call_id: Some("call_1".into()),
            ..VerifyRequest::new(
                Uuid::nil(),
                CapabilityToken::new("tok"),
                "travel.book_hotel",
                12_000,
            )
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({
                "intent_id": Uuid::nil(),
                "token": "tok",
                "operation": "travel.book_hotel",
                "requested_spend_cents": 12000,
                "tool_call_id": "call_1"
            })
        );
    }

    #[test]
    fn enums_use_snake_case() {
        assert_eq!(
            serde_json::to_value(Role::TenantAdmin).unwrap(),
            json!("tenant_admin")
        );
        assert_eq!(
            serde_json::from_value::<Role>(json!("auditor")).unwrap(),
            Role::Unknown
        );
        assert_eq!(
            serde_json::to_value(LifecycleStatus::EvidenceSubmitted).unwrap(),
            json!("evidence_submitted")
        );
        assert_eq!(
            serde_json::to_value(CompleteRequest {
                outcome: Finalization::Released,
                actual_spend_cents: None
            })
            .unwrap(),
            json!({"outcome": "released"})
        );
    }
}

/// `POST /harbor/intents`: an intent on the simulator rail, funded at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct CreateIntentRequest {
    /// Operations the intent allows (delegated tool names).
    pub allowed_tools: Vec<String>,
    /// The budget, in cents.
    pub budget_cents: u64,
    /// Three lowercase letters (default `usd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Seconds until the deadline (default: the gateway's intent TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_seconds: Option<u64>,
    /// JSON Schema that evidence payloads must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_schema: Option<serde_json::Value>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Same meaning as the `idempotency-key` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// An intent as the Harbor routes describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct IntentView {
    /// The intent.
    pub intent_id: Uuid,
    /// Its tenant.
    pub tenant: String,
    /// `created`, `funded`, `evidence_submitted`, `released`, `refunded` or `expired`.
    pub state: LifecycleStatus,
    /// Operations it allows.
    pub allowed_tools: Vec<String>,
    /// Budget in cents.
    pub budget_cents: u64,
    /// Consumed so far.
    pub consumed_cents: u64,
    /// Held by open reservations.
    pub reserved_cents: u64,
    /// Reservations not yet finalized.
    #[serde(default)]
    pub open_reservations: u64,
    /// Currency.
    pub currency: String,
    /// Deadline (RFC 3339).
    pub deadline: String,
    /// Present when the intent was just funded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability_token: Option<CapabilityToken>,
}

/// A tenant's effective policy, as the engine enforces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct EffectivePolicy {
    /// The tenant.
    pub tenant_id: String,
    /// Increases with every publish that changes the policy.
    pub version: u64,
    /// `sha256:` digest of `policy`.
    pub digest: String,
    /// The org base it extends, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_policy_id: Option<String>,
    /// The merged policy (flat, version 1).
    pub policy: paybond_policies::PolicyDocument,
}

/// One check a decision evaluated: what it looked at and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct PolicyCheck {
    /// The check, e.g. `intent`, `per_call_cap`, `intent_budget`, `rolling_cap`,
    /// `rate_limit`, `approval_threshold`.
    pub name: String,
    /// `pass`, `fail` (the decision is a deny) or `hold` (held for approval).
    pub result: String,
    /// What it compared: limits, amounts used, windows.
    pub inputs: serde_json::Value,
}

/// `POST /v1/spend/preflight`: the verify body without a capability token. Every
/// check of verify runs; nothing is reserved, held or recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct PreflightRequest {
    /// The intent to spend from.
    pub intent_id: Uuid,
    /// The operation, or `*` for the intent's budget only.
    pub operation: String,
    /// Amount in cents (0 when absent).
    #[serde(default)]
    pub requested_spend_cents: u64,
    /// The vendor paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<String>,
    /// The policy tool the call belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    /// Correlation: task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Correlation: workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// Correlation: tool call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Currency, lowercase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// A sub-agent of the key's subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_subject: Option<String>,
    /// An approval token to check, as a retried verify would carry it (not used up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_token: Option<ApprovalToken>,
    /// The run's phase, as verify would carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
}

/// The answer to a preflight: what verify would decide now, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct PreflightResult {
    /// `allow`, `hold` or `deny`.
    pub classification: String,
    /// `allow`, `approval_required` or `deny`.
    pub outcome: String,
    /// Why, as verify would give them.
    #[serde(default)]
    pub reason_codes: Vec<String>,
    /// Budget left on the intent, open reservations counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_cents: Option<u64>,
    /// What the budget is scoped to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_scope: Option<SpendScope>,
    /// The policy version the checks used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
    /// One sentence for a person.
    pub explanation: String,
    /// Every check evaluated, in order.
    #[serde(default)]
    pub checks: Vec<PolicyCheck>,
}

/// One intent in the operator's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct OperatorIntent {
    /// The intent.
    pub intent_id: Uuid,
    /// `created`, `funded`, `evidence_submitted`, `released`, `refunded` or `expired`.
    pub state: LifecycleStatus,
    /// The same, under the name the Paybond CLI reads.
    pub status: LifecycleStatus,
    /// Operations it allows.
    pub allowed_tools: Vec<String>,
    /// Budget in cents.
    pub budget_cents: u64,
    /// The budget again, under the name the Paybond CLI reads.
    pub amount_cents: u64,
    /// Consumed so far.
    pub consumed_cents: u64,
    /// Held by open reservations (past-TTL ones left out).
    pub reserved_cents: u64,
    /// Budget left: neither consumed nor reserved.
    pub remaining_cents: u64,
    /// Reservations not yet finalized.
    pub open_reservations: u64,
    /// Currency.
    pub currency: String,
    /// Deadline (RFC 3339).
    pub deadline: String,
    /// Creation time (RFC 3339).
    pub created_at: String,
}

/// `GET /harbor/operator/v1/intents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct OperatorIntentList {
    /// Newest first.
    pub intents: Vec<OperatorIntent>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A reservation of an intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct ReservationView {
    /// The allowed decision that made it.
    pub decision_id: String,
    /// The policy tool it is counted under.
    pub tool: String,
    /// The operation verified.
    pub operation: String,
    /// The vendor, when the call named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<String>,
    /// The sub-agent, when the call named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_subject: Option<String>,
    /// Amount reserved.
    pub amount_cents: u64,
    /// Amount consumed, once finalized as consumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_cents: Option<u64>,
    /// `open`, `consumed`, `released` or `expired`.
    pub state: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// When it lapses unless finalized (RFC 3339).
    pub expires_at: String,
}

/// A decision on an intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct DecisionView {
    /// The decision.
    pub decision_id: String,
    /// `allow`, `hold` or `deny`.
    pub outcome: String,
    /// Why.
    pub reason_codes: Vec<String>,
    /// The approval request of a hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_request_id: Option<Uuid>,
    /// The policy version that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
    /// When (RFC 3339).
    pub created_at: String,
    /// The checks it evaluated, each with its inputs and result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<PolicyCheck>,
}

/// Evidence submitted for an intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct EvidenceView {
    /// The decision it is for, when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<String>,
    /// The operation it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The payload's `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The payload's `cost_cents`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_cents: Option<u64>,
    /// Whether the evidence preset's predicate held.
    pub predicate_passed: bool,
    /// When (RFC 3339).
    pub submitted_at: String,
}

/// `GET /harbor/operator/v1/intents/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct OperatorIntentDetail {
    /// The intent and its money.
    #[serde(flatten)]
    pub intent: OperatorIntent,
    /// Every reservation, newest first.
    pub reservations: Vec<ReservationView>,
    /// Its decisions, newest first (the latest 200).
    pub decisions: Vec<DecisionView>,
    /// Evidence submitted, newest first.
    pub evidence: Vec<EvidenceView>,
}

/// `GET /v1/spend/decisions/{decision_id}`: a decision as it was made, with the
/// checks behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct DecisionRecord {
    /// The decision.
    pub decision_id: Uuid,
    /// Its intent.
    pub intent_id: Uuid,
    /// `allow`, `hold` or `deny`.
    pub outcome: String,
    /// When (RFC 3339).
    pub created_at: String,
    /// The answer verify gave, its `checks` (the proof trace) included.
    pub result: VerifyResult,
}

/// How a compensating action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum CompensationOutcome {
    /// The compensating action (a refund, a cancellation) succeeded.
    Compensated,
    /// It failed; `error` says why.
    CompensationFailed,
}

/// `POST /v1/spend/decisions/{id}/compensation`: a paid step's compensation, recorded
/// in the ledger as a `compensation` event linked to the decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CompensationRequest {
    /// How it ended.
    pub outcome: CompensationOutcome,
    /// Why it failed (at most 1,000 characters are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The workflow (transaction scope) the step belonged to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// The step's tool call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// The answer: where the compensation landed in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemas", derive(schemars::JsonSchema))]
pub struct CompensationRecorded {
    /// The compensated decision.
    pub decision_id: Uuid,
    /// How it ended.
    pub outcome: CompensationOutcome,
    /// The ledger entry.
    pub ledger_seq: u64,
}
