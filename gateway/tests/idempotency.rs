//! A verify's idempotency key points at its decision's row instead of holding a
//! second copy of the answer; keys whose rows hold a copy (as earlier versions
//! stored them) still replay it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

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
    let first = fx.engine.verify(&fx.agent, &keyed("k-1")).unwrap();
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
    assert_eq!(fx.engine.verify(&fx.agent, &keyed("k-1")).unwrap(), first);

    // A key stored with a copy of its answer answers that copy.
    let second = fx.engine.verify(&fx.agent, &keyed("k-2")).unwrap();
    let mut copy = second.clone();
    copy.message = Some("the stored copy".to_owned());
    conn.execute(
        "UPDATE idempotency SET response = ?1 WHERE key = ?2",
        [serde_json::to_string(&copy).unwrap(), scoped("k-2")],
    )
    .unwrap();
    assert_eq!(fx.engine.verify(&fx.agent, &keyed("k-2")).unwrap(), copy);
    // Each key decided once.
    assert_ne!(first.decision_id, second.decision_id);
    let decisions: i64 = conn
        .query_row("SELECT count(*) FROM decisions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(decisions, 2);
}
