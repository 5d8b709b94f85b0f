//! The layer's overhead per guarded call against the embedded gateway:
//! `cargo bench -p paybond-gateway --bench layer_embedded`, with the system
//! allocator (what a process that embeds the gateway gets unless it chooses one);
//! `--bench layer_embedded_mimalloc` runs the same with mimalloc, the `paybond`
//! binary's allocator.
//!
//! A side-effecting tool behind `PaybondAgentRun`, over `EmbeddedGateway` on the
//! in-memory engine (one thread, no fsync: CPU only). Each call is verify,
//! evidence and complete. The gateway is wrapped in a decorator that times every
//! call into it, so one run gives both the time per guarded call and the time the
//! engine took of it; the rest, less the bare tool's time, is the layer's own
//! (its bookkeeping, requests, trace and the async calls into the gateway).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // a bench binary

/// The allocator this bench runs with.
const ALLOCATOR_NAME: &str = "system allocator";

include!("layer_embedded/body.rs");
