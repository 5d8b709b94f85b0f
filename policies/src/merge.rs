//! Deterministic merge of a tenant overlay onto its org base.
//!
//! The result is a flat version-1 document. A change that would widen the base is
//! not applied: it is reported in [`MergeReport::denied_widenings`] with its path
//! and one of the `policy.*` codes, and the base's value stays.
//!
//! The codes, by what the overlay tried:
//!
//! | code | the overlay tried to |
//! | --- | --- |
//! | `policy.cannot_disable_org_side_effecting_tool` | mark an org side-effecting tool read-only |
//! | `policy.cannot_raise_spend_cap` | raise a tool's `max_spend_cents`, a `spend_controls` per-call cap, or a rolling cap of the same scope and window |
//! | `policy.cannot_override_org_spend_mode` | switch a tool between a fixed amount and `spend_from_args` |
//! | `policy.missing_evidence_preset` | leave a side-effecting tool without an evidence preset |
//! | `policy.conflicting_spend_fields` | set both `max_spend_cents` and `spend_from_args` |
//! | `policy.cannot_change_org_template`, `policy.cannot_downgrade_template_version`, `policy.cannot_change_org_head_digest` | change the org's policy binding |
//! | `policy.cannot_raise_budget_cap` | raise `intent.budget.max_spend_usd` |
//! | `policy.cannot_widen_allowed_tools` | allow a tool the org's `allowed_tools` does not |
//! | `policy.cannot_relax_provider_executed_deny` | allow provider-executed tools |
//! | `policy.cannot_relax_default_deny` | set `default_deny: false` under an org that denies |
//! | `policy.unknown_org_tool_override` | override a tool the org does not have |
//! | `policy.cannot_replace_org_tool` | redefine an org tool under `tools` |
//! | `policy.evidence_preset_not_org_approved` | use an evidence preset outside the org's catalog |
//! | `policy.cannot_raise_approval_threshold` | raise `spend_controls.tools.*.approval_threshold_cents` |
//! | `policy.cannot_raise_rate_limit` | raise `spend_controls.tools.*.limit_per_hour` |
//! | `policy.cannot_enable_org_disabled_tool` | set `allow: true` on a tool the org disables |
//! | `policy.cannot_relax_gates` | raise a graduated gate threshold |
//! | `policy.cannot_change_org_schedule` | change the org's active hours |
//! | `policy.cannot_widen_vendor_allowlist` | allow a vendor the org's allowlist does not |
//! | `policy.cannot_lower_approval_quorum` | lower the approval quorum |
//! | `policy.cannot_change_org_phase` | change the org's payment phase |

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::document::{IntentSection, PolicyDocument, SpendControls, ToolControls};
use crate::tool::{Problem, ToolPolicy};

/// The effective policy and how it came about.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The merged policy, as a flat version-1 document.
    pub effective: PolicyDocument,
    /// What was applied and what was refused.
    pub report: MergeReport,
}

/// What a merge applied and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MergeReport {
    /// The base's policy id (from the overlay's `extends`, else the base's name).
    pub org_policy_id: String,
    /// The org (from the overlay's `extends`).
    pub org_id: String,
    /// Paths of overlay settings that changed the result.
    pub overrides_applied: Vec<String>,
    /// Overlay settings refused because they would widen the base.
    pub denied_widenings: Vec<Problem>,
}

struct Merger<'a> {
    catalog: BTreeSet<&'a str>,
    report: MergeReport,
}

impl Merger<'_> {
    fn deny(&mut self, path: String, code: &'static str, message: String) {
        self.report.denied_widenings.push(Problem {
            path,
            code,
            message,
        });
    }

    fn applied(&mut self, path: String) {
        self.report.overrides_applied.push(path);
    }
}

/// Merges `overlay` onto `base`. Deterministic: the same inputs give the same output.
pub fn merge(base: &PolicyDocument, overlay: &PolicyDocument) -> Merged {
    let mut m = Merger {
        catalog: base
            .tools
            .values()
            .filter_map(|t| t.evidence_preset.as_deref())
            .collect(),
        report: MergeReport {
            org_policy_id: overlay
                .extends
                .as_ref()
                .map_or_else(|| base.name.clone(), |e| e.org_policy_id.clone()),
            org_id: overlay
                .extends
                .as_ref()
                .map(|e| e.org_id.clone())
                .unwrap_or_default(),
            ..MergeReport::default()
        },
    };
    let mut eff = PolicyDocument {
        schema: None,
        version: 1,
        name: overlay.name.clone(),
        default_deny: base.default_deny,
        tools: base.tools.clone(),
        intent: base.intent.clone(),
        adapter: base.adapter.clone(),
        extends: None,
        overrides: None,
        spend_controls: base.spend_controls.clone(),
    };
    let overrides = overlay.overrides.clone().unwrap_or_default();

    // default_deny: true wins.
    let base_deny = base.default_deny.unwrap_or(false);
    for (path, value) in [
        ("default_deny", overlay.default_deny),
        ("overrides.default_deny", overrides.default_deny),
    ] {
        if value == Some(true) && !eff.default_deny.unwrap_or(false) {
            eff.default_deny = Some(true);
            m.applied(path.to_owned());
        } else if value == Some(false) && base_deny {
            m.deny(
                path.to_owned(),
                "policy.cannot_relax_default_deny",
                "the org base denies unlisted tools (default_deny: true)".to_owned(),
            );
        }
    }
    if base_deny {
        eff.default_deny = Some(true);
    }

    // Tenant tools: a union; an org tool cannot be replaced.
    for (name, tool) in &overlay.tools {
        let path = format!("tools.{name}");
        if base.tools.contains_key(name) {
            m.deny(
                path,
                "policy.cannot_replace_org_tool",
                format!("`{name}` is an org tool; narrow it under overrides.tools.{name} instead"),
            );
            continue;
        }
        if check_new_tool(&mut m, &path, tool) {
            eff.tools.insert(name.clone(), tool.clone());
            m.applied(path);
        }
    }

    for (name, change) in overrides.tools.iter().flatten() {
        let path = format!("overrides.tools.{name}");
        let Some(org) = base.tools.get(name) else {
            m.deny(
                path,
                "policy.unknown_org_tool_override",
                format!("the org base has no tool `{name}` to override"),
            );
            continue;
        };
        let mut tool = org.clone();
        let before = m.report.denied_widenings.len();
        if change.side_effecting == Some(false) && org.side_effecting {
            m.deny(
                format!("{path}.side_effecting"),
                "policy.cannot_disable_org_side_effecting_tool",
                format!("`{name}` is side-effecting in the org base and must stay so"),
            );
        } else if change.side_effecting == Some(true) {
            tool.side_effecting = true;
        }
        match (change.max_spend_cents, &change.spend_from_args) {
            (Some(_), Some(_)) => m.deny(
                format!("{path}.spend_from_args"),
                "policy.conflicting_spend_fields",
                "set either max_spend_cents or spend_from_args, not both".to_owned(),
            ),
            (Some(cap), None) => match (org.max_spend_cents, &org.spend_from_args) {
                (_, Some(_)) => m.deny(
                    format!("{path}.max_spend_cents"),
                    "policy.cannot_override_org_spend_mode",
                    format!("`{name}` takes its amount from spend_from_args in the org base"),
                ),
                (Some(org_cap), None) if cap > org_cap => m.deny(
                    format!("{path}.max_spend_cents"),
                    "policy.cannot_raise_spend_cap",
                    format!("{cap} is above the org cap of {org_cap} cents"),
                ),
                _ => tool.max_spend_cents = Some(cap),
            },
            (None, Some(args_path)) => {
                if org.max_spend_cents.is_some() || org.spend_from_args.as_ref() != Some(args_path)
                {
                    m.deny(
                        format!("{path}.spend_from_args"),
                        "policy.cannot_override_org_spend_mode",
                        format!("`{name}`'s spend mode is set by the org base"),
                    );
                }
            }
            (None, None) => {}
        }
        if let Some(preset) = &change.evidence_preset {
            if preset.is_empty() {
                m.deny(
                    format!("{path}.evidence_preset"),
                    "policy.missing_evidence_preset",
                    "an evidence preset cannot be removed".to_owned(),
                );
            } else if !m.catalog.contains(preset.as_str()) {
                m.deny(
                    format!("{path}.evidence_preset"),
                    "policy.evidence_preset_not_org_approved",
                    format!("`{preset}` is not among the org's presets: {:?}", m.catalog),
                );
            } else {
                tool.evidence_preset = Some(preset.clone());
            }
        }
        if tool.side_effecting && tool.evidence_preset.is_none() {
            m.deny(
                format!("{path}.evidence_preset"),
                "policy.missing_evidence_preset",
                format!("`{name}` becomes side-effecting and needs an evidence_preset"),
            );
        }
        if let Some(operation) = &change.operation
            && org.operation_for(name) != operation
        {
            m.deny(
                format!("{path}.operation"),
                "policy.cannot_replace_org_tool",
                format!(
                    "`{name}` verifies as `{}` in the org base",
                    org.operation_for(name)
                ),
            );
        }
        if let Some(pack) = &change.vendor_pack {
            tool.vendor_pack = Some(pack.clone());
        }
        if m.report.denied_widenings.len() == before && &tool != org {
            eff.tools.insert(name.clone(), tool);
            m.applied(path);
        }
    }

    for (path, intent) in [
        ("intent", &overlay.intent),
        ("overrides.intent", &overrides.intent),
    ] {
        if let Some(intent) = intent {
            merge_intent(&mut m, path, &mut eff, intent);
        }
    }

    for (path, adapter) in [
        ("adapter", &overlay.adapter),
        ("overrides.adapter", &overrides.adapter),
    ] {
        let Some(deny) = adapter
            .as_ref()
            .and_then(|a| a.deny_provider_executed_tools)
        else {
            continue;
        };
        let current = eff.adapter.get_or_insert_with(Default::default);
        let org = current.deny_provider_executed_tools.unwrap_or(false);
        if org && !deny {
            m.deny(
                format!("{path}.deny_provider_executed_tools"),
                "policy.cannot_relax_provider_executed_deny",
                "the org base denies provider-executed tools".to_owned(),
            );
        } else if deny && !org {
            current.deny_provider_executed_tools = Some(true);
            m.applied(format!("{path}.deny_provider_executed_tools"));
        }
    }

    if let Some(controls) = &overlay.spend_controls {
        let before = m.report.denied_widenings.len();
        if let Some(org) = &base.spend_controls {
            refuse_looser_controls(&mut m, org, controls);
        }
        // Refused settings are reported, not applied (the org's stand); the rest
        // combine so that both blocks apply.
        eff.spend_controls = Some(tighten(eff.spend_controls.take(), controls));
        if m.report.denied_widenings.len() == before {
            m.applied("spend_controls".to_owned());
        }
    }

    Merged {
        effective: eff,
        report: m.report,
    }
}

/// Checks a tool the tenant adds; true when it may be added.
fn check_new_tool(m: &mut Merger<'_>, path: &str, tool: &ToolPolicy) -> bool {
    let before = m.report.denied_widenings.len();
    if tool.max_spend_cents.is_some() && tool.spend_from_args.is_some() {
        m.deny(
            format!("{path}.spend_from_args"),
            "policy.conflicting_spend_fields",
            "set either max_spend_cents or spend_from_args, not both".to_owned(),
        );
    }
    match &tool.evidence_preset {
        None if tool.side_effecting => m.deny(
            format!("{path}.evidence_preset"),
            "policy.missing_evidence_preset",
            "a side-effecting tool needs an evidence_preset".to_owned(),
        ),
        Some(preset) if !m.catalog.is_empty() && !m.catalog.contains(preset.as_str()) => m.deny(
            format!("{path}.evidence_preset"),
            "policy.evidence_preset_not_org_approved",
            format!("`{preset}` is not among the org's presets: {:?}", m.catalog),
        ),
        _ => {}
    }
    m.report.denied_widenings.len() == before
}

fn merge_intent(m: &mut Merger<'_>, path: &str, eff: &mut PolicyDocument, tenant: &IntentSection) {
    let current = eff.intent.get_or_insert_with(IntentSection::default);
    if let Some(binding) = &tenant.policy_binding {
        let p = format!("{path}.policy_binding");
        match &mut current.policy_binding {
            None => {
                current.policy_binding = Some(binding.clone());
                m.applied(p);
            }
            Some(org) => {
                if binding.template_id != org.template_id {
                    m.deny(
                        format!("{p}.template_id"),
                        "policy.cannot_change_org_template",
                        format!("the org binds template `{}`", org.template_id),
                    );
                }
                match (binding.version_seq, org.version_seq) {
                    (Some(v), Some(o)) if v < o => m.deny(
                        format!("{p}.version_seq"),
                        "policy.cannot_downgrade_template_version",
                        format!("version {v} is below the org's {o}"),
                    ),
                    (Some(v), o) if Some(v) != o && binding.template_id == org.template_id => {
                        org.version_seq = Some(v);
                        m.applied(format!("{p}.version_seq"));
                    }
                    _ => {}
                }
                if let (Some(d), Some(o)) = (&binding.head_digest, &org.head_digest)
                    && d != o
                {
                    m.deny(
                        format!("{p}.head_digest"),
                        "policy.cannot_change_org_head_digest",
                        format!("the org pins head digest {o}"),
                    );
                }
            }
        }
    }
    if let Some(budget) = &tenant.budget {
        let p = format!("{path}.budget");
        let current_budget = current.budget.get_or_insert(crate::document::Budget {
            currency: None,
            max_spend_usd: None,
        });
        if let Some(cap) = budget.max_spend_usd {
            match current_budget.max_spend_usd {
                Some(org) if cap > org => m.deny(
                    format!("{p}.max_spend_usd"),
                    "policy.cannot_raise_budget_cap",
                    format!("{cap} USD is above the org budget of {org} USD"),
                ),
                _ => {
                    current_budget.max_spend_usd = Some(cap);
                    m.applied(format!("{p}.max_spend_usd"));
                }
            }
        }
        if let Some(currency) = &budget.currency {
            match &current_budget.currency {
                Some(org) if org != currency => m.deny(
                    format!("{p}.currency"),
                    "policy.cannot_raise_budget_cap",
                    format!("the org budget is in `{org}`"),
                ),
                _ => current_budget.currency = Some(currency.clone()),
            }
        }
    }
    if let Some(allowed) = &tenant.allowed_tools {
        let p = format!("{path}.allowed_tools");
        match &current.allowed_tools {
            Some(org) => {
                let org_set: BTreeSet<&String> = org.iter().collect();
                for extra in allowed.iter().filter(|t| !org_set.contains(t)) {
                    m.deny(
                        p.clone(),
                        "policy.cannot_widen_allowed_tools",
                        format!("`{extra}` is not in the org's allowed_tools"),
                    );
                }
                let narrowed: Vec<String> = org
                    .iter()
                    .filter(|t| allowed.contains(t))
                    .cloned()
                    .collect();
                if &narrowed != org {
                    current.allowed_tools = Some(narrowed);
                    m.applied(p);
                }
            }
            None => {
                current.allowed_tools = Some(allowed.clone());
                m.applied(p);
            }
        }
    }
}

fn min_opt<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Reports every setting of the tenant's `spend_controls` that is looser than the
/// org's: a widening is refused as it is under `overrides`, never silently cut back.
fn refuse_looser_controls(m: &mut Merger<'_>, org: &SpendControls, tenant: &SpendControls) {
    for (name, t) in &tenant.tools {
        let Some(o) = org.tools.get(name) else {
            continue;
        };
        let path = format!("spend_controls.tools.{name}");
        if let (Some(org_cap), Some(cap)) = (o.max_per_call_cents, t.max_per_call_cents)
            && cap > org_cap
        {
            m.deny(
                format!("{path}.max_per_call_cents"),
                "policy.cannot_raise_spend_cap",
                format!("{cap} is above the org's per-call cap of {org_cap} cents"),
            );
        }
        if let (Some(org_at), Some(at)) = (o.approval_threshold_cents, t.approval_threshold_cents)
            && at > org_at
        {
            m.deny(
                format!("{path}.approval_threshold_cents"),
                "policy.cannot_raise_approval_threshold",
                format!("{at} is above the org's approval threshold of {org_at} cents"),
            );
        }
        if let (Some(org_limit), Some(limit)) = (o.limit_per_hour, t.limit_per_hour)
            && limit > org_limit
        {
            m.deny(
                format!("{path}.limit_per_hour"),
                "policy.cannot_raise_rate_limit",
                format!("{limit} calls an hour is above the org's {org_limit}"),
            );
        }
        if o.allow == Some(false) && t.allow == Some(true) {
            m.deny(
                format!("{path}.allow"),
                "policy.cannot_enable_org_disabled_tool",
                format!("the org base disables `{name}`"),
            );
        }
    }
    for (i, cap) in tenant.caps.iter().enumerate() {
        let same = org.caps.iter().find(|o| {
            o.scope == cap.scope
                && o.key == cap.key
                && o.window == cap.window
                && o.timezone == cap.timezone
        });
        if let Some(o) = same
            && cap.limit_cents > o.limit_cents
        {
            m.deny(
                format!("spend_controls.caps[{i}].limit_cents"),
                "policy.cannot_raise_spend_cap",
                format!(
                    "{} is above the org's cap of {} cents for the same scope and window",
                    cap.limit_cents, o.limit_cents
                ),
            );
        }
    }
    if let (Some(o), Some(t)) = (org.gates, tenant.gates) {
        for (name, org_value, value) in [
            ("warning", o.warning, t.warning),
            ("restrict", o.restrict, t.restrict),
            ("halt", o.halt, t.halt),
        ] {
            if value > org_value {
                m.deny(
                    format!("spend_controls.gates.{name}"),
                    "policy.cannot_relax_gates",
                    format!("{value} is above the org's {name} gate of {org_value}"),
                );
            }
        }
    }
    if let (Some(o), Some(t)) = (&org.schedule, &tenant.schedule)
        && o != t
    {
        m.deny(
            "spend_controls.schedule".to_owned(),
            "policy.cannot_change_org_schedule",
            "the org base sets the active hours; an overlay cannot change them".to_owned(),
        );
    }
    if let (Some(o), Some(t)) = (&org.vendors, &tenant.vendors) {
        for (i, vendor) in t.allow.iter().enumerate() {
            if !o.allow.contains(vendor) {
                m.deny(
                    format!("spend_controls.vendors.allow[{i}]"),
                    "policy.cannot_widen_vendor_allowlist",
                    format!("`{vendor}` is not on the org's vendor allowlist"),
                );
            }
        }
    }
    if let (Some(o), Some(t)) = (org.approval, tenant.approval)
        && t.quorum < o.quorum
    {
        m.deny(
            "spend_controls.approval.quorum".to_owned(),
            "policy.cannot_lower_approval_quorum",
            format!("{} is below the org's quorum of {}", t.quorum, o.quorum),
        );
    }
    if let (Some(o), Some(t)) = (&org.phases, &tenant.phases)
        && o != t
    {
        m.deny(
            "spend_controls.phases".to_owned(),
            "policy.cannot_change_org_phase",
            "the org base sets the payment phase; an overlay cannot change it".to_owned(),
        );
    }
}

/// Combines two `spend_controls` blocks so that both apply: the result is never
/// looser than either.
fn tighten(base: Option<SpendControls>, tenant: &SpendControls) -> SpendControls {
    let Some(mut out) = base else {
        return tenant.clone();
    };
    let mut tools: BTreeMap<String, ToolControls> = out.tools.clone();
    for (name, t) in &tenant.tools {
        let entry = tools.entry(name.clone()).or_default();
        entry.max_per_call_cents = min_opt(entry.max_per_call_cents, t.max_per_call_cents);
        entry.approval_threshold_cents =
            min_opt(entry.approval_threshold_cents, t.approval_threshold_cents);
        entry.limit_per_hour = min_opt(entry.limit_per_hour, t.limit_per_hour);
        entry.allow = match (entry.allow, t.allow) {
            (Some(a), Some(b)) => Some(a && b),
            (a, b) => a.or(b),
        };
    }
    out.tools = tools;
    out.caps.extend(tenant.caps.iter().cloned());
    out.gates = match (out.gates, tenant.gates) {
        (Some(a), Some(b)) => Some(crate::document::Gates {
            warning: a.warning.min(b.warning),
            restrict: a.restrict.min(b.restrict),
            halt: a.halt.min(b.halt),
        }),
        (a, b) => a.or(b),
    };
    if out.schedule.is_none() {
        out.schedule = tenant.schedule.clone();
    }
    out.vendors = match (out.vendors.take(), &tenant.vendors) {
        (Some(mut a), Some(b)) => {
            a.allow.retain(|v| b.allow.contains(v));
            Some(a)
        }
        (a, b) => a.or_else(|| b.clone()),
    };
    out.approval = match (out.approval, tenant.approval) {
        (Some(a), Some(b)) => Some(crate::document::Approval {
            quorum: a.quorum.max(b.quorum),
            timeout_seconds: min_opt(a.timeout_seconds, b.timeout_seconds),
        }),
        (a, b) => a.or(b),
    };
    if out.phases.is_none() {
        out.phases = tenant.phases.clone();
    }
    out.data = match (out.data.take(), &tenant.data) {
        (Some(mut a), Some(b)) => {
            for p in &b.sensitive_patterns {
                if !a.sensitive_patterns.contains(p) {
                    a.sensitive_patterns.push(p.clone());
                }
            }
            Some(a)
        }
        (a, b) => a.or_else(|| b.clone()),
    };
    out
}
