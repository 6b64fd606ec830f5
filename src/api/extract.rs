//! Extractors whose rejections speak problem+json like every other error.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::ApiError;

/// A JSON body. A body not declared as UTF-8 JSON is a 415 (see
/// [`check_json_content_type`]); malformed JSON is a 400; well-formed JSON of
/// the wrong shape is a 422 that points at the field; an oversized body is a 413.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        check_json_content_type(req.headers())?;
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| body_rejection(&e))?;
        serde_path_to_error::deserialize(json_value(&bytes)?)
            .map(Json)
            .map_err(|e| {
                let pointer = pointer(e.path());
                ApiError::invalid_field(&pointer, e.inner().to_string())
            })
    }
}

/// Refuses, with a 415, a body not declared as JSON in UTF-8: the media type
/// must be `application/json` or `application/*+json`, and a `charset`, if
/// any, `utf-8`. This also keeps browsers' cross-site form posts out, since
/// forms cannot send a JSON content type.
pub fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse = |detail: String| Err(ApiError::UnsupportedMediaType(detail));
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return refuse(
            "send the body as JSON with `Content-Type: application/json` (none was given)".into(),
        );
    };
    let Ok(value) = value.to_str() else {
        return refuse("the Content-Type is not readable text".into());
    };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let is_json = essence
        .strip_prefix("application/")
        .is_some_and(|sub| sub == "json" || sub.len() > "+json".len() && sub.ends_with("+json"));
    if !is_json {
        return refuse(format!(
            "send the body as JSON with `Content-Type: application/json`, not `{}`",
            essence.chars().take(100).collect::<String>()
        ));
    }
    for parameter in parts.map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = parameter.split_once('=') else {
            return refuse("the Content-Type has a parameter without a value".into());
        };
        let value = value.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset") && !value.eq_ignore_ascii_case("utf-8") {
            return refuse(format!(
                "JSON bodies are UTF-8: `charset={}` is not accepted",
                value.chars().take(40).collect::<String>()
            ));
        }
    }
    Ok(())
}

/// The body as a JSON value; malformed JSON is a 400.
pub fn json_value(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    axum::Json::<serde_json::Value>::from_bytes(bytes)
        .map(|axum::Json(value)| value)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {}", e.body_text())))
}

/// A body that could not be read: over the limit (413), or cut off (400).
pub fn body_rejection(rejection: &BytesRejection) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge("the request body is over the 1 MiB limit".into())
        }
        _ => ApiError::BadRequest(rejection.body_text()),
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
    use super::{check_json_content_type, pointer};
    use axum::http::{HeaderMap, HeaderValue, header};
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

    fn with_type(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        headers
    }

    #[test]
    fn only_json_in_utf_8_is_a_json_body() {
        for good in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/merge-patch+json",
            "application/vnd.api+json; ext=x",
        ] {
            assert!(check_json_content_type(&with_type(good)).is_ok(), "{good}");
        }
        for bad in [
            "text/plain",
            "text/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/+json",
            "application/jsonx",
            "application/json; charset=latin1",
            "application/json; charset=utf-16",
            "application/json; charset",
        ] {
            assert!(check_json_content_type(&with_type(bad)).is_err(), "{bad}");
        }
        assert!(check_json_content_type(&HeaderMap::new()).is_err());
    }
}
