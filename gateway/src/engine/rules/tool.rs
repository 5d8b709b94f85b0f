//! Checks 4 and 5: the policy admits the tool the operation belongs to (in the
//! policy, allowed, enabled), the run's payment phase, the vendor, and the
//! per-call cap.

use paybond_middleware_core::wire::Phase;
use paybond_policies::{CapScope, PolicyDocument, ToolPolicy};
use serde_json::json;

use super::{CallContext, DenyCode, Recorder, Verdict, deny, money};

/// The policy tools a verify is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ToolBinding {
    /// One tool, or every side-effecting tool that shares the operation when the call
    /// picks none of them (the stricter controls of all apply). When the policy has no
    /// tool for the operation: the operation itself.
    pub(crate) tools: Vec<String>,
    /// Whether `tools` are tools of the policy.
    pub(crate) in_policy: bool,
}

/// Decides which policy tool a verify is about, from its operation: the tools whose
/// `operation` (or name) is the operation. A `tool_name` the caller sends may only
/// confirm one of them; naming a tool of another operation, a read-only tool or a tool
/// the policy does not have for this operation is a deny `tool_operation_mismatch`.
pub(crate) fn bind_tool(
    doc: &PolicyDocument,
    operation: &str,
    tool_name: Option<&str>,
) -> Result<ToolBinding, Verdict> {
    let candidates: Vec<(&String, &ToolPolicy)> = doc
        .tools
        .iter()
        .filter(|(name, t)| t.operation_for(name) == operation)
        .collect();
    let list = |tools: &[(&String, &ToolPolicy)]| {
        tools
            .iter()
            .map(|(n, _)| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mismatch = |message: String| deny(DenyCode::ToolOperationMismatch, message);
    if let Some(name) = tool_name {
        return match doc.tools.get(name) {
            Some(t) if t.operation_for(name) != operation => Err(mismatch(format!(
                "tool_name `{name}` is the tool of operation `{}`, not `{operation}`",
                t.operation_for(name)
            ))),
            Some(t) if !t.side_effecting => Err(mismatch(format!(
                "tool_name `{name}` is a read-only tool; only side-effecting tools are verified"
            ))),
            Some(_) => Ok(ToolBinding {
                tools: vec![name.to_owned()],
                in_policy: true,
            }),
            None if !candidates.is_empty() => Err(mismatch(format!(
                "tool_name `{name}` is not a tool of the policy; `{operation}` is the operation of {}",
                list(&candidates)
            ))),
            None if name != operation => Err(mismatch(format!(
                "tool_name `{name}` is not a tool of the policy and differs from the operation `{operation}`"
            ))),
            None => Ok(ToolBinding {
                tools: vec![operation.to_owned()],
                in_policy: false,
            }),
        };
    }
    let side_effecting: Vec<String> = candidates
        .iter()
        .filter(|(_, t)| t.side_effecting)
        .map(|(n, _)| (*n).clone())
        .collect();
    if side_effecting.is_empty() && !candidates.is_empty() {
        return Err(mismatch(format!(
            "`{operation}` is the operation of read-only {}; only side-effecting tools are verified",
            list(&candidates)
        )));
    }
    Ok(if side_effecting.is_empty() {
        ToolBinding {
            tools: vec![operation.to_owned()],
            in_policy: false,
        }
    } else {
        ToolBinding {
            tools: side_effecting,
            in_policy: true,
        }
    })
}

/// The per-tool controls that apply to a binding: for several tools, the stricter of each.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ToolLimits {
    /// A bound tool with `allow: false`.
    pub(crate) disabled: Option<String>,
    /// The lowest per-call cap.
    pub(crate) cap: Option<u64>,
    /// The lowest approval threshold.
    pub(crate) threshold: Option<u64>,
    /// Each bound tool's hourly call limit.
    pub(crate) per_hour: Vec<(String, u32)>,
}

/// The controls of `tools` under `doc`.
pub(crate) fn tool_limits(doc: &PolicyDocument, tools: &[String]) -> ToolLimits {
    fn lower(a: Option<u64>, b: Option<u64>) -> Option<u64> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    let mut limits = ToolLimits::default();
    for name in tools {
        let controls = doc.spend_controls.as_ref().and_then(|c| c.tools.get(name));
        if controls.and_then(|c| c.allow) == Some(false) && limits.disabled.is_none() {
            limits.disabled = Some(name.clone());
        }
        let cap = doc
            .tools
            .get(name)
            .and_then(|t| t.max_spend_cents)
            .or_else(|| controls.and_then(|c| c.max_per_call_cents));
        limits.cap = lower(limits.cap, cap);
        limits.threshold = lower(
            limits.threshold,
            controls.and_then(|c| c.approval_threshold_cents),
        );
        if let Some(n) = controls.and_then(|c| c.limit_per_hour) {
            limits.per_hour.push((name.clone(), n));
        }
    }
    limits
}

/// What the later checks need once the tool is admitted.
pub(super) type Admitted<'a> = Option<(&'a PolicyDocument, &'a ToolBinding, ToolLimits)>;

/// The policy admits the call's tool, in the run's phase, from its vendor, within
/// the per-call cap. `Ok(None)` for preflight's budget-only question.
pub(super) fn admit<'a>(
    ctx: &CallContext<'a>,
    currency: &str,
    rec: &mut Recorder,
) -> Result<Admitted<'a>, Verdict> {
    let call = ctx.call;
    let Some(doc) = ctx.policy else {
        rec.fail("tool_in_policy", || json!({"policy": null}));
        return Err(deny(
            DenyCode::ToolNotInPolicy,
            "the tenant has no policy; nothing is allowed",
        ));
    };
    if ctx.ask.budget_only {
        return Ok(None);
    }
    let binding = match &call.binding {
        Ok(b) => b,
        Err(verdict) => {
            rec.fail(
                "tool_in_policy",
                || json!({"operation": call.operation, "tool_name": ctx.ask.tool_name}),
            );
            return Err(verdict.clone());
        }
    };
    let limits = tool_limits(doc, &binding.tools);
    let tool_inputs = || {
        json!({"operation": call.operation, "tools": binding.tools,
               "default_deny": doc.default_deny})
    };
    if !binding.in_policy && doc.default_deny == Some(true) {
        rec.fail("tool_in_policy", tool_inputs);
        return Err(deny(
            DenyCode::ToolNotInPolicy,
            format!("no tool of the policy has operation `{}`", call.operation),
        ));
    }
    if let Some(allowed) = doc.intent.as_ref().and_then(|i| i.allowed_tools.as_ref())
        && let Some(tool) = binding.tools.iter().find(|t| !allowed.contains(t))
    {
        rec.fail(
            "tool_in_policy",
            || json!({"tools": binding.tools, "allowed_tools": allowed}),
        );
        return Err(deny(
            DenyCode::ToolNotInPolicy,
            format!("`{tool}` is not among the policy's allowed_tools"),
        ));
    }
    if let Some(tool) = &limits.disabled {
        rec.fail(
            "tool_in_policy",
            || json!({"tools": binding.tools, "disabled": tool}),
        );
        return Err(deny(
            DenyCode::ToolDisabled,
            format!("`{tool}` is disabled"),
        ));
    }
    rec.pass("tool_in_policy", tool_inputs);
    let controls = doc.spend_controls.as_ref();
    // The payment phase: a side-effecting call only once the run has committed to
    // its plan (a call that names no phase has not).
    if let Some(required) = controls
        .and_then(|c| c.phases.as_ref())
        .and_then(|p| Phase::parse(&p.payment_phase))
    {
        let phase = ctx.ask.phase;
        let inputs = || json!({"payment_phase": required.name(), "phase": phase.map(Phase::name)});
        if phase.is_none_or(|p| p < required) {
            rec.fail("payment_phase", inputs);
            return Err(deny(
                DenyCode::PhaseNotCommitted,
                format!(
                    "the policy allows paid calls from the {required} phase; the run is in {}",
                    phase.map_or("no phase", Phase::name)
                ),
            ));
        }
        rec.pass("payment_phase", inputs);
    }
    let vendors = controls.and_then(|c| c.vendors.as_ref());
    let vendor_caps =
        controls.is_some_and(|c| c.caps.iter().any(|cap| cap.scope == CapScope::Vendor));
    if call.vendor.is_none() && (vendors.is_some() || vendor_caps) {
        rec.fail(
            "vendor",
            || json!({"vendor_id": null, "vendor_caps": vendor_caps}),
        );
        return Err(deny(
            DenyCode::VendorRequired,
            "the policy limits spend by vendor: the request must name its vendor_id",
        ));
    }
    if let Some(vendors) = vendors {
        let inputs = || json!({"vendor_id": call.vendor, "allow": vendors.allow});
        if !call
            .vendor
            .is_some_and(|v| vendors.allow.iter().any(|a| a == v))
        {
            rec.fail("vendor", inputs);
            return Err(deny(
                DenyCode::VendorNotAllowed,
                format!(
                    "vendor `{}` is not on the allowlist",
                    call.vendor.unwrap_or_default()
                ),
            ));
        }
        rec.pass("vendor", inputs);
    }
    if let Some(cap) = limits.cap {
        let inputs = || json!({"amount_cents": call.amount, "max_per_call_cents": cap});
        if call.amount > cap {
            rec.fail("per_call_cap", inputs);
            return Err(deny(
                DenyCode::ToolCapExceeded,
                format!(
                    "{} is above the per-call cap of {}",
                    money(call.amount, currency),
                    money(cap, currency)
                ),
            ));
        }
        rec.pass("per_call_cap", inputs);
    }
    Ok(Some((doc, binding, limits)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on setup failures

    use super::*;
    use crate::engine::rules::props::{BOOK, Sample, policy, sample_call};

    fn code<T>(r: Result<T, Verdict>) -> Option<DenyCode> {
        match r {
            Err(Verdict::Deny { code, .. }) => Some(code),
            _ => None,
        }
    }

    #[test]
    fn a_tool_name_may_only_confirm_the_operations_tool() {
        let doc = policy("");
        assert_eq!(
            bind_tool(&doc, BOOK, None).unwrap(),
            ToolBinding {
                tools: vec![BOOK.to_owned()],
                in_policy: true
            }
        );
        assert_eq!(bind_tool(&doc, BOOK, Some(BOOK)).unwrap().tools, [BOOK]);
        for (operation, name) in [
            (BOOK, "travel.search_hotels"),
            ("travel.search_hotels", "travel.search_hotels"),
            (BOOK, "shop.buy"),
        ] {
            assert_eq!(
                code(bind_tool(&doc, operation, Some(name))),
                Some(DenyCode::ToolOperationMismatch),
                "{operation} {name}"
            );
        }
        let unknown = bind_tool(&doc, "shop.buy", None).unwrap();
        assert!(!unknown.in_policy);
    }

    #[test]
    fn limits_of_several_tools_are_the_strictest_of_each() {
        let doc = policy(
            "  tools:\n    travel.book_hotel: {approval_threshold_cents: 100, limit_per_hour: 3}\n",
        );
        let limits = tool_limits(&doc, &[BOOK.to_owned()]);
        assert_eq!(limits.cap, Some(20_000));
        assert_eq!(limits.threshold, Some(100));
        assert_eq!(limits.per_hour, [(BOOK.to_owned(), 3)]);
        let disabled = policy("  tools:\n    travel.book_hotel: {allow: false}\n");
        assert_eq!(
            tool_limits(&disabled, &[BOOK.to_owned()])
                .disabled
                .as_deref(),
            Some(BOOK)
        );
    }

    #[test]
    fn admission_checks_policy_phase_vendor_and_per_call_cap_in_order() {
        let ok = |controls: &str, amount: u64, vendor: Option<&'static str>| {
            let doc = policy(controls);
            let mut call = sample_call(BOOK, amount);
            call.binding = bind_tool(&doc, BOOK, None);
            call.vendor = vendor;
            let s = Sample::new(&call);
            let mut ctx = s.context(None);
            ctx.policy = Some(&doc);
            code(admit(&ctx, "usd", &mut Recorder::on()))
        };
        assert_eq!(ok("", 20_000, None), None);
        assert_eq!(ok("", 20_001, None), Some(DenyCode::ToolCapExceeded));
        assert_eq!(
            ok("  phases: { payment_phase: COMMIT }\n", 100, None),
            Some(DenyCode::PhaseNotCommitted)
        );
        assert_eq!(
            ok("  vendors: { allow: [vendor_acme] }\n", 100, None),
            Some(DenyCode::VendorRequired)
        );
        assert_eq!(
            ok(
                "  vendors: { allow: [vendor_acme] }\n",
                100,
                Some("vendor_evil")
            ),
            Some(DenyCode::VendorNotAllowed)
        );
        assert_eq!(
            ok(
                "  vendors: { allow: [vendor_acme] }\n",
                100,
                Some("vendor_acme")
            ),
            None
        );
        assert_eq!(
            ok(
                "  tools:\n    travel.book_hotel: {allow: false}\n",
                100,
                None
            ),
            Some(DenyCode::ToolDisabled)
        );
        let call = sample_call(BOOK, 1);
        let s = Sample::new(&call);
        let mut ctx = s.context(None);
        ctx.policy = None;
        assert_eq!(
            code(admit(&ctx, "usd", &mut Recorder::on())),
            Some(DenyCode::ToolNotInPolicy)
        );
    }
}
