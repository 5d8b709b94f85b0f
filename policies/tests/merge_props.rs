//! Property: merging any overlay onto any base never widens the base: no cap,
//! budget, allowlist, side effect or `default_deny` of the base is loosened.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::collections::BTreeMap;

use paybond_policies::{
    AdapterSection, Approval, Budget, CapScope, CapWindow, Extends, Gates, IntentSection,
    Overrides, PolicyDocument, RollingCap, SpendControls, ToolControls, ToolOverride, ToolPolicy,
    Vendors, merge,
};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::subsequence;

const TOOLS: &[&str] = &["a.pay", "b.book", "c.search", "d.wire"];
const PRESETS: &[&str] = &["cost_and_completion", "receipt", "signed_delivery"];
const VENDORS: &[&str] = &["v1", "v2", "v3"];

fn tool_name() -> impl Strategy<Value = String> {
    proptest::sample::select(TOOLS).prop_map(str::to_owned)
}

fn preset() -> impl Strategy<Value = String> {
    proptest::sample::select(PRESETS).prop_map(str::to_owned)
}

fn cents() -> impl Strategy<Value = u64> {
    0u64..100_000
}

fn tool() -> impl Strategy<Value = ToolPolicy> {
    (
        any::<bool>(),
        option::of(cents()),
        option::of(Just("amount_cents".to_owned())),
        option::of(preset()),
    )
        .prop_map(|(side_effecting, max, from_args, preset)| ToolPolicy {
            side_effecting,
            max_spend_cents: max,
            spend_from_args: from_args,
            evidence_preset: preset,
            vendor_pack: None,
            operation: None,
        })
}

fn tool_override() -> impl Strategy<Value = ToolOverride> {
    (
        option::of(any::<bool>()),
        option::of(cents()),
        option::of(Just("other.path".to_owned())),
        option::of(preset()),
    )
        .prop_map(|(side_effecting, max, from_args, preset)| ToolOverride {
            side_effecting,
            max_spend_cents: max,
            spend_from_args: from_args,
            evidence_preset: preset,
            ..ToolOverride::default()
        })
}

fn intent() -> impl Strategy<Value = IntentSection> {
    (
        option::of((
            option::of(Just("usd".to_owned())),
            option::of(0.0f64..2_000.0),
        )),
        option::of(subsequence(TOOLS, 0..=TOOLS.len())),
    )
        .prop_map(|(budget, allowed)| IntentSection {
            policy_binding: None,
            budget: budget.map(|(currency, max)| Budget {
                currency,
                max_spend_usd: max,
            }),
            allowed_tools: allowed.map(|l| l.into_iter().map(str::to_owned).collect()),
        })
}

fn controls() -> impl Strategy<Value = SpendControls> {
    let tool_controls = (
        option::of(cents()),
        option::of(cents()),
        option::of(0u32..100),
        option::of(any::<bool>()),
    )
        .prop_map(|(max, threshold, per_hour, allow)| ToolControls {
            max_per_call_cents: max,
            approval_threshold_cents: threshold,
            limit_per_hour: per_hour,
            allow,
        });
    let cap = (
        proptest::sample::select(
            &[
                CapScope::Tenant,
                CapScope::Agent,
                CapScope::Vendor,
                CapScope::Tool,
            ][..],
        ),
        proptest::sample::select(&[CapWindow::Hour, CapWindow::Day, CapWindow::Month][..]),
        cents(),
    )
        .prop_map(|(scope, window, limit)| RollingCap {
            scope,
            key: None,
            window,
            limit_cents: limit,
            timezone: None,
        });
    (
        btree_map(tool_name(), tool_controls, 0..3),
        vec(cap, 0..3),
        option::of((0.0f64..0.3, 0.3f64..0.6, 0.6f64..1.0)),
        option::of(subsequence(VENDORS, 0..=VENDORS.len())),
        option::of(1u32..4),
    )
        .prop_map(|(tools, caps, gates, vendors, quorum)| SpendControls {
            tools,
            caps,
            gates: gates.map(|(warning, restrict, halt)| Gates {
                warning,
                restrict,
                halt,
            }),
            vendors: vendors.map(|v| Vendors {
                allow: v.into_iter().map(str::to_owned).collect(),
            }),
            approval: quorum.map(|quorum| Approval {
                quorum,
                timeout_seconds: None,
            }),
            ..SpendControls::default()
        })
}

fn base() -> impl Strategy<Value = PolicyDocument> {
    (
        option::of(any::<bool>()),
        btree_map(tool_name(), tool(), 0..4),
        option::of(intent()),
        option::of(any::<bool>()),
        option::of(controls()),
    )
        .prop_map(
            |(default_deny, tools, intent, deny_provider, controls)| PolicyDocument {
                schema: None,
                version: 2,
                name: "org".to_owned(),
                default_deny,
                tools,
                intent,
                adapter: deny_provider.map(|d| AdapterSection {
                    deny_provider_executed_tools: Some(d),
                }),
                extends: None,
                overrides: None,
                spend_controls: controls,
            },
        )
}

fn overlay() -> impl Strategy<Value = PolicyDocument> {
    (
        option::of(any::<bool>()),
        btree_map(tool_name(), tool(), 0..3),
        option::of(any::<bool>()),
        option::of(btree_map(tool_name(), tool_override(), 0..4)),
        option::of(intent()),
        option::of(intent()),
        option::of(any::<bool>()),
        option::of(controls()),
    )
        .prop_map(
            |(default_deny, tools, o_deny, o_tools, o_intent, intent, o_provider, controls)| {
                PolicyDocument {
                    schema: None,
                    version: 2,
                    name: "tenant".to_owned(),
                    default_deny,
                    tools,
                    intent,
                    adapter: None,
                    extends: Some(Extends {
                        org_policy_id: "org".to_owned(),
                        org_id: "org_x".to_owned(),
                        base_digest: None,
                        base_policy: None,
                    }),
                    overrides: Some(Overrides {
                        default_deny: o_deny,
                        tools: o_tools,
                        intent: o_intent,
                        adapter: o_provider.map(|d| AdapterSection {
                            deny_provider_executed_tools: Some(d),
                        }),
                    }),
                    spend_controls: controls,
                }
            },
        )
}

/// `Some(x)` limits at `x`; `None` is no limit. Is `eff` at most `base`?
fn within(eff: Option<u64>, base: Option<u64>) -> bool {
    match (eff, base) {
        (_, None) => true,
        (Some(e), Some(b)) => e <= b,
        (None, Some(_)) => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_merge_never_widens_the_base(base in base(), overlay in overlay()) {
        let eff = merge(&base, &overlay).effective;
        prop_assert_eq!(eff.version, 1);

        if base.default_deny == Some(true) {
            prop_assert_eq!(eff.default_deny, Some(true));
        }
        if base.adapter.as_ref().and_then(|a| a.deny_provider_executed_tools) == Some(true) {
            prop_assert_eq!(
                eff.adapter.as_ref().and_then(|a| a.deny_provider_executed_tools),
                Some(true)
            );
        }

        let catalog: Vec<&str> = base.tools.values().filter_map(|t| t.evidence_preset.as_deref()).collect();
        for (name, org) in &base.tools {
            let e = eff.tools.get(name);
            prop_assert!(e.is_some(), "org tool {} dropped", name);
            let e = e.unwrap();
            if org.side_effecting {
                prop_assert!(e.side_effecting, "{} no longer side-effecting", name);
            }
            prop_assert!(within(e.max_spend_cents, org.max_spend_cents), "{} cap raised", name);
            prop_assert_eq!(&e.spend_from_args, &org.spend_from_args, "{} spend mode changed", name);
            if let Some(p) = &e.evidence_preset && e.evidence_preset != org.evidence_preset {
                prop_assert!(catalog.contains(&p.as_str()), "{} preset {} not in the catalog", name, p);
            }
        }
        for (name, t) in &eff.tools {
            if !base.tools.contains_key(name) {
                // A tenant tool: only from the overlay, never both spend fields, a catalog preset.
                prop_assert!(overlay.tools.contains_key(name));
                prop_assert!(!(t.max_spend_cents.is_some() && t.spend_from_args.is_some()));
                if t.side_effecting {
                    prop_assert!(t.evidence_preset.is_some());
                }
                if let Some(p) = &t.evidence_preset && !catalog.is_empty() {
                    prop_assert!(catalog.contains(&p.as_str()));
                }
            }
        }

        let base_intent = base.intent.clone().unwrap_or_default();
        let eff_intent = eff.intent.clone().unwrap_or_default();
        if let Some(org_allowed) = &base_intent.allowed_tools {
            let allowed = eff_intent.allowed_tools.clone().unwrap_or_default();
            prop_assert!(allowed.iter().all(|t| org_allowed.contains(t)), "allowed_tools widened");
        }
        if let Some(org_max) = base_intent.budget.as_ref().and_then(|b| b.max_spend_usd) {
            let max = eff_intent.budget.as_ref().and_then(|b| b.max_spend_usd);
            prop_assert!(max.is_some_and(|m| m <= org_max), "budget raised: {:?} > {}", max, org_max);
        }

        if let Some(org) = &base.spend_controls {
            let c = eff.spend_controls.clone().unwrap_or_default();
            for (name, o) in &org.tools {
                let t = c.tools.get(name).cloned().unwrap_or_default();
                prop_assert!(within(t.max_per_call_cents, o.max_per_call_cents));
                prop_assert!(within(t.approval_threshold_cents, o.approval_threshold_cents));
                prop_assert!(within(t.limit_per_hour.map(u64::from), o.limit_per_hour.map(u64::from)));
                if o.allow == Some(false) {
                    prop_assert_eq!(t.allow, Some(false));
                }
            }
            for cap in &org.caps {
                prop_assert!(c.caps.contains(cap), "org cap {:?} dropped", cap);
            }
            if let Some(g) = org.gates {
                let e = c.gates.unwrap();
                prop_assert!(e.warning <= g.warning && e.restrict <= g.restrict && e.halt <= g.halt);
            }
            if let Some(v) = &org.vendors {
                let e = c.vendors.clone().map(|v| v.allow).unwrap_or_default();
                prop_assert!(e.iter().all(|x| v.allow.contains(x)), "vendor allowlist widened");
            }
            if let Some(a) = org.approval {
                prop_assert!(c.approval.is_some_and(|e| e.quorum >= a.quorum));
            }
        }
    }

    #[test]
    fn a_merge_is_deterministic(base in base(), overlay in overlay()) {
        let a = merge(&base, &overlay);
        let b = merge(&base, &overlay);
        prop_assert_eq!(a.effective.digest(), b.effective.digest());
        prop_assert_eq!(a.report, b.report);
    }
}

#[test]
fn the_property_sees_widenings() {
    // The checks above are not vacuous: an overlay that tries to raise a cap is caught
    // by the merge, and the same check on an unmerged overlay would fail.
    let base = PolicyDocument {
        schema: None,
        version: 2,
        name: "org".to_owned(),
        default_deny: Some(true),
        tools: BTreeMap::from([(
            "a.pay".to_owned(),
            ToolPolicy::side_effecting("receipt").with_max_spend_cents(100),
        )]),
        intent: None,
        adapter: None,
        extends: None,
        overrides: None,
        spend_controls: None,
    };
    let mut overlay = base.clone();
    overlay.name = "tenant".to_owned();
    overlay.tools.clear();
    overlay.default_deny = Some(false);
    overlay.overrides = Some(Overrides {
        tools: Some(BTreeMap::from([(
            "a.pay".to_owned(),
            ToolOverride {
                max_spend_cents: Some(500),
                ..ToolOverride::default()
            },
        )])),
        ..Overrides::default()
    });
    let merged = merge(&base, &overlay);
    assert!(within(
        merged.effective.tools["a.pay"].max_spend_cents,
        Some(100)
    ));
    assert_eq!(merged.effective.default_deny, Some(true));
    assert!(!within(Some(500), Some(100)));
    let codes: Vec<&str> = merged
        .report
        .denied_widenings
        .iter()
        .map(|p| p.code)
        .collect();
    assert_eq!(
        codes,
        [
            "policy.cannot_relax_default_deny",
            "policy.cannot_raise_spend_cap"
        ]
    );
}
