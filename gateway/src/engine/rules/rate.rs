//! Check 8: each bound tool's hourly call limit, over the tool's reservations of
//! the last hour the context counts, with the time until the window frees.

use serde_json::json;

#[cfg(test)]
use super::CallWindow;
use super::tool::ToolLimits;
use super::{CallContext, DenyCode, HOUR_MS, Recorder, Verdict};

/// Every bound tool is under its hourly limit.
pub(super) fn check(
    ctx: &CallContext<'_>,
    limits: &ToolLimits,
    rec: &mut Recorder,
) -> Result<(), Verdict> {
    for (i, (tool, limit)) in limits.per_hour.iter().enumerate() {
        let window = ctx.rate_windows.get(i).cloned().unwrap_or_default();
        let inputs =
            || json!({"tool": tool, "limit_per_hour": limit, "calls_in_last_hour": window.calls});
        if window.calls >= usize::try_from(*limit).unwrap_or(usize::MAX) {
            rec.fail("rate_limit", inputs);
            let oldest = window.oldest.unwrap_or(ctx.now);
            let wait_ms = (oldest + HOUR_MS - ctx.now).max(1000);
            return Err(Verdict::Deny {
                code: DenyCode::RateLimited,
                message: format!("`{tool}` is limited to {limit} calls per hour"),
                retry_after: Some(u64::try_from((wait_ms + 999) / 1000).unwrap_or(1)),
            });
        }
        rec.pass("rate_limit", inputs);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rules::props::{BOOK, Sample, sample_call};

    #[test]
    fn the_limit_counts_the_last_hour_and_says_when_it_frees() {
        let call = sample_call(BOOK, 1);
        let limits = ToolLimits {
            per_hour: vec![(BOOK.to_owned(), 2)],
            ..ToolLimits::default()
        };
        let mut s = Sample::new(&call);
        let now = s.now;
        s.rate_windows = vec![CallWindow::of([now - 1_800_000, now - 10], now, 2)];
        let ctx = s.context(None);
        match check(&ctx, &limits, &mut Recorder::on()) {
            Err(Verdict::Deny {
                code: DenyCode::RateLimited,
                retry_after,
                ..
            }) => assert_eq!(retry_after, Some(1_800)),
            other => panic!("{other:?}"),
        }
        // One of them is over an hour old: room for one more.
        let mut s = Sample::new(&call);
        s.rate_windows = vec![CallWindow::of([now - HOUR_MS, now - 10], now, 2)];
        assert!(check(&s.context(None), &limits, &mut Recorder::on()).is_ok());
    }
}
