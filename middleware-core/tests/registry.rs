//! The generic `{name, execute}` adapter: dispatch by name through the layer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use paybond_middleware_core::testing::{ScriptedGateway, VerifyScript};
use paybond_middleware_core::wire::Finalization;
use paybond_middleware_core::{
    BoxError, PaybondAgentRun, RunErrorKind, Tool, ToolOutput, ToolRegistry, TraceOutcome,
};
use paybond_policies::ToolPolicy;
use serde_json::{Value, json};
use uuid::Uuid;

struct Book {
    runs: Arc<AtomicUsize>,
}

#[async_trait]
impl Tool for Book {
    fn name(&self) -> &str {
        "travel.book_hotel"
    }
    fn description(&self) -> &str {
        "Book a hotel room"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"amount_cents": {"type": "integer"}}, "required": ["amount_cents"]})
    }
    async fn execute(&self, args: Value) -> Result<ToolOutput, BoxError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if args["vendor_fails"] == true {
            return Err("vendor unavailable".into());
        }
        let cents = args["amount_cents"]
            .as_u64()
            .ok_or("amount_cents is required")?;
        Ok(ToolOutput::new(json!({"confirmation": "H-1"})).with_cost_cents(cents))
    }
}

struct Search;

#[async_trait]
impl Tool for Search {
    fn name(&self) -> &str {
        "travel.search_hotels"
    }
    async fn execute(&self, args: Value) -> Result<ToolOutput, BoxError> {
        Ok(json!({"hotels": ["h1", "h2"], "city": args["city"]}).into())
    }
}

#[tokio::test]
async fn dispatches_by_name_through_the_layer() {
    let gateway = Arc::new(ScriptedGateway::new());
    gateway
        .push_verify(VerifyScript::Allow)
        .push_verify(VerifyScript::deny("tool_cap_exceeded"))
        .push_verify(VerifyScript::Allow);
    let run = PaybondAgentRun::builder(gateway.clone(), Uuid::new_v4(), "tok".into())
        .tool(
            "travel.book_hotel",
            ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
        )
        .tool("travel.search_hotels", ToolPolicy::read_only())
        .bind()
        .await
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let tools = ToolRegistry::new()
        .with(Book {
            runs: Arc::clone(&runs),
        })
        .with(Search)
        .guarded(&run);

    let names: Vec<_> = tools
        .definitions()
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(names, ["travel.book_hotel", "travel.search_hotels"]);
    assert_eq!(
        tools.definitions()[0].parameters["required"],
        json!(["amount_cents"])
    );

    let found = tools
        .call("travel.search_hotels", json!({"city": "Lisbon"}), "c1")
        .await
        .unwrap();
    assert_eq!(found.body["city"], "Lisbon");
    let booked = tools
        .call("travel.book_hotel", json!({"amount_cents": 12_000}), "c2")
        .await
        .unwrap();
    assert_eq!(booked.cost_cents, Some(12_000));
    let denied = tools
        .call("travel.book_hotel", json!({"amount_cents": 25_000}), "c3")
        .await
        .unwrap_err();
    assert_eq!(denied.kind(), RunErrorKind::SpendDenied);
    let failed = tools
        .call(
            "travel.book_hotel",
            json!({"amount_cents": 9_000, "vendor_fails": true}),
            "c4",
        )
        .await
        .unwrap_err();
    assert_eq!(failed.kind(), RunErrorKind::Tool);
    assert!(failed.to_string().contains("vendor unavailable"));

    // A name no tool has is refused before any verify.
    let verifies = gateway.verifies().len();
    let unknown = tools
        .call("travel.cancel", json!({}), "c5")
        .await
        .unwrap_err();
    assert_eq!(unknown.kind(), RunErrorKind::InvalidCall);
    assert!(unknown.to_string().contains("travel.cancel"));
    assert_eq!(gateway.verifies().len(), verifies);

    assert_eq!(runs.load(Ordering::SeqCst), 2, "the denied call never ran");
    let amounts: Vec<u64> = gateway
        .verifies()
        .iter()
        .map(|v| v.requested_spend_cents)
        .collect();
    assert_eq!(amounts, [12_000, 25_000, 9_000]);
    let trace: Vec<_> = run
        .trace()
        .entries()
        .iter()
        .map(|e| (e.outcome, e.finalization))
        .collect();
    assert_eq!(
        trace,
        [
            (TraceOutcome::Passthrough, None),
            (TraceOutcome::Allow, Some(Finalization::Consumed)),
            (TraceOutcome::Deny, None),
            (TraceOutcome::Allow, Some(Finalization::Released)),
        ]
    );
    let totals = run.trace().totals();
    assert_eq!(
        (totals.consumed_cents, totals.released_cents),
        (12_000, 9_000)
    );
}
