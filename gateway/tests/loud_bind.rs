//! Binding a run whose local side-effecting tool the tenant's `default_deny`
//! policy does not know is an error naming the tool and the policy, not a run
//! whose every call of that tool is denied in silence.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::Fixture;
use paybond_middleware_core::{
    GatewayErrorKind, RunError, ToolOutput, ToolPolicy, ToolRegistry, tool_fn,
};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_the_policy_does_not_know_is_refused_at_bind() {
    let fx = Fixture::new();
    let shop = || ToolPolicy::side_effecting("cost_and_completion").with_max_spend_cents(500);

    let err = fx
        .sandbox_run()
        .await
        .tool("shop.buy", shop())
        .bind()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GatewayErrorKind::Config);
    let message = err.to_string();
    for part in [
        "shop.buy",
        "travel-demo",
        "tool_not_in_policy",
        "allow_tools_outside_policy",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }

    // A tool the policy knows, a read-only tool, or an explicit opt-in: it binds.
    assert!(
        fx.sandbox_run()
            .await
            .tool(
                "travel.book_hotel",
                ToolPolicy::side_effecting("cost_and_completion")
            )
            .tool("shop.browse", ToolPolicy::read_only())
            .bind()
            .await
            .is_ok()
    );
    // The first try of a new user: a sandbox intent for `shop.buy` under the
    // bundled policy. Refused at once, naming the operation and the policy.
    let gateway = std::sync::Arc::new(fx.gateway());
    let refused = gateway
        .bootstrap_sandbox(&paybond_middleware_core::wire::SandboxBootstrapRequest {
            operation: "shop.buy".into(),
            requested_spend_cents: 10_000,
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("operation_not_in_policy")
            && refused.contains("shop.buy")
            && refused.contains("travel-demo"),
        "{refused}"
    );
    // An intent that allows it (created, not bootstrapped): the run still refuses
    // to bind unless it opts in, and then every call is denied.
    let intent = fx
        .engine
        .create_intent(
            &fx.agent,
            &paybond_gateway::CreateIntentRequest {
                allowed_tools: vec!["shop.buy".into()],
                budget_cents: 10_000,
                currency: None,
                deadline_seconds: None,
                evidence_schema: None,
                metadata: None,
                idempotency_key: None,
            },
        )
        .await
        .unwrap();
    let boot = (intent.intent_id, intent.capability_token.unwrap());
    let builder = || {
        paybond_middleware_core::PaybondAgentRun::builder(gateway.clone(), boot.0, boot.1.clone())
            .tool("shop.buy", shop())
    };
    assert!(builder().bind().await.is_err());
    let run = builder().allow_tools_outside_policy().bind().await.unwrap();
    let tools = ToolRegistry::new()
        .with(tool_fn("shop.buy", shop(), |_: Value| async move {
            Ok(ToolOutput::new(json!({"bought": true})))
        }))
        .guarded(&run);
    let denied = tools
        .call("shop.buy", json!({}), "buy-1")
        .await
        .unwrap_err();
    match denied {
        RunError::SpendDenied(denied) => {
            assert_eq!(denied.result.reason_codes, ["tool_not_in_policy"]);
        }
        other => panic!("{other:?}"),
    }
}
