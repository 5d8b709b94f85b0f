//! Single sign-on for the console, with people provisioned over SCIM and roles
//! from their groups.
//!
//! The browser tests sign in through a real OpenID Provider (npm's
//! `oidc-provider`, started by `tests/oidc/provider.mjs`; `.ci/oidc-provider`
//! installs it) in headless Chromium: an operator lands where they first asked,
//! approves a hold and the ledger names them; an analyst reads and cannot
//! approve; a session made on one replica serves on another and ends on both when
//! the person is deprovisioned. The refusals (a wrong audience, an expired token,
//! a bad signature, `alg: none`, a replayed nonce or callback, a deactivated,
//! unmapped or unprovisioned person) are checked against a provider scripted here,
//! whose tokens the test signs itself.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::Blocking;

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::Fixture;
use common::browser::{Browser, free_port};
use paybond_gateway::{Engine, EngineConfig, Storage};
use paybond_middleware_core::wire::{ApprovalState, VerifyRequest};
use reqwest::Method;
use serde_json::{Value, json};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const CLIENT_ID: &str = "paybond-console";
const CLIENT_SECRET: &str = "console-secret-0123456789abcdef0123456789";

/// An HTTP JSON request with a bearer token: `(status, body)`.
async fn call(
    base: &str,
    method: Method,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(bearer);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/scim+json")
            .body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The people of the tests, provisioned over SCIM: their SCIM ids by login.
struct Directory {
    scim_token: String,
    ids: std::collections::HashMap<&'static str, String>,
}

/// Provisions: ada (operator, matched by `sub`), bob (operator, by verified
/// email), frank (analyst), carol (operator, deactivated), dave (in an unmapped
/// group). eve signs in at the provider but is not provisioned.
async fn provision(fx: &Fixture, base: &str) -> Directory {
    let admin = fx.keys.tenant_admin.expose_secret();
    let (_, token) = call(
        base,
        Method::POST,
        "/v1/admin/identity/scim-tokens",
        admin,
        None,
    )
    .await;
    let scim_token = token["token"].as_str().unwrap().to_owned();
    let mut ids = std::collections::HashMap::new();
    for (login, user_name, external, active) in [
        ("ada", "ada@example.com", Some("ada-sub"), true),
        ("bob", "bob@example.com", None, true),
        ("frank", "frank@example.com", Some("frank-sub"), true),
        ("carol", "carol@example.com", Some("carol-sub"), false),
        ("dave", "dave@example.com", Some("dave-sub"), true),
    ] {
        let mut user = json!({"schemas": [USER], "userName": user_name, "active": active,
                              "emails": [{"value": user_name, "type": "work", "primary": true}]});
        if let Some(x) = external {
            user["externalId"] = json!(x);
        }
        let (status, created) = call(
            base,
            Method::POST,
            "/scim/v2/Users",
            &scim_token,
            Some(user),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        ids.insert(login, created["id"].as_str().unwrap().to_owned());
    }
    for (group, members) in [
        ("paybond-operators", vec!["ada", "bob", "carol"]),
        ("paybond-analysts", vec!["frank"]),
        ("everyone-else", vec!["dave"]),
    ] {
        let members: Vec<Value> = members.iter().map(|m| json!({"value": ids[m]})).collect();
        let (status, body) = call(
            base,
            Method::POST,
            "/scim/v2/Groups",
            &scim_token,
            Some(json!({"schemas": [GROUP], "displayName": group, "members": members})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    for (group, role) in [
        ("paybond-operators", "operator"),
        ("paybond-analysts", "analyst"),
    ] {
        let resp = reqwest::Client::new()
            .put(format!("{base}/v1/admin/identity/role-mappings/{group}"))
            .bearer_auth(admin)
            .json(&json!({"role": role}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    Directory { scim_token, ids }
}

async fn configure_oidc(fx: &Fixture, base: &str, issuer: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .put(format!("{base}/v1/admin/identity/oidc"))
        .bearer_auth(fx.keys.tenant_admin.expose_secret())
        .json(&json!({"issuer": issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

// ---- the real provider ----

/// `oidc-provider` under node, on a free port; stopped when dropped.
struct OpenIdProvider {
    child: Child,
    issuer: String,
}

impl Drop for OpenIdProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OpenIdProvider {
    /// Starts one whose client redirects to `gateway`; `None` when the browser
    /// tests are skipped.
    fn start(gateway: &str) -> Option<Self> {
        if std::env::var_os("PAYBOND_OIDC_PROVIDER").is_none() {
            if std::env::var("PAYBOND_SKIP_BROWSER").as_deref() == Ok("1") {
                eprintln!("skipped: this test needs oidc-provider and PAYBOND_SKIP_BROWSER=1");
                return None;
            }
            panic!(
                "this test needs npm's oidc-provider: run the tests with `bash .ci/test` (it \
                 installs it), or skip it with PAYBOND_SKIP_BROWSER=1"
            );
        }
        let port = free_port();
        // `localhost`, not the gateway's 127.0.0.1: the provider is another site, as
        // in production (the session cookie is SameSite=Strict).
        let issuer = format!("http://localhost:{port}");
        // Keyed by `sub`, which is also what is typed at the provider's login page.
        let accounts = json!({
            "ada-sub": {"email": "ada@example.com", "email_verified": true},
            "bob-at-idp": {"email": "bob@example.com", "email_verified": true},
            "frank-sub": {"email": "frank@example.com", "email_verified": true},
            "carol-sub": {"email": "carol@example.com", "email_verified": true},
            "dave-sub": {"email": "dave@example.com", "email_verified": true},
            "eve-sub": {"email": "eve@example.com", "email_verified": true}
        });
        let config = json!({
            "issuer": issuer, "port": port, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "redirect_uri": format!("{gateway}/console/oidc/callback"),
            "post_logout_redirect_uri": format!("{gateway}/console/login"),
            "accounts": accounts,
        });
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/provider.mjs");
        let mut child = Command::new("node")
            .arg(script)
            .arg(config.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.starts_with("listening") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("oidc-provider did not start");
        Some(Self { child, issuer })
    }
}

/// Signs in at the provider's own pages as `login` (an account's `sub`) and gives
/// consent.
async fn provider_sign_in(browser: &Browser, login: &str) {
    browser.wait_for("input[name=login]").await;
    browser.type_into("input[name=login]", login).await;
    browser
        .type_into("input[name=password]", "any password")
        .await;
    browser.click("button[type=submit]").await;
    // The consent prompt, the first time this client asks.
    let start = std::time::Instant::now();
    loop {
        let url = browser.current_url().await;
        if url.contains("/console/") {
            break;
        }
        if !browser.find_all("button[type=submit]").await.is_empty()
            && browser.find_all("input[name=login]").await.is_empty()
        {
            browser.click("button[type=submit]").await;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "stuck at {url}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// After the console's Sign out: confirms at the provider's end-session page and
/// waits to be back on the console's sign-in page.
async fn provider_sign_out(browser: &Browser) {
    let start = std::time::Instant::now();
    loop {
        let url = browser.current_url().await;
        if url.contains("/console/login") {
            return;
        }
        if !browser.find_all("button[value=yes]").await.is_empty() {
            browser.click("button[value=yes]").await;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "stuck at {url}: {}",
            browser.text("body").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn pending_hold(fx: &Fixture) -> uuid::Uuid {
    let (intent, token) = fx.intent(60_000);
    let engine = fx.engine.clone();
    let agent = fx.agent.clone();
    tokio::task::spawn_blocking(move || {
        let held = engine
            .verify_now(
                &agent,
                &VerifyRequest {
                    vendor_id: Some("vendor_grand_hotel".into()),
                    ..common::verify_request(intent, &token, 18_700)
                },
            )
            .unwrap();
        held.approval_request_id.unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_with_sso_approves_and_the_ledger_names_them() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let Some(provider) = OpenIdProvider::start(&base) else {
        return;
    };
    let dir = provision(&fx, &base).await;
    let (status, settings) = configure_oidc(&fx, &base, &provider.issuer).await;
    assert_eq!(status, 200, "{settings}");
    assert!(!settings.to_string().contains(CLIENT_SECRET));
    let approval = pending_hold(&fx).await;

    // Asked for the queue; sent to sign in; SSO; back on the queue.
    browser
        .goto(&format!("{base}/console/approvals?order=oldest"))
        .await;
    browser.wait_for("#sso").await;
    browser.screenshot("20-sign-in-sso.png").await;
    browser.axe("the sign-in page with SSO").await;
    browser.click("#sso").await;
    provider_sign_in(&browser, "ada-sub").await;
    browser.wait_for("#approval-rows").await;
    assert!(
        browser
            .current_url()
            .await
            .ends_with("/console/approvals?order=oldest")
    );
    assert_eq!(browser.text("#who-person").await, "ada@example.com");
    browser.screenshot("21-sso-operator-queue.png").await;

    // Approves the hold: the approval and the ledger name the person.
    browser
        .click(&format!("#approval-{approval} button.primary"))
        .await;
    browser
        .wait_text(".flash", |t| t.contains("approved"))
        .await;
    assert_eq!(
        fx.engine
            .approval(&fx.operator, approval)
            .await
            .unwrap()
            .state,
        ApprovalState::Approved
    );
    let events = fx
        .engine
        .ledger_events(&fx.operator, 0, 1000)
        .await
        .unwrap();
    let approved = events
        .iter()
        .find(|e| e.event == "approval.approved")
        .unwrap();
    assert_eq!(approved.payload["approver"], "ada@example.com");
    assert_eq!(
        approved.payload["operator"],
        format!("scim:{}", dir.ids["ada"])
    );
    assert_eq!(approved.payload["approvers"], json!(["ada@example.com"]));
    let hold = fx
        .engine
        .approval(&fx.operator, approval)
        .await
        .unwrap()
        .decision_id
        .unwrap();
    let recorded = fx
        .engine
        .decision_detail(&fx.operator, hold)
        .await
        .unwrap()
        .approval
        .unwrap();
    assert_eq!(recorded.approvers, ["ada@example.com"]);
    assert_eq!(recorded.approver_ids, [format!("scim:{}", dir.ids["ada"])]);

    // bob is found by his verified email (his sub is unknown here).
    browser.click("header button[type=submit]").await;
    // Signing out ends the session at the provider too (RP-initiated logout).
    provider_sign_out(&browser).await;
    browser.wait_for("#sso").await;
    browser.click("#sso").await;
    provider_sign_in(&browser, "bob-at-idp").await;
    browser.wait_for("#overview").await;
    assert_eq!(browser.text("#who-person").await, "bob@example.com");

    // Through the real provider too: a deactivated person, one in no mapped
    // group and one not provisioned are each refused with a page saying so, and
    // no session is made.
    for (login, says) in [
        ("carol-sub", "deactivated"),
        ("dave-sub", "maps to a role"),
        ("eve-sub", "not provisioned"),
    ] {
        browser.click("header button[type=submit]").await;
        provider_sign_out(&browser).await;
        browser.wait_for("#sso").await;
        browser.click("#sso").await;
        provider_sign_in(&browser, login).await;
        browser.wait_for("#sso-refused").await;
        assert!(browser.text("#sso-refused").await.contains(says), "{login}");
        browser.axe("the SSO refusal page").await;
        if login == "carol-sub" {
            browser.screenshot("23-sso-refused.png").await;
        }
        browser.goto(&format!("{base}/console/approvals")).await;
        browser.wait_for("#api_key").await;
        // Back to bob for the next round (the provider still has this person).
        browser
            .goto(&format!(
                "{}/session/end?client_id={CLIENT_ID}&post_logout_redirect_uri={}",
                provider.issuer,
                openidconnect::url::form_urlencoded::byte_serialize(
                    format!("{base}/console/login").as_bytes()
                )
                .collect::<String>()
            ))
            .await;
        provider_sign_out(&browser).await;
        browser.click("#sso").await;
        provider_sign_in(&browser, "bob-at-idp").await;
        browser.wait_for("#overview").await;
    }
    browser.raw("DELETE", "", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysts_read_and_a_deprovisioned_person_is_signed_out_on_every_replica() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    // Two replicas over one store.
    let data = tempfile::tempdir().unwrap();
    let storage = match common::pg_database() {
        Some(url) => Storage::Postgres(url),
        None => Storage::File(data.path().join("paybond.db")),
    };
    let fx = Fixture::with_config(EngineConfig::new(storage.clone()));
    let replica = Arc::new(Engine::open(EngineConfig::new(storage)).unwrap());
    let one = common::serve(fx.engine.clone()).await;
    let two = common::serve(replica).await;
    let Some(provider) = OpenIdProvider::start(&one) else {
        return;
    };
    let dir = provision(&fx, &one).await;
    assert_eq!(configure_oidc(&fx, &one, &provider.issuer).await.0, 200);
    let approval = pending_hold(&fx).await;

    // An analyst: the overview and the queue, read-only; approving is refused
    // naming the role.
    browser.goto(&format!("{one}/console/login")).await;
    browser.click("#sso").await;
    provider_sign_in(&browser, "frank-sub").await;
    browser.wait_for("#overview").await;
    assert!(
        browser
            .text(".who")
            .await
            .contains("frank@example.com (analyst)")
    );
    browser.goto(&format!("{one}/console/approvals")).await;
    browser
        .wait_for(&format!("tr[data-approval=\"{approval}\"]"))
        .await;
    assert!(browser.find_all("#approval-rows button").await.is_empty());
    let forced = browser
        .script(&format!(
            "const t = document.querySelector('input[name=csrf]').value;
             return fetch('/console/approvals/{approval}/approve', {{method: 'POST',
               headers: {{'content-type': 'application/x-www-form-urlencoded'}},
               body: 'csrf=' + encodeURIComponent(t)}}).then(async r => [r.status, await r.text()]);"
        ))
        .await;
    assert_eq!(forced[0], 403);
    assert!(
        forced[1].as_str().unwrap().contains("an analyst"),
        "{forced}"
    );
    browser.goto(&format!("{one}/console/policy")).await;
    browser.wait_for("pre").await;
    browser.screenshot("22-sso-analyst.png").await;

    // A PATCH of group members changes frank's role at his next request: into the
    // operators, he decides; out of every mapped group, his session ends.
    let groups = call(&one, Method::GET, "/scim/v2/Groups", &dir.scim_token, None)
        .await
        .1;
    let group_id = |name: &str| -> String {
        groups["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["displayName"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (operators, analysts) = (group_id("paybond-operators"), group_id("paybond-analysts"));
    let frank = dir.ids["frank"].clone();
    let (status, _) = call(
        &one,
        Method::PATCH,
        &format!("/scim/v2/Groups/{operators}"),
        &dir.scim_token,
        Some(json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "members", "value": [{"value": frank}]}]})),
    )
    .await;
    assert_eq!(status, 200);
    browser.goto(&format!("{one}/console/approvals")).await;
    browser
        .wait_for(&format!("#approval-{approval} button.primary"))
        .await;
    assert!(
        browser
            .text(".who")
            .await
            .contains("frank@example.com (operator)")
    );
    for group in [&operators, &analysts] {
        let (status, _) = call(
            &one,
            Method::PATCH,
            &format!("/scim/v2/Groups/{group}"),
            &dir.scim_token,
            Some(json!({"schemas": [PATCH], "Operations": [{"op": "remove", "path": format!("members[value eq \"{frank}\"]")}]})),
        )
        .await;
        assert_eq!(status, 200);
    }
    browser.goto(&format!("{one}/console/approvals")).await;
    browser.wait_for("#api_key").await;
    assert!(browser.current_url().await.contains("/console/login"));

    // ada signs in on replica one; her session serves on replica two. (frank's
    // session at the provider is still on: it signs out there first.)
    let end = format!(
        "{}/session/end?client_id={CLIENT_ID}&post_logout_redirect_uri={}",
        provider.issuer,
        openidconnect::url::form_urlencoded::byte_serialize(
            format!("{one}/console/login").as_bytes()
        )
        .collect::<String>()
    );
    browser.goto(&end).await;
    provider_sign_out(&browser).await;
    browser.goto(&format!("{one}/console/login")).await;
    browser.click("#sso").await;
    provider_sign_in(&browser, "ada-sub").await;
    browser.wait_for("#overview").await;
    browser.goto(&format!("{two}/console/approvals")).await;
    browser.wait_for("#approval-rows").await;
    assert_eq!(browser.text("#who-person").await, "ada@example.com");

    // Deprovisioned (deactivated over SCIM): refused at the next request, on both.
    let (status, body) = call(
        &one,
        Method::PATCH,
        &format!("/scim/v2/Users/{}", dir.ids["ada"]),
        &dir.scim_token,
        Some(json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "active", "value": false}]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for base in [&one, &two] {
        browser.goto(&format!("{base}/console/approvals")).await;
        browser.wait_for("#api_key").await;
        assert!(browser.current_url().await.contains("/console/login"));
    }
}

// ---- a provider scripted here, for the refusals ----

/// What the scripted provider answers at its token endpoint next, and what it saw.
#[derive(Default)]
struct Script {
    id_token: Option<String>,
    code_verifier: Option<String>,
    /// The key set served (rotated by a test).
    jwks: Value,
    /// Times the key set was fetched.
    jwks_fetches: u32,
}

struct ScriptedProvider {
    issuer: String,
    key: ed25519_dalek::SigningKey,
    script: Arc<Mutex<Script>>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl ScriptedProvider {
    async fn start() -> Self {
        use axum::routing::{get, post};
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let script = Arc::new(Mutex::new(Script::default()));
        let discovery = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/auth"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA", "RS256"],
        });
        script.lock().unwrap().jwks = Self::key_set(&key, "k1");
        let served = script.clone();
        let s = script.clone();
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { axum::Json(discovery) }),
            )
            .route(
                "/jwks",
                get(move || async move {
                    let mut s = served.lock().unwrap();
                    s.jwks_fetches += 1;
                    axum::Json(s.jwks.clone())
                }),
            )
            .route(
                "/token",
                post(move |body: String| async move {
                    let form: std::collections::HashMap<String, String> =
                        openidconnect::url::form_urlencoded::parse(body.as_bytes())
                            .into_owned()
                            .collect();
                    let mut s = s.lock().unwrap();
                    s.code_verifier = form.get("code_verifier").cloned();
                    axum::Json(json!({
                        "access_token": "at", "token_type": "Bearer", "expires_in": 60,
                        "id_token": s.id_token.take().unwrap_or_default(),
                    }))
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            issuer,
            key,
            script,
        }
    }

    fn key_set(key: &ed25519_dalek::SigningKey, kid: &str) -> Value {
        json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "alg": "EdDSA",
            "x": b64(key.verifying_key().as_bytes()),
        }]})
    }

    /// A compact JWS of `claims` with `header`, signed by `key`.
    fn jws(header: &Value, claims: &Value, key: Option<&ed25519_dalek::SigningKey>) -> String {
        use ed25519_dalek::Signer as _;
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = key.map_or_else(String::new, |k| {
            b64(&k.sign(signing_input.as_bytes()).to_bytes())
        });
        format!("{signing_input}.{signature}")
    }

    fn claims(&self, sub: &str, email: &str, nonce: &str) -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        json!({"iss": self.issuer, "aud": CLIENT_ID, "sub": sub, "email": email,
               "email_verified": true, "nonce": nonce, "iat": now, "exp": now + 300})
    }

    fn signed(&self, claims: &Value) -> String {
        Self::jws(
            &json!({"alg": "EdDSA", "kid": "k1", "typ": "JWT"}),
            claims,
            Some(&self.key),
        )
    }
}

/// Makes an ID token for a sign-in's nonce.
type Craft = Box<dyn Fn(&ScriptedProvider, &str) -> String>;

/// A sign-in started at the gateway: the provider's authorize URL's parameters.
struct Started {
    state: String,
    nonce: String,
    challenge: String,
}

async fn begin(base: &str) -> Started {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .get(format!("{base}/console/login/oidc"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let to = openidconnect::url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let q: std::collections::HashMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["scope"].split(' ').any(|s| s == "openid"));
    assert!(q["redirect_uri"].ends_with("/console/oidc/callback"));
    Started {
        state: q["state"].clone(),
        nonce: q["nonce"].clone(),
        challenge: q["code_challenge"].clone(),
    }
}

/// The gateway's answer to the callback: status, body, and whether it set a session.
async fn finish(base: &str, state: &str) -> (u16, String, bool) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .get(format!(
            "{base}/console/oidc/callback?code=the-code&state={state}"
        ))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let session = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .any(|c| c.to_str().unwrap().starts_with("paybond_console="));
    (status, resp.text().await.unwrap(), session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_tokens_that_fail_a_check_and_people_without_access_are_refused() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let op = ScriptedProvider::start().await;
    provision(&fx, &base).await;
    let (status, body) = configure_oidc(&fx, &base, &op.issuer).await;
    assert_eq!(status, 200, "{body}");
    // An issuer that is not one is refused when configured.
    let (status, body) = configure_oidc(&fx, &base, "http://127.0.0.1:9/nothing").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "oidc_issuer_unreachable");
    let script = op.script.clone();
    let next = |token: String| script.lock().unwrap().id_token = Some(token);

    // The baseline: a good token for ada signs her in, with PKCE S256.
    let first = begin(&base).await;
    next(op.signed(&op.claims("ada-sub", "ada@example.com", &first.nonce)));
    let (status, page, session) = finish(&base, &first.state).await;
    assert!(status == 200 && session, "{status} {page}");
    use sha2::Digest as _;
    let verifier = op.script.lock().unwrap().code_verifier.clone().unwrap();
    assert_eq!(
        b64(&sha2::Sha256::digest(verifier.as_bytes())),
        first.challenge
    );

    let refused = |status: u16, page: &str, session: bool, why: &str| {
        assert_eq!(status, 403, "{why}: {page}");
        assert!(!session, "{why}: a session was made");
        assert!(page.contains("id=\"sso-refused\""), "{why}: {page}");
    };
    // The same callback again: its state was used.
    let (status, page, session) = finish(&base, &first.state).await;
    refused(status, &page, session, "a replayed callback");
    assert!(page.contains("used already"));

    let cases: Vec<(&str, Craft, &str)> = vec![
        (
            "a wrong audience",
            Box::new(|op, nonce| {
                let mut c = op.claims("ada-sub", "ada@example.com", nonce);
                c["aud"] = json!("another-client");
                op.signed(&c)
            }),
            "refused",
        ),
        (
            "an expired token",
            Box::new(|op, nonce| {
                let mut c = op.claims("ada-sub", "ada@example.com", nonce);
                c["exp"] = json!(c["iat"].as_u64().unwrap() - 600);
                c["iat"] = json!(c["iat"].as_u64().unwrap() - 1200);
                op.signed(&c)
            }),
            "refused",
        ),
        (
            "a bad signature",
            Box::new(|op, nonce| {
                let other = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
                ScriptedProvider::jws(
                    &json!({"alg": "EdDSA", "kid": "k1"}),
                    &op.claims("ada-sub", "ada@example.com", nonce),
                    Some(&other),
                )
            }),
            "refused",
        ),
        (
            "alg none",
            Box::new(|op, nonce| {
                ScriptedProvider::jws(
                    &json!({"alg": "none"}),
                    &op.claims("ada-sub", "ada@example.com", nonce),
                    None,
                )
            }),
            "refused",
        ),
        (
            "another issuer",
            Box::new(|op, nonce| {
                let mut c = op.claims("ada-sub", "ada@example.com", nonce);
                c["iss"] = json!("http://evil.example");
                op.signed(&c)
            }),
            "refused",
        ),
        (
            "a deactivated person",
            Box::new(|op, nonce| op.signed(&op.claims("carol-sub", "carol@example.com", nonce))),
            "deactivated",
        ),
        (
            "a person in no mapped group",
            Box::new(|op, nonce| op.signed(&op.claims("dave-sub", "dave@example.com", nonce))),
            "maps to a role",
        ),
        (
            "a person not provisioned",
            Box::new(|op, nonce| op.signed(&op.claims("eve-sub", "eve@example.com", nonce))),
            "not provisioned",
        ),
        (
            "an unverified email",
            Box::new(|op, nonce| {
                let mut c = op.claims("bob-at-idp", "bob@example.com", nonce);
                c["email_verified"] = json!(false);
                op.signed(&c)
            }),
            "not provisioned",
        ),
    ];
    for (why, token, says) in &cases {
        let started = begin(&base).await;
        next(token(&op, &started.nonce));
        let (status, page, session) = finish(&base, &started.state).await;
        refused(status, &page, session, why);
        assert!(page.contains(says), "{why}: {page}");
    }
    // A replayed nonce: the first sign-in's token, presented for a new one.
    let started = begin(&base).await;
    next(op.signed(&op.claims("ada-sub", "ada@example.com", &first.nonce)));
    let (status, page, session) = finish(&base, &started.state).await;
    refused(status, &page, session, "a replayed nonce");
    // bob by his verified email: signed in.
    let started = begin(&base).await;
    next(op.signed(&op.claims("bob-at-idp", "bob@example.com", &started.nonce)));
    let (status, _, session) = finish(&base, &started.state).await;
    assert!(status == 200 && session);

    // The provider rotates its key: a token under the new `kid` makes the gateway
    // fetch the key set again, once, and it is accepted.
    // (At most once a second: the cached set is older than that by now.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = ed25519_dalek::SigningKey::from_bytes(&[11u8; 32]);
    let fetched = {
        let mut s = op.script.lock().unwrap();
        s.jwks = ScriptedProvider::key_set(&rotated, "k2");
        s.jwks_fetches
    };
    let started = begin(&base).await;
    next(ScriptedProvider::jws(
        &json!({"alg": "EdDSA", "kid": "k2"}),
        &op.claims("ada-sub", "ada@example.com", &started.nonce),
        Some(&rotated),
    ));
    let (status, page, session) = finish(&base, &started.state).await;
    assert!(status == 200 && session, "{page}");
    assert_eq!(op.script.lock().unwrap().jwks_fetches, fetched + 1);
}
