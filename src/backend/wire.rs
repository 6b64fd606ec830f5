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
            params: call.params,
        }
    }
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
