//! The agent loop against a scripted chat-completions server on loopback and a
//! scripted gateway: denials and holds reach the model as tool messages.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::ChatCompletionRequestUserMessageArgs;
use axum::Json;
use axum::extract::State;
use paybond_adapter_openai::{AgentLoop, LoopError};
use paybond_middleware_core::testing::{ScriptedGateway, VerifyScript};
use paybond_middleware_core::{BoxError, PaybondAgentRun, Tool, ToolOutput, ToolRegistry};
use paybond_policies::ToolPolicy;
use serde_json::{Value, json};
use uuid::Uuid;

struct Book;

#[async_trait::async_trait]
impl Tool for Book {
    fn name(&self) -> &str {
        "travel.book_hotel"
    }
    fn description(&self) -> &str {
        "Book a hotel"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"amount_cents": {"type": "integer"}}, "required": ["amount_cents"]})
    }
    async fn execute(&self, args: Value) -> Result<ToolOutput, BoxError> {
        let cents = args["amount_cents"].as_u64().ok_or("amount_cents")?;
        Ok(ToolOutput::new(json!({"confirmation": "H-1"})).with_cost_cents(cents))
    }
}

#[derive(Clone, Default)]
struct Model {
    replies: Arc<Mutex<VecDeque<Value>>>,
    seen: Arc<Mutex<Vec<Value>>>,
}

fn tool_call(id: &str, args: &str) -> Value {
    json!({"id": id, "type": "function", "function": {"name": "travel_book_hotel", "arguments": args}})
}

fn completion(message: Value) -> Value {
    json!({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
           "choices": [{"index": 0, "finish_reason": "stop", "message": message}]})
}

/// Answers like an OpenAI-compatible server, which refuses a request whose tools
/// are not named `^[a-zA-Z0-9_-]{1,64}$`.
async fn chat(
    State(m): State<Model>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, (axum::http::StatusCode, Json<Value>)> {
    let names: Vec<String> = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
        .collect();
    m.seen.lock().unwrap().push(body);
    if let Some(bad) = names.iter().find(|n| {
        n.is_empty()
            || n.len() > 64
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }) {
        return Err((
            axum::http::StatusCode::BAD_REQUEST,
            Json(
                json!({"error": {"message": format!("Invalid 'tools[].function.name': '{bad}' does not match '^[a-zA-Z0-9_-]+$'"),
                                  "type": "invalid_request_error", "param": "tools", "code": "invalid_value"}}),
            ),
        ));
    }
    let next = m.replies.lock().unwrap().pop_front();
    Ok(Json(next.unwrap_or_else(|| {
        completion(json!({"role": "assistant", "content": "done"}))
    })))
}

async fn serve(model: Model) -> String {
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .with_state(model);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

async fn setup(replies: Vec<Value>) -> (Model, Arc<ScriptedGateway>, AgentLoop<OpenAIConfig>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let model = Model::default();
    model.replies.lock().unwrap().extend(replies);
    let base = serve(model.clone()).await;
    let gateway = Arc::new(ScriptedGateway::new());
    let run = PaybondAgentRun::builder(gateway.clone(), Uuid::new_v4(), "cap".into())
        .tool(
            "travel.book_hotel",
            ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"),
        )
        .bind()
        .await
        .unwrap();
    let tools = ToolRegistry::new().with(Book).guarded(&run);
    let client = Client::with_config(OpenAIConfig::new().with_api_key("test").with_api_base(base));
    (model, gateway, AgentLoop::new(client, "m", tools))
}

fn user(text: &str) -> async_openai::types::chat::ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessageArgs::default()
        .content(text)
        .build()
        .unwrap()
        .into()
}

#[tokio::test]
async fn holds_and_denials_reach_the_model_and_the_loop_goes_on() {
    let (model, gateway, agent) = setup(vec![
        completion(json!({"role": "assistant", "content": null, "tool_calls": [
            tool_call("call_1", "{\"amount_cents\": 12000}"),
            tool_call("call_2", "{\"amount_cents\": 18700}"),
            tool_call("call_3", "{\"amount_cents\": 25000}"),
            tool_call("call_4", "not json"),
        ]})),
        completion(json!({"role": "assistant", "content": "Booked one; one awaits approval; one is over the cap."})),
    ])
    .await;
    gateway
        .push_verify(VerifyScript::Allow)
        .push_verify(VerifyScript::hold())
        .push_verify(VerifyScript::deny("tool_cap_exceeded"));

    let outcome = agent.run(vec![user("book three")]).await.unwrap();
    assert_eq!(outcome.turns, 2);
    assert_eq!(
        outcome.answer.as_deref(),
        Some("Booked one; one awaits approval; one is over the cap.")
    );

    // The second request carried the tool definitions and one tool message per call.
    let seen = model.seen.lock().unwrap().clone();
    // The policy tool `travel.book_hotel` is offered as a valid function name, and
    // the model's calls of it reach the tool (the gateway saw three verifies).
    assert_eq!(seen[0]["tools"][0]["function"]["name"], "travel_book_hotel");
    assert_eq!(
        seen[0]["tools"][0]["function"]["parameters"]["required"],
        json!(["amount_cents"])
    );
    let tool_msgs: Vec<(String, Value)> = seen[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (
                m["tool_call_id"].as_str().unwrap().to_owned(),
                serde_json::from_str(m["content"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(tool_msgs.len(), 4);
    assert_eq!(
        tool_msgs[0],
        ("call_1".to_owned(), json!({"confirmation": "H-1"}))
    );
    assert_eq!(tool_msgs[1].1["status"], "pending_approval");
    assert_eq!(
        tool_msgs[1].1["reason_codes"],
        json!(["approval_threshold_exceeded"])
    );
    assert!(tool_msgs[1].1["approval_request_id"].is_string());
    assert_eq!(tool_msgs[2].1["status"], "blocked");
    assert_eq!(tool_msgs[2].1["reason_codes"], json!(["tool_cap_exceeded"]));
    assert_eq!(tool_msgs[3].1["reason_codes"], json!(["invalid_arguments"]));
    // Only the allowed call ran and was settled.
    assert_eq!(gateway.completes().len(), 1);
    assert_eq!(gateway.verifies().len(), 3);
}

#[tokio::test]
async fn the_loop_is_bounded() {
    let looping: Vec<Value> = (0..5)
        .map(|i| {
            completion(json!({"role": "assistant", "content": null,
            "tool_calls": [tool_call(&format!("call_{i}"), "{\"amount_cents\": 1}")]}))
        })
        .collect();
    let (_, gateway, agent) = setup(looping).await;
    for _ in 0..5 {
        gateway.push_verify(VerifyScript::Allow);
    }
    let err = agent
        .max_turns(3)
        .run(vec![user("loop")])
        .await
        .unwrap_err();
    let LoopError::MaxTurns { turns, messages } = err else {
        panic!("expected MaxTurns, got {err:?}");
    };
    assert_eq!(turns, 3);
    assert_eq!(messages.len(), 1 + 3 * 2);
}
