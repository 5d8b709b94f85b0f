//! The spend state the writer keeps in memory: what a decision reads about its
//! intent, the rolling-cap counters and hourly call windows its policy checks,
//! and each tenant's ledger tip, so that deciding reads nothing of the database on
//! the common path.
//!
//! It lives where every write of a store goes through one writer (SQLite: one
//! connection, see [`crate::store::Tx::live`]) and is changed only by the writer's
//! operations, in their order. It is a cache that is never stale:
//!
//! - an operation that changes an intent's amounts here ([`Tx::keep_live`]) does so
//!   in the same step it writes them;
//! - any other operation that writes, any operation that fails, any group whose
//!   commit fails, and any change committed by another connection to the database
//!   (another process on the same file) empties it;
//! - [`crate::engine::ledger::append`], the one writer of the ledger, keeps the
//!   tips.
//!
//! What is not here is read from the database, which holds everything (the
//! projections are written in the same transaction), so a miss costs a query, never
//! a wrong answer.

use std::collections::{HashMap, VecDeque};

use paybond_middleware_core::wire::LifecycleStatus;

use crate::engine::rules::{CallWindow, IntentFacts};
use crate::error::ApiError;
use crate::store::{IntentRow, Tx};

/// Intents kept at most; past it the eighth used longest ago is forgotten (read
/// again on demand), so memory stays bounded whatever the number of intents and
/// the intents in use stay.
const MAX_INTENTS: usize = 65_536;

/// Counter buckets (tenant and bucket) and hourly windows (tenant and tool) kept
/// at most; past it all of that kind are forgotten (read again on demand).
const MAX_BUCKETS: usize = 65_536;

/// Calls of the last hour one tool window holds at most (8 MB). An allowed call
/// is under its tool's limit, so a window never holds more than its limit; one of
/// a tool whose limit was lifted (or is above this) is forgotten past it, and read
/// again if a limit asks.
const MAX_WINDOW_CALLS: usize = 1_000_000;

/// Open reservations kept at most (about 1 KiB each); past it the eighth made
/// longest ago is forgotten (their complete reads them), so memory stays bounded
/// however many are open, and reservations never finalized do not crowd out new
/// ones. A reservation is held from its verify to its complete: this covers
/// two seconds of tool calls at 8,000 a second.
const MAX_RESERVATIONS: usize = 16_384;

/// An hour, in ms.
const HOUR_MS: i64 = crate::engine::rules::HOUR_MS;

/// The writer's in-memory spend state (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct LiveState {
    /// Each tenant's ledger tip: its last entry's seq and hash.
    tips: HashMap<String, (u64, String)>,
    /// What a decision reads of an intent, by intent id.
    intents: HashMap<String, LiveIntent>,
    /// Rolling-cap counters, by tenant and bucket ([`bucket_key`]): the windows
    /// read so far.
    counters: HashMap<String, Vec<LiveCounter>>,
    /// Each tool's reservations of the last hour, by tenant and tool
    /// ([`bucket_key`]): their creation times, oldest first, every one of them
    /// (a window is kept only when it was read whole).
    windows: HashMap<String, VecDeque<i64>>,
    /// Counts the intents' uses: each records its last ([`LiveIntent::used`]).
    clock: u64,
    /// Each tenant's stored policy version, as read (`None`: the tenant has no
    /// policy).
    policy_versions: HashMap<String, Option<u64>>,
    /// Open reservations this state's decisions made, by decision id, until
    /// they are finalized: what their evidence and complete read.
    reservations: HashMap<String, LiveReservation>,
    /// How many times decisions read what lapsed (for tests).
    #[cfg(test)]
    pub(crate) lapse_reads: u64,
}

/// An intent as a decision reads it.
#[derive(Debug, Clone)]
struct LiveIntent {
    tenant: String,
    state: Option<LifecycleStatus>,
    state_name: String,
    deadline_ms: i64,
    budget_cents: u64,
    /// Consumed plus reserved, as the intents table holds it (reservations past
    /// their TTL included until the sweep expires them).
    counted_cents: u64,
    currency: String,
    operations: Vec<String>,
    /// The JSON schema its evidence must match, if it has one.
    evidence_schema: Option<String>,
    /// No open reservation of the intent lapses before this (`i64::MAX`: none is
    /// open). Lowered by every reservation; finalizing one leaves it, so it errs
    /// early: a decision at or past it reads the lapsed amount, and with it the
    /// bound again.
    next_lapse_ms: i64,
    /// When it was last read, on the state's clock.
    used: u64,
}

/// An open reservation as held: what finalizing it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveReservation {
    pub(crate) tenant: String,
    pub(crate) intent: String,
    pub(crate) amount: u64,
    pub(crate) expires_ms: i64,
    pub(crate) created_ms: i64,
    pub(crate) agent: String,
    pub(crate) agent_subject: Option<String>,
    pub(crate) vendor: Option<String>,
    pub(crate) tool: String,
}

/// What evidence reads of an intent.
pub(crate) struct EvidenceFacts {
    pub(crate) state: String,
    pub(crate) budget_cents: u64,
    pub(crate) evidence_schema: Option<String>,
    pub(crate) operations: Vec<String>,
}

/// A rolling-cap counter's window as held.
#[derive(Debug, Clone, PartialEq)]
struct LiveCounter {
    start: i64,
    end: i64,
    /// The spend the `spend_counters` row holds (lapsed reservations the sweep
    /// has not expired yet included).
    spent: i64,
    /// No open reservation counted here lapses before this (as
    /// [`LiveIntent::next_lapse_ms`]).
    next_lapse_ms: i64,
}

/// Drops from a tool window (oldest first) the calls made an hour or more
/// before `now`.
fn drop_past_hour(calls: &mut VecDeque<i64>, now: i64) {
    while calls.front().is_some_and(|at| *at <= now - HOUR_MS) {
        calls.pop_front();
    }
}

/// The key of a tenant's counter bucket or tool window.
pub(crate) fn bucket_key(tenant: &str, bucket: &str) -> String {
    // The unit separator cannot occur in a tenant id.
    format!("{tenant}\u{1f}{bucket}")
}

impl LiveState {
    /// Forgets everything: read again from the database on demand.
    pub(crate) fn clear(&mut self) {
        self.policy_versions.clear();
        self.tips.clear();
        self.intents.clear();
        self.counters.clear();
        self.windows.clear();
        self.reservations.clear();
    }

    /// A decision's new open reservation `id`, first forgetting the eighth made
    /// longest ago if [`MAX_RESERVATIONS`] are held.
    pub(crate) fn hold_reservation(&mut self, id: String, reservation: LiveReservation) {
        self.hold_reservation_bounded(id, reservation, MAX_RESERVATIONS);
    }

    fn hold_reservation_bounded(&mut self, id: String, reservation: LiveReservation, bound: usize) {
        if self.reservations.len() >= bound {
            let mut made: Vec<i64> = self.reservations.values().map(|r| r.created_ms).collect();
            let cut = (made.len() / 8).max(1) - 1;
            let (_, newest_dropped, _) = made.select_nth_unstable(cut);
            let newest_dropped = *newest_dropped;
            self.reservations
                .retain(|_, r| r.created_ms > newest_dropped);
        }
        self.reservations.insert(id, reservation);
    }

    /// Open reservation `id` of `tenant`'s, if held.
    pub(crate) fn reservation(&self, tenant: &str, id: &str) -> Option<&LiveReservation> {
        self.reservations.get(id).filter(|r| r.tenant == tenant)
    }

    /// Reservation `id` is open no more.
    pub(crate) fn forget_reservation(&mut self, id: &str) {
        self.reservations.remove(id);
    }

    /// What evidence reads of `intent` (of `tenant`'s), if held.
    pub(crate) fn evidence_facts(&mut self, tenant: &str, intent: &str) -> Option<EvidenceFacts> {
        let held = self.touch(intent).filter(|i| i.tenant == tenant)?;
        Some(EvidenceFacts {
            state: held.state_name,
            budget_cents: held.budget_cents,
            evidence_schema: held.evidence_schema,
            operations: held.operations,
        })
    }

    /// `intent`'s lifecycle state and deadline, if held.
    pub(crate) fn intent_state(&self, tenant: &str, intent: &str) -> Option<(String, i64)> {
        self.intents
            .get(intent)
            .filter(|i| i.tenant == tenant)
            .map(|i| (i.state_name.clone(), i.deadline_ms))
    }

    /// The tenant's stored policy version, if read (`Some(None)`: it has none).
    pub(crate) fn policy_version(&self, tenant: &str) -> Option<Option<u64>> {
        self.policy_versions.get(tenant).copied()
    }

    /// Keeps the tenant's stored policy version, as read.
    pub(crate) fn set_policy_version(&mut self, tenant: &str, version: Option<u64>) {
        self.policy_versions.insert(tenant.to_owned(), version);
    }

    /// The counter `key` holds for the window `[start, end)`, if held and nothing
    /// counted there may have lapsed at `now`.
    fn counter(&self, key: &str, (start, end): (i64, i64), now: i64) -> Option<i64> {
        self.counters
            .get(key)?
            .iter()
            .find(|c| c.start == start && c.end == end && now < c.next_lapse_ms)
            .map(|c| c.spent)
    }

    /// Holds counter `key`'s window as read at `now`, dropping its windows that
    /// have ended (never read again).
    fn keep_counter(&mut self, key: String, counter: LiveCounter, now: i64) {
        if self.counters.len() >= MAX_BUCKETS && !self.counters.contains_key(&key) {
            self.counters.clear();
        }
        let windows = self.counters.entry(key).or_default();
        windows.retain(|c| c.end > now && (c.start, c.end) != (counter.start, counter.end));
        windows.push(counter);
    }

    /// A reservation's change of `delta` cents, created at `created_ms`, to the
    /// counters of `tenant`'s `bucket` (every held window containing it), lapsing
    /// at `lapses` if it is a new one.
    pub(crate) fn counted(
        &mut self,
        tenant: &str,
        bucket: &str,
        created_ms: i64,
        delta: i64,
        lapses: Option<i64>,
    ) {
        if self.counters.is_empty() {
            return;
        }
        let key = bucket_key(tenant, bucket);
        for c in self.counters.get_mut(&key).into_iter().flatten() {
            if c.start <= created_ms && created_ms < c.end {
                c.spent = c.spent.saturating_add(delta);
                if let Some(at) = lapses {
                    c.next_lapse_ms = c.next_lapse_ms.min(at);
                }
            }
        }
    }

    /// Tool window `key`'s calls in the hour before `now`, counted up to `limit`,
    /// if the window is held.
    fn window(&mut self, key: &str, now: i64, limit: u32) -> Option<CallWindow> {
        let calls = self.windows.get_mut(key)?;
        drop_past_hour(calls, now);
        Some(CallWindow {
            calls: calls
                .len()
                .min(usize::try_from(limit).unwrap_or(usize::MAX)),
            oldest: calls.front().copied(),
        })
    }

    /// Holds tool window `key`: every call of the hour, oldest first.
    fn keep_window(&mut self, key: String, calls: Vec<i64>) {
        if self.windows.len() >= MAX_BUCKETS && !self.windows.contains_key(&key) {
            self.windows.clear();
        }
        self.windows.insert(key, calls.into());
    }

    /// A call of `tenant`'s `tool` reserved at `at` (now).
    pub(crate) fn called(&mut self, tenant: &str, tool: &str, at: i64) {
        if self.windows.is_empty() {
            return;
        }
        let key = bucket_key(tenant, tool);
        if let Some(calls) = self.windows.get_mut(&key) {
            drop_past_hour(calls, at);
            calls.push_back(at);
            if calls.len() > MAX_WINDOW_CALLS {
                self.windows.remove(&key);
            }
        }
    }

    /// `tenant`'s ledger tip, if known.
    pub(crate) fn tip(&self, tenant: &str) -> Option<(u64, &str)> {
        self.tips
            .get(tenant)
            .map(|(seq, hash)| (*seq, hash.as_str()))
    }

    /// Whether every ledger tip held is `tenant`'s (what a PostgreSQL group
    /// carries over is one tenant's).
    pub(crate) fn tips_only_of(&self, tenant: &str) -> bool {
        self.tips.keys().all(|t| t == tenant)
    }

    /// `tenant`'s ledger tip is now `seq`, `hash`.
    pub(crate) fn set_tip(&mut self, tenant: &str, seq: u64, hash: String) {
        match self.tips.get_mut(tenant) {
            Some(tip) => *tip = (seq, hash),
            None => {
                self.tips.insert(tenant.to_owned(), (seq, hash));
            }
        }
    }

    /// `intent` as held, if it is, marked as just used.
    fn touch(&mut self, intent: &str) -> Option<LiveIntent> {
        self.clock += 1;
        let now = self.clock;
        self.intents.get_mut(intent).map(|i| {
            i.used = now;
            i.clone()
        })
    }

    /// Holds `intent`, first forgetting the eighth of the intents used longest
    /// ago if `bound` are held.
    fn keep(&mut self, intent: &str, mut held: LiveIntent, bound: usize) {
        if self.intents.len() >= bound {
            let mut uses: Vec<u64> = self.intents.values().map(|i| i.used).collect();
            let cut = (uses.len() / 8).max(1) - 1;
            let (_, oldest_kept, _) = uses.select_nth_unstable(cut);
            let oldest_kept = *oldest_kept;
            self.intents.retain(|_, i| i.used > oldest_kept);
        }
        self.clock += 1;
        held.used = self.clock;
        self.intents.insert(intent.to_owned(), held);
    }

    /// Whether `intent` is held.
    pub(crate) fn holds_intent(&self, intent: &str) -> bool {
        self.intents.contains_key(intent)
    }

    /// Takes the intents `other` holds and this does not.
    pub(crate) fn take_intents(&mut self, other: &mut Self) {
        for (id, held) in other.intents.drain() {
            if !self.holds_intent(&id) {
                self.keep(&id, held, MAX_INTENTS);
            }
        }
    }

    /// Holds `tenant`'s `intent` as read (`row`) under the tenant's lock, unless
    /// it is held already (what is held is as current: see the module docs).
    pub(crate) fn keep_read(&mut self, tenant: &str, intent: &str, row: IntentRow) {
        if !self.holds_intent(intent) {
            self.keep(intent, LiveIntent::read(tenant, row), MAX_INTENTS);
        }
    }

    /// A decision's reservation of `cents` on `intent`, lapsing at `expires_ms`.
    /// Nothing to do for an intent not held here (it is read with it).
    pub(crate) fn reserved(&mut self, intent: &str, cents: u64, expires_ms: i64) {
        if let Some(i) = self.intents.get_mut(intent) {
            i.counted_cents = i.counted_cents.saturating_add(cents);
            i.next_lapse_ms = i.next_lapse_ms.min(expires_ms);
        }
    }

    /// What a decision at `now` read of `intent`'s open reservations: `lapsed`
    /// cents past their TTL, and the first of the others to lapse (`None`: no
    /// other is open). With none lapsed, no reservation lapses before that; with
    /// some lapsed (waiting for the sweep), the next decision reads again.
    fn lapse_read(&mut self, intent: &str, lapsed: u64, next: Option<i64>) {
        #[cfg(test)]
        {
            self.lapse_reads += 1;
        }
        if let Some(i) = self.intents.get_mut(intent) {
            i.next_lapse_ms = if lapsed > 0 {
                i64::MIN
            } else {
                next.unwrap_or(i64::MAX)
            };
        }
    }

    /// `intent`'s lifecycle state is now `state`.
    pub(crate) fn state_changed(&mut self, intent: &str, state: &str) {
        if let Some(i) = self.intents.get_mut(intent) {
            i.state = IntentFacts::parse_state(state);
            state.clone_into(&mut i.state_name);
        }
    }

    /// A reservation of `reserved` cents on `intent` finalized at `actual` (0 when
    /// released): the rest returns to the budget.
    pub(crate) fn finalized(&mut self, intent: &str, reserved: u64, actual: u64) {
        if let Some(i) = self.intents.get_mut(intent) {
            i.counted_cents = i
                .counted_cents
                .saturating_sub(reserved)
                .saturating_add(actual);
        }
    }
}

/// What a decision at `now` reads of `intent` (of `tenant`'s): from the writer's
/// live state, or from the database (then kept in the live state, if the store
/// has one). `None` if the tenant has no such intent.
pub(crate) fn intent_facts(
    tx: &dyn Tx,
    tenant: &str,
    intent: &str,
    now: i64,
) -> Result<Option<IntentFacts>, ApiError> {
    let live = tx.live();
    let cached = live.and_then(|l| l.borrow_mut().touch(intent));
    let held = match cached {
        Some(held) => held,
        None => {
            let Some(held) = load(tx, tenant, intent)? else {
                return Ok(None);
            };
            if let Some(live) = live {
                live.borrow_mut().keep(intent, held.clone(), MAX_INTENTS);
            }
            held
        }
    };
    if held.tenant != tenant {
        return Ok(None);
    }
    // Reservations past their TTL return to the budget whether or not the sweep
    // has expired them yet; none has lapsed before `next_lapse_ms`. Past it, what
    // lapsed is read, and with it when the next open reservation lapses: the
    // bound moves on (unless lapsed ones wait for the sweep), so a busy intent
    // reads the database once per lapse, not on every decision after the first.
    let lapsed = if now >= held.next_lapse_ms {
        let (lapsed, next) = tx.lapse_of_intent(intent, now)?;
        if let Some(live) = live {
            live.borrow_mut().lapse_read(intent, lapsed, next);
        }
        lapsed
    } else {
        0
    };
    Ok(Some(IntentFacts {
        state: held.state,
        state_name: held.state_name,
        deadline_ms: held.deadline_ms,
        budget_cents: held.budget_cents,
        spent_cents: held.counted_cents.saturating_sub(lapsed),
        currency: held.currency,
        operations: held.operations,
    }))
}

/// The spend counted against a rolling-cap counter at `now` (`key`: its tenant
/// and bucket, [`bucket_key`]; `[start, end)`: its window), from the live state
/// when it holds it and nothing there may have lapsed; else from `read`, which
/// answers the counter's stored spend, what of it lapsed, and when the next open
/// reservation counted there lapses, and is then held.
pub(crate) fn counter_spent(
    tx: &dyn Tx,
    key: &str,
    window: (i64, i64),
    now: i64,
    read: impl FnOnce() -> Result<(i64, i64, Option<i64>), ApiError>,
) -> Result<u64, ApiError> {
    let live = tx.live();
    if let Some(spent) = live.and_then(|l| l.borrow().counter(key, window, now)) {
        return Ok(u64::try_from(spent).unwrap_or(0));
    }
    let (stored, lapsed, next) = read()?;
    if let Some(live) = live {
        live.borrow_mut().keep_counter(
            key.to_owned(),
            LiveCounter {
                start: window.0,
                end: window.1,
                spent: stored,
                next_lapse_ms: if lapsed > 0 {
                    i64::MIN
                } else {
                    next.unwrap_or(i64::MAX)
                },
            },
            now,
        );
    }
    Ok(u64::try_from(stored.saturating_sub(lapsed)).unwrap_or(0))
}

/// The reservations of `tool` (of `tenant`'s) created in the hour before `now`,
/// counted up to `limit`. From the live state when it holds the window; else
/// read, and held if the read found all of the hour's.
pub(crate) fn tool_window(
    tx: &dyn Tx,
    tenant: &str,
    tool: &str,
    limit: u32,
    now: i64,
) -> Result<CallWindow, ApiError> {
    let live = tx.live();
    let key = bucket_key(tenant, tool);
    if let Some(calls) = live.and_then(|l| l.borrow_mut().window(&key, now, limit)) {
        return Ok(calls);
    }
    // At most `limit` rows of the hour are read (the (tenant, tool, created_ms)
    // index), however busy the tool is.
    let calls = tx.tool_calls_since(tenant, tool, now - HOUR_MS, Some(limit))?;
    let window = CallWindow {
        calls: calls.len(),
        oldest: calls.first().copied(),
    };
    if let Some(live) = live
        && calls.len() < usize::try_from(limit).unwrap_or(usize::MAX)
    {
        live.borrow_mut().keep_window(key, calls);
    }
    Ok(window)
}

/// An intent as the database holds it, with when its first open reservation
/// lapses: one statement.
fn load(tx: &dyn Tx, tenant: &str, intent: &str) -> Result<Option<LiveIntent>, ApiError> {
    Ok(tx
        .intent_row(tenant, intent)?
        .map(|row| LiveIntent::read(tenant, row)))
}

impl LiveIntent {
    /// `tenant`'s intent as the store's `intent_row` read it.
    fn read(tenant: &str, row: IntentRow) -> Self {
        Self {
            tenant: tenant.to_owned(),
            state: IntentFacts::parse_state(&row.state),
            state_name: row.state,
            deadline_ms: row.deadline_ms,
            budget_cents: row.budget_cents,
            counted_cents: row.counted_cents,
            currency: row.currency,
            operations: serde_json::from_str(&row.operations).unwrap_or_default(),
            evidence_schema: row.evidence_schema,
            next_lapse_ms: row.next_lapse_ms.unwrap_or(i64::MAX),
            used: 0,
        }
    }
}

/// Where the live state differs from the database (nothing, if it is in step):
/// every intent and tip it holds, read again and compared.
#[cfg(test)]
pub(crate) fn differences(tx: &dyn Tx, now: i64) -> Result<Vec<String>, ApiError> {
    let Some(live) = tx.live() else {
        return Ok(Vec::new());
    };
    let state = live.borrow();
    let mut out = Vec::new();
    for (id, held) in &state.intents {
        match load(tx, &held.tenant, id)? {
            None => out.push(format!("intent {id}: held, but not in the database")),
            Some(stored) => {
                let facts = |i: &LiveIntent| {
                    (
                        i.state_name.clone(),
                        i.deadline_ms,
                        i.budget_cents,
                        i.counted_cents,
                        i.currency.clone(),
                        i.operations.clone(),
                        i.evidence_schema.clone(),
                    )
                };
                if facts(held) != facts(&stored) {
                    out.push(format!("intent {id}: held {held:?}, stored {stored:?}"));
                }
                // The held bound may be early (finalized reservations leave it),
                // never late.
                if held.next_lapse_ms > stored.next_lapse_ms {
                    out.push(format!(
                        "intent {id}: first lapse held at {}, stored at {}",
                        held.next_lapse_ms, stored.next_lapse_ms
                    ));
                }
            }
        }
    }
    for (key, windows) in &state.counters {
        let Some((tenant, bucket)) = key.split_once('\u{1f}') else {
            out.push(format!("counter {key}: not a tenant and bucket"));
            continue;
        };
        for c in windows {
            let stored = tx.counter(tenant, bucket, (c.start, c.end))?;
            if stored != Some(c.spent) {
                out.push(format!("counter {key} {c:?}: stored {stored:?}"));
            }
            // No open reservation counted there lapses before the held bound.
            let open = tx.open_reservations_made_in(tenant, (c.start, c.end))?;
            let first = open
                .iter()
                .filter(|(agent, subject, vendor, tool, _)| {
                    crate::engine::counters::buckets_of(
                        agent,
                        subject.as_deref(),
                        vendor.as_deref(),
                        tool,
                    )
                    .any(|b| b.key() == bucket)
                })
                .map(|r| r.4)
                .min();
            if first.is_some_and(|first| c.next_lapse_ms > first) {
                out.push(format!(
                    "counter {key} {c:?}: a reservation counted there lapses at {first:?}"
                ));
            }
        }
    }
    for (key, calls) in &state.windows {
        let Some((tenant, tool)) = key.split_once('\u{1f}') else {
            out.push(format!("window {key}: not a tenant and tool"));
            continue;
        };
        let stored = tx.tool_calls_since(tenant, tool, now - HOUR_MS, None)?;
        let held: Vec<i64> = calls
            .iter()
            .copied()
            .filter(|at| *at > now - HOUR_MS)
            .collect();
        if held != stored {
            out.push(format!("window {key}: held {held:?}, stored {stored:?}"));
        }
    }
    for (id, held) in &state.reservations {
        let stored = tx.reservation_as_held(id)?;
        if stored.as_ref() != Some(&(held.clone(), "open".to_owned())) {
            out.push(format!(
                "reservation {id}: held open as {held:?}, stored {stored:?}"
            ));
        }
    }
    for (tenant, (seq, hash)) in &state.tips {
        let stored = crate::engine::ledger::tip(tx, tenant)?;
        if (stored.seq, &stored.hash) != (*seq, hash) {
            out.push(format!(
                "tenant {tenant}: tip held at {seq}, stored at {}",
                stored.seq
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(n: u64) -> LiveIntent {
        LiveIntent {
            tenant: "t".to_owned(),
            state: None,
            state_name: "funded".to_owned(),
            deadline_ms: 0,
            budget_cents: n,
            counted_cents: 0,
            currency: "usd".to_owned(),
            operations: Vec::new(),
            evidence_schema: None,
            next_lapse_ms: i64::MAX,
            used: 0,
        }
    }

    #[test]
    fn a_full_state_forgets_the_intents_used_longest_ago_and_keeps_those_in_use() {
        let mut state = LiveState::default();
        const BOUND: usize = 64;
        for n in 0..BOUND as u64 {
            state.keep(&format!("i{n}"), intent(n), BOUND);
        }
        assert_eq!(state.intents.len(), BOUND);
        // Two intents stay in use while 1,000 others come and go.
        for n in BOUND as u64..BOUND as u64 + 1_000 {
            assert!(
                state.touch("i0").is_some(),
                "a hot intent was forgotten at {n}"
            );
            assert!(
                state.touch("i1").is_some(),
                "a hot intent was forgotten at {n}"
            );
            state.keep(&format!("i{n}"), intent(n), BOUND);
            assert!(state.intents.len() <= BOUND);
        }
        // The coldest went first: none of the first cold ones is left.
        assert!((2..BOUND as u64).all(|n| !state.intents.contains_key(&format!("i{n}"))));
        assert_eq!(state.touch("i0").map(|i| i.budget_cents), Some(0));
        assert!(state.touch("never").is_none());
    }

    #[test]
    fn a_full_state_forgets_the_reservations_made_longest_ago() {
        let mut state = LiveState::default();
        const BOUND: usize = 64;
        let made = |at: i64| LiveReservation {
            tenant: "t".to_owned(),
            intent: "i".to_owned(),
            amount: 1,
            expires_ms: at + 300_000,
            created_ms: at,
            agent: "a".to_owned(),
            agent_subject: None,
            vendor: None,
            tool: "tool".to_owned(),
        };
        // Reservations never finalized, then 1,000 more: each new one is held,
        // the oldest go, and no more than the bound stay.
        for at in 0..BOUND as i64 + 1_000 {
            state.hold_reservation_bounded(format!("r{at}"), made(at), BOUND);
            assert!(state.reservation("t", &format!("r{at}")).is_some());
            assert!(state.reservations.len() <= BOUND);
        }
        assert!(state.reservation("t", "r0").is_none());
        let newest = BOUND as i64 + 999;
        assert!(
            ((newest - 50)..=newest).all(|at| state.reservation("t", &format!("r{at}")).is_some())
        );
        // Another tenant's key never finds it.
        assert!(state.reservation("u", &format!("r{newest}")).is_none());
    }

    #[test]
    fn clearing_forgets_everything_held() {
        let mut state = LiveState::default();
        state.keep("i", intent(10), 64);
        state.set_tip("t", 3, "h".to_owned());
        state.set_policy_version("t", Some(2));
        state.keep_counter(
            bucket_key("t", "tenant"),
            LiveCounter {
                start: 0,
                end: 1_000,
                spent: 5,
                next_lapse_ms: i64::MAX,
            },
            10,
        );
        state.keep_window(bucket_key("t", "tool"), vec![1, 2]);
        state.hold_reservation(
            "r".to_owned(),
            LiveReservation {
                tenant: "t".to_owned(),
                intent: "i".to_owned(),
                amount: 1,
                expires_ms: 100,
                created_ms: 1,
                agent: "a".to_owned(),
                agent_subject: None,
                vendor: None,
                tool: "tool".to_owned(),
            },
        );
        assert!(
            state
                .counter(&bucket_key("t", "tenant"), (0, 1_000), 10)
                .is_some()
        );
        state.clear();
        assert!(state.touch("i").is_none());
        assert!(state.tip("t").is_none());
        assert!(state.policy_version("t").is_none());
        assert!(
            state
                .counter(&bucket_key("t", "tenant"), (0, 1_000), 10)
                .is_none()
        );
        assert!(state.window(&bucket_key("t", "tool"), 10, 100).is_none());
        assert!(state.reservation("t", "r").is_none());
    }
}
