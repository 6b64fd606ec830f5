//! SQL for `tasks`: the chain rows, the claim, leases and outcomes.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::db::resources::Target;
use crate::domain::{Queue, TaskState};

/// A row of `tasks`: one step of an operation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Task {
    /// Primary key (uuid v7); also the idempotency key of its backend calls.
    pub id: Uuid,
    /// The operation it belongs to; `None` for a periodic job.
    pub operation_id: Option<Uuid>,
    /// The resource it acts on (its operation's, or one of that resource's
    /// children); `None` for a periodic job.
    pub resource_id: Option<Uuid>,
    /// The positions of the tasks that wait for it; none for the last.
    pub next: Vec<i32>,
    /// How many tasks it waits for that have not succeeded.
    pub blocked_by: i32,
    /// Whether it undoes a failed create: skipped for a resource the backend
    /// never made, and a failure does not stop the steps after it.
    pub undo: bool,
    /// The periodic job it runs, if it is one.
    pub job: Option<String>,
    /// Its place in the chain, from 0.
    pub position: i32,
    /// The task type.
    #[sqlx(rename = "type")]
    pub task_type: String,
    /// The step as the catalog wrote it.
    pub args: Value,
    /// The worker pool that runs it.
    pub queue: Queue,
    /// Where it stands.
    pub state: TaskState,
    /// Times a runner claimed it (waits and polls give theirs back).
    pub attempts: i32,
    /// Claims allowed before it fails for good.
    pub max_attempts: i32,
    /// Not claimed before this time.
    pub run_at: DateTime<Utc>,
    /// While running: the lease's end, unless renewed.
    pub lease_until: Option<DateTime<Utc>>,
    /// While running: the fencing token of the current holder.
    pub lease_token: Option<Uuid>,
    /// The runner that last claimed it.
    pub worker: Option<String>,
    /// What it is doing, for people (e.g. waiting for a throttle slot).
    pub status: Option<String>,
    /// The last error it met.
    pub last_error: Option<String>,
    /// What it produced.
    pub result: Option<Value>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it was first claimed.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// For a step that failed on a backend call: the backend's whole error
    /// (message, class, HTTP status or exit code, the start of the reply).
    #[sqlx(default)]
    pub error_details: Option<Value>,
}

/// A step to insert.
#[derive(Debug)]
pub struct NewTask {
    /// The task type.
    pub task_type: &'static str,
    /// The step's arguments.
    pub args: Value,
    /// Its queue.
    pub queue: Queue,
    /// Claims allowed.
    pub max_attempts: i32,
    /// The resource it acts on.
    pub resource_id: Uuid,
    /// The positions of the tasks that wait for it.
    pub next: Vec<i32>,
    /// How many tasks it waits for; ready when none.
    pub blocked_by: i32,
    /// Whether it undoes a failed create (a compensation step).
    pub undo: bool,
}

/// A claimed task with what it acts on, read by the claim's own statement
/// (a step has no look-up of its own to make before it runs).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    /// The task, under its new lease.
    #[sqlx(flatten)]
    pub task: Task,
    /// For an operation's step: its resource and the operation's request.
    /// `None` for a state transition (which does not need it), a periodic
    /// job, or if they are gone.
    pub target: Option<Json<Target>>,
}

/// The column `target` of a claim: what [`Claimed::target`] holds, for the
/// claimed row `c`. A state transition acts on the resource through its own
/// compare-and-set, so its steps are not given one.
macro_rules! target_column {
    () => {
        "(SELECT jsonb_build_object(
                     'id', r.id, 'kind', r.kind, 'name', r.name, 'backend_id', r.backend_id,
                     'runtime_state', r.runtime_state, 'attributes', r.attributes, 'status', r.status,
                     'tenant', r.tenant, 'state', r.state,
                     'request', o.request,
                     'parent', (SELECT jsonb_build_object(
                                    'id', p.id, 'kind', p.kind, 'name', p.name, 'backend_id', p.backend_id,
                                    'runtime_state', p.runtime_state, 'attributes', p.attributes,
                                    'status', p.status)
                                FROM resources p WHERE p.id = r.parent_id))
          FROM operations o JOIN resources r ON r.id = c.resource_id
          WHERE o.id = c.operation_id AND c.type <> 'state_transition' AND c.state = 'running') AS target"
    };
}

/// Claims up to `limit` due ready tasks of `queue` in one statement, under a
/// new lease, and marks their operations running.
///
/// The claim's commit does not wait for its flush (`synchronous_commit` off
/// for this transaction only). A claim lost in a database crash leaves its
/// tasks `ready`, as if never claimed: the runner's outcomes are then refused
/// by the lease token, and the backend calls it made are repeated under the
/// same idempotency key, exactly as after a lease expiry. Any outcome's
/// commit flushes the claim before it, since the log is flushed in order.
pub async fn claim(
    conn: impl sqlx::PgExecutor<'_>,
    queue: Queue,
    limit: i64,
    lease_ms: i64,
    worker: &str,
) -> sqlx::Result<Vec<Claimed>> {
    sqlx::query_as(concat!(
        "WITH quick AS (
             SELECT set_config('synchronous_commit', 'off', true)
         ), picked AS (
             SELECT id FROM tasks, quick WHERE state = 'ready' AND queue = $1 AND run_at <= now()
             ORDER BY run_at, id LIMIT $2 FOR UPDATE OF tasks SKIP LOCKED
         ), claimed AS (
             UPDATE tasks t SET state = 'running', attempts = t.attempts + 1,
                    lease_token = gen_random_uuid(), lease_until = now() + $3 * interval '1 millisecond',
                    worker = $4, started_at = coalesce(t.started_at, now()), updated_at = now()
             WHERE t.id = ANY(ARRAY(SELECT id FROM picked))
             RETURNING t.*
         ), started AS (
             UPDATE operations SET state = 'running', started_at = coalesce(started_at, now()), updated_at = now()
             WHERE id = ANY(ARRAY(SELECT operation_id FROM claimed)) AND state = 'scheduled'
         )
         SELECT c.*, ",
        target_column!(),
        " FROM claimed c"
    ))
    .bind(queue)
    .bind(limit)
    .bind(lease_ms)
    .bind(worker)
    .fetch_all(conn)
    .await
}

/// Extends a lease; `false` if the task is no longer this holder's.
pub async fn heartbeat(pool: &PgPool, id: Uuid, token: Uuid, lease_ms: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE tasks SET lease_until = now() + $3 * interval '1 millisecond'
         WHERE id = $1 AND lease_token = $2 AND state = 'running'",
    )
    .bind(id)
    .bind(token)
    .bind(lease_ms)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives a claimed task back untouched (graceful shutdown); its claim does not count.
pub async fn release(pool: &PgPool, id: Uuid, token: Uuid) -> sqlx::Result<Option<Queue>> {
    sqlx::query_scalar(
        "UPDATE tasks SET state = 'ready', attempts = attempts - 1, lease_token = NULL, lease_until = NULL,
                run_at = now(), status = 'released by a stopping runner', updated_at = now()
         WHERE id = $1 AND lease_token = $2 AND state = 'running' RETURNING queue",
    )
    .bind(id)
    .bind(token)
    .fetch_optional(pool)
    .await
}

/// Returns tasks whose lease expired to `ready`; the queues that got work back.
pub async fn reap_expired(pool: &PgPool) -> sqlx::Result<Vec<Queue>> {
    sqlx::query_scalar(
        "WITH expired AS (
             SELECT id FROM tasks WHERE state = 'running' AND lease_until < now() FOR UPDATE SKIP LOCKED
         )
         UPDATE tasks t SET state = 'ready', lease_token = NULL, lease_until = NULL, run_at = now(),
                status = 'lease of ' || coalesce(t.worker, 'a runner') || ' expired; queued again',
                updated_at = now()
         WHERE t.id = ANY(ARRAY(SELECT id FROM expired)) RETURNING t.queue",
    )
    .fetch_all(pool)
    .await
}

/// A task held under its lease, with its operation (`None` for a job).
#[derive(Debug, sqlx::FromRow)]
pub struct Held {
    /// The task.
    #[sqlx(flatten)]
    pub task: Task,
    /// Its operation, if it belongs to one.
    pub operation: Option<Json<crate::db::operations::Operation>>,
}

/// The tasks among `ids` that `tokens` (pairwise) still hold, locked in id
/// order, with their operations: the fence a batch of outcomes passes.
/// Fenced ones are left out.
pub async fn lock_held_many(
    conn: &mut PgConnection,
    ids: &[Uuid],
    tokens: &[Uuid],
) -> sqlx::Result<Vec<Held>> {
    let held: Vec<Held> = sqlx::query_as(
        "WITH held AS (
             SELECT * FROM tasks WHERE id = ANY($1) AND lease_token = ANY($2) AND state = 'running'
             ORDER BY id FOR UPDATE
         )
         SELECT h.*, to_jsonb(o) AS operation
         FROM held h LEFT JOIN operations o ON o.id = h.operation_id",
    )
    .bind(ids)
    .bind(tokens)
    .fetch_all(conn)
    .await?;
    let pairs: std::collections::HashSet<(Uuid, Uuid)> =
        ids.iter().copied().zip(tokens.iter().copied()).collect();
    Ok(held
        .into_iter()
        .filter(|h| {
            h.task
                .lease_token
                .is_some_and(|token| pairs.contains(&(h.task.id, token)))
        })
        .collect())
}

/// Ends a held task in a terminal state.
pub async fn finish(
    conn: &mut PgConnection,
    id: Uuid,
    state: TaskState,
    result: Option<&Value>,
    error: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE tasks SET state = $2, result = $3, last_error = coalesce($4, last_error), status = NULL,
                lease_token = NULL, lease_until = NULL, finished_at = now(), updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(result)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Puts a held task back to `ready` at `now + delay_ms`. A retry counts its
/// claim as an attempt; a poll that is not done yet does not.
pub async fn reschedule(
    conn: &mut PgConnection,
    id: Uuid,
    delay_ms: i64,
    counts_as_attempt: bool,
    status: Option<&str>,
    error: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE tasks SET state = 'ready', run_at = now() + $2 * interval '1 millisecond',
                attempts = attempts - CASE WHEN $3 THEN 0 ELSE 1 END,
                status = $4, last_error = coalesce($5, last_error),
                lease_token = NULL, lease_until = NULL, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(delay_ms)
    .bind(counts_as_attempt)
    .bind(status)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Parks a held task in `waiting` (a throttle with no free slot) until something makes it ready.
pub async fn park(conn: &mut PgConnection, id: Uuid, status: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE tasks SET state = 'waiting', attempts = attempts - 1, status = $2,
                lease_token = NULL, lease_until = NULL, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .execute(conn)
    .await?;
    Ok(())
}

/// Makes waiting tasks ready now; the queues that got work.
pub async fn wake(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<Queue>> {
    sqlx::query_scalar(
        "UPDATE tasks SET state = 'ready', run_at = now(), status = NULL, updated_at = now()
         WHERE id = ANY($1) AND state = 'waiting' RETURNING queue",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// A task that waits for a task that ended: the tasks it waits for are one
/// fewer. `inline` asks for it to be claimed by the runner of the task that
/// ended, if it becomes ready and runs on that runner's queue.
#[derive(Debug, Clone, Copy)]
pub struct Successor {
    /// Its operation.
    pub operation_id: Uuid,
    /// Its position there.
    pub position: i32,
    /// The queue of the runner that goes on with it at once, if one does.
    pub inline: Option<Queue>,
}

/// Ends held tasks as `succeeded`, each with its result (`ids` and `results`
/// pairwise), and makes each task in `successors` wait for one fewer; one
/// that waits for none any more becomes `ready`, or `running` for `worker`
/// (claimed) when it runs on its `inline` queue. One statement. Returns
/// the successors that changed state: the claimed ones with what they act on.
#[allow(clippy::too_many_arguments)]
pub async fn succeed_and_advance(
    conn: &mut PgConnection,
    ids: &[Uuid],
    results: &[Option<Value>],
    successors: &[Successor],
    lease_ms: i64,
    worker: &str,
) -> sqlx::Result<Vec<Claimed>> {
    let operations: Vec<Uuid> = successors.iter().map(|s| s.operation_id).collect();
    let positions: Vec<i32> = successors.iter().map(|s| s.position).collect();
    let inline: Vec<Option<&str>> = successors
        .iter()
        .map(|s| s.inline.map(Queue::as_str))
        .collect();
    sqlx::query_as(concat!(
        "WITH done AS (
             UPDATE tasks t SET state = 'succeeded', result = u.result, status = NULL,
                    lease_token = NULL, lease_until = NULL, finished_at = now(), updated_at = now()
             FROM UNNEST($1::uuid[], $2::jsonb[]) AS u(id, result) WHERE t.id = u.id AND t.id = ANY($1)
         ), s AS (
             SELECT operation_id, position, count(*)::int4 AS k, max(inline) AS inline
             FROM UNNEST($3::uuid[], $4::int4[], $5::text[]) AS u(operation_id, position, inline)
             GROUP BY operation_id, position
         ), advanced AS (
             UPDATE tasks t SET
                    blocked_by = t.blocked_by - s.k,
                    state = CASE WHEN t.state <> 'waiting' OR t.blocked_by > s.k THEN t.state
                                 WHEN t.queue = s.inline THEN 'running' ELSE 'ready' END,
                    attempts = t.attempts + CASE WHEN t.state = 'waiting' AND t.blocked_by = s.k
                                                      AND t.queue = s.inline THEN 1 ELSE 0 END,
                    run_at = CASE WHEN t.state = 'waiting' AND t.blocked_by = s.k THEN now() ELSE t.run_at END,
                    lease_token = CASE WHEN t.state = 'waiting' AND t.blocked_by = s.k AND t.queue = s.inline THEN gen_random_uuid() ELSE t.lease_token END,
                    lease_until = CASE WHEN t.state = 'waiting' AND t.blocked_by = s.k AND t.queue = s.inline THEN now() + $6 * interval '1 millisecond'
                                       ELSE t.lease_until END,
                    worker = CASE WHEN t.state = 'waiting' AND t.blocked_by = s.k AND t.queue = s.inline THEN $7 ELSE t.worker END,
                    started_at = CASE WHEN t.state = 'waiting' AND t.blocked_by = s.k AND t.queue = s.inline THEN coalesce(t.started_at, now())
                                      ELSE t.started_at END,
                    updated_at = now()
             FROM s WHERE t.operation_id = s.operation_id AND t.position = s.position
             RETURNING t.*
         )
         SELECT c.*, ",
        target_column!(),
        " FROM advanced c WHERE c.state IN ('ready', 'running') AND c.blocked_by = 0"
    ))
    .bind(ids)
    .bind(results)
    .bind(operations)
    .bind(positions)
    .bind(inline)
    .bind(lease_ms)
    .bind(worker)
    .fetch_all(conn)
    .await
}

/// The operations among `operation_ids` that have a task not succeeded.
pub async fn count_unsucceeded(
    conn: &mut PgConnection,
    operation_ids: &[Uuid],
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT DISTINCT operation_id FROM tasks WHERE operation_id = ANY($1) AND state <> 'succeeded'",
    )
    .bind(operation_ids)
    .fetch_all(conn)
    .await
}

/// How many tasks of each of `operation_ids` are still to run or running
/// (operations with none are absent).
pub async fn count_pending(
    conn: &mut PgConnection,
    operation_ids: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, i64)>> {
    sqlx::query_as(
        "SELECT operation_id, count(*) FROM tasks
         WHERE operation_id = ANY($1) AND state IN ('waiting', 'ready', 'running')
         GROUP BY operation_id",
    )
    .bind(operation_ids)
    .fetch_all(conn)
    .await
}

/// Cancels an operation's steps that have not run.
pub async fn cancel_pending(conn: &mut PgConnection, operation_id: Uuid) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE tasks SET state = 'cancelled', status = NULL, finished_at = now(), updated_at = now()
         WHERE operation_id = $1 AND state IN ('waiting', 'ready')",
    )
    .bind(operation_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// An operation's tasks in chain order, locked until the transaction ends
/// (taken before the operation row, the order the runner locks them in).
pub async fn lock_for_operation(
    conn: &mut PgConnection,
    operation_id: Uuid,
) -> sqlx::Result<Vec<Task>> {
    sqlx::query_as("SELECT * FROM tasks WHERE operation_id = $1 ORDER BY position FOR UPDATE")
        .bind(operation_id)
        .fetch_all(conn)
        .await
}

/// Cancels an operation's running tasks and takes their leases away, so the
/// holders' outcomes are refused. Returns their ids. Their end is the time of
/// this statement, not of its transaction: a cancel that began before a step
/// was claimed must not end it before it started.
pub async fn fence_running(
    conn: &mut PgConnection,
    operation_id: Uuid,
    reason: &str,
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "UPDATE tasks SET state = 'cancelled', lease_token = NULL, lease_until = NULL, status = NULL,
                last_error = $2, finished_at = clock_timestamp(), updated_at = clock_timestamp()
         WHERE operation_id = $1 AND state = 'running' RETURNING id",
    )
    .bind(operation_id)
    .bind(reason)
    .fetch_all(conn)
    .await
}

/// Opens a finished task again (a retry), `ready` now or `waiting`, with fresh attempts.
pub async fn reopen(
    conn: &mut PgConnection,
    id: Uuid,
    state: TaskState,
    status: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE tasks SET state = $2, status = $3, attempts = 0, run_at = now(), finished_at = NULL,
                lease_token = NULL, lease_until = NULL, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(status)
    .execute(conn)
    .await?;
    Ok(())
}

/// Puts an operation's cancelled steps back (a retry): `waiting`, or `ready`
/// if they wait for nothing.
pub async fn reopen_cancelled(conn: &mut PgConnection, operation_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE tasks SET state = CASE WHEN blocked_by = 0 THEN 'ready' ELSE 'waiting' END,
                run_at = now(), finished_at = NULL, updated_at = now()
         WHERE operation_id = $1 AND state = 'cancelled'",
    )
    .bind(operation_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The task `id` if `scope` (a tenant; `None` for all) may see it. Job tasks
/// belong to no tenant: only `None` sees them.
pub async fn get_in(
    conn: &mut PgConnection,
    id: Uuid,
    scope: Option<&str>,
) -> sqlx::Result<Option<Task>> {
    sqlx::query_as(
        "SELECT t.* FROM tasks t LEFT JOIN operations o ON o.id = t.operation_id
         WHERE t.id = $1 AND ($2::text IS NULL OR o.tenant = $2)",
    )
    .bind(id)
    .bind(scope)
    .fetch_optional(conn)
    .await
}

/// The task `id`.
pub async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Task>> {
    sqlx::query_as("SELECT * FROM tasks WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// An operation's tasks, in chain order.
pub async fn list_for_operation(
    conn: &mut PgConnection,
    operation_id: Uuid,
) -> sqlx::Result<Vec<Task>> {
    sqlx::query_as("SELECT * FROM tasks WHERE operation_id = $1 ORDER BY position")
        .bind(operation_id)
        .fetch_all(conn)
        .await
}

/// The tasks of several operations, in chain order.
pub async fn list_for_operations(
    conn: &mut PgConnection,
    operation_ids: &[Uuid],
) -> sqlx::Result<Vec<Task>> {
    sqlx::query_as(
        "SELECT * FROM tasks WHERE operation_id = ANY($1) ORDER BY operation_id, position",
    )
    .bind(operation_ids)
    .fetch_all(conn)
    .await
}

/// When the next ready task of `queue` falls due, if any is ready.
pub async fn next_due(
    conn: impl sqlx::PgExecutor<'_>,
    queue: Queue,
) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT min(run_at) FROM tasks WHERE state = 'ready' AND queue = $1")
        .bind(queue)
        .fetch_one(conn)
        .await
}

/// How many tasks are ready or running, in any queue.
pub async fn count_live(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM tasks WHERE state IN ('ready', 'running')")
        .fetch_one(pool)
        .await
}

/// How deep a queue is now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueDepth {
    /// Tasks ready (due or not).
    pub ready: i64,
    /// Seconds the oldest due ready task has waited; 0 when none is due.
    pub oldest_ready_s: f64,
    /// Tasks running.
    pub running: i64,
}

/// Every queue's depth, each queue once (zeros for an empty one).
pub async fn queue_depths(pool: &PgPool) -> sqlx::Result<Vec<(Queue, QueueDepth)>> {
    let rows: Vec<(Queue, i64, f64, i64)> = sqlx::query_as(
        "SELECT queue, count(*) FILTER (WHERE state = 'ready'),
                coalesce(extract(epoch FROM now() - min(run_at)
                         FILTER (WHERE state = 'ready' AND run_at <= now()))::float8, 0),
                count(*) FILTER (WHERE state = 'running')
         FROM tasks WHERE state IN ('ready', 'running') GROUP BY queue",
    )
    .fetch_all(pool)
    .await?;
    Ok(Queue::ALL
        .into_iter()
        .map(|queue| {
            let depth = rows.iter().find(|row| row.0 == queue).map_or_else(
                QueueDepth::default,
                |&(_, ready, oldest_ready_s, running)| QueueDepth {
                    ready,
                    oldest_ready_s,
                    running,
                },
            );
            (queue, depth)
        })
        .collect())
}

/// Stores a failed step's whole backend error (`tasks.error_details`).
pub async fn set_error_details(
    conn: &mut PgConnection,
    id: Uuid,
    details: &Value,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE tasks SET error_details = $2 WHERE id = $1")
        .bind(id)
        .bind(details)
        .execute(conn)
        .await?;
    Ok(())
}
