//! A custom orchestrator: your own loop decides which tool to call, the generic
//! `{name, execute}` trait and a registry run them through the layer.
//!
//! ```sh
//! paybond dev loop --offline &
//! cargo run -p paybond-examples --bin custom_orchestrator
//! ```
//!
//! No model: the plan is a list of calls. A search (read-only) runs without a
//! decision; the bookings are verified first, and the one above the tenant's
//! approval threshold is held, the one above the per-call cap denied: neither runs.

use std::sync::Arc;

use paybond_middleware_core::wire::SandboxBootstrapRequest;
use paybond_middleware_core::{
    BoxError, HttpGateway, PaybondAgentRun, RunError, Tool, ToolCall, ToolOutput, ToolPolicy,
    ToolRegistry, tool_fn,
};
use serde_json::{Value, json};

/// A tool as a struct and an impl, for when it holds state (a client, a config).
struct SearchHotels {
    city_default: String,
}

#[async_trait::async_trait]
impl Tool for SearchHotels {
    fn name(&self) -> &str {
        "travel.search_hotels"
    }

    fn policy(&self) -> Option<ToolPolicy> {
        Some(ToolPolicy::read_only())
    }

    async fn execute(&self, args: Value) -> Result<ToolOutput, BoxError> {
        let city = args["city"].as_str().unwrap_or(&self.city_default);
        Ok(ToolOutput::new(
            json!({"city": city, "hotels": ["Harbor Inn", "Bay Suites"]}),
        ))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gateway = HttpGateway::from_env()?;
    let intent = gateway
        .bootstrap_sandbox(&SandboxBootstrapRequest {
            operation: "travel.book_hotel".into(),
            requested_spend_cents: 50_000,
            ..Default::default()
        })
        .await?;

    // ... or an async fn, when it is only a function.
    let book = tool_fn(
        "travel.book_hotel",
        ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
        |args: Value| async move {
            let cents = args["amount_cents"]
                .as_u64()
                .ok_or("amount_cents is required")?;
            Ok(ToolOutput::new(json!({"confirmation": "H-3001"})).with_cost_cents(cents))
        },
    );
    let registry = ToolRegistry::new()
        .with(SearchHotels {
            city_default: "Lisbon".to_owned(),
        })
        .with(book);
    let run =
        PaybondAgentRun::builder(Arc::new(gateway), intent.intent_id, intent.capability_token)
            .tools(registry.policies())
            .agent_subject("example-orchestrator")
            .bind()
            .await?;
    let tools = registry.guarded(&run);

    let plan = [
        ("travel.search_hotels", json!({"city": "Lisbon"})),
        ("travel.book_hotel", json!({"amount_cents": 12_000})),
        ("travel.book_hotel", json!({"amount_cents": 18_700})),
        ("travel.book_hotel", json!({"amount_cents": 25_000})),
    ];
    for (i, (tool, args)) in plan.into_iter().enumerate() {
        let call = ToolCall::new(tool, args, format!("step-{}", i + 1));
        match tools.dispatch(call).await {
            Ok(out) => println!("{tool}: ran, {}", out.body),
            // Held: an operator approves it (see the wait_for_approval example).
            Err(RunError::ApprovalRequired(held)) => println!(
                "{tool}: held for approval ({})",
                held.reason_codes.join(", ")
            ),
            Err(RunError::SpendDenied(denied)) => {
                println!("{tool}: denied ({})", denied.result.reason_codes.join(", "));
            }
            Err(other) => return Err(other.into()),
        }
    }
    println!("totals: {}", serde_json::to_string(&run.trace().totals())?);
    Ok(())
}
