//! SQL for `api_tokens`.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A row of `api_tokens` (never the token itself: only its hash is stored).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Token {
    /// Its id.
    pub id: Uuid,
    /// A label for people.
    pub name: String,
    /// The tenant it acts for.
    pub tenant: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
    /// The first characters of the token, to recognise it.
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Stores a new token's hash.
pub async fn insert(
    conn: &mut PgConnection,
    name: &str,
    tenant: &str,
    role: &str,
    token_hash: &str,
    prefix: &str,
) -> sqlx::Result<Token> {
    sqlx::query_as(
        "INSERT INTO api_tokens (id, name, tenant, role, token_hash, prefix) VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, name, tenant, role, prefix, created_at, revoked_at",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(tenant)
    .bind(role)
    .bind(token_hash)
    .bind(prefix)
    .fetch_one(conn)
    .await
}

/// Every token, oldest first.
pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<Token>> {
    sqlx::query_as(
        "SELECT id, name, tenant, role, prefix, created_at, revoked_at FROM api_tokens ORDER BY id",
    )
    .fetch_all(pool)
    .await
}

/// Revokes the token with this id or prefix; how many were revoked.
pub async fn revoke(pool: &PgPool, id_or_prefix: &str) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE api_tokens SET revoked_at = now()
         WHERE revoked_at IS NULL AND (id::text = $1 OR prefix = $1)",
    )
    .bind(id_or_prefix)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The tenant, role, id and name of the active token with this hash.
pub async fn lookup(
    conn: &mut sqlx::PgConnection,
    token_hash: &str,
) -> sqlx::Result<Option<(String, String, Uuid, String)>> {
    sqlx::query_as(
        "SELECT tenant, role, id, name FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
    )
    .bind(token_hash)
    .fetch_optional(conn)
    .await
}

/// Whether any token is active (if none, the service may run open).
pub async fn any_active(pool: &PgPool) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_tokens WHERE revoked_at IS NULL)")
        .fetch_one(pool)
        .await
}
