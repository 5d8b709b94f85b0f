//! A tenant's spend state in memory: its intents' consumed and reserved amounts,
//! its reservations with their expiry, the spend of every rolling-cap bucket by
//! calendar window, each tool's calls of the last hour. It changes only by
//! applying effects in order (reserve, finalize, expire), with the same
//! arithmetic as the store's, and answers the rules' [`CallContext`] without a
//! query. What-if replay folds a recorded ledger through it.

use std::collections::{BTreeSet, HashMap};

use paybond_middleware_core::wire::{Finalization, LifecycleStatus};
use paybond_policies::PolicyDocument;
use uuid::Uuid;

use super::counters::{self, Bucket};
use super::rules::{Ask, Call, CallContext, IntentFacts, cap_buckets, tool_limits};

const HOUR_MS: i64 = 3_600_000;

/// Where a reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReservationState {
    Open,
    Consumed,
    Released,
    Expired,
}

/// One reservation, with what it is counted by.
#[derive(Debug, Clone)]
struct Reservation {
    intent: String,
    amount: u64,
    /// What was consumed (0 until consumed).
    actual: u64,
    state: ReservationState,
    expires_ms: i64,
}

impl Reservation {
    /// What it counts in a bucket's window at `now`: an open one its amount
    /// (unless past its TTL), a consumed one what was consumed.
    fn counted(&self, now: i64) -> u64 {
        match self.state {
            ReservationState::Open if self.expires_ms > now => self.amount,
            ReservationState::Consumed => self.actual,
            _ => 0,
        }
    }
}

/// An intent as the spend state holds it.
#[derive(Debug, Clone)]
pub(crate) struct Intent {
    pub(crate) facts: IntentFacts,
    pub(crate) consumed: u64,
    pub(crate) reserved: u64,
}

/// One tenant's spend state.
#[derive(Debug, Default)]
pub(crate) struct SpendState {
    intents: HashMap<String, Intent>,
    reservations: HashMap<Uuid, Reservation>,
    /// Open reservations by expiry.
    expiring: BTreeSet<(i64, Uuid)>,
    /// Each bucket's reservations, by creation time.
    by_bucket: HashMap<String, Vec<(i64, Uuid)>>,
    /// Each tool's reservations' creation times, in order.
    by_tool: HashMap<String, Vec<i64>>,
}

/// Inserts `item` into the sorted `list`, keeping it sorted.
fn insert_sorted<T: Ord>(list: &mut Vec<T>, item: T) {
    let at = list.partition_point(|x| *x <= item);
    list.insert(at, item);
}

impl SpendState {
    /// A state of these intents, nothing spent.
    pub(crate) fn new(intents: impl IntoIterator<Item = (String, IntentFacts)>) -> Self {
        Self {
            intents: intents
                .into_iter()
                .map(|(id, facts)| {
                    (
                        id,
                        Intent {
                            facts,
                            consumed: 0,
                            reserved: 0,
                        },
                    )
                })
                .collect(),
            ..Self::default()
        }
    }

    /// An intent, as the state holds it.
    #[cfg(test)]
    pub(crate) fn intent(&self, id: &str) -> Option<&Intent> {
        self.intents.get(id)
    }

    /// Where a reservation stands.
    #[cfg(test)]
    pub(crate) fn reservation(&self, id: Uuid) -> Option<ReservationState> {
        self.reservations.get(&id).map(|r| r.state)
    }

    /// Everything the rules read about `call` at `now`, from memory.
    pub(crate) fn context<'a>(
        &self,
        now: i64,
        call: &'a Call<'a>,
        ask: &'a Ask<'a>,
        policy: Option<&'a PolicyDocument>,
    ) -> CallContext<'a> {
        let intent = self.intents.get(&call.intent).map(|i| {
            let lapsed: u64 = self
                .expiring
                .range(..=(now, Uuid::max()))
                .filter_map(|(_, id)| self.reservations.get(id))
                .filter(|r| r.intent == call.intent)
                .map(|r| r.amount)
                .sum();
            IntentFacts {
                spent_cents: (i.consumed + i.reserved).saturating_sub(lapsed),
                ..i.facts.clone()
            }
        });
        let mut cap_usage = Vec::new();
        let mut rate_windows = Vec::new();
        if let (Some(doc), Ok(binding)) = (policy, &call.binding)
            && !ask.budget_only
        {
            for cap in doc.spend_controls.iter().flat_map(|c| c.caps.iter()) {
                let timezone = cap.timezone.as_deref().unwrap_or("UTC");
                let bounds = counters::window(now, cap.window, timezone);
                cap_usage.push(
                    cap_buckets(call, binding, cap)
                        .iter()
                        .map(|bucket| bounds.map(|b| self.bucket_spent(&bucket.key(), b, now)))
                        .collect(),
                );
            }
            for (tool, limit) in tool_limits(doc, &binding.tools).per_hour {
                let times = self
                    .by_tool
                    .get(&tool)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let from = times.partition_point(|t| *t <= now - HOUR_MS);
                rate_windows.push(
                    times[from..]
                        .iter()
                        .copied()
                        .take(usize::try_from(limit).unwrap_or(usize::MAX))
                        .collect(),
                );
            }
        }
        CallContext {
            now,
            call,
            ask,
            policy,
            token: None,
            intent,
            cap_usage,
            rate_windows,
            approval: None,
        }
    }

    /// The spend counted against bucket `key` in `[start, end)` at `now`.
    fn bucket_spent(&self, key: &str, (start, end): (i64, i64), now: i64) -> u64 {
        let Some(list) = self.by_bucket.get(key) else {
            return 0;
        };
        let from = list.partition_point(|(at, _)| *at < start);
        list[from..]
            .iter()
            .take_while(|(at, _)| *at < end)
            .filter_map(|(_, id)| self.reservations.get(id))
            .map(|r| r.counted(now))
            .sum()
    }

    /// Reserves an allowed call's amount under `decision_id`, until `expires_ms`.
    pub(crate) fn reserve(
        &mut self,
        decision_id: Uuid,
        call: &Call<'_>,
        now: i64,
        expires_ms: i64,
    ) {
        let buckets: Vec<String> = [
            Some(Bucket::Tenant),
            Some(Bucket::Agent(call.agent)),
            call.agent_subject.map(|s| Bucket::SubAgent(call.agent, s)),
            call.vendor.map(Bucket::Vendor),
            Some(Bucket::Tool(&call.tool)),
        ]
        .iter()
        .flatten()
        .map(Bucket::key)
        .collect();
        for key in buckets {
            insert_sorted(self.by_bucket.entry(key).or_default(), (now, decision_id));
        }
        insert_sorted(self.by_tool.entry(call.tool.clone()).or_default(), now);
        if let Some(intent) = self.intents.get_mut(&call.intent) {
            intent.reserved += call.amount;
        }
        self.expiring.insert((expires_ms, decision_id));
        self.reservations.insert(
            decision_id,
            Reservation {
                intent: call.intent.clone(),
                amount: call.amount,
                actual: 0,
                state: ReservationState::Open,
                expires_ms,
            },
        );
    }

    /// Finalizes an open reservation as the store's `complete` does (a consumed
    /// amount above the reservation settles at the reservation). `false` when it
    /// is not open, or past its TTL at `now`: nothing changes.
    pub(crate) fn finalize(
        &mut self,
        decision_id: Uuid,
        outcome: Finalization,
        actual: Option<u64>,
        now: i64,
    ) -> bool {
        let Some(r) = self.reservations.get_mut(&decision_id) else {
            return false;
        };
        if r.state != ReservationState::Open || now >= r.expires_ms {
            return false;
        }
        let (state, actual) = match outcome {
            Finalization::Consumed => (
                ReservationState::Consumed,
                actual.map_or(r.amount, |a| a.min(r.amount)),
            ),
            Finalization::Released => (ReservationState::Released, 0),
        };
        r.state = state;
        r.actual = actual;
        let (intent, amount, expires) = (r.intent.clone(), r.amount, r.expires_ms);
        self.expiring.remove(&(expires, decision_id));
        if let Some(i) = self.intents.get_mut(&intent) {
            i.reserved = i.reserved.saturating_sub(amount);
            i.consumed += actual;
        }
        true
    }

    /// Expires every open reservation past its TTL at `now`: its amount returns to
    /// its intent. Answers how many.
    pub(crate) fn expire_due(&mut self, now: i64) -> usize {
        let due: Vec<(i64, Uuid)> = self
            .expiring
            .range(..=(now, Uuid::max()))
            .copied()
            .collect();
        for key in &due {
            self.expiring.remove(key);
            if let Some(r) = self.reservations.get_mut(&key.1) {
                r.state = ReservationState::Expired;
                if let Some(i) = self.intents.get_mut(&r.intent) {
                    i.reserved = i.reserved.saturating_sub(r.amount);
                }
            }
        }
        due.len()
    }
}

/// An intent's state as the rules know it, for a replay: a closed intent was open
/// when its calls were decided.
pub(crate) fn reopened(facts: IntentFacts) -> IntentFacts {
    match facts.state {
        Some(
            LifecycleStatus::EvidenceSubmitted
            | LifecycleStatus::Released
            | LifecycleStatus::Refunded
            | LifecycleStatus::Expired,
        ) => IntentFacts {
            state: Some(LifecycleStatus::Funded),
            state_name: "funded".to_owned(),
            ..facts
        },
        _ => facts,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on setup failures

    use super::*;
    use crate::engine::rules::props::{BOOK, Sample, policy, sample_call};
    use crate::engine::rules::{Recorder, Verdict, bind_tool, evaluate};

    fn state(call: &Call<'_>) -> SpendState {
        SpendState::new([(call.intent.clone(), Sample::new(call).intent.unwrap())])
    }

    #[test]
    fn reserving_finalizing_and_expiring_move_the_intents_amounts() {
        let call = sample_call(BOOK, 5_000);
        let mut s = state(&call);
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        s.reserve(a, &call, 1_000, 301_000);
        s.reserve(b, &call, 2_000, 302_000);
        s.reserve(c, &call, 3_000, 303_000);
        assert_eq!(s.intent(&call.intent).unwrap().reserved, 15_000);
        assert!(s.finalize(a, Finalization::Consumed, Some(9_999), 10_000));
        assert!(!s.finalize(a, Finalization::Released, None, 10_000));
        assert!(s.finalize(b, Finalization::Released, None, 10_000));
        let i = s.intent(&call.intent).unwrap();
        assert_eq!((i.consumed, i.reserved), (5_000, 5_000));
        // Past its TTL: not finalized; the sweep returns it.
        assert!(!s.finalize(c, Finalization::Consumed, None, 303_000));
        assert_eq!(s.expire_due(303_000), 1);
        assert_eq!(s.reservation(c), Some(ReservationState::Expired));
        assert_eq!(s.intent(&call.intent).unwrap().reserved, 0);
    }

    #[test]
    fn the_context_counts_caps_and_rate_windows_as_the_store_does() {
        let doc = policy(
            "  tools:\n    travel.book_hotel: {limit_per_hour: 2}\n  caps:\n    - { scope: tenant, window: hour, limit_cents: 12000 }\n",
        );
        let mut call = sample_call(BOOK, 5_000);
        call.binding = bind_tool(&doc, BOOK, None);
        let mut s = state(&call);
        // Half past the hour: both calls fall in the cap's hour.
        let now = Sample::new(&call).now + 1_800_000;
        let ask = Ask::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        s.reserve(a, &call, now - 2_000, now + 300_000);
        s.reserve(b, &call, now - 1_000, now + 300_000);
        assert!(s.finalize(a, Finalization::Consumed, Some(4_000), now - 500));
        let ctx = s.context(now, &call, &ask, Some(&doc));
        assert_eq!(ctx.cap_usage, vec![vec![Some(9_000)]]);
        assert_eq!(ctx.rate_windows, vec![vec![now - 2_000, now - 1_000]]);
        assert_eq!(ctx.intent.as_ref().unwrap().spent_cents, 9_000);
        // Two calls this hour of a limit of two: the third is refused.
        assert!(matches!(
            evaluate(&ctx, Recorder::default()).verdict,
            Verdict::Deny { .. }
        ));
        // An hour later both calls have left the window, and the cap's hour too.
        let later = now + HOUR_MS;
        let ctx = s.context(later, &call, &ask, Some(&doc));
        assert!(ctx.rate_windows[0].is_empty());
        assert_eq!(ctx.cap_usage, vec![vec![Some(0)]]);
    }
}
