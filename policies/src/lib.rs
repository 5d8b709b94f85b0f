//! Paybond policy-as-code.
//!
//! This crate holds the policy types that the rest of the workspace shares. Today it
//! defines the per-tool entry of a policy file (`tools.<tool name>` in a Paybond
//! policy, DESIGN §6), which tells the agent-run layer whether a tool is
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

mod tool;

pub use tool::{Problem, SpendSource, ToolPolicy, is_valid_tool_name};
