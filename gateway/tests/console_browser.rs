//! The console in a real browser: headless Chromium driven over WebDriver
//! (chromedriver). An operator signs in, sees a hold an agent just made appear
//! without reloading, approves it, and the agent's retry is allowed; the ledger
//! verifies; an agent key's session cannot approve. Screenshots of each page go to
//! `target/console-screenshots/`.
//!
//! Needs `chromedriver` and `chromium` (`.ci/browser` installs Debian's); skipped
//! only with `PAYBOND_SKIP_BROWSER=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use common::Blocking;

use std::time::{Duration, Instant};

use common::Fixture;
use common::browser::Browser;
use paybond_gateway::Storage;
use paybond_middleware_core::ApprovalToken;
use paybond_middleware_core::wire::{ApprovalState, VerifyRequest, VerifyResult};
use serde_json::json;
use uuid::Uuid;

fn verify_request(
    intent: Uuid,
    token: &paybond_middleware_core::CapabilityToken,
    approval: Option<ApprovalToken>,
) -> VerifyRequest {
    VerifyRequest {
        vendor_id: Some("vendor_grand_hotel".into()),
        tool_call_id: Some("call_book_187".into()),
        approval_token: approval,
        ..common::verify_request(intent, token, 18_700)
    }
}

/// The agent's verify, as the layer would send it.
async fn agent_verify(fx: &Fixture, request: VerifyRequest) -> VerifyResult {
    let engine = fx.engine.clone();
    let agent = fx.agent.clone();
    tokio::task::spawn_blocking(move || engine.verify_now(&agent, &request).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_approves_a_live_hold_in_the_browser_and_an_agent_cannot() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let fx = Fixture::new();
    let base = common::serve(fx.engine.clone()).await;
    let (intent, token) = fx.intent(60_000);

    // Sign in as operator: the queue is empty.
    browser.goto(&format!("{base}/console")).await;
    browser.wait_for("#api_key").await;
    assert!(browser.source().await.contains("<label for=\"api_key\">"));
    browser.screenshot("01-sign-in.png").await;
    browser.axe("the sign-in page").await;
    browser
        .sign_in(&base, fx.keys.operator.expose_secret(), "overview")
        .await;
    browser.goto(&format!("{base}/console/approvals")).await;
    browser.wait_for("#approval-rows").await;
    assert!(browser.text("#live-status").await.contains("0 pending"));
    let cookies = browser.raw("GET", "/cookie", None).await;
    let session = cookies
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "paybond_console")
        .unwrap();
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Strict");
    assert!(
        !browser
            .source()
            .await
            .contains(fx.keys.operator.expose_secret())
    );
    browser.screenshot("02-approvals-empty.png").await;

    // The agent's call is held; it appears without a reload.
    let held = agent_verify(&fx, verify_request(intent, &token, None)).await;
    assert!(held.approval_required);
    let approval = held.approval_request_id.unwrap();
    let before = browser.current_url().await;
    browser
        .wait_for(&format!("tr[data-approval=\"{approval}\"]"))
        .await;
    assert_eq!(browser.current_url().await, before, "the page was reloaded");
    let row = browser.text(&format!("#approval-{approval}")).await;
    assert!(
        row.contains("187.00 USD") && row.contains("vendor_grand_hotel"),
        "{row}"
    );
    assert!(
        row.contains("approval_threshold_exceeded") && row.contains("0/1"),
        "{row}"
    );
    assert!(browser.text("#live-status").await.contains("1 pending"));
    browser.screenshot("03-approvals-live-hold.png").await;
    browser.axe("the approval queue").await;

    // Approved from the page; the agent's retry with the token is allowed.
    browser
        .click(&format!("#approval-{approval} button.primary"))
        .await;
    browser.wait_for(".flash").await;
    assert!(
        browser.text(".flash").await.contains("approved"),
        "{}",
        browser.text(".flash").await
    );
    assert!(
        browser
            .find_all(&format!("tr[data-approval=\"{approval}\"]"))
            .await
            .is_empty()
    );
    browser.screenshot("04-approved.png").await;
    let status = fx.engine.approval(&fx.agent, approval).await.unwrap();
    assert_eq!(status.state, ApprovalState::Approved);
    let retry = agent_verify(&fx, verify_request(intent, &token, status.approval_token)).await;
    assert!(retry.allow, "{retry:?}");

    // The intent: budget bar, decisions with their checks.
    browser
        .goto(&format!("{base}/console/intents/{intent}"))
        .await;
    browser.wait_for("svg.bar").await;
    let page = browser.text("main").await;
    assert!(page.contains("hold") && page.contains("allow"), "{page}");
    browser.click("details summary").await;
    assert!(browser.text("details").await.contains("approval_threshold"));
    browser.screenshot("05-intent-detail.png").await;
    browser.axe("an intent's page").await;

    // The ledger verifies.
    browser.goto(&format!("{base}/console/ledger")).await;
    browser.click("#verify-ledger").await;
    browser.wait_for("#chain-status.ok").await;
    assert!(browser.text("#chain-status").await.contains("Chain valid"));
    browser.screenshot("06-ledger-verified.png").await;
    browser.axe("the ledger").await;
    browser.goto(&format!("{base}/console/policy")).await;
    browser.wait_for("pre").await;
    assert!(browser.text("pre").await.contains("travel.book_hotel"));
    browser.screenshot("07-policy.png").await;
    browser.axe("the policy page").await;
    browser.goto(&format!("{base}/console/intents")).await;
    browser.wait_for("main table").await;
    browser.axe("the intents list").await;

    // Signed out, then in with the agent key: the queue shows, nothing to approve,
    // and a forged approve from the page is refused.
    browser.click("header button[type=submit]").await;
    browser.wait_for("#api_key").await;
    browser
        .sign_in(&base, fx.keys.agent.expose_secret(), "approvals")
        .await;
    let (second, second_token) = fx.intent(60_000);
    let held = agent_verify(&fx, verify_request(second, &second_token, None)).await;
    let approval = held.approval_request_id.unwrap();
    browser
        .wait_for(&format!("tr[data-approval=\"{approval}\"]"))
        .await;
    assert!(browser.find_all("#approval-rows button").await.is_empty());
    assert!(browser.text("main").await.contains("read-only"));
    browser.screenshot("08-agent-read-only.png").await;
    browser.axe("the agent's queue").await;
    let forced = browser
        .script(&format!(
            "const t = document.querySelector('input[name=csrf]').value;
             return fetch('/console/approvals/{approval}/approve', {{method: 'POST',
               headers: {{'content-type': 'application/x-www-form-urlencoded'}},
               body: 'csrf=' + encodeURIComponent(t)}}).then(r => r.status);"
        ))
        .await;
    assert_eq!(forced, 403);
    assert_eq!(
        fx.engine
            .approval(&fx.operator, approval)
            .await
            .unwrap()
            .state,
        ApprovalState::Pending
    );
    browser.raw("DELETE", "", None).await;
}

/// The overview, decision search, a decision's page and what-if in the browser, on
/// a scripted run of agents over three days: the numbers shown are the engine's,
/// the overview updates live, the queue answers the keyboard (confirming a large
/// approval), and every page passes axe-core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_reads_spend_finds_decisions_and_runs_what_if_in_the_browser() {
    use common::activity::{Activity, DAY_MS, START_MS, stricter_policy};
    let Some(browser) = Browser::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("paybond.db");
    let mut run = tokio::task::spawn_blocking(move || Activity::run(Storage::File(db)))
        .await
        .unwrap();
    let engine = run.engine().clone();
    let base = common::serve(engine.clone()).await;
    let usd = |c: u64| paybond_middleware_core::format_money(c, "usd");

    // The landing page: the overview, with today's spend and the queue's size.
    browser
        .sign_in(&base, run.fx.keys.operator.expose_secret(), "overview")
        .await;
    // The engine's own record: today's consumed amounts and decisions on the
    // ledger, and its pending approvals.
    let today = (START_MS + 2 * DAY_MS).div_euclid(DAY_MS) * DAY_MS;
    let now = engine.clock().now_ms();
    let events = engine
        .ledger_events(&run.fx.operator, 0, 1000)
        .await
        .unwrap();
    let spent: u64 = events
        .iter()
        .filter(|e| e.event == "reservation.consumed" && e.at_ms >= today)
        .map(|e| e.payload["actual_cents"].as_u64().unwrap())
        .sum();
    assert_eq!(spent, run.consumed[&today].values().sum::<u64>());
    let decided_last_hour = events
        .iter()
        .filter(|e| e.event.starts_with("decision.") && e.at_ms > now - 3_600_000)
        .count();
    assert_eq!(browser.text("#spent-today").await, usd(spent));
    assert_eq!(
        browser.text("#decided-hour").await,
        decided_last_hour.to_string()
    );
    assert_eq!(
        browser.text("#pending-approvals").await,
        engine.pending_approvals().await.unwrap().to_string()
    );
    for chart in ["spend-per-day", "spend-per-hour", "decisions-per-minute"] {
        let label = browser
            .script(&format!(
                "return document.querySelector('#{chart} svg').getAttribute('aria-label');"
            ))
            .await;
        assert!(
            label
                .as_str()
                .unwrap()
                .contains("The table below lists every value")
        );
    }
    browser.screenshot("10-overview.png").await;
    browser.axe("the overview").await;

    // Live: a new settled purchase shows without a reload.
    let before = browser.current_url().await;
    let shown = tokio::task::spawn_blocking(move || {
        let r = run.call(1, "shop.buy", 1_500, Some("vendor_shop"), None);
        run.settle(1, "shop.buy", &r, Some(1_500));
        run
    })
    .await
    .unwrap();
    run = shown;
    let now_spent = usd(spent + 1_500);
    browser.wait_text("#spent-today", |t| t == now_spent).await;
    assert_eq!(browser.current_url().await, before, "the page was reloaded");

    // A top reason links to its decisions; their count is the one shown and the
    // engine's.
    let shown_count: usize = browser
        .script(
            "const a = document.querySelector(\"#top-reasons a[href*='reason=tool_cap_exceeded']\");
             return a.closest('tr').querySelector('td.num').innerText;",
        )
        .await
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    browser
        .click("#top-reasons a[href*='reason=tool_cap_exceeded']")
        .await;
    browser.wait_for("#decision-results").await;
    let found = engine
        .search_decisions(
            &run.fx.operator,
            &paybond_gateway::DecisionFilter {
                outcome: Some("deny".to_owned()),
                reason: Some("tool_cap_exceeded".to_owned()),
                from_ms: Some(engine.clock().now_ms() - DAY_MS),
                ..Default::default()
            },
            50,
        )
        .await
        .unwrap();
    assert_eq!(
        browser
            .find_all("#decision-results tr[data-decision]")
            .await
            .len(),
        found.rows.len()
    );
    assert_eq!(found.rows.len(), shown_count);
    assert!(!found.rows.is_empty());
    browser.screenshot("11-decisions.png").await;
    browser.axe("the decision search").await;

    // A decision's page, then one of its ledger entries.
    browser
        .goto(&format!("{base}/console/decisions/{}", run.approved_retry))
        .await;
    browser.wait_for("#proof-trace").await;
    assert!(browser.text("#approval").await.contains("ops-two"));
    browser.screenshot("12-decision.png").await;
    browser.axe("a decision's page").await;
    browser.click("#decision-ledger a").await;
    browser.wait_for("pre").await;
    assert!(
        browser
            .text("pre")
            .await
            .contains(&run.approved_retry.to_string())
    );
    browser.screenshot("15-ledger-entry.png").await;
    browser.axe("a ledger entry").await;
    browser.goto(&format!("{base}/console/intents")).await;
    browser.wait_for("main table").await;
    browser.screenshot("16-intents.png").await;

    // What-if: the policy from a file, the report's count as the engine's.
    let strict = stricter_policy();
    let expected = engine
        .what_if(
            &run.fx.operator,
            paybond_gateway::PolicyFile {
                text: strict.clone(),
                file: "strict.yaml".to_owned(),
            },
            None,
            None,
        )
        .await
        .unwrap();
    assert!(!expected.changes.is_empty());
    browser.goto(&format!("{base}/console/what-if")).await;
    browser.axe("the what-if form").await;
    let file = dir.path().join("strict.yaml");
    std::fs::write(&file, &strict).unwrap();
    browser.type_into("#w-file", file.to_str().unwrap()).await;
    let loaded = strict.clone();
    let start = Instant::now();
    while browser
        .script("return document.getElementById('w-policy').value;")
        .await
        .as_str()
        != Some(loaded.as_str())
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the file was not read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.click("#run-what-if").await;
    browser.wait_for("#what-if-report").await;
    assert_eq!(
        browser.text("#what-if-changed").await,
        expected.changes.len().to_string()
    );
    assert_eq!(
        browser.find_all("#what-if-changes a").await.len(),
        expected.changes.len()
    );
    browser
        .script("document.getElementById('what-if-report').scrollIntoView(); return 0;")
        .await;
    browser.screenshot("13-what-if.png").await;
    browser.axe("the what-if report").await;
    // A policy that does not validate: its problems at their lines.
    browser
        .script("document.getElementById('w-policy').value = 'version: 1\\nname: x\\ntools: 7\\n'; return 0;")
        .await;
    browser.click("#run-what-if").await;
    browser.wait_for("#policy-problems").await;
    assert!(browser.text("#policy-problems").await.contains(":3:"));
    browser.axe("the what-if form with problems").await;

    // The queue from the keyboard: j selects the pending payout, a asks to confirm
    // (200 USD is over ten times its 10 USD threshold); dismissed, nothing happens;
    // accepted, it is approved.
    browser.goto(&format!("{base}/console/approvals")).await;
    browser.wait_for("#approval-rows tr[data-approval]").await;
    browser.click("#keyboard-help summary").await;
    browser.screenshot("14-approvals-keyboard.png").await;
    browser
        .axe("the approval queue with its keyboard help")
        .await;
    browser.press("j").await;
    browser.press("a").await;
    assert!(browser.alert_text().await.contains("more than ten times"));
    browser.raw("POST", "/alert/dismiss", Some(json!({}))).await;
    assert_eq!(
        engine
            .approval(&run.fx.operator, run.pending)
            .await
            .unwrap()
            .state,
        ApprovalState::Pending
    );
    browser.press("a").await;
    browser.alert_text().await;
    browser.raw("POST", "/alert/accept", Some(json!({}))).await;
    browser.wait_for(".flash").await;
    assert!(browser.text(".flash").await.contains("approved"));
    assert_eq!(
        engine
            .approval(&run.fx.operator, run.pending)
            .await
            .unwrap()
            .state,
        ApprovalState::Approved
    );
    // A new hold appears; d denies it, with no question (30 USD is under ten times
    // its tool's 20 USD threshold).
    let (run, held) = tokio::task::spawn_blocking(move || {
        let held = run.call(2, "shop.buy", 3_000, Some("vendor_shop"), None);
        (run, held.approval_request_id.unwrap())
    })
    .await
    .unwrap();
    browser
        .wait_for(&format!("tr[data-approval=\"{held}\"]"))
        .await;
    browser.press("j").await;
    browser.press("d").await;
    browser.wait_text(".flash", |t| t.contains("denied")).await;
    assert_eq!(
        engine.approval(&run.fx.operator, held).await.unwrap().state,
        ApprovalState::Denied
    );

    // The error page too.
    browser.goto(&format!("{base}/console/nowhere")).await;
    browser.wait_for(".flash.error").await;
    browser.axe("the error page").await;
    browser.raw("DELETE", "", None).await;
}
