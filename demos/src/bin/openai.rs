//! The canonical scenario with the openai demo: `paybond-demo-openai [--gateway URL] [--format table|json]`.

fn main() -> std::process::ExitCode {
    paybond_demos::cli::bin_main(paybond_demos::Framework::Openai)
}
