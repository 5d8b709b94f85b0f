//! Check 9: the policy's active hours, in local time of their timezone.

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use paybond_policies::PolicyDocument;
use serde_json::json;

use super::{CallContext, DenyCode, Recorder, Verdict, deny};

/// The call falls within the active hours, if the policy has any.
pub(super) fn check(
    ctx: &CallContext<'_>,
    doc: &PolicyDocument,
    rec: &mut Recorder,
) -> Result<(), Verdict> {
    let Some(hours) = doc
        .spend_controls
        .as_ref()
        .and_then(|c| c.schedule.as_ref())
        .map(|s| &s.active_hours)
    else {
        return Ok(());
    };
    let inputs = || {
        json!({"start": hours.start, "end": hours.end, "timezone": hours.timezone,
               "now_ms": ctx.now})
    };
    if !within_active_hours(ctx.now, &hours.start, &hours.end, &hours.timezone) {
        rec.fail("schedule", inputs);
        return Err(deny(
            DenyCode::OutsideActiveHours,
            format!(
                "calls run between {} and {} ({})",
                hours.start, hours.end, hours.timezone
            ),
        ));
    }
    rec.pass("schedule", inputs);
    Ok(())
}

fn zoned(now_ms: i64, timezone: &str) -> Option<Zoned> {
    let tz = TimeZone::get(timezone).ok()?;
    Some(Timestamp::from_millisecond(now_ms).ok()?.to_zoned(tz))
}

/// Whether `now` falls in `[start, end)` local time in `timezone`.
pub(crate) fn within_active_hours(now_ms: i64, start: &str, end: &str, timezone: &str) -> bool {
    let minutes = |s: &str| {
        let (h, m) = s.split_once(':')?;
        Some(h.parse::<i32>().ok()? * 60 + m.parse::<i32>().ok()?)
    };
    let (Some(z), Some(start), Some(end)) = (zoned(now_ms, timezone), minutes(start), minutes(end))
    else {
        // Unreadable settings (refused by the policy checks): closed.
        return false;
    };
    let now = i32::from(z.hour()) * 60 + i32::from(z.minute());
    start <= now && now < end
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on setup failures

    use super::*;

    #[test]
    fn active_hours_are_local_time() {
        // 14:37Z is 10:37 in New York (EDT) and 23:37 in Tokyo.
        let now = Timestamp::from_second(1_773_585_432)
            .unwrap()
            .as_millisecond();
        assert!(within_active_hours(
            now,
            "09:00",
            "18:00",
            "America/New_York"
        ));
        assert!(!within_active_hours(now, "09:00", "18:00", "Asia/Tokyo"));
        assert!(!within_active_hours(now, "09:00", "18:00", "Nowhere/Else"));
        assert!(!within_active_hours(now, "9", "18:00", "UTC"));
    }
}
