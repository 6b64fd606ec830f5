//! SQL for `idempotency_keys`.
//!
//! A key is claimed in the same transaction as the work it guards: a
//! concurrent repeat blocks on the unique key until the first commits, then
//! replays its response; if the first rolls back, the key is free again.

use serde_json::Value;
use sqlx::PgConnection;

/// The response first given for a key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stored {
    /// Hash of the first request (method, path, body).
    pub request_hash: String,
    /// Its HTTP status.
    pub status: Option<i16>,
    /// Its body.
    pub response: Option<Value>,
    /// Its `Location` header.
    pub location: Option<String>,
}

/// Claims `key` for a new request, or returns what an earlier one stored.
pub async fn claim(
    conn: &mut PgConnection,
    key: &str,
    request_hash: &str,
) -> sqlx::Result<Option<Stored>> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (key, request_hash) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(request_hash)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(None);
    }
    sqlx::query_as(
        "SELECT request_hash, status, response, location FROM idempotency_keys WHERE key = $1",
    )
    .bind(key)
    .fetch_optional(conn)
    .await
}

/// Stores the response for a claimed key.
pub async fn complete(
    conn: &mut PgConnection,
    key: &str,
    status: u16,
    response: &Value,
    location: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET status = $2, response = $3, location = $4 WHERE key = $1",
    )
    .bind(key)
    .bind(i16::try_from(status).unwrap_or(i16::MAX))
    .bind(response)
    .bind(location)
    .execute(conn)
    .await?;
    Ok(())
}
