//! Each check of verify, in order, with its reason code; expiry of reservations,
//! approval tokens, capability tokens and intents on a manual clock.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::block_on;

use common::Blocking;

use common::{BOOK, Fixture};
use paybond_gateway::{Clock, EngineConfig, PolicyFile, Storage};
use paybond_middleware_core::wire::{
    ApprovalState, CompleteRequest, Finalization, LifecycleStatus, VerifyRequest, VerifyResult,
};
use paybond_middleware_core::{ApprovalToken, CapabilityToken};
use uuid::Uuid;

/// 2026-03-16T14:00:00Z, a Monday: 10:00 in New York.
const START_MS: i64 = 1_773_669_600_000;

fn fixture_on(policy: &str, mut config: EngineConfig) -> (Fixture, Clock) {
    let clock = Clock::manual(START_MS);
    config.clock = clock.clone();
    config.default_org_policy = None;
    config.default_tenant_policy = Some(PolicyFile {
        text: policy.to_owned(),
        file: "test.yaml".to_owned(),
    });
    (Fixture::with_config(config), clock)
}

const BASE: &str = "version: 1\nname: t\ndefault_deny: true\ntools:\n  travel.book_hotel: {side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}\n  travel.search_hotels: {side_effecting: false}\n";

fn policy(spend_controls: &str) -> String {
    format!("{BASE}spend_controls:\n{spend_controls}")
}

struct Call<'a> {
    fx: &'a Fixture,
    intent: Uuid,
    token: CapabilityToken,
}

impl Call<'_> {
    fn req(&self, amount: u64) -> VerifyRequest {
        VerifyRequest {
            intent_id: self.intent,
            token: self.token.clone(),
            operation: BOOK.to_owned(),
            requested_spend_cents: amount,
            vendor_id: Some("vendor_acme".to_owned()),
            task_id: None,
            workflow_id: None,
            tool_call_id: None,
            tool_name: Some(BOOK.to_owned()),
            currency: None,
            agent_subject: Some("agent-1".to_owned()),
            approval_token: None,
            idempotency_key: None,
            phase: None,
        }
    }

    fn verify(&self, req: &VerifyRequest) -> VerifyResult {
        self.fx.engine.verify_now(&self.fx.agent, req).unwrap()
    }

    fn codes(&self, amount: u64) -> Vec<String> {
        self.verify(&self.req(amount)).reason_codes
    }
}

fn setup(spend_controls: &str, budget: u64) -> (Fixture, Clock, Uuid, CapabilityToken) {
    setup_on(spend_controls, budget, EngineConfig::new(Storage::Memory))
}

fn setup_on(
    spend_controls: &str,
    budget: u64,
    config: EngineConfig,
) -> (Fixture, Clock, Uuid, CapabilityToken) {
    let (fx, clock) = fixture_on(&policy(spend_controls), config);
    let (intent, token) = fx.intent(budget);
    (fx, clock, intent, token)
}

#[test]
fn capability_operation_and_policy_checks() {
    let (fx, clock, intent, token) = setup(
        "  tools:\n    travel.book_hotel: {max_per_call_cents: 20000}\n",
        60_000,
    );
    let c = Call {
        fx: &fx,
        intent,
        token: token.clone(),
    };

    let mut other_op = c.req(100);
    other_op.operation = "travel.cancel".to_owned();
    other_op.tool_name = Some("travel.cancel".to_owned());
    assert_eq!(c.verify(&other_op).reason_codes, ["operation_not_allowed"]);

    // A tool_name may only confirm the operation's tool.
    let mut unknown_tool = c.req(100);
    unknown_tool.tool_name = Some("travel.teleport".to_owned());
    assert_eq!(
        c.verify(&unknown_tool).reason_codes,
        ["tool_operation_mismatch"]
    );
    // An operation the token allows but no tool of a default-deny policy has.
    let teleport = block_on(fx.engine.create_intent(
        &fx.agent,
        &paybond_gateway::CreateIntentRequest {
            allowed_tools: vec!["travel.teleport".to_owned()],
            budget_cents: 1_000,
            currency: None,
            deadline_seconds: None,
            evidence_schema: None,
            metadata: None,
            idempotency_key: None,
        },
    ))
    .unwrap();
    let mut not_in_policy = c.req(100);
    not_in_policy.intent_id = teleport.intent_id;
    not_in_policy.token = teleport.capability_token.unwrap();
    not_in_policy.operation = "travel.teleport".to_owned();
    not_in_policy.tool_name = None;
    assert_eq!(
        c.verify(&not_in_policy).reason_codes,
        ["tool_not_in_policy"]
    );

    assert_eq!(c.codes(20_001), ["tool_cap_exceeded"]);
    // Up to the budget exactly, then not a cent more.
    for _ in 0..3 {
        assert_eq!(c.codes(20_000), Vec::<String>::new());
    }
    assert_eq!(c.codes(1), ["intent_budget_exceeded"]);

    // The capability token expires with its intent (24 h by default).
    clock.advance_ms(24 * 3_600_000 + 1);
    assert_eq!(c.codes(1), ["capability_expired"]);
}

#[test]
fn disabled_tools_and_vendor_allowlist() {
    let (fx, _, intent, token) = setup("  tools:\n    travel.book_hotel: {allow: false}\n", 60_000);
    let c = Call {
        fx: &fx,
        intent,
        token,
    };
    assert_eq!(c.codes(1), ["tool_disabled"]);

    let (fx, _, intent, token) = setup("  vendors: {allow: [vendor_ok]}\n", 60_000);
    let c = Call {
        fx: &fx,
        intent,
        token,
    };
    assert_eq!(c.codes(1), ["vendor_not_allowed"]);
    let mut ok = c.req(1);
    ok.vendor_id = Some("vendor_ok".to_owned());
    assert!(c.verify(&ok).allow);
}

#[test]
fn rolling_caps_by_scope_and_window() {
    rolling_caps_by_scope_and_window_on(EngineConfig::new(Storage::Memory));
}

/// On PostgreSQL the counters of a reservation's buckets are updated in one pipelined
/// round trip: the same answers.
#[test]
fn rolling_caps_by_scope_and_window_on_postgres() {
    if let Some(config) = common::pg_config() {
        rolling_caps_by_scope_and_window_on(config);
    }
}

fn rolling_caps_by_scope_and_window_on(config: EngineConfig) {
    let (fx, clock, intent, token) = setup_on(
        "  caps:\n    - {scope: tenant, window: day, limit_cents: 5000, timezone: UTC}\n    - {scope: vendor, key: vendor_acme, window: hour, limit_cents: 3000}\n    - {scope: agent, window: month, limit_cents: 4000}\n",
        60_000,
        config,
    );
    let c = Call {
        fx: &fx,
        intent,
        token,
    };
    assert!(c.verify(&c.req(2_500)).allow);
    assert_eq!(c.codes(600), ["hourly_vendor_cap_exceeded"]);
    let mut other_vendor = c.req(1_600);
    other_vendor.vendor_id = Some("vendor_b".to_owned());
    assert_eq!(
        c.verify(&other_vendor).reason_codes,
        ["monthly_agent_cap_exceeded"]
    );
    // Another agent_subject under the same key still counts against the key's cap.
    other_vendor.agent_subject = Some("agent-2".to_owned());
    assert_eq!(
        c.verify(&other_vendor).reason_codes,
        ["monthly_agent_cap_exceeded"]
    );
    other_vendor.requested_spend_cents = 1_500;
    assert!(c.verify(&other_vendor).allow);
    other_vendor.requested_spend_cents = 1_001;
    other_vendor.agent_subject = Some("agent-3".to_owned());
    assert_eq!(
        c.verify(&other_vendor).reason_codes,
        ["daily_tenant_cap_exceeded"]
    );
    // The next UTC day opens a new window (and the unfinalized reservations have run out).
    clock.advance_ms(10 * 3_600_000 + 1);
    assert!(c.verify(&other_vendor).allow);
}

#[test]
fn hourly_rate_limit_says_when_to_retry() {
    let (fx, clock, intent, token) = setup(
        "  tools:\n    travel.book_hotel: {limit_per_hour: 2}\n",
        60_000,
    );
    let c = Call {
        fx: &fx,
        intent,
        token,
    };
    assert!(c.verify(&c.req(1)).allow);
    clock.advance_ms(600_000);
    assert!(c.verify(&c.req(1)).allow);
    let limited = c.verify(&c.req(1));
    assert_eq!(limited.reason_codes, ["rate_limited"]);
    assert_eq!(limited.retry_after, Some(3_000));
    clock.advance_ms(3_000_000);
    assert!(c.verify(&c.req(1)).allow);
}

#[test]
fn schedule_and_graduated_gates() {
    let (fx, clock, intent, token) = setup(
        "  schedule: {active_hours: {start: \"09:00\", end: \"18:00\", timezone: America/New_York}}\n  gates: {warning: 0.5, restrict: 0.75, halt: 0.9}\n",
        10_000,
    );
    let c = Call {
        fx: &fx,
        intent,
        token,
    };
    assert_eq!(c.codes(4_000), Vec::<String>::new());
    assert_eq!(c.codes(1_000), ["budget_gate_warning"]);
    assert_eq!(c.codes(2_500), ["budget_gate_restrict"]);
    assert_eq!(c.codes(1_000), ["budget_gate_restrict"]);
    assert_eq!(c.codes(500), ["budget_gate_halt"]);
    // 19:00 in New York.
    clock.advance_ms(9 * 3_600_000);
    assert_eq!(c.codes(1), ["outside_active_hours"]);
}

#[test]
fn approval_tokens_are_single_use_bound_and_short_lived() {
    let (fx, clock, intent, token) = setup(
        "  tools:\n    travel.book_hotel: {approval_threshold_cents: 1000}\n  approval: {quorum: 2, timeout_seconds: 600}\n",
        60_000,
    );
    let second_operator = {
        let keys = block_on(fx.engine.rotate_keys(&fx.keys.tenant_id));
        // Rotation revokes the fixture's keys; use the new ones from here on.
        keys.unwrap()
    };
    let agent = block_on(
        fx.engine
            .authenticate(second_operator.agent.expose_secret()),
    )
    .unwrap();
    let op1 = block_on(
        fx.engine
            .authenticate(second_operator.operator.expose_secret()),
    )
    .unwrap();
    let admin = block_on(
        fx.engine
            .authenticate(second_operator.tenant_admin.expose_secret()),
    )
    .unwrap();
    let issued = block_on(fx.engine.issue_api_key(
        &admin,
        &paybond_gateway::IssueKeyRequest {
            role: "operator".to_owned(),
            subject: Some("second-operator".to_owned()),
        },
    ))
    .unwrap();
    let op2 = block_on(fx.engine.authenticate(issued.api_key.expose_secret())).unwrap();
    let verify = |req: &VerifyRequest| fx.engine.verify_now(&agent, req).unwrap();
    let c = Call {
        fx: &fx,
        intent,
        token,
    };

    let held = verify(&c.req(5_000));
    assert!(held.approval_required);
    let id = held.approval_request_id.unwrap();
    // An agent can never approve, nor can a tenant admin (operators approve).
    let err = block_on(fx.engine.approve(&agent, id)).unwrap_err();
    assert_eq!((err.status, err.code), (403, "forbidden_role"));
    let err = block_on(fx.engine.approve(&admin, id)).unwrap_err();
    assert_eq!((err.status, err.code), (403, "forbidden_role"));
    // Quorum 2: one approval is not enough; the same operator twice is a 409 and
    // still counts once.
    let s = block_on(fx.engine.approve(&op1, id)).unwrap();
    assert_eq!(
        (s.state, s.approvals, s.quorum),
        (ApprovalState::Pending, 1, 2)
    );
    let err = block_on(fx.engine.approve(&op1, id)).unwrap_err();
    assert_eq!((err.status, err.code), (409, "approval_already_given"));
    assert_eq!(block_on(fx.engine.approval(&op1, id)).unwrap().approvals, 1);
    let s = block_on(fx.engine.approve(&op2, id)).unwrap();
    assert_eq!(s.state, ApprovalState::Approved);
    // Operators never see the token; the held agent reads it once.
    assert!(s.approval_token.is_none());
    assert!(
        block_on(fx.engine.approval(&op1, id))
            .unwrap()
            .approval_token
            .is_none()
    );
    let approval: ApprovalToken = block_on(fx.engine.approval(&agent, id))
        .unwrap()
        .approval_token
        .unwrap();
    assert!(
        block_on(fx.engine.approval(&agent, id))
            .unwrap()
            .approval_token
            .is_none()
    );
    let err = block_on(fx.engine.deny_approval(&op1, id)).unwrap_err();
    assert_eq!((err.status, err.code), (409, "approval_already_decided"));

    let mut retry = c.req(5_000);
    retry.approval_token = Some(approval.clone());
    let mut op = retry.clone();
    op.operation = BOOK.to_owned();
    op.tool_name = Some("travel.book_hotel".to_owned());
    let mut forged = retry.clone();
    forged.approval_token = Some(ApprovalToken::new("paybond_at_forged"));
    assert_eq!(verify(&forged).reason_codes, ["approval_token_invalid"]);

    // Expired: the token lives 5 minutes.
    clock.advance_ms(5 * 60_000 + 1);
    assert_eq!(verify(&retry).reason_codes, ["approval_token_expired"]);

    // A new hold, approved, used once, then reused.
    let held = verify(&c.req(5_000));
    let id2 = held.approval_request_id.unwrap();
    assert_ne!(id2, id);
    block_on(fx.engine.approve(&op1, id2)).unwrap();
    block_on(fx.engine.approve(&op2, id2)).unwrap();
    let token2 = block_on(fx.engine.approval(&agent, id2))
        .unwrap()
        .approval_token
        .unwrap();
    retry.approval_token = Some(token2);
    assert!(verify(&retry).allow);
    assert_eq!(verify(&retry).reason_codes, ["approval_token_reused"]);

    // A pending request nobody decides expires.
    let held = verify(&c.req(7_000));
    clock.advance_ms(601_000);
    let s = block_on(
        fx.engine
            .approval(&agent, held.approval_request_id.unwrap()),
    )
    .unwrap();
    assert_eq!(s.state, ApprovalState::Expired);
    let err = block_on(fx.engine.approve(&op1, held.approval_request_id.unwrap())).unwrap_err();
    assert_eq!(err.code, "approval_expired");
    assert_eq!(block_on(fx.engine.sweep()).unwrap().approvals_expired, 1);
}

#[test]
fn reservations_expire_and_return_their_amount() {
    let (fx, clock, intent, token) = setup("  tools: {}\n", 60_000);
    let c = Call {
        fx: &fx,
        intent,
        token,
    };
    let first = c.verify(&c.req(50_000));
    assert!(first.allow);
    assert_eq!(c.codes(20_000), ["intent_budget_exceeded"]);
    // After the TTL (5 minutes) the amount is free again, before any sweep runs.
    clock.advance_ms(5 * 60_000);
    let second = c.verify(&c.req(20_000));
    assert!(second.allow, "{second:?}");
    let late = fx
        .engine
        .complete_now(
            &fx.agent,
            first.decision_id.unwrap(),
            &CompleteRequest {
                outcome: Finalization::Consumed,
                actual_spend_cents: None,
            },
            None,
        )
        .unwrap_err();
    assert_eq!((late.status, late.code), (409, "reservation_expired"));
    // Reads leave the lapsed reservation out before the sweep has expired it...
    let view = block_on(fx.engine.get_intent(&fx.agent, intent)).unwrap();
    assert_eq!((view.reserved_cents, view.consumed_cents), (20_000, 0));
    assert_eq!(view.open_reservations, 1);
    // ...and the sweep puts its expiry on the ledger, once.
    assert_eq!(block_on(fx.engine.sweep()).unwrap().reservations_expired, 1);
    assert_eq!(block_on(fx.engine.sweep()).unwrap().reservations_expired, 0);
    let view = block_on(fx.engine.get_intent(&fx.agent, intent)).unwrap();
    assert_eq!((view.reserved_cents, view.consumed_cents), (20_000, 0));
    let events = block_on(fx.engine.ledger_events(&fx.operator, 0, 1000)).unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event == "reservation.expired")
            .count(),
        1
    );
    assert!(block_on(fx.engine.verify_ledger()).unwrap().valid);
}

#[test]
fn intents_close_at_their_deadline() {
    let (fx, clock, intent, token) = setup("  tools: {}\n", 60_000);
    let c = Call {
        fx: &fx,
        intent,
        token,
    };
    let (evidenced, _) = fx.intent(1_000);
    let ok = c.verify(&c.req(100));
    fx.engine
        .complete_now(
            &fx.agent,
            ok.decision_id.unwrap(),
            &CompleteRequest {
                outcome: Finalization::Consumed,
                actual_spend_cents: Some(90),
            },
            None,
        )
        .unwrap();
    let ev = fx
        .engine
        .submit_evidence_now(
            &fx.agent,
            evidenced,
            &paybond_middleware_core::wire::EvidenceRequest {
                payload: Some(serde_json::json!({"status": "completed", "cost_cents": 900})),
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(
        (ev.predicate_passed, ev.sandbox_lifecycle_status),
        (true, LifecycleStatus::EvidenceSubmitted)
    );
    let failed = fx
        .engine
        .submit_evidence_now(
            &fx.agent,
            intent,
            &paybond_middleware_core::wire::EvidenceRequest {
                payload: Some(serde_json::json!({"status": "completed", "cost_cents": 70_000})),
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert!(!failed.predicate_passed);

    clock.advance_ms(24 * 3_600_000);
    assert_eq!(block_on(fx.engine.sweep()).unwrap().intents_closed, 2);
    assert_eq!(
        block_on(fx.engine.get_intent(&fx.agent, intent))
            .unwrap()
            .state,
        LifecycleStatus::Refunded
    );
    assert_eq!(
        block_on(fx.engine.get_intent(&fx.agent, evidenced))
            .unwrap()
            .state,
        LifecycleStatus::Released
    );
}

#[test]
fn publishing_refuses_widening_overlays_and_org_bases_are_per_tenant() {
    let fx = Fixture::new();
    let before = block_on(fx.engine.effective_policy(&fx.agent)).unwrap();
    // An overlay raising the org budget is refused whole, with the merge's code and path.
    let widening = paybond_policies::bundled::TENANT_OVERLAY
        .replace("max_spend_usd: 600", "max_spend_usd: 5000");
    let err = block_on(fx.engine.publish_tenant_policy(&fx.admin, &widening)).unwrap_err();
    assert_eq!((err.status, err.code), (422, "policy_invalid"));
    assert!(
        err.message.contains("policy.cannot_raise_budget_cap"),
        "{}",
        err.message
    );
    assert!(
        err.message
            .contains("overrides.intent.budget.max_spend_usd"),
        "{}",
        err.message
    );
    assert_eq!(
        block_on(fx.engine.effective_policy(&fx.agent)).unwrap(),
        before
    );
    // Only a tenant admin publishes.
    let err = block_on(
        fx.engine
            .publish_tenant_policy(&fx.operator, paybond_policies::bundled::TENANT_OVERLAY),
    )
    .unwrap_err();
    assert_eq!(err.status, 403);

    // Another tenant publishing an org base of the same id changes nothing here.
    let other = block_on(
        fx.engine
            .create_tenant("other", paybond_middleware_core::wire::Environment::Sandbox),
    )
    .unwrap();
    let other_admin = block_on(fx.engine.authenticate(other.tenant_admin.expose_secret())).unwrap();
    let loose =
        paybond_policies::bundled::ORG_BASE.replace("max_spend_usd: 1000", "max_spend_usd: 100000");
    block_on(
        fx.engine
            .publish_org_policy(&other_admin, "paybond-travel-org", &loose),
    )
    .unwrap();
    let raised = paybond_policies::bundled::TENANT_OVERLAY
        .replace("max_spend_usd: 600", "max_spend_usd: 5000");
    let err = block_on(fx.engine.publish_tenant_policy(&fx.admin, &raised)).unwrap_err();
    assert!(
        err.message.contains("policy.cannot_raise_budget_cap"),
        "{}",
        err.message
    );
    // The other tenant's own overlay does resolve against its own base.
    let eff = block_on(fx.engine.publish_tenant_policy(&other_admin, &raised)).unwrap();
    assert_eq!(
        eff.policy.intent.unwrap().budget.unwrap().max_spend_usd,
        Some(5000.0)
    );
}

#[test]
fn rolling_cap_counters_follow_every_finalization_and_a_cap_added_later() {
    rolling_cap_counters_on(EngineConfig::new(Storage::Memory));
}

#[test]
fn rolling_cap_counters_follow_every_finalization_on_postgres() {
    if let Some(config) = common::pg_config() {
        rolling_cap_counters_on(config);
    }
}

fn rolling_cap_counters_on(config: EngineConfig) {
    let (fx, clock, intent, token) = setup_on(
        "  caps:\n    - {scope: tenant, window: day, limit_cents: 10000, timezone: UTC}\n",
        1_000_000,
        config,
    );
    let c = Call {
        fx: &fx,
        intent,
        token,
    };
    let complete = |id, outcome, actual| {
        fx.engine
            .complete_now(
                &fx.agent,
                id,
                &CompleteRequest {
                    outcome,
                    actual_spend_cents: actual,
                },
                None,
            )
            .unwrap()
    };
    // 6000 reserved, settled at 2000: the cap counts 2000.
    let first = c.verify(&c.req(6_000));
    complete(
        first.decision_id.unwrap(),
        Finalization::Consumed,
        Some(2_000),
    );
    assert_eq!(c.codes(8_001), ["daily_tenant_cap_exceeded"]);
    // 5000 reserved then released: counted while open, not after.
    let second = c.verify(&c.req(5_000));
    assert_eq!(c.codes(3_001), ["daily_tenant_cap_exceeded"]);
    complete(second.decision_id.unwrap(), Finalization::Released, None);
    assert_eq!(c.codes(8_001), ["daily_tenant_cap_exceeded"]);
    // 7000 left open past its TTL: out of the count before the sweep and after it.
    assert!(c.verify(&c.req(7_000)).allow);
    assert_eq!(c.codes(1_001), ["daily_tenant_cap_exceeded"]);
    clock.advance_ms(5 * 60_000);
    let fill = c.verify(&c.req(8_000));
    assert!(fill.allow, "{fill:?}");
    assert_eq!(c.codes(1), ["daily_tenant_cap_exceeded"]);
    // The sweep expires it; it is not taken off a second time.
    assert_eq!(block_on(fx.engine.sweep()).unwrap().reservations_expired, 1);
    assert_eq!(c.codes(1), ["daily_tenant_cap_exceeded"]);
    complete(fill.decision_id.unwrap(), Finalization::Released, None);
    // A vendor cap published now counts what this vendor spent today already.
    let with_vendor_cap = policy(
        "  caps:\n    - {scope: tenant, window: day, limit_cents: 10000, timezone: UTC}\n    - {scope: vendor, key: vendor_acme, window: day, limit_cents: 3000, timezone: UTC}\n",
    );
    block_on(fx.engine.publish_tenant_policy_text(
        &fx.keys.tenant_id,
        &PolicyFile {
            text: with_vendor_cap,
            file: "test.yaml".to_owned(),
        },
    ))
    .unwrap();
    assert_eq!(c.codes(1_001), ["daily_vendor_cap_exceeded"]);
    let last = c.verify(&c.req(1_000));
    assert!(last.allow, "{last:?}");
    assert_eq!(c.codes(1), ["daily_vendor_cap_exceeded"]);
}
