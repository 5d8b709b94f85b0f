//! What-if replay: a store's recorded verifies decided again under another policy,
//! in order, with the budgets as that policy would have left them; the store itself
//! is only read.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::block_on;

use common::Blocking;

use std::path::{Path, PathBuf};

use common::{Fixture, verify_request};
use paybond_gateway::{
    Clock, Engine, EngineConfig, PolicyFile, ReplayOptions, ReplayReport, Storage,
};
use paybond_middleware_core::wire::{CompleteRequest, Finalization};
use uuid::Uuid;

const START_MS: i64 = 1_790_000_000_000;

/// The canonical scenario's verifies, recorded in a SQLite file one second apart:
/// 120.00 consumed, 187.00 held then approved and consumed, 250.00 denied over the
/// cap, 90.00 released. Answers the file and the clock's time after each call.
fn record(dir: &Path) -> PathBuf {
    let path = dir.join("paybond.db");
    record_on(Storage::File(path.clone()));
    path
}

/// The canonical scenario's verifies, recorded on `storage`.
fn record_on(storage: Storage) {
    let clock = Clock::manual(START_MS);
    let fx = Fixture::with_config(EngineConfig {
        clock: clock.clone(),
        ..EngineConfig::new(storage)
    });
    let (intent, token) = fx.intent(60_000);
    let verify = |cents: u64, call: &str, approval| {
        clock.advance_ms(1_000);
        let mut req = verify_request(intent, &token, cents);
        req.tool_call_id = Some(call.to_owned());
        req.approval_token = approval;
        fx.engine.verify_now(&fx.agent, &req).unwrap()
    };
    let complete = |decision: Option<Uuid>, outcome, cents| {
        fx.engine
            .complete_now(
                &fx.agent,
                decision.unwrap(),
                &CompleteRequest {
                    outcome,
                    actual_spend_cents: cents,
                },
                None,
            )
            .unwrap();
    };
    let first = verify(12_000, "c2", None);
    assert!(first.allow);
    complete(first.decision_id, Finalization::Consumed, Some(12_000));
    let held = verify(18_700, "c3", None);
    assert!(held.approval_required);
    let approval = held.approval_request_id.unwrap();
    block_on(fx.engine.approve(&fx.operator, approval)).unwrap();
    let token = block_on(fx.engine.approval(&fx.agent, approval))
        .unwrap()
        .approval_token;
    let retried = verify(18_700, "c3", token);
    assert!(retried.allow, "{retried:?}");
    complete(retried.decision_id, Finalization::Consumed, Some(18_700));
    assert!(!verify(25_000, "c4", None).allow);
    let failed = verify(9_000, "c5", None);
    assert!(failed.allow);
    complete(failed.decision_id, Finalization::Released, None);
}

/// The bundled overlay with `from` replaced by `to`.
fn overlay(from: &str, to: &str) -> PolicyFile {
    let mut file = PolicyFile::bundled_tenant_overlay();
    assert!(file.text.contains(from), "{from}");
    file.text = file.text.replace(from, to);
    file.file = "new.policy.yaml".to_owned();
    file
}

fn replay(db: &Path, policy: PolicyFile, since_ms: Option<i64>) -> ReplayReport {
    let before = std::fs::read(db).unwrap();
    let report = block_on(Engine::replay_database(
        db,
        &ReplayOptions {
            policy,
            since_ms,
            until_ms: None,
            tenant: None,
        },
    ))
    .unwrap();
    // Read-only on the store.
    assert!(std::fs::read(db).unwrap() == before, "the store changed");
    report
}

/// `(was, now, reason_codes)` of each change.
fn changes(r: &ReplayReport) -> Vec<(String, String, Vec<String>)> {
    r.changes
        .iter()
        .map(|c| (c.was.clone(), c.now.clone(), c.reason_codes.clone()))
        .collect()
}

#[test]
fn the_recorded_policy_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = record(dir.path());
    let r = replay(&db, PolicyFile::bundled_tenant_overlay(), None);
    assert_eq!(r.decisions, 5);
    assert_eq!(r.changes, vec![]);
    assert_eq!(r.before, r.after);
    assert_eq!(
        (r.before.allowed, r.before.held, r.before.denied),
        (3, 1, 1)
    );
    assert_eq!(
        (r.spent_before_cents, r.spent_after_cents),
        (30_700, 30_700)
    );
    assert_eq!((r.not_spent_cents, r.newly_spent_cents), (0, 0));
    assert_eq!(r.tenants.len(), 1);
}

#[test]
fn a_lower_cap_denies_the_held_call_and_its_approved_retry() {
    let dir = tempfile::tempdir().unwrap();
    let db = record(dir.path());
    let r = replay(
        &db,
        overlay("max_per_call_cents: 20000", "max_per_call_cents: 15000"),
        None,
    );
    let cap = vec!["tool_cap_exceeded".to_owned()];
    assert_eq!(
        changes(&r),
        vec![
            ("hold".to_owned(), "deny".to_owned(), cap.clone()),
            ("allow".to_owned(), "deny".to_owned(), cap),
        ]
    );
    assert_eq!(r.changes[1].tool_call_id.as_deref(), Some("c3"));
    assert_eq!(r.changes[1].amount_cents, 18_700);
    assert_eq!((r.after.allowed, r.after.held, r.after.denied), (2, 0, 3));
    assert_eq!((r.spent_after_cents, r.not_spent_cents), (12_000, 18_700));
}

#[test]
fn a_higher_threshold_allows_the_first_attempt_and_the_retry_is_not_reached() {
    let dir = tempfile::tempdir().unwrap();
    let db = record(dir.path());
    let r = replay(
        &db,
        overlay(
            "approval_threshold_cents: 15000",
            "approval_threshold_cents: 19000",
        ),
        None,
    );
    assert_eq!(
        changes(&r),
        vec![
            ("hold".to_owned(), "allow".to_owned(), vec![]),
            ("allow".to_owned(), "not_reached".to_owned(), vec![]),
        ]
    );
    assert_eq!(r.after.not_reached, 1);
    // The same 187.00 is spent, by the first attempt instead of the retry.
    assert_eq!((r.newly_spent_cents, r.not_spent_cents), (18_700, 18_700));
    assert_eq!(r.spent_after_cents, 30_700);
}

#[test]
fn budgets_are_what_the_new_policy_would_have_left() {
    let dir = tempfile::tempdir().unwrap();
    let db = record(dir.path());
    // 250.00 for the intent: after 120.00 the 187.00 no longer fits (the budget is
    // checked before the approval threshold: no hold, no approved retry), and the
    // 90.00 still does, because the 187.00 was never spent.
    let r = replay(
        &db,
        overlay("max_spend_usd: 600", "max_spend_usd: 250"),
        None,
    );
    let over = vec!["intent_budget_exceeded".to_owned()];
    assert_eq!(
        changes(&r),
        vec![
            ("hold".to_owned(), "deny".to_owned(), over.clone()),
            ("allow".to_owned(), "deny".to_owned(), over),
        ]
    );
    assert_eq!(r.after.allowed, 2);
    assert_eq!((r.spent_after_cents, r.not_spent_cents), (12_000, 18_700));
}

#[test]
fn since_replays_the_later_decisions_over_the_earlier_ones_as_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let db = record(dir.path());
    // From the 250.00 call on (the fourth verify, at START + 4 s), under a budget
    // the earlier 307.00 already used up: the 90.00 no longer fits.
    let r = replay(
        &db,
        overlay("max_spend_usd: 600", "max_spend_usd: 350"),
        Some(START_MS + 4_000),
    );
    assert_eq!(r.decisions, 2);
    assert!(r.since.is_some());
    assert_eq!(
        changes(&r),
        vec![(
            "allow".to_owned(),
            "deny".to_owned(),
            vec!["intent_budget_exceeded".to_owned()]
        )]
    );
    assert_eq!(r.changes[0].amount_cents, 9_000);
}

#[test]
fn an_invalid_or_widening_policy_is_refused_and_nothing_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let db = record(dir.path());
    let before = std::fs::read(&db).unwrap();
    let options = |policy| ReplayOptions {
        policy,
        since_ms: None,
        until_ms: None,
        tenant: None,
    };
    let widening = overlay("max_per_call_cents: 20000", "max_per_call_cents: 90000");
    let err = block_on(Engine::replay_database(&db, &options(widening))).unwrap_err();
    assert_eq!(err.code, "policy_invalid", "{err}");
    assert!(err.message.contains("new.policy.yaml"), "{err}");
    let missing = block_on(Engine::replay_database(
        &dir.path().join("nothing.db"),
        &options(PolicyFile::bundled_tenant_overlay()),
    ))
    .unwrap_err();
    assert!(missing.message.contains("nothing.db"), "{missing}");
    let err = block_on(Engine::replay_database(
        &db,
        &ReplayOptions {
            tenant: Some("nobody".to_owned()),
            ..options(PolicyFile::bundled_tenant_overlay())
        },
    ))
    .unwrap_err();
    assert_eq!(err.code, "tenant_not_found");
    assert!(std::fs::read(&db).unwrap() == before);
}

#[test]
fn the_phase_a_call_carried_is_replayed_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paybond.db");
    {
        let fx = Fixture::with_config(EngineConfig::new(Storage::File(path.clone())));
        let (intent, token) = fx.intent(60_000);
        let mut committed = verify_request(intent, &token, 1_000);
        committed.phase = Some(paybond_middleware_core::wire::Phase::Commit);
        assert!(fx.engine.verify_now(&fx.agent, &committed).unwrap().allow);
        let unphased = verify_request(intent, &token, 2_000);
        assert!(fx.engine.verify_now(&fx.agent, &unphased).unwrap().allow);
    }
    let r = replay(
        &path,
        overlay(
            "spend_controls:\n",
            "spend_controls:\n  phases: {payment_phase: COMMIT}\n",
        ),
        None,
    );
    assert_eq!(
        changes(&r),
        vec![(
            "allow".to_owned(),
            "deny".to_owned(),
            vec!["phase_not_committed".to_owned()]
        )]
    );
    assert_eq!(r.changes[0].amount_cents, 2_000);
}

#[test]
fn a_hold_refused_for_the_approval_rate_stays_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paybond.db");
    {
        let fx = Fixture::with_config(EngineConfig {
            approval_requests_per_agent_per_minute: 1,
            ..EngineConfig::new(Storage::File(path.clone()))
        });
        let (intent, token) = fx.intent(60_000);
        let first = fx
            .engine
            .verify_now(&fx.agent, &verify_request(intent, &token, 18_700))
            .unwrap();
        assert!(first.approval_required);
        let mut again = verify_request(intent, &token, 18_600);
        again.tool_call_id = Some("c9".to_owned());
        let limited = fx.engine.verify_now(&fx.agent, &again).unwrap();
        assert_eq!(limited.reason_codes, ["approval_rate_limited"]);
    }
    let r = replay(&path, PolicyFile::bundled_tenant_overlay(), None);
    assert_eq!(r.changes, vec![]);
    assert_eq!((r.after.held, r.after.denied), (1, 1));
    // Under a policy that needs no approval for it, the call is allowed.
    let r = replay(
        &path,
        overlay(
            "approval_threshold_cents: 15000",
            "approval_threshold_cents: 19000",
        ),
        None,
    );
    assert_eq!(r.after.allowed, 2);
}

#[test]
fn a_fleets_postgresql_store_replays_as_a_sqlite_file_does() {
    let Some(url) = common::pg_database() else {
        return;
    };
    record_on(Storage::Postgres(url.clone()));
    let dir = tempfile::tempdir().unwrap();
    let db = record(dir.path());
    for policy in [
        PolicyFile::bundled_tenant_overlay(),
        overlay("max_per_call_cents: 20000", "max_per_call_cents: 15000"),
        overlay("max_spend_usd: 600", "max_spend_usd: 250"),
    ] {
        let options = ReplayOptions {
            policy,
            since_ms: None,
            until_ms: None,
            tenant: None,
        };
        let on_pg = block_on(Engine::replay_store(
            &Storage::Postgres(url.clone()),
            &options,
        ))
        .unwrap();
        let on_file = replay(&db, options.policy.clone(), None);
        assert_eq!(changes(&on_pg), changes(&on_file));
        assert_eq!(
            (on_pg.before, on_pg.after, on_pg.spent_after_cents),
            (on_file.before, on_file.after, on_file.spent_after_cents)
        );
        assert_eq!(on_pg.decisions, 5);
    }
}

#[test]
fn a_store_is_replayed_while_its_gateway_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("paybond.db");
    let fx = Fixture::with_config(EngineConfig::new(Storage::File(db.clone())));
    let (intent, token) = fx.intent(60_000);
    assert!(
        fx.engine
            .verify_now(&fx.agent, &verify_request(intent, &token, 1_000))
            .unwrap()
            .allow
    );
    // The engine still holds the database; the replay reads beside it.
    let r = block_on(Engine::replay_database(
        &db,
        &ReplayOptions {
            policy: overlay("max_per_call_cents: 20000", "max_per_call_cents: 500"),
            since_ms: None,
            until_ms: None,
            tenant: None,
        },
    ))
    .unwrap();
    assert_eq!(
        changes(&r),
        vec![(
            "allow".to_owned(),
            "deny".to_owned(),
            vec!["tool_cap_exceeded".to_owned()]
        )]
    );
    assert!(
        fx.engine
            .verify_now(&fx.agent, &verify_request(intent, &token, 1_000))
            .unwrap()
            .allow
    );
}
