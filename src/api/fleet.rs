//! Fleet-wide views: every resource's operations and history, and counts
//! of operations per state, each within the caller's tenant.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::Query;
use super::operations::{OperationList, Page};
use super::paging::page_limit;
use crate::app::AppState;
use crate::db;
use crate::db::events::FleetEvent;
use crate::domain::{Caller, OperationKind, OperationState, ResourceState};

/// Filters and paging of the fleet-wide operation list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OperationsQuery {
    /// Only operations in this state.
    pub state: Option<OperationState>,
    /// Only this executor: `create`, `update`, `delete` or `action`.
    pub kind: Option<OperationKind>,
    /// Only this action (e.g. `stop`).
    pub action: Option<String>,
    /// Only operations on this resource.
    pub resource_id: Option<Uuid>,
    /// Only operations on resources of this kind.
    pub resource_kind: Option<String>,
    /// Only operations accepted at or after this time (RFC 3339).
    pub created_after: Option<DateTime<Utc>>,
    /// Only operations accepted before this time (RFC 3339).
    pub created_before: Option<DateTime<Utc>>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
}

/// Every resource's operations, newest first, with their tasks.
#[utoipa::path(get, path = "/api/v1/operations", tag = "operations",
    params(OperationsQuery),
    responses(
        (status = 200, description = "A page of operations, newest first", body = OperationList),
        (status = 422, description = "`limit` out of range", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_operations(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<OperationsQuery>,
) -> Result<axum::Json<OperationList>, ApiError> {
    let limit = page_limit(query.limit)?;
    let filter = db::operations::ListFilter {
        tenant: caller.scope(),
        state: query.state,
        kind: query.kind,
        action: query.action.as_deref(),
        resource_id: query.resource_id,
        resource_kind: query.resource_kind.as_deref(),
        created_after: query.created_after,
        created_before: query.created_before,
        before: query.cursor,
    };
    let mut conn = state.conns.acquire().await?;
    let operations = db::operations::list(&mut conn, &filter, limit).await?;
    Ok(axum::Json(
        Page::of_operations(&mut conn, operations, limit).await?,
    ))
}

/// Which operations to count.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SummaryQuery {
    /// Count only operations accepted at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
}

/// How many operations are in each state.
#[derive(Debug, Default, Serialize, ToSchema)]
#[schema(example = json!({
    "since": "2026-11-27T09:00:00Z", "total": 12,
    "counts": {"scheduled": 1, "running": 2, "compensating": 0, "succeeded": 7, "failed": 1, "cancelled": 1}
}))]
pub struct OperationSummary {
    /// The `since` asked for.
    pub since: Option<DateTime<Utc>>,
    /// Every operation counted.
    pub total: i64,
    /// Per state; every state is present.
    pub counts: StateCounts,
}

/// Operations per state.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct StateCounts {
    /// Waiting for their first step.
    pub scheduled: i64,
    /// Under way.
    pub running: i64,
    /// Winding down after a failure or a cancel: running steps finishing,
    /// compensation undoing what was made.
    pub compensating: i64,
    /// Ended well.
    pub succeeded: i64,
    /// Ended with an error.
    pub failed: i64,
    /// Cancelled by request.
    pub cancelled: i64,
}

/// Counts of operations per state, across every resource.
#[utoipa::path(get, path = "/api/v1/operations/summary", tag = "operations",
    params(SummaryQuery),
    responses(
        (status = 200, description = "Counts per state", body = OperationSummary),
    ))]
async fn summarize_operations(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<SummaryQuery>,
) -> Result<axum::Json<OperationSummary>, ApiError> {
    let mut conn = state.conns.acquire().await?;
    let rows = db::operations::count_by_state(&mut conn, caller.scope(), query.since).await?;
    let mut summary = OperationSummary {
        since: query.since,
        ..OperationSummary::default()
    };
    for (name, n) in rows {
        let Some(state) = OperationState::parse(&name) else {
            continue;
        };
        summary.total += n;
        let slot = match state {
            OperationState::Scheduled => &mut summary.counts.scheduled,
            OperationState::Running => &mut summary.counts.running,
            OperationState::Compensating => &mut summary.counts.compensating,
            OperationState::Succeeded => &mut summary.counts.succeeded,
            OperationState::Failed => &mut summary.counts.failed,
            OperationState::Cancelled => &mut summary.counts.cancelled,
        };
        *slot += n;
    }
    Ok(axum::Json(summary))
}

/// One state transition of some resource.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "seq": 42, "resource_id": "0193a5c2-7f3d-7000-8000-000000000001", "resource_kind": "instance",
    "transition": "set_erred", "from_state": "creating", "to_state": "erred",
    "reason": "No valid host was found", "operation_id": "0193a5c2-7f3e-7c1a-9a4e-3f1d2b8c9e01",
    "task_id": "0193a5c2-7f40-7d2b-8c3e-5a6b7c8d9e0f", "created_at": "2026-11-27T10:00:02Z"
}))]
pub struct FleetEventResponse {
    /// Its place in the history of every resource (increasing).
    pub seq: i64,
    /// The resource.
    pub resource_id: Uuid,
    /// The resource's kind.
    pub resource_kind: Option<String>,
    /// The transition: `create`, `begin_creating`, `set_ok`, `set_erred`, `delete`, ...
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
    /// When.
    pub created_at: DateTime<Utc>,
}

impl From<&FleetEvent> for FleetEventResponse {
    fn from(e: &FleetEvent) -> Self {
        Self {
            seq: e.event.seq,
            resource_id: e.event.resource_id,
            resource_kind: e.resource_kind.clone(),
            transition: e.event.transition.clone(),
            from_state: e.event.from_state,
            to_state: e.event.to_state,
            reason: e.event.reason.clone(),
            operation_id: e.event.operation_id,
            task_id: e.event.task_id,
            created_at: e.event.created_at,
        }
    }
}

/// A page of the fleet's history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct FleetEventList {
    /// The events.
    pub items: Vec<FleetEventResponse>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}

/// Filters and paging of the fleet's history.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FleetEventsQuery {
    /// Only events of this resource.
    pub resource_id: Option<Uuid>,
    /// Only events of resources of this kind.
    pub kind: Option<String>,
    /// Only this transition (e.g. `set_erred`).
    pub transition: Option<String>,
    /// Only events with a `seq` above this one.
    pub after: Option<i64>,
    /// Only events with a `seq` below this one: `next_before` of the previous page.
    pub before: Option<i64>,
    /// Only events written at or after this time (RFC 3339).
    pub created_after: Option<DateTime<Utc>>,
    /// Only events written before this time (RFC 3339).
    pub created_before: Option<DateTime<Utc>>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
}

/// Every resource's history, newest first (deleted resources' too, until pruned).
#[utoipa::path(get, path = "/api/v1/events", tag = "resources",
    params(FleetEventsQuery),
    responses(
        (status = 200, description = "A page of events, newest first", body = FleetEventList),
        (status = 422, description = "`limit` out of range", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<FleetEventsQuery>,
) -> Result<axum::Json<FleetEventList>, ApiError> {
    let limit = page_limit(query.limit)?;
    let filter = db::events::ListFilter {
        tenant: caller.scope(),
        resource_id: query.resource_id,
        kind: query.kind.as_deref(),
        transition: query.transition.as_deref(),
        after: query.after,
        before: query.before,
        created_after: query.created_after,
        created_before: query.created_before,
    };
    let mut conn = state.conns.acquire().await?;
    let events = db::events::list(&mut conn, &filter, true, limit).await?;
    let next_before = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.event.seq))
        .flatten();
    let items = events.iter().map(FleetEventResponse::from).collect();
    Ok(axum::Json(FleetEventList { items, next_before }))
}

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_operations))
        .routes(routes!(summarize_operations))
        .routes(routes!(list_events))
}
