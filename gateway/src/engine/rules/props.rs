//! Test helpers for the rules (plain values, no store) and a property test of
//! the whole chain: what [`evaluate`] allows is within every limit the context
//! shows, its proof trace ends where its verdict does, a smaller amount is never
//! refused where a larger one was allowed, and more spend never turns a deny into
//! an allow.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use paybond_middleware_core::wire::LifecycleStatus;
use paybond_policies::PolicyDocument;
use proptest::prelude::*;

use super::tool::{ToolBinding, bind_tool, tool_limits};
use super::{
    ApprovalFacts, Ask, Call, CallContext, CallWindow, DenyCode, IntentFacts, Recorder, TokenFacts,
    Verdict, cap_buckets, evaluate,
};
use crate::tokens::Claims;

pub(crate) const BOOK: &str = "travel.book_hotel";

/// A policy with the booking tool (per-call cap 200.00) and a read-only search
/// tool, and `controls` (indented lines) as its `spend_controls`.
pub(crate) fn policy(controls: &str) -> PolicyDocument {
    let mut text = format!(
        "version: 1\nname: rules\ndefault_deny: true\ntools:\n  {BOOK}: {{side_effecting: true, \
         max_spend_cents: 20000, evidence_preset: cost_and_completion}}\n  \
         travel.search_hotels: {{side_effecting: false}}\n"
    );
    if !controls.is_empty() {
        text.push_str("spend_controls:\n");
        text.push_str(controls);
    }
    let checked = paybond_policies::check_policy(&text, "rules.yaml");
    checked
        .document
        .unwrap_or_else(|| panic!("{text}: {:?}", checked.errors))
}

/// A call of `amount` cents for `operation`, bound to the tool of that name.
pub(crate) fn sample_call(operation: &'static str, amount: u64) -> Call<'static> {
    Call {
        tenant: "tnt_a",
        intent: "int_1".to_owned(),
        tool: operation.to_owned(),
        operation,
        vendor: None,
        agent: "agent:a",
        key_id: "key_a",
        agent_subject: None,
        amount,
        binding: Ok(ToolBinding {
            tools: vec![operation.to_owned()],
            in_policy: true,
        }),
    }
}

/// The owned parts of a [`CallContext`]: a funded intent of 600.00 with nothing
/// spent, no policy, nothing counted.
pub(crate) struct Sample<'a> {
    pub(crate) now: i64,
    pub(crate) call: &'a Call<'a>,
    pub(crate) ask: Ask<'static>,
    pub(crate) intent: Option<IntentFacts>,
    pub(crate) cap_usage: Vec<Vec<Option<u64>>>,
    pub(crate) rate_windows: Vec<CallWindow>,
    pub(crate) approval: Option<ApprovalFacts>,
}

impl<'a> Sample<'a> {
    pub(crate) fn new(call: &'a Call<'a>) -> Self {
        let now = 1_773_669_600_000;
        Self {
            now,
            call,
            ask: Ask::default(),
            intent: Some(IntentFacts {
                state: Some(LifecycleStatus::Funded),
                state_name: "funded".to_owned(),
                deadline_ms: now + 3_600_000,
                budget_cents: 60_000,
                spent_cents: 0,
                currency: "usd".to_owned(),
                operations: vec![BOOK.to_owned()],
            }),
            cap_usage: Vec::new(),
            rate_windows: Vec::new(),
            approval: None,
        }
    }

    pub(crate) fn context(&self, policy: Option<&'a PolicyDocument>) -> CallContext<'_> {
        CallContext {
            now: self.now,
            call: self.call,
            ask: &self.ask,
            policy,
            token: None,
            intent: self.intent.clone(),
            cap_usage: self.cap_usage.clone(),
            rate_windows: self.rate_windows.clone(),
            approval: self.approval.clone(),
        }
    }
}

/// The controls a generated policy may have.
#[derive(Debug, Clone)]
struct Controls {
    threshold: Option<u64>,
    per_hour: Option<u32>,
    tenant_day_cap: Option<u64>,
    agent_month_cap: Option<u64>,
    gates: bool,
}

impl Controls {
    fn yaml(&self) -> String {
        let mut out = String::new();
        let mut tool = Vec::new();
        if let Some(t) = self.threshold {
            tool.push(format!("approval_threshold_cents: {t}"));
        }
        if let Some(n) = self.per_hour {
            tool.push(format!("limit_per_hour: {n}"));
        }
        if !tool.is_empty() {
            out.push_str(&format!("  tools:\n    {BOOK}: {{{}}}\n", tool.join(", ")));
        }
        let mut caps = Vec::new();
        if let Some(l) = self.tenant_day_cap {
            caps.push(format!(
                "    - {{ scope: tenant, window: day, limit_cents: {l} }}\n"
            ));
        }
        if let Some(l) = self.agent_month_cap {
            caps.push(format!(
                "    - {{ scope: agent, window: month, limit_cents: {l} }}\n"
            ));
        }
        if !caps.is_empty() {
            out.push_str("  caps:\n");
            out.push_str(&caps.concat());
        }
        if self.gates {
            out.push_str("  gates: { warning: 0.5, restrict: 0.75, halt: 0.9 }\n");
        }
        out
    }
}

/// One generated situation: the call, what the store holds, and the policy.
#[derive(Debug, Clone)]
struct Case {
    amount: u64,
    budget: u64,
    spent: u64,
    state: &'static str,
    deadline_in_ms: i64,
    token: u8,
    controls: Controls,
    cap_spent: Vec<u64>,
    calls_in_hour: usize,
}

fn case() -> impl Strategy<Value = Case> {
    let controls = (
        proptest::option::of(0_u64..25_000),
        proptest::option::of(1_u32..5),
        proptest::option::of(0_u64..80_000),
        proptest::option::of(0_u64..80_000),
        any::<bool>(),
    )
        .prop_map(
            |(threshold, per_hour, tenant_day_cap, agent_month_cap, gates)| Controls {
                threshold,
                per_hour,
                tenant_day_cap,
                agent_month_cap,
                gates,
            },
        );
    (
        0_u64..30_000,
        0_u64..80_000,
        0_u64..80_000,
        prop::sample::select(vec![
            "funded",
            "funded",
            "evidence_submitted",
            "created",
            "refunded",
        ]),
        -1_000_i64..3_600_000,
        0_u8..4,
        controls,
        prop::collection::vec(0_u64..80_000, 2),
        0_usize..6,
    )
        .prop_map(
            |(
                amount,
                budget,
                spent,
                state,
                deadline_in_ms,
                token,
                controls,
                cap_spent,
                calls_in_hour,
            )| Case {
                amount,
                budget,
                spent,
                state,
                deadline_in_ms,
                token,
                controls,
                cap_spent,
                calls_in_hour,
            },
        )
}

/// Evaluates `case` (with `amount` and the spend raised by `more`).
fn run(case: &Case, amount: u64, more: u64) -> (super::Decision, PolicyDocument) {
    let doc = policy(&case.controls.yaml());
    let mut call = sample_call(BOOK, amount);
    call.binding = bind_tool(&doc, BOOK, None);
    let mut s = Sample::new(&call);
    let intent = s.intent.as_mut().unwrap();
    intent.budget_cents = case.budget;
    intent.spent_cents = case.spent.saturating_add(more);
    intent.state = IntentFacts::parse_state(case.state);
    intent.state_name = case.state.to_owned();
    intent.deadline_ms = s.now + case.deadline_in_ms;
    let binding = call.binding.clone().unwrap();
    s.cap_usage = doc
        .spend_controls
        .iter()
        .flat_map(|c| c.caps.iter())
        .enumerate()
        .map(|(i, cap)| {
            cap_buckets(&call, &binding, cap)
                .iter()
                .map(|_| Some(case.cap_spent[i % 2].saturating_add(more)))
                .collect()
        })
        .collect();
    let limits = tool_limits(&doc, &binding.tools);
    s.rate_windows = limits
        .per_hour
        .iter()
        .map(|(_, limit)| {
            CallWindow::of(
                (0..case.calls_in_hour).map(|k| s.now - 1_000 * k as i64),
                s.now,
                *limit as usize,
            )
        })
        .collect();
    let mut ctx = s.context(Some(&doc));
    let claims = |intent: &str, expires_ms: i64| {
        TokenFacts::Valid(Claims {
            tenant: "tnt_a".to_owned(),
            intent: intent.to_owned(),
            operations: vec![BOOK.to_owned()],
            expires_ms,
        })
    };
    ctx.token = Some(match case.token {
        0 => TokenFacts::Invalid,
        1 => claims("int_1", s.now),
        2 => claims("int_other", s.now + 1),
        _ => claims("int_1", s.now + 60_000),
    });
    let decision = evaluate(&ctx, Recorder::on());
    (decision, doc)
}

fn is_budget_or_cap(code: DenyCode) -> bool {
    matches!(
        code,
        DenyCode::IntentBudgetExceeded
            | DenyCode::RollingCapExceeded(..)
            | DenyCode::BudgetGateHalt
            | DenyCode::RateLimited
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn an_allow_is_within_every_limit_and_the_trace_ends_at_the_verdict(case in case()) {
        let (decision, doc) = run(&case, case.amount, 0);
        let last = decision.checks.last().map(|c| c.result.as_str());
        match &decision.verdict {
            Verdict::Allow { .. } => {
                prop_assert!(decision.checks.iter().all(|c| c.result == "pass"));
                prop_assert_eq!(case.token, 3);
                prop_assert!(matches!(case.state, "funded" | "evidence_submitted"));
                prop_assert!(case.deadline_in_ms > 0);
                prop_assert!(case.amount <= 20_000);
                prop_assert!(case.spent + case.amount <= case.budget);
                // The caps in the policy's order, each counted from its own spend.
                let caps = [case.controls.tenant_day_cap, case.controls.agent_month_cap];
                for (i, limit) in caps.into_iter().flatten().enumerate() {
                    prop_assert!(case.cap_spent[i % 2] + case.amount <= limit);
                }
                if let Some(n) = case.controls.per_hour {
                    prop_assert!(case.calls_in_hour < n as usize);
                }
                if let Some(t) = case.controls.threshold {
                    prop_assert!(case.amount <= t);
                }
                if case.controls.gates && case.budget > 0 {
                    prop_assert!(((case.spent + case.amount) as f64) < 0.9 * case.budget as f64);
                }
                prop_assert_eq!(decision.budget_left, Some(case.budget - case.spent));
            }
            Verdict::Hold { reasons } => {
                prop_assert_eq!(last, Some("hold"));
                prop_assert_eq!(reasons[0].as_str(), "approval_threshold_exceeded");
                prop_assert!(case.controls.threshold.is_some_and(|t| case.amount > t));
            }
            Verdict::Deny { code, .. } => {
                prop_assert_eq!(last, Some("fail"), "{:?}", code);
                prop_assert_eq!(decision.effects(), vec![]);
            }
        }
        // The same context, the same decision.
        let (again, _) = run(&case, case.amount, 0);
        prop_assert_eq!(again.verdict, decision.verdict);
        drop(doc);
    }

    #[test]
    fn less_is_never_refused_where_more_was_allowed(case in case(), cut in 0_u64..30_000) {
        let (decision, _) = run(&case, case.amount, 0);
        if matches!(decision.verdict, Verdict::Allow { .. }) {
            let smaller = case.amount.saturating_sub(cut);
            let (smaller, _) = run(&case, smaller, 0);
            prop_assert!(matches!(smaller.verdict, Verdict::Allow { .. }), "{:?}", smaller.verdict);
        }
    }

    #[test]
    fn more_spend_never_turns_a_deny_into_an_allow(case in case(), more in 0_u64..50_000) {
        let (decision, _) = run(&case, case.amount, 0);
        if let Verdict::Deny { code, .. } = decision.verdict {
            let (after, _) = run(&case, case.amount, more);
            prop_assert!(matches!(after.verdict, Verdict::Deny { .. }), "{:?}", after.verdict);
            // A budget or cap deny stays one (the earlier checks do not count spend).
            if let Verdict::Deny { code: after, .. } = after.verdict
                && is_budget_or_cap(code)
            {
                prop_assert!(is_budget_or_cap(after), "{:?}", after);
            }
        }
    }
}
