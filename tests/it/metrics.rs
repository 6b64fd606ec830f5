//! `/metrics` reflects the work done.

#![allow(clippy::unwrap_used)] // test helpers may unwrap

use crate::support::app::TestApp;
use serde_json::json;
use sqlx::PgPool;

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn metrics_reflect_operations_tasks_queues_and_requests(pool: PgPool) {
    let app = TestApp::new(pool);
    let id = app.ok_instance("web-1").await;
    // A second create stays queued, so the ready gauge has something to count.
    let queued = app
        .post_json(
            "/api/v1/resources",
            json!({"kind": "volume", "name": "v", "attributes": {"tenant": "a", "size_gb": 1}}),
        )
        .await;
    assert_eq!(queued.status, 201);
    assert_eq!(
        app.get(&format!("/api/v1/resources/{id}")).await.status,
        200
    );

    let reply = app.get("/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = reply.body.as_str().unwrap().to_owned();
    assert!(
        value(
            &text,
            r#"executord_operations_total{kind="create",outcome="succeeded"}"#
        ) >= 1.0
    );
    assert_eq!(
        value(&text, r#"executord_tasks_ready{queue="regular"}"#),
        1.0
    );
    assert_eq!(
        value(&text, r#"executord_tasks_running{queue="regular"}"#),
        0.0
    );
    assert!(
        value(
            &text,
            r#"executord_oldest_ready_task_age_seconds{queue="regular"}"#
        ) >= 0.0
    );
    assert!(
        value(
            &text,
            r#"executord_task_duration_seconds_count{type="backend_method",outcome="succeeded"}"#
        ) >= 1.0
    );
    // Every outcome went through a recording transaction: at least one each.
    let recordings = value(&text, "executord_recording_transactions_total");
    let outcomes = value(&text, "executord_outcomes_recorded_total");
    assert!(
        recordings >= 1.0 && outcomes >= recordings,
        "{recordings} {outcomes}"
    );
    assert!(
        value(
            &text,
            r#"executord_http_requests_total{method="POST",route="/api/v1/resources",status="201"}"#
        ) >= 2.0
    );
    assert!(
        value(
            &text,
            r#"executord_http_requests_total{method="GET",route="/api/v1/resources/{id}",status="200"}"#
        ) >= 1.0
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn made_up_methods_and_paths_add_no_metric_series(pool: PgPool) {
    let app = TestApp::new(pool);
    for i in 0..50 {
        let method = format!("BREW{i}");
        let on_route = app.call(&method, "/api/v1/resources", None, &[]).await;
        assert_eq!(on_route.status, 405);
        let nowhere = app.call(&method, &format!("/nowhere/{i}"), None, &[]).await;
        assert_eq!(nowhere.status, 404);
        app.get(&format!("/api/v1/nothing-{i}")).await;
    }

    let text = app.get("/metrics").await.body.as_str().unwrap().to_owned();
    assert!(!text.contains("BREW"), "{text}");
    assert!(
        !text.contains("nowhere") && !text.contains("nothing-"),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"executord_http_requests_total{method="other",route="/api/v1/resources",status="405"}"#
        ),
        50.0
    );
    assert_eq!(
        value(
            &text,
            r#"executord_http_requests_total{method="other",route="unmatched",status="404"}"#
        ),
        50.0
    );
    assert_eq!(
        value(
            &text,
            r#"executord_http_requests_total{method="GET",route="unmatched",status="404"}"#
        ),
        50.0
    );
    let series = text
        .lines()
        .filter(|l| l.starts_with("executord_http_requests_total{"))
        .count();
    assert!(series <= 4, "{series} series:\n{text}");
}
