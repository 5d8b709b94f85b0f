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

use super::{Arg, DatabaseUrl, Row, Tx, Value, schema};
use crate::error::ApiError;

/// Connections per replica.
const POOL_SIZE: usize = 8;

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
        if unreachable(&e) {
            ApiError::store_unavailable(detail)
        } else {
            storage_error(detail)
        }
    }
}

/// Whether `e` says the database cannot be reached, rather than that it refused
/// a statement: a closed connection, an I/O error, or a connection exception
/// (SQLSTATE class 08) or shutdown (57P01 to 57P03) from the server.
fn unreachable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
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
    /// Opens a pool on `url`, applying the migrations it lacks.
    pub(crate) fn open(url: &DatabaseUrl) -> Result<Self, ApiError> {
        Self::open_with(url, true)
    }

    /// Opens one connection on `url` for reading only: nothing is migrated or written.
    pub(crate) fn open_read_only(url: &DatabaseUrl) -> Result<Self, ApiError> {
        Self::open_with(url, false)
    }

    fn open_with(url: &DatabaseUrl, migrated: bool) -> Result<Self, ApiError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("paybond-postgres")
            .enable_all()
            .build()
            .map_err(storage_error)?;
        let size = if migrated { POOL_SIZE } else { 1 };
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            idle.push(connect(&runtime, url)?);
        }
        if let Some(first) = idle.first().filter(|_| migrated) {
            let client = first.client.clone();
            let place = url.to_string();
            let (send, receive) = std::sync::mpsc::sync_channel(1);
            runtime.spawn(async move {
                let _ = send.send(migrate(&client, &place).await);
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
    .inspect_err(|e| tracing::warn!(database = %url, error = %e, "cannot connect"))?;
    Ok(Conn {
        client,
        statements: HashMap::new(),
    })
}

/// Applies the migrations `place` lacks ([`schema::MIGRATIONS`]), under an
/// advisory lock so that replicas starting together apply each exactly once;
/// refuses a database a newer build migrated, changing nothing.
async fn migrate(client: &Client, place: &str) -> Result<(), ApiError> {
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
        let newest: Option<i64> = client
            .query_one("SELECT MAX(version) FROM schema_migrations", &[])
            .await?
            .get(0);
        if let Some(newest) = newest.filter(|v| *v > schema::LATEST) {
            return Err(schema::too_new(newest, place));
        }
        for (version, sql) in schema::MIGRATIONS {
            if newest.is_some_and(|n| *version <= n) {
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
