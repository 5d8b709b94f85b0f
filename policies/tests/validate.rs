//! Validation: every problem of a file at once, each with its file, line, column, path and code.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use paybond_policies::{Diagnostic, check_policy, parse_policy};

/// `(line, column, path, code)` of each diagnostic.
fn summary(ds: &[Diagnostic]) -> Vec<(usize, usize, &str, &str)> {
    ds.iter()
        .map(|d| (d.line, d.column, d.path.as_str(), d.code.as_str()))
        .collect()
}

#[test]
fn one_run_reports_every_problem_in_file_order() {
    let text = "\
version: 1
name: Travel Policy
tools:
  travel.book_hotel:
    side_effecting: true
    max_spend_cent: 20000
  travel.pay:
    side_effecting: yes please
    max_spend_cents: -5
extends: {org_policy_id: base, org_id: org_acme}
spend_controls:
  caps:
    - { scope: planet, window: day, limit_cents: 100, timezone: Mars/Olympus }
    - { scope: tenant, limit_cents: 100 }
  gates: { warning: 0.8, restrict: 0.5, halt: 1.5 }
  schedule: { active_hours: { start: \"18:00\", end: \"9:00\", timezone: Europe/Paris } }
  data: { sensitive_patterns: [\"\\\\d{3\", \"ok\"] }
  phases: { payment_phase: LATER }
";
    let checked = check_policy(text, "travel.policy.yaml");
    assert!(!checked.is_valid());
    assert!(checked.document.is_none());
    assert!(
        checked
            .errors
            .iter()
            .all(|d| d.file == "travel.policy.yaml")
    );
    assert_eq!(
        summary(&checked.errors),
        [
            (2, 1, "name", "policy.invalid_name"),
            (
                4,
                3,
                "tools.travel.book_hotel.evidence_preset",
                "policy.missing_evidence_preset"
            ),
            (
                6,
                5,
                "tools.travel.book_hotel.max_spend_cent",
                "policy.unknown_key"
            ),
            (
                8,
                5,
                "tools.travel.pay.side_effecting",
                "policy.invalid_type"
            ),
            (
                9,
                5,
                "tools.travel.pay.max_spend_cents",
                "policy.invalid_type"
            ),
            (10, 1, "extends", "policy.requires_version_2"),
            (
                13,
                9,
                "spend_controls.caps[0].scope",
                "policy.invalid_value"
            ),
            (
                13,
                55,
                "spend_controls.caps[0].timezone",
                "policy.unknown_timezone"
            ),
            (
                14,
                7,
                "spend_controls.caps[1].window",
                "policy.missing_field"
            ),
            (
                15,
                26,
                "spend_controls.gates.restrict",
                "policy.gates_out_of_order"
            ),
            (
                15,
                41,
                "spend_controls.gates.halt",
                "policy.gate_out_of_range"
            ),
            (
                16,
                47,
                "spend_controls.schedule.active_hours.end",
                "policy.invalid_time"
            ),
            (
                17,
                32,
                "spend_controls.data.sensitive_patterns[0]",
                "policy.invalid_pattern"
            ),
            (
                18,
                13,
                "spend_controls.phases.payment_phase",
                "policy.invalid_value"
            ),
        ]
    );
    let unknown = &checked.errors[2];
    assert!(
        unknown.message.contains("did you mean `max_spend_cents`"),
        "{}",
        unknown.message
    );
    let text_out = unknown.to_string();
    assert!(
        text_out.starts_with(
            "travel.policy.yaml:6:5: tools.travel.book_hotel.max_spend_cent: unknown key"
        ),
        "{text_out}"
    );
}

#[test]
fn parse_policy_refuses_the_file_whole_and_lists_every_error() {
    let err = parse_policy(
        "version: 3\nname: p\ntools:\n  t:\n    side_effecting: true\n    evidence_preset: x\n    oops: 1\n",
        "p.yaml",
    )
    .unwrap_err();
    let codes: Vec<_> = err
        .errors
        .iter()
        .map(|d| (d.line, d.code.as_str()))
        .collect();
    assert_eq!(
        codes,
        [(1, "policy.unsupported_version"), (7, "policy.unknown_key")]
    );
    let shown = err.to_string();
    assert!(
        shown.starts_with("p.yaml: 2 problems\n  p.yaml:1:1: version:"),
        "{shown}"
    );
}

#[test]
fn schedule_gates_and_spend_fields() {
    let checked = check_policy(
        "version: 1\nname: p\ntools:\n  a: {side_effecting: true, max_spend_cents: 1, spend_from_args: x..y, evidence_preset: e}\n\
         spend_controls:\n  schedule: {active_hours: {start: \"18:00\", end: \"09:00\", timezone: UTC}}\n  gates: {warning: 0.5, restrict: 0.5, halt: 0.9}\n  approval: {quorum: 0}\n",
        "p.yaml",
    );
    let codes: Vec<_> = summary(&checked.errors)
        .into_iter()
        .map(|(line, _, path, code)| (line, path, code))
        .collect();
    assert_eq!(
        codes,
        [
            (
                4,
                "tools.a.spend_from_args",
                "policy.conflicting_spend_fields"
            ),
            (4, "tools.a.spend_from_args", "policy.invalid_spend_path"),
            (
                6,
                "spend_controls.schedule.active_hours.end",
                "policy.invalid_active_hours"
            ),
            (
                7,
                "spend_controls.gates.restrict",
                "policy.gates_out_of_order"
            ),
            (8, "spend_controls.approval.quorum", "policy.out_of_range"),
        ]
    );
}

#[test]
fn missing_required_fields_and_nulls() {
    let checked = check_policy(
        "name: p\ntools:\n  a: {}\n  b:\n    side_effecting:\nspend_controls:\n  vendors: {}\n  caps:\n",
        "p.yaml",
    );
    let got: Vec<_> = summary(&checked.errors)
        .into_iter()
        .map(|(line, _, path, code)| (line, path, code))
        .collect();
    assert_eq!(
        got,
        [
            (1, "version", "policy.missing_field"),
            (3, "tools.a.side_effecting", "policy.missing_field"),
            (5, "tools.b.side_effecting", "policy.invalid_type"),
            (7, "spend_controls.vendors.allow", "policy.missing_field"),
            (8, "spend_controls.caps", "policy.invalid_type"),
        ]
    );
    // A missing field has no position of its own: it is placed at its parent.
    assert_eq!(checked.errors[0].line, 1);
}

#[test]
fn syntax_errors_carry_the_position() {
    let checked = check_policy("version: 1\nname: p\ntools: [a\n", "p.yaml");
    assert_eq!(checked.errors.len(), 1);
    let d = &checked.errors[0];
    assert_eq!(d.code, "policy.syntax");
    assert!(d.line >= 3, "{d}");
}

#[test]
fn warnings_do_not_make_a_file_invalid() {
    let checked = check_policy(
        "version: 1\nname: p\ntools:\n  a: {side_effecting: false}\nintent:\n  allowed_tools: [a, b]\n\
         spend_controls:\n  tools:\n    c: {max_per_call_cents: 100, approval_threshold_cents: 100}\n",
        "p.yaml",
    );
    assert!(checked.is_valid(), "{:?}", checked.errors);
    assert!(checked.document.is_some());
    let got: Vec<_> = summary(&checked.warnings)
        .into_iter()
        .map(|(line, _, path, code)| (line, path, code))
        .collect();
    assert_eq!(
        got,
        [
            (
                6,
                "intent.allowed_tools[1]",
                "policy.allowed_tool_not_listed"
            ),
            (
                9,
                "spend_controls.tools.c",
                "policy.controls_for_unlisted_tool"
            ),
            (
                9,
                "spend_controls.tools.c.approval_threshold_cents",
                "policy.threshold_not_below_cap"
            ),
        ]
    );
}

#[test]
fn json_files_are_checked_the_same_way() {
    let checked = check_policy(
        "{\n  \"version\": 1,\n  \"name\": \"p\",\n  \"default_deny\": \"yes\"\n}\n",
        "p.json",
    );
    assert_eq!(
        summary(&checked.errors),
        [(4, 3, "default_deny", "policy.invalid_type")]
    );
    assert!(checked.errors[0].message.contains("true or false"));
}

#[test]
fn a_typo_is_one_problem_and_a_timezone_typo_gets_the_nearest_name() {
    // `side_efecting` misspells a required key: one unknown_key with the fix, no
    // missing_field besides.
    let text = "version: 1\nname: p\ntools:\n  a.pay: {side_efecting: true, max_spend_cents: 1, evidence_preset: receipt}\nspend_controls:\n  caps:\n    - {scope: tenant, window: day, limit_cents: 10, timezone: America/New_Yrok}\n    - {scope: tenant, window: day, limit_cents: 10, timezone: Europe/Pariss}\n    - {scope: tenant, window: day, limit_cents: 10, timezone: Mars/Olympus}\n";
    let checked = paybond_policies::check_policy(text, "p.yaml");
    let found: Vec<(&str, &str)> = checked
        .errors
        .iter()
        .map(|d| (d.path.as_str(), d.code.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            ("tools.a.pay.side_efecting", "policy.unknown_key"),
            ("spend_controls.caps[0].timezone", "policy.unknown_timezone"),
            ("spend_controls.caps[1].timezone", "policy.unknown_timezone"),
            ("spend_controls.caps[2].timezone", "policy.unknown_timezone"),
        ]
    );
    assert!(
        checked.errors[0]
            .message
            .contains("did you mean `side_effecting`?")
    );
    assert!(
        checked.errors[1]
            .message
            .contains("did you mean `America/New_York`?"),
        "{}",
        checked.errors[1].message
    );
    assert!(
        checked.errors[2]
            .message
            .contains("did you mean `Europe/Paris`?"),
        "{}",
        checked.errors[2].message
    );
    assert!(
        !checked.errors[3].message.contains("did you mean"),
        "{}",
        checked.errors[3].message
    );
}
