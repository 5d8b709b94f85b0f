//! Read projections: what the operator's views read of intents, reservations,
//! decisions and evidence. Each is a read-only query; none changes state.

use crate::store::{Row, StoreError, Tx, args};

pub(super) const INTENT_COLUMNS: &str =
    "id, operations, budget_cents, currency, state, deadline_ms,
    consumed_cents, reserved_cents, created_ms";

/// An intent as the operator's views list it.
pub(crate) struct IntentSummaryRow {
    pub(crate) id: String,
    /// A JSON array.
    pub(crate) operations: String,
    pub(crate) budget_cents: u64,
    pub(crate) currency: String,
    pub(crate) state: String,
    pub(crate) deadline_ms: i64,
    pub(crate) consumed_cents: u64,
    /// Lapsed reservations included.
    pub(crate) reserved_cents: u64,
    pub(crate) created_ms: i64,
}

pub(super) fn intent_summary(r: &Row) -> Result<IntentSummaryRow, StoreError> {
    Ok(IntentSummaryRow {
        id: r.get(0)?,
        operations: r.get(1)?,
        budget_cents: r.get(2)?,
        currency: r.get(3)?,
        state: r.get(4)?,
        deadline_ms: r.get(5)?,
        consumed_cents: r.get(6)?,
        reserved_cents: r.get(7)?,
        created_ms: r.get(8)?,
    })
}

pub(super) const DECISION_COLUMNS: &str =
    "id, intent_id, outcome, response, created_ms, ledger_seq";

/// A decision as recorded: its intent, outcome, answer (JSON), time and place
/// in its tenant's ledger.
pub(crate) struct DecisionRow {
    pub(crate) id: String,
    pub(crate) intent: String,
    pub(crate) outcome: String,
    pub(crate) response: String,
    pub(crate) created_ms: i64,
    pub(crate) ledger_seq: Option<u64>,
}

pub(super) fn decision_row(r: &Row) -> Result<DecisionRow, StoreError> {
    Ok(DecisionRow {
        id: r.get(0)?,
        intent: r.get(1)?,
        outcome: r.get(2)?,
        response: r.get(3)?,
        created_ms: r.get(4)?,
        ledger_seq: r.get(5)?,
    })
}

/// A reservation as an intent's detail shows it.
pub(crate) struct ReservationListRow {
    pub(crate) id: String,
    pub(crate) tool: String,
    pub(crate) operation: String,
    pub(crate) vendor: Option<String>,
    pub(crate) agent_subject: Option<String>,
    pub(crate) amount_cents: u64,
    pub(crate) actual_cents: Option<u64>,
    pub(crate) state: String,
    pub(crate) created_ms: i64,
    pub(crate) expires_ms: i64,
}

pub(super) const EVIDENCE_COLUMNS: &str =
    "id, intent_id, decision_id, operation, status, cost_cents, predicate_passed, created_ms";

/// Evidence as recorded.
pub(crate) struct EvidenceRow {
    pub(crate) id: String,
    pub(crate) intent: String,
    pub(crate) decision: Option<String>,
    pub(crate) operation: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) cost_cents: Option<u64>,
    pub(crate) predicate_passed: bool,
    pub(crate) created_ms: i64,
}

pub(super) fn evidence_row(r: &Row) -> Result<EvidenceRow, StoreError> {
    Ok(EvidenceRow {
        id: r.get(0)?,
        intent: r.get(1)?,
        decision: r.get(2)?,
        operation: r.get(3)?,
        status: r.get(4)?,
        cost_cents: r.get(5)?,
        predicate_passed: r.get(6)?,
        created_ms: r.get(7)?,
    })
}

impl dyn Tx + '_ {
    /// The tenant's decision `id`.
    pub(crate) fn decision_row(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<DecisionRow>, StoreError> {
        self.query_opt(
            &format!("SELECT {DECISION_COLUMNS} FROM decisions WHERE id = ?1 AND tenant_id = ?2"),
            args![id, tenant],
            decision_row,
        )
    }

    /// At most `limit` of the tenant's intents (in `state`, if given) made
    /// before `before` (creation time, id), newest first.
    pub(crate) fn intent_page(
        &self,
        tenant: &str,
        state: Option<&str>,
        before: (i64, &str),
        limit: u32,
    ) -> Result<Vec<IntentSummaryRow>, StoreError> {
        self.query_map(
            &format!(
                "SELECT {INTENT_COLUMNS} FROM intents WHERE tenant_id = ?1
                 AND (CAST(?2 AS TEXT) IS NULL OR state = ?2)
                 AND (created_ms < ?3 OR (created_ms = ?3 AND id < ?4))
                 ORDER BY created_ms DESC, id DESC LIMIT ?5"
            ),
            args![tenant, state, before.0, before.1, limit],
            intent_summary,
        )
    }

    /// The tenant's intent `id`, as the operator's views show it.
    pub(crate) fn intent_summary(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<IntentSummaryRow>, StoreError> {
        self.query_opt(
            &format!("SELECT {INTENT_COLUMNS} FROM intents WHERE id = ?1 AND tenant_id = ?2"),
            args![id, tenant],
            intent_summary,
        )
    }

    /// The intent's reservations, newest first.
    pub(crate) fn reservations_of_intent(
        &self,
        intent: &str,
    ) -> Result<Vec<ReservationListRow>, StoreError> {
        self.query_map(
            "SELECT r.id, r.tool, r.operation, r.vendor, r.agent_subject, r.amount_cents,
                 r.actual_cents, r.state, r.created_ms, r.expires_ms
             FROM reservations r LEFT JOIN decisions d ON d.id = r.id
             WHERE r.intent_id = ?1
             ORDER BY r.created_ms DESC, d.ledger_seq DESC, r.id DESC",
            args![intent],
            |r| {
                Ok(ReservationListRow {
                    id: r.get(0)?,
                    tool: r.get(1)?,
                    operation: r.get(2)?,
                    vendor: r.get(3)?,
                    agent_subject: r.get(4)?,
                    amount_cents: r.get(5)?,
                    actual_cents: r.get(6)?,
                    state: r.get(7)?,
                    created_ms: r.get(8)?,
                    expires_ms: r.get(9)?,
                })
            },
        )
    }

    /// The last `limit` decisions on the tenant's intent, newest first.
    pub(crate) fn decisions_of_intent(
        &self,
        tenant: &str,
        intent: &str,
        limit: u32,
    ) -> Result<Vec<DecisionRow>, StoreError> {
        self.query_map(
            &format!(
                "SELECT {DECISION_COLUMNS} FROM decisions
                 WHERE intent_id = ?1 AND tenant_id = ?2
                 ORDER BY created_ms DESC, ledger_seq DESC, id DESC LIMIT ?3"
            ),
            args![intent, tenant, limit],
            decision_row,
        )
    }

    /// The evidence submitted for the tenant's intent, newest first.
    pub(crate) fn evidence_of_intent(
        &self,
        tenant: &str,
        intent: &str,
    ) -> Result<Vec<EvidenceRow>, StoreError> {
        self.query_map(
            &format!(
                "SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE intent_id = ?1 AND tenant_id = ?2
                 ORDER BY created_ms DESC, id DESC"
            ),
            args![intent, tenant],
            evidence_row,
        )
    }
}
