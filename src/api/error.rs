//! The API's one error type, rendered as RFC 9457 `application/problem+json`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::FieldError;
use crate::executor::ExecutorError;

/// An RFC 9457 problem detail.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "about:blank",
    "title": "Conflict",
    "status": 409,
    "detail": "Resource is updating (operation 0193a5c2-7f3e-7c1a-9a4e-3f1d2b8c9e01 is in flight). Valid states for operation: ok, erred"
}))]
pub struct Problem {
    /// A URI reference that identifies the problem type; `about:blank` means the status says it all.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For invalid input: one entry per problem, each pointing at a field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be read (malformed JSON, a bad id in the path).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the token's role does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such thing.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the resource's state does not allow this, or an operation is in flight.
    #[error("{0}")]
    Conflict(String),
    /// 412: `If-Match` names another version.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 413: the body is over the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: the request is well-formed but invalid.
    #[error("{detail}")]
    Invalid {
        /// A summary.
        detail: String,
        /// One entry per problem.
        errors: Vec<FieldError>,
    },
    /// 503: the database cannot be reached.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// 500: a bug or an unexpected failure; logged, never shown.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 422 for one field.
    pub fn invalid_field(pointer: &str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self::Invalid {
            detail: format!("{pointer}: {detail}"),
            errors: vec![FieldError::new(pointer, detail)],
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Self::Unavailable(e)
            }
            // Connection exceptions (08xxx) and the server shutting down (57P01-03).
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|code| {
                    code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
                }) =>
            {
                Self::Unavailable(e)
            }
            // Data exceptions (22xxx): text the database cannot store or compare, such as NUL.
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|code| code.starts_with("22")) =>
            {
                Self::BadRequest(format!(
                    "the database refused a value in the request: {}",
                    db.message()
                ))
            }
            other => Self::Internal(anyhow::Error::new(other)),
        }
    }
}

impl From<ExecutorError> for ApiError {
    fn from(e: ExecutorError) -> Self {
        match e {
            ExecutorError::NotFound(m) => Self::NotFound(m),
            ExecutorError::Conflict(m) => Self::Conflict(m),
            ExecutorError::Invalid(errors) => Self::Invalid {
                detail: errors
                    .iter()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            if e.pointer.is_empty() {
                                "/"
                            } else {
                                &e.pointer
                            },
                            e.detail
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                errors,
            },
            e @ ExecutorError::VersionMismatch { .. } => Self::PreconditionFailed(e.to_string()),
            ExecutorError::Database(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            Self::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed");
                None
            }
            Self::Unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                Some(self.to_string())
            }
            other => Some(other.to_string()),
        };
        let unauthorized = matches!(self, Self::Unauthorized(_));
        let errors = match self {
            Self::Invalid { errors, .. } => errors,
            _ => Vec::new(),
        };
        let mut response = problem(status, detail, errors);
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"executord\""),
            );
        }
        response
    }
}

/// Renders a problem+json response.
pub fn problem(status: StatusCode, detail: Option<String>, errors: Vec<FieldError>) -> Response {
    let body = Problem {
        problem_type: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("Error").into(),
        status: status.as_u16(),
        detail,
        errors,
    };
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}
