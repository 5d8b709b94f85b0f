//! `HttpGateway`: the `SpendGateway` over the HTTP contract, with retries and idempotency keys.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, field};
use uuid::Uuid;

use crate::gateway::{GatewayError, SpendGateway};
use crate::wire::{
    ApprovalStatus, CompensationRecorded, CompensationRequest, CompleteRequest, CompleteResponse,
    CreateIntentRequest, EffectivePolicy, Environment, ErrorBody, EvidenceRequest,
    EvidenceResponse, IntentView, OperatorIntentDetail, OperatorIntentList, PreflightRequest,
    PreflightResult, Principal, SandboxBootstrapRequest, SandboxBootstrapResponse, VerifyRequest,
    VerifyResult,
};
use crate::{ApiKey, new_idempotency_key};

/// How failed requests are retried.
///
/// 429, 500, 502, 503 and 504 answers and refused connections are retried with
/// capped exponential backoff and full jitter: before retry `n` (from 0) the client
/// sleeps a random time in `[0, min(max_backoff, base_backoff * 2^n)]`, or the
/// answer's `Retry-After` seconds when it sent one, capped at `max_retry_after`.
/// Other 4xx answers and timeouts are not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff before the first retry, before jitter.
    pub base_backoff: Duration,
    /// Upper bound of one backoff.
    pub max_backoff: Duration,
    /// Upper bound on an honoured `Retry-After`.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// No retries: one attempt per request.
    pub const fn none() -> Self {
        Self {
            max_retries: 0,
            base_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            max_retry_after: Duration::ZERO,
        }
    }

    fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .base_backoff
            .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=ceiling_ms))
    }
}

/// A [`SpendGateway`] that talks to a Paybond gateway over HTTP.
///
/// Every request carries `Authorization: Bearer <key>`; once the tenant is known
/// (from [`SpendGateway::principal`], looked up on first use) also `x-tenant-id`.
/// Mutations carry an `idempotency-key` that stays the same across the retries of
/// one call. Answers that name another tenant, intent or decision than the
/// request's are refused as [`GatewayError::EchoMismatch`] and never retried.
///
/// ```no_run
/// use paybond_middleware_core::{ApiKey, HttpGateway, SpendGateway};
///
/// # async fn run() -> Result<(), paybond_middleware_core::GatewayError> {
/// let gateway = HttpGateway::builder("http://127.0.0.1:8787", ApiKey::new("paybond_sk_sandbox_…"))
///     .build()?;
/// let principal = gateway.principal().await?;
/// println!("tenant {}", principal.tenant_id);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpGateway {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    base_url: String,
    api_key: ApiKey,
    tenant: OnceLock<String>,
    retry: RetryPolicy,
    timeout: Duration,
    expected_environment: Option<Environment>,
}

impl std::fmt::Debug for HttpGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGateway")
            .field("base_url", &self.inner.base_url)
            .field("api_key", &self.inner.api_key)
            .field("tenant", &self.inner.tenant.get())
            .field("retry", &self.inner.retry)
            .field("timeout", &self.inner.timeout)
            .field("expected_environment", &self.inner.expected_environment)
            .finish()
    }
}

/// Configures an [`HttpGateway`].
#[derive(Debug)]
pub struct HttpGatewayBuilder {
    base_url: String,
    api_key: ApiKey,
    tenant: Option<String>,
    retry: RetryPolicy,
    timeout: Duration,
    client: Option<reqwest::Client>,
    expected_environment: Option<Environment>,
}

impl HttpGatewayBuilder {
    /// Fail fast on a key of the other environment: the principal lookup (which
    /// binding a run does first) returns [`GatewayError::EnvironmentMismatch`] when
    /// the key is not for `environment`, so a live key never runs a sandbox agent
    /// and the reverse.
    #[must_use]
    pub fn expected_environment(mut self, environment: Environment) -> Self {
        self.expected_environment = Some(environment);
        self
    }

    /// Retry policy (default: [`RetryPolicy::default`]).
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Timeout of one request, connection to last byte (default 10 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A tenant already known from principal introspection; the principal lookup
    /// must then agree with it.
    #[must_use]
    pub fn tenant_id(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Use this `reqwest` client (connection pool, proxies) instead of a new one.
    #[must_use]
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Checks the configuration and builds the client. No request is sent.
    pub fn build(self) -> Result<HttpGateway, GatewayError> {
        let base_url = self.base_url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base_url)
            .map_err(|e| GatewayError::Config(format!("base URL `{base_url}`: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(GatewayError::Config(format!(
                "base URL `{base_url}` must be http:// or https://"
            )));
        }
        if HeaderValue::from_str(&format!("Bearer {}", self.api_key.expose_secret())).is_err() {
            return Err(GatewayError::Config(
                "the API key contains characters that cannot go in a header".to_owned(),
            ));
        }
        let client = match self.client {
            Some(client) => client,
            None => reqwest::Client::builder()
                .user_agent(concat!(
                    "paybond-middleware-core/",
                    env!("CARGO_PKG_VERSION")
                ))
                // Below the gateway's 10 s idle limit, so a pooled connection is not
                // reused just as the server closes it.
                .pool_idle_timeout(std::time::Duration::from_secs(5))
                .build()
                .map_err(|e| GatewayError::Config(format!("HTTP client: {e}")))?,
        };
        let tenant = OnceLock::new();
        if let Some(t) = self.tenant {
            let _ = tenant.set(t);
        }
        Ok(HttpGateway {
            inner: Arc::new(Inner {
                client,
                base_url,
                api_key: self.api_key,
                tenant,
                retry: self.retry,
                timeout: self.timeout,
                expected_environment: self.expected_environment,
            }),
        })
    }
}

/// One request: what it is for, where it goes, and what must be echoed back.
struct Call<'a, B> {
    operation: &'static str,
    method: Method,
    path: String,
    body: Option<&'a B>,
    idempotency_key: Option<&'a str>,
    with_tenant: bool,
    /// Secrets the request carries besides the API key, kept out of error text.
    extra_secrets: &'a [&'a str],
}

/// `path` with the given query parameters. The values are state names, numbers and
/// cursors (`ms.uuid`): nothing to escape but a stray `&`, `#` or space, dropped.
fn with_query<const N: usize>(path: &str, params: [(&str, Option<String>); N]) -> String {
    let query: Vec<String> = params
        .into_iter()
        .filter_map(|(name, value)| Some(format!("{name}={}", value?.replace(['&', '#', ' '], ""))))
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// `KEY=value` lines of an env file (`#` comments, `export `, quotes); none if it
/// cannot be read.
fn read_env_file(path: &std::path::Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (k, v) = line.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

impl HttpGateway {
    /// Starts configuring a client for the gateway at `base_url`.
    pub fn builder(base_url: impl Into<String>, api_key: ApiKey) -> HttpGatewayBuilder {
        HttpGatewayBuilder {
            base_url: base_url.into(),
            api_key,
            tenant: None,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(10),
            client: None,
            expected_environment: None,
        }
    }

    /// A client configured as `paybond dev loop` leaves things: `PAYBOND_GATEWAY_URL`
    /// and `PAYBOND_API_KEY` (the agent key) from the environment, else from
    /// `.env.local` in the current directory. `PAYBOND_TENANT_ID`, when set, is sent
    /// as `x-tenant-id`; `PAYBOND_EXPECTED_ENVIRONMENT` (`sandbox` or `live`) sets
    /// [`expected_environment`](HttpGatewayBuilder::expected_environment). A missing
    /// or invalid setting is a [`GatewayError::Config`] naming it and where it was
    /// looked for (never a value).
    pub fn from_env() -> Result<HttpGateway, GatewayError> {
        Self::from_env_file(std::path::Path::new(".env.local"))
    }

    /// Like [`from_env`](Self::from_env), with another env file.
    pub fn from_env_file(path: &std::path::Path) -> Result<HttpGateway, GatewayError> {
        let file = read_env_file(path);
        Self::from_lookup(
            |key| {
                std::env::var(key)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .or_else(|| file.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
            },
            path,
        )
    }

    fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        path: &std::path::Path,
    ) -> Result<HttpGateway, GatewayError> {
        let need = |key: &str| {
            lookup(key).ok_or_else(|| {
                GatewayError::Config(format!(
                    "{key} is not set, in the environment or {} (`paybond dev loop --offline` writes it)",
                    path.display()
                ))
            })
        };
        let url = need("PAYBOND_GATEWAY_URL")?;
        let key = need("PAYBOND_API_KEY")?;
        let mut builder = Self::builder(url, ApiKey::new(key));
        if let Some(tenant) = lookup("PAYBOND_TENANT_ID") {
            builder = builder.tenant_id(tenant);
        }
        if let Some(env) = lookup("PAYBOND_EXPECTED_ENVIRONMENT") {
            let environment = match env.trim().to_ascii_lowercase().as_str() {
                "sandbox" => Environment::Sandbox,
                "live" => Environment::Live,
                _ => {
                    return Err(GatewayError::Config(format!(
                        "PAYBOND_EXPECTED_ENVIRONMENT (in the environment or {}) must be `sandbox` or `live`",
                        path.display()
                    )));
                }
            };
            builder = builder.expected_environment(environment);
        }
        builder.build()
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// `POST /v1/sandbox/guardrails/bootstrap`: a funded sandbox intent and its capability token.
    pub async fn bootstrap_sandbox(
        &self,
        request: &SandboxBootstrapRequest,
    ) -> Result<SandboxBootstrapResponse, GatewayError> {
        let tenant = self.tenant().await?;
        let key = request
            .idempotency_key
            .clone()
            .unwrap_or_else(new_idempotency_key);
        let response: SandboxBootstrapResponse = self
            .send(Call {
                operation: "bootstrap",
                method: Method::POST,
                path: "/v1/sandbox/guardrails/bootstrap".to_owned(),
                body: Some(request),
                idempotency_key: Some(&key),
                with_tenant: true,
                extra_secrets: &[],
            })
            .await?;
        check_echo("bootstrap", "tenant", &tenant, &response.tenant_id)?;
        Ok(response)
    }

    /// `POST /harbor/intents`: a funded intent allowing `allowed_tools`, and its
    /// capability token (`capability_token` of the answer).
    ///
    /// ```no_run
    /// # async fn run(gateway: paybond_middleware_core::HttpGateway) -> Result<(), paybond_middleware_core::GatewayError> {
    /// use paybond_middleware_core::wire::CreateIntentRequest;
    /// let intent = gateway
    ///     .create_intent(&CreateIntentRequest {
    ///         allowed_tools: vec!["travel.book_hotel".into()],
    ///         budget_cents: 50_000,
    ///         ..Default::default()
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn create_intent(
        &self,
        request: &CreateIntentRequest,
    ) -> Result<IntentView, GatewayError> {
        let tenant = self.tenant().await?;
        let key = request
            .idempotency_key
            .clone()
            .unwrap_or_else(new_idempotency_key);
        let response: IntentView = self
            .send(Call {
                operation: "create_intent",
                method: Method::POST,
                path: "/harbor/intents".to_owned(),
                body: Some(request),
                idempotency_key: Some(&key),
                with_tenant: true,
                extra_secrets: &[],
            })
            .await?;
        check_echo("create_intent", "tenant", &tenant, &response.tenant)?;
        Ok(response)
    }

    /// `POST /v1/spend/preflight`: what verify would decide for a call now, and every
    /// check behind it; nothing is reserved or recorded. Operation `*`: the intent's
    /// budget only.
    pub async fn preflight(
        &self,
        request: &PreflightRequest,
    ) -> Result<PreflightResult, GatewayError> {
        let secret = request
            .approval_token
            .as_ref()
            .map_or("", |t| t.expose_secret());
        self.send(Call {
            operation: "preflight",
            method: Method::POST,
            path: "/v1/spend/preflight".to_owned(),
            body: Some(request),
            idempotency_key: None,
            with_tenant: true,
            extra_secrets: &[secret],
        })
        .await
    }

    /// `GET /harbor/operator/v1/intents`: the tenant's intents, newest first.
    /// `state` filters (`funded`, `released`, ...); `cursor` is a previous page's
    /// `next_cursor`.
    pub async fn list_intents(
        &self,
        state: Option<&str>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<OperatorIntentList, GatewayError> {
        let path = with_query(
            "/harbor/operator/v1/intents",
            [
                ("state", state.map(str::to_owned)),
                ("limit", limit.map(|l| l.to_string())),
                ("cursor", cursor.map(str::to_owned)),
            ],
        );
        self.send(Call::<()> {
            operation: "list_intents",
            method: Method::GET,
            path,
            body: None,
            idempotency_key: None,
            with_tenant: true,
            extra_secrets: &[],
        })
        .await
    }

    /// `GET /v1/compliance/audit-exports`: the tenant's audit export jobs, newest
    /// first, as the gateway answers them (`{tenant_realm_id, jobs, next_cursor}`).
    pub async fn list_audit_exports(
        &self,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<serde_json::Value, GatewayError> {
        let path = with_query(
            "/v1/compliance/audit-exports",
            [
                ("limit", limit.map(|l| l.to_string())),
                ("cursor", cursor.map(str::to_owned)),
            ],
        );
        self.send(Call::<()> {
            operation: "list_audit_exports",
            method: Method::GET,
            path,
            body: None,
            idempotency_key: None,
            with_tenant: true,
            extra_secrets: &[],
        })
        .await
    }

    /// `GET /v1/compliance/audit-exports/{id}`: one audit export job (`{job}`:
    /// status, progress, digests; no download token).
    pub async fn audit_export(&self, job_id: Uuid) -> Result<serde_json::Value, GatewayError> {
        self.send(Call::<()> {
            operation: "get_audit_export",
            method: Method::GET,
            path: format!("/v1/compliance/audit-exports/{job_id}"),
            body: None,
            idempotency_key: None,
            with_tenant: true,
            extra_secrets: &[],
        })
        .await
    }

    /// `GET /harbor/operator/v1/intents/{id}`: one intent with its reservations,
    /// decisions and evidence.
    pub async fn intent_history(
        &self,
        intent_id: Uuid,
    ) -> Result<OperatorIntentDetail, GatewayError> {
        let detail: OperatorIntentDetail = self
            .send(Call::<()> {
                operation: "intent_history",
                method: Method::GET,
                path: format!("/harbor/operator/v1/intents/{intent_id}"),
                body: None,
                idempotency_key: None,
                with_tenant: true,
                extra_secrets: &[],
            })
            .await?;
        check_echo(
            "intent_history",
            "intent_id",
            &intent_id.to_string(),
            &detail.intent.intent_id.to_string(),
        )?;
        Ok(detail)
    }

    async fn tenant(&self) -> Result<String, GatewayError> {
        if let Some(tenant) = self.inner.tenant.get() {
            return Ok(tenant.clone());
        }
        Ok(self.principal().await?.tenant_id)
    }

    async fn send<B: Serialize, R: DeserializeOwned>(
        &self,
        call: Call<'_, B>,
    ) -> Result<R, GatewayError> {
        // An OpenTelemetry HTTP client span; its context goes out as `traceparent`.
        let span = tracing::info_span!(
            "paybond.gateway_request",
            "otel.name" = %format_args!("{} {}", call.method, call.operation),
            "otel.kind" = "client",
            "http.request.method" = %call.method,
            "url.path" = %call.path,
            "http.response.status_code" = field::Empty,
            "paybond.operation" = call.operation,
            "paybond.attempt" = field::Empty,
        );
        self.send_inner(call).instrument(span).await
    }

    async fn send_inner<B: Serialize, R: DeserializeOwned>(
        &self,
        call: Call<'_, B>,
    ) -> Result<R, GatewayError> {
        let inner = &*self.inner;
        let operation = call.operation;
        let mut secrets = vec![inner.api_key.expose_secret()];
        secrets.extend_from_slice(call.extra_secrets);
        // Serialized once, so every retry sends the same bytes under the same key.
        let body = match call.body {
            Some(body) => Some(serde_json::to_vec(body).map_err(|e| {
                GatewayError::Config(format!("{operation} request does not serialize: {e}"))
            })?),
            None => None,
        };
        #[cfg_attr(not(feature = "otel"), allow(unused_mut))]
        let mut headers = self.headers(&call)?;
        let url = format!("{}{}", inner.base_url, call.path);
        let span = tracing::Span::current();
        #[cfg(feature = "otel")]
        crate::telemetry::inject(&span, &mut headers);

        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            span.record("paybond.attempt", attempt);
            let mut builder = inner
                .client
                .request(call.method.clone(), &url)
                .headers(headers.clone())
                .timeout(inner.timeout);
            if let Some(body) = &body {
                builder = builder
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let retries_left = attempt <= inner.retry.max_retries;
            let response = match builder.send().await {
                Ok(response) => response,
                Err(e) if e.is_timeout() => {
                    return Err(GatewayError::Timeout {
                        operation,
                        timeout: inner.timeout,
                    });
                }
                Err(e) => {
                    let detail = redact(&transport_detail(&e), &secrets);
                    // A refused connection never reached the gateway; anything else may
                    // have, and is retried only because the idempotency key makes it safe.
                    if retries_left {
                        let delay = inner.retry.backoff(attempt - 1);
                        tracing::warn!(attempt, ?delay, error = %detail, "gateway unreachable, retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Err(if attempt > 1 {
                        GatewayError::RetriesExhausted {
                            operation,
                            attempts: attempt,
                            last: detail,
                        }
                    } else {
                        GatewayError::Transport { operation, detail }
                    });
                }
            };
            let status = response.status();
            span.record("http.response.status_code", status.as_u16());
            if status.is_success() {
                let bytes = response.bytes().await.map_err(|e| {
                    if e.is_timeout() {
                        GatewayError::Timeout {
                            operation,
                            timeout: inner.timeout,
                        }
                    } else {
                        GatewayError::Transport {
                            operation,
                            detail: redact(&transport_detail(&e), &secrets),
                        }
                    }
                })?;
                return serde_json::from_slice(&bytes).map_err(|e| GatewayError::Malformed {
                    operation,
                    detail: redact(&e.to_string(), &secrets),
                });
            }
            let retry_after = retry_after(response.headers());
            let envelope = response
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<ErrorBody>(&b).ok());
            let code = envelope
                .as_ref()
                .map_or_else(|| format!("http_{}", status.as_u16()), |e| e.error.clone());
            if is_retryable(status) {
                if retries_left {
                    let delay = match retry_after {
                        Some(after) => after.min(inner.retry.max_retry_after),
                        None => inner.retry.backoff(attempt - 1),
                    };
                    tracing::warn!(attempt, status = status.as_u16(), %code, ?delay, "gateway busy, retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
                return Err(GatewayError::RetriesExhausted {
                    operation,
                    attempts: attempt,
                    last: format!("HTTP {} `{}`", status.as_u16(), redact(&code, &secrets)),
                });
            }
            let (message, request_id) = envelope.map_or_else(
                || (String::new(), None),
                |e| (e.message, Some(e.request_id).filter(|id| !id.is_empty())),
            );
            return Err(GatewayError::Rejected {
                operation,
                status: status.as_u16(),
                code: redact(&code, &secrets),
                message: redact(&message, &secrets),
                request_id,
            });
        }
    }

    fn headers<B>(&self, call: &Call<'_, B>) -> Result<HeaderMap, GatewayError> {
        let inner = &*self.inner;
        let mut headers = HeaderMap::new();
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", inner.api_key.expose_secret()))
            .map_err(|_| GatewayError::Config("the API key is not a valid header value".into()))?;
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        if call.with_tenant
            && let Some(tenant) = inner.tenant.get()
        {
            let value = HeaderValue::from_str(tenant).map_err(|_| GatewayError::Malformed {
                operation: "principal",
                detail: "tenant_id is not a valid header value".into(),
            })?;
            headers.insert("x-tenant-id", value);
        }
        if let Some(key) = call.idempotency_key {
            let value = HeaderValue::from_str(key).map_err(|_| {
                GatewayError::Config(format!(
                    "idempotency key `{key}` is not a valid header value"
                ))
            })?;
            headers.insert("idempotency-key", value);
        }
        Ok(headers)
    }
}

#[async_trait]
impl SpendGateway for HttpGateway {
    async fn principal(&self) -> Result<Principal, GatewayError> {
        let principal: Principal = self
            .send(Call::<()> {
                operation: "principal",
                method: Method::GET,
                path: "/v1/auth/principal".to_owned(),
                body: None,
                idempotency_key: None,
                with_tenant: false,
                extra_secrets: &[],
            })
            .await?;
        if principal.tenant_id.is_empty() {
            return Err(GatewayError::Malformed {
                operation: "principal",
                detail: "empty tenant_id".into(),
            });
        }
        let known = self
            .inner
            .tenant
            .get_or_init(|| principal.tenant_id.clone());
        check_echo("principal", "tenant", known, &principal.tenant_id)?;
        if let Some(expected) = self.inner.expected_environment
            && expected != principal.environment
        {
            return Err(GatewayError::EnvironmentMismatch {
                expected,
                actual: principal.environment,
            });
        }
        Ok(principal)
    }

    async fn effective_policy(&self) -> Result<Option<EffectivePolicy>, GatewayError> {
        let tenant = self.tenant().await?;
        let result: Result<EffectivePolicy, GatewayError> = self
            .send(Call::<()> {
                operation: "effective_policy",
                method: Method::GET,
                path: "/v1/policy/effective".to_owned(),
                body: None,
                idempotency_key: None,
                with_tenant: true,
                extra_secrets: &[],
            })
            .await;
        match result {
            Ok(policy) => {
                check_echo("effective_policy", "tenant", &tenant, &policy.tenant_id)?;
                Ok(Some(policy))
            }
            // No policy published, or a gateway without the route.
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn verify(&self, request: &VerifyRequest) -> Result<VerifyResult, GatewayError> {
        let tenant = self.tenant().await?;
        let keyed;
        let request = if request.idempotency_key.is_some() {
            request
        } else {
            keyed = VerifyRequest {
                idempotency_key: Some(new_idempotency_key()),
                ..request.clone()
            };
            &keyed
        };
        let approval = request
            .approval_token
            .as_ref()
            .map_or("", |t| t.expose_secret());
        let result: VerifyResult = self
            .send(Call {
                operation: "verify",
                method: Method::POST,
                path: "/verify".to_owned(),
                body: Some(request),
                idempotency_key: request.idempotency_key.as_deref(),
                with_tenant: true,
                extra_secrets: &[request.token.expose_secret(), approval],
            })
            .await?;
        check_echo("verify", "tenant", &tenant, &result.tenant)?;
        check_echo(
            "verify",
            "intent_id",
            &request.intent_id.to_string(),
            &result.intent_id.to_string(),
        )?;
        Ok(result)
    }

    async fn complete_decision(
        &self,
        decision_id: Uuid,
        request: &CompleteRequest,
        idempotency_key: &str,
    ) -> Result<CompleteResponse, GatewayError> {
        self.tenant().await?;
        let response: CompleteResponse = self
            .send(Call {
                operation: "complete",
                method: Method::POST,
                path: format!("/v1/spend/decisions/{decision_id}/complete"),
                body: Some(request),
                idempotency_key: Some(idempotency_key),
                with_tenant: true,
                extra_secrets: &[],
            })
            .await?;
        if let Some(echoed) = response.decision_id {
            check_echo(
                "complete",
                "decision_id",
                &decision_id.to_string(),
                &echoed.to_string(),
            )?;
        }
        Ok(response)
    }

    async fn submit_evidence(
        &self,
        intent_id: Uuid,
        request: &EvidenceRequest,
        idempotency_key: &str,
    ) -> Result<EvidenceResponse, GatewayError> {
        let tenant = self.tenant().await?;
        let response: EvidenceResponse = self
            .send(Call {
                operation: "evidence",
                method: Method::POST,
                path: format!("/v1/sandbox/guardrails/{intent_id}/evidence"),
                body: Some(request),
                idempotency_key: Some(idempotency_key),
                with_tenant: true,
                extra_secrets: &[],
            })
            .await?;
        check_echo("evidence", "tenant", &tenant, &response.tenant_id)?;
        check_echo(
            "evidence",
            "intent_id",
            &intent_id.to_string(),
            &response.intent_id.to_string(),
        )?;
        Ok(response)
    }

    async fn record_compensation(
        &self,
        decision_id: Uuid,
        request: &CompensationRequest,
    ) -> Result<CompensationRecorded, GatewayError> {
        self.tenant().await?;
        // One key for the call: the client's retries of it record it once.
        let key = Uuid::new_v4().to_string();
        let recorded: CompensationRecorded = self
            .send(Call {
                operation: "record_compensation",
                method: Method::POST,
                path: format!("/v1/spend/decisions/{decision_id}/compensation"),
                body: Some(request),
                idempotency_key: Some(&key),
                with_tenant: true,
                extra_secrets: &[],
            })
            .await?;
        check_echo(
            "record_compensation",
            "decision_id",
            &decision_id.to_string(),
            &recorded.decision_id.to_string(),
        )?;
        Ok(recorded)
    }

    async fn approval_status(
        &self,
        approval_request_id: Uuid,
    ) -> Result<ApprovalStatus, GatewayError> {
        self.tenant().await?;
        let status: ApprovalStatus = self
            .send(Call::<()> {
                operation: "approval_status",
                method: Method::GET,
                path: format!("/v1/approvals/{approval_request_id}"),
                body: None,
                idempotency_key: None,
                with_tenant: true,
                extra_secrets: &[],
            })
            .await?;
        check_echo(
            "approval_status",
            "approval_request_id",
            &approval_request_id.to_string(),
            &status.approval_request_id.to_string(),
        )?;
        Ok(status)
    }
}

fn check_echo(
    operation: &'static str,
    field: &'static str,
    expected: &str,
    actual: &str,
) -> Result<(), GatewayError> {
    if expected == actual {
        Ok(())
    } else {
        Err(GatewayError::EchoMismatch {
            operation,
            field,
            expected: expected.to_owned(),
            actual: actual.to_owned(),
        })
    }
}

fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// `Retry-After` in delta-seconds; an HTTP date or garbage falls back to backoff.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The error and its chain of causes ("connection refused" is usually a few levels down).
fn transport_detail(error: &reqwest::Error) -> String {
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    detail
}

/// Replaces every occurrence of each secret in `text` with `[redacted]`.
///
/// Used on text that comes back from a gateway (error messages) before it is kept
/// in an error value: a misbehaving server that echoes a request must not leak it.
pub(crate) fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if out.contains(secret) {
            out = out.replace(secret, "[redacted]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_replaces_each_secret() {
        assert_eq!(
            redact("bad token abc for key k-1 (abc)", &["abc", "k-1", ""]),
            "bad token [redacted] for key [redacted] ([redacted])"
        );
    }

    use super::*;

    #[test]
    fn new_keys_sort_in_the_order_they_were_made_and_never_repeat() {
        let keys: Vec<String> = (0..1_000).map(|_| new_idempotency_key()).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        let parsed = Uuid::parse_str(&keys[0]).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
    }

    #[test]
    fn from_an_env_file_with_every_setting_named_when_missing() {
        let dir = std::env::temp_dir().join(format!("paybond-env-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".env.local");
        std::fs::write(
            &path,
            "# written by paybond dev loop\nPAYBOND_GATEWAY_URL=http://127.0.0.1:8787/\nexport PAYBOND_API_KEY=\"paybond_sk_sandbox_k\"\nPAYBOND_TENANT_ID='tnt_1'\n",
        )
        .unwrap();
        let file = read_env_file(&path);
        let lookup = |key: &str| file.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let gateway = HttpGateway::from_lookup(lookup, &path).unwrap();
        assert_eq!(gateway.base_url(), "http://127.0.0.1:8787");
        assert_eq!(lookup("PAYBOND_TENANT_ID").as_deref(), Some("tnt_1"));

        std::fs::write(&path, "PAYBOND_GATEWAY_URL=http://127.0.0.1:8787\n").unwrap();
        let file = read_env_file(&path);
        let Err(err) = HttpGateway::from_lookup(
            |key: &str| file.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()),
            &path,
        ) else {
            panic!("a missing key was accepted");
        };
        let text = err.to_string();
        assert!(
            text.contains("PAYBOND_API_KEY") && text.contains(".env.local"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let policy = RetryPolicy {
            max_retries: 10,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
            max_retry_after: Duration::from_secs(1),
        };
        for retry in 0..40 {
            let ceiling = Duration::from_millis(100 * (1 << retry.min(10))).min(policy.max_backoff);
            for _ in 0..50 {
                assert!(policy.backoff(retry) <= ceiling);
            }
        }
        // Full jitter: the delays are spread, not fixed at the ceiling.
        let distinct: std::collections::BTreeSet<_> = (0..200).map(|_| policy.backoff(5)).collect();
        assert!(distinct.len() > 10, "{distinct:?}");
        assert_eq!(RetryPolicy::none().backoff(3), Duration::ZERO);
    }

    #[test]
    fn retry_after_reads_seconds_only() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn builder_refuses_bad_urls_and_debug_hides_the_key() {
        let err = HttpGateway::builder("not a url", ApiKey::new("k"))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("not a url"), "{err}");
        let err = HttpGateway::builder("ftp://x", ApiKey::new("k"))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("http"), "{err}");
        let gw = HttpGateway::builder(
            "http://127.0.0.1:1/",
            ApiKey::new("paybond_sk_sandbox_s3cret"),
        )
        .build()
        .unwrap();
        assert_eq!(gw.base_url(), "http://127.0.0.1:1");
        assert!(!format!("{gw:?}").contains("s3cret"));
    }
}
