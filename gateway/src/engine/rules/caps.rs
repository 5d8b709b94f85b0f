//! Check 7: rolling caps per scope and calendar window, open reservations
//! counted, over the bucket spends the context carries.

use paybond_policies::{CapScope, CapWindow, PolicyDocument, RollingCap};
use serde_json::json;

use super::tool::ToolBinding;
use super::{Call, CallContext, DenyCode, Recorder, Verdict, deny, money};
use crate::engine::counters::Bucket;

/// The buckets of `cap` a call is counted in.
///
/// Which buckets a call is counted in follows from what the gateway knows, never
/// from what the caller chooses to leave out: an agent cap always counts the API
/// key's subject (naming an `agent_subject` only adds the sub-agent's own bucket),
/// a tool cap counts the tools the operation is bound to, and a vendor cap counts
/// the named vendor (a request without one is refused earlier, `vendor_required`).
pub(crate) fn buckets<'a>(
    call: &'a Call<'a>,
    binding: &'a ToolBinding,
    cap: &RollingCap,
) -> Vec<Bucket<'a>> {
    let key = cap.key.as_deref();
    let applies = |value: &str| key.is_none_or(|k| k == value);
    let mut buckets = Vec::new();
    match cap.scope {
        CapScope::Tenant => buckets.push(Bucket::Tenant),
        CapScope::Agent => {
            if applies(call.agent) {
                buckets.push(Bucket::Agent(call.agent));
            }
            if let Some(sub) = call.agent_subject.filter(|s| applies(s)) {
                buckets.push(Bucket::SubAgent(call.agent, sub));
            }
        }
        CapScope::Vendor => {
            if let Some(v) = call.vendor.filter(|v| applies(v)) {
                buckets.push(Bucket::Vendor(v));
            }
        }
        CapScope::Tool => buckets.extend(
            binding
                .tools
                .iter()
                .filter(|t| applies(t))
                .map(|t| Bucket::Tool(t)),
        ),
    }
    buckets
}

/// Every bucket of every cap has room for the call.
pub(super) fn check(
    ctx: &CallContext<'_>,
    doc: &PolicyDocument,
    binding: &ToolBinding,
    currency: &str,
    rec: &mut Recorder,
) -> Result<(), Verdict> {
    let Some(controls) = doc.spend_controls.as_ref() else {
        return Ok(());
    };
    let call = ctx.call;
    for (i, cap) in controls.caps.iter().enumerate() {
        let timezone = cap.timezone.as_deref().unwrap_or("UTC");
        for (j, bucket) in buckets(call, binding, cap).iter().enumerate() {
            // A cap whose window cannot be placed (a timezone the policy checks
            // refuse), or that the context lacks, cannot be checked: closed.
            let spent = ctx
                .cap_usage
                .get(i)
                .and_then(|c| c.get(j))
                .copied()
                .flatten();
            let inputs = || {
                json!({"scope": cap.scope, "bucket": bucket.key().replace('\u{1f}', "/"),
                       "window": cap.window, "timezone": timezone,
                       "limit_cents": cap.limit_cents, "used_cents": spent,
                       "amount_cents": call.amount})
            };
            let spent = spent.unwrap_or(u64::MAX);
            if spent.saturating_add(call.amount) <= cap.limit_cents {
                rec.pass("rolling_cap", inputs);
                continue;
            }
            rec.fail("rolling_cap", inputs);
            let window = match cap.window {
                CapWindow::Hour => "hourly",
                CapWindow::Day => "daily",
                CapWindow::Month => "monthly",
            };
            let scope = match cap.scope {
                CapScope::Tenant => "tenant",
                CapScope::Agent => "agent",
                CapScope::Vendor => "vendor",
                CapScope::Tool => "tool",
            };
            return Err(deny(
                DenyCode::RollingCapExceeded(cap.window, cap.scope),
                format!(
                    "{} would exceed the {window} {scope} cap of {} ({} left)",
                    money(call.amount, currency),
                    money(cap.limit_cents, currency),
                    money(cap.limit_cents.saturating_sub(spent), currency)
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on setup failures

    use super::*;
    use crate::engine::rules::props::{BOOK, Sample, policy, sample_call};
    use crate::engine::rules::tool::bind_tool;

    #[test]
    fn an_agent_cap_counts_the_key_and_its_named_sub_agent() {
        let doc = policy("  caps:\n    - { scope: agent, window: day, limit_cents: 1000 }\n");
        let mut call = sample_call(BOOK, 100);
        call.agent_subject = Some("helper");
        let binding = bind_tool(&doc, BOOK, None).unwrap();
        let cap = &doc.spend_controls.as_ref().unwrap().caps[0];
        let keys: Vec<String> = buckets(&call, &binding, cap)
            .iter()
            .map(Bucket::key)
            .collect();
        assert_eq!(keys, ["agent:agent:a", "subagent:agent:a\u{1f}helper"]);
    }

    #[test]
    fn a_call_over_any_bucket_of_a_cap_is_denied_with_the_caps_code() {
        let doc = policy(
            "  caps:\n    - { scope: tenant, window: day, limit_cents: 1000 }\n    - { scope: tool, window: month, limit_cents: 5000 }\n",
        );
        let mut call = sample_call(BOOK, 300);
        call.binding = bind_tool(&doc, BOOK, None);
        let binding = call.binding.clone().unwrap();
        let run = |usage: Vec<Vec<Option<u64>>>| {
            let mut s = Sample::new(&call);
            s.cap_usage = usage;
            let ctx = s.context(None);
            match check(&ctx, &doc, &binding, "usd", &mut Recorder::on()) {
                Ok(()) => None,
                Err(Verdict::Deny { code, message, .. }) => Some((code.as_str(), message)),
                Err(v) => panic!("{v:?}"),
            }
        };
        assert_eq!(run(vec![vec![Some(700)], vec![Some(4_700)]]), None);
        let (code, message) = run(vec![vec![Some(701)], vec![Some(0)]]).unwrap();
        assert_eq!(code, "daily_tenant_cap_exceeded");
        assert!(
            message.contains("daily tenant cap of 10.00 USD"),
            "{message}"
        );
        let (code, _) = run(vec![vec![Some(0)], vec![Some(4_701)]]).unwrap();
        assert_eq!(code, "monthly_tool_cap_exceeded");
        // A window that cannot be placed, or usage the context lacks: closed.
        assert!(run(vec![vec![None], vec![Some(0)]]).is_some());
        assert!(run(vec![]).is_some());
    }
}
