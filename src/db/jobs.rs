//! SQL for periodic jobs: enqueueing (unique per job), and the queries of
//! the sweep and prune jobs.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::ResourceState;

/// Enqueues `job` if its interval has passed since it was last enqueued and
/// no task of it is pending or running. Returns whether it was enqueued.
pub async fn enqueue_due(
    conn: &mut PgConnection,
    job: &str,
    every_ms: i64,
    args: &serde_json::Value,
) -> sqlx::Result<bool> {
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "WITH due AS (
             INSERT INTO job_schedule AS s (job, last_enqueued_at) VALUES ($1, now())
             ON CONFLICT (job) DO UPDATE SET last_enqueued_at = now()
                 WHERE s.last_enqueued_at <= now() - $2 * interval '1 millisecond'
             RETURNING job
         )
         INSERT INTO tasks (id, job, position, type, args, queue, state, max_attempts)
         SELECT $3, job, 0, 'job', $4, 'background', 'ready', 3 FROM due
         ON CONFLICT (job) WHERE job IS NOT NULL AND state IN ('waiting', 'ready', 'running') DO NOTHING
         RETURNING id",
    )
    .bind(job)
    .bind(every_ms)
    .bind(Uuid::now_v7())
    .bind(args)
    .fetch_optional(conn)
    .await?;
    Ok(inserted.is_some())
}

/// A resource left in a transitional state with no live operation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stranded {
    /// The resource.
    pub id: Uuid,
    /// Its version when seen.
    pub version: i64,
    /// Its state.
    pub state: ResourceState,
    /// The operation it names, if any.
    pub operation_id: Option<Uuid>,
}

const STRANDED: &str = "
    FROM resources r LEFT JOIN operations o ON o.id = r.current_operation_id
    WHERE r.state NOT IN ('ok', 'erred')
      AND (o.id IS NULL
           OR o.state IN ('succeeded', 'failed', 'cancelled')
           OR NOT EXISTS (SELECT 1 FROM tasks t WHERE t.operation_id = o.id
                          AND t.state IN ('waiting', 'ready', 'running')))";

/// Up to `limit` stranded resources.
pub async fn stranded(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<Stranded>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT r.id, r.version, r.state, r.current_operation_id AS operation_id
         {STRANDED} ORDER BY r.id LIMIT $1"
    )))
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Whether the resource `id` is still stranded at `version`, locking it.
pub async fn still_stranded(conn: &mut PgConnection, id: Uuid, version: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 {STRANDED} AND r.id = $1 AND r.version = $2 FOR UPDATE OF r)"
    )))
    .bind(id)
    .bind(version)
    .fetch_one(conn)
    .await
}

/// What the prune job deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prunable {
    /// Finished operations, with their tasks (by cascade).
    Operations,
    /// Finished periodic-job tasks.
    JobTasks,
    /// Idempotency keys.
    IdempotencyKeys,
    /// Resources' history rows.
    ResourceEvents,
    /// Webhook events fanned out.
    WebhookEvents,
    /// Webhook messages delivered or given up on.
    WebhookMessages,
    /// Webhook delivery attempts.
    WebhookAttempts,
}

impl Prunable {
    /// Every kind, in the order they are pruned.
    pub const ALL: [Prunable; 7] = [
        Self::Operations,
        Self::JobTasks,
        Self::IdempotencyKeys,
        Self::ResourceEvents,
        Self::WebhookEvents,
        Self::WebhookMessages,
        Self::WebhookAttempts,
    ];

    /// Its name in the job's summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operations => "operations",
            Self::JobTasks => "job_tasks",
            Self::IdempotencyKeys => "idempotency_keys",
            Self::ResourceEvents => "resource_events",
            Self::WebhookEvents => "webhook_events",
            Self::WebhookMessages => "webhook_messages",
            Self::WebhookAttempts => "webhook_attempts",
        }
    }
}

/// Deletes up to `batch` rows of `what` that ended (or were made) before `before`.
pub async fn prune(
    conn: &mut PgConnection,
    what: Prunable,
    before: DateTime<Utc>,
    batch: i64,
) -> sqlx::Result<u64> {
    let sql = match what {
        Prunable::Operations => {
            "DELETE FROM operations WHERE id IN (
                 SELECT id FROM operations WHERE finished_at < $1 ORDER BY finished_at LIMIT $2)"
        }
        Prunable::JobTasks => {
            "DELETE FROM tasks WHERE id IN (
                 SELECT id FROM tasks WHERE job IS NOT NULL AND finished_at < $1 LIMIT $2)"
        }
        Prunable::IdempotencyKeys => {
            "DELETE FROM idempotency_keys WHERE key IN (
                 SELECT key FROM idempotency_keys WHERE created_at < $1 ORDER BY created_at LIMIT $2)"
        }
        // The oldest rows by `seq` (which follows time), then those of them
        // past the cutoff: a walk of the primary key that stops after `batch`
        // rows, with no index on `created_at` for every insert to keep up.
        Prunable::ResourceEvents => {
            "DELETE FROM resource_events WHERE created_at < $1 AND seq IN (
                 SELECT seq FROM resource_events ORDER BY seq LIMIT $2)"
        }
        // Events still to fan out, and pending messages, are never pruned:
        // at least once. Events and attempts are walked like
        // `resource_events` (`seq` and the v7 ids follow time).
        Prunable::WebhookEvents => {
            "DELETE FROM webhook_events WHERE fanned_out_at IS NOT NULL AND created_at < $1
                 AND seq IN (SELECT seq FROM webhook_events ORDER BY seq LIMIT $2)"
        }
        Prunable::WebhookAttempts => {
            "DELETE FROM webhook_attempts WHERE created_at < $1 AND id IN (
                 SELECT id FROM webhook_attempts ORDER BY id LIMIT $2)"
        }
        Prunable::WebhookMessages => {
            "DELETE FROM webhook_messages WHERE seq IN (
                 SELECT seq FROM webhook_messages WHERE state <> 'pending' AND finished_at < $1
                 ORDER BY finished_at LIMIT $2)"
        }
    };
    let done = sqlx::query(sql)
        .bind(before)
        .bind(batch)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Tries to take the scheduler's leadership: a session advisory lock on
/// `key`, held by this connection until it closes. Whether it leads, and the
/// connection's backend pid.
pub async fn try_lead(conn: &mut PgConnection, key: i64) -> sqlx::Result<(bool, i32)> {
    sqlx::query_as("SELECT pg_try_advisory_lock($1), pg_backend_pid()")
        .bind(key)
        .fetch_one(conn)
        .await
}
