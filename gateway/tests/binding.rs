//! Verify binds every control to what the gateway knows: no optional field of the
//! request can loosen a decision. One table, run on the embedded engine and over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::block_on;

use common::Blocking;

use std::sync::Arc;

use common::{BOOK, Fixture, SEARCH};
use paybond_gateway::{Clock, Engine, EngineConfig, PolicyFile, Storage};
use paybond_middleware_core::wire::{Principal, VerifyRequest, VerifyResult};
use paybond_middleware_core::{ApprovalToken, CapabilityToken};
use reqwest::Method;
use uuid::Uuid;

/// 2026-03-16T14:00:00Z, a Monday: 10:00 in New York.
const START_MS: i64 = 1_773_669_600_000;
const CANCEL: &str = "travel.cancel_hotel";
const VIP: &str = "travel.book_hotel_vip";

/// The tools every case has: booking (the intent's operation), a read-only search, a
/// cancellation of another operation with a loose cap, and a VIP booking tool that
/// shares booking's operation with a loose cap.
fn policy(controls: &str) -> String {
    format!(
        "version: 1
name: binding
default_deny: true
tools:
  {BOOK}: {{side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}}
  {SEARCH}: {{side_effecting: false}}
  {CANCEL}: {{side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}}
  {VIP}: {{side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion, operation: {BOOK}}}
spend_controls:
  tools:
    {CANCEL}: {{max_per_call_cents: 10000000}}
    {VIP}: {{max_per_call_cents: 10000000}}
{controls}"
    )
}

/// What a case does before its request: nothing, an allowed call that fills a
/// bucket, or an approved hold for another amount (whose token the mutation uses).
#[derive(Clone, Copy)]
enum Prep {
    None,
    Fill {
        amount: u64,
        vendor: Option<&'static str>,
        agent_subject: Option<&'static str>,
    },
    ApprovedOther(u64),
}

struct Case {
    name: &'static str,
    controls: &'static str,
    budget: u64,
    prep: Prep,
    amount: u64,
    /// The control's own answer to the request as the layer sends it.
    baseline: &'static str,
    /// What the request tries with one optional field.
    mutate: fn(&mut VerifyRequest, Option<&ApprovalToken>),
    /// The answer it must get instead of an allow.
    expect: &'static str,
}

const CAP: &str = "  tools:\n    travel.book_hotel: {max_per_call_cents: 20000, approval_threshold_cents: 15000}\n";

fn cases() -> Vec<Case> {
    let fill = |amount, vendor, agent_subject| Prep::Fill {
        amount,
        vendor,
        agent_subject,
    };
    vec![
        Case {
            name: "tool_name of a read-only tool vs the per-call cap",
            controls: CAP,
            budget: 1_000_000,
            prep: Prep::None,
            amount: 25_000,
            baseline: "tool_cap_exceeded",
            mutate: |r, _| r.tool_name = Some(SEARCH.into()),
            expect: "tool_operation_mismatch",
        },
        Case {
            name: "tool_name of a read-only tool vs the approval threshold",
            controls: CAP,
            budget: 1_000_000,
            prep: Prep::None,
            amount: 18_700,
            baseline: "approval_threshold_exceeded",
            mutate: |r, _| r.tool_name = Some(SEARCH.into()),
            expect: "tool_operation_mismatch",
        },
        Case {
            name: "tool_name of another operation's tool vs the per-call cap",
            controls: CAP,
            budget: 1_000_000,
            prep: Prep::None,
            amount: 25_000,
            baseline: "tool_cap_exceeded",
            mutate: |r, _| r.tool_name = Some(CANCEL.into()),
            expect: "tool_operation_mismatch",
        },
        Case {
            name: "tool_name of no policy tool vs allow: false",
            controls: "  tools:\n    travel.book_hotel: {allow: false}\n",
            budget: 1_000_000,
            prep: Prep::None,
            amount: 100,
            baseline: "tool_disabled",
            mutate: |r, _| r.tool_name = Some("travel.teleport".into()),
            expect: "tool_operation_mismatch",
        },
        Case {
            name: "no tool_name vs allow: false",
            controls: "  tools:\n    travel.book_hotel: {allow: false}\n",
            budget: 1_000_000,
            prep: Prep::None,
            amount: 100,
            baseline: "tool_disabled",
            mutate: |r, _| r.tool_name = None,
            expect: "tool_disabled",
        },
        Case {
            name: "tool_name of a read-only tool vs the rate limit",
            controls: "  tools:\n    travel.book_hotel: {limit_per_hour: 1}\n",
            budget: 1_000_000,
            prep: fill(100, Some("vendor_acme"), None),
            amount: 100,
            baseline: "rate_limited",
            mutate: |r, _| r.tool_name = Some(SEARCH.into()),
            expect: "tool_operation_mismatch",
        },
        Case {
            name: "no tool_name vs the rate limit",
            controls: "  tools:\n    travel.book_hotel: {limit_per_hour: 1}\n",
            budget: 1_000_000,
            prep: fill(100, Some("vendor_acme"), None),
            amount: 100,
            baseline: "rate_limited",
            mutate: |r, _| r.tool_name = None,
            expect: "rate_limited",
        },
        Case {
            name: "no tool_name where two tools share the operation: the stricter cap",
            controls: CAP,
            budget: 1_000_000,
            prep: Prep::None,
            amount: 25_000,
            baseline: "tool_cap_exceeded",
            mutate: |r, _| r.tool_name = None,
            expect: "tool_cap_exceeded",
        },
        Case {
            name: "no vendor_id vs the vendor allowlist",
            controls: "  vendors: {allow: [vendor_ok]}\n",
            budget: 1_000_000,
            prep: Prep::None,
            amount: 100,
            baseline: "vendor_not_allowed",
            mutate: |r, _| r.vendor_id = None,
            expect: "vendor_required",
        },
        Case {
            name: "an empty vendor_id vs the vendor allowlist",
            controls: "  vendors: {allow: [vendor_ok]}\n",
            budget: 1_000_000,
            prep: Prep::None,
            amount: 100,
            baseline: "vendor_not_allowed",
            mutate: |r, _| r.vendor_id = Some(String::new()),
            expect: "vendor_required",
        },
        Case {
            name: "no vendor_id vs a vendor cap",
            controls: "  caps:\n    - {scope: vendor, key: vendor_acme, window: day, limit_cents: 1000}\n",
            budget: 1_000_000,
            prep: fill(1_000, Some("vendor_acme"), None),
            amount: 500,
            baseline: "daily_vendor_cap_exceeded",
            mutate: |r, _| r.vendor_id = None,
            expect: "vendor_required",
        },
        Case {
            name: "another agent_subject vs a per-agent cap",
            controls: "  caps:\n    - {scope: agent, window: day, limit_cents: 1000}\n",
            budget: 1_000_000,
            prep: fill(1_000, Some("vendor_acme"), Some("agent-1")),
            amount: 500,
            baseline: "daily_agent_cap_exceeded",
            mutate: |r, _| r.agent_subject = Some("agent-2".into()),
            expect: "daily_agent_cap_exceeded",
        },
        Case {
            name: "no agent_subject vs a per-agent cap",
            controls: "  caps:\n    - {scope: agent, window: day, limit_cents: 1000}\n",
            budget: 1_000_000,
            prep: fill(1_000, Some("vendor_acme"), Some("agent-1")),
            amount: 500,
            baseline: "daily_agent_cap_exceeded",
            mutate: |r, _| r.agent_subject = None,
            expect: "daily_agent_cap_exceeded",
        },
        Case {
            name: "tool_name of another operation's tool vs a tool cap",
            controls: "  caps:\n    - {scope: tool, key: travel.book_hotel, window: day, limit_cents: 1000}\n",
            budget: 1_000_000,
            prep: fill(1_000, Some("vendor_acme"), None),
            amount: 500,
            baseline: "daily_tool_cap_exceeded",
            mutate: |r, _| r.tool_name = Some(CANCEL.into()),
            expect: "tool_operation_mismatch",
        },
        Case {
            name: "no tool_name vs a tool cap",
            controls: "  caps:\n    - {scope: tool, key: travel.book_hotel, window: day, limit_cents: 1000}\n",
            budget: 1_000_000,
            prep: fill(1_000, Some("vendor_acme"), None),
            amount: 500,
            baseline: "daily_tool_cap_exceeded",
            mutate: |r, _| r.tool_name = None,
            expect: "daily_tool_cap_exceeded",
        },
        Case {
            name: "another currency vs the per-call cap",
            controls: CAP,
            budget: 1_000_000,
            prep: Prep::None,
            amount: 25_000,
            baseline: "tool_cap_exceeded",
            mutate: |r, _| r.currency = Some("eur".into()),
            expect: "currency_mismatch",
        },
        Case {
            name: "task, workflow and tool call ids vs the per-call cap",
            controls: CAP,
            budget: 1_000_000,
            prep: Prep::None,
            amount: 25_000,
            baseline: "tool_cap_exceeded",
            mutate: |r, _| {
                r.task_id = Some("task-9".into());
                r.workflow_id = Some("wf-9".into());
                r.tool_call_id = Some("call-9".into());
            },
            expect: "tool_cap_exceeded",
        },
        Case {
            name: "an approval token of another request vs the approval threshold",
            controls: CAP,
            budget: 1_000_000,
            prep: Prep::ApprovedOther(16_000),
            amount: 18_700,
            baseline: "approval_threshold_exceeded",
            mutate: |r, token| r.approval_token = token.cloned(),
            expect: "approval_amount_mismatch",
        },
        Case {
            name: "a forged approval token vs the approval threshold",
            controls: CAP,
            budget: 1_000_000,
            prep: Prep::None,
            amount: 18_700,
            baseline: "approval_threshold_exceeded",
            mutate: |r, _| r.approval_token = Some(ApprovalToken::new("paybond_at_forged")),
            expect: "approval_token_invalid",
        },
        Case {
            name: "tool_name of a read-only tool vs the schedule",
            controls: "  schedule: {active_hours: {start: \"11:00\", end: \"18:00\", timezone: America/New_York}}\n",
            budget: 1_000_000,
            prep: Prep::None,
            amount: 100,
            baseline: "outside_active_hours",
            mutate: |r, _| r.tool_name = Some(SEARCH.into()),
            expect: "tool_operation_mismatch",
        },
        Case {
            name: "every recorded field vs the schedule",
            controls: "  schedule: {active_hours: {start: \"11:00\", end: \"18:00\", timezone: America/New_York}}\n",
            budget: 1_000_000,
            prep: Prep::None,
            amount: 100,
            baseline: "outside_active_hours",
            mutate: |r, _| {
                r.agent_subject = Some("night-shift".into());
                r.vendor_id = Some("vendor_night".into());
                r.currency = Some("USD".into());
                r.task_id = Some("t".into());
            },
            expect: "outside_active_hours",
        },
        Case {
            name: "tool_name of another operation's tool vs the halt gate",
            controls: "  gates: {warning: 0.5, restrict: 0.75, halt: 0.9}\n",
            budget: 100_000,
            prep: Prep::None,
            amount: 95_000,
            baseline: "budget_gate_halt",
            mutate: |r, _| r.tool_name = Some(CANCEL.into()),
            expect: "tool_operation_mismatch",
        },
        Case {
            name: "vendor and agent vs the halt gate",
            controls: "  gates: {warning: 0.5, restrict: 0.75, halt: 0.9}\n",
            budget: 100_000,
            prep: Prep::None,
            amount: 95_000,
            baseline: "budget_gate_halt",
            mutate: |r, _| {
                r.vendor_id = Some("vendor_other".into());
                r.agent_subject = None;
            },
            expect: "budget_gate_halt",
        },
    ]
}

/// How a case reaches the engine.
#[derive(Clone, Copy, Debug)]
enum Via {
    Embedded,
    Http,
    /// Over HTTP, on a PostgreSQL store.
    HttpOnPostgres,
}

struct Setup {
    fx: Fixture,
    intent: Uuid,
    token: CapabilityToken,
    base: Option<String>,
}

impl Setup {
    async fn new(controls: &str, budget: u64, via: Via) -> Self {
        let mut config = match via {
            Via::HttpOnPostgres => common::pg_config().expect("checked by the caller"),
            _ => EngineConfig::new(Storage::Memory),
        };
        config.clock = Clock::manual(START_MS);
        config.default_org_policy = None;
        config.default_tenant_policy = Some(PolicyFile {
            text: policy(controls),
            file: "binding.yaml".to_owned(),
        });
        let fx = Fixture::with_config(config);
        let (intent, token) = fx.intent(budget);
        let base = match via {
            Via::Embedded => None,
            Via::Http | Via::HttpOnPostgres => Some(common::serve(fx.engine.clone()).await),
        };
        Self {
            fx,
            intent,
            token,
            base,
        }
    }

    /// The request as the layer sends it for the booking tool.
    fn request(&self, amount: u64) -> VerifyRequest {
        VerifyRequest {
            intent_id: self.intent,
            token: self.token.clone(),
            operation: BOOK.to_owned(),
            requested_spend_cents: amount,
            vendor_id: Some("vendor_acme".to_owned()),
            task_id: None,
            workflow_id: None,
            tool_call_id: Some("call-1".to_owned()),
            tool_name: Some(BOOK.to_owned()),
            currency: Some("usd".to_owned()),
            agent_subject: Some("agent-1".to_owned()),
            approval_token: None,
            idempotency_key: None,
            phase: None,
        }
    }

    async fn verify(&self, req: &VerifyRequest) -> VerifyResult {
        match &self.base {
            None => self.fx.engine.verify_now(&self.fx.agent, req).unwrap(),
            Some(base) => {
                let body = serde_json::to_string(req).unwrap();
                let (status, json) = common::call(
                    base,
                    Method::POST,
                    "/verify",
                    Some(self.fx.keys.agent.expose_secret()),
                    Some(&body),
                )
                .await;
                assert_eq!(status, 200, "{json}");
                serde_json::from_value(json).unwrap()
            }
        }
    }

    fn reserved(&self) -> u64 {
        block_on(self.fx.engine.get_intent(&self.fx.agent, self.intent))
            .unwrap()
            .reserved_cents
    }
}

/// The one reason code that says why a request was not allowed.
fn refusal(r: &VerifyResult) -> Option<&str> {
    if r.allow {
        return None;
    }
    r.reason_codes.first().map(String::as_str)
}

async fn run_table(via: Via) {
    for case in cases() {
        let setup = Setup::new(case.controls, case.budget, via).await;
        let mut approval = None;
        match case.prep {
            Prep::None => {}
            Prep::Fill {
                amount,
                vendor,
                agent_subject,
            } => {
                let mut r = setup.request(amount);
                r.vendor_id = vendor.map(Into::into);
                r.agent_subject = agent_subject.map(Into::into);
                let filled = setup.verify(&r).await;
                assert!(
                    filled.allow,
                    "{}: the fill was refused: {filled:?}",
                    case.name
                );
            }
            Prep::ApprovedOther(amount) => {
                let held = setup.verify(&setup.request(amount)).await;
                let id = held.approval_request_id.expect("a hold");
                setup
                    .fx
                    .engine
                    .approve(&setup.fx.operator, id)
                    .await
                    .unwrap();
                approval = setup
                    .fx
                    .engine
                    .approval(&setup.fx.agent, id)
                    .await
                    .unwrap()
                    .approval_token;
            }
        }
        let reserved = setup.reserved();

        let baseline = setup.verify(&setup.request(case.amount)).await;
        assert_eq!(
            refusal(&baseline),
            Some(case.baseline),
            "{} ({via:?}): baseline {baseline:?}",
            case.name
        );
        let mut req = setup.request(case.amount);
        (case.mutate)(&mut req, approval.as_ref());
        let tried = setup.verify(&req).await;
        assert_eq!(
            refusal(&tried),
            Some(case.expect),
            "{} ({via:?}): {tried:?}",
            case.name
        );
        assert_eq!(
            setup.reserved(),
            reserved,
            "{} ({via:?}): a refused request reserved something",
            case.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_optional_field_loosens_a_control_embedded() {
    run_table(Via::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_optional_field_loosens_a_control_over_http() {
    run_table(Via::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_optional_field_loosens_a_control_on_postgres() {
    if common::pg_database().is_some() {
        run_table(Via::HttpOnPostgres).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_name_picks_one_of_the_tools_sharing_an_operation() {
    let setup = Setup::new(CAP, 1_000_000, Via::Embedded).await;
    // Both tools are the booking operation's: naming the VIP tool applies its controls.
    let mut vip = setup.request(25_000);
    vip.tool_name = Some(VIP.to_owned());
    assert!(setup.verify(&vip).await.allow);
    // Naming none applies the stricter of the two.
    let mut none = setup.request(25_000);
    none.tool_name = None;
    assert_eq!(
        refusal(&setup.verify(&none).await),
        Some("tool_cap_exceeded")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_binding_is_recorded_in_the_ledger_with_what_the_caller_sent() {
    let setup = Setup::new(CAP, 1_000_000, Via::Embedded).await;
    let mut req = setup.request(25_000);
    req.tool_name = Some(SEARCH.to_owned());
    req.task_id = Some("task-1".to_owned());
    req.workflow_id = Some("wf-1".to_owned());
    let r = setup.verify(&req).await;
    assert_eq!(refusal(&r), Some("tool_operation_mismatch"));
    let events = setup
        .fx
        .engine
        .ledger_events(&setup.fx.operator, 0, 1000)
        .await
        .unwrap();
    let deny = events.iter().find(|e| e.event == "decision.deny").unwrap();
    assert_eq!(deny.payload["tool"], BOOK);
    assert_eq!(deny.payload["agent"], setup.fx.agent.subject.as_str());
    assert_eq!(deny.payload["agent_subject"], "agent-1");
    assert_eq!(deny.payload["task_id"], "task-1");
    assert_eq!(deny.payload["workflow_id"], "wf-1");
    assert_eq!(deny.payload["tool_call_id"], "call-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_settles_at_most_the_reservation_and_finalizes_once() {
    use paybond_middleware_core::wire::{CompleteRequest, Finalization};
    let setup = Setup::new(CAP, 1_000_000, Via::Http).await;
    let base = setup.base.clone().unwrap();
    let key = setup.fx.keys.agent.expose_secret().to_owned();
    let complete = |decision: Uuid, body: &'static str| {
        let base = base.clone();
        let key = key.clone();
        async move {
            common::call(
                &base,
                Method::POST,
                &format!("/v1/spend/decisions/{decision}/complete"),
                Some(&key),
                Some(body),
            )
            .await
        }
    };

    // A cost reported above the reservation is settled at the reservation and recorded.
    let allowed = setup.verify(&setup.request(10_000)).await;
    let id = allowed.decision_id.unwrap();
    let over = r#"{"outcome": "consumed", "actual_spend_cents": 12500}"#;
    let (status, first) = complete(id, over).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["actual_spend_cents"], 10_000);
    assert_eq!(first["returned_cents"], 0);
    assert_eq!(first["reported_spend_cents"], 12_500);
    // The same outcome again answers the same; another outcome or amount is 409 and changes nothing.
    assert_eq!(complete(id, over).await, (200, first.clone()));
    assert_eq!(
        complete(id, r#"{"outcome": "consumed"}"#).await,
        (200, first.clone())
    );
    let (status, body) = complete(id, r#"{"outcome": "released"}"#).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("decision_already_finalized"))
    );
    let (status, body) =
        complete(id, r#"{"outcome": "consumed", "actual_spend_cents": 9000}"#).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("decision_already_finalized"))
    );
    let view = setup
        .fx
        .engine
        .get_intent(&setup.fx.agent, setup.intent)
        .await
        .unwrap();
    assert_eq!((view.consumed_cents, view.reserved_cents), (10_000, 0));
    let events = setup
        .fx
        .engine
        .ledger_events(&setup.fx.operator, 0, 1000)
        .await
        .unwrap();
    let consumed: Vec<_> = events
        .iter()
        .filter(|e| e.event == "reservation.consumed")
        .collect();
    assert_eq!(consumed.len(), 1);
    assert_eq!(consumed[0].payload["reported_cents"], 12_500);

    // Released twice is idempotent too.
    let second = setup
        .verify(&setup.request(5_000))
        .await
        .decision_id
        .unwrap();
    let released = complete(second, r#"{"outcome": "released"}"#).await;
    assert_eq!(released.0, 200);
    assert_eq!(
        complete(second, r#"{"outcome": "released"}"#).await,
        released
    );
    let (status, body) = complete(second, r#"{"outcome": "consumed"}"#).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("decision_already_finalized"))
    );

    // A hold and a deny reserved nothing: completing them is 409.
    let held = setup.verify(&setup.request(18_700)).await;
    assert!(held.approval_required);
    let denied = setup.verify(&setup.request(25_000)).await;
    assert!(!denied.allow && !denied.approval_required);
    for decision in [held.decision_id.unwrap(), denied.decision_id.unwrap()] {
        let (status, body) = complete(decision, r#"{"outcome": "consumed"}"#).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (409, Some("decision_not_allowed"))
        );
    }
    // Embedded, the same answers.
    let err = setup
        .fx
        .engine
        .complete_now(
            &setup.fx.agent,
            id,
            &CompleteRequest {
                outcome: Finalization::Released,
                actual_spend_cents: None,
            },
            None,
        )
        .unwrap_err();
    assert_eq!((err.status, err.code), (409, "decision_already_finalized"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_answers_its_operation_and_amount() {
    let setup = Setup::new(CAP, 60_000, Via::Http).await;
    let base = setup.base.clone().unwrap();
    let key = setup.fx.keys.agent.expose_secret();
    let path = format!("/v1/sandbox/guardrails/{}/evidence", setup.intent);
    let (status, body) = common::call(
        &base,
        Method::POST,
        &path,
        Some(key),
        Some(r#"{"payload": {"status": "completed", "cost_cents": 100}}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["operation"], BOOK);
    assert_eq!(body["requested_spend_cents"], 60_000);
    let (status, body) = common::call(
        &base,
        Method::POST,
        &path,
        Some(key),
        Some(r#"{"operation": "travel.teleport", "payload": {}}"#),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("operation_not_allowed"))
    );
}

mod props {
    //! For random policies and random verify bodies, adding any optional field (and
    //! `tool_name`, `agent_subject`, `currency`, the ids and an approval token in any
    //! combination) never turns a deny or a hold into an allow. Approval tokens here are
    //! forged or absent, so the one exception (a valid token for exactly that
    //! request) cannot occur; every operation has one tool, so `tool_name` has no
    //! sibling to pick (see `tool_name_picks_one_of_the_tools_sharing_an_operation`).

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Body {
        amount: u64,
        tool_name: Option<&'static str>,
        vendor: Option<&'static str>,
        agent_subject: Option<&'static str>,
        currency: Option<&'static str>,
        ids: Option<&'static str>,
        approval: bool,
    }

    fn body() -> impl Strategy<Value = Body> {
        (
            0u64..30_000,
            prop::sample::select(vec![
                None,
                Some(BOOK),
                Some(SEARCH),
                Some(CANCEL),
                Some("travel.teleport"),
                Some(""),
            ]),
            prop::sample::select(vec![None, Some("vendor_acme"), Some("vendor_b"), Some("")]),
            prop::sample::select(vec![None, Some("agent-1"), Some("agent-2")]),
            prop::sample::select(vec![None, Some("usd"), Some("USD"), Some("eur")]),
            prop::sample::select(vec![None, Some("x"), Some("y")]),
            any::<bool>(),
        )
            .prop_map(
                |(amount, tool_name, vendor, agent_subject, currency, ids, approval)| Body {
                    amount,
                    tool_name,
                    vendor,
                    agent_subject,
                    currency,
                    ids,
                    approval,
                },
            )
    }

    /// A random `spend_controls` block over the booking and cancelling tools.
    fn controls() -> impl Strategy<Value = String> {
        (
            prop::option::of(5_000u64..25_000),
            prop::option::of(1_000u64..20_000),
            prop::option::of(1u32..3),
            prop::sample::select(vec![None, Some(true), Some(false)]),
            any::<bool>(),
            prop::collection::vec(
                (
                    prop::sample::select(vec!["tenant", "agent", "vendor", "tool"]),
                    prop::sample::select(vec![
                        None,
                        Some("vendor_acme"),
                        Some("agent-1"),
                        Some(BOOK),
                    ]),
                    1_000u64..40_000,
                ),
                0..3,
            ),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(cap, threshold, per_hour, allow, vendors, caps, gates, schedule)| {
                    let mut book = Vec::new();
                    if let Some(c) = cap {
                        book.push(format!("max_per_call_cents: {c}"));
                    }
                    if let Some(t) = threshold {
                        book.push(format!("approval_threshold_cents: {t}"));
                    }
                    if let Some(n) = per_hour {
                        book.push(format!("limit_per_hour: {n}"));
                    }
                    if let Some(a) = allow {
                        book.push(format!("allow: {a}"));
                    }
                    let mut out = String::new();
                    if !book.is_empty() {
                        out += &format!("    {BOOK}: {{{}}}\n", book.join(", "));
                    }
                    if vendors {
                        out += "  vendors: {allow: [vendor_acme]}\n";
                    }
                    if !caps.is_empty() {
                        out += "  caps:\n";
                        for (scope, key, limit) in caps {
                            let key = match (scope, key) {
                                ("tenant", _) | (_, None) => String::new(),
                                ("vendor", Some(k)) if k == "vendor_acme" => format!(", key: {k}"),
                                ("agent", Some(k)) if k == "agent-1" => format!(", key: {k}"),
                                ("tool", Some(k)) if k == BOOK => format!(", key: {k}"),
                                _ => String::new(),
                            };
                            out += &format!(
                                "    - {{scope: {scope}{key}, window: day, limit_cents: {limit}}}\n"
                            );
                        }
                    }
                    if gates {
                        out += "  gates: {warning: 0.5, restrict: 0.75, halt: 0.9}\n";
                    }
                    if schedule {
                        out += "  schedule: {active_hours: {start: \"11:00\", end: \"18:00\", timezone: America/New_York}}\n";
                    }
                    out
                },
            )
    }

    /// Policies for the property: one tool per operation (no VIP sibling).
    fn single_tool_policy(controls: &str) -> String {
        format!(
            "version: 1
name: binding
default_deny: true
tools:
  {BOOK}: {{side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}}
  {SEARCH}: {{side_effecting: false}}
  {CANCEL}: {{side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}}
spend_controls:
  tools:
    {CANCEL}: {{max_per_call_cents: 10000000}}
{controls}"
        )
    }

    struct World {
        engine: Arc<Engine>,
        agent: Principal,
        intent: Uuid,
        token: CapabilityToken,
    }

    fn world(controls: &str, history: &[Body]) -> World {
        let mut config = EngineConfig::new(Storage::Memory);
        config.clock = Clock::manual(START_MS);
        config.default_org_policy = None;
        config.default_tenant_policy = Some(PolicyFile {
            text: single_tool_policy(controls),
            file: "prop.yaml".to_owned(),
        });
        let fx = Fixture::with_config(config);
        let (intent, token) = fx.intent(50_000);
        let w = World {
            engine: fx.engine.clone(),
            agent: fx.agent.clone(),
            intent,
            token,
        };
        for b in history {
            w.engine.verify_now(&w.agent, &w.request(b)).unwrap();
        }
        w
    }

    impl World {
        fn request(&self, b: &Body) -> VerifyRequest {
            VerifyRequest {
                intent_id: self.intent,
                token: self.token.clone(),
                operation: BOOK.to_owned(),
                requested_spend_cents: b.amount,
                vendor_id: b.vendor.map(Into::into),
                task_id: b.ids.map(Into::into),
                workflow_id: b.ids.map(Into::into),
                tool_call_id: b.ids.map(Into::into),
                tool_name: b.tool_name.map(Into::into),
                currency: b.currency.map(Into::into),
                agent_subject: b.agent_subject.map(Into::into),
                approval_token: b
                    .approval
                    .then(|| ApprovalToken::new("paybond_at_not_issued")),
                idempotency_key: None,
                phase: None,
            }
        }
    }

    /// The same call with every optional field absent but the vendor, which names
    /// whom the money goes to: a request for another vendor is another call, which
    /// the gateway records and binds approvals to but cannot tell from the real one.
    fn without_optional_fields(b: &Body) -> Body {
        Body {
            amount: b.amount,
            tool_name: None,
            vendor: b.vendor,
            agent_subject: None,
            currency: None,
            ids: None,
            approval: false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn optional_fields_never_turn_a_refusal_into_an_allow(
            controls in controls(),
            history in prop::collection::vec(body(), 0..4),
            tried in body(),
        ) {
            let plain = world(&controls, &history);
            let baseline = plain
                .engine
                .verify_now(&plain.agent, &plain.request(&without_optional_fields(&tried)))
                .unwrap();
            let other = world(&controls, &history);
            let answer = other.engine.verify_now(&other.agent, &other.request(&tried)).unwrap();
            if !baseline.allow {
                prop_assert!(
                    !answer.allow,
                    "{tried:?} loosened {:?} into an allow under\n{controls}",
                    baseline.reason_codes
                );
            }
        }
    }
}
