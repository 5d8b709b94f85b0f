//! The canonical scenario with the rig demo: `paybond-demo-rig [--gateway URL] [--format text|json]`.

use std::process::ExitCode;

use clap::Parser;
use paybond_demos::Framework;
use paybond_demos::cli::DemoArgs;

/// Runs the canonical scenario (rig).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    args: DemoArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    paybond_demos::cli::main(&[Framework::Rig], &cli.args)
}
