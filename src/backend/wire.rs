//! The messages of the wire contract (contract version 1, `docs/BACKENDS.md`),
//! as the `http` and `exec` drivers send them and adapters answer them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{BackendCall, BackendReply, ResourceView};

/// The contract's version. Within a version, changes are additions only: a
/// new optional key in a request or a reply, which adapters and drivers
/// must ignore when they do not know it.
pub const CONTRACT_VERSION: u32 = 1;

/// One call, as an adapter receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireRequest {
    /// The method called.
    pub method: String,
    /// The task's id: the same on every retry of the step; a repeat must not
    /// repeat the effect.
    pub idempotency_key: Uuid,
    /// The resource acted on.
    pub resource: ResourceView,
    /// Its parent, when it is a child of a composite resource; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ResourceView>,
    /// The operation's parameters, or `{}`.
    pub params: Value,
}

impl WireRequest {
    /// The request for `method` with `call`.
    pub fn new(method: &str, call: BackendCall) -> Self {
        Self {
            method: method.to_owned(),
            idempotency_key: call.idempotency_key,
            resource: call.resource,
            parent: call.parent,
            params: call.params,
        }
    }
}

/// A call of a list method (role `list`), as an adapter receives it: no
/// resource, the kind listed instead. Added within contract version 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireListRequest {
    /// The list method called.
    pub method: String,
    /// A fresh id per call (a list has no effect to repeat).
    pub idempotency_key: Uuid,
    /// The kind whose objects are listed.
    pub kind: String,
}

/// A list method's reply: `{"objects": [{"backend_id", "name"?,
/// "runtime_state"?, "status"?}]}`; unknown keys ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WireListReply {
    /// The objects.
    #[serde(default)]
    pub objects: Vec<super::ListedObject>,
}

/// A reply, as an adapter sends it: every key optional (an empty body is
/// an empty reply), unknown keys ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WireReply {
    /// The backend's id of the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_id: Option<String>,
    /// The object's runtime state now: one the backend declares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_state: Option<String>,
    /// Keys to merge into the resource's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Map<String, Value>>,
    /// For check methods: whether the condition holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<bool>,
}

impl From<BackendReply> for WireReply {
    fn from(reply: BackendReply) -> Self {
        Self {
            backend_id: reply.backend_id,
            runtime_state: reply.runtime_state,
            status: reply.status,
            done: reply.done,
        }
    }
}

/// Why a reply cannot be used; each driver words it in its own messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadReply {
    /// It is not JSON.
    NotJson(String),
    /// It is JSON but not an object.
    NotObject,
    /// A key of the contract holds the wrong type: where, and what is wrong.
    NotContract {
        /// The key, as a path.
        path: String,
        /// What is wrong with it.
        error: String,
    },
}

/// A body as JSON; `None` when it is empty (or only white space).
pub fn body_json(body: &[u8]) -> Result<Option<Value>, serde_json::Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body).map(Some)
}

/// A reply under the generic contract: a JSON object of optional keys
/// (unknown ones ignored), or an empty body for an empty reply.
pub fn parse_reply(body: &[u8]) -> Result<BackendReply, BadReply> {
    let Some(value) = body_json(body).map_err(|e| BadReply::NotJson(e.to_string()))? else {
        return Ok(BackendReply::default());
    };
    if !value.is_object() {
        return Err(BadReply::NotObject);
    }
    let reply: WireReply = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        BadReply::NotContract {
            path,
            error: e.into_inner().to_string(),
        }
    })?;
    Ok(reply.into())
}

/// The runtime state `reply` names, when `declared` does not hold it: such a
/// reply fails its step, and nothing from it is stored.
pub fn undeclared_runtime_state<'a>(
    reply: &'a BackendReply,
    declared: &[String],
) -> Option<&'a str> {
    reply
        .runtime_state
        .as_deref()
        .filter(|state| !declared.iter().any(|d| d == state))
}

impl From<WireReply> for BackendReply {
    fn from(reply: WireReply) -> Self {
        Self {
            backend_id: reply.backend_id,
            runtime_state: reply.runtime_state,
            status: reply.status,
            done: reply.done,
        }
    }
}
