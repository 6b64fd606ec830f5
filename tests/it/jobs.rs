//! Periodic jobs and queues: leader failover, pull, sweep, prune, and the
//! heavy queue keeping slow work away from regular work.

#![allow(clippy::unwrap_used, clippy::needless_pass_by_value)] // test helpers may unwrap

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::app::{Engine, fast_runner_config};
use executord::backend::sim::{Sim, SimConfig};
use executord::backend::{Backend, BackendCall, Backends, ResourceView};
use executord::catalog::Catalog;
use executord::db;
use executord::domain::{OperationState, Queue, ResourceState};
use executord::executor::{Create, Executor};
use executord::runner::RunnerConfig;
use executord::runner::scheduler::{ScheduleConfig, Scheduler};
use serde_json::{Value, json};
use sqlx::PgPool;

fn instance() -> Value {
    json!({"tenant": "acme", "flavor": "small"})
}

async fn run_job(engine: &Engine, job: &str, args: Value) -> Value {
    let mut conn = engine.pool.acquire().await.unwrap();
    assert!(
        db::jobs::enqueue_due(&mut conn, job, 0, &args)
            .await
            .unwrap()
    );
    drop(conn);
    // Run just the job (other work may be polling for minutes).
    assert_eq!(engine.step(Queue::Background, 1).await, 1);
    sqlx::query_scalar("SELECT result FROM tasks WHERE job = $1 AND state = 'succeeded' ORDER BY finished_at DESC LIMIT 1")
        .bind(job)
        .fetch_one(&engine.pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_dropped_leader_is_replaced_and_nothing_is_enqueued_twice(pool: PgPool) {
    let config = ScheduleConfig {
        pull: Some(Duration::from_millis(100)),
        sweep: Some(Duration::from_millis(100)),
        prune: None,
        tick: Duration::from_millis(50),
        ..ScheduleConfig::default()
    };
    let (a, b) = (
        Scheduler::new(pool.clone(), config.clone()),
        Scheduler::new(pool.clone(), config),
    );
    let (mut lead_a, mut lead_b) = (a.leadership(), b.leadership());
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let runs = tokio::spawn(async move { tokio::join!(a.run(stopping.clone()), b.run(stopping)) });

    let started = Instant::now();
    let leader_pid = loop {
        let (pa, pb) = (*lead_a.borrow_and_update(), *lead_b.borrow_and_update());
        match (pa, pb) {
            (Some(_), Some(_)) => panic!("two leaders at once"),
            (Some(pid), None) | (None, Some(pid)) => break pid,
            (None, None) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let a_led = lead_a.borrow().is_some();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(leader_pid)
        .execute(&pool)
        .await
        .unwrap();

    let started = Instant::now();
    loop {
        let other = if a_led {
            *lead_b.borrow()
        } else {
            *lead_a.borrow()
        };
        if other.is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "nobody took over"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    runs.await.unwrap();

    // No runner ran the jobs, so each stayed pending: one task per job, however many ticks and leaders.
    let per_job: Vec<(String, i64)> = sqlx::query_as(
        "SELECT job, count(*) FROM tasks WHERE job IS NOT NULL GROUP BY job ORDER BY job",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_job, [("pull".to_owned(), 1), ("sweep".to_owned(), 1)]);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn pull_errs_a_vanished_resource_and_recovers_a_healthy_one(pool: PgPool) {
    let engine = Engine::new(pool);
    let gone = engine
        .create("instance", "gone", instance())
        .await
        .resource
        .id;
    let healed = engine
        .create("instance", "healed", instance())
        .await
        .resource
        .id;
    let fine = engine
        .create("instance", "fine", instance())
        .await
        .resource
        .id;
    engine.drain().await;

    // Someone deletes one object behind executord's back...
    let resource = engine.resource(gone).await.unwrap();
    let view = ResourceView {
        id: resource.id,
        kind: resource.kind,
        name: resource.name,
        backend_id: resource.backend_id,
        runtime_state: resource.runtime_state,
        attributes: resource.attributes,
        status: resource.status,
    };
    let call = BackendCall {
        idempotency_key: uuid::Uuid::new_v4(),
        resource: view,
        parent: None,
        params: json!({}),
    };
    engine.sim.call("delete_instance", call).await.unwrap();
    // ...and another is marked erred although its object is fine.
    sqlx::query("UPDATE resources SET state = 'erred', error_message = 'flaky' WHERE id = $1")
        .bind(healed)
        .execute(&engine.pool)
        .await
        .unwrap();

    let summary = run_job(&engine, "pull", json!({"type": "job", "job": "pull"})).await;
    assert_eq!(summary["erred"], 1, "{summary}");
    assert_eq!(summary["recovered"], 1, "{summary}");

    let gone = engine.resource(gone).await.unwrap();
    assert_eq!(gone.state, ResourceState::Erred);
    assert!(gone.error_message.unwrap().contains("gone"));
    let healed = engine.resource(healed).await.unwrap();
    assert_eq!(
        (healed.state, healed.error_message),
        (ResourceState::Ok, None)
    );
    assert_eq!(
        engine.resource(fine).await.unwrap().state,
        ResourceState::Ok
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn sweep_errs_a_stranded_resource_and_leaves_live_operations_alone(pool: PgPool) {
    let slow = SimConfig {
        transition_delay: Duration::from_secs(600),
        ..SimConfig::instant()
    };
    let engine = Engine::with(pool, slow, None, fast_runner_config());
    let stranded = engine
        .create("volume", "stranded", json!({"tenant": "a", "size_gb": 1}))
        .await;
    let live = engine
        .create("volume", "live", json!({"tenant": "a", "size_gb": 1}))
        .await;
    // Run both to their polls (the objects take ten minutes to build).
    for _ in 0..3 {
        engine.step(Queue::Regular, 10).await;
    }
    // A restored backup, say: the first operation's steps are gone though it is "running".
    sqlx::query("DELETE FROM tasks WHERE operation_id = $1")
        .bind(stranded.operation.id)
        .execute(&engine.pool)
        .await
        .unwrap();

    let summary = run_job(&engine, "sweep", json!({"type": "job", "job": "sweep"})).await;
    assert_eq!(summary["swept"], 1, "{summary}");
    let resource = engine.resource(stranded.resource.id).await.unwrap();
    assert_eq!(resource.state, ResourceState::Erred);
    assert!(
        resource
            .error_message
            .unwrap()
            .contains("has no step left to run")
    );
    assert_eq!(
        engine.operation(stranded.operation.id).await.state,
        OperationState::Failed
    );
    assert_eq!(
        engine.resource(live.resource.id).await.unwrap().state,
        ResourceState::Creating
    );
    assert_eq!(
        engine.operation(live.operation.id).await.state,
        OperationState::Running
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn prune_deletes_old_finished_history_and_keeps_unfinished_work(pool: PgPool) {
    let engine = Engine::new(pool);
    let old = engine.create("instance", "old", instance()).await;
    engine.drain().await;
    let recent = engine.create("instance", "recent", instance()).await;
    engine.drain().await;
    let pending = engine.create("instance", "pending", instance()).await;
    sqlx::query("UPDATE operations SET finished_at = now() - interval '8 days' WHERE id = $1")
        .bind(old.operation.id)
        .execute(&engine.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE operations SET created_at = now() - interval '30 days' WHERE id = $1")
        .bind(pending.operation.id)
        .execute(&engine.pool)
        .await
        .unwrap();
    let old_events: i64 = sqlx::query_scalar(
        "WITH aged AS (
             UPDATE resource_events SET created_at = now() - interval '8 days'
             WHERE resource_id = $1 RETURNING 1
         ) SELECT count(*) FROM aged",
    )
    .bind(old.resource.id)
    .fetch_one(&engine.pool)
    .await
    .unwrap();
    assert!(old_events >= 2, "created, then at least one transition");

    let week = 7 * 24 * 3600;
    let summary = run_job(
        &engine,
        "prune",
        json!({"type": "job", "job": "prune", "retention_s": week}),
    )
    .await;
    assert_eq!(summary["operations"], 1, "{summary}");
    assert_eq!(summary["resource_events"], old_events, "{summary}");
    let events_left: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT DISTINCT resource_id FROM resource_events ORDER BY 1")
            .fetch_all(&engine.pool)
            .await
            .unwrap();
    assert_eq!(
        events_left,
        [recent.resource.id, pending.resource.id],
        "only the aged history went"
    );
    let left: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM operations ORDER BY id")
        .fetch_all(&engine.pool)
        .await
        .unwrap();
    assert_eq!(left, [recent.operation.id, pending.operation.id]);
    let pending_tasks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tasks WHERE operation_id = $1")
            .bind(pending.operation.id)
            .fetch_one(&engine.pool)
            .await
            .unwrap();
    assert_eq!(pending_tasks, 4);
}

const QUEUES: &str = r#"
[kinds.big]
backend = "slow"
queue = "heavy"
schema = { type = "object", properties = { tenant = { type = "string" } } }
create = [{ type = "backend_method", method = "create_volume" }]
[kinds.small]
backend = "fast"
schema = { type = "object", properties = { tenant = { type = "string" } } }
create = [{ type = "backend_method", method = "create_volume" }]
"#;

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn fifty_slow_heavy_operations_never_delay_a_regular_one(pool: PgPool) {
    let slow = Arc::new(Sim::new(SimConfig {
        latency: Duration::from_secs(2),
        ..SimConfig::instant()
    }));
    let backends = Backends::new()
        .with("slow", slow.clone())
        .with("fast", Arc::new(Sim::new(SimConfig::instant())));
    let catalog = Arc::new(Catalog::parse(QUEUES, &backends).unwrap());
    let ctx = executord::tasks::TaskContext {
        pool: pool.clone(),
        catalog: catalog.clone(),
        backends,
        backend_timeout: Duration::from_secs(10),
        retry_base: Duration::from_millis(10),
    };
    let config = RunnerConfig {
        regular: 2,
        heavy: 2,
        ..fast_runner_config()
    };
    let runner = executord::runner::Runner::new(ctx, config, executord::events::Events::new());
    let create = |kind: &'static str, name: String| {
        let (catalog, pool) = (catalog.clone(), pool.clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            let applied = Create::parse(&catalog, kind, &name, json!({"tenant": "t"}))
                .unwrap()
                .apply(&mut tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            applied
        }
    };
    for i in 0..50 {
        let big = create("big", format!("big-{i}")).await;
        assert_eq!(
            db::tasks::list_for_operation(&mut pool.acquire().await.unwrap(), big.operation.id)
                .await
                .unwrap()[0]
                .queue,
            Queue::Heavy
        );
    }
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(runner.run(vec![Queue::Regular, Queue::Heavy], stopping));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let small = create("small", "small-1".into()).await;
    loop {
        let state: String = sqlx::query_scalar("SELECT state FROM operations WHERE id = $1")
            .bind(small.operation.id)
            .fetch_one(&pool)
            .await
            .unwrap();
        if state == "succeeded" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the regular operation waited behind heavy work"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let heavy_done: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM operations WHERE resource_kind = 'big' AND state = 'succeeded'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        heavy_done < 50,
        "heavy work was still queued when the regular operation finished"
    );
    stop.send(true).unwrap();
    running.await.unwrap();
}
