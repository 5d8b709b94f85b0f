//! Decision throughput and latency: `cargo bench -p paybond-gateway --bench decisions`.
//!
//! - In process (`-- in-process`): `Engine::verify` + `Engine::complete` by 1, 16 and 64
//!   threads on the SQLite file store (durable) and the in-memory store; then
//!   `Engine::verify` alone by one thread in memory (the CPU cost of a decision) and by
//!   16 and 64 threads on the file store, and by 64 async tasks (verify alone, then
//!   with complete; verify alone by 256; then verify alone with an idempotency key
//!   each, as the layer sends) through the engine's async calls; then verify alone under
//!   rolling caps and an hourly call limit, in memory by one thread and on a file
//!   by 64 async tasks.
//! - Over loopback HTTP (`-- http`), 16 connections, then 128: the server's `/healthz`
//!   (the floor), verify alone, and verify + complete, in the same run.
//! - PostgreSQL (`-- postgres`, on `PAYBOND_BENCH_DATABASE_URL` or
//!   `PAYBOND_TEST_DATABASE_URL`): in process, then over HTTP one replica on SQLite
//!   (the yardstick), one on PostgreSQL (16 connections), three on one database
//!   (32 connections), one tenant, then 100 tenants; and the fleet goals' ratios.
//! - Restart (`-- restart`): a child process decides on a SQLite file until it has
//!   acknowledged 1,000,000 decisions and is killed with SIGKILL; then the time to
//!   open the engine on the file and answer the first decision.
//! - For a profiler (`perf record … decisions-<hash> profile`): `-- profile` repeats
//!   verify alone by one thread in memory, `-- profile-file` by 16 threads on a file,
//!   `-- profile-async` by 64 async tasks on a file.
//!
//! Each async and HTTP decision row is followed by the store's figures over the
//! row (from `/metrics`, summed over a fleet's replicas): operations per group
//! commit, and the average commit and fsync; then the machine's cores busy over
//! the row and its CPU time per request (from `/proc/stat`, every process on the
//! machine counted, PostgreSQL's included).
//!
//! The bench allocates through mimalloc, as the `paybond` binary does: with the
//! system allocator (glibc) a decision on the file store spends about a fifth of
//! the writer's time in `malloc` and `free`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // a bench binary

use std::sync::Arc;
use std::time::{Duration, Instant};

use paybond_gateway::{Engine, EngineConfig, PolicyFile, Storage};
use paybond_middleware_core::CapabilityToken;
use paybond_middleware_core::wire::{
    CompleteRequest, Environment, EvidenceRequest, Finalization, Principal,
    SandboxBootstrapRequest, VerifyRequest,
};
use uuid::Uuid;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const POLICY: &str = "version: 1\nname: bench\ndefault_deny: true\ntools:\n  bench.pay: {side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}\n";
/// The same tool under the canonical scenario's kinds of controls: a tenant day
/// cap, a per-agent hourly cap and an hourly call limit, none of them reached in
/// a run.
const CAPPED_POLICY: &str = "version: 1\nname: bench\ndefault_deny: true\ntools:\n  bench.pay: {side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}\nspend_controls:\n  tools:\n    bench.pay: {limit_per_hour: 500000}\n  caps:\n    - {scope: tenant, window: day, limit_cents: 100000000000}\n    - {scope: agent, window: hour, limit_cents: 100000000000}\n";
const RUN_FOR: Duration = Duration::from_secs(3);

struct Setup {
    engine: Arc<Engine>,
    agent: Principal,
    agent_key: String,
    intent: Uuid,
    token: CapabilityToken,
}

fn bench_config(storage: Storage) -> EngineConfig {
    bench_config_with(storage, POLICY)
}

fn bench_config_with(storage: Storage, policy: &str) -> EngineConfig {
    let mut config = EngineConfig::new(storage);
    config.default_org_policy = None;
    config.default_tenant_policy = Some(PolicyFile {
        text: policy.into(),
        file: "bench.yaml".into(),
    });
    config
}

fn setup(storage: Storage) -> Setup {
    setup_with(storage, POLICY)
}

fn setup_with(storage: Storage, policy: &str) -> Setup {
    let config = bench_config_with(storage, policy);
    tenant(Arc::new(Engine::open(config).unwrap()), "bench")
}

/// Runs `f` to its end on a thread and runtime of its own: the setup's and the
/// figures' calls, outside the measured loops, from any thread.
fn block_on<F>(f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f)
        })
        .join()
        .unwrap()
    })
}

/// A tenant named `name` on `engine`, with a funded intent.
fn tenant(engine: Arc<Engine>, name: &str) -> Setup {
    let keys = block_on(engine.create_tenant(name, Environment::Sandbox)).unwrap();
    let agent = block_on(engine.authenticate(keys.agent.expose_secret())).unwrap();
    let b = block_on(engine.bootstrap_sandbox(
        &agent,
        &SandboxBootstrapRequest {
            operation: "bench.pay".into(),
            requested_spend_cents: 1_000_000_000_000,
            currency: None,
            evidence_schema: None,
            metadata: None,
            idempotency_key: None,
        },
    ))
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
        tool_name: Some("bench.pay".into()),
        ..VerifyRequest::new(s.intent, s.token.clone(), "bench.pay", 1)
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

async fn serve(engine: Arc<Engine>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(paybond_gateway::server::serve(
        listener,
        engine,
        std::future::pending(),
    ));
    base
}

/// `POST /verify` with `body` as `key`; its answer, which must be an allow.
async fn post_verify(
    c: &reqwest::Client,
    base: &str,
    key: &str,
    body: Vec<u8>,
) -> serde_json::Value {
    let r: serde_json::Value = c
        .post(format!("{base}/verify"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["allow"], true, "{r}");
    r
}

/// Over loopback HTTP, `clients` connections spread over `bases` (one per replica)
/// and over `tenants` (each request verifies for the next of them): verify alone.
/// With `affine`, each tenant's requests go to one replica (tenant `i` to replica
/// `i` modulo their number), as a load balancer routing by tenant sends them.
async fn http_tenants(
    label: &str,
    tenants: &[Setup],
    bases: Vec<String>,
    clients: usize,
    affine: bool,
) -> Stats {
    let client = reqwest::Client::new();
    let bodies: Vec<(String, Vec<u8>)> = tenants
        .iter()
        .map(|t| {
            (
                t.agent_key.clone(),
                serde_json::to_vec(&verify_request(t)).unwrap(),
            )
        })
        .collect();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let before = StoreFigures::of_servers(&client, &bases).await;
    let (c, b) = (client.clone(), bases.clone());
    let stats = drive(clients, move || {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (key, body) = bodies[n % bodies.len()].clone();
        let replica = if affine { n % bodies.len() } else { n };
        let (c, base) = (c.clone(), b[replica % b.len()].clone());
        async move {
            post_verify(&c, &base, &key, body).await;
        }
    })
    .await;
    let after = StoreFigures::of_servers(&client, &bases).await;
    print(&format!("http {label}: verify"), &stats);
    after.since(&before).print(&stats);
    stats
}

/// What [`http`] measured.
struct HttpRun {
    health: Stats,
    alone: Stats,
    keyed: Stats,
}

/// Over loopback HTTP, `clients` connections spread over `bases` (one per replica):
/// `/healthz`, verify alone, and verify + complete.
async fn http(label: &str, s: &Setup, bases: Vec<String>, clients: usize) -> HttpRun {
    let client = reqwest::Client::new();
    let verify_body = serde_json::to_vec(&verify_request(s)).unwrap();
    let complete_body = serde_json::to_vec(&CompleteRequest {
        outcome: Finalization::Consumed,
        actual_spend_cents: Some(1),
    })
    .unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pick = move |bases: &[String]| {
        bases[next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % bases.len()].clone()
    };

    let (c, b, p) = (client.clone(), bases.clone(), pick.clone());
    let health = drive(clients, move || {
        let (c, base) = (c.clone(), p(&b));
        async move {
            let r = c.get(format!("{base}/healthz")).send().await.unwrap();
            assert!(r.status().is_success());
            let _ = r.bytes().await.unwrap();
        }
    })
    .await;

    let keyed_request = verify_request(s);
    // The layer's evidence: the tool's cost, and the decision it is for.
    let evidence = |decision: &str| {
        serde_json::to_vec(&EvidenceRequest {
            payload: Some(serde_json::json!({"status": "completed", "cost_cents": 1})),
            operation: Some("bench.pay".into()),
            metadata: Some(serde_json::json!({"decision_id": decision})),
            ..Default::default()
        })
        .unwrap()
    };
    let intent = s.intent;
    let verify = |complete: bool, keyed: bool| {
        let (c, b, p, key, vb, cb, kr) = (
            client.clone(),
            bases.clone(),
            pick.clone(),
            s.agent_key.clone(),
            verify_body.clone(),
            complete_body.clone(),
            keyed_request.clone(),
        );
        move || {
            let (c, base, key, cb) = (c.clone(), p(&b), key.clone(), cb.clone());
            // With `keyed`, a new idempotency key per call, as the layer sends one.
            let vb = if keyed {
                let mut req = kr.clone();
                req.idempotency_key = Some(paybond_middleware_core::new_idempotency_key());
                serde_json::to_vec(&req).unwrap()
            } else {
                vb.clone()
            };
            async move {
                let r = post_verify(&c, &base, &key, vb).await;
                if complete {
                    let id = r["decision_id"].as_str().unwrap();
                    let done = c
                        .post(format!("{base}/v1/spend/decisions/{id}/complete"))
                        .bearer_auth(&key)
                        .header("content-type", "application/json")
                        .body(cb)
                        .send()
                        .await
                        .unwrap();
                    assert!(done.status().is_success());
                }
            }
        }
    };
    let at_start = StoreFigures::of_servers(&client, &bases).await;
    let alone = drive(clients, verify(false, false)).await;
    let after_alone = StoreFigures::of_servers(&client, &bases).await;
    let keyed = drive(clients, verify(false, true)).await;
    let after_keyed = StoreFigures::of_servers(&client, &bases).await;
    let both = drive(clients, verify(true, false)).await;
    let after_both = StoreFigures::of_servers(&client, &bases).await;
    // What the layer sends for each guarded call: a keyed verify, the tool's
    // evidence and the completion, each with its idempotency key.
    let (c, b, p, key, kr, eb, cb) = (
        client.clone(),
        bases.clone(),
        pick.clone(),
        s.agent_key.clone(),
        keyed_request.clone(),
        evidence,
        complete_body.clone(),
    );
    let guarded = drive(clients, move || {
        let (c, base, key, cb) = (c.clone(), p(&b), key.clone(), cb.clone());
        let mut req = kr.clone();
        req.idempotency_key = Some(paybond_middleware_core::new_idempotency_key());
        let vb = serde_json::to_vec(&req).unwrap();
        async move {
            let r = post_verify(&c, &base, &key, vb).await;
            let id = r["decision_id"].as_str().unwrap();
            for (path, body, what) in [
                (
                    format!("/v1/sandbox/guardrails/{intent}/evidence"),
                    eb(id),
                    "evidence",
                ),
                (format!("/v1/spend/decisions/{id}/complete"), cb, "complete"),
            ] {
                let done = c
                    .post(format!("{base}{path}"))
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("{id}:{what}"))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(done.status().is_success(), "{what}: {}", done.status());
            }
        }
    })
    .await;
    let after_guarded = StoreFigures::of_servers(&client, &bases).await;
    print(&format!("http {label}: GET /healthz"), &health);
    print(&format!("http {label}: verify"), &alone);
    after_alone.since(&at_start).print(&alone);
    print(&format!("http {label}: verify, keyed"), &keyed);
    after_keyed.since(&after_alone).print(&keyed);
    print(&format!("http {label}: verify + complete"), &both);
    after_both.since(&after_keyed).print(&both);
    print(
        &format!("http {label}: guarded call (verify, evidence, complete)"),
        &guarded,
    );
    after_guarded.since(&after_both).print(&guarded);
    println!(
        "{:<44} {:>9.2}x the /healthz throughput (verify alone)\n",
        "  ratio",
        alone.per_sec / health.per_sec,
    );
    HttpRun {
        health,
        alone,
        keyed,
    }
}

/// A ratio of the fleet goals, with its goal.
fn ratio(label: &str, value: f64, goal: &str) {
    println!("{label:<44} {value:>9.2}x   (goal {goal})");
}

/// `threads` callers, each deciding in a loop on one shared engine (and
/// completing each decision, unless `verify_only`).
fn in_process(label: &str, storage: Storage, threads: usize, verify_only: bool) {
    in_process_on(label, Arc::new(setup(storage)), threads, verify_only, false);
}

/// With `keyed`, every verify carries a new idempotency key, as the layer sends one.
fn in_process_on(label: &str, s: Arc<Setup>, threads: usize, verify_only: bool, keyed: bool) {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                // A caller of its own thread: it waits for each answer there.
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let mut req = verify_request(&s);
                let complete = CompleteRequest {
                    outcome: Finalization::Consumed,
                    actual_spend_cents: Some(1),
                };
                let mut lat = Vec::new();
                while start.elapsed() < RUN_FOR {
                    let t = Instant::now();
                    if keyed {
                        req.idempotency_key = Some(paybond_middleware_core::new_idempotency_key());
                    }
                    let r = rt
                        .block_on(s.engine.verify(s.agent.clone(), req.clone()))
                        .unwrap();
                    assert!(r.allow, "{:?}", r.code);
                    if !verify_only {
                        rt.block_on(s.engine.complete(
                            s.agent.clone(),
                            r.decision_id.unwrap(),
                            complete.clone(),
                            None,
                        ))
                        .unwrap();
                    }
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

/// `tasks` async callers on a 2-worker runtime, each deciding in a loop through
/// the engine's async calls (which queue to the writer and hold no thread while
/// they wait), completing each decision unless `verify_only`; with `keyed`, each
/// verify carries a new idempotency key.
fn in_process_async(label: &str, s: Arc<Setup>, tasks: usize, verify_only: bool, keyed: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let engine = s.engine.clone();
    let before = StoreFigures::of(&engine);
    let stats = rt.block_on(drive(tasks, move || {
        let s = s.clone();
        async move {
            let mut req = verify_request(&s);
            if keyed {
                req.idempotency_key = Some(paybond_middleware_core::new_idempotency_key());
            }
            let r = s.engine.verify(s.agent.clone(), req).await.unwrap();
            assert!(r.allow, "{:?}", r.code);
            if !verify_only {
                s.engine
                    .complete(
                        s.agent.clone(),
                        r.decision_id.unwrap(),
                        CompleteRequest {
                            outcome: Finalization::Consumed,
                            actual_spend_cents: Some(1),
                        },
                        None,
                    )
                    .await
                    .unwrap();
            }
        }
    }));
    print(label, &stats);
    StoreFigures::of(&engine).since(&before).print(&stats);
}

/// The store's commit figures from `/metrics` (sums and counts so far), and the
/// machine's CPU time so far (every process: a fleet's PostgreSQL server too).
#[derive(Default)]
struct StoreFigures {
    operations: f64,
    commits: f64,
    commit_seconds: f64,
    fsyncs: f64,
    fsync_seconds: f64,
    cpu: MachineCpu,
}

/// The machine's CPU time so far, from `/proc/stat` (Linux; zero elsewhere).
#[derive(Default, Clone, Copy)]
struct MachineCpu {
    /// Seconds of all cores busy (user, nice, system, irq, softirq).
    busy: f64,
    /// Seconds of all cores, busy or idle.
    all: f64,
}

impl MachineCpu {
    fn now() -> Self {
        let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
            return Self::default();
        };
        let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
            return Self::default();
        };
        // user nice system idle iowait irq softirq steal, in clock ticks (USER_HZ,
        // 100 a second on Linux).
        let ticks: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|t| t.parse().ok())
            .collect();
        let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks[..] else {
            return Self::default();
        };
        Self {
            busy: (user + nice + system + irq + softirq) / 100.0,
            all: (user + nice + system + idle + iowait + irq + softirq + steal) / 100.0,
        }
    }
}

impl StoreFigures {
    fn of(engine: &Arc<Engine>) -> Self {
        Self {
            cpu: MachineCpu::now(),
            ..Self::read(&block_on(engine.render_metrics()).unwrap())
        }
    }

    /// Summed over the servers (the replicas of a fleet), from their `/metrics`.
    async fn of_servers(client: &reqwest::Client, bases: &[String]) -> Self {
        let mut sum = Self::default();
        for base in bases {
            let text = client
                .get(format!("{base}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            sum = sum.with(&Self::read(&text), |a, b| a + b);
        }
        Self {
            cpu: MachineCpu::now(),
            ..sum
        }
    }

    fn read(text: &str) -> Self {
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .map_or(0.0, |v| v.parse().unwrap())
        };
        Self {
            operations: value("paybond_store_commit_operations_sum"),
            commits: value("paybond_store_commit_operations_count"),
            commit_seconds: value("paybond_store_commit_duration_seconds_sum"),
            fsyncs: value("paybond_store_fsync_duration_seconds_count"),
            fsync_seconds: value("paybond_store_fsync_duration_seconds_sum"),
            cpu: MachineCpu::default(),
        }
    }

    fn since(&self, before: &Self) -> Self {
        self.with(before, |a, b| a - b)
    }

    /// Each figure of `self` combined with the same of `other`.
    fn with(&self, other: &Self, f: impl Fn(f64, f64) -> f64) -> Self {
        Self {
            operations: f(self.operations, other.operations),
            commits: f(self.commits, other.commits),
            commit_seconds: f(self.commit_seconds, other.commit_seconds),
            fsyncs: f(self.fsyncs, other.fsyncs),
            fsync_seconds: f(self.fsync_seconds, other.fsync_seconds),
            cpu: MachineCpu {
                busy: f(self.cpu.busy, other.cpu.busy),
                all: f(self.cpu.all, other.cpu.all),
            },
        }
    }

    /// What a decision waited for besides its own work: its group's commit and
    /// the fsync that made it durable (averages over the row).
    /// (PostgreSQL has no fsync of its own here: the server's is in its commit.)
    /// Then how busy the machine's cores were over the row, and its CPU time per
    /// request of `row` (the load generator's included): where this is near the
    /// cores' count, the row is bound by CPU, not by waiting.
    fn print(&self, row: &Stats) {
        let fsync = if self.fsyncs > 0.0 {
            format!(", fsync {:.2} ms", self.fsync_seconds * 1e3 / self.fsyncs)
        } else {
            String::new()
        };
        println!(
            "  store: {:.0} operations per commit, commit {:.2} ms{fsync}",
            self.operations / self.commits.max(1.0),
            self.commit_seconds * 1e3 / self.commits.max(1.0),
        );
        if self.cpu.all > 0.0 {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let seconds = self.cpu.all / cores;
            println!(
                "  machine: {:.2} of {cores:.0} cores busy, {:.0} µs of CPU per request",
                self.cpu.busy / seconds.max(1e-9),
                self.cpu.busy * 1e6 / (row.n.max(1) as f64),
            );
        }
    }
}

/// Decisions in the store before [`restart`] kills its writer.
const RESTART_DECISIONS: u64 = 1_000_000;

/// `-- restart`: a child process decides (verify alone, 64 async tasks) on a
/// SQLite file until it has acknowledged [`RESTART_DECISIONS`], and is killed
/// with SIGKILL while it goes on; then the time to open the engine on the file
/// and to answer the first decision, and the check that every decision the
/// child acknowledged is in the store.
fn restart(dir: &std::path::Path) {
    use std::io::BufRead;
    let path = dir.join("restart.db");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["restart-load", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let mut fields = first.split(' ');
    let (key, intent, token) = (
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().parse::<Uuid>().unwrap(),
        CapabilityToken::new(fields.next().unwrap()),
    );
    let loading = Instant::now();
    let mut acknowledged = 0;
    for line in lines {
        acknowledged = line.unwrap().parse::<u64>().unwrap();
        if acknowledged >= RESTART_DECISIONS {
            break;
        }
    }
    let loaded = loading.elapsed();
    let writer_resident = resident(child.id());
    // `Child::kill` is SIGKILL: the writer dies wherever it is, mid-group.
    child.kill().unwrap();
    child.wait().unwrap();
    let size: u64 = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();

    let t = Instant::now();
    let engine = Arc::new(Engine::open(bench_config(Storage::File(path.clone()))).unwrap());
    let opened = t.elapsed();
    let agent = block_on(engine.authenticate(&key)).unwrap();
    let s = Setup {
        engine,
        agent,
        agent_key: key,
        intent,
        token,
    };
    let r = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(s.engine.verify(s.agent.clone(), verify_request(&s)))
        .unwrap();
    assert!(r.allow, "{:?}", r.code);
    let serving = t.elapsed();
    let stored: u64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM decisions", [], |r| r.get(0))
        .unwrap();
    println!(
        "restart after SIGKILL, SQLite file: {acknowledged} decisions acknowledged in {:.0} s, \
         {stored} stored (the first answer after the restart included), {:.0} MiB on disk",
        loaded.as_secs_f64(),
        size as f64 / (1024.0 * 1024.0)
    );
    println!(
        "  engine open                     {:>8.0} ms",
        opened.as_secs_f64() * 1e3
    );
    println!(
        "  first decision answered         {:>8.0} ms   (goal <= 2,000)",
        serving.as_secs_f64() * 1e3
    );
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "  resident, the writer before the kill ({acknowledged} open reservations) {:>6.0} MiB   (goal <= 512)",
        mib(writer_resident)
    );
    println!(
        "  resident, this process after the restart  {:>6.0} MiB",
        mib(resident(std::process::id()))
    );
    // Every decision acknowledged before the kill is there (the count read
    // last is a lower bound of what was acknowledged), and the one after it.
    assert!(
        stored > acknowledged,
        "{stored} stored, {acknowledged} acknowledged"
    );
}

/// Resident memory of process `pid`, in bytes (Linux: `/proc/<pid>/statm`).
fn resident(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// The child of [`restart`]: prints the agent's key, the intent and its token,
/// then decides until it is killed, printing how many decisions were
/// acknowledged every 50 ms.
fn restart_load(path: &std::path::Path) {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    let s = Arc::new(setup(Storage::File(path.to_owned())));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} {} {}",
        s.agent_key,
        s.intent,
        s.token.expose_secret()
    )
    .unwrap();
    out.flush().unwrap();
    drop(out);
    let acknowledged = Arc::new(AtomicU64::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..64 {
            let (s, acknowledged) = (s.clone(), acknowledged.clone());
            tokio::spawn(async move {
                loop {
                    let r = s
                        .engine
                        .verify(s.agent.clone(), verify_request(&s))
                        .await
                        .unwrap();
                    assert!(r.allow, "{:?}", r.code);
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut out = std::io::stdout().lock();
            // The parent stops reading (and kills this process) past its count.
            if writeln!(out, "{}", acknowledged.load(Ordering::SeqCst))
                .and_then(|()| out.flush())
                .is_err()
            {
                std::future::pending::<()>().await;
            }
        }
    });
}

fn main() {
    // `cargo bench --bench decisions -- in-process` (or `http`) runs one group only.
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let runs = |group: &str| only.as_deref().is_none_or(|o| o == group);
    if only.as_deref() == Some("restart-load") {
        // The child of `-- restart` (see [`restart`]).
        let path = std::env::args()
            .skip(2)
            .find(|a| !a.starts_with('-'))
            .unwrap();
        restart_load(std::path::Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    println!(
        "decisions = verify + complete(consumed); {RUN_FOR:?} per row; 2-worker tokio runtime for HTTP\n"
    );
    if only.as_deref() == Some("profile") {
        // One caller on the in-memory store, verify alone: the CPU cost of a decision,
        // for a profiler (`perf record`) to look at without fsync waits.
        let s = Arc::new(setup(Storage::Memory));
        for _ in 0..3 {
            in_process_on(
                "verify alone, SQLite memory,  1 thread(s)",
                s.clone(),
                1,
                true,
                false,
            );
        }
        return;
    }
    if only.as_deref() == Some("profile-capped") {
        let s = Arc::new(setup_with(Storage::Memory, CAPPED_POLICY));
        for _ in 0..3 {
            in_process_on(
                "capped: verify alone, SQLite memory,  1 thread(s)",
                s.clone(),
                1,
                true,
                false,
            );
        }
        return;
    }
    if only.as_deref() == Some("profile-async") {
        let s = Arc::new(setup(Storage::File(dir.path().join("profile-async.db"))));
        for _ in 0..3 {
            in_process_async(
                "verify alone, async, SQLite file, 64 tasks",
                s.clone(),
                64,
                true,
                false,
            );
        }
        return;
    }
    if only.as_deref() == Some("profile-file") {
        let s = Arc::new(setup(Storage::File(dir.path().join("profile.db"))));
        for _ in 0..3 {
            in_process_on(
                "verify alone, SQLite file, 16 thread(s)",
                s.clone(),
                16,
                true,
                false,
            );
        }
        return;
    }
    if only.as_deref() == Some("restart") {
        restart(dir.path());
        return;
    }
    if runs("in-process") {
        for threads in [1, 16, 64] {
            in_process(
                &format!("in process, SQLite file, {threads:>2} thread(s)"),
                Storage::File(dir.path().join(format!("engine-{threads}.db"))),
                threads,
                false,
            );
            in_process(
                &format!("in process, SQLite memory, {threads:>2} thread(s)"),
                Storage::Memory,
                threads,
                false,
            );
        }
        in_process(
            "verify alone, SQLite memory,  1 thread(s)",
            Storage::Memory,
            1,
            true,
        );
        for threads in [16, 64] {
            in_process(
                &format!("verify alone, SQLite file, {threads:>2} thread(s)"),
                Storage::File(dir.path().join(format!("verify-{threads}.db"))),
                threads,
                true,
            );
        }
        for (verify_only, what) in [(true, "verify alone"), (false, "verify + complete")] {
            in_process_async(
                &format!("{what}, async, SQLite file, 64 tasks"),
                Arc::new(setup(Storage::File(
                    dir.path().join(format!("async-{verify_only}.db")),
                ))),
                64,
                verify_only,
                false,
            );
        }
        // With 64 callers a decision waits mostly for its group's commit and
        // fsync; four times as many show what the writer does when it always has
        // work.
        in_process_async(
            "verify alone, async, SQLite file, 256 tasks",
            Arc::new(setup(Storage::File(dir.path().join("async-256.db")))),
            256,
            true,
            false,
        );
        in_process_async(
            "verify alone, keyed, async, SQLite file, 64 tasks",
            Arc::new(setup(Storage::File(dir.path().join("keyed-async.db")))),
            64,
            true,
            true,
        );
        in_process_on(
            "verify alone, keyed, SQLite file, 16 thread(s)",
            Arc::new(setup(Storage::File(dir.path().join("keyed.db")))),
            16,
            true,
            true,
        );
        // Under rolling caps and an hourly call limit.
        in_process_on(
            "capped: verify alone, SQLite memory,  1 thread(s)",
            Arc::new(setup_with(Storage::Memory, CAPPED_POLICY)),
            1,
            true,
            false,
        );
        in_process_async(
            "capped: verify alone, async, SQLite file, 64 tasks",
            Arc::new(setup_with(
                Storage::File(dir.path().join("capped.db")),
                CAPPED_POLICY,
            )),
            64,
            true,
            false,
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if runs("http") {
        rt.block_on(async {
            let s = setup(Storage::File(dir.path().join("http.db")));
            let base = serve(s.engine.clone()).await;
            http("SQLite file, 16 conns", &s, vec![base.clone()], 16).await;
            http("SQLite file, 128 conns", &s, vec![base], 128).await;
        });
    }
    if runs("postgres") {
        // A database of the cluster `.ci/postgres start` runs (its URL in the environment).
        let Some(url) = std::env::var("PAYBOND_BENCH_DATABASE_URL")
            .or_else(|_| std::env::var("PAYBOND_TEST_DATABASE_URL"))
            .ok()
        else {
            println!(
                "postgres: skipped (set PAYBOND_BENCH_DATABASE_URL or PAYBOND_TEST_DATABASE_URL)"
            );
            return;
        };
        let url = paybond_gateway::DatabaseUrl::parse(&url).unwrap();
        let s = setup(Storage::Postgres(url.clone()));
        in_process_on(
            "in process, PostgreSQL, 16 thread(s)",
            Arc::new(s),
            16,
            false,
            false,
        );
        rt.block_on(async {
            // One replica on SQLite, the same load, in the same run: the yardstick.
            let lite = setup(Storage::File(dir.path().join("yardstick.db")));
            let base = serve(lite.engine.clone()).await;
            let sqlite = http("SQLite file, 1 replica, 16 conns", &lite, vec![base], 16).await;

            let s = setup(Storage::Postgres(url.clone()));
            let one = serve(s.engine.clone()).await;
            let single = http("PostgreSQL, 1 replica, 16 conns", &s, vec![one.clone()], 16).await;
            let mut bases = vec![one];
            for _ in 0..2 {
                let replica =
                    Arc::new(Engine::open(bench_config(Storage::Postgres(url.clone()))).unwrap());
                bases.push(serve(replica).await);
            }
            let fleet = http("PostgreSQL, 3 replicas, 32 conns", &s, bases.clone(), 32).await;
            // 100 tenants, each with its intent, over the same three replicas.
            let tenants: Vec<Setup> = (0..100)
                .map(|i| tenant(s.engine.clone(), &format!("bench-{i}")))
                .collect();
            let many = http_tenants(
                "PostgreSQL, 3 replicas, 100 tenants, 32 conns",
                &tenants,
                bases.clone(),
                32,
                false,
            )
            .await;
            let affine = http_tenants(
                "PostgreSQL, 3 replicas, 100 tenants, each on one replica, 32 conns",
                &tenants,
                bases,
                32,
                true,
            )
            .await;
            println!("fleet goals (issue 26), from this run:");
            ratio(
                "  PostgreSQL / SQLite, 1 replica, keyed",
                single.keyed.per_sec / sqlite.keyed.per_sec,
                ">= 0.30",
            );
            ratio(
                "  3 replicas keyed / 1 replica's /healthz",
                fleet.keyed.per_sec / single.health.per_sec,
                ">= 0.10",
            );
            println!(
                "{:<44} {:>9} µs   (goal <= 20,000)",
                "  3 replicas keyed, p99", fleet.keyed.p99_us
            );
            ratio(
                "  100 tenants / 1 tenant, 3 replicas",
                many.per_sec / fleet.alone.per_sec,
                ">= 2",
            );
            ratio(
                "  the same, each tenant on one replica",
                affine.per_sec / fleet.alone.per_sec,
                ">= 2",
            );
        });
    }
}
