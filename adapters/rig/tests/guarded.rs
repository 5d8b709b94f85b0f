//! A rig tool wrapped by `guarded`: authorized first, feedback text for holds and denials.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use paybond_adapter_rig::guarded;
use paybond_middleware_core::PaybondAgentRun;
use paybond_middleware_core::feedback::FeedbackStatus;
use paybond_middleware_core::testing::{ScriptedGateway, VerifyScript};
use paybond_middleware_core::trace::TraceOutcome;
use paybond_middleware_core::wire::Finalization;
use paybond_policies::ToolPolicy;
use rig_core::tool::{Tool, ToolContext};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Args {
    amount_cents: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("vendor down")]
struct Down;

struct Book(Arc<AtomicUsize>);

/// The same tool under the policy's own name, which model APIs refuse.
struct Dotted;

impl Tool for Dotted {
    const NAME: &'static str = "travel.book_hotel";
    type Args = Args;
    type Output = Value;
    type Error = Down;
    fn description(&self) -> String {
        "Book".into()
    }
    fn parameters(&self) -> Value {
        json!({"type": "object"})
    }
    async fn call(&self, _cx: &mut ToolContext, _args: Args) -> Result<Value, Down> {
        Err(Down)
    }
}

impl Tool for Book {
    const NAME: &'static str = "travel_book_hotel";
    type Args = Args;
    type Output = Value;
    type Error = Down;
    fn description(&self) -> String {
        "Book".into()
    }
    fn parameters(&self) -> Value {
        json!({"type": "object"})
    }
    async fn call(&self, _cx: &mut ToolContext, args: Args) -> Result<Value, Down> {
        self.0.fetch_add(1, Ordering::SeqCst);
        if args.amount_cents == 13 {
            return Err(Down);
        }
        Ok(json!({"confirmation": "H-1", "cost_cents": args.amount_cents - 100}))
    }
}

#[tokio::test]
async fn guarded_rig_tools_are_authorized_first() {
    let gateway = Arc::new(ScriptedGateway::new());
    let run = PaybondAgentRun::builder(gateway.clone(), uuid::Uuid::new_v4(), "cap".into())
        .tool(
            "travel.book_hotel",
            ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
        )
        .bind()
        .await
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let tool = guarded(Book(ran.clone()), &run).unwrap();
    assert_eq!(
        <paybond_adapter_rig::Guarded<Book> as Tool>::NAME,
        "travel_book_hotel"
    );
    // The policy's own name is not a function name a model API accepts: refused
    // when the tool is wrapped, with the name to use instead.
    let Err(err) = guarded(Dotted, &run) else {
        panic!("a dotted rig tool name was accepted");
    };
    assert!(err.to_string().contains("`travel_book_hotel`"), "{err}");
    let mut cx = ToolContext::default();

    gateway
        .push_verify(VerifyScript::Allow)
        .push_verify(VerifyScript::hold())
        .push_verify(VerifyScript::deny("tool_cap_exceeded"))
        .push_verify(VerifyScript::Allow);
    let ok = tool
        .call(&mut cx, json!({"amount_cents": 1200}))
        .await
        .unwrap();
    assert_eq!(ok["confirmation"], "H-1");
    let held = tool
        .call(&mut cx, json!({"amount_cents": 1200}))
        .await
        .unwrap_err();
    assert_eq!(held.status, FeedbackStatus::PendingApproval);
    assert_eq!(
        held.feedback["reason_codes"],
        json!(["approval_threshold_exceeded"])
    );
    let denied = tool
        .call(&mut cx, json!({"amount_cents": 9000}))
        .await
        .unwrap_err();
    assert_eq!(denied.status, FeedbackStatus::Blocked);
    // The model reads the feedback JSON as the error text.
    let text = tool.map_error(denied).to_string();
    assert!(text.contains("tool_cap_exceeded"), "{text}");
    let failed = tool
        .call(&mut cx, json!({"amount_cents": 13}))
        .await
        .unwrap_err();
    assert_eq!(failed.status, FeedbackStatus::Error);

    // Only the allowed calls ran; the reported cost was settled, the failure released.
    assert_eq!(ran.load(Ordering::SeqCst), 2);
    let entries = run.trace().entries();
    let got: Vec<_> = entries
        .iter()
        .map(|e| (e.outcome, e.finalization, e.actual_cents))
        .collect();
    assert_eq!(
        got,
        [
            (
                TraceOutcome::Allow,
                Some(Finalization::Consumed),
                Some(1100)
            ),
            (TraceOutcome::Hold, None, None),
            (TraceOutcome::Deny, None, None),
            (TraceOutcome::Allow, Some(Finalization::Released), None),
        ]
    );
    // The calls are the policy tool's.
    assert!(entries.iter().all(|e| e.tool == "travel.book_hotel"));
    // Each call has an id shaped as OpenAI's (`call_` and 24 hex digits), its own.
    let ids: Vec<_> = entries.iter().map(|e| e.tool_call_id.as_str()).collect();
    for id in &ids {
        let hex = id.strip_prefix("call_").unwrap_or_default();
        assert!(
            hex.len() == 24 && hex.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
    }
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "{ids:?}");
}

#[tokio::test]
async fn guarded_dynamic_tools_keep_their_definition_and_are_authorized() {
    use paybond_adapter_rig::guarded_dynamic;
    use rig_core::message::ToolName;
    use rig_core::tool::DynamicTool;

    let gateway = Arc::new(ScriptedGateway::new());
    let run = PaybondAgentRun::builder(gateway.clone(), uuid::Uuid::new_v4(), "cap".into())
        .tool(
            "shop.buy",
            ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
        )
        .bind()
        .await
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();
    let tool = DynamicTool::new(
        ToolName::new("shop.buy").unwrap(),
        "Buy",
        json!({"type": "object"}),
        move |_args: Value| {
            counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(rig_core::tool::ToolOutput::json(json!({"ok": true}))) })
        },
    );
    let guarded = guarded_dynamic(tool, &run).unwrap();
    // Renamed for the model; the calls stay the policy tool's.
    assert_eq!(guarded.name().to_string(), "shop_buy");
    assert_eq!(guarded.definition().description, "Buy");

    gateway
        .push_verify(VerifyScript::Allow)
        .push_verify(VerifyScript::deny("tool_cap_exceeded"));
    guarded.execute(json!({"amount_cents": 500})).await.unwrap();
    let denied = guarded
        .execute(json!({"amount_cents": 50_000}))
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("tool_cap_exceeded"), "{denied}");
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    let outcomes: Vec<_> = run
        .trace()
        .entries()
        .iter()
        .map(|e| (e.tool.clone(), e.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("shop.buy".to_owned(), TraceOutcome::Allow),
            ("shop.buy".to_owned(), TraceOutcome::Deny)
        ]
    );
}

#[tokio::test]
async fn commit_plan_is_offered_when_the_policy_names_a_payment_phase() {
    use paybond_adapter_rig::{commit_plan_tool, guarded_dynamic};
    use paybond_middleware_core::wire::Phase;
    use rig_core::message::ToolName;
    use rig_core::tool::DynamicTool;

    let policy = paybond_policies::check_policy(
        "version: 1\nname: t\ntools:\n  shop.buy: {side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}\nspend_controls:\n  phases: {payment_phase: COMMIT}\n",
        "t.yaml",
    )
    .document
    .unwrap();
    let gateway = Arc::new(ScriptedGateway::new());
    gateway.set_effective_policy(policy);
    let run = PaybondAgentRun::builder(gateway.clone(), uuid::Uuid::new_v4(), "cap".into())
        .bind()
        .await
        .unwrap();
    let buy = guarded_dynamic(
        DynamicTool::new(
            ToolName::new("shop.buy").unwrap(),
            "Buy",
            json!({"type": "object"}),
            |_args: Value| Box::pin(async { Ok(rig_core::tool::ToolOutput::json(json!({}))) }),
        ),
        &run,
    )
    .unwrap();
    gateway
        .push_verify(VerifyScript::deny("phase_not_committed"))
        .push_verify(VerifyScript::Allow);
    assert!(buy.execute(json!({"amount_cents": 5})).await.is_err());
    let commit = commit_plan_tool(&run).expect("the policy names a payment phase");
    assert_eq!(commit.name().to_string(), "commit_plan");
    commit.execute(json!({"plan": "buy one"})).await.unwrap();
    assert_eq!(run.phase(), Phase::Commit);
    buy.execute(json!({"amount_cents": 5})).await.unwrap();
    let phases: Vec<_> = gateway.verifies().iter().map(|v| v.phase).collect();
    assert_eq!(phases, [Some(Phase::Explore), Some(Phase::Commit)]);

    // No payment phase: no tool.
    let plain = Arc::new(ScriptedGateway::new());
    let run = PaybondAgentRun::builder(plain, uuid::Uuid::new_v4(), "cap".into())
        .bind()
        .await
        .unwrap();
    assert!(commit_plan_tool(&run).is_none());
}
