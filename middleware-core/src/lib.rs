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
//! [`RunTrace`]. The gateway is any [`SpendGateway`]: [`HttpGateway`] over HTTP, or
//! the embedded engine.
//!
//! ```
//! # #[cfg(not(feature = "test-util"))] fn main() {}
//! # #[cfg(feature = "test-util")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! use std::sync::Arc;
//! use paybond_middleware_core::{
//!     BoxError, PaybondAgentRun, RunError, Tool, ToolOutput, ToolRegistry,
//!     testing::{ScriptedGateway, VerifyScript},
//! };
//! use paybond_middleware_core::ToolPolicy;
//! use serde_json::{Value, json};
//! use uuid::Uuid;
//!
//! struct BookHotel;
//! #[async_trait::async_trait]
//! impl Tool for BookHotel {
//!     fn name(&self) -> &str { "travel.book_hotel" }
//!     async fn execute(&self, args: Value) -> Result<ToolOutput, BoxError> {
//!         Ok(ToolOutput::new(json!({"booked": args["hotel"]})).with_cost_cents(11_500))
//!     }
//! }
//!
//! let gateway = Arc::new(ScriptedGateway::new());
//! gateway.push_verify(VerifyScript::Allow).push_verify(VerifyScript::deny("tool_cap_exceeded"));
//! let run = PaybondAgentRun::builder(gateway.clone(), Uuid::new_v4(), "capability-token".into())
//!     .tool("travel.book_hotel", ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"))
//!     .bind()
//!     .await?;
//! let tools = ToolRegistry::new().with(BookHotel).guarded(&run);
//!
//! let booked = tools.call("travel.book_hotel", json!({"hotel": "h1", "amount_cents": 12_000}), "call_1").await?;
//! assert_eq!(booked.cost_cents, Some(11_500));
//!
//! let denied = tools.call("travel.book_hotel", json!({"hotel": "h2", "amount_cents": 25_000}), "call_2").await;
//! assert!(matches!(denied, Err(RunError::SpendDenied(_))));
//! println!("{}", run.trace().table());
//! # Ok::<_, Box<dyn std::error::Error>>(()) }) }
//! ```

mod feedback;
pub mod function_names;
mod gateway;
mod http;
mod registry;
mod run;
pub mod scope;
mod secret;
mod tool;
mod trace;
pub mod wire;

#[cfg(feature = "test-util")]
pub mod testing;

pub use feedback::{FeedbackStatus, model_feedback};
pub use function_names::{FunctionNameError, FunctionNames, is_valid_function_name};
pub use gateway::{GatewayError, GatewayErrorKind, SpendGateway};
pub use http::{HttpGateway, HttpGatewayBuilder, RetryPolicy, new_idempotency_key};
/// A tool's policy entry (side-effecting or not, how much to reserve, which
/// operation to verify), re-exported so a crate using the layer needs no second
/// dependency for it.
pub use paybond_policies::{SpendSource, ToolPolicy};
pub use registry::{
    COMMIT_PLAN, FnTool, GuardedRegistry, Tool, ToolDefinition, ToolRegistry, ToolRouter,
    UnknownTool, commit_plan, commit_plan_definition, tool_fn,
};
pub use run::{
    ApprovalRequired, ApprovalWait, BoxError, PaybondAgentRun, PaybondAgentRunBuilder,
    PaybondAgentRunService, PhaseError, PolicyReloaded, RunError, RunErrorKind, SpendDenied,
    sensitive_path,
};
pub use scope::{CompensationEntry, TransactionScope, WorkflowFailed, transaction};
pub use secret::{ApiKey, ApprovalToken, CapabilityToken};
pub use tool::{ToolCall, ToolOutput};
pub use trace::{RunTrace, TraceEntry, TraceOutcome, TraceTotals};

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
