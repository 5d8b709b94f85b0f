//! Check 3: the intent (exists, funded, before its deadline, in the call's
//! currency), the budget it leaves, and for preflight (no token) the operations
//! it allows.

use paybond_middleware_core::wire::LifecycleStatus;
use serde_json::json;

use super::{CallContext, DenyCode, Recorder, Verdict, deny};

/// The intent's budget as the call sees it.
#[derive(Debug, Clone)]
pub(super) struct Budget {
    /// The intent's own budget.
    pub(super) intent_cents: u64,
    /// The policy's `intent.budget.max_spend_usd`, in cents.
    pub(super) policy_cents: Option<u64>,
    /// The lower of the two: what the call is checked against.
    pub(super) cents: u64,
    /// Consumed and reserved, without lapsed reservations.
    pub(super) spent: u64,
    pub(super) currency: String,
}

impl Budget {
    pub(super) fn left(&self) -> u64 {
        self.cents.saturating_sub(self.spent)
    }
}

/// The intent admits calls: `Ok` with its budget, else the deny.
pub(super) fn check(ctx: &CallContext<'_>, rec: &mut Recorder) -> Result<Budget, Verdict> {
    let Some(intent) = &ctx.intent else {
        rec.fail("intent", || json!({"found": false}));
        return Err(deny(
            DenyCode::IntentNotFunded,
            "the intent does not exist or is not funded",
        ));
    };
    let inputs = || {
        json!({"state": intent.state_name, "deadline_ms": intent.deadline_ms,
               "currency": intent.currency})
    };
    let closed = matches!(
        intent.state,
        Some(LifecycleStatus::Expired | LifecycleStatus::Refunded | LifecycleStatus::Released)
    );
    if ctx.now >= intent.deadline_ms || closed {
        rec.fail("intent", inputs);
        return Err(deny(
            DenyCode::IntentExpired,
            "the intent is past its deadline",
        ));
    }
    if !matches!(
        intent.state,
        Some(LifecycleStatus::Funded | LifecycleStatus::EvidenceSubmitted)
    ) {
        rec.fail("intent", inputs);
        return Err(deny(
            DenyCode::IntentNotFunded,
            format!("the intent is {}, not funded", intent.state_name),
        ));
    }
    if let Some(asked) = ctx.ask.currency
        && !asked.eq_ignore_ascii_case(&intent.currency)
    {
        rec.fail(
            "intent",
            || json!({"state": intent.state_name, "currency": intent.currency, "requested_currency": asked}),
        );
        return Err(deny(
            DenyCode::CurrencyMismatch,
            format!(
                "currency `{asked}` is not the intent's currency `{}`",
                intent.currency
            ),
        ));
    }
    rec.pass("intent", inputs);
    // The intent's budget, within the policy's intent budget.
    let policy_cents = ctx
        .policy
        .and_then(|p| p.intent.as_ref())
        .and_then(|i| i.budget.as_ref())
        .and_then(|b| b.max_spend_usd)
        // A finite, non-negative amount (the policy checks refuse others).
        .map(|usd| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let cents = (usd * 100.0).round() as u64;
            cents
        });
    Ok(Budget {
        intent_cents: intent.budget_cents,
        policy_cents,
        cents: policy_cents.map_or(intent.budget_cents, |p| p.min(intent.budget_cents)),
        spent: intent.spent_cents,
        currency: intent.currency.clone(),
    })
}

/// Preflight (no token to carry them): the operation is one the intent allows.
pub(super) fn operations(ctx: &CallContext<'_>, rec: &mut Recorder) -> Result<(), Verdict> {
    if !ctx.ask.intent_ops || ctx.ask.budget_only {
        return Ok(());
    }
    let allowed = ctx
        .intent
        .as_ref()
        .map(|i| i.operations.as_slice())
        .unwrap_or_default();
    let operation = ctx.call.operation;
    let inputs = || json!({"operation": operation, "allowed": allowed});
    if !allowed.iter().any(|o| o == operation) {
        rec.fail("operation_allowed", inputs);
        return Err(deny(
            DenyCode::OperationNotAllowed,
            format!("the intent does not allow `{operation}`"),
        ));
    }
    rec.pass("operation_allowed", inputs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rules::props::{Sample, sample_call};

    fn code<T>(r: Result<T, Verdict>) -> Option<DenyCode> {
        match r {
            Err(Verdict::Deny { code, .. }) => Some(code),
            _ => None,
        }
    }

    #[test]
    fn an_intent_admits_calls_only_funded_before_its_deadline_in_its_currency() {
        let call = sample_call("travel.book_hotel", 100);
        let mut s = Sample::new(&call);
        let mut rec = Recorder::on();
        assert_eq!(code(check(&s.context(None), &mut rec)), None);
        s.intent.as_mut().unwrap().deadline_ms = s.now;
        assert_eq!(
            code(check(&s.context(None), &mut rec)),
            Some(DenyCode::IntentExpired)
        );
        for (state, want) in [
            ("refunded", Some(DenyCode::IntentExpired)),
            ("created", Some(DenyCode::IntentNotFunded)),
            ("no_such_state", Some(DenyCode::IntentNotFunded)),
            ("evidence_submitted", None),
        ] {
            let mut s = Sample::new(&call);
            let i = s.intent.as_mut().unwrap();
            i.state = crate::engine::rules::IntentFacts::parse_state(state);
            i.state_name = state.to_owned();
            assert_eq!(code(check(&s.context(None), &mut rec)), want, "{state}");
        }
        let mut s = Sample::new(&call);
        s.intent = None;
        assert_eq!(
            code(check(&s.context(None), &mut rec)),
            Some(DenyCode::IntentNotFunded)
        );
        let s = Sample::new(&call);
        let mut ctx = s.context(None);
        let ask = crate::engine::rules::Ask {
            currency: Some("EUR"),
            ..Default::default()
        };
        ctx.ask = &ask;
        assert_eq!(
            code(check(&ctx, &mut rec)),
            Some(DenyCode::CurrencyMismatch)
        );
        let ask = crate::engine::rules::Ask {
            currency: Some("USD"),
            ..Default::default()
        };
        ctx.ask = &ask;
        let budget = check(&ctx, &mut rec).unwrap();
        assert_eq!(budget.left(), budget.cents - budget.spent);
    }
}
