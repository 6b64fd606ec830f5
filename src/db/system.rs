//! Read-only SQL for the system's overview: queues, running tasks, throttle
//! scopes, operations over time, and periodic jobs' runs.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{OperationState, Queue, TaskState};

/// The tasks of one queue, counted by what they wait for.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueueDepth {
    /// The queue.
    pub queue: Queue,
    /// Ready tasks whose time has come: the backlog.
    pub ready: i64,
    /// Ready tasks whose time has not come yet (retries after a backoff, polls).
    pub scheduled: i64,
    /// Running tasks.
    pub running: i64,
    /// When the oldest due ready task became due.
    pub oldest_ready_at: Option<DateTime<Utc>>,
}

/// Every queue's depth, fleet-wide.
pub async fn queue_depths(conn: &mut PgConnection) -> sqlx::Result<Vec<QueueDepth>> {
    sqlx::query_as(
        "SELECT queue,
                count(*) FILTER (WHERE state = 'ready' AND run_at <= now()) AS ready,
                count(*) FILTER (WHERE state = 'ready' AND run_at > now()) AS scheduled,
                count(*) FILTER (WHERE state = 'running') AS running,
                min(run_at) FILTER (WHERE state = 'ready' AND run_at <= now()) AS oldest_ready_at
         FROM tasks WHERE state IN ('ready', 'running')
         GROUP BY queue",
    )
    .fetch_all(conn)
    .await
}

/// A task being run now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunningTask {
    /// The task.
    pub id: Uuid,
    /// Its operation (absent for a periodic job).
    pub operation_id: Option<Uuid>,
    /// Its periodic job, if it is one.
    pub job: Option<String>,
    /// Its operation's resource.
    pub resource_id: Option<Uuid>,
    /// Its operation's resource kind.
    pub resource_kind: Option<String>,
    /// Its type.
    pub task_type: String,
    /// Its step: the backend method or transition it runs, if it names one.
    pub step: Option<String>,
    /// Its queue.
    pub queue: Queue,
    /// Its claims so far.
    pub attempts: i32,
    /// What it is doing.
    pub status: Option<String>,
    /// Its runner.
    pub worker: Option<String>,
    /// When it first ran.
    pub started_at: Option<DateTime<Utc>>,
}

/// Up to `limit` running tasks, longest-running first; only `tenant`'s
/// operations' when given (periodic jobs then not at all).
pub async fn running_tasks(
    conn: &mut PgConnection,
    tenant: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<RunningTask>> {
    sqlx::query_as(
        "SELECT t.id, t.operation_id, t.job, o.resource_id, o.resource_kind, t.type AS task_type,
                COALESCE(t.args ->> 'method', t.args ->> 'transition') AS step,
                t.queue, t.attempts, t.status, t.worker, t.started_at
         FROM tasks t LEFT JOIN operations o ON o.id = t.operation_id
         WHERE t.state = 'running' AND ($1::text IS NULL OR o.tenant = $1)
         ORDER BY t.started_at NULLS LAST, t.id LIMIT $2",
    )
    .bind(tenant)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// One throttle scope's slots.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ThrottleScope {
    /// The tenant it belongs to.
    pub tenant: String,
    /// Its name, e.g. `instance.tenant:acme`.
    pub name: String,
    /// Slots it allows.
    pub slot_limit: i32,
    /// Slots held.
    pub held: i64,
    /// Operations waiting in line.
    pub waiting: i64,
    /// Since when the first in line waits.
    pub oldest_waiting_since: Option<DateTime<Utc>>,
}

/// The scopes with a slot held or waited for; only `tenant`'s when given.
pub async fn throttle_scopes(
    conn: &mut PgConnection,
    tenant: Option<&str>,
) -> sqlx::Result<Vec<ThrottleScope>> {
    // The stored scope is `[tenant, name]` as JSON (see `db::throttle`).
    sqlx::query_as(
        "SELECT tenant, name, slot_limit, held, waiting, oldest_waiting_since FROM (
             SELECT scope::jsonb ->> 0 AS tenant, scope::jsonb ->> 1 AS name,
                    max(slot_limit) AS slot_limit,
                    count(*) FILTER (WHERE held) AS held,
                    count(*) FILTER (WHERE NOT held) AS waiting,
                    min(created_at) FILTER (WHERE NOT held) AS oldest_waiting_since
             FROM throttle_slots GROUP BY scope
         ) s
         WHERE $1::text IS NULL OR tenant = $1
         ORDER BY waiting DESC, held DESC, tenant, name",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await
}

/// How many operations of a state were created in one time bucket.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OperationBucket {
    /// The bucket's start.
    pub start: DateTime<Utc>,
    /// The operations' state now.
    pub state: OperationState,
    /// How many.
    pub count: i64,
}

/// Operations created since `since`, by `bucket_secs` buckets and state; only
/// `tenant`'s when given. Empty buckets are left out.
pub async fn operations_by_bucket(
    conn: &mut PgConnection,
    tenant: Option<&str>,
    since: DateTime<Utc>,
    bucket_secs: i64,
) -> sqlx::Result<Vec<OperationBucket>> {
    sqlx::query_as(
        "SELECT to_timestamp(floor(extract(epoch FROM created_at) / $3) * $3) AS start,
                state, count(*) AS count
         FROM operations
         WHERE created_at >= $2 AND ($1::text IS NULL OR tenant = $1)
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(tenant)
    .bind(since)
    .bind(bucket_secs as f64)
    .fetch_all(conn)
    .await
}

/// When a periodic job was last enqueued.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobSchedule {
    /// The job.
    pub job: String,
    /// When.
    pub last_enqueued_at: DateTime<Utc>,
}

/// Every job the scheduler has enqueued at least once.
pub async fn job_schedules(conn: &mut PgConnection) -> sqlx::Result<Vec<JobSchedule>> {
    sqlx::query_as("SELECT job, last_enqueued_at FROM job_schedule ORDER BY job")
        .fetch_all(conn)
        .await
}

/// One run of a periodic job.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRun {
    /// Its task.
    pub id: Uuid,
    /// The job.
    pub job: String,
    /// Where it stands.
    pub state: TaskState,
    /// Its claims.
    pub attempts: i32,
    /// When it was due.
    pub run_at: DateTime<Utc>,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Its summary.
    pub result: Option<Value>,
    /// Its last error.
    pub last_error: Option<String>,
    /// Its runner.
    pub worker: Option<String>,
}

/// The last `per_job` runs of every job, newest first.
pub async fn job_runs(conn: &mut PgConnection, per_job: i64) -> sqlx::Result<Vec<JobRun>> {
    sqlx::query_as(
        "SELECT id, job, state, attempts, run_at, started_at, finished_at, result, last_error, worker
         FROM (SELECT *, row_number() OVER (PARTITION BY job ORDER BY id DESC) AS n
               FROM tasks WHERE job IS NOT NULL) t
         WHERE n <= $1 ORDER BY job, id DESC",
    )
    .bind(per_job)
    .fetch_all(conn)
    .await
}

/// The name of the active token with this hash.
pub async fn token_name(conn: &mut PgConnection, token_hash: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT name FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL")
        .bind(token_hash)
        .fetch_optional(conn)
        .await
}
