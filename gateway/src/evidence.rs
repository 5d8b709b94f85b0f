//! Evidence payloads checked against the JSON Schema an intent was created with.
//!
//! The subset that evidence schemas use: `type`, `required`, `properties`,
//! `additionalProperties: false`, `enum`, `minimum`, `maximum`, `items`. Keywords
//! outside it are ignored.

use serde_json::Value;

/// Every way `value` fails `schema`, each naming the field (`payload.cost_cents`).
pub(crate) fn validate(schema: &Value, value: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    check(schema, value, "payload", &mut problems);
    // Object iteration order varies between builds; the report does not.
    problems.sort();
    problems
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => true,
    }
}

fn check(schema: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    let Some(s) = schema.as_object() else {
        return;
    };
    if let Some(ty) = s.get("type") {
        let ok = match ty {
            Value::String(t) => type_matches(t, v),
            Value::Array(ts) => ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_matches(t, v)),
            _ => true,
        };
        if !ok {
            out.push(format!("{path}: expected type {ty}"));
            return;
        }
    }
    if let Some(Value::Array(allowed)) = s.get("enum")
        && !allowed.contains(v)
    {
        out.push(format!(
            "{path}: must be one of {}",
            Value::Array(allowed.clone())
        ));
    }
    if let (Some(min), Some(n)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64())
        && n < min
    {
        out.push(format!("{path}: must be at least {min}"));
    }
    if let (Some(max), Some(n)) = (s.get("maximum").and_then(Value::as_f64), v.as_f64())
        && n > max
    {
        out.push(format!("{path}: must be at most {max}"));
    }
    if let Some(obj) = v.as_object() {
        if let Some(Value::Array(required)) = s.get("required") {
            for key in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(key) {
                    out.push(format!("{path}.{key}: required"));
                }
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (key, child) in obj {
            match props.and_then(|p| p.get(key)) {
                Some(sub) => check(sub, child, &format!("{path}.{key}"), out),
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    out.push(format!("{path}.{key}: not allowed"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            check(items, item, &format!("{path}[{i}]"), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_every_failing_field() {
        let schema = json!({
            "type": "object",
            "required": ["status", "cost_cents"],
            "additionalProperties": false,
            "properties": {
                "status": {"type": "string", "enum": ["completed", "failed"]},
                "cost_cents": {"type": "integer", "minimum": 0},
                "items": {"type": "array", "items": {"type": "string"}}
            }
        });
        assert!(validate(&schema, &json!({"status": "completed", "cost_cents": 5})).is_empty());
        let problems = validate(
            &schema,
            &json!({"status": "done", "cost_cents": -1, "items": ["a", 2], "extra": true}),
        );
        assert_eq!(
            problems,
            [
                "payload.cost_cents: must be at least 0",
                "payload.extra: not allowed",
                "payload.items[1]: expected type \"string\"",
                "payload.status: must be one of [\"completed\",\"failed\"]",
            ]
        );
        assert_eq!(
            validate(&schema, &json!(null)),
            ["payload: expected type \"object\""]
        );
        assert_eq!(validate(&schema, &json!({})).len(), 2);
    }
}
