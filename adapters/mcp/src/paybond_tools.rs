//! The Paybond tools over MCP (`paybond-mcp-server`), named as the Paybond Kit's:
//! the principal, a sandbox guardrail, authorize and complete spend, the budget
//! left and why a call would pass (preflight), evidence, intents, approvals and
//! compliance audit exports.
//!
//! Each tool carries MCP annotations (`readOnlyHint`, `destructiveHint`).
//! [`ExposedTools::ReadOnly`] lists and allows only the read-only tools;
//! [`ExposedTools::SpendWrite`] (the default) everything not destructive;
//! [`ExposedTools::Allowlist`] exactly the tools named. Each tool's arguments are
//! a type of their own: its JSON Schema is the type's, and a call is parsed into
//! it (what is wrong is a `blocked` result naming the field).

use std::future::Future;
use std::sync::Arc;

use paybond_middleware_core::feedback::FeedbackStatus;
use paybond_middleware_core::wire::{
    CompleteRequest, EvidenceRequest, Finalization, Phase, PreflightRequest,
    SandboxBootstrapRequest, VerifyRequest,
};
use paybond_middleware_core::{ApprovalToken, CapabilityToken, HttpGateway, SpendGateway};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::{MaybeSendFuture, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::{schema_object, to_result};

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
                if let Some(unknown) = names
                    .iter()
                    .find(|n| !TOOLS.iter().any(|t| t.name == n.as_str()))
                {
                    return Err(format!(
                        "--tool-allowlist: no tool `{unknown}`; the tools are {}",
                        TOOLS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
                    ));
                }
                Ok(Self::Allowlist(names))
            }
            other => Err(format!(
                "--tool-policy is readonly, spend-write or allowlist, not `{other}`"
            )),
        }
    }

    fn allows(&self, tool: &ToolSpec) -> bool {
        match self {
            Self::SpendWrite => !tool.destructive,
            Self::ReadOnly => tool.read_only,
            Self::Allowlist(names) => names.iter().any(|n| n == tool.name),
        }
    }
}

/// The packaged Paybond MCP server over an HTTP gateway.
#[derive(Debug, Clone)]
pub struct PaybondToolsServer {
    gateway: Arc<HttpGateway>,
    exposed: ExposedTools,
}

/// One tool: its name, what it does, whether it only reads, and its arguments'
/// JSON Schema (their type's).
struct ToolSpec {
    name: &'static str,
    description: &'static str,
    read_only: bool,
    destructive: bool,
    schema: fn() -> Value,
}

/// The JSON Schema of the arguments `A` (the type the call is parsed into), its
/// subschemas inline and without `$schema`: what every MCP client reads.
fn schema_of<A: JsonSchema>() -> Value {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.inline_subschemas = true;
    settings.meta_schema = None;
    let schema = settings.into_generator().into_root_schema_for::<A>();
    serde_json::to_value(schema).unwrap_or_else(|_| json!({"type": "object"}))
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

/// Every tool, in the order they are listed.
const TOOLS: &[ToolSpec] = &[
    ToolSpec {
        name: "paybond_get_principal",
        description: "Who the API key is: tenant, environment (sandbox or live), role.",
        read_only: true,
        destructive: false,
        schema: schema_of::<NoArgs>,
    },
    ToolSpec {
        name: "paybond_bootstrap_sandbox_guardrail",
        description: "Create a funded sandbox intent (budget = requested_spend_cents, one operation) and get its capability token.",
        read_only: false,
        destructive: false,
        schema: schema_of::<BootstrapArgs>,
    },
    ToolSpec {
        name: "paybond_authorize_agent_spend",
        description: "Ask whether a paid call may run: allow (reserves the amount), hold for approval, or deny. Run the call only when allow is true.",
        read_only: false,
        destructive: false,
        schema: schema_of::<AuthorizeArgs>,
    },
    ToolSpec {
        name: "paybond_complete_spend_decision",
        description: "Settle an allowed decision: consumed (with the actual cost) or released.",
        read_only: false,
        destructive: false,
        schema: schema_of::<CompleteArgs>,
    },
    ToolSpec {
        name: "paybond_get_budget_remaining",
        description: "What an intent has left to spend (a preflight: nothing is reserved or recorded).",
        read_only: true,
        destructive: false,
        schema: schema_of::<BudgetArgs>,
    },
    ToolSpec {
        name: "paybond_explain_policy",
        description: "Whether a call would be allowed, held for approval or denied, and why: every check with its inputs (a preflight: nothing is reserved or recorded).",
        read_only: true,
        destructive: false,
        schema: schema_of::<ExplainArgs>,
    },
    ToolSpec {
        name: "paybond_submit_sandbox_guardrail_evidence",
        description: "Submit evidence of what an allowed call did (payload status and cost_cents; metadata.decision_id names the decision).",
        read_only: false,
        destructive: false,
        schema: schema_of::<EvidenceArgs>,
    },
    ToolSpec {
        name: "paybond_get_intent",
        description: "One intent: budget, consumed, reserved, its reservations, decisions and evidence.",
        read_only: true,
        destructive: false,
        schema: schema_of::<IntentArgs>,
    },
    ToolSpec {
        name: "paybond_list_intents",
        description: "The tenant's intents, newest first.",
        read_only: true,
        destructive: false,
        schema: schema_of::<ListIntentsArgs>,
    },
    ToolSpec {
        name: "paybond_list_audit_exports",
        description: "The tenant's compliance audit export jobs, newest first: status, digests, size.",
        read_only: true,
        destructive: false,
        schema: schema_of::<ListExportsArgs>,
    },
    ToolSpec {
        name: "paybond_get_audit_export",
        description: "One compliance audit export job: status, progress, manifest and bundle SHA-256.",
        read_only: true,
        destructive: false,
        schema: schema_of::<ExportArgs>,
    },
    ToolSpec {
        name: "paybond_get_approval_status",
        description: "Where an approval request stands; carries the approval token once approved.",
        read_only: true,
        destructive: false,
        schema: schema_of::<ApprovalArgs>,
    },
];

fn tools(exposed: &ExposedTools) -> Vec<Tool> {
    TOOLS
        .iter()
        .filter(|t| exposed.allows(t))
        .map(|t| {
            Tool::new(t.name, t.description, schema_object(&(t.schema)())).with_annotations(
                ToolAnnotations::new()
                    .read_only(t.read_only)
                    .destructive(t.destructive)
                    .idempotent(t.read_only)
                    .open_world(false),
            )
        })
        .collect()
}

fn blocked(code: &str, message: impl Into<String>) -> Value {
    json!({"status": "blocked", "reason_codes": [code], "message": message.into()})
}

/// The call's arguments as the tool's type; what is wrong with them (serde names
/// the field) as a blocked result.
fn parse<A: DeserializeOwned>(args: Value) -> Result<A, Value> {
    serde_json::from_value(args)
        .map_err(|e| blocked("invalid_arguments", format!("invalid arguments: {e}")))
}

/// An answer as the tool's result.
fn answer(r: impl Serialize) -> Result<Value, Value> {
    serde_json::to_value(r).map_err(|e| blocked("internal", e.to_string()))
}

impl PaybondToolsServer {
    /// The server over `gateway`, exposing the tools `exposed` allows.
    pub fn new(gateway: HttpGateway, exposed: ExposedTools) -> Self {
        Self {
            gateway: Arc::new(gateway),
            exposed,
        }
    }

    async fn call(&self, name: &str, args: Value) -> Result<Value, Value> {
        let Some(spec) = TOOLS.iter().find(|t| t.name == name) else {
            return Err(blocked("unknown_tool", format!("no tool `{name}`")));
        };
        if !self.exposed.allows(spec) {
            return Err(blocked(
                "tool_not_available",
                format!("`{name}` is not available under this server's --tool-policy"),
            ));
        }
        let refused =
            |e: paybond_middleware_core::GatewayError| blocked("gateway_error", e.to_string());
        let gateway = &self.gateway;
        match name {
            "paybond_get_principal" => {
                let NoArgs {} = parse(args)?;
                answer(gateway.principal().await.map_err(refused)?)
            }
            "paybond_bootstrap_sandbox_guardrail" => {
                let a: BootstrapArgs = parse(args)?;
                let r = gateway
                    .bootstrap_sandbox(&SandboxBootstrapRequest {
                        operation: a.operation,
                        requested_spend_cents: a.requested_spend_cents,
                        currency: a.currency,
                        ..SandboxBootstrapRequest::default()
                    })
                    .await
                    .map_err(refused)?;
                answer(r)
            }
            "paybond_authorize_agent_spend" => {
                let a: AuthorizeArgs = parse(args)?;
                let r = gateway
                    .verify(&VerifyRequest {
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
                    })
                    .await
                    .map_err(refused)?;
                answer(r)
            }
            "paybond_complete_spend_decision" => {
                let a: CompleteArgs = parse(args)?;
                let r = gateway
                    .complete_decision(
                        a.decision_id,
                        &CompleteRequest {
                            outcome: a.outcome,
                            actual_spend_cents: a.actual_spend_cents,
                        },
                        &format!("{}:complete", a.decision_id),
                    )
                    .await
                    .map_err(refused)?;
                answer(r)
            }
            "paybond_get_approval_status" => {
                let a: ApprovalArgs = parse(args)?;
                answer(
                    gateway
                        .approval_status(a.approval_request_id)
                        .await
                        .map_err(refused)?,
                )
            }
            "paybond_get_budget_remaining" => {
                let a: BudgetArgs = parse(args)?;
                let r = gateway
                    .preflight(&PreflightRequest {
                        intent_id: a.intent_id,
                        operation: a.operation.unwrap_or_else(|| "*".to_owned()),
                        requested_spend_cents: a.requested_spend_cents.unwrap_or(0),
                        ..PreflightRequest::default()
                    })
                    .await
                    .map_err(refused)?;
                Ok(
                    json!({"intent_id": a.intent_id, "remaining_cents": r.remaining_cents,
                          "spend_scope": r.spend_scope, "policy_version": r.policy_version}),
                )
            }
            "paybond_explain_policy" => {
                let a: ExplainArgs = parse(args)?;
                let r = gateway
                    .preflight(&PreflightRequest {
                        intent_id: a.intent_id,
                        operation: a.operation,
                        requested_spend_cents: a.requested_spend_cents.unwrap_or(0),
                        vendor_id: a.vendor_id,
                        tool_name: a.tool_name,
                        ..PreflightRequest::default()
                    })
                    .await
                    .map_err(refused)?;
                answer(r)
            }
            "paybond_submit_sandbox_guardrail_evidence" => {
                let a: EvidenceArgs = parse(args)?;
                let request = EvidenceRequest {
                    payload: Some(Value::Object(a.payload)),
                    operation: a.operation,
                    metadata: a.metadata.map(Value::Object),
                    ..EvidenceRequest::default()
                };
                let r = gateway
                    .submit_evidence(
                        a.intent_id,
                        &request,
                        &paybond_middleware_core::new_idempotency_key(),
                    )
                    .await
                    .map_err(refused)?;
                answer(r)
            }
            "paybond_get_intent" => {
                let a: IntentArgs = parse(args)?;
                answer(gateway.intent_history(a.intent_id).await.map_err(refused)?)
            }
            "paybond_list_intents" => {
                let a: ListIntentsArgs = parse(args)?;
                let r = gateway
                    .list_intents(a.status.as_deref(), a.limit, a.cursor.as_deref())
                    .await
                    .map_err(refused)?;
                answer(r)
            }
            "paybond_list_audit_exports" => {
                let a: ListExportsArgs = parse(args)?;
                gateway
                    .list_audit_exports(a.limit, a.cursor.as_deref())
                    .await
                    .map_err(refused)
            }
            "paybond_get_audit_export" => {
                let a: ExportArgs = parse(args)?;
                gateway.audit_export(a.job_id).await.map_err(refused)
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
                 paybond_authorize_agent_spend first, run the action only if allow is true, \
                 then paybond_complete_spend_decision.",
            )
    }

    fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListToolsResult, ErrorData>> + MaybeSendFuture + '_ {
        std::future::ready(Ok(ListToolsResult::with_all_items(tools(&self.exposed))))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        let result = match self.call(&request.name, args).await {
            Ok(body) => to_result(FeedbackStatus::Ok, body),
            Err(body) => to_result(FeedbackStatus::Blocked, body),
        };
        Ok(result.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_is_its_argument_types_inline() {
        for t in TOOLS {
            let schema = (t.schema)();
            assert_eq!(schema["type"], "object", "{}", t.name);
            let text = schema.to_string();
            assert!(
                !text.contains("$ref") && !text.contains("$schema"),
                "{}: {text}",
                t.name
            );
        }
        let authorize = schema_of::<AuthorizeArgs>();
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
        let phase = authorize["properties"]["phase"].to_string();
        assert!(
            ["EXPLORE", "DECIDE", "COMMIT"]
                .iter()
                .all(|p| phase.contains(p)),
            "{phase}"
        );
        let complete = schema_of::<CompleteArgs>();
        let outcome = complete["properties"]["outcome"].to_string();
        assert!(
            outcome.contains("consumed") && outcome.contains("released"),
            "{outcome}"
        );
        assert_eq!(
            schema_of::<ListIntentsArgs>()["properties"]["limit"]["maximum"],
            500
        );
    }

    #[test]
    fn arguments_that_are_not_the_tools_type_are_a_blocked_result_naming_the_field() {
        let refused =
            parse::<CompleteArgs>(json!({"decision_id": "not-a-uuid", "outcome": "consumed"}))
                .err()
                .unwrap_or_default();
        assert_eq!(refused["reason_codes"], json!(["invalid_arguments"]));
        let refused =
            parse::<CompleteArgs>(json!({"decision_id": Uuid::new_v4(), "outcome": "spent"}))
                .err()
                .unwrap_or_default();
        assert!(
            refused["message"]
                .as_str()
                .unwrap_or_default()
                .contains("spent"),
            "{refused}"
        );
    }
}
