//! The scenario's travel tools: a read-only hotel search and a paid booking.

use async_trait::async_trait;
use paybond_middleware_core::{BoxError, Tool, ToolOutput, ToolRegistry};
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
                "simulate_vendor_failure": {"type": "boolean", "description": "Sandbox only: make the vendor fail"}
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
