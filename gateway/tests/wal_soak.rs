//! Soak: steady verify + complete over loopback HTTP on a SQLite file for a few
//! seconds; the WAL stays within its limit (plus what one checkpoint interval adds)
//! instead of growing with every commit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{BOOK, Fixture};
use paybond_gateway::{EngineConfig, PolicyFile, Storage};
use serde_json::json;

const LIMIT: u64 = 1024 * 1024;
const RUN_FOR: Duration = Duration::from_secs(8);
const CLIENTS: usize = 16;
const POLICY: &str = "version: 1\nname: soak\ndefault_deny: true\ntools:\n  travel.book_hotel: {side_effecting: true, spend_from_args: amount_cents, evidence_preset: cost_and_completion}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_steady_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paybond.db");
    let mut config = EngineConfig::new(Storage::File(path.clone()));
    config.wal_limit_bytes = LIMIT;
    let limit = config.wal_limit_bytes;
    config.default_org_policy = None;
    config.default_tenant_policy = Some(PolicyFile {
        text: POLICY.to_owned(),
        file: "soak.yaml".to_owned(),
    });
    let fx = Fixture::with_config(config);
    let base = common::serve(fx.engine.clone()).await;
    let (intent, token) = fx.intent(1_000_000);
    let agent = fx.keys.agent.expose_secret().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let largest = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, largest) = (stop.clone(), largest.clone());
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        std::thread::spawn(move || {
            let mut samples = 0_u32;
            while !stop.load(Ordering::SeqCst) {
                let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
                largest.fetch_max(size, Ordering::SeqCst);
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        })
    };

    let client = reqwest::Client::new();
    let decisions = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, base, agent) = (client.clone(), base.clone(), agent.clone());
            let token = token.expose_secret().to_owned();
            let decisions = decisions.clone();
            tokio::spawn(async move {
                while started.elapsed() < RUN_FOR {
                    let verify = json!({"intent_id": intent, "token": token, "operation": BOOK,
                        "requested_spend_cents": 1, "tool_name": BOOK, "vendor_id": "vendor_acme"});
                    let answer: serde_json::Value = client
                        .post(format!("{base}/verify"))
                        .bearer_auth(&agent)
                        .json(&verify)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert_eq!(answer["allow"], json!(true), "{answer}");
                    let id = answer["decision_id"].as_str().unwrap();
                    let status = client
                        .post(format!("{base}/v1/spend/decisions/{id}/complete"))
                        .bearer_auth(&agent)
                        .json(&json!({"outcome": "released"}))
                        .send()
                        .await
                        .unwrap()
                        .status();
                    assert_eq!(status.as_u16(), 200);
                    decisions.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed();
    // Everything went through the WAL's restarts intact.
    let ledger = fx.engine.verify_ledger().await.unwrap();
    assert!(ledger.valid, "{ledger:?}");
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.join().unwrap();

    let decisions = decisions.load(Ordering::SeqCst);
    let largest = largest.load(Ordering::SeqCst);
    eprintln!(
        "{decisions} verify+complete in {elapsed:.1?} ({:.0}/s), {} ledger entries; \
         largest WAL {:.2} MiB over {samples} samples (limit {:.2} MiB)",
        decisions as f64 / elapsed.as_secs_f64(),
        ledger.events,
        largest as f64 / 1_048_576.0,
        limit as f64 / 1_048_576.0,
    );
    assert!(decisions > 500, "the load was too light to say anything");
    assert!(samples > 100);
    // The limit, plus what commits add between two looks at the WAL's size (50 ms)
    // and during the passive passes before the restart, with room for a loaded
    // machine (small groups write more WAL per decision). Unbounded, this run's WAL
    // reaches 50+ MiB.
    assert!(
        largest <= limit + 8 * 1024 * 1024,
        "the WAL reached {largest} bytes; its limit is {limit}"
    );
}
