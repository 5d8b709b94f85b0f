//! Your own tool under your own policy, with the engine in process: no gateway
//! to run, nothing to install.
//!
//! ```sh
//! cargo run -p paybond-examples --bin embedded_custom_tool
//! ```
//!
//! `shop.buy` is a plain `async fn` behind the tower layer. The policy
//! (`examples/policies/shop.yaml`) allows it up to 50 USD a call and holds
//! anything above 20 USD for an operator. Three calls: 12 USD runs; 60 USD is
//! denied and never runs; 30 USD is held, approved by the operator in process,
//! and runs when retried with the approval token.

use std::path::Path;
use std::sync::Arc;

use paybond_gateway::{EmbeddedGateway, PolicyFile};
use paybond_middleware_core::wire::SandboxBootstrapRequest;
use paybond_middleware_core::{
    BoxError, PaybondAgentRun, RunError, SpendGateway, ToolCall, ToolOutput,
};
use serde_json::json;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

/// The paid tool: buys `item` for `amount_cents`.
async fn buy(call: ToolCall) -> Result<ToolOutput, BoxError> {
    let item = call.args["item"].as_str().ok_or("item is required")?;
    let cents = call.args["amount_cents"]
        .as_u64()
        .ok_or("amount_cents is required")?;
    Ok(
        ToolOutput::new(json!({"bought": item, "order": format!("ORD-{cents}")}))
            .with_cost_cents(cents),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The engine in memory with this policy, one sandbox tenant, its agent key
    // (and its operator's, to approve in process). `Some(dir)` keeps it on disk.
    let policy =
        PolicyFile::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/shop.yaml"))?;
    let gateway = Arc::new(EmbeddedGateway::with_policy(policy, None)?);
    let intent = gateway
        .bootstrap_sandbox(&SandboxBootstrapRequest {
            operation: "shop.buy".into(),
            requested_spend_cents: 10_000,
            ..Default::default()
        })
        .await?;
    // The tools' policies come from the tenant's policy: nothing to repeat here.
    let run = PaybondAgentRun::builder(gateway.clone(), intent.intent_id, intent.capability_token)
        .bind()
        .await?;
    let mut shop = ServiceBuilder::new()
        .layer(run.clone())
        .service(service_fn(buy));

    let cable = ToolCall::new(
        "shop.buy",
        json!({"item": "cable", "amount_cents": 1200}),
        "call-1",
    );
    let out = shop.ready().await?.call(cable).await?;
    println!("12 USD: ran, {}", out.body);

    let desk = ToolCall::new(
        "shop.buy",
        json!({"item": "desk", "amount_cents": 6000}),
        "call-2",
    );
    match shop.ready().await?.call(desk).await {
        Err(RunError::SpendDenied(denied)) => {
            println!(
                "60 USD: denied ({}), did not run",
                denied.result.reason_codes.join(", ")
            );
        }
        other => return Err(format!("60 USD should be denied: {other:?}").into()),
    }

    let chair = ToolCall::new(
        "shop.buy",
        json!({"item": "chair", "amount_cents": 3000}),
        "call-3",
    );
    let held = match shop.ready().await?.call(chair.clone()).await {
        Err(RunError::ApprovalRequired(held)) => held,
        other => return Err(format!("30 USD should be held: {other:?}").into()),
    };
    println!("30 USD: held ({})", held.reason_codes.join(", "));
    let approval = held
        .approval_request_id
        .ok_or("a hold names its approval request")?;
    gateway.approve(approval).await?;
    // The agent's key fetches the short-lived approval token; the same call,
    // retried with it, runs.
    let token = gateway
        .approval_status(approval)
        .await?
        .approval_token
        .ok_or("an approved request hands its agent a token")?;
    run.store_approval_token(&held.tool_call_id, token);
    let out = shop.ready().await?.call(chair).await?;
    println!("30 USD: approved, ran, {}", out.body);

    println!("{}", run.trace().table());
    Ok(())
}
