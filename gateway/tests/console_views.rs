//! The console's overview, decision search, decision pages and what-if, through the
//! router with `oneshot`, on the data of a scripted run of agents over three days
//! (`common::activity`): the numbers each page shows against the engine's own
//! records, and the escaping of what agents send. Run on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::activity::{Activity, DAY_MS, ODD_AGENT, START_MS, stricter_policy};
use paybond_gateway::server::router;
use paybond_gateway::{DecisionFilter, PolicyFile, Storage};
use paybond_middleware_core::format_money;
use tower::ServiceExt as _;

async fn send(
    app: &axum::Router,
    method: &str,
    path: &str,
    cookie: &str,
    form: Option<&str>,
) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "127.0.0.1:8787")
        .header(header::COOKIE, cookie);
    let body = match form {
        Some(f) => {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            Body::from(f.to_owned())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 4 << 20)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn sign_in(app: &axum::Router, key: &str) -> String {
    let resp = app
        .clone()
        .oneshot(
            Request::builder()
                .method("POST")
                .uri("/console/login")
                .header(header::HOST, "127.0.0.1:8787")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("api_key={key}")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    resp.headers()
        .get(header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

fn usd(cents: u64) -> String {
    format_money(cents, "usd")
}

/// The cells of the row whose header cell is `label` in the table `id`.
fn row<'a>(page: &'a str, id: &str, label: &str) -> Vec<&'a str> {
    let table = &page[page
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table {id}"))..];
    let table = &table[..table.find("</table>").unwrap()];
    let at = table
        .find(&format!("<th scope=\"row\">{label}</th>"))
        .unwrap_or_else(|| panic!("no row {label} in {id}"));
    let row = &table[at..];
    let row = &row[..row.find("</tr>").unwrap()];
    row.split("<td class=\"num\">")
        .skip(1)
        .map(|c| c.split("</td>").next().unwrap())
        .collect()
}

fn day_label(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .unwrap()
        .strftime("%m-%d")
        .to_string()
}

fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_owned()
}

async fn check_views(run: Activity) {
    let engine = run.engine().clone();
    let app = router(engine.clone());
    let cookie = sign_in(&app, run.fx.keys.operator.expose_secret()).await;

    // ---- the overview's numbers, against the run's own settlements and the
    // engine's intents ----
    let (status, page) = send(&app, "GET", "/console/overview", &cookie, None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let today = (START_MS + 2 * DAY_MS).div_euclid(DAY_MS) * DAY_MS;
    let spent_today: u64 = run.consumed[&today].values().sum();
    assert!(
        page.contains(&format!("id=\"spent-today\">{}</span>", usd(spent_today))),
        "today's spend"
    );
    assert!(page.contains(&format!("of {} day cap", usd(100_000))));
    let tools: Vec<&str> = {
        let mut t: Vec<&str> = run
            .consumed
            .values()
            .flat_map(|m| m.keys().map(String::as_str))
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    };
    let mut charted_total = 0;
    for (day, by_tool) in &run.consumed {
        let cells = row(&page, "spend-per-day-table", &day_label(*day));
        let expected: Vec<String> = tools
            .iter()
            .map(|t| usd(by_tool.get(*t).copied().unwrap_or(0)))
            .chain([usd(by_tool.values().sum())])
            .collect();
        assert_eq!(cells, expected, "spend on {}", day_label(*day));
        charted_total += by_tool.values().sum::<u64>();
    }
    // The engine's own total: what its intents consumed.
    let intents = engine
        .operator_intents(&run.fx.operator, &Default::default())
        .await
        .unwrap();
    let consumed: u64 = intents.intents.iter().map(|i| i.consumed_cents).sum();
    assert_eq!(charted_total, consumed);
    assert!(page.contains("aria-label=\"Spend per day, last 30 days (UTC): total "));
    assert!(page.contains("tenant day cap"));

    // Decisions per minute: every decision of today's last hour, by outcome.
    let minute_cells: Vec<Vec<u64>> = {
        let table = &page[page.find("id=\"decisions-per-minute-table\"").unwrap()..];
        let table = &table[..table.find("</table>").unwrap()];
        table
            .split("<th scope=\"row\">")
            .skip(1)
            .map(|r| {
                r.split("<td class=\"num\">")
                    .skip(1)
                    .map(|c| c.split("</td>").next().unwrap().parse().unwrap())
                    .collect()
            })
            .collect()
    };
    assert_eq!(minute_cells.len(), 60);
    let last_hour: Vec<u64> = (0..3)
        .map(|i| minute_cells.iter().map(|r| r[i]).sum())
        .collect();
    // Today: 3 allows, 2 denies, 1 hold, all within the last hour.
    assert_eq!(last_hour, [3, 1, 2]);
    assert!(page.contains("id=\"decided-hour\">6</span>"));

    // Top reasons of the last 24 hours, each linking to its decisions.
    let deny_link = "/console/decisions?outcome=deny&amp;reason=";
    assert!(page.contains(deny_link), "{page}");
    let reasons = &page[page.find("id=\"top-reasons\"").unwrap()..];
    let reasons = &reasons[..reasons.find("</table>").unwrap()];
    assert_eq!(reasons.matches("<tr><td class=").count(), 3, "{reasons}");

    // Closest to the caps: alpha has 28,000 of its 30,000 today (93 %), first.
    let caps = &page[page.find("id=\"cap-use\"").unwrap()..];
    let first = &caps[..caps.find("</tr>").unwrap()];
    let first_row = &caps[caps.find("<tbody>").unwrap()..];
    let first_row = &first_row[..first_row.find("</tr>").unwrap()];
    assert!(
        first_row.contains("agent <code>alpha</code>"),
        "{first} {first_row}"
    );
    assert!(first_row.contains(&usd(28_000)) && first_row.contains(&usd(30_000)));
    assert!(first_row.contains("93 %"));
    // The odd agent's name is escaped wherever it shows.
    assert!(!page.contains(ODD_AGENT));

    // Approvals: one pending, two decided (2 and 10 minutes), one each per operator.
    let stats = &page[page.find("id=\"approval-stats\"").unwrap()..];
    assert!(stats.starts_with("id=\"approval-stats\"><dt>Pending</dt><dd>1</dd><dt>Decided, last 30 days</dt><dd>2</dd><dt>Median time to a decision</dt><dd>2 min</dd><dt>90th percentile</dt><dd>10 min</dd>"), "{stats}");
    assert!(page.contains("<td class=\"mono\">ops-two</td><td class=\"num\">1</td>"));

    // ---- decision search ----
    let all = async |f: DecisionFilter| {
        let mut rows = Vec::new();
        let mut filter = f;
        loop {
            let page = engine
                .search_decisions(&run.fx.operator, &filter, 50)
                .await
                .unwrap();
            rows.extend(page.rows);
            match page.next {
                Some(next) => {
                    let (ms, id) = next.split_once(':').unwrap();
                    filter.before = Some((ms.parse().unwrap(), id.to_owned()));
                }
                None => return rows,
            }
        }
    };
    let every = all(DecisionFilter::default()).await;
    let made: u64 = run.outcomes.values().sum();
    assert_eq!(every.len() as u64, made);
    assert!(
        every
            .windows(2)
            .all(|w| (w[0].created_ms, &w[0].decision_id) > (w[1].created_ms, &w[1].decision_id))
    );
    for outcome in ["allow", "hold", "deny"] {
        let found = all(DecisionFilter {
            outcome: Some(outcome.to_owned()),
            ..Default::default()
        })
        .await;
        assert_eq!(found.len() as u64, run.outcomes[outcome], "{outcome}");
    }
    let shop_small = all(DecisionFilter {
        tool: Some("shop.buy".to_owned()),
        agent: Some("beta".to_owned()),
        max_cents: Some(100),
        ..Default::default()
    })
    .await;
    assert_eq!(shop_small.len(), 60);
    let over_cap = all(DecisionFilter {
        reason: Some("tool_cap_exceeded".to_owned()),
        ..Default::default()
    })
    .await;
    assert!(!over_cap.is_empty());
    assert!(
        over_cap.iter().all(|d| d.amount_cents.unwrap() > 5000),
        "{over_cap:?}"
    );
    let today_only = all(DecisionFilter {
        from_ms: Some(today),
        ..Default::default()
    })
    .await;
    assert_eq!(today_only.len(), 6);

    // The page: 50 newest, then the next page, over HTTP.
    let (status, page) = send(
        &app,
        "GET",
        "/console/decisions?tool=shop.buy&agent=beta&max_amount=1",
        &cookie,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page.matches("<tr data-decision=").count(), 50);
    let next = page
        .split("id=\"next-page\" href=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let (_, older) = send(&app, "GET", &next, &cookie, None).await;
    assert_eq!(older.matches("<tr data-decision=").count(), 10);
    // A filter that does not parse names its field and searches nothing.
    let (_, bad) = send(
        &app,
        "GET",
        "/console/decisions?min_amount=abc&from=yesterday",
        &cookie,
        None,
    )
    .await;
    assert!(
        bad.contains("Minimum amount: `abc` is not an amount")
            || bad.contains("From: `yesterday` is not a time"),
        "{bad}"
    );
    assert_eq!(bad.matches("<tr data-decision=").count(), 0);
    // The odd agent: searched by name, shown escaped.
    let (_, odd) = send(
        &app,
        "GET",
        &format!(
            "/console/decisions?agent={}",
            common::percent_encode(ODD_AGENT)
        ),
        &cookie,
        None,
    )
    .await;
    assert_eq!(odd.matches("<tr data-decision=").count(), 3, "{odd}");
    assert!(odd.contains("&lt;gamma &amp; &quot;co&quot;&gt;"));
    assert!(!odd.contains(ODD_AGENT));

    // ---- a decision's page: the approved hold's retry ----
    let (status, page) = send(
        &app,
        "GET",
        &format!("/console/decisions/{}", run.approved_retry),
        &cookie,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains(&format!(
            "<dt>Approved by</dt><dd>ops-two <span class=\"mono muted\">({})</span></dd>",
            run.operator2.key_id
        )),
        "{page}"
    );
    assert!(
        page.contains(&format!(
            "<dt>Reserved</dt><dd>{0}</dd><dt>State</dt><dd>consumed</dd><dt>Consumed</dt><dd>{0}</dd>",
            usd(15_000)
        )),
        "{page}"
    );
    assert!(page.contains("approval_token_accepted"));
    assert!(page.contains("<code>reservation.consumed</code>"));
    assert!(page.contains("<code>approval.token_used</code>"));
    let ledger_link = page
        .split("href=\"/console/ledger/")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let (status, entry) = send(
        &app,
        "GET",
        &format!("/console/ledger/{ledger_link}"),
        &cookie,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(entry.contains(&run.approved_retry.to_string()));
    // The denied hold names who denied it.
    let (_, page) = send(
        &app,
        "GET",
        &format!("/console/decisions/{}", run.denied_hold),
        &cookie,
        None,
    )
    .await;
    assert!(page.contains("<dt>State</dt><dd>denied</dd>"), "{page}");
    assert!(page.contains(&format!(
        "<dt>Denied by</dt><dd>{}</dd>",
        run.fx.operator.subject
    )));
    assert!(page.contains("&lt;gamma &amp; &quot;co&quot;&gt;") && !page.contains(ODD_AGENT));
    let (status, _) = send(
        &app,
        "GET",
        &format!("/console/decisions/{}", uuid::Uuid::new_v4()),
        &cookie,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // ---- what-if: the same fold as `paybond policy replay` ----
    let tip_before = engine.ledger_tip(&run.fx.operator).await.unwrap();
    let (_, form) = send(&app, "GET", "/console/what-if", &cookie, None).await;
    let token = csrf(&form);
    let strict = stricter_policy();
    let expected = engine
        .what_if(
            &run.fx.operator,
            PolicyFile {
                text: strict.clone(),
                file: "strict.yaml".to_owned(),
            },
            None,
            None,
        )
        .await
        .unwrap();
    // The larger shop.buy allows (15, 12, 18 and 18 USD) and the 30 USD hold
    // become denies.
    assert_eq!(expected.changes.len(), 5, "{:?}", expected.changes);
    let body = format!(
        "csrf={token}&file_name=strict.yaml&policy={}&since=&until=",
        common::percent_encode(&strict)
    );
    let (status, report) = send(&app, "POST", "/console/what-if", &cookie, Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(report.contains(&format!(
        "<strong id=\"what-if-changed\">{}</strong>",
        expected.changes.len()
    )));
    for change in &expected.changes {
        assert!(report.contains(&format!("/console/decisions/{}", change.decision_id)));
    }
    assert_eq!(
        row(&report, "what-if-totals", "Allowed"),
        [
            expected.before.allowed.to_string(),
            expected.after.allowed.to_string()
        ]
    );
    assert_eq!(
        row(&report, "what-if-totals", "Spent"),
        [
            usd(expected.spent_before_cents),
            usd(expected.spent_after_cents)
        ]
    );
    // By day: before is what the run consumed that day.
    let by_day: BTreeMap<String, (u64, u64)> = expected
        .days
        .iter()
        .map(|d| (d.day.clone(), (d.spent_before_cents, d.spent_after_cents)))
        .collect();
    for (day, by_tool) in &run.consumed {
        let name = jiff::Timestamp::from_millisecond(*day)
            .unwrap()
            .strftime("%Y-%m-%d")
            .to_string();
        assert_eq!(by_day[&name].0, by_tool.values().sum::<u64>(), "{name}");
        assert_eq!(
            row(&report, "what-if-spend-table", &name),
            [usd(by_day[&name].0), usd(by_day[&name].1)]
        );
    }
    // Only read: the ledger is as it was.
    assert_eq!(
        engine.ledger_tip(&run.fx.operator).await.unwrap(),
        tip_before,
        "what-if wrote to the store"
    );
    // A window: until today, everything but today's 6 decisions.
    let body = format!(
        "csrf={token}&policy={}&since=&until={}",
        common::percent_encode(&strict),
        common::percent_encode("2026-11-30T00:00")
    );
    let (_, report) = send(&app, "POST", "/console/what-if", &cookie, Some(&body)).await;
    assert!(
        report.contains(&format!("{} decisions replayed", made - 6)),
        "{report}"
    );
    assert!(
        report.contains("<strong id=\"what-if-changed\">4</strong>"),
        "{report}"
    );
    // A window: only today's 6 decisions, of which the 18 USD purchase changes.
    let body = format!(
        "csrf={token}&policy={}&since={}&until=",
        common::percent_encode(&strict),
        common::percent_encode("2026-11-30T00:00")
    );
    let (_, report) = send(&app, "POST", "/console/what-if", &cookie, Some(&body)).await;
    assert!(
        report.contains("<strong id=\"what-if-changed\">1</strong>"),
        "{report}"
    );
    assert!(report.contains("6 decisions replayed"));
    // A policy that does not validate: every problem at its line, nothing replayed.
    let broken = "version: 1\nname: x\ntools:\n  shop.buy: { side_effecting: maybe }\nspend_controls:\n  caps:\n    - { scope: galaxy, window: day, limit_cents: 1 }\n";
    let body = format!(
        "csrf={token}&file_name=broken.yaml&policy={}",
        common::percent_encode(broken)
    );
    let (status, report) = send(&app, "POST", "/console/what-if", &cookie, Some(&body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(report.contains("id=\"policy-problems\""), "{report}");
    assert!(report.contains("broken.yaml:4:"), "{report}");
    assert!(!report.contains("id=\"what-if-report\""));
    // Without the CSRF token: refused.
    let body = format!("policy={}", common::percent_encode(&strict));
    let (status, _) = send(&app, "POST", "/console/what-if", &cookie, Some(&body)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // ---- an agent key reads none of it ----
    let agent_cookie = sign_in(&app, run.fx.keys.agent.expose_secret()).await;
    for path in [
        "/console/overview",
        "/console/decisions",
        "/console/what-if",
        &format!("/console/decisions/{}", run.approved_retry),
    ] {
        let (status, page) = send(&app, "GET", path, &agent_cookie, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(page.contains("forbidden_role"));
    }
    let (_, queue) = send(&app, "GET", "/console/approvals", &agent_cookie, None).await;
    assert!(!queue.contains("href=\"/console/overview\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_views_show_the_engines_numbers_and_escape_what_agents_send_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let run = tokio::task::spawn_blocking(move || {
        let run = Activity::run(Storage::File(dir.path().join("paybond.db")));
        (run, dir)
    })
    .await
    .unwrap();
    check_views(run.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_views_show_the_engines_numbers_and_escape_what_agents_send_on_postgres() {
    let Some(url) = common::pg_database() else {
        return;
    };
    let run = tokio::task::spawn_blocking(move || Activity::run(Storage::Postgres(url)))
        .await
        .unwrap();
    check_views(run).await;
}
