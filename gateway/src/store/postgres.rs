//! PostgreSQL: a store shared by the replicas of a fleet.

use crate::error::ApiError;
use crate::store::{DatabaseUrl, Tx};

/// The PostgreSQL store.
pub(crate) struct PgStore;

impl PgStore {
    pub(crate) fn open(_url: &DatabaseUrl) -> Result<Self, ApiError> {
        Err(ApiError::internal("PostgreSQL is not available yet"))
    }

    pub(crate) fn write<T>(
        &self,
        _f: impl FnOnce(&dyn Tx) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        Err(ApiError::internal("PostgreSQL is not available yet"))
    }
}
