//! The generic adapter: an async `{name, execute}` tool trait and a registry that
//! dispatches calls by name through the layer, for custom orchestrators.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
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

    /// Whether `args` are arguments this tool takes; why not, if they are not. A
    /// [`GuardedRegistry`] refuses a call whose arguments are not
    /// ([`RunError::InvalidCall`]) before any verify. Anything by default; a
    /// [`TypedTool`]'s arguments must deserialize into its `Args`.
    fn check_args(&self, args: &Value) -> Result<(), String> {
        let _ = args;
        Ok(())
    }

    /// Runs the tool.
    async fn execute(&self, args: Value) -> Result<ToolOutput, BoxError>;
}

/// A tool whose arguments are a type of yours: their JSON Schema (the tool's
/// [`parameters`](Tool::parameters)) comes from the type, and a call whose
/// arguments do not deserialize into it is refused before any verify. Every
/// `TypedTool` is a [`Tool`].
///
/// ```
/// use async_trait::async_trait;
/// use paybond_middleware_core::{BoxError, ToolOutput, TypedTool};
/// use serde::Deserialize;
/// use serde_json::json;
///
/// /// A hotel room to book.
/// #[derive(Deserialize, schemars::JsonSchema)]
/// struct Booking {
///     /// The hotel.
///     hotel: String,
///     /// What it costs, in cents.
///     amount_cents: u64,
/// }
///
/// struct BookHotel;
///
/// #[async_trait]
/// impl TypedTool for BookHotel {
///     type Args = Booking;
///     fn name(&self) -> &str { "travel.book_hotel" }
///     async fn call(&self, args: Booking) -> Result<ToolOutput, BoxError> {
///         Ok(ToolOutput::new(json!({"booked": args.hotel})).with_cost_cents(args.amount_cents))
///     }
/// }
///
/// use paybond_middleware_core::Tool;
/// let schema = BookHotel.parameters();
/// assert_eq!(schema["properties"]["amount_cents"]["type"], "integer");
/// assert!(BookHotel.check_args(&json!({"hotel": "h1"})).is_err());
/// ```
#[async_trait]
pub trait TypedTool: Send + Sync + 'static {
    /// Its arguments.
    type Args: DeserializeOwned + JsonSchema + Send;

    /// The name the agent calls it by (and its policy entry's key).
    fn name(&self) -> &str;

    /// What it does, for the model.
    fn description(&self) -> &str {
        ""
    }

    /// Its local policy entry (see [`Tool::policy`]). None by default.
    fn policy(&self) -> Option<ToolPolicy> {
        None
    }

    /// Runs the tool.
    async fn call(&self, args: Self::Args) -> Result<ToolOutput, BoxError>;
}

/// The JSON Schema of `A`, as a tool's parameters: an object schema, its
/// subschemas inline and without `$schema` (what every model API reads; a schema
/// that admits anything, `serde_json::Value`'s, is any object).
fn parameters_of<A: JsonSchema>() -> Value {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.inline_subschemas = true;
    settings.meta_schema = None;
    let schema = settings.into_generator().into_root_schema_for::<A>();
    let schema = serde_json::to_value(schema).unwrap_or(Value::Bool(true));
    match schema {
        Value::Object(map) if map.contains_key("type") || map.contains_key("properties") => {
            Value::Object(map)
        }
        _ => json!({"type": "object"}),
    }
}

/// Whether `args` deserialize into `A`; serde's reason if not.
fn check_as<A: DeserializeOwned>(args: &Value) -> Result<(), String> {
    A::deserialize(args)
        .map(drop)
        .map_err(|e| format!("invalid arguments: {e}"))
}

#[async_trait]
impl<T: TypedTool> Tool for T {
    fn name(&self) -> &str {
        TypedTool::name(self)
    }

    fn description(&self) -> &str {
        TypedTool::description(self)
    }

    fn parameters(&self) -> Value {
        parameters_of::<T::Args>()
    }

    fn policy(&self) -> Option<ToolPolicy> {
        TypedTool::policy(self)
    }

    fn check_args(&self, args: &Value) -> Result<(), String> {
        check_as::<T::Args>(args)
    }

    async fn execute(&self, args: Value) -> Result<ToolOutput, BoxError> {
        let args: T::Args =
            serde_json::from_value(args).map_err(|e| format!("invalid arguments: {e}"))?;
        self.call(args).await
    }
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
        let refused = match self.service.get_ref().tools.get(&call.tool_name) {
            None => Some(UnknownTool(call.tool_name.clone()).to_string()),
            // Arguments the tool does not take are refused before any verify.
            Some(tool) => tool.check_args(&call.args).err(),
        };
        if let Some(reason) = refused {
            return Err(RunError::InvalidCall {
                reason,
                tool_call_id: call.tool_call_id,
                tool: call.tool_name,
            });
        }
        let mut service = self.service.clone();
        poll_fn(|cx| service.poll_ready(cx)).await?;
        service.call(call).await
    }
}

/// A tool made of a name, a policy entry and an async function of its arguments
/// `A`: see [`tool_fn`].
pub struct FnTool<F, A = Value> {
    name: String,
    description: String,
    parameters: Value,
    policy: ToolPolicy,
    f: F,
    args: std::marker::PhantomData<fn(A)>,
}

impl<F, A> std::fmt::Debug for FnTool<F, A> {
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
/// The function takes the arguments as a type of yours (`Deserialize` and
/// `JsonSchema`): the tool's parameter schema is that type's, and a call whose
/// arguments do not deserialize into it is refused before any verify. A function
/// of `serde_json::Value` takes any object.
///
/// ```
/// use paybond_middleware_core::{Tool, ToolOutput, ToolPolicy, tool_fn};
/// use serde::Deserialize;
/// use serde_json::json;
///
/// #[derive(Deserialize, schemars::JsonSchema)]
/// struct Booking {
///     hotel: String,
///     amount_cents: u64,
/// }
///
/// let book = tool_fn(
///     "travel.book_hotel",
///     ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
///     |b: Booking| async move {
///         Ok(ToolOutput::new(json!({"booked": b.hotel})).with_cost_cents(b.amount_cents))
///     },
/// );
/// assert_eq!(book.parameters()["required"], json!(["hotel", "amount_cents"]));
/// assert!(book.check_args(&json!({"hotel": "h1", "amount_cents": "lots"})).is_err());
/// ```
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
pub fn tool_fn<A, F, Fut>(name: impl Into<String>, policy: ToolPolicy, f: F) -> FnTool<F, A>
where
    A: DeserializeOwned + JsonSchema + Send + 'static,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<ToolOutput, BoxError>> + Send + 'static,
{
    FnTool {
        name: name.into(),
        description: String::new(),
        parameters: parameters_of::<A>(),
        policy,
        f,
        args: std::marker::PhantomData,
    }
}

impl<F, A> FnTool<F, A> {
    /// What it does, for the model.
    #[must_use]
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// JSON Schema of its arguments, in place of the one of its argument type.
    #[must_use]
    pub fn with_parameters(mut self, schema: Value) -> Self {
        self.parameters = schema;
        self
    }
}

#[async_trait]
impl<A, F, Fut> Tool for FnTool<F, A>
where
    A: DeserializeOwned + JsonSchema + Send + 'static,
    F: Fn(A) -> Fut + Send + Sync + 'static,
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

    fn check_args(&self, args: &Value) -> Result<(), String> {
        check_as::<A>(args)
    }

    async fn execute(&self, args: Value) -> Result<ToolOutput, BoxError> {
        let args: A =
            serde_json::from_value(args).map_err(|e| format!("invalid arguments: {e}"))?;
        (self.f)(args).await
    }
}
