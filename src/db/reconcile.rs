//! SQL of adopting and reconciling (`resources` and `resource_events`):
//! imports, drift seen by a pull, operator overrides, and forgetting a
//! resource without its delete chain. Kept apart from `db::resources` so
//! these statements read together; each writes its history row in the same
//! statement, as `db::resources` does.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::resources::Resource;
use crate::domain::{ResourceState, Transition};

/// Serialises imports of one backend object of one kind, until the
/// transaction ends: the duplicate check under it cannot race another import.
pub async fn lock_backend_object(
    conn: &mut PgConnection,
    kind: &str,
    backend_id: &str,
) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('import:' || $1 || ':' || $2, 0))")
        .bind(kind)
        .bind(backend_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The resource of `kind` that manages the backend object `backend_id`, in any tenant.
pub async fn managed_by(
    conn: &mut PgConnection,
    kind: &str,
    backend_id: &str,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("SELECT id FROM resources WHERE kind = $1 AND backend_id = $2 LIMIT 1")
        .bind(kind)
        .bind(backend_id)
        .fetch_optional(conn)
        .await
}

/// Which of `backend_ids` a resource of `kind` manages, in any tenant.
pub async fn managed_among(
    conn: &mut PgConnection,
    kind: &str,
    backend_ids: &[String],
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT DISTINCT backend_id FROM resources WHERE kind = $1 AND backend_id = ANY($2)",
    )
    .bind(kind)
    .bind(backend_ids)
    .fetch_all(conn)
    .await
}

/// A resource to import, in `creation_scheduled` with its backend id.
#[derive(Debug)]
pub struct Imported<'a> {
    /// Its id.
    pub id: Uuid,
    /// Its tenant.
    pub tenant: &'a str,
    /// Its kind.
    pub kind: &'a str,
    /// Its name.
    pub name: &'a str,
    /// The backend object it adopts.
    pub backend_id: &'a str,
    /// Its attributes.
    pub attributes: &'a Value,
    /// The import operation.
    pub operation_id: Uuid,
}

/// Inserts an imported resource in `creation_scheduled`, recording the
/// event (`import`).
pub async fn insert_imported(
    conn: &mut PgConnection,
    new: &Imported<'_>,
) -> sqlx::Result<Resource> {
    sqlx::query_as(
        "WITH ins AS (
             INSERT INTO resources (id, kind, name, state, attributes, current_operation_id, tenant, backend_id)
             VALUES ($1, $2, $3, 'creation_scheduled', $4, $5, $6, $7) RETURNING *
         ), ev AS (
             INSERT INTO resource_events (resource_id, operation_id, transition, to_state, tenant, details)
             SELECT id, $5, 'import', state, tenant, jsonb_build_object('backend_id', backend_id) FROM ins
         )
         SELECT * FROM ins",
    )
    .bind(new.id)
    .bind(new.kind)
    .bind(new.name)
    .bind(new.attributes)
    .bind(new.operation_id)
    .bind(new.tenant)
    .bind(new.backend_id)
    .fetch_one(conn)
    .await
}

/// Who may forget a resource.
#[derive(Debug, Clone, Copy)]
pub enum ForgetGuard {
    /// The operation in flight on it (a failed import, a forced delete).
    Operation(Uuid),
    /// Whoever read this version with nothing in flight (an unlink).
    Version(i64),
}

/// Why a resource is forgotten, for its last history row.
#[derive(Debug)]
pub struct Forget<'a> {
    /// The event's transition name (`unlink`, `import_failed`, `force_delete`).
    pub transition: &'a str,
    /// Why.
    pub reason: &'a str,
    /// More about it (who did it); without it, the failed task's `error_details`.
    pub details: Option<&'a Value>,
    /// The task whose failure forgot it, if one did.
    pub task_id: Option<Uuid>,
}

/// Deletes the resource's row without touching its backend, recording the
/// event (from its state to none); `false` if the guard fails. Its
/// operations and history stay.
pub async fn forget(
    conn: &mut PgConnection,
    id: Uuid,
    guard: ForgetGuard,
    why: &Forget<'_>,
) -> sqlx::Result<bool> {
    let (operation_id, version) = match guard {
        ForgetGuard::Operation(op) => (Some(op), None),
        ForgetGuard::Version(v) => (None, Some(v)),
    };
    let deleted: i64 = sqlx::query_scalar(
        "WITH del AS (
             DELETE FROM resources WHERE id = $1
               AND CASE WHEN $2::uuid IS NULL THEN current_operation_id IS NULL AND version = $3
                        ELSE current_operation_id = $2 END
             RETURNING id, state, tenant, current_operation_id
         ), ev AS (
             INSERT INTO resource_events (resource_id, operation_id, task_id, transition, from_state, reason, tenant, details)
             SELECT id, current_operation_id, $4, $5, state, $6, tenant,
                    coalesce($7, (SELECT t.error_details FROM tasks t WHERE t.id = $4)) FROM del
         )
         SELECT count(*) FROM del",
    )
    .bind(id)
    .bind(operation_id)
    .bind(version)
    .bind(why.task_id)
    .bind(why.transition)
    .bind(why.reason)
    .bind(why.details)
    .fetch_one(conn)
    .await?;
    Ok(deleted == 1)
}

/// An operator's `set_ok` or `set_erred` on a resource with nothing in
/// flight, at `version`: recorded with the reason and who did it (`details`).
/// `set_erred` also makes the reason the resource's error message; `set_ok`
/// clears the error. `None` if the resource moved on.
pub async fn override_state(
    conn: &mut PgConnection,
    id: Uuid,
    version: i64,
    transition: Transition,
    reason: &str,
    details: &Value,
) -> sqlx::Result<Option<Resource>> {
    let target = match transition {
        Transition::SetErred => ResourceState::Erred,
        _ => ResourceState::Ok,
    };
    sqlx::query_as(
        "WITH prev AS (SELECT id, state FROM resources WHERE id = $1 FOR UPDATE),
         upd AS (
             UPDATE resources r SET state = $3,
                    error_message = CASE WHEN $3 = 'erred' THEN $5 END, error_details = NULL,
                    version = r.version + 1, updated_at = now()
             FROM prev WHERE r.id = prev.id AND r.id = $1 AND r.version = $2
               AND r.current_operation_id IS NULL
             RETURNING r.*, prev.state AS prev_state
         ), ev AS (
             INSERT INTO resource_events (resource_id, transition, from_state, to_state, reason, tenant, details)
             SELECT id, $4, prev_state, state, $5, tenant, $6 FROM upd
         )
         SELECT * FROM upd",
    )
    .bind(id)
    .bind(version)
    .bind(target)
    .bind(transition.as_str())
    .bind(reason)
    .bind(details)
    .fetch_optional(conn)
    .await
}

/// Writes a history row that changes no state (an operator's forced delete
/// being asked for).
pub async fn note(
    conn: &mut PgConnection,
    resource: &Resource,
    operation_id: Option<Uuid>,
    transition: &str,
    reason: &str,
    details: &Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO resource_events (resource_id, operation_id, transition, from_state, to_state, reason, tenant, details)
         VALUES ($1, $2, $3, $4, $4, $5, $6, $7)",
    )
    .bind(resource.id)
    .bind(operation_id)
    .bind(transition)
    .bind(resource.state)
    .bind(reason)
    .bind(&resource.tenant)
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}

/// What a pull saw change on a resource.
#[derive(Debug)]
pub struct Drift<'a> {
    /// The runtime state now, if it changed.
    pub runtime_state: Option<&'a str>,
    /// The status now (the stored one with the reported keys merged in).
    pub status: &'a Value,
    /// `{"before": {...}, "after": {...}}`, for the history.
    pub details: &'a Value,
}

/// Records what a periodic pull saw change, if the resource is still at
/// `version` with nothing in flight: the new runtime state and status, and a
/// `drift` event (its state unchanged) with before and after.
pub async fn record_drift(
    conn: &mut PgConnection,
    id: Uuid,
    version: i64,
    drift: &Drift<'_>,
) -> sqlx::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "WITH upd AS (
             UPDATE resources SET runtime_state = coalesce($3, runtime_state), status = $4,
                    version = version + 1, updated_at = now()
             WHERE id = $1 AND version = $2 AND current_operation_id IS NULL
             RETURNING id, state, tenant
         ), ev AS (
             INSERT INTO resource_events (resource_id, transition, from_state, to_state, tenant, details)
             SELECT id, 'drift', state, state, tenant, $5 FROM upd
         )
         SELECT count(*) FROM upd",
    )
    .bind(id)
    .bind(version)
    .bind(drift.runtime_state)
    .bind(drift.status)
    .bind(drift.details)
    .fetch_one(conn)
    .await?;
    Ok(n == 1)
}

/// When each kind was last pulled by the periodic pull.
pub async fn kinds_pulled(
    conn: &mut PgConnection,
) -> sqlx::Result<Vec<(String, chrono::DateTime<chrono::Utc>)>> {
    sqlx::query_as("SELECT kind, pulled_at FROM kind_pulls")
        .fetch_all(conn)
        .await
}

/// Records that the periodic pull started pulling `kind` now.
pub async fn kind_pulled(conn: &mut PgConnection, kind: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO kind_pulls (kind, pulled_at) VALUES ($1, now())
         ON CONFLICT (kind) DO UPDATE SET pulled_at = excluded.pulled_at",
    )
    .bind(kind)
    .execute(conn)
    .await?;
    Ok(())
}

/// A kind's stable resources (`ok` or `erred`, nothing in flight) with a
/// backend object, by id after `after`.
pub async fn pullable_of_kind(
    conn: &mut PgConnection,
    kind: &str,
    after: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<Resource>> {
    sqlx::query_as(
        "SELECT * FROM resources
         WHERE kind = $1 AND state IN ('ok', 'erred') AND backend_id IS NOT NULL
           AND current_operation_id IS NULL AND ($2::uuid IS NULL OR id > $2)
         ORDER BY id LIMIT $3",
    )
    .bind(kind)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}
