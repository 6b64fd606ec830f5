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
            .map_err(|e| json_rejection(&e))?;
        serde_path_to_error::deserialize(value)
            .map(Json)
            .map_err(|e| {
                let pointer = pointer(e.path());
                ApiError::invalid_field(&pointer, e.inner().to_string())
            })
    }
}

fn pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    path.iter().fold(String::new(), |mut acc, segment| {
        let part = match segment {
            Segment::Seq { index } => index.to_string(),
            Segment::Map { key } => key.replace('~', "~0").replace('/', "~1"),
            Segment::Enum { variant } => variant.clone(),
            Segment::Unknown => return acc,
        };
        acc.push('/');
        acc.push_str(&part);
        acc
    })
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
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
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[expect(dead_code, reason = "only deserialised")]
    struct Outer {
        items: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[expect(dead_code, reason = "only deserialised")]
    struct Inner {
        name: String,
    }

    #[test]
    fn serde_paths_become_json_pointers() {
        let value = serde_json::json!({"items": [{"name": "a"}, {"name": "b"}, {"name": 3}]});
        let error = serde_path_to_error::deserialize::<_, Outer>(value).unwrap_err();
        assert_eq!(pointer(error.path()), "/items/2/name");
        let value = serde_json::json!({"items": 1});
        let error = serde_path_to_error::deserialize::<_, Outer>(value).unwrap_err();
        assert_eq!(pointer(error.path()), "/items");
    }
}
