//! `/api/v1/resources`: create, read, list, update, delete, and run actions.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::Connection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::{Json, PathId, Query, body_rejection, check_json_content_type, json_value};
use super::idempotency::{self, Idempotency};
use super::operations::{OperationList, OperationResponse, Page, WaitQuery, until_finished};
use super::paging::{PageQuery, page_limit};
use super::reconcile::DeleteQuery;
use crate::app::AppState;
use crate::catalog::Catalog;
use crate::db;
use crate::db::resources::{ChildSummary, Resource};
use crate::domain::{Caller, ResourceState};
use crate::executor::{Action, Create, Delete, Executor, Update};

/// A resource.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "0193a5c2-7f3e-7c1a-9a4e-3f1d2b8c9e01", "kind": "instance", "name": "web-1",
    "state": "ok", "runtime_state": "ACTIVE", "backend_id": "sim-6f1c0a3e9b2d4c8e",
    "attributes": {"tenant": "acme", "flavor": "small", "image": "debian-12"}, "status": {},
    "error_message": null, "action": null, "action_details": null, "current_operation_id": null,
    "version": 5, "created_at": "2026-11-27T10:00:00Z", "updated_at": "2026-11-27T10:00:02Z"
}))]
pub struct ResourceResponse {
    /// Its id.
    pub id: Uuid,
    /// Its kind (see `GET /api/v1/kinds`).
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Where it stands.
    pub state: ResourceState,
    /// The backend's last reported runtime state (e.g. `ACTIVE`, `SHUTOFF`).
    pub runtime_state: Option<String>,
    /// The backend's id for it.
    pub backend_id: Option<String>,
    /// Its attributes, as its users gave them and the kind's schema describes.
    pub attributes: Value,
    /// What its backend reports about it (addresses, sizes, …), kept apart
    /// from the attributes: `{}` until the backend reports something.
    pub status: Value,
    /// Why the last operation failed, while `erred`.
    pub error_message: Option<String>,
    /// More about that failure, while `erred`: the failed step's
    /// `error_details` (see the task), when a backend call failed.
    #[schema(value_type = Option<Object>)]
    pub error_details: Option<Value>,
    /// The action in flight.
    pub action: Option<String>,
    /// The parameters of the action in flight.
    pub action_details: Option<Value>,
    /// The operation in flight.
    pub current_operation_id: Option<Uuid>,
    /// Bumped on every change; also the `ETag`, for `If-Match`.
    pub version: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// The composite resource it is part of, if any (a server, for its volume).
    pub parent_id: Option<Uuid>,
    /// Its role in its parent (`volumes`, `port`, …).
    pub role: Option<String>,
    /// A composite resource's children, oldest first; `[]` for others.
    pub children: Vec<ChildSummary>,
}

impl ResourceResponse {
    /// Reads the children of the composite ones among `items` and puts each
    /// with its parent (no query when none is of a kind with children).
    async fn with_children(
        conn: &mut sqlx::PgConnection,
        catalog: &Catalog,
        items: &mut [ResourceResponse],
    ) -> sqlx::Result<()> {
        let ids: Vec<Uuid> = items
            .iter()
            .filter(|r| {
                catalog
                    .kind(&r.kind)
                    .is_some_and(|k| !k.children.is_empty())
            })
            .map(|r| r.id)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        for child in db::resources::children_of(conn, &ids).await? {
            if let Some(parent) = items.iter_mut().find(|r| Some(r.id) == child.parent_id) {
                parent.children.push(child);
            }
        }
        Ok(())
    }
}

impl From<Resource> for ResourceResponse {
    fn from(r: Resource) -> Self {
        Self {
            id: r.id,
            kind: r.kind,
            name: r.name,
            state: r.state,
            runtime_state: r.runtime_state,
            backend_id: r.backend_id,
            attributes: r.attributes,
            status: r.status,
            error_message: r.error_message,
            error_details: r.error_details,
            action: r.action,
            action_details: r.action_details,
            current_operation_id: r.current_operation_id,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            parent_id: r.parent_id,
            role: r.role,
            children: Vec::new(),
        }
    }
}

/// A page of resources, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceList {
    /// The resources.
    pub items: Vec<ResourceResponse>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

/// What to create.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"kind": "instance", "name": "web-1", "attributes": {"tenant": "acme", "flavor": "small", "image": "debian-12"}}))]
pub struct CreateResourceRequest {
    /// The kind (see `GET /api/v1/kinds`).
    pub kind: String,
    /// A name: 1 to 255 characters.
    pub name: String,
    /// Attributes, valid against the kind's schema.
    #[serde(default = "empty_object")]
    pub attributes: Value,
}

fn empty_object() -> Value {
    json!({})
}

/// What to change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "web-2"}))]
pub struct UpdateResourceRequest {
    /// A new name.
    #[serde(default)]
    pub name: Option<String>,
    /// Attributes to change; only those the kind lists as updatable.
    #[serde(default)]
    pub attributes: Option<Map<String, Value>>,
}

/// Filters and paging for the resource list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListResourcesQuery {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this state.
    pub state: Option<ResourceState>,
    /// Only this exact name.
    pub name: Option<String>,
    /// Only the children of this resource.
    pub parent_id: Option<Uuid>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
}

/// Parses `If-Match`: a version in quotes (the `ETag`), or `*` for any.
pub(super) fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(raw) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let raw = raw.to_str().unwrap_or_default().trim();
    if raw == "*" {
        return Ok(None);
    }
    raw.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| {
            ApiError::PreconditionFailed(format!(
                "If-Match `{raw}` names no version of this resource"
            ))
        })
}

/// Create a resource; its create operation starts at once.
#[utoipa::path(post, path = "/api/v1/resources", tag = "resources",
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key: a repeat with the same body returns the first response")),
    request_body = CreateResourceRequest,
    responses(
        (status = 201, description = "Created; its create operation is `current_operation_id`", body = ResourceResponse,
            headers(("Location" = String, description = "The resource's URL"))),
        (status = 422, description = "Unknown kind, invalid name or attributes", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_resource(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(request): Json<CreateResourceRequest>,
) -> Result<Response, ApiError> {
    let key = Idempotency::from_request(
        &headers,
        &caller,
        "POST",
        "/api/v1/resources",
        &json!(request),
    )?;
    let create = Create::parse(
        &state.catalog,
        &request.kind,
        &request.name,
        request.attributes,
    )?
    .for_tenant(&caller.tenant);
    created(&state, key, create).await
}

/// Applies a create or import executor and answers 201 with the new
/// resource (and its children).
pub(super) async fn created<E: Executor + Sync + Send>(
    state: &AppState,
    key: Option<Idempotency>,
    executor: E,
) -> Result<Response, ApiError> {
    let mut conn = state.conns.acquire().await?;
    let mut tx = conn.begin().await?;
    if let Some(replay) = claim(&mut tx, key.as_ref()).await? {
        return Ok(replay);
    }
    let applied = executor.apply(&mut tx).await?;
    let location = format!("/api/v1/resources/{}", applied.resource.id);
    let mut body = [ResourceResponse::from(applied.resource)];
    ResourceResponse::with_children(&mut tx, &state.catalog, &mut body).await?;
    let [body] = body;
    idempotency::commit(tx, key.as_ref(), StatusCode::CREATED, &body, &location).await
}

pub(super) async fn claim(
    conn: &mut sqlx::PgConnection,
    key: Option<&Idempotency>,
) -> Result<Option<Response>, ApiError> {
    match key {
        Some(key) => key.claim(conn).await,
        None => Ok(None),
    }
}

/// List resources, newest first.
#[utoipa::path(get, path = "/api/v1/resources", tag = "resources", params(ListResourcesQuery),
    responses(
        (status = 200, description = "A page of resources", body = ResourceList),
        (status = 422, description = "`limit` out of range", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_resources(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListResourcesQuery>,
) -> Result<axum::Json<ResourceList>, ApiError> {
    let limit = page_limit(query.limit)?;
    for (field, value) in [("kind", &query.kind), ("name", &query.name)] {
        if value
            .as_deref()
            .is_some_and(|v| v.contains('\0') || v.chars().count() > 255)
        {
            return Err(ApiError::BadRequest(format!(
                "query parameter `{field}` must be at most 255 characters, without NUL"
            )));
        }
    }
    let filter = db::resources::ListFilter {
        kind: query.kind.as_deref(),
        state: query.state,
        name: query.name.as_deref(),
        before: query.cursor,
        tenant: caller.scope(),
        parent_id: query.parent_id,
    };
    let mut conn = state.conns.acquire().await?;
    let rows = db::resources::list(&mut conn, &filter, limit).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let mut items: Vec<ResourceResponse> = rows.into_iter().map(ResourceResponse::from).collect();
    ResourceResponse::with_children(&mut conn, &state.catalog, &mut items).await?;
    Ok(axum::Json(ResourceList { items, next_cursor }))
}

/// Get a resource; ?wait=N long-polls until the operation in flight on it ends.
#[utoipa::path(get, path = "/api/v1/resources/{id}", tag = "resources",
    params(("id" = Uuid, Path, description = "The resource's id"), WaitQuery),
    responses(
        (status = 200, description = "The resource", body = ResourceResponse,
            headers(("ETag" = String, description = "The resource's version, for If-Match"))),
        (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`wait` over 60", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_resource(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    Query(query): Query<WaitQuery>,
) -> Result<Response, ApiError> {
    let deadline = query.deadline()?;
    // Subscribe before reading, so a finish between the read and the wait is not missed.
    let mut finished = state.events.subscribe_finished();
    let (resource, mut conn) = loop {
        let mut conn = state.conns.acquire().await?;
        let resource = db::resources::get_in(&mut conn, id, caller.scope())
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no resource with id {id}")))?;
        match resource.current_operation_id {
            Some(operation)
                if tokio::time::Instant::now() < deadline && !state.events.is_stopping() =>
            {
                drop(conn);
                until_finished(&state, &mut finished, operation, deadline).await;
            }
            _ => break (resource, conn),
        }
    };
    let etag = HeaderValue::from_str(&format!("\"{}\"", resource.version)).ok();
    let mut body = [ResourceResponse::from(resource)];
    ResourceResponse::with_children(&mut conn, &state.catalog, &mut body).await?;
    drop(conn);
    let [body] = body;
    let mut response = axum::Json(body).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// Update a resource's name or updatable attributes; runs the update executor.
#[utoipa::path(patch, path = "/api/v1/resources/{id}", tag = "resources",
    params(("id" = Uuid, Path, description = "The resource's id"),
        ("If-Match" = Option<String>, Header, description = "Only if the resource is at this version (its ETag)"),
        ("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key")),
    request_body = UpdateResourceRequest,
    responses(
        (status = 202, description = "Accepted: the update operation", body = OperationResponse,
            headers(("Location" = String, description = "The operation's URL"))),
        (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Wrong state, or an operation in flight", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid or non-updatable fields", body = Problem, content_type = "application/problem+json"),
    ))]
async fn update_resource(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
    Json(request): Json<UpdateResourceRequest>,
) -> Result<Response, ApiError> {
    let path = format!("/api/v1/resources/{id}");
    let key = Idempotency::from_request(&headers, &caller, "PATCH", &path, &json!(request))?;
    let update = Update::new(
        &state.catalog,
        id,
        request.name,
        request.attributes,
        if_match(&headers)?,
    )
    .within(caller.scope());
    run(&state, key, update).await
}

/// Delete a resource; runs the delete executor.
#[utoipa::path(delete, path = "/api/v1/resources/{id}", tag = "resources",
    params(("id" = Uuid, Path, description = "The resource's id"),
        ("If-Match" = Option<String>, Header, description = "Only if the resource is at this version (its ETag)"),
        ("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key"),
        DeleteQuery),
    responses(
        (status = 202, description = "Accepted: the delete operation", body = OperationResponse,
            headers(("Location" = String, description = "The operation's URL"))),
        (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Wrong state, or an operation in flight", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key already used for a different request", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_resource(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    Query(query): Query<DeleteQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if query.force == Some(true) {
        return super::reconcile::force_delete(&state, &caller, id, &headers, &query).await;
    }
    let path = format!("/api/v1/resources/{id}");
    let key = Idempotency::from_request(&headers, &caller, "DELETE", &path, &Value::Null)?;
    run(
        &state,
        key,
        Delete::new(&state.catalog, id, if_match(&headers)?).within(caller.scope()),
    )
    .await
}

/// Run a named action of the resource's kind (see GET /api/v1/kinds).
#[utoipa::path(post, path = "/api/v1/resources/{id}/actions/{action}", tag = "resources",
    params(("id" = Uuid, Path, description = "The resource's id"),
        ("action" = String, Path, description = "The action's name, e.g. `stop`"),
        ("If-Match" = Option<String>, Header, description = "Only if the resource is at this version (its ETag)"),
        ("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key")),
    request_body(content = Object, content_type = "application/json",
        description = "The action's parameters (its `params` schema), as `application/json` in UTF-8. \
            Optional: with no body and no `Content-Type` the parameters are `{}`.",
        example = json!({"flavor": "large"})),
    responses(
        (status = 202, description = "Accepted: the action's operation", body = OperationResponse,
            headers(("Location" = String, description = "The operation's URL"))),
        (status = 404, description = "No such resource or action", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Wrong state or runtime state, or an operation in flight", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid parameters", body = Problem, content_type = "application/problem+json"),
    ))]
async fn run_action(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path((id, action)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("bad id in the path: `{id}` is not a UUID")))?;
    let params = action_params(&headers, body)?;
    let path = format!("/api/v1/resources/{id}/actions/{action}");
    let key = Idempotency::from_request(&headers, &caller, "POST", &path, &params)?;
    run(
        &state,
        key,
        Action::new(&state.catalog, id, action, params, if_match(&headers)?).within(caller.scope()),
    )
    .await
}

/// An action's body: JSON under the rules of every JSON body, or nothing at
/// all (no body and no `Content-Type`) for `{}`. A declared non-JSON type is
/// refused even with an empty body, so that a browser's form post cannot run
/// an action.
fn action_params(
    headers: &HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Value, ApiError> {
    let bytes = body.map_err(|e| body_rejection(&e))?;
    let empty = bytes.iter().all(u8::is_ascii_whitespace);
    if empty && !headers.contains_key(header::CONTENT_TYPE) {
        return Ok(empty_object());
    }
    check_json_content_type(headers)?;
    if empty {
        return Ok(empty_object());
    }
    json_value(&bytes)
}

/// Applies an update, delete or action executor and answers 202 with its operation.
pub(super) async fn run<E: Executor + Sync + Send>(
    state: &AppState,
    key: Option<Idempotency>,
    executor: E,
) -> Result<Response, ApiError> {
    let mut conn = state.conns.acquire().await?;
    let mut tx = conn.begin().await?;
    if let Some(replay) = claim(&mut tx, key.as_ref()).await? {
        return Ok(replay);
    }
    let applied = executor.apply(&mut tx).await?;
    let tasks = db::tasks::list_for_operation(&mut tx, applied.operation.id).await?;
    let location = format!("/api/v1/operations/{}", applied.operation.id);
    let body = OperationResponse::new(applied.operation, tasks);
    idempotency::commit(tx, key.as_ref(), StatusCode::ACCEPTED, &body, &location).await
}

/// A resource's operations, newest first (also after the resource is deleted).
#[utoipa::path(get, path = "/api/v1/resources/{id}/operations", tag = "resources",
    params(("id" = Uuid, Path, description = "The resource's id"), PageQuery),
    responses(
        (status = 200, description = "A page of operations, each with its tasks", body = OperationList),
        (status = 404, description = "No such resource, now or before", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`limit` out of range", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_resource_operations(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<OperationList>, ApiError> {
    let limit = page_limit(query.limit)?;
    let mut conn = state.conns.acquire().await?;
    let operations =
        db::operations::list_for_resource(&mut conn, id, caller.scope(), query.cursor, limit)
            .await?;
    if operations.is_empty()
        && query.cursor.is_none()
        && db::resources::get_in(&mut conn, id, caller.scope())
            .await?
            .is_none()
    {
        return Err(ApiError::NotFound(format!("no resource with id {id}")));
    }
    Ok(axum::Json(
        Page::of_operations(&mut conn, operations, limit).await?,
    ))
}

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_resource, list_resources))
        .routes(routes!(get_resource, update_resource, delete_resource))
        .routes(routes!(run_action))
        .routes(routes!(list_resource_operations))
}
