//! Audit exports: their jobs, bundles and signing keys, and what a bundle
//! collects of a tenant's records in a time window.

use crate::store::{Row, StoreError, Tx, args};

use super::approvals::{APPROVAL_COLUMNS, ApprovalRow, approval_row};
use super::reads::{
    DECISION_COLUMNS, DecisionRow, EVIDENCE_COLUMNS, EvidenceRow, INTENT_COLUMNS, IntentSummaryRow,
    decision_row, evidence_row, intent_summary,
};

const JOB_COLUMNS: &str = "id, tenant_id, status, disclosure_tier, filter, created_ms, expires_ms,
    heartbeat_ms, stage, percent, error, manifest_sha256, bundle_sha256, bundle_size_bytes";

/// An audit export job.
pub(crate) struct JobRow {
    pub(crate) id: String,
    pub(crate) tenant: String,
    pub(crate) status: String,
    pub(crate) tier: String,
    /// Its filter, as JSON.
    pub(crate) filter: String,
    pub(crate) created_ms: i64,
    pub(crate) expires_ms: i64,
    pub(crate) heartbeat_ms: i64,
    pub(crate) stage: String,
    pub(crate) percent: u32,
    pub(crate) error: Option<String>,
    pub(crate) manifest_sha256: Option<String>,
    pub(crate) bundle_sha256: Option<String>,
    pub(crate) bundle_size_bytes: Option<u64>,
}

fn job_row(r: &Row) -> Result<JobRow, StoreError> {
    Ok(JobRow {
        id: r.get(0)?,
        tenant: r.get(1)?,
        status: r.get(2)?,
        tier: r.get(3)?,
        filter: r.get(4)?,
        created_ms: r.get(5)?,
        expires_ms: r.get(6)?,
        heartbeat_ms: r.get(7)?,
        stage: r.get(8)?,
        percent: r.get(9)?,
        error: r.get(10)?,
        manifest_sha256: r.get(11)?,
        bundle_sha256: r.get(12)?,
        bundle_size_bytes: r.get(13)?,
    })
}

/// A job to queue.
pub(crate) struct NewJob<'a> {
    pub(crate) id: &'a str,
    pub(crate) tenant: &'a str,
    pub(crate) tier: &'a str,
    /// Its filter, as JSON.
    pub(crate) filter: &'a str,
    pub(crate) created_by: &'a str,
    pub(crate) created_ms: i64,
    pub(crate) expires_ms: i64,
}

/// A built bundle.
pub(crate) struct BuiltBundle<'a> {
    pub(crate) manifest_sha256: &'a str,
    pub(crate) bundle_sha256: &'a str,
    pub(crate) bytes: &'a [u8],
}

/// The condition of a tenant's records made in `[?2, ?3)`, of intent `?4` if
/// given (`intent_column` names it).
fn in_window(intent_column: &str) -> String {
    format!(
        "tenant_id = ?1 AND created_ms >= ?2 AND created_ms < ?3
         AND (CAST(?4 AS TEXT) IS NULL OR {intent_column} = ?4)
         ORDER BY created_ms, id"
    )
}

impl dyn Tx + '_ {
    /// Queues an export job.
    pub(crate) fn queue_export(&self, j: &NewJob<'_>) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO audit_exports (id, tenant_id, status, disclosure_tier, filter,
                created_by, created_ms, expires_ms, heartbeat_ms, stage, percent)
             VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?6, 'queued', 0)",
            args![
                j.id,
                j.tenant,
                j.tier,
                j.filter,
                j.created_by,
                j.created_ms,
                j.expires_ms
            ],
        )
        .map(drop)
    }

    /// The tenant's export job `id`.
    pub(crate) fn export_job(&self, tenant: &str, id: &str) -> Result<Option<JobRow>, StoreError> {
        self.query_opt(
            &format!("SELECT {JOB_COLUMNS} FROM audit_exports WHERE id = ?1 AND tenant_id = ?2"),
            args![id, tenant],
            job_row,
        )
    }

    /// At most `limit` of the tenant's jobs made before `before` (creation
    /// time, id), newest first.
    pub(crate) fn export_page(
        &self,
        tenant: &str,
        before: (i64, &str),
        limit: u32,
    ) -> Result<Vec<JobRow>, StoreError> {
        self.query_map(
            &format!(
                "SELECT {JOB_COLUMNS} FROM audit_exports WHERE tenant_id = ?1
                 AND (created_ms < ?2 OR (created_ms = ?2 AND id < ?3))
                 ORDER BY created_ms DESC, id DESC LIMIT ?4"
            ),
            args![tenant, before.0, before.1, limit],
            job_row,
        )
    }

    /// Ends a job as `status` (with why, if given): its bundle and download
    /// token are dropped.
    pub(crate) fn end_export(
        &self,
        id: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE audit_exports SET status = ?2, error = COALESCE(?3, error), bundle = NULL,
             download_token_hash = NULL, download_token_expires_ms = NULL WHERE id = ?1",
            args![id, status, error],
        )
        .map(drop)
    }

    /// Fails a queued or running job at `now`, saying why.
    pub(crate) fn fail_export(&self, id: &str, why: &str, now: i64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE audit_exports SET status = 'failed', stage = 'failed', error = ?2,
             heartbeat_ms = ?3 WHERE id = ?1 AND status IN ('queued', 'running')",
            args![id, why, now],
        )
        .map(drop)
    }

    /// Moves a queued or running job to `stage`; false if it is neither any more.
    pub(crate) fn advance_export(
        &self,
        id: &str,
        stage: &str,
        percent: u32,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(self.execute(
            "UPDATE audit_exports SET status = 'running', stage = ?2, percent = ?3,
             heartbeat_ms = ?4 WHERE id = ?1 AND status IN ('queued', 'running')",
            args![id, stage, percent, now],
        )? == 1)
    }

    /// Stores a running job's bundle: the job is then ready.
    pub(crate) fn store_bundle(
        &self,
        id: &str,
        bundle: &BuiltBundle<'_>,
        now: i64,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE audit_exports SET status = 'ready', stage = 'done', percent = 100,
             heartbeat_ms = ?2, manifest_sha256 = ?3, bundle_sha256 = ?4,
             bundle_size_bytes = ?5, bundle = ?6
             WHERE id = ?1 AND status = 'running'",
            args![
                id,
                now,
                bundle.manifest_sha256,
                bundle.bundle_sha256,
                bundle.bytes.len() as u64,
                bundle.bytes
            ],
        )
        .map(drop)
    }

    /// A ready job's bundle.
    pub(crate) fn export_bundle(&self, id: &str) -> Result<Vec<u8>, StoreError> {
        self.query_one(
            "SELECT bundle FROM audit_exports WHERE id = ?1",
            args![id],
            |r| r.get(0),
        )
    }

    /// Sets the job's download token (its digest) and when it expires.
    pub(crate) fn set_download_token(
        &self,
        id: &str,
        token_hash: &str,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE audit_exports SET download_token_hash = ?2,
             download_token_expires_ms = ?3 WHERE id = ?1",
            args![id, token_hash, expires_ms],
        )
        .map(drop)
    }

    /// Deletes a job's bundle and download token; the job stays, `deleted`.
    pub(crate) fn delete_export(&self, id: &str) -> Result<(), StoreError> {
        self.end_export(id, "deleted", None)
    }

    /// The tenant of job `id` and when its download token expires, if the token
    /// hashes to `token_hash`.
    pub(crate) fn export_by_download_token(
        &self,
        id: &str,
        token_hash: &str,
    ) -> Result<Option<(String, i64)>, StoreError> {
        self.query_opt(
            "SELECT tenant_id, download_token_expires_ms FROM audit_exports
             WHERE id = ?1 AND download_token_hash = ?2",
            args![id, token_hash],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// The tenant's audit signing key (wrapped), its public key (hex) and when
    /// it was made.
    pub(crate) fn signing_key(
        &self,
        tenant: &str,
    ) -> Result<Option<(Vec<u8>, String, i64)>, StoreError> {
        self.query_opt(
            "SELECT secret_key, public_key_hex, created_ms FROM signing_keys WHERE tenant_id = ?1",
            args![tenant],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }

    /// Stores the tenant's audit signing key (wrapped).
    pub(crate) fn add_signing_key(
        &self,
        tenant: &str,
        wrapped: &[u8],
        public_hex: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO signing_keys (tenant_id, secret_key, public_key_hex, created_ms)
             VALUES (?1, ?2, ?3, ?4)",
            args![tenant, wrapped, public_hex, now],
        )
        .map(drop)
    }

    /// The tenant's decisions made in `window`, of `intent` if given, in order.
    pub(crate) fn decisions_in(
        &self,
        tenant: &str,
        window: (i64, i64),
        intent: Option<&str>,
    ) -> Result<Vec<DecisionRow>, StoreError> {
        self.query_map(
            &format!(
                "SELECT {DECISION_COLUMNS} FROM decisions WHERE {}",
                in_window("intent_id")
            ),
            args![tenant, window.0, window.1, intent],
            decision_row,
        )
    }

    /// The tenant's approval requests opened in `window`, of `intent` if given,
    /// in order.
    pub(crate) fn approvals_in(
        &self,
        tenant: &str,
        window: (i64, i64),
        intent: Option<&str>,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        self.query_map(
            &format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE {}",
                in_window("intent_id")
            ),
            args![tenant, window.0, window.1, intent],
            approval_row,
        )
    }

    /// The tenant's intents made in `window`, `intent` alone if given, in order.
    pub(crate) fn intents_in(
        &self,
        tenant: &str,
        window: (i64, i64),
        intent: Option<&str>,
    ) -> Result<Vec<IntentSummaryRow>, StoreError> {
        self.query_map(
            &format!(
                "SELECT {INTENT_COLUMNS} FROM intents WHERE {}",
                in_window("id")
            ),
            args![tenant, window.0, window.1, intent],
            intent_summary,
        )
    }

    /// The tenant's evidence submitted in `window`, of `intent` if given, in order.
    pub(crate) fn evidence_in(
        &self,
        tenant: &str,
        window: (i64, i64),
        intent: Option<&str>,
    ) -> Result<Vec<EvidenceRow>, StoreError> {
        self.query_map(
            &format!(
                "SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE {}",
                in_window("intent_id")
            ),
            args![tenant, window.0, window.1, intent],
            evidence_row,
        )
    }
}
