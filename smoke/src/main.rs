//! The smoke runner: every demo binary (the rig demo twice: with the OpenAI and the
//! Anthropic Messages API), in both scenarios (canonical and governed),
//! on the embedded gateway and against a `paybond dev loop --offline` it starts on a
//! free port, each JSON trace checked against the scenario's expected outcomes
//! (demos/README.md). Prints a pass/fail table; exits 1 on any mismatch, 2 when a
//! binary is missing or the gateway does not start.
//!
//! The binaries are looked up next to this one (`target/<profile>/`), or in
//! `PAYBOND_BIN_DIR`; build them first: `cargo build --workspace --bins`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const FRAMEWORKS: [&str; 4] = ["generic", "openai", "rig", "mcp"];
/// The runs of each scenario and gateway: the row's name, the demo's framework,
/// and the demo's extra flags (the rig demo runs once more with Claude's API).
const RUNS: [(&str, &str, &[&str]); 5] = [
    ("generic", "generic", &[]),
    ("openai", "openai", &[]),
    ("rig", "rig", &[]),
    ("rig/claude", "rig", &["--provider", "anthropic"]),
    ("mcp", "mcp", &[]),
];
const SCENARIOS: [&str; 2] = ["canonical", "governed"];

/// `(tool, amount_cents, outcome, reason_codes, finalization, actual_cents)` of each
/// entry of `scenario`.
fn expected_entries(scenario: &str) -> Vec<Value> {
    if scenario == "governed" {
        return governed_entries();
    }
    let book = "travel.book_hotel";
    vec![
        json!(["travel.search_hotels", null, "passthrough", [], null, null]),
        json!([book, 12000, "allow", [], "consumed", 12000]),
        json!([
            book,
            18700,
            "hold",
            ["approval_threshold_exceeded"],
            null,
            null
        ]),
        json!([
            book,
            18700,
            "allow",
            ["approval_token_accepted"],
            "consumed",
            18700
        ]),
        json!([book, 25000, "deny", ["tool_cap_exceeded"], null, null]),
        json!([book, 9000, "allow", ["tool_failed"], "released", null]),
    ]
}

/// The governed scenario's entries: phase deny, sensitive-data deny, the trip's two
/// stays (consumed, then failed and released) and the trip itself, then after the
/// policy reload a deny under the lowered cap and an allow.
fn governed_entries() -> Vec<Value> {
    let book = "travel.book_hotel";
    vec![
        json!(["travel.search_hotels", null, "passthrough", [], null, null]),
        json!([book, 12000, "deny", ["phase_not_committed"], null, null]),
        json!([
            book,
            null,
            "deny",
            ["sensitive_data_in_arguments"],
            null,
            null
        ]),
        json!([book, 12000, "allow", [], "consumed", 12000]),
        json!([book, 9000, "allow", ["tool_failed"], "released", null]),
        json!([
            "travel.book_trip",
            null,
            "passthrough",
            ["tool_failed"],
            null,
            null
        ]),
        json!([book, 12000, "deny", ["tool_cap_exceeded"], null, null]),
        json!([book, 8000, "allow", [], "consumed", 8000]),
    ]
}

/// The summary a run of `scenario` must print (`framework` and `gateway` aside).
fn expected_summary(scenario: &str) -> Value {
    if scenario == "governed" {
        json!({"scenario": "governed", "consumed_cents": 20000, "released_cents": 9000,
               "holds": 0, "denies": 3, "compensations": 1, "policy_reloads": 1})
    } else {
        json!({"scenario": "canonical", "consumed_cents": 30700, "released_cents": 9000,
               "holds": 1, "denies": 1, "compensations": 0, "policy_reloads": 0})
    }
}

/// Every way a demo's JSON output differs from `scenario`.
fn check(framework: &str, scenario: &str, gateway: &str, stdout: &str) -> Vec<String> {
    let lines: Vec<Value> = match stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
    {
        Ok(lines) => lines,
        Err(e) => return vec![format!("output is not JSON lines: {e}")],
    };
    let Some((summary, entries)) = lines.split_last() else {
        return vec!["no output".to_owned()];
    };
    let mut problems = Vec::new();
    let got: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!([
                e["tool"],
                e["amount_cents"],
                e["outcome"],
                e["reason_codes"],
                e["finalization"],
                e["actual_cents"]
            ])
        })
        .collect();
    let expected = expected_entries(scenario);
    if got.len() != expected.len() {
        problems.push(format!(
            "{} trace entries, expected {}",
            got.len(),
            expected.len()
        ));
    }
    for (i, (g, x)) in got.iter().zip(&expected).enumerate() {
        if g != x {
            problems.push(format!("entry {}: {g} (expected {x})", i + 1));
        }
    }
    for e in entries {
        let keys = [
            "tool_call_id",
            "tool",
            "operation",
            "amount_cents",
            "outcome",
            "reason_codes",
            "decision_id",
            "finalization",
            "actual_cents",
        ];
        if let Some(missing) = keys.iter().find(|k| e.get(**k).is_none()) {
            problems.push(format!("an entry has no `{missing}`"));
            break;
        }
        if e["framework"] != framework {
            problems.push(format!(
                "an entry's framework is {}, not {framework}",
                e["framework"]
            ));
            break;
        }
    }
    let mut want = json!({"summary": {
        "framework": framework, "gateway": gateway, "open_reservations": 0, "ledger_valid": true,
        "passed": true, "problems": []
    }});
    if let (Some(want), Value::Object(end)) =
        (want["summary"].as_object_mut(), expected_summary(scenario))
    {
        want.extend(end);
    }
    if *summary != want {
        problems.push(format!("summary {summary} (expected {want})"));
    }
    problems
}

struct DevLoop {
    child: Child,
    url: String,
}

impl Drop for DevLoop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dev_loop(bin: &Path, dir: &Path) -> Result<DevLoop, String> {
    let mut child = Command::new(bin)
        .args(["dev", "loop", "--offline", "--port", "0", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--env-file")
        .arg(dir.join(".env.local"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| "paybond dev loop did not print `listening on`".to_owned())?;
    Ok(DevLoop { child, url })
}

fn bin_dir() -> PathBuf {
    std::env::var_os("PAYBOND_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
        })
        .unwrap_or_else(|| PathBuf::from("."))
}

fn main() -> ExitCode {
    let dir = bin_dir();
    let bin = |name: &str| dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let missing: Vec<String> = std::iter::once("paybond".to_owned())
        .chain(FRAMEWORKS.iter().map(|f| format!("paybond-demo-{f}")))
        .filter(|b| !bin(b).exists())
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "error: missing in {}: {} (build them: cargo build --workspace --bins)",
            dir.display(),
            missing.join(", ")
        );
        return ExitCode::from(2);
    }
    let Ok(tmp) = tempfile::tempdir() else {
        eprintln!("error: cannot create a temporary directory");
        return ExitCode::from(2);
    };
    let dev = match start_dev_loop(&bin("paybond"), tmp.path()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "{:<10} {:<9} {:<9} {:<6} {:>8}  detail",
        "demo", "scenario", "gateway", "result", "seconds"
    );
    let mut failed = 0;
    let runs = SCENARIOS.len() * RUNS.len() * 2;
    // Sequential: the governed scenario publishes the dev loop tenant's policy while
    // it runs (and puts the bundled one back).
    for (scenario, gateway) in SCENARIOS
        .iter()
        .flat_map(|s| ["embedded", "http"].map(|g| (*s, g)))
    {
        for (row, framework, flags) in RUNS {
            let mut cmd = Command::new(bin(&format!("paybond-demo-{framework}")));
            cmd.args(["--format", "json", "--scenario", scenario])
                .args(flags)
                .env_remove("PAYBOND_GATEWAY_URL")
                .env_remove("OPENAI_API_KEY")
                .env_remove("ANTHROPIC_API_KEY");
            if gateway == "http" {
                cmd.args(["--gateway", &dev.url, "--env-file"])
                    .arg(tmp.path().join(".env.local"));
            }
            let started = Instant::now();
            let (problems, code) = match cmd.output() {
                Ok(out) => {
                    let mut problems = check(
                        framework,
                        scenario,
                        gateway,
                        &String::from_utf8_lossy(&out.stdout),
                    );
                    if !out.status.success() {
                        let err = String::from_utf8_lossy(&out.stderr);
                        problems.push(format!(
                            "exit {:?}: {}",
                            out.status.code(),
                            err.lines().last().unwrap_or_default()
                        ));
                    }
                    (problems, out.status.code())
                }
                Err(e) => (vec![format!("cannot run: {e}")], None),
            };
            let ok = problems.is_empty() && code == Some(0);
            failed += usize::from(!ok);
            println!(
                "{row:<10} {scenario:<9} {gateway:<9} {:<6} {:>8.2}  {}",
                if ok { "pass" } else { "FAIL" },
                started.elapsed().as_secs_f64(),
                problems.join("; ")
            );
        }
    }
    drop(dev);
    if failed == 0 {
        println!("all {runs} runs reached the expected end state");
        ExitCode::SUCCESS
    } else {
        println!("{failed} of {runs} runs failed");
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a passing demo of `scenario` prints.
    fn passing(scenario: &str) -> String {
        let mut summary = json!({"framework": "generic", "gateway": "embedded",
            "open_reservations": 0, "ledger_valid": true, "passed": true, "problems": []});
        if let (Some(s), Value::Object(end)) = (summary.as_object_mut(), expected_summary(scenario))
        {
            s.extend(end);
        }
        expected_entries(scenario)
            .iter()
            .enumerate()
            .map(|(i, e)| {
                json!({"tool_call_id": format!("c{i}"), "tool": e[0], "operation": e[0], "amount_cents": e[1],
                       "outcome": e[2], "reason_codes": e[3], "decision_id": null, "finalization": e[4], "actual_cents": e[5],
                       "framework": "generic"})
                .to_string()
                    + "\n"
            })
            .collect::<String>()
            + &json!({ "summary": summary }).to_string()
    }

    #[test]
    fn a_wrong_trace_is_caught() {
        let good = passing("canonical");
        let c = |gateway: &str, out: &str| check("generic", "canonical", gateway, out);
        assert_eq!(c("embedded", &good), Vec::<String>::new());
        assert_eq!(c("http", &good).len(), 1);
        let bad = good.replacen("\"deny\"", "\"allow\"", 1);
        assert_eq!(c("embedded", &bad).len(), 1);
        let elsewhere = good.replace("\"framework\":\"generic\"", "\"framework\":\"rig\"");
        let problems = c("embedded", &elsewhere);
        assert!(
            problems.iter().any(|p| p.contains("framework is \"rig\"")),
            "{problems:?}"
        );
        assert!(!c("embedded", "garbage").is_empty());
        assert!(!c("embedded", "").is_empty());
    }

    #[test]
    fn each_scenario_is_checked_against_its_own_trace() {
        let governed = passing("governed");
        assert_eq!(
            check("generic", "governed", "embedded", &governed),
            Vec::<String>::new()
        );
        // The other scenario's output is not a pass.
        assert!(!check("generic", "canonical", "embedded", &governed).is_empty());
        assert!(!check("generic", "governed", "embedded", &passing("canonical")).is_empty());
        // No policy reload: caught.
        let no_reload = governed.replace("\"policy_reloads\":1", "\"policy_reloads\":0");
        assert_ne!(no_reload, governed);
        assert_eq!(
            check("generic", "governed", "embedded", &no_reload).len(),
            1
        );
    }
}
