//! `paybond-mcp-server [--tool-policy readonly|default]`: the Paybond tools over MCP
//! on stdio. Needs `PAYBOND_GATEWAY_URL` and `PAYBOND_API_KEY` (an agent key), from
//! the environment or `.env.local` (as `paybond dev loop --offline` writes them).

use std::process::ExitCode;

use paybond_adapter_mcp::paybond_tools::{ExposedTools, PaybondToolsServer};
use paybond_middleware_core::HttpGateway;
use rmcp::ServiceExt;

const USAGE: &str = "usage: paybond-mcp-server [--tool-policy readonly|spend-write|allowlist] \
    [--tool-allowlist a,b] [--version]\n\
    environment (or .env.local): PAYBOND_GATEWAY_URL (e.g. http://127.0.0.1:8787), \
    PAYBOND_API_KEY (agent key), PAYBOND_MCP_TOOL_POLICY, PAYBOND_MCP_TOOL_ALLOWLIST";

/// What the command line asks for.
enum Wanted {
    Serve(ExposedTools),
    Help,
    Version,
}

/// The flags, over `PAYBOND_MCP_TOOL_POLICY` and `PAYBOND_MCP_TOOL_ALLOWLIST`
/// (`env` looks them up).
fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Wanted, String> {
    let mut policy = env("PAYBOND_MCP_TOOL_POLICY");
    let mut allowlist = env("PAYBOND_MCP_TOOL_ALLOWLIST");
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        match flag {
            "-h" | "--help" => return Ok(Wanted::Help),
            "-V" | "--version" => return Ok(Wanted::Version),
            "--tool-policy" | "--tool-allowlist" => {
                let value = inline
                    .or_else(|| it.next().cloned())
                    .ok_or_else(|| format!("{flag} needs a value"))?;
                if flag == "--tool-policy" {
                    policy = Some(value);
                } else {
                    allowlist = Some(value);
                }
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    ExposedTools::parse(
        policy.as_deref().unwrap_or("spend-write"),
        allowlist.as_deref(),
    )
    .map(Wanted::Serve)
}

#[tokio::main]
async fn main() -> ExitCode {
    // stdout carries the protocol: logs go to stderr, warnings and errors only.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .try_init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let policy = match parse(&args, |k| std::env::var(k).ok().filter(|v| !v.is_empty())) {
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
