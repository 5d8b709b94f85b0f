//! The scenarios' travel tools: a read-only hotel search, a paid booking, and (for
//! the governed scenario) a trip that books several stays as one workflow.

use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use paybond_middleware_core::registry::GuardedRegistry;
use paybond_middleware_core::scope::transaction;
use paybond_middleware_core::wire::CompensationOutcome;
use paybond_middleware_core::{BoxError, PaybondAgentRun, Tool, ToolOutput, ToolRegistry};
use serde_json::{Value, json};

/// `travel.search_hotels`: lists hotels; no side effects.
#[derive(Debug, Clone, Copy)]
pub struct SearchHotels;

/// `travel.book_hotel`: books and charges `amount_cents`. The sandbox vendor fails
/// when asked to (`simulate_vendor_failure`), as real vendors sometimes do.
#[derive(Debug, Clone, Copy)]
pub struct BookHotel;

/// The name of the search tool.
pub const SEARCH: &str = "travel.search_hotels";
/// The name of the booking tool.
pub const BOOK: &str = "travel.book_hotel";
/// The name of the trip tool.
pub const TRIP: &str = "travel.book_trip";

#[async_trait]
impl Tool for SearchHotels {
    fn name(&self) -> &str {
        SEARCH
    }

    fn description(&self) -> &str {
        "Search hotels in a city. Free; returns names and nightly prices in cents."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City to search"}},
            "required": ["city"]
        })
    }

    async fn execute(&self, args: Value) -> Result<ToolOutput, BoxError> {
        let city = args["city"]
            .as_str()
            .ok_or("`city` (a string) is required")?;
        Ok(ToolOutput::new(json!({
            "city": city,
            "hotels": [
                {"hotel": "Harbor Inn", "nightly_cents": 12_000},
                {"hotel": "Bay Suites", "nightly_cents": 18_700},
                {"hotel": "Grand Palace", "nightly_cents": 25_000},
                {"hotel": "Dock Hostel", "nightly_cents": 9_000}
            ]
        })))
    }
}

#[async_trait]
impl Tool for BookHotel {
    fn name(&self) -> &str {
        BOOK
    }

    fn description(&self) -> &str {
        "Book a hotel and charge its price. Paid: authorized against the spend policy before it runs."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "hotel": {"type": "string"},
                "amount_cents": {"type": "integer", "minimum": 1, "description": "Price in cents"},
                "simulate_vendor_failure": {"type": "boolean", "description": "Sandbox only: make the vendor fail"},
                "guest_note": {"type": "string", "description": "A note for the hotel"}
            },
            "required": ["hotel", "amount_cents"]
        })
    }

    async fn execute(&self, args: Value) -> Result<ToolOutput, BoxError> {
        let hotel = args["hotel"]
            .as_str()
            .ok_or("`hotel` (a string) is required")?;
        let cents = args["amount_cents"]
            .as_u64()
            .ok_or("`amount_cents` (a whole number) is required")?;
        if args["simulate_vendor_failure"] == true {
            return Err(format!("{hotel}: the vendor's booking API answered 503").into());
        }
        Ok(ToolOutput::new(json!({
            "hotel": hotel,
            "confirmation": format!("PB-{:06}", cents % 1_000_000),
            "charged_cents": cents
        }))
        .with_cost_cents(cents))
    }
}

/// Both tools.
pub fn registry() -> ToolRegistry {
    ToolRegistry::new().with(SearchHotels).with(BookHotel)
}

/// `travel.book_trip`: books several stays as one trip. Not paid itself: each stay
/// is a guarded `travel.book_hotel` call (tool call `trip<N>.stay<M>`) inside a
/// [`transaction`]; when a stay fails, the stays already booked are cancelled, last
/// first, and the trip fails with the stay's error.
#[derive(Debug)]
pub struct BookTrip {
    tools: GuardedRegistry,
    trips: AtomicU32,
}

impl BookTrip {
    /// Books stays through `tools` (the run's guarded travel tools).
    pub fn new(tools: GuardedRegistry) -> Self {
        Self {
            tools,
            trips: AtomicU32::new(0),
        }
    }

    /// Books the trip: the stays' bookings, or the error that stopped it and what
    /// was cancelled.
    pub async fn book(&self, args: &Value) -> Result<Value, BoxError> {
        let stays = args["stays"]
            .as_array()
            .filter(|s| !s.is_empty())
            .ok_or("`stays` (a non-empty list of {hotel, amount_cents}) is required")?;
        let trip = self.trips.fetch_add(1, Ordering::Relaxed) + 1;
        let run = self.tools.run();
        let booked = transaction(run, format!("trip-{trip}"), |scope| async move {
            let mut booked = Vec::with_capacity(stays.len());
            for (i, stay) in stays.iter().enumerate() {
                let id = format!("trip{trip}.stay{}", i + 1);
                let out = self.tools.call(BOOK, stay.clone(), &id).await?;
                let confirmation = out.body["confirmation"].as_str().unwrap_or("-").to_owned();
                // The sandbox vendor's cancellation always succeeds.
                scope.compensate_with(&id, move || async move {
                    tracing::info!(%confirmation, "booking cancelled");
                    Ok(())
                });
                booked.push(out.body);
            }
            Ok::<_, paybond_middleware_core::RunError>(booked)
        })
        .await;
        match booked {
            Ok(stays) => Ok(json!({"trip": trip, "stays": stays})),
            Err(failed) => {
                let cancelled: Vec<&str> = failed
                    .compensations
                    .iter()
                    .filter(|c| c.outcome == CompensationOutcome::Compensated)
                    .map(|c| c.tool_call_id.as_str())
                    .collect();
                Err(format!(
                    "the trip failed ({}); cancelled: {}",
                    failed.error,
                    if cancelled.is_empty() {
                        "nothing".to_owned()
                    } else {
                        cancelled.join(", ")
                    }
                )
                .into())
            }
        }
    }
}

#[async_trait]
impl Tool for BookTrip {
    fn name(&self) -> &str {
        TRIP
    }

    fn description(&self) -> &str {
        "Book several hotel stays as one trip: if one fails, the stays already booked are cancelled."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "stays": {
                    "type": "array",
                    "minItems": 1,
                    "items": BookHotel.parameters()
                }
            },
            "required": ["stays"]
        })
    }

    async fn execute(&self, args: Value) -> Result<ToolOutput, BoxError> {
        self.book(&args).await.map(ToolOutput::new)
    }
}

/// The governed scenario's tools on `run`: search, book, and the trip (whose stays
/// go through the same run).
pub fn governed_registry(run: &PaybondAgentRun) -> GuardedRegistry {
    let stays = registry().guarded(run);
    registry().with(BookTrip::new(stays)).guarded(run)
}
