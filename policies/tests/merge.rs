//! Parsing the seed fixtures and every merge rule and denial code.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::path::Path;

use paybond_policies::{PolicyDocument, ToolPolicy, merge, parse_policy, read_policy};

fn fixture(name: &str) -> PolicyDocument {
    read_policy(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name),
    )
    .unwrap()
}

fn base() -> PolicyDocument {
    fixture("org-base.policy.yaml")
}

/// An overlay as a document built in code: typed, but not validated as a file, so
/// the merge meets what the file checks would refuse first.
fn overlay(yaml: &str) -> PolicyDocument {
    let head = "version: 2\nname: tenant-x\nextends: {org_policy_id: acme-agent-spend-v1, org_id: org_acme_corp}\n";
    serde_yaml_ng::from_str(&format!("{head}{yaml}")).unwrap()
}

/// The (path, code) pairs a merge refused.
fn denied(yaml: &str) -> Vec<(String, &'static str)> {
    merge(&base(), &overlay(yaml))
        .report
        .denied_widenings
        .into_iter()
        .map(|p| (p.path, p.code))
        .collect()
}

#[test]
fn the_seed_files_parse_and_merge_as_documented() {
    let base = base();
    let tenant = fixture("tenant-overlay.policy.yaml");
    assert_eq!(base.version, 2);
    assert_eq!(tenant.extends.as_ref().unwrap().org_id, "org_acme_corp");

    let merged = merge(&base, &tenant);
    assert!(
        merged.report.denied_widenings.is_empty(),
        "{:?}",
        merged.report
    );
    let eff = &merged.effective;
    assert_eq!(
        (eff.version, eff.name.as_str(), eff.default_deny),
        (1, "acme-travel-east", Some(true))
    );
    assert_eq!(
        eff.tools["travel.book_hotel"],
        ToolPolicy::side_effecting("cost_and_completion").with_max_spend_cents(15_000)
    );
    assert!(
        eff.tools.contains_key("acme.internal.approve_po"),
        "tools are a union"
    );
    let intent = eff.intent.as_ref().unwrap();
    assert_eq!(intent.budget.as_ref().unwrap().max_spend_usd, Some(150.0));
    assert_eq!(
        intent.policy_binding.as_ref().unwrap().template_id,
        "completion_budget_v1"
    );
    assert_eq!(
        merged.report.overrides_applied,
        [
            "tools.acme.internal.approve_po",
            "overrides.tools.travel.book_hotel",
            "overrides.intent.budget.max_spend_usd"
        ]
    );
    assert_eq!(merged.report.org_policy_id, "acme-agent-spend-v1");

    // Deterministic, and the digest is stable and content-addressed.
    let again = merge(&base, &tenant);
    assert_eq!(again, merged);
    assert_eq!(again.effective.digest(), eff.digest());
    assert!(eff.digest().starts_with("sha256:") && eff.digest().len() == 71);
    assert_ne!(base.digest(), eff.digest());
}

#[test]
fn a_full_spend_controls_block_round_trips() {
    let text = r#"
version: 1
name: canonical
default_deny: true
tools:
  travel.book_hotel: {side_effecting: true, max_spend_cents: 20000, evidence_preset: cost_and_completion}
  travel.search_hotels: {side_effecting: false}
spend_controls:
  tools:
    travel.book_hotel: {max_per_call_cents: 20000, approval_threshold_cents: 15000, limit_per_hour: 30, allow: true}
  caps:
    - { scope: tenant, window: day, limit_cents: 100000, timezone: UTC }
    - { scope: vendor, key: vendor_acme, window: month, limit_cents: 500000 }
  gates: { warning: 0.50, restrict: 0.75, halt: 0.90 }
  schedule: { active_hours: { start: "09:00", end: "18:00", timezone: America/New_York } }
  vendors: { allow: [vendor_acme] }
  approval: { quorum: 1, timeout_seconds: 300 }
  phases: { payment_phase: COMMIT }
  data: { sensitive_patterns: ["\\b\\d{3}-\\d{2}-\\d{4}\\b"] }
"#;
    let doc = parse_policy(text, "canonical.yaml").unwrap();
    let controls = doc.spend_controls.as_ref().unwrap();
    assert_eq!(
        controls.tools["travel.book_hotel"].approval_threshold_cents,
        Some(15_000)
    );
    assert_eq!(controls.caps.len(), 2);
    let json = serde_json::to_string(&doc).unwrap();
    let back = parse_policy(&json, "canonical.json").unwrap();
    assert_eq!(back, doc);
    assert_eq!(back.digest(), doc.digest());
}

#[test]
fn every_denial_code_with_its_path() {
    let cases: [(&str, (&str, &str)); 13] = [
        (
            "overrides: {tools: {travel.book_hotel: {side_effecting: false}}}",
            (
                "overrides.tools.travel.book_hotel.side_effecting",
                "policy.cannot_disable_org_side_effecting_tool",
            ),
        ),
        (
            "overrides: {tools: {travel.book_hotel: {max_spend_cents: 25000}}}",
            (
                "overrides.tools.travel.book_hotel.max_spend_cents",
                "policy.cannot_raise_spend_cap",
            ),
        ),
        (
            "overrides: {tools: {travel.book_hotel: {spend_from_args: amount_cents}}}",
            (
                "overrides.tools.travel.book_hotel.spend_from_args",
                "policy.cannot_override_org_spend_mode",
            ),
        ),
        (
            "overrides: {tools: {travel.book_hotel: {evidence_preset: \"\"}}}",
            (
                "overrides.tools.travel.book_hotel.evidence_preset",
                "policy.missing_evidence_preset",
            ),
        ),
        (
            "overrides: {tools: {travel.book_hotel: {max_spend_cents: 1, spend_from_args: a}}}",
            (
                "overrides.tools.travel.book_hotel.spend_from_args",
                "policy.conflicting_spend_fields",
            ),
        ),
        (
            "overrides: {intent: {policy_binding: {template_id: other_template}}}",
            (
                "overrides.intent.policy_binding.template_id",
                "policy.cannot_change_org_template",
            ),
        ),
        (
            "overrides: {intent: {allowed_tools: [travel.book_hotel, payments.wire]}}",
            (
                "overrides.intent.allowed_tools",
                "policy.cannot_widen_allowed_tools",
            ),
        ),
        (
            "overrides: {tools: {travel.cancel: {max_spend_cents: 1}}}",
            (
                "overrides.tools.travel.cancel",
                "policy.unknown_org_tool_override",
            ),
        ),
        (
            "tools: {travel.book_hotel: {side_effecting: false}}",
            ("tools.travel.book_hotel", "policy.cannot_replace_org_tool"),
        ),
        (
            "overrides: {tools: {travel.book_hotel: {evidence_preset: screenshot_only}}}",
            (
                "overrides.tools.travel.book_hotel.evidence_preset",
                "policy.evidence_preset_not_org_approved",
            ),
        ),
        (
            "tools: {payments.wire: {side_effecting: true, max_spend_cents: 5}}",
            (
                "tools.payments.wire.evidence_preset",
                "policy.missing_evidence_preset",
            ),
        ),
        (
            "tools: {payments.wire: {side_effecting: true, max_spend_cents: 5, spend_from_args: a, evidence_preset: cost_and_completion}}",
            (
                "tools.payments.wire.spend_from_args",
                "policy.conflicting_spend_fields",
            ),
        ),
        (
            "tools: {payments.wire: {side_effecting: true, evidence_preset: screenshot_only}}",
            (
                "tools.payments.wire.evidence_preset",
                "policy.evidence_preset_not_org_approved",
            ),
        ),
    ];
    for (yaml, (path, code)) in cases {
        assert_eq!(denied(yaml), [(path.to_owned(), code)], "for {yaml}");
    }
}

#[test]
fn template_version_digest_budget_and_provider_deny_cannot_be_relaxed() {
    let (aa, bb) = ("a".repeat(64), "b".repeat(64));
    let pinned = parse_policy(
        &format!("version: 2\nname: org\ndefault_deny: true\nintent: {{policy_binding: {{template_id: t, version_seq: 3, head_digest: \"sha256:{aa}\"}}, budget: {{max_spend_usd: 100}}}}\nadapter: {{deny_provider_executed_tools: true}}\n"),
        "org.yaml",
    )
    .unwrap();
    let tenant = |yaml: &str| {
        merge(&pinned, &overlay(yaml))
            .report
            .denied_widenings
            .into_iter()
            .map(|p| (p.path, p.code))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        tenant("overrides: {intent: {policy_binding: {template_id: t, version_seq: 2}}}"),
        [(
            "overrides.intent.policy_binding.version_seq".to_owned(),
            "policy.cannot_downgrade_template_version"
        )]
    );
    assert_eq!(
        tenant(&format!(
            "overrides: {{intent: {{policy_binding: {{template_id: t, head_digest: \"sha256:{bb}\"}}}}}}"
        )),
        [(
            "overrides.intent.policy_binding.head_digest".to_owned(),
            "policy.cannot_change_org_head_digest"
        )]
    );
    assert_eq!(
        tenant("overrides: {adapter: {deny_provider_executed_tools: false}}"),
        [(
            "overrides.adapter.deny_provider_executed_tools".to_owned(),
            "policy.cannot_relax_provider_executed_deny"
        )]
    );
    assert_eq!(
        tenant("overrides: {intent: {budget: {max_spend_usd: 150}}}"),
        [(
            "overrides.intent.budget.max_spend_usd".to_owned(),
            "policy.cannot_raise_budget_cap"
        )]
    );
    // A newer template version is a narrowing the tenant may make.
    let merged = merge(
        &pinned,
        &overlay("overrides: {intent: {policy_binding: {template_id: t, version_seq: 4}}}"),
    );
    assert!(merged.report.denied_widenings.is_empty());
    let binding = merged.effective.intent.unwrap().policy_binding.unwrap();
    assert_eq!(binding.version_seq, Some(4));
}

#[test]
fn refused_widenings_leave_the_base_in_force() {
    let merged = merge(
        &base(),
        &overlay(
            "default_deny: false\noverrides: {tools: {travel.book_hotel: {max_spend_cents: 25000}}, intent: {allowed_tools: [travel.book_hotel, payments.wire]}}",
        ),
    );
    let eff = merged.effective;
    assert_eq!(eff.default_deny, Some(true), "default_deny: true wins");
    assert_eq!(eff.tools["travel.book_hotel"].max_spend_cents, Some(20_000));
    assert_eq!(
        eff.intent.unwrap().allowed_tools.unwrap(),
        ["travel.book_hotel"],
        "intersection"
    );
}

#[test]
fn spend_controls_from_both_sides_apply_together() {
    let org = parse_policy(
        "version: 2\nname: org\nspend_controls:\n  tools: {t: {approval_threshold_cents: 15000, limit_per_hour: 30}}\n  caps: [{scope: tenant, window: day, limit_cents: 100000}]\n  vendors: {allow: [a, b]}\n  gates: {warning: 0.5, restrict: 0.75, halt: 0.9}\n",
        "org.yaml",
    )
    .unwrap();
    let tenant = overlay(
        "spend_controls:\n  tools: {t: {approval_threshold_cents: 20000, limit_per_hour: 10, allow: false}}\n  caps: [{scope: vendor, key: a, window: month, limit_cents: 5000}]\n  vendors: {allow: [b, c]}\n  gates: {warning: 0.6, restrict: 0.7, halt: 0.95}\n",
    );
    let controls = merge(&org, &tenant).effective.spend_controls.unwrap();
    let t = &controls.tools["t"];
    assert_eq!(
        (t.approval_threshold_cents, t.limit_per_hour, t.allow),
        (Some(15_000), Some(10), Some(false))
    );
    assert_eq!(controls.caps.len(), 2);
    assert_eq!(controls.vendors.unwrap().allow, ["b"]);
    let gates = controls.gates.unwrap();
    assert_eq!((gates.warning, gates.restrict, gates.halt), (0.5, 0.7, 0.9));
}

#[test]
fn the_bundled_scenario_policy_is_the_merge_of_its_overlay_onto_the_org_base() {
    use paybond_policies::bundled;
    let org = parse_policy(bundled::ORG_BASE, bundled::ORG_BASE_FILE).unwrap();
    let tenant = parse_policy(bundled::TENANT_OVERLAY, bundled::TENANT_OVERLAY_FILE).unwrap();
    let merged = merge(&org, &tenant);
    assert!(
        merged.report.denied_widenings.is_empty(),
        "{:?}",
        merged.report.denied_widenings
    );
    let mut canonical = parse_policy(
        bundled::CANONICAL_SCENARIO,
        bundled::CANONICAL_SCENARIO_FILE,
    )
    .unwrap();
    canonical.schema = None;
    assert_eq!(merged.effective, canonical);
    assert_eq!(merged.effective.digest(), canonical.digest());

    // The scenario's numbers (demos/README.md).
    let controls = canonical.spend_controls.as_ref().unwrap();
    let book = &controls.tools["travel.book_hotel"];
    assert_eq!(book.max_per_call_cents, Some(20_000));
    assert_eq!(book.approval_threshold_cents, Some(15_000));
    assert!(!canonical.tools["travel.search_hotels"].side_effecting);
    assert!(canonical.tools["travel.book_hotel"].side_effecting);
}

#[test]
fn the_checked_in_schema_is_the_generated_one() {
    let generated = serde_json::to_string_pretty(&PolicyDocument::json_schema()).unwrap() + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.schema.json");
    if std::env::var_os("PAYBOND_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap();
    assert!(
        checked_in == generated,
        "policies/policy.schema.json is out of date: run `cargo run -p paybond-cli -- policy schema --out policies/policy.schema.json` \
         (or the tests with PAYBOND_UPDATE_SNAPSHOTS=1)"
    );
    // Every bundled file validates against the schema's required top-level keys.
    let schema: serde_json::Value = serde_json::from_str(&checked_in).unwrap();
    assert_eq!(schema["required"], serde_json::json!(["version", "name"]));
    assert_eq!(schema["additionalProperties"], serde_json::json!(false));
    // A tool has a fixed amount or one taken from its arguments, never both.
    for def in ["ToolPolicy", "ToolOverride"] {
        assert_eq!(
            schema["$defs"][def]["not"],
            serde_json::json!({"required": ["max_spend_cents", "spend_from_args"]}),
            "{def}"
        );
    }
}

#[test]
fn every_looser_spend_control_is_refused_with_its_path_and_code() {
    let org = parse_policy(
        "version: 2\nname: org\ndefault_deny: true\nspend_controls:\n  tools: {t.pay: {max_per_call_cents: 20000, approval_threshold_cents: 15000, limit_per_hour: 30, allow: false}}\n  caps: [{scope: tenant, window: day, limit_cents: 100000}]\n  vendors: {allow: [a, b]}\n  gates: {warning: 0.5, restrict: 0.75, halt: 0.9}\n  schedule: {active_hours: {start: \"09:00\", end: \"18:00\", timezone: UTC}}\n  approval: {quorum: 2}\n  phases: {payment_phase: COMMIT}\n",
        "org.yaml",
    )
    .unwrap();
    let looser = overlay(
        "default_deny: false\nspend_controls:\n  tools: {t.pay: {max_per_call_cents: 25000, approval_threshold_cents: 20000, limit_per_hour: 60, allow: true}}\n  caps: [{scope: tenant, window: day, limit_cents: 200000}, {scope: tenant, window: month, limit_cents: 900000}]\n  vendors: {allow: [b, c]}\n  gates: {warning: 0.6, restrict: 0.7, halt: 0.95}\n  schedule: {active_hours: {start: \"00:00\", end: \"23:59\", timezone: UTC}}\n  approval: {quorum: 1}\n  phases: {payment_phase: EXPLORE}\n",
    );
    let merged = merge(&org, &looser);
    let refused: Vec<(String, &str)> = merged
        .report
        .denied_widenings
        .iter()
        .map(|p| (p.path.clone(), p.code))
        .collect();
    let expected = [
        ("default_deny", "policy.cannot_relax_default_deny"),
        (
            "spend_controls.tools.t.pay.max_per_call_cents",
            "policy.cannot_raise_spend_cap",
        ),
        (
            "spend_controls.tools.t.pay.approval_threshold_cents",
            "policy.cannot_raise_approval_threshold",
        ),
        (
            "spend_controls.tools.t.pay.limit_per_hour",
            "policy.cannot_raise_rate_limit",
        ),
        (
            "spend_controls.tools.t.pay.allow",
            "policy.cannot_enable_org_disabled_tool",
        ),
        (
            "spend_controls.caps[0].limit_cents",
            "policy.cannot_raise_spend_cap",
        ),
        ("spend_controls.gates.warning", "policy.cannot_relax_gates"),
        ("spend_controls.gates.halt", "policy.cannot_relax_gates"),
        (
            "spend_controls.schedule",
            "policy.cannot_change_org_schedule",
        ),
        (
            "spend_controls.vendors.allow[1]",
            "policy.cannot_widen_vendor_allowlist",
        ),
        (
            "spend_controls.approval.quorum",
            "policy.cannot_lower_approval_quorum",
        ),
        ("spend_controls.phases", "policy.cannot_change_org_phase"),
    ];
    let expected: Vec<(String, &str)> = expected
        .iter()
        .map(|(p, c)| ((*p).to_owned(), *c))
        .collect();
    assert_eq!(refused, expected);
    assert!(
        !merged
            .report
            .overrides_applied
            .contains(&"spend_controls".to_owned())
    );
    // What is tighter still applies: the month cap, the gate the tenant lowered.
    let controls = merged.effective.spend_controls.unwrap();
    assert_eq!(controls.caps.len(), 3);
    assert_eq!(controls.gates.unwrap().restrict, 0.7);
    assert_eq!(merged.effective.default_deny, Some(true));

    // Equal or tighter settings are applied, not refused.
    let tighter = overlay(
        "spend_controls:\n  tools: {t.pay: {max_per_call_cents: 20000, approval_threshold_cents: 1000, limit_per_hour: 5}}\n  caps: [{scope: tenant, window: day, limit_cents: 50000}]\n  vendors: {allow: [a]}\n  approval: {quorum: 3}\n",
    );
    let merged = merge(&org, &tighter);
    assert!(
        merged.report.denied_widenings.is_empty(),
        "{:?}",
        merged.report.denied_widenings
    );
    assert!(
        merged
            .report
            .overrides_applied
            .contains(&"spend_controls".to_owned())
    );
}

#[test]
fn a_looser_overlay_file_is_refused_whole_with_each_widening_at_its_line() {
    use paybond_policies::{Source, resolve_policy};
    let org = "version: 2\nname: org\ndefault_deny: true\ntools:\n  t.pay: {side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}\nspend_controls:\n  tools:\n    t.pay: {max_per_call_cents: 20000, approval_threshold_cents: 15000}\n";
    let tenant = "version: 2\nname: tenant\nextends: {org_policy_id: org, org_id: org_acme}\nspend_controls:\n  tools:\n    t.pay:\n      max_per_call_cents: 50000\n      approval_threshold_cents: 40000\n";
    let resolution = resolve_policy(
        Source {
            text: tenant,
            file: "tenant.yaml",
        },
        Some(Source {
            text: org,
            file: "org.yaml",
        }),
    );
    assert!(!resolution.valid);
    assert!(resolution.effective.is_none());
    let located: Vec<(&str, usize)> = resolution
        .errors
        .iter()
        .map(|d| (d.code.as_str(), d.line))
        .collect();
    assert_eq!(
        located,
        [
            ("policy.cannot_raise_spend_cap", 7),
            ("policy.cannot_raise_approval_threshold", 8)
        ]
    );
}
