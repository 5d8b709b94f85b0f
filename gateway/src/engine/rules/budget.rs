//! Check 6, the intent budget with open reservations counted, and check 10, the
//! graduated gates on it (`warning` and `restrict` allow with a reason, `halt`
//! denies).

use paybond_policies::PolicyDocument;
use serde_json::json;

use super::intent::Budget;
use super::{CallContext, DenyCode, Recorder, Verdict, deny, money};

/// The call fits in what is left of the intent budget.
pub(super) fn intent_budget(
    ctx: &CallContext<'_>,
    budget: &Budget,
    rec: &mut Recorder,
) -> Result<(), Verdict> {
    let amount = ctx.call.amount;
    let inputs = || {
        json!({"amount_cents": amount, "intent_budget_cents": budget.intent_cents,
               "policy_budget_cents": budget.policy_cents, "spent_cents": budget.spent,
               "remaining_cents": budget.left()})
    };
    if budget.spent.saturating_add(amount) > budget.cents {
        rec.fail("intent_budget", inputs);
        return Err(deny(
            DenyCode::IntentBudgetExceeded,
            format!(
                "{} would exceed the intent budget: {} of {} left",
                money(amount, &budget.currency),
                money(budget.left(), &budget.currency),
                money(budget.cents, &budget.currency)
            ),
        ));
    }
    rec.pass("intent_budget", inputs);
    Ok(())
}

/// The graduated gates: the reasons an allow carries, or the halt.
pub(super) fn gates(
    ctx: &CallContext<'_>,
    doc: &PolicyDocument,
    budget: &Budget,
    rec: &mut Recorder,
) -> Result<Vec<String>, Verdict> {
    let mut reasons = Vec::new();
    let Some(g) = doc.spend_controls.as_ref().and_then(|c| c.gates) else {
        return Ok(reasons);
    };
    if budget.cents == 0 {
        return Ok(reasons);
    }
    #[allow(clippy::cast_precision_loss)] // amounts are far below 2^52 cents
    let used = budget.spent.saturating_add(ctx.call.amount) as f64 / budget.cents as f64;
    let inputs = || {
        json!({"used_after_call": used, "warning": g.warning, "restrict": g.restrict,
               "halt": g.halt})
    };
    if used >= g.halt {
        rec.fail("budget_gates", inputs);
        return Err(deny(
            DenyCode::BudgetGateHalt,
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
    rec.pass("budget_gates", inputs);
    Ok(reasons)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rules::props::{Sample, policy, sample_call};

    fn budget(cents: u64, spent: u64) -> Budget {
        Budget {
            intent_cents: cents,
            policy_cents: None,
            cents,
            spent,
            currency: "usd".to_owned(),
        }
    }

    #[test]
    fn the_budget_counts_what_is_spent_and_reserved() {
        let call = sample_call("travel.book_hotel", 4_000);
        let s = Sample::new(&call);
        let ctx = s.context(None);
        let mut rec = Recorder::on();
        assert!(intent_budget(&ctx, &budget(10_000, 6_000), &mut rec).is_ok());
        assert!(matches!(
            intent_budget(&ctx, &budget(10_000, 6_001), &mut rec),
            Err(Verdict::Deny {
                code: DenyCode::IntentBudgetExceeded,
                ..
            })
        ));
    }

    #[test]
    fn gates_warn_restrict_and_halt_by_the_share_used_after_the_call() {
        let doc = policy("  gates: { warning: 0.5, restrict: 0.75, halt: 0.9 }\n");
        let call = sample_call("travel.book_hotel", 1_000);
        let s = Sample::new(&call);
        let ctx = s.context(None);
        let mut rec = Recorder::on();
        let reasons = |spent| gates(&ctx, &doc, &budget(10_000, spent), &mut Recorder::default());
        assert_eq!(reasons(0), Ok(vec![]));
        assert_eq!(reasons(4_000), Ok(vec!["budget_gate_warning".to_owned()]));
        assert_eq!(reasons(6_500), Ok(vec!["budget_gate_restrict".to_owned()]));
        assert!(matches!(
            reasons(8_000),
            Err(Verdict::Deny {
                code: DenyCode::BudgetGateHalt,
                ..
            })
        ));
        assert!(
            gates(&ctx, &doc, &budget(0, 0), &mut rec)
                .unwrap()
                .is_empty()
        );
    }
}
