//! What a Rust author's code calls, against the real server on loopback: a run's
//! tool policy comes from the gateway, intents from `Default` request builders, and
//! a key of the wrong environment fails fast.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use std::sync::Arc;

use common::{BOOK, Fixture, SEARCH};
use paybond_gateway::{EngineConfig, Storage};
use paybond_middleware_core::wire::{
    CreateIntentRequest, Environment, LifecycleStatus, SandboxBootstrapRequest,
};
use paybond_middleware_core::{
    GatewayError, HttpGateway, PaybondAgentRun, SpendGateway, ToolCall, ToolOutput, ToolPolicy,
    ToolRegistry, tool_fn,
};
use serde_json::{Value, json};

fn booking() -> ToolRegistry {
    ToolRegistry::new().with(tool_fn(
        BOOK,
        // A mistake: the booking tool moves money.
        ToolPolicy::read_only(),
        |args: Value| async move {
            let cents = args["amount_cents"].as_u64().ok_or("amount_cents")?;
            Ok(ToolOutput::new(json!({"confirmation": "H-1"})).with_cost_cents(cents))
        },
    ))
}

#[tokio::test]
async fn a_local_entry_cannot_make_a_paid_tool_read_only() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let gw = HttpGateway::builder(&base, fx.keys.agent.clone())
        .build()
        .unwrap();
    let intent = gw
        .bootstrap_sandbox(&SandboxBootstrapRequest {
            operation: BOOK.into(),
            requested_spend_cents: 50_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let registry = booking();
    let run = PaybondAgentRun::builder(
        Arc::new(gw.clone()),
        intent.intent_id,
        intent.capability_token.clone(),
    )
    .tools(registry.policies())
    .tool("local.only", ToolPolicy::read_only())
    .bind()
    .await
    .unwrap();
    // The gateway's entry governs the booking tool; the tool it does not name keeps
    // its local entry.
    assert!(run.tools()[BOOK].side_effecting);
    assert!(!run.tools()[SEARCH].side_effecting);
    assert!(!run.tools()["local.only"].side_effecting);

    let guarded = registry.guarded(&run);
    let out = guarded
        .dispatch(ToolCall::new(
            BOOK,
            json!({"amount_cents": 12_000}),
            "call_1",
        ))
        .await
        .unwrap();
    assert_eq!(out.cost_cents, Some(12_000));
    // The call was verified and its reservation consumed.
    let totals = run.trace().totals();
    assert_eq!(totals.consumed_cents, 12_000, "{totals:?}");
    let view = fx
        .engine
        .get_intent(&fx.agent, intent.intent_id)
        .await
        .expect("the intent");
    assert_eq!(view.consumed_cents, 12_000);
}

#[tokio::test]
async fn an_explicit_override_replaces_the_gateways_entry() {
    let fx = Fixture::new();
    let gw = fx.gateway();
    let (intent, token) = fx.intent(50_000);
    let run = PaybondAgentRun::builder(Arc::new(gw), intent, token)
        .override_tool(BOOK, ToolPolicy::read_only())
        .bind()
        .await
        .unwrap();
    assert!(!run.tools()[BOOK].side_effecting);
    let out = booking()
        .guarded(&run)
        .dispatch(ToolCall::new(
            BOOK,
            json!({"amount_cents": 12_000}),
            "call_1",
        ))
        .await
        .unwrap();
    assert_eq!(out.cost_cents, Some(12_000));
    // Read-only by override: nothing was reserved.
    assert_eq!(
        fx.engine
            .get_intent(&fx.agent, intent)
            .await
            .unwrap()
            .consumed_cents,
        0
    );
}

#[tokio::test]
async fn without_a_policy_the_local_entries_are_used() {
    let mut config = EngineConfig::new(Storage::Memory);
    config.default_org_policy = None;
    config.default_tenant_policy = None;
    let fx = Fixture::with_config(config);
    let base = common::serve(fx.engine.clone()).await;
    let gw = HttpGateway::builder(&base, fx.keys.agent.clone())
        .build()
        .unwrap();
    assert_eq!(gw.effective_policy().await.unwrap(), None);
    let (intent, token) = fx.intent(50_000);
    let run = PaybondAgentRun::builder(Arc::new(gw), intent, token)
        .tools(booking().policies())
        .bind()
        .await
        .unwrap();
    assert!(!run.tools()[BOOK].side_effecting);
}

#[tokio::test]
async fn the_effective_policy_and_an_intent_over_http() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let gw = HttpGateway::builder(&base, fx.keys.agent.clone())
        .build()
        .unwrap();
    let policy = gw.effective_policy().await.unwrap().expect("a policy");
    assert_eq!(policy.tenant_id, fx.agent.tenant_id);
    assert!(policy.policy.tools[BOOK].side_effecting);

    let intent = gw
        .create_intent(&CreateIntentRequest {
            allowed_tools: vec![BOOK.into()],
            budget_cents: 30_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(intent.state, LifecycleStatus::Funded);
    assert_eq!(intent.budget_cents, 30_000);
    let token = intent.capability_token.expect("a capability token");
    let run = PaybondAgentRun::builder(Arc::new(gw), intent.intent_id, token)
        .bind()
        .await
        .unwrap();
    let out = booking()
        .guarded(&run)
        .dispatch(ToolCall::new(
            BOOK,
            json!({"amount_cents": 9_000}),
            "call_1",
        ))
        .await
        .unwrap();
    assert_eq!(out.cost_cents, Some(9_000));
    assert_eq!(
        fx.engine
            .get_intent(&fx.agent, intent.intent_id)
            .await
            .unwrap()
            .consumed_cents,
        9_000
    );
}

#[tokio::test]
async fn a_key_of_the_other_environment_fails_fast() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let live = HttpGateway::builder(&base, fx.keys.agent.clone())
        .expected_environment(Environment::Live)
        .build()
        .unwrap();
    let err = live.principal().await.unwrap_err();
    assert_eq!(
        err,
        GatewayError::EnvironmentMismatch {
            expected: Environment::Live,
            actual: Environment::Sandbox
        }
    );
    let (intent, token) = fx.intent(50_000);
    let bound = PaybondAgentRun::builder(Arc::new(live), intent, token.clone())
        .bind()
        .await;
    assert!(matches!(
        bound,
        Err(GatewayError::EnvironmentMismatch { .. })
    ));

    // The same from an env file, as `paybond dev loop` writes it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(".env.local");
    std::fs::write(
        &file,
        format!(
            "PAYBOND_GATEWAY_URL={base}\nPAYBOND_API_KEY={}\nPAYBOND_EXPECTED_ENVIRONMENT=live\n",
            fx.keys.agent.expose_secret()
        ),
    )
    .unwrap();
    let from_file = HttpGateway::from_env_file(&file).unwrap();
    assert!(matches!(
        from_file.principal().await,
        Err(GatewayError::EnvironmentMismatch { .. })
    ));
    std::fs::write(
        &file,
        format!(
            "PAYBOND_GATEWAY_URL={base}\nPAYBOND_API_KEY={}\nPAYBOND_EXPECTED_ENVIRONMENT=staging\n",
            fx.keys.agent.expose_secret()
        ),
    )
    .unwrap();
    let err = HttpGateway::from_env_file(&file).unwrap_err().to_string();
    assert!(err.contains("PAYBOND_EXPECTED_ENVIRONMENT"), "{err}");
    assert!(!err.contains(fx.keys.agent.expose_secret()), "{err}");

    let sandbox = HttpGateway::builder(&base, fx.keys.agent.clone())
        .expected_environment(Environment::Sandbox)
        .build()
        .unwrap();
    assert_eq!(
        sandbox.principal().await.unwrap().environment,
        Environment::Sandbox
    );
}
