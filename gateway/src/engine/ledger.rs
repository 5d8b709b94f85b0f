//! The hash-chained, append-only ledger: one chain per tenant.
//!
//! Each entry's hash is the SHA-256 of the canonical JSON (sorted keys, no
//! whitespace) of `{tenant_id, seq, event, payload, at_ms, prev_hash}`; the first
//! entry's `prev_hash` is 64 zeros. Changing, removing or reordering any entry
//! breaks every hash after it, which [`verify_chain`] finds offline.

use crate::store::{NewEntry, StoredEntry, Tx};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;
use crate::tokens::sha256_hex;

/// `prev_hash` of a chain's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LedgerEvent {
    /// Position in the tenant's chain, from 1.
    pub seq: u64,
    /// What happened, e.g. `decision.allow`, `reservation.consumed`.
    pub event: String,
    /// The event's data.
    pub payload: Value,
    /// When (Unix milliseconds).
    pub at_ms: i64,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// Hash of this entry.
    pub hash: String,
}

/// The last entry of a tenant's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LedgerTip {
    /// The tenant.
    pub tenant_id: String,
    /// Entries so far (0 when empty).
    pub seq: u64,
    /// Hash of the last entry (the genesis hash when empty).
    pub hash: String,
}

/// The result of checking every chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LedgerCheck {
    /// Whether every chain verifies.
    pub valid: bool,
    /// Chains checked.
    pub tenants: u64,
    /// Entries checked.
    pub events: u64,
    /// The first problem found, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

pub(crate) fn entry_hash(
    tenant_id: &str,
    seq: u64,
    event: &str,
    payload: &Value,
    at_ms: i64,
    prev_hash: &str,
) -> String {
    let mut text = String::new();
    paybond_policies::write_canonical(&mut text, payload);
    hash_of(tenant_id, seq, event, &text, at_ms, prev_hash)
}

/// The entry hash from the payload's canonical text: the canonical JSON of
/// `{tenant_id, seq, event, payload, at_ms, prev_hash}`, written in sorted key order.
fn hash_of(
    tenant_id: &str,
    seq: u64,
    event: &str,
    payload: &str,
    at_ms: i64,
    prev_hash: &str,
) -> String {
    use paybond_policies::write_json_string as string;
    let mut text = String::with_capacity(payload.len() + 192);
    text.push_str("{\"at_ms\":");
    text.push_str(&at_ms.to_string());
    text.push_str(",\"event\":");
    string(&mut text, event);
    text.push_str(",\"payload\":");
    text.push_str(payload);
    text.push_str(",\"prev_hash\":");
    string(&mut text, prev_hash);
    text.push_str(",\"seq\":");
    text.push_str(&seq.to_string());
    text.push_str(",\"tenant_id\":");
    string(&mut text, tenant_id);
    text.push('}');
    sha256_hex(text.as_bytes())
}

/// Appends an entry to `tenant_id`'s chain inside the caller's transaction. The
/// payload is stored as its canonical text, the same bytes the hash covers.
pub(crate) fn append(
    tx: &dyn Tx,
    tenant_id: &str,
    event: &str,
    payload: Value,
    at_ms: i64,
) -> Result<u64, ApiError> {
    let mut text = String::new();
    paybond_policies::write_canonical(&mut text, &payload);
    append_canonical(tx, tenant_id, event, text, at_ms)
}

/// [`append`] with the payload already written as canonical JSON (see
/// [`CanonicalObject`]).
pub(crate) fn append_canonical(
    tx: &dyn Tx,
    tenant_id: &str,
    event: &str,
    text: String,
    at_ms: i64,
) -> Result<u64, ApiError> {
    // The writer keeps every tenant's tip in memory (this is the ledger's one writer).
    let known = tx
        .live()
        .and_then(|live| live.borrow().tip(tenant_id).map(|(s, h)| (s, h.to_owned())));
    let (prev_seq, prev_hash) = match known {
        Some(tip) => tip,
        None => {
            let t = tip(tx, tenant_id)?;
            (t.seq, t.hash)
        }
    };
    let seq = prev_seq + 1;
    let hash = hash_of(tenant_id, seq, event, &text, at_ms, &prev_hash);
    tx.append_entry(&NewEntry {
        tenant: tenant_id,
        seq,
        event,
        payload: &text,
        at_ms,
        prev_hash: &prev_hash,
        hash: &hash,
    })?;
    if let Some(live) = tx.live() {
        live.borrow_mut().set_tip(tenant_id, seq, hash);
    }
    Ok(seq)
}

/// A JSON object written straight to the text [`paybond_policies::write_canonical`]
/// writes for it, with no [`Value`] built on the way: its keys are given in sorted
/// order (checked in debug builds).
pub(crate) struct CanonicalObject {
    text: String,
    last: Option<&'static str>,
}

impl CanonicalObject {
    pub(crate) fn new() -> Self {
        let mut text = String::with_capacity(512);
        text.push('{');
        Self { text, last: None }
    }

    fn key(&mut self, key: &'static str) {
        debug_assert!(
            self.last.is_none_or(|last| last < key),
            "{key} out of order"
        );
        if self.last.is_some() {
            self.text.push(',');
        }
        self.last = Some(key);
        paybond_policies::write_json_string(&mut self.text, key);
        self.text.push(':');
    }

    /// `key`: a string, or `null`.
    pub(crate) fn str(mut self, key: &'static str, value: Option<&str>) -> Self {
        self.key(key);
        match value {
            Some(v) => paybond_policies::write_json_string(&mut self.text, v),
            None => self.text.push_str("null"),
        }
        self
    }

    /// `key`: a whole number, or `null`.
    pub(crate) fn num(mut self, key: &'static str, value: Option<impl Into<i128>>) -> Self {
        self.key(key);
        match value {
            Some(v) => {
                use std::fmt::Write;
                // Writing to a String cannot fail.
                let _ = write!(self.text, "{}", v.into());
            }
            None => self.text.push_str("null"),
        }
        self
    }

    /// `key`: an array of strings.
    pub(crate) fn strs(mut self, key: &'static str, values: &[String]) -> Self {
        self.key(key);
        self.text.push('[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            paybond_policies::write_json_string(&mut self.text, v);
        }
        self.text.push(']');
        self
    }

    /// `key`: any value, as serde writes it (canonical).
    pub(crate) fn value(mut self, key: &'static str, value: &impl serde::Serialize) -> Self {
        self.key(key);
        match serde_json::to_value(value) {
            Ok(v) => paybond_policies::write_canonical(&mut self.text, &v),
            Err(_) => self.text.push_str("null"),
        }
        self
    }

    pub(crate) fn finish(mut self) -> String {
        self.text.push('}');
        self.text
    }
}

pub(crate) fn tip(tx: &dyn Tx, tenant_id: &str) -> Result<LedgerTip, ApiError> {
    let (seq, hash) = tx.ledger_tip(tenant_id)?.unwrap_or((0, GENESIS.to_owned()));
    Ok(LedgerTip {
        tenant_id: tenant_id.to_owned(),
        seq,
        hash,
    })
}

pub(crate) fn events(
    tx: &dyn Tx,
    tenant_id: &str,
    after_seq: u64,
    limit: u64,
) -> Result<Vec<LedgerEvent>, ApiError> {
    Ok(tx.ledger_events(tenant_id, after_seq, limit)?)
}

/// Checks every tenant's chain: sequence numbers, links and hashes.
pub(crate) fn verify_chain(tx: &dyn Tx) -> Result<LedgerCheck, ApiError> {
    let rows = tx.ledger_all()?;
    let mut check = LedgerCheck {
        valid: true,
        tenants: 0,
        events: 0,
        problem: None,
    };
    let mut current: Option<(String, u64, String)> = None;
    for StoredEntry {
        tenant,
        seq,
        event,
        payload,
        at_ms,
        prev_hash,
        hash,
    } in rows
    {
        check.events += 1;
        let (expected_seq, expected_prev) = match &current {
            Some((t, s, h)) if *t == tenant => (s + 1, h.clone()),
            _ => {
                check.tenants += 1;
                (1, GENESIS.to_owned())
            }
        };
        let payload: Value = match serde_json::from_str(&payload) {
            Ok(v) => v,
            Err(_) => Value::Null,
        };
        let problem = if seq != expected_seq {
            Some(format!(
                "tenant {tenant}: expected seq {expected_seq}, found {seq}"
            ))
        } else if prev_hash != expected_prev {
            Some(format!(
                "tenant {tenant} seq {seq}: prev_hash does not link to the entry before"
            ))
        } else if entry_hash(&tenant, seq, &event, &payload, at_ms, &prev_hash) != hash {
            Some(format!(
                "tenant {tenant} seq {seq}: hash does not match the entry"
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            check.valid = false;
            check.problem = Some(p);
            return Ok(check);
        }
        current = Some((tenant, seq, hash));
    }
    Ok(check)
}

/// Checks one tenant's chain as read from `GET /ledger/v1/events` (all of it, from
/// seq 1): sequence, links and hashes. `Err` names the first bad entry.
pub fn verify_events(tenant_id: &str, events: &[LedgerEvent]) -> Result<(), String> {
    verify_segment(tenant_id, events, 1, GENESIS)
}

/// Checks a contiguous segment of one tenant's chain that starts at `first_seq`,
/// whose first entry's `prev_hash` must be `first_prev_hash`: sequence, links and
/// hashes. `Err` names the first bad entry.
pub fn verify_segment(
    tenant_id: &str,
    events: &[LedgerEvent],
    first_seq: u64,
    first_prev_hash: &str,
) -> Result<(), String> {
    let mut prev = first_prev_hash.to_owned();
    for (i, e) in events.iter().enumerate() {
        let expected_seq = first_seq + i as u64;
        if e.seq != expected_seq {
            return Err(format!("expected seq {expected_seq}, found {}", e.seq));
        }
        if e.prev_hash != prev {
            return Err(format!(
                "seq {}: prev_hash does not link to the entry before",
                e.seq
            ));
        }
        if entry_hash(
            tenant_id,
            e.seq,
            &e.event,
            &e.payload,
            e.at_ms,
            &e.prev_hash,
        ) != e.hash
        {
            return Err(format!("seq {}: hash does not match the entry", e.seq));
        }
        prev.clone_from(&e.hash);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_entry_hash_is_over_the_canonical_json_of_the_entry() {
        let payload = json!({"z": [1, {"b": "\u{e9}", "a": null}], "decision_id": "d"});
        let whole = json!({
            "tenant_id": "tnt_1", "seq": 7, "event": "decision.allow",
            "payload": payload, "at_ms": 1_700_000_000_000_i64, "prev_hash": GENESIS,
        });
        assert_eq!(
            entry_hash(
                "tnt_1",
                7,
                "decision.allow",
                &payload,
                1_700_000_000_000,
                GENESIS
            ),
            sha256_hex(paybond_policies::canonical_json(&whole).as_bytes())
        );
    }
}
