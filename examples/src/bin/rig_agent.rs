//! A rig agent whose booking tool is authorized by the gateway before it runs.
//!
//! Start the local gateway (it writes the URL and keys to `.env.local`), then run the
//! example from the same directory with a model:
//!
//! ```sh
//! paybond dev loop --offline &
//! OPENAI_API_KEY=sk-… cargo run -p paybond-examples --bin rig_agent
//! ```
//!
//! `OPENAI_BASE_URL` points it at any OpenAI-compatible server and `OPENAI_MODEL`
//! picks the model (default `gpt-4o-mini`).

use std::sync::Arc;

use paybond_adapter_rig::guarded;
use paybond_middleware_core::wire::SandboxBootstrapRequest;
use paybond_middleware_core::{HttpGateway, PaybondAgentRun};
use rig_agent::AgentBuilder;
use rig_core::providers::openai::OpenAIConfig;
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
    /// The function name of the policy tool `travel.book_hotel`.
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
        Ok(json!({"confirmation": "H-2001", "hotel": args.hotel, "cost_cents": args.amount_cents}))
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
    // The tools' policy entries come from the tenant's effective policy.
    let run =
        PaybondAgentRun::builder(Arc::new(gateway), intent.intent_id, intent.capability_token)
            .agent_subject("example-rig")
            .bind()
            .await?;

    let key = std::env::var("OPENAI_API_KEY").map_err(|_| "set OPENAI_API_KEY")?;
    let base =
        std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com/v1".to_owned());
    let model = std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4o-mini".to_owned());
    let model = OpenAIConfig::new(key)
        .with_base_url(base)
        .client()
        .chat(model);
    let agent = AgentBuilder::new(model)
        .preamble("You book hotels. Call the booking tool once, then say what happened.")
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
