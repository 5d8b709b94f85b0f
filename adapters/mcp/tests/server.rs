//! The MCP servers in process over a duplex pipe, driven by an rmcp client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::sync::Arc;

use paybond_adapter_mcp::GuardedMcpServer;
use paybond_adapter_mcp::paybond_tools::{PaybondToolsServer, ToolPolicy};
use paybond_middleware_core::testing::{ScriptedGateway, VerifyScript};
use paybond_middleware_core::{
    ApiKey, BoxError, HttpGateway, PaybondAgentRun, Tool, ToolOutput, ToolRegistry,
};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

struct Book;

#[async_trait::async_trait]
impl Tool for Book {
    fn name(&self) -> &str {
        "travel.book_hotel"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"amount_cents": {"type": "integer"}}})
    }
    async fn execute(&self, args: Value) -> Result<ToolOutput, BoxError> {
        Ok(ToolOutput::new(json!({"confirmation": "H-1"}))
            .with_cost_cents(args["amount_cents"].as_u64().unwrap_or(0)))
    }
}

fn args(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[tokio::test]
async fn guarded_tools_answer_with_structured_results_and_is_error_for_holds_and_denials() {
    let gateway = Arc::new(ScriptedGateway::new());
    let run = PaybondAgentRun::builder(gateway.clone(), uuid::Uuid::new_v4(), "cap".into())
        .tool(
            "travel.book_hotel",
            paybond_policies::ToolPolicy::side_effecting("cost_and_completion")
                .with_spend_from_args("amount_cents"),
        )
        .bind()
        .await
        .unwrap();
    let server = GuardedMcpServer::new(ToolRegistry::new().with(Book).guarded(&run), "travel");
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let served =
        tokio::spawn(async move { server.serve(server_io).await.unwrap().waiting().await });
    let client = ().serve(client_io).await.unwrap();

    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].name, "travel.book_hotel");
    assert_eq!(tools[0].input_schema.get("type"), Some(&json!("object")));

    gateway
        .push_verify(VerifyScript::Allow)
        .push_verify(VerifyScript::hold())
        .push_verify(VerifyScript::deny("tool_cap_exceeded"));
    let call = |amount: u64, id: &str| {
        let mut p = CallToolRequestParams::new("travel.book_hotel")
            .with_arguments(args(json!({"amount_cents": amount})));
        p.meta = Some(rmcp::model::RequestMetaObject(rmcp::model::MetaObject(
            args(json!({"tool_call_id": id})),
        )));
        p
    };
    let ok = client.call_tool(call(100, "t1")).await.unwrap();
    assert_eq!(ok.is_error, Some(false));
    assert_eq!(ok.structured_content, Some(json!({"confirmation": "H-1"})));
    let held = client.call_tool(call(100, "t2")).await.unwrap();
    assert_eq!(held.is_error, Some(true));
    let body = held.structured_content.unwrap();
    assert_eq!(body["status"], "pending_approval");
    assert!(body["approval_request_id"].is_string());
    let denied = client.call_tool(call(100, "t3")).await.unwrap();
    assert_eq!(denied.is_error, Some(true));
    assert_eq!(
        denied.structured_content.unwrap()["reason_codes"],
        json!(["tool_cap_exceeded"])
    );

    // The client's tool call ids reach the trace.
    let ids: Vec<String> = run
        .trace()
        .entries()
        .into_iter()
        .map(|e| e.tool_call_id)
        .collect();
    assert_eq!(ids, ["t1", "t2", "t3"]);

    client.cancel().await.unwrap();
    let _ = served.await;
}

#[tokio::test]
async fn readonly_exposes_no_spend_mutating_tool() {
    for (policy, expected) in [
        (ToolPolicy::ReadOnly, vec!["approval_status"]),
        (
            ToolPolicy::Default,
            vec![
                "approval_status",
                "authorize_agent_spend",
                "bootstrap_sandbox_guardrail",
                "complete_decision",
            ],
        ),
    ] {
        // No gateway listens here: listing and refusing need none.
        let gateway =
            HttpGateway::builder("http://127.0.0.1:9", ApiKey::new("paybond_sk_sandbox_x"))
                .build()
                .unwrap();
        let server = PaybondToolsServer::new(gateway, policy);
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let served =
            tokio::spawn(async move { server.serve(server_io).await.unwrap().waiting().await });
        let client = ().serve(client_io).await.unwrap();
        let mut names: Vec<String> = client
            .list_all_tools()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        names.sort();
        assert_eq!(names, expected);
        if policy == ToolPolicy::ReadOnly {
            let r = client
                .call_tool(
                    CallToolRequestParams::new("authorize_agent_spend").with_arguments(args(
                        json!({
                        "intent_id": uuid::Uuid::new_v4().to_string(), "capability_token": "t",
                        "operation": "o", "requested_spend_cents": 1}),
                    )),
                )
                .await
                .unwrap();
            assert_eq!(r.is_error, Some(true));
            assert_eq!(
                r.structured_content.unwrap()["reason_codes"],
                json!(["tool_not_available"])
            );
        } else {
            // Missing arguments are named; an unreachable gateway is a blocked result, not a crash.
            let r = client
                .call_tool(
                    CallToolRequestParams::new("complete_decision").with_arguments(args(json!({}))),
                )
                .await
                .unwrap();
            assert_eq!(r.is_error, Some(true));
            assert!(
                r.structured_content.unwrap()["message"]
                    .as_str()
                    .unwrap()
                    .contains("decision_id")
            );
        }
        client.cancel().await.unwrap();
        let _ = served.await;
    }
}
