//! `/metrics` (Prometheus text) and the middleware that counts HTTP requests.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use crate::app::AppState;

/// Metrics in the Prometheus text format: queue depth and age, running tasks,
/// task durations, retries, lease expiries, throttle waits, operations, HTTP requests.
#[utoipa::path(get, path = "/metrics", tag = "health", security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"),
    ))]
async fn get_metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = crate::metrics::render(&state.pool).await.map_err(|e| {
        match e.downcast::<sqlx::Error>() {
            Ok(db) => ApiError::from(db),
            Err(other) => ApiError::Internal(other),
        }
    })?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// Counts every request by method, route template and status, with its latency.
///
/// Every label comes from a closed set, so that no client can grow the
/// metrics: a method HTTP does not define is `other`, a route is the
/// template of a route of this router (`/api/v1/resources/{id}`), never the
/// path asked for, and a path no route matches is `unmatched`.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    crate::metrics::http_request(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The method as a label: one of HTTP's own methods, else `other`.
pub fn method_label(method: &Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method.as_str())
        .unwrap_or("other")
}

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_metrics))
}
