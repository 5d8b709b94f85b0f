//! The schema of both stores: one list of numbered migrations, written once in
//! the portable subset of SQL that SQLite and PostgreSQL share, applied in order
//! and recorded in `schema_migrations` by each store. PostgreSQL runs them as
//! written; SQLite with its names for two types ([`sqlite`]). A database whose
//! migrations are newer than this build's is refused, never changed.

use crate::error::ApiError;

/// One migration: its number, the oldest build that can still serve a database
/// it was applied to, and its SQL.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// Its number in `schema_migrations`.
    pub(crate) version: i64,
    /// The oldest build (named by the newest migration it knows, its
    /// [`LATEST`]) that can still serve the database once this migration is
    /// applied: `version - 1` for a migration that only adds what older builds
    /// ignore (a rolling upgrade keeps the previous build serving), `version`
    /// for one that changes what they read or write.
    pub(crate) served_from: i64,
    /// The SQL, in the portable subset.
    pub(crate) sql: &'static str,
}

/// The migrations, in order. Add new ones at the end; never edit one that shipped.
/// Those before the replica registry (8) predate the serving floor and count as
/// changing what older builds read.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        served_from: 1,
        sql: V1,
    },
    Migration {
        version: 2,
        served_from: 2,
        sql: V2,
    },
    Migration {
        version: 3,
        served_from: 3,
        sql: V3,
    },
    Migration {
        version: 4,
        served_from: 4,
        sql: V4,
    },
    Migration {
        version: 5,
        served_from: 5,
        sql: V5,
    },
    Migration {
        version: 6,
        served_from: 6,
        sql: V6,
    },
    Migration {
        version: 7,
        served_from: 7,
        sql: V7,
    },
    Migration {
        version: 8,
        served_from: 7,
        sql: V8,
    },
    Migration {
        version: 9,
        served_from: 8,
        sql: V9,
    },
    // Only adds what builds of 8 and 9 ignore: they keep serving.
    Migration {
        version: 10,
        served_from: 8,
        sql: V10,
    },
];

/// The newest migration this build knows.
pub(crate) const LATEST: i64 = 10;

/// The migration that created the serving floor (`schema_floor`) and the replica
/// registry (`replicas`).
pub(crate) const FLOOR_SINCE: i64 = 8;

/// How long after its last heartbeat a replica counts as serving: a migration
/// that its build cannot serve is refused until then.
pub(crate) const REPLICA_TTL_MS: i64 = 10_000;

/// `sql` as SQLite spells it: `BIGINT` is `INTEGER` and `BYTEA` is `BLOB` there
/// (SQLite would give `BYTEA` numeric affinity).
pub(crate) fn sqlite(sql: &str) -> String {
    sql.replace("BIGINT", "INTEGER").replace("BYTEA", "BLOB")
}

/// What applying `m` runs (before its row in `schema_migrations`): its SQL, then
/// raising the serving floor to what it needs (the migration creating the floor
/// sets it itself).
pub(crate) fn apply_sql(m: &Migration) -> String {
    if m.version > FLOOR_SINCE {
        format!(
            "{}; UPDATE schema_floor SET served_from = {served} WHERE id = 1 AND served_from < {served}",
            m.sql,
            served = m.served_from
        )
    } else {
        m.sql.to_owned()
    }
}

/// Whether a build knowing migrations up to `latest` may serve a database whose
/// newest migration is `newest` and whose serving floor is `floor` (`None`: a
/// database from before the floor, served only by builds that know its newest
/// migration). A database migrated past `latest` by a newer build is served when
/// each of those migrations kept this build serving.
pub(crate) fn check_served(
    newest: i64,
    floor: Option<i64>,
    latest: i64,
    place: &str,
) -> Result<(), ApiError> {
    let floor = floor.unwrap_or(newest);
    if newest > latest && floor > latest {
        return Err(too_new(newest, floor, latest, place));
    }
    Ok(())
}

/// The refusal of a database a newer build migrated past what this one can serve.
pub(crate) fn too_new(applied: i64, floor: i64, latest: i64, place: &str) -> ApiError {
    ApiError::unusable(format!(
        "{place} was written by a newer paybond gateway (schema version {applied}, served by \
         builds from schema version {floor} on; this build knows up to {latest}): run that \
         version or a later one, or start this one on another data directory or database. \
         Nothing in {place} was changed."
    ))
}

/// A running replica's refusal to write once a newer build raised the serving
/// floor past it: 503, nothing decided or changed (the answer to
/// [`super::StoreError::Outdated`]).
pub(crate) fn outdated(floor: i64) -> ApiError {
    ApiError::new(
        503,
        "replica_outdated",
        format!(
            "this gateway knows the database schema up to version {LATEST}, and a newer \
             gateway changed the database so that only builds from version {floor} on may \
             write to it: nothing was decided or changed; upgrade this replica"
        ),
    )
}

const V1: &str = r"
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
const V2: &str = r"
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

/// Approvals: who asked (hold limits per agent), whether the token was fetched,
/// and indexes for the limits and for paging.
const V3: &str = r"
ALTER TABLE approvals ADD COLUMN agent TEXT;
ALTER TABLE approvals ADD COLUMN token_fetched_ms BIGINT;
CREATE INDEX approvals_by_agent ON approvals (tenant_id, agent, created_ms);
CREATE INDEX approvals_by_intent ON approvals (intent_id, state);
CREATE INDEX approvals_by_time ON approvals (tenant_id, created_ms, id);
UPDATE approvals SET token = NULL WHERE token IS NOT NULL;
";

/// Operator intent views: intents by time, decisions by intent (in ledger order),
/// and submitted evidence.
const V4: &str = r"
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

/// Audit exports: each tenant's signing key and the export jobs with their bundles.
const V5: &str = r"
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

/// Open reservations (the sweep, lapsed amounts, open counts) are found through
/// indexes that hold only them: a reservation leaves them when it is finalized.
const V6: &str = r"
DROP INDEX reservations_open;
DROP INDEX reservations_open_by_intent;
CREATE INDEX reservations_open_by_expiry ON reservations (state, expires_ms) WHERE state = 'open';
CREATE INDEX reservations_open_by_intent_expiry ON reservations (intent_id, expires_ms)
    WHERE state = 'open';
";

/// Approvals: the key whose verify opened the request (its token works for that
/// key alone), when an operator decided it (a denial answers the identical request
/// for a while), and the index the identical request is found by.
const V7: &str = r"
ALTER TABLE approvals ADD COLUMN key_id TEXT;
ALTER TABLE approvals ADD COLUMN decided_ms BIGINT;
CREATE INDEX approvals_by_digest ON approvals (tenant_id, request_digest, created_ms);
";

const V8: &str = r"
CREATE TABLE schema_floor (
    id BIGINT PRIMARY KEY,
    served_from BIGINT NOT NULL
);
INSERT INTO schema_floor (id, served_from) VALUES (1, 7);
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    schema_version BIGINT NOT NULL,
    started_ms BIGINT NOT NULL,
    seen_ms BIGINT NOT NULL
);
";

/// What a decision was about, in columns the console searches by: the tool, the
/// agent, the vendor, the amount asked and the reason codes (each between spaces,
/// ` a b `, so one is found with `LIKE '% a %'`), and the index a time range is
/// read by, and an index of the rows still to fill in. Builds of version 8 write
/// decisions without them (NULL), which the next start of a newer build fills in
/// from the ledger.
const V9: &str = r"
ALTER TABLE decisions ADD COLUMN tool TEXT;
ALTER TABLE decisions ADD COLUMN agent TEXT;
ALTER TABLE decisions ADD COLUMN vendor TEXT;
ALTER TABLE decisions ADD COLUMN amount_cents BIGINT;
ALTER TABLE decisions ADD COLUMN reason_codes TEXT;
CREATE INDEX decisions_by_time ON decisions (tenant_id, created_ms, id);
CREATE INDEX decisions_unfilled ON decisions (id) WHERE tool IS NULL;
";

/// Identity: SCIM bearer tokens (digests), SCIM users and groups with their
/// memberships, the tenant's group-to-role mappings, console sessions (so every
/// replica serves them), a name for each service account's key, each tenant's
/// OpenID Connect client (its secret wrapped under the root key) and the sign-ins
/// under way (state, nonce and PKCE verifier, for ten minutes); and who approved
/// each request by id (`scim:<id>` for a person, the key id for a key), beside
/// the subjects in `approvers`.
const V10: &str = r"
CREATE TABLE scim_tokens (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE INDEX scim_tokens_by_tenant ON scim_tokens (tenant_id, created_ms);
CREATE TABLE scim_users (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    user_name_key TEXT NOT NULL,
    external_id TEXT,
    active BIGINT NOT NULL,
    resource TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE UNIQUE INDEX scim_users_by_name ON scim_users (tenant_id, user_name_key);
CREATE TABLE scim_groups (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    external_id TEXT,
    resource TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX scim_groups_by_tenant ON scim_groups (tenant_id, display_name);
CREATE TABLE scim_members (
    group_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX scim_members_by_user ON scim_members (user_id);
CREATE TABLE role_mappings (
    tenant_id TEXT NOT NULL,
    group_name TEXT NOT NULL,
    role TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, group_name)
);
CREATE TABLE console_sessions (
    id_hash TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    key_hash TEXT,
    user_id TEXT,
    csrf TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX console_sessions_by_user ON console_sessions (user_id);
CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_ms);
ALTER TABLE api_keys ADD COLUMN name TEXT;
ALTER TABLE approvals ADD COLUMN approver_ids TEXT;
CREATE TABLE oidc_configs (
    tenant_id TEXT PRIMARY KEY,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_secret BYTEA NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE oidc_logins (
    state_hash TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    verifier TEXT NOT NULL,
    return_to TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

    use std::collections::BTreeMap;

    use super::*;
    use crate::store::{Storage, Store, Tx, args};

    /// A schema as both stores can be compared: per table, its columns (name,
    /// type as SQLite spells it, nullable); per index, its table and columns.
    type Shape = (
        BTreeMap<String, Vec<(String, String, bool)>>,
        BTreeMap<String, String>,
    );

    fn sqlite_shape(store: &Store) -> Shape {
        store
            .write(None, |tx: &dyn Tx| {
                let tables: Vec<String> = tx.query_map(
                    "SELECT name FROM sqlite_master WHERE type = 'table'
                     AND name NOT LIKE 'sqlite_%' ORDER BY name",
                    args![],
                    |r| r.get(0),
                )?;
                let mut columns = BTreeMap::new();
                for t in &tables {
                    let cols = tx.query_map(
                        &format!("SELECT name, type, \"notnull\", pk FROM pragma_table_info('{t}')"),
                        args![],
                        |r| {
                            let (name, kind, notnull, pk): (String, String, i64, i64) =
                                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
                            Ok((name, kind, notnull == 0 && pk == 0))
                        },
                    )?;
                    columns.insert(t.clone(), cols);
                }
                let indexes: Vec<(String, String)> = tx.query_map(
                    "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
                    args![],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                let mut shaped = BTreeMap::new();
                for (name, table) in indexes {
                    let cols: Vec<String> = tx.query_map(
                        &format!("SELECT name FROM pragma_index_info('{name}') ORDER BY seqno"),
                        args![],
                        |r| r.get(0),
                    )?;
                    shaped.insert(name, format!("{table}({})", cols.join(",")));
                }
                Ok((columns, shaped))
            })
            .unwrap()
    }

    fn postgres_shape(store: &Store) -> Shape {
        store
            .write(None, |tx: &dyn Tx| {
                let rows: Vec<(String, String, String, String)> = tx.query_map(
                    "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text
                     FROM information_schema.columns WHERE table_schema = current_schema()
                     ORDER BY table_name, ordinal_position",
                    args![],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?;
                let mut columns: BTreeMap<String, Vec<(String, String, bool)>> = BTreeMap::new();
                for (table, name, kind, nullable) in rows {
                    let kind = match kind.as_str() {
                        "bigint" => "INTEGER",
                        "bytea" => "BLOB",
                        "text" => "TEXT",
                        other => panic!("{table}.{name}: a {other} column"),
                    };
                    columns.entry(table).or_default().push((
                        name,
                        kind.to_owned(),
                        nullable == "YES",
                    ));
                }
                let indexes: Vec<(String, String, String)> = tx.query_map(
                    "SELECT indexname::text, tablename::text, indexdef FROM pg_indexes
                     WHERE schemaname = current_schema()
                     AND indexname NOT LIKE '%\\_pkey' AND indexname NOT LIKE '%\\_key'",
                    args![],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                let shaped = indexes
                    .into_iter()
                    .map(|(name, table, def)| {
                        // `CREATE INDEX n ON public.t USING btree (a, b) WHERE ...`
                        let cols = def
                            .split_once(" (")
                            .and_then(|(_, rest)| rest.split_once(')'))
                            .map(|(cols, _)| cols.replace(' ', ""))
                            .unwrap_or_default();
                        (name, format!("{table}({cols})"))
                    })
                    .collect();
                Ok((columns, shaped))
            })
            .unwrap()
    }

    #[test]
    fn a_legacy_sqlite_database_is_brought_to_the_schema_a_new_one_has() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = Store::open(&Storage::File(dir.path().join("new.db")), 1 << 20).unwrap();
        let old = dir.path().join("old.db");
        {
            // The first schema of the versions before numbered migrations.
            let conn = rusqlite::Connection::open(&old).unwrap();
            conn.execute_batch(crate::store::sqlite::LEGACY_SCHEMA)
                .unwrap();
        }
        let migrated = Store::open(&Storage::File(old), 1 << 20).unwrap();
        let (fresh, migrated) = (sqlite_shape(&fresh), sqlite_shape(&migrated));
        assert!(fresh.0.contains_key("schema_migrations"));
        assert_eq!(fresh, migrated);
        let versions = crate::store::Store::open(&Storage::Memory, 1 << 20)
            .unwrap()
            .write(None, |tx: &dyn Tx| {
                Ok(
                    tx.query_one("SELECT MAX(version) FROM schema_migrations", args![], |r| {
                        r.get::<i64>(0)
                    })?,
                )
            })
            .unwrap();
        assert_eq!(versions, LATEST);
    }

    #[test]
    fn sqlite_and_postgresql_have_the_same_schema() {
        let Some(url) = crate::store::postgres::tests::test_database() else {
            return;
        };
        let pg = Store::open(&Storage::Postgres(url), 1 << 20).unwrap();
        let sqlite = Store::open(&Storage::Memory, 1 << 20).unwrap();
        let (pg, sqlite) = (postgres_shape(&pg), sqlite_shape(&sqlite));
        assert!(pg.0.len() >= 16, "{:?}", pg.0.keys());
        assert_eq!(
            pg.1.get("reservations_open_by_intent_expiry")
                .map(String::as_str),
            Some("reservations(intent_id,expires_ms)")
        );
        assert_eq!(pg.0, sqlite.0, "columns");
        assert_eq!(pg.1, sqlite.1, "indexes");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_and_left_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("paybond.db");
        let junk = b"this is not a SQLite database, and it is longer than its header".repeat(64);
        std::fs::write(&db, &junk).unwrap();
        let refused = Store::open(&Storage::File(db.clone()), 1 << 20)
            .err()
            .expect("a file that is not a database was opened");
        assert!(
            refused.message.contains("is not a paybond database")
                && refused.message.contains("was not changed"),
            "{}",
            refused.message
        );
        assert_eq!(std::fs::read(&db).unwrap(), junk);
    }

    #[test]
    fn a_database_a_newer_build_migrated_compatibly_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("paybond.db");
        drop(Store::open(&Storage::File(db.clone()), 1 << 20).unwrap());
        {
            let conn = rusqlite::Connection::open(&db).unwrap();
            // A newer build added what this one ignores: the floor stays.
            conn.execute_batch(&format!(
                "CREATE TABLE newer_notes (id INTEGER PRIMARY KEY);
                 INSERT INTO schema_migrations (version, applied_ms) VALUES ({}, 0);",
                LATEST + 1
            ))
            .unwrap();
        }
        let store = Store::open(&Storage::File(db), 1 << 20).unwrap();
        store
            .write(None, |tx: &dyn Tx| {
                Ok(tx
                    .execute("INSERT INTO meta (key, value) VALUES ('k', X'00')", args![])
                    .map(drop)?)
            })
            .unwrap();
    }

    #[test]
    fn a_database_from_a_newer_build_is_refused_and_left_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("paybond.db");
        drop(Store::open(&Storage::File(db.clone()), 1 << 20).unwrap());
        {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_ms) VALUES (?1, 0)",
                [LATEST + 5],
            )
            .unwrap();
            // Its migrations need a build that knows them.
            conn.execute(
                "UPDATE schema_floor SET served_from = ?1 WHERE id = 1",
                [LATEST + 5],
            )
            .unwrap();
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
        }
        let before = std::fs::read(&db).unwrap();
        let refused = Store::open(&Storage::File(db.clone()), 1 << 20)
            .err()
            .expect("a newer database was opened");
        assert!(
            refused.message.contains("newer paybond gateway")
                && refused
                    .message
                    .contains(&format!("schema version {}", LATEST + 5))
                && refused.message.contains("Nothing in"),
            "{}",
            refused.message
        );
        assert_eq!(std::fs::read(&db).unwrap(), before, "the database changed");
    }
}
