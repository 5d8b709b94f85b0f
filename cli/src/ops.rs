//! `paybond approvals list | approve ID | deny ID` and `paybond ledger verify`.

use std::path::PathBuf;

use clap::Subcommand;
use paybond_gateway::{DatabaseUrl, Engine, EngineConfig, Storage, database_path};
use paybond_middleware_core::wire::{ApprovalStatus, ErrorBody};
use serde_json::Value;

use crate::output::{self, Category, Failure, Global};
use crate::{Outcome, envfile, usage_error};

#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// Approval requests of the tenant (operator key).
    List {
        /// pending, approved, denied, expired or all.
        #[arg(long, default_value = "pending")]
        state: String,
        /// At most this many, newest first (1 to 500).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// Continue after a previous page (the `next_cursor` it printed).
        #[arg(long)]
        cursor: Option<String>,
        /// Oldest first.
        #[arg(long)]
        oldest_first: bool,
    },
    /// One approval request: its state, amount, reasons and quorum progress.
    Show {
        /// The approval request id.
        id: String,
    },
    /// Approve a held request; at quorum it yields a single-use approval token.
    Approve {
        /// The approval request id.
        id: String,
    },
    /// Deny a held request.
    Deny {
        /// The approval request id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LedgerCommand {
    /// Check every hash chain in a gateway's store (offline).
    Verify {
        /// The gateway's data dir.
        #[arg(long, env = "PAYBOND_DATA_DIR", default_value = ".paybond")]
        data_dir: PathBuf,
        /// A fleet's PostgreSQL database instead of a data dir.
        #[arg(long, env = "PAYBOND_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) key: String,
}

fn target(remote: &Global) -> Result<Target, Outcome> {
    target_with(remote, "PAYBOND_OPERATOR_API_KEY", "an operator key")
}

/// The gateway URL (`--gateway`, else `PAYBOND_GATEWAY_URL` from the environment or
/// the env file) and the key in `key_var`.
pub(crate) fn target_with(
    remote: &Global,
    key_var: &str,
    key_name: &str,
) -> Result<Target, Outcome> {
    let url = remote
        .gateway
        .clone()
        .or_else(|| envfile::lookup("PAYBOND_GATEWAY_URL", &remote.env_file));
    let key = envfile::lookup(key_var, &remote.env_file);
    match (url, key) {
        (Some(url), Some(key)) => Ok(Target {
            url: url.trim_end_matches('/').to_owned(),
            key,
        }),
        (url, key) => {
            let mut missing = Vec::new();
            if url.is_none() {
                missing.push("a gateway URL (--gateway or PAYBOND_GATEWAY_URL)");
            }
            let key_missing = format!("{key_name} ({key_var})");
            if key.is_none() {
                missing.push(&key_missing);
            }
            // An env file that is not there (a mistyped --env-file) is named as such.
            let file = if remote.env_file.is_file() {
                remote.env_file.display().to_string()
            } else {
                format!("{} (no such file)", remote.env_file.display())
            };
            Err(output::fail(Failure::new(
                Category::Environment,
                "missing_credentials",
                format!(
                    "this command needs {}, from the environment or {file}; `paybond dev loop --offline` writes them",
                    missing.join(" and "),
                ),
            )))
        }
    }
}

/// Sends one request; answers the JSON body, or prints the error and the exit code.
fn send(t: &Target, method: reqwest::Method, path: &str) -> Result<Value, Outcome> {
    send_json(t, method, path, None)
}

/// [`send`] with a JSON body.
pub(crate) fn send_json(
    t: &Target,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, Outcome> {
    let bytes = request(t, method, path, &t.key, body)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        output::fail(Failure::new(
            Category::Gateway,
            "malformed_answer",
            format!("the gateway's answer is not JSON: {e}"),
        ))
    })
}

/// Sends one request with `bearer` (a download token) and answers the body's bytes,
/// or prints the error and the exit code.
pub(crate) fn fetch_bytes(
    t: &Target,
    method: reqwest::Method,
    path: &str,
    bearer: &str,
) -> Result<Vec<u8>, Outcome> {
    request(t, method, path, bearer, None)
}

/// One request to the gateway: the body of a 2xx answer; anything else printed as
/// the failure it is (the gateway's error code and request id when it sent them).
fn request(
    t: &Target,
    method: reqwest::Method,
    path: &str,
    bearer: &str,
    body: Option<&Value>,
) -> Result<Vec<u8>, Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| usage_error(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", t.url))
            .bearer_auth(bearer);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            output::fail(Failure::new(
                Category::Environment,
                "gateway_unreachable",
                format!("cannot reach the gateway at {}: {e}", t.url),
            ))
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            output::fail(Failure::new(
                Category::Environment,
                "gateway_unreachable",
                format!("the gateway's answer broke off: {e}"),
            ))
        })?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let failure = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => Failure::new(
                Category::Gateway,
                &b.error,
                format!("HTTP {status}: {} ({})", b.message, b.error),
            )
            .details(serde_json::json!({"status": status.as_u16()}))
            .request_id(Some(b.request_id)),
            Err(_) => Failure::new(
                Category::Gateway,
                &format!("http_{}", status.as_u16()),
                format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
            ),
        };
        Err(output::fail(failure))
    })
}

fn print_status(a: &ApprovalStatus) {
    println!(
        "{}  {:<8}  {}/{} approvals  {:<20} {:>14}  {}",
        a.approval_request_id,
        format!("{:?}", a.state).to_lowercase(),
        a.approvals,
        a.quorum,
        a.operation.as_deref().unwrap_or("-"),
        output::money(a.requested_spend_cents.unwrap_or(0), None),
        a.reason_codes.join(",")
    );
}

/// Replaces every capability or approval token in `v` with `[redacted]`.
pub(crate) fn redact_tokens(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if matches!(k.as_str(), "approval_token" | "capability_token" | "token")
                    && child.is_string()
                {
                    *child = Value::String("[redacted]".to_owned());
                } else {
                    redact_tokens(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_tokens),
        _ => {}
    }
}

pub(crate) fn approvals(cmd: ApprovalsCommand, remote: &Global) -> Outcome {
    let (method, path) = match &cmd {
        ApprovalsCommand::List {
            state,
            limit,
            cursor,
            oldest_first,
        } => {
            let mut path = format!("/v1/approvals?state={state}&limit={limit}");
            if let Some(c) = cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            if *oldest_first {
                path.push_str("&order=oldest");
            }
            (reqwest::Method::GET, path)
        }
        ApprovalsCommand::Show { id } => (reqwest::Method::GET, format!("/v1/approvals/{id}")),
        ApprovalsCommand::Approve { id } => {
            (reqwest::Method::POST, format!("/v1/approvals/{id}/approve"))
        }
        ApprovalsCommand::Deny { id } => {
            (reqwest::Method::POST, format!("/v1/approvals/{id}/deny"))
        }
    };
    let t = match target(remote) {
        Ok(t) => t,
        Err(o) => return o,
    };
    let body = match send(&t, method, &path) {
        Ok(b) => b,
        Err(o) => return o,
    };
    if output::json() {
        // The approval token is for the agent that retries the held call, not for the
        // operator's terminal.
        let mut body = body;
        redact_tokens(&mut body);
        output::success_json(body, &[]);
        return Outcome::Success;
    }
    let next = body
        .get("next_cursor")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let list: Vec<ApprovalStatus> = match &cmd {
        ApprovalsCommand::List { .. } => body
            .get("approvals")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default(),
        _ => serde_json::from_value(body)
            .map(|a| vec![a])
            .unwrap_or_default(),
    };
    if list.is_empty() {
        match &cmd {
            ApprovalsCommand::List { state, cursor, .. } if cursor.is_none() && state != "all" => {
                println!("no {state} approval requests (use `--state all` for every state)");
            }
            _ => println!("no approval requests"),
        }
    }
    for a in &list {
        print_status(a);
    }
    if let Some(next) = next {
        println!("more: pass --cursor {next}");
    }
    Outcome::Success
}

pub(crate) fn ledger(cmd: LedgerCommand, _global: &Global) -> Outcome {
    let LedgerCommand::Verify {
        data_dir,
        database_url,
    } = cmd;
    let storage = match database_url {
        Some(url) => match DatabaseUrl::parse(&url) {
            Ok(url) => Storage::Postgres(url),
            Err(e) => return usage_error(format!("--database-url: {}", e.message)),
        },
        None => {
            let db = database_path(&data_dir);
            if !db.exists() {
                return usage_error(format!(
                    "no gateway data in {} (expected {})",
                    data_dir.display(),
                    db.display()
                ));
            }
            Storage::File(db)
        }
    };
    let mut config = EngineConfig::new(storage);
    config.default_org_policy = None;
    config.default_tenant_policy = None;
    let runtime = match crate::run::runtime() {
        Ok(r) => r,
        Err(outcome) => return outcome,
    };
    let check = match Engine::open(config)
        .map(std::sync::Arc::new)
        .and_then(|e| runtime.block_on(e.verify_ledger()))
    {
        Ok(c) => c,
        Err(e) => return usage_error(format!("cannot read the ledger: {}", e.message)),
    };
    let data = serde_json::to_value(&check).unwrap_or_default();
    if !check.valid {
        let problem = check.problem.as_deref().unwrap_or("unknown problem");
        if !output::json() {
            println!("ledger BROKEN: {problem}");
        }
        return output::fail(
            Failure::new(
                Category::Invalid,
                "ledger_broken",
                format!("ledger BROKEN: {problem}"),
            )
            .data(data),
        );
    }
    if !output::success_json(data, &[]) {
        println!(
            "ledger valid: {} in {}",
            output::counted(check.events, "event", "events"),
            output::counted(check.tenants, "chain", "chains")
        );
    }
    Outcome::Success
}
