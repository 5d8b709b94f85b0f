//! Compensations in the ledger: a failed workflow's paid step, undone, lands as a
//! `compensation` event linked to its decision; only an allowed decision of the
//! tenant can be compensated.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::{BOOK, Fixture};
use paybond_middleware_core::scope::transaction;
use paybond_middleware_core::wire::CompensationOutcome;
use paybond_middleware_core::{RunError, ToolOutput, ToolPolicy, ToolRegistry, tool_fn};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensated_step_is_a_ledger_event_linked_to_its_decision() {
    let fx = Fixture::new();
    let run = fx.sandbox_run().await.bind().await.unwrap();
    let tools = ToolRegistry::new()
        .with(tool_fn(
            BOOK,
            ToolPolicy::read_only(),
            |args: Value| async move {
                Ok(ToolOutput::new(json!({"booking": "H-1"}))
                    .with_cost_cents(args["amount_cents"].as_u64().unwrap_or(0)))
            },
        ))
        .guarded(&run);
    let failed = transaction(&run, "trip", |scope| async move {
        tools
            .call(BOOK, json!({"amount_cents": 12_000}), "book-1")
            .await?;
        scope.compensate_with("book-1", || async { Ok(()) });
        Err::<(), RunError>(RunError::InvalidCall {
            tool_call_id: "fly-1".into(),
            tool: "travel.book_flight".into(),
            reason: "no seats".into(),
        })
    })
    .await
    .unwrap_err();
    let decision = run.trace().entries()[0].decision_id.unwrap();
    assert_eq!(failed.compensations.len(), 1);
    let entry = &failed.compensations[0];
    assert_eq!(
        (entry.decision_id, entry.outcome),
        (Some(decision), CompensationOutcome::Compensated)
    );
    let seq = entry.ledger_seq.unwrap();
    let events = fx
        .engine
        .ledger_events(&fx.operator, seq - 1, 1)
        .await
        .unwrap();
    assert_eq!(events[0].event, "compensation");
    assert_eq!(events[0].payload["decision_id"], decision.to_string());
    assert_eq!(events[0].payload["outcome"], "compensated");
    assert_eq!(events[0].payload["workflow"], "trip");
    assert_eq!(events[0].payload["tool_call_id"], "book-1");
    assert!(fx.engine.verify_ledger().await.unwrap().valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_allowed_decision_of_the_tenant_is_compensated() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let agent = fx.keys.agent.expose_secret();
    let (intent, token) = fx.intent(60_000);
    let verify = |cents: u64| {
        json!({"intent_id": intent, "token": token.expose_secret(), "operation": BOOK,
               "requested_spend_cents": cents})
        .to_string()
    };
    let (_, allowed) = common::call(
        &base,
        Method::POST,
        "/verify",
        Some(agent),
        Some(&verify(1_000)),
    )
    .await;
    let (_, held) = common::call(
        &base,
        Method::POST,
        "/verify",
        Some(agent),
        Some(&verify(18_700)),
    )
    .await;
    let path = |d: &Value| {
        format!(
            "/v1/spend/decisions/{}/compensation",
            d["decision_id"].as_str().unwrap()
        )
    };
    let body = json!({"outcome": "compensation_failed", "error": "refund refused"}).to_string();

    let (status, recorded) = common::call(
        &base,
        Method::POST,
        &path(&allowed),
        Some(agent),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200, "{recorded}");
    assert_eq!(recorded["outcome"], "compensation_failed");
    assert!(recorded["ledger_seq"].as_u64().unwrap() > 0);

    let (status, refused) =
        common::call(&base, Method::POST, &path(&held), Some(agent), Some(&body)).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (409, Some("not_compensable")),
        "{refused}"
    );
    let unknown = format!("/v1/spend/decisions/{}/compensation", uuid::Uuid::new_v4());
    let (status, _) = common::call(&base, Method::POST, &unknown, Some(agent), Some(&body)).await;
    assert_eq!(status, 404);
    let (status, bad) = common::call(
        &base,
        Method::POST,
        &path(&allowed),
        Some(agent),
        Some(r#"{"outcome": "undone"}"#),
    )
    .await;
    assert_eq!(status, 422, "{bad}");
    assert!(
        bad["message"].as_str().unwrap().starts_with("outcome"),
        "{bad}"
    );
    // Another tenant's key finds no such decision.
    let other = fx
        .engine
        .create_tenant("other", paybond_middleware_core::wire::Environment::Sandbox)
        .await
        .unwrap();
    let (status, _) = common::call(
        &base,
        Method::POST,
        &path(&allowed),
        Some(other.agent.expose_secret()),
        Some(&body),
    )
    .await;
    assert_eq!(status, 404);
}
