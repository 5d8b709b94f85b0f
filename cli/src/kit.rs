//! The agent-side commands a Paybond CLI user types, with the same names and flags:
//! `whoami`, `guardrails bootstrap|evidence`, `spend authorize|budget-remaining|explain-policy`
//! and `intents list|get`. They use the agent key (`PAYBOND_API_KEY`, from the
//! environment or the env file); tokens are never printed.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::Outcome;
use crate::ops::{Target, redact_tokens, send_json, target_with};
use crate::output::{self, Category, Failure, Global};

#[derive(Debug, Subcommand)]
pub(crate) enum GuardrailsCommand {
    /// A funded sandbox intent for one operation, and its capability token (kept
    /// out of the output).
    Bootstrap {
        /// The operation the intent allows, e.g. travel.book_hotel.
        #[arg(long)]
        operation: String,
        /// The intent's budget, in cents.
        #[arg(long)]
        requested_spend_cents: u64,
        /// Currency, lowercase [default: usd].
        #[arg(long)]
        currency: Option<String>,
    },
    /// Submit evidence of what a call did: `--body` is a JSON file
    /// (`{"payload": {"status": "completed", "cost_cents": 100}, "metadata": {"decision_id": ".."}}`).
    Evidence {
        /// The intent.
        #[arg(long)]
        intent_id: Uuid,
        /// The evidence request, as JSON.
        #[arg(long)]
        body: PathBuf,
    },
}

/// What a spend command asks about.
#[derive(Debug, Args)]
pub(crate) struct SpendCall {
    /// The intent.
    #[arg(long)]
    intent_id: Uuid,
    /// The operation [default: `*`, the intent's budget only].
    #[arg(long)]
    operation: Option<String>,
    /// The amount, in cents.
    #[arg(long, default_value_t = 0)]
    requested_spend_cents: u64,
    /// The vendor paid.
    #[arg(long)]
    vendor_id: Option<String>,
    /// The policy tool the call belongs to.
    #[arg(long)]
    tool_name: Option<String>,
    /// The run's phase (EXPLORE, DECIDE or COMMIT), for a policy with a payment phase.
    #[arg(long)]
    phase: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SpendCommand {
    /// Decide one call now (POST /verify): allow reserves the amount, a hold opens an
    /// approval request, a deny is final.
    Authorize {
        #[command(flatten)]
        call: SpendCall,
        /// The intent's capability token.
        #[arg(long)]
        token: String,
    },
    /// What is left to spend (a preflight: nothing is reserved or recorded).
    BudgetRemaining(SpendCall),
    /// Whether a call would be allowed, held or denied, and why: every check with
    /// its inputs (a preflight: nothing is reserved or recorded).
    ExplainPolicy(SpendCall),
}

#[derive(Debug, Subcommand)]
pub(crate) enum IntentsCommand {
    /// The tenant's intents, newest first.
    List {
        /// created, funded, evidence_submitted, released, refunded or expired.
        #[arg(long)]
        status: Option<String>,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after a previous page (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One intent: its money, reservations, decisions and evidence.
    Get {
        /// The intent.
        intent_id: Uuid,
    },
}

fn agent(global: &Global) -> Result<Target, Outcome> {
    target_with(global, "PAYBOND_API_KEY", "an agent key")
}

/// Prints `data` (tokens redacted): the envelope, or `key: value` lines with
/// amounts as money.
fn print(mut data: Value) -> Outcome {
    redact_tokens(&mut data);
    if output::success_json(data.clone(), &[]) {
        return Outcome::Success;
    }
    if let Value::Object(map) = &data {
        let currency = map
            .get("currency")
            .and_then(Value::as_str)
            .map(str::to_owned);
        for (k, v) in map {
            match (k.strip_suffix("_cents"), v) {
                (Some(_), Value::Number(n)) if n.as_u64().is_some() => println!(
                    "{k}: {}",
                    output::money(n.as_u64().unwrap_or(0), currency.as_deref())
                ),
                (_, Value::String(s)) => println!("{k}: {s}"),
                (_, Value::Array(items)) if items.iter().all(Value::is_object) => {
                    println!("{k}: {}", items.len());
                    for item in items {
                        println!("  - {item}");
                    }
                }
                (_, other) => println!("{k}: {other}"),
            }
        }
    }
    Outcome::Success
}

fn call(global: &Global, method: Method, path: &str, body: Option<&Value>) -> Outcome {
    let t = match agent(global) {
        Ok(t) => t,
        Err(o) => return o,
    };
    match send_json(&t, method, path, body) {
        Ok(data) => print(data),
        Err(o) => o,
    }
}

/// `paybond whoami`.
pub(crate) fn whoami(global: &Global) -> Outcome {
    call(global, Method::GET, "/v1/auth/principal", None)
}

/// `paybond guardrails ...`.
pub(crate) fn guardrails(cmd: GuardrailsCommand, global: &Global) -> Outcome {
    match cmd {
        GuardrailsCommand::Bootstrap {
            operation,
            requested_spend_cents,
            currency,
        } => {
            let body = json!({
                "operation": operation,
                "requested_spend_cents": requested_spend_cents,
                "currency": currency,
            });
            call(
                global,
                Method::POST,
                "/v1/sandbox/guardrails/bootstrap",
                Some(&body),
            )
        }
        GuardrailsCommand::Evidence { intent_id, body } => {
            let text = match std::fs::read_to_string(&body) {
                Ok(t) => t,
                Err(e) => {
                    return crate::unreadable(format!(
                        "cannot read --body {}: {e}",
                        body.display()
                    ));
                }
            };
            let request: Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(e) => {
                    return output::fail(Failure::new(
                        Category::Usage,
                        "invalid_body",
                        format!(
                            "{}:{}:{}: not JSON: {e}",
                            body.display(),
                            e.line(),
                            e.column()
                        ),
                    ));
                }
            };
            call(
                global,
                Method::POST,
                &format!("/v1/sandbox/guardrails/{intent_id}/evidence"),
                Some(&request),
            )
        }
    }
}

fn preflight_body(c: &SpendCall) -> Value {
    json!({
        "intent_id": c.intent_id,
        "operation": c.operation.as_deref().unwrap_or("*"),
        "requested_spend_cents": c.requested_spend_cents,
        "vendor_id": c.vendor_id,
        "tool_name": c.tool_name,
        "phase": c.phase,
    })
}

/// `paybond spend ...`.
pub(crate) fn spend(cmd: SpendCommand, global: &Global) -> Outcome {
    let t = match agent(global) {
        Ok(t) => t,
        Err(o) => return o,
    };
    match cmd {
        SpendCommand::Authorize { call, token } => {
            if call.operation.is_none() {
                return crate::usage_error("spend authorize needs --operation");
            }
            let mut body = preflight_body(&call);
            body["token"] = Value::String(token);
            match send_json(&t, Method::POST, "/verify", Some(&body)) {
                Ok(data) => print(data),
                Err(o) => o,
            }
        }
        SpendCommand::BudgetRemaining(call) => {
            match send_json(
                &t,
                Method::POST,
                "/v1/spend/preflight",
                Some(&preflight_body(&call)),
            ) {
                Ok(data) => print(json!({
                    "remaining_cents": data["remaining_cents"],
                    "spend_scope": data["spend_scope"],
                    "policy_version": data["policy_version"],
                    "intent_id": call.intent_id,
                    "operation": call.operation.as_deref().unwrap_or("*"),
                    "requested_spend_cents": call.requested_spend_cents,
                })),
                Err(o) => o,
            }
        }
        SpendCommand::ExplainPolicy(call) => {
            let data = match send_json(
                &t,
                Method::POST,
                "/v1/spend/preflight",
                Some(&preflight_body(&call)),
            ) {
                Ok(d) => d,
                Err(o) => return o,
            };
            if output::success_json(data.clone(), &[]) {
                return Outcome::Success;
            }
            println!("outcome: {}", data["outcome"].as_str().unwrap_or("unknown"));
            println!(
                "explanation: {}",
                data["explanation"].as_str().unwrap_or("")
            );
            for check in data["checks"].as_array().into_iter().flatten() {
                println!(
                    "  {:<20} {:<5} {}",
                    check["name"].as_str().unwrap_or("-"),
                    check["result"].as_str().unwrap_or("-"),
                    check["inputs"]
                );
            }
            Outcome::Success
        }
    }
}

/// `paybond intents ...`.
pub(crate) fn intents(cmd: IntentsCommand, global: &Global) -> Outcome {
    match cmd {
        IntentsCommand::List {
            status,
            limit,
            cursor,
        } => {
            let mut path = format!("/harbor/operator/v1/intents?limit={limit}");
            if let Some(s) = status {
                path.push_str(&format!("&status={s}"));
            }
            if let Some(c) = cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let t = match agent(global) {
                Ok(t) => t,
                Err(o) => return o,
            };
            let data = match send_json(&t, Method::GET, &path, None) {
                Ok(d) => d,
                Err(o) => return o,
            };
            if output::success_json(data.clone(), &[]) {
                return Outcome::Success;
            }
            let rows = data["intents"].as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                println!("no intents");
            }
            for i in rows {
                let currency = i["currency"].as_str();
                let money = |k: &str| output::money(i[k].as_u64().unwrap_or(0), currency);
                println!(
                    "{}  {:<18}  budget {:>14}  consumed {:>14}  reserved {:>14}  {}",
                    i["intent_id"].as_str().unwrap_or("-"),
                    i["state"].as_str().unwrap_or("-"),
                    money("budget_cents"),
                    money("consumed_cents"),
                    money("reserved_cents"),
                    i["created_at"].as_str().unwrap_or("-"),
                );
            }
            if let Some(next) = data["next_cursor"].as_str() {
                println!("more: pass --cursor {next}");
            }
            Outcome::Success
        }
        IntentsCommand::Get { intent_id } => call(
            global,
            Method::GET,
            &format!("/harbor/operator/v1/intents/{intent_id}"),
            None,
        ),
    }
}
