//! The scenarios: the canonical one and the governed one, their steps, their
//! expected traces and end states, and the report every demo prints.

use std::fmt::Write as _;

use paybond_middleware_core::trace::{TraceEntry, TraceOutcome};
use paybond_middleware_core::wire::Finalization;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::travel::{BOOK, SEARCH, TRIP};

/// Which scenario a demo runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Scenario {
    /// Allow, hold and approve, deny over the cap, a failing vendor released.
    #[default]
    Canonical,
    /// A phase deny before the agent commits, a sensitive-data deny, a trip whose
    /// failed second stay cancels the first (compensation), and a cap lowered
    /// mid-run that the running agent reloads.
    Governed,
}

impl Scenario {
    /// Its name on the command line and in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Self::Canonical => "canonical",
            Self::Governed => "governed",
        }
    }

    fn expected(self) -> &'static [Expected] {
        match self {
            Self::Canonical => &EXPECTED,
            Self::Governed => &GOVERNED_EXPECTED,
        }
    }

    /// The end state every framework must reach.
    pub fn end_state(self) -> EndState {
        match self {
            Self::Canonical => EndState {
                consumed_cents: 30_700,
                released_cents: 9_000,
                holds: 1,
                denies: 1,
                compensations: 0,
                policy_reloads: 0,
            },
            Self::Governed => EndState {
                consumed_cents: 20_000,
                released_cents: 9_000,
                holds: 0,
                denies: 3,
                compensations: 1,
                policy_reloads: 1,
            },
        }
    }
}

/// What a scenario's run must end with (besides no open reservations and a valid ledger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndState {
    /// Settled as consumed.
    pub consumed_cents: u64,
    /// Released after a failed call.
    pub released_cents: u64,
    /// Calls held.
    pub holds: u32,
    /// Calls denied.
    pub denies: u32,
    /// Compensations that ran and are on the ledger.
    pub compensations: u32,
    /// Policy reloads of the run.
    pub policy_reloads: u32,
}

/// One tool call of the scenario.
#[derive(Debug, Clone)]
pub struct Step {
    /// The tool call id.
    pub id: &'static str,
    /// The tool.
    pub tool: &'static str,
    /// Its arguments.
    pub args: Value,
    /// What happens, in words.
    pub what: &'static str,
}

/// The five calls: search, book 12000, book 18700 (held, approved), book 25000
/// (over the cap), book 9000 with a failing vendor.
pub fn steps() -> Vec<Step> {
    vec![
        Step {
            id: "c1",
            tool: SEARCH,
            args: json!({"city": "Lisbon"}),
            what: "search hotels (read-only: passes through)",
        },
        Step {
            id: "c2",
            tool: BOOK,
            args: json!({"hotel": "Harbor Inn", "amount_cents": 12_000}),
            what: "book 120.00 (allowed, consumed)",
        },
        Step {
            id: "c3",
            tool: BOOK,
            args: json!({"hotel": "Bay Suites", "amount_cents": 18_700}),
            what: "book 187.00 (above the 150.00 approval threshold: held, approved, retried)",
        },
        Step {
            id: "c4",
            tool: BOOK,
            args: json!({"hotel": "Grand Palace", "amount_cents": 25_000}),
            what: "book 250.00 (above the 200.00 per-call cap: denied, never runs)",
        },
        Step {
            id: "c5",
            tool: BOOK,
            args: json!({"hotel": "Dock Hostel", "amount_cents": 9_000, "simulate_vendor_failure": true}),
            what: "book 90.00, the vendor fails (allowed, then released)",
        },
    ]
}

/// The governed scenario, in two parts: before and after the operator lowers the
/// per-booking cap (from 200.00 to 100.00) and the agent reloads its policy.
pub fn governed_steps() -> [Vec<Step>; 2] {
    [
        vec![
            Step {
                id: "g1",
                tool: SEARCH,
                args: json!({"city": "Lisbon"}),
                what: "search hotels (read-only: runs in any phase)",
            },
            Step {
                id: "g2",
                tool: BOOK,
                args: json!({"hotel": "Harbor Inn", "amount_cents": 12_000}),
                what: "book 120.00 before committing to a plan (denied: phase_not_committed)",
            },
            Step {
                id: "g3",
                tool: paybond_middleware_core::registry::COMMIT_PLAN,
                args: json!({"plan": "Two nights at Harbor Inn, then two at Dock Hostel, booked as one trip."}),
                what: "commit to the plan (the run moves to COMMIT)",
            },
            Step {
                id: "g4",
                tool: BOOK,
                args: json!({"hotel": "Harbor Inn", "amount_cents": 12_000, "guest_note": "charge card 4111 1111 1111 1111"}),
                what: "book with a card number in the note (denied locally: sensitive_data_in_arguments)",
            },
            Step {
                id: "g5",
                tool: TRIP,
                args: json!({"stays": [
                    {"hotel": "Harbor Inn", "amount_cents": 12_000},
                    {"hotel": "Dock Hostel", "amount_cents": 9_000, "simulate_vendor_failure": true}
                ]}),
                what: "book a trip: the first stay is consumed, the second fails, the first is cancelled (compensated)",
            },
        ],
        vec![
            Step {
                id: "g6",
                tool: BOOK,
                args: json!({"hotel": "Harbor Inn", "amount_cents": 12_000}),
                what: "book 120.00 under the reloaded policy (denied: tool_cap_exceeded at 100.00)",
            },
            Step {
                id: "g7",
                tool: BOOK,
                args: json!({"hotel": "Dock Hostel", "amount_cents": 8_000}),
                what: "book 80.00 (allowed, consumed)",
            },
        ],
    ]
}

/// The intent's budget.
pub const BUDGET_CENTS: u64 = 60_000;

/// One expected trace entry: tool, amount, outcome, reason codes, finalization, actual cost.
type Expected = (
    &'static str,
    Option<u64>,
    TraceOutcome,
    &'static [&'static str],
    Option<Finalization>,
    Option<u64>,
);

const EXPECTED: [Expected; 6] = [
    (SEARCH, None, TraceOutcome::Passthrough, &[], None, None),
    (
        BOOK,
        Some(12_000),
        TraceOutcome::Allow,
        &[],
        Some(Finalization::Consumed),
        Some(12_000),
    ),
    (
        BOOK,
        Some(18_700),
        TraceOutcome::Hold,
        &["approval_threshold_exceeded"],
        None,
        None,
    ),
    (
        BOOK,
        Some(18_700),
        TraceOutcome::Allow,
        &["approval_token_accepted"],
        Some(Finalization::Consumed),
        Some(18_700),
    ),
    (
        BOOK,
        Some(25_000),
        TraceOutcome::Deny,
        &["tool_cap_exceeded"],
        None,
        None,
    ),
    (
        BOOK,
        Some(9_000),
        TraceOutcome::Allow,
        &["tool_failed"],
        Some(Finalization::Released),
        None,
    ),
];

const GOVERNED_EXPECTED: [Expected; 8] = [
    (SEARCH, None, TraceOutcome::Passthrough, &[], None, None),
    (
        BOOK,
        Some(12_000),
        TraceOutcome::Deny,
        &["phase_not_committed"],
        None,
        None,
    ),
    (
        BOOK,
        None,
        TraceOutcome::Deny,
        &["sensitive_data_in_arguments"],
        None,
        None,
    ),
    (
        BOOK,
        Some(12_000),
        TraceOutcome::Allow,
        &[],
        Some(Finalization::Consumed),
        Some(12_000),
    ),
    (
        BOOK,
        Some(9_000),
        TraceOutcome::Allow,
        &["tool_failed"],
        Some(Finalization::Released),
        None,
    ),
    (
        TRIP,
        None,
        TraceOutcome::Passthrough,
        &["tool_failed"],
        None,
        None,
    ),
    (
        BOOK,
        Some(12_000),
        TraceOutcome::Deny,
        &["tool_cap_exceeded"],
        None,
        None,
    ),
    (
        BOOK,
        Some(8_000),
        TraceOutcome::Allow,
        &[],
        Some(Finalization::Consumed),
        Some(8_000),
    ),
];

/// The run's end state (the `summary` line of `--format json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// `generic`, `openai`, `rig` or `mcp`.
    pub framework: String,
    /// `embedded` or `http`.
    pub gateway: String,
    /// `canonical` or `governed`.
    pub scenario: String,
    /// Settled as consumed.
    pub consumed_cents: u64,
    /// Released after a failed call.
    pub released_cents: u64,
    /// Calls held for approval.
    pub holds: u32,
    /// Calls denied.
    pub denies: u32,
    /// Compensations of failed workflows that ran and are on the gateway's ledger.
    pub compensations: u32,
    /// Times the run reloaded a newer effective policy.
    pub policy_reloads: u32,
    /// The intent's reservations still open.
    pub open_reservations: u64,
    /// Whether the gateway's ledger chain verifies.
    pub ledger_valid: bool,
    /// Whether the run reached the expected trace and end state.
    #[serde(default)]
    pub passed: bool,
    /// How it differs from them (empty when `passed`).
    #[serde(default)]
    pub problems: Vec<Problem>,
}

/// One difference from the scenario, machine-readable: which trace entry (1-based;
/// absent for the end state), which field, what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The trace entry, from 1; absent for the end state and the entry count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<usize>,
    /// The field (`outcome`, `reason_codes`, `consumed_cents`, `entries`, ...).
    pub field: String,
    /// What the scenario expects.
    pub expected: Value,
    /// What the run gave.
    pub found: Value,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(entry) = self.entry {
            write!(f, "entry {entry}: ")?;
        }
        write!(
            f,
            "{}: expected {}, found {}",
            self.field, self.expected, self.found
        )
    }
}

/// A finished demo: its trace, its end state, and how they differ from the expected ones.
#[derive(Debug, Clone)]
pub struct Report {
    /// One JSON object per trace entry, with the fields the README lists.
    pub entries: Vec<Value>,
    /// The end state.
    pub summary: Summary,
    /// Differences from the expected trace and end state (empty: the scenario passed).
    pub problems: Vec<Problem>,
    /// What the model said at the end, for the frameworks with a model.
    pub answer: Option<String>,
    /// The trace, for its table.
    trace: Vec<TraceEntry>,
}

fn finalization_name(f: Option<Finalization>) -> Value {
    match f {
        Some(Finalization::Consumed) => json!("consumed"),
        Some(Finalization::Released) => json!("released"),
        None => Value::Null,
    }
}

fn outcome_name(o: TraceOutcome) -> &'static str {
    match o {
        TraceOutcome::Passthrough => "passthrough",
        TraceOutcome::Allow => "allow",
        TraceOutcome::Hold => "hold",
        TraceOutcome::Deny => "deny",
        TraceOutcome::Error => "error",
    }
}

/// `n` and what it counts: "1 deny", "3 denies".
fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A trace entry as `--format json` prints it.
pub fn entry_json(e: &TraceEntry) -> Value {
    let mut line = json!({
        "tool_call_id": e.tool_call_id,
        "tool": e.tool,
        "operation": e.operation,
        "amount_cents": e.amount_cents,
        "outcome": outcome_name(e.outcome),
        "reason_codes": e.reason_codes,
        "decision_id": e.decision_id,
        "finalization": finalization_name(e.finalization),
        "actual_cents": e.actual_cents,
    });
    // The decision's proof trace, when the gateway made one.
    if !e.checks.is_empty() {
        line["checks"] = json!(e.checks);
    }
    line
}

impl Report {
    /// Builds the report of a run and checks it against `scenario`.
    pub fn new(
        scenario: Scenario,
        entries: &[TraceEntry],
        mut summary: Summary,
        answer: Option<String>,
    ) -> Self {
        let expected = scenario.expected();
        let end = scenario.end_state();
        let mut problems = Vec::new();
        let mut differ = |entry: Option<usize>, field: &str, expected: Value, found: Value| {
            if expected != found {
                problems.push(Problem {
                    entry,
                    field: field.to_owned(),
                    expected,
                    found,
                });
            }
        };
        differ(None, "entries", json!(expected.len()), json!(entries.len()));
        for (i, (e, x)) in entries.iter().zip(expected).enumerate() {
            let (tool, amount, outcome, reasons, finalization, actual) = *x;
            let n = Some(i + 1);
            differ(n, "tool", json!(tool), json!(e.tool));
            differ(n, "amount_cents", json!(amount), json!(e.amount_cents));
            differ(
                n,
                "outcome",
                json!(outcome_name(outcome)),
                json!(outcome_name(e.outcome)),
            );
            differ(n, "reason_codes", json!(reasons), json!(e.reason_codes));
            differ(
                n,
                "finalization",
                finalization_name(finalization),
                finalization_name(e.finalization),
            );
            differ(n, "actual_cents", json!(actual), json!(e.actual_cents));
        }
        differ(
            None,
            "consumed_cents",
            json!(end.consumed_cents),
            json!(summary.consumed_cents),
        );
        differ(
            None,
            "released_cents",
            json!(end.released_cents),
            json!(summary.released_cents),
        );
        differ(None, "holds", json!(end.holds), json!(summary.holds));
        differ(None, "denies", json!(end.denies), json!(summary.denies));
        differ(
            None,
            "compensations",
            json!(end.compensations),
            json!(summary.compensations),
        );
        differ(
            None,
            "policy_reloads",
            json!(end.policy_reloads),
            json!(summary.policy_reloads),
        );
        differ(
            None,
            "open_reservations",
            json!(0),
            json!(summary.open_reservations),
        );
        differ(
            None,
            "ledger_valid",
            json!(true),
            json!(summary.ledger_valid),
        );
        summary.passed = problems.is_empty();
        summary.problems.clone_from(&problems);
        Self {
            entries: entries.iter().map(entry_json).collect(),
            summary,
            problems,
            answer,
            trace: entries.to_vec(),
        }
    }

    /// Whether the run reached the expected end state.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// `--format json`: one line per entry, then the summary line.
    pub fn json_lines(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            let mut line = e.clone();
            line["framework"] = json!(self.summary.framework);
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "{}", json!({"summary": self.summary}));
        out
    }

    /// `--format table`: a table, the summary and the verdict.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let s = &self.summary;
        let _ = writeln!(
            out,
            "paybond agent demo {} ({} gateway): the {} scenario\n",
            s.framework, s.gateway, s.scenario
        );
        // The same columns as the layer's own `RunTrace::table()`.
        out.push_str(&paybond_middleware_core::trace::RunTrace::table_of(
            &self.trace,
            "usd",
        ));
        let _ = write!(
            out,
            "\nconsumed {}, released {}, {}, {}, ",
            paybond_middleware_core::format_money(s.consumed_cents, "usd"),
            paybond_middleware_core::format_money(s.released_cents, "usd"),
            counted(s.holds.into(), "hold", "holds"),
            counted(s.denies.into(), "deny", "denies"),
        );
        if s.compensations > 0 || s.policy_reloads > 0 {
            let _ = write!(
                out,
                "{} compensated, {}, ",
                s.compensations,
                counted(s.policy_reloads.into(), "policy reload", "policy reloads")
            );
        }
        let _ = writeln!(
            out,
            "{}, ledger {}",
            counted(s.open_reservations, "open reservation", "open reservations"),
            if s.ledger_valid { "valid" } else { "BROKEN" }
        );
        if let Some(answer) = &self.answer {
            let _ = writeln!(out, "model: {answer}");
        }
        if self.passed() {
            let _ = writeln!(out, "PASS: the expected end state");
        } else {
            let _ = writeln!(out, "FAIL:");
            for p in &self.problems {
                let _ = writeln!(out, "  {p}");
            }
        }
        out
    }
}
