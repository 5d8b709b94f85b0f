//! The ledger: each tenant's hash chain, appended to and read.

use crate::engine::ledger::LedgerEvent;
use crate::store::{Arg, Row, StoreError, ToArg, Tx, args};

/// One entry as stored, its payload the canonical JSON text its hash covers.
pub(crate) struct StoredEntry {
    pub(crate) tenant: String,
    pub(crate) seq: u64,
    pub(crate) event: String,
    pub(crate) payload: String,
    pub(crate) at_ms: i64,
    pub(crate) prev_hash: String,
    pub(crate) hash: String,
}

/// An entry to append.
pub(crate) struct NewEntry<'a> {
    pub(crate) tenant: &'a str,
    pub(crate) seq: u64,
    pub(crate) event: &'a str,
    pub(crate) payload: &'a str,
    pub(crate) at_ms: i64,
    pub(crate) prev_hash: &'a str,
    pub(crate) hash: &'a str,
}

const EVENT_COLUMNS: &str = "seq, event, payload, at_ms, prev_hash, hash";

fn event(r: &Row) -> Result<LedgerEvent, StoreError> {
    Ok(LedgerEvent {
        seq: r.get(0)?,
        event: r.get(1)?,
        payload: serde_json::from_str(&r.get::<String>(2)?)?,
        at_ms: r.get(3)?,
        prev_hash: r.get(4)?,
        hash: r.get(5)?,
    })
}

impl dyn Tx + '_ {
    /// Appends an entry (held back with the transaction's other writes).
    pub(crate) fn append_entry(&self, e: &NewEntry<'_>) -> Result<(), StoreError> {
        self.execute_later(
            "INSERT INTO ledger (tenant_id, seq, event, payload, at_ms, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            args![
                e.tenant,
                e.seq,
                e.event,
                e.payload,
                e.at_ms,
                e.prev_hash,
                e.hash
            ],
        )
    }

    /// The tenant's last entry's sequence number and hash; `None` for an empty chain.
    pub(crate) fn ledger_tip(&self, tenant: &str) -> Result<Option<(u64, String)>, StoreError> {
        self.query_opt(
            "SELECT seq, hash FROM ledger WHERE tenant_id = ?1 ORDER BY seq DESC LIMIT 1",
            args![tenant],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// At most `limit` of the tenant's entries after `after_seq`, in order.
    pub(crate) fn ledger_events(
        &self,
        tenant: &str,
        after_seq: u64,
        limit: u64,
    ) -> Result<Vec<LedgerEvent>, StoreError> {
        self.query_map(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM ledger
                 WHERE tenant_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ),
            args![tenant, after_seq, limit],
            event,
        )
    }

    /// The first and last sequence numbers of the tenant's entries made in
    /// `[start, end)`.
    pub(crate) fn ledger_span(
        &self,
        tenant: &str,
        (start, end): (i64, i64),
    ) -> Result<(Option<u64>, Option<u64>), StoreError> {
        self.query_one(
            "SELECT MIN(seq), MAX(seq) FROM ledger
             WHERE tenant_id = ?1 AND at_ms >= ?2 AND at_ms < ?3",
            args![tenant, start, end],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// The tenant's entries numbered `first..=last` whose payload names one of
    /// `ids`, in order, at most 200.
    pub(crate) fn ledger_entries_naming(
        &self,
        tenant: &str,
        (first, last): (u64, u64),
        ids: &[&str],
    ) -> Result<Vec<LedgerEvent>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = format!(
            "SELECT {EVENT_COLUMNS} FROM ledger
             WHERE tenant_id = ?1 AND seq >= ?2 AND seq <= ?3 AND ("
        );
        let mut bound: Vec<Arg<'_>> = vec![tenant.to_arg(), first.to_arg(), last.to_arg()];
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            bound.push(Arg::Text(format!("%{id}%").into()));
            sql.push_str(&format!("payload LIKE ?{}", bound.len()));
        }
        sql.push_str(") ORDER BY seq LIMIT 200");
        self.query_map(&sql, &bound, event)
    }

    /// Every entry of every chain, by tenant then sequence.
    pub(crate) fn ledger_all(&self) -> Result<Vec<StoredEntry>, StoreError> {
        self.query_map(
            "SELECT tenant_id, seq, event, payload, at_ms, prev_hash, hash FROM ledger
             ORDER BY tenant_id, seq",
            args![],
            |r| {
                Ok(StoredEntry {
                    tenant: r.get(0)?,
                    seq: r.get(1)?,
                    event: r.get(2)?,
                    payload: r.get(3)?,
                    at_ms: r.get(4)?,
                    prev_hash: r.get(5)?,
                    hash: r.get(6)?,
                })
            },
        )
    }

    /// The tenant's entries as (event, payload text, at), in order; with
    /// `spend_only`, only its decisions and finalizations.
    pub(crate) fn ledger_fold(
        &self,
        tenant: &str,
        spend_only: bool,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        let sql = if spend_only {
            "SELECT event, payload, at_ms FROM ledger WHERE tenant_id = ?1
             AND (event LIKE 'decision.%'
                  OR event IN ('reservation.consumed', 'reservation.released'))
             ORDER BY seq"
        } else {
            "SELECT event, payload, at_ms FROM ledger WHERE tenant_id = ?1 ORDER BY seq"
        };
        self.query_map(sql, args![tenant], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
    }
}
