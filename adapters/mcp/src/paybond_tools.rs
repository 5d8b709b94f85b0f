//! The Paybond tools over MCP (`paybond-mcp-server`): bootstrap a sandbox guardrail,
//! authorize agent spend, complete a decision, read an approval's status.
//!
//! With [`ToolPolicy::ReadOnly`] only `approval_status` is listed and callable: no
//! tool that creates intents, reservations or settlements.

use std::future::Future;
use std::sync::Arc;

use paybond_middleware_core::wire::{
    CompleteRequest, Finalization, SandboxBootstrapRequest, VerifyRequest,
};
use paybond_middleware_core::{
    ApprovalToken, CapabilityToken, FeedbackStatus, HttpGateway, SpendGateway,
};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{MaybeSendFuture, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{schema_object, to_result};

/// Which tools the server exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolPolicy {
    /// Every tool.
    Default,
    /// Only `approval_status`: nothing that moves or reserves money.
    ReadOnly,
}

/// The packaged Paybond MCP server over an HTTP gateway.
#[derive(Debug, Clone)]
pub struct PaybondToolsServer {
    gateway: Arc<HttpGateway>,
    policy: ToolPolicy,
}

const MUTATING: [&str; 3] = [
    "bootstrap_sandbox_guardrail",
    "authorize_agent_spend",
    "complete_decision",
];

fn tools(policy: ToolPolicy) -> Vec<Tool> {
    let all = [
        (
            "bootstrap_sandbox_guardrail",
            "Create a funded sandbox intent (budget = requested_spend_cents, one operation) and get its capability token.",
            json!({"type": "object", "required": ["operation", "requested_spend_cents"], "properties": {
                "operation": {"type": "string"},
                "requested_spend_cents": {"type": "integer", "minimum": 1},
                "currency": {"type": "string"}}}),
        ),
        (
            "authorize_agent_spend",
            "Ask whether a paid call may run: allow (reserves the amount), hold for approval, or deny.",
            json!({"type": "object", "required": ["intent_id", "capability_token", "operation", "requested_spend_cents"], "properties": {
                "intent_id": {"type": "string", "format": "uuid"},
                "capability_token": {"type": "string"},
                "operation": {"type": "string"},
                "requested_spend_cents": {"type": "integer", "minimum": 0},
                "vendor_id": {"type": "string"},
                "tool_name": {"type": "string"},
                "approval_token": {"type": "string"}}}),
        ),
        (
            "complete_decision",
            "Settle an allowed decision: consumed (with the actual cost) or released.",
            json!({"type": "object", "required": ["decision_id", "outcome"], "properties": {
                "decision_id": {"type": "string", "format": "uuid"},
                "outcome": {"type": "string", "enum": ["consumed", "released"]},
                "actual_spend_cents": {"type": "integer", "minimum": 0}}}),
        ),
        (
            "approval_status",
            "Where an approval request stands; carries the approval token once approved.",
            json!({"type": "object", "required": ["approval_request_id"], "properties": {
                "approval_request_id": {"type": "string", "format": "uuid"}}}),
        ),
    ];
    all.into_iter()
        .filter(|(name, ..)| policy == ToolPolicy::Default || !MUTATING.contains(name))
        .map(|(name, description, schema)| Tool::new(name, description, schema_object(&schema)))
        .collect()
}

fn blocked(code: &str, message: impl Into<String>) -> Value {
    json!({"status": "blocked", "reason_codes": [code], "message": message.into()})
}

fn field<'a>(args: &'a Value, name: &str) -> Result<&'a Value, Value> {
    args.get(name)
        .filter(|v| !v.is_null())
        .ok_or_else(|| blocked("invalid_arguments", format!("`{name}` is required")))
}

fn text(args: &Value, name: &str) -> Result<String, Value> {
    field(args, name)?
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| blocked("invalid_arguments", format!("`{name}` must be a string")))
}

fn cents(args: &Value, name: &str) -> Result<u64, Value> {
    field(args, name)?.as_u64().ok_or_else(|| {
        blocked(
            "invalid_arguments",
            format!("`{name}` must be a whole number of cents"),
        )
    })
}

fn parse_uuid(s: &str) -> Option<Uuid> {
    Uuid::parse_str(s).ok()
}

fn opt_text(args: &Value, name: &str) -> Option<String> {
    args.get(name).and_then(Value::as_str).map(str::to_owned)
}

impl PaybondToolsServer {
    /// The server over `gateway`, exposing the tools `policy` allows.
    pub fn new(gateway: HttpGateway, policy: ToolPolicy) -> Self {
        Self {
            gateway: Arc::new(gateway),
            policy,
        }
    }

    async fn call(&self, name: &str, args: &Value) -> Result<Value, Value> {
        if self.policy == ToolPolicy::ReadOnly && MUTATING.contains(&name) {
            return Err(blocked(
                "tool_not_available",
                "this server runs with --tool-policy readonly",
            ));
        }
        let refused =
            |e: paybond_middleware_core::GatewayError| blocked("gateway_error", e.to_string());
        match name {
            "bootstrap_sandbox_guardrail" => {
                let r = self
                    .gateway
                    .bootstrap_sandbox(&SandboxBootstrapRequest {
                        operation: text(args, "operation")?,
                        requested_spend_cents: cents(args, "requested_spend_cents")?,
                        currency: opt_text(args, "currency"),
                        evidence_schema: None,
                        metadata: None,
                        idempotency_key: None,
                    })
                    .await
                    .map_err(refused)?;
                serde_json::to_value(r).map_err(|e| blocked("internal", e.to_string()))
            }
            "authorize_agent_spend" => {
                let r = self
                    .gateway
                    .verify(&VerifyRequest {
                        intent_id: parse_uuid(&text(args, "intent_id")?).ok_or_else(|| {
                            blocked("invalid_arguments", "`intent_id` is not a UUID")
                        })?,
                        token: CapabilityToken::new(text(args, "capability_token")?),
                        operation: text(args, "operation")?,
                        requested_spend_cents: cents(args, "requested_spend_cents")?,
                        vendor_id: opt_text(args, "vendor_id"),
                        task_id: None,
                        workflow_id: None,
                        tool_call_id: None,
                        tool_name: opt_text(args, "tool_name"),
                        currency: None,
                        agent_subject: None,
                        approval_token: opt_text(args, "approval_token").map(ApprovalToken::new),
                        idempotency_key: None,
                    })
                    .await
                    .map_err(refused)?;
                serde_json::to_value(r).map_err(|e| blocked("internal", e.to_string()))
            }
            "complete_decision" => {
                let decision = parse_uuid(&text(args, "decision_id")?)
                    .ok_or_else(|| blocked("invalid_arguments", "`decision_id` is not a UUID"))?;
                let outcome = match text(args, "outcome")?.as_str() {
                    "consumed" => Finalization::Consumed,
                    "released" => Finalization::Released,
                    other => {
                        return Err(blocked(
                            "invalid_arguments",
                            format!("`outcome` is consumed or released, not `{other}`"),
                        ));
                    }
                };

                let r = self
                    .gateway
                    .complete_decision(
                        decision,
                        &CompleteRequest {
                            outcome,
                            actual_spend_cents: args
                                .get("actual_spend_cents")
                                .and_then(Value::as_u64),
                        },
                        &format!("{decision}:complete"),
                    )
                    .await
                    .map_err(refused)?;
                serde_json::to_value(r).map_err(|e| blocked("internal", e.to_string()))
            }
            "approval_status" => {
                let id = parse_uuid(&text(args, "approval_request_id")?).ok_or_else(|| {
                    blocked("invalid_arguments", "`approval_request_id` is not a UUID")
                })?;
                let r = self.gateway.approval_status(id).await.map_err(refused)?;
                serde_json::to_value(r).map_err(|e| blocked("internal", e.to_string()))
            }
            other => Err(blocked("unknown_tool", format!("no tool `{other}`"))),
        }
    }
}

impl ServerHandler for PaybondToolsServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "paybond-mcp-server",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Authorize paid agent actions with Paybond before running them: \
                 authorize_agent_spend first, run the action only if allow is true, \
                 then complete_decision.",
            )
    }

    fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListToolsResult, ErrorData>> + MaybeSendFuture + '_ {
        std::future::ready(Ok(ListToolsResult::with_all_items(tools(self.policy))))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        let result = match self.call(&request.name, &args).await {
            Ok(body) => to_result(FeedbackStatus::Ok, body),
            Err(body) => to_result(FeedbackStatus::Blocked, body),
        };
        Ok(result.into())
    }
}
