//! The Paybond gateway: the decision engine behind `PaybondAgentRun`.
#![allow(missing_docs)]
mod decide;
mod embedded;
mod engine;
mod error;
mod evidence;
mod ledger;
mod lifecycle;
pub mod openapi;
pub mod server;
mod store;
mod tokens;
pub use embedded::EmbeddedGateway;
pub use engine::*;
pub use error::ApiError;
pub use ledger::{GENESIS, LedgerCheck, LedgerEvent, LedgerTip, verify_events};
pub use lifecycle::*;
pub use store::{Storage, database_path};
