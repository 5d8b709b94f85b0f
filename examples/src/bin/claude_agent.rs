//! A Claude agent (rig's Anthropic provider, the Messages API) whose booking tool
//! is authorized by the gateway before it runs.
//!
//! ```sh
//! paybond dev loop --offline &
//! ANTHROPIC_API_KEY=sk-ant-… cargo run -p paybond-examples --bin claude_agent
//! ```
//!
//! `ANTHROPIC_BASE_URL` points it at another Messages API server and
//! `ANTHROPIC_MODEL` picks the model (default `claude-sonnet-4-6`). The tool is
//! offered as `travel_book_hotel` with its `input_schema`; Claude's `tool_use`
//! block is verified by the gateway, the tool runs only when allowed, and its
//! `tool_result` goes back with the `tool_use_id` Claude gave it.

use std::sync::Arc;

use paybond_adapter_rig::guarded;
use paybond_middleware_core::wire::SandboxBootstrapRequest;
use paybond_middleware_core::{HttpGateway, PaybondAgentRun};
use rig_agent::AgentBuilder;
use rig_core::providers::anthropic::{AnthropicConfig, CLAUDE_SONNET_4_6};
use rig_core::tool::{Tool, ToolContext};
use serde::Deserialize;
use serde_json::{Value, json};

/// The model's arguments for a booking.
#[derive(Debug, Deserialize)]
struct BookArgs {
    hotel: String,
    amount_cents: u64,
}

#[derive(Debug)]
struct BookingFailed(String);

impl std::fmt::Display for BookingFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BookingFailed {}

/// A plain rig tool. `guarded` wraps it so every call is verified first.
struct BookHotel;

impl Tool for BookHotel {
    /// The policy tool `travel.book_hotel`, under a name Claude accepts
    /// (`^[a-zA-Z0-9_-]{1,64}$`: no dots).
    const NAME: &'static str = "travel_book_hotel";
    type Args = BookArgs;
    type Output = Value;
    type Error = BookingFailed;

    fn description(&self) -> String {
        "Books a hotel room; amount_cents is the total price in cents.".to_owned()
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"hotel": {"type": "string"}, "amount_cents": {"type": "integer"}},
            "required": ["hotel", "amount_cents"]
        })
    }

    async fn call(&self, _cx: &mut ToolContext, args: BookArgs) -> Result<Value, BookingFailed> {
        if args.hotel.is_empty() {
            return Err(BookingFailed("no hotel named".to_owned()));
        }
        // `cost_cents` in the output is what the reservation is finalized at.
        Ok(json!({"confirmation": "H-5001", "hotel": args.hotel, "cost_cents": args.amount_cents}))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();

    let gateway = HttpGateway::from_env()?;
    let intent = gateway
        .bootstrap_sandbox(&SandboxBootstrapRequest {
            operation: "travel.book_hotel".into(),
            requested_spend_cents: 50_000,
            ..Default::default()
        })
        .await?;
    let run =
        PaybondAgentRun::builder(Arc::new(gateway), intent.intent_id, intent.capability_token)
            .agent_subject("example-claude")
            .bind()
            .await?;

    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let key = var("ANTHROPIC_API_KEY").ok_or("set ANTHROPIC_API_KEY")?;
    let mut config = AnthropicConfig::new(key);
    if let Some(base) = var("ANTHROPIC_BASE_URL") {
        config = config.with_base_url(base);
    }
    let model = var("ANTHROPIC_MODEL").unwrap_or_else(|| CLAUDE_SONNET_4_6.to_owned());
    let agent = AgentBuilder::new(config.client().completion(model))
        .preamble("You book hotels. Call the booking tool once, then say what happened.")
        // The Messages API requires max_tokens.
        .max_tokens(1024)
        .tool(guarded(BookHotel, &run)?)
        .build();
    let answer = agent
        .prompt("Book the Harbor Inn in Lisbon for 120.00 USD (12000 cents).")
        .max_turns(4)
        .await?;

    println!("model: {}", answer.output());
    for entry in run.trace().entries() {
        println!("trace: {}", serde_json::to_string(&entry)?);
    }
    println!("totals: {}", serde_json::to_string(&run.trace().totals())?);
    Ok(())
}
