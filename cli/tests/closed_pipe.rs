//! A command whose stdout is closed before it writes (`paybond … | true`) ends
//! quietly with exit 0, as `ls | head` does, and prints no panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::process::{Command, Stdio};

#[test]
fn a_closed_stdout_ends_each_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["completions", "bash"][..],
        &["policy", "schema"],
        &["agent", "demo", "generic"],
        &["agent", "demo", "generic", "--format", "json"],
        &["--help"],
    ] {
        // The pipe's read end is closed before the command starts: every write fails.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_paybond"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("PAYBOND_GATEWAY_URL")
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
