//! Mutated policy files: checking never panics, never admits what the types refuse,
//! and every file it accepts round-trips (see `paybond_policies::fuzzing`). The same
//! property is the cargo-fuzz target in `policies/fuzz`; this test runs a fixed,
//! seeded share of it in CI time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

use paybond_policies::bundled;
use paybond_policies::fuzzing::check_input;
use serde_json::{Value, json};

const FULL: &str = r#"
version: 1
name: canonical
default_deny: true
tools:
  travel.book_hotel: {side_effecting: true, max_spend_cents: 20000, evidence_preset: cost_and_completion, vendor_pack: travel, operation: travel.book}
  travel.search_hotels: {side_effecting: false}
  pay.out: {side_effecting: true, spend_from_args: payout.amount_cents, evidence_preset: cost_and_completion}
intent:
  policy_binding: {template_id: t, version_seq: 2, head_digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000"}
  budget: {currency: usd, max_spend_usd: 600}
  allowed_tools: [travel.book_hotel]
adapter: {deny_provider_executed_tools: true}
spend_controls:
  tools:
    travel.book_hotel: {max_per_call_cents: 20000, approval_threshold_cents: 15000, limit_per_hour: 30, allow: true}
  caps:
    - { scope: tenant, window: day, limit_cents: 100000, timezone: UTC }
    - { scope: vendor, key: vendor_acme, window: month, limit_cents: 500000 }
  gates: { warning: 0.50, restrict: 0.75, halt: 0.90 }
  schedule: { active_hours: { start: "09:00", end: "18:00", timezone: America/New_York } }
  vendors: { allow: [vendor_acme] }
  approval: { quorum: 1, timeout_seconds: 300 }
  phases: { payment_phase: COMMIT }
  data: { sensitive_patterns: ["\\b\\d{3}-\\d{2}-\\d{4}\\b"] }
"#;

fn seeds() -> Vec<&'static str> {
    vec![
        FULL,
        bundled::ORG_BASE,
        bundled::TENANT_OVERLAY,
        bundled::CANONICAL_SCENARIO,
        include_str!("../fixtures/org-base.policy.yaml"),
        include_str!("../fixtures/tenant-overlay.policy.yaml"),
    ]
}

/// Values of every type, including the edge cases of each.
fn odd_values() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!(false),
        json!(0),
        json!(1),
        json!(-1),
        json!(1.5),
        json!(u64::MAX),
        json!(4_294_967_296_u64),
        json!(""),
        json!("x"),
        json!("UTC"),
        json!("25:00"),
        json!("(("),
        json!("sha256:00"),
        json!([]),
        json!(["a", 1]),
        json!({}),
        json!({"zz": 1}),
        json!({"side_effecting": true}),
    ]
}

/// Paths to every node of `v`.
fn paths(v: &Value, here: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                here.push(json!(k));
                paths(child, here, out);
                here.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                here.push(json!(i));
                paths(child, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Value {
    path.iter().fold(v, |node, seg| match seg {
        Value::String(k) => &mut node[k.as_str()],
        Value::Number(i) => &mut node[usize::try_from(i.as_u64().unwrap()).unwrap()],
        _ => unreachable!(),
    })
}

fn structural(rng: &mut fastrand::Rng, seed: &str) -> String {
    let mut doc: Value = serde_yaml_ng::from_str(seed).unwrap();
    for _ in 0..rng.usize(1..=3) {
        let mut all = Vec::new();
        paths(&doc, &mut Vec::new(), &mut all);
        let path = all[rng.usize(..all.len())].clone();
        let node = node_mut(&mut doc, &path);
        let values = odd_values();
        match rng.u8(..4) {
            // Replace the node.
            0 | 1 => *node = values[rng.usize(..values.len())].clone(),
            // Add a key, known somewhere in the format or not.
            2 => {
                if let Value::Object(m) = node {
                    let keys = [
                        "side_effecting",
                        "max_spend_cents",
                        "spend_from_args",
                        "timezone",
                        "extends",
                        "overrides",
                        "quorum",
                        "allow",
                        "unknown_key",
                    ];
                    m.insert(
                        keys[rng.usize(..keys.len())].to_owned(),
                        values[rng.usize(..values.len())].clone(),
                    );
                }
            }
            // Remove a key or an item.
            _ => match node {
                Value::Object(m) if !m.is_empty() => {
                    let k = m.keys().nth(rng.usize(..m.len())).unwrap().clone();
                    m.remove(&k);
                }
                Value::Array(items) if !items.is_empty() => {
                    items.remove(rng.usize(..items.len()));
                }
                _ => {}
            },
        }
    }
    serde_yaml_ng::to_string(&doc).unwrap()
}

fn textual(rng: &mut fastrand::Rng, seed: &str) -> String {
    let mut lines: Vec<String> = seed.lines().map(str::to_owned).collect();
    for _ in 0..rng.usize(1..=3) {
        if lines.is_empty() {
            break;
        }
        let i = rng.usize(..lines.len());
        match rng.u8(..6) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let dup = lines[i].clone();
                lines.insert(i, dup);
            }
            2 => {
                let j = rng.usize(..lines.len());
                lines.swap(i, j);
            }
            3 => lines[i].insert(0, ' '),
            4 => {
                let line = &mut lines[i];
                if !line.is_empty() {
                    let at = rng.usize(..line.len());
                    if line.is_char_boundary(at) {
                        let junk = [
                            ":", "{", "}", "[", "]", "-", ",", "\"", "'", "#", "&a", "*a", "!!",
                            "0", "é", "\t",
                        ];
                        line.insert_str(at, junk[rng.usize(..junk.len())]);
                    }
                }
            }
            _ => {
                let line = &mut lines[i];
                if !line.is_empty() {
                    let at = rng.usize(..line.len());
                    if line.is_char_boundary(at) && line.is_char_boundary(at + 1) {
                        line.remove(at);
                    }
                }
            }
        }
    }
    lines.join("\n")
}

#[test]
fn mutated_files_keep_the_checks_and_the_types_in_agreement() {
    let mut rng = fastrand::Rng::with_seed(0x5eed_0001);
    let seeds = seeds();
    for seed in &seeds {
        check_input(seed);
    }
    let (mut valid, mut total) = (0, 0);
    for round in 0..3_000 {
        let seed = seeds[round % seeds.len()];
        let text = if round % 2 == 0 {
            structural(&mut rng, seed)
        } else {
            textual(&mut rng, seed)
        };
        check_input(&text);
        total += 1;
        valid += usize::from(paybond_policies::check_policy(&text, "m").is_valid());
    }
    // Both sides of the property were exercised.
    assert!(
        valid > total / 20 && valid < total * 19 / 20,
        "{valid} of {total} valid"
    );
    eprintln!("{valid} of {total} mutated files valid");
}
