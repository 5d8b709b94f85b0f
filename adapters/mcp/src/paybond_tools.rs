//! The Paybond tools over MCP (`paybond-mcp-server`), named as the Paybond Kit's:
//! the principal, a sandbox guardrail, authorize and complete spend, the budget
//! left and why a call would pass (preflight), evidence, intents, approvals and
//! compliance audit exports.
//!
//! Each tool carries MCP annotations (`readOnlyHint`, `destructiveHint`).
//! [`ExposedTools::ReadOnly`] lists and allows only the read-only tools;
//! [`ExposedTools::SpendWrite`] (the default) everything not destructive;
//! [`ExposedTools::Allowlist`] exactly the tools named. The tools are rmcp's
//! `#[tool]` methods, each taking its arguments as a type of its own: the tool's
//! JSON Schema is the type's, and a call whose arguments do not parse into it is
//! a `blocked` result (`invalid_arguments`) naming the field.

use std::future::Future;
use std::sync::Arc;

use paybond_middleware_core::feedback::FeedbackStatus;
use paybond_middleware_core::wire::{
    CompleteRequest, EvidenceRequest, Finalization, Phase, PreflightRequest,
    SandboxBootstrapRequest, VerifyRequest,
};
use paybond_middleware_core::{ApprovalToken, CapabilityToken, HttpGateway, SpendGateway};
use rmcp::handler::server::tool::{ToolCallContext, ToolRouter};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::{MaybeSendFuture, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::to_result;

/// Which tools the server exposes (its `--tool-policy`). Not to be confused with
/// a tool's spend policy entry, `paybond_middleware_core::ToolPolicy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExposedTools {
    /// Everything but tools annotated destructive (the default; none of this
    /// server's sandbox tools moves live money). `default` is accepted as its name.
    SpendWrite,
    /// Only the tools annotated read-only: nothing that creates intents, reserves or
    /// settles.
    ReadOnly,
    /// Exactly these tools.
    Allowlist(Vec<String>),
}

impl ExposedTools {
    /// `readonly`, `spend-write` (or `default`) or `allowlist` with its tools
    /// (comma-separated); an unknown policy or tool name is an error naming it.
    pub fn parse(name: &str, allowlist: Option<&str>) -> Result<Self, String> {
        match name {
            "readonly" | "read-only" => Ok(Self::ReadOnly),
            "spend-write" | "default" => Ok(Self::SpendWrite),
            "allowlist" => {
                let names: Vec<String> = allowlist
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect();
                if names.is_empty() {
                    return Err(
                        "--tool-policy allowlist needs --tool-allowlist a,b (or PAYBOND_MCP_TOOL_ALLOWLIST)"
                            .to_owned(),
                    );
                }
                let all: Vec<String> = PaybondToolsServer::tool_router()
                    .list_all()
                    .into_iter()
                    .map(|t| t.name.to_string())
                    .collect();
                if let Some(unknown) = names.iter().find(|n| !all.contains(n)) {
                    return Err(format!(
                        "--tool-allowlist: no tool `{unknown}`; the tools are {}",
                        all.join(", ")
                    ));
                }
                Ok(Self::Allowlist(names))
            }
            other => Err(format!(
                "--tool-policy is readonly, spend-write or allowlist, not `{other}`"
            )),
        }
    }

    /// Whether `tool` is exposed, from its annotations (or its name).
    fn allows(&self, tool: &Tool) -> bool {
        let hint = |h: fn(&ToolAnnotations) -> Option<bool>| {
            tool.annotations.as_ref().and_then(h).unwrap_or(false)
        };
        match self {
            Self::SpendWrite => !hint(|a| a.destructive_hint),
            Self::ReadOnly => hint(|a| a.read_only_hint),
            Self::Allowlist(names) => names.iter().any(|n| n.as_str() == tool.name.as_ref()),
        }
    }
}

/// The packaged Paybond MCP server over an HTTP gateway.
#[derive(Debug, Clone)]
pub struct PaybondToolsServer {
    gateway: Arc<HttpGateway>,
    /// The tools its exposure allows (rmcp's router of the `#[tool]` methods below).
    router: ToolRouter<Self>,
}

/// `paybond_get_principal` takes nothing.
#[derive(Deserialize, JsonSchema)]
struct NoArgs {}

/// `paybond_bootstrap_sandbox_guardrail`.
#[derive(Deserialize, JsonSchema)]
struct BootstrapArgs {
    /// The one operation the intent allows, e.g. `travel.book_hotel`.
    operation: String,
    /// The intent's budget, in cents.
    #[schemars(range(min = 1))]
    requested_spend_cents: u64,
    /// ISO currency code (default `usd`).
    currency: Option<String>,
}

/// `paybond_authorize_agent_spend`.
#[derive(Deserialize, JsonSchema)]
struct AuthorizeArgs {
    /// The intent the call spends from.
    intent_id: Uuid,
    /// The intent's capability token.
    capability_token: String,
    /// The operation the call performs.
    operation: String,
    /// What the call would spend, in cents.
    requested_spend_cents: u64,
    /// The vendor paid, for vendor caps and allowlists.
    vendor_id: Option<String>,
    /// The policy tool the call belongs to, when the operation alone does not say.
    tool_name: Option<String>,
    /// The approval token of an approved hold, on the retry.
    approval_token: Option<String>,
    /// The run's phase (`EXPLORE`, `DECIDE` or `COMMIT`).
    phase: Option<Phase>,
}

/// `paybond_complete_spend_decision`.
#[derive(Deserialize, JsonSchema)]
struct CompleteArgs {
    /// The allowed decision.
    decision_id: Uuid,
    /// `consumed` (the call ran) or `released` (it did not).
    outcome: Finalization,
    /// What the call cost, in cents, when consumed (default: the amount reserved).
    actual_spend_cents: Option<u64>,
}

/// `paybond_get_budget_remaining`.
#[derive(Deserialize, JsonSchema)]
struct BudgetArgs {
    /// The intent.
    intent_id: Uuid,
    /// The operation (default `*`: the intent's budget only).
    operation: Option<String>,
    /// An amount to ask about, in cents.
    requested_spend_cents: Option<u64>,
}

/// `paybond_explain_policy`.
#[derive(Deserialize, JsonSchema)]
struct ExplainArgs {
    /// The intent.
    intent_id: Uuid,
    /// The operation the call would perform.
    operation: String,
    /// What it would spend, in cents.
    requested_spend_cents: Option<u64>,
    /// The vendor it would pay.
    vendor_id: Option<String>,
    /// The policy tool it belongs to.
    tool_name: Option<String>,
}

/// `paybond_submit_sandbox_guardrail_evidence`.
#[derive(Deserialize, JsonSchema)]
struct EvidenceArgs {
    /// The intent.
    intent_id: Uuid,
    /// What the call did: `status` and `cost_cents`.
    payload: Map<String, Value>,
    /// The operation it performed.
    operation: Option<String>,
    /// `decision_id` names the decision.
    metadata: Option<Map<String, Value>>,
}

/// `paybond_get_intent`.
#[derive(Deserialize, JsonSchema)]
struct IntentArgs {
    /// The intent.
    intent_id: Uuid,
}

/// `paybond_list_intents`.
#[derive(Deserialize, JsonSchema)]
struct ListIntentsArgs {
    /// Only intents in this state.
    status: Option<String>,
    /// At most this many.
    #[schemars(range(min = 1, max = 500))]
    limit: Option<u32>,
    /// Continue after a previous page.
    cursor: Option<String>,
}

/// `paybond_list_audit_exports`.
#[derive(Deserialize, JsonSchema)]
struct ListExportsArgs {
    /// At most this many.
    #[schemars(range(min = 1, max = 200))]
    limit: Option<u32>,
    /// Continue after a previous page.
    cursor: Option<String>,
}

/// `paybond_get_audit_export`.
#[derive(Deserialize, JsonSchema)]
struct ExportArgs {
    /// The export job.
    job_id: Uuid,
}

/// `paybond_get_approval_status`.
#[derive(Deserialize, JsonSchema)]
struct ApprovalArgs {
    /// The approval request.
    approval_request_id: Uuid,
}

fn blocked(code: &str, message: impl Into<String>) -> Value {
    json!({"status": "blocked", "reason_codes": [code], "message": message.into()})
}

/// An answer as the tool's result.
fn answer(r: impl Serialize) -> Result<Value, Value> {
    serde_json::to_value(r).map_err(|e| blocked("internal", e.to_string()))
}

/// A tool's answer as its MCP result: `ok` with the gateway's answer, or `blocked`
/// with why.
fn finish(r: Result<Value, Value>) -> CallToolResult {
    match r {
        Ok(body) => to_result(FeedbackStatus::Ok, body),
        Err(body) => to_result(FeedbackStatus::Blocked, body),
    }
}

fn refused(e: paybond_middleware_core::GatewayError) -> Value {
    blocked("gateway_error", e.to_string())
}

impl PaybondToolsServer {
    /// The server over `gateway`, exposing the tools `exposed` allows.
    pub fn new(gateway: HttpGateway, exposed: ExposedTools) -> Self {
        let mut router = Self::tool_router();
        for tool in router.list_all() {
            if !exposed.allows(&tool) {
                router.remove_route(&tool.name);
            }
        }
        Self {
            gateway: Arc::new(gateway),
            router,
        }
    }
}

/// The tools, in the order they are listed: each takes its arguments as a type of
/// its own (rmcp derives the tool's JSON Schema from it).
#[tool_router]
impl PaybondToolsServer {
    #[tool(
        name = "paybond_get_principal",
        description = "Who the API key is: tenant, environment (sandbox or live), role.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_principal(&self, Parameters(NoArgs {}): Parameters<NoArgs>) -> CallToolResult {
        finish(
            self.gateway
                .principal()
                .await
                .map_err(refused)
                .and_then(answer),
        )
    }

    #[tool(
        name = "paybond_bootstrap_sandbox_guardrail",
        description = "Create a funded sandbox intent (budget = requested_spend_cents, one operation) and get its capability token.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn bootstrap_sandbox_guardrail(
        &self,
        Parameters(a): Parameters<BootstrapArgs>,
    ) -> CallToolResult {
        let request = SandboxBootstrapRequest {
            operation: a.operation,
            requested_spend_cents: a.requested_spend_cents,
            currency: a.currency,
            ..SandboxBootstrapRequest::default()
        };
        finish(
            self.gateway
                .bootstrap_sandbox(&request)
                .await
                .map_err(refused)
                .and_then(answer),
        )
    }

    #[tool(
        name = "paybond_authorize_agent_spend",
        description = "Ask whether a paid call may run: allow (reserves the amount), hold for approval, or deny. Run the call only when allow is true.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn authorize_agent_spend(
        &self,
        Parameters(a): Parameters<AuthorizeArgs>,
    ) -> CallToolResult {
        let request = VerifyRequest {
            intent_id: a.intent_id,
            token: CapabilityToken::new(a.capability_token),
            operation: a.operation,
            requested_spend_cents: a.requested_spend_cents,
            vendor_id: a.vendor_id,
            task_id: None,
            workflow_id: None,
            tool_call_id: None,
            tool_name: a.tool_name,
            currency: None,
            agent_subject: None,
            approval_token: a.approval_token.map(ApprovalToken::new),
            idempotency_key: None,
            phase: a.phase,
        };
        finish(
            self.gateway
                .verify(&request)
                .await
                .map_err(refused)
                .and_then(answer),
        )
    }

    #[tool(
        name = "paybond_complete_spend_decision",
        description = "Settle an allowed decision: consumed (with the actual cost) or released.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn complete_spend_decision(
        &self,
        Parameters(a): Parameters<CompleteArgs>,
    ) -> CallToolResult {
        let request = CompleteRequest {
            outcome: a.outcome,
            actual_spend_cents: a.actual_spend_cents,
        };
        let key = format!("{}:complete", a.decision_id);
        finish(
            self.gateway
                .complete_decision(a.decision_id, &request, &key)
                .await
                .map_err(refused)
                .and_then(answer),
        )
    }

    #[tool(
        name = "paybond_get_budget_remaining",
        description = "What an intent has left to spend (a preflight: nothing is reserved or recorded).",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_budget_remaining(&self, Parameters(a): Parameters<BudgetArgs>) -> CallToolResult {
        let request = PreflightRequest {
            intent_id: a.intent_id,
            operation: a.operation.unwrap_or_else(|| "*".to_owned()),
            requested_spend_cents: a.requested_spend_cents.unwrap_or(0),
            ..PreflightRequest::default()
        };
        finish(
            self.gateway
                .preflight(&request)
                .await
                .map_err(refused)
                .map(|r| {
                    json!({"intent_id": a.intent_id, "remaining_cents": r.remaining_cents,
                   "spend_scope": r.spend_scope, "policy_version": r.policy_version})
                }),
        )
    }

    #[tool(
        name = "paybond_explain_policy",
        description = "Whether a call would be allowed, held for approval or denied, and why: every check with its inputs (a preflight: nothing is reserved or recorded).",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn explain_policy(&self, Parameters(a): Parameters<ExplainArgs>) -> CallToolResult {
        let request = PreflightRequest {
            intent_id: a.intent_id,
            operation: a.operation,
            requested_spend_cents: a.requested_spend_cents.unwrap_or(0),
            vendor_id: a.vendor_id,
            tool_name: a.tool_name,
            ..PreflightRequest::default()
        };
        finish(
            self.gateway
                .preflight(&request)
                .await
                .map_err(refused)
                .and_then(answer),
        )
    }

    #[tool(
        name = "paybond_submit_sandbox_guardrail_evidence",
        description = "Submit evidence of what an allowed call did (payload status and cost_cents; metadata.decision_id names the decision).",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn submit_sandbox_guardrail_evidence(
        &self,
        Parameters(a): Parameters<EvidenceArgs>,
    ) -> CallToolResult {
        let request = EvidenceRequest {
            payload: Some(Value::Object(a.payload)),
            operation: a.operation,
            metadata: a.metadata.map(Value::Object),
            ..EvidenceRequest::default()
        };
        let key = paybond_middleware_core::new_idempotency_key();
        finish(
            self.gateway
                .submit_evidence(a.intent_id, &request, &key)
                .await
                .map_err(refused)
                .and_then(answer),
        )
    }

    #[tool(
        name = "paybond_get_intent",
        description = "One intent: budget, consumed, reserved, its reservations, decisions and evidence.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_intent(&self, Parameters(a): Parameters<IntentArgs>) -> CallToolResult {
        finish(
            self.gateway
                .intent_history(a.intent_id)
                .await
                .map_err(refused)
                .and_then(answer),
        )
    }

    #[tool(
        name = "paybond_list_intents",
        description = "The tenant's intents, newest first.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_intents(&self, Parameters(a): Parameters<ListIntentsArgs>) -> CallToolResult {
        finish(
            self.gateway
                .list_intents(a.status.as_deref(), a.limit, a.cursor.as_deref())
                .await
                .map_err(refused)
                .and_then(answer),
        )
    }

    #[tool(
        name = "paybond_list_audit_exports",
        description = "The tenant's compliance audit export jobs, newest first: status, digests, size.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_audit_exports(
        &self,
        Parameters(a): Parameters<ListExportsArgs>,
    ) -> CallToolResult {
        finish(
            self.gateway
                .list_audit_exports(a.limit, a.cursor.as_deref())
                .await
                .map_err(refused),
        )
    }

    #[tool(
        name = "paybond_get_audit_export",
        description = "One compliance audit export job: status, progress, manifest and bundle SHA-256.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_audit_export(&self, Parameters(a): Parameters<ExportArgs>) -> CallToolResult {
        finish(self.gateway.audit_export(a.job_id).await.map_err(refused))
    }

    #[tool(
        name = "paybond_get_approval_status",
        description = "Where an approval request stands; carries the approval token once approved.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn get_approval_status(&self, Parameters(a): Parameters<ApprovalArgs>) -> CallToolResult {
        finish(
            self.gateway
                .approval_status(a.approval_request_id)
                .await
                .map_err(refused)
                .and_then(answer),
        )
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
                 paybond_authorize_agent_spend first, run the action only if allow is true, \
                 then paybond_complete_spend_decision.",
            )
    }

    fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListToolsResult, ErrorData>> + MaybeSendFuture + '_ {
        std::future::ready(Ok(ListToolsResult::with_all_items(self.router.list_all())))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        if !self.router.has_route(&name) {
            let known = Self::tool_router().has_route(&name);
            let body = if known {
                blocked(
                    "tool_not_available",
                    format!("`{name}` is not available under this server's --tool-policy"),
                )
            } else {
                blocked("unknown_tool", format!("no tool `{name}`"))
            };
            return Ok(finish(Err(body)).into());
        }
        let response = self
            .router
            .call(ToolCallContext::new(self, request, context))
            .await?;
        // Arguments that are not the tool's type: rmcp answers a plain error
        // text; agents read this server's `blocked` results, which name the field.
        if let CallToolResponse::Complete(result) = &response
            && result.is_error == Some(true)
            && result.structured_content.is_none()
        {
            let text = serde_json::to_value(&result.content)
                .ok()
                .and_then(|c| c[0]["text"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return Ok(finish(Err(blocked("invalid_arguments", text))).into());
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(name: &str) -> Value {
        let tool = PaybondToolsServer::tool_router()
            .list_all()
            .into_iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tool {name}"));
        Value::Object((*tool.input_schema).clone())
    }

    #[test]
    fn every_schema_is_its_argument_types() {
        let tools = PaybondToolsServer::tool_router().list_all();
        assert_eq!(tools.len(), 12);
        for t in &tools {
            let schema = Value::Object((*t.input_schema).clone());
            assert_eq!(schema["type"], "object", "{}", t.name);
        }
        let authorize = schema("paybond_authorize_agent_spend");
        assert_eq!(
            authorize["required"],
            json!([
                "intent_id",
                "capability_token",
                "operation",
                "requested_spend_cents"
            ])
        );
        assert_eq!(authorize["properties"]["intent_id"]["format"], "uuid");
        assert_eq!(
            authorize["properties"]["operation"]["description"],
            "The operation the call performs."
        );
        let text = authorize.to_string();
        assert!(
            ["EXPLORE", "DECIDE", "COMMIT"]
                .iter()
                .all(|p| text.contains(p)),
            "{text}"
        );
        let outcome = schema("paybond_complete_spend_decision").to_string();
        assert!(
            outcome.contains("consumed") && outcome.contains("released"),
            "{outcome}"
        );
        assert_eq!(
            schema("paybond_list_intents")["properties"]["limit"]["maximum"],
            500
        );
    }

    #[test]
    fn the_exposure_keeps_the_tools_it_allows() {
        let names = |exposed: &ExposedTools| -> Vec<String> {
            PaybondToolsServer::tool_router()
                .list_all()
                .into_iter()
                .filter(|t| exposed.allows(t))
                .map(|t| t.name.to_string())
                .collect()
        };
        let read_only = names(&ExposedTools::ReadOnly);
        assert_eq!(read_only.len(), 8, "{read_only:?}");
        assert!(
            !read_only
                .iter()
                .any(|n| n == "paybond_authorize_agent_spend")
        );
        assert_eq!(names(&ExposedTools::SpendWrite).len(), 12);
        assert_eq!(
            names(&ExposedTools::Allowlist(vec!["paybond_get_intent".into()])),
            ["paybond_get_intent"]
        );
    }
}
