//! Intents as operators see them (`/harbor/operator/v1/intents`): the tenant's
//! intents page by page, and one intent with its reservations, decisions and
//! evidence. Read-only, so an agent key of the tenant may read them too (the
//! Paybond CLI's `intents list|get` call them with the agent key).

use paybond_middleware_core::wire::{
    CompensationRecorded, CompensationRequest, LifecycleStatus, Principal, Role, VerifyResult,
};
pub use paybond_middleware_core::wire::{
    DecisionRecord, DecisionView, EvidenceView, OperatorIntent, OperatorIntentDetail,
    OperatorIntentList, ReservationView,
};
use std::sync::Arc;
use uuid::Uuid;

use crate::engine::lifecycle::{lifecycle, live_reservations, parse_cursor, rfc3339};
use crate::engine::{Engine, READERS_AND_AGENTS, require_role};
use crate::error::ApiError;
use crate::store::{IntentSummaryRow, Tx};

/// The largest page of intents.
pub const MAX_INTENT_PAGE: u32 = 500;

/// Decisions an intent's view lists at most (the latest).
pub const MAX_INTENT_DECISIONS: u32 = 200;

/// What `GET /harbor/operator/v1/intents` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntentQuery {
    /// Only intents in this state.
    pub state: Option<LifecycleStatus>,
    /// At most this many (1 to [`MAX_INTENT_PAGE`]; default 100).
    pub limit: Option<u32>,
    /// Where the previous page ended (its `next_cursor`).
    pub cursor: Option<String>,
}

/// The stored name of a state (its wire name).
fn state_name(state: LifecycleStatus) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A decision of `tenant`: its intent, outcome, stored answer and time; 404 if the
/// tenant has none of that id.
fn find_decision(
    tx: &dyn Tx,
    tenant: &str,
    decision_id: Uuid,
) -> Result<(String, String, String, i64), ApiError> {
    tx.decision_row(tenant, &decision_id.to_string())?
        .map(|d| (d.intent, d.outcome, d.response, d.created_ms))
        .ok_or_else(|| {
            ApiError::not_found("decision_not_found", "no such decision for this tenant")
        })
}

fn summary(tx: &dyn Tx, now: i64, row: IntentSummaryRow) -> Result<OperatorIntent, ApiError> {
    let IntentSummaryRow {
        id,
        operations: ops,
        budget_cents: budget,
        currency,
        state,
        deadline_ms: deadline,
        consumed_cents: consumed,
        reserved_cents: reserved,
        created_ms: created,
    } = row;
    let (reserved, open) = live_reservations(tx, &id, reserved, now)?;
    let state = lifecycle(&state);
    Ok(OperatorIntent {
        intent_id: Uuid::parse_str(&id)
            .map_err(|e| ApiError::internal(format_args!("stored intent id: {e}")))?,
        state,
        status: state,
        allowed_tools: serde_json::from_str(&ops)?,
        budget_cents: budget,
        amount_cents: budget,
        consumed_cents: consumed,
        reserved_cents: reserved,
        remaining_cents: budget.saturating_sub(consumed).saturating_sub(reserved),
        open_reservations: open,
        currency,
        deadline: rfc3339(deadline),
        created_at: rfc3339(created),
    })
}

impl Engine {
    /// `GET /v1/spend/decisions/{id}`: a decision of the key's tenant as it was made,
    /// with its proof trace.
    pub async fn decision(
        self: &Arc<Self>,
        principal: &Principal,
        decision_id: Uuid,
    ) -> Result<DecisionRecord, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.decision_blocking(&principal, decision_id))
            .await
    }

    /// [`Self::decision`] on the caller's thread, which waits for the store.
    pub(crate) fn decision_blocking(
        &self,
        principal: &Principal,
        decision_id: Uuid,
    ) -> Result<DecisionRecord, ApiError> {
        require_role(principal, READERS_AND_AGENTS)?;
        self.read(|tx, _| {
            let (intent, outcome, response, created) =
                find_decision(tx, &principal.tenant_id, decision_id)?;
            Ok(DecisionRecord {
                decision_id,
                intent_id: Uuid::parse_str(&intent)
                    .map_err(|e| ApiError::internal(format_args!("stored intent id: {e}")))?,
                outcome,
                created_at: rfc3339(created),
                result: serde_json::from_str(&response)?,
            })
        })
    }

    /// `GET /harbor/operator/v1/intents`: the tenant's intents, newest first.
    pub async fn operator_intents(
        self: &Arc<Self>,
        principal: &Principal,
        query: &IntentQuery,
    ) -> Result<OperatorIntentList, ApiError> {
        let principal = principal.clone();
        let query = query.clone();
        self.blocking(move |e| e.operator_intents_blocking(&principal, &query))
            .await
    }

    /// [`Self::operator_intents`] on the caller's thread, which waits for the store.
    pub(crate) fn operator_intents_blocking(
        &self,
        principal: &Principal,
        query: &IntentQuery,
    ) -> Result<OperatorIntentList, ApiError> {
        require_role(principal, READERS_AND_AGENTS)?;
        let limit = query.limit.unwrap_or(100);
        if !(1..=MAX_INTENT_PAGE).contains(&limit) {
            return Err(ApiError::bad_request(
                "invalid_query_parameter",
                format!("limit {limit} is not from 1 to {MAX_INTENT_PAGE}"),
            ));
        }
        let (after_ms, after_id) = match query.cursor.as_deref() {
            Some(c) => parse_cursor(c)?,
            None => (i64::MAX, String::new()),
        };
        let state = query.state.map(state_name);
        self.read(|tx, now| {
            let mut rows = tx.intent_page(
                &principal.tenant_id,
                state.as_deref(),
                (after_ms, &after_id),
                limit + 1,
            )?;
            let more = rows.len() > limit as usize;
            rows.truncate(limit as usize);
            let next_cursor = more
                .then(|| rows.last().map(|r| format!("{}.{}", r.created_ms, r.id)))
                .flatten();
            let intents = rows
                .into_iter()
                .map(|row| summary(tx, now, row))
                .collect::<Result<_, _>>()?;
            Ok(OperatorIntentList {
                intents,
                next_cursor,
            })
        })
    }

    /// `GET /harbor/operator/v1/intents/{id}`: one intent with its reservations,
    /// decisions and evidence.
    pub async fn operator_intent(
        self: &Arc<Self>,
        principal: &Principal,
        intent_id: Uuid,
    ) -> Result<OperatorIntentDetail, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.operator_intent_blocking(&principal, intent_id))
            .await
    }

    /// [`Self::operator_intent`] on the caller's thread, which waits for the store.
    pub(crate) fn operator_intent_blocking(
        &self,
        principal: &Principal,
        intent_id: Uuid,
    ) -> Result<OperatorIntentDetail, ApiError> {
        require_role(principal, READERS_AND_AGENTS)?;
        let id = intent_id.to_string();
        self.read(|tx, now| {
            let row = tx
                .intent_summary(&principal.tenant_id, &id)?
                .ok_or_else(|| {
                    ApiError::not_found("intent_not_found", "no such intent for this tenant")
                })?;
            let intent = summary(tx, now, row)?;
            let reservations = tx
                .reservations_of_intent(&id)?
                .into_iter()
                .map(|r| ReservationView {
                    decision_id: r.id,
                    tool: r.tool,
                    operation: r.operation,
                    vendor_id: r.vendor,
                    agent_subject: r.agent_subject,
                    amount_cents: r.amount_cents,
                    actual_cents: r.actual_cents,
                    // A reservation past its TTL is expired, whether or not the sweep
                    // has marked it yet.
                    state: if r.state == "open" && r.expires_ms <= now {
                        "expired".to_owned()
                    } else {
                        r.state
                    },
                    created_at: rfc3339(r.created_ms),
                    expires_at: rfc3339(r.expires_ms),
                })
                .collect();
            let decisions = tx
                .decisions_of_intent(&principal.tenant_id, &id, MAX_INTENT_DECISIONS)?
                .into_iter()
                .map(|d| {
                    let answer: Option<VerifyResult> = serde_json::from_str(&d.response).ok();
                    DecisionView {
                        decision_id: d.id,
                        outcome: d.outcome,
                        reason_codes: answer
                            .as_ref()
                            .map(|a| a.reason_codes.clone())
                            .unwrap_or_default(),
                        approval_request_id: answer.as_ref().and_then(|a| a.approval_request_id),
                        policy_version: answer.as_ref().and_then(|a| a.policy_version),
                        created_at: rfc3339(d.created_ms),
                        checks: answer.map(|a| a.checks).unwrap_or_default(),
                    }
                })
                .collect();
            let evidence = tx
                .evidence_of_intent(&principal.tenant_id, &id)?
                .into_iter()
                .map(|e| EvidenceView {
                    decision_id: e.decision,
                    operation: e.operation,
                    status: e.status,
                    cost_cents: e.cost_cents,
                    predicate_passed: e.predicate_passed,
                    submitted_at: rfc3339(e.created_ms),
                })
                .collect();
            Ok(OperatorIntentDetail {
                intent,
                reservations,
                decisions,
                evidence,
            })
        })
    }
}

impl Engine {
    /// `POST /v1/spend/decisions/{id}/compensation`: a paid step's compensation
    /// (a refund, a cancellation), recorded in the ledger as a `compensation` event
    /// linked to its allowed decision.
    pub async fn record_compensation(
        self: &Arc<Self>,
        principal: &Principal,
        decision_id: Uuid,
        req: &CompensationRequest,
        idempotency_key: Option<&str>,
    ) -> Result<CompensationRecorded, ApiError> {
        let principal = principal.clone();
        let req = req.clone();
        let idempotency_key = idempotency_key.map(str::to_owned);
        self.blocking(move |e| {
            e.record_compensation_blocking(
                &principal,
                decision_id,
                &req,
                idempotency_key.as_deref(),
            )
        })
        .await
    }

    /// [`Self::record_compensation`] on the caller's thread, which waits for the store.
    pub(crate) fn record_compensation_blocking(
        &self,
        principal: &Principal,
        decision_id: Uuid,
        req: &CompensationRequest,
        idempotency_key: Option<&str>,
    ) -> Result<CompensationRecorded, ApiError> {
        require_role(principal, &[Role::Agent, Role::Operator, Role::TenantAdmin])?;
        let error = req
            .error
            .as_deref()
            .map(|e| e.chars().take(1_000).collect::<String>());
        for (field, value) in [
            ("workflow", &req.workflow),
            ("tool_call_id", &req.tool_call_id),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.is_empty() || v.len() > 255)
            {
                return Err(ApiError::unprocessable(
                    "invalid_field",
                    format!("{field}: 1 to 255 characters"),
                ));
            }
            crate::engine::bounded(field, value.as_deref())?;
        }
        self.idempotent(
            principal,
            "spend.compensation",
            None,
            idempotency_key,
            req,
            |tx, now| {
                let (intent, outcome, _, _) = find_decision(tx, &principal.tenant_id, decision_id)?;
                if outcome != "allow" {
                    return Err(ApiError::new(
                        409,
                        "not_compensable",
                        format!("the decision is a {outcome}: only an allowed (paid) step is compensated"),
                    ));
                }
                let ledger_seq = crate::engine::ledger::append(
                    tx,
                    &principal.tenant_id,
                    "compensation",
                    serde_json::json!({
                        "decision_id": decision_id,
                        "intent_id": intent,
                        "outcome": req.outcome,
                        "error": error,
                        "workflow": req.workflow,
                        "tool_call_id": req.tool_call_id,
                        "by": principal.key_id,
                    }),
                    now,
                )?;
                Ok(CompensationRecorded {
                    decision_id,
                    outcome: req.outcome,
                    ledger_seq,
                })
            },
        )
    }
}
