//! `ToolCall` and `ToolOutput`: what the layer takes in and gives back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One call of a tool by an agent.
///
/// Build it from what an agent framework hands you, `(name, args, tool_call_id)`,
/// and add what the verify request should know:
///
/// ```
/// use paybond_middleware_core::ToolCall;
/// use serde_json::json;
///
/// let call = ToolCall::new("travel.book_hotel", json!({"hotel": "h1"}), "call_2")
///     .with_requested_spend_cents(12_000)
///     .with_vendor_id("vendor_acme");
/// assert_eq!(call.requested_spend_cents, Some(12_000));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The framework's id for this call; the same id on a retry after approval.
    pub tool_call_id: String,
    /// The tool the agent called.
    pub tool_name: String,
    /// Operation to verify when the tool's policy entry names none (default: the tool name).
    pub operation: Option<String>,
    /// The call's JSON arguments.
    pub args: Value,
    /// The amount to authorize, when the caller knows it.
    pub requested_spend_cents: Option<u64>,
    /// Vendor the money goes to.
    pub vendor_id: Option<String>,
    /// Task the call belongs to.
    pub task_id: Option<String>,
    /// Workflow the call belongs to.
    pub workflow_id: Option<String>,
    /// Currency (lowercase ISO 4217); the run's currency when absent.
    pub currency: Option<String>,
}

impl ToolCall {
    /// A call of `tool_name` with `args`, identified by `tool_call_id`.
    pub fn new(tool_name: impl Into<String>, args: Value, tool_call_id: impl Into<String>) -> Self {
        Self {
            tool_call_id: tool_call_id.into(),
            tool_name: tool_name.into(),
            operation: None,
            args,
            requested_spend_cents: None,
            vendor_id: None,
            task_id: None,
            workflow_id: None,
            currency: None,
        }
    }

    /// Authorize this amount instead of the one the tool's policy derives.
    #[must_use]
    pub fn with_requested_spend_cents(mut self, cents: u64) -> Self {
        self.requested_spend_cents = Some(cents);
        self
    }

    /// Verify under this operation when the tool's policy entry names none.
    #[must_use]
    pub fn with_operation(mut self, operation: impl Into<String>) -> Self {
        self.operation = Some(operation.into());
        self
    }

    /// The vendor the money goes to.
    #[must_use]
    pub fn with_vendor_id(mut self, vendor_id: impl Into<String>) -> Self {
        self.vendor_id = Some(vendor_id.into());
        self
    }

    /// The task the call belongs to.
    #[must_use]
    pub fn with_task_id(mut self, task_id: impl Into<String>) -> Self {
        self.task_id = Some(task_id.into());
        self
    }

    /// The workflow the call belongs to.
    #[must_use]
    pub fn with_workflow_id(mut self, workflow_id: impl Into<String>) -> Self {
        self.workflow_id = Some(workflow_id.into());
        self
    }

    /// The currency of the amount.
    #[must_use]
    pub fn with_currency(mut self, currency: impl Into<String>) -> Self {
        self.currency = Some(currency.into());
        self
    }
}

/// What a tool returned, and what it actually cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolOutput {
    /// The result the agent sees.
    pub body: Value,
    /// The actual cost in cents, when the tool knows it; the reserved amount is
    /// settled when it does not.
    pub cost_cents: Option<u64>,
}

impl ToolOutput {
    /// A result without a reported cost.
    pub fn new(body: Value) -> Self {
        Self {
            body,
            cost_cents: None,
        }
    }

    /// The actual cost in cents.
    #[must_use]
    pub fn with_cost_cents(mut self, cents: u64) -> Self {
        self.cost_cents = Some(cents);
        self
    }
}

impl From<Value> for ToolOutput {
    fn from(body: Value) -> Self {
        Self::new(body)
    }
}

/// Follows a dotted path (`booking.amount_cents`, `items.0.price`) into `args`.
pub(crate) fn lookup<'a>(args: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(args, |value, segment| match value {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lookup_follows_objects_and_arrays() {
        let args = json!({"booking": {"amount_cents": 12000, "items": [{"price": 5}]}});
        assert_eq!(lookup(&args, "booking.amount_cents"), Some(&json!(12000)));
        assert_eq!(lookup(&args, "booking.items.0.price"), Some(&json!(5)));
        assert_eq!(lookup(&args, "booking.items.1.price"), None);
        assert_eq!(lookup(&args, "booking.missing"), None);
        assert_eq!(lookup(&args, "booking.amount_cents.deeper"), None);
    }
}
