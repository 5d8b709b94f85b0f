//! Intents and their reservations after verify: made, read, evidenced,
//! finalized, expired, and the sweep's other clean-up.

use crate::store::{Row, StoreError, Tx, args};

// The queries over open reservations, each answered from an index that holds only
// open reservations (`reservations_open_by_*`; a test pins their plans).

/// How many reservations of intent `?1` are open and not past their TTL at `?2`.
pub(crate) const OPEN_OF_INTENT: &str = "SELECT COUNT(*) FROM reservations
    WHERE intent_id = ?1 AND state = 'open' AND expires_ms > ?2";

/// The amount of intent `?1`'s reservations past their TTL at `?2` and not yet
/// expired by the sweep.
pub(crate) const LAPSED_OF_INTENT: &str = "SELECT CAST(COALESCE(SUM(amount_cents), 0) AS BIGINT)
    FROM reservations WHERE intent_id = ?1 AND state = 'open' AND expires_ms <= ?2";

/// The reservations the sweep expires at `?1`, tenant by tenant.
pub(crate) const DUE: &str = "SELECT tenant_id, id, intent_id, amount_cents, state, expires_ms,
    created_ms, agent, agent_subject, vendor, tool FROM reservations
    WHERE state = 'open' AND expires_ms <= ?1 ORDER BY tenant_id";

/// How many approval requests of every tenant wait for an operator at `?1`.
pub(crate) const PENDING_APPROVALS: &str =
    "SELECT COUNT(*) FROM approvals WHERE state = 'pending' AND expires_ms > ?1";

/// How many reservations are open and not past their TTL at `?1`.
pub(crate) const OPEN: &str =
    "SELECT COUNT(*) FROM reservations WHERE state = 'open' AND expires_ms > ?1";

/// An intent to make.
pub(crate) struct NewIntent<'a> {
    pub(crate) id: &'a str,
    pub(crate) tenant: &'a str,
    /// Its operations, a JSON array.
    pub(crate) operations: &'a str,
    pub(crate) budget_cents: u64,
    pub(crate) currency: &'a str,
    pub(crate) deadline_ms: i64,
    /// JSON.
    pub(crate) evidence_schema: Option<&'a str>,
    /// JSON.
    pub(crate) metadata: Option<&'a str>,
    pub(crate) created_ms: i64,
}

/// An intent as evidence reads it.
pub(crate) struct EvidenceIntentRow {
    pub(crate) state: String,
    pub(crate) budget_cents: u64,
    /// JSON.
    pub(crate) evidence_schema: Option<String>,
    /// A JSON array.
    pub(crate) operations: String,
}

/// Evidence to record.
pub(crate) struct NewEvidence<'a> {
    pub(crate) id: &'a str,
    pub(crate) tenant: &'a str,
    pub(crate) intent: &'a str,
    pub(crate) decision: Option<&'a str>,
    pub(crate) operation: &'a str,
    pub(crate) status: Option<&'a str>,
    pub(crate) cost_cents: Option<u64>,
    pub(crate) predicate_passed: bool,
    pub(crate) created_ms: i64,
}

/// An intent's terms: what a decision reads of it, its amounts aside.
pub(crate) struct IntentTerms {
    pub(crate) id: String,
    pub(crate) state: String,
    pub(crate) deadline_ms: i64,
    pub(crate) budget_cents: u64,
    pub(crate) currency: String,
    /// A JSON array.
    pub(crate) operations: String,
}

/// A reservation as finalizing or expiring it needs it.
#[derive(Debug)]
pub(crate) struct ReservationRow {
    pub(crate) intent: String,
    pub(crate) amount: u64,
    pub(crate) state: String,
    pub(crate) expires: i64,
    pub(crate) created: i64,
    pub(crate) agent: String,
    pub(crate) agent_subject: Option<String>,
    pub(crate) vendor: Option<String>,
    pub(crate) tool: String,
}

impl ReservationRow {
    /// From `intent_id, amount_cents, state, expires_ms, created_ms, agent,
    /// agent_subject, vendor, tool` at column `at`.
    fn read(r: &Row, at: usize) -> Result<Self, StoreError> {
        Ok(Self {
            intent: r.get(at)?,
            amount: r.get(at + 1)?,
            state: r.get(at + 2)?,
            expires: r.get(at + 3)?,
            created: r.get(at + 4)?,
            agent: r.get(at + 5)?,
            agent_subject: r.get(at + 6)?,
            vendor: r.get(at + 7)?,
            tool: r.get(at + 8)?,
        })
    }
}

/// A reservation as complete reads it: its row, the answer of the complete that
/// finalized it (JSON), and its intent's state and deadline.
pub(crate) type ToComplete = (ReservationRow, Option<String>, Option<(String, i64)>);

/// A reservation's finalization.
pub(crate) struct Finalized<'a> {
    pub(crate) id: &'a str,
    pub(crate) intent: &'a str,
    pub(crate) reserved: u64,
    /// `consumed` or `released`.
    pub(crate) outcome: &'a str,
    pub(crate) actual: u64,
    pub(crate) at_ms: i64,
    /// The answer, as JSON.
    pub(crate) response: &'a str,
}

impl dyn Tx + '_ {
    /// Makes an intent, funded.
    pub(crate) fn create_intent(&self, i: &NewIntent<'_>) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO intents (id, tenant_id, operations, budget_cents, currency, state, deadline_ms,
             evidence_schema, metadata, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, 'funded', ?6, ?7, ?8, ?9)",
            args![
                i.id,
                i.tenant,
                i.operations,
                i.budget_cents,
                i.currency,
                i.deadline_ms,
                i.evidence_schema,
                i.metadata,
                i.created_ms
            ],
        )
        .map(drop)
    }

    /// The deadline of intent `id`.
    pub(crate) fn intent_deadline(&self, id: &str) -> Result<i64, StoreError> {
        self.query_one(
            "SELECT deadline_ms FROM intents WHERE id = ?1",
            args![id],
            |r| r.get(0),
        )
    }

    /// The tenant's intent `id`, as evidence reads it.
    pub(crate) fn evidence_intent_row(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<EvidenceIntentRow>, StoreError> {
        self.query_opt(
            "SELECT state, budget_cents, evidence_schema, operations FROM intents
             WHERE id = ?1 AND tenant_id = ?2",
            args![id, tenant],
            |r| {
                Ok(EvidenceIntentRow {
                    state: r.get(0)?,
                    budget_cents: r.get(1)?,
                    evidence_schema: r.get(2)?,
                    operations: r.get(3)?,
                })
            },
        )
    }

    /// The amount of reservation `id`, if it is one of `intent`'s.
    pub(crate) fn reservation_amount(
        &self,
        id: &str,
        intent: &str,
    ) -> Result<Option<u64>, StoreError> {
        self.query_opt(
            "SELECT amount_cents FROM reservations WHERE id = ?1 AND intent_id = ?2",
            args![id, intent],
            |r| r.get(0),
        )
    }

    /// Sets intent `id`'s state.
    pub(crate) fn set_intent_state(&self, id: &str, state: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE intents SET state = ?2 WHERE id = ?1",
            args![id, state],
        )
        .map(drop)
    }

    /// Records evidence (held back).
    pub(crate) fn record_evidence(&self, e: &NewEvidence<'_>) -> Result<(), StoreError> {
        self.execute_later(
            "INSERT INTO evidence (id, tenant_id, intent_id, decision_id, operation, status,
             cost_cents, predicate_passed, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            args![
                e.id,
                e.tenant,
                e.intent,
                e.decision,
                e.operation,
                e.status,
                e.cost_cents,
                i64::from(e.predicate_passed),
                e.created_ms
            ],
        )
    }

    /// How many of the intent's reservations are open and not past their TTL at `now`.
    pub(crate) fn open_reservations_of_intent(
        &self,
        intent: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        self.query_one(OPEN_OF_INTENT, args![intent, now], |r| r.get(0))
    }

    /// The amount of the intent's open reservations past their TTL at `now`.
    pub(crate) fn lapsed_of_intent(&self, intent: &str, now: i64) -> Result<u64, StoreError> {
        self.query_one(LAPSED_OF_INTENT, args![intent, now], |r| r.get(0))
    }

    /// Every open reservation past its TTL at `now` (tenant, id, row), by tenant.
    pub(crate) fn reservations_due(
        &self,
        now: i64,
    ) -> Result<Vec<(String, String, ReservationRow)>, StoreError> {
        self.query_map(DUE, args![now], |r| {
            Ok((r.get(0)?, r.get(1)?, ReservationRow::read(r, 2)?))
        })
    }

    /// Expires an open reservation at `now` and returns its amount to its intent;
    /// false (and nothing changed) if it was finalized meanwhile.
    pub(crate) fn expire_reservation(
        &self,
        id: &str,
        intent: &str,
        amount: u64,
        now: i64,
    ) -> Result<bool, StoreError> {
        if self.execute(
            "UPDATE reservations SET state = 'expired', finalized_ms = ?2 WHERE id = ?1 AND state = 'open'",
            args![id, now],
        )? != 1
        {
            return Ok(false);
        }
        self.execute(
            "UPDATE intents SET reserved_cents = reserved_cents - ?2 WHERE id = ?1",
            args![intent, amount],
        )?;
        Ok(true)
    }

    /// The tenant's reservation `id`, as complete reads it.
    pub(crate) fn reservation_to_complete(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<ToComplete>, StoreError> {
        self.query_opt(
            "SELECT r.intent_id, r.amount_cents, r.state, r.expires_ms, r.created_ms, r.agent,
                 r.agent_subject, r.vendor, r.tool, r.complete_response, i.state, i.deadline_ms
             FROM reservations r LEFT JOIN intents i ON i.id = r.intent_id
             WHERE r.id = ?1 AND r.tenant_id = ?2",
            args![id, tenant],
            |r| {
                let intent = match (r.get::<Option<String>>(10)?, r.get::<Option<i64>>(11)?) {
                    (Some(state), Some(deadline)) => Some((state, deadline)),
                    _ => None,
                };
                Ok((ReservationRow::read(r, 0)?, r.get(9)?, intent))
            },
        )
    }

    /// Whether the tenant has a decision `id`.
    pub(crate) fn decision_exists(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .query_opt(
                "SELECT 1 FROM decisions WHERE id = ?1 AND tenant_id = ?2",
                args![id, tenant],
                |_| Ok(()),
            )?
            .is_some())
    }

    /// Finalizes an open reservation: its intent's amounts and its row (both
    /// held back).
    pub(crate) fn finalize_reservation(&self, f: &Finalized<'_>) -> Result<(), StoreError> {
        self.execute_later(
            "UPDATE intents SET reserved_cents = reserved_cents - ?2, consumed_cents = consumed_cents + ?3
             WHERE id = ?1",
            args![f.intent, f.reserved, f.actual],
        )?;
        self.execute_later(
            "UPDATE reservations SET state = ?2, actual_cents = ?3, finalized_ms = ?4, complete_response = ?5
             WHERE id = ?1",
            args![f.id, f.outcome, f.actual, f.at_ms, f.response],
        )
    }

    /// Every tenant's intents past their deadline at `now` and not closed
    /// (tenant, id, state), by tenant.
    pub(crate) fn intents_due(
        &self,
        now: i64,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        self.query_map(
            "SELECT tenant_id, id, state FROM intents
             WHERE deadline_ms <= ?1 AND state IN ('created', 'funded', 'evidence_submitted')
             ORDER BY tenant_id",
            args![now],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }

    /// Moves intent `id` from state `from` to `to`; false if it was not in `from`.
    pub(crate) fn close_intent(&self, id: &str, from: &str, to: &str) -> Result<bool, StoreError> {
        Ok(self.execute(
            "UPDATE intents SET state = ?2 WHERE id = ?1 AND state = ?3",
            args![id, to, from],
        )? == 1)
    }

    /// Drops the rolling-cap counters of windows ended by `now`.
    pub(crate) fn drop_ended_counters(&self, now: i64) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM spend_counters WHERE window_end <= ?1",
            args![now],
        )
        .map(drop)
    }

    /// Drops the idempotency keys made by `before`; how many.
    pub(crate) fn drop_idempotency_keys(&self, before: i64) -> Result<u64, StoreError> {
        self.execute(
            "DELETE FROM idempotency WHERE created_ms <= ?1",
            args![before],
        )
    }

    /// How many reservations of every tenant are open and not past their TTL at `now`.
    pub(crate) fn open_reservations(&self, now: i64) -> Result<u64, StoreError> {
        self.query_one(OPEN, args![now], |r| r.get(0))
    }

    /// How many approval requests of every tenant wait for an operator at `now`.
    pub(crate) fn pending_approvals(&self, now: i64) -> Result<u64, StoreError> {
        self.query_one(PENDING_APPROVALS, args![now], |r| r.get(0))
    }

    /// Every intent of the tenant: id, state, consumed and reserved amounts.
    pub(crate) fn intent_amounts_of(
        &self,
        tenant: &str,
    ) -> Result<Vec<(String, String, u64, u64)>, StoreError> {
        self.query_map(
            "SELECT id, state, consumed_cents, reserved_cents FROM intents WHERE tenant_id = ?1",
            args![tenant],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
    }

    /// Every reservation of the tenant: id and state.
    pub(crate) fn reservation_states_of(
        &self,
        tenant: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.query_map(
            "SELECT id, state FROM reservations WHERE tenant_id = ?1",
            args![tenant],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Every intent of the tenant, by id, as a decision reads it (its amounts
    /// aside).
    pub(crate) fn intent_terms_of(&self, tenant: &str) -> Result<Vec<IntentTerms>, StoreError> {
        self.query_map(
            "SELECT id, state, deadline_ms, budget_cents, currency, operations FROM intents
             WHERE tenant_id = ?1",
            args![tenant],
            |r| {
                Ok(IntentTerms {
                    id: r.get(0)?,
                    state: r.get(1)?,
                    deadline_ms: r.get(2)?,
                    budget_cents: r.get(3)?,
                    currency: r.get(4)?,
                    operations: r.get(5)?,
                })
            },
        )
    }

    /// Sets an intent's consumed amount behind the ledger's back (tests of the
    /// checks that find such a change).
    #[cfg(test)]
    pub(crate) fn tamper_consumed(&self, intent: &str, cents: u64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE intents SET consumed_cents = ?2 WHERE id = ?1",
            args![intent, cents],
        )
        .map(drop)
    }
}
