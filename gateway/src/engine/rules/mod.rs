//! The checks of a verify as pure functions, one module per family of checks,
//! each over a prefetched, read-only [`CallContext`]: what the store holds about
//! the call (its intent's amounts, the counters and windows its caps and limits
//! count, the approval its token names), read before any rule runs. [`evaluate`]
//! runs them in the documented order, first failure wins, and answers a
//! [`Decision`]: the verdict, the checks with their inputs (the proof trace) and
//! the effects the engine applies. No rule reads or writes the store.

mod approval;
mod budget;
mod caps;
mod intent;
mod rate;
mod schedule;
mod token;
mod tool;

#[cfg(test)]
pub(crate) mod props;

use paybond_middleware_core::wire::{LifecycleStatus, Phase, PolicyCheck};
use paybond_policies::PolicyDocument;
use serde_json::Value;

pub(crate) use approval::{HoldContext, HoldOutcome, hold};
pub(crate) use caps::buckets as cap_buckets;
pub(crate) use tool::{ToolBinding, bind_tool, tool_limits};

use crate::tokens::Claims;

/// An hour, in milliseconds: the window of hourly rate limits.
pub(crate) const HOUR_MS: i64 = 3_600_000;

/// Why a call is refused: every deny a verify (or preflight) can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DenyCode {
    CapabilityInvalid,
    CapabilityExpired,
    CapabilityIntentMismatch,
    OperationNotAllowed,
    IntentNotFunded,
    IntentExpired,
    CurrencyMismatch,
    ToolNotInPolicy,
    ToolOperationMismatch,
    ToolDisabled,
    PhaseNotCommitted,
    VendorRequired,
    VendorNotAllowed,
    ToolCapExceeded,
    IntentBudgetExceeded,
    /// A rolling cap: its window and scope.
    RollingCapExceeded(paybond_policies::CapWindow, paybond_policies::CapScope),
    RateLimited,
    OutsideActiveHours,
    BudgetGateHalt,
    ApprovalTokenInvalid,
    ApprovalTokenPrincipalMismatch,
    ApprovalTokenReused,
    ApprovalTokenExpired,
    ApprovalIntentMismatch,
    ApprovalOperationMismatch,
    ApprovalAmountMismatch,
    ApprovalVendorMismatch,
    ApprovalToolMismatch,
    /// The identical request was denied by an operator a moment ago.
    ApprovalDenied,
    /// The agent key or the intent is over its approval-request limits.
    ApprovalRateLimited,
}

impl DenyCode {
    /// The reason code on the wire.
    pub(crate) fn as_str(self) -> &'static str {
        use paybond_policies::{CapScope as S, CapWindow as W};
        match self {
            Self::CapabilityInvalid => "capability_invalid",
            Self::CapabilityExpired => "capability_expired",
            Self::CapabilityIntentMismatch => "capability_intent_mismatch",
            Self::OperationNotAllowed => "operation_not_allowed",
            Self::IntentNotFunded => "intent_not_funded",
            Self::IntentExpired => "intent_expired",
            Self::CurrencyMismatch => "currency_mismatch",
            Self::ToolNotInPolicy => "tool_not_in_policy",
            Self::ToolOperationMismatch => "tool_operation_mismatch",
            Self::ToolDisabled => "tool_disabled",
            Self::PhaseNotCommitted => "phase_not_committed",
            Self::VendorRequired => "vendor_required",
            Self::VendorNotAllowed => "vendor_not_allowed",
            Self::ToolCapExceeded => "tool_cap_exceeded",
            Self::IntentBudgetExceeded => "intent_budget_exceeded",
            Self::RollingCapExceeded(window, scope) => match (window, scope) {
                (W::Hour, S::Tenant) => "hourly_tenant_cap_exceeded",
                (W::Hour, S::Agent) => "hourly_agent_cap_exceeded",
                (W::Hour, S::Vendor) => "hourly_vendor_cap_exceeded",
                (W::Hour, S::Tool) => "hourly_tool_cap_exceeded",
                (W::Day, S::Tenant) => "daily_tenant_cap_exceeded",
                (W::Day, S::Agent) => "daily_agent_cap_exceeded",
                (W::Day, S::Vendor) => "daily_vendor_cap_exceeded",
                (W::Day, S::Tool) => "daily_tool_cap_exceeded",
                (W::Month, S::Tenant) => "monthly_tenant_cap_exceeded",
                (W::Month, S::Agent) => "monthly_agent_cap_exceeded",
                (W::Month, S::Vendor) => "monthly_vendor_cap_exceeded",
                (W::Month, S::Tool) => "monthly_tool_cap_exceeded",
            },
            Self::RateLimited => "rate_limited",
            Self::OutsideActiveHours => "outside_active_hours",
            Self::BudgetGateHalt => "budget_gate_halt",
            Self::ApprovalTokenInvalid => "approval_token_invalid",
            Self::ApprovalTokenPrincipalMismatch => "approval_token_principal_mismatch",
            Self::ApprovalTokenReused => "approval_token_reused",
            Self::ApprovalTokenExpired => "approval_token_expired",
            Self::ApprovalIntentMismatch => "approval_intent_mismatch",
            Self::ApprovalOperationMismatch => "approval_operation_mismatch",
            Self::ApprovalAmountMismatch => "approval_amount_mismatch",
            Self::ApprovalVendorMismatch => "approval_vendor_mismatch",
            Self::ApprovalToolMismatch => "approval_tool_mismatch",
            Self::ApprovalDenied => "approval_denied",
            Self::ApprovalRateLimited => "approval_rate_limited",
        }
    }
}

#[cfg(test)]
impl DenyCode {
    /// Every code, each rolling-cap window and scope too.
    fn all() -> Vec<Self> {
        use paybond_policies::{CapScope as S, CapWindow as W};
        let mut all = vec![
            Self::CapabilityInvalid,
            Self::CapabilityExpired,
            Self::CapabilityIntentMismatch,
            Self::OperationNotAllowed,
            Self::IntentNotFunded,
            Self::IntentExpired,
            Self::CurrencyMismatch,
            Self::ToolNotInPolicy,
            Self::ToolOperationMismatch,
            Self::ToolDisabled,
            Self::PhaseNotCommitted,
            Self::VendorRequired,
            Self::VendorNotAllowed,
            Self::ToolCapExceeded,
            Self::IntentBudgetExceeded,
            Self::RateLimited,
            Self::OutsideActiveHours,
            Self::BudgetGateHalt,
            Self::ApprovalTokenInvalid,
            Self::ApprovalTokenPrincipalMismatch,
            Self::ApprovalTokenReused,
            Self::ApprovalTokenExpired,
            Self::ApprovalIntentMismatch,
            Self::ApprovalOperationMismatch,
            Self::ApprovalAmountMismatch,
            Self::ApprovalVendorMismatch,
            Self::ApprovalToolMismatch,
            Self::ApprovalDenied,
            Self::ApprovalRateLimited,
        ];
        for window in [W::Hour, W::Day, W::Month] {
            for scope in [S::Tenant, S::Agent, S::Vendor, S::Tool] {
                all.push(Self::RollingCapExceeded(window, scope));
            }
        }
        all
    }
}

#[cfg(test)]
mod codes {
    use super::DenyCode;

    #[test]
    fn every_deny_code_is_in_the_documented_table() {
        let table = include_str!("../../../../docs/deny-codes.md");
        let codes = DenyCode::all();
        assert_eq!(codes.len(), 41);
        for code in codes {
            assert!(
                table.contains(&format!("`{}`", code.as_str())),
                "docs/deny-codes.md does not document {code}"
            );
        }
    }
}

impl std::fmt::Display for DenyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome the checks reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow {
        reasons: Vec<String>,
        /// The approval request whose token the call used (burnt with the allow).
        approval: Option<String>,
    },
    Hold {
        reasons: Vec<String>,
    },
    Deny {
        code: DenyCode,
        message: String,
        retry_after: Option<u64>,
    },
}

/// A deny without a retry time.
pub(crate) fn deny(code: DenyCode, message: impl Into<String>) -> Verdict {
    Verdict::Deny {
        code,
        message: message.into(),
        retry_after: None,
    }
}

/// What a decision changes, applied by the engine in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Reserve the call's amount: its reservation, the intent's reserved amount,
    /// every rolling-cap counter.
    Reserve,
    /// Spend the approval token of this approval request.
    UseApprovalToken(String),
    /// Ask the operators (or answer an earlier answer of theirs): see [`hold`].
    RequestApproval,
}

/// What [`evaluate`] decided.
#[derive(Debug, Clone)]
pub(crate) struct Decision {
    pub(crate) verdict: Verdict,
    /// The checks evaluated, in order, each with its inputs and result (empty
    /// when recording was off).
    pub(crate) checks: Vec<PolicyCheck>,
    /// The intent budget left before this call, once the intent was read.
    pub(crate) budget_left: Option<u64>,
    /// The intent's currency, once the intent was read.
    pub(crate) currency: Option<String>,
}

impl Decision {
    /// The changes the verdict makes.
    pub(crate) fn effects(&self) -> Vec<Effect> {
        match &self.verdict {
            Verdict::Allow { approval, .. } => {
                let mut effects = vec![Effect::Reserve];
                if let Some(id) = approval {
                    effects.push(Effect::UseApprovalToken(id.clone()));
                }
                effects
            }
            Verdict::Hold { .. } => vec![Effect::RequestApproval],
            Verdict::Deny { .. } => Vec::new(),
        }
    }
}

/// The checks a decision evaluated, in order, each with its inputs and result.
/// The inputs are built only when recording is on.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    on: bool,
    checks: Vec<PolicyCheck>,
}

impl Recorder {
    /// A recorder that keeps every check.
    pub(crate) fn on() -> Self {
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

/// What the request is, once bound to the token and the policy.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    pub(crate) tenant: &'a str,
    pub(crate) intent: String,
    /// The policy tool the decision is recorded and counted under: the one the
    /// operation belongs to (see [`bind_tool`]), never a name the caller picks freely.
    pub(crate) tool: String,
    pub(crate) operation: &'a str,
    pub(crate) vendor: Option<&'a str>,
    /// The API key's subject. Every agent-scoped cap counts it, whatever the call names.
    pub(crate) agent: &'a str,
    /// The API key's id: the principal an approval is opened for (its token works
    /// for this key alone).
    pub(crate) key_id: &'a str,
    /// A sub-agent the caller names; it narrows agent-scoped caps within its key's scope.
    pub(crate) agent_subject: Option<&'a str>,
    pub(crate) amount: u64,
    /// The policy tools the call is about, or why it cannot be bound to any.
    pub(crate) binding: Result<ToolBinding, Verdict>,
}

/// What the request asks beyond the call itself, as verify and preflight carry it.
#[derive(Debug, Default)]
pub(crate) struct Ask<'a> {
    pub(crate) currency: Option<&'a str>,
    pub(crate) approval_token: Option<&'a str>,
    pub(crate) tool_name: Option<&'a str>,
    /// Check the operation against the intent's own list (preflight: no token).
    pub(crate) intent_ops: bool,
    /// Preflight's operation `*`: the intent's budget only.
    pub(crate) budget_only: bool,
    /// The run's phase, as the call carries it.
    pub(crate) phase: Option<Phase>,
    /// An operator approved this very call: a what-if replay of a retry that
    /// carried a valid approval token (there is no token to check again).
    pub(crate) approved: bool,
}

/// A capability token as the minter read it.
#[derive(Debug, Clone)]
pub(crate) enum TokenFacts {
    /// Not a token of this gateway, or tampered with.
    Invalid,
    Valid(Claims),
}

/// The intent as the store holds it.
#[derive(Debug, Clone)]
pub(crate) struct IntentFacts {
    /// `None` for a state this engine does not know (refused as not funded).
    pub(crate) state: Option<LifecycleStatus>,
    /// The stored state's name, for the proof trace.
    pub(crate) state_name: String,
    pub(crate) deadline_ms: i64,
    pub(crate) budget_cents: u64,
    /// Consumed plus reserved, without reservations past their TTL.
    pub(crate) spent_cents: u64,
    pub(crate) currency: String,
    /// The operations the intent allows.
    pub(crate) operations: Vec<String>,
}

impl IntentFacts {
    /// The stored name of an intent state, as this engine knows it.
    pub(crate) fn parse_state(name: &str) -> Option<LifecycleStatus> {
        Some(match name {
            "created" => LifecycleStatus::Created,
            "funded" => LifecycleStatus::Funded,
            "evidence_submitted" => LifecycleStatus::EvidenceSubmitted,
            "released" => LifecycleStatus::Released,
            "refunded" => LifecycleStatus::Refunded,
            "expired" => LifecycleStatus::Expired,
            _ => return None,
        })
    }
}

/// The approval request an approval token names, as the store holds it.
#[derive(Debug, Clone)]
pub(crate) struct ApprovalFacts {
    pub(crate) id: String,
    pub(crate) intent: String,
    pub(crate) operation: String,
    pub(crate) tool: String,
    pub(crate) vendor: Option<String>,
    pub(crate) amount: u64,
    pub(crate) token_expires_ms: Option<i64>,
    pub(crate) token_used_ms: Option<i64>,
    /// The key whose verify opened the request (`None`: opened before keys were
    /// recorded).
    pub(crate) key_id: Option<String>,
}

/// Everything the rules read about one call, prefetched.
#[derive(Debug)]
pub(crate) struct CallContext<'a> {
    pub(crate) now: i64,
    pub(crate) call: &'a Call<'a>,
    pub(crate) ask: &'a Ask<'a>,
    /// The tenant's effective policy (`None`: the tenant has none).
    pub(crate) policy: Option<&'a PolicyDocument>,
    /// The capability token; `None` when the call carries none (preflight, replay).
    pub(crate) token: Option<TokenFacts>,
    /// `None` when the tenant has no such intent.
    pub(crate) intent: Option<IntentFacts>,
    /// For each rolling cap of the policy, in order, the spend of each bucket the
    /// call counts in ([`cap_buckets`], in that order); `None` for a window that
    /// cannot be placed (an unknown timezone).
    pub(crate) cap_usage: Vec<Vec<Option<u64>>>,
    /// For each hourly limit of the bound tools ([`tool_limits`]' `per_hour`, in
    /// order), the tool's reservations of the last hour.
    pub(crate) rate_windows: Vec<CallWindow>,
    /// The approval request the call's approval token names, if it names one.
    pub(crate) approval: Option<ApprovalFacts>,
}

/// A tool's reservations of the hour before a decision, as its hourly limit reads
/// them: how many (counted up to the limit) and when the oldest was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CallWindow {
    pub(crate) calls: usize,
    pub(crate) oldest: Option<i64>,
}

#[cfg(test)]
impl CallWindow {
    /// The window at `now` of calls made at `times` (any order), counted up to
    /// `limit`.
    pub(crate) fn of(times: impl IntoIterator<Item = i64>, now: i64, limit: usize) -> Self {
        let mut in_hour: Vec<i64> = times.into_iter().filter(|t| *t > now - HOUR_MS).collect();
        in_hour.sort_unstable();
        in_hour.truncate(limit);
        Self {
            calls: in_hour.len(),
            oldest: in_hour.first().copied(),
        }
    }
}

/// What the checks learnt on the way, for the answer.
#[derive(Default)]
struct Seen {
    budget_left: Option<u64>,
    currency: Option<String>,
}

/// Runs every check in order over `ctx`, first failure wins.
pub(crate) fn evaluate(ctx: &CallContext<'_>, mut rec: Recorder) -> Decision {
    let mut seen = Seen::default();
    let verdict = match chain(ctx, &mut rec, &mut seen) {
        Ok(v) | Err(v) => v,
    };
    Decision {
        verdict,
        checks: rec.checks,
        budget_left: seen.budget_left,
        currency: seen.currency,
    }
}

/// The checks in the documented order; `Err` is an early verdict.
fn chain(ctx: &CallContext<'_>, rec: &mut Recorder, seen: &mut Seen) -> Result<Verdict, Verdict> {
    // 1 and 2: the capability token and the operations it allows.
    if let Some(token) = &ctx.token {
        token::check(token, ctx.call, ctx.now, rec)?;
    }
    // 3: the intent, and the budget left in it.
    let budget = intent::check(ctx, rec)?;
    seen.currency = Some(budget.currency.clone());
    seen.budget_left = Some(budget.left());
    intent::operations(ctx, rec)?;
    // 4 and 5: the policy admits the tool, its phase, vendor and per-call cap.
    let admitted = tool::admit(ctx, &budget.currency, rec)?;
    // 6: the intent budget, open reservations included.
    budget::intent_budget(ctx, &budget, rec)?;
    let Some((doc, binding, limits)) = admitted else {
        return Ok(Verdict::Allow {
            reasons: Vec::new(),
            approval: None,
        });
    };
    // 7 to 9: rolling caps, hourly rate limits, the schedule.
    caps::check(ctx, doc, binding, &budget.currency, rec)?;
    rate::check(ctx, &limits, rec)?;
    schedule::check(ctx, doc, rec)?;
    // 10 and 11: graduated gates, then the approval threshold.
    let reasons = budget::gates(ctx, doc, &budget, rec)?;
    Ok(approval::threshold(ctx, &limits, reasons, rec))
}

/// Whether `token` admits `call` at `now` (checks 1 and 2): when it does not, the
/// chain ends there and reads nothing of the store.
pub(crate) fn token_admits(token: &TokenFacts, call: &Call<'_>, now: i64) -> bool {
    token::check(token, call, now, &mut Recorder::default()).is_ok()
}

/// An amount in the intent's currency, as people read it.
fn money(cents: u64, currency: &str) -> String {
    paybond_middleware_core::format_money(cents, currency)
}
