//! The HTTP API (v1). Each module ends with `router()`; this one merges them
//! and generates the OpenAPI document from the same code.

pub mod error;
pub mod extract;
pub mod health;
pub mod idempotency;
pub mod kinds;
pub mod metrics;
pub mod operations;
pub mod resources;

use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "executord",
        description = "Durable executors: create, update, delete and act on resources; every operation is a chain of tasks you can watch.\n\nErrors are RFC 9457 `application/problem+json`. Mutations accept `Idempotency-Key`; update, delete and actions accept `If-Match` with the resource's `ETag`.",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "resources", description = "Resources and the executors that act on them"),
        (name = "operations", description = "Operation and task status"),
        (name = "kinds", description = "The catalog of kinds"),
        (name = "health", description = "Liveness, readiness and metrics"),
    )
)]
struct ApiDoc;

/// The API's routes and its OpenAPI document.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(resources::router())
        .merge(operations::router())
        .merge(kinds::router())
        .merge(health::router())
        .merge(metrics::router())
        .split_for_parts()
}

/// The OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}
