//! Swagger UI at `/docs` and the OpenAPI document at `/openapi.json`, both
//! served from the binary. An unknown path under `/docs` answers a
//! problem+json 404 like every other route, not Swagger UI's empty one.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::Response;
use utoipa_swagger_ui::SwaggerUi;

use super::error::problem;

/// The docs routes for `document`.
pub fn router<S: Clone + Send + Sync + 'static>(document: utoipa::openapi::OpenApi) -> Router<S> {
    Router::from(SwaggerUi::new("/docs").url("/openapi.json", document))
        .layer(axum::middleware::map_response(problem_for_errors))
}

/// Gives an error of Swagger UI's (a bare 404 for an unknown file) the API's
/// problem+json shape; its files and redirects pass untouched.
async fn problem_for_errors(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t == "application/problem+json");
    if is_problem || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let detail = match status {
        StatusCode::NOT_FOUND => Some("no such file under /docs".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => Some("this route does not take that method".to_owned()),
        // Swagger UI's own 500 text is not shown, as no 500's detail is.
        _ => None,
    };
    problem(status, detail, Vec::new())
}
