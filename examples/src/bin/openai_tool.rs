//! Guard one async fn tool with the OpenAI tool-calling loop.
//!
//! Start the local gateway (it writes the URL and keys to `.env.local`), then run the
//! example from the same directory with a model:
//!
//! ```sh
//! paybond dev loop --offline &
//! OPENAI_API_KEY=sk-… cargo run -p paybond-examples --bin openai_tool
//! ```
//!
//! `OPENAI_BASE_URL` points it at any OpenAI-compatible server and `OPENAI_MODEL`
//! picks the model (default `gpt-4o-mini`). The booking tool runs only if the
//! gateway allows the call; its policy entry (how much to reserve, which evidence to
//! submit) comes from the tenant's policy on the gateway.

use std::sync::Arc;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs,
};
use paybond_adapter_openai::AgentLoop;
use paybond_middleware_core::wire::SandboxBootstrapRequest;
use paybond_middleware_core::{
    HttpGateway, PaybondAgentRun, ToolOutput, ToolPolicy, ToolRegistry, tool_fn,
};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // reqwest (inside async-openai) needs a TLS provider for https models.
    let _ = rustls::crypto::ring::default_provider().install_default();

    // PAYBOND_GATEWAY_URL and PAYBOND_API_KEY, from the environment or .env.local.
    let gateway = HttpGateway::from_env()?;
    // A funded sandbox intent allowing the booking tool, and its capability token.
    let intent = gateway
        .bootstrap_sandbox(&SandboxBootstrapRequest {
            operation: "travel.book_hotel".into(),
            requested_spend_cents: 50_000,
            ..Default::default()
        })
        .await?;

    // The tool: an async fn. Its cost is what the reservation is finalized at.
    let book = tool_fn(
        "travel.book_hotel",
        ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
        |args: Value| async move {
            let hotel = args["hotel"]
                .as_str()
                .ok_or("hotel is required")?
                .to_owned();
            let cents = args["amount_cents"]
                .as_u64()
                .ok_or("amount_cents is required")?;
            Ok(
                ToolOutput::new(json!({"confirmation": "H-1001", "hotel": hotel}))
                    .with_cost_cents(cents),
            )
        },
    )
    .with_description("Books a hotel room; amount_cents is the total price in cents.")
    .with_parameters(json!({
        "type": "object",
        "properties": {
            "hotel": {"type": "string"},
            "amount_cents": {"type": "integer", "minimum": 1}
        },
        "required": ["hotel", "amount_cents"]
    }));
    let registry = ToolRegistry::new().with(book);

    let run =
        PaybondAgentRun::builder(Arc::new(gateway), intent.intent_id, intent.capability_token)
            .tools(registry.policies())
            .agent_subject("example-openai")
            .bind()
            .await?;

    let key = std::env::var("OPENAI_API_KEY").map_err(|_| "set OPENAI_API_KEY")?;
    let mut config = OpenAIConfig::new().with_api_key(key);
    if let Ok(base) = std::env::var("OPENAI_BASE_URL") {
        config = config.with_api_base(base);
    }
    let model = std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4o-mini".to_owned());
    // The loop offers `travel_book_hotel` (a valid function name) and maps calls back.
    let agent =
        AgentLoop::new(Client::with_config(config), model, registry.guarded(&run)).max_turns(4);
    let outcome = agent
        .run(vec![
            ChatCompletionRequestSystemMessageArgs::default()
                .content("You book hotels. Call the booking tool once, then say what happened.")
                .build()?
                .into(),
            ChatCompletionRequestUserMessageArgs::default()
                .content("Book the Harbor Inn in Lisbon for 120.00 USD (12000 cents).")
                .build()?
                .into(),
        ])
        .await?;

    println!("model: {}", outcome.answer.unwrap_or_default());
    // What the layer did with each call, and what the run spent.
    for entry in run.trace().entries() {
        println!("trace: {}", serde_json::to_string(&entry)?);
    }
    println!("totals: {}", serde_json::to_string(&run.trace().totals())?);
    Ok(())
}
