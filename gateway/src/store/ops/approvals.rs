//! Approval requests after they are opened: read, listed, voted on, decided,
//! expired. (Opening one, and what a held verify reads, are in [`super::spend`].)

use paybond_middleware_core::wire::ApprovalState;

use crate::engine::lifecycle::ApprovalQuery;

use crate::store::{Arg, Row, StoreError, ToArg as _, Tx, args};

/// The condition selecting a tenant's approval requests by an [`ApprovalQuery`]:
/// `?1` the tenant, `?2` the state (`NULL`: any), `?3` now, `?4` the agent, `?5`
/// the tool or operation, `?6` and `?7` the amount range.
const APPROVAL_FILTER: &str = "tenant_id = ?1
    AND (CAST(?2 AS TEXT) IS NULL
         OR (?2 = 'pending' AND state = 'pending' AND expires_ms > ?3)
         OR (?2 = 'expired' AND (state = 'expired' OR (state = 'pending' AND expires_ms <= ?3)))
         OR (?2 IN ('approved', 'denied') AND state = ?2))
    AND (CAST(?4 AS TEXT) IS NULL OR agent = ?4)
    AND (CAST(?5 AS TEXT) IS NULL OR tool = ?5 OR operation = ?5)
    AND amount_cents >= ?6 AND amount_cents <= ?7";

/// The arguments `?1` to `?7` of [`APPROVAL_FILTER`] for `query` at `now` (an
/// unbounded amount range is 0 to `i64::MAX`).
fn filter_args<'a>(tenant: &'a str, query: &'a ApprovalQuery, now: i64) -> Vec<Arg<'a>> {
    let cents = |c: u64| i64::try_from(c).unwrap_or(i64::MAX);
    vec![
        tenant.to_arg(),
        query
            .state
            .map_or(Arg::Null, |s| Arg::Text(state_name(s).into())),
        Arg::Int(now),
        query.agent.to_arg(),
        query.tool.to_arg(),
        Arg::Int(query.min_amount_cents.map_or(0, cents)),
        Arg::Int(query.max_amount_cents.map_or(i64::MAX, cents)),
    ]
}

/// An approval state as stored.
fn state_name(s: ApprovalState) -> &'static str {
    match s {
        ApprovalState::Pending => "pending",
        ApprovalState::Approved => "approved",
        ApprovalState::Denied => "denied",
        ApprovalState::Expired => "expired",
    }
}

/// A stored approval state; anything else reads as pending.
pub(crate) fn approval_state(name: &str) -> ApprovalState {
    match name {
        "approved" => ApprovalState::Approved,
        "denied" => ApprovalState::Denied,
        "expired" => ApprovalState::Expired,
        _ => ApprovalState::Pending,
    }
}

pub(super) const APPROVAL_COLUMNS: &str = "id, decision_id, intent_id, operation, amount_cents,
    reason_codes, state, approvers, quorum, expires_ms, token_expires_ms, tool, vendor, agent,
    created_ms, key_id, approver_ids, token_used_ms, decided_ms";

/// An approval request as stored.
pub(crate) struct ApprovalRow {
    pub(crate) id: String,
    pub(crate) decision: String,
    pub(crate) intent: String,
    pub(crate) operation: String,
    pub(crate) amount: u64,
    /// Its reason codes, a JSON array.
    pub(crate) reasons: String,
    pub(crate) state: String,
    /// Who approved it so far (subjects), a JSON array.
    pub(crate) approvers: String,
    pub(crate) quorum: u32,
    pub(crate) expires: i64,
    pub(crate) token_expires: Option<i64>,
    pub(crate) tool: String,
    pub(crate) vendor: Option<String>,
    pub(crate) agent: Option<String>,
    pub(crate) created: i64,
    /// The key whose verify opened it.
    pub(crate) key_id: Option<String>,
    /// Who approved it so far (key or SCIM ids), a JSON array.
    pub(crate) approver_ids: Option<String>,
    /// When its token was used.
    pub(crate) token_used: Option<i64>,
    /// When it was approved or denied.
    pub(crate) decided: Option<i64>,
}

pub(super) fn approval_row(r: &Row) -> Result<ApprovalRow, StoreError> {
    Ok(ApprovalRow {
        id: r.get(0)?,
        decision: r.get(1)?,
        intent: r.get(2)?,
        operation: r.get(3)?,
        amount: r.get(4)?,
        reasons: r.get(5)?,
        state: r.get(6)?,
        approvers: r.get(7)?,
        quorum: r.get(8)?,
        expires: r.get(9)?,
        token_expires: r.get(10)?,
        tool: r.get(11)?,
        vendor: r.get(12)?,
        agent: r.get(13)?,
        created: r.get(14)?,
        key_id: r.get(15)?,
        approver_ids: r.get(16)?,
        token_used: r.get(17)?,
        decided: r.get(18)?,
    })
}

impl dyn Tx + '_ {
    /// The tenant's approval request `id`.
    pub(crate) fn approval_row(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<ApprovalRow>, StoreError> {
        self.query_opt(
            &format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = ?1 AND tenant_id = ?2"),
            args![id, tenant],
            approval_row,
        )
    }

    /// The ids and creation times of the tenant's approval requests `query`
    /// selects, at most `limit`, strictly after `after` (creation time, id) in
    /// the page's order: oldest first, or newest first.
    pub(crate) fn approval_page(
        &self,
        tenant: &str,
        query: &ApprovalQuery,
        now: i64,
        after: (i64, &str),
        limit: u32,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let order = if query.oldest_first {
            "AND (created_ms > ?8 OR (created_ms = ?8 AND id > ?9))
             ORDER BY created_ms, id LIMIT ?10"
        } else {
            "AND (created_ms < ?8 OR (created_ms = ?8 AND id < ?9))
             ORDER BY created_ms DESC, id DESC LIMIT ?10"
        };
        let sql = format!("SELECT id, created_ms FROM approvals WHERE {APPROVAL_FILTER} {order}");
        let mut args = filter_args(tenant, query, now);
        args.extend([Arg::Int(after.0), after.1.to_arg(), limit.to_arg()]);
        self.query_map(&sql, &args, |r| Ok((r.get(0)?, r.get(1)?)))
    }

    /// How many of the tenant's approval requests `query` selects.
    pub(crate) fn count_approvals(
        &self,
        tenant: &str,
        query: &ApprovalQuery,
        now: i64,
    ) -> Result<u64, StoreError> {
        let sql = format!("SELECT COUNT(*) FROM approvals WHERE {APPROVAL_FILTER}");
        self.query_one(&sql, &filter_args(tenant, query, now), |r| r.get(0))
    }

    /// Records that the approval's token was handed over at `now`; false if it
    /// was fetched or used before.
    pub(crate) fn fetch_approval_token(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        Ok(self.execute(
            "UPDATE approvals SET token_fetched_ms = ?2
             WHERE id = ?1 AND token_fetched_ms IS NULL AND token_used_ms IS NULL",
            args![id, now],
        )? == 1)
    }

    /// Records one more vote: who voted so far, by subject and by id.
    pub(crate) fn vote_approval(
        &self,
        id: &str,
        approvers: &str,
        approver_ids: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE approvals SET approvers = ?2, approver_ids = ?3 WHERE id = ?1",
            args![id, approvers, approver_ids],
        )
        .map(drop)
    }

    /// Approves the request at `now` (its votes recorded by `vote_approval`):
    /// its token's digest and expiry.
    pub(crate) fn approve_approval(
        &self,
        id: &str,
        token_hash: &str,
        token_expires: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE approvals SET state = 'approved', token = NULL, token_hash = ?2,
             token_expires_ms = ?3, decided_ms = ?4 WHERE id = ?1",
            args![id, token_hash, token_expires, now],
        )
        .map(drop)
    }

    /// Denies the request at `now`.
    pub(crate) fn deny_approval(&self, id: &str, now: i64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE approvals SET state = 'denied', decided_ms = ?2 WHERE id = ?1",
            args![id, now],
        )
        .map(drop)
    }

    /// Every tenant's pending requests past their expiry at `now` (tenant, id),
    /// by tenant.
    pub(crate) fn approvals_due(&self, now: i64) -> Result<Vec<(String, String)>, StoreError> {
        self.query_map(
            "SELECT tenant_id, id FROM approvals WHERE state = 'pending' AND expires_ms <= ?1
             ORDER BY tenant_id",
            args![now],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Expires a pending request; false if it was decided meanwhile.
    pub(crate) fn expire_approval(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.execute(
            "UPDATE approvals SET state = 'expired' WHERE id = ?1 AND state = 'pending'",
            args![id],
        )? == 1)
    }

    /// Forgets every approval token past its expiry at `now`.
    pub(crate) fn drop_expired_approval_tokens(&self, now: i64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE approvals SET token = NULL WHERE token IS NOT NULL AND token_expires_ms <= ?1",
            args![now],
        )
        .map(drop)
    }
}
