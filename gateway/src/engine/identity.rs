//! Identity: SCIM bearer tokens, the tenant's group-to-role mappings, service
//! accounts (named API keys for workloads), people provisioned over SCIM and the
//! roles their groups give them, and console sessions kept in the store so every
//! replica serves them.

use paybond_middleware_core::wire::{ApiKey, Environment, Principal, Role};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

use super::lifecycle::rfc3339;
use super::{Engine, bounded, insert_key, ledger, require_role, role_from, role_name};
use crate::error::ApiError;
use crate::store::{NewSession, ScimTokenRow, Tx};
use crate::tokens::{random_hex, sha256_hex};

/// The roles an IdP group may map to.
const MAPPABLE: &[Role] = &[Role::TenantAdmin, Role::Operator, Role::Analyst];

/// A SCIM token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScimToken {
    /// Its id.
    pub id: String,
    /// What it is for (e.g. `okta`).
    pub name: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// When it was revoked.
    pub revoked_at: Option<String>,
}

/// A SCIM token just made: the token is shown this once; the store keeps its digest.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CreatedScimToken {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The bearer token for the IdP's SCIM connector.
    pub token: ApiKey,
}

/// `POST /v1/admin/identity/scim-tokens`.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
pub struct ScimTokenRequest {
    /// What it is for (default `scim`).
    #[serde(default)]
    pub name: Option<String>,
}

/// An IdP group and the tenant role it grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RoleMapping {
    /// The group's `displayName` as SCIM provisions it.
    pub group: String,
    /// `tenant_admin`, `operator` or `analyst`.
    pub role: String,
}

/// A service account: a named API key for a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServiceAccount {
    /// Its id (its key's id, on the ledger).
    pub id: String,
    /// Its name (the subject its decisions and approvals record).
    pub name: String,
    /// `agent` or `operator`.
    pub role: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
}

/// `POST /v1/admin/identity/service-accounts`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct ServiceAccountRequest {
    /// Its name, unique in the tenant.
    pub name: String,
    /// `agent` or `operator`.
    pub role: String,
}

/// A service account just made, with its key (shown this once).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CreatedServiceAccount {
    /// The account.
    #[serde(flatten)]
    pub account: ServiceAccount,
    /// Its API key.
    pub api_key: ApiKey,
}

/// Who a console session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SessionOwner {
    /// An API key, by its digest.
    Key(String),
    /// A person provisioned over SCIM, by their SCIM id.
    Person(String),
}

/// A console session as the store keeps it.
#[derive(Debug, Clone)]
pub(crate) struct StoredSession {
    pub(crate) principal: Principal,
    pub(crate) csrf: String,
}

/// The roles `user` (a SCIM id of `tenant`) has now: none when the person is
/// inactive or gone; otherwise the roles their groups map to.
pub(crate) fn person_roles(tx: &dyn Tx, tenant: &str, user: &str) -> Result<Vec<Role>, ApiError> {
    if tx.person_active(tenant, user)? != Some(true) {
        return Ok(Vec::new());
    }
    let names = tx.person_role_names(tenant, user)?;
    let mut roles: Vec<Role> = names.iter().map(|n| role_from(n)).collect();
    // Strongest first: the primary role shown is the first.
    roles.sort_by_key(|r| match r {
        Role::TenantAdmin => 0,
        Role::Operator => 1,
        Role::Analyst => 2,
        _ => 3,
    });
    roles.dedup();
    Ok(roles)
}

/// The principal of a person: their roles, their `userName` as the subject (what
/// approvals record), `scim:<id>` as the key id.
pub(crate) fn person_principal(
    tx: &dyn Tx,
    tenant: &str,
    user: &str,
) -> Result<Option<Principal>, ApiError> {
    let roles = person_roles(tx, tenant, user)?;
    let Some(&primary) = roles.first() else {
        return Ok(None);
    };
    let row = tx.person_name(tenant, user)?;
    Ok(row.map(|(user_name, env)| Principal {
        tenant_id: tenant.to_owned(),
        environment: if env == "live" {
            Environment::Live
        } else {
            Environment::Sandbox
        },
        service_account_role: primary,
        roles,
        subject: user_name,
        key_id: format!("scim:{user}"),
    }))
}

/// Ends every console session of `user` (deprovisioned, or left without a role).
pub(crate) fn end_person_sessions(tx: &dyn Tx, user: &str) -> Result<u64, ApiError> {
    Ok(tx.end_person_sessions(user)?)
}

/// Ends the sessions of the users among `users` who have no role left.
pub(crate) fn end_sessions_without_roles(
    tx: &dyn Tx,
    tenant: &str,
    users: &[String],
) -> Result<(), ApiError> {
    for user in users {
        if person_roles(tx, tenant, user)?.is_empty() {
            end_person_sessions(tx, user)?;
        }
    }
    Ok(())
}

fn scim_token((id, name, created, revoked): ScimTokenRow) -> ScimToken {
    ScimToken {
        id,
        name,
        created_at: rfc3339(created),
        revoked_at: revoked.map(rfc3339),
    }
}

fn parse_mappable(role: &str) -> Result<Role, ApiError> {
    let r = role_from(role);
    if MAPPABLE.contains(&r) {
        Ok(r)
    } else {
        Err(ApiError::unprocessable(
            "invalid_field",
            format!("role `{role}` is not tenant_admin, operator or analyst"),
        ))
    }
}

impl Engine {
    // ---- SCIM tokens ----

    /// `POST /v1/admin/identity/scim-tokens` (tenant admin): a bearer token for the
    /// IdP's SCIM connector, shown once.
    pub async fn create_scim_token(
        self: &Arc<Self>,
        principal: &Principal,
        req: &ScimTokenRequest,
    ) -> Result<CreatedScimToken, ApiError> {
        let principal = principal.clone();
        let req = req.clone();
        self.blocking(move |e| e.create_scim_token_blocking(&principal, &req))
            .await
    }

    /// [`Self::create_scim_token`] on the caller's thread, which waits for the store.
    pub(crate) fn create_scim_token_blocking(
        &self,
        principal: &Principal,
        req: &ScimTokenRequest,
    ) -> Result<CreatedScimToken, ApiError> {
        require_role(principal, &[Role::TenantAdmin])?;
        bounded("name", req.name.as_deref())?;
        let name = req
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or("scim")
            .to_owned();
        let token = format!("paybond_scim_{}", random_hex());
        let id = format!("scim_{}", &Uuid::now_v7().simple().to_string()[..20]);
        self.tx_in(&principal.tenant_id, |tx, now| {
            tx.add_scim_token(
                &id,
                &principal.tenant_id,
                &sha256_hex(token.as_bytes()),
                &name,
                now,
            )?;
            ledger::append(
                tx,
                &principal.tenant_id,
                "identity.scim_token_created",
                json!({"scim_token_id": id, "name": name, "by": principal.key_id}),
                now,
            )?;
            Ok(())
        })?;
        Ok(CreatedScimToken {
            id,
            name,
            token: ApiKey::new(token),
        })
    }

    /// `GET /v1/admin/identity/scim-tokens` (tenant admin).
    pub async fn scim_tokens(
        self: &Arc<Self>,
        principal: &Principal,
    ) -> Result<Vec<ScimToken>, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.scim_tokens_blocking(&principal))
            .await
    }

    /// [`Self::scim_tokens`] on the caller's thread, which waits for the store.
    pub(crate) fn scim_tokens_blocking(
        &self,
        principal: &Principal,
    ) -> Result<Vec<ScimToken>, ApiError> {
        require_role(principal, &[Role::TenantAdmin])?;
        self.read(|tx, _| {
            Ok(tx
                .scim_tokens(&principal.tenant_id)?
                .into_iter()
                .map(scim_token)
                .collect())
        })
    }

    /// `DELETE /v1/admin/identity/scim-tokens/{id}` (tenant admin): the token is
    /// refused from now on.
    pub async fn revoke_scim_token(
        self: &Arc<Self>,
        principal: &Principal,
        id: &str,
    ) -> Result<ScimToken, ApiError> {
        let principal = principal.clone();
        let id = id.to_owned();
        self.blocking(move |e| e.revoke_scim_token_blocking(&principal, &id))
            .await
    }

    /// [`Self::revoke_scim_token`] on the caller's thread, which waits for the store.
    pub(crate) fn revoke_scim_token_blocking(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<ScimToken, ApiError> {
        require_role(principal, &[Role::TenantAdmin])?;
        self.tx_in(&principal.tenant_id, |tx, now| {
            if tx.revoke_scim_token(&principal.tenant_id, id, now)? {
                ledger::append(
                    tx,
                    &principal.tenant_id,
                    "identity.scim_token_revoked",
                    json!({"scim_token_id": id, "by": principal.key_id}),
                    now,
                )?;
            }
            tx.scim_token(&principal.tenant_id, id)?
                .map(scim_token)
                .ok_or_else(|| ApiError::not_found("scim_token_not_found", "no such SCIM token"))
        })
    }

    /// The tenant a SCIM bearer token belongs to; 401 for any other token.
    pub(crate) fn scim_tenant(&self, token: &str) -> Result<String, ApiError> {
        let digest = sha256_hex(token.as_bytes());
        self.read(|tx, _| Ok(tx.scim_token_tenant(&digest)?))?
            .ok_or_else(|| ApiError::unauthorized("the SCIM bearer token is not valid"))
    }

    // ---- role mappings ----

    /// `GET /v1/admin/identity/role-mappings` (tenant admin).
    pub async fn role_mappings(
        self: &Arc<Self>,
        principal: &Principal,
    ) -> Result<Vec<RoleMapping>, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.role_mappings_blocking(&principal))
            .await
    }

    /// [`Self::role_mappings`] on the caller's thread, which waits for the store.
    pub(crate) fn role_mappings_blocking(
        &self,
        principal: &Principal,
    ) -> Result<Vec<RoleMapping>, ApiError> {
        require_role(principal, &[Role::TenantAdmin])?;
        self.read(|tx, _| {
            Ok(tx
                .role_mappings(&principal.tenant_id)?
                .into_iter()
                .map(|(group, role)| RoleMapping { group, role })
                .collect())
        })
    }

    /// `PUT /v1/admin/identity/role-mappings/{group}` (tenant admin): members of
    /// the group get `role`, replacing what it mapped to before.
    pub async fn set_role_mapping(
        self: &Arc<Self>,
        principal: &Principal,
        group: &str,
        role: &str,
    ) -> Result<RoleMapping, ApiError> {
        let principal = principal.clone();
        let group = group.to_owned();
        let role = role.to_owned();
        self.blocking(move |e| e.set_role_mapping_blocking(&principal, &group, &role))
            .await
    }

    /// [`Self::set_role_mapping`] on the caller's thread, which waits for the store.
    pub(crate) fn set_role_mapping_blocking(
        &self,
        principal: &Principal,
        group: &str,
        role: &str,
    ) -> Result<RoleMapping, ApiError> {
        require_role(principal, &[Role::TenantAdmin])?;
        bounded("group", Some(group))?;
        if group.trim().is_empty() {
            return Err(ApiError::bad_request(
                "invalid_field",
                "group must not be empty",
            ));
        }
        let r = parse_mappable(role)?;
        self.tx_in(&principal.tenant_id, |tx, now| {
            tx.set_role_mapping(&principal.tenant_id, group, role_name(r), now)?;
            ledger::append(
                tx,
                &principal.tenant_id,
                "identity.role_mapping_set",
                json!({"group": group, "role": role_name(r), "by": principal.key_id}),
                now,
            )?;
            // A group that gave a stronger role may now give less: sessions of
            // members left without any role end.
            let members = group_members_named(tx, &principal.tenant_id, group)?;
            end_sessions_without_roles(tx, &principal.tenant_id, &members)?;
            Ok(RoleMapping {
                group: group.to_owned(),
                role: role_name(r).to_owned(),
            })
        })
    }

    /// `DELETE /v1/admin/identity/role-mappings/{group}` (tenant admin); the
    /// group's members lose the role at their next request.
    pub async fn remove_role_mapping(
        self: &Arc<Self>,
        principal: &Principal,
        group: &str,
    ) -> Result<(), ApiError> {
        let principal = principal.clone();
        let group = group.to_owned();
        self.blocking(move |e| e.remove_role_mapping_blocking(&principal, &group))
            .await
    }

    /// [`Self::remove_role_mapping`] on the caller's thread, which waits for the store.
    pub(crate) fn remove_role_mapping_blocking(
        &self,
        principal: &Principal,
        group: &str,
    ) -> Result<(), ApiError> {
        require_role(principal, &[Role::TenantAdmin])?;
        self.tx_in(&principal.tenant_id, |tx, now| {
            if !tx.remove_role_mapping(&principal.tenant_id, group)? {
                return Err(ApiError::not_found(
                    "role_mapping_not_found",
                    format!("group `{group}` maps to no role"),
                ));
            }
            ledger::append(
                tx,
                &principal.tenant_id,
                "identity.role_mapping_removed",
                json!({"group": group, "by": principal.key_id}),
                now,
            )?;
            let members = group_members_named(tx, &principal.tenant_id, group)?;
            end_sessions_without_roles(tx, &principal.tenant_id, &members)
        })
    }

    // ---- service accounts ----

    /// `POST /v1/admin/identity/service-accounts` (tenant admin): a named key for a
    /// workload, shown once.
    pub async fn create_service_account(
        self: &Arc<Self>,
        principal: &Principal,
        req: &ServiceAccountRequest,
    ) -> Result<CreatedServiceAccount, ApiError> {
        let principal = principal.clone();
        let req = req.clone();
        self.blocking(move |e| e.create_service_account_blocking(&principal, &req))
            .await
    }

    /// [`Self::create_service_account`] on the caller's thread, which waits for the store.
    pub(crate) fn create_service_account_blocking(
        &self,
        principal: &Principal,
        req: &ServiceAccountRequest,
    ) -> Result<CreatedServiceAccount, ApiError> {
        require_role(principal, &[Role::TenantAdmin])?;
        bounded("name", Some(&req.name))?;
        let name = req.name.trim();
        if name.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_field",
                "name must not be empty",
            ));
        }
        let role = match req.role.as_str() {
            "agent" => Role::Agent,
            "operator" => Role::Operator,
            other => {
                return Err(ApiError::unprocessable(
                    "invalid_field",
                    format!("role `{other}` is not agent or operator"),
                ));
            }
        };
        self.tx_in(&principal.tenant_id, |tx, now| {
            let taken = tx.service_account_named(&principal.tenant_id, name)?;
            if taken.is_some() {
                return Err(ApiError::conflict(
                    "service_account_exists",
                    format!("the tenant has a service account named `{name}`"),
                ));
            }
            let (key_id, api_key) = insert_key(
                tx,
                &principal.tenant_id,
                principal.environment,
                role,
                Some(name),
                now,
            )?;
            tx.name_key(&key_id, name)?;
            ledger::append(
                tx,
                &principal.tenant_id,
                "identity.service_account_created",
                json!({"key_id": key_id, "name": name, "role": role_name(role),
                       "by": principal.key_id}),
                now,
            )?;
            Ok(CreatedServiceAccount {
                account: ServiceAccount {
                    id: key_id,
                    name: name.to_owned(),
                    role: role_name(role).to_owned(),
                    created_at: rfc3339(now),
                },
                api_key,
            })
        })
    }

    /// `GET /v1/admin/identity/service-accounts` (tenant admin).
    pub async fn service_accounts(
        self: &Arc<Self>,
        principal: &Principal,
    ) -> Result<Vec<ServiceAccount>, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.service_accounts_blocking(&principal))
            .await
    }

    /// [`Self::service_accounts`] on the caller's thread, which waits for the store.
    pub(crate) fn service_accounts_blocking(
        &self,
        principal: &Principal,
    ) -> Result<Vec<ServiceAccount>, ApiError> {
        require_role(principal, &[Role::TenantAdmin])?;
        self.read(|tx, _| {
            Ok(tx
                .service_accounts(&principal.tenant_id)?
                .into_iter()
                .map(|(id, name, role, created)| ServiceAccount {
                    id,
                    name,
                    role,
                    created_at: rfc3339(created),
                })
                .collect())
        })
    }

    /// `DELETE /v1/admin/identity/service-accounts/{id}` (tenant admin): its key is
    /// refused from the next request on, on every replica, and its console
    /// sessions end.
    pub async fn revoke_service_account(
        self: &Arc<Self>,
        principal: &Principal,
        id: &str,
    ) -> Result<(), ApiError> {
        let principal = principal.clone();
        let id = id.to_owned();
        self.blocking(move |e| e.revoke_service_account_blocking(&principal, &id))
            .await
    }

    /// [`Self::revoke_service_account`] on the caller's thread, which waits for the store.
    pub(crate) fn revoke_service_account_blocking(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<(), ApiError> {
        require_role(principal, &[Role::TenantAdmin])?;
        self.tx_in(&principal.tenant_id, |tx, now| {
            let hash = tx.service_account_hash(&principal.tenant_id, id)?;
            let Some(hash) = hash else {
                return Err(ApiError::not_found(
                    "service_account_not_found",
                    format!("no service account `{id}` in this tenant"),
                ));
            };
            tx.revoke_key(&hash)?;
            ledger::append(
                tx,
                &principal.tenant_id,
                "identity.service_account_revoked",
                json!({"key_id": id, "by": principal.key_id}),
                now,
            )?;
            Ok(())
        })?;
        self.forget_principals();
        // The other replicas read their keys again too.
        self.store.keys_changed()
    }

    // ---- console sessions ----

    /// Opens a console session for `owner`; the session id to put in the cookie.
    pub(crate) fn open_session(
        &self,
        tenant: &str,
        owner: &SessionOwner,
        ttl_ms: i64,
    ) -> Result<(String, String), ApiError> {
        let sid = random_hex();
        let csrf = random_hex();
        let (key_hash, user) = match owner {
            SessionOwner::Key(h) => (Some(h.as_str()), None),
            SessionOwner::Person(u) => (None, Some(u.as_str())),
        };
        self.tx(|tx, now| {
            // Sessions past their time go as new ones come.
            Ok(tx.open_session(&NewSession {
                id_hash: &sha256_hex(sid.as_bytes()),
                tenant,
                key_hash,
                user,
                csrf: &csrf,
                created_ms: now,
                expires_ms: now + ttl_ms,
            })?)
        })?;
        Ok((sid, csrf))
    }

    /// The live session `sid` names: its principal as of now (the key checked again,
    /// a person's roles read again) and its CSRF token; `None` when it has ended,
    /// expired, or its key or person no longer signs in.
    pub(crate) fn session(&self, sid: &str) -> Result<Option<StoredSession>, ApiError> {
        let row = self.read(|tx, now| Ok(tx.session(&sha256_hex(sid.as_bytes()), now)?))?;
        let Some((tenant, key_hash, user, csrf)) = row else {
            return Ok(None);
        };
        let principal = match (key_hash, user) {
            (Some(hash), _) => match self.authenticate_hash(&hash) {
                Ok(p) => Some(p),
                Err(e) if e.status == 401 => None,
                Err(e) => return Err(e),
            },
            (None, Some(user)) => self.read(|tx, _| person_principal(tx, &tenant, &user))?,
            (None, None) => None,
        };
        Ok(principal
            .filter(|p| p.tenant_id == tenant)
            .map(|principal| StoredSession { principal, csrf }))
    }

    /// Ends the session `sid`.
    pub(crate) fn end_session(&self, sid: &str) -> Result<(), ApiError> {
        self.tx(|tx, _| Ok(tx.end_session(&sha256_hex(sid.as_bytes()))?))
    }
}

/// The SCIM ids of the members of the tenant's groups named `group`.
fn group_members_named(tx: &dyn Tx, tenant: &str, group: &str) -> Result<Vec<String>, ApiError> {
    Ok(tx.members_of_groups_named(tenant, group)?)
}

// ---- OpenID Connect ----

/// A tenant's OpenID Connect client for the console.
#[derive(Clone)]
pub(crate) struct OidcClientConfig {
    pub(crate) tenant_id: String,
    pub(crate) issuer: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
}

impl std::fmt::Debug for OidcClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcClientConfig")
            .field("tenant_id", &self.tenant_id)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// The tenant's OpenID Connect settings as shown (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OidcSettings {
    /// The issuer (its discovery document is `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// The console's client id at the issuer.
    pub client_id: String,
    /// The redirect URI to register at the issuer (`<gateway>/console/oidc/callback`).
    pub redirect_path: String,
    /// When it was set (RFC 3339).
    pub updated_at: String,
}

/// `PUT /v1/admin/identity/oidc`.
#[derive(Clone, Deserialize, schemars::JsonSchema)]
pub struct OidcRequest {
    /// The issuer URL.
    pub issuer: String,
    /// The client id.
    pub client_id: String,
    /// The client secret (kept wrapped under the root key; never shown again).
    pub client_secret: String,
}

impl std::fmt::Debug for OidcRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcRequest")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// A sign-in under way: what the callback checks.
#[derive(Clone)]
pub(crate) struct OidcLogin {
    pub(crate) tenant_id: String,
    pub(crate) nonce: String,
    pub(crate) verifier: String,
    pub(crate) return_to: String,
}

/// Who a verified ID token is in the tenant's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PersonMatch {
    /// Provisioned, active, with at least one role.
    Found(String),
    /// No SCIM user matches.
    NotProvisioned,
    /// Matched, but deactivated.
    Inactive,
    /// Matched and active, but no group of theirs maps to a role.
    NoRole,
}

/// How long a sign-in may take from the redirect to the callback.
const OIDC_LOGIN_TTL_MS: i64 = 10 * 60_000;

impl Engine {
    /// `PUT /v1/admin/identity/oidc` (tenant admin): the console's single sign-on
    /// client (the caller checks the issuer's discovery document first).
    pub async fn configure_oidc(
        self: &Arc<Self>,
        principal: &Principal,
        req: &OidcRequest,
    ) -> Result<OidcSettings, ApiError> {
        let principal = principal.clone();
        let req = req.clone();
        self.blocking(move |e| e.configure_oidc_blocking(&principal, &req))
            .await
    }

    /// [`Self::configure_oidc`] on the caller's thread, which waits for the store.
    pub(crate) fn configure_oidc_blocking(
        &self,
        principal: &Principal,
        req: &OidcRequest,
    ) -> Result<OidcSettings, ApiError> {
        require_role(principal, &[Role::TenantAdmin])?;
        bounded("client_id", Some(&req.client_id))?;
        if req.client_id.trim().is_empty() || req.client_secret.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_field",
                "client_id and client_secret must not be empty",
            ));
        }
        let issuer = req.issuer.trim_end_matches('/').to_owned();
        let wrapped = self
            .minter
            .wrap_client_secret(&principal.tenant_id, req.client_secret.as_bytes());
        self.tx_in(&principal.tenant_id, |tx, now| {
            tx.set_oidc_client(&principal.tenant_id, &issuer, &req.client_id, &wrapped, now)?;
            ledger::append(
                tx,
                &principal.tenant_id,
                "identity.oidc_configured",
                json!({"issuer": issuer, "client_id": req.client_id, "by": principal.key_id}),
                now,
            )?;
            Ok(OidcSettings {
                issuer: issuer.clone(),
                client_id: req.client_id.clone(),
                redirect_path: "/console/oidc/callback".to_owned(),
                updated_at: rfc3339(now),
            })
        })
    }

    /// `GET /v1/admin/identity/oidc` (tenant admin).
    pub async fn oidc_settings(
        self: &Arc<Self>,
        principal: &Principal,
    ) -> Result<OidcSettings, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.oidc_settings_blocking(&principal))
            .await
    }

    /// [`Self::oidc_settings`] on the caller's thread, which waits for the store.
    pub(crate) fn oidc_settings_blocking(
        &self,
        principal: &Principal,
    ) -> Result<OidcSettings, ApiError> {
        require_role(principal, &[Role::TenantAdmin])?;
        self.read(|tx, _| Ok(tx.oidc_client(&principal.tenant_id)?))?
            .map(|(issuer, client_id, _, updated)| OidcSettings {
                issuer,
                client_id,
                redirect_path: "/console/oidc/callback".to_owned(),
                updated_at: rfc3339(updated),
            })
            .ok_or_else(|| {
                ApiError::not_found("oidc_not_configured", "single sign-on is not configured")
            })
    }

    /// The tenants whose console offers single sign-on: `(id, name)`.
    pub(crate) fn oidc_tenants(&self) -> Result<Vec<(String, String)>, ApiError> {
        self.read(|tx, _| Ok(tx.oidc_tenants()?))
    }

    /// A tenant's OpenID Connect client, its secret unwrapped.
    pub(crate) fn oidc_client(&self, tenant: &str) -> Result<Option<OidcClientConfig>, ApiError> {
        let row = self.read(|tx, _| Ok(tx.oidc_client(tenant)?))?;
        row.map(|(issuer, client_id, wrapped, _)| {
            let secret = self.minter.wrap_client_secret(tenant, &wrapped);
            Ok(OidcClientConfig {
                tenant_id: tenant.to_owned(),
                issuer,
                client_id,
                client_secret: String::from_utf8(secret).map_err(|_| {
                    ApiError::unusable(
                        "the stored OpenID Connect client secret does not unwrap under this \
                         root key: configure single sign-on again",
                    )
                })?,
            })
        })
        .transpose()
    }

    /// Keeps a sign-in under way, by its `state`.
    pub(crate) fn begin_oidc_login(&self, state: &str, login: &OidcLogin) -> Result<(), ApiError> {
        self.tx(|tx, now| {
            Ok(tx.begin_oidc_login(
                &sha256_hex(state.as_bytes()),
                login,
                now,
                now + OIDC_LOGIN_TTL_MS,
            )?)
        })
    }

    /// The sign-in `state` names, taken: it cannot be used twice.
    pub(crate) fn take_oidc_login(&self, state: &str) -> Result<Option<OidcLogin>, ApiError> {
        let hash = sha256_hex(state.as_bytes());
        self.tx(|tx, now| Ok(tx.take_oidc_login(&hash, now)?))
    }

    /// The person a verified ID token names: by `externalId == sub`, else by
    /// `userName` equal to the verified email or the preferred username.
    pub(crate) fn find_person(
        &self,
        tenant: &str,
        sub: &str,
        names: &[String],
    ) -> Result<PersonMatch, ApiError> {
        self.read(|tx, _| {
            let mut user = tx.person_by_external_id(tenant, sub)?;
            for name in names {
                if user.is_some() {
                    break;
                }
                user = tx.person_by_user_name(tenant, name)?;
            }
            let Some(user) = user else {
                return Ok(PersonMatch::NotProvisioned);
            };
            if tx.person_active(tenant, &user)? != Some(true) {
                return Ok(PersonMatch::Inactive);
            }
            if person_roles(tx, tenant, &user)?.is_empty() {
                return Ok(PersonMatch::NoRole);
            }
            Ok(PersonMatch::Found(user))
        })
    }
}
