//! `paybond agent run bind|status|trace`, `paybond agent tool execute` and
//! `paybond agent sandbox smoke`: a run kept between commands.
//!
//! `bind` funds a sandbox intent with the agent key and keeps the run in
//! `.paybond/runs/<run_id>.json` (mode 0600: it holds the capability token).
//! `tool execute` runs one call through the layer (`PaybondAgentRun`), whose tool
//! answers `--result-body`: verify, evidence, finalization, exactly as a guarded
//! tool in an agent; each attempt is appended to `.paybond/runs/<run_id>.trace.jsonl`,
//! which `trace` shows (`--explain`: every check of each decision).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use paybond_middleware_core::trace::TraceEntry;
use paybond_middleware_core::wire::SandboxBootstrapRequest;
use paybond_middleware_core::{
    ApiKey, BoxError, CapabilityToken, HttpGateway, PaybondAgentRun, RunError, SpendGateway,
    ToolCall, ToolOutput, ToolPolicy, ToolRegistry, tool_fn,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Outcome;
use crate::output::{self, Category, Failure, Global};

#[derive(Debug, Subcommand)]
pub(crate) enum RunCommand {
    /// Fund a sandbox intent for one operation and keep the run in
    /// .paybond/runs/<run_id>.json (mode 0600).
    Bind {
        /// The operation the intent allows, e.g. travel.book_hotel (default: the
        /// policy file's only side-effecting tool).
        #[arg(long)]
        operation: Option<String>,
        /// The intent's budget, in cents.
        #[arg(long)]
        requested_spend_cents: u64,
        /// The evidence preset of the tool's calls.
        #[arg(long, default_value = "cost_and_completion")]
        completion_preset: String,
        /// A policy file: validated (refused whole with every problem), its tool
        /// entries used where the gateway's effective policy names none.
        #[arg(long)]
        policy_file: Option<PathBuf>,
        /// The run's id [default: a new UUID].
        #[arg(long)]
        run_id: Option<String>,
    },
    /// What a bound run is: its intent, operation and policy.
    Status {
        /// The run.
        #[arg(long)]
        run_id: String,
    },
    /// Take up the tenant's current effective policy (and, with --policy-file, new
    /// local tool entries: the file is validated and refused whole with every
    /// problem); records `policy_reloaded` with the old and new digest.
    ReloadPolicy {
        /// The run.
        #[arg(long)]
        run_id: String,
        /// A policy file for the run's local tool entries.
        #[arg(long)]
        policy_file: Option<PathBuf>,
    },
    /// The run's trace: every attempt of every call, with its decision.
    Trace {
        /// The run.
        #[arg(long)]
        run_id: String,
        /// Show each decision's checks (name, inputs, result).
        #[arg(long)]
        explain: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ToolCommand {
    /// Run one tool call of a bound run through the layer: verify, then the tool
    /// (answering --result-body), evidence and finalization.
    Execute {
        /// The run (from `agent run bind`).
        #[arg(long)]
        run_id: String,
        /// The operation (the tool's name).
        #[arg(long)]
        operation: String,
        /// The call's id.
        #[arg(long)]
        tool_call_id: String,
        /// What the tool returns, as JSON (`{"status": "completed", "cost_cents": 18700}`);
        /// a `status` of `failed` makes the call fail (the reservation is released).
        #[arg(
            long,
            conflicts_with = "result_file",
            required_unless_present = "result_file"
        )]
        result_body: Option<String>,
        /// The same, from a file.
        #[arg(long)]
        result_file: Option<PathBuf>,
        /// The call's arguments, as JSON.
        #[arg(long)]
        arguments: Option<String>,
        /// The amount to authorize [default: the run's bound amount].
        #[arg(long)]
        requested_spend_cents: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SandboxCommand {
    /// Bind a sandbox run and execute one call (`smoke-1`) through the layer: the
    /// whole path in one command. Exit 0 when the call was allowed and consumed.
    Smoke {
        /// The operation.
        #[arg(long, default_value = "travel.book_hotel")]
        operation: String,
        /// The intent's budget and the call's amount, in cents.
        #[arg(long, default_value_t = 12_000)]
        requested_spend_cents: u64,
        /// The evidence preset.
        #[arg(long, default_value = "cost_and_completion")]
        evidence_preset: String,
        /// What the tool returns [default: completed at the requested amount].
        #[arg(long)]
        result_body: Option<String>,
    },
}

/// A bound run as `.paybond/runs/<run_id>.json` keeps it.
#[derive(Clone, Serialize, Deserialize)]
struct StoredRun {
    run_id: String,
    tenant_id: String,
    intent_id: uuid::Uuid,
    capability_token: String,
    operation: String,
    allowed_tools: Vec<String>,
    sandbox: bool,
    sandbox_lifecycle_status: String,
    requested_spend_cents: u64,
    completion_preset: String,
    #[serde(default)]
    policy_file: Option<String>,
    #[serde(default)]
    policy_file_sha256: Option<String>,
    #[serde(default)]
    tools: std::collections::BTreeMap<String, ToolPolicy>,
    #[serde(default)]
    policy_digest: Option<String>,
    #[serde(default)]
    policy_version: Option<u64>,
    gateway_url: String,
    bound_at: String,
    /// `policy_reloaded` records, oldest first.
    #[serde(default)]
    reloads: Vec<Value>,
}

impl std::fmt::Debug for StoredRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredRun")
            .field("run_id", &self.run_id)
            .field("intent_id", &self.intent_id)
            .field("capability_token", &"***")
            .finish_non_exhaustive()
    }
}

impl StoredRun {
    /// What commands print: everything but the capability token.
    fn shown(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        v["capability_token"] = Value::from("[redacted]");
        if let Value::Object(map) = &mut v {
            map.remove("tools");
        }
        v
    }
}

fn runs_dir() -> PathBuf {
    Path::new(".paybond").join("runs")
}

/// A run id is a file name: letters, digits, `-`, `_` and `.`, not starting with `.`.
fn check_run_id(id: &str) -> Result<(), Outcome> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(crate::usage_error(format!(
            "--run-id `{id}`: use letters, digits, `-`, `_` and `.` (at most 128, not starting with `.`)"
        )))
    }
}

fn run_path(id: &str) -> PathBuf {
    runs_dir().join(format!("{id}.json"))
}

fn trace_path(id: &str) -> PathBuf {
    runs_dir().join(format!("{id}.trace.jsonl"))
}

/// `.paybond/runs`, created 0700.
fn ensure_dir() -> std::io::Result<()> {
    let dir = runs_dir();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(&dir)
}

fn load(id: &str) -> Result<StoredRun, Outcome> {
    check_run_id(id)?;
    let path = run_path(id);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        output::fail(Failure::new(
            Category::Environment,
            "run_not_found",
            format!(
                "no run `{id}` here ({}: {e}); bind one with `paybond agent run bind`",
                path.display()
            ),
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        output::fail(Failure::new(
            Category::Environment,
            "invalid_run_file",
            format!("{}:{}:{}: {e}", path.display(), e.line(), e.column()),
        ))
    })
}

fn gateway_failure(what: &str, e: &paybond_middleware_core::GatewayError) -> Outcome {
    output::fail(Failure::new(
        match e.kind() {
            paybond_middleware_core::GatewayErrorKind::Rejected => Category::Gateway,
            _ => Category::Environment,
        },
        e.code().unwrap_or("gateway_unavailable"),
        format!("{what}: {e}"),
    ))
}

/// A runtime on the calling thread, for a command's async calls.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Outcome> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::usage_error(format!("cannot start the runtime: {e}")))
}

/// The gateway URL and agent key, as the other agent commands find them.
fn agent_gateway(global: &Global) -> Result<(String, HttpGateway), Outcome> {
    let t = crate::ops::target_with(global, "PAYBOND_API_KEY", "an agent key")?;
    HttpGateway::builder(&t.url, ApiKey::new(t.key))
        .build()
        .map(|g| (t.url, g))
        .map_err(|e| gateway_failure("the gateway client", &e))
}

/// `paybond agent run ...`.
pub(crate) fn run(cmd: RunCommand, global: &Global) -> Outcome {
    match cmd {
        RunCommand::Bind {
            operation,
            requested_spend_cents,
            completion_preset,
            policy_file,
            run_id,
        } => match bind(
            operation,
            requested_spend_cents,
            completion_preset,
            policy_file.as_deref(),
            run_id,
            global,
        ) {
            Ok(stored) => print(stored.shown(), |v| {
                for k in [
                    "run_id",
                    "intent_id",
                    "operation",
                    "requested_spend_cents",
                    "policy_version",
                ] {
                    println!("{k}: {}", text(&v[k]));
                }
                println!(
                    "saved: {}",
                    run_path(v["run_id"].as_str().unwrap_or("")).display()
                );
            }),
            Err(o) => o,
        },
        RunCommand::ReloadPolicy {
            run_id,
            policy_file,
        } => reload_policy(&run_id, policy_file.as_deref(), global),
        RunCommand::Status { run_id } => match load(&run_id) {
            Ok(stored) => {
                let entries = read_trace(&run_id).unwrap_or_default();
                let mut v = stored.shown();
                v["trace_entries"] = json!(entries.len());
                print(v, |v| {
                    if let Value::Object(map) = v {
                        for (k, val) in map {
                            println!("{k}: {}", text(val));
                        }
                    }
                })
            }
            Err(o) => o,
        },
        RunCommand::Trace { run_id, explain } => {
            let stored = match load(&run_id) {
                Ok(s) => s,
                Err(o) => return o,
            };
            let entries = match read_trace(&run_id) {
                Ok(e) if !e.is_empty() => e,
                Ok(_) => {
                    return output::fail(Failure::new(
                        Category::Invalid,
                        "trace_not_found",
                        format!(
                            "no trace for run `{run_id}` yet; run `paybond agent tool execute --run-id {run_id}` first"
                        ),
                    ));
                }
                Err(o) => return o,
            };
            let data = json!({
                "run_id": stored.run_id,
                "intent_id": stored.intent_id,
                "trace_events": entries,
                "trace_file": trace_path(&run_id).display().to_string(),
            });
            print(data, |_| {
                println!("run {} (intent {})", stored.run_id, stored.intent_id);
                for e in &entries {
                    println!(
                        "{:<14} {:<24} {:<11} {:>14}  {:<9} {}",
                        e.tool_call_id,
                        e.operation,
                        format!("{:?}", e.outcome).to_lowercase(),
                        e.amount_cents
                            .map_or_else(|| "-".to_owned(), |c| output::money(c, None)),
                        e.finalization
                            .map_or_else(|| "-".to_owned(), |f| format!("{f:?}").to_lowercase()),
                        e.reason_codes.join(",")
                    );
                    if explain {
                        for c in &e.checks {
                            println!(
                                "    {:<22} {:<5} {}",
                                c.name,
                                c.result,
                                serde_json::to_string(&c.inputs).unwrap_or_default()
                            );
                        }
                    }
                }
            })
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn print(data: Value, table: impl FnOnce(&Value)) -> Outcome {
    if !output::success_json(data.clone(), &[]) {
        table(&data);
    }
    Outcome::Success
}

fn bind(
    operation: Option<String>,
    requested_spend_cents: u64,
    completion_preset: String,
    policy_file: Option<&Path>,
    run_id: Option<String>,
    global: &Global,
) -> Result<StoredRun, Outcome> {
    let run_id = run_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    check_run_id(&run_id)?;
    if run_path(&run_id).exists() {
        return Err(crate::usage_error(format!(
            "a run `{run_id}` is already bound here ({}); choose another --run-id",
            run_path(&run_id).display()
        )));
    }
    let (tools, policy_sha) = match policy_file {
        Some(path) => {
            let (tools, sha) = read_policy_file(path)?;
            (tools, Some(sha))
        }
        None => (std::collections::BTreeMap::new(), None),
    };
    let operation = match operation {
        Some(op) => op,
        None => {
            let paid: Vec<&String> = tools
                .iter()
                .filter(|(_, p)| p.side_effecting)
                .map(|(n, _)| n)
                .collect();
            match paid.as_slice() {
                [one] => (*one).clone(),
                _ => {
                    return Err(crate::usage_error(
                        "agent run bind needs --operation (or a --policy-file with exactly one side-effecting tool)",
                    ));
                }
            }
        }
    };
    let (url, gateway) = agent_gateway(global)?;
    let rt = runtime()?;
    let (boot, effective) = rt.block_on(async {
        let boot = gateway
            .bootstrap_sandbox(&SandboxBootstrapRequest {
                operation: operation.clone(),
                requested_spend_cents,
                ..Default::default()
            })
            .await
            .map_err(|e| gateway_failure("funding the sandbox intent", &e))?;
        let effective = gateway
            .effective_policy()
            .await
            .map_err(|e| gateway_failure("reading the effective policy", &e))?;
        Ok::<_, Outcome>((boot, effective))
    })?;
    let tools = local_entries(
        tools,
        effective.as_ref(),
        &boot.operation,
        &completion_preset,
    );
    let stored = StoredRun {
        run_id: run_id.clone(),
        tenant_id: boot.tenant_id.clone(),
        intent_id: boot.intent_id,
        capability_token: boot.capability_token.expose_secret().to_owned(),
        operation: boot.operation.clone(),
        allowed_tools: vec![boot.operation.clone()],
        sandbox: true,
        sandbox_lifecycle_status: serde_json::to_value(boot.sandbox_lifecycle_status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        requested_spend_cents: boot.requested_spend_cents,
        completion_preset,
        policy_file: policy_file.map(|p| p.display().to_string()),
        policy_file_sha256: policy_sha,
        tools,
        policy_digest: effective.as_ref().map(|p| p.digest.clone()),
        policy_version: effective.as_ref().map(|p| p.version),
        gateway_url: url,
        bound_at: jiff::Timestamp::now().to_string(),
        reloads: Vec::new(),
    };
    save(&stored)?;
    Ok(stored)
}

/// A policy file's tool entries and SHA-256; an invalid file is refused whole, with
/// every problem at its line.
fn read_policy_file(
    path: &Path,
) -> Result<(std::collections::BTreeMap<String, ToolPolicy>, String), Outcome> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        crate::unreadable(format!("cannot read --policy-file {}: {e}", path.display()))
    })?;
    let checked = paybond_policies::check_policy(&text, &path.display().to_string());
    let Some(doc) = checked.document.filter(|_| checked.errors.is_empty()) else {
        let problems: Vec<String> = checked.errors.iter().map(ToString::to_string).collect();
        return Err(output::fail(
            Failure::new(
                Category::Invalid,
                "policy_invalid",
                format!("{} is refused:\n{}", path.display(), problems.join("\n")),
            )
            .details(json!({"problems": problems})),
        ));
    };
    Ok((
        doc.tools,
        paybond_gateway::audit::sha256_hex(text.as_bytes()),
    ))
}

fn reload_policy(run_id: &str, policy_file: Option<&Path>, global: &Global) -> Outcome {
    let mut stored = match load(run_id) {
        Ok(s) => s,
        Err(o) => return o,
    };
    // The file first: an invalid one changes nothing.
    let local = match policy_file.map(read_policy_file).transpose() {
        Ok(l) => l,
        Err(o) => return o,
    };
    let (_, gateway) = match agent_gateway(global) {
        Ok(g) => g,
        Err(o) => return o,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(o) => return o,
    };
    let effective = match rt.block_on(gateway.effective_policy()) {
        Ok(e) => e,
        Err(e) => return gateway_failure("reading the effective policy", &e),
    };
    let to_digest = effective.as_ref().map(|p| p.digest.clone());
    let to_version = effective.as_ref().map(|p| p.version);
    let file_changed = local
        .as_ref()
        .is_some_and(|(_, sha)| stored.policy_file_sha256.as_deref() != Some(sha.as_str()));
    let reloaded = to_digest != stored.policy_digest || file_changed;
    let record = json!({
        "event": "policy_reloaded",
        "from_digest": stored.policy_digest,
        "to_digest": to_digest,
        "from_version": stored.policy_version,
        "to_version": to_version,
        "policy_file": policy_file.map(|p| p.display().to_string()),
        "at": jiff::Timestamp::now().to_string(),
    });
    if reloaded {
        stored.policy_digest = to_digest;
        stored.policy_version = to_version;
        if let (Some((tools, sha)), Some(path)) = (local, policy_file) {
            stored.tools = local_entries(
                tools,
                effective.as_ref(),
                &stored.operation,
                &stored.completion_preset,
            );
            stored.policy_file = Some(path.display().to_string());
            stored.policy_file_sha256 = Some(sha);
        }
        stored.reloads.push(record.clone());
        if let Err(o) = save(&stored) {
            return o;
        }
    }
    let data = json!({"run_id": stored.run_id, "reloaded": reloaded, "policy_reloaded": reloaded.then_some(record)});
    print(data, |v| {
        if reloaded {
            println!(
                "policy_reloaded: v{} {} -> v{} {}",
                text(&v["policy_reloaded"]["from_version"]),
                text(&v["policy_reloaded"]["from_digest"]),
                text(&v["policy_reloaded"]["to_version"]),
                text(&v["policy_reloaded"]["to_digest"])
            );
        } else {
            println!("the run already has the current policy");
        }
    })
}

/// The local tool entries a run keeps: those of its policy file that the gateway's
/// effective policy does not name (the gateway's entry wins for the others), and,
/// when neither names the run's operation, a side-effecting entry for it with the
/// run's evidence preset.
fn local_entries(
    mut tools: std::collections::BTreeMap<String, ToolPolicy>,
    effective: Option<&paybond_middleware_core::wire::EffectivePolicy>,
    operation: &str,
    completion_preset: &str,
) -> std::collections::BTreeMap<String, ToolPolicy> {
    let named = |name: &str| effective.is_some_and(|p| p.policy.tools.contains_key(name));
    tools.retain(|name, _| !named(name));
    if !named(operation) && !tools.contains_key(operation) {
        tools.insert(
            operation.to_owned(),
            ToolPolicy::side_effecting(completion_preset.to_owned()),
        );
    }
    tools
}

fn save(stored: &StoredRun) -> Result<(), Outcome> {
    let fail = |e: std::io::Error| {
        output::fail(Failure::new(
            Category::Environment,
            "unwritable_file",
            format!("cannot write {}: {e}", run_path(&stored.run_id).display()),
        ))
    };
    ensure_dir().map_err(fail)?;
    let bytes = serde_json::to_vec_pretty(stored).unwrap_or_default();
    crate::audit::write_private(&run_path(&stored.run_id), &bytes).map_err(fail)
}

fn read_trace(id: &str) -> Result<Vec<TraceEntry>, Outcome> {
    let path = trace_path(id);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(crate::unreadable(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                output::fail(Failure::new(
                    Category::Environment,
                    "invalid_trace_file",
                    format!("{}:{}: {e}", path.display(), i + 1),
                ))
            })
        })
        .collect()
}

fn append_trace(id: &str, entries: &[TraceEntry]) -> std::io::Result<()> {
    use std::io::Write as _;
    ensure_dir()?;
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(trace_path(id))?;
    let mut text = String::new();
    for e in entries {
        text.push_str(&serde_json::to_string(e).map_err(std::io::Error::other)?);
        text.push('\n');
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// What one executed call came to, for the output.
struct Executed {
    data: Value,
    allowed_and_consumed: bool,
    error: Option<Failure>,
}

fn execute_call(
    stored: &StoredRun,
    operation: &str,
    tool_call_id: &str,
    result_body: Value,
    arguments: Value,
    requested_spend_cents: Option<u64>,
    global: &Global,
) -> Result<Executed, Outcome> {
    let (_, gateway) = agent_gateway(global)?;
    let rt = runtime()?;
    let outcome = rt.block_on(async {
        // The stored entries are those the gateway's effective policy did not name
        // when the run was bound or reloaded: bind takes the gateway's for the rest.
        let builder = PaybondAgentRun::builder(
            Arc::new(gateway),
            stored.intent_id,
            CapabilityToken::new(stored.capability_token.clone()),
        )
        .tools(stored.tools.clone());
        let run = builder
            .bind()
            .await
            .map_err(|e| gateway_failure("binding the run", &e))?;
        let body = result_body.clone();
        let policy = run.tools().get(operation).cloned().unwrap_or_default();
        let tool = tool_fn(operation, policy, move |_args: Value| {
            let body = body.clone();
            async move {
                if body["status"] == "failed" {
                    return Err::<ToolOutput, BoxError>(
                        format!("the tool reported failure: {body}").into(),
                    );
                }
                let mut out = ToolOutput::new(body.clone());
                if let Some(c) = body["cost_cents"].as_u64() {
                    out = out.with_cost_cents(c);
                }
                Ok(out)
            }
        });
        let tools = ToolRegistry::new().with(tool).guarded(&run);
        let call = ToolCall::new(operation, arguments, tool_call_id).with_requested_spend_cents(
            requested_spend_cents.unwrap_or(stored.requested_spend_cents),
        );
        let result = tools.dispatch(call).await;
        Ok::<_, Outcome>((result, run.trace().entries()))
    })?;
    let (result, entries) = outcome;
    if let Err(e) = append_trace(&stored.run_id, &entries) {
        return Err(output::fail(Failure::new(
            Category::Environment,
            "unwritable_file",
            format!(
                "cannot append to {}: {e}",
                trace_path(&stored.run_id).display()
            ),
        )));
    }
    let last = entries.last();
    let mut data = json!({
        "run_id": stored.run_id,
        "intent_id": stored.intent_id,
        "tool_call_id": tool_call_id,
        "operation": operation,
        "outcome": last.map(|e| e.outcome),
        "decision_id": last.and_then(|e| e.decision_id),
        "reason_codes": last.map(|e| e.reason_codes.clone()).unwrap_or_default(),
        "finalization": last.and_then(|e| e.finalization),
        "amount_cents": last.and_then(|e| e.amount_cents),
        "actual_cents": last.and_then(|e| e.actual_cents),
        "trace_file": trace_path(&stored.run_id).display().to_string(),
    });
    let consumed = last.is_some_and(|e| {
        e.finalization == Some(paybond_middleware_core::wire::Finalization::Consumed)
    });
    let error = match result {
        Ok(out) => {
            data["tool_result"] = out.body;
            None
        }
        Err(e) => {
            let code = match &e {
                RunError::ApprovalRequired(hold) => {
                    data["approval_request_id"] = json!(hold.approval_request_id);
                    "approval_required"
                }
                RunError::SpendDenied(_) => "spend_denied",
                RunError::GatewayUnavailable { .. } => "gateway_unavailable",
                _ if e.tool_ran() => "tool_failed",
                _ => "call_refused",
            };
            Some(Failure::new(
                if code == "gateway_unavailable" {
                    Category::Environment
                } else {
                    Category::Invalid
                },
                code,
                format!("{operation} ({tool_call_id}): {e}"),
            ))
        }
    };
    Ok(Executed {
        data,
        allowed_and_consumed: consumed,
        error,
    })
}

fn parse_json_arg(flag: &str, text: &str) -> Result<Value, Outcome> {
    serde_json::from_str(text).map_err(|e| {
        output::fail(Failure::new(
            Category::Usage,
            "invalid_arguments",
            format!("{flag}: not JSON ({e})"),
        ))
    })
}

/// `paybond agent tool ...`.
pub(crate) fn tool(cmd: ToolCommand, global: &Global) -> Outcome {
    let ToolCommand::Execute {
        run_id,
        operation,
        tool_call_id,
        result_body,
        result_file,
        arguments,
        requested_spend_cents,
    } = cmd;
    let stored = match load(&run_id) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let body = match (result_body, result_file) {
        (Some(text), _) => parse_json_arg("--result-body", &text),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => parse_json_arg(&format!("--result-file {}", path.display()), &text),
            Err(e) => {
                return crate::unreadable(format!(
                    "cannot read --result-file {}: {e}",
                    path.display()
                ));
            }
        },
        (None, None) => Err(crate::usage_error(
            "agent tool execute needs --result-body or --result-file",
        )),
    };
    let body = match body {
        Ok(b) => b,
        Err(o) => return o,
    };
    let args = match arguments
        .as_deref()
        .map(|a| parse_json_arg("--arguments", a))
        .transpose()
    {
        Ok(a) => a.unwrap_or_else(|| json!({})),
        Err(o) => return o,
    };
    match execute_call(
        &stored,
        &operation,
        &tool_call_id,
        body,
        args,
        requested_spend_cents,
        global,
    ) {
        Ok(Executed {
            data, error: None, ..
        }) => print(data, |v| {
            for k in [
                "tool_call_id",
                "operation",
                "outcome",
                "decision_id",
                "finalization",
                "actual_cents",
            ] {
                println!("{k}: {}", text(&v[k]));
            }
        }),
        Ok(Executed {
            data,
            error: Some(f),
            ..
        }) => output::fail(f.data(data)),
        Err(o) => o,
    }
}

/// `paybond agent sandbox smoke`.
pub(crate) fn sandbox(cmd: SandboxCommand, global: &Global) -> Outcome {
    let SandboxCommand::Smoke {
        operation,
        requested_spend_cents,
        evidence_preset,
        result_body,
    } = cmd;
    let body = match result_body
        .as_deref()
        .map(|b| parse_json_arg("--result-body", b))
        .transpose()
    {
        Ok(b) => {
            b.unwrap_or_else(|| json!({"status": "completed", "cost_cents": requested_spend_cents}))
        }
        Err(o) => return o,
    };
    let stored = match bind(
        Some(operation.clone()),
        requested_spend_cents,
        evidence_preset,
        None,
        None,
        global,
    ) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let executed = match execute_call(
        &stored,
        &operation,
        "smoke-1",
        body,
        json!({}),
        None,
        global,
    ) {
        Ok(e) => e,
        Err(o) => return o,
    };
    let checklist = [
        format!("bound run {} to intent {}", stored.run_id, stored.intent_id),
        format!(
            "authorized {} for {}: {}",
            operation,
            output::money(requested_spend_cents, None),
            text(&executed.data["outcome"])
        ),
        format!("finalized: {}", text(&executed.data["finalization"])),
        format!("trace: {}", text(&executed.data["trace_file"])),
    ];
    let data = json!({
        "bind": stored.shown(),
        "execute": executed.data,
        "checklist_lines": checklist,
        "passed": executed.allowed_and_consumed,
    });
    if let Some(f) = executed.error {
        return output::fail(f.data(data));
    }
    if !executed.allowed_and_consumed {
        return output::fail(
            Failure::new(
                Category::Invalid,
                "smoke_failed",
                "the smoke call was not allowed and consumed",
            )
            .data(data),
        );
    }
    print(data, |_| {
        for line in &checklist {
            println!("ok  {line}");
        }
    })
}
