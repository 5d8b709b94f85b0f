//! `verify`: the checks of DESIGN §4 in order, first failure wins.

use std::sync::atomic::Ordering;
use std::time::Instant;

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use paybond_middleware_core::wire::{Principal, SpendScope, VerifyRequest, VerifyResult};
use paybond_policies::{CapScope, CapWindow};
use rusqlite::{OptionalExtension, Transaction, params};
use serde_json::json;
use uuid::Uuid;

use crate::engine::{EffectivePolicy, Engine};
use crate::error::ApiError;
use crate::ledger;
use crate::tokens::sha256_hex;

/// Largest amount the gateway accepts, in cents (10 billion dollars).
pub(crate) const MAX_AMOUNT_CENTS: u64 = 1_000_000_000_000;

/// The outcome the checks reached.
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

/// What the request is, once resolved against the token and the policy.
struct Call<'a> {
    tenant: &'a str,
    intent: String,
    tool: String,
    operation: &'a str,
    vendor: Option<&'a str>,
    agent: String,
    amount: u64,
}

/// Spend counted against a scope: consumed amounts plus open, unexpired reservations.
const SPENT: &str = "COALESCE(SUM(CASE WHEN state = 'open' AND expires_ms > ?1 THEN amount_cents
     WHEN state = 'consumed' THEN actual_cents ELSE 0 END), 0)";

impl Engine {
    /// `POST /verify`: decides whether the call may run, and reserves its amount if so.
    pub fn verify(
        &self,
        principal: &Principal,
        req: &VerifyRequest,
    ) -> Result<VerifyResult, ApiError> {
        if req.requested_spend_cents > MAX_AMOUNT_CENTS {
            return Err(ApiError::unprocessable(
                "amount_out_of_range",
                format!("requested_spend_cents must be at most {MAX_AMOUNT_CENTS}"),
            ));
        }
        if req.operation.trim().is_empty() {
            return Err(ApiError::bad_request(
                "invalid_field",
                "operation must not be empty",
            ));
        }
        let started = Instant::now();
        let policy = self.policy_for(&principal.tenant_id)?;
        let result = self.idempotent(
            &principal.tenant_id,
            "verify",
            req.idempotency_key.as_deref(),
            req,
            |tx, now| self.decide(tx, now, principal, req, policy.as_deref()),
        )?;
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
        Ok(result)
    }

    fn decide(
        &self,
        tx: &Transaction<'_>,
        now: i64,
        principal: &Principal,
        req: &VerifyRequest,
        policy: Option<&EffectivePolicy>,
    ) -> Result<VerifyResult, ApiError> {
        let call = Call {
            tenant: &principal.tenant_id,
            intent: req.intent_id.to_string(),
            // The policy's name for the tool: the one the call names, else the tool
            // whose operation it is. Per-tool controls are looked up by this name, so a
            // call cannot dodge them by naming another tool.
            tool: req.tool_name.clone().unwrap_or_else(|| {
                policy
                    .and_then(|p| {
                        p.policy
                            .tools
                            .iter()
                            .find(|(name, t)| t.operation_for(name) == req.operation)
                            .map(|(name, _)| name.clone())
                    })
                    .unwrap_or_else(|| req.operation.clone())
            }),
            operation: &req.operation,
            vendor: req.vendor_id.as_deref(),
            agent: req
                .agent_subject
                .clone()
                .unwrap_or_else(|| principal.subject.clone()),
            amount: req.requested_spend_cents,
        };
        crate::lifecycle::expire_due(tx, now)?;
        let decision_id = Uuid::new_v4();
        let mut budget_left = None;
        let verdict = self.checks(tx, now, req, &call, policy, &mut budget_left)?;

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
        };
        let outcome = match verdict {
            Verdict::Allow { reasons, approval } => {
                tx.execute(
                    "INSERT INTO reservations (id, tenant_id, intent_id, tool, operation, vendor, agent,
                     amount_cents, state, created_ms, expires_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'open', ?9, ?10)",
                    params![
                        decision_id.to_string(),
                        call.tenant,
                        call.intent,
                        call.tool,
                        call.operation,
                        call.vendor,
                        call.agent,
                        call.amount,
                        now,
                        now + self.config.reservation_ttl_ms
                    ],
                )?;
                tx.execute(
                    "UPDATE intents SET reserved_cents = reserved_cents + ?2 WHERE id = ?1",
                    params![call.intent, call.amount],
                )?;
                if let Some(approval_id) = &approval {
                    tx.execute(
                        "UPDATE approvals SET token = NULL, token_used_ms = ?2 WHERE id = ?1",
                        params![approval_id, now],
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
                result.message = Some(format!("{} cents reserved", call.amount));
                result.remaining_cents = budget_left.map(|b| b.saturating_sub(call.amount));
                result.reason_codes = reasons;
                "allow"
            }
            Verdict::Hold { reasons } => {
                let approval_id = self.hold(tx, now, &call, decision_id, &reasons, policy)?;
                result.code = Some("approval_required".to_owned());
                result.message = Some("an operator must approve this request".to_owned());
                result.approval_required = true;
                result.approval_request_id = Some(approval_id);
                result.reason_codes = reasons;
                "hold"
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
        tx.execute(
            "INSERT INTO decisions (id, tenant_id, intent_id, outcome, response, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                decision_id.to_string(),
                call.tenant,
                call.intent,
                outcome,
                serde_json::to_string(&result)?,
                now
            ],
        )?;
        ledger::append(
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
                "amount_cents": call.amount,
                "reason_codes": result.reason_codes,
                "approval_request_id": result.approval_request_id,
                "policy_version": result.policy_version,
                "policy_digest": result.policy_digest,
            }),
            now,
        )?;
        Ok(result)
    }

    #[allow(clippy::too_many_lines)] // one check after another, in the documented order
    fn checks(
        &self,
        tx: &Transaction<'_>,
        now: i64,
        req: &VerifyRequest,
        call: &Call<'_>,
        policy: Option<&EffectivePolicy>,
        budget_left: &mut Option<u64>,
    ) -> Result<Verdict, ApiError> {
        // 1. The capability token.
        let Ok(claims) = self.minter.check(req.token.expose_secret()) else {
            return Ok(deny(
                "capability_invalid",
                "the capability token is not valid",
            ));
        };
        if now >= claims.expires_ms {
            return Ok(deny(
                "capability_expired",
                "the capability token has expired",
            ));
        }
        if claims.tenant != call.tenant || claims.intent != call.intent {
            return Ok(deny(
                "capability_intent_mismatch",
                "the capability token was minted for another intent",
            ));
        }
        // 2. The operation.
        if !claims.operations.iter().any(|o| o == call.operation) {
            return Ok(deny(
                "operation_not_allowed",
                format!("the intent does not allow `{}`", call.operation),
            ));
        }
        // 3. The intent.
        let intent: Option<(String, i64, u64, u64)> = tx
            .query_row(
                "SELECT state, deadline_ms, budget_cents, consumed_cents + reserved_cents FROM intents
                 WHERE id = ?1 AND tenant_id = ?2",
                params![call.intent, call.tenant],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((state, deadline, mut budget, spent)) = intent else {
            return Ok(deny(
                "intent_not_funded",
                "the intent does not exist or is not funded",
            ));
        };
        if now >= deadline || matches!(state.as_str(), "expired" | "refunded" | "released") {
            return Ok(deny("intent_expired", "the intent is past its deadline"));
        }
        if !matches!(state.as_str(), "funded" | "evidence_submitted") {
            return Ok(deny(
                "intent_not_funded",
                format!("the intent is {state}, not funded"),
            ));
        }
        // 4. The policy admits the tool.
        let Some(policy) = policy else {
            return Ok(deny(
                "tool_not_in_policy",
                "the tenant has no policy; nothing is allowed",
            ));
        };
        let doc = &policy.policy;
        let entry = doc.tools.get(&call.tool);
        if entry.is_none() && doc.default_deny == Some(true) {
            return Ok(deny(
                "tool_not_in_policy",
                format!("`{}` is not a tool of the policy", call.tool),
            ));
        }
        if let Some(allowed) = doc.intent.as_ref().and_then(|i| i.allowed_tools.as_ref())
            && !allowed.contains(&call.tool)
        {
            return Ok(deny(
                "tool_not_in_policy",
                format!("`{}` is not among the policy's allowed_tools", call.tool),
            ));
        }
        let controls = doc.spend_controls.as_ref();
        let tool_controls = controls.and_then(|c| c.tools.get(&call.tool));
        if tool_controls.and_then(|c| c.allow) == Some(false) {
            return Ok(deny(
                "tool_disabled",
                format!("`{}` is disabled", call.tool),
            ));
        }
        if let Some(vendors) = controls.and_then(|c| c.vendors.as_ref())
            && !call
                .vendor
                .is_some_and(|v| vendors.allow.iter().any(|a| a == v))
        {
            return Ok(deny(
                "vendor_not_allowed",
                format!(
                    "vendor `{}` is not on the allowlist",
                    call.vendor.unwrap_or("(none)")
                ),
            ));
        }
        // 5. The per-call cap.
        let cap = entry
            .and_then(|t| t.max_spend_cents)
            .or_else(|| tool_controls.and_then(|c| c.max_per_call_cents));
        if let Some(cap) = cap
            && call.amount > cap
        {
            return Ok(deny(
                "tool_cap_exceeded",
                format!(
                    "{} cents is above the per-call cap of {cap} cents",
                    call.amount
                ),
            ));
        }
        // 6. The intent budget, open reservations included.
        if let Some(usd) = doc
            .intent
            .as_ref()
            .and_then(|i| i.budget.as_ref())
            .and_then(|b| b.max_spend_usd)
        {
            // A finite, non-negative amount (the policy checks refuse others).
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let policy_cap = (usd * 100.0).round() as u64;
            budget = budget.min(policy_cap);
        }
        *budget_left = Some(budget.saturating_sub(spent));
        if spent + call.amount > budget {
            return Ok(deny(
                "intent_budget_exceeded",
                format!(
                    "{} cents would exceed the intent budget: {} of {budget} cents left",
                    call.amount,
                    budget.saturating_sub(spent)
                ),
            ));
        }
        // 7. Rolling caps per scope and window.
        if let Some(c) = controls {
            for cap in &c.caps {
                if let Some(v) = self.rolling_cap(tx, now, call, cap)? {
                    return Ok(v);
                }
            }
        }
        // 8. Rate limits.
        if let Some(limit) = tool_controls.and_then(|c| c.limit_per_hour) {
            let (count, oldest): (u64, Option<i64>) = tx.query_row(
                "SELECT COUNT(*), MIN(created_ms) FROM reservations
                 WHERE tenant_id = ?1 AND tool = ?2 AND created_ms > ?3",
                params![call.tenant, call.tool, now - 3_600_000],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if count >= u64::from(limit) {
                let wait_ms = oldest.map_or(0, |o| o + 3_600_000 - now).max(1000);
                return Ok(Verdict::Deny {
                    code: "rate_limited",
                    message: format!("`{}` is limited to {limit} calls per hour", call.tool),
                    retry_after: Some(u64::try_from((wait_ms + 999) / 1000).unwrap_or(1)),
                });
            }
        }
        // 9. The schedule.
        if let Some(hours) = controls
            .and_then(|c| c.schedule.as_ref())
            .map(|s| &s.active_hours)
            && !within_active_hours(now, &hours.start, &hours.end, &hours.timezone)
        {
            return Ok(deny(
                "outside_active_hours",
                format!(
                    "calls run between {} and {} ({})",
                    hours.start, hours.end, hours.timezone
                ),
            ));
        }
        // 10. Graduated gates on the intent budget.
        let mut reasons = Vec::new();
        if let Some(g) = controls.and_then(|c| c.gates)
            && budget > 0
        {
            #[allow(clippy::cast_precision_loss)] // amounts are far below 2^52 cents
            let used = (spent + call.amount) as f64 / budget as f64;
            if used >= g.halt {
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
        }
        // 11. The approval threshold.
        let threshold = tool_controls.and_then(|c| c.approval_threshold_cents);
        if let Some(threshold) = threshold
            && call.amount > threshold
        {
            let Some(token) = &req.approval_token else {
                reasons.insert(0, "approval_threshold_exceeded".to_owned());
                return Ok(Verdict::Hold { reasons });
            };
            return self.check_approval_token(tx, now, call, token.expose_secret(), reasons);
        }
        Ok(Verdict::Allow {
            reasons,
            approval: None,
        })
    }

    fn rolling_cap(
        &self,
        tx: &Transaction<'_>,
        now: i64,
        call: &Call<'_>,
        cap: &paybond_policies::RollingCap,
    ) -> Result<Option<Verdict>, ApiError> {
        let (column, value) = match cap.scope {
            CapScope::Tenant => (None, None),
            CapScope::Agent => (
                Some("agent"),
                Some(cap.key.clone().unwrap_or_else(|| call.agent.clone())),
            ),
            CapScope::Tool => (
                Some("tool"),
                Some(cap.key.clone().unwrap_or_else(|| call.tool.clone())),
            ),
            CapScope::Vendor => match (&cap.key, call.vendor) {
                (Some(k), Some(v)) if k == v => (Some("vendor"), Some(k.clone())),
                (None, Some(v)) => (Some("vendor"), Some(v.to_owned())),
                // The cap is for another vendor, or the call names none.
                _ => return Ok(None),
            },
        };
        if matches!(cap.scope, CapScope::Agent | CapScope::Tool)
            && cap.key.as_ref().is_some_and(|k| Some(k) != value.as_ref())
        {
            return Ok(None);
        }
        let start = window_start(now, cap.window, cap.timezone.as_deref().unwrap_or("UTC"));
        let spent: u64 = match column {
            None => tx.query_row(
                &format!(
                    "SELECT {SPENT} FROM reservations WHERE tenant_id = ?2 AND created_ms >= ?3"
                ),
                params![now, call.tenant, start],
                |r| r.get(0),
            )?,
            Some(col) => tx.query_row(
                &format!(
                    "SELECT {SPENT} FROM reservations WHERE tenant_id = ?2 AND created_ms >= ?3 AND {col} = ?4"
                ),
                params![now, call.tenant, start, value],
                |r| r.get(0),
            )?,
        };
        if spent + call.amount <= cap.limit_cents {
            return Ok(None);
        }
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
        let code = cap_code(window, scope);
        Ok(Some(deny(
            code,
            format!(
                "{} cents would exceed the {window} {scope} cap of {} cents ({} left)",
                call.amount,
                cap.limit_cents,
                cap.limit_cents.saturating_sub(spent)
            ),
        )))
    }

    fn check_approval_token(
        &self,
        tx: &Transaction<'_>,
        now: i64,
        call: &Call<'_>,
        token: &str,
        reasons: Vec<String>,
    ) -> Result<Verdict, ApiError> {
        let row: Option<TokenRow> = tx
            .query_row(
                "SELECT id, intent_id, operation, tool, vendor, amount_cents, token_expires_ms, token_used_ms
                 FROM approvals WHERE token_hash = ?1 AND tenant_id = ?2",
                params![sha256_hex(token.as_bytes()), call.tenant],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                    ))
                },
            )
            .optional()?;
        let Some((id, intent, operation, tool, vendor, amount, expires, used)) = row else {
            return Ok(deny(
                "approval_token_invalid",
                "the approval token is not valid",
            ));
        };
        if used.is_some() {
            return Ok(deny(
                "approval_token_reused",
                "the approval token has already been used",
            ));
        }
        if expires.is_none_or(|e| now >= e) {
            return Ok(deny(
                "approval_token_expired",
                "the approval token has expired",
            ));
        }
        let mismatch = if intent != call.intent {
            Some(("approval_intent_mismatch", "intent"))
        } else if operation != call.operation {
            Some(("approval_operation_mismatch", "operation"))
        } else if amount != call.amount {
            Some(("approval_amount_mismatch", "amount"))
        } else if vendor.as_deref() != call.vendor {
            Some(("approval_vendor_mismatch", "vendor"))
        } else if tool != call.tool {
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
            approval: Some(id),
        })
    }

    /// Records a hold: reuses a pending (or approved, unused) approval of exactly
    /// this request, else opens a new one.
    fn hold(
        &self,
        tx: &Transaction<'_>,
        now: i64,
        call: &Call<'_>,
        decision_id: Uuid,
        reasons: &[String],
        policy: Option<&EffectivePolicy>,
    ) -> Result<Uuid, ApiError> {
        let digest = request_digest(call);
        let existing: Option<String> = tx
            .query_row(
                "SELECT id FROM approvals WHERE tenant_id = ?1 AND request_digest = ?2
                 AND ((state = 'pending' AND expires_ms > ?3)
                   OR (state = 'approved' AND token_used_ms IS NULL AND token_expires_ms > ?3))
                 ORDER BY created_ms DESC LIMIT 1",
                params![call.tenant, digest, now],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = existing {
            return Uuid::parse_str(&id).map_err(ApiError::internal);
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
             vendor, amount_cents, reason_codes, state, approvers, quorum, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending', '[]', ?11, ?12, ?13)",
            params![
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
                now.saturating_add(timeout_ms)
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
        Ok(id)
    }
}

/// An approval's binding and token state: id, intent, operation, tool, vendor,
/// amount, token expiry, token use.
type TokenRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    u64,
    Option<i64>,
    Option<i64>,
);

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

/// Start (Unix ms) of the calendar hour, day or month containing `now` in `timezone`.
pub(crate) fn window_start(now_ms: i64, window: CapWindow, timezone: &str) -> i64 {
    let Some(z) = zoned(now_ms, timezone) else {
        // The policy checks refuse unknown timezones; fall back to a rolling window.
        return now_ms
            - match window {
                CapWindow::Hour => 3_600_000,
                CapWindow::Day => 86_400_000,
                CapWindow::Month => 30 * 86_400_000,
            };
    };
    let start = match window {
        CapWindow::Hour => z
            .with()
            .minute(0)
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok(),
        CapWindow::Day => z.start_of_day().ok(),
        CapWindow::Month => z.first_of_month().ok().and_then(|d| d.start_of_day().ok()),
    };
    start.map_or(now_ms, |s| s.timestamp().as_millisecond())
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
    fn windows_start_at_calendar_boundaries_in_their_timezone() {
        // 2026-03-15T14:37:12Z
        let now = Timestamp::from_second(1_773_585_432)
            .unwrap()
            .as_millisecond();
        let hour = window_start(now, CapWindow::Hour, "UTC");
        assert_eq!(
            Timestamp::from_millisecond(hour).unwrap().to_string(),
            "2026-03-15T14:00:00Z"
        );
        let day = window_start(now, CapWindow::Day, "America/New_York");
        assert_eq!(
            Timestamp::from_millisecond(day).unwrap().to_string(),
            "2026-03-15T04:00:00Z"
        );
        let month = window_start(now, CapWindow::Month, "UTC");
        assert_eq!(
            Timestamp::from_millisecond(month).unwrap().to_string(),
            "2026-03-01T00:00:00Z"
        );
    }

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
