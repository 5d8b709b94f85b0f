//! `layer_embedded` with mimalloc as the global allocator, as the `paybond`
//! binary has it: `cargo bench -p paybond-gateway --bench layer_embedded_mimalloc`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // a bench binary

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The allocator this bench runs with.
const ALLOCATOR_NAME: &str = "mimalloc";

include!("layer_embedded/body.rs");
