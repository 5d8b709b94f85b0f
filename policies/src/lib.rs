//! Paybond policy-as-code.
//!
//! Paybond policy files: version 1 (flat) and version 2 (an overlay
//! that extends an org base), the `spend_controls` extension, the deterministic
//! merge of an overlay onto its base, and a stable `sha256:` digest of a policy.
//! The per-tool entry ([`ToolPolicy`]) tells the agent-run layer whether a tool is
//! side-effecting, how much to reserve for it and which operation to verify.
//!
//! ```
//! use paybond_policies::{SpendSource, ToolPolicy};
//!
//! let book = ToolPolicy::side_effecting("cost_and_completion").with_max_spend_cents(20_000);
//! assert!(book.validate("travel.book_hotel").is_empty());
//! assert_eq!(book.spend_source(), Some(SpendSource::Fixed(20_000)));
//!
//! let search = ToolPolicy::read_only();
//! assert_eq!(search.spend_source(), None);
//! ```

pub mod bundled;
mod canonical;
mod document;
#[doc(hidden)]
pub mod fuzzing;
mod locate;
mod merge;
mod resolve;
mod sensitive;
mod tool;
mod validate;

pub use canonical::{canonical_json, sort_keys, write_canonical, write_json_string};
pub use document::{
    ActiveHours, AdapterSection, Approval, Budget, CapScope, CapWindow, DataControls, Extends,
    Gates, IntentSection, Overrides, Phases, PolicyBinding, PolicyDocument, RollingCap, SCHEMA_ID,
    Schedule, SpendControls, ToolControls, ToolOverride, Vendors,
};
pub use merge::{MergeReport, Merged, merge};
pub use resolve::{Resolution, Source, resolve_policy};
pub use sensitive::sensitive_path;
pub use tool::{Problem, SpendSource, ToolPolicy, is_valid_tool_name};
pub use validate::{
    Checked, Diagnostic, PolicyError, check_policy, check_policy_file, parse_policy, read_policy,
};
