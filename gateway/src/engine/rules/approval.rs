//! Check 11, the approval threshold: above it a call is held unless it carries a
//! valid approval token for exactly this request from the key that was held; and
//! what a hold becomes (the same request again, a recent denial answered again,
//! a new request, or none when the agent or the intent is over its limits).

use paybond_middleware_core::wire::ApprovalState;
use serde_json::json;
use uuid::Uuid;

use super::tool::ToolLimits;
use super::{CallContext, DenyCode, Recorder, Verdict, deny};

/// The call is under the approval threshold, approved, or held.
pub(super) fn threshold(
    ctx: &CallContext<'_>,
    limits: &ToolLimits,
    mut reasons: Vec<String>,
    rec: &mut Recorder,
) -> Verdict {
    let amount = ctx.call.amount;
    let Some(threshold) = limits.threshold else {
        return Verdict::Allow {
            reasons,
            approval: None,
        };
    };
    let inputs = || {
        json!({"amount_cents": amount, "approval_threshold_cents": threshold,
               "approval_token": ctx.ask.approval_token.is_some()})
    };
    if amount <= threshold {
        rec.pass("approval_threshold", inputs);
        return Verdict::Allow {
            reasons,
            approval: None,
        };
    }
    if ctx.ask.approved {
        rec.pass("approval_threshold", inputs);
        reasons.push("approval_token_accepted".to_owned());
        return Verdict::Allow {
            reasons,
            approval: None,
        };
    }
    if ctx.ask.approval_token.is_none() {
        rec.hold("approval_threshold", inputs);
        reasons.insert(0, "approval_threshold_exceeded".to_owned());
        return Verdict::Hold { reasons };
    }
    let verdict = token(ctx, reasons);
    match &verdict {
        Verdict::Allow { .. } => rec.pass("approval_threshold", inputs),
        _ => rec.fail("approval_threshold", inputs),
    }
    verdict
}

/// The approval token the call carries, against the request it was issued for.
fn token(ctx: &CallContext<'_>, mut reasons: Vec<String>) -> Verdict {
    let call = ctx.call;
    let Some(row) = &ctx.approval else {
        return deny(
            DenyCode::ApprovalTokenInvalid,
            "the approval token is not valid",
        );
    };
    // Checked first, and the token left as it is: another key of the tenant that
    // learnt the token neither uses it nor spends it (nor learns its state).
    // Requests opened before approvals recorded their key name none.
    if row.key_id.as_deref().is_some_and(|k| k != call.key_id) {
        return deny(
            DenyCode::ApprovalTokenPrincipalMismatch,
            "the approval token was issued for a request another API key made; only that \
             key may use it",
        );
    }
    if row.token_used_ms.is_some() {
        return deny(
            DenyCode::ApprovalTokenReused,
            "the approval token has already been used",
        );
    }
    if row.token_expires_ms.is_none_or(|e| ctx.now >= e) {
        return deny(
            DenyCode::ApprovalTokenExpired,
            "the approval token has expired",
        );
    }
    let mismatch = if row.intent != call.intent {
        Some((DenyCode::ApprovalIntentMismatch, "intent"))
    } else if row.operation != call.operation {
        Some((DenyCode::ApprovalOperationMismatch, "operation"))
    } else if row.amount != call.amount {
        Some((DenyCode::ApprovalAmountMismatch, "amount"))
    } else if row.vendor.as_deref() != call.vendor {
        Some((DenyCode::ApprovalVendorMismatch, "vendor"))
    } else if row.tool != call.tool {
        Some((DenyCode::ApprovalToolMismatch, "tool"))
    } else {
        None
    };
    if let Some((code, field)) = mismatch {
        return deny(
            code,
            format!("the approval was given for another {field}; request a new approval"),
        );
    }
    reasons.push("approval_token_accepted".to_owned());
    Verdict::Allow {
        reasons,
        approval: Some(row.id.clone()),
    }
}

/// What the store holds about a held call's approval requests.
#[derive(Debug, Clone)]
pub(crate) struct HoldContext {
    pub(crate) now: i64,
    /// The key's latest request identical to this one that still stands: pending,
    /// approved and not yet used, or denied within the denial window.
    pub(crate) existing: Option<(Uuid, ApprovalState)>,
    /// Requests the agent key opened in the last minute, and the oldest's time.
    pub(crate) opened_last_minute: (u64, Option<i64>),
    pub(crate) per_minute: u32,
    /// Requests of the intent pending now, and the first one's expiry.
    pub(crate) pending_on_intent: (u64, Option<i64>),
    pub(crate) per_intent: u32,
}

/// What a hold becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HoldOutcome {
    /// The same request again: its approval request stands.
    Existing(Uuid),
    /// The identical request, denied a moment ago: that deny again.
    Denied(Uuid),
    /// None: the agent or the intent is over its approval limits.
    Limited { message: String, retry_after: u64 },
    /// A new approval request for the operators.
    Open,
}

/// Whole seconds, rounded up, at least 1.
fn seconds_ceil(ms: i64) -> u64 {
    u64::try_from(ms.max(1)).unwrap_or(1).div_ceil(1000).max(1)
}

/// What a hold becomes: an agent cannot bury the operators' queue, nor reopen a
/// request they just denied.
pub(crate) fn hold(h: &HoldContext) -> HoldOutcome {
    match h.existing {
        Some((id, ApprovalState::Denied)) => return HoldOutcome::Denied(id),
        Some((id, _)) => return HoldOutcome::Existing(id),
        None => {}
    }
    let (recent, oldest) = h.opened_last_minute;
    if recent >= u64::from(h.per_minute) {
        let wait_ms = oldest.map_or(60_000, |o| o + 60_000 - h.now);
        return HoldOutcome::Limited {
            message: format!(
                "this agent key opened {recent} approval requests in the last minute; at most \
                 {} are accepted",
                h.per_minute
            ),
            retry_after: seconds_ceil(wait_ms),
        };
    }
    let (pending, first_expiry) = h.pending_on_intent;
    if pending >= u64::from(h.per_intent) {
        return HoldOutcome::Limited {
            message: format!(
                "the intent has {pending} approval requests pending; at most {} may wait at once",
                h.per_intent
            ),
            retry_after: seconds_ceil(first_expiry.map_or(60_000, |e| e - h.now)),
        };
    }
    HoldOutcome::Open
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rules::props::{BOOK, Sample, sample_call};
    use crate::engine::rules::{ApprovalFacts, Ask};

    fn approval_for(call: &crate::engine::rules::Call<'_>) -> ApprovalFacts {
        ApprovalFacts {
            id: "a1".to_owned(),
            intent: call.intent.clone(),
            operation: call.operation.to_owned(),
            tool: call.tool.clone(),
            vendor: call.vendor.map(str::to_owned),
            amount: call.amount,
            token_expires_ms: Some(i64::MAX),
            token_used_ms: None,
            key_id: Some(call.key_id.to_owned()),
        }
    }

    fn limits() -> ToolLimits {
        ToolLimits {
            threshold: Some(1_000),
            ..ToolLimits::default()
        }
    }

    fn code(v: &Verdict) -> Option<DenyCode> {
        match v {
            Verdict::Deny { code, .. } => Some(*code),
            _ => None,
        }
    }

    #[test]
    fn above_the_threshold_a_call_is_held_unless_its_token_is_for_exactly_it() {
        let call = sample_call(BOOK, 1_500);
        let s = Sample::new(&call);
        let mut ctx = s.context(None);
        let mut rec = Recorder::on();
        assert!(matches!(
            threshold(&ctx, &limits(), vec![], &mut rec),
            Verdict::Hold { .. }
        ));
        let ask = Ask {
            approval_token: Some("t"),
            ..Ask::default()
        };
        ctx.ask = &ask;
        assert_eq!(
            code(&threshold(&ctx, &limits(), vec![], &mut rec)),
            Some(DenyCode::ApprovalTokenInvalid)
        );
        ctx.approval = Some(approval_for(&call));
        assert!(matches!(
            threshold(&ctx, &limits(), vec![], &mut rec),
            Verdict::Allow { approval: Some(ref id), .. } if id == "a1"
        ));
        type Change = fn(&mut ApprovalFacts);
        let cases: [(Change, DenyCode); 7] = [
            (
                |a| a.key_id = Some("key_other".to_owned()),
                DenyCode::ApprovalTokenPrincipalMismatch,
            ),
            (|a| a.token_used_ms = Some(1), DenyCode::ApprovalTokenReused),
            (
                |a| a.token_expires_ms = Some(0),
                DenyCode::ApprovalTokenExpired,
            ),
            (
                |a| a.intent = "x".to_owned(),
                DenyCode::ApprovalIntentMismatch,
            ),
            (|a| a.amount += 1, DenyCode::ApprovalAmountMismatch),
            (
                |a| a.vendor = Some("v".to_owned()),
                DenyCode::ApprovalVendorMismatch,
            ),
            (|a| a.tool = "x".to_owned(), DenyCode::ApprovalToolMismatch),
        ];
        for (change, want) in cases {
            let mut a = approval_for(&call);
            change(&mut a);
            ctx.approval = Some(a);
            assert_eq!(
                code(&threshold(&ctx, &limits(), vec![], &mut rec)),
                Some(want)
            );
        }
        // At or under the threshold the token is not needed.
        let under = sample_call(BOOK, 1_000);
        let s = Sample::new(&under);
        assert!(matches!(
            threshold(&s.context(None), &limits(), vec![], &mut rec),
            Verdict::Allow { approval: None, .. }
        ));
    }

    #[test]
    fn a_hold_reuses_answers_a_denial_again_or_opens_within_limits() {
        let id = Uuid::nil();
        let base = HoldContext {
            now: 100_000,
            existing: None,
            opened_last_minute: (0, None),
            per_minute: 2,
            pending_on_intent: (0, None),
            per_intent: 2,
        };
        assert_eq!(hold(&base), HoldOutcome::Open);
        for (state, want) in [
            (ApprovalState::Pending, HoldOutcome::Existing(id)),
            (ApprovalState::Approved, HoldOutcome::Existing(id)),
            (ApprovalState::Denied, HoldOutcome::Denied(id)),
        ] {
            let h = HoldContext {
                existing: Some((id, state)),
                ..base.clone()
            };
            assert_eq!(hold(&h), want);
        }
        let h = HoldContext {
            opened_last_minute: (2, Some(70_000)),
            ..base.clone()
        };
        assert!(matches!(
            hold(&h),
            HoldOutcome::Limited {
                retry_after: 30,
                ..
            }
        ));
        let h = HoldContext {
            pending_on_intent: (2, Some(100_500)),
            ..base
        };
        assert!(matches!(
            hold(&h),
            HoldOutcome::Limited { retry_after: 1, .. }
        ));
    }
}
