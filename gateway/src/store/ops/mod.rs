//! The engine's typed operations on a transaction: each read and write it makes,
//! one method of `dyn Tx` taking and returning plain values, failing with a
//! [`StoreError`](super::StoreError) (which the server answers by one table, see
//! `From<StoreError> for ApiError`). Their SQL (one portable dialect for SQLite
//! and PostgreSQL, see [`super::schema`]) lives here, next to the tables it names.
//!
//! Writes that only need to succeed (a decision's row, a reservation, a ledger
//! entry, counter updates) are held back and sent with the transaction's next
//! statement or its commit, merged by kind ([`super::held`]): a group of
//! decisions writes each kind of row in one multi-row statement.

pub(in crate::store) mod approvals;
pub(in crate::store) mod audit;
pub(in crate::store) mod identity;
pub(in crate::store) mod insights;
pub(in crate::store) mod intents;
pub(in crate::store) mod ledger;
pub(in crate::store) mod reads;
pub(in crate::store) mod scim;
pub(in crate::store) mod spend;
pub(in crate::store) mod tenants;

pub(crate) use approvals::{ApprovalRow, approval_state};
pub(crate) use audit::{BuiltBundle, JobRow, NewJob};
pub(crate) use identity::{NewSession, ScimTokenRow};
pub(crate) use insights::SearchColumns;
pub(crate) use intents::{
    Finalized, IntentTerms, NewEvidence, NewIntent, ReservationRow, ToComplete,
};
pub(crate) use ledger::{NewEntry, StoredEntry};
pub(crate) use reads::IntentSummaryRow;
pub(crate) use scim::{ScimGroup, ScimUser};
pub(crate) use spend::{IntentRow, NewApproval, NewDecision, NewReservation};
pub(crate) use tenants::{NewTenantPolicy, PolicyRow};
