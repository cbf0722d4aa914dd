//! What text pregon can store. PostgreSQL's `text` and `jsonb` cannot hold a NUL character
//! (`\u0000`): one in a request would fail the statement that writes it, and with group commit
//! every other row written in the same statement. So it is refused where a request is read,
//! naming the field, before anything is written: in every JSON body, URL and imported CSV cell,
//! and in message bodies too (kept as JSON text they could be stored, but no phone shows a NUL,
//! and their parameters reach `jsonb` event payloads).

use serde_json::Value;

/// The refusal's code and sentence, wherever a NUL is refused.
pub const NUL_CODE: &str = "invalid_character";
pub const NUL_MESSAGE: &str = "text may not hold a NUL character (\\u0000)";

/// Whether a string can be stored as it is.
pub fn storable(s: &str) -> bool {
    !s.contains('\0')
}

/// The path (`text.body`, `messages[2].to`; empty for the value itself) of the first string,
/// object key included, that cannot be stored; `None` when every one can.
pub fn unstorable_path(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => (!storable(s)).then(String::new),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| unstorable_path(item).map(|rest| join(&format!("[{i}]"), &rest))),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            if !storable(key) {
                return Some(key.replace('\0', "\\u0000"));
            }
            unstorable_path(item).map(|rest| join(key, &rest))
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

fn join(head: &str, rest: &str) -> String {
    if rest.is_empty() {
        head.to_string()
    } else if rest.starts_with('[') {
        format!("{head}{rest}")
    } else {
        format!("{head}.{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_first_field_holding_a_nul() {
        let cases = [
            (json!({"text": {"body": "ok"}}), None),
            (json!({"text": {"body": "a\u{0}b"}}), Some("text.body")),
            (
                json!({"messages": [{"to": "1"}, {"to": "\u{0}"}]}),
                Some("messages[1].to"),
            ),
            (json!(["x", ["\u{0}"]]), Some("[1][0]")),
            (json!("\u{0}"), Some("")),
            (json!({"k\u{0}": 1}), Some("k\\u0000")),
            (json!({"n": 1, "b": true, "z": null}), None),
        ];
        for (value, expected) in cases {
            assert_eq!(unstorable_path(&value).as_deref(), expected, "{value}");
        }
    }
}
