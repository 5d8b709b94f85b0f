//! `paybond`: policies, the offline dev gateway, demos, approvals and the ledger.
//!
//! Exit codes: 0 success; 1 the thing checked is wrong (an invalid policy, a failed
//! scenario, a broken chain); 2 a usage or environment error.

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

/// The gateway allocates on every decision (requests, the proof trace, the ledger
/// entry, held-back writes); with mimalloc the dev loop's writer spends far less
/// of its time in the allocator than with the system's (about a fifth of it with
/// glibc's, on the SQLite file store).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod audit;
mod dev;
mod envfile;
mod identity;
mod kit;
mod ops;
mod output;
mod policy;
mod replay;
mod run;

use output::{Category, Failure};

/// Authorize an AI agent's paid tools before they run.
#[derive(Debug, Parser)]
#[command(name = "paybond", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: output::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the canonical scenario with an agent framework; bind runs and execute tool calls.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Write, extend, validate and describe policy files.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Run the gateway on this machine.
    #[command(subcommand)]
    Dev(dev::DevCommand),
    /// List, approve and deny held requests (operator key).
    #[command(subcommand)]
    Approvals(ops::ApprovalsCommand),
    /// Check the hash-chained ledger.
    #[command(subcommand)]
    Ledger(ops::LedgerCommand),
    /// Who the agent key is: tenant, environment, role.
    Whoami,
    /// Sandbox guardrails: a funded intent and its token, evidence of a call.
    #[command(subcommand)]
    Guardrails(kit::GuardrailsCommand),
    /// Authorize a call, or ask what is left and why a call would pass or not.
    #[command(subcommand)]
    Spend(kit::SpendCommand),
    /// The tenant's intents and their history.
    #[command(subcommand)]
    Intents(kit::IntentsCommand),
    /// Compliance audit exports: signed ZIPs, and their offline check.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Identity (tenant admin key): SCIM tokens, role mappings, service accounts, SSO.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Print a shell completion script: `paybond completions bash > ~/.local/share/bash-completion/completions/paybond`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// The canonical scenario: search, book 120.00, book 187.00 (held, approved),
    /// book 250.00 (denied), book 90.00 with a failing vendor (released).
    Demo {
        /// generic, openai, rig, mcp, or all.
        framework: String,
        /// Which scenario to run.
        #[arg(long, value_enum, default_value_t = paybond_demos::Scenario::Canonical)]
        scenario: paybond_demos::Scenario,
        /// The model API the agent talks to: openai, or anthropic (Claude; rig only).
        #[arg(long, value_enum, default_value_t = paybond_demos::Provider::Openai)]
        provider: paybond_demos::Provider,
        /// Also show warnings (retries of gateway calls) on stderr.
        #[arg(short, long)]
        verbose: bool,
    },
    /// A run kept between commands: bind it, see its status and trace.
    #[command(subcommand)]
    Run(run::RunCommand),
    /// Run one tool call of a bound run through the layer.
    #[command(subcommand)]
    Tool(run::ToolCommand),
    /// Sandbox checks: the whole guarded path in one command.
    #[command(subcommand)]
    Sandbox(run::SandboxCommand),
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
    /// 3: every check that could run passed, but not all could (an audit bundle
    /// whose signer was not checked).
    Unchecked,
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> Self {
        ExitCode::from(match o {
            Outcome::Success => 0,
            Outcome::Failed => 1,
            Outcome::Usage => 2,
            Outcome::Unchecked => 3,
        })
    }
}

/// Prints a usage or environment error (an envelope with `--format json`) and
/// returns [`Outcome::Usage`].
pub(crate) fn usage_error(message: impl std::fmt::Display) -> Outcome {
    output::fail(Failure::new(
        Category::Usage,
        "usage_error",
        message.to_string(),
    ))
}

/// A file the command needs cannot be read: an environment error (exit 2), code
/// `unreadable_file`.
pub(crate) fn unreadable(message: impl std::fmt::Display) -> Outcome {
    output::fail(Failure::new(
        Category::Environment,
        "unreadable_file",
        message.to_string(),
    ))
}

fn agent(cmd: AgentCommand, global: &output::Global) -> ExitCode {
    let (framework, scenario, provider, verbose) = match cmd {
        AgentCommand::Demo {
            framework,
            scenario,
            provider,
            verbose,
        } => (framework, scenario, provider, verbose),
        AgentCommand::Run(cmd) => return run::run(cmd, global).into(),
        AgentCommand::Tool(cmd) => return run::tool(cmd, global).into(),
        AgentCommand::Sandbox(cmd) => return run::sandbox(cmd, global).into(),
    };
    // The demos run on the embedded gateway unless a gateway is named, by the flag
    // or PAYBOND_GATEWAY_URL.
    let args = paybond_demos::cli::DemoArgs {
        gateway: global
            .gateway
            .clone()
            .or_else(|| std::env::var("PAYBOND_GATEWAY_URL").ok()),
        env_file: global.env_file.clone(),
        format: match global.format {
            output::Format::Table => paybond_demos::cli::Format::Table,
            output::Format::Json => paybond_demos::cli::Format::Json,
        },
        scenario,
        provider,
        verbose,
    };
    let frameworks: Vec<paybond_demos::Framework> = if framework == "all" {
        paybond_demos::Framework::ALL.to_vec()
    } else if let Some(f) = paybond_demos::Framework::parse(&framework) {
        vec![f]
    } else {
        let names: Vec<&str> = paybond_demos::Framework::ALL
            .iter()
            .map(|f| f.name())
            .collect();
        return usage_error(format!(
            "unknown framework `{framework}`: choose one of {}, or all",
            names.join(", ")
        ))
        .into();
    };
    paybond_demos::cli::main(&frameworks, &args)
}

/// A closed stdout (`paybond … | head`) ends the command quietly with exit 0, as
/// `ls | head` does, instead of the panic `println!` raises on a broken pipe.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    // `paybond agent demo mcp` runs its MCP server as a child process of this executable.
    if std::env::var_os(paybond_demos::mcp::CHILD_ENV).is_some() {
        return paybond_demos::mcp::child_main();
    }
    let args: Vec<String> = std::env::args().collect();
    let parsed = Cli::command()
        .try_get_matches_from(&args)
        .and_then(|m| Ok((Cli::from_arg_matches(&m)?, command_name(&m))));
    let cli = match parsed {
        Ok((cli, name)) => {
            output::init(name, cli.global.format);
            cli
        }
        Err(e)
            if output::json_requested(&args)
                && !matches!(
                    e.kind(),
                    clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
                ) =>
        {
            output::init("paybond".to_owned(), output::Format::Json);
            // clap's message up to its usage hint, on one line, its tip (a
            // similar subcommand or argument) kept.
            let rendered = e.render().to_string();
            let message = rendered
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            return output::fail(Failure::new(
                Category::Usage,
                "invalid_arguments",
                message.trim_start_matches("error: "),
            ))
            .into();
        }
        Err(e) => e.exit(),
    };
    // Logs go to stderr (stdout carries results); RUST_LOG tunes them. A demo shows
    // warnings (a retried gateway call) only with -v: its output is its report.
    let level = match &cli.command {
        Command::Agent(AgentCommand::Demo { verbose, .. }) if !verbose => "error",
        _ => "warn",
    };
    // OpenTelemetry export when the OTEL_* variables ask for it (the guard flushes
    // on the way out); a variable this build cannot honour stops the command.
    let service = match &cli.command {
        Command::Dev(_) => "paybond-gateway",
        Command::Agent(_) => "paybond-agent",
        _ => "paybond-cli",
    };
    let telemetry = match paybond_middleware_core::telemetry::init_with_log_filter(service, level) {
        Ok(t) => t,
        Err(e) => {
            return output::fail(Failure::new(
                Category::Usage,
                "invalid_telemetry_settings",
                e.to_string(),
            ))
            .into();
        }
    };
    match cli.command {
        Command::Agent(cmd) => return agent(cmd, &cli.global),
        Command::Policy(cmd) => policy::run(cmd, &cli.global),
        Command::Dev(cmd) => dev::run(cmd, &cli.global, telemetry.metrics()),
        Command::Approvals(cmd) => ops::approvals(cmd, &cli.global),
        Command::Ledger(cmd) => ops::ledger(cmd, &cli.global),
        Command::Whoami => kit::whoami(&cli.global),
        Command::Guardrails(cmd) => kit::guardrails(cmd, &cli.global),
        Command::Spend(cmd) => kit::spend(cmd, &cli.global),
        Command::Intents(cmd) => kit::intents(cmd, &cli.global),
        Command::Audit(cmd) => audit::run(cmd, &cli.global),
        Command::Identity(cmd) => identity::run(cmd, &cli.global),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            use std::io::Write as _;
            // Written whole by us: clap_complete panics when its writer fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "paybond", &mut script);
            match std::io::stdout().write_all(&script) {
                Ok(()) => Outcome::Success,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Outcome::Success,
                Err(e) => usage_error(format!("cannot write the completion script: {e}")),
            }
        }
    }
    .into()
}

/// The command's words, `approvals list`, for the JSON envelope.
fn command_name(matches: &clap::ArgMatches) -> String {
    let mut words = Vec::new();
    let mut m = matches;
    while let Some((name, sub)) = m.subcommand() {
        words.push(name.to_owned());
        m = sub;
    }
    words.join(" ")
}
