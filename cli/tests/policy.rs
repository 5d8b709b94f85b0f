//! `paybond policy`: the binary run as a user runs it, exit codes and output included.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn paybond(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paybond"))
        .args(args)
        .current_dir(dir)
        .env_remove("PAYBOND_GATEWAY_URL")
        .env_remove("PAYBOND_API_KEY")
        .env_remove("PAYBOND_ADMIN_API_KEY")
        .output()
        .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn the_bundled_policies_resolve_and_the_merge_is_reported() {
    let o = paybond(
        &[
            "policy",
            "validate-tools",
            "--file",
            "policies/tenant-overlay.policy.yaml",
            "--resolve-inheritance",
            "--local-only",
            "--format",
            "json",
        ],
        &repo(),
    );
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let out: Value = serde_json::from_str::<Value>(&stdout(&o)).unwrap()["data"].clone();
    assert_eq!(out["valid"], true);
    assert_eq!(out["errors"], serde_json::json!([]));
    assert_eq!(out["effective"]["version"], 1);
    assert_eq!(
        out["effective"]["spend_controls"]["tools"]["travel.book_hotel"]["approval_threshold_cents"],
        15_000
    );
    assert_eq!(out["report"]["org_policy_id"], "paybond-travel-org");
    assert_eq!(out["report"]["org_id"], "org_paybond_demo");
    assert_eq!(out["report"]["denied_widenings"], serde_json::json!([]));
}

#[test]
fn an_invalid_file_exits_1_with_every_problem_located() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "version: 1\nname: p\ntools:\n  pay:\n    side_effecting: true\n    max_spend_cent: 5\nspend_controls:\n  caps:\n    - {scope: tenant, window: week, limit_cents: 1, timezone: Atlantis/Capital}\n",
    )
    .unwrap();

    let o = paybond(
        &["policy", "validate-tools", "--file", "p.yaml"],
        dir.path(),
    );
    assert_eq!(code(&o), 1);
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("p.yaml:4:3: error: tools.pay.evidence_preset: a side-effecting tool needs an evidence_preset"),
        "{text}"
    );
    assert!(lines[1].starts_with("p.yaml:6:5: error: tools.pay.max_spend_cent: unknown key `max_spend_cent` (did you mean `max_spend_cents`?)"), "{text}");
    assert!(lines[2].starts_with("p.yaml:9:23: error: spend_controls.caps[0].window: `week` is not one of: hour, day, month [policy.invalid_value]"), "{text}");
    assert!(
        lines[3].contains(
            "spend_controls.caps[0].timezone: `Atlantis/Capital` is not an IANA timezone"
        ),
        "{text}"
    );
    assert_eq!(lines[4], "p.yaml: invalid (4 errors, 0 warnings)");

    let o = paybond(
        &[
            "policy",
            "validate-tools",
            "--file",
            "p.yaml",
            "--format",
            "json",
        ],
        dir.path(),
    );
    assert_eq!(code(&o), 1);
    let out: Value = serde_json::from_str::<Value>(&stdout(&o)).unwrap()["data"].clone();
    assert_eq!(out["valid"], false);
    let errors = out["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 4);
    assert_eq!(
        errors[1],
        serde_json::json!({
            "file": "p.yaml", "line": 6, "column": 5,
            "path": "tools.pay.max_spend_cent", "code": "policy.unknown_key",
            "message": errors[1]["message"],
        })
    );
    assert!(out.get("effective").is_none());
}

#[test]
fn a_widening_overlay_is_refused_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("policies/org-base.policy.yaml"),
        dir.path().join("org-base.policy.yaml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tenant.yaml"),
        "version: 2\nname: tenant\nextends:\n  org_policy_id: paybond-travel-org\n  org_id: org_paybond_demo\n  base_policy: org-base.policy.yaml\noverrides:\n  default_deny: false\n  intent:\n    budget: {max_spend_usd: 5000}\n",
    )
    .unwrap();
    let o = paybond(
        &[
            "policy",
            "validate-tools",
            "--file",
            "tenant.yaml",
            "--resolve-inheritance",
            "--format",
            "json",
        ],
        dir.path(),
    );
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let out: Value = serde_json::from_str::<Value>(&stdout(&o)).unwrap()["data"].clone();
    let got: Vec<(u64, &str, &str)> = out["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["path"].as_str().unwrap(),
                e["code"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        got.contains(&(
            10,
            "overrides.intent.budget.max_spend_usd",
            "policy.cannot_raise_budget_cap"
        )),
        "{got:?}"
    );
    // `default_deny: false` under an org that denies is refused too.
    assert!(
        got.contains(&(
            8,
            "overrides.default_deny",
            "policy.cannot_relax_default_deny"
        )),
        "{got:?}"
    );
    let denied: Vec<&str> = out["report"]["denied_widenings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["code"].as_str())
        .collect();
    assert_eq!(
        denied,
        [
            "policy.cannot_relax_default_deny",
            "policy.cannot_raise_budget_cap"
        ]
    );
    assert!(out.get("effective").is_none());

    // A base that is not the one the overlay names.
    std::fs::write(dir.path().join("other.yaml"), "version: 1\nname: other\n").unwrap();
    let o = paybond(
        &[
            "policy",
            "validate-tools",
            "--file",
            "tenant.yaml",
            "--base",
            "other.yaml",
            "--resolve-inheritance",
        ],
        dir.path(),
    );
    assert_eq!(code(&o), 1);
    assert!(
        stdout(&o).contains("tenant.yaml:4:3: error: extends.org_policy_id: the policy extends `paybond-travel-org` but the base given is `other` [policy.base_mismatch]"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn init_org_then_extend_gives_a_valid_pair() {
    let dir = tempfile::tempdir().unwrap();
    let o = paybond(
        &[
            "policy",
            "init-org",
            "--policy-id",
            "acme-agent-spend-v1",
            "--out",
            "org-base.policy.yaml",
            "--operation",
            "travel.book_hotel",
            "--evidence-preset",
            "cost_and_completion",
            "--max-spend-cents",
            "20000",
        ],
        dir.path(),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = paybond(
        &[
            "policy",
            "extend",
            "--base",
            "org-base.policy.yaml",
            "--out",
            "paybond.policy.yaml",
        ],
        dir.path(),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let overlay = std::fs::read_to_string(dir.path().join("paybond.policy.yaml")).unwrap();
    assert!(
        overlay.contains("org_policy_id: acme-agent-spend-v1"),
        "{overlay}"
    );
    assert!(overlay.contains("base_digest: \"sha256:"), "{overlay}");

    let o = paybond(
        &[
            "policy",
            "validate-tools",
            "--file",
            "paybond.policy.yaml",
            "--resolve-inheritance",
            "--format",
            "json",
        ],
        dir.path(),
    );
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    let out: Value = serde_json::from_str::<Value>(&stdout(&o)).unwrap()["data"].clone();
    assert_eq!(
        out["effective"]["tools"]["travel.book_hotel"]["max_spend_cents"],
        20_000
    );

    // The base changes after the overlay was written: its digest no longer matches.
    let base = std::fs::read_to_string(dir.path().join("org-base.policy.yaml")).unwrap();
    std::fs::write(
        dir.path().join("org-base.policy.yaml"),
        base.replace("20000", "30000"),
    )
    .unwrap();
    let o = paybond(
        &[
            "policy",
            "validate-tools",
            "--file",
            "paybond.policy.yaml",
            "--resolve-inheritance",
        ],
        dir.path(),
    );
    assert_eq!(code(&o), 1);
    assert!(
        stdout(&o).contains("[policy.base_digest_mismatch]"),
        "{}",
        stdout(&o)
    );

    // Existing files are kept unless --force.
    let o = paybond(
        &[
            "policy",
            "extend",
            "--base",
            "org-base.policy.yaml",
            "--out",
            "paybond.policy.yaml",
        ],
        dir.path(),
    );
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("pass --force"), "{}", stderr(&o));
}

#[test]
fn usage_and_environment_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[&[&str]] = &[
        &["policy", "validate-tools"],
        &["policy", "validate-tools", "--file", "missing.yaml"],
        &[
            "policy",
            "validate-tools",
            "--file",
            "x",
            "--remote",
            "--local-only",
        ],
        &["policy", "validate-tools", "--file", "x", "--format", "xml"],
        &[
            "policy",
            "init-org",
            "--policy-id",
            "p",
            "--out",
            "o.yaml",
            "--operation",
            "Bad Tool",
            "--max-spend-cents",
            "1",
        ],
        &[
            "policy",
            "init-org",
            "--policy-id",
            "Bad",
            "--out",
            "o.yaml",
            "--operation",
            "t",
            "--max-spend-cents",
            "1",
        ],
        // A zero cap, an evidence preset the gateway does not know.
        &[
            "policy",
            "init-org",
            "--policy-id",
            "p",
            "--out",
            "o.yaml",
            "--operation",
            "t.pay",
            "--max-spend-cents",
            "0",
        ],
        &[
            "policy",
            "init-org",
            "--policy-id",
            "p",
            "--out",
            "o.yaml",
            "--operation",
            "t.pay",
            "--max-spend-cents",
            "100",
            "--evidence-preset",
            "cost_and_complection",
        ],
        &["policy", "frobnicate"],
    ];
    for args in cases {
        let o = paybond(args, dir.path());
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty(), "{args:?}");
    }
    assert!(!dir.path().join("o.yaml").exists());

    std::fs::write(dir.path().join("p.yaml"), "version: 1\nname: p\n").unwrap();
    let o = paybond(
        &["policy", "validate-tools", "--file", "p.yaml", "--remote"],
        dir.path(),
    );
    assert_eq!(code(&o), 2);
    let err = stderr(&o);
    assert!(err.contains("PAYBOND_GATEWAY_URL"), "{err}");
    assert!(err.contains("PAYBOND_ADMIN_API_KEY"), "{err}");
}

#[test]
fn schema_prints_the_checked_in_schema() {
    let o = paybond(&["policy", "schema"], &repo());
    assert_eq!(code(&o), 0);
    let checked_in = std::fs::read_to_string(repo().join("policies/policy.schema.json")).unwrap();
    assert_eq!(stdout(&o), checked_in);
}

#[test]
fn policy_help_matches_its_snapshot() {
    for (args, snapshot, exit) in [
        (&["--help"][..], "help.txt", 0),
        (&["policy", "--help"][..], "policy-help.txt", 0),
        (
            &["policy", "validate-tools", "--help"][..],
            "policy-validate-tools-help.txt",
            0,
        ),
        (&["spend", "--help"][..], "spend-help.txt", 0),
        // The JSON envelope, on an error that carries nothing variable.
        (
            &[
                "--format",
                "json",
                "policy",
                "validate-tools",
                "--file",
                "missing.yaml",
            ][..],
            "envelope-error.json",
            2,
        ),
    ] {
        let o = paybond(args, &repo());
        assert_eq!(code(&o), exit, "{}", stderr(&o));
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/snapshots")
            .join(snapshot);
        if std::env::var_os("PAYBOND_UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&path, stdout(&o)).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            stdout(&o) == expected,
            "`paybond {}` changed; review it and rerun with PAYBOND_UPDATE_SNAPSHOTS=1:\n{}",
            args.join(" "),
            stdout(&o)
        );
    }
}

#[test]
fn errors_in_json_format_are_envelopes() {
    let dir = tempfile::tempdir().unwrap();
    // Refused by the argument parser (--file is missing).
    let o = paybond(
        &["--format", "json", "policy", "validate-tools"],
        dir.path(),
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["category"], "usage");
    assert_eq!(v["error"]["code"], "invalid_arguments");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("--file"),
        "{v}"
    );
    // A file that cannot be read.
    let o = paybond(
        &[
            "policy",
            "validate-tools",
            "--file",
            "missing.yaml",
            "--format=json",
        ],
        dir.path(),
    );
    assert_eq!(code(&o), 2);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["command"], "policy validate-tools");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing.yaml"),
        "{v}"
    );
    // --remote without credentials.
    let o = paybond(
        &[
            "policy",
            "validate-tools",
            "--file",
            "x",
            "--remote",
            "--format",
            "json",
        ],
        dir.path(),
    );
    assert_eq!(code(&o), 2);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["error"]["code"], "missing_credentials", "{v}");
    // The table format keeps its old name.
    let good = repo().join("policies/org-base.policy.yaml");
    let o = paybond(
        &[
            "policy",
            "validate-tools",
            "--file",
            good.to_str().unwrap(),
            "--format",
            "text",
        ],
        dir.path(),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("valid"));
}
