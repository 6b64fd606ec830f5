//! `/api/v1/kinds`: the catalog, so clients can discover kinds, their
//! attribute schemas, actions and chains.

use axum::extract::State;
use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::catalog::{Action, Form, Kind};
use crate::domain::{Queue, ResourceState};

/// A named action of a kind.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionResponse {
    /// Its name, the last segment of `POST /api/v1/resources/{id}/actions/{action}`.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Resource states it may start from.
    pub states: Vec<ResourceState>,
    /// Runtime states it may start from; empty means any.
    pub runtime_states: Vec<String>,
    /// The runtime state recorded when it succeeds.
    pub runtime_state_on_success: Option<String>,
    /// JSON Schema of its parameters (the request body).
    pub params_schema: Value,
    /// Parameters that must be larger than the attribute of the same name.
    pub increase_only: Vec<String>,
    /// Its queue.
    pub queue: Queue,
    /// Its chain, after `begin_updating`.
    pub chain: Vec<Value>,
}

/// A kind of resource.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "name": "volume", "description": "A block storage volume.", "backend": "sim",
    "attributes_schema": {"type": "object", "required": ["tenant", "size_gb"]},
    "updatable": ["name"], "queue": "regular",
    "create": [{"type": "backend_method", "method": "create_volume"}], "update": [], "delete": [], "actions": []
}))]
pub struct KindResponse {
    /// Its name, used as `kind` when creating.
    pub name: String,
    /// What it is.
    pub description: String,
    /// The backend its chains call.
    pub backend: String,
    /// JSON Schema of its attributes.
    pub attributes_schema: Value,
    /// What an update may change: `name` and/or attribute names.
    pub updatable: Vec<String>,
    /// The queue of its create, update and delete chains.
    pub queue: Queue,
    /// The create chain, after `begin_creating`.
    pub create: Vec<Value>,
    /// The update chain, after `begin_updating`.
    pub update: Vec<Value>,
    /// The delete chain, after `begin_deleting`.
    pub delete: Vec<Value>,
    /// What undoes a failed or cancelled create of a composite kind.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub compensate: Vec<Value>,
    /// A composite kind's children by role: `{kind, each?, when?, inherit}`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub children: BTreeMap<String, ChildResponse>,
    /// Its named actions.
    pub actions: Vec<ActionResponse>,
}

/// A role of a composite kind's children.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChildResponse {
    /// The children's kind.
    pub kind: String,
    /// One child per element of this array attribute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub each: Option<String>,
    /// One child when this boolean attribute is true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Attributes copied from the parent.
    pub inherit: Vec<String>,
}

/// The catalog.
#[derive(Debug, Serialize, ToSchema)]
pub struct KindList {
    /// Every kind, by name.
    pub items: Vec<KindResponse>,
}

fn chain(steps: &[Form]) -> Vec<Value> {
    steps
        .iter()
        .filter_map(|s| serde_json::to_value(s).ok())
        .collect()
}

impl From<&Action> for ActionResponse {
    fn from(a: &Action) -> Self {
        Self {
            name: a.name.clone(),
            description: a.description.clone(),
            states: a.states.clone(),
            runtime_states: a.runtime_states.clone(),
            runtime_state_on_success: a.runtime_state_on_success.clone(),
            params_schema: a.params.source().clone(),
            increase_only: a.increase_only.clone(),
            queue: a.queue,
            chain: chain(&a.chain),
        }
    }
}

impl From<&Kind> for KindResponse {
    fn from(k: &Kind) -> Self {
        Self {
            name: k.name.clone(),
            description: k.description.clone(),
            backend: k.backend.clone(),
            attributes_schema: k.schema.source().clone(),
            updatable: k.updatable.clone(),
            queue: k.queue,
            create: chain(&k.create),
            update: chain(&k.update),
            delete: chain(&k.delete),
            compensate: chain(&k.compensate),
            children: k
                .children
                .iter()
                .map(|(role, c)| {
                    let child = ChildResponse {
                        kind: c.kind.clone(),
                        each: c.each.clone(),
                        when: c.when.clone(),
                        inherit: c.inherit.clone(),
                    };
                    (role.clone(), child)
                })
                .collect(),
            actions: k.actions.values().map(ActionResponse::from).collect(),
        }
    }
}

/// List the kinds of resource, their schemas, actions and chains.
#[utoipa::path(get, path = "/api/v1/kinds", tag = "kinds",
    responses((status = 200, description = "The catalog", body = KindList)))]
async fn list_kinds(State(state): State<AppState>) -> axum::Json<KindList> {
    axum::Json(KindList {
        items: state.catalog.kinds().map(KindResponse::from).collect(),
    })
}

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_kinds))
}
