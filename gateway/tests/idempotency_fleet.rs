//! On a fleet's PostgreSQL database a new idempotency key is looked up before the
//! tenant's lock. The same keyed verify sent at once to two replicas, many times
//! over, is still decided once: every answer that is an allow names the one
//! decision, a request that lost the race is refused 503 `concurrent_request`
//! (nothing of it kept) and its retry gets the stored answer, and the intent holds
//! one reservation per key.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Barrier};

use common::{Fixture, verify_request};
use paybond_gateway::{Engine, EngineConfig, Storage};

#[test]
fn the_same_keyed_verify_at_once_on_two_replicas_is_decided_once() {
    let Some(url) = common::pg_database() else {
        return;
    };
    let fx = Fixture::with_config(EngineConfig::new(Storage::Postgres(url.clone())));
    let other = Arc::new(Engine::open(EngineConfig::new(Storage::Postgres(url))).unwrap());
    let (intent, token) = fx.intent(60_000);
    const KEYS: usize = 40;
    const SENDERS: usize = 6;
    let mut answers: HashMap<usize, Vec<Result<uuid::Uuid, &'static str>>> = HashMap::new();
    for round in 0..KEYS {
        let mut req = verify_request(intent, &token, 100);
        req.idempotency_key = Some(format!("same-{round}"));
        let barrier = Arc::new(Barrier::new(SENDERS));
        let senders: Vec<_> = (0..SENDERS)
            .map(|i| {
                let engine = if i % 2 == 0 {
                    fx.engine.clone()
                } else {
                    other.clone()
                };
                let (agent, req, barrier) = (fx.agent.clone(), req.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    match engine.verify(&agent, &req) {
                        Ok(r) => {
                            assert!(r.allow, "{r:?}");
                            Ok(r.decision_id.unwrap())
                        }
                        Err(e) => {
                            assert_eq!((e.status, e.code), (503, "concurrent_request"), "{e:?}");
                            assert_eq!(e.retry_after, Some(1));
                            Err(e.code)
                        }
                    }
                })
            })
            .collect();
        answers.insert(
            round,
            senders.into_iter().map(|s| s.join().unwrap()).collect(),
        );
        // A retry of the key, after the race, gets the one answer.
        let again = fx.engine.verify(&fx.agent, &req).unwrap();
        let decided: BTreeSet<uuid::Uuid> = answers[&round]
            .iter()
            .filter_map(|a| a.as_ref().ok().copied())
            .chain([again.decision_id.unwrap()])
            .collect();
        assert_eq!(decided.len(), 1, "key {round} was decided more than once");
    }
    let all: Vec<&Result<uuid::Uuid, &str>> = answers.values().flatten().collect();
    let refused = all.iter().filter(|a| a.is_err()).count();
    let (allowed, refused) = (all.len() - refused, refused);
    eprintln!(
        "{} answers named the key's decision, {} were refused as concurrent",
        allowed, refused
    );
    // One reservation of 100 per key, whatever the races.
    let view = fx.engine.get_intent(&fx.agent, intent).unwrap();
    assert_eq!(view.reserved_cents, 100 * KEYS as u64, "{view:?}");
}
