//! What a guarded tool call returns instead of a result.

use std::fmt;

use uuid::Uuid;

use crate::gateway::GatewayError;
use crate::wire::{ApprovalState, VerifyResult};

/// A boxed error from the inner tool service.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a guarded tool call did not return the tool's output.
///
/// `E` is the inner tool service's error. Holds and denials are values to show
/// the model, not crashes; every variant but [`RunError::Tool`] and
/// [`RunError::ToolPanicked`] means the tool never ran. Messages never contain a
/// token or key.
#[derive(Debug)]
#[non_exhaustive]
pub enum RunError<E = BoxError> {
    /// A policy hold: an operator must approve, then the same call is retried.
    ApprovalRequired(ApprovalRequired),
    /// A hard denial (boxed: it carries the gateway's whole answer).
    SpendDenied(Box<SpendDenied>),
    /// While waiting for approval, an operator denied the request or it expired.
    ApprovalRejected {
        /// The tool call.
        tool_call_id: String,
        /// The approval request.
        approval_request_id: Uuid,
        /// Denied or expired.
        state: ApprovalState,
    },
    /// No decision could be made: the tool did not run (fail closed).
    GatewayUnavailable {
        /// The tool call.
        tool_call_id: String,
        /// The operation that was to be verified.
        operation: String,
        /// What went wrong.
        source: GatewayError,
    },
    /// The call cannot be authorized as made (no amount, a bad amount argument, an
    /// unknown tool): the tool did not run.
    InvalidCall {
        /// The tool call.
        tool_call_id: String,
        /// The tool.
        tool: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The arguments hold a value the tenant's policy marks sensitive
    /// (`spend_controls.data.sensitive_patterns`): nothing was sent to the gateway
    /// and the tool did not run. Only where the value is, never the value, is kept.
    SensitiveData {
        /// The tool call.
        tool_call_id: String,
        /// The tool.
        tool: String,
        /// The JSON path of the matching value, e.g. `$.card.number`.
        path: String,
    },
    /// The tool failed (its reservation, if any, was released), or the inner
    /// service failed to become ready.
    Tool(E),
    /// The tool panicked; its reservation was released.
    ToolPanicked {
        /// The tool.
        tool: String,
        /// The panic payload, when it was a string.
        message: String,
    },
}

impl<E: fmt::Display> fmt::Display for RunError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ApprovalRequired(hold) => hold.fmt(f),
            Self::SpendDenied(denied) => denied.fmt(f),
            Self::ApprovalRejected {
                tool_call_id,
                approval_request_id,
                state,
            } => write!(
                f,
                "approval request {approval_request_id} for tool call `{tool_call_id}` was \
                 {state:?}; the tool did not run"
            ),
            Self::GatewayUnavailable {
                tool_call_id,
                operation,
                source,
            } => write!(
                f,
                "no spend decision for `{operation}` (tool call `{tool_call_id}`), the tool did \
                 not run: {source}"
            ),
            Self::InvalidCall {
                tool_call_id,
                tool,
                reason,
            } => {
                write!(
                    f,
                    "tool call `{tool_call_id}` of `{tool}` cannot be authorized: {reason}"
                )
            }
            Self::SensitiveData {
                tool_call_id,
                tool,
                path,
            } => write!(
                f,
                "the arguments of `{tool}` (tool call `{tool_call_id}`) hold data the policy \
                 marks sensitive at {path}; the call was not sent and the tool did not run"
            ),
            Self::Tool(e) => write!(f, "tool failed: {e}"),
            Self::ToolPanicked { tool, message } => write!(f, "tool `{tool}` panicked: {message}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for RunError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::GatewayUnavailable { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The kind of a [`RunError`], for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RunErrorKind {
    /// See [`RunError::ApprovalRequired`].
    ApprovalRequired,
    /// See [`RunError::SpendDenied`].
    SpendDenied,
    /// See [`RunError::ApprovalRejected`].
    ApprovalRejected,
    /// See [`RunError::GatewayUnavailable`].
    GatewayUnavailable,
    /// See [`RunError::InvalidCall`].
    InvalidCall,
    /// See [`RunError::Tool`].
    Tool,
    /// See [`RunError::ToolPanicked`].
    ToolPanicked,
    /// See [`RunError::SensitiveData`].
    SensitiveData,
}

impl<E> RunError<E> {
    /// Which kind of outcome this is.
    pub fn kind(&self) -> RunErrorKind {
        match self {
            Self::ApprovalRequired(_) => RunErrorKind::ApprovalRequired,
            Self::SpendDenied(_) => RunErrorKind::SpendDenied,
            Self::ApprovalRejected { .. } => RunErrorKind::ApprovalRejected,
            Self::GatewayUnavailable { .. } => RunErrorKind::GatewayUnavailable,
            Self::InvalidCall { .. } => RunErrorKind::InvalidCall,
            Self::SensitiveData { .. } => RunErrorKind::SensitiveData,
            Self::Tool(_) => RunErrorKind::Tool,
            Self::ToolPanicked { .. } => RunErrorKind::ToolPanicked,
        }
    }

    /// Whether the tool ran (and failed) rather than being stopped before it ran.
    pub fn tool_ran(&self) -> bool {
        matches!(self, Self::Tool(_) | Self::ToolPanicked { .. })
    }

    /// The reason codes to show the model: the gateway's for holds and denials,
    /// one code of the layer's for the rest.
    pub fn reason_codes(&self) -> Vec<String> {
        match self {
            Self::ApprovalRequired(hold) => hold.reason_codes.clone(),
            Self::SpendDenied(denied) => denied.result.reason_codes.clone(),
            Self::ApprovalRejected { state, .. } => vec![match state {
                ApprovalState::Expired => "approval_expired".to_owned(),
                _ => "approval_denied".to_owned(),
            }],
            Self::GatewayUnavailable { .. } => vec!["gateway_unavailable".to_owned()],
            Self::InvalidCall { .. } => vec!["invalid_call".to_owned()],
            Self::SensitiveData { .. } => vec!["sensitive_data_in_arguments".to_owned()],
            Self::Tool(_) => vec!["tool_failed".to_owned()],
            Self::ToolPanicked { .. } => vec!["tool_panicked".to_owned()],
        }
    }
}

/// A policy hold on one tool call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "approval required for `{operation}` ({amount_cents} cents, tool call `{tool_call_id}`): {}; \
     approve request {} and retry the same call",
    reason_codes.join(", "),
    approval_request_id.map_or_else(|| "(none given)".to_owned(), |id| id.to_string())
)]
pub struct ApprovalRequired {
    /// The tool call to retry once approved.
    pub tool_call_id: String,
    /// The operation held.
    pub operation: String,
    /// The amount held.
    pub amount_cents: u64,
    /// The held decision.
    pub decision_id: Option<Uuid>,
    /// The approval request operators act on.
    pub approval_request_id: Option<Uuid>,
    /// Why it was held, e.g. `approval_threshold_exceeded`.
    pub reason_codes: Vec<String>,
}

/// A hard denial of one tool call, with the gateway's full answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "spend denied for `{operation}` ({amount_cents} cents, tool call `{tool_call_id}`): {}",
    if result.reason_codes.is_empty() { result.code.clone().unwrap_or_default() } else { result.reason_codes.join(", ") }
)]
pub struct SpendDenied {
    /// The tool call.
    pub tool_call_id: String,
    /// The operation denied.
    pub operation: String,
    /// The amount denied.
    pub amount_cents: u64,
    /// The gateway's full verify answer.
    pub result: VerifyResult,
}
