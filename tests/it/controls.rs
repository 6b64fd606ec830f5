//! Operator controls and history through the real router: cancel, retry, events.

#![allow(clippy::unwrap_used, clippy::needless_pass_by_value)] // test helpers may unwrap

use std::time::{Duration, Instant};

use crate::support::app::{Engine, TestApp, fast_runner_config};
use executord::backend::sim::SimConfig;
use executord::domain::{OperationState, Queue, ResourceState};
use executord::runner::RunnerConfig;
use serde_json::{Value, json};
use sqlx::PgPool;

fn instance(name: &str, sim: Value) -> Value {
    json!({"kind": "instance", "name": name, "attributes": {"tenant": "acme", "flavor": "small", "sim": sim}})
}

async fn wait_until(app: &TestApp, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let reply = app.get(path).await;
        if check(&reply.body) {
            return reply.body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path}: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn the_history_records_every_transition_and_outlives_the_resource(pool: PgPool) {
    let app = TestApp::new(pool);
    let id = app.ok_instance("web-1").await;
    let base = format!("/api/v1/resources/{id}");
    assert_eq!(
        app.post_json(&format!("{base}/actions/stop"), json!({}))
            .await
            .status,
        202
    );
    app.run_until_idle().await;
    assert_eq!(app.delete(&base).await.status, 202);
    app.run_until_idle().await;

    let events = app.get(&format!("{base}/events")).await;
    assert_eq!(events.status, 200);
    let steps: Vec<(String, Value, Value)> = events.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["transition"].as_str().unwrap().to_owned(),
                e["from_state"].clone(),
                e["to_state"].clone(),
            )
        })
        .collect();
    let expected = [
        ("create", Value::Null, json!("creation_scheduled")),
        (
            "begin_creating",
            json!("creation_scheduled"),
            json!("creating"),
        ),
        ("set_ok", json!("creating"), json!("ok")),
        ("schedule_updating", json!("ok"), json!("update_scheduled")),
        (
            "begin_updating",
            json!("update_scheduled"),
            json!("updating"),
        ),
        ("set_ok", json!("updating"), json!("ok")),
        (
            "schedule_deleting",
            json!("ok"),
            json!("deletion_scheduled"),
        ),
        (
            "begin_deleting",
            json!("deletion_scheduled"),
            json!("deleting"),
        ),
        ("delete", json!("deleting"), Value::Null),
    ];
    let expected: Vec<(String, Value, Value)> = expected
        .into_iter()
        .map(|(t, f, to)| (t.to_owned(), f, to))
        .collect();
    assert_eq!(steps, expected);
    // Each event's from-state is the previous event's to-state.
    for pair in steps.windows(2) {
        assert_eq!(pair[0].2, pair[1].1);
    }
    assert!(events.body["items"][1]["task_id"].is_string());
    assert_eq!(
        app.get("/api/v1/resources/0193a5c2-7f3e-7c1a-9a4e-3f1d2b8c9e01/events")
            .await
            .status,
        404
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn cancelling_a_polling_operation_ends_it_at_once(pool: PgPool) {
    let sim = SimConfig {
        transition_delay: Duration::from_secs(600),
        ..SimConfig::instant()
    };
    let app = TestApp::over(Engine::with(pool, sim, None, fast_runner_config()));
    let created = app
        .post_json("/api/v1/resources", instance("web-1", json!({})))
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let op = created.body["current_operation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn(
        app.engine
            .runner
            .clone()
            .run(vec![Queue::Regular], stopping),
    );
    wait_until(&app, &format!("/api/v1/operations/{op}"), |o| {
        o["tasks"][3]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("waiting for runtime state ACTIVE"))
    })
    .await;

    let started = Instant::now();
    let cancelled = app
        .call(
            "POST",
            &format!("/api/v1/operations/{op}/cancel"),
            None,
            &[],
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.body["state"], "cancelled");
    let states: Vec<&str> = cancelled.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["succeeded", "succeeded", "succeeded", "cancelled"]);
    let resource = app.get(&format!("/api/v1/resources/{id}")).await;
    assert_eq!(resource.body["state"], "erred");
    assert!(
        resource.body["error_message"]
            .as_str()
            .unwrap()
            .contains("cancelled")
    );
    assert_eq!(app.engine.count("throttle_slots").await, 0);

    let again = app
        .call(
            "POST",
            &format!("/api/v1/operations/{op}/cancel"),
            None,
            &[],
        )
        .await;
    assert_eq!(again.status, 409);
    stop.send(true).unwrap();
    runner.await.unwrap();
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn cancelling_a_running_step_frees_its_worker(pool: PgPool) {
    let sim = SimConfig {
        latency: Duration::from_secs(30),
        ..SimConfig::instant()
    };
    // A long lease: the heartbeat (every 10 s) cannot be what frees the slot.
    let config = RunnerConfig {
        regular: 1,
        lease: Duration::from_secs(30),
        ..fast_runner_config()
    };
    let app = TestApp::over(Engine::with(pool, sim, None, config));
    let listener = tokio::spawn(app.engine.events.clone().listen(app.engine.pool.clone()));
    let created = app
        .post_json("/api/v1/resources", instance("web-1", json!({})))
        .await;
    let op = created.body["current_operation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn(
        app.engine
            .runner
            .clone()
            .run(vec![Queue::Regular], stopping),
    );
    wait_until(&app, &format!("/api/v1/operations/{op}"), |o| {
        o["tasks"][2]["state"] == "running"
    })
    .await;
    // A second operation waits for the single slot.
    let next = app
        .post_json("/api/v1/resources", instance("web-2", json!({})))
        .await;
    let next_op = next.body["current_operation_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let cancelled = app
        .call(
            "POST",
            &format!("/api/v1/operations/{op}/cancel"),
            None,
            &[],
        )
        .await;
    assert_eq!(cancelled.body["tasks"][2]["state"], "cancelled");
    // The runner is told at once and drops the 30 s call: the slot goes to the next operation.
    let started = Instant::now();
    wait_until(&app, &format!("/api/v1/operations/{next_op}"), |o| {
        o["tasks"][0]["state"] == "succeeded"
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), runner)
        .await
        .unwrap()
        .unwrap();
    listener.abort();
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn retry_reruns_from_the_failed_step_and_keeps_earlier_results(pool: PgPool) {
    let app = TestApp::new(pool);
    // Five transient failures use up the create step's five attempts; the sixth call succeeds.
    let created = app
        .post_json(
            "/api/v1/resources",
            instance("web-1", json!({"transient_failures": 5})),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let op = created.body["current_operation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.run_until_idle().await;
    let failed = app.get(&format!("/api/v1/operations/{op}")).await;
    assert_eq!(failed.body["state"], "failed");
    let before: Vec<Value> = failed.body["tasks"].as_array().unwrap()[..2].to_vec();

    let retried = app
        .call("POST", &format!("/api/v1/operations/{op}/retry"), None, &[])
        .await;
    assert_eq!(retried.status, 202, "{}", retried.body);
    assert_eq!(retried.body["state"], "running");
    assert_eq!(
        app.get(&format!("/api/v1/resources/{id}")).await.body["state"],
        "creating"
    );
    app.run_until_idle().await;

    let done = app.get(&format!("/api/v1/operations/{op}")).await;
    assert_eq!(done.body["state"], "succeeded", "{}", done.body);
    assert_eq!(done.body["steps_done"], 4);
    assert_eq!(
        &done.body["tasks"].as_array().unwrap()[..2],
        &before[..],
        "earlier steps are not run again"
    );
    assert_eq!(app.engine.sim.calls("create_instance"), 6);
    let resource = app.get(&format!("/api/v1/resources/{id}")).await;
    assert_eq!(
        (
            resource.body["state"].as_str(),
            resource.body["runtime_state"].as_str()
        ),
        (Some("ok"), Some("ACTIVE"))
    );
    assert_eq!(app.engine.count("throttle_slots").await, 0);
    let transitions: Vec<String> = app
        .get(&format!("/api/v1/resources/{id}/events"))
        .await
        .body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["transition"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        transitions,
        ["create", "begin_creating", "set_erred", "retry", "set_ok"]
    );

    // Only a failed operation can be retried.
    assert_eq!(
        app.call("POST", &format!("/api/v1/operations/{op}/retry"), None, &[])
            .await
            .status,
        409
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn retry_is_refused_once_the_resource_has_moved_on(pool: PgPool) {
    let app = TestApp::new(pool);
    let created = app
        .post_json(
            "/api/v1/resources",
            instance("web-1", json!({"fail_on": "create_instance"})),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let op = created.body["current_operation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.run_until_idle().await;
    // A later operation (a delete of the erred resource) touches it.
    assert_eq!(
        app.delete(&format!("/api/v1/resources/{id}")).await.status,
        202
    );
    let refused = app
        .call("POST", &format!("/api/v1/operations/{op}/retry"), None, &[])
        .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("changed since the failure")
    );
}

/// The value of one series in the Prometheus text, 0 when absent.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn every_ending_writes_the_same_end_and_is_counted_once_after_its_commit(pool: PgPool) {
    let slow = SimConfig {
        transition_delay: Duration::from_secs(600),
        ..SimConfig::instant()
    };
    let app = TestApp::over(Engine::with(pool, slow, None, fast_runner_config()));
    let engine = &app.engine;
    let volume = |name: &str, sim: Value| json!({"kind": "volume", "name": name, "attributes": {"tenant": "acme", "size_gb": 1, "sim": sim}});
    let mut made = Vec::new();
    for (name, sim) in [
        (
            "failed",
            json!({"fail_on": "create_volume", "message": "No space"}),
        ),
        ("cancelled", json!({})),
        ("swept", json!({})),
        ("rolled-back", json!({})),
    ] {
        let created = app.post_json("/api/v1/resources", volume(name, sim)).await;
        assert_eq!(created.status, 201, "{}", created.body);
        let id = |key: &str| {
            created.body[key]
                .as_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap()
        };
        made.push((id("id"), id("current_operation_id")));
    }
    // The recorder ends the first (its backend call fails for good); the
    // others reach their polls of a volume that takes ten minutes.
    for _ in 0..3 {
        engine.step(Queue::Regular, 10).await;
    }
    let [failed, cancelled, swept, rolled_back] = made[..] else {
        unreachable!()
    };

    // A cancel by request, and one whose transaction rolls back.
    let reply = app
        .call(
            "POST",
            &format!("/api/v1/operations/{}/cancel", cancelled.1),
            None,
            &[],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut tx = engine.pool.begin().await.unwrap();
    let (_, finished) =
        executord::executor::control::cancel(&mut tx, &engine.catalog, rolled_back.1, None)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    drop(finished);

    // The sweeper, after the steps of an operation were lost (a restore).
    sqlx::query("DELETE FROM tasks WHERE operation_id = $1")
        .bind(swept.1)
        .execute(&engine.pool)
        .await
        .unwrap();
    let mut conn = engine.pool.acquire().await.unwrap();
    let sweep = json!({"type": "job", "job": "sweep"});
    assert!(
        executord::db::jobs::enqueue_due(&mut conn, "sweep", 0, &sweep)
            .await
            .unwrap()
    );
    drop(conn);
    assert_eq!(engine.step(Queue::Background, 1).await, 1);

    for ((resource_id, operation_id), state, error) in [
        (failed, OperationState::Failed, "No space"),
        (cancelled, OperationState::Cancelled, "was cancelled"),
        (swept, OperationState::Failed, "marked erred by the sweeper"),
    ] {
        let operation = engine.operation(operation_id).await;
        assert_eq!(operation.state, state, "{operation:?}");
        assert!(operation.finished_at.is_some());
        let resource = engine.resource(resource_id).await.unwrap();
        assert_eq!(resource.state, ResourceState::Erred);
        assert!(resource.current_operation_id.is_none());
        assert!(
            resource.error_message.as_deref().unwrap().contains(error),
            "{resource:?}"
        );
        assert!(
            engine
                .tasks(operation_id)
                .await
                .iter()
                .all(|t| t.state.is_finished()),
            "{state:?}: a step is left pending"
        );
        let last: (String, String, Option<uuid::Uuid>) = sqlx::query_as(
            "SELECT transition, to_state, operation_id FROM resource_events
             WHERE resource_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(resource_id)
        .fetch_one(&engine.pool)
        .await
        .unwrap();
        assert_eq!(
            last,
            (
                "set_erred".to_owned(),
                "erred".to_owned(),
                Some(operation_id)
            )
        );
    }
    // The rolled-back cancel left nothing behind, and was not counted.
    assert_eq!(
        engine.operation(rolled_back.1).await.state,
        OperationState::Running
    );
    let text = app.get("/metrics").await.body.as_str().unwrap().to_owned();
    let count = |outcome: &str| {
        series(
            &text,
            &format!(r#"executord_operations_total{{kind="create",outcome="{outcome}"}}"#),
        )
    };
    assert_eq!((count("failed"), count("cancelled")), (2.0, 1.0), "{text}");
}
