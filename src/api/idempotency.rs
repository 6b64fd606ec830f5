//! `Idempotency-Key` on POST, PATCH and DELETE: a repeat with the same key and
//! body gets the first response and creates nothing new; the same key with
//! another body is a 422. The key is claimed in the request's own transaction
//! (see `db::idempotency`), so a repeat racing the first waits for it.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use super::error::ApiError;
use crate::db;
use crate::domain::Caller;

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// A claimed or claimable key with the fingerprint of its request.
#[derive(Debug)]
pub struct Idempotency {
    /// The key as the caller sent it: the only form messages show.
    sent: String,
    /// The stored key: the caller's tenant and its key.
    key: String,
    request_hash: String,
}

impl Idempotency {
    /// The key of this request, if it sent one.
    pub fn from_request(
        headers: &HeaderMap,
        caller: &Caller,
        method: &str,
        path: &str,
        body: &Value,
    ) -> Result<Option<Self>, ApiError> {
        let Some(raw) = headers.get(HEADER) else {
            return Ok(None);
        };
        let key = raw
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 255)
            .ok_or_else(|| {
                ApiError::BadRequest(
                    "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
                )
            })?;
        let mut hasher = Sha256::new();
        for part in [method, path, &canonical(body).to_string()] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        let request_hash = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        // Keys are per tenant: one tenant's key never replays another's response.
        Ok(Some(Self {
            sent: key.to_owned(),
            key: format!("{}\u{1f}{key}", caller.tenant),
            request_hash,
        }))
    }

    /// Claims the key; `Some(response)` replays an earlier request's answer.
    pub async fn claim(&self, conn: &mut PgConnection) -> Result<Option<Response>, ApiError> {
        let Some(stored) = db::idempotency::claim(conn, &self.key, &self.request_hash).await?
        else {
            return Ok(None);
        };
        if stored.request_hash != self.request_hash {
            return Err(ApiError::invalid_field(
                "",
                format!(
                    "Idempotency-Key `{}` was already used for a different request",
                    self.sent
                ),
            ));
        }
        let status = stored
            .status
            .and_then(|s| StatusCode::from_u16(u16::try_from(s).ok()?).ok())
            .unwrap_or(StatusCode::OK);
        let mut response = respond(
            status,
            stored.response.unwrap_or(Value::Null),
            stored.location.as_deref(),
        );
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        Ok(Some(response))
    }

    /// Stores the response for later repeats.
    pub async fn store(
        &self,
        conn: &mut PgConnection,
        status: StatusCode,
        body: &Value,
        location: Option<&str>,
    ) -> Result<(), ApiError> {
        db::idempotency::complete(conn, &self.key, status.as_u16(), body, location).await?;
        Ok(())
    }
}

/// `value` with every object's keys sorted, so key order does not change the fingerprint.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), canonical(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// Commits `tx` after storing the response under the key, if any, and answers.
pub async fn commit<T: Serialize>(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    key: Option<&Idempotency>,
    status: StatusCode,
    body: &T,
    location: &str,
) -> Result<Response, ApiError> {
    let body = serde_json::to_value(body).map_err(|e| ApiError::Internal(e.into()))?;
    if let Some(key) = key {
        key.store(&mut tx, status, &body, Some(location)).await?;
    }
    tx.commit().await?;
    Ok(respond(status, body, Some(location)))
}

fn respond(status: StatusCode, body: Value, location: Option<&str>) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::{HEADER, Idempotency};
    use crate::domain::Caller;
    use axum::http::HeaderMap;
    use serde_json::json;

    fn hash(body: &serde_json::Value) -> String {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, "k".parse().unwrap());
        Idempotency::from_request(&headers, &Caller::open(), "POST", "/p", body)
            .unwrap()
            .unwrap()
            .request_hash
    }

    #[test]
    fn the_fingerprint_ignores_key_order_but_not_values() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"x": 1, "y": {"b": 2, "a": 3}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"y": {"a": 3, "b": 2}, "x": 1}"#).unwrap();
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(hash(&a), hash(&json!({"x": 2, "y": {"a": 3, "b": 2}})));
    }
}
