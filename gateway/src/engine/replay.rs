//! What-if replay: every recorded verify of a store decided again, in order, under
//! another policy (`paybond policy replay`).
//!
//! Replay is a fold of the recorded ledger through the rules: the store is only
//! read, in one read-only snapshot (SQLite or PostgreSQL, with a gateway running on
//! it or not), and nothing is copied. Each replayed tenant's spend starts from
//! nothing in a spend state in memory (no reservations, nothing consumed or
//! reserved, its intents open as they were when their calls were made); then the
//! tenant's ledger is walked in order:
//!
//! - a `decision.*` entry is decided again by the rules' checks 3 to 11 (the
//!   capability token was checked when the call was made), at the time it was
//!   made, with the budgets as the new policy would have left them. An allowed
//!   call reserves its amount.
//! - a `reservation.consumed` or `reservation.released` entry settles the replayed
//!   reservation the same way, when the replay allowed that call too.
//! - a call the replay allows but the record did not is taken as consumed at its
//!   requested amount (the tool would have run).
//!
//! A retry that carried a valid approval token counts as approved (the operator
//! approved that exact call); a later attempt of a call the replay already allowed
//! is `not_reached`; a hold the gateway refused to open (`approval_rate_limited`)
//! stays refused when the new policy holds the call too. Decisions refused for
//! reasons no policy changes (the capability token, the intent's state, a bad
//! approval token) keep their outcome.
//! Decisions before `since` are applied as recorded and not reported.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use paybond_middleware_core::wire::{
    EffectivePolicy, Environment, Finalization, Phase, Principal, Role,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::decide::recorded_call;
use super::lifecycle::rfc3339;
use super::rules::{self, Ask, IntentFacts, Recorder, Verdict};
use super::state::{SpendState, reopened};
use super::{DEFAULT_RESERVATION_TTL_MS, Engine, PolicyFile, resolve_tenant_policy};
use crate::error::ApiError;
use crate::store::{IntentTerms, Storage, Tx};

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The policy to decide under, published as each replayed tenant's policy.
    pub policy: PolicyFile,
    /// Re-decide only the verifies made at or after this time (Unix ms); earlier
    /// ones shape the budgets as recorded.
    pub since_ms: Option<i64>,
    /// Re-decide only the verifies made before this time (Unix ms); later ones
    /// are left out of the report.
    pub until_ms: Option<i64>,
    /// Only this tenant (its id or its name); every tenant when `None`.
    pub tenant: Option<String>,
}

/// How many decisions ended each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayTally {
    /// Allowed.
    pub allowed: u64,
    /// Held for approval.
    pub held: u64,
    /// Denied.
    pub denied: u64,
    /// Not made at all: a retry of a call the replay had already allowed.
    pub not_reached: u64,
}

impl ReplayTally {
    fn count(&mut self, outcome: &str) {
        match outcome {
            "allow" => self.allowed += 1,
            "hold" => self.held += 1,
            "deny" => self.denied += 1,
            _ => self.not_reached += 1,
        }
    }
}

/// One recorded decision the new policy decides otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayChange {
    /// The recorded decision.
    pub decision_id: Uuid,
    /// Its tenant.
    pub tenant_id: String,
    /// Its intent.
    pub intent_id: Uuid,
    /// The agent's tool call, when the request named it.
    pub tool_call_id: Option<String>,
    /// The policy tool.
    pub tool: String,
    /// The amount asked for.
    pub amount_cents: u64,
    /// When it was decided (RFC 3339).
    pub decided_at: String,
    /// `allow`, `hold` or `deny`, as recorded.
    pub was: String,
    /// The recorded reason codes.
    pub was_reason_codes: Vec<String>,
    /// `allow`, `hold`, `deny` or `not_reached`, under the new policy.
    pub now: String,
    /// The reason codes under the new policy.
    pub reason_codes: Vec<String>,
}

/// What the new policy would have decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// The policy file replayed under.
    pub policy_file: String,
    /// Its effective digest (for the first replayed tenant).
    pub policy_digest: Option<String>,
    /// Only decisions from this time on were decided again.
    pub since: Option<String>,
    /// Only decisions before this time were decided again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The tenants replayed.
    pub tenants: Vec<String>,
    /// The decisions decided again.
    pub decisions: u64,
    /// How they were decided.
    pub before: ReplayTally,
    /// How the new policy decides them.
    pub after: ReplayTally,
    /// Consumed by them, as recorded.
    pub spent_before_cents: u64,
    /// Consumed by them under the new policy.
    pub spent_after_cents: u64,
    /// Consumed as recorded by calls the new policy does not allow: cents that
    /// would not have been spent.
    pub not_spent_cents: u64,
    /// Asked for by calls the new policy allows and the record did not.
    pub newly_spent_cents: u64,
    /// Every decision that changes (outcome or reason codes), in order.
    pub changes: Vec<ReplayChange>,
    /// Consumed before and after, by the UTC day of the decisions, oldest first.
    pub days: Vec<ReplayDay>,
}

/// Consumed on one UTC day by the decisions decided again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayDay {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// As recorded.
    pub spent_before_cents: u64,
    /// Under the new policy.
    pub spent_after_cents: u64,
}

/// The UTC day (`YYYY-MM-DD`) of `ms`.
fn day_of(ms: i64) -> String {
    rfc3339(ms).get(..10).unwrap_or_default().to_owned()
}

/// `report.days`' entry for `ms`'s day.
fn day_entry(days: &mut BTreeMap<String, (u64, u64)>, ms: i64) -> &mut (u64, u64) {
    days.entry(day_of(ms)).or_default()
}

/// A recorded verify, as its ledger entry has it.
pub(crate) struct RecordedCall {
    pub(crate) decision_id: Uuid,
    pub(crate) intent_id: Uuid,
    pub(crate) operation: String,
    pub(crate) tool: String,
    pub(crate) vendor: Option<String>,
    pub(crate) agent: String,
    pub(crate) agent_subject: Option<String>,
    pub(crate) amount_cents: u64,
    pub(crate) currency: Option<String>,
    pub(crate) phase: Option<Phase>,
    pub(crate) tool_call_id: Option<String>,
    /// The recorded outcome and reasons.
    pub(crate) was: String,
    pub(crate) was_reasons: Vec<String>,
    /// It carried an approval token the gateway accepted.
    pub(crate) approved: bool,
}

impl RecordedCall {
    fn from_entry(event: &str, payload: &Value) -> Option<Self> {
        let text = |k: &str| payload[k].as_str().map(str::to_owned);
        let was_reasons: Vec<String> = payload["reason_codes"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            decision_id: text("decision_id")?.parse().ok()?,
            intent_id: text("intent_id")?.parse().ok()?,
            operation: text("operation")?,
            tool: text("tool")?,
            vendor: text("vendor"),
            agent: text("agent")?,
            agent_subject: text("agent_subject"),
            amount_cents: payload["amount_cents"].as_u64()?,
            currency: text("currency"),
            phase: payload["phase"].as_str().and_then(Phase::parse),
            tool_call_id: text("tool_call_id"),
            was: event.strip_prefix("decision.")?.to_owned(),
            approved: was_reasons.iter().any(|r| r == "approval_token_accepted"),
            was_reasons,
        })
    }

    /// Refused for a reason no policy changes: the capability token, the intent's
    /// state or currency, or a bad approval token.
    fn refused_outside_policy(&self) -> bool {
        self.was == "deny"
            && self.was_reasons.iter().any(|r| {
                r.starts_with("capability_")
                    || r.starts_with("approval_token_")
                    || (r.starts_with("approval_") && r.ends_with("_mismatch"))
                    || matches!(
                        r.as_str(),
                        "operation_not_allowed"
                            | "intent_not_funded"
                            | "intent_expired"
                            | "currency_mismatch"
                    )
            })
    }
}

impl Engine {
    /// Replays the SQLite store at `database` under `options.policy` (see the
    /// [module](self)). The store is only read.
    pub async fn replay_database(
        database: &Path,
        options: &ReplayOptions,
    ) -> Result<ReplayReport, ApiError> {
        Self::replay_store(&Storage::File(database.to_owned()), options).await
    }

    /// Replays the store `storage` names (a SQLite file or a fleet's PostgreSQL
    /// database) under `options.policy`, in one read-only snapshot of it, on the
    /// blocking pool.
    pub async fn replay_store(
        storage: &Storage,
        options: &ReplayOptions,
    ) -> Result<ReplayReport, ApiError> {
        let storage = storage.clone();
        let options = options.clone();
        tokio::task::spawn_blocking(move || {
            crate::store::read_only(&storage, |tx| replay(tx, &options))
        })
        .await
        .map_err(|e| ApiError::internal(format_args!("the replay's task failed: {e}")))?
    }
}

pub(crate) fn replay(tx: &dyn Tx, options: &ReplayOptions) -> Result<ReplayReport, ApiError> {
    let tenants: Vec<(String, String)> = tx.tenant_names()?;
    let tenants: Vec<String> = tenants
        .into_iter()
        .filter(|(id, name)| options.tenant.as_ref().is_none_or(|t| t == id || t == name))
        .map(|(id, _)| id)
        .collect();
    if let (Some(t), true) = (&options.tenant, tenants.is_empty()) {
        return Err(ApiError::not_found(
            "tenant_not_found",
            format!("the store has no tenant `{t}`"),
        ));
    }
    let mut report = ReplayReport {
        policy_file: options.policy.file.clone(),
        policy_digest: None,
        since: options.since_ms.map(rfc3339),
        until: options.until_ms.map(rfc3339),
        tenants: tenants.clone(),
        decisions: 0,
        before: ReplayTally::default(),
        after: ReplayTally::default(),
        spent_before_cents: 0,
        spent_after_cents: 0,
        not_spent_cents: 0,
        newly_spent_cents: 0,
        changes: Vec::new(),
        days: Vec::new(),
    };
    let mut days = BTreeMap::new();
    for tenant in &tenants {
        let (org_policy_id, policy) = resolve_tenant_policy(tx, tenant, &options.policy)?;
        let policy = EffectivePolicy {
            tenant_id: tenant.clone(),
            version: 0,
            digest: policy.digest(),
            org_policy_id,
            policy,
        };
        report
            .policy_digest
            .get_or_insert_with(|| policy.digest.clone());
        replay_tenant(tx, tenant, &policy, options, &mut report, &mut days)?;
    }
    report.days = days
        .into_iter()
        .map(|(day, (before, after))| ReplayDay {
            day,
            spent_before_cents: before,
            spent_after_cents: after,
        })
        .collect();
    Ok(report)
}

/// The tenant's intents, open as they were when their calls were made.
fn intents_of(tx: &dyn Tx, tenant: &str) -> Result<SpendState, ApiError> {
    let rows = tx.intent_terms_of(tenant)?;
    Ok(SpendState::new(rows.into_iter().map(
        |IntentTerms {
             id,
             state,
             deadline_ms,
             budget_cents,
             currency,
             operations,
         }| {
            let facts = IntentFacts {
                state: IntentFacts::parse_state(&state),
                state_name: state,
                deadline_ms,
                budget_cents,
                spent_cents: 0,
                currency,
                operations: serde_json::from_str(&operations).unwrap_or_default(),
            };
            (id, reopened(facts))
        },
    )))
}

#[allow(clippy::too_many_lines)] // one walk over the ledger, entry by entry
fn replay_tenant(
    tx: &dyn Tx,
    tenant: &str,
    policy: &EffectivePolicy,
    options: &ReplayOptions,
    report: &mut ReplayReport,
    days: &mut BTreeMap<String, (u64, u64)>,
) -> Result<(), ApiError> {
    let (since_ms, until_ms) = (options.since_ms, options.until_ms);
    let entries = tx.ledger_fold(tenant, true)?;
    let mut state = intents_of(tx, tenant)?;
    let ttl = DEFAULT_RESERVATION_TTL_MS;
    // Decisions decided again (not before `since`), how each ended, and when.
    let mut replayed: HashMap<Uuid, (String, String, i64)> = HashMap::new();
    // Calls the replay allowed: a later attempt of one is not made.
    let mut allowed_calls: HashSet<(Uuid, String)> = HashSet::new();
    // What the record consumed, by decision.
    let mut recorded_spend: HashMap<Uuid, u64> = HashMap::new();
    for (event, payload, at) in entries {
        let payload: Value = serde_json::from_str(&payload)?;
        if let Some(kind) = event.strip_prefix("reservation.") {
            let Some(id) = payload["decision_id"]
                .as_str()
                .and_then(|d| d.parse::<Uuid>().ok())
            else {
                continue;
            };
            let actual = payload["actual_cents"].as_u64().unwrap_or(0);
            let outcome = if kind == "consumed" {
                recorded_spend.insert(id, actual);
                Finalization::Consumed
            } else {
                Finalization::Released
            };
            if state.finalize(id, outcome, Some(actual), at)
                && outcome == Finalization::Consumed
                && let Some((_, _, decided)) = replayed.get(&id)
            {
                report.spent_after_cents += actual;
                day_entry(days, *decided).1 += actual;
            }
            continue;
        }
        let Some(call) = RecordedCall::from_entry(&event, &payload) else {
            continue;
        };
        if until_ms.is_some_and(|u| at >= u) {
            // After the window: neither decided again nor reported.
            continue;
        }
        state.expire_due(at);
        let principal = agent(tenant, &call.agent);
        let bound = recorded_call(&principal, &call, policy);
        if since_ms.is_some_and(|s| at < s) {
            // Before the window: as recorded.
            if call.was == "allow" {
                state.reserve(call.decision_id, &bound, at, at + ttl);
            }
            continue;
        }
        let call_key = call.tool_call_id.clone().map(|t| (call.intent_id, t));
        let (now, reasons) = if call_key.as_ref().is_some_and(|k| allowed_calls.contains(k)) {
            ("not_reached", Vec::new())
        } else if call.refused_outside_policy() {
            ("deny", call.was_reasons.clone())
        } else {
            let ask = Ask {
                currency: call.currency.as_deref(),
                approval_token: None,
                tool_name: Some(&call.tool),
                intent_ops: false,
                budget_only: false,
                phase: call.phase,
                approved: call.approved,
            };
            let ctx = state.context(at, &bound, &ask, Some(&policy.policy));
            match rules::evaluate(&ctx, Recorder::default()).verdict {
                Verdict::Allow { reasons, .. } => {
                    state.reserve(call.decision_id, &bound, at, at + ttl);
                    ("allow", reasons)
                }
                // Holds open no approval request here; one the gateway refused to
                // open (too many from this agent or for this intent, an engine
                // setting rather than the policy's) stays refused.
                Verdict::Hold { .. } if call.was_reasons == ["approval_rate_limited"] => {
                    ("deny", call.was_reasons.clone())
                }
                Verdict::Hold { reasons } => ("hold", reasons),
                Verdict::Deny { code, .. } => ("deny", vec![code.as_str().to_owned()]),
            }
        };
        if now == "allow" {
            if let Some(k) = call_key {
                allowed_calls.insert(k);
            }
            if call.was != "allow" {
                // The tool would have run: taken as consumed at the amount asked.
                state.finalize(
                    call.decision_id,
                    Finalization::Consumed,
                    Some(call.amount_cents),
                    at,
                );
                report.spent_after_cents += call.amount_cents;
                report.newly_spent_cents += call.amount_cents;
                day_entry(days, at).1 += call.amount_cents;
            }
        }
        report.decisions += 1;
        report.before.count(&call.was);
        report.after.count(now);
        replayed.insert(call.decision_id, (call.was.clone(), now.to_owned(), at));
        if now != call.was || reasons != call.was_reasons {
            report.changes.push(ReplayChange {
                decision_id: call.decision_id,
                tenant_id: tenant.to_owned(),
                intent_id: call.intent_id,
                tool_call_id: call.tool_call_id.clone(),
                tool: call.tool.clone(),
                amount_cents: call.amount_cents,
                decided_at: rfc3339(at),
                was: call.was.clone(),
                was_reason_codes: call.was_reasons.clone(),
                now: now.to_owned(),
                reason_codes: reasons,
            });
        }
    }
    for (id, (was, now, decided)) in &replayed {
        let spent = recorded_spend.get(id).copied().unwrap_or(0);
        report.spent_before_cents += spent;
        day_entry(days, *decided).0 += spent;
        if was == "allow" && now != "allow" {
            report.not_spent_cents += spent;
        }
    }
    Ok(())
}

/// The agent key of `tenant` whose subject is `subject`, as the checks see it.
fn agent(tenant: &str, subject: &str) -> Principal {
    Principal {
        tenant_id: tenant.to_owned(),
        environment: Environment::Sandbox,
        service_account_role: Role::Agent,
        roles: vec![Role::Agent],
        subject: subject.to_owned(),
        key_id: String::new(),
    }
}
