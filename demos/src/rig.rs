//! rig: an agent built with `AgentBuilder::tool(guarded(tool, &run))`, talking to the
//! same scripted OpenAI-compatible model as the openai demo (or a real one with
//! `OPENAI_API_KEY`). Holds wait for the operator and retry by themselves.

use std::sync::Arc;

use paybond_adapter_rig::{commit_plan_tool, guarded};
use paybond_middleware_core::Tool as _;
use rig_agent::AgentBuilder;
use rig_core::providers::openai::OpenAIConfig;
use rig_core::tool::{Tool, ToolContext};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::harness::Harness;
use crate::scenario::{Scenario, governed_steps};
use crate::travel;
use crate::{DemoError, Finished};

/// `travel.search_hotels` as a rig tool.
#[derive(Debug, Clone, Copy)]
pub struct RigSearch;

/// `travel.book_hotel` as a rig tool.
#[derive(Debug, Clone, Copy)]
pub struct RigBook;

/// Arguments of the search.
#[derive(Debug, Serialize, Deserialize)]
pub struct SearchArgs {
    /// City to search.
    pub city: String,
}

/// Arguments of a booking.
#[derive(Debug, Serialize, Deserialize)]
pub struct BookArgs {
    /// The hotel.
    pub hotel: String,
    /// Price in cents.
    pub amount_cents: u64,
    /// Sandbox only: make the vendor fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulate_vendor_failure: Option<bool>,
    /// A note for the hotel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_note: Option<String>,
}

/// `travel.book_trip` as a rig tool: the shared [`travel::BookTrip`], whose stays
/// go through the run's guarded booking tool.
#[derive(Debug, Clone)]
pub struct RigTrip(pub Arc<travel::BookTrip>);

/// Arguments of a trip.
#[derive(Debug, Serialize, Deserialize)]
pub struct TripArgs {
    /// The stays, booked in order.
    pub stays: Vec<BookArgs>,
}

/// The travel tools' failures.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TravelError(String);

/// Runs the shared travel tool and puts its cost where the guarded wrapper reads it.
async fn travel_call(
    tool: &dyn paybond_middleware_core::Tool,
    args: Value,
) -> Result<Value, TravelError> {
    let out = tool
        .execute(args)
        .await
        .map_err(|e| TravelError(e.to_string()))?;
    let mut body = out.body;
    if let (Some(cost), Value::Object(map)) = (out.cost_cents, &mut body) {
        map.insert("cost_cents".to_owned(), Value::from(cost));
    }
    Ok(body)
}

impl Tool for RigSearch {
    /// The policy tool `travel.search_hotels`, as a model function name.
    const NAME: &'static str = "travel_search_hotels";
    type Args = SearchArgs;
    type Output = Value;
    type Error = TravelError;

    fn description(&self) -> String {
        travel::SearchHotels.description().to_owned()
    }

    fn parameters(&self) -> Value {
        travel::SearchHotels.parameters()
    }

    async fn call(&self, _cx: &mut ToolContext, args: SearchArgs) -> Result<Value, TravelError> {
        let args = serde_json::to_value(args).map_err(|e| TravelError(e.to_string()))?;
        travel_call(&travel::SearchHotels, args).await
    }
}

impl Tool for RigBook {
    /// The policy tool `travel.book_hotel`, as a model function name.
    const NAME: &'static str = "travel_book_hotel";
    type Args = BookArgs;
    type Output = Value;
    type Error = TravelError;

    fn description(&self) -> String {
        travel::BookHotel.description().to_owned()
    }

    fn parameters(&self) -> Value {
        travel::BookHotel.parameters()
    }

    async fn call(&self, _cx: &mut ToolContext, args: BookArgs) -> Result<Value, TravelError> {
        let args = serde_json::to_value(args).map_err(|e| TravelError(e.to_string()))?;
        travel_call(&travel::BookHotel, args).await
    }
}

impl Tool for RigTrip {
    /// The policy tool `travel.book_trip`, as a model function name.
    const NAME: &'static str = "travel_book_trip";
    type Args = TripArgs;
    type Output = Value;
    type Error = TravelError;

    fn description(&self) -> String {
        self.0.description().to_owned()
    }

    fn parameters(&self) -> Value {
        self.0.parameters()
    }

    async fn call(&self, _cx: &mut ToolContext, args: TripArgs) -> Result<Value, TravelError> {
        let args = serde_json::to_value(args).map_err(|e| TravelError(e.to_string()))?;
        self.0
            .book(&args)
            .await
            .map_err(|e| TravelError(e.to_string()))
    }
}

/// The model's key, base URL and name: a real one when `OPENAI_API_KEY` is set,
/// else the scripted one of `scenario`.
async fn model(scenario: Scenario) -> Result<(String, String, String), DemoError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (key, base, model) = match std::env::var("OPENAI_API_KEY") {
        Ok(key) if !key.is_empty() => (
            key,
            std::env::var("OPENAI_BASE_URL")
                .unwrap_or_else(|_| "https://api.openai.com/v1".to_owned()),
            std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4o-mini".to_owned()),
        ),
        _ => (
            "scripted".to_owned(),
            crate::openai::scripted_model(scenario).await?,
            "paybond-scripted".to_owned(),
        ),
    };
    Ok((key, base, model))
}

/// Runs the scenario as a rig agent.
pub async fn run(h: &Arc<Harness>) -> Result<Finished, DemoError> {
    let run = h.bind("demo-rig", true).await?;
    let _operator = h.spawn_operator();
    let (key, base, model) = model(Scenario::Canonical).await?;
    let model = OpenAIConfig::new(key)
        .with_base_url(base)
        .client()
        .chat(model);
    let agent = AgentBuilder::new(model)
        .preamble(crate::openai::PROMPT)
        .tool(guarded(RigSearch, &run).map_err(|e| DemoError::Setup(e.to_string()))?)
        .tool(guarded(RigBook, &run).map_err(|e| DemoError::Setup(e.to_string()))?)
        .build();
    let answer = agent
        .prompt("Plan and book my Lisbon stay as instructed.")
        .max_turns(8)
        .await
        .map_err(|e| DemoError::Model(e.to_string()))?;
    Ok(Finished::of(&run, Some(answer.output().to_string())))
}

/// Runs the governed scenario (see [`crate::governed`]) as a rig agent: guarded
/// search, booking and trip tools plus [`commit_plan_tool`]; part 1, the cap
/// lowered and the policy reloaded, part 2.
pub async fn governed(h: &Arc<Harness>) -> Result<Finished, DemoError> {
    let run = h.bind("demo-rig", true).await?;
    let trip = Arc::new(travel::BookTrip::new(travel::registry().guarded(&run)));
    let commit = commit_plan_tool(&run)
        .ok_or_else(|| DemoError::Setup("the governed policy names no payment phase".to_owned()))?;
    let setup = |e: paybond_adapter_rig::GuardError| DemoError::Setup(e.to_string());
    let (key, base, model) = model(Scenario::Governed).await?;
    let model = OpenAIConfig::new(key)
        .with_base_url(base)
        .client()
        .chat(model);
    let agent = AgentBuilder::new(model)
        .preamble(crate::governed::PROMPT)
        .tool(guarded(RigSearch, &run).map_err(setup)?)
        .tool(guarded(RigBook, &run).map_err(setup)?)
        .tool(guarded(RigTrip(trip), &run).map_err(setup)?)
        .dynamic_tool(commit)
        .build();
    let [first, second] = governed_steps();
    let mut answers = Vec::new();
    for (part, steps) in [(1, &first), (2, &second)] {
        if part == 2 {
            crate::governed::between_parts(h, &run).await?;
        }
        let answer = agent
            .prompt(crate::governed::instructions(part, steps))
            .max_turns(8)
            .await
            .map_err(|e| DemoError::Model(e.to_string()))?;
        answers.push(answer.output().to_string());
    }
    Ok(Finished::of(&run, Some(answers.join(" "))))
}
