//! What the console's overview, decision search and decision pages read: sums and
//! lists over the decisions, reservations, approvals and ledger of one tenant.
//! Everything here only reads, on one snapshot beside the writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use paybond_middleware_core::wire::{Principal, VerifyResult};
use paybond_policies::{CapScope, CapWindow};
use serde_json::Value;
use uuid::Uuid;

use super::counters;
use super::ledger::{self, LedgerEvent};
use super::{Engine, READERS, require_role};
use crate::error::ApiError;
use crate::store::{SearchColumns, Tx};

const MINUTE_MS: i64 = 60_000;
/// How far past a decision's own entry its page looks for entries about it.
const LEDGER_WINDOW: u64 = 100_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// The decisions table's `reason_codes` column: each code between spaces
/// (` a b `), so that `LIKE '% a %'` finds one of them and nothing longer.
pub(crate) fn reason_column(codes: &[String]) -> String {
    let mut text = String::from(" ");
    for code in codes {
        text.push_str(code);
        text.push(' ');
    }
    text
}

/// Spend of one chart bar: a UTC day or hour, by tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendBar {
    /// Its start (Unix ms).
    pub start_ms: i64,
    /// Consumed per tool in it, in cents.
    pub by_tool: BTreeMap<String, u64>,
}

impl SpendBar {
    /// Everything consumed in it.
    pub fn total(&self) -> u64 {
        self.by_tool.values().sum()
    }
}

/// Decisions of one minute, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// The minute's start (Unix ms).
    pub start_ms: i64,
    /// Allowed.
    pub allow: u64,
    /// Held for approval.
    pub hold: u64,
    /// Denied.
    pub deny: u64,
}

/// How often a reason code refused or held a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonCount {
    /// `deny` or `hold`.
    pub outcome: String,
    /// The reason code.
    pub code: String,
    /// Decisions that gave it.
    pub count: u64,
}

/// How much of one rolling cap a bucket has used.
#[derive(Debug, Clone, PartialEq)]
pub struct CapUse {
    /// `tenant`, `agent`, `vendor` or `tool`.
    pub scope: &'static str,
    /// Which agent, vendor or tool (`None` for the tenant).
    pub key: Option<String>,
    /// `hour`, `day` or `month`.
    pub window: &'static str,
    /// The cap, in cents.
    pub limit_cents: u64,
    /// Consumed plus reserved (open, not lapsed) in the current window.
    pub spent_cents: u64,
    /// `spent / limit`, in percent.
    pub percent: f64,
    /// Until the window ends and its spend no longer counts (ms).
    pub frees_in_ms: i64,
}

/// Approvals: the queue and how fast it is decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalStats {
    /// Requests waiting for a decision.
    pub pending: u64,
    /// Requests decided (approved or denied) in the last 30 days.
    pub decided: u64,
    /// Median time from the request to its decision (ms).
    pub median_ms: Option<i64>,
    /// 90th percentile of that time (ms).
    pub p90_ms: Option<i64>,
    /// Approvals given per operator (their subject), most first.
    pub per_operator: Vec<(String, u64)>,
}

/// The console's overview of a tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    /// When it was read (Unix ms).
    pub now_ms: i64,
    /// The currency charted (the one most spent in).
    pub currency: String,
    /// Currencies spent in that the charts leave out.
    pub other_currencies: Vec<String>,
    /// The last 30 UTC days, oldest first, today last.
    pub days: Vec<SpendBar>,
    /// The last 24 hours, oldest first, this hour last.
    pub hours: Vec<SpendBar>,
    /// The tenant's daily cap (the smallest `scope: tenant, window: day` cap).
    pub day_cap_cents: Option<u64>,
    /// The tenant's hourly cap.
    pub hour_cap_cents: Option<u64>,
    /// The last 60 minutes, oldest first.
    pub minutes: Vec<OutcomeCounts>,
    /// Deny and hold reasons of the last 24 hours, most frequent first.
    pub reasons: Vec<ReasonCount>,
    /// The buckets closest to their rolling caps, most used first (at most 10).
    pub caps: Vec<CapUse>,
    /// The approval queue.
    pub approvals: ApprovalStats,
}

/// What the decision search looks for; every field narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionFilter {
    /// Decided at or after (Unix ms).
    pub from_ms: Option<i64>,
    /// Decided before (Unix ms).
    pub until_ms: Option<i64>,
    /// `allow`, `hold` or `deny`.
    pub outcome: Option<String>,
    /// One of its reason codes.
    pub reason: Option<String>,
    /// The policy tool.
    pub tool: Option<String>,
    /// The agent (its key's subject).
    pub agent: Option<String>,
    /// The vendor.
    pub vendor: Option<String>,
    /// The intent.
    pub intent: Option<Uuid>,
    /// Asked for at least (cents).
    pub min_cents: Option<u64>,
    /// Asked for at most (cents).
    pub max_cents: Option<u64>,
    /// Older than this page cursor (`<created_ms>:<id>` of the last row shown).
    pub before: Option<(i64, String)>,
}

/// One decision in the search's results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRow {
    /// The decision.
    pub decision_id: String,
    /// Its intent.
    pub intent_id: String,
    /// `allow`, `hold` or `deny`.
    pub outcome: String,
    /// When (Unix ms).
    pub created_ms: i64,
    /// The policy tool (`None` for a decision recorded before it was a column).
    pub tool: Option<String>,
    /// The agent.
    pub agent: Option<String>,
    /// The vendor.
    pub vendor: Option<String>,
    /// The amount asked for.
    pub amount_cents: Option<u64>,
    /// Its reason codes.
    pub reason_codes: Vec<String>,
    /// Its intent's currency.
    pub currency: Option<String>,
}

/// A page of the decision search, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionPage {
    /// The page's decisions.
    pub rows: Vec<DecisionRow>,
    /// The cursor of the next (older) page, if there is one.
    pub next: Option<String>,
}

/// The reservation an allow made, and how it settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// Reserved.
    pub amount_cents: u64,
    /// Consumed, once settled.
    pub actual_cents: Option<u64>,
    /// `open`, `consumed`, `released` or `expired`.
    pub state: String,
    /// Until when it held the amount (Unix ms).
    pub expires_ms: i64,
    /// When it was settled or expired (Unix ms).
    pub finalized_ms: Option<i64>,
}

/// The approval request a hold opened, and who decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalView {
    /// The request.
    pub id: String,
    /// `pending`, `approved`, `denied` or `expired`.
    pub state: String,
    /// Who approved, in order (their subjects).
    pub approvers: Vec<String>,
    /// The same by id, in order: `scim:<id>` for a person, a key's id for a key
    /// (empty for approvals recorded before ids were kept).
    pub approver_ids: Vec<String>,
    /// Who denied it, from the ledger.
    pub denied_by: Option<String>,
    /// Approvals needed.
    pub quorum: u64,
    /// When it was opened (Unix ms).
    pub created_ms: i64,
    /// When it was approved or denied (Unix ms).
    pub decided_ms: Option<i64>,
}

/// Everything about one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionDetail {
    /// The decision as the search lists it.
    pub row: DecisionRow,
    /// The answer verify gave, with its proof trace.
    pub result: VerifyResult,
    /// Its reservation (an allow).
    pub reservation: Option<Settlement>,
    /// Its approval request (a hold, or an allow its approval token made).
    pub approval: Option<ApprovalView>,
    /// The ledger entries about it: the decision, its reservation's end, its approval's.
    pub ledger: Vec<LedgerEvent>,
}

pub(crate) fn reasons_of(column: Option<String>) -> Vec<String> {
    column
        .map(|c| c.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The start of the UTC day or hour containing `ms`.
fn floor_to(ms: i64, unit: i64) -> i64 {
    ms.div_euclid(unit) * unit
}

fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank.
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

fn scope_name(scope: CapScope) -> &'static str {
    match scope {
        CapScope::Tenant => "tenant",
        CapScope::Agent => "agent",
        CapScope::Vendor => "vendor",
        CapScope::Tool => "tool",
    }
}

fn window_name(window: CapWindow) -> &'static str {
    match window {
        CapWindow::Hour => "hour",
        CapWindow::Day => "day",
        CapWindow::Month => "month",
    }
}

/// Consumed per (tool, bar) in `[since, now]`, for the currency most spent in.
fn spend_bars(
    tx: &dyn Tx,
    tenant: &str,
    since: i64,
    unit: i64,
    count: i64,
    now: i64,
) -> Result<(Vec<SpendBar>, String, Vec<String>), ApiError> {
    let rows = tx.consumed_since(tenant, since)?;
    let mut per_currency: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, currency, _, cents) in &rows {
        *per_currency.entry(currency.as_str()).or_default() += cents;
    }
    let currency = per_currency
        .iter()
        .max_by_key(|(_, cents)| **cents)
        .map_or("usd", |(c, _)| *c)
        .to_owned();
    let others = per_currency
        .keys()
        .filter(|c| **c != currency)
        .map(|c| (*c).to_owned())
        .collect();
    let last = floor_to(now, unit);
    let first = last - (count - 1) * unit;
    let mut bars: Vec<SpendBar> = (0..count)
        .map(|i| SpendBar {
            start_ms: first + i * unit,
            by_tool: BTreeMap::new(),
        })
        .collect();
    for (tool, c, created, cents) in rows {
        if c != currency || created < first {
            continue;
        }
        let index = usize::try_from((created - first) / unit).unwrap_or(usize::MAX);
        if let Some(bar) = bars.get_mut(index) {
            *bar.by_tool.entry(tool).or_default() += cents;
        }
    }
    Ok((bars, currency, others))
}

/// The smallest tenant-wide cap of `window`.
fn tenant_cap(policy: Option<&paybond_policies::PolicyDocument>, window: CapWindow) -> Option<u64> {
    policy?
        .spend_controls
        .iter()
        .flat_map(|c| c.caps.iter())
        .filter(|c| c.scope == CapScope::Tenant && c.window == window)
        .map(|c| c.limit_cents)
        .min()
}

/// Every bucket of every rolling cap with its current use.
fn cap_uses(
    tx: &dyn Tx,
    tenant: &str,
    policy: Option<&paybond_policies::PolicyDocument>,
    now: i64,
) -> Result<Vec<CapUse>, ApiError> {
    let mut uses = Vec::new();
    let caps = policy
        .iter()
        .flat_map(|p| p.spend_controls.iter())
        .flat_map(|c| c.caps.iter());
    for cap in caps {
        let timezone = cap.timezone.as_deref().unwrap_or("UTC");
        let Some((start, end)) = counters::window(now, cap.window, timezone) else {
            continue;
        };
        let rows = tx.cap_use(tenant, cap.scope, cap.key.as_deref(), (start, end), now)?;
        for (key, spent) in rows {
            let spent = spent.unwrap_or(0);
            uses.push(CapUse {
                scope: scope_name(cap.scope),
                key: key.filter(|_| cap.scope != CapScope::Tenant),
                window: window_name(cap.window),
                limit_cents: cap.limit_cents,
                spent_cents: spent,
                percent: if cap.limit_cents == 0 {
                    100.0
                } else {
                    spent as f64 * 100.0 / cap.limit_cents as f64
                },
                frees_in_ms: end - now,
            });
        }
    }
    uses.sort_by(|a, b| b.percent.total_cmp(&a.percent));
    Ok(uses)
}

fn approval_stats(tx: &dyn Tx, tenant: &str, now: i64) -> Result<ApprovalStats, ApiError> {
    let pending = tx.tenant_pending_approvals(tenant, now)?;
    let decided = tx.decided_approvals_since(tenant, now - 30 * DAY_MS)?;
    let mut waits: Vec<i64> = decided.iter().map(|(c, d, _)| d - c).collect();
    waits.sort_unstable();
    let mut per_operator: HashMap<String, u64> = HashMap::new();
    for (_, _, approvers) in &decided {
        let approvers: Vec<String> = serde_json::from_str(approvers).unwrap_or_default();
        for a in approvers {
            *per_operator.entry(a).or_default() += 1;
        }
    }
    let mut per_operator: Vec<(String, u64)> = per_operator.into_iter().collect();
    per_operator.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(ApprovalStats {
        pending,
        decided: decided.len() as u64,
        median_ms: percentile(&waits, 0.5),
        p90_ms: percentile(&waits, 0.9),
        per_operator,
    })
}

/// Fills in the search columns of decisions written without them (by a build
/// from before they existed) from their ledger entries, a batch at a time.
pub(crate) fn backfill(tx: &dyn Tx) -> Result<u64, ApiError> {
    let rows = tx.decisions_to_backfill()?;
    for (id, payload) in &rows {
        let payload: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
        let reasons: Vec<String> = payload["reason_codes"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        tx.set_search_columns(
            id,
            &SearchColumns {
                // Never NULL again, so the batch is not read twice.
                tool: payload["tool"].as_str().unwrap_or(""),
                agent: payload["agent"].as_str(),
                vendor: payload["vendor"].as_str(),
                amount_cents: payload["amount_cents"].as_u64(),
                reason_codes: &reason_column(&reasons),
            },
        )?;
    }
    Ok(rows.len() as u64)
}

impl Engine {
    /// The overview of the key's tenant (operators and tenant admins).
    pub async fn overview(self: &Arc<Self>, principal: &Principal) -> Result<Overview, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.overview_blocking(&principal))
            .await
    }

    /// [`Self::overview`] on the caller's thread, which waits for the store.
    pub(crate) fn overview_blocking(&self, principal: &Principal) -> Result<Overview, ApiError> {
        require_role(principal, READERS)?;
        let policy = self.effective_policy_blocking(principal).ok();
        let tenant = principal.tenant_id.as_str();
        self.read(|tx, now| {
            let doc = policy.as_ref().map(|p| &p.policy);
            let (days, currency, other_currencies) = spend_bars(
                tx,
                tenant,
                floor_to(now, DAY_MS) - 29 * DAY_MS,
                DAY_MS,
                30,
                now,
            )?;
            let (hours, _, _) = spend_bars(
                tx,
                tenant,
                floor_to(now, HOUR_MS) - 23 * HOUR_MS,
                HOUR_MS,
                24,
                now,
            )?;
            let first_minute = floor_to(now, MINUTE_MS) - 59 * MINUTE_MS;
            let mut minutes: Vec<OutcomeCounts> = (0..60)
                .map(|i| OutcomeCounts {
                    start_ms: first_minute + i * MINUTE_MS,
                    ..OutcomeCounts::default()
                })
                .collect();
            let per_minute = tx.outcomes_per_minute(tenant, first_minute)?;
            for (outcome, minute, count) in per_minute {
                let index = usize::try_from(minute * MINUTE_MS - first_minute)
                    .unwrap_or(usize::MAX)
                    / MINUTE_MS as usize;
                if let Some(m) = minutes.get_mut(index) {
                    match outcome.as_str() {
                        "allow" => m.allow += count,
                        "hold" => m.hold += count,
                        _ => m.deny += count,
                    }
                }
            }
            let grouped = tx.refusals_by_reason(tenant, now - DAY_MS)?;
            let mut reasons: BTreeMap<(String, String), u64> = BTreeMap::new();
            for (outcome, codes, count) in grouped {
                for code in reasons_of(codes) {
                    *reasons.entry((outcome.clone(), code)).or_default() += count;
                }
            }
            let mut reasons: Vec<ReasonCount> = reasons
                .into_iter()
                .map(|((outcome, code), count)| ReasonCount {
                    outcome,
                    code,
                    count,
                })
                .collect();
            reasons.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.code.cmp(&b.code)));
            let mut caps = cap_uses(tx, tenant, doc, now)?;
            caps.truncate(10);
            Ok(Overview {
                now_ms: now,
                currency,
                other_currencies,
                days,
                hours,
                day_cap_cents: tenant_cap(doc, CapWindow::Day),
                hour_cap_cents: tenant_cap(doc, CapWindow::Hour),
                minutes,
                reasons,
                caps,
                approvals: approval_stats(tx, tenant, now)?,
            })
        })
    }

    /// A page of the key's tenant's decisions that match `filter`, newest first.
    pub async fn search_decisions(
        self: &Arc<Self>,
        principal: &Principal,
        filter: &DecisionFilter,
        limit: u64,
    ) -> Result<DecisionPage, ApiError> {
        let principal = principal.clone();
        let filter = filter.clone();
        self.blocking(move |e| e.search_decisions_blocking(&principal, &filter, limit))
            .await
    }

    /// [`Self::search_decisions`] on the caller's thread, which waits for the store.
    pub(crate) fn search_decisions_blocking(
        &self,
        principal: &Principal,
        filter: &DecisionFilter,
        limit: u64,
    ) -> Result<DecisionPage, ApiError> {
        require_role(principal, READERS)?;
        let limit = limit.clamp(1, 500);
        self.read(|tx, _| {
            let mut rows = tx.search_decisions(&principal.tenant_id, filter, limit + 1)?;
            let more = rows.len() as u64 > limit;
            rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            let next = more
                .then(|| {
                    rows.last()
                        .map(|r| format!("{}:{}", r.created_ms, r.decision_id))
                })
                .flatten();
            Ok(DecisionPage { rows, next })
        })
    }

    /// One decision of the key's tenant with its reservation, approval and
    /// ledger entries; 404 `decision_not_found` if the tenant has none of that id.
    pub async fn decision_detail(
        self: &Arc<Self>,
        principal: &Principal,
        decision_id: Uuid,
    ) -> Result<DecisionDetail, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.decision_detail_blocking(&principal, decision_id))
            .await
    }

    /// [`Self::decision_detail`] on the caller's thread, which waits for the store.
    pub(crate) fn decision_detail_blocking(
        &self,
        principal: &Principal,
        decision_id: Uuid,
    ) -> Result<DecisionDetail, ApiError> {
        require_role(principal, READERS)?;
        let tenant = principal.tenant_id.as_str();
        let id = decision_id.to_string();
        self.read(|tx, _| {
            let (row, response, seq) = tx.decision_found(tenant, &id)?.ok_or_else(|| {
                ApiError::not_found("decision_not_found", "no such decision for this tenant")
            })?;
            let result: VerifyResult = serde_json::from_str(&response)?;
            let reservation = tx.settlement(tenant, &id)?;
            // The entries about it come after its own: those naming the decision
            // or its approval request, the next 200 at most (a hold's request is
            // opened just before its decision entry), among the tenant's next
            // LEDGER_WINDOW entries, so an old decision's page reads a bounded
            // part of a long chain.
            let entries_naming = |ids: &[&str]| -> Result<Vec<LedgerEvent>, ApiError> {
                let Some(seq) = seq else {
                    return Ok(Vec::new());
                };
                Ok(tx.ledger_entries_naming(
                    tenant,
                    (seq.saturating_sub(5), seq.saturating_add(LEDGER_WINDOW)),
                    ids,
                )?)
            };
            // A hold names its approval request; an allow made with an approval
            // token names it in its `approval.token_used` entry.
            let mut approval_id = result.approval_request_id.map(|a| a.to_string());
            let entries = match &approval_id {
                Some(a) => entries_naming(&[&id, a])?,
                None => entries_naming(&[&id])?,
            };
            if approval_id.is_none() {
                approval_id = entries
                    .iter()
                    .find(|e| e.event == "approval.token_used")
                    .and_then(|e| e.payload["approval_request_id"].as_str().map(str::to_owned));
            }
            let approval = match &approval_id {
                Some(a) => tx.approval_row(tenant, a)?.map(|r| ApprovalView {
                    id: r.id,
                    state: r.state,
                    approvers: serde_json::from_str(&r.approvers).unwrap_or_default(),
                    approver_ids: r
                        .approver_ids
                        .and_then(|t| serde_json::from_str(&t).ok())
                        .unwrap_or_default(),
                    denied_by: None,
                    quorum: u64::from(r.quorum),
                    created_ms: r.created,
                    decided_ms: r.decided,
                }),
                None => None,
            };
            let approval = approval.map(|mut a| {
                a.denied_by = entries
                    .iter()
                    .find(|e| e.event == "approval.denied")
                    .and_then(|e| e.payload["approver"].as_str().map(str::to_owned));
                a
            });
            Ok(DecisionDetail {
                row,
                result,
                reservation,
                approval,
                ledger: entries,
            })
        })
    }

    /// What-if for the key's tenant: its recorded decisions in `[since, until)`
    /// replayed under `policy` ([`Engine::replay_store`]'s fold, on one read-only
    /// snapshot of this engine's store).
    pub async fn what_if(
        self: &Arc<Self>,
        principal: &Principal,
        policy: super::PolicyFile,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> Result<super::replay::ReplayReport, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.what_if_blocking(&principal, policy, since_ms, until_ms))
            .await
    }

    /// [`Self::what_if`] on the caller's thread, which waits for the store.
    pub(crate) fn what_if_blocking(
        &self,
        principal: &Principal,
        policy: super::PolicyFile,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> Result<super::replay::ReplayReport, ApiError> {
        require_role(principal, READERS)?;
        let options = super::replay::ReplayOptions {
            policy,
            since_ms,
            until_ms,
            tenant: Some(principal.tenant_id.clone()),
        };
        self.store.read(|tx| super::replay::replay(tx, &options))
    }

    /// One ledger entry of the key's tenant; 404 `ledger_entry_not_found`.
    pub async fn ledger_entry(
        self: &Arc<Self>,
        principal: &Principal,
        seq: u64,
    ) -> Result<LedgerEvent, ApiError> {
        let principal = principal.clone();
        self.blocking(move |e| e.ledger_entry_blocking(&principal, seq))
            .await
    }

    /// [`Self::ledger_entry`] on the caller's thread, which waits for the store.
    pub(crate) fn ledger_entry_blocking(
        &self,
        principal: &Principal,
        seq: u64,
    ) -> Result<LedgerEvent, ApiError> {
        require_role(principal, READERS)?;
        self.read(|tx, _| {
            ledger::events(tx, &principal.tenant_id, seq.saturating_sub(1), 1)?
                .into_iter()
                .find(|e| e.seq == seq)
                .ok_or_else(|| {
                    ApiError::not_found("ledger_entry_not_found", "no such ledger entry")
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_column_finds_a_code_and_nothing_longer() {
        let column = reason_column(&["cap_exceeded".to_owned(), "approval_required".to_owned()]);
        assert_eq!(column, " cap_exceeded approval_required ");
        assert!(column.contains(" cap_exceeded "));
        assert!(!column.contains(" cap "));
        assert_eq!(
            reasons_of(Some(column)),
            ["cap_exceeded", "approval_required"]
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let waits = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100];
        assert_eq!(percentile(&waits, 0.5), Some(50));
        assert_eq!(percentile(&waits, 0.9), Some(90));
        assert_eq!(percentile(&[7], 0.9), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
