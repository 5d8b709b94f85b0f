//! `paybond policy replay`: what a new policy would have decided, verify by verify,
//! over a gateway's recorded decisions (read-only on its store: a SQLite data
//! directory or a fleet's PostgreSQL database).

use std::path::PathBuf;

use clap::Args;
use paybond_gateway::{Engine, PolicyFile, ReplayOptions, ReplayReport};
use paybond_policies::{Resolution, check_policy};

use crate::output::{self, Category, Failure, money};
use crate::{Outcome, usage_error};

#[derive(Debug, Args)]
pub(crate) struct Replay {
    /// The gateway's data directory (`paybond dev loop --data-dir`): its
    /// `paybond.db` is read, never written (a gateway may be running on it).
    #[arg(
        long,
        required_unless_present = "database_url",
        conflicts_with = "database_url"
    )]
    data_dir: Option<PathBuf>,
    /// A fleet's PostgreSQL database instead (`postgres://user@host:port/db`): read
    /// in one read-only snapshot, never written.
    #[arg(long, hide_env_values = true)]
    database_url: Option<String>,
    /// The policy to decide under: a tenant policy (version 1, or a version 2
    /// overlay of an org base the store has).
    #[arg(long)]
    policy_file: PathBuf,
    /// Decide again only the verifies made at or after this time (RFC 3339, e.g.
    /// 2026-11-23T00:00:00Z); earlier ones count against the budgets as recorded.
    #[arg(long)]
    since: Option<String>,
    /// Decide again only the verifies made before this time (RFC 3339); later
    /// ones are left out [default: up to the last one].
    #[arg(long)]
    until: Option<String>,
    /// Only this tenant (its id or its name) [default: every tenant].
    #[arg(long)]
    tenant: Option<String>,
    /// Exit 1 when any decision would change (for CI).
    #[arg(long)]
    fail_on_change: bool,
}

pub(crate) fn replay(a: &Replay) -> Outcome {
    let file = a.policy_file.display().to_string();
    let text = match std::fs::read_to_string(&a.policy_file) {
        Ok(t) => t,
        Err(e) => return crate::unreadable(format!("cannot read --policy-file {file}: {e}")),
    };
    let time = |flag: &str, value: Option<&str>| match value.map(str::parse::<jiff::Timestamp>) {
        None => Ok(None),
        Some(Ok(t)) => Ok(Some(t.as_millisecond())),
        Some(Err(e)) => Err(usage_error(format!(
            "{flag} `{}` is not an RFC 3339 time (e.g. 2026-11-23T00:00:00Z): {e}",
            value.unwrap_or_default()
        ))),
    };
    let since_ms = match time("--since", a.since.as_deref()) {
        Ok(t) => t,
        Err(refused) => return refused,
    };
    let until_ms = match time("--until", a.until.as_deref()) {
        Ok(t) => t,
        Err(refused) => return refused,
    };
    // A file with any problem is refused whole, every problem at its line.
    let checked = check_policy(&text, &file);
    if !checked.is_valid() {
        let resolution = Resolution {
            valid: false,
            errors: checked.errors,
            warnings: checked.warnings,
            effective: None,
            report: None,
        };
        let data = serde_json::to_value(&resolution).unwrap_or_default();
        return crate::policy::refuse(&file, &resolution, data);
    }
    let storage = match (&a.database_url, &a.data_dir) {
        (Some(url), _) => match paybond_gateway::DatabaseUrl::parse(url) {
            Ok(url) => paybond_gateway::Storage::Postgres(url),
            Err(e) => return usage_error(format!("--database-url: {}", e.message)),
        },
        (None, dir) => {
            let dir = dir.clone().unwrap_or_default();
            let database = paybond_gateway::database_path(&dir);
            if !database.is_file() {
                return crate::unreadable(format!(
                    "--data-dir {}: no gateway database ({} does not exist)",
                    dir.display(),
                    database.display()
                ));
            }
            paybond_gateway::Storage::File(database)
        }
    };
    let options = ReplayOptions {
        policy: PolicyFile { text, file },
        since_ms,
        until_ms,
        tenant: a.tenant.clone(),
    };
    let runtime = match crate::run::runtime() {
        Ok(r) => r,
        Err(outcome) => return outcome,
    };
    let report = match runtime.block_on(Engine::replay_store(&storage, &options)) {
        Ok(r) => r,
        Err(e) => {
            let category = match e.code {
                "policy_invalid" | "org_policy_not_found" => Category::Invalid,
                "tenant_not_found" => Category::Usage,
                _ => Category::Environment,
            };
            return output::fail(Failure::new(category, e.code, e.message));
        }
    };
    let changed = !report.changes.is_empty();
    if output::json() {
        let data = match serde_json::to_value(&report) {
            Ok(v) => v,
            Err(e) => return usage_error(format!("cannot print the report: {e}")),
        };
        if changed && a.fail_on_change {
            return output::fail(
                Failure::new(
                    Category::Invalid,
                    "decisions_changed",
                    format!(
                        "{} of {} would change under {}",
                        report.changes.len(),
                        output::counted(report.decisions, "decision", "decisions"),
                        report.policy_file
                    ),
                )
                .data(data),
            );
        }
        output::success_json(data, &[]);
    } else {
        print!("{}", text_report(&report));
    }
    if changed && a.fail_on_change {
        Outcome::Failed
    } else {
        Outcome::Success
    }
}

/// The report as a table: the totals, then every decision that changes.
fn text_report(r: &ReplayReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "replayed {} of {} under {} ({}){}",
        output::counted(r.decisions, "decision", "decisions"),
        output::counted(r.tenants.len() as u64, "tenant", "tenants"),
        r.policy_file,
        r.policy_digest.as_deref().unwrap_or("-"),
        r.since
            .as_deref()
            .map(|s| format!(", from {s}"))
            .unwrap_or_default()
            + &r.until
                .as_deref()
                .map(|u| format!(", until {u}"))
                .unwrap_or_default()
    );
    let _ = writeln!(out, "\n{:<12} {:>8} {:>8}", "", "before", "after");
    for (name, before, after) in [
        ("allowed", r.before.allowed, r.after.allowed),
        ("held", r.before.held, r.after.held),
        ("denied", r.before.denied, r.after.denied),
        ("not reached", r.before.not_reached, r.after.not_reached),
    ] {
        let _ = writeln!(out, "{name:<12} {before:>8} {after:>8}");
    }
    let _ = writeln!(
        out,
        "\nspent {} as recorded, {} under the new policy; {} would not have been spent, {} newly spent",
        money(r.spent_before_cents, None),
        money(r.spent_after_cents, None),
        money(r.not_spent_cents, None),
        money(r.newly_spent_cents, None),
    );
    if r.changes.is_empty() {
        let _ = writeln!(out, "\nno decision changes");
        return out;
    }
    let _ = writeln!(
        out,
        "\n{} {}:",
        output::counted(r.changes.len() as u64, "decision", "decisions"),
        if r.changes.len() == 1 {
            "changes"
        } else {
            "change"
        }
    );
    let _ = writeln!(
        out,
        "{:<36} {:<24} {:<18} {:>12} {:<6} {:<12} reasons",
        "decision", "decided at", "tool", "amount", "was", "now"
    );
    for c in &r.changes {
        let _ = writeln!(
            out,
            "{:<36} {:<24} {:<18} {:>12} {:<6} {:<12} {} -> {}",
            c.decision_id,
            c.decided_at,
            c.tool,
            money(c.amount_cents, None),
            c.was,
            c.now,
            show(&c.was_reason_codes),
            show(&c.reason_codes)
        );
    }
    out
}

fn show(codes: &[String]) -> String {
    if codes.is_empty() {
        "-".to_owned()
    } else {
        codes.join(",")
    }
}
