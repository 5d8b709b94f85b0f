//! The command line shared by the demo binaries and `paybond agent demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, ValueEnum};

use crate::{DemoError, Framework, GatewayChoice, Provider, Scenario};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A trace table and the summary.
    #[value(alias = "text")]
    Table,
    /// One JSON object per trace entry, then `{"summary": ..}`.
    Json,
}

/// Flags of every demo.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Run against this gateway (e.g. `paybond dev loop --offline`) instead of the embedded one.
    #[arg(long, env = "PAYBOND_GATEWAY_URL")]
    pub gateway: Option<String>,
    /// Env file with PAYBOND_API_KEY and PAYBOND_OPERATOR_API_KEY for --gateway.
    #[arg(long, default_value = ".env.local")]
    pub env_file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Which scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::Canonical)]
    pub scenario: Scenario,
    /// The model API the agent talks to (rig: openai or anthropic).
    #[arg(long, value_enum, default_value_t = Provider::Openai)]
    pub provider: Provider,
    /// Also show warnings (retries of gateway calls) on stderr.
    #[arg(short, long)]
    pub verbose: bool,
}

impl DemoArgs {
    /// The gateway these flags choose.
    pub fn gateway_choice(&self) -> GatewayChoice {
        match &self.gateway {
            Some(url) if !url.is_empty() => GatewayChoice::Http {
                url: url.clone(),
                env_file: self.env_file.clone(),
            },
            _ => GatewayChoice::Embedded,
        }
    }
}

/// Runs `frameworks` one after the other, prints each report, and answers the exit
/// code: 0 when every demo reached the expected end state, 1 when one did not, 2 on
/// a usage or environment error.
pub fn main(frameworks: &[Framework], args: &DemoArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let choice = args.gateway_choice();
    let mut code = 0;
    let mut passed = 0;
    for framework in frameworks {
        match runtime.block_on(crate::run(
            *framework,
            args.scenario,
            args.provider,
            &choice,
        )) {
            Ok(report) => {
                match args.format {
                    Format::Table => println!("{}", report.text()),
                    Format::Json => print!("{}", report.json_lines()),
                }
                if report.passed() {
                    passed += 1;
                } else {
                    code = code.max(1);
                }
            }
            Err(DemoError::Usage(message)) => {
                report_error(args.format, *framework, "usage", "usage_error", &message);
                return ExitCode::from(2);
            }
            Err(DemoError::Environment(message)) => {
                report_error(
                    args.format,
                    *framework,
                    "environment",
                    "environment_error",
                    &message,
                );
                return ExitCode::from(2);
            }
            Err(e) => {
                report_error(
                    args.format,
                    *framework,
                    "demo",
                    "demo_failed",
                    &format!("the {} demo failed: {e}", framework.name()),
                );
                code = code.max(1);
            }
        }
    }
    if frameworks.len() > 1 {
        match args.format {
            Format::Table => println!("{passed}/{} passed", frameworks.len()),
            Format::Json => println!(
                "{}",
                serde_json::json!({"all": {"passed": passed, "total": frameworks.len()}})
            ),
        }
    }
    ExitCode::from(code)
}

/// An error: `error: message` on stderr, or with `--format json` an envelope line on
/// stdout (`ok: false`, `error: {category, code, message, details}`), as every
/// `paybond` command prints its errors.
fn report_error(format: Format, framework: Framework, category: &str, code: &str, message: &str) {
    match format {
        Format::Table => eprintln!("error: {message}"),
        Format::Json => println!(
            "{}",
            serde_json::json!({
                "ok": false,
                "command": "agent demo",
                "framework": framework.name(),
                "data": null,
                "warnings": [],
                "request_id": null,
                "error": {"category": category, "code": code, "message": message, "details": null},
            })
        ),
    }
}

/// The flags of a single-demo binary.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Runs a scenario (canonical or governed) with one agent framework."
)]
struct Single {
    #[command(flatten)]
    args: DemoArgs,
}

/// `main` of a `paybond-demo-<framework>` binary.
pub fn bin_main(framework: Framework) -> ExitCode {
    let single = Single::parse();
    // Logs on stderr (warnings with -v), spans and metrics over OTLP when the
    // OTEL_* variables ask for it; flushed when the guard drops.
    let level = if single.args.verbose { "warn" } else { "error" };
    let service = format!("paybond-demo-{}", framework.name());
    let _telemetry = match paybond_middleware_core::telemetry::init_with_log_filter(&service, level)
    {
        Ok(t) => t,
        Err(e) => {
            report_error(
                single.args.format,
                framework,
                "usage",
                "invalid_telemetry_settings",
                &e.to_string(),
            );
            return ExitCode::from(2);
        }
    };
    main(&[framework], &single.args)
}
