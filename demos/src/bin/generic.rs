//! The canonical scenario with the generic demo: `paybond-demo-generic [--gateway URL] [--format table|json]`.

fn main() -> std::process::ExitCode {
    paybond_demos::cli::bin_main(paybond_demos::Framework::Generic)
}
