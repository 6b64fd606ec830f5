//! The shared store: the simulated cloud in PostgreSQL (the `sim_*` tables),
//! so every process on the database sees the same cloud.
//!
//! Each call is one transaction: it takes transaction-scoped advisory locks
//! on what it touches, always in the same order (the idempotency key, the
//! resource's failure counter, the tenant of a create, the object, the
//! instance an attach names as parent), loads,
//! decides with the same rules as the in-memory store, writes back and
//! commits (in the service's own database without waiting for the flush:
//! see [`Sim::shared_with_the_service`](super::Sim::shared_with_the_service)).
//! Time is the database's (`clock_timestamp()`, read once the locks are
//! held), so transitions end at the same moment for every process.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::SimConfig;
use super::SimStats;
use super::model::{
    Kind, Loaded, Next, Object, ObjectWrite, Outcome, Plan, TenantLoad, decide, reply_from_json,
    reply_to_json, runtime_state,
};
use crate::backend::{BackendCall, BackendError, ListedObject};

/// The database time type.
type Time = DateTime<Utc>;

/// What `next_state` holds for a pending disappearance.
const GONE: &str = "gone";

/// A database failure, as the caller sees it: worth retrying.
pub(super) fn store_error(error: &sqlx::Error) -> BackendError {
    BackendError::Transient(format!("sim store: {error}"))
}

/// A row the rules cannot read (the CHECK constraints should prevent it).
fn corrupt(what: &str) -> BackendError {
    BackendError::Permanent(format!("sim store: {what}"))
}

/// Takes the advisory locks `names` in their order and reads the time once
/// they are all held: one statement.
async fn lock_all(conn: &mut PgConnection, names: &[String]) -> Result<Time, BackendError> {
    // The aggregate consumes every lock before the time is read; the locks
    // are taken in the ORDER BY's order (a volatile function of the select
    // list is computed after sorting).
    sqlx::query_scalar(
        "SELECT clock_timestamp() FROM (
             SELECT count(*) FROM (
                 SELECT pg_advisory_xact_lock(hashtextextended(name, 0))
                 FROM unnest($1::text[]) WITH ORDINALITY AS l(name, n) ORDER BY n
             ) locked
         ) held",
    )
    .bind(names)
    .fetch_one(conn)
    .await
    .map_err(|e| store_error(&e))
}

/// `now + delay`, saturating.
fn later(now: Time, delay: Duration) -> Time {
    TimeDelta::from_std(delay)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Runs one call in its own transaction; database errors are transient.
/// `flush`: whether its commit waits for the flush (see
/// [`Sim::shared_with_the_service`](super::Sim::shared_with_the_service)).
pub(super) async fn call(
    pool: &PgPool,
    flush: bool,
    config: &SimConfig,
    plan: &Plan<'_>,
    call: &BackendCall,
) -> Result<Outcome<Time>, BackendError> {
    let begin = if flush {
        "BEGIN"
    } else {
        "BEGIN; SET LOCAL synchronous_commit = off"
    };
    let mut tx = pool.begin_with(begin).await.map_err(|e| store_error(&e))?;
    let key = call.idempotency_key;
    let resource_id = call.resource.id;
    let mut locks = Vec::with_capacity(5);
    if plan.effect {
        locks.push(format!("sim:key:{key}"));
    }
    if plan.transient {
        locks.push(format!("sim:resource:{resource_id}"));
    }
    if let Some(tenant) = &plan.create_tenant {
        locks.push(format!("sim:tenant:{tenant}"));
    }
    if let Some(id) = plan.object_id {
        locks.push(format!("sim:object:{id}"));
    }
    // Locked after the object: no call locks an instance and then something
    // attached to it. Held, an instance delete cannot slip between an
    // attach's check and its write.
    if let Some(id) = plan.parent_id {
        locks.push(format!("sim:object:{id}"));
    }
    let now = lock_all(&mut tx, &locks).await?;

    let prior = if plan.effect {
        let row: Option<(String, Value)> =
            sqlx::query_as("SELECT method, reply FROM sim_effects WHERE idempotency_key = $1")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| store_error(&e))?;
        row.map(|(method, reply)| (method, reply_from_json(&reply)))
    } else {
        None
    };
    let transient_given = if plan.transient {
        let given: Option<i32> =
            sqlx::query_scalar("SELECT failures_seen FROM sim_transient WHERE resource_id = $1")
                .bind(resource_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| store_error(&e))?;
        given.map_or(0, |n| u32::try_from(n).unwrap_or(0))
    } else {
        0
    };
    let object = match plan.object_id {
        Some(id) => load_object(&mut tx, id).await?,
        None => None,
    };
    let tenant = match &plan.create_tenant {
        Some(tenant) => load_tenant(&mut tx, tenant, now).await?,
        None => TenantLoad::default(),
    };
    let parent = match plan.parent_id {
        Some(id) => load_object(&mut tx, id).await?,
        None => None,
    };
    let attached = match plan.object_id {
        Some(id) if plan.attachments => load_attached(&mut tx, id, now).await?,
        _ => Vec::new(),
    };

    let loaded = Loaded {
        now,
        at: later(now, config.transition_delay),
        prior,
        transient_given,
        object,
        tenant,
        parent,
        attached,
    };
    let outcome = decide(config, plan, call, loaded);
    write(&mut tx, call, &outcome)
        .await
        .map_err(|e| store_error(&e))?;
    tx.commit().await.map_err(|e| store_error(&e))?;
    Ok(outcome)
}

/// A `sim_objects` row: kind, tenant, runtime_state, next_state, next_at,
/// attributes, in_flight, attached_to.
type ObjectRow = (
    String,
    String,
    String,
    Option<String>,
    Option<Time>,
    Value,
    bool,
    Option<String>,
);

async fn load_object(
    conn: &mut PgConnection,
    backend_id: &str,
) -> Result<Option<Object<Time>>, BackendError> {
    let row: Option<ObjectRow> = sqlx::query_as(
        "SELECT kind, tenant, runtime_state, next_state, next_at, attributes, in_flight, \
         attached_to FROM sim_objects WHERE backend_id = $1",
    )
    .bind(backend_id)
    .fetch_optional(conn)
    .await
    .map_err(|e| store_error(&e))?;
    let Some((kind, tenant, state, next_state, next_at, attributes, in_flight, attached_to)) = row
    else {
        return Ok(None);
    };
    let kind = Kind::from_noun(&kind)
        .ok_or_else(|| corrupt(&format!("object {backend_id}: kind {kind}")))?;
    let state = runtime_state(&state)
        .ok_or_else(|| corrupt(&format!("object {backend_id}: runtime state {state}")))?;
    let pending = match (next_state, next_at) {
        (None, None) => None,
        (Some(next), Some(at)) if next == GONE => Some((Next::Gone, at)),
        (Some(next), Some(at)) => {
            let next = runtime_state(&next)
                .ok_or_else(|| corrupt(&format!("object {backend_id}: next state {next}")))?;
            Some((Next::To(next), at))
        }
        _ => return Err(corrupt(&format!("object {backend_id}: half a transition"))),
    };
    Ok(Some(Object {
        kind,
        tenant,
        attributes,
        state,
        pending,
        building: in_flight,
        attached_to,
    }))
}

/// The objects attached to `instance` at `now`, by backend id (sorted).
async fn load_attached(
    conn: &mut PgConnection,
    instance: &str,
    now: Time,
) -> Result<Vec<(String, Kind)>, BackendError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT backend_id, kind FROM sim_objects WHERE attached_to = $1 \
         AND NOT (next_state IS NOT DISTINCT FROM 'gone' AND next_at <= $2) ORDER BY backend_id",
    )
    .bind(instance)
    .bind(now)
    .fetch_all(conn)
    .await
    .map_err(|e| store_error(&e))?;
    rows.into_iter()
        .map(|(id, kind)| match Kind::from_noun(&kind) {
            Some(kind) => Ok((id, kind)),
            None => Err(corrupt(&format!("object {id}: kind {kind}"))),
        })
        .collect()
}

/// The tenant's live objects and in-flight creations at `now` (objects
/// whose deletion is due are gone, whether or not a call removed them yet).
async fn load_tenant(
    conn: &mut PgConnection,
    tenant: &str,
    now: Time,
) -> Result<TenantLoad, BackendError> {
    let (owned, in_flight): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE in_flight) FROM sim_objects \
         WHERE tenant = $1 AND NOT (next_state IS NOT DISTINCT FROM 'gone' AND next_at <= $2)",
    )
    .bind(tenant)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(|e| store_error(&e))?;
    Ok(TenantLoad {
        owned: usize::try_from(owned).unwrap_or(usize::MAX),
        in_flight: usize::try_from(in_flight).unwrap_or(usize::MAX),
    })
}

async fn write(
    conn: &mut PgConnection,
    call: &BackendCall,
    outcome: &Outcome<Time>,
) -> sqlx::Result<()> {
    if let Some(given) = outcome.transient_given {
        sqlx::query(
            "INSERT INTO sim_transient (resource_id, failures_seen) VALUES ($1, $2) \
             ON CONFLICT (resource_id) DO UPDATE SET failures_seen = EXCLUDED.failures_seen",
        )
        .bind(call.resource.id)
        .bind(i32::try_from(given).unwrap_or(i32::MAX))
        .execute(&mut *conn)
        .await?;
    }
    if let ObjectWrite::Remove(id) = &outcome.object {
        sqlx::query("DELETE FROM sim_objects WHERE backend_id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    let object = match &outcome.object {
        ObjectWrite::Put(id, object) => Some((id, object)),
        ObjectWrite::Keep | ObjectWrite::Remove(_) => None,
    };
    if object.is_none() && outcome.effect.is_none() && outcome.created.is_none() {
        return Ok(());
    }
    let (next_state, next_at) = match object.and_then(|(_, o)| o.pending) {
        None => (None, None),
        Some((Next::Gone, at)) => (Some(GONE), Some(at)),
        Some((Next::To(state), at)) => (Some(state), Some(at)),
    };
    // The object, the effect and the tenant's count in one statement; each
    // part writes nothing when its id ($1, $10, $13) is null. The key's
    // lock makes an effect's conflict impossible unless the rules replayed
    // wrongly; if it ever happens, it is counted, not hidden.
    sqlx::query(
        "WITH object AS (
             INSERT INTO sim_objects
                 (backend_id, kind, tenant, runtime_state, next_state, next_at, attributes,
                  in_flight, attached_to)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 WHERE $1::text IS NOT NULL
             ON CONFLICT (backend_id) DO UPDATE SET
                 runtime_state = EXCLUDED.runtime_state, next_state = EXCLUDED.next_state,
                 next_at = EXCLUDED.next_at, attributes = EXCLUDED.attributes,
                 in_flight = EXCLUDED.in_flight, attached_to = EXCLUDED.attached_to,
                 updated_at = now()
         ), effect AS (
             INSERT INTO sim_effects (idempotency_key, method, resource_id, reply, applied)
             SELECT $10, $11, $12, $15, 1 WHERE $10::uuid IS NOT NULL
             ON CONFLICT (idempotency_key) DO UPDATE SET applied = sim_effects.applied + 1
         ), tenant AS (
             INSERT INTO sim_tenants (tenant, max_in_flight)
             SELECT $13, $14 WHERE $13::text IS NOT NULL
             ON CONFLICT (tenant) DO UPDATE
             SET max_in_flight = GREATEST(sim_tenants.max_in_flight, EXCLUDED.max_in_flight)
         )
         SELECT 1",
    )
    .bind(object.map(|(id, _)| id))
    .bind(object.map(|(_, o)| o.kind.noun()))
    .bind(object.map(|(_, o)| &o.tenant))
    .bind(object.map(|(_, o)| o.state))
    .bind(next_state)
    .bind(next_at)
    .bind(object.map(|(_, o)| &o.attributes))
    .bind(object.map(|(_, o)| o.building))
    .bind(object.and_then(|(_, o)| o.attached_to.as_deref()))
    .bind(outcome.effect.as_ref().map(|_| call.idempotency_key))
    .bind(outcome.effect.as_ref().map(|(method, _)| method))
    .bind(call.resource.id)
    .bind(outcome.created.as_ref().map(|c| &c.tenant))
    .bind(
        outcome
            .created
            .as_ref()
            .map(|c| i32::try_from(c.in_flight).unwrap_or(i32::MAX)),
    )
    .bind(
        outcome
            .effect
            .as_ref()
            .map(|(_, reply)| reply_to_json(reply)),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Everything the tables count, now.
pub(super) async fn stats(pool: &PgPool) -> Result<SimStats, BackendError> {
    let mut conn = pool.acquire().await.map_err(|e| store_error(&e))?;
    let by_kind: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FROM sim_objects \
         WHERE NOT (next_state IS NOT DISTINCT FROM 'gone' AND next_at <= clock_timestamp()) \
         GROUP BY kind",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| store_error(&e))?;
    let objects_by_kind: BTreeMap<String, usize> = by_kind
        .into_iter()
        .map(|(kind, n)| (kind, usize::try_from(n).unwrap_or(0)))
        .collect();
    let effects: Vec<(Uuid, i32)> =
        sqlx::query_as("SELECT idempotency_key, applied FROM sim_effects")
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| store_error(&e))?;
    let in_flight: Vec<(String, i64)> =
        sqlx::query_as("SELECT tenant, count(*) FROM sim_objects WHERE in_flight GROUP BY tenant")
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| store_error(&e))?;
    let max_in_flight: Vec<(String, i32)> =
        sqlx::query_as("SELECT tenant, max_in_flight FROM sim_tenants")
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| store_error(&e))?;
    let effects: HashMap<Uuid, u32> = effects
        .into_iter()
        .map(|(key, n)| (key, u32::try_from(n).unwrap_or(0)))
        .collect();
    Ok(SimStats {
        objects: objects_by_kind.values().sum(),
        objects_by_kind,
        total_effects: effects.values().map(|n| u64::from(*n)).sum(),
        effects,
        in_flight: in_flight
            .into_iter()
            .map(|(t, n)| (t, usize::try_from(n).unwrap_or(0)))
            .collect(),
        max_in_flight: max_in_flight
            .into_iter()
            .map(|(t, n)| (t, usize::try_from(n).unwrap_or(0)))
            .collect(),
    })
}

/// The live objects of the kind called `noun` at the database's time.
pub(super) async fn list(pool: &PgPool, noun: &str) -> Result<Vec<ListedObject>, BackendError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT backend_id FROM sim_objects
         WHERE kind = $1 AND NOT (next_state IS NOT DISTINCT FROM 'gone' AND next_at <= clock_timestamp())
         ORDER BY backend_id",
    )
    .bind(noun)
    .fetch_all(pool)
    .await
    .map_err(|e| store_error(&e))?;
    let now: Time = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await
        .map_err(|e| store_error(&e))?;
    let mut listed = Vec::with_capacity(rows.len());
    let mut conn = pool.acquire().await.map_err(|e| store_error(&e))?;
    for (backend_id,) in rows {
        if let Some(mut object) = load_object(&mut conn, &backend_id).await?
            && object.settle(now)
        {
            listed.push(super::model::listed(&backend_id, &object));
        }
    }
    Ok(listed)
}

/// Changes an object behind everyone's back: its runtime state (any pending
/// transition dropped), and attributes merged in. `false` if there is none.
pub(super) async fn tamper(
    pool: &PgPool,
    backend_id: &str,
    state: Option<&str>,
    attributes: &serde_json::Map<String, Value>,
) -> Result<bool, BackendError> {
    let done = sqlx::query(
        "UPDATE sim_objects SET
                runtime_state = coalesce($2, CASE WHEN next_at <= clock_timestamp() AND next_state <> 'gone'
                                                  THEN next_state ELSE runtime_state END),
                next_state = CASE WHEN $2::text IS NULL THEN next_state END,
                next_at = CASE WHEN $2::text IS NULL THEN next_at END,
                attributes = attributes || $3, updated_at = now()
         WHERE backend_id = $1",
    )
    .bind(backend_id)
    .bind(state)
    .bind(Value::Object(attributes.clone()))
    .execute(pool)
    .await
    .map_err(|e| store_error(&e))?;
    Ok(done.rows_affected() == 1)
}

/// Removes an object behind everyone's back; `false` if there was none.
pub(super) async fn vanish(pool: &PgPool, backend_id: &str) -> Result<bool, BackendError> {
    let done = sqlx::query("DELETE FROM sim_objects WHERE backend_id = $1")
        .bind(backend_id)
        .execute(pool)
        .await
        .map_err(|e| store_error(&e))?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;
    use sqlx::PgPool;

    use super::super::tests as scenarios;
    use super::super::tests::{call_on, pull, resource, step};
    use super::super::{Sim, SimConfig};
    use crate::backend::{Backend, BackendError};

    /// Two sims on one database, as two processes would have.
    fn pair(pool: &PgPool, config: &SimConfig) -> (Sim, Sim) {
        (
            Sim::shared(config.clone(), pool.clone()),
            Sim::shared(config.clone(), pool.clone()),
        )
    }

    async fn count(pool: &PgPool, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn two_sims_on_one_database_are_one_cloud(pool: PgPool) {
        let config = SimConfig {
            transition_delay: Duration::from_millis(300),
            ..SimConfig::default()
        };
        let (a, b) = pair(&pool, &config);
        assert!(a.is_shared());
        let mut r = resource(json!({"tenant": "t1"}));
        let reply = step(&a, "create_instance", &mut r, json!({}))
            .await
            .unwrap();
        let id = reply.backend_id.unwrap();
        assert!(id.starts_with("sim-") && id.len() == 36, "{id}");
        assert_eq!(reply.runtime_state.as_deref(), Some("BUILD"));
        assert_eq!(pull(&b, "pull_instance", &r).await, "BUILD");
        let stats = b.stats().await.unwrap();
        assert_eq!((stats.objects, stats.in_flight("t1")), (1, 1));

        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(pull(&b, "pull_instance", &r).await, "ACTIVE");
        assert_eq!(a.stats().await.unwrap().in_flight("t1"), 0);

        let reply = step(&b, "delete_instance", &mut r, json!({}))
            .await
            .unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("DELETING"));
        let check = a
            .call("is_instance_deleted", call_on(&r, json!({})))
            .await
            .unwrap();
        assert_eq!(check.done, Some(false));
        assert_eq!(a.stats().await.unwrap().objects, 1);
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(a.stats().await.unwrap().objects, 0);
        let check = a
            .call("is_instance_deleted", call_on(&r, json!({})))
            .await
            .unwrap();
        assert_eq!(check.done, Some(true));
        let err = b
            .call("pull_instance", call_on(&r, json!({})))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            BackendError::NotFound(format!("instance {id} not found"))
        );
        assert_eq!(count(&pool, "SELECT count(*) FROM sim_objects").await, 0);

        let stats = a.stats().await.unwrap();
        assert_eq!(stats.total_effects, 2);
        assert_eq!(stats.max_in_flight("t1"), 1);
        assert!(stats.repeated_effects().is_empty());
        // Per-process observations: each sim saw its own calls and effects.
        assert_eq!(
            (a.calls("create_instance"), b.calls("create_instance")),
            (1, 0)
        );
        assert_eq!((a.calls("pull_instance"), b.calls("pull_instance")), (0, 3));
        assert_eq!((a.total_effects(), b.total_effects()), (1, 1));
        assert_eq!(a.max_in_flight("t1"), 1);
        // The store-wide counts need the database, hence stats().
        assert_eq!((a.object_count(), a.in_flight("t1")), (0, 0));
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn a_create_repeated_on_another_process_applies_once(pool: PgPool) {
        let (a, b) = pair(&pool, &SimConfig::instant());
        let call = call_on(&resource(json!({"tenant": "t"})), json!({}));
        let key = call.idempotency_key;
        let first = a.call("create_instance", call.clone()).await.unwrap();
        let again = b.call("create_instance", call.clone()).await.unwrap();
        let third = a.call("create_instance", call.clone()).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(first, third);
        let stats = b.stats().await.unwrap();
        assert_eq!(stats.effects_applied(key), 1);
        assert_eq!((stats.total_effects, stats.objects), (1, 1));
        assert_eq!(stats.in_flight("t"), 1);
        assert_eq!((a.effects_applied(key), b.effects_applied(key)), (1, 0));
        let (method, applied): (String, i32) =
            sqlx::query_as("SELECT method, applied FROM sim_effects WHERE idempotency_key = $1")
                .bind(key)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!((method.as_str(), applied), ("create_instance", 1));
        // The same key on another method is a caller bug, not a replay.
        let err = b.call("delete_instance", call).await.unwrap_err();
        assert!(matches!(err, BackendError::Permanent(_)), "{err:?}");

        // A reply with attributes replays whole, too.
        let mut r = scenarios::active_instance(&a, json!({})).await;
        step(&a, "stop_instance", &mut r, json!({})).await.unwrap();
        assert_eq!(pull(&b, "pull_instance", &r).await, "SHUTOFF");
        let resize = call_on(&r, json!({"flavor": "m1.large"}));
        let first = a.call("resize_instance", resize.clone()).await.unwrap();
        let again = b.call("resize_instance", resize.clone()).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(first.status.unwrap()["flavor"], json!("m1.large"));
        assert_eq!(
            b.stats()
                .await
                .unwrap()
                .effects_applied(resize.idempotency_key),
            1
        );
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn concurrent_repeats_of_a_create_apply_once(pool: PgPool) {
        let config = SimConfig {
            latency: Duration::from_millis(2),
            ..SimConfig::instant()
        };
        let a = Arc::new(Sim::shared(config.clone(), pool.clone()));
        let b = Arc::new(Sim::shared(config, pool.clone()));
        let call = call_on(&resource(json!({"tenant": "race"})), json!({}));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let sim = if i % 2 == 0 { a.clone() } else { b.clone() };
                let call = call.clone();
                tokio::spawn(async move { sim.call("create_instance", call).await.unwrap() })
            })
            .collect();
        let mut replies = Vec::new();
        for task in tasks {
            replies.push(task.await.unwrap());
        }
        assert!(replies.iter().all(|r| *r == replies[0]));
        let stats = a.stats().await.unwrap();
        assert_eq!(stats.effects_applied(call.idempotency_key), 1);
        assert_eq!((stats.total_effects, stats.objects), (1, 1));
        assert_eq!(a.total_effects() + b.total_effects(), 1);
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn transient_failures_are_counted_across_processes(pool: PgPool) {
        let (a, b) = pair(&pool, &SimConfig::instant());
        let r = resource(json!({"sim": {"transient_failures": 2}}));
        let call = call_on(&r, json!({}));
        let err = a.call("create_instance", call.clone()).await.unwrap_err();
        let expected = "Simulated transient failure (1 of 2)".to_owned();
        assert_eq!(err, BackendError::Transient(expected));
        let err = b.call("create_instance", call.clone()).await.unwrap_err();
        let expected = "Simulated transient failure (2 of 2)".to_owned();
        assert_eq!(err, BackendError::Transient(expected));
        assert_eq!(a.stats().await.unwrap().total_effects, 0);
        let reply = a.call("create_instance", call.clone()).await.unwrap();
        assert!(reply.backend_id.is_some());
        assert_eq!(
            b.call("create_instance", call.clone()).await.unwrap(),
            reply
        );
        assert_eq!(
            b.stats()
                .await
                .unwrap()
                .effects_applied(call.idempotency_key),
            1
        );
        let given: i32 =
            sqlx::query_scalar("SELECT failures_seen FROM sim_transient WHERE resource_id = $1")
                .bind(r.id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(given, 2);
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn the_quota_counts_every_process_objects(pool: PgPool) {
        let config = SimConfig {
            tenant_capacity: 2,
            ..SimConfig::instant()
        };
        let (a, b) = pair(&pool, &config);
        let mut first = resource(json!({"tenant": "acme"}));
        step(&a, "create_instance", &mut first, json!({}))
            .await
            .unwrap();
        step(
            &b,
            "create_volume",
            &mut resource(json!({"tenant": "acme"})),
            json!({}),
        )
        .await
        .unwrap();
        let err = step(
            &a,
            "create_instance",
            &mut resource(json!({"tenant": "acme"})),
            json!({}),
        )
        .await
        .unwrap_err();
        let expected = "Quota exceeded: tenant acme already has 2 objects";
        assert_eq!(err, BackendError::Permanent(expected.to_owned()));
        // Other tenants are not affected, and a delete (seen gone at once) frees room.
        step(
            &a,
            "create_instance",
            &mut resource(json!({"tenant": "other"})),
            json!({}),
        )
        .await
        .unwrap();
        step(&b, "delete_instance", &mut first, json!({}))
            .await
            .unwrap();
        step(
            &a,
            "create_instance",
            &mut resource(json!({"tenant": "acme"})),
            json!({}),
        )
        .await
        .unwrap();
        assert_eq!(a.stats().await.unwrap().objects, 3);
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn concurrent_creates_never_exceed_the_quota(pool: PgPool) {
        let config = SimConfig {
            tenant_capacity: 5,
            ..SimConfig::default()
        };
        let a = Arc::new(Sim::shared(config.clone(), pool.clone()));
        let b = Arc::new(Sim::shared(config, pool.clone()));
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let sim = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    let call = call_on(&resource(json!({"tenant": "busy"})), json!({}));
                    sim.call("create_instance", call).await
                })
            })
            .collect();
        let mut created = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => created += 1,
                Err(err) => assert!(
                    matches!(&err, BackendError::Permanent(m) if m.starts_with("Quota exceeded")),
                    "{err:?}"
                ),
            }
        }
        assert_eq!(created, 5);
        let stats = a.stats().await.unwrap();
        assert_eq!(stats.objects, 5);
        assert_eq!(stats.in_flight("busy"), 5);
        assert_eq!(stats.max_in_flight("busy"), 5);
        assert_eq!(a.max_in_flight("busy").max(b.max_in_flight("busy")), 5);
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn an_attachment_made_by_one_process_binds_the_other(pool: PgPool) {
        let (a, b) = pair(&pool, &SimConfig::instant());
        let mut server = scenarios::active_instance(&a, json!({})).await;
        let mut v = scenarios::ready_child(&b, "volume", json!({})).await;
        let vid = v.backend_id.clone().unwrap();
        scenarios::step_under(&a, "attach_volume", &mut v, &server)
            .await
            .unwrap();
        let row: (String, Option<String>) = sqlx::query_as(
            "SELECT runtime_state, attached_to FROM sim_objects WHERE backend_id = $1",
        )
        .bind(&vid)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            (row.0.as_str(), row.1),
            ("in-use", server.backend_id.clone())
        );
        let message =
            scenarios::permanent(step(&b, "delete_instance", &mut server, json!({})).await);
        assert!(
            message.contains("instance has attached volumes"),
            "{message}"
        );
        scenarios::step_under(&b, "detach_volume", &mut v, &server)
            .await
            .unwrap();
        step(&a, "delete_volume", &mut v, json!({})).await.unwrap();
        step(&a, "delete_instance", &mut server, json!({}))
            .await
            .unwrap();
        let stats = b.stats().await.unwrap();
        assert_eq!(stats.objects, 0);
        assert!(stats.objects_by_kind.is_empty());
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn concurrent_attaches_and_a_server_delete_never_strand_a_volume(pool: PgPool) {
        let config = SimConfig {
            transition_delay: Duration::from_secs(60),
            ..SimConfig::instant()
        };
        let a = Arc::new(Sim::shared(config.clone(), pool.clone()));
        let b = Arc::new(Sim::shared(config, pool.clone()));
        // Built at once: made with the instant config, then read with the slow one.
        let instant = Sim::shared(SimConfig::instant(), pool.clone());
        let server = scenarios::active_instance(&instant, json!({})).await;
        let mut volumes = Vec::new();
        for _ in 0..4 {
            volumes.push(scenarios::ready_child(&instant, "volume", json!({})).await);
        }
        let mut tasks = Vec::new();
        for (i, v) in volumes.iter().enumerate() {
            let sim = if i % 2 == 0 { a.clone() } else { b.clone() };
            let call = scenarios::call_under(v, &server);
            tasks.push(tokio::spawn(async move {
                sim.call("attach_volume", call).await.is_ok()
            }));
        }
        let delete = call_on(&server, json!({}));
        let deleted = b.call("delete_instance", delete).await.is_ok();
        let mut attached = 0;
        for task in tasks {
            attached += usize::from(task.await.unwrap());
        }
        // Either the server is deleting and nothing got attached to it, or
        // the delete was refused because something did.
        let state = pull(&a, "pull_instance", &server).await;
        assert_eq!(deleted, attached == 0, "{attached} attached, state {state}");
        assert_eq!(state == "DELETING", deleted);
        let in_use = count(
            &pool,
            "SELECT count(*) FROM sim_objects WHERE runtime_state = 'in-use'",
        )
        .await;
        assert_eq!(in_use, i64::try_from(attached).unwrap());
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn a_lost_database_is_a_transient_error(pool: PgPool) {
        let sim = Sim::shared(SimConfig::instant(), pool.clone());
        pool.close().await;
        let err = sim
            .call("create_instance", call_on(&resource(json!({})), json!({})))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BackendError::Transient(m) if m.starts_with("sim store: ")),
            "{err:?}"
        );
        assert!(matches!(sim.stats().await, Err(BackendError::Transient(_))));
        assert_eq!(sim.calls("create_instance"), 1);
        // Unknown methods are refused before the store is asked.
        let err = sim
            .call(
                "reboot_everything",
                call_on(&resource(json!({})), json!({})),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::Permanent(_)), "{err:?}");
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn every_rule_holds_in_the_database(pool: PgPool) {
        for (name, scenario) in scenarios::SCENARIOS {
            eprintln!("scenario {name}");
            // Each rule on an empty cloud, as each runs on a new one in memory.
            sqlx::query("TRUNCATE sim_objects, sim_effects, sim_transient, sim_tenants")
                .execute(&pool)
                .await
                .unwrap();
            scenario(&Sim::shared(SimConfig::instant(), pool.clone())).await;
        }
    }
}
