//! `paybond dev loop --offline` as a process: keys in the env file, state across
//! restarts, and no acknowledged decision lost when it is killed with SIGKILL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paybond_middleware_core::http::RetryPolicy;
use paybond_middleware_core::wire::{
    CompleteRequest, Finalization, SandboxBootstrapRequest, VerifyRequest,
};
use paybond_middleware_core::{ApiKey, HttpGateway, SpendGateway};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use uuid::Uuid;

struct Gateway {
    child: Child,
    url: String,
    /// What it printed after `console: `.
    console: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, extra: &[&str]) -> Gateway {
    let mut child = Command::new(env!("CARGO_BIN_EXE_paybond"))
        .args([
            "dev",
            "loop",
            "--offline",
            "--port",
            "0",
            "--reservation-ttl-secs",
            "2",
        ])
        .args(extra)
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
            } else if let Some(console) = line.strip_prefix("console: ") {
                let _ = tx.send(console.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the gateway did not print `listening on`");
    let console = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the gateway did not print `console: `");
    Gateway {
        child,
        url,
        console,
    }
}

fn env(dir: &Path) -> HashMap<String, String> {
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

async fn ledger(url: &str, operator: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = get(
            url,
            operator,
            &format!("/ledger/v1/events?after_seq={after}&limit=1000"),
        )
        .await;
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return all;
        }
        after = events.last().unwrap()["seq"].as_u64().unwrap();
        all.extend(events);
    }
}

/// The decisions allowed on the ledger, in order, and each one's reservation
/// ends (`reservation.consumed`, `.released`, `.expired`) by decision id.
fn allows_and_ends(events: &[Value]) -> (Vec<String>, HashMap<String, Vec<String>>) {
    let mut allows = Vec::new();
    let mut ends: HashMap<String, Vec<String>> = HashMap::new();
    for e in events {
        let kind = e["event"].as_str().unwrap();
        let id = e["payload"]["decision_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if kind == "decision.allow" {
            allows.push(id);
        } else if kind.starts_with("reservation.") {
            ends.entry(id).or_default().push(kind.to_owned());
        }
    }
    (allows, ends)
}

#[test]
fn keys_are_written_once_and_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path(), &[]);
    assert_eq!(first.console, format!("{}/console", first.url));
    let keys = env(dir.path());
    assert!(keys["PAYBOND_API_KEY"].starts_with("paybond_sk_sandbox_"));
    assert!(keys["PAYBOND_OPERATOR_API_KEY"].starts_with("paybond_sk_sandbox_"));
    assert!(keys["PAYBOND_ADMIN_API_KEY"].starts_with("paybond_sk_sandbox_"));
    assert_eq!(keys["PAYBOND_GATEWAY_URL"], first.url);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(".env.local"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    drop(first);

    let second = start(dir.path(), &[]);
    let again = env(dir.path());
    assert_eq!(again["PAYBOND_API_KEY"], keys["PAYBOND_API_KEY"]);
    assert_eq!(again["PAYBOND_TENANT_ID"], keys["PAYBOND_TENANT_ID"]);
    assert_eq!(again["PAYBOND_GATEWAY_URL"], second.url);
    drop(second);

    let third = start(dir.path(), &["--force"]);
    let rotated = env(dir.path());
    assert_ne!(rotated["PAYBOND_API_KEY"], keys["PAYBOND_API_KEY"]);
    assert_eq!(rotated["PAYBOND_TENANT_ID"], keys["PAYBOND_TENANT_ID"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let old = reqwest::Client::new()
            .get(format!("{}/v1/auth/principal", third.url))
            .bearer_auth(&keys["PAYBOND_API_KEY"])
            .send()
            .await
            .unwrap();
        assert_eq!(old.status().as_u16(), 401);
    });
}

#[test]
fn sigkill_loses_no_acknowledged_decision() {
    let dir = tempfile::tempdir().unwrap();
    // No hourly rate limit here (the bundled policy has one), so the load keeps allowing.
    std::fs::write(
        dir.path().join("load.policy.yaml"),
        "version: 1\nname: load\ndefault_deny: true\ntools:\n  travel.book_hotel: {side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}\n",
    )
    .unwrap();
    let policy = ["--policy-file", "load.policy.yaml"];
    let gw = start(dir.path(), &policy);
    let keys = env(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Load: 8 clients verify and settle until the process is killed under them.
    let decisions = Arc::new(Mutex::new(Vec::<Uuid>::new()));
    let completed = Arc::new(Mutex::new(Vec::<(Uuid, Finalization, u64)>::new()));
    let url = gw.url.clone();
    let agent_key = keys["PAYBOND_API_KEY"].clone();
    let (intent, token) = rt.block_on(async {
        let client = HttpGateway::builder(&url, ApiKey::new(agent_key.clone()))
            .build()
            .unwrap();
        let b = client
            .bootstrap_sandbox(&SandboxBootstrapRequest {
                operation: "travel.book_hotel".into(),
                requested_spend_cents: 60_000,
                currency: None,
                evidence_schema: None,
                metadata: None,
                idempotency_key: None,
            })
            .await
            .unwrap();
        (b.intent_id, b.capability_token)
    });
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (url, key, token) = (url.clone(), agent_key.clone(), token.clone());
            let (decisions, completed) = (decisions.clone(), completed.clone());
            rt.spawn(async move {
                let client = HttpGateway::builder(&url, ApiKey::new(key))
                    .retry(RetryPolicy::none())
                    .build()
                    .unwrap();
                for i in 0.. {
                    let Ok(r) = client
                        .verify(&VerifyRequest {
                            intent_id: intent,
                            token: token.clone(),
                            operation: "travel.book_hotel".into(),
                            requested_spend_cents: 10 + (i % 7),
                            vendor_id: None,
                            task_id: None,
                            workflow_id: None,
                            tool_call_id: Some(format!("w{w}-{i}")),
                            tool_name: Some("travel.book_hotel".into()),
                            currency: None,
                            agent_subject: None,
                            approval_token: None,
                            idempotency_key: Some(format!("w{w}-{i}")),
                            phase: None,
                        })
                        .await
                    else {
                        return;
                    };
                    let Some(id) = r.decision_id.filter(|_| r.allow) else {
                        continue;
                    };
                    decisions.lock().await.push(id);
                    // Every third allow is left open: it must expire after the restart.
                    if i % 3 == 0 {
                        continue;
                    }
                    let outcome = if i % 3 == 1 {
                        Finalization::Consumed
                    } else {
                        Finalization::Released
                    };
                    let req = CompleteRequest {
                        outcome,
                        actual_spend_cents: None,
                    };
                    if let Ok(c) = client.complete_decision(id, &req, &format!("c-{id}")).await {
                        completed.lock().await.push((
                            id,
                            outcome,
                            c.actual_spend_cents.unwrap_or(0),
                        ));
                    }
                }
            })
        })
        .collect();
    // Let the load build, then kill -9 in the middle of it.
    let started = Instant::now();
    while rt.block_on(async { decisions.lock().await.len() }) < 150
        && started.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(gw); // SIGKILL, then reaped
    for w in workers {
        let _ = rt.block_on(w);
    }
    let decisions = rt.block_on(async { decisions.lock().await.clone() });
    let completed = rt.block_on(async { completed.lock().await.clone() });
    assert!(
        decisions.len() >= 150,
        "only {} decisions before the kill",
        decisions.len()
    );

    // Restart on the same data dir: every acknowledged decision and completion is there, once.
    let gw = start(dir.path(), &policy);
    let operator = keys["PAYBOND_OPERATOR_API_KEY"].clone();
    rt.block_on(async {
        let (allowed, finalized) = allows_and_ends(&ledger(&gw.url, &operator).await);
        for d in &decisions {
            assert!(
                allowed.contains(&d.to_string()),
                "acknowledged decision {d} lost"
            );
        }
        for (d, outcome, _) in &completed {
            let kinds = &finalized[&d.to_string()];
            let expected = match outcome {
                Finalization::Consumed => "reservation.consumed",
                Finalization::Released => "reservation.released",
            };
            assert_eq!(kinds, &[expected.to_owned()], "{d} finalized {kinds:?}");
        }
        assert!(
            finalized.values().all(|k| k.len() == 1),
            "a reservation was finalized twice"
        );

        // A second, different completion of an acknowledged one is refused.
        let client = HttpGateway::builder(&gw.url, ApiKey::new(agent_key.clone()))
            .build()
            .unwrap();
        let (d, outcome, _) = completed[0];
        let other = match outcome {
            Finalization::Consumed => Finalization::Released,
            Finalization::Released => Finalization::Consumed,
        };
        let err = client
            .complete_decision(
                d,
                &CompleteRequest {
                    outcome: other,
                    actual_spend_cents: None,
                },
                "again",
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("decision_already_finalized"),
            "{err}"
        );

        // Orphaned reservations (left open, or cut off by the kill) expire: the sweep
        // gives every allowed reservation exactly one end on the ledger (consumed,
        // released or expired). The open-reservations gauge leaves a reservation out as
        // soon as it is past its TTL, before the sweep records it, so the ledger is
        // what is waited on here.
        let deadline = Instant::now() + Duration::from_secs(15);
        let (allows, ends) = loop {
            let (allows, ends) = allows_and_ends(&ledger(&gw.url, &operator).await);
            if allows.iter().all(|id| ends.contains_key(id)) {
                break (allows, ends);
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} allowed reservations have no end",
                allows.iter().filter(|id| !ends.contains_key(*id)).count(),
                allows.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            ends.values().flatten().any(|k| k == "reservation.expired"),
            "no orphan expired"
        );
        for id in &allows {
            assert_eq!(
                ends[id].len(),
                1,
                "reservation {id} has ends {:?}",
                ends[id]
            );
        }
        let metrics = reqwest::get(format!("{}/metrics", gw.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("paybond_open_reservations 0"),
            "reservations still open:\n{metrics}"
        );
    });
    drop(gw);

    let out = Command::new(env!("CARGO_BIN_EXE_paybond"))
        .args(["ledger", "verify", "--format", "json"])
        .current_dir(dir.path())
        .env_remove("PAYBOND_DATA_DIR")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let check: Value = serde_json::from_slice::<Value>(&out.stdout).unwrap()["data"].clone();
    assert_eq!(check["valid"], true);
    assert!(check["events"].as_u64().unwrap() > 300);
}

fn paybond_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_paybond"))
        .args(args)
        .current_dir(dir)
        .env_remove("PAYBOND_GATEWAY_URL")
        .env_remove("PAYBOND_API_KEY")
        .env_remove("PAYBOND_OPERATOR_API_KEY")
        .env_remove("PAYBOND_ADMIN_API_KEY")
        .env_remove("PAYBOND_DATA_DIR")
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn operator_commands_remote_policy_check_and_a_tampered_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), &[]);
    let keys = env(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A held request: 187.00 is above the bundled policy's 150.00 threshold.
    let approval = rt.block_on(async {
        let client = HttpGateway::builder(&gw.url, ApiKey::new(keys["PAYBOND_API_KEY"].clone()))
            .build()
            .unwrap();
        let b = client
            .bootstrap_sandbox(&SandboxBootstrapRequest {
                operation: "travel.book_hotel".into(),
                requested_spend_cents: 60_000,
                currency: None,
                evidence_schema: None,
                metadata: None,
                idempotency_key: None,
            })
            .await
            .unwrap();
        let r = client
            .verify(&VerifyRequest {
                intent_id: b.intent_id,
                token: b.capability_token,
                operation: "travel.book_hotel".into(),
                requested_spend_cents: 18_700,
                vendor_id: None,
                task_id: None,
                workflow_id: None,
                tool_call_id: None,
                tool_name: Some("travel.book_hotel".into()),
                currency: None,
                agent_subject: None,
                approval_token: None,
                idempotency_key: None,
                phase: None,
            })
            .await
            .unwrap();
        assert!(r.approval_required);
        r.approval_request_id.unwrap().to_string()
    });

    let (code, out, _) = paybond_in(dir.path(), &["approvals", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains(&approval) && out.contains("pending"), "{out}");
    // Money as every command shows it.
    assert!(out.contains("187.00 USD"), "{out}");
    let (code, out, _) = paybond_in(dir.path(), &["approvals", "approve", &approval]);
    assert_eq!(code, 0);
    assert!(
        out.contains("approved") && out.contains("1/1 approvals"),
        "{out}"
    );
    let (code, out, _) = paybond_in(
        dir.path(),
        &[
            "approvals",
            "list",
            "--state",
            "approved",
            "--format",
            "json",
        ],
    );
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str::<Value>(&out).unwrap()["data"].clone();
    assert_eq!(listed["approvals"][0]["state"], "approved", "{out}");
    assert!(listed["approvals"][0]["approval_token"].is_null(), "{out}");
    assert!(!out.contains("paybond_at_"), "{out}");
    let (code, out, _) = paybond_in(
        dir.path(),
        &["approvals", "show", &approval, "--format", "json"],
    );
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str::<Value>(&out).unwrap()["data"].clone();
    assert_eq!(shown["approval_request_id"], approval.as_str(), "{out}");
    assert_eq!(shown["state"], "approved", "{out}");
    let (code, _, err) = paybond_in(dir.path(), &["approvals", "deny", &approval]);
    assert_eq!(code, 1);
    assert!(err.contains("approval_already_decided"), "{err}");
    // The same refusal in --format json (given before the command): one envelope on
    // stdout with the gateway's code and request id.
    let (code, out, _) = paybond_in(
        dir.path(),
        &["--format", "json", "approvals", "deny", &approval],
    );
    assert_eq!(code, 1);
    let refused: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(refused["ok"], false, "{out}");
    assert_eq!(refused["command"], "approvals deny", "{out}");
    assert_eq!(refused["error"]["category"], "gateway", "{out}");
    assert_eq!(
        refused["error"]["code"], "approval_already_decided",
        "{out}"
    );
    assert!(refused["request_id"].is_string(), "{out}");
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, _, err) = paybond_in(elsewhere.path(), &["approvals", "list"]);
    assert_eq!(code, 2);
    assert!(err.contains("PAYBOND_OPERATOR_API_KEY"), "{err}");
    let (code, out, _) = paybond_in(elsewhere.path(), &["approvals", "list", "--format", "json"]);
    assert_eq!(code, 2);
    let missing: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(missing["error"]["category"], "environment", "{out}");
    assert_eq!(missing["error"]["code"], "missing_credentials", "{out}");
    // --env-file is the same flag everywhere: pointed at the dev loop's file, it works
    // from another directory.
    let env_file = dir.path().join(".env.local");
    let (code, out, _) = paybond_in(
        elsewhere.path(),
        &[
            "approvals",
            "list",
            "--state",
            "all",
            "--env-file",
            env_file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&approval), "{out}");

    // --remote: the gateway enforces what the bundled overlay resolves to; another file drifts.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let overlay = repo.join("policies/tenant-overlay.policy.yaml");
    let (code, out, err) = paybond_in(
        dir.path(),
        &[
            "policy",
            "validate-tools",
            "--file",
            overlay.to_str().unwrap(),
            "--remote",
            "--format",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str::<Value>(&out).unwrap()["data"].clone();
    assert_eq!(v["remote"]["matches"], true, "{v}");
    let changed = dir.path().join("tenant.policy.yaml");
    std::fs::write(
        &changed,
        std::fs::read_to_string(&overlay)
            .unwrap()
            .replace("max_spend_usd: 600", "max_spend_usd: 500")
            .replace(
                "base_policy: org-base.policy.yaml",
                &format!(
                    "base_policy: {}",
                    repo.join("policies/org-base.policy.yaml").display()
                ),
            ),
    )
    .unwrap();
    let (code, out, _) = paybond_in(
        dir.path(),
        &[
            "policy",
            "validate-tools",
            "--file",
            changed.to_str().unwrap(),
            "--remote",
            "--format",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str::<Value>(&out).unwrap()["data"].clone();
    assert_eq!(v["remote"]["matches"], false);
    assert_eq!(v["warnings"][0]["code"], "policy.remote_drift");
    drop(gw);

    // The chain verifies; one altered entry breaks it.
    let (code, out, _) = paybond_in(dir.path(), &["ledger", "verify"]);
    assert_eq!(code, 0, "{out}");
    let db = rusqlite::Connection::open(dir.path().join(".paybond/paybond.db")).unwrap();
    db.execute(
        "UPDATE ledger SET payload = replace(payload, '18700', '1870') WHERE event = 'decision.hold'",
        [],
    )
    .unwrap();
    drop(db);
    let (code, out, _) = paybond_in(dir.path(), &["ledger", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("BROKEN") && out.contains("hash does not match"),
        "{out}"
    );
}

#[test]
#[cfg(unix)]
fn the_data_dir_is_private_and_git_ignores_the_keys() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A repository whose .gitignore lists one of the two already.
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    std::fs::write(dir.path().join(".gitignore"), "target\n.env.local").unwrap();
    let gateway = start(dir.path(), &[]);
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(".paybond"), 0o700);
    for file in [".paybond/paybond.db", ".paybond/paybond.key", ".env.local"] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
    let ignored = std::fs::read_to_string(dir.path().join(".gitignore")).unwrap();
    assert_eq!(ignored, "target\n.env.local\n/.paybond/\n");
    drop(gateway);
    // A restart adds nothing twice.
    let again = start(dir.path(), &[]);
    drop(again);
    let ignored_again = std::fs::read_to_string(dir.path().join(".gitignore")).unwrap();
    assert_eq!(ignored_again, ignored);
}

#[test]
fn policy_publish_sends_the_base_and_the_overlay_and_a_widening_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), &[]);
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    for f in ["org-base.policy.yaml", "tenant-overlay.policy.yaml"] {
        std::fs::copy(policies.join(f), dir.path().join(f)).unwrap();
    }
    let keys = env(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let effective = || {
        rt.block_on(get(
            &gw.url,
            &keys["PAYBOND_ADMIN_API_KEY"],
            "/v1/policy/effective",
        ))
    };
    let before = effective();

    // A narrower overlay: the base (from extends.base_policy) and the overlay are sent.
    let narrower = std::fs::read_to_string(dir.path().join("tenant-overlay.policy.yaml"))
        .unwrap()
        .replace(
            "approval_threshold_cents: 15000",
            "approval_threshold_cents: 12000",
        );
    std::fs::write(dir.path().join("narrower.yaml"), &narrower).unwrap();
    let (code, out, err) = paybond_in(
        dir.path(),
        &["policy", "publish", "--file", "narrower.yaml"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("published").count(), 2, "{out}");
    let after = effective();
    assert_ne!(before["digest"], after["digest"]);
    assert_eq!(
        after["policy"]["spend_controls"]["tools"]["travel.book_hotel"]["approval_threshold_cents"],
        12000,
        "{after}"
    );

    // A widening overlay: refused whole, with its code; nothing changes.
    let wider = narrower.replace(
        "approval_threshold_cents: 12000",
        "approval_threshold_cents: 40000",
    );
    std::fs::write(dir.path().join("wider.yaml"), wider).unwrap();
    let (code, out, err) = paybond_in(dir.path(), &["policy", "publish", "--file", "wider.yaml"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("policy.cannot_raise_approval_threshold"),
        "{err}"
    );
    assert_eq!(effective()["digest"], after["digest"]);

    // Without a tenant admin key: a usage error.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("narrower.yaml"),
        elsewhere.path().join("narrower.yaml"),
    )
    .unwrap();
    let (code, _, err) = paybond_in(
        elsewhere.path(),
        &[
            "policy",
            "publish",
            "--file",
            "narrower.yaml",
            "--skip-base",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("PAYBOND_ADMIN_API_KEY") || err.contains("PAYBOND_GATEWAY_URL"),
        "{err}"
    );
}

/// The tenant's effective policy as the dev loop at `url` serves it.
fn effective(url: &str, dir: &Path) -> Value {
    let key = env(dir)["PAYBOND_API_KEY"].clone();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(get(url, &key, "/v1/policy/effective"))
}

#[test]
fn a_restart_keeps_a_published_policy_and_a_named_file_follows_its_base() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let overlay =
        std::fs::read_to_string(repo.join("policies/tenant-overlay.policy.yaml")).unwrap();
    let org = std::fs::read_to_string(repo.join("policies/org-base.policy.yaml")).unwrap();

    let gw = start(dir.path(), &[]);
    let first = effective(&gw.url, dir.path());
    assert_eq!(
        first["policy"]["intent"]["budget"]["max_spend_usd"], 600.0,
        "{first}"
    );

    // Published over HTTP since the start: a smaller budget.
    std::fs::write(dir.path().join("org.yaml"), &org).unwrap();
    std::fs::write(
        dir.path().join("narrow.yaml"),
        overlay
            .replace("max_spend_usd: 600", "max_spend_usd: 500")
            .replace("base_policy: org-base.policy.yaml", "base_policy: org.yaml"),
    )
    .unwrap();
    let (code, out, err) = paybond_in(dir.path(), &["policy", "publish", "--file", "narrow.yaml"]);
    assert_eq!(code, 0, "{out}{err}");
    let published = effective(&gw.url, dir.path());
    assert_eq!(
        published["policy"]["intent"]["budget"]["max_spend_usd"],
        500.0
    );
    drop(gw);

    // A restart without --policy-file keeps it.
    let gw = start(dir.path(), &[]);
    let kept = effective(&gw.url, dir.path());
    assert_eq!(kept["digest"], published["digest"], "{kept}");
    assert_eq!(kept["version"], published["version"]);
    drop(gw);

    // A named file is published, with the org base its `extends.base_policy` names
    // (here one with an extra read-only tool), not the built-in one.
    std::fs::write(
        dir.path().join("org.yaml"),
        org.replace(
            "  travel.search_hotels:\n    side_effecting: false\n",
            "  travel.search_hotels:\n    side_effecting: false\n  travel.cancel_booking:\n    side_effecting: false\n",
        ),
    )
    .unwrap();
    let gw = start(dir.path(), &["--policy-file", "narrow.yaml"]);
    let named = effective(&gw.url, dir.path());
    assert!(
        named["policy"]["tools"]["travel.cancel_booking"].is_object(),
        "{named}"
    );
    assert!(
        named["version"].as_u64() > published["version"].as_u64(),
        "{named}"
    );
    drop(gw);
}

#[test]
fn the_agent_commands_a_paybond_cli_user_types() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), &[]);
    let keys = env(dir.path());
    let json = |args: &[&str]| -> Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let (code, out, err) = paybond_in(dir.path(), &all);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        for secret in [&keys["PAYBOND_API_KEY"], &keys["PAYBOND_OPERATOR_API_KEY"]] {
            assert!(!out.contains(secret.as_str()) && !err.contains(secret.as_str()));
        }
        assert!(!out.contains("paybond_cap"), "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["ok"], true, "{out}");
        v["data"].clone()
    };
    let me = json(&["whoami"]);
    assert_eq!(me["tenant_id"], keys["PAYBOND_TENANT_ID"].as_str());
    assert_eq!(me["service_account_role"], "agent");

    let boot = json(&[
        "guardrails",
        "bootstrap",
        "--operation",
        "travel.book_hotel",
        "--requested-spend-cents",
        "50000",
    ]);
    assert_eq!(boot["capability_token"], "[redacted]");
    let intent = boot["intent_id"].as_str().unwrap().to_owned();

    let left = json(&["spend", "budget-remaining", "--intent-id", &intent]);
    assert_eq!(left["remaining_cents"], 50_000, "{left}");
    let why = json(&[
        "spend",
        "explain-policy",
        "--intent-id",
        &intent,
        "--operation",
        "travel.book_hotel",
        "--requested-spend-cents",
        "25000",
    ]);
    assert_eq!(why["outcome"], "deny", "{why}");
    let last = why["checks"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["name"], "per_call_cap", "{why}");
    let (code, table, _) = paybond_in(
        dir.path(),
        &[
            "spend",
            "explain-policy",
            "--intent-id",
            &intent,
            "--operation",
            "travel.book_hotel",
            "--requested-spend-cents",
            "25000",
        ],
    );
    assert_eq!(code, 0);
    assert!(
        table.contains("outcome: deny") && table.contains("per_call_cap"),
        "{table}"
    );

    let list = json(&["intents", "list"]);
    assert_eq!(list["intents"][0]["intent_id"], intent.as_str(), "{list}");
    let (code, shown, _) = paybond_in(dir.path(), &["intents", "get", &intent]);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("budget_cents: 500.00 USD"), "{shown}");

    // Evidence from a file; a file that is not JSON is refused at its line.
    std::fs::write(dir.path().join("bad.json"), "{\n  \"payload\": oops\n}\n").unwrap();
    let (code, _, err) = paybond_in(
        dir.path(),
        &[
            "guardrails",
            "evidence",
            "--intent-id",
            &intent,
            "--body",
            "bad.json",
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("bad.json:2:"), "{err}");
    std::fs::write(
        dir.path().join("evidence.json"),
        r#"{"payload": {"status": "completed", "cost_cents": 100}, "operation": "travel.book_hotel"}"#,
    )
    .unwrap();
    let evidence = json(&[
        "guardrails",
        "evidence",
        "--intent-id",
        &intent,
        "--body",
        "evidence.json",
    ]);
    assert_eq!(evidence["operation"], "travel.book_hotel", "{evidence}");
    drop(gw);
}

#[test]
fn audit_exports_from_the_command_line_and_the_offline_check() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), &[]);
    let keys = env(dir.path());
    let run = |args: &[&str]| -> (i32, Value, String) {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let (code, out, err) = paybond_in(dir.path(), &all);
        for secret in [&keys["PAYBOND_API_KEY"], &keys["PAYBOND_OPERATOR_API_KEY"]] {
            assert!(!out.contains(secret.as_str()) && !err.contains(secret.as_str()));
        }
        assert!(
            !out.contains("pbdl_"),
            "a download token was printed: {out}"
        );
        let v: Value =
            serde_json::from_str(&out).unwrap_or_else(|_| panic!("{args:?}: {out}{err}"));
        (code, v, err)
    };
    let (code, boot, _) = run(&[
        "guardrails",
        "bootstrap",
        "--operation",
        "travel.book_hotel",
        "--requested-spend-cents",
        "50000",
    ]);
    assert_eq!(code, 0, "{boot}");

    // Create, wait, download in one command.
    let (code, created, err) = run(&[
        "audit",
        "exports",
        "create",
        "--includes",
        "decisions,guardrails",
        "--case-id",
        "case-1",
        "--output",
        "bundle.zip",
    ]);
    assert_eq!(code, 0, "{created}{err}");
    let job_id = created["data"]["job_id"].as_str().unwrap().to_owned();
    let zip = dir.path().join("bundle.zip");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&zip).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let (code, keys_out, _) = run(&["audit", "signing-keys"]);
    assert_eq!(code, 0);
    let public = keys_out["data"]["keys"][0]["public_key_hex"]
        .as_str()
        .unwrap()
        .to_owned();

    // Verified offline (no gateway needed), pinned to the published key.
    drop(gw);
    let (code, verified, _) = run(&[
        "audit",
        "exports",
        "verify",
        "bundle.zip",
        "--public-key",
        &public,
    ]);
    assert_eq!(code, 0, "{verified}");
    assert_eq!(verified["data"]["verified"], true);
    assert_eq!(verified["data"]["job_id"], job_id.as_str());
    assert_eq!(
        verified["data"]["artifacts"].as_array().unwrap().len(),
        5,
        "{verified}"
    );
    let (code, table, _) = paybond_in(
        dir.path(),
        &[
            "audit",
            "exports",
            "verify",
            "--path",
            "bundle.zip",
            "--public-key",
            &public,
        ],
    );
    assert_eq!(code, 0);
    assert!(
        table.contains("verified") && table.contains("chain valid"),
        "{table}"
    );
    // Without a key to check the signer against: never "verified", exit 3.
    let (code, table, err) = paybond_in(
        dir.path(),
        &["audit", "exports", "verify", "--path", "bundle.zip"],
    );
    assert_eq!(code, 3, "{table}{err}");
    assert!(!table.contains("verified"), "{table}");
    assert!(
        table.contains("signature valid, signer not checked") && table.contains("chain valid"),
        "{table}"
    );
    let (code, unchecked, _) = run(&["audit", "exports", "verify", "bundle.zip"]);
    assert_eq!(code, 3);
    assert_eq!(unchecked["ok"], false);
    assert_eq!(unchecked["error"]["code"], "signer_not_checked");
    assert_eq!(unchecked["data"]["verified"], false);
    assert_eq!(unchecked["data"]["signature_valid"], true);

    // An attacker empties the decisions and signs the bundle again with a key of
    // their own: self-consistent, so only the signer gives it away.
    let forged = resigned_without(&zip, "decisions.jsonl");
    std::fs::write(dir.path().join("forged.zip"), forged).unwrap();
    let (code, table, _) = paybond_in(dir.path(), &["audit", "exports", "verify", "forged.zip"]);
    assert_eq!(code, 3);
    assert!(!table.contains("verified"), "{table}");
    let (code, refused, _) = run(&[
        "audit",
        "exports",
        "verify",
        "forged.zip",
        "--public-key",
        &public,
    ]);
    assert_eq!(code, 1, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not by the expected key"),
        "{refused}"
    );

    // One changed byte in an artifact: exit 1, naming the file.
    let mut files = Vec::new();
    {
        use std::io::Read as _;
        let mut archive = zip::ZipArchive::new(std::fs::File::open(&zip).unwrap()).unwrap();
        for i in 0..archive.len() {
            let mut f = archive.by_index(i).unwrap();
            let name = f.name().unwrap().into_owned();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            files.push((name, data));
        }
    }
    let decisions = files
        .iter_mut()
        .find(|(n, _)| n == "ledger/events.jsonl")
        .unwrap();
    let at = decisions.1.iter().position(|b| b.is_ascii_digit()).unwrap();
    decisions.1[at] = if decisions.1[at] == b'9' {
        b'8'
    } else {
        decisions.1[at] + 1
    };
    {
        use std::io::Write as _;
        let mut w =
            zip::ZipWriter::new(std::fs::File::create(dir.path().join("tampered.zip")).unwrap());
        for (name, data) in &files {
            w.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
    }
    let (code, refused, _) = run(&["audit", "exports", "verify", "tampered.zip"]);
    assert_eq!(code, 1, "{refused}");
    assert_eq!(refused["error"]["code"], "audit_bundle_invalid");
    let problems = refused["error"]["details"]["problems"].as_array().unwrap();
    assert!(
        problems[0]
            .as_str()
            .unwrap()
            .starts_with("ledger/events.jsonl: SHA-256"),
        "{refused}"
    );
    let (code, _, _) = run(&[
        "audit",
        "exports",
        "verify",
        "--public-key",
        "00",
        "bundle.zip",
    ]);
    assert_eq!(code, 1);
    let (code, missing, _) = run(&["audit", "exports", "verify", "nothing.zip"]);
    assert_eq!(code, 2, "{missing}");

    // Against the restarted gateway: the signer checked against the tenant's
    // published key, then list, get, delete.
    let gw = start(dir.path(), &[]);
    let (code, verified, _) = run(&[
        "audit",
        "exports",
        "verify",
        "bundle.zip",
        "--gateway",
        &gw.url,
    ]);
    assert_eq!(code, 0, "{verified}");
    assert_eq!(verified["data"]["verified"], true);
    assert_eq!(verified["data"]["signer"], "gateway");
    let (code, refused, _) = run(&[
        "audit",
        "exports",
        "verify",
        "forged.zip",
        "--gateway",
        &gw.url,
    ]);
    assert_eq!(code, 1, "{refused}");
    assert_eq!(refused["error"]["code"], "audit_bundle_invalid");
    assert_eq!(refused["data"]["verified"], false);
    let (code, list, _) = run(&["audit", "exports", "list"]);
    assert_eq!(code, 0);
    assert_eq!(list["data"]["jobs"][0]["id"], job_id.as_str(), "{list}");
    let (code, got, _) = run(&[
        "audit",
        "exports",
        "get",
        "--job-id",
        &job_id,
        "--issue-download",
    ]);
    assert_eq!(code, 0);
    assert_eq!(got["data"]["job"]["status"], "ready");
    assert_eq!(got["data"]["job"]["download_token"], "[redacted]");
    let (code, _, _) = run(&["audit", "exports", "delete", &job_id]);
    assert_eq!(code, 2, "delete needs --yes");
    let (code, _, _) = run(&["audit", "exports", "delete", &job_id, "--yes"]);
    assert_eq!(code, 0);
    let (code, gone, _) = run(&[
        "audit",
        "exports",
        "download",
        &job_id,
        "--output",
        "again.zip",
    ]);
    assert_eq!(code, 1, "{gone}");
    assert!(!dir.path().join("again.zip").exists());
}

#[test]
fn a_run_bound_once_executes_tool_calls_through_the_layer_and_keeps_its_trace() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), &[]);
    let keys = env(dir.path());
    let run = |args: &[&str]| -> (i32, Value) {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let (code, out, err) = paybond_in(dir.path(), &all);
        for secret in [&keys["PAYBOND_API_KEY"], &keys["PAYBOND_OPERATOR_API_KEY"]] {
            assert!(!out.contains(secret.as_str()) && !err.contains(secret.as_str()));
        }
        assert!(
            !out.contains("paybond_cap") && !err.contains("paybond_cap"),
            "{out}{err}"
        );
        (
            code,
            serde_json::from_str(&out).unwrap_or_else(|_| panic!("{args:?}: {out}{err}")),
        )
    };
    let (code, bound) = run(&[
        "agent",
        "run",
        "bind",
        "--operation",
        "travel.book_hotel",
        "--requested-spend-cents",
        "40000",
        "--run-id",
        "trip-1",
    ]);
    assert_eq!(code, 0, "{bound}");
    assert_eq!(bound["data"]["capability_token"], "[redacted]");
    let intent = bound["data"]["intent_id"].as_str().unwrap().to_owned();
    let file = dir.path().join(".paybond/runs/trip-1.json");
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let dir_mode = std::fs::metadata(file.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(
        stored["capability_token"].as_str().unwrap().len() > 100,
        "the run keeps its token"
    );
    let (code, again) = run(&[
        "agent",
        "run",
        "bind",
        "--operation",
        "travel.book_hotel",
        "--requested-spend-cents",
        "1",
        "--run-id",
        "trip-1",
    ]);
    assert_eq!(code, 2, "{again}");
    let (code, _) = run(&["agent", "run", "status", "--run-id", "../etc/passwd"]);
    assert_eq!(code, 2);
    let (code, missing) = run(&["agent", "run", "status", "--run-id", "nope"]);
    assert_eq!(
        (code, missing["error"]["code"].as_str()),
        (2, Some("run_not_found"))
    );

    let execute = |call: &str, cents: &str, body: &str| {
        run(&[
            "agent",
            "tool",
            "execute",
            "--run-id",
            "trip-1",
            "--operation",
            "travel.book_hotel",
            "--tool-call-id",
            call,
            "--requested-spend-cents",
            cents,
            "--result-body",
            body,
        ])
    };
    // Allowed, run, evidence, consumed at the reported cost.
    let (code, ok) = execute(
        "call-1",
        "12000",
        r#"{"status":"completed","cost_cents":11500}"#,
    );
    assert_eq!(code, 0, "{ok}");
    assert_eq!(ok["data"]["outcome"], "allow");
    assert_eq!(ok["data"]["finalization"], "consumed");
    assert_eq!(ok["data"]["actual_cents"], 11_500);
    // The tool reports a failure: released, exit 1.
    let (code, failed) = execute("call-2", "9000", r#"{"status":"failed"}"#);
    assert_eq!(code, 1, "{failed}");
    assert_eq!(failed["error"]["code"], "tool_failed");
    assert_eq!(failed["data"]["finalization"], "released");
    // Over the approval threshold: a hold, the tool does not run.
    let (code, held) = execute(
        "call-3",
        "18700",
        r#"{"status":"completed","cost_cents":18700}"#,
    );
    assert_eq!(code, 1, "{held}");
    assert_eq!(held["error"]["code"], "approval_required");
    assert!(held["data"]["approval_request_id"].is_string(), "{held}");
    // Over the per-call cap: denied.
    let (code, denied) = execute("call-4", "25000", r#"{"status":"completed"}"#);
    assert_eq!(
        (code, denied["error"]["code"].as_str()),
        (1, Some("spend_denied")),
        "{denied}"
    );
    let (code, bad) = execute("call-5", "100", "{not json");
    assert_eq!(
        (code, bad["error"]["code"].as_str()),
        (2, Some("invalid_arguments"))
    );

    // The gateway agrees with what the commands said.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let detail = rt.block_on(get(
        &gw.url,
        &keys["PAYBOND_OPERATOR_API_KEY"],
        &format!("/harbor/operator/v1/intents/{intent}"),
    ));
    assert_eq!(detail["consumed_cents"], 11_500, "{detail}");
    assert_eq!(detail["reserved_cents"], 0, "{detail}");

    // The trace: every attempt in order, with the checks of each decision.
    let (code, trace) = run(&["agent", "run", "trace", "--run-id", "trip-1"]);
    assert_eq!(code, 0);
    let events = trace["data"]["trace_events"].as_array().unwrap();
    let calls: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["tool_call_id"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("call-1", "allow"),
            ("call-2", "allow"),
            ("call-3", "hold"),
            ("call-4", "deny")
        ]
    );
    assert_eq!(
        events[3]["checks"].as_array().unwrap().last().unwrap()["result"],
        "fail"
    );
    let (code, table, _) = paybond_in(
        dir.path(),
        &["agent", "run", "trace", "--run-id", "trip-1", "--explain"],
    );
    assert_eq!(code, 0);
    assert!(
        table.contains("per_call_cap") && table.contains("fail"),
        "{table}"
    );
    let (code, status) = run(&["agent", "run", "status", "--run-id", "trip-1"]);
    assert_eq!(code, 0);
    assert_eq!(status["data"]["trace_entries"], 4);

    // A policy file is refused whole, every problem named.
    std::fs::write(
        dir.path().join("bad.policy.yaml"),
        "version: 2\nname: x\ntools:\n  travel.book_hotel:\n    side_effecting: maybe\n    max_spend_cent: 5\n",
    )
    .unwrap();
    let (code, refused) = run(&[
        "agent",
        "run",
        "bind",
        "--policy-file",
        "bad.policy.yaml",
        "--requested-spend-cents",
        "100",
    ]);
    assert_eq!(
        (code, refused["error"]["code"].as_str()),
        (1, Some("policy_invalid")),
        "{refused}"
    );
    assert!(
        refused["error"]["details"]["problems"]
            .as_array()
            .unwrap()
            .len()
            >= 2,
        "{refused}"
    );

    // Reloading: nothing new; a bad file changes nothing; a good one is taken up.
    let (code, same) = run(&["agent", "run", "reload-policy", "--run-id", "trip-1"]);
    assert_eq!(code, 0, "{same}");
    assert_eq!(same["data"]["reloaded"], false);
    let (code, refused) = run(&[
        "agent",
        "run",
        "reload-policy",
        "--run-id",
        "trip-1",
        "--policy-file",
        "bad.policy.yaml",
    ]);
    assert_eq!(
        (code, refused["error"]["code"].as_str()),
        (1, Some("policy_invalid"))
    );
    std::fs::write(
        dir.path().join("good.policy.yaml"),
        "version: 1\nname: x\ntools:\n  travel.book_hotel: {side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}\n",
    )
    .unwrap();
    let (code, reloaded) = run(&[
        "agent",
        "run",
        "reload-policy",
        "--run-id",
        "trip-1",
        "--policy-file",
        "good.policy.yaml",
    ]);
    assert_eq!(code, 0, "{reloaded}");
    assert_eq!(reloaded["data"]["reloaded"], true);
    assert_eq!(
        reloaded["data"]["policy_reloaded"]["event"],
        "policy_reloaded"
    );
    let (_, status) = run(&["agent", "run", "status", "--run-id", "trip-1"]);
    assert_eq!(
        status["data"]["reloads"].as_array().unwrap().len(),
        1,
        "{status}"
    );
    assert_eq!(status["data"]["policy_file"], "good.policy.yaml");

    // The whole path in one command.
    let (code, smoke) = run(&["agent", "sandbox", "smoke"]);
    assert_eq!(code, 0, "{smoke}");
    assert_eq!(smoke["data"]["passed"], true);
    assert_eq!(smoke["data"]["execute"]["finalization"], "consumed");
    drop(gw);
}

#[test]
fn policy_replay_reports_what_a_new_policy_would_have_decided() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), &[]);
    let (code, out, err) = paybond_in(
        dir.path(),
        &["agent", "demo", "generic", "--gateway", &gw.url],
    );
    assert_eq!(code, 0, "{out}{err}");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bundled = repo.join("policies/tenant-overlay.policy.yaml");
    let bundled = bundled.to_str().unwrap();
    // `paybond policy replay --data-dir .paybond --policy-file FILE ARGS…`
    let replay = |file: &str, args: &[&str]| {
        let mut all = vec![
            "policy",
            "replay",
            "--data-dir",
            ".paybond",
            "--policy-file",
            file,
        ];
        all.extend_from_slice(args);
        paybond_in(dir.path(), &all)
    };

    // While the gateway runs: the policy it enforces changes nothing.
    let (code, out, err) = replay(bundled, &["--fail-on-change"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replayed 5 decisions"), "{out}");
    assert!(out.contains("no decision changes"), "{out}");

    // The gateway stopped (its checkpoints no longer move pages between the WAL
    // and the database file), the rest reads a store that must stay as it is.
    drop(gw);
    let files = || {
        ["paybond.db", "paybond.db-wal"]
            .map(|f| std::fs::read(dir.path().join(".paybond").join(f)).unwrap_or_default())
    };
    let before = files();

    // A lower per-booking cap: the held 187.00 and its approved retry are denied.
    let lower = dir.path().join("lower.policy.yaml");
    let text = std::fs::read_to_string(repo.join("policies/tenant-overlay.policy.yaml"))
        .unwrap()
        .replace("max_per_call_cents: 20000", "max_per_call_cents: 15000");
    std::fs::write(&lower, text).unwrap();
    let (code, out, _) = replay("lower.policy.yaml", &["--format", "json"]);
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    let data = &report["data"];
    assert_eq!(data["decisions"], 5);
    let was_now: Vec<(Value, Value)> = data["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["was"].clone(), c["now"].clone()))
        .collect();
    assert_eq!(
        was_now,
        vec![
            (json!("hold"), json!("deny")),
            (json!("allow"), json!("deny"))
        ]
    );
    assert_eq!(
        data["changes"][0]["reason_codes"],
        json!(["tool_cap_exceeded"])
    );
    assert_eq!(data["not_spent_cents"], 18_700);
    assert_eq!(data["before"]["allowed"], 3);
    assert_eq!(data["after"]["allowed"], 2);
    // For CI: any change exits 1, with the report.
    let (code, out, _) = replay(
        "lower.policy.yaml",
        &["--fail-on-change", "--format", "json"],
    );
    assert_eq!(code, 1, "{out}");
    let failed: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(failed["error"]["code"], "decisions_changed");
    assert_eq!(failed["data"]["changes"].as_array().unwrap().len(), 2);
    // Only what happened from a time on.
    let (code, out, _) = replay("lower.policy.yaml", &["--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replayed 0 decisions"), "{out}");
    // Only what happened before a time: nothing before 2000, everything before 2999.
    let (code, out, _) = replay("lower.policy.yaml", &["--until", "2000-01-01T00:00:00Z"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("replayed 0 decisions") && out.contains("until 2000-01-01T00:00:00Z"),
        "{out}"
    );
    let (code, out, _) = replay(
        "lower.policy.yaml",
        &["--until", "2999-01-01T00:00:00Z", "--format", "json"],
    );
    assert_eq!(code, 0, "{out}");
    let until: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(until["data"]["changes"].as_array().unwrap().len(), 2);
    assert_eq!(until["data"]["until"], "2999-01-01T00:00:00Z");
    let (code, _, err) = replay(bundled, &["--until", "soon"]);
    assert_eq!(code, 2);
    assert!(err.contains("--until"), "{err}");

    // A bad file is refused whole, at its line; bad usage exits 2.
    std::fs::write(
        dir.path().join("bad.policy.yaml"),
        "version: 2\nname: x\ntools: 5\n",
    )
    .unwrap();
    let (code, out, _) = replay("bad.policy.yaml", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bad.policy.yaml:3:"), "{out}");
    let (code, _, err) = paybond_in(
        dir.path(),
        &[
            "policy",
            "replay",
            "--data-dir",
            "nowhere",
            "--policy-file",
            bundled,
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("nowhere"), "{err}");
    let (code, _, err) = replay(bundled, &["--since", "yesterday"]);
    assert_eq!(code, 2);
    assert!(err.contains("--since"), "{err}");

    // Read-only: the store is as it was, and a gateway on it still answers.
    assert!(files() == before, "the store changed");
    let gw = start(dir.path(), &[]);
    let (code, out, err) = paybond_in(
        dir.path(),
        &["agent", "demo", "generic", "--gateway", &gw.url],
    );
    assert_eq!(code, 0, "{out}{err}");
}

/// The bundle at `zip` with the artifact `path` emptied, its manifest updated and
/// signed again by a key that is not the tenant's.
fn resigned_without(zip: &Path, path: &str) -> Vec<u8> {
    use ed25519_dalek::Signer as _;
    use sha2::Digest as _;
    use std::io::{Read as _, Write as _};
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut files = Vec::new();
    let mut archive = zip::ZipArchive::new(std::fs::File::open(zip).unwrap()).unwrap();
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).unwrap();
        let name = f.name().unwrap().into_owned();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        files.push((name, data));
    }
    let emptied = files.iter_mut().find(|(n, _)| n == path).unwrap();
    emptied.1.clear();
    let digest = hex(&sha2::Sha256::digest(b""));
    let manifest = files
        .iter_mut()
        .find(|(n, _)| n == "manifest.json")
        .unwrap();
    let mut m: serde_json::Map<String, Value> = serde_json::from_slice(&manifest.1).unwrap();
    for a in m["artifacts"].as_array_mut().unwrap() {
        if a["path"] == path {
            a["sha256"] = json!(digest);
            a["size_bytes"] = json!(0);
        }
    }
    let forger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let core = sha2::Sha256::digest(paybond_gateway::audit::manifest_core_bytes(&m));
    m["signed_payload_sha256_hex"] = json!(hex(&core));
    m["ed25519_signature_hex"] = json!(hex(&forger.sign(&core).to_bytes()));
    m["signing_public_key_ed25519_hex"] = json!(hex(forger.verifying_key().as_bytes()));
    manifest.1 = serde_json::to_vec_pretty(&m).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut out);
        for (name, data) in &files {
            w.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
    }
    out.into_inner()
}

#[test]
fn the_root_key_is_not_rotated_under_a_running_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), &[]);
    let keys = env(dir.path());
    let key_file = dir.path().join(".paybond").join("paybond.key");
    let before = std::fs::read(&key_file).unwrap();

    let (code, out, err) = paybond_in(dir.path(), &["dev", "rotate-root-key"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("a gateway is running on") && err.contains("stop it first"),
        "{err}"
    );
    assert_eq!(std::fs::read(&key_file).unwrap(), before, "the key changed");

    // The gateway still mints, checks and signs with its key.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let boot: Value = client
            .post(format!("{}/v1/sandbox/guardrails/bootstrap", gw.url))
            .bearer_auth(&keys["PAYBOND_API_KEY"])
            .json(&json!({"operation": "travel.book_hotel", "requested_spend_cents": 1000}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let verified: Value = client
            .post(format!("{}/verify", gw.url))
            .bearer_auth(&keys["PAYBOND_API_KEY"])
            .json(
                &json!({"intent_id": boot["intent_id"], "token": boot["capability_token"],
                          "operation": "travel.book_hotel", "requested_spend_cents": 100,
                          "vendor_id": "vendor_acme"}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(verified["allow"], true, "{verified}");
        let signing = get(
            &gw.url,
            &keys["PAYBOND_OPERATOR_API_KEY"],
            "/v1/compliance/signing-keys",
        )
        .await;
        assert!(
            signing["keys"][0]["public_key_hex"].is_string(),
            "{signing}"
        );
    });

    // Stopped (even by SIGKILL, which leaves no chance to clean up): rotated.
    drop(gw);
    let (code, out, err) = paybond_in(dir.path(), &["dev", "rotate-root-key"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_ne!(std::fs::read(&key_file).unwrap(), before);
    let _gw = start(dir.path(), &[]);
}

#[test]
fn the_cli_counts_in_words_and_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    // Outside the repository: the start-up line names no `policies/…` path that
    // is not there.
    let mut child = Command::new(env!("CARGO_BIN_EXE_paybond"))
        .args(["dev", "loop", "--offline", "--port", "0"])
        .current_dir(dir.path())
        .env_remove("PAYBOND_DATA_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("policy: "))
        .expect("the dev loop names its policy");
    let _ = child.kill();
    let _ = child.wait();
    assert!(!first.contains("policies/"), "{first}");
    assert!(first.contains("built-in"), "{first}");

    let gw = start(dir.path(), &[]);
    let (code, out, _) = paybond_in(dir.path(), &["approvals", "list"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        "no pending approval requests (use `--state all` for every state)"
    );
    drop(gw);
    // One tenant: one chain.
    let (code, out, _) = paybond_in(dir.path(), &["ledger", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.trim().ends_with(" in 1 chain"), "{out}");
    // A mistyped env file is named as missing.
    let (code, _, err) = paybond_in(dir.path(), &["--env-file", "nope.env", "approvals", "list"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nope.env (no such file)"), "{err}");
    // A mistyped command keeps clap's tip in the JSON error.
    let (code, out, _) = paybond_in(dir.path(), &["--format", "json", "approvls"]);
    assert_eq!(code, 2);
    let v: Value = serde_json::from_str(&out).unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("a similar subcommand exists: 'approvals'"),
        "{message}"
    );
}

#[test]
fn identity_commands_make_scim_tokens_role_mappings_and_service_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), &[]);
    let json_of = |out: &str| -> Value { serde_json::from_str(out.trim()).unwrap() };
    let whoami = |key: &str| -> (u16, Value) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let resp = reqwest::Client::new()
                .get(format!("{}/v1/auth/principal", gw.url))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json().await.unwrap())
        })
    };

    // SCIM tokens: shown once, listed without the token, revoked.
    let (code, out, err) = paybond_in(
        dir.path(),
        &[
            "--format",
            "json",
            "identity",
            "scim-token",
            "create",
            "--name",
            "okta",
        ],
    );
    assert_eq!(code, 0, "{out} {err}");
    let created = json_of(&out);
    let token = created["data"]["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("paybond_scim_"));
    let (_, out, _) = paybond_in(dir.path(), &["identity", "scim-token", "list"]);
    assert!(out.contains("okta") && !out.contains(&token), "{out}");
    let id = created["data"]["id"].as_str().unwrap();
    let (code, out, _) = paybond_in(dir.path(), &["identity", "scim-token", "revoke", id]);
    assert_eq!(code, 0);
    assert!(out.contains("revoked"), "{out}");

    // Role mappings.
    let (code, out, _) = paybond_in(
        dir.path(),
        &[
            "identity",
            "role-mappings",
            "set",
            "paybond-operators",
            "operator",
        ],
    );
    assert_eq!((code, out.trim()), (0, "paybond-operators -> operator"));
    let (code, out, _) = paybond_in(
        dir.path(),
        &[
            "--format",
            "json",
            "identity",
            "role-mappings",
            "set",
            "x",
            "superuser",
        ],
    );
    assert_ne!(code, 0);
    assert_eq!(json_of(&out)["error"]["code"], "invalid_field");
    let (_, out, _) = paybond_in(
        dir.path(),
        &["--format", "json", "identity", "role-mappings", "list"],
    );
    assert_eq!(
        json_of(&out)["data"],
        json!([{"group": "paybond-operators", "role": "operator"}])
    );
    let (code, _, _) = paybond_in(
        dir.path(),
        &["identity", "role-mappings", "remove", "paybond-operators"],
    );
    assert_eq!(code, 0);

    // A service account: its key works at once, is named on what it does, and is
    // refused from the moment it is revoked.
    let (code, out, err) = paybond_in(
        dir.path(),
        &[
            "--format",
            "json",
            "identity",
            "service-accounts",
            "create",
            "ci-agent",
            "--role",
            "agent",
        ],
    );
    assert_eq!(code, 0, "{out} {err}");
    let account = json_of(&out)["data"].clone();
    let key = account["api_key"].as_str().unwrap().to_owned();
    let (status, me) = whoami(&key);
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["subject"], "ci-agent");
    assert_eq!(me["service_account_role"], "agent");
    let (code, out, _) = paybond_in(
        dir.path(),
        &[
            "--format",
            "json",
            "identity",
            "service-accounts",
            "create",
            "ci-agent",
            "--role",
            "agent",
        ],
    );
    assert_ne!(code, 0);
    assert_eq!(json_of(&out)["error"]["code"], "service_account_exists");
    let (_, out, _) = paybond_in(dir.path(), &["identity", "service-accounts", "list"]);
    assert!(out.contains("ci-agent") && !out.contains(&key), "{out}");
    let (code, _, _) = paybond_in(
        dir.path(),
        &[
            "identity",
            "service-accounts",
            "revoke",
            account["id"].as_str().unwrap(),
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(whoami(&key).0, 401);
    let (code, _, err) = paybond_in(
        dir.path(),
        &[
            "identity",
            "service-accounts",
            "create",
            "x",
            "--role",
            "admin",
        ],
    );
    assert_eq!(code, 2, "{err}");

    // Single sign-on: an issuer that does not answer is refused; a missing secret
    // file is named.
    std::fs::write(dir.path().join("secret.txt"), "s3cret\n").unwrap();
    let (code, out, _) = paybond_in(
        dir.path(),
        &[
            "--format",
            "json",
            "identity",
            "oidc",
            "configure",
            "--issuer",
            "http://127.0.0.1:9",
            "--client-id",
            "console",
            "--client-secret-file",
            "secret.txt",
        ],
    );
    assert_ne!(code, 0);
    assert_eq!(json_of(&out)["error"]["code"], "oidc_issuer_unreachable");
    let (code, _, err) = paybond_in(
        dir.path(),
        &[
            "identity",
            "oidc",
            "configure",
            "--issuer",
            "http://127.0.0.1:9",
            "--client-id",
            "c",
            "--client-secret-file",
            "nowhere.txt",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("nowhere.txt"), "{err}");
    // Only a tenant admin key does any of this.
    let keys = env(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_paybond"))
        .args(["--format", "json", "identity", "role-mappings", "list"])
        .current_dir(dir.path())
        .env("PAYBOND_ADMIN_API_KEY", &keys["PAYBOND_OPERATOR_API_KEY"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(
        json_of(&String::from_utf8_lossy(&out.stdout))["error"]["code"],
        "forbidden_role"
    );
}
