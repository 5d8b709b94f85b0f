//! The canonical scenario with the generic demo: `paybond-demo-generic [--gateway URL] [--format text|json]`.

fn main() -> std::process::ExitCode {
    paybond_demos::cli::bin_main(paybond_demos::Framework::Generic)
}
