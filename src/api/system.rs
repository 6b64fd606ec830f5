//! `/api/v1/system/overview`, `/api/v1/jobs` and `/api/v1/whoami`: read-only
//! views for operators and the console.
//!
//! What each caller sees:
//! - queue figures (depths, oldest age) are fleet-wide for every role: they
//!   describe the shared runners, and are only counts;
//! - running tasks, throttle scopes and operation counts are the caller's
//!   tenant's (an admin's: every tenant's);
//! - periodic jobs are the service's own: every role sees when they ran and
//!   how they ended; their summaries and errors, which count every tenant's
//!   resources, only admins.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::ApiError;
use crate::app::AppState;
use crate::db;
use crate::domain::{Caller, Queue, Role, TaskState};

/// Running tasks listed at most.
const RUNNING_LIMIT: i64 = 100;
/// Runs listed per periodic job.
const RUNS_PER_JOB: i64 = 10;
/// The span of the operations chart, and its bucket.
const CHART_SPAN_MINUTES: i64 = 60;
const CHART_BUCKET_SECS: i64 = 300;

/// One queue's tasks.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueStats {
    /// The queue.
    pub queue: Queue,
    /// Tasks due and waiting for a runner: the backlog.
    pub ready: i64,
    /// Tasks ready but not yet due (retries after a backoff, polls between looks).
    pub scheduled: i64,
    /// Tasks being run.
    pub running: i64,
    /// How long the oldest due task has waited, in milliseconds (0 without backlog).
    pub oldest_ready_age_ms: i64,
}

/// A task being run now.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunningTaskResponse {
    /// The task.
    pub id: Uuid,
    /// Its operation (absent for a periodic job).
    pub operation_id: Option<Uuid>,
    /// The periodic job it runs, if it is one.
    pub job: Option<String>,
    /// The resource its operation acts on.
    pub resource_id: Option<Uuid>,
    /// That resource's kind.
    pub resource_kind: Option<String>,
    /// The task type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// The backend method or state transition it runs, if it names one.
    pub step: Option<String>,
    /// Its queue.
    pub queue: Queue,
    /// Times it was claimed.
    pub attempts: i32,
    /// What it is doing, in words.
    pub status: Option<String>,
    /// The runner that holds it.
    pub worker: Option<String>,
    /// When it first ran.
    pub started_at: Option<DateTime<Utc>>,
}

/// A throttle scope with slots held or waited for.
#[derive(Debug, Serialize, ToSchema)]
pub struct ThrottleScopeResponse {
    /// The tenant it belongs to (empty while the service runs open).
    pub tenant: String,
    /// Its name, e.g. `instance.tenant:acme`.
    pub name: String,
    /// Slots it allows.
    pub limit: i32,
    /// Slots in use.
    pub in_use: i64,
    /// Operations waiting in line for a slot.
    pub waiting: i64,
    /// Since when the first in line has waited.
    pub oldest_waiting_since: Option<DateTime<Utc>>,
}

/// Operations created in one time bucket, by their state now.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationBucketResponse {
    /// The bucket's start.
    pub start: DateTime<Utc>,
    /// Operations per state (states without any are left out).
    #[schema(value_type = Object, example = json!({"succeeded": 12, "failed": 1}))]
    pub counts: BTreeMap<String, i64>,
}

/// The operations of the last hour, in buckets.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationChart {
    /// The first bucket's start.
    pub since: DateTime<Utc>,
    /// Each bucket's length, in seconds.
    pub bucket_secs: i64,
    /// The buckets with any operation, oldest first.
    pub buckets: Vec<OperationBucketResponse>,
}

/// What the system is doing now.
#[derive(Debug, Serialize, ToSchema)]
pub struct SystemOverview {
    /// When this was read.
    pub generated_at: DateTime<Utc>,
    /// Every queue, fleet-wide.
    pub queues: Vec<QueueStats>,
    /// Running tasks, longest-running first (at most 100).
    pub running_tasks: Vec<RunningTaskResponse>,
    /// Throttle scopes with a slot in use or an operation waiting.
    pub throttle_scopes: Vec<ThrottleScopeResponse>,
    /// Operations created in the last hour, by state, in 5-minute buckets.
    pub operations_last_hour: OperationChart,
}

/// The queues, running tasks, throttle scopes and recent operations.
///
/// Queue figures are fleet-wide for every caller; the rest is the caller's
/// tenant's (an admin's: every tenant's).
#[utoipa::path(get, path = "/api/v1/system/overview", tag = "system",
    responses((status = 200, description = "The overview", body = SystemOverview)))]
async fn overview(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<SystemOverview>, ApiError> {
    let mut conn = state.conns.acquire().await?;
    let now = Utc::now();
    let depths = db::system::queue_depths(&mut conn).await?;
    let queues = Queue::ALL
        .into_iter()
        .map(|queue| {
            let depth = depths.iter().find(|d| d.queue == queue);
            QueueStats {
                queue,
                ready: depth.map_or(0, |d| d.ready),
                scheduled: depth.map_or(0, |d| d.scheduled),
                running: depth.map_or(0, |d| d.running),
                oldest_ready_age_ms: depth
                    .and_then(|d| d.oldest_ready_at)
                    .map_or(0, |at| (now - at).num_milliseconds().max(0)),
            }
        })
        .collect();
    let running_tasks = db::system::running_tasks(&mut conn, caller.scope(), RUNNING_LIMIT)
        .await?
        .into_iter()
        .map(|t| RunningTaskResponse {
            id: t.id,
            operation_id: t.operation_id,
            job: t.job,
            resource_id: t.resource_id,
            resource_kind: t.resource_kind,
            task_type: t.task_type,
            step: t.step,
            queue: t.queue,
            attempts: t.attempts,
            status: t.status,
            worker: t.worker,
            started_at: t.started_at,
        })
        .collect();
    let throttle_scopes = db::system::throttle_scopes(&mut conn, caller.scope())
        .await?
        .into_iter()
        .map(|s| ThrottleScopeResponse {
            tenant: s.tenant,
            name: s.name,
            limit: s.slot_limit,
            in_use: s.held,
            waiting: s.waiting,
            oldest_waiting_since: s.oldest_waiting_since,
        })
        .collect();
    let since = bucket_start(
        now - Duration::minutes(CHART_SPAN_MINUTES),
        CHART_BUCKET_SECS,
    );
    let mut buckets: Vec<OperationBucketResponse> = Vec::new();
    for row in db::system::operations_by_bucket(&mut conn, caller.scope(), since, CHART_BUCKET_SECS)
        .await?
    {
        match buckets.last_mut() {
            Some(last) if last.start == row.start => {
                last.counts.insert(row.state.to_string(), row.count);
            }
            _ => buckets.push(OperationBucketResponse {
                start: row.start,
                counts: BTreeMap::from([(row.state.to_string(), row.count)]),
            }),
        }
    }
    Ok(axum::Json(SystemOverview {
        generated_at: now,
        queues,
        running_tasks,
        throttle_scopes,
        operations_last_hour: OperationChart {
            since,
            bucket_secs: CHART_BUCKET_SECS,
            buckets,
        },
    }))
}

/// The start of the bucket of `bucket_secs` that holds `at`.
fn bucket_start(at: DateTime<Utc>, bucket_secs: i64) -> DateTime<Utc> {
    let secs = at.timestamp();
    DateTime::from_timestamp(secs - secs.rem_euclid(bucket_secs), 0).unwrap_or(at)
}

/// One run of a periodic job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobRunResponse {
    /// Its task (see `GET /api/v1/tasks/{id}`).
    pub id: Uuid,
    /// Where it stands.
    pub state: TaskState,
    /// Times it was claimed.
    pub attempts: i32,
    /// When it was due.
    pub run_at: DateTime<Utc>,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Its summary (e.g. `{"swept": 0}`); admins only.
    pub result: Option<Value>,
    /// Its last error; admins only.
    pub last_error: Option<String>,
    /// The runner that ran it.
    pub worker: Option<String>,
}

/// A periodic job and its last runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobResponse {
    /// Its name: `pull`, `sweep` or `prune`.
    pub name: String,
    /// When the scheduler last enqueued it.
    pub last_enqueued_at: Option<DateTime<Utc>>,
    /// Its last runs (at most 10), newest first.
    pub runs: Vec<JobRunResponse>,
}

/// The periodic jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// Every job that has been enqueued or run, by name.
    pub items: Vec<JobResponse>,
}

/// The periodic jobs (pull, sweep, prune): when each was last enqueued and
/// its last runs. Summaries and errors are shown to admins only.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "system",
    responses((status = 200, description = "The periodic jobs", body = JobList)))]
async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<JobList>, ApiError> {
    let mut conn = state.conns.acquire().await?;
    let schedules = db::system::job_schedules(&mut conn).await?;
    let runs = db::system::job_runs(&mut conn, RUNS_PER_JOB).await?;
    let admin = caller.role == Role::Admin;
    let mut jobs: BTreeMap<String, JobResponse> = BTreeMap::new();
    for s in schedules {
        jobs.insert(
            s.job.clone(),
            JobResponse {
                name: s.job,
                last_enqueued_at: Some(s.last_enqueued_at),
                runs: Vec::new(),
            },
        );
    }
    for r in runs {
        jobs.entry(r.job.clone())
            .or_insert_with(|| JobResponse {
                name: r.job.clone(),
                last_enqueued_at: None,
                runs: Vec::new(),
            })
            .runs
            .push(JobRunResponse {
                id: r.id,
                state: r.state,
                attempts: r.attempts,
                run_at: r.run_at,
                started_at: r.started_at,
                finished_at: r.finished_at,
                result: r.result.filter(|_| admin),
                last_error: r.last_error.filter(|_| admin),
                worker: r.worker,
            });
    }
    Ok(axum::Json(JobList {
        items: jobs.into_values().collect(),
    }))
}

/// Who the caller is.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"tenant": "acme", "role": "operator", "token_name": "ci", "open": false}))]
pub struct WhoAmI {
    /// The tenant it acts for (empty while the service runs open).
    pub tenant: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
    /// Its token's name (absent while the service runs open).
    pub token_name: Option<String>,
    /// Whether the service runs open (no token needed; every caller is an admin).
    pub open: bool,
}

/// The caller's tenant and role, so a client can show only what it may do.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "system",
    responses((status = 200, description = "The caller", body = WhoAmI)))]
async fn whoami(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<axum::Json<WhoAmI>, ApiError> {
    // The middleware let the request in: with a header, its token is valid.
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.get(7..))
        .map(str::trim);
    let token_name = match token {
        Some(token) => {
            let mut conn = state.conns.acquire().await?;
            db::system::token_name(&mut conn, &crate::auth::hash(token)).await?
        }
        None => None,
    };
    Ok(axum::Json(WhoAmI {
        open: token.is_none(),
        tenant: caller.tenant,
        role: caller.role.as_str().to_owned(),
        token_name,
    }))
}

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(overview))
        .routes(routes!(list_jobs))
        .routes(routes!(whoami))
}
