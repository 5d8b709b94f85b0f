//! `POST /v1/spend/preflight`: what verify would decide, with every check it
//! evaluated, and no change to any state.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::{BOOK, Fixture, SEARCH};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// What preflight must leave as it found it: the intent's money, the approvals and
/// the ledger.
async fn state(base: &str, fx: &Fixture, intent: Uuid) -> (Value, Value, Value) {
    let operator = fx.keys.operator.expose_secret();
    let agent = fx.keys.agent.expose_secret();
    let (_, view) = common::call(
        base,
        Method::GET,
        &format!("/harbor/intents/{intent}"),
        Some(agent),
        None,
    )
    .await;
    let (_, approvals) = common::call(
        base,
        Method::GET,
        "/v1/approvals?state=all",
        Some(operator),
        None,
    )
    .await;
    let (_, tip) = common::call(base, Method::GET, "/ledger/v1/tip", Some(operator), None).await;
    assert!(view["reserved_cents"].is_u64(), "{view}");
    assert!(approvals["approvals"].is_array(), "{approvals}");
    assert!(tip["seq"].as_u64().unwrap() > 0, "{tip}");
    let money = json!({
        "consumed": view["consumed_cents"],
        "reserved": view["reserved_cents"],
        "open": view["open_reservations"],
    });
    (money, approvals["approvals"].clone(), tip)
}

async fn preflight(base: &str, key: &str, body: Value) -> (u16, Value) {
    common::call(
        base,
        Method::POST,
        "/v1/spend/preflight",
        Some(key),
        Some(&body.to_string()),
    )
    .await
}

fn names(answer: &Value) -> Vec<&str> {
    answer["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn preflight_answers_like_verify_and_changes_nothing() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let (intent, _token) = fx.intent(60_000);
    let agent = fx.keys.agent.expose_secret();
    let before = state(&base, &fx, intent).await;

    // Allowed: every check passes, in the documented order.
    let (status, ok) = preflight(
        &base,
        agent,
        json!({"intent_id": intent, "operation": BOOK, "requested_spend_cents": 12_000, "tool_name": BOOK}),
    )
    .await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(
        (ok["classification"].as_str(), ok["outcome"].as_str()),
        (Some("allow"), Some("allow")),
        "{ok}"
    );
    assert_eq!(ok["remaining_cents"], 60_000);
    assert_eq!(ok["spend_scope"]["scope_key"], intent.to_string());
    assert!(ok["policy_version"].as_u64().is_some());
    assert!(
        ok["explanation"].as_str().unwrap().contains("120.00 USD"),
        "{ok}"
    );
    assert_eq!(
        names(&ok),
        [
            "intent",
            "operation_allowed",
            "tool_in_policy",
            "per_call_cap",
            "intent_budget",
            "rolling_cap",
            "rate_limit",
            "approval_threshold"
        ],
        "{ok}"
    );
    assert!(
        ok["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["result"] == "pass")
    );
    let cap = &ok["checks"][3];
    assert_eq!(cap["inputs"]["max_per_call_cents"], 20_000, "{cap}");
    let rolling = &ok["checks"][5];
    assert_eq!(rolling["inputs"]["window"], "day", "{rolling}");
    assert_eq!(rolling["inputs"]["used_cents"], 0, "{rolling}");

    // Above the approval threshold: a hold, and no approval request is opened.
    let (_, held) = preflight(
        &base,
        agent,
        json!({"intent_id": intent, "operation": BOOK, "requested_spend_cents": 18_700}),
    )
    .await;
    assert_eq!(held["classification"], "hold", "{held}");
    assert_eq!(held["outcome"], "approval_required");
    assert_eq!(held["reason_codes"], json!(["approval_threshold_exceeded"]));
    let last = held["checks"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["name"].as_str(), last["result"].as_str()),
        (Some("approval_threshold"), Some("hold"))
    );

    // Above the per-call cap: denied at that check, and the checks stop there.
    let (_, denied) = preflight(
        &base,
        agent,
        json!({"intent_id": intent, "operation": BOOK, "requested_spend_cents": 25_000}),
    )
    .await;
    assert_eq!(denied["classification"], "deny");
    assert_eq!(denied["reason_codes"], json!(["tool_cap_exceeded"]));
    assert_eq!(denied["remaining_cents"], 60_000, "{denied}");
    let last = denied["checks"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["name"].as_str(), last["result"].as_str()),
        (Some("per_call_cap"), Some("fail")),
        "{denied}"
    );
    assert!(
        denied["explanation"]
            .as_str()
            .unwrap()
            .contains("250.00 USD is above the per-call cap of 200.00 USD"),
        "{denied}"
    );

    // `*`: the intent's budget only, by an operator key.
    let (status, budget) = preflight(
        &base,
        fx.keys.operator.expose_secret(),
        json!({"intent_id": intent, "operation": "*"}),
    )
    .await;
    assert_eq!(status, 200, "{budget}");
    assert_eq!(budget["outcome"], "allow");
    assert_eq!(budget["remaining_cents"], 60_000);
    assert_eq!(names(&budget), ["intent", "intent_budget"], "{budget}");

    // An operation the intent does not allow (the search tool was not delegated).
    let (_, other) = preflight(
        &base,
        agent,
        json!({"intent_id": intent, "operation": SEARCH, "requested_spend_cents": 0}),
    )
    .await;
    assert_eq!(
        other["reason_codes"],
        json!(["operation_not_allowed"]),
        "{other}"
    );

    // Nothing changed: no reservation, no approval request, no ledger entry.
    assert_eq!(state(&base, &fx, intent).await, before);

    // After a real reservation, preflight sees it.
    let gw = fx.gateway();
    let (intent2, token2) = fx.intent(60_000);
    let allowed = paybond_middleware_core::SpendGateway::verify(
        &gw,
        &common::verify_request(intent2, &token2, 12_000),
    )
    .await
    .unwrap();
    assert!(allowed.allow);
    let (_, after) = preflight(
        &base,
        agent,
        json!({"intent_id": intent2, "operation": "*"}),
    )
    .await;
    assert_eq!(after["remaining_cents"], 48_000, "{after}");
}

#[tokio::test]
async fn a_malformed_preflight_is_a_4xx_naming_the_field() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let agent = fx.keys.agent.expose_secret();
    let (status, body) = preflight(&base, agent, json!({"operation": BOOK})).await;
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(
        body["message"].as_str().unwrap().contains("intent_id"),
        "{body}"
    );
    let (status, body) = preflight(
        &base,
        agent,
        json!({"intent_id": Uuid::new_v4(), "operation": ""}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_field");
    // An unknown intent: a deny, not an error.
    let (status, body) = preflight(
        &base,
        agent,
        json!({"intent_id": Uuid::new_v4(), "operation": "*"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["reason_codes"], json!(["intent_not_funded"]));
    // No key: 401.
    let (status, _) = common::call(
        &base,
        Method::POST,
        "/v1/spend/preflight",
        None,
        Some(&json!({"intent_id": Uuid::new_v4(), "operation": "*"}).to_string()),
    )
    .await;
    assert_eq!(status, 401);
}

/// Every decision keeps the checks it evaluated: in verify's answer, in the stored
/// decision, in the operator's intent view and in the layer's trace.
#[tokio::test]
async fn every_decision_keeps_its_proof_trace() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let (intent, token) = fx.intent(60_000);
    let agent = fx.keys.agent.expose_secret();
    let gw = paybond_middleware_core::HttpGateway::builder(&base, fx.keys.agent.clone())
        .build()
        .unwrap();
    let run = paybond_middleware_core::PaybondAgentRun::builder(
        std::sync::Arc::new(gw),
        intent,
        token.clone(),
    )
    .bind()
    .await
    .unwrap();
    let tool = paybond_middleware_core::ToolRegistry::new()
        .with(paybond_middleware_core::tool_fn(
            BOOK,
            paybond_middleware_core::ToolPolicy::read_only(),
            |_args: Value| async move {
                Ok(
                    paybond_middleware_core::ToolOutput::new(json!({"ok": true}))
                        .with_cost_cents(12_000),
                )
            },
        ))
        .guarded(&run);
    tool.dispatch(paybond_middleware_core::ToolCall::new(
        BOOK,
        json!({"amount_cents": 12_000}),
        "c1",
    ))
    .await
    .unwrap();
    let denied = tool
        .dispatch(paybond_middleware_core::ToolCall::new(
            BOOK,
            json!({"amount_cents": 25_000}),
            "c2",
        ))
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("tool_cap_exceeded"), "{denied}");

    let entries = run.trace().entries();
    let names = |checks: &[paybond_middleware_core::wire::PolicyCheck]| {
        checks.iter().map(|c| c.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(
        names(&entries[0].checks),
        [
            "capability_token",
            "operation_allowed",
            "intent",
            "tool_in_policy",
            "per_call_cap",
            "intent_budget",
            "rolling_cap",
            "rate_limit",
            "approval_threshold"
        ]
    );
    let last = entries[1].checks.last().unwrap();
    assert_eq!(
        (last.name.as_str(), last.result.as_str()),
        ("per_call_cap", "fail")
    );

    // The stored decision answers the same, and holds no token.
    let id = entries[0].decision_id.unwrap();
    let (status, record) = common::call(
        &base,
        Method::GET,
        &format!("/v1/spend/decisions/{id}"),
        Some(agent),
        None,
    )
    .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["outcome"], "allow");
    assert_eq!(
        record["result"]["checks"].as_array().unwrap().len(),
        entries[0].checks.len()
    );
    assert!(!record.to_string().contains(token.expose_secret()));
    let (status, _) = common::call(
        &base,
        Method::GET,
        &format!("/v1/spend/decisions/{}", Uuid::new_v4()),
        Some(agent),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (_, detail) = common::call(
        &base,
        Method::GET,
        &format!("/harbor/operator/v1/intents/{intent}"),
        Some(fx.keys.operator.expose_secret()),
        None,
    )
    .await;
    let deny = &detail["decisions"][0];
    assert_eq!(deny["outcome"], "deny", "{detail}");
    assert_eq!(
        deny["checks"].as_array().unwrap().last().unwrap()["name"],
        "per_call_cap"
    );
}
