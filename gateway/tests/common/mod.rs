//! Helpers shared by the gateway's integration tests.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::sync::Arc;

pub mod activity;
pub mod browser;

use paybond_gateway::{ApiError, EmbeddedGateway, Engine, EngineConfig, Storage, TenantKeys};
use paybond_middleware_core::CapabilityToken;
use paybond_middleware_core::wire::{
    CompleteRequest, CompleteResponse, Environment, EvidenceRequest, EvidenceResponse, Principal,
    SandboxBootstrapRequest, VerifyRequest, VerifyResult,
};
use uuid::Uuid;

/// Runs `f` to its end on a thread and runtime of its own, whatever the caller
/// runs on (a test's thread, a blocking-pool thread, a runtime of either kind).
pub fn block_on<F>(f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f)
        })
        .join()
        .unwrap()
    })
}

/// The engine's async calls, awaited where a test runs without awaiting.
pub trait Blocking {
    fn verify_now(
        &self,
        principal: &Principal,
        req: &VerifyRequest,
    ) -> Result<VerifyResult, ApiError>;
    fn complete_now(
        &self,
        principal: &Principal,
        decision_id: Uuid,
        req: &CompleteRequest,
        idempotency_key: Option<&str>,
    ) -> Result<CompleteResponse, ApiError>;
    fn submit_evidence_now(
        &self,
        principal: &Principal,
        intent_id: Uuid,
        req: &EvidenceRequest,
        idempotency_key: Option<&str>,
    ) -> Result<EvidenceResponse, ApiError>;
}

impl Blocking for Arc<Engine> {
    fn verify_now(
        &self,
        principal: &Principal,
        req: &VerifyRequest,
    ) -> Result<VerifyResult, ApiError> {
        block_on(self.verify(principal.clone(), req.clone()))
    }

    fn complete_now(
        &self,
        principal: &Principal,
        decision_id: Uuid,
        req: &CompleteRequest,
        idempotency_key: Option<&str>,
    ) -> Result<CompleteResponse, ApiError> {
        block_on(self.complete(
            principal.clone(),
            decision_id,
            req.clone(),
            idempotency_key.map(str::to_owned),
        ))
    }

    fn submit_evidence_now(
        &self,
        principal: &Principal,
        intent_id: Uuid,
        req: &EvidenceRequest,
        idempotency_key: Option<&str>,
    ) -> Result<EvidenceResponse, ApiError> {
        block_on(self.submit_evidence(
            principal.clone(),
            intent_id,
            req.clone(),
            idempotency_key.map(str::to_owned),
        ))
    }
}

pub const BOOK: &str = "travel.book_hotel";
pub const SEARCH: &str = "travel.search_hotels";

pub struct Fixture {
    pub engine: Arc<Engine>,
    pub keys: TenantKeys,
    pub agent: Principal,
    pub operator: Principal,
    pub admin: Principal,
}

impl Fixture {
    pub fn new() -> Self {
        Self::with_config(EngineConfig::new(Storage::Memory))
    }

    pub fn with_config(config: EngineConfig) -> Self {
        let engine = Arc::new(Engine::open(config).unwrap());
        let keys = block_on(engine.create_tenant("sandbox", Environment::Sandbox)).unwrap();
        let agent = block_on(engine.authenticate(keys.agent.expose_secret())).unwrap();
        let operator = block_on(engine.authenticate(keys.operator.expose_secret())).unwrap();
        let admin = block_on(engine.authenticate(keys.tenant_admin.expose_secret())).unwrap();
        Self {
            engine,
            keys,
            agent,
            operator,
            admin,
        }
    }

    pub fn gateway(&self) -> EmbeddedGateway {
        EmbeddedGateway::new(self.engine.clone(), &self.keys.agent).unwrap()
    }

    /// A run builder on a sandbox intent of 60000 cents for the booking tool,
    /// funded through the embedded gateway as an agent would.
    pub async fn sandbox_run(&self) -> paybond_middleware_core::PaybondAgentRunBuilder {
        let gateway = Arc::new(self.gateway());
        let boot = gateway
            .bootstrap_sandbox(&SandboxBootstrapRequest {
                operation: BOOK.into(),
                requested_spend_cents: 60_000,
                ..Default::default()
            })
            .await
            .unwrap();
        paybond_middleware_core::PaybondAgentRun::builder(
            gateway,
            boot.intent_id,
            boot.capability_token,
        )
    }

    /// A funded sandbox intent for the booking tool with `budget` cents.
    pub fn intent(&self, budget: u64) -> (Uuid, CapabilityToken) {
        self.intent_for(&self.agent, BOOK, budget)
    }

    /// A funded sandbox intent of `agent` for `operation` with `budget` cents.
    pub fn intent_for(
        &self,
        agent: &Principal,
        operation: &str,
        budget: u64,
    ) -> (Uuid, CapabilityToken) {
        let r = block_on(self.engine.bootstrap_sandbox(
            agent,
            &SandboxBootstrapRequest {
                operation: operation.to_owned(),
                requested_spend_cents: budget,
                currency: Some("usd".to_owned()),
                evidence_schema: None,
                metadata: None,
                idempotency_key: None,
            },
        ))
        .unwrap();
        (r.intent_id, r.capability_token)
    }
}

/// A verify of `cents` for the booking tool on `intent`, every optional field unset.
pub fn verify_request(intent: Uuid, token: &CapabilityToken, cents: u64) -> VerifyRequest {
    VerifyRequest::new(intent, token.clone(), BOOK, cents)
}

/// Serves the fixture's engine on a free loopback port; the server stops with the test's runtime.
pub async fn serve(engine: Arc<Engine>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(paybond_gateway::server::serve(
        listener,
        engine,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

/// A raw HTTP request to the server: `(status, json body)`.
pub async fn call(
    base: &str,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, json)
}

/// A new, empty PostgreSQL database for one test, on the cluster that `.ci/test`
/// starts (`PAYBOND_TEST_DATABASE_URL`). `None` only when `PAYBOND_SKIP_POSTGRES=1`:
/// the test then says it was skipped.
pub fn pg_database() -> Option<paybond_gateway::DatabaseUrl> {
    let Ok(base) = std::env::var("PAYBOND_TEST_DATABASE_URL") else {
        if std::env::var("PAYBOND_SKIP_POSTGRES").as_deref() == Ok("1") {
            eprintln!("skipped: this test needs PostgreSQL and PAYBOND_SKIP_POSTGRES=1");
            return None;
        }
        panic!(
            "this test needs PostgreSQL: run the tests with `bash .ci/test` (it starts a \
             throwaway cluster), or set PAYBOND_TEST_DATABASE_URL, or skip it with \
             PAYBOND_SKIP_POSTGRES=1"
        );
    };
    let name = format!("t_{}", Uuid::new_v4().simple());
    let admin = base.clone();
    let create = format!("CREATE DATABASE {name}");
    // Its own thread and runtime: callers may be sync or async.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client.batch_execute(&create).await.unwrap();
        });
    })
    .join()
    .unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    Some(paybond_gateway::DatabaseUrl::parse(&format!("{prefix}/{name}")).unwrap())
}

/// An engine configuration on a new PostgreSQL database (see [`pg_database`]).
pub fn pg_config() -> Option<EngineConfig> {
    pg_database().map(|url| EngineConfig::new(Storage::Postgres(url)))
}

/// `text` percent-encoded for a URL's path segment, query value or form field:
/// everything but RFC 3986's unreserved characters.
pub fn percent_encode(text: &str) -> String {
    const ENCODED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, ENCODED).to_string()
}
