//! The operator console at `/console`: the overview of spend, decisions, caps and
//! approvals, decision search with a page per decision, what-if replay (see
//! [`views`]), the approval queue (live, over server-sent events, and from the
//! keyboard), intents with their budget and decisions (each with its proof trace),
//! the ledger with a verify button, and the effective policy. Server-rendered HTML
//! with SVG charts ([`charts`]) and one small script; the assets are compiled into
//! the binary and nothing is loaded from elsewhere.
//!
//! Sign-in takes an API key and keeps it on the server: the browser holds only a
//! random session id, in an `HttpOnly`, `SameSite=Strict` cookie scoped to
//! `/console`. Every state change is a POST carrying the session's CSRF token (and,
//! when the browser sends one, an `Origin` of this server, never `null`). The engine
//! decides what a key may do, and the pages show only what it may: an agent or
//! tenant admin key sees the queue without the Approve and Deny buttons.
//! Sessions live in this process (8 hours): a replica of a fleet has its own.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use paybond_middleware_core::wire::{ApprovalState, ApprovalStatus, Principal, Role};
use serde::Deserialize;
use uuid::Uuid;

use crate::engine::Engine;
use crate::engine::identity::SessionOwner;
use crate::engine::lifecycle::ApprovalQuery;
use crate::error::ApiError;
use crate::tokens::sha256_hex;

mod charts;
pub(crate) mod oidc;
mod views;

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");
const COOKIE: &str = "paybond_console";
const SESSION_TTL_MS: i64 = 8 * 3_600_000;
/// What the live queue remembers once it has told the page the session ended.
const SIGNED_OUT: &str = "\u{0}signed_out";
/// How often the live queue looks for changes.
const LIVE_EVERY: Duration = Duration::from_millis(500);

struct Console {
    engine: Arc<Engine>,
    oidc: oidc::Providers,
}

type Shared = Arc<Console>;

/// The console's routes, to nest under `/console`.
pub(crate) fn router(engine: Arc<Engine>) -> Router {
    let state = Arc::new(Console {
        engine,
        oidc: oidc::Providers::new(),
    });
    Router::new()
        .route("/", get(home))
        .route("/overview", get(views::overview))
        .route("/decisions", get(views::decisions))
        .route("/decisions/{id}", get(views::decision))
        .route("/ledger/{seq}", get(views::ledger_entry))
        .route("/what-if", get(views::what_if_page).post(views::what_if))
        .route("/login", get(login_page).post(login))
        .route("/login/oidc", get(oidc::start))
        .route("/oidc/callback", get(oidc::callback))
        .route("/logout", post(logout))
        .route("/approvals", get(approvals))
        .route("/approvals/{id}/{action}", post(decide))
        .route("/events", get(events))
        .route("/intents", get(intents))
        .route("/intents/{id}", get(intent))
        .route("/ledger", get(ledger))
        .route("/ledger/verify", post(verify_ledger))
        .route("/policy", get(policy))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .fallback(|| async { page_error(StatusCode::NOT_FOUND, "No such console page.") })
        .layer(axum::middleware::from_fn(remember_path))
        .with_state(state)
}

/// A page asked for without a session is sent to sign in with the page it asked
/// for as `next`, where sign-in returns it.
async fn remember_path(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    // The console is nested at `/console`: its requests arrive without it.
    let asked = (request.method() == axum::http::Method::GET)
        .then(|| {
            request
                .uri()
                .path_and_query()
                .map(|p| format!("/console{p}"))
        })
        .flatten();
    let mut response = next.run(request).await;
    let to_login = response.status() == StatusCode::SEE_OTHER
        && response
            .headers()
            .get(header::LOCATION)
            .map(HeaderValue::as_bytes)
            == Some(b"/console/login".as_slice());
    if to_login
        && let Some(asked) = asked
            .as_deref()
            .filter(|a| *a != "/console/")
            .and_then(oidc::console_path)
        && let Ok(v) = HeaderValue::from_str(&format!("/console/login?next={}", url_encode(asked)))
    {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An amount as people read it, in `currency` (an approval names none: `usd`, the
/// layer's default).
fn money(cents: u64, currency: &str) -> String {
    paybond_middleware_core::format_money(cents, currency)
}

/// Headers every console answer carries.
fn secured(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: under it a browser sends `Origin: null` on the console's
        // own form POSTs, which [`same_origin`] refuses. Console URLs hold no secret.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn html(status: StatusCode, body: String) -> Response {
    secured(
        (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            body,
        )
            .into_response(),
    )
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secured(r)
}

/// A whole page: the navigation, who is signed in, the sign-out button.
fn layout(title: &str, current: &str, who: Option<(&Principal, &str)>, body: &str) -> String {
    let nav = match who {
        None => String::new(),
        Some((p, csrf)) => {
            let link = |href: &str, name: &str| {
                let here = if name == current {
                    " aria-current=\"page\""
                } else {
                    ""
                };
                format!("<a href=\"/console/{href}\"{here}>{name}</a>")
            };
            // Agent keys see the queue, intents, ledger and policy only.
            let reads_spend = crate::engine::reads_tenant(p);
            let spend = |a: String| if reads_spend { a } else { String::new() };
            // A person signed in through single sign-on is named; a key by its role.
            let who = if p.key_id.starts_with("scim:") {
                format!(
                    "<span class=\"mono\" id=\"who-person\">{}</span> ({})",
                    esc(&p.subject),
                    esc(role(p))
                )
            } else {
                format!("{} key", esc(role(p)))
            };
            format!(
                "<nav aria-label=\"Console\">{}{}{}{}{}{}{}</nav>\
                 <span class=\"who\">{who} of <span class=\"mono\">{}</span></span>\
                 <form class=\"inline\" method=\"post\" action=\"/console/logout\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button type=\"submit\">Sign out</button></form>",
                spend(link("overview", "Overview")),
                link("approvals", "Approvals"),
                spend(link("decisions", "Decisions")),
                link("intents", "Intents"),
                link("ledger", "Ledger"),
                link("policy", "Policy"),
                spend(link("what-if", "What if")),
                esc(&p.tenant_id),
                esc(csrf)
            )
        }
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Paybond console</title>\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css\"></head>\
         <body><header><span class=\"brand\">Paybond console</span>{nav}</header>\
         <main id=\"main\">{body}</main>\
         <script src=\"/console/assets/console.js\" defer></script></body></html>",
        esc(title)
    )
}

/// Where a signed-in key lands: the overview for those who read spend, the
/// approval queue for agent keys.
fn landing(p: &Principal) -> &'static str {
    if crate::engine::reads_tenant(p) {
        "/console/overview"
    } else {
        "/console/approvals"
    }
}

fn role(p: &Principal) -> &'static str {
    match p.service_account_role {
        Role::Operator => "operator",
        Role::TenantAdmin => "admin",
        Role::Analyst => "analyst",
        Role::Agent => "agent",
        _ => "unknown",
    }
}

fn page_error(status: StatusCode, message: &str) -> Response {
    html(
        status,
        layout(
            "Error",
            "",
            None,
            &format!(
                "<div class=\"flash error\" role=\"alert\">{}</div>\
                 <p><a href=\"/console/approvals\">Back to the console</a></p>",
                esc(message)
            ),
        ),
    )
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Who is signed in: the session's principal (the key authenticated again, so a
/// revoked key ends the session) and its CSRF token.
struct Signed {
    principal: Principal,
    csrf: String,
}

impl Console {
    async fn signed(&self, headers: &HeaderMap) -> Option<Signed> {
        let sid = cookie_value(headers)?;
        let session = self.run(move |e| e.session(&sid)).await.ok()??;
        Some(Signed {
            principal: session.principal,
            csrf: session.csrf,
        })
    }

    /// Whether the session `sid` is still signed in (a live stream ends when not).
    async fn alive(&self, sid: &str) -> bool {
        let sid = sid.to_owned();
        matches!(self.run(move |e| e.session(&sid)).await, Ok(Some(_)))
    }

    /// The session of a form POST: signed in (else the redirect to the sign-in
    /// page), sent from this site with the session's CSRF token (else a 403 page).
    async fn signed_post(&self, headers: &HeaderMap, csrf: &str) -> Result<Signed, Response> {
        let signed = self
            .signed(headers)
            .await
            .ok_or_else(|| redirect("/console/login"))?;
        check_post(headers, &signed, csrf).map_err(|why| page_error(StatusCode::FORBIDDEN, why))?;
        Ok(signed)
    }

    /// Runs an engine call on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(ApiError::internal)?
    }
}

fn engine_error(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    page_error(status, &format!("{} ({})", e.message, e.code))
}

/// Whether a POST comes from this server's own pages: its `Origin`, when the
/// browser sent one, is this server, and `Sec-Fetch-Site`, when sent, says the same.
/// `Origin: null` is refused: a sandboxed frame or a `data:` page on another site
/// sends it (login CSRF). The console's pages send their real origin: their
/// `Referrer-Policy` is `same-origin`, under which a browser names the origin of a
/// same-origin POST.
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_ok = match headers.get(header::ORIGIN).map(HeaderValue::to_str) {
        None => true,
        Some(Ok(origin)) => host
            .is_some_and(|h| origin == format!("http://{h}") || origin == format!("https://{h}")),
        Some(Err(_)) => false,
    };
    let site_ok = match headers.get("sec-fetch-site").map(HeaderValue::to_str) {
        None | Some(Ok("same-origin")) => true,
        Some(_) => false,
    };
    origin_ok && site_ok
}

/// A POST's CSRF token must be the session's, and its `Origin`, when sent, this server.
/// `Err` is why the POST is refused (a 403).
fn check_post(headers: &HeaderMap, signed: &Signed, csrf: &str) -> Result<(), &'static str> {
    if !same_origin(headers) {
        return Err("Refused: the request came from another site.");
    }
    if csrf.is_empty() || csrf != signed.csrf {
        return Err(
            "Refused: the form's CSRF token is missing or stale; reload the page and try again.",
        );
    }
    Ok(())
}

async fn home(State(c): State<Shared>, headers: HeaderMap) -> Response {
    match c.signed(&headers).await {
        Some(signed) => redirect(landing(&signed.principal)),
        None => redirect("/console/login"),
    }
}

/// The session cookie for `sid`.
fn session_cookie(sid: &str) -> String {
    format!(
        "{COOKIE}={sid}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL_MS / 1000
    )
}

/// The sign-in page: an API key, and single sign-on for each tenant that has it
/// (`tenants`: id and name).
fn login_form(error: Option<&str>, tenants: &[(String, String)], next: &str) -> String {
    let flash = error.map_or_else(String::new, |e| {
        format!("<div class=\"flash error\" role=\"alert\">{}</div>", esc(e))
    });
    let next_query = oidc::console_path(next)
        .map(|n| format!("next={}", url_encode(n)))
        .unwrap_or_default();
    let next_field = esc(oidc::console_path(next).unwrap_or(""));
    let sso = match tenants {
        [] => String::new(),
        [_] => format!(
            "<p><a class=\"button primary\" id=\"sso\" href=\"/console/login/oidc{}\">Sign in with SSO</a></p>\
             <p class=\"muted\">Or sign in with an API key:</p>",
            if next_query.is_empty() {
                String::new()
            } else {
                format!("?{next_query}")
            }
        ),
        many => {
            let links: String = many
                .iter()
                .map(|(id, name)| {
                    format!(
                        "<li><a href=\"/console/login/oidc?tenant={}{}\">Sign in to {} with SSO</a></li>",
                        url_encode(id),
                        if next_query.is_empty() { String::new() } else { format!("&amp;{next_query}") },
                        esc(name)
                    )
                })
                .collect();
            format!("<ul id=\"sso\">{links}</ul><p class=\"muted\">Or sign in with an API key:</p>")
        }
    };
    layout(
        "Sign in",
        "",
        None,
        &format!(
            "<div class=\"login card\"><h1>Sign in</h1>{flash}{sso}\
             <form method=\"post\" action=\"/console/login\">\
             <input type=\"hidden\" name=\"next\" value=\"{next_field}\">\
             <label for=\"api_key\">API key (operator, admin or agent)</label>\
             <input id=\"api_key\" name=\"api_key\" type=\"password\" autocomplete=\"off\" \
              required aria-describedby=\"key-help\" autofocus>\
             <p id=\"key-help\" class=\"muted\">The key stays on the server: the browser gets \
              a session cookie only. <code>paybond dev loop --offline</code> writes the keys \
              to <code>.env.local</code>.</p>\
             <button class=\"primary\" type=\"submit\">Sign in</button></form></div>"
        ),
    )
}

#[derive(Debug, Default, Deserialize)]
struct LoginParams {
    /// The console page asked for before signing in.
    #[serde(default)]
    next: String,
}

async fn login_page(
    State(c): State<Shared>,
    headers: HeaderMap,
    axum::extract::Query(p): axum::extract::Query<LoginParams>,
) -> Response {
    if let Some(signed) = c.signed(&headers).await {
        return redirect(landing(&signed.principal));
    }
    let tenants = c.run(|e| e.oidc_tenants()).await.unwrap_or_default();
    html(StatusCode::OK, login_form(None, &tenants, &p.next))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    api_key: String,
    /// The console page asked for before signing in.
    #[serde(default)]
    next: String,
}

async fn login(State(c): State<Shared>, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    if !same_origin(&headers) {
        return page_error(
            StatusCode::FORBIDDEN,
            "Refused: the request came from another site.",
        );
    }
    let key = f.api_key.trim().to_owned();
    let checked = key.clone();
    let principal = c.run(move |e| e.authenticate_blocking(&checked)).await;
    let Ok(principal) = principal else {
        let tenants = c.run(|e| e.oidc_tenants()).await.unwrap_or_default();
        return html(
            StatusCode::UNAUTHORIZED,
            login_form(
                Some("That key is not a key of this gateway."),
                &tenants,
                &f.next,
            ),
        );
    };
    let owner = SessionOwner::Key(sha256_hex(key.as_bytes()));
    let tenant = principal.tenant_id.clone();
    let (sid, _) = match c
        .run(move |e| e.open_session(&tenant, &owner, SESSION_TTL_MS))
        .await
    {
        Ok(s) => s,
        Err(e) => return engine_error(&e),
    };
    let mut r = redirect(oidc::console_path(&f.next).unwrap_or(landing(&principal)));
    if let Ok(v) = HeaderValue::from_str(&session_cookie(&sid)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(c): State<Shared>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let signed = match c.signed_post(&headers, &f.csrf).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    if let Some(sid) = cookie_value(&headers)
        && let Err(e) = c.run(move |e| e.end_session(&sid)).await
    {
        return engine_error(&e);
    }
    // A person signed in through single sign-on also signs out at the provider
    // when it offers that (RP-initiated logout), and comes back to sign-in.
    let to = if signed.principal.key_id.starts_with("scim:") {
        oidc::end_session_url(&c, &headers, &signed.principal.tenant_id).await
    } else {
        None
    };
    // To the provider by a page rather than a redirect: the console's CSP allows
    // forms to go to this site only, and a redirect answering a form is held to it.
    let mut r = match &to {
        Some(url) => html(StatusCode::OK, oidc::going_on(url, "Signed out here")),
        None => redirect("/console/login"),
    };
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "paybond_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

fn age(created: Option<&str>, now_ms: i64) -> String {
    let Some(ms) = created
        .and_then(|c| c.parse::<jiff::Timestamp>().ok())
        .map(jiff::Timestamp::as_millisecond)
    else {
        return "-".to_owned();
    };
    let secs = (now_ms - ms).max(0) / 1000;
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        _ => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
    }
}

/// The rows of the pending queue (what the live updates replace).
/// `thresholds` are the policy's approval thresholds by tool: approving more than
/// ten times its tool's asks the operator to confirm.
fn approval_rows(
    list: &[ApprovalStatus],
    can_decide: bool,
    csrf: &str,
    now_ms: i64,
    thresholds: &HashMap<String, u64>,
) -> String {
    if list.is_empty() {
        return "<tr><td colspan=\"9\" class=\"muted\">No request is waiting for approval.</td></tr>"
            .to_owned();
    }
    let mut out = String::new();
    for a in list {
        let id = a.approval_request_id;
        let amount = a.requested_spend_cents.unwrap_or(0);
        let confirm = a
            .tool
            .as_deref()
            .and_then(|t| thresholds.get(t))
            .filter(|t| amount > t.saturating_mul(10))
            .map(|t| {
                format!(
                    " data-confirm=\"Approve {}? That is more than ten times the approval threshold of {} ({}).\"",
                    esc(&money(amount, "usd")),
                    esc(a.tool.as_deref().unwrap_or("")),
                    esc(&money(*t, "usd"))
                )
            })
            .unwrap_or_default();
        let actions = if can_decide {
            format!(
                "<form class=\"inline\" method=\"post\" action=\"/console/approvals/{id}/approve\"{confirm}>\
                 <input type=\"hidden\" name=\"csrf\" value=\"{c}\">\
                 <button class=\"primary\" type=\"submit\" aria-label=\"Approve request {id}\">Approve</button></form> \
                 <form class=\"inline\" method=\"post\" action=\"/console/approvals/{id}/deny\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{c}\">\
                 <button class=\"danger\" type=\"submit\" aria-label=\"Deny request {id}\">Deny</button></form>",
                c = esc(csrf)
            )
        } else {
            "<span class=\"muted\">read-only</span>".to_owned()
        };
        out.push_str(&format!(
            "<tr id=\"approval-{id}\" data-approval=\"{id}\">\
             <td>{}</td><td class=\"num\">{}</td><td><code>{}</code></td><td>{}</td>\
             <td class=\"mono\">{}</td><td>{}</td><td>{}/{}</td><td><a href=\"/console/intents/{}\">intent</a></td><td>{actions}</td></tr>",
            esc(&age(a.created_at.as_deref(), now_ms)),
            esc(&money(a.requested_spend_cents.unwrap_or(0), "usd")),
            esc(a.tool.as_deref().or(a.operation.as_deref()).unwrap_or("-")),
            esc(a.vendor_id.as_deref().unwrap_or("-")),
            esc(a.agent.as_deref().unwrap_or("-")),
            esc(&a.reason_codes.join(", ")),
            a.approvals,
            a.quorum,
            a.intent_id.map(|i| i.to_string()).unwrap_or_default(),
        ));
    }
    out
}

/// Requests one page of the queue shows.
const QUEUE_PAGE: u32 = 50;

/// The queue as a page (and its live stream) asks for it: filters, order, page.
#[derive(Debug, Default, Deserialize)]
struct QueueParams {
    #[serde(default)]
    agent: String,
    #[serde(default)]
    tool: String,
    /// Dollars (the currency's main unit), as typed.
    #[serde(default)]
    min_amount: String,
    #[serde(default)]
    max_amount: String,
    /// `oldest`, else newest first (as the API).
    #[serde(default)]
    order: String,
    #[serde(default)]
    cursor: String,
    /// What the last action did (after a decision's redirect).
    #[serde(default)]
    done: String,
    /// The event stream's view: `overview`, else the queue.
    #[serde(default)]
    view: String,
}

/// An amount typed in the main unit (`150`, `150.5`, `150.50`) as cents.
fn parse_amount(text: &str) -> Option<u64> {
    let (whole, frac) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 2
    {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<2}").parse().ok()?
    };
    whole.checked_mul(100)?.checked_add(frac)
}

/// An optional amount field of a filter form: empty is none, else an amount in
/// the main unit, or what is wrong with it, naming the field.
fn amount_field(field: &str, text: &str) -> Result<Option<u64>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    parse_amount(text)
        .map(Some)
        .ok_or_else(|| format!("{field}: `{text}` is not an amount (like 150 or 150.50)"))
}

/// `name=value` (percent-encoded) for each filter that is filled in.
fn filled_in(filters: &[(&str, &String)]) -> Vec<String> {
    filters
        .iter()
        .filter(|(_, value)| !value.trim().is_empty())
        .map(|(name, value)| format!("{name}={}", url_encode(value.trim())))
        .collect()
}

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const ENCODED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a query value.
fn url_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, ENCODED).to_string()
}

impl QueueParams {
    /// The engine's query for the pending queue, or what is wrong with a filter.
    fn query(&self) -> Result<ApprovalQuery, String> {
        let min = amount_field("Minimum amount", &self.min_amount)?;
        let max = amount_field("Maximum amount", &self.max_amount)?;
        let text = |t: &str| Some(t.trim().to_owned()).filter(|t| !t.is_empty());
        Ok(ApprovalQuery {
            state: Some(ApprovalState::Pending),
            limit: Some(QUEUE_PAGE),
            cursor: text(&self.cursor),
            oldest_first: self.order == "oldest",
            agent: text(&self.agent),
            tool: text(&self.tool),
            min_amount_cents: min,
            max_amount_cents: max,
        })
    }

    fn filtered(&self) -> bool {
        [&self.agent, &self.tool, &self.min_amount, &self.max_amount]
            .iter()
            .any(|v| !v.trim().is_empty())
    }

    /// The query string of these filters and order, with `cursor` as the page.
    fn link(&self, cursor: Option<&str>) -> String {
        let mut parts = filled_in(&[
            ("agent", &self.agent),
            ("tool", &self.tool),
            ("min_amount", &self.min_amount),
            ("max_amount", &self.max_amount),
        ]);
        if self.order == "oldest" {
            parts.push("order=oldest".to_owned());
        }
        if let Some(c) = cursor {
            parts.push(format!("cursor={}", url_encode(c)));
        }
        parts.join("&")
    }
}

/// Only operators approve and deny: the buttons are shown to them alone.
fn can_decide(p: &Principal) -> bool {
    p.roles.contains(&Role::Operator)
}

/// One page of the pending queue as it stands: its rows, the tenant's pending
/// requests in all, how many the filters match, and the next page's link.
struct QueuePage {
    rows: String,
    /// Each row's request and its approvals so far: what a change of the rows is.
    shown: String,
    pending: u64,
    matching: u64,
    next: Option<String>,
}

impl QueuePage {
    /// What the live status line says.
    fn status(&self, filtered: bool) -> String {
        if filtered {
            format!(
                "Live: {} pending, {} match the filters",
                self.pending, self.matching
            )
        } else {
            format!("Live: {} pending", self.pending)
        }
    }
}

async fn queue_page(
    c: &Console,
    signed: &Signed,
    params: &QueueParams,
    query: ApprovalQuery,
) -> Result<QueuePage, ApiError> {
    let p = signed.principal.clone();
    let filtered = params.filtered();
    let (list, pending, matching, thresholds) = c
        .run(move |e| {
            let thresholds: HashMap<String, u64> = e
                .effective_policy_blocking(&p)
                .ok()
                .and_then(|policy| policy.policy.spend_controls)
                .map(|controls| {
                    controls
                        .tools
                        .into_iter()
                        .filter_map(|(tool, c)| Some((tool, c.approval_threshold_cents?)))
                        .collect()
                })
                .unwrap_or_default();
            let all = ApprovalQuery {
                state: Some(ApprovalState::Pending),
                ..ApprovalQuery::default()
            };
            let pending = e.count_approvals_blocking(&p, &all)?;
            // Unfiltered, the page's query matches every pending request.
            let matching = if filtered {
                e.count_approvals_blocking(&p, &query)?
            } else {
                pending
            };
            Ok((
                e.list_approvals_blocking(&p, &query)?,
                pending,
                matching,
                thresholds,
            ))
        })
        .await?;
    Ok(QueuePage {
        shown: list
            .approvals
            .iter()
            .map(|a| format!("{}:{};", a.approval_request_id, a.approvals))
            .collect(),
        rows: approval_rows(
            &list.approvals,
            can_decide(&signed.principal),
            &signed.csrf,
            c.engine.clock().now_ms(),
            &thresholds,
        ),
        pending,
        matching,
        next: list
            .next_cursor
            .map(|cursor| format!("/console/approvals?{}", params.link(Some(&cursor)))),
    })
}

/// One labelled input of a filter form: `<prefix>-<name>` is its id, `value`
/// what it holds (escaped), `extra` more attributes (trusted text).
fn form_field(
    prefix: &str,
    name: &str,
    label: &str,
    value: &str,
    kind: &str,
    extra: &str,
) -> String {
    format!(
        "<div class=\"field\"><label for=\"{prefix}-{name}\">{label}</label>\
         <input id=\"{prefix}-{name}\" name=\"{name}\" type=\"{kind}\" value=\"{}\"{extra}></div>",
        esc(value)
    )
}

/// The filter form of the queue, filled in with `params`.
fn queue_filters(params: &QueueParams) -> String {
    let field = |id: &str, label: &str, value: &str, kind: &str, extra: &str| {
        form_field("f", id, label, value, kind, extra)
    };
    let selected = |yes: bool| if yes { " selected" } else { "" };
    format!(
        "<form class=\"filters\" method=\"get\" action=\"/console/approvals\" \
          aria-label=\"Filter the queue\">{}{}{}{}\
         <div class=\"field\"><label for=\"f-order\">Order</label>\
         <select id=\"f-order\" name=\"order\">\
         <option value=\"newest\"{}>Newest first</option>\
         <option value=\"oldest\"{}>Oldest first</option></select></div>\
         <div class=\"field\"><button type=\"submit\">Filter</button> \
         <a href=\"/console/approvals\">Clear</a></div></form>",
        field("agent", "Agent", &params.agent, "text", ""),
        field("tool", "Tool", &params.tool, "text", ""),
        field(
            "min_amount",
            "Minimum amount",
            &params.min_amount,
            "text",
            " inputmode=\"decimal\" placeholder=\"0.00\""
        ),
        field(
            "max_amount",
            "Maximum amount",
            &params.max_amount,
            "text",
            " inputmode=\"decimal\" placeholder=\"any\""
        ),
        selected(params.order != "oldest"),
        selected(params.order == "oldest"),
    )
}

async fn approvals(
    State(c): State<Shared>,
    headers: HeaderMap,
    axum::extract::Query(params): axum::extract::Query<QueueParams>,
) -> Response {
    let Some(signed) = c.signed(&headers).await else {
        return redirect("/console/login");
    };
    // A filter that does not parse: the form keeps what was typed, the queue and
    // its links go unfiltered.
    let unfiltered = QueueParams {
        order: params.order.clone(),
        ..QueueParams::default()
    };
    let (shown, query, problem) = match params.query() {
        Ok(q) => (&params, q, None),
        Err(why) => (
            &unfiltered,
            unfiltered.query().unwrap_or_default(),
            Some(why),
        ),
    };
    let page = match queue_page(&c, &signed, shown, query).await {
        Ok(page) => page,
        Err(e) => return engine_error(&e),
    };
    let mut flash = String::new();
    if !params.done.is_empty() {
        flash.push_str(&format!(
            "<div class=\"flash\" role=\"status\">{}</div>",
            esc(&params.done)
        ));
    }
    if let Some(why) = &problem {
        flash.push_str(&format!(
            "<div class=\"flash error\" role=\"alert\">{}; the queue is shown unfiltered.</div>",
            esc(why)
        ));
    }
    let note = match signed.principal.service_account_role {
        _ if can_decide(&signed.principal) => "",
        Role::TenantAdmin => {
            "<p class=\"muted\">Signed in with a tenant admin key: holds are shown; only \
             operator keys approve or deny them.</p>"
        }
        Role::Analyst => {
            "<p class=\"muted\">Signed in as an analyst: holds are shown; only operators \
             approve or deny them.</p>"
        }
        _ => "<p class=\"muted\">Signed in with an agent key: holds are shown, not decided.</p>",
    };
    let filtered = shown.filtered();
    let mut pager = String::new();
    if !shown.cursor.is_empty() {
        pager.push_str(&format!(
            "<a id=\"first-page\" href=\"/console/approvals?{}\">First page</a> ",
            esc(&shown.link(None))
        ));
    }
    pager.push_str(&format!(
        "<a id=\"next-page\" href=\"{}\"{}>Next page</a>",
        esc(page.next.as_deref().unwrap_or("")),
        if page.next.is_some() { "" } else { " hidden" }
    ));
    let live = format!(
        "/console/events?{}",
        shown.link(Some(shown.cursor.as_str()).filter(|c| !c.is_empty()))
    );
    let order = if params.order == "oldest" {
        "oldest first"
    } else {
        "newest first"
    };
    let keys = if can_decide(&signed.principal) {
        "<details id=\"keyboard-help\"><summary>Keyboard</summary><p><kbd>j</kbd> or \
         <kbd>↓</kbd> selects the next request, <kbd>k</kbd> or <kbd>↑</kbd> the previous one, \
         <kbd>a</kbd> approves the selected request and <kbd>d</kbd> denies it. Approving more \
         than ten times the tool's approval threshold asks you to confirm first.</p></details>"
    } else {
        ""
    };
    let body = format!(
        "<h1>Approval queue</h1>{flash}{note}{keys}{}\
         <p id=\"live-status\" class=\"live\" role=\"status\" aria-live=\"polite\">{}</p>\
         <table id=\"approval-queue\" data-live=\"{}\" aria-describedby=\"live-status\">\
         <caption class=\"muted\">Held requests, {order}, {QUEUE_PAGE} a page</caption>\
         <thead><tr><th scope=\"col\">Age</th><th scope=\"col\">Amount</th><th scope=\"col\">Tool</th>\
         <th scope=\"col\">Vendor</th><th scope=\"col\">Agent</th><th scope=\"col\">Reasons</th>\
         <th scope=\"col\">Approvals</th><th scope=\"col\">Intent</th><th scope=\"col\">Decide</th></tr></thead>\
         <tbody id=\"approval-rows\">{}</tbody></table>\
         <nav class=\"pager\" aria-label=\"Pages of the queue\">{pager}</nav>",
        queue_filters(&params),
        esc(&page.status(filtered)),
        esc(&live),
        page.rows,
    );
    html(
        StatusCode::OK,
        layout(
            "Approvals",
            "Approvals",
            Some((&signed.principal, &signed.csrf)),
            &body,
        ),
    )
}

async fn decide(
    State(c): State<Shared>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let signed = match c.signed_post(&headers, &f.csrf).await {
        Ok(signed) => signed,
        Err(refused) => return refused,
    };
    let Ok(id) = Uuid::parse_str(&id) else {
        return page_error(
            StatusCode::BAD_REQUEST,
            "That is not an approval request id.",
        );
    };
    let p = signed.principal.clone();
    let result = match action.as_str() {
        "approve" => c.run(move |e| e.approve_blocking(&p, id)).await,
        "deny" => c.run(move |e| e.deny_approval_blocking(&p, id)).await,
        _ => return page_error(StatusCode::NOT_FOUND, "No such action."),
    };
    match result {
        Ok(status) => {
            let what = match status.state {
                ApprovalState::Approved => "approved",
                ApprovalState::Denied => "denied",
                ApprovalState::Expired => "expired",
                ApprovalState::Pending => "recorded (waiting for more approvals)",
            };
            redirect(&format!(
                "/console/approvals?done=Request+{id}+{}",
                what.replace(' ', "+").replace(['(', ')'], "")
            ))
        }
        Err(e) => engine_error(&e),
    }
}

/// The pending queue as a page shows it (the same filters, order and page),
/// pushed whenever it changes: `{"rows", "status", "pending", "matching", "next"}`;
/// with `view=overview`, the overview's sections instead (see
/// [`views::overview_events`]).
async fn events(
    State(c): State<Shared>,
    headers: HeaderMap,
    axum::extract::Query(params): axum::extract::Query<QueueParams>,
) -> Response {
    let Some(signed) = c.signed(&headers).await else {
        return secured(StatusCode::UNAUTHORIZED.into_response());
    };
    let sid = cookie_value(&headers).unwrap_or_default();
    if params.view == "overview" {
        return views::overview_events(c, signed, sid);
    }
    let Ok(query) = params.query() else {
        return secured(StatusCode::BAD_REQUEST.into_response());
    };
    let live = Arc::new((params, query));
    let stream = futures_util::stream::unfold(
        (c, signed, sid, live, String::new(), true),
        |(c, signed, sid, live, last, first)| async move {
            loop {
                if !first {
                    tokio::time::sleep(LIVE_EVERY).await;
                }
                if !c.alive(&sid).await {
                    // Said once; the stream then ends.
                    if last == SIGNED_OUT {
                        return None;
                    }
                    let event = Event::default().event("signed_out").data("");
                    let state = (c, signed, sid, live, SIGNED_OUT.to_owned(), false);
                    return Some((Ok::<_, Infallible>(event), state));
                }
                let (params, query) = &*live;
                let Ok(page) = queue_page(&c, &signed, params, query.clone()).await else {
                    continue;
                };
                // Pushed when the rows, the counts or the next page change (the
                // ages shown are as of that push).
                let data = serde_json::json!({
                    "rows": page.rows,
                    "status": page.status(params.filtered()),
                    "pending": page.pending,
                    "matching": page.matching,
                    "next": page.next,
                });
                let key = format!(
                    "{}|{}|{}|{}",
                    page.pending,
                    page.matching,
                    page.next.as_deref().unwrap_or(""),
                    page.shown
                );
                if key != last || first {
                    let event = Event::default().event("approvals").data(data.to_string());
                    return Some((Ok(event), (c, signed, sid, live, key, false)));
                }
            }
        },
    );
    secured(
        Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response(),
    )
}

async fn intents(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let Some(signed) = c.signed(&headers).await else {
        return redirect("/console/login");
    };
    let p = signed.principal.clone();
    let query = crate::engine::operator::IntentQuery {
        limit: Some(200),
        ..Default::default()
    };
    let list = match c
        .run(move |e| e.operator_intents_blocking(&p, &query))
        .await
    {
        Ok(l) => l,
        Err(e) => return engine_error(&e),
    };
    let mut rows = String::new();
    for i in &list.intents {
        let state = serde_json::to_value(i.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        rows.push_str(&format!(
            "<tr><td><a href=\"/console/intents/{id}\" class=\"mono\">{id}</a></td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&state),
            esc(&money(i.budget_cents, &i.currency)),
            esc(&money(i.consumed_cents, &i.currency)),
            esc(&money(i.reserved_cents, &i.currency)),
            esc(&money(i.remaining_cents, &i.currency)),
            i.open_reservations,
            esc(&i.created_at),
            id = i.intent_id
        ));
    }
    if list.intents.is_empty() {
        rows.push_str("<tr><td colspan=\"8\" class=\"muted\">No intents yet.</td></tr>");
    }
    let body = format!(
        "<h1>Intents</h1><table><caption class=\"muted\">Newest first</caption>\
         <thead><tr><th scope=\"col\">Intent</th><th scope=\"col\">State</th><th scope=\"col\">Budget</th>\
         <th scope=\"col\">Consumed</th><th scope=\"col\">Reserved</th><th scope=\"col\">Remaining</th>\
         <th scope=\"col\">Open reservations</th><th scope=\"col\">Created</th></tr></thead>\
         <tbody>{rows}</tbody></table>"
    );
    html(
        StatusCode::OK,
        layout(
            "Intents",
            "Intents",
            Some((&signed.principal, &signed.csrf)),
            &body,
        ),
    )
}

/// The budget as a bar: consumed, reserved, left (SVG attributes, no inline style).
fn budget_bar(budget: u64, consumed: u64, reserved: u64, currency: &str) -> String {
    let pct = |v: u64| {
        if budget == 0 {
            0.0
        } else {
            (v as f64 * 100.0 / budget as f64).min(100.0)
        }
    };
    let (c, r) = (pct(consumed), pct(reserved).min(100.0 - pct(consumed)));
    format!(
        "<svg class=\"bar\" role=\"img\" aria-label=\"Budget {}: {} consumed, {} reserved, {} left\" \
         viewBox=\"0 0 100 10\" preserveAspectRatio=\"none\">\
         <rect class=\"left\" x=\"0\" y=\"0\" width=\"100\" height=\"10\"/>\
         <rect class=\"consumed\" x=\"0\" y=\"0\" width=\"{c:.2}\" height=\"10\"/>\
         <rect class=\"reserved\" x=\"{c:.2}\" y=\"0\" width=\"{r:.2}\" height=\"10\"/></svg>",
        esc(&money(budget, currency)),
        esc(&money(consumed, currency)),
        esc(&money(reserved, currency)),
        esc(&money(
            budget.saturating_sub(consumed).saturating_sub(reserved),
            currency
        ))
    )
}

async fn intent(State(c): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(signed) = c.signed(&headers).await else {
        return redirect("/console/login");
    };
    let Ok(id) = Uuid::parse_str(&id) else {
        return page_error(StatusCode::BAD_REQUEST, "That is not an intent id.");
    };
    let p = signed.principal.clone();
    let detail = match c.run(move |e| e.operator_intent_blocking(&p, id)).await {
        Ok(d) => d,
        Err(e) => return engine_error(&e),
    };
    let i = &detail.intent;
    let mut reservations = String::new();
    for r in &detail.reservations {
        reservations.push_str(&format!(
            "<tr><td class=\"mono\">{}</td><td><code>{}</code></td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.decision_id),
            esc(&r.tool),
            esc(r.vendor_id.as_deref().unwrap_or("-")),
            esc(&money(r.amount_cents, &i.currency)),
            esc(&r.actual_cents.map_or_else(|| "-".to_owned(), |c| money(c, &i.currency))),
            esc(&r.state),
            esc(&r.created_at)
        ));
    }
    let mut decisions = String::new();
    for d in &detail.decisions {
        let class = match d.outcome.as_str() {
            "allow" => "ok",
            "hold" => "warn",
            _ => "bad",
        };
        let mut checks = String::new();
        for ch in &d.checks {
            checks.push_str(&format!(
                "<tr><td><code>{}</code></td><td class=\"{}\">{}</td><td class=\"mono\">{}</td></tr>",
                esc(&ch.name),
                if ch.result == "pass" { "ok" } else { "bad" },
                esc(&ch.result),
                esc(&serde_json::to_string(&ch.inputs).unwrap_or_default())
            ));
        }
        let proof = if d.checks.is_empty() {
            "<span class=\"muted\">no checks recorded</span>".to_owned()
        } else {
            format!(
                "<details><summary>{} checks</summary><table><thead><tr><th scope=\"col\">Check</th>\
                 <th scope=\"col\">Result</th><th scope=\"col\">Inputs</th></tr></thead><tbody>{checks}</tbody></table></details>",
                d.checks.len()
            )
        };
        decisions.push_str(&format!(
            "<tr><td class=\"mono\">{}</td><td class=\"{class}\">{}</td><td>{}</td><td>{}</td><td>{proof}</td></tr>",
            esc(&d.decision_id),
            esc(&d.outcome),
            esc(&d.reason_codes.join(", ")),
            esc(&d.created_at)
        ));
    }
    let state = serde_json::to_value(i.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let body = format!(
        "<h1>Intent <span class=\"mono\">{id}</span></h1>\
         <div class=\"card\"><p>State <strong>{}</strong> · deadline {} · {} open reservations</p>{}\
         <p class=\"legend\"><span>Budget {}</span><span>Consumed {}</span><span>Reserved {}</span><span>Remaining {}</span></p></div>\
         <h2>Reservations</h2><table><thead><tr><th scope=\"col\">Decision</th><th scope=\"col\">Tool</th>\
         <th scope=\"col\">Vendor</th><th scope=\"col\">Amount</th><th scope=\"col\">Actual</th><th scope=\"col\">State</th>\
         <th scope=\"col\">Created</th></tr></thead><tbody>{reservations}</tbody></table>\
         <h2>Decisions</h2><table><thead><tr><th scope=\"col\">Decision</th><th scope=\"col\">Outcome</th>\
         <th scope=\"col\">Reasons</th><th scope=\"col\">When</th><th scope=\"col\">Proof trace</th></tr></thead>\
         <tbody>{decisions}</tbody></table>",
        esc(&state),
        esc(&i.deadline),
        i.open_reservations,
        budget_bar(
            i.budget_cents,
            i.consumed_cents,
            i.reserved_cents,
            &i.currency
        ),
        esc(&money(i.budget_cents, &i.currency)),
        esc(&money(i.consumed_cents, &i.currency)),
        esc(&money(i.reserved_cents, &i.currency)),
        esc(&money(i.remaining_cents, &i.currency)),
    );
    html(
        StatusCode::OK,
        layout(
            "Intent",
            "Intents",
            Some((&signed.principal, &signed.csrf)),
            &body,
        ),
    )
}

/// The tenant's whole chain, checked: `(entries, problem)`.
fn check_chain(e: &Engine, p: &Principal) -> Result<(u64, Option<String>), ApiError> {
    let mut events = Vec::new();
    loop {
        let after = events.last().map_or(0, |e: &crate::LedgerEvent| e.seq);
        let page = e.ledger_events_blocking(p, after, 1000)?;
        if page.is_empty() {
            break;
        }
        events.extend(page);
    }
    let problem = crate::verify_events(&p.tenant_id, &events).err();
    Ok((events.len() as u64, problem))
}

async fn ledger_page(
    c: &Shared,
    signed: &Signed,
    checked: Option<(u64, Option<String>)>,
) -> Response {
    let p = signed.principal.clone();
    let tip = match c.run(move |e| e.ledger_tip_blocking(&p)).await {
        Ok(t) => t,
        Err(e) => return engine_error(&e),
    };
    let p = signed.principal.clone();
    let after = tip.seq.saturating_sub(50);
    let recent = match c
        .run(move |e| e.ledger_events_blocking(&p, after, 50))
        .await
    {
        Ok(r) => r,
        Err(e) => return engine_error(&e),
    };
    let status = match &checked {
        None => {
            "<p id=\"chain-status\" role=\"status\">Not checked yet in this view.</p>".to_owned()
        }
        Some((n, None)) => format!(
            "<p id=\"chain-status\" role=\"status\" class=\"ok\">Chain valid: {n} entries checked, every link and hash.</p>"
        ),
        Some((n, Some(problem))) => format!(
            "<p id=\"chain-status\" role=\"alert\" class=\"bad\">Chain broken after checking {n} entries: {}</p>",
            esc(problem)
        ),
    };
    let mut rows = String::new();
    for ev in recent.iter().rev() {
        rows.push_str(&format!(
            "<tr><td class=\"num\">{}</td><td><code>{}</code></td><td>{}</td><td class=\"mono\">{}…</td></tr>",
            ev.seq,
            esc(&ev.event),
            esc(&crate::engine::lifecycle::rfc3339(ev.at_ms)),
            esc(ev.hash.get(..16).unwrap_or(&ev.hash))
        ));
    }
    let body = format!(
        "<h1>Ledger</h1><div class=\"card\"><p>Tip: entry {} · hash <span class=\"mono\">{}</span></p>{status}\
         <form method=\"post\" action=\"/console/ledger/verify\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button class=\"primary\" type=\"submit\" id=\"verify-ledger\">Verify the chain</button></form></div>\
         <h2>Latest entries</h2><table><thead><tr><th scope=\"col\">Seq</th><th scope=\"col\">Event</th>\
         <th scope=\"col\">At</th><th scope=\"col\">Hash</th></tr></thead><tbody>{rows}</tbody></table>",
        tip.seq,
        esc(&tip.hash),
        esc(&signed.csrf)
    );
    html(
        StatusCode::OK,
        layout(
            "Ledger",
            "Ledger",
            Some((&signed.principal, &signed.csrf)),
            &body,
        ),
    )
}

async fn ledger(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let Some(signed) = c.signed(&headers).await else {
        return redirect("/console/login");
    };
    ledger_page(&c, &signed, None).await
}

async fn verify_ledger(
    State(c): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let signed = match c.signed_post(&headers, &f.csrf).await {
        Ok(signed) => signed,
        Err(refused) => return refused,
    };
    let p = signed.principal.clone();
    match c.run(move |e| check_chain(e, &p)).await {
        Ok(checked) => ledger_page(&c, &signed, Some(checked)).await,
        Err(e) => engine_error(&e),
    }
}

async fn policy(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let Some(signed) = c.signed(&headers).await else {
        return redirect("/console/login");
    };
    let p = signed.principal.clone();
    let eff = match c.run(move |e| e.effective_policy_blocking(&p)).await {
        Ok(e) => e,
        Err(e) => return engine_error(&e),
    };
    let body = format!(
        "<h1>Effective policy</h1><div class=\"card\"><p>Version {} · <span class=\"mono\">{}</span>{}</p></div>\
         <pre aria-label=\"The effective policy as JSON\">{}</pre>",
        eff.version,
        esc(&eff.digest),
        eff.org_policy_id
            .as_deref()
            .map(|o| format!(" · org base <code>{}</code>", esc(o)))
            .unwrap_or_default(),
        esc(&serde_json::to_string_pretty(&eff.policy).unwrap_or_default())
    );
    html(
        StatusCode::OK,
        layout(
            "Policy",
            "Policy",
            Some((&signed.principal, &signed.csrf)),
            &body,
        ),
    )
}

async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut r = (
        [(header::CONTENT_TYPE, HeaderValue::from_static(kind))],
        body,
    )
        .into_response();
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}
