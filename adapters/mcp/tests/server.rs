//! The MCP servers in process over a duplex pipe, driven by an rmcp client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::sync::Arc;

use paybond_adapter_mcp::GuardedMcpServer;
use paybond_adapter_mcp::paybond_tools::{ExposedTools, PaybondToolsServer};
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
async fn each_tool_policy_lists_and_allows_its_tools() {
    let read_only = vec![
        "paybond_explain_policy",
        "paybond_get_approval_status",
        "paybond_get_audit_export",
        "paybond_get_budget_remaining",
        "paybond_get_intent",
        "paybond_get_principal",
        "paybond_list_audit_exports",
        "paybond_list_intents",
    ];
    let mut everything = read_only.clone();
    everything.extend([
        "paybond_authorize_agent_spend",
        "paybond_bootstrap_sandbox_guardrail",
        "paybond_complete_spend_decision",
        "paybond_submit_sandbox_guardrail_evidence",
    ]);
    everything.sort_unstable();
    for (policy, expected) in [
        (ExposedTools::ReadOnly, read_only),
        (ExposedTools::SpendWrite, everything),
        (
            ExposedTools::parse(
                "allowlist",
                Some("paybond_get_principal, paybond_complete_spend_decision"),
            )
            .unwrap(),
            vec!["paybond_complete_spend_decision", "paybond_get_principal"],
        ),
    ] {
        // No gateway listens here: listing and refusing need none.
        let gateway =
            HttpGateway::builder("http://127.0.0.1:9", ApiKey::new("paybond_sk_sandbox_x"))
                .build()
                .unwrap();
        let server = PaybondToolsServer::new(gateway, policy.clone());
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let served =
            tokio::spawn(async move { server.serve(server_io).await.unwrap().waiting().await });
        let client = ().serve(client_io).await.unwrap();
        let listed = client.list_all_tools().await.unwrap();
        let mut names: Vec<String> = listed.iter().map(|t| t.name.to_string()).collect();
        names.sort();
        assert_eq!(names, expected, "{policy:?}");
        // Every tool says whether it only reads, and none is destructive.
        for tool in &listed {
            let hints = tool.annotations.clone().unwrap();
            assert_eq!(
                hints.read_only_hint,
                Some(
                    tool.name.starts_with("paybond_get_")
                        || tool.name.starts_with("paybond_list_")
                        || tool.name == "paybond_explain_policy"
                ),
                "{}",
                tool.name
            );
            assert_eq!(hints.destructive_hint, Some(false));
        }
        if policy == ExposedTools::ReadOnly {
            let r = client
                .call_tool(
                    CallToolRequestParams::new("paybond_authorize_agent_spend").with_arguments(
                        args(json!({
                        "intent_id": uuid::Uuid::new_v4().to_string(), "capability_token": "t",
                        "operation": "o", "requested_spend_cents": 1})),
                    ),
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
                    CallToolRequestParams::new("paybond_complete_spend_decision")
                        .with_arguments(args(json!({}))),
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
    assert!(ExposedTools::parse("allowlist", None).is_err());
    let err = ExposedTools::parse("allowlist", Some("paybond_pay_everyone")).unwrap_err();
    assert!(err.contains("paybond_pay_everyone"), "{err}");
    assert_eq!(
        ExposedTools::parse("default", None).unwrap(),
        ExposedTools::SpendWrite
    );
}

/// The tools against a real gateway on loopback: a sandbox intent, preflight,
/// authorize, complete, evidence, and the intent's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_against_a_gateway() {
    let engine = std::sync::Arc::new(
        paybond_gateway::Engine::open(paybond_gateway::EngineConfig::new(
            paybond_gateway::Storage::Memory,
        ))
        .unwrap(),
    );
    let keys = engine
        .create_tenant("mcp", paybond_middleware_core::wire::Environment::Sandbox)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(paybond_gateway::server::serve(
        listener,
        engine.clone(),
        std::future::pending(),
    ));
    let gateway = HttpGateway::builder(&url, keys.agent.clone())
        .build()
        .unwrap();
    let server = PaybondToolsServer::new(gateway, ExposedTools::SpendWrite);
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let served =
        tokio::spawn(async move { server.serve(server_io).await.unwrap().waiting().await });
    let client = ().serve(client_io).await.unwrap();
    let call = |name: &'static str, a: Value| {
        let client = &client;
        async move {
            let r = client
                .call_tool(CallToolRequestParams::new(name).with_arguments(args(a)))
                .await
                .unwrap();
            assert_ne!(r.is_error, Some(true), "{name}: {r:?}");
            r.structured_content.unwrap()
        }
    };
    let me = call("paybond_get_principal", json!({})).await;
    assert_eq!(me["tenant_id"], keys.tenant_id.as_str());
    let boot = call(
        "paybond_bootstrap_sandbox_guardrail",
        json!({"operation": "travel.book_hotel", "requested_spend_cents": 50_000}),
    )
    .await;
    let intent = boot["intent_id"].as_str().unwrap().to_owned();
    let token = boot["capability_token"].as_str().unwrap().to_owned();
    let left = call("paybond_get_budget_remaining", json!({"intent_id": intent})).await;
    assert_eq!(left["remaining_cents"], 50_000, "{left}");
    let why = call(
        "paybond_explain_policy",
        json!({"intent_id": intent, "operation": "travel.book_hotel", "requested_spend_cents": 25_000}),
    )
    .await;
    assert_eq!(why["outcome"], "deny", "{why}");
    assert!(why["checks"].as_array().unwrap().len() > 2, "{why}");
    let allowed = call(
        "paybond_authorize_agent_spend",
        json!({"intent_id": intent, "capability_token": token, "operation": "travel.book_hotel",
               "requested_spend_cents": 12_000}),
    )
    .await;
    assert_eq!(allowed["allow"], true, "{allowed}");
    let decision = allowed["decision_id"].as_str().unwrap().to_owned();
    call(
        "paybond_submit_sandbox_guardrail_evidence",
        json!({"intent_id": intent, "operation": "travel.book_hotel",
               "payload": {"status": "completed", "cost_cents": 12_000},
               "metadata": {"decision_id": decision}}),
    )
    .await;
    call(
        "paybond_complete_spend_decision",
        json!({"decision_id": decision, "outcome": "consumed", "actual_spend_cents": 12_000}),
    )
    .await;
    let history = call("paybond_get_intent", json!({"intent_id": intent})).await;
    assert_eq!(history["consumed_cents"], 12_000, "{history}");
    assert_eq!(
        history["evidence"][0]["predicate_passed"], true,
        "{history}"
    );
    let listed = call("paybond_list_intents", json!({"limit": 5})).await;
    assert_eq!(
        listed["intents"][0]["intent_id"],
        intent.as_str(),
        "{listed}"
    );
    // An export an operator made, read with the agent key.
    let operator = engine
        .authenticate(keys.operator.expose_secret())
        .await
        .unwrap();
    let job = engine
        .create_audit_export(
            &operator,
            &paybond_gateway::CreateAuditExportRequest::default(),
        )
        .await
        .unwrap()
        .job;
    engine
        .build_audit_export(&keys.tenant_id, job.id)
        .await
        .unwrap();
    let exports = call("paybond_list_audit_exports", json!({"limit": 5})).await;
    assert_eq!(exports["jobs"][0]["id"], job.id.to_string(), "{exports}");
    assert_eq!(exports["jobs"][0]["status"], "ready", "{exports}");
    let export = call("paybond_get_audit_export", json!({"job_id": job.id})).await;
    assert_eq!(export["job"]["status"], "ready", "{export}");
    assert_eq!(export["job"]["bundle_sha256"].as_str().unwrap().len(), 64);
    assert!(export["job"].get("download_token").is_none(), "{export}");
    client.cancel().await.unwrap();
    let _ = served.await;
}
