//! `executord fake-cloud`: the simulated cloud ([`Sim`]) served over the
//! `http` driver's wire contract (`docs/BACKENDS.md`), so that a catalog
//! with `driver = "http"` can be tried and tested end to end against a real
//! socket. `examples/catalogs/fake-cloud.toml` is the built-in catalog's
//! kinds through it.
//!
//! Each `POST /{method}` is one call of the sim with the request's
//! `Idempotency-Key`, so a repeated call replays its first reply and never
//! repeats its effect. The sim's own failure injection (`attributes.sim`:
//! `fail_on`, `transient_failures`, `hang_calls`, `runtime_error`) answers
//! 400, 503 and a call that never answers; a backend's missing object is a
//! 404. On top of these, `attributes.sim` may ask for what only HTTP has:
//!
//! - `"throttle_calls": n`: the first n calls for the resource answer 429
//!   with `Retry-After: <retry_after_s>` (default 1), before the sim sees them;
//! - `"not_found_on": "pull_instance"`: that method answers 404;
//! - `"slow_ms": n`: every call for the resource answers n ms late;
//! - `"bad_reply_on": "create_instance"` with `"bad_reply"` one of
//!   `invalid_json`, `huge` (2 MiB), `undeclared_state`: that method's
//!   answer is broken that way, after the sim applied the call.
//!
//! Out of band, as someone at the cloud's console: `PATCH
//! /admin/objects/{backend_id}` with `{"runtime_state": "SHUTOFF",
//! "attributes": {"flavor": "large"}}` changes an object, and `DELETE
//! /admin/objects/{backend_id}` makes it vanish; executord is not told.
//!
//! `GET /stats` reports what the sim counted (objects, effects, effects
//! applied more than once, calls by method), `GET /healthz` answers 200.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::backend::sim::{Sim, SimConfig};
use crate::backend::wire::{WireListReply, WireListRequest, WireReply, WireRequest};
use crate::backend::{Backend, BackendCall, ErrorClass, MethodRole};
use crate::config::FakeCloudArgs;

/// The sim and the HTTP-only faults it has given so far.
#[derive(Debug)]
pub struct FakeCloud {
    sim: Sim,
    /// Faults given, by resource and fault name.
    given: Mutex<HashMap<(Uuid, &'static str), u64>>,
}

impl FakeCloud {
    /// The fake cloud over `sim`.
    pub fn new(sim: Sim) -> Self {
        Self {
            sim,
            given: Mutex::new(HashMap::new()),
        }
    }

    /// The sim behind it.
    pub fn sim(&self) -> &Sim {
        &self.sim
    }

    /// Whether the `fault` wanted `wanted` times for `resource` is due now.
    fn due(&self, resource: Uuid, fault: &'static str, wanted: u64) -> bool {
        if wanted == 0 {
            return false;
        }
        let mut given = self.given.lock().unwrap_or_else(PoisonError::into_inner);
        let n = given.entry((resource, fault)).or_default();
        *n += 1;
        *n <= wanted
    }
}

/// The fake cloud's routes.
pub fn router(cloud: Arc<FakeCloud>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/stats", get(stats))
        .route("/admin/objects/{backend_id}", patch(tamper).delete(vanish))
        .route("/{method}", post(call_method))
        .with_state(cloud)
}

fn problem(status: StatusCode, detail: &str) -> Response {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or_default(),
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn json_answer(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// One call of the sim through the wire contract.
async fn call_method(
    State(cloud): State<Arc<FakeCloud>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let lists = cloud
        .sim
        .methods()
        .iter()
        .any(|m| m.name == method && m.role == MethodRole::List);
    if lists {
        return list(&cloud, &method, &body).await;
    }
    let request: WireRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return problem(StatusCode::BAD_REQUEST, &format!("not a call: {e}")),
    };
    if request.method != method {
        let detail = format!("the body calls `{}`, the path `{method}`", request.method);
        return problem(StatusCode::BAD_REQUEST, &detail);
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok());
    if key != Some(request.idempotency_key) {
        let detail = "the Idempotency-Key header must be the body's idempotency_key";
        return problem(StatusCode::BAD_REQUEST, detail);
    }
    let faults = request
        .resource
        .attributes
        .get("sim")
        .cloned()
        .unwrap_or(Value::Null);
    let number = |name: &str| faults.get(name).and_then(Value::as_u64).unwrap_or(0);
    let names = |name: &str| faults.get(name).and_then(Value::as_str) == Some(method.as_str());
    let resource = request.resource.id;
    if number("slow_ms") > 0 {
        tokio::time::sleep(Duration::from_millis(number("slow_ms").min(600_000))).await;
    }
    if cloud.due(resource, "throttle_calls", number("throttle_calls")) {
        let wait = faults
            .get("retry_after_s")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let mut answer = problem(StatusCode::TOO_MANY_REQUESTS, "slow down");
        if let Ok(value) = header::HeaderValue::from_str(&wait.to_string()) {
            answer.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return answer;
    }
    if names("not_found_on") {
        return problem(StatusCode::NOT_FOUND, &format!("no object for `{method}`"));
    }
    let call = BackendCall {
        idempotency_key: request.idempotency_key,
        resource: request.resource,
        parent: request.parent,
        params: request.params,
    };
    let reply = match cloud.sim.call(&method, call).await {
        Ok(reply) => reply,
        Err(e) if e.class() == ErrorClass::NotFound => {
            return problem(StatusCode::NOT_FOUND, &e.to_string());
        }
        Err(e) if e.is_transient() => {
            return problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
        }
        Err(e) => return problem(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    if names("bad_reply_on") {
        let broken = match faults.get("bad_reply").and_then(Value::as_str) {
            Some("huge") => format!("{{\"status\": {{\"blob\": \"{}\"}}}}", "x".repeat(2 << 20)),
            Some("undeclared_state") => r#"{"runtime_state": "MELTED"}"#.to_owned(),
            _ => "<html>not json</html>".to_owned(),
        };
        return json_answer(StatusCode::OK, broken.into_bytes());
    }
    match serde_json::to_vec(&WireReply::from(reply)) {
        Ok(body) => json_answer(StatusCode::OK, body),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// A list method's call: the sim's objects of the kind.
async fn list(cloud: &FakeCloud, method: &str, body: &[u8]) -> Response {
    let request: WireListRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => return problem(StatusCode::BAD_REQUEST, &format!("not a list call: {e}")),
    };
    match cloud.sim.list(method, &request.kind).await {
        Ok(objects) => match serde_json::to_vec(&WireListReply { objects }) {
            Ok(body) => json_answer(StatusCode::OK, body),
            Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Err(e) if e.is_transient() => problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        Err(e) => problem(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// `PATCH /admin/objects/{backend_id}` with `{"runtime_state"?, "attributes"?}`:
/// changes an object out of band, as someone at the cloud's console would
/// (stopped, resized); executord is not told. 404 if there is no such object.
async fn tamper(
    State(cloud): State<Arc<FakeCloud>>,
    Path(backend_id): Path<String>,
    body: Bytes,
) -> Response {
    let change: Value = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(e) => return problem(StatusCode::BAD_REQUEST, &format!("not JSON: {e}")),
    };
    let state = change.get("runtime_state").and_then(Value::as_str);
    let attributes = change
        .get("attributes")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    match cloud.sim.tamper(&backend_id, state, &attributes).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => problem(StatusCode::NOT_FOUND, &format!("no object {backend_id}")),
        Err(e) => problem(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// `DELETE /admin/objects/{backend_id}`: the object vanishes out of band.
async fn vanish(State(cloud): State<Arc<FakeCloud>>, Path(backend_id): Path<String>) -> Response {
    match cloud.sim.vanish(&backend_id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => problem(StatusCode::NOT_FOUND, &format!("no object {backend_id}")),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// What the sim counted.
async fn stats(State(cloud): State<Arc<FakeCloud>>) -> Response {
    let stats = match cloud.sim.stats().await {
        Ok(stats) => stats,
        Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let calls: serde_json::Map<String, Value> = cloud
        .sim
        .methods()
        .iter()
        .map(|m| (m.name.to_string(), json!(cloud.sim.calls(&m.name))))
        .collect();
    let body = json!({
        "objects": stats.objects,
        "total_effects": stats.total_effects,
        "repeated_effects": stats.repeated_effects(),
        "calls": calls,
    });
    json_answer(StatusCode::OK, body.to_string().into_bytes())
}

/// `executord fake-cloud`: serves until SIGINT or SIGTERM.
pub async fn run(args: FakeCloudArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let config = SimConfig {
        latency: Duration::from_millis(args.sim_latency_ms),
        transition_delay: Duration::from_millis(args.sim_transition_ms),
        ..SimConfig::default()
    };
    let (sim, pool) = match &args.database_url {
        Some(url) => {
            let pool = crate::db::connect(url, 8).await?;
            crate::db::migrate(&pool).await?;
            (Sim::shared(config, pool.clone()), Some(pool))
        }
        None => (Sim::new(config), None),
    };
    let address = listener.local_addr()?;
    tracing::info!(%address, shared = pool.is_some(), "fake cloud serving the wire contract");
    let app = router(Arc::new(FakeCloud::new(sim)));
    let server = axum::serve(listener, app).with_graceful_shutdown(crate::app::shutdown_signal());
    // A hung call (`hang_calls`) never ends: past a short grace, stop anyway.
    let grace = async {
        crate::app::shutdown_signal().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    tokio::select! {
        served = server => served?,
        () = grace => tracing::info!("calls still open after 2 s; closing"),
    }
    if let Some(pool) = pool {
        pool.close().await;
    }
    Ok(())
}
