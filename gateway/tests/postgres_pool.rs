//! A replica on PostgreSQL outlives its connections: when the server closes them
//! (a restart, a failover, an administrator), requests fail closed for a moment and
//! the pool opens new connections instead of running out.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::block_on;

use std::time::{Duration, Instant};

use common::Fixture;
use paybond_gateway::{EngineConfig, PolicyFile, Storage};
use paybond_middleware_core::wire::SandboxBootstrapRequest;

/// Closes every other connection to the database of `url`, as an administrator would.
fn terminate_connections(url: &str) -> u64 {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let rows = client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap();
            rows.len() as u64
        })
    })
    .join()
    .unwrap()
}

#[test]
fn the_pool_replaces_connections_the_server_closed() {
    let Some(url) = common::pg_database() else {
        return;
    };
    let fixture = Fixture::with_config(EngineConfig::new(Storage::Postgres(url.clone())));
    fixture.intent(1_000);

    let closed = terminate_connections(url.expose_secret());
    assert!(closed >= 1, "the replica's connections were open");

    // Each dead connection fails the request that finds it (fail closed); after at
    // most one failure per pooled connection every request succeeds again, and
    // none waits for a connection that will never come back.
    let started = Instant::now();
    let mut failures = 0;
    let mut successes_in_a_row = 0;
    while successes_in_a_row < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the pool did not recover ({failures} failures)"
        );
        let (engine, agent) = (fixture.engine.clone(), fixture.agent.clone());
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let request = SandboxBootstrapRequest {
                operation: common::BOOK.to_owned(),
                requested_spend_cents: 1_000,
                currency: Some("usd".to_owned()),
                evidence_schema: None,
                metadata: None,
                idempotency_key: None,
            };
            let _ = send.send(block_on(engine.bootstrap_sandbox(&agent, &request)).is_ok());
        });
        let succeeded = receive
            .recv_timeout(Duration::from_secs(10))
            .expect("a request waited 10 s for a connection");
        if succeeded {
            successes_in_a_row += 1;
        } else {
            failures += 1;
            successes_in_a_row = 0;
        }
    }
    assert!(
        failures <= 16,
        "{failures} requests failed after the connections closed"
    );
}

/// A TCP proxy on loopback to `target` that can cut the database off: every
/// connection through it closed and new ones refused until it is restored.
struct Proxy {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    fn start(target: String) -> Self {
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let (send_port, port) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                send_port
                    .send(listener.local_addr().unwrap().port())
                    .unwrap();
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    if *cut_rx.borrow() {
                        continue; // dropped: refused
                    }
                    let (target, mut cut) = (target.clone(), cut_rx.clone());
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.wait_for(|c| *c) => {}
                        }
                    });
                }
            });
        });
        Self {
            port: port.recv().unwrap(),
            cut,
        }
    }

    fn cut_off(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_its_database_fails_closed_with_503() {
    let Some(url) = common::pg_database() else {
        return;
    };
    // postgres://user@host:port/db → the same database through the proxy.
    let raw = url.expose_secret().to_owned();
    let (before_host, rest) = raw.split_once('@').unwrap();
    let (host_port, database) = rest.split_once('/').unwrap();
    let proxy = Proxy::start(host_port.to_owned());
    let proxied = paybond_gateway::DatabaseUrl::parse(&format!(
        "{before_host}@127.0.0.1:{}/{database}",
        proxy.port
    ))
    .unwrap();
    let fixture = tokio::task::spawn_blocking(move || {
        Fixture::with_config(EngineConfig::new(Storage::Postgres(proxied)))
    })
    .await
    .unwrap();
    let base = common::serve(fixture.engine.clone()).await;
    let (intent, token) = {
        let fx = &fixture;
        tokio::task::block_in_place(|| fx.intent(60_000))
    };
    let agent = fixture.keys.agent.expose_secret().to_owned();
    let body = serde_json::json!({"intent_id": intent, "token": token.expose_secret(),
        "operation": common::BOOK, "requested_spend_cents": 100, "vendor_id": "vendor_acme"})
    .to_string();
    let verify = || async {
        let response = reqwest::Client::new()
            .post(format!("{base}/verify"))
            .bearer_auth(&agent)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let status = response.status().as_u16();
        let answer: serde_json::Value = response.json().await.unwrap();
        (status, answer, retry_after)
    };
    let (status, answer, _) = verify().await;
    assert_eq!(
        (status, answer["allow"].clone()),
        (200, serde_json::json!(true))
    );

    // Cut off: every answer is 503 store_unavailable with a Retry-After, never a
    // decision and never a 500.
    proxy.cut_off(true);
    for _ in 0..10 {
        let (status, answer, retry_after) = verify().await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (503, Some("store_unavailable")),
            "{answer}"
        );
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert!(!answer.to_string().contains("127.0.0.1"), "{answer}");
    }

    // Back: decisions again, within seconds.
    proxy.cut_off(false);
    let started = Instant::now();
    loop {
        let (status, answer, _) = verify().await;
        if status == 200 {
            assert_eq!(answer["allow"], true, "{answer}");
            break;
        }
        assert_eq!(status, 503, "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replica reads its tenant's policy version in each group of the tenant's
/// writes, under the tenant's lock: a policy another replica published is in
/// force from the next verify on, whatever the first replica had parsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_published_on_one_replica_decides_the_next_verify_on_another() {
    let Some(url) = common::pg_database() else {
        return;
    };
    let (fixture, other, intent, token) = tokio::task::spawn_blocking(move || {
        let fixture = Fixture::with_config(EngineConfig::new(Storage::Postgres(url.clone())));
        let other = std::sync::Arc::new(
            paybond_gateway::Engine::open(EngineConfig::new(Storage::Postgres(url))).unwrap(),
        );
        let tenant = fixture.agent.tenant_id.clone();
        block_on(
            fixture
                .engine
                .publish_tenant_policy_text(&tenant, &PolicyFile::bundled_tenant_overlay()),
        )
        .unwrap();
        let (intent, token) = fixture.intent(60_000);
        (fixture, other, intent, token)
    })
    .await
    .unwrap();
    let agent = other
        .authenticate(fixture.keys.agent.expose_secret())
        .await
        .unwrap();
    let verify = |cents| other.verify(agent.clone(), common::verify_request(intent, &token, cents));

    // Under the overlay's approval threshold (15,000 cents): allowed.
    let first = verify(10_000).await.unwrap();
    assert!(first.allow, "{first:?}");
    let v1 = first.policy_version.unwrap();

    // Published on the fixture's replica: approval above 5,000 cents.
    let mut lower = PolicyFile::bundled_tenant_overlay();
    lower.text = lower.text.replace(
        "approval_threshold_cents: 15000",
        "approval_threshold_cents: 5000",
    );
    let tenant = fixture.agent.tenant_id.clone();
    let engine = fixture.engine.clone();
    let published = engine
        .publish_tenant_policy_text(&tenant, &lower)
        .await
        .unwrap();
    assert!(published.version > v1);

    // The other replica's next verify of the same amount is held, under the new version.
    let second = verify(10_000).await.unwrap();
    assert!(!second.allow && second.approval_required, "{second:?}");
    assert_eq!(second.policy_version, Some(published.version));
    assert_eq!(
        second.policy_digest.as_deref(),
        Some(published.digest.as_str())
    );
}

/// Evidence on a fleet is checked against the tenant's policy as stored, read in
/// the tenant's group: patterns published on one replica refuse the next evidence
/// on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_patterns_published_on_one_replica_refuse_evidence_on_another() {
    let Some(url) = common::pg_database() else {
        return;
    };
    let fixture = Fixture::with_config(EngineConfig::new(Storage::Postgres(url.clone())));
    let other = std::sync::Arc::new(
        paybond_gateway::Engine::open(EngineConfig::new(Storage::Postgres(url))).unwrap(),
    );
    let tenant = fixture.agent.tenant_id.clone();
    fixture
        .engine
        .publish_tenant_policy_text(&tenant, &PolicyFile::bundled_tenant_overlay())
        .await
        .unwrap();
    let (intent, _) = fixture.intent(60_000);
    let agent = other
        .authenticate(fixture.keys.agent.expose_secret())
        .await
        .unwrap();
    let evidence = |key: &str| {
        other.submit_evidence(
            agent.clone(),
            intent,
            paybond_middleware_core::wire::EvidenceRequest {
                payload: Some(serde_json::json!({
                    "status": "completed",
                    "cost_cents": 100,
                    "note": "paid with 4111111111111111",
                })),
                operation: Some(common::BOOK.into()),
                ..Default::default()
            },
            Some(key.to_owned()),
        )
    };

    // No pattern yet: recorded.
    evidence("ev-1").await.unwrap();

    // Published on the fixture's replica: card numbers are sensitive.
    let mut guarded = PolicyFile::bundled_tenant_overlay();
    guarded
        .text
        .push_str("  data:\n    sensitive_patterns: ['\\b4[0-9]{15}\\b']\n");
    fixture
        .engine
        .publish_tenant_policy_text(&tenant, &guarded)
        .await
        .unwrap();

    // The other replica refuses the same evidence now, naming where.
    let refused = evidence("ev-2").await.unwrap_err();
    assert_eq!(refused.status, 422, "{refused:?}");
    assert_eq!(refused.code, "sensitive_data_in_evidence");
    assert!(
        refused.message.contains("payload.note"),
        "{}",
        refused.message
    );
}

/// A replica keeps what its last group of a tenant's decisions read while the
/// tenant's ledger stays where that group left it: what another replica decides
/// in between is seen before the next decision, so together they never spend
/// past a budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_sees_what_another_decided_before_its_next_decision() {
    let Some(url) = common::pg_database() else {
        return;
    };
    let f = Fixture::with_config(EngineConfig::new(Storage::Postgres(url.clone())));
    let other = std::sync::Arc::new(
        paybond_gateway::Engine::open(EngineConfig::new(Storage::Postgres(url))).unwrap(),
    );
    let (intent, token) = f.intent(100);
    let verify = async |engine: &std::sync::Arc<paybond_gateway::Engine>, cents| {
        engine
            .verify(
                f.agent.clone(),
                common::verify_request(intent, &token, cents),
            )
            .await
    };
    // The first replica decides twice in a row: the second decision's group
    // starts from what the first one read.
    assert!(verify(&f.engine, 30).await.unwrap().allow);
    let r = verify(&f.engine, 30).await.unwrap();
    assert!(r.allow, "{r:?}");
    assert_eq!(r.remaining_cents, Some(40));
    // The other replica reserves 30 of the 40 left.
    let r = verify(&other, 30).await.unwrap();
    assert!(r.allow, "{r:?}");
    assert_eq!(r.remaining_cents, Some(10));
    // The first sees it: 20 more would overspend.
    let r = verify(&f.engine, 20).await.unwrap();
    assert!(!r.allow);
    assert_eq!(r.code.as_deref(), Some("intent_budget_exceeded"), "{r:?}");
    // A release on the other replica returns its amount to the first one's budget.
    let released = other
        .complete(
            f.agent.clone(),
            verify(&other, 10).await.unwrap().decision_id.unwrap(),
            paybond_middleware_core::wire::CompleteRequest {
                outcome: paybond_middleware_core::wire::Finalization::Released,
                actual_spend_cents: None,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(released.returned_cents, Some(10), "{released:?}");
    let r = verify(&f.engine, 10).await.unwrap();
    assert!(r.allow, "{r:?}");
    assert_eq!(r.remaining_cents, Some(0));
    let r = verify(&f.engine, 1).await.unwrap();
    assert!(!r.allow, "{r:?}");

    // A reservation the first replica made and holds, finalized on the other, is
    // finalized once: the first one's next complete of it is refused.
    let id = allowed_decision(&f.engine, &f.agent, intent, &token).await;
    let done = |outcome| paybond_middleware_core::wire::CompleteRequest {
        outcome,
        actual_spend_cents: None,
    };
    other
        .complete(
            f.agent.clone(),
            id,
            done(paybond_middleware_core::wire::Finalization::Consumed),
            None,
        )
        .await
        .unwrap();
    let again = f
        .engine
        .complete(
            f.agent.clone(),
            id,
            done(paybond_middleware_core::wire::Finalization::Released),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(again.code, "decision_already_finalized", "{again:?}");

    // Evidence on the other replica for a reservation the first one made: its
    // amount (0 cents) bounds the cost, read with the intent.
    let id = allowed_decision(&f.engine, &f.agent, intent, &token).await;
    let evidence = |decision: uuid::Uuid, cost: u64| {
        other.submit_evidence(
            f.agent.clone(),
            intent,
            paybond_middleware_core::wire::EvidenceRequest {
                payload: Some(serde_json::json!({"status": "completed", "cost_cents": cost})),
                metadata: Some(serde_json::json!({"decision_id": decision})),
                ..Default::default()
            },
            None,
        )
    };
    assert!(evidence(id, 0).await.unwrap().predicate_passed);
    assert!(!evidence(id, 1).await.unwrap().predicate_passed);
    let unknown = evidence(uuid::Uuid::now_v7(), 0).await.unwrap_err();
    assert_eq!(unknown.code, "decision_not_found", "{unknown:?}");
}

/// An allowed verify of 0 cents on `intent`: its decision id.
async fn allowed_decision(
    engine: &std::sync::Arc<paybond_gateway::Engine>,
    agent: &paybond_middleware_core::wire::Principal,
    intent: uuid::Uuid,
    token: &paybond_middleware_core::CapabilityToken,
) -> uuid::Uuid {
    let r = engine
        .verify(agent.clone(), common::verify_request(intent, token, 0))
        .await
        .unwrap();
    assert!(r.allow, "{r:?}");
    r.decision_id.unwrap()
}
