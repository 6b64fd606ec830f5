//! SQL for `throttle_slots`: strict, FIFO concurrency limits per scope.
//!
//! Every decision about a scope is made under a transaction-scoped advisory
//! lock on that scope, so two runners can never both take the last slot.
//! A transaction that may decide about several scopes locks them all first,
//! in name order ([`lock_scopes`]), so that two such transactions cannot
//! each hold a scope the other waits for.
//! A slot is taken only if one is free *and* nobody waits (FIFO); a freed slot
//! is handed to the oldest waiter in the same transaction that frees it.
//!
//! A scope belongs to a tenant: tenants never count against each other's
//! slots, whatever their requests say.

use sqlx::PgConnection;
use uuid::Uuid;

/// The scope of a throttle: a tenant's slots of one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The tenant of the resources it counts (empty while the service runs open).
    pub tenant: String,
    /// The name within the tenant, e.g. `instance.tenant:acme`: all that callers are shown.
    pub name: String,
}

impl Scope {
    /// The stored form: the tenant and the name as a JSON array, so no pair of
    /// them can spell another's.
    pub fn key(&self) -> String {
        serde_json::json!([self.tenant, self.name]).to_string()
    }
}

/// The answer to [`acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The operation holds a slot.
    Granted,
    /// All slots are taken (or others wait first); the operation waits in line.
    Queued {
        /// Slots in use.
        held: i64,
        /// Its place in line, from 1.
        position: i64,
    },
}

impl Acquired {
    /// What a step waiting in line for a slot of `scope` says to people
    /// (the caller's own scope name only); `None` when it holds one.
    pub fn waiting_status(&self, scope: &Scope, limit: i32) -> Option<String> {
        match self {
            Self::Granted => None,
            Self::Queued { held, position } => Some(format!(
                "waiting for a throttle slot: {held}/{limit} in use for {} (place {position} in line)",
                scope.name
            )),
        }
    }
}

async fn lock_scope(conn: &mut PgConnection, scope: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(scope)
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks, in name order, the scopes `keys` (stored keys, as [`Scope::key`])
/// and every scope `operation_ids` hold a slot of or wait in: all that a
/// transaction that takes slots for some and frees those of others touches.
/// A scope locked here is locked again by [`acquire`] and [`release`]
/// without waiting (the lock is the transaction's).
pub async fn lock_scopes(
    conn: &mut PgConnection,
    keys: &[String],
    operation_ids: &[Uuid],
) -> sqlx::Result<()> {
    // The locks are taken in the ORDER BY's order: PostgreSQL computes a
    // volatile function of the select list after sorting.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(scope, 0))
         FROM (SELECT unnest($1::text[]) AS scope
               UNION SELECT scope FROM throttle_slots WHERE operation_id = ANY($2)) s
         ORDER BY scope",
    )
    .bind(keys)
    .bind(operation_ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes a slot of `scope` for an operation, or queues it. Two statements:
/// the scope's lock, then one that looks at the scope as the lock left it
/// (its own snapshot, taken after the lock) and inserts the operation's row.
pub async fn acquire(
    conn: &mut PgConnection,
    scope: &Scope,
    operation_id: Uuid,
    task_id: Uuid,
    limit: i32,
) -> sqlx::Result<Acquired> {
    let scope = scope.key();
    lock_scope(conn, &scope).await?;
    let (mine, held, waiting): (Option<bool>, i64, i64) = sqlx::query_as(
        "WITH mine AS (
             SELECT held FROM throttle_slots WHERE scope = $1 AND operation_id = $2
         ), counts AS (
             SELECT count(*) FILTER (WHERE held) AS held, count(*) FILTER (WHERE NOT held) AS waiting
             FROM throttle_slots WHERE scope = $1
         ), ins AS (
             INSERT INTO throttle_slots (scope, operation_id, task_id, slot_limit, held)
             SELECT $1, $2, $3, $4, counts.held < $4 AND counts.waiting = 0
             FROM counts WHERE NOT EXISTS (SELECT 1 FROM mine)
         )
         SELECT (SELECT held FROM mine), held, waiting FROM counts",
    )
    .bind(scope)
    .bind(operation_id)
    .bind(task_id)
    .bind(limit)
    .fetch_one(&mut *conn)
    .await?;
    let granted = match mine {
        Some(held) => held,
        None => held < i64::from(limit) && waiting == 0,
    };
    if granted {
        return Ok(Acquired::Granted);
    }
    let position = if mine.is_none() { waiting + 1 } else { waiting };
    Ok(Acquired::Queued { held, position })
}

/// Frees the slots of `operation_ids` (and takes them out of any line they
/// stood in), handing each freed slot to the oldest waiter; scopes are locked
/// in name order. Returns the waiting tasks now granted.
pub async fn release(conn: &mut PgConnection, operation_ids: &[Uuid]) -> sqlx::Result<Vec<Uuid>> {
    let scopes: Vec<(String, i32)> = sqlx::query_as(
        "WITH freed AS (
             DELETE FROM throttle_slots WHERE operation_id = ANY($1) RETURNING scope, slot_limit
         )
         SELECT scope, max(slot_limit) FROM freed GROUP BY scope ORDER BY scope",
    )
    .bind(operation_ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut granted = Vec::new();
    for (scope, limit) in scopes {
        lock_scope(conn, &scope).await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "WITH free AS (
                 SELECT greatest($2 - count(*), 0) AS n FROM throttle_slots WHERE scope = $1 AND held
             ), next AS (
                 SELECT operation_id FROM throttle_slots WHERE scope = $1 AND NOT held
                 ORDER BY seq LIMIT (SELECT n FROM free)
             )
             UPDATE throttle_slots s SET held = true FROM next
             WHERE s.scope = $1 AND s.operation_id = next.operation_id RETURNING s.task_id",
        )
        .bind(&scope)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        granted.extend(ids);
    }
    Ok(granted)
}
