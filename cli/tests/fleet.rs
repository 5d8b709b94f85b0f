//! Fleet mode: three `paybond dev loop --offline --database-url …` replicas on one
//! PostgreSQL database, 32 agents spread over them spending against two intents under
//! one tenant day cap and a per-agent rolling cap, one replica killed with SIGKILL
//! mid-run and restarted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paybond_middleware_core::http::RetryPolicy;
use paybond_middleware_core::wire::{
    CompleteRequest, Finalization, SandboxBootstrapRequest, VerifyRequest,
};
use paybond_middleware_core::{ApiKey, CapabilityToken, HttpGateway, SpendGateway};
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};
use uuid::Uuid;

const DAY_CAP: u64 = 30_000;
const INTENT_BUDGET: u64 = 20_000;
const AGENT_HOUR_CAP: u64 = 1_500;
const POLICY: &str = "version: 1
name: fleet
default_deny: true
tools:
  travel.book_hotel: {side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}
spend_controls:
  caps:
    - {scope: tenant, window: day, limit_cents: 30000, timezone: UTC}
    - {scope: agent, window: hour, limit_cents: 1500}
";

/// A new database on the test cluster; `None` when PostgreSQL tests are skipped.
fn database() -> Option<String> {
    let Ok(base) = std::env::var("PAYBOND_TEST_DATABASE_URL") else {
        if std::env::var("PAYBOND_SKIP_POSTGRES").as_deref() == Ok("1") {
            eprintln!("skipped: this test needs PostgreSQL and PAYBOND_SKIP_POSTGRES=1");
            return None;
        }
        panic!(
            "this test needs PostgreSQL: run the tests with `bash .ci/test` (it starts a \
             throwaway cluster), or set PAYBOND_TEST_DATABASE_URL, or skip it with \
             PAYBOND_SKIP_POSTGRES=1"
        );
    };
    let name = format!("fleet_{}", Uuid::new_v4().simple());
    let create = format!("CREATE DATABASE {name}");
    let admin = base.clone();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                client.batch_execute(&create).await.unwrap();
            });
    })
    .join()
    .unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    Some(format!("{prefix}/{name}"))
}

struct Replica {
    child: Child,
    url: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        // SIGKILL: nothing is flushed or closed cleanly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replica(dir: &Path, database_url: &str) -> Replica {
    let mut child = Command::new(env!("CARGO_BIN_EXE_paybond"))
        .args([
            "dev",
            "loop",
            "--offline",
            "--port",
            "0",
            "--reservation-ttl-secs",
            "3",
            "--policy-file",
            "fleet.policy.yaml",
            "--database-url",
            database_url,
        ])
        .current_dir(dir)
        .env_remove("PAYBOND_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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
        .expect("the replica did not print `listening on`");
    Replica { child, url }
}

fn keys(dir: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(dir.join(".env.local"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

async fn get(url: &str, key: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{url}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// What the agents were told: every allow, and every complete answered 200.
#[derive(Default)]
struct Acknowledged {
    /// Decision, intent, amount, agent.
    allowed: Vec<(Uuid, Uuid, u64, usize)>,
    finalized: Vec<(Uuid, Finalization, u64)>,
    refusals: HashMap<String, u64>,
}

#[test]
fn replicas_share_one_budget_and_one_ledger_and_survive_sigkill() {
    let Some(db) = database() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fleet.policy.yaml"), POLICY).unwrap();
    // The first replica creates the sandbox tenant and writes the keys; the others
    // find both in the shared database and env file.
    let mut replicas = vec![replica(dir.path(), &db)];
    let keys = keys(dir.path());
    replicas.push(replica(dir.path(), &db));
    replicas.push(replica(dir.path(), &db));
    let after = self::keys(dir.path());
    for k in [
        "PAYBOND_API_KEY",
        "PAYBOND_OPERATOR_API_KEY",
        "PAYBOND_ADMIN_API_KEY",
    ] {
        assert_eq!(after[k], keys[k], "a later replica changed {k}");
    }
    let agent_key = keys["PAYBOND_API_KEY"].clone();
    let operator = keys["PAYBOND_OPERATOR_API_KEY"].clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Each of the 32 agents holds a key of its own: an agent cap counts the key.
    let agent_keys: Vec<String> = rt.block_on(async {
        let mut out = Vec::new();
        for n in 0..32 {
            let issued: Value = reqwest::Client::new()
                .post(format!("{}/v1/admin/api-keys", replicas[n % 3].url))
                .bearer_auth(&keys["PAYBOND_ADMIN_API_KEY"])
                .json(&serde_json::json!({"role": "agent", "subject": format!("agent-{n}")}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            out.push(issued["api_key"].as_str().unwrap().to_owned());
        }
        out
    });

    let urls = Arc::new(RwLock::new(
        replicas.iter().map(|r| r.url.clone()).collect::<Vec<_>>(),
    ));
    // Two intents of one tenant: each has its budget, together they share the day cap.
    let intents: Vec<(Uuid, CapabilityToken)> = rt.block_on(async {
        let mut out = Vec::new();
        for url in urls.read().await.iter().take(2) {
            let client = HttpGateway::builder(url, ApiKey::new(agent_key.clone()))
                .build()
                .unwrap();
            let b = client
                .bootstrap_sandbox(&SandboxBootstrapRequest {
                    operation: "travel.book_hotel".into(),
                    requested_spend_cents: INTENT_BUDGET,
                    currency: None,
                    evidence_schema: None,
                    metadata: None,
                    idempotency_key: None,
                })
                .await
                .unwrap();
            out.push((b.intent_id, b.capability_token));
        }
        out
    });

    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let stop_at = Instant::now() + Duration::from_secs(12);
    let agents: Vec<_> = (0..32)
        .map(|agent| {
            let (urls, acked, key) = (urls.clone(), acked.clone(), agent_keys[agent].clone());
            // Three agents in four spend from the first intent.
            let (intent, token) = intents[usize::from(agent % 4 == 3)].clone();
            rt.spawn(async move {
                let mut at = agent;
                let mut i = 0u64;
                while Instant::now() < stop_at {
                    i += 1;
                    let url = {
                        let urls = urls.read().await;
                        urls[at % urls.len()].clone()
                    };
                    let client = HttpGateway::builder(&url, ApiKey::new(key.clone()))
                        .retry(RetryPolicy::none())
                        .build()
                        .unwrap();
                    let amount = 100 + (i * 37 + agent as u64 * 11) % 800;
                    let verdict = client
                        .verify(&VerifyRequest {
                            intent_id: intent,
                            token: token.clone(),
                            operation: "travel.book_hotel".into(),
                            requested_spend_cents: amount,
                            vendor_id: None,
                            task_id: None,
                            workflow_id: None,
                            tool_call_id: Some(format!("a{agent}-{i}")),
                            tool_name: Some("travel.book_hotel".into()),
                            currency: None,
                            agent_subject: Some(format!("agent-{agent}")),
                            approval_token: None,
                            idempotency_key: Some(format!("a{agent}-{i}")),
                            phase: None,
                        })
                        .await;
                    let Ok(r) = verdict else {
                        // That replica is gone: fail over to the next one.
                        at += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let Some(id) = r.decision_id.filter(|_| r.allow) else {
                        let code = r.reason_codes.first().cloned().unwrap_or_default();
                        *acked.lock().await.refusals.entry(code).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    acked.lock().await.allowed.push((id, intent, amount, agent));
                    let outcome = if i.is_multiple_of(4) {
                        Finalization::Released
                    } else {
                        Finalization::Consumed
                    };
                    let req = CompleteRequest {
                        outcome,
                        actual_spend_cents: None,
                    };
                    if let Ok(c) = client.complete_decision(id, &req, &format!("c-{id}")).await {
                        acked.lock().await.finalized.push((
                            id,
                            outcome,
                            c.actual_spend_cents.unwrap_or(0),
                        ));
                    }
                }
            })
        })
        .collect();

    // Once the load runs, kill -9 the second replica, then start it again.
    let started = Instant::now();
    while rt.block_on(async { acked.lock().await.allowed.len() }) < 40
        && started.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = replicas.remove(1);
    let killed_url = killed.url.clone();
    drop(killed);
    rt.block_on(async { urls.write().await.retain(|u| *u != killed_url) });
    std::thread::sleep(Duration::from_millis(500));
    let restarted = replica(dir.path(), &db);
    rt.block_on(async { urls.write().await.push(restarted.url.clone()) });
    replicas.push(restarted);
    for a in agents {
        rt.block_on(a).unwrap();
    }

    let acked = rt.block_on(async { std::mem::take(&mut *acked.lock().await) });
    eprintln!(
        "{} allows, {} completions acknowledged; refusals {:?}",
        acked.allowed.len(),
        acked.finalized.len(),
        acked.refusals
    );
    assert!(
        acked.allowed.len() >= 40,
        "only {} allows",
        acked.allowed.len()
    );
    // Both limits were reached, so both were tested.
    assert!(
        acked.refusals.contains_key("daily_tenant_cap_exceeded"),
        "{:?}",
        acked.refusals
    );
    assert!(
        acked.refusals.contains_key("intent_budget_exceeded"),
        "{:?}",
        acked.refusals
    );
    assert!(
        acked.refusals.contains_key("hourly_agent_cap_exceeded"),
        "{:?}",
        acked.refusals
    );
    rt.block_on(async {
        let url = replicas[0].url.clone();
        // No overspend: per intent, and for the tenant's day.
        let mut day = 0;
        for (intent, _) in &intents {
            let view = get(&url, &agent_key, &format!("/harbor/intents/{intent}")).await;
            let spent =
                view["consumed_cents"].as_u64().unwrap() + view["reserved_cents"].as_u64().unwrap();
            assert!(spent <= INTENT_BUDGET, "intent {intent} overspent: {view}");
            day += spent;
        }
        assert!(day <= DAY_CAP, "the tenant's day cap was overspent: {day}");
        let consumed_acked: u64 = acked
            .finalized
            .iter()
            .filter(|(_, o, _)| *o == Finalization::Consumed)
            .map(|(_, _, c)| c)
            .sum();
        assert!(
            consumed_acked <= DAY_CAP,
            "acknowledged {consumed_acked} consumed"
        );

        // Every acknowledged decision and completion is in the one ledger, once.
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let page = get(
                &url,
                &operator,
                &format!("/ledger/v1/events?after_seq={after}&limit=1000"),
            )
            .await;
            let batch = page["events"].as_array().unwrap().clone();
            let Some(last) = batch.last() else { break };
            after = last["seq"].as_u64().unwrap();
            events.extend(batch);
        }
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        let mut allows = HashSet::new();
        let mut ends: HashMap<String, Vec<String>> = HashMap::new();
        for e in &events {
            let kind = e["event"].as_str().unwrap();
            let id = e["payload"]["decision_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if kind == "decision.allow" {
                allows.insert(id);
            } else if kind.starts_with("reservation.") {
                ends.entry(id).or_default().push(kind.to_owned());
            }
        }
        for (id, _, _, _) in &acked.allowed {
            assert!(allows.contains(&id.to_string()), "acknowledged {id} lost");
        }
        for (id, outcome, _) in &acked.finalized {
            let expected = match outcome {
                Finalization::Consumed => "reservation.consumed",
                Finalization::Released => "reservation.released",
            };
            assert_eq!(ends[&id.to_string()], [expected], "{id}");
        }
        assert!(
            ends.values().all(|k| k.len() == 1),
            "a reservation was finalized twice"
        );
        // No agent spent past its rolling cap: its allows as the ledger ended
        // them, consumed or still open (released and expired ones gave it back).
        let mut per_agent: HashMap<usize, u64> = HashMap::new();
        for (id, _, amount, agent) in &acked.allowed {
            let end = ends.get(&id.to_string()).and_then(|k| k.first());
            if end.is_none_or(|k| k == "reservation.consumed") {
                *per_agent.entry(*agent).or_default() += amount;
            }
        }
        for (agent, spent) in &per_agent {
            assert!(
                *spent <= AGENT_HOUR_CAP,
                "agent {agent} spent {spent} under a {AGENT_HOUR_CAP} rolling cap"
            );
        }
    });
    drop(replicas);

    // The one chain verifies offline.
    let out = Command::new(env!("CARGO_BIN_EXE_paybond"))
        .args([
            "ledger",
            "verify",
            "--format",
            "json",
            "--database-url",
            &db,
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let check: Value = serde_json::from_slice::<Value>(&out.stdout).unwrap()["data"].clone();
    assert_eq!(out.status.code(), Some(0), "{check}");
    assert_eq!(check["valid"], true);
    assert_eq!(check["tenants"], 1);
}

#[test]
fn policy_replay_reads_a_fleets_postgresql_database_while_it_serves() {
    let Some(db) = database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // One replica with the bundled scenario policies, and the canonical demo on it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_paybond"))
        .args([
            "dev",
            "loop",
            "--offline",
            "--port",
            "0",
            "--database-url",
            &db,
        ])
        .current_dir(dir.path())
        .env_remove("PAYBOND_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("the replica stopped").unwrap();
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.to_owned();
        }
    };
    let replica = Replica { child, url };
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_paybond"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("PAYBOND_GATEWAY_URL")
            .env_remove("PAYBOND_DATABASE_URL")
            .output()
            .unwrap()
    };
    let demo = run(&["agent", "demo", "generic", "--gateway", &replica.url]);
    assert_eq!(demo.status.code(), Some(0), "{demo:?}");

    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lower = std::fs::read_to_string(repo.join("policies/tenant-overlay.policy.yaml"))
        .unwrap()
        .replace("max_per_call_cents: 20000", "max_per_call_cents: 15000");
    std::fs::write(dir.path().join("lower.policy.yaml"), lower).unwrap();
    let out = run(&[
        "policy",
        "replay",
        "--database-url",
        &db,
        "--policy-file",
        "lower.policy.yaml",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let data = &report["data"];
    assert_eq!(data["decisions"], 5, "{report}");
    let was_now: Vec<(String, String)> = data["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["was"].as_str().unwrap().to_owned(),
                c["now"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        was_now,
        [
            ("hold".to_owned(), "deny".to_owned()),
            ("allow".to_owned(), "deny".to_owned())
        ]
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("postgres://"));
    // Both a data dir and a database: refused as usage.
    let both = run(&[
        "policy",
        "replay",
        "--database-url",
        &db,
        "--data-dir",
        ".paybond",
        "--policy-file",
        "lower.policy.yaml",
    ]);
    assert_eq!(both.status.code(), Some(2));
    // The replica served throughout.
    let again = run(&["agent", "demo", "generic", "--gateway", &replica.url]);
    assert_eq!(again.status.code(), Some(0), "{again:?}");
}
