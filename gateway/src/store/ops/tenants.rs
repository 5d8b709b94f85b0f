//! Tenants and what they configure: the root key's row, API keys, policies,
//! wrapped secrets, and the answers kept under idempotency keys.

use crate::store::held::Held;
use crate::store::{StoreError, Tx, Value, args};

/// Stores an answer under an idempotency key.
pub(in crate::store) const STORE_KEY: &str =
    "INSERT INTO idempotency (tenant_id, key, route, body_hash, response, created_ms)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// The answer kept under tenant `?1`'s idempotency key `?2`: its route, body hash
/// and response.
pub(in crate::store) const KEPT_ANSWER: &str =
    "SELECT route, body_hash, response FROM idempotency WHERE tenant_id = ?1 AND key = ?2";

/// Whether `held`, a held-back write, may change the answer kept under
/// `tenant`'s idempotency key `key`: it writes to the keys' table, and is not the
/// storing of another key.
pub(in crate::store) fn may_change_key(held: &Held, tenant: &str, key: &str) -> bool {
    held.may_write("idempotency")
        && (held.sql != STORE_KEY
            || matches!(held.args.get(..2), Some([Value::Text(t), Value::Text(k)])
                if t == tenant && k == key))
}

/// An API key as authentication reads it, with its tenant's environment.
pub(crate) struct KeyRow {
    pub(crate) key_id: String,
    pub(crate) tenant: String,
    pub(crate) role: String,
    pub(crate) subject: String,
    pub(crate) environment: String,
}

/// A tenant's effective policy as stored.
pub(crate) struct PolicyRow {
    /// The resolved document, as JSON.
    pub(crate) effective: String,
    pub(crate) digest: String,
    pub(crate) version: u64,
    pub(crate) org_policy_id: Option<String>,
}

/// A tenant policy to store.
pub(crate) struct NewTenantPolicy<'a> {
    pub(crate) tenant: &'a str,
    /// The file as published.
    pub(crate) text: &'a str,
    pub(crate) org_policy_id: Option<&'a str>,
    /// The resolved document, as JSON.
    pub(crate) effective: &'a str,
    pub(crate) digest: &'a str,
    pub(crate) version: u64,
    pub(crate) updated_ms: i64,
}

/// An answer kept under an idempotency key.
pub(crate) struct KeptAnswer {
    pub(crate) route: String,
    pub(crate) body_hash: String,
    pub(crate) response: String,
}

impl dyn Tx + '_ {
    /// The root key kept in the database (PostgreSQL; SQLite files before the
    /// key file).
    pub(crate) fn stored_root_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.query_opt(
            "SELECT value FROM meta WHERE key = 'root_key'",
            args![],
            |r| r.get(0),
        )
    }

    /// Stores a root key unless one is stored already.
    pub(crate) fn store_root_key_if_none(&self, key: &[u8]) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO meta (key, value) VALUES ('root_key', ?1) ON CONFLICT (key) DO NOTHING",
            args![key],
        )
        .map(drop)
    }

    /// Stores a root key in place of any other.
    pub(crate) fn replace_root_key(&self, key: &[u8]) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO meta (key, value) VALUES ('root_key', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            args![key],
        )
        .map(drop)
    }

    /// Deletes the root key's row from a SQLite file, overwriting it (SQLite's
    /// secure delete).
    pub(crate) fn erase_root_key(&self) -> Result<(), StoreError> {
        self.query("PRAGMA secure_delete = ON", args![])?;
        self.execute("DELETE FROM meta WHERE key = 'root_key'", args![])
            .map(drop)
    }

    /// Every tenant's audit signing key, wrapped under the root key.
    pub(crate) fn wrapped_signing_keys(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.query_map(
            "SELECT tenant_id, secret_key FROM signing_keys",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Replaces the tenant's wrapped audit signing key.
    pub(crate) fn set_wrapped_signing_key(
        &self,
        tenant: &str,
        wrapped: &[u8],
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE signing_keys SET secret_key = ?2 WHERE tenant_id = ?1",
            args![tenant, wrapped],
        )
        .map(drop)
    }

    /// Every tenant's OpenID Connect client secret, wrapped under the root key.
    pub(crate) fn wrapped_client_secrets(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.query_map(
            "SELECT tenant_id, client_secret FROM oidc_configs",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Replaces the tenant's wrapped OpenID Connect client secret.
    pub(crate) fn set_wrapped_client_secret(
        &self,
        tenant: &str,
        wrapped: &[u8],
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE oidc_configs SET client_secret = ?2 WHERE tenant_id = ?1",
            args![tenant, wrapped],
        )
        .map(drop)
    }

    /// The answer kept under the tenant's idempotency key `key`. Read past the
    /// writes the group holds back, unless one of them may store this key: a key
    /// is read on every keyed request, and sending the group's writes before each
    /// would keep them from merging.
    pub(crate) fn kept_answer(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<KeptAnswer>, StoreError> {
        self.kept_answer_rows(tenant, key)?
            .first()
            .map(|r| {
                Ok(KeptAnswer {
                    route: r.get(0)?,
                    body_hash: r.get(1)?,
                    response: r.get(2)?,
                })
            })
            .transpose()
    }

    /// Keeps an answer (`response`) to a request (its `route` and `body_hash`)
    /// under the tenant's idempotency key (held back).
    pub(crate) fn keep_answer(
        &self,
        (tenant, key): (&str, &str),
        (route, body_hash): (&str, &str),
        response: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.execute_later(
            STORE_KEY,
            args![tenant, key, route, body_hash, response, now],
        )
    }

    /// The answer recorded with the tenant's decision `id`, as JSON.
    pub(crate) fn decision_response(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<String>, StoreError> {
        self.query_opt(
            "SELECT response FROM decisions WHERE id = ?1 AND tenant_id = ?2",
            args![id, tenant],
            |r| r.get(0),
        )
    }

    /// The operations (a JSON array) and deadline of the tenant's intent `id`.
    pub(crate) fn intent_grant(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(String, i64)>, StoreError> {
        self.query_opt(
            "SELECT operations, deadline_ms FROM intents WHERE id = ?1 AND tenant_id = ?2",
            args![id, tenant],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Makes a tenant.
    pub(crate) fn create_tenant(
        &self,
        id: &str,
        name: &str,
        environment: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO tenants (id, name, environment, created_ms) VALUES (?1, ?2, ?3, ?4)",
            args![id, name, environment, now],
        )
        .map(drop)
    }

    /// The first tenant made with this name.
    pub(crate) fn tenant_named(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.query_opt(
            "SELECT id FROM tenants WHERE name = ?1 ORDER BY created_ms LIMIT 1",
            args![name],
            |r| r.get(0),
        )
    }

    /// The tenant's environment (`sandbox` or `live`).
    pub(crate) fn tenant_environment(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.query_opt(
            "SELECT environment FROM tenants WHERE id = ?1",
            args![id],
            |r| r.get(0),
        )
    }

    /// Every tenant's id and name, by id.
    pub(crate) fn tenant_names(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.query_map("SELECT id, name FROM tenants ORDER BY id", args![], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
    }

    /// Every tenant, by id.
    pub(crate) fn tenant_ids(&self) -> Result<Vec<String>, StoreError> {
        self.query_map("SELECT id FROM tenants ORDER BY id", args![], |r| r.get(0))
    }

    /// Revokes every API key of the tenant.
    pub(crate) fn revoke_tenant_keys(&self, tenant: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM api_keys WHERE tenant_id = ?1", args![tenant])
            .map(drop)
    }

    /// Stores a new API key's digest.
    pub(crate) fn add_api_key(
        &self,
        secret_hash: &str,
        key_id: &str,
        tenant: &str,
        role: &str,
        subject: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO api_keys (secret_hash, key_id, tenant_id, role, subject, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            args![secret_hash, key_id, tenant, role, subject, now],
        )
        .map(drop)
    }

    /// The API key whose secret hashes to `secret_hash`.
    pub(crate) fn key_by_hash(&self, secret_hash: &str) -> Result<Option<KeyRow>, StoreError> {
        self.query_opt(
            "SELECT k.key_id, k.tenant_id, k.role, k.subject, t.environment
             FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.secret_hash = ?1",
            args![secret_hash],
            |r| {
                Ok(KeyRow {
                    key_id: r.get(0)?,
                    tenant: r.get(1)?,
                    role: r.get(2)?,
                    subject: r.get(3)?,
                    environment: r.get(4)?,
                })
            },
        )
    }

    /// Publishes (or replaces) the tenant's org policy `id`.
    pub(crate) fn publish_org_policy(
        &self,
        tenant: &str,
        id: &str,
        text: &str,
        digest: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO org_policies (tenant_id, id, text, digest, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (tenant_id, id) DO UPDATE SET text = excluded.text,
             digest = excluded.digest, updated_ms = excluded.updated_ms",
            args![tenant, id, text, digest, now],
        )
        .map(drop)
    }

    /// The text of the tenant's org policy `id`.
    pub(crate) fn org_policy_text(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<String>, StoreError> {
        self.query_opt(
            "SELECT text FROM org_policies WHERE tenant_id = ?1 AND id = ?2",
            args![tenant, id],
            |r| r.get(0),
        )
    }

    /// The version and digest of the tenant's policy.
    pub(crate) fn tenant_policy_version(
        &self,
        tenant: &str,
    ) -> Result<Option<(u64, String)>, StoreError> {
        self.query_opt(
            "SELECT version, digest FROM tenant_policies WHERE tenant_id = ?1",
            args![tenant],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Stores the tenant's policy in place of the last.
    pub(crate) fn store_tenant_policy(&self, p: &NewTenantPolicy<'_>) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO tenant_policies (tenant_id, text, org_policy_id, effective, digest, version, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (tenant_id) DO UPDATE SET text = excluded.text,
             org_policy_id = excluded.org_policy_id, effective = excluded.effective,
             digest = excluded.digest, version = excluded.version, updated_ms = excluded.updated_ms",
            args![
                p.tenant,
                p.text,
                p.org_policy_id,
                p.effective,
                p.digest,
                p.version,
                p.updated_ms
            ],
        )
        .map(drop)
    }

    /// The tenant's effective policy.
    pub(crate) fn tenant_policy(&self, tenant: &str) -> Result<Option<PolicyRow>, StoreError> {
        self.query_opt(
            "SELECT effective, digest, version, org_policy_id FROM tenant_policies WHERE tenant_id = ?1",
            args![tenant],
            |r| {
                Ok(PolicyRow {
                    effective: r.get(0)?,
                    digest: r.get(1)?,
                    version: r.get(2)?,
                    org_policy_id: r.get(3)?,
                })
            },
        )
    }
}
