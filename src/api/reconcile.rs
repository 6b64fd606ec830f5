//! Adopting and reconciling: import a backend object, pull a resource now,
//! list a kind's importable objects, and the admins' overrides (`set_ok`,
//! `set_erred`, `unlink`, and `DELETE ?force=true`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::Connection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::{Json, PathId};
use super::idempotency::{self, Idempotency};
use super::operations::OperationResponse;
use super::resources::{ResourceResponse, claim, if_match, run};
use crate::app::AppState;
use crate::db;
use crate::domain::{Caller, Role, Transition};
use crate::executor::overrides::{self, check_reason, override_details};
use crate::executor::{Delete, Executor, Import, Pull};

/// What to import.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"kind": "instance", "name": "legacy-1", "backend_id": "sim-6f1c0a3e9b2d4c8e",
    "attributes": {"tenant": "acme", "flavor": "small"}}))]
pub struct ImportRequest {
    /// The kind (see `GET /api/v1/kinds`).
    pub kind: String,
    /// A name: 1 to 255 characters.
    pub name: String,
    /// The backend's id of the object to adopt.
    pub backend_id: String,
    /// Attributes, valid against the kind's schema (as for a create).
    #[serde(default = "empty_object")]
    pub attributes: Value,
}

fn empty_object() -> Value {
    json!({})
}

/// Why an admin overrides.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "fixed by hand in the cloud console, ticket OPS-42"}))]
pub struct OverrideRequest {
    /// Why: required, 1 to 1000 characters; kept in the resource's history
    /// with who did it.
    #[serde(default)]
    pub reason: Option<String>,
}

/// How to delete.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Admins only: run the delete chain and remove the record even if the
    /// backend fails (the failure stays in the history).
    pub force: Option<bool>,
    /// With `force`, required: why (kept in the history with who did it).
    pub reason: Option<String>,
}

/// One object of the backend that no resource manages yet.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportableObject {
    /// The backend's id of it: the `backend_id` to import.
    pub backend_id: String,
    /// Its name at the backend, if it has one.
    pub name: Option<String>,
    /// Its runtime state now.
    pub runtime_state: Option<String>,
    /// What the backend reports about it.
    pub status: Value,
}

/// A kind's importable objects.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportableList {
    /// The objects, as the backend listed them.
    pub items: Vec<ImportableObject>,
}

fn admin_only(caller: &Caller, what: &str) -> Result<(), ApiError> {
    if caller.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!("only an admin may {what}")))
    }
}

/// Import (adopt) an existing backend object: admins only. One operation
/// reads it (the kind's import chain, or its pull method); a failed import
/// leaves no resource behind.
#[utoipa::path(post, path = "/api/v1/resources/import", tag = "resources",
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key: a repeat with the same body returns the first response")),
    request_body = ImportRequest,
    responses(
        (status = 201, description = "Accepted; its import operation is `current_operation_id`", body = ResourceResponse,
            headers(("Location" = String, description = "The resource's URL"))),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A resource of the kind already manages this backend object", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown or unimportable kind, invalid name, backend id or attributes", body = Problem, content_type = "application/problem+json"),
    ))]
async fn import_resource(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(request): Json<ImportRequest>,
) -> Result<Response, ApiError> {
    admin_only(&caller, "import")?;
    let key = Idempotency::from_request(
        &headers,
        &caller,
        "POST",
        "/api/v1/resources/import",
        &json!(request),
    )?;
    let import = Import::parse(
        &state.catalog,
        &request.kind,
        &request.name,
        &request.backend_id,
        request.attributes,
    )?
    .for_tenant(&caller.tenant);
    super::resources::created(&state, key, import).await
}

/// Pull a resource now: an operation that refreshes its runtime state and status.
#[utoipa::path(post, path = "/api/v1/resources/{id}/pull", tag = "resources",
    params(("id" = Uuid, Path, description = "The resource's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key")),
    responses(
        (status = 202, description = "Accepted: the pull operation", body = OperationResponse,
            headers(("Location" = String, description = "The operation's URL"))),
        (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another operation is in flight, or the resource has nothing to pull", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key already used for a different request", body = Problem, content_type = "application/problem+json"),
    ))]
async fn pull_resource(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = format!("/api/v1/resources/{id}/pull");
    let key = Idempotency::from_request(&headers, &caller, "POST", &path, &Value::Null)?;
    run(
        &state,
        key,
        Pull::new(&state.catalog, id).within(caller.scope()),
    )
    .await
}

async fn set_state(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    transition: Transition,
    request: &OverrideRequest,
) -> Result<axum::Json<ResourceResponse>, ApiError> {
    admin_only(caller, &format!("{transition} a resource"))?;
    let reason = check_reason(request.reason.as_deref())?;
    let mut conn = state.conns.acquire().await?;
    let mut tx = conn.begin().await?;
    let resource = overrides::set_state(&mut tx, id, transition, &reason, caller).await?;
    tx.commit().await?;
    tracing::warn!(resource_id = %id, %transition, %reason, actor = %caller.actor(), "operator override");
    Ok(axum::Json(ResourceResponse::from(resource)))
}

/// Say a resource is `ok` (admins only), with a reason; nothing may be in flight on it.
#[utoipa::path(post, path = "/api/v1/resources/{id}/set_ok", tag = "resources",
    params(("id" = Uuid, Path, description = "The resource's id")),
    request_body = OverrideRequest,
    responses(
        (status = 200, description = "The resource, now `ok`", body = ResourceResponse),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An operation is in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No reason", body = Problem, content_type = "application/problem+json"),
    ))]
async fn set_ok(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    Json(request): Json<OverrideRequest>,
) -> Result<axum::Json<ResourceResponse>, ApiError> {
    set_state(&state, &caller, id, Transition::SetOk, &request).await
}

/// Say a resource is `erred` (admins only), with a reason, which becomes its
/// error message; nothing may be in flight on it.
#[utoipa::path(post, path = "/api/v1/resources/{id}/set_erred", tag = "resources",
    params(("id" = Uuid, Path, description = "The resource's id")),
    request_body = OverrideRequest,
    responses(
        (status = 200, description = "The resource, now `erred`", body = ResourceResponse),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An operation is in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No reason", body = Problem, content_type = "application/problem+json"),
    ))]
async fn set_erred(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    Json(request): Json<OverrideRequest>,
) -> Result<axum::Json<ResourceResponse>, ApiError> {
    set_state(&state, &caller, id, Transition::SetErred, &request).await
}

/// Forget a resource without touching its backend (admins only), with a
/// reason; its operations and history stay.
#[utoipa::path(post, path = "/api/v1/resources/{id}/unlink", tag = "resources",
    params(("id" = Uuid, Path, description = "The resource's id")),
    request_body = OverrideRequest,
    responses(
        (status = 204, description = "Forgotten"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An operation is in flight", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No reason", body = Problem, content_type = "application/problem+json"),
    ))]
async fn unlink(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    Json(request): Json<OverrideRequest>,
) -> Result<Response, ApiError> {
    admin_only(&caller, "unlink a resource")?;
    let reason = check_reason(request.reason.as_deref())?;
    let mut conn = state.conns.acquire().await?;
    let mut tx = conn.begin().await?;
    overrides::unlink(&mut tx, id, &reason, &caller).await?;
    tx.commit().await?;
    tracing::warn!(resource_id = %id, %reason, actor = %caller.actor(), "operator unlinked a resource");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /api/v1/resources/{id}?force=true`: the delete executor, forced.
pub(super) async fn force_delete(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    headers: &HeaderMap,
    query: &DeleteQuery,
) -> Result<Response, ApiError> {
    admin_only(caller, "force a delete")?;
    let reason = check_reason(query.reason.as_deref())?;
    let path = format!("/api/v1/resources/{id}?force=true");
    let key = Idempotency::from_request(headers, caller, "DELETE", &path, &json!(reason))?;
    let details = override_details(caller);
    let delete = Delete::new(&state.catalog, id, if_match(headers)?).forced(&reason, &details);
    let mut conn = state.conns.acquire().await?;
    let mut tx = conn.begin().await?;
    if let Some(replay) = claim(&mut tx, key.as_ref()).await? {
        return Ok(replay);
    }
    let applied = delete.apply(&mut tx).await?;
    db::reconcile::note(
        &mut tx,
        &applied.resource,
        Some(applied.operation.id),
        "force_delete_requested",
        &reason,
        &details,
    )
    .await?;
    let tasks = db::tasks::list_for_operation(&mut tx, applied.operation.id).await?;
    let location = format!("/api/v1/operations/{}", applied.operation.id);
    let body = OperationResponse::new(applied.operation, tasks);
    idempotency::commit(tx, key.as_ref(), StatusCode::ACCEPTED, &body, &location).await
}

/// The backend's objects of a kind that no resource manages yet (admins
/// only: backends do not say which tenant an object is for). Needs the
/// kind's `list_method`.
#[utoipa::path(get, path = "/api/v1/kinds/{kind}/importable", tag = "kinds",
    params(("kind" = String, Path, description = "The kind's name")),
    responses(
        (status = 200, description = "The objects no resource manages", body = ImportableList),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such kind", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The kind has no list method", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The backend failed to list", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_importable(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path(kind): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    admin_only(&caller, "list importable objects")?;
    let kind = state
        .catalog
        .kind(&kind)
        .ok_or_else(|| ApiError::NotFound(format!("no kind `{kind}`")))?;
    let method = kind.list_method.as_deref().ok_or_else(|| {
        ApiError::Conflict(format!("`{}` resources have no list method", kind.name))
    })?;
    let backend = state.backends.get(&kind.backend).ok_or_else(|| {
        ApiError::Conflict(format!("backend `{}` is not configured", kind.backend))
    })?;
    let objects = match tokio::time::timeout(
        backend
            .timeout()
            .unwrap_or(std::time::Duration::from_secs(30)),
        backend.list(method, &kind.name),
    )
    .await
    {
        Ok(Ok(objects)) => objects,
        Ok(Err(e)) => {
            return Ok(bad_gateway(
                &format!("{method}: {e}"),
                Some(&e.to_json(method)),
            ));
        }
        Err(_) => return Ok(bad_gateway(&format!("{method} timed out"), None)),
    };
    let ids: Vec<String> = objects.iter().map(|o| o.backend_id.clone()).collect();
    let mut conn = state.conns.acquire().await?;
    let managed = db::reconcile::managed_among(&mut conn, &kind.name, &ids).await?;
    let items = objects
        .into_iter()
        .filter(|o| !managed.contains(&o.backend_id))
        .map(|o| ImportableObject {
            backend_id: o.backend_id,
            name: o.name,
            runtime_state: o.runtime_state,
            status: Value::Object(o.status.unwrap_or_else(Map::new)),
        })
        .collect();
    Ok(axum::Json(ImportableList { items }).into_response())
}

/// A 502 problem: the backend failed, with its error's details.
fn bad_gateway(detail: &str, details: Option<&Value>) -> Response {
    let mut body = json!({
        "type": "about:blank",
        "title": "Bad Gateway",
        "status": 502,
        "detail": detail,
    });
    if let (Some(details), Some(map)) = (details, body.as_object_mut()) {
        map.insert("error_details".into(), details.clone());
    }
    (
        StatusCode::BAD_GATEWAY,
        [(axum::http::header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(import_resource))
        .routes(routes!(pull_resource))
        .routes(routes!(set_ok))
        .routes(routes!(set_erred))
        .routes(routes!(unlink))
        .routes(routes!(list_importable))
}
