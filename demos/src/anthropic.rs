//! Claude as the rig demo's model: a scripted server on 127.0.0.1 that speaks
//! Anthropic's Messages API (`POST /v1/messages`), or the real API when
//! `ANTHROPIC_API_KEY` is set (`ANTHROPIC_BASE_URL` and `ANTHROPIC_MODEL` optional).
//!
//! The scripted server plays the same scenario as the scripted OpenAI-compatible
//! model, in the Messages API's shapes: tools come with an `input_schema`, calls go
//! out as `tool_use` content blocks, and results come back as `tool_result` blocks
//! in the next user message. It refuses what the real API refuses, with the real
//! API's error envelope (`{"type": "error", "error": {"type", "message"}}`): a
//! missing `x-api-key` or `anthropic-version`, no `max_tokens`, a tool name outside
//! `^[a-zA-Z0-9_-]{1,64}$` or without an `input_schema`, two tools of one name, a
//! `tool_result` without its `tool_use_id` or answering no `tool_use` of the
//! message before, and a `tool_use` left without its `tool_result`.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::DemoError;
use crate::openai::{Script, function_for, read_result, scenario_function_names};
use crate::scenario::Scenario;

/// The model name the scripted server answers as.
pub const SCRIPTED_MODEL: &str = "paybond-scripted-claude";

/// Whether `name` is a tool name the Messages API takes: 1 to 64 ASCII letters,
/// digits, `_` or `-`.
pub fn is_valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A request the API refuses: its status, error type and message.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl IntoResponse for Refusal {
    /// The Messages API's error envelope.
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({
                "type": "error",
                "error": {"type": self.kind, "message": self.message},
                "request_id": format!("req_{}", uuid::Uuid::new_v4().simple()),
            })),
        )
            .into_response()
    }
}

fn invalid(message: String) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        kind: "invalid_request_error",
        message,
    }
}

/// A message's content as blocks: a string is one text block.
fn blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::String(text) => vec![json!({"type": "text", "text": text})],
        Value::Array(blocks) => blocks.clone(),
        _ => Vec::new(),
    }
}

/// The `id`s of a message's `tool_use` blocks.
fn tool_use_ids(message: &Value) -> Vec<String> {
    blocks(&message["content"])
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .filter_map(|b| b["id"].as_str().map(str::to_owned))
        .collect()
}

/// Everything about a request the real API would refuse, as its first problem.
fn check(headers: &HeaderMap, body: &Value) -> Result<(), Refusal> {
    if headers
        .get("x-api-key")
        .is_none_or(|v| v.as_bytes().is_empty())
    {
        return Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            message: "x-api-key header is required".to_owned(),
        });
    }
    if headers.get("anthropic-version").is_none() {
        return Err(invalid("anthropic-version: header is required".to_owned()));
    }
    if !body["model"].is_string() {
        return Err(invalid("model: Field required".to_owned()));
    }
    if body["max_tokens"].as_u64().is_none_or(|n| n < 1) {
        return Err(invalid("max_tokens: Field required".to_owned()));
    }
    let mut names = BTreeSet::new();
    for (i, tool) in body["tools"].as_array().into_iter().flatten().enumerate() {
        let name = tool["name"].as_str().unwrap_or_default();
        if !is_valid_tool_name(name) {
            return Err(invalid(format!(
                "tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            )));
        }
        if !tool["input_schema"].is_object() {
            return Err(invalid(format!(
                "tools.{i}.custom.input_schema: Field required"
            )));
        }
        if !names.insert(name) {
            return Err(invalid("tools: Tool names must be unique.".to_owned()));
        }
    }
    let Some(messages) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
        return Err(invalid("messages: Field required".to_owned()));
    };
    // The shape of each message first, as the API validates its schema before
    // the pairing of calls and results.
    for (i, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(invalid(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            )));
        }
        for (j, block) in blocks(&message["content"]).iter().enumerate() {
            if block["type"] == "tool_result" && !block["tool_use_id"].is_string() {
                return Err(invalid(format!(
                    "messages.{i}.content.{j}.tool_result.tool_use_id: Field required"
                )));
            }
        }
    }
    for (i, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or_default();
        // The `tool_use` blocks this message may answer: the previous message's.
        let asked: Vec<String> = match i.checked_sub(1).map(|p| &messages[p]) {
            Some(previous) if previous["role"] == "assistant" => tool_use_ids(previous),
            _ => Vec::new(),
        };
        for (j, block) in blocks(&message["content"]).iter().enumerate() {
            if block["type"] != "tool_result" {
                continue;
            }
            let id = block["tool_use_id"].as_str().unwrap_or_default();
            if role != "user" || !asked.iter().any(|a| a == id) {
                return Err(invalid(format!(
                    "messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. \
                     Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                )));
            }
        }
    }
    for (i, message) in messages.iter().enumerate() {
        if message["role"] == "assistant" {
            let unanswered: Vec<String> = tool_use_ids(message)
                .into_iter()
                .filter(|id| {
                    messages
                        .get(i + 1)
                        .is_none_or(|next| !answers(next).contains(id))
                })
                .collect();
            if !unanswered.is_empty() {
                return Err(invalid(format!(
                    "messages.{}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. \
                     Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                    i + 1,
                    unanswered.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// The `tool_use_id`s a user message's `tool_result` blocks answer.
fn answers(message: &Value) -> BTreeSet<String> {
    if message["role"] != "user" {
        return BTreeSet::new();
    }
    blocks(&message["content"])
        .iter()
        .filter(|b| b["type"] == "tool_result")
        .filter_map(|b| b["tool_use_id"].as_str().map(str::to_owned))
        .collect()
}

/// A `message` answer with `content` and `stop_reason`.
fn message(model: &str, content: Value, stop_reason: &str) -> Value {
    json!({
        "id": format!("msg_{}", uuid::Uuid::new_v4().simple()),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {"input_tokens": 0, "output_tokens": 0}
    })
}

/// `POST /v1/messages`: the scenario's next call as a `tool_use` block (after a
/// sentence of text, as Claude writes), or the final answer once every call of the
/// part the user asked for has its `tool_result`.
async fn messages(State(script): State<Script>, headers: HeaderMap, body: String) -> Response {
    let body: Value = match serde_json::from_str(&body) {
        Ok(body) => body,
        Err(e) => {
            return invalid(format!("The request body is not valid JSON: {e}")).into_response();
        }
    };
    if let Err(refused) = check(&headers, &body) {
        return refused.into_response();
    }
    let model = body["model"].as_str().unwrap_or(SCRIPTED_MODEL);
    let offered: Vec<&str> = body["tools"]
        .as_array()
        .map(|tools| tools.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    let names = scenario_function_names();
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    // The user's last words (not a message of tool results) name the part asked for.
    let asked_at = messages
        .iter()
        .rposition(|m| {
            m["role"] == "user"
                && blocks(&m["content"])
                    .iter()
                    .any(|b| b["type"] == "text" && !b["text"].as_str().unwrap_or("").is_empty())
        })
        .unwrap_or(0);
    let asked = blocks(
        &messages
            .get(asked_at)
            .map_or(Value::Null, |m| m["content"].clone()),
    )
    .iter()
    .filter_map(|b| b["text"].as_str().map(str::to_owned))
    .collect::<Vec<_>>()
    .join("");
    let results: Vec<Value> = messages[asked_at..]
        .iter()
        .filter(|m| m["role"] == "user")
        .flat_map(|m| blocks(&m["content"]))
        .filter(|b| b["type"] == "tool_result")
        .collect();
    if let Some(last) = results.last() {
        script.observe(read_result(&last["content"]));
    }
    let steps = script.calls(&asked);
    let answer = match steps.get(results.len()) {
        Some(step) => {
            let name = function_for(step.tool, &names, &offered);
            message(
                model,
                json!([
                    {"type": "text", "text": format!("I'll call {name} now.")},
                    {
                        "type": "tool_use",
                        "id": format!("toolu_{}", &uuid::Uuid::new_v4().simple().to_string()[..24]),
                        "name": name,
                        "input": step.args,
                    }
                ]),
                "tool_use",
            )
        }
        None => message(
            model,
            json!([{"type": "text", "text": script.answer()}]),
            "end_turn",
        ),
    };
    Json(answer).into_response()
}

/// Starts the scripted Messages API of `scenario` on a free loopback port; answers
/// its base URL (the API root, without `/v1`).
pub async fn scripted_model(scenario: Scenario) -> Result<String, DemoError> {
    let app = axum::Router::new()
        .route("/v1/messages", axum::routing::post(messages))
        .with_state(Script {
            scenario,
            observed: std::sync::Arc::default(),
        });
    Ok(format!("http://{}", crate::serve_scripted(app).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "scripted".parse().unwrap());
        h.insert("anthropic-version", "2023-06-01".parse().unwrap());
        h
    }

    fn request(tools: Value, messages: Value) -> Value {
        json!({"model": SCRIPTED_MODEL, "max_tokens": 1024, "tools": tools, "messages": messages})
    }

    fn tool(name: &str) -> Value {
        json!({"name": name, "description": "d", "input_schema": {"type": "object"}})
    }

    async fn refusal(r: Result<(), Refusal>) -> (StatusCode, Value) {
        let r = r.expect_err("refused").into_response();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn tool_names_follow_the_api_pattern() {
        assert!(is_valid_tool_name("travel_book_hotel"));
        assert!(is_valid_tool_name("a-b_C9"));
        assert!(is_valid_tool_name(&"x".repeat(64)));
        assert!(!is_valid_tool_name(&"x".repeat(65)));
        assert!(!is_valid_tool_name(""));
        assert!(!is_valid_tool_name("travel.book_hotel"));
        assert!(!is_valid_tool_name("book hotel"));
        assert!(!is_valid_tool_name("résa"));
    }

    #[tokio::test]
    async fn a_tool_name_outside_the_pattern_is_refused() {
        let body = request(
            json!([tool("travel_search_hotels"), tool("travel.book_hotel")]),
            json!([{"role": "user", "content": "go"}]),
        );
        let (status, err) = refusal(check(&headers(), &body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(err["type"], "error");
        assert_eq!(err["error"]["type"], "invalid_request_error");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("tools.1.custom.name:"),
            "{err}"
        );
        let ok = request(
            json!([tool("travel_book_hotel")]),
            json!([{"role": "user", "content": "go"}]),
        );
        assert!(check(&headers(), &ok).is_ok());
    }

    #[tokio::test]
    async fn a_tool_result_must_name_the_tool_use_it_answers() {
        let asked = json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "travel_book_hotel", "input": {}}
        ]});
        let tools = json!([tool("travel_book_hotel")]);
        let without_id = request(
            tools.clone(),
            json!([
                {"role": "user", "content": "go"},
                asked,
                {"role": "user", "content": [{"type": "tool_result", "content": "ok"}]}
            ]),
        );
        let (status, err) = refusal(check(&headers(), &without_id)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            err["error"]["message"],
            "messages.2.content.0.tool_result.tool_use_id: Field required"
        );
        let wrong_id = request(
            tools.clone(),
            json!([
                {"role": "user", "content": "go"},
                asked,
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "ok"}]}
            ]),
        );
        let (_, err) = refusal(check(&headers(), &wrong_id)).await;
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("unexpected `tool_use_id`"),
            "{err}"
        );
        let unanswered = request(
            tools.clone(),
            json!([
                {"role": "user", "content": "go"},
                asked,
                {"role": "user", "content": "and?"}
            ]),
        );
        let (_, err) = refusal(check(&headers(), &unanswered)).await;
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("without `tool_result` blocks"),
            "{err}"
        );
        let answered = request(
            tools,
            json!([
                {"role": "user", "content": "go"},
                asked,
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "ok"}]}]}
            ]),
        );
        assert!(check(&headers(), &answered).is_ok());
    }

    #[tokio::test]
    async fn headers_and_max_tokens_are_required() {
        let body = request(json!([]), json!([{"role": "user", "content": "go"}]));
        let (status, err) = refusal(check(&HeaderMap::new(), &body)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(err["error"]["type"], "authentication_error");
        let mut no_version = headers();
        no_version.remove("anthropic-version");
        let (status, _) = refusal(check(&no_version, &body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let mut no_max = body.clone();
        no_max.as_object_mut().unwrap().remove("max_tokens");
        let (_, err) = refusal(check(&headers(), &no_max)).await;
        assert_eq!(err["error"]["message"], "max_tokens: Field required");
    }
}
