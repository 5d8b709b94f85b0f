//! The canonical scenario with the rig demo: `paybond-demo-rig [--gateway URL] [--format table|json]`.

fn main() -> std::process::ExitCode {
    paybond_demos::cli::bin_main(paybond_demos::Framework::Rig)
}
