//! The generic adapter: an async `{name, execute}` tool trait and a registry that
//! dispatches calls by name through the layer, for custom orchestrators.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::{Value, json};
use tower::Service;

use crate::run::{BoxError, PaybondAgentRun, PaybondAgentRunService, RunError};
use crate::tool::{ToolCall, ToolOutput};
use crate::wire::Phase;
use paybond_policies::ToolPolicy;

/// A tool an agent can call: JSON arguments in, JSON result (and its cost) out.
///
/// ```
/// use async_trait::async_trait;
/// use paybond_middleware_core::{BoxError, Tool, ToolOutput};
/// use serde_json::{Value, json};
///
/// struct BookHotel;
///
/// #[async_trait]
/// impl Tool for BookHotel {
///     fn name(&self) -> &str { "travel.book_hotel" }
///     async fn execute(&self, args: Value) -> Result<ToolOutput, BoxError> {
///         let cents = args["amount_cents"].as_u64().ok_or("amount_cents is required")?;
///         Ok(ToolOutput::new(json!({"confirmation": "H-1"})).with_cost_cents(cents))
///     }
/// }
/// ```
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// The name the agent calls it by (and its policy entry's key).
    fn name(&self) -> &str;

    /// What it does, for the model.
    fn description(&self) -> &str {
        ""
    }

    /// JSON Schema of its arguments.
    fn parameters(&self) -> Value {
        json!({"type": "object"})
    }

    /// Its local policy entry, for a run whose gateway has no effective policy
    /// naming it (see [`ToolRegistry::policies`]). None by default.
    fn policy(&self) -> Option<ToolPolicy> {
        None
    }

    /// Runs the tool.
    async fn execute(&self, args: Value) -> Result<ToolOutput, BoxError>;
}

/// Name, description and argument schema of a tool, for a model's tool list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolDefinition {
    /// The tool's name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its arguments.
    pub parameters: Value,
}

/// Tools by name.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.tools.keys()).finish()
    }
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool; a tool of the same name is replaced.
    #[must_use]
    pub fn with(mut self, tool: impl Tool) -> Self {
        self.register(Arc::new(tool));
        self
    }

    /// Adds a shared tool; returns the one it replaced.
    pub fn register(&mut self, tool: Arc<dyn Tool>) -> Option<Arc<dyn Tool>> {
        self.tools.insert(tool.name().to_owned(), tool)
    }

    /// The local policy entries of the tools that have one (a [`tool_fn`](crate::tool_fn)
    /// tool's policy), for [`PaybondAgentRunBuilder::tools`](crate::PaybondAgentRunBuilder::tools).
    pub fn policies(&self) -> Vec<(String, ToolPolicy)> {
        self.tools
            .iter()
            .filter_map(|(name, t)| Some((name.clone(), t.policy()?)))
            .collect()
    }

    /// The tool called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.get(name)
    }

    /// Definitions of every tool, sorted by name.
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        self.tools
            .values()
            .map(|t| ToolDefinition {
                name: t.name().to_owned(),
                description: t.description().to_owned(),
                parameters: t.parameters(),
            })
            .collect()
    }

    /// The registry as a tower service that runs a call's tool, unguarded.
    pub fn into_service(self) -> ToolRouter {
        ToolRouter {
            tools: Arc::new(self.tools),
        }
    }

    /// The registry behind `run`'s layer: every call is authorized first. When the
    /// run's policy names a payment phase, the registry also offers
    /// [`COMMIT_PLAN`] (unless a tool of its own has that name): the model calls it
    /// to move the run to COMMIT, after which paid tools may run.
    pub fn guarded(self, run: &PaybondAgentRun) -> GuardedRegistry {
        let mut definitions = self.definitions();
        let commit_plan = run.payment_phase().is_some() && !self.tools.contains_key(COMMIT_PLAN);
        if commit_plan {
            definitions.push(commit_plan_definition());
            definitions.sort_by(|a, b| a.name.cmp(&b.name));
        }
        GuardedRegistry {
            service: PaybondAgentRunService::new(self.into_service(), run.clone()),
            definitions: Arc::new(definitions),
            commit_plan,
        }
    }
}

/// A tower service that dispatches a [`ToolCall`] to the registry's tool of that name.
#[derive(Clone)]
pub struct ToolRouter {
    tools: Arc<BTreeMap<String, Arc<dyn Tool>>>,
}

impl std::fmt::Debug for ToolRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.tools.keys()).finish()
    }
}

/// No tool has the called name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no tool named `{0}`")]
pub struct UnknownTool(pub String);

impl Service<ToolCall> for ToolRouter {
    type Response = ToolOutput;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<ToolOutput, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: ToolCall) -> Self::Future {
        let tool = self.tools.get(&call.tool_name).cloned();
        Box::pin(async move {
            match tool {
                Some(tool) => tool.execute(call.args).await,
                None => Err(UnknownTool(call.tool_name).into()),
            }
        })
    }
}

/// A registry whose every call goes through a [`PaybondAgentRun`].
///
/// Cheap to clone; clones share the run.
#[derive(Clone, Debug)]
pub struct GuardedRegistry {
    service: PaybondAgentRunService<ToolRouter>,
    definitions: Arc<Vec<ToolDefinition>>,
    /// The built-in [`COMMIT_PLAN`] is offered.
    commit_plan: bool,
}

/// The built-in tool that moves a run to the COMMIT phase, offered by a
/// [`GuardedRegistry`] when the run's policy names a payment phase.
pub const COMMIT_PLAN: &str = "commit_plan";

/// [`COMMIT_PLAN`] as the model sees it.
pub fn commit_plan_definition() -> ToolDefinition {
    ToolDefinition {
        name: COMMIT_PLAN.to_owned(),
        description: "Commit to your plan. Paid or side-effecting tools are refused until \
                      you call this; call it once the plan is final, then carry it out."
            .to_owned(),
        parameters: json!({"type": "object", "properties": {
            "plan": {"type": "string", "description": "The plan you commit to, in one or two sentences."}
        }}),
    }
}

/// Runs [`COMMIT_PLAN`] on `run`: moves it to COMMIT and says where it was.
pub fn commit_plan(run: &PaybondAgentRun) -> ToolOutput {
    // COMMIT is the last phase: moving there never goes back.
    let was = run.enter_phase(Phase::Commit).unwrap_or(Phase::Commit);
    ToolOutput::new(json!({"phase": Phase::Commit, "previous_phase": was}))
}

impl GuardedRegistry {
    /// The run calls are authorized by.
    pub fn run(&self) -> &PaybondAgentRun {
        self.service.run()
    }

    /// Definitions of every tool, sorted by name.
    pub fn definitions(&self) -> &[ToolDefinition] {
        &self.definitions
    }

    /// Calls `name` with `args` as tool call `tool_call_id`.
    pub async fn call(
        &self,
        name: &str,
        args: Value,
        tool_call_id: &str,
    ) -> Result<ToolOutput, RunError> {
        self.dispatch(ToolCall::new(name, args, tool_call_id)).await
    }

    /// Dispatches a prepared call. A name no tool has is refused before any verify.
    pub async fn dispatch(&self, call: ToolCall) -> Result<ToolOutput, RunError> {
        if self.commit_plan && call.tool_name == COMMIT_PLAN {
            return Ok(commit_plan(self.run()));
        }
        if !self.service.get_ref().tools.contains_key(&call.tool_name) {
            return Err(RunError::InvalidCall {
                reason: UnknownTool(call.tool_name.clone()).to_string(),
                tool_call_id: call.tool_call_id,
                tool: call.tool_name,
            });
        }
        let mut service = self.service.clone();
        poll_fn(|cx| service.poll_ready(cx)).await?;
        service.call(call).await
    }
}

/// A tool made of a name, a policy entry and an async function: see [`tool_fn`].
pub struct FnTool<F> {
    name: String,
    description: String,
    parameters: Value,
    policy: ToolPolicy,
    f: F,
}

impl<F> std::fmt::Debug for FnTool<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnTool")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// A [`Tool`] from an async function, without a struct and an impl.
///
/// `policy` is the tool's local entry: the run uses the gateway's effective policy
/// where it names the tool, and this entry where it does not
/// ([`ToolRegistry::policies`] hands it to the run builder).
///
/// ```
/// use paybond_middleware_core::{ToolOutput, ToolPolicy, ToolRegistry, tool_fn};
/// use serde_json::{Value, json};
///
/// let book = tool_fn(
///     "travel.book_hotel",
///     ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
///     |args: Value| async move {
///         let cents = args["amount_cents"].as_u64().ok_or("amount_cents is required")?;
///         Ok(ToolOutput::new(json!({"confirmation": "H-1"})).with_cost_cents(cents))
///     },
/// )
/// .with_description("Books a hotel room")
/// .with_parameters(json!({"type": "object", "properties": {"amount_cents": {"type": "integer"}}}));
/// let registry = ToolRegistry::new().with(book);
/// assert_eq!(registry.policies().len(), 1);
/// ```
pub fn tool_fn<F, Fut>(name: impl Into<String>, policy: ToolPolicy, f: F) -> FnTool<F>
where
    F: Fn(Value) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<ToolOutput, BoxError>> + Send + 'static,
{
    FnTool {
        name: name.into(),
        description: String::new(),
        parameters: json!({"type": "object"}),
        policy,
        f,
    }
}

impl<F> FnTool<F> {
    /// What it does, for the model.
    #[must_use]
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// JSON Schema of its arguments (default: any object).
    #[must_use]
    pub fn with_parameters(mut self, schema: Value) -> Self {
        self.parameters = schema;
        self
    }
}

#[async_trait]
impl<F, Fut> Tool for FnTool<F>
where
    F: Fn(Value) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<ToolOutput, BoxError>> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn parameters(&self) -> Value {
        self.parameters.clone()
    }

    fn policy(&self) -> Option<ToolPolicy> {
        Some(self.policy.clone())
    }

    async fn execute(&self, args: Value) -> Result<ToolOutput, BoxError> {
        (self.f)(args).await
    }
}
