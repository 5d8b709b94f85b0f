//! The engine: the decision logic, written once against the store interface
//! ([`crate::store::Tx`]), one transaction per operation.

pub(crate) mod audit;
pub(crate) mod counters;
pub(crate) mod decide;
pub(crate) mod identity;
pub(crate) mod insights;
pub(crate) mod ledger;
pub(crate) mod lifecycle;
pub(crate) mod live;
pub(crate) mod operator;
pub mod replay;
pub(crate) mod rules;
pub(crate) mod state;

pub use paybond_middleware_core::wire::EffectivePolicy;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paybond_middleware_core::ApiKey;
use paybond_middleware_core::wire::{Environment, Principal, Role};
use paybond_policies::{Source, check_policy, resolve_policy};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::ApiError;

use crate::store::{NewTenantPolicy, PolicyRow, Storage, Store, Tx};
use crate::tokens::{Minter, random_hex, sha256_hex};

/// What time it is for the engine: the system clock, or a manual one for tests.
#[derive(Debug, Clone)]
pub enum Clock {
    /// The system clock.
    System,
    /// A clock that moves only when told (Unix milliseconds).
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock starting at `start_ms`.
    pub fn manual(start_ms: i64) -> Self {
        Self::Manual(Arc::new(AtomicI64::new(start_ms)))
    }

    /// Moves a manual clock forward (no effect on the system clock).
    pub fn advance_ms(&self, ms: i64) {
        if let Self::Manual(t) = self {
            t.fetch_add(ms, Ordering::SeqCst);
        }
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        match self {
            Self::System => jiff::Timestamp::now().as_millisecond(),
            Self::Manual(t) => t.load(Ordering::SeqCst),
        }
    }
}

/// A policy file given to the engine: its text and its name in diagnostics.
#[derive(Debug, Clone)]
pub struct PolicyFile {
    /// The file's contents (YAML or JSON).
    pub text: String,
    /// The file's name.
    pub file: String,
}

impl PolicyFile {
    /// The bundled org base of the canonical scenario.
    pub fn bundled_org_base() -> Self {
        Self {
            text: paybond_policies::bundled::ORG_BASE.to_owned(),
            file: paybond_policies::bundled::ORG_BASE_FILE.to_owned(),
        }
    }

    /// The bundled tenant overlay of the canonical scenario.
    pub fn bundled_tenant_overlay() -> Self {
        Self {
            text: paybond_policies::bundled::TENANT_OVERLAY.to_owned(),
            file: paybond_policies::bundled::TENANT_OVERLAY_FILE.to_owned(),
        }
    }

    /// Reads a policy file.
    pub fn read(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self {
            text: std::fs::read_to_string(path)?,
            file: path.display().to_string(),
        })
    }
}

/// How the engine behaves.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where state lives.
    pub storage: Storage,
    /// The clock.
    pub clock: Clock,
    /// How long an unfinalized reservation holds its amount.
    pub reservation_ttl_ms: i64,
    /// How long an approval token stays usable.
    pub approval_token_ttl_ms: i64,
    /// Deadline of a new intent when the request names none.
    pub intent_ttl_ms: i64,
    /// Capability tokens expire with their intent's deadline, at most this long after minting.
    pub capability_ttl_ms: i64,
    /// How long idempotency keys are kept (at least 24 hours).
    pub idempotency_retention_ms: i64,
    /// The org base published for new tenants (`None`: the tenant policy stands alone).
    pub default_org_policy: Option<PolicyFile>,
    /// The policy new tenants start with.
    pub default_tenant_policy: Option<PolicyFile>,
    /// Approval requests one agent key may open per minute (more: deny
    /// `approval_rate_limited`).
    pub approval_requests_per_agent_per_minute: u32,
    /// Approval requests pending at once for one intent (more: deny
    /// `approval_rate_limited`).
    pub pending_approvals_per_intent: u32,
    /// For this long after an operator denies a held request, the identical request
    /// of the same key is answered with that deny (`approval_denied`, the denied
    /// request's id) instead of opening a new one (default 10 minutes).
    pub denied_request_window_ms: i64,
    /// A SQLite file's WAL above this size is checkpointed whole and started over
    /// (cut back to this size) in the background (default 64 MiB).
    pub wal_limit_bytes: u64,
}

const HOUR_MS: i64 = 3_600_000;

/// How long an unfinalized reservation holds its amount unless configured.
pub(crate) const DEFAULT_RESERVATION_TTL_MS: i64 = 5 * 60_000;

impl EngineConfig {
    /// Defaults over `storage`: 5-minute reservations and approval tokens, 24-hour
    /// intents, 48-hour idempotency keys, the bundled scenario policies.
    pub fn new(storage: Storage) -> Self {
        Self {
            storage,
            clock: Clock::System,
            reservation_ttl_ms: DEFAULT_RESERVATION_TTL_MS,
            approval_token_ttl_ms: 5 * 60_000,
            intent_ttl_ms: 24 * HOUR_MS,
            capability_ttl_ms: 24 * HOUR_MS,
            idempotency_retention_ms: 48 * HOUR_MS,
            default_org_policy: Some(PolicyFile::bundled_org_base()),
            default_tenant_policy: Some(PolicyFile::bundled_tenant_overlay()),
            wal_limit_bytes: crate::store::DEFAULT_WAL_LIMIT_BYTES,
            approval_requests_per_agent_per_minute: 20,
            pending_approvals_per_intent: 20,
            denied_request_window_ms: 10 * 60_000,
        }
    }
}

/// The three API keys of a new tenant. Shown once; only their digests are stored.
#[derive(Debug)]
pub struct TenantKeys {
    /// The tenant.
    pub tenant_id: String,
    /// Runs agents.
    pub agent: ApiKey,
    /// Approves and denies; reads the ledger.
    pub operator: ApiKey,
    /// Publishes policies.
    pub tenant_admin: ApiKey,
}

/// `POST /v1/admin/api-keys`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IssueKeyRequest {
    /// `agent`, `operator` or `tenant_admin`.
    pub role: String,
    /// Who holds the key (shown as the approver, the agent); default `<role>:<tenant>`.
    #[serde(default)]
    pub subject: Option<String>,
}

/// A key just issued: shown this once, stored only as a digest.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct IssuedKey {
    /// The key's id (on the ledger, in approvals).
    pub key_id: String,
    /// Its role.
    pub role: String,
    /// The key itself.
    pub api_key: ApiKey,
}

/// Counters behind `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    pub(crate) allow: AtomicU64,
    pub(crate) hold: AtomicU64,
    pub(crate) deny: AtomicU64,
    /// Verify latency, in microseconds.
    pub(crate) latency: crate::histogram::Histogram,
    /// Holds and denies by outcome and first reason code.
    pub(crate) reasons: std::sync::Mutex<std::collections::BTreeMap<(&'static str, String), u64>>,
    /// The OpenTelemetry instruments, once the server exports metrics.
    #[cfg(feature = "otel")]
    pub(crate) otel: std::sync::OnceLock<crate::telemetry::Instruments>,
}

/// Upper bounds of the verify latency histogram, in microseconds.
pub const LATENCY_BOUNDS_US: [u64; 10] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000,
];

impl Default for Metrics {
    fn default() -> Self {
        Self {
            allow: AtomicU64::new(0),
            hold: AtomicU64::new(0),
            deny: AtomicU64::new(0),
            latency: crate::histogram::Histogram::new(&LATENCY_BOUNDS_US),
            reasons: std::sync::Mutex::default(),
            #[cfg(feature = "otel")]
            otel: std::sync::OnceLock::new(),
        }
    }
}

/// How long a replica of a fleet trusts an authenticated key before it reads it
/// again (another replica may have rotated it).
const SHARED_KEY_TTL: Duration = Duration::from_secs(5);

/// The decision engine, shared behind an `Arc`. Its calls are async, each one
/// transaction: verify, evidence and complete go to the store's writer without
/// holding a thread, the others run on tokio's blocking pool (in place on the
/// in-memory store). Only opening it ([`Engine::open`], [`Engine::in_memory`],
/// [`Engine::rotate_root_key`]) waits on the caller's thread.
pub struct Engine {
    store: Store,
    /// A SQLite store's lock, held shared while the engine is open.
    _data_lock: Option<crate::store::DataLock>,
    pub(crate) minter: Minter,
    pub(crate) config: EngineConfig,
    pub(crate) metrics: Metrics,
    /// Effective policies by tenant, each with its version: a fleet replica checks
    /// the stored version before it uses one.
    policies: Mutex<HashMap<String, Arc<EffectivePolicy>>>,
    /// Authenticated keys by digest, each with the store's key generation when it
    /// was read; cleared when keys are rotated or revoked. With a SQLite store one
    /// engine owns the database, so no other writer can revoke a key behind it; a
    /// fleet replica reads a key again when it hears of a revocation (a new key
    /// generation) and in any case after [`SHARED_KEY_TTL`].
    principals: Mutex<HashMap<String, (Principal, Instant, u64)>>,
    /// The compiled `spend_controls.data.sensitive_patterns` of effective policies,
    /// by the policy's digest (what it compiles from never changes under a digest).
    sensitive: Mutex<HashMap<String, Arc<[regex::Regex]>>>,
}

/// Compiled pattern lists kept at most; the cache starts over beyond it (a
/// publish makes a new digest, the old one is not used again).
const SENSITIVE_CACHED: usize = 256;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("storage", &self.config.storage)
            .finish_non_exhaustive()
    }
}

/// A tenant's API key role as stored.
pub(crate) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Agent => "agent",
        Role::Operator => "operator",
        Role::TenantAdmin => "tenant_admin",
        Role::Analyst => "analyst",
        _ => "unknown",
    }
}

/// Wraps every stored audit signing key under `to`'s pad instead of `from`'s.
fn rewrap_signing_keys(tx: &dyn Tx, from: &Minter, to: &Minter) -> Result<(), ApiError> {
    let rows = tx.wrapped_signing_keys()?;
    for (tenant, wrapped) in rows {
        let (a, b) = (from.audit_key_pad(&tenant), to.audit_key_pad(&tenant));
        let secret: Vec<u8> = wrapped
            .iter()
            .zip(a.iter().zip(b))
            .map(|(w, (a, b))| w ^ a ^ b)
            .collect();
        tx.set_wrapped_signing_key(&tenant, &secret)?;
    }
    // OpenID Connect client secrets likewise.
    let rows = tx.wrapped_client_secrets()?;
    for (tenant, wrapped) in rows {
        let secret = from.wrap_client_secret(&tenant, &wrapped);
        tx.set_wrapped_client_secret(&tenant, &to.wrap_client_secret(&tenant, &secret))?;
    }
    Ok(())
}

pub(crate) fn role_from(name: &str) -> Role {
    match name {
        "agent" => Role::Agent,
        "operator" => Role::Operator,
        "tenant_admin" => Role::TenantAdmin,
        "analyst" => Role::Analyst,
        _ => Role::Unknown,
    }
}

pub(crate) fn env_name(env: Environment) -> &'static str {
    match env {
        Environment::Sandbox => "sandbox",
        Environment::Live => "live",
    }
}

impl Engine {
    /// Opens the store and loads (or creates) the capability-token root key.
    pub fn open(config: EngineConfig) -> Result<Self, ApiError> {
        let store = Store::open(&config.storage, config.wal_limit_bytes)?;
        // Held while the engine lives, before the root key is read: a rotation
        // waits for no engine and no engine starts during one.
        let data_lock = match &config.storage {
            Storage::File(path) => Some(crate::store::DataLock::shared(path)?),
            _ => None,
        };
        let read_key = |tx: &dyn Tx| Ok(tx.stored_root_key()?);
        let minter = match &config.storage {
            Storage::File(path) => {
                Self::key_file_minter(&store, &crate::store::root_key_path(path))?
            }
            _ => {
                let stored = store.write(None, read_key)?;
                let (minter, new_key) = Minter::load(stored.as_deref());
                match new_key {
                    None => minter,
                    Some(bytes) => {
                        // Replicas starting together may each make a key: the first stored wins.
                        let kept = store.write(None, |tx| {
                            tx.store_root_key_if_none(&bytes)?;
                            read_key(tx)
                        })?;
                        match kept {
                            Some(k) if k != bytes => Minter::load(Some(&k)).0,
                            _ => minter,
                        }
                    }
                }
            }
        };
        // Decisions written by a build from before the search columns get them
        // from their ledger entries, a batch a transaction.
        while store.write(None, insights::backfill)? > 0 {}
        Ok(Self {
            store,
            _data_lock: data_lock,
            minter,
            config,
            metrics: Metrics::default(),
            policies: Mutex::new(HashMap::new()),
            principals: Mutex::new(HashMap::new()),
            sensitive: Mutex::new(HashMap::new()),
        })
    }

    /// The root key of a SQLite file store, from its key file: created on first
    /// start, or moved out of the database where earlier versions kept it (the row
    /// is then deleted with SQLite's secure delete, which overwrites it).
    fn key_file_minter(store: &Store, key_file: &std::path::Path) -> Result<Minter, ApiError> {
        let unusable = || {
            ApiError::unusable(format!(
                "{}: not an Ed25519 root key; restore it, or move it away to start with a new \
                 key (capability tokens minted with the old one are then refused)",
                key_file.display()
            ))
        };
        if let Some(bytes) = crate::store::read_key_file(key_file)? {
            return Minter::from_key(&bytes).ok_or_else(unusable);
        }
        let legacy = store.write(None, |tx| Ok(tx.stored_root_key()?))?;
        let bytes = legacy.unwrap_or_else(Minter::new_key);
        let minter = Minter::from_key(&bytes).ok_or_else(unusable)?;
        crate::store::write_key_file(key_file, &bytes)?;
        store.write(None, |tx| Ok(tx.erase_root_key()?))?;
        Ok(minter)
    }

    /// Replaces the capability-token root key of `storage` with a new one (its key
    /// file for SQLite, its `meta` row for PostgreSQL). Run it with the gateway
    /// stopped (on SQLite, 409 `data_dir_in_use` while an engine has the database
    /// open): from the next start, every capability token minted with the old key
    /// is refused (agents fund their intents again for new ones), and so is an
    /// approval token not yet fetched.
    pub fn rotate_root_key(storage: &Storage) -> Result<(), ApiError> {
        let bytes = Minter::new_key();
        let new = Minter::from_key(&bytes)
            .ok_or_else(|| ApiError::internal("a new root key is not an Ed25519 key"))?;
        // Audit signing keys are stored wrapped under the root key: they are wrapped
        // again under the new one in the same step.
        match storage {
            Storage::File(path) => {
                if !path.exists() {
                    return Err(ApiError::not_found(
                        "no_database",
                        format!("no gateway database at {}", path.display()),
                    ));
                }
                // Refused while a gateway holds the data dir: it would go on signing
                // with the old key, and fail once its wrapping changed.
                let _lock = crate::store::DataLock::exclusive(path)?;
                let key_file = crate::store::root_key_path(path);
                let store = Store::open(storage, crate::store::DEFAULT_WAL_LIMIT_BYTES)?;
                let old =
                    crate::store::read_key_file(&key_file)?.and_then(|k| Minter::from_key(&k));
                if let Some(old) = &old {
                    store.write(None, |tx| rewrap_signing_keys(tx, old, &new))?;
                }
                let written = crate::store::write_key_file(&key_file, &bytes);
                if written.is_err()
                    && let Some(old) = &old
                {
                    // The old root key stays: so does the wrapping under it.
                    store.write(None, |tx| rewrap_signing_keys(tx, &new, old))?;
                }
                written
            }
            Storage::Postgres(_) => {
                let store = Store::open(storage, crate::store::DEFAULT_WAL_LIMIT_BYTES)?;
                store.write(None, |tx| {
                    let old = tx.stored_root_key()?.and_then(|k| Minter::from_key(&k));
                    if let Some(old) = &old {
                        rewrap_signing_keys(tx, old, &new)?;
                    }
                    Ok(tx.replace_root_key(&bytes)?)
                })?;
                Ok(())
            }
            Storage::Memory => Err(ApiError::bad_request(
                "invalid_storage",
                "an in-memory gateway has no stored root key to rotate",
            )),
        }
    }

    /// An engine on a private in-memory database with the bundled policies.
    pub fn in_memory() -> Result<Self, ApiError> {
        Self::open(EngineConfig::new(Storage::Memory))
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Clock {
        &self.config.clock
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.config.clock.now_ms()
    }

    /// Runs `f` in one transaction: committed on `Ok`, rolled back on `Err`.
    pub(crate) fn tx<T: Send>(
        &self,
        f: impl FnOnce(&dyn Tx, i64) -> Result<T, ApiError> + Send,
    ) -> Result<T, ApiError> {
        self.store.write(None, |tx| f(tx, self.now_ms()))
    }

    /// Runs `f`, which only reads, on one snapshot of the committed state beside
    /// the writes (see [`Store::read`]): it neither queues behind them nor holds
    /// a tenant's lock.
    pub(crate) fn read<T: Send>(
        &self,
        f: impl FnOnce(&dyn Tx, i64) -> Result<T, ApiError> + Send,
    ) -> Result<T, ApiError> {
        self.store.read(|tx| f(tx, self.now_ms()))
    }

    /// Runs `f` in one transaction that holds `tenant_id`'s lock from its start:
    /// every change to a tenant's state (and its ledger chain) goes through here.
    pub(crate) fn tx_in<T: Send>(
        &self,
        tenant_id: &str,
        f: impl FnOnce(&dyn Tx, i64) -> Result<T, ApiError> + Send,
    ) -> Result<T, ApiError> {
        self.store.write(Some(tenant_id), |tx| f(tx, self.now_ms()))
    }

    /// Runs a mutation under an idempotency key: the same key with the same body
    /// answers the stored response and changes nothing; with another body, 409.
    ///
    /// Keys are the principal's own: another key of the tenant sending the same key
    /// and body makes a request of its own, and never sees this one's answer.
    ///
    /// `intent`: the intent `f` decides on, if it names one; the store may read it,
    /// and the key, ahead of `f` (see [`crate::store::Store::write_on`]).
    pub(crate) fn idempotent<R, T>(
        &self,
        principal: &Principal,
        route: &'static str,
        intent: Option<Uuid>,
        key: Option<&str>,
        request: &R,
        f: impl FnOnce(&dyn Tx, i64) -> Result<T, ApiError> + Send,
    ) -> Result<T, ApiError>
    where
        R: Serialize + Sync,
        T: Kept + Send,
    {
        let tenant_id = principal.tenant_id.as_str();
        let keyed = Keyed::new(&principal.key_id, route, key, request)?;
        let ahead = crate::store::ReadAhead {
            intent,
            key: keyed.as_ref().map(|k| k.key.as_str()),
        };
        self.store.write_on(Some(tenant_id), ahead, |tx| {
            let now = self.now_ms();
            match &keyed {
                Some(keyed) => self.keyed(tx, now, tenant_id, keyed, f),
                None => f(tx, now),
            }
        })
    }

    /// In a transaction of `tenant_id`'s: the stored answer to `keyed` if there is
    /// one (a 409 if its request differs), else `f`'s, stored under the key.
    fn keyed<T>(
        &self,
        tx: &dyn Tx,
        now: i64,
        tenant_id: &str,
        keyed: &Keyed,
        f: impl FnOnce(&dyn Tx, i64) -> Result<T, ApiError>,
    ) -> Result<T, ApiError>
    where
        T: Kept,
    {
        let stored = tx
            .kept_answer(tenant_id, &keyed.key)?
            .map(|k| (k.route, k.body_hash, k.response));
        if let Some((stored_route, stored_hash, response)) = stored {
            if stored_route != keyed.route || stored_hash != keyed.body_hash {
                return Err(ApiError::conflict(
                    "idempotency_key_reused",
                    "this idempotency key was used with a different request; use a new key",
                ));
            }
            let response = match response.strip_prefix(IN_DECISION) {
                Some(decision) => tx.decision_response(tenant_id, decision)?.ok_or_else(|| {
                    ApiError::internal("a stored verify answer's decision is gone")
                })?,
                None => response,
            };
            let mut response: serde_json::Value = serde_json::from_str(&response)?;
            self.reissue_token(tx, now, tenant_id, &mut response)?;
            return Ok(serde_json::from_value(response)?);
        }
        let out = f(tx, now)?;
        let stored = match out.decision_row() {
            // The answer is in its decision's row already: the key points at it.
            Some(decision) => format!("{IN_DECISION}{decision}"),
            None => {
                // Stored without its secret: a capability token is minted again on replay.
                let mut stored = serde_json::to_value(&out)?;
                if let Some(token) = stored.get_mut("capability_token")
                    && token.is_string()
                {
                    *token = serde_json::Value::String(REISSUE.to_owned());
                }
                serde_json::to_string(&stored)?
            }
        };
        tx.keep_answer(
            (tenant_id, &keyed.key),
            (keyed.route, &keyed.body_hash),
            &stored,
            now,
        )?;
        Ok(out)
    }

    /// [`Self::idempotent`] for async callers (see [`Self::queue_in`]); `f` is
    /// handed the engine, the principal and the request, and decides on `intent`
    /// when one is named.
    pub(crate) async fn queue_idempotent<R, T, F>(
        self: &Arc<Self>,
        principal: Principal,
        route: &'static str,
        intent: Option<Uuid>,
        key: Option<&str>,
        request: R,
        f: F,
    ) -> Result<T, ApiError>
    where
        R: Serialize + Send + 'static,
        T: Kept + Send + 'static,
        F: FnOnce(&Self, &dyn Tx, i64, &Principal, &R) -> Result<T, ApiError> + Send + 'static,
    {
        let keyed = Keyed::new(&principal.key_id, route, key, &request)?;
        let tenant_id = principal.tenant_id.clone();
        // The key goes into the write; a copy only for a store that reads ahead.
        let key = keyed
            .as_ref()
            .filter(|_| self.store.reads_ahead())
            .map(|k| k.key.clone());
        self.queue_in(
            tenant_id,
            (intent, key),
            move |engine, tx, now, tenant_id| match &keyed {
                Some(keyed) => engine.keyed(tx, now, tenant_id, keyed, |tx, now| {
                    f(engine, tx, now, &principal, &request)
                }),
                None => f(engine, tx, now, &principal, &request),
            },
        )
        .await
    }

    /// [`Self::tx_in`] for async callers. On the SQLite file store the transaction
    /// goes to the store's writer thread and the caller awaits its durable commit
    /// without holding a thread; on the other stores it runs through
    /// [`Self::blocking`]. `f` is handed the engine and the tenant; `ahead`, the
    /// intent it decides on and the idempotency key it reads first, if known,
    /// may be read ahead of it (see [`crate::store::Store::write_on`]).
    pub(crate) async fn queue_in<T, F>(
        self: &Arc<Self>,
        tenant_id: String,
        ahead: (Option<Uuid>, Option<String>),
        f: F,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Self, &dyn Tx, i64, &str) -> Result<T, ApiError> + Send + 'static,
    {
        let tenant = tenant_id.clone();
        let op = move |engine: &Arc<Self>, tx: &dyn Tx| {
            tx.lock_tenant(&tenant_id)?;
            f(engine, tx, engine.now_ms(), &tenant_id)
        };
        match self.store.submit(self.clone(), op) {
            Ok(answer) => answer.await,
            Err((engine, op)) => {
                self.blocking(move |e| {
                    let ahead = crate::store::ReadAhead {
                        intent: ahead.0,
                        key: ahead.1.as_deref(),
                    };
                    e.store.write_on(Some(&tenant), ahead, |tx| op(&engine, tx))
                })
                .await
            }
        }
    }

    /// Runs `f` on the blocking pool: how the async calls run what they cannot
    /// queue to the store's writer thread. On the in-memory store `f` runs where
    /// the caller is: it waits for no disk or network, and the hand-off to another
    /// thread would cost more than it does.
    pub(crate) async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Self) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        if self.store.in_memory() {
            return f(self);
        }
        let engine = self.clone();
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(|e| ApiError::internal(format_args!("the engine's task failed: {e}")))?
    }

    /// A replayed answer whose capability token was left out of the store gets a
    /// new token with the same claims (tenant, intent, operations, expiry).
    fn reissue_token(
        &self,
        tx: &dyn Tx,
        now: i64,
        tenant_id: &str,
        response: &mut serde_json::Value,
    ) -> Result<(), ApiError> {
        if response.get("capability_token").and_then(|v| v.as_str()) != Some(REISSUE) {
            return Ok(());
        }
        let intent = response
            .get("intent_id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ApiError::internal("a stored answer with a token but no intent"))?
            .to_owned();
        let (operations, deadline) = tx
            .intent_grant(tenant_id, &intent)?
            .ok_or_else(|| ApiError::internal("a stored answer's intent is gone"))?;
        let token = self
            .minter
            .mint(&crate::tokens::Claims {
                tenant: tenant_id.to_owned(),
                intent,
                operations: serde_json::from_str(&operations)?,
                expires_ms: deadline.min(now + self.config.capability_ttl_ms),
            })
            .map_err(ApiError::internal)?;
        response["capability_token"] = serde_json::Value::String(token);
        Ok(())
    }

    // ---- tenants and keys ----

    /// Creates a tenant with its three keys and the configured default policy.
    pub async fn create_tenant(
        self: &Arc<Self>,
        name: &str,
        environment: Environment,
    ) -> Result<TenantKeys, ApiError> {
        let name = name.to_owned();
        self.blocking(move |e| e.create_tenant_blocking(&name, environment))
            .await
    }

    /// [`Self::create_tenant`] on the caller's thread, which waits for the store.
    pub(crate) fn create_tenant_blocking(
        &self,
        name: &str,
        environment: Environment,
    ) -> Result<TenantKeys, ApiError> {
        let tenant_id = format!("tnt_{}", Uuid::new_v4().simple());
        let keys = self.tx(|tx, now| {
            tx.create_tenant(&tenant_id, name, env_name(environment), now)?;
            ledger::append(
                tx,
                &tenant_id,
                "tenant.created",
                json!({"name": name, "environment": env_name(environment)}),
                now,
            )?;
            issue_keys(tx, &tenant_id, environment, now)
        })?;
        if let Some(org) = self.config.default_org_policy.clone() {
            self.publish_org_policy_text_blocking(&tenant_id, &org)?;
        }
        if let Some(policy) = self.config.default_tenant_policy.clone() {
            self.publish_tenant_policy_text_blocking(&tenant_id, &policy)?;
        }
        Ok(keys)
    }

    /// The tenant named `name`, if any.
    pub async fn tenant_by_name(self: &Arc<Self>, name: &str) -> Result<Option<String>, ApiError> {
        let name = name.to_owned();
        self.blocking(move |e| e.tenant_by_name_blocking(&name))
            .await
    }

    /// [`Self::tenant_by_name`] on the caller's thread, which waits for the store.
    pub(crate) fn tenant_by_name_blocking(&self, name: &str) -> Result<Option<String>, ApiError> {
        self.read(|tx, _| Ok(tx.tenant_named(name)?))
    }

    /// Revokes every key of a tenant and issues three new ones.
    pub async fn rotate_keys(self: &Arc<Self>, tenant_id: &str) -> Result<TenantKeys, ApiError> {
        let tenant_id = tenant_id.to_owned();
        self.blocking(move |e| e.rotate_keys_blocking(&tenant_id))
            .await
    }

    /// [`Self::rotate_keys`] on the caller's thread, which waits for the store.
    pub(crate) fn rotate_keys_blocking(&self, tenant_id: &str) -> Result<TenantKeys, ApiError> {
        let keys = self.tx_in(tenant_id, |tx, now| {
            let env = tx
                .tenant_environment(tenant_id)?
                .ok_or_else(|| ApiError::not_found("tenant_not_found", "no such tenant"))?;
            tx.revoke_tenant_keys(tenant_id)?;
            ledger::append(tx, tenant_id, "keys.rotated", json!({}), now)?;
            let env = if env == "live" {
                Environment::Live
            } else {
                Environment::Sandbox
            };
            issue_keys(tx, tenant_id, env, now)
        })?;
        self.forget_principals();
        self.store.keys_changed()?;
        Ok(keys)
    }

    /// `POST /v1/admin/api-keys` (tenant admin): one more key of the caller's tenant,
    /// e.g. a second operator for an approval quorum of two. The key is shown once.
    pub async fn issue_api_key(
        self: &Arc<Self>,
        principal: &Principal,
        req: &IssueKeyRequest,
    ) -> Result<IssuedKey, ApiError> {
        let principal = principal.clone();
        let req = req.clone();
        self.blocking(move |e| e.issue_api_key_blocking(&principal, &req))
            .await
    }

    /// [`Self::issue_api_key`] on the caller's thread, which waits for the store.
    pub(crate) fn issue_api_key_blocking(
        &self,
        principal: &Principal,
        req: &IssueKeyRequest,
    ) -> Result<IssuedKey, ApiError> {
        require_role(principal, &[Role::TenantAdmin])?;
        bounded("subject", req.subject.as_deref())?;
        if req.subject.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err(ApiError::bad_request(
                "invalid_field",
                "subject must not be empty",
            ));
        }
        let role = match req.role.as_str() {
            "agent" => Role::Agent,
            "operator" => Role::Operator,
            "tenant_admin" => Role::TenantAdmin,
            other => {
                return Err(ApiError::unprocessable(
                    "invalid_field",
                    format!("role `{other}` is not agent, operator or tenant_admin"),
                ));
            }
        };
        self.tx_in(&principal.tenant_id, |tx, now| {
            let (key_id, api_key) = insert_key(
                tx,
                &principal.tenant_id,
                principal.environment,
                role,
                req.subject.as_deref(),
                now,
            )?;
            ledger::append(
                tx,
                &principal.tenant_id,
                "keys.issued",
                json!({"key_id": key_id, "role": role_name(role), "by": principal.key_id}),
                now,
            )?;
            Ok(IssuedKey {
                key_id,
                role: role_name(role).to_owned(),
                api_key,
            })
        })
    }

    /// Who an API key is, when the engine has it in memory (it asks the store
    /// nothing): `None` means [`Self::authenticate`] has to.
    pub fn authenticate_cached(&self, api_key: &str) -> Option<Principal> {
        self.cached_principal(&sha256_hex(api_key.as_bytes()))
    }

    /// The principal cached under a key's digest, while it may still be used.
    fn cached_principal(&self, hash: &str) -> Option<Principal> {
        let cache = self.principals.lock().ok()?;
        let (p, at, generation) = cache.get(hash)?;
        (*generation == self.store.keys_generation()
            && (!self.store.shared() || at.elapsed() < SHARED_KEY_TTL))
            .then(|| p.clone())
    }

    /// Who an API key is; 401 for a key this gateway did not issue.
    pub async fn authenticate(self: &Arc<Self>, api_key: &str) -> Result<Principal, ApiError> {
        let api_key = api_key.to_owned();
        self.blocking(move |e| e.authenticate_blocking(&api_key))
            .await
    }

    /// [`Self::authenticate`] on the caller's thread, which waits for the store.
    pub(crate) fn authenticate_blocking(&self, api_key: &str) -> Result<Principal, ApiError> {
        self.authenticate_hash(&sha256_hex(api_key.as_bytes()))
    }

    /// Forgets every key this engine has in memory (one was revoked).
    pub(crate) fn forget_principals(&self) {
        if let Ok(mut cache) = self.principals.lock() {
            cache.clear();
        }
    }

    /// [`Self::authenticate`] by the key's digest (how the store keeps it).
    pub(crate) fn authenticate_hash(&self, hash: &str) -> Result<Principal, ApiError> {
        let hash = hash.to_owned();
        if let Some(p) = self.cached_principal(&hash) {
            return Ok(p);
        }
        // Read before the key: a revocation heard after this is not missed.
        let generation = self.store.keys_generation();
        let row = self
            .read(|tx, _| Ok(tx.key_by_hash(&hash)?))?
            .map(|k| (k.key_id, k.tenant, k.role, k.subject, k.environment));
        let Some((key_id, tenant_id, role, subject, env)) = row else {
            return Err(ApiError::unauthorized("the API key is not valid"));
        };
        let role = role_from(&role);
        let principal = Principal {
            tenant_id,
            environment: if env == "live" {
                Environment::Live
            } else {
                Environment::Sandbox
            },
            service_account_role: role,
            roles: vec![role],
            subject,
            key_id,
        };
        if let Ok(mut cache) = self.principals.lock() {
            cache.insert(hash, (principal.clone(), Instant::now(), generation));
        }
        Ok(principal)
    }

    // ---- policies ----

    /// Publishes an org base policy (`PUT /v1/admin/org-policies/{id}`). Org policies
    /// are kept per tenant: one tenant's admin cannot change another tenant's base.
    pub async fn publish_org_policy(
        self: &Arc<Self>,
        principal: &Principal,
        org_policy_id: &str,
        text: &str,
    ) -> Result<Value, ApiError> {
        let principal = principal.clone();
        let org_policy_id = org_policy_id.to_owned();
        let text = text.to_owned();
        self.blocking(move |e| e.publish_org_policy_blocking(&principal, &org_policy_id, &text))
            .await
    }

    /// [`Self::publish_org_policy`] on the caller's thread, which waits for the store.
    pub(crate) fn publish_org_policy_blocking(
        &self,
        principal: &Principal,
        org_policy_id: &str,
        text: &str,
    ) -> Result<Value, ApiError> {
        require_role(principal, &[Role::TenantAdmin])?;
        let file = PolicyFile {
            text: text.to_owned(),
            file: format!("org-policies/{org_policy_id}"),
        };
        let checked = check_policy(&file.text, &file.file);
        let Some(doc) = checked.document else {
            return Err(policy_refused(&checked.errors));
        };
        if doc.name != org_policy_id {
            return Err(ApiError::unprocessable(
                "policy_id_mismatch",
                format!("the policy's name is `{}`, not `{org_policy_id}`", doc.name),
            ));
        }
        self.publish_org_policy_text_blocking(&principal.tenant_id, &file)?;
        Ok(json!({"org_policy_id": org_policy_id, "digest": doc.digest()}))
    }

    /// Publishes an org base from a file (the dev loop's `--org-policy-file`).
    pub async fn publish_org_policy_text(
        self: &Arc<Self>,
        tenant_id: &str,
        file: &PolicyFile,
    ) -> Result<(), ApiError> {
        let tenant_id = tenant_id.to_owned();
        let file = file.clone();
        self.blocking(move |e| e.publish_org_policy_text_blocking(&tenant_id, &file))
            .await
    }

    /// [`Self::publish_org_policy_text`] on the caller's thread, which waits for the store.
    pub(crate) fn publish_org_policy_text_blocking(
        &self,
        tenant_id: &str,
        file: &PolicyFile,
    ) -> Result<(), ApiError> {
        let checked = check_policy(&file.text, &file.file);
        let Some(doc) = checked.document else {
            return Err(policy_refused(&checked.errors));
        };
        let digest = doc.digest();
        self.tx_in(tenant_id, |tx, now| {
            tx.publish_org_policy(tenant_id, &doc.name, &file.text, &digest, now)?;
            ledger::append(
                tx,
                tenant_id,
                "org_policy.published",
                json!({"org_policy_id": doc.name, "digest": digest}),
                now,
            )
            .map(drop)
        })
    }

    /// Publishes the tenant's policy (`PUT /v1/tenant/policy`): refused whole, with
    /// every problem, when it is invalid or would widen its org base.
    pub async fn publish_tenant_policy(
        self: &Arc<Self>,
        principal: &Principal,
        text: &str,
    ) -> Result<EffectivePolicy, ApiError> {
        let principal = principal.clone();
        let text = text.to_owned();
        self.blocking(move |e| e.publish_tenant_policy_blocking(&principal, &text))
            .await
    }

    /// [`Self::publish_tenant_policy`] on the caller's thread, which waits for the store.
    pub(crate) fn publish_tenant_policy_blocking(
        &self,
        principal: &Principal,
        text: &str,
    ) -> Result<EffectivePolicy, ApiError> {
        require_role(principal, &[Role::TenantAdmin])?;
        self.publish_tenant_policy_text_blocking(
            &principal.tenant_id,
            &PolicyFile {
                text: text.to_owned(),
                file: "tenant/policy".to_owned(),
            },
        )
    }

    /// Publishes a tenant policy from a file (the dev loop's `--policy-file`).
    pub async fn publish_tenant_policy_text(
        self: &Arc<Self>,
        tenant_id: &str,
        file: &PolicyFile,
    ) -> Result<EffectivePolicy, ApiError> {
        let tenant_id = tenant_id.to_owned();
        let file = file.clone();
        self.blocking(move |e| e.publish_tenant_policy_text_blocking(&tenant_id, &file))
            .await
    }

    /// [`Self::publish_tenant_policy_text`] on the caller's thread, which waits for the store.
    pub(crate) fn publish_tenant_policy_text_blocking(
        &self,
        tenant_id: &str,
        file: &PolicyFile,
    ) -> Result<EffectivePolicy, ApiError> {
        let (org_id, effective) = self.read(|tx, _| resolve_tenant_policy(tx, tenant_id, file))?;
        let digest = effective.digest();
        let eff = self.tx_in(tenant_id, |tx, now| {
            let current = tx.tenant_policy_version(tenant_id)?;
            let version = match &current {
                Some((v, d)) if *d == digest => *v,
                Some((v, _)) => v + 1,
                None => 1,
            };
            tx.store_tenant_policy(&NewTenantPolicy {
                tenant: tenant_id,
                text: &file.text,
                org_policy_id: org_id.as_deref(),
                effective: &serde_json::to_string(&effective)?,
                digest: &digest,
                version,
                updated_ms: now,
            })?;
            if current.as_ref().is_none_or(|(_, d)| *d != digest) {
                ledger::append(
                    tx,
                    tenant_id,
                    "policy.published",
                    json!({"version": version, "digest": digest, "org_policy_id": org_id}),
                    now,
                )?;
            }
            Ok(EffectivePolicy {
                tenant_id: tenant_id.to_owned(),
                version,
                digest: digest.clone(),
                org_policy_id: org_id.clone(),
                policy: effective,
            })
        })?;
        let eff = Arc::new(eff);
        if let Ok(mut cache) = self.policies.lock() {
            cache.insert(tenant_id.to_owned(), eff.clone());
        }
        Ok((*eff).clone())
    }

    /// The tenant's effective policy (`GET /v1/policy/effective`).
    pub async fn effective_policy(
        self: &Arc<Self>,
        principal: &Principal,
    ) -> Result<EffectivePolicy, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.effective_policy_blocking(&principal))
            .await
    }

    /// [`Self::effective_policy`] on the caller's thread, which waits for the store.
    pub(crate) fn effective_policy_blocking(
        &self,
        principal: &Principal,
    ) -> Result<EffectivePolicy, ApiError> {
        self.policy_for(&principal.tenant_id)?
            .map(|p| (*p).clone())
            .ok_or_else(|| ApiError::not_found("policy_not_found", "no policy has been published"))
    }

    /// The tenant's effective policy as stored (no key needed: for the process
    /// that runs the gateway, e.g. `paybond dev loop` deciding whether to publish).
    pub async fn tenant_policy(
        self: &Arc<Self>,
        tenant_id: &str,
    ) -> Result<Option<EffectivePolicy>, ApiError> {
        let tenant_id = tenant_id.to_owned();
        self.blocking(move |e| e.tenant_policy_blocking(&tenant_id))
            .await
    }

    /// [`Self::tenant_policy`] on the caller's thread, which waits for the store.
    pub(crate) fn tenant_policy_blocking(
        &self,
        tenant_id: &str,
    ) -> Result<Option<EffectivePolicy>, ApiError> {
        Ok(self.policy_for(tenant_id)?.map(|p| (*p).clone()))
    }

    /// The tenant's effective policy when the engine holds it parsed and need not
    /// ask the store whether it is current (a store no other process writes).
    pub(crate) fn cached_policy(&self, tenant_id: &str) -> Option<Arc<EffectivePolicy>> {
        if self.store.shared() {
            return None;
        }
        self.policies.lock().ok()?.get(tenant_id).cloned()
    }

    /// The tenant's `sensitive_patterns`, compiled once per effective policy.
    pub(crate) fn sensitive_patterns(
        &self,
        policy: Option<&EffectivePolicy>,
    ) -> Result<Arc<[regex::Regex]>, ApiError> {
        let patterns = policy
            .and_then(|p| p.policy.spend_controls.as_ref())
            .and_then(|c| c.data.as_ref())
            .map(|d| d.sensitive_patterns.as_slice())
            .unwrap_or_default();
        let Some(policy) = policy.filter(|_| !patterns.is_empty()) else {
            return Ok(Arc::from([]));
        };
        if let Some(hit) = self
            .sensitive
            .lock()
            .ok()
            .and_then(|c| c.get(&policy.digest).cloned())
        {
            return Ok(hit);
        }
        // Validated when the policy was published; a stored pattern that no longer
        // compiles is the gateway's fault, not the caller's.
        let compiled: Arc<[regex::Regex]> = patterns
            .iter()
            .map(|p| regex::Regex::new(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                ApiError::internal(format_args!("spend_controls.data.sensitive_patterns: {e}"))
            })?
            .into();
        if let Ok(mut cache) = self.sensitive.lock() {
            if cache.len() >= SENSITIVE_CACHED {
                cache.clear();
            }
            cache.insert(policy.digest.clone(), compiled.clone());
        }
        Ok(compiled)
    }

    pub(crate) fn policy_for(
        &self,
        tenant_id: &str,
    ) -> Result<Option<Arc<EffectivePolicy>>, ApiError> {
        let cached = self
            .policies
            .lock()
            .ok()
            .and_then(|c| c.get(tenant_id).cloned());
        if let Some(p) = cached {
            // A fleet replica uses its parsed copy while the stored version is the same.
            if !self.store.shared() {
                return Ok(Some(p));
            }
            let version =
                self.read(|tx, _| Ok(tx.tenant_policy_version(tenant_id)?.map(|(v, _)| v)))?;
            if version == Some(p.version) {
                return Ok(Some(p));
            }
        }
        self.read(|tx, _| self.load_policy(tx, tenant_id))
    }

    /// On a shared store, inside a write of `tenant_id`'s (which holds the
    /// tenant's lock, so no replica publishes meanwhile): the tenant's effective
    /// policy as stored. Its version is read once per group of the tenant's writes
    /// (kept in the group's [`live::LiveState`]), and the parsed copy is used while
    /// it is the stored one: a verify costs no read of its own for its policy.
    pub(crate) fn policy_in(
        &self,
        tx: &dyn Tx,
        tenant_id: &str,
    ) -> Result<Option<Arc<EffectivePolicy>>, ApiError> {
        let known = tx
            .live()
            .and_then(|live| live.borrow().policy_version(tenant_id));
        let version = match known {
            Some(version) => version,
            None => {
                let version = tx.tenant_policy_version(tenant_id)?.map(|(v, _)| v);
                if let Some(live) = tx.live() {
                    live.borrow_mut().set_policy_version(tenant_id, version);
                }
                version
            }
        };
        let Some(version) = version else {
            return Ok(None);
        };
        let cached = self
            .policies
            .lock()
            .ok()
            .and_then(|c| c.get(tenant_id).cloned());
        match cached {
            Some(p) if p.version == version => Ok(Some(p)),
            _ => self.load_policy(tx, tenant_id),
        }
    }

    /// The tenant's effective policy as `tx` reads it, parsed and cached.
    fn load_policy(
        &self,
        tx: &dyn Tx,
        tenant_id: &str,
    ) -> Result<Option<Arc<EffectivePolicy>>, ApiError> {
        let Some(PolicyRow {
            effective,
            digest,
            version,
            org_policy_id,
        }) = tx.tenant_policy(tenant_id)?
        else {
            return Ok(None);
        };
        let eff = Arc::new(EffectivePolicy {
            tenant_id: tenant_id.to_owned(),
            version,
            digest,
            org_policy_id,
            policy: serde_json::from_str(&effective)?,
        });
        if let Ok(mut cache) = self.policies.lock() {
            cache.insert(tenant_id.to_owned(), eff.clone());
        }
        Ok(Some(eff))
    }

    // ---- ledger ----

    /// The tenant's chain tip (`GET /ledger/v1/tip`).
    pub async fn ledger_tip(
        self: &Arc<Self>,
        principal: &Principal,
    ) -> Result<ledger::LedgerTip, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.ledger_tip_blocking(&principal))
            .await
    }

    /// [`Self::ledger_tip`] on the caller's thread, which waits for the store.
    pub(crate) fn ledger_tip_blocking(
        &self,
        principal: &Principal,
    ) -> Result<ledger::LedgerTip, ApiError> {
        require_role(principal, READERS)?;
        self.read(|tx, _| ledger::tip(tx, &principal.tenant_id))
    }

    /// The tenant's entries after `after_seq` (`GET /ledger/v1/events`), at most `limit` (≤ 1000).
    pub async fn ledger_events(
        self: &Arc<Self>,
        principal: &Principal,
        after_seq: u64,
        limit: u64,
    ) -> Result<Vec<ledger::LedgerEvent>, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.ledger_events_blocking(&principal, after_seq, limit))
            .await
    }

    /// [`Self::ledger_events`] on the caller's thread, which waits for the store.
    pub(crate) fn ledger_events_blocking(
        &self,
        principal: &Principal,
        after_seq: u64,
        limit: u64,
    ) -> Result<Vec<ledger::LedgerEvent>, ApiError> {
        require_role(principal, READERS)?;
        self.read(|tx, _| ledger::events(tx, &principal.tenant_id, after_seq, limit.clamp(1, 1000)))
    }

    /// Checks every chain in the store.
    ///
    /// Then, the ledger being the log of every change, it checks that the spend it
    /// records, rebuilt entry by entry, is what the intents and reservations tables
    /// hold: a difference makes the check fail, naming it.
    pub async fn verify_ledger(self: &Arc<Self>) -> Result<ledger::LedgerCheck, ApiError> {
        self.blocking(move |e| e.verify_ledger_blocking()).await
    }

    /// [`Self::verify_ledger`] on the caller's thread, which waits for the store.
    pub(crate) fn verify_ledger_blocking(&self) -> Result<ledger::LedgerCheck, ApiError> {
        self.read(|tx, _| {
            let mut check = ledger::verify_chain(tx)?;
            if check.valid
                && let Some(problem) = state::check_projections(tx, self.config.reservation_ttl_ms)?
            {
                check.valid = false;
                check.problem = Some(problem);
            }
            Ok(check)
        })
    }

    /// Reservations not yet finalized (and not past their TTL).
    pub async fn open_reservations(self: &Arc<Self>) -> Result<u64, ApiError> {
        self.blocking(move |e| e.open_reservations_blocking()).await
    }

    /// [`Self::open_reservations`] on the caller's thread, which waits for the store.
    pub(crate) fn open_reservations_blocking(&self) -> Result<u64, ApiError> {
        self.read(|tx, now| Ok(tx.open_reservations(now)?))
    }

    /// Approval requests of every tenant waiting for an operator (not past their expiry).
    pub async fn pending_approvals(self: &Arc<Self>) -> Result<u64, ApiError> {
        self.blocking(move |e| e.pending_approvals_blocking()).await
    }

    /// [`Self::pending_approvals`] on the caller's thread, which waits for the store.
    pub(crate) fn pending_approvals_blocking(&self) -> Result<u64, ApiError> {
        self.read(|tx, now| Ok(tx.pending_approvals(now)?))
    }

    /// Prometheus text for `/metrics`.
    pub async fn render_metrics(self: &Arc<Self>) -> Result<String, ApiError> {
        self.blocking(move |e| e.render_metrics_blocking()).await
    }

    /// [`Self::render_metrics`] on the caller's thread, which waits for the store.
    pub(crate) fn render_metrics_blocking(&self) -> Result<String, ApiError> {
        use std::fmt::Write as _;
        let open = self.open_reservations_blocking()?;
        let m = &self.metrics;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP paybond_decisions_total Verify decisions by outcome."
        );
        let _ = writeln!(out, "# TYPE paybond_decisions_total counter");
        for (outcome, n) in [("allow", &m.allow), ("hold", &m.hold), ("deny", &m.deny)] {
            let _ = writeln!(
                out,
                "paybond_decisions_total{{outcome=\"{outcome}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP paybond_decision_reasons_total Holds and denies by outcome and first reason code."
        );
        let _ = writeln!(out, "# TYPE paybond_decision_reasons_total counter");
        if let Ok(reasons) = m.reasons.lock() {
            for ((outcome, reason), n) in reasons.iter() {
                let _ = writeln!(
                    out,
                    "paybond_decision_reasons_total{{outcome=\"{outcome}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
        m.latency.render(
            &mut out,
            "paybond_verify_duration_seconds",
            "Time to decide a verify.",
            1e6,
        );
        let _ = writeln!(
            out,
            "# HELP paybond_open_reservations Reservations not yet finalized."
        );
        let _ = writeln!(out, "# TYPE paybond_open_reservations gauge");
        let _ = writeln!(out, "paybond_open_reservations {open}");
        self.store.render_stats(&mut out);
        Ok(out)
    }
}

/// Stands in, in a stored idempotent answer, for the capability token it carried.
const REISSUE: &str = "(reissued on replay)";

/// Prefixes, in place of a stored answer, the id of the decision whose row holds
/// it ([`Kept::decision_row`]; a JSON answer never starts with it).
const IN_DECISION: &str = "decision:";

/// Stores an idempotency key's answer; its first two arguments are the tenant and
/// the key.
/// An answer kept under an idempotency key.
pub(crate) trait Kept: Serialize + serde::de::DeserializeOwned {
    /// The decision whose row holds this very answer, stored as given: the key
    /// then points at that row instead of holding a second copy.
    fn decision_row(&self) -> Option<Uuid> {
        None
    }
}

impl Kept for paybond_middleware_core::wire::VerifyResult {
    /// Every answer [`Engine::verify`] gives is its decision's row.
    fn decision_row(&self) -> Option<Uuid> {
        self.decision_id
    }
}

impl Kept for paybond_middleware_core::wire::SandboxBootstrapResponse {}
impl Kept for paybond_middleware_core::wire::IntentView {}
impl Kept for paybond_middleware_core::wire::EvidenceResponse {}
impl Kept for paybond_middleware_core::wire::CompleteResponse {}
impl Kept for paybond_middleware_core::wire::CompensationRecorded {}

/// A mutation's idempotency key, with what its stored answer is matched by.
struct Keyed {
    route: &'static str,
    key: String,
    /// Of the request's canonical JSON.
    body_hash: String,
}

impl Keyed {
    /// `None` without a key; a 400 for a key out of bounds. The key is stored
    /// under the id of the API key that sent it (`key_id` never holds `/`).
    fn new<R: Serialize>(
        key_id: &str,
        route: &'static str,
        key: Option<&str>,
        request: &R,
    ) -> Result<Option<Self>, ApiError> {
        let Some(key) = key else {
            return Ok(None);
        };
        if key.is_empty() || key.len() > 255 {
            return Err(ApiError::bad_request(
                "invalid_idempotency_key",
                "idempotency_key must be 1 to 255 characters",
            ));
        }
        let body_hash = sha256_hex(
            paybond_policies::canonical_json(&serde_json::to_value(request)?).as_bytes(),
        );
        Ok(Some(Self {
            route,
            key: format!("{key_id}/{key}"),
            body_hash,
        }))
    }
}

/// Longest identifier or name a request may carry (operation, tool, vendor, agent
/// subject, task/workflow/tool-call id, idempotency key, approval token), in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// 422 `field_too_long` when `value` (the request's `field`) is over
/// [`MAX_NAME_BYTES`], 422 `invalid_characters` when it holds a control character
/// (C0 or DEL): identifiers are joined with the unit separator in counter buckets,
/// shown in the console and written to logs, where such characters have meanings.
pub(crate) fn bounded(field: &str, value: Option<&str>) -> Result<(), ApiError> {
    let Some(v) = value else {
        return Ok(());
    };
    if v.len() > MAX_NAME_BYTES {
        return Err(ApiError::unprocessable(
            "field_too_long",
            format!(
                "{field} is {} bytes long; at most {MAX_NAME_BYTES} are accepted",
                v.len()
            ),
        ));
    }
    if let Some((at, c)) = v.char_indices().find(|(_, c)| c.is_ascii_control()) {
        return Err(ApiError::unprocessable(
            "invalid_characters",
            format!(
                "{field} holds the control character U+{:04X} at byte {at}; identifiers \
                 may not hold control characters",
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

/// 403 unless the principal holds one of `roles`.
/// The roles that read a tenant's spend, decisions, ledger and audit exports.
pub(crate) const READERS: &[Role] = &[Role::Operator, Role::TenantAdmin, Role::Analyst];

/// [`READERS`], and agent keys (which read their tenant's intents, decisions and
/// export jobs).
pub(crate) const READERS_AND_AGENTS: &[Role] = &[
    Role::Operator,
    Role::TenantAdmin,
    Role::Analyst,
    Role::Agent,
];

/// Whether `principal` has one of [`READERS`].
pub(crate) fn reads_tenant(principal: &Principal) -> bool {
    principal.roles.iter().any(|r| READERS.contains(r))
}

pub(crate) fn require_role(principal: &Principal, roles: &[Role]) -> Result<(), ApiError> {
    if principal.roles.iter().any(|r| roles.contains(r)) {
        return Ok(());
    }
    let names: Vec<&str> = roles.iter().map(|r| role_name(*r)).collect();
    Err(ApiError::forbidden(
        "forbidden_role",
        format!(
            "this needs {} key; the request's key is {} key",
            names
                .iter()
                .map(|n| article(n))
                .collect::<Vec<_>>()
                .join(" or "),
            article(role_name(principal.service_account_role))
        ),
    ))
}

/// `an agent`, `an operator`, `a tenant_admin`.
fn article(role: &str) -> String {
    if role.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {role}")
    } else {
        format!("a {role}")
    }
}

/// `file` as `tenant_id`'s policy, merged onto the org base it extends (read from
/// the store): the base's id and the effective policy, or why it is refused.
pub(crate) fn resolve_tenant_policy(
    tx: &dyn Tx,
    tenant_id: &str,
    file: &PolicyFile,
) -> Result<(Option<String>, paybond_policies::PolicyDocument), ApiError> {
    let overlay = check_policy(&file.text, &file.file);
    let org_id = overlay
        .document
        .as_ref()
        .and_then(|d| d.extends.as_ref())
        .map(|e| e.org_policy_id.clone());
    let base: Option<String> = match &org_id {
        Some(id) => tx.org_policy_text(tenant_id, id)?,
        None => None,
    };
    if let (Some(id), None) = (&org_id, &base) {
        return Err(ApiError::unprocessable(
            "org_policy_not_found",
            format!("the policy extends `{id}`, which has not been published"),
        ));
    }
    let base_file = org_id.as_ref().map(|id| format!("org-policies/{id}"));
    let resolution = resolve_policy(
        Source {
            text: &file.text,
            file: &file.file,
        },
        base.as_deref()
            .zip(base_file.as_deref())
            .map(|(text, file)| Source { text, file }),
    );
    match resolution.effective.filter(|_| resolution.valid) {
        Some(effective) => Ok((org_id, effective)),
        None => Err(policy_refused(&resolution.errors)),
    }
}

fn policy_refused(errors: &[paybond_policies::Diagnostic]) -> ApiError {
    let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
    ApiError::unprocessable(
        "policy_invalid",
        format!("the policy was refused: {}", list.join("; ")),
    )
}

fn issue_keys(
    tx: &dyn Tx,
    tenant_id: &str,
    environment: Environment,
    now: i64,
) -> Result<TenantKeys, ApiError> {
    Ok(TenantKeys {
        tenant_id: tenant_id.to_owned(),
        agent: insert_key(tx, tenant_id, environment, Role::Agent, None, now)?.1,
        operator: insert_key(tx, tenant_id, environment, Role::Operator, None, now)?.1,
        tenant_admin: insert_key(tx, tenant_id, environment, Role::TenantAdmin, None, now)?.1,
    })
}

/// Stores a new key's digest: its id and the key (shown once).
fn insert_key(
    tx: &dyn Tx,
    tenant_id: &str,
    environment: Environment,
    role: Role,
    subject: Option<&str>,
    now: i64,
) -> Result<(String, ApiKey), ApiError> {
    let key = format!("paybond_sk_{}_{}", env_name(environment), random_hex());
    let hash = sha256_hex(key.as_bytes());
    let key_id = format!("key_{}", &hash[..16]);
    let subject = subject.map_or_else(
        || {
            format!(
                "{}:{}",
                role_name(role),
                tenant_id.get(4..12).unwrap_or(tenant_id)
            )
        },
        str::to_owned,
    );
    tx.add_api_key(&hash, &key_id, tenant_id, role_name(role), &subject, now)?;
    Ok((key_id, ApiKey::new(key)))
}
