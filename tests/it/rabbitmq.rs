//! `examples/catalogs/rabbitmq.toml` end to end: the real binary drives a
//! real RabbitMQ (the private node `scripts/test` starts) through request
//! templates only, and each effect is checked with RabbitMQ's own API.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use crate::exec_backend::{Dir, Service, finished};
use crate::support::process::{Reply, try_http_with};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// The example catalog, as shipped.
const RABBITMQ_CATALOG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/catalogs/rabbitmq.toml"
);

/// RabbitMQ's management API on loopback, called directly (not through executord).
struct Management {
    port: u16,
    /// The path of the API's root, e.g. `/api`.
    root: String,
    auth: String,
}

impl Management {
    /// From `EXECUTORD_TEST_RABBITMQ_URL` and `_AUTH`, or `None` (the test skips).
    fn from_env() -> Option<Self> {
        let url = std::env::var("EXECUTORD_TEST_RABBITMQ_URL").ok()?;
        let auth = std::env::var("EXECUTORD_TEST_RABBITMQ_AUTH").unwrap_or_default();
        let rest = url.strip_prefix("http://127.0.0.1:").unwrap_or_else(|| {
            panic!("EXECUTORD_TEST_RABBITMQ_URL={url}: not http://127.0.0.1:PORT/…")
        });
        let (port, root) = rest.split_once('/').unwrap_or((rest, ""));
        Some(Self {
            port: port.parse().unwrap(),
            root: format!("/{}", root.trim_end_matches('/')),
            auth,
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.root)
    }

    fn call_as(&self, auth: &str, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let headers = format!("Authorization: Basic {auth}\r\n");
        let path = format!("{}{path}", self.root);
        try_http_with(
            self.port,
            method,
            &path,
            body,
            &headers,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("RabbitMQ {method} {path}: {e}"))
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        self.call_as(&self.auth, method, path, body)
    }

    fn status(&self, path: &str) -> u16 {
        self.call("GET", path, None).status
    }

    /// The messages ready in a queue, looked at and put back.
    fn peek(&self, vhost: &str, queue: &str) -> Vec<Value> {
        let reply = self.call(
            "POST",
            &format!("/queues/{vhost}/{queue}/get"),
            Some(&json!({"count": 10, "ackmode": "ack_requeue_true", "encoding": "auto"})),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body.as_array().unwrap().clone()
    }
}

/// What a test made on the shared node, removed at the end whatever happens.
struct Leftovers<'a> {
    rabbit: &'a Management,
    vhost: String,
    user: String,
}

impl Drop for Leftovers<'_> {
    fn drop(&mut self) {
        // Deleting the vhost deletes its queues.
        for path in [
            format!("/users/{}", self.user),
            format!("/vhosts/{}", self.vhost),
        ] {
            let headers = format!("Authorization: Basic {}\r\n", self.rabbit.auth);
            let _ = try_http_with(
                self.rabbit.port,
                "DELETE",
                &format!("{}{path}", self.rabbit.root),
                None,
                &headers,
                Duration::from_secs(10),
            );
        }
    }
}

/// The example's helper, as a user runs it: the password on stdin.
fn password_hash(password: &str) -> String {
    crate::support::process::run_example_helper("rabbitmq/password-hash.py", password)
}

/// Base64 of `text`, for a Basic authorization (RFC 4648, with padding).
fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// executord's API, each answer kept (to look for secrets in).
struct Client<'a> {
    service: &'a Service,
    answers: Vec<String>,
}

impl Client<'_> {
    fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let reply = self.service.call(method, path, body.as_ref());
        self.answers.push(reply.body.to_string());
        reply
    }

    /// A call that starts an operation (its id at `id_at`), and its success.
    fn run(&mut self, method: &str, path: &str, body: Option<Value>, id_at: &str) -> Value {
        let reply = self.call(method, path, body);
        assert!(reply.status == 201 || reply.status == 202, "{}", reply.body);
        let done = finished(self.service, &reply.body[id_at]);
        assert_eq!(done["state"], "succeeded", "{done}");
        reply.body
    }
}

/// Waits (at most 30 s) until the resource's `state` is `state`, and returns it.
fn resource_in(service: &Service, id: &str, state: &str) -> Value {
    let started = Instant::now();
    loop {
        let resource = service
            .call("GET", &format!("/api/v1/resources/{id}"), None)
            .body;
        if resource["state"] == state {
            return resource;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not {state}: {resource}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn the_rabbitmq_example_manages_real_vhosts_users_and_queues(pool: PgPool) {
    let Some(rabbit) = Management::from_env() else {
        eprintln!(
            "skipped: EXECUTORD_TEST_RABBITMQ_URL is not set (scripts/test sets it when it can start RabbitMQ)"
        );
        return;
    };
    assert_eq!(rabbit.status("/overview"), 200, "RabbitMQ answers");
    let suffix = &Uuid::new_v4().simple().to_string()[..10];
    let (vhost, user, queue) = (
        format!("exd-vh-{suffix}"),
        format!("exd-user-{suffix}"),
        format!("exd-q-{suffix}"),
    );
    let _leftovers = Leftovers {
        rabbit: &rabbit,
        vhost: vhost.clone(),
        user: user.clone(),
    };
    let dir = Dir::new("rabbitmq");
    let env = [
        ("RABBITMQ_URL", rabbit.url()),
        ("RABBITMQ_AUTH", rabbit.auth.clone()),
    ];
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let service = Service::start(&pool, &dir, Path::new(RABBITMQ_CATALOG), &env_refs);
    let mut client = Client {
        service: &service,
        answers: Vec::new(),
    };

    // A vhost: there in RabbitMQ, its description reported back in status.
    let created = client.run(
        "POST",
        "/api/v1/resources",
        Some(json!({"kind": "vhost", "name": vhost, "attributes": {"description": "executord's test"}})),
        "current_operation_id",
    );
    let vhost_id = created["id"].as_str().unwrap().to_owned();
    let there = rabbit.call("GET", &format!("/vhosts/{vhost}"), None);
    assert_eq!(there.status, 200);
    assert_eq!(there.body["description"], "executord's test");
    let resource = service
        .call("GET", &format!("/api/v1/resources/{vhost_id}"), None)
        .body;
    assert_eq!(resource["runtime_state"], "running", "{resource}");
    assert_eq!(resource["backend_id"], vhost.as_str());

    // A user with a password executord never sees: only its hash, stored as
    // it is; the password logs in, after a grant on the vhost.
    let password = format!("pw-{}", Uuid::new_v4().simple());
    let hash = password_hash(&password);
    let created = client.run(
        "POST",
        "/api/v1/resources",
        Some(json!({"kind": "mq_user", "name": user, "attributes": {"password_hash": hash, "tags": "management"}})),
        "current_operation_id",
    );
    let user_id = created["id"].as_str().unwrap().to_owned();
    let there = rabbit.call("GET", &format!("/users/{user}"), None);
    assert_eq!(there.status, 200);
    assert_eq!(there.body["password_hash"], hash.as_str());
    client.run(
        "POST",
        &format!("/api/v1/resources/{user_id}/actions/grant"),
        Some(json!({"vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"})),
        "id",
    );
    let granted = rabbit.call("GET", &format!("/permissions/{vhost}/{user}"), None);
    assert_eq!(granted.status, 200);
    assert_eq!(granted.body["configure"], ".*");
    let login = base64(&format!("{user}:{password}"));
    let whoami = rabbit.call_as(&login, "GET", "/whoami", None);
    assert_eq!(whoami.status, 200, "the password logs in: {}", whoami.body);
    assert_eq!(whoami.body["name"], user.as_str());
    let wrong = base64(&format!("{user}:not-{password}"));
    assert_eq!(rabbit.call_as(&wrong, "GET", "/whoami", None).status, 401);
    let refused = client.call(
        "POST",
        "/api/v1/resources",
        Some(json!({"kind": "mq_user", "name": format!("{user}-x"), "attributes": {"password_hash": "hunter2"}})),
    );
    assert_eq!(
        refused.status, 422,
        "a password is not a hash: {}",
        refused.body
    );

    // A queue in the vhost, its runtime state the queue's own.
    let created = client.run(
        "POST",
        "/api/v1/resources",
        Some(json!({"kind": "queue", "name": queue, "attributes": {"vhost": vhost}})),
        "current_operation_id",
    );
    let queue_id = created["id"].as_str().unwrap().to_owned();
    let there = rabbit.call("GET", &format!("/queues/{vhost}/{queue}"), None);
    assert_eq!(there.status, 200);
    assert_eq!(there.body["durable"], true);
    let resource = service
        .call("GET", &format!("/api/v1/resources/{queue_id}"), None)
        .body;
    assert_eq!(resource["runtime_state"], there.body["state"], "{resource}");
    assert_eq!(resource["status"]["type"], "classic", "{resource}");
    assert_eq!(resource["attributes"], json!({"vhost": vhost}));

    // A message published, then purged by the action.
    let published = rabbit.call(
        "POST",
        &format!("/exchanges/{vhost}/amq.default/publish"),
        Some(&json!({"properties": {}, "routing_key": queue, "payload": "hello", "payload_encoding": "string"})),
    );
    assert_eq!(published.body["routed"], true, "{}", published.body);
    assert_eq!(rabbit.peek(&vhost, &queue).len(), 1);
    client.run(
        "POST",
        &format!("/api/v1/resources/{queue_id}/actions/purge"),
        Some(json!({})),
        "id",
    );
    assert_eq!(rabbit.peek(&vhost, &queue), Vec::<Value>::new());

    // Deleted behind executord's back: the pull job (every second here)
    // notices the 404 and errs the resource; deleting it then succeeds.
    let gone = rabbit.call("DELETE", &format!("/queues/{vhost}/{queue}"), None);
    assert_eq!(gone.status, 204);
    let erred = resource_in(&service, &queue_id, "erred");
    let message = erred["error_message"].as_str().unwrap();
    assert!(
        message.starts_with("the backend object is gone"),
        "{message}"
    );
    client.run(
        "DELETE",
        &format!("/api/v1/resources/{queue_id}"),
        None,
        "id",
    );

    // The user and the vhost deleted through executord: gone from RabbitMQ.
    client.run(
        "DELETE",
        &format!("/api/v1/resources/{user_id}"),
        None,
        "id",
    );
    assert_eq!(rabbit.status(&format!("/users/{user}")), 404);
    client.run(
        "DELETE",
        &format!("/api/v1/resources/{vhost_id}"),
        None,
        "id",
    );
    assert_eq!(rabbit.status(&format!("/vhosts/{vhost}")), 404);
    for id in [&vhost_id, &user_id, &queue_id] {
        assert_eq!(
            service
                .call("GET", &format!("/api/v1/resources/{id}"), None)
                .status,
            404
        );
    }

    // Neither the password nor the API's credentials show anywhere.
    let log = service.log_text();
    assert!(log.contains("backend call"), "debug logs were on");
    let answers = client.answers.join("\n");
    for secret in [password.as_str(), rabbit.auth.as_str()] {
        assert!(!answers.contains(secret), "a secret is in an answer");
        assert!(!log.contains(secret), "a secret is in executord's log");
    }
}
