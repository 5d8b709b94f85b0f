//! Connection limits over loopback: slow headers and idle connections are closed
//! after the header timeout, a slow body gets a 408, and at the connection cap new
//! connections wait until one closes. Each step is bounded in time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on setup failures

mod common;

use std::time::{Duration, Instant};

use common::Fixture;
use paybond_gateway::server::{ServeLimits, serve_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(limits: ServeLimits) -> (std::net::SocketAddr, Fixture) {
    let fx = Fixture::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_with(
        listener,
        fx.engine.clone(),
        std::future::pending(),
        limits,
    ));
    (addr, fx)
}

/// Reads until the server closes the connection (or `within` passes): what it sent.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0_u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_idle_connections_and_slow_bodies_are_cut_off() {
    let (addr, _fx) = start(ServeLimits {
        max_connections: 64,
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
    })
    .await;

    // Slowloris: a request line and one header, then nothing.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /verify HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Half-open: connected, never a byte.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Idle keep-alive after one answered request.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    let started = Instant::now();
    for stream in [&mut slow, &mut silent] {
        assert!(
            read_until_closed(stream, Duration::from_secs(5))
                .await
                .is_some(),
            "a connection without complete headers stayed open"
        );
    }
    let answered = read_until_closed(&mut idle, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection stayed open");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert!(started.elapsed() < Duration::from_secs(4));

    // A body that stops arriving: 408 with the error envelope.
    let mut body = TcpStream::connect(addr).await.unwrap();
    body.write_all(
        b"POST /verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\
          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"intent_id\"",
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut body, Duration::from_secs(5))
        .await
        .expect("a slow body was waited for without end");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_new_connections_wait_for_a_free_slot() {
    let (addr, _fx) = start(ServeLimits {
        max_connections: 4,
        header_timeout: Duration::from_secs(30),
        body_timeout: Duration::from_secs(30),
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // The fifth connects (the kernel's backlog) but is not served while four are held.
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0_u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(500), fifth.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a fifth connection was served above the cap of four"
    );

    // One held connection closes: the fifth is served.
    drop(held.pop());
    let answer = read_until_closed(&mut fifth, Duration::from_secs(5))
        .await
        .expect("the waiting connection was not served after a slot freed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
