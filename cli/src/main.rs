//! `paybond`: policies, the offline dev gateway, demos, approvals and the ledger.
//!
//! Exit codes: 0 success; 1 the thing checked is wrong (an invalid policy, a failed
//! scenario, a broken chain); 2 a usage or environment error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod policy;

/// Authorize an AI agent's paid tools before they run.
#[derive(Debug, Parser)]
#[command(name = "paybond", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write, extend, validate and describe policy files.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

/// How a command ended, as the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 0: done.
    Success,
    /// 1: the thing checked is wrong.
    Failed,
    /// 2: bad usage or environment (a missing file, a missing credential).
    Usage,
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> Self {
        ExitCode::from(match o {
            Outcome::Success => 0,
            Outcome::Failed => 1,
            Outcome::Usage => 2,
        })
    }
}

/// Prints a usage or environment error and returns [`Outcome::Usage`].
pub(crate) fn usage_error(message: impl std::fmt::Display) -> Outcome {
    eprintln!("error: {message}");
    Outcome::Usage
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Policy(cmd) => policy::run(cmd),
    }
    .into()
}
