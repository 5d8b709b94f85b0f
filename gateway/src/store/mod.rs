//! Where the engine keeps its state: the small interface the decision logic is
//! written against, and its two implementations.
//!
//! The engine runs every operation as one transaction through [`Store::write`]: a
//! closure over a [`Tx`], whose methods are typed operations ([`ops`]: append a
//! ledger entry, reserve, finalize, read an intent or a projection…) taking and
//! returning plain values. The SQL behind them (a portable subset: `?N`
//! placeholders, `ON CONFLICT` upserts, explicit `CAST`s on sums) is private to
//! this module: outside it, a statement, an argument or a row cannot be named, so
//! the engine cannot run SQL of its own. [`sqlite`] commits transactions in
//! groups on one connection; [`postgres`] runs them on a pool against a database
//! shared by several gateway replicas, each tenant's mutations serialized by a
//! lock on its row.

use std::borrow::Cow;

use crate::engine::live::LiveState;
use crate::error::ApiError;
use held::Held;

mod error;
mod held;
mod ops;
pub(crate) mod postgres;
pub(crate) mod schema;
pub(crate) mod sqlite;
pub(crate) mod stats;

pub use error::StoreError;
pub(crate) use ops::*;
pub(crate) use sqlite::DEFAULT_WAL_LIMIT_BYTES;

/// Where the engine keeps its state.
#[derive(Debug, Clone)]
pub enum Storage {
    /// A SQLite file (created if missing), e.g. `<data dir>/paybond.db`.
    File(std::path::PathBuf),
    /// A private in-memory SQLite database: for tests and benchmarks; gone with the engine.
    Memory,
    /// A PostgreSQL database shared by every replica of a fleet
    /// (`postgres://user@host:port/db`).
    Postgres(DatabaseUrl),
}

/// A `postgres://` connection string. Its `Debug` and `Display` hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a connection string; refuses anything but `postgres://` and `postgresql://`.
    pub fn parse(url: &str) -> Result<Self, ApiError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self(url.to_owned()))
        } else {
            Err(ApiError::bad_request(
                "invalid_database_url",
                "database URL: expected postgres://user[:password]@host[:port]/database",
            ))
        }
    }

    /// The connection string, password included.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    fn redacted(&self) -> String {
        // postgres://user:password@host/db?sslmode=require&password=x
        //   → postgres://user:***@host/db?***
        // Everything up to the last `@` is taken as userinfo (a password may hold
        // `@`, `?` or `/`), so nothing of a password shows; the query string may
        // carry a password too, so none of it is shown. Hiding too much is fine.
        fn hide_query(s: &str) -> String {
            match s.split_once('?') {
                Some((before, _)) => format!("{before}?***"),
                None => s.to_owned(),
            }
        }
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return "***".to_owned();
        };
        match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let (user, hidden) = match userinfo.split_once(':') {
                    Some((user, _)) => (user, ":***"),
                    None => (userinfo, ""),
                };
                format!(
                    "{scheme}://{}{hidden}@{}",
                    hide_query(user),
                    hide_query(host)
                )
            }
            None => format!("{scheme}://{}", hide_query(rest)),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The capability-token root key of a SQLite database: a file of its own next to
/// it (`paybond.db` → `paybond.key`), mode 0600, so the database holds no key.
pub fn root_key_path(database: &std::path::Path) -> std::path::PathBuf {
    database.with_extension("key")
}

/// The lock file beside a SQLite database (`paybond.lock` beside `paybond.db`).
pub fn data_lock_path(database: &std::path::Path) -> std::path::PathBuf {
    database.with_extension("lock")
}

/// An advisory lock on a SQLite store's lock file ([`data_lock_path`]), released
/// when dropped or when the process ends however it ends. Every engine open on the
/// database holds it shared; replacing the root key takes it exclusive, so neither
/// happens while the other does.
#[derive(Debug)]
pub(crate) struct DataLock {
    _file: std::fs::File,
}

impl DataLock {
    fn open(database: &std::path::Path) -> Result<(std::fs::File, std::path::PathBuf), ApiError> {
        let path = data_lock_path(database);
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(&path)
            .map_err(|e| ApiError::unusable(format!("cannot open {}: {e}", path.display())))?;
        Ok((file, path))
    }

    /// Shared, for an engine on `database`: refused while the root key is replaced.
    pub(crate) fn shared(database: &std::path::Path) -> Result<Self, ApiError> {
        let (file, path) = Self::open(database)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(ApiError::new(
                409,
                "data_dir_in_use",
                format!(
                    "the root key of {} is being replaced ({} is locked); start the gateway \
                     when `paybond dev rotate-root-key` has finished",
                    database.display(),
                    path.display()
                ),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(ApiError::unusable(format!(
                "cannot lock {}: {e}",
                path.display()
            ))),
        }
    }

    /// Exclusive, to replace the root key: refused while a gateway (or any
    /// engine) has the database open.
    pub(crate) fn exclusive(database: &std::path::Path) -> Result<Self, ApiError> {
        let (file, path) = Self::open(database)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(ApiError::new(
                409,
                "data_dir_in_use",
                format!(
                    "a gateway is running on {} (it holds {}); stop it first, then rotate \
                     the root key and start it again",
                    database
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty())
                        .unwrap_or(std::path::Path::new("."))
                        .display(),
                    path.display()
                ),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(ApiError::unusable(format!(
                "cannot lock {}: {e}",
                path.display()
            ))),
        }
    }
}

/// Reads a root key file (hex); `None` if there is none.
pub(crate) fn read_key_file(path: &std::path::Path) -> Result<Option<Vec<u8>>, ApiError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ApiError::unusable(format!(
                "cannot read the root key {}: {e}",
                path.display()
            )));
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| ApiError::unusable(format!("cannot secure {}: {e}", path.display())),
            )?;
        }
    }
    crate::tokens::unhex(&text).map(Some).ok_or_else(|| {
        ApiError::unusable(format!(
            "{}: not a root key (64 hex digits expected)",
            path.display()
        ))
    })
}

/// Writes a root key file atomically (a 0600 temporary file, synced, renamed over
/// the old one, the directory synced), so a crash leaves the old key or the new.
pub(crate) fn write_key_file(path: &std::path::Path, key: &[u8]) -> Result<(), ApiError> {
    use std::io::Write as _;
    let fail = |e: std::io::Error| {
        ApiError::unusable(format!("cannot write the root key {}: {e}", path.display()))
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(fail)?;
    file.write_all(format!("{}\n", crate::tokens::hex(key)).as_bytes())
        .map_err(fail)?;
    file.sync_all().map_err(fail)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(fail)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)
}

/// The default database file inside a data directory.
pub fn database_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("paybond.db")
}

/// A value bound to a statement.
#[derive(Debug, Clone)]
pub(in crate::store) enum Arg<'a> {
    Null,
    Int(i64),
    Text(Cow<'a, str>),
    Blob(&'a [u8]),
}

/// Something that binds as a statement argument.
pub(in crate::store) trait ToArg {
    fn to_arg(&self) -> Arg<'_>;
}

impl ToArg for str {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Text(Cow::Borrowed(self))
    }
}

impl ToArg for String {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Text(Cow::Borrowed(self))
    }
}

impl ToArg for i64 {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Int(*self)
    }
}

impl ToArg for u64 {
    fn to_arg(&self) -> Arg<'_> {
        // Amounts, counts and sequence numbers are far below 2^63; a larger one (a
        // query bound such as `after_seq`) compares the same as the largest i64.
        Arg::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToArg for u32 {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Int(i64::from(*self))
    }
}

impl ToArg for [u8] {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Blob(self)
    }
}

impl ToArg for Vec<u8> {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Blob(self)
    }
}

impl<T: ToArg + ?Sized> ToArg for &T {
    fn to_arg(&self) -> Arg<'_> {
        (**self).to_arg()
    }
}

impl<T: ToArg> ToArg for Option<T> {
    fn to_arg(&self) -> Arg<'_> {
        self.as_ref().map_or(Arg::Null, ToArg::to_arg)
    }
}

/// Statement arguments: `args![a, b]` binds `?1`, `?2` (by reference, like rusqlite's `params!`).
macro_rules! args {
    () => { &[] as &[$crate::store::Arg<'_>] };
    ($($x:expr),+ $(,)?) => { &[$($crate::store::ToArg::to_arg(&$x)),+] as &[$crate::store::Arg<'_>] };
}
pub(in crate::store) use args;

/// A value read from a row.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::store) enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    /// The value as a statement argument.
    pub(in crate::store) fn as_arg(&self) -> Arg<'_> {
        match self {
            Self::Null => Arg::Null,
            Self::Int(i) => Arg::Int(*i),
            Self::Text(t) => Arg::Text(Cow::Borrowed(t)),
            Self::Blob(b) => Arg::Blob(b),
        }
    }
}

impl From<&Arg<'_>> for Value {
    fn from(a: &Arg<'_>) -> Self {
        match a {
            Arg::Null => Self::Null,
            Arg::Int(i) => Self::Int(*i),
            Arg::Text(t) => Self::Text(t.to_string()),
            Arg::Blob(b) => Self::Blob(b.to_vec()),
        }
    }
}

/// A type a [`Value`] converts into.
pub(in crate::store) trait FromValue: Sized {
    fn from_value(v: Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }
}

impl FromValue for u64 {
    fn from_value(v: Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u64::try_from(i).ok())
    }
}

impl FromValue for u32 {
    fn from_value(v: Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u32::try_from(i).ok())
    }
}

impl FromValue for bool {
    fn from_value(v: Value) -> Option<Self> {
        i64::from_value(v).map(|i| i != 0)
    }
}

impl FromValue for String {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b),
            Value::Text(s) => Some(s.into_bytes()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One row of a result.
#[derive(Debug)]
pub(in crate::store) struct Row(pub(in crate::store) Vec<Value>);

impl Row {
    /// Column `i` as a `T`; a stored value of another type is a storage error.
    pub(in crate::store) fn get<T: FromValue>(&self, i: usize) -> Result<T, StoreError> {
        let v = self.0.get(i).cloned().unwrap_or(Value::Null);
        T::from_value(v).ok_or_else(|| {
            StoreError::Failed(format!(
                "storage: column {i} holds {:?}, not a {}",
                self.0.get(i),
                std::any::type_name::<T>()
            ))
        })
    }
}

/// The statements a transaction runs: SQL with `?1`, `?2`, … placeholders.
///
/// Private to `store`: outside it these methods cannot be called, even on a
/// `dyn Tx`. The engine calls the typed operations [`ops`] defines on a [`Tx`];
/// only they, the stores and the schema write statements.
mod sql {
    use super::StoreError;
    use super::{Arg, Held, Row};

    /// Runs SQL in one transaction (see [`super::Tx`]).
    pub(in crate::store) trait Sql {
        /// Runs a statement; the number of rows it changed.
        fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError>;

        /// Runs a query; every row.
        fn query(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError>;

        /// Runs a write whose only outcome that matters is success. A store may hold it
        /// back and send it with the transaction's next statement or its commit
        /// (PostgreSQL pipelines them: one round trip for several), merged with other
        /// held-back writes of its kind ([`super::held::coalesce`]: multi-row inserts, summed
        /// additive updates). Its failure may therefore be reported by a later
        /// statement, or by the commit of the group the operation ran in; either way
        /// no operation whose writes were lost is answered Ok. The SQL is one of the
        /// store's constant statements.
        fn execute_later(&self, sql: &'static str, args: &[Arg<'_>]) -> Result<(), StoreError> {
            self.execute(sql, args).map(drop)
        }

        /// Runs a query that reads nothing a held-back write ([`Self::execute_later`])
        /// could change unless `may_change` says so of it: the held-back writes are
        /// sent first only if one of them may change the answer, and otherwise stay
        /// held, to merge with later ones. `may_change` must err towards `true`.
        fn query_past_held(
            &self,
            sql: &str,
            args: &[Arg<'_>],
            may_change: &dyn Fn(&Held) -> bool,
        ) -> Result<Vec<Row>, StoreError> {
            let _ = may_change;
            self.query(sql, args)
        }

        /// The rows of [`super::ops::tenants::KEPT_ANSWER`] for `tenant`'s idempotency
        /// `key`, read past the held-back writes that cannot change them. A store
        /// may answer from what it read ahead (PostgreSQL: with the keys of the
        /// writes waiting to run in the same group).
        fn kept_answer_rows(&self, tenant: &str, key: &str) -> Result<Vec<Row>, StoreError> {
            self.query_past_held(
                super::ops::tenants::KEPT_ANSWER,
                super::args![tenant, key],
                &|held: &Held| super::ops::tenants::may_change_key(held, tenant, key),
            )
        }
    }
}

/// One transaction of the engine: the typed operations of [`ops`] (inherent
/// methods of `dyn Tx`), over the statements of its store.
#[allow(private_bounds)] // on purpose: the statements are `store`'s alone (see `sql`)
pub(crate) trait Tx: sql::Sql {
    /// Serializes this transaction against every other that locks the same tenant
    /// (a row lock on PostgreSQL; SQLite has one writer, so nothing to do).
    fn lock_tenant(&self, tenant_id: &str) -> Result<(), StoreError>;

    /// The writer's in-memory spend state ([`LiveState`]), where one writer makes
    /// every change to the database (SQLite); `None` elsewhere (PostgreSQL, whose
    /// replicas share the database; read-only transactions).
    fn live(&self) -> Option<&std::cell::RefCell<LiveState>> {
        None
    }

    /// Declares that this operation keeps the live state's intents in step with
    /// what it writes. The writer empties the live state after any operation that
    /// writes without declaring it.
    fn keep_live(&self) {}
}

impl dyn Tx + '_ {
    /// The rows of a query, each turned into a `T`.
    pub(in crate::store) fn query_map<T>(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        f: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        self.query(sql, args)?.iter().map(f).collect()
    }

    /// The first row of a query, if any.
    pub(in crate::store) fn query_opt<T>(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        f: impl FnOnce(&Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        self.query(sql, args)?.first().map(f).transpose()
    }

    /// The first row of a query; none is a storage error.
    pub(in crate::store) fn query_one<T>(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        f: impl FnOnce(&Row) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.query_opt(sql, args, f)?.ok_or_else(|| {
            StoreError::Failed("storage: a query expected a row and got none".to_owned())
        })
    }
}

/// What a write of a tenant's will read first, when it is known before the write
/// runs: a store may read it ahead, with other reads (see
/// [`postgres::PgStore::write_as`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReadAhead<'a> {
    /// The intent the write decides on.
    pub(crate) intent: Option<uuid::Uuid>,
    /// The idempotency key the write reads its kept answer under
    /// (the store's `kept_answer`).
    pub(crate) key: Option<&'a str>,
}

/// The engine's store: SQLite (one file or memory) or PostgreSQL.
#[allow(clippy::large_enum_variant)] // one per engine, never moved after it opens
pub(crate) enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Runs `f` on one read-only snapshot of `storage`, opened for it alone: nothing
/// is migrated, locked or written (a gateway may be running on it). For tools
/// that read a store (what-if replay); an in-memory database has nothing to read.
pub(crate) fn read_only<T: Send>(
    storage: &Storage,
    f: impl FnOnce(&dyn Tx) -> Result<T, ApiError> + Send,
) -> Result<T, ApiError> {
    match storage {
        Storage::File(path) => sqlite::read_only(path, f),
        Storage::Postgres(url) => postgres::PgStore::open_read_only(url)?.read(f),
        Storage::Memory => Err(ApiError::unusable(
            "an in-memory database is private to its process: nothing to read",
        )),
    }
}

impl Store {
    /// Opens `storage`; a SQLite file keeps its WAL under `wal_limit_bytes`.
    pub(crate) fn open(storage: &Storage, wal_limit_bytes: u64) -> Result<Self, ApiError> {
        Ok(match storage {
            Storage::File(_) | Storage::Memory => {
                Self::Sqlite(sqlite::SqliteStore::open(storage, wal_limit_bytes)?)
            }
            Storage::Postgres(url) => Self::Postgres(postgres::PgStore::open(url)?),
        })
    }

    /// Runs `f` as one transaction, committed when it returns `Ok` and rolled back
    /// when it returns `Err`. When `tenant` is given, the transaction holds that
    /// tenant's lock from its start. Returns only once the commit is durable.
    pub(crate) fn write<T: Send>(
        &self,
        tenant: Option<&str>,
        f: impl FnOnce(&dyn Tx) -> Result<T, ApiError> + Send,
    ) -> Result<T, ApiError> {
        self.write_on(tenant, ReadAhead::default(), f)
    }

    /// [`Self::write`] for a write that says what it will read first, which a
    /// store may then read ahead of `f` (see [`postgres::PgStore::write_as`]).
    pub(crate) fn write_on<T: Send>(
        &self,
        tenant: Option<&str>,
        ahead: ReadAhead<'_>,
        f: impl FnOnce(&dyn Tx) -> Result<T, ApiError> + Send,
    ) -> Result<T, ApiError> {
        let locked = |tx: &dyn Tx| {
            if let Some(t) = tenant {
                tx.lock_tenant(t)?;
            }
            f(tx)
        };
        match (self, tenant) {
            (Self::Sqlite(s), _) => s.write(locked),
            // A tenant's writes on a replica share a transaction holding its lock.
            (Self::Postgres(p), Some(t)) => p.write_as(t, ahead, locked),
            (Self::Postgres(p), None) => p.write(locked),
        }
    }

    /// [`Self::write`] for async callers, where the store can answer without a
    /// blocking thread (the SQLite file store: see [`sqlite::SqliteStore::submit`]).
    /// Gives `context` and `f` back otherwise.
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
        match self {
            Self::Sqlite(s) => s.submit(context, f),
            Self::Postgres(_) => Err((context, f)),
        }
    }

    /// Runs `f` in a read-only transaction over one snapshot, beside the writes
    /// (see [`sqlite::SqliteStore::read`] and [`postgres::PgStore::read`]).
    pub(crate) fn read<T: Send>(
        &self,
        f: impl FnOnce(&dyn Tx) -> Result<T, ApiError> + Send,
    ) -> Result<T, ApiError> {
        match self {
            Self::Sqlite(s) => s.read(f),
            Self::Postgres(p) => p.read(f),
        }
    }

    /// Its commit (and fsync) figures in the Prometheus text format.
    pub(crate) fn render_stats(&self, out: &mut String) {
        match self {
            Self::Sqlite(s) => s.stats().render(out, !s.in_memory()),
            Self::Postgres(p) => p.stats().render(out, false),
        }
    }

    /// Whether the store reads ahead what a write says it will read first
    /// ([`ReadAhead`]): the others need not be told.
    pub(crate) fn reads_ahead(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// Whether other processes share this store.
    pub(crate) fn shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// Whether the store is in memory: its operations wait for no disk and no
    /// network, only for each other, so async callers run them where they are.
    pub(crate) fn in_memory(&self) -> bool {
        matches!(self, Self::Sqlite(s) if s.in_memory())
    }

    /// What this engine has heard of key revocations by other replicas; a key
    /// cached under another value is read again (always 0 for SQLite, whose one
    /// engine makes every revocation itself).
    pub(crate) fn keys_generation(&self) -> u64 {
        match self {
            Self::Sqlite(_) => 0,
            Self::Postgres(p) => p.keys_generation(),
        }
    }

    /// Tells the other replicas that a key was revoked.
    pub(crate) fn keys_changed(&self) -> Result<(), ApiError> {
        match self {
            Self::Sqlite(_) => Ok(()),
            Self::Postgres(p) => p.keys_changed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DatabaseUrl;

    #[test]
    fn a_database_url_never_shows_its_password() {
        let cases = [
            (
                "postgres://app:s3cret@db:5432/paybond",
                "postgres://app:***@db:5432/paybond",
            ),
            (
                "postgres://app:p@ss@word@db/paybond",
                "postgres://app:***@db/paybond",
            ),
            (
                "postgres://app:pa?ss/x@db/paybond",
                "postgres://app:***@db/paybond",
            ),
            ("postgresql://app@db/paybond", "postgresql://app@db/paybond"),
            (
                "postgres://db/paybond?user=app&password=s3cret",
                "postgres://db/paybond?***",
            ),
            (
                "postgres://app:s3cret@db/paybond?password=s3cret",
                "postgres://app:***@db/paybond?***",
            ),
        ];
        for (url, shown) in cases {
            let url = DatabaseUrl::parse(url).expect("a postgres URL");
            assert_eq!(format!("{url}"), shown);
            assert_eq!(format!("{url:?}"), shown);
            assert!(!format!("{url} {url:?}").contains("s3cret"));
            assert!(!format!("{url} {url:?}").contains("ss"), "{url}");
        }
    }
}
