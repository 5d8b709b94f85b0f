//! Policy hot reload: a long-lived run picks up a newly published effective policy
//! without rebinding (polled, or on request), swaps it between calls, records
//! `policy_reloaded` with both digests, and keeps its policy when the new one
//! cannot be used.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{BOOK, Fixture};
use paybond_gateway::PolicyFile;
use paybond_middleware_core::testing::ScriptedGateway;
use paybond_middleware_core::{
    PaybondAgentRun, RunError, ToolOutput, ToolPolicy, ToolRegistry, tool_fn,
};
use serde_json::{Value, json};

fn registry() -> ToolRegistry {
    ToolRegistry::new().with(tool_fn(
        BOOK,
        ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
        |args: Value| async move {
            Ok(ToolOutput::new(json!({"booked": true}))
                .with_cost_cents(args["amount_cents"].as_u64().unwrap_or(0)))
        },
    ))
}

/// The bundled overlay with a sensitive-data pattern added.
fn overlay_with_pattern() -> PolicyFile {
    let mut file = PolicyFile::bundled_tenant_overlay();
    file.text = file.text.replace(
        "spend_controls:\n",
        "spend_controls:\n  data: {sensitive_patterns: [\"\\\\b\\\\d{3}-\\\\d{2}-\\\\d{4}\\\\b\"]}\n",
    );
    assert_ne!(file.text, PolicyFile::bundled_tenant_overlay().text);
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_run_picks_up_a_new_policy_between_calls() {
    let fx = Fixture::new();
    let run = fx
        .sandbox_run()
        .await
        .reload_policy_every(Duration::from_millis(50))
        .bind()
        .await
        .unwrap();
    let tools = registry().guarded(&run);
    let (v1, d1) = (run.policy_version().unwrap(), run.policy_digest().unwrap());
    // Nothing new: nothing reloaded.
    assert_eq!(run.reload_policy().await.unwrap(), None);
    let ssn = json!({"amount_cents": 1_000, "note": "guest 123-45-6789"});
    tools.call(BOOK, ssn.clone(), "c1").await.unwrap();

    // A new policy is published: the poller swaps it in, no rebind.
    let published = fx
        .engine
        .publish_tenant_policy_text(&fx.keys.tenant_id, &overlay_with_pattern())
        .await
        .unwrap();
    assert_ne!(published.digest, d1);
    let start = std::time::Instant::now();
    while run.policy_digest().as_deref() != Some(published.digest.as_str()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the run never reloaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(run.policy_version(), Some(published.version));
    let reloads = run.trace().policy_reloads();
    assert_eq!(reloads.len(), 1, "{reloads:?}");
    assert_eq!(reloads[0].event, "policy_reloaded");
    assert_eq!(reloads[0].from_digest.as_deref(), Some(d1.as_str()));
    assert_eq!(
        reloads[0].to_digest.as_deref(),
        Some(published.digest.as_str())
    );
    assert_eq!(
        (reloads[0].from_version, reloads[0].to_version),
        (Some(v1), Some(published.version))
    );
    assert!(run.trace().table().contains("policy_reloaded"));

    // The next call is decided under the new policy: the pattern stops it locally.
    match tools.call(BOOK, ssn, "c2").await {
        Err(RunError::SensitiveData { path, .. }) => assert_eq!(path, "$.note"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_policy_the_run_cannot_use_is_refused_and_the_old_one_stays() {
    let gateway = Arc::new(ScriptedGateway::new());
    let good: paybond_policies::PolicyDocument = serde_json::from_value(json!({
        "version": 1, "name": "t",
        "tools": {BOOK: {"side_effecting": true, "spend_from_args": "amount_cents", "evidence_preset": "cost_and_completion"}}
    }))
    .unwrap();
    gateway.set_effective_policy(good.clone());
    let run = PaybondAgentRun::builder(gateway.clone(), uuid::Uuid::new_v4(), "cap".into())
        .bind()
        .await
        .unwrap();
    let before = run.policy_digest();
    // A pattern that is not a regular expression (a gateway would refuse to
    // publish it; this one serves it anyway).
    let mut bad = good;
    bad.name = "t2".into();
    bad.spend_controls =
        serde_json::from_value(json!({"data": {"sensitive_patterns": ["(unclosed"]}})).unwrap();
    gateway.set_effective_policy(bad);
    let err = run.reload_policy().await.unwrap_err();
    assert!(err.to_string().contains("sensitive_patterns"), "{err}");
    assert_eq!(run.policy_digest(), before);
    assert!(run.trace().policy_reloads().is_empty());
}
