//! The Paybond gateway: the decision engine behind `PaybondAgentRun`.
//!
//! One [`Engine`], on SQLite or (for a fleet of replicas) PostgreSQL, decides every
//! paid tool call: capability token, operation, intent, policy, caps, rate limits,
//! schedule, gates, approval threshold, first failure wins. Use it in process through [`EmbeddedGateway`] (a
//! `SpendGateway`), or serve it over HTTP with [`server::serve`]
//! (`paybond dev loop --offline` does).
//!
//! The engine's calls are async. Verify, evidence and complete queue to the
//! store's writer and await their commit without holding a thread; the others run
//! their store work on tokio's blocking pool (in place on the in-memory store).
//! Opening an engine ([`Engine::open`]) waits for the store on the caller's thread.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use paybond_gateway::{EmbeddedGateway, Engine};
//! use paybond_middleware_core::SpendGateway;
//! use paybond_middleware_core::wire::{Environment, SandboxBootstrapRequest};
//!
//! let engine = Arc::new(Engine::in_memory()?); // the bundled scenario policies
//! let keys = engine
//!     .create_tenant("sandbox", Environment::Sandbox)
//!     .await?;
//! let gateway = EmbeddedGateway::new(engine.clone(), &keys.agent)?;
//! let intent = gateway
//!     .bootstrap_sandbox(&SandboxBootstrapRequest {
//!         operation: "travel.book_hotel".into(),
//!         requested_spend_cents: 60_000,
//!         currency: None,
//!         evidence_schema: None,
//!         metadata: None,
//!         idempotency_key: None,
//!     })
//!     .await?;
//! assert_eq!(gateway.principal().await?.tenant_id, keys.tenant_id);
//! assert!(intent.capability_token.expose_secret().len() > 100);
//! # Ok(())
//! # }
//! ```
pub mod audit;
mod connections;
mod console;
mod embedded;
mod engine;
mod error;
mod evidence;
mod histogram;
pub mod openapi;
mod scim;
pub mod server;
mod store;
#[cfg(feature = "otel")]
pub mod telemetry;
mod tokens;
pub use embedded::EmbeddedGateway;
pub use engine::audit::*;
pub use engine::identity::{
    CreatedScimToken, CreatedServiceAccount, OidcRequest, OidcSettings, RoleMapping, ScimToken,
    ScimTokenRequest, ServiceAccount, ServiceAccountRequest,
};
pub use engine::insights::*;
pub use engine::ledger::{
    GENESIS, LedgerCheck, LedgerEvent, LedgerTip, verify_events, verify_segment,
};
pub use engine::lifecycle::*;
pub use engine::operator::*;
pub use engine::replay::{ReplayChange, ReplayDay, ReplayOptions, ReplayReport, ReplayTally};
pub use engine::*;
pub use error::ApiError;
pub use store::{DatabaseUrl, Storage, StoreError, data_lock_path, database_path, root_key_path};

/// For the gateway's own benchmarks: not part of its API.
#[doc(hidden)]
pub mod bench {
    /// A spend state in memory holding `intents` open intents and `reservations`
    /// open reservations spread over them (each with its own agent sub-subject,
    /// vendor and tool buckets), kept alive until dropped.
    pub fn spend_state(intents: usize, reservations: usize) -> impl Drop {
        crate::engine::state::sample(intents, reservations)
    }
}
