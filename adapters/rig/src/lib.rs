//! rig tools through [`PaybondAgentRun`]: `AgentBuilder::tool(guarded(tool, &run))`.
//!
//! [`guarded`] wraps any rig [`Tool`] (same name, description and argument schema)
//! so that every call is authorized before it runs; [`guarded_dynamic`] does the
//! same for a [`DynamicTool`]. A hold, a denial or a tool failure reaches the model
//! as feedback text: the [`model_feedback`] JSON (`status`, `reason_codes`,
//! `approval_request_id`) as the tool's error message.
//!
//! rig does not give tools the model's tool call id, so each call gets one of its
//! own (`<tool>-<n>`); a model retrying after a hold makes a new call. Bind the run
//! with [`wait_for_approval`](paybond_middleware_core::PaybondAgentRunBuilder::wait_for_approval)
//! so a held call waits for the operator and retries by itself.
//!
//! A tool reports its cost by a top-level `cost_cents` in its output; without one,
//! the reservation settles at the amount authorized.
//!
//! Tool names: what the model sees must match `^[a-zA-Z0-9_-]{1,64}$`, which a policy
//! tool name such as `travel.book_hotel` does not. A rig tool's `NAME` is sent to
//! the model as it is, so name it as [`FunctionNames`] names the policy tool
//! (`travel_book_hotel`); [`guarded`] finds the policy tool from it, and refuses a
//! `NAME` a model API would refuse. [`guarded_dynamic`] renames the tool itself.

use std::sync::{Arc, Mutex, PoisonError};

use paybond_middleware_core::feedback::{FeedbackStatus, model_feedback};
use paybond_middleware_core::function_names::{
    FunctionNameError, FunctionNames, is_valid_function_name,
};
use paybond_middleware_core::{PaybondAgentRun, RunError, ToolCall, ToolOutput};
use rig_core::tool::{DynamicTool, Tool, ToolContext, ToolErrorKind, ToolExecutionError};
use serde::Serialize;
use serde_json::Value;
use tower::{ServiceExt, service_fn};

/// Why a guarded call returned no output: the JSON the model is shown.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardedError {
    /// Held, blocked, or the tool failed.
    pub status: FeedbackStatus,
    /// `{"status", "reason_codes", "approval_request_id"?, "message"}`.
    pub feedback: Value,
}

impl std::fmt::Display for GuardedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.feedback)
    }
}

impl std::error::Error for GuardedError {}

impl GuardedError {
    fn kind(&self) -> ToolErrorKind {
        match self.status {
            FeedbackStatus::PendingApproval | FeedbackStatus::Blocked => {
                ToolErrorKind::PermissionDenied
            }
            _ => ToolErrorKind::Other,
        }
    }
}

/// The inner tool's failure, as a concrete error type for the layer.
#[derive(Debug)]
struct ToolFailure(String);

impl std::fmt::Display for ToolFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ToolFailure {}

fn cost_of(body: &Value) -> Option<u64> {
    body.get("cost_cents").and_then(Value::as_u64)
}

fn finish(result: Result<ToolOutput, RunError<ToolFailure>>) -> Result<Value, GuardedError> {
    match result {
        Ok(output) => Ok(output.body),
        Err(e) => {
            let (status, feedback) = model_feedback::<ToolFailure>(&Err(e));
            Err(GuardedError { status, feedback })
        }
    }
}

/// A rig tool whose calls go through a [`PaybondAgentRun`].
pub struct Guarded<T> {
    tool: Arc<T>,
    run: PaybondAgentRun,
    /// The policy tool the calls are about.
    policy_tool: String,
}

/// Why a rig tool cannot be guarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// The tool's name is not one a model API accepts.
    #[error(
        "the rig tool name `{name}` is not a valid model function name (^[a-zA-Z0-9_-]{{1,64}}$); \
         name it `{suggestion}`: the policy tool is found from that name"
    )]
    InvalidName {
        /// The name.
        name: String,
        /// What to name it.
        suggestion: String,
    },
    /// The run's policy tools cannot all be given function names.
    #[error(transparent)]
    Names(#[from] FunctionNameError),
}

/// The policy tool behind the model function `function` of `run`'s policy, or the
/// name itself when it is a policy tool's own (valid) name.
fn policy_tool(function: &str, run: &PaybondAgentRun) -> Result<String, GuardError> {
    let names = FunctionNames::new(run.tools().keys().map(String::as_str))?;
    if !is_valid_function_name(function) {
        return Err(GuardError::InvalidName {
            name: function.to_owned(),
            suggestion: names.function_name(function).map_or_else(
                || function.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
                str::to_owned,
            ),
        });
    }
    Ok(names.tool_name(function).unwrap_or(function).to_owned())
}

impl<T> std::fmt::Debug for Guarded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

/// Wraps `tool` so that its calls are authorized by `run`, as calls of the policy
/// tool its `NAME` stands for. Refuses a `NAME` a model API would refuse.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
///
/// use paybond_adapter_rig::guarded;
/// use paybond_middleware_core::testing::ScriptedGateway;
/// use paybond_middleware_core::{PaybondAgentRun, ToolPolicy};
/// use rig_core::tool::{Tool, ToolContext};
/// use serde_json::{Value, json};
///
/// #[derive(serde::Deserialize)]
/// struct Booking {
///     amount_cents: u64,
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("the vendor is down")]
/// struct VendorDown;
///
/// /// The model calls it `travel_book_hotel`: the policy's `travel.book_hotel`.
/// struct BookHotel;
///
/// impl Tool for BookHotel {
///     const NAME: &'static str = "travel_book_hotel";
///     type Args = Booking;
///     type Output = Value;
///     type Error = VendorDown;
///     fn description(&self) -> String { "Book a hotel room".into() }
///     fn parameters(&self) -> Value { json!({"type": "object"}) }
///     async fn call(&self, _cx: &mut ToolContext, b: Booking) -> Result<Value, VendorDown> {
///         Ok(json!({"confirmation": "H-1", "cost_cents": b.amount_cents}))
///     }
/// }
///
/// // A scripted gateway that allows; in a program, an `HttpGateway` or the embedded one.
/// let gateway = Arc::new(ScriptedGateway::new());
/// let run = PaybondAgentRun::builder(gateway.clone(), uuid::Uuid::new_v4(), "token".into())
///     .tool("travel.book_hotel", ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"))
///     .bind()
///     .await?;
/// let book = guarded(BookHotel, &run)?; // give it to a rig agent: `.tool(book)`
/// let out = book.call(&mut ToolContext::default(), json!({"amount_cents": 12_000})).await?;
/// assert_eq!(out["confirmation"], "H-1");
/// assert_eq!(gateway.verifies().len(), 1); // verified before it ran
/// # Ok(())
/// # }
/// ```
pub fn guarded<T: Tool + 'static>(
    tool: T,
    run: &PaybondAgentRun,
) -> Result<Guarded<T>, GuardError> {
    Ok(Guarded {
        policy_tool: policy_tool(T::NAME, run)?,
        tool: Arc::new(tool),
        run: run.clone(),
    })
}

impl<T> Tool for Guarded<T>
where
    T: Tool + 'static,
    T::Output: Serialize,
{
    const NAME: &'static str = T::NAME;
    type Args = Value;
    type Output = Value;
    type Error = GuardedError;

    fn description(&self) -> String {
        self.tool.description()
    }

    fn parameters(&self) -> Value {
        self.tool.parameters()
    }

    fn map_error(&self, e: GuardedError) -> ToolExecutionError {
        ToolExecutionError::new(e.kind(), e.to_string())
    }

    async fn call(&self, cx: &mut ToolContext, args: Value) -> Result<Value, GuardedError> {
        let id = new_call_id();
        // The tool runs inside the layer's future, which must own what it uses: the
        // context moves in for the call and back out after it.
        let slot = Arc::new(Mutex::new(Some(std::mem::take(cx))));
        let (tool, inner_slot) = (self.tool.clone(), slot.clone());
        let inner = service_fn(move |call: ToolCall| {
            let (tool, slot) = (tool.clone(), inner_slot.clone());
            async move {
                let args: T::Args = serde_json::from_value(call.args)
                    .map_err(|e| ToolFailure(format!("invalid arguments: {e}")))?;
                let mut cx = slot
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                    .unwrap_or_default();
                let out = tool.call(&mut cx, args).await;
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx);
                let out = out.map_err(|e| ToolFailure(e.to_string()))?;
                let body = serde_json::to_value(&out)
                    .map_err(|e| ToolFailure(format!("output is not JSON: {e}")))?;
                let mut output = ToolOutput::new(body);
                output.cost_cents = cost_of(&output.body);
                Ok::<_, ToolFailure>(output)
            }
        });
        let result = tower::ServiceBuilder::new()
            .layer(self.run.clone())
            .service(inner)
            .oneshot(ToolCall::new(self.policy_tool.clone(), args, id))
            .await;
        if let Some(back) = slot.lock().unwrap_or_else(PoisonError::into_inner).take() {
            *cx = back;
        }
        finish(result)
    }
}

/// An id for a call rig made (rig hands a tool no id of the model's): shaped as
/// OpenAI's (`call_` and 24 hex digits), unique, kept by the call's retries.
fn new_call_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("call_{}", &hex[..24])
}

/// Wraps a [`DynamicTool`] so that its calls are authorized by `run`: same
/// description and schema, every call through the layer. A tool named after its
/// policy tool (`travel.book_hotel`) is renamed to its function name
/// (`travel_book_hotel`) for the model.
pub fn guarded_dynamic(
    tool: DynamicTool,
    run: &PaybondAgentRun,
) -> Result<DynamicTool, GuardError> {
    let definition = tool.definition();
    let names = FunctionNames::new(run.tools().keys().map(String::as_str))?;
    let (name, function) = match names.function_name(&definition.name) {
        // A function name is never empty; were it refused, the tool keeps its own.
        Some(function) => (
            definition.name.to_string(),
            rig_core::completion::message::ToolName::new(function)
                .unwrap_or_else(|_| definition.name.clone()),
        ),
        None => (policy_tool(&definition.name, run)?, definition.name.clone()),
    };
    let inner = Arc::new(tool);
    let run = run.clone();
    Ok(DynamicTool::new(
        function,
        definition.description,
        definition.parameters,
        move |args: Value| {
            let (inner, run, name) = (inner.clone(), run.clone(), name.clone());
            let id = new_call_id();
            Box::pin(async move {
                let service = service_fn(move |call: ToolCall| {
                    let inner = inner.clone();
                    async move {
                        let out = inner
                            .execute(call.args)
                            .await
                            .map_err(|e| ToolFailure(e.to_string()))?;
                        let body = serde_json::to_value(&out)
                            .map_err(|e| ToolFailure(format!("output is not JSON: {e}")))?;
                        Ok::<_, ToolFailure>(ToolOutput::new(body))
                    }
                });
                let result = tower::ServiceBuilder::new()
                    .layer(run)
                    .service(service)
                    .oneshot(ToolCall::new(name, args, id))
                    .await;
                match finish(result) {
                    Ok(body) => Ok(rig_core::tool::ToolOutput::json(body)),
                    Err(e) => Err(ToolExecutionError::new(e.kind(), e.to_string())),
                }
            })
        },
    ))
}

/// The [`COMMIT_PLAN`](paybond_middleware_core::registry::COMMIT_PLAN) tool for a rig agent,
/// when `run`'s policy names a payment phase (`None` otherwise): the model calls it
/// to move the run to COMMIT, after which paid tools may run.
pub fn commit_plan_tool(run: &PaybondAgentRun) -> Option<DynamicTool> {
    run.payment_phase()?;
    let definition = paybond_middleware_core::registry::commit_plan_definition();
    let name = rig_core::completion::message::ToolName::new(definition.name).ok()?;
    let run = run.clone();
    Some(DynamicTool::new(
        name,
        definition.description,
        definition.parameters,
        move |_args: Value| {
            let out = paybond_middleware_core::registry::commit_plan(&run);
            Box::pin(async move { Ok(rig_core::tool::ToolOutput::json(out.body)) })
        },
    ))
}
