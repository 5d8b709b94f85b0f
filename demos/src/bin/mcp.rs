//! The canonical scenario with the mcp demo: `paybond-demo-mcp [--gateway URL] [--format table|json]`.

fn main() -> std::process::ExitCode {
    // The demo's MCP server is this executable, started again as a child.
    if std::env::var_os(paybond_demos::mcp::CHILD_ENV).is_some() {
        return paybond_demos::mcp::child_main();
    }
    paybond_demos::cli::bin_main(paybond_demos::Framework::Mcp)
}
