//! Who may use an approval and an idempotency key, over HTTP on loopback: an
//! approval token works for the agent key whose call was held, a stored
//! idempotency key answers only the key that sent it, a quorum counts distinct
//! people, identifiers refuse control characters, and a denied hold stays denied
//! for a while.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::Blocking;

use common::{BOOK, Fixture, call};
use paybond_gateway::{Clock, EngineConfig, PolicyFile, Storage};
use reqwest::Method;
use serde_json::{Value, json};

fn verify_body(intent: uuid::Uuid, token: &str, amount: u64) -> Value {
    json!({"intent_id": intent, "token": token, "operation": BOOK,
           "requested_spend_cents": amount, "tool_name": BOOK, "vendor_id": "vendor_acme"})
}

/// A new key of `role` issued by the tenant admin (`subject`: its holder).
async fn issue_key(base: &str, fx: &Fixture, role: &str, subject: Option<&str>) -> String {
    let mut body = json!({ "role": role });
    if let Some(s) = subject {
        body["subject"] = json!(s);
    }
    let (status, issued) = call(
        base,
        Method::POST,
        "/v1/admin/api-keys",
        Some(fx.keys.tenant_admin.expose_secret()),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{issued}");
    issued["api_key"].as_str().unwrap().to_owned()
}

async fn verify(base: &str, key: &str, body: &Value) -> Value {
    let (status, answer) = call(
        base,
        Method::POST,
        "/verify",
        Some(key),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn pending(base: &str, operator: &str) -> Vec<String> {
    let (_, list) = call(
        base,
        Method::GET,
        "/v1/approvals?state=pending",
        Some(operator),
        None,
    )
    .await;
    list["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["approval_request_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn ledger_events(base: &str, operator: &str) -> Vec<Value> {
    let (_, events) = call(
        base,
        Method::GET,
        "/ledger/v1/events?limit=1000",
        Some(operator),
        None,
    )
    .await;
    events["events"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_token_works_only_for_the_agent_key_whose_call_was_held() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let (intent, token) = fx.intent(60_000);
    let k1 = fx.keys.agent.expose_secret();
    // A second agent key of the tenant, with the same (default) subject as the first:
    // the binding is to the key, not to a name two keys can share.
    let k2 = issue_key(&base, &fx, "agent", None).await;
    let operator = fx.keys.operator.expose_secret();
    let body = verify_body(intent, token.expose_secret(), 18_700);

    let held = verify(&base, &k2, &body).await;
    assert_eq!(held["approval_required"], json!(true), "{held}");
    let approval = held["approval_request_id"].as_str().unwrap().to_owned();
    // The first key's identical call is a request of its own, not K2's.
    let own = verify(&base, k1, &body).await;
    assert_eq!(own["approval_required"], json!(true), "{own}");
    assert_ne!(own["approval_request_id"].as_str(), Some(approval.as_str()));

    let (status, _) = call(
        &base,
        Method::POST,
        &format!("/v1/approvals/{approval}/approve"),
        Some(operator),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // Another agent key reads the approval but is not handed its token...
    let path = format!("/v1/approvals/{approval}");
    let (_, seen_by_k1) = call(&base, Method::GET, &path, Some(k1), None).await;
    assert_eq!(seen_by_k1["state"], "approved", "{seen_by_k1}");
    assert!(seen_by_k1["approval_token"].is_null(), "{seen_by_k1}");
    // ...and that read does not take it from the key that was held.
    let (_, seen_by_k2) = call(&base, Method::GET, &path, Some(&k2), None).await;
    let approval_token = seen_by_k2["approval_token"]
        .as_str()
        .expect("the held key gets the token")
        .to_owned();

    // K1 presents K2's token with the identical body: refused, and the token stays good.
    let mut with_token = body.clone();
    with_token["approval_token"] = json!(approval_token);
    let stolen = verify(&base, k1, &with_token).await;
    assert_eq!(stolen["allow"], json!(false), "{stolen}");
    assert_eq!(
        stolen["reason_codes"],
        json!(["approval_token_principal_mismatch"]),
        "{stolen}"
    );
    assert!(
        !stolen.to_string().contains(&approval_token),
        "the answer repeats the token"
    );
    let allowed = verify(&base, &k2, &with_token).await;
    assert_eq!(allowed["allow"], json!(true), "{allowed}");
    assert!(
        allowed["reason_codes"]
            .as_array()
            .unwrap()
            .contains(&json!("approval_token_accepted")),
        "{allowed}"
    );
    let again = verify(&base, &k2, &with_token).await;
    assert_eq!(
        again["reason_codes"],
        json!(["approval_token_reused"]),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_answers_only_the_api_key_that_sent_it() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let (intent, token) = fx.intent(60_000);
    let k1 = fx.keys.agent.expose_secret();
    let k2 = issue_key(&base, &fx, "agent", Some("agent-two")).await;
    let mut body = verify_body(intent, token.expose_secret(), 1_000);
    body["idempotency_key"] = json!("shared-key-1");

    let first = verify(&base, k1, &body).await;
    assert_eq!(first["allow"], json!(true), "{first}");
    // Agent 2, same key and body: a decision of its own, not agent 1's answer.
    let second = verify(&base, &k2, &body).await;
    assert_eq!(second["allow"], json!(true), "{second}");
    assert_ne!(second["decision_id"], first["decision_id"], "{second}");
    // Each key's retry answers its own decision.
    assert_eq!(
        verify(&base, k1, &body).await["decision_id"],
        first["decision_id"]
    );
    assert_eq!(
        verify(&base, &k2, &body).await["decision_id"],
        second["decision_id"]
    );
    // Two reservations were made, not one.
    let (_, view) = call(
        &base,
        Method::GET,
        &format!("/harbor/intents/{intent}"),
        Some(k1),
        None,
    )
    .await;
    assert_eq!(view["reserved_cents"], json!(2_000), "{view}");

    // The header carries the same meaning, on another route: bootstrap.
    let bootstrap = json!({"operation": BOOK, "requested_spend_cents": 500}).to_string();
    let client = reqwest::Client::new();
    let mut intents = Vec::new();
    for key in [k1, k2.as_str()] {
        let answer: Value = client
            .post(format!("{base}/v1/sandbox/guardrails/bootstrap"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .header("idempotency-key", "shared-key-2")
            .body(bootstrap.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        intents.push(answer["intent_id"].as_str().unwrap().to_owned());
    }
    assert_ne!(intents[0], intents[1]);

    // Agent 2 reusing its own key with another body is its own 409.
    let mut other = body.clone();
    other["requested_spend_cents"] = json!(2_000);
    let (status, answer) = call(
        &base,
        Method::POST,
        "/verify",
        Some(&k2),
        Some(&other.to_string()),
    )
    .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (409, Some("idempotency_key_reused")),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_counts_distinct_approvers_not_keys() {
    let mut config = EngineConfig::new(Storage::Memory);
    config.default_org_policy = None;
    config.default_tenant_policy = Some(PolicyFile {
        text: format!(
            "version: 1\nname: quorum\ndefault_deny: true\ntools:\n  {BOOK}: {{side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}}\nspend_controls:\n  tools:\n    {BOOK}: {{approval_threshold_cents: 1000}}\n  approval: {{quorum: 2}}\n"
        ),
        file: "quorum.yaml".to_owned(),
    });
    let fx = Fixture::with_config(config);
    let base = common::serve(fx.engine.clone()).await;
    let (intent, token) = fx.intent(60_000);
    let alice_1 = issue_key(&base, &fx, "operator", Some("alice@example.com")).await;
    let alice_2 = issue_key(&base, &fx, "operator", Some("alice@example.com")).await;
    let bob = issue_key(&base, &fx, "operator", Some("bob@example.com")).await;

    let held = verify(
        &base,
        fx.keys.agent.expose_secret(),
        &verify_body(intent, token.expose_secret(), 5_000),
    )
    .await;
    let approval = held["approval_request_id"].as_str().unwrap().to_owned();
    let approve = format!("/v1/approvals/{approval}/approve");

    let (status, first) = call(&base, Method::POST, &approve, Some(&alice_1), None).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["state"].as_str(), first["approvals"].clone()),
        (Some("pending"), json!(1)),
        "{first}"
    );
    // The same person with another key: 409, and the request still waits.
    for key in [&alice_2, &alice_1] {
        let (status, twice) = call(&base, Method::POST, &approve, Some(key), None).await;
        assert_eq!(
            (status, twice["error"].as_str()),
            (409, Some("approval_already_given")),
            "{twice}"
        );
    }
    let (_, status_now) = call(
        &base,
        Method::GET,
        &format!("/v1/approvals/{approval}"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(
        (
            status_now["state"].as_str(),
            status_now["approvals"].clone()
        ),
        (Some("pending"), json!(1)),
        "{status_now}"
    );
    // A second person meets the quorum; the ledger names two different approvers.
    let (status, done) = call(&base, Method::POST, &approve, Some(&bob), None).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("approved")),
        "{done}"
    );
    let events = ledger_events(&base, &bob).await;
    let approved = events
        .iter()
        .find(|e| e["event"] == "approval.approved")
        .expect("an approval.approved event");
    assert_eq!(
        approved["payload"]["approvers"],
        json!(["alice@example.com", "bob@example.com"]),
        "{approved}"
    );
    let votes = events
        .iter()
        .filter(|e| {
            e["event"]
                .as_str()
                .is_some_and(|n| n == "approval.vote" || n == "approval.approved")
        })
        .count();
    assert_eq!(votes, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_with_control_characters_are_422_naming_the_field() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let (intent, token) = fx.intent(60_000);
    let agent = fx.keys.agent.expose_secret();
    let operator = fx.keys.operator.expose_secret();
    let before = ledger_events(&base, operator).await.len();

    for field in [
        "agent_subject",
        "vendor_id",
        "tool_name",
        "task_id",
        "workflow_id",
        "tool_call_id",
        "idempotency_key",
        "operation",
    ] {
        for bad in [
            "acme\u{0}evil",
            "a\u{1f}b",
            "line\nbreak",
            "tab\there",
            "del\u{7f}",
        ] {
            let mut body = verify_body(intent, token.expose_secret(), 100);
            body[field] = json!(bad);
            let (status, answer) = call(
                &base,
                Method::POST,
                "/verify",
                Some(agent),
                Some(&body.to_string()),
            )
            .await;
            assert_eq!(
                (status, answer["error"].as_str()),
                (422, Some("invalid_characters")),
                "{field} {bad:?}: {answer}"
            );
            assert!(
                answer["message"].as_str().unwrap().contains(field),
                "{answer}"
            );
        }
    }
    // Other routes' identifiers too.
    for (path, key, body, field) in [
        (
            "/v1/sandbox/guardrails/bootstrap",
            agent,
            json!({"operation": "travel.\u{1}book", "requested_spend_cents": 1}),
            "operation",
        ),
        (
            "/harbor/intents",
            agent,
            json!({"allowed_tools": [BOOK, "x\u{0}"], "budget_cents": 1}),
            "allowed_tools[1]",
        ),
        (
            "/v1/spend/preflight",
            agent,
            json!({"intent_id": intent, "operation": BOOK, "vendor_id": "v\u{1f}"}),
            "vendor_id",
        ),
        (
            "/v1/admin/api-keys",
            fx.keys.tenant_admin.expose_secret(),
            json!({"role": "operator", "subject": "eve\r\nApproved-By: root"}),
            "subject",
        ),
    ] {
        let (status, answer) = call(
            &base,
            Method::POST,
            path,
            Some(key),
            Some(&body.to_string()),
        )
        .await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (422, Some("invalid_characters")),
            "{path}: {answer}"
        );
        assert!(
            answer["message"].as_str().unwrap().contains(field),
            "{path}: {answer}"
        );
    }
    // Nothing reached the ledger, and printable Unicode is still fine.
    assert_eq!(ledger_events(&base, operator).await.len(), before);
    let mut body = verify_body(intent, token.expose_secret(), 100);
    body["agent_subject"] = json!("agent-ü-東京");
    assert_eq!(verify(&base, agent, &body).await["allow"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identical_retry_of_a_denied_hold_gets_the_same_deny_for_a_while() {
    let clock = Clock::manual(1_773_669_600_000);
    let mut config = EngineConfig::new(Storage::Memory);
    config.clock = clock.clone();
    let fx = Fixture::with_config(config);
    let base = common::serve(fx.engine.clone()).await;
    let (intent, token) = fx.intent(60_000);
    let agent = fx.keys.agent.expose_secret();
    let operator = fx.keys.operator.expose_secret();
    let body = verify_body(intent, token.expose_secret(), 18_700);

    let held = verify(&base, agent, &body).await;
    let approval = held["approval_request_id"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &base,
        Method::POST,
        &format!("/v1/approvals/{approval}/deny"),
        Some(operator),
        None,
    )
    .await;
    assert_eq!(status, 200);

    // Retried at once, and again nine minutes later: the same deny, nothing opened.
    for wait_ms in [1_000, 9 * 60_000] {
        clock.advance_ms(wait_ms);
        let retry = verify(&base, agent, &body).await;
        assert_eq!(
            (
                retry["allow"].clone(),
                retry["approval_required"].clone(),
                retry["code"].as_str(),
                retry["approval_request_id"].as_str()
            ),
            (
                json!(false),
                json!(false),
                Some("approval_denied"),
                Some(approval.as_str())
            ),
            "{retry}"
        );
        assert_eq!(retry["reason_codes"], json!(["approval_denied"]), "{retry}");
        assert!(pending(&base, operator).await.is_empty());
    }
    // Another request (another amount) is held as usual.
    let other = verify(
        &base,
        agent,
        &verify_body(intent, token.expose_secret(), 18_000),
    )
    .await;
    assert_eq!(other["approval_required"], json!(true), "{other}");
    assert_ne!(
        other["approval_request_id"].as_str(),
        Some(approval.as_str())
    );

    // After the window (10 minutes), the identical request may be asked again.
    clock.advance_ms(60_001);
    let asked = verify(&base, agent, &body).await;
    assert_eq!(asked["approval_required"], json!(true), "{asked}");
    assert_ne!(
        asked["approval_request_id"].as_str(),
        Some(approval.as_str())
    );
    assert_eq!(pending(&base, operator).await.len(), 2);
}

/// A browser-like console client over HTTP: no redirects followed, the session
/// cookie sent by hand, this server's `Origin` on POSTs.
struct Console {
    base: String,
    client: reqwest::Client,
    cookie: String,
}

struct Page {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    body: String,
}

impl Console {
    async fn post_raw(base: &str, path: &str, form: &str, headers: &[(&str, &str)]) -> Page {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut req = client
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        Self::page(req.send().await.unwrap()).await
    }

    async fn page(resp: reqwest::Response) -> Page {
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let (location, set_cookie) = (header("location"), header("set-cookie"));
        Page {
            status: resp.status().as_u16(),
            location,
            set_cookie,
            body: resp.text().await.unwrap(),
        }
    }

    async fn sign_in(base: &str, key: &str) -> Self {
        let origin = base.to_owned();
        let page = Self::post_raw(
            base,
            "/console/login",
            &format!("api_key={key}"),
            &[("origin", &origin), ("sec-fetch-site", "same-origin")],
        )
        .await;
        assert_eq!(page.status, 303, "{}", page.body);
        let cookie = page
            .set_cookie
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        Self {
            base: base.to_owned(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie,
        }
    }

    async fn get(&self, path: &str) -> Page {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        Self::page(resp).await
    }

    async fn post(&self, path: &str, form: &str, origin: &str) -> Page {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned())
            .send()
            .await
            .unwrap();
        Self::page(resp).await
    }

    /// The first live event of `/console/events?query`, as its JSON data.
    async fn live(&self, query: &str) -> Value {
        let mut resp = self
            .client
            .get(format!("{}/console/events?{query}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let mut text = String::new();
        while !text.contains("\n\n") {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), resp.chunk())
                .await
                .expect("no live event")
                .unwrap()
                .expect("the stream ended");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(text.starts_with("event: approvals"), "{text}");
        let data: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        serde_json::from_str(&data).unwrap()
    }
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_owned()
}

/// The approval ids of a queue page's rows, in order.
fn rows_of(page: &str) -> Vec<String> {
    page.split("data-approval=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect()
}

/// The `href` of the element with `id` (HTML-escaped `&` undone).
fn href_of(page: &str, id: &str) -> Option<String> {
    let at = page.find(&format!("id=\"{id}\" href=\""))?;
    let rest = &page[at + format!("id=\"{id}\" href=\"").len()..];
    let href = rest.split('"').next().unwrap().replace("&amp;", "&");
    let hidden = rest.split('>').next().unwrap().contains("hidden");
    (!href.is_empty() && !hidden).then_some(href)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_queue_pages_newest_first_counts_every_hold_and_filters() {
    let clock = Clock::manual(1_773_669_600_000);
    let mut config = EngineConfig::new(Storage::Memory);
    config.clock = clock.clone();
    config.approval_requests_per_agent_per_minute = 1_000;
    config.pending_approvals_per_intent = 1_000;
    let fx = Fixture::with_config(config);
    let base = common::serve(fx.engine.clone()).await;
    let (intent, token) = fx.intent(60_000);

    // Twelve agent keys open 241 holds; then the genuine one, the newest.
    let mut flood = Vec::new();
    for i in 0..12 {
        let key = issue_key(&base, &fx, "agent", Some(&format!("flood-{i}"))).await;
        flood.push(fx.engine.authenticate(&key).await.unwrap());
    }
    let mut opened = Vec::new();
    for n in 0..241_u64 {
        clock.advance_ms(1);
        let req = common::verify_request(intent, &token, 15_001 + n);
        let held = fx
            .engine
            .verify_now(&flood[(n % 12) as usize], &req)
            .unwrap();
        opened.push(held.approval_request_id.unwrap().to_string());
    }
    clock.advance_ms(1);
    let genuine_req = paybond_middleware_core::wire::VerifyRequest {
        agent_subject: None,
        ..common::verify_request(intent, &token, 19_900)
    };
    let genuine = fx
        .engine
        .verify_now(&fx.agent, &genuine_req)
        .unwrap()
        .approval_request_id
        .unwrap()
        .to_string();
    opened.push(genuine.clone());

    let console = Console::sign_in(&base, fx.keys.operator.expose_secret()).await;
    let first = console.get("/console/approvals").await;
    assert_eq!(first.status, 200);
    assert!(first.body.contains("Live: 242 pending"), "{}", first.body);
    let rows = rows_of(&first.body);
    assert_eq!(rows.len(), 50);
    assert_eq!(rows[0], genuine, "the newest hold is not first");

    // Every hold is on some page, newest first, each once.
    let mut seen = rows;
    let mut next = href_of(&first.body, "next-page");
    let mut pages = 1;
    while let Some(href) = next {
        let page = console.get(&href).await;
        assert_eq!(page.status, 200, "{href}");
        assert!(page.body.contains("Live: 242 pending"));
        seen.extend(rows_of(&page.body));
        next = href_of(&page.body, "next-page");
        pages += 1;
    }
    assert_eq!(pages, 5);
    let mut newest_first = opened.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let oldest = console.get("/console/approvals?order=oldest").await;
    assert_eq!(rows_of(&oldest.body)[0], opened[0]);

    // Filters: by agent, by tool, by amount (in dollars), and together.
    let mine = console
        .get(&format!(
            "/console/approvals?agent={}",
            fx.agent.subject.replace(':', "%3A")
        ))
        .await;
    assert_eq!(rows_of(&mine.body), vec![genuine.clone()], "{}", mine.body);
    assert!(
        mine.body.contains("Live: 242 pending, 1 match the filters"),
        "{}",
        mine.body
    );
    let flood_3 = console.get("/console/approvals?agent=flood-3").await;
    assert_eq!(rows_of(&flood_3.body).len(), 20);
    let tool = console
        .get(&format!("/console/approvals?tool={BOOK}&max_amount=150.10"))
        .await;
    // 150.01 to 150.10 USD: ten holds.
    assert_eq!(rows_of(&tool.body).len(), 10, "{}", tool.body);
    let other_tool = console.get("/console/approvals?tool=shop.buy").await;
    assert!(rows_of(&other_tool.body).is_empty());
    let band = console
        .get("/console/approvals?min_amount=199&max_amount=199.00&agent=flood-3")
        .await;
    // The flood's holds are 150.01 to 152.41 USD.
    assert!(rows_of(&band.body).is_empty());
    let top = console.get("/console/approvals?min_amount=199").await;
    assert_eq!(rows_of(&top.body), vec![genuine.clone()]);
    let bad = console.get("/console/approvals?min_amount=lots").await;
    assert_eq!(bad.status, 200);
    assert!(bad.body.contains("Minimum amount"), "{}", bad.body);
    assert_eq!(rows_of(&bad.body).len(), 50);

    // The live stream says the true count and keeps the page's filters.
    let live = console.live("").await;
    assert_eq!(live["pending"], json!(242), "{live}");
    assert_eq!(live["status"], "Live: 242 pending");
    assert!(live["rows"].as_str().unwrap().contains(&genuine));
    assert!(live["next"].as_str().unwrap().contains("cursor="));
    let live = console.live("agent=flood-3&order=oldest").await;
    assert_eq!(
        (live["pending"].clone(), live["matching"].clone()),
        (json!(242), json!(20))
    );
    assert!(!live["rows"].as_str().unwrap().contains(&genuine));
    assert!(live["next"].is_null());

    // The API answers the same filters.
    let (_, api) = call(
        &base,
        Method::GET,
        "/v1/approvals?state=pending&agent=flood-3&max_amount_cents=15100",
        Some(fx.keys.operator.expose_secret()),
        None,
    )
    .await;
    let listed = api["approvals"].as_array().unwrap();
    assert!(!listed.is_empty());
    assert!(
        listed
            .iter()
            .all(|a| a["agent"] == "flood-3"
                && a["requested_spend_cents"].as_u64().unwrap() <= 15_100)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_and_deny_buttons_show_only_for_roles_that_may_use_them() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let (intent, token) = fx.intent(60_000);
    let held = fx
        .engine
        .verify_now(&fx.agent, &common::verify_request(intent, &token, 18_700))
        .unwrap();
    let approval = held.approval_request_id.unwrap();

    for (key, may_decide) in [
        (fx.keys.operator.expose_secret(), true),
        (fx.keys.tenant_admin.expose_secret(), false),
        (fx.keys.agent.expose_secret(), false),
    ] {
        let console = Console::sign_in(&base, key).await;
        let page = console.get("/console/approvals").await;
        assert_eq!(rows_of(&page.body), vec![approval.to_string()]);
        let approve = format!("action=\"/console/approvals/{approval}/approve\"");
        let deny = format!("action=\"/console/approvals/{approval}/deny\"");
        assert_eq!(page.body.contains(&approve), may_decide, "{}", page.body);
        assert_eq!(page.body.contains(&deny), may_decide, "{}", page.body);
        assert_eq!(page.body.contains(">Approve</button>"), may_decide);
        assert_eq!(page.body.contains("read-only"), !may_decide);
        // The live stream's rows follow the same rule.
        let live = console.live("").await;
        assert_eq!(
            live["rows"].as_str().unwrap().contains(&approve),
            may_decide,
            "{live}"
        );
    }
    assert_eq!(
        fx.engine
            .approval(&fx.operator, approval)
            .await
            .unwrap()
            .state,
        paybond_middleware_core::wire::ApprovalState::Pending
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_posts_from_a_null_or_cross_site_origin_are_refused() {
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let operator = fx.keys.operator.expose_secret();
    let form = format!("api_key={operator}");

    // Login CSRF from a sandboxed frame (`Origin: null`) or another site.
    for headers in [
        vec![("origin", "null")],
        vec![("origin", "null"), ("sec-fetch-site", "cross-site")],
        vec![("origin", "http://evil.example")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
    ] {
        let page = Console::post_raw(&base, "/console/login", &form, &headers).await;
        assert_eq!(page.status, 403, "{headers:?}: {}", page.body);
        assert!(page.set_cookie.is_none(), "{headers:?}");
        assert!(!page.body.contains(operator));
    }
    // From the console's own page it works, and the pages ask browsers to name
    // their origin on the console's own POSTs.
    let console = Console::sign_in(&base, operator).await;
    let resp = reqwest::Client::new()
        .get(format!("{base}/console/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers().get("referrer-policy").unwrap(),
        "same-origin"
    );

    // A signed-in POST with `Origin: null` is refused too, whatever its CSRF token.
    let (intent, token) = fx.intent(60_000);
    let held = fx
        .engine
        .verify_now(&fx.agent, &common::verify_request(intent, &token, 18_700))
        .unwrap();
    let approval = held.approval_request_id.unwrap();
    let page = console.get("/console/approvals").await;
    let csrf = csrf_of(&page.body);
    let path = format!("/console/approvals/{approval}/approve");
    let refused = console.post(&path, &format!("csrf={csrf}"), "null").await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(
        fx.engine
            .approval(&fx.operator, approval)
            .await
            .unwrap()
            .state,
        paybond_middleware_core::wire::ApprovalState::Pending
    );
    let done = console.post(&path, &format!("csrf={csrf}"), &base).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(
        done.location
            .unwrap()
            .starts_with("/console/approvals?done=")
    );
}
