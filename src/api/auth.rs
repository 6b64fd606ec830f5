//! Bearer-token authentication for `/api/v1` (and `/metrics` when protected).
//!
//! A token names a tenant and a role. Viewers may only read; operators may
//! also run executors; admins see every tenant. A service that starts with no
//! active token runs open: every caller is an admin of the empty tenant (the
//! binary allows that on loopback only, unless told otherwise).
//!
//! Open is a start-up state, left for good: the first token seen turns
//! authentication on, and nothing turns it off while the process runs. A
//! revoked last token or an emptied tokens table (a restore) must not hand
//! every tenant to anonymous callers; it is logged as an error instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Mutex;

use super::error::ApiError;
use crate::app::AppState;
use crate::domain::{Caller, Role, TokenRef};
use crate::{auth, db};

/// How often the tokens table is looked at, at most (by requests without a valid token).
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// The authentication settings and state of a process.
#[derive(Debug, Clone)]
pub struct Auth {
    protect_metrics: bool,
    latch: Arc<Latch>,
}

/// Open until a token is seen, then authenticated until the process ends.
#[derive(Debug)]
struct Latch {
    /// Set when a token is seen; never cleared.
    authenticated: AtomicBool,
    /// Set while authenticated with no active token, so that is logged once each time it happens.
    tokens_gone: AtomicBool,
    /// When the tokens table was last looked at.
    looked_at: Mutex<Option<Instant>>,
}

impl Auth {
    /// `protect_metrics`: whether `/metrics` needs a token too. `authenticated`:
    /// whether a token was active at start-up; if not, the service runs open
    /// until the first one appears.
    pub fn new(protect_metrics: bool, authenticated: bool) -> Self {
        Self {
            protect_metrics,
            latch: Arc::new(Latch {
                authenticated: AtomicBool::new(authenticated),
                tokens_gone: AtomicBool::new(false),
                looked_at: Mutex::new(None),
            }),
        }
    }

    /// Whether the service runs open: only if it started open and no token was seen since.
    async fn is_open(&self, pool: &sqlx::PgPool) -> Result<bool, ApiError> {
        self.look(pool).await?;
        Ok(!self.latch.authenticated.load(Ordering::Acquire))
    }

    /// A token was seen: authentication is on, for good.
    fn token_seen(&self) {
        if !self.latch.authenticated.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                "an API token exists: every /api request now needs one, until the process stops"
            );
        }
        self.latch.tokens_gone.store(false, Ordering::Relaxed);
    }

    /// Looks at the tokens table, at most every [`LOOK_EVERY`].
    async fn look(&self, pool: &sqlx::PgPool) -> Result<(), ApiError> {
        let mut looked_at = self.latch.looked_at.lock().await;
        if looked_at.is_some_and(|at| at.elapsed() < LOOK_EVERY) {
            return Ok(());
        }
        let any = db::tokens::any_active(pool).await?;
        *looked_at = Some(Instant::now());
        if any {
            self.token_seen();
        } else if self.latch.authenticated.load(Ordering::Acquire)
            && !self.latch.tokens_gone.swap(true, Ordering::AcqRel)
        {
            tracing::error!(
                "no active API token: every /api request is refused until one is created; restart to run open"
            );
        }
        Ok(())
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
            let found = db::tokens::lookup(&mut *state.conns.acquire().await?, &hash).await?;
            let Some((tenant, role, id, name)) = found else {
                // Perhaps the last token was just revoked: say so in the log.
                state.auth.look(&state.pool).await?;
                return Err(ApiError::Unauthorized(
                    "the token is unknown or revoked".into(),
                ));
            };
            state.auth.token_seen();
            let role = Role::parse(&role)
                .ok_or_else(|| ApiError::Unauthorized("the token has no valid role".into()))?;
            Ok(Caller {
                tenant,
                role,
                token: Some(TokenRef { id, name }),
            })
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
