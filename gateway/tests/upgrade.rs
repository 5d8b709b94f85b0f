//! A data directory written by an earlier gateway (before migrations were
//! numbered: `tests/fixtures/store-before-migrations`, made by `paybond dev loop
//! --offline` of that version with a bootstrap, an allow consumed, an allow left
//! open, a pending hold, an approved hold, a denied hold and a deny) opens on this
//! one with nothing lost: its keys, intent, decisions, approvals and ledger chain,
//! and it goes on deciding.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::block_on;

use std::collections::HashMap;
use std::path::Path;

use paybond_gateway::{Clock, Engine, EngineConfig, Storage};
use paybond_middleware_core::wire::{
    ApprovalState, CompleteRequest, Finalization, LifecycleStatus, VerifyRequest,
};
use uuid::Uuid;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/store-before-migrations"
);
/// The fixture's last ledger entry was written at this time (Unix ms).
const WRITTEN_MS: i64 = 1_796_192_201_080;
const INTENT: &str = "dc239b16-e5b9-45d0-93df-45ae09ceec2b";
const CONSUMED: &str = "01a23565-e754-71a9-8a82-922ab7ffbc3c";
const OPEN: &str = "01a23565-e978-74d5-aa94-975a997b1910";
const APPROVED: &str = "8afc8106-a958-4a5b-90e4-18a117501872";
const DENIED: &str = "0d613532-4198-4fce-8d50-e9489d38475b";

fn keys() -> HashMap<String, String> {
    std::fs::read_to_string(Path::new(FIXTURE).join("keys.env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

fn ledger_rows(db: &Path) -> Vec<(i64, String)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT seq, hash FROM ledger ORDER BY tenant_id, seq")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_data_dir_of_the_earlier_gateway_opens_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("paybond.db");
    for file in ["paybond.db", "paybond.key"] {
        std::fs::copy(Path::new(FIXTURE).join(file), dir.path().join(file)).unwrap();
    }
    let before = ledger_rows(&db);
    assert_eq!(before.len(), 17);

    let mut config = EngineConfig::new(Storage::File(db.clone()));
    config.clock = Clock::manual(WRITTEN_MS + 1_000);
    config.default_org_policy = None;
    config.default_tenant_policy = None;
    let engine = std::sync::Arc::new(Engine::open(config).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys = keys();
    let agent = block_on(engine.authenticate(&keys["PAYBOND_API_KEY"])).unwrap();
    let operator = block_on(engine.authenticate(&keys["PAYBOND_OPERATOR_API_KEY"])).unwrap();
    assert_eq!(agent.tenant_id, keys["PAYBOND_TENANT_ID"]);

    let check = block_on(engine.verify_ledger()).unwrap();
    assert!(check.valid && check.events == 17, "{check:?}");
    let intent: Uuid = INTENT.parse().unwrap();
    let view = block_on(engine.get_intent(&agent, intent)).unwrap();
    assert_eq!(view.state, LifecycleStatus::Funded);
    assert_eq!(
        (view.budget_cents, view.consumed_cents, view.reserved_cents),
        (60_000, 11_800, 9_000)
    );
    let consumed = block_on(engine.decision(&operator, CONSUMED.parse().unwrap())).unwrap();
    assert_eq!(consumed.outcome, "allow");
    assert!(!consumed.result.checks.is_empty());

    // The approvals as they stood: one pending, one approved, one denied.
    let state = |id: &str| {
        block_on(engine.approval(&operator, id.parse().unwrap()))
            .unwrap()
            .state
    };
    assert_eq!(state(APPROVED), ApprovalState::Approved);
    assert_eq!(state(DENIED), ApprovalState::Denied);
    let pending = block_on(engine.list_approvals(
        &operator,
        &paybond_gateway::ApprovalQuery {
            state: Some(ApprovalState::Pending),
            ..Default::default()
        },
    ))
    .unwrap();
    assert_eq!(pending.approvals.len(), 1);
    assert_eq!(pending.approvals[0].requested_spend_cents, Some(18_700));

    // It goes on: the open reservation is finalized, and the approved hold's token
    // (derived from the root key, which carried over) lets its retry through.
    let done = rt
        .block_on(engine.complete(
            agent.clone(),
            OPEN.parse().unwrap(),
            CompleteRequest {
                outcome: Finalization::Consumed,
                actual_spend_cents: Some(9_000),
            },
            None,
        ))
        .unwrap();
    assert_eq!(done.actual_spend_cents, Some(9_000));
    let approval_token = block_on(engine.approval(&agent, APPROVED.parse().unwrap()))
        .unwrap()
        .approval_token
        .expect("the approved hold's token");
    let capability = block_on(engine.fund_intent(&agent, intent))
        .unwrap()
        .capability_token
        .unwrap();
    let retry = VerifyRequest {
        vendor_id: Some("vendor_acme".into()),
        approval_token: Some(approval_token),
        ..VerifyRequest::new(intent, capability, "travel.book_hotel", 18_800)
    };
    let allowed = rt.block_on(engine.verify(agent.clone(), retry)).unwrap();
    assert!(allowed.allow, "{allowed:?}");
    assert!(
        allowed
            .reason_codes
            .contains(&"approval_token_accepted".to_owned())
    );
    drop(engine);

    // The chain was extended, never rewritten.
    let after = ledger_rows(&db);
    assert_eq!(&after[..before.len()], &before[..]);
    assert!(after.len() > before.len());
}
