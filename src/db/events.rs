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

/// A history row with its resource's kind, for the fleet-wide lists and
/// the stream.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FleetEvent {
    /// The row.
    #[sqlx(flatten)]
    pub event: Event,
    /// The resource's kind (from the resource, or the operation that made
    /// the event when the resource is gone).
    pub resource_kind: Option<String>,
    /// The operation's state now, when the event ended it (`set_ok`,
    /// `set_erred` or `delete` by a finished operation).
    pub ended_operation: Option<String>,
}

/// Filters of [`list`].
#[derive(Debug, Default)]
pub struct ListFilter<'a> {
    /// Only this tenant's (`None`: every tenant's).
    pub tenant: Option<&'a str>,
    /// Only of this resource.
    pub resource_id: Option<Uuid>,
    /// Only of resources of this kind.
    pub kind: Option<&'a str>,
    /// Only this transition.
    pub transition: Option<&'a str>,
    /// Only with `seq` above this.
    pub after: Option<i64>,
    /// Only with `seq` below this.
    pub before: Option<i64>,
    /// Only written at or after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Only written before this time.
    pub created_before: Option<DateTime<Utc>>,
}

/// Events of every resource, newest first if `newest_first`, else oldest
/// first, at most `limit`.
pub async fn list(
    conn: &mut PgConnection,
    filter: &ListFilter<'_>,
    newest_first: bool,
    limit: i64,
) -> sqlx::Result<Vec<FleetEvent>> {
    let order = if newest_first { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT e.*, k.resource_kind,
                CASE WHEN e.transition IN ('set_ok', 'set_erred', 'delete') AND o.finished_at IS NOT NULL
                     THEN o.state END AS ended_operation
         FROM resource_events e
         LEFT JOIN operations o ON o.id = e.operation_id
         CROSS JOIN LATERAL (SELECT COALESCE(
             (SELECT r.kind FROM resources r WHERE r.id = e.resource_id), o.resource_kind,
             (SELECT o2.resource_kind FROM operations o2 WHERE o2.resource_id = e.resource_id LIMIT 1))
             AS resource_kind) k
         WHERE ($1::text IS NULL OR e.tenant = $1)
           AND ($2::uuid IS NULL OR e.resource_id = $2)
           AND ($3::text IS NULL OR k.resource_kind = $3)
           AND ($4::text IS NULL OR e.transition = $4)
           AND ($5::bigint IS NULL OR e.seq > $5)
           AND ($6::bigint IS NULL OR e.seq < $6)
           AND ($7::timestamptz IS NULL OR e.created_at >= $7)
           AND ($8::timestamptz IS NULL OR e.created_at < $8)
         ORDER BY e.seq {order} LIMIT $9"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(filter.tenant)
        .bind(filter.resource_id)
        .bind(filter.kind)
        .bind(filter.transition)
        .bind(filter.after)
        .bind(filter.before)
        .bind(filter.created_after)
        .bind(filter.created_before)
        .bind(limit)
        .fetch_all(conn)
        .await
}

/// The highest `seq` written so far (0 when there is none).
pub async fn last_seq(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COALESCE(max(seq), 0) FROM resource_events")
        .fetch_one(conn)
        .await
}

/// The highest `seq` after `after` up to which the history has no hole
/// that might still fill: a hole counts as settled once the row after it
/// is older than `hole_wait` (its writer's transaction rolled back, or the
/// rows were pruned). Looks at most `limit` rows ahead; `after` if none.
pub async fn settled_upto(
    conn: &mut PgConnection,
    after: i64,
    limit: i64,
    hole_wait: std::time::Duration,
) -> sqlx::Result<i64> {
    let rows: Vec<(i64, bool)> = sqlx::query_as(
        "SELECT seq, created_at < clock_timestamp() - make_interval(secs => $3::float8)
         FROM resource_events WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .bind(hole_wait.as_secs_f64())
    .fetch_all(conn)
    .await?;
    let mut upto = after;
    for (seq, old) in rows {
        if seq != upto + 1 && !old {
            break;
        }
        upto = seq;
    }
    Ok(upto)
}
