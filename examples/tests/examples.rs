//! Every example, run as its own process against the gateway served on loopback
//! (as `paybond dev loop --offline` serves it) and, for the model-driven ones, a
//! scripted OpenAI-compatible model that refuses invalid function names.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use paybond_gateway::{Engine, EngineConfig, Storage, TenantKeys};
use paybond_middleware_core::wire::Environment;
use rmcp::ServiceExt as _;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::{ConfigureCommandExt as _, TokioChildProcess};
use serde_json::{Value, json};

struct Gateway {
    url: String,
    keys: TenantKeys,
    _dir: tempfile::TempDir,
}

async fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(
        Engine::open(EngineConfig::new(Storage::File(
            dir.path().join("paybond.db"),
        )))
        .unwrap(),
    );
    let keys = engine
        .create_tenant("examples", Environment::Sandbox)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(paybond_gateway::server::serve(
        listener,
        engine,
        std::future::pending(),
    ));
    Gateway {
        url,
        keys,
        _dir: dir,
    }
}

/// A model that books the Harbor Inn for 12000 cents through the offered booking
/// function, then answers with what the tool said.
async fn chat(Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let offered: Vec<String> = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
        .collect();
    if let Some(bad) = offered
        .iter()
        .find(|n| !paybond_middleware_core::function_names::is_valid_function_name(n))
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"error": {"message": format!("invalid function name {bad}"), "type": "invalid_request_error"}}),
            ),
        );
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let result = messages.iter().rev().find(|m| m["role"] == "tool");
    let message = match (result, offered.iter().find(|n| n.contains("book_hotel"))) {
        (None, Some(function)) => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": "call_book",
                "type": "function",
                "function": {"name": function, "arguments": "{\"hotel\":\"Harbor Inn\",\"amount_cents\":12000}"}
            }]
        }),
        (Some(result), _) => {
            json!({"role": "assistant", "content": format!("Done: {}", result["content"])})
        }
        (None, None) => json!({"role": "assistant", "content": "No booking tool was offered."}),
    };
    let finish = if message["tool_calls"].is_array() {
        "tool_calls"
    } else {
        "stop"
    };
    (
        StatusCode::OK,
        Json(json!({
            "id": "chatcmpl-example",
            "object": "chat.completion",
            "created": 0,
            "model": "scripted",
            "choices": [{"index": 0, "finish_reason": finish, "message": message}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        })),
    )
}

/// A Messages API (Claude) that refuses what the real one refuses here (no
/// `x-api-key` or `anthropic-version`, no `max_tokens`, a tool name with a dot, a
/// `tool_result` without the `tool_use_id` it was given), books the Harbor Inn for
/// 12000 cents with a `tool_use` block, then answers with the tool's result.
async fn messages(
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let refuse = |status: StatusCode, kind: &str, message: String| {
        (
            status,
            Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
        )
    };
    if headers.get("x-api-key").is_none() || headers.get("anthropic-version").is_none() {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key and anthropic-version are required".into(),
        );
    }
    if !body["max_tokens"].is_u64() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "max_tokens: Field required".into(),
        );
    }
    let tools: Vec<&Value> = body["tools"].as_array().into_iter().flatten().collect();
    if let Some(bad) = tools.iter().find(|t| {
        let name = t["name"].as_str().unwrap_or_default();
        !t["input_schema"].is_object()
            || name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("tools: invalid tool {bad}"),
        );
    }
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_default();
    let result = last["content"]
        .as_array()
        .and_then(|blocks| blocks.iter().find(|b| b["type"] == "tool_result"))
        .cloned();
    let content = match result {
        Some(r) if r["tool_use_id"] != "toolu_example" => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("unexpected `tool_use_id` in {r}"),
            );
        }
        Some(r) => json!([{"type": "text", "text": format!("Done: {}", r["content"])}]),
        None => json!([
            {"type": "text", "text": "Booking it."},
            {"type": "tool_use", "id": "toolu_example", "name": "travel_book_hotel",
             "input": {"hotel": "Harbor Inn", "amount_cents": 12000}}
        ]),
    };
    let stop = if content[1].is_object() {
        "tool_use"
    } else {
        "end_turn"
    };
    (
        StatusCode::OK,
        Json(json!({
            "id": "msg_example", "type": "message", "role": "assistant", "model": body["model"],
            "content": content, "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0}
        })),
    )
}

async fn scripted_claude() -> String {
    let app = axum::Router::new().route("/v1/messages", axum::routing::post(messages));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn scripted_model() -> String {
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(chat));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// The example's command, configured as `paybond dev loop` leaves a shell, in an
/// empty directory (no `.env.local`).
fn example(
    name: &str,
    gw: &Gateway,
    model: Option<&str>,
    cwd: &std::path::Path,
) -> tokio::process::Command {
    let exe = match name {
        "openai_tool" => env!("CARGO_BIN_EXE_openai_tool"),
        "rig_agent" => env!("CARGO_BIN_EXE_rig_agent"),
        "custom_orchestrator" => env!("CARGO_BIN_EXE_custom_orchestrator"),
        "wait_for_approval" => env!("CARGO_BIN_EXE_wait_for_approval"),
        "mcp_server" => env!("CARGO_BIN_EXE_mcp_server"),
        "claude_agent" => env!("CARGO_BIN_EXE_claude_agent"),
        "traced_agent" => env!("CARGO_BIN_EXE_traced_agent"),
        other => panic!("no example {other}"),
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.current_dir(cwd)
        .env("PAYBOND_GATEWAY_URL", &gw.url)
        .env("PAYBOND_API_KEY", gw.keys.agent.expose_secret())
        .env_remove("PAYBOND_TENANT_ID")
        .env_remove("PAYBOND_EXPECTED_ENVIRONMENT")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .kill_on_drop(true);
    match model {
        Some(base) => cmd
            .env("OPENAI_API_KEY", "scripted")
            .env("OPENAI_BASE_URL", base)
            .env("OPENAI_MODEL", "scripted"),
        None => cmd.env_remove("OPENAI_API_KEY"),
    };
    cmd
}

async fn finished(mut cmd: tokio::process::Command) -> (String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the example finished in time")
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    );
    assert!(
        status.success(),
        "{status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// The `totals:` line of an example's output.
fn totals(stdout: &str) -> Value {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("totals: "))
        .unwrap_or_else(|| panic!("no totals in:\n{stdout}"));
    serde_json::from_str(line).unwrap()
}

fn traces(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("trace: "))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn openai_tool_books_through_the_layer() {
    let gw = gateway().await;
    let model = scripted_model().await;
    let dir = tempfile::tempdir().unwrap();
    let (stdout, stderr) = finished(example("openai_tool", &gw, Some(&model), dir.path())).await;
    let trace = traces(&stdout);
    assert_eq!(trace.len(), 1, "{stdout}");
    assert_eq!(trace[0]["tool"], "travel.book_hotel");
    assert_eq!(trace[0]["outcome"], "allow");
    assert_eq!(totals(&stdout)["consumed_cents"], 12_000);
    assert!(stdout.contains("H-1001"), "{stdout}");
    assert!(!stderr.contains(gw.keys.agent.expose_secret()));
}

#[tokio::test]
async fn rig_agent_books_through_the_layer() {
    let gw = gateway().await;
    let model = scripted_model().await;
    let dir = tempfile::tempdir().unwrap();
    let (stdout, _) = finished(example("rig_agent", &gw, Some(&model), dir.path())).await;
    let trace = traces(&stdout);
    assert_eq!(trace.len(), 1, "{stdout}");
    assert_eq!(trace[0]["outcome"], "allow");
    assert_eq!(totals(&stdout)["consumed_cents"], 12_000);
}

#[tokio::test]
async fn claude_agent_books_through_the_layer() {
    let gw = gateway().await;
    let claude = scripted_claude().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = example("claude_agent", &gw, None, dir.path());
    cmd.env("ANTHROPIC_API_KEY", "scripted")
        .env("ANTHROPIC_BASE_URL", &claude)
        .env("ANTHROPIC_MODEL", "scripted-claude");
    let (stdout, stderr) = finished(cmd).await;
    let trace = traces(&stdout);
    assert_eq!(trace.len(), 1, "{stdout}");
    assert_eq!(trace[0]["tool"], "travel.book_hotel");
    assert_eq!(trace[0]["outcome"], "allow");
    assert_eq!(totals(&stdout)["consumed_cents"], 12_000);
    assert!(stdout.contains("H-5001"), "{stdout}");
    assert!(!stderr.contains(gw.keys.agent.expose_secret()));
    // Without a key it says which one is missing.
    let out = example("claude_agent", &gw, None, dir.path())
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ANTHROPIC_API_KEY"));
}

#[tokio::test]
async fn traced_agent_exports_one_trace_per_tool_call() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message as _;
    let bodies: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
    let keep = bodies.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().push(body.to_vec());
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let gw = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = example("traced_agent", &gw, None, dir.path());
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_METRICS_EXPORTER", "none")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_SDK_DISABLED");
    let (stdout, _) = finished(cmd).await;
    assert!(stdout.contains("call-1: ran"), "{stdout}");
    assert!(
        stdout.contains("call-2: denied (tool_cap_exceeded)"),
        "{stdout}"
    );

    // (name, trace id, service, attributes) of every exported span; the guard
    // flushed them before the example exited.
    let mut spans = Vec::new();
    for body in bodies.lock().unwrap().iter() {
        let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Any::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                let attrs: std::collections::BTreeMap<String, String> = s
                    .attributes
                    .iter()
                    .filter_map(|a| match a.value.as_ref()?.value.as_ref()? {
                        Any::StringValue(v) => Some((a.key.clone(), v.clone())),
                        Any::IntValue(i) => Some((a.key.clone(), i.to_string())),
                        _ => None,
                    })
                    .collect();
                spans.push((s.name, s.trace_id, service.clone(), attrs));
            }
        }
    }
    let tools: Vec<_> = spans
        .iter()
        .filter(|s| s.0 == "execute_tool travel.book_hotel")
        .collect();
    assert_eq!(tools.len(), 2, "{spans:#?}");
    assert_ne!(tools[0].1, tools[1].1, "one trace per tool call");
    for (_, trace_id, service, attrs) in &tools {
        assert_eq!(service, "traced-agent");
        assert_eq!(attrs["gen_ai.operation.name"], "execute_tool");
        assert!(
            spans
                .iter()
                .any(|s| &s.1 == trace_id && s.0 == "POST verify"),
            "the verify request is in the call's trace: {spans:#?}"
        );
    }
    let outcomes: std::collections::BTreeSet<&str> = tools
        .iter()
        .map(|t| t.3["paybond.outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["allow", "deny"].into());
    for body in bodies.lock().unwrap().iter() {
        let key = gw.keys.agent.expose_secret().as_bytes();
        assert!(!body.windows(key.len()).any(|w| w == key));
    }
}

#[tokio::test]
async fn a_model_example_without_a_model_says_what_is_missing() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let out = example("openai_tool", &gw, None, dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("OPENAI_API_KEY"));
}

#[tokio::test]
async fn the_embedded_example_runs_its_own_tool_under_its_own_policy() {
    // No gateway, no settings: the engine runs in the example's process.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_embedded_custom_tool"));
    cmd.current_dir(dir.path())
        .env_remove("PAYBOND_GATEWAY_URL")
        .env_remove("PAYBOND_API_KEY")
        .kill_on_drop(true);
    let (stdout, _) = finished(cmd).await;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..4],
        [
            r#"12 USD: ran, {"bought":"cable","order":"ORD-1200"}"#,
            "60 USD: denied (tool_cap_exceeded), did not run",
            "30 USD: held (approval_threshold_exceeded)",
            r#"30 USD: approved, ran, {"bought":"chair","order":"ORD-3000"}"#,
        ],
        "{stdout}"
    );
    // The run's trace: two consumed calls, the deny and the hold in between.
    let consumed: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains("consumed"))
        .copied()
        .collect();
    assert_eq!(consumed.len(), 2, "{stdout}");
    assert!(consumed[1].contains("approval_token_accepted"), "{stdout}");
    // Nothing was written where it ran: the engine was in memory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn the_custom_orchestrator_runs_allows_holds_and_denies() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let (stdout, _) = finished(example("custom_orchestrator", &gw, None, dir.path())).await;
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("travel.search_hotels: ran"),
        "{stdout}"
    );
    assert!(lines[1].starts_with("travel.book_hotel: ran"), "{stdout}");
    assert!(
        lines[2].starts_with("travel.book_hotel: held for approval"),
        "{stdout}"
    );
    assert!(
        lines[3].starts_with("travel.book_hotel: denied"),
        "{stdout}"
    );
    let totals = totals(&stdout);
    assert_eq!(totals["consumed_cents"], 12_000);
    assert_eq!(totals["passthroughs"], 1);
    assert_eq!(
        (totals["holds"].clone(), totals["denies"].clone()),
        (json!(1), json!(1))
    );
}

#[tokio::test]
async fn wait_for_approval_runs_once_an_operator_approves() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = example("wait_for_approval", &gw, None, dir.path());
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();

    // The operator: wait for the hold, then approve it.
    let http = reqwest::Client::new();
    let operator = gw.keys.operator.expose_secret();
    let approval = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let list: Value = http
                .get(format!("{}/v1/approvals?state=pending", gw.url))
                .bearer_auth(operator)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if let Some(id) = list["approvals"][0]["approval_request_id"].as_str() {
                break id.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the example's call was held");
    let approved = http
        .post(format!("{}/v1/approvals/{approval}/approve", gw.url))
        .bearer_auth(operator)
        .json(&json!({"reason": "within the trip budget"}))
        .send()
        .await
        .unwrap();
    assert!(
        approved.status().is_success(),
        "{:?}",
        approved.text().await
    );

    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the example finished after the approval")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("approved and booked"), "{stdout}");
    let outcomes: Vec<Value> = traces(&stdout)
        .iter()
        .map(|t| t["outcome"].clone())
        .collect();
    assert_eq!(outcomes, [json!("hold"), json!("allow")], "{stdout}");
    assert_eq!(totals(&stdout)["consumed_cents"], 18_700);
}

#[tokio::test]
async fn the_mcp_server_guards_its_tools() {
    let gw = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let cmd = example("mcp_server", &gw, None, dir.path());
    let transport = TokioChildProcess::new(cmd.configure(|_| {})).unwrap();
    let client = ().serve(transport).await.unwrap();
    let names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(names, ["travel.book_hotel", "travel.search_hotels"]);

    let call = |cents: u64| {
        let mut params = CallToolRequestParams::new("travel.book_hotel");
        if let Value::Object(args) = json!({"hotel": "Harbor Inn", "amount_cents": cents}) {
            params = params.with_arguments(args);
        }
        params
    };
    let booked = client.call_tool(call(12_000)).await.unwrap();
    assert_ne!(booked.is_error, Some(true), "{booked:?}");
    assert!(format!("{booked:?}").contains("H-4001"), "{booked:?}");
    let refused = client.call_tool(call(25_000)).await.unwrap();
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    let body = refused.structured_content.unwrap();
    assert_eq!(body["status"], "blocked", "{body}");
    client.cancel().await.unwrap();
}
