//! The `http` driver against real HTTP servers on loopback: a scripted
//! server in the test (each answer chosen by the test, each request kept
//! for a look), and `executord fake-cloud` as a real process behind the
//! real `serve` and `worker` binaries. The contract's JSON Schemas in
//! `docs/` are checked against what the driver sends and the fake cloud
//! answers.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::app::{Engine, fast_runner_config};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use executord::backend::sim::SimConfig;
use executord::backend::{Backend, BackendCall, BackendError, Backends, ResourceView};
use executord::catalog::Catalog;
use executord::domain::{Queue, ResourceState};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// One answer of the scripted server.
#[derive(Clone)]
enum Answer {
    Plain {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    },
    /// `bytes` bytes of JSON-looking text in chunks, without a length.
    Stream(usize),
    /// Never answers.
    Hang,
}

fn answer(status: u16, body: &Value) -> Answer {
    Answer::Plain {
        status,
        headers: vec![("content-type", "application/json".to_owned())],
        body: body.to_string().into_bytes(),
    }
}

fn raw(status: u16, body: &str) -> Answer {
    Answer::Plain {
        status,
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    }
}

fn problem(status: u16, detail: &str) -> Answer {
    Answer::Plain {
        status,
        headers: vec![("content-type", "application/problem+json".to_owned())],
        body: json!({"type": "about:blank", "title": "Nope", "status": status, "detail": detail})
            .to_string()
            .into_bytes(),
    }
}

fn with_header(answer: Answer, name: &'static str, value: &str) -> Answer {
    match answer {
        Answer::Plain {
            status,
            mut headers,
            body,
        } => {
            headers.push((name, value.to_owned()));
            Answer::Plain {
                status,
                headers,
                body,
            }
        }
        other => other,
    }
}

/// A request the scripted server received.
#[derive(Debug, Clone)]
struct Seen {
    /// The client's end of the connection.
    peer: std::net::SocketAddr,
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct Script {
    answers: VecDeque<Answer>,
    seen: Vec<Seen>,
}

/// An HTTP server on 127.0.0.1 that answers from a queue (`{}` when it is
/// empty) and keeps every request.
#[derive(Clone)]
struct Scripted {
    url: String,
    script: Arc<Mutex<Script>>,
}

impl Scripted {
    /// Serves on the current runtime.
    async fn start() -> Self {
        let script = Arc::new(Mutex::new(Script::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(serve_scripted)
            .with_state(script.clone());
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, script }
    }

    fn push(&self, answer: Answer) -> &Self {
        self.script.lock().unwrap().answers.push_back(answer);
        self
    }

    /// Drops the answers not given yet.
    fn clear(&self) {
        self.script.lock().unwrap().answers.clear();
    }

    fn seen(&self) -> Vec<Seen> {
        self.script.lock().unwrap().seen.clone()
    }
}

async fn serve_scripted(
    State(script): State<Arc<Mutex<Script>>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let next = {
        let mut script = script.lock().unwrap();
        script.seen.push(Seen {
            peer,
            method,
            uri: uri.to_string(),
            headers,
            body: body.to_vec(),
        });
        script.answers.pop_front()
    };
    match next.unwrap_or_else(|| answer(200, &json!({}))) {
        Answer::Plain {
            status,
            headers,
            body,
        } => {
            let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
        Answer::Stream(bytes) => {
            let chunk = Bytes::from(vec![b' '; 64 * 1024]);
            let chunks = (0..bytes.div_ceil(chunk.len()))
                .map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
            Response::new(Body::from_stream(futures::stream::iter(chunks)))
        }
        Answer::Hang => std::future::pending().await,
    }
}

const KIND: &str = r#"
[kinds.thing]
backend = "web"
pull_method = "look"
schema = { type = "object" }
create = [{ type = "backend_method", method = "make" }]
delete = [
  { type = "backend_method", method = "drop" },
  { type = "poll_backend_check", method = "gone", interval_ms = 10 },
]
"#;

/// A catalog with the backend `web` at `base` speaking the generic
/// contract, `extra` lines in its table, and the kind `thing` on it.
fn generic_catalog(base: &str, extra: &str) -> String {
    format!(
        r#"
[backends.web]
driver = "http"
base_url = "{base}/v1/"
headers = {{ X-Team = "blue" }}
runtime_states = ["up", "down"]
{extra}

[backends.web.methods]
make = {{ role = "effect" }}
look = {{ role = "pull" }}
gone = {{ role = "check" }}
drop = {{ role = "effect", path = "/things/drop", not_found = "success" }}
{KIND}"#
    )
}

/// The backend `web` a catalog declares.
fn declared(catalog: &str) -> Arc<dyn Backend> {
    let catalog = Catalog::parse(catalog, &Backends::new()).unwrap();
    catalog.declared_backends().get("web").unwrap().clone()
}

fn call_on(name: &str, backend_id: Option<&str>, attributes: Value, params: Value) -> BackendCall {
    BackendCall {
        idempotency_key: Uuid::now_v7(),
        resource: ResourceView {
            id: Uuid::now_v7(),
            kind: "thing".to_owned(),
            name: name.to_owned(),
            backend_id: backend_id.map(str::to_owned),
            runtime_state: None,
            attributes,
            status: json!({}),
        },
        parent: None,
        params,
    }
}

fn schema(name: &str) -> jsonschema::Validator {
    let path = format!("{}/docs/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn assert_valid(validator: &jsonschema::Validator, instance: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path().as_str()))
        .collect();
    assert!(errors.is_empty(), "{instance}: {errors:?}");
}

/// The value of the series `name` (with its labels) in Prometheus text;
/// the recorder is the process's, so other tests' calls may add to it.
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

fn engine(pool: PgPool, catalog: &str) -> Engine {
    Engine::with(
        pool,
        SimConfig::instant(),
        Some(catalog),
        fast_runner_config(),
    )
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn the_generic_contract_posts_the_call_and_the_reply_lands_in_the_resource_status(
    pool: PgPool,
) {
    let metrics = executord::metrics::install();
    let web = Scripted::start().await;
    let engine = engine(pool, &generic_catalog(&web.url, ""));
    let reply = json!({
        "backend_id": "b-1", "runtime_state": "up",
        "status": {"ip": "10.0.0.7"}, "unknown": "ignored"
    });
    web.push(answer(201, &reply));
    let attributes = json!({"size": 3, "tags": ["a"]});
    let applied = engine.create("thing", "t-1", attributes.clone()).await;
    engine.drain().await;

    let resource = engine.resource(applied.resource.id).await.unwrap();
    assert_eq!(resource.state, ResourceState::Ok);
    assert_eq!(resource.backend_id.as_deref(), Some("b-1"));
    assert_eq!(resource.runtime_state.as_deref(), Some("up"));
    assert_eq!(resource.status, json!({"ip": "10.0.0.7"}));
    assert_eq!(
        resource.attributes, attributes,
        "never merged into attributes"
    );
    let task = &engine.tasks(applied.operation.id).await[1];
    let seen = web.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, Method::POST);
    assert_eq!(request.uri, "/v1/make");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.header("idempotency-key"),
        Some(task.id.to_string().as_str())
    );
    assert_eq!(request.header("x-team"), Some("blue"));
    assert_eq!(
        request.json(),
        json!({
            "method": "make",
            "idempotency_key": task.id,
            "resource": {
                "id": resource.id, "kind": "thing", "name": "t-1", "backend_id": null,
                "runtime_state": null, "attributes": attributes, "status": {}
            },
            "params": {"name": "t-1", "attributes": attributes}
        })
    );
    assert_valid(&schema("backend-request.schema.json"), &request.json());
    assert_valid(&schema("backend-reply.schema.json"), &reply);

    // The next call carries what the backend reported; the delete's path is its own.
    web.push(answer(200, &json!({})))
        .push(answer(200, &json!({"done": true})));
    let delete = executord::executor::Delete::new(&engine.catalog, resource.id, None);
    engine.apply(delete).await.unwrap();
    engine.drain().await;
    assert!(engine.resource(resource.id).await.is_none());
    let seen = web.seen();
    assert_eq!(seen[1].uri, "/v1/things/drop");
    assert_eq!(
        seen[1].json()["resource"]["status"],
        json!({"ip": "10.0.0.7"})
    );
    assert_eq!(seen[1].json()["resource"]["backend_id"], "b-1");
    assert_eq!(seen[2].uri, "/v1/gone");
    for request in &seen {
        assert_valid(&schema("backend-request.schema.json"), &request.json());
    }
    let peers: std::collections::HashSet<_> = seen.iter().map(|s| s.peer).collect();
    assert_eq!(peers.len(), 1, "one kept-alive connection: {peers:?}");
    let calls = r#"executord_backend_calls_total{backend="web",method="make"}"#;
    assert!(counter(&metrics.render(), calls) >= 1.0);
}

#[tokio::test]
async fn a_404_is_not_found_unless_the_method_says_not_found_is_success() {
    let web = Scripted::start().await;
    let backend = declared(&generic_catalog(&web.url, ""));
    web.push(problem(404, "no thing b-9"))
        .push(raw(404, ""))
        .push(problem(404, "no thing b-9"));
    let look = || call_on("t", Some("b-9"), json!({}), json!({}));
    let error = backend.call("look", look()).await.unwrap_err();
    assert_eq!(error, BackendError::NotFound("no thing b-9".to_owned()));
    let error = backend.call("look", look()).await.unwrap_err();
    assert_eq!(
        error,
        BackendError::NotFound("`look` answered 404 Not Found".to_owned())
    );
    let reply = backend.call("drop", look()).await.unwrap();
    assert_eq!(reply, Default::default());
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_429_with_retry_after_is_retried_no_sooner_than_it_asks(pool: PgPool) {
    let web = Scripted::start().await;
    let engine = engine(pool.clone(), &generic_catalog(&web.url, ""));
    web.push(with_header(problem(429, "slow down"), "retry-after", "3"));
    let applied = engine.create("thing", "t-1", json!({})).await;
    for _ in 0..3 {
        engine.step(Queue::Regular, 10).await;
    }
    let task = &engine.tasks(applied.operation.id).await[1];
    assert_eq!(task.attempts, 1);
    assert_eq!(
        task.last_error.as_deref(),
        Some("`make` answered 429 Too Many Requests: slow down")
    );
    let wait: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM run_at - now())::float8 FROM tasks WHERE id = $1",
    )
    .bind(task.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        (2.0..=3.5).contains(&wait),
        "retried in {wait} s, not the 10 ms backoff"
    );

    // An HTTP date works too, and the driver says how long it asked for.
    let backend = declared(&generic_catalog(&web.url, ""));
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
    web.push(with_header(raw(503, ""), "retry-after", &date));
    let error = backend
        .call("make", call_on("t", None, json!({}), json!({})))
        .await
        .unwrap_err();
    let asked = error.retry_after().unwrap();
    assert!(
        asked > Duration::from_secs(27) && asked <= Duration::from_secs(30),
        "{asked:?}"
    );
    assert_eq!(error.to_string(), "`make` answered 503 Service Unavailable");
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_503_and_a_refused_connection_are_retried_and_the_step_then_succeeds(pool: PgPool) {
    let web = Scripted::start().await;
    let engine = engine(pool, &generic_catalog(&web.url, ""));
    web.push(problem(503, "maintenance"))
        .push(raw(502, "bad gateway"))
        .push(answer(200, &json!({"backend_id": "b-2"})));
    let applied = engine.create("thing", "t-1", json!({})).await;
    engine.drain().await;
    let resource = engine.resource(applied.resource.id).await.unwrap();
    assert_eq!(resource.state, ResourceState::Ok);
    assert_eq!(resource.backend_id.as_deref(), Some("b-2"));
    let task = &engine.tasks(applied.operation.id).await[1];
    assert_eq!(task.attempts, 3);
    assert_eq!(web.seen().len(), 3);

    // Nobody listening: transient, and the message names no URL.
    let port = crate::support::process::free_port();
    let backend = declared(&generic_catalog(&format!("http://127.0.0.1:{port}"), ""));
    let error = backend
        .call("make", call_on("t", None, json!({}), json!({})))
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with("cannot reach backend `web` for `make`: cannot connect"),
        "{message}"
    );
    assert!(!message.contains(&port.to_string()), "{message}");
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_400_fails_the_step_at_once_with_the_problem_detail(pool: PgPool) {
    let web = Scripted::start().await;
    let engine = engine(pool, &generic_catalog(&web.url, ""));
    web.push(problem(400, "size 3 is not offered"));
    let applied = engine.create("thing", "t-1", json!({"size": 3})).await;
    engine.drain().await;
    let resource = engine.resource(applied.resource.id).await.unwrap();
    assert_eq!(resource.state, ResourceState::Erred);
    assert_eq!(
        resource.error_message.as_deref(),
        Some("size 3 is not offered")
    );
    assert_eq!(engine.tasks(applied.operation.id).await[1].attempts, 1);
    assert_eq!(web.seen().len(), 1, "never retried");

    // Else `message`, else the start of the body, else the status.
    let backend = declared(&generic_catalog(&web.url, ""));
    let long = "x".repeat(2000);
    web.push(answer(422, &json!({"message": "quota"})))
        .push(raw(409, &long))
        .push(raw(403, ""))
        .push(raw(301, ""));
    let mut messages = Vec::new();
    for _ in 0..4 {
        match backend
            .call("make", call_on("t", None, json!({}), json!({})))
            .await
            .map_err(BackendError::into_plain)
        {
            Err(BackendError::Permanent(message)) => messages.push(message),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(messages[0], "quota");
    assert_eq!(messages[1], "x".repeat(500));
    assert_eq!(messages[2], "`make` answered 403 Forbidden");
    assert_eq!(messages[3], "`make` answered 301 Moved Permanently");
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_bad_reply_fails_the_step_and_nothing_of_it_is_stored(pool: PgPool) {
    let metrics = executord::metrics::install();
    let web = Scripted::start().await;
    let engine = engine(pool, &generic_catalog(&web.url, ""));
    let cases = [
        (
            Answer::Stream(2 << 20),
            "bad reply from `make`: larger than 1 MiB".to_owned(),
        ),
        (
            raw(200, "{\"backend_id\": \"b-1\"} and more"),
            "bad reply from `make`: not valid JSON (trailing characters at line 1 column 23)"
                .to_owned(),
        ),
        (
            answer(200, &json!({"backend_id": "b-1", "runtime_state": "MELTED", "status": {"a": 1}})),
            "bad reply from `make`: runtime state `MELTED` is not one backend `web` declares (up, down)"
                .to_owned(),
        ),
        (
            answer(200, &json!({"backend_id": 7})),
            "bad reply from `make`: does not follow the contract: `backend_id`: invalid type: integer `7`, expected a string"
                .to_owned(),
        ),
    ];
    for (i, (bad, expected)) in cases.into_iter().enumerate() {
        web.push(bad);
        let applied = engine.create("thing", &format!("t-{i}"), json!({})).await;
        engine.drain().await;
        let resource = engine.resource(applied.resource.id).await.unwrap();
        assert_eq!(resource.state, ResourceState::Erred, "{expected}");
        assert_eq!(resource.error_message.as_deref(), Some(expected.as_str()));
        assert_eq!(resource.backend_id, None, "{expected}");
        assert_eq!(resource.runtime_state, None, "{expected}");
        assert_eq!(resource.status, json!({}), "{expected}");
        assert_eq!(engine.tasks(applied.operation.id).await[1].attempts, 1);
    }
    let counted =
        r#"executord_backend_call_errors_total{backend="web",method="make",class="bad_reply"}"#;
    assert!(counter(&metrics.render(), counted) >= 4.0);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_hanging_call_is_cut_by_the_backends_timeout_and_retried(pool: PgPool) {
    let metrics = executord::metrics::install();
    let web = Scripted::start().await;
    let engine = engine(pool, &generic_catalog(&web.url, "timeout_s = 1"));
    web.push(Answer::Hang)
        .push(answer(200, &json!({"backend_id": "b-3"})));
    let started = Instant::now();
    let applied = engine.create("thing", "t-1", json!({})).await;
    engine.drain().await;
    let took = started.elapsed();
    let resource = engine.resource(applied.resource.id).await.unwrap();
    assert_eq!(resource.backend_id.as_deref(), Some("b-3"));
    let task = &engine.tasks(applied.operation.id).await[1];
    assert_eq!(task.attempts, 2);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(web.seen().len(), 2);
    let abandoned =
        r#"executord_backend_call_errors_total{backend="web",method="make",class="abandoned"}"#;
    assert!(counter(&metrics.render(), abandoned) >= 1.0);
}

#[tokio::test]
async fn max_concurrency_bounds_the_calls_in_flight() {
    let web = Scripted::start().await;
    let backend = declared(&generic_catalog(&web.url, "max_concurrency = 2"));
    for _ in 0..4 {
        web.push(Answer::Hang);
    }
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let call = call_on("t", None, json!({}), json!({}));
                backend.call("make", call).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(web.seen().len(), 2, "two in flight, the others wait");
    for call in &calls {
        call.abort();
    }
    for call in calls {
        assert!(call.await.unwrap_err().is_cancelled());
    }
    // Cut calls give their slots back.
    web.clear();
    web.push(answer(200, &json!({"backend_id": "b"})));
    let call = call_on("t", None, json!({}), json!({}));
    let reply = tokio::time::timeout(Duration::from_secs(5), backend.call("make", call)).await;
    assert_eq!(reply.unwrap().unwrap().backend_id.as_deref(), Some("b"));
}

/// A backend `web` of templated methods, RabbitMQ-style.
fn templated_catalog(base: &str) -> String {
    format!(
        r#"
[backends.web]
driver = "http"
base_url = "{base}/api"
runtime_states = ["running", "gone"]

[backends.web.methods.make]
role = "effect"
request = {{ method = "put", path = "/things/{{resource.name}}/{{{{x}}}}", query = {{ "owner name" = "{{resource.attributes.owner}}" }}, body = {{ size = "{{resource.attributes.size}}", tags = "{{resource.attributes.tags}}", note = "made for {{resource.attributes.owner}}", missing = "{{params.nope}}", key = "{{idempotency_key}}", fixed = [1, true] }} }}
reply = {{ backend_id = {{ pointer = "/data/id" }}, runtime_state = {{ value = "running" }}, status = {{ name = "{{resource.name}}", port = {{ pointer = "/data/ports/0" }}, none = {{ pointer = "/nothing" }} }} }}

[backends.web.methods.look]
role = "pull"
request = {{ method = "GET", path = "/things/{{resource.backend_id}}" }}
reply = {{ runtime_state = {{ pointer = "/state" }} }}

[backends.web.methods.gone]
role = "check"
request = {{ method = "GET", path = "/things/{{resource.backend_id}}" }}
statuses = {{ 404 = "done", 200 = "not_done" }}

[backends.web.methods.drop]
role = "effect"
request = {{ method = "DELETE", path = "/things/{{resource.backend_id}}" }}
statuses = {{ 404 = "success", 409 = "transient", 500 = "permanent" }}
{KIND}"#
    )
}

#[tokio::test]
async fn templates_encode_the_path_type_the_body_and_read_the_reply_by_pointer() {
    let web = Scripted::start().await;
    let backend = declared(&templated_catalog(&web.url));
    web.push(answer(201, &json!({"data": {"id": 42, "ports": [5672]}})));
    let attributes = json!({"owner": "ops&dev", "size": 3, "tags": ["a", "b"]});
    let call = call_on("a b/c", None, attributes, json!({}));
    let key = call.idempotency_key;
    let reply = backend.call("make", call).await.unwrap();
    assert_eq!(reply.backend_id.as_deref(), Some("42"));
    assert_eq!(reply.runtime_state.as_deref(), Some("running"));
    let status = Value::Object(reply.status.unwrap());
    assert_eq!(status, json!({"name": "a b/c", "port": 5672}));
    let seen = &web.seen()[0];
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(
        seen.uri,
        "/api/things/a%20b%2Fc/%7Bx%7D?owner%20name=ops%26dev"
    );
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(
        seen.header("idempotency-key"),
        Some(key.to_string().as_str())
    );
    assert_eq!(
        seen.json(),
        json!({
            "size": 3, "tags": ["a", "b"], "note": "made for ops&dev", "missing": null,
            "key": key.to_string(), "fixed": [1, true]
        })
    );

    // A reply read by pointer is checked like any other; a GET has no body.
    web.push(answer(200, &json!({"state": "running"})))
        .push(answer(200, &json!({"state": "paused"})));
    let look = || call_on("a", Some("42"), json!({}), json!({}));
    let reply = backend.call("look", look()).await.unwrap();
    assert_eq!(reply.runtime_state.as_deref(), Some("running"));
    let error = backend.call("look", look()).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "bad reply from `look`: runtime state `paused` is not one backend `web` declares (running, gone)"
    );
    assert!(web.seen()[1].body.is_empty());
    assert_eq!(web.seen()[1].header("content-type"), None);

    // A missing value in a path is an error, and nothing is sent.
    let error = backend
        .call("look", call_on("a", None, json!({}), json!({})))
        .await
        .unwrap_err();
    assert_eq!(
        error,
        BackendError::Permanent(
            "cannot call `look`: path: `{resource.backend_id}` has no value".to_owned()
        )
    );
    assert_eq!(web.seen().len(), 3);
}

#[tokio::test]
async fn statuses_override_the_default_classes() {
    let web = Scripted::start().await;
    let backend = declared(&templated_catalog(&web.url));
    let on = || call_on("a", Some("42"), json!({}), json!({}));
    web.push(raw(200, "{}")).push(problem(404, "gone"));
    assert_eq!(backend.call("gone", on()).await.unwrap().done, Some(false));
    assert_eq!(backend.call("gone", on()).await.unwrap().done, Some(true));
    web.push(problem(404, "gone"))
        .push(problem(409, "busy"))
        .push(problem(500, "broken for good"))
        .push(raw(204, ""));
    assert_eq!(
        backend.call("drop", on()).await.unwrap(),
        Default::default()
    );
    let busy = backend.call("drop", on()).await.unwrap_err();
    assert_eq!(
        busy,
        BackendError::Transient("`drop` answered 409 Conflict: busy".to_owned())
    );
    let broken = backend.call("drop", on()).await.unwrap_err();
    assert_eq!(
        broken,
        BackendError::Permanent("broken for good".to_owned())
    );
    assert_eq!(
        backend.call("drop", on()).await.unwrap(),
        Default::default()
    );
    assert!(web.seen().iter().all(|s| s.method != Method::POST));
}

#[test]
fn bad_declarations_and_templates_are_catalog_errors_at_start_up() {
    let base = "http://127.0.0.1:9";
    let good = templated_catalog(base);
    assert!(Catalog::check(&good, &Backends::new(), std::path::Path::new(".")).is_ok());
    let cases = [
        (
            good.replace(
                "/things/{resource.backend_id}\" }\nreply",
                "/things/{tenant.x}\" }\nreply",
            ),
            "backends.web: methods.look: request.path: unknown placeholder `{tenant.x}`",
        ),
        (
            good.replace(
                "missing = \"{params.nope}\"",
                "missing = \"{resource.owner}\"",
            ),
            "backends.web: methods.make: request.body.missing: unknown placeholder `{resource.owner}`",
        ),
        (
            good.replace("{ pointer = \"/state\" }", "{ pointer = \"state\" }"),
            "backends.web: methods.look: reply.runtime_state: `state` is not a JSON pointer",
        ),
        (
            good.replace("404 = \"done\", ", "404 = \"done\", 4044 = \"done\", "),
            "backends.web: methods.gone: statuses: `4044` is not an HTTP status code",
        ),
        (
            good.replace("404 = \"success\"", "404 = \"done\""),
            "backends.web: methods.drop: statuses.404: `done` and `not_done` are for methods with role `check`",
        ),
        (
            generic_catalog(base, "").replace(
                "look = { role = \"pull\" }",
                "look = { role = \"pull\", reply = { done = { value = true } } }",
            ),
            "backends.web: methods.look: `reply` needs a `request`",
        ),
        (
            good.replace("{ pointer = \"/state\" }", "5"),
            "backends.web: expected a template string, `{ pointer = \"/json/pointer\" }` or `{ value = … }`, not `5`",
        ),
        (
            generic_catalog("ftp://127.0.0.1", ""),
            "backends.web: base_url must be an http:// or https:// URL",
        ),
        (
            generic_catalog(base, "").replace("X-Team = \"blue\"", "Content-Type = \"text/plain\""),
            "backends.web: headers.Content-Type: executord sets this header itself",
        ),
        (
            generic_catalog(base, "max_concurrency = 0"),
            "backends.web: max_concurrency must be at least 1",
        ),
        (
            good.replace("method = \"put\"", "method = \"P U T\""),
            "backends.web: methods.make: request.method: `P U T` is not an HTTP method",
        ),
    ];
    for (catalog, expected) in cases {
        let errors =
            Catalog::check(&catalog, &Backends::new(), std::path::Path::new(".")).unwrap_err();
        let first = errors[0].to_string();
        assert!(
            first.starts_with(&format!("catalog {expected}")),
            "{first}\nexpected {expected}"
        );
    }
}

/// Waits for an operation to end through the API; returns it with its tasks.
fn finished(api: &crate::support::process::Api, operation: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..4 {
        let reply = api.call(
            "GET",
            &format!("/api/v1/operations/{operation}?wait=30"),
            None,
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        if reply.body["finished_at"].is_string() {
            return reply.body;
        }
        last = reply.body;
    }
    panic!("operation {operation} did not finish: {last}");
}

fn create(
    api: &crate::support::process::Api,
    kind: &str,
    name: &str,
    attributes: &Value,
) -> (String, Value) {
    let reply = api.call(
        "POST",
        "/api/v1/resources",
        Some(&json!({"kind": kind, "name": name, "attributes": attributes})),
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    let operation = reply.body["current_operation_id"].as_str().unwrap();
    (id, finished(api, operation))
}

fn act(
    api: &crate::support::process::Api,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Value {
    let reply = api.call(method, path, body);
    assert_eq!(reply.status, 202, "{method} {path}: {}", reply.body);
    finished(api, reply.body["id"].as_str().unwrap())
}

/// `executord fake-cloud` on a free port, once it answers.
fn fake_cloud(
    h: &crate::support::process::Harness,
    extra: &[&str],
) -> (crate::support::process::Proc, String) {
    let port = crate::support::process::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["fake-cloud", "--listen", listen.as_str()];
    args.extend_from_slice(extra);
    let proc = h.spawn_plain("fake-cloud", &args);
    crate::support::process::wait_until(
        Duration::from_secs(30),
        "the fake cloud to answer",
        || {
            crate::support::process::try_http(port, "GET", "/healthz", None, Duration::from_secs(5))
                .is_ok_and(|r| r.status == 200)
        },
    );
    (proc, format!("http://{listen}"))
}

const FAKE_CLOUD_CATALOG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/catalogs/fake-cloud.toml"
);

#[test]
fn the_fake_cloud_runs_create_actions_and_delete_through_the_real_binaries() {
    let mut h = crate::support::process::Harness::new("http-e2e");
    let (_cloud, url) = fake_cloud(&h, &["--sim-transition-ms", "200"]);
    h.set_env("FAKE_CLOUD_URL", &url);
    let api = h.api_with("api", &["--catalog", FAKE_CLOUD_CATALOG]);
    let _worker = h.worker("worker", &["--catalog", FAKE_CLOUD_CATALOG]);
    let small = json!({"tenant": "acme", "flavor": "small"});

    let (id, created) = create(&api, "instance", "web-1", &small);
    assert_eq!(created["state"], "succeeded", "{created}");
    let path = format!("/api/v1/resources/{id}");
    let resource = api.call("GET", &path, None).body;
    assert_eq!(resource["runtime_state"], "ACTIVE");
    assert!(resource["backend_id"].as_str().unwrap().starts_with("sim-"));
    let stopped = act(&api, "POST", &format!("{path}/actions/stop"), None);
    assert_eq!(stopped["state"], "succeeded", "{stopped}");
    let resize = json!({"flavor": "large"});
    let resized = act(
        &api,
        "POST",
        &format!("{path}/actions/resize"),
        Some(&resize),
    );
    assert_eq!(resized["state"], "succeeded", "{resized}");
    let resource = api.call("GET", &path, None).body;
    assert_eq!(resource["runtime_state"], "SHUTOFF");
    assert_eq!(resource["status"]["flavor"], "large", "{resource}");
    assert_eq!(
        resource["attributes"], small,
        "the backend's data stays in status"
    );
    let deleted = act(&api, "DELETE", &path, None);
    assert_eq!(deleted["state"], "succeeded", "{deleted}");
    assert_eq!(api.call("GET", &path, None).status, 404);

    // HTTP's faults: 429 with Retry-After and 503 are retried, 400 fails with its detail.
    let throttled = json!({"tenant": "acme", "flavor": "small", "sim": {"throttle_calls": 1, "retry_after_s": 1}});
    let (_, op) = create(&api, "instance", "web-2", &throttled);
    assert_eq!(op["state"], "succeeded", "{op}");
    let call = &op["tasks"][2];
    assert_eq!(call["attempts"], 2, "{op}");
    assert!(call["last_error"].as_str().unwrap().contains("429"), "{op}");
    let flaky = json!({"tenant": "acme", "flavor": "small", "sim": {"transient_failures": 1}});
    let (_, op) = create(&api, "instance", "web-3", &flaky);
    assert_eq!(op["state"], "succeeded", "{op}");
    assert!(
        op["tasks"][2]["last_error"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{op}"
    );
    let failing = json!({"tenant": "acme", "flavor": "small",
        "sim": {"fail_on": "create_instance", "message": "No valid host was found"}});
    let (id, op) = create(&api, "instance", "web-4", &failing);
    assert_eq!(op["state"], "failed", "{op}");
    let resource = api
        .call("GET", &format!("/api/v1/resources/{id}"), None)
        .body;
    assert_eq!(resource["error_message"], "No valid host was found");
    let melted = json!({"tenant": "acme", "size_gb": 1,
        "sim": {"bad_reply_on": "create_volume", "bad_reply": "undeclared_state"}});
    let (id, op) = create(&api, "volume", "vol-1", &melted);
    assert_eq!(op["state"], "failed", "{op}");
    let resource = api
        .call("GET", &format!("/api/v1/resources/{id}"), None)
        .body;
    assert!(
        resource["error_message"]
            .as_str()
            .unwrap()
            .starts_with("bad reply from `create_volume`: runtime state `MELTED` is not one backend `cloud` declares"),
        "{resource}"
    );
    let stats = crate::support::process::try_http(
        url.rsplit(':').next().unwrap().parse().unwrap(),
        "GET",
        "/stats",
        None,
        Duration::from_secs(5),
    )
    .unwrap()
    .body;
    assert_eq!(stats["repeated_effects"], json!([]), "{stats}");
    assert_eq!(stats["calls"]["create_instance"], 5, "{stats}");
}

#[test]
fn kill_9_of_a_worker_mid_http_call_applies_each_effect_once() {
    const N: usize = 20;
    let mut h = crate::support::process::Harness::new("http-kill");
    let url = h.url.clone();
    let (_cloud, cloud_url) = fake_cloud(
        &h,
        &[
            "--database-url",
            &url,
            "--sim-latency-ms",
            "300",
            "--sim-transition-ms",
            "300",
        ],
    );
    h.set_env("FAKE_CLOUD_URL", &cloud_url);
    let api = h.api_with("api", &["--catalog", FAKE_CLOUD_CATALOG]);
    let mut a = h.worker("worker-a", &["--catalog", FAKE_CLOUD_CATALOG]);
    let _b = h.worker("worker-b", &["--catalog", FAKE_CLOUD_CATALOG]);
    for i in 0..N {
        let attributes = json!({"tenant": format!("t{}", i % 5), "flavor": "small"});
        api.create_instance(&format!("vm-{i}"), &attributes);
    }
    crate::support::process::wait_until(Duration::from_secs(30), "worker A to be mid-call", || {
        h.running_of(&a)
            .iter()
            .filter(|(_, t)| t == "backend_method")
            .count()
            >= 2
    });
    a.kill9();
    let held = h.running_of(&a);
    let calls = held.iter().filter(|(_, t)| t == "backend_method").count();
    assert!(calls >= 1, "killed mid-call: {held:?}");
    let recovered = h.wait_all_finished(Duration::from_secs(
        crate::support::process::LEASE_SECS + 30,
    ));
    let settled = h.assert_settled();
    assert_eq!(settled.operations, N as i64);
    assert_eq!(settled.effects, settled.backend_calls);
    eprintln!(
        "http kill -9: {N} creates through driver = \"http\", worker killed holding {} tasks \
         ({calls} in a backend call); all done {} later; {} backend calls, {} effects, none twice",
        held.len(),
        crate::support::process::secs(recovered),
        settled.backend_calls,
        settled.effects,
    );
}

#[test]
fn a_secret_from_the_environment_never_reaches_logs_errors_or_the_api() {
    let mut h = crate::support::process::Harness::new("http-secret");
    let secret = format!("tok-{}", Uuid::new_v4().simple());
    let web = h.block_on(Scripted::start());
    web.push(problem(400, "quota exceeded for this token"));
    let catalog = generic_catalog(&web.url, "").replace(
        "X-Team = \"blue\"",
        "Authorization = \"Bearer ${env:WEB_TOKEN}\"",
    );
    let file = h.dir.join("web.toml");
    std::fs::write(&file, &catalog).unwrap();
    let file = file.to_str().unwrap();
    h.set_env("WEB_TOKEN", &secret);
    // Everything every library logs, HTTP client included.
    h.set_env("RUST_LOG", "trace,executord::app=info");
    let api = h.api_with("api", &["--catalog", file]);
    let worker = h.worker("worker", &["--catalog", file]);

    let (failed, op) = create(&api, "thing", "t-1", &json!({}));
    assert_eq!(op["state"], "failed", "{op}");
    let (ok, op) = create(&api, "thing", "t-2", &json!({}));
    assert_eq!(op["state"], "succeeded", "{op}");
    let seen = web.seen();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {secret}").as_str())
        );
    }
    assert!(
        worker.log_text().contains("backend call"),
        "the driver's debug lines were logged"
    );

    let mut shown = vec![worker.log_text(), api.proc.log_text()];
    for path in [
        format!("/api/v1/resources/{failed}"),
        format!("/api/v1/resources/{ok}"),
        format!("/api/v1/resources/{failed}/operations"),
        format!("/api/v1/resources/{failed}/events"),
        "/api/v1/resources".to_owned(),
        "/api/v1/kinds".to_owned(),
        "/metrics".to_owned(),
    ] {
        let reply = api.call("GET", &path, None);
        shown.push(format!("{} {}", reply.head, reply.body));
    }
    let stored: i64 = h
        .block_on(
            sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM tasks WHERE tasks::text LIKE $1)
                      + (SELECT count(*) FROM resources WHERE resources::text LIKE $1)
                      + (SELECT count(*) FROM resource_events WHERE resource_events::text LIKE $1)
                      + (SELECT count(*) FROM operations WHERE operations::text LIKE $1)",
            )
            .bind(format!("%{secret}%"))
            .fetch_one(&h.pool),
        )
        .unwrap();
    assert_eq!(stored, 0, "the secret is in the database");
    // A catalog error about the header names it, not its value.
    let broken = catalog.replace("Bearer ${env:WEB_TOKEN}", "Bearer\\n${env:WEB_TOKEN}");
    std::fs::write(format!("{file}.bad"), broken).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_executord"))
        .args(["catalog", "check", "--catalog", &format!("{file}.bad")])
        .env("WEB_TOKEN", &secret)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        said.contains("headers.Authorization: the value is not a valid header value"),
        "{said}"
    );
    shown.push(said);
    shown.push(String::from_utf8_lossy(&check.stderr).into_owned());
    for text in &shown {
        assert!(!text.contains(&secret), "the secret was shown: {text}");
    }
}

#[tokio::test]
async fn the_fake_clouds_replies_follow_the_reply_schema() {
    use executord::backend::sim::Sim;
    use executord::backend::wire::WireRequest;
    use executord::fakecloud::{FakeCloud, router};

    let cloud = Arc::new(FakeCloud::new(Sim::new(SimConfig::instant())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(cloud.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let (request_schema, reply_schema) = (
        schema("backend-request.schema.json"),
        schema("backend-reply.schema.json"),
    );
    let mut resource = call_on(
        "vm",
        None,
        json!({"tenant": "t", "flavor": "small"}),
        json!({}),
    )
    .resource;
    resource.kind = "instance".to_owned();
    let steps = [
        ("create_instance", json!({})),
        ("pull_instance", json!({})),
        ("stop_instance", json!({})),
        ("pull_instance", json!({})),
        ("resize_instance", json!({"flavor": "large"})),
        ("delete_instance", json!({})),
        ("is_instance_deleted", json!({})),
    ];
    for (method, params) in steps {
        let request = WireRequest {
            method: method.to_owned(),
            idempotency_key: Uuid::now_v7(),
            resource: resource.clone(),
            parent: None,
            params,
        };
        let body = serde_json::to_value(&request).unwrap();
        assert_valid(&request_schema, &body);
        let send = || {
            client
                .post(format!("{url}/{method}"))
                .header("idempotency-key", request.idempotency_key.to_string())
                .json(&body)
                .send()
        };
        let first: Value = send().await.unwrap().json().await.unwrap();
        assert_valid(&reply_schema, &first);
        // The same key again replays the first reply.
        let again: Value = send().await.unwrap().json().await.unwrap();
        assert_eq!(first, again, "{method}");
        if let Some(id) = first["backend_id"].as_str() {
            resource.backend_id = Some(id.to_owned());
        }
        if let Some(state) = first["runtime_state"].as_str() {
            resource.runtime_state = Some(state.to_owned());
        }
    }
    assert!(
        cloud
            .sim()
            .stats()
            .await
            .unwrap()
            .repeated_effects()
            .is_empty()
    );
    let missing = client
        .post(format!("{url}/create_instance"))
        .json(&json!({"method": "create_instance"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
}

#[test]
fn the_python_adapter_of_the_docs_serves_records_through_the_real_service() {
    let mut h = crate::support::process::Harness::new("http-python");
    let port = crate::support::process::free_port();
    let adapter = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/adapters/records.py");
    let _python = Killed(
        std::process::Command::new("python3")
            .args([adapter, &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    crate::support::process::wait_until(Duration::from_secs(30), "the adapter to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    h.set_env("RECORDS_URL", &format!("http://127.0.0.1:{port}"));
    let catalog = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/catalogs/python-records.toml"
    );
    let api = h.api_with("api", &["--catalog", catalog]);
    let _worker = h.worker("worker", &["--catalog", catalog]);
    let (id, op) = create(&api, "record", "www", &json!({"address": "192.0.2.7"}));
    assert_eq!(op["state"], "succeeded", "{op}");
    let path = format!("/api/v1/resources/{id}");
    let record = api.call("GET", &path, None).body;
    assert_eq!(record["runtime_state"], "active", "{record}");
    assert_eq!(record["status"], json!({"fqdn": "www.example."}));
    let deleted = act(&api, "DELETE", &path, None);
    assert_eq!(deleted["state"], "succeeded", "{deleted}");
}

/// A child process, killed when dropped (also when the test panics).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_docs_show_the_checked_in_schemas_and_adapter() {
    let root = env!("CARGO_MANIFEST_DIR");
    let docs = std::fs::read_to_string(format!("{root}/docs/BACKENDS.md")).unwrap();
    for file in [
        "docs/backend-request.schema.json",
        "docs/backend-reply.schema.json",
        "examples/adapters/records.py",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        assert!(
            docs.contains(text.trim_end()),
            "docs/BACKENDS.md shows {file} as it is"
        );
    }
}

/// This process's CPU time so far (user and system, all threads).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// The driver's cost per call in executord's CPU: `pull_instance` through
/// `driver = "http"` against `executord fake-cloud` in another process,
/// beside the same call on the in-process sim. Run it on a release build:
/// `cargo test --release --test it -- --ignored --nocapture http_backend::measure`.
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn measure_the_http_drivers_cpu_per_call() {
    use executord::backend::sim::Sim;
    const N: u32 = 20_000;
    let port = crate::support::process::free_port();
    let _cloud = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_executord"))
            .args(["fake-cloud", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--sim-transition-ms", "0"])
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    crate::support::process::wait_until(Duration::from_secs(30), "the fake cloud", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let catalog = std::fs::read_to_string(FAKE_CLOUD_CATALOG)
        .unwrap()
        .replace("${env:FAKE_CLOUD_URL}", &format!("http://127.0.0.1:{port}"));
    let sim: Arc<dyn Backend> = Arc::new(Sim::new(SimConfig::instant()));
    let builtin = Backends::new().with("sim", sim.clone());
    let catalog = Catalog::parse(&catalog, &builtin).unwrap();
    let http = catalog.declared_backends().get("cloud").unwrap().clone();
    for (name, backend) in [("in-process sim", sim), ("http driver", http)] {
        let mut call = call_on("vm", None, json!({"tenant": "t"}), json!({}));
        call.resource.kind = "instance".to_owned();
        let created = backend.call("create_instance", call.clone()).await.unwrap();
        call.resource.backend_id = created.backend_id;
        for _ in 0..200 {
            backend.call("pull_instance", call.clone()).await.unwrap();
        }
        let (cpu, wall) = (cpu_time(), Instant::now());
        for _ in 0..N {
            backend.call("pull_instance", call.clone()).await.unwrap();
        }
        let (cpu, wall) = (cpu_time() - cpu, wall.elapsed());
        eprintln!(
            "{name}: {:.1} µs of this process's CPU and {:.1} µs of wall time per call ({N} calls)",
            cpu.as_secs_f64() * 1e6 / f64::from(N),
            wall.as_secs_f64() * 1e6 / f64::from(N),
        );
    }
}
