//! Every outcome path of the layer, with call counts on the tool and the gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches panic on setup failures

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{Behaviour, CountingTool, book, call, eventually, run};
use futures_util::future::BoxFuture;
use paybond_middleware_core::testing::{
    ApprovalScript, GatewayCall, ScriptedGateway, VerifyScript,
};
use paybond_middleware_core::trace::TraceOutcome;
use paybond_middleware_core::wire::{ApprovalState, Finalization};
use paybond_middleware_core::{
    ApprovalToken, ApprovalWait, GatewayError, GatewayErrorKind, RunError, RunErrorKind, ToolCall,
    ToolOutput,
};
use paybond_policies::ToolPolicy;
use serde_json::json;
use tower::{Layer, Service, ServiceExt};

#[tokio::test]
async fn read_only_tools_pass_through_without_a_decision() {
    let gateway = Arc::new(ScriptedGateway::new());
    let run = run(&gateway).await;
    let tool = CountingTool::new(Behaviour::Succeed);
    let mut svc = run.layer(tool.service());

    let out = call(
        &mut svc,
        ToolCall::new(common::SEARCH, json!({"city": "Lisbon"}), "call_1"),
    )
    .await
    .unwrap();
    assert_eq!(out.body["tool"], common::SEARCH);
    assert_eq!(tool.count(), 1);
    assert_eq!(
        gateway.calls(),
        [GatewayCall::Principal],
        "only the bind's principal lookup"
    );
    let trace = run.trace().entries();
    assert_eq!(trace.len(), 1);
    assert_eq!(trace[0].outcome, TraceOutcome::Passthrough);
    assert_eq!(trace[0].amount_cents, None);
}

#[tokio::test]
async fn allow_runs_the_tool_then_submits_evidence_and_consumes_the_actual_cost() {
    let gateway = Arc::new(ScriptedGateway::new());
    let run = run(&gateway).await;
    let tool = CountingTool::new(Behaviour::Succeed);
    let mut svc = run.layer(tool.service());

    let out = call(
        &mut svc,
        book("call_2", 18_700).with_vendor_id("vendor_acme"),
    )
    .await
    .unwrap();
    assert_eq!(out.cost_cents, Some(18_700));
    assert_eq!(tool.count(), 1);

    let verifies = gateway.verifies();
    assert_eq!(verifies.len(), 1);
    let v = &verifies[0];
    assert_eq!(
        (
            v.intent_id,
            v.token.expose_secret(),
            v.operation.as_str(),
            v.requested_spend_cents
        ),
        (run.intent_id(), common::TOKEN, common::BOOK, 20_000),
        "reserve the policy's fixed maximum"
    );
    assert_eq!(v.tool_call_id.as_deref(), Some("call_2"));
    assert_eq!(v.vendor_id.as_deref(), Some("vendor_acme"));
    assert_eq!(v.agent_subject.as_deref(), Some("agent-7"));
    assert_eq!(v.currency.as_deref(), Some("usd"));
    assert!(v.idempotency_key.is_some());
    assert!(v.approval_token.is_none());

    let evidence = gateway.evidence();
    assert_eq!(evidence.len(), 1);
    assert_eq!(
        evidence[0].payload,
        Some(json!({"status": "completed", "cost_cents": 18_700}))
    );
    let completes = gateway.completes();
    assert_eq!(completes.len(), 1);
    assert_eq!(completes[0].1.outcome, Finalization::Consumed);
    assert_eq!(completes[0].1.actual_spend_cents, Some(18_700));

    // Evidence comes before the complete, both after the verify.
    let order: Vec<&str> = gateway
        .calls()
        .iter()
        .map(|c| match c {
            GatewayCall::Principal => "principal",
            GatewayCall::Verify(_) => "verify",
            GatewayCall::Evidence { .. } => "evidence",
            GatewayCall::Complete {
                idempotency_key,
                decision_id,
                ..
            } => {
                assert_eq!(idempotency_key, &format!("{decision_id}:complete"));
                "complete"
            }
            GatewayCall::ApprovalStatus(_) => "approval",
            GatewayCall::Compensation { .. } => "compensation",
        })
        .collect();
    assert_eq!(order, ["principal", "verify", "evidence", "complete"]);

    let entry = &run.trace().entries()[0];
    assert_eq!(entry.outcome, TraceOutcome::Allow);
    assert_eq!(entry.finalization, Some(Finalization::Consumed));
    assert_eq!(
        (entry.amount_cents, entry.actual_cents),
        (Some(20_000), Some(18_700))
    );
    assert_eq!(entry.decision_id, Some(completes[0].0));
}

#[tokio::test]
async fn the_amount_comes_from_the_call_then_spend_from_args_and_the_operation_from_the_policy() {
    let gateway = Arc::new(ScriptedGateway::new());
    let run = common::builder(Arc::clone(&gateway))
        .tool(
            "payments.send",
            ToolPolicy::side_effecting("cost_and_completion")
                .with_spend_from_args("payout.amount_cents")
                .with_operation("payout.send"),
        )
        .bind()
        .await
        .unwrap();
    let tool = CountingTool::new(Behaviour::Succeed);
    let mut svc = run.layer(tool.service());

    let payout = ToolCall::new(
        "payments.send",
        json!({"payout": {"amount_cents": 4321}}),
        "p1",
    );
    call(&mut svc, payout.clone()).await.unwrap();
    call(&mut svc, payout.with_requested_spend_cents(99))
        .await
        .unwrap();
    call(&mut svc, book("b1", 100).with_requested_spend_cents(12_000))
        .await
        .unwrap();

    let seen: Vec<(String, u64)> = gateway
        .verifies()
        .into_iter()
        .map(|v| (v.operation, v.requested_spend_cents))
        .collect();
    assert_eq!(
        seen,
        [
            ("payout.send".to_owned(), 4321),
            ("payout.send".to_owned(), 99),
            (common::BOOK.to_owned(), 12_000)
        ]
    );

    // A missing amount argument is refused before the gateway is asked.
    let before = gateway.verifies().len();
    let err = call(&mut svc, ToolCall::new("payments.send", json!({}), "p2"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RunErrorKind::InvalidCall);
    assert!(err.to_string().contains("payout.amount_cents"), "{err}");
    assert_eq!(gateway.verifies().len(), before);
    assert_eq!(tool.count(), 3);

    // A call claiming another operation than the policy's is refused before verify;
    // repeating the policy's operation is fine. The tool name sent is the tool's.
    let err = call(
        &mut svc,
        ToolCall::new("payments.send", json!({}), "p3")
            .with_requested_spend_cents(10)
            .with_operation("payout.refund"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), RunErrorKind::InvalidCall);
    assert!(err.to_string().contains("payout.refund"), "{err}");
    assert_eq!(gateway.verifies().len(), before);
    call(
        &mut svc,
        ToolCall::new("payments.send", json!({}), "p4")
            .with_requested_spend_cents(10)
            .with_operation("payout.send"),
    )
    .await
    .unwrap();
    let last = gateway.verifies().pop().unwrap();
    assert_eq!(
        (last.operation.as_str(), last.tool_name.as_deref()),
        ("payout.send", Some("payments.send"))
    );
    assert_eq!(tool.count(), 4);
}

#[tokio::test]
async fn deny_never_runs_the_tool_and_carries_the_full_result() {
    let gateway = Arc::new(ScriptedGateway::new());
    gateway.push_verify(VerifyScript::deny("tool_cap_exceeded"));
    let run = run(&gateway).await;
    let tool = CountingTool::new(Behaviour::Succeed);
    let mut svc = run.layer(tool.service());

    let err = call(
        &mut svc,
        book("call_4", 100).with_requested_spend_cents(25_000),
    )
    .await
    .unwrap_err();
    let RunError::SpendDenied(denied) = &err else {
        panic!("expected a denial, got {err:?}")
    };
    assert_eq!(denied.result.reason_codes, ["tool_cap_exceeded"]);
    assert!(!denied.result.allow);
    assert_eq!(denied.amount_cents, 25_000);
    assert!(!err.tool_ran());
    assert!(err.to_string().contains("tool_cap_exceeded"), "{err}");
    assert_eq!(tool.count(), 0);
    assert!(gateway.completes().is_empty() && gateway.evidence().is_empty());
    let entry = &run.trace().entries()[0];
    assert_eq!(
        (entry.outcome, entry.finalization),
        (TraceOutcome::Deny, None)
    );
    assert_eq!(entry.reason_codes, ["tool_cap_exceeded"]);
}

#[tokio::test]
async fn a_hold_never_runs_the_tool_and_the_stored_token_is_used_once_by_the_retry() {
    let gateway = Arc::new(ScriptedGateway::new());
    gateway.push_verify(VerifyScript::hold());
    let run = run(&gateway).await;
    let tool = CountingTool::new(Behaviour::Succeed);
    let mut svc = run.layer(tool.service());

    let err = call(&mut svc, book("call_3", 18_700)).await.unwrap_err();
    let RunError::ApprovalRequired(hold) = &err else {
        panic!("expected a hold, got {err:?}")
    };
    assert_eq!(hold.reason_codes, ["approval_threshold_exceeded"]);
    assert!(hold.approval_request_id.is_some() && hold.decision_id.is_some());
    assert_eq!(hold.tool_call_id, "call_3");
    assert_eq!(tool.count(), 0);

    // The operator approved; the same call is retried and carries the token.
    run.store_approval_token("call_3", ApprovalToken::new("approval-SECRET-1"));
    call(&mut svc, book("call_3", 18_700)).await.unwrap();
    assert_eq!(tool.count(), 1);
    // Once: a further attempt of the same call carries no token.
    call(&mut svc, book("call_3", 18_700)).await.unwrap();

    let tokens: Vec<Option<String>> = gateway
        .verifies()
        .iter()
        .map(|v| {
            v.approval_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned())
        })
        .collect();
    assert_eq!(tokens, [None, Some("approval-SECRET-1".to_owned()), None]);
    let keys: std::collections::HashSet<_> = gateway
        .verifies()
        .into_iter()
        .map(|v| v.idempotency_key)
        .collect();
    assert_eq!(keys.len(), 3, "every attempt has its own idempotency key");

    let trace = run.trace().entries();
    let summary: Vec<(TraceOutcome, u32)> = trace.iter().map(|e| (e.outcome, e.attempt)).collect();
    assert_eq!(
        summary,
        [
            (TraceOutcome::Hold, 1),
            (TraceOutcome::Allow, 2),
            (TraceOutcome::Allow, 3)
        ]
    );
    // A token stored for another call is not used by this one.
    run.store_approval_token("call_other", ApprovalToken::new("approval-SECRET-2"));
    call(&mut svc, book("call_3", 1)).await.unwrap();
    assert!(gateway.verifies().last().unwrap().approval_token.is_none());
}

fn quick_wait() -> ApprovalWait {
    ApprovalWait {
        timeout: Duration::from_secs(5),
        poll_interval: Duration::from_millis(5),
    }
}

#[tokio::test]
async fn wait_mode_polls_until_approved_and_retries_by_itself() {
    let gateway = Arc::new(ScriptedGateway::new());
    gateway
        .push_verify(VerifyScript::hold())
        .push_approval(ApprovalScript::Pending)
        .push_approval(ApprovalScript::Pending)
        .push_approval(ApprovalScript::Approved(ApprovalToken::new(
            "approval-SECRET-3",
        )));
    let run = common::builder(Arc::clone(&gateway))
        .wait_for_approval(quick_wait())
        .bind()
        .await
        .unwrap();
    let tool = CountingTool::new(Behaviour::Succeed);
    let mut svc = run.layer(tool.service());

    let out = call(&mut svc, book("call_3", 18_700)).await.unwrap();
    assert_eq!(out.cost_cents, Some(18_700));
    assert_eq!(tool.count(), 1);
    let polls = gateway
        .calls()
        .iter()
        .filter(|c| matches!(c, GatewayCall::ApprovalStatus(_)))
        .count();
    assert_eq!(polls, 3);
    let verifies = gateway.verifies();
    assert_eq!(verifies.len(), 2);
    assert_eq!(
        verifies[1]
            .approval_token
            .as_ref()
            .map(ApprovalToken::expose_secret),
        Some("approval-SECRET-3")
    );
    let outcomes: Vec<_> = run.trace().entries().iter().map(|e| e.outcome).collect();
    assert_eq!(outcomes, [TraceOutcome::Hold, TraceOutcome::Allow]);
}

#[tokio::test]
async fn wait_mode_gives_up_on_denial_expiry_and_its_deadline() {
    for (script, expected) in [
        (ApprovalScript::Denied, Some(ApprovalState::Denied)),
        (ApprovalScript::Expired, Some(ApprovalState::Expired)),
        (ApprovalScript::Pending, None),
    ] {
        let gateway = Arc::new(ScriptedGateway::new());
        gateway
            .push_verify(VerifyScript::hold())
            .push_approval(script);
        let wait = ApprovalWait {
            timeout: Duration::from_millis(50),
            poll_interval: Duration::from_millis(10),
        };
        let run = common::builder(Arc::clone(&gateway))
            .wait_for_approval(wait)
            .bind()
            .await
            .unwrap();
        let tool = CountingTool::new(Behaviour::Succeed);
        let mut svc = run.layer(tool.service());
        let err = call(&mut svc, book("c", 1)).await.unwrap_err();
        match (expected, &err) {
            (Some(state), RunError::ApprovalRejected { state: got, .. }) => assert_eq!(*got, state),
            (None, RunError::ApprovalRequired(_)) => {}
            _ => panic!("unexpected {err:?}"),
        }
        assert_eq!(tool.count(), 0);
        assert_eq!(gateway.verifies().len(), 1);
    }
}

#[tokio::test]
async fn gateway_failure_fails_closed() {
    let failures = [
        GatewayError::Transport {
            operation: "verify",
            detail: "connection refused".into(),
        },
        GatewayError::Timeout {
            operation: "verify",
            timeout: Duration::from_secs(1),
        },
        GatewayError::Malformed {
            operation: "verify",
            detail: "expected value".into(),
        },
    ];
    for failure in failures {
        let gateway = Arc::new(ScriptedGateway::new());
        gateway.push_verify(VerifyScript::Fail(failure.clone()));
        let run = run(&gateway).await;
        let tool = CountingTool::new(Behaviour::Succeed);
        let mut svc = run.layer(tool.service());
        let err = call(&mut svc, book("c", 1)).await.unwrap_err();
        let RunError::GatewayUnavailable { source, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(source, &failure);
        assert_eq!(tool.count(), 0);
        assert!(gateway.completes().is_empty());
        let entry = &run.trace().entries()[0];
        assert_eq!(entry.outcome, TraceOutcome::Error);
        assert_eq!(entry.reason_codes, ["gateway_unavailable"]);
    }
}

#[tokio::test]
async fn an_allow_without_a_decision_id_fails_closed() {
    let gateway = Arc::new(ScriptedGateway::new());
    let run = run(&gateway).await;
    let mut result = serde_json::from_value::<paybond_middleware_core::wire::VerifyResult>(json!({
        "allow": true, "tenant": "tenant_test", "intent_id": run.intent_id()
    }))
    .unwrap();
    result.decision_id = None;
    gateway.push_verify(VerifyScript::Respond(Box::new(result)));
    let tool = CountingTool::new(Behaviour::Succeed);
    let mut svc = run.layer(tool.service());
    let err = call(&mut svc, book("c", 1)).await.unwrap_err();
    let RunError::GatewayUnavailable { source, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(source.kind(), GatewayErrorKind::Malformed);
    assert_eq!(tool.count(), 0);
}

#[tokio::test]
async fn a_failing_tool_releases_its_reservation() {
    let gateway = Arc::new(ScriptedGateway::new());
    let run = run(&gateway).await;
    let tool = CountingTool::new(Behaviour::Fail);
    let mut svc = run.layer(tool.service());
    let err = call(
        &mut svc,
        book("call_5", 9_000).with_requested_spend_cents(9_000),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RunError::Tool(_)), "{err:?}");
    assert!(err.tool_ran());
    assert!(err.to_string().contains("vendor timed out"));
    assert_eq!(tool.count(), 1);
    let completes = gateway.completes();
    assert_eq!(completes.len(), 1);
    assert_eq!(completes[0].1.outcome, Finalization::Released);
    assert_eq!(completes[0].1.actual_spend_cents, None);
    assert!(gateway.evidence().is_empty());
    let entry = &run.trace().entries()[0];
    assert_eq!(entry.finalization, Some(Finalization::Released));
    assert_eq!(entry.reason_codes, ["tool_failed"]);
    assert_eq!(run.trace().totals().released_cents, 9_000);
}

#[tokio::test]
async fn a_panicking_tool_releases_its_reservation() {
    let gateway = Arc::new(ScriptedGateway::new());
    let run = run(&gateway).await;
    let tool = CountingTool::new(Behaviour::Panic);
    let mut svc = run.layer(tool.service());
    let err = call(&mut svc, book("c", 1)).await.unwrap_err();
    let RunError::ToolPanicked { message, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(message, "vendor SDK panicked");
    assert_eq!(tool.count(), 1);
    let completes = gateway.completes();
    assert_eq!(completes.len(), 1);
    assert_eq!(completes[0].1.outcome, Finalization::Released);
    assert_eq!(run.trace().entries()[0].reason_codes, ["tool_panicked"]);
}

#[tokio::test]
async fn dropping_the_future_after_allow_releases_the_reservation() {
    let gateway = Arc::new(ScriptedGateway::new());
    let run = run(&gateway).await;
    let tool = CountingTool::new(Behaviour::Hang);
    let mut svc = run.layer(tool.service());
    let fut = svc.ready().await.unwrap().call(book("call_drop", 1));
    let calls = Arc::clone(&tool.calls);
    let handle = tokio::spawn(fut);
    eventually(|| calls.load(Ordering::SeqCst) == 1).await;
    handle.abort();
    let _ = handle.await;

    eventually(|| gateway.completes().len() == 1).await;
    assert_eq!(gateway.completes()[0].1.outcome, Finalization::Released);
    eventually(|| run.trace().entries().len() == 1).await;
    let entry = &run.trace().entries()[0];
    assert_eq!(entry.finalization, Some(Finalization::Released));
    assert_eq!(entry.reason_codes, ["cancelled"]);

    // Dropped before the verify answered: nothing to release, the tool never ran.
    let tool = CountingTool::new(Behaviour::Succeed);
    let mut svc = run.layer(tool.service());
    drop(svc.ready().await.unwrap().call(book("never_polled", 1)));
    tokio::task::yield_now().await;
    assert_eq!(tool.count(), 0);
    assert_eq!(gateway.completes().len(), 1);
}

#[tokio::test]
async fn finalization_and_evidence_failures_do_not_undo_a_successful_call() {
    let gateway = Arc::new(ScriptedGateway::new());
    gateway
        .fail_next_evidence(GatewayError::Transport {
            operation: "evidence",
            detail: "reset".into(),
        })
        .fail_next_complete(GatewayError::Transport {
            operation: "complete",
            detail: "reset".into(),
        });
    let run = run(&gateway).await;
    let tool = CountingTool::new(Behaviour::Succeed);
    let mut svc = run.layer(tool.service());
    let out = call(&mut svc, book("c", 500)).await.unwrap();
    assert_eq!(out.cost_cents, Some(500));
    let entry = &run.trace().entries()[0];
    assert_eq!(entry.outcome, TraceOutcome::Allow);
    assert_eq!(entry.finalization, None);
    assert_eq!(
        entry.reason_codes,
        ["evidence_failed", "finalization_failed"]
    );
}

#[tokio::test]
async fn a_reported_cost_above_the_reservation_is_settled_at_the_reservation() {
    let gateway = Arc::new(ScriptedGateway::new());
    let run = run(&gateway).await;
    let tool = CountingTool::new(Behaviour::Succeed);
    let mut svc = run.layer(tool.service());
    call(&mut svc, book("c", 25_000)).await.unwrap();
    assert_eq!(gateway.completes()[0].1.actual_spend_cents, Some(20_000));
    assert_eq!(
        run.trace().entries()[0].reason_codes,
        ["actual_cost_exceeds_reservation"]
    );
}

#[tokio::test]
async fn a_tool_outside_the_policy_is_verified_not_passed_through() {
    let gateway = Arc::new(ScriptedGateway::new());
    gateway.push_verify(VerifyScript::deny("tool_not_in_policy"));
    let run = run(&gateway).await;
    let tool = CountingTool::new(Behaviour::Succeed);
    let mut svc = run.layer(tool.service());
    let call_outside =
        ToolCall::new("payments.wire", json!({}), "w1").with_requested_spend_cents(50);
    let err = call(&mut svc, call_outside).await.unwrap_err();
    assert_eq!(err.kind(), RunErrorKind::SpendDenied);
    // Without an amount it cannot even be verified.
    let err = call(&mut svc, ToolCall::new("payments.wire", json!({}), "w2"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RunErrorKind::InvalidCall);
    assert_eq!(tool.count(), 0);
    assert_eq!(gateway.verifies().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_through_clones_of_one_service() {
    let gateway = Arc::new(ScriptedGateway::new());
    for i in 0..64 {
        if i % 4 == 3 {
            gateway.push_verify(VerifyScript::deny("daily_tenant_cap_exceeded"));
        } else {
            gateway.push_verify(VerifyScript::Allow);
        }
    }
    let run = run(&gateway).await;
    let tool = CountingTool::new(Behaviour::Succeed);
    let svc = run.layer(tool.service());
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(book(&format!("call_{i}"), 100)).await })
        })
        .collect();
    let mut ok = 0;
    let mut denied = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(RunError::SpendDenied(_)) => denied += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!((ok, denied), (48, 16));
    assert_eq!(tool.count(), 48);
    let completes = gateway.completes();
    assert_eq!(completes.len(), 48);
    let decisions: std::collections::HashSet<_> = completes.iter().map(|(d, _)| *d).collect();
    assert_eq!(decisions.len(), 48, "each allow finalized exactly once");
    let totals = run.trace().totals();
    assert_eq!(
        (totals.allows, totals.denies, totals.consumed_cents),
        (48, 16, 4_800)
    );
}

/// A service that must be polled ready before each call, like a concurrency limit.
struct MustBeReady {
    ready: bool,
    violated: Arc<AtomicBool>,
}

/// A clone of a ready instance is not ready itself (as with tower's `ConcurrencyLimit`).
impl Clone for MustBeReady {
    fn clone(&self) -> Self {
        Self {
            ready: false,
            violated: Arc::clone(&self.violated),
        }
    }
}

impl Service<ToolCall> for MustBeReady {
    type Response = ToolOutput;
    type Error = paybond_middleware_core::BoxError;
    type Future = BoxFuture<'static, Result<ToolOutput, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _call: ToolCall) -> Self::Future {
        if !std::mem::replace(&mut self.ready, false) {
            self.violated.store(true, Ordering::SeqCst);
        }
        Box::pin(async { Ok(ToolOutput::new(json!("done"))) })
    }
}

#[tokio::test]
async fn the_instance_polled_ready_is_the_one_called() {
    let gateway = Arc::new(ScriptedGateway::new());
    let run = run(&gateway).await;
    let violated = Arc::new(AtomicBool::new(false));
    let inner = MustBeReady {
        ready: false,
        violated: Arc::clone(&violated),
    };
    let mut svc = run.layer(inner);
    for i in 0..3 {
        call(&mut svc, book(&format!("c{i}"), 1)).await.unwrap();
        call(
            &mut svc,
            ToolCall::new(common::SEARCH, json!({}), format!("s{i}")),
        )
        .await
        .unwrap();
    }
    assert!(!violated.load(Ordering::SeqCst));
}

#[tokio::test]
async fn binding_takes_the_tenant_from_the_principal_and_fails_closed_without_it() {
    let gateway = Arc::new(ScriptedGateway::for_tenant("tenant_from_key"));
    assert_eq!(run(&gateway).await.tenant(), "tenant_from_key");
    let down = Arc::new(ScriptedGateway::new());
    down.fail_principal(GatewayError::Transport {
        operation: "principal",
        detail: "refused".into(),
    });
    let err = common::builder(down).bind().await.unwrap_err();
    assert_eq!(err.kind(), GatewayErrorKind::Transport);
}

#[tokio::test]
async fn a_call_refused_before_verify_leaves_the_stored_approval_token_in_place() {
    let gateway = Arc::new(ScriptedGateway::new());
    let run = common::builder(Arc::clone(&gateway))
        .tool(
            "payments.send",
            ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("cents"),
        )
        .bind()
        .await
        .unwrap();
    let tool = CountingTool::new(Behaviour::Succeed);
    let mut svc = run.layer(tool.service());
    run.store_approval_token("p1", ApprovalToken::new("approval-SECRET-4"));
    let err = call(&mut svc, ToolCall::new("payments.send", json!({}), "p1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RunErrorKind::InvalidCall);
    call(
        &mut svc,
        ToolCall::new("payments.send", json!({"cents": 5}), "p1"),
    )
    .await
    .unwrap();
    let verifies = gateway.verifies();
    assert_eq!(verifies.len(), 1);
    assert_eq!(
        verifies[0]
            .approval_token
            .as_ref()
            .map(ApprovalToken::expose_secret),
        Some("approval-SECRET-4")
    );
    let attempts: Vec<u32> = run.trace().entries().iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2]);
}
