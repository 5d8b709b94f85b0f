//! `EmbeddedGateway::with_policy`: your policy on the engine in process in one
//! call, in memory or in a data directory.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::sync::Arc;

use paybond_gateway::{EmbeddedGateway, Engine, PolicyFile};
use paybond_middleware_core::wire::{Environment, SandboxBootstrapRequest};
use paybond_middleware_core::{GatewayError, SpendGateway};

fn shop(max_per_call_cents: u64) -> PolicyFile {
    PolicyFile {
        text: format!(
            "version: 1\nname: shop\ndefault_deny: true\ntools:\n  shop.buy: \
             {{side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}}\nspend_controls:\n  \
             tools:\n    shop.buy: {{max_per_call_cents: {max_per_call_cents}}}\n"
        ),
        file: "shop.yaml".into(),
    }
}

async fn per_call_cap(gateway: &EmbeddedGateway) -> Option<u64> {
    let policy = gateway.effective_policy().await.unwrap().unwrap().policy;
    policy.spend_controls.unwrap().tools["shop.buy"].max_per_call_cents
}

#[tokio::test]
async fn a_data_directory_keeps_its_tenant_and_takes_the_policy_given_now() {
    let dir = tempfile::tempdir().unwrap();
    let first = EmbeddedGateway::with_policy(shop(5_000), Some(&dir.path().join("data"))).unwrap();
    let tenant = first.principal().await.unwrap().tenant_id;
    assert_eq!(per_call_cap(&first).await, Some(5_000));
    first
        .bootstrap_sandbox(&SandboxBootstrapRequest {
            operation: "shop.buy".into(),
            requested_spend_cents: 1_000,
            ..Default::default()
        })
        .await
        .unwrap();
    drop(first);

    let again = EmbeddedGateway::with_policy(shop(7_000), Some(&dir.path().join("data"))).unwrap();
    assert_eq!(again.principal().await.unwrap().tenant_id, tenant);
    assert_eq!(per_call_cap(&again).await, Some(7_000));
    assert!(again.engine().verify_ledger().await.unwrap().valid);
}

#[tokio::test]
async fn a_policy_that_does_not_check_is_refused_with_its_problems() {
    let bad = PolicyFile {
        text: "version: 1\nname: shop\ndefault_deny: maybe\ntools:\n  shop.buy: {side_effecting: yes please}\n".into(),
        file: "shop.yaml".into(),
    };
    let e = EmbeddedGateway::with_policy(bad, None).unwrap_err();
    assert_eq!(e.code, "policy_invalid", "{e}");
    // Every problem, each with its file, line and field.
    assert!(e.message.contains("shop.yaml:3:"), "{e}");
    assert!(e.message.contains("shop.yaml:5:"), "{e}");
}

#[tokio::test]
async fn only_a_gateway_holding_the_operator_key_approves() {
    let engine = Arc::new(Engine::in_memory().unwrap());
    let keys = engine
        .create_tenant("t", Environment::Sandbox)
        .await
        .unwrap();
    let agent_only = EmbeddedGateway::new(engine, &keys.agent).unwrap();
    match agent_only.approve(uuid::Uuid::new_v4()).await {
        Err(GatewayError::Rejected { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (403, "no_operator_key"));
        }
        other => panic!("{other:?}"),
    }
    // With the operator key, an unknown request is the engine's own refusal.
    let sandbox = EmbeddedGateway::with_policy(shop(5_000), None).unwrap();
    match sandbox.approve(uuid::Uuid::new_v4()).await {
        Err(GatewayError::Rejected { status, .. }) => assert_eq!(status, 404),
        other => panic!("{other:?}"),
    }
}
