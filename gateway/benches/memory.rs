//! Memory of the spend state held in memory: `cargo bench -p paybond-gateway --bench
//! memory`. Builds states of open intents and open reservations, each in a process
//! of its own (so that no freed memory is reused), and prints the resident memory
//! each adds (Linux: `/proc/self/statm`), and per item.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // a bench binary

use std::process::Command;

/// Resident memory of this process, in bytes.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// In a child: builds the state and prints the bytes it added.
fn child(intents: usize, reservations: usize) {
    let before = resident();
    let state = paybond_gateway::bench::spend_state(intents, reservations);
    println!("{}", resident().saturating_sub(before));
    drop(state);
}

/// Runs [`child`] in a new process; the bytes it added.
fn measure(label: &str, intents: usize, reservations: usize) -> f64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["measure", &intents.to_string(), &reservations.to_string()])
        .output()
        .unwrap();
    let bytes: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    println!(
        "{label:<44} {:>8.1} MiB resident added",
        bytes / (1024.0 * 1024.0)
    );
    bytes
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("measure") {
        child(args[2].parse().unwrap(), args[3].parse().unwrap());
        return;
    }
    println!("spend state in memory (one tenant), each row in a process of its own\n");
    let intents = measure("100,000 open intents, no reservation", 100_000, 0);
    println!(
        "{:<44} {:>8.0} bytes per open intent",
        "",
        intents / 100_000.0
    );
    let reservations = measure("1,000,000 open reservations, 1 intent", 1, 1_000_000);
    println!(
        "{:<44} {:>8.0} bytes per open reservation",
        "",
        reservations / 1_000_000.0
    );
    measure(
        "1,000,000 open reservations, 10,000 intents",
        10_000,
        1_000_000,
    );
}
