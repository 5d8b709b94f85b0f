//! OpenAI-style tool calling through [`PaybondAgentRun`](paybond_middleware_core::PaybondAgentRun).
//!
//! A chat completion's tool calls run through a [`GuardedRegistry`]: every paid call
//! is authorized before it runs. What comes back is always a tool message the
//! model can read: the tool's output, or `{"status": "blocked" | "pending_approval",
//! "reason_codes": [..], "approval_request_id": ..}` ([`model_feedback`]). A denial
//! never aborts the loop.
//!
//! ```no_run
//! # async fn demo(tools: paybond_middleware_core::registry::GuardedRegistry) -> Result<(), paybond_adapter_openai::LoopError> {
//! use async_openai::{Client, config::OpenAIConfig};
//! use async_openai::types::chat::ChatCompletionRequestUserMessageArgs;
//! use paybond_adapter_openai::AgentLoop;
//!
//! let client = Client::with_config(OpenAIConfig::new().with_api_base("http://127.0.0.1:8080/v1"));
//! let agent = AgentLoop::new(client, "gpt-4o-mini", tools).max_turns(8);
//! let user = ChatCompletionRequestUserMessageArgs::default()
//!     .content("Book me a hotel in Lisbon under 150 USD")
//!     .build()?;
//! let outcome = agent.run(vec![user.into()]).await?;
//! println!("{}", outcome.answer.unwrap_or_default());
//! # Ok(()) }
//! ```

use async_openai::Client;
use async_openai::config::Config;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
    ChatCompletionRequestAssistantMessageArgs, ChatCompletionRequestMessage,
    ChatCompletionRequestToolMessageArgs, ChatCompletionTool, ChatCompletionTools,
    CreateChatCompletionRequestArgs, FunctionObjectArgs,
};
use paybond_middleware_core::ToolCall;
use paybond_middleware_core::feedback::{FeedbackStatus, model_feedback};
use paybond_middleware_core::function_names::FunctionNames;
use paybond_middleware_core::registry::GuardedRegistry;
use serde_json::{Value, json};

/// The function names the model sees for the registry's tools (policy tool names
/// such as `travel.book_hotel` are not valid function names; see [`FunctionNames`]).
/// An error names the tools that cannot both be offered.
pub fn function_names(tools: &GuardedRegistry) -> Result<FunctionNames, OpenAIError> {
    FunctionNames::new(tools.definitions().iter().map(|d| d.name.as_str()))
        .map_err(|e| OpenAIError::InvalidArgument(format!("tool names: {e}")))
}

/// The registry's tools as chat-completion tool definitions (function name,
/// description, JSON Schema of the arguments).
pub fn chat_tools(tools: &GuardedRegistry) -> Result<Vec<ChatCompletionTools>, OpenAIError> {
    let names = function_names(tools)?;
    tools
        .definitions()
        .iter()
        .map(|d| {
            let name = names.function_name(&d.name).unwrap_or(&d.name);
            Ok(ChatCompletionTools::Function(ChatCompletionTool {
                function: FunctionObjectArgs::default()
                    .name(name)
                    .description(d.description.clone())
                    .parameters(d.parameters.clone())
                    .build()?,
            }))
        })
        .collect()
}

/// Runs one tool call through the guarded registry and returns what the model reads
/// (the [`FeedbackStatus`] and the JSON of the tool message). The call's function
/// name is mapped back to its tool ([`function_names`]).
pub async fn run_tool_call(
    tools: &GuardedRegistry,
    call: &ChatCompletionMessageToolCall,
) -> (FeedbackStatus, Value) {
    let names = function_names(tools).unwrap_or_default();
    run_named_call(tools, &names, call).await
}

async fn run_named_call(
    tools: &GuardedRegistry,
    names: &FunctionNames,
    call: &ChatCompletionMessageToolCall,
) -> (FeedbackStatus, Value) {
    let args: Value = match serde_json::from_str(&call.function.arguments) {
        Ok(v) => v,
        Err(e) => {
            return (
                FeedbackStatus::Blocked,
                json!({
                    "status": "blocked",
                    "reason_codes": ["invalid_arguments"],
                    "message": format!("the arguments are not JSON: {e}"),
                }),
            );
        }
    };
    // A name the mapping does not know is passed on as it is: the registry refuses
    // it by name (or it is a tool's own, valid, name).
    let tool = names
        .tool_name(&call.function.name)
        .unwrap_or(&call.function.name);
    let result = tools
        .dispatch(ToolCall::new(tool, args, call.id.clone()))
        .await;
    model_feedback(&result)
}

/// Runs every function tool call of an assistant message, in order, and answers one
/// tool message per call (with the same `tool_call_id`).
pub async fn tool_messages(
    tools: &GuardedRegistry,
    calls: &[ChatCompletionMessageToolCalls],
) -> Result<Vec<ChatCompletionRequestMessage>, OpenAIError> {
    let names = function_names(tools)?;
    let mut out = Vec::with_capacity(calls.len());
    for call in calls {
        let (id, content) = match call {
            ChatCompletionMessageToolCalls::Function(f) => {
                let (status, body) = run_named_call(tools, &names, f).await;
                tracing::debug!(tool = %f.function.name, status = status.as_str(), "tool call");
                (f.id.clone(), body.to_string())
            }
            ChatCompletionMessageToolCalls::Custom(c) => (
                c.id.clone(),
                json!({"status": "blocked", "reason_codes": ["unsupported_tool_type"],
                       "message": "only function tools are available"})
                .to_string(),
            ),
        };
        out.push(
            ChatCompletionRequestToolMessageArgs::default()
                .tool_call_id(id)
                .content(content)
                .build()?
                .into(),
        );
    }
    Ok(out)
}

/// Why an agent loop stopped without an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoopError {
    /// The model API failed (after async-openai's own retries), or a message could not be built.
    #[error("the model API failed: {0}")]
    Api(#[from] OpenAIError),
    /// The model was still calling tools after `max_turns` completions.
    #[error("no answer after {turns} model turns")]
    MaxTurns {
        /// Completions requested.
        turns: u32,
        /// The conversation so far.
        messages: Vec<ChatCompletionRequestMessage>,
    },
    /// The model answered with no choice at all.
    #[error("the model returned no choices")]
    NoChoice,
}

/// How a loop ended.
#[derive(Debug, Clone)]
pub struct LoopOutcome {
    /// The model's final text, if any.
    pub answer: Option<String>,
    /// Completions requested.
    pub turns: u32,
    /// The whole conversation, tool messages included.
    pub messages: Vec<ChatCompletionRequestMessage>,
}

/// A chat-completion agent loop over guarded tools, bounded by `max_turns`.
#[derive(Debug, Clone)]
pub struct AgentLoop<C: Config> {
    client: Client<C>,
    model: String,
    tools: GuardedRegistry,
    max_turns: u32,
}

impl<C: Config> AgentLoop<C> {
    /// A loop calling `model` through `client`, with `tools`; at most 10 turns.
    pub fn new(client: Client<C>, model: impl Into<String>, tools: GuardedRegistry) -> Self {
        Self {
            client,
            model: model.into(),
            tools,
            max_turns: 10,
        }
    }

    /// At most this many model completions (each tool round trip is one).
    #[must_use]
    pub fn max_turns(mut self, turns: u32) -> Self {
        self.max_turns = turns.max(1);
        self
    }

    /// Runs until the model answers without tool calls, or `max_turns`.
    pub async fn run(
        &self,
        mut messages: Vec<ChatCompletionRequestMessage>,
    ) -> Result<LoopOutcome, LoopError> {
        let tools = chat_tools(&self.tools)?;
        for turn in 1..=self.max_turns {
            let request = CreateChatCompletionRequestArgs::default()
                .model(self.model.clone())
                .messages(messages.clone())
                .tools(tools.clone())
                .build()?;
            let response = self.client.chat().create(request).await?;
            let message = response
                .choices
                .into_iter()
                .next()
                .ok_or(LoopError::NoChoice)?
                .message;
            let calls = message.tool_calls.clone().unwrap_or_default();
            if calls.is_empty() {
                let mut assistant = ChatCompletionRequestAssistantMessageArgs::default();
                if let Some(text) = &message.content {
                    assistant.content(text.clone());
                }
                messages.push(assistant.build()?.into());
                return Ok(LoopOutcome {
                    answer: message.content,
                    turns: turn,
                    messages,
                });
            }
            let mut assistant = ChatCompletionRequestAssistantMessageArgs::default();
            assistant.tool_calls(calls.clone());
            if let Some(text) = &message.content {
                assistant.content(text.clone());
            }
            messages.push(assistant.build()?.into());
            messages.extend(tool_messages(&self.tools, &calls).await?);
        }
        Err(LoopError::MaxTurns {
            turns: self.max_turns,
            messages,
        })
    }
}
