//! The operator views (`/api/v1/system/overview`, `/api/v1/jobs`,
//! `/api/v1/whoami`) and the console's routes (`/ui`), through the real router.

use executord::domain::Queue;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{Reply, TestApp};

async fn token(app: &TestApp, tenant: &str, role: &str, name: &str) -> String {
    let (token, hash, prefix) = executord::auth::new_token();
    let mut conn = app.engine.pool.acquire().await.unwrap();
    executord::db::tokens::insert(&mut conn, name, tenant, role, &hash, &prefix)
        .await
        .unwrap();
    format!("Bearer {token}")
}

async fn get_as(app: &TestApp, auth: &str, path: &str) -> Reply {
    app.call("GET", path, None, &[("authorization", auth)])
        .await
}

fn instance(name: &str) -> Value {
    json!({"kind": "instance", "name": name, "attributes": {"tenant": "acme", "flavor": "small"}})
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn whoami_says_open_then_the_tokens_tenant_role_and_name(pool: PgPool) {
    let app = TestApp::new(pool);
    let open = app.get("/api/v1/whoami").await;
    assert_eq!(open.status, 200, "{}", open.body);
    assert_eq!(
        open.body,
        json!({"tenant": "", "role": "admin", "token_name": null, "open": true})
    );

    let viewer = token(&app, "acme", "viewer", "dashboard").await;
    let me = get_as(&app, &viewer, "/api/v1/whoami").await;
    assert_eq!(
        me.body,
        json!({"tenant": "acme", "role": "viewer", "token_name": "dashboard", "open": false})
    );
    // Once a token exists, asking without one is a 401: how the console knows to ask.
    assert_eq!(app.get("/api/v1/whoami").await.status, 401);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn the_overview_counts_queues_for_all_and_throttles_per_tenant(pool: PgPool) {
    let app = TestApp::new(pool);
    let acme = token(&app, "acme", "operator", "acme").await;
    let other = token(&app, "other", "viewer", "other").await;
    let admin = token(&app, "ops", "admin", "ops").await;
    let created = app
        .call(
            "POST",
            "/api/v1/resources",
            Some(&instance("web-1")),
            &[("authorization", &acme)],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    // begin_creating, then the throttle: acme holds a slot, create_instance is ready.
    assert_eq!(app.engine.step(Queue::Regular, 1).await, 1);
    assert_eq!(app.engine.step(Queue::Regular, 1).await, 1);

    let mine = get_as(&app, &acme, "/api/v1/system/overview").await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    let queues = mine.body["queues"].as_array().unwrap();
    assert_eq!(
        queues
            .iter()
            .map(|q| q["queue"].clone())
            .collect::<Vec<_>>(),
        vec![json!("regular"), json!("heavy"), json!("background")]
    );
    assert_eq!(queues[0]["ready"], 1, "{}", mine.body);
    let scopes = mine.body["throttle_scopes"].as_array().unwrap();
    assert_eq!(scopes.len(), 1, "{}", mine.body);
    assert_eq!(scopes[0]["tenant"], "acme");
    assert_eq!(scopes[0]["in_use"], 1);
    assert_eq!(scopes[0]["waiting"], 0);
    assert_eq!(scopes[0]["limit"], 4);
    let buckets = mine.body["operations_last_hour"]["buckets"]
        .as_array()
        .unwrap();
    assert_eq!(buckets.len(), 1, "{}", mine.body);
    assert_eq!(buckets[0]["counts"], json!({"running": 1}));

    // Another tenant sees the same queues, but none of acme's throttles or operations.
    let theirs = get_as(&app, &other, "/api/v1/system/overview").await;
    let ready = |r: &Reply| -> Vec<Value> {
        r.body["queues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["ready"].clone())
            .collect()
    };
    assert_eq!(ready(&theirs), ready(&mine));
    assert_eq!(theirs.body["throttle_scopes"], json!([]));
    assert_eq!(theirs.body["operations_last_hour"]["buckets"], json!([]));
    // An admin sees every tenant's.
    let all = get_as(&app, &admin, "/api/v1/system/overview").await;
    assert_eq!(all.body["throttle_scopes"], mine.body["throttle_scopes"]);

    app.run_until_idle().await;
    let done = get_as(&app, &acme, "/api/v1/system/overview").await;
    assert_eq!(done.body["throttle_scopes"], json!([]));
    assert_eq!(done.body["running_tasks"], json!([]));
    assert_eq!(
        done.body["operations_last_hour"]["buckets"][0]["counts"],
        json!({"succeeded": 1})
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn jobs_list_their_runs_with_summaries_for_admins_only(pool: PgPool) {
    let app = TestApp::new(pool);
    let viewer = token(&app, "acme", "viewer", "v").await;
    let admin = token(&app, "ops", "admin", "a").await;
    let mut conn = app.engine.pool.acquire().await.unwrap();
    assert!(
        executord::db::jobs::enqueue_due(
            &mut conn,
            "sweep",
            0,
            &json!({"type": "job", "job": "sweep"})
        )
        .await
        .unwrap()
    );
    drop(conn);
    assert_eq!(app.engine.step(Queue::Background, 1).await, 1);

    let jobs = get_as(&app, &admin, "/api/v1/jobs").await;
    assert_eq!(jobs.status, 200, "{}", jobs.body);
    let sweep = &jobs.body["items"][0];
    assert_eq!(sweep["name"], "sweep");
    assert!(sweep["last_enqueued_at"].is_string());
    assert_eq!(sweep["runs"][0]["state"], "succeeded");
    assert_eq!(sweep["runs"][0]["result"], json!({"swept": 0}));

    let seen = get_as(&app, &viewer, "/api/v1/jobs").await;
    assert_eq!(seen.body["items"][0]["runs"][0]["state"], "succeeded");
    assert_eq!(seen.body["items"][0]["runs"][0]["result"], Value::Null);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn the_console_is_served_at_every_ui_path_without_a_token(pool: PgPool) {
    let app = TestApp::new(pool);
    token(&app, "acme", "operator", "o").await;
    for path in [
        "/ui",
        "/ui/",
        "/ui/resources",
        "/ui/resources/0193a5c2-7f3e-7c1a-9a4e-3f1d2b8c9e01",
        "/ui/no/such/page",
    ] {
        let page = app.get(path).await;
        assert_eq!(page.status, 200, "{path}");
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8"),
            "{path}"
        );
        assert_eq!(page.header("cache-control"), Some("no-cache"));
        let csp = page.header("content-security-policy").unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        let html = page.body.as_str().unwrap();
        assert!(!html.contains("{{ASSETS}}"));
        assert!(!html.contains("<script>"), "no inline script");
    }

    let html = app.get("/ui").await.body.as_str().unwrap().to_owned();
    let script = html
        .split("src=\"")
        .find_map(|s| s.split('"').next().filter(|src| src.ends_with("/app.js")))
        .unwrap()
        .to_owned();
    let js = app.get(&script).await;
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        js.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let css = app.get(&script.replace("app.js", "style.css")).await;
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    let page = app
        .get(&script.replace("app.js", "pages/resource.js"))
        .await;
    assert_eq!(page.status, 200);
    // An old page's version still gets the file, but not for keeps.
    let stale = app.get("/ui/assets/000000000000/app.js").await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.header("cache-control"), Some("no-cache"));

    let missing = app.get(&script.replace("app.js", "nope.js")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.header("content-type"),
        Some("application/problem+json")
    );
}
