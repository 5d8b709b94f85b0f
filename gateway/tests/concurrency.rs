//! 64 concurrent agents reserving random amounts against shared caps: consumed plus
//! open reservations never exceed any cap, checked while they run and at the end.
//! Once with every agent waiting for the engine's answers on a blocking-pool thread,
//! once with half of them awaiting them on the runtime (queued to the SQLite writer
//! thread without a thread of their own), so the groups the store commits hold both.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::Blocking;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{BOOK, Fixture};
use paybond_gateway::{EngineConfig, PolicyFile, Storage};
use paybond_middleware_core::wire::{CompleteRequest, Finalization, VerifyRequest, VerifyResult};
use uuid::Uuid;

const TENANT_CAP: u64 = 80_000;
const VENDOR_CAP: u64 = 30_000;
const BUDGET: u64 = 100_000;

const POLICY: &str = "
version: 1
name: load
default_deny: true
tools:
  travel.book_hotel: {side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}
spend_controls:
  tools:
    travel.book_hotel: {max_per_call_cents: 5000}
  caps:
    - {scope: tenant, window: day, limit_cents: 80000, timezone: UTC}
    - {scope: vendor, key: vendor_a, window: day, limit_cents: 30000}
";

/// Spend held against each cap, read on a connection of its own (WAL readers do not block the writer).
fn held(db: &rusqlite::Connection, now: i64) -> (u64, u64) {
    let spent = "COALESCE(SUM(CASE WHEN state = 'open' AND expires_ms > ?1 THEN amount_cents
                 WHEN state = 'consumed' THEN actual_cents ELSE 0 END), 0)";
    let tenant: u64 = db
        .query_row(&format!("SELECT {spent} FROM reservations"), [now], |r| {
            r.get(0)
        })
        .unwrap();
    let vendor: u64 = db
        .query_row(
            &format!("SELECT {spent} FROM reservations WHERE vendor = 'vendor_a'"),
            [now],
            |r| r.get(0),
        )
        .unwrap();
    (tenant, vendor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_never_exceed_a_cap() {
    load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_async_and_blocking_reservations_never_exceed_a_cap() {
    load(true).await;
}

/// A verify, awaited, or waited for on the blocking pool.
async fn verify(fx: &Fixture, asynchronous: bool, req: VerifyRequest) -> VerifyResult {
    let (engine, principal) = (fx.engine.clone(), fx.agent.clone());
    if asynchronous {
        engine.verify(principal, req).await.unwrap()
    } else {
        tokio::task::spawn_blocking(move || engine.verify_now(&principal, &req))
            .await
            .unwrap()
            .unwrap()
    }
}

/// A completion, likewise.
async fn complete(fx: &Fixture, asynchronous: bool, decision: Uuid, req: CompleteRequest) {
    let (engine, principal) = (fx.engine.clone(), fx.agent.clone());
    if asynchronous {
        engine
            .complete(principal, decision, req, None)
            .await
            .unwrap();
    } else {
        tokio::task::spawn_blocking(move || engine.complete_now(&principal, decision, &req, None))
            .await
            .unwrap()
            .unwrap();
    }
}

/// 64 agents, the odd ones on the async calls when `mixed`.
async fn load(mixed: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paybond.db");
    let mut config = EngineConfig::new(Storage::File(path.clone()));
    config.default_org_policy = None;
    config.default_tenant_policy = Some(PolicyFile {
        text: POLICY.to_owned(),
        file: "load.yaml".to_owned(),
    });
    let fx = Arc::new(Fixture::with_config(config));
    let (intent, token) = fx.intent(BUDGET);

    let done = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicU64::new(0));
    let monitor = {
        let done = done.clone();
        let checks = checks.clone();
        let path = path.clone();
        std::thread::spawn(move || {
            let db = rusqlite::Connection::open(&path).unwrap();
            let mut violations = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let now = jiff::Timestamp::now().as_millisecond();
                let (tenant, vendor) = held(&db, now);
                if tenant > TENANT_CAP || vendor > VENDOR_CAP {
                    violations.push((tenant, vendor));
                }
                checks.fetch_add(1, Ordering::SeqCst);
            }
            violations
        })
    };

    let allows = Arc::new(AtomicU64::new(0));
    let denies = Arc::new(AtomicU64::new(0));
    let agents: Vec<_> = (0..64_u64)
        .map(|agent| {
            let fx = fx.clone();
            let token = token.clone();
            let (allows, denies) = (allows.clone(), denies.clone());
            let asynchronous = mixed && agent % 2 == 1;
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(agent);
                for i in 0..30 {
                    let amount = rng.u64(100..=5_000);
                    let vendor = if rng.bool() { "vendor_a" } else { "vendor_b" };
                    let req = VerifyRequest {
                        intent_id: intent,
                        token: token.clone(),
                        operation: BOOK.to_owned(),
                        requested_spend_cents: amount,
                        vendor_id: Some(vendor.to_owned()),
                        task_id: None,
                        workflow_id: None,
                        tool_call_id: Some(format!("a{agent}-{i}")),
                        tool_name: Some(BOOK.to_owned()),
                        currency: None,
                        agent_subject: Some(format!("agent-{agent}")),
                        approval_token: None,
                        idempotency_key: Some(format!("a{agent}-{i}")),
                        phase: None,
                    };
                    let r = verify(&fx, asynchronous, req.clone()).await;
                    if i == 0 {
                        // The same key and body answers the same decision, either way.
                        let again = verify(&fx, !asynchronous, req).await;
                        assert_eq!(again.decision_id, r.decision_id);
                        assert_eq!(again.allow, r.allow);
                    }
                    if !r.allow {
                        denies.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    allows.fetch_add(1, Ordering::SeqCst);
                    let decision = r.decision_id.unwrap();
                    // Settle some for less, release some, leave some open.
                    let finalization = match rng.u8(..3) {
                        0 => Some(CompleteRequest {
                            outcome: Finalization::Consumed,
                            actual_spend_cents: Some(rng.u64(0..=amount)),
                        }),
                        1 => Some(CompleteRequest {
                            outcome: Finalization::Released,
                            actual_spend_cents: None,
                        }),
                        _ => None,
                    };
                    if let Some(c) = finalization {
                        complete(&fx, asynchronous, decision, c).await;
                    }
                }
            })
        })
        .collect();
    for a in agents {
        a.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let violations = monitor.join().unwrap();

    let db = rusqlite::Connection::open(&path).unwrap();
    let (tenant, vendor) = held(&db, jiff::Timestamp::now().as_millisecond());
    let allows = allows.load(Ordering::SeqCst);
    let denies = denies.load(Ordering::SeqCst);
    eprintln!(
        "{allows} allows, {denies} denies, {} checks during the run; held at the end: tenant {tenant}/{TENANT_CAP}, vendor_a {vendor}/{VENDOR_CAP}",
        checks.load(Ordering::SeqCst)
    );
    assert!(
        violations.is_empty(),
        "caps exceeded during the run: {violations:?}"
    );
    assert!(tenant <= TENANT_CAP && vendor <= VENDOR_CAP);
    // The caps were actually contended: some calls were refused by them.
    assert!(denies > 0 && allows > 0, "{allows} allows, {denies} denies");
    assert!(checks.load(Ordering::SeqCst) > 0);
    // The intent's running totals (what verify checks) agree with its reservations.
    let view = fx.engine.get_intent(&fx.agent, intent).await.unwrap();
    let (consumed, open): (u64, u64) = db
        .query_row(
            "SELECT COALESCE(SUM(CASE WHEN state = 'consumed' THEN actual_cents END), 0),
                    COALESCE(SUM(CASE WHEN state = 'open' THEN amount_cents END), 0)
             FROM reservations WHERE intent_id = ?1",
            [intent.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((view.consumed_cents, view.reserved_cents), (consumed, open));
    assert!(view.open_reservations > 0);
    assert!(fx.engine.verify_ledger().await.unwrap().valid);
}
