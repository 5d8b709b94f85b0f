//! The generic `{name, execute}` adapter: dispatch by name through the layer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use paybond_middleware_core::testing::{ScriptedGateway, VerifyScript};
use paybond_middleware_core::trace::TraceOutcome;
use paybond_middleware_core::wire::Finalization;
use paybond_middleware_core::{
    BoxError, PaybondAgentRun, RunErrorKind, Tool, ToolOutput, ToolRegistry,
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

/// A booking, as the typed tools below take it.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Booking {
    /// The hotel.
    hotel: String,
    /// What it costs, in cents.
    amount_cents: u64,
}

struct TypedBook {
    runs: Arc<AtomicUsize>,
}

#[async_trait]
impl paybond_middleware_core::TypedTool for TypedBook {
    type Args = Booking;
    fn name(&self) -> &str {
        "travel.book_hotel"
    }
    async fn call(&self, args: Booking) -> Result<ToolOutput, BoxError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(ToolOutput::new(json!({"booked": args.hotel})).with_cost_cents(args.amount_cents))
    }
}

#[tokio::test]
async fn typed_tools_take_their_schema_from_their_type_and_refuse_bad_arguments_before_verify() {
    let gateway = Arc::new(ScriptedGateway::new());
    gateway
        .push_verify(VerifyScript::Allow)
        .push_verify(VerifyScript::Allow);
    let run = PaybondAgentRun::builder(gateway.clone(), Uuid::new_v4(), "tok".into())
        .tool(
            "travel.book_hotel",
            ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
        )
        .tool(
            "travel.pay",
            ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
        )
        .bind()
        .await
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let pays = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&pays);
    let tools = ToolRegistry::new()
        .with(TypedBook {
            runs: Arc::clone(&runs),
        })
        .with(paybond_middleware_core::tool_fn(
            "travel.pay",
            ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
            move |b: Booking| {
                let counted = Arc::clone(&counted);
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    Ok(ToolOutput::new(json!({"paid": b.hotel})).with_cost_cents(b.amount_cents))
                }
            },
        ))
        .guarded(&run);

    // The schema is the type's, for both.
    for d in tools.definitions() {
        assert_eq!(
            d.parameters["required"],
            json!(["hotel", "amount_cents"]),
            "{}",
            d.name
        );
        assert_eq!(
            d.parameters["properties"]["amount_cents"]["type"],
            "integer"
        );
        assert_eq!(
            d.parameters["properties"]["hotel"]["description"],
            "The hotel."
        );
    }

    // Arguments that are not a `Booking`: refused, no verify, the tool does not run.
    for (tool, args) in [
        ("travel.book_hotel", json!({"amount_cents": 12_000})),
        (
            "travel.pay",
            json!({"hotel": "h1", "amount_cents": "twelve"}),
        ),
    ] {
        let refused = tools.call(tool, args, "bad").await.unwrap_err();
        assert_eq!(refused.kind(), RunErrorKind::InvalidCall, "{refused}");
        assert!(
            refused.to_string().contains("invalid arguments"),
            "{refused}"
        );
    }
    assert!(gateway.verifies().is_empty());
    assert_eq!(
        (runs.load(Ordering::SeqCst), pays.load(Ordering::SeqCst)),
        (0, 0)
    );

    // Good ones run, typed.
    let booked = tools
        .call(
            "travel.book_hotel",
            json!({"hotel": "h1", "amount_cents": 12_000}),
            "c1",
        )
        .await
        .unwrap();
    assert_eq!(
        (booked.body["booked"].clone(), booked.cost_cents),
        (json!("h1"), Some(12_000))
    );
    let paid = tools
        .call(
            "travel.pay",
            json!({"hotel": "h2", "amount_cents": 900}),
            "c2",
        )
        .await
        .unwrap();
    assert_eq!(paid.cost_cents, Some(900));
    assert_eq!(gateway.verifies().len(), 2);
}
