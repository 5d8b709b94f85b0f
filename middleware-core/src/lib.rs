//! Authorize an AI agent's paid or side-effecting tool calls before they run.
//!
//! [`PaybondAgentRun`] is a tower [`Layer`](tower::Layer) bound to one intent and its
//! capability token. Around any `Service<ToolCall, Response = ToolOutput>` it:
//!
//! - lets non-side-effecting tools pass straight through;
//! - verifies a side-effecting call with the gateway first, then
//!   - on **allow** runs the tool, submits evidence and finalizes the reservation as
//!     consumed with the actual cost (released if the tool fails, panics or is dropped);
//!   - on a **hold** returns [`RunError::ApprovalRequired`]; once an operator approves,
//!     [`PaybondAgentRun::store_approval_token`] makes the retry carry the token
//!     (or [`wait_for_approval`](PaybondAgentRunBuilder::wait_for_approval) polls and retries by itself);
//!   - on a **deny** returns [`RunError::SpendDenied`];
//!   - when the gateway cannot decide returns [`RunError::GatewayUnavailable`].
//!
//! In the last three cases the tool never runs. Every call lands in the run's
//! [`RunTrace`](trace::RunTrace). The gateway is any [`SpendGateway`]: [`HttpGateway`] over HTTP, or
//! the embedded engine.
//!
//! Your own tool under your own policy, with the gateway's engine in process
//! (`paybond-gateway`'s `EmbeddedGateway`; nothing to run beside your program):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use paybond_gateway::{EmbeddedGateway, PolicyFile};
//! use paybond_middleware_core::wire::SandboxBootstrapRequest;
//! use paybond_middleware_core::{BoxError, PaybondAgentRun, RunError, ToolCall, ToolOutput};
//! use serde_json::json;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! // The paid tool: a plain async fn.
//! async fn buy(call: ToolCall) -> Result<ToolOutput, BoxError> {
//!     let cents = call.args["amount_cents"].as_u64().ok_or("amount_cents is required")?;
//!     Ok(ToolOutput::new(json!({"order": format!("ORD-{cents}")})).with_cost_cents(cents))
//! }
//!
//! // The policy: `shop.buy` up to 50 USD a call. On the engine in memory
//! // (`Some(dir)` keeps it in a data directory).
//! let policy = PolicyFile {
//!     text: "version: 1
//! name: shop
//! default_deny: true
//! tools:
//!   shop.buy: {side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}
//! spend_controls:
//!   tools:
//!     shop.buy: {max_per_call_cents: 5000}
//! "
//!     .into(),
//!     file: "shop.yaml".into(),
//! };
//! let gateway = Arc::new(EmbeddedGateway::with_policy(policy, None)?);
//! let intent = gateway
//!     .bootstrap_sandbox(&SandboxBootstrapRequest {
//!         operation: "shop.buy".into(),
//!         requested_spend_cents: 10_000,
//!         ..Default::default()
//!     })
//!     .await?;
//! // The tools' policies come from the tenant's: nothing to repeat here.
//! let run = PaybondAgentRun::builder(gateway, intent.intent_id, intent.capability_token)
//!     .bind()
//!     .await?;
//! let mut shop = ServiceBuilder::new().layer(run.clone()).service(service_fn(buy));
//!
//! let cable = ToolCall::new("shop.buy", json!({"amount_cents": 1_200}), "call-1");
//! let bought = shop.ready().await?.call(cable).await?;
//! assert_eq!(bought.cost_cents, Some(1_200));
//!
//! let desk = ToolCall::new("shop.buy", json!({"amount_cents": 6_000}), "call-2");
//! let denied = shop.ready().await?.call(desk).await;
//! assert!(matches!(denied, Err(RunError::SpendDenied(_)))); // it did not run
//! println!("{}", run.trace().table());
//! # Ok(())
//! # }
//! ```
//!
//! A hold approved in process, and the same tool as a trait object in a
//! registry: `examples/src/bin/embedded_custom_tool.rs` and
//! `examples/src/bin/custom_orchestrator.rs`. For your own tests, the
//! `test-util` feature's `testing::ScriptedGateway` answers as scripted.
//!
//! With the `otel` feature, `telemetry::init` exports the layer's spans (one
//! `execute_tool` span per call, with the OpenTelemetry GenAI attributes and the
//! decision under `paybond.*`) and metrics over OTLP, driven by the standard
//! `OTEL_*` variables.

// What a tool author needs is at the root; the rest is in the named modules
// below, each item at one path.
mod gateway;
#[cfg(feature = "http")]
mod http_client;
mod run;
mod tool;
mod tools;

pub mod feedback;
pub mod function_names;
pub mod scope;
#[cfg(feature = "otel")]
pub mod telemetry;
pub mod trace;
/// The gateway's HTTP wire types: the `paybond-wire` crate.
pub use paybond_wire as wire;

#[cfg(feature = "test-util")]
pub mod testing;

/// The `{name, execute}` tools' registry beyond [`ToolRegistry`]: the guarded
/// registry a run makes of it, the router, tool definitions, `commit_plan`.
pub mod registry {
    pub use crate::tools::{
        COMMIT_PLAN, FnTool, GuardedRegistry, ToolDefinition, ToolRouter, UnknownTool, commit_plan,
        commit_plan_definition,
    };
}

/// [`HttpGateway`]'s builder and retry policy.
#[cfg(feature = "http")]
pub mod http {
    pub use crate::http_client::{HttpGatewayBuilder, RetryPolicy};
}

pub use gateway::{GatewayError, GatewayErrorKind, SpendGateway};
#[cfg(feature = "http")]
pub use http_client::HttpGateway;
/// A tool's policy entry (side-effecting or not, how much to reserve, which
/// operation to verify), re-exported so a crate using the layer needs no second
/// dependency for it.
pub use paybond_policies::{SpendSource, ToolPolicy};
pub use paybond_wire::{ApiKey, ApprovalToken, CapabilityToken};
pub use run::{
    ApprovalRequired, ApprovalWait, BoxError, PaybondAgentRun, PaybondAgentRunBuilder,
    PaybondAgentRunService, PhaseError, PolicyReloaded, RunError, RunErrorKind, SpendDenied,
};
pub use tool::{ToolCall, ToolOutput};
pub use tools::{Tool, ToolRegistry, TypedTool, tool_fn};

/// A new idempotency key, as the layer and `HttpGateway` make one for a call
/// that names none: a UUID v7, so keys made one after another sort in the order
/// they were made and a gateway's key index grows at its end instead of at a
/// random place per call (74 of its bits are random).
pub fn new_idempotency_key() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// An amount in cents as every Paybond tool shows it to people: `187.00 USD` (two
/// decimals, the currency code in capitals). Machine-readable output keeps integer
/// cents.
///
/// ```
/// assert_eq!(paybond_middleware_core::format_money(18_700, "usd"), "187.00 USD");
/// assert_eq!(paybond_middleware_core::format_money(5, "eur"), "0.05 EUR");
/// ```
pub fn format_money(cents: u64, currency: &str) -> String {
    format!(
        "{}.{:02} {}",
        cents / 100,
        cents % 100,
        currency.to_ascii_uppercase()
    )
}
