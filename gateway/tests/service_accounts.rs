//! Service accounts: named keys for workloads, with their own id on the ledger,
//! revoked at once on every replica.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::block_on;

use common::Blocking;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Fixture;
use paybond_gateway::{Engine, EngineConfig, ServiceAccountRequest, Storage};
use paybond_middleware_core::wire::{Role, SandboxBootstrapRequest, VerifyRequest};

fn create(fx: &Fixture, name: &str, role: &str) -> paybond_gateway::CreatedServiceAccount {
    block_on(fx.engine.create_service_account(
        &fx.admin,
        &ServiceAccountRequest {
            name: name.to_owned(),
            role: role.to_owned(),
        },
    ))
    .unwrap()
}

#[test]
fn a_service_account_acts_under_its_name_and_is_refused_once_revoked() {
    let fx = Fixture::new();
    let sa = create(&fx, "nightly-agent", "agent");
    let agent = block_on(fx.engine.authenticate(sa.api_key.expose_secret())).unwrap();
    assert_eq!(agent.subject, "nightly-agent");
    assert_eq!(agent.key_id, sa.account.id);
    assert_eq!(agent.roles, [Role::Agent]);
    // Its decisions name it.
    let boot = block_on(fx.engine.bootstrap_sandbox(
        &agent,
        &SandboxBootstrapRequest {
            operation: common::BOOK.into(),
            requested_spend_cents: 60_000,
            currency: Some("usd".into()),
            evidence_schema: None,
            metadata: None,
            idempotency_key: None,
        },
    ))
    .unwrap();
    let allowed = fx
        .engine
        .verify_now(
            &agent,
            &VerifyRequest {
                vendor_id: Some("vendor_grand_hotel".into()),
                ..common::verify_request(boot.intent_id, &boot.capability_token, 5_000)
            },
        )
        .unwrap();
    assert!(allowed.allow, "{allowed:?}");
    let events = block_on(fx.engine.ledger_events(&fx.operator, 0, 1000)).unwrap();
    let decision = events.iter().find(|e| e.event == "decision.allow").unwrap();
    assert_eq!(decision.payload["agent"], "nightly-agent");
    let created = events
        .iter()
        .find(|e| e.event == "identity.service_account_created")
        .unwrap();
    assert_eq!(created.payload["key_id"], sa.account.id);
    assert_eq!(created.payload["role"], "agent");
    assert!(
        !created
            .payload
            .to_string()
            .contains(sa.api_key.expose_secret())
    );

    // Listed without its key; names are unique in the tenant.
    let listed = block_on(fx.engine.service_accounts(&fx.admin)).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "nightly-agent");
    let again = block_on(fx.engine.create_service_account(
        &fx.admin,
        &ServiceAccountRequest {
            name: "nightly-agent".into(),
            role: "operator".into(),
        },
    ));
    assert_eq!(again.unwrap_err().code, "service_account_exists");
    let refused = block_on(fx.engine.create_service_account(
        &fx.operator,
        &ServiceAccountRequest {
            name: "x".into(),
            role: "agent".into(),
        },
    ));
    assert_eq!(refused.unwrap_err().status, 403);
    // Debug never shows the key.
    assert!(!format!("{sa:?}").contains(sa.api_key.expose_secret()));

    // Revoked: the next request is refused (the key was cached by now).
    block_on(fx.engine.revoke_service_account(&fx.admin, &sa.account.id)).unwrap();
    assert_eq!(
        block_on(fx.engine.authenticate(sa.api_key.expose_secret()))
            .unwrap_err()
            .status,
        401
    );
    assert!(
        block_on(fx.engine.service_accounts(&fx.admin))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        block_on(fx.engine.revoke_service_account(&fx.admin, &sa.account.id))
            .unwrap_err()
            .code,
        "service_account_not_found"
    );
}

#[test]
fn a_revocation_reaches_every_replica_at_once() {
    let Some(url) = common::pg_database() else {
        return;
    };
    let fx = Fixture::with_config(EngineConfig::new(Storage::Postgres(url.clone())));
    let other = Arc::new(Engine::open(EngineConfig::new(Storage::Postgres(url))).unwrap());
    let sa = create(&fx, "approver-bot", "operator");
    // The other replica has the key in memory.
    let p = block_on(other.authenticate(sa.api_key.expose_secret())).unwrap();
    assert_eq!(p.subject, "approver-bot");
    assert!(
        other
            .authenticate_cached(sa.api_key.expose_secret())
            .is_some()
    );

    block_on(fx.engine.revoke_service_account(&fx.admin, &sa.account.id)).unwrap();
    // Refused there well within the cache's own lifetime (5 s): it heard.
    let start = Instant::now();
    loop {
        if block_on(other.authenticate(sa.api_key.expose_secret())).is_err() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the other replica still takes the revoked key"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        block_on(other.authenticate(sa.api_key.expose_secret()))
            .unwrap_err()
            .status,
        401
    );
}

#[test]
fn an_analyst_reads_and_neither_approves_nor_publishes() {
    let fx = Fixture::new();
    let analyst = paybond_middleware_core::wire::Principal {
        service_account_role: Role::Analyst,
        roles: vec![Role::Analyst],
        subject: "ana@example.com".to_owned(),
        key_id: "scim:ana".to_owned(),
        ..fx.operator.clone()
    };
    // Reads: the overview, decisions, the ledger, audit exports.
    block_on(fx.engine.overview(&analyst)).unwrap();
    block_on(
        fx.engine
            .search_decisions(&analyst, &Default::default(), 10),
    )
    .unwrap();
    block_on(fx.engine.ledger_events(&analyst, 0, 10)).unwrap();
    block_on(fx.engine.ledger_tip(&analyst)).unwrap();
    block_on(fx.engine.audit_exports(&analyst, None, None)).unwrap();
    // Decides nothing, changes no policy: 403 naming the role.
    let (intent, token) = fx.intent(60_000);
    let held = fx
        .engine
        .verify_now(
            &fx.agent,
            &VerifyRequest {
                vendor_id: Some("vendor_grand_hotel".into()),
                ..common::verify_request(intent, &token, 18_700)
            },
        )
        .unwrap();
    let approval = held.approval_request_id.unwrap();
    for refused in [
        block_on(fx.engine.approve(&analyst, approval)).map(drop),
        block_on(fx.engine.deny_approval(&analyst, approval)).map(drop),
        block_on(
            fx.engine
                .publish_tenant_policy(&analyst, "version: 1\nname: x\n"),
        )
        .map(drop),
        block_on(fx.engine.create_service_account(
            &analyst,
            &ServiceAccountRequest {
                name: "x".into(),
                role: "agent".into(),
            },
        ))
        .map(drop),
    ] {
        let e = refused.unwrap_err();
        assert_eq!(e.status, 403, "{e:?}");
        assert!(e.message.contains("an analyst"), "{}", e.message);
    }
}
