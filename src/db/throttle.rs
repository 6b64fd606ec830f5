//! SQL for `throttle_slots`: strict, FIFO concurrency limits per scope.
//!
//! Every decision about a scope is made under a transaction-scoped advisory
//! lock on that scope, so two runners can never both take the last slot.
//! A transaction locks the scopes it touches in one statement, in name
//! order, before it decides about them: [`lock_scopes`] before it takes
//! slots, [`release`] in the statement that frees them. So no two
//! transactions each hold a scope the other waits for.
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

/// Locks, in name order, the scopes `keys` (stored keys, as [`Scope::key`])
/// and every scope `operation_ids` hold a slot of or wait in: all that a
/// transaction that takes slots for some and frees those of others touches.
/// [`acquire`] needs its scope locked so; [`release`] locks again, without
/// waiting, a scope locked here (the lock is the transaction's).
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

/// Takes a slot of `scope` for an operation, or queues it. The caller has
/// locked the scope ([`lock_scopes`]) in an earlier statement, so that this
/// one sees the scope as the lock left it (its snapshot is taken after).
pub async fn acquire(
    conn: &mut PgConnection,
    scope: &Scope,
    operation_id: Uuid,
    task_id: Uuid,
    limit: i32,
) -> sqlx::Result<Acquired> {
    let scope = scope.key();
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
/// stood in), handing each freed slot to the oldest waiter of its scope.
/// Returns the waiting tasks now granted. Two statements: the first frees
/// and locks the scopes it freed in, in name order; the second hands the
/// slots over, seeing the scopes as the locks left them.
pub async fn release(conn: &mut PgConnection, operation_ids: &[Uuid]) -> sqlx::Result<Vec<Uuid>> {
    // The locks are taken in the ORDER BY's order, as in `lock_scopes`.
    let freed: Vec<(String, i32)> = sqlx::query_as(
        "WITH freed AS (
             DELETE FROM throttle_slots WHERE operation_id = ANY($1) RETURNING scope, slot_limit
         )
         SELECT scope, slot_limit FROM (
             SELECT scope, slot_limit, pg_advisory_xact_lock(hashtextextended(scope, 0))
             FROM (SELECT scope, max(slot_limit) AS slot_limit FROM freed GROUP BY scope) g
             ORDER BY scope
         ) locked",
    )
    .bind(operation_ids)
    .fetch_all(&mut *conn)
    .await?;
    if freed.is_empty() {
        return Ok(Vec::new());
    }
    let (scopes, limits): (Vec<String>, Vec<i32>) = freed.into_iter().unzip();
    sqlx::query_scalar(
        "WITH free AS (
             SELECT f.scope, greatest(f.slot_limit - (SELECT count(*) FROM throttle_slots h
                                                      WHERE h.scope = f.scope AND h.held), 0) AS n
             FROM UNNEST($1::text[], $2::int4[]) AS f(scope, slot_limit)
         ), next AS (
             SELECT w.scope, w.operation_id FROM free CROSS JOIN LATERAL (
                 SELECT scope, operation_id FROM throttle_slots
                 WHERE scope = free.scope AND NOT held ORDER BY seq LIMIT free.n
             ) w
         )
         UPDATE throttle_slots s SET held = true FROM next
         WHERE s.scope = next.scope AND s.operation_id = next.operation_id RETURNING s.task_id",
    )
    .bind(scopes)
    .bind(limits)
    .fetch_all(&mut *conn)
    .await
}
