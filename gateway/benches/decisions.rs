//! Decision throughput and latency: `cargo bench -p paybond-gateway --bench decisions`.
//!
//! - Over loopback HTTP at 1 and 16 concurrent clients: verify + complete per
//!   decision, next to a bare axum handler answering a fixed JSON body to the same
//!   two requests (the floor), measured in the same run.
//! - In process: `Engine::verify` + `Engine::complete` on the SQLite file store and
//!   on the in-memory store.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // a bench binary

use std::sync::Arc;
use std::time::{Duration, Instant};

use paybond_gateway::{Engine, EngineConfig, PolicyFile, Storage};
use paybond_middleware_core::CapabilityToken;
use paybond_middleware_core::wire::{
    CompleteRequest, Environment, Finalization, Principal, SandboxBootstrapRequest, VerifyRequest,
};
use uuid::Uuid;

const POLICY: &str = "version: 1\nname: bench\ndefault_deny: true\ntools:\n  bench.pay: {side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}\n";
const RUN_FOR: Duration = Duration::from_secs(3);

struct Setup {
    engine: Arc<Engine>,
    agent: Principal,
    agent_key: String,
    intent: Uuid,
    token: CapabilityToken,
}

fn setup(storage: Storage) -> Setup {
    let mut config = EngineConfig::new(storage);
    config.default_org_policy = None;
    config.default_tenant_policy = Some(PolicyFile {
        text: POLICY.into(),
        file: "bench.yaml".into(),
    });
    let engine = Arc::new(Engine::open(config).unwrap());
    let keys = engine.create_tenant("bench", Environment::Sandbox).unwrap();
    let agent = engine.authenticate(keys.agent.expose_secret()).unwrap();
    let b = engine
        .bootstrap_sandbox(
            &agent,
            &SandboxBootstrapRequest {
                operation: "bench.pay".into(),
                requested_spend_cents: 1_000_000_000_000,
                currency: None,
                evidence_schema: None,
                metadata: None,
                idempotency_key: None,
            },
        )
        .unwrap();
    Setup {
        engine,
        agent,
        agent_key: keys.agent.expose_secret().to_owned(),
        intent: b.intent_id,
        token: b.capability_token,
    }
}

fn verify_request(s: &Setup) -> VerifyRequest {
    VerifyRequest {
        intent_id: s.intent,
        token: s.token.clone(),
        operation: "bench.pay".into(),
        requested_spend_cents: 1,
        vendor_id: None,
        task_id: None,
        workflow_id: None,
        tool_call_id: None,
        tool_name: Some("bench.pay".into()),
        currency: None,
        agent_subject: None,
        approval_token: None,
        idempotency_key: None,
    }
}

struct Stats {
    per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    n: usize,
}

fn stats(mut lat: Vec<Duration>, elapsed: Duration) -> Stats {
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_micros() as u64;
    Stats {
        per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_us: at(0.50),
        p99_us: at(0.99),
        n: lat.len(),
    }
}

fn print(label: &str, s: &Stats) {
    println!(
        "{label:<44} {:>9.0} /s   p50 {:>6} µs   p99 {:>6} µs   (n = {})",
        s.per_sec, s.p50_us, s.p99_us, s.n
    );
}

/// `clients` tasks repeat `one` for [`RUN_FOR`]; latencies of every iteration.
async fn drive<F, Fut>(clients: usize, one: F) -> Stats
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let one = one.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while start.elapsed() < RUN_FOR {
                    let t = Instant::now();
                    one().await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    stats(all, start.elapsed())
}

async fn http(dir: &std::path::Path) {
    let s = Arc::new(setup(Storage::File(dir.join("http.db"))));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(paybond_gateway::server::serve(
        listener,
        s.engine.clone(),
        std::future::pending(),
    ));

    // The floor: the same two POSTs with JSON bodies, answered by a handler doing nothing.
    let floor = axum::Router::new().route(
        "/floor",
        axum::routing::post(|_body: axum::body::Bytes| async {
            (
                [("content-type", "application/json")],
                r#"{"allow":true,"decision_id":"00000000-0000-0000-0000-000000000000"}"#,
            )
        }),
    );
    let floor_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let floor_base = format!("http://{}", floor_listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(floor_listener, floor).await });

    let client = reqwest::Client::new();
    let verify_body = serde_json::to_vec(&verify_request(&s)).unwrap();
    let complete_body = serde_json::to_vec(&CompleteRequest {
        outcome: Finalization::Consumed,
        actual_spend_cents: Some(1),
    })
    .unwrap();
    for clients in [1, 16] {
        let (c, b, key, vb, cb) = (
            client.clone(),
            base.clone(),
            s.agent_key.clone(),
            verify_body.clone(),
            complete_body.clone(),
        );
        let gateway = drive(clients, move || {
            let (c, b, key, vb, cb) = (c.clone(), b.clone(), key.clone(), vb.clone(), cb.clone());
            async move {
                let r: serde_json::Value = c
                    .post(format!("{b}/verify"))
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(vb)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(r["allow"], true, "{r}");
                let id = r["decision_id"].as_str().unwrap();
                let done = c
                    .post(format!("{b}/v1/spend/decisions/{id}/complete"))
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(cb)
                    .send()
                    .await
                    .unwrap();
                assert!(done.status().is_success());
            }
        })
        .await;
        let (c, fb, vb, cb) = (
            client.clone(),
            floor_base.clone(),
            verify_body.clone(),
            complete_body.clone(),
        );
        let floor = drive(clients, move || {
            let (c, fb, vb, cb) = (c.clone(), fb.clone(), vb.clone(), cb.clone());
            async move {
                let r = c
                    .post(format!("{fb}/floor"))
                    .header("content-type", "application/json")
                    .body(vb)
                    .send()
                    .await
                    .unwrap();
                let _ = r.bytes().await.unwrap();
                let r = c
                    .post(format!("{fb}/floor"))
                    .header("content-type", "application/json")
                    .body(cb)
                    .send()
                    .await
                    .unwrap();
                let _ = r.bytes().await.unwrap();
            }
        })
        .await;
        print(
            &format!("http, {clients:>2} client(s): gateway verify+complete"),
            &gateway,
        );
        print(
            &format!("http, {clients:>2} client(s): bare axum floor (2 POSTs)"),
            &floor,
        );
        println!(
            "{:<44} {:>9.2}x throughput of the floor, p50 {:.1}x, p99 {:.1}x",
            "  ratio",
            gateway.per_sec / floor.per_sec,
            gateway.p50_us as f64 / floor.p50_us.max(1) as f64,
            gateway.p99_us as f64 / floor.p99_us.max(1) as f64
        );
    }
}

/// `threads` callers, each deciding in a loop on one shared engine.
fn in_process(label: &str, storage: Storage, threads: usize) {
    let s = Arc::new(setup(storage));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                let req = verify_request(&s);
                let complete = CompleteRequest {
                    outcome: Finalization::Consumed,
                    actual_spend_cents: Some(1),
                };
                let mut lat = Vec::new();
                while start.elapsed() < RUN_FOR {
                    let t = Instant::now();
                    let r = s.engine.verify(&s.agent, &req).unwrap();
                    s.engine
                        .complete(&s.agent, r.decision_id.unwrap(), &complete, None)
                        .unwrap();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let lat = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    print(label, &stats(lat, start.elapsed()));
}

fn main() {
    // `cargo bench --bench decisions -- in-process` (or `http`) runs one group only.
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let runs = |group: &str| only.as_deref().is_none_or(|o| o == group);
    let dir = tempfile::tempdir().unwrap();
    println!(
        "decisions = verify + complete(consumed); {RUN_FOR:?} per row; 2-worker tokio runtime for HTTP\n"
    );
    if runs("in-process") {
        for threads in [1, 16] {
            in_process(
                &format!("in process, SQLite file, {threads:>2} thread(s)"),
                Storage::File(dir.path().join(format!("engine-{threads}.db"))),
                threads,
            );
            in_process(
                &format!("in process, SQLite memory, {threads:>2} thread(s)"),
                Storage::Memory,
                threads,
            );
        }
    }
    if !runs("http") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(http(dir.path()));
}
