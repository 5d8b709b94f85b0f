//! What the model is told about each outcome of a guarded call.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use std::sync::Arc;

use common::{BOOK, SEARCH, TOKEN};
use paybond_middleware_core::feedback::{FeedbackStatus, model_feedback};
use paybond_middleware_core::testing::{ScriptedGateway, VerifyScript};
use paybond_middleware_core::{BoxError, Tool, ToolOutput, ToolRegistry};
use serde_json::{Value, json};

struct Book;

#[async_trait::async_trait]
impl Tool for Book {
    fn name(&self) -> &str {
        BOOK
    }
    async fn execute(&self, args: Value) -> Result<ToolOutput, BoxError> {
        if args["fail"] == true {
            return Err("vendor down".into());
        }
        Ok(ToolOutput::new(json!({"confirmation": "H-1"})).with_cost_cents(100))
    }
}

#[tokio::test]
async fn each_outcome_has_its_status_and_reasons() {
    let gateway = Arc::new(ScriptedGateway::new());
    let run = common::run(&gateway).await;
    let tools = ToolRegistry::new().with(Book).guarded(&run);
    gateway
        .push_verify(VerifyScript::Allow)
        .push_verify(VerifyScript::hold())
        .push_verify(VerifyScript::deny("tool_cap_exceeded"))
        .push_verify(VerifyScript::Allow);

    let ok = tools.call(BOOK, json!({"amount_cents": 100}), "c1").await;
    assert_eq!(
        model_feedback(&ok),
        (FeedbackStatus::Ok, json!({"confirmation": "H-1"}))
    );

    let held = tools.call(BOOK, json!({"amount_cents": 100}), "c2").await;
    let (status, body) = model_feedback(&held);
    assert_eq!(status, FeedbackStatus::PendingApproval);
    assert_eq!(body["status"], "pending_approval");
    assert_eq!(body["reason_codes"], json!(["approval_threshold_exceeded"]));
    assert!(body["approval_request_id"].is_string(), "{body}");

    let denied = tools.call(BOOK, json!({"amount_cents": 100}), "c3").await;
    let (status, body) = model_feedback(&denied);
    assert_eq!(
        (status, &body["status"]),
        (FeedbackStatus::Blocked, &json!("blocked"))
    );
    assert_eq!(body["reason_codes"], json!(["tool_cap_exceeded"]));

    let failed = tools
        .call(BOOK, json!({"amount_cents": 100, "fail": true}), "c4")
        .await;
    let (status, body) = model_feedback(&failed);
    assert_eq!(
        (status, &body["reason_codes"]),
        (FeedbackStatus::Error, &json!(["tool_failed"]))
    );

    // No gateway answer: blocked, fail closed.
    let unknown = tools.call(SEARCH, json!({}), "c5").await;
    let (status, body) = model_feedback(&unknown);
    assert_eq!(
        (status, &body["reason_codes"]),
        (FeedbackStatus::Blocked, &json!(["invalid_call"]))
    );
    for (_, body) in [
        model_feedback(&held),
        model_feedback(&denied),
        model_feedback(&failed),
    ] {
        assert!(!body.to_string().contains(TOKEN));
    }
}
