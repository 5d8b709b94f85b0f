//! Your own tools as an MCP server (rmcp, stdio), each call authorized first.
//!
//! Start the local gateway, then register the server with an MCP client (Claude
//! Desktop, an IDE) as a stdio command run from the directory holding `.env.local`:
//!
//! ```sh
//! paybond dev loop --offline &
//! cargo build -p paybond-examples --bin mcp_server
//! # command: target/debug/mcp_server
//! ```
//!
//! Every server start opens a sandbox intent of 500.00 USD for the run. A blocked
//! call comes back as a tool error whose JSON says why
//! (`{"status": "blocked", "reason_codes": [...]}`), so the model can adapt.
//! stdout carries the protocol: this example logs nothing.

use std::sync::Arc;

use paybond_adapter_mcp::GuardedMcpServer;
use paybond_middleware_core::wire::SandboxBootstrapRequest;
use paybond_middleware_core::{
    HttpGateway, PaybondAgentRun, ToolOutput, ToolPolicy, ToolRegistry, tool_fn,
};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let gateway = HttpGateway::from_env()?;
    let intent = gateway
        .bootstrap_sandbox(&SandboxBootstrapRequest {
            operation: "travel.book_hotel".into(),
            requested_spend_cents: 50_000,
            ..Default::default()
        })
        .await?;
    let registry = ToolRegistry::new()
        .with(
            tool_fn(
                "travel.search_hotels",
                ToolPolicy::read_only(),
                |args: Value| async move {
                    let city = args["city"].as_str().unwrap_or("Lisbon").to_owned();
                    Ok(ToolOutput::new(
                        json!({"city": city, "hotels": ["Harbor Inn"]}),
                    ))
                },
            )
            .with_description("Lists hotels in a city."),
        )
        .with(
            tool_fn(
                "travel.book_hotel",
                ToolPolicy::side_effecting("cost_and_completion")
                    .with_spend_from_args("amount_cents"),
                |args: Value| async move {
                    let cents = args["amount_cents"]
                        .as_u64()
                        .ok_or("amount_cents is required")?;
                    Ok(ToolOutput::new(json!({"confirmation": "H-4001"})).with_cost_cents(cents))
                },
            )
            .with_description("Books a hotel room; amount_cents is the total price in cents.")
            .with_parameters(json!({
                "type": "object",
                "properties": {"hotel": {"type": "string"}, "amount_cents": {"type": "integer"}},
                "required": ["amount_cents"]
            })),
        );
    let run =
        PaybondAgentRun::builder(Arc::new(gateway), intent.intent_id, intent.capability_token)
            .tools(registry.policies())
            .agent_subject("example-mcp")
            .bind()
            .await?;
    GuardedMcpServer::new(registry.guarded(&run), "paybond-example")
        .serve_stdio()
        .await
}
