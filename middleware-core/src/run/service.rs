//! `PaybondAgentRunService`: the tower `Service` that guards one tool service.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tower::Service;

use super::protocol::{Invoke, guard};
use super::{PaybondAgentRun, RunError};
use crate::tool::{ToolCall, ToolOutput};

/// The service [`PaybondAgentRun`] wraps a tool service in.
///
/// Non-side-effecting tools pass straight through. A side-effecting call is
/// verified first; only an allow runs the inner service, and its reservation is
/// then finalized: consumed with the actual cost on `Ok`, released on `Err`, on a
/// panic, or when the response future is dropped.
///
/// Its futures are `Send + 'static`. One rustc limitation to know of
/// (rust-lang/rust#110338): when the inner service's *type* names a trait object,
/// as `BoxCloneService<ToolCall, ToolOutput, BoxError>` does, rustc cannot prove
/// `Send` for `tokio::spawn(async move { svc.oneshot(call).await })`; spawn
/// `svc.ready().await?.call(call)` (a plain boxed future) instead.
#[derive(Clone, Debug)]
pub struct PaybondAgentRunService<S> {
    inner: S,
    run: PaybondAgentRun,
}

impl<S> PaybondAgentRunService<S> {
    /// Guards `inner` with `run`.
    pub const fn new(inner: S, run: PaybondAgentRun) -> Self {
        Self { inner, run }
    }

    /// The run this service belongs to.
    pub fn run(&self) -> &PaybondAgentRun {
        &self.run
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<ToolCall> for PaybondAgentRunService<S>
where
    S: Service<ToolCall, Response = ToolOutput> + Clone + Send + 'static,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ToolOutput;
    type Error = RunError<S::Error>;
    type Future = BoxFuture<'static, Result<ToolOutput, RunError<S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(RunError::Tool)
    }

    fn call(&mut self, call: ToolCall) -> Self::Future {
        // The instance that was polled ready goes into the future; a fresh clone
        // stays behind for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Erasing the inner service here keeps the generic bounds (and their Send
        // proofs) at this one place; the decision logic below is not generic.
        let invoke: Invoke<S::Error> = Box::new(move |call| Box::pin(inner.call(call)));
        let shared = Arc::clone(&self.run.shared);
        Box::pin(guard(shared, invoke, call))
    }
}
