//! Errors the engine answers with: each has an HTTP status and a machine-readable code.

use std::fmt;

/// A refused request (4xx) or a failure of the gateway itself (5xx), with the code
/// and message of the error envelope (`{"error", "message", "request_id"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code, e.g. `idempotency_key_reused`.
    pub code: &'static str,
    /// What was wrong. Never contains a secret.
    pub message: String,
    /// Seconds to wait before retrying (429 only).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// 401: no valid API key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "unauthorized", message)
    }

    /// 403: the key may not do this.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(403, code, message)
    }

    /// 404: no such thing for this tenant.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(404, code, message)
    }

    /// 409: conflicts with the current state.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(409, code, message)
    }

    /// 422: well-formed but not acceptable.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(422, code, message)
    }

    /// 500: the gateway cannot start on its files (a key file that is not a key, a
    /// directory it cannot secure): said in full, for the operator starting it.
    /// Never built from a request, and the messages name paths, never contents.
    pub fn unusable(message: impl Into<String>) -> Self {
        Self::new(500, "gateway_unusable", message)
    }

    /// 503 `store_unavailable`: the database cannot be reached (a connection
    /// refused, closed or cut off). Nothing was decided or changed, so the caller
    /// fails closed and may retry; the details go to the log.
    pub fn store_unavailable(detail: impl fmt::Display) -> Self {
        tracing::warn!(%detail, "the database cannot be reached");
        Self {
            retry_after: Some(1),
            ..Self::new(
                503,
                "store_unavailable",
                "the gateway's database cannot be reached: nothing was decided or changed; \
                 retry shortly",
            )
        }
    }

    /// 500: the gateway failed; the message is generic, details go to the log.
    pub fn internal(detail: impl fmt::Display) -> Self {
        tracing::error!(%detail, "gateway internal error");
        Self::new(500, "internal", "the gateway failed to process the request")
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        crate::store::StoreError::from_sqlite(&e).into()
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        Self::internal(format_args!("stored JSON: {e}"))
    }
}
