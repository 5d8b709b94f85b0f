//! The gateway against an adversarial caller, over HTTP on loopback: roles as the
//! contract gives them, bounded strings and query parameters, JSON bodies only,
//! and the state edges of intents past their deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::{BOOK, Fixture, call};
use paybond_gateway::{Clock, EngineConfig, Storage};
use reqwest::Method;
use serde_json::{Value, json};

fn verify_body(intent: uuid::Uuid, token: &str, amount: u64) -> Value {
    json!({"intent_id": intent, "token": token, "operation": BOOK,
           "requested_spend_cents": amount, "tool_name": BOOK, "vendor_id": "vendor_acme"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_answers_only_the_roles_the_contract_gives_it() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let (intent, token) = fx.intent(60_000);
    let agent = fx.keys.agent.expose_secret();
    let operator = fx.keys.operator.expose_secret();
    let admin = fx.keys.tenant_admin.expose_secret();

    // A hold to approve, and an allow to complete, made by the agent.
    let (_, held) = call(
        &base,
        Method::POST,
        "/verify",
        Some(agent),
        Some(&verify_body(intent, token.expose_secret(), 18_700).to_string()),
    )
    .await;
    assert_eq!(held["approval_required"], json!(true), "{held}");
    let approval = held["approval_request_id"].as_str().unwrap().to_owned();

    let bootstrap = json!({"operation": BOOK, "requested_spend_cents": 1000}).to_string();
    let create = json!({"allowed_tools": [BOOK], "budget_cents": 1000}).to_string();
    let verify = verify_body(intent, token.expose_secret(), 100).to_string();
    let evidence = json!({"payload": {"status": "completed", "cost_cents": 0}}).to_string();
    let complete = json!({"outcome": "released"}).to_string();

    // Agent-only routes: an operator or an admin key gets 403 and changes nothing.
    for key in [operator, admin] {
        for (method, path, body) in [
            (Method::POST, "/verify".to_owned(), Some(&verify)),
            (
                Method::POST,
                "/v1/sandbox/guardrails/bootstrap".to_owned(),
                Some(&bootstrap),
            ),
            (Method::POST, "/harbor/intents".to_owned(), Some(&create)),
            (Method::POST, format!("/harbor/intents/{intent}/fund"), None),
            (
                Method::POST,
                format!("/harbor/intents/{intent}/evidence"),
                Some(&evidence),
            ),
            (
                Method::POST,
                format!("/v1/sandbox/guardrails/{intent}/evidence"),
                Some(&evidence),
            ),
            (
                Method::POST,
                format!("/v1/spend/decisions/{}/complete", uuid::Uuid::new_v4()),
                Some(&complete),
            ),
        ] {
            let (status, body) = call(
                &base,
                method.clone(),
                &path,
                Some(key),
                body.map(String::as_str),
            )
            .await;
            assert_eq!(
                (status, body["error"].as_str()),
                (403, Some("forbidden_role")),
                "{method} {path}: {body}"
            );
        }
    }

    // Approve and deny: operators only (not agents, not tenant admins).
    for key in [agent, admin] {
        for action in ["approve", "deny"] {
            let path = format!("/v1/approvals/{approval}/{action}");
            let (status, body) = call(&base, Method::POST, &path, Some(key), None).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (403, Some("forbidden_role")),
                "{path}: {body}"
            );
        }
    }
    let (status, body) = call(
        &base,
        Method::GET,
        &format!("/v1/approvals/{approval}"),
        Some(agent),
        None,
    )
    .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("pending")),
        "{body}"
    );
    let (status, body) = call(
        &base,
        Method::POST,
        &format!("/v1/approvals/{approval}/approve"),
        Some(operator),
        None,
    )
    .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("approved")),
        "{body}"
    );

    // Keys: a tenant admin issues more (a second operator), nobody else can.
    let issue = json!({"role": "operator", "subject": "second-operator"}).to_string();
    for key in [agent, operator] {
        let (status, body) = call(
            &base,
            Method::POST,
            "/v1/admin/api-keys",
            Some(key),
            Some(&issue),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("forbidden_role")),
            "{body}"
        );
    }
    let (status, body) = call(
        &base,
        Method::POST,
        "/v1/admin/api-keys",
        Some(admin),
        Some(&issue),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let second = body["api_key"].as_str().unwrap().to_owned();
    let (_, who) = call(
        &base,
        Method::GET,
        "/v1/auth/principal",
        Some(&second),
        None,
    )
    .await;
    assert_eq!(who["service_account_role"], "operator", "{who}");
    assert_eq!(who["subject"], "second-operator", "{who}");
    let bad_role = json!({"role": "root"}).to_string();
    let (status, body) = call(
        &base,
        Method::POST,
        "/v1/admin/api-keys",
        Some(admin),
        Some(&bad_role),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("invalid_field")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strings_and_query_parameters_out_of_range_are_4xx_and_bodies_must_be_json() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let (intent, token) = fx.intent(60_000);
    let agent = fx.keys.agent.expose_secret();
    let operator = fx.keys.operator.expose_secret();

    // Every identifier of a verify is bounded; the field is named, nothing is stored.
    let long = "x".repeat(60 * 1024);
    for field in [
        "operation",
        "tool_name",
        "vendor_id",
        "agent_subject",
        "task_id",
        "workflow_id",
        "tool_call_id",
        "idempotency_key",
        "approval_token",
    ] {
        let mut body = verify_body(intent, token.expose_secret(), 100);
        body[field] = json!(long);
        let (status, answer) = call(
            &base,
            Method::POST,
            "/verify",
            Some(agent),
            Some(&body.to_string()),
        )
        .await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (422, Some("field_too_long")),
            "{field}: {answer}"
        );
        assert!(
            answer["message"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }
    // 256 bytes is still fine.
    let mut body = verify_body(intent, token.expose_secret(), 100);
    body["task_id"] = json!("t".repeat(256));
    let (status, answer) = call(
        &base,
        Method::POST,
        "/verify",
        Some(agent),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(
        (status, answer["allow"].clone()),
        (200, json!(true)),
        "{answer}"
    );
    for (path, body) in [
        (
            "/v1/sandbox/guardrails/bootstrap",
            json!({"operation": long, "requested_spend_cents": 1}),
        ),
        (
            "/harbor/intents",
            json!({"allowed_tools": [BOOK, long], "budget_cents": 1}),
        ),
    ] {
        let (status, answer) = call(
            &base,
            Method::POST,
            path,
            Some(agent),
            Some(&body.to_string()),
        )
        .await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (422, Some("field_too_long")),
            "{path}: {answer}"
        );
    }
    let (_, events) = call(
        &base,
        Method::GET,
        "/ledger/v1/events?limit=1000",
        Some(operator),
        None,
    )
    .await;
    assert!(
        !events.to_string().contains(&long[..1024]),
        "a long string reached the ledger"
    );

    // Query parameters out of range: 400 naming the parameter.
    for query in [
        "after_seq=18446744073709551615",
        "after_seq=9223372036854775808",
        "after_seq=-1",
        "limit=0",
        "limit=1001",
        "limit=99999999999999999999",
    ] {
        let path = format!("/ledger/v1/events?{query}");
        let (status, answer) = call(&base, Method::GET, &path, Some(operator), None).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("invalid_query_parameter")),
            "{path}: {answer}"
        );
        let name = query.split('=').next().unwrap();
        assert!(
            answer["message"].as_str().unwrap().contains(name),
            "{answer}"
        );
    }
    let (status, _) = call(
        &base,
        Method::GET,
        "/ledger/v1/events?after_seq=9223372036854775807&limit=1000",
        Some(operator),
        None,
    )
    .await;
    assert_eq!(status, 200);

    // A body in another media type is 415, whatever it holds.
    let client = reqwest::Client::new();
    let verify = verify_body(intent, token.expose_secret(), 100).to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/xml"),
    ] {
        let mut request = client
            .post(format!("{base}/verify"))
            .bearer_auth(agent)
            .body(verify.clone());
        if let Some(t) = content_type {
            request = request.header("content-type", t);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 415, "{content_type:?}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "unsupported_media_type", "{answer}");
    }
    for content_type in ["application/json; charset=utf-8", "Application/JSON"] {
        let response = client
            .post(format!("{base}/verify"))
            .bearer_auth(agent)
            .header("content-type", content_type)
            .body(verify.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{content_type}");
    }
    // A policy may be published as YAML.
    let response = client
        .put(format!("{base}/v1/tenant/policy"))
        .bearer_auth(fx.keys.tenant_admin.expose_secret())
        .header("content-type", "application/yaml")
        .body(paybond_policies::bundled::TENANT_OVERLAY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_are_bounded_and_answered_in_rfc_3339() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let agent = fx.keys.agent.expose_secret();
    for seconds in [json!(0), json!(31_622_401_u64), json!(u64::MAX)] {
        let body =
            json!({"allowed_tools": [BOOK], "budget_cents": 1000, "deadline_seconds": seconds});
        let (status, answer) = call(
            &base,
            Method::POST,
            "/harbor/intents",
            Some(agent),
            Some(&body.to_string()),
        )
        .await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (422, Some("deadline_out_of_range")),
            "{seconds}: {answer}"
        );
    }
    let body =
        json!({"allowed_tools": [BOOK], "budget_cents": 1000, "deadline_seconds": 31_622_400_u64});
    let (status, answer) = call(
        &base,
        Method::POST,
        "/harbor/intents",
        Some(agent),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let deadline = answer["deadline"].as_str().unwrap();
    let parsed: jiff::Timestamp = deadline.parse().expect("an RFC 3339 deadline");
    let days = (parsed - jiff::Timestamp::now())
        .total(jiff::Unit::Hour)
        .unwrap()
        / 24.0;
    assert!((365.9..366.1).contains(&days), "{deadline}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_of_an_intent_past_its_deadline_can_be_released_never_consumed() {
    let clock = Clock::manual(1_773_669_600_000);
    let mut config = EngineConfig::new(Storage::Memory);
    config.clock = clock.clone();
    let fx = Fixture::with_config(config);
    let base = common::serve(fx.engine.clone()).await;
    let agent = fx.keys.agent.expose_secret();

    let body = json!({"allowed_tools": [BOOK], "budget_cents": 60_000, "deadline_seconds": 60});
    let (_, intent) = call(
        &base,
        Method::POST,
        "/harbor/intents",
        Some(agent),
        Some(&body.to_string()),
    )
    .await;
    let id: uuid::Uuid = intent["intent_id"].as_str().unwrap().parse().unwrap();
    let token = intent["capability_token"].as_str().unwrap().to_owned();
    let mut decisions = Vec::new();
    for _ in 0..2 {
        let (_, allowed) = call(
            &base,
            Method::POST,
            "/verify",
            Some(agent),
            Some(&verify_body(id, &token, 1_000).to_string()),
        )
        .await;
        assert_eq!(allowed["allow"], json!(true), "{allowed}");
        decisions.push(allowed["decision_id"].as_str().unwrap().to_owned());
    }

    // Past the deadline (reservations live 5 minutes, so both are still open).
    clock.advance_ms(61_000);
    let consume = json!({"outcome": "consumed", "actual_spend_cents": 1_000}).to_string();
    let path = format!("/v1/spend/decisions/{}/complete", decisions[0]);
    let (status, answer) = call(&base, Method::POST, &path, Some(agent), Some(&consume)).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (409, Some("intent_closed")),
        "{answer}"
    );
    // After the sweep refunded the intent, too.
    let report = fx.engine.sweep().await.unwrap();
    assert_eq!(report.intents_closed, 1);
    let path = format!("/v1/spend/decisions/{}/complete", decisions[1]);
    let (status, answer) = call(&base, Method::POST, &path, Some(agent), Some(&consume)).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (409, Some("intent_closed")),
        "{answer}"
    );
    for decision in &decisions {
        let path = format!("/v1/spend/decisions/{decision}/complete");
        let (status, answer) = call(
            &base,
            Method::POST,
            &path,
            Some(agent),
            Some(&json!({"outcome": "released"}).to_string()),
        )
        .await;
        assert_eq!(
            (status, answer["outcome"].as_str()),
            (200, Some("released")),
            "{answer}"
        );
    }
    let (_, view) = call(
        &base,
        Method::GET,
        &format!("/harbor/intents/{id}"),
        Some(agent),
        None,
    )
    .await;
    assert_eq!(
        (
            view["consumed_cents"].clone(),
            view["reserved_cents"].clone()
        ),
        (json!(0), json!(0)),
        "{view}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_a_finalized_decision_another_way_is_409_whatever_the_amount() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let agent = fx.keys.agent.expose_secret();
    let (intent, token) = fx.intent(60_000);
    let (_, allowed) = call(
        &base,
        Method::POST,
        "/verify",
        Some(agent),
        Some(&verify_body(intent, token.expose_secret(), 5_000).to_string()),
    )
    .await;
    let path = format!(
        "/v1/spend/decisions/{}/complete",
        allowed["decision_id"].as_str().unwrap()
    );
    let first = json!({"outcome": "consumed", "actual_spend_cents": 4_000}).to_string();
    let (status, _) = call(&base, Method::POST, &path, Some(agent), Some(&first)).await;
    assert_eq!(status, 200);
    for again in [
        json!({"outcome": "consumed", "actual_spend_cents": 4_500}),
        json!({"outcome": "consumed", "actual_spend_cents": 99_999_999}),
        json!({"outcome": "released", "actual_spend_cents": 0}),
        json!({"outcome": "released"}),
    ] {
        let (status, answer) = call(
            &base,
            Method::POST,
            &path,
            Some(agent),
            Some(&again.to_string()),
        )
        .await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (409, Some("decision_already_finalized")),
            "{again}: {answer}"
        );
    }
    let (status, answer) = call(&base, Method::POST, &path, Some(agent), Some(&first)).await;
    assert_eq!(
        (status, answer["actual_spend_cents"].clone()),
        (200, json!(4_000)),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_flood_the_approval_queue_and_operators_page_through_it() {
    let clock = Clock::manual(1_773_669_600_000);
    let mut config = EngineConfig::new(Storage::Memory);
    config.clock = clock.clone();
    config.approval_requests_per_agent_per_minute = 25;
    config.pending_approvals_per_intent = 16;
    config.default_org_policy = None;
    config.default_tenant_policy = Some(paybond_gateway::PolicyFile {
        text: format!(
            "version: 1\nname: flood\ndefault_deny: true\ntools:\n  {BOOK}: {{side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}}\nspend_controls:\n  tools:\n    {BOOK}: {{approval_threshold_cents: 1000}}\n"
        ),
        file: "flood.yaml".to_owned(),
    });
    let fx = Fixture::with_config(config);
    let base = common::serve(fx.engine.clone()).await;
    let agent = fx.keys.agent.expose_secret();
    let operator = fx.keys.operator.expose_secret();
    let (a, token_a) = fx.intent(1_000_000);
    let (b, token_b) = fx.intent(1_000_000);

    let hold = |intent: uuid::Uuid, token: String, amount: u64| {
        let (base, clock) = (base.clone(), clock.clone());
        async move {
            clock.advance_ms(1);
            let body = verify_body(intent, &token, amount).to_string();
            call(&base, Method::POST, "/verify", Some(agent), Some(&body))
                .await
                .1
        }
    };
    // Intent A: sixteen holds wait at once; the seventeenth is refused, and nothing is opened.
    let mut opened = Vec::new();
    for i in 0..16 {
        let answer = hold(a, token_a.expose_secret().to_owned(), 2_000 + i).await;
        assert_eq!(answer["approval_required"], json!(true), "{answer}");
        opened.push(answer["approval_request_id"].as_str().unwrap().to_owned());
    }
    let refused = hold(a, token_a.expose_secret().to_owned(), 3_000).await;
    assert_eq!(refused["allow"], json!(false));
    assert_eq!(
        refused["reason_codes"],
        json!(["approval_rate_limited"]),
        "{refused}"
    );
    assert!(refused["approval_request_id"].is_null(), "{refused}");
    assert!(
        refused["retry_after"].as_u64().is_some_and(|s| s > 0),
        "{refused}"
    );
    // The same request again is the same approval, not a new one (and not refused).
    let again = hold(a, token_a.expose_secret().to_owned(), 2_000).await;
    assert_eq!(
        again["approval_request_id"].as_str(),
        Some(opened[0].as_str()),
        "{again}"
    );

    // Intent B: the agent key's 25 per minute run out after 9 more.
    for i in 0..9 {
        let answer = hold(b, token_b.expose_secret().to_owned(), 5_000 + i).await;
        assert_eq!(answer["approval_required"], json!(true), "{i}: {answer}");
        opened.push(answer["approval_request_id"].as_str().unwrap().to_owned());
    }
    let refused = hold(b, token_b.expose_secret().to_owned(), 9_000).await;
    assert_eq!(
        refused["reason_codes"],
        json!(["approval_rate_limited"]),
        "{refused}"
    );
    assert!(
        refused["message"].as_str().unwrap().contains("agent key"),
        "{refused}"
    );
    // A minute later the agent may ask again (intent A is still full).
    clock.advance_ms(60_000);
    let answer = hold(b, token_b.expose_secret().to_owned(), 9_000).await;
    assert_eq!(answer["approval_required"], json!(true), "{answer}");
    let genuine = answer["approval_request_id"].as_str().unwrap().to_owned();
    opened.push(genuine.clone());
    let refused = hold(a, token_a.expose_secret().to_owned(), 9_001).await;
    assert_eq!(
        refused["reason_codes"],
        json!(["approval_rate_limited"]),
        "{refused}"
    );

    // Operators page through all 26, newest first: the latest hold is on page one.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/approvals?state=pending&limit=7&cursor={c}"),
            None => "/v1/approvals?state=pending&limit=7".to_owned(),
        };
        let (status, page) = call(&base, Method::GET, &path, Some(operator), None).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let ids: Vec<String> = page["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["approval_request_id"].as_str().unwrap().to_owned())
            .collect();
        assert!(ids.len() <= 7);
        seen.extend(ids);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(seen[0], genuine);
    let mut newest_first = opened.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let (_, oldest) = call(
        &base,
        Method::GET,
        "/v1/approvals?state=pending&order=oldest&limit=500",
        Some(operator),
        None,
    )
    .await;
    let oldest: Vec<&str> = oldest["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["approval_request_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        oldest,
        opened.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for bad in [
        "cursor=nope",
        "cursor=12.not-a-uuid",
        "limit=0",
        "limit=501",
        "order=random",
    ] {
        let (status, answer) = call(
            &base,
            Method::GET,
            &format!("/v1/approvals?{bad}"),
            Some(operator),
            None,
        )
        .await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }
}
