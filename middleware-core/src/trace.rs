//! The run trace: one entry per tool call attempt, as a table or as JSON lines.
//!
//! ```
//! use paybond_middleware_core::trace::{RunTrace, TraceEntry, TraceTotals};
//!
//! // A trace read back from the JSON lines a run wrote (`RunTrace::to_json_lines`).
//! let line = r#"{"tool_call_id":"call-1","tool":"shop.buy","operation":"shop.buy",
//!     "amount_cents":1200,"outcome":"allow","reason_codes":[],"decision_id":null,
//!     "finalization":"consumed","actual_cents":1200,"attempt":1,"duration_ms":3}"#;
//! let entries: Vec<TraceEntry> = vec![serde_json::from_str(line)?];
//! assert_eq!(TraceTotals::of(&entries).consumed_cents, 1200);
//! let table = RunTrace::table_of(&entries, "usd");
//! assert!(table.starts_with("tool_call_id"));
//! assert!(table.contains("12.00 USD"));
//! # Ok::<_, serde_json::Error>(())
//! ```

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::wire::{Finalization, PolicyCheck};

/// What happened to one attempt of a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceOutcome {
    /// Not side-effecting: ran without a decision.
    Passthrough,
    /// Allowed: the tool ran (see the finalization for how it ended).
    Allow,
    /// Held for operator approval: the tool did not run.
    Hold,
    /// Denied: the tool did not run.
    Deny,
    /// No decision could be made (gateway unavailable, no amount): the tool did not run.
    Error,
}

impl TraceOutcome {
    /// Its name, as in the JSON trace (`allow`, `hold`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passthrough => "passthrough",
            Self::Allow => "allow",
            Self::Hold => "hold",
            Self::Deny => "deny",
            Self::Error => "error",
        }
    }
}

/// One attempt of one tool call. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEntry {
    /// The framework's id for the call.
    pub tool_call_id: String,
    /// The tool the agent called.
    pub tool: String,
    /// The operation verified.
    pub operation: String,
    /// The amount authorized (none for a passthrough).
    pub amount_cents: Option<u64>,
    /// Allow, hold, deny, passthrough or error.
    pub outcome: TraceOutcome,
    /// The gateway's reason codes, then the layer's own (`tool_failed`, `cancelled`, …).
    pub reason_codes: Vec<String>,
    /// The decision, when the gateway made one.
    pub decision_id: Option<Uuid>,
    /// How the reservation was finalized; `null` when there was none or finalizing failed.
    pub finalization: Option<Finalization>,
    /// The cost settled when consumed.
    pub actual_cents: Option<u64>,
    /// 1 for the first attempt of this tool call id, 2 for its retry, …
    pub attempt: u32,
    /// Wall time of the attempt, verify to finalization, in milliseconds.
    pub duration_ms: u64,
    /// The checks the gateway evaluated for this attempt's decision, in order, each
    /// with its inputs and result (empty without a decision).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<PolicyCheck>,
    /// Where in the arguments a value the policy marks sensitive was found (the
    /// value itself is never kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitive_path: Option<String>,
}

/// Totals over a trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceTotals {
    /// Sum of `actual_cents` over consumed entries.
    pub consumed_cents: u64,
    /// Sum of `amount_cents` over released entries.
    pub released_cents: u64,
    /// Passthrough entries.
    pub passthroughs: u32,
    /// Allowed entries.
    pub allows: u32,
    /// Held entries.
    pub holds: u32,
    /// Denied entries.
    pub denies: u32,
    /// Entries with no decision.
    pub errors: u32,
}

/// The trace of one agent run, shared by every clone of its service.
#[derive(Debug, Clone, Default)]
pub struct RunTrace {
    entries: Arc<Mutex<Vec<TraceEntry>>>,
    /// Policy reloads, in order.
    reloads: Arc<Mutex<Vec<crate::run::PolicyReloaded>>>,
    /// Compensations of failed workflows, in the order run.
    compensations: Arc<Mutex<Vec<crate::scope::CompensationEntry>>>,
    /// The run's currency, for [`table`](Self::table) (`usd` when none was set).
    currency: Option<Arc<str>>,
}

impl TraceTotals {
    /// Totals over `entries` (a trace read back from JSON lines, for instance).
    pub fn of(entries: &[TraceEntry]) -> Self {
        let mut totals = Self::default();
        for entry in entries {
            match entry.outcome {
                TraceOutcome::Passthrough => totals.passthroughs += 1,
                TraceOutcome::Allow => totals.allows += 1,
                TraceOutcome::Hold => totals.holds += 1,
                TraceOutcome::Deny => totals.denies += 1,
                TraceOutcome::Error => totals.errors += 1,
            }
            match entry.finalization {
                Some(Finalization::Consumed) => {
                    totals.consumed_cents += entry.actual_cents.unwrap_or(0);
                }
                Some(Finalization::Released) => {
                    totals.released_cents += entry.amount_cents.unwrap_or(0);
                }
                None => {}
            }
        }
        totals
    }
}

impl RunTrace {
    /// An empty trace.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty trace whose table shows amounts in `currency`.
    pub(crate) fn in_currency(currency: Option<&str>) -> Self {
        Self {
            entries: Arc::default(),
            reloads: Arc::default(),
            compensations: Arc::default(),
            currency: currency.map(Arc::from),
        }
    }

    pub(crate) fn push(&self, entry: TraceEntry) {
        // A panic while the lock was held cannot leave a half-pushed Vec: keep going.
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    }

    pub(crate) fn push_reload(&self, reload: crate::run::PolicyReloaded) {
        self.reloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(reload);
    }

    /// The policy reloads so far (`policy_reloaded`, old and new digest), in order.
    pub fn policy_reloads(&self) -> Vec<crate::run::PolicyReloaded> {
        self.reloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn push_compensation(&self, entry: crate::scope::CompensationEntry) {
        self.compensations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    }

    /// The compensations run so far (`compensated` or `compensation_failed`, with
    /// the error), in the order run.
    pub fn compensations(&self) -> Vec<crate::scope::CompensationEntry> {
        self.compensations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A copy of the entries so far, in completion order.
    pub fn entries(&self) -> Vec<TraceEntry> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Totals over the entries so far.
    pub fn totals(&self) -> TraceTotals {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        TraceTotals::of(&entries)
    }

    /// One JSON object per line, one line per entry.
    pub fn to_json_lines(&self) -> String {
        let mut out = String::new();
        for entry in self.entries() {
            // A struct of strings, numbers and enums always serializes.
            if let Ok(line) = serde_json::to_string(&entry) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    /// The entries as an aligned text table, then the compensations and policy
    /// reloads, one line each.
    pub fn table(&self) -> String {
        self.to_string()
    }

    /// `entries` (a trace read back from JSON lines, for instance) as the aligned
    /// text table [`table`](Self::table) starts with, amounts in `currency`.
    pub fn table_of(entries: &[TraceEntry], currency: &str) -> String {
        const HEADER: [&str; 8] = [
            "tool_call_id",
            "operation",
            "amount",
            "outcome",
            "reasons",
            "finalization",
            "actual",
            "ms",
        ];
        let money = |c: u64| crate::format_money(c, currency);
        let rows: Vec<[String; 8]> = entries
            .iter()
            .map(|e| {
                [
                    e.tool_call_id.clone(),
                    e.operation.clone(),
                    e.amount_cents.map_or_else(|| "-".into(), money),
                    e.outcome.as_str().to_owned(),
                    if e.reason_codes.is_empty() {
                        "-".to_owned()
                    } else {
                        e.reason_codes.join(",")
                    },
                    match e.finalization {
                        Some(Finalization::Consumed) => "consumed".to_owned(),
                        Some(Finalization::Released) => "released".to_owned(),
                        None => "-".to_owned(),
                    },
                    e.actual_cents.map_or_else(|| "-".into(), money),
                    e.duration_ms.to_string(),
                ]
            })
            .collect();
        let mut widths = HEADER.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut write_row = |cells: &[&str]| {
            let mut line = String::new();
            for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let _ = write!(line, "{cell:<width$}");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        };
        write_row(&HEADER);
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            write_row(&cells);
        }
        out
    }
}

impl fmt::Display for RunTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let currency = self.currency.as_deref().unwrap_or("usd");
        f.write_str(&Self::table_of(&self.entries(), currency))?;
        for c in self.compensations() {
            let outcome = match c.outcome {
                crate::wire::CompensationOutcome::Compensated => "compensated",
                crate::wire::CompensationOutcome::CompensationFailed => "compensation_failed",
            };
            writeln!(
                f,
                "{outcome}  {} ({}){}",
                c.tool_call_id,
                c.workflow,
                c.error.map(|e| format!(": {e}")).unwrap_or_default()
            )?;
        }
        for r in self.policy_reloads() {
            let show = |v: Option<u64>, d: &Option<String>| {
                format!(
                    "v{} {}",
                    v.map_or_else(|| "-".to_owned(), |v| v.to_string()),
                    d.as_deref().unwrap_or("-")
                )
            };
            writeln!(
                f,
                "policy_reloaded  {} -> {}",
                show(r.from_version, &r.from_digest),
                show(r.to_version, &r.to_digest)
            )?;
        }
        Ok(())
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry(outcome: TraceOutcome, finalization: Option<Finalization>) -> TraceEntry {
        TraceEntry {
            tool_call_id: "call_1".into(),
            tool: "travel.book_hotel".into(),
            operation: "travel.book_hotel".into(),
            amount_cents: Some(9000),
            outcome,
            reason_codes: vec![],
            decision_id: None,
            finalization,
            actual_cents: (finalization == Some(Finalization::Consumed)).then_some(8000),
            attempt: 1,
            duration_ms: 3,
            checks: vec![],
            sensitive_path: None,
        }
    }

    #[test]
    fn totals_and_json_lines() {
        let trace = RunTrace::new();
        trace.push(entry(TraceOutcome::Allow, Some(Finalization::Consumed)));
        trace.push(entry(TraceOutcome::Allow, Some(Finalization::Released)));
        trace.push(entry(TraceOutcome::Hold, None));
        trace.push(entry(TraceOutcome::Deny, None));
        let totals = trace.totals();
        assert_eq!(
            (
                totals.consumed_cents,
                totals.released_cents,
                totals.allows,
                totals.holds,
                totals.denies
            ),
            (8000, 9000, 2, 1, 1)
        );
        let lines = trace.to_json_lines();
        let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        assert_eq!(
            first,
            json!({
                "tool_call_id": "call_1", "tool": "travel.book_hotel",
                "operation": "travel.book_hotel", "amount_cents": 9000, "outcome": "allow",
                "reason_codes": [], "decision_id": null, "finalization": "consumed",
                "actual_cents": 8000, "attempt": 1, "duration_ms": 3
            })
        );
        assert_eq!(lines.lines().count(), 4);
    }

    #[test]
    fn table_aligns_columns() {
        let trace = RunTrace::new();
        trace.push(entry(TraceOutcome::Allow, Some(Finalization::Consumed)));
        let mut denied = entry(TraceOutcome::Deny, None);
        denied.reason_codes = vec!["tool_cap_exceeded".into()];
        trace.push(denied);
        let table = trace.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = lines[0].find("outcome").unwrap();
        assert_eq!(&lines[1][col..col + 5], "allow");
        assert_eq!(&lines[2][col..col + 4], "deny");
        assert!(lines[2].contains("tool_cap_exceeded"));
    }
}
