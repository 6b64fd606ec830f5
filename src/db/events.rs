//! SQL for `resource_events`: the history of every resource's state.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::ResourceState;

/// A row of `resource_events`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Event {
    /// Order of events, across all resources.
    pub seq: i64,
    /// The resource.
    pub resource_id: Uuid,
    /// The operation that made it, if any.
    pub operation_id: Option<Uuid>,
    /// The task that made it, if any.
    pub task_id: Option<Uuid>,
    /// The transition's name (`begin_creating`, ..., or `create`, `delete`, `retry`).
    pub transition: String,
    /// The state before (none at creation).
    pub from_state: Option<ResourceState>,
    /// The state after (none at deletion).
    pub to_state: Option<ResourceState>,
    /// Why, when there is more to say (e.g. the error message).
    pub reason: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
    /// The resource's tenant.
    pub tenant: String,
    /// More about it (a drift's before and after, an override's actor).
    #[sqlx(default)]
    pub details: Option<serde_json::Value>,
}

/// A resource's events in order, after `after` if given, at most `limit`.
pub async fn list_for_resource(
    conn: &mut PgConnection,
    resource_id: Uuid,
    scope: Option<&str>,
    after: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<Event>> {
    sqlx::query_as(
        "SELECT * FROM resource_events WHERE resource_id = $1 AND ($2::bigint IS NULL OR seq > $2)
           AND ($4::text IS NULL OR tenant = $4)
         ORDER BY seq LIMIT $3",
    )
    .bind(resource_id)
    .bind(after)
    .bind(limit)
    .bind(scope)
    .fetch_all(conn)
    .await
}
