//! `/api/v1/operations` and `/api/v1/tasks`: what an operation is doing, step by step.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Connection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::{PathId, Query};
use crate::app::AppState;
use crate::db;
use crate::db::operations::Operation;
use crate::db::tasks::Task;
use crate::domain::{Caller, OperationKind, OperationState, Queue, TaskState};
use crate::executor::control;

/// The longest `wait` accepted, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;

/// One step of an operation.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "0193a5c2-7f40-7d2b-8c3e-5a6b7c8d9e0f", "operation_id": "0193a5c2-7f3e-7c1a-9a4e-3f1d2b8c9e01",
    "position": 1, "type": "throttle", "queue": "regular", "state": "waiting", "attempts": 0, "max_attempts": 5,
    "run_at": "2026-11-27T10:00:00Z", "status": "waiting for a throttle slot: 4/4 in use for instance.tenant:acme (place 1 in line)",
    "last_error": null, "result": null, "worker": "4242:1a2b3c4d", "started_at": "2026-11-27T10:00:00Z", "finished_at": null
}))]
pub struct TaskResponse {
    /// Its id; also the idempotency key of its backend calls.
    pub id: Uuid,
    /// Its operation; absent for a periodic job.
    pub operation_id: Option<Uuid>,
    /// The periodic job it runs (`pull`, `sweep`, `prune`), if it is one.
    pub job: Option<String>,
    /// The resource it acts on: its operation's, or one of that resource's
    /// children; absent for a periodic job.
    pub resource_id: Option<Uuid>,
    /// Its place in the operation's task list, from 0.
    pub position: i32,
    /// The positions of the tasks that wait for it (none for a last step).
    pub next: Vec<i32>,
    /// Whether it undoes what a failed or cancelled create made (a
    /// compensation step).
    pub undo: bool,
    /// The task type: `state_transition`, `backend_method`, `poll_runtime_state`, `poll_backend_check` or `throttle`.
    #[serde(rename = "type")]
    pub task_type: String,
    /// The step's arguments, as the catalog wrote them.
    pub args: Value,
    /// The worker pool that runs it.
    pub queue: Queue,
    /// Where it stands.
    pub state: TaskState,
    /// Times it was claimed (polls and waits give theirs back).
    pub attempts: i32,
    /// Claims allowed before it fails for good.
    pub max_attempts: i32,
    /// Not run before this time.
    pub run_at: DateTime<Utc>,
    /// What it is doing or waiting for, in words.
    pub status: Option<String>,
    /// The last error it met.
    pub last_error: Option<String>,
    /// For a step that failed on a backend call, the backend's whole error:
    /// `message`, `class` (`transient`, `permanent` or `not_found`),
    /// `method`, and what a real driver saw: `http_status` or `exit_code`,
    /// and `body`, the start of the reply (at most 4 KiB).
    #[schema(value_type = Option<Object>, example = json!({"message": "No valid host was found", "class": "permanent", "method": "create_instance", "http_status": 400, "body": "{\"detail\": \"No valid host was found\"}"}))]
    pub error_details: Option<Value>,
    /// What it produced (e.g. the backend id).
    pub result: Option<Value>,
    /// The runner that last claimed it.
    pub worker: Option<String>,
    /// When it first ran.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<Task> for TaskResponse {
    fn from(t: Task) -> Self {
        Self {
            id: t.id,
            operation_id: t.operation_id,
            job: t.job,
            resource_id: t.resource_id,
            position: t.position,
            next: t.next,
            undo: t.undo,
            task_type: t.task_type,
            args: t.args,
            queue: t.queue,
            state: t.state,
            attempts: t.attempts,
            max_attempts: t.max_attempts,
            run_at: t.run_at,
            status: t.status,
            last_error: t.last_error,
            error_details: t.error_details,
            result: t.result,
            worker: t.worker,
            started_at: t.started_at,
            finished_at: t.finished_at,
        }
    }
}

/// One executor run on a resource, with its tasks in order.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "0193a5c2-7f3e-7c1a-9a4e-3f1d2b8c9e01", "resource_id": "0193a5c2-7f3d-7000-8000-000000000001",
    "resource_kind": "instance", "kind": "action", "action": "stop", "state": "running", "request": {},
    "error": null, "step_count": 3, "steps_done": 1, "tasks": [],
    "created_at": "2026-11-27T10:00:00Z", "started_at": "2026-11-27T10:00:00Z", "finished_at": null
}))]
pub struct OperationResponse {
    /// Its id.
    pub id: Uuid,
    /// The resource it acts on (kept after a delete).
    pub resource_id: Uuid,
    /// The resource's kind.
    pub resource_kind: String,
    /// Which executor: `create`, `update`, `delete` or `action`.
    pub kind: OperationKind,
    /// The action's name, for actions.
    pub action: Option<String>,
    /// Where it stands.
    pub state: OperationState,
    /// The validated input: an update's changes, an action's parameters.
    pub request: Value,
    /// Why it failed.
    pub error: Option<String>,
    /// Steps in its chain.
    pub step_count: i32,
    /// Steps done: its tasks that succeeded.
    pub steps_done: i32,
    /// Where its compensation starts (the position of its first undo step),
    /// once a failed or cancelled create of a composite kind planned it.
    pub compensation_at: Option<i32>,
    /// Its steps, in order.
    pub tasks: Vec<TaskResponse>,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When its first step started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

impl OperationResponse {
    /// An operation with its tasks.
    pub fn new(o: Operation, tasks: Vec<Task>) -> Self {
        Self {
            id: o.id,
            resource_id: o.resource_id,
            resource_kind: o.resource_kind,
            kind: o.kind,
            action: o.action,
            state: o.state,
            request: o.request,
            error: o.error,
            step_count: o.step_count,
            compensation_at: o.compensation_at,
            steps_done: i32::try_from(
                tasks
                    .iter()
                    .filter(|t| t.state == TaskState::Succeeded)
                    .count(),
            )
            .unwrap_or(i32::MAX),
            tasks: tasks.into_iter().map(TaskResponse::from).collect(),
            created_at: o.created_at,
            started_at: o.started_at,
            finished_at: o.finished_at,
        }
    }
}

/// A page of operations, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationList {
    /// The operations, each with its tasks.
    pub items: Vec<OperationResponse>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

/// Builds pages.
#[derive(Debug)]
pub struct Page;

impl Page {
    /// A page of operations with their tasks, loaded in one query.
    pub async fn of_operations(
        conn: &mut sqlx::PgConnection,
        operations: Vec<Operation>,
        limit: i64,
    ) -> Result<OperationList, ApiError> {
        let ids: Vec<Uuid> = operations.iter().map(|o| o.id).collect();
        let mut tasks = db::tasks::list_for_operations(conn, &ids).await?;
        let next_cursor = (ids.len() as i64 == limit)
            .then(|| ids.last().copied())
            .flatten();
        let items = operations
            .into_iter()
            .map(|o| {
                let (mine, rest): (Vec<Task>, Vec<Task>) =
                    tasks.drain(..).partition(|t| t.operation_id == Some(o.id));
                tasks = rest;
                OperationResponse::new(o, mine)
            })
            .collect();
        Ok(OperationList { items, next_cursor })
    }
}

/// Long-polling.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds to wait (0 to 60) for the operation in flight to end: the
    /// answer comes as soon as it ends, or after this long as things stand.
    pub wait: Option<u64>,
}

impl WaitQuery {
    /// When the wait asked for ends; a `422` past [`MAX_WAIT_SECS`].
    pub fn deadline(&self) -> Result<tokio::time::Instant, ApiError> {
        match self.wait.unwrap_or(0) {
            n @ 0..=MAX_WAIT_SECS => Ok(tokio::time::Instant::now() + Duration::from_secs(n)),
            n => Err(ApiError::invalid_field(
                "/wait",
                format!("must be 0 to {MAX_WAIT_SECS} seconds, not {n}"),
            )),
        }
    }
}

/// Waits until operation `id` finishes (told by `finished`, subscribed
/// before the caller read it, so a finish in between is not missed), one
/// second has passed (in case a notification was lost), `deadline`, or the
/// process begins to stop, whichever is first.
pub(super) async fn until_finished(
    state: &AppState,
    finished: &mut tokio::sync::broadcast::Receiver<Uuid>,
    id: Uuid,
    deadline: tokio::time::Instant,
) {
    let recheck = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
    loop {
        tokio::select! {
            got = finished.recv() => match got {
                Ok(done) if done != id => continue,
                _ => return,
            },
            () = tokio::time::sleep_until(recheck) => return,
            () = state.events.stopping() => return,
        }
    }
}

/// Get an operation with its tasks; ?wait=N long-polls until it finishes.
#[utoipa::path(get, path = "/api/v1/operations/{id}", tag = "operations",
    params(("id" = Uuid, Path, description = "The operation's id"), WaitQuery),
    responses(
        (status = 200, description = "The operation, with its tasks in order", body = OperationResponse),
        (status = 404, description = "No such operation", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`wait` over 60", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_operation(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    Query(query): Query<WaitQuery>,
) -> Result<axum::Json<OperationResponse>, ApiError> {
    let deadline = query.deadline()?;
    // Subscribe before reading, so a finish between the read and the wait is not missed.
    let mut finished = state.events.subscribe_finished();
    loop {
        let mut conn = state.conns.acquire().await?;
        let operation = db::operations::get_in(&mut conn, id, caller.scope())
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no operation with id {id}")))?;
        if operation.state.is_finished()
            || tokio::time::Instant::now() >= deadline
            || state.events.is_stopping()
        {
            let tasks = db::tasks::list_for_operation(&mut conn, id).await?;
            return Ok(axum::Json(OperationResponse::new(operation, tasks)));
        }
        drop(conn);
        until_finished(&state, &mut finished, id, deadline).await;
    }
}

/// Cancel a scheduled or running operation; the resource ends erred. A
/// composite operation winds down instead: it is `compensating` while its
/// running steps finish and its compensation undoes what it made, then ends
/// `cancelled`.
#[utoipa::path(post, path = "/api/v1/operations/{id}/cancel", tag = "operations",
    params(("id" = Uuid, Path, description = "The operation's id")),
    responses(
        (status = 200, description = "Cancelled (pending tasks cancelled, a running one stopped and fenced), or compensating", body = OperationResponse),
        (status = 404, description = "No such operation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The operation has already ended, or is already compensating", body = Problem, content_type = "application/problem+json"),
    ))]
async fn cancel_operation(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<axum::Json<OperationResponse>, ApiError> {
    let mut conn = state.conns.acquire().await?;
    let mut tx = conn.begin().await?;
    let (operation, finished) =
        control::cancel(&mut tx, &state.catalog, id, caller.scope()).await?;
    let tasks = db::tasks::list_for_operation(&mut tx, id).await?;
    tx.commit().await?;
    finished.committed();
    Ok(axum::Json(OperationResponse::new(operation, tasks)))
}

/// Retry a failed operation from its failed step; earlier steps keep their results.
#[utoipa::path(post, path = "/api/v1/operations/{id}/retry", tag = "operations",
    params(("id" = Uuid, Path, description = "The operation's id")),
    responses(
        (status = 202, description = "Running again from its failed step", body = OperationResponse),
        (status = 404, description = "No such operation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not failed, or the resource changed since", body = Problem, content_type = "application/problem+json"),
    ))]
async fn retry_operation(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<(StatusCode, axum::Json<OperationResponse>), ApiError> {
    let mut conn = state.conns.acquire().await?;
    let mut tx = conn.begin().await?;
    let operation = control::retry(&mut tx, id, caller.scope()).await?;
    let tasks = db::tasks::list_for_operation(&mut tx, id).await?;
    tx.commit().await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(OperationResponse::new(operation, tasks)),
    ))
}

/// Get one task.
#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "operations",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task", body = TaskResponse),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<axum::Json<TaskResponse>, ApiError> {
    let mut conn = state.conns.acquire().await?;
    let task = db::tasks::get_in(&mut conn, id, caller.scope())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no task with id {id}")))?;
    Ok(axum::Json(task.into()))
}

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_operation))
        .routes(routes!(cancel_operation))
        .routes(routes!(retry_operation))
        .routes(routes!(get_task))
}
