//! Fuzzes the policy file checks: `cargo +nightly fuzz run check_policy` from `policies/`.
//!
//! The property is `paybond_policies::fuzzing::check_input`; `tests/mutations.rs`
//! runs a seeded share of it in CI.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        paybond_policies::fuzzing::check_input(text);
    }
});
