//! The canonical scenario (demos/README.md) through `PaybondAgentRun` on the embedded engine.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use std::sync::Arc;

use common::{BOOK, Fixture, SEARCH};
use paybond_middleware_core::trace::TraceOutcome;
use paybond_middleware_core::wire::Finalization;
use paybond_middleware_core::{BoxError, PaybondAgentRun, RunError, ToolCall, ToolOutput};
use serde_json::json;
use tower::{ServiceExt, service_fn};

/// The travel tools: search lists hotels; booking charges `amount_cents` unless the vendor fails.
async fn travel_tool(call: ToolCall) -> Result<ToolOutput, BoxError> {
    match call.tool_name.as_str() {
        SEARCH => Ok(ToolOutput::new(
            json!({"hotels": ["Harbor Inn", "Bay Suites"]}),
        )),
        _ => {
            if call.args["vendor_fails"] == true {
                return Err("the vendor's booking API returned 503".into());
            }
            let cost = call.args["amount_cents"].as_u64().unwrap();
            Ok(ToolOutput::new(json!({"booking": "confirmed"})).with_cost_cents(cost))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canonical_scenario_reaches_its_end_state() {
    let fx = Fixture::new();
    let (intent, token) = fx.intent(60_000);
    let policy = fx.engine.effective_policy(&fx.agent).await.unwrap();
    let run = PaybondAgentRun::builder(Arc::new(fx.gateway()), intent, token)
        .tools(policy.policy.tools.clone())
        .agent_subject("travel-agent")
        .bind()
        .await
        .unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(run.clone())
        .service(service_fn(travel_tool));
    let call = |c: ToolCall| svc.clone().oneshot(c);

    // 1. Search: passthrough.
    call(ToolCall::new(SEARCH, json!({"city": "Lisbon"}), "c1"))
        .await
        .unwrap();
    // 2. Book 12000: allowed and consumed.
    call(ToolCall::new(BOOK, json!({"amount_cents": 12_000}), "c2"))
        .await
        .unwrap();
    // 3. Book 18700: held; an operator approves; the retry with the token is allowed.
    let held = call(ToolCall::new(BOOK, json!({"amount_cents": 18_700}), "c3")).await;
    let Err(RunError::ApprovalRequired(hold)) = held else {
        panic!("expected a hold, got {held:?}");
    };
    assert_eq!(hold.reason_codes, ["approval_threshold_exceeded"]);
    let id = hold.approval_request_id.unwrap();
    fx.engine.approve(&fx.operator, id).await.unwrap();
    let approval = fx.engine.approval(&fx.agent, id).await.unwrap();
    run.store_approval_token("c3", approval.approval_token.unwrap());
    call(ToolCall::new(BOOK, json!({"amount_cents": 18_700}), "c3"))
        .await
        .unwrap();
    // 4. Book 25000: denied by the per-call cap; the tool does not run.
    let denied = call(ToolCall::new(BOOK, json!({"amount_cents": 25_000}), "c4")).await;
    let Err(RunError::SpendDenied(d)) = denied else {
        panic!("expected a deny, got {denied:?}");
    };
    assert_eq!(d.result.reason_codes, ["tool_cap_exceeded"]);
    // 5. Book 9000, the vendor fails: allowed, then released.
    let failed = call(ToolCall::new(
        BOOK,
        json!({"amount_cents": 9_000, "vendor_fails": true}),
        "c5",
    ))
    .await;
    assert!(matches!(failed, Err(RunError::Tool(_))), "{failed:?}");

    let totals = run.trace().totals();
    assert_eq!(
        (totals.consumed_cents, totals.released_cents),
        (30_700, 9_000)
    );
    assert_eq!(
        (
            totals.holds,
            totals.denies,
            totals.passthroughs,
            totals.allows
        ),
        (1, 1, 1, 3)
    );
    let outcomes: Vec<_> = run
        .trace()
        .entries()
        .iter()
        .map(|e| (e.tool_call_id.clone(), e.outcome, e.finalization))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("c1".to_owned(), TraceOutcome::Passthrough, None),
            (
                "c2".to_owned(),
                TraceOutcome::Allow,
                Some(Finalization::Consumed)
            ),
            ("c3".to_owned(), TraceOutcome::Hold, None),
            (
                "c3".to_owned(),
                TraceOutcome::Allow,
                Some(Finalization::Consumed)
            ),
            ("c4".to_owned(), TraceOutcome::Deny, None),
            (
                "c5".to_owned(),
                TraceOutcome::Allow,
                Some(Finalization::Released)
            ),
        ]
    );

    assert_eq!(fx.engine.open_reservations().await.unwrap(), 0);
    let intent_view = fx.engine.get_intent(&fx.agent, intent).await.unwrap();
    assert_eq!(intent_view.consumed_cents, 30_700);
    assert_eq!(intent_view.reserved_cents, 0);
    let check = fx.engine.verify_ledger().await.unwrap();
    assert!(check.valid, "{check:?}");
    let events = fx
        .engine
        .ledger_events(&fx.operator, 0, 1000)
        .await
        .unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    for expected in [
        "decision.allow",
        "decision.hold",
        "decision.deny",
        "approval.requested",
        "approval.approved",
        "approval.token_used",
        "reservation.consumed",
        "reservation.released",
        "evidence.submitted",
    ] {
        assert!(
            kinds.contains(&expected),
            "{expected} missing from {kinds:?}"
        );
    }
}
