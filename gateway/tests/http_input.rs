//! Bad input over HTTP: each gets the right 4xx and code in the error envelope, never a 5xx.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::{Fixture, call};
use reqwest::Method;
use serde_json::{Value, json};

fn assert_envelope(body: &Value, code: &str) {
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_4xx_and_code() {
    let fx = Fixture::new();
    let other = fx
        .engine
        .create_tenant("other", paybond_middleware_core::wire::Environment::Sandbox)
        .await
        .unwrap();
    let base = common::serve(fx.engine.clone()).await;
    let agent = fx.keys.agent.expose_secret();
    let (intent, token) = fx.intent(60_000);
    let (other_intent, other_token) = {
        let p = fx
            .engine
            .authenticate(other.agent.expose_secret())
            .await
            .unwrap();
        let r = fx
            .engine
            .bootstrap_sandbox(
                &p,
                &paybond_middleware_core::wire::SandboxBootstrapRequest {
                    operation: common::BOOK.into(),
                    requested_spend_cents: 1000,
                    currency: None,
                    evidence_schema: None,
                    metadata: None,
                    idempotency_key: None,
                },
            )
            .await
            .unwrap();
        (r.intent_id, r.capability_token)
    };
    let verify = |intent: uuid::Uuid, token: &str, amount: Value| {
        json!({"intent_id": intent, "token": token, "operation": common::BOOK,
               "requested_spend_cents": amount, "tool_name": common::BOOK})
        .to_string()
    };
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(70 * 1024));
    // (method, path, key, body, expected status, expected code)
    type Case<'a> = (
        Method,
        String,
        Option<&'a str>,
        Option<String>,
        u16,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        // Credentials.
        (Method::POST, "/verify".into(), None, Some(verify(intent, token.expose_secret(), json!(1))), 401, "unauthorized"),
        (Method::POST, "/verify".into(), Some("paybond_sk_sandbox_nope"), Some(verify(intent, token.expose_secret(), json!(1))), 401, "unauthorized"),
        // Without a valid key, nothing is said about the body.
        (Method::POST, "/verify".into(), None, Some("not json".into()), 401, "unauthorized"),
        (Method::POST, "/verify".into(), Some("paybond_sk_sandbox_nope"), Some("{}".into()), 401, "unauthorized"),
        // Malformed JSON, wrong types, missing fields, unknown enum values.
        (Method::POST, "/verify".into(), Some(agent), Some("{\"intent_id\": ".into()), 400, "malformed_json"),
        (Method::POST, "/verify".into(), Some(agent), Some("not json".into()), 400, "malformed_json"),
        (Method::POST, "/verify".into(), Some(agent), Some(verify(intent, token.expose_secret(), json!("12"))), 422, "invalid_field"),
        (Method::POST, "/verify".into(), Some(agent), Some(verify(intent, token.expose_secret(), json!(-5))), 422, "invalid_field"),
        (Method::POST, "/verify".into(), Some(agent), Some(json!({"intent_id": intent, "token": "t"}).to_string()), 422, "invalid_field"),
        (Method::POST, "/verify".into(), Some(agent), Some(json!({"intent_id": "nope", "token": "t", "operation": "o", "requested_spend_cents": 1}).to_string()), 422, "invalid_field"),
        (Method::POST, "/verify".into(), Some(agent), Some(verify(intent, token.expose_secret(), json!(2_000_000_000_000_u64))), 422, "amount_out_of_range"),
        (Method::POST, format!("/v1/spend/decisions/{}/complete", uuid::Uuid::new_v4()), Some(agent), Some("{\"outcome\": \"spent\"}".into()), 422, "invalid_field"),
        // Oversized body.
        (Method::POST, "/verify".into(), Some(agent), Some(big), 413, "body_too_large"),
        // Unknown routes and methods, bad path parameters.
        (Method::GET, "/v2/nothing".into(), Some(agent), None, 404, "route_not_found"),
        (Method::DELETE, "/verify".into(), Some(agent), None, 405, "method_not_allowed"),
        (Method::GET, "/v1/approvals/not-a-uuid".into(), Some(agent), None, 400, "invalid_path_parameter"),
        (Method::GET, "/v1/approvals?state=maybe".into(), Some(agent), None, 400, "invalid_query_parameter"),
        (Method::GET, "/ledger/v1/events?after_seq=x".into(), Some(fx.keys.operator.expose_secret()), None, 400, "invalid_query_parameter"),
        // Roles: an agent can never approve, nor read the ledger, nor publish policy.
        (Method::POST, format!("/v1/approvals/{}/approve", uuid::Uuid::new_v4()), Some(agent), None, 403, "forbidden_role"),
        (Method::GET, "/ledger/v1/tip".into(), Some(agent), None, 403, "forbidden_role"),
        (Method::PUT, "/v1/tenant/policy".into(), Some(agent), Some("version: 1\nname: p\n".into()), 403, "forbidden_role"),
        // Another tenant's intent: not found for this tenant.
        (Method::GET, format!("/harbor/intents/{other_intent}"), Some(agent), None, 404, "intent_not_found"),
        (Method::POST, format!("/v1/sandbox/guardrails/{other_intent}/evidence"), Some(agent), Some("{}".into()), 404, "intent_not_found"),
        // A bad policy is refused whole with every problem.
        (Method::PUT, "/v1/tenant/policy".into(), Some(fx.keys.tenant_admin.expose_secret()), Some("version: 3\nname: Bad\n".into()), 422, "policy_invalid"),
    ];
    for (method, path, key, body, status, code) in cases {
        let (got, body_json) = call(&base, method.clone(), &path, key, body.as_deref()).await;
        assert_eq!(got, status, "{method} {path}: {body_json}");
        assert_envelope(&body_json, code);
    }

    // A wrong x-tenant-id is 403.
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/auth/principal"))
        .bearer_auth(agent)
        .header("x-tenant-id", &other.tenant_id)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_envelope(&resp.json().await.unwrap(), "tenant_mismatch");

    // A token from another tenant's intent, or presented for another intent: 200, denied.
    let (status, body) = call(
        &base,
        Method::POST,
        "/verify",
        Some(agent),
        Some(&verify(intent, other_token.expose_secret(), json!(1))),
    )
    .await;
    assert_eq!((status, body["allow"].clone()), (200, json!(false)));
    assert_eq!(body["reason_codes"], json!(["capability_intent_mismatch"]));
    let (status, body) = call(
        &base,
        Method::POST,
        "/verify",
        Some(agent),
        Some(&verify(other_intent, token.expose_secret(), json!(1))),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["reason_codes"], json!(["capability_intent_mismatch"]));
    // Unknown extra fields are accepted and ignored.
    let mut extra: Value =
        serde_json::from_str(&verify(intent, token.expose_secret(), json!(100))).unwrap();
    extra["future_field"] = json!({"x": 1});
    let (status, body) = call(
        &base,
        Method::POST,
        "/verify",
        Some(agent),
        Some(&extra.to_string()),
    )
    .await;
    assert_eq!(
        (status, body["allow"].clone()),
        (200, json!(true)),
        "{body}"
    );

    // The field is named in the message.
    let (_, body) = call(
        &base,
        Method::POST,
        "/verify",
        Some(agent),
        Some(&verify(intent, token.expose_secret(), json!("12"))),
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("requested_spend_cents"),
        "{body}"
    );

    // The error envelope never echoes a secret.
    let (_, body) = call(
        &base,
        Method::POST,
        "/verify",
        Some("paybond_sk_sandbox_SECRET123"),
        Some("{}"),
    )
    .await;
    assert!(!body.to_string().contains("SECRET123"));

    // Health, metrics and the OpenAPI document need no key.
    let (status, body) = call(&base, Method::GET, "/healthz", None, None).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("paybond_decisions_total{outcome=\"deny\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("paybond_decisions_total{outcome=\"allow\"} 1"),
        "{metrics}"
    );
    let reasons: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("paybond_decision_reasons_total{outcome=\"deny\",reason=\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(reasons, 2, "both denies by their reason: {metrics}");
    assert!(!metrics.contains("outcome=\"allow\",reason"), "{metrics}");
    assert!(metrics.contains("paybond_open_reservations 1"), "{metrics}");
    assert!(
        metrics.contains("paybond_verify_duration_seconds_count 3"),
        "{metrics}"
    );
    // The store's commits (an in-memory store has no fsync to count).
    let commits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("paybond_store_commit_operations_count "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(commits >= 3, "{metrics}");
    assert!(
        metrics.contains("# TYPE paybond_store_commit_duration_seconds histogram"),
        "{metrics}"
    );
    assert!(!metrics.contains("paybond_store_fsync"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_and_checked_in_openapi_documents_match_the_router() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let generated = paybond_gateway::openapi::document();
    let (status, served) = call(&base, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(served, generated);

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
    if std::env::var_os("PAYBOND_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    assert!(
        std::fs::read_to_string(&path).unwrap_or_default() == text,
        "gateway/openapi.json is out of date: rerun the tests with PAYBOND_UPDATE_SNAPSHOTS=1"
    );

    // Every documented route is routed (no route_not_found / method_not_allowed), and
    // the document lists every route the contract names.
    for route in paybond_gateway::openapi::ROUTES {
        let concrete = route
            .path
            .replace("{org_policy_id}", "paybond-travel-org")
            .replace(['{', '}'], "")
            .replace("decision_id", &uuid::Uuid::new_v4().to_string())
            .replace("approval_request_id", &uuid::Uuid::new_v4().to_string())
            .replace("intent_id", &uuid::Uuid::new_v4().to_string())
            .replace("job_id", &uuid::Uuid::new_v4().to_string());
        let method = Method::from_bytes(route.method.as_bytes()).unwrap();
        let (status, body) = call(
            &base,
            method,
            &concrete,
            Some(fx.keys.operator.expose_secret()),
            Some("{}"),
        )
        .await;
        assert!(
            !matches!(
                body["error"].as_str(),
                Some("route_not_found" | "method_not_allowed")
            ),
            "{} {}: {status} {body}",
            route.method,
            route.path
        );
        assert!(
            status < 500,
            "{} {}: {status} {body}",
            route.method,
            route.path
        );
    }
    assert_eq!(paybond_gateway::openapi::ROUTES.len(), 45);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlay_that_loosens_the_org_spend_controls_is_refused_whole() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let admin = fx.keys.tenant_admin.expose_secret();
    let (_, before) = call(
        &base,
        Method::GET,
        "/v1/policy/effective",
        Some(admin),
        None,
    )
    .await;
    // The org base allows 50000 per call and holds above 25000.
    let looser = paybond_policies::bundled::TENANT_OVERLAY
        .replace("max_per_call_cents: 20000", "max_per_call_cents: 90000")
        .replace(
            "approval_threshold_cents: 15000",
            "approval_threshold_cents: 30000",
        );
    assert_ne!(looser, paybond_policies::bundled::TENANT_OVERLAY);
    let (status, answer) = call(
        &base,
        Method::PUT,
        "/v1/tenant/policy",
        Some(admin),
        Some(&looser),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert_envelope(&answer, "policy_invalid");
    let message = answer["message"].as_str().unwrap();
    for code in [
        "policy.cannot_raise_spend_cap",
        "policy.cannot_raise_approval_threshold",
    ] {
        assert!(message.contains(code), "{message}");
    }
    let (_, after) = call(
        &base,
        Method::GET,
        "/v1/policy/effective",
        Some(admin),
        None,
    )
    .await;
    assert_eq!(
        before, after,
        "a refused overlay changed the effective policy"
    );
}
