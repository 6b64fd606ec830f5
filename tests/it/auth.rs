//! Authentication, roles and tenant isolation through the real router, and
//! the `tokens` command of the real binary.

#![allow(clippy::unwrap_used)] // test helpers may unwrap

use crate::support::app::{Reply, TestApp};
use serde_json::{Value, json};
use sqlx::PgPool;

async fn token(app: &TestApp, tenant: &str, role: &str) -> String {
    let (token, hash, prefix) = executord::auth::new_token();
    let mut conn = app.engine.pool.acquire().await.unwrap();
    executord::db::tokens::insert(&mut conn, "test", tenant, role, &hash, &prefix)
        .await
        .unwrap();
    format!("Bearer {token}")
}

async fn as_(app: &TestApp, auth: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
    app.call(method, path, body.as_ref(), &[("authorization", auth)])
        .await
}

fn instance(name: &str) -> Value {
    json!({"kind": "instance", "name": name, "attributes": {"tenant": "acme", "flavor": "small"}})
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn with_tokens_every_api_request_needs_a_valid_one(pool: PgPool) {
    let app = TestApp::new(pool);
    let operator = token(&app, "acme", "operator").await;

    let anonymous = app.get("/api/v1/resources").await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.header("content-type"),
        Some("application/problem+json")
    );
    assert!(
        anonymous
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(
        as_(&app, "Bearer exd_nope", "GET", "/api/v1/resources", None)
            .await
            .status,
        401
    );
    assert_eq!(
        as_(&app, "Basic abc", "GET", "/api/v1/kinds", None)
            .await
            .status,
        401
    );
    assert_eq!(
        as_(&app, &operator, "GET", "/api/v1/resources", None)
            .await
            .status,
        200
    );

    for public in ["/healthz", "/readyz", "/openapi.json", "/docs/", "/metrics"] {
        assert_eq!(app.get(public).await.status, 200, "{public}");
    }

    let prefix = &operator["Bearer ".len()..]["exd_".len()..][..8];
    assert_eq!(
        executord::db::tokens::revoke(&app.engine.pool, &format!("exd_{prefix}"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        as_(&app, &operator, "GET", "/api/v1/resources", None)
            .await
            .status,
        401
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn viewers_read_and_operators_run_executors(pool: PgPool) {
    let app = TestApp::new(pool);
    let operator = token(&app, "acme", "operator").await;
    let viewer = token(&app, "acme", "viewer").await;

    let created = as_(
        &app,
        &operator,
        "POST",
        "/api/v1/resources",
        Some(instance("web-1")),
    )
    .await;
    assert_eq!(created.status, 201);
    let id = created.body["id"].as_str().unwrap();
    assert_eq!(
        as_(
            &app,
            &viewer,
            "GET",
            &format!("/api/v1/resources/{id}"),
            None
        )
        .await
        .status,
        200
    );
    let refused = as_(
        &app,
        &viewer,
        "POST",
        "/api/v1/resources",
        Some(instance("web-2")),
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        as_(
            &app,
            &viewer,
            "DELETE",
            &format!("/api/v1/resources/{id}"),
            None
        )
        .await
        .status,
        403
    );
    assert_eq!(app.engine.count("resources").await, 1);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn another_tenants_resources_answer_404_everywhere(pool: PgPool) {
    let app = TestApp::new(pool);
    let acme = token(&app, "acme", "operator").await;
    let other = token(&app, "globex", "operator").await;
    let admin = token(&app, "ops", "admin").await;

    let created = as_(
        &app,
        &acme,
        "POST",
        "/api/v1/resources",
        Some(instance("web-1")),
    )
    .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let op = created.body["current_operation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.run_until_idle().await;
    let task = as_(
        &app,
        &acme,
        "GET",
        &format!("/api/v1/operations/{op}"),
        None,
    )
    .await
    .body["tasks"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let own = as_(
        &app,
        &other,
        "POST",
        "/api/v1/resources",
        Some(instance("mine")),
    )
    .await;
    assert_eq!(own.status, 201);

    let base = format!("/api/v1/resources/{id}");
    let attempts: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", base.clone(), None),
        ("PATCH", base.clone(), Some(json!({"name": "stolen"}))),
        ("DELETE", base.clone(), None),
        ("POST", format!("{base}/actions/stop"), Some(json!({}))),
        ("GET", format!("{base}/operations"), None),
        ("GET", format!("{base}/events"), None),
        ("GET", format!("/api/v1/operations/{op}"), None),
        ("POST", format!("/api/v1/operations/{op}/cancel"), None),
        ("POST", format!("/api/v1/operations/{op}/retry"), None),
        ("GET", format!("/api/v1/tasks/{task}"), None),
    ];
    for (method, path, body) in &attempts {
        let reply = as_(&app, &other, method, path, body.clone()).await;
        assert_eq!(reply.status, 404, "{method} {path}: {}", reply.body);
    }
    let listed = as_(&app, &other, "GET", "/api/v1/resources", None).await;
    let names: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mine"]);
    let resource = as_(&app, &acme, "GET", &base, None).await;
    assert_eq!(
        (
            resource.body["name"].as_str(),
            resource.body["state"].as_str()
        ),
        (Some("web-1"), Some("ok"))
    );

    // An admin sees every tenant.
    let all = as_(&app, &admin, "GET", "/api/v1/resources", None).await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 2);
    assert_eq!(
        as_(&app, &admin, "GET", &format!("/api/v1/tasks/{task}"), None)
            .await
            .status,
        200
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn idempotency_keys_belong_to_their_tenant(pool: PgPool) {
    let app = TestApp::new(pool);
    let acme = token(&app, "acme", "operator").await;
    let other = token(&app, "globex", "operator").await;
    let body = instance("web-1");
    let headers = |auth: &str| {
        [
            ("authorization", auth.to_owned()),
            ("idempotency-key", "same".to_owned()),
        ]
    };
    let a = headers(&acme);
    let b = headers(&other);
    let first = app
        .call(
            "POST",
            "/api/v1/resources",
            Some(&body),
            &[(a[0].0, &a[0].1), (a[1].0, &a[1].1)],
        )
        .await;
    let second = app
        .call(
            "POST",
            "/api/v1/resources",
            Some(&body),
            &[(b[0].0, &b[0].1), (b[1].0, &b[1].1)],
        )
        .await;
    assert_eq!((first.status, second.status), (201, 201));
    assert_ne!(
        first.body["id"], second.body["id"],
        "one tenant's key never replays another's response"
    );
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn the_tokens_command_prints_a_token_once_and_stores_only_its_hash(pool: PgPool) {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let base = std::env::var("DATABASE_URL").unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    let url = format!("{server}/{database}");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_executord"))
            .args(args)
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let token = run(&[
        "tokens", "create", "--tenant", "acme", "--role", "viewer", "--name", "ci",
    ])
    .trim()
    .to_owned();
    assert!(token.starts_with("exd_") && token.len() == 68, "{token}");
    let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM api_tokens")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(stored, [executord::auth::hash(&token)]);
    let listed = run(&["tokens", "list"]);
    assert!(listed.contains("acme") && listed.contains(&token[..12]) && !listed.contains(&token));
    run(&["tokens", "revoke", &token[..12]]);
    let revoked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM api_tokens WHERE revoked_at IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(revoked, 1);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn without_tokens_the_binary_refuses_a_non_loopback_address(pool: PgPool) {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let base = std::env::var("DATABASE_URL").unwrap();
    let url = format!("{}/{database}", base.rsplit_once('/').unwrap().0);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_executord"))
        .args([
            "serve",
            "--no-runner",
            "--listen",
            &format!("0.0.0.0:{port}"),
        ])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without API tokens"), "{stderr}");
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn two_authorization_headers_are_a_400_whichever_comes_first(pool: PgPool) {
    let app = TestApp::new(pool);
    let operator = token(&app, "acme", "operator").await;
    let viewer = token(&app, "acme", "viewer").await;

    for pair in [[&operator, &viewer], [&viewer, &operator]] {
        let reply = app
            .call(
                "POST",
                "/api/v1/resources",
                Some(&instance("web-1")),
                &[("authorization", pair[0]), ("authorization", pair[1])],
            )
            .await;
        assert_eq!(reply.status, 400, "{}", reply.body);
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
    }
    assert_eq!(app.engine.count("resources").await, 0);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_reused_idempotency_key_is_named_as_the_caller_sent_it(pool: PgPool) {
    let app = TestApp::new(pool);
    let tenant = "tenant-of-the-token";
    let operator = token(&app, tenant, "operator").await;
    let key = "create-web-1";
    let send = |name: &'static str| {
        let operator = operator.clone();
        let app = &app;
        async move {
            app.call(
                "POST",
                "/api/v1/resources",
                Some(&instance(name)),
                &[("authorization", &operator), ("idempotency-key", key)],
            )
            .await
        }
    };
    assert_eq!(send("web-1").await.status, 201);
    let reused = send("web-2").await;

    assert_eq!(reused.status, 422, "{}", reused.body);
    let messages = [
        reused.body["detail"].as_str().unwrap(),
        reused.body["errors"][0]["detail"].as_str().unwrap(),
    ];
    for message in messages {
        assert!(message.contains(&format!("`{key}`")), "{message}");
        assert!(
            !message.contains(tenant) && !message.contains('\u{1f}'),
            "{message}"
        );
    }
}

/// Anonymous `GET /api/v1/resources` until `status` answers, at most `within`.
async fn anonymous_until(app: &TestApp, status: u16, within: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if app.get("/api/v1/resources").await.status == status {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn revoking_the_last_token_never_opens_a_running_service(pool: PgPool) {
    let app = TestApp::new(pool);
    assert_eq!(
        app.get("/api/v1/resources").await.status,
        200,
        "no token: open"
    );
    let operator = token(&app, "acme", "operator").await;
    assert!(
        anonymous_until(&app, 401, std::time::Duration::from_secs(5)).await,
        "the first token turns authentication on"
    );

    let prefix = &operator["Bearer ".len()..][..12];
    executord::db::tokens::revoke(&app.engine.pool, prefix)
        .await
        .unwrap();
    // Longer than the service waits between two looks at the tokens table.
    assert!(
        !anonymous_until(&app, 200, std::time::Duration::from_secs(3)).await,
        "a service that authenticated never runs open again"
    );
    assert_eq!(
        as_(&app, &operator, "GET", "/api/v1/resources", None)
            .await
            .status,
        401
    );
}

/// The status of one anonymous HTTP/1.1 GET on the local `port`.
fn anonymous_get(port: u16, path: &str) -> Option<u16> {
    crate::support::process::try_http(port, "GET", path, None, std::time::Duration::from_secs(30))
        .ok()
        .map(|reply| reply.status)
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_service_started_with_tokens_stays_closed_when_the_tokens_table_is_emptied(pool: PgPool) {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let base = std::env::var("DATABASE_URL").unwrap();
    let url = format!("{}/{database}", base.rsplit_once('/').unwrap().0);
    let app = TestApp::new(pool.clone());
    token(&app, "acme", "operator").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut service = std::process::Command::new(env!("CARGO_BIN_EXE_executord"))
        .args([
            "serve",
            "--no-runner",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while anonymous_get(port, "/readyz") != Some(200) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the service did not become ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // A restore of an older backup, or a slip in psql.
    sqlx::query("DELETE FROM api_tokens")
        .execute(&pool)
        .await
        .unwrap();
    let mut answers = Vec::new();
    let asking = std::time::Instant::now();
    while asking.elapsed() < std::time::Duration::from_secs(3) {
        answers.push(anonymous_get(port, "/api/v1/resources"));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    service.kill().unwrap();
    let out = service.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);

    assert!(answers.iter().all(|a| *a == Some(401)), "{answers:?}");
    assert_eq!(
        log.matches("no active API token").count(),
        1,
        "said once, loudly: {log}"
    );
    assert!(log.contains("ERROR"), "{log}");
}
