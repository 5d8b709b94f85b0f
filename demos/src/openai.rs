//! OpenAI-style tool calling (async-openai): a chat-completions agent loop whose
//! tool calls run through the layer. The model is a scripted OpenAI-compatible server
//! on 127.0.0.1 that issues the scenario's calls and reads the results; with
//! `OPENAI_API_KEY` set (and optionally `OPENAI_BASE_URL`, `OPENAI_MODEL`) a real
//! model is asked to do the same. Holds wait for the operator (the demo's
//! background operator approves through the gateway) and retry by themselves.

use std::sync::{Arc, Mutex};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs,
};
use axum::Json;
use axum::extract::State;
use paybond_adapter_openai::AgentLoop;

use serde_json::{Value, json};

use crate::harness::Harness;
use crate::scenario::{Scenario, Step, governed_steps, steps};
use crate::travel;
use crate::{DemoError, Finished};

/// The instructions given to the model (the scripted one follows them by construction).
pub const PROMPT: &str = "You book hotels for a traveller. Do exactly these five tool calls, one per turn, \
in this order, then answer with one sentence saying what happened to each: \
1) travel_search_hotels {\"city\": \"Lisbon\"}; \
2) travel_book_hotel {\"hotel\": \"Harbor Inn\", \"amount_cents\": 12000}; \
3) travel_book_hotel {\"hotel\": \"Bay Suites\", \"amount_cents\": 18700}; \
4) travel_book_hotel {\"hotel\": \"Grand Palace\", \"amount_cents\": 25000}; \
5) travel_book_hotel {\"hotel\": \"Dock Hostel\", \"amount_cents\": 9000, \"simulate_vendor_failure\": true}. \
If a result says blocked, do not retry it.";

/// The scripted model: which scenario it plays, and what each tool result told it.
#[derive(Clone, Default)]
pub(crate) struct Script {
    pub(crate) scenario: Scenario,
    pub(crate) observed: Arc<Mutex<Vec<String>>>,
}

impl Script {
    /// The calls the model makes for a conversation whose last user message is
    /// `asked`: the canonical five, or the governed scenario's part the user names.
    pub(crate) fn calls(&self, asked: &str) -> Vec<Step> {
        match self.scenario {
            Scenario::Canonical => steps(),
            Scenario::Governed => {
                let [first, second] = governed_steps();
                if asked.starts_with("Part 2") {
                    second
                } else {
                    first
                }
            }
        }
    }

    /// Notes what a tool result said, for the final answer.
    pub(crate) fn observe(&self, seen: String) {
        if let Ok(mut observed) = self.observed.lock() {
            observed.push(seen);
        }
    }

    /// The final answer: what each tool result said, in order (and forgets them).
    pub(crate) fn answer(&self) -> String {
        let observed = self
            .observed
            .lock()
            .map(|mut o| std::mem::take(&mut *o))
            .unwrap_or_default();
        let answer = observed
            .iter()
            .enumerate()
            .map(|(i, o)| format!("{}: {o}", i + 1))
            .collect::<Vec<_>>()
            .join("; ");
        format!("Done. {answer}.")
    }
}

fn completion(message: Value, finish: &str) -> Value {
    json!({
        "id": format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        "object": "chat.completion",
        "created": 0,
        "model": "paybond-scripted",
        "choices": [{"index": 0, "finish_reason": finish, "message": message}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    })
}

/// A message's text: a string, or (rig) a list of text parts.
pub(crate) fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// What a tool result says, in the model's words.
pub(crate) fn read_result(content: &Value) -> String {
    let text = text_of(content);
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    match v["status"].as_str() {
        Some(status) => format!(
            "{status} ({})",
            v["reason_codes"]
                .as_array()
                .map(|r| r
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ),
        None if v["confirmation"].is_string() => {
            format!(
                "booked, confirmation {}",
                v["confirmation"].as_str().unwrap_or("")
            )
        }
        None => "ok".to_owned(),
    }
}

/// The rule OpenAI-compatible servers apply to function names: a request offering a
/// tool named otherwise is refused whole (400), as a hosted model would.
fn invalid_tool_name(body: &Value) -> Option<(usize, String)> {
    body["tools"]
        .as_array()?
        .iter()
        .enumerate()
        .find_map(|(i, t)| {
            let name = t["function"]["name"].as_str().unwrap_or_default();
            (!paybond_middleware_core::function_names::is_valid_function_name(name))
                .then(|| (i, name.to_owned()))
        })
}

/// `POST /v1/chat/completions`: the next scenario call, or the final answer once
/// every call has a result. Tool calls name the functions the request offers.
async fn chat(
    State(script): State<Script>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, (axum::http::StatusCode, Json<Value>)> {
    if let Some((i, name)) = invalid_tool_name(&body) {
        return Err((
            axum::http::StatusCode::BAD_REQUEST,
            Json(json!({"error": {
                "message": format!("Invalid 'tools[{i}].function.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'. ({name})"),
                "type": "invalid_request_error",
                "param": format!("tools[{i}].function.name"),
                "code": "invalid_value"
            }})),
        ));
    }
    let offered: Vec<&str> = body["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t["function"]["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let names = scenario_function_names();
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    // The conversation since the user last spoke: that part's calls and results.
    let asked_at = messages
        .iter()
        .rposition(|m| m["role"] == "user")
        .unwrap_or(0);
    let asked = messages
        .get(asked_at)
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default();
    let results: Vec<&Value> = messages[asked_at..]
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    if let Some(last) = results.last() {
        script.observe(read_result(&last["content"]));
    }
    let steps = script.calls(&asked);
    match steps.get(results.len()) {
        Some(step) => Ok(Json(completion(
            json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": step.id,
                    "type": "function",
                    "function": {"name": function_for(step.tool, &names, &offered), "arguments": step.args.to_string()}
                }]
            }),
            "tool_calls",
        ))),
        None => Ok(Json(completion(
            json!({"role": "assistant", "content": script.answer()}),
            "stop",
        ))),
    }
}

/// The model function names of the scenario's tools.
pub(crate) fn scenario_function_names() -> paybond_middleware_core::function_names::FunctionNames {
    paybond_middleware_core::function_names::FunctionNames::new([
        crate::travel::SEARCH,
        crate::travel::BOOK,
        crate::travel::TRIP,
    ])
    .unwrap_or_default()
}

/// The function the request offers for the scenario's tool `tool`.
pub(crate) fn function_for<'a>(
    tool: &'a str,
    names: &'a paybond_middleware_core::function_names::FunctionNames,
    offered: &[&str],
) -> &'a str {
    match names.function_name(tool) {
        Some(f) if offered.contains(&f) => f,
        _ => tool,
    }
}

/// Starts the scripted model of `scenario` on a free loopback port; answers its
/// `/v1` base URL.
pub async fn scripted_model(scenario: Scenario) -> Result<String, DemoError> {
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .with_state(Script {
            scenario,
            observed: Arc::default(),
        });
    Ok(format!("http://{}/v1", crate::serve_scripted(app).await?))
}

/// OpenAI's API, unless `OPENAI_BASE_URL` names another.
pub(crate) const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// The model asked for when `OPENAI_MODEL` is not set.
pub(crate) const DEFAULT_OPENAI_MODEL: &str = "gpt-4o-mini";

/// The model to talk to: a real one when `OPENAI_API_KEY` is set, else the
/// scripted one of `scenario`.
pub async fn model_client(
    scenario: Scenario,
) -> Result<(Client<OpenAIConfig>, String, &'static str), DemoError> {
    // reqwest (through async-openai) needs a TLS crypto provider for https; the
    // workspace uses ring. Installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some((key, base, model)) =
        crate::real_model("OPENAI", OPENAI_BASE_URL, DEFAULT_OPENAI_MODEL)
    {
        let config = OpenAIConfig::new().with_api_key(key).with_api_base(base);
        return Ok((Client::with_config(config), model, "real"));
    }
    let base = scripted_model(scenario).await?;
    let config = OpenAIConfig::new()
        .with_api_key("scripted")
        .with_api_base(base);
    Ok((
        Client::with_config(config),
        "paybond-scripted".to_owned(),
        "scripted",
    ))
}

/// Runs the scenario as an OpenAI-style agent loop.
pub async fn run(h: &Arc<Harness>) -> Result<Finished, DemoError> {
    let run = h.bind("demo-openai", true).await?;
    let tools = travel::registry().guarded(&run);
    let _operator = h.spawn_operator();
    let (client, model, kind) = model_client(Scenario::Canonical).await?;
    tracing::info!(model = %model, kind, "model");
    let agent = AgentLoop::new(client, model, tools).max_turns(8);
    let messages = conversation(
        PROMPT,
        "Plan and book my Lisbon stay as instructed.".to_owned(),
    )?;
    let outcome = agent
        .run(messages)
        .await
        .map_err(|e| DemoError::Model(e.to_string()))?;
    Ok(Finished::of(&run, outcome.answer))
}

/// A system prompt and one user message.
fn conversation(
    system: &str,
    user: String,
) -> Result<Vec<async_openai::types::chat::ChatCompletionRequestMessage>, DemoError> {
    Ok(vec![
        ChatCompletionRequestSystemMessageArgs::default()
            .content(system)
            .build()
            .map_err(|e| DemoError::Setup(e.to_string()))?
            .into(),
        ChatCompletionRequestUserMessageArgs::default()
            .content(user)
            .build()
            .map_err(|e| DemoError::Setup(e.to_string()))?
            .into(),
    ])
}

/// Runs the governed scenario (see [`crate::governed`]) as an OpenAI-style agent
/// loop: the model is asked for part 1, the operator lowers the cap, the run
/// reloads its policy, and the model is asked for part 2. The registry offers
/// `commit_plan` because the policy names a payment phase.
pub async fn governed(h: &Arc<Harness>) -> Result<Finished, DemoError> {
    let run = h.bind("demo-openai", true).await?;
    let tools = travel::governed_registry(&run);
    let (client, model, kind) = model_client(Scenario::Governed).await?;
    tracing::info!(model = %model, kind, "model");
    let agent = AgentLoop::new(client, model, tools).max_turns(8);
    let [first, second] = governed_steps();
    let mut answers = Vec::new();
    for (part, steps) in [(1, &first), (2, &second)] {
        if part == 2 {
            crate::governed::between_parts(h, &run).await?;
        }
        let user = crate::governed::instructions(part, steps);
        let outcome = agent
            .run(conversation(crate::governed::PROMPT, user)?)
            .await
            .map_err(|e| DemoError::Model(e.to_string()))?;
        answers.extend(outcome.answer);
    }
    Ok(Finished::of(&run, Some(answers.join(" "))))
}
