//! PostgreSQL: one database shared by every replica of a fleet.
//!
//! Each operation is one `READ COMMITTED` transaction on a pooled connection. A
//! transaction that changes a tenant's state first takes a row lock on the
//! tenant (`SELECT … FOR UPDATE`), so the decisions of one tenant are serialized
//! across replicas: the cap checks and the reservation that follows them see every
//! earlier commit, the tenant's ledger chain grows one entry at a time, and two
//! replicas cannot both finalize one reservation. Row locks rather than
//! `SERIALIZABLE` with retries: every decision of a tenant reads the same rows
//! (intent, rolling caps, ledger tip), so serializable transactions would conflict
//! and retry constantly under load, while a lock queues them once. Other tenants
//! proceed in parallel. The sweep locks tenants in order, so two replicas
//! sweeping at once cannot deadlock.
//!
//! The driver is tokio-postgres. Its connections and statements run on a small
//! runtime of the store's own; the engine (synchronous) waits for each statement
//! on a channel, so it may be called from any thread, async or not.

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Condvar, Mutex};

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Statement};

use super::{Arg, DatabaseUrl, Row, Tx, Value};
use crate::error::ApiError;

/// Connections per replica.
const POOL_SIZE: usize = 8;

/// Schema migrations, applied in order once per database (under an advisory lock,
/// so replicas starting together apply each exactly once).
const MIGRATIONS: &[(i64, &str)] = &[
    (1, SCHEMA_V1),
    (2, SCHEMA_V2),
    (3, SCHEMA_V3),
    (4, SCHEMA_V4),
    (5, SCHEMA_V5),
    (6, SCHEMA_V6),
    (7, SCHEMA_V7),
];

/// Approvals: the key whose verify opened the request (its token works for that
/// key alone), when an operator decided it (a denial answers the identical request
/// for a while), and the index the identical request is found by.
const SCHEMA_V7: &str = r"
ALTER TABLE approvals ADD COLUMN key_id TEXT;
ALTER TABLE approvals ADD COLUMN decided_ms BIGINT;
CREATE INDEX approvals_by_digest ON approvals (tenant_id, request_digest, created_ms);
";

/// Open reservations (the sweep, lapsed amounts, open counts) are found through
/// indexes that hold only them: a reservation leaves them when it is finalized.
const SCHEMA_V6: &str = r"
DROP INDEX reservations_open;
DROP INDEX reservations_open_by_intent;
CREATE INDEX reservations_open_by_expiry ON reservations (state, expires_ms) WHERE state = 'open';
CREATE INDEX reservations_open_by_intent_expiry ON reservations (intent_id, expires_ms)
    WHERE state = 'open';
";

/// Audit exports: each tenant's signing key and the export jobs with their bundles.
const SCHEMA_V5: &str = r"
CREATE TABLE signing_keys (
    tenant_id TEXT PRIMARY KEY,
    secret_key BYTEA NOT NULL,
    public_key_hex TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE audit_exports (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    status TEXT NOT NULL,
    disclosure_tier TEXT NOT NULL,
    filter TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL,
    stage TEXT NOT NULL,
    percent BIGINT NOT NULL,
    error TEXT,
    manifest_sha256 TEXT,
    bundle_sha256 TEXT,
    bundle_size_bytes BIGINT,
    bundle BYTEA,
    download_token_hash TEXT UNIQUE,
    download_token_expires_ms BIGINT
);
CREATE INDEX audit_exports_by_time ON audit_exports (tenant_id, created_ms, id);
";

/// Operator intent views: intents by time, decisions by intent (in ledger order),
/// and submitted evidence.
const SCHEMA_V4: &str = r"
ALTER TABLE decisions ADD COLUMN ledger_seq BIGINT;
CREATE INDEX intents_by_time ON intents (tenant_id, created_ms, id);
CREATE INDEX decisions_by_intent ON decisions (intent_id, created_ms);
CREATE TABLE evidence (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    intent_id TEXT NOT NULL,
    decision_id TEXT,
    operation TEXT,
    status TEXT,
    cost_cents BIGINT,
    predicate_passed BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX evidence_by_intent ON evidence (intent_id, created_ms);
";

/// Approvals: who asked (hold limits per agent), whether the token was fetched,
/// and indexes for the limits and for paging.
const SCHEMA_V3: &str = r"
ALTER TABLE approvals ADD COLUMN agent TEXT;
ALTER TABLE approvals ADD COLUMN token_fetched_ms BIGINT;
CREATE INDEX approvals_by_agent ON approvals (tenant_id, agent, created_ms);
CREATE INDEX approvals_by_intent ON approvals (intent_id, state);
CREATE INDEX approvals_by_time ON approvals (tenant_id, created_ms, id);
UPDATE approvals SET token = NULL WHERE token IS NOT NULL;
";

const SCHEMA_V1: &str = r"
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    environment TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE api_keys (
    secret_hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    role TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE org_policies (
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    id TEXT NOT NULL,
    text TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE tenant_policies (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants(id),
    text TEXT NOT NULL,
    org_policy_id TEXT,
    effective TEXT NOT NULL,
    digest TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE intents (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    operations TEXT NOT NULL,
    budget_cents BIGINT NOT NULL,
    currency TEXT NOT NULL,
    state TEXT NOT NULL,
    deadline_ms BIGINT NOT NULL,
    consumed_cents BIGINT NOT NULL DEFAULT 0,
    reserved_cents BIGINT NOT NULL DEFAULT 0,
    evidence_schema TEXT,
    metadata TEXT,
    created_ms BIGINT NOT NULL
);
CREATE TABLE decisions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    intent_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    response TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE reservations (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    intent_id TEXT NOT NULL,
    tool TEXT NOT NULL,
    operation TEXT NOT NULL,
    vendor TEXT,
    agent TEXT NOT NULL,
    agent_subject TEXT,
    amount_cents BIGINT NOT NULL,
    actual_cents BIGINT,
    state TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    finalized_ms BIGINT,
    complete_response TEXT
);
CREATE INDEX reservations_by_tenant ON reservations (tenant_id, created_ms);
CREATE INDEX reservations_open ON reservations (state, expires_ms);
CREATE INDEX reservations_open_by_intent ON reservations (intent_id, state, expires_ms);
CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    intent_id TEXT NOT NULL,
    decision_id TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    operation TEXT NOT NULL,
    tool TEXT NOT NULL,
    vendor TEXT,
    amount_cents BIGINT NOT NULL,
    reason_codes TEXT NOT NULL,
    state TEXT NOT NULL,
    approvers TEXT NOT NULL,
    quorum BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    token TEXT,
    token_hash TEXT UNIQUE,
    token_expires_ms BIGINT,
    token_used_ms BIGINT
);
CREATE INDEX approvals_by_state ON approvals (tenant_id, state);
CREATE TABLE idempotency (
    tenant_id TEXT NOT NULL,
    key TEXT NOT NULL,
    route TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    response TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE TABLE ledger (
    tenant_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
";

/// Rolling-cap counters, and the index rate limits read.
const SCHEMA_V2: &str = r"
CREATE TABLE IF NOT EXISTS spend_counters (
    tenant_id TEXT NOT NULL,
    bucket TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end BIGINT NOT NULL,
    spent_cents BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, bucket, window_start, window_end)
);
CREATE INDEX IF NOT EXISTS reservations_by_tool ON reservations (tenant_id, tool, created_ms);
DROP INDEX IF EXISTS reservations_by_intent;
";

/// Serializes migrations across replicas (an arbitrary constant of this gateway's).
const MIGRATION_LOCK: i64 = 0x7061_7962_6f6e_6401;

struct Conn {
    client: Arc<Client>,
    /// Prepared statements by their SQL as the engine writes it.
    statements: HashMap<String, Statement>,
}

/// The PostgreSQL store: a pool of connections.
pub(crate) struct PgStore {
    runtime: Option<tokio::runtime::Runtime>,
    url: DatabaseUrl,
    pool: Mutex<Pool>,
    returned: Condvar,
}

struct Pool {
    idle: Vec<Conn>,
    /// Connections the server closed, to be opened again when one is needed.
    lost: usize,
}

fn storage_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format_args!("storage: {e}"))
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The database's own message (constraint, lock, connection), never a value.
        let detail = e.as_db_error().map_or_else(
            || e.to_string(),
            |d| format!("{} ({})", d.message(), d.code().code()),
        );
        storage_error(detail)
    }
}

/// `?1` → `$1`: the engine's placeholders in PostgreSQL's spelling.
fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `fut` on `runtime` and waits for it on this thread.
fn run<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    fut: impl Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
) -> Result<T, ApiError> {
    let (send, receive) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = send.send(fut.await);
    });
    receive
        .recv()
        .map_err(|_| storage_error("the PostgreSQL runtime stopped"))?
        .map_err(Into::into)
}

impl PgStore {
    pub(crate) fn open(url: &DatabaseUrl) -> Result<Self, ApiError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("paybond-postgres")
            .enable_all()
            .build()
            .map_err(storage_error)?;
        let mut idle = Vec::with_capacity(POOL_SIZE);
        for _ in 0..POOL_SIZE {
            idle.push(connect(&runtime, url)?);
        }
        if let Some(first) = idle.first() {
            let client = first.client.clone();
            let (send, receive) = std::sync::mpsc::sync_channel(1);
            runtime.spawn(async move {
                let _ = send.send(migrate(&client).await);
            });
            receive
                .recv()
                .map_err(|_| storage_error("the PostgreSQL runtime stopped"))??;
        }
        Ok(Self {
            runtime: Some(runtime),
            url: url.clone(),
            pool: Mutex::new(Pool { idle, lost: 0 }),
            returned: Condvar::new(),
        })
    }

    fn handle(&self) -> Result<&tokio::runtime::Runtime, ApiError> {
        self.runtime
            .as_ref()
            .ok_or_else(|| ApiError::internal("storage: the PostgreSQL store is closed"))
    }

    /// An idle connection; one opened again in place of a lost one if none is idle;
    /// else waits for one to be given back. An error (the server cannot be reached)
    /// fails the request: the replica fails closed and tries again on the next one.
    fn take(&self, runtime: &tokio::runtime::Runtime) -> Result<Conn, ApiError> {
        let mut pool = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(c) = pool.idle.pop() {
                return Ok(c);
            }
            if pool.lost > 0 {
                pool.lost -= 1;
                drop(pool);
                return connect(runtime, &self.url).inspect_err(|_| {
                    self.lose();
                });
            }
            pool = self
                .returned
                .wait(pool)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn give_back(&self, conn: Conn) {
        self.pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .idle
            .push(conn);
        self.returned.notify_one();
    }

    /// Counts a connection as lost, so that the next request opens a new one.
    fn lose(&self) {
        self.pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .lost += 1;
        self.returned.notify_one();
    }

    /// Runs `f` in one transaction on a pooled connection: committed on `Ok`,
    /// rolled back on `Err` (or a panic, which then continues).
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&dyn Tx) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        self.transaction("BEGIN", f)
    }

    /// Runs `f` in a transaction opened by `begin`.
    fn transaction<T>(
        &self,
        begin: &'static str,
        f: impl FnOnce(&dyn Tx) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let runtime = self.handle()?;
        let conn = self.take(runtime)?;
        let tx = PgTx {
            runtime,
            conn: RefCell::new(conn),
        };
        let begun = tx.batch(begin);
        let out = match begun {
            Ok(()) => catch_unwind(AssertUnwindSafe(|| f(&tx))),
            Err(e) => Ok(Err(e)),
        };
        let end = if matches!(out, Ok(Ok(_))) {
            tx.batch("COMMIT")
        } else {
            tx.batch("ROLLBACK")
        };
        let conn = tx.conn.into_inner();
        // A connection the server closed is not given back but opened again when
        // next needed: the pool never hands out a dead connection.
        if conn.client.is_closed() {
            self.lose();
        } else {
            self.give_back(conn);
        }
        match out {
            Err(panic) => resume_unwind(panic),
            Ok(Ok(v)) => end.map(|()| v),
            Ok(Err(e)) => Err(e),
        }
    }
}

impl PgStore {
    /// Runs `f` in a read-only transaction that sees one snapshot of the database
    /// (`REPEATABLE READ`): a long read (an audit export) is consistent and, under
    /// MVCC, holds up no writer.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&dyn Tx) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        self.transaction("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", f)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // The engine may be dropped on an async thread, where a runtime cannot block.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Opens one connection, its driver task on `runtime`.
fn connect(runtime: &tokio::runtime::Runtime, url: &DatabaseUrl) -> Result<Conn, ApiError> {
    let target = url.expose_secret().to_owned();
    let client = run(runtime, async move {
        let (client, connection) = tokio_postgres::connect(&target, NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "a PostgreSQL connection closed");
            }
        });
        Ok(Arc::new(client))
    })
    .map_err(|e| ApiError::internal(format_args!("cannot connect to {url}: {}", e.message)))?;
    Ok(Conn {
        client,
        statements: HashMap::new(),
    })
}

async fn migrate(client: &Client) -> Result<(), ApiError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
            )
            .await?;
        for (version, sql) in MIGRATIONS {
            let applied = client
                .query_opt(
                    "SELECT 1 FROM schema_migrations WHERE version = $1",
                    &[version],
                )
                .await?
                .is_some();
            if applied {
                continue;
            }
            let now = jiff::Timestamp::now().as_millisecond();
            client
                .batch_execute(&format!(
                    "BEGIN; {sql}; INSERT INTO schema_migrations (version, applied_ms) VALUES ({version}, {now}); COMMIT;"
                ))
                .await?;
        }
        Ok::<(), ApiError>(())
    }
    .await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    result
}

struct PgTx<'a> {
    runtime: &'a tokio::runtime::Runtime,
    conn: RefCell<Conn>,
}

impl PgTx<'_> {
    fn batch(&self, sql: &'static str) -> Result<(), ApiError> {
        let client = self.conn.borrow().client.clone();
        run(self.runtime, async move { client.batch_execute(sql).await })
    }

    fn statement(&self, sql: &str) -> Result<Statement, ApiError> {
        if let Some(s) = self.conn.borrow().statements.get(sql) {
            return Ok(s.clone());
        }
        let client = self.conn.borrow().client.clone();
        let text = dollar_placeholders(sql);
        let prepared = run(self.runtime, async move { client.prepare(&text).await })?;
        self.conn
            .borrow_mut()
            .statements
            .insert(sql.to_owned(), prepared.clone());
        Ok(prepared)
    }

    /// Runs `statement` with `args`: rows, or the number changed.
    fn call(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        rows: bool,
    ) -> Result<(Vec<tokio_postgres::Row>, u64), ApiError> {
        let statement = self.statement(sql)?;
        let client = self.conn.borrow().client.clone();
        let owned: Vec<Owned> = args.iter().map(Owned::from).collect();
        run(self.runtime, async move {
            let params: Vec<&(dyn ToSql + Sync)> =
                owned.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
            if rows {
                client.query(&statement, &params).await.map(|r| (r, 0))
            } else {
                client
                    .execute(&statement, &params)
                    .await
                    .map(|n| (Vec::new(), n))
            }
        })
    }
}

impl Tx for PgTx<'_> {
    fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, ApiError> {
        Ok(self.call(sql, args, false)?.1)
    }

    fn query(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, ApiError> {
        self.call(sql, args, true)?.0.iter().map(read_row).collect()
    }

    fn execute_each(&self, sql: &str, each: &[&[Arg<'_>]]) -> Result<u64, ApiError> {
        let statement = self.statement(sql)?;
        let client = self.conn.borrow().client.clone();
        let owned: Vec<Vec<Owned>> = each
            .iter()
            .map(|args| args.iter().map(Owned::from).collect())
            .collect();
        run(self.runtime, async move {
            // Polled together, the executions are pipelined on the connection;
            // the server still runs them one after another, in this order.
            let runs = owned.iter().map(|args| {
                let params: Vec<&(dyn ToSql + Sync)> =
                    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
                let (client, statement) = (&client, &statement);
                async move { client.execute(statement, &params).await }
            });
            Ok(futures_util::future::try_join_all(runs)
                .await?
                .into_iter()
                .sum())
        })
    }

    fn lock_tenant(&self, tenant_id: &str) -> Result<(), ApiError> {
        self.query(
            "SELECT id FROM tenants WHERE id = ?1 FOR UPDATE",
            super::args![tenant_id],
        )
        .map(drop)
    }
}

/// An argument moved onto the store's runtime.
#[derive(Debug)]
enum Owned {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<&Arg<'_>> for Owned {
    fn from(a: &Arg<'_>) -> Self {
        match a {
            Arg::Null => Self::Null,
            Arg::Int(i) => Self::Int(*i),
            Arg::Text(t) => Self::Text(t.to_string()),
            Arg::Blob(b) => Self::Blob(b.to_vec()),
        }
    }
}

fn read_row(row: &tokio_postgres::Row) -> Result<Row, ApiError> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
        } else if *ty == Type::TEXT
            || *ty == Type::VARCHAR
            || *ty == Type::BPCHAR
            || *ty == Type::NAME
        {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else {
            return Err(storage_error(format_args!(
                "column {} has type {ty}, which the engine does not read",
                column.name()
            )));
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

impl ToSql for Owned {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Self::Null => Ok(IsNull::Yes),
            Self::Int(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Self::Int(i) if *ty == Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
            Self::Int(i) => i.to_sql(ty, out),
            Self::Text(t) => t.as_str().to_sql(ty, out),
            Self::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Each variant checks the parameter's type when it writes itself.
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars() {
        assert_eq!(
            dollar_placeholders("SELECT ?1, '?' FROM t WHERE a = ?12 AND b = ?"),
            "SELECT $1, '?' FROM t WHERE a = $12 AND b = ?"
        );
    }
}
