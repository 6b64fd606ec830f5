//! Request templates: how a method of an `http` backend calls an API that
//! does not speak the generic contract. Strings hold placeholders such as
//! `{resource.name}`, `{resource.attributes.disk.size}`, `{params.flavor}`
//! and `{idempotency_key}` (`{{` and `}}` are literal braces). Templates are
//! parsed when the backend is built, so an unknown placeholder is a catalog
//! error at start-up, never a failed call.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};

use crate::backend::BackendCall;

/// Bytes escaped in a path segment or a query value: all but RFC 3986's
/// unreserved characters, so a value can never add a `/`, `?`, `&` or `#`.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What a placeholder names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Root {
    ResourceId,
    ResourceName,
    ResourceKind,
    ResourceBackendId,
    ResourceRuntimeState,
    Attributes,
    Status,
    Params,
    IdempotencyKey,
}

/// One placeholder: its root and the fields below it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    root: Root,
    path: Vec<String>,
    /// As written, for messages.
    text: String,
}

impl Field {
    fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split('.');
        let first = parts.next().unwrap_or_default();
        let rest: Vec<&str> = parts.collect();
        if rest.iter().any(|p| p.is_empty()) || first.is_empty() {
            return Err(format!("`{{{text}}}` has an empty field name"));
        }
        let (root, path) = match (first, rest.as_slice()) {
            ("idempotency_key", []) => (Root::IdempotencyKey, &[][..]),
            ("params", path) => (Root::Params, path),
            ("resource", ["id"]) => (Root::ResourceId, &[][..]),
            ("resource", ["name"]) => (Root::ResourceName, &[][..]),
            ("resource", ["kind"]) => (Root::ResourceKind, &[][..]),
            ("resource", ["backend_id"]) => (Root::ResourceBackendId, &[][..]),
            ("resource", ["runtime_state"]) => (Root::ResourceRuntimeState, &[][..]),
            ("resource", ["attributes", path @ ..]) => (Root::Attributes, path),
            ("resource", ["status", path @ ..]) => (Root::Status, path),
            ("resource", _) => {
                return Err(format!(
                    "unknown placeholder `{{{text}}}`: a resource has `id`, `name`, `kind`, \
                     `backend_id`, `runtime_state`, `attributes.…` and `status.…`"
                ));
            }
            _ => {
                return Err(format!(
                    "unknown placeholder `{{{text}}}`: placeholders start with `resource.`, \
                     `params` or `idempotency_key`"
                ));
            }
        };
        Ok(Self {
            root,
            path: path.iter().map(|p| (*p).to_owned()).collect(),
            text: text.to_owned(),
        })
    }

    /// The value in `call`; `None` when it is missing or null.
    fn lookup(&self, call: &BackendCall) -> Option<Value> {
        let r = &call.resource;
        let start = match self.root {
            Root::ResourceId => return Some(Value::String(r.id.to_string())),
            Root::IdempotencyKey => return Some(Value::String(call.idempotency_key.to_string())),
            Root::ResourceName => return Some(Value::String(r.name.clone())),
            Root::ResourceKind => return Some(Value::String(r.kind.clone())),
            Root::ResourceBackendId => return r.backend_id.clone().map(Value::String),
            Root::ResourceRuntimeState => return r.runtime_state.clone().map(Value::String),
            Root::Attributes => &r.attributes,
            Root::Status => &r.status,
            Root::Params => &call.params,
        };
        let mut at = start;
        for name in &self.path {
            at = match at {
                Value::Object(map) => map.get(name)?,
                Value::Array(items) => items.get(name.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        (!at.is_null()).then(|| at.clone())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

/// A string with placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; the error names the first bad placeholder.
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|(_, n)| *n == '{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().is_some_and(|(_, n)| *n == '}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let inner = &text[at + 1..];
                    let end = inner.find('}').ok_or_else(|| {
                        "an unclosed `{` (write `{{` for a literal `{`)".to_owned()
                    })?;
                    let field = Field::parse(&inner[..end])?;
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field(field));
                    // Skip the placeholder's characters and its `}`.
                    while chars.next_if(|(i, _)| *i <= at + 1 + end).is_some() {}
                }
                '}' => return Err("a lone `}` (write `}}` for a literal `}`)".to_owned()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Self { parts })
    }

    /// The placeholder this template is, when it is exactly one.
    fn single(&self) -> Option<&Field> {
        match self.parts.as_slice() {
            [Part::Field(field)] => Some(field),
            _ => None,
        }
    }

    /// Renders for a URL: placeholders must have a scalar value, and each
    /// value is URL-encoded; literal text is kept as written when `escape_text`
    /// is false (a path's slashes), else encoded too (a query value).
    pub(super) fn render_url(
        &self,
        call: &BackendCall,
        escape_text: bool,
    ) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) if escape_text => {
                    out.extend(utf8_percent_encode(text, COMPONENT));
                }
                Part::Text(text) => out.push_str(text),
                Part::Field(field) => {
                    let value = field
                        .lookup(call)
                        .ok_or_else(|| format!("`{{{}}}` has no value", field.text))?;
                    let text = scalar_text(&value).ok_or_else(|| {
                        format!("`{{{}}}` is not a string, number or boolean", field.text)
                    })?;
                    out.extend(utf8_percent_encode(&text, COMPONENT));
                }
            }
        }
        Ok(out)
    }

    /// Renders as a JSON value: one placeholder alone takes its value's type
    /// (null when missing); anything else is text, with missing values empty
    /// and objects or arrays as compact JSON.
    pub(super) fn render_value(&self, call: &BackendCall) -> Value {
        if let Some(field) = self.single() {
            return field.lookup(call).unwrap_or(Value::Null);
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(field) => match field.lookup(call) {
                    None => {}
                    Some(value) => match scalar_text(&value) {
                        Some(text) => out.push_str(&text),
                        None => out.push_str(&value.to_string()),
                    },
                },
            }
        }
        Value::String(out)
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// A JSON body whose strings are templates.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum BodyTemplate {
    /// A number, boolean or null, as written.
    Literal(Value),
    /// A string.
    Text(Template),
    /// An array.
    Array(Vec<BodyTemplate>),
    /// An object; its keys are literal.
    Object(Vec<(String, BodyTemplate)>),
}

impl BodyTemplate {
    /// Parses every string in `value`; the error names the place (`.a.b[2]`).
    pub(super) fn parse(value: &Value) -> Result<Self, String> {
        Self::parse_at(value, &mut String::new())
    }

    fn parse_at(value: &Value, place: &mut String) -> Result<Self, String> {
        Ok(match value {
            Value::String(text) => {
                Self::Text(Template::parse(text).map_err(|e| format!("{place}: {e}"))?)
            }
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let len = place.len();
                    place.push_str(&format!("[{i}]"));
                    out.push(Self::parse_at(item, place)?);
                    place.truncate(len);
                }
                Self::Array(out)
            }
            Value::Object(map) => {
                let mut out = Vec::with_capacity(map.len());
                for (key, item) in map {
                    let len = place.len();
                    place.push('.');
                    place.push_str(key);
                    out.push((key.clone(), Self::parse_at(item, place)?));
                    place.truncate(len);
                }
                Self::Object(out)
            }
            other => Self::Literal(other.clone()),
        })
    }

    /// The body for `call`.
    pub(super) fn render(&self, call: &BackendCall) -> Value {
        match self {
            Self::Literal(value) => value.clone(),
            Self::Text(template) => template.render_value(call),
            Self::Array(items) => Value::Array(items.iter().map(|i| i.render(call)).collect()),
            Self::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.render(call)))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BodyTemplate, Template};
    use crate::backend::{BackendCall, ResourceView};
    use serde_json::{Value, json};
    use uuid::Uuid;

    fn call() -> BackendCall {
        BackendCall {
            idempotency_key: Uuid::nil(),
            resource: ResourceView {
                id: Uuid::nil(),
                kind: "vhost".into(),
                name: "a/b c?&#".into(),
                backend_id: None,
                runtime_state: Some("running".into()),
                attributes: json!({"size": 3, "tags": ["x", "y"], "deep": {"er": true}}),
                status: json!({"flavor": "large"}),
            },
            parent: None,
            params: json!({"limit": 10, "note": null}),
        }
    }

    #[test]
    fn placeholders_are_checked_when_parsed() {
        for good in [
            "/vhosts/{resource.name}",
            "{resource.attributes.deep.er}",
            "{params}",
            "{{literal}} {idempotency_key}",
            "{resource.status.flavor}-{resource.id}",
        ] {
            assert!(Template::parse(good).is_ok(), "{good}");
        }
        for (bad, says) in [
            ("{nope.x}", "unknown placeholder `{nope.x}`"),
            ("{resource.colour}", "a resource has"),
            ("{resource.name.x}", "a resource has"),
            ("{params..x}", "empty field name"),
            ("{resource.name", "unclosed"),
            ("a } b", "lone"),
            ("{idempotency_key.x}", "unknown placeholder"),
        ] {
            let error = Template::parse(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn url_values_are_encoded_and_must_exist() {
        let t = Template::parse("/vhosts/{resource.name}/{resource.attributes.size}").unwrap();
        assert_eq!(
            t.render_url(&call(), false).unwrap(),
            "/vhosts/a%2Fb%20c%3F%26%23/3"
        );
        let q = Template::parse("x y&{resource.runtime_state}").unwrap();
        assert_eq!(q.render_url(&call(), true).unwrap(), "x%20y%26running");
        let missing = Template::parse("/{resource.backend_id}").unwrap();
        let error = missing.render_url(&call(), false).unwrap_err();
        assert!(
            error.contains("`{resource.backend_id}` has no value"),
            "{error}"
        );
        let object = Template::parse("/{resource.attributes.deep}").unwrap();
        assert!(object.render_url(&call(), false).is_err());
        let braces = Template::parse("/{{x}}").unwrap();
        assert_eq!(braces.render_url(&call(), false).unwrap(), "/{x}");
    }

    #[test]
    fn a_lone_placeholder_in_a_body_keeps_its_type() {
        let body = BodyTemplate::parse(&json!({
            "size": "{resource.attributes.size}",
            "tags": "{resource.attributes.tags}",
            "second": "{resource.attributes.tags.1}",
            "missing": "{params.nothing}",
            "null": "{params.note}",
            "text": "n={resource.attributes.size} {params.nothing}!",
            "list": ["{params.limit}", 1, false],
            "key": "{idempotency_key}"
        }))
        .unwrap();
        assert_eq!(
            body.render(&call()),
            json!({
                "size": 3, "tags": ["x", "y"], "second": "y", "missing": null, "null": null,
                "text": "n=3 !", "list": [10, 1, false], "key": Uuid::nil().to_string()
            })
        );
        let error = BodyTemplate::parse(&json!({"a": [{"b": "{x}"}]})).unwrap_err();
        assert!(error.starts_with(".a[0].b: unknown placeholder"), "{error}");
        assert_eq!(
            BodyTemplate::parse(&Value::Null).unwrap().render(&call()),
            Value::Null
        );
    }
}
