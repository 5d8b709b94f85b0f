//! `paybond-mcp-server [--tool-policy readonly|default]`: the Paybond tools over MCP
//! on stdio. Needs `PAYBOND_GATEWAY_URL` and `PAYBOND_API_KEY` (an agent key).

use std::process::ExitCode;

use paybond_adapter_mcp::paybond_tools::{PaybondToolsServer, ToolPolicy};
use paybond_middleware_core::{ApiKey, HttpGateway};
use rmcp::ServiceExt;

const USAGE: &str = "usage: paybond-mcp-server [--tool-policy readonly|default]\n\
    environment: PAYBOND_GATEWAY_URL (e.g. http://127.0.0.1:8787), PAYBOND_API_KEY (agent key)";

fn parse(args: &[String]) -> Result<ToolPolicy, String> {
    let mut policy = ToolPolicy::Default;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = match arg.as_str() {
            "--tool-policy" => it.next().map(String::as_str),
            "-h" | "--help" => return Err(String::new()),
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
    Ok(policy)
}

#[tokio::main]
async fn main() -> ExitCode {
    // stdout carries the protocol: logs go to stderr.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .try_init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let policy = match parse(&args) {
        Ok(p) => p,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (Ok(url), Ok(key)) = (
        std::env::var("PAYBOND_GATEWAY_URL"),
        std::env::var("PAYBOND_API_KEY"),
    ) else {
        eprintln!("error: PAYBOND_GATEWAY_URL and PAYBOND_API_KEY must be set\n{USAGE}");
        return ExitCode::from(2);
    };
    let gateway = match HttpGateway::builder(&url, ApiKey::new(key)).build() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
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
