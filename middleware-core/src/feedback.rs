//! What a model is told about a guarded call: the tool's output, or why it did not
//! run, as JSON it can read and act on. Every framework adapter uses this, so the
//! same hold reads the same whether it reaches the model through OpenAI-style tool
//! messages, a rig tool result or an MCP `is_error` result.

use serde_json::{Value, json};

use crate::run::RunError;
use crate::tool::ToolOutput;

/// How a guarded call ended, for an adapter to choose its framework's success or error shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackStatus {
    /// The tool ran and returned.
    Ok,
    /// Held for operator approval: retry the same call once approved.
    PendingApproval,
    /// Denied by policy, or no decision could be made: the tool did not run.
    Blocked,
    /// The tool ran and failed (its reservation was released).
    Error,
}

impl FeedbackStatus {
    /// `ok`, `pending_approval`, `blocked` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::PendingApproval => "pending_approval",
            Self::Blocked => "blocked",
            Self::Error => "error",
        }
    }
}

/// The model's view of one guarded call's result.
///
/// - output: the tool's body as is;
/// - hold: `{"status": "pending_approval", "reason_codes": [..], "approval_request_id": ..}`;
/// - deny, gateway failure, invalid call: `{"status": "blocked", "reason_codes": [..], "message": ..}`;
/// - tool failure: `{"status": "error", "reason_codes": ["tool_failed"], "message": ..}`.
///
/// Never contains a token or key (the run's errors do not carry them).
///
/// ```
/// use paybond_middleware_core::feedback::{FeedbackStatus, model_feedback};
/// use paybond_middleware_core::{BoxError, RunError, ToolOutput};
/// use serde_json::json;
///
/// let ran: Result<ToolOutput, RunError<BoxError>> = Ok(ToolOutput::new(json!({"order": "ORD-1"})));
/// assert_eq!(model_feedback(&ran), (FeedbackStatus::Ok, json!({"order": "ORD-1"})));
///
/// let failed: Result<ToolOutput, RunError<BoxError>> = Err(RunError::Tool("vendor down".into()));
/// let (status, body) = model_feedback(&failed);
/// assert_eq!(status, FeedbackStatus::Error);
/// assert_eq!(body["reason_codes"], json!(["tool_failed"]));
/// ```
pub fn model_feedback<E: std::fmt::Display>(
    result: &Result<ToolOutput, RunError<E>>,
) -> (FeedbackStatus, Value) {
    match result {
        Ok(output) => (FeedbackStatus::Ok, output.body.clone()),
        Err(RunError::ApprovalRequired(hold)) => (
            FeedbackStatus::PendingApproval,
            json!({
                "status": FeedbackStatus::PendingApproval.as_str(),
                "reason_codes": hold.reason_codes,
                "approval_request_id": hold.approval_request_id,
                "message": "an operator must approve this call; retry the same call once approved",
            }),
        ),
        Err(e) if e.tool_ran() => (
            FeedbackStatus::Error,
            json!({
                "status": FeedbackStatus::Error.as_str(),
                "reason_codes": e.reason_codes(),
                "message": e.to_string(),
            }),
        ),
        Err(e) => (
            FeedbackStatus::Blocked,
            json!({
                "status": FeedbackStatus::Blocked.as_str(),
                "reason_codes": e.reason_codes(),
                "message": e.to_string(),
            }),
        ),
    }
}
