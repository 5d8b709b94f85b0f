//! The policy file: Paybond v1 (flat) and v2 (org inheritance), plus `spend_controls`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::tool::ToolPolicy;

/// The `$id` of the policy file schema; policy files may point `$schema` at it.
pub const SCHEMA_ID: &str = "https://paybond.dev/schemas/policy.schema.json";

/// A Paybond policy file, v1 or v2, as written.
///
/// Every section is strict: an unknown key is an error that names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// JSON Schema reference for editors.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// 1 (flat) or 2 (may extend an org base).
    #[schemars(range(min = 1, max = 2))]
    pub version: u8,
    /// `^[a-z][a-z0-9_-]{0,63}$`.
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_-]{0,63}$"))]
    pub name: String,
    /// Deny tools the policy does not list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_deny: Option<bool>,
    /// Tools by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tools: BTreeMap<String, ToolPolicy>,
    /// Intent binding, budget and allowed tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<IntentSection>,
    /// Adapter behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterSection>,
    /// v2: the org base this overlay extends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<Extends>,
    /// v2: changes to the org base's sections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Overrides>,
    /// Spend controls enforced by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_controls: Option<SpendControls>,
}

/// `intent:`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntentSection {
    /// The template the intent is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_binding: Option<PolicyBinding>,
    /// The intent's budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Tools an intent may use; absent means every tool of the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tools: Option<Vec<String>>,
}

/// `intent.policy_binding`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBinding {
    /// Template id.
    pub template_id: String,
    /// Template version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_seq: Option<u64>,
    /// `sha256:<64 hex>` of the template head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^sha256:[0-9a-f]{64}$"))]
    pub head_digest: Option<String>,
}

/// `intent.budget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Three lowercase letters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]{3}$"))]
    pub currency: Option<String>,
    /// Cap in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_spend_usd: Option<f64>,
}

/// `adapter:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdapterSection {
    /// Refuse tools a model provider executes on its side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_provider_executed_tools: Option<bool>,
}

/// `extends:` (v2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Extends {
    /// The org base's policy id (its `name`).
    pub org_policy_id: String,
    /// `^org_[a-z][a-z0-9_]{0,57}$`.
    #[schemars(regex(pattern = r"^org_[a-z][a-z0-9_]{0,57}$"))]
    pub org_id: String,
    /// Digest of the base this overlay was written against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^sha256:[0-9a-f]{64}$"))]
    pub base_digest: Option<String>,
    /// Path of a local copy of the base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_policy: Option<String>,
}

/// `overrides:` (v2): narrowing changes to the base.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// May only turn `default_deny` on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_deny: Option<bool>,
    /// Changes to org tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<BTreeMap<String, ToolOverride>>,
    /// Changes to the intent section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<IntentSection>,
    /// Changes to the adapter section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterSection>,
}

/// One entry of `overrides.tools`: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("not" = {"required": ["max_spend_cents", "spend_from_args"]}))]
pub struct ToolOverride {
    /// Cannot turn an org side-effecting tool off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side_effecting: Option<bool>,
    /// May only lower the org cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_spend_cents: Option<u64>,
    /// Cannot switch the org's spend mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_from_args: Option<String>,
    /// Only a preset of the org's catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_preset: Option<String>,
    /// Vendor pack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_pack: Option<String>,
    /// Operation name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// `spend_controls:`: what the gateway enforces beyond the Paybond sections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpendControls {
    /// Per-tool controls.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tools: BTreeMap<String, ToolControls>,
    /// Rolling caps; open reservations count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<RollingCap>,
    /// Graduated gates, as fractions of the intent budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates: Option<Gates>,
    /// When calls may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Vendor allowlist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendors: Option<Vendors>,
    /// Approval quorum and timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Payment phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<Phases>,
    /// Sensitive-data patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataControls>,
}

/// `spend_controls.tools.<tool>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolControls {
    /// Per-call cap when the tool has no fixed `max_spend_cents`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_call_cents: Option<u64>,
    /// Above this: hold for approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_threshold_cents: Option<u64>,
    /// Calls per rolling hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_per_hour: Option<u32>,
    /// `false` disables the tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<bool>,
}

/// Scope of a rolling cap.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CapScope {
    /// The whole tenant.
    Tenant,
    /// One agent subject.
    Agent,
    /// One vendor.
    Vendor,
    /// One tool.
    Tool,
}

/// Window of a rolling cap.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CapWindow {
    /// Calendar hour.
    Hour,
    /// Calendar day.
    Day,
    /// Calendar month.
    Month,
}

/// `spend_controls.caps[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollingCap {
    /// What the cap counts.
    pub scope: CapScope,
    /// Which one (absent: every key of the scope separately).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The window.
    pub window: CapWindow,
    /// The cap.
    pub limit_cents: u64,
    /// IANA timezone the window's boundaries are in (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// `spend_controls.gates`: warning < restrict < halt, each in 0..=1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// Allow, with a warning reason.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub warning: f64,
    /// Allow, with a restrict reason.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub restrict: f64,
    /// Deny.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub halt: f64,
}

/// `spend_controls.schedule`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Daily window.
    pub active_hours: ActiveHours,
}

/// `spend_controls.schedule.active_hours`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveHours {
    /// `HH:MM`.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// `HH:MM`, after `start`.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub end: String,
    /// IANA timezone.
    pub timezone: String,
}

/// `spend_controls.vendors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Vendors {
    /// Only these vendors.
    pub allow: Vec<String>,
}

/// `spend_controls.approval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Operators who must approve.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub quorum: u32,
    /// Seconds before a pending request expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

fn one() -> u32 {
    1
}

/// `spend_controls.phases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Phases {
    /// The phase in which payments may be made (`EXPLORE`, `DECIDE`, `COMMIT`).
    #[schemars(regex(pattern = "^(EXPLORE|DECIDE|COMMIT)$"))]
    pub payment_phase: String,
}

/// `spend_controls.data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataControls {
    /// Regular expressions that must not appear in tool arguments.
    #[serde(default)]
    pub sensitive_patterns: Vec<String>,
}

impl PolicyDocument {
    /// The JSON Schema of the policy file format (draft 2020-12), for editors and CI.
    ///
    /// It describes the structure; [`crate::check_policy`] also checks what a schema
    /// cannot (gate order, that a timezone exists, that a pattern compiles).
    pub fn json_schema() -> serde_json::Value {
        let mut schema = schemars::schema_for!(PolicyDocument);
        schema.insert(
            "$id".to_owned(),
            serde_json::Value::String(SCHEMA_ID.to_owned()),
        );
        schema.insert(
            "title".to_owned(),
            serde_json::Value::String("Paybond policy".to_owned()),
        );
        crate::canonical::sort_keys(schema.to_value())
    }

    /// The `sha256:` digest of the document's canonical JSON (keys sorted, no whitespace).
    pub fn digest(&self) -> String {
        // Serializing a document of strings, numbers, bools, maps and lists cannot fail.
        let canonical = serde_json::to_value(self)
            .map(|v| crate::canonical::canonical_json(&v))
            .unwrap_or_default();
        let hash = Sha256::digest(canonical.as_bytes());
        let mut out = String::with_capacity(7 + 64);
        out.push_str("sha256:");
        for byte in hash {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }
}
