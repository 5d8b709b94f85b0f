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
    let mut out = String::new();
    write_canonical(&mut out, value);
    out
}

/// Appends the canonical JSON text of `value` to `out`, without copying `value`.
pub fn write_canonical(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(out, k);
                out.push(':');
                write_canonical(out, v);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, v);
            }
            out.push(']');
        }
        Value::String(s) => write_json_string(out, s),
        // Null, booleans and numbers print the same in every build.
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Appends `s` as a JSON string literal (quoted and escaped as serde_json does).
pub fn write_json_string(out: &mut String, s: &str) {
    // serde_json escapes `"`, `\` and the control characters below U+0020 only:
    // a string without them is itself between quotes.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    // A String has no I/O error to report and serde_json escapes valid UTF-8 only.
    if let Ok(text) = serde_json::to_string(s) {
        out.push_str(&text);
    }
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

    proptest::proptest! {
        #[test]
        fn a_string_is_written_as_serde_json_writes_it(s in "\\PC*|[\\x00-\\x7f]*") {
            let mut out = String::new();
            write_json_string(&mut out, &s);
            proptest::prop_assert_eq!(out, serde_json::to_string(&s).unwrap());
        }
    }

    #[test]
    fn writing_matches_sorting_then_printing() {
        let v = json!({"é\"q": [1.5, -2, true, null, {"k": "\u{1F600}\n", "a": {}}], "": []});
        assert_eq!(canonical_json(&v), sort_keys(v.clone()).to_string());
    }
}
