//! The spend state: intents' amounts, reservations, rolling-cap counters, the
//! calls of rate windows, and the decisions and approval requests verify writes.

use crate::engine::counters::Bucket;
use crate::engine::rules::ApprovalFacts;
use crate::store::{Arg, Row, StoreError, ToArg, Tx, args};

/// What a decision reads of intent `?1` of tenant `?2`, with when its first open
/// reservation lapses.
///
/// That is an ordered scan that stops at its first row rather than
/// `MIN(expires_ms)`: a planner without statistics of a table that grew fast
/// (PostgreSQL before its first `ANALYZE`) answers the aggregate by reading every
/// open reservation of the intent, tens of thousands for a busy one.
pub(crate) const INTENT: &str = "SELECT state, deadline_ms, budget_cents,
        consumed_cents + reserved_cents, currency, operations,
        (SELECT r.expires_ms FROM reservations r
            WHERE r.intent_id = intents.id AND r.state = 'open'
            ORDER BY r.expires_ms LIMIT 1),
        evidence_schema
    FROM intents WHERE id = ?1 AND tenant_id = ?2";

/// The amount of intent `?1`'s open reservations that lapsed by `?2`, and when the
/// first of the others lapses: two range scans of the intent's open reservations
/// by expiry, neither reading the reservations that have not lapsed.
pub(crate) const LAPSE_OF_INTENT: &str = "SELECT
    (SELECT CAST(COALESCE(SUM(amount_cents), 0) AS BIGINT) FROM reservations
        WHERE intent_id = ?1 AND state = 'open' AND expires_ms <= ?2),
    (SELECT expires_ms FROM reservations
        WHERE intent_id = ?1 AND state = 'open' AND expires_ms > ?2
        ORDER BY expires_ms LIMIT 1)";

/// An intent as a decision reads it ([`INTENT`]).
#[derive(Debug)]
pub(crate) struct IntentRow {
    pub(crate) state: String,
    pub(crate) deadline_ms: i64,
    pub(crate) budget_cents: u64,
    /// Consumed and reserved, lapsed reservations included.
    pub(crate) counted_cents: u64,
    pub(crate) currency: String,
    /// The JSON array of its operations.
    pub(crate) operations: String,
    /// When its first open reservation lapses.
    pub(crate) next_lapse_ms: Option<i64>,
    pub(crate) evidence_schema: Option<String>,
}

impl IntentRow {
    /// A row of [`INTENT`].
    pub(in crate::store) fn read(r: &Row) -> Result<Self, StoreError> {
        Ok(Self {
            state: r.get(0)?,
            deadline_ms: r.get(1)?,
            budget_cents: r.get(2)?,
            counted_cents: r.get(3)?,
            currency: r.get(4)?,
            operations: r.get(5)?,
            next_lapse_ms: r.get(6)?,
            evidence_schema: r.get(7)?,
        })
    }
}

/// An open reservation as the buckets it counts in see it: its agent, sub-agent,
/// vendor, tool and expiry.
#[cfg(test)]
pub(crate) type OpenReservation = (String, Option<String>, Option<String>, String, i64);

/// A reservation an allow makes.
pub(crate) struct NewReservation<'a> {
    pub(crate) id: &'a str,
    pub(crate) tenant: &'a str,
    pub(crate) intent: &'a str,
    pub(crate) tool: &'a str,
    pub(crate) operation: &'a str,
    pub(crate) vendor: Option<&'a str>,
    pub(crate) agent: &'a str,
    pub(crate) agent_subject: Option<&'a str>,
    pub(crate) amount: u64,
    pub(crate) created_ms: i64,
    pub(crate) expires_ms: i64,
}

/// A decision's row (its read projection; the ledger entry is the record).
pub(crate) struct NewDecision<'a> {
    pub(crate) id: &'a str,
    pub(crate) tenant: &'a str,
    pub(crate) intent: &'a str,
    pub(crate) outcome: &'a str,
    /// The answer, as JSON.
    pub(crate) response: &'a str,
    pub(crate) created_ms: i64,
    pub(crate) ledger_seq: u64,
    pub(crate) tool: &'a str,
    pub(crate) agent: &'a str,
    pub(crate) vendor: Option<&'a str>,
    pub(crate) amount: u64,
    /// The reason codes, as the insights read them.
    pub(crate) reason_codes: &'a str,
}

/// An approval request a held call opens.
pub(crate) struct NewApproval<'a> {
    pub(crate) id: &'a str,
    pub(crate) tenant: &'a str,
    pub(crate) intent: &'a str,
    pub(crate) decision: &'a str,
    pub(crate) request_digest: &'a str,
    pub(crate) operation: &'a str,
    pub(crate) tool: &'a str,
    pub(crate) vendor: Option<&'a str>,
    pub(crate) amount: u64,
    /// The reason codes, as a JSON array.
    pub(crate) reason_codes: &'a str,
    pub(crate) quorum: u32,
    pub(crate) created_ms: i64,
    pub(crate) expires_ms: i64,
    pub(crate) agent: &'a str,
    pub(crate) key_id: &'a str,
}

/// The condition that selects a bucket's reservations, its placeholders numbered
/// from `first`, and their arguments.
fn bucket_filter<'a>(bucket: &'a Bucket<'a>, first: usize) -> (String, Vec<Arg<'a>>) {
    let next = first + 1;
    match bucket {
        Bucket::Tenant => (String::new(), vec![]),
        Bucket::Agent(a) => (format!(" AND agent = ?{first}"), vec![a.to_arg()]),
        Bucket::SubAgent(a, s) => (
            format!(" AND agent = ?{first} AND agent_subject = ?{next}"),
            vec![a.to_arg(), s.to_arg()],
        ),
        Bucket::Vendor(v) => (format!(" AND vendor = ?{first}"), vec![v.to_arg()]),
        Bucket::Tool(t) => (format!(" AND tool = ?{first}"), vec![t.to_arg()]),
    }
}

impl dyn Tx + '_ {
    /// Intent `intent` of `tenant`, as a decision reads it.
    pub(crate) fn intent_row(
        &self,
        tenant: &str,
        intent: &str,
    ) -> Result<Option<IntentRow>, StoreError> {
        self.query_opt(INTENT, args![intent, tenant], IntentRow::read)
    }

    /// The amount of the intent's open reservations that lapsed by `now`, and
    /// when the first of the others lapses.
    pub(crate) fn lapse_of_intent(
        &self,
        intent: &str,
        now: i64,
    ) -> Result<(u64, Option<i64>), StoreError> {
        self.query_one(LAPSE_OF_INTENT, args![intent, now], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
    }

    /// When the reservations of the tenant's `tool` made after `since` were
    /// made, in order; at most `limit` (the (tenant, tool, created_ms) index).
    pub(crate) fn tool_calls_since(
        &self,
        tenant: &str,
        tool: &str,
        since: i64,
        limit: Option<u32>,
    ) -> Result<Vec<i64>, StoreError> {
        match limit {
            Some(limit) => self.query_map(
                "SELECT created_ms FROM reservations
                 WHERE tenant_id = ?1 AND tool = ?2 AND created_ms > ?3
                 ORDER BY created_ms LIMIT ?4",
                args![tenant, tool, since, limit],
                |r| r.get(0),
            ),
            None => self.query_map(
                "SELECT created_ms FROM reservations
                 WHERE tenant_id = ?1 AND tool = ?2 AND created_ms > ?3 ORDER BY created_ms",
                args![tenant, tool, since],
                |r| r.get(0),
            ),
        }
    }

    /// A rolling-cap counter's stored spend in `[start, end)`, if it was made.
    pub(crate) fn counter(
        &self,
        tenant: &str,
        bucket: &str,
        (start, end): (i64, i64),
    ) -> Result<Option<i64>, StoreError> {
        self.query_opt(
            "SELECT spent_cents FROM spend_counters
             WHERE tenant_id = ?1 AND bucket = ?2 AND window_start = ?3 AND window_end = ?4",
            args![tenant, bucket, start, end],
            |r| r.get(0),
        )
    }

    /// What the database holds of `bucket`'s counter (stored under `key`) at
    /// `now`: its stored spend (made, from one sum over the window's
    /// reservations, the first time it is read), what of it lapsed (open, past
    /// their TTL, not yet expired by the sweep: usually none), and when the first
    /// of the other open reservations counted there lapses. The (state,
    /// expires_ms) index finds the last two.
    pub(crate) fn load_counter(
        &self,
        tenant: &str,
        bucket: &Bucket<'_>,
        key: &str,
        (start, end): (i64, i64),
        now: i64,
    ) -> Result<(i64, i64, Option<i64>), StoreError> {
        let counted = match self.counter(tenant, key, (start, end))? {
            Some(c) => c,
            None => {
                let (filter, extra) = bucket_filter(bucket, 4);
                let mut a = args![tenant, start, end].to_vec();
                a.extend(extra);
                let c: i64 = self.query_one(
                    &format!(
                        "SELECT CAST(COALESCE(SUM(CASE WHEN state = 'open' THEN amount_cents
                         WHEN state = 'consumed' THEN actual_cents ELSE 0 END), 0) AS BIGINT)
                         FROM reservations WHERE tenant_id = ?1 AND created_ms >= ?2 AND created_ms < ?3{filter}"
                    ),
                    &a,
                    |r| r.get(0),
                )?;
                self.execute(
                    "INSERT INTO spend_counters (tenant_id, bucket, window_start, window_end, spent_cents)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    args![tenant, key, start, end, c],
                )?;
                c
            }
        };
        let (filter, extra) = bucket_filter(bucket, 5);
        let mut a = args![tenant, start, end, now].to_vec();
        a.extend(extra);
        let lapsed: i64 = self.query_one(
            &format!(
                "SELECT CAST(COALESCE(SUM(amount_cents), 0) AS BIGINT) FROM reservations
                 WHERE state = 'open' AND expires_ms <= ?4 AND tenant_id = ?1
                 AND created_ms >= ?2 AND created_ms < ?3{filter}"
            ),
            &a,
            |r| r.get(0),
        )?;
        let next: Option<i64> = self.query_opt(
            &format!(
                "SELECT expires_ms FROM reservations
                 WHERE state = 'open' AND expires_ms > ?4 AND tenant_id = ?1
                 AND created_ms >= ?2 AND created_ms < ?3{filter}
                 ORDER BY expires_ms LIMIT 1"
            ),
            &a,
            |r| r.get(0),
        )?;
        Ok((counted, lapsed, next))
    }

    /// Adds `delta` cents to the tenant's counter of `bucket` whose window holds
    /// `at` (held back; the store sums a group's updates of one counter).
    pub(crate) fn add_to_counter(
        &self,
        tenant: &str,
        bucket: &str,
        at: i64,
        delta: i64,
    ) -> Result<(), StoreError> {
        self.execute_later(
            "UPDATE spend_counters SET spent_cents = spent_cents + ?4
             WHERE tenant_id = ?1 AND bucket = ?2 AND window_start <= ?3 AND window_end > ?3",
            args![tenant, bucket, at, delta],
        )
    }

    /// Makes an allow's reservation and adds its amount to its intent's reserved
    /// amount (both held back).
    pub(crate) fn reserve(&self, r: &NewReservation<'_>) -> Result<(), StoreError> {
        self.execute_later(
            "INSERT INTO reservations (id, tenant_id, intent_id, tool, operation, vendor, agent,
             agent_subject, amount_cents, state, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'open', ?10, ?11)",
            args![
                r.id,
                r.tenant,
                r.intent,
                r.tool,
                r.operation,
                r.vendor,
                r.agent,
                r.agent_subject,
                r.amount,
                r.created_ms,
                r.expires_ms
            ],
        )?;
        self.execute_later(
            "UPDATE intents SET reserved_cents = reserved_cents + ?2 WHERE id = ?1",
            args![r.intent, r.amount],
        )
    }

    /// Records a decision's row (held back).
    pub(crate) fn record_decision(&self, d: &NewDecision<'_>) -> Result<(), StoreError> {
        self.execute_later(
            "INSERT INTO decisions (id, tenant_id, intent_id, outcome, response, created_ms,
                 ledger_seq, tool, agent, vendor, amount_cents, reason_codes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            args![
                d.id,
                d.tenant,
                d.intent,
                d.outcome,
                d.response,
                d.created_ms,
                d.ledger_seq,
                d.tool,
                d.agent,
                d.vendor,
                d.amount,
                d.reason_codes
            ],
        )
    }

    /// The tenant's approval request whose token hashes to `token_hash`.
    pub(crate) fn approval_by_token(
        &self,
        tenant: &str,
        token_hash: &str,
    ) -> Result<Option<ApprovalFacts>, StoreError> {
        self.query_opt(
            "SELECT id, intent_id, operation, tool, vendor, amount_cents, token_expires_ms,
                 token_used_ms, key_id
             FROM approvals WHERE token_hash = ?1 AND tenant_id = ?2",
            args![token_hash, tenant],
            |r| {
                Ok(ApprovalFacts {
                    id: r.get(0)?,
                    intent: r.get(1)?,
                    operation: r.get(2)?,
                    tool: r.get(3)?,
                    vendor: r.get(4)?,
                    amount: r.get(5)?,
                    token_expires_ms: r.get(6)?,
                    token_used_ms: r.get(7)?,
                    key_id: r.get(8)?,
                })
            },
        )
    }

    /// Marks an approval's token used at `now`, and forgets it.
    pub(crate) fn use_approval_token(&self, approval: &str, now: i64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE approvals SET token = NULL, token_used_ms = ?2 WHERE id = ?1",
            args![approval, now],
        )
        .map(drop)
    }

    /// The key's latest request with this digest that still stands at `now`
    /// (pending, approved with its token unused and valid, or denied after
    /// `denied_since`): its id and state.
    pub(crate) fn standing_approval(
        &self,
        tenant: &str,
        request_digest: &str,
        key_id: &str,
        now: i64,
        denied_since: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        self.query_opt(
            "SELECT id, state FROM approvals WHERE tenant_id = ?1 AND request_digest = ?2
                 AND key_id = ?3
                 AND ((state = 'pending' AND expires_ms > ?4)
                   OR (state = 'approved' AND token_used_ms IS NULL AND token_expires_ms > ?4)
                   OR (state = 'denied' AND decided_ms > ?5))
                 ORDER BY created_ms DESC LIMIT 1",
            args![tenant, request_digest, key_id, now, denied_since],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// How many approval requests the tenant's `agent` opened after `since`, and
    /// when the first of them was.
    pub(crate) fn approvals_opened_since(
        &self,
        tenant: &str,
        agent: &str,
        since: i64,
    ) -> Result<(u64, Option<i64>), StoreError> {
        self.query_one(
            "SELECT COUNT(*), MIN(created_ms) FROM approvals
             WHERE tenant_id = ?1 AND agent = ?2 AND created_ms > ?3",
            args![tenant, agent, since],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// How many of the intent's approval requests are pending at `now`, and when
    /// the first of them expires.
    pub(crate) fn pending_approvals_of_intent(
        &self,
        intent: &str,
        now: i64,
    ) -> Result<(u64, Option<i64>), StoreError> {
        self.query_one(
            "SELECT COUNT(*), MIN(expires_ms) FROM approvals
             WHERE intent_id = ?1 AND state = 'pending' AND expires_ms > ?2",
            args![intent, now],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Opens an approval request.
    pub(crate) fn open_approval(&self, a: &NewApproval<'_>) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO approvals (id, tenant_id, intent_id, decision_id, request_digest, operation, tool,
             vendor, amount_cents, reason_codes, state, approvers, quorum, created_ms, expires_ms, agent,
             key_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending', '[]', ?11, ?12, ?13, ?14, ?15)",
            args![
                a.id,
                a.tenant,
                a.intent,
                a.decision,
                a.request_digest,
                a.operation,
                a.tool,
                a.vendor,
                a.amount,
                a.reason_codes,
                a.quorum,
                a.created_ms,
                a.expires_ms,
                a.agent,
                a.key_id
            ],
        )
        .map(drop)
    }

    /// Every open reservation of the tenant made in `[start, end)`: its agent,
    /// sub-agent, vendor, tool and expiry.
    #[cfg(test)]
    pub(crate) fn open_reservations_made_in(
        &self,
        tenant: &str,
        (start, end): (i64, i64),
    ) -> Result<Vec<OpenReservation>, StoreError> {
        self.query_map(
            "SELECT agent, agent_subject, vendor, tool, expires_ms FROM reservations
             WHERE tenant_id = ?1 AND state = 'open' AND created_ms >= ?2 AND created_ms < ?3",
            args![tenant, start, end],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
    }

    /// Reservation `id` as the live state holds one, with its state.
    #[cfg(test)]
    pub(crate) fn reservation_as_held(
        &self,
        id: &str,
    ) -> Result<Option<(crate::engine::live::LiveReservation, String)>, StoreError> {
        self.query_opt(
            "SELECT tenant_id, intent_id, amount_cents, expires_ms, created_ms, agent,
                 agent_subject, vendor, tool, state FROM reservations WHERE id = ?1",
            args![id],
            |r| {
                Ok((
                    crate::engine::live::LiveReservation {
                        tenant: r.get(0)?,
                        intent: r.get(1)?,
                        amount: r.get(2)?,
                        expires_ms: r.get(3)?,
                        created_ms: r.get(4)?,
                        agent: r.get(5)?,
                        agent_subject: r.get(6)?,
                        vendor: r.get(7)?,
                        tool: r.get(8)?,
                    },
                    r.get(9)?,
                ))
            },
        )
    }
}
