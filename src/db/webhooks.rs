//! SQL for `webhooks` (subscriptions), `webhook_events` (the outbox, one row
//! per event, written by triggers in the transaction of each change),
//! `webhook_messages` (what was not delivered at once: retries, sends still
//! running, messages queued behind those, redeliveries) and
//! `webhook_attempts`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Connection, PgConnection, PgExecutor, PgPool};
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

/// Inserts a subscription unless its tenant has `most` already (`None`
/// then). Subscriptions of one tenant are made one at a time (an advisory
/// lock on the tenant), so concurrent requests cannot pass the limit.
pub async fn insert(
    conn: &mut PgConnection,
    new: &NewWebhook<'_>,
    most: i64,
) -> sqlx::Result<Option<Webhook>> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('webhooks:' || $1, 0))")
        .bind(new.tenant)
        .execute(&mut *tx)
        .await?;
    let made = sqlx::query_as(
        "INSERT INTO webhooks (id, tenant, url, secret, events, description)
         SELECT $1, $2, $3, $4, $5, $6
         WHERE (SELECT count(*) FROM webhooks WHERE tenant = $2) < $7
         RETURNING *",
    )
    .bind(new.id)
    .bind(new.tenant)
    .bind(new.url)
    .bind(new.secret)
    .bind(new.events)
    .bind(new.description)
    .bind(most)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(made)
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
    sqlx::query_scalar(
        "WITH gone AS (
             DELETE FROM webhooks WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) RETURNING id
         ), attempts AS (
             DELETE FROM webhook_attempts WHERE webhook_id IN (SELECT id FROM gone)
         )
         SELECT EXISTS (SELECT 1 FROM gone)",
    )
    .bind(id)
    .bind(scope)
    .fetch_one(conn)
    .await
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

/// A message to send, with where and how to send it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    /// Its row in `webhook_messages`; `None` for a message of an event
    /// being fanned out, which has no row.
    pub seq: Option<i64>,
    /// The `webhook-id`.
    pub id: Uuid,
    /// Its subscription.
    pub webhook_id: Uuid,
    /// The event type.
    pub event_type: String,
    /// The body, as sent.
    #[sqlx(try_from = "String")]
    pub payload: Arc<str>,
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
/// two processes from claiming one message. The deliverer runs it with
/// [`claim_events`] in one transaction, committed without waiting for its
/// flush.
pub async fn claim(
    conn: impl PgExecutor<'_>,
    limit: i64,
    lease_ms: i64,
) -> sqlx::Result<Vec<Claimed>> {
    sqlx::query_as(
        "WITH due AS (
             SELECT m.seq FROM webhook_messages m
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
         RETURNING m.seq, m.id, m.webhook_id, m.event_type, m.payload::text AS payload, m.attempts,
                   COALESCE(m.requeued_at, m.created_at) AS since, w.url, w.secret",
    )
    .bind(limit)
    .bind(lease_ms)
    .fetch_all(conn)
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
pub async fn record(conn: impl PgExecutor<'_>, sent: &[Sent]) -> sqlx::Result<()> {
    let mut seqs = Vec::with_capacity(sent.len());
    let mut attempts = Attempts::default();
    let mut states = Vec::with_capacity(sent.len());
    let mut nexts = Vec::with_capacity(sent.len());
    for s in sent {
        let (state, next): (&str, Option<DateTime<Utc>>) = match s.then {
            Then::Delivered => ("delivered", None),
            Then::RetryAt(at) => ("pending", Some(at)),
            Then::GiveUp => ("failed", None),
        };
        let Some(seq) = s.message.seq else {
            continue;
        };
        seqs.push(seq);
        attempts.push(s, None);
        states.push(state);
        nexts.push(next);
    }
    let mut args = PgArguments::default();
    args.add(seqs).map_err(sqlx::Error::Encode)?;
    attempts.add_to(&mut args)?;
    args.add(states).map_err(sqlx::Error::Encode)?;
    args.add(nexts).map_err(sqlx::Error::Encode)?;
    sqlx::query_with(
        "WITH quick AS (
             SELECT set_config('synchronous_commit', 'off', true)
         ), sent AS (
             SELECT s.* FROM quick, unnest($1::bigint[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                                  $6::text[], $7::int[], $8::bigint[], $9::text[], $10::bigint[],
                                  $11::text[], $12::timestamptz[])
                 AS s(seq, id, webhook_id, message_id, event_type, outcome, status_code,
                      duration_ms, error, event_seq, state, next_attempt_at)
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
                                       status_code, duration_ms, error, event_seq)
         SELECT s.id, s.webhook_id, s.message_id, s.event_type, s.outcome, s.status_code,
                s.duration_ms, s.error, s.event_seq
         FROM sent s JOIN updated USING (seq)",
        args,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Attempts to insert, as the columns `unnest` takes (nine arrays, in the
/// order of [`Attempts::add_to`]).
#[derive(Debug, Default)]
struct Attempts<'a> {
    ids: Vec<Uuid>,
    webhook_ids: Vec<Uuid>,
    message_ids: Vec<Uuid>,
    event_types: Vec<&'a str>,
    outcomes: Vec<&'a str>,
    status_codes: Vec<Option<i32>>,
    durations: Vec<i64>,
    errors: Vec<Option<&'a str>>,
    event_seqs: Vec<Option<i64>>,
}

impl<'a> Attempts<'a> {
    /// Adds the attempt `s` (of event `event_seq`, when it was fanned out).
    fn push(&mut self, s: &'a Sent, event_seq: Option<i64>) {
        self.ids.push(Uuid::now_v7());
        self.webhook_ids.push(s.message.webhook_id);
        self.message_ids.push(s.message.id);
        self.event_types.push(s.message.event_type.as_str());
        self.outcomes.push(s.outcome);
        self.status_codes.push(s.status_code);
        self.durations.push(s.duration_ms);
        self.errors.push(s.error.as_deref());
        self.event_seqs.push(event_seq);
    }

    /// Binds the columns: id, webhook_id, message_id, event_type, outcome,
    /// status_code, duration_ms, error, event_seq.
    fn add_to(self, args: &mut PgArguments) -> sqlx::Result<()> {
        args.add(self.ids).map_err(sqlx::Error::Encode)?;
        args.add(self.webhook_ids).map_err(sqlx::Error::Encode)?;
        args.add(self.message_ids).map_err(sqlx::Error::Encode)?;
        args.add(self.event_types).map_err(sqlx::Error::Encode)?;
        args.add(self.outcomes).map_err(sqlx::Error::Encode)?;
        args.add(self.status_codes).map_err(sqlx::Error::Encode)?;
        args.add(self.durations).map_err(sqlx::Error::Encode)?;
        args.add(self.errors).map_err(sqlx::Error::Encode)?;
        args.add(self.event_seqs).map_err(sqlx::Error::Encode)
    }
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
/// `webhook_id` pending and due now: its row if it has one, or a new one
/// from its event (a message delivered at once has none). Which message,
/// if there was one.
pub async fn redeliver(
    conn: &mut PgConnection,
    webhook_id: Uuid,
    delivery_id: Uuid,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "WITH wanted AS (
             SELECT m.id, m.tenant, m.resource_id, m.event_type, m.payload, m.created_at
             FROM webhook_messages m
             WHERE m.webhook_id = $1 AND m.id IN (
                 SELECT $2 UNION SELECT message_id FROM webhook_attempts WHERE id = $2 AND webhook_id = $1)
             UNION ALL
             SELECT a.message_id, e.tenant, e.resource_id, e.event_type, e.payload, e.created_at
             FROM webhook_attempts a JOIN webhook_events e ON e.seq = a.event_seq
             WHERE a.webhook_id = $1 AND (a.id = $2 OR a.message_id = $2)
             LIMIT 1
         )
         INSERT INTO webhook_messages (id, webhook_id, tenant, resource_id, event_type, payload,
                                       created_at, requeued_at)
         SELECT id, $1, tenant, resource_id, event_type, payload, created_at, now() FROM wanted
         ON CONFLICT (id) DO UPDATE SET state = 'pending', finished_at = NULL, next_attempt_at = now(),
                lease_until = NULL, requeued_at = now()
         RETURNING id",
    )
    .bind(webhook_id)
    .bind(delivery_id)
    .fetch_optional(conn)
    .await
}

/// Age in seconds of the oldest event not yet fanned out or message still
/// pending for an enabled subscription (0 when none).
pub async fn oldest_pending_age(pool: &PgPool) -> sqlx::Result<f64> {
    sqlx::query_scalar(
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - LEAST(
             (SELECT min(created_at) FROM webhook_events WHERE fanned_out_at IS NULL),
             (SELECT min(COALESCE(m.requeued_at, m.created_at))
              FROM webhook_messages m JOIN webhooks w ON w.id = m.webhook_id AND w.enabled
              WHERE m.state = 'pending')))::float8, 0)",
    )
    .fetch_one(pool)
    .await
}

/// An event claimed to fan out, with its messages: one per enabled
/// subscription that wants it.
#[derive(Debug)]
pub struct Event {
    /// Its row in `webhook_events`.
    pub seq: i64,
    /// Its messages to send now.
    pub send: Vec<Claimed>,
    /// Its messages to queue instead, behind a pending message of their
    /// subscription and resource (order per resource).
    pub behind: Vec<Claimed>,
}

/// A row of the fan-out claim: an event, with the subscriptions that want
/// it as arrays in one order (empty when none wants it any more).
#[derive(Debug, sqlx::FromRow)]
struct EventRow {
    seq: i64,
    id: Uuid,
    event_type: String,
    payload: String,
    created_at: DateTime<Utc>,
    webhook_ids: Vec<Uuid>,
    urls: Vec<String>,
    secrets: Vec<String>,
    behind: Vec<bool>,
}

/// The uuid of the message of event `event` to subscription `webhook` (what
/// its `webhook-id` is made of): the same on every attempt, in every
/// process and after a crash. The MD5 of the two uuids' texts, as the
/// database's `webhook_message_id` derives it; derived here, it costs the
/// claim nothing.
pub fn message_uuid(event: Uuid, webhook: Uuid) -> Uuid {
    use md5::Digest;
    let digest = md5::Md5::digest(format!("{event}{webhook}"));
    Uuid::from_bytes(digest.into())
}

/// Claims up to `limit` events to fan out, for `lease_ms`, oldest first. An
/// event is claimed only when no earlier event of its resource is still to
/// fan out (order per resource), and `SKIP LOCKED` keeps two processes from
/// claiming one event. Each event comes once, its payload as the text to
/// send, shared by its messages. Run with [`claim`], in its transaction.
pub async fn claim_events(
    conn: impl PgExecutor<'_>,
    limit: i64,
    lease_ms: i64,
) -> sqlx::Result<Vec<Event>> {
    let rows: Vec<EventRow> = sqlx::query_as(
        "WITH due AS (
             SELECT e.seq FROM webhook_events e
             WHERE e.fanned_out_at IS NULL AND (e.lease_until IS NULL OR e.lease_until < now())
               AND NOT EXISTS (
                   SELECT 1 FROM webhook_events p
                   WHERE p.resource_id = e.resource_id AND p.fanned_out_at IS NULL AND p.seq < e.seq)
             ORDER BY e.seq LIMIT $1
             FOR UPDATE OF e SKIP LOCKED
         ), claimed AS (
             UPDATE webhook_events e SET lease_until = now() + make_interval(secs => $2::float8 / 1000)
             FROM due WHERE e.seq = due.seq
             RETURNING e.seq, e.id, e.tenant, e.resource_id, e.event_type, e.payload, e.created_at
         )
         SELECT c.seq, c.id, c.event_type, c.payload::text AS payload, c.created_at,
                COALESCE(s.webhook_ids, '{}') AS webhook_ids,
                COALESCE(s.urls, '{}') AS urls, COALESCE(s.secrets, '{}') AS secrets,
                COALESCE(s.behind, '{}') AS behind
         FROM claimed c
         CROSS JOIN LATERAL (
             SELECT array_agg(w.id ORDER BY w.id) AS webhook_ids,
                    array_agg(w.url ORDER BY w.id) AS urls,
                    array_agg(w.secret ORDER BY w.id) AS secrets,
                    array_agg(EXISTS (SELECT 1 FROM webhook_messages m
                                      WHERE m.webhook_id = w.id AND m.resource_id = c.resource_id
                                        AND m.state = 'pending') ORDER BY w.id) AS behind
             FROM webhooks w
             WHERE w.tenant = c.tenant AND w.enabled AND c.event_type = ANY (w.events)
         ) s
         ORDER BY c.seq",
    )
    .bind(limit)
    .bind(lease_ms)
    .fetch_all(conn)
    .await?;
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let payload: Arc<str> = row.payload.into();
        let mut event = Event {
            seq: row.seq,
            send: Vec::new(),
            behind: Vec::new(),
        };
        let messages = row
            .webhook_ids
            .into_iter()
            .zip(row.urls.into_iter().zip(row.secrets))
            .zip(row.behind);
        for ((webhook_id, (url, secret)), behind) in messages {
            let message = Claimed {
                seq: None,
                id: message_uuid(row.id, webhook_id),
                webhook_id,
                event_type: row.event_type.clone(),
                payload: payload.clone(),
                attempts: 0,
                since: row.created_at,
                url,
                secret,
            };
            if behind {
                event.behind.push(message);
            } else {
                event.send.push(message);
            }
        }
        events.push(event);
    }
    Ok(events)
}

/// What became of an event's fan-out.
#[derive(Debug)]
pub struct Fanned {
    /// The event.
    pub seq: i64,
    /// Sends that ended.
    pub sent: Vec<Sent>,
    /// Messages still being sent: queued as pending under a lease of
    /// `lease_ms`, their attempts recorded by [`record`] when they end.
    pub sending: Vec<Claimed>,
    /// Messages queued behind a pending message of their subscription and
    /// resource, due now.
    pub behind: Vec<Claimed>,
}

/// Records fanned-out events, all in one statement: each event is marked
/// fanned out; each ended send gets its attempt; a message not delivered
/// (to retry, given up, still being sent, or queued behind another) gets a
/// `webhook_messages` row, its payload copied from its event. Messages of
/// subscriptions deleted meanwhile are dropped. Returns the rows made for
/// the messages still being sent (`id`, `seq`). Its commit does not wait for
/// the flush, as [`record`]'s: lost in a database crash, the events are
/// fanned out again with the same `webhook-id`s.
pub async fn record_fanned(
    conn: &mut PgConnection,
    fanned: &[Fanned],
    lease_ms: i64,
) -> sqlx::Result<Vec<(Uuid, i64)>> {
    let events: Vec<i64> = fanned.iter().map(|f| f.seq).collect();
    let mut attempts = Attempts::default();
    let mut m_ids = Vec::new();
    let mut m_webhooks = Vec::new();
    let mut m_events = Vec::new();
    let mut m_states: Vec<&str> = Vec::new();
    let mut m_attempts: Vec<i32> = Vec::new();
    let mut m_nexts: Vec<Option<DateTime<Utc>>> = Vec::new();
    let mut m_leased: Vec<bool> = Vec::new();
    for f in fanned {
        for s in &f.sent {
            attempts.push(s, Some(f.seq));
            let (state, next) = match s.then {
                Then::Delivered => continue,
                Then::RetryAt(at) => ("pending", Some(at)),
                Then::GiveUp => ("failed", None),
            };
            m_ids.push(s.message.id);
            m_webhooks.push(s.message.webhook_id);
            m_events.push(f.seq);
            m_states.push(state);
            m_attempts.push(1);
            m_nexts.push(next);
            m_leased.push(false);
        }
        for (queued, leased) in [(&f.sending, true), (&f.behind, false)] {
            for m in queued {
                m_ids.push(m.id);
                m_webhooks.push(m.webhook_id);
                m_events.push(f.seq);
                m_states.push("pending");
                m_attempts.push(0);
                m_nexts.push(None);
                m_leased.push(leased);
            }
        }
    }
    let mut args = PgArguments::default();
    args.add(events).map_err(sqlx::Error::Encode)?;
    attempts.add_to(&mut args)?;
    args.add(m_ids).map_err(sqlx::Error::Encode)?;
    args.add(m_webhooks).map_err(sqlx::Error::Encode)?;
    args.add(m_events).map_err(sqlx::Error::Encode)?;
    args.add(m_states).map_err(sqlx::Error::Encode)?;
    args.add(m_attempts).map_err(sqlx::Error::Encode)?;
    args.add(m_nexts).map_err(sqlx::Error::Encode)?;
    args.add(m_leased).map_err(sqlx::Error::Encode)?;
    args.add(lease_ms).map_err(sqlx::Error::Encode)?;
    // A big statement, planned afresh at every call for a small batch (the
    // custom plan for a few rows looks cheaper than the generic one): its
    // planning cost as much as running it. Hence the generic plan.
    let mut tx = conn
        .begin_with(
            "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; \
             SET LOCAL synchronous_commit = off",
        )
        .await?;
    let rows = sqlx::query_as_with(
        "WITH fanned AS (
             UPDATE webhook_events SET fanned_out_at = now(), lease_until = NULL
             WHERE seq = ANY ($1::bigint[])
         ), attempts AS (
             INSERT INTO webhook_attempts (id, webhook_id, message_id, event_type, outcome,
                                           status_code, duration_ms, error, event_seq)
             SELECT a.* FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[],
                                    $7::int[], $8::bigint[], $9::text[], $10::bigint[])
                 AS a(id, webhook_id, message_id, event_type, outcome, status_code, duration_ms,
                      error, event_seq)
             WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.id = a.webhook_id)
         )
         INSERT INTO webhook_messages (id, webhook_id, tenant, resource_id, event_type, payload,
                                       state, attempts, next_attempt_at, lease_until, created_at,
                                       finished_at)
         SELECT m.id, m.webhook_id, e.tenant, e.resource_id, e.event_type, e.payload, m.state,
                m.attempts, COALESCE(m.next_attempt_at, now()),
                CASE WHEN m.leased THEN now() + make_interval(secs => $18::float8 / 1000) END,
                e.created_at, CASE WHEN m.state = 'pending' THEN NULL ELSE now() END
         FROM unnest($11::uuid[], $12::uuid[], $13::bigint[], $14::text[], $15::int[],
                     $16::timestamptz[], $17::bool[]) WITH ORDINALITY
             AS m(id, webhook_id, event_seq, state, attempts, next_attempt_at, leased, n)
         JOIN webhook_events e ON e.seq = m.event_seq
         WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.id = m.webhook_id)
         ORDER BY m.n
         ON CONFLICT (id) DO NOTHING
         RETURNING id, seq",
        args,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}
