//! `/harbor/operator/v1/intents`: the tenant's intents and one intent's
//! reservations, decisions and evidence, for operators, on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::{BOOK, Fixture};
use paybond_middleware_core::SpendGateway;
use paybond_middleware_core::wire::{
    CompleteRequest, Environment, EvidenceRequest, Finalization, VerifyRequest,
};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

fn verify(
    intent: Uuid,
    token: &paybond_middleware_core::CapabilityToken,
    cents: u64,
) -> VerifyRequest {
    common::verify_request(intent, token, cents)
}

async fn get(base: &str, key: &str, path: &str) -> (u16, Value) {
    common::call(base, Method::GET, path, Some(key), None).await
}

async fn operator_views(fx: Fixture) {
    let base = common::serve(fx.engine.clone()).await;
    let gw = fx.gateway();
    let operator = fx.keys.operator.expose_secret();
    let (older, _) = fx.intent(10_000);
    // Timestamps are milliseconds: keep the two intents apart.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (intent, token) = fx.intent(60_000);

    // On `intent`: consumed with evidence, held, denied, released.
    let allowed = gw.verify(&verify(intent, &token, 12_000)).await.unwrap();
    let decision = allowed.decision_id.unwrap();
    gw.submit_evidence(
        intent,
        &EvidenceRequest {
            payload: Some(json!({"status": "completed", "cost_cents": 12_000})),
            operation: Some(BOOK.into()),
            metadata: Some(json!({"decision_id": decision})),
            ..Default::default()
        },
        "ev-1",
    )
    .await
    .unwrap();
    gw.complete_decision(
        decision,
        &CompleteRequest {
            outcome: Finalization::Consumed,
            actual_spend_cents: Some(12_000),
        },
        "c-1",
    )
    .await
    .unwrap();
    let held = gw.verify(&verify(intent, &token, 18_700)).await.unwrap();
    assert!(held.approval_required);
    let denied = gw.verify(&verify(intent, &token, 25_000)).await.unwrap();
    assert!(!denied.allow && !denied.approval_required);
    let released = gw.verify(&verify(intent, &token, 9_000)).await.unwrap();
    gw.complete_decision(
        released.decision_id.unwrap(),
        &CompleteRequest {
            outcome: Finalization::Released,
            actual_spend_cents: None,
        },
        "c-2",
    )
    .await
    .unwrap();

    // The list: newest first, one page at a time.
    let (status, list) = get(&base, operator, "/harbor/operator/v1/intents").await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["intents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["intent_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [intent.to_string(), older.to_string()], "{list}");
    let first = &list["intents"][0];
    assert_eq!(first["status"], "evidence_submitted", "{first}");
    assert_eq!(first["budget_cents"], 60_000);
    assert_eq!(first["amount_cents"], 60_000);
    assert_eq!(first["consumed_cents"], 12_000);
    assert_eq!(first["reserved_cents"], 0);
    assert_eq!(first["remaining_cents"], 48_000);
    assert!(first["created_at"].as_str().unwrap().ends_with('Z'));
    let (_, page) = get(&base, operator, "/harbor/operator/v1/intents?limit=1").await;
    assert_eq!(page["intents"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, next) = get(
        &base,
        operator,
        &format!("/harbor/operator/v1/intents?limit=1&cursor={cursor}"),
    )
    .await;
    assert_eq!(next["intents"][0]["intent_id"], older.to_string());
    assert!(next["next_cursor"].is_null(), "{next}");
    // Filters: `state`, or `status` as the Paybond CLI sends it.
    let (_, funded) = get(&base, operator, "/harbor/operator/v1/intents?status=funded").await;
    assert_eq!(funded["intents"].as_array().unwrap().len(), 1, "{funded}");
    assert_eq!(funded["intents"][0]["intent_id"], older.to_string());
    let (status, bad) = get(&base, operator, "/harbor/operator/v1/intents?state=lost").await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"], "invalid_query_parameter");
    let (status, _) = get(
        &base,
        operator,
        "/harbor/operator/v1/intents?cursor=nonsense",
    )
    .await;
    assert_eq!(status, 400);

    // One intent: its reservations, decisions and evidence.
    let (status, detail) = get(
        &base,
        operator,
        &format!("/harbor/operator/v1/intents/{intent}"),
    )
    .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["consumed_cents"], 12_000);
    let reservations: Vec<(&str, u64)> = detail["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["state"].as_str().unwrap(),
                r["amount_cents"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reservations,
        [("released", 9_000), ("consumed", 12_000)],
        "{detail}"
    );
    let outcomes: Vec<(&str, &str)> = detail["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["outcome"].as_str().unwrap(),
                d["reason_codes"][0].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("allow", "-"),
            ("deny", "tool_cap_exceeded"),
            ("hold", "approval_threshold_exceeded"),
            ("allow", "-"),
        ],
        "{detail}"
    );
    assert_eq!(
        detail["decisions"][2]["approval_request_id"],
        held.approval_request_id.unwrap().to_string()
    );
    let evidence = &detail["evidence"];
    assert_eq!(evidence.as_array().unwrap().len(), 1, "{detail}");
    assert_eq!(evidence[0]["predicate_passed"], true);
    assert_eq!(evidence[0]["decision_id"], decision.to_string());
    assert_eq!(evidence[0]["cost_cents"], 12_000);

    // Read-only: an agent key of the tenant reads the same (the Paybond CLI's
    // `intents list` uses it); the tenant comes from the key.
    let (status, as_agent) = get(
        &base,
        fx.keys.agent.expose_secret(),
        "/harbor/operator/v1/intents",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(as_agent["intents"], list["intents"]);
    let (status, missing) = get(
        &base,
        operator,
        &format!("/harbor/operator/v1/intents/{}", Uuid::new_v4()),
    )
    .await;
    assert_eq!(status, 404, "{missing}");
    let other = fx
        .engine
        .create_tenant("other", Environment::Sandbox)
        .await
        .unwrap();
    let (status, _) = get(
        &base,
        other.operator.expose_secret(),
        &format!("/harbor/operator/v1/intents/{intent}"),
    )
    .await;
    assert_eq!(status, 404);
    let (_, theirs) = get(
        &base,
        other.operator.expose_secret(),
        "/harbor/operator/v1/intents",
    )
    .await;
    assert_eq!(theirs["intents"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_intents_and_their_history_on_sqlite() {
    operator_views(Fixture::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_intents_and_their_history_on_postgres() {
    if let Some(config) = common::pg_config() {
        operator_views(Fixture::with_config(config)).await;
    }
}
