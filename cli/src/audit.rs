//! `paybond audit exports create|list|get|download|verify|delete` and
//! `paybond audit signing-keys`: compliance audit exports, with the operator key.
//! `verify` works offline on a downloaded ZIP.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::Outcome;
use crate::ops::{Target, send_json, target_with};
use crate::output::{self, Category, Failure, Global};

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Audit export jobs: signed ZIPs of the ledger, decisions, approvals and guardrails.
    #[command(subcommand)]
    Exports(Box<ExportsCommand>),
    /// The tenant's audit signing key: what export manifests are checked against.
    SigningKeys,
}

/// A job, as the argument or `--job-id`.
#[derive(Debug, Args)]
pub(crate) struct JobArg {
    /// The export job.
    #[arg(required_unless_present = "job_id", conflicts_with = "job_id")]
    id: Option<Uuid>,
    /// The export job (the same as the argument).
    #[arg(long)]
    job_id: Option<Uuid>,
}

impl JobArg {
    fn id(&self) -> Uuid {
        // clap requires one of the two.
        self.id.or(self.job_id).unwrap_or_default()
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum ExportsCommand {
    /// Start an export; with --wait (or --output) wait until it is ready.
    Create {
        /// Start of the window (RFC 3339).
        #[arg(long)]
        time_start: Option<String>,
        /// End of the window (RFC 3339).
        #[arg(long)]
        time_end: Option<String>,
        /// Only this intent's decisions, approvals and evidence.
        #[arg(long)]
        intent_id: Option<Uuid>,
        /// A case reference, recorded in the manifest.
        #[arg(long)]
        case_id: Option<String>,
        /// Who asks, recorded in the manifest.
        #[arg(long)]
        operator_did: Option<String>,
        /// Comma-separated: ledger, decisions, approvals, guardrails, harbor_intents [default: all].
        #[arg(long, value_delimiter = ',')]
        includes: Option<Vec<String>>,
        /// standard (subjects hashed) or extended.
        #[arg(long, default_value = "standard")]
        disclosure_tier: String,
        /// How long the gateway keeps the bundle, in hours (1 to 720).
        #[arg(long)]
        retention_hours: Option<u32>,
        /// Wait until the job is ready (or failed).
        #[arg(long)]
        wait: bool,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout_seconds: u64,
        /// Wait, then download the ZIP here (mode 0600).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// The tenant's export jobs, newest first.
    List {
        /// At most this many (1 to 200).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after a previous page (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One job: status, progress, digests.
    Get {
        #[command(flatten)]
        job: JobArg,
        /// Also issue a download token (shown masked; use --output to download).
        #[arg(long)]
        issue_download: bool,
        /// Download the ZIP here (mode 0600).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Download a ready job's ZIP (checked against the job's SHA-256).
    Download {
        #[command(flatten)]
        job: JobArg,
        /// Where to write it (mode 0600).
        #[arg(long)]
        output: PathBuf,
    },
    /// Check a downloaded ZIP: the manifest signature, every artifact's SHA-256,
    /// the ledger chain against its verifier pack, and who signed it. The signer is
    /// checked against `--public-key` (offline) or, with `--gateway`, the tenant's
    /// published signing keys. Exit 0 verified; 1 on any mismatch; 3 when all
    /// checks pass but the signer was not checked (neither flag given): anyone can
    /// re-sign an altered bundle with a key of their own.
    Verify {
        /// The ZIP.
        #[arg(required_unless_present = "path", conflicts_with = "path")]
        file: Option<PathBuf>,
        /// The ZIP (the same as the argument).
        #[arg(long)]
        path: Option<PathBuf>,
        /// The signing key the manifest must be signed with (hex; from
        /// `paybond audit signing-keys`).
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Drop a job's bundle (the job stays listed as deleted).
    Delete {
        #[command(flatten)]
        job: JobArg,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

fn operator(global: &Global) -> Result<Target, Outcome> {
    target_with(global, "PAYBOND_OPERATOR_API_KEY", "an operator key")
}

/// `paybond audit ...`.
pub(crate) fn run(cmd: AuditCommand, global: &Global) -> Outcome {
    match cmd {
        AuditCommand::SigningKeys => {
            let t = match operator(global) {
                Ok(t) => t,
                Err(o) => return o,
            };
            match send_json(&t, Method::GET, "/v1/compliance/signing-keys", None) {
                Ok(data) => {
                    if !output::success_json(data.clone(), &[]) {
                        for k in data["keys"].as_array().into_iter().flatten() {
                            println!(
                                "{}  {}  {}",
                                k["key_id"].as_str().unwrap_or("-"),
                                k["public_key_hex"].as_str().unwrap_or("-"),
                                k["created_at"].as_str().unwrap_or("-")
                            );
                        }
                    }
                    Outcome::Success
                }
                Err(o) => o,
            }
        }
        AuditCommand::Exports(cmd) => {
            if let ExportsCommand::Verify {
                file,
                path,
                public_key,
            } = *cmd
            {
                let path = file.or(path).unwrap_or_default();
                return verify(&path, public_key.as_deref(), global);
            }
            let t = match operator(global) {
                Ok(t) => t,
                Err(o) => return o,
            };
            match exports(&t, *cmd) {
                Ok(o) | Err(o) => o,
            }
        }
    }
}

fn exports(t: &Target, cmd: ExportsCommand) -> Result<Outcome, Outcome> {
    match cmd {
        ExportsCommand::Create {
            time_start,
            time_end,
            intent_id,
            case_id,
            operator_did,
            includes,
            disclosure_tier,
            retention_hours,
            wait,
            timeout_seconds,
            output,
        } => {
            let mut filter = serde_json::Map::new();
            for (k, v) in [
                ("time_start", time_start.map(Value::from)),
                ("time_end", time_end.map(Value::from)),
                ("intent_id", intent_id.map(|i| Value::from(i.to_string()))),
                ("case_id", case_id.map(Value::from)),
                ("operator_did", operator_did.map(Value::from)),
                ("includes", includes.map(Value::from)),
            ] {
                if let Some(v) = v {
                    filter.insert(k.to_owned(), v);
                }
            }
            let mut body = json!({"disclosure_tier": disclosure_tier, "filter": filter});
            if let Some(h) = retention_hours {
                body["retention_hours"] = json!(h);
            }
            let created = send_json(t, Method::POST, "/v1/compliance/audit-exports", Some(&body))?;
            let id = created["job"]["id"].as_str().unwrap_or_default().to_owned();
            if !wait && output.is_none() {
                return Ok(print_job(created));
            }
            let job = wait_for(t, &id, Duration::from_secs(timeout_seconds))?;
            match output {
                Some(path) if job["job"]["status"] == "ready" => download(t, &id, &path),
                _ if job["job"]["status"] != "ready" => Err(output::fail(
                    Failure::new(
                        Category::Gateway,
                        "audit_export_failed",
                        format!(
                            "audit export {id} is {}: {}",
                            job["job"]["status"].as_str().unwrap_or("-"),
                            job["job"]["error"].as_str().unwrap_or("")
                        ),
                    )
                    .data(masked(job)),
                )),
                _ => Ok(print_job(job)),
            }
        }
        ExportsCommand::List { limit, cursor } => {
            let mut path = format!("/v1/compliance/audit-exports?limit={limit}");
            if let Some(c) = cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let data = send_json(t, Method::GET, &path, None)?;
            if output::success_json(data.clone(), &[]) {
                return Ok(Outcome::Success);
            }
            let jobs = data["jobs"].as_array().cloned().unwrap_or_default();
            if jobs.is_empty() {
                println!("no audit exports");
            }
            for j in jobs {
                println!(
                    "{}  {:<8}  {:<8}  {:>9} bytes  created {}  expires {}",
                    j["id"].as_str().unwrap_or("-"),
                    j["status"].as_str().unwrap_or("-"),
                    j["disclosure_tier"].as_str().unwrap_or("-"),
                    j["bundle_size_bytes"].as_u64().unwrap_or(0),
                    j["created_at"].as_str().unwrap_or("-"),
                    j["expires_at"].as_str().unwrap_or("-"),
                );
            }
            if let Some(next) = data["next_cursor"].as_str() {
                println!("more: pass --cursor {next}");
            }
            Ok(Outcome::Success)
        }
        ExportsCommand::Get {
            job,
            issue_download,
            output,
        } => {
            let id = job.id();
            if let Some(path) = output {
                return download(t, &id.to_string(), &path);
            }
            let query = if issue_download {
                "?issue_download=1"
            } else {
                ""
            };
            let data = send_json(
                t,
                Method::GET,
                &format!("/v1/compliance/audit-exports/{id}{query}"),
                None,
            )?;
            Ok(print_job(data))
        }
        ExportsCommand::Download { job, output } => download(t, &job.id().to_string(), &output),
        ExportsCommand::Delete { job, yes } => {
            if !yes {
                return Err(crate::usage_error(
                    "audit exports delete drops the bundle for good: pass --yes to confirm",
                ));
            }
            let data = send_json(
                t,
                Method::DELETE,
                &format!("/v1/compliance/audit-exports/{}", job.id()),
                None,
            )?;
            if !output::success_json(data.clone(), &[]) {
                println!("deleted: {}", job.id());
            }
            Ok(Outcome::Success)
        }
        ExportsCommand::Verify { .. } => Ok(Outcome::Success),
    }
}

/// The job's JSON with its download token masked.
fn masked(mut data: Value) -> Value {
    if let Some(t) = data["job"].get_mut("download_token")
        && t.is_string()
    {
        *t = Value::from("[redacted]");
    }
    data
}

fn print_job(data: Value) -> Outcome {
    let data = masked(data);
    if output::success_json(data.clone(), &[]) {
        return Outcome::Success;
    }
    let job = &data["job"];
    for key in [
        "id",
        "status",
        "disclosure_tier",
        "created_at",
        "expires_at",
        "manifest_sha256",
        "bundle_sha256",
        "bundle_size_bytes",
        "download_path",
        "download_token",
        "download_token_expires",
        "error",
    ] {
        match &job[key] {
            Value::Null => {}
            Value::String(s) if s.is_empty() => {}
            Value::String(s) => println!("{key}: {s}"),
            other => println!("{key}: {other}"),
        }
    }
    println!(
        "progress: {} ({}%)",
        job["progress"]["stage"].as_str().unwrap_or("-"),
        job["progress"]["percent"]
    );
    Outcome::Success
}

/// Polls the job until it is no longer queued or running.
fn wait_for(t: &Target, id: &str, timeout: Duration) -> Result<Value, Outcome> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let job = send_json(
            t,
            Method::GET,
            &format!("/v1/compliance/audit-exports/{id}"),
            None,
        )?;
        let status = job["job"]["status"].as_str().unwrap_or("").to_owned();
        if !matches!(status.as_str(), "queued" | "running") {
            return Ok(job);
        }
        if !output::json() && status != last {
            eprintln!(
                "audit export {id}: {status} ({}, {}%)",
                job["job"]["progress"]["stage"].as_str().unwrap_or("-"),
                job["job"]["progress"]["percent"]
            );
            last = status;
        }
        if start.elapsed() >= timeout {
            return Err(output::fail(
                Failure::new(
                    Category::Gateway,
                    "audit_export_timeout",
                    format!(
                        "audit export {id} was not ready within {} s; check it with `paybond audit exports get {id}`",
                        timeout.as_secs()
                    ),
                )
                .data(masked(job)),
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Issues a download token, downloads with it (as the Paybond Kit does), checks the
/// bytes against the job's SHA-256 and writes them to `path` (0600, atomically).
fn download(t: &Target, id: &str, path: &Path) -> Result<Outcome, Outcome> {
    let issued = send_json(
        t,
        Method::GET,
        &format!("/v1/compliance/audit-exports/{id}?issue_download=1"),
        None,
    )?;
    let job = &issued["job"];
    let Some(token) = job["download_token"].as_str() else {
        return Err(output::fail(Failure::new(
            Category::Gateway,
            "audit_export_not_ready",
            format!(
                "audit export {id} is {}, not ready: nothing to download",
                job["status"].as_str().unwrap_or("-")
            ),
        )));
    };
    let bytes = crate::ops::fetch_bytes(
        t,
        Method::POST,
        &format!("/v1/compliance/audit-exports/{id}/bundle"),
        token,
    )?;
    let digest = paybond_gateway::audit::sha256_hex(&bytes);
    let expected = job["bundle_sha256"].as_str().unwrap_or("");
    if digest != expected {
        return Err(output::fail(Failure::new(
            Category::Invalid,
            "bundle_digest_mismatch",
            format!("the downloaded ZIP's SHA-256 is {digest}, the job says {expected}"),
        )));
    }
    write_private(path, &bytes).map_err(|e| {
        output::fail(Failure::new(
            Category::Environment,
            "unwritable_file",
            format!("cannot write {}: {e}", path.display()),
        ))
    })?;
    let data = json!({
        "job_id": id,
        "output": path.display().to_string(),
        "bytes_written": bytes.len(),
        "bundle_sha256": digest,
    });
    if !output::success_json(data, &[]) {
        println!(
            "wrote {} ({} bytes, sha256 {digest})",
            path.display(),
            bytes.len()
        );
    }
    Ok(Outcome::Success)
}

/// Writes a file readable by its owner only, through a temporary file renamed over it.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Who may have signed a bundle, and where that came from.
enum Signer {
    /// `--public-key`.
    Pinned(String),
    /// The tenant's published keys, from `--gateway`.
    Published { keys: Vec<String>, tenant: String },
    /// Nobody said: the signature is checked with the key the manifest names.
    Unchecked,
}

/// The tenant's signing keys from the gateway `--gateway` names.
fn published_keys(global: &Global) -> Result<Signer, Outcome> {
    let t = operator(global)?;
    let data = send_json(&t, Method::GET, "/v1/compliance/signing-keys", None)?;
    let keys: Vec<String> = data["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["public_key_hex"].as_str().map(str::to_owned))
        .collect();
    let tenant = data["tenant_realm_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if keys.is_empty() || tenant.is_empty() {
        return Err(output::fail(Failure::new(
            Category::Gateway,
            "malformed_answer",
            format!("{}/v1/compliance/signing-keys named no signing key", t.url),
        )));
    }
    Ok(Signer::Published { keys, tenant })
}

fn verify(path: &Path, public_key: Option<&str>, global: &Global) -> Outcome {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return crate::unreadable(format!("cannot read {}: {e}", path.display())),
    };
    let signer = match (public_key, &global.gateway) {
        (Some(key), _) => Signer::Pinned(key.to_owned()),
        (None, Some(_)) => match published_keys(global) {
            Ok(s) => s,
            Err(o) => return o,
        },
        (None, None) => Signer::Unchecked,
    };
    let trusted: &[String] = match &signer {
        Signer::Pinned(key) => std::slice::from_ref(key),
        Signer::Published { keys, .. } => keys,
        Signer::Unchecked => &[],
    };
    let mut report = match paybond_gateway::audit::verify_bundle_trusting(&bytes, trusted) {
        Ok(r) => r,
        Err(why) => {
            return output::fail(Failure::new(
                Category::Invalid,
                "invalid_bundle",
                format!("{}: {why}", path.display()),
            ));
        }
    };
    if let Signer::Published { tenant, .. } = &signer
        && *tenant != report.tenant_realm_id
    {
        report.problems.push(format!(
            "the bundle is of tenant {}, the gateway's signing keys of tenant {tenant}",
            report.tenant_realm_id
        ));
        report.verified = false;
        report.intact = false;
    }
    let mut data = serde_json::to_value(&report).unwrap_or(Value::Null);
    data["path"] = Value::from(path.display().to_string());
    data["signer"] = Value::from(match &signer {
        Signer::Pinned(_) => "public_key",
        Signer::Published { .. } => "gateway",
        Signer::Unchecked => "not_checked",
    });
    if !report.intact {
        return output::fail(
            Failure::new(
                Category::Invalid,
                "audit_bundle_invalid",
                format!(
                    "{} does not verify: {}",
                    path.display(),
                    report.problems.join("; ")
                ),
            )
            .details(json!({"problems": report.problems}))
            .data(data),
        );
    }
    let ledger = report.ledger.as_ref();
    let details = || {
        println!(
            "  manifest: {} for tenant {}, job {}",
            report.manifest_kind, report.tenant_realm_id, report.job_id
        );
        println!("  artifacts: {} checked, all match", report.artifacts.len());
        if let Some(l) = ledger {
            println!(
                "  ledger: {}, seq {}..={}, chain valid",
                crate::output::counted(l.events, "entry", "entries"),
                l.first_seq,
                l.last_seq
            );
        }
    };
    if !report.signer_checked {
        let message = format!(
            "{}: signature valid, signer not checked: the manifest is signed by the key it \
             names ({}), which anyone re-signing the bundle can choose; pass --public-key \
             (from `paybond audit signing-keys`) or --gateway to check it against the \
             tenant's key",
            path.display(),
            report.signing_public_key_ed25519_hex
        );
        if output::json() {
            return output::fail(
                Failure::new(Category::Unchecked, "signer_not_checked", message).data(data),
            );
        }
        println!("{}: signature valid, signer not checked", path.display());
        details();
        return output::fail(Failure::new(
            Category::Unchecked,
            "signer_not_checked",
            message,
        ));
    }
    if output::success_json(data, &[]) {
        return Outcome::Success;
    }
    println!("{}: verified", path.display());
    details();
    println!(
        "  signature: valid, by {} (ed25519 {})",
        match signer {
            Signer::Pinned(_) => "the key given with --public-key",
            _ => "the tenant's signing key, as the gateway publishes it",
        },
        report.signing_public_key_ed25519_hex
    );
    Outcome::Success
}
