//! Checks 1 and 2: the capability token (valid, unexpired, minted for this
//! tenant and intent) and the operations it allows.

use serde_json::json;

use super::{Call, DenyCode, Recorder, TokenFacts, Verdict, deny};

/// `Err` with the deny when the token does not admit the call.
pub(super) fn check(
    token: &TokenFacts,
    call: &Call<'_>,
    now: i64,
    rec: &mut Recorder,
) -> Result<(), Verdict> {
    let TokenFacts::Valid(claims) = token else {
        rec.fail("capability_token", || json!({"valid": false}));
        return Err(deny(
            DenyCode::CapabilityInvalid,
            "the capability token is not valid",
        ));
    };
    if now >= claims.expires_ms {
        rec.fail(
            "capability_token",
            || json!({"expires_ms": claims.expires_ms, "now_ms": now}),
        );
        return Err(deny(
            DenyCode::CapabilityExpired,
            "the capability token has expired",
        ));
    }
    if claims.tenant != call.tenant || claims.intent != call.intent {
        rec.fail(
            "capability_token",
            || json!({"minted_for_intent": claims.intent}),
        );
        return Err(deny(
            DenyCode::CapabilityIntentMismatch,
            "the capability token was minted for another intent",
        ));
    }
    rec.pass(
        "capability_token",
        || json!({"expires_ms": claims.expires_ms}),
    );
    let inputs = || json!({"operation": call.operation, "allowed": claims.operations});
    if !claims.operations.iter().any(|o| o == call.operation) {
        rec.fail("operation_allowed", inputs);
        return Err(deny(
            DenyCode::OperationNotAllowed,
            format!("the intent does not allow `{}`", call.operation),
        ));
    }
    rec.pass("operation_allowed", inputs);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on setup failures

    use super::*;
    use crate::engine::rules::props::sample_call;
    use crate::tokens::Claims;

    fn claims(intent: &str, expires_ms: i64, ops: &[&str]) -> TokenFacts {
        TokenFacts::Valid(Claims {
            tenant: "tnt_a".to_owned(),
            intent: intent.to_owned(),
            operations: ops.iter().map(|o| (*o).to_owned()).collect(),
            expires_ms,
        })
    }

    fn code(r: Result<(), Verdict>) -> Option<DenyCode> {
        match r {
            Err(Verdict::Deny { code, .. }) => Some(code),
            _ => None,
        }
    }

    #[test]
    fn a_token_admits_only_its_tenant_intent_operations_and_time() {
        let call = sample_call("travel.book_hotel", 100);
        let mut rec = Recorder::on();
        let ok = claims(&call.intent, 2_000, &["travel.book_hotel"]);
        assert_eq!(code(check(&ok, &call, 1_999, &mut rec)), None);
        assert_eq!(rec.checks.len(), 2);
        assert_eq!(
            code(check(&ok, &call, 2_000, &mut rec)),
            Some(DenyCode::CapabilityExpired)
        );
        assert_eq!(
            code(check(&TokenFacts::Invalid, &call, 0, &mut rec)),
            Some(DenyCode::CapabilityInvalid)
        );
        let other = claims("another-intent", 2_000, &["travel.book_hotel"]);
        assert_eq!(
            code(check(&other, &call, 0, &mut rec)),
            Some(DenyCode::CapabilityIntentMismatch)
        );
        let narrow = claims(&call.intent, 2_000, &["travel.search_hotels"]);
        assert_eq!(
            code(check(&narrow, &call, 0, &mut rec)),
            Some(DenyCode::OperationNotAllowed)
        );
    }
}
