//! SQLite: the schema, group commit, and the background WAL checkpoint.
//!
//! One connection does every operation, so the checks of a decision and the
//! reservation that follows them are atomic. Operations that arrive while others run
//! join one transaction, each in a savepoint of its own (an operation that fails
//! rolls back only itself), and the last of them commits for all: a group commit.
//! While others wait to join, an operation's writes whose only outcome is success
//! ([`super::sql::Sql::execute_later`]) are held back and sent merged with the group's others
//! ([`super::held`]) before its next statement or with the commit; an operation
//! that only holds writes back needs no savepoint.
//!
//! On a file database, a group whose operations ran no statement (they read the
//! live state and held every write back, as a verify does once its intent is in
//! memory) begins its transaction only to commit: when it ends while other
//! operations wait (it is full), the writer hands it to a committer thread
//! ([`Link`]) and decides them meanwhile, as the next group. One group is
//! with the committer at a time, and the writer waits for it before it ends
//! another or runs a statement, so groups commit in order and a statement sees
//! every group before its own. The group decided behind a commit that fails fails
//! with it, and the live state is emptied: nothing decided on effects that were
//! not kept is acknowledged.
//!
//! A file database runs in WAL mode; each commit's WAL is fsynced (outside the
//! connection's lock, one fsync for every commit before it) before any of its
//! operations is answered, so an acknowledged decision survives `kill -9` and a
//! power loss. Operations from async code ([`SqliteStore::submit`]) queue to the
//! writer thread and are answered by a sync thread once their fsync is done, so
//! none of them holds a thread while it waits. So deciding, committing and
//! syncing run at once, on three threads, each on its own group.
//!
//! Checkpoints run on a background thread: a passive one on its own connection
//! every 500 ms, and, as soon as the WAL has grown past its limit (its size is
//! looked at every 50 ms), two passive passes on that connection, an fsync of the
//! database file, and a last passive pass on the writer's connection between two
//! groups. A steady stream of commits never leaves a passive checkpoint beside
//! the writer a gap to finish in, so the WAL would grow without end; the last pass
//! has only the frames written during the second to copy and sync, and once it
//! has copied every frame the writer's next group starts the WAL over from its
//! beginning (cut back to the limit). The writer waits only for that last pass:
//! 1 to 6 ms at 25,000 decisions/s, where a truncating checkpoint under its lock
//! (copying what the passive pass left, syncing everything copied, truncating the
//! file) took 43 to 61 ms.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension as _, params_from_iter};

use super::held::{self, Held};
use super::stats::StoreStats;
use super::{Arg, Row, Storage, StoreError, Tx, Value, schema};
use crate::engine::live::LiveState;
use crate::error::ApiError;

/// The schema of a database written before migrations were numbered here, as
/// those versions created it (version 6 of [`schema::MIGRATIONS`], once
/// [`LEGACY_COLUMNS`] and [`LEGACY_INDEXES`] are applied).
pub(crate) const LEGACY_SCHEMA: &str = r"
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
CREATE TABLE IF NOT EXISTS spend_counters (
    tenant_id TEXT NOT NULL,
    bucket TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    window_end INTEGER NOT NULL,
    spent_cents INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, bucket, window_start, window_end)
);
CREATE INDEX IF NOT EXISTS reservations_by_tool ON reservations (tenant_id, tool, created_ms);
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

/// Columns those versions added after their first schema, for databases created
/// before them.
const LEGACY_COLUMNS: &[(&str, &str, &str)] = &[
    ("reservations", "agent_subject", "TEXT"),
    ("approvals", "agent", "TEXT"),
    ("approvals", "token_fetched_ms", "INTEGER"),
    ("decisions", "ledger_seq", "INTEGER"),
];

/// Indexes over columns that [`LEGACY_COLUMNS`] may have just added; approval
/// tokens kept in plain text by earlier versions dropped (only digests are kept).
const LEGACY_INDEXES: &str = "
UPDATE approvals SET token = NULL WHERE token IS NOT NULL;
DROP INDEX IF EXISTS reservations_open;
DROP INDEX IF EXISTS reservations_open_by_intent;
CREATE INDEX IF NOT EXISTS reservations_open_by_expiry ON reservations (state, expires_ms)
    WHERE state = 'open';
CREATE INDEX IF NOT EXISTS reservations_open_by_intent_expiry ON reservations (intent_id, expires_ms)
    WHERE state = 'open';
CREATE INDEX IF NOT EXISTS approvals_by_agent ON approvals (tenant_id, agent, created_ms);
CREATE INDEX IF NOT EXISTS approvals_by_intent ON approvals (intent_id, state);
CREATE INDEX IF NOT EXISTS approvals_by_time ON approvals (tenant_id, created_ms, id);
CREATE INDEX IF NOT EXISTS intents_by_time ON intents (tenant_id, created_ms, id);
CREATE INDEX IF NOT EXISTS decisions_by_intent ON decisions (intent_id, created_ms);
CREATE TABLE IF NOT EXISTS evidence (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    intent_id TEXT NOT NULL,
    decision_id TEXT,
    operation TEXT,
    status TEXT,
    cost_cents INTEGER,
    predicate_passed INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS evidence_by_intent ON evidence (intent_id, created_ms);
CREATE TABLE IF NOT EXISTS signing_keys (
    tenant_id TEXT PRIMARY KEY,
    secret_key BLOB NOT NULL,
    public_key_hex TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_exports (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    status TEXT NOT NULL,
    disclosure_tier TEXT NOT NULL,
    filter TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    heartbeat_ms INTEGER NOT NULL,
    stage TEXT NOT NULL,
    percent INTEGER NOT NULL,
    error TEXT,
    manifest_sha256 TEXT,
    bundle_sha256 TEXT,
    bundle_size_bytes INTEGER,
    bundle BLOB,
    download_token_hash TEXT UNIQUE,
    download_token_expires_ms INTEGER
);
CREATE INDEX IF NOT EXISTS audit_exports_by_time ON audit_exports (tenant_id, created_ms, id);
";

/// Operations one commit of a file database takes at most. Callers that wait for
/// their answers before they ask again (an agent's tool calls, a connection's
/// requests) otherwise fall into step: every one of them joins one group, and
/// while it is committed and synced nobody is left to decide. Smaller groups keep
/// the writer, the committer and the fsync busy at once: with 64 callers
/// verifying on a file, groups of at most 32 committed on the writer's thread
/// decided 31,000 to 32,000 a second where 256 decided 25,000 to 27,500 (the next
/// group fills while one commits and syncs). An
/// in-memory database commits each operation at once: it has no fsync to share,
/// and waiting costs latency.
const MAX_BATCH: usize = 32;

/// Runs `f` in a read-only transaction on a read-only connection to `path`,
/// opened for it alone: the database is neither migrated nor written.
pub(crate) fn read_only<T>(
    path: &Path,
    f: impl FnOnce(&dyn Tx) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    if !path.is_file() {
        return Err(ApiError::unusable(format!(
            "{}: no such database",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    control(&conn, "BEGIN")?;
    let out = f(&conn);
    control(&conn, "COMMIT")?;
    out
}

/// The page size of a new database file, in bytes.
const PAGE_SIZE: i64 = 1024;

fn open_connection(storage: &Storage) -> Result<Connection, ApiError> {
    let conn = match storage {
        Storage::File(path) => {
            private_files(path)?;
            let conn = Connection::open(path)?;
            // Read before anything is written: a file that is not a SQLite
            // database (or is damaged) is refused as it is.
            conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(|e| {
                ApiError::unusable(format!(
                    "{} is not a paybond database that this build can read ({e}): move it \
                     away or start the gateway on another data directory; it was not changed",
                    path.display()
                ))
            })?;
            // Every page a commit changes is written whole to the WAL and fsynced:
            // with 1 KiB pages a decision writes about half the bytes it would
            // with SQLite's default 4 KiB (its rows are small). Taken by a new
            // database only; an existing one keeps the page size it was created with.
            conn.pragma_update(None, "page_size", PAGE_SIZE)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            // Commits are made durable by `Durability`, outside the connection's lock.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            // Checkpoints (and their fsyncs) run on the Checkpointer's own
            // connection, off the path of the requests.
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
            conn
        }
        Storage::Memory => Connection::open_in_memory()?,
        Storage::Postgres(_) => {
            return Err(ApiError::internal("a PostgreSQL URL is not a SQLite store"));
        }
    };
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(256);
    conn.pragma_update(None, "foreign_keys", "ON")?;
    let place = match storage {
        Storage::File(path) => path.display().to_string(),
        _ => "the in-memory database".to_owned(),
    };
    migrate(&conn, &place)?;
    Ok(conn)
}

/// The database holds keys and tokens: its directory is created 0700 and the file
/// 0600 before SQLite opens it (SQLite gives the WAL and shared-memory files the
/// database file's mode). An existing file, or a directory this gateway created
/// earlier, readable by others is narrowed to the owner.
fn private_files(path: &Path) -> Result<(), ApiError> {
    let io = |what: &Path, e: std::io::Error| {
        ApiError::unusable(format!("cannot secure {}: {e}", what.display()))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| io(dir, e))?;
            } else if dir.file_name().is_some_and(|n| n == ".paybond") {
                let mode = std::fs::metadata(dir)
                    .map_err(|e| io(dir, e))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                        .map_err(|e| io(dir, e))?;
                }
            }
        }
        #[cfg(not(unix))]
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mut files = vec![path.to_owned()];
        for suffix in ["-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            files.push(PathBuf::from(name));
        }
        for (i, file) in files.iter().enumerate() {
            if i == 0 {
                // Created empty with mode 0600 if missing (SQLite fills an empty file).
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(file)
                    .map_err(|e| io(file, e))?;
            }
            match std::fs::metadata(file) {
                Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| io(file, e))?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(file, e)),
            }
        }
    }
    Ok(())
}

/// The migrations `place` lacks ([`schema::MIGRATIONS`], in SQLite's spelling),
/// each in a transaction of its own and recorded in `schema_migrations`. A
/// database written before migrations were numbered is first brought to version 6
/// as those versions did, and numbered. A database a newer build migrated is
/// refused before anything is written to it.
fn migrate(conn: &Connection, place: &str) -> Result<(), ApiError> {
    let exists = |table: &str| -> rusqlite::Result<bool> {
        conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
            .exists([table])
    };
    let numbered = exists("schema_migrations")?;
    let mut newest: i64 = if numbered {
        conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?
    } else {
        0
    };
    let floor: Option<i64> = if exists("schema_floor")? {
        conn.query_row(
            "SELECT served_from FROM schema_floor WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .optional()?
    } else {
        None
    };
    schema::check_served(newest, floor, schema::LATEST, place)?;
    let now = jiff::Timestamp::now().as_millisecond();
    if !numbered {
        let legacy = exists("tenants")?;
        let mut batch = String::from(
            "BEGIN; CREATE TABLE schema_migrations (
                 version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL);",
        );
        if legacy {
            batch.push_str(LEGACY_SCHEMA);
            batch.push_str(&legacy_columns(conn)?);
            batch.push_str(LEGACY_INDEXES);
            for version in 1..=6 {
                batch.push_str(&format!(
                    "INSERT INTO schema_migrations (version, applied_ms) VALUES ({version}, {now});"
                ));
            }
            newest = 6;
        }
        batch.push_str("COMMIT;");
        conn.execute_batch(&batch)?;
    }
    for m in schema::MIGRATIONS {
        if m.version <= newest {
            continue;
        }
        conn.execute_batch(&format!(
            "BEGIN; {}; INSERT INTO schema_migrations (version, applied_ms) VALUES ({}, {now}); COMMIT;",
            schema::sqlite(&schema::apply_sql(m)),
            m.version
        ))?;
    }
    Ok(())
}

/// The `ALTER TABLE`s that bring a legacy database's tables to [`LEGACY_COLUMNS`].
fn legacy_columns(conn: &Connection) -> rusqlite::Result<String> {
    let mut out = String::from("DROP INDEX IF EXISTS reservations_by_intent;");
    for (table, column, kind) in LEGACY_COLUMNS {
        let present: bool = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
            ))?
            .exists([column])?;
        if !present {
            out.push_str(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind};"));
        }
    }
    Ok(out)
}

struct Batch {
    /// The connection, which the committer borrows to commit a group.
    link: Arc<Link>,
    /// The spend state the writer keeps in memory (see [`LiveState`]).
    live: std::cell::RefCell<LiveState>,
    /// A group is open: operations may join it.
    open: bool,
    /// The open group has begun its transaction on the connection (it ran a
    /// statement, or its store commits every group on the writer's thread).
    begun: std::cell::Cell<bool>,
    /// The id of the open (or last) group.
    id: u64,
    /// Operations in the open group.
    ops: usize,
    /// The last group whose commit has finished.
    committed: u64,
    /// Recent groups whose commit failed, with why.
    failed: VecDeque<(u64, StoreError)>,
    /// Operations submitted by async callers ([`SqliteStore::submit`]) that ran in
    /// the open group and wait for its commit.
    waiting: Vec<Pending>,
    /// The open group's writes held back ([`super::sql::Sql::execute_later`]): sent, merged
    /// ([`held::coalesce`]), before the group's next statement or its commit.
    held: std::cell::RefCell<Vec<Held>>,
    /// Why the open group cannot commit: a held-back write of an operation that
    /// had already succeeded failed when it was sent.
    broken: std::cell::RefCell<Option<StoreError>>,
}

/// How an async caller's operation is answered once its group has ended: with
/// `Ok` when the group's commit is durable, with why when it failed or could not
/// be made durable.
type Finish = Box<dyn FnOnce(Result<(), ApiError>) + Send>;

/// An async caller's operation that ran in group `group`, waiting for its end.
struct Pending {
    group: u64,
    finish: Finish,
}

/// The writer's connection, and the committer that borrows it.
///
/// A group whose operations ran no statement (they read the live state and held
/// their writes back, as a verify does once its intent is in memory) needs the
/// connection only for its commit. When it ends while other operations wait, the
/// writer hands it to the committer thread, which begins the transaction, sends
/// the held-back writes and commits, while the writer decides the waiting
/// operations as the next group (one that ends with nobody waiting commits on the
/// writer's thread: no decision would run beside it, and the committer's wake-up
/// would only add to its latency). One group is handed over at a time: the
/// writer waits for the last to be committed before it ends another or runs a
/// statement, so the groups commit (and are acknowledged) in order, and a
/// statement sees every group before its own.
///
/// The next group is decided on the live state, which already holds the effects
/// of the one being committed. If that commit fails, the group decided after it
/// fails too and the live state is emptied: nothing decided on effects that
/// were not kept is acknowledged.
struct Link {
    conn: Mutex<Conn>,
    commit: Mutex<Commit>,
    /// When a commit by another connection was last seen: for [`SHARED_QUIET`]
    /// after it, every group begins its transaction before it decides, as it
    /// must while another process writes to the file.
    foreign: Mutex<Option<std::time::Instant>>,
    /// The committer has taken a group, or finished one.
    changed: Condvar,
}

/// The connection and what it last saw of the database.
struct Conn {
    conn: Connection,
    /// The database's `data_version` when this connection last looked: another
    /// connection's commit changes it, and then the live state is emptied.
    data_version: i64,
}

/// What the committer is doing.
#[derive(Default)]
struct Commit {
    /// A group handed over and not yet taken.
    next: Option<Handoff>,
    /// The committer is committing a group.
    busy: bool,
    /// Why the last group handed over could not be committed, until the writer
    /// has seen it.
    failed: Option<StoreError>,
    /// The store is gone: the committer stops once it has committed what it was
    /// handed.
    stop: bool,
}

/// A group handed to the committer.
struct Handoff {
    id: u64,
    ops: usize,
    held: Vec<Held>,
    /// The async callers' operations that ran in it.
    waiting: Vec<Pending>,
}

impl Link {
    fn conn(&self) -> MutexGuard<'_, Conn> {
        // Statements run under the lock, and a panic in one leaves the
        // connection as SQLite left it: usable.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn commit(&self) -> MutexGuard<'_, Commit> {
        self.commit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until no group is handed over or being committed: why the last one
    /// handed over failed, if it did (told once).
    fn settle(&self) -> Option<StoreError> {
        let mut c = self.commit();
        while c.next.is_some() || c.busy {
            c = self
                .changed
                .wait(c)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        c.failed.take()
    }

    /// Before a group opens while the committer is idle: the live state is
    /// emptied if the last group handed over failed, or another connection
    /// changed the database. While it commits, the group is decided on the live
    /// state as it is, and [`begin`] or the committer looks instead.
    fn look(&self, live: &mut LiveState) {
        let failed = {
            let mut c = self.commit();
            if c.next.is_some() || c.busy {
                return;
            }
            c.failed.take()
        };
        if failed.is_some() | self.changed_elsewhere(&mut self.conn()) {
            live.clear();
        }
    }

    /// Hands a group to the committer (none is handed over: see [`Self::settle`]).
    fn hand_over(&self, group: Handoff) {
        self.commit().next = Some(group);
        self.changed.notify_all();
    }

    /// Reads the database's `data_version`: whether another connection committed
    /// since the connection last looked (and then remembers the new one, and
    /// when it was seen).
    fn changed_elsewhere(&self, conn: &mut Conn) -> bool {
        let changed = match data_version(&conn.conn) {
            Ok(version) if version == conn.data_version => false,
            Ok(version) => {
                conn.data_version = version;
                true
            }
            Err(_) => true,
        };
        if changed {
            *self
                .foreign
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(std::time::Instant::now());
        }
        changed
    }

    /// Another connection committed to the file less than [`SHARED_QUIET`] ago.
    fn shared_recently(&self) -> bool {
        self.foreign
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < SHARED_QUIET)
    }

    /// The committer's loop: commits each group handed over, records how it
    /// ended with the durability (which answers its callers once it is on disk),
    /// and tells the writer.
    fn run_committer(&self, durability: &Durability, stats: &StoreStats) {
        loop {
            let group = {
                let mut c = self.commit();
                loop {
                    if let Some(group) = c.next.take() {
                        c.busy = true;
                        break group;
                    }
                    if c.stop {
                        return;
                    }
                    c = self
                        .changed
                        .wait(c)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            };
            let Handoff {
                id,
                ops,
                held,
                waiting,
            } = group;
            let failure = self.commit_handed(held, ops, stats).err();
            // Ended with the durability before the writer may end the next.
            durability.group_ended(id, failure.clone(), waiting);
            let mut c = self.commit();
            c.busy = false;
            c.failed = failure;
            drop(c);
            self.changed.notify_all();
        }
    }

    /// Begins a handed-over group's transaction, sends its writes and commits it;
    /// rolls it back if any of that fails. A group decided while another
    /// connection changed the database is not committed: its decisions may rest
    /// on what that change made stale.
    fn commit_handed(
        &self,
        held: Vec<Held>,
        ops: usize,
        stats: &StoreStats,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let started = std::time::Instant::now();
        let sqlite = |e: rusqlite::Error| StoreError::from_sqlite(&e);
        control(&conn.conn, "BEGIN IMMEDIATE").map_err(sqlite)?;
        let result = if self.changed_elsewhere(&mut conn) {
            Err(decided_on_stale_state())
        } else {
            send_and_commit(&conn.conn, held)
        };
        match result {
            Ok(()) => stats.committed(started, ops),
            Err(_) => {
                let _ = control(&conn.conn, "ROLLBACK");
            }
        }
        result
    }
}

/// How long after another connection's commit to the file every group begins
/// its transaction before it decides (none is handed to the committer): a group
/// decided ahead of its transaction while another process writes would be
/// refused at its commit. Every store commits once when it opens, so the stores
/// already open on the file see it before they decide again.
const SHARED_QUIET: std::time::Duration = std::time::Duration::from_secs(10);

/// The connection's `data_version` (see [`Link::changed_elsewhere`]).
fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA data_version")
        .and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0)))
}

/// The committer thread ([`Link::run_committer`]); stopped when dropped, once
/// it has committed what it was handed.
struct Committer {
    link: Arc<Link>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    fn start(
        link: &Arc<Link>,
        durability: &Arc<Durability>,
        stats: &Arc<StoreStats>,
    ) -> Result<Self, ApiError> {
        let (l, d, s) = (link.clone(), durability.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("paybond-commit".to_owned())
            .spawn(move || l.run_committer(&d, &s))
            .map_err(|e| {
                ApiError::internal(format_args!("cannot start the committer thread: {e}"))
            })?;
        Ok(Self {
            link: link.clone(),
            thread: Some(thread),
        })
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.link.commit().stop = true;
        self.link.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Makes commits durable: fsyncs of the WAL, each covering every group committed
/// before it, run by the store's sync thread.
///
/// The writer thread only records that a group ended (and hands over the async
/// operations that ran in it); the sync thread fsyncs and wakes the callers. The
/// writer wakes nobody but the sync thread, so it goes on to the next group at
/// once, and the wake-ups of the callers cost the sync thread's time, not its own.
struct Durability {
    /// The WAL file (and its directory, synced once).
    wal: PathBuf,
    /// Where each fsync's time is counted.
    stats: Arc<StoreStats>,
    state: Mutex<Synced>,
    /// Callers wait here for their group's fsync.
    synced_now: Condvar,
    /// The sync thread waits here for a group to sync.
    ended_now: Condvar,
}

#[derive(Default)]
struct Synced {
    /// The last group that ended (committed, or failed to).
    ended: u64,
    /// Every group up to this one is on disk.
    upto: u64,
    /// Set by the first fsync that fails: every group after `upto` as it stood then,
    /// with why. Those groups are never acknowledged, not even by a later fsync that
    /// succeeds (after a failed fsync the kernel may have dropped the dirty pages and
    /// report the next one clean), so the store refuses writes until it is reopened.
    failed: Option<(u64, String)>,
    /// Recent groups whose commit failed, with why.
    commit_failures: VecDeque<(u64, StoreError)>,
    /// Async callers' operations whose groups ended, waiting for their fsync.
    pending: Vec<Pending>,
    /// The store is gone: the sync thread stops.
    stopped: bool,
}

impl Synced {
    /// How group `id` ended, once that is known: its commit's or its fsync's
    /// failure, or `Ok` once it is on disk.
    fn outcome(&self, id: u64) -> Option<Result<(), ApiError>> {
        if let Some((_, why)) = self.commit_failures.iter().find(|(g, _)| *g == id) {
            return Some(Err(commit_failed(why)));
        }
        if let Some((good, why)) = &self.failed
            && id > *good
        {
            return Some(Err(StoreError::NotDurable(format!(
                "storage: the commit could not be made durable: {why}"
            ))
            .into()));
        }
        (self.upto >= id).then_some(Ok(()))
    }
}

impl Durability {
    fn new(wal: PathBuf, stats: Arc<StoreStats>) -> Self {
        Self {
            wal,
            stats,
            state: Mutex::new(Synced::default()),
            synced_now: Condvar::new(),
            ended_now: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Synced> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The writer: group `id` has ended (`failure` if its commit failed), and
    /// `pending` ran in it.
    fn group_ended(&self, id: u64, failure: Option<StoreError>, pending: Vec<Pending>) {
        let mut st = self.lock();
        st.ended = st.ended.max(id);
        if let Some(why) = failure {
            st.commit_failures.push_back((id, why));
            if st.commit_failures.len() > 64 {
                st.commit_failures.pop_front();
            }
        }
        st.pending.extend(pending);
        drop(st);
        self.ended_now.notify_one();
    }

    /// An async caller's operation whose group has already ended: answered now if
    /// its outcome is known, else when its fsync is done.
    fn add_pending(&self, p: Pending) {
        let mut st = self.lock();
        match st.outcome(p.group) {
            Some(outcome) => {
                drop(st);
                (p.finish)(outcome);
            }
            None => st.pending.push(p),
        }
    }

    /// Returns once group `id` (whose operation has run) is on disk, or why it
    /// never will be.
    fn wait(&self, id: u64) -> Result<(), ApiError> {
        let mut st = self.lock();
        loop {
            if let Some(outcome) = st.outcome(id) {
                return outcome;
            }
            if st.stopped {
                return Err(
                    StoreError::Failed("the store stopped before its commit".into()).into(),
                );
            }
            st = self
                .synced_now
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// The sync thread's step: waits for a group that is not on disk yet, then
    /// makes every group ended so far durable with one fsync and answers whoever
    /// waits for them. `false` once the store is gone.
    fn sync_once(&self) -> bool {
        let mut st = self.lock();
        while st.ended <= st.upto && !st.stopped {
            st = self
                .ended_now
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if st.stopped && st.ended <= st.upto {
            return false;
        }
        let target = st.ended;
        if st.failed.is_none() {
            drop(st);
            let started = std::time::Instant::now();
            let result = self.fsync();
            self.stats.fsync_us.observe_since(started);
            st = self.lock();
            if let Err(e) = result {
                tracing::error!(
                    error = %e,
                    "fsync of the WAL failed; writes are refused until the gateway restarts"
                );
                let good = st.upto;
                st.failed = Some((good, e.to_string()));
            }
        }
        // Every group up to `target` has its outcome now: on disk, or refused after
        // a failed fsync.
        st.upto = st.upto.max(target);
        let (answered, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut st.pending)
            .into_iter()
            .partition(|p| p.group <= target);
        st.pending = kept;
        let outcomes: Vec<_> = answered
            .into_iter()
            .map(|p| {
                let outcome = st.outcome(p.group).unwrap_or_else(|| {
                    Err(ApiError::internal(
                        "storage: a group ended without an outcome",
                    ))
                });
                (p, outcome)
            })
            .collect();
        drop(st);
        self.synced_now.notify_all();
        for (p, outcome) in outcomes {
            (p.finish)(outcome);
        }
        true
    }

    /// Stops the sync thread once it has synced what ended; callers still waiting
    /// are answered.
    fn stop(&self) {
        self.lock().stopped = true;
        self.ended_now.notify_all();
        self.synced_now.notify_all();
    }

    fn fsync(&self) -> std::io::Result<()> {
        // Without a WAL (none written yet), everything is in the database file
        // already synced.
        sync_data(&self.wal)
    }
}

/// fsyncs the file at `path` (its data), whichever descriptor wrote it; a file
/// that does not exist has nothing to sync.
fn sync_data(path: &Path) -> std::io::Result<()> {
    match std::fs::File::open(path) {
        Ok(f) => f.sync_data(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The connection and its group, shared with the checkpointer.
struct Writer {
    batch: Mutex<Batch>,
    /// A group has committed (or rolled back).
    done: Condvar,
}

impl Batch {
    /// Why group `group`'s commit failed, if it did (and is still remembered).
    fn failure(&self, group: u64) -> Option<StoreError> {
        self.failed
            .iter()
            .find(|(g, _)| *g == group)
            .map(|(_, why)| why.clone())
    }
}

impl Writer {
    fn lock(&self) -> MutexGuard<'_, Batch> {
        // Every path below leaves the batch consistent before it can panic (the
        // operation itself runs under catch_unwind), so a poisoned lock is usable.
        self.batch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The SQLite store: one connection on one writer thread, group commit.
pub(crate) struct SqliteStore {
    shared: Arc<Shared>,
    /// For a file database: the one thread every write runs on. In memory every
    /// operation commits alone (there is no fsync to share), on its caller's thread.
    writer_thread: Option<rayon_core::ThreadPool>,
    /// The database file (none in memory): reads use connections of their own.
    path: Option<PathBuf>,
    /// Read-only connections to it, kept for the next read.
    readers: Mutex<Vec<Connection>>,
    _checkpointer: Option<Checkpointer>,
}

/// Read-only connections a store keeps between reads (more may be open at once).
const MAX_IDLE_READERS: usize = 8;

/// What the writer thread's jobs share with the store.
struct Shared {
    writer: Arc<Writer>,
    /// Operations that have asked for the connection and not yet run.
    arrivals: AtomicUsize,
    /// For a file database: what makes commits durable.
    durability: Option<Arc<Durability>>,
    /// Operations a commit takes at most.
    max_batch: usize,
    /// Groups that end with no operation waiting are handed to the committer too
    /// (tests only: they then commit on the writer's thread).
    #[cfg(test)]
    hand_over_alone: bool,
    /// For a file database: the thread that commits the groups that ran no
    /// statement. Declared before the sync thread, so that it stops first and
    /// the group it was committing is synced.
    committer: Option<Committer>,
    /// For a file database: the thread that fsyncs and answers; it stops when
    /// this is dropped.
    _syncer: Option<SyncThread>,
    /// Its commits' (and fsyncs') figures.
    stats: Arc<StoreStats>,
}

/// A WAL above this size is started over by the checkpointer (and trimmed to it when
/// it restarts) unless the engine's configuration says otherwise.
pub(crate) const DEFAULT_WAL_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

impl SqliteStore {
    pub(crate) fn open(storage: &Storage, wal_limit_bytes: u64) -> Result<Self, ApiError> {
        let conn = open_connection(storage)?;
        if matches!(storage, Storage::File(_)) {
            conn.pragma_update(
                None,
                "journal_size_limit",
                i64::try_from(wal_limit_bytes).unwrap_or(i64::MAX),
            )?;
        }
        if matches!(storage, Storage::File(_)) {
            // Stores already open on the file see this commit, and begin each
            // group's transaction before they decide from then on (see
            // `SHARED_QUIET`). A store that cannot write (a read-only file)
            // decides nothing, so it need not be seen: it opens, and its writes
            // are refused as they come.
            if let Err(e) = conn.execute(
                "INSERT INTO meta (key, value) VALUES ('store_opened', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [uuid::Uuid::now_v7().as_bytes().as_slice()],
            ) {
                tracing::warn!(error = %e, "the store cannot write to its database");
            }
        }
        let data_version = data_version(&conn)?;
        let link = Arc::new(Link {
            conn: Mutex::new(Conn { conn, data_version }),
            commit: Mutex::new(Commit::default()),
            foreign: Mutex::new(None),
            changed: Condvar::new(),
        });
        let writer = Arc::new(Writer {
            batch: Mutex::new(Batch {
                link: link.clone(),
                live: std::cell::RefCell::new(LiveState::default()),
                open: false,
                begun: std::cell::Cell::new(false),
                id: 0,
                ops: 0,
                committed: 0,
                failed: VecDeque::new(),
                waiting: Vec::new(),
                held: std::cell::RefCell::new(Vec::new()),
                broken: std::cell::RefCell::new(None),
            }),
            done: Condvar::new(),
        });
        let stats = Arc::new(StoreStats::default());
        let (checkpointer, durability) = match storage {
            Storage::File(path) => {
                let mut wal = path.clone().into_os_string();
                wal.push("-wal");
                // The WAL exists now (the schema was written): sync its directory
                // entry once, so the file itself survives a power loss.
                // A bare file name lives in the working directory (parent "").
                let dir = path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."));
                {
                    std::fs::File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| {
                            ApiError::internal(format_args!("cannot sync {}: {e}", dir.display()))
                        })?;
                }
                let wal = PathBuf::from(wal);
                (
                    Some(Checkpointer::start(
                        path,
                        &wal,
                        Arc::downgrade(&writer),
                        std::time::Duration::from_millis(500),
                        wal_limit_bytes,
                    )?),
                    Some(Arc::new(Durability::new(wal, stats.clone()))),
                )
            }
            _ => (None, None),
        };
        let syncer = durability.as_ref().map(SyncThread::start).transpose()?;
        let committer = durability
            .as_ref()
            .map(|d| Committer::start(&link, d, &stats))
            .transpose()?;
        let writer_thread = match durability {
            Some(_) => Some(
                rayon_core::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(|_| "paybond-writer".to_owned())
                    .build()
                    .map_err(|e| {
                        ApiError::internal(format_args!("cannot start the writer thread: {e}"))
                    })?,
            ),
            None => None,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                writer,
                arrivals: AtomicUsize::new(0),
                max_batch: if durability.is_some() { MAX_BATCH } else { 1 },
                durability,
                committer,
                #[cfg(test)]
                hand_over_alone: false,
                _syncer: syncer,
                stats,
            }),
            writer_thread,
            _checkpointer: checkpointer,
            readers: Mutex::new(Vec::new()),
            path: match storage {
                Storage::File(path) => Some(path.clone()),
                _ => None,
            },
        })
    }

    /// Runs `f` in a read-only transaction on a read-only connection of its own,
    /// beside the writer thread: it sees the last committed state as one snapshot
    /// and neither waits for the writes nor holds them up. An in-memory database
    /// has one connection: `f` then runs as a write.
    pub(crate) fn read<T: Send>(
        &self,
        f: impl FnOnce(&dyn Tx) -> Result<T, ApiError> + Send,
    ) -> Result<T, ApiError> {
        let Some(path) = &self.path else {
            return self.write(f);
        };
        let idle = self
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                conn.set_prepared_statement_cache_capacity(64);
                conn
            }
        };
        control(&conn, "BEGIN")?;
        let out = f(&conn);
        // Nothing was written: ending the transaction either way is the same. A
        // connection that cannot end it is not kept.
        if control(&conn, "COMMIT").is_ok() {
            let mut idle = self
                .readers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
        out
    }

    /// Runs `f` in the current group transaction, in a savepoint of its own, and
    /// returns once the group's commit is durable.
    ///
    /// Every operation on a file database runs on the store's one writer thread,
    /// in the order they arrive, so operations follow one another on a warm
    /// connection instead of handing its lock from one caller's thread to the
    /// next. An operation that finds no other waiting commits its group; the
    /// callers wait for that commit, then for its fsync, on their own threads.
    pub(crate) fn write<T: Send>(
        &self,
        f: impl FnOnce(&dyn Tx) -> Result<T, ApiError> + Send,
    ) -> Result<T, ApiError> {
        let shared = &*self.shared;
        shared.arrivals.fetch_add(1, Ordering::SeqCst);
        let (out, id) = match &self.writer_thread {
            Some(thread) => thread.install(|| shared.run_in_group(f)),
            None => shared.run_in_group(f),
        }?;
        // Answered only once the group's commit is on disk. In memory the group
        // has committed already, on this thread.
        let ended = match &shared.durability {
            Some(d) => d.wait(id),
            None => match shared.writer.lock().failure(id) {
                Some(why) => Err(commit_failed(&why)),
                None => Ok(()),
            },
        };
        settle(out, ended).unwrap_or_else(|panic| resume_unwind(panic))
    }

    /// Its commits' (and fsyncs') figures.
    pub(crate) fn stats(&self) -> &StoreStats {
        &self.shared.stats
    }

    /// Whether the database is in memory (no file, no writer thread).
    pub(crate) fn in_memory(&self) -> bool {
        self.path.is_none()
    }

    /// [`Self::write`] for async callers: on a file database `f` is queued to the
    /// writer thread, and the future answers once its group's commit is durable,
    /// holding no thread while it waits. `context` is handed to `f` and dropped on
    /// the writer thread after the operation, outside the connection's lock.
    ///
    /// Gives `context` and `f` back when the store has no writer thread (in
    /// memory): the caller runs them through [`Self::write`] on a blocking thread.
    pub(crate) fn submit<C, T, F>(
        &self,
        context: C,
        f: F,
    ) -> Result<impl Future<Output = Result<T, ApiError>> + Send + 'static, (C, F)>
    where
        C: Send + 'static,
        T: Send + 'static,
        F: FnOnce(&C, &dyn Tx) -> Result<T, ApiError> + Send + 'static,
    {
        let Some(thread) = &self.writer_thread else {
            return Err((context, f));
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        let shared = self.shared.clone();
        shared.arrivals.fetch_add(1, Ordering::SeqCst);
        thread.spawn(move || {
            let (out, id) = match shared.run_in_group(|tx| f(&context, tx)) {
                Ok(ran) => ran,
                Err(e) => {
                    let _ = answer.send(Err(e));
                    return;
                }
            };
            let finish: Finish = Box::new(move |ended| {
                // A panicking operation's changes were rolled back; its caller is
                // answered a 500.
                let _ = answer.send(
                    settle(out, ended)
                        .unwrap_or_else(|_| Err(ApiError::internal("a store operation panicked"))),
                );
            });
            shared.when_ended(id, finish);
        });
        Ok(async move {
            answered.await.unwrap_or_else(|_| {
                Err(ApiError::internal(
                    "the store stopped before the operation was answered",
                ))
            })
        })
    }
}

/// An operation's answer from what it returned (or its panic) and how its group
/// ended: its own error first, else the group's, else its value.
fn settle<T>(
    out: std::thread::Result<Result<T, ApiError>>,
    ended: Result<(), ApiError>,
) -> std::thread::Result<Result<T, ApiError>> {
    out.map(|r| r.and_then(|v| ended.map(|()| v)))
}

/// The error an operation whose group's commit failed is answered: why it
/// failed (a full disk, a lock, …), with the detail saying it was the commit.
fn commit_failed(why: &StoreError) -> ApiError {
    match why {
        StoreError::Failed(d) => StoreError::Failed(format!("the commit failed: {d}")).into(),
        other => other.clone().into(),
    }
}

/// The thread that makes commits durable ([`Durability::sync_once`]); stopped
/// when dropped, once it has synced every group that ended.
struct SyncThread {
    durability: Arc<Durability>,
}

impl SyncThread {
    fn start(durability: &Arc<Durability>) -> Result<Self, ApiError> {
        let d = durability.clone();
        std::thread::Builder::new()
            .name("paybond-sync".to_owned())
            .spawn(move || while d.sync_once() {})
            .map_err(|e| ApiError::internal(format_args!("cannot start the sync thread: {e}")))?;
        Ok(Self {
            durability: durability.clone(),
        })
    }
}

impl Drop for SyncThread {
    fn drop(&mut self) {
        self.durability.stop();
    }
}

impl Shared {
    /// Hands an async caller's operation, which ran in group `group`, to what
    /// answers it: kept with the group until it ends if it is still open, else
    /// handed to the sync thread (or answered, if its outcome is known).
    fn when_ended(&self, group: u64, finish: Finish) {
        let mut b = self.writer.lock();
        if b.committed < group {
            b.waiting.push(Pending { group, finish });
            return;
        }
        drop(b);
        match &self.durability {
            Some(d) => d.add_pending(Pending { group, finish }),
            // Async operations run on a file database only (see `submit`).
            None => finish(Err(ApiError::internal(
                "an async operation without a writer thread",
            ))),
        }
    }

    /// Runs `f` in the open group (opening one if none is), and ends the group
    /// when no other operation is waiting to join it or it is full (on the writer
    /// thread for a file database): commits it, or hands it to the committer if
    /// none of its operations ran a statement. Answers what `f` returned (or its
    /// panic) and the group's id; an error when no group could be opened.
    fn run_in_group<T>(
        &self,
        f: impl FnOnce(&dyn Tx) -> Result<T, ApiError>,
    ) -> Result<(std::thread::Result<Result<T, ApiError>>, u64), ApiError> {
        let mut b = self.writer.lock();
        if !b.open {
            if self.committer.is_some() {
                let batch = &mut *b;
                batch.link.look(batch.live.get_mut());
            }
            if self.committer.is_none() || b.link.shared_recently() {
                // The group begins at once, and commits on this thread.
                let begun = begin(&b.link, &b.begun, &b.live, &b.broken, false);
                if let Err(e) = begun {
                    self.arrivals.fetch_sub(1, Ordering::SeqCst);
                    // No group was opened: nothing of this operation to wait for.
                    return Err(e.into());
                }
            }
            b.open = true;
            b.id += 1;
            b.ops = 0;
        }
        let id = b.id;
        b.ops += 1;
        // The group's first operation needs no savepoint: if it fails, rolling the
        // group back undoes it alone (the others join only after it). Another sets
        // one when it first sends a statement (see `WriterTx::send`): one that
        // only holds writes back needs none.
        let first = b.ops == 1;
        let batch = &*b;
        let tx = WriterTx {
            link: &batch.link,
            begun: &batch.begun,
            lazy: self.committer.is_some() && !batch.begun.get(),
            live: &batch.live,
            arrivals: &self.arrivals,
            held: &batch.held,
            broken: &batch.broken,
            first,
            mark: std::cell::Cell::new(batch.held.borrow().len()),
            savepoint: std::cell::Cell::new(false),
            wrote: std::cell::Cell::new(false),
            kept_live: std::cell::Cell::new(false),
        };
        let out = catch_unwind(AssertUnwindSafe(|| f(&tx)));
        // The live state holds nothing an operation undid, or changed without
        // keeping it in step.
        let succeeded = matches!(out, Ok(Ok(_)));
        if !succeeded || (tx.wrote.get() && !tx.kept_live.get()) {
            batch.live.borrow_mut().clear();
        }
        if !succeeded {
            // What it held back is dropped; what it sent is undone.
            batch.held.borrow_mut().truncate(tx.mark.get());
        }
        // Ok(true): the group goes on (or commits); Ok(false): it is rolled back.
        let keep = match (first, succeeded, tx.savepoint.get()) {
            (true, ok, _) => Ok(ok),
            (false, _, false) => Ok(true),
            (false, true, true) => control(&b.link.conn().conn, "RELEASE op").map(|()| true),
            (false, false, true) => {
                let conn = b.link.conn();
                control(&conn.conn, "ROLLBACK TO op")
                    .and_then(|()| control(&conn.conn, "RELEASE op"))
                    .map(|()| true)
            }
        };
        let left = self.arrivals.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 || b.ops >= self.max_batch || !matches!(keep, Ok(true)) {
            // Handed over when operations wait to be decided meanwhile: one that
            // ends with nobody waiting commits here, which saves the committer's
            // wake-up where nothing would be decided beside the commit.
            #[cfg(test)]
            let hand_over = left > 0 || self.hand_over_alone;
            #[cfg(not(test))]
            let hand_over = left > 0;
            self.end_group(&mut b, id, keep, hand_over);
        }
        drop(b);
        Ok((out, id))
    }

    /// Ends the open group: the last operation in commits it (or hands it to the
    /// committer); a failed first operation rolls it back (it is all the group
    /// holds). What the group held back is sent with its commit; if any of it
    /// fails, so does the commit, and no write of the group is kept.
    fn end_group(&self, b: &mut Batch, id: u64, keep: rusqlite::Result<bool>, hand_over: bool) {
        let held = std::mem::take(&mut *b.held.borrow_mut());
        let broken = b.broken.borrow_mut().take();
        let sqlite = |e: rusqlite::Error| StoreError::from_sqlite(&e);
        let mut handed = None;
        let commit = if b.begun.get() {
            // It began when one of its statements ran, after the committer had
            // committed every group before it (see `begin`).
            b.begun.set(false);
            let conn = b.link.conn();
            let started = std::time::Instant::now();
            let commit = match (keep, broken) {
                (Ok(true), None) => send_and_commit(&conn.conn, held)
                    .inspect(|()| self.stats.committed(started, b.ops)),
                (Ok(true), Some(why)) => Err(why),
                (Ok(false), _) => control(&conn.conn, "ROLLBACK").map_err(sqlite),
                (Err(e), _) => Err(sqlite(e)),
            };
            if commit.is_err() {
                let _ = control(&conn.conn, "ROLLBACK");
            }
            commit
        } else {
            // No statement ran: nothing was sent, so nothing is undone. The group
            // before it is committed first: it ends first, and if it failed, this
            // group was decided on effects that were not kept.
            match (b.link.settle(), keep, broken) {
                (_, Ok(false), _) => Ok(()),
                (Some(why), _, _) | (None, Ok(true), Some(why)) => Err(why),
                (None, Ok(true), None) if hand_over && self.committer.is_some() => {
                    handed = Some(held);
                    Ok(())
                }
                (None, Ok(true), None) => b.link.commit_handed(held, b.ops, &self.stats),
                // A savepoint's release or rollback, which needs a begun group.
                (None, Err(e), _) => Err(sqlite(e)),
            }
        };
        let mut failure = None;
        if let Err(e) = commit {
            b.live.get_mut().clear();
            failure = Some(e.clone());
            b.failed.push_back((id, e));
            if b.failed.len() > 64 {
                b.failed.pop_front();
            }
        }
        b.open = false;
        b.committed = id;
        // Every async caller still waiting ran in this group.
        let ended = std::mem::take(&mut b.waiting);
        match (handed, &self.committer) {
            (Some(held), Some(committer)) => committer.link.hand_over(Handoff {
                id,
                ops: b.ops,
                held,
                waiting: ended,
            }),
            _ => {
                if let Some(d) = &self.durability {
                    d.group_ended(id, failure, ended);
                }
            }
        }
        // Only the WAL's restart waits here (for no group to be open).
        self.writer.done.notify_all();
    }
}

/// Begins the open group's transaction on the connection, once the committer
/// has committed every group handed to it: the group's statements then see
/// every group before it.
///
/// If the last group handed over failed, or another connection changed the
/// database since this one last looked, the live state is emptied. When the
/// group's operations may have read it already (`decided`), the group is also
/// broken (it cannot commit, see [`WriterTx::send`]) and the statement fails.
fn begin(
    link: &Link,
    begun: &std::cell::Cell<bool>,
    live: &std::cell::RefCell<LiveState>,
    broken: &std::cell::RefCell<Option<StoreError>>,
    decided: bool,
) -> Result<(), StoreError> {
    if begun.get() {
        return Ok(());
    }
    let stale = |why: StoreError| {
        live.borrow_mut().clear();
        if decided {
            *broken.borrow_mut() = Some(why.clone());
            return Err(why);
        }
        Ok(())
    };
    if let Some(why) = link.settle() {
        stale(why)?;
    }
    let mut conn = link.conn();
    control(&conn.conn, "BEGIN IMMEDIATE").map_err(|e| StoreError::from_sqlite(&e))?;
    begun.set(true);
    // The write lock is held from here to the commit: a change another
    // connection (another process on the same file) committed before it is seen
    // now, and none can come while the group is open.
    if link.changed_elsewhere(&mut conn) {
        drop(conn);
        stale(decided_on_stale_state())?;
    }
    Ok(())
}

/// Why a group decided while another connection changed the database is not
/// committed.
fn decided_on_stale_state() -> StoreError {
    StoreError::Busy(
        "another connection changed the database while these operations were decided; retry"
            .to_owned(),
    )
}

/// The writer's transaction as an operation sees it: the connection, the live
/// state, the group's held-back writes, and whether the operation wrote and kept
/// the live state in step.
struct WriterTx<'a> {
    link: &'a Link,
    /// The group's transaction has begun.
    begun: &'a std::cell::Cell<bool>,
    /// Writes are held back even when no other operation waits (a committer
    /// sends them).
    lazy: bool,
    live: &'a std::cell::RefCell<LiveState>,
    /// Operations waiting to run, this one included.
    arrivals: &'a AtomicUsize,
    held: &'a std::cell::RefCell<Vec<Held>>,
    broken: &'a std::cell::RefCell<Option<StoreError>>,
    /// The operation opened the group (it needs no savepoint).
    first: bool,
    /// Where the operation's own held-back writes start among the group's.
    mark: std::cell::Cell<usize>,
    /// The operation's savepoint is set.
    savepoint: std::cell::Cell<bool>,
    wrote: std::cell::Cell<bool>,
    kept_live: std::cell::Cell<bool>,
}

impl WriterTx<'_> {
    /// Before the operation's next statement: the group's transaction begins (if
    /// it has not), and its held-back writes are sent. Those of the operations
    /// before it go first, outside its savepoint (which is set then, the first
    /// time): they succeeded, and a failure of this one must not undo them. If
    /// one of theirs fails now, the group cannot commit.
    fn send(&self) -> Result<(), StoreError> {
        self.begin()?;
        let conn = self.link.conn();
        if !self.first && !self.savepoint.get() {
            let before: Vec<Held> = {
                let mut held = self.held.borrow_mut();
                let at = self.mark.get().min(held.len());
                held.drain(..at).collect()
            };
            // What is left is this operation's own.
            self.mark.set(0);
            if let Err(e) = send_held(&conn.conn, before) {
                *self.broken.borrow_mut() = Some(e.clone());
                return Err(e);
            }
            control(&conn.conn, "SAVEPOINT op")?;
            self.savepoint.set(true);
        }
        let own = std::mem::take(&mut *self.held.borrow_mut());
        self.mark.set(0);
        send_held(&conn.conn, own)
    }

    /// The group's transaction begins, if it has not (see [`begin`]).
    fn begin(&self) -> Result<(), StoreError> {
        begin(self.link, self.begun, self.live, self.broken, true)
    }
}

/// Sends a group's held-back writes ([`send_held`]) and commits it.
fn send_and_commit(conn: &Connection, held: Vec<Held>) -> Result<(), StoreError> {
    send_held(conn, held)
        .and_then(|()| control(conn, "COMMIT").map_err(|e| StoreError::from_sqlite(&e)))
}

/// Sends held-back writes, merged ([`held::coalesce`]), in order: the first
/// failure.
fn send_held(conn: &Connection, writes: Vec<Held>) -> Result<(), StoreError> {
    for w in held::coalesce(writes) {
        let args: Vec<Arg<'_>> = w.args.iter().map(Value::as_arg).collect();
        conn.prepare_cached(w.sql.as_str())
            .and_then(|mut st| st.execute(params_from_iter(args.iter())))
            .map_err(|e| StoreError::from_sqlite(&e))?;
    }
    Ok(())
}

impl super::sql::Sql for WriterTx<'_> {
    fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        self.wrote.set(true);
        self.send()?;
        super::sql::Sql::execute(&self.link.conn().conn, sql, args)
    }

    fn query(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        // A query may write too (`INSERT … RETURNING`).
        if !sql.trim_start().starts_with("SELECT") {
            self.wrote.set(true);
        }
        self.send()?;
        super::sql::Sql::query(&self.link.conn().conn, sql, args)
    }

    fn query_past_held(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        may_change: &dyn Fn(&Held) -> bool,
    ) -> Result<Vec<Row>, StoreError> {
        if !sql.trim_start().starts_with("SELECT") || self.held.borrow().iter().any(may_change) {
            return self.query(sql, args);
        }
        // A read changes nothing: it needs no savepoint, and what the group
        // holds back stays held.
        self.begin()?;
        super::sql::Sql::query(&self.link.conn().conn, sql, args)
    }

    fn execute_later(&self, sql: &'static str, args: &[Arg<'_>]) -> Result<(), StoreError> {
        // Held back while another operation waits to join the group, so that
        // there is something to merge with, or when the committer sends them;
        // one that will commit alone on this thread writes at once (holding
        // would only copy its arguments).
        if !self.lazy && self.arrivals.load(Ordering::SeqCst) <= 1 && self.held.borrow().is_empty()
        {
            return self.execute(sql, args).map(drop);
        }
        self.wrote.set(true);
        self.held
            .borrow_mut()
            .push(Held::new(sql, args.iter().map(Value::from).collect()));
        Ok(())
    }
}

impl Tx for WriterTx<'_> {
    fn lock_tenant(&self, _tenant_id: &str) -> Result<(), StoreError> {
        // One connection, one writer: every group is already serialized.
        Ok(())
    }

    fn live(&self) -> Option<&std::cell::RefCell<LiveState>> {
        Some(self.live)
    }

    fn keep_live(&self) {
        self.kept_live.set(true);
    }
}

/// Runs a transaction-control statement, prepared once per connection.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Arg::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Arg::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Arg::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            Arg::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

impl super::sql::Sql for Connection {
    fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let changed = self
            .prepare_cached(sql)?
            .execute(params_from_iter(args.iter()))?;
        Ok(u64::try_from(changed).unwrap_or(u64::MAX))
    }

    fn query(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(params_from_iter(args.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match r.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => Value::Int(n),
                    // No column holds a real; a sum that did is an integer number of cents.
                    #[allow(clippy::cast_possible_truncation)]
                    ValueRef::Real(x) => Value::Int(x as i64),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}

impl Tx for Connection {
    fn lock_tenant(&self, _tenant_id: &str) -> Result<(), StoreError> {
        // One connection, one writer: every transaction is already serialized.
        Ok(())
    }
}

/// How often the checkpointer looks at the WAL's size.
const SIZE_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// A thread that copies the WAL back into the database file every `every`, on a
/// connection of its own: a PASSIVE checkpoint never blocks the engine's writes,
/// and its fsyncs do not land on a request. Stops when dropped.
struct Checkpointer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(
        path: &Path,
        wal: &Path,
        writer: std::sync::Weak<Writer>,
        every: std::time::Duration,
        wal_limit_bytes: u64,
    ) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let wal = wal.to_owned();
        let db = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("paybond-checkpoint".to_owned())
            .spawn(move || {
                let passive = || {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                    }
                };
                let mut last_pass = std::time::Instant::now();
                while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    // The WAL's size is looked at far more often than it is
                    // checkpointed: how much one interval adds depends on how many
                    // commits it holds, which small groups under load make large.
                    std::thread::park_timeout(every.min(SIZE_POLL));
                    let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
                    if size > wal_limit_bytes {
                        let Some(writer) = writer.upgrade() else {
                            break;
                        };
                        // The bulk, then what came in meanwhile, beside the writer.
                        passive();
                        passive();
                        // A pass that does not reach the WAL's end (none beside a
                        // busy writer does) leaves what it copied unsynced: synced
                        // here, the last pass syncs only what it copies itself.
                        if let Err(e) = sync_data(&db) {
                            tracing::warn!(error = %e, "cannot sync the database file");
                        }
                        restart_wal(&writer, size);
                        last_pass = std::time::Instant::now();
                    } else if last_pass.elapsed() >= every {
                        passive();
                        last_pass = std::time::Instant::now();
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

/// Checkpoints what is left of the WAL into the database on the writer's
/// connection between two groups (no transaction open, and none can start, so no
/// frame is added meanwhile): once every frame is copied, the writer's next group
/// writes the WAL from its beginning again, and its commit cuts the file back to
/// the limit (`journal_size_limit`). Requests that arrive meanwhile wait for it:
/// it copies only what was written since the last passive pass. A reader on
/// another connection still reading old frames can keep a frame from being
/// copied; the WAL then starts over at a later pass.
fn restart_wal(writer: &Writer, size: u64) {
    let started = std::time::Instant::now();
    let mut b = writer.lock();
    while b.open {
        b = writer
            .done
            .wait(b)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    // No group opens while `b` is held; the one handed over is committed first.
    if b.link.settle().is_some() {
        // It failed: what was decided on its effects is forgotten (no group was
        // decided after it).
        b.live.get_mut().clear();
    }
    // (busy, frames in the WAL, frames copied into the database).
    let result = b
        .link
        .conn()
        .conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
    drop(b);
    match result {
        Ok((frames, copied)) if frames == copied => tracing::debug!(
            wal_bytes = size,
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "WAL checkpointed whole; it starts over"
        ),
        Ok((frames, copied)) => tracing::debug!(
            wal_bytes = size,
            frames,
            copied,
            "a reader holds WAL frames; the WAL starts over at a later pass"
        ),
        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on setup failures

    use super::*;
    use crate::store::args;
    use std::sync::mpsc;

    /// Group `id` ended and the sync thread's step ran for it.
    fn end_and_sync(d: &Durability, id: u64) {
        d.group_ended(id, None, Vec::new());
        assert!(d.sync_once());
    }

    #[test]
    fn a_commit_whose_fsync_failed_is_never_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        // The WAL's "directory" is a file: opening the WAL fails (not "not found").
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, b"").unwrap();
        let durability = Durability::new(blocker.join("paybond.db-wal"), Arc::default());
        end_and_sync(&durability, 1);
        assert!(durability.wait(1).is_err());

        // The next fsync would succeed (no WAL: nothing to sync), yet neither the
        // group that failed nor any after it is acknowledged.
        std::fs::remove_file(&blocker).unwrap();
        end_and_sync(&durability, 2);
        assert!(durability.wait(2).is_err());
        assert!(durability.wait(1).is_err());
    }

    #[test]
    fn an_async_operation_is_answered_by_its_groups_fsync_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let durability = Durability::new(dir.path().join("paybond.db-wal"), Arc::default());
        let (answer, answered) = mpsc::channel();
        let finish = |n: u64| -> Finish {
            let answer = answer.clone();
            Box::new(move |r| answer.send((n, r.is_ok())).unwrap())
        };
        durability.group_ended(
            1,
            None,
            vec![Pending {
                group: 1,
                finish: finish(1),
            }],
        );
        durability.group_ended(2, Some(StoreError::Full("disk full".into())), Vec::new());
        // A group whose commit failed is answered at once; the committed one
        // waits for the fsync.
        durability.add_pending(Pending {
            group: 2,
            finish: finish(2),
        });
        assert_eq!(answered.try_recv().unwrap(), (2, false));
        assert!(answered.try_recv().is_err());
        assert!(durability.sync_once());
        assert_eq!(answered.try_recv().unwrap(), (1, true));
        // Once synced, a late arrival of a synced group is answered at once.
        durability.add_pending(Pending {
            group: 1,
            finish: finish(3),
        });
        assert_eq!(answered.try_recv().unwrap(), (3, true));
        assert!(durability.wait(2).is_err());
        durability.wait(1).unwrap();
    }

    fn stored(store: &SqliteStore, key: &str) -> bool {
        store
            .write(|tx| {
                Ok(tx.query_opt("SELECT 1 FROM meta WHERE key = ?1", args![key], |_| Ok(()))?)
            })
            .unwrap()
            .is_some()
    }

    /// The seq of tenant `t`'s ledger tip in the writer's live state.
    fn live_tip(store: &SqliteStore) -> Option<u64> {
        store
            .write(|tx| Ok(tx.live().unwrap().borrow().tip("t").map(|(seq, _)| seq)))
            .unwrap()
    }

    /// Runs `op` as a write on a thread of its own and returns once it has run,
    /// its group still open: the group ends when the returned sender is used;
    /// the handle answers the write.
    fn hold_open(
        store: &Arc<SqliteStore>,
        op: impl FnOnce(&dyn Tx) -> Result<(), ApiError> + Send + 'static,
    ) -> (
        mpsc::Sender<()>,
        std::thread::JoinHandle<Result<(), ApiError>>,
    ) {
        let (entered, inside) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let holder = {
            let store = store.clone();
            std::thread::spawn(move || {
                store.write(move |tx| {
                    op(tx)?;
                    entered.send(()).unwrap();
                    released.recv().unwrap();
                    Ok(())
                })
            })
        };
        inside.recv().unwrap();
        (release, holder)
    }

    fn put(tx: &dyn Tx, key: &str) -> Result<(), ApiError> {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)",
            args![key, b"v".as_slice()],
        )?;
        Ok(())
    }

    /// [`put`], held back.
    fn put_later(tx: &dyn Tx, key: &str) -> Result<(), ApiError> {
        Ok(tx.execute_later(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)",
            args![key, b"v".as_slice()],
        )?)
    }

    #[test]
    fn a_failed_operation_is_undone_alone_whether_it_opened_its_group_or_joined_it() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(SqliteStore::open(&Storage::File(dir.path().join("g.db")), 1 << 20).unwrap());
        // A failing operation that opened its group: rolled back, nothing else lost.
        let failed = store.write(|tx| {
            put(tx, "alone")?;
            Err::<(), _>(ApiError::internal("the operation failed"))
        });
        assert!(failed.is_err());
        store.write(|tx| put(tx, "after")).unwrap();
        assert!(!stored(&store, "alone"));
        assert!(stored(&store, "after"));

        // A failing operation that joined a group: its savepoint is rolled back,
        // the group's first operation commits. One more arrival is announced so
        // the first operation waits for the group instead of committing it.
        let before = store.shared.writer.lock().id;
        store.shared.arrivals.fetch_add(1, Ordering::SeqCst);
        let opener = {
            let store = store.clone();
            std::thread::spawn(move || store.write(|tx| put(tx, "opener")))
        };
        // Wait until the opener has opened a group and is waiting on it.
        loop {
            let b = store.shared.writer.lock();
            if b.open && b.id > before && b.ops == 1 {
                break;
            }
            drop(b);
            std::thread::yield_now();
        }
        store.shared.arrivals.fetch_sub(1, Ordering::SeqCst);
        let joined = store.write(|tx| {
            put(tx, "joined")?;
            Err::<(), _>(ApiError::internal("the operation failed"))
        });
        assert!(joined.is_err());
        opener.join().unwrap().unwrap();
        assert!(stored(&store, "opener"));
        assert!(!stored(&store, "joined"));
    }

    #[test]
    fn the_live_state_holds_only_what_operations_that_keep_it_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&Storage::File(dir.path().join("l.db")), 1 << 20).unwrap();
        let keep = |seq: u64, fail: bool| {
            move |tx: &dyn Tx| {
                tx.keep_live();
                put(tx, &format!("k{seq}"))?;
                tx.live()
                    .unwrap()
                    .borrow_mut()
                    .set_tip("t", seq, "h".into());
                if fail {
                    return Err(ApiError::conflict("refused", "the operation failed"));
                }
                Ok(())
            }
        };
        store.write(keep(1, false)).unwrap();
        assert_eq!(live_tip(&store), Some(1));
        // Reads that do not write leave it.
        assert!(stored(&store, "k1"));
        assert_eq!(live_tip(&store), Some(1));
        // An operation that fails: what it put there goes with what it wrote.
        assert!(store.write(keep(2, true)).is_err());
        assert_eq!(live_tip(&store), None);
        store.write(keep(3, false)).unwrap();
        // An operation that writes without keeping it in step empties it.
        store.write(|tx| put(tx, "other")).unwrap();
        assert_eq!(live_tip(&store), None);
        store.write(keep(4, false)).unwrap();
        // So does a commit by another connection to the file.
        let other = Connection::open(dir.path().join("l.db")).unwrap();
        other
            .execute(
                "INSERT INTO meta (key, value) VALUES ('elsewhere', x'00')",
                [],
            )
            .unwrap();
        assert_eq!(live_tip(&store), None);
    }

    /// Hands one group to the committer of `store` (whose link is `link`) and holds
    /// the committer until the returned guard of the connection is dropped. The
    /// group's operation only holds `key`'s write back and sets the live state's
    /// tip of tenant `t` to 1; the handle answers it once the guard is dropped.
    fn hand_over_held<'l>(
        store: &Arc<SqliteStore>,
        link: &'l Link,
        key: &'static str,
        value: Vec<u8>,
    ) -> (
        MutexGuard<'l, Conn>,
        std::thread::JoinHandle<Result<(), ApiError>>,
    ) {
        let (release, writer) = hold_open(store, move |tx| {
            tx.keep_live();
            tx.execute_later(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                args![key, value],
            )?;
            tx.live().unwrap().borrow_mut().set_tip("t", 1, "h".into());
            Ok(())
        });
        // Its group is open: the connection is free until it ends.
        let conn = link.conn();
        release.send(()).unwrap();
        // The committer has taken the group, and waits for the connection.
        while !link.commit().busy {
            std::thread::yield_now();
        }
        (conn, writer)
    }

    /// Runs an operation, on a thread of its own, that reads the live state's tip
    /// of tenant `t` and holds `key`'s write back; returns once it has decided
    /// (its group waits for the one being committed), with what it read and its
    /// answer once that group is done.
    fn decide_behind(
        store: &Arc<SqliteStore>,
        key: &'static str,
    ) -> (Option<u64>, std::thread::JoinHandle<Result<(), ApiError>>) {
        let (read, seen) = mpsc::channel();
        let store = store.clone();
        let decided = std::thread::spawn(move || {
            store.write(move |tx| {
                let tip = tx.live().unwrap().borrow().tip("t").map(|(seq, _)| seq);
                read.send(tip).unwrap();
                put_later(tx, key)
            })
        });
        (seen.recv().unwrap(), decided)
    }

    /// A file store whose groups are handed to the committer even when no other
    /// operation waits.
    fn handing_over(path: &Path) -> Arc<SqliteStore> {
        let mut store = SqliteStore::open(&Storage::File(path.to_owned()), 1 << 20).unwrap();
        Arc::get_mut(&mut store.shared).unwrap().hand_over_alone = true;
        Arc::new(store)
    }

    #[test]
    fn a_group_decided_on_a_failed_commits_effects_fails_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = handing_over(&dir.path().join("c.db"));
        store.write(|tx| put(tx, "before")).unwrap();
        let link = store.shared.committer.as_ref().unwrap().link.clone();
        let (conn, big) = hand_over_held(&store, &link, "big", vec![7_u8; 1 << 20]);
        // The database may not grow: the handed-over group's commit will fail.
        let pages: i64 = conn
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        conn.conn
            .execute_batch(&format!("PRAGMA max_page_count = {pages}"))
            .unwrap();
        // The next group is decided on the live state, which holds the first
        // group's effects.
        let (seen, small) = decide_behind(&store, "small");
        assert_eq!(seen, Some(1));
        drop(conn);
        let refused = big.join().unwrap().unwrap_err();
        assert_eq!((refused.status, refused.code), (507, "storage_full"));
        // The small write alone would fit, but it was decided on what was not kept.
        let refused = small.join().unwrap().unwrap_err();
        assert_eq!((refused.status, refused.code), (507, "storage_full"));
        assert_eq!(
            live_tip(&store),
            None,
            "the live state forgot the failed group's effects"
        );
        assert!(!stored(&store, "big") && !stored(&store, "small"));
        store.write(|tx| put(tx, "after")).unwrap();
        assert!(stored(&store, "before") && stored(&store, "after"));
    }

    #[test]
    fn groups_decided_while_another_connection_commits_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let store = handing_over(&path);
        store.write(|tx| put(tx, "before")).unwrap();
        let link = store.shared.committer.as_ref().unwrap().link.clone();
        assert!(!link.shared_recently());
        let (conn, first) = hand_over_held(&store, &link, "first", b"v".to_vec());
        let (seen, second) = decide_behind(&store, "second");
        assert_eq!(seen, Some(1));
        // Another process commits before the handed-over group has begun.
        let other = Connection::open(&path).unwrap();
        other
            .busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        other
            .execute(
                "INSERT INTO meta (key, value) VALUES ('elsewhere', x'00')",
                [],
            )
            .unwrap();
        drop(conn);
        // Neither group commits on a state that may be stale: both are refused,
        // to be retried.
        for answer in [first, second] {
            let refused = answer.join().unwrap().unwrap_err();
            assert_eq!(refused.status, 503, "{refused:?}");
        }
        assert!(!stored(&store, "first") && !stored(&store, "second"));
        assert!(stored(&store, "elsewhere") && stored(&store, "before"));
        // From now on, groups begin their transaction before they decide.
        assert!(link.shared_recently());
        // The retry reads the state again, and commits.
        assert_eq!(live_tip(&store), None);
        store.write(|tx| put_later(tx, "retried")).unwrap();
        assert!(stored(&store, "retried"));
    }

    #[test]
    fn async_operations_are_answered_with_their_own_outcome_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(SqliteStore::open(&Storage::File(dir.path().join("a.db")), 1 << 20).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async {
            // Async operations (some failing, one panicking) and blocking ones, all
            // at once, so that groups hold both kinds.
            let mut answers = Vec::new();
            for i in 0..200_u32 {
                let fut = store
                    .submit(i, |i: &u32, tx: &dyn Tx| {
                        put(tx, &format!("async-{i}"))?;
                        match i % 10 {
                            3 => Err(ApiError::conflict("refused", format!("op {i} refused"))),
                            7 if *i == 7 => panic!("op 7 panics"),
                            _ => Ok(*i),
                        }
                    })
                    .ok()
                    .unwrap();
                answers.push((i, tokio::spawn(fut)));
                if i % 20 == 0 {
                    let store = store.clone();
                    answers.push((
                        1000 + i,
                        tokio::spawn(async move {
                            tokio::task::spawn_blocking(move || {
                                store.write(|tx| put(tx, &format!("sync-{i}")).map(|()| 1000 + i))
                            })
                            .await
                            .unwrap()
                        }),
                    ));
                }
            }
            for (i, answer) in answers {
                let answer = answer.await.unwrap();
                match i {
                    1000.. => assert_eq!(answer.unwrap(), i),
                    7 => assert_eq!(answer.unwrap_err().code, "internal"),
                    i if i % 10 == 3 => assert_eq!(answer.unwrap_err().code, "refused"),
                    i => assert_eq!(answer.unwrap(), i),
                }
            }
        });
        // Every answered operation's change is there, and no refused one's.
        for i in 0..200_u32 {
            let kept = i % 10 != 3 && i != 7;
            assert_eq!(stored(&store, &format!("async-{i}")), kept, "op {i}");
        }
        for i in (0..200_u32).step_by(20) {
            assert!(stored(&store, &format!("sync-{i}")));
        }
        // Committed to the WAL and synced, whichever way they came.
        let d = store.shared.durability.as_ref().unwrap();
        let upto = d.lock().upto;
        assert_eq!(upto, store.shared.writer.lock().committed);
    }

    #[test]
    fn held_back_writes_are_sent_merged_and_a_failed_operations_alone_are_undone() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(SqliteStore::open(&Storage::File(dir.path().join("h.db")), 1 << 20).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async {
            // 300 operations at once, so that groups form: each holds its write
            // back; every other one then reads (which sends what the group held,
            // its own write inside its savepoint); every third fails, before or
            // after it sent anything.
            let mut answers = Vec::new();
            for i in 0..300_u32 {
                let fut = store
                    .submit(i, move |i: &u32, tx: &dyn Tx| {
                        let key = format!("held-{i}");
                        put_later(tx, &key)?;
                        if i.is_multiple_of(2) {
                            let seen: i64 = tx.query_one(
                                "SELECT COUNT(*) FROM meta WHERE key = ?1",
                                args![key],
                                |r| r.get(0),
                            )?;
                            assert_eq!(seen, 1, "an operation reads what it held back");
                        }
                        if i.is_multiple_of(3) {
                            return Err(ApiError::conflict("refused", "refused"));
                        }
                        Ok(*i)
                    })
                    .ok()
                    .unwrap();
                answers.push((i, tokio::spawn(fut)));
            }
            for (i, answer) in answers {
                let answer = answer.await.unwrap();
                assert_eq!(answer.is_err(), i % 3 == 0, "op {i}: {answer:?}");
            }
            for i in 0..300_u32 {
                assert_eq!(stored(&store, &format!("held-{i}")), i % 3 != 0, "op {i}");
            }

            // A held-back write that fails when it is sent (op 5 writes a key
            // twice) fails its whole group if it was merged into the commit:
            // whatever was answered Ok is stored, and nothing else.
            let mut answers = Vec::new();
            for i in 0..16_u32 {
                let fut = store
                    .submit(i, move |i: &u32, tx: &dyn Tx| {
                        put_later(tx, &format!("dup-{i}"))?;
                        if *i == 5 {
                            put_later(tx, "dup-twice")?;
                            put_later(tx, "dup-twice")?;
                        }
                        Ok(())
                    })
                    .ok()
                    .unwrap();
                answers.push((i, tokio::spawn(fut)));
            }
            // Every answer first: a read sent while a group is still open would
            // join it, and fail with it.
            let mut answered = Vec::new();
            for (i, answer) in answers {
                answered.push((i, answer.await.unwrap()));
            }
            for (i, answer) in answered {
                assert_eq!(
                    answer.is_ok(),
                    stored(&store, &format!("dup-{i}")),
                    "op {i}"
                );
                assert!(i != 5 || answer.is_err());
            }
            assert!(!stored(&store, "dup-twice"));
        });
    }

    #[test]
    fn a_read_past_held_writes_sends_them_only_if_one_may_change_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&Storage::File(dir.path().join("p.db")), 1 << 20).unwrap();
        let count = |tx: &dyn Tx, key: &str, may_change: &dyn Fn(&Held) -> bool| {
            tx.query_past_held(
                "SELECT COUNT(*) FROM meta WHERE key = ?1",
                args![key],
                may_change,
            )
            .unwrap()[0]
                .get::<i64>(0)
                .unwrap()
        };
        let of_key = |key: &'static str| move |h: &Held| matches!(h.args.first(), Some(Value::Text(k)) if k == key);
        // Another operation waits to join: writes are held back.
        store.shared.arrivals.fetch_add(1, Ordering::SeqCst);
        let (ran, has_run) = mpsc::channel();
        let answer = store
            .submit((), move |(), tx: &dyn Tx| {
                put_later(tx, "b")?;
                // No held write is of "a": the read goes past them, so held "b"
                // is not seen by it.
                assert_eq!(count(tx, "b", &of_key("a")), 0);
                assert_eq!(count(tx, "b", &|_| false), 0);
                // One is: every held write is sent first, and seen.
                put_later(tx, "a")?;
                assert_eq!(count(tx, "a", &of_key("a")), 1);
                assert_eq!(count(tx, "b", &|_| false), 1);
                // Anything but a read sends them (none is held now, either way).
                put_later(tx, "c")?;
                tx.query_past_held(
                    "INSERT INTO meta (key, value) VALUES ('d', x'00') RETURNING key",
                    &[],
                    &|_| false,
                )?;
                assert_eq!(count(tx, "c", &|_| false), 1);
                ran.send(()).unwrap();
                Ok(())
            })
            .ok()
            .unwrap();
        has_run
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        // The group is still open: the operation it waited for commits it.
        store.shared.arrivals.fetch_sub(1, Ordering::SeqCst);
        store.write(|_| Ok(())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(answer).unwrap();
        for key in ["a", "b", "c", "d"] {
            assert!(stored(&store, key), "{key}");
        }
    }

    #[test]
    fn a_full_database_refuses_writes_with_storage_full_and_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(SqliteStore::open(&Storage::File(dir.path().join("f.db")), 1 << 20).unwrap());
        store.write(|tx| put(tx, "before")).unwrap();
        let limit = |pages: Option<i64>| {
            let b = store.shared.writer.lock();
            b.link.settle();
            let conn = b.link.conn();
            let now: i64 = conn
                .conn
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .unwrap();
            conn.conn
                .execute_batch(&format!("PRAGMA max_page_count = {}", pages.unwrap_or(now)))
                .unwrap();
        };
        // The database may not grow past what it holds now.
        limit(None);
        let big = vec![7_u8; 1 << 20];
        let write_big = |tx: &dyn Tx| {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('big', ?1)",
                args![big.clone()],
            )
            .map(drop)
            .map_err(ApiError::from)
        };
        let refused = store.write(write_big).unwrap_err();
        assert_eq!((refused.status, refused.code), (507, "storage_full"));
        // Held back and sent with the group's commit: the commit is refused, and
        // the operation with it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let answers = rt.block_on(async {
            let mut answers = Vec::new();
            for i in 0..4_u32 {
                let big = big.clone();
                answers.push(tokio::spawn(
                    store
                        .submit(i, move |i: &u32, tx: &dyn Tx| {
                            Ok(tx.execute_later(
                                "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                                args![format!("big-{i}"), big],
                            )?)
                        })
                        .ok()
                        .unwrap(),
                ));
            }
            let mut out = Vec::new();
            for a in answers {
                out.push(a.await.unwrap());
            }
            out
        });
        for a in answers {
            let refused = a.unwrap_err();
            assert_eq!((refused.status, refused.code), (507, "storage_full"));
        }
        assert!(!stored(&store, "big"));
        assert!((0..4).all(|i| !stored(&store, &format!("big-{i}"))));
        // With room again, writes go on, and nothing was lost.
        limit(Some(1 << 30));
        store.write(|tx| put(tx, "after")).unwrap();
        assert!(stored(&store, "before") && stored(&store, "after"));
    }

    #[test]
    fn reads_see_committed_state_without_waiting_for_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(SqliteStore::open(&Storage::File(dir.path().join("r.db")), 1 << 20).unwrap());
        store.write(|tx| put(tx, "committed")).unwrap();
        // A write that holds the writer thread (and its open group) until released.
        let (release, holder) = hold_open(&store, |tx| put(tx, "uncommitted"));
        let (answer, answered) = mpsc::channel();
        {
            let store = store.clone();
            std::thread::spawn(move || {
                let seen = store.read(|tx| {
                    Ok(tx.query_map(
                        "SELECT key FROM meta WHERE key IN ('committed', 'uncommitted')",
                        args![],
                        |r| r.get::<String>(0),
                    )?)
                });
                answer.send(seen).unwrap();
            });
        }
        let seen = answered
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the read waited for the writer");
        assert_eq!(seen.unwrap(), ["committed"]);
        release.send(()).unwrap();
        holder.join().unwrap().unwrap();
        // A reader's connection refuses writes, and is kept for the next read.
        assert!(store.read(|tx| put(tx, "refused")).is_err());
        assert!(stored(&store, "uncommitted"));
        assert!(!store.readers.lock().unwrap().is_empty());
    }

    #[test]
    fn an_in_memory_store_gives_an_async_operation_back() {
        let store = SqliteStore::open(&Storage::Memory, 1 << 20).unwrap();
        let back = store.submit(5_u32, |n: &u32, _: &dyn Tx| Ok(*n));
        let Err((context, f)) = back else {
            panic!("an in-memory store has no writer thread to queue to");
        };
        assert_eq!(store.write(|tx| f(&context, tx)).unwrap(), 5);
    }

    fn page_size(store: &SqliteStore) -> i64 {
        store
            .write(|tx| Ok(tx.query_one("PRAGMA page_size", args![], |r| r.get(0))?))
            .unwrap()
    }

    #[test]
    fn the_figures_count_each_commit_its_operations_and_each_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&Storage::File(dir.path().join("s.db")), 1 << 20).unwrap();
        let (commits, fsyncs) = (
            store.stats().operations.count(),
            store.stats().fsync_us.count(),
        );
        for n in 0..3 {
            store
                .write(|tx| {
                    Ok(tx.execute(
                        "INSERT INTO meta (key, value) VALUES (?1, x'00')",
                        args![format!("k{n}")],
                    )?)
                })
                .unwrap();
        }
        // One caller at a time: a commit each, each made durable before the next.
        assert_eq!(store.stats().operations.count(), commits + 3);
        assert_eq!(store.stats().commit_us.count(), commits + 3);
        assert!(store.stats().operations.sum() >= 3);
        assert!(store.stats().fsync_us.count() > fsyncs);
        // A failed operation commits nothing: it is not counted.
        let _ = store.write(|tx| Ok(tx.execute("INSERT INTO meta (key) VALUES ('k0')", args![])?));
        assert_eq!(store.stats().commit_us.count(), commits + 3);
        let mut out = String::new();
        store.stats().render(&mut out, true);
        assert!(
            out.contains(&format!(
                "paybond_store_commit_operations_count {}",
                commits + 3
            )),
            "{out}"
        );
    }

    #[test]
    fn a_new_database_takes_small_pages_and_an_existing_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let new = SqliteStore::open(&Storage::File(dir.path().join("new.db")), 1 << 20).unwrap();
        assert_eq!(page_size(&new), PAGE_SIZE);

        // A database created with SQLite's default pages, as earlier versions did.
        let old = dir.path().join("old.db");
        {
            let conn = Connection::open(&old).unwrap();
            conn.pragma_update(None, "page_size", 4096).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            conn.execute_batch(LEGACY_SCHEMA).unwrap();
            put(&conn, "before").unwrap();
        }
        let store = SqliteStore::open(&Storage::File(old), 1 << 20).unwrap();
        assert_eq!(page_size(&store), 4096);
        assert!(stored(&store, "before"));
        store.write(|tx| put(tx, "after")).unwrap();
        assert!(stored(&store, "after"));
    }

    #[test]
    fn open_reservations_are_found_through_their_own_indexes() {
        use crate::store::ops::intents::{DUE, LAPSED_OF_INTENT, OPEN, OPEN_OF_INTENT};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&Storage::File(dir.path().join("p.db")), 1 << 20).unwrap();
        let plan = |sql: &str, args: &[crate::store::Arg<'_>]| -> String {
            store
                .write(|tx| {
                    Ok(
                        tx.query_map(&format!("EXPLAIN QUERY PLAN {sql}"), args, |r| {
                            r.get::<String>(3)
                        })?,
                    )
                })
                .unwrap()
                .join("; ")
        };
        for (sql, args, index) in [
            (
                LAPSED_OF_INTENT,
                args!["i", 1_i64],
                "reservations_open_by_intent_expiry",
            ),
            (
                OPEN_OF_INTENT,
                args!["i", 1_i64],
                "reservations_open_by_intent_expiry",
            ),
            (
                crate::store::ops::spend::INTENT,
                args!["i", "t"],
                "reservations_open_by_intent_expiry",
            ),
            (
                crate::store::ops::spend::LAPSE_OF_INTENT,
                args!["i", 1_i64],
                "reservations_open_by_intent_expiry",
            ),
            (DUE, args![1_i64], "reservations_open_by_expiry"),
            (OPEN, args![1_i64], "reservations_open_by_expiry"),
        ] {
            let plan = plan(sql, args);
            assert!(plan.contains(index), "{sql}\n{plan}");
            assert!(!plan.contains("SCAN reservations"), "{sql}\n{plan}");
        }
    }

    #[test]
    fn commits_before_a_failed_fsync_stay_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("paybond.db-wal");
        std::fs::write(&wal, b"wal").unwrap();
        let mut durability = Durability::new(wal, Arc::default());
        end_and_sync(&durability, 3);
        durability.wait(3).unwrap();
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, b"").unwrap();
        durability.wal = blocker.join("paybond.db-wal");
        end_and_sync(&durability, 4);
        assert!(durability.wait(4).is_err());
        durability.wait(3).unwrap();
    }
}
