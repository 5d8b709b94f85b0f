//! The call protocol of a guarded tool call: verify (and wait for an approval,
//! and retry with its token), run the tool, submit evidence, finalize the
//! reservation (consumed, or released on an error, a panic or a drop), each step
//! in the run's trace. [`PaybondAgentRunService`](super::PaybondAgentRunService)
//! hands every call here.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use paybond_policies::{SpendSource, ToolPolicy};
use serde_json::json;
use tracing::{Instrument, Span, field};
use uuid::Uuid;

use super::{ApprovalRequired, ApprovalWait, RunError, RunPolicy, Shared, SpendDenied};
use crate::ApprovalToken;
use crate::gateway::GatewayError;
use crate::tool::{ToolCall, ToolOutput, lookup};
use crate::trace::{TraceEntry, TraceOutcome, millis};
use crate::wire::{
    ApprovalState, CompleteRequest, Decision, EvidenceRequest, Finalization, PolicyCheck,
    VerifyRequest,
};

/// Calls the inner service that was polled ready, once.
pub(super) type Invoke<E> =
    Box<dyn FnOnce(ToolCall) -> BoxFuture<'static, Result<ToolOutput, E>> + Send>;

/// What every trace entry of one call shares.
#[derive(Clone)]
struct CallInfo {
    shared: Arc<Shared>,
    /// The run's policy when the call started: the whole call is decided under it.
    policy: Arc<RunPolicy>,
    tool_call_id: String,
    tool: String,
    operation: String,
    amount: Option<u64>,
    /// The checks of the attempt's verify, for its trace entry.
    checks: Vec<PolicyCheck>,
}

/// The parts of a trace entry that differ between outcomes.
struct Recorded {
    outcome: TraceOutcome,
    reason_codes: Vec<String>,
    decision_id: Option<Uuid>,
    finalization: Option<Finalization>,
    actual_cents: Option<u64>,
    sensitive_path: Option<String>,
}

impl CallInfo {
    /// The attempt's trace entry; it takes the attempt's checks.
    fn record(&mut self, attempt: u32, started: Instant, r: Recorded) {
        let span = Span::current();
        span.record("paybond.outcome", r.outcome.as_str());
        if let Some(code) = r.reason_codes.first() {
            span.record("paybond.reason_code", code.as_str());
        }
        if let Some(id) = r.decision_id {
            span.record("paybond.decision_id", field::display(id));
        }
        if let Some(amount) = self.amount {
            span.record("paybond.amount_cents", amount);
        }
        if let Some(f) = r.finalization {
            span.record("paybond.finalization", f.as_str());
        }
        let failed = match r.outcome {
            TraceOutcome::Error => r.reason_codes.first().map(String::as_str),
            _ => r
                .reason_codes
                .iter()
                .map(String::as_str)
                .find(|c| *c == "tool_failed" || *c == "tool_panicked"),
        };
        if let Some(kind) = failed {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", kind);
        }
        self.shared.trace.push(TraceEntry {
            tool_call_id: self.tool_call_id.clone(),
            tool: self.tool.clone(),
            operation: self.operation.clone(),
            amount_cents: self.amount,
            outcome: r.outcome,
            reason_codes: r.reason_codes,
            decision_id: r.decision_id,
            finalization: r.finalization,
            actual_cents: r.actual_cents,
            attempt,
            duration_ms: millis(started.elapsed()),
            checks: std::mem::take(&mut self.checks),
            sensitive_path: r.sensitive_path,
        });
    }

    fn record_error(&mut self, attempt: u32, started: Instant, code: &str) {
        self.record(
            attempt,
            started,
            Recorded {
                outcome: TraceOutcome::Error,
                reason_codes: vec![code.to_owned()],
                decision_id: None,
                finalization: None,
                actual_cents: None,
                sensitive_path: None,
            },
        );
    }

    fn unavailable<E>(&self, source: GatewayError) -> RunError<E> {
        RunError::GatewayUnavailable {
            tool_call_id: self.tool_call_id.clone(),
            operation: self.operation.clone(),
            source,
        }
    }
}

pub(super) async fn guard<E: Send + 'static>(
    shared: Arc<Shared>,
    invoke: Invoke<E>,
    call: ToolCall,
) -> Result<ToolOutput, RunError<E>> {
    // Everything the policy decides is read here, once: a reload swaps the run's
    // policy between calls, never within one.
    let snapshot = shared.policy();
    let policy = snapshot.tools.get(&call.tool_name);
    // A tool missing from the run's policy is treated as side-effecting: the gateway,
    // which holds the tenant's whole policy, decides whether it may run.
    let amount = if policy.is_some_and(|p| !p.side_effecting) {
        None
    } else {
        Some(amount_to_authorize(&call, policy))
    };
    // The operation is the policy's for a tool the run knows; a call may only repeat
    // it (the gateway binds its per-tool controls to the operation).
    let (operation, conflict) = match policy {
        Some(p) => {
            let op = p.operation_for(&call.tool_name).to_owned();
            let conflict = call.operation.as_ref().filter(|o| **o != op).cloned();
            (op, conflict)
        }
        None => (
            call.operation
                .clone()
                .unwrap_or_else(|| call.tool_name.clone()),
            None,
        ),
    };
    // An OpenTelemetry GenAI `execute_tool` span (its name and attributes as the
    // semantic conventions say), with the decision under `paybond.*`. Never an
    // argument value, never a secret.
    let span = tracing::info_span!(
        "paybond.tool_call",
        "otel.name" = %format_args!("execute_tool {}", call.tool_name),
        "otel.status_code" = field::Empty,
        "gen_ai.operation.name" = "execute_tool",
        "gen_ai.tool.type" = "function",
        "gen_ai.tool.name" = %call.tool_name,
        "gen_ai.tool.call.id" = %call.tool_call_id,
        "error.type" = field::Empty,
        "paybond.operation" = %operation,
        "paybond.intent_id" = %shared.intent_id,
        "paybond.attempt" = field::Empty,
        "paybond.outcome" = field::Empty,
        "paybond.reason_code" = field::Empty,
        "paybond.amount_cents" = field::Empty,
        "paybond.currency" = field::Empty,
        "paybond.decision_id" = field::Empty,
        "paybond.policy_version" = field::Empty,
        "paybond.finalization" = field::Empty,
    );
    let mut info = CallInfo {
        shared,
        policy: snapshot.clone(),
        tool_call_id: call.tool_call_id.clone(),
        tool: call.tool_name.clone(),
        operation,
        amount: None,
        checks: Vec::new(),
    };
    let amount = match (amount, conflict) {
        (Some(_), Some(claimed)) => Some(Err(format!(
            "the call names operation `{claimed}`, but the policy's operation for `{}` is `{}`",
            info.tool, info.operation
        ))),
        (amount, _) => amount,
    };
    match amount {
        None => passthrough(info, invoke, call).instrument(span).await,
        Some(amount) => {
            // A side-effecting call whose arguments hold sensitive data is stopped
            // here: nothing of it goes to the gateway, the logs or the trace but
            // where the value is.
            if let Some(path) = paybond_policies::sensitive_path(&call.args, &info.policy.sensitive)
            {
                let (attempt, _) = info.shared.next_attempt(&info.tool_call_id, false);
                let _entered = span.enter();
                tracing::warn!(%path, "sensitive data in the arguments; not sent");
                info.record(
                    attempt,
                    Instant::now(),
                    Recorded {
                        outcome: TraceOutcome::Deny,
                        reason_codes: vec!["sensitive_data_in_arguments".to_owned()],
                        decision_id: None,
                        finalization: None,
                        actual_cents: None,
                        sensitive_path: Some(path.clone()),
                    },
                );
                return Err(RunError::SensitiveData {
                    tool_call_id: info.tool_call_id,
                    tool: info.tool,
                    path,
                });
            }
            authorize(info, amount, invoke, call).instrument(span).await
        }
    }
}

async fn passthrough<E: Send + 'static>(
    mut info: CallInfo,
    invoke: Invoke<E>,
    call: ToolCall,
) -> Result<ToolOutput, RunError<E>> {
    let (attempt, _) = info.shared.next_attempt(&info.tool_call_id, false);
    Span::current().record("paybond.attempt", attempt);
    let started = Instant::now();
    let result = run_inner(invoke, call).await;
    let reason_codes = match &result {
        Ok(_) => vec![],
        Err(Failure::Error(_)) => vec!["tool_failed".to_owned()],
        Err(Failure::Panic(_)) => vec!["tool_panicked".to_owned()],
    };
    info.record(
        attempt,
        started,
        Recorded {
            outcome: TraceOutcome::Passthrough,
            reason_codes,
            decision_id: None,
            finalization: None,
            actual_cents: None,
            sensitive_path: None,
        },
    );
    result.map_err(|failure| failure.into_run_error(&info.tool))
}

async fn authorize<E: Send + 'static>(
    mut info: CallInfo,
    amount: Result<u64, String>,
    invoke: Invoke<E>,
    call: ToolCall,
) -> Result<ToolOutput, RunError<E>> {
    let shared = Arc::clone(&info.shared);
    let amount = match amount {
        Ok(amount) => amount,
        Err(reason) => {
            // Without taking the stored approval token: it stays for a call that can be verified.
            let (attempt, _) = shared.next_attempt(&info.tool_call_id, false);
            Span::current().record("paybond.attempt", attempt);
            info.record_error(attempt, Instant::now(), "invalid_call");
            return Err(RunError::InvalidCall {
                tool_call_id: info.tool_call_id,
                tool: info.tool,
                reason,
            });
        }
    };
    info.amount = Some(amount);
    let (mut attempt, mut approval_token) = shared.next_attempt(&info.tool_call_id, true);
    if let Some(currency) = call.currency.as_ref().or(shared.currency.as_ref()) {
        Span::current().record("paybond.currency", currency.as_str());
    }

    loop {
        Span::current().record("paybond.attempt", attempt);
        let started = Instant::now();
        let request = VerifyRequest {
            intent_id: shared.intent_id,
            token: shared.capability_token.clone(),
            operation: info.operation.clone(),
            requested_spend_cents: amount,
            vendor_id: call.vendor_id.clone(),
            task_id: call.task_id.clone(),
            workflow_id: call.workflow_id.clone(),
            tool_call_id: Some(info.tool_call_id.clone()),
            tool_name: Some(info.tool.clone()),
            currency: call.currency.clone().or_else(|| shared.currency.clone()),
            agent_subject: shared.agent_subject.clone(),
            approval_token: approval_token.take(),
            // One key per attempt: the client's retries of this verify reuse it.
            idempotency_key: Some(crate::new_idempotency_key()),
            phase: Some(shared.phase()),
        };
        let mut result = match shared.gateway.verify(&request).await {
            Ok(result) => result,
            Err(source) => {
                tracing::warn!(error = %source, "verify failed, not running the tool");
                info.checks.clear();
                info.record_error(attempt, started, "gateway_unavailable");
                return Err(info.unavailable(source));
            }
        };
        let decision = result.decision();
        // The attempt's trace entry keeps the checks; a deny's error keeps them too.
        info.checks = if decision == Decision::Deny {
            result.checks.clone()
        } else {
            std::mem::take(&mut result.checks)
        };
        if let Some(version) = result.policy_version {
            Span::current().record("paybond.policy_version", version);
        }
        match decision {
            Decision::Allow => {
                let Some(decision_id) = result.decision_id else {
                    info.record_error(attempt, started, "gateway_unavailable");
                    return Err(info.unavailable(GatewayError::Malformed {
                        operation: "verify",
                        detail: "an allow without a decision_id cannot be finalized".into(),
                    }));
                };
                return execute(
                    info,
                    invoke,
                    call,
                    decision_id,
                    result.reason_codes,
                    attempt,
                    started,
                )
                .await;
            }
            Decision::Deny => {
                info.record(
                    attempt,
                    started,
                    Recorded {
                        outcome: TraceOutcome::Deny,
                        reason_codes: result.reason_codes.clone(),
                        decision_id: result.decision_id,
                        finalization: None,
                        actual_cents: None,
                        sensitive_path: None,
                    },
                );
                return Err(RunError::SpendDenied(Box::new(SpendDenied {
                    tool_call_id: info.tool_call_id,
                    operation: info.operation,
                    amount_cents: amount,
                    result,
                })));
            }
            Decision::Hold => {
                info.record(
                    attempt,
                    started,
                    Recorded {
                        outcome: TraceOutcome::Hold,
                        reason_codes: result.reason_codes.clone(),
                        decision_id: result.decision_id,
                        finalization: None,
                        actual_cents: None,
                        sensitive_path: None,
                    },
                );
                let hold = ApprovalRequired {
                    tool_call_id: info.tool_call_id.clone(),
                    operation: info.operation.clone(),
                    amount_cents: amount,
                    decision_id: result.decision_id,
                    approval_request_id: result.approval_request_id,
                    reason_codes: result.reason_codes,
                };
                let (Some(wait), Some(request_id)) = (shared.wait, hold.approval_request_id) else {
                    return Err(RunError::ApprovalRequired(hold));
                };
                match wait_for_approval(&info, request_id, wait).await? {
                    Some(token) => {
                        tracing::info!(approval_request_id = %request_id, "approved, retrying");
                        approval_token = Some(token);
                        (attempt, _) = shared.next_attempt(&info.tool_call_id, false);
                    }
                    None => return Err(RunError::ApprovalRequired(hold)),
                }
            }
        }
    }
}

/// The call's own amount, else the one at the policy's `spend_from_args`, else its
/// fixed `max_spend_cents`.
fn amount_to_authorize(call: &ToolCall, policy: Option<&ToolPolicy>) -> Result<u64, String> {
    if let Some(cents) = call.requested_spend_cents {
        return Ok(cents);
    }
    match policy.and_then(ToolPolicy::spend_source) {
        Some(SpendSource::Fixed(cents)) => Ok(cents),
        Some(SpendSource::FromArgs(path)) => match lookup(&call.args, path) {
            Some(value) => value.as_u64().ok_or_else(|| {
                format!(
                    "argument `{path}` (the tool's spend_from_args) must be a non-negative \
                     whole number of cents, got {value}"
                )
            }),
            None => Err(format!(
                "argument `{path}` (the tool's spend_from_args) is missing from the call"
            )),
        },
        None if policy.is_none() => Err(format!(
            "`{}` is not in the run's tool policy and the call names no requested_spend_cents",
            call.tool_name
        )),
        None => Err(
            "the tool's policy has neither max_spend_cents nor spend_from_args and the call \
             names no requested_spend_cents"
                .to_owned(),
        ),
    }
}

/// Polls an approval request until it is decided or the wait times out (`Ok(None)`).
async fn wait_for_approval<E>(
    info: &CallInfo,
    request_id: Uuid,
    wait: ApprovalWait,
) -> Result<Option<ApprovalToken>, RunError<E>> {
    let deadline = tokio::time::Instant::now() + wait.timeout;
    loop {
        let status = info
            .shared
            .gateway
            .approval_status(request_id)
            .await
            .map_err(|source| info.unavailable(source))?;
        match status.state {
            ApprovalState::Approved => {
                return status.approval_token.map(Some).ok_or_else(|| {
                    info.unavailable(GatewayError::Malformed {
                        operation: "approval_status",
                        detail: "approved without an approval_token".into(),
                    })
                });
            }
            state @ (ApprovalState::Denied | ApprovalState::Expired) => {
                return Err(RunError::ApprovalRejected {
                    tool_call_id: info.tool_call_id.clone(),
                    approval_request_id: request_id,
                    state,
                });
            }
            ApprovalState::Pending => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(wait.poll_interval.min(deadline - now)).await;
    }
}

/// How the inner service failed.
enum Failure<E> {
    Error(E),
    Panic(String),
}

impl<E> Failure<E> {
    fn into_run_error(self, tool: &str) -> RunError<E> {
        match self {
            Self::Error(e) => RunError::Tool(e),
            Self::Panic(message) => RunError::ToolPanicked {
                tool: tool.to_owned(),
                message,
            },
        }
    }
}

/// Calls the (ready) inner service, turning a panic into a value so the
/// reservation can be released before the caller hears of it.
async fn run_inner<E: Send + 'static>(
    invoke: Invoke<E>,
    call: ToolCall,
) -> Result<ToolOutput, Failure<E>> {
    match AssertUnwindSafe(async move { invoke(call).await })
        .catch_unwind()
        .await
    {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(e)) => Err(Failure::Error(e)),
        Err(payload) => Err(Failure::Panic(
            payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned()),
        )),
    }
}

#[allow(clippy::too_many_arguments)]
async fn execute<E: Send + 'static>(
    info: CallInfo,
    invoke: Invoke<E>,
    call: ToolCall,
    decision_id: Uuid,
    mut reason_codes: Vec<String>,
    attempt: u32,
    started: Instant,
) -> Result<ToolOutput, RunError<E>> {
    Span::current().record("paybond.decision_id", field::display(decision_id));
    let reserved = info.amount.unwrap_or(0);
    let mut on_drop = ReleaseOnDrop {
        info: Some(info),
        decision_id,
        attempt,
        started,
    };
    let result = run_inner(invoke, call).await;
    // Armed with the info just above; only this disarm takes it back.
    let Some(mut info) = on_drop.disarm() else {
        unreachable!("the call's info is taken back once, here");
    };

    let (finalization, actual_cents) = match &result {
        Ok(output) => {
            let actual = match output.cost_cents {
                Some(cost) if cost > reserved => {
                    tracing::warn!(
                        cost,
                        reserved,
                        "the tool reported more than was reserved; settling the reservation"
                    );
                    reason_codes.push("actual_cost_exceeds_reservation".to_owned());
                    reserved
                }
                Some(cost) => cost,
                None => reserved,
            };
            if let Err(error) = submit_evidence(&info, decision_id, actual).await {
                tracing::warn!(%error, "evidence submission failed");
                reason_codes.push("evidence_failed".to_owned());
            }
            match complete(
                &info.shared,
                decision_id,
                Finalization::Consumed,
                Some(actual),
            )
            .await
            {
                Some(f) => (Some(f), Some(actual)),
                None => {
                    reason_codes.push("finalization_failed".to_owned());
                    (None, None)
                }
            }
        }
        Err(failure) => {
            reason_codes.push(
                match failure {
                    Failure::Error(_) => "tool_failed",
                    Failure::Panic(_) => "tool_panicked",
                }
                .to_owned(),
            );
            let finalization =
                complete(&info.shared, decision_id, Finalization::Released, None).await;
            if finalization.is_none() {
                reason_codes.push("finalization_failed".to_owned());
            }
            (finalization, None)
        }
    };
    info.record(
        attempt,
        started,
        Recorded {
            outcome: TraceOutcome::Allow,
            reason_codes,
            decision_id: Some(decision_id),
            finalization,
            actual_cents,
            sensitive_path: None,
        },
    );
    result.map_err(|failure| failure.into_run_error(&info.tool))
}

async fn submit_evidence(
    info: &CallInfo,
    decision_id: Uuid,
    actual: u64,
) -> Result<(), GatewayError> {
    let preset = info
        .policy
        .tools
        .get(&info.tool)
        .and_then(|p| p.evidence_preset.clone());
    let request = EvidenceRequest {
        payload: Some(json!({"status": "completed", "cost_cents": actual})),
        artifacts: None,
        operation: Some(info.operation.clone()),
        requested_spend_cents: info.amount,
        metadata: Some(json!({
            "decision_id": decision_id,
            "tool_call_id": info.tool_call_id,
            "evidence_preset": preset,
        })),
    };
    info.shared
        .gateway
        .submit_evidence(
            info.shared.intent_id,
            &request,
            &format!("{decision_id}:evidence"),
        )
        .await
        .map(drop)
}

/// Finalizes a reservation; `None` when the gateway could not be told (its
/// reservation TTL then returns the money).
async fn complete(
    shared: &Shared,
    decision_id: Uuid,
    outcome: Finalization,
    actual_spend_cents: Option<u64>,
) -> Option<Finalization> {
    let request = CompleteRequest {
        outcome,
        actual_spend_cents,
    };
    // One key per decision: a decision is finalized once, whoever retries.
    let key = format!("{decision_id}:complete");
    match shared
        .gateway
        .complete_decision(decision_id, &request, &key)
        .await
    {
        Ok(_) => {
            tracing::info!(%decision_id, finalization = ?outcome, actual_spend_cents, "reservation finalized");
            Some(outcome)
        }
        Err(error) => {
            tracing::warn!(%decision_id, finalization = ?outcome, %error, "finalizing the reservation failed; it will expire");
            None
        }
    }
}

/// Releases an allowed call's reservation when its future is dropped mid-run.
struct ReleaseOnDrop {
    info: Option<CallInfo>,
    decision_id: Uuid,
    attempt: u32,
    started: Instant,
}

impl ReleaseOnDrop {
    /// The call's info back, and nothing left to release on drop.
    fn disarm(&mut self) -> Option<CallInfo> {
        self.info.take()
    }
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let Some(mut info) = self.info.take() else {
            return;
        };
        let (decision_id, attempt, started) = (self.decision_id, self.attempt, self.started);
        let span = Span::current();
        let finish = async move {
            let finalization =
                complete(&info.shared, decision_id, Finalization::Released, None).await;
            let mut reason_codes = vec!["cancelled".to_owned()];
            if finalization.is_none() {
                reason_codes.push("finalization_failed".to_owned());
            }
            info.record(
                attempt,
                started,
                Recorded {
                    outcome: TraceOutcome::Allow,
                    reason_codes,
                    decision_id: Some(decision_id),
                    finalization,
                    actual_cents: None,
                    sensitive_path: None,
                },
            );
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(finish.instrument(span));
            }
            Err(_) => {
                tracing::warn!(%decision_id, "call dropped outside a tokio runtime; the reservation will expire");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn amount_comes_from_the_call_then_args_then_the_fixed_max() {
        let fixed = ToolPolicy::side_effecting("cost_and_completion").with_max_spend_cents(20_000);
        let by_args =
            ToolPolicy::side_effecting("cost_and_completion").with_spend_from_args("booking.cents");
        let call = ToolCall::new("t", json!({"booking": {"cents": 1234}}), "c");
        assert_eq!(amount_to_authorize(&call, Some(&fixed)), Ok(20_000));
        assert_eq!(amount_to_authorize(&call, Some(&by_args)), Ok(1234));
        let own = call.clone().with_requested_spend_cents(7);
        assert_eq!(amount_to_authorize(&own, Some(&by_args)), Ok(7));

        let missing = ToolCall::new("t", json!({}), "c");
        let err = amount_to_authorize(&missing, Some(&by_args)).unwrap_err();
        assert!(
            err.contains("booking.cents") && err.contains("missing"),
            "{err}"
        );
        let negative = ToolCall::new("t", json!({"booking": {"cents": -5}}), "c");
        let err = amount_to_authorize(&negative, Some(&by_args)).unwrap_err();
        assert!(err.contains("-5"), "{err}");
        let err = amount_to_authorize(&missing, None).unwrap_err();
        assert!(err.contains("not in the run's tool policy"), "{err}");
        let no_amount = ToolPolicy::side_effecting("cost_and_completion");
        assert!(amount_to_authorize(&missing, Some(&no_amount)).is_err());
    }
}
