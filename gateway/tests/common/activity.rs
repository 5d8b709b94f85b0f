//! A scripted run of several agents over three days under a manual clock: allows
//! (consumed and released), holds (approved, denied and pending), denies (over a
//! per-call cap, over an agent's daily cap) across four tools, three agents and
//! two vendors. What the console's overview, search and what-if are checked on.

use std::collections::BTreeMap;
use std::sync::Arc;

use paybond_gateway::{Clock, Engine, EngineConfig, IssueKeyRequest, Storage};
use paybond_middleware_core::wire::{
    CompleteRequest, Finalization, Principal, VerifyRequest, VerifyResult,
};
use uuid::Uuid;

use super::{Blocking, Fixture, block_on};

/// The tenant policy of the run.
pub const POLICY: &str = r#"
version: 1
name: ops
default_deny: true
tools:
  shop.buy: { side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion }
  data.purchase: { side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion }
  travel.book_hotel: { side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion }
  payout.send: { side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion }
spend_controls:
  tools:
    shop.buy: { max_per_call_cents: 5000, approval_threshold_cents: 2000 }
    data.purchase: { max_per_call_cents: 20000, approval_threshold_cents: 10000 }
    travel.book_hotel: { max_per_call_cents: 50000, approval_threshold_cents: 25000 }
    payout.send: { max_per_call_cents: 50000, approval_threshold_cents: 1000 }
  caps:
    - { scope: tenant, window: day, limit_cents: 100000 }
    - { scope: agent, window: day, limit_cents: 30000 }
    - { scope: vendor, key: vendor_grand_hotel, window: day, limit_cents: 60000 }
  approval:
    quorum: 1
    timeout_seconds: 900
"#;

/// The same policy with `shop.buy` capped at 10 USD a call: what-if turns its
/// larger recorded allows into denies.
pub fn stricter_policy() -> String {
    POLICY.replace(
        "shop.buy: { max_per_call_cents: 5000,",
        "shop.buy: { max_per_call_cents: 1000,",
    )
}

/// 2026-11-28T09:00:00Z: the run's first day.
pub const START_MS: i64 = 1_795_856_400_000;
pub const DAY_MS: i64 = 86_400_000;

/// The agent whose subject needs escaping in every page.
pub const ODD_AGENT: &str = "<gamma & \"co\">";

pub struct Activity {
    pub fx: Fixture,
    pub clock: Clock,
    /// `alpha`, `beta` and [`ODD_AGENT`], in that order.
    pub agents: Vec<Principal>,
    /// A second operator (`ops-two`).
    pub operator2: Principal,
    /// Consumed per UTC day (its start) and tool, as the run settled it.
    pub consumed: BTreeMap<i64, BTreeMap<String, u64>>,
    /// Decisions made, by outcome.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// The approved hold's retry (an allow made with the approval token).
    pub approved_retry: Uuid,
    /// The hold an operator denied.
    pub denied_hold: Uuid,
    /// The hold left pending (`payout.send`, 200 USD: over ten times its threshold).
    pub pending: Uuid,
    intents: BTreeMap<(usize, &'static str), (Uuid, paybond_middleware_core::CapabilityToken)>,
}

impl Activity {
    /// Runs the script on a new engine over `storage`.
    pub fn run(storage: Storage) -> Self {
        let clock = Clock::manual(START_MS);
        let mut config = EngineConfig::new(storage);
        config.clock = clock.clone();
        config.intent_ttl_ms = 30 * DAY_MS;
        config.capability_ttl_ms = 30 * DAY_MS;
        let fx = Fixture::with_config(config);
        block_on(fx.engine.publish_tenant_policy(&fx.admin, POLICY)).unwrap();
        let issue = |role: &str, subject: &str| {
            let key = block_on(fx.engine.issue_api_key(
                &fx.admin,
                &IssueKeyRequest {
                    role: role.to_owned(),
                    subject: Some(subject.to_owned()),
                },
            ))
            .unwrap();
            block_on(fx.engine.authenticate(key.api_key.expose_secret())).unwrap()
        };
        let agents = vec![
            issue("agent", "alpha"),
            issue("agent", "beta"),
            issue("agent", ODD_AGENT),
        ];
        let operator2 = issue("operator", "ops-two");
        let mut run = Self {
            fx,
            clock,
            agents,
            operator2,
            consumed: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            approved_retry: Uuid::nil(),
            denied_hold: Uuid::nil(),
            pending: Uuid::nil(),
            intents: BTreeMap::new(),
        };
        run.script();
        run
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.fx.engine
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// A verify by agent `a` of `cents` on `tool`, from `vendor`.
    pub fn call(
        &mut self,
        a: usize,
        tool: &'static str,
        cents: u64,
        vendor: Option<&str>,
        approval: Option<paybond_middleware_core::ApprovalToken>,
    ) -> VerifyResult {
        let agent = self.agents[a].clone();
        let (intent, token) = self
            .intents
            .entry((a, tool))
            .or_insert_with(|| self.fx.intent_for(&agent, tool, 500_000))
            .clone();
        let result = self
            .fx
            .engine
            .verify_now(
                &agent,
                &VerifyRequest {
                    vendor_id: vendor.map(str::to_owned),
                    operation: tool.into(),
                    approval_token: approval,
                    ..super::verify_request(intent, &token, cents)
                },
            )
            .unwrap();
        let outcome = if result.allow {
            "allow"
        } else if result.approval_required {
            "hold"
        } else {
            "deny"
        };
        *self.outcomes.entry(outcome).or_default() += 1;
        result
    }

    /// Settles an allow: consumed at `actual`, or released (`None`).
    pub fn settle(&mut self, a: usize, tool: &str, allowed: &VerifyResult, actual: Option<u64>) {
        assert!(allowed.allow, "{allowed:?}");
        let request = match actual {
            Some(cents) => CompleteRequest {
                outcome: Finalization::Consumed,
                actual_spend_cents: Some(cents),
            },
            None => CompleteRequest {
                outcome: Finalization::Released,
                actual_spend_cents: None,
            },
        };
        self.fx
            .engine
            .complete_now(
                &self.agents[a],
                allowed.decision_id.unwrap(),
                &request,
                None,
            )
            .unwrap();
        if let Some(cents) = actual {
            let day = self.now().div_euclid(DAY_MS) * DAY_MS;
            *self
                .consumed
                .entry(day)
                .or_default()
                .entry(tool.to_owned())
                .or_default() += cents;
        }
    }

    fn allow_and_consume(
        &mut self,
        a: usize,
        tool: &'static str,
        cents: u64,
        vendor: Option<&str>,
    ) {
        let r = self.call(a, tool, cents, vendor, None);
        self.settle(a, tool, &r, Some(cents));
        self.clock.advance_ms(20_000);
    }

    fn script(&mut self) {
        let op = self.fx.operator.clone();
        // Day 1 (2026-11-28): allows, one released; 60 small purchases.
        for cents in [1500, 1200] {
            self.allow_and_consume(0, "shop.buy", cents, Some("vendor_shop"));
        }
        let r = self.call(0, "shop.buy", 1800, Some("vendor_shop"), None);
        self.settle(0, "shop.buy", &r, None);
        self.allow_and_consume(1, "data.purchase", 8000, Some("vendor_data"));
        self.allow_and_consume(2, "travel.book_hotel", 20000, Some("vendor_grand_hotel"));
        for _ in 0..60 {
            let r = self.call(1, "shop.buy", 100, Some("vendor_shop"), None);
            self.settle(1, "shop.buy", &r, Some(100));
            self.clock.advance_ms(1_000);
        }

        // Day 2: a deny over the per-call cap; a hold approved after 2 minutes by the
        // second operator and retried; a hold denied after 10 minutes.
        self.clock.advance_ms(DAY_MS);
        let r = self.call(0, "shop.buy", 6000, Some("vendor_shop"), None);
        assert!(!r.allow && !r.approval_required, "{r:?}");
        let held = self.call(1, "data.purchase", 15000, Some("vendor_data"), None);
        assert!(held.approval_required, "{held:?}");
        self.clock.advance_ms(120_000);
        let approval = held.approval_request_id.unwrap();
        block_on(self.fx.engine.approve(&self.operator2, approval)).unwrap();
        let token = block_on(self.fx.engine.approval(&self.agents[1], approval))
            .unwrap()
            .approval_token
            .unwrap();
        let retry = self.call(1, "data.purchase", 15000, Some("vendor_data"), Some(token));
        self.approved_retry = retry.decision_id.unwrap();
        self.settle(1, "data.purchase", &retry, Some(15000));
        let held = self.call(2, "shop.buy", 3000, Some("vendor_shop"), None);
        assert!(held.approval_required, "{held:?}");
        self.clock.advance_ms(600_000);
        block_on(
            self.fx
                .engine
                .deny_approval(&op, held.approval_request_id.unwrap()),
        )
        .unwrap();
        self.denied_hold = held.decision_id.unwrap();

        // Day 3 (today): alpha nears its daily cap, then is denied over it; a
        // payout waits for approval.
        self.clock.advance_ms(DAY_MS);
        self.allow_and_consume(0, "data.purchase", 9000, Some("vendor_data"));
        self.allow_and_consume(1, "shop.buy", 1800, Some("vendor_shop"));
        self.allow_and_consume(0, "travel.book_hotel", 19000, Some("vendor_grand_hotel"));
        let r = self.call(0, "data.purchase", 5000, Some("vendor_data"), None);
        assert!(!r.allow && !r.approval_required, "{r:?}");
        let r = self.call(0, "shop.buy", 7000, Some("vendor_shop"), None);
        assert!(!r.allow && !r.approval_required, "{r:?}");
        let pending = self.call(2, "payout.send", 20000, Some("vendor_bank"), None);
        assert!(pending.approval_required, "{pending:?}");
        self.pending = pending.approval_request_id.unwrap();
        self.clock.advance_ms(30_000);
    }
}
