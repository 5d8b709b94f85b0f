//! `paybond-mcp-server [--tool-policy readonly|default]`: the Paybond tools over MCP
//! on stdio. Needs `PAYBOND_GATEWAY_URL` and `PAYBOND_API_KEY` (an agent key), from
//! the environment or `.env.local` (as `paybond dev loop --offline` writes them).

use std::process::ExitCode;

use paybond_adapter_mcp::paybond_tools::{PaybondToolsServer, ToolPolicy};
use paybond_middleware_core::HttpGateway;
use rmcp::ServiceExt;

const USAGE: &str = "usage: paybond-mcp-server [--tool-policy readonly|default] [--version]\n\
    environment (or .env.local): PAYBOND_GATEWAY_URL (e.g. http://127.0.0.1:8787), \
    PAYBOND_API_KEY (agent key)";

/// What the command line asks for.
enum Wanted {
    Serve(ToolPolicy),
    Help,
    Version,
}

fn parse(args: &[String]) -> Result<Wanted, String> {
    let mut policy = ToolPolicy::Default;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = match arg.as_str() {
            "--tool-policy" => it.next().map(String::as_str),
            "-h" | "--help" => return Ok(Wanted::Help),
            "-V" | "--version" => return Ok(Wanted::Version),
            other => match other.strip_prefix("--tool-policy=") {
                Some(v) => Some(v),
                None => return Err(format!("unknown argument `{other}`")),
            },
        };
        policy = match value {
            Some("readonly") => ToolPolicy::ReadOnly,
            Some("default") => ToolPolicy::Default,
            Some(v) => return Err(format!("--tool-policy is readonly or default, not `{v}`")),
            None => return Err("--tool-policy needs a value".to_owned()),
        };
    }
    Ok(Wanted::Serve(policy))
}

#[tokio::main]
async fn main() -> ExitCode {
    // stdout carries the protocol: logs go to stderr, warnings and errors only.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .try_init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let policy = match parse(&args) {
        Ok(Wanted::Serve(p)) => p,
        Ok(Wanted::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Wanted::Version) => {
            println!("paybond-mcp-server {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let gateway = match HttpGateway::from_env() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let server = PaybondToolsServer::new(gateway, policy);
    match server.serve(rmcp::transport::stdio()).await {
        Ok(running) => match running.waiting().await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
