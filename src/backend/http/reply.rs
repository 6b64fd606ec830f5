//! Reading what an HTTP backend answered: a reply under the generic contract
//! or through a method's `reply` template, the message of an error answer,
//! `Retry-After`. Bodies are read with a cap, never whole into memory first.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;

use super::template::Template;
use crate::backend::declared::{ReplyDecl, ReplySource};
use crate::backend::wire::{self, BadReply};
use crate::backend::{BackendCall, BackendReply};

/// The largest reply read; a longer one fails the step.
pub(super) const REPLY_LIMIT: usize = 1 << 20;
/// How much of an error answer is read for its message.
pub(crate) const ERROR_BODY_LIMIT: usize = 64 << 10;
/// How much of an error answer's body (or its `detail`) becomes the message.
const MESSAGE_LIMIT: usize = 500;
/// The longest `Retry-After` honoured: a backend cannot park a step for days.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A body, read up to a limit.
pub(super) enum Body {
    /// All of it.
    Whole(Vec<u8>),
    /// It went past the limit; what was read is dropped.
    TooLarge,
}

/// Reads `response`'s body, stopping once it passes `limit` bytes.
pub(super) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Body, reqwest::Error> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(Body::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(Body::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Body::Whole(body))
}

/// Reads at most `limit` bytes of an answer's body (what is past it is left
/// unread, and its connection is then not reused); a body that breaks off
/// is as much as arrived. The deliverer reads webhook answers with it too.
pub(crate) async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// The body as JSON; an empty body is `null`.
pub(super) fn json(body: &[u8]) -> Result<Value, String> {
    wire::body_json(body)
        .map(Option::unwrap_or_default)
        .map_err(|e| format!("not valid JSON ({e})"))
}

/// A reply under the generic contract, or why it is bad.
pub(super) fn generic(body: &[u8]) -> Result<BackendReply, String> {
    wire::parse_reply(body).map_err(|bad| match bad {
        BadReply::NotJson(e) => format!("not valid JSON ({e})"),
        BadReply::NotObject => "not a JSON object".to_owned(),
        BadReply::NotContract { path, error } => {
            format!("does not follow the contract: `{path}`: {error}")
        }
    })
}

/// The message of an error answer: RFC 9457's `detail`, else `message`,
/// else the start of the body; `None` for an empty body.
pub(crate) fn message(body: &[u8]) -> Option<String> {
    let field = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        ["detail", "message"].into_iter().find_map(|key| {
            v.get(key)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        })
    });
    let text = match field {
        Some(text) => text,
        None => String::from_utf8_lossy(&body[..body.len().min(MESSAGE_LIMIT)])
            .trim()
            .to_owned(),
    };
    (!text.is_empty()).then(|| truncate(text, MESSAGE_LIMIT))
}

fn truncate(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// How long `Retry-After` asks to wait (seconds, or an HTTP date after
/// `now`), at most [`MAX_RETRY_AFTER`].
pub(super) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or_default(),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Where one field of a templated reply comes from, parsed.
#[derive(Debug)]
enum Source {
    Template(Template),
    Pointer(String),
    Value(Value),
}

impl Source {
    fn compile(place: &str, source: &ReplySource) -> Result<Self, String> {
        match source {
            ReplySource::Template(text) => Template::parse(text)
                .map(Self::Template)
                .map_err(|e| format!("{place}: {e}")),
            ReplySource::Pointer(p) if p.is_empty() || p.starts_with('/') => {
                Ok(Self::Pointer(p.clone()))
            }
            ReplySource::Pointer(p) => Err(format!(
                "{place}: `{p}` is not a JSON pointer (RFC 6901: empty, or starting with `/`)"
            )),
            ReplySource::Value(v) => Ok(Self::Value(v.clone())),
        }
    }

    /// The value; `None` when missing or null.
    fn eval(&self, call: &BackendCall, body: &Value) -> Option<Value> {
        let value = match self {
            Self::Template(template) => template.render_value(call),
            Self::Pointer(pointer) => body.pointer(pointer).cloned().unwrap_or_default(),
            Self::Value(value) => value.clone(),
        };
        (!value.is_null()).then_some(value)
    }
}

/// A method's `reply`, parsed.
#[derive(Debug, Default)]
pub(super) struct ReplyTemplate {
    backend_id: Option<Source>,
    runtime_state: Option<Source>,
    done: Option<Source>,
    status: Vec<(String, Source)>,
}

impl ReplyTemplate {
    /// Parses `decl`; the error names the field (`reply.status.tracing: …`).
    pub(super) fn compile(decl: &ReplyDecl) -> Result<Self, String> {
        let one = |name: &str, source: &Option<ReplySource>| {
            source
                .as_ref()
                .map(|s| Source::compile(&format!("reply.{name}"), s))
                .transpose()
        };
        Ok(Self {
            backend_id: one("backend_id", &decl.backend_id)?,
            runtime_state: one("runtime_state", &decl.runtime_state)?,
            done: one("done", &decl.done)?,
            status: decl
                .status
                .iter()
                .map(|(key, s)| {
                    Ok((
                        key.clone(),
                        Source::compile(&format!("reply.status.{key}"), s)?,
                    ))
                })
                .collect::<Result<_, String>>()?,
        })
    }

    /// Whether any field is read from the response body.
    pub(super) fn reads_body(&self) -> bool {
        let sources = [&self.backend_id, &self.runtime_state, &self.done];
        sources
            .into_iter()
            .flatten()
            .chain(self.status.iter().map(|(_, s)| s))
            .any(|s| matches!(s, Source::Pointer(_)))
    }

    /// The reply for `call` from the response `body` (`null` when there is none).
    pub(super) fn apply(&self, call: &BackendCall, body: &Value) -> Result<BackendReply, String> {
        let text = |name: &str, source: &Option<Source>, numbers: bool| match source
            .as_ref()
            .and_then(|s| s.eval(call, body))
        {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Number(n)) if numbers => Ok(Some(n.to_string())),
            Some(other) => Err(format!("`{name}` is {}, not a string", kind_of(&other))),
        };
        let done = match self.done.as_ref().and_then(|s| s.eval(call, body)) {
            None => None,
            Some(Value::Bool(b)) => Some(b),
            Some(Value::String(s)) if s == "true" || s == "false" => Some(s == "true"),
            Some(other) => return Err(format!("`done` is {}, not a boolean", kind_of(&other))),
        };
        let status: serde_json::Map<String, Value> = self
            .status
            .iter()
            .filter_map(|(key, s)| s.eval(call, body).map(|v| (key.clone(), v)))
            .collect();
        Ok(BackendReply {
            backend_id: text("backend_id", &self.backend_id, true)?,
            runtime_state: text("runtime_state", &self.runtime_state, false)?,
            status: (!status.is_empty()).then_some(status),
            done,
        })
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::{generic, message, retry_after};
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
    use std::time::{Duration, SystemTime};

    #[test]
    fn an_error_message_is_the_detail_else_the_message_else_the_body() {
        let problem = br#"{"type":"about:blank","title":"Bad Request","detail":"flavor is unknown","message":"no"}"#;
        assert_eq!(message(problem).unwrap(), "flavor is unknown");
        assert_eq!(message(br#"{"message":" quota "}"#).unwrap(), "quota");
        let long = "é".repeat(400);
        let cut = message(long.as_bytes()).unwrap();
        assert!(cut.len() <= 500 && cut.len() >= 498, "{}", cut.len());
        assert_eq!(message(b"  "), None);
        assert_eq!(message(b"{\"detail\": 3}").unwrap(), "{\"detail\": 3}");
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        let now = SystemTime::now();
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers, now), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let wait = retry_after(&headers, now).unwrap();
        assert!(
            wait > Duration::from_secs(88) && wait <= Duration::from_secs(90),
            "{wait:?}"
        );
        headers.insert(RETRY_AFTER, HeaderValue::from_static("999999"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(3600)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, now), None);
    }

    #[test]
    fn a_generic_reply_is_an_object_of_optional_keys() {
        assert_eq!(generic(b"").unwrap(), Default::default());
        let reply = generic(br#"{"backend_id":"x","status":{"ip":"10.0.0.1"},"extra":1}"#).unwrap();
        assert_eq!(reply.backend_id.as_deref(), Some("x"));
        assert!(
            generic(b"<html>")
                .unwrap_err()
                .starts_with("not valid JSON")
        );
        assert_eq!(generic(b"[1]").unwrap_err(), "not a JSON object");
        let wrong = generic(br#"{"runtime_state": 5}"#).unwrap_err();
        assert!(
            wrong.starts_with("does not follow the contract: `runtime_state`"),
            "{wrong}"
        );
    }
}
