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

use super::address::{CheckedResolver, check_url};
use super::{PushConfig, message_id, sign};
use crate::db::webhooks::{self, Attempt, Claimed, Then};

/// Messages claimed at once by one process.
const BATCH: i64 = 32;
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

    /// Delivers until `stopping` turns true.
    pub async fn run(self, mut stopping: watch::Receiver<bool>) {
        loop {
            if *stopping.borrow() {
                return;
            }
            let claimed = match self.round().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook delivery round failed");
                    0
                }
            };
            if claimed as i64 == BATCH {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(IDLE) => {}
                _ = stopping.changed() => {}
            }
        }
    }

    /// Claims due messages and sends them, each in its own task; returns how
    /// many it claimed.
    pub async fn round(&self) -> anyhow::Result<usize> {
        let lease_ms = i64::try_from(self.config.timeout.as_millis() * 3).unwrap_or(i64::MAX);
        let claimed = webhooks::claim(&self.pool, BATCH, lease_ms).await?;
        let n = claimed.len();
        let sends = claimed.into_iter().map(|message| {
            let this = self.clone();
            tokio::spawn(async move { this.send(message).await })
        });
        for sent in futures::future::join_all(sends).await {
            match sent {
                Ok(Err(e)) => tracing::warn!(error = %e, "recording a webhook attempt failed"),
                Err(e) => tracing::warn!(error = %e, "a webhook delivery task failed"),
                Ok(Ok(())) => {}
            }
        }
        Ok(n)
    }

    async fn send(&self, message: Claimed) -> sqlx::Result<()> {
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
            webhooks::disable(
                &self.pool,
                message.webhook_id,
                "the receiver answered 410 Gone",
            )
            .await?;
            tracing::warn!(webhook_id = %message.webhook_id, "a receiver answered 410: subscription disabled");
        }
        if matches!(then, Then::GiveUp) && outcome != "gone" {
            tracing::warn!(webhook_id = %message.webhook_id, message_id = %message.id,
                "gave up on a webhook message after its retry window");
        }
        let error: Option<String> = error.map(|e| e.chars().take(ERROR_CHARS).collect());
        let attempt = Attempt {
            message: &message,
            outcome,
            status_code,
            duration_ms,
            error: error.as_deref(),
        };
        webhooks::record(&self.pool, &attempt, then).await
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
