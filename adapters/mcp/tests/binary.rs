//! `paybond-mcp-server` refuses bad flags and a missing gateway with exit code 2.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::process::Command;

fn run(args: &[&str], with_env: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paybond-mcp-server"));
    cmd.args(args)
        .env_remove("PAYBOND_GATEWAY_URL")
        .env_remove("PAYBOND_API_KEY");
    if with_env {
        cmd.env("PAYBOND_GATEWAY_URL", "http://127.0.0.1:9")
            .env("PAYBOND_API_KEY", "paybond_sk_sandbox_SECRET");
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_errors_exit_2_and_name_what_is_missing() {
    let (code, err) = run(&["--tool-policy", "everything"], true);
    assert_eq!(code, 2);
    assert!(err.contains("readonly, spend-write or allowlist"), "{err}");
    let (code, err) = run(
        &["--tool-policy", "allowlist", "--tool-allowlist", "nope"],
        true,
    );
    assert_eq!(code, 2);
    assert!(err.contains("`nope`"), "{err}");
    let (code, err) = run(&["--tool-policy=allowlist"], true);
    assert_eq!(code, 2);
    assert!(err.contains("--tool-allowlist"), "{err}");
    let (code, err) = run(&["--frobnicate"], true);
    assert_eq!(code, 2);
    assert!(err.contains("--frobnicate"), "{err}");
    let (code, err) = run(&["--tool-policy", "readonly"], false);
    assert_eq!(code, 2);
    assert!(
        err.contains("PAYBOND_GATEWAY_URL") && err.contains("PAYBOND_API_KEY"),
        "{err}"
    );
    assert!(!err.contains("SECRET"));
}

#[test]
fn version_and_settings_from_the_env_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_paybond-mcp-server"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("paybond-mcp-server {}", env!("CARGO_PKG_VERSION"))
    );
    // The keys `paybond dev loop` wrote are found in .env.local: with only the
    // gateway URL there, the error names the key that is still missing.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env.local"),
        "PAYBOND_GATEWAY_URL=http://127.0.0.1:9\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_paybond-mcp-server"))
        .current_dir(dir.path())
        .env_remove("PAYBOND_GATEWAY_URL")
        .env_remove("PAYBOND_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: gateway client configuration: PAYBOND_API_KEY is not set"),
        "{err}"
    );
}
