//! `spend_controls.data.sensitive_patterns`: a side-effecting call whose arguments
//! hold such a value is stopped by the layer before verify, and evidence holding
//! one is refused by the gateway; only where the value was is kept.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use std::sync::Arc;

use common::Fixture;
use paybond_gateway::{EngineConfig, PolicyFile, Storage};
use paybond_middleware_core::feedback::model_feedback;
use paybond_middleware_core::{
    HttpGateway, PaybondAgentRun, RunError, SpendGateway, ToolCall, ToolOutput, ToolPolicy,
    ToolRegistry, tool_fn,
};
use reqwest::Method;
use serde_json::{Value, json};

const CARD: &str = "4111111111111111";

const POLICY: &str = r#"version: 1
name: payments
default_deny: true
tools:
  pay.vendor: {side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}
spend_controls:
  data:
    sensitive_patterns: ['\b4[0-9]{15}\b']
"#;

fn fixture() -> Fixture {
    let mut config = EngineConfig::new(Storage::Memory);
    config.default_org_policy = None;
    config.default_tenant_policy = Some(PolicyFile {
        text: POLICY.into(),
        file: "payments.yaml".into(),
    });
    Fixture::with_config(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_arguments_never_leave_the_process() {
    let fx = fixture();
    let base = common::serve(fx.engine.clone()).await;
    let gw = HttpGateway::builder(&base, fx.keys.agent.clone())
        .build()
        .unwrap();
    let intent = gw
        .bootstrap_sandbox(&paybond_middleware_core::wire::SandboxBootstrapRequest {
            operation: "pay.vendor".into(),
            requested_spend_cents: 10_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let run = PaybondAgentRun::builder(
        Arc::new(gw.clone()),
        intent.intent_id,
        intent.capability_token.clone(),
    )
    .bind()
    .await
    .unwrap();
    let tools = ToolRegistry::new()
        .with(tool_fn(
            "pay.vendor",
            ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
            |args: Value| async move {
                let cents = args["amount_cents"].as_u64().ok_or("amount_cents")?;
                Ok(ToolOutput::new(json!({"paid": true})).with_cost_cents(cents))
            },
        ))
        .guarded(&run);

    let result = tools
        .dispatch(ToolCall::new(
            "pay.vendor",
            json!({"amount_cents": 100, "card": {"holder": "A. Traveller", "number": CARD}}),
            "call_1",
        ))
        .await;
    let Err(RunError::SensitiveData { path, .. }) = &result else {
        panic!("expected a sensitive-data stop, got {result:?}");
    };
    assert_eq!(path, "$.card.number");
    let (_, feedback) = model_feedback(&result);
    assert_eq!(
        feedback["reason_codes"],
        json!(["sensitive_data_in_arguments"])
    );
    let err = result.unwrap_err();
    for shown in [err.to_string(), format!("{err:?}"), feedback.to_string()] {
        assert!(!shown.contains(CARD), "{shown}");
    }
    let entry = &run.trace().entries()[0];
    assert_eq!(entry.sensitive_path.as_deref(), Some("$.card.number"));
    assert_eq!(entry.reason_codes, ["sensitive_data_in_arguments"]);
    assert!(!serde_json::to_string(entry).unwrap().contains(CARD));

    // Nothing reached the gateway: no decision on the intent.
    let (_, history) = common::call(
        &base,
        Method::GET,
        &format!("/harbor/operator/v1/intents/{}", intent.intent_id),
        Some(fx.keys.operator.expose_secret()),
        None,
    )
    .await;
    assert_eq!(history["decisions"], json!([]), "{history}");

    // A call without one runs.
    let out = tools
        .dispatch(ToolCall::new(
            "pay.vendor",
            json!({"amount_cents": 100, "card": {"holder": "A. Traveller", "last4": "1111"}}),
            "call_2",
        ))
        .await
        .unwrap();
    assert_eq!(out.cost_cents, Some(100));

    // Evidence holding one is refused, naming where.
    let refused = gw
        .submit_evidence(
            intent.intent_id,
            &paybond_middleware_core::wire::EvidenceRequest {
                payload: Some(
                    json!({"status": "completed", "cost_cents": 100, "note": format!("paid with {CARD}")}),
                ),
                operation: Some("pay.vendor".into()),
                ..Default::default()
            },
            "ev-1",
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(422));
    assert_eq!(refused.code(), Some("sensitive_data_in_evidence"));
    assert!(refused.to_string().contains("payload.note"), "{refused}");
    assert!(!refused.to_string().contains(CARD), "{refused}");

    // The gateway's own decision id is not the agent's data, even when its digits
    // look like a card number under a pattern that allows separators (as the
    // governed demo's does); anything else in the metadata is scanned.
    fx.engine
        .publish_tenant_policy_text(
            &fx.keys.tenant_id,
            &PolicyFile {
                text: POLICY.replace(r"'\b4[0-9]{15}\b'", r"'\b\d(?:[ -]?\d){12,15}\b'"),
                file: "payments.yaml".into(),
            },
        )
        .await
        .unwrap();
    let with_metadata = |metadata: Value| paybond_middleware_core::wire::EvidenceRequest {
        payload: Some(json!({"status": "completed", "cost_cents": 100})),
        operation: Some("pay.vendor".into()),
        metadata: Some(metadata),
        ..Default::default()
    };
    // Its last two groups are 16 digits across a dash. It names no decision of
    // the intent, which is the only thing said of it.
    let card_like_id = "0193ab2f-0b1c-7d2e-4111-111111111111";
    let refused = gw
        .submit_evidence(
            intent.intent_id,
            &with_metadata(json!({"decision_id": card_like_id})),
            "ev-id",
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("decision_not_found"), "{refused}");
    for (metadata, place) in [
        (
            json!({"decision_id": "4111 1111 1111 1111"}),
            "metadata.decision_id",
        ),
        (
            json!({"decision_id": card_like_id, "note": card_like_id}),
            "metadata.note",
        ),
    ] {
        let refused = gw
            .submit_evidence(intent.intent_id, &with_metadata(metadata), "ev-meta")
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some("sensitive_data_in_evidence"));
        assert!(refused.to_string().contains(place), "{refused}");
    }

    // A new policy's patterns apply to the next evidence: the card pattern is gone,
    // a reference number's is in.
    let published = fx
        .engine
        .publish_tenant_policy_text(
            &fx.keys.tenant_id,
            &PolicyFile {
                text: POLICY.replace(r"'\b4[0-9]{15}\b'", r"'\bREF-[0-9]{6}\b'"),
                file: "payments.yaml".into(),
            },
        )
        .await
        .unwrap();
    assert!(
        published
            .policy
            .spend_controls
            .as_ref()
            .unwrap()
            .data
            .as_ref()
            .unwrap()
            .sensitive_patterns
            == [r"\bREF-[0-9]{6}\b"],
        "{published:?}"
    );
    let evidence = |note: &str| paybond_middleware_core::wire::EvidenceRequest {
        payload: Some(json!({"status": "completed", "cost_cents": 100, "note": note})),
        operation: Some("pay.vendor".into()),
        ..Default::default()
    };
    let refused = gw
        .submit_evidence(intent.intent_id, &evidence("order REF-123456"), "ev-2")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("sensitive_data_in_evidence"));
    gw.submit_evidence(
        intent.intent_id,
        &evidence(&format!("paid with {CARD}")),
        "ev-3",
    )
    .await
    .unwrap();
}
