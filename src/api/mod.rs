//! The HTTP API (v1). Each module ends with `router()`; this one merges them
//! and generates the OpenAPI document from the same code.

pub mod auth;
pub mod docs;
pub mod error;
pub mod events;
pub mod extract;
pub mod fleet;
pub mod health;
pub mod idempotency;
pub mod kinds;
pub mod metrics;
pub mod operations;
pub mod paging;
pub mod reconcile;
pub mod request_id;
pub mod resources;
pub mod stream;
pub mod system;
pub mod webhooks;

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
        (name = "push", description = "Webhooks and the live event stream"),
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "system", description = "Queues, throttles, periodic jobs and the caller, for operators"),
    )
)]
struct ApiDoc;

/// The API's routes and its OpenAPI document.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(resources::router())
        .merge(reconcile::router())
        .merge(events::router())
        .merge(operations::router())
        .merge(fleet::router())
        .merge(webhooks::router())
        .merge(stream::router())
        .merge(kinds::router())
        .merge(health::router())
        .merge(metrics::router())
        .merge(system::router())
        .split_for_parts();
    document_shared_errors(&mut openapi);
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

/// The error answers many operations share, declared here once rather than
/// on each handler: a handler declares only what is its own (a 404's or a
/// 409's meaning, a 422's). Every `/api` operation can answer 400 (for the
/// reasons its path, query and body allow), 401, and 503; every write 403;
/// every operation with a body 413 and 415.
fn document_shared_errors(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    for (path, item) in &mut openapi.paths.paths {
        let api = path.starts_with("/api/");
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
            let parameters = operation.parameters.as_deref().unwrap_or_default();
            let has = |place: ParameterIn| {
                parameters
                    .iter()
                    .any(|p| matches!(p, utoipa::openapi::RefOr::T(p) if p.parameter_in == place))
            };
            let (by_path, by_query) = (has(ParameterIn::Path), has(ParameterIn::Query));
            let body = operation.request_body.is_some();
            let mut shared: Vec<(&str, String)> = Vec::new();
            if api {
                let reasons: Vec<&str> = [
                    (body, "malformed JSON"),
                    (by_path, "a bad id in the path"),
                    (by_query, "a bad query string"),
                    (true, "two `Authorization` headers"),
                ]
                .into_iter()
                .filter_map(|(applies, reason)| applies.then_some(reason))
                .collect();
                let mut why = reasons.join(", ");
                if let Some(first) = why.get_mut(..1) {
                    first.make_ascii_uppercase();
                }
                shared.push(("400", why));
                shared.push(("401", "No valid token".to_owned()));
                if writes {
                    shared.push(("403", "The token's role may not write".to_owned()));
                }
            }
            if body {
                shared.push(("413", "Body over 1 MiB".to_owned()));
                shared.push(("415", "Body not sent as JSON in UTF-8".to_owned()));
            }
            if api || path == "/metrics" {
                shared.push(("503", "The database is unavailable".to_owned()));
            }
            for (status, description) in shared {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| problem_response(&description).into());
            }
        }
    }
}

/// The OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}
