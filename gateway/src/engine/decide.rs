//! `verify`: the checks in order (listed in the crate's README), first failure wins.

use paybond_middleware_core::format_money;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use paybond_middleware_core::wire::{
    Phase, PolicyCheck, PreflightRequest, PreflightResult, Principal, SpendScope, VerifyRequest,
    VerifyResult,
};
use paybond_policies::{CapScope, CapWindow, PolicyDocument, ToolPolicy};
use serde_json::Value;
use serde_json::json;
use uuid::Uuid;

use crate::engine::counters::{self, Bucket, Counted};
use crate::engine::{EffectivePolicy, Engine, Role, bounded, ledger, require_role};
use crate::error::ApiError;
use crate::store::{Tx, args};
use crate::tokens::sha256_hex;

/// Largest amount the gateway accepts, in cents (10 billion dollars).
pub(crate) const MAX_AMOUNT_CENTS: u64 = 1_000_000_000_000;

/// The outcome the checks reached.
#[derive(Clone)]
enum Verdict {
    Allow {
        reasons: Vec<String>,
        approval: Option<String>,
    },
    Hold {
        reasons: Vec<String>,
    },
    Deny {
        code: &'static str,
        message: String,
        retry_after: Option<u64>,
    },
}

fn deny(code: &'static str, message: impl Into<String>) -> Verdict {
    Verdict::Deny {
        code,
        message: message.into(),
        retry_after: None,
    }
}

/// What the request is, once bound to the token and the policy.
struct Call<'a> {
    tenant: &'a str,
    intent: String,
    /// The policy tool the decision is recorded and counted under: the one the
    /// operation belongs to (see [`bind_tool`]), never a name the caller picks freely.
    tool: String,
    operation: &'a str,
    vendor: Option<&'a str>,
    /// The API key's subject. Every agent-scoped cap counts it, whatever the call names.
    agent: &'a str,
    /// The API key's id: the principal an approval is opened for (its token works
    /// for this key alone).
    key_id: &'a str,
    /// A sub-agent the caller names; it narrows agent-scoped caps within its key's scope.
    agent_subject: Option<&'a str>,
    amount: u64,
    /// The policy tools the call is about, or why it cannot be bound to any.
    binding: Result<ToolBinding, Verdict>,
}

impl<'a> Call<'a> {
    /// The call of a verify or preflight: bound to the policy tool its operation
    /// belongs to (or why it cannot be), counted under the key's subject.
    fn new(
        principal: &'a Principal,
        policy: Option<&EffectivePolicy>,
        intent: Uuid,
        operation: &'a str,
        tool_name: Option<&str>,
        (vendor, agent_subject): (Option<&'a str>, Option<&'a str>),
        amount: u64,
    ) -> Self {
        let binding = match policy {
            Some(p) => bind_tool(&p.policy, operation, tool_name),
            None => Err(deny(
                "tool_not_in_policy",
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

    /// A recorded verify's call under `policy` (what-if replay), bound by the tool
    /// it was recorded under.
    fn recorded(
        principal: &'a Principal,
        call: &'a super::replay::RecordedCall,
        policy: &EffectivePolicy,
    ) -> Self {
        Self::new(
            principal,
            Some(policy),
            call.intent_id,
            &call.operation,
            Some(&call.tool),
            (call.vendor.as_deref(), call.agent_subject.as_deref()),
            call.amount_cents,
        )
    }
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

/// What the request asks beyond the call itself, as verify and preflight carry it.
struct Ask<'a> {
    currency: Option<&'a str>,
    approval_token: Option<&'a str>,
    tool_name: Option<&'a str>,
    /// Check the operation against the intent's own list (preflight: no token).
    intent_ops: bool,
    /// Preflight's operation `*`: the intent's budget only.
    budget_only: bool,
    /// The run's phase, as the call carries it.
    phase: Option<Phase>,
    /// An operator approved this very call: a what-if replay of a retry that
    /// carried a valid approval token (there is no token to check again).
    approved: bool,
}

/// What the checks learnt on the way, for the answer, and the checks themselves.
#[derive(Default)]
struct Seen {
    budget_left: Option<u64>,
    currency: Option<String>,
    rec: Recorder,
}

/// The checks a decision evaluated, in order, each with its inputs and result
/// (preflight's `checks`). Off for verify: the inputs are built only when on.
#[derive(Default)]
pub(crate) struct Recorder {
    on: bool,
    checks: Vec<PolicyCheck>,
}

impl Recorder {
    fn on() -> Self {
        Self {
            on: true,
            checks: Vec::new(),
        }
    }

    fn record(&mut self, name: &str, result: &str, inputs: impl FnOnce() -> Value) {
        if self.on {
            self.checks.push(PolicyCheck {
                name: name.to_owned(),
                result: result.to_owned(),
                inputs: inputs(),
            });
        }
    }

    fn pass(&mut self, name: &str, inputs: impl FnOnce() -> Value) {
        self.record(name, "pass", inputs);
    }

    fn fail(&mut self, name: &str, inputs: impl FnOnce() -> Value) {
        self.record(name, "fail", inputs);
    }

    fn hold(&mut self, name: &str, inputs: impl FnOnce() -> Value) {
        self.record(name, "hold", inputs);
    }
}

/// What a hold became.
enum Held {
    /// The approval request the operators decide.
    Approval(Uuid),
    /// The identical request of the same key, denied by an operator a moment ago:
    /// answered with that deny, no new request opened.
    Denied(Uuid),
    /// None: the agent or the intent is over its approval limits.
    Limited { message: String, retry_after: u64 },
}

/// Whole seconds, rounded up, at least 1.
fn seconds_ceil(ms: i64) -> u64 {
    u64::try_from(ms.max(1)).unwrap_or(1).div_ceil(1000).max(1)
}

/// An optional string of the request; an empty one names nothing.
fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|s| !s.is_empty())
}

/// The policy tools a verify is about.
struct ToolBinding {
    /// One tool, or every side-effecting tool that shares the operation when the call
    /// picks none of them (the stricter controls of all apply). When the policy has no
    /// tool for the operation: the operation itself.
    tools: Vec<String>,
    /// Whether `tools` are tools of the policy.
    in_policy: bool,
}

/// Decides which policy tool a verify is about, from its operation: the tools whose
/// `operation` (or name) is the operation. A `tool_name` the caller sends may only
/// confirm one of them; naming a tool of another operation, a read-only tool or a tool
/// the policy does not have for this operation is a deny `tool_operation_mismatch`.
fn bind_tool(
    doc: &PolicyDocument,
    operation: &str,
    tool_name: Option<&str>,
) -> Result<ToolBinding, Verdict> {
    let candidates: Vec<(&String, &ToolPolicy)> = doc
        .tools
        .iter()
        .filter(|(name, t)| t.operation_for(name) == operation)
        .collect();
    let list = |tools: &[(&String, &ToolPolicy)]| {
        tools
            .iter()
            .map(|(n, _)| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mismatch = |message: String| deny("tool_operation_mismatch", message);
    if let Some(name) = tool_name {
        return match doc.tools.get(name) {
            Some(t) if t.operation_for(name) != operation => Err(mismatch(format!(
                "tool_name `{name}` is the tool of operation `{}`, not `{operation}`",
                t.operation_for(name)
            ))),
            Some(t) if !t.side_effecting => Err(mismatch(format!(
                "tool_name `{name}` is a read-only tool; only side-effecting tools are verified"
            ))),
            Some(_) => Ok(ToolBinding {
                tools: vec![name.to_owned()],
                in_policy: true,
            }),
            None if !candidates.is_empty() => Err(mismatch(format!(
                "tool_name `{name}` is not a tool of the policy; `{operation}` is the operation of {}",
                list(&candidates)
            ))),
            None if name != operation => Err(mismatch(format!(
                "tool_name `{name}` is not a tool of the policy and differs from the operation `{operation}`"
            ))),
            None => Ok(ToolBinding {
                tools: vec![operation.to_owned()],
                in_policy: false,
            }),
        };
    }
    let side_effecting: Vec<String> = candidates
        .iter()
        .filter(|(_, t)| t.side_effecting)
        .map(|(n, _)| (*n).clone())
        .collect();
    if side_effecting.is_empty() && !candidates.is_empty() {
        return Err(mismatch(format!(
            "`{operation}` is the operation of read-only {}; only side-effecting tools are verified",
            list(&candidates)
        )));
    }
    Ok(if side_effecting.is_empty() {
        ToolBinding {
            tools: vec![operation.to_owned()],
            in_policy: false,
        }
    } else {
        ToolBinding {
            tools: side_effecting,
            in_policy: true,
        }
    })
}

/// The per-tool controls that apply to a binding: for several tools, the stricter of each.
#[derive(Default)]
struct ToolLimits {
    /// A bound tool with `allow: false`.
    disabled: Option<String>,
    /// The lowest per-call cap.
    cap: Option<u64>,
    /// The lowest approval threshold.
    threshold: Option<u64>,
    /// Each bound tool's hourly call limit.
    per_hour: Vec<(String, u32)>,
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

fn tool_limits(doc: &PolicyDocument, tools: &[String]) -> ToolLimits {
    fn lower(a: Option<u64>, b: Option<u64>) -> Option<u64> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    let mut limits = ToolLimits::default();
    for name in tools {
        let controls = doc.spend_controls.as_ref().and_then(|c| c.tools.get(name));
        if controls.and_then(|c| c.allow) == Some(false) && limits.disabled.is_none() {
            limits.disabled = Some(name.clone());
        }
        let cap = doc
            .tools
            .get(name)
            .and_then(|t| t.max_spend_cents)
            .or_else(|| controls.and_then(|c| c.max_per_call_cents));
        limits.cap = lower(limits.cap, cap);
        limits.threshold = lower(
            limits.threshold,
            controls.and_then(|c| c.approval_threshold_cents),
        );
        if let Some(n) = controls.and_then(|c| c.limit_per_hour) {
            limits.per_hour.push((name.clone(), n));
        }
    }
    limits
}

impl Engine {
    /// `POST /verify`: decides whether the call may run, and reserves its amount if so.
    pub fn verify(
        &self,
        principal: &Principal,
        req: &VerifyRequest,
    ) -> Result<VerifyResult, ApiError> {
        check_verify(principal, req)?;
        let started = Instant::now();
        let policy = self.policy_for(&principal.tenant_id)?;
        let result = self.idempotent(
            principal,
            "verify",
            req.idempotency_key.as_deref(),
            req,
            |tx, now| self.decide(tx, now, principal, req, policy.as_deref()),
        )?;
        self.count_verify(started, &result);
        Ok(result)
    }

    /// [`Self::verify`] for async callers. On the SQLite file store, with the
    /// tenant's policy already parsed, the decision goes straight to the store's
    /// writer thread and no thread waits for its commit; otherwise it runs as
    /// [`Self::verify`] on the blocking pool.
    pub async fn verify_async(
        self: &Arc<Self>,
        principal: Principal,
        req: VerifyRequest,
    ) -> Result<VerifyResult, ApiError> {
        let Some(policy) = self.cached_policy(&principal.tenant_id) else {
            return self.blocking(move |e| e.verify(&principal, &req)).await;
        };
        check_verify(&principal, &req)?;
        let started = Instant::now();
        let key = req.idempotency_key.clone();
        let result = self
            .idempotent_async(
                principal,
                "verify",
                key.as_deref(),
                req,
                move |engine, tx, now, principal, req| {
                    engine.decide(tx, now, principal, req, Some(&policy))
                },
            )
            .await?;
        self.count_verify(started, &result);
        Ok(result)
    }

    /// A verify's latency and outcome, in the metrics.
    fn count_verify(&self, started: Instant, result: &VerifyResult) {
        self.metrics
            .observe(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        let counter = if result.allow {
            &self.metrics.allow
        } else if result.approval_required {
            &self.metrics.hold
        } else {
            &self.metrics.deny
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `POST /v1/spend/preflight`: what verify would decide for this call now, with
    /// every check it evaluated, without reserving, holding or recording anything.
    /// Operation `*` asks about the intent's budget only.
    pub fn preflight(
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
        let call = Call::new(
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
        let (verdict, seen) = self.tx(|tx, now| {
            let mut seen = Seen {
                rec: Recorder::on(),
                ..Seen::default()
            };
            let verdict = self.policy_checks(tx, now, &ask, &call, policy, &mut seen)?;
            Ok((verdict, seen))
        })?;
        let money = |cents: u64| format_money(cents, seen.currency.as_deref().unwrap_or("usd"));
        let (classification, outcome, reason_codes, explanation) = match verdict {
            Verdict::Allow { reasons, .. } => {
                let left = seen
                    .budget_left
                    .map(|b| money(b.saturating_sub(call.amount)))
                    .unwrap_or_default();
                let explanation = if budget_only {
                    format!(
                        "The intent has {} left to spend.",
                        seen.budget_left.map(money).unwrap_or_default()
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
                vec![code.to_owned()],
                format!("Denied ({code}): {message}."),
            ),
        };
        Ok(PreflightResult {
            classification: classification.to_owned(),
            outcome: outcome.to_owned(),
            reason_codes,
            remaining_cents: seen.budget_left,
            spend_scope: Some(SpendScope {
                scope_type: "intent".to_owned(),
                scope_key: call.intent.clone(),
            }),
            policy_version: policy.map(|p| p.version),
            explanation,
            checks: seen.rec.checks,
        })
    }

    fn decide(
        &self,
        tx: &dyn Tx,
        now: i64,
        principal: &Principal,
        req: &VerifyRequest,
        policy: Option<&EffectivePolicy>,
    ) -> Result<VerifyResult, ApiError> {
        let call = Call::new(
            principal,
            policy,
            req.intent_id,
            &req.operation,
            req.tool_name.as_deref(),
            (non_empty(&req.vendor_id), non_empty(&req.agent_subject)),
            req.requested_spend_cents,
        );
        let decision_id = Uuid::now_v7();
        // Every decision keeps the checks it evaluated: its proof trace.
        let mut seen = Seen {
            rec: Recorder::on(),
            ..Seen::default()
        };
        let ask = Ask {
            currency: req.currency.as_deref(),
            approval_token: req.approval_token.as_ref().map(|t| t.expose_secret()),
            tool_name: req.tool_name.as_deref(),
            intent_ops: false,
            budget_only: false,
            phase: req.phase,
            approved: false,
        };
        let verdict = match self.token_checks(now, req.token.expose_secret(), &call, &mut seen.rec)
        {
            Some(denied) => denied,
            None => self.policy_checks(tx, now, &ask, &call, policy, &mut seen)?,
        };
        let Seen {
            budget_left,
            currency,
            rec,
        } = seen;

        let mut result = VerifyResult {
            allow: false,
            audit_id: Some(decision_id.to_string()),
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
            checks: rec.checks,
        };
        let outcome = match verdict {
            Verdict::Allow { reasons, approval } => {
                self.reserve(tx, now, &call, decision_id)?;
                if let Some(approval_id) = &approval {
                    tx.execute(
                        "UPDATE approvals SET token = NULL, token_used_ms = ?2 WHERE id = ?1",
                        args![approval_id, now],
                    )?;
                    ledger::append(
                        tx,
                        call.tenant,
                        "approval.token_used",
                        json!({"approval_request_id": approval_id, "decision_id": decision_id}),
                        now,
                    )?;
                }
                result.allow = true;
                result.code = Some("allowed".to_owned());
                result.message = Some(format!(
                    "{} reserved",
                    format_money(call.amount, currency.as_deref().unwrap_or("usd"))
                ));
                result.remaining_cents = budget_left.map(|b| b.saturating_sub(call.amount));
                result.reason_codes = reasons;
                "allow"
            }
            Verdict::Hold { reasons } => {
                match self.hold(tx, now, &call, decision_id, &reasons, policy)? {
                    Held::Approval(approval_id) => {
                        result.code = Some("approval_required".to_owned());
                        result.message = Some("an operator must approve this request".to_owned());
                        result.approval_required = true;
                        result.approval_request_id = Some(approval_id);
                        result.reason_codes = reasons;
                        "hold"
                    }
                    Held::Denied(approval_id) => {
                        result.code = Some("approval_denied".to_owned());
                        result.message = Some(format!(
                            "an operator denied this request (approval {approval_id}); the \
                             identical request is refused for {} s after the denial",
                            self.config.denied_request_window_ms / 1000
                        ));
                        result.approval_request_id = Some(approval_id);
                        result.reason_codes = vec!["approval_denied".to_owned()];
                        "deny"
                    }
                    Held::Limited {
                        message,
                        retry_after,
                    } => {
                        result.code = Some("approval_rate_limited".to_owned());
                        result.message = Some(message);
                        result.reason_codes = vec!["approval_rate_limited".to_owned()];
                        result.retry_after = Some(retry_after);
                        "deny"
                    }
                }
            }
            Verdict::Deny {
                code,
                message,
                retry_after,
            } => {
                result.code = Some(code.to_owned());
                result.message = Some(message);
                result.reason_codes = vec![code.to_owned()];
                result.retry_after = retry_after;
                "deny"
            }
        };
        let seq = ledger::append(
            tx,
            call.tenant,
            &format!("decision.{outcome}"),
            json!({
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
            }),
            now,
        )?;
        // With its ledger position, which orders decisions made in the same millisecond.
        tx.execute(
            "INSERT INTO decisions (id, tenant_id, intent_id, outcome, response, created_ms, ledger_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            args![
                decision_id.to_string(),
                call.tenant,
                call.intent,
                outcome,
                serde_json::to_string(&result)?,
                now,
                seq
            ],
        )?;
        Ok(result)
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
        tx.execute(
            "INSERT INTO reservations (id, tenant_id, intent_id, tool, operation, vendor, agent,
             agent_subject, amount_cents, state, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'open', ?10, ?11)",
            args![
                decision_id.to_string(),
                call.tenant,
                call.intent,
                call.tool,
                call.operation,
                call.vendor,
                call.agent,
                call.agent_subject,
                call.amount,
                now,
                now + self.config.reservation_ttl_ms
            ],
        )?;
        tx.execute(
            "UPDATE intents SET reserved_cents = reserved_cents + ?2 WHERE id = ?1",
            args![call.intent, call.amount],
        )?;
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
        )
    }

    /// A recorded verify decided again under `policy` (what-if replay): checks 3 to
    /// 11 as verify runs them (the capability token was checked when the call was
    /// made), reserving the amount under `decision_id` when it is allowed. Holds
    /// open no approval request. Answers the outcome (`allow`, `hold`, `deny`) and
    /// its reason codes.
    pub(crate) fn replay_decision(
        &self,
        tx: &dyn Tx,
        now: i64,
        principal: &Principal,
        call: &super::replay::RecordedCall,
        policy: &EffectivePolicy,
    ) -> Result<(&'static str, Vec<String>), ApiError> {
        let c = Call::recorded(principal, call, policy);
        let ask = Ask {
            currency: call.currency.as_deref(),
            approval_token: None,
            tool_name: Some(&call.tool),
            intent_ops: false,
            budget_only: false,
            phase: call.phase,
            approved: call.approved,
        };
        let mut seen = Seen::default();
        let verdict = self.policy_checks(tx, now, &ask, &c, Some(policy), &mut seen)?;
        Ok(match verdict {
            Verdict::Allow { reasons, .. } => {
                self.reserve(tx, now, &c, call.decision_id)?;
                ("allow", reasons)
            }
            Verdict::Hold { reasons } => ("hold", reasons),
            Verdict::Deny { code, .. } => ("deny", vec![code.to_owned()]),
        })
    }

    /// Reserves a recorded allowed call's amount as it was (what-if replay of a
    /// decision before the replayed window).
    pub(crate) fn replay_reserve(
        &self,
        tx: &dyn Tx,
        now: i64,
        principal: &Principal,
        call: &super::replay::RecordedCall,
        policy: &EffectivePolicy,
    ) -> Result<(), ApiError> {
        let c = Call::recorded(principal, call, policy);
        self.reserve(tx, now, &c, call.decision_id)
    }

    /// Checks 1 and 2 of a verify: the capability token, and that it allows the
    /// operation. Preflight carries no token and checks the intent's operations
    /// instead ([`Self::policy_checks`] with `operations_of_intent`).
    fn token_checks(
        &self,
        now: i64,
        token: &str,
        call: &Call<'_>,
        rec: &mut Recorder,
    ) -> Option<Verdict> {
        // 1. The capability token.
        let Ok(claims) = self.minter.check(token) else {
            rec.fail("capability_token", || json!({"valid": false}));
            return Some(deny(
                "capability_invalid",
                "the capability token is not valid",
            ));
        };
        if now >= claims.expires_ms {
            rec.fail(
                "capability_token",
                || json!({"expires_ms": claims.expires_ms, "now_ms": now}),
            );
            return Some(deny(
                "capability_expired",
                "the capability token has expired",
            ));
        }
        if claims.tenant != call.tenant || claims.intent != call.intent {
            rec.fail(
                "capability_token",
                || json!({"minted_for_intent": claims.intent}),
            );
            return Some(deny(
                "capability_intent_mismatch",
                "the capability token was minted for another intent",
            ));
        }
        rec.pass(
            "capability_token",
            || json!({"expires_ms": claims.expires_ms}),
        );
        // 2. The operation.
        if !claims.operations.iter().any(|o| o == call.operation) {
            rec.fail(
                "operation_allowed",
                || json!({"operation": call.operation, "allowed": claims.operations}),
            );
            return Some(deny(
                "operation_not_allowed",
                format!("the intent does not allow `{}`", call.operation),
            ));
        }
        rec.pass(
            "operation_allowed",
            || json!({"operation": call.operation, "allowed": claims.operations}),
        );
        None
    }

    /// Checks 3 to 11, in the documented order: the intent, the policy's admission
    /// of the tool, the per-call cap, the intent budget, rolling caps, rate limits,
    /// the schedule, the budget gates and the approval threshold. Shared by verify
    /// and preflight; reads only. `intent_ops` checks the operation against the
    /// intent's own list (preflight, which has no token to carry it); `budget_only`
    /// (preflight's operation `*`) stops after the intent budget.
    #[allow(clippy::too_many_lines)] // one check after another, in the documented order
    fn policy_checks(
        &self,
        tx: &dyn Tx,
        now: i64,
        ask: &Ask<'_>,
        call: &Call<'_>,
        policy: Option<&EffectivePolicy>,
        seen: &mut Seen,
    ) -> Result<Verdict, ApiError> {
        let Seen {
            budget_left: seen_left,
            currency: seen_currency,
            rec,
        } = seen;
        // 3. The intent.
        let intent: Option<(String, i64, u64, u64, String, String)> = tx.query_opt(
            "SELECT state, deadline_ms, budget_cents, consumed_cents + reserved_cents, currency, operations
                 FROM intents WHERE id = ?1 AND tenant_id = ?2",
            args![call.intent, call.tenant],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )?;
        let Some((state, deadline, mut budget, counted, currency, operations)) = intent else {
            rec.fail("intent", || json!({"found": false}));
            return Ok(deny(
                "intent_not_funded",
                "the intent does not exist or is not funded",
            ));
        };
        // Reservations past their TTL return to the budget whether or not the sweep
        // has expired them yet.
        let spent = counted.saturating_sub(crate::engine::lifecycle::lapsed_cents(
            tx,
            &call.intent,
            now,
        )?);
        *seen_currency = Some(currency.clone());
        let money = |cents: u64| format_money(cents, &currency);
        let intent_inputs =
            || json!({"state": state, "deadline_ms": deadline, "currency": currency});
        if now >= deadline || matches!(state.as_str(), "expired" | "refunded" | "released") {
            rec.fail("intent", intent_inputs);
            return Ok(deny("intent_expired", "the intent is past its deadline"));
        }
        if !matches!(state.as_str(), "funded" | "evidence_submitted") {
            rec.fail("intent", intent_inputs);
            return Ok(deny(
                "intent_not_funded",
                format!("the intent is {state}, not funded"),
            ));
        }
        if let Some(asked) = ask.currency
            && !asked.eq_ignore_ascii_case(&currency)
        {
            rec.fail(
                "intent",
                || json!({"state": state, "currency": currency, "requested_currency": asked}),
            );
            return Ok(deny(
                "currency_mismatch",
                format!("currency `{asked}` is not the intent's currency `{currency}`"),
            ));
        }
        rec.pass("intent", intent_inputs);
        // The budget: the intent's, within the policy's intent budget. What is left
        // goes in every answer from here on, whatever later check decides.
        let intent_budget = budget;
        let policy_cap = policy
            .and_then(|p| p.policy.intent.as_ref())
            .and_then(|i| i.budget.as_ref())
            .and_then(|b| b.max_spend_usd)
            // A finite, non-negative amount (the policy checks refuse others).
            .map(|usd| {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let cents = (usd * 100.0).round() as u64;
                cents
            });
        if let Some(cap) = policy_cap {
            budget = budget.min(cap);
        }
        *seen_left = Some(budget.saturating_sub(spent));
        if ask.intent_ops && !ask.budget_only {
            let allowed: Vec<String> = serde_json::from_str(&operations).unwrap_or_default();
            if !allowed.iter().any(|o| o == call.operation) {
                rec.fail(
                    "operation_allowed",
                    || json!({"operation": call.operation, "allowed": allowed}),
                );
                return Ok(deny(
                    "operation_not_allowed",
                    format!("the intent does not allow `{}`", call.operation),
                ));
            }
            rec.pass(
                "operation_allowed",
                || json!({"operation": call.operation, "allowed": allowed}),
            );
        }
        // 4. The policy admits the tool: the one the operation belongs to.
        let Some(policy) = policy else {
            rec.fail("tool_in_policy", || json!({"policy": null}));
            return Ok(deny(
                "tool_not_in_policy",
                "the tenant has no policy; nothing is allowed",
            ));
        };
        let doc = &policy.policy;
        let budget_only = ask.budget_only;
        let binding = if budget_only {
            None
        } else {
            match &call.binding {
                Ok(b) => Some(b),
                Err(verdict) => {
                    rec.fail(
                        "tool_in_policy",
                        || json!({"operation": call.operation, "tool_name": ask.tool_name}),
                    );
                    return Ok(verdict.clone());
                }
            }
        };
        let controls = doc.spend_controls.as_ref();
        let limits = binding.map(|b| tool_limits(doc, &b.tools));
        if let Some(binding) = binding {
            let tool_inputs = || json!({"operation": call.operation, "tools": binding.tools, "default_deny": doc.default_deny});
            if !binding.in_policy && doc.default_deny == Some(true) {
                rec.fail("tool_in_policy", tool_inputs);
                return Ok(deny(
                    "tool_not_in_policy",
                    format!("no tool of the policy has operation `{}`", call.operation),
                ));
            }
            if let Some(allowed) = doc.intent.as_ref().and_then(|i| i.allowed_tools.as_ref())
                && let Some(tool) = binding.tools.iter().find(|t| !allowed.contains(t))
            {
                rec.fail(
                    "tool_in_policy",
                    || json!({"tools": binding.tools, "allowed_tools": allowed}),
                );
                return Ok(deny(
                    "tool_not_in_policy",
                    format!("`{tool}` is not among the policy's allowed_tools"),
                ));
            }
            if let Some(tool) = limits.as_ref().and_then(|l| l.disabled.as_ref()) {
                rec.fail(
                    "tool_in_policy",
                    || json!({"tools": binding.tools, "disabled": tool}),
                );
                return Ok(deny("tool_disabled", format!("`{tool}` is disabled")));
            }
            rec.pass("tool_in_policy", tool_inputs);
            // The payment phase: a side-effecting call only once the run has
            // committed to its plan (a call that names no phase has not).
            if let Some(required) = controls
                .and_then(|c| c.phases.as_ref())
                .and_then(|p| Phase::parse(&p.payment_phase))
            {
                let phase_inputs = || json!({"payment_phase": required.name(), "phase": ask.phase.map(Phase::name)});
                if ask.phase.is_none_or(|p| p < required) {
                    rec.fail("payment_phase", phase_inputs);
                    return Ok(deny(
                        "phase_not_committed",
                        format!(
                            "the policy allows paid calls from the {required} phase; the run is in {}",
                            ask.phase.map_or("no phase", Phase::name)
                        ),
                    ));
                }
                rec.pass("payment_phase", phase_inputs);
            }
            let vendors = controls.and_then(|c| c.vendors.as_ref());
            let vendor_caps =
                controls.is_some_and(|c| c.caps.iter().any(|cap| cap.scope == CapScope::Vendor));
            if call.vendor.is_none() && (vendors.is_some() || vendor_caps) {
                rec.fail(
                    "vendor",
                    || json!({"vendor_id": null, "vendor_caps": vendor_caps}),
                );
                return Ok(deny(
                    "vendor_required",
                    "the policy limits spend by vendor: the request must name its vendor_id",
                ));
            }
            if let Some(vendors) = vendors {
                let vendor_inputs = || json!({"vendor_id": call.vendor, "allow": vendors.allow});
                if !call
                    .vendor
                    .is_some_and(|v| vendors.allow.iter().any(|a| a == v))
                {
                    rec.fail("vendor", vendor_inputs);
                    return Ok(deny(
                        "vendor_not_allowed",
                        format!(
                            "vendor `{}` is not on the allowlist",
                            call.vendor.unwrap_or_default()
                        ),
                    ));
                }
                rec.pass("vendor", vendor_inputs);
            }
            // 5. The per-call cap.
            if let Some(cap) = limits.as_ref().and_then(|l| l.cap) {
                let cap_inputs = || json!({"amount_cents": call.amount, "max_per_call_cents": cap});
                if call.amount > cap {
                    rec.fail("per_call_cap", cap_inputs);
                    return Ok(deny(
                        "tool_cap_exceeded",
                        format!(
                            "{} is above the per-call cap of {}",
                            money(call.amount),
                            money(cap)
                        ),
                    ));
                }
                rec.pass("per_call_cap", cap_inputs);
            }
        }
        // 6. The intent budget, open reservations included.
        let budget_inputs = || {
            json!({"amount_cents": call.amount, "intent_budget_cents": intent_budget,
                   "policy_budget_cents": policy_cap, "spent_cents": spent,
                   "remaining_cents": budget.saturating_sub(spent)})
        };
        if spent + call.amount > budget {
            rec.fail("intent_budget", budget_inputs);
            return Ok(deny(
                "intent_budget_exceeded",
                format!(
                    "{} would exceed the intent budget: {} of {} left",
                    money(call.amount),
                    money(budget.saturating_sub(spent)),
                    money(budget)
                ),
            ));
        }
        rec.pass("intent_budget", budget_inputs);
        let (Some(binding), Some(limits)) = (binding, limits) else {
            return Ok(Verdict::Allow {
                reasons: Vec::new(),
                approval: None,
            });
        };
        // 7. Rolling caps per scope and window.
        if let Some(c) = controls {
            for cap in &c.caps {
                if let Some(v) = rolling_cap(tx, now, call, binding, cap, &currency, rec)? {
                    return Ok(v);
                }
            }
        }
        // 8. Rate limits, per bound tool: at most `limit` rows of the hour are read
        // (the (tenant, tool, created_ms) index), however busy the tool is.
        for (tool, limit) in &limits.per_hour {
            let recent: Vec<i64> = tx.query_map(
                "SELECT created_ms FROM reservations
                 WHERE tenant_id = ?1 AND tool = ?2 AND created_ms > ?3
                 ORDER BY created_ms LIMIT ?4",
                args![call.tenant, tool, now - 3_600_000, *limit],
                |r| r.get(0),
            )?;
            let rate_inputs = || json!({"tool": tool, "limit_per_hour": limit, "calls_in_last_hour": recent.len()});
            if recent.len() >= usize::try_from(*limit).unwrap_or(usize::MAX) {
                rec.fail("rate_limit", rate_inputs);
                let oldest = recent.first().copied().unwrap_or(now);
                let wait_ms = (oldest + 3_600_000 - now).max(1000);
                return Ok(Verdict::Deny {
                    code: "rate_limited",
                    message: format!("`{tool}` is limited to {limit} calls per hour"),
                    retry_after: Some(u64::try_from((wait_ms + 999) / 1000).unwrap_or(1)),
                });
            }
            rec.pass("rate_limit", rate_inputs);
        }
        // 9. The schedule.
        if let Some(hours) = controls
            .and_then(|c| c.schedule.as_ref())
            .map(|s| &s.active_hours)
        {
            let schedule_inputs = || json!({"start": hours.start, "end": hours.end, "timezone": hours.timezone, "now_ms": now});
            if !within_active_hours(now, &hours.start, &hours.end, &hours.timezone) {
                rec.fail("schedule", schedule_inputs);
                return Ok(deny(
                    "outside_active_hours",
                    format!(
                        "calls run between {} and {} ({})",
                        hours.start, hours.end, hours.timezone
                    ),
                ));
            }
            rec.pass("schedule", schedule_inputs);
        }
        // 10. Graduated gates on the intent budget.
        let mut reasons = Vec::new();
        if let Some(g) = controls.and_then(|c| c.gates)
            && budget > 0
        {
            #[allow(clippy::cast_precision_loss)] // amounts are far below 2^52 cents
            let used = (spent + call.amount) as f64 / budget as f64;
            let gate_inputs = || json!({"used_after_call": used, "warning": g.warning, "restrict": g.restrict, "halt": g.halt});
            if used >= g.halt {
                rec.fail("budget_gates", gate_inputs);
                return Ok(deny(
                    "budget_gate_halt",
                    format!(
                        "the intent would be {:.0}% spent; the halt gate is {:.0}%",
                        used * 100.0,
                        g.halt * 100.0
                    ),
                ));
            } else if used >= g.restrict {
                reasons.push("budget_gate_restrict".to_owned());
            } else if used >= g.warning {
                reasons.push("budget_gate_warning".to_owned());
            }
            rec.pass("budget_gates", gate_inputs);
        }
        // 11. The approval threshold.
        if let Some(threshold) = limits.threshold {
            let threshold_inputs = || {
                json!({"amount_cents": call.amount, "approval_threshold_cents": threshold,
                       "approval_token": ask.approval_token.is_some()})
            };
            if call.amount > threshold {
                if ask.approved {
                    rec.pass("approval_threshold", threshold_inputs);
                    reasons.push("approval_token_accepted".to_owned());
                    return Ok(Verdict::Allow {
                        reasons,
                        approval: None,
                    });
                }
                let Some(token) = ask.approval_token else {
                    rec.hold("approval_threshold", threshold_inputs);
                    reasons.insert(0, "approval_threshold_exceeded".to_owned());
                    return Ok(Verdict::Hold { reasons });
                };
                let verdict = self.check_approval_token(tx, now, call, token, reasons)?;
                match &verdict {
                    Verdict::Allow { .. } => rec.pass("approval_threshold", threshold_inputs),
                    _ => rec.fail("approval_threshold", threshold_inputs),
                }
                return Ok(verdict);
            }
            rec.pass("approval_threshold", threshold_inputs);
        }
        Ok(Verdict::Allow {
            reasons,
            approval: None,
        })
    }

    fn check_approval_token(
        &self,
        tx: &dyn Tx,
        now: i64,
        call: &Call<'_>,
        token: &str,
        reasons: Vec<String>,
    ) -> Result<Verdict, ApiError> {
        let row: Option<TokenRow> = tx.query_opt(
            "SELECT id, intent_id, operation, tool, vendor, amount_cents, token_expires_ms,
                 token_used_ms, key_id
             FROM approvals WHERE token_hash = ?1 AND tenant_id = ?2",
            args![sha256_hex(token.as_bytes()), call.tenant],
            |r| {
                Ok(TokenRow {
                    id: r.get(0)?,
                    intent: r.get(1)?,
                    operation: r.get(2)?,
                    tool: r.get(3)?,
                    vendor: r.get(4)?,
                    amount: r.get(5)?,
                    expires: r.get(6)?,
                    used: r.get(7)?,
                    key_id: r.get(8)?,
                })
            },
        )?;
        let Some(row) = row else {
            return Ok(deny(
                "approval_token_invalid",
                "the approval token is not valid",
            ));
        };
        // Checked first, and the token left as it is: another key of the tenant that
        // learnt the token neither uses it nor spends it (nor learns its state).
        // Requests opened before approvals recorded their key name none.
        if row.key_id.as_deref().is_some_and(|k| k != call.key_id) {
            return Ok(deny(
                "approval_token_principal_mismatch",
                "the approval token was issued for a request another API key made; \
                 only that key may use it",
            ));
        }
        if row.used.is_some() {
            return Ok(deny(
                "approval_token_reused",
                "the approval token has already been used",
            ));
        }
        if row.expires.is_none_or(|e| now >= e) {
            return Ok(deny(
                "approval_token_expired",
                "the approval token has expired",
            ));
        }
        let mismatch = if row.intent != call.intent {
            Some(("approval_intent_mismatch", "intent"))
        } else if row.operation != call.operation {
            Some(("approval_operation_mismatch", "operation"))
        } else if row.amount != call.amount {
            Some(("approval_amount_mismatch", "amount"))
        } else if row.vendor.as_deref() != call.vendor {
            Some(("approval_vendor_mismatch", "vendor"))
        } else if row.tool != call.tool {
            Some(("approval_tool_mismatch", "tool"))
        } else {
            None
        };
        if let Some((code, field)) = mismatch {
            return Ok(deny(
                code,
                format!("the approval was given for another {field}; request a new approval"),
            ));
        }
        let mut reasons = reasons;
        reasons.push("approval_token_accepted".to_owned());
        Ok(Verdict::Allow {
            reasons,
            approval: Some(row.id),
        })
    }

    /// Records a hold: reuses the key's pending (or approved, unused) approval of
    /// exactly this request, answers the operators' recent denial of it again, else
    /// opens a new one, unless the agent key has opened too many in the last minute
    /// or the intent has too many pending: an agent cannot bury the operators' queue.
    fn hold(
        &self,
        tx: &dyn Tx,
        now: i64,
        call: &Call<'_>,
        decision_id: Uuid,
        reasons: &[String],
        policy: Option<&EffectivePolicy>,
    ) -> Result<Held, ApiError> {
        let digest = request_digest(call);
        // This key's latest request like this one: still waiting, approved and not
        // yet used (the same request again), or denied a moment ago (the same deny).
        let existing: Option<(String, String)> = tx.query_opt(
            "SELECT id, state FROM approvals WHERE tenant_id = ?1 AND request_digest = ?2
                 AND key_id = ?3
                 AND ((state = 'pending' AND expires_ms > ?4)
                   OR (state = 'approved' AND token_used_ms IS NULL AND token_expires_ms > ?4)
                   OR (state = 'denied' AND decided_ms > ?5))
                 ORDER BY created_ms DESC LIMIT 1",
            args![
                call.tenant,
                digest,
                call.key_id,
                now,
                now.saturating_sub(self.config.denied_request_window_ms)
            ],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if let Some((id, state)) = existing {
            let id = Uuid::parse_str(&id).map_err(ApiError::internal)?;
            return Ok(if state == "denied" {
                Held::Denied(id)
            } else {
                Held::Approval(id)
            });
        }
        let per_minute = i64::from(self.config.approval_requests_per_agent_per_minute);
        let (recent, oldest): (i64, Option<i64>) = tx.query_one(
            "SELECT COUNT(*), MIN(created_ms) FROM approvals
             WHERE tenant_id = ?1 AND agent = ?2 AND created_ms > ?3",
            args![call.tenant, call.agent, now - 60_000],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if recent >= per_minute {
            let wait_ms = oldest.map_or(60_000, |o| o + 60_000 - now);
            return Ok(Held::Limited {
                message: format!(
                    "this agent key opened {recent} approval requests in the last minute; \
                     at most {per_minute} are accepted"
                ),
                retry_after: seconds_ceil(wait_ms),
            });
        }
        let per_intent = i64::from(self.config.pending_approvals_per_intent);
        let (pending, first_expiry): (i64, Option<i64>) = tx.query_one(
            "SELECT COUNT(*), MIN(expires_ms) FROM approvals
             WHERE intent_id = ?1 AND state = 'pending' AND expires_ms > ?2",
            args![call.intent, now],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if pending >= per_intent {
            return Ok(Held::Limited {
                message: format!(
                    "the intent has {pending} approval requests pending; at most {per_intent} \
                     may wait at once"
                ),
                retry_after: seconds_ceil(first_expiry.map_or(60_000, |e| e - now)),
            });
        }
        let approval = policy
            .and_then(|p| p.policy.spend_controls.as_ref())
            .and_then(|c| c.approval);
        let quorum = approval.map_or(1, |a| a.quorum.max(1));
        let timeout_ms = approval
            .and_then(|a| a.timeout_seconds)
            .map_or(15 * 60_000, |s| {
                i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
            });
        let id = Uuid::new_v4();
        tx.execute(
            "INSERT INTO approvals (id, tenant_id, intent_id, decision_id, request_digest, operation, tool,
             vendor, amount_cents, reason_codes, state, approvers, quorum, created_ms, expires_ms, agent,
             key_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending', '[]', ?11, ?12, ?13, ?14, ?15)",
            args![
                id.to_string(),
                call.tenant,
                call.intent,
                decision_id.to_string(),
                digest,
                call.operation,
                call.tool,
                call.vendor,
                call.amount,
                serde_json::to_string(reasons)?,
                quorum,
                now,
                now.saturating_add(timeout_ms),
                call.agent,
                call.key_id
            ],
        )?;
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
        Ok(Held::Approval(id))
    }
}

/// The first bucket of `cap` that `call` would take past its limit, as a deny.
///
/// Which buckets a call is counted in follows from what the gateway knows, never
/// from what the caller chooses to leave out: an agent cap always counts the API
/// key's subject (naming an `agent_subject` only adds the sub-agent's own bucket),
/// a tool cap counts the tools the operation is bound to, and a vendor cap counts
/// the named vendor (a request without one is refused earlier, `vendor_required`).
fn rolling_cap(
    tx: &dyn Tx,
    now: i64,
    call: &Call<'_>,
    binding: &ToolBinding,
    cap: &paybond_policies::RollingCap,
    currency: &str,
    rec: &mut Recorder,
) -> Result<Option<Verdict>, ApiError> {
    let key = cap.key.as_deref();
    let applies = |value: &str| key.is_none_or(|k| k == value);
    let mut buckets = Vec::new();
    match cap.scope {
        CapScope::Tenant => buckets.push(Bucket::Tenant),
        CapScope::Agent => {
            if applies(call.agent) {
                buckets.push(Bucket::Agent(call.agent));
            }
            if let Some(sub) = call.agent_subject.filter(|s| applies(s)) {
                buckets.push(Bucket::SubAgent(call.agent, sub));
            }
        }
        CapScope::Vendor => {
            if let Some(v) = call.vendor.filter(|v| applies(v)) {
                buckets.push(Bucket::Vendor(v));
            }
        }
        CapScope::Tool => buckets.extend(
            binding
                .tools
                .iter()
                .filter(|t| applies(t))
                .map(|t| Bucket::Tool(t)),
        ),
    }
    let timezone = cap.timezone.as_deref().unwrap_or("UTC");
    let bounds = counters::window(now, cap.window, timezone);
    for bucket in buckets {
        // A cap whose window cannot be placed (a timezone the policy checks refuse)
        // cannot be checked: closed, like active hours.
        let spent = match bounds {
            Some(bounds) => counters::spent(tx, call.tenant, &bucket, bounds, now)?,
            None => u64::MAX,
        };
        let cap_inputs = || {
            json!({"scope": cap.scope, "bucket": bucket.key().replace('\u{1f}', "/"), "window": cap.window,
                   "timezone": timezone, "limit_cents": cap.limit_cents,
                   "used_cents": (spent != u64::MAX).then_some(spent), "amount_cents": call.amount})
        };
        if spent.saturating_add(call.amount) <= cap.limit_cents {
            rec.pass("rolling_cap", cap_inputs);
            continue;
        }
        rec.fail("rolling_cap", cap_inputs);
        let window = match cap.window {
            CapWindow::Hour => "hourly",
            CapWindow::Day => "daily",
            CapWindow::Month => "monthly",
        };
        let scope = match cap.scope {
            CapScope::Tenant => "tenant",
            CapScope::Agent => "agent",
            CapScope::Vendor => "vendor",
            CapScope::Tool => "tool",
        };
        return Ok(Some(deny(
            cap_code(window, scope),
            format!(
                "{} would exceed the {window} {scope} cap of {} ({} left)",
                format_money(call.amount, currency),
                format_money(cap.limit_cents, currency),
                format_money(cap.limit_cents.saturating_sub(spent), currency)
            ),
        )));
    }
    Ok(None)
}

/// An approval token's request as its row holds it: its binding and token state.
struct TokenRow {
    id: String,
    intent: String,
    operation: String,
    tool: String,
    vendor: Option<String>,
    amount: u64,
    expires: Option<i64>,
    used: Option<i64>,
    /// The key whose verify opened the request.
    key_id: Option<String>,
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

fn cap_code(window: &str, scope: &str) -> &'static str {
    match (window, scope) {
        ("hourly", "tenant") => "hourly_tenant_cap_exceeded",
        ("hourly", "agent") => "hourly_agent_cap_exceeded",
        ("hourly", "vendor") => "hourly_vendor_cap_exceeded",
        ("hourly", _) => "hourly_tool_cap_exceeded",
        ("daily", "tenant") => "daily_tenant_cap_exceeded",
        ("daily", "agent") => "daily_agent_cap_exceeded",
        ("daily", "vendor") => "daily_vendor_cap_exceeded",
        ("daily", _) => "daily_tool_cap_exceeded",
        (_, "tenant") => "monthly_tenant_cap_exceeded",
        (_, "agent") => "monthly_agent_cap_exceeded",
        (_, "vendor") => "monthly_vendor_cap_exceeded",
        _ => "monthly_tool_cap_exceeded",
    }
}

fn zoned(now_ms: i64, timezone: &str) -> Option<Zoned> {
    let tz = TimeZone::get(timezone).ok()?;
    Some(Timestamp::from_millisecond(now_ms).ok()?.to_zoned(tz))
}

/// Whether `now` falls in `[start, end)` local time in `timezone`.
fn within_active_hours(now_ms: i64, start: &str, end: &str, timezone: &str) -> bool {
    let minutes = |s: &str| {
        let (h, m) = s.split_once(':')?;
        Some(h.parse::<i32>().ok()? * 60 + m.parse::<i32>().ok()?)
    };
    let (Some(z), Some(start), Some(end)) = (zoned(now_ms, timezone), minutes(start), minutes(end))
    else {
        // Unreadable settings (refused by the policy checks): closed.
        return false;
    };
    let now = i32::from(z.hour()) * 60 + i32::from(z.minute());
    start <= now && now < end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_hours_are_local_time() {
        // 14:37Z is 10:37 in New York (EDT) and 23:37 in Tokyo.
        let now = Timestamp::from_second(1_773_585_432)
            .unwrap()
            .as_millisecond();
        assert!(within_active_hours(
            now,
            "09:00",
            "18:00",
            "America/New_York"
        ));
        assert!(!within_active_hours(now, "09:00", "18:00", "Asia/Tokyo"));
        assert!(!within_active_hours(now, "09:00", "18:00", "Nowhere/Else"));
    }
}
