//! The `SpendGateway` trait the layer decides through, and its error.

use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::wire::{
    ApprovalStatus, CompensationRecorded, CompensationRequest, CompleteRequest, CompleteResponse,
    EffectivePolicy, Environment, EvidenceRequest, EvidenceResponse, Principal, VerifyRequest,
    VerifyResult,
};

/// What the agent-run layer needs from a gateway.
///
/// Implemented by [`HttpGateway`](crate::HttpGateway) (the hosted or a local gateway
/// over HTTP) and by the embedded gateway engine, so a run holds an
/// `Arc<dyn SpendGateway>` and does not care which one it talks to.
///
/// A business denial or hold is an `Ok(VerifyResult)` with `allow: false`; an `Err`
/// means the gateway could not decide, and the caller must fail closed.
#[async_trait]
pub trait SpendGateway: Send + Sync {
    /// Who the credential is: tenant, environment, role.
    async fn principal(&self) -> Result<Principal, GatewayError>;

    /// Decide one call. `request.idempotency_key` makes retries safe.
    async fn verify(&self, request: &VerifyRequest) -> Result<VerifyResult, GatewayError>;

    /// Finalize an allowed decision's reservation as consumed or released.
    async fn complete_decision(
        &self,
        decision_id: Uuid,
        request: &CompleteRequest,
        idempotency_key: &str,
    ) -> Result<CompleteResponse, GatewayError>;

    /// Submit evidence of what an allowed call did.
    async fn submit_evidence(
        &self,
        intent_id: Uuid,
        request: &EvidenceRequest,
        idempotency_key: &str,
    ) -> Result<EvidenceResponse, GatewayError>;

    /// Where an approval request stands; carries the approval token once approved.
    async fn approval_status(
        &self,
        approval_request_id: Uuid,
    ) -> Result<ApprovalStatus, GatewayError>;

    /// The tenant's effective policy (`GET /v1/policy/effective`), which a run takes
    /// its tools' entries from; `None` when the tenant has none or the gateway does
    /// not serve it (the run then uses the entries it was given).
    async fn effective_policy(&self) -> Result<Option<EffectivePolicy>, GatewayError> {
        Ok(None)
    }

    /// Records a paid step's compensation in the ledger, linked to its decision
    /// (`POST /v1/spend/decisions/{id}/compensation`). A gateway without the route
    /// answers [`GatewayError::Config`].
    async fn record_compensation(
        &self,
        decision_id: Uuid,
        request: &CompensationRequest,
    ) -> Result<CompensationRecorded, GatewayError> {
        let _ = (decision_id, request);
        Err(GatewayError::Config(
            "this gateway does not record compensations".to_owned(),
        ))
    }
}

/// Why a gateway request failed. Every variant means "no decision": fail closed.
///
/// Messages never contain a credential or token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The request did not reach the gateway or the connection broke.
    #[error("could not reach the gateway for {operation}: {detail}")]
    Transport {
        /// Which gateway call.
        operation: &'static str,
        /// What went wrong on the connection.
        detail: String,
    },
    /// No answer within the request timeout.
    #[error("the gateway did not answer {operation} within {timeout:?}")]
    Timeout {
        /// Which gateway call.
        operation: &'static str,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// The gateway refused the request with a non-retryable status.
    #[error("the gateway refused {operation} with HTTP {status} `{code}`: {message}")]
    Rejected {
        /// Which gateway call.
        operation: &'static str,
        /// HTTP status.
        status: u16,
        /// The envelope's machine-readable code (`http_<status>` when there was none).
        code: String,
        /// The envelope's message.
        message: String,
        /// The gateway's correlation id, when it sent one.
        request_id: Option<String>,
    },
    /// Retryable failures (429/5xx, connection refused) until the retry budget ran out.
    #[error("the gateway kept failing {operation}: {attempts} attempts, last {last}")]
    RetriesExhausted {
        /// Which gateway call.
        operation: &'static str,
        /// How many requests were sent.
        attempts: u32,
        /// The last failure (`HTTP 503 \`unavailable\``, or the transport error).
        last: String,
    },
    /// A 2xx answer that is not the JSON the contract promises.
    #[error("the gateway's answer to {operation} is malformed: {detail}")]
    Malformed {
        /// Which gateway call.
        operation: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// The gateway echoed another tenant, intent or decision than the request's: a
    /// tenant-isolation failure, never retried.
    #[error(
        "the gateway's answer to {operation} names {field} `{actual}` but the request was for \
         `{expected}`; treating it as a tenant-isolation failure"
    )]
    EchoMismatch {
        /// Which gateway call.
        operation: &'static str,
        /// `tenant`, `intent_id` or `decision_id`.
        field: &'static str,
        /// What the request was for.
        expected: String,
        /// What came back.
        actual: String,
    },
    /// The client is configured wrongly (bad base URL, an unusable API key).
    #[error("gateway client configuration: {0}")]
    Config(String),
    /// The API key belongs to another environment than the client expects (a live
    /// key where sandbox was expected, or the reverse): nothing was decided.
    #[error(
        "the API key is for the {actual:?} environment but this client expects {expected:?}; \
         use a {expected:?} key or change the expected environment"
    )]
    EnvironmentMismatch {
        /// What the client was configured for.
        expected: Environment,
        /// What the gateway says the key is for.
        actual: Environment,
    },
}

/// The kind of a [`GatewayError`], for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GatewayErrorKind {
    /// See [`GatewayError::Transport`].
    Transport,
    /// See [`GatewayError::Timeout`].
    Timeout,
    /// See [`GatewayError::Rejected`].
    Rejected,
    /// See [`GatewayError::RetriesExhausted`].
    RetriesExhausted,
    /// See [`GatewayError::Malformed`].
    Malformed,
    /// See [`GatewayError::EchoMismatch`].
    EchoMismatch,
    /// See [`GatewayError::Config`].
    Config,
    /// See [`GatewayError::EnvironmentMismatch`].
    EnvironmentMismatch,
}

impl GatewayError {
    /// Which kind of failure this is.
    pub fn kind(&self) -> GatewayErrorKind {
        match self {
            Self::Transport { .. } => GatewayErrorKind::Transport,
            Self::Timeout { .. } => GatewayErrorKind::Timeout,
            Self::Rejected { .. } => GatewayErrorKind::Rejected,
            Self::RetriesExhausted { .. } => GatewayErrorKind::RetriesExhausted,
            Self::Malformed { .. } => GatewayErrorKind::Malformed,
            Self::EchoMismatch { .. } => GatewayErrorKind::EchoMismatch,
            Self::Config(_) => GatewayErrorKind::Config,
            Self::EnvironmentMismatch { .. } => GatewayErrorKind::EnvironmentMismatch,
        }
    }

    /// The HTTP status, for [`GatewayError::Rejected`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The envelope's error code, for [`GatewayError::Rejected`].
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }
}
