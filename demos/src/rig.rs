//! rig: an agent built with `AgentBuilder::tool(guarded(tool, &run))`, talking to the
//! same scripted OpenAI-compatible model as the openai demo (or a real one with
//! `OPENAI_API_KEY`), or with [`Provider::Anthropic`] to Claude through rig's
//! Anthropic provider (a scripted Messages API, see [`crate::anthropic`], or the
//! real one with `ANTHROPIC_API_KEY`). Holds wait for the operator and retry by
//! themselves.

use std::sync::Arc;

use paybond_adapter_rig::{commit_plan_tool, guarded};
use paybond_middleware_core::Tool as _;
use rig_agent::AgentBuilder;
use rig_core::DynModel;
use rig_core::operation::Completion;
use rig_core::providers::anthropic::AnthropicConfig;
use rig_core::providers::openai::OpenAIConfig;
use rig_core::tool::{Tool, ToolContext};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::harness::Harness;
use crate::scenario::{Scenario, governed_steps};
use crate::travel;
use crate::{DemoError, Finished, Provider};

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

/// The agent's model: with [`Provider::Openai`] a real OpenAI-compatible one when
/// `OPENAI_API_KEY` is set (`OPENAI_BASE_URL`, `OPENAI_MODEL`), with
/// [`Provider::Anthropic`] Claude when `ANTHROPIC_API_KEY` is set
/// (`ANTHROPIC_BASE_URL`, `ANTHROPIC_MODEL`); else the scripted server of
/// `scenario` that speaks the provider's API. Answers the model and the
/// `max_tokens` its API requires, if it requires one.
async fn model(
    scenario: Scenario,
    provider: Provider,
) -> Result<(DynModel<Completion>, Option<u64>), DemoError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match provider {
        Provider::Openai => {
            let (key, base, model) = match crate::real_model(
                "OPENAI",
                crate::openai::OPENAI_BASE_URL,
                crate::openai::DEFAULT_OPENAI_MODEL,
            ) {
                Some(real) => real,
                None => (
                    "scripted".to_owned(),
                    crate::openai::scripted_model(scenario).await?,
                    "paybond-scripted".to_owned(),
                ),
            };
            let model = OpenAIConfig::new(key)
                .with_base_url(base)
                .client()
                .chat(model);
            Ok((model.into(), None))
        }
        Provider::Anthropic => {
            let (key, base, model) =
                match crate::real_model("ANTHROPIC", "https://api.anthropic.com", DEFAULT_CLAUDE) {
                    Some(real) => real,
                    None => (
                        "scripted".to_owned(),
                        crate::anthropic::scripted_model(scenario).await?,
                        crate::anthropic::SCRIPTED_MODEL.to_owned(),
                    ),
                };
            let model = AnthropicConfig::new(key)
                .with_base_url(base)
                .client()
                .completion(model);
            Ok((model.into(), Some(CLAUDE_MAX_TOKENS)))
        }
    }
}

/// The Claude model the demo asks for when `ANTHROPIC_MODEL` is not set.
pub const DEFAULT_CLAUDE: &str = rig_core::providers::anthropic::CLAUDE_SONNET_4_6;

/// `max_tokens` of each Messages API request (the API requires one): ample for a
/// tool call or the one-sentence answer.
const CLAUDE_MAX_TOKENS: u64 = 1024;

/// An agent builder on `model` with `preamble`, and `max_tokens` when its API needs one.
fn builder(
    (model, max_tokens): (DynModel<Completion>, Option<u64>),
    preamble: &str,
) -> AgentBuilder {
    let builder = AgentBuilder::new(model).preamble(preamble);
    match max_tokens {
        Some(n) => builder.max_tokens(n),
        None => builder,
    }
}

/// Runs the scenario as a rig agent whose model speaks `provider`'s API.
pub async fn run(h: &Arc<Harness>, provider: Provider) -> Result<Finished, DemoError> {
    let run = h.bind("demo-rig", true).await?;
    let _operator = h.spawn_operator();
    let model = model(Scenario::Canonical, provider).await?;
    let agent = builder(model, crate::openai::PROMPT)
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
pub async fn governed(h: &Arc<Harness>, provider: Provider) -> Result<Finished, DemoError> {
    let run = h.bind("demo-rig", true).await?;
    let trip = Arc::new(travel::BookTrip::new(travel::registry().guarded(&run)));
    let commit = commit_plan_tool(&run)
        .ok_or_else(|| DemoError::Setup("the governed policy names no payment phase".to_owned()))?;
    let setup = |e: paybond_adapter_rig::GuardError| DemoError::Setup(e.to_string());
    let model = model(Scenario::Governed, provider).await?;
    let agent = builder(model, crate::governed::PROMPT)
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
