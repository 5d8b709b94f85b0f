//! `verify`: the call bound to its tool, what the store holds about it read
//! (the prefetch), the checks run over it as pure functions ([`super::rules`]),
//! and the decision's effects applied in the same transaction.

use paybond_middleware_core::format_money;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use paybond_middleware_core::wire::{
    PreflightRequest, PreflightResult, Principal, SpendScope, VerifyRequest, VerifyResult,
};
use serde_json::json;
use uuid::Uuid;

use crate::engine::counters::{self, Counted};
use crate::engine::live::LiveReservation;
use crate::engine::rules::{
    self, Ask, Call, CallContext, Decision, Effect, HoldContext, HoldOutcome, Recorder, TokenFacts,
    Verdict, bind_tool, cap_buckets, deny, tool_limits,
};
use crate::engine::{EffectivePolicy, Engine, Role, bounded, ledger, require_role};
use crate::error::ApiError;
use crate::store::{NewApproval, NewDecision, NewReservation, Tx, approval_state};
use crate::tokens::sha256_hex;

/// Largest amount the gateway accepts, in cents (10 billion dollars).
pub(crate) const MAX_AMOUNT_CENTS: u64 = 1_000_000_000_000;

/// The call of a verify or preflight: bound to the policy tool its operation
/// belongs to (or why it cannot be), counted under the key's subject.
fn call_of<'a>(
    principal: &'a Principal,
    policy: Option<&EffectivePolicy>,
    intent: Uuid,
    operation: &'a str,
    tool_name: Option<&str>,
    (vendor, agent_subject): (Option<&'a str>, Option<&'a str>),
    amount: u64,
) -> Call<'a> {
    let binding = match policy {
        Some(p) => bind_tool(&p.policy, operation, tool_name),
        None => Err(deny(
            rules::DenyCode::ToolNotInPolicy,
            "the tenant has no policy; nothing is allowed",
        )),
    };
    Call {
        tenant: &principal.tenant_id,
        intent: intent.to_string(),
        tool: binding
            .as_ref()
            .ok()
            .and_then(|b| b.tools.first().cloned())
            .unwrap_or_else(|| operation.to_owned()),
        operation,
        vendor,
        agent: &principal.subject,
        key_id: &principal.key_id,
        agent_subject,
        amount,
        binding,
    }
}

/// A recorded verify's call under `policy` (what-if replay), bound by the tool it
/// was recorded under.
pub(crate) fn recorded_call<'a>(
    principal: &'a Principal,
    call: &'a super::replay::RecordedCall,
    policy: &EffectivePolicy,
) -> Call<'a> {
    call_of(
        principal,
        Some(policy),
        call.intent_id,
        &call.operation,
        Some(&call.tool),
        (call.vendor.as_deref(), call.agent_subject.as_deref()),
        call.amount_cents,
    )
}

/// The field checks verify and preflight share: every named text within its
/// length limit, the amount within range, a non-empty operation.
fn check_call_fields(
    fields: &[(&str, Option<&str>)],
    amount: u64,
    operation: &str,
    empty_operation: &str,
) -> Result<(), ApiError> {
    for (field, value) in fields {
        bounded(field, *value)?;
    }
    if amount > MAX_AMOUNT_CENTS {
        return Err(ApiError::unprocessable(
            "amount_out_of_range",
            format!("requested_spend_cents must be at most {MAX_AMOUNT_CENTS}"),
        ));
    }
    if operation.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_field", empty_operation));
    }
    Ok(())
}

/// An optional string of the request; an empty one names nothing.
fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|s| !s.is_empty())
}

/// What a verify request must satisfy before anything is read: an agent's key,
/// and every name and amount within bounds.
fn check_verify(principal: &Principal, req: &VerifyRequest) -> Result<(), ApiError> {
    require_role(principal, &[Role::Agent])?;
    check_call_fields(
        &[
            ("operation", Some(req.operation.as_str())),
            ("tool_name", req.tool_name.as_deref()),
            ("vendor_id", req.vendor_id.as_deref()),
            ("agent_subject", req.agent_subject.as_deref()),
            ("task_id", req.task_id.as_deref()),
            ("workflow_id", req.workflow_id.as_deref()),
            ("tool_call_id", req.tool_call_id.as_deref()),
            ("currency", req.currency.as_deref()),
            ("idempotency_key", req.idempotency_key.as_deref()),
            (
                "approval_token",
                req.approval_token.as_ref().map(|t| t.expose_secret()),
            ),
        ],
        req.requested_spend_cents,
        &req.operation,
        "operation must not be empty",
    )
}

impl Engine {
    /// `POST /verify`: decides whether the call may run, and reserves its amount if so.
    ///
    /// On the SQLite file store, with the tenant's policy already parsed, the
    /// decision goes straight to the store's writer thread and no thread waits for
    /// its commit; otherwise it runs on the blocking pool (in place on the
    /// in-memory store).
    pub async fn verify(
        self: &Arc<Self>,
        principal: Principal,
        req: VerifyRequest,
    ) -> Result<VerifyResult, ApiError> {
        let Some(policy) = self.cached_policy(&principal.tenant_id) else {
            return self
                .blocking(move |e| e.verify_blocking(&principal, &req))
                .await;
        };
        check_verify(&principal, &req)?;
        let started = Instant::now();
        let key = req.idempotency_key.clone();
        let token = self.token_facts(&req);
        let result = self
            .queue_idempotent(
                principal,
                "verify",
                Some(req.intent_id),
                key.as_deref(),
                req,
                move |engine, tx, now, principal, req| {
                    engine.decide(tx, now, principal, req, Some(&policy), token)
                },
            )
            .await?;
        self.count_verify(started, &result);
        Ok(result)
    }

    /// [`Self::verify`] on the caller's thread, which waits for the commit: what
    /// it runs on the blocking pool when the tenant's policy is not parsed yet.
    pub(crate) fn verify_blocking(
        &self,
        principal: &Principal,
        req: &VerifyRequest,
    ) -> Result<VerifyResult, ApiError> {
        check_verify(principal, req)?;
        let started = Instant::now();
        // On a shared store the policy is read in the write, under the tenant's
        // lock, once per group of its writes.
        let shared = self.store.shared();
        let policy = if shared {
            None
        } else {
            self.policy_for(&principal.tenant_id)?
        };
        let token = self.token_facts(req);
        let result = self.idempotent(
            principal,
            "verify",
            Some(req.intent_id),
            req.idempotency_key.as_deref(),
            req,
            |tx, now| {
                let policy = if shared {
                    self.policy_in(tx, &principal.tenant_id)?
                } else {
                    policy
                };
                self.decide(tx, now, principal, req, policy.as_deref(), token)
            },
        )?;
        self.count_verify(started, &result);
        Ok(result)
    }

    /// What the capability token of `req` proves, checked before the decision
    /// reaches the writer (a signature check needs nothing of the store).
    fn token_facts(&self, req: &VerifyRequest) -> TokenFacts {
        match self.minter.check(req.token.expose_secret()) {
            Ok(claims) => TokenFacts::Valid(claims),
            Err(_) => TokenFacts::Invalid,
        }
    }

    /// A verify's latency and outcome, in the metrics.
    fn count_verify(&self, started: Instant, result: &VerifyResult) {
        let elapsed = started.elapsed();
        self.metrics
            .latency
            .observe(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
        #[cfg(feature = "otel")]
        if let Some(otel) = self.metrics.otel.get() {
            otel.record(result, elapsed);
        }
        let counter = if result.allow {
            &self.metrics.allow
        } else if result.approval_required {
            &self.metrics.hold
        } else {
            &self.metrics.deny
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if !result.allow {
            let outcome = if result.approval_required {
                "hold"
            } else {
                "deny"
            };
            // Reason codes are the engine's own (`[a-z_]`): safe as label values.
            let reason = result.reason_codes.first().map_or("none", String::as_str);
            if let Ok(mut reasons) = self.metrics.reasons.lock() {
                *reasons.entry((outcome, reason.to_owned())).or_insert(0) += 1;
            }
        }
    }

    /// `POST /v1/spend/preflight`: what verify would decide for this call now, with
    /// every check it evaluated, without reserving, holding or recording anything.
    /// Operation `*` asks about the intent's budget only.
    pub async fn preflight(
        self: &Arc<Self>,
        principal: &Principal,
        req: &PreflightRequest,
    ) -> Result<PreflightResult, ApiError> {
        let principal = principal.clone();
        let req = req.clone();
        self.blocking(move |e| e.preflight_blocking(&principal, &req))
            .await
    }

    /// [`Self::preflight`] on the caller's thread, which waits for the store.
    pub(crate) fn preflight_blocking(
        &self,
        principal: &Principal,
        req: &PreflightRequest,
    ) -> Result<PreflightResult, ApiError> {
        require_role(principal, &[Role::Agent, Role::Operator, Role::TenantAdmin])?;
        check_call_fields(
            &[
                ("operation", Some(req.operation.as_str())),
                ("tool_name", req.tool_name.as_deref()),
                ("vendor_id", req.vendor_id.as_deref()),
                ("agent_subject", req.agent_subject.as_deref()),
                ("task_id", req.task_id.as_deref()),
                ("workflow_id", req.workflow_id.as_deref()),
                ("tool_call_id", req.tool_call_id.as_deref()),
                ("currency", req.currency.as_deref()),
                (
                    "approval_token",
                    req.approval_token.as_ref().map(|t| t.expose_secret()),
                ),
            ],
            req.requested_spend_cents,
            &req.operation,
            "operation must not be empty (`*` asks about the intent's budget only)",
        )?;
        let policy = self.policy_for(&principal.tenant_id)?;
        let policy = policy.as_deref();
        let budget_only = req.operation == "*";
        let call = call_of(
            principal,
            policy,
            req.intent_id,
            &req.operation,
            req.tool_name.as_deref(),
            (non_empty(&req.vendor_id), non_empty(&req.agent_subject)),
            req.requested_spend_cents,
        );
        let ask = Ask {
            currency: req.currency.as_deref(),
            approval_token: req.approval_token.as_ref().map(|t| t.expose_secret()),
            tool_name: req.tool_name.as_deref(),
            intent_ops: true,
            budget_only,
            phase: req.phase,
            approved: false,
        };
        let decision = self.tx(|tx, now| {
            let ctx = self.prefetch(tx, now, &call, &ask, policy, None)?;
            Ok(rules::evaluate(&ctx, Recorder::on()))
        })?;
        let currency = decision.currency.as_deref().unwrap_or("usd");
        let money = |cents: u64| format_money(cents, currency);
        let (classification, outcome, reason_codes, explanation) = match decision.verdict {
            Verdict::Allow { reasons, .. } => {
                let left = decision
                    .budget_left
                    .map(|b| money(b.saturating_sub(call.amount)))
                    .unwrap_or_default();
                let explanation = if budget_only {
                    format!(
                        "The intent has {} left to spend.",
                        decision.budget_left.map(money).unwrap_or_default()
                    )
                } else {
                    format!(
                        "{} for `{}` passes every check; {left} of the intent budget would be left.",
                        money(call.amount),
                        call.operation
                    )
                };
                ("allow", "allow", reasons, explanation)
            }
            Verdict::Hold { reasons } => {
                let explanation = format!(
                    "{} for `{}` needs an operator's approval ({}).",
                    money(call.amount),
                    call.operation,
                    reasons.join(", ")
                );
                ("hold", "approval_required", reasons, explanation)
            }
            Verdict::Deny { code, message, .. } => (
                "deny",
                "deny",
                vec![code.as_str().to_owned()],
                format!("Denied ({code}): {message}."),
            ),
        };
        Ok(PreflightResult {
            classification: classification.to_owned(),
            outcome: outcome.to_owned(),
            reason_codes,
            remaining_cents: decision.budget_left,
            spend_scope: Some(SpendScope {
                scope_type: "intent".to_owned(),
                scope_key: call.intent.clone(),
            }),
            policy_version: policy.map(|p| p.version),
            explanation,
            checks: decision.checks,
        })
    }

    /// Reads what the rules need about `call` (the prefetch): its intent with
    /// lapsed reservations left out, the spend of every rolling-cap bucket it
    /// counts in, each bound tool's calls of the last hour, and the approval
    /// request its approval token names.
    fn prefetch<'a>(
        &self,
        tx: &dyn Tx,
        now: i64,
        call: &'a Call<'a>,
        ask: &'a Ask<'a>,
        policy: Option<&'a EffectivePolicy>,
        token: Option<TokenFacts>,
    ) -> Result<CallContext<'a>, ApiError> {
        let doc = policy.map(|p| &p.policy);
        // A token that does not admit the call ends the checks before anything of
        // the store is read: nothing is read for it.
        if token
            .as_ref()
            .is_some_and(|t| !rules::token_admits(t, call, now))
        {
            return Ok(CallContext {
                now,
                call,
                ask,
                policy: doc,
                token,
                intent: None,
                cap_usage: Vec::new(),
                rate_windows: Vec::new(),
                approval: None,
            });
        }
        let intent = crate::engine::live::intent_facts(tx, call.tenant, &call.intent, now)?;
        let mut cap_usage = Vec::new();
        let mut rate_windows = Vec::new();
        if let (Some(doc), Ok(binding)) = (doc, &call.binding)
            && !ask.budget_only
        {
            for cap in doc.spend_controls.iter().flat_map(|c| c.caps.iter()) {
                let timezone = cap.timezone.as_deref().unwrap_or("UTC");
                let bounds = counters::window(now, cap.window, timezone);
                let mut spent = Vec::new();
                for bucket in cap_buckets(call, binding, cap) {
                    spent.push(match bounds {
                        Some(bounds) => {
                            Some(counters::spent(tx, call.tenant, &bucket, bounds, now)?)
                        }
                        None => None,
                    });
                }
                cap_usage.push(spent);
            }
            for (tool, limit) in tool_limits(doc, &binding.tools).per_hour {
                rate_windows.push(crate::engine::live::tool_window(
                    tx,
                    call.tenant,
                    &tool,
                    limit,
                    now,
                )?);
            }
        }
        let approval = match ask.approval_token {
            Some(token) => tx.approval_by_token(call.tenant, &sha256_hex(token.as_bytes()))?,
            None => None,
        };
        Ok(CallContext {
            now,
            call,
            ask,
            policy: doc,
            token,
            intent,
            cap_usage,
            rate_windows,
            approval,
        })
    }

    fn decide(
        &self,
        tx: &dyn Tx,
        now: i64,
        principal: &Principal,
        req: &VerifyRequest,
        policy: Option<&EffectivePolicy>,
        token: TokenFacts,
    ) -> Result<VerifyResult, ApiError> {
        let call = call_of(
            principal,
            policy,
            req.intent_id,
            &req.operation,
            req.tool_name.as_deref(),
            (non_empty(&req.vendor_id), non_empty(&req.agent_subject)),
            req.requested_spend_cents,
        );
        // The live state's intents change here only through `reserve`.
        tx.keep_live();
        let decision_id = Uuid::now_v7();
        let ask = Ask {
            currency: req.currency.as_deref(),
            approval_token: req.approval_token.as_ref().map(|t| t.expose_secret()),
            tool_name: req.tool_name.as_deref(),
            intent_ops: false,
            budget_only: false,
            phase: req.phase,
            approved: false,
        };
        let ctx = self.prefetch(tx, now, &call, &ask, policy, Some(token))?;
        // Every decision keeps the checks it evaluated: its proof trace.
        let decision = rules::evaluate(&ctx, Recorder::on());
        let effects = decision.effects();
        let Decision {
            verdict,
            checks,
            budget_left,
            currency,
        } = decision;

        // The decision's id as text: its answer's audit id, its ledger entry's
        // and its row's.
        let id = decision_id.to_string();
        let mut result = VerifyResult {
            allow: false,
            audit_id: Some(id.clone()),
            tenant: principal.tenant_id.clone(),
            intent_id: req.intent_id,
            code: None,
            message: None,
            decision_id: Some(decision_id),
            approval_request_id: None,
            policy_version: policy.map(|p| p.version),
            policy_digest: policy.map(|p| p.digest.clone()),
            reason_codes: Vec::new(),
            spend_scope: Some(SpendScope {
                scope_type: "intent".to_owned(),
                scope_key: call.intent.clone(),
            }),
            remaining_cents: budget_left,
            retry_after: None,
            approval_required: false,
            checks,
        };
        let mut outcome = match &verdict {
            Verdict::Allow { reasons, .. } => {
                result.allow = true;
                result.code = Some("allowed".to_owned());
                result.message = Some(format!(
                    "{} reserved",
                    format_money(call.amount, currency.as_deref().unwrap_or("usd"))
                ));
                result.remaining_cents = budget_left.map(|b| b.saturating_sub(call.amount));
                result.reason_codes.clone_from(reasons);
                "allow"
            }
            Verdict::Hold { reasons } => {
                result.reason_codes.clone_from(reasons);
                "hold"
            }
            Verdict::Deny {
                code,
                message,
                retry_after,
            } => {
                result.code = Some(code.as_str().to_owned());
                result.message = Some(message.clone());
                result.reason_codes = vec![code.as_str().to_owned()];
                result.retry_after = *retry_after;
                "deny"
            }
        };
        for effect in effects {
            match effect {
                Effect::Reserve => self.reserve(tx, now, &call, decision_id)?,
                Effect::UseApprovalToken(approval_id) => {
                    tx.use_approval_token(&approval_id, now)?;
                    ledger::append(
                        tx,
                        call.tenant,
                        "approval.token_used",
                        json!({"approval_request_id": approval_id, "decision_id": decision_id}),
                        now,
                    )?;
                }
                Effect::RequestApproval => {
                    let held = self.hold_context(tx, now, &call)?;
                    match rules::hold(&held) {
                        HoldOutcome::Existing(approval_id) => {
                            self.held(&mut result, approval_id);
                        }
                        HoldOutcome::Open => {
                            let reasons = result.reason_codes.clone();
                            let approval_id =
                                self.open_approval(tx, now, &call, decision_id, &reasons, policy)?;
                            self.held(&mut result, approval_id);
                        }
                        HoldOutcome::Denied(approval_id) => {
                            let code = rules::DenyCode::ApprovalDenied;
                            result.code = Some(code.as_str().to_owned());
                            result.message = Some(format!(
                                "an operator denied this request (approval {approval_id}); the \
                                 identical request is refused for {} s after the denial",
                                self.config.denied_request_window_ms / 1000
                            ));
                            result.approval_request_id = Some(approval_id);
                            result.reason_codes = vec![code.as_str().to_owned()];
                            outcome = "deny";
                        }
                        HoldOutcome::Limited {
                            message,
                            retry_after,
                        } => {
                            let code = rules::DenyCode::ApprovalRateLimited;
                            result.code = Some(code.as_str().to_owned());
                            result.message = Some(message);
                            result.reason_codes = vec![code.as_str().to_owned()];
                            result.retry_after = Some(retry_after);
                            outcome = "deny";
                        }
                    }
                }
            }
        }
        let expires_ms = result.allow.then(|| now + self.config.reservation_ttl_ms);
        let seq = ledger::append_canonical(
            tx,
            call.tenant,
            &format!("decision.{outcome}"),
            decision_payload(&id, &call, req, &result, expires_ms),
            now,
        )?;
        // With its ledger position, which orders decisions made in the same millisecond.
        tx.record_decision(&NewDecision {
            id: &id,
            tenant: call.tenant,
            intent: &call.intent,
            outcome,
            response: &serde_json::to_string(&result)?,
            created_ms: now,
            ledger_seq: seq,
            tool: &call.tool,
            agent: call.agent,
            vendor: call.vendor,
            amount: call.amount,
            reason_codes: &crate::engine::insights::reason_column(&result.reason_codes),
        })?;
        Ok(result)
    }

    /// A held answer: the approval request the operators decide.
    fn held(&self, result: &mut VerifyResult, approval_id: Uuid) {
        result.code = Some("approval_required".to_owned());
        result.message = Some("an operator must approve this request".to_owned());
        result.approval_required = true;
        result.approval_request_id = Some(approval_id);
    }

    /// Reserves an allowed call's amount: its reservation, the intent's reserved
    /// amount and every rolling-cap counter.
    fn reserve(
        &self,
        tx: &dyn Tx,
        now: i64,
        call: &Call<'_>,
        decision_id: Uuid,
    ) -> Result<(), ApiError> {
        let id = decision_id.to_string();
        let lapses = now + self.config.reservation_ttl_ms;
        tx.reserve(&NewReservation {
            id: &id,
            tenant: call.tenant,
            intent: &call.intent,
            tool: &call.tool,
            operation: call.operation,
            vendor: call.vendor,
            agent: call.agent,
            agent_subject: call.agent_subject,
            amount: call.amount,
            created_ms: now,
            expires_ms: lapses,
        })?;
        if let Some(live) = tx.live() {
            let mut live = live.borrow_mut();
            live.reserved(&call.intent, call.amount, lapses);
            live.called(call.tenant, &call.tool, now);
            live.hold_reservation(
                id,
                LiveReservation {
                    tenant: call.tenant.to_owned(),
                    intent: call.intent.clone(),
                    amount: call.amount,
                    expires_ms: lapses,
                    created_ms: now,
                    agent: call.agent.to_owned(),
                    agent_subject: call.agent_subject.map(str::to_owned),
                    vendor: call.vendor.map(str::to_owned),
                    tool: call.tool.clone(),
                },
            );
        }
        counters::adjust(
            tx,
            &Counted {
                tenant: call.tenant,
                created_ms: now,
                agent: call.agent,
                agent_subject: call.agent_subject,
                vendor: call.vendor,
                tool: &call.tool,
            },
            i64::try_from(call.amount).unwrap_or(i64::MAX),
            Some(lapses),
        )
    }

    /// What the store holds about a held call's approval requests (the prefetch of
    /// [`rules::hold`]): the key's latest identical request that still stands, the
    /// requests the key opened in the last minute, the intent's pending requests.
    fn hold_context(
        &self,
        tx: &dyn Tx,
        now: i64,
        call: &Call<'_>,
    ) -> Result<HoldContext, ApiError> {
        let existing = tx.standing_approval(
            call.tenant,
            &request_digest(call),
            call.key_id,
            now,
            now.saturating_sub(self.config.denied_request_window_ms),
        )?;
        let existing = existing
            .map(|(id, state)| {
                Uuid::parse_str(&id)
                    .map(|id| (id, approval_state(&state)))
                    .map_err(ApiError::internal)
            })
            .transpose()?;
        let (per_minute, per_intent) = (
            self.config.approval_requests_per_agent_per_minute,
            self.config.pending_approvals_per_intent,
        );
        if existing.is_some() {
            // The rule answers the standing request before it reads any count.
            return Ok(HoldContext {
                now,
                existing,
                opened_last_minute: (0, None),
                per_minute,
                pending_on_intent: (0, None),
                per_intent,
            });
        }
        let opened_last_minute =
            tx.approvals_opened_since(call.tenant, call.agent, now - 60_000)?;
        let pending_on_intent = tx.pending_approvals_of_intent(&call.intent, now)?;
        Ok(HoldContext {
            now,
            existing,
            opened_last_minute,
            per_minute,
            pending_on_intent,
            per_intent,
        })
    }

    /// Opens an approval request for a held call, for the key that made it.
    fn open_approval(
        &self,
        tx: &dyn Tx,
        now: i64,
        call: &Call<'_>,
        decision_id: Uuid,
        reasons: &[String],
        policy: Option<&EffectivePolicy>,
    ) -> Result<Uuid, ApiError> {
        let approval = policy
            .and_then(|p| p.policy.spend_controls.as_ref())
            .and_then(|c| c.approval);
        let quorum = approval.map_or(1, |a| a.quorum.max(1));
        let timeout_ms = approval
            .and_then(|a| a.timeout_seconds)
            .map_or(15 * 60_000, |s| {
                i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
            });
        // Time-ordered, as evidence ids (see `evidence_tx`).
        let id = Uuid::now_v7();
        tx.open_approval(&NewApproval {
            id: &id.to_string(),
            tenant: call.tenant,
            intent: &call.intent,
            decision: &decision_id.to_string(),
            request_digest: &request_digest(call),
            operation: call.operation,
            tool: &call.tool,
            vendor: call.vendor,
            amount: call.amount,
            reason_codes: &serde_json::to_string(reasons)?,
            quorum,
            created_ms: now,
            expires_ms: now.saturating_add(timeout_ms),
            agent: call.agent,
            key_id: call.key_id,
        })?;
        ledger::append(
            tx,
            call.tenant,
            "approval.requested",
            json!({
                "approval_request_id": id,
                "decision_id": decision_id,
                "intent_id": call.intent,
                "operation": call.operation,
                "amount_cents": call.amount,
                "quorum": quorum,
            }),
            now,
        )?;
        Ok(id)
    }
}

/// A decision's ledger payload, as canonical JSON. The log holds what rebuilding
/// the spend state needs: with an allow, when its reservation lapses
/// (`expires_ms`).
fn decision_payload(
    decision_id: &str,
    call: &Call<'_>,
    req: &VerifyRequest,
    result: &VerifyResult,
    expires_ms: Option<i64>,
) -> String {
    let approval = result.approval_request_id.map(|id| id.to_string());
    ledger::CanonicalObject::new()
        .str("agent", Some(call.agent))
        .str("agent_subject", call.agent_subject)
        .num("amount_cents", Some(call.amount))
        .str("approval_request_id", approval.as_deref())
        .str("currency", req.currency.as_deref())
        .str("decision_id", Some(decision_id))
        .num("expires_ms", expires_ms)
        .str("intent_id", Some(&call.intent))
        .str("operation", Some(call.operation))
        .value("phase", &req.phase)
        .str("policy_digest", result.policy_digest.as_deref())
        .num("policy_version", result.policy_version)
        .strs("reason_codes", &result.reason_codes)
        .str("task_id", req.task_id.as_deref())
        .str("tool", Some(&call.tool))
        .str("tool_call_id", req.tool_call_id.as_deref())
        .str("vendor", call.vendor)
        .str("workflow_id", req.workflow_id.as_deref())
        .finish()
}

/// The digest an approval is bound to: tenant, intent, operation, amount, vendor and tool.
fn request_digest(call: &Call<'_>) -> String {
    let canonical = json!({
        "tenant": call.tenant,
        "intent": call.intent,
        "operation": call.operation,
        "amount_cents": call.amount,
        "vendor": call.vendor,
        "tool": call.tool,
    });
    sha256_hex(paybond_policies::canonical_json(&canonical).as_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on setup failures

    use super::*;
    use paybond_middleware_core::wire::{Environment, Phase, Role};

    /// The payload as it was written before, through a `Value`.
    fn through_value(
        decision_id: Uuid,
        call: &Call<'_>,
        req: &VerifyRequest,
        result: &VerifyResult,
        expires_ms: Option<i64>,
    ) -> String {
        paybond_policies::canonical_json(&json!({
            "decision_id": decision_id,
            "intent_id": call.intent,
            "tool": call.tool,
            "operation": call.operation,
            "vendor": call.vendor,
            "agent": call.agent,
            "agent_subject": call.agent_subject,
            "amount_cents": call.amount,
            "currency": req.currency,
            "task_id": req.task_id,
            "workflow_id": req.workflow_id,
            "tool_call_id": req.tool_call_id,
            "phase": req.phase,
            "reason_codes": result.reason_codes,
            "approval_request_id": result.approval_request_id,
            "policy_version": result.policy_version,
            "policy_digest": result.policy_digest,
            "expires_ms": expires_ms,
        }))
    }

    #[test]
    fn a_decisions_payload_is_the_canonical_json_of_its_fields() {
        let principal = Principal {
            tenant_id: "t".into(),
            environment: Environment::Sandbox,
            service_account_role: Role::Agent,
            roles: vec![Role::Agent],
            subject: "agent \"007\"\n".into(),
            key_id: "k".into(),
        };
        let bare = VerifyRequest::new(
            Uuid::now_v7(),
            paybond_middleware_core::CapabilityToken::new("secret"),
            "travel.book_hotel",
            12_000,
        );
        let full = VerifyRequest {
            vendor_id: Some("vendor_\u{e9}".into()),
            task_id: Some("task\\1".into()),
            workflow_id: Some("wf".into()),
            tool_call_id: Some("call_1".into()),
            currency: Some("usd".into()),
            agent_subject: Some("sub\tagent".into()),
            phase: Some(Phase::Commit),
            ..bare.clone()
        };
        for (req, allow) in [(&bare, false), (&full, true)] {
            let call = call_of(
                &principal,
                None,
                req.intent_id,
                &req.operation,
                req.tool_name.as_deref(),
                (req.vendor_id.as_deref(), req.agent_subject.as_deref()),
                req.requested_spend_cents,
            );
            let result = VerifyResult {
                allow,
                audit_id: None,
                tenant: "t".into(),
                intent_id: req.intent_id,
                code: None,
                message: None,
                decision_id: None,
                approval_request_id: allow.then(Uuid::now_v7),
                policy_version: allow.then_some(7),
                policy_digest: allow.then(|| "sha256:ab".into()),
                reason_codes: vec!["allowed".into(), "under \"cap\"".into()],
                spend_scope: None,
                remaining_cents: None,
                retry_after: None,
                approval_required: false,
                checks: Vec::new(),
            };
            let id = Uuid::now_v7();
            let expires = allow.then_some(1_700_000_000_000_i64);
            assert_eq!(
                decision_payload(&id.to_string(), &call, req, &result, expires),
                through_value(id, &call, req, &result, expires)
            );
        }
    }
}
