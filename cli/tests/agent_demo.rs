//! `paybond agent demo`: the README's main job, with its exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::process::Command;

fn demo(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_paybond"))
        .arg("agent")
        .arg("demo")
        .args(args)
        .current_dir(dir)
        .env_remove("PAYBOND_GATEWAY_URL")
        .env_remove("PAYBOND_API_KEY")
        .env_remove("PAYBOND_OPERATOR_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_main_job_and_its_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    // Every framework, embedded; mcp starts this binary again as its MCP server.
    let (code, out, err) = demo(&["all", "--format", "json"], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    let summaries: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("summary").is_some())
        .collect();
    let frameworks: Vec<&str> = summaries
        .iter()
        .map(|s| s["summary"]["framework"].as_str().unwrap())
        .collect();
    assert_eq!(frameworks, ["generic", "openai", "rig", "mcp"]);
    assert!(
        summaries
            .iter()
            .all(|s| s["summary"]["consumed_cents"] == 30_700)
    );
    // Machine-readable for CI: each trace line says its framework, each summary
    // whether it passed and how it differs (nothing), and the run ends with a tally.
    for s in &summaries {
        assert_eq!(s["summary"]["passed"], true, "{s}");
        assert_eq!(s["summary"]["problems"], serde_json::json!([]), "{s}");
    }
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let entries: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v.get("tool_call_id").is_some())
        .collect();
    assert_eq!(entries.len(), 24);
    assert!(entries.iter().all(|e| e["framework"].is_string()));
    // Every decided line carries its proof trace (the MCP demo's too, read back
    // from its server's trace file); passthroughs have none.
    for e in &entries {
        let decided = e["decision_id"].is_string();
        assert_eq!(e["checks"].is_array(), decided, "{e}");
    }
    let denied = entries.iter().find(|e| e["outcome"] == "deny").unwrap();
    let last = denied["checks"].as_array().unwrap().last().unwrap();
    assert_eq!(
        (last["name"].as_str(), last["result"].as_str()),
        (Some("per_call_cap"), Some("fail")),
        "{denied}"
    );
    assert_eq!(
        lines.last().unwrap(),
        &serde_json::json!({"all": {"passed": 4, "total": 4}})
    );
    assert!(err.is_empty(), "stderr without -v: {err}");
    let (code, text, _) = demo(&["all"], dir.path());
    assert_eq!(code, 0);
    assert!(text.trim_end().ends_with("4/4 passed"), "{text}");

    let (code, _, err) = demo(&["cobol"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("generic, openai, rig, mcp"), "{err}");

    // No gateway there: an environment error (2), nothing runs, the keys are not printed.
    std::fs::write(
        dir.path().join(".env.local"),
        "PAYBOND_API_KEY=paybond_sk_sandbox_SECRETA\nPAYBOND_OPERATOR_API_KEY=paybond_sk_sandbox_SECRETO\n",
    )
    .unwrap();
    let (code, out, err) = demo(&["generic", "--gateway", "http://127.0.0.1:9"], dir.path());
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("cannot reach the gateway"), "{err}");
    assert!(!format!("{out}{err}").contains("SECRET"));
    // The same in --format json: an envelope line on stdout.
    let (code, out, err) = demo(
        &[
            "generic",
            "--gateway",
            "http://127.0.0.1:9",
            "--format",
            "json",
        ],
        dir.path(),
    );
    assert_eq!(code, 2, "{out}{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["ok"], false, "{out}");
    assert_eq!(line["framework"], "generic", "{out}");
    assert_eq!(line["error"]["category"], "environment", "{out}");
    assert!(!out.contains("SECRET"));
    // Without keys for --gateway: a usage error.
    std::fs::remove_file(dir.path().join(".env.local")).unwrap();
    let (code, _, err) = demo(&["generic", "--gateway", "http://127.0.0.1:9"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("PAYBOND_API_KEY"), "{err}");
}

#[test]
fn the_rig_demo_runs_with_claude_and_only_it_does() {
    let dir = tempfile::tempdir().unwrap();
    for scenario in ["canonical", "governed"] {
        let (code, out, err) = demo(
            &[
                "rig",
                "--provider",
                "anthropic",
                "--scenario",
                scenario,
                "--format",
                "json",
            ],
            dir.path(),
        );
        assert_eq!(code, 0, "{out}{err}");
        let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(summary["summary"]["passed"], true, "{summary}");
        assert_eq!(summary["summary"]["framework"], "rig");
    }
    let (code, out, _) = demo(
        &["openai", "--provider", "anthropic", "--format", "json"],
        dir.path(),
    );
    assert_eq!(code, 2, "{out}");
    let err: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(err["error"]["code"], "usage_error", "{err}");
}

#[test]
fn completion_scripts_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_paybond"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for command in [
            "agent",
            "policy",
            "dev",
            "approvals",
            "ledger",
            "rotate-root-key",
        ] {
            assert!(script.contains(command), "{shell}: no {command}");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_paybond"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
