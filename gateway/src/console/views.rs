//! The console's views of spend and decisions: the overview (live), the decision
//! search and each decision's page, single ledger entries, and what-if replay of
//! a policy. Operators and tenant admins read them; agent keys are sent to the
//! approval queue.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use uuid::Uuid;

use super::charts::{Stacked, meter};
use super::{
    Shared, Signed, amount_field, engine_error, esc, filled_in, html, layout, money, page_error,
    redirect, secured, url_encode,
};
use crate::engine::insights::{DecisionFilter, DecisionPage, DecisionRow, Overview};
use crate::engine::replay::ReplayReport;
use crate::engine::{PolicyFile, reads_tenant};

/// How often the live overview looks at the ledger's tip.
const OVERVIEW_EVERY: Duration = Duration::from_secs(2);
/// How often the live overview reads its sums again with no new ledger entry.
const OVERVIEW_FULL: Duration = Duration::from_secs(30);
/// Decisions a search page lists.
const SEARCH_PAGE: u64 = 50;

/// The signed-in reader of spend, else where to go: the sign-in page, or (an
/// agent key) a page saying these views are not for it.
async fn reader(c: &Shared, headers: &HeaderMap) -> Result<Signed, Response> {
    let signed = c
        .signed(headers)
        .await
        .ok_or_else(|| redirect("/console/login"))?;
    if !reads_tenant(&signed.principal) {
        return Err(page_error(
            StatusCode::FORBIDDEN,
            "Spend and decisions are shown to operators, tenant admins and analysts; this is \
             an agent key (forbidden_role). The approval queue is open to it.",
        ));
    }
    Ok(signed)
}

fn page(signed: &Signed, title: &str, current: &str, body: &str) -> Response {
    html(
        StatusCode::OK,
        layout(
            title,
            current,
            Some((&signed.principal, &signed.csrf)),
            body,
        ),
    )
}

fn ts(ms: i64) -> Option<jiff::Timestamp> {
    jiff::Timestamp::from_millisecond(ms).ok()
}

/// `MM-DD` of a UTC day.
fn day_label(ms: i64) -> String {
    ts(ms).map_or_else(String::new, |t| t.strftime("%m-%d").to_string())
}

/// `HH:MM` (UTC).
fn clock_label(ms: i64) -> String {
    ts(ms).map_or_else(String::new, |t| t.strftime("%H:%M").to_string())
}

/// A time as the console shows it: `2026-12-06 14:05:09 UTC`.
fn when(ms: i64) -> String {
    ts(ms).map_or_else(
        || ms.to_string(),
        |t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// A time as a `datetime-local` field holds it (UTC, to the millisecond).
fn local_field(ms: i64) -> String {
    ts(ms).map_or_else(String::new, |t| {
        t.strftime("%Y-%m-%dT%H:%M:%S%.3f").to_string()
    })
}

/// A duration as people read it: `42 s`, `7 min`, `3 h 5 min`, `2 d 4 h`.
fn span(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86_400 => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
        _ => format!("{} d {} h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

/// A time typed in a filter: RFC 3339, or a `datetime-local` value taken as UTC.
fn parse_time(field: &str, text: &str) -> Result<Option<i64>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(Some(t.as_millisecond()));
    }
    text.parse::<jiff::civil::DateTime>()
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| Some(z.timestamp().as_millisecond()))
        .ok_or_else(|| format!("{field}: `{text}` is not a time (like 2026-12-01T09:30, in UTC)"))
}

// ---- overview ----

/// The overview's sections (what the live stream replaces).
fn overview_sections(o: &Overview) -> String {
    let currency = o.currency.as_str();
    let cash = |v: u64| money(v, currency);
    let count = |v: u64| v.to_string();
    let mut tools: Vec<String> = Vec::new();
    for bar in o.days.iter().chain(&o.hours) {
        for tool in bar.by_tool.keys() {
            if !tools.contains(tool) {
                tools.push(tool.clone());
            }
        }
    }
    tools.sort();
    let bars = |list: &[crate::engine::insights::SpendBar], label: &dyn Fn(i64) -> String| {
        list.iter()
            .map(|b| {
                (
                    label(b.start_ms),
                    tools
                        .iter()
                        .map(|t| b.by_tool.get(t).copied().unwrap_or(0))
                        .collect(),
                )
            })
            .collect::<Vec<_>>()
    };
    let series = if tools.is_empty() {
        vec!["no spend".to_owned()]
    } else {
        tools.clone()
    };
    let today: u64 = o
        .days
        .last()
        .map_or(0, crate::engine::insights::SpendBar::total);
    let this_hour: u64 = o
        .hours
        .last()
        .map_or(0, crate::engine::insights::SpendBar::total);
    let per_day = Stacked {
        id: "spend-per-day",
        title: "Spend per day, last 30 days (UTC)",
        series: series.clone(),
        bars: bars(&o.days, &day_label),
        line: o.day_cap_cents.map(|c| (c, "tenant day cap".to_owned())),
        format: &cash,
        label_every: 5,
        classes: None,
        grouped: false,
    }
    .render();
    let per_hour = Stacked {
        id: "spend-per-hour",
        title: "Spend per hour, last 24 hours (UTC)",
        series,
        bars: bars(&o.hours, &clock_label),
        line: o.hour_cap_cents.map(|c| (c, "tenant hour cap".to_owned())),
        format: &cash,
        label_every: 4,
        classes: None,
        grouped: false,
    }
    .render();
    let minutes = Stacked {
        id: "decisions-per-minute",
        title: "Decisions per minute, last hour",
        series: vec!["allow".to_owned(), "hold".to_owned(), "deny".to_owned()],
        bars: o
            .minutes
            .iter()
            .map(|m| (clock_label(m.start_ms), vec![m.allow, m.hold, m.deny]))
            .collect(),
        line: None,
        format: &count,
        label_every: 10,
        classes: Some(vec!["allow", "hold", "deny"]),
        grouped: false,
    }
    .render();
    let decided_last_hour: u64 = o.minutes.iter().map(|m| m.allow + m.hold + m.deny).sum();
    let others = if o.other_currencies.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"muted\">Charted in {}; spend in {} is not drawn.</p>",
            esc(&currency.to_uppercase()),
            esc(&o.other_currencies.join(", ").to_uppercase())
        )
    };
    let since = local_field(o.now_ms - 86_400_000);
    let mut reasons = String::new();
    for r in &o.reasons {
        reasons.push_str(&format!(
            "<tr><td class=\"{}\">{}</td><td><a href=\"/console/decisions?outcome={}&amp;reason={}&amp;from={}\"><code>{}</code></a></td>\
             <td class=\"num\">{}</td></tr>",
            if r.outcome == "hold" { "warn" } else { "bad" },
            esc(&r.outcome),
            url_encode(&r.outcome),
            url_encode(&r.code),
            url_encode(&since),
            esc(&r.code),
            r.count
        ));
    }
    if reasons.is_empty() {
        reasons.push_str("<tr><td colspan=\"3\" class=\"muted\">No call was held or denied in the last 24 hours.</td></tr>");
    }
    let mut caps = String::new();
    for u in &o.caps {
        let who = match &u.key {
            Some(k) => format!("{} <code>{}</code>", esc(u.scope), esc(k)),
            None => "tenant".to_owned(),
        };
        caps.push_str(&format!(
            "<tr><td>{who}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"use\">{}</td><td>{}</td></tr>",
            esc(u.window),
            esc(&cash(u.spent_cents)),
            esc(&cash(u.limit_cents)),
            meter(u.percent, &format!("{:.0} %", u.percent)),
            esc(&span(u.frees_in_ms)),
        ));
    }
    if caps.is_empty() {
        caps.push_str(
            "<tr><td colspan=\"6\" class=\"muted\">The policy sets no rolling cap, or nothing \
             counts against one yet.</td></tr>",
        );
    }
    let a = &o.approvals;
    let mut per_operator = String::new();
    for (who, n) in &a.per_operator {
        per_operator.push_str(&format!(
            "<tr><td class=\"mono\">{}</td><td class=\"num\">{n}</td></tr>",
            esc(who)
        ));
    }
    if per_operator.is_empty() {
        per_operator
            .push_str("<tr><td colspan=\"2\" class=\"muted\">No approval in 30 days.</td></tr>");
    }
    let opt_span = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), span);
    format!(
        "<div class=\"tiles\">\
         <div class=\"tile\"><span class=\"label\">Spent today (UTC)</span><span class=\"value\" id=\"spent-today\">{}</span>{}</div>\
         <div class=\"tile\"><span class=\"label\">Spent this hour</span><span class=\"value\" id=\"spent-hour\">{}</span></div>\
         <div class=\"tile\"><span class=\"label\">Decisions, last hour</span><span class=\"value\" id=\"decided-hour\">{decided_last_hour}</span></div>\
         <div class=\"tile\"><span class=\"label\">Pending approvals</span><span class=\"value\" id=\"pending-approvals\">{}</span></div>\
         </div>{others}\
         <section aria-labelledby=\"h-spend\"><h2 id=\"h-spend\">Spend</h2>{per_day}{per_hour}</section>\
         <section aria-labelledby=\"h-decisions\"><h2 id=\"h-decisions\">Decisions</h2>{minutes}\
         <h3>Top deny and hold reasons, last 24 hours</h3>\
         <table id=\"top-reasons\"><thead><tr><th scope=\"col\">Outcome</th><th scope=\"col\">Reason</th>\
         <th scope=\"col\">Decisions</th></tr></thead><tbody>{reasons}</tbody></table></section>\
         <section aria-labelledby=\"h-caps\"><h2 id=\"h-caps\">Closest to their rolling caps</h2>\
         <table id=\"cap-use\"><thead><tr><th scope=\"col\">Who</th><th scope=\"col\">Window</th>\
         <th scope=\"col\">Used</th><th scope=\"col\">Cap</th><th scope=\"col\">Percent</th>\
         <th scope=\"col\">Window frees in</th></tr></thead><tbody>{caps}</tbody></table></section>\
         <section aria-labelledby=\"h-approvals\"><h2 id=\"h-approvals\">Approvals</h2>\
         <dl class=\"facts\" id=\"approval-stats\"><dt>Pending</dt><dd>{}</dd>\
         <dt>Decided, last 30 days</dt><dd>{}</dd><dt>Median time to a decision</dt><dd>{}</dd>\
         <dt>90th percentile</dt><dd>{}</dd></dl>\
         <table id=\"approvals-per-operator\"><caption class=\"muted\">Approvals given per operator, last 30 days</caption>\
         <thead><tr><th scope=\"col\">Operator</th><th scope=\"col\">Approvals</th></tr></thead>\
         <tbody>{per_operator}</tbody></table></section>",
        esc(&cash(today)),
        o.day_cap_cents
            .map(|c| format!("<span class=\"of\">of {} day cap</span>", esc(&cash(c))))
            .unwrap_or_default(),
        esc(&cash(this_hour)),
        a.pending,
        a.pending,
        a.decided,
        esc(&opt_span(a.median_ms)),
        esc(&opt_span(a.p90_ms)),
    )
}

pub(super) async fn overview(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let signed = match reader(&c, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let p = signed.principal.clone();
    let o = match c.run(move |e| e.overview_blocking(&p)).await {
        Ok(o) => o,
        Err(e) => return engine_error(&e),
    };
    let body = format!(
        "<h1>Overview</h1>\
         <p id=\"overview-status\" class=\"live\" role=\"status\">Live: as of {}</p>\
         <div id=\"overview\" data-live=\"/console/events?view=overview\">{}</div>",
        esc(&when(o.now_ms)),
        overview_sections(&o)
    );
    page(&signed, "Overview", "Overview", &body)
}

/// The overview's sections, pushed as `overview` events whenever they change:
/// `{"html", "status"}`. The sums are read again when the ledger has moved on, or
/// every [`OVERVIEW_FULL`] for what time alone changes (windows, expiries).
pub(super) fn overview_events(c: Shared, signed: Signed, sid: String) -> Response {
    if !reads_tenant(&signed.principal) {
        return secured(StatusCode::FORBIDDEN.into_response());
    }
    struct Live {
        c: Shared,
        signed: Signed,
        sid: String,
        /// The sections last pushed.
        last: String,
        /// The ledger tip they were read at, and when.
        read_at: Option<(u64, Instant)>,
        /// Past the first look (which does not wait).
        started: bool,
        signed_out: bool,
    }
    let state = Live {
        c,
        signed,
        sid,
        last: String::new(),
        read_at: None,
        started: false,
        signed_out: false,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if s.signed_out {
                return None;
            }
            if s.started {
                tokio::time::sleep(OVERVIEW_EVERY).await;
            }
            s.started = true;
            if !s.c.alive(&s.sid).await {
                // Said once; the stream then ends.
                s.signed_out = true;
                let event = Event::default().event("signed_out").data("");
                return Some((Ok::<_, Infallible>(event), s));
            }
            let p = s.signed.principal.clone();
            let Ok(tip) = s.c.run(move |e| e.ledger_tip_blocking(&p)).await else {
                continue;
            };
            if let Some((seq, at)) = s.read_at
                && seq == tip.seq
                && at.elapsed() < OVERVIEW_FULL
            {
                continue;
            }
            let p = s.signed.principal.clone();
            let Ok(o) = s.c.run(move |e| e.overview_blocking(&p)).await else {
                continue;
            };
            s.read_at = Some((tip.seq, Instant::now()));
            let sections = overview_sections(&o);
            if sections == s.last {
                continue;
            }
            let data = serde_json::json!({
                "html": sections,
                "status": format!("Live: as of {}", when(o.now_ms)),
            });
            s.last = sections;
            let event = Event::default().event("overview").data(data.to_string());
            return Some((Ok(event), s));
        }
    });
    secured(
        Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response(),
    )
}

// ---- decision search ----

#[derive(Debug, Default, Deserialize)]
pub(super) struct SearchParams {
    #[serde(default)]
    from: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    tool: String,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    vendor: String,
    #[serde(default)]
    intent: String,
    #[serde(default)]
    min_amount: String,
    #[serde(default)]
    max_amount: String,
    #[serde(default)]
    before: String,
}

impl SearchParams {
    fn filter(&self) -> Result<DecisionFilter, String> {
        let text = |t: &str| Some(t.trim().to_owned()).filter(|t| !t.is_empty());
        let outcome = text(&self.outcome);
        if let Some(o) = &outcome
            && !matches!(o.as_str(), "allow" | "hold" | "deny")
        {
            return Err(format!("Outcome: `{o}` is not allow, hold or deny"));
        }
        let intent = match text(&self.intent) {
            None => None,
            Some(i) => Some(
                Uuid::parse_str(&i).map_err(|_| format!("Intent: `{i}` is not an intent id"))?,
            ),
        };
        let before = match text(&self.before) {
            None => None,
            Some(b) => Some(
                b.split_once(':')
                    .and_then(|(ms, id)| Some((ms.parse().ok()?, id.to_owned())))
                    .ok_or_else(|| "the page cursor is not one this console made".to_owned())?,
            ),
        };
        Ok(DecisionFilter {
            from_ms: parse_time("From", &self.from)?,
            until_ms: parse_time("Until", &self.until)?,
            outcome,
            reason: text(&self.reason),
            tool: text(&self.tool),
            agent: text(&self.agent),
            vendor: text(&self.vendor),
            intent,
            min_cents: amount_field("Minimum amount", &self.min_amount)?,
            max_cents: amount_field("Maximum amount", &self.max_amount)?,
            before,
        })
    }

    /// The query string of these filters, with `before` as the page.
    fn link(&self, before: Option<&str>) -> String {
        let mut parts = filled_in(&[
            ("from", &self.from),
            ("until", &self.until),
            ("outcome", &self.outcome),
            ("reason", &self.reason),
            ("tool", &self.tool),
            ("agent", &self.agent),
            ("vendor", &self.vendor),
            ("intent", &self.intent),
            ("min_amount", &self.min_amount),
            ("max_amount", &self.max_amount),
        ]);
        if let Some(b) = before {
            parts.push(format!("before={}", url_encode(b)));
        }
        parts.join("&")
    }

    fn form(&self) -> String {
        let field = |id: &str, label: &str, value: &str, kind: &str, extra: &str| {
            super::form_field("d", id, label, value, kind, extra)
        };
        let option = |value: &str, name: &str| {
            format!(
                "<option value=\"{value}\"{}>{name}</option>",
                if self.outcome == value {
                    " selected"
                } else {
                    ""
                }
            )
        };
        format!(
            "<form class=\"filters\" method=\"get\" action=\"/console/decisions\" aria-label=\"Search decisions\">\
             {}{}<div class=\"field\"><label for=\"d-outcome\">Outcome</label><select id=\"d-outcome\" name=\"outcome\">\
             {}{}{}{}</select></div>{}{}{}{}{}{}{}\
             <div class=\"field\"><button type=\"submit\">Search</button> <a href=\"/console/decisions\">Clear</a></div></form>",
            field(
                "from",
                "From (UTC)",
                &self.from,
                "datetime-local",
                " step=\"any\""
            ),
            field(
                "until",
                "Until (UTC)",
                &self.until,
                "datetime-local",
                " step=\"any\""
            ),
            option("", "Any"),
            option("allow", "Allow"),
            option("hold", "Hold"),
            option("deny", "Deny"),
            field("reason", "Reason code", &self.reason, "text", ""),
            field("tool", "Tool", &self.tool, "text", ""),
            field("agent", "Agent", &self.agent, "text", ""),
            field("vendor", "Vendor", &self.vendor, "text", ""),
            field("intent", "Intent", &self.intent, "text", ""),
            field(
                "min_amount",
                "Minimum amount",
                &self.min_amount,
                "text",
                " inputmode=\"decimal\" placeholder=\"0.00\""
            ),
            field(
                "max_amount",
                "Maximum amount",
                &self.max_amount,
                "text",
                " inputmode=\"decimal\" placeholder=\"any\""
            ),
        )
    }
}

fn outcome_class(outcome: &str) -> &'static str {
    match outcome {
        "allow" => "ok",
        "hold" => "warn",
        _ => "bad",
    }
}

fn opt(text: Option<&str>) -> String {
    esc(text.filter(|t| !t.is_empty()).unwrap_or("-"))
}

fn decision_rows(rows: &[DecisionRow]) -> String {
    if rows.is_empty() {
        return "<tr><td colspan=\"8\" class=\"muted\">No decision matches.</td></tr>".to_owned();
    }
    let mut out = String::new();
    for d in rows {
        out.push_str(&format!(
            "<tr data-decision=\"{id}\"><td><a href=\"/console/decisions/{id}\">{}</a></td>\
             <td class=\"{}\">{}</td><td><code>{}</code></td><td class=\"mono\">{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td>{}</td><td><a href=\"/console/intents/{}\">intent</a></td></tr>",
            esc(&when(d.created_ms)),
            outcome_class(&d.outcome),
            esc(&d.outcome),
            opt(d.tool.as_deref()),
            opt(d.agent.as_deref()),
            opt(d.vendor.as_deref()),
            esc(&d.amount_cents.map_or_else(
                || "-".to_owned(),
                |a| money(a, d.currency.as_deref().unwrap_or("usd"))
            )),
            esc(&d.reason_codes.join(", ")),
            esc(&d.intent_id),
            id = esc(&d.decision_id),
        ));
    }
    out
}

pub(super) async fn decisions(
    State(c): State<Shared>,
    headers: HeaderMap,
    Query(params): Query<SearchParams>,
) -> Response {
    let signed = match reader(&c, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (found, problem) = match params.filter() {
        Ok(filter) => {
            let p = signed.principal.clone();
            match c
                .run(move |e| e.search_decisions_blocking(&p, &filter, SEARCH_PAGE))
                .await
            {
                Ok(page) => (page, None),
                Err(e) => return engine_error(&e),
            }
        }
        Err(why) => (
            DecisionPage {
                rows: Vec::new(),
                next: None,
            },
            Some(why),
        ),
    };
    let flash = problem.map_or_else(String::new, |why| {
        format!(
            "<div class=\"flash error\" role=\"alert\">{}; nothing was searched.</div>",
            esc(&why)
        )
    });
    let mut pager = String::new();
    if !params.before.is_empty() {
        pager.push_str(&format!(
            "<a id=\"first-page\" href=\"/console/decisions?{}\">Newest page</a> ",
            esc(&params.link(None))
        ));
    }
    if let Some(next) = &found.next {
        pager.push_str(&format!(
            "<a id=\"next-page\" href=\"/console/decisions?{}\">Older decisions</a>",
            esc(&params.link(Some(next)))
        ));
    }
    let body = format!(
        "<h1>Decisions</h1>{}{flash}\
         <table id=\"decision-results\"><caption class=\"muted\">Newest first, {SEARCH_PAGE} a page</caption>\
         <thead><tr><th scope=\"col\">When</th><th scope=\"col\">Outcome</th><th scope=\"col\">Tool</th>\
         <th scope=\"col\">Agent</th><th scope=\"col\">Vendor</th><th scope=\"col\">Amount</th>\
         <th scope=\"col\">Reasons</th><th scope=\"col\">Intent</th></tr></thead>\
         <tbody>{}</tbody></table><nav class=\"pager\" aria-label=\"Pages of decisions\">{pager}</nav>",
        params.form(),
        decision_rows(&found.rows),
    );
    page(&signed, "Decisions", "Decisions", &body)
}

pub(super) async fn decision(
    State(c): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let signed = match reader(&c, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(id) = Uuid::parse_str(&id) else {
        return page_error(StatusCode::BAD_REQUEST, "That is not a decision id.");
    };
    let p = signed.principal.clone();
    let d = match c.run(move |e| e.decision_detail_blocking(&p, id)).await {
        Ok(d) => d,
        Err(e) => return engine_error(&e),
    };
    let currency = d.row.currency.as_deref().unwrap_or("usd");
    let row = &d.row;
    let mut checks = String::new();
    for ch in &d.result.checks {
        checks.push_str(&format!(
            "<tr><td><code>{}</code></td><td class=\"{}\">{}</td><td class=\"mono\">{}</td></tr>",
            esc(&ch.name),
            if ch.result == "pass" { "ok" } else { "bad" },
            esc(&ch.result),
            esc(&serde_json::to_string(&ch.inputs).unwrap_or_default())
        ));
    }
    if checks.is_empty() {
        checks.push_str("<tr><td colspan=\"3\" class=\"muted\">No check was recorded.</td></tr>");
    }
    let reservation = match &d.reservation {
        None => "<p class=\"muted\">No reservation: the call was not allowed.</p>".to_owned(),
        Some(r) => format!(
            "<dl class=\"facts\" id=\"settlement\"><dt>Reserved</dt><dd>{}</dd><dt>State</dt><dd>{}</dd>\
             <dt>Consumed</dt><dd>{}</dd><dt>Held until</dt><dd>{}</dd><dt>Settled</dt><dd>{}</dd></dl>",
            esc(&money(r.amount_cents, currency)),
            esc(&r.state),
            esc(&r
                .actual_cents
                .map_or_else(|| "-".to_owned(), |a| money(a, currency))),
            esc(&when(r.expires_ms)),
            esc(&r.finalized_ms.map_or_else(|| "-".to_owned(), when)),
        ),
    };
    let approval = match &d.approval {
        None => "<p class=\"muted\">No approval request.</p>".to_owned(),
        Some(a) => format!(
            "<dl class=\"facts\" id=\"approval\"><dt>Request</dt><dd class=\"mono\">{}</dd><dt>State</dt><dd>{}</dd>\
             <dt>Approved by</dt><dd>{}</dd><dt>Denied by</dt><dd>{}</dd><dt>Quorum</dt><dd>{}</dd>\
             <dt>Requested</dt><dd>{}</dd><dt>Decided</dt><dd>{}</dd></dl>",
            esc(&a.id),
            esc(&a.state),
            if a.approvers.is_empty() {
                "-".to_owned()
            } else {
                a.approvers
                    .iter()
                    .enumerate()
                    .map(|(i, who)| match a.approver_ids.get(i) {
                        Some(id) => format!(
                            "{} <span class=\"mono muted\">({})</span>",
                            esc(who),
                            esc(id)
                        ),
                        None => esc(who),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            opt(a.denied_by.as_deref()),
            a.quorum,
            esc(&when(a.created_ms)),
            esc(&a.decided_ms.map_or_else(|| "-".to_owned(), when)),
        ),
    };
    let mut entries = String::new();
    for e in &d.ledger {
        entries.push_str(&format!(
            "<tr><td class=\"num\"><a href=\"/console/ledger/{seq}\">{seq}</a></td><td><code>{}</code></td>\
             <td>{}</td><td class=\"mono\">{}…</td></tr>",
            esc(&e.event),
            esc(&when(e.at_ms)),
            esc(e.hash.get(..16).unwrap_or(&e.hash)),
            seq = e.seq,
        ));
    }
    if entries.is_empty() {
        entries.push_str("<tr><td colspan=\"4\" class=\"muted\">No ledger entry found.</td></tr>");
    }
    let body = format!(
        "<h1>Decision <span class=\"mono\">{}</span></h1>\
         <div class=\"card\"><dl class=\"facts\" id=\"decision-facts\"><dt>Outcome</dt><dd class=\"{}\">{}</dd>\
         <dt>Reasons</dt><dd>{}</dd><dt>When</dt><dd>{}</dd><dt>Tool</dt><dd><code>{}</code></dd>\
         <dt>Agent</dt><dd class=\"mono\">{}</dd><dt>Vendor</dt><dd>{}</dd><dt>Amount</dt><dd>{}</dd>\
         <dt>Intent</dt><dd><a class=\"mono\" href=\"/console/intents/{}\">{}</a></dd>\
         <dt>Policy version</dt><dd>{}</dd></dl></div>\
         <h2>Proof trace</h2><table id=\"proof-trace\"><thead><tr><th scope=\"col\">Check</th>\
         <th scope=\"col\">Result</th><th scope=\"col\">Inputs</th></tr></thead><tbody>{checks}</tbody></table>\
         <h2>Reservation and settlement</h2>{reservation}<h2>Approval</h2>{approval}\
         <h2>Ledger entries</h2><table id=\"decision-ledger\"><thead><tr><th scope=\"col\">Seq</th>\
         <th scope=\"col\">Event</th><th scope=\"col\">At</th><th scope=\"col\">Hash</th></tr></thead>\
         <tbody>{entries}</tbody></table>",
        esc(&row.decision_id),
        outcome_class(&row.outcome),
        esc(&row.outcome),
        esc(&row.reason_codes.join(", ")),
        esc(&when(row.created_ms)),
        opt(row.tool.as_deref()),
        opt(row.agent.as_deref()),
        opt(row.vendor.as_deref()),
        esc(&row
            .amount_cents
            .map_or_else(|| "-".to_owned(), |a| money(a, currency))),
        esc(&row.intent_id),
        esc(&row.intent_id),
        d.result
            .policy_version
            .map_or_else(|| "-".to_owned(), |v| v.to_string()),
    );
    page(&signed, "Decision", "Decisions", &body)
}

pub(super) async fn ledger_entry(
    State(c): State<Shared>,
    headers: HeaderMap,
    Path(seq): Path<String>,
) -> Response {
    let signed = match reader(&c, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(seq) = seq.parse::<u64>() else {
        return page_error(StatusCode::BAD_REQUEST, "That is not a ledger position.");
    };
    let p = signed.principal.clone();
    let e = match c.run(move |e| e.ledger_entry_blocking(&p, seq)).await {
        Ok(e) => e,
        Err(e) => return engine_error(&e),
    };
    let decision = e.payload["decision_id"]
        .as_str()
        .and_then(|d| Uuid::parse_str(d).ok())
        .map(|d| format!("<dt>Decision</dt><dd><a class=\"mono\" href=\"/console/decisions/{d}\">{d}</a></dd>"))
        .unwrap_or_default();
    let body = format!(
        "<h1>Ledger entry {seq}</h1><div class=\"card\"><dl class=\"facts\"><dt>Event</dt><dd><code>{}</code></dd>\
         <dt>At</dt><dd>{}</dd>{decision}<dt>Hash</dt><dd class=\"mono\">{}</dd><dt>Previous hash</dt>\
         <dd class=\"mono\">{}</dd></dl></div><pre aria-label=\"The entry's payload as JSON\">{}</pre>\
         <nav class=\"pager\" aria-label=\"Neighbouring entries\">{}<a href=\"/console/ledger/{}\">Next entry</a> \
         <a href=\"/console/ledger\">Latest entries</a></nav>",
        esc(&e.event),
        esc(&when(e.at_ms)),
        esc(&e.hash),
        esc(&e.prev_hash),
        esc(&serde_json::to_string_pretty(&e.payload).unwrap_or_default()),
        if seq > 1 {
            format!(
                "<a href=\"/console/ledger/{}\">Previous entry</a> ",
                seq - 1
            )
        } else {
            String::new()
        },
        seq + 1,
    );
    page(&signed, "Ledger entry", "Ledger", &body)
}

// ---- what-if ----

#[derive(Debug, Default, Deserialize)]
pub(super) struct WhatIfForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    policy: String,
    /// The uploaded file's name, when the policy came from one.
    #[serde(default)]
    file_name: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
}

fn what_if_form(signed: &Signed, f: &WhatIfForm) -> String {
    format!(
        "<form method=\"post\" action=\"/console/what-if\" class=\"what-if\" aria-label=\"What-if replay\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"file_name\" id=\"w-file-name\" value=\"{}\">\
         <div class=\"field\"><label for=\"w-file\">Policy file (YAML)</label>\
         <input id=\"w-file\" type=\"file\" accept=\".yaml,.yml,.json,text/yaml,application/json\"></div>\
         <div class=\"field\"><label for=\"w-policy\">Policy</label>\
         <textarea id=\"w-policy\" name=\"policy\" rows=\"16\" spellcheck=\"false\" required>{}</textarea></div>\
         <div class=\"filters\"><div class=\"field\"><label for=\"w-since\">From (UTC)</label>\
         <input id=\"w-since\" name=\"since\" type=\"datetime-local\" step=\"any\" value=\"{}\"></div>\
         <div class=\"field\"><label for=\"w-until\">Until (UTC)</label>\
         <input id=\"w-until\" name=\"until\" type=\"datetime-local\" step=\"any\" value=\"{}\"></div>\
         <div class=\"field\"><button class=\"primary\" type=\"submit\" id=\"run-what-if\">Replay</button></div></div>\
         <p class=\"muted\">Replays the recorded decisions of the window under this policy, reading the \
         store and writing nothing (as <code>paybond policy replay</code>). Leave the times empty for \
         every decision.</p></form>",
        esc(&signed.csrf),
        esc(&f.file_name),
        esc(&f.policy),
        esc(&f.since),
        esc(&f.until),
    )
}

pub(super) async fn what_if_page(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let signed = match reader(&c, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let body = format!(
        "<h1>What if</h1>{}",
        what_if_form(&signed, &WhatIfForm::default())
    );
    page(&signed, "What if", "What if", &body)
}

fn report_html(r: &ReplayReport) -> String {
    let cash = |v: u64| money(v, "usd");
    let mut totals = String::new();
    for (name, before, after) in [
        ("Allowed", r.before.allowed, r.after.allowed),
        ("Held", r.before.held, r.after.held),
        ("Denied", r.before.denied, r.after.denied),
        ("Not reached", r.before.not_reached, r.after.not_reached),
    ] {
        totals.push_str(&format!(
            "<tr><th scope=\"row\">{name}</th><td class=\"num\">{before}</td><td class=\"num\">{after}</td></tr>"
        ));
    }
    totals.push_str(&format!(
        "<tr><th scope=\"row\">Spent</th><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
        esc(&cash(r.spent_before_cents)),
        esc(&cash(r.spent_after_cents))
    ));
    let chart = Stacked {
        id: "what-if-spend",
        title: "Spend per day, before and after",
        series: vec!["as recorded".to_owned(), "under this policy".to_owned()],
        bars: r
            .days
            .iter()
            .map(|d| {
                (
                    d.day.clone(),
                    vec![d.spent_before_cents, d.spent_after_cents],
                )
            })
            .collect(),
        line: None,
        format: &cash,
        label_every: (r.days.len() / 8).max(1),
        classes: Some(vec!["before", "after"]),
        grouped: true,
    }
    .render();
    let mut changes = String::new();
    for ch in &r.changes {
        changes.push_str(&format!(
            "<tr><td><a href=\"/console/decisions/{id}\">{}</a></td><td><code>{}</code></td>\
             <td class=\"num\">{}</td><td class=\"{}\">{}</td><td class=\"{}\">{}</td><td>{} → {}</td></tr>",
            esc(&ch.decided_at),
            esc(&ch.tool),
            esc(&cash(ch.amount_cents)),
            outcome_class(&ch.was),
            esc(&ch.was),
            outcome_class(&ch.now),
            esc(&ch.now),
            esc(&ch.was_reason_codes.join(", ")),
            esc(&ch.reason_codes.join(", ")),
            id = ch.decision_id,
        ));
    }
    if changes.is_empty() {
        changes.push_str("<tr><td colspan=\"6\" class=\"muted\">No decision changes.</td></tr>");
    }
    let window = match (&r.since, &r.until) {
        (None, None) => "every recorded decision".to_owned(),
        (Some(s), None) => format!("decisions from {s}"),
        (None, Some(u)) => format!("decisions before {u}"),
        (Some(s), Some(u)) => format!("decisions from {s} until {u}"),
    };
    format!(
        "<section aria-labelledby=\"h-report\" id=\"what-if-report\"><h2 id=\"h-report\">Replay report</h2>\
         <p id=\"what-if-summary\" role=\"status\">{} decisions replayed ({}) under {} (<span class=\"mono\">{}</span>): \
         <strong id=\"what-if-changed\">{}</strong> {}; {} would not have been spent, {} newly spent.</p>\
         <table id=\"what-if-totals\"><thead><tr><th scope=\"col\"></th><th scope=\"col\">As recorded</th>\
         <th scope=\"col\">Under this policy</th></tr></thead><tbody>{totals}</tbody></table>{chart}\
         <h3>Changed decisions</h3><table id=\"what-if-changes\"><thead><tr><th scope=\"col\">Decided</th>\
         <th scope=\"col\">Tool</th><th scope=\"col\">Amount</th><th scope=\"col\">Was</th><th scope=\"col\">Now</th>\
         <th scope=\"col\">Reasons</th></tr></thead><tbody>{changes}</tbody></table></section>",
        r.decisions,
        esc(&window),
        esc(&r.policy_file),
        esc(r.policy_digest.as_deref().unwrap_or("-")),
        r.changes.len(),
        if r.changes.len() == 1 {
            "decision changes"
        } else {
            "decisions change"
        },
        esc(&cash(r.not_spent_cents)),
        esc(&cash(r.newly_spent_cents)),
    )
}

pub(super) async fn what_if(
    State(c): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<WhatIfForm>,
) -> Response {
    let signed = match c.signed_post(&headers, &f.csrf).await {
        Ok(signed) => signed,
        Err(refused) => return refused,
    };
    if !reads_tenant(&signed.principal) {
        return page_error(
            StatusCode::FORBIDDEN,
            "What-if replay is open to operators, tenant admins and analysts (forbidden_role).",
        );
    }
    let file = Some(f.file_name.trim())
        .filter(|n| !n.is_empty())
        .unwrap_or("pasted policy")
        .to_owned();
    let render = |result: String, status: StatusCode| {
        let body = format!("<h1>What if</h1>{}{result}", what_if_form(&signed, &f));
        html(
            status,
            layout(
                "What if",
                "What if",
                Some((&signed.principal, &signed.csrf)),
                &body,
            ),
        )
    };
    let times = parse_time("From", &f.since).and_then(|s| Ok((s, parse_time("Until", &f.until)?)));
    let (since, until) = match times {
        Ok(t) => t,
        Err(why) => {
            return render(
                format!(
                    "<div class=\"flash error\" role=\"alert\">{}</div>",
                    esc(&why)
                ),
                StatusCode::UNPROCESSABLE_ENTITY,
            );
        }
    };
    // A file with any problem is refused whole, every problem at its line.
    let checked = paybond_policies::check_policy(&f.policy, &file);
    if !checked.is_valid() {
        let mut items = String::new();
        for d in &checked.errors {
            items.push_str(&format!(
                "<li><span class=\"mono\">{}:{}:{}</span> {}{} <code>{}</code></li>",
                esc(&d.file),
                d.line,
                d.column,
                if d.path.is_empty() {
                    String::new()
                } else {
                    format!("<code>{}</code>: ", esc(&d.path))
                },
                esc(&d.message),
                esc(&d.code),
            ));
        }
        return render(
            format!(
                "<div class=\"flash error\" role=\"alert\" id=\"policy-problems\">\
                 <p>The policy is not valid ({} {}); nothing was replayed.</p><ul>{items}</ul></div>",
                checked.errors.len(),
                if checked.errors.len() == 1 {
                    "problem"
                } else {
                    "problems"
                }
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    let p = signed.principal.clone();
    let policy = PolicyFile {
        text: f.policy.clone(),
        file: file.clone(),
    };
    match c
        .run(move |e| e.what_if_blocking(&p, policy, since, until))
        .await
    {
        Ok(report) => render(report_html(&report), StatusCode::OK),
        Err(e) => render(
            format!(
                "<div class=\"flash error\" role=\"alert\">{} ({})</div>",
                esc(&e.message),
                esc(e.code)
            ),
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
        ),
    }
}
