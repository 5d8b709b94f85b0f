//! The per-tool policy entry (`tools.<tool name>`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One entry under `tools:` in a Paybond policy file.
///
/// Unknown keys are refused when deserializing, so a typo such as `max_spend_cent`
/// is an error rather than a silently missing cap.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("not" = {"required": ["max_spend_cents", "spend_from_args"]}))]
pub struct ToolPolicy {
    /// Whether a call moves money or has another effect that must be authorized first.
    pub side_effecting: bool,
    /// Fixed amount (cents) to reserve for every call of the tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_spend_cents: Option<u64>,
    /// Dotted path into the call's JSON arguments that holds the amount in cents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_from_args: Option<String>,
    /// Evidence preset submitted after a successful call (required when side-effecting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_preset: Option<String>,
    /// Vendor pack the tool belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_pack: Option<String>,
    /// Operation name sent to verify, when it differs from the tool name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// Where the amount to authorize for a call comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendSource<'a> {
    /// A fixed amount: reserve the maximum, settle the actual cost.
    Fixed(u64),
    /// A dotted path into the call's arguments.
    FromArgs(&'a str),
}

/// One problem found in a policy entry: a field path, a machine-readable code and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Dotted path of the offending field, e.g. `tools.travel.book_hotel.evidence_preset`.
    pub path: String,
    /// Machine-readable code, e.g. `policy.missing_evidence_preset`.
    pub code: &'static str,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl ToolPolicy {
    /// A side-effecting tool with the given evidence preset and no amount yet.
    pub fn side_effecting(evidence_preset: impl Into<String>) -> Self {
        Self {
            side_effecting: true,
            evidence_preset: Some(evidence_preset.into()),
            ..Self::default()
        }
    }

    /// A tool without side effects: calls pass through the layer unverified.
    pub fn read_only() -> Self {
        Self::default()
    }

    /// Reserve this fixed amount for every call.
    #[must_use]
    pub fn with_max_spend_cents(mut self, cents: u64) -> Self {
        self.max_spend_cents = Some(cents);
        self
    }

    /// Read the amount from this dotted path of the call's arguments.
    #[must_use]
    pub fn with_spend_from_args(mut self, path: impl Into<String>) -> Self {
        self.spend_from_args = Some(path.into());
        self
    }

    /// Verify calls under this operation name instead of the tool name.
    #[must_use]
    pub fn with_operation(mut self, operation: impl Into<String>) -> Self {
        self.operation = Some(operation.into());
        self
    }

    /// Where the amount comes from. `spend_from_args` is preferred when both are
    /// set, but [`ToolPolicy::validate`] refuses that combination.
    pub fn spend_source(&self) -> Option<SpendSource<'_>> {
        match (&self.spend_from_args, self.max_spend_cents) {
            (Some(path), _) => Some(SpendSource::FromArgs(path)),
            (None, Some(cents)) => Some(SpendSource::Fixed(cents)),
            (None, None) => None,
        }
    }

    /// The operation sent to verify: the entry's `operation`, else the tool name.
    pub fn operation_for<'a>(&'a self, tool_name: &'a str) -> &'a str {
        self.operation.as_deref().unwrap_or(tool_name)
    }

    /// Every problem with this entry, found under `tools.<tool_name>`. Empty when valid.
    pub fn validate(&self, tool_name: &str) -> Vec<Problem> {
        let base = format!("tools.{tool_name}");
        let mut problems = Vec::new();
        if !is_valid_tool_name(tool_name) {
            problems.push(Problem {
                path: base.clone(),
                code: "policy.invalid_tool_name",
                message: format!(
                    "tool name `{tool_name}` must match ^[a-z][a-z0-9_.-]{{0,127}}$ \
                     (lowercase letter first, then lowercase letters, digits, `_`, `.` or `-`)"
                ),
            });
        }
        problems.extend(
            entry_problems(
                self.side_effecting,
                self.max_spend_cents.is_some(),
                self.spend_from_args.as_deref(),
                self.evidence_preset.as_deref(),
            )
            .into_iter()
            .map(|(field, code, message)| Problem {
                path: format!("{base}.{field}"),
                code,
                message,
            }),
        );
        problems
    }
}

/// The checks of one tool entry that involve more than one field: `(field, code, message)`.
pub(crate) fn entry_problems(
    side_effecting: bool,
    has_max_spend: bool,
    spend_from_args: Option<&str>,
    evidence_preset: Option<&str>,
) -> Vec<(&'static str, &'static str, String)> {
    let mut problems = Vec::new();
    if has_max_spend && spend_from_args.is_some() {
        problems.push((
            "spend_from_args",
            "policy.conflicting_spend_fields",
            "set either max_spend_cents or spend_from_args, not both".to_owned(),
        ));
    }
    if let Some(path) = spend_from_args
        && (path.is_empty() || path.split('.').any(str::is_empty))
    {
        problems.push((
            "spend_from_args",
            "policy.invalid_spend_path",
            format!("`{path}` is not a dotted argument path such as `booking.amount_cents`"),
        ));
    }
    if side_effecting && evidence_preset.is_none_or(str::is_empty) {
        problems.push((
            "evidence_preset",
            "policy.missing_evidence_preset",
            "a side-effecting tool needs an evidence_preset, e.g. cost_and_completion".to_owned(),
        ));
    }
    problems
}

/// Whether `name` is a valid tool name: `^[a-z][a-z0-9_.-]{0,127}$`.
pub fn is_valid_tool_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            first.is_ascii_lowercase()
                && rest.len() <= 127
                && rest.iter().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
                })
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_entry_and_refuses_unknown_keys() {
        let entry: ToolPolicy = serde_json::from_str(
            r#"{"side_effecting": true, "max_spend_cents": 20000, "evidence_preset": "cost_and_completion"}"#,
        )
        .unwrap();
        assert_eq!(
            entry,
            ToolPolicy::side_effecting("cost_and_completion").with_max_spend_cents(20_000)
        );

        let err = serde_json::from_str::<ToolPolicy>(
            r#"{"side_effecting": true, "max_spend_cent": 20000}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_spend_cent"), "{err}");

        let err = serde_json::from_str::<ToolPolicy>(r#"{"max_spend_cents": 1}"#).unwrap_err();
        assert!(err.to_string().contains("side_effecting"), "{err}");
    }

    #[test]
    fn validate_lists_every_problem_with_its_path() {
        let entry = ToolPolicy {
            side_effecting: true,
            max_spend_cents: Some(1),
            spend_from_args: Some("a..b".into()),
            ..ToolPolicy::default()
        };
        let problems = entry.validate("Bad Name");
        let codes: Vec<_> = problems.iter().map(|p| (p.code, p.path.as_str())).collect();
        assert_eq!(
            codes,
            [
                ("policy.invalid_tool_name", "tools.Bad Name"),
                (
                    "policy.conflicting_spend_fields",
                    "tools.Bad Name.spend_from_args"
                ),
                (
                    "policy.invalid_spend_path",
                    "tools.Bad Name.spend_from_args"
                ),
                (
                    "policy.missing_evidence_preset",
                    "tools.Bad Name.evidence_preset"
                ),
            ]
        );
        assert!(
            ToolPolicy::read_only()
                .validate("travel.search_hotels")
                .is_empty()
        );
    }

    #[test]
    fn spend_source_and_operation() {
        let by_args = ToolPolicy::side_effecting("cost_and_completion")
            .with_spend_from_args("booking.amount_cents")
            .with_operation("travel.book");
        assert_eq!(
            by_args.spend_source(),
            Some(SpendSource::FromArgs("booking.amount_cents"))
        );
        assert_eq!(by_args.operation_for("travel.book_hotel"), "travel.book");
        assert_eq!(
            ToolPolicy::read_only().operation_for("travel.search_hotels"),
            "travel.search_hotels"
        );
    }

    #[test]
    fn tool_names() {
        assert!(is_valid_tool_name("travel.book_hotel"));
        assert!(is_valid_tool_name("a"));
        assert!(is_valid_tool_name(&format!("a{}", "b".repeat(127))));
        assert!(!is_valid_tool_name(&format!("a{}", "b".repeat(128))));
        assert!(!is_valid_tool_name(""));
        assert!(!is_valid_tool_name("1tool"));
        assert!(!is_valid_tool_name("Travel"));
        assert!(!is_valid_tool_name("travel/book"));
    }
}
