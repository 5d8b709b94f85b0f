//! The spend state the writer keeps in memory: what a decision reads about its
//! intent and each tenant's ledger tip, so that deciding reads nothing of the
//! database on the common path.
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

use std::collections::HashMap;

use paybond_middleware_core::wire::LifecycleStatus;

use crate::engine::rules::IntentFacts;
use crate::error::ApiError;
use crate::store::{Tx, args};

/// Intents kept at most; past it the eighth used longest ago is forgotten (read
/// again on demand), so memory stays bounded whatever the number of intents and
/// the intents in use stay.
const MAX_INTENTS: usize = 65_536;

/// The writer's in-memory spend state (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct LiveState {
    /// Each tenant's ledger tip: its last entry's seq and hash.
    tips: HashMap<String, (u64, String)>,
    /// What a decision reads of an intent, by intent id.
    intents: HashMap<String, LiveIntent>,
    /// Counts the intents' uses: each records its last ([`LiveIntent::used`]).
    clock: u64,
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
    /// No open reservation of the intent lapses before this (`i64::MAX`: none is
    /// open). Lowered by every reservation; finalizing one leaves it, so it errs
    /// early: a decision at or past it reads the lapsed amount, and with it the
    /// bound again.
    next_lapse_ms: i64,
    /// When it was last read, on the state's clock.
    used: u64,
}

impl LiveState {
    /// Forgets everything: read again from the database on demand.
    pub(crate) fn clear(&mut self) {
        self.tips.clear();
        self.intents.clear();
    }

    /// `tenant`'s ledger tip, if known.
    pub(crate) fn tip(&self, tenant: &str) -> Option<(u64, &str)> {
        self.tips
            .get(tenant)
            .map(|(seq, hash)| (*seq, hash.as_str()))
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
        let (lapsed, next): (u64, Option<i64>) = tx.query_one(
            "SELECT CAST(COALESCE(SUM(CASE WHEN expires_ms <= ?2 THEN amount_cents ELSE 0 END), 0)
                 AS BIGINT),
                 MIN(CASE WHEN expires_ms > ?2 THEN expires_ms END)
             FROM reservations WHERE intent_id = ?1 AND state = 'open'",
            args![intent, now],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
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

/// An intent as the database holds it, with when its first open reservation lapses.
fn load(tx: &dyn Tx, tenant: &str, intent: &str) -> Result<Option<LiveIntent>, ApiError> {
    let row = tx.query_opt(
        "SELECT state, deadline_ms, budget_cents, consumed_cents + reserved_cents,
             currency, operations
         FROM intents WHERE id = ?1 AND tenant_id = ?2",
        args![intent, tenant],
        |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<i64>(1)?,
                r.get::<u64>(2)?,
                r.get::<u64>(3)?,
                r.get::<String>(4)?,
                r.get::<String>(5)?,
            ))
        },
    )?;
    let Some((state_name, deadline_ms, budget_cents, counted_cents, currency, operations)) = row
    else {
        return Ok(None);
    };
    let next_lapse_ms: Option<i64> = tx.query_one(
        "SELECT MIN(expires_ms) FROM reservations WHERE intent_id = ?1 AND state = 'open'",
        args![intent],
        |r| r.get(0),
    )?;
    Ok(Some(LiveIntent {
        tenant: tenant.to_owned(),
        state: IntentFacts::parse_state(&state_name),
        state_name,
        deadline_ms,
        budget_cents,
        counted_cents,
        currency,
        operations: serde_json::from_str(&operations).unwrap_or_default(),
        next_lapse_ms: next_lapse_ms.unwrap_or(i64::MAX),
        used: 0,
    }))
}

/// Where the live state differs from the database (nothing, if it is in step):
/// every intent and tip it holds, read again and compared.
#[cfg(test)]
pub(crate) fn differences(tx: &dyn Tx) -> Result<Vec<String>, ApiError> {
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
}
