//! SQL for `operations`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::tasks::NewTask;
use crate::domain::{OperationKind, OperationState, Queue};

/// A row of `operations`: one executor run.
#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct Operation {
    /// Primary key (uuid v7).
    pub id: Uuid,
    /// The resource acted on (kept after the resource is deleted).
    pub resource_id: Uuid,
    /// The resource's kind.
    pub resource_kind: String,
    /// Which executor.
    pub kind: OperationKind,
    /// The action's name, for actions.
    pub action: Option<String>,
    /// Where it stands.
    pub state: OperationState,
    /// The validated input: an update's changes or an action's parameters.
    pub request: Value,
    /// Why it failed.
    pub error: Option<String>,
    /// How many steps its chain has.
    pub step_count: i32,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When a runner first claimed one of its tasks.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The tenant of its resource.
    pub tenant: String,
    /// While `compensating`: how it will end (`failed` or `cancelled`).
    #[serde(default)]
    pub ends_as: Option<OperationState>,
    /// The position of its first compensation task, once its compensation was planned.
    #[serde(default)]
    pub compensation_at: Option<i32>,
    /// Whether its tasks are a graph rather than a line (see the migration
    /// `composite`): its recordings lock its row.
    #[serde(default)]
    pub graph: bool,
}

/// An operation to insert, in `scheduled`.
#[derive(Debug)]
pub struct NewOperation<'a> {
    /// Its id.
    pub id: Uuid,
    /// The resource's tenant.
    pub tenant: &'a str,
    /// The resource.
    pub resource_id: Uuid,
    /// The resource's kind.
    pub resource_kind: &'a str,
    /// Which executor.
    pub kind: OperationKind,
    /// The action, for actions.
    pub action: Option<&'a str>,
    /// The validated input.
    pub request: &'a Value,
    /// Whether it holds children of its resource (a composite kind's).
    pub composite: bool,
}

/// Inserts an operation in `scheduled` with its task graph (the tasks that
/// wait for none `ready`, the rest `waiting`), and wakes `queue`'s runners
/// at commit: one statement.
pub async fn insert(
    conn: &mut PgConnection,
    new: &NewOperation<'_>,
    chain: Vec<NewTask>,
    queue: Queue,
) -> sqlx::Result<Operation> {
    let n = chain.len();
    let graph = new.composite
        || chain
            .iter()
            .any(|t| t.resource_id != new.resource_id || t.next.len() > 1 || t.blocked_by > 1);
    let columns = TaskColumns::of(chain, 0);
    sqlx::query_as(
        "WITH op AS (
             INSERT INTO operations (id, resource_id, resource_kind, kind, action, state, request, step_count, tenant, graph)
             VALUES ($1, $2, $3, $4, $5, 'scheduled', $6, $7, $8, $20) RETURNING *
         ), chain AS (
             INSERT INTO tasks (id, operation_id, position, type, args, queue, max_attempts, state,
                                resource_id, next, blocked_by)
             SELECT t.id, $1, t.position, t.type, t.args, t.queue, t.max_attempts,
                    CASE WHEN t.blocked_by = 0 THEN 'ready' ELSE 'waiting' END,
                    t.resource_id, t.next::integer[], t.blocked_by
             FROM UNNEST($9::uuid[], $10::int4[], $11::text[], $12::jsonb[], $13::text[], $14::int4[],
                         $17::uuid[], $18::text[], $19::int4[])
                  AS t(id, position, type, args, queue, max_attempts, resource_id, next, blocked_by)
         ), wake AS (
             SELECT pg_notify($15, $16)
         )
         SELECT op.* FROM op, wake",
    )
    .bind(new.id)
    .bind(new.resource_id)
    .bind(new.resource_kind)
    .bind(new.kind)
    .bind(new.action)
    .bind(new.request)
    .bind(i32::try_from(n).unwrap_or(i32::MAX))
    .bind(new.tenant)
    .bind(columns.ids)
    .bind(columns.positions)
    .bind(columns.types)
    .bind(columns.args)
    .bind(columns.queues)
    .bind(columns.attempts)
    .bind(super::TASKS_CHANNEL)
    .bind(queue.as_str())
    .bind(columns.resources)
    .bind(columns.nexts)
    .bind(columns.blocked)
    .bind(graph)
    .fetch_one(conn)
    .await
}

/// The operation `id`.
pub async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Operation>> {
    sqlx::query_as("SELECT * FROM operations WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// The operation `id` if `scope` (a tenant; `None` for all) may see it.
pub async fn get_in(
    conn: &mut PgConnection,
    id: Uuid,
    scope: Option<&str>,
) -> sqlx::Result<Option<Operation>> {
    sqlx::query_as("SELECT * FROM operations WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)")
        .bind(id)
        .bind(scope)
        .fetch_optional(conn)
        .await
}

/// The operation `id`, locked until the transaction ends.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Operation>> {
    sqlx::query_as("SELECT * FROM operations WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Operations locked until the transaction ends, in id order (after their
/// tasks, the order every transaction that locks both uses).
pub async fn lock_many(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<Operation>> {
    sqlx::query_as("SELECT * FROM operations WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(ids)
        .fetch_all(conn)
        .await
}

/// Starts winding an operation down: it is `compensating` until its running
/// steps have ended and its compensation ran, then ends as `ends_as` with
/// `error` (the first reason given is kept).
pub async fn wind_down(
    conn: &mut PgConnection,
    id: Uuid,
    ends_as: OperationState,
    error: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE operations SET state = 'compensating', ends_as = coalesce(ends_as, $2),
                error = coalesce(error, $3), started_at = coalesce(started_at, now()), updated_at = now()
         WHERE id = $1 AND state IN ('scheduled', 'running', 'compensating')",
    )
    .bind(id)
    .bind(ends_as)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends `tasks` (numbered from the operation's `step_count`) as its
/// compensation; those that wait for none are `ready`.
pub async fn add_compensation(
    conn: &mut PgConnection,
    operation: &Operation,
    tasks: Vec<NewTask>,
) -> sqlx::Result<()> {
    let n = tasks.len();
    let first = operation.step_count;
    let columns = TaskColumns::of(tasks, first);
    sqlx::query(
        "WITH chain AS (
             INSERT INTO tasks (id, operation_id, position, type, args, queue, max_attempts, state,
                                resource_id, next, blocked_by, undo)
             SELECT t.id, $1, t.position, t.type, t.args, t.queue, t.max_attempts,
                    CASE WHEN t.blocked_by = 0 THEN 'ready' ELSE 'waiting' END,
                    t.resource_id, t.next::integer[], t.blocked_by, true
             FROM UNNEST($2::uuid[], $3::int4[], $4::text[], $5::jsonb[], $6::text[], $7::int4[],
                         $8::uuid[], $9::text[], $10::int4[])
                  AS t(id, position, type, args, queue, max_attempts, resource_id, next, blocked_by)
         )
         UPDATE operations SET compensation_at = $11, step_count = step_count + $12, updated_at = now()
         WHERE id = $1",
    )
    .bind(operation.id)
    .bind(columns.ids)
    .bind(columns.positions)
    .bind(columns.types)
    .bind(columns.args)
    .bind(columns.queues)
    .bind(columns.attempts)
    .bind(columns.resources)
    .bind(columns.nexts)
    .bind(columns.blocked)
    .bind(first)
    .bind(i32::try_from(n).unwrap_or(i32::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether an operation on the same resource came after `id`.
pub async fn has_later(conn: &mut PgConnection, resource_id: Uuid, id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM operations WHERE resource_id = $1 AND id > $2)",
    )
    .bind(resource_id)
    .bind(id)
    .fetch_one(conn)
    .await
}

/// Runs a failed operation again (a retry).
pub async fn reopen(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Operation> {
    sqlx::query_as(
        "UPDATE operations SET state = 'running', error = NULL, ends_as = NULL, finished_at = NULL,
                updated_at = now()
         WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .fetch_one(conn)
    .await
}

/// A resource's operations, newest first, at most `limit`, before `before` if given.
pub async fn list_for_resource(
    conn: &mut PgConnection,
    resource_id: Uuid,
    scope: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<Operation>> {
    sqlx::query_as(
        "SELECT * FROM operations WHERE resource_id = $1 AND ($2::uuid IS NULL OR id < $2)
           AND ($4::text IS NULL OR tenant = $4)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(resource_id)
    .bind(before)
    .bind(limit)
    .bind(scope)
    .fetch_all(conn)
    .await
}

/// Ends the running or scheduled operations among `ids` as `succeeded`.
pub async fn succeed_many(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE operations SET state = 'succeeded', error = NULL, finished_at = now(), updated_at = now(),
                started_at = coalesce(started_at, now())
         WHERE id = ANY($1) AND state IN ('scheduled', 'running')",
    )
    .bind(ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// Ends a running or scheduled operation in `state` (succeeded, failed or cancelled).
/// Its end is the time of this statement, not of its transaction: a cancel
/// that began before the operation's first claim must not end it before it
/// started.
pub async fn finish(
    conn: &mut PgConnection,
    id: Uuid,
    state: OperationState,
    error: Option<&str>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE operations SET state = $2, error = $3, finished_at = clock_timestamp(),
                updated_at = clock_timestamp(), started_at = coalesce(started_at, now())
         WHERE id = $1 AND state IN ('scheduled', 'running', 'compensating')",
    )
    .bind(id)
    .bind(state)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// New tasks as columns, for one `INSERT … SELECT FROM UNNEST`.
struct TaskColumns {
    ids: Vec<Uuid>,
    positions: Vec<i32>,
    types: Vec<&'static str>,
    args: Vec<Value>,
    queues: Vec<&'static str>,
    attempts: Vec<i32>,
    resources: Vec<Uuid>,
    nexts: Vec<String>,
    blocked: Vec<i32>,
}

impl TaskColumns {
    /// `tasks`, numbered from `first`.
    fn of(tasks: Vec<NewTask>, first: i32) -> Self {
        let n = tasks.len();
        let mut columns = Self {
            ids: Vec::with_capacity(n),
            positions: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            args: Vec::with_capacity(n),
            queues: Vec::with_capacity(n),
            attempts: Vec::with_capacity(n),
            resources: Vec::with_capacity(n),
            nexts: Vec::with_capacity(n),
            blocked: Vec::with_capacity(n),
        };
        for (i, task) in tasks.into_iter().enumerate() {
            columns.ids.push(Uuid::now_v7());
            columns
                .positions
                .push(first.saturating_add(i32::try_from(i).unwrap_or(i32::MAX)));
            columns.types.push(task.task_type);
            columns.args.push(task.args);
            columns.queues.push(task.queue.as_str());
            columns.attempts.push(task.max_attempts);
            columns.resources.push(task.resource_id);
            // A list of lists must be rectangular in PostgreSQL: each `next` goes as text.
            columns.nexts.push(next_literal(&task.next));
            columns.blocked.push(task.blocked_by);
        }
        columns
    }
}

/// A list of positions as PostgreSQL writes an `integer[]` literal: `{3,4}`.
fn next_literal(next: &[i32]) -> String {
    let items: Vec<String> = next.iter().map(i32::to_string).collect();
    format!("{{{}}}", items.join(","))
}

/// Filters of the fleet-wide operation list ([`list`]).
#[derive(Debug, Default)]
pub struct ListFilter<'a> {
    /// Only this tenant's (`None`: every tenant's).
    pub tenant: Option<&'a str>,
    /// Only in this state.
    pub state: Option<OperationState>,
    /// Only this executor.
    pub kind: Option<OperationKind>,
    /// Only this action.
    pub action: Option<&'a str>,
    /// Only on this resource.
    pub resource_id: Option<Uuid>,
    /// Only on resources of this kind.
    pub resource_kind: Option<&'a str>,
    /// Only accepted at or after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Only accepted before this time.
    pub created_before: Option<DateTime<Utc>>,
    /// Only ids before this one (the cursor).
    pub before: Option<Uuid>,
}

/// Operations of every resource, newest first (ids are time-ordered), at most `limit`.
pub async fn list(
    conn: &mut PgConnection,
    filter: &ListFilter<'_>,
    limit: i64,
) -> sqlx::Result<Vec<Operation>> {
    sqlx::query_as(
        "SELECT * FROM operations
         WHERE ($1::text IS NULL OR tenant = $1)
           AND ($2::text IS NULL OR state = $2)
           AND ($3::text IS NULL OR kind = $3)
           AND ($4::text IS NULL OR action = $4)
           AND ($5::uuid IS NULL OR resource_id = $5)
           AND ($6::text IS NULL OR resource_kind = $6)
           AND ($7::timestamptz IS NULL OR created_at >= $7)
           AND ($8::timestamptz IS NULL OR created_at < $8)
           AND ($9::uuid IS NULL OR id < $9)
         ORDER BY id DESC LIMIT $10",
    )
    .bind(filter.tenant)
    .bind(filter.state.map(OperationState::as_str))
    .bind(filter.kind.map(OperationKind::as_str))
    .bind(filter.action)
    .bind(filter.resource_id)
    .bind(filter.resource_kind)
    .bind(filter.created_after)
    .bind(filter.created_before)
    .bind(filter.before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// How many operations are in each state, of `tenant` (`None`: all),
/// accepted at or after `since` if given.
pub async fn count_by_state(
    conn: &mut PgConnection,
    tenant: Option<&str>,
    since: Option<DateTime<Utc>>,
) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as(
        "SELECT state, count(*) FROM operations
         WHERE ($1::text IS NULL OR tenant = $1) AND ($2::timestamptz IS NULL OR created_at >= $2)
         GROUP BY state",
    )
    .bind(tenant)
    .bind(since)
    .fetch_all(conn)
    .await
}
