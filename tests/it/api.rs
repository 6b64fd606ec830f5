//! The HTTP API through the real router: every endpoint and every error status.

#![allow(clippy::unwrap_used, clippy::needless_pass_by_value)] // test helpers may unwrap

use std::time::{Duration, Instant};

use crate::support::app::{Reply, TestApp};
use serde_json::{Value, json};
use sqlx::PgPool;

fn assert_problem(reply: &Reply, status: u16) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(reply.body["status"], status);
    assert!(reply.body["title"].is_string());
    assert!(!reply.body.to_string().contains("panicked"));
}

fn instance(name: &str) -> Value {
    json!({"kind": "instance", "name": name, "attributes": {"tenant": "acme", "flavor": "small", "image": "debian-12"}})
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn create_then_drive_the_runner_gives_an_ok_resource_and_a_succeeded_operation(pool: PgPool) {
    let app = TestApp::new(pool);
    let created = app.post_json("/api/v1/resources", instance("web-1")).await;
    assert_eq!(created.status, 201);
    let id = created.body["id"].as_str().unwrap();
    assert_eq!(
        created.header("location"),
        Some(format!("/api/v1/resources/{id}").as_str())
    );
    assert_eq!(created.body["state"], "creation_scheduled");
    let operation_id = created.body["current_operation_id"]
        .as_str()
        .unwrap()
        .to_owned();

    app.run_until_idle().await;

    let resource = app.get(&format!("/api/v1/resources/{id}")).await;
    assert_eq!(resource.status, 200);
    assert_eq!(resource.body["state"], "ok");
    assert_eq!(resource.body["runtime_state"], "ACTIVE");
    assert!(
        resource.body["backend_id"]
            .as_str()
            .unwrap()
            .starts_with("sim-")
    );
    assert_eq!(resource.body["current_operation_id"], Value::Null);
    let version = resource.body["version"].as_i64().unwrap();
    assert_eq!(
        resource.header("etag"),
        Some(format!("\"{version}\"").as_str())
    );

    let operation = app.get(&format!("/api/v1/operations/{operation_id}")).await;
    assert_eq!(operation.status, 200);
    assert_eq!(operation.body["state"], "succeeded");
    assert_eq!(operation.body["kind"], "create");
    let tasks = operation.body["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 4);
    assert!(tasks.iter().all(|t| t["state"] == "succeeded"));
    let positions: Vec<i64> = tasks
        .iter()
        .map(|t| t["position"].as_i64().unwrap())
        .collect();
    assert_eq!(positions, [0, 1, 2, 3]);

    let task_id = tasks[2]["id"].as_str().unwrap();
    let task = app.get(&format!("/api/v1/tasks/{task_id}")).await;
    assert_eq!(task.status, 200);
    assert_eq!(task.body["type"], "backend_method");
    assert_eq!(task.body["result"]["runtime_state"], "BUILD");
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn the_curl_tour_stop_resize_start_and_delete(pool: PgPool) {
    let app = TestApp::new(pool);
    let id = app.ok_instance("web-1").await;
    let base = format!("/api/v1/resources/{id}");

    let stop = app
        .post_json(&format!("{base}/actions/stop"), json!({}))
        .await;
    assert_eq!(stop.status, 202, "{}", stop.body);
    assert_eq!(stop.body["kind"], "action");
    assert_eq!(stop.body["action"], "stop");
    let op = stop.body["id"].as_str().unwrap();
    assert_eq!(
        stop.header("location"),
        Some(format!("/api/v1/operations/{op}").as_str())
    );
    app.run_until_idle().await;
    assert_eq!(app.get(&base).await.body["runtime_state"], "SHUTOFF");

    let resize = app
        .post_json(
            &format!("{base}/actions/resize"),
            json!({"flavor": "large"}),
        )
        .await;
    assert_eq!(resize.status, 202, "{}", resize.body);
    app.run_until_idle().await;
    let resource = app.get(&base).await;
    assert_eq!(resource.body["status"]["flavor"], "large");
    assert_eq!(resource.body["attributes"]["flavor"], "small");
    assert_eq!(resource.body["state"], "ok");

    // Actions without parameters take an empty body too.
    let start = app
        .call("POST", &format!("{base}/actions/start"), None, &[])
        .await;
    assert_eq!(start.status, 202, "{}", start.body);
    app.run_until_idle().await;
    assert_eq!(app.get(&base).await.body["runtime_state"], "ACTIVE");

    let delete = app.delete(&base).await;
    assert_eq!(delete.status, 202);
    assert_eq!(delete.body["kind"], "delete");
    app.run_until_idle().await;
    assert_problem(&app.get(&base).await, 404);

    let history = app.get(&format!("{base}/operations")).await;
    assert_eq!(history.status, 200);
    let kinds: Vec<&str> = history.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["delete", "action", "action", "action", "create"],
        "newest first, kept after delete"
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn update_changes_the_name_and_refuses_what_the_kind_does_not_allow(pool: PgPool) {
    let app = TestApp::new(pool);
    let id = app.ok_instance("web-1").await;
    let base = format!("/api/v1/resources/{id}");

    let renamed = app.patch_json(&base, json!({"name": "web-2"})).await;
    assert_eq!(renamed.status, 202, "{}", renamed.body);
    assert_eq!(renamed.body["kind"], "update");
    app.run_until_idle().await;
    let resource = app.get(&base).await;
    assert_eq!(
        (
            resource.body["name"].as_str(),
            resource.body["state"].as_str()
        ),
        (Some("web-2"), Some("ok"))
    );

    let flavor = app
        .patch_json(&base, json!({"attributes": {"flavor": "large"}}))
        .await;
    assert_problem(&flavor, 422);
    assert_eq!(flavor.body["errors"][0]["pointer"], "/attributes/flavor");

    let empty = app.patch_json(&base, json!({})).await;
    assert_problem(&empty, 422);
    let blank = app.patch_json(&base, json!({"name": "   "})).await;
    assert_problem(&blank, 422);
    assert_eq!(blank.body["errors"][0]["pointer"], "/name");
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn invalid_creates_are_422_with_a_pointer_to_each_field(pool: PgPool) {
    let app = TestApp::new(pool);
    let cases = [
        (
            json!({"kind": "router", "name": "r", "attributes": {}}),
            "/kind",
        ),
        (
            json!({"kind": "instance", "name": "x", "attributes": {"tenant": "acme", "flavor": "huge"}}),
            "/attributes/flavor",
        ),
        (
            json!({"kind": "instance", "name": "x", "attributes": {"flavor": "small"}}),
            "/attributes",
        ),
        (
            json!({"kind": "instance", "name": "x", "attributes": {"tenant": "a", "flavor": "small", "colour": "red"}}),
            "/attributes",
        ),
        (
            json!({"kind": "instance", "name": "", "attributes": {"tenant": "a", "flavor": "small"}}),
            "/name",
        ),
        (
            json!({"kind": "volume", "name": "v", "attributes": {"tenant": "a", "size_gb": 0}}),
            "/attributes/size_gb",
        ),
        (json!({"kind": "instance", "name": 7}), "/name"),
        (json!({"name": "x"}), ""),
        (
            json!({"kind": "instance", "name": "x", "colour": "red"}),
            "/colour",
        ),
    ];
    for (body, pointer) in cases {
        let reply = app.post_json("/api/v1/resources", body.clone()).await;
        assert_problem(&reply, 422);
        let pointers: Vec<&str> = reply.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["pointer"].as_str().unwrap())
            .collect();
        assert!(pointers.contains(&pointer), "{body} → {pointers:?}");
    }
    assert_eq!(
        app.engine.count("resources").await,
        0,
        "nothing was created"
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn malformed_requests_are_400_413_415_404_405(pool: PgPool) {
    let app = TestApp::new(pool);
    let malformed = app
        .send(
            axum::http::Request::post("/api/v1/resources")
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{\"kind\": "))
                .unwrap(),
        )
        .await;
    assert_problem(&malformed, 400);
    assert_problem(&app.get("/api/v1/resources/not-a-uuid").await, 400);
    assert_problem(&app.get("/api/v1/operations/123").await, 400);
    assert_problem(&app.get("/api/v1/resources?limit=abc").await, 400);
    assert_problem(&app.get("/api/v1/resources?limit=501").await, 422);
    assert_problem(
        &app.get("/api/v1/operations/0193a5c2-7f3e-7c1a-9a4e-3f1d2b8c9e01?wait=61")
            .await,
        422,
    );
    assert_problem(
        &app.get("/api/v1/resources/0193a5c2-7f3e-7c1a-9a4e-3f1d2b8c9e01?wait=61")
            .await,
        422,
    );
    assert_problem(
        &app.get("/api/v1/resources/0193a5c2-7f3e-7c1a-9a4e-3f1d2b8c9e01?wait=soon")
            .await,
        400,
    );

    let big = json!({"kind": "instance", "name": "x", "attributes": {"tenant": "a".repeat(1_100_000), "flavor": "small"}});
    assert_problem(&app.post_json("/api/v1/resources", big).await, 413);
    let text = app
        .send(
            axum::http::Request::post("/api/v1/resources")
                .body(axum::body::Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_problem(&text, 415);

    let missing = "0193a5c2-7f3e-7c1a-9a4e-3f1d2b8c9e01";
    assert_problem(&app.get(&format!("/api/v1/resources/{missing}")).await, 404);
    assert_problem(
        &app.get(&format!("/api/v1/operations/{missing}")).await,
        404,
    );
    assert_problem(&app.get(&format!("/api/v1/tasks/{missing}")).await, 404);
    assert_problem(
        &app.get(&format!("/api/v1/resources/{missing}/operations"))
            .await,
        404,
    );
    assert_problem(
        &app.patch_json(
            &format!("/api/v1/resources/{missing}"),
            json!({"name": "x"}),
        )
        .await,
        404,
    );
    assert_problem(
        &app.delete(&format!("/api/v1/resources/{missing}")).await,
        404,
    );
    assert_problem(&app.get("/api/v1/nothing").await, 404);
    assert_problem(&app.call("PUT", "/api/v1/resources", None, &[]).await, 405);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn actions_check_the_action_its_parameters_the_state_and_the_runtime_state(pool: PgPool) {
    let app = TestApp::new(pool);
    let id = app.ok_instance("web-1").await;
    let base = format!("/api/v1/resources/{id}");

    assert_problem(
        &app.post_json(&format!("{base}/actions/explode"), json!({}))
            .await,
        404,
    );
    let start = app
        .post_json(&format!("{base}/actions/start"), json!({}))
        .await;
    assert_problem(&start, 409);
    assert!(
        start.body["detail"]
            .as_str()
            .unwrap()
            .contains("Valid runtime states for `start`: SHUTOFF")
    );
    let resize = app
        .post_json(&format!("{base}/actions/resize"), json!({"flavor": "huge"}))
        .await;
    assert_problem(&resize, 422);
    assert_eq!(resize.body["errors"][0]["pointer"], "/flavor");
    let bad_json = app
        .send(
            axum::http::Request::post(format!("{base}/actions/stop"))
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{nope"))
                .unwrap(),
        )
        .await;
    assert_problem(&bad_json, 400);

    assert_eq!(
        app.post_json(&format!("{base}/actions/stop"), json!({}))
            .await
            .status,
        202
    );
    let in_flight = app.delete(&base).await;
    assert_problem(&in_flight, 409);
    assert!(
        in_flight.body["detail"]
            .as_str()
            .unwrap()
            .contains("Valid states for operation: ok, erred")
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn volume_extend_must_grow_the_volume(pool: PgPool) {
    let app = TestApp::new(pool);
    let created = app
        .post_json("/api/v1/resources", json!({"kind": "volume", "name": "data", "attributes": {"tenant": "acme", "size_gb": 10}}))
        .await;
    assert_eq!(created.status, 201);
    app.run_until_idle().await;
    let base = format!("/api/v1/resources/{}", created.body["id"].as_str().unwrap());
    let shrink = app
        .post_json(&format!("{base}/actions/extend"), json!({"size_gb": 10}))
        .await;
    assert_problem(&shrink, 422);
    assert_eq!(shrink.body["errors"][0]["pointer"], "/size_gb");
    assert_eq!(
        app.post_json(&format!("{base}/actions/extend"), json!({"size_gb": 20}))
            .await
            .status,
        202
    );
    app.run_until_idle().await;
    let volume = app.get(&base).await;
    assert_eq!(volume.body["status"]["size_gb"], 20);
    assert_eq!(volume.body["runtime_state"], "available");
    // Growing is measured against what the backend reported, not the attributes.
    let smaller = app
        .post_json(&format!("{base}/actions/extend"), json!({"size_gb": 15}))
        .await;
    assert_eq!(smaller.status, 422, "{}", smaller.body);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn if_match_with_a_stale_version_is_412(pool: PgPool) {
    let app = TestApp::new(pool);
    let id = app.ok_instance("web-1").await;
    let base = format!("/api/v1/resources/{id}");
    let etag = app.get(&base).await.header("etag").unwrap().to_owned();

    let stale = app
        .call(
            "PATCH",
            &base,
            Some(&json!({"name": "b"})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_problem(&stale, 412);
    let fresh = app
        .call(
            "PATCH",
            &base,
            Some(&json!({"name": "b"})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(fresh.status, 202, "{}", fresh.body);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn twenty_concurrent_patches_on_one_resource_give_exactly_one_202(pool: PgPool) {
    let app = std::sync::Arc::new(TestApp::new(pool));
    let id = app.ok_instance("web-1").await;
    let mut handles = Vec::new();
    for i in 0..20 {
        let app = app.clone();
        let path = format!("/api/v1/resources/{id}");
        handles.push(tokio::spawn(async move {
            app.patch_json(&path, json!({"name": format!("n-{i}")}))
                .await
        }));
    }
    let mut statuses = Vec::new();
    for handle in handles {
        let reply = handle.await.unwrap();
        if reply.status != 202 {
            assert_problem(&reply, 409);
        }
        statuses.push(reply.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 19);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn an_idempotent_retry_creates_one_resource_and_replays_the_first_response(pool: PgPool) {
    let app = TestApp::new(pool);
    let body = instance("web-1");
    let first = app
        .call(
            "POST",
            "/api/v1/resources",
            Some(&body),
            &[("idempotency-key", "k-1")],
        )
        .await;
    let again = app
        .call(
            "POST",
            "/api/v1/resources",
            Some(&body),
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!((first.status, again.status), (201, 201));
    assert_eq!(first.body, again.body);
    assert_eq!(first.header("location"), again.header("location"));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.engine.count("resources").await, 1);
    assert_eq!(app.engine.count("operations").await, 1);

    let other = app
        .call(
            "POST",
            "/api/v1/resources",
            Some(&instance("web-2")),
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_problem(&other, 422);
    assert_eq!(app.engine.count("resources").await, 1);

    // A refused request does not use up its key.
    app.run_until_idle().await;
    let id = first.body["id"].as_str().unwrap();
    let path = format!("/api/v1/resources/{id}/actions/start");
    let refused = app
        .call(
            "POST",
            &path,
            Some(&json!({})),
            &[("idempotency-key", "k-2")],
        )
        .await;
    assert_problem(&refused, 409);
    let stop = format!("/api/v1/resources/{id}/actions/stop");
    let accepted = app
        .call(
            "POST",
            &stop,
            Some(&json!({})),
            &[("idempotency-key", "k-2")],
        )
        .await;
    assert_eq!(accepted.status, 202);
}

/// A runner of the regular queue and the LISTEN feed, in the background.
struct Background {
    stop: tokio::sync::watch::Sender<bool>,
    runner: tokio::task::JoinHandle<()>,
    listener: tokio::task::AbortHandle,
}

impl Background {
    fn start(app: &TestApp) -> Self {
        let listener = tokio::spawn(app.engine.events.clone().listen(app.engine.pool.clone()));
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let runner = tokio::spawn(
            app.engine
                .runner
                .clone()
                .run(vec![executord::domain::Queue::Regular], stopping),
        );
        Self {
            stop,
            runner,
            listener: listener.abort_handle(),
        }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.runner.await.unwrap();
        self.listener.abort();
    }
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn wait_returns_as_soon_as_the_operation_finishes(pool: PgPool) {
    let app = TestApp::new(pool);
    let created = app.post_json("/api/v1/resources", instance("web-1")).await;
    let op = created.body["current_operation_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Nothing runs: the wait ends at its limit with the current state.
    let started = Instant::now();
    let pending = app.get(&format!("/api/v1/operations/{op}?wait=1")).await;
    assert_eq!(pending.body["state"], "scheduled");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A runner in the background: the wait ends when the operation does.
    let background = Background::start(&app);
    let started = Instant::now();
    let done = app.get(&format!("/api/v1/operations/{op}?wait=30")).await;
    assert_eq!(done.body["state"], "succeeded");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    background.stop().await;
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_resource_wait_returns_as_soon_as_it_settles(pool: PgPool) {
    let app = TestApp::new(pool);
    let created = app.post_json("/api/v1/resources", instance("web-1")).await;
    let id = created.body["id"].as_str().unwrap().to_owned();

    // Nothing runs: the wait ends at its limit with the current state.
    let started = Instant::now();
    let pending = app.get(&format!("/api/v1/resources/{id}?wait=1")).await;
    assert_eq!(pending.status, 200);
    assert_eq!(pending.body["state"], "creation_scheduled");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A runner in the background: the wait ends when the create does.
    let background = Background::start(&app);
    let started = Instant::now();
    let settled = app.get(&format!("/api/v1/resources/{id}?wait=30")).await;
    assert_eq!(settled.status, 200);
    assert_eq!(settled.body["state"], "ok");
    assert!(settled.body["current_operation_id"].is_null());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Settled already: no wait at all.
    let started = Instant::now();
    let again = app.get(&format!("/api/v1/resources/{id}?wait=30")).await;
    assert_eq!(again.body["state"], "ok");
    assert!(started.elapsed() < Duration::from_secs(1));
    background.stop().await;
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn lists_filter_and_page_with_a_cursor(pool: PgPool) {
    let app = TestApp::new(pool);
    for i in 0..5 {
        assert_eq!(
            app.post_json("/api/v1/resources", instance(&format!("vm-{i}")))
                .await
                .status,
            201
        );
    }
    let volume =
        json!({"kind": "volume", "name": "data", "attributes": {"tenant": "acme", "size_gb": 1}});
    assert_eq!(app.post_json("/api/v1/resources", volume).await.status, 201);

    let page = app.get("/api/v1/resources?kind=instance&limit=2").await;
    let names: Vec<&str> = page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vm-4", "vm-3"]);
    let cursor = page.body["next_cursor"].as_str().unwrap();
    let next = app
        .get(&format!(
            "/api/v1/resources?kind=instance&limit=2&cursor={cursor}"
        ))
        .await;
    let names: Vec<&str> = next.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vm-2", "vm-1"]);

    assert_eq!(
        app.get("/api/v1/resources?name=data").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let scheduled = app.get("/api/v1/resources?state=creation_scheduled").await;
    assert_eq!(scheduled.body["items"].as_array().unwrap().len(), 6);
    assert_eq!(scheduled.body["next_cursor"], Value::Null);
    assert_problem(&app.get("/api/v1/resources?state=nope").await, 400);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn kinds_health_and_docs_are_served(pool: PgPool) {
    let app = TestApp::new(pool);
    let kinds = app.get("/api/v1/kinds").await;
    assert_eq!(kinds.status, 200);
    let instance = kinds.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "instance")
        .unwrap();
    let actions: Vec<&str> = instance["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["resize", "restart", "start", "stop"]);
    assert_eq!(
        instance["attributes_schema"]["required"],
        json!(["tenant", "flavor"])
    );
    assert_eq!(instance["create"][0]["type"], "throttle");

    assert_eq!(app.get("/healthz").await.body["status"], "ok");
    assert_eq!(app.get("/readyz").await.body["status"], "ok");
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["paths"]["/api/v1/resources/{id}/actions/{action}"]["post"].is_object());
    let docs = app.get("/docs/").await;
    assert_eq!(docs.status, 200);
    assert!(docs.body.as_str().unwrap().contains("swagger-ui"));
}

#[test]
fn the_checked_in_openapi_document_is_current() {
    let generated = executord::api::openapi().to_pretty_json().unwrap() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "openapi/openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test --test it api::the_checked_in_openapi_document_is_current`"
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn deep_or_oversized_attributes_and_parameters_are_422(pool: PgPool) {
    let app = TestApp::new(pool);
    let mut deep = json!("leaf");
    for _ in 0..20 {
        deep = json!({ "next": deep });
    }
    let body = json!({"kind": "instance", "name": "x", "attributes": {"tenant": "a", "flavor": "small", "sim": deep}});
    let reply = app.post_json("/api/v1/resources", body).await;
    assert_problem(&reply, 422);
    assert!(
        reply.body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("deeper")
    );

    let big = json!({"kind": "instance", "name": "x", "attributes": {"tenant": "a", "flavor": "small", "sim": {"pad": "x".repeat(100_000)}}});
    let reply = app.post_json("/api/v1/resources", big).await;
    assert_problem(&reply, 422);
    assert!(
        reply.body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("bytes")
    );

    let id = app.ok_instance("web-1").await;
    let stop = format!("/api/v1/resources/{id}/actions/stop");
    assert_eq!(
        app.post_json(&stop, json!({"deep": deep})).await.status,
        422
    );
    assert_eq!(app.engine.count("resources").await, 1);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn nul_characters_are_refused_not_a_500(pool: PgPool) {
    let app = TestApp::new(pool);
    assert_problem(&app.get("/api/v1/resources?name=a%00b").await, 400);
    let body = json!({"kind": "instance", "name": "x", "attributes": {"tenant": "a\u{0}b", "flavor": "small"}});
    assert_problem(&app.post_json("/api/v1/resources", body).await, 422);
}

async fn send_raw(
    app: &TestApp,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut request = axum::http::Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    app.send(
        request
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap(),
    )
    .await
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn actions_refuse_bodies_not_sent_as_json(pool: PgPool) {
    let app = TestApp::new(pool);
    let id = app.ok_instance("web-1").await;
    let stop = format!("/api/v1/resources/{id}/actions/stop");
    let resize = format!("/api/v1/resources/{id}/actions/resize");

    let refused = [
        (&stop, Some("text/plain"), "{}"),
        (&stop, Some("application/x-www-form-urlencoded"), "a=b"),
        // What a browser's cross-site form sends: a form type and no fields.
        (&stop, Some("application/x-www-form-urlencoded"), ""),
        (&stop, Some("multipart/form-data; boundary=x"), ""),
        (&stop, Some("text/json"), "{}"),
        (&stop, Some("application/json; charset=latin1"), "{}"),
        (&resize, None, r#"{"flavor": "large"}"#),
    ];
    for (path, content_type, body) in refused {
        let headers: Vec<(&str, &str)> = content_type
            .map(|t| ("content-type", t))
            .into_iter()
            .collect();
        let reply = send_raw(&app, "POST", path, &headers, body).await;
        assert_problem(&reply, 415);
        assert!(
            reply.body["detail"].as_str().unwrap().contains("JSON"),
            "{}",
            reply.body
        );
    }
    assert_eq!(
        app.engine.count("operations").await,
        1,
        "only the create ran"
    );

    // No body and no Content-Type is an action without parameters.
    let bare = send_raw(&app, "POST", &stop, &[], "").await;
    assert_eq!(bare.status, 202, "{}", bare.body);
    assert_eq!(bare.body["action"], "stop");
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn json_bodies_must_be_declared_json_in_utf_8(pool: PgPool) {
    let app = TestApp::new(pool);
    let body = instance("web-1").to_string();
    for content_type in [
        "application/json; charset=latin1",
        "application/json; charset=ISO-8859-1",
        "application/json;charset=\"utf-16\"",
    ] {
        let reply = send_raw(
            &app,
            "POST",
            "/api/v1/resources",
            &[("content-type", content_type)],
            &body,
        )
        .await;
        assert_problem(&reply, 415);
        assert!(
            reply.body["detail"].as_str().unwrap().contains("UTF-8"),
            "{}",
            reply.body
        );
    }
    assert_eq!(app.engine.count("resources").await, 0);
    let created = send_raw(
        &app,
        "POST",
        "/api/v1/resources",
        &[("content-type", "application/json; charset=\"UTF-8\"")],
        &body,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    app.run_until_idle().await;

    let path = format!("/api/v1/resources/{}", created.body["id"].as_str().unwrap());
    let rename = json!({"name": "web-2"}).to_string();
    let latin1 = send_raw(
        &app,
        "PATCH",
        &path,
        &[("content-type", "application/json; charset=latin1")],
        &rename,
    )
    .await;
    assert_problem(&latin1, 415);
    let merge_patch = send_raw(
        &app,
        "PATCH",
        &path,
        &[(
            "content-type",
            "application/merge-patch+json; charset=utf-8",
        )],
        &rename,
    )
    .await;
    assert_eq!(merge_patch.status, 202, "{}", merge_patch.body);
}

fn is_generated_id(id: &str) -> bool {
    id.len() == 36 && uuid::Uuid::parse_str(id).is_ok()
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_safe_request_id_is_echoed_and_an_unsafe_one_replaced_by_a_fresh_one(pool: PgPool) {
    let app = TestApp::new(pool);
    for id in ["abc", "client-42.retry_1:a", &"x".repeat(64)] {
        let reply = app
            .call("GET", "/healthz", None, &[("x-request-id", id)])
            .await;
        assert_eq!(reply.header("x-request-id"), Some(id));
    }
    let reply = app.get("/healthz").await;
    assert!(is_generated_id(reply.header("x-request-id").unwrap()));

    let long = "y".repeat(65);
    for id in [
        long.as_str(),
        "",
        "a b",
        "a\tb",
        "a\"b",
        "a=b",
        "a/b",
        "a,b",
        "x}: forged",
    ] {
        let reply = app
            .call("GET", "/healthz", None, &[("x-request-id", id)])
            .await;
        let echoed = reply.header("x-request-id").unwrap();
        assert!(is_generated_id(echoed), "{id:?} came back as {echoed:?}");
    }
    // Bytes outside ASCII are not text a log line can carry safely either.
    let request = axum::http::Request::get("/healthz")
        .header(
            "x-request-id",
            axum::http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        )
        .body(axum::body::Body::empty())
        .unwrap();
    assert!(is_generated_id(
        app.send(request).await.header("x-request-id").unwrap()
    ));
    // Of two ids, neither is trusted unless the first one is safe; one comes back.
    let request = axum::http::Request::get("/healthz")
        .header("x-request-id", "a b")
        .header("x-request-id", "good")
        .body(axum::body::Body::empty())
        .unwrap();
    let reply = app.send(request).await;
    assert_eq!(reply.headers.get_all("x-request-id").iter().count(), 1);
    assert!(is_generated_id(reply.header("x-request-id").unwrap()));
}

/// What the default (pretty) log format writes, captured for one test.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_request_id_cannot_forge_fields_in_the_log(pool: PgPool) {
    let app = TestApp::new(pool);
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // The test runs on one thread, so the request is logged here.
    let _guard = tracing::subscriber::set_default(subscriber);

    let reply = app
        .call(
            "GET",
            "/healthz",
            None,
            &[("x-request-id", "x user=admin status=500")],
        )
        .await;
    let fresh = reply.header("x-request-id").unwrap().to_owned();
    let good = app
        .call("GET", "/healthz", None, &[("x-request-id", "trace-7")])
        .await;
    assert_eq!(good.header("x-request-id"), Some("trace-7"));

    let log = captured.text();
    assert!(is_generated_id(&fresh), "{fresh}");
    assert!(log.contains(&format!("request_id={fresh}")), "{log}");
    assert!(log.contains("request_id=trace-7}"), "{log}");
    assert!(!log.contains("user=admin"), "{log}");
    assert!(!log.contains("status=500"), "{log}");
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn names_with_invisible_or_bidi_characters_are_422_naming_the_code_point(pool: PgPool) {
    let app = TestApp::new(pool);
    let cases = [
        ("invoice\u{202E}fdp.exe", "U+202E"),
        ("a\u{202A}b", "U+202A"),
        ("a\u{2066}b", "U+2066"),
        ("a\u{2069}b", "U+2069"),
        ("web\u{200B}1", "U+200B"),
        ("web\u{200D}1", "U+200D"),
        ("\u{FEFF}web", "U+FEFF"),
        ("web\u{2060}1", "U+2060"),
        ("line\u{2028}two", "U+2028"),
        ("para\u{2029}two", "U+2029"),
        ("bell\u{7}", "control"),
    ];
    for (name, expected) in cases {
        let reply = app.post_json("/api/v1/resources", instance(name)).await;
        assert_problem(&reply, 422);
        assert_eq!(
            reply.body["errors"][0]["pointer"], "/name",
            "{}",
            reply.body
        );
        let detail = reply.body["errors"][0]["detail"].as_str().unwrap();
        assert!(detail.contains(expected), "{name:?}: {detail}");
    }
    assert_eq!(app.engine.count("resources").await, 0);

    let id = app.ok_instance("web-1").await;
    let rename = app
        .patch_json(
            &format!("/api/v1/resources/{id}"),
            json!({"name": "web\u{202E}2"}),
        )
        .await;
    assert_problem(&rename, 422);
    assert!(
        rename.body["detail"].as_str().unwrap().contains("U+202E"),
        "{}",
        rename.body
    );
    // Ordinary non-ASCII names stay fine.
    let accented = app
        .post_json("/api/v1/resources", instance("café-über-東京"))
        .await;
    assert_eq!(accented.status, 201, "{}", accented.body);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn unknown_paths_under_docs_are_problem_json_404s_and_the_ui_still_loads(pool: PgPool) {
    let app = TestApp::new(pool);
    for path in [
        "/docs/nope.js",
        "/docs/a/b/c",
        "/docs/swagger-ui.css.map.missing",
    ] {
        assert_problem(&app.get(path).await, 404);
    }
    let assets = [
        ("/docs/", "text/html"),
        ("/docs/swagger-ui.css", "text/css"),
        ("/docs/swagger-ui-bundle.js", "javascript"),
        ("/docs/swagger-ui-standalone-preset.js", "javascript"),
        ("/docs/swagger-initializer.js", "javascript"),
    ];
    for (path, content_type) in assets {
        let reply = app.get(path).await;
        assert_eq!(reply.status, 200, "{path}");
        let got = reply.header("content-type").unwrap_or_default();
        assert!(got.contains(content_type), "{path}: {got}");
    }
    assert_eq!(app.get("/docs").await.status, 303);
    assert_eq!(app.get("/openapi.json").await.status, 200);
}
