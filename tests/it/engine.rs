//! The durable executor engine against real Postgres: executors, chains,
//! failures, leases, races and the throttle.

#![allow(clippy::unwrap_used, clippy::needless_pass_by_value)] // test helpers may unwrap

use std::time::Duration;

use crate::support::app::{Engine, fast_runner_config};
use executord::backend::sim::SimConfig;
use executord::db;
use executord::domain::{OperationState, Queue, ResourceState, TaskState};
use executord::executor::{Action, Create, Delete, Executor, ExecutorError, Update};
use executord::runner::{Recorded, RunnerConfig};
use executord::tasks::StepOutcome;
use serde_json::json;
use sqlx::PgPool;

fn instance(tenant: &str) -> serde_json::Value {
    json!({"tenant": tenant, "flavor": "small", "image": "debian-12"})
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_rolled_back_apply_leaves_no_operation_and_no_task(pool: PgPool) {
    let engine = Engine::new(pool);
    let create = Create::parse(&engine.catalog, "instance", "web-1", instance("acme")).unwrap();
    let mut tx = engine.pool.begin().await.unwrap();
    create.apply(&mut tx).await.unwrap();
    tx.rollback().await.unwrap();

    assert_eq!(engine.count("resources").await, 0);
    assert_eq!(engine.count("operations").await, 0);
    assert_eq!(engine.count("tasks").await, 0);
    assert_eq!(engine.drain().await, 0);
    assert_eq!(engine.sim.total_effects(), 0);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn create_runs_its_chain_to_ok_with_backend_id_and_runtime_state(pool: PgPool) {
    let engine = Engine::new(pool);
    let applied = engine.create("instance", "web-1", instance("acme")).await;
    assert_eq!(applied.resource.state, ResourceState::CreationScheduled);
    assert_eq!(applied.operation.state, OperationState::Scheduled);
    let tasks = engine.tasks(applied.operation.id).await;
    let types: Vec<&str> = tasks.iter().map(|t| t.task_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "state_transition",
            "throttle",
            "backend_method",
            "poll_runtime_state"
        ]
    );
    assert_eq!(tasks[0].state, TaskState::Ready);
    assert!(tasks[1..].iter().all(|t| t.state == TaskState::Waiting));

    engine.drain().await;

    let resource = engine.resource(applied.resource.id).await.unwrap();
    assert_eq!(resource.state, ResourceState::Ok);
    assert_eq!(resource.runtime_state.as_deref(), Some("ACTIVE"));
    assert!(resource.backend_id.as_deref().unwrap().starts_with("sim-"));
    assert_eq!(resource.current_operation_id, None);
    let operation = engine.operation(applied.operation.id).await;
    assert_eq!(operation.state, OperationState::Succeeded);
    assert!(operation.finished_at.is_some());
    assert!(
        engine
            .tasks(operation.id)
            .await
            .iter()
            .all(|t| t.state == TaskState::Succeeded)
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn update_action_and_delete_drive_the_resource_through_their_states(pool: PgPool) {
    let engine = Engine::new(pool);
    let id = engine
        .create("instance", "web-1", instance("acme"))
        .await
        .resource
        .id;
    engine.drain().await;

    let update = Update::new(&engine.catalog, id, Some("web-2".into()), None, None);
    let applied = engine.apply(update).await.unwrap();
    assert_eq!(applied.resource.state, ResourceState::UpdateScheduled);
    assert_eq!(applied.resource.name, "web-2");
    engine.drain().await;
    assert_eq!(engine.resource(id).await.unwrap().state, ResourceState::Ok);
    assert_eq!(engine.sim.calls("update_instance"), 1);

    let stop = Action::new(&engine.catalog, id, "stop".into(), json!({}), None);
    let applied = engine.apply(stop).await.unwrap();
    assert_eq!(applied.resource.action.as_deref(), Some("stop"));
    engine.drain().await;
    let resource = engine.resource(id).await.unwrap();
    assert_eq!(
        (resource.state, resource.runtime_state.as_deref()),
        (ResourceState::Ok, Some("SHUTOFF"))
    );
    assert_eq!(resource.action, None);

    let resize = Action::new(
        &engine.catalog,
        id,
        "resize".into(),
        json!({"flavor": "large"}),
        None,
    );
    engine.apply(resize).await.unwrap();
    engine.drain().await;
    let resource = engine.resource(id).await.unwrap();
    assert_eq!(resource.status["flavor"], "large", "the backend's word");
    assert_eq!(resource.attributes["flavor"], "small", "the user's");
    assert_eq!(resource.runtime_state.as_deref(), Some("SHUTOFF"));

    let delete = engine
        .apply(Delete::new(&engine.catalog, id, None))
        .await
        .unwrap();
    assert_eq!(delete.resource.state, ResourceState::DeletionScheduled);
    engine.drain().await;
    assert!(
        engine.resource(id).await.is_none(),
        "a deleted resource's row is gone"
    );
    let operation = engine.operation(delete.operation.id).await;
    assert_eq!(
        operation.state,
        OperationState::Succeeded,
        "the operation record stays"
    );
    assert_eq!(engine.sim.object_count(), 0);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_permanent_backend_failure_errs_the_resource_with_the_backends_message(pool: PgPool) {
    let engine = Engine::new(pool);
    let mut attributes = instance("acme");
    attributes["sim"] = json!({"fail_on": "create_instance", "message": "No valid host was found"});
    let applied = engine.create("instance", "web-1", attributes).await;
    engine.drain().await;

    let resource = engine.resource(applied.resource.id).await.unwrap();
    assert_eq!(resource.state, ResourceState::Erred);
    assert_eq!(
        resource.error_message.as_deref(),
        Some("No valid host was found")
    );
    let operation = engine.operation(applied.operation.id).await;
    assert_eq!(operation.state, OperationState::Failed);
    assert_eq!(operation.error.as_deref(), Some("No valid host was found"));
    let states: Vec<TaskState> = engine
        .tasks(operation.id)
        .await
        .iter()
        .map(|t| t.state)
        .collect();
    assert_eq!(
        states,
        [
            TaskState::Succeeded,
            TaskState::Succeeded,
            TaskState::Failed,
            TaskState::Cancelled
        ]
    );
    assert_eq!(
        engine.count("throttle_slots").await,
        0,
        "the slot is freed when the operation ends"
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_runtime_error_while_building_errs_the_resource(pool: PgPool) {
    let engine = Engine::new(pool);
    let mut attributes = instance("acme");
    attributes["sim"] = json!({"runtime_error": true});
    let applied = engine.create("instance", "web-1", attributes).await;
    engine.drain().await;
    let resource = engine.resource(applied.resource.id).await.unwrap();
    assert_eq!(resource.state, ResourceState::Erred);
    assert_eq!(resource.runtime_state.as_deref(), Some("ERROR"));
    assert!(resource.error_message.unwrap().contains("ERROR"));
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn transient_failures_are_retried_and_succeed(pool: PgPool) {
    let engine = Engine::new(pool);
    let mut attributes = instance("acme");
    attributes["sim"] = json!({"transient_failures": 2});
    let applied = engine.create("instance", "web-1", attributes).await;
    engine.drain().await;

    assert_eq!(
        engine.resource(applied.resource.id).await.unwrap().state,
        ResourceState::Ok
    );
    let create_step = &engine.tasks(applied.operation.id).await[2];
    assert_eq!(create_step.attempts, 3);
    assert!(
        create_step
            .last_error
            .as_deref()
            .unwrap()
            .contains("transient")
    );
    assert_eq!(engine.sim.effects_applied(create_step.id), 1);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn transient_failures_past_max_attempts_fail_the_operation(pool: PgPool) {
    let engine = Engine::new(pool);
    let mut attributes = instance("acme");
    attributes["sim"] = json!({"transient_failures": 50});
    let applied = engine.create("instance", "web-1", attributes).await;
    engine.drain().await;
    let resource = engine.resource(applied.resource.id).await.unwrap();
    assert_eq!(resource.state, ResourceState::Erred);
    assert!(
        resource
            .error_message
            .unwrap()
            .contains("transient failure")
    );
    assert_eq!(engine.tasks(applied.operation.id).await[2].attempts, 5);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_task_whose_worker_vanished_is_run_again_and_the_late_completion_is_refused(
    pool: PgPool,
) {
    let engine = Engine::new(pool);
    let applied = engine.create("instance", "web-1", instance("acme")).await;
    // A runner claims the first step with a short lease, then vanishes.
    let claimed = db::tasks::claim(&engine.pool, Queue::Regular, 1, 200, "vanished")
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let lost = &claimed[0].task;
    tokio::time::sleep(Duration::from_millis(300)).await;

    engine.drain().await;

    let resource = engine.resource(applied.resource.id).await.unwrap();
    assert_eq!(resource.state, ResourceState::Ok);
    let first = &engine.tasks(applied.operation.id).await[0];
    assert_eq!(
        first.attempts, 2,
        "run once by the vanished runner, once more after its lease expired"
    );
    assert_ne!(first.worker.as_deref(), Some("vanished"));
    let late = executord::runner::record::record(
        &engine.pool,
        &engine.catalog,
        lost.id,
        lost.lease_token.unwrap(),
        StepOutcome::Fail("late".into()).into(),
    )
    .await
    .unwrap();
    assert_eq!(late, Recorded::Fenced);
    assert_eq!(
        engine.resource(applied.resource.id).await.unwrap().state,
        ResourceState::Ok
    );
}

/// The claimed step of operation `op`.
fn held_step(claimed: &[db::tasks::Claimed], op: uuid::Uuid) -> &db::tasks::Task {
    &claimed
        .iter()
        .find(|c| c.task.operation_id == Some(op))
        .unwrap()
        .task
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn what_backends_report_in_one_batch_lands_on_each_resource(pool: PgPool) {
    use executord::backend::BackendReply;
    use executord::runner::record::{self, Item};

    let engine = Engine::new(pool);
    let a = engine.create("instance", "a", instance("ta")).await;
    let b = engine.create("instance", "b", instance("tb")).await;
    let claimed = db::tasks::claim(&engine.pool, Queue::Regular, 2, 5000, "batch")
        .await
        .unwrap();
    let held = |op| held_step(&claimed, op);
    let status = json!({"ip": "10.0.0.7"}).as_object().cloned();
    let items = [
        Item {
            task_id: held(a.operation.id).id,
            token: held(a.operation.id).lease_token.unwrap(),
            outcome: StepOutcome::Done(BackendReply {
                backend_id: Some("vm-a".into()),
                status,
                ..BackendReply::default()
            })
            .into(),
            go_on: false,
        },
        Item {
            task_id: held(b.operation.id).id,
            token: held(b.operation.id).lease_token.unwrap(),
            outcome: StepOutcome::Poll {
                reply: BackendReply {
                    runtime_state: Some("BUILD".into()),
                    ..BackendReply::default()
                },
                delay: Duration::from_secs(60),
                status: "waiting for ACTIVE".into(),
            }
            .into(),
            go_on: false,
        },
    ];
    let recording = record::record_batch(
        &mut engine.pool.acquire().await.unwrap(),
        &engine.catalog,
        &items,
        None,
    )
    .await
    .unwrap();
    assert!(recording.results.iter().all(|r| r.0 == Recorded::Applied));

    let ra = engine.resource(a.resource.id).await.unwrap();
    assert_eq!(ra.backend_id.as_deref(), Some("vm-a"));
    assert_eq!(ra.runtime_state, None);
    assert_eq!(ra.status["ip"], "10.0.0.7", "merged into the status");
    assert_eq!(
        ra.attributes, a.resource.attributes,
        "the attributes are the user's"
    );
    assert_eq!(ra.version, a.resource.version + 1);
    let rb = engine.resource(b.resource.id).await.unwrap();
    assert_eq!(rb.runtime_state.as_deref(), Some("BUILD"));
    assert_eq!(rb.backend_id, None);
    assert_eq!(rb.status, json!({}), "nothing to merge");
    assert_eq!(rb.version, b.resource.version + 1);
}

/// The throttle scope `name` of the service running open (no tenant).
fn open_scope(name: &str) -> executord::db::throttle::Scope {
    executord::db::throttle::Scope {
        tenant: String::new(),
        name: name.to_owned(),
    }
}

/// A held step's outcome, not to go on.
fn outcome_of(task: &db::tasks::Claimed, outcome: StepOutcome) -> executord::runner::record::Item {
    executord::runner::record::Item {
        task_id: task.task.id,
        token: task.task.lease_token.unwrap(),
        outcome: outcome.into(),
        go_on: false,
    }
}

/// Plays another process's transaction that holds scope `first` and will
/// want `second`: holds `first`, starts `work`, and once `work` waits for
/// `first` says whether `second` is free (whether `work` waits without
/// holding it: if not, the two would deadlock). Then lets `work` finish.
async fn waits_holding_nothing<T: Send + 'static>(
    pool: &PgPool,
    first: &str,
    second: &str,
    work: impl Future<Output = T> + Send + 'static,
) -> (bool, T) {
    let lock = "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))";
    let key = |name: &str| open_scope(name).key();
    let mut other = pool.begin().await.unwrap();
    let got: bool = sqlx::query_scalar(lock)
        .bind(key(first))
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(got);
    let work = tokio::spawn(work);
    let mut waits = 0;
    for _ in 0..200 {
        waits = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waits > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(waits, 1, "the work waits for scope {first}");
    let free: bool = sqlx::query_scalar(lock)
        .bind(key(second))
        .fetch_one(&mut *other)
        .await
        .unwrap();
    other.commit().await.unwrap();
    (free, work.await.unwrap())
}

/// Creates an instance and records its first step (not going on) as a
/// throttle of `scope` with one slot: it takes the slot if it is free, and
/// waits in line if not.
async fn throttled(engine: &Engine, name: &str, scope: &str) -> uuid::Uuid {
    use executord::runner::record;

    let created = engine.create("instance", name, instance("acme")).await;
    let claimed = db::tasks::claim(&engine.pool, Queue::Regular, 5, 5000, "w")
        .await
        .unwrap();
    let mine = claimed
        .iter()
        .find(|c| c.task.operation_id == Some(created.operation.id))
        .unwrap();
    let throttle = StepOutcome::Throttle {
        scope: open_scope(scope),
        limit: 1,
    };
    let mut conn = engine.pool.acquire().await.unwrap();
    let taken = record::record_batch(
        &mut conn,
        &engine.catalog,
        &[outcome_of(mine, throttle)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(taken.results[0].0, Recorded::Applied);
    created.operation.id
}

/// Fails the operations `ids` together in one transaction, as a claim or
/// the API ends operations (nothing locked beforehand).
async fn fail_together(
    conn: &mut sqlx::PgConnection,
    catalog: &executord::catalog::Catalog,
    ids: &[uuid::Uuid],
) -> executord::lifecycle::Finished {
    let mut operations = Vec::new();
    for &id in ids {
        operations.push(db::operations::get(conn, id).await.unwrap().unwrap());
    }
    let endings: Vec<_> = operations
        .iter()
        .map(|operation| executord::lifecycle::Ending::Failed {
            operation,
            error: "boom",
            task_id: None,
        })
        .collect();
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    let finished = executord::lifecycle::finish(&mut tx, catalog, &endings)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    finished
}

/// The scope, operation and `held` of every throttle slot.
async fn slots(pool: &PgPool) -> Vec<(String, uuid::Uuid, bool)> {
    sqlx::query_as("SELECT scope, operation_id, held FROM throttle_slots ORDER BY scope")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_batch_locks_the_throttle_scopes_it_touches_in_name_order(pool: PgPool) {
    // A batch that takes a slot of "b" and ends an operation holding one of
    // "a" (in that order) waits for "a" without holding "b".
    use executord::runner::record;

    let engine = Engine::new(pool);
    let first = throttled(&engine, "one", "a").await;
    let second = engine.create("instance", "two", instance("acme")).await;
    let claimed = db::tasks::claim(&engine.pool, Queue::Regular, 5, 5000, "w")
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let of = |id| {
        claimed
            .iter()
            .find(|c| c.task.operation_id == Some(id))
            .unwrap()
    };
    let throttle = StepOutcome::Throttle {
        scope: open_scope("b"),
        limit: 1,
    };
    let items = [
        outcome_of(of(second.operation.id), throttle),
        outcome_of(of(first), StepOutcome::Fail("boom".into())),
    ];
    let (mut conn, catalog) = (engine.pool.acquire().await.unwrap(), engine.catalog.clone());
    let batch = async move {
        record::record_batch(&mut conn, &catalog, &items, None)
            .await
            .unwrap()
    };

    let (free, recording) = waits_holding_nothing(&engine.pool, "a", "b", batch).await;
    assert!(
        free,
        "the batch holds no scope while it waits for the first one"
    );
    assert!(recording.results.iter().all(|r| r.0 == Recorded::Applied));
    assert_eq!(engine.operation(first).await.state, OperationState::Failed);
    let b = open_scope("b").key();
    assert_eq!(slots(&engine.pool).await, [(b, second.operation.id, true)]);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_batch_that_takes_a_slot_locks_its_scope_first(pool: PgPool) {
    // Another process decides about scope "b": the batch's throttle of "b"
    // waits for it to commit, and then takes the slot it left free.
    let engine = Engine::new(pool);
    let created = engine.create("instance", "one", instance("acme")).await;
    let claimed = db::tasks::claim(&engine.pool, Queue::Regular, 5, 5000, "w")
        .await
        .unwrap();
    let throttle = StepOutcome::Throttle {
        scope: open_scope("b"),
        limit: 1,
    };
    let items = [outcome_of(&claimed[0], throttle)];
    let (mut conn, catalog) = (engine.pool.acquire().await.unwrap(), engine.catalog.clone());
    let batch = async move {
        executord::runner::record::record_batch(&mut conn, &catalog, &items, None)
            .await
            .unwrap()
    };

    let (_, recording) = waits_holding_nothing(&engine.pool, "b", "c", batch).await;
    assert_eq!(recording.results[0].0, Recorded::Applied);
    let b = open_scope("b").key();
    assert_eq!(slots(&engine.pool).await, [(b, created.operation.id, true)]);
}

/// A kind whose create chain ends in a state transition after its backend
/// call, so a batch that records the call goes on to end the operation in
/// the same transaction.
const ENDS_IN_A_TRANSITION: &str = r#"
[kinds.tail]
backend = "sim"
schema = { type = "object" }
create = [
  { type = "backend_method", method = "create_instance" },
  { type = "state_transition", transition = "set_ok" },
]
"#;

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_batch_frees_the_slots_of_all_it_ended_at_once(pool: PgPool) {
    // One operation (slot of "b") fails with the batch's outcomes; the
    // other (slot of "a") ends in the state transition the batch goes on
    // to. Freed at each ending, "b" would be locked before "a".
    use executord::runner::record::{self, Continue};

    let catalog = executord::catalog::DEFAULT_CATALOG.to_owned() + ENDS_IN_A_TRANSITION;
    let engine = Engine::with(
        pool,
        SimConfig::instant(),
        Some(&catalog),
        fast_runner_config(),
    );
    let y = throttled(&engine, "y", "b").await;
    let x = engine.create("tail", "x", json!({})).await.operation.id;
    let claimed = db::tasks::claim(&engine.pool, Queue::Regular, 5, 5000, "w")
        .await
        .unwrap();
    let of = |claimed: &[db::tasks::Claimed], id| {
        claimed
            .iter()
            .find(|c| c.task.operation_id == Some(id))
            .unwrap()
            .clone()
    };
    let throttle = StepOutcome::Throttle {
        scope: open_scope("a"),
        limit: 1,
    };
    let mut conn = engine.pool.acquire().await.unwrap();
    let first = of(&claimed, x);
    record::record_batch(
        &mut conn,
        &engine.catalog,
        &[outcome_of(&first, throttle)],
        None,
    )
    .await
    .unwrap();
    let again = db::tasks::claim(&engine.pool, Queue::Regular, 5, 5000, "w")
        .await
        .unwrap();
    let (x_call, y_step) = (of(&again, x), of(&claimed, y));
    let mut call = outcome_of(
        &x_call,
        StepOutcome::Done(executord::backend::BackendReply::default()),
    );
    call.go_on = true;
    let items = [call, outcome_of(&y_step, StepOutcome::Fail("boom".into()))];
    let cont = Continue {
        lease_ms: 5000,
        worker: "w",
    };
    let catalog = engine.catalog.clone();
    let batch = async move {
        record::record_batch(&mut conn, &catalog, &items, Some(cont))
            .await
            .unwrap()
    };

    let (free, recording) = waits_holding_nothing(&engine.pool, "a", "b", batch).await;
    assert!(
        free,
        "the batch holds no scope while it waits for the first one"
    );
    let mut ended = recording.finished().to_vec();
    ended.sort();
    let mut both = vec![x, y];
    both.sort();
    assert_eq!(ended, both, "both ended in the batch");
    assert_eq!(slots(&engine.pool).await, []);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn operations_ending_together_hand_each_freed_slot_to_its_scopes_first_waiter(pool: PgPool) {
    let engine = Engine::new(pool);
    let one = throttled(&engine, "one", "a").await;
    let two = throttled(&engine, "two", "b").await;
    let three = throttled(&engine, "three", "a").await;
    let four = throttled(&engine, "four", "b").await;
    let five = throttled(&engine, "five", "a").await;
    let (a, b) = (open_scope("a").key(), open_scope("b").key());
    let mut conn = engine.pool.acquire().await.unwrap();
    let finished = fail_together(&mut conn, &engine.catalog, &[one, two]).await;

    assert_eq!(finished.ready, [Queue::Regular].into());
    let mut held = slots(&engine.pool).await;
    held.sort();
    let mut expected = vec![(a.clone(), three, true), (b, four, true), (a, five, false)];
    expected.sort();
    assert_eq!(held, expected);
    for (id, state) in [
        (three, TaskState::Ready),
        (four, TaskState::Ready),
        (five, TaskState::Waiting),
    ] {
        assert_eq!(engine.tasks(id).await[0].state, state, "{id}");
    }
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn operations_ending_together_free_their_slots_in_name_order(pool: PgPool) {
    // Whatever order they end in (here a claim's or the API's, which lock
    // nothing beforehand), their scopes are locked in name order.
    let engine = Engine::new(pool);
    let one = throttled(&engine, "one", "b").await;
    let two = throttled(&engine, "two", "a").await;
    let mut conn = engine.pool.acquire().await.unwrap();
    let catalog = engine.catalog.clone();
    let ending = async move {
        fail_together(&mut conn, &catalog, &[one, two])
            .await
            .operations
    };

    let (free, ended) = waits_holding_nothing(&engine.pool, "a", "b", ending).await;
    assert!(
        free,
        "the ending holds no scope while it waits for the first one"
    );
    assert_eq!(ended, [one, two]);
    assert_eq!(slots(&engine.pool).await, []);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn one_batch_records_mixed_outcomes_each_on_its_own_terms(pool: PgPool) {
    use executord::domain::Transition;
    use executord::runner::record::{self, Continue, Item};

    let engine = Engine::new(pool);
    let mut applied = Vec::new();
    for i in 0..5 {
        let tenant = format!("t{i}");
        applied.push(engine.create("instance", &tenant, instance(&tenant)).await);
    }
    let mut claimed = db::tasks::claim(&engine.pool, Queue::Regular, 5, 5000, "batch")
        .await
        .unwrap();
    assert_eq!(claimed.len(), 5);
    claimed.sort_by_key(|t| {
        applied
            .iter()
            .position(|a| Some(a.operation.id) == t.task.operation_id)
            .unwrap()
    });
    let item = |i: usize, outcome: StepOutcome, go_on: bool| Item {
        task_id: claimed[i].task.id,
        token: claimed[i].task.lease_token.unwrap(),
        outcome: outcome.into(),
        go_on,
    };
    let begin = StepOutcome::Transition(Transition::BeginCreating);
    let mut items = vec![
        item(0, begin.clone(), true),
        item(1, begin.clone(), false),
        item(2, StepOutcome::Fail("boom".into()), true),
        item(3, begin, true),
        item(4, StepOutcome::Transition(Transition::SetOk), true),
    ];
    items[3].token = uuid::Uuid::new_v4();
    let cont = Continue {
        lease_ms: 5000,
        worker: "batch",
    };
    let recording = record::record_batch(
        &mut engine.pool.acquire().await.unwrap(),
        &engine.catalog,
        &items,
        Some(cont),
    )
    .await
    .unwrap();

    let applied_or_fenced: Vec<Recorded> = recording.results.iter().map(|r| r.0).collect();
    assert_eq!(
        applied_or_fenced,
        [
            Recorded::Applied,
            Recorded::Applied,
            Recorded::Applied,
            Recorded::Fenced,
            Recorded::Applied
        ]
    );
    // Went on: the next step, a throttle, is claimed for this runner and
    // handed back (its slot is taken in a recording of its own, not here:
    // see `tasks::run_in_database`).
    let next = recording.results[0]
        .1
        .as_ref()
        .expect("the next step, claimed inline");
    assert_eq!(next.task.task_type, "throttle");
    assert_eq!(next.task.position, 1);
    assert_eq!(next.task.state, TaskState::Running);
    assert_eq!(next.task.worker.as_deref(), Some("batch"));
    // It carries what it acts on, as the same transaction left it.
    let target = &next.target.as_ref().expect("the claimed step's target").0;
    assert_eq!(target.resource.id, applied[0].resource.id);
    assert_eq!(target.resource.attributes["tenant"], "t0");
    assert_eq!(target.request, applied[0].operation.request);
    // Did not go on: the next step is ready for any runner.
    assert!(recording.results[1].1.is_none());
    assert_eq!(
        engine.tasks(applied[1].operation.id).await[1].state,
        TaskState::Ready
    );
    assert!(recording.ready.contains(&Queue::Regular));
    for (i, done) in [(0, &[0][..]), (1, &[0][..])] {
        let resource = engine.resource(applied[i].resource.id).await.unwrap();
        assert_eq!(resource.state, ResourceState::Creating);
        let tasks = engine.tasks(applied[i].operation.id).await;
        let succeeded: Vec<i32> = tasks
            .iter()
            .filter(|t| t.state == TaskState::Succeeded)
            .map(|t| t.position)
            .collect();
        assert_eq!(succeeded, done);
    }
    // Failed: the operation ends, the resource errs, the rest is cancelled.
    let failed = engine.operation(applied[2].operation.id).await;
    assert_eq!(failed.state, OperationState::Failed);
    assert_eq!(failed.error.as_deref(), Some("boom"));
    let resource = engine.resource(applied[2].resource.id).await.unwrap();
    assert_eq!(resource.state, ResourceState::Erred);
    let tasks = engine.tasks(applied[2].operation.id).await;
    assert_eq!(tasks[0].state, TaskState::Failed);
    assert!(tasks[1..].iter().all(|t| t.state == TaskState::Cancelled));
    // Fenced: untouched, still running under the real lease.
    assert_eq!(
        engine.tasks(applied[3].operation.id).await[0].state,
        TaskState::Running
    );
    let resource = engine.resource(applied[3].resource.id).await.unwrap();
    assert_eq!(resource.state, ResourceState::CreationScheduled);
    // A transition its state does not allow fails its operation, naming the state.
    let refused = engine.operation(applied[4].operation.id).await;
    assert_eq!(refused.state, OperationState::Failed);
    assert_eq!(
        refused.error.as_deref(),
        Some("set_ok is not allowed: the resource is creation_scheduled")
    );
    let mut finished = recording.finished().to_vec();
    finished.sort();
    let mut expected = vec![applied[2].operation.id, applied[4].operation.id];
    expected.sort();
    assert_eq!(finished, expected);
}

/// One claim of the regular queue by the runner `claimer`, as a claim loop makes it.
async fn claim_regular(engine: &Engine) -> executord::runner::record::Claim {
    use executord::runner::record::{self, Continue};
    let cont = Continue {
        lease_ms: 5000,
        worker: "claimer",
    };
    record::claim(
        &mut engine.pool.acquire().await.unwrap(),
        &engine.catalog,
        Queue::Regular,
        10,
        cont,
    )
    .await
    .unwrap()
}

/// A kind whose create chain is only the `begin_creating` step.
const MARKER: &str = "
[kinds.marker]
description = \"Nothing to make: begin_creating, then the success hook.\"
backend = \"sim\"
schema = { type = \"object\" }
create = []
";

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_claim_records_its_state_transitions_and_hands_on_the_first_other_step(pool: PgPool) {
    let catalog = executord::catalog::DEFAULT_CATALOG.replace("limit = 4", "limit = 1") + MARKER;
    let engine = Engine::with(
        pool,
        SimConfig::instant(),
        Some(&catalog),
        fast_runner_config(),
    );
    let a = engine.create("instance", "vm-a", instance("acme")).await;
    let b = engine.create("instance", "vm-b", instance("acme")).await;
    let m = engine.create("marker", "m", json!({})).await;
    let claim = claim_regular(&engine).await;

    assert_eq!(claim.claimed, 3);
    // The marker's chain ended in the claim: its success hook ran there.
    assert_eq!(claim.finished, [m.operation.id]);
    assert_eq!(
        engine.operation(m.operation.id).await.state,
        OperationState::Succeeded
    );
    let marker = engine.resource(m.resource.id).await.unwrap();
    assert_eq!(marker.state, ResourceState::Ok);
    // Each instance's `begin_creating` was recorded there too, and its next
    // step, a throttle, is handed on claimed: a throttle's slot is taken in
    // the recorder's transaction, not in a claim (`tasks::run_in_database`).
    let mut handed: Vec<_> = claim
        .run
        .iter()
        .map(|run| {
            assert_eq!(run.task.task_type, "throttle");
            assert_eq!(run.task.position, 1);
            assert_eq!(run.task.state, TaskState::Running);
            assert_eq!(run.task.worker.as_deref(), Some("claimer"));
            run.task.operation_id.unwrap()
        })
        .collect();
    handed.sort();
    let mut instances = vec![a.operation.id, b.operation.id];
    instances.sort();
    assert_eq!(handed, instances);
    let states = |tasks: Vec<executord::db::tasks::Task>| -> Vec<TaskState> {
        tasks.iter().map(|t| t.state).collect()
    };
    for instance in [&a, &b] {
        assert_eq!(
            states(engine.tasks(instance.operation.id).await),
            [
                TaskState::Succeeded,
                TaskState::Running,
                TaskState::Waiting,
                TaskState::Waiting
            ]
        );
        let resource = engine.resource(instance.resource.id).await.unwrap();
        assert_eq!(resource.state, ResourceState::Creating);
    }
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM throttle_slots")
            .fetch_one(&engine.pool)
            .await
            .unwrap(),
        0,
        "no slot taken in the claim"
    );
    // The rest of the way is the runner's, as for any claimed step.
    engine.drain().await;
    for op in [a.operation.id, b.operation.id] {
        assert_eq!(engine.operation(op).await.state, OperationState::Succeeded);
    }
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_claim_whose_steps_of_the_database_cannot_be_recorded_hands_them_on_as_claimed(
    pool: PgPool,
) {
    let engine = Engine::new(pool);
    let good = engine.create("instance", "good", instance("a")).await;
    let bad = engine.create("instance", "bad", instance("b")).await;
    // Any change of the resource `bad` fails, as a broken database would.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.name = 'bad' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER refuse_bad BEFORE UPDATE ON resources FOR EACH ROW EXECUTE FUNCTION refuse_bad();",
    )
    .execute(&engine.pool)
    .await
    .unwrap();
    let claim = claim_regular(&engine).await;

    // Nothing was recorded; both first steps are claimed once, to be run
    // and recorded one by one (where `bad`'s uses up its attempts).
    assert_eq!(claim.claimed, 2);
    assert!(claim.finished.is_empty());
    let mut run: Vec<(i32, String, i32)> = claim
        .run
        .iter()
        .map(|c| (c.task.position, c.task.task_type.clone(), c.task.attempts))
        .collect();
    run.sort();
    assert_eq!(
        run,
        [
            (0, "state_transition".to_owned(), 1),
            (0, "state_transition".to_owned(), 1)
        ]
    );
    for applied in [&good, &bad] {
        let resource = engine.resource(applied.resource.id).await.unwrap();
        assert_eq!(resource.state, ResourceState::CreationScheduled);
        let tasks = engine.tasks(applied.operation.id).await;
        assert_eq!(tasks[0].state, TaskState::Running);
        assert_eq!(tasks[0].attempts, 1);
    }
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn an_outcome_that_cannot_be_recorded_does_not_hold_up_its_batch(pool: PgPool) {
    use executord::backend::BackendReply;
    use executord::domain::Transition;
    use executord::runner::record::{self, Item};

    let engine = Engine::new(pool);
    let good = engine.create("instance", "good", instance("a")).await;
    let bad = engine.create("instance", "bad", instance("b")).await;
    let claimed = db::tasks::claim(&engine.pool, Queue::Regular, 2, 5000, "batch")
        .await
        .unwrap();
    let task = |op| held_step(&claimed, op);
    let items = [
        Item {
            task_id: task(good.operation.id).id,
            token: task(good.operation.id).lease_token.unwrap(),
            outcome: StepOutcome::Transition(Transition::BeginCreating).into(),
            go_on: false,
        },
        // A poll delay no timestamp can hold: PostgreSQL refuses the statement.
        Item {
            task_id: task(bad.operation.id).id,
            token: task(bad.operation.id).lease_token.unwrap(),
            outcome: StepOutcome::Poll {
                reply: BackendReply::default(),
                delay: Duration::MAX,
                status: "forever".into(),
            }
            .into(),
            go_on: false,
        },
    ];
    // Together, the batch's transaction fails and nothing of it is applied.
    assert!(
        record::record_batch(
            &mut engine.pool.acquire().await.unwrap(),
            &engine.catalog,
            &items,
            None
        )
        .await
        .is_err()
    );
    assert_eq!(
        engine.resource(good.resource.id).await.unwrap().state,
        ResourceState::CreationScheduled
    );

    let settled = record::record_all(
        &mut executord::db::Held::new(engine.pool.clone()),
        &engine.catalog,
        &items,
        None,
    )
    .await;
    assert_eq!(settled.results.len(), 2);
    assert_eq!(
        settled.results[0].as_ref().map(|r| r.0),
        Some(Recorded::Applied)
    );
    assert!(settled.results[1].is_none(), "left to its lease");
    assert_eq!(
        engine.resource(good.resource.id).await.unwrap().state,
        ResourceState::Creating
    );
    assert_eq!(
        engine.tasks(bad.operation.id).await[0].state,
        TaskState::Running
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn two_concurrent_applies_on_one_resource_give_one_winner_and_one_conflict(pool: PgPool) {
    let engine = Engine::new(pool);
    let id = engine
        .create("instance", "web-1", instance("acme"))
        .await
        .resource
        .id;
    engine.drain().await;

    let mut tx1 = engine.pool.begin().await.unwrap();
    let mut tx2 = engine.pool.begin().await.unwrap();
    let first = Action::new(&engine.catalog, id, "stop".into(), json!({}), None);
    first.apply(&mut tx1).await.unwrap();
    let second = Delete::new(&engine.catalog, id, None);
    let (commit, loser) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx1.commit().await
        },
        second.apply(&mut tx2)
    );
    commit.unwrap();
    match loser {
        Err(ExecutorError::Conflict(message)) => {
            assert!(
                message.contains("Valid states for operation: ok, erred"),
                "{message}"
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    tx2.rollback().await.unwrap();
    assert_eq!(engine.count("operations").await, 2);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_queue_s_claimers_together_never_run_more_steps_than_its_slots(pool: PgPool) {
    // Three slots, two claimers (at most two slots each per claim): the
    // claimers reserve their slots before they claim, so however they
    // interleave, at most three steps run at once and none is claimed
    // without a slot (it would be left to its lease and run again).
    let sim = SimConfig {
        latency: Duration::from_millis(40),
        ..SimConfig::instant()
    };
    let config = RunnerConfig {
        regular: 3,
        ..fast_runner_config()
    };
    let engine = Engine::with(pool, sim, None, config);
    let mut operations = Vec::new();
    for i in 0..12 {
        let tenant = format!("t{i}");
        let applied = engine
            .create("instance", &format!("vm-{i}"), instance(&tenant))
            .await;
        operations.push(applied.operation.id);
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn(engine.runner.clone().run(vec![Queue::Regular], stopped));
    let mut most = 0;
    for _ in 0..1000 {
        let running: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE state = 'running'")
            .fetch_one(&engine.pool)
            .await
            .unwrap();
        most = most.max(running);
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM operations WHERE state = 'succeeded'")
                .fetch_one(&engine.pool)
                .await
                .unwrap();
        if done == 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(true).unwrap();
    runner.await.unwrap();

    for id in operations {
        assert_eq!(engine.operation(id).await.state, OperationState::Succeeded);
        // Each step claimed once: none was abandoned to its lease.
        for task in engine.tasks(id).await {
            assert_eq!(task.attempts, 1, "{} of {id}", task.task_type);
        }
    }
    assert!(most >= 2, "steps ran side by side: {most}");
    assert!(most <= 3, "{most} steps ran at once on three slots");
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn twenty_creations_in_one_tenant_never_hold_more_than_four_slots(pool: PgPool) {
    let sim = SimConfig {
        latency: Duration::from_millis(5),
        transition_delay: Duration::from_millis(100),
        ..SimConfig::instant()
    };
    let engine = Engine::with(pool, sim, None, fast_runner_config());
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            engine
                .create("instance", &format!("vm-{i}"), instance("acme"))
                .await
                .resource
                .id,
        );
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn(engine.runner.clone().run(vec![Queue::Regular], stopped));

    let mut max_slots = 0;
    for _ in 0..400 {
        let held: i64 = sqlx::query_scalar("SELECT count(*) FROM throttle_slots WHERE held")
            .fetch_one(&engine.pool)
            .await
            .unwrap();
        max_slots = max_slots.max(held);
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM resources WHERE state = 'ok'")
            .fetch_one(&engine.pool)
            .await
            .unwrap();
        if done == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.send(true).unwrap();
    runner.await.unwrap();

    for id in ids {
        assert_eq!(engine.resource(id).await.unwrap().state, ResourceState::Ok);
    }
    assert!(max_slots <= 4, "{max_slots} slots held at once");
    assert_eq!(
        engine.sim.max_in_flight("acme"),
        4,
        "the limit is used in full, never exceeded"
    );
    assert_eq!(engine.count("throttle_slots").await, 0);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_runner_keeps_its_connections_while_busy_and_gives_them_back_when_idle(pool: PgPool) {
    let engine = Engine::with(pool, SimConfig::instant(), None, fast_runner_config());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn(engine.runner.clone().run(vec![Queue::Regular], stopped));
    let mut ids = Vec::new();
    for i in 0..10 {
        let tenant = format!("t{i}");
        ids.push(
            engine
                .create("instance", &format!("vm-{i}"), instance(&tenant))
                .await
                .resource
                .id,
        );
    }
    let held = |pool: &PgPool| pool.size() as usize - pool.num_idle();
    let mut held_busy = 0;
    for _ in 0..400 {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM resources WHERE state = 'ok'")
            .fetch_one(&engine.pool)
            .await
            .unwrap();
        held_busy = held_busy.max(held(&engine.pool));
        if done == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Idle for a second: a connection kept by the recorder or a claim loop
    // would be held at every look; a heartbeat's or the reaper's only now
    // and then.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut held_idle = usize::MAX;
    for _ in 0..20 {
        held_idle = held_idle.min(held(&engine.pool));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.send(true).unwrap();
    runner.await.unwrap();
    for id in ids {
        assert_eq!(engine.resource(id).await.unwrap().state, ResourceState::Ok);
    }
    assert!(held_busy >= 1, "nothing held while the runner worked");
    assert_eq!(held_idle, 0, "connections held by an idle runner");
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_waiting_throttle_shows_why_and_gets_the_freed_slot_in_order(pool: PgPool) {
    let catalog = executord::catalog::DEFAULT_CATALOG.replace("limit = 4", "limit = 1");
    let engine = Engine::with(
        pool,
        SimConfig::instant(),
        Some(&catalog),
        fast_runner_config(),
    );
    let first = engine.create("instance", "vm-1", instance("acme")).await;
    let second = engine.create("instance", "vm-2", instance("acme")).await;
    // Run both operations up to their throttles: the first takes the slot, the second waits.
    for _ in 0..2 {
        engine.step(Queue::Regular, 10).await;
    }
    let waiting = &engine.tasks(second.operation.id).await[1];
    assert_eq!(waiting.state, TaskState::Waiting);
    assert!(
        waiting
            .status
            .as_deref()
            .unwrap()
            .starts_with("waiting for a throttle slot: 1/1 in use for instance.tenant:acme"),
        "{:?}",
        waiting.status
    );
    engine.drain().await;
    let first_done = engine
        .operation(first.operation.id)
        .await
        .finished_at
        .unwrap();
    let second_op = engine.operation(second.operation.id).await;
    assert_eq!(second_op.state, OperationState::Succeeded);
    assert!(second_op.finished_at.unwrap() >= first_done);
}

const SLOW_AND_FAST: &str = r#"
[kinds.slow]
backend = "sim"
schema = { type = "object", properties = { tenant = { type = "string" } } }
create = [
  { type = "backend_method", method = "create_instance" },
  { type = "poll_runtime_state", method = "pull_instance", success = ["ACTIVE"], interval_ms = 2000 },
]
[kinds.fast]
backend = "fast"
schema = { type = "object", properties = { tenant = { type = "string" } } }
create = [
  { type = "backend_method", method = "create_volume" },
  { type = "poll_runtime_state", method = "pull_volume", success = ["available"], interval_ms = 10 },
]
"#;

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn polls_never_hold_a_worker_while_they_wait(pool: PgPool) {
    use executord::backend::Backends;
    use executord::backend::sim::Sim;
    use std::sync::Arc;

    let slow = Arc::new(Sim::new(SimConfig {
        transition_delay: Duration::from_secs(600),
        ..SimConfig::instant()
    }));
    let fast = Arc::new(Sim::new(SimConfig::instant()));
    let backends = Backends::new().with("sim", slow.clone()).with("fast", fast);
    let catalog = Arc::new(executord::catalog::Catalog::parse(SLOW_AND_FAST, &backends).unwrap());
    let ctx = executord::tasks::TaskContext {
        pool: pool.clone(),
        catalog: catalog.clone(),
        backends,
        backend_timeout: Duration::from_secs(5),
        retry_base: Duration::from_millis(10),
    };
    let config = RunnerConfig {
        regular: 1,
        ..fast_runner_config()
    };
    let runner = executord::runner::Runner::new(ctx, config, executord::events::Events::new());
    let apply = |kind: &'static str, name: String| {
        let catalog = catalog.clone();
        let pool = pool.clone();
        async move {
            let create = Create::parse(&catalog, kind, &name, json!({"tenant": "t"})).unwrap();
            let mut tx = pool.begin().await.unwrap();
            let applied = create.apply(&mut tx).await.unwrap();
            tx.commit().await.unwrap();
            applied
        }
    };
    for i in 0..100 {
        apply("slow", format!("slow-{i}")).await;
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(runner.run(vec![Queue::Regular], stopped));
    // Wait until every slow operation is polling.
    for _ in 0..200 {
        let polling: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tasks WHERE type = 'poll_runtime_state' AND attempts + 0 >= 0 AND status IS NOT NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if polling == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    let fast_op = apply("fast", "fast-1".into()).await;
    loop {
        let mut conn = pool.acquire().await.unwrap();
        let op = db::operations::get(&mut conn, fast_op.operation.id)
            .await
            .unwrap()
            .unwrap();
        if op.state == OperationState::Succeeded {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the fast operation waited behind the polls"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    running.await.unwrap();
    assert!(slow.calls("pull_instance") >= 100);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_stopping_runner_releases_what_it_cannot_finish_and_another_completes_it(pool: PgPool) {
    let slow = SimConfig {
        latency: Duration::from_secs(5),
        ..SimConfig::instant()
    };
    let config = RunnerConfig {
        shutdown_grace: Duration::from_millis(100),
        ..fast_runner_config()
    };
    let engine = Engine::with(pool.clone(), slow, None, config);
    let applied = engine
        .create("volume", "data", json!({"tenant": "acme", "size_gb": 1}))
        .await;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(engine.runner.clone().run(vec![Queue::Regular], stopping));
    // Wait until the slow backend call is in flight.
    loop {
        let tasks = engine.tasks(applied.operation.id).await;
        if tasks[1].state == TaskState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(3), running)
        .await
        .unwrap()
        .unwrap();

    let released = &engine.tasks(applied.operation.id).await[1];
    assert_eq!(
        released.state,
        TaskState::Ready,
        "released, not left running"
    );
    assert_eq!(released.attempts, 0, "a release gives the claim back");

    let next = Engine::new(pool);
    next.drain().await;
    assert_eq!(
        next.resource(applied.resource.id).await.unwrap().state,
        ResourceState::Ok
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_hung_backend_call_is_cut_at_its_steps_timeout_and_retried(pool: PgPool) {
    // The step's own timeout (1 s) overrides the runner's default (60 s).
    let catalog = executord::catalog::DEFAULT_CATALOG.replace(
        r#"{ type = "backend_method", method = "create_instance" }"#,
        r#"{ type = "backend_method", method = "create_instance", timeout_s = 1 }"#,
    );
    let engine = Engine::with(
        pool,
        SimConfig::instant(),
        Some(&catalog),
        fast_runner_config(),
    );
    let mut attributes = instance("acme");
    attributes["sim"] = json!({"hang_calls": 1});
    let applied = engine.create("instance", "web-1", attributes).await;
    let started = std::time::Instant::now();
    engine.drain().await;

    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        engine.resource(applied.resource.id).await.unwrap().state,
        ResourceState::Ok
    );
    let step = &engine.tasks(applied.operation.id).await[2];
    assert_eq!(step.attempts, 2);
    assert_eq!(
        step.last_error.as_deref(),
        Some("create_instance timed out after 1s")
    );
    assert_eq!(engine.sim.effects_applied(step.id), 1);
}

/// The default catalog with one throttle slot per scope, on a cloud whose
/// instances stay in BUILD, so a slot once taken stays held.
fn one_slot_per_scope(pool: PgPool) -> Engine {
    let catalog = executord::catalog::DEFAULT_CATALOG.replace("limit = 4", "limit = 1");
    let sim = SimConfig {
        transition_delay: Duration::from_secs(600),
        ..SimConfig::instant()
    };
    Engine::with(pool, sim, Some(&catalog), fast_runner_config())
}

/// Creates an instance of `owner` (the tenant of the caller's token) and runs
/// its chain up to and including its throttle; returns the throttle step.
async fn up_to_the_throttle(
    engine: &Engine,
    owner: &str,
    name: &str,
    attribute: &str,
) -> db::tasks::Task {
    let create = Create::parse(&engine.catalog, "instance", name, instance(attribute))
        .unwrap()
        .for_tenant(owner);
    let applied = engine.apply(create).await.unwrap();
    for _ in 0..2 {
        engine.step(Queue::Regular, 10).await;
    }
    let throttle = engine.tasks(applied.operation.id).await.remove(1);
    assert_eq!(throttle.task_type, "throttle");
    throttle
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_tenant_can_neither_take_nor_see_another_tenants_throttle_slots(pool: PgPool) {
    let engine = one_slot_per_scope(pool);
    // globex claims to create in acme's tenant, and takes the one slot it can.
    let intruder = up_to_the_throttle(&engine, "globex", "squat-1", "acme").await;
    assert_eq!(intruder.state, TaskState::Succeeded);

    let owner = up_to_the_throttle(&engine, "acme", "web-1", "acme").await;
    assert_eq!(
        owner.state,
        TaskState::Succeeded,
        "acme's slot is its own: {:?}",
        owner.status
    );
    let second = up_to_the_throttle(&engine, "globex", "squat-2", "acme").await;
    assert_eq!(second.state, TaskState::Waiting);
    let status = second.status.unwrap();
    assert!(
        status.starts_with("waiting for a throttle slot: 1/1 in use for"),
        "{status}"
    );
    assert!(
        status.contains("globex") && !status.contains("acme"),
        "only the caller's own scope is shown: {status}"
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn inventing_a_tenant_attribute_does_not_escape_the_owners_throttle(pool: PgPool) {
    let engine = one_slot_per_scope(pool);
    let first = up_to_the_throttle(&engine, "globex", "vm-1", "made-up-1").await;
    let second = up_to_the_throttle(&engine, "globex", "vm-2", "made-up-2").await;
    assert_eq!(
        (first.state, second.state),
        (TaskState::Succeeded, TaskState::Waiting)
    );

    // Open, with no tenants at all, the attribute still names the scope.
    let open_a = up_to_the_throttle(&engine, "", "vm-3", "made-up-1").await;
    let open_b = up_to_the_throttle(&engine, "", "vm-4", "made-up-2").await;
    assert_eq!(
        (open_a.state, open_b.state),
        (TaskState::Succeeded, TaskState::Succeeded)
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn history_keeps_time_in_order_when_a_cancel_waited_behind_the_runner(pool: PgPool) {
    let engine = Engine::new(pool);
    let applied = engine.create("instance", "web-1", instance("acme")).await;
    let op = applied.operation.id;

    // The cancel's transaction begins first, as a request's does before it
    // meets the runner's locks; the runner moves the resource meanwhile.
    let mut cancelling = engine.pool.begin().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    engine.step(Queue::Regular, 1).await;
    let claimed = db::tasks::claim(&engine.pool, Queue::Regular, 1, 5000, "test")
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the throttle step runs");
    let (_, finished) =
        executord::executor::control::cancel(&mut cancelling, &engine.catalog, op, None)
            .await
            .unwrap();
    cancelling.commit().await.unwrap();
    finished.committed();

    let mut conn = engine.pool.acquire().await.unwrap();
    let events = db::events::list_for_resource(&mut conn, applied.resource.id, None, None, 100)
        .await
        .unwrap();
    let transitions: Vec<&str> = events.iter().map(|e| e.transition.as_str()).collect();
    assert_eq!(transitions, ["create", "begin_creating", "set_erred"]);
    for pair in events.windows(2) {
        assert!(
            pair[0].created_at <= pair[1].created_at,
            "{} at {} after {} at {}",
            pair[1].transition,
            pair[1].created_at,
            pair[0].transition,
            pair[0].created_at
        );
    }
    let operation = engine.operation(op).await;
    assert!(
        operation.finished_at >= operation.started_at,
        "{operation:?}"
    );
    for task in engine.tasks(op).await {
        if let (Some(started), Some(finished)) = (task.started_at, task.finished_at) {
            assert!(finished >= started, "{task:?}");
        }
    }
}

/// What a runner announces reaches the other processes (another process's
/// hub, fed by LISTEN) without the announcer waiting for it: announcements
/// made while one is being sent go out together, one notification per
/// channel, however many claims and recordings made them.
#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn announcements_made_together_reach_other_processes_together(pool: PgPool) {
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener
        .listen_all([db::TASKS_CHANNEL, db::OPERATIONS_CHANNEL])
        .await
        .unwrap();
    let here = executord::events::Events::new();
    let other = executord::events::Events::new();
    let feed = tokio::spawn(other.clone().listen(pool.clone()));
    let mut finished_elsewhere = other.subscribe_finished();
    let mut finished_here = here.subscribe_finished();
    // Once it listens, the other hub wakes its queues (to look for what it missed).
    tokio::time::timeout(Duration::from_secs(5), other.woken(Queue::Regular))
        .await
        .unwrap();

    let ids: Vec<uuid::Uuid> = (0..40).map(|_| uuid::Uuid::now_v7()).collect();
    // A test runs on one thread: no announcement is sent before the last is made.
    for id in &ids {
        here.announce(&pool, &[Queue::Regular], std::slice::from_ref(id));
    }
    // This process knows at once.
    for id in &ids {
        assert_eq!(finished_here.try_recv().unwrap(), *id);
    }
    // A stopping runner can wait until they are sent.
    tokio::time::timeout(Duration::from_secs(5), here.announced())
        .await
        .expect("everything announced is sent");

    let mut heard = Vec::new();
    while heard.len() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .expect("the announcements reach the other processes")
            .unwrap();
        heard.push((n.channel().to_owned(), n.payload().to_owned()));
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.recv())
            .await
            .is_err(),
        "one notification per channel for the 40 announcements: {heard:?}"
    );
    let tasks = heard.iter().filter(|(c, _)| c == db::TASKS_CHANNEL).count();
    assert_eq!(tasks, 1, "{heard:?}");
    // The other process's waiters hear of every operation, in order.
    for id in &ids {
        let got = tokio::time::timeout(Duration::from_secs(5), finished_elsewhere.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, *id);
    }
    // With nothing left to send, at once.
    tokio::time::timeout(Duration::from_millis(100), here.announced())
        .await
        .unwrap();
    feed.abort();
}

/// No JSON document the service stores is in the planner's statistics (no
/// statement filters or sorts on one, and they were most of an `ANALYZE`'s
/// cost); a table added later must leave its documents out too.
#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn json_documents_are_left_out_of_planner_statistics(pool: PgPool) {
    let counted: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname || '.' || a.attname FROM pg_attribute a
         JOIN pg_class c ON c.oid = a.attrelid
         JOIN pg_type t ON t.oid = a.atttypid
         WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
           AND a.attnum > 0 AND NOT a.attisdropped
           AND 'jsonb'::regtype IN (t.oid, t.typbasetype)
           AND a.attstattarget <> 0
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(counted, Vec::<String>::new());
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn young_tables_are_analyzed_each_time_they_double(pool: PgPool) {
    use executord::db::stats::analyze_grown;

    let stats = |pool: PgPool| async move {
        sqlx::query_as::<_, (f32, i32)>(
            "SELECT reltuples, relpages FROM pg_class WHERE oid = 'filler'::regclass",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let fill = |pool: PgPool, rows: i32| async move {
        sqlx::query("INSERT INTO filler SELECT repeat('x', 200) FROM generate_series(1, $1)")
            .bind(rows)
            .execute(&pool)
            .await
            .unwrap();
    };
    sqlx::query("CREATE TABLE filler (x text)")
        .execute(&pool)
        .await
        .unwrap();
    // The service's own tables are all young and small: nothing to do.
    assert_eq!(analyze_grown(&pool).await.unwrap(), Vec::<String>::new());
    fill(pool.clone(), 100).await;
    assert_eq!(analyze_grown(&pool).await.unwrap(), Vec::<String>::new());
    assert!(stats(pool.clone()).await.0 < 0.0, "never analyzed");

    fill(pool.clone(), 1000).await; // about 30 pages
    assert_eq!(analyze_grown(&pool).await.unwrap(), ["filler"]);
    let (tuples, pages) = stats(pool.clone()).await;
    assert_eq!(tuples, 1100.0);
    assert!(pages >= 16);
    assert_eq!(analyze_grown(&pool).await.unwrap(), Vec::<String>::new());
    fill(pool.clone(), 500).await; // not doubled yet
    assert_eq!(analyze_grown(&pool).await.unwrap(), Vec::<String>::new());

    fill(pool.clone(), 1000).await;
    // Another process analyzing: this one does not wait for it.
    let mut other = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(x'6578656373746174'::bigint)")
        .execute(&mut *other)
        .await
        .unwrap();
    assert_eq!(analyze_grown(&pool).await.unwrap(), Vec::<String>::new());
    other.rollback().await.unwrap();
    assert_eq!(analyze_grown(&pool).await.unwrap(), ["filler"]);
    assert_eq!(stats(pool.clone()).await.0, 2600.0);
}
