//! `HttpGateway` against a wiremock server: auth, tenant and idempotency headers,
//! retries, echo checks and fail-closed errors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches panic on setup failures

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use paybond_middleware_core::http::RetryPolicy;
use paybond_middleware_core::wire::{
    ApprovalState, CompleteRequest, EvidenceRequest, Finalization, SandboxBootstrapRequest,
    VerifyRequest,
};
use paybond_middleware_core::{
    ApiKey, CapabilityToken, GatewayError, GatewayErrorKind, HttpGateway, SpendGateway,
};
use serde_json::{Value, json};
use uuid::Uuid;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "paybond_sk_sandbox_KEYSECRET";
const TOKEN: &str = "biscuit-TOKENSECRET";
const TENANT: &str = "tenant_a";

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        max_retry_after: Duration::from_millis(200),
    }
}

fn client(server: &MockServer) -> HttpGateway {
    HttpGateway::builder(server.uri(), ApiKey::new(KEY))
        .retry(fast_retries())
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

async fn mount_principal(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/v1/auth/principal"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "tenant_id": TENANT, "environment": "sandbox", "service_account_role": "agent",
            "roles": ["agent"], "subject": "svc-agent", "key_id": "key_1"
        })))
        .mount(server)
        .await;
}

fn verify_request(intent: Uuid) -> VerifyRequest {
    VerifyRequest {
        tool_call_id: Some("call_2".into()),
        tool_name: Some("travel.book_hotel".into()),
        currency: Some("usd".into()),
        ..VerifyRequest::new(
            intent,
            CapabilityToken::new(TOKEN),
            "travel.book_hotel",
            12_000,
        )
    }
}

fn allow(intent: Uuid) -> Value {
    json!({
        "allow": true, "tenant": TENANT, "intent_id": intent, "code": "allowed",
        "decision_id": Uuid::new_v4(), "reason_codes": [], "audit_id": "a1"
    })
}

fn requests_to(received: &[Request], route: &str) -> Vec<Request> {
    received
        .iter()
        .filter(|r| r.url.path() == route)
        .cloned()
        .collect()
}

#[tokio::test]
async fn verify_sends_auth_tenant_and_one_idempotency_key_in_header_and_body() {
    let server = MockServer::start().await;
    mount_principal(&server).await;
    let intent = Uuid::new_v4();
    Mock::given(method("POST"))
        .and(path("/verify"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("x-tenant-id", TENANT))
        .and(body_partial_json(
            json!({"intent_id": intent, "token": TOKEN, "requested_spend_cents": 12000}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(allow(intent)))
        .expect(1)
        .mount(&server)
        .await;
    let gateway = client(&server);
    let result = gateway.verify(&verify_request(intent)).await.unwrap();
    assert!(result.allow);
    server.verify().await;

    let received = server.received_requests().await.unwrap();
    let principal = &requests_to(&received, "/v1/auth/principal")[0];
    assert!(
        principal.headers.get("x-tenant-id").is_none(),
        "the tenant is not known before the lookup"
    );
    let verify = &requests_to(&received, "/verify")[0];
    let header_key = verify
        .headers
        .get("idempotency-key")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = serde_json::from_slice(&verify.body).unwrap();
    assert_eq!(body["idempotency_key"], header_key.as_str());
    assert!(Uuid::parse_str(&header_key).is_ok());
}

#[tokio::test]
async fn retries_429_and_5xx_with_the_same_idempotency_key() {
    for status in [429u16, 500, 502, 503, 504] {
        let server = MockServer::start().await;
        mount_principal(&server).await;
        let intent = Uuid::new_v4();
        Mock::given(method("POST"))
            .and(path("/verify"))
            .respond_with(
                ResponseTemplate::new(status)
                    .set_body_json(json!({"error": "busy", "message": "", "request_id": "r"})),
            )
            .up_to_n_times(2)
            .with_priority(1)
            .expect(2)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/verify"))
            .respond_with(ResponseTemplate::new(200).set_body_json(allow(intent)))
            .expect(1)
            .mount(&server)
            .await;
        let gateway = client(&server);
        let mut request = verify_request(intent);
        request.idempotency_key = Some("attempt-key-1".into());
        assert!(
            gateway.verify(&request).await.unwrap().allow,
            "status {status}"
        );
        server.verify().await;
        let received = server.received_requests().await.unwrap();
        let keys: Vec<_> = requests_to(&received, "/verify")
            .iter()
            .map(|r| {
                r.headers
                    .get("idempotency-key")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(keys, ["attempt-key-1"; 3], "status {status}");
    }
}

#[tokio::test]
async fn a_key_is_generated_once_per_call_when_the_caller_gives_none() {
    let server = MockServer::start().await;
    mount_principal(&server).await;
    let intent = Uuid::new_v4();
    Mock::given(method("POST"))
        .and(path("/verify"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/verify"))
        .respond_with(ResponseTemplate::new(200).set_body_json(allow(intent)))
        .mount(&server)
        .await;
    let gateway = client(&server);
    gateway.verify(&verify_request(intent)).await.unwrap();
    gateway.verify(&verify_request(intent)).await.unwrap();
    let received = server.received_requests().await.unwrap();
    let keys: Vec<_> = requests_to(&received, "/verify")
        .iter()
        .map(|r| {
            r.headers
                .get("idempotency-key")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[0], keys[1], "the retry reuses the call's key");
    assert_ne!(keys[1], keys[2], "a new call gets a new key");
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_its_bound() {
    let server = MockServer::start().await;
    mount_principal(&server).await;
    let intent = Uuid::new_v4();
    Mock::given(method("POST"))
        .and(path("/verify"))
        // Far above the client's 200 ms bound: the client must cap it.
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "30"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/verify"))
        .respond_with(ResponseTemplate::new(200).set_body_json(allow(intent)))
        .mount(&server)
        .await;
    let gateway = client(&server);
    gateway.principal().await.unwrap();
    let started = Instant::now();
    gateway.verify(&verify_request(intent)).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "waited {waited:?}, less than Retry-After's bound"
    );
    assert!(
        waited < Duration::from_secs(10),
        "waited {waited:?}: Retry-After was not bounded"
    );
}

#[tokio::test]
async fn other_4xx_are_not_retried_and_keep_the_envelope() {
    for (status, code) in [
        (400u16, "invalid_request"),
        (401, "unauthorized"),
        (403, "forbidden"),
        (404, "not_found"),
        (409, "idempotency_key_reused"),
        (422, "invalid_amount"),
    ] {
        let server = MockServer::start().await;
        mount_principal(&server).await;
        Mock::given(method("POST"))
            .and(path("/verify"))
            .respond_with(ResponseTemplate::new(status).set_body_json(json!({
                "error": code, "message": "explained", "request_id": "req_9"
            })))
            .expect(1)
            .mount(&server)
            .await;
        let err = client(&server)
            .verify(&verify_request(Uuid::new_v4()))
            .await
            .unwrap_err();
        server.verify().await;
        assert_eq!(err.kind(), GatewayErrorKind::Rejected);
        assert_eq!((err.status(), err.code()), (Some(status), Some(code)));
        let GatewayError::Rejected {
            request_id,
            message,
            ..
        } = &err
        else {
            unreachable!()
        };
        assert_eq!(
            (request_id.as_deref(), message.as_str()),
            (Some("req_9"), "explained")
        );
    }
}

#[tokio::test]
async fn retries_are_bounded() {
    let server = MockServer::start().await;
    mount_principal(&server).await;
    Mock::given(method("POST"))
        .and(path("/verify"))
        .respond_with(ResponseTemplate::new(503))
        .expect(4)
        .mount(&server)
        .await;
    let err = client(&server)
        .verify(&verify_request(Uuid::new_v4()))
        .await
        .unwrap_err();
    server.verify().await;
    let GatewayError::RetriesExhausted { attempts, last, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*attempts, 4);
    assert!(last.contains("503"), "{last}");
}

#[tokio::test]
async fn a_different_echoed_tenant_or_intent_is_refused_and_not_retried() {
    let intent = Uuid::new_v4();
    for (body, field) in [
        (
            json!({"allow": true, "tenant": "tenant_b", "intent_id": intent, "decision_id": Uuid::new_v4()}),
            "tenant",
        ),
        (
            json!({"allow": true, "tenant": TENANT, "intent_id": Uuid::new_v4(), "decision_id": Uuid::new_v4()}),
            "intent_id",
        ),
    ] {
        let server = MockServer::start().await;
        mount_principal(&server).await;
        Mock::given(method("POST"))
            .and(path("/verify"))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(1)
            .mount(&server)
            .await;
        let err = client(&server)
            .verify(&verify_request(intent))
            .await
            .unwrap_err();
        server.verify().await;
        let GatewayError::EchoMismatch { field: got, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*got, field);
    }

    // A principal that changes tenant under a client bound to another is refused too.
    let server = MockServer::start().await;
    mount_principal(&server).await;
    let gateway = HttpGateway::builder(server.uri(), ApiKey::new(KEY))
        .tenant_id("tenant_z")
        .build()
        .unwrap();
    let err = gateway.principal().await.unwrap_err();
    assert_eq!(err.kind(), GatewayErrorKind::EchoMismatch);
}

#[tokio::test]
async fn malformed_answers_fail_closed() {
    for body in [
        ResponseTemplate::new(200).set_body_string("<html>gateway</html>"),
        ResponseTemplate::new(200).set_body_json(json!({"tenant": TENANT})),
        ResponseTemplate::new(200)
            .set_body_json(json!({"allow": "yes", "tenant": TENANT, "intent_id": Uuid::nil()})),
        ResponseTemplate::new(200),
    ] {
        let server = MockServer::start().await;
        mount_principal(&server).await;
        Mock::given(method("POST"))
            .and(path("/verify"))
            .respond_with(body)
            .expect(1)
            .mount(&server)
            .await;
        let err = client(&server)
            .verify(&verify_request(Uuid::nil()))
            .await
            .unwrap_err();
        server.verify().await;
        assert_eq!(err.kind(), GatewayErrorKind::Malformed, "{err}");
    }
}

#[tokio::test]
async fn unreachable_and_slow_gateways_fail_closed() {
    // Nothing listens on this port once the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gateway = HttpGateway::builder(format!("http://127.0.0.1:{port}"), ApiKey::new(KEY))
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let err = gateway.principal().await.unwrap_err();
    assert_eq!(err.kind(), GatewayErrorKind::Transport, "{err}");
    let retried = HttpGateway::builder(format!("http://127.0.0.1:{port}"), ApiKey::new(KEY))
        .retry(fast_retries())
        .build()
        .unwrap();
    let err = retried.principal().await.unwrap_err();
    let GatewayError::RetriesExhausted { attempts, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*attempts, 4);

    let server = MockServer::start().await;
    mount_principal(&server).await;
    Mock::given(method("POST"))
        .and(path("/verify"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(allow(Uuid::nil()))
                .set_delay(Duration::from_secs(3)),
        )
        .expect(1)
        .mount(&server)
        .await;
    let err = client(&server)
        .verify(&verify_request(Uuid::nil()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GatewayErrorKind::Timeout, "{err}");
}

#[tokio::test]
async fn complete_evidence_approvals_and_bootstrap_use_their_routes() {
    let server = MockServer::start().await;
    mount_principal(&server).await;
    let intent = Uuid::new_v4();
    let decision = Uuid::new_v4();
    let approval = Uuid::new_v4();
    Mock::given(method("POST"))
        .and(path(format!("/v1/spend/decisions/{decision}/complete")))
        .and(header(
            "idempotency-key",
            format!("{decision}:complete").as_str(),
        ))
        .and(header("x-tenant-id", TENANT))
        .and(body_partial_json(
            json!({"outcome": "consumed", "actual_spend_cents": 18700}),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"decision_id": decision, "outcome": "consumed"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/v1/sandbox/guardrails/{intent}/evidence")))
        .and(header("idempotency-key", "ev-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "tenant_id": TENANT, "intent_id": intent, "operation": "travel.book_hotel",
            "requested_spend_cents": 60_000, "sandbox_lifecycle_status": "evidence_submitted", "predicate_passed": true
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v1/approvals/{approval}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "approval_request_id": approval, "state": "approved", "approval_token": "appr-TOKEN", "approvals": 1, "quorum": 1
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/sandbox/guardrails/bootstrap"))
        .and(body_partial_json(json!({"operation": "travel.book_hotel", "requested_spend_cents": 60000})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "tenant_id": TENANT, "intent_id": intent, "operation": "travel.book_hotel",
            "requested_spend_cents": 60000, "sandbox_lifecycle_status": "funded", "capability_token": TOKEN
        })))
        .expect(1)
        .mount(&server)
        .await;

    let gateway = client(&server);
    let completed = gateway
        .complete_decision(
            decision,
            &CompleteRequest {
                outcome: Finalization::Consumed,
                actual_spend_cents: Some(18_700),
            },
            &format!("{decision}:complete"),
        )
        .await
        .unwrap();
    assert_eq!(completed.outcome, Some(Finalization::Consumed));
    let evidence = gateway
        .submit_evidence(intent, &EvidenceRequest::default(), "ev-1")
        .await
        .unwrap();
    assert!(evidence.predicate_passed);
    assert_eq!(
        (evidence.operation.as_str(), evidence.requested_spend_cents),
        ("travel.book_hotel", 60_000)
    );
    let status = gateway.approval_status(approval).await.unwrap();
    assert_eq!(status.state, ApprovalState::Approved);
    assert_eq!(status.approval_token.unwrap().expose_secret(), "appr-TOKEN");
    let boot = gateway
        .bootstrap_sandbox(&SandboxBootstrapRequest {
            operation: "travel.book_hotel".into(),
            requested_spend_cents: 60_000,
            currency: None,
            evidence_schema: None,
            metadata: None,
            idempotency_key: None,
        })
        .await
        .unwrap();
    assert_eq!(boot.intent_id, intent);
    server.verify().await;

    // A complete answer naming another decision is a tenant-isolation failure.
    let other = Uuid::new_v4();
    Mock::given(method("POST"))
        .and(path(format!("/v1/spend/decisions/{other}/complete")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"decision_id": decision})))
        .mount(&server)
        .await;
    let err = gateway
        .complete_decision(
            other,
            &CompleteRequest {
                outcome: Finalization::Released,
                actual_spend_cents: None,
            },
            "k",
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GatewayErrorKind::EchoMismatch);
}

#[tokio::test]
async fn secrets_echoed_by_a_gateway_are_redacted_from_errors() {
    let server = MockServer::start().await;
    mount_principal(&server).await;
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&hits);
    Mock::given(method("POST"))
        .and(path("/verify"))
        .respond_with(move |req: &Request| {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = String::from_utf8_lossy(&req.body).into_owned();
            ResponseTemplate::new(400).set_body_json(json!({
                "error": "bad_request",
                "message": format!("could not parse {body} with key {KEY}"),
                "request_id": "r1"
            }))
        })
        .mount(&server)
        .await;
    let err = client(&server)
        .verify(&verify_request(Uuid::nil()))
        .await
        .unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("[redacted]"), "{shown}");
    assert!(!shown.contains(TOKEN) && !shown.contains(KEY), "{shown}");
}
