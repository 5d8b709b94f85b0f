//! Where a value the policy marks sensitive is, in a call's arguments.

/// The JSON path (`$.card.number`, `$.items[2]`) of the first string (or number,
/// or key) in `value` that one of `patterns` matches: where a value the policy's
/// `spend_controls.data.sensitive_patterns` forbids is, never the value.
///
/// ```
/// let card = regex::Regex::new(r"^\d{16}$").unwrap();
/// let args = serde_json::json!({"hotel": "h1", "card": {"number": "4111111111111111"}});
/// assert_eq!(
///     paybond_policies::sensitive_path(&args, &[card]).as_deref(),
///     Some("$.card.number")
/// );
/// ```
pub fn sensitive_path(value: &serde_json::Value, patterns: &[regex::Regex]) -> Option<String> {
    fn walk(v: &serde_json::Value, path: &mut String, patterns: &[regex::Regex]) -> bool {
        let hit = |s: &str| patterns.iter().any(|p| p.is_match(s));
        match v {
            serde_json::Value::String(s) => hit(s),
            serde_json::Value::Number(n) => hit(&n.to_string()),
            serde_json::Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path, patterns);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            serde_json::Value::Object(map) => map.iter().any(|(k, item)| {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                let found = hit(k) || walk(item, path, patterns);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    if patterns.is_empty() {
        return None;
    }
    let mut path = String::from("$");
    walk(value, &mut path, patterns).then_some(path)
}
