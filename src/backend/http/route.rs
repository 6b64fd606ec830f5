//! How each method of an `http` backend is called, parsed from its
//! declaration when the backend is built: the generic contract's path, or
//! a request template and its reply; the status classes it overrides.

use std::collections::HashMap;

use reqwest::{Method, StatusCode};

use super::reply::ReplyTemplate;
use super::template::{BodyTemplate, Template};
use crate::backend::MethodRole;
use crate::backend::declared::{MethodDecl, NotFound, RequestDecl, StatusClass};

/// How one method is called and its answers read.
#[derive(Debug)]
pub(super) struct Route {
    pub(super) not_found: NotFound,
    pub(super) statuses: HashMap<u16, StatusClass>,
    pub(super) calling: Calling,
}

#[derive(Debug)]
pub(super) enum Calling {
    /// The generic contract, at this path under the base URL.
    Generic { path: String },
    /// A request template and where the reply's fields come from.
    Templated(Box<Templated>),
}

/// A method's `request` and `reply`, parsed.
#[derive(Debug)]
pub(super) struct Templated {
    pub(super) method: Method,
    pub(super) path: Template,
    pub(super) query: Vec<(String, Template)>,
    pub(super) body: Option<BodyTemplate>,
    pub(super) reply: ReplyTemplate,
}

impl Route {
    pub(super) fn new(method: &str, decl: &MethodDecl) -> Result<Self, String> {
        if !method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err("a method name is letters, digits, `_`, `-` and `.`".to_owned());
        }
        let mut statuses = HashMap::new();
        for (code, class) in &decl.statuses {
            let parsed = code
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| format!("statuses: `{code}` is not an HTTP status code"))?;
            if matches!(class, StatusClass::Done | StatusClass::NotDone)
                && decl.role != MethodRole::Check
            {
                return Err(format!(
                    "statuses.{code}: `done` and `not_done` are for methods with role `check`"
                ));
            }
            statuses.insert(parsed, *class);
        }
        let calling = match (&decl.request, &decl.path) {
            (Some(_), Some(_)) => {
                return Err(
                    "`path` is for the generic contract; a `request` has its own".to_owned(),
                );
            }
            (Some(request), None) => templated(request, decl)?,
            (None, path) => {
                if decl.reply.is_some() {
                    return Err("`reply` needs a `request`".to_owned());
                }
                let path = path.clone().unwrap_or_else(|| format!("/{method}"));
                if !path.starts_with('/') {
                    return Err(format!("path `{path}` must start with `/`"));
                }
                Calling::Generic { path }
            }
        };
        Ok(Self {
            not_found: decl.not_found,
            statuses,
            calling,
        })
    }
}

fn templated(request: &RequestDecl, decl: &MethodDecl) -> Result<Calling, String> {
    let method = Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("request.method: `{}` is not an HTTP method", request.method))?;
    if !request.path.starts_with('/') {
        return Err(format!(
            "request.path `{}` must start with `/`",
            request.path
        ));
    }
    let path = Template::parse(&request.path).map_err(|e| format!("request.path: {e}"))?;
    let query = request
        .query
        .iter()
        .map(|(name, value)| {
            Template::parse(value)
                .map(|t| (name.clone(), t))
                .map_err(|e| format!("request.query.{name}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let body = request
        .body
        .as_ref()
        .map(|b| BodyTemplate::parse(b).map_err(|e| format!("request.body{e}")))
        .transpose()?;
    let reply = match &decl.reply {
        Some(reply) => ReplyTemplate::compile(reply)?,
        None => ReplyTemplate::default(),
    };
    Ok(Calling::Templated(Box::new(Templated {
        method,
        path,
        query,
        body,
        reply,
    })))
}

/// What an answer with `status` means when the method does not say.
pub(super) fn default_class(status: StatusCode) -> StatusClass {
    match status.as_u16() {
        200..=299 => StatusClass::Success,
        404 => StatusClass::NotFound,
        408 | 425 | 429 | 500..=599 => StatusClass::Transient,
        _ => StatusClass::Permanent,
    }
}
