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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
}

impl BackendError {
    /// Whether retrying may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_) | Self::TransientAfter { .. })
    }

    /// How long the backend asked to wait before a retry, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::TransientAfter { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
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
}

/// The backends known to this process, by the name the catalog uses.
#[derive(Clone, Default)]
pub struct Backends(HashMap<String, Arc<dyn Backend>>);

impl Backends {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `backend` under `name`, replacing any earlier one.
    pub fn with(mut self, name: &str, backend: Arc<dyn Backend>) -> Self {
        self.0.insert(name.to_owned(), backend);
        self
    }

    /// These backends and `others` (an `others`' backend wins a shared name).
    pub fn and(&self, others: &Backends) -> Self {
        let mut all = self.clone();
        all.0
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
