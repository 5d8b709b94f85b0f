//! OpenTelemetry export end to end: `paybond dev loop`, `paybond agent demo openai`
//! and `paybond agent demo mcp` (whose MCP server, a child process, runs the
//! guarded calls), the canonical scenario over HTTP, all export to an OTLP/HTTP receiver
//! on loopback, which decodes the protobuf payloads. Each guarded tool call is one
//! trace across the two processes, with the GenAI and `paybond.*` attributes, and
//! no key, token or argument value is in any exported byte.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;

/// What the receiver got: `(path, content type, body)` of each export.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

async fn receive(
    State(received): State<Received>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    received
        .lock()
        .unwrap()
        .push((uri.path().to_owned(), content_type, body.to_vec()));
    StatusCode::OK
}

/// An OTLP/HTTP receiver on a free loopback port: its base URL and what it got.
async fn receiver() -> (String, Received) {
    let received = Received::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(receive))
        .route("/v1/metrics", axum::routing::post(receive))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn otel(cmd: &mut Command, endpoint: &str) {
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test",
        )
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_TRACES_EXPORTER")
        .env_remove("OTEL_METRICS_EXPORTER");
}

fn start_gateway(dir: &Path, endpoint: &str) -> (Gateway, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paybond"));
    cmd.args(["dev", "loop", "--offline", "--port", "0"])
        .current_dir(dir)
        .env_remove("PAYBOND_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    otel(&mut cmd, endpoint);
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the gateway did not print `listening on`");
    (Gateway(child), url)
}

fn text(v: &Option<AnyValue>) -> Option<String> {
    match v.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .filter_map(|kv| Some((kv.key.clone(), text(&kv.value)?)))
        .collect()
}

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attrs: BTreeMap<String, String>,
}

fn spans(received: &Received) -> Vec<Span> {
    let mut out = Vec::new();
    for (path, _, body) in received.lock().unwrap().iter() {
        if path != "/v1/traces" {
            continue;
        }
        let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            let resource = attrs(&rs.resource.map(|r| r.attributes).unwrap_or_default());
            let service = resource.get("service.name").cloned().unwrap_or_default();
            assert_eq!(
                resource
                    .get("deployment.environment.name")
                    .map(String::as_str),
                Some("test"),
                "OTEL_RESOURCE_ATTRIBUTES is on the resource: {resource:?}"
            );
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Span {
                        service: service.clone(),
                        name: s.name,
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent: s.parent_span_id,
                        attrs: attrs(&s.attributes),
                    });
                }
            }
        }
    }
    out
}

/// The metric names the gateway exported, and the `paybond.outcome` values of
/// `paybond.decisions` with their counts.
fn metrics(received: &Received) -> (BTreeSet<String>, BTreeMap<String, u64>) {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let mut names = BTreeSet::new();
    let mut decisions = BTreeMap::new();
    for (path, _, body) in received.lock().unwrap().iter() {
        if path != "/v1/metrics" {
            continue;
        }
        let req = ExportMetricsServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for rm in req.resource_metrics {
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    names.insert(m.name.clone());
                    if m.name == "paybond.decisions"
                        && let Some(Data::Sum(sum)) = &m.data
                    {
                        // Cumulative: the latest export holds the totals.
                        let mut now = BTreeMap::new();
                        for p in &sum.data_points {
                            let a = attrs(&p.attributes);
                            let n = match p.value {
                                Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(i)) => u64::try_from(i).unwrap(),
                                _ => 0,
                            };
                            *now.entry(a["paybond.outcome"].clone()).or_insert(0) += n;
                        }
                        decisions = now;
                    }
                }
            }
        }
    }
    (names, decisions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_is_one_trace_across_the_agent_and_the_gateway() {
    let (endpoint, received) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, url) = start_gateway(dir.path(), &endpoint);

    let demo_dir = dir.path().to_owned();
    let demo_endpoint = endpoint.clone();
    let url_for_mcp = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_paybond"));
        cmd.args([
            "agent",
            "demo",
            "openai",
            "--gateway",
            &url,
            "--format",
            "json",
        ])
        .current_dir(&demo_dir)
        .env_remove("OPENAI_API_KEY")
        .env_remove("PAYBOND_GATEWAY_URL");
        otel(&mut cmd, &demo_endpoint);
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"passed\":true"), "{stdout}");

    // The MCP demo: the guarded calls run in its MCP server, a child process,
    // which exports as well.
    let mcp_dir = dir.path().to_owned();
    let mcp_endpoint = endpoint.clone();
    let mcp_url = url_for_mcp.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_paybond"));
        cmd.args([
            "agent",
            "demo",
            "mcp",
            "--gateway",
            &mcp_url,
            "--format",
            "json",
        ])
        .current_dir(&mcp_dir)
        .env_remove("PAYBOND_GATEWAY_URL");
        otel(&mut cmd, &mcp_endpoint);
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The gateway exports on its own schedule: wait for its decision spans and
    // its metrics.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = spans(&received);
        let verifies = all.iter().filter(|s| s.name == "paybond.verify").count();
        let (names, decisions) = metrics(&received);
        let mcp_tools = all
            .iter()
            .filter(|s| s.service == "paybond-mcp-server" && s.name.starts_with("execute_tool "))
            .count();
        if verifies >= 10
            && mcp_tools >= 5
            && names.contains("paybond.approvals.pending")
            && decisions.values().sum::<u64>() >= 10
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no export in time: {verifies} verify spans, {mcp_tools} MCP tool spans, \
             metrics {names:?} {decisions:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = spans(&received);

    // The agent's tool calls: one `execute_tool` span each, a trace each.
    let tools: Vec<&Span> = all
        .iter()
        .filter(|s| s.service == "paybond-agent" && s.name.starts_with("execute_tool "))
        .collect();
    assert_eq!(tools.len(), 5, "{tools:#?}");
    let traces: BTreeSet<&Vec<u8>> = tools.iter().map(|s| &s.trace_id).collect();
    assert_eq!(traces.len(), 5, "one trace per tool call");
    for t in &tools {
        let a = &t.attrs;
        assert_eq!(a["gen_ai.operation.name"], "execute_tool");
        assert_eq!(t.name, format!("execute_tool {}", a["gen_ai.tool.name"]));
        assert!(!a["gen_ai.tool.call.id"].is_empty());
        assert!(a.contains_key("paybond.outcome"), "{a:?}");
        assert!(t.parent.is_empty(), "a tool call is the root of its trace");
    }
    let by_call: BTreeMap<&str, &Span> = tools
        .iter()
        .map(|s| (s.attrs["gen_ai.tool.call.id"].as_str(), *s))
        .collect();
    assert_eq!(
        by_call["c1"].attrs["gen_ai.tool.name"],
        "travel.search_hotels"
    );
    assert_eq!(by_call["c1"].attrs["paybond.outcome"], "passthrough");
    let c2 = &by_call["c2"].attrs;
    assert_eq!(
        (
            c2["paybond.outcome"].as_str(),
            c2["paybond.amount_cents"].as_str(),
            c2["paybond.currency"].as_str(),
            c2["paybond.finalization"].as_str(),
        ),
        ("allow", "12000", "usd", "consumed")
    );
    assert!(c2.contains_key("paybond.decision_id") && c2.contains_key("paybond.intent_id"));
    assert!(c2.contains_key("paybond.policy_version"));
    assert_eq!(by_call["c3"].attrs["paybond.outcome"], "allow");
    assert_eq!(
        by_call["c3"].attrs["paybond.reason_code"],
        "approval_token_accepted"
    );
    let c4 = &by_call["c4"].attrs;
    assert_eq!(
        (
            c4["paybond.outcome"].as_str(),
            c4["paybond.reason_code"].as_str()
        ),
        ("deny", "tool_cap_exceeded")
    );
    let c5 = &by_call["c5"].attrs;
    assert_eq!(
        (
            c5["paybond.finalization"].as_str(),
            c5["error.type"].as_str()
        ),
        ("released", "tool_failed")
    );

    // The MCP server's calls are traced across to the gateway as well.
    let mcp: Vec<&Span> = all
        .iter()
        .filter(|s| s.service == "paybond-mcp-server" && s.name.starts_with("execute_tool "))
        .collect();
    assert_eq!(mcp.len(), 5, "{mcp:#?}");
    let crossing = mcp
        .iter()
        .filter(|t| {
            all.iter()
                .any(|s| s.trace_id == t.trace_id && s.service == "paybond-gateway")
        })
        .count();
    assert_eq!(
        crossing, 4,
        "the four bookings reach the gateway in their traces"
    );

    // Each booking's trace crosses into the gateway: the server span's parent is
    // the agent's client span, and the decision is recorded there.
    for id in ["c2", "c3", "c4", "c5"] {
        let tool = by_call[id];
        let trace: Vec<&Span> = all.iter().filter(|s| s.trace_id == tool.trace_id).collect();
        let clients: BTreeSet<&Vec<u8>> = trace
            .iter()
            .filter(|s| s.service == "paybond-agent" && s.name.starts_with("POST "))
            .map(|s| &s.span_id)
            .collect();
        let servers: Vec<&&Span> = trace
            .iter()
            .filter(|s| s.service == "paybond-gateway" && s.name == "POST /verify")
            .collect();
        assert!(
            !servers.is_empty(),
            "{id}: no gateway span in its trace: {trace:#?}"
        );
        for s in &servers {
            assert!(
                clients.contains(&s.parent),
                "{id}: the server span continues the agent's request span"
            );
            assert_eq!(s.attrs["http.route"], "/verify");
        }
        let verify = trace
            .iter()
            .find(|s| s.service == "paybond-gateway" && s.name == "paybond.verify")
            .unwrap_or_else(|| panic!("{id}: no decision span"));
        assert_eq!(
            verify.attrs["paybond.intent_id"],
            tool.attrs["paybond.intent_id"]
        );
        assert_eq!(verify.attrs["gen_ai.tool.call.id"], id);
        assert!(verify.attrs.contains_key("paybond.outcome"));
    }
    let settled = all
        .iter()
        .find(|s| s.name == "paybond.complete" && s.trace_id == by_call["c2"].trace_id)
        .expect("the settlement is in the call's trace");
    assert_eq!(settled.attrs["paybond.finalization"], "consumed");

    // Metrics, next to /metrics.
    let (names, decisions) = metrics(&received);
    for name in [
        "paybond.decisions",
        "paybond.decision.duration",
        "paybond.reservations.open",
        "paybond.approvals.pending",
    ] {
        assert!(names.contains(name), "{name} not exported: {names:?}");
    }
    // Two canonical runs: each 3 allows, a hold, a deny.
    assert_eq!(decisions.get("hold"), Some(&2), "{decisions:?}");
    assert_eq!(decisions.get("deny"), Some(&2), "{decisions:?}");
    assert_eq!(decisions.get("allow"), Some(&6), "{decisions:?}");

    // No secret and no argument value in any exported byte.
    let env = std::fs::read_to_string(dir.path().join(".env.local")).unwrap();
    let mut forbidden: Vec<String> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.ends_with("_KEY"))
        .map(|(_, v)| v.trim_matches('"').to_owned())
        .collect();
    assert_eq!(forbidden.len(), 3, "{env}");
    forbidden.extend(
        [
            "Lisbon",
            "Harbor Inn",
            "Bay Suites",
            "Grand Palace",
            "Dock Hostel",
            "Bearer",
        ]
        .map(str::to_owned),
    );
    for (path, content_type, body) in received.lock().unwrap().iter() {
        assert_eq!(content_type, "application/x-protobuf", "{path}");
        for secret in &forbidden {
            assert!(
                !body.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "`{secret}` was exported to {path}"
            );
        }
    }
    // Tokens (capability, approval) are long base64 strings: no run of 64 such
    // characters is in any export (a UUID is 36, a trace id is raw bytes).
    for (path, _, body) in received.lock().unwrap().iter() {
        let longest = body
            .split(|b| !(b.is_ascii_alphanumeric() || b"_+=-".contains(b)))
            .map(<[u8]>::len)
            .max()
            .unwrap_or(0);
        assert!(longest < 64, "a token-like string was exported to {path}");
    }
    // Nor is any attribute named for one.
    for s in &all {
        for (k, v) in &s.attrs {
            assert!(
                v.len() < 100 && !k.contains("token"),
                "{}: attribute {k} = {v}",
                s.name
            );
        }
    }
}

#[test]
fn a_protocol_this_build_cannot_export_stops_the_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_paybond"))
        .args(["whoami", "--format", "json"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env_remove("OTEL_SDK_DISABLED")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["error"]["code"], "invalid_telemetry_settings");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("OTEL_EXPORTER_OTLP_PROTOCOL: `grpc`"),
        "{v}"
    );
}
