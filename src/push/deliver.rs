//! The deliverer: fans the outbox's events out to their subscriptions after
//! commit, at least once, in order per resource and subscription. Every
//! process that runs workers runs one; a claim (of an event, or of a
//! pending message) is a short lease taken with `FOR UPDATE SKIP LOCKED`,
//! so two processes never send one message at the same time, and a process
//! that dies leaves its claims to expire (the same `webhook-id` is sent
//! again).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::{Connection, PgPool};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use uuid::Uuid;

use super::address::{CheckedResolver, Refused, check_target};
use super::{PushConfig, message_id, sign};

use crate::backend::http::reply::{self, ERROR_BODY_LIMIT, read_prefix};
use crate::db;
use crate::db::webhooks::{self, Claimed, Event, Fanned, Sent, Then};

/// What one claim found.
#[derive(Default)]
struct Claims {
    messages: Vec<Claimed>,
    events: Vec<Event>,
    /// Whether either claim took as many as it asked for (more may wait).
    full: bool,
}

impl Claims {
    fn any(&self) -> bool {
        !self.messages.is_empty() || !self.events.is_empty()
    }
}

/// A message of an event still being sent when its event was recorded.
struct Slow {
    message: Claimed,
    task: JoinHandle<Sent>,
}

/// Messages one process sends at once.
const IN_FLIGHT: usize = 64;
/// How long an event's sends are waited for before those still running are
/// queued as messages, so that the event is done and the resource's next
/// events go on to the other subscriptions.
const GRACE: Duration = Duration::from_millis(500);
/// The wait after a claim that emptied the outbox, so that the next one
/// takes a batch.
const LINGER: Duration = Duration::from_millis(100);
/// The longest wait between looks at the outbox.
const IDLE: Duration = Duration::from_millis(500);
/// The longest delay between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(3600);
/// Longest error text kept per attempt.
const ERROR_CHARS: usize = 500;

/// Sends webhook messages.
#[derive(Debug, Clone)]
pub struct Deliverer {
    pool: PgPool,
    client: reqwest::Client,
    config: Arc<PushConfig>,
    /// One per POST under way: at most `IN_FLIGHT`, however many
    /// subscriptions one event has.
    posts: Arc<Semaphore>,
}

impl Deliverer {
    /// A deliverer on `pool`.
    pub fn new(pool: PgPool, config: PushConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(CheckedResolver {
                allow_private: config.allow_private,
            }))
            .user_agent(concat!("executord/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            pool,
            client,
            config: Arc::new(config),
            posts: Arc::new(Semaphore::new(IN_FLIGHT)),
        })
    }

    /// Delivers until `stopping` turns true, then finishes and records the
    /// sends under way.
    ///
    /// A pipeline, not rounds: up to 64 POSTs run at once. Events are
    /// claimed and fanned out (each to all its subscriptions at once), and
    /// so are the pending messages (retries, redeliveries); what has ended
    /// is recorded together, one statement for the events and one for the
    /// messages, whenever something ends. A send still running after half a
    /// second is queued as a pending message (under its lease) so that its
    /// event is done: a slow receiver holds back its own messages, not the
    /// other subscriptions' next events of the same resource.
    ///
    /// Claims are paced: after a claim that emptied the outbox the next
    /// comes 100 ms later, after one that found nothing half a second
    /// later, and while a backlog lasts whenever half the slots are free.
    /// A busy outbox so costs a claim and a recording per batch of events,
    /// not per event. The statements run on one connection held while
    /// there is work (planned once, not on every pool connection).
    pub async fn run(self, mut stopping: watch::Receiver<bool>) {
        let mut held = db::Held::new(self.pool.clone());
        let mut sending: JoinSet<Sent> = JoinSet::new();
        let mut fanning: JoinSet<(Vec<Fanned>, Vec<Slow>)> = JoinSet::new();
        // Sends under way in `fanning`; subscriptions per event last seen.
        let (mut fanning_sends, mut fan) = (0usize, 1usize);
        let mut next_claim = tokio::time::Instant::now();
        let (mut backlog, mut found) = (false, true);
        loop {
            let stop = *stopping.borrow();
            let free = IN_FLIGHT.saturating_sub(sending.len() + fanning_sends);
            let now = tokio::time::Instant::now();
            if !stop && free > 0 && (now >= next_claim || (backlog && free >= IN_FLIGHT / 2)) {
                let claimed = self.claim(&mut held, free, fan).await;
                (backlog, found) = (claimed.full, claimed.any());
                next_claim = now
                    + if claimed.any() && !claimed.full {
                        LINGER
                    } else {
                        IDLE
                    };
                for message in claimed.messages {
                    let this = self.clone();
                    sending.spawn(async move { this.send(message).await });
                }
                let sends: usize = claimed.events.iter().map(|e| e.send.len()).sum();
                if !claimed.events.is_empty() {
                    fan = (sends / claimed.events.len()).max(1);
                }
                fanning_sends += sends;
                if !claimed.events.is_empty() {
                    let this = self.clone();
                    fanning.spawn(async move { this.fan_out(claimed.events).await });
                }
            }
            if sending.is_empty() && fanning.is_empty() {
                fanning_sends = 0;
                if stop {
                    return;
                }
                if !found {
                    // Idle: hold no connection.
                    held.release();
                }
                tokio::select! {
                    () = tokio::time::sleep_until(next_claim) => {}
                    _ = stopping.changed() => {}
                }
                continue;
            }
            // Wait for something to end (or for the next claim, if there
            // will be room for one), then take everything that has ended.
            let room = !stop && IN_FLIGHT > sending.len() + fanning_sends;
            let wake = if room { next_claim } else { now + IDLE };
            let mut sent = Vec::new();
            let mut fanned = Vec::new();
            tokio::select! {
                Some(joined) = sending.join_next() => take(joined, &mut sent),
                Some(joined) = fanning.join_next() => take(joined, &mut fanned),
                () = tokio::time::sleep_until(wake) => {}
            }
            while let Some(joined) = sending.try_join_next() {
                take(joined, &mut sent);
            }
            while let Some(joined) = fanning.try_join_next() {
                take(joined, &mut fanned);
            }
            if fanning.is_empty() {
                // Also forgets the sends of a fan-out task that failed.
                fanning_sends = 0;
            }
            if !fanned.is_empty() {
                let (fanned, slow): (Vec<Vec<Fanned>>, Vec<Vec<Slow>>) = fanned.into_iter().unzip();
                let fanned: Vec<Fanned> = fanned.into_iter().flatten().collect();
                let ended: usize = fanned.iter().map(|f| f.sent.len() + f.sending.len()).sum();
                fanning_sends = fanning_sends.saturating_sub(ended);
                self.record_fanned(&mut held, &fanned, slow.into_iter().flatten(), &mut sending)
                    .await;
            }
            if !sent.is_empty() {
                let recorded = async { webhooks::record(held.get().await?, &sent).await };
                if let Err(e) = recorded.await {
                    // Their leases run out and they are sent again (same
                    // `webhook-id`): at least once.
                    tracing::warn!(error = %e, count = sent.len(), "recording webhook attempts failed");
                    held.release();
                }
            }
        }
    }

    /// A claim's lease: three times the receiver's timeout.
    fn lease_ms(&self) -> i64 {
        i64::try_from(self.config.timeout.as_millis() * 3).unwrap_or(i64::MAX)
    }

    /// Claims due messages for up to `free` slots, and events for the slots
    /// left (at `fan` messages per event).
    async fn claim(&self, held: &mut db::Held, free: usize, fan: usize) -> Claims {
        match self.try_claim(held, free, fan).await {
            Ok(claims) => claims,
            Err(e) => {
                tracing::warn!(error = %e, "claiming webhook messages and events failed");
                held.release();
                Claims::default()
            }
        }
    }

    /// Both claims, in one transaction on generic plans: the event claim's
    /// custom plans (which PostgreSQL went on making, as they looked cheaper
    /// for a few rows) cost a third of a millisecond each, as much as
    /// running it. Its commit does not wait for its flush to disk, as the
    /// runner's task claim: a claim lost in a database crash only lets its
    /// messages and events be claimed again sooner, which at-least-once
    /// allows.
    async fn try_claim(
        &self,
        held: &mut db::Held,
        free: usize,
        fan: usize,
    ) -> sqlx::Result<Claims> {
        let mut claims = Claims::default();
        let mut tx = held
            .get()
            .await?
            .begin_with(
                "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; \
                 SET LOCAL synchronous_commit = off",
            )
            .await?;
        claims.messages = webhooks::claim(&mut *tx, to_i64(free), self.lease_ms()).await?;
        claims.full = claims.messages.len() == free;
        let left = free.saturating_sub(claims.messages.len());
        if left > 0 {
            let limit = (left / fan).max(1);
            claims.events =
                webhooks::claim_events(&mut *tx, to_i64(limit), self.lease_ms()).await?;
            claims.full |= claims.events.len() == limit;
        }
        tx.commit().await?;
        Ok(claims)
    }

    /// Sends the messages of a claim's events all at once and waits for
    /// them for up to `GRACE`; those still running are handed back with
    /// their tasks. One task per claim, so a claim is recorded at once.
    async fn fan_out(self, events: Vec<Event>) -> (Vec<Fanned>, Vec<Slow>) {
        let started: Vec<_> = events
            .into_iter()
            .map(|event| {
                let sends: Vec<(Claimed, JoinHandle<Sent>)> = event
                    .send
                    .into_iter()
                    .map(|message| {
                        let this = self.clone();
                        let copy = message.clone();
                        (message, tokio::spawn(async move { this.send(copy).await }))
                    })
                    .collect();
                (event.seq, event.behind, sends)
            })
            .collect();
        let deadline = tokio::time::Instant::now() + GRACE;
        let mut fanned = Vec::with_capacity(started.len());
        let mut slow = Vec::new();
        for (seq, behind, sends) in started {
            let mut sent = Vec::new();
            let mut sending = Vec::new();
            for (message, mut task) in sends {
                match tokio::time::timeout_at(deadline, &mut task).await {
                    Ok(Ok(one)) => sent.push(one),
                    Ok(Err(e)) => sent.push(self.lost(message, &e)),
                    Err(_) => {
                        sending.push(message.clone());
                        slow.push(Slow { message, task });
                    }
                }
            }
            fanned.push(Fanned {
                seq,
                sent,
                sending,
                behind,
            });
        }
        (fanned, slow)
    }

    /// Records fanned-out events; the sends still running continue as
    /// messages, recorded by [`webhooks::record`] when they end. If the
    /// recording fails, the events' leases run out and they are fanned out
    /// again (the same `webhook-id`s): at least once.
    async fn record_fanned(
        &self,
        held: &mut db::Held,
        fanned: &[Fanned],
        slow: impl Iterator<Item = Slow>,
        sending: &mut JoinSet<Sent>,
    ) {
        let recorded =
            async { webhooks::record_fanned(held.get().await?, fanned, self.lease_ms()).await };
        let rows = match recorded.await {
            Ok(rows) => rows.into_iter().collect::<HashMap<Uuid, i64>>(),
            Err(e) => {
                tracing::warn!(error = %e, count = fanned.len(), "recording webhook events failed");
                held.release();
                HashMap::new()
            }
        };
        for Slow { mut message, task } in slow {
            // Without its row (not recorded, or its subscription deleted
            // meanwhile) it ends unrecorded.
            let Some(&seq) = rows.get(&message.id) else {
                continue;
            };
            message.seq = Some(seq);
            let this = self.clone();
            sending.spawn(async move {
                match task.await {
                    Ok(mut sent) => {
                        sent.message.seq = Some(seq);
                        sent
                    }
                    Err(e) => this.lost(message, &e),
                }
            });
        }
    }

    /// A send whose task failed: recorded as a failed attempt, and retried.
    fn lost(&self, message: Claimed, e: &tokio::task::JoinError) -> Sent {
        tracing::warn!(error = %e, "a webhook delivery task failed");
        let then = self.retry(&message);
        Sent {
            message,
            outcome: "failed",
            status_code: None,
            duration_ms: 0,
            error: Some(format!("the delivery task failed: {e}")),
            then,
        }
    }

    /// Sends one message; what became of it, to record.
    async fn send(&self, message: Claimed) -> Sent {
        // Never closed; were it, the POST would go ahead unbounded.
        let _permit = self.posts.acquire().await.ok();
        let started = Instant::now();
        let (outcome, status_code, error) = self.post(&message).await;
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        crate::metrics::webhook_delivered(outcome);
        let then = match outcome {
            "delivered" => Then::Delivered,
            "gone" => Then::GiveUp,
            _ => self.retry(&message),
        };
        if outcome == "gone" {
            if let Err(e) = webhooks::disable(
                &self.pool,
                message.webhook_id,
                "the receiver answered 410 Gone",
            )
            .await
            {
                tracing::warn!(error = %e, webhook_id = %message.webhook_id, "disabling a subscription failed");
            }
            tracing::warn!(webhook_id = %message.webhook_id, "a receiver answered 410: subscription disabled");
        }
        if matches!(then, Then::GiveUp) && outcome != "gone" {
            tracing::warn!(webhook_id = %message.webhook_id, message_id = %message.id,
                "gave up on a webhook message after its retry window");
        }
        Sent {
            message,
            outcome,
            status_code,
            duration_ms,
            error: error.map(|e| e.chars().take(ERROR_CHARS).collect()),
            then,
        }
    }

    /// One POST: its outcome, the status code and the error.
    async fn post(&self, message: &Claimed) -> (&'static str, Option<i32>, Option<String>) {
        // The name's addresses are checked by the client's resolver, for
        // the connection it opens (none for a connection it reuses).
        let url = match check_target(&message.url, self.config.allow_private) {
            Ok(url) => url,
            Err(e) => return ("refused", None, Some(e.to_string())),
        };
        let id = message_id(message.id);
        let timestamp = Utc::now().timestamp();
        let body = message.payload.to_string();
        let signature = sign(&message.secret, &id, timestamp, &body);
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(reply) => {
                let status = reply.status();
                let code = Some(i32::from(status.as_u16()));
                // The answer's body is read (up to a cap) so that its
                // connection can carry the next message: one dropped unread
                // is closed, and the next message pays a new connection (a
                // TLS handshake, over https).
                let body = read_prefix(reply, ERROR_BODY_LIMIT).await;
                if status.is_success() {
                    ("delivered", code, None)
                } else if status == reqwest::StatusCode::GONE {
                    ("gone", code, Some("410 Gone".into()))
                } else {
                    let answered = format!("the receiver answered {status}");
                    let error = match reply::message(&body) {
                        Some(detail) => format!("{answered}: {detail}"),
                        None => answered,
                    };
                    ("failed", code, Some(error))
                }
            }
            Err(e) if refused(&e) => ("refused", None, Some(describe(&e))),
            Err(e) => ("failed", None, Some(describe(&e))),
        }
    }

    /// When to try `message` again, or to give up: the base delay doubled
    /// per attempt made (this one included), ±25% jitter, at most an hour,
    /// within the retry window.
    fn retry(&self, message: &Claimed) -> Then {
        let made = u32::try_from(message.attempts).unwrap_or(0);
        let delay = self
            .config
            .retry_base
            .saturating_mul(2u32.saturating_pow(made.min(20)))
            .min(MAX_DELAY);
        let jitter = rand::random_range(0.75..1.25);
        let delay = delay.mul_f64(jitter);
        let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero());
        let deadline = message.since
            + chrono::Duration::from_std(self.config.retry_for).unwrap_or(chrono::Duration::MAX);
        if at > deadline {
            Then::GiveUp
        } else {
            Then::RetryAt(at)
        }
    }
}

/// Keeps what a task returned; a task that failed is logged (its message is
/// sent again when its lease runs out).
fn take<T>(joined: Result<T, tokio::task::JoinError>, into: &mut Vec<T>) {
    match joined {
        Ok(one) => into.push(one),
        Err(e) => tracing::warn!(error = %e, "a webhook delivery task failed"),
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Whether the client's resolver refused the name's addresses.
fn refused(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if cause.is::<Refused>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// A delivery error with its causes, which name what went wrong.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::super::address;
    use super::*;

    fn message(url: String) -> Claimed {
        Claimed {
            seq: None,
            id: Uuid::now_v7(),
            webhook_id: Uuid::now_v7(),
            event_type: "operation.succeeded".into(),
            payload: "{}".into(),
            attempts: 0,
            since: Utc::now(),
            url,
            secret: super::super::new_secret(),
        }
    }

    fn deliverer(config: PushConfig) -> Deliverer {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        Deliverer::new(pool, config).unwrap()
    }

    /// However many subscriptions one event has, one process has at most
    /// `IN_FLIGHT` POSTs under way: a tenant cannot make the deliverer
    /// open thousands of connections at once.
    #[tokio::test]
    async fn posts_under_way_are_bounded_whatever_the_fan_out() {
        // Accepts connections and never answers them.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(stream);
            }
        });
        let deliverer = deliverer(PushConfig {
            allow_private: true,
            timeout: Duration::from_secs(3),
            ..PushConfig::default()
        });
        let mut sends = JoinSet::new();
        for _ in 0..200 {
            let d = deliverer.clone();
            let m = message(format!("http://127.0.0.1:{port}/hook"));
            sends.spawn(async move { d.send(m).await });
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let open = accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(open, IN_FLIGHT, "connections opened while 200 sends wait");
        sends.abort_all();
    }

    /// Serves HTTP/1.1 on a real socket, keeping connections open: every
    /// request to a path starting `/fail` is answered 500 with a problem
    /// body, any other 200 with a small JSON body (as receivers often
    /// answer), written after the head. Returns its port and the number of
    /// connections accepted.
    fn keep_alive_receiver() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    loop {
                        let (mut line, mut path, mut length) = (String::new(), String::new(), 0);
                        while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                            if path.is_empty() {
                                path = line.split(' ').nth(1).unwrap_or("").to_owned();
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = v.trim().parse().unwrap();
                            }
                            line.clear();
                        }
                        if path.is_empty() {
                            return;
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        let (status, answer) = if path.starts_with("/fail") {
                            (
                                "500 Internal Server Error",
                                r#"{"detail":"the disk is full"}"#,
                            )
                        } else {
                            ("200 OK", r#"{"ok":true}"#)
                        };
                        let head = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            answer.len()
                        );
                        // The body a moment after the head, as from a
                        // server that writes them apart.
                        if stream.write_all(head.as_bytes()).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                        if stream.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    /// A receiver's answer is read, so its connection carries the next
    /// message (one dropped unread is closed: each message would pay a new
    /// connection); an error answer's body says why in the attempt.
    #[tokio::test]
    async fn a_receiver_s_answer_is_read_so_its_connection_carries_the_next_message() {
        let (port, accepted) = keep_alive_receiver();
        let deliverer = deliverer(PushConfig {
            allow_private: true,
            ..PushConfig::default()
        });
        for _ in 0..5 {
            let (outcome, code, error) = deliverer
                .post(&message(format!("http://127.0.0.1:{port}/hook")))
                .await;
            assert_eq!((outcome, code, error), ("delivered", Some(200), None));
        }
        let (outcome, code, error) = deliverer
            .post(&message(format!("http://127.0.0.1:{port}/fail")))
            .await;
        assert_eq!((outcome, code), ("failed", Some(500)));
        assert_eq!(
            error.as_deref(),
            Some("the receiver answered 500 Internal Server Error: the disk is full")
        );
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "six messages one after another, over one connection"
        );
    }

    /// A name the client resolves to an internal address is refused by its
    /// resolver at delivery (not only when the subscription was made), and
    /// the attempt says so.
    #[tokio::test]
    async fn a_name_resolving_to_an_internal_address_is_refused_at_delivery() {
        // This machine's own name resolves to a loopback or private address.
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let name = name.trim();
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((name, 9))
            .await
            .map(Iterator::collect)
            .unwrap_or_default();
        assert!(
            !resolved.is_empty() && resolved.iter().all(|a| address::internal(a.ip()).is_some()),
            "{name} should resolve to internal addresses only: {resolved:?}"
        );
        let deliverer = deliverer(PushConfig::default());
        let (outcome, code, error) = deliverer
            .post(&message(format!("http://{name}:9/hook")))
            .await;
        assert_eq!((outcome, code), ("refused", None), "{error:?}");
        assert!(error.unwrap().contains("loopback"));
    }
}
