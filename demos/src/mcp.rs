//! MCP (rmcp): the travel tools served by a child process over stdio, guarded by
//! the layer there, and driven by an rmcp client here.
//!
//! The child is this same executable started with `PAYBOND_DEMO_MCP_CHILD=1`
//! ([`child_main`]); it reaches the gateway over HTTP (the embedded engine is served
//! on a loopback port for it), waits for approvals while the demo here acts as the
//! operator, and writes its trace to a file the demo reads at the end.

use std::path::PathBuf;
use std::sync::Arc;

use paybond_adapter_mcp::GuardedMcpServer;
use std::future::Future;

use paybond_middleware_core::{ApiKey, CapabilityToken, HttpGateway, RunTrace, TraceEntry};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ListToolsResult, MetaObject, PaginatedRequestParams,
    RequestMetaObject, ServerConfig,
};
use rmcp::service::{MaybeSendFuture, RequestContext};
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::harness::Harness;
use crate::scenario::steps;
use crate::travel;
use crate::{DemoError, Finished};

/// Set in the child's environment: serve the guarded tools on stdio.
pub const CHILD_ENV: &str = "PAYBOND_DEMO_MCP_CHILD";

/// Runs the scenario through the MCP server in a child process.
pub async fn run(h: &Arc<Harness>) -> Result<Finished, DemoError> {
    let url = h.http_url().await?;
    let exe = std::env::current_exe()
        .map_err(|e| DemoError::Setup(format!("cannot find this executable: {e}")))?;
    let dir = std::env::temp_dir().join(format!("paybond-demo-mcp-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|e| DemoError::Setup(e.to_string()))?;
    let trace_file = dir.join("trace.jsonl");
    let _operator = h.spawn_operator();

    let (agent_key, token) = (h.agent_key().clone(), h.token.clone());
    let (intent, trace_path) = (h.intent_id, trace_file.clone());
    let transport = TokioChildProcess::new(tokio::process::Command::new(exe).configure(|c| {
        c.env(CHILD_ENV, "1")
            .env("PAYBOND_GATEWAY_URL", &url)
            .env("PAYBOND_API_KEY", agent_key.expose_secret())
            .env("PAYBOND_DEMO_INTENT_ID", intent.to_string())
            .env("PAYBOND_DEMO_CAPABILITY_TOKEN", token.expose_secret())
            .env("PAYBOND_DEMO_TRACE_FILE", &trace_path)
            .env("RUST_LOG", "off");
    }))
    .map_err(|e| DemoError::Setup(format!("cannot start the MCP server: {e}")))?;
    let client = ()
        .serve(transport)
        .await
        .map_err(|e| DemoError::Setup(format!("MCP handshake: {e}")))?;
    let listed = client
        .list_all_tools()
        .await
        .map_err(|e| DemoError::Model(format!("tools/list: {e}")))?;
    tracing::info!(tools = listed.len(), "mcp tools");

    let mut seen = Vec::new();
    for step in steps() {
        let mut params = CallToolRequestParams::new(step.tool);
        if let Value::Object(args) = step.args.clone() {
            params = params.with_arguments(args);
        }
        let mut meta = Map::new();
        meta.insert("tool_call_id".to_owned(), json!(step.id));
        params.meta = Some(RequestMetaObject(MetaObject(meta)));
        let result = client
            .call_tool(params)
            .await
            .map_err(|e| DemoError::Model(format!("tools/call {}: {e}", step.tool)))?;
        let status = result
            .structured_content
            .as_ref()
            .and_then(|v| v.get("status"))
            .and_then(Value::as_str)
            .unwrap_or("ok")
            .to_owned();
        seen.push(format!("{}: {status}", step.id));
    }
    client
        .cancel()
        .await
        .map_err(|e| DemoError::Model(format!("MCP shutdown: {e}")))?;

    let entries = read_trace(&trace_file)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Finished {
        entries,
        answer: Some(format!("MCP results: {}", seen.join(", "))),
    })
}

fn read_trace(path: &PathBuf) -> Result<Vec<TraceEntry>, DemoError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DemoError::Gateway(format!("the MCP server wrote no trace: {e}")))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| DemoError::Gateway(format!("trace line: {e}")))
        })
        .collect()
}

fn env(name: &str) -> Result<String, DemoError> {
    std::env::var(name).map_err(|_| DemoError::Usage(format!("{name} is not set")))
}

/// The child side: serves the guarded travel tools on stdio until the client leaves,
/// writing the run's trace after every call. Returns the process exit code.
pub fn child_main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(_) => return std::process::ExitCode::from(2),
    };
    match runtime.block_on(child()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn child() -> Result<(), DemoError> {
    let url = env("PAYBOND_GATEWAY_URL")?;
    let gateway = HttpGateway::builder(&url, ApiKey::new(env("PAYBOND_API_KEY")?))
        .build()
        .map_err(|e| DemoError::Usage(e.to_string()))?;
    let intent: Uuid = env("PAYBOND_DEMO_INTENT_ID")?
        .parse()
        .map_err(|_| DemoError::Usage("PAYBOND_DEMO_INTENT_ID is not a UUID".to_owned()))?;
    let token = CapabilityToken::new(env("PAYBOND_DEMO_CAPABILITY_TOKEN")?);
    let trace_file = PathBuf::from(env("PAYBOND_DEMO_TRACE_FILE")?);
    let policy: Value = reqwest::Client::new()
        .get(format!("{url}/v1/policy/effective"))
        .bearer_auth(env("PAYBOND_API_KEY")?)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| DemoError::Gateway(e.to_string()))?
        .json()
        .await
        .map_err(|e| DemoError::Gateway(e.to_string()))?;
    let tools: std::collections::BTreeMap<String, paybond_policies::ToolPolicy> =
        serde_json::from_value(policy["policy"]["tools"].clone())
            .map_err(|e| DemoError::Gateway(e.to_string()))?;
    let run = crate::bind_run(Arc::new(gateway), intent, token, tools, "demo-mcp", true).await?;
    let server = TracingServer {
        inner: GuardedMcpServer::new(travel::registry().guarded(&run), "paybond-travel"),
        trace: run.trace().clone(),
        file: trace_file,
    };
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| DemoError::Model(e.to_string()))?;
    let served = running.waiting().await.map(|_| ());
    served.map_err(|e| DemoError::Model(e.to_string()))
}

/// The guarded server, writing the run's trace to a file before it answers each
/// call: when the demo has a call's result, the file has its trace entries.
struct TracingServer {
    inner: GuardedMcpServer,
    trace: RunTrace,
    file: PathBuf,
}

impl ServerHandler for TracingServer {
    fn get_info(&self) -> ServerConfig {
        self.inner.get_info()
    }

    fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<ListToolsResult, ErrorData>> + MaybeSendFuture + '_ {
        self.inner.list_tools(request, context)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let response = self.inner.call_tool(request, context).await;
        if let Err(e) = std::fs::write(&self.file, self.trace.to_json_lines()) {
            tracing::warn!(error = %e, "cannot write the trace");
        }
        response
    }
}
