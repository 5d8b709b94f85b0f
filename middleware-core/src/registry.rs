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

    /// The registry behind `run`'s layer: every call is authorized first.
    pub fn guarded(self, run: &PaybondAgentRun) -> GuardedRegistry {
        let definitions = self.definitions();
        GuardedRegistry {
            service: PaybondAgentRunService::new(self.into_service(), run.clone()),
            definitions: Arc::new(definitions),
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
