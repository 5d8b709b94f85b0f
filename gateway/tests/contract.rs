//! One contract suite, run against the embedded engine and against the HTTP server
//! through middleware-core's `HttpGateway`: both must give the same answers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use common::{BOOK, Fixture};
use paybond_gateway::{EngineConfig, Storage};
use paybond_middleware_core::wire::{
    ApprovalState, CompleteRequest, EvidenceRequest, Finalization, Role, SandboxBootstrapRequest,
    VerifyRequest,
};
use paybond_middleware_core::{
    ApprovalToken, CapabilityToken, GatewayError, HttpGateway, SpendGateway,
};
use serde_json::json;
use uuid::Uuid;

type Approve = Box<dyn Fn(Uuid) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

fn request(intent: Uuid, token: &CapabilityToken, amount: u64) -> VerifyRequest {
    VerifyRequest {
        intent_id: intent,
        token: token.clone(),
        operation: BOOK.to_owned(),
        requested_spend_cents: amount,
        vendor_id: Some("vendor_acme".to_owned()),
        task_id: None,
        workflow_id: None,
        tool_call_id: Some("call-1".to_owned()),
        tool_name: Some(BOOK.to_owned()),
        currency: Some("usd".to_owned()),
        agent_subject: Some("agent-7".to_owned()),
        approval_token: None,
        idempotency_key: None,
        phase: None,
    }
}

fn rejected_code(e: &GatewayError) -> (u16, String) {
    match e {
        GatewayError::Rejected { status, code, .. } => (*status, code.clone()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The suite: `(intent, token)` and `(other_intent, other_token)` are two funded
/// intents of 60000 cents for the booking tool; `approve` acts as the operator.
async fn suite(
    gw: Arc<dyn SpendGateway>,
    tenant: &str,
    (intent, token): (Uuid, CapabilityToken),
    (other_intent, other_token): (Uuid, CapabilityToken),
    approve: Approve,
) {
    let principal = gw.principal().await.unwrap();
    assert_eq!(principal.tenant_id, tenant);
    assert_eq!(principal.service_account_role, Role::Agent);

    // Allow, then settle for less: the rest returns to the budget.
    let allowed = gw.verify(&request(intent, &token, 12_000)).await.unwrap();
    assert!(allowed.allow, "{allowed:?}");
    assert_eq!(
        (allowed.tenant.as_str(), allowed.intent_id),
        (tenant, intent)
    );
    assert_eq!(allowed.remaining_cents, Some(48_000));
    assert_eq!(allowed.message.as_deref(), Some("120.00 USD reserved"));
    assert!(
        allowed
            .policy_digest
            .as_deref()
            .unwrap()
            .starts_with("sha256:")
    );
    let decision = allowed.decision_id.unwrap();
    let consumed = CompleteRequest {
        outcome: Finalization::Consumed,
        actual_spend_cents: Some(11_500),
    };
    let done = gw
        .complete_decision(decision, &consumed, "k-c1")
        .await
        .unwrap();
    assert_eq!(done.returned_cents, Some(500));
    // The same completion again (another key) answers the same; another outcome is a 409.
    let again = gw
        .complete_decision(decision, &consumed, "k-c2")
        .await
        .unwrap();
    assert_eq!(again, done);
    let release = CompleteRequest {
        outcome: Finalization::Released,
        actual_spend_cents: None,
    };
    let err = gw
        .complete_decision(decision, &release, "k-c3")
        .await
        .unwrap_err();
    assert_eq!(
        rejected_code(&err),
        (409, "decision_already_finalized".to_owned())
    );
    let err = gw
        .complete_decision(Uuid::new_v4(), &release, "k-c4")
        .await
        .unwrap_err();
    assert_eq!(rejected_code(&err), (404, "decision_not_found".to_owned()));

    // Evidence for the allowed call passes the cost_and_completion predicate.
    let ev = gw
        .submit_evidence(
            intent,
            &EvidenceRequest {
                payload: Some(json!({"status": "completed", "cost_cents": 11_500})),
                metadata: Some(json!({"decision_id": decision})),
                ..EvidenceRequest::default()
            },
            "k-e1",
        )
        .await
        .unwrap();
    assert!(ev.predicate_passed);

    // Over the per-call cap: a hard deny, HTTP 200.
    let over = gw.verify(&request(intent, &token, 25_000)).await.unwrap();
    assert!(!over.allow && !over.approval_required);
    assert_eq!(over.reason_codes, ["tool_cap_exceeded"]);
    assert_eq!(
        over.message.as_deref(),
        Some("250.00 USD is above the per-call cap of 200.00 USD")
    );

    // Above the approval threshold: a hold; approved; the token works once, for exactly this request.
    let held = gw.verify(&request(intent, &token, 18_700)).await.unwrap();
    assert!(!held.allow && held.approval_required, "{held:?}");
    assert_eq!(held.code.as_deref(), Some("approval_required"));
    assert_eq!(held.reason_codes, ["approval_threshold_exceeded"]);
    let approval_id = held.approval_request_id.unwrap();
    let status = gw.approval_status(approval_id).await.unwrap();
    assert_eq!(
        (status.state, status.approval_token.is_none()),
        (ApprovalState::Pending, true)
    );
    // The same request held again points at the same approval.
    let held_again = gw.verify(&request(intent, &token, 18_700)).await.unwrap();
    assert_eq!(held_again.approval_request_id, Some(approval_id));
    approve(approval_id).await;
    let status = gw.approval_status(approval_id).await.unwrap();
    assert_eq!(status.state, ApprovalState::Approved);
    let approval_token: ApprovalToken = status.approval_token.unwrap();

    let mut changed = request(intent, &token, 18_800);
    changed.approval_token = Some(approval_token.clone());
    let refused = gw.verify(&changed).await.unwrap();
    assert_eq!(refused.reason_codes, ["approval_amount_mismatch"]);
    let mut other_vendor = request(intent, &token, 18_700);
    other_vendor.vendor_id = Some("vendor_other".to_owned());
    other_vendor.approval_token = Some(approval_token.clone());
    let refused = gw.verify(&other_vendor).await.unwrap();
    assert_eq!(refused.reason_codes, ["approval_vendor_mismatch"]);

    let mut with_token = request(intent, &token, 18_700);
    with_token.approval_token = Some(approval_token.clone());
    let approved = gw.verify(&with_token).await.unwrap();
    assert!(approved.allow, "{approved:?}");
    assert!(
        approved
            .reason_codes
            .contains(&"approval_token_accepted".to_owned())
    );
    let reused = gw.verify(&with_token).await.unwrap();
    assert_eq!(reused.reason_codes, ["approval_token_reused"]);
    gw.complete_decision(approved.decision_id.unwrap(), &release, "k-c5")
        .await
        .unwrap();

    // A token of another intent, and a token that is not one.
    let mut crossed = request(intent, &other_token, 1_000);
    crossed.intent_id = intent;
    let r = gw.verify(&crossed).await.unwrap();
    assert_eq!(r.reason_codes, ["capability_intent_mismatch"]);
    let r = gw
        .verify(&request(intent, &CapabilityToken::new("garbage"), 1_000))
        .await
        .unwrap();
    assert_eq!(r.reason_codes, ["capability_invalid"]);
    let r = gw
        .verify(&request(other_intent, &other_token, 1_000))
        .await
        .unwrap();
    assert!(r.allow);
    gw.complete_decision(r.decision_id.unwrap(), &release, "k-c6")
        .await
        .unwrap();

    // Idempotency: same key and body → same decision; same key, other body → 409.
    let mut keyed = request(intent, &token, 1_000);
    keyed.idempotency_key = Some("verify-key-1".to_owned());
    let first = gw.verify(&keyed).await.unwrap();
    let second = gw.verify(&keyed).await.unwrap();
    assert!(first.allow && !first.checks.is_empty(), "{first:?}");
    assert_eq!(first, second, "a replay answers the whole first answer");
    // A denial replays the same way.
    let mut over = request(intent, &token, 10_000_000);
    over.idempotency_key = Some("verify-key-2".to_owned());
    let denied = gw.verify(&over).await.unwrap();
    assert!(!denied.allow && denied.decision_id.is_some(), "{denied:?}");
    assert_eq!(gw.verify(&over).await.unwrap(), denied);
    keyed.requested_spend_cents = 2_000;
    let err = gw.verify(&keyed).await.unwrap_err();
    assert_eq!(
        rejected_code(&err),
        (409, "idempotency_key_reused".to_owned())
    );
    gw.complete_decision(first.decision_id.unwrap(), &release, "k-c7")
        .await
        .unwrap();

    let err = gw.approval_status(Uuid::new_v4()).await.unwrap_err();
    assert_eq!(rejected_code(&err), (404, "approval_not_found".to_owned()));
}

fn bootstrap_request() -> SandboxBootstrapRequest {
    SandboxBootstrapRequest {
        operation: BOOK.to_owned(),
        requested_spend_cents: 60_000,
        currency: Some("usd".to_owned()),
        evidence_schema: None,
        metadata: None,
        idempotency_key: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded() {
    embedded_on(Fixture::new()).await;
}

/// On a SQLite file, verify, evidence and completion queue to the store's writer
/// thread and are answered by its sync thread (in memory they run on the blocking
/// pool): the same answers either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig::new(Storage::File(dir.path().join("paybond.db")));
    embedded_on(Fixture::with_config(config)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig::new(Storage::File(dir.path().join("paybond.db")));
    over_http_on(Fixture::with_config(config)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_on_postgres() {
    if let Some(config) = common::pg_config() {
        embedded_on(Fixture::with_config(config)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_on_postgres() {
    if let Some(config) = common::pg_config() {
        over_http_on(Fixture::with_config(config)).await;
    }
}

async fn embedded_on(fx: Fixture) {
    let gw = fx.gateway();
    let a = gw.bootstrap_sandbox(&bootstrap_request()).await.unwrap();
    let b = gw.bootstrap_sandbox(&bootstrap_request()).await.unwrap();
    let engine = fx.engine.clone();
    let operator = fx.operator.clone();
    let approve: Approve = Box::new(move |id| {
        let engine = engine.clone();
        let operator = operator.clone();
        Box::pin(async move {
            engine.approve(&operator, id).await.unwrap();
        })
    });
    suite(
        Arc::new(gw),
        &fx.keys.tenant_id,
        (a.intent_id, a.capability_token),
        (b.intent_id, b.capability_token),
        approve,
    )
    .await;
    assert_eq!(fx.engine.open_reservations().await.unwrap(), 0);
    assert!(fx.engine.verify_ledger().await.unwrap().valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http() {
    over_http_on(Fixture::new()).await;
}

async fn over_http_on(fx: Fixture) {
    let base = common::serve(fx.engine.clone()).await;
    let gw = HttpGateway::builder(&base, fx.keys.agent.clone())
        .build()
        .unwrap();
    let a = gw.bootstrap_sandbox(&bootstrap_request()).await.unwrap();
    let b = gw.bootstrap_sandbox(&bootstrap_request()).await.unwrap();
    let operator_key = fx.keys.operator.expose_secret().to_owned();
    let base2 = base.clone();
    let approve: Approve = Box::new(move |id| {
        let base = base2.clone();
        let key = operator_key.clone();
        Box::pin(async move {
            let (status, body) = common::call(
                &base,
                reqwest::Method::POST,
                &format!("/v1/approvals/{id}/approve"),
                Some(&key),
                None,
            )
            .await;
            assert_eq!(status, 200, "{body}");
        })
    });
    suite(
        Arc::new(gw),
        &fx.keys.tenant_id,
        (a.intent_id, a.capability_token),
        (b.intent_id, b.capability_token),
        approve,
    )
    .await;
    assert_eq!(fx.engine.open_reservations().await.unwrap(), 0);
    assert!(fx.engine.verify_ledger().await.unwrap().valid);
}
