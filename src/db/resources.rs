//! SQL for `resources`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::backend::ResourceView;
use crate::domain::{ResourceState, Transition};

/// A row of `resources`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Resource {
    /// Primary key (uuid v7).
    pub id: Uuid,
    /// The kind's name.
    pub kind: String,
    /// The resource's name.
    pub name: String,
    /// Where it stands.
    pub state: ResourceState,
    /// The backend's last reported runtime state.
    pub runtime_state: Option<String>,
    /// The backend's id for it.
    pub backend_id: Option<String>,
    /// Its attributes (a JSON object), as its users gave them.
    pub attributes: Value,
    /// What its backend reports about it beyond its id and runtime state (a
    /// JSON object), kept apart from the attributes.
    pub status: Value,
    /// The action in flight.
    pub action: Option<String>,
    /// The parameters of the action in flight.
    pub action_details: Option<Value>,
    /// Why the last operation failed.
    pub error_message: Option<String>,
    /// More about that failure.
    pub error_details: Option<Value>,
    /// The operation in flight.
    pub current_operation_id: Option<Uuid>,
    /// Bumped on every change; the ETag.
    pub version: i64,
    /// The tenant it belongs to.
    pub tenant: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// The composite resource it is part of (a server, for its volume).
    pub parent_id: Option<Uuid>,
    /// Its role in its parent (`volumes`, `port`), when it has one.
    pub role: Option<String>,
}

/// A resource to insert, in `creation_scheduled`.
#[derive(Debug)]
pub struct NewResource<'a> {
    /// Its id.
    pub id: Uuid,
    /// Its tenant.
    pub tenant: &'a str,
    /// Its kind.
    pub kind: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its attributes.
    pub attributes: &'a Value,
    /// The create operation.
    pub operation_id: Uuid,
    /// Its parent and its role there, for a child of a composite resource.
    pub parent: Option<(Uuid, &'a str)>,
}

/// Inserts a resource in `creation_scheduled`, recording the event.
pub async fn insert(conn: &mut PgConnection, new: &NewResource<'_>) -> sqlx::Result<Resource> {
    sqlx::query_as(
        "WITH ins AS (
             INSERT INTO resources (id, kind, name, state, attributes, current_operation_id, tenant, parent_id, role)
             VALUES ($1, $2, $3, 'creation_scheduled', $4, $5, $6, $7, $8) RETURNING *
         ), ev AS (
             INSERT INTO resource_events (resource_id, operation_id, transition, to_state, tenant)
             SELECT id, $5, 'create', state, tenant FROM ins
         )
         SELECT * FROM ins",
    )
    .bind(new.id)
    .bind(new.kind)
    .bind(new.name)
    .bind(new.attributes)
    .bind(new.operation_id)
    .bind(new.tenant)
    .bind(new.parent.map(|p| p.0))
    .bind(new.parent.map(|p| p.1))
    .fetch_one(conn)
    .await
}

/// The children of `parent`, oldest first, locked until the transaction ends.
pub async fn lock_children(conn: &mut PgConnection, parent: Uuid) -> sqlx::Result<Vec<Resource>> {
    sqlx::query_as("SELECT * FROM resources WHERE parent_id = $1 ORDER BY id FOR UPDATE")
        .bind(parent)
        .fetch_all(conn)
        .await
}

/// Puts a locked resource under `operation_id` without changing its state
/// (a child while its parent's update or action runs).
pub async fn hold(conn: &mut PgConnection, id: Uuid, operation_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE resources SET current_operation_id = $2, version = version + 1, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(operation_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// A child, as its parent lists it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct ChildSummary {
    /// The child's id.
    pub id: Uuid,
    /// Its kind.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its role in the parent.
    pub role: Option<String>,
    /// Where it stands.
    pub state: ResourceState,
    /// The parent.
    #[serde(skip)]
    pub parent_id: Option<Uuid>,
}

/// The children of each of `parents`, oldest first.
pub async fn children_of(
    conn: &mut PgConnection,
    parents: &[Uuid],
) -> sqlx::Result<Vec<ChildSummary>> {
    sqlx::query_as(
        "SELECT id, kind, name, role, state, parent_id FROM resources
         WHERE parent_id = ANY($1) ORDER BY parent_id, id",
    )
    .bind(parents)
    .fetch_all(conn)
    .await
}

/// The resource `id`.
pub async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Resource>> {
    sqlx::query_as("SELECT * FROM resources WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// What an operation's step acts on: its resource as the backend sees it,
/// and the operation's request. Read when the step is claimed
/// ([`crate::db::tasks::Claimed`]).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Target {
    /// The resource.
    #[serde(flatten)]
    pub resource: ResourceView,
    /// The tenant the resource belongs to (set from the token that created
    /// it; empty while the service runs open). Backends are not told it.
    pub tenant: String,
    /// The operation's request.
    pub request: Value,
    /// The resource's parent, when it is a child of a composite resource.
    #[serde(default)]
    pub parent: Option<ResourceView>,
    /// Where the resource stands.
    pub state: ResourceState,
}

/// The resource `id` if `scope` (a tenant; `None` for all) may see it.
pub async fn get_in(
    conn: &mut PgConnection,
    id: Uuid,
    scope: Option<&str>,
) -> sqlx::Result<Option<Resource>> {
    sqlx::query_as("SELECT * FROM resources WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)")
        .bind(id)
        .bind(scope)
        .fetch_optional(conn)
        .await
}

/// The resource `id`, locked until the transaction ends, if `scope` may see it.
pub async fn lock_in(
    conn: &mut PgConnection,
    id: Uuid,
    scope: Option<&str>,
) -> sqlx::Result<Option<Resource>> {
    sqlx::query_as(
        "SELECT * FROM resources WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) FOR UPDATE",
    )
    .bind(id)
    .bind(scope)
    .fetch_optional(conn)
    .await
}

/// The resource `id`, locked until the transaction ends.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Resource>> {
    sqlx::query_as("SELECT * FROM resources WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Filters for [`list`].
#[derive(Debug, Default)]
pub struct ListFilter<'a> {
    /// Only this kind.
    pub kind: Option<&'a str>,
    /// Only this state.
    pub state: Option<ResourceState>,
    /// Only this exact name.
    pub name: Option<&'a str>,
    /// Only ids before this one (newest first).
    pub before: Option<Uuid>,
    /// Only this tenant's (`None`: every tenant's).
    pub tenant: Option<&'a str>,
    /// Only the children of this resource.
    pub parent_id: Option<Uuid>,
}

/// Resources newest first, at most `limit`.
pub async fn list(
    conn: &mut PgConnection,
    filter: &ListFilter<'_>,
    limit: i64,
) -> sqlx::Result<Vec<Resource>> {
    sqlx::query_as(
        "SELECT * FROM resources
         WHERE ($1::text IS NULL OR kind = $1)
           AND ($2::text IS NULL OR state = $2)
           AND ($3::text IS NULL OR name = $3)
           AND ($4::uuid IS NULL OR id < $4)
           AND ($6::text IS NULL OR tenant = $6)
           AND ($7::uuid IS NULL OR parent_id = $7)
         ORDER BY id DESC LIMIT $5",
    )
    .bind(filter.kind)
    .bind(filter.state)
    .bind(filter.name)
    .bind(filter.before)
    .bind(limit)
    .bind(filter.tenant)
    .bind(filter.parent_id)
    .fetch_all(conn)
    .await
}

/// What an accepted update, action or delete changes besides the state.
#[derive(Debug, Default)]
pub struct Schedule<'a> {
    /// The operation now in flight.
    pub operation_id: Uuid,
    /// The action's name, for actions.
    pub action: Option<&'a str>,
    /// The action's parameters, for actions.
    pub action_details: Option<&'a Value>,
    /// A new name, for updates.
    pub name: Option<&'a str>,
    /// Attributes to merge in, for updates.
    pub attributes: Option<&'a Value>,
}

/// Applies `schedule_updating` or `schedule_deleting` as a compare-and-set,
/// recording the event; `None` if the resource is not in a source state.
pub async fn schedule(
    conn: &mut PgConnection,
    id: Uuid,
    transition: Transition,
    s: &Schedule<'_>,
) -> sqlx::Result<Option<Resource>> {
    sqlx::query_as(
        "WITH prev AS (SELECT id, state FROM resources WHERE id = $1 FOR UPDATE),
         upd AS (
             UPDATE resources r SET state = $3, current_operation_id = $4, action = $5, action_details = $6,
                    name = coalesce($7, r.name), attributes = r.attributes || coalesce($8, '{}'::jsonb),
                    error_message = NULL, error_details = NULL, version = r.version + 1, updated_at = now()
             FROM prev WHERE r.id = prev.id AND r.id = $1 AND prev.state = ANY($2)
             RETURNING r.*, prev.state AS prev_state
         ), ev AS (
             INSERT INTO resource_events (resource_id, operation_id, transition, from_state, to_state, tenant)
             SELECT id, $4, $9, prev_state, state, tenant FROM upd
         )
         SELECT * FROM upd",
    )
    .bind(id)
    .bind(transition.source_names())
    .bind(transition.target())
    .bind(s.operation_id)
    .bind(s.action)
    .bind(s.action_details)
    .bind(s.name)
    .bind(s.attributes)
    .bind(transition.as_str())
    .fetch_optional(conn)
    .await
}

/// Who may make a transition: the operation in flight, or (for background
/// jobs, which run outside operations) whoever read this version with no
/// operation in flight.
#[derive(Debug, Clone, Copy)]
pub enum Guard {
    /// Only while this operation owns the resource.
    Operation(Uuid),
    /// Only at this version, with no operation in flight.
    Version(i64),
}

/// How a transition ends, besides the state.
#[derive(Debug, Default)]
pub struct Ending<'a> {
    /// The error message, for `set_erred`; also the event's reason.
    pub error_message: Option<&'a str>,
    /// A runtime state to record.
    pub runtime_state: Option<&'a str>,
    /// Whether the operation in flight ends with this transition.
    pub ends_operation: bool,
    /// The task that made it, for the history.
    pub task_id: Option<Uuid>,
    /// More about the error, for `set_erred`; without it, a failed task's
    /// `error_details` (the task `task_id`) are copied.
    pub error_details: Option<&'a Value>,
    /// More about the event, for the history (a drift's before and after,
    /// an override's actor).
    pub details: Option<&'a Value>,
}

/// Applies `transition` as a compare-and-set under `guard`, recording the
/// event; `None` if the resource is gone, not in a source state, or the guard fails.
pub async fn transition(
    conn: &mut PgConnection,
    id: Uuid,
    guard: Guard,
    transition: Transition,
    ending: &Ending<'_>,
) -> sqlx::Result<Option<Resource>> {
    let (operation_id, version) = match guard {
        Guard::Operation(op) => (Some(op), None),
        Guard::Version(v) => (None, Some(v)),
    };
    sqlx::query_as(
        "WITH prev AS (SELECT id, state FROM resources WHERE id = $1 FOR UPDATE),
         upd AS (
             UPDATE resources r SET state = $3, error_message = $5,
                    error_details = CASE WHEN $5::text IS NULL THEN NULL
                        ELSE coalesce($11::jsonb, (SELECT t.error_details FROM tasks t WHERE t.id = $9)) END,
                    runtime_state = coalesce($6, r.runtime_state),
                    action = CASE WHEN $7 THEN NULL ELSE r.action END,
                    action_details = CASE WHEN $7 THEN NULL ELSE r.action_details END,
                    current_operation_id = CASE WHEN $7 THEN NULL ELSE r.current_operation_id END,
                    version = r.version + 1, updated_at = now()
             FROM prev WHERE r.id = prev.id AND r.id = $1 AND prev.state = ANY($2)
               AND CASE WHEN $4::uuid IS NULL THEN r.current_operation_id IS NULL AND r.version = $8
                        ELSE r.current_operation_id = $4 END
             RETURNING r.*, prev.state AS prev_state
         ), ev AS (
             INSERT INTO resource_events (resource_id, operation_id, task_id, transition, from_state, to_state, reason, tenant, details)
             SELECT id, coalesce($4, current_operation_id), $9, $10, prev_state, state, $5, tenant, $12 FROM upd
         )
         SELECT * FROM upd",
    )
    .bind(id)
    .bind(transition.source_names())
    .bind(transition.target())
    .bind(operation_id)
    .bind(ending.error_message)
    .bind(ending.runtime_state)
    .bind(ending.ends_operation)
    .bind(version)
    .bind(ending.task_id)
    .bind(transition.as_str())
    .bind(ending.error_details)
    .bind(ending.details)
    .fetch_optional(conn)
    .await
}

/// One resource of [`transition_many`].
#[derive(Debug)]
pub struct Owned<'a> {
    /// The resource.
    pub resource_id: Uuid,
    /// The operation that must own it.
    pub operation_id: Uuid,
    /// The task that makes the transition, for the history.
    pub task_id: Uuid,
    /// A runtime state to record.
    pub runtime_state: Option<&'a str>,
}

/// Applies `transition` to several resources, each as a compare-and-set
/// guarded by its operation (as [`transition`] with [`Guard::Operation`]),
/// recording the events; locks them in id order. Returns the resources it
/// applied to.
pub async fn transition_many(
    conn: &mut PgConnection,
    transition: Transition,
    ends_operation: bool,
    rows: &[Owned<'_>],
) -> sqlx::Result<Vec<Uuid>> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.resource_id).collect();
    let operations: Vec<Uuid> = rows.iter().map(|r| r.operation_id).collect();
    let tasks: Vec<Uuid> = rows.iter().map(|r| r.task_id).collect();
    let runtime_states: Vec<Option<&str>> = rows.iter().map(|r| r.runtime_state).collect();
    sqlx::query_scalar(
        "WITH u AS (
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[])
                 AS u(id, operation_id, task_id, runtime_state)
         ), prev AS (
             SELECT r.id, r.state, u.operation_id, u.task_id, u.runtime_state
             FROM resources r JOIN u ON u.id = r.id
             WHERE r.id = ANY($1) ORDER BY r.id FOR UPDATE OF r
         ), upd AS (
             UPDATE resources r SET state = $6, error_message = NULL, error_details = NULL,
                    runtime_state = coalesce(prev.runtime_state, r.runtime_state),
                    action = CASE WHEN $7 THEN NULL ELSE r.action END,
                    action_details = CASE WHEN $7 THEN NULL ELSE r.action_details END,
                    current_operation_id = CASE WHEN $7 THEN NULL ELSE r.current_operation_id END,
                    version = r.version + 1, updated_at = now()
             FROM prev
             WHERE r.id = prev.id AND r.id = ANY($1) AND prev.state = ANY($5)
               AND r.current_operation_id = prev.operation_id
             RETURNING r.id, r.state, r.tenant, prev.state AS prev_state, prev.operation_id, prev.task_id
         ), ev AS (
             INSERT INTO resource_events (resource_id, operation_id, task_id, transition, from_state, to_state, tenant)
             SELECT id, operation_id, task_id, $8, prev_state, state, tenant FROM upd
         )
         SELECT id FROM upd",
    )
    .bind(ids)
    .bind(operations)
    .bind(tasks)
    .bind(runtime_states)
    .bind(transition.source_names())
    .bind(transition.target())
    .bind(ends_operation)
    .bind(transition.as_str())
    .fetch_all(conn)
    .await
}

/// Puts an `erred` resource back under a failed operation that is being
/// retried, in the state its chain had reached (`creating`, `updating` or
/// `deleting`); `None` if it is no longer `erred` at `version` with nothing in flight.
pub async fn resume(
    conn: &mut PgConnection,
    id: Uuid,
    version: i64,
    operation_id: Uuid,
    state: ResourceState,
    action: Option<&str>,
    action_details: Option<&Value>,
) -> sqlx::Result<Option<Resource>> {
    sqlx::query_as(
        "WITH upd AS (
             UPDATE resources SET state = $4, current_operation_id = $3, action = $5, action_details = $6,
                    error_message = NULL, error_details = NULL, version = version + 1, updated_at = now()
             WHERE id = $1 AND version = $2 AND state = 'erred' AND current_operation_id IS NULL
             RETURNING *
         ), ev AS (
             INSERT INTO resource_events (resource_id, operation_id, transition, from_state, to_state, tenant)
             SELECT id, $3, 'retry', 'erred', state, tenant FROM upd
         )
         SELECT * FROM upd",
    )
    .bind(id)
    .bind(version)
    .bind(operation_id)
    .bind(state)
    .bind(action)
    .bind(action_details)
    .fetch_optional(conn)
    .await
}

/// What a backend reported about a resource.
#[derive(Debug)]
pub struct Reply {
    /// The resource.
    pub resource_id: Uuid,
    /// The backend's id for it, if reported.
    pub backend_id: Option<String>,
    /// Its runtime state, if reported.
    pub runtime_state: Option<String>,
    /// Keys to merge into its status (a JSON object).
    pub status: Option<Value>,
}

/// Stores what backends reported, one statement for all: each reported
/// field replaces the stored one, status keys are merged (never into the
/// attributes). The resources are
/// locked in id order, as every statement that locks several does.
pub async fn record_backend_replies(
    conn: &mut PgConnection,
    replies: Vec<Reply>,
) -> sqlx::Result<()> {
    let n = replies.len();
    let (mut ids, mut backend_ids, mut runtime_states, mut statuses) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for reply in replies {
        ids.push(reply.resource_id);
        backend_ids.push(reply.backend_id);
        runtime_states.push(reply.runtime_state);
        statuses.push(reply.status);
    }
    sqlx::query(
        "WITH locked AS (
             SELECT id FROM resources WHERE id = ANY($1) ORDER BY id FOR UPDATE
         )
         UPDATE resources r SET backend_id = coalesce(u.backend_id, r.backend_id),
                runtime_state = coalesce(u.runtime_state, r.runtime_state),
                status = r.status || coalesce(u.status, '{}'::jsonb),
                version = r.version + 1, updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[])
              AS u(id, backend_id, runtime_state, status)
         WHERE r.id = u.id AND r.id = ANY(ARRAY(SELECT id FROM locked))",
    )
    .bind(ids)
    .bind(backend_ids)
    .bind(runtime_states)
    .bind(statuses)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes the resource of a finished delete operation, recording the event.
pub async fn delete(conn: &mut PgConnection, id: Uuid, operation_id: Uuid) -> sqlx::Result<bool> {
    let deleted: i64 = sqlx::query_scalar(
        "WITH del AS (
             DELETE FROM resources WHERE id = $1 AND current_operation_id = $2 AND state = 'deleting'
             RETURNING id, state, tenant
         ), ev AS (
             INSERT INTO resource_events (resource_id, operation_id, transition, from_state, tenant)
             SELECT id, $2, 'delete', state, tenant FROM del
         )
         SELECT count(*) FROM del",
    )
    .bind(id)
    .bind(operation_id)
    .fetch_one(conn)
    .await?;
    Ok(deleted == 1)
}

/// The children held by `operation_id` (a composite operation's), locked
/// until the transaction ends, oldest first.
pub async fn lock_held_children(
    conn: &mut PgConnection,
    operation_id: Uuid,
) -> sqlx::Result<Vec<Resource>> {
    sqlx::query_as(
        "SELECT * FROM resources WHERE current_operation_id = $1 AND parent_id IS NOT NULL
         ORDER BY id FOR UPDATE",
    )
    .bind(operation_id)
    .fetch_all(conn)
    .await
}

/// Removes a child that its operation deleted or undid, or never made,
/// recording the event with `reason`.
pub async fn remove_child(
    conn: &mut PgConnection,
    id: Uuid,
    operation_id: Uuid,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "WITH del AS (
             DELETE FROM resources WHERE id = $1 AND current_operation_id = $2 AND parent_id IS NOT NULL
             RETURNING id, state, tenant
         )
         INSERT INTO resource_events (resource_id, operation_id, transition, from_state, reason, tenant)
         SELECT id, $2, 'delete', state, $3, tenant FROM del",
    )
    .bind(id)
    .bind(operation_id)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Lets go of every resource `operation_id` still holds (its children, once
/// it has ended).
pub async fn release_held(conn: &mut PgConnection, operation_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE resources SET current_operation_id = NULL, action = NULL, action_details = NULL,
                version = version + 1, updated_at = now()
         WHERE current_operation_id = $1",
    )
    .bind(operation_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stable resources (`ok` or `erred`, nothing in flight) with a backend object, by id after `after`.
pub async fn list_pullable(
    conn: &mut PgConnection,
    after: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<Resource>> {
    sqlx::query_as(
        "SELECT * FROM resources
         WHERE state IN ('ok', 'erred') AND backend_id IS NOT NULL AND current_operation_id IS NULL
           AND ($1::uuid IS NULL OR id > $1)
         ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Records a pulled runtime state if the resource is still at `version` with nothing in flight.
pub async fn set_runtime_state(
    conn: &mut PgConnection,
    id: Uuid,
    version: i64,
    runtime_state: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE resources SET runtime_state = $3, version = version + 1, updated_at = now()
         WHERE id = $1 AND version = $2 AND current_operation_id IS NULL",
    )
    .bind(id)
    .bind(version)
    .bind(runtime_state)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
