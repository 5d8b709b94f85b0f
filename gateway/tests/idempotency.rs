//! A verify's idempotency key points at its decision's row instead of holding a
//! second copy of the answer; keys whose rows hold a copy (as earlier versions
//! stored them) still replay it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::Blocking;

use common::{Fixture, verify_request};
use paybond_gateway::{EngineConfig, Storage};
use paybond_middleware_core::wire::VerifyResult;

#[test]
fn a_verify_key_points_at_its_decision_and_a_stored_copy_still_replays() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("paybond.db");
    let fx = Fixture::with_config(EngineConfig::new(Storage::File(db.clone())));
    let (intent, token) = fx.intent(10_000);
    let keyed = |key: &str| {
        let mut req = verify_request(intent, &token, 500);
        req.idempotency_key = Some(key.to_owned());
        req
    };
    let first = fx.engine.verify_now(&fx.agent, &keyed("k-1")).unwrap();
    assert!(first.allow && !first.checks.is_empty(), "{first:?}");
    let id = first.decision_id.unwrap().to_string();

    let conn = rusqlite::Connection::open(&db).unwrap();
    // Keys are stored under the id of the API key that sent them.
    let scoped = |key: &str| format!("{}/{key}", fx.agent.key_id);
    let stored = |key: &str| -> String {
        conn.query_row(
            "SELECT response FROM idempotency WHERE key = ?1",
            [scoped(key)],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(stored("k-1"), format!("decision:{id}"));
    let row: String = conn
        .query_row("SELECT response FROM decisions WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(serde_json::from_str::<VerifyResult>(&row).unwrap(), first);
    assert_eq!(
        fx.engine.verify_now(&fx.agent, &keyed("k-1")).unwrap(),
        first
    );

    // A key stored with a copy of its answer answers that copy.
    let second = fx.engine.verify_now(&fx.agent, &keyed("k-2")).unwrap();
    let mut copy = second.clone();
    copy.message = Some("the stored copy".to_owned());
    conn.execute(
        "UPDATE idempotency SET response = ?1 WHERE key = ?2",
        [serde_json::to_string(&copy).unwrap(), scoped("k-2")],
    )
    .unwrap();
    assert_eq!(
        fx.engine.verify_now(&fx.agent, &keyed("k-2")).unwrap(),
        copy
    );
    // Each key decided once.
    assert_ne!(first.decision_id, second.decision_id);
    let decisions: i64 = conn
        .query_row("SELECT count(*) FROM decisions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(decisions, 2);
}

/// Keyed verifies sent at once, ten of each key one after another, so that a
/// key's requests meet in the writer's groups (where keys are read past the
/// writes held back): each key decides once, every copy answers that decision,
/// and the intent holds each key's amount once.
async fn concurrent_copies_of_a_key_decide_once(config: EngineConfig) {
    let fx = Fixture::with_config(config);
    let (intent, token) = fx.intent(50_000);
    let mut answers = Vec::new();
    for key in 0..40 {
        for copy in 0..10 {
            let mut req = verify_request(intent, &token, 100 + key);
            req.idempotency_key = Some(format!("key-{key}"));
            let (engine, agent) = (fx.engine.clone(), fx.agent.clone());
            answers.push((
                key,
                copy,
                tokio::spawn(async move { engine.verify(agent, req).await }),
            ));
        }
    }
    let mut decided = std::collections::HashMap::new();
    for (key, copy, answer) in answers {
        let answer = answer.await.unwrap().unwrap();
        assert!(answer.allow, "key {key}, copy {copy}: {answer:?}");
        let first = decided.entry(key).or_insert_with(|| answer.clone());
        assert_eq!(*first, answer, "key {key}, copy {copy}");
    }
    let ids: std::collections::HashSet<_> = decided.values().map(|a| a.decision_id).collect();
    assert_eq!(ids.len(), 40);
    let view = fx.engine.get_intent(&fx.agent, intent).await.unwrap();
    assert_eq!(view.reserved_cents, (0..40).map(|k| 100 + k).sum::<u64>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_a_key_decide_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig::new(Storage::File(dir.path().join("paybond.db")));
    concurrent_copies_of_a_key_decide_once(config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_a_key_decide_once_on_postgres() {
    if let Some(config) = common::pg_config() {
        concurrent_copies_of_a_key_decide_once(config).await;
    }
}
