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
//! A replica's writes of one tenant share a transaction: the first to arrive
//! opens it and takes the tenant's lock, every write of the tenant that arrives
//! meanwhile runs in it (each in a savepoint of its own, so a failed one is undone
//! alone), and the last one in commits for all. The lock is taken once and the
//! commit's fsync is paid once for the group, and what the group's decisions read
//! of the tenant is kept in memory for its length ([`LiveState`]): nothing else
//! can change the tenant while the group holds its lock. A write whose only
//! outcome that matters is success ([`super::sql::Sql::execute_later`]) is held back and sent
//! with the next statement, pipelined, merged with the held-back writes of the
//! group's other operations ([`super::held`]): a decision that reads nothing of
//! the database sends nothing of its own, and its writes go with the group's
//! commit, in one round trip, as a few multi-row statements.
//!
//! The driver is tokio-postgres. Its connections and statements run on a small
//! runtime of the store's own; the engine (synchronous) waits for each statement
//! on a channel, so it may be called from any thread, async or not.

use super::sql::Sql as _;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::error::Error;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Statement};
use uuid::Uuid;

use super::held::{self, Held};
use super::ops::tenants::{STORE_KEY, may_change_key};
use super::stats::StoreStats;
use super::{Arg, DatabaseUrl, IntentRow, ReadAhead, Row, StoreError, Tx, Value, schema};
use crate::engine::live::LiveState;
use crate::error::ApiError;

/// Connections per replica.
const POOL_SIZE: usize = 8;

/// Writes one group of a tenant takes at most, so that a steady stream of them
/// still commits (and answers) regularly.
const MAX_GROUP: usize = 64;

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
    /// Each tenant's group of writes on this replica.
    groups: Mutex<HashMap<String, Arc<TenantGroup>>>,
    /// This replica's id in `replicas` and its heartbeat (a store that may write).
    replica: Option<(String, tokio::task::JoinHandle<()>)>,
    /// Counts the key revocations this replica has heard of (`LISTEN
    /// paybond_keys`), and the times it may have missed some (its listening
    /// connection was lost): a key cached under an older count is read again.
    keys_generation: Arc<std::sync::atomic::AtomicU64>,
    /// The listening task.
    listener: Option<tokio::task::JoinHandle<()>>,
    /// Its commits' figures (`/metrics`).
    stats: StoreStats,
}

/// The writes of one tenant on this replica, and the transaction they share.
#[derive(Default)]
struct TenantGroup {
    /// Writes that have asked to join and not yet run.
    arrivals: AtomicUsize,
    /// The open group, held by the write running in it: a tenant's writes on
    /// this replica run one at a time. It is not held while a group commits: the
    /// next group may open meanwhile (its lock on the tenant waits in PostgreSQL
    /// for that commit).
    turn: Mutex<Turn>,
    /// What the last group to commit here had read of the tenant, kept with
    /// the ledger tip it had reached. The next group takes it when the tenant's
    /// tip is still that one: nothing has changed what a decision reads since
    /// (every such change is a ledger entry of the tenant's), so that group's
    /// decisions read nothing again.
    kept: Mutex<Option<LiveState>>,
    /// The last group here could not take what the one before it kept (another
    /// replica, or a write of another kind, had changed the tenant since): the
    /// next group reads the intent it is opened for with its lock, rather than
    /// after it, one round trip later.
    moved: AtomicBool,
    /// The idempotency keys of the writes that have arrived and not yet run: a
    /// write of the group that reads its own key reads these with it
    /// ([`PgTx::kept_answer_rows`]).
    waiting_keys: Mutex<Vec<String>>,
    /// Statements that read keys ahead (for tests).
    #[cfg(test)]
    keys_read_ahead: AtomicUsize,
}

#[derive(Default)]
struct Turn {
    /// The open group's transaction.
    open: Option<OpenGroup>,
    /// The id of the open (or last) group.
    id: u64,
    /// Writes in the open group.
    ops: usize,
}

/// A group's transaction: its connection (the tenant locked) and what its
/// decisions read of the tenant, kept while it is open.
struct OpenGroup {
    conn: RefCell<Conn>,
    live: RefCell<LiveState>,
    /// Statements of the group's writes not sent yet.
    pending: RefCell<Vec<Later>>,
    /// Why the group cannot commit: held-back writes of its operations could not
    /// be sent.
    broken: RefCell<Option<StoreError>>,
    /// How it ended, for its writes to wait on.
    outcome: Arc<Outcome>,
    /// Idempotency keys read ahead in the group.
    keys: KeysRead,
}

/// The idempotency keys a group read ahead of the writes that read them: a
/// write that reads its key reads, in the same statement, the keys of the
/// writes waiting to run after it (up to [`KEYS_AHEAD`]), so that a group of
/// keyed writes reads its keys in one or two round trips rather than one each.
///
/// What is read here holds for the rest of the group: it was read under the
/// tenant's lock, which every write of a key of the tenant's takes, so only the
/// group's own writes may change it. A key one of them stores is read again
/// ([`super::sql::Sql::kept_answer_rows`]), and any other write to the keys' table
/// forgets everything read here.
#[derive(Default)]
struct KeysRead {
    /// What is kept under each key read ahead (`None`: nothing), until the
    /// write that reads it takes it.
    answers: RefCell<HashMap<String, Option<Row>>>,
    /// The keys the group's writes stored.
    stored: RefCell<std::collections::HashSet<String>>,
}

/// Keys read in one statement at most: the write's own and those of the
/// writes waiting behind it.
const KEYS_AHEAD: usize = 16;

/// The answers kept under tenant `?1`'s keys `?2` to `?17` ([`KEYS_AHEAD`]), each
/// with its key: one lookup of the key index per key, their rows one after
/// another. (`key IN (…)` is planned, for a tenant the statistics think has few
/// keys, as a scan of all the tenant's keys: milliseconds for a busy one.)
static KEPT_ANSWERS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    (2..KEYS_AHEAD + 2)
        .map(|i| {
            format!(
                "SELECT key, route, body_hash, response FROM idempotency \
                 WHERE tenant_id = ?1 AND key = ?{i}"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
});

/// How a group ended: committed, or why not.
#[derive(Default)]
struct Outcome {
    ended: Mutex<Option<Result<(), ApiError>>>,
    signal: Condvar,
}

impl Outcome {
    fn set(&self, ended: Result<(), ApiError>) {
        *self
            .ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ended);
        self.signal.notify_all();
    }

    /// Waits for the group to end.
    fn wait(&self) -> Result<(), ApiError> {
        let mut ended = self
            .ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(ended) = ended.as_ref() {
                return ended.clone();
            }
            ended = self
                .signal
                .wait(ended)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

struct Pool {
    idle: Vec<Conn>,
    /// Connections the server closed, to be opened again when one is needed.
    lost: usize,
}

fn storage_error(e: impl std::fmt::Display) -> ApiError {
    StoreError::Failed(format!("storage: {e}")).into()
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The database's own message (constraint, lock, connection), never a value.
        let detail = e.as_db_error().map_or_else(
            || e.to_string(),
            |d| format!("{} ({})", d.message(), d.code().code()),
        );
        if unreachable(&e) {
            Self::Unavailable(detail)
        } else {
            match e.code() {
                Some(code) => Self::from_sqlstate(Some(code.code()), detail),
                None => Self::Failed(format!("storage: {detail}")),
            }
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::from(e).into()
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

/// Runs `fut` on `runtime` (it needs the runtime's I/O: connecting) and waits for
/// it on this thread.
fn on_runtime<T: Send + 'static>(
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

/// Waits for `fut`, requests of a client, on this thread. A client hands its
/// requests to its connection's task (on the store's runtime) over a channel, so
/// they are awaited here without a hop through the runtime.
fn run<T>(fut: impl Future<Output = Result<T, tokio_postgres::Error>>) -> Result<T, StoreError> {
    futures_executor::block_on(fut).map_err(Into::into)
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
        let replica = if migrated {
            Some(register_replica(&runtime, url)?)
        } else {
            None
        };
        let keys_generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let listener = migrated.then(|| listen_for_keys(&runtime, url, keys_generation.clone()));
        Ok(Self {
            runtime: Some(runtime),
            url: url.clone(),
            pool: Mutex::new(Pool { idle, lost: 0 }),
            returned: Condvar::new(),
            groups: Mutex::new(HashMap::new()),
            replica,
            keys_generation,
            listener,
            stats: StoreStats::default(),
        })
    }

    /// Its commits' figures.
    pub(crate) fn stats(&self) -> &StoreStats {
        &self.stats
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
        let conn = RefCell::new(self.take(runtime)?);
        let pending = RefCell::new(Vec::new());
        let tx = PgTx::new(&conn, &pending, None);
        let writes = begin == "BEGIN";
        let begun = if writes {
            // A write: only while this build may still write here.
            tx.control_later(begin);
            tx.check_floor()
        } else {
            tx.control(begin).map_err(ApiError::from)
        };
        let out = match begun {
            Ok(()) => catch_unwind(AssertUnwindSafe(|| f(&tx))),
            Err(e) => Ok(Err(e)),
        };
        // What `f` held back goes with the commit; if any of it fails, so does
        // the commit.
        let end = if matches!(out, Ok(Ok(_))) {
            let started = std::time::Instant::now();
            let committed = tx.control("COMMIT");
            // The store's figures count writes: a read commits nothing.
            if writes {
                self.stats.committed(started, 1);
            }
            committed
        } else {
            tx.discard();
            tx.control("ROLLBACK")
        };
        self.put_back(conn.into_inner());
        match out {
            Err(panic) => resume_unwind(panic),
            Ok(Ok(v)) => end.map(|()| v).map_err(ApiError::from),
            Ok(Err(e)) => Err(e),
        }
    }
}

impl PgStore {
    /// A connection back to the pool; one the server closed is not given back but
    /// opened again when next needed: the pool never hands out a dead connection.
    fn put_back(&self, conn: Conn) {
        if conn.client.is_closed() {
            self.lose();
        } else {
            self.give_back(conn);
        }
    }

    fn group(&self, tenant: &str) -> Arc<TenantGroup> {
        let mut groups = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match groups.get(tenant) {
            Some(g) => g.clone(),
            None => {
                let g = Arc::new(TenantGroup::default());
                groups.insert(tenant.to_owned(), g.clone());
                g
            }
        }
    }

    /// Runs `f`, a write of `tenant`'s, in the tenant's open group on this replica
    /// (opening one, which takes the tenant's lock, if none is open), in a
    /// savepoint of its own unless it opened the group; the last write in commits
    /// the group. Returns once the group has committed: `f`'s outcome, or the
    /// commit's failure. `ahead`: what `f` reads first, if known before it runs:
    /// its intent may be read with the group's lock ([`Self::open_group`]), its
    /// idempotency key by the write before it in the group ([`KeysRead`]).
    pub(crate) fn write_as<T>(
        &self,
        tenant: &str,
        ahead: ReadAhead<'_>,
        f: impl FnOnce(&dyn Tx) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let runtime = self.handle()?;
        let group = self.group(tenant);
        if let Some(key) = ahead.key {
            group.waiting_keys().push(key.to_owned());
        }
        group.arrivals.fetch_add(1, Ordering::SeqCst);
        let mut turn = group.lock();
        if let Some(key) = ahead.key {
            // It runs now: the writes that read their keys from here on need not
            // read its.
            let mut waiting = group.waiting_keys();
            if let Some(at) = waiting.iter().position(|k| k == key) {
                waiting.swap_remove(at);
            }
        }
        if turn.open.is_none() {
            match self.open_group(runtime, tenant, ahead.intent, &group) {
                Ok(open) => {
                    turn.open = Some(open);
                    turn.id += 1;
                    turn.ops = 0;
                }
                Err(e) => {
                    group.arrivals.fetch_sub(1, Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
        turn.ops += 1;
        let first = turn.ops == 1;
        let Some(open) = turn.open.as_ref() else {
            group.arrivals.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::internal(
                "storage: a tenant's group has no transaction",
            ));
        };
        // The group's first write needs no savepoint: if it fails, rolling the
        // group back undoes it alone (the others join only after it). A write's
        // statements are held back and sent with the next one that is read, or
        // with the commit: a write that reads nothing of the database costs no
        // round trip of its own.
        let tx = PgTx::new(
            &open.conn,
            &open.pending,
            Some(GroupWrite {
                tenant,
                group: &group,
                keys: &open.keys,
                live: &open.live,
                broken: &open.broken,
                first,
                mark: Cell::new(open.pending.borrow().len()),
                savepoint: Cell::new(false),
            }),
        );
        let out = catch_unwind(AssertUnwindSafe(|| f(&tx)));
        let succeeded = matches!(out, Ok(Ok(_)));
        if !succeeded || (tx.wrote.get() && !tx.kept_live.get()) {
            open.live.borrow_mut().clear();
        }
        tx.end_write(succeeded);
        let outcome = open.outcome.clone();
        // true: the group goes on (or commits); false: it is rolled back.
        let keep = succeeded || !first;
        let left = group.arrivals.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 || turn.ops >= MAX_GROUP || !keep {
            let ops = turn.ops;
            let ending = turn.open.take();
            // The next write may open the next group while this one ends.
            drop(turn);
            outcome.set(match ending {
                Some(open) => self.end_group(open, keep, ops, tenant, &group),
                None => Err(ApiError::internal(
                    "storage: a tenant's group has no transaction",
                )),
            });
        } else {
            drop(turn);
        }
        let failure = outcome.wait().err();
        match out {
            Err(panic) => resume_unwind(panic),
            Ok(Ok(v)) => failure.map_or(Ok(v), Err),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Ends a group of `ops` writes: commits it (`keep`) or rolls it back.
    /// Everything the group held back goes with its commit: if any of it fails,
    /// the commit does, and no write of the group is kept.
    /// A group that commits leaves what it read for the next one (see
    /// [`TenantGroup::kept`]), before its `COMMIT` frees the tenant's lock.
    fn end_group(
        &self,
        open: OpenGroup,
        keep: bool,
        ops: usize,
        tenant: &str,
        group: &TenantGroup,
    ) -> Result<(), ApiError> {
        let end = PgTx::new(&open.conn, &open.pending, None);
        let broken = open.broken.borrow_mut().take();
        let ended = if let Some(e) = broken {
            end.discard();
            let _ = end.control("ROLLBACK");
            Err(e)
        } else if keep {
            // Kept with the tip the group reached; a group that forgot it (its
            // live state was emptied), or that wrote to another tenant's ledger,
            // leaves nothing. If the commit fails, the tenant's tip stays the one
            // before and no group takes this.
            let live = open.live.take();
            if live.tip(tenant).is_some() && live.tips_only_of(tenant) {
                *group.keep() = Some(live);
            }
            let started = std::time::Instant::now();
            end.control("COMMIT")
                .inspect(|()| self.stats.committed(started, ops))
                .inspect_err(|_| {
                    end.discard();
                    let _ = end.control("ROLLBACK");
                })
        } else {
            end.discard();
            // The group's one write failed and answers its own error; a failed
            // rollback leaves nothing kept either.
            let _ = end.control("ROLLBACK");
            Ok(())
        };
        self.put_back(open.conn.into_inner());
        ended.map_err(ApiError::from)
    }

    /// A transaction for a new group of `tenant`'s: begun, the tenant locked,
    /// with what the last group here read of it if the tenant's ledger tip is
    /// still the one that group reached.
    ///
    /// When that was not so for the last group opened here (the tenant's
    /// requests reach other replicas too), the group also reads `intent`, the
    /// one its first write decides on, in the same round trip as its lock:
    /// otherwise that write would read it once the lock is granted, one round
    /// trip more during which the tenant's other replicas wait.
    fn open_group(
        &self,
        runtime: &tokio::runtime::Runtime,
        tenant: &str,
        intent: Option<Uuid>,
        group: &TenantGroup,
    ) -> Result<OpenGroup, ApiError> {
        let conn = RefCell::new(self.take(runtime)?);
        let pending = RefCell::new(Vec::new());
        let live = RefCell::new(LiveState::default());
        let intent = intent
            .filter(|_| group.moved.load(Ordering::Relaxed))
            .map(|i| i.to_string());
        let begun = {
            let tx = PgTx::new(&conn, &pending, None);
            tx.control_later("BEGIN");
            // The lock, then the serving floor and what every decision of the
            // group reads of the tenant, in one round trip.
            tx.execute_later(
                "SELECT id FROM tenants WHERE id = ?1 FOR UPDATE",
                super::args![tenant],
            )
            .and_then(|()| tx.start_group(tenant, intent.as_deref(), &mut live.borrow_mut()))
        };
        let mut moved = true;
        if begun.is_ok()
            && let Some(mut kept) = group.keep().take()
        {
            let mut read = live.borrow_mut();
            if kept.tip(tenant).is_some() && kept.tip(tenant) == read.tip(tenant) {
                // As read just now under the lock: the policy's version is checked
                // on every group, whatever the ledger says.
                kept.set_policy_version(tenant, read.policy_version(tenant).flatten());
                kept.take_intents(&mut read);
                *read = kept;
                moved = false;
            }
        }
        group.moved.store(moved, Ordering::Relaxed);
        match begun {
            Ok(()) => Ok(OpenGroup {
                conn,
                live,
                pending,
                broken: RefCell::new(None),
                outcome: Arc::new(Outcome::default()),
                keys: KeysRead::default(),
            }),
            Err(e) => {
                {
                    let tx = PgTx::new(&conn, &pending, None);
                    tx.discard();
                    let _ = tx.control("ROLLBACK");
                }
                self.put_back(conn.into_inner());
                Err(e.into())
            }
        }
    }
}

impl TenantGroup {
    fn lock(&self) -> MutexGuard<'_, Turn> {
        // Every path leaves the turn consistent before it can panic (the write
        // itself runs under catch_unwind), so a poisoned lock is usable.
        self.turn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn waiting_keys(&self) -> MutexGuard<'_, Vec<String>> {
        // Only pushed to and removed from whole: a poisoned lock holds a whole list.
        self.waiting_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn keep(&self) -> MutexGuard<'_, Option<LiveState>> {
        // Only taken or replaced whole: a poisoned lock holds a whole value.
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

/// The channel replicas hear key revocations on.
const KEYS_CHANNEL: &str = "paybond_keys";

/// Listens on [`KEYS_CHANNEL`], counting what it hears into `generation`; a lost
/// connection counts too (something may have been missed) and is opened again.
fn listen_for_keys(
    runtime: &tokio::runtime::Runtime,
    url: &DatabaseUrl,
    generation: Arc<std::sync::atomic::AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    let target = url.expose_secret().to_owned();
    runtime.spawn(async move {
        loop {
            match tokio_postgres::connect(&target, NoTls).await {
                Ok((client, mut connection)) => {
                    let heard = generation.clone();
                    let messages = tokio::spawn(async move {
                        let mut stream =
                            futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                        while let Some(message) = futures_util::StreamExt::next(&mut stream).await {
                            match message {
                                Ok(tokio_postgres::AsyncMessage::Notification(n))
                                    if n.channel() == KEYS_CHANNEL =>
                                {
                                    heard.fetch_add(1, Ordering::SeqCst);
                                }
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                    });
                    if client
                        .batch_execute(&format!("LISTEN {KEYS_CHANNEL}"))
                        .await
                        .is_ok()
                    {
                        let _ = messages.await;
                    } else {
                        messages.abort();
                    }
                    tracing::warn!("the key revocation listener lost its connection");
                }
                Err(e) => tracing::warn!(error = %e, "key revocation listener: cannot connect"),
            }
            generation.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(HEARTBEAT).await;
        }
    })
}

impl PgStore {
    /// What this replica has heard of key revocations (see `keys_generation`).
    pub(crate) fn keys_generation(&self) -> u64 {
        self.keys_generation
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Tells every replica that a key was revoked: they read keys again.
    pub(crate) fn keys_changed(&self) -> Result<(), ApiError> {
        let runtime = self.handle()?;
        let conn = self.take(runtime)?;
        let client = conn.client.clone();
        let sent = on_runtime(runtime, async move {
            client
                .batch_execute(&format!("NOTIFY {KEYS_CHANNEL}"))
                .await
        });
        self.put_back(conn);
        sent
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
        // A replica that stops says so, so that it does not hold back a migration
        // until its heartbeat lapses (a second at most: it is only a courtesy).
        if let (Some(rt), Some((id, heartbeat))) = (&self.runtime, self.replica.take()) {
            heartbeat.abort();
            let client = self
                .pool
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .idle
                .last()
                .map(|c| c.client.clone());
            if let Some(client) = client {
                let (send, receive) = std::sync::mpsc::sync_channel(1);
                rt.spawn(async move {
                    let params: [&(dyn ToSql + Sync); 1] = [&id];
                    let gone = client.execute("DELETE FROM replicas WHERE id = $1", &params);
                    let _ = send.send(tokio::time::timeout(HEARTBEAT, gone).await);
                });
                let _ = receive.recv_timeout(HEARTBEAT);
            }
        }
        // The engine may be dropped on an async thread, where a runtime cannot block.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Opens one connection, its driver task on `runtime`.
fn connect(runtime: &tokio::runtime::Runtime, url: &DatabaseUrl) -> Result<Conn, ApiError> {
    let target = url.expose_secret().to_owned();
    let client = on_runtime(runtime, async move {
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
/// refuses a database a newer build migrated past what this one can serve, and
/// a migration that a replica still serving could not serve, changing nothing.
async fn migrate(client: &Client, place: &str) -> Result<(), ApiError> {
    migrate_with(client, place, schema::MIGRATIONS, schema::LATEST).await
}

/// [`migrate`] as a build knowing `migrations` (up to `latest`) runs it.
async fn migrate_with(
    client: &Client,
    place: &str,
    migrations: &[schema::Migration],
    latest: i64,
) -> Result<(), ApiError> {
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
        // The serving floor, once the migration that made it is applied.
        let mut floor: Option<i64> = if newest.is_some_and(|n| n >= schema::FLOOR_SINCE) {
            client
                .query_opt("SELECT served_from FROM schema_floor WHERE id = 1", &[])
                .await?
                .map(|r| r.get(0))
        } else {
            None
        };
        if let Some(newest) = newest {
            schema::check_served(newest, floor, latest, place)?;
        }
        for m in migrations {
            if newest.is_some_and(|n| m.version <= n) {
                continue;
            }
            // Replicas register from the floor's migration on.
            if floor.is_some() {
                refuse_if_serving(client, m, place).await?;
            }
            // A migration that raises the floor waits for every transaction that
            // read it (each holds its table lock to its end) and holds back those
            // that would, until it commits: no replica writes across it.
            let fence = if floor.is_some_and(|f| m.served_from > f) {
                "LOCK TABLE schema_floor IN ACCESS EXCLUSIVE MODE;"
            } else {
                ""
            };
            let now = jiff::Timestamp::now().as_millisecond();
            client
                .batch_execute(&format!(
                    "BEGIN; {fence} {}; INSERT INTO schema_migrations (version, applied_ms) VALUES ({}, {now}); COMMIT;",
                    schema::apply_sql(m),
                    m.version
                ))
                .await?;
            if m.version >= schema::FLOOR_SINCE {
                floor = Some(floor.map_or(m.served_from, |f| f.max(m.served_from)));
            }
        }
        Ok::<(), ApiError>(())
    }
    .await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    result
}

/// Refuses `m` while a replica that could not serve the database after it is
/// serving (its heartbeat is younger than [`schema::REPLICA_TTL_MS`]).
async fn refuse_if_serving(
    client: &Client,
    m: &schema::Migration,
    place: &str,
) -> Result<(), ApiError> {
    let now = jiff::Timestamp::now().as_millisecond();
    let serving = client
        .query(
            "SELECT id, schema_version, seen_ms FROM replicas
             WHERE seen_ms > $1 AND schema_version < $2 ORDER BY id",
            &[&(now - schema::REPLICA_TTL_MS), &m.served_from],
        )
        .await?;
    if serving.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = serving
        .iter()
        .map(|r| {
            let (id, version, seen): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
            format!(
                "{id} (schema version {version}, seen {} ms ago)",
                (now - seen).max(0)
            )
        })
        .collect();
    Err(ApiError::unusable(format!(
        "{place} is served by replicas that could not serve it after migration {} (it \
         needs builds from schema version {} on): {}. Stop or upgrade them first (a replica \
         counts as serving until {} s after its last heartbeat). Nothing in {place} was changed.",
        m.version,
        m.served_from,
        named.join(", "),
        schema::REPLICA_TTL_MS / 1000
    )))
}

/// How often a replica says it is serving.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Registers this replica as serving with this build's schema version, and keeps
/// its heartbeat on a connection of its own until the store's runtime stops. A
/// lost connection is opened again at the next beat.
fn register_replica(
    runtime: &tokio::runtime::Runtime,
    url: &DatabaseUrl,
) -> Result<(String, tokio::task::JoinHandle<()>), ApiError> {
    let id = format!(
        "replica-{}-{}",
        std::process::id(),
        &Uuid::new_v4().simple().to_string()[..8]
    );
    let target = url.expose_secret().to_owned();
    let beat_id = id.clone();
    let first = on_runtime(runtime, {
        let target = target.clone();
        let id = id.clone();
        async move {
            let (client, connection) = tokio_postgres::connect(&target, NoTls).await?;
            tokio::spawn(connection);
            beat(&client, &id).await?;
            // Replicas silent for an hour are forgotten, once per start.
            let hour_ago = jiff::Timestamp::now().as_millisecond() - 3_600_000;
            client
                .execute("DELETE FROM replicas WHERE seen_ms < $1", &[&hour_ago])
                .await?;
            Ok(client)
        }
    })?;
    let heartbeat = runtime.spawn(async move {
        let mut client = Some(first);
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = match tokio_postgres::connect(&target, NoTls).await {
                    Ok((c, connection)) => {
                        tokio::spawn(connection);
                        Some(c)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "replica heartbeat: cannot connect");
                        None
                    }
                };
            }
            if let Some(c) = &client
                && let Err(e) = beat(c, &beat_id).await
            {
                tracing::warn!(error = %e, "replica heartbeat failed");
            }
        }
    });
    Ok((id, heartbeat))
}

/// One heartbeat of replica `id`.
async fn beat(client: &Client, id: &str) -> Result<(), tokio_postgres::Error> {
    let now = jiff::Timestamp::now().as_millisecond();
    client
        .execute(
            "INSERT INTO replicas (id, schema_version, started_ms, seen_ms) VALUES ($1, $2, $3, $3)
             ON CONFLICT (id) DO UPDATE SET seen_ms = EXCLUDED.seen_ms",
            &[&id, &schema::LATEST, &now],
        )
        .await
        .map(drop)
}

/// A transaction as an operation sees it.
struct PgTx<'a> {
    conn: &'a RefCell<Conn>,
    /// The transaction's statements not sent yet: sent with the next one that is,
    /// pipelined (one round trip), the commit at the latest.
    pending: &'a RefCell<Vec<Later>>,
    /// In a tenant's group: the write's place in it.
    group: Option<GroupWrite<'a>>,
    wrote: Cell<bool>,
    kept_live: Cell<bool>,
}

/// A write in a tenant's group.
struct GroupWrite<'a> {
    /// The tenant, locked when the group began.
    tenant: &'a str,
    group: &'a TenantGroup,
    keys: &'a KeysRead,
    live: &'a RefCell<LiveState>,
    /// Set when the group's held-back writes could not be sent.
    broken: &'a RefCell<Option<StoreError>>,
    /// The write opened the group: it has no savepoint (if it fails, the group
    /// is rolled back, and holds nothing else).
    first: bool,
    /// Where the write's own statements start among those not sent yet.
    mark: Cell<usize>,
    /// The write's savepoint is set (it was sent before the write's first
    /// statement that was).
    savepoint: Cell<bool>,
}

/// A statement whose only outcome that matters is success, sent later.
enum Later {
    /// Transaction control (`SAVEPOINT op`).
    Control(&'static str),
    /// A held-back write, merged with others of its kind when sent
    /// ([`held::coalesce`]).
    Write(Held),
}

/// A statement of [`Later`]'s, ready to send.
enum Ready {
    Control(&'static str),
    Execute(Statement, Vec<Value>),
}

impl Ready {
    async fn run(self, client: &Client) -> Result<(), tokio_postgres::Error> {
        match self {
            Self::Control(sql) => client.batch_execute(sql).await,
            Self::Execute(statement, args) => {
                client.execute(&statement, &params(&args)).await.map(drop)
            }
        }
    }
}

/// Awaits `first` and then `last`, started in that order so that their requests
/// leave in that order (a request leaves when its future is first polled); the
/// first failure, in that order.
async fn in_order<T>(
    client: &Client,
    first: Vec<Ready>,
    last: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, tokio_postgres::Error> {
    let mut runs: Vec<_> = first
        .into_iter()
        .map(|l| Some(Box::pin(l.run(client))))
        .collect();
    let mut last = std::pin::pin!(last);
    let mut out = None;
    std::future::poll_fn(|cx| {
        for run in &mut runs {
            if let Some(f) = run {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(Ok(())) => *run = None,
                    std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
                    std::task::Poll::Pending => {}
                }
            }
        }
        if out.is_none() {
            match last.as_mut().poll(cx) {
                std::task::Poll::Ready(Ok(v)) => out = Some(v),
                std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => {}
            }
        }
        match (runs.iter().all(Option::is_none), out.take()) {
            (true, Some(v)) => std::task::Poll::Ready(Ok(v)),
            (_, v) => {
                out = v;
                std::task::Poll::Pending
            }
        }
    })
    .await
}

impl<'a> PgTx<'a> {
    fn new(
        conn: &'a RefCell<Conn>,
        pending: &'a RefCell<Vec<Later>>,
        group: Option<GroupWrite<'a>>,
    ) -> Self {
        Self {
            conn,
            pending,
            group,
            wrote: Cell::new(false),
            kept_live: Cell::new(false),
        }
    }

    /// Everything not sent yet, to be sent now: a write that joined a group sets
    /// its savepoint first, in front of its own statements. Held-back writes are
    /// merged between transaction controls (never across one) and prepared.
    fn take_pending(&self) -> Result<Vec<Ready>, StoreError> {
        let pending = {
            let mut pending = self.pending.borrow_mut();
            if let Some(g) = &self.group {
                if !g.first && !g.savepoint.get() {
                    let at = g.mark.get().min(pending.len());
                    pending.insert(at, Later::Control("SAVEPOINT op"));
                    g.savepoint.set(true);
                }
                g.mark.set(0);
            }
            std::mem::take(&mut *pending)
        };
        let mut ready = Vec::with_capacity(pending.len());
        let mut writes = Vec::new();
        let mut prepared = Ok(());
        for later in pending {
            match later {
                Later::Write(w) => writes.push(w),
                Later::Control(sql) => {
                    prepared = prepared.and_then(|()| {
                        self.prepare_writes(std::mem::take(&mut writes), &mut ready)
                    });
                    ready.push(Ready::Control(sql));
                }
            }
        }
        match prepared.and_then(|()| self.prepare_writes(writes, &mut ready)) {
            Ok(()) => Ok(ready),
            Err(e) => {
                // Writes of operations that were answered Ok may be among those
                // lost: the group must not commit.
                if let Some(g) = &self.group {
                    *g.broken.borrow_mut() = Some(e.clone());
                }
                Err(e)
            }
        }
    }

    /// `writes`, merged and prepared, onto `ready`.
    fn prepare_writes(&self, writes: Vec<Held>, ready: &mut Vec<Ready>) -> Result<(), StoreError> {
        for m in held::coalesce(writes) {
            ready.push(Ready::Execute(self.statement(m.sql.as_str())?, m.args));
        }
        Ok(())
    }

    /// The write in a group has ended, well or not: its savepoint is released
    /// (after it was rolled back to, if the write failed) and what it held back
    /// is kept or dropped, all sent with the next statement. Nothing is added
    /// for a write that sent nothing.
    fn end_write(&self, succeeded: bool) {
        let Some(g) = &self.group else {
            return;
        };
        let mut pending = self.pending.borrow_mut();
        if !succeeded {
            pending.truncate(g.mark.get());
        }
        if g.savepoint.get() {
            if succeeded {
                // In front of what it still holds back (everything it held since
                // it last sent): that is kept, and may merge with the writes of
                // the operations after it.
                let at = g.mark.get().min(pending.len());
                pending.insert(at, Later::Control("RELEASE SAVEPOINT op"));
            } else {
                pending.push(Later::Control("ROLLBACK TO SAVEPOINT op"));
                pending.push(Later::Control("RELEASE SAVEPOINT op"));
            }
        }
    }

    /// Sends what is pending, then `then` (if any), in one round trip: the first
    /// failure, if one fails.
    fn send(&self, then: Option<Ready>) -> Result<(), StoreError> {
        let mut later = self.take_pending()?;
        later.extend(then);
        if later.is_empty() {
            return Ok(());
        }
        let client = self.conn.borrow().client.clone();
        run(in_order(&client, later, async { Ok(()) }))
    }

    /// Sends `sql` (transaction control) with what is pending.
    fn control(&self, sql: &'static str) -> Result<(), StoreError> {
        self.send(Some(Ready::Control(sql)))
    }

    /// Sends `sql` (transaction control) with the next statement.
    fn control_later(&self, sql: &'static str) {
        self.pending.borrow_mut().push(Later::Control(sql));
    }

    /// Refuses to go on once a newer build raised the database's serving floor
    /// past this build ([`schema::outdated`]): a replica never writes under a
    /// schema it does not know.
    fn check_floor(&self) -> Result<(), ApiError> {
        let rows = self.call(
            "SELECT served_from FROM schema_floor WHERE id = 1",
            &[],
            true,
        )?;
        let floor: Option<i64> = match rows.0.first() {
            Some(row) => row.try_get(0).map_err(ApiError::from)?,
            None => None,
        };
        match floor {
            Some(floor) if floor > schema::LATEST => Err(schema::outdated(floor)),
            _ => Ok(()),
        }
    }

    /// [`Self::check_floor`] for a tenant's new group, with what each of its
    /// decisions reads of the tenant (its policy version and its ledger tip) read
    /// in the same statement and kept in the group's live state; and `intent`,
    /// if given, read in the same round trip and kept there too.
    fn start_group(
        &self,
        tenant: &str,
        intent: Option<&str>,
        live: &mut LiveState,
    ) -> Result<(), StoreError> {
        let start = "SELECT (SELECT served_from FROM schema_floor WHERE id = 1),
                 (SELECT version FROM tenant_policies WHERE tenant_id = ?1),
                 tip.seq, tip.hash
             FROM (SELECT 1) AS one
             LEFT JOIN (SELECT seq, hash FROM ledger WHERE tenant_id = ?1
                 ORDER BY seq DESC LIMIT 1) AS tip ON true";
        let (rows, intent_rows) = match intent {
            None => (self.call(start, super::args![tenant], true)?.0, Vec::new()),
            Some(intent) => self.call_both(
                (start, super::args![tenant]),
                (super::ops::spend::INTENT, super::args![intent, tenant]),
            )?,
        };
        let Some(row) = rows.first() else {
            return Err(StoreError::Failed(
                "storage: a group's first read returned no row".to_owned(),
            ));
        };
        let floor: Option<i64> = row.try_get(0).map_err(StoreError::from)?;
        if let Some(floor) = floor.filter(|f| *f > schema::LATEST) {
            return Err(StoreError::Outdated { floor });
        }
        let version: Option<i64> = row.try_get(1).map_err(StoreError::from)?;
        let seq: Option<i64> = row.try_get(2).map_err(StoreError::from)?;
        let hash: Option<String> = row.try_get(3).map_err(StoreError::from)?;
        live.set_policy_version(tenant, version.and_then(|v| u64::try_from(v).ok()));
        match (seq.and_then(|s| u64::try_from(s).ok()), hash) {
            (Some(seq), Some(hash)) => live.set_tip(tenant, seq, hash),
            _ => live.set_tip(tenant, 0, crate::engine::ledger::GENESIS.to_owned()),
        }
        if let (Some(intent), Some(row)) = (intent, intent_rows.first()) {
            let row = IntentRow::read(&read_row(row)?)?;
            live.keep_read(tenant, intent, row);
        }
        Ok(())
    }

    /// Drops what is pending (the transaction is rolled back).
    fn discard(&self) {
        self.pending.borrow_mut().clear();
    }

    fn statement(&self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.conn.borrow().statements.get(sql) {
            return Ok(s.clone());
        }
        let client = self.conn.borrow().client.clone();
        let text = dollar_placeholders(sql);
        let prepared = run(async move { client.prepare(&text).await })?;
        self.conn
            .borrow_mut()
            .statements
            .insert(sql.to_owned(), prepared.clone());
        Ok(prepared)
    }

    /// Runs `statement` with `args`, after what is pending, in one round trip:
    /// rows, or the number changed.
    fn call(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        rows: bool,
    ) -> Result<(Vec<tokio_postgres::Row>, u64), StoreError> {
        let statement = self.statement(sql)?;
        let client = self.conn.borrow().client.clone();
        let owned: Vec<Value> = args.iter().map(Value::from).collect();
        let later = self.take_pending()?;
        let params = params(&owned);
        let this = async {
            if rows {
                client.query(&statement, &params).await.map(|r| (r, 0))
            } else {
                client
                    .execute(&statement, &params)
                    .await
                    .map(|n| (Vec::new(), n))
            }
        };
        run(in_order(&client, later, this))
    }
}

impl PgTx<'_> {
    /// Runs two queries, after what is pending, in one round trip: their rows.
    fn call_both(
        &self,
        (first, first_args): (&str, &[Arg<'_>]),
        (second, second_args): (&str, &[Arg<'_>]),
    ) -> Result<(Vec<tokio_postgres::Row>, Vec<tokio_postgres::Row>), StoreError> {
        let (first, second) = (self.statement(first)?, self.statement(second)?);
        let client = self.conn.borrow().client.clone();
        let owned = |args: &[Arg<'_>]| args.iter().map(Value::from).collect::<Vec<_>>();
        let (first_owned, second_owned) = (owned(first_args), owned(second_args));
        let (first_params, second_params) = (params(&first_owned), params(&second_owned));
        let later = self.take_pending()?;
        // `try_join` polls the first query before the second, every time: their
        // requests leave in that order.
        let both = futures_util::future::try_join(
            client.query(&first, &first_params),
            client.query(&second, &second_params),
        );
        run(in_order(&client, later, both))
    }

    /// A statement that may write anything: what the group read ahead of the
    /// idempotency keys may no longer hold.
    fn forget_keys(&self) {
        if let Some(g) = &self.group {
            g.keys.answers.borrow_mut().clear();
        }
    }
}

/// `args` as a statement's parameters.
fn params(args: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

impl super::sql::Sql for PgTx<'_> {
    fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        self.wrote.set(true);
        self.forget_keys();
        Ok(self.call(sql, args, false)?.1)
    }

    fn query(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        if !sql.trim_start().starts_with("SELECT") {
            self.wrote.set(true);
            self.forget_keys();
        }
        self.call(sql, args, true)?.0.iter().map(read_row).collect()
    }

    fn query_past_held(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        may_change: &dyn Fn(&Held) -> bool,
    ) -> Result<Vec<Row>, StoreError> {
        // Only held-back writes may stay behind: a pending transaction control
        // (`BEGIN`, a savepoint) goes first, and with it everything pending.
        let past = self.pending.borrow().iter().all(|l| match l {
            Later::Write(w) => !may_change(w),
            Later::Control(_) => false,
        });
        if !past || !sql.trim_start().starts_with("SELECT") {
            return self.query(sql, args);
        }
        let statement = self.statement(sql)?;
        let client = self.conn.borrow().client.clone();
        let owned: Vec<Value> = args.iter().map(Value::from).collect();
        let params = params(&owned);
        run(async { client.query(&statement, &params).await })?
            .iter()
            .map(read_row)
            .collect()
    }

    fn execute_later(&self, sql: &'static str, args: &[Arg<'_>]) -> Result<(), StoreError> {
        self.wrote.set(true);
        let held = Held::new(sql, args.iter().map(Value::from).collect());
        if let Some(g) = &self.group
            && held.may_write("idempotency")
        {
            match (sql == STORE_KEY, held.args.get(1)) {
                (true, Some(Value::Text(key))) => {
                    g.keys.stored.borrow_mut().insert(key.clone());
                }
                _ => self.forget_keys(),
            }
        }
        self.pending.borrow_mut().push(Later::Write(held));
        Ok(())
    }

    fn kept_answer_rows(&self, tenant: &str, key: &str) -> Result<Vec<Row>, StoreError> {
        let alone = || {
            self.query_past_held(
                super::ops::tenants::KEPT_ANSWER,
                super::args![tenant, key],
                &|held: &Held| may_change_key(held, tenant, key),
            )
        };
        let Some(g) = self.group.as_ref().filter(|g| g.tenant == tenant) else {
            return alone();
        };
        if g.keys.stored.borrow().contains(key) {
            return alone();
        }
        if let Some(answer) = g.keys.answers.borrow_mut().remove(key) {
            return Ok(answer.into_iter().collect());
        }
        // This key, and those of the writes waiting behind this one that are
        // neither read nor stored yet.
        let mut keys = vec![key.to_owned()];
        {
            let (answers, stored) = (g.keys.answers.borrow(), g.keys.stored.borrow());
            for waiting in g.group.waiting_keys().iter() {
                if keys.len() == KEYS_AHEAD {
                    break;
                }
                if !keys.contains(waiting)
                    && !answers.contains_key(waiting)
                    && !stored.contains(waiting)
                {
                    keys.push(waiting.clone());
                }
            }
        }
        if keys.len() == 1 {
            return alone();
        }
        #[cfg(test)]
        g.group.keys_read_ahead.fetch_add(1, Ordering::Relaxed);
        // The statement takes KEYS_AHEAD keys: the list repeats to fill it.
        let args: Vec<Arg<'_>> = std::iter::once(Arg::Text(tenant.into()))
            .chain(
                keys.iter()
                    .cycle()
                    .take(KEYS_AHEAD)
                    .map(|k| Arg::Text(k.as_str().into())),
            )
            .collect();
        let rows = self.query_past_held(&KEPT_ANSWERS, &args, &|held: &Held| {
            keys.iter().any(|k| may_change_key(held, tenant, k))
        })?;
        let mut found = HashMap::with_capacity(rows.len());
        for Row(mut values) in rows {
            if values.is_empty() {
                return Err(StoreError::Failed(
                    "storage: a kept answer's row has no key".to_owned(),
                ));
            }
            if let Value::Text(k) = values.remove(0) {
                found.insert(k, Row(values));
            }
        }
        let mine = found.remove(key);
        let mut answers = g.keys.answers.borrow_mut();
        for k in keys.into_iter().skip(1) {
            let answer = found.remove(&k);
            answers.insert(k, answer);
        }
        Ok(mine.into_iter().collect())
    }
}

impl Tx for PgTx<'_> {
    fn lock_tenant(&self, tenant_id: &str) -> Result<(), StoreError> {
        if self.group.as_ref().is_some_and(|g| g.tenant == tenant_id) {
            // The group locked it when it began.
            return Ok(());
        }
        self.query(
            "SELECT id FROM tenants WHERE id = ?1 FOR UPDATE",
            super::args![tenant_id],
        )
        .map(drop)
    }

    fn live(&self) -> Option<&RefCell<LiveState>> {
        self.group.as_ref().map(|g| g.live)
    }

    fn keep_live(&self) {
        self.kept_live.set(true);
    }
}

fn read_row(row: &tokio_postgres::Row) -> Result<Row, StoreError> {
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
            return Err(StoreError::Failed(format!(
                "storage: column {} has type {ty}, which the engine does not read",
                column.name()
            )));
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

impl ToSql for Value {
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
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on setup failures

    use super::*;
    use crate::store::args;

    /// A new, empty database on the test cluster; `None` when the tests run
    /// without PostgreSQL (`PAYBOND_SKIP_POSTGRES=1`).
    pub(crate) fn test_database() -> Option<DatabaseUrl> {
        let Ok(base) = std::env::var("PAYBOND_TEST_DATABASE_URL") else {
            assert_eq!(
                std::env::var("PAYBOND_SKIP_POSTGRES").as_deref(),
                Ok("1"),
                "this test needs PostgreSQL: run it with `bash .ci/test`, or set \
                 PAYBOND_TEST_DATABASE_URL, or skip it with PAYBOND_SKIP_POSTGRES=1"
            );
            return None;
        };
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = base.clone();
        let create = format!("CREATE DATABASE {name}");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(&admin, NoTls).await.unwrap();
                tokio::spawn(connection);
                client.batch_execute(&create).await.unwrap();
            });
        })
        .join()
        .unwrap();
        let (prefix, _) = base.rsplit_once('/').unwrap();
        Some(DatabaseUrl::parse(&format!("{prefix}/{name}")).unwrap())
    }

    /// A write that says nothing of what it reads.
    const NOTHING: ReadAhead<'static> = ReadAhead {
        intent: None,
        key: None,
    };

    /// A write that decides on `intent`.
    fn ahead(intent: Option<&str>) -> ReadAhead<'static> {
        ReadAhead {
            intent: intent.map(|i| Uuid::parse_str(i).unwrap()),
            key: None,
        }
    }

    /// The intent the read-ahead test decides on, and one that is not the tenant's.
    const INTENT_I: &str = "01900000-0000-7000-8000-000000000001";
    const NO_SUCH_INTENT: &str = "01900000-0000-7000-8000-0000000000ff";

    fn put(tx: &dyn Tx, key: &str) -> Result<(), ApiError> {
        Ok(tx.execute_later(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)",
            args![key, b"v".as_slice()],
        )?)
    }

    /// Tenant `t`, whose writes the tests group.
    fn add_tenant_t(store: &PgStore) {
        store
            .write(|tx| {
                tx.execute(
                    "INSERT INTO tenants (id, name, environment, created_ms) VALUES ('t', 't', 'sandbox', 0)",
                    args![],
                )
                .map(drop)
                .map_err(ApiError::from)
            })
            .unwrap();
    }

    /// A replica on a test database, with tenant `t` (none without one).
    fn store_of_t() -> Option<Arc<PgStore>> {
        let store = Arc::new(PgStore::open(&test_database()?).unwrap());
        add_tenant_t(&store);
        Some(store)
    }

    /// Two replicas on a test database, with tenant `t` (none without one).
    fn two_replicas_of_t() -> Option<(PgStore, PgStore)> {
        let url = test_database()?;
        let store = PgStore::open(&url).unwrap();
        let other = PgStore::open(&url).unwrap();
        add_tenant_t(&store);
        Some((store, other))
    }

    /// An entry on `tenant`'s ledger at `at_ms`.
    fn entry(tx: &dyn Tx, tenant: &str, at_ms: i64) -> Result<(), ApiError> {
        crate::engine::ledger::append(tx, tenant, "test.entry", serde_json::json!({}), at_ms)
            .map(drop)
    }

    fn stored(store: &PgStore) -> Vec<String> {
        store
            .read(|tx| {
                Ok(tx.query_map(
                    "SELECT key FROM meta WHERE key LIKE 'op-%' ORDER BY key",
                    args![],
                    |r| r.get(0),
                )?)
            })
            .unwrap()
    }

    /// Runs [`migrate_with`] on `url` as a build knowing `extra` migrations past
    /// this one's would.
    fn as_newer_build(url: &DatabaseUrl, extra: &[schema::Migration]) -> Result<(), ApiError> {
        let target = url.expose_secret().to_owned();
        let mut migrations = schema::MIGRATIONS.to_vec();
        migrations.extend_from_slice(extra);
        let latest = migrations.last().map_or(0, |m| m.version);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(&target, NoTls).await.unwrap();
                tokio::spawn(connection);
                migrate_with(&client, "the test database", &migrations, latest).await
            })
        })
        .join()
        .unwrap()
    }

    fn newest(store: &PgStore) -> i64 {
        store
            .read(|tx| {
                Ok(
                    tx.query_one("SELECT MAX(version) FROM schema_migrations", args![], |r| {
                        r.get(0)
                    })?,
                )
            })
            .unwrap()
    }

    #[test]
    fn a_rolling_upgrade_serves_on_or_is_refused_and_an_outdated_replica_writes_nothing() {
        let Some(url) = test_database() else {
            return;
        };
        let old = PgStore::open(&url).unwrap();
        let (old_id, _) = old.replica.as_ref().unwrap();
        let old_id = old_id.clone();
        add_tenant_t(&old);
        let expand = schema::Migration {
            version: schema::LATEST + 1,
            served_from: schema::LATEST,
            sql: "CREATE TABLE newer_notes (id BIGINT PRIMARY KEY)",
        };
        let breaking = schema::Migration {
            version: schema::LATEST + 2,
            served_from: schema::LATEST + 2,
            sql: "CREATE TABLE breaking_notes (id BIGINT PRIMARY KEY)",
        };

        // A newer build whose migration this one can serve: it applies while this
        // replica serves, and this one goes on writing, in a group and alone; a
        // replica of this build started now is served too.
        as_newer_build(&url, &[expand]).unwrap();
        assert_eq!(newest(&old), schema::LATEST + 1);
        old.write_as("t", NOTHING, |tx| put(tx, "op-1")).unwrap();
        old.write(|tx| put(tx, "op-2")).unwrap();
        drop(PgStore::open(&url).unwrap());

        // A migration this build cannot serve is refused while it serves, naming
        // it; nothing changes.
        let refused = as_newer_build(&url, &[expand, breaking]).unwrap_err();
        assert!(
            refused.message.contains(&old_id)
                && refused
                    .message
                    .contains(&format!("schema version {}", schema::LATEST))
                && refused.message.contains("Nothing in"),
            "{}",
            refused.message
        );
        assert_eq!(newest(&old), schema::LATEST + 1);

        // Its heartbeat stops (a replica paused or cut off, not dead): once every
        // replica of this build has been silent past the TTL, the migration
        // applies, and the paused replica, resuming, writes nothing.
        if let Some((_, heartbeat)) = &old.replica {
            heartbeat.abort();
        }
        std::thread::sleep(HEARTBEAT * 2);
        old.write(|tx| {
            tx.execute("UPDATE replicas SET seen_ms = 0", args![])
                .map(drop)
                .map_err(ApiError::from)
        })
        .unwrap();
        // A write that began before the migration commits before it applies: the
        // migration waits for it.
        let old = Arc::new(old);
        let (began, began_rx) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let writing = std::thread::spawn({
            let old = old.clone();
            move || {
                old.write_as("t", NOTHING, |tx| {
                    put(tx, "op-3")?;
                    began.send(()).unwrap();
                    go_rx.recv().unwrap();
                    Ok(())
                })
                .map(|()| std::time::Instant::now())
            }
        });
        began_rx.recv().unwrap();
        let migrating = std::thread::spawn({
            let url = url.clone();
            move || as_newer_build(&url, &[expand, breaking]).map(|()| std::time::Instant::now())
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!migrating.is_finished(), "the migration did not wait");
        go.send(()).unwrap();
        let committed = writing.join().unwrap().unwrap();
        let migrated = migrating.join().unwrap().unwrap();
        assert!(committed < migrated);
        assert_eq!(newest(&old), schema::LATEST + 2);
        let fenced = old
            .write_as("t", NOTHING, |tx| put(tx, "op-4"))
            .unwrap_err();
        assert_eq!((fenced.status, fenced.code), (503, "replica_outdated"));
        let fenced = old.write(|tx| put(tx, "op-5")).unwrap_err();
        assert_eq!(fenced.code, "replica_outdated");
        assert_eq!(stored(&old), ["op-1", "op-2", "op-3"]);

        // And a replica of this build no longer starts on it.
        let refused = PgStore::open(&url)
            .err()
            .expect("an outdated build started");
        assert!(
            refused.message.contains("newer paybond gateway")
                && refused
                    .message
                    .contains(&format!("from schema version {}", schema::LATEST + 2)),
            "{}",
            refused.message
        );
    }

    #[test]
    fn a_tenants_writes_share_groups_and_a_failed_one_is_undone_alone() {
        let Some(store) = store_of_t() else {
            return;
        };
        // 48 writes of one tenant at once, every third failing after it wrote:
        // a failed write is undone alone, in whichever group it ran, whether it
        // had sent its statements (every other one reads after it writes) or
        // still held them back.
        let answers = concurrently(&store, 48, 0, |tx, i| {
            put(tx, &format!("op-{i:02}"))?;
            if i % 2 == 0 {
                let seen: i64 = tx.query_one(
                    "SELECT COUNT(*) FROM meta WHERE key = ?1",
                    args![format!("op-{i:02}")],
                    |r| r.get(0),
                )?;
                assert_eq!(seen, 1, "a write reads what it wrote");
                // Held back after its savepoint was set: kept or undone with it.
                put(tx, &format!("op-{i:02}-then"))?;
            }
            if i % 3 == 0 {
                return Err(ApiError::conflict("refused", "refused"));
            }
            Ok(())
        });
        let mut kept = Vec::new();
        for (i, out) in &answers {
            assert_eq!(out.is_err(), i % 3 == 0, "write {i}: {out:?}");
            if out.is_ok() {
                kept.push(format!("op-{i:02}"));
                if i % 2 == 0 {
                    kept.push(format!("op-{i:02}-then"));
                }
            }
        }
        kept.sort();
        assert_eq!(stored(&store), kept);
        let groups = store.group("t").lock().id;
        assert!(groups < 40, "{groups} groups for 48 writes");

        // A held-back statement that fails (write 103 writes a row twice) fails
        // with the commit it was sent with: no write of its group is kept, and
        // none is answered Ok.
        let answers = concurrently(&store, 8, 100, |tx, i| {
            put(tx, &format!("op-{i}"))?;
            if i == 103 {
                put(tx, "op-dup")?;
                put(tx, "op-dup")?;
            }
            Ok(())
        });
        for (i, out) in &answers {
            assert_eq!(out.is_ok(), stored(&store).contains(&format!("op-{i}")));
        }
        assert!(answers.iter().any(|(i, out)| *i == 103 && out.is_err()));
        // The tenant is not left locked: a write without a group takes its lock.
        store
            .write(|tx| {
                tx.lock_tenant("t")?;
                put(tx, "op-zz")
            })
            .unwrap();
    }

    #[test]
    fn the_figures_count_each_committed_group_and_no_failed_one() {
        let Some(url) = test_database() else {
            return;
        };
        let store = PgStore::open(&url).unwrap();
        add_tenant_t(&store);
        let (commits, ops) = (
            store.stats().commit_us.count(),
            store.stats().operations.sum(),
        );
        // One write at a time: each is a group of one, committed.
        for n in 0..3 {
            store
                .write_as("t", NOTHING, |tx| put(tx, &format!("op-{n}")))
                .unwrap();
        }
        assert_eq!(store.stats().commit_us.count(), commits + 3);
        assert_eq!(store.stats().operations.count(), commits + 3);
        assert_eq!(store.stats().operations.sum(), ops + 3);
        // A write that fails is rolled back, and a held-back statement that fails
        // fails the commit it went with: neither is counted.
        let refused = store.write_as("t", NOTHING, |tx| {
            put(tx, "op-x")?;
            Err::<(), _>(ApiError::conflict("refused", "refused"))
        });
        assert!(refused.is_err());
        let failed = store.write_as("t", NOTHING, |tx| {
            put(tx, "op-dup")?;
            put(tx, "op-dup")
        });
        assert!(failed.is_err());
        assert_eq!(store.stats().commit_us.count(), commits + 3);
        assert_eq!(store.stats().operations.sum(), ops + 3);
        assert_eq!(stored(&store), ["op-0", "op-1", "op-2"]);
    }

    #[test]
    fn a_group_takes_what_the_last_read_while_the_tenants_ledger_is_unchanged() {
        let Some((store, other)) = two_replicas_of_t() else {
            return;
        };
        // What a group holds in its live state; a mark stands for what its
        // decisions read.
        let marked = |store: &PgStore| {
            store
                .write_as("t", NOTHING, |tx| {
                    let live = tx.live().unwrap();
                    let seen = live.borrow().policy_version("mark").is_some();
                    live.borrow_mut().set_policy_version("mark", Some(1));
                    Ok(seen)
                })
                .unwrap()
        };
        assert!(!marked(&store), "a first group reads everything");
        assert!(
            marked(&store),
            "the next group takes what the last one read"
        );
        assert!(marked(&store));
        // A group of this replica that appends to the tenant's ledger, keeping
        // its live state in step (as decisions do), leaves what it read with the
        // tip it reached.
        store
            .write_as("t", NOTHING, |tx| {
                tx.keep_live();
                entry(tx, "t", 1)
            })
            .unwrap();
        assert!(marked(&store));
        // A write that does not keep it in step empties it: nothing is left.
        store.write_as("t", NOTHING, |tx| put(tx, "op-a")).unwrap();
        assert!(!marked(&store));
        assert!(marked(&store));
        // Nor does a group that wrote to another tenant's ledger.
        store
            .write_as("t", NOTHING, |tx| {
                tx.keep_live();
                entry(tx, "u", 1)
            })
            .unwrap();
        assert!(!marked(&store));
        assert!(marked(&store));
        // Another replica's entry moves the tip: nothing held is trusted.
        other
            .write_as("t", NOTHING, |tx| entry(tx, "t", 2))
            .unwrap();
        assert!(!marked(&store), "read again after another replica wrote");
        assert!(marked(&store));
        // A group whose commit fails leaves nothing to take.
        let failed = store.write_as("t", NOTHING, |tx| {
            tx.keep_live();
            entry(tx, "t", 3)?;
            put(tx, "op-dup")?;
            put(tx, "op-dup")
        });
        assert!(failed.is_err());
        assert!(!marked(&store));
        assert!(marked(&store));
    }

    #[test]
    fn a_group_opened_after_another_replica_wrote_reads_its_intent_with_its_lock() {
        let Some((store, other)) = two_replicas_of_t() else {
            return;
        };
        store
            .write(|tx| {
                tx.execute(
                    "INSERT INTO intents (id, tenant_id, operations, budget_cents, currency, \
                     state, deadline_ms, created_ms) \
                     VALUES (?1, 't', '[\"pay\"]', 500, 'usd', 'funded', 9000000000000, 0)",
                    args![INTENT_I],
                )
                .map(drop)
                .map_err(ApiError::from)
            })
            .unwrap();
        // Whether a group holds the intent before its write reads anything, and
        // whether what it holds is what is stored.
        let held = |store: &PgStore, intent: Option<&str>| {
            store
                .write_as("t", ahead(intent), |tx| {
                    let held = tx.live().unwrap().borrow().holds_intent(INTENT_I);
                    assert_eq!(
                        crate::engine::live::differences(tx, 0).unwrap(),
                        Vec::<String>::new()
                    );
                    Ok(held)
                })
                .unwrap()
        };
        assert!(
            !held(&store, Some(INTENT_I)),
            "nothing is read ahead at first"
        );
        // The tenant's requests alternate between two replicas: each group finds
        // the tenant changed since the last, and reads the intent with its lock.
        for round in 0..3 {
            other
                .write_as("t", NOTHING, |tx| entry(tx, "t", round))
                .unwrap();
            assert!(held(&store, Some(INTENT_I)), "round {round}");
        }
        // While nothing else changes the tenant, each group takes what the one
        // before held, whether or not it names its intent.
        assert!(held(&store, Some(INTENT_I)));
        assert!(held(&store, None));
        assert!(held(&store, Some(INTENT_I)));
        // Then another replica writes: the next group finds nothing to take (and
        // had no reason to read ahead), the one after reads ahead again.
        other
            .write_as("t", NOTHING, |tx| entry(tx, "t", 4))
            .unwrap();
        assert!(!held(&store, Some(INTENT_I)));
        other
            .write_as("t", NOTHING, |tx| entry(tx, "t", 5))
            .unwrap();
        assert!(held(&store, Some(INTENT_I)));
        // A group that names no intent reads none ahead.
        other
            .write_as("t", NOTHING, |tx| entry(tx, "t", 6))
            .unwrap();
        assert!(!held(&store, None));
        // An intent that is not the tenant's is not held.
        other
            .write_as("t", NOTHING, |tx| entry(tx, "t", 7))
            .unwrap();
        let holds_other = store
            .write_as("t", ahead(Some(NO_SUCH_INTENT)), |tx| {
                Ok(tx.live().unwrap().borrow().holds_intent(NO_SUCH_INTENT))
            })
            .unwrap();
        assert!(!holds_other);
    }

    /// `n` writes of tenant `t` at once (numbered from `from`); the first to run
    /// waits until several others have arrived, so that they join its group.
    fn concurrently(
        store: &Arc<PgStore>,
        n: usize,
        from: usize,
        write: impl Fn(&dyn Tx, usize) -> Result<(), ApiError> + Sync,
    ) -> Vec<(usize, Result<(), ApiError>)> {
        concurrently_keyed(store, n, from, |_| None, write)
    }

    /// [`concurrently`], write `i` saying it reads idempotency key `key_of(i)`.
    fn concurrently_keyed(
        store: &Arc<PgStore>,
        n: usize,
        from: usize,
        key_of: impl Fn(usize) -> Option<String> + Sync,
        write: impl Fn(&dyn Tx, usize) -> Result<(), ApiError> + Sync,
    ) -> Vec<(usize, Result<(), ApiError>)> {
        let group = store.group("t");
        let waited = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let workers: Vec<_> = (from..from + n)
                .map(|i| {
                    let (store, group, waited, write) = (store.clone(), &group, &waited, &write);
                    let key = key_of(i);
                    s.spawn(move || {
                        let ahead = ReadAhead {
                            intent: None,
                            key: key.as_deref(),
                        };
                        let out = store.write_as("t", ahead, |tx| {
                            if !waited.swap(true, Ordering::SeqCst) {
                                let start = std::time::Instant::now();
                                while group.arrivals.load(Ordering::SeqCst) < n.min(12)
                                    && start.elapsed() < std::time::Duration::from_secs(10)
                                {
                                    std::thread::sleep(std::time::Duration::from_millis(1));
                                }
                            }
                            tx.lock_tenant("t")?;
                            write(tx, i)
                        });
                        (i, out)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        })
    }

    #[test]
    fn keyed_writes_read_the_keys_of_those_waiting_behind_them_and_each_gets_its_own() {
        let Some(store) = store_of_t() else {
            return;
        };
        let key_of = |i: usize| match i % 4 {
            // Two writes at once under one key: one answers, the other replays it.
            3 => format!("k-{:02}", i - 1),
            _ => format!("k-{i:02}"),
        };
        let answer = |tx: &dyn Tx, key: &str, i: usize| {
            tx.keep_answer(("t", key), ("verify", "h"), &format!("answer-{i}"), 0)
                .map_err(ApiError::from)
        };
        // Every fourth key has an answer already.
        store
            .write(|tx| {
                for i in (0..48).step_by(4) {
                    answer(tx, &key_of(i), i)?;
                }
                Ok(())
            })
            .unwrap();
        let seen = Mutex::new(HashMap::new());
        let out = concurrently_keyed(
            &store,
            48,
            0,
            |i| Some(key_of(i)),
            |tx, i| {
                let key = key_of(i);
                let kept = tx.kept_answer("t", &key)?.map(|k| k.response);
                if kept.is_none() {
                    answer(tx, &key, i)?;
                }
                seen.lock().unwrap().insert(i, kept);
                Ok(())
            },
        );
        assert!(out.iter().all(|(_, o)| o.is_ok()), "{out:?}");
        let seen = seen.into_inner().unwrap();
        for i in 0..48 {
            match i % 4 {
                0 => assert_eq!(seen[&i], Some(format!("answer-{i}")), "write {i}"),
                1 => assert_eq!(seen[&i], None, "write {i}"),
                2 => {
                    // One of the two found nothing and answered; the other found that.
                    let (a, b) = (&seen[&i], &seen[&(i + 1)]);
                    match (a, b) {
                        (None, Some(b)) => assert_eq!(*b, format!("answer-{i}")),
                        (Some(a), None) => assert_eq!(*a, format!("answer-{}", i + 1)),
                        _ => panic!("writes {i} and {}: {a:?} {b:?}", i + 1),
                    }
                }
                _ => {}
            }
        }
        let group = store.group("t");
        assert!(
            group.keys_read_ahead.load(Ordering::Relaxed) > 0,
            "the first write reads the keys of those waiting behind it"
        );
        assert!(group.waiting_keys().is_empty());
    }

    #[test]
    fn an_intents_open_reservations_are_not_read_to_decide_on_it() {
        let Some(url) = test_database() else {
            return;
        };
        let store = PgStore::open(&url).unwrap();
        // 5,000 open reservations of one intent, all lapsing in the future, in a
        // table never analyzed (as one that grew since its last `ANALYZE`).
        store
            .write(|tx| {
                tx.execute(
                    "INSERT INTO tenants (id, name, environment, created_ms)
                     VALUES ('t', 't', 'sandbox', 0)",
                    args![],
                )?;
                tx.execute(
                    "INSERT INTO intents (id, tenant_id, operations, budget_cents, currency,
                         state, deadline_ms, reserved_cents, created_ms)
                     VALUES ('i', 't', '[]', 1000000, 'usd', 'active', 99999999, 5000, 0)",
                    args![],
                )?;
                tx.execute(
                    "INSERT INTO reservations (id, tenant_id, intent_id, tool, operation, agent,
                         amount_cents, state, created_ms, expires_ms)
                     SELECT 'r' || n, 't', 'i', 'x', 'x', 'a', 1, 'open', n, 1000 + n
                     FROM generate_series(1, 5000) AS n",
                    args![],
                )
                .map(drop)
                .map_err(ApiError::from)
            })
            .unwrap();
        // Each statement reads one reservation, or none: the plan's rows, one
        // figure per node, stay at most 1.
        for (sql, args) in [
            (crate::store::ops::spend::INTENT, args!["i", "t"]),
            (
                crate::store::ops::spend::LAPSE_OF_INTENT,
                args!["i", 500_i64],
            ),
        ] {
            let plan: Vec<String> = store
                .write(|tx| {
                    Ok(
                        tx.query_map(&format!("EXPLAIN (ANALYZE, COSTS OFF) {sql}"), args, |r| {
                            r.get(0)
                        })?,
                    )
                })
                .unwrap();
            let plan = plan.join("\n");
            let most = plan
                .split("rows=")
                .skip(1)
                .filter_map(|rest| {
                    rest.split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .max();
            assert_eq!(most, Some(1), "{sql}\n{plan}");
            assert!(!plan.contains("Rows Removed"), "{sql}\n{plan}");
        }
    }

    #[test]
    fn placeholders_become_dollars() {
        assert_eq!(
            dollar_placeholders("SELECT ?1, '?' FROM t WHERE a = ?12 AND b = ?"),
            "SELECT $1, '?' FROM t WHERE a = $12 AND b = ?"
        );
    }
}
