//! `paybond identity …` (tenant admin key): SCIM tokens, IdP group to role
//! mappings, service accounts, and the console's OpenID Connect sign-in.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::ops::{Target, send_json, target_with};
use crate::output::{self, Global};
use crate::{Outcome, usage_error};

#[derive(Debug, Subcommand)]
pub(crate) enum IdentityCommand {
    /// Bearer tokens for the identity provider's SCIM connector (`/scim/v2`).
    #[command(subcommand, name = "scim-token")]
    ScimToken(ScimTokenCommand),
    /// Which IdP group grants which tenant role (tenant_admin, operator, analyst).
    #[command(subcommand, name = "role-mappings")]
    RoleMappings(RoleMappingsCommand),
    /// Named API keys for workloads: agents, automation that approves.
    #[command(subcommand, name = "service-accounts")]
    ServiceAccounts(ServiceAccountsCommand),
    /// Single sign-on for the console (OpenID Connect).
    #[command(subcommand)]
    Oidc(OidcCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum OidcCommand {
    /// Set the console's OpenID Connect client; register
    /// the gateway's /console/oidc/callback as its redirect URI at the issuer.
    Configure {
        /// The issuer URL (its discovery document is checked first).
        #[arg(long)]
        issuer: String,
        /// The client id at the issuer.
        #[arg(long)]
        client_id: String,
        /// A file holding the client secret (kept out of the shell's history).
        #[arg(long)]
        client_secret_file: std::path::PathBuf,
    },
    /// The settings (never the secret).
    Show,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ScimTokenCommand {
    /// A new token (printed once; the gateway keeps only its digest).
    Create {
        /// What it is for, e.g. `okta`.
        #[arg(long, default_value = "scim")]
        name: String,
    },
    /// The tenant's tokens (never the tokens themselves).
    List,
    /// Refuse a token from now on.
    Revoke {
        /// The token's id (from `list`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RoleMappingsCommand {
    /// Every mapping.
    List,
    /// Members of GROUP (its SCIM displayName) get ROLE.
    Set {
        /// The group's displayName, as the IdP provisions it.
        group: String,
        /// tenant_admin, operator or analyst.
        role: String,
    },
    /// GROUP grants no role any more.
    Remove {
        /// The group's displayName.
        group: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ServiceAccountsCommand {
    /// A new service account and its key (printed once).
    Create {
        /// Its name, unique in the tenant (recorded as the agent or approver).
        name: String,
        /// agent or operator.
        #[arg(long)]
        role: String,
    },
    /// The tenant's service accounts.
    List,
    /// Revoke a service account's key at once.
    Revoke {
        /// Its id (from `list` or `create`).
        id: String,
    },
}

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const ENCODED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path segment, percent-encoded.
fn segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, ENCODED).to_string()
}

fn admin(global: &Global) -> Result<Target, Outcome> {
    target_with(global, "PAYBOND_ADMIN_API_KEY", "a tenant admin key")
}

pub(crate) fn run(cmd: IdentityCommand, global: &Global) -> Outcome {
    let t = match admin(global) {
        Ok(t) => t,
        Err(o) => return o,
    };
    let (method, path, body): (reqwest::Method, String, Option<Value>) = match &cmd {
        IdentityCommand::Oidc(OidcCommand::Configure {
            issuer,
            client_id,
            client_secret_file,
        }) => {
            let secret = match std::fs::read_to_string(client_secret_file) {
                Ok(s) => s.trim().to_owned(),
                Err(e) => {
                    return crate::unreadable(format!(
                        "cannot read --client-secret-file {}: {e}",
                        client_secret_file.display()
                    ));
                }
            };
            if secret.is_empty() {
                return usage_error(format!(
                    "--client-secret-file {} is empty",
                    client_secret_file.display()
                ));
            }
            (
                reqwest::Method::PUT,
                "/v1/admin/identity/oidc".to_owned(),
                Some(json!({"issuer": issuer, "client_id": client_id, "client_secret": secret})),
            )
        }
        IdentityCommand::Oidc(OidcCommand::Show) => (
            reqwest::Method::GET,
            "/v1/admin/identity/oidc".to_owned(),
            None,
        ),
        IdentityCommand::ScimToken(ScimTokenCommand::Create { name }) => (
            reqwest::Method::POST,
            "/v1/admin/identity/scim-tokens".to_owned(),
            Some(json!({"name": name})),
        ),
        IdentityCommand::ScimToken(ScimTokenCommand::List) => (
            reqwest::Method::GET,
            "/v1/admin/identity/scim-tokens".to_owned(),
            None,
        ),
        IdentityCommand::ScimToken(ScimTokenCommand::Revoke { id }) => (
            reqwest::Method::DELETE,
            format!("/v1/admin/identity/scim-tokens/{}", segment(id)),
            None,
        ),
        IdentityCommand::RoleMappings(RoleMappingsCommand::List) => (
            reqwest::Method::GET,
            "/v1/admin/identity/role-mappings".to_owned(),
            None,
        ),
        IdentityCommand::RoleMappings(RoleMappingsCommand::Set { group, role }) => (
            reqwest::Method::PUT,
            format!("/v1/admin/identity/role-mappings/{}", segment(group)),
            Some(json!({"role": role})),
        ),
        IdentityCommand::RoleMappings(RoleMappingsCommand::Remove { group }) => (
            reqwest::Method::DELETE,
            format!("/v1/admin/identity/role-mappings/{}", segment(group)),
            None,
        ),
        IdentityCommand::ServiceAccounts(ServiceAccountsCommand::Create { name, role }) => {
            if !matches!(role.as_str(), "agent" | "operator") {
                return usage_error(format!("--role `{role}`: expected agent or operator"));
            }
            (
                reqwest::Method::POST,
                "/v1/admin/identity/service-accounts".to_owned(),
                Some(json!({"name": name, "role": role})),
            )
        }
        IdentityCommand::ServiceAccounts(ServiceAccountsCommand::List) => (
            reqwest::Method::GET,
            "/v1/admin/identity/service-accounts".to_owned(),
            None,
        ),
        IdentityCommand::ServiceAccounts(ServiceAccountsCommand::Revoke { id }) => (
            reqwest::Method::DELETE,
            format!("/v1/admin/identity/service-accounts/{}", segment(id)),
            None,
        ),
    };
    let answer = match send_json(&t, method, &path, body.as_ref()) {
        Ok(a) => a,
        Err(o) => return o,
    };
    if output::success_json(answer.clone(), &[]) {
        return Outcome::Success;
    }
    print_text(&cmd, &answer);
    Outcome::Success
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("-")
}

fn print_text(cmd: &IdentityCommand, a: &Value) {
    let rows = a.as_array().cloned().unwrap_or_default();
    match cmd {
        IdentityCommand::Oidc(_) => {
            println!("issuer       {}", text(a, "issuer"));
            println!("client id    {}", text(a, "client_id"));
            println!("redirect URI <gateway>{}", text(a, "redirect_path"));
            println!("updated      {}", text(a, "updated_at"));
        }
        IdentityCommand::ScimToken(ScimTokenCommand::Create { .. }) => {
            println!("SCIM token {} ({}):", text(a, "id"), text(a, "name"));
            println!("{}", text(a, "token"));
            println!(
                "shown once: give it to the identity provider's SCIM connector as its bearer \
                 token, with the base URL <gateway>/scim/v2"
            );
        }
        IdentityCommand::ScimToken(ScimTokenCommand::List) => {
            if rows.is_empty() {
                println!("no SCIM tokens");
            }
            for r in &rows {
                println!(
                    "{}  {:<16} created {}{}",
                    text(r, "id"),
                    text(r, "name"),
                    text(r, "created_at"),
                    r["revoked_at"]
                        .as_str()
                        .map(|t| format!(", revoked {t}"))
                        .unwrap_or_default()
                );
            }
        }
        IdentityCommand::ScimToken(ScimTokenCommand::Revoke { .. }) => {
            println!("SCIM token {} revoked", text(a, "id"));
        }
        IdentityCommand::RoleMappings(RoleMappingsCommand::List) => {
            if rows.is_empty() {
                println!("no role mappings");
            }
            for r in &rows {
                println!("{:<32} {}", text(r, "group"), text(r, "role"));
            }
        }
        IdentityCommand::RoleMappings(RoleMappingsCommand::Set { .. }) => {
            println!("{} -> {}", text(a, "group"), text(a, "role"));
        }
        IdentityCommand::RoleMappings(RoleMappingsCommand::Remove { group }) => {
            println!("{group} maps to no role now");
        }
        IdentityCommand::ServiceAccounts(ServiceAccountsCommand::Create { .. }) => {
            println!(
                "service account {} ({}, {}):",
                text(a, "name"),
                text(a, "id"),
                text(a, "role")
            );
            println!("{}", text(a, "api_key"));
            println!("shown once: keep it in your secret manager");
        }
        IdentityCommand::ServiceAccounts(ServiceAccountsCommand::List) => {
            if rows.is_empty() {
                println!("no service accounts");
            }
            for r in &rows {
                println!(
                    "{}  {:<24} {:<9} created {}",
                    text(r, "id"),
                    text(r, "name"),
                    text(r, "role"),
                    text(r, "created_at")
                );
            }
        }
        IdentityCommand::ServiceAccounts(ServiceAccountsCommand::Revoke { id }) => {
            println!("service account {id} revoked");
        }
    }
}
