//! Canonical JSON: object keys sorted at every level, no whitespace. Digests and
//! hashes are taken over it, so they do not depend on how a build's `serde_json`
//! orders maps (its `preserve_order` feature, which any crate in a build can turn on).

use serde_json::{Map, Value};

/// `value` with every object's keys in sorted order (also under `preserve_order`).
pub fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect::<Map<String, Value>>(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// The canonical JSON text of `value`.
pub fn canonical_json(value: &Value) -> String {
    sort_keys(value.clone()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_level() {
        let mut inner = Map::new();
        inner.insert("z".into(), json!(1));
        inner.insert("a".into(), json!([{"y": 1, "b": 2}]));
        let mut outer = Map::new();
        outer.insert("m".into(), Value::Object(inner));
        outer.insert("c".into(), json!(null));
        assert_eq!(
            canonical_json(&Value::Object(outer)),
            r#"{"c":null,"m":{"a":[{"b":2,"y":1}],"z":1}}"#
        );
    }
}
