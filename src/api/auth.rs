//! Bearer-token authentication for `/api/v1` (and `/metrics` when protected).
//!
//! A token names a tenant and a role. Viewers may only read; operators may
//! also run executors; admins see every tenant. With no active token at all
//! the service runs open: every caller is an admin of the empty tenant (the
//! binary allows that on loopback only, unless told otherwise).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Mutex;

use super::error::ApiError;
use crate::app::AppState;
use crate::domain::{Caller, Role};
use crate::{auth, db};

/// How long "are there any tokens?" is remembered.
const OPEN_CHECK_EVERY: Duration = Duration::from_secs(2);

/// The authentication settings and cache of a process.
#[derive(Debug, Clone)]
pub struct Auth {
    protect_metrics: bool,
    open: Arc<Mutex<Option<(Instant, bool)>>>,
}

impl Auth {
    /// `protect_metrics`: whether `/metrics` needs a token too.
    pub fn new(protect_metrics: bool) -> Self {
        Self {
            protect_metrics,
            open: Arc::new(Mutex::new(None)),
        }
    }

    /// Whether no token is active (so the service runs open), looked up at most every two seconds.
    async fn is_open(&self, pool: &sqlx::PgPool) -> Result<bool, ApiError> {
        let mut cached = self.open.lock().await;
        if let Some((at, open)) = *cached
            && at.elapsed() < OPEN_CHECK_EVERY
        {
            return Ok(open);
        }
        let open = !db::tokens::any_active(pool).await?;
        *cached = Some((Instant::now(), open));
        Ok(open)
    }
}

/// The bearer token of the request, if it sent one. Two `Authorization`
/// headers are refused: which one counts would depend on who reads them
/// (a proxy may add its own), so neither does.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(
            "send one `Authorization` header, not several".into(),
        ));
    }
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(Some)
        .ok_or_else(|| ApiError::Unauthorized("use `Authorization: Bearer <token>`".into()))
}

async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    match bearer(headers)? {
        Some(token) => {
            let hash = auth::hash(token);
            let (tenant, role) = db::tokens::lookup(&state.pool, &hash)
                .await?
                .ok_or_else(|| ApiError::Unauthorized("the token is unknown or revoked".into()))?;
            let role = Role::parse(&role)
                .ok_or_else(|| ApiError::Unauthorized("the token has no valid role".into()))?;
            Ok(Caller { tenant, role })
        }
        None if state.auth.is_open(&state.pool).await? => Ok(Caller::open()),
        None => Err(ApiError::Unauthorized(
            "this request needs `Authorization: Bearer <token>`".into(),
        )),
    }
}

/// The middleware: finds the caller of protected routes, refuses writes by viewers.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let protected = path.starts_with("/api/") || (path == "/metrics" && state.auth.protect_metrics);
    if !protected {
        return next.run(request).await;
    }
    let who = match caller(&state, request.headers()).await {
        Ok(who) => who,
        Err(e) => return e.into_response(),
    };
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if !reads && !who.may_write() {
        return ApiError::Forbidden("a viewer token may only read".into()).into_response();
    }
    request.extensions_mut().insert(who);
    next.run(request).await
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("no caller on this request".into()))
    }
}
