//! The wire contract's two messages: the request on stdin, the reply on stdout.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::backend::{BackendCall, BackendReply};

/// The request on stdin: the same JSON as the HTTP driver's generic contract.
pub(super) fn request_body(method: &str, call: &BackendCall) -> Vec<u8> {
    let r = &call.resource;
    let body = json!({
        "method": method,
        "idempotency_key": call.idempotency_key,
        "resource": {
            "id": r.id,
            "kind": r.kind,
            "name": r.name,
            "backend_id": r.backend_id,
            "runtime_state": r.runtime_state,
            "attributes": r.attributes,
            "status": r.status,
        },
        "params": call.params,
    });
    let mut bytes = body.to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}

/// The reply's fields; other keys are ignored.
#[derive(Deserialize)]
struct WireReply {
    #[serde(default)]
    backend_id: Option<String>,
    #[serde(default)]
    runtime_state: Option<String>,
    #[serde(default)]
    status: Option<Map<String, Value>>,
    #[serde(default)]
    done: Option<bool>,
}

/// Reads a reply from stdout; the error says exactly what is wrong with it.
pub(super) fn parse_reply(
    out: &[u8],
    method: &str,
    runtime_states: &[String],
    backend: &str,
) -> Result<BackendReply, String> {
    if out.iter().all(u8::is_ascii_whitespace) {
        return Ok(BackendReply::default());
    }
    let nothing = "nothing from it is stored";
    let value: Value = serde_json::from_slice(out)
        .map_err(|e| format!("the reply of `{method}` is not valid JSON ({e}); {nothing}"))?;
    if !value.is_object() {
        return Err(format!(
            "the reply of `{method}` is not a JSON object; {nothing}"
        ));
    }
    let reply: WireReply = serde_json::from_value(value)
        .map_err(|e| format!("the reply of `{method}` is not a valid reply ({e}); {nothing}"))?;
    if let Some(state) = &reply.runtime_state
        && !runtime_states.contains(state)
    {
        return Err(format!(
            "the reply of `{method}` names runtime state `{}`, which backend `{backend}` does not declare (declared: {}); {nothing}",
            state.escape_debug(),
            if runtime_states.is_empty() {
                "none".to_owned()
            } else {
                runtime_states.join(", ")
            }
        ));
    }
    Ok(BackendReply {
        backend_id: reply.backend_id,
        runtime_state: reply.runtime_state,
        status: reply.status,
        done: reply.done,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_reply;
    use crate::backend::BackendReply;
    #[test]
    fn a_reply_is_read_or_refused_with_its_reason() {
        let states = vec!["online".to_owned()];
        let parse = |text: &str| parse_reply(text.as_bytes(), "m", &states, "b");
        assert_eq!(parse(" \n"), Ok(BackendReply::default()));
        let reply = parse(r#"{"backend_id": "x", "runtime_state": "online", "status": {"a": 1}, "done": true, "extra": 1}"#).unwrap();
        assert_eq!(reply.backend_id.as_deref(), Some("x"));
        assert_eq!(reply.done, Some(true));
        assert!(parse("{").unwrap_err().contains("is not valid JSON"));
        assert!(parse("[]").unwrap_err().contains("is not a JSON object"));
        assert!(
            parse(r#"{"done": "yes"}"#)
                .unwrap_err()
                .contains("is not a valid reply")
        );
        let message = parse(r#"{"runtime_state": "gone"}"#).unwrap_err();
        assert!(
            message.contains(
                "names runtime state `gone`, which backend `b` does not declare (declared: online)"
            ),
            "{message}"
        );
    }
}
