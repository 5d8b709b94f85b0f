//! MCP (rmcp): the travel tools served by a child process over stdio, guarded by
//! the layer there, and driven by an rmcp client here.
//!
//! The child is this same executable started with `PAYBOND_DEMO_MCP_CHILD=1`
//! ([`child_main`]); it reaches the gateway over HTTP (the embedded engine is served
//! on a loopback port for it), waits for approvals while the demo here acts as the
//! operator, and writes its trace to a file the demo reads. In the governed
//! scenario the child serves the trip tool and `commit_plan` too, and polls the
//! gateway for a newer policy, as a long-lived MCP server would.

use std::path::PathBuf;
use std::sync::Arc;

use paybond_adapter_mcp::GuardedMcpServer;
use std::future::Future;

use paybond_middleware_core::scope::CompensationEntry;
use paybond_middleware_core::trace::{RunTrace, TraceEntry};
use paybond_middleware_core::{ApiKey, CapabilityToken, HttpGateway, PolicyReloaded};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ListToolsResult, MetaObject, PaginatedRequestParams,
    RequestMetaObject, ServerConfig,
};
use rmcp::service::{MaybeSendFuture, RequestContext};
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::harness::Harness;
use crate::scenario::{Scenario, Step, governed_steps, steps};
use crate::travel;
use crate::{DemoError, Finished};

/// Set in the child's environment: serve the guarded tools on stdio.
pub const CHILD_ENV: &str = "PAYBOND_DEMO_MCP_CHILD";
/// Set in the child's environment to `governed` for the governed scenario.
const SCENARIO_ENV: &str = "PAYBOND_DEMO_SCENARIO";
/// How often the governed child asks the gateway for a newer policy.
const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// What the child's trace file holds: the run's trace, rewritten whole.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    entries: Vec<TraceEntry>,
    policy_reloads: Vec<PolicyReloaded>,
    compensations: Vec<CompensationEntry>,
}

impl Snapshot {
    fn of(trace: &RunTrace) -> Self {
        Self {
            entries: trace.entries(),
            policy_reloads: trace.policy_reloads(),
            compensations: trace.compensations(),
        }
    }

    /// Writes it to `path` through a temporary file of its own, so a reader never
    /// sees half of it, even while another write is under way.
    fn write(&self, path: &std::path::Path) {
        let tmp = path.with_extension(format!("{}.tmp", Uuid::new_v4().simple()));
        let written = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot write the trace");
        }
    }
}

/// Runs the canonical scenario through the MCP server in a child process.
pub async fn run(h: &Arc<Harness>) -> Result<Finished, DemoError> {
    drive(h, Scenario::Canonical).await
}

/// Runs the governed scenario (see [`crate::governed`]) through the MCP server in a
/// child process: part 1, the cap lowered, the child's poller reloading the
/// policy, part 2.
pub async fn governed(h: &Arc<Harness>) -> Result<Finished, DemoError> {
    drive(h, Scenario::Governed).await
}

async fn drive(h: &Arc<Harness>, scenario: Scenario) -> Result<Finished, DemoError> {
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
            .env(SCENARIO_ENV, scenario.name())
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
    match scenario {
        Scenario::Canonical => call_all(&client, &steps(), &mut seen).await?,
        Scenario::Governed => {
            let [first, second] = governed_steps();
            call_all(&client, &first, &mut seen).await?;
            crate::governed::lower_cap(h).await?;
            wait_for_reload(&trace_file).await?;
            call_all(&client, &second, &mut seen).await?;
        }
    }
    client
        .cancel()
        .await
        .map_err(|e| DemoError::Model(format!("MCP shutdown: {e}")))?;

    let snapshot = read_trace(&trace_file)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Finished {
        entries: snapshot.entries,
        answer: Some(format!("MCP results: {}", seen.join(", "))),
        policy_reloads: snapshot.policy_reloads,
        compensations: snapshot.compensations,
    })
}

/// Calls `steps` in order over MCP, noting each result's status in `seen`.
async fn call_all(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    steps: &[Step],
    seen: &mut Vec<String>,
) -> Result<(), DemoError> {
    for step in steps {
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
            .unwrap_or(if result.is_error == Some(true) {
                "error"
            } else {
                "ok"
            })
            .to_owned();
        seen.push(format!("{}: {status}", step.id));
    }
    Ok(())
}

/// Waits (up to 10 s) until the child's trace shows a policy reload.
async fn wait_for_reload(trace_file: &std::path::Path) -> Result<(), DemoError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if read_trace(trace_file).is_ok_and(|s| !s.policy_reloads.is_empty()) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DemoError::Gateway(
                "the MCP server did not reload the lowered policy within 10 s".to_owned(),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn read_trace(path: &std::path::Path) -> Result<Snapshot, DemoError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DemoError::Gateway(format!("the MCP server wrote no trace: {e}")))?;
    serde_json::from_str(&text).map_err(|e| DemoError::Gateway(format!("the MCP trace: {e}")))
}

fn env(name: &str) -> Result<String, DemoError> {
    std::env::var(name).map_err(|_| DemoError::Usage(format!("{name} is not set")))
}

/// The child side: serves the guarded travel tools on stdio until the client leaves,
/// writing the run's trace after every call. Returns the process exit code.
pub fn child_main() -> std::process::ExitCode {
    // Its guarded calls' spans go where the demo's go (the OTEL_* variables are
    // inherited); logs on stderr, errors only: stdout is the MCP transport.
    let _telemetry = match paybond_middleware_core::telemetry::init_with_log_filter(
        "paybond-mcp-server",
        "error",
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
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
    let governed = std::env::var(SCENARIO_ENV).is_ok_and(|s| s == Scenario::Governed.name());
    let run = crate::bind_run(
        Arc::new(gateway),
        intent,
        token,
        tools,
        "demo-mcp",
        true,
        governed.then_some(RELOAD_EVERY),
    )
    .await?;
    let registry = if governed {
        travel::governed_registry(&run)
    } else {
        travel::registry().guarded(&run)
    };
    // A reload happens between calls: the file shows it without waiting for one.
    if governed {
        let (trace, file, run) = (run.trace().clone(), trace_file.clone(), run.clone());
        tokio::spawn(async move {
            let mut digest = run.policy_digest();
            loop {
                tokio::time::sleep(RELOAD_EVERY / 2).await;
                let now = run.policy_digest();
                if now != digest {
                    Snapshot::of(&trace).write(&file);
                    digest = now;
                }
            }
        });
    }
    let server = TracingServer {
        inner: GuardedMcpServer::new(registry, "paybond-travel"),
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
        Snapshot::of(&self.trace).write(&self.file);
        response
    }
}
