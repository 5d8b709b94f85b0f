//! Why the store failed: a typed error, classified once from what SQLite or
//! PostgreSQL said, and answered over HTTP by one table ([`From<StoreError> for
//! ApiError`](ApiError)).
//!
//! Every storage failure fails closed: nothing of the operation is kept, and the
//! layer in front of a tool turns any 5xx into "do not run it". The variants say
//! what the caller and the operator can do about it; the database's own words go
//! to the log, never into an answer.

use std::fmt;

use crate::error::ApiError;

/// A failure of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The database cannot be reached: a connection refused, closed or cut off,
    /// the server shutting down, an I/O error. Retry shortly.
    Unavailable(String),
    /// The database waited too long for a lock, or gave up a transaction that
    /// conflicted with another (a deadlock, a serialization failure). Retry.
    Busy(String),
    /// The database or its disk is full. An operator must make room.
    Full(String),
    /// The database refused to write: a read-only file or file system, or a
    /// PostgreSQL server in recovery (a standby). An operator must fix it.
    ReadOnly(String),
    /// The database file is damaged, or is not a database.
    Corrupt(String),
    /// A newer gateway raised the database's serving floor past this build
    /// (its schema floor): this replica must be upgraded.
    Outdated {
        /// The oldest schema version that may write to the database now.
        floor: i64,
    },
    /// A commit could not be made durable (its fsync failed): the store refuses
    /// writes until the gateway restarts.
    NotDurable(String),
    /// Anything else: a statement the database refused, a value of a type the
    /// engine does not read, a store that stopped.
    Failed(String),
}

impl StoreError {
    /// The database's own words, for the log.
    pub fn detail(&self) -> String {
        match self {
            Self::Unavailable(d)
            | Self::Busy(d)
            | Self::Full(d)
            | Self::ReadOnly(d)
            | Self::Corrupt(d)
            | Self::NotDurable(d)
            | Self::Failed(d) => d.clone(),
            Self::Outdated { floor } => format!("the serving floor is schema version {floor}"),
        }
    }

    /// A SQLite error, classified by its primary result code.
    pub(crate) fn from_sqlite(e: &rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        let detail = format!("storage: {e}");
        match e.sqlite_error_code() {
            Some(C::DatabaseBusy | C::DatabaseLocked) => Self::Busy(detail),
            Some(C::DiskFull) => Self::Full(detail),
            Some(C::ReadOnly) => Self::ReadOnly(detail),
            Some(C::DatabaseCorrupt | C::NotADatabase) => Self::Corrupt(detail),
            Some(C::SystemIoFailure | C::CannotOpen) => Self::Unavailable(detail),
            _ => Self::Failed(detail),
        }
    }

    /// A PostgreSQL error with SQLSTATE `code` (none: the connection itself
    /// failed), classified by its class.
    pub(crate) fn from_sqlstate(code: Option<&str>, detail: String) -> Self {
        let Some(code) = code else {
            return Self::Unavailable(detail);
        };
        match code {
            // Connection exceptions; the server shutting down; too many connections.
            c if c.starts_with("08") => Self::Unavailable(detail),
            "57P01" | "57P02" | "57P03" | "53300" => Self::Unavailable(detail),
            // Serialization failure, deadlock, lock not available, statement timeout.
            "40001" | "40P01" | "55P03" | "57014" => Self::Busy(detail),
            // Disk full; out of memory.
            "53100" | "53200" => Self::Full(detail),
            // A read-only transaction (a standby in recovery).
            "25006" => Self::ReadOnly(detail),
            // Data corrupted; index corrupted.
            "XX001" | "XX002" => Self::Corrupt(detail),
            _ => Self::Failed(detail),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail())
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::from_sqlite(&e)
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        Self::Failed(format!("stored JSON: {e}"))
    }
}

/// The answer to a storage failure: its status and code, a message that says
/// nothing was decided or changed, and the details in the log.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let retry = |mut a: ApiError| {
            a.retry_after = Some(1);
            a
        };
        match e {
            StoreError::Unavailable(detail) => ApiError::store_unavailable(detail),
            StoreError::Busy(detail) => {
                tracing::warn!(%detail, "the database is busy");
                retry(ApiError::new(
                    503,
                    "store_busy",
                    "the gateway's database is busy: nothing was decided or changed; retry \
                     shortly",
                ))
            }
            StoreError::Full(detail) => {
                tracing::error!(%detail, "the database is full");
                ApiError::new(
                    507,
                    "storage_full",
                    "the gateway's storage is full: nothing was decided or changed; an \
                     operator must make room",
                )
            }
            StoreError::ReadOnly(detail) => {
                tracing::error!(%detail, "the database refused to write");
                ApiError::new(
                    503,
                    "store_read_only",
                    "the gateway's database refuses writes (read-only file or server): \
                     nothing was decided or changed",
                )
            }
            StoreError::Corrupt(detail) => {
                tracing::error!(%detail, "the database is damaged");
                ApiError::new(
                    500,
                    "store_corrupt",
                    "the gateway's database is damaged: nothing was decided or changed",
                )
            }
            StoreError::Outdated { floor } => super::schema::outdated(floor),
            StoreError::NotDurable(detail) => {
                tracing::error!(%detail, "a commit could not be made durable");
                ApiError::new(
                    503,
                    "store_not_durable",
                    "the gateway could not make its writes durable and refuses writes until \
                     it is restarted: this request was not acknowledged",
                )
            }
            StoreError::Failed(detail) => ApiError::internal(detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_own_status_and_code_and_no_detail_in_the_answer() {
        let secret = "value 'sk_live_do_not_show' violates";
        let cases = [
            (
                StoreError::Unavailable(secret.into()),
                503,
                "store_unavailable",
                true,
            ),
            (StoreError::Busy(secret.into()), 503, "store_busy", true),
            (StoreError::Full(secret.into()), 507, "storage_full", false),
            (
                StoreError::ReadOnly(secret.into()),
                503,
                "store_read_only",
                false,
            ),
            (
                StoreError::Corrupt(secret.into()),
                500,
                "store_corrupt",
                false,
            ),
            (
                StoreError::Outdated { floor: 99 },
                503,
                "replica_outdated",
                false,
            ),
            (
                StoreError::NotDurable(secret.into()),
                503,
                "store_not_durable",
                false,
            ),
            (StoreError::Failed(secret.into()), 500, "internal", false),
        ];
        for (e, status, code, retry) in cases {
            let a = ApiError::from(e);
            assert_eq!((a.status, a.code), (status, code));
            assert_eq!(a.retry_after.is_some(), retry, "{code}");
            assert!(!a.message.contains("sk_live"), "{code}: {}", a.message);
        }
    }

    #[test]
    fn database_errors_are_classified_by_their_codes() {
        let sqlite = |code: i32| {
            StoreError::from_sqlite(&rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ))
        };
        assert!(matches!(
            sqlite(rusqlite::ffi::SQLITE_FULL),
            StoreError::Full(_)
        ));
        assert!(matches!(
            sqlite(rusqlite::ffi::SQLITE_BUSY),
            StoreError::Busy(_)
        ));
        assert!(matches!(
            sqlite(rusqlite::ffi::SQLITE_READONLY),
            StoreError::ReadOnly(_)
        ));
        assert!(matches!(
            sqlite(rusqlite::ffi::SQLITE_NOTADB),
            StoreError::Corrupt(_)
        ));
        assert!(matches!(
            sqlite(rusqlite::ffi::SQLITE_IOERR),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            sqlite(rusqlite::ffi::SQLITE_CONSTRAINT),
            StoreError::Failed(_)
        ));
        let pg = |code| StoreError::from_sqlstate(Some(code), String::new());
        assert!(matches!(pg("08006"), StoreError::Unavailable(_)));
        assert!(matches!(pg("57P01"), StoreError::Unavailable(_)));
        assert!(matches!(pg("40P01"), StoreError::Busy(_)));
        assert!(matches!(pg("53100"), StoreError::Full(_)));
        assert!(matches!(pg("25006"), StoreError::ReadOnly(_)));
        assert!(matches!(pg("23505"), StoreError::Failed(_)));
        assert!(matches!(
            StoreError::from_sqlstate(None, String::new()),
            StoreError::Unavailable(_)
        ));
    }
}
