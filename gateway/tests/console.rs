//! The operator console's handlers, through the router with `oneshot`: sign-in and
//! its cookie, CSRF, what an agent key may do, the pages, the live queue.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::Blocking;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::Fixture;
use paybond_gateway::server::router;
use paybond_middleware_core::wire::{ApprovalState, VerifyRequest};
use tower::ServiceExt as _;
use uuid::Uuid;

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn send(
    app: &axum::Router,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "127.0.0.1:8787");
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    let body = match form {
        Some(f) => {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            Body::from(f.to_owned())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

fn location(a: &Answer) -> &str {
    a.headers.get(header::LOCATION).unwrap().to_str().unwrap()
}

/// Signs in and checks the landing page; the session cookie (`name=value`).
async fn sign_in(app: &axum::Router, key: &str, landing: &str) -> String {
    let a = send(
        app,
        "POST",
        "/console/login",
        None,
        Some(&format!("api_key={key}")),
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(location(&a), landing);
    let cookie = a
        .headers
        .get(header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains(key));
    cookie.split(';').next().unwrap().to_owned()
}

fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_owned()
}

fn hold(fx: &Fixture) -> Uuid {
    let (intent, token) = fx.intent(60_000);
    let held = fx
        .engine
        .verify_now(
            &fx.agent,
            &VerifyRequest {
                vendor_id: Some("vendor_grand_hotel".into()),
                ..common::verify_request(intent, &token, 18_700)
            },
        )
        .unwrap();
    assert!(held.approval_required);
    held.approval_request_id.unwrap()
}

#[tokio::test]
async fn sign_in_keeps_the_key_on_the_server_and_every_change_needs_the_csrf_token() {
    let fx = Fixture::new();
    let app = router(fx.engine.clone());
    let approval = hold(&fx);
    let operator = fx.keys.operator.expose_secret();

    // Not signed in: to the sign-in page, which has a labelled key field.
    let a = send(&app, "GET", "/console", None, None).await;
    assert_eq!(
        (a.status, location(&a)),
        (StatusCode::SEE_OTHER, "/console/login")
    );
    // A page asked for first is where sign-in returns.
    let a = send(&app, "GET", "/console/approvals?order=oldest", None, None).await;
    assert_eq!(
        location(&a),
        "/console/login?next=%2Fconsole%2Fapprovals%3Forder%3Doldest"
    );
    let login = send(
        &app,
        "GET",
        "/console/login?next=%2Fconsole%2Fapprovals%3Forder%3Doldest",
        None,
        None,
    )
    .await;
    assert!(
        login
            .body
            .contains("name=\"next\" value=\"/console/approvals?order=oldest\"")
    );
    let back = send(
        &app,
        "POST",
        "/console/login",
        None,
        Some(&format!(
            "api_key={operator}&next=%2Fconsole%2Fapprovals%3Forder%3Doldest"
        )),
    )
    .await;
    assert_eq!(location(&back), "/console/approvals?order=oldest");
    // Only a path of the console is followed.
    for elsewhere in [
        "https://evil.example/",
        "//evil.example/console/x",
        "/consolex",
        "/console/../x",
    ] {
        let back = send(
            &app,
            "POST",
            "/console/login",
            None,
            Some(&format!(
                "api_key={operator}&next={}",
                common::percent_encode(elsewhere)
            )),
        )
        .await;
        assert_eq!(location(&back), "/console/overview", "{elsewhere}");
    }
    let login = send(&app, "GET", "/console/login", None, None).await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(
        login.body.contains("<label for=\"api_key\">"),
        "{}",
        login.body
    );
    assert!(
        login
            .headers
            .get(header::CONTENT_SECURITY_POLICY)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    assert!(
        !login.body.contains("http://") && !login.body.contains("https://"),
        "no external assets"
    );

    // A wrong key: refused, not echoed.
    let a = send(
        &app,
        "POST",
        "/console/login",
        None,
        Some("api_key=paybond_sk_sandbox_wrong"),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(!a.body.contains("paybond_sk_sandbox_wrong"));
    assert!(a.headers.get(header::SET_COOKIE).is_none());

    // A sign-in posted from another site is refused.
    let cross = Request::builder()
        .method("POST")
        .uri("/console/login")
        .header(header::HOST, "127.0.0.1:8787")
        .header(header::ORIGIN, "http://evil.example")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("api_key={operator}")))
        .unwrap();
    let resp = app.clone().oneshot(cross).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.headers().get(header::SET_COOKIE).is_none());

    let cookie = sign_in(&app, operator, "/console/overview").await;
    let page = send(&app, "GET", "/console/approvals", Some(&cookie), None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains(operator), "the key is in the page");
    assert!(
        page.body.contains(&format!("id=\"approval-{approval}\"")),
        "{}",
        page.body
    );
    assert!(page.body.contains("187.00 USD") && page.body.contains("vendor_grand_hotel"));
    assert!(page.body.contains("approval_threshold_exceeded"));
    let token = csrf(&page.body);

    // Without the token, with a wrong one, or from another site: refused.
    let path = format!("/console/approvals/{approval}/approve");
    let a = send(&app, "POST", &path, Some(&cookie), Some("")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = send(&app, "POST", &path, Some(&cookie), Some("csrf=forged")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let cross = Request::builder()
        .method("POST")
        .uri(&path)
        .header(header::HOST, "127.0.0.1:8787")
        .header(header::ORIGIN, "http://evil.example")
        .header(header::COOKIE, &cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("csrf={token}")))
        .unwrap();
    let resp = app.clone().oneshot(cross).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        fx.engine
            .approval(&fx.operator, approval)
            .await
            .unwrap()
            .state,
        ApprovalState::Pending
    );

    // With it: approved.
    let a = send(
        &app,
        "POST",
        &path,
        Some(&cookie),
        Some(&format!("csrf={token}")),
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert!(location(&a).starts_with("/console/approvals?done="));
    assert_eq!(
        fx.engine
            .approval(&fx.operator, approval)
            .await
            .unwrap()
            .state,
        ApprovalState::Approved
    );
    let page = send(&app, "GET", "/console/approvals", Some(&cookie), None).await;
    assert!(!page.body.contains(&format!("id=\"approval-{approval}\"")));

    // Signed out: the session no longer works.
    let a = send(
        &app,
        "POST",
        "/console/logout",
        Some(&cookie),
        Some(&format!("csrf={token}")),
    )
    .await;
    assert_eq!(location(&a), "/console/login");
    let a = send(&app, "GET", "/console/approvals", Some(&cookie), None).await;
    assert_eq!(location(&a), "/console/login?next=%2Fconsole%2Fapprovals");
}

#[tokio::test]
async fn an_agent_key_sees_the_queue_but_cannot_approve() {
    let fx = Fixture::new();
    let app = router(fx.engine.clone());
    let approval = hold(&fx);
    let cookie = sign_in(&app, fx.keys.agent.expose_secret(), "/console/approvals").await;
    let page = send(&app, "GET", "/console/approvals", Some(&cookie), None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(&format!("id=\"approval-{approval}\"")));
    assert!(
        !page.body.contains("/approve\""),
        "an approve button for an agent"
    );
    let token = csrf(&page.body);
    let a = send(
        &app,
        "POST",
        &format!("/console/approvals/{approval}/approve"),
        Some(&cookie),
        Some(&format!("csrf={token}")),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(a.body.contains("forbidden_role"), "{}", a.body);
    assert_eq!(
        fx.engine
            .approval(&fx.operator, approval)
            .await
            .unwrap()
            .state,
        ApprovalState::Pending
    );
    // The ledger is for operators.
    let a = send(&app, "GET", "/console/ledger", Some(&cookie), None).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_pages_show_intents_decisions_with_their_checks_the_ledger_and_the_policy() {
    let fx = Fixture::new();
    let app = router(fx.engine.clone());
    hold(&fx);
    let intent = fx
        .engine
        .operator_intents(&fx.operator, &Default::default())
        .await
        .unwrap()
        .intents[0]
        .intent_id;
    let cookie = sign_in(&app, fx.keys.operator.expose_secret(), "/console/overview").await;

    let list = send(&app, "GET", "/console/intents", Some(&cookie), None).await;
    assert!(
        list.body.contains(&format!("/console/intents/{intent}")),
        "{}",
        list.body
    );
    let detail = send(
        &app,
        "GET",
        &format!("/console/intents/{intent}"),
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(detail.status, StatusCode::OK);
    assert!(
        detail.body.contains("<svg class=\"bar\" role=\"img\""),
        "{}",
        detail.body
    );
    assert!(detail.body.contains("approval_threshold") && detail.body.contains("checks</summary>"));
    let missing = send(
        &app,
        "GET",
        &format!("/console/intents/{}", Uuid::new_v4()),
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let ledger = send(&app, "GET", "/console/ledger", Some(&cookie), None).await;
    assert_eq!(ledger.status, StatusCode::OK);
    assert!(ledger.body.contains("decision.hold"), "{}", ledger.body);
    let verified = send(
        &app,
        "POST",
        "/console/ledger/verify",
        Some(&cookie),
        Some(&format!("csrf={}", csrf(&ledger.body))),
    )
    .await;
    assert!(verified.body.contains("Chain valid"), "{}", verified.body);

    let policy = send(&app, "GET", "/console/policy", Some(&cookie), None).await;
    assert!(policy.body.contains("travel.book_hotel") && policy.body.contains("sha256:"));

    // The live queue is a server-sent event stream.
    let req = Request::builder()
        .uri("/console/events")
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(
        resp.headers().get(header::CONTENT_TYPE).unwrap(),
        "text/event-stream"
    );
    let mut body = resp.into_body().into_data_stream();
    use futures_util::StreamExt as _;
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = String::from_utf8(first.to_vec()).unwrap();
    assert!(first.starts_with("event: approvals"), "{first}");
    assert!(first.contains("data-approval="), "{first}");
    // Signed out: the stream says so once and ends.
    let a = send(
        &app,
        "POST",
        "/console/logout",
        Some(&cookie),
        Some(&format!("csrf={}", csrf(&policy.body))),
    )
    .await;
    assert_eq!(location(&a), "/console/login");
    let mut rest = String::new();
    let wait = std::time::Duration::from_secs(5);
    while let Some(chunk) = tokio::time::timeout(wait, body.next())
        .await
        .expect("the stream neither spoke nor ended")
    {
        rest.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(rest.contains("event: signed_out"), "{rest}");
    assert_eq!(rest.matches("event: signed_out").count(), 1, "{rest}");

    let css = send(&app, "GET", "/console/assets/console.css", None, None).await;
    assert_eq!(
        css.headers.get(header::CONTENT_TYPE).unwrap(),
        "text/css; charset=utf-8"
    );
}
