//! A tenant's spend state in memory: its intents' consumed and reserved amounts,
//! its reservations with their expiry, the spend of every rolling-cap bucket by
//! calendar window, each tool's calls of the last hour. It changes only by
//! applying effects in order (reserve, finalize, expire), with the same
//! arithmetic as the store's, and answers the rules' [`CallContext`] without a
//! query. What-if replay folds a recorded ledger through it.

use std::collections::{BTreeSet, HashMap};

use paybond_middleware_core::wire::{Finalization, LifecycleStatus};
use paybond_policies::PolicyDocument;
use serde_json::Value;
use uuid::Uuid;

use super::counters;
use super::rules::{
    Ask, Call, CallContext, CallWindow, HOUR_MS, IntentFacts, cap_buckets, tool_limits,
};
use crate::error::ApiError;
use crate::store::Tx;

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

/// What a reservation is made for.
struct Reserved<'a> {
    intent: &'a str,
    tool: &'a str,
    vendor: Option<&'a str>,
    agent: &'a str,
    agent_subject: Option<&'a str>,
    amount: u64,
}

/// Intents (state, consumed, reserved) and reservations (state), by id.
pub(crate) type Summary = (
    std::collections::BTreeMap<String, (String, u64, u64)>,
    std::collections::BTreeMap<Uuid, ReservationState>,
);

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
                let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                rate_windows.push(CallWindow {
                    calls: (times.len() - from).min(limit),
                    oldest: times.get(from).copied(),
                });
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
        self.reserve_for(
            decision_id,
            &Reserved {
                intent: &call.intent,
                tool: &call.tool,
                vendor: call.vendor,
                agent: call.agent,
                agent_subject: call.agent_subject,
                amount: call.amount,
            },
            now,
            expires_ms,
        );
    }

    fn reserve_for(&mut self, decision_id: Uuid, r: &Reserved<'_>, now: i64, expires_ms: i64) {
        let buckets = counters::buckets_of(r.agent, r.agent_subject, r.vendor, r.tool);
        for bucket in buckets {
            insert_sorted(
                self.by_bucket.entry(bucket.key()).or_default(),
                (now, decision_id),
            );
        }
        insert_sorted(self.by_tool.entry(r.tool.to_owned()).or_default(), now);
        if let Some(intent) = self.intents.get_mut(r.intent) {
            intent.reserved += r.amount;
        }
        self.expiring.insert((expires_ms, decision_id));
        self.reservations.insert(
            decision_id,
            Reservation {
                intent: r.intent.to_owned(),
                amount: r.amount,
                actual: 0,
                state: ReservationState::Open,
                expires_ms,
            },
        );
    }

    /// Ends an open reservation as the log says it ended, whatever the time.
    fn settle(&mut self, decision_id: Uuid, state: ReservationState, actual: u64) {
        let Some(r) = self.reservations.get_mut(&decision_id) else {
            return;
        };
        if r.state != ReservationState::Open {
            return;
        }
        let actual = if state == ReservationState::Consumed {
            actual.min(r.amount)
        } else {
            0
        };
        r.state = state;
        r.actual = actual;
        let (intent, amount, expires) = (r.intent.clone(), r.amount, r.expires_ms);
        self.expiring.remove(&(expires, decision_id));
        if let Some(i) = self.intents.get_mut(&intent) {
            i.reserved = i.reserved.saturating_sub(amount);
            i.consumed += actual;
        }
    }

    /// Applies one ledger entry of the tenant, in order: what rebuilding the spend
    /// state from the log does. An allow recorded before allows carried their
    /// reservation's expiry lapses `default_ttl_ms` after it was made.
    pub(crate) fn apply(&mut self, event: &str, payload: &Value, at_ms: i64, default_ttl_ms: i64) {
        let text = |k: &str| payload[k].as_str();
        let decision = || text("decision_id").and_then(|d| d.parse::<Uuid>().ok());
        match event {
            "intent.created" => {
                let Some(id) = text("intent_id") else { return };
                let operations = payload["allowed_tools"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                self.intents.insert(
                    id.to_owned(),
                    Intent {
                        facts: IntentFacts {
                            state: Some(LifecycleStatus::Created),
                            state_name: "created".to_owned(),
                            deadline_ms: payload["deadline_ms"].as_i64().unwrap_or(0),
                            budget_cents: payload["budget_cents"].as_u64().unwrap_or(0),
                            spent_cents: 0,
                            currency: text("currency").unwrap_or("usd").to_owned(),
                            operations,
                        },
                        consumed: 0,
                        reserved: 0,
                    },
                );
            }
            "intent.funded" => self.set_state(text("intent_id"), "funded"),
            "evidence.submitted" => {
                if let Some(state) = text("state") {
                    self.set_state(text("intent_id"), state);
                }
            }
            "intent.released" | "intent.refunded" | "intent.expired" => {
                self.set_state(text("intent_id"), event.trim_start_matches("intent."));
            }
            "decision.allow" => {
                let (Some(id), Some(intent), Some(tool), Some(agent), Some(amount)) = (
                    decision(),
                    text("intent_id"),
                    text("tool"),
                    text("agent"),
                    payload["amount_cents"].as_u64(),
                ) else {
                    return;
                };
                let expires = payload["expires_ms"]
                    .as_i64()
                    .unwrap_or(at_ms + default_ttl_ms);
                self.reserve_for(
                    id,
                    &Reserved {
                        intent,
                        tool,
                        vendor: text("vendor"),
                        agent,
                        agent_subject: text("agent_subject"),
                        amount,
                    },
                    at_ms,
                    expires,
                );
            }
            "reservation.consumed" | "reservation.released" | "reservation.expired" => {
                let Some(id) = decision() else { return };
                let state = match event {
                    "reservation.consumed" => ReservationState::Consumed,
                    "reservation.released" => ReservationState::Released,
                    _ => ReservationState::Expired,
                };
                self.settle(id, state, payload["actual_cents"].as_u64().unwrap_or(0));
            }
            _ => {}
        }
    }

    fn set_state(&mut self, intent: Option<&str>, name: &str) {
        if let Some(i) = intent.and_then(|id| self.intents.get_mut(id)) {
            i.facts.state = IntentFacts::parse_state(name);
            name.clone_into(&mut i.facts.state_name);
        }
    }

    /// The tenant's spend state rebuilt from its ledger, entry by entry.
    pub(crate) fn rebuild(
        tx: &dyn Tx,
        tenant: &str,
        default_ttl_ms: i64,
    ) -> Result<Self, ApiError> {
        let entries = tx.ledger_fold(tenant, false)?;
        let mut state = Self::default();
        for (event, payload, at) in entries {
            state.apply(&event, &serde_json::from_str(&payload)?, at, default_ttl_ms);
        }
        Ok(state)
    }

    /// Every intent (state, consumed, reserved) and reservation (state), in order:
    /// what two states are compared by.
    pub(crate) fn summary(&self) -> Summary {
        (
            self.intents
                .iter()
                .map(|(id, i)| {
                    (
                        id.clone(),
                        (i.facts.state_name.clone(), i.consumed, i.reserved),
                    )
                })
                .collect(),
            self.reservations
                .iter()
                .map(|(id, r)| (*id, r.state))
                .collect(),
        )
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

/// What the store's tables hold of a tenant's spend, as a [`Summary`].
pub(crate) fn tables_summary(tx: &dyn Tx, tenant: &str) -> Result<Summary, ApiError> {
    let intents = tx.intent_amounts_of(tenant)?;
    let reservations = tx.reservation_states_of(tenant)?;
    let mut by_id = std::collections::BTreeMap::new();
    for (id, state) in reservations {
        let state = match state.as_str() {
            "open" => ReservationState::Open,
            "consumed" => ReservationState::Consumed,
            "released" => ReservationState::Released,
            "expired" => ReservationState::Expired,
            other => {
                return Err(ApiError::internal(format_args!(
                    "reservation {id}: unknown state `{other}`"
                )));
            }
        };
        by_id.insert(
            id.parse::<Uuid>()
                .map_err(|e| ApiError::internal(format_args!("reservation id {id}: {e}")))?,
            state,
        );
    }
    Ok((
        intents
            .into_iter()
            .map(|(id, state, consumed, reserved)| (id, (state, consumed, reserved)))
            .collect(),
        by_id,
    ))
}

/// Whether every tenant's intents and reservations tables say what its ledger
/// says, rebuilt entry by entry: the first difference, if any.
pub(crate) fn check_projections(
    tx: &dyn Tx,
    default_ttl_ms: i64,
) -> Result<Option<String>, ApiError> {
    let tenants: Vec<String> = tx.tenant_ids()?;
    for tenant in tenants {
        let (log_intents, log_reservations) =
            SpendState::rebuild(tx, &tenant, default_ttl_ms)?.summary();
        let (intents, reservations) = tables_summary(tx, &tenant)?;
        for (id, stored) in &intents {
            let logged = log_intents.get(id);
            if logged != Some(stored) {
                return Ok(Some(format!(
                    "tenant {tenant}: intent {id} is (state, consumed, reserved) {stored:?} in \
                     the intents table but {logged:?} by its ledger"
                )));
            }
        }
        if let Some(id) = log_intents.keys().find(|id| !intents.contains_key(*id)) {
            return Ok(Some(format!(
                "tenant {tenant}: intent {id} is on the ledger but not in the intents table"
            )));
        }
        if reservations != log_reservations {
            let id = log_reservations
                .keys()
                .chain(reservations.keys())
                .find(|id| reservations.get(id) != log_reservations.get(id));
            return Ok(Some(format!(
                "tenant {tenant}: reservation {} differs between the reservations table and \
                 the ledger",
                id.map(Uuid::to_string).unwrap_or_default()
            )));
        }
    }
    Ok(None)
}

/// A state of `intents` funded intents and `reservations` open reservations
/// spread over them, as a busy tenant's (for the memory benchmark).
pub(crate) fn sample(intents: usize, reservations: usize) -> Box<SpendState> {
    let ids: Vec<String> = (0..intents.max(1))
        .map(|_| Uuid::new_v4().to_string())
        .collect();
    let mut state = Box::new(SpendState::new(ids.iter().map(|id| {
        (
            id.clone(),
            IntentFacts {
                state: Some(LifecycleStatus::Funded),
                state_name: "funded".to_owned(),
                deadline_ms: i64::MAX,
                budget_cents: u64::MAX / 4,
                spent_cents: 0,
                currency: "usd".to_owned(),
                operations: vec!["travel.book_hotel".to_owned()],
            },
        )
    })));
    let vendors = ["vendor_acme", "vendor_grand_hotel", "vendor_inn"];
    for n in 0..reservations {
        let now = 1_790_000_000_000 + i64::try_from(n).unwrap_or(i64::MAX);
        state.reserve_for(
            Uuid::now_v7(),
            &Reserved {
                intent: &ids[n % ids.len()],
                tool: "travel.book_hotel",
                vendor: Some(vendors[n % vendors.len()]),
                agent: "agent:bench",
                agent_subject: None,
                amount: 1_000,
            },
            now,
            now + 300_000,
        );
    }
    state
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
        assert_eq!(
            ctx.rate_windows,
            vec![CallWindow {
                calls: 2,
                oldest: Some(now - 2_000)
            }]
        );
        assert_eq!(ctx.intent.as_ref().unwrap().spent_cents, 9_000);
        // Two calls this hour of a limit of two: the third is refused.
        assert!(matches!(
            evaluate(&ctx, Recorder::default()).verdict,
            Verdict::Deny { .. }
        ));
        // An hour later both calls have left the window, and the cap's hour too.
        let later = now + HOUR_MS;
        let ctx = s.context(later, &call, &ask, Some(&doc));
        assert_eq!(ctx.rate_windows[0], CallWindow::default());
        assert_eq!(ctx.cap_usage, vec![vec![Some(0)]]);
    }

    /// One step of a random run against the engine.
    #[derive(Debug, Clone)]
    enum Step {
        Verify(u64),
        Complete(usize, bool, u64),
        Approve(usize, bool),
        /// Evidence for the booking of intent `.0`, completed at cost `.1`.
        Evidence(usize, u64),
        Advance(i64),
        Fund(u64),
        Restart,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (1_u64..26_000).prop_map(Step::Verify),
            3 => (0_usize..8, any::<bool>(), 0_u64..26_000)
                .prop_map(|(i, c, a)| Step::Complete(i, c, a)),
            2 => (0_usize..4, any::<bool>()).prop_map(|(i, yes)| Step::Approve(i, yes)),
            1 => (0_usize..4, 0_u64..30_000).prop_map(|(i, c)| Step::Evidence(i, c)),
            2 => (0_i64..400_000).prop_map(Step::Advance),
            1 => (1_000_u64..=60_000).prop_map(Step::Fund),
            1 => Just(Step::Restart),
        ]
    }

    /// A verify of `cents` for a booking on intent `i`.
    fn request(
        i: &paybond_middleware_core::wire::SandboxBootstrapResponse,
        cents: u64,
    ) -> paybond_middleware_core::wire::VerifyRequest {
        paybond_middleware_core::wire::VerifyRequest {
            vendor_id: Some("vendor_acme".into()),
            ..paybond_middleware_core::wire::VerifyRequest::new(
                i.intent_id,
                i.capability_token.clone(),
                BOOK,
                cents,
            )
        }
    }

    /// Awaits `f` on a runtime of its own: the engine's decision calls are async.
    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Runs `steps` on an engine over a SQLite file (reopened at each `Restart`),
    /// then checks that the spend state rebuilt from the ledger is the tables'.
    fn run(steps: &[Step]) {
        use crate::engine::{Clock, Engine, EngineConfig};
        use crate::store::Storage;
        use paybond_middleware_core::wire::{
            CompleteRequest, Environment, SandboxBootstrapRequest,
        };

        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(1_790_000_000_000);
        let open = || {
            let mut config = EngineConfig::new(Storage::File(dir.path().join("p.db")));
            config.clock = clock.clone();
            std::sync::Arc::new(Engine::open(config).unwrap())
        };
        let mut engine = open();
        let keys = engine
            .create_tenant_blocking("t", Environment::Sandbox)
            .unwrap();
        let agent = engine
            .authenticate_blocking(keys.agent.expose_secret())
            .unwrap();
        let operator = engine
            .authenticate_blocking(keys.operator.expose_secret())
            .unwrap();
        let fund = |engine: &Engine, budget: u64| {
            engine
                .bootstrap_sandbox_blocking(
                    &agent,
                    &SandboxBootstrapRequest {
                        operation: BOOK.to_owned(),
                        requested_spend_cents: budget,
                        ..Default::default()
                    },
                )
                .unwrap()
        };
        let mut intents = vec![fund(&engine, 60_000)];
        let mut allowed: Vec<Uuid> = Vec::new();
        let mut held: Vec<(Uuid, usize, u64)> = Vec::new();
        for (n, s) in steps.iter().enumerate() {
            match s {
                Step::Verify(cents) => {
                    let which = n % intents.len();
                    let r = block(engine.verify(agent.clone(), request(&intents[which], *cents)))
                        .unwrap();
                    if r.allow {
                        allowed.push(r.decision_id.unwrap());
                    } else if let Some(a) = r.approval_request_id.filter(|_| r.approval_required) {
                        held.push((a, which, *cents));
                    }
                }
                Step::Complete(i, consumed, actual) => {
                    if let Some(id) = allowed.get(i % allowed.len().max(1)) {
                        let req = CompleteRequest {
                            outcome: if *consumed {
                                Finalization::Consumed
                            } else {
                                Finalization::Released
                            },
                            actual_spend_cents: Some(*actual),
                        };
                        // Finalized, expired or closed: refused, and nothing changes.
                        let _ = block(engine.complete(agent.clone(), *id, req, None));
                    }
                }
                Step::Approve(i, yes) => {
                    if let Some((id, which, cents)) = held.get(i % held.len().max(1)).copied() {
                        if *yes {
                            let _ = engine.approve_blocking(&operator, id);
                            let token =
                                engine.approval_blocking(&agent, id).unwrap().approval_token;
                            let mut retry = request(&intents[which], cents);
                            retry.approval_token = token;
                            let r = block(engine.verify(agent.clone(), retry)).unwrap();
                            if r.allow {
                                allowed.push(r.decision_id.unwrap());
                            }
                        } else {
                            let _ = engine.deny_approval_blocking(&operator, id);
                        }
                    }
                }
                Step::Evidence(i, cost) => {
                    let intent = &intents[i % intents.len()];
                    let req = paybond_middleware_core::wire::EvidenceRequest {
                        payload: Some(
                            serde_json::json!({"status": "completed", "cost_cents": cost}),
                        ),
                        artifacts: None,
                        operation: Some(BOOK.into()),
                        requested_spend_cents: None,
                        metadata: None,
                    };
                    // Refused for a closed intent: nothing changes.
                    let _ =
                        block(engine.submit_evidence(agent.clone(), intent.intent_id, req, None));
                }
                Step::Advance(ms) => {
                    clock.advance_ms(*ms);
                    engine.sweep_blocking().unwrap();
                }
                Step::Fund(budget) => intents.push(fund(&engine, *budget)),
                Step::Restart => {
                    drop(engine);
                    engine = open();
                }
            }
            // The writer's live state is the database's, after every step.
            let differences = engine
                .tx(|tx, now| crate::engine::live::differences(tx, now))
                .unwrap();
            assert!(differences.is_empty(), "after {s:?}: {differences:?}");
        }
        let (rebuilt, tables) = engine
            .read(|tx, _| {
                Ok((
                    SpendState::rebuild(tx, &agent.tenant_id, 300_000)?.summary(),
                    tables_summary(tx, &agent.tenant_id)?,
                ))
            })
            .unwrap();
        assert_eq!(rebuilt, tables, "{steps:?}");
        assert!(engine.verify_ledger_blocking().unwrap().valid);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// The log holds the spend state: whatever the run (decisions, completions,
        /// approvals, expiries, restarts), rebuilt from the ledger it is what the
        /// tables say, and the writer's live state is what they say at every step.
        #[test]
        fn the_spend_state_rebuilt_from_the_ledger_is_the_tables(
            steps in proptest::collection::vec(step(), 1..40)
        ) {
            run(&steps);
        }
    }

    /// A busy intent past its first reservation's TTL reads what lapsed once per
    /// lapse, not on every decision after it.
    #[test]
    fn a_busy_intent_reads_what_lapsed_once_per_lapse() {
        use crate::engine::{Clock, Engine, EngineConfig};
        use crate::store::Storage;
        use paybond_middleware_core::wire::{
            CompleteRequest, Environment, SandboxBootstrapRequest,
        };
        let clock = Clock::manual(1_790_000_000_000);
        let mut config = EngineConfig::new(Storage::Memory);
        config.clock = clock.clone();
        let engine = std::sync::Arc::new(Engine::open(config).unwrap());
        let keys = engine
            .create_tenant_blocking("t", Environment::Sandbox)
            .unwrap();
        let agent = engine
            .authenticate_blocking(keys.agent.expose_secret())
            .unwrap();
        let intent = engine
            .bootstrap_sandbox_blocking(
                &agent,
                &SandboxBootstrapRequest {
                    operation: BOOK.to_owned(),
                    requested_spend_cents: 60_000,
                    ..Default::default()
                },
            )
            .unwrap();
        let request = || request(&intent, 100);
        let decide = || {
            let r = block(engine.verify(agent.clone(), request())).unwrap();
            assert!(r.allow, "{r:?}");
            let done = CompleteRequest {
                outcome: Finalization::Consumed,
                actual_spend_cents: Some(100),
            };
            block(engine.complete(agent.clone(), r.decision_id.unwrap(), done, None)).unwrap();
        };
        let reads = || {
            engine
                .tx(|tx, _| Ok(tx.live().unwrap().borrow().lapse_reads))
                .unwrap()
        };
        decide();
        // Past the first reservation's TTL (it was finalized: nothing lapsed).
        clock.advance_ms(crate::engine::DEFAULT_RESERVATION_TTL_MS + 1_000);
        let before = reads();
        for _ in 0..50 {
            decide();
            clock.advance_ms(10);
        }
        assert_eq!(
            reads() - before,
            1,
            "reads of what lapsed over 50 decisions"
        );
        // The open reservation a decision leaves lapses in turn: read once more.
        let r = block(engine.verify(agent.clone(), request())).unwrap();
        assert!(r.allow);
        clock.advance_ms(crate::engine::DEFAULT_RESERVATION_TTL_MS + 1_000);
        let before = reads();
        for _ in 0..20 {
            decide();
        }
        // It lapsed and waits for the sweep: every decision reads until then.
        assert_eq!(reads() - before, 20);
        engine.sweep_blocking().unwrap();
        let before = reads();
        for _ in 0..20 {
            decide();
        }
        assert!(reads() - before <= 1, "{}", reads() - before);
    }

    #[test]
    fn the_ledger_check_names_a_table_that_differs_from_the_log() {
        run(&[
            Step::Verify(1_000),
            Step::Verify(2_000),
            Step::Complete(0, true, 900),
        ]);
        let engine = crate::engine::Engine::in_memory().unwrap();
        let keys = engine
            .create_tenant_blocking("t", paybond_middleware_core::wire::Environment::Sandbox)
            .unwrap();
        let agent = engine
            .authenticate_blocking(keys.agent.expose_secret())
            .unwrap();
        let boot = engine
            .bootstrap_sandbox_blocking(
                &agent,
                &paybond_middleware_core::wire::SandboxBootstrapRequest {
                    operation: BOOK.to_owned(),
                    requested_spend_cents: 10_000,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(engine.verify_ledger_blocking().unwrap().valid);
        // A row changed behind the ledger's back.
        engine
            .tx(|tx, _| Ok(tx.tamper_consumed(&boot.intent_id.to_string(), 5)?))
            .unwrap();
        let check = engine.verify_ledger_blocking().unwrap();
        assert!(!check.valid);
        let problem = check.problem.unwrap();
        assert!(
            problem.contains(&boot.intent_id.to_string()) && problem.contains("intents table"),
            "{problem}"
        );
    }
}
