//! The generic `{name, execute}` tool trait with a custom orchestrator: the
//! scenario's calls in order; on a hold the demo approves as the operator, stores
//! the approval token and retries the same call.

use std::sync::Arc;

use paybond_middleware_core::RunError;

use crate::harness::Harness;
use crate::scenario::steps;
use crate::travel;
use crate::{DemoError, Finished};

/// Runs the scenario through a [`GuardedRegistry`](paybond_middleware_core::registry::GuardedRegistry).
pub async fn run(h: &Arc<Harness>) -> Result<Finished, DemoError> {
    let run = h.bind("demo-generic", false).await?;
    let tools = travel::registry().guarded(&run);
    for step in steps() {
        let mut result = tools.call(step.tool, step.args.clone(), step.id).await;
        if let Err(RunError::ApprovalRequired(hold)) = &result {
            let id = hold
                .approval_request_id
                .ok_or_else(|| DemoError::Gateway("a hold without an approval request".into()))?;
            h.approve(id).await?;
            let token = h.approval_token(id).await?;
            run.store_approval_token(step.id, token);
            result = tools.call(step.tool, step.args.clone(), step.id).await;
        }
        tracing::info!(step = step.id, ok = result.is_ok(), "{}", step.what);
    }
    Ok(Finished::of(&run, None))
}

/// Runs the governed scenario (see [`crate::governed`]) through the governed
/// registry: the calls in order, the cap lowered between the parts, and an explicit
/// [`reload_policy`](paybond_middleware_core::PaybondAgentRun::reload_policy).
pub async fn governed(h: &Arc<Harness>) -> Result<Finished, DemoError> {
    let run = h.bind("demo-generic", false).await?;
    let tools = travel::governed_registry(&run);
    let [first, second] = crate::scenario::governed_steps();
    for step in first {
        let result = tools.call(step.tool, step.args.clone(), step.id).await;
        tracing::info!(step = step.id, ok = result.is_ok(), "{}", step.what);
    }
    crate::governed::between_parts(h, &run).await?;
    for step in second {
        let result = tools.call(step.tool, step.args.clone(), step.id).await;
        tracing::info!(step = step.id, ok = result.is_ok(), "{}", step.what);
    }
    Ok(Finished::of(&run, None))
}
