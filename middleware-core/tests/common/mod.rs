//! Helpers shared by the integration tests.
#![allow(dead_code, missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches panic on setup failures

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use paybond_middleware_core::testing::ScriptedGateway;
use paybond_middleware_core::{PaybondAgentRun, PaybondAgentRunBuilder, ToolCall, ToolOutput};
use paybond_policies::ToolPolicy;
use serde_json::json;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt, service_fn};
use uuid::Uuid;

pub const TOKEN: &str = "cap-token-SECRET-7f3a";
pub const BOOK: &str = "travel.book_hotel";
pub const SEARCH: &str = "travel.search_hotels";

/// The canonical scenario's tools: booking is side-effecting with a 20000 cap, search is read-only.
pub fn builder(gateway: Arc<ScriptedGateway>) -> PaybondAgentRunBuilder {
    PaybondAgentRun::builder(gateway, Uuid::new_v4(), TOKEN.into())
        .tool(
            BOOK,
            ToolPolicy::side_effecting("cost_and_completion").with_max_spend_cents(20_000),
        )
        .tool(SEARCH, ToolPolicy::read_only())
        .agent_subject("agent-7")
        .currency("usd")
}

pub async fn run(gateway: &Arc<ScriptedGateway>) -> PaybondAgentRun {
    builder(Arc::clone(gateway)).bind().await.unwrap()
}

/// What a tool does when called.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// Returns the call's `cost_cents` argument as its cost.
    Succeed,
    Fail,
    Panic,
    /// Sleeps for a long time (for cancellation tests).
    Hang,
}

/// The error of the test tools: a concrete type, as most tool services have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolFailed(pub String);

impl std::fmt::Display for ToolFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ToolFailed {}

/// A tool service that counts its calls.
#[derive(Clone)]
pub struct CountingTool {
    pub calls: Arc<AtomicUsize>,
    behaviour: Behaviour,
}

impl CountingTool {
    pub fn new(behaviour: Behaviour) -> Self {
        Self {
            calls: Arc::new(AtomicUsize::new(0)),
            behaviour,
        }
    }

    pub fn count(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn service(&self) -> BoxCloneService<ToolCall, ToolOutput, ToolFailed> {
        let calls = Arc::clone(&self.calls);
        let behaviour = self.behaviour;
        service_fn(move |call: ToolCall| {
            let calls = Arc::clone(&calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                match behaviour {
                    Behaviour::Succeed => {
                        let mut out = ToolOutput::new(json!({"ok": true, "tool": call.tool_name}));
                        out.cost_cents = call.args["cost_cents"].as_u64();
                        Ok(out)
                    }
                    Behaviour::Fail => Err(ToolFailed("vendor timed out".into())),
                    Behaviour::Panic => panic!("vendor SDK panicked"),
                    Behaviour::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(ToolOutput::new(json!(null)))
                    }
                }
            }
        })
        .boxed_clone()
    }
}

pub fn book(id: &str, cost: u64) -> ToolCall {
    ToolCall::new(BOOK, json!({"hotel": "h1", "cost_cents": cost}), id)
}

/// Waits until `f` holds, polling, for at most five seconds.
pub async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 5 s");
}

/// Calls a service once, the tower way.
pub async fn call<S>(svc: &mut S, call: ToolCall) -> Result<S::Response, S::Error>
where
    S: Service<ToolCall>,
{
    svc.ready().await?.call(call).await
}
