//! Push: webhook signing (the Standard Webhooks convention), the address
//! rule that keeps deliveries off internal hosts, and the deliverer that
//! sends the outbox after commit.
//!
//! The outbox (`webhook_events`, one row per event) is filled by triggers in
//! the transaction of each change it reports (see the `push_events`
//! migration), so nothing here is on the runner's path; the deliverer fans
//! each event out to the subscriptions that want it.

pub mod address;
pub mod deliver;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};

pub use deliver::Deliverer;

/// The event types a subscription may ask for.
pub const EVENT_TYPES: [&str; 5] = [
    "operation.succeeded",
    "operation.failed",
    "operation.cancelled",
    "resource.state_changed",
    "resource.deleted",
];

/// The version of the payloads' contract (`version` in every payload).
pub const PAYLOAD_VERSION: u32 = 1;

/// The most subscriptions one tenant may have: every event is sent to each
/// of them, so this bounds what one event can cost.
pub const MAX_SUBSCRIPTIONS: i64 = 100;

/// What a secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";

/// How webhooks are delivered.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Deliver to loopback, link-local and private addresses too.
    pub allow_private: bool,
    /// How long a receiver has to answer.
    pub timeout: Duration,
    /// The first retry's delay, doubled per attempt, with jitter.
    pub retry_base: Duration,
    /// How long a message is retried before it is given up.
    pub retry_for: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            allow_private: false,
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(5),
            retry_for: Duration::from_secs(24 * 3600),
        }
    }
}

/// A new secret: `whsec_` and base64 of 24 random bytes.
pub fn new_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The `webhook-signature` header of a message: `v1,` and base64 of the
/// HMAC-SHA256 of `{id}.{timestamp}.{body}`, keyed with the secret's bytes
/// (the base64 after `whsec_`).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = STANDARD
        .decode(encoded)
        .unwrap_or_else(|_| encoded.as_bytes().to_vec());
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key) else {
        // HMAC takes keys of any length; this is never reached.
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-id` of a message.
pub fn message_id(id: uuid::Uuid) -> String {
    format!("msg_{}", id.simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_convention_s_published_example() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_random_and_long_enough() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        let bytes = STANDARD.decode(&a[SECRET_PREFIX.len()..]).unwrap();
        assert_eq!(bytes.len(), 24);
    }
}
