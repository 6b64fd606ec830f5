//! Backends: the systems that executors act on, behind one trait.
//!
//! A backend implements named methods. The catalog names them in its chains
//! and is checked against [`Backend::methods`] at start-up, so a typo is a
//! start-up error, not a failed operation. Every call carries the task id as
//! an idempotency key: a task may run more than once (a lease expired, a
//! process died), and a repeated call must not repeat its effect.

pub mod declared;
pub mod exec;
pub mod http;
pub mod noop;
pub mod sim;
pub mod wire;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use uuid::Uuid;

/// What a method is for, so the catalog can check each step uses a fitting one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodRole {
    /// Changes the backend (create, delete, stop, resize, ...).
    Effect,
    /// Reads the object's runtime state (used by `poll_runtime_state`).
    Pull,
    /// Answers a yes/no question in [`BackendReply::done`] (used by `poll_backend_check`).
    Check,
    /// Lists the backend's objects of a kind ([`Backend::list`]; a kind's `list_method`).
    List,
}

/// One method a backend offers.
#[derive(Debug, Clone)]
pub struct MethodInfo {
    /// The name chains use.
    pub name: Cow<'static, str>,
    /// What it is for.
    pub role: MethodRole,
}

/// The resource as a backend sees it (and as the wire contract sends it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ResourceView {
    /// executord's id of the resource.
    pub id: Uuid,
    /// The kind's name.
    pub kind: String,
    /// The resource's name.
    pub name: String,
    /// The backend's id of the object, once created.
    pub backend_id: Option<String>,
    /// The last runtime state seen.
    pub runtime_state: Option<String>,
    /// The resource's attributes (a JSON object), as its users gave them.
    pub attributes: Value,
    /// What the backend reported about it before (a JSON object).
    #[serde(default = "empty_object")]
    pub status: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// One call of a backend method.
#[derive(Debug, Clone)]
pub struct BackendCall {
    /// The id of the task making the call: the same on every retry of that step.
    pub idempotency_key: Uuid,
    /// The resource acted on.
    pub resource: ResourceView,
    /// Its parent, when it is a child of a composite resource (a volume of a
    /// server): what a method such as `attach_volume` needs of the other side.
    pub parent: Option<ResourceView>,
    /// The operation's parameters (an action's parameters, an update's changes), or `{}`.
    pub params: Value,
}

/// What a method reports back; every field is optional, and what is set is
/// stored on the resource in the same transaction that records the step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendReply {
    /// The backend's id for the object (set by a create).
    pub backend_id: Option<String>,
    /// The object's runtime state now.
    pub runtime_state: Option<String>,
    /// Keys to merge into the resource's status (never into its attributes).
    pub status: Option<Map<String, Value>>,
    /// For check methods: whether the condition holds.
    pub done: Option<bool>,
}

/// Why a call failed.
///
/// A driver may add what it saw ([`BackendError::with_details`]: the HTTP
/// status or exit code, the start of the reply's body). The details never
/// change the class, the message or equality: an error with details equals
/// the same error without them. Read the class with
/// [`BackendError::class`] rather than by matching variants, so a detailed
/// error is classed like its plain self.
#[derive(Debug, Clone, Eq, thiserror::Error)]
pub enum BackendError {
    /// Worth retrying (timeouts, overload): retried with backoff up to the step's attempts.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help (bad request, quota, no valid host): the step fails at once.
    #[error("{0}")]
    Permanent(String),
    /// The backend has no such object.
    #[error("{0}")]
    NotFound(String),
    /// Worth retrying, but not before `retry_after` (the backend said so,
    /// e.g. in HTTP's `Retry-After`): the retry waits for the longer of this
    /// and the step's backoff.
    #[error("{message}")]
    TransientAfter {
        /// What went wrong.
        message: String,
        /// How long the backend asked callers to wait.
        retry_after: Duration,
    },
    /// Another error with what the driver saw of it.
    #[error("{}", .0.error)]
    Detailed(Box<Detailed>),
}

/// An error with what a driver saw of it ([`BackendError::Detailed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detailed {
    /// The error itself (never another `Detailed`).
    pub error: BackendError,
    /// What the driver saw.
    pub details: CallDetails,
}

/// What a driver saw of a failed call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallDetails {
    /// The HTTP status the backend answered (the `http` driver).
    pub http_status: Option<u16>,
    /// The command's exit status (the `exec` driver).
    pub exit_code: Option<i32>,
    /// The start of the reply's body (or of stderr), at most [`DETAILS_BODY_LIMIT`] bytes.
    pub body: Option<String>,
}

/// The most of a failed call's reply body kept in its details.
pub const DETAILS_BODY_LIMIT: usize = 4096;

/// The class of a [`BackendError`], as stored in a task's `error_details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying.
    Transient,
    /// Retrying cannot help.
    Permanent,
    /// No such object.
    NotFound,
}

impl ErrorClass {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::NotFound => "not_found",
        }
    }
}

impl PartialEq for BackendError {
    fn eq(&self, other: &Self) -> bool {
        match (self.plain(), other.plain()) {
            (Self::Transient(a), Self::Transient(b))
            | (Self::Permanent(a), Self::Permanent(b))
            | (Self::NotFound(a), Self::NotFound(b)) => a == b,
            (
                Self::TransientAfter {
                    message: a,
                    retry_after: x,
                },
                Self::TransientAfter {
                    message: b,
                    retry_after: y,
                },
            ) => a == b && x == y,
            _ => false,
        }
    }
}

impl BackendError {
    /// Whether retrying may help.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// How long the backend asked to wait before a retry, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.plain() {
            Self::TransientAfter { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Its class.
    pub fn class(&self) -> ErrorClass {
        match self.plain() {
            Self::Transient(_) | Self::TransientAfter { .. } => ErrorClass::Transient,
            Self::NotFound(_) => ErrorClass::NotFound,
            Self::Permanent(_) | Self::Detailed(_) => ErrorClass::Permanent,
        }
    }

    /// The error without the details a driver added.
    pub fn plain(&self) -> &Self {
        match self {
            Self::Detailed(detailed) => &detailed.error,
            other => other,
        }
    }

    /// The error without the details a driver added, by value.
    pub fn into_plain(self) -> Self {
        match self {
            Self::Detailed(detailed) => detailed.error,
            other => other,
        }
    }

    /// What the driver saw, if it said.
    pub fn details(&self) -> Option<&CallDetails> {
        match self {
            Self::Detailed(detailed) => Some(&detailed.details),
            _ => None,
        }
    }

    /// This error with what the driver saw (replacing details it had).
    #[must_use]
    pub fn with_details(self, details: CallDetails) -> Self {
        Self::Detailed(Box::new(Detailed {
            error: self.into_plain(),
            details,
        }))
    }

    /// The whole error as a task's `error_details` object: `message`,
    /// `class`, and what the driver saw (`http_status`, `exit_code`, `body`).
    pub fn to_json(&self, method: &str) -> Value {
        let mut out = Map::new();
        out.insert("message".into(), Value::from(self.to_string()));
        out.insert("class".into(), Value::from(self.class().as_str()));
        out.insert("method".into(), Value::from(method));
        if let Some(after) = self.retry_after() {
            out.insert("retry_after_s".into(), Value::from(after.as_secs_f64()));
        }
        if let Some(details) = self.details() {
            if let Some(status) = details.http_status {
                out.insert("http_status".into(), Value::from(status));
            }
            if let Some(code) = details.exit_code {
                out.insert("exit_code".into(), Value::from(code));
            }
            if let Some(body) = &details.body {
                out.insert("body".into(), Value::from(body.as_str()));
            }
        }
        Value::Object(out)
    }
}

/// At most [`DETAILS_BODY_LIMIT`] bytes of `body` as text (invalid UTF-8
/// replaced), cut at a character boundary; `None` when empty.
pub fn details_body(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(&body[..body.len().min(DETAILS_BODY_LIMIT)]);
    let mut text = text.into_owned();
    if text.len() > DETAILS_BODY_LIMIT {
        let mut end = DETAILS_BODY_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    (!text.trim().is_empty()).then_some(text)
}

/// One object a backend lists ([`Backend::list`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ListedObject {
    /// The backend's id of the object.
    pub backend_id: String,
    /// Its name at the backend, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its runtime state now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_state: Option<String>,
    /// What the backend reports about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Map<String, Value>>,
}

/// A system that executors act on.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The methods this backend offers.
    fn methods(&self) -> &[MethodInfo];

    /// The runtime states its objects can report, so the catalog can be checked.
    fn runtime_states(&self) -> Vec<&str>;

    /// How long one call may take when its step does not say; `None`: the
    /// runner's default (`--backend-timeout-secs`).
    fn timeout(&self) -> Option<Duration> {
        None
    }

    /// Calls `method`. Must be idempotent given `call.idempotency_key`.
    /// The caller drops the future when the call's time is up or its
    /// operation is cancelled: a backend must then leave nothing running.
    async fn call(&self, method: &str, call: BackendCall) -> Result<BackendReply, BackendError>;

    /// Lists the objects of `kind` through the list method `method` (one
    /// whose role is [`MethodRole::List`]). Backends without list methods
    /// keep this default, which refuses.
    async fn list(&self, method: &str, kind: &str) -> Result<Vec<ListedObject>, BackendError> {
        Err(BackendError::Permanent(format!(
            "this backend cannot list (`{method}` for kind `{kind}`)"
        )))
    }
}

/// The backends known to this process, by the name the catalog uses.
/// Cloned with every request's state, so a clone shares the map.
#[derive(Clone, Default)]
pub struct Backends(Arc<HashMap<String, Arc<dyn Backend>>>);

impl Backends {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `backend` under `name`, replacing any earlier one.
    pub fn with(mut self, name: &str, backend: Arc<dyn Backend>) -> Self {
        Arc::make_mut(&mut self.0).insert(name.to_owned(), backend);
        self
    }

    /// These backends and `others` (an `others`' backend wins a shared name).
    pub fn and(&self, others: &Backends) -> Self {
        let mut all = self.clone();
        Arc::make_mut(&mut all.0)
            .extend(others.0.iter().map(|(name, b)| (name.clone(), b.clone())));
        all
    }

    /// The backend called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Backend>> {
        self.0.get(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Backends").field(&self.names()).finish()
    }
}
