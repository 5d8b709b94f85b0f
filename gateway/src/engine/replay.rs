//! What-if replay: every recorded verify of a store decided again, in order, under
//! another policy (`paybond policy replay`).
//!
//! The store is never written: [`Engine::replay_database`] copies a consistent
//! snapshot of the SQLite file (`VACUUM INTO`, from a read-only connection) to a
//! private temporary directory and replays there. In the copy each replayed
//! tenant's spend is reset (no reservations, nothing consumed or reserved, no
//! rolling-cap counters) and the new policy is published; then the tenant's ledger
//! is walked in order:
//!
//! - a `decision.*` entry is decided again by the engine's own checks 3 to 11 (the
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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use paybond_middleware_core::wire::{
    CompleteRequest, Environment, Finalization, Phase, Principal, Role,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::lifecycle::{expire_due, rfc3339};
use super::{Clock, Engine, EngineConfig, PolicyFile};
use crate::error::ApiError;
use crate::store::{Storage, Tx, args};

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The policy to decide under, published as each replayed tenant's policy.
    pub policy: PolicyFile,
    /// Re-decide only the verifies made at or after this time (Unix ms); earlier
    /// ones shape the budgets as recorded.
    pub since_ms: Option<i64>,
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

/// A private temporary directory, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<Self, ApiError> {
        let path = std::env::temp_dir().join(format!("paybond-replay-{}", Uuid::new_v4()));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&path)
            .map_err(|e| ApiError::unusable(format!("cannot create {}: {e}", path.display())))?;
        Ok(Self(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Engine {
    /// Replays the SQLite store at `database` under `options.policy` (see the
    /// [module](self)). The store is only read.
    pub fn replay_database(
        database: &Path,
        options: &ReplayOptions,
    ) -> Result<ReplayReport, ApiError> {
        if !database.is_file() {
            return Err(ApiError::unusable(format!(
                "{}: no such database",
                database.display()
            )));
        }
        let scratch = ScratchDir::new()?;
        let copy = scratch.0.join("replay.db");
        crate::store::snapshot_sqlite(database, &copy)?;
        let engine = Engine::open(EngineConfig {
            clock: Clock::manual(0),
            default_org_policy: None,
            default_tenant_policy: None,
            ..EngineConfig::new(Storage::File(copy))
        })?;
        let report = engine.replay(options);
        drop(engine);
        report
    }

    /// Replays this engine's store in place: for a scratch copy only.
    fn replay(&self, options: &ReplayOptions) -> Result<ReplayReport, ApiError> {
        let tenants: Vec<(String, String)> = self.tx(|tx, _| {
            tx.query_map("SELECT id, name FROM tenants ORDER BY id", args![], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
        })?;
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
            tenants: tenants.clone(),
            decisions: 0,
            before: ReplayTally::default(),
            after: ReplayTally::default(),
            spent_before_cents: 0,
            spent_after_cents: 0,
            not_spent_cents: 0,
            newly_spent_cents: 0,
            changes: Vec::new(),
        };
        for tenant in &tenants {
            let policy = self.publish_tenant_policy_text(tenant, &options.policy)?;
            report
                .policy_digest
                .get_or_insert_with(|| policy.digest.clone());
            self.store.write(Some(tenant), |tx| {
                self.replay_tenant(tx, tenant, &policy, options.since_ms, &mut report)
            })?;
        }
        Ok(report)
    }

    #[allow(clippy::too_many_lines)] // one walk over the ledger, entry by entry
    fn replay_tenant(
        &self,
        tx: &dyn Tx,
        tenant: &str,
        policy: &paybond_middleware_core::wire::EffectivePolicy,
        since_ms: Option<i64>,
        report: &mut ReplayReport,
    ) -> Result<(), ApiError> {
        let entries: Vec<(String, String, i64)> = tx.query_map(
            "SELECT event, payload, at_ms FROM ledger WHERE tenant_id = ?1
             AND (event LIKE 'decision.%' OR event IN ('reservation.consumed', 'reservation.released'))
             ORDER BY seq",
            args![tenant],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        // The spend as the new policy would have left it starts from nothing.
        tx.execute(
            "DELETE FROM reservations WHERE tenant_id = ?1",
            args![tenant],
        )?;
        tx.execute(
            "DELETE FROM spend_counters WHERE tenant_id = ?1",
            args![tenant],
        )?;
        // An intent closed since was open when its calls were decided (a call made
        // once it was closed keeps its recorded outcome).
        tx.execute(
            "UPDATE intents SET consumed_cents = 0, reserved_cents = 0,
             state = CASE WHEN state IN ('evidence_submitted', 'released', 'refunded', 'expired')
                          THEN 'funded' ELSE state END
             WHERE tenant_id = ?1",
            args![tenant],
        )?;
        // Decisions the replay allowed whose reservation is still open, by id.
        let mut open: HashSet<Uuid> = HashSet::new();
        // Decisions decided again (not before `since`), and how each ended.
        let mut replayed: HashMap<Uuid, (String, String)> = HashMap::new();
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
                if kind == "consumed" {
                    recorded_spend.insert(id, actual);
                }
                if !open.remove(&id) {
                    continue;
                }
                let outcome = if kind == "consumed" {
                    Finalization::Consumed
                } else {
                    Finalization::Released
                };
                super::lifecycle::complete_tx(
                    tx,
                    at,
                    &agent(tenant, ""),
                    id,
                    &CompleteRequest {
                        outcome,
                        actual_spend_cents: Some(actual),
                    },
                )?;
                if outcome == Finalization::Consumed && replayed.contains_key(&id) {
                    report.spent_after_cents += actual;
                }
                continue;
            }
            let Some(call) = RecordedCall::from_entry(&event, &payload) else {
                continue;
            };
            expire_due(tx, at)?;
            let principal = agent(tenant, &call.agent);
            if since_ms.is_some_and(|s| at < s) {
                // Before the window: as recorded.
                if call.was == "allow" {
                    self.replay_reserve(tx, at, &principal, &call, policy)?;
                    open.insert(call.decision_id);
                }
                continue;
            }
            let call_key = call.tool_call_id.clone().map(|t| (call.intent_id, t));
            let (now, reasons) = if call_key.as_ref().is_some_and(|k| allowed_calls.contains(k)) {
                ("not_reached", Vec::new())
            } else if call.refused_outside_policy() {
                ("deny", call.was_reasons.clone())
            } else {
                match self.replay_decision(tx, at, &principal, &call, policy)? {
                    // Holds open no approval request here; one the gateway refused to
                    // open (too many from this agent or for this intent, an engine
                    // setting rather than the policy's) stays refused.
                    ("hold", _) if call.was_reasons == ["approval_rate_limited"] => {
                        ("deny", call.was_reasons.clone())
                    }
                    decided => decided,
                }
            };
            if now == "allow" {
                open.insert(call.decision_id);
                if let Some(k) = call_key {
                    allowed_calls.insert(k);
                }
                if call.was != "allow" {
                    // The tool would have run: taken as consumed at the amount asked.
                    open.remove(&call.decision_id);
                    super::lifecycle::complete_tx(
                        tx,
                        at,
                        &principal,
                        call.decision_id,
                        &CompleteRequest {
                            outcome: Finalization::Consumed,
                            actual_spend_cents: Some(call.amount_cents),
                        },
                    )?;
                    report.spent_after_cents += call.amount_cents;
                    report.newly_spent_cents += call.amount_cents;
                }
            }
            report.decisions += 1;
            report.before.count(&call.was);
            report.after.count(now);
            replayed.insert(call.decision_id, (call.was.clone(), now.to_owned()));
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
        for (id, (was, now)) in &replayed {
            let spent = recorded_spend.get(id).copied().unwrap_or(0);
            report.spent_before_cents += spent;
            if was == "allow" && now != "allow" {
                report.not_spent_cents += spent;
            }
        }
        Ok(())
    }
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
