//! The Paybond tools over MCP (`paybond-mcp-server`), named as the Paybond Kit's:
//! the principal, a sandbox guardrail, authorize and complete spend, the budget
//! left and why a call would pass (preflight), evidence, intents, approvals and
//! compliance audit exports.
//!
//! Each tool carries MCP annotations (`readOnlyHint`, `destructiveHint`).
//! [`ToolPolicy::ReadOnly`] lists and allows only the read-only tools;
//! [`ToolPolicy::SpendWrite`] (the default) everything not destructive;
//! [`ToolPolicy::Allowlist`] exactly the tools named.

use std::future::Future;
use std::sync::Arc;

use paybond_middleware_core::wire::{
    CompleteRequest, EvidenceRequest, Finalization, PreflightRequest, SandboxBootstrapRequest,
    VerifyRequest,
};
use paybond_middleware_core::{
    ApprovalToken, CapabilityToken, FeedbackStatus, HttpGateway, SpendGateway,
};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::{MaybeSendFuture, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{schema_object, to_result};

/// Which tools the server exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolPolicy {
    /// Everything but tools annotated destructive (the default; none of this
    /// server's sandbox tools moves live money). `default` is accepted as its name.
    SpendWrite,
    /// Only the tools annotated read-only: nothing that creates intents, reserves or
    /// settles.
    ReadOnly,
    /// Exactly these tools.
    Allowlist(Vec<String>),
}

impl ToolPolicy {
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
    policy: ToolPolicy,
}

/// One tool: its name, what it does, whether it only reads, and its arguments.
struct ToolSpec {
    name: &'static str,
    description: &'static str,
    read_only: bool,
    destructive: bool,
    schema: fn() -> Value,
}

/// Every tool, in the order they are listed.
const TOOLS: &[ToolSpec] = &[
    ToolSpec {
        name: "paybond_get_principal",
        description: "Who the API key is: tenant, environment (sandbox or live), role.",
        read_only: true,
        destructive: false,
        schema: || json!({"type": "object", "properties": {}}),
    },
    ToolSpec {
        name: "paybond_bootstrap_sandbox_guardrail",
        description: "Create a funded sandbox intent (budget = requested_spend_cents, one operation) and get its capability token.",
        read_only: false,
        destructive: false,
        schema: || {
            json!({"type": "object", "required": ["operation", "requested_spend_cents"], "properties": {
            "operation": {"type": "string"},
            "requested_spend_cents": {"type": "integer", "minimum": 1},
            "currency": {"type": "string"}}})
        },
    },
    ToolSpec {
        name: "paybond_authorize_agent_spend",
        description: "Ask whether a paid call may run: allow (reserves the amount), hold for approval, or deny. Run the call only when allow is true.",
        read_only: false,
        destructive: false,
        schema: || {
            json!({"type": "object", "required": ["intent_id", "capability_token", "operation", "requested_spend_cents"], "properties": {
            "intent_id": {"type": "string", "format": "uuid"},
            "capability_token": {"type": "string"},
            "operation": {"type": "string"},
            "requested_spend_cents": {"type": "integer", "minimum": 0},
            "vendor_id": {"type": "string"},
            "tool_name": {"type": "string"},
            "approval_token": {"type": "string"},
            "phase": {"type": "string", "enum": ["EXPLORE", "DECIDE", "COMMIT"]}}})
        },
    },
    ToolSpec {
        name: "paybond_complete_spend_decision",
        description: "Settle an allowed decision: consumed (with the actual cost) or released.",
        read_only: false,
        destructive: false,
        schema: || {
            json!({"type": "object", "required": ["decision_id", "outcome"], "properties": {
            "decision_id": {"type": "string", "format": "uuid"},
            "outcome": {"type": "string", "enum": ["consumed", "released"]},
            "actual_spend_cents": {"type": "integer", "minimum": 0}}})
        },
    },
    ToolSpec {
        name: "paybond_get_budget_remaining",
        description: "What an intent has left to spend (a preflight: nothing is reserved or recorded).",
        read_only: true,
        destructive: false,
        schema: || {
            json!({"type": "object", "required": ["intent_id"], "properties": {
            "intent_id": {"type": "string", "format": "uuid"},
            "operation": {"type": "string", "description": "default `*`: the intent's budget only"},
            "requested_spend_cents": {"type": "integer", "minimum": 0}}})
        },
    },
    ToolSpec {
        name: "paybond_explain_policy",
        description: "Whether a call would be allowed, held for approval or denied, and why: every check with its inputs (a preflight: nothing is reserved or recorded).",
        read_only: true,
        destructive: false,
        schema: || {
            json!({"type": "object", "required": ["intent_id", "operation"], "properties": {
            "intent_id": {"type": "string", "format": "uuid"},
            "operation": {"type": "string"},
            "requested_spend_cents": {"type": "integer", "minimum": 0},
            "vendor_id": {"type": "string"},
            "tool_name": {"type": "string"}}})
        },
    },
    ToolSpec {
        name: "paybond_submit_sandbox_guardrail_evidence",
        description: "Submit evidence of what an allowed call did (payload status and cost_cents; metadata.decision_id names the decision).",
        read_only: false,
        destructive: false,
        schema: || {
            json!({"type": "object", "required": ["intent_id", "payload"], "properties": {
            "intent_id": {"type": "string", "format": "uuid"},
            "payload": {"type": "object"},
            "operation": {"type": "string"},
            "metadata": {"type": "object"}}})
        },
    },
    ToolSpec {
        name: "paybond_get_intent",
        description: "One intent: budget, consumed, reserved, its reservations, decisions and evidence.",
        read_only: true,
        destructive: false,
        schema: || {
            json!({"type": "object", "required": ["intent_id"], "properties": {
            "intent_id": {"type": "string", "format": "uuid"}}})
        },
    },
    ToolSpec {
        name: "paybond_list_intents",
        description: "The tenant's intents, newest first.",
        read_only: true,
        destructive: false,
        schema: || {
            json!({"type": "object", "properties": {
            "status": {"type": "string"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 500},
            "cursor": {"type": "string"}}})
        },
    },
    ToolSpec {
        name: "paybond_list_audit_exports",
        description: "The tenant's compliance audit export jobs, newest first: status, digests, size.",
        read_only: true,
        destructive: false,
        schema: || {
            json!({"type": "object", "properties": {
            "limit": {"type": "integer", "minimum": 1, "maximum": 200},
            "cursor": {"type": "string"}}})
        },
    },
    ToolSpec {
        name: "paybond_get_audit_export",
        description: "One compliance audit export job: status, progress, manifest and bundle SHA-256.",
        read_only: true,
        destructive: false,
        schema: || {
            json!({"type": "object", "required": ["job_id"], "properties": {
            "job_id": {"type": "string", "format": "uuid"}}})
        },
    },
    ToolSpec {
        name: "paybond_get_approval_status",
        description: "Where an approval request stands; carries the approval token once approved.",
        read_only: true,
        destructive: false,
        schema: || {
            json!({"type": "object", "required": ["approval_request_id"], "properties": {
            "approval_request_id": {"type": "string", "format": "uuid"}}})
        },
    },
];

fn tools(policy: &ToolPolicy) -> Vec<Tool> {
    TOOLS
        .iter()
        .filter(|t| policy.allows(t))
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
        let Some(spec) = TOOLS.iter().find(|t| t.name == name) else {
            return Err(blocked("unknown_tool", format!("no tool `{name}`")));
        };
        if !self.policy.allows(spec) {
            return Err(blocked(
                "tool_not_available",
                format!("`{name}` is not available under this server's --tool-policy"),
            ));
        }
        let refused =
            |e: paybond_middleware_core::GatewayError| blocked("gateway_error", e.to_string());
        match name {
            "paybond_get_principal" => {
                let r = self.gateway.principal().await.map_err(refused)?;
                serde_json::to_value(r).map_err(|e| blocked("internal", e.to_string()))
            }
            "paybond_bootstrap_sandbox_guardrail" => {
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
            "paybond_authorize_agent_spend" => {
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
                        phase: match opt_text(args, "phase") {
                            None => None,
                            Some(p) => {
                                Some(paybond_middleware_core::wire::Phase::parse(&p).ok_or_else(
                                    || {
                                        blocked(
                                            "invalid_arguments",
                                            "`phase` is not EXPLORE, DECIDE or COMMIT",
                                        )
                                    },
                                )?)
                            }
                        },
                    })
                    .await
                    .map_err(refused)?;
                serde_json::to_value(r).map_err(|e| blocked("internal", e.to_string()))
            }
            "paybond_complete_spend_decision" => {
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
            "paybond_get_approval_status" => {
                let id = parse_uuid(&text(args, "approval_request_id")?).ok_or_else(|| {
                    blocked("invalid_arguments", "`approval_request_id` is not a UUID")
                })?;
                let r = self.gateway.approval_status(id).await.map_err(refused)?;
                serde_json::to_value(r).map_err(|e| blocked("internal", e.to_string()))
            }
            "paybond_get_budget_remaining" | "paybond_explain_policy" => {
                let intent_id = parse_uuid(&text(args, "intent_id")?)
                    .ok_or_else(|| blocked("invalid_arguments", "`intent_id` is not a UUID"))?;
                let r = self
                    .gateway
                    .preflight(&PreflightRequest {
                        intent_id,
                        operation: opt_text(args, "operation").unwrap_or_else(|| "*".to_owned()),
                        requested_spend_cents: args
                            .get("requested_spend_cents")
                            .and_then(Value::as_u64)
                            .unwrap_or(0),
                        vendor_id: opt_text(args, "vendor_id"),
                        tool_name: opt_text(args, "tool_name"),
                        ..PreflightRequest::default()
                    })
                    .await
                    .map_err(refused)?;
                if name == "paybond_get_budget_remaining" {
                    Ok(
                        json!({"intent_id": intent_id, "remaining_cents": r.remaining_cents,
                              "spend_scope": r.spend_scope, "policy_version": r.policy_version}),
                    )
                } else {
                    serde_json::to_value(r).map_err(|e| blocked("internal", e.to_string()))
                }
            }
            "paybond_submit_sandbox_guardrail_evidence" => {
                let intent_id = parse_uuid(&text(args, "intent_id")?)
                    .ok_or_else(|| blocked("invalid_arguments", "`intent_id` is not a UUID"))?;
                let request = EvidenceRequest {
                    payload: Some(field(args, "payload")?.clone()),
                    operation: opt_text(args, "operation"),
                    metadata: args.get("metadata").cloned(),
                    ..EvidenceRequest::default()
                };
                let r = self
                    .gateway
                    .submit_evidence(
                        intent_id,
                        &request,
                        &paybond_middleware_core::new_idempotency_key(),
                    )
                    .await
                    .map_err(refused)?;
                serde_json::to_value(r).map_err(|e| blocked("internal", e.to_string()))
            }
            "paybond_get_intent" => {
                let intent_id = parse_uuid(&text(args, "intent_id")?)
                    .ok_or_else(|| blocked("invalid_arguments", "`intent_id` is not a UUID"))?;
                let r = self
                    .gateway
                    .intent_history(intent_id)
                    .await
                    .map_err(refused)?;
                serde_json::to_value(r).map_err(|e| blocked("internal", e.to_string()))
            }
            "paybond_list_intents" => {
                let limit = args
                    .get("limit")
                    .and_then(Value::as_u64)
                    .and_then(|l| u32::try_from(l).ok());
                let r = self
                    .gateway
                    .list_intents(
                        opt_text(args, "status").as_deref(),
                        limit,
                        opt_text(args, "cursor").as_deref(),
                    )
                    .await
                    .map_err(refused)?;
                serde_json::to_value(r).map_err(|e| blocked("internal", e.to_string()))
            }
            "paybond_list_audit_exports" => {
                let limit = args
                    .get("limit")
                    .and_then(Value::as_u64)
                    .and_then(|l| u32::try_from(l).ok());
                self.gateway
                    .list_audit_exports(limit, opt_text(args, "cursor").as_deref())
                    .await
                    .map_err(refused)
            }
            "paybond_get_audit_export" => {
                let job_id = parse_uuid(&text(args, "job_id")?)
                    .ok_or_else(|| blocked("invalid_arguments", "`job_id` is not a UUID"))?;
                self.gateway.audit_export(job_id).await.map_err(refused)
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
        std::future::ready(Ok(ListToolsResult::with_all_items(tools(&self.policy))))
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
