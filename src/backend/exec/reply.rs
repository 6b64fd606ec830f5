//! The wire contract's two messages as the exec driver passes them: the
//! request on stdin, the reply on stdout (`crate::backend::wire`).

use crate::backend::wire::{self, BadReply, WireRequest};
use crate::backend::{BackendCall, BackendReply};

/// The request on stdin: the generic contract's JSON, then a newline.
pub(super) fn request_body(method: &str, call: &BackendCall) -> Result<Vec<u8>, String> {
    let mut bytes = serde_json::to_vec(&WireRequest::new(method, call.clone()))
        .map_err(|e| format!("cannot encode the call: {e}"))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Reads a reply from stdout; the error says exactly what is wrong with it.
pub(super) fn parse_reply(
    out: &[u8],
    method: &str,
    runtime_states: &[String],
    backend: &str,
) -> Result<BackendReply, String> {
    let nothing = "nothing from it is stored";
    let reply = wire::parse_reply(out).map_err(|bad| match bad {
        BadReply::NotJson(e) => {
            format!("the reply of `{method}` is not valid JSON ({e}); {nothing}")
        }
        BadReply::NotObject => format!("the reply of `{method}` is not a JSON object; {nothing}"),
        BadReply::NotContract { path, error } => {
            format!("the reply of `{method}` is not a valid reply (`{path}`: {error}); {nothing}")
        }
    })?;
    if let Some(state) = wire::undeclared_runtime_state(&reply, runtime_states) {
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
    Ok(reply)
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
