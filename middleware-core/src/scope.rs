//! Compensation: the guarded calls of one workflow, undone when it fails.
//!
//! [`transaction`] runs a workflow with a [`TransactionScope`]. Each paid step may
//! register how to undo it ([`TransactionScope::compensate_with`]: a refund, a
//! cancellation). If the workflow fails, the compensations of the registered steps
//! run in reverse order, each at most once; each outcome (`compensated`, or
//! `compensation_failed` with the error) goes to the run's trace and, for a step
//! with an allowed decision, to the ledger as a `compensation` event linked to it.
//! The workflow's own error is returned whatever the compensations did. If the
//! workflow's future is dropped before it finished, the compensations of the steps
//! registered so far still run, in a task of their own.
//!
//! ```
//! # #[cfg(not(feature = "test-util"))] fn main() {}
//! # #[cfg(feature = "test-util")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! use std::sync::Arc;
//! use paybond_middleware_core::testing::{ScriptedGateway, VerifyScript};
//! use paybond_middleware_core::{PaybondAgentRun, ToolOutput, ToolPolicy, ToolRegistry, tool_fn};
//! use paybond_middleware_core::scope::transaction;
//! use serde_json::{Value, json};
//!
//! let gateway = Arc::new(ScriptedGateway::new());
//! gateway.push_verify(VerifyScript::Allow);
//! let run = PaybondAgentRun::builder(gateway, uuid::Uuid::new_v4(), "cap".into())
//!     .tool("travel.book_hotel", ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("amount_cents"))
//!     .bind()
//!     .await?;
//! let tools = ToolRegistry::new()
//!     .with(tool_fn("travel.book_hotel", ToolPolicy::read_only(), |_: Value| async {
//!         Ok(ToolOutput::new(json!({"booking": "H-1"})).with_cost_cents(12_000))
//!     }))
//!     .guarded(&run);
//! let failed = transaction(&run, "trip", |scope| async move {
//!     tools.call("travel.book_hotel", json!({"amount_cents": 12_000}), "book-1").await?;
//!     scope.compensate_with("book-1", || async { Ok(()) }); // cancel booking H-1
//!     Err::<(), Box<dyn std::error::Error + Send + Sync>>("the flight is sold out".into())
//! })
//! .await
//! .unwrap_err();
//! assert_eq!(failed.compensations.len(), 1);
//! assert_eq!(run.trace().compensations().len(), 1);
//! # Ok::<_, Box<dyn std::error::Error>>(()) }) }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::run::{BoxError, PaybondAgentRun};
use crate::trace::TraceOutcome;
use crate::wire::{CompensationOutcome, CompensationRequest, Finalization};

type Action = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), BoxError>> + Send>;

struct Step {
    tool_call_id: String,
    decision_id: Option<Uuid>,
    action: Action,
}

struct Inner {
    run: PaybondAgentRun,
    workflow: String,
    steps: Mutex<Vec<Step>>,
    /// The workflow ended (succeeded, or its compensation started): nothing more
    /// to do when the scope is dropped.
    settled: AtomicBool,
}

/// The steps of one workflow and how to undo them; see [`transaction`].
#[derive(Clone)]
pub struct TransactionScope {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TransactionScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps = self.inner.steps.lock().map(|s| s.len()).unwrap_or_default();
        f.debug_struct("TransactionScope")
            .field("workflow", &self.inner.workflow)
            .field("steps", &steps)
            .finish()
    }
}

/// One compensation, as the trace and [`WorkflowFailed`] report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompensationEntry {
    /// The workflow.
    pub workflow: String,
    /// The compensated step's tool call.
    pub tool_call_id: String,
    /// Its allowed decision, when it had one.
    pub decision_id: Option<Uuid>,
    /// How the compensating action ended.
    pub outcome: CompensationOutcome,
    /// Why it failed.
    pub error: Option<String>,
    /// Its ledger entry, when the gateway recorded it.
    pub ledger_seq: Option<u64>,
}

/// A workflow that failed: its own error, and what its compensations did.
#[derive(Debug, thiserror::Error)]
#[error("workflow `{workflow}` failed ({} compensation(s) run): {error}", compensations.len())]
pub struct WorkflowFailed<E> {
    /// The workflow.
    pub workflow: String,
    /// The error the workflow failed with (never replaced by a compensation's).
    pub error: E,
    /// Each compensation, in the order run (the reverse of the steps').
    pub compensations: Vec<CompensationEntry>,
}

impl TransactionScope {
    /// The workflow's name.
    pub fn workflow(&self) -> &str {
        &self.inner.workflow
    }

    /// Registers how to undo the step that ran as `tool_call_id` (its decision is
    /// taken from the run's trace: the allowed, consumed attempt of that call).
    pub fn compensate_with<F, Fut>(&self, tool_call_id: &str, action: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let decision_id = self
            .inner
            .run
            .trace()
            .entries()
            .iter()
            .rev()
            .find(|e| {
                e.tool_call_id == tool_call_id
                    && e.outcome == TraceOutcome::Allow
                    && e.finalization == Some(Finalization::Consumed)
            })
            .and_then(|e| e.decision_id);
        self.inner
            .steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Step {
                tool_call_id: tool_call_id.to_owned(),
                decision_id,
                action: Box::new(move || Box::pin(action())),
            });
    }
}

/// Compensates when the workflow's future is dropped before it settled.
struct DropGuard(Arc<Inner>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if self.0.settled.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = self.0.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    compensate(&inner).await;
                });
            }
            Err(_) => tracing::error!(
                workflow = %inner.workflow,
                "a workflow was dropped outside a tokio runtime: its compensations cannot run"
            ),
        }
    }
}

/// Runs `body` as the workflow `name` of `run`: on `Err`, compensates the steps
/// registered on its scope (see the [module](self)) and returns the error with
/// what the compensations did. Needs a tokio runtime.
pub async fn transaction<T, E, F, Fut>(
    run: &PaybondAgentRun,
    name: impl Into<String>,
    body: F,
) -> Result<T, WorkflowFailed<E>>
where
    F: FnOnce(TransactionScope) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let inner = Arc::new(Inner {
        run: run.clone(),
        workflow: name.into(),
        steps: Mutex::new(Vec::new()),
        settled: AtomicBool::new(false),
    });
    let guard = DropGuard(inner.clone());
    let result = body(TransactionScope {
        inner: inner.clone(),
    })
    .await;
    match result {
        Ok(value) => {
            inner.settled.store(true, Ordering::SeqCst);
            Ok(value)
        }
        Err(error) => {
            // In a task of its own: dropping this future now does not stop it.
            inner.settled.store(true, Ordering::SeqCst);
            let task = tokio::spawn({
                let inner = inner.clone();
                async move { compensate(&inner).await }
            });
            let compensations = task.await.unwrap_or_default();
            drop(guard);
            Err(WorkflowFailed {
                workflow: inner.workflow.clone(),
                error,
                compensations,
            })
        }
    }
}

/// Runs every registered compensation once, last step first, and records each.
async fn compensate(inner: &Inner) -> Vec<CompensationEntry> {
    // Taken out under the lock: a second caller finds none.
    let steps = std::mem::take(&mut *inner.steps.lock().unwrap_or_else(PoisonError::into_inner));
    let mut done = Vec::with_capacity(steps.len());
    for step in steps.into_iter().rev() {
        let ran = std::panic::AssertUnwindSafe((step.action)())
            .catch_unwind()
            .await;
        let (outcome, error) = match ran {
            Ok(Ok(())) => (CompensationOutcome::Compensated, None),
            Ok(Err(e)) => (CompensationOutcome::CompensationFailed, Some(e.to_string())),
            Err(_) => (
                CompensationOutcome::CompensationFailed,
                Some("the compensating action panicked".to_owned()),
            ),
        };
        let mut entry = CompensationEntry {
            workflow: inner.workflow.clone(),
            tool_call_id: step.tool_call_id,
            decision_id: step.decision_id,
            outcome,
            error,
            ledger_seq: None,
        };
        if let Some(decision_id) = entry.decision_id {
            let request = CompensationRequest {
                outcome,
                error: entry.error.clone(),
                workflow: Some(inner.workflow.clone()),
                tool_call_id: Some(entry.tool_call_id.clone()),
            };
            match inner
                .run
                .gateway()
                .record_compensation(decision_id, &request)
                .await
            {
                Ok(recorded) => entry.ledger_seq = Some(recorded.ledger_seq),
                Err(e) => tracing::warn!(
                    %decision_id,
                    error = %e,
                    "the gateway did not record the compensation"
                ),
            }
        }
        match &entry.error {
            None => {
                tracing::info!(workflow = %entry.workflow, tool_call_id = %entry.tool_call_id, "compensated")
            }
            Some(e) => {
                tracing::warn!(workflow = %entry.workflow, tool_call_id = %entry.tool_call_id, error = %e, "compensation_failed")
            }
        }
        inner.run.trace().push_compensation(entry.clone());
        done.push(entry);
    }
    done
}
