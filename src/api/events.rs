//! `/api/v1/resources/{id}/events`: a resource's state history.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::{PathId, Query};
use super::paging::page_limit;
use crate::app::AppState;
use crate::db;
use crate::domain::{Caller, ResourceState};

/// One state transition in a resource's history.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "seq": 42, "transition": "set_erred", "from_state": "creating", "to_state": "erred",
    "reason": "No valid host was found", "operation_id": "0193a5c2-7f3e-7c1a-9a4e-3f1d2b8c9e01",
    "task_id": "0193a5c2-7f40-7d2b-8c3e-5a6b7c8d9e0f", "created_at": "2026-11-27T10:00:02Z"
}))]
pub struct EventResponse {
    /// Its place in the history (increasing).
    pub seq: i64,
    /// The transition: `create`, `schedule_updating`, `begin_creating`, `set_ok`, `set_erred`, `recover`, `retry`, `delete`, ...
    pub transition: String,
    /// The state before (absent at creation).
    pub from_state: Option<ResourceState>,
    /// The state after (absent at deletion).
    pub to_state: Option<ResourceState>,
    /// Why, when there is more to say.
    pub reason: Option<String>,
    /// The operation that made it.
    pub operation_id: Option<Uuid>,
    /// The task that made it.
    pub task_id: Option<Uuid>,
    /// More about it: a `drift`'s `before` and `after` (runtime state and
    /// status), an override's `actor` (token id and name, tenant, role), a
    /// forgetting failure's backend error.
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A page of a resource's history, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    /// The events.
    pub items: Vec<EventResponse>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<i64>,
}

/// Paging for the history.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// `next_after` of the previous page.
    pub after: Option<i64>,
}

/// A resource's state history, oldest first (also after the resource is deleted).
#[utoipa::path(get, path = "/api/v1/resources/{id}/events", tag = "resources",
    params(("id" = Uuid, Path, description = "The resource's id"), EventsQuery),
    responses(
        (status = 200, description = "A page of events", body = EventList),
        (status = 404, description = "No such resource, now or before", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`limit` out of range", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_resource_events(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    Query(query): Query<EventsQuery>,
) -> Result<axum::Json<EventList>, ApiError> {
    let limit = page_limit(query.limit)?;
    let mut conn = state.conns.acquire().await?;
    let events =
        db::events::list_for_resource(&mut conn, id, caller.scope(), query.after, limit).await?;
    if events.is_empty() && query.after.is_none() {
        return Err(ApiError::NotFound(format!("no resource with id {id}")));
    }
    let next_after = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    let items = events
        .into_iter()
        .map(|e| EventResponse {
            seq: e.seq,
            transition: e.transition,
            from_state: e.from_state,
            to_state: e.to_state,
            reason: e.reason,
            operation_id: e.operation_id,
            task_id: e.task_id,
            details: e.details,
            created_at: e.created_at,
        })
        .collect();
    Ok(axum::Json(EventList { items, next_after }))
}

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_resource_events))
}
