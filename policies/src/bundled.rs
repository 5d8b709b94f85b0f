//! The policy files of the canonical scenario, built into the crate so
//! the embedded gateway and `paybond dev loop --offline` have them wherever they run.

/// `policies/org-base.policy.yaml`: the org base of the travel agents.
pub const ORG_BASE: &str = include_str!("../org-base.policy.yaml");
/// File name of [`ORG_BASE`], for diagnostics.
pub const ORG_BASE_FILE: &str = "policies/org-base.policy.yaml";

/// `policies/tenant-overlay.policy.yaml`: the demo tenant's overlay of [`ORG_BASE`].
pub const TENANT_OVERLAY: &str = include_str!("../tenant-overlay.policy.yaml");
/// File name of [`TENANT_OVERLAY`], for diagnostics.
pub const TENANT_OVERLAY_FILE: &str = "policies/tenant-overlay.policy.yaml";

/// `policies/canonical-scenario.policy.yaml`: the overlay merged onto the base, flat.
pub const CANONICAL_SCENARIO: &str = include_str!("../canonical-scenario.policy.yaml");
/// File name of [`CANONICAL_SCENARIO`], for diagnostics.
pub const CANONICAL_SCENARIO_FILE: &str = "policies/canonical-scenario.policy.yaml";
