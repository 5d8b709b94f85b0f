//! SQLite storage: the schema and how the database is opened.
//!
//! A file database runs in WAL mode with `synchronous = NORMAL`: a committed
//! transaction is in the operating system's hands before the engine answers, so an
//! acknowledged decision survives the process being killed (`kill -9`). Every
//! engine operation is one `IMMEDIATE` transaction on one connection, which makes
//! the cap checks and the reservation that follows them atomic.

use std::path::Path;

use rusqlite::Connection;

/// Where the engine keeps its state.
#[derive(Debug, Clone)]
pub enum Storage {
    /// A SQLite file (created if missing), e.g. `<data dir>/paybond.db`.
    File(std::path::PathBuf),
    /// A private in-memory database: for tests and benchmarks; gone with the engine.
    Memory,
}

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    environment TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    secret_hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    role TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS org_policies (
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    id TEXT NOT NULL,
    text TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE IF NOT EXISTS tenant_policies (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants(id),
    text TEXT NOT NULL,
    org_policy_id TEXT,
    effective TEXT NOT NULL,
    digest TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS intents (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    operations TEXT NOT NULL,
    budget_cents INTEGER NOT NULL,
    currency TEXT NOT NULL,
    state TEXT NOT NULL,
    deadline_ms INTEGER NOT NULL,
    consumed_cents INTEGER NOT NULL DEFAULT 0,
    reserved_cents INTEGER NOT NULL DEFAULT 0,
    evidence_schema TEXT,
    metadata TEXT,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    intent_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    response TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    intent_id TEXT NOT NULL,
    tool TEXT NOT NULL,
    operation TEXT NOT NULL,
    vendor TEXT,
    agent TEXT NOT NULL,
    agent_subject TEXT,
    amount_cents INTEGER NOT NULL,
    actual_cents INTEGER,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    finalized_ms INTEGER,
    complete_response TEXT
);
CREATE INDEX IF NOT EXISTS reservations_by_tenant ON reservations (tenant_id, created_ms);
CREATE INDEX IF NOT EXISTS reservations_by_intent ON reservations (intent_id);
CREATE INDEX IF NOT EXISTS reservations_open ON reservations (state, expires_ms);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    intent_id TEXT NOT NULL,
    decision_id TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    operation TEXT NOT NULL,
    tool TEXT NOT NULL,
    vendor TEXT,
    amount_cents INTEGER NOT NULL,
    reason_codes TEXT NOT NULL,
    state TEXT NOT NULL,
    approvers TEXT NOT NULL,
    quorum INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    token TEXT,
    token_hash TEXT UNIQUE,
    token_expires_ms INTEGER,
    token_used_ms INTEGER
);
CREATE INDEX IF NOT EXISTS approvals_by_state ON approvals (tenant_id, state);
CREATE TABLE IF NOT EXISTS idempotency (
    tenant_id TEXT NOT NULL,
    key TEXT NOT NULL,
    route TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    response TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE TABLE IF NOT EXISTS ledger (
    tenant_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
";

/// Opens (and if needed creates) the database.
pub(crate) fn open(storage: &Storage) -> rusqlite::Result<Connection> {
    let conn = match storage {
        Storage::File(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                        Some(format!("cannot create {}: {e}", dir.display())),
                    )
                })?;
            }
            let conn = Connection::open(path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            // Checkpoints (and their fsyncs) run on the Checkpointer's own
            // connection, off the path of the requests.
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
            conn
        }
        Storage::Memory => Connection::open_in_memory()?,
    };
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.execute_batch(SCHEMA)?;
    migrate(&conn)?;
    Ok(conn)
}

/// Columns added since the first schema, for databases created before them.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[("reservations", "agent_subject", "TEXT")];

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, kind) in ADDED_COLUMNS {
        let present: bool = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
            ))?
            .exists([column])?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

/// A thread that copies the WAL back into the database file every `every`, on a
/// connection of its own: a PASSIVE checkpoint never blocks the engine's writes,
/// and its fsyncs do not land on a request. Stops when dropped.
pub(crate) struct Checkpointer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub(crate) fn start(path: &Path, every: std::time::Duration) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("paybond-checkpoint".to_owned())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::park_timeout(every);
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                    }
                }
            })
            .map_err(|e| {
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                    Some(format!("cannot start the checkpoint thread: {e}")),
                )
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The default database file inside a data directory.
pub fn database_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("paybond.db")
}
