//! The HTTP API (v1). Each module ends with `router()`; this one merges them
//! and generates the OpenAPI document from the same code.

pub mod auth;
pub mod docs;
pub mod error;
pub mod extract;
pub mod health;
pub mod idempotency;
pub mod kinds;
pub mod metrics;
pub mod operations;
pub mod request_id;
pub mod resources;

use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token from `executord tokens create`. Without any token the service runs open on loopback.",
                    ))
                    .build(),
            ),
        );
    }
}

fn problem_response(description: &str) -> utoipa::openapi::Response {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

#[derive(OpenApi)]
#[openapi(
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    info(
        title = "executord",
        description = "Durable executors: create, update, delete and act on resources; every operation is a chain of tasks you can watch.\n\nErrors are RFC 9457 `application/problem+json`. Request bodies are `application/json` in UTF-8 (415 otherwise). Every `/api/v1` request needs `Authorization: Bearer <token>` (401 without; 403 when a viewer token writes); other tenants' resources answer 404. Mutations accept `Idempotency-Key`; update, delete and actions accept `If-Match` with the resource's `ETag`.",
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
    let (router, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(resources::router())
        .merge(operations::router())
        .merge(kinds::router())
        .merge(health::router())
        .merge(metrics::router())
        .split_for_parts();
    document_auth_errors(&mut openapi);
    document_optional_bodies(&mut openapi);
    (router, openapi)
}

/// An action's body may be left out (its parameters are then `{}`); utoipa
/// can only say so by also allowing `null`, which is not a valid body.
fn document_optional_bodies(openapi: &mut utoipa::openapi::OpenApi) {
    let body = openapi
        .paths
        .paths
        .get_mut("/api/v1/resources/{id}/actions/{action}")
        .and_then(|item| item.post.as_mut())
        .and_then(|operation| operation.request_body.as_mut());
    if let Some(utoipa::openapi::RefOr::T(body)) = body {
        body.required = Some(utoipa::openapi::Required::False);
    }
}

/// Every protected operation can answer 400 (two `Authorization` headers)
/// and 401, and every write 403.
fn document_auth_errors(openapi: &mut utoipa::openapi::OpenApi) {
    for (path, item) in &mut openapi.paths.paths {
        if !path.starts_with("/api/") {
            continue;
        }
        let operations = [
            (&mut item.get, false),
            (&mut item.post, true),
            (&mut item.patch, true),
            (&mut item.delete, true),
        ];
        for (operation, writes) in operations {
            let Some(operation) = operation.as_mut() else {
                continue;
            };
            let mut statuses = vec![("401", "No valid token")];
            if writes {
                statuses.push(("403", "The token's role may not write"));
            }
            operation
                .responses
                .responses
                .entry("400".to_owned())
                .or_insert_with(|| problem_response("Two `Authorization` headers").into());
            for (status, description) in statuses {
                operation
                    .responses
                    .responses
                    .insert(status.to_owned(), problem_response(description).into());
            }
        }
    }
}

/// The OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}
