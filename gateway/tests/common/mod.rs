//! Helpers shared by the gateway's integration tests.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::sync::Arc;

use paybond_gateway::{EmbeddedGateway, Engine, EngineConfig, Storage, TenantKeys};
use paybond_middleware_core::CapabilityToken;
use paybond_middleware_core::wire::{Environment, Principal, SandboxBootstrapRequest};
use uuid::Uuid;

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
        let keys = engine
            .create_tenant("sandbox", Environment::Sandbox)
            .unwrap();
        let agent = engine.authenticate(keys.agent.expose_secret()).unwrap();
        let operator = engine.authenticate(keys.operator.expose_secret()).unwrap();
        let admin = engine
            .authenticate(keys.tenant_admin.expose_secret())
            .unwrap();
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

    /// A funded sandbox intent for the booking tool with `budget` cents.
    pub fn intent(&self, budget: u64) -> (Uuid, CapabilityToken) {
        let r = self
            .engine
            .bootstrap_sandbox(
                &self.agent,
                &SandboxBootstrapRequest {
                    operation: BOOK.to_owned(),
                    requested_spend_cents: budget,
                    currency: Some("usd".to_owned()),
                    evidence_schema: None,
                    metadata: None,
                    idempotency_key: None,
                },
            )
            .unwrap();
        (r.intent_id, r.capability_token)
    }
}
