//! Intents, evidence, finalizing reservations, approvals and the expiry sweep.

use std::sync::Arc;

use paybond_middleware_core::wire::{
    ApprovalState, ApprovalStatus, CompleteRequest, CompleteResponse, EvidenceRequest,
    EvidenceResponse, Finalization, LifecycleStatus, Principal, Role, SandboxBootstrapRequest,
    SandboxBootstrapResponse,
};
pub use paybond_middleware_core::wire::{CreateIntentRequest, IntentView};
use paybond_middleware_core::{ApprovalToken, CapabilityToken};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::engine::counters::{self, Counted};
use crate::engine::decide::MAX_AMOUNT_CENTS;
use crate::engine::ledger;
use crate::engine::live::LiveReservation;
use crate::engine::{Engine, bounded, require_role};
use crate::error::ApiError;
use crate::store::{
    ApprovalRow, Finalized, NewEvidence, NewIntent, ReservationRow, ToComplete, Tx, approval_state,
};
use crate::tokens::{Claims, sha256_hex};

/// `GET /v1/approvals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApprovalList {
    /// Newest first (oldest first when asked).
    pub approvals: Vec<ApprovalStatus>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /v1/approvals?state=&limit=&cursor=&order=`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalQuery {
    /// Only approvals in this state.
    pub state: Option<ApprovalState>,
    /// At most this many (1 to [`MAX_APPROVAL_PAGE`]; default 100).
    pub limit: Option<u32>,
    /// Where the previous page ended (its `next_cursor`).
    pub cursor: Option<String>,
    /// Oldest first instead of newest first.
    pub oldest_first: bool,
    /// Only requests this agent (its key's subject) made.
    pub agent: Option<String>,
    /// Only requests for this tool (or operation).
    pub tool: Option<String>,
    /// Only requests of at least this many cents.
    pub min_amount_cents: Option<u64>,
    /// Only requests of at most this many cents.
    pub max_amount_cents: Option<u64>,
}

/// The filters of an [`ApprovalQuery`] in SQL: `?1` the tenant, `?2` the state's
/// name (or NULL), `?3` now, `?4` the agent, `?5` the tool, `?6` and `?7` the amount
/// range. A pending request past its expiry is expired, swept or not.
/// The largest page of approvals.
pub const MAX_APPROVAL_PAGE: u32 = 500;

/// A cursor: the (creation time, id) of the last approval of a page.
pub(crate) fn parse_cursor(cursor: &str) -> Result<(i64, String), ApiError> {
    cursor
        .split_once('.')
        .and_then(|(ms, id)| Some((ms.parse().ok()?, Uuid::parse_str(id).ok()?.to_string())))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_cursor",
                "cursor: not one this gateway gave (use next_cursor as returned)",
            )
        })
}

/// What one sweep changed.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct SweepReport {
    /// Reservations past their TTL, now expired (their amounts return to the budgets).
    pub reservations_expired: u64,
    /// Approval requests nobody decided in time.
    pub approvals_expired: u64,
    /// Intents past their deadline, moved to released, refunded or expired.
    pub intents_closed: u64,
    /// Idempotency keys past retention.
    pub idempotency_keys_dropped: u64,
}

pub(crate) fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

pub(crate) fn lifecycle(state: &str) -> LifecycleStatus {
    crate::engine::rules::IntentFacts::parse_state(state).unwrap_or(LifecycleStatus::Funded)
}

/// The furthest deadline an intent may have: 366 days, in seconds.
pub const MAX_DEADLINE_SECONDS: u64 = 366 * 24 * 3_600;

/// The most operations one intent may allow.
pub const MAX_INTENT_OPERATIONS: usize = 64;

fn valid_currency(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_lowercase())
}

impl Engine {
    /// `POST /v1/sandbox/guardrails/bootstrap`: a funded sandbox intent whose budget is
    /// `requested_spend_cents` and whose one operation is `operation`.
    pub async fn bootstrap_sandbox(
        self: &Arc<Self>,
        principal: &Principal,
        req: &SandboxBootstrapRequest,
    ) -> Result<SandboxBootstrapResponse, ApiError> {
        let principal = principal.clone();
        let req = req.clone();
        self.blocking(move |e| e.bootstrap_sandbox_blocking(&principal, &req))
            .await
    }

    /// [`Self::bootstrap_sandbox`] on the caller's thread, which waits for the store.
    pub(crate) fn bootstrap_sandbox_blocking(
        &self,
        principal: &Principal,
        req: &SandboxBootstrapRequest,
    ) -> Result<SandboxBootstrapResponse, ApiError> {
        if principal.environment != paybond_middleware_core::wire::Environment::Sandbox {
            return Err(ApiError::forbidden(
                "sandbox_only",
                "sandbox bootstrap needs a sandbox key",
            ));
        }
        bounded("operation", Some(&req.operation))?;
        bounded("idempotency_key", req.idempotency_key.as_deref())?;
        let create = CreateIntentRequest {
            allowed_tools: vec![req.operation.clone()],
            budget_cents: req.requested_spend_cents,
            currency: req.currency.clone(),
            deadline_seconds: None,
            evidence_schema: req.evidence_schema.clone(),
            metadata: req.metadata.clone(),
            idempotency_key: None,
        };
        self.check_intent_request(principal, &create)?;
        // An intent for an operation the tenant's policy would deny every call of
        // is refused now, naming why, rather than funded for nothing.
        if let Some(policy) = self.policy_for(&principal.tenant_id)?
            && policy.policy.default_deny == Some(true)
            && !policy
                .policy
                .tools
                .iter()
                .any(|(name, t)| t.side_effecting && t.operation_for(name) == req.operation)
        {
            return Err(ApiError::unprocessable(
                "operation_not_in_policy",
                format!(
                    "operation: `{}` is the operation of no side-effecting tool of the tenant's \
                     policy `{}` (default_deny: true), so every verify of it would be denied \
                     tool_not_in_policy; add the tool to the policy first",
                    req.operation, policy.policy.name
                ),
            ));
        }
        self.idempotent(
            principal,
            "sandbox.bootstrap",
            None,
            req.idempotency_key.as_deref(),
            req,
            |tx, now| {
                let view = self.insert_intent(tx, now, principal, &create)?;
                Ok(SandboxBootstrapResponse {
                    tenant_id: principal.tenant_id.clone(),
                    intent_id: view.intent_id,
                    operation: req.operation.clone(),
                    requested_spend_cents: req.requested_spend_cents,
                    sandbox_lifecycle_status: LifecycleStatus::Funded,
                    capability_token: view
                        .capability_token
                        .ok_or_else(|| ApiError::internal("no token minted"))?,
                })
            },
        )
    }

    /// `POST /harbor/intents`: creates and (simulator rail) funds an intent.
    pub async fn create_intent(
        self: &Arc<Self>,
        principal: &Principal,
        req: &CreateIntentRequest,
    ) -> Result<IntentView, ApiError> {
        let principal = principal.clone();
        let req = req.clone();
        self.blocking(move |e| e.create_intent_blocking(&principal, &req))
            .await
    }

    /// [`Self::create_intent`] on the caller's thread, which waits for the store.
    pub(crate) fn create_intent_blocking(
        &self,
        principal: &Principal,
        req: &CreateIntentRequest,
    ) -> Result<IntentView, ApiError> {
        self.check_intent_request(principal, req)?;
        self.idempotent(
            principal,
            "harbor.intents.create",
            None,
            req.idempotency_key.as_deref(),
            req,
            |tx, now| self.insert_intent(tx, now, principal, req),
        )
    }

    fn check_intent_request(
        &self,
        principal: &Principal,
        req: &CreateIntentRequest,
    ) -> Result<(), ApiError> {
        require_role(principal, &[Role::Agent])?;
        if req.allowed_tools.is_empty() || req.allowed_tools.iter().any(|t| t.trim().is_empty()) {
            return Err(ApiError::bad_request(
                "invalid_field",
                "allowed_tools (operation) must name at least one non-empty operation",
            ));
        }
        if req.allowed_tools.len() > MAX_INTENT_OPERATIONS {
            return Err(ApiError::unprocessable(
                "too_many_operations",
                format!(
                    "allowed_tools names {} operations; at most {MAX_INTENT_OPERATIONS} are accepted",
                    req.allowed_tools.len()
                ),
            ));
        }
        for (i, op) in req.allowed_tools.iter().enumerate() {
            bounded(&format!("allowed_tools[{i}]"), Some(op))?;
        }
        bounded("idempotency_key", req.idempotency_key.as_deref())?;
        if let Some(s) = req.deadline_seconds
            && !(1..=MAX_DEADLINE_SECONDS).contains(&s)
        {
            return Err(ApiError::unprocessable(
                "deadline_out_of_range",
                format!("deadline_seconds must be between 1 and {MAX_DEADLINE_SECONDS} (366 days)"),
            ));
        }
        if req.budget_cents == 0 || req.budget_cents > MAX_AMOUNT_CENTS {
            return Err(ApiError::unprocessable(
                "amount_out_of_range",
                format!("the budget must be between 1 and {MAX_AMOUNT_CENTS} cents"),
            ));
        }
        if let Some(c) = &req.currency
            && !valid_currency(c)
        {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("currency `{c}` is not three lowercase letters"),
            ));
        }
        if let Some(schema) = &req.evidence_schema
            && !schema.is_object()
        {
            return Err(ApiError::bad_request(
                "invalid_field",
                "evidence_schema must be a JSON Schema object",
            ));
        }
        if let Some(policy) = self.policy_for(&principal.tenant_id)?
            && let Some(usd) = policy
                .policy
                .intent
                .as_ref()
                .and_then(|i| i.budget.as_ref())
                .and_then(|b| b.max_spend_usd)
        {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // finite, ≥ 0
            let cap = (usd * 100.0).round() as u64;
            if req.budget_cents > cap {
                return Err(ApiError::unprocessable(
                    "intent_budget_above_policy",
                    format!(
                        "budget_cents: {} is above the policy's intent budget of {}",
                        paybond_middleware_core::format_money(
                            req.budget_cents,
                            req.currency.as_deref().unwrap_or("usd")
                        ),
                        paybond_middleware_core::format_money(cap, "usd")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn insert_intent(
        &self,
        tx: &dyn Tx,
        now: i64,
        principal: &Principal,
        req: &CreateIntentRequest,
    ) -> Result<IntentView, ApiError> {
        let id = Uuid::now_v7();
        let deadline_ms = req
            .deadline_seconds
            .map_or(now + self.config.intent_ttl_ms, |s| {
                now.saturating_add(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX))
            });
        let currency = req.currency.clone().unwrap_or_else(|| "usd".to_owned());
        let mut tools = req.allowed_tools.clone();
        tools.sort();
        tools.dedup();
        let schema = req.evidence_schema.as_ref().map(Value::to_string);
        let metadata = req.metadata.as_ref().map(Value::to_string);
        tx.create_intent(&NewIntent {
            id: &id.to_string(),
            tenant: &principal.tenant_id,
            operations: &serde_json::to_string(&tools)?,
            budget_cents: req.budget_cents,
            currency: &currency,
            deadline_ms,
            evidence_schema: schema.as_deref(),
            metadata: metadata.as_deref(),
            created_ms: now,
        })?;
        ledger::append(
            tx,
            &principal.tenant_id,
            "intent.created",
            json!({"intent_id": id, "allowed_tools": tools, "budget_cents": req.budget_cents,
                   "currency": currency, "deadline_ms": deadline_ms}),
            now,
        )?;
        ledger::append(
            tx,
            &principal.tenant_id,
            "intent.funded",
            json!({"intent_id": id, "rail": "simulator", "amount_cents": req.budget_cents}),
            now,
        )?;
        let token = self
            .minter
            .mint(&Claims {
                tenant: principal.tenant_id.clone(),
                intent: id.to_string(),
                operations: tools.clone(),
                expires_ms: deadline_ms.min(now + self.config.capability_ttl_ms),
            })
            .map_err(ApiError::internal)?;
        Ok(IntentView {
            intent_id: id,
            tenant: principal.tenant_id.clone(),
            state: LifecycleStatus::Funded,
            allowed_tools: tools,
            budget_cents: req.budget_cents,
            consumed_cents: 0,
            reserved_cents: 0,
            open_reservations: 0,
            currency,
            deadline: rfc3339(deadline_ms),
            capability_token: Some(CapabilityToken::new(token)),
        })
    }

    /// `POST /harbor/intents/{id}/fund`: the simulator rail funds on creation, so
    /// this answers the funded intent (idempotent) with a fresh capability token.
    pub async fn fund_intent(
        self: &Arc<Self>,
        principal: &Principal,
        intent_id: Uuid,
    ) -> Result<IntentView, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.fund_intent_blocking(&principal, intent_id))
            .await
    }

    /// [`Self::fund_intent`] on the caller's thread, which waits for the store.
    pub(crate) fn fund_intent_blocking(
        &self,
        principal: &Principal,
        intent_id: Uuid,
    ) -> Result<IntentView, ApiError> {
        require_role(principal, &[Role::Agent])?;
        self.tx_in(&principal.tenant_id, |tx, now| {
            let mut view = intent_view(tx, now, &principal.tenant_id, intent_id)?;
            if !matches!(
                view.state,
                LifecycleStatus::Funded | LifecycleStatus::EvidenceSubmitted
            ) {
                return Err(ApiError::conflict(
                    "intent_not_fundable",
                    "the intent is closed: past its deadline, released or refunded",
                ));
            }
            let deadline = tx.intent_deadline(&intent_id.to_string())?;
            let token = self
                .minter
                .mint(&Claims {
                    tenant: principal.tenant_id.clone(),
                    intent: intent_id.to_string(),
                    operations: view.allowed_tools.clone(),
                    expires_ms: deadline.min(now + self.config.capability_ttl_ms),
                })
                .map_err(ApiError::internal)?;
            view.capability_token = Some(CapabilityToken::new(token));
            Ok(view)
        })
    }

    /// `GET /harbor/intents/{id}`.
    pub async fn get_intent(
        self: &Arc<Self>,
        principal: &Principal,
        intent_id: Uuid,
    ) -> Result<IntentView, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.get_intent_blocking(&principal, intent_id))
            .await
    }

    /// [`Self::get_intent`] on the caller's thread, which waits for the store.
    pub(crate) fn get_intent_blocking(
        &self,
        principal: &Principal,
        intent_id: Uuid,
    ) -> Result<IntentView, ApiError> {
        self.read(|tx, now| intent_view(tx, now, &principal.tenant_id, intent_id))
    }

    /// `POST /v1/sandbox/guardrails/{intent_id}/evidence` (and the Harbor route): checks
    /// the payload against the intent's evidence schema and the `cost_and_completion`
    /// predicate (status `completed`, cost within the reservation or budget).
    ///
    /// Queued to the SQLite writer without a thread of its own, on the blocking
    /// pool unless the tenant's policy is already parsed.
    pub async fn submit_evidence(
        self: &Arc<Self>,
        principal: Principal,
        intent_id: Uuid,
        req: EvidenceRequest,
        idempotency_key: Option<String>,
    ) -> Result<EvidenceResponse, ApiError> {
        let Some(policy) = self.cached_policy(&principal.tenant_id) else {
            return self
                .blocking(move |e| {
                    e.submit_evidence_blocking(
                        &principal,
                        intent_id,
                        &req,
                        idempotency_key.as_deref(),
                    )
                })
                .await;
        };
        check_evidence(
            &principal,
            &req,
            idempotency_key.as_deref(),
            &self.sensitive_patterns(Some(&policy))?,
        )?;
        self.queue_idempotent(
            principal,
            "evidence",
            Some(intent_id),
            idempotency_key.as_deref(),
            EvidenceKeyed {
                intent_id,
                request: req,
            },
            move |engine, tx, now, principal, keyed| {
                engine.evidence_tx(tx, now, principal, intent_id, &keyed.request)
            },
        )
        .await
    }

    /// [`Self::submit_evidence`] on the caller's thread, which waits for the
    /// commit: what it runs on the blocking pool when the tenant's policy is not
    /// parsed yet.
    fn submit_evidence_blocking(
        &self,
        principal: &Principal,
        intent_id: Uuid,
        req: &EvidenceRequest,
        idempotency_key: Option<&str>,
    ) -> Result<EvidenceResponse, ApiError> {
        // On a shared store the policy is read in the write, under the tenant's
        // lock, once per group of its writes (as verify's is).
        let shared = self.store.shared();
        let sensitive = if shared {
            Arc::from([])
        } else {
            self.sensitive_patterns(self.policy_for(&principal.tenant_id)?.as_deref())?
        };
        check_evidence(principal, req, idempotency_key, &sensitive)?;
        self.idempotent(
            principal,
            "evidence",
            Some(intent_id),
            idempotency_key,
            &EvidenceKeyed {
                intent_id,
                request: req,
            },
            |tx, now| {
                if shared {
                    let policy = self.policy_in(tx, &principal.tenant_id)?;
                    check_sensitive(req, &self.sensitive_patterns(policy.as_deref())?)?;
                }
                self.evidence_tx(tx, now, principal, intent_id, req)
            },
        )
    }

    fn evidence_tx(
        &self,
        tx: &dyn Tx,
        now: i64,
        principal: &Principal,
        intent_id: Uuid,
        req: &EvidenceRequest,
    ) -> Result<EvidenceResponse, ApiError> {
        let intent = intent_id.to_string();
        // From the live state when it holds the intent; else read.
        let held = tx.live().and_then(|live| {
            live.borrow_mut()
                .evidence_facts(&principal.tenant_id, &intent)
        });
        let row = match held {
            Some(f) => Some((f.state, f.budget_cents, f.evidence_schema, f.operations)),
            None => tx
                .evidence_intent_row(&principal.tenant_id, &intent)?
                .map(|i| {
                    serde_json::from_str(&i.operations).map(|operations: Vec<String>| {
                        (i.state, i.budget_cents, i.evidence_schema, operations)
                    })
                })
                .transpose()?,
        };
        let Some((state, budget, schema, operations)) = row else {
            return Err(ApiError::not_found(
                "intent_not_found",
                "no such intent for this tenant",
            ));
        };
        let operation = match req.operation.as_deref() {
            Some(op) if !operations.iter().any(|o| o == op) => {
                return Err(ApiError::unprocessable(
                    "operation_not_allowed",
                    format!("operation: the intent does not allow `{op}`"),
                ));
            }
            Some(op) => op.to_owned(),
            // The intent's first operation: a sandbox guardrail has exactly one.
            None => operations.first().cloned().unwrap_or_default(),
        };
        let payload = req.payload.clone().unwrap_or(Value::Null);
        if let Some(schema) = schema {
            let schema: Value = serde_json::from_str(&schema)?;
            let problems = crate::evidence::validate(&schema, &payload);
            if !problems.is_empty() {
                return Err(ApiError::unprocessable(
                    "evidence_schema_violation",
                    problems.join("; "),
                ));
            }
        }
        let decision_id = req
            .metadata
            .as_ref()
            .and_then(|m| m.get("decision_id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let held = |d: &str| {
            let live = tx.live()?.borrow();
            let r = live.reservation(&principal.tenant_id, d)?;
            (r.intent == intent).then_some(r.amount)
        };
        let bound: u64 = match &decision_id {
            Some(d) => match held(d) {
                Some(amount) => Some(amount),
                None => tx.reservation_amount(d, &intent)?,
            }
            .ok_or_else(|| {
                ApiError::unprocessable(
                    "decision_not_found",
                    "metadata.decision_id names no reservation of this intent",
                )
            })?,
            None => budget,
        };
        let status = payload.get("status").and_then(Value::as_str);
        let cost = payload.get("cost_cents").and_then(Value::as_u64);
        let passed = status == Some("completed") && cost.is_some_and(|c| c <= bound);
        let new_state = if passed && state == "funded" {
            "evidence_submitted"
        } else {
            state.as_str()
        };
        // The writer's live state is kept in step: the intent's new state, if
        // it has one, is all that changes of what a decision reads.
        tx.keep_live();
        if new_state != state {
            tx.set_intent_state(&intent, new_state)?;
            if let Some(live) = tx.live() {
                live.borrow_mut()
                    .state_changed(&intent_id.to_string(), new_state);
            }
        }
        tx.record_evidence(&NewEvidence {
            // Time-ordered, as decision ids, so rows land at the end of the
            // table's B-tree. Random ids split pages in its middle, where
            // SQLite swaps pages through the lock page's number (262,145),
            // and the commit then scans the whole page cache: on the
            // in-memory store, the whole database (about a third of a
            // guarded call's time over `EmbeddedGateway`).
            id: &Uuid::now_v7().to_string(),
            tenant: &principal.tenant_id,
            intent: &intent,
            decision: decision_id.as_deref(),
            operation: &operation,
            status,
            cost_cents: cost,
            predicate_passed: passed,
            created_ms: now,
        })?;
        ledger::append(
            tx,
            &principal.tenant_id,
            "evidence.submitted",
            json!({"intent_id": intent_id, "decision_id": decision_id, "predicate_passed": passed,
                   "status": status, "cost_cents": cost, "state": new_state}),
            now,
        )?;
        Ok(EvidenceResponse {
            tenant_id: principal.tenant_id.clone(),
            intent_id,
            operation,
            requested_spend_cents: req.requested_spend_cents.unwrap_or(bound),
            sandbox_lifecycle_status: lifecycle(new_state),
            predicate_passed: passed,
        })
    }

    /// `POST /v1/spend/decisions/{id}/complete`: settles a reservation as consumed
    /// (`actual_spend_cents` ≤ reserved; the rest returns to the budget) or released.
    /// Finalizing again the same way answers the same; another way is a 409.
    ///
    /// On the SQLite file store it is queued to the writer and awaits its durable
    /// commit without holding a thread.
    pub async fn complete(
        self: &Arc<Self>,
        principal: Principal,
        decision_id: Uuid,
        req: CompleteRequest,
        idempotency_key: Option<String>,
    ) -> Result<CompleteResponse, ApiError> {
        check_complete(&principal, idempotency_key.as_deref())?;
        self.queue_idempotent(
            principal,
            "complete",
            None,
            idempotency_key.as_deref(),
            CompleteKeyed {
                decision_id,
                request: req,
            },
            move |_, tx, now, principal, keyed| {
                complete_tx(tx, now, principal, decision_id, &keyed.request)
            },
        )
        .await
    }

    // ---- approvals ----

    /// `GET /v1/approvals`: the tenant's approval requests, a page at a time, newest
    /// first unless `oldest_first`.
    pub async fn list_approvals(
        self: &Arc<Self>,
        principal: &Principal,
        query: &ApprovalQuery,
    ) -> Result<ApprovalList, ApiError> {
        let principal = principal.clone();
        let query = query.clone();
        self.blocking(move |e| e.list_approvals_blocking(&principal, &query))
            .await
    }

    /// [`Self::list_approvals`] on the caller's thread, which waits for the store.
    pub(crate) fn list_approvals_blocking(
        &self,
        principal: &Principal,
        query: &ApprovalQuery,
    ) -> Result<ApprovalList, ApiError> {
        let limit = query.limit.unwrap_or(100);
        if !(1..=MAX_APPROVAL_PAGE).contains(&limit) {
            return Err(ApiError::bad_request(
                "invalid_query_parameter",
                format!("limit {limit} is not from 1 to {MAX_APPROVAL_PAGE}"),
            ));
        }
        let after = query.cursor.as_deref().map(parse_cursor).transpose()?;
        // Rows strictly after the cursor in the page's order; without one, from the start.
        let (after_ms, after_id) = after.unwrap_or(if query.oldest_first {
            (i64::MIN, String::new())
        } else {
            (i64::MAX, String::new())
        });
        self.read(|tx, now| {
            let mut rows = tx.approval_page(
                &principal.tenant_id,
                query,
                now,
                (after_ms, &after_id),
                limit + 1,
            )?;
            let more = rows.len() > limit as usize;
            rows.truncate(limit as usize);
            let next_cursor = more
                .then(|| rows.last().map(|(id, ms)| format!("{ms}.{id}")))
                .flatten();
            let mut approvals = Vec::with_capacity(rows.len());
            for (id, _) in rows {
                if let Some(a) = approval_status(tx, now, &principal.tenant_id, &id)? {
                    approvals.push(a);
                }
            }
            Ok(ApprovalList {
                approvals,
                next_cursor,
            })
        })
    }

    /// How many of the tenant's approval requests `query` matches in all (its
    /// state and filters; its paging and order aside).
    pub async fn count_approvals(
        self: &Arc<Self>,
        principal: &Principal,
        query: &ApprovalQuery,
    ) -> Result<u64, ApiError> {
        let principal = principal.clone();
        let query = query.clone();
        self.blocking(move |e| e.count_approvals_blocking(&principal, &query))
            .await
    }

    /// [`Self::count_approvals`] on the caller's thread, which waits for the store.
    pub(crate) fn count_approvals_blocking(
        &self,
        principal: &Principal,
        query: &ApprovalQuery,
    ) -> Result<u64, ApiError> {
        self.read(|tx, now| Ok(tx.count_approvals(&principal.tenant_id, query, now)?))
    }

    /// `GET /v1/approvals/{id}`.
    ///
    /// Once approved, the approval token is in the answer exactly once: for the
    /// agent key whose verify was held, which retries with it. Other keys (operators,
    /// the tenant's other agent keys) never see it; the store keeps only its digest.
    pub async fn approval(
        self: &Arc<Self>,
        principal: &Principal,
        id: Uuid,
    ) -> Result<ApprovalStatus, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.approval_blocking(&principal, id))
            .await
    }

    /// [`Self::approval`] on the caller's thread, which waits for the store.
    pub(crate) fn approval_blocking(
        &self,
        principal: &Principal,
        id: Uuid,
    ) -> Result<ApprovalStatus, ApiError> {
        self.tx_in(&principal.tenant_id, |tx, now| {
            let mut status = approval_status(tx, now, &principal.tenant_id, &id.to_string())?
                .ok_or_else(|| {
                    ApiError::not_found("approval_not_found", "no such approval request")
                })?;
            if status.state == ApprovalState::Approved && principal.roles.contains(&Role::Agent) {
                let row = tx
                    .approval_row(&principal.tenant_id, &id.to_string())?
                    .ok_or_else(|| ApiError::internal("approval vanished"))?;
                // Only the key whose verify was held may use the token: no other key
                // is handed it (nor can take it away from that key by reading first).
                let own = row.key_id.as_deref().is_none_or(|k| k == principal.key_id);
                if own
                    && let Some(expires) = row.token_expires.filter(|e| now < *e)
                    && tx.fetch_approval_token(&id.to_string(), now)?
                {
                    status.approval_token = Some(ApprovalToken::new(
                        self.minter.approval_token(&id.to_string(), expires),
                    ));
                }
            }
            Ok(status)
        })
    }

    /// `POST /v1/approvals/{id}/approve`: one operator's approval; at quorum the
    /// request is approved and a single-use approval token is minted.
    pub async fn approve(
        self: &Arc<Self>,
        principal: &Principal,
        id: Uuid,
    ) -> Result<ApprovalStatus, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.approve_blocking(&principal, id))
            .await
    }

    /// [`Self::approve`] on the caller's thread, which waits for the store.
    pub(crate) fn approve_blocking(
        &self,
        principal: &Principal,
        id: Uuid,
    ) -> Result<ApprovalStatus, ApiError> {
        require_role(principal, &[Role::Operator])?;
        self.tx_in(&principal.tenant_id, |tx, now| {
            let pending = pending_row(tx, now, &principal.tenant_id, id)?;
            let quorum = pending.quorum;
            // The approvers are subjects, not keys: a quorum of two takes two people,
            // however many keys one of them holds.
            let mut approvers: Vec<String> = serde_json::from_str(&pending.approvers)?;
            if approvers.contains(&principal.subject) {
                return Err(ApiError::conflict(
                    "approval_already_given",
                    format!(
                        "{} has already approved this request; its quorum of {quorum} counts \
                         distinct approvers",
                        principal.subject
                    ),
                ));
            }
            approvers.push(principal.subject.clone());
            // Who, by id: a person's SCIM id (`scim:<id>`) or the key's id.
            let mut ids: Vec<String> = pending
                .approver_ids
                .map(|t| serde_json::from_str(&t))
                .transpose()?
                .unwrap_or_default();
            ids.push(principal.key_id.clone());
            let voters = serde_json::to_string(&approvers)?;
            tx.vote_approval(&id.to_string(), &voters, &serde_json::to_string(&ids)?)?;
            let approved = u32::try_from(approvers.len()).unwrap_or(u32::MAX) >= quorum;
            if approved {
                // Only the digest is stored; the held agent fetches the token once.
                let token_expires = now + self.config.approval_token_ttl_ms;
                let token = self.minter.approval_token(&id.to_string(), token_expires);
                tx.approve_approval(
                    &id.to_string(),
                    &sha256_hex(token.as_bytes()),
                    token_expires,
                    now,
                )?;
            }
            ledger::append(
                tx,
                &principal.tenant_id,
                if approved {
                    "approval.approved"
                } else {
                    "approval.vote"
                },
                json!({"approval_request_id": id, "operator": principal.key_id,
                       "approver": principal.subject, "approvers": approvers,
                       "approvals": approvers.len(), "quorum": quorum}),
                now,
            )?;
            approval_status(tx, now, &principal.tenant_id, &id.to_string())?
                .ok_or_else(|| ApiError::internal("approval vanished"))
        })
    }

    /// `POST /v1/approvals/{id}/deny`.
    pub async fn deny_approval(
        self: &Arc<Self>,
        principal: &Principal,
        id: Uuid,
    ) -> Result<ApprovalStatus, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.deny_approval_blocking(&principal, id))
            .await
    }

    /// [`Self::deny_approval`] on the caller's thread, which waits for the store.
    pub(crate) fn deny_approval_blocking(
        &self,
        principal: &Principal,
        id: Uuid,
    ) -> Result<ApprovalStatus, ApiError> {
        require_role(principal, &[Role::Operator])?;
        self.tx_in(&principal.tenant_id, |tx, now| {
            pending_row(tx, now, &principal.tenant_id, id)?;
            tx.deny_approval(&id.to_string(), now)?;
            ledger::append(
                tx,
                &principal.tenant_id,
                "approval.denied",
                json!({"approval_request_id": id, "operator": principal.key_id,
                       "approver": principal.subject}),
                now,
            )?;
            approval_status(tx, now, &principal.tenant_id, &id.to_string())?
                .ok_or_else(|| ApiError::internal("approval vanished"))
        })
    }

    // ---- expiry ----

    /// Expires what is past its time: reservations, approvals, approval tokens,
    /// intents past their deadline, old idempotency keys. Each change is on the ledger.
    pub async fn sweep(self: &Arc<Self>) -> Result<SweepReport, ApiError> {
        self.blocking(move |e| e.sweep_blocking()).await
    }

    /// [`Self::sweep`] on the caller's thread, which waits for the store.
    pub(crate) fn sweep_blocking(&self) -> Result<SweepReport, ApiError> {
        let retention = self.config.idempotency_retention_ms.max(24 * 3_600_000);
        self.tx(|tx, now| {
            let mut report = SweepReport {
                reservations_expired: expire_due(tx, now)?,
                ..SweepReport::default()
            };
            let approvals = tx.approvals_due(now)?;
            for (tenant, id) in approvals {
                tx.lock_tenant(&tenant)?;
                // Decided by now on another replica: nothing to expire.
                if tx.expire_approval(&id)? {
                    ledger::append(
                        tx,
                        &tenant,
                        "approval.expired",
                        json!({"approval_request_id": id}),
                        now,
                    )?;
                    report.approvals_expired += 1;
                }
            }
            tx.drop_expired_approval_tokens(now)?;
            let intents = tx.intents_due(now)?;
            for (tenant, id, state) in intents {
                let next = match state.as_str() {
                    "evidence_submitted" => "released",
                    "funded" => "refunded",
                    _ => "expired",
                };
                tx.lock_tenant(&tenant)?;
                if tx.close_intent(&id, &state, next)? {
                    ledger::append(
                        tx,
                        &tenant,
                        &format!("intent.{next}"),
                        json!({"intent_id": id, "from": state}),
                        now,
                    )?;
                    report.intents_closed += 1;
                }
            }
            // Counters of windows that have ended decide nothing any more.
            tx.drop_ended_counters(now)?;
            report.idempotency_keys_dropped = tx.drop_idempotency_keys(now - retention)?;
            Ok(report)
        })
    }
}

/// An intent's reserved amount without reservations past their TTL (expired or
/// not by the sweep yet), and how many reservations are still open.
pub(crate) fn live_reservations(
    tx: &dyn Tx,
    intent: &str,
    reserved: u64,
    now: i64,
) -> Result<(u64, u64), ApiError> {
    let open = tx.open_reservations_of_intent(intent, now)?;
    Ok((
        reserved.saturating_sub(lapsed_cents(tx, intent, now)?),
        open,
    ))
}

/// Open reservations of `intent` past their TTL that the sweep has not expired yet:
/// every read of a budget leaves them out.
pub(crate) fn lapsed_cents(tx: &dyn Tx, intent: &str, now: i64) -> Result<u64, ApiError> {
    Ok(tx.lapsed_of_intent(intent, now)?)
}

/// Expires every open reservation past its TTL: its amount returns to its intent's
/// budget and the expiry goes on the ledger. Runs in the background sweep; decisions
/// and reads leave lapsed reservations out before it gets to them ([`lapsed_cents`]).
pub(crate) fn expire_due(tx: &dyn Tx, now: i64) -> Result<u64, ApiError> {
    let due = tx.reservations_due(now)?;
    let mut expired = 0;
    for (tenant, id, row) in &due {
        // Tenants are locked in order, so two sweeps on two replicas cannot deadlock;
        // a reservation finalized meanwhile is left alone.
        tx.lock_tenant(tenant)?;
        if !tx.expire_reservation(id, &row.intent, row.amount, now)? {
            continue;
        }
        counters::adjust(
            tx,
            &row.counted(tenant),
            -i64::try_from(row.amount).unwrap_or(i64::MAX),
            None,
        )?;
        ledger::append(
            tx,
            tenant,
            "reservation.expired",
            json!({"decision_id": id, "intent_id": row.intent, "amount_cents": row.amount}),
            now,
        )?;
        expired += 1;
    }
    Ok(expired)
}

impl ReservationRow {
    /// An open reservation the live state holds.
    fn open(r: &LiveReservation) -> Self {
        Self {
            intent: r.intent.clone(),
            amount: r.amount,
            state: "open".to_owned(),
            expires: r.expires_ms,
            created: r.created_ms,
            agent: r.agent.clone(),
            agent_subject: r.agent_subject.clone(),
            vendor: r.vendor.clone(),
            tool: r.tool.clone(),
        }
    }

    fn counted<'a>(&'a self, tenant: &'a str) -> Counted<'a> {
        Counted {
            tenant,
            created_ms: self.created,
            agent: &self.agent,
            agent_subject: self.agent_subject.as_deref(),
            vendor: self.vendor.as_deref(),
            tool: &self.tool,
        }
    }
}

fn intent_view(
    tx: &dyn Tx,
    now: i64,
    tenant: &str,
    intent_id: Uuid,
) -> Result<IntentView, ApiError> {
    let Some(row) = tx.intent_summary(tenant, &intent_id.to_string())? else {
        return Err(ApiError::not_found(
            "intent_not_found",
            "no such intent for this tenant",
        ));
    };
    let (reserved, open) = live_reservations(tx, &row.id, row.reserved_cents, now)?;
    Ok(IntentView {
        intent_id,
        tenant: tenant.to_owned(),
        state: lifecycle(&row.state),
        allowed_tools: serde_json::from_str(&row.operations)?,
        budget_cents: row.budget_cents,
        consumed_cents: row.consumed_cents,
        reserved_cents: reserved,
        open_reservations: open,
        currency: row.currency,
        deadline: rfc3339(row.deadline_ms),
        capability_token: None,
    })
}

/// What evidence must satisfy before it is looked at in a transaction: an agent's
/// key, names within bounds, and no value the tenant's policy marks sensitive
/// (422 `sensitive_data_in_evidence`, naming where, never the value: the evidence
/// is not recorded).
fn check_evidence(
    principal: &Principal,
    req: &EvidenceRequest,
    idempotency_key: Option<&str>,
    sensitive: &[regex::Regex],
) -> Result<(), ApiError> {
    require_role(principal, &[Role::Agent])?;
    bounded("operation", req.operation.as_deref())?;
    bounded("idempotency_key", idempotency_key)?;
    check_sensitive(req, sensitive)
}

/// Refuses evidence whose payload or metadata holds what the policy's
/// `sensitive` patterns match.
fn check_sensitive(req: &EvidenceRequest, sensitive: &[regex::Regex]) -> Result<(), ApiError> {
    if sensitive.is_empty() {
        return Ok(());
    }
    // `metadata.decision_id` names the gateway's own decision: not data the agent
    // sends. A UUID's digit groups can look like a card number (13 to 16 digits
    // across a dash), so it is left out of the scan; anything else there is not.
    let metadata = req.metadata.as_ref().map(|m| {
        let mut m = m.clone();
        if let Some(obj) = m.as_object_mut()
            && obj
                .get("decision_id")
                .and_then(Value::as_str)
                .is_some_and(|id| Uuid::parse_str(id).is_ok())
        {
            obj.remove("decision_id");
        }
        m
    });
    for (field, value) in [("payload", &req.payload), ("metadata", &metadata)] {
        if let Some(path) = value
            .as_ref()
            .and_then(|v| paybond_policies::sensitive_path(v, sensitive))
        {
            return Err(ApiError::unprocessable(
                "sensitive_data_in_evidence",
                format!(
                    "{field}{}: holds data the policy marks sensitive; the evidence was not recorded",
                    path.trim_start_matches('$')
                ),
            ));
        }
    }
    Ok(())
}

/// What a completion must satisfy before its transaction: an agent's key and a
/// key within bounds.
fn check_complete(principal: &Principal, idempotency_key: Option<&str>) -> Result<(), ApiError> {
    require_role(principal, &[Role::Agent])?;
    bounded("idempotency_key", idempotency_key)
}

/// What an evidence submission's idempotency key is matched by: the intent and the
/// request.
#[derive(Serialize)]
struct EvidenceKeyed<R> {
    intent_id: Uuid,
    request: R,
}

/// What a completion's idempotency key is matched by: the decision and the request.
#[derive(Serialize)]
struct CompleteKeyed<R> {
    decision_id: Uuid,
    request: R,
}

pub(crate) fn complete_tx(
    tx: &dyn Tx,
    now: i64,
    principal: &Principal,
    decision_id: Uuid,
    req: &CompleteRequest,
) -> Result<CompleteResponse, ApiError> {
    // The live state's intents change here only with the intents table, below.
    tx.keep_live();
    let id = decision_id.to_string();
    // An open reservation the live state holds, with its intent's state and
    // deadline, is read from there; else from the database, in one statement.

    let held = tx.live().and_then(|live| {
        let live = live.borrow();
        let r = live.reservation(&principal.tenant_id, &id)?;
        let intent = live.intent_state(&principal.tenant_id, &r.intent)?;
        Some((ReservationRow::open(r), None, Some(intent)))
    });
    let row: Option<ToComplete> = match held {
        Some(found) => Some(found),
        None => tx.reservation_to_complete(&principal.tenant_id, &id)?,
    };
    let Some((held_row, stored, intent_row)) = row else {
        let held = tx.decision_exists(&principal.tenant_id, &id)?;
        return Err(if held {
            ApiError::conflict(
                "decision_not_allowed",
                "the decision was not an allow; nothing is reserved",
            )
        } else {
            ApiError::not_found("decision_not_found", "no such decision for this tenant")
        });
    };
    let ReservationRow {
        intent,
        amount: reserved,
        state,
        expires,
        ..
    } = &held_row;
    let (reserved, expires) = (*reserved, *expires);
    // A cost reported above the reservation is settled at the reservation (nothing
    // was authorized beyond it) and recorded, so the overrun is visible in the ledger.
    let reported = match req.outcome {
        Finalization::Consumed => req.actual_spend_cents,
        Finalization::Released => None,
    };
    let actual = match req.outcome {
        Finalization::Consumed => reported.map_or(reserved, |r| r.min(reserved)),
        Finalization::Released => 0,
    };
    let outcome_name = match req.outcome {
        Finalization::Consumed => "consumed",
        Finalization::Released => "released",
    };
    if state != "open" {
        // The same outcome again (with the same amount, or none) answers what the first
        // complete answered; anything else would change a finalized reservation.
        if let Some(stored) = stored {
            let previous: CompleteResponse = serde_json::from_str(&stored)?;
            let first_amount = previous
                .reported_spend_cents
                .or(previous.actual_spend_cents);
            if previous.outcome == Some(req.outcome)
                && reported.is_none_or(|r| Some(r) == first_amount)
            {
                return Ok(previous);
            }
        }
        return Err(ApiError::conflict(
            if state == "expired" {
                "reservation_expired"
            } else {
                "decision_already_finalized"
            },
            format!("the reservation is already {state}; a complete cannot change it"),
        ));
    }
    if now >= expires {
        // The sweep expires it (and puts that on the ledger); nothing to consume.
        return Err(ApiError::conflict(
            "reservation_expired",
            "the reservation expired before it was finalized; its amount was returned",
        ));
    }
    if req.outcome == Finalization::Consumed {
        // Money of an intent past its deadline (refunded, released or expired) is no
        // longer the agent's to spend: its reservations can only be released.
        let Some((intent_state, deadline)) = intent_row else {
            return Err(ApiError::internal(format_args!(
                "storage: the intent of reservation {decision_id} is missing"
            )));
        };
        if now >= deadline || matches!(intent_state.as_str(), "released" | "refunded" | "expired") {
            return Err(ApiError::conflict(
                "intent_closed",
                "the intent is past its deadline; its reservations can only be released",
            ));
        }
    }
    let response = CompleteResponse {
        decision_id: Some(decision_id),
        outcome: Some(req.outcome),
        actual_spend_cents: Some(actual),
        returned_cents: Some(reserved - actual),
        reported_spend_cents: reported.filter(|r| *r > reserved),
    };
    tx.finalize_reservation(&Finalized {
        id: &id,
        intent,
        reserved,
        outcome: outcome_name,
        actual,
        at_ms: now,
        response: &serde_json::to_string(&response)?,
    })?;
    if let Some(live) = tx.live() {
        let mut live = live.borrow_mut();
        live.finalized(intent, reserved, actual);
        live.forget_reservation(&id);
    }
    // The counters held the reservation; now they hold what was consumed.
    counters::adjust(
        tx,
        &held_row.counted(&principal.tenant_id),
        i64::try_from(actual).unwrap_or(i64::MAX) - i64::try_from(reserved).unwrap_or(i64::MAX),
        None,
    )?;
    ledger::append(
        tx,
        &principal.tenant_id,
        &format!("reservation.{outcome_name}"),
        json!({"decision_id": decision_id, "intent_id": intent, "reserved_cents": reserved,
               "actual_cents": actual, "returned_cents": reserved - actual,
               "reported_cents": response.reported_spend_cents}),
        now,
    )?;
    Ok(response)
}

/// The approval's row if it can still be decided: 404 if absent, 409 if decided or expired.
fn pending_row(tx: &dyn Tx, now: i64, tenant: &str, id: Uuid) -> Result<ApprovalRow, ApiError> {
    let Some(row) = tx.approval_row(tenant, &id.to_string())? else {
        return Err(ApiError::not_found(
            "approval_not_found",
            "no such approval request",
        ));
    };
    if row.state != "pending" {
        return Err(ApiError::conflict(
            "approval_already_decided",
            format!("the approval request is already {}", row.state),
        ));
    }
    if now >= row.expires {
        return Err(ApiError::conflict(
            "approval_expired",
            "the approval request has expired",
        ));
    }
    Ok(row)
}

fn approval_status(
    tx: &dyn Tx,
    now: i64,
    tenant: &str,
    id: &str,
) -> Result<Option<ApprovalStatus>, ApiError> {
    let row = tx.approval_row(tenant, id)?;
    let Some(ApprovalRow {
        decision,
        intent,
        operation,
        amount,
        reasons,
        state,
        approvers,
        quorum,
        expires,
        token_expires,
        tool,
        vendor,
        agent,
        created,
        ..
    }) = row
    else {
        return Ok(None);
    };
    let mut state = approval_state(&state);
    if state == ApprovalState::Pending && now >= expires {
        state = ApprovalState::Expired;
    }
    let approvers: Vec<String> = serde_json::from_str(&approvers)?;
    Ok(Some(ApprovalStatus {
        approval_request_id: Uuid::parse_str(id).map_err(ApiError::internal)?,
        state,
        decision_id: Uuid::parse_str(&decision).ok(),
        intent_id: Uuid::parse_str(&intent).ok(),
        operation: Some(operation),
        requested_spend_cents: Some(amount),
        reason_codes: serde_json::from_str(&reasons)?,
        approvals: u32::try_from(approvers.len()).unwrap_or(u32::MAX),
        quorum,
        // Never here: only `Engine::approval` hands the token over, once.
        approval_token: None,
        expires_at: Some(rfc3339(if state == ApprovalState::Approved {
            token_expires.unwrap_or(expires)
        } else {
            expires
        })),
        tool: Some(tool),
        vendor_id: vendor,
        agent,
        created_at: Some(rfc3339(created)),
    }))
}
