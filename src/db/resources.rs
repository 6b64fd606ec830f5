//! SQL for `resources`.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

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
    /// Its attributes (a JSON object).
    pub attributes: Value,
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
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A resource to insert, in `creation_scheduled`.
#[derive(Debug)]
pub struct NewResource<'a> {
    /// Its id.
    pub id: Uuid,
    /// Its kind.
    pub kind: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its attributes.
    pub attributes: &'a Value,
    /// The create operation.
    pub operation_id: Uuid,
}

/// Inserts a resource in `creation_scheduled`.
pub async fn insert(conn: &mut PgConnection, new: &NewResource<'_>) -> sqlx::Result<Resource> {
    sqlx::query_as(
        "INSERT INTO resources (id, kind, name, state, attributes, current_operation_id)
         VALUES ($1, $2, $3, 'creation_scheduled', $4, $5) RETURNING *",
    )
    .bind(new.id)
    .bind(new.kind)
    .bind(new.name)
    .bind(new.attributes)
    .bind(new.operation_id)
    .fetch_one(conn)
    .await
}

/// The resource `id`.
pub async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Resource>> {
    sqlx::query_as("SELECT * FROM resources WHERE id = $1")
        .bind(id)
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
         ORDER BY id DESC LIMIT $5",
    )
    .bind(filter.kind)
    .bind(filter.state)
    .bind(filter.name)
    .bind(filter.before)
    .bind(limit)
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

/// Applies `schedule_updating` or `schedule_deleting` as a compare-and-set;
/// `None` if the resource is not in a source state.
pub async fn schedule(
    conn: &mut PgConnection,
    id: Uuid,
    transition: Transition,
    s: &Schedule<'_>,
) -> sqlx::Result<Option<Resource>> {
    sqlx::query_as(
        "UPDATE resources SET state = $3, current_operation_id = $4, action = $5, action_details = $6,
                name = coalesce($7, name), attributes = attributes || coalesce($8, '{}'::jsonb),
                error_message = NULL, error_details = NULL, version = version + 1, updated_at = now()
         WHERE id = $1 AND state = ANY($2) RETURNING *",
    )
    .bind(id)
    .bind(transition.source_names())
    .bind(transition.target())
    .bind(s.operation_id)
    .bind(s.action)
    .bind(s.action_details)
    .bind(s.name)
    .bind(s.attributes)
    .fetch_optional(conn)
    .await
}

/// How a transition ends, besides the state.
#[derive(Debug, Default)]
pub struct Ending<'a> {
    /// The error message, for `set_erred`.
    pub error_message: Option<&'a str>,
    /// A runtime state to record.
    pub runtime_state: Option<&'a str>,
    /// Whether the operation in flight ends with this transition.
    pub ends_operation: bool,
}

/// Applies `transition` as a compare-and-set on `operation_id`'s resource;
/// `None` if the resource is gone, not in a source state, or owned by another operation.
pub async fn transition(
    conn: &mut PgConnection,
    id: Uuid,
    operation_id: Uuid,
    transition: Transition,
    ending: &Ending<'_>,
) -> sqlx::Result<Option<Resource>> {
    sqlx::query_as(
        "UPDATE resources SET state = $3, error_message = $5,
                runtime_state = coalesce($6, runtime_state),
                action = CASE WHEN $7 THEN NULL ELSE action END,
                action_details = CASE WHEN $7 THEN NULL ELSE action_details END,
                current_operation_id = CASE WHEN $7 THEN NULL ELSE current_operation_id END,
                version = version + 1, updated_at = now()
         WHERE id = $1 AND state = ANY($2) AND current_operation_id = $4 RETURNING *",
    )
    .bind(id)
    .bind(transition.source_names())
    .bind(transition.target())
    .bind(operation_id)
    .bind(ending.error_message)
    .bind(ending.runtime_state)
    .bind(ending.ends_operation)
    .fetch_optional(conn)
    .await
}

/// Stores what a backend reported: backend id, runtime state, attributes to merge.
pub async fn record_backend_reply(
    conn: &mut PgConnection,
    id: Uuid,
    backend_id: Option<&str>,
    runtime_state: Option<&str>,
    attributes: Option<&Map<String, Value>>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE resources SET backend_id = coalesce($2, backend_id),
                runtime_state = coalesce($3, runtime_state),
                attributes = attributes || coalesce($4, '{}'::jsonb),
                version = version + 1, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(backend_id)
    .bind(runtime_state)
    .bind(attributes.map(|a| Value::Object(a.clone())))
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes the resource of a finished delete operation.
pub async fn delete(conn: &mut PgConnection, id: Uuid, operation_id: Uuid) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "DELETE FROM resources WHERE id = $1 AND current_operation_id = $2 AND state = 'deleting'",
    )
    .bind(id)
    .bind(operation_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
