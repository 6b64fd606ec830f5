//! The deliverer: sends the outbox after commit, at least once, in order
//! per resource and subscription. Every process that runs workers runs one;
//! a claim is a short lease taken with `FOR UPDATE SKIP LOCKED`, so two
//! processes never send one message at the same time, and a process that
//! dies leaves its claims to expire (the same `webhook-id` is sent again).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::address::{CheckedResolver, check_url};
use super::{PushConfig, message_id, sign};

use crate::db::webhooks::{self, Claimed, Sent, Then};

/// Messages one process sends at once.
const IN_FLIGHT: usize = 64;
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
        })
    }

    /// Delivers until `stopping` turns true, then finishes and records the
    /// sends under way.
    ///
    /// A pipeline, not rounds: up to 64 POSTs run at once, the outbox is
    /// claimed again whenever half of them are free (or after half a
    /// second), and the attempts that have ended are recorded together, in
    /// one statement, whenever one ends. A slow receiver therefore holds one
    /// slot, not everyone's next messages, and a busy outbox costs one
    /// claim and one recording per batch rather than per message.
    pub async fn run(self, mut stopping: watch::Receiver<bool>) {
        let mut sending: JoinSet<Sent> = JoinSet::new();
        let mut waited_out = true;
        loop {
            let stop = *stopping.borrow();
            let free = IN_FLIGHT - sending.len();
            let mut claimed = 0;
            if !stop && free > 0 && (free >= IN_FLIGHT / 2 || waited_out) {
                match self.claim(free).await {
                    Ok(messages) => {
                        claimed = messages.len();
                        for message in messages {
                            let this = self.clone();
                            sending.spawn(async move { this.send(message).await });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming webhook messages failed"),
                }
            }
            if sending.is_empty() {
                if stop {
                    return;
                }
                if claimed == 0 {
                    tokio::select! {
                        () = tokio::time::sleep(IDLE) => {}
                        _ = stopping.changed() => {}
                    }
                }
                waited_out = true;
                continue;
            }
            // Wait for a send to end (or for IDLE, to claim for the free
            // slots), then take every one that has ended.
            let mut sent = Vec::new();
            let mut take = |joined: Result<Sent, tokio::task::JoinError>| match joined {
                Ok(one) => sent.push(one),
                Err(e) => tracing::warn!(error = %e, "a webhook delivery task failed"),
            };
            waited_out = false;
            tokio::select! {
                joined = sending.join_next() => joined.into_iter().for_each(&mut take),
                () = tokio::time::sleep(IDLE) => waited_out = true,
            }
            while let Some(joined) = sending.try_join_next() {
                take(joined);
            }
            if !sent.is_empty()
                && let Err(e) = webhooks::record(&self.pool, &sent).await
            {
                // Their leases run out and they are sent again (same
                // `webhook-id`): at least once.
                tracing::warn!(error = %e, count = sent.len(), "recording webhook attempts failed");
            }
        }
    }

    /// Claims up to `limit` due messages.
    async fn claim(&self, limit: usize) -> sqlx::Result<Vec<Claimed>> {
        let lease_ms = i64::try_from(self.config.timeout.as_millis() * 3).unwrap_or(i64::MAX);
        webhooks::claim(&self.pool, i64::try_from(limit).unwrap_or(1), lease_ms).await
    }

    /// Sends one message; what became of it, to record.
    async fn send(&self, message: Claimed) -> Sent {
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
        if let Err(e) = check_url(&message.url, self.config.allow_private).await {
            return ("refused", None, Some(e.to_string()));
        }
        let id = message_id(message.id);
        let timestamp = Utc::now().timestamp();
        let body = message.payload.to_string();
        let signature = sign(&message.secret, &id, timestamp, &body);
        let sent = self
            .client
            .post(&message.url)
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
                if status.is_success() {
                    ("delivered", code, None)
                } else if status == reqwest::StatusCode::GONE {
                    ("gone", code, Some("410 Gone".into()))
                } else {
                    (
                        "failed",
                        code,
                        Some(format!("the receiver answered {status}")),
                    )
                }
            }
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
