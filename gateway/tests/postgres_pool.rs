//! A replica on PostgreSQL outlives its connections: when the server closes them
//! (a restart, a failover, an administrator), requests fail closed for a moment and
//! the pool opens new connections instead of running out.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use std::time::{Duration, Instant};

use common::Fixture;
use paybond_gateway::{EngineConfig, Storage};
use paybond_middleware_core::wire::SandboxBootstrapRequest;

/// Closes every other connection to the database of `url`, as an administrator would.
fn terminate_connections(url: &str) -> u64 {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let rows = client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap();
            rows.len() as u64
        })
    })
    .join()
    .unwrap()
}

#[test]
fn the_pool_replaces_connections_the_server_closed() {
    let Some(url) = common::pg_database() else {
        return;
    };
    let fixture = Fixture::with_config(EngineConfig::new(Storage::Postgres(url.clone())));
    fixture.intent(1_000);

    let closed = terminate_connections(url.expose_secret());
    assert!(closed >= 1, "the replica's connections were open");

    // Each dead connection fails the request that finds it (fail closed); after at
    // most one failure per pooled connection every request succeeds again, and
    // none waits for a connection that will never come back.
    let started = Instant::now();
    let mut failures = 0;
    let mut successes_in_a_row = 0;
    while successes_in_a_row < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the pool did not recover ({failures} failures)"
        );
        let (engine, agent) = (fixture.engine.clone(), fixture.agent.clone());
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let request = SandboxBootstrapRequest {
                operation: common::BOOK.to_owned(),
                requested_spend_cents: 1_000,
                currency: Some("usd".to_owned()),
                evidence_schema: None,
                metadata: None,
                idempotency_key: None,
            };
            let _ = send.send(engine.bootstrap_sandbox(&agent, &request).is_ok());
        });
        let succeeded = receive
            .recv_timeout(Duration::from_secs(10))
            .expect("a request waited 10 s for a connection");
        if succeeded {
            successes_in_a_row += 1;
        } else {
            failures += 1;
            successes_in_a_row = 0;
        }
    }
    assert!(
        failures <= 16,
        "{failures} requests failed after the connections closed"
    );
}
