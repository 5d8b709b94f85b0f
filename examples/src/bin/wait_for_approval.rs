//! A call above the approval threshold: held, approved by an operator, then run.
//!
//! ```sh
//! paybond dev loop --offline &
//! cargo run -p paybond-examples --bin wait_for_approval
//! # in another terminal, as the operator:
//! paybond approvals list
//! paybond approvals approve <approval id>
//! ```
//!
//! The run waits for the operator (up to 5 minutes, asking every 2 seconds), then
//! retries the same call with the short-lived approval token the gateway hands the
//! agent, and the booking runs. Without `wait_for_approval`, the call would return
//! `RunError::ApprovalRequired` at once, for the program to retry later.

use std::sync::Arc;
use std::time::Duration;

use paybond_middleware_core::wire::SandboxBootstrapRequest;
use paybond_middleware_core::{
    ApprovalWait, HttpGateway, PaybondAgentRun, ToolCall, ToolOutput, ToolPolicy, ToolRegistry,
    tool_fn,
};
use serde_json::{Value, json};

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
    let registry = ToolRegistry::new().with(tool_fn(
        "travel.book_hotel",
        ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
        |args: Value| async move {
            let cents = args["amount_cents"]
                .as_u64()
                .ok_or("amount_cents is required")?;
            Ok(ToolOutput::new(json!({"confirmation": "H-5001"})).with_cost_cents(cents))
        },
    ));
    let run =
        PaybondAgentRun::builder(Arc::new(gateway), intent.intent_id, intent.capability_token)
            .tools(registry.policies())
            .agent_subject("example-approval")
            .wait_for_approval(ApprovalWait {
                timeout: Duration::from_secs(300),
                poll_interval: Duration::from_secs(2),
            })
            .bind()
            .await?;

    println!("booking 187.00 USD: above the approval threshold, waiting for an operator");
    let out = registry
        .guarded(&run)
        .dispatch(ToolCall::new(
            "travel.book_hotel",
            json!({"hotel": "Bay Suites", "amount_cents": 18_700}),
            "book-bay-suites",
        ))
        .await?;
    println!("approved and booked: {}", out.body);
    for entry in run.trace().entries() {
        println!("trace: {}", serde_json::to_string(&entry)?);
    }
    println!("totals: {}", serde_json::to_string(&run.trace().totals())?);
    Ok(())
}
