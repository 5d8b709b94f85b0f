//! Rolling-cap counters: the spend of each bucket (tenant, agent, sub-agent, vendor,
//! tool) in each calendar window, kept as it changes instead of summed per decision.
//!
//! A counter holds the consumed amounts plus the open reservations made in its
//! window. It is created the first time a cap reads it, from one sum over the
//! window's reservations; from then on every reservation, finalization and expiry
//! adjusts every counter whose window contains the reservation's creation time, so a
//! counter stays exact whichever policy (and caps) made it. Reservations past their
//! TTL that the sweep has not expired yet still sit in the counters; reads leave them
//! out.

use jiff::ToSpan;
use paybond_policies::CapWindow;

use crate::engine::live;
use crate::error::ApiError;
use crate::store::Tx;

/// A set of reservations a rolling cap counts.
pub(crate) enum Bucket<'a> {
    Tenant,
    /// Every reservation of an API key's subject.
    Agent(&'a str),
    /// The reservations of one sub-agent of an API key's subject.
    SubAgent(&'a str, &'a str),
    Vendor(&'a str),
    Tool(&'a str),
}

impl Bucket<'_> {
    pub(crate) fn key(&self) -> String {
        match self {
            Self::Tenant => "tenant".to_owned(),
            Self::Agent(a) => format!("agent:{a}"),
            // The unit separator cannot occur in either part of a well-formed request.
            Self::SubAgent(a, s) => format!("subagent:{a}\u{1f}{s}"),
            Self::Vendor(v) => format!("vendor:{v}"),
            Self::Tool(t) => format!("tool:{t}"),
        }
    }
}

/// What a reservation is counted by.
pub(crate) struct Counted<'a> {
    pub(crate) tenant: &'a str,
    pub(crate) created_ms: i64,
    pub(crate) agent: &'a str,
    pub(crate) agent_subject: Option<&'a str>,
    pub(crate) vendor: Option<&'a str>,
    pub(crate) tool: &'a str,
}

/// `[start, end)` (Unix ms) of the calendar hour, day or month containing `now` in
/// `timezone`; `None` for a timezone the database does not know (refused by the
/// policy checks).
pub(crate) fn window(now_ms: i64, window: CapWindow, timezone: &str) -> Option<(i64, i64)> {
    let tz = jiff::tz::TimeZone::get(timezone).ok()?;
    let z = jiff::Timestamp::from_millisecond(now_ms).ok()?.to_zoned(tz);
    let (start, end) = match window {
        CapWindow::Hour => {
            let start = z
                .with()
                .minute(0)
                .second(0)
                .subsec_nanosecond(0)
                .build()
                .ok()?;
            let end = start.checked_add(1.hour()).ok()?;
            (start, end)
        }
        CapWindow::Day => {
            let start = z.start_of_day().ok()?;
            let end = start.tomorrow().ok()?.start_of_day().ok()?;
            (start, end)
        }
        CapWindow::Month => {
            let start = z.first_of_month().ok()?.start_of_day().ok()?;
            let end = start
                .checked_add(1.month())
                .ok()?
                .first_of_month()
                .ok()?
                .start_of_day()
                .ok()?;
            (start, end)
        }
    };
    Some((
        start.timestamp().as_millisecond(),
        end.timestamp().as_millisecond(),
    ))
}

/// Spend counted against `bucket` in `[start, end)` at `now`: consumed amounts and
/// open reservations, without those past their TTL. From the writer's live state
/// when it holds the counter ([`live::counter_spent`]), else from the store.
pub(crate) fn spent(
    tx: &dyn Tx,
    tenant: &str,
    bucket: &Bucket<'_>,
    window: (i64, i64),
    now: i64,
) -> Result<u64, ApiError> {
    let key = bucket.key();
    live::counter_spent(tx, &live::bucket_key(tenant, &key), window, now, || {
        Ok(tx.load_counter(tenant, bucket, &key, window, now)?)
    })
}

/// Every bucket a reservation of `agent` (and its sub-agent), `vendor` and `tool`
/// is counted in, the tenant's included.
pub(crate) fn buckets_of<'a>(
    agent: &'a str,
    agent_subject: Option<&'a str>,
    vendor: Option<&'a str>,
    tool: &'a str,
) -> impl Iterator<Item = Bucket<'a>> {
    [
        Some(Bucket::Tenant),
        Some(Bucket::Agent(agent)),
        agent_subject.map(|s| Bucket::SubAgent(agent, s)),
        vendor.map(Bucket::Vendor),
        Some(Bucket::Tool(tool)),
    ]
    .into_iter()
    .flatten()
}

/// Adds `delta` cents to every counter the reservation falls into (in the
/// database, and in the writer's live state); `lapses` is a new reservation's
/// expiry.
///
/// One keyed update per bucket: a single statement with `bucket IN (…)` makes
/// SQLite build a temporary B-tree of the list on every call, which cost more than
/// the updates themselves. The store merges a group's updates of one counter
/// (`store::held`).
pub(crate) fn adjust(
    tx: &dyn Tx,
    r: &Counted<'_>,
    delta: i64,
    lapses: Option<i64>,
) -> Result<(), ApiError> {
    if delta == 0 {
        return Ok(());
    }
    let live = tx.live();
    for bucket in buckets_of(r.agent, r.agent_subject, r.vendor, r.tool) {
        let key = bucket.key();
        if let Some(live) = live {
            live.borrow_mut()
                .counted(r.tenant, &key, r.created_ms, delta, lapses);
        }
        tx.add_to_counter(r.tenant, &key, r.created_ms, delta)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_calendar_periods_in_their_timezone() {
        // 2026-03-08T12:00Z: the day New York moves its clocks forward (a 23-hour day).
        let now = 1_772_971_200_000;
        let (start, end) = window(now, CapWindow::Day, "America/New_York").unwrap();
        assert_eq!(end - start, 23 * 3_600_000);
        let (start, end) = window(now, CapWindow::Hour, "Asia/Kolkata").unwrap();
        assert_eq!((end - start, start % 3_600_000), (3_600_000, 1_800_000));
        let (start, end) = window(now, CapWindow::Month, "UTC").unwrap();
        assert_eq!(end - start, 31 * 86_400_000);
        assert!(window(now, CapWindow::Day, "Nowhere/Else").is_none());
    }
}
