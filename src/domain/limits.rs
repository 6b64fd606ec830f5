//! Limits on what a request may carry, beyond the body size.

use serde_json::Value;

use super::FieldError;

/// Deepest nesting of objects and arrays accepted in attributes and parameters.
pub const MAX_DEPTH: usize = 16;
/// Largest attributes or parameters object accepted, serialised, in bytes.
pub const MAX_JSON_BYTES: usize = 64 * 1024;

/// Whether any string or key in `value` holds a NUL character, which
/// PostgreSQL text and jsonb cannot store.
fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Checks a JSON value sent as attributes or parameters against the limits.
pub fn check_json(pointer: &str, value: &Value) -> Result<(), FieldError> {
    if depth(value) > MAX_DEPTH {
        return Err(FieldError::new(
            pointer,
            format!("nests deeper than {MAX_DEPTH} levels"),
        ));
    }
    if has_nul(value) {
        return Err(FieldError::new(
            pointer,
            "must not contain NUL characters (\\u0000)",
        ));
    }
    let size = value.to_string().len();
    if size > MAX_JSON_BYTES {
        return Err(FieldError::new(
            pointer,
            format!("is {size} bytes; at most {MAX_JSON_BYTES} are accepted"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{MAX_DEPTH, check_json};
    use serde_json::{Value, json};

    #[test]
    fn deep_or_large_values_are_refused() {
        let mut deep = json!(1);
        for _ in 0..=MAX_DEPTH {
            deep = json!({ "a": deep });
        }
        assert!(check_json("/attributes", &deep).is_err());
        assert!(check_json("/attributes", &json!({"a": {"b": [1, 2]}})).is_ok());
        let large = json!({ "blob": "x".repeat(70_000) });
        assert!(
            check_json("/attributes", &large)
                .unwrap_err()
                .detail
                .contains("bytes")
        );
        assert!(check_json("/attributes", &Value::Null).is_ok());
        assert!(check_json("/attributes", &json!({"a": ["x\u{0}y"]})).is_err());
    }
}
