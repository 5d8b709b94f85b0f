//! Single sign-on for the console: the OpenID Connect authorization code flow with
//! PKCE (S256), `state` and `nonce`, against the tenant's identity provider.
//!
//! The provider's discovery document and keys are cached for an hour and fetched
//! again when an ID token names a key (`kid`) the cache does not have. An ID token
//! is accepted only with this provider as its issuer, this client in its audience,
//! unexpired, with the sign-in's nonce, and signed with an asymmetric algorithm of
//! the allow-list (never `none`, never a MAC). The person is the SCIM user whose
//! `externalId` is the token's `sub`, else whose `userName` is its verified email
//! or its `preferred_username`; someone not provisioned, deactivated, or without a
//! role is refused with a page that says which.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreTokenResponse,
};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, IssuerUrl,
    Nonce, OAuth2TokenResponse as _, PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl,
    ProviderMetadataWithLogout, RedirectUrl, Scope, SignatureVerificationError, TokenResponse as _,
};
use serde::Deserialize;

use super::{Shared, engine_error, esc, html, layout, page_error, redirect};
use crate::engine::identity::{OidcClientConfig, OidcLogin, PersonMatch, SessionOwner};

/// How long a provider's discovery document and keys are used before being
/// fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// How old the cached metadata must be before a token naming an unknown key
/// fetches it again.
const REFETCH_AFTER: Duration = Duration::from_secs(1);
/// One request to the provider.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Signature algorithms an ID token may use: asymmetric ones only.
const ALLOWED_ALGS: &[CoreJwsSigningAlgorithm] = &[
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// What the console knows of identity providers: their metadata, and the HTTP
/// client that fetches it.
pub(super) struct Providers {
    http: Http,
    metadata: Mutex<HashMap<String, (ProviderMetadataWithLogout, Instant)>>,
}

/// A transport failure talking to the provider.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Transport(String);

/// The HTTP client the OpenID Connect requests go through: rustls, a timeout, no
/// redirects followed (or why it could not be built: every request then fails).
struct Http(Result<reqwest::Client, String>);

impl<'c> openidconnect::AsyncHttpClient<'c> for Http {
    type Error = Transport;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<openidconnect::HttpResponse, Transport>> + Send + 'c>,
    >;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let client = self.0.as_ref().map_err(|e| Transport(e.clone()))?;
            let response = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| Transport(e.to_string()))?;
            let mut out = openidconnect::http::Response::builder().status(response.status());
            for (k, v) in response.headers() {
                out = out.header(k, v);
            }
            let bytes = response
                .bytes()
                .await
                .map_err(|e| Transport(e.to_string()))?;
            out.body(bytes.to_vec())
                .map_err(|e| Transport(e.to_string()))
        })
    }
}

impl Providers {
    pub(super) fn new() -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot make the HTTP client: {e}"));
        Self {
            http: Http(http),
            metadata: Mutex::new(HashMap::new()),
        }
    }

    /// The issuer's metadata, from the cache unless `fresh`.
    async fn metadata(
        &self,
        issuer: &str,
        fresh: bool,
    ) -> Result<ProviderMetadataWithLogout, String> {
        // Fresh or not, a copy younger than REFETCH_AFTER is used: tokens naming
        // keys the provider does not have do not make the gateway hammer it.
        let keep = if fresh { REFETCH_AFTER } else { METADATA_TTL };
        if let Ok(cache) = self.metadata.lock()
            && let Some((m, at)) = cache.get(issuer)
            && at.elapsed() < keep
        {
            return Ok(m.clone());
        }
        let url = IssuerUrl::new(issuer.to_owned())
            .map_err(|e| format!("the issuer `{issuer}` is not a URL: {e}"))?;
        let m = ProviderMetadataWithLogout::discover_async(url, &self.http)
            .await
            .map_err(|e| format!("cannot read the discovery document of {issuer}: {e}"))?;
        if let Ok(mut cache) = self.metadata.lock() {
            cache.insert(issuer.to_owned(), (m.clone(), Instant::now()));
        }
        Ok(m)
    }
}

/// Checks that `issuer` answers a discovery document and its keys, whose issuer is
/// itself (before it is configured).
pub(crate) async fn check_issuer(issuer: &str) -> Result<(), String> {
    Providers::new().metadata(issuer, true).await.map(drop)
}

/// `next` when it is a path of the console on this server, else `None`.
pub(super) fn console_path(next: &str) -> Option<&str> {
    let ok = next.starts_with("/console/")
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.contains("/../")
        && !next.chars().any(char::is_control);
    ok.then_some(next)
}

fn client(
    config: &OidcClientConfig,
    metadata: ProviderMetadataWithLogout,
    redirect: &str,
) -> Result<
    CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    >,
    String,
> {
    let redirect = RedirectUrl::new(redirect.to_owned()).map_err(|e| e.to_string())?;
    Ok(CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(config.client_id.clone()),
        Some(ClientSecret::new(config.client_secret.clone())),
    )
    .set_redirect_uri(redirect))
}

fn refused(title: &str, message: &str) -> Response {
    html(
        StatusCode::FORBIDDEN,
        layout(
            title,
            "",
            None,
            &format!(
                "<div class=\"login card\"><h1>{}</h1><div class=\"flash error\" role=\"alert\" id=\"sso-refused\">{}</div>\
                 <p><a href=\"/console/login\">Back to sign-in</a></p></div>",
                esc(title),
                esc(message)
            ),
        ),
    )
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct StartParams {
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    next: String,
}

/// `GET /console/login/oidc`: to the identity provider.
pub(super) async fn start(
    State(c): State<Shared>,
    headers: HeaderMap,
    Query(p): Query<StartParams>,
) -> Response {
    let tenants = match c.run(|e| e.oidc_tenants()).await {
        Ok(t) => t,
        Err(e) => return engine_error(&e),
    };
    let tenant = match tenants
        .iter()
        .find(|(id, name)| *id == p.tenant || *name == p.tenant)
        .or_else(|| (p.tenant.is_empty() && tenants.len() == 1).then(|| &tenants[0]))
    {
        Some((id, _)) => id.clone(),
        None => {
            return page_error(
                StatusCode::BAD_REQUEST,
                "Single sign-on is not set up for that tenant: choose it on the sign-in page.",
            );
        }
    };
    let config = match c.run(move |e| e.oidc_client(&tenant)).await {
        Ok(Some(config)) => config,
        Ok(None) => {
            return page_error(StatusCode::BAD_REQUEST, "Single sign-on is not set up.");
        }
        Err(e) => return engine_error(&e),
    };
    let metadata = match c.oidc.metadata(&config.issuer, false).await {
        Ok(m) => m,
        Err(why) => return page_error(StatusCode::BAD_GATEWAY, &why),
    };
    let redirect_uri = format!(
        "{}/console/oidc/callback",
        crate::server::public_base(&headers)
    );
    let client = match client(&config, metadata, &redirect_uri) {
        Ok(c) => c,
        Err(why) => return page_error(StatusCode::BAD_GATEWAY, &why),
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".to_owned()))
        .add_scope(Scope::new("profile".to_owned()))
        .set_pkce_challenge(challenge)
        .url();
    let login = OidcLogin {
        tenant_id: config.tenant_id.clone(),
        nonce: nonce.secret().clone(),
        verifier: verifier.secret().clone(),
        return_to: console_path(&p.next).unwrap_or("").to_owned(),
    };
    let state = state.secret().clone();
    if let Err(e) = c.run(move |e| e.begin_oidc_login(&state, &login)).await {
        return engine_error(&e);
    }
    redirect(url.as_str())
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct CallbackParams {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Verifies the ID token of `token`; `Err` says why it is refused.
async fn verified_claims(
    c: &Shared,
    config: &OidcClientConfig,
    redirect_uri: &str,
    token: &CoreTokenResponse,
    nonce: &str,
) -> Result<(String, Vec<String>), String> {
    let id_token = token
        .id_token()
        .ok_or("the identity provider sent no ID token")?;
    let nonce = Nonce::new(nonce.to_owned());
    for fresh in [false, true] {
        let metadata = c.oidc.metadata(&config.issuer, fresh).await?;
        let client = client(config, metadata, redirect_uri)?;
        let verifier = client
            .id_token_verifier()
            .set_allowed_algs(ALLOWED_ALGS.iter().cloned());
        match id_token.claims(&verifier, &nonce) {
            Ok(claims) => {
                let mut names = Vec::new();
                if let (Some(email), Some(true)) = (claims.email(), claims.email_verified()) {
                    names.push(email.as_str().to_owned());
                }
                if let Some(u) = claims.preferred_username() {
                    names.push(u.as_str().to_owned());
                }
                let sub = claims.subject().clone();
                // A provider that keeps the ID token to `sub` (as the core spec has
                // it for the code flow) tells the rest at its UserInfo endpoint, for
                // the same subject.
                if names.is_empty()
                    && let Ok(request) =
                        client.user_info(token.access_token().clone(), Some(sub.clone()))
                {
                    let info: openidconnect::core::CoreUserInfoClaims = request
                        .request_async(&c.oidc.http)
                        .await
                        .map_err(|e| format!("the UserInfo answer was refused: {e}"))?;
                    if let (Some(email), Some(true)) = (info.email(), info.email_verified()) {
                        names.push(email.as_str().to_owned());
                    }
                    if let Some(u) = info.preferred_username() {
                        names.push(u.as_str().to_owned());
                    }
                }
                return Ok((sub.as_str().to_owned(), names));
            }
            // A key the cached set does not have: the provider may have rotated.
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) if !fresh => {}
            Err(e) => return Err(format!("the ID token was refused: {e}")),
        }
    }
    Err("the ID token was refused: no key of the provider matches it".to_owned())
}

/// `GET /console/oidc/callback`: the provider's answer.
pub(super) async fn callback(
    State(c): State<Shared>,
    headers: HeaderMap,
    Query(p): Query<CallbackParams>,
) -> Response {
    if !p.error.is_empty() {
        return refused(
            "Sign-in refused",
            &format!(
                "The identity provider did not sign you in: {} {}",
                p.error, p.error_description
            ),
        );
    }
    let state = p.state.clone();
    let login = match c.run(move |e| e.take_oidc_login(&state)).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            return refused(
                "Sign-in expired",
                "This sign-in is unknown, used already or expired: start again from the sign-in page.",
            );
        }
        Err(e) => return engine_error(&e),
    };
    let tenant = login.tenant_id.clone();
    let config = match c.run(move |e| e.oidc_client(&tenant)).await {
        Ok(Some(config)) => config,
        Ok(None) => return refused("Sign-in refused", "Single sign-on is no longer set up."),
        Err(e) => return engine_error(&e),
    };
    let redirect_uri = format!(
        "{}/console/oidc/callback",
        crate::server::public_base(&headers)
    );
    let metadata = match c.oidc.metadata(&config.issuer, false).await {
        Ok(m) => m,
        Err(why) => return page_error(StatusCode::BAD_GATEWAY, &why),
    };
    let oidc_client = match client(&config, metadata, &redirect_uri) {
        Ok(cl) => cl,
        Err(why) => return page_error(StatusCode::BAD_GATEWAY, &why),
    };
    let exchange = match oidc_client.exchange_code(AuthorizationCode::new(p.code.clone())) {
        Ok(r) => r.set_pkce_verifier(PkceCodeVerifier::new(login.verifier.clone())),
        Err(e) => return page_error(StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    let token = match exchange.request_async(&c.oidc.http).await {
        Ok(t) => t,
        Err(e) => {
            return refused(
                "Sign-in refused",
                &format!("The identity provider did not exchange the code: {e}"),
            );
        }
    };
    let (sub, names) = match verified_claims(&c, &config, &redirect_uri, &token, &login.nonce).await
    {
        Ok(found) => found,
        Err(why) => return refused("Sign-in refused", &why),
    };
    let tenant = config.tenant_id.clone();
    let lookup = (sub.clone(), names.clone());
    let person = match c
        .run(move |e| e.find_person(&tenant, &lookup.0, &lookup.1))
        .await
    {
        Ok(p) => p,
        Err(e) => return engine_error(&e),
    };
    let who = names.first().cloned().unwrap_or(sub);
    let user = match person {
        PersonMatch::Found(user) => user,
        PersonMatch::NotProvisioned => {
            return refused(
                "Not provisioned",
                &format!(
                    "{who} signed in at the identity provider but is not provisioned for this \
                     tenant: ask your administrator to assign you the Paybond application."
                ),
            );
        }
        PersonMatch::Inactive => {
            return refused(
                "Account deactivated",
                &format!("{who} is deactivated in this tenant's directory."),
            );
        }
        PersonMatch::NoRole => {
            return refused(
                "No role",
                &format!(
                    "{who} is provisioned but no group of theirs maps to a role (tenant_admin, \
                     operator or analyst): ask your administrator."
                ),
            );
        }
    };
    let tenant = config.tenant_id.clone();
    let owner = SessionOwner::Person(user);
    let (sid, _) = match c
        .run(move |e| e.open_session(&tenant, &owner, super::SESSION_TTL_MS))
        .await
    {
        Ok(s) => s,
        Err(e) => return engine_error(&e),
    };
    let to = if login.return_to.is_empty() {
        "/console/overview".to_owned()
    } else {
        login.return_to
    };
    // A page that goes on from this site rather than a redirect: the browser
    // arrived from the provider, and a SameSite=Strict cookie set in a redirect
    // chain that began on another site is not sent along it.
    let mut r = html(StatusCode::OK, going_on(&to, "Signed in"));
    if let Ok(v) = HeaderValue::from_str(&super::session_cookie(&sid)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A page saying `what`, going on to `to` at once (and a link, without refresh).
pub(super) fn going_on(to: &str, what: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"0;url={to}\">\
         <title>{what} · Paybond console</title>\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css\"></head>\
         <body><main id=\"main\"><p>{what}. <a id=\"continue\" href=\"{to}\">Continue</a></p></main></body></html>",
        to = esc(to),
        what = esc(what)
    )
}

/// Where signing out of a person's session goes: the provider's end-session
/// endpoint when it has one (back to the sign-in page after), else `None`.
pub(super) async fn end_session_url(
    c: &Shared,
    headers: &HeaderMap,
    tenant: &str,
) -> Option<String> {
    let tenant = tenant.to_owned();
    let config = c.run(move |e| e.oidc_client(&tenant)).await.ok()??;
    let metadata = c.oidc.metadata(&config.issuer, false).await.ok()?;
    let end = metadata
        .additional_metadata()
        .end_session_endpoint
        .clone()?;
    let back = PostLogoutRedirectUrl::new(format!(
        "{}/console/login",
        crate::server::public_base(headers)
    ))
    .ok()?;
    Some(
        openidconnect::LogoutRequest::from(end)
            .set_client_id(ClientId::new(config.client_id))
            .set_post_logout_redirect_uri(back)
            .http_get_url()
            .to_string(),
    )
}
