//! The flags every command takes, and how every command prints: a table (lines for
//! people) or, with `--format json`, one envelope on stdout,
//! `{ok, command, data, warnings, request_id, error: {category, code, message, details} | null}`,
//! as the Paybond CLI prints it. Errors follow the format too.

use std::path::PathBuf;
use std::sync::OnceLock;

use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::Outcome;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Lines and tables for people.
    #[value(alias = "text")]
    Table,
    /// One JSON envelope: ok, command, data, warnings, request_id, error.
    Json,
}

/// The flags every command takes, before or after its name.
#[derive(Debug, Clone, Args)]
pub(crate) struct Global {
    /// Gateway base URL [default: PAYBOND_GATEWAY_URL, from the environment or the env file].
    #[arg(
        long,
        global = true,
        value_name = "URL",
        help_heading = "Global options"
    )]
    pub(crate) gateway: Option<String>,
    /// The env file `paybond dev loop` writes and the other commands read: the gateway
    /// URL and the sandbox keys.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = ".env.local",
        help_heading = "Global options"
    )]
    pub(crate) env_file: PathBuf,
    /// table (for people) or json (one envelope on stdout, errors included).
    #[arg(long, global = true, value_enum, default_value_t = Format::Table, help_heading = "Global options")]
    pub(crate) format: Format,
}

struct Context {
    command: String,
    format: Format,
}

static CONTEXT: OnceLock<Context> = OnceLock::new();

/// Records the command (`approvals list`) and the format, once, before it runs.
pub(crate) fn init(command: String, format: Format) {
    let _ = CONTEXT.set(Context { command, format });
}

/// Whether `--format json` was asked for.
pub(crate) fn json() -> bool {
    CONTEXT.get().is_some_and(|c| c.format == Format::Json)
}

fn command() -> &'static str {
    CONTEXT.get().map_or("paybond", |c| c.command.as_str())
}

/// What kind of failure, in the envelope's `error.category`, and its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Category {
    /// Bad flags or arguments (exit 2).
    Usage,
    /// Something the command needs is missing or unreachable: a file, a credential,
    /// the gateway (exit 2).
    Environment,
    /// The gateway refused the request (exit 1; 2 for a refused credential).
    Gateway,
    /// The thing checked is wrong: an invalid policy, a broken chain (exit 1).
    Invalid,
    /// Every check that could run passed, but not all could: an audit bundle
    /// whose signer was not checked against a trusted key (exit 3).
    Unchecked,
}

impl Category {
    fn name(self) -> &'static str {
        match self {
            Self::Usage => "usage",
            Self::Environment => "environment",
            Self::Gateway => "gateway",
            Self::Invalid => "invalid",
            Self::Unchecked => "unchecked",
        }
    }
}

/// A failure to report.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) category: Category,
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) details: Value,
    pub(crate) request_id: Option<String>,
    /// What the command found anyway (a policy's report), for `data`.
    pub(crate) data: Value,
}

impl Failure {
    pub(crate) fn new(category: Category, code: &str, message: impl Into<String>) -> Self {
        Self {
            category,
            code: code.to_owned(),
            message: message.into(),
            details: Value::Null,
            request_id: None,
            data: Value::Null,
        }
    }

    #[must_use]
    pub(crate) fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    #[must_use]
    pub(crate) fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    #[must_use]
    pub(crate) fn request_id(mut self, id: Option<String>) -> Self {
        self.request_id = id;
        self
    }
}

/// Prints a failure (the envelope, or `error: message` on stderr) and answers its
/// exit code.
pub(crate) fn fail(f: Failure) -> Outcome {
    let outcome = match f.category {
        Category::Usage | Category::Environment => Outcome::Usage,
        // A refused credential is the environment's problem, like a missing one.
        Category::Gateway if f.code == "unauthorized" || f.details["status"] == 401 => {
            Outcome::Usage
        }
        Category::Gateway | Category::Invalid => Outcome::Failed,
        Category::Unchecked => Outcome::Unchecked,
    };
    if json() {
        println!(
            "{}",
            json!({
                "ok": false,
                "command": command(),
                "data": f.data,
                "warnings": [],
                "request_id": f.request_id,
                "error": {
                    "category": f.category.name(),
                    "code": f.code,
                    "message": f.message,
                    "details": f.details,
                },
            })
        );
    } else {
        eprintln!("error: {}", f.message);
    }
    outcome
}

/// In `--format json`, prints the success envelope around `data` and answers true;
/// otherwise prints nothing and answers false (the caller prints its table).
pub(crate) fn success_json(data: Value, warnings: &[String]) -> bool {
    if !json() {
        return false;
    }
    println!(
        "{}",
        json!({
            "ok": true,
            "command": command(),
            "data": data,
            "warnings": warnings,
            "request_id": Value::Null,
            "error": Value::Null,
        })
    );
    true
}

/// An amount as every command shows it: `187.00 USD`.
pub(crate) fn money(cents: u64, currency: Option<&str>) -> String {
    paybond_middleware_core::format_money(cents, currency.unwrap_or("usd"))
}

/// Where `--format json` was asked for on a command line clap refused: its error is
/// an envelope too.
pub(crate) fn json_requested(args: &[String]) -> bool {
    args.windows(2)
        .any(|w| w[0] == "--format" && w[1] == "json")
        || args.iter().any(|a| a == "--format=json")
}

/// `n` and what it counts: "1 chain", "3 chains".
pub(crate) fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
