//! Extractors whose rejections speak problem+json like every other error.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::ApiError;

/// A JSON body. Malformed JSON is a 400; well-formed JSON of the wrong shape
/// is a 422 that points at the field; an oversized body is a 413.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state)
            .await
            .map_err(json_rejection)?;
        serde_path_to_error::deserialize(value)
            .map(Json)
            .map_err(|e| {
                let pointer = pointer(&e.path().to_string());
                ApiError::invalid_field(&pointer, e.inner().to_string())
            })
    }
}

fn pointer(path: &str) -> String {
    if path == "." {
        return String::new();
    }
    path.split('.')
        .map(|part| part.trim_start_matches('[').trim_end_matches(']'))
        .fold(String::new(), |mut acc, part| {
            acc.push('/');
            acc.push_str(&part.replace('~', "~0").replace('/', "~1"));
            acc
        })
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge("the request body is over the 1 MiB limit".into())
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(
            "send the body as JSON with `Content-Type: application/json`".into(),
        ),
        _ => ApiError::BadRequest(format!("malformed JSON body: {}", rejection.body_text())),
    }
}

/// An id in the path; anything but a UUID is a 400.
#[derive(Debug, Clone, Copy)]
pub struct PathId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<Uuid>::from_request_parts(parts, state)
            .await
            .map(|p| PathId(p.0))
            .map_err(|e: PathRejection| {
                ApiError::BadRequest(format!("bad id in the path: {}", e.body_text()))
            })
    }
}

/// Query parameters; a value of the wrong type is a 400.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::BadRequest(format!("bad query string: {}", e.body_text()))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::pointer;

    #[test]
    fn serde_paths_become_json_pointers() {
        assert_eq!(pointer("."), "");
        assert_eq!(pointer("attributes"), "/attributes");
        assert_eq!(pointer("items[2].name"), "/items/2/name");
        assert_eq!(pointer("a/b"), "/a~1b");
    }
}
