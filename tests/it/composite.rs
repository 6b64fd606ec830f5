//! Composite resources: a server created with its volumes, port and floating
//! IP in one operation, children held while their parent runs, a parent's
//! delete that deletes its children in order, compensation of a failed or
//! cancelled create, and steps that run at once.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use executord::backend::sim::SimConfig;
use executord::domain::Queue;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{Engine, TestApp, fast_runner_config};

fn server(name: &str, extra: Value) -> Value {
    let mut attributes = json!({
        "tenant": "acme", "flavor": "small", "image": "debian-12",
        "volumes": [{"size_gb": 10}, {"size_gb": 20}],
        "security_groups": ["default", "web"],
        "floating_ip": true,
    });
    if let (Some(a), Some(e)) = (attributes.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            a.insert(k.clone(), v.clone());
        }
    }
    json!({"kind": "server", "name": name, "attributes": attributes})
}

async fn objects(app: &TestApp) -> usize {
    app.engine.sim.stats().await.unwrap().objects
}

/// The method or transition each task ran, with the resource's role
/// (`server` for the parent), in position order.
async fn steps(app: &TestApp, operation: &str) -> Vec<(String, String, String)> {
    let op = app.get(&format!("/api/v1/operations/{operation}")).await;
    assert_eq!(op.status, 200, "{}", op.body);
    let parent = op.body["resource_id"].as_str().unwrap().to_owned();
    let mut out = Vec::new();
    for task in op.body["tasks"].as_array().unwrap() {
        let args = &task["args"];
        let what = args["method"]
            .as_str()
            .or(args["transition"].as_str())
            .unwrap_or(args["type"].as_str().unwrap())
            .to_owned();
        let resource = task["resource_id"].as_str().unwrap().to_owned();
        let role = if resource == parent {
            "server".to_owned()
        } else {
            let r = app.get(&format!("/api/v1/resources/{resource}")).await;
            r.body["role"].as_str().unwrap_or("gone").to_owned()
        };
        out.push((what, role, task["state"].as_str().unwrap().to_owned()));
    }
    out
}

fn position_of(steps: &[(String, String, String)], what: &str, role: &str) -> Vec<usize> {
    steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.0 == what && s.1 == role)
        .map(|(i, _)| i)
        .collect()
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_server_is_created_with_its_volumes_port_and_floating_ip_in_one_operation(pool: PgPool) {
    let app = TestApp::new(pool);
    let created = app
        .post_json("/api/v1/resources", server("web-1", json!({})))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["state"], "creation_scheduled");
    let children = created.body["children"].as_array().unwrap();
    let roles: Vec<(&str, &str, &str)> = children
        .iter()
        .map(|c| {
            (
                c["role"].as_str().unwrap(),
                c["kind"].as_str().unwrap(),
                c["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("floating_ip", "floating_ip", "creation_scheduled"),
            ("port", "port", "creation_scheduled"),
            ("volumes", "volume", "creation_scheduled"),
            ("volumes", "volume", "creation_scheduled"),
        ]
    );
    let id = created.body["id"].as_str().unwrap().to_owned();
    let volume = children[2]["id"].as_str().unwrap().to_owned();
    let child = app.get(&format!("/api/v1/resources/{volume}")).await;
    assert_eq!(child.body["parent_id"], id.as_str());
    assert_eq!(
        child.body["attributes"],
        json!({"size_gb": 10, "tenant": "acme"})
    );
    assert_eq!(child.body["name"], "web-1-volumes-1");

    app.run_until_idle().await;
    let done = app.get(&format!("/api/v1/resources/{id}")).await;
    assert_eq!(done.body["state"], "ok", "{}", done.body);
    assert_eq!(done.body["runtime_state"], "ACTIVE");
    assert_eq!(
        done.body["status"]["security_groups"],
        json!(["default", "web"])
    );
    for child in done.body["children"].as_array().unwrap() {
        assert_eq!(child["state"], "ok", "{child}");
    }
    let listed = app.get(&format!("/api/v1/resources?parent_id={id}")).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 4);
    let volume = app.get(&format!("/api/v1/resources/{volume}")).await;
    assert_eq!(volume.body["runtime_state"], "in-use", "{}", volume.body);
    assert!(volume.body["current_operation_id"].is_null());
    assert_eq!(objects(&app).await, 5);

    // The operation reads like the seed's list, each step naming its resource.
    let operation = created.body["current_operation_id"].as_str().unwrap();
    let steps = steps(&app, operation).await;
    assert!(steps.iter().all(|s| s.2 == "succeeded"), "{steps:?}");
    let first = |what: &str, role: &str| position_of(&steps, what, role)[0];
    let last = |what: &str, role: &str| *position_of(&steps, what, role).last().unwrap();
    assert_eq!(position_of(&steps, "create_volume", "volumes").len(), 2);
    assert!(last("create_volume", "volumes") < first("create_instance", "server"));
    assert!(first("create_port", "port") < first("create_instance", "server"));
    assert!(first("create_instance", "server") < first("attach_volume", "volumes"));
    assert!(last("attach_volume", "volumes") < first("set_security_groups", "server"));
    assert!(
        first("create_floating_ip", "floating_ip") < first("attach_floating_ip", "floating_ip")
    );
    assert!(first("attach_floating_ip", "floating_ip") < last("pull_volume", "volumes"));
    // History: each child has its own transitions, by the parent's operation.
    let history = app
        .get(&format!(
            "/api/v1/resources/{}/events",
            children[1]["id"].as_str().unwrap()
        ))
        .await;
    let transitions: Vec<&str> = history.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["transition"].as_str().unwrap())
        .collect();
    assert_eq!(
        transitions,
        ["create", "begin_creating", "set_ok"],
        "{}",
        history.body
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_child_cannot_be_changed_by_itself_while_its_parent_runs(pool: PgPool) {
    let app = TestApp::new(pool);
    let created = app
        .post_json("/api/v1/resources", server("web-1", json!({})))
        .await;
    let volume = created.body["children"][2]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/resources/{volume}");
    let rename = app.patch_json(&path, json!({"name": "mine"})).await;
    assert_eq!(rename.status, 409, "{}", rename.body);
    assert_eq!(app.delete(&path).await.status, 409);
    app.run_until_idle().await;
    // An action on the parent holds its children too.
    let id = created.body["id"].as_str().unwrap();
    let stop = app
        .post_json(&format!("/api/v1/resources/{id}/actions/stop"), json!({}))
        .await;
    assert_eq!(stop.status, 202, "{}", stop.body);
    let extend = app
        .post_json(&format!("{path}/actions/extend"), json!({"size_gb": 50}))
        .await;
    assert_eq!(extend.status, 409, "{}", extend.body);
    assert!(
        extend.body["detail"]
            .as_str()
            .unwrap()
            .contains("held by operation"),
        "{}",
        extend.body
    );
    app.run_until_idle().await;
    let rename = app.patch_json(&path, json!({"name": "mine"})).await;
    assert_eq!(rename.status, 202, "{}", rename.body);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn deleting_a_server_deletes_its_children_in_order_as_one_operation(pool: PgPool) {
    let app = TestApp::new(pool);
    let created = app
        .post_json("/api/v1/resources", server("web-1", json!({})))
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    app.run_until_idle().await;
    assert_eq!(objects(&app).await, 5);
    let deleted = app.delete(&format!("/api/v1/resources/{id}")).await;
    assert_eq!(deleted.status, 202, "{}", deleted.body);
    let operation = deleted.body["id"].as_str().unwrap().to_owned();
    let listed = app.get(&format!("/api/v1/resources?parent_id={id}")).await;
    for child in listed.body["items"].as_array().unwrap() {
        assert_eq!(child["state"], "deletion_scheduled");
    }
    app.run_until_idle().await;
    assert_eq!(
        app.get(&format!("/api/v1/resources/{id}")).await.status,
        404
    );
    let listed = app.get(&format!("/api/v1/resources?parent_id={id}")).await;
    assert_eq!(listed.body["items"], json!([]));
    assert_eq!(objects(&app).await, 0);
    let op = app.get(&format!("/api/v1/operations/{operation}")).await;
    assert_eq!(op.body["state"], "succeeded", "{}", op.body);
    let methods: Vec<String> = op.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["args"]["method"].as_str().map(str::to_owned))
        .collect();
    let at = |m: &str| methods.iter().position(|x| x == m).unwrap();
    let last = |m: &str| methods.iter().rposition(|x| x == m).unwrap();
    assert!(
        at("detach_floating_ip") < at("delete_instance"),
        "{methods:?}"
    );
    assert!(last("detach_volume") < at("delete_instance"));
    assert!(at("is_instance_deleted") < at("delete_port"));
    assert!(at("is_instance_deleted") < at("delete_floating_ip"));
    assert!(at("is_instance_deleted") < at("delete_volume"));
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_failed_server_is_compensated_and_leaves_nothing_behind(pool: PgPool) {
    let app = TestApp::new(pool);
    let body = server(
        "web-1",
        json!({"sim": {"fail_on": "create_instance", "message": "No valid host was found"}}),
    );
    let created = app.post_json("/api/v1/resources", body).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let children: Vec<String> = created.body["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    app.run_until_idle().await;

    let server = app.get(&format!("/api/v1/resources/{id}")).await;
    assert_eq!(server.body["state"], "erred");
    assert_eq!(server.body["error_message"], "No valid host was found");
    assert_eq!(server.body["children"], json!([]), "{}", server.body);
    assert_eq!(
        objects(&app).await,
        0,
        "the volumes and the port were deleted"
    );
    for child in &children {
        assert_eq!(
            app.get(&format!("/api/v1/resources/{child}")).await.status,
            404
        );
        let history = app.get(&format!("/api/v1/resources/{child}/events")).await;
        let last = history.body["items"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(last["transition"], "delete", "{}", history.body);
        assert_eq!(last["reason"], "undone: No valid host was found");
    }
    let operation = created.body["current_operation_id"].as_str().unwrap();
    let op = app.get(&format!("/api/v1/operations/{operation}")).await;
    assert_eq!(op.body["state"], "failed");
    assert_eq!(op.body["error"], "No valid host was found");
    let steps = steps(&app, operation).await;
    // The port and volumes were made, then deleted by the compensation;
    // the floating IP was never made, so its undo steps did nothing.
    assert!(
        !position_of(&steps, "delete_volume", "gone").is_empty(),
        "{steps:?}"
    );
    let retry = app
        .post_json(&format!("/api/v1/operations/{operation}/retry"), json!({}))
        .await;
    assert_eq!(retry.status, 409, "{}", retry.body);
    assert!(
        retry.body["detail"]
            .as_str()
            .unwrap()
            .contains("compensation ran"),
        "{}",
        retry.body
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn an_undo_that_fails_leaves_its_child_erred_and_the_rest_undone(pool: PgPool) {
    let app = TestApp::new(pool);
    let body = server(
        "web-1",
        json!({
            "sim": {"fail_on": "create_instance"},
            "volumes": [{"size_gb": 10, "sim": {"fail_on": "delete_volume", "message": "volume is stuck"}}, {"size_gb": 20}],
        }),
    );
    let created = app.post_json("/api/v1/resources", body).await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    app.run_until_idle().await;
    let server = app.get(&format!("/api/v1/resources/{id}")).await;
    assert_eq!(server.body["state"], "erred");
    let children = server.body["children"].as_array().unwrap();
    assert_eq!(children.len(), 1, "{}", server.body);
    let stuck = app
        .get(&format!(
            "/api/v1/resources/{}",
            children[0]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(stuck.body["state"], "erred");
    assert_eq!(stuck.body["error_message"], "volume is stuck");
    assert!(stuck.body["current_operation_id"].is_null());
    assert_eq!(
        objects(&app).await,
        1,
        "only the stuck volume is left, and it is tracked"
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_cancel_mid_chain_winds_down_and_undoes_what_was_made(pool: PgPool) {
    let app = TestApp::new(pool);
    let created = app
        .post_json("/api/v1/resources", server("web-1", json!({})))
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let operation = created.body["current_operation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Run a few rounds by hand: the volumes and the port get made.
    for _ in 0..6 {
        app.engine.step(Queue::Regular, 10).await;
    }
    assert!(objects(&app).await > 0);
    let cancel = app
        .post_json(&format!("/api/v1/operations/{operation}/cancel"), json!({}))
        .await;
    assert_eq!(cancel.status, 200, "{}", cancel.body);
    assert!(
        ["compensating", "cancelled"].contains(&cancel.body["state"].as_str().unwrap()),
        "{}",
        cancel.body
    );
    app.run_until_idle().await;
    let op = app.get(&format!("/api/v1/operations/{operation}")).await;
    assert_eq!(op.body["state"], "cancelled", "{}", op.body);
    let server = app.get(&format!("/api/v1/resources/{id}")).await;
    assert_eq!(server.body["state"], "erred");
    assert_eq!(server.body["children"], json!([]));
    assert_eq!(objects(&app).await, 0);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn independent_steps_run_at_once(pool: PgPool) {
    let sim = SimConfig {
        latency: Duration::from_millis(300),
        transition_delay: Duration::ZERO,
        ..SimConfig::default()
    };
    let engine = Engine::with(pool, sim, None, fast_runner_config());
    let app = TestApp::over(engine);
    let created = app
        .post_json("/api/v1/resources", server("web-1", json!({})))
        .await;
    let operation = created.body["current_operation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.run_until_idle().await;
    let op = app.get(&format!("/api/v1/operations/{operation}")).await;
    assert_eq!(op.body["state"], "succeeded", "{}", op.body);
    let spans: Vec<(
        String,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    )> = op.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            ["create_volume", "create_port"].contains(&t["args"]["method"].as_str().unwrap_or(""))
        })
        .map(|t| {
            (
                t["args"]["method"].as_str().unwrap().to_owned(),
                t["started_at"].as_str().unwrap().parse().unwrap(),
                t["finished_at"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(spans.len(), 3, "{spans:?}");
    // Every pair of the three creates overlapped in time: none waited for another.
    for a in &spans {
        for b in &spans {
            assert!(a.1 < b.2 && b.1 < a.2, "{a:?} and {b:?} did not overlap");
        }
    }
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn unlinking_a_server_forgets_its_children_and_leaves_the_cloud_alone(pool: PgPool) {
    let app = TestApp::new(pool);
    let created = app
        .post_json("/api/v1/resources", server("web-1", json!({})))
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    app.run_until_idle().await;
    let unlinked = app
        .post_json(
            &format!("/api/v1/resources/{id}/unlink"),
            json!({"reason": "moved to another service"}),
        )
        .await;
    assert_eq!(unlinked.status, 204, "{}", unlinked.body);
    for child in created.body["children"].as_array().unwrap() {
        let child = child["id"].as_str().unwrap();
        assert_eq!(
            app.get(&format!("/api/v1/resources/{child}")).await.status,
            404
        );
    }
    assert_eq!(
        objects(&app).await,
        5,
        "the backend objects were not touched"
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_child_s_bad_attributes_are_a_422_pointing_into_the_parent_s_request(pool: PgPool) {
    let app = TestApp::new(pool);
    let body = server(
        "web-1",
        json!({"volumes": [{"size_gb": 10}, {"size_gb": 0}, {"size": 5}]}),
    );
    let refused = app.post_json("/api/v1/resources", body).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    let pointers: Vec<&str> = refused.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert!(
        pointers.contains(&"/attributes/volumes/1/size_gb"),
        "{pointers:?}"
    );
    assert!(
        pointers
            .iter()
            .any(|p| p.starts_with("/attributes/volumes/2")),
        "{pointers:?}"
    );
    assert!(
        !pointers
            .iter()
            .any(|p| p.starts_with("/attributes/volumes/0")),
        "{pointers:?}"
    );
    let listed = app.get("/api/v1/resources").await;
    assert_eq!(listed.body["items"], json!([]), "nothing was created");
}
