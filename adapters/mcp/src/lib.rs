//! Guarded tools as an MCP server (rmcp).
//!
//! [`GuardedMcpServer`] serves a [`GuardedRegistry`] over any rmcp transport
//! (stdio for a child process). Each `tools/call` goes through the layer: the
//! tool's output comes back as a structured result; a hold, a denial or a tool
//! failure comes back as an `is_error` result whose structured content is the
//! [`model_feedback`] JSON (`status`, `reason_codes`, `approval_request_id`), so
//! the client's model can read it and go on.
//!
//! A client may name its tool call with `_meta.tool_call_id` (then a retry after an
//! approval is the same call); otherwise the MCP request id is used.

pub mod paybond_tools;

use std::future::Future;
use std::sync::Arc;

use paybond_middleware_core::ToolCall;
use paybond_middleware_core::feedback::{FeedbackStatus, model_feedback};
use paybond_middleware_core::registry::GuardedRegistry;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, ListToolsResult,
    NumberOrString, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{MaybeSendFuture, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Map, Value};

/// An MCP server whose tools are a guarded registry.
#[derive(Debug, Clone)]
pub struct GuardedMcpServer {
    tools: GuardedRegistry,
    listed: Arc<Vec<Tool>>,
    name: String,
}

/// The `Tool` list entry of a JSON Schema object.
pub(crate) fn schema_object(schema: &Value) -> Arc<Map<String, Value>> {
    Arc::new(match schema {
        Value::Object(m) => m.clone(),
        _ => {
            let mut m = Map::new();
            m.insert("type".to_owned(), Value::String("object".to_owned()));
            m
        }
    })
}

/// The tool call id: `_meta.tool_call_id` when the client gives one, else the request id.
pub(crate) fn tool_call_id(
    request: &CallToolRequestParams,
    context: &RequestContext<RoleServer>,
) -> String {
    // rmcp hands the request's `_meta` to the handler in the context.
    request
        .meta
        .as_ref()
        .and_then(|m| m.get("tool_call_id"))
        .or_else(|| context.meta.get("tool_call_id"))
        .and_then(Value::as_str)
        .map_or_else(
            || match &context.id {
                NumberOrString::Number(n) => format!("mcp-{n}"),
                NumberOrString::String(s) => format!("mcp-{s}"),
            },
            str::to_owned,
        )
}

/// A feedback JSON as an MCP result: success for output, `is_error` for the rest.
pub(crate) fn to_result(status: FeedbackStatus, body: Value) -> CallToolResult {
    match status {
        FeedbackStatus::Ok => CallToolResult::structured(body),
        _ => CallToolResult::structured_error(body),
    }
}

impl GuardedMcpServer {
    /// Serves `tools`, announcing itself as `name`.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use std::sync::Arc;
    ///
    /// use paybond_adapter_mcp::GuardedMcpServer;
    /// use paybond_middleware_core::wire::SandboxBootstrapRequest;
    /// use paybond_middleware_core::{HttpGateway, PaybondAgentRun, ToolOutput, ToolPolicy, ToolRegistry, tool_fn};
    /// use serde_json::{Value, json};
    ///
    /// let gateway = HttpGateway::from_env()?;
    /// let intent = gateway
    ///     .bootstrap_sandbox(&SandboxBootstrapRequest {
    ///         operation: "shop.buy".into(),
    ///         requested_spend_cents: 10_000,
    ///         ..Default::default()
    ///     })
    ///     .await?;
    /// let registry = ToolRegistry::new().with(tool_fn(
    ///     "shop.buy",
    ///     ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
    ///     |args: Value| async move {
    ///         let cents = args["amount_cents"].as_u64().ok_or("amount_cents is required")?;
    ///         Ok(ToolOutput::new(json!({"order": "ORD-1"})).with_cost_cents(cents))
    ///     },
    /// ));
    /// let run = PaybondAgentRun::builder(Arc::new(gateway), intent.intent_id, intent.capability_token)
    ///     .tools(registry.policies())
    ///     .bind()
    ///     .await?;
    /// // Every call the MCP client makes is verified first.
    /// GuardedMcpServer::new(registry.guarded(&run), "shop").serve_stdio().await
    /// # }
    /// ```
    pub fn new(tools: GuardedRegistry, name: impl Into<String>) -> Self {
        let listed = tools
            .definitions()
            .iter()
            .map(|d| {
                Tool::new(
                    d.name.clone(),
                    d.description.clone(),
                    schema_object(&d.parameters),
                )
            })
            .collect();
        Self {
            tools,
            listed: Arc::new(listed),
            name: name.into(),
        }
    }

    /// Serves on stdin/stdout until the client disconnects. Log to stderr only:
    /// stdout carries the protocol.
    pub async fn serve_stdio(self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let running = self.serve(rmcp::transport::stdio()).await?;
        running.waiting().await?;
        Ok(())
    }
}

impl ServerHandler for GuardedMcpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                self.name.clone(),
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Paid tools are authorized before they run. A result with status \
                 `pending_approval` waits for an operator; `blocked` will not run.",
            )
    }

    fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListToolsResult, ErrorData>> + MaybeSendFuture + '_ {
        std::future::ready(Ok(ListToolsResult::with_all_items((*self.listed).clone())))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let id = tool_call_id(&request, &context);
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        let result = self
            .tools
            .dispatch(ToolCall::new(request.name.to_string(), args, id))
            .await;
        let (status, body) = model_feedback(&result);
        tracing::debug!(tool = %request.name, status = status.as_str(), "mcp tool call");
        Ok(to_result(status, body).into())
    }
}
