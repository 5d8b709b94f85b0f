//! The writer keeps what a decision reads in memory. Two engines on one SQLite file
//! (two processes on one data directory) each keep their own: what one commits,
//! the other sees before it decides, so together they never spend past a budget.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::block_on;

use common::Blocking;

use std::sync::Arc;

use common::{Fixture, verify_request};
use paybond_gateway::{Engine, EngineConfig, Storage};
use paybond_middleware_core::wire::{CompleteRequest, Finalization};

fn on_file(path: &std::path::Path) -> EngineConfig {
    EngineConfig::new(Storage::File(path.to_owned()))
}

#[test]
fn a_second_engine_on_the_same_file_is_seen_before_the_next_decision() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("paybond.db");
    let f = Fixture::with_config(on_file(&db));
    let other = Arc::new(Engine::open(on_file(&db)).unwrap());
    let (intent, token) = f.intent(100);

    // The first engine reads the intent and keeps it.
    let r = f
        .engine
        .verify_now(&f.agent, &verify_request(intent, &token, 60))
        .unwrap();
    assert!(r.allow, "{r:?}");
    // The second reserves most of what is left.
    let r = other
        .verify_now(&f.agent, &verify_request(intent, &token, 30))
        .unwrap();
    assert!(r.allow, "{r:?}");
    assert_eq!(r.remaining_cents, Some(10));
    // The first sees it: 20 more would overspend.
    let r = f
        .engine
        .verify_now(&f.agent, &verify_request(intent, &token, 20))
        .unwrap();
    assert!(!r.allow);
    assert_eq!(r.code.as_deref(), Some("intent_budget_exceeded"), "{r:?}");
    let r = f
        .engine
        .verify_now(&f.agent, &verify_request(intent, &token, 10))
        .unwrap();
    assert!(r.allow, "{r:?}");
    assert_eq!(r.remaining_cents, Some(0));

    // A release by the other engine returns its amount to the first one's budget.
    let released = other
        .complete_now(
            &f.agent,
            r.decision_id.unwrap(),
            &CompleteRequest {
                outcome: Finalization::Released,
                actual_spend_cents: None,
            },
            None,
        )
        .unwrap();
    assert_eq!(released.returned_cents, Some(10));
    let r = f
        .engine
        .verify_now(&f.agent, &verify_request(intent, &token, 10))
        .unwrap();
    assert!(r.allow, "{r:?}");

    // The first engine made that reservation and holds it open; the other
    // consumes it. The first one's complete of it is refused: finalized once.
    let id = r.decision_id.unwrap();
    let done = |outcome| CompleteRequest {
        outcome,
        actual_spend_cents: None,
    };
    other
        .complete_now(&f.agent, id, &done(Finalization::Consumed), None)
        .unwrap();
    let again = f
        .engine
        .complete_now(&f.agent, id, &done(Finalization::Released), None)
        .unwrap_err();
    assert_eq!(again.code, "decision_already_finalized", "{again:?}");

    // Both ledgers' tips are the file's: the chain the two wrote is one.
    assert!(block_on(f.engine.verify_ledger()).unwrap().valid);
}

#[test]
fn two_engines_deciding_at_once_on_one_file_never_overspend() {
    const BUDGET: u64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("paybond.db");
    let f = Fixture::with_config(on_file(&db));
    let engines = [
        f.engine.clone(),
        Arc::new(Engine::open(on_file(&db)).unwrap()),
    ];
    let (intent, token) = f.intent(BUDGET);
    let allowed: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|n| {
                let engine = engines[n % 2].clone();
                let (agent, token) = (&f.agent, &token);
                s.spawn(move || {
                    let mut cents = 0;
                    for i in 0..60_u64 {
                        let amount = 7 + (i * 13 + n as u64) % 50;
                        let r = engine
                            .verify_now(agent, &verify_request(intent, token, amount))
                            .unwrap();
                        if r.allow {
                            cents += amount;
                        }
                    }
                    cents
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert!(allowed <= BUDGET, "{allowed} cents allowed of {BUDGET}");
    // Every cent the two allowed is reserved in the file, and nothing else.
    let reserved = block_on(f.engine.get_intent(&f.agent, intent))
        .unwrap()
        .reserved_cents;
    assert_eq!(reserved, allowed);
    assert!(block_on(f.engine.verify_ledger()).unwrap().valid);
}

#[test]
fn many_callers_on_one_file_never_overspend_and_every_allow_answered_is_kept() {
    const BUDGET: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("paybond.db");
    // The booking tool without the bundled policy's hourly call limit.
    let mut config = on_file(&db);
    config.default_org_policy = None;
    config.default_tenant_policy = Some(paybond_gateway::PolicyFile {
        text: format!(
            "version: 1\nname: load\ndefault_deny: true\ntools:\n  {}: {{side_effecting: true, \
             spend_from_args: amount_cents, evidence_preset: cost_and_completion}}\n",
            common::BOOK
        ),
        file: "load.yaml".into(),
    });
    let Fixture {
        engine,
        keys,
        agent,
        ..
    } = Fixture::with_config(config);
    let (intent, token) = {
        let r = block_on(engine.bootstrap_sandbox(
            &agent,
            &paybond_middleware_core::wire::SandboxBootstrapRequest {
                operation: common::BOOK.to_owned(),
                requested_spend_cents: BUDGET,
                ..Default::default()
            },
        ))
        .unwrap();
        (r.intent_id, r.capability_token)
    };
    // More callers than a group takes, so that groups are committed behind the
    // writer while it decides the next; they ask about twice the budget.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let allowed: u64 = rt.block_on(async {
        let callers: Vec<_> = (0..96_u64)
            .map(|n| {
                let (engine, agent, token) = (engine.clone(), agent.clone(), token.clone());
                tokio::spawn(async move {
                    let mut cents = 0;
                    for i in 0..40_u64 {
                        let amount = 3 + (i * 7 + n) % 20;
                        let r = engine
                            .verify(agent.clone(), verify_request(intent, &token, amount))
                            .await
                            .unwrap();
                        if r.allow {
                            cents += amount;
                        }
                    }
                    cents
                })
            })
            .collect();
        let mut sum = 0;
        for c in callers {
            sum += c.await.unwrap();
        }
        sum
    });
    assert!(allowed <= BUDGET, "{allowed} cents allowed of {BUDGET}");
    assert!(allowed > BUDGET - 100, "the budget ran out: {allowed}");
    drop(rt);
    drop(engine);
    // Reopened, the file holds every allow that was answered, and nothing else.
    let engine = Arc::new(Engine::open(on_file(&db)).unwrap());
    let agent = block_on(engine.authenticate(keys.agent.expose_secret())).unwrap();
    let reserved = block_on(engine.get_intent(&agent, intent))
        .unwrap()
        .reserved_cents;
    assert_eq!(reserved, allowed);
    assert!(block_on(engine.verify_ledger()).unwrap().valid);
}
