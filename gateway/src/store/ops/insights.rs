//! The console's insights: spend by tool and time, rolling caps' use, approval
//! waits, decisions by minute and reason, and the decision search. Read-only
//! projections, except the one backfill of the search columns.

use paybond_policies::CapScope;

use crate::engine::insights::{DecisionFilter, DecisionRow, Settlement, reasons_of};
use crate::store::{Arg, Row, StoreError, ToArg, Tx, args};

/// The columns [`decision_row`] reads, from [`DECISION_FROM`].
const DECISION_COLUMNS: &str = "d.id, d.intent_id, d.outcome, d.created_ms, d.tool, d.agent, \
     d.vendor, d.amount_cents, d.reason_codes, i.currency";

/// The decisions [`DECISION_COLUMNS`] reads from.
const DECISION_FROM: &str = "decisions d LEFT JOIN intents i ON i.id = d.intent_id";

fn decision_row(r: &Row) -> Result<DecisionRow, StoreError> {
    Ok(DecisionRow {
        decision_id: r.get(0)?,
        intent_id: r.get(1)?,
        outcome: r.get(2)?,
        created_ms: r.get(3)?,
        tool: r.get(4)?,
        agent: r.get(5)?,
        vendor: r.get(6)?,
        amount_cents: r.get(7)?,
        reason_codes: reasons_of(r.get(8)?),
        currency: r.get(9)?,
    })
}

/// A key of a cap's scope (none for the tenant's) and what is counted under it.
pub(crate) type CapCount = (Option<String>, Option<u64>);

/// A decision's search columns, as its ledger entry gives them.
pub(crate) struct SearchColumns<'a> {
    pub(crate) tool: &'a str,
    pub(crate) agent: Option<&'a str>,
    pub(crate) vendor: Option<&'a str>,
    pub(crate) amount_cents: Option<u64>,
    /// The reason codes, as [`crate::engine::insights::reason_column`] writes them.
    pub(crate) reason_codes: &'a str,
}

impl dyn Tx + '_ {
    /// The tenant's consumed reservations made since `since`: tool, its intent's
    /// currency, when, and what was consumed.
    pub(crate) fn consumed_since(
        &self,
        tenant: &str,
        since: i64,
    ) -> Result<Vec<(String, String, i64, u64)>, StoreError> {
        self.query_map(
            "SELECT r.tool, i.currency, r.created_ms, r.actual_cents FROM reservations r
             JOIN intents i ON i.id = r.intent_id
             WHERE r.tenant_id = ?1 AND r.created_ms >= ?2 AND r.state = 'consumed'",
            args![tenant, since],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get::<Option<u64>>(3)?.unwrap_or(0),
                ))
            },
        )
    }

    /// What the tenant's reservations made in `[start, end)` count against a cap
    /// of `scope` at `now` (consumed, and open not past their TTL), by the
    /// scope's key (all of them, or `key` alone); one row for the tenant scope.
    pub(crate) fn cap_use(
        &self,
        tenant: &str,
        scope: CapScope,
        key: Option<&str>,
        (start, end): (i64, i64),
        now: i64,
    ) -> Result<Vec<CapCount>, StoreError> {
        let column = match scope {
            CapScope::Tenant => "CAST(NULL AS TEXT)",
            CapScope::Agent => "agent",
            CapScope::Vendor => "vendor",
            CapScope::Tool => "tool",
        };
        let mut sql = format!(
            "SELECT {column}, CAST(SUM(CASE WHEN state = 'consumed' THEN COALESCE(actual_cents, 0)
                 WHEN state = 'open' AND expires_ms > ?4 THEN amount_cents ELSE 0 END) AS BIGINT)
             FROM reservations WHERE tenant_id = ?1 AND created_ms >= ?2 AND created_ms < ?3"
        );
        let mut bound: Vec<Arg<'_>> =
            vec![tenant.to_arg(), start.to_arg(), end.to_arg(), now.to_arg()];
        if scope != CapScope::Tenant {
            sql.push_str(&format!(" AND {column} IS NOT NULL"));
            if let Some(key) = key {
                sql.push_str(&format!(" AND {column} = ?5"));
                bound.push(key.to_arg());
            }
            sql.push_str(&format!(" GROUP BY {column}"));
        }
        self.query_map(&sql, &bound, |r| Ok((r.get(0)?, r.get(1)?)))
    }

    /// How many of the tenant's approval requests wait for an operator at `now`.
    pub(crate) fn tenant_pending_approvals(
        &self,
        tenant: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        self.query_one(
            "SELECT COUNT(*) FROM approvals WHERE tenant_id = ?1 AND state = 'pending'
             AND expires_ms > ?2",
            args![tenant, now],
            |r| r.get(0),
        )
    }

    /// The tenant's approval requests opened since `since` and decided: when
    /// opened, when decided, and who approved (a JSON array).
    pub(crate) fn decided_approvals_since(
        &self,
        tenant: &str,
        since: i64,
    ) -> Result<Vec<(i64, i64, String)>, StoreError> {
        self.query_map(
            "SELECT created_ms, decided_ms, approvers FROM approvals
             WHERE tenant_id = ?1 AND created_ms >= ?2 AND decided_ms IS NOT NULL",
            args![tenant, since],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }

    /// The tenant's decisions since `since`, counted by outcome and minute
    /// (Unix minutes).
    pub(crate) fn outcomes_per_minute(
        &self,
        tenant: &str,
        since: i64,
    ) -> Result<Vec<(String, i64, u64)>, StoreError> {
        self.query_map(
            "SELECT outcome, created_ms / 60000, COUNT(*) FROM decisions
             WHERE tenant_id = ?1 AND created_ms >= ?2 GROUP BY outcome, created_ms / 60000",
            args![tenant, since],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }

    /// The tenant's holds and denials since `since`, counted by outcome and
    /// reason codes (as stored).
    pub(crate) fn refusals_by_reason(
        &self,
        tenant: &str,
        since: i64,
    ) -> Result<Vec<(String, Option<String>, u64)>, StoreError> {
        self.query_map(
            "SELECT outcome, reason_codes, COUNT(*) FROM decisions
             WHERE tenant_id = ?1 AND created_ms >= ?2 AND outcome <> 'allow'
             GROUP BY outcome, reason_codes",
            args![tenant, since],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }

    /// At most 1,000 decisions without their search columns (made by a build
    /// from before them), with their ledger entries' payloads.
    pub(crate) fn decisions_to_backfill(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.query_map(
            "SELECT d.id, l.payload FROM decisions d
             JOIN ledger l ON l.tenant_id = d.tenant_id AND l.seq = d.ledger_seq
             WHERE d.tool IS NULL LIMIT 1000",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Sets a decision's search columns.
    pub(crate) fn set_search_columns(
        &self,
        id: &str,
        c: &SearchColumns<'_>,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE decisions SET tool = ?2, agent = ?3, vendor = ?4, amount_cents = ?5,
                 reason_codes = ?6 WHERE id = ?1",
            args![
                id,
                c.tool,
                c.agent,
                c.vendor,
                c.amount_cents,
                c.reason_codes
            ],
        )
        .map(drop)
    }

    /// At most `limit` of the tenant's decisions `filter` selects, newest first.
    pub(crate) fn search_decisions(
        &self,
        tenant: &str,
        filter: &DecisionFilter,
        limit: u64,
    ) -> Result<Vec<DecisionRow>, StoreError> {
        let mut sql =
            format!("SELECT {DECISION_COLUMNS} FROM {DECISION_FROM} WHERE d.tenant_id = ?1");
        let intent = filter.intent.map(|i| i.to_string());
        let reason = filter.reason.as_ref().map(|r| format!("% {r} %"));
        let mut bound: Vec<Arg<'_>> = vec![tenant.to_arg()];
        let mut push = |sql: &mut String, condition: &str, arg: Arg<'static>| {
            bound.push(arg);
            sql.push_str(&condition.replace('?', &format!("?{}", bound.len())));
        };
        let owned = |s: &str| Arg::Text(s.to_owned().into());
        if let Some(v) = filter.from_ms {
            push(&mut sql, " AND d.created_ms >= ?", Arg::Int(v));
        }
        if let Some(v) = filter.until_ms {
            push(&mut sql, " AND d.created_ms < ?", Arg::Int(v));
        }
        for (column, value) in [
            ("outcome", &filter.outcome),
            ("tool", &filter.tool),
            ("agent", &filter.agent),
            ("vendor", &filter.vendor),
            ("intent_id", &intent),
        ] {
            if let Some(v) = value {
                push(&mut sql, &format!(" AND d.{column} = ?"), owned(v));
            }
        }
        if let Some(v) = &reason {
            push(&mut sql, " AND d.reason_codes LIKE ?", owned(v));
        }
        if let Some(v) = filter.min_cents {
            push(
                &mut sql,
                " AND d.amount_cents >= ?",
                Arg::Int(i64::try_from(v).unwrap_or(i64::MAX)),
            );
        }
        if let Some(v) = filter.max_cents {
            push(
                &mut sql,
                " AND d.amount_cents <= ?",
                Arg::Int(i64::try_from(v).unwrap_or(i64::MAX)),
            );
        }
        if let Some((ms, id)) = &filter.before {
            bound.push(Arg::Int(*ms));
            bound.push(owned(id));
            let (a, b) = (bound.len() - 1, bound.len());
            sql.push_str(&format!(
                " AND (d.created_ms < ?{a} OR (d.created_ms = ?{a} AND d.id < ?{b}))"
            ));
        }
        sql.push_str(&format!(
            " ORDER BY d.created_ms DESC, d.id DESC LIMIT {limit}"
        ));
        self.query_map(&sql, &bound, decision_row)
    }

    /// The tenant's decision `id` as the search shows it, with its answer (JSON)
    /// and its place in the ledger.
    pub(crate) fn decision_found(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(DecisionRow, String, Option<u64>)>, StoreError> {
        self.query_opt(
            &format!(
                "SELECT {DECISION_COLUMNS}, d.response, d.ledger_seq FROM {DECISION_FROM}
                 WHERE d.id = ?1 AND d.tenant_id = ?2"
            ),
            args![id, tenant],
            |r| Ok((decision_row(r)?, r.get(10)?, r.get(11)?)),
        )
    }

    /// How the tenant's reservation `id` settled, if it was made.
    pub(crate) fn settlement(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<Settlement>, StoreError> {
        self.query_opt(
            "SELECT amount_cents, actual_cents, state, expires_ms, finalized_ms
             FROM reservations WHERE id = ?1 AND tenant_id = ?2",
            args![id, tenant],
            |r| {
                Ok(Settlement {
                    amount_cents: r.get(0)?,
                    actual_cents: r.get(1)?,
                    state: r.get(2)?,
                    expires_ms: r.get(3)?,
                    finalized_ms: r.get(4)?,
                })
            },
        )
    }
}
