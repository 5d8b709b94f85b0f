//! An agent whose guarded tool calls are exported as OpenTelemetry traces and
//! metrics: one call in `main`, the standard `OTEL_*` variables.
//!
//! ```sh
//! # the gateway exports too, so a tool call is one trace across both processes
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 paybond dev loop --offline &
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 cargo run -p paybond-examples --bin traced_agent
//! ```
//!
//! Any OTLP/HTTP receiver works (an OpenTelemetry Collector, Jaeger, Tempo, or a
//! vendor's endpoint with `OTEL_EXPORTER_OTLP_HEADERS`). Each call is an
//! `execute_tool travel.book_hotel` span (`gen_ai.*` attributes, the decision under
//! `paybond.*`) with the gateway requests as its children; the gateway continues
//! the trace from the `traceparent` header. Without `OTEL_EXPORTER_OTLP_ENDPOINT`
//! nothing is exported and the example runs the same.

use std::sync::Arc;

use paybond_middleware_core::wire::SandboxBootstrapRequest;
use paybond_middleware_core::{
    HttpGateway, PaybondAgentRun, RunError, ToolCall, ToolOutput, ToolPolicy, ToolRegistry, tool_fn,
};
use serde_json::{Value, json};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs to stderr (RUST_LOG), spans and metrics to OTEL_EXPORTER_OTLP_ENDPOINT.
    // The guard flushes what is buffered when it drops, after the runtime is done.
    let _telemetry = paybond_middleware_core::telemetry::init("traced-agent")?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(agent())
}

async fn agent() -> Result<(), Box<dyn std::error::Error>> {
    let gateway = HttpGateway::from_env()?;
    let intent = gateway
        .bootstrap_sandbox(&SandboxBootstrapRequest {
            operation: "travel.book_hotel".into(),
            requested_spend_cents: 50_000,
            ..Default::default()
        })
        .await?;
    let book = tool_fn(
        "travel.book_hotel",
        ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
        |args: Value| async move {
            let cents = args["amount_cents"]
                .as_u64()
                .ok_or("amount_cents is required")?;
            Ok(ToolOutput::new(json!({"confirmation": "H-4001"})).with_cost_cents(cents))
        },
    );
    let registry = ToolRegistry::new().with(book);
    let run =
        PaybondAgentRun::builder(Arc::new(gateway), intent.intent_id, intent.capability_token)
            .tools(registry.policies())
            .agent_subject("example-traced")
            .bind()
            .await?;
    let tools = registry.guarded(&run);
    // Two calls, two traces: an allow, and a deny over the per-call cap.
    for (id, cents) in [("call-1", 12_000), ("call-2", 25_000)] {
        let call = ToolCall::new(
            "travel.book_hotel",
            json!({"hotel": "Harbor Inn", "amount_cents": cents}),
            id,
        );
        match tools.dispatch(call).await {
            Ok(out) => println!("{id}: ran, {}", out.body),
            Err(RunError::SpendDenied(d)) => {
                println!("{id}: denied ({})", d.result.reason_codes.join(", "));
            }
            Err(e) => println!("{id}: not run: {e}"),
        }
    }
    for entry in run.trace().entries() {
        println!("trace: {}", serde_json::to_string(&entry)?);
    }
    Ok(())
}
