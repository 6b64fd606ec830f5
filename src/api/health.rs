//! `/healthz` (the process is up) and `/readyz` (the database answers and is migrated).

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use crate::app::AppState;
use crate::db;

/// A health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the answer is 200.
    #[schema(example = "ok")]
    pub status: String,
}

/// Liveness: the process is up, and so is the embedded database it owns.
///
/// A process on its embedded database restarts that database when it dies;
/// after three failed restarts in a row this answers 503 until one succeeds,
/// so that whatever runs the process can replace it.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses(
        (status = 200, description = "Up", body = Health),
        (status = 503, description = "The embedded database this process owns is down and could not be restarted", body = Problem, content_type = "application/problem+json"),
    ))]
async fn healthz(State(state): State<AppState>) -> Result<axum::Json<Health>, ApiError> {
    if let Some(reason) = state.liveness.borrow().clone() {
        return Err(ApiError::Unavailable(sqlx::Error::Protocol(reason)));
    }
    Ok(axum::Json(Health {
        status: "ok".into(),
    }))
}

/// Readiness: the database answers and every migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "The database is unreachable or not migrated", body = Problem, content_type = "application/problem+json"),
    ))]
async fn readyz(State(state): State<AppState>) -> Result<axum::Json<Health>, ApiError> {
    let check =
        tokio::time::timeout(std::time::Duration::from_secs(2), db::ready(&state.pool)).await;
    match check {
        Ok(Ok(())) => Ok(axum::Json(Health {
            status: "ok".into(),
        })),
        Ok(Err(e)) => Err(ApiError::Unavailable(sqlx::Error::Protocol(format!(
            "{e:#}"
        )))),
        Err(_) => Err(ApiError::Unavailable(sqlx::Error::PoolTimedOut)),
    }
}

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}
