//! Capability tokens, approval tokens and API keys never show in logs, spans,
//! errors, `Debug` output or the run trace, over a real HTTP round trip.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches panic on setup failures

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paybond_middleware_core::http::RetryPolicy;
use paybond_middleware_core::{
    ApiKey, ApprovalToken, HttpGateway, PaybondAgentRun, RunError, ToolCall, ToolOutput,
};
use paybond_policies::ToolPolicy;
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt, service_fn};
use tracing_subscriber::fmt::MakeWriter;
use uuid::Uuid;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "paybond_sk_sandbox_K3Y-S3CR3T";
const TOKEN: &str = "biscuit-T0K3N-S3CR3T";
const APPROVAL: &str = "appr-APPR0VAL-S3CR3T";
const TENANT: &str = "tenant_a";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A gateway that decides by tool call id, echoes request bodies in its error
/// messages (as a careless server might), and needs the approval token for `hold`.
async fn gateway_server(intent: Uuid) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/auth/principal"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "tenant_id": TENANT, "environment": "sandbox", "service_account_role": "agent"
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/verify"))
        .respond_with(move |req: &Request| {
            let body: Value = serde_json::from_slice(&req.body).unwrap();
            let base =
                json!({"tenant": TENANT, "intent_id": intent, "decision_id": Uuid::new_v4()});
            let mut answer = base.as_object().unwrap().clone();
            match body["tool_call_id"].as_str().unwrap() {
                "hold" if body["approval_token"] != APPROVAL => {
                    answer.insert("allow".into(), json!(false));
                    answer.insert("approval_required".into(), json!(true));
                    answer.insert("approval_request_id".into(), json!(Uuid::new_v4()));
                    answer.insert(
                        "reason_codes".into(),
                        json!(["approval_threshold_exceeded"]),
                    );
                }
                "deny" => {
                    answer.insert("allow".into(), json!(false));
                    answer.insert("reason_codes".into(), json!(["tool_cap_exceeded"]));
                }
                "bad" => {
                    return ResponseTemplate::new(422).set_body_json(json!({
                        "error": "invalid_request",
                        "message": format!("rejected body {}", String::from_utf8_lossy(&req.body)),
                        "request_id": "r1"
                    }));
                }
                "down" => return ResponseTemplate::new(503),
                _ => {
                    answer.insert("allow".into(), json!(true));
                }
            }
            ResponseTemplate::new(200).set_body_json(Value::Object(answer))
        })
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex("^/v1/spend/decisions/.+/complete$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex("^/v1/sandbox/guardrails/.+/evidence$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "tenant_id": TENANT, "intent_id": intent,
            "sandbox_lifecycle_status": "evidence_submitted", "predicate_passed": true
        })))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn no_secret_reaches_logs_errors_debug_or_the_trace() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let intent = Uuid::new_v4();
    let server = gateway_server(intent).await;
    let gateway = HttpGateway::builder(server.uri(), ApiKey::new(KEY))
        .retry(RetryPolicy {
            max_retries: 1,
            base_backoff: Duration::from_millis(1),
            ..RetryPolicy::default()
        })
        .build()
        .unwrap();
    let run = PaybondAgentRun::builder(Arc::new(gateway.clone()), intent, TOKEN.into())
        .tool(
            "travel.book_hotel",
            ToolPolicy::side_effecting("cost_and_completion").with_max_spend_cents(20_000),
        )
        .bind()
        .await
        .unwrap();
    let mut svc = run.layer(service_fn(|_call: ToolCall| async {
        Ok::<_, std::convert::Infallible>(
            ToolOutput::new(json!({"booked": true})).with_cost_cents(100),
        )
    }));

    let mut shown = Vec::new();
    for id in ["allow", "hold", "deny", "bad", "down"] {
        let result = svc
            .ready()
            .await
            .unwrap()
            .call(ToolCall::new("travel.book_hotel", json!({}), id))
            .await;
        match result {
            Ok(out) => shown.push(format!("{out:?}")),
            Err(err) => {
                shown.push(format!("{err} | {err:?}"));
                if let RunError::GatewayUnavailable { source, .. } = &err {
                    shown.push(format!("{source} | {source:?}"));
                }
            }
        }
    }
    run.store_approval_token("hold", ApprovalToken::new(APPROVAL));
    let retried = svc
        .ready()
        .await
        .unwrap()
        .call(ToolCall::new("travel.book_hotel", json!({}), "hold"))
        .await;
    assert!(retried.is_ok(), "{retried:?}");

    // The flow did happen: each outcome is in the trace.
    let outcomes: Vec<String> = run
        .trace()
        .entries()
        .iter()
        .map(|e| {
            serde_json::to_value(e.outcome)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        outcomes,
        ["allow", "hold", "deny", "error", "error", "allow"]
    );
    assert!(
        shown.iter().any(|s| s.contains("[redacted]")),
        "the echoing 422 was redacted: {shown:?}"
    );

    shown.push(format!("{run:?}"));
    shown.push(format!("{gateway:?}"));
    shown.push(run.trace().table());
    shown.push(run.trace().to_json_lines());
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("paybond.tool_call"),
        "spans were captured: {logs}"
    );
    assert!(
        logs.contains("retrying"),
        "retry events were captured: {logs}"
    );
    shown.push(logs);

    for text in &shown {
        for secret in [KEY, TOKEN, APPROVAL] {
            assert!(!text.contains(secret), "`{secret}` leaked into: {text}");
        }
    }
}
