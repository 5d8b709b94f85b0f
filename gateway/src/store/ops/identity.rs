//! People and workloads: SCIM tokens, role mappings, service accounts, console
//! sessions, single sign-on's client and sign-ins under way, and what a person's
//! groups give them.

use crate::engine::identity::OidcLogin;
use crate::store::{StoreError, Tx, args};

/// A SCIM token: id, name, when made and when revoked.
pub(crate) type ScimTokenRow = (String, String, i64, Option<i64>);

/// A console session: its tenant, the key (digest) or person it is of, and
/// its CSRF token.
pub(crate) type SessionRow = (String, Option<String>, Option<String>, String);

/// A tenant's OpenID Connect client: issuer, client id, secret (wrapped under
/// the root key) and when it was set.
pub(crate) type OidcClientRow = (String, String, Vec<u8>, i64);

/// A console session to open.
pub(crate) struct NewSession<'a> {
    pub(crate) id_hash: &'a str,
    pub(crate) tenant: &'a str,
    pub(crate) key_hash: Option<&'a str>,
    pub(crate) user: Option<&'a str>,
    pub(crate) csrf: &'a str,
    pub(crate) created_ms: i64,
    pub(crate) expires_ms: i64,
}

impl dyn Tx + '_ {
    /// Whether the tenant's SCIM user `user` is active; `None` if there is none.
    pub(crate) fn person_active(
        &self,
        tenant: &str,
        user: &str,
    ) -> Result<Option<bool>, StoreError> {
        self.query_opt(
            "SELECT active FROM scim_users WHERE id = ?1 AND tenant_id = ?2",
            args![user, tenant],
            |r| r.get(0),
        )
    }

    /// The roles the groups of the tenant's SCIM user `user` map to (names).
    pub(crate) fn person_role_names(
        &self,
        tenant: &str,
        user: &str,
    ) -> Result<Vec<String>, StoreError> {
        self.query_map(
            "SELECT DISTINCT m.role FROM scim_members s
             JOIN scim_groups g ON g.id = s.group_id
             JOIN role_mappings m ON m.tenant_id = g.tenant_id AND m.group_name = g.display_name
             WHERE s.user_id = ?1 AND s.tenant_id = ?2",
            args![user, tenant],
            |r| r.get(0),
        )
    }

    /// The `userName` of the tenant's SCIM user `user`, and the tenant's environment.
    pub(crate) fn person_name(
        &self,
        tenant: &str,
        user: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        self.query_opt(
            "SELECT u.user_name, t.environment FROM scim_users u JOIN tenants t ON t.id = u.tenant_id
             WHERE u.id = ?1 AND u.tenant_id = ?2",
            args![user, tenant],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// The SCIM ids of the members of the tenant's groups named `group`.
    pub(crate) fn members_of_groups_named(
        &self,
        tenant: &str,
        group: &str,
    ) -> Result<Vec<String>, StoreError> {
        self.query_map(
            "SELECT DISTINCT s.user_id FROM scim_members s JOIN scim_groups g ON g.id = s.group_id
             WHERE g.tenant_id = ?1 AND g.display_name = ?2",
            args![tenant, group],
            |r| r.get(0),
        )
    }

    /// The tenant's SCIM user found by `externalId`.
    pub(crate) fn person_by_external_id(
        &self,
        tenant: &str,
        external_id: &str,
    ) -> Result<Option<String>, StoreError> {
        self.query_opt(
            "SELECT id FROM scim_users WHERE tenant_id = ?1 AND external_id = ?2",
            args![tenant, external_id],
            |r| r.get(0),
        )
    }

    /// The tenant's SCIM user found by `userName` (matched without case).
    pub(crate) fn person_by_user_name(
        &self,
        tenant: &str,
        user_name: &str,
    ) -> Result<Option<String>, StoreError> {
        self.query_opt(
            "SELECT id FROM scim_users WHERE tenant_id = ?1 AND user_name_key = ?2",
            args![tenant, user_name.to_lowercase()],
            |r| r.get(0),
        )
    }

    /// Makes a SCIM token (its digest).
    pub(crate) fn add_scim_token(
        &self,
        id: &str,
        tenant: &str,
        digest: &str,
        name: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO scim_tokens (id, tenant_id, digest, name, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            args![id, tenant, digest, name, now],
        )
        .map(drop)
    }

    /// The tenant's SCIM tokens, oldest first.
    pub(crate) fn scim_tokens(&self, tenant: &str) -> Result<Vec<ScimTokenRow>, StoreError> {
        self.query_map(
            "SELECT id, name, created_ms, revoked_ms FROM scim_tokens WHERE tenant_id = ?1
             ORDER BY created_ms, id",
            args![tenant],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
    }

    /// The tenant's SCIM token `id`.
    pub(crate) fn scim_token(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<ScimTokenRow>, StoreError> {
        self.query_opt(
            "SELECT id, name, created_ms, revoked_ms FROM scim_tokens
             WHERE id = ?1 AND tenant_id = ?2",
            args![id, tenant],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
    }

    /// Revokes the tenant's SCIM token `id` at `now`; false if it was revoked
    /// before, or is not the tenant's.
    pub(crate) fn revoke_scim_token(
        &self,
        tenant: &str,
        id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(self.execute(
            "UPDATE scim_tokens SET revoked_ms = ?3
             WHERE id = ?1 AND tenant_id = ?2 AND revoked_ms IS NULL",
            args![id, tenant, now],
        )? > 0)
    }

    /// The tenant of the unrevoked SCIM token with this digest.
    pub(crate) fn scim_token_tenant(&self, digest: &str) -> Result<Option<String>, StoreError> {
        self.query_opt(
            "SELECT tenant_id FROM scim_tokens WHERE digest = ?1 AND revoked_ms IS NULL",
            args![digest],
            |r| r.get(0),
        )
    }

    /// The tenant's role mappings (group, role), by group.
    pub(crate) fn role_mappings(&self, tenant: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.query_map(
            "SELECT group_name, role FROM role_mappings WHERE tenant_id = ?1 ORDER BY group_name",
            args![tenant],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Maps the tenant's group `group` to `role`, in place of what it mapped to.
    pub(crate) fn set_role_mapping(
        &self,
        tenant: &str,
        group: &str,
        role: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO role_mappings (tenant_id, group_name, role, updated_ms)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (tenant_id, group_name) DO UPDATE SET role = ?3, updated_ms = ?4",
            args![tenant, group, role, now],
        )
        .map(drop)
    }

    /// Removes the mapping of the tenant's group `group`; false if it had none.
    pub(crate) fn remove_role_mapping(
        &self,
        tenant: &str,
        group: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.execute(
            "DELETE FROM role_mappings WHERE tenant_id = ?1 AND group_name = ?2",
            args![tenant, group],
        )? > 0)
    }

    /// The key of the tenant's service account named `name`.
    pub(crate) fn service_account_named(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        self.query_opt(
            "SELECT key_id FROM api_keys WHERE tenant_id = ?1 AND name = ?2",
            args![tenant, name],
            |r| r.get(0),
        )
    }

    /// Names key `key_id` (a service account's).
    pub(crate) fn name_key(&self, key_id: &str, name: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE api_keys SET name = ?2 WHERE key_id = ?1",
            args![key_id, name],
        )
        .map(drop)
    }

    /// The tenant's service accounts (key id, name, role, when made), oldest first.
    pub(crate) fn service_accounts(
        &self,
        tenant: &str,
    ) -> Result<Vec<(String, String, String, i64)>, StoreError> {
        self.query_map(
            "SELECT key_id, name, role, created_ms FROM api_keys
             WHERE tenant_id = ?1 AND name IS NOT NULL ORDER BY created_ms, key_id",
            args![tenant],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
    }

    /// The key digest of the tenant's service account `key_id`.
    pub(crate) fn service_account_hash(
        &self,
        tenant: &str,
        key_id: &str,
    ) -> Result<Option<String>, StoreError> {
        self.query_opt(
            "SELECT secret_hash FROM api_keys
             WHERE key_id = ?1 AND tenant_id = ?2 AND name IS NOT NULL",
            args![key_id, tenant],
            |r| r.get(0),
        )
    }

    /// Revokes the key with this digest and ends its console sessions.
    pub(crate) fn revoke_key(&self, secret_hash: &str) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM api_keys WHERE secret_hash = ?1",
            args![secret_hash],
        )?;
        self.execute(
            "DELETE FROM console_sessions WHERE key_hash = ?1",
            args![secret_hash],
        )
        .map(drop)
    }

    /// Opens a console session, dropping those past their time.
    pub(crate) fn open_session(&self, s: &NewSession<'_>) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM console_sessions WHERE expires_ms <= ?1",
            args![s.created_ms],
        )?;
        self.execute(
            "INSERT INTO console_sessions (id_hash, tenant_id, key_hash, user_id, csrf,
                 created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            args![
                s.id_hash,
                s.tenant,
                s.key_hash,
                s.user,
                s.csrf,
                s.created_ms,
                s.expires_ms
            ],
        )
        .map(drop)
    }

    /// The console session whose id hashes to `id_hash`, if live at `now`.
    pub(crate) fn session(
        &self,
        id_hash: &str,
        now: i64,
    ) -> Result<Option<SessionRow>, StoreError> {
        self.query_opt(
            "SELECT tenant_id, key_hash, user_id, csrf FROM console_sessions
             WHERE id_hash = ?1 AND expires_ms > ?2",
            args![id_hash, now],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
    }

    /// Ends the console session whose id hashes to `id_hash`.
    pub(crate) fn end_session(&self, id_hash: &str) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM console_sessions WHERE id_hash = ?1",
            args![id_hash],
        )
        .map(drop)
    }

    /// Ends every console session of SCIM user `user`; how many.
    pub(crate) fn end_person_sessions(&self, user: &str) -> Result<u64, StoreError> {
        self.execute(
            "DELETE FROM console_sessions WHERE user_id = ?1",
            args![user],
        )
    }

    /// Sets the tenant's OpenID Connect client (its secret wrapped).
    pub(crate) fn set_oidc_client(
        &self,
        tenant: &str,
        issuer: &str,
        client_id: &str,
        wrapped_secret: &[u8],
        now: i64,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO oidc_configs (tenant_id, issuer, client_id, client_secret, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (tenant_id) DO UPDATE SET issuer = ?2, client_id = ?3,
                 client_secret = ?4, updated_ms = ?5",
            args![tenant, issuer, client_id, wrapped_secret, now],
        )
        .map(drop)
    }

    /// The tenant's OpenID Connect client: issuer, client id, its secret
    /// (wrapped) and when it was set.
    pub(crate) fn oidc_client(&self, tenant: &str) -> Result<Option<OidcClientRow>, StoreError> {
        self.query_opt(
            "SELECT issuer, client_id, client_secret, updated_ms FROM oidc_configs
             WHERE tenant_id = ?1",
            args![tenant],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
    }

    /// The tenants with single sign-on (id, name), by name.
    pub(crate) fn oidc_tenants(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.query_map(
            "SELECT t.id, t.name FROM oidc_configs o JOIN tenants t ON t.id = o.tenant_id
             ORDER BY t.name",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Keeps a sign-in under way by its state's digest until `expires_ms`,
    /// dropping those past their time.
    pub(crate) fn begin_oidc_login(
        &self,
        state_hash: &str,
        login: &OidcLogin,
        now: i64,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        self.execute("DELETE FROM oidc_logins WHERE expires_ms <= ?1", args![now])?;
        self.execute(
            "INSERT INTO oidc_logins (state_hash, tenant_id, nonce, verifier, return_to,
                 created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            args![
                state_hash,
                login.tenant_id,
                login.nonce,
                login.verifier,
                login.return_to,
                now,
                expires_ms
            ],
        )
        .map(drop)
    }

    /// Takes the sign-in under way whose state hashes to `state_hash`, if live
    /// at `now`: it is gone after.
    pub(crate) fn take_oidc_login(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<Option<OidcLogin>, StoreError> {
        let login = self.query_opt(
            "SELECT tenant_id, nonce, verifier, return_to FROM oidc_logins
             WHERE state_hash = ?1 AND expires_ms > ?2",
            args![state_hash, now],
            |r| {
                Ok(OidcLogin {
                    tenant_id: r.get(0)?,
                    nonce: r.get(1)?,
                    verifier: r.get(2)?,
                    return_to: r.get(3)?,
                })
            },
        )?;
        self.execute(
            "DELETE FROM oidc_logins WHERE state_hash = ?1",
            args![state_hash],
        )?;
        Ok(login)
    }
}
