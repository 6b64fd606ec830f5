//! SQL for `webhooks` (subscriptions), `webhook_messages` (the outbox, filled
//! by triggers in the transaction of each change) and `webhook_attempts`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A row of `webhooks`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Webhook {
    /// Its id.
    pub id: Uuid,
    /// The tenant whose events it gets.
    pub tenant: String,
    /// Where deliveries go.
    pub url: String,
    /// The signing secret (`whsec_…`).
    pub secret: String,
    /// The event types it wants.
    pub events: Vec<String>,
    /// For people.
    pub description: String,
    /// Whether it gets deliveries.
    pub enabled: bool,
    /// Why it was disabled by the service (a receiver's 410).
    pub disabled_reason: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A subscription to insert.
#[derive(Debug)]
pub struct NewWebhook<'a> {
    /// Its id.
    pub id: Uuid,
    /// Its tenant.
    pub tenant: &'a str,
    /// Its URL.
    pub url: &'a str,
    /// Its secret.
    pub secret: &'a str,
    /// Its event types.
    pub events: &'a [String],
    /// Its description.
    pub description: &'a str,
}

/// Inserts a subscription.
pub async fn insert(conn: &mut PgConnection, new: &NewWebhook<'_>) -> sqlx::Result<Webhook> {
    sqlx::query_as(
        "INSERT INTO webhooks (id, tenant, url, secret, events, description)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
    )
    .bind(new.id)
    .bind(new.tenant)
    .bind(new.url)
    .bind(new.secret)
    .bind(new.events)
    .bind(new.description)
    .fetch_one(conn)
    .await
}

/// The subscription `id` if `scope` (a tenant; `None` for all) may see it.
pub async fn get_in(
    conn: &mut PgConnection,
    id: Uuid,
    scope: Option<&str>,
) -> sqlx::Result<Option<Webhook>> {
    sqlx::query_as("SELECT * FROM webhooks WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)")
        .bind(id)
        .bind(scope)
        .fetch_optional(conn)
        .await
}

/// Subscriptions newest first, before `before` if given, at most `limit`.
pub async fn list(
    conn: &mut PgConnection,
    scope: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<Webhook>> {
    sqlx::query_as(
        "SELECT * FROM webhooks WHERE ($1::text IS NULL OR tenant = $1) AND ($2::uuid IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(scope)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// A change to a subscription; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct Patch<'a> {
    /// A new URL.
    pub url: Option<&'a str>,
    /// New event types.
    pub events: Option<&'a [String]>,
    /// Enabled or not (enabling clears the reason it was disabled).
    pub enabled: Option<bool>,
    /// A new description.
    pub description: Option<&'a str>,
}

/// Changes the subscription `id` if `scope` may see it.
pub async fn update_in(
    conn: &mut PgConnection,
    id: Uuid,
    scope: Option<&str>,
    patch: &Patch<'_>,
) -> sqlx::Result<Option<Webhook>> {
    sqlx::query_as(
        "UPDATE webhooks SET url = COALESCE($3, url), events = COALESCE($4, events),
                enabled = COALESCE($5, enabled),
                disabled_reason = CASE WHEN $5 THEN NULL ELSE disabled_reason END,
                description = COALESCE($6, description), updated_at = now()
         WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) RETURNING *",
    )
    .bind(id)
    .bind(scope)
    .bind(patch.url)
    .bind(patch.events)
    .bind(patch.enabled)
    .bind(patch.description)
    .fetch_optional(conn)
    .await
}

/// Deletes the subscription `id` (its messages and attempts with it) if `scope` may see it.
pub async fn delete_in(
    conn: &mut PgConnection,
    id: Uuid,
    scope: Option<&str>,
) -> sqlx::Result<bool> {
    let done =
        sqlx::query("DELETE FROM webhooks WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)")
            .bind(id)
            .bind(scope)
            .execute(conn)
            .await?;
    Ok(done.rows_affected() > 0)
}

/// Disables a subscription the service can no longer deliver to.
pub async fn disable(pool: &PgPool, id: Uuid, reason: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE webhooks SET enabled = false, disabled_reason = $2, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// A message claimed for delivery, with where and how to send it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    /// Its order in the outbox.
    pub seq: i64,
    /// The `webhook-id`.
    pub id: Uuid,
    /// Its subscription.
    pub webhook_id: Uuid,
    /// The event type.
    pub event_type: String,
    /// The body.
    pub payload: Value,
    /// Attempts before this one.
    pub attempts: i32,
    /// When it was written, or last sent again by request: retries run
    /// until this plus the retry window.
    pub since: DateTime<Utc>,
    /// The subscription's URL.
    pub url: String,
    /// The subscription's secret.
    pub secret: String,
}

/// Claims up to `limit` due messages of enabled subscriptions for `lease_ms`.
/// A message is due only when no earlier message of its subscription and
/// resource is still pending (order per resource), and `SKIP LOCKED` keeps
/// two processes from claiming one message.
///
/// The claim's commit does not wait for its flush to disk
/// (`synchronous_commit` off for its own transaction, as the runner's task
/// claim does): a claim lost in a database crash only lets
/// the message be claimed again sooner, which at-least-once allows.
pub async fn claim(pool: &PgPool, limit: i64, lease_ms: i64) -> sqlx::Result<Vec<Claimed>> {
    sqlx::query_as(
        "WITH quick AS (
             SELECT set_config('synchronous_commit', 'off', true)
         ), due AS (
             SELECT m.seq FROM quick, webhook_messages m
             JOIN webhooks w ON w.id = m.webhook_id AND w.enabled
             WHERE m.state = 'pending' AND m.next_attempt_at <= now()
               AND (m.lease_until IS NULL OR m.lease_until < now())
               AND NOT EXISTS (
                   SELECT 1 FROM webhook_messages p
                   WHERE p.webhook_id = m.webhook_id AND p.resource_id = m.resource_id
                     AND p.state = 'pending' AND p.seq < m.seq)
             ORDER BY m.next_attempt_at, m.seq LIMIT $1
             FOR UPDATE OF m SKIP LOCKED
         )
         UPDATE webhook_messages m SET lease_until = now() + make_interval(secs => $2::float8 / 1000)
         FROM due, webhooks w
         WHERE m.seq = due.seq AND w.id = m.webhook_id
         RETURNING m.seq, m.id, m.webhook_id, m.event_type, m.payload, m.attempts,
                   COALESCE(m.requeued_at, m.created_at) AS since, w.url, w.secret",
    )
    .bind(limit)
    .bind(lease_ms)
    .fetch_all(pool)
    .await
}

/// What became of one attempt to send a message.
#[derive(Debug)]
pub struct Sent {
    /// The message.
    pub message: Claimed,
    /// `delivered`, `failed`, `refused` (the address is not allowed) or `gone` (410).
    pub outcome: &'static str,
    /// The receiver's status code, if it answered.
    pub status_code: Option<i32>,
    /// How long it took.
    pub duration_ms: i64,
    /// What went wrong.
    pub error: Option<String>,
    /// What becomes of the message.
    pub then: Then,
}

/// What becomes of the message after an attempt.
#[derive(Debug, Clone, Copy)]
pub enum Then {
    /// Delivered: done.
    Delivered,
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// Given up.
    GiveUp,
}

/// Records attempts and what becomes of their messages, all in one
/// statement (attempts of messages deleted meanwhile, with their
/// subscription, are dropped). Its commit does not wait for the flush
/// (`synchronous_commit = off`): an attempt lost in a database crash leaves
/// its message pending under a lease that runs out, and it is sent again
/// with the same `webhook-id`, which at-least-once allows.
pub async fn record(pool: &PgPool, sent: &[Sent]) -> sqlx::Result<()> {
    let mut seqs = Vec::with_capacity(sent.len());
    let mut ids = Vec::with_capacity(sent.len());
    let mut webhook_ids = Vec::with_capacity(sent.len());
    let mut message_ids = Vec::with_capacity(sent.len());
    let mut event_types = Vec::with_capacity(sent.len());
    let mut outcomes = Vec::with_capacity(sent.len());
    let mut status_codes = Vec::with_capacity(sent.len());
    let mut durations = Vec::with_capacity(sent.len());
    let mut errors = Vec::with_capacity(sent.len());
    let mut states = Vec::with_capacity(sent.len());
    let mut nexts = Vec::with_capacity(sent.len());
    for s in sent {
        let (state, next): (&str, Option<DateTime<Utc>>) = match s.then {
            Then::Delivered => ("delivered", None),
            Then::RetryAt(at) => ("pending", Some(at)),
            Then::GiveUp => ("failed", None),
        };
        seqs.push(s.message.seq);
        ids.push(Uuid::now_v7());
        webhook_ids.push(s.message.webhook_id);
        message_ids.push(s.message.id);
        event_types.push(s.message.event_type.as_str());
        outcomes.push(s.outcome);
        status_codes.push(s.status_code);
        durations.push(s.duration_ms);
        errors.push(s.error.as_deref());
        states.push(state);
        nexts.push(next);
    }
    sqlx::query(
        "WITH quick AS (
             SELECT set_config('synchronous_commit', 'off', true)
         ), sent AS (
             SELECT s.* FROM quick, unnest($1::bigint[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                                  $6::text[], $7::int[], $8::bigint[], $9::text[], $10::text[],
                                  $11::timestamptz[])
                 AS s(seq, id, webhook_id, message_id, event_type, outcome, status_code,
                      duration_ms, error, state, next_attempt_at)
         ), updated AS (
             UPDATE webhook_messages m SET attempts = m.attempts + 1, lease_until = NULL,
                    state = s.state, next_attempt_at = COALESCE(s.next_attempt_at, m.next_attempt_at),
                    finished_at = CASE WHEN s.state = 'pending' THEN NULL ELSE now() END
             FROM sent s WHERE m.seq = s.seq
             RETURNING m.seq
         )
         -- Only for messages still there: a subscription deleted meanwhile
         -- took its messages with it.
         INSERT INTO webhook_attempts (id, webhook_id, message_id, event_type, outcome,
                                       status_code, duration_ms, error)
         SELECT s.id, s.webhook_id, s.message_id, s.event_type, s.outcome, s.status_code,
                s.duration_ms, s.error
         FROM sent s JOIN updated USING (seq)",
    )
    .bind(seqs)
    .bind(ids)
    .bind(webhook_ids)
    .bind(message_ids)
    .bind(event_types)
    .bind(outcomes)
    .bind(status_codes)
    .bind(durations)
    .bind(errors)
    .bind(states)
    .bind(nexts)
    .execute(pool)
    .await?;
    Ok(())
}

/// A row of `webhook_attempts`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    /// Its id.
    pub id: Uuid,
    /// The message (`webhook-id`).
    pub message_id: Uuid,
    /// The event type.
    pub event_type: String,
    /// How it went.
    pub outcome: String,
    /// The receiver's status code.
    pub status_code: Option<i32>,
    /// How long it took.
    pub duration_ms: i64,
    /// What went wrong.
    pub error: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A subscription's attempts newest first, before `before` if given.
pub async fn attempts(
    conn: &mut PgConnection,
    webhook_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<AttemptRow>> {
    sqlx::query_as(
        "SELECT id, message_id, event_type, outcome, status_code, duration_ms, error, created_at
         FROM webhook_attempts WHERE webhook_id = $1 AND ($2::uuid IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(webhook_id)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Makes the message of attempt (or message) `delivery_id` of subscription
/// `webhook_id` pending and due now. Whether there was one.
pub async fn redeliver(
    conn: &mut PgConnection,
    webhook_id: Uuid,
    delivery_id: Uuid,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "UPDATE webhook_messages SET state = 'pending', finished_at = NULL, next_attempt_at = now(),
                lease_until = NULL, requeued_at = now()
         WHERE webhook_id = $1 AND id IN (
             SELECT $2 UNION SELECT message_id FROM webhook_attempts WHERE id = $2 AND webhook_id = $1)
         RETURNING id",
    )
    .bind(webhook_id)
    .bind(delivery_id)
    .fetch_optional(conn)
    .await
}

/// Age in seconds of the oldest message still pending for an enabled
/// subscription (0 when none).
pub async fn oldest_pending_age(pool: &PgPool) -> sqlx::Result<f64> {
    sqlx::query_scalar(
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(COALESCE(m.requeued_at, m.created_at)))::float8, 0)
         FROM webhook_messages m JOIN webhooks w ON w.id = m.webhook_id AND w.enabled
         WHERE m.state = 'pending'",
    )
    .fetch_one(pool)
    .await
}

/// The soonest time a pending message falls due (to sleep until it).
pub async fn next_due(pool: &PgPool) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        "SELECT min(GREATEST(m.next_attempt_at, COALESCE(m.lease_until, m.next_attempt_at)))
         FROM webhook_messages m JOIN webhooks w ON w.id = m.webhook_id AND w.enabled
         WHERE m.state = 'pending'",
    )
    .fetch_one(pool)
    .await
}
