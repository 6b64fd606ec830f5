//! Adopting and reconciling through the HTTP API (real router, real
//! PostgreSQL): import, pull on demand, the periodic pull's drift, operator
//! overrides and errors explained; against the sim and against the fake
//! cloud over HTTP, including changes made behind executord's back.

#![allow(clippy::unwrap_used, clippy::needless_pass_by_value)] // tests may unwrap

use std::sync::Arc;

use executord::backend::sim::{Sim, SimConfig};
use executord::db;
use executord::domain::Queue;
use executord::fakecloud::{FakeCloud, router};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{Engine, Reply, TestApp, fast_runner_config};

/// The fake cloud served on a free port, and an app whose catalog reaches it
/// through the `http` driver.
async fn over_fake_cloud(pool: PgPool) -> (TestApp, Arc<FakeCloud>, String) {
    let cloud = Arc::new(FakeCloud::new(Sim::new(SimConfig::instant())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(cloud.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/catalogs/fake-cloud.toml"
    ))
    .unwrap()
    .replace("${env:FAKE_CLOUD_URL}", &url);
    let engine = Engine::with(
        pool,
        SimConfig::instant(),
        Some(&text),
        fast_runner_config(),
    );
    (TestApp::over(engine), cloud, url)
}

async fn events(app: &TestApp, id: &str) -> Vec<Value> {
    let reply = app.get(&format!("/api/v1/resources/{id}/events")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["items"].as_array().unwrap().clone()
}

fn transitions(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["transition"].as_str().unwrap())
        .collect()
}

async fn resource(app: &TestApp, id: &str) -> Reply {
    app.get(&format!("/api/v1/resources/{id}")).await
}

async fn run_pull_job(app: &TestApp) -> Value {
    let mut conn = app.engine.pool.acquire().await.unwrap();
    let args = json!({"type": "job", "job": "pull"});
    assert!(
        db::jobs::enqueue_due(&mut conn, "pull", 0, &args)
            .await
            .unwrap()
    );
    drop(conn);
    assert_eq!(app.engine.step(Queue::Background, 1).await, 1);
    sqlx::query_scalar("SELECT result FROM tasks WHERE job = 'pull' AND state = 'succeeded' ORDER BY finished_at DESC LIMIT 1")
        .fetch_one(&app.engine.pool)
        .await
        .unwrap()
}

fn reason(text: &str) -> Value {
    json!({"reason": text})
}

/// Unlinks a managed instance (its object stays), then finds and imports it
/// again; a second import of the same object is a 409.
async fn unlink_list_and_import(app: &TestApp) {
    let id = app.ok_instance("web-1").await;
    let backend_id = resource(app, &id).await.body["backend_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let listed = app.get("/api/v1/kinds/instance/importable").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(
        listed.body["items"],
        json!([]),
        "a managed object is not importable"
    );

    let no_reason = app
        .post_json(&format!("/api/v1/resources/{id}/unlink"), json!({}))
        .await;
    assert_eq!(no_reason.status, 422, "{}", no_reason.body);
    let unlinked = app
        .post_json(
            &format!("/api/v1/resources/{id}/unlink"),
            reason("moving it"),
        )
        .await;
    assert_eq!(unlinked.status, 204, "{}", unlinked.body);
    assert_eq!(resource(app, &id).await.status, 404);
    let history = events(app, &id).await;
    let last = history.last().unwrap();
    assert_eq!(last["transition"], "unlink");
    assert_eq!(last["reason"], "moving it");
    assert_eq!(last["details"]["actor"]["role"], "admin");

    let listed = app.get("/api/v1/kinds/instance/importable").await;
    assert_eq!(listed.body["items"][0]["backend_id"], backend_id.as_str());
    assert_eq!(listed.body["items"][0]["runtime_state"], "ACTIVE");

    let import = json!({"kind": "instance", "name": "adopted", "backend_id": backend_id,
        "attributes": {"tenant": "acme", "flavor": "small"}});
    let imported = app
        .post_json("/api/v1/resources/import", import.clone())
        .await;
    assert_eq!(imported.status, 201, "{}", imported.body);
    let new_id = imported.body["id"].as_str().unwrap().to_owned();
    assert_eq!(imported.body["state"], "creation_scheduled");
    app.run_until_idle().await;
    let adopted = resource(app, &new_id).await;
    assert_eq!(adopted.body["state"], "ok", "{}", adopted.body);
    assert_eq!(adopted.body["runtime_state"], "ACTIVE");
    assert_eq!(adopted.body["status"]["flavor"], "small");
    let operations = app
        .get(&format!("/api/v1/resources/{new_id}/operations"))
        .await;
    assert_eq!(operations.body["items"][0]["kind"], "import");
    assert_eq!(operations.body["items"][0]["state"], "succeeded");

    let again = app.post_json("/api/v1/resources/import", import).await;
    assert_eq!(again.status, 409, "{}", again.body);
    let listed = app.get("/api/v1/kinds/instance/importable").await;
    assert_eq!(listed.body["items"], json!([]));
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn an_unlinked_instance_is_listed_and_imported_again_once_on_the_sim(pool: PgPool) {
    unlink_list_and_import(&TestApp::new(pool)).await;
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn an_unlinked_instance_is_listed_and_imported_again_once_over_the_fake_cloud(pool: PgPool) {
    let (app, _cloud, _url) = over_fake_cloud(pool).await;
    unlink_list_and_import(&app).await;
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn importing_a_missing_object_fails_with_the_backends_message_and_leaves_no_resource(
    pool: PgPool,
) {
    let (app, _cloud, _url) = over_fake_cloud(pool).await;
    let imported = app
        .post_json(
            "/api/v1/resources/import",
            json!({"kind": "volume", "name": "ghost", "backend_id": "sim-nothing",
                "attributes": {"tenant": "acme", "size_gb": 1}}),
        )
        .await;
    assert_eq!(imported.status, 201, "{}", imported.body);
    let id = imported.body["id"].as_str().unwrap().to_owned();
    let op = imported.body["current_operation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.run_until_idle().await;
    assert_eq!(resource(&app, &id).await.status, 404);
    let operation = app.get(&format!("/api/v1/operations/{op}")).await;
    assert_eq!(operation.body["state"], "failed", "{}", operation.body);
    let failed = operation.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == "failed")
        .unwrap()
        .clone();
    assert_eq!(failed["error_details"]["class"], "not_found", "{failed}");
    assert_eq!(failed["error_details"]["http_status"], 404);
    assert!(
        failed["error_details"]["body"]
            .as_str()
            .unwrap()
            .contains("sim-nothing")
    );
    let task = app
        .get(&format!("/api/v1/tasks/{}", failed["id"].as_str().unwrap()))
        .await;
    assert_eq!(task.body["error_details"], failed["error_details"]);
    let history = events(&app, &id).await;
    assert_eq!(
        transitions(&history),
        ["import", "begin_creating", "import_failed"]
    );
    // The same object may be imported again later.
    let listed = app.get("/api/v1/resources?kind=volume").await;
    assert_eq!(listed.body["items"], json!([]));
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn pull_on_demand_sees_a_change_made_behind_our_back_and_is_refused_while_busy(pool: PgPool) {
    let app = TestApp::new(pool);
    let id = app.ok_instance("web-1").await;
    let backend_id = resource(&app, &id).await.body["backend_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resized = json!({"flavor": "large"});
    assert!(
        app.engine
            .sim
            .tamper(&backend_id, Some("SHUTOFF"), resized.as_object().unwrap())
            .await
            .unwrap()
    );
    let pulled = app
        .post_json(&format!("/api/v1/resources/{id}/pull"), json!({}))
        .await;
    assert_eq!(pulled.status, 202, "{}", pulled.body);
    assert_eq!(pulled.body["kind"], "pull");
    let busy = app
        .post_json(&format!("/api/v1/resources/{id}/pull"), json!({}))
        .await;
    assert_eq!(busy.status, 409, "{}", busy.body);
    app.run_until_idle().await;
    let now = resource(&app, &id).await;
    assert_eq!(now.body["state"], "ok");
    assert_eq!(now.body["runtime_state"], "SHUTOFF");
    assert_eq!(now.body["status"]["flavor"], "large");
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn the_periodic_pull_notices_a_stop_a_resize_and_a_deletion_made_in_the_fake_cloud(
    pool: PgPool,
) {
    let (app, _cloud, url) = over_fake_cloud(pool).await;
    let (a, b) = (app.ok_instance("a").await, app.ok_instance("b").await);
    let backend = |id: String| {
        let app = &app;
        async move {
            resource(app, &id).await.body["backend_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (a_backend, b_backend) = (backend(a.clone()).await, backend(b.clone()).await);
    let client = reqwest::Client::new();
    let changed = client
        .patch(format!("{url}/admin/objects/{a_backend}"))
        .json(&json!({"runtime_state": "SHUTOFF", "attributes": {"flavor": "large"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 204);
    let gone = client
        .delete(format!("{url}/admin/objects/{b_backend}"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 204);

    let summary = run_pull_job(&app).await;
    assert_eq!(summary["updated"], 1, "{summary}");
    assert_eq!(summary["erred"], 1, "{summary}");

    let a_now = resource(&app, &a).await;
    assert_eq!(a_now.body["state"], "ok");
    assert_eq!(a_now.body["runtime_state"], "SHUTOFF");
    assert_eq!(a_now.body["status"]["flavor"], "large");
    let history = events(&app, &a).await;
    let drift = history.last().unwrap();
    assert_eq!(drift["transition"], "drift");
    assert_eq!(drift["details"]["before"]["runtime_state"], "ACTIVE");
    assert_eq!(drift["details"]["before"]["status"]["flavor"], "small");
    assert_eq!(drift["details"]["after"]["runtime_state"], "SHUTOFF");
    assert_eq!(drift["details"]["after"]["status"]["flavor"], "large");

    let b_now = resource(&app, &b).await;
    assert_eq!(b_now.body["state"], "erred");
    assert!(
        b_now.body["error_message"]
            .as_str()
            .unwrap()
            .contains("gone")
    );

    // Nothing changed since: a second pull records nothing new.
    let summary = run_pull_job(&app).await;
    assert_eq!(summary["updated"], 0, "{summary}");
    assert_eq!(events(&app, &a).await.len(), history.len());
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_failed_step_explains_itself_with_the_backends_status_and_body(pool: PgPool) {
    let (app, _cloud, _url) = over_fake_cloud(pool).await;
    let created = app
        .post_json(
            "/api/v1/resources",
            json!({"kind": "instance", "name": "doomed", "attributes": {"tenant": "acme", "flavor": "small",
                "sim": {"fail_on": "create_instance", "message": "No valid host was found"}}}),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let op = created.body["current_operation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.run_until_idle().await;
    let operation = app.get(&format!("/api/v1/operations/{op}")).await;
    let failed = operation.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == "failed")
        .unwrap()
        .clone();
    let details = &failed["error_details"];
    assert_eq!(details["class"], "permanent", "{failed}");
    assert_eq!(details["http_status"], 400);
    assert_eq!(details["method"], "create_instance");
    assert_eq!(details["message"], "No valid host was found");
    assert!(details["body"].as_str().unwrap().contains("No valid host"));
    let erred = resource(&app, &id).await;
    assert_eq!(erred.body["state"], "erred");
    assert_eq!(erred.body["error_details"], *details);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn overrides_need_an_admin_and_a_reason_and_name_who_did_them(pool: PgPool) {
    let app = TestApp::new(pool);
    let id = app.ok_instance("web-1").await;
    let mut conn = app.engine.pool.acquire().await.unwrap();
    for (name, role, token) in [
        ("alice", "admin", "exd_admin_token_for_tests"),
        ("olga", "operator", "exd_operator_token_for_tests"),
    ] {
        let hash = executord::auth::hash(token);
        db::tokens::insert(&mut conn, name, "acme", role, &hash, &token[..8])
            .await
            .unwrap();
    }
    drop(conn);
    let as_ = |token: &'static str| [("authorization", format!("Bearer {token}"))];
    let post = |path: String, body: Value, token: &'static str| {
        let app = &app;
        async move {
            let header = as_(token);
            let headers: Vec<(&str, &str)> = header.iter().map(|(n, v)| (*n, v.as_str())).collect();
            app.call("POST", &path, Some(&body), &headers).await
        }
    };
    let path = |what: &str| format!("/api/v1/resources/{id}/{what}");
    let operator = post(
        path("set_erred"),
        reason("x"),
        "exd_operator_token_for_tests",
    )
    .await;
    assert_eq!(operator.status, 403, "{}", operator.body);
    let admin = "exd_admin_token_for_tests";
    let no_reason = post(path("set_erred"), json!({"reason": "  "}), admin).await;
    assert_eq!(no_reason.status, 422, "{}", no_reason.body);
    let erred = post(
        path("set_erred"),
        reason("disk failing, ticket OPS-1"),
        admin,
    )
    .await;
    assert_eq!(erred.status, 200, "{}", erred.body);
    assert_eq!(erred.body["state"], "erred");
    assert_eq!(erred.body["error_message"], "disk failing, ticket OPS-1");
    let ok = post(path("set_ok"), reason("replaced the disk"), admin).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["state"], "ok");
    assert_eq!(ok.body["error_message"], Value::Null);

    let history = app
        .call(
            "GET",
            &format!("/api/v1/resources/{id}/events"),
            None,
            &[("authorization", "Bearer exd_admin_token_for_tests")],
        )
        .await;
    let items = history.body["items"].as_array().unwrap();
    let last_two: Vec<&Value> = items.iter().rev().take(2).collect();
    assert_eq!(last_two[0]["transition"], "set_ok");
    assert_eq!(last_two[0]["reason"], "replaced the disk");
    assert_eq!(last_two[1]["transition"], "set_erred");
    assert_eq!(last_two[1]["details"]["actor"]["token"]["name"], "alice");
    assert_eq!(last_two[1]["details"]["actor"]["role"], "admin");

    // While an operation is in flight an override is refused.
    let pull = post(path("pull"), json!({}), admin).await;
    assert_eq!(pull.status, 202, "{}", pull.body);
    let busy = post(path("set_ok"), reason("now"), admin).await;
    assert_eq!(busy.status, 409, "{}", busy.body);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_forced_delete_removes_the_record_even_when_the_backend_fails(pool: PgPool) {
    let app = TestApp::new(pool);
    let created = app
        .post_json(
            "/api/v1/resources",
            json!({"kind": "instance", "name": "stuck", "attributes": {"tenant": "acme", "flavor": "small",
                "sim": {"fail_on": "delete_instance", "message": "volume attached"}}}),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    app.run_until_idle().await;
    let no_reason = app
        .delete(&format!("/api/v1/resources/{id}?force=true"))
        .await;
    assert_eq!(no_reason.status, 422, "{}", no_reason.body);
    let forced = app
        .delete(&format!("/api/v1/resources/{id}?force=true&reason=cleanup"))
        .await;
    assert_eq!(forced.status, 202, "{}", forced.body);
    app.run_until_idle().await;
    let op = forced.body["id"].as_str().unwrap();
    let operation = app.get(&format!("/api/v1/operations/{op}")).await;
    assert_eq!(operation.body["state"], "failed");
    assert_eq!(resource(&app, &id).await.status, 404);
    let history = events(&app, &id).await;
    let names = transitions(&history);
    assert!(names.contains(&"force_delete_requested"), "{names:?}");
    let last = history.last().unwrap();
    assert_eq!(last["transition"], "force_delete");
    assert_eq!(last["reason"], "volume attached");
    assert_eq!(last["details"]["class"], "permanent");
}
