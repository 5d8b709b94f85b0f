//! The canonical scenario with the mcp demo: `paybond-demo-mcp [--gateway URL] [--format text|json]`.

use std::process::ExitCode;

use clap::Parser;
use paybond_demos::Framework;
use paybond_demos::cli::DemoArgs;

/// Runs the canonical scenario (mcp).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    args: DemoArgs,
}

fn main() -> ExitCode {
    if std::env::var_os(paybond_demos::mcp::CHILD_ENV).is_some() {
        return paybond_demos::mcp::child_main();
    }
    let cli = Cli::parse();
    paybond_demos::cli::main(&[Framework::Mcp], &cli.args)
}
