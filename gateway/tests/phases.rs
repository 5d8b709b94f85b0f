//! `spend_controls.phases.payment_phase`: a side-effecting call before the run has
//! committed is denied `phase_not_committed` by the gateway, from the phase the
//! verify carries; read-only tools run in any phase; the layer carries the run's
//! phase, moves it forward only, and a guarded registry offers `commit_plan`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::block_on;

use common::Blocking;

use std::sync::Arc;

use common::{BOOK, Fixture, SEARCH};
use paybond_gateway::{EngineConfig, PolicyFile, Storage};
use paybond_middleware_core::registry::COMMIT_PLAN;
use paybond_middleware_core::wire::{Phase, PreflightRequest, VerifyRequest};
use paybond_middleware_core::{
    PaybondAgentRun, RunError, ToolOutput, ToolPolicy, ToolRegistry, tool_fn,
};
use serde_json::{Value, json};

const POLICY: &str = "version: 1\nname: t\ndefault_deny: true\ntools:\n  travel.book_hotel: {side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}\n  travel.search_hotels: {side_effecting: false}\nspend_controls:\n  phases: {payment_phase: COMMIT}\n";

fn fixture(policy: &str) -> Fixture {
    let mut config = EngineConfig::new(Storage::Memory);
    config.default_org_policy = None;
    config.default_tenant_policy = Some(PolicyFile {
        text: policy.to_owned(),
        file: "phases.yaml".to_owned(),
    });
    Fixture::with_config(config)
}

fn request(fx: &Fixture, phase: Option<Phase>) -> VerifyRequest {
    let (intent, token) = fx.intent(60_000);
    VerifyRequest {
        phase,
        ..common::verify_request(intent, &token, 1_000)
    }
}

#[test]
fn the_gateway_denies_a_paid_call_before_the_payment_phase() {
    let fx = fixture(POLICY);
    for (phase, allowed) in [
        (None, false),
        (Some(Phase::Explore), false),
        (Some(Phase::Decide), false),
        (Some(Phase::Commit), true),
    ] {
        let r = fx
            .engine
            .verify_now(&fx.agent, &request(&fx, phase))
            .unwrap();
        assert_eq!(r.allow, allowed, "{phase:?}: {r:?}");
        if !allowed {
            assert_eq!(r.reason_codes, ["phase_not_committed"], "{phase:?}");
        }
    }
    // Preflight says the same, with the check and its inputs.
    let req = request(&fx, Some(Phase::Decide));
    let why = block_on(fx.engine.preflight(
        &fx.agent,
        &PreflightRequest {
            intent_id: req.intent_id,
            operation: BOOK.into(),
            requested_spend_cents: 1_000,
            phase: Some(Phase::Decide),
            ..Default::default()
        },
    ))
    .unwrap();
    assert_eq!(why.outcome, "deny");
    let check = why
        .checks
        .iter()
        .find(|c| c.name == "payment_phase")
        .unwrap();
    assert_eq!(check.result, "fail");
    assert_eq!(
        check.inputs,
        json!({"payment_phase": "COMMIT", "phase": "DECIDE"})
    );

    // Without a payment phase in the policy, the phase is not looked at.
    let plain =
        fixture(&POLICY.replace("spend_controls:\n  phases: {payment_phase: COMMIT}\n", ""));
    assert!(
        plain
            .engine
            .verify_now(&plain.agent, &request(&plain, None))
            .unwrap()
            .allow
    );
}

#[test]
fn a_phase_name_is_checked_on_the_wire() {
    let v: VerifyRequest = serde_json::from_value(json!({
        "intent_id": uuid::Uuid::new_v4(), "token": "t", "operation": BOOK,
        "requested_spend_cents": 1, "phase": "commit"
    }))
    .unwrap();
    assert_eq!(v.phase, Some(Phase::Commit));
    assert_eq!(serde_json::to_value(Phase::Commit).unwrap(), "COMMIT");
    let bad = serde_json::from_value::<VerifyRequest>(json!({
        "intent_id": uuid::Uuid::new_v4(), "token": "t", "operation": BOOK,
        "requested_spend_cents": 1, "phase": "PAY"
    }));
    assert!(bad.is_err());
}

fn tools(booked: Arc<std::sync::atomic::AtomicU32>) -> ToolRegistry {
    ToolRegistry::new()
        .with(tool_fn(
            SEARCH,
            ToolPolicy::read_only(),
            |_args: Value| async { Ok(ToolOutput::new(json!({"hotels": ["h1"]}))) },
        ))
        .with(tool_fn(
            BOOK,
            ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
            move |args: Value| {
                let booked = booked.clone();
                async move {
                    booked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let cents = args["amount_cents"].as_u64().unwrap_or(0);
                    Ok(ToolOutput::new(json!({"booked": true})).with_cost_cents(cents))
                }
            },
        ))
}

async fn guarded_run(
    fx: &Fixture,
) -> (
    PaybondAgentRun,
    paybond_middleware_core::registry::GuardedRegistry,
    Arc<std::sync::atomic::AtomicU32>,
) {
    let run = fx.sandbox_run().await.bind().await.unwrap();
    let booked = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let registry = tools(booked.clone()).guarded(&run);
    (run, registry, booked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_carries_the_phase_and_commit_plan_moves_it_forward() {
    let fx = fixture(POLICY);
    let (run, registry, booked) = guarded_run(&fx).await;
    assert_eq!(run.payment_phase(), Some(Phase::Commit));
    assert_eq!(run.phase(), Phase::Explore);
    let names: Vec<&str> = registry
        .definitions()
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(names, [COMMIT_PLAN, BOOK, SEARCH]);

    // Before committing: reads run, the paid tool does not.
    registry.call(SEARCH, json!({}), "c1").await.unwrap();
    let refused = registry
        .call(BOOK, json!({"amount_cents": 12_000}), "c2")
        .await;
    match refused {
        Err(RunError::SpendDenied(d)) => assert_eq!(d.result.reason_codes, ["phase_not_committed"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(booked.load(std::sync::atomic::Ordering::SeqCst), 0);

    // DECIDE is not enough; going back is an error.
    run.enter_phase(Phase::Decide).unwrap();
    assert!(
        registry
            .call(BOOK, json!({"amount_cents": 12_000}), "c3")
            .await
            .is_err()
    );
    let back = run.enter_phase(Phase::Explore).unwrap_err();
    assert_eq!((back.from, back.to), (Phase::Decide, Phase::Explore));
    assert!(back.to_string().contains("only moves forward"));

    // The model commits through the built-in tool; the paid call then runs.
    let committed = registry
        .call(COMMIT_PLAN, json!({"plan": "book h1"}), "c4")
        .await
        .unwrap();
    assert_eq!(
        committed.body,
        json!({"phase": "COMMIT", "previous_phase": "DECIDE"})
    );
    assert_eq!(run.phase(), Phase::Commit);
    registry
        .call(BOOK, json!({"amount_cents": 12_000}), "c5")
        .await
        .unwrap();
    assert_eq!(booked.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Committing again changes nothing.
    registry.call(COMMIT_PLAN, json!({}), "c6").await.unwrap();
    assert_eq!(run.enter_phase(Phase::Commit).unwrap(), Phase::Commit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_payment_phase_there_is_no_commit_plan_and_nothing_waits() {
    let fx = fixture(&POLICY.replace("spend_controls:\n  phases: {payment_phase: COMMIT}\n", ""));
    let (run, registry, booked) = guarded_run(&fx).await;
    assert_eq!(run.payment_phase(), None);
    assert!(registry.definitions().iter().all(|d| d.name != COMMIT_PLAN));
    registry
        .call(BOOK, json!({"amount_cents": 12_000}), "c1")
        .await
        .unwrap();
    assert_eq!(booked.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(matches!(
        registry.call(COMMIT_PLAN, json!({}), "c2").await,
        Err(RunError::InvalidCall { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_the_phase_travels_with_the_verify() {
    let fx = fixture(POLICY);
    let base = common::serve(fx.engine.clone()).await;
    let mut req = serde_json::to_value(request(&fx, None)).unwrap();
    let verify = |req: &Value| {
        let body = req.to_string();
        let (base, key) = (base.clone(), fx.keys.agent.expose_secret().to_owned());
        async move {
            common::call(
                &base,
                reqwest::Method::POST,
                "/verify",
                Some(&key),
                Some(&body),
            )
            .await
        }
    };
    let (status, denied) = verify(&req).await;
    assert_eq!(status, 200);
    assert_eq!(denied["reason_codes"], json!(["phase_not_committed"]));
    req["phase"] = json!("COMMIT");
    let (_, allowed) = verify(&req).await;
    assert_eq!(allowed["allow"], true, "{allowed}");
    req["phase"] = json!("LATER");
    let (status, bad) = verify(&req).await;
    assert_eq!(status, 422, "{bad}");
    assert!(
        bad["message"].as_str().unwrap().starts_with("phase"),
        "{bad}"
    );
}
