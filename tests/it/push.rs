//! Push: fleet-wide views and webhook subscriptions through the real router;
//! signed deliveries to a real local receiver, kill -9 before delivery, and
//! the event stream over a real socket, with the real binary.

#![allow(clippy::unwrap_used)] // test helpers may unwrap

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{Reply, TestApp};
use crate::support::process::{Harness, free_port, try_http_with, wait_until};

async fn token(app: &TestApp, tenant: &str, role: &str) -> String {
    let (token, hash, prefix) = executord::auth::new_token();
    let mut conn = app.engine.pool.acquire().await.unwrap();
    executord::db::tokens::insert(&mut conn, "test", tenant, role, &hash, &prefix)
        .await
        .unwrap();
    format!("Bearer {token}")
}

async fn as_(app: &TestApp, auth: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
    app.call(method, path, body.as_ref(), &[("authorization", auth)])
        .await
}

fn instance(name: &str) -> Value {
    json!({"kind": "instance", "name": name, "attributes": {"tenant": "acme", "flavor": "small"}})
}

/// The deliverer records a batch of attempts in one statement: each message
/// gets its attempt and its next state, a claimed message is not claimed
/// again, and a subscription deleted while its messages were in flight
/// (taking them with it) fails none of the others' records.
#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_batch_of_attempts_is_recorded_at_once_and_a_subscription_deleted_meanwhile_spoils_none(
    pool: PgPool,
) {
    use executord::db::webhooks::{self, NewWebhook, Sent, Then};

    let mut conn = pool.acquire().await.unwrap();
    let events = vec!["operation.succeeded".to_owned()];
    let (kept, deleted) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    for id in [kept, deleted] {
        webhooks::insert(
            &mut conn,
            &NewWebhook {
                id,
                tenant: "acme",
                url: "http://192.0.2.1/hook",
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                events: &events,
                description: "",
            },
            100,
        )
        .await
        .unwrap();
        for _ in 0..2 {
            sqlx::query(
                "INSERT INTO webhook_messages (webhook_id, tenant, resource_id, event_type, payload)
                 VALUES ($1, 'acme', $2, 'operation.succeeded', '{}')",
            )
            .bind(id)
            .bind(uuid::Uuid::now_v7())
            .execute(&mut *conn)
            .await
            .unwrap();
        }
    }
    let mut claimed = webhooks::claim(&pool, 10, 30_000).await.unwrap();
    assert_eq!(claimed.len(), 4);
    claimed.sort_by_key(|m| m.seq);
    assert!(webhooks::claim(&pool, 10, 30_000).await.unwrap().is_empty());
    assert!(webhooks::delete_in(&mut conn, deleted, None).await.unwrap());

    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let mut delivered_first = true;
    let sent: Vec<Sent> = claimed
        .into_iter()
        .map(|message| {
            let ok =
                std::mem::replace(&mut delivered_first, false) || message.webhook_id == deleted;
            Sent {
                message,
                outcome: if ok { "delivered" } else { "failed" },
                status_code: Some(if ok { 200 } else { 503 }),
                duration_ms: 3,
                error: (!ok).then(|| "the receiver answered 503".to_owned()),
                then: if ok {
                    Then::Delivered
                } else {
                    Then::RetryAt(later)
                },
            }
        })
        .collect();
    webhooks::record(&pool, &sent).await.unwrap();

    let rows: Vec<(String, i32, bool, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
        "SELECT state, attempts, lease_until IS NULL, next_attempt_at FROM webhook_messages ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows.len(),
        2,
        "the deleted subscription's messages went with it"
    );
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1, rows[0].2),
        ("delivered", 1, true)
    );
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1, rows[1].2),
        ("pending", 1, true)
    );
    let due = rows[1].3.unwrap();
    assert!(
        (due - later).num_milliseconds().abs() < 1000,
        "{due} {later}"
    );
    let attempts: Vec<(uuid::Uuid, String, Option<i32>, Option<String>)> = sqlx::query_as(
        "SELECT webhook_id, outcome, status_code, error FROM webhook_attempts ORDER BY outcome",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        attempts,
        [
            (kept, "delivered".to_owned(), Some(200), None),
            (
                kept,
                "failed".to_owned(),
                Some(503),
                Some("the receiver answered 503".to_owned())
            ),
        ]
    );
    // Not due for an hour: nothing to claim.
    assert!(webhooks::claim(&pool, 10, 30_000).await.unwrap().is_empty());
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn fleet_views_list_every_resource_s_operations_and_events_within_the_tenant(pool: PgPool) {
    let app = TestApp::new(pool);
    let acme = token(&app, "acme", "operator").await;
    let other = token(&app, "other", "operator").await;
    let mut acme_ids = Vec::new();
    for name in ["a-1", "a-2"] {
        let created = as_(
            &app,
            &acme,
            "POST",
            "/api/v1/resources",
            Some(instance(name)),
        )
        .await;
        assert_eq!(created.status, 201, "{}", created.body);
        acme_ids.push(created.body["id"].as_str().unwrap().to_owned());
    }
    let failing = json!({"kind": "instance", "name": "bad", "attributes":
        {"tenant": "acme", "flavor": "small", "sim": {"fail_on": "create_instance", "message": "No valid host"}}});
    assert_eq!(
        as_(&app, &acme, "POST", "/api/v1/resources", Some(failing))
            .await
            .status,
        201
    );
    let theirs = as_(
        &app,
        &other,
        "POST",
        "/api/v1/resources",
        Some(instance("o-1")),
    )
    .await;
    assert_eq!(theirs.status, 201);
    app.run_until_idle().await;

    // Operations, newest first, with the per-resource list's shape.
    let all = as_(&app, &acme, "GET", "/api/v1/operations", None).await;
    assert_eq!(all.status, 200, "{}", all.body);
    let items = all.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "only acme's: {}", all.body);
    assert!(
        items
            .iter()
            .all(|o| o["tasks"].is_array() && o["steps_done"].is_number())
    );
    let ids: Vec<&str> = items.iter().map(|o| o["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest first");
    let per_resource = as_(
        &app,
        &acme,
        "GET",
        &format!("/api/v1/resources/{}/operations", acme_ids[0]),
        None,
    )
    .await;
    let one = items
        .iter()
        .find(|o| o["resource_id"] == acme_ids[0].as_str())
        .unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(one),
        keys(&per_resource.body["items"][0]),
        "same shape"
    );

    let failed = as_(&app, &acme, "GET", "/api/v1/operations?state=failed", None).await;
    assert_eq!(failed.body["items"].as_array().unwrap().len(), 1);
    let page = as_(&app, &acme, "GET", "/api/v1/operations?limit=2", None).await;
    let cursor = page.body["next_cursor"].as_str().unwrap();
    let rest = as_(
        &app,
        &acme,
        "GET",
        &format!("/api/v1/operations?limit=2&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 1);
    assert!(rest.body["next_cursor"].is_null());
    let by_resource = as_(
        &app,
        &acme,
        "GET",
        &format!(
            "/api/v1/operations?resource_id={}&kind=create&resource_kind=instance",
            acme_ids[1]
        ),
        None,
    )
    .await;
    assert_eq!(by_resource.body["items"].as_array().unwrap().len(), 1);
    let future = as_(
        &app,
        &acme,
        "GET",
        "/api/v1/operations?created_after=2999-01-01T00:00:00Z",
        None,
    )
    .await;
    assert_eq!(future.body["items"].as_array().unwrap().len(), 0);
    let past = as_(
        &app,
        &acme,
        "GET",
        "/api/v1/operations?created_before=2000-01-01T00:00:00Z",
        None,
    )
    .await;
    assert_eq!(past.body["items"].as_array().unwrap().len(), 0);

    // Counts per state.
    let summary = as_(&app, &acme, "GET", "/api/v1/operations/summary", None).await;
    assert_eq!(summary.status, 200, "{}", summary.body);
    assert_eq!(summary.body["total"], 3);
    assert_eq!(summary.body["counts"]["succeeded"], 2);
    assert_eq!(summary.body["counts"]["failed"], 1);
    assert_eq!(summary.body["counts"]["running"], 0);
    let later = as_(
        &app,
        &acme,
        "GET",
        "/api/v1/operations/summary?since=2999-01-01T00:00:00Z",
        None,
    )
    .await;
    assert_eq!(later.body["total"], 0);

    // The fleet's history, newest first, filtered.
    let events = as_(&app, &acme, "GET", "/api/v1/events", None).await;
    assert_eq!(events.status, 200, "{}", events.body);
    let items = events.body["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        3 * 3,
        "create, begin_creating, then set_ok or set_erred per resource: {}",
        events.body
    );
    assert!(
        items
            .windows(2)
            .all(|w| w[0]["seq"].as_i64() > w[1]["seq"].as_i64())
    );
    assert!(items.iter().all(|e| e["resource_kind"] == "instance"));
    let erred = as_(
        &app,
        &acme,
        "GET",
        "/api/v1/events?transition=set_erred",
        None,
    )
    .await;
    assert_eq!(erred.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(erred.body["items"][0]["reason"], "No valid host");
    let one = as_(
        &app,
        &acme,
        "GET",
        &format!("/api/v1/events?resource_id={}&limit=2", acme_ids[0]),
        None,
    )
    .await;
    assert_eq!(one.body["items"].as_array().unwrap().len(), 2);
    let before = one.body["next_before"].as_i64().unwrap();
    let older = as_(
        &app,
        &acme,
        "GET",
        &format!("/api/v1/events?resource_id={}&before={before}", acme_ids[0]),
        None,
    )
    .await;
    assert_eq!(older.body["items"].as_array().unwrap().len(), 1);
    let volumes = as_(&app, &acme, "GET", "/api/v1/events?kind=volume", None).await;
    assert_eq!(volumes.body["items"].as_array().unwrap().len(), 0);
    let theirs = as_(&app, &other, "GET", "/api/v1/events", None).await;
    assert_eq!(
        theirs.body["items"].as_array().unwrap().len(),
        3,
        "only their own"
    );
    assert_eq!(
        as_(&app, &acme, "GET", "/api/v1/operations?limit=0", None)
            .await
            .status,
        422
    );
}

/// An event is one outbox row, fanned out to every enabled subscription of
/// its tenant that wants it; in order per resource (a resource's next event
/// waits until its previous one is fanned out, and a message waits behind a
/// pending one of its subscription and resource); only what was not
/// delivered at once gets a message row; and a delivered message can be
/// sent again from its event.
#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn an_event_fans_out_to_each_subscription_in_order_and_only_what_was_not_delivered_is_kept(
    pool: PgPool,
) {
    use executord::db::webhooks::{self, Fanned, NewWebhook, Sent, Then};
    use uuid::Uuid;

    let mut conn = pool.acquire().await.unwrap();
    let ends = vec!["operation.succeeded".to_owned()];
    let changes = vec!["resource.state_changed".to_owned()];
    let (a, b, c, d) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    for (id, tenant, events) in [
        (a, "acme", &ends),
        (b, "acme", &ends),
        (c, "acme", &changes),
        (d, "other", &ends),
    ] {
        webhooks::insert(
            &mut conn,
            &NewWebhook {
                id,
                tenant,
                url: "http://192.0.2.1/hook",
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                events,
                description: "",
            },
            100,
        )
        .await
        .unwrap();
    }
    let (r1, r2) = (Uuid::now_v7(), Uuid::now_v7());
    // `b` still owes r1 an earlier message.
    sqlx::query(
        "INSERT INTO webhook_messages (webhook_id, tenant, resource_id, event_type, payload)
         VALUES ($1, 'acme', $2, 'operation.succeeded', '{}')",
    )
    .bind(b)
    .bind(r1)
    .execute(&mut *conn)
    .await
    .unwrap();
    let mut seqs = Vec::new();
    for (resource, n) in [(r1, 1), (r1, 2), (r2, 3)] {
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO webhook_events (tenant, resource_id, event_type, payload)
             VALUES ('acme', $1, 'operation.succeeded', jsonb_build_object('n', $2::int)) RETURNING seq",
        )
        .bind(resource)
        .bind(n)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        seqs.push(seq);
    }

    let events = webhooks::claim_events(&pool, 10, 30_000).await.unwrap();
    let claimed: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        claimed,
        [seqs[0], seqs[2]],
        "r1's second event waits for its first"
    );
    let to = |msgs: &[webhooks::Claimed]| msgs.iter().map(|m| m.webhook_id).collect::<Vec<_>>();
    assert_eq!(
        (to(&events[0].send), to(&events[0].behind)),
        (vec![a], vec![b])
    );
    assert_eq!(
        (to(&events[1].send), to(&events[1].behind)),
        (vec![a, b], vec![])
    );
    let derived: Uuid =
        sqlx::query_scalar("SELECT webhook_message_id(id, $2) FROM webhook_events WHERE seq = $1")
            .bind(seqs[0])
            .bind(a)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(
        events[0].send[0].id, derived,
        "the webhook-id is derived, the same every time"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&events[0].send[0].payload).unwrap(),
        json!({"n": 1})
    );
    assert!(
        webhooks::claim_events(&pool, 10, 30_000)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );

    // r1's event: delivered to `a`, queued behind for `b`. r2's: failed for
    // `a` (retry in an hour), still being sent to `b`.
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let sent = |message: webhooks::Claimed, ok: bool| Sent {
        message,
        outcome: if ok { "delivered" } else { "failed" },
        status_code: Some(if ok { 200 } else { 503 }),
        duration_ms: 2,
        error: None,
        then: if ok {
            Then::Delivered
        } else {
            Then::RetryAt(later)
        },
    };
    let mut events = events.into_iter();
    let (e1, e3) = (events.next().unwrap(), events.next().unwrap());
    let fanned = [
        Fanned {
            seq: e1.seq,
            sent: vec![sent(e1.send[0].clone(), true)],
            sending: vec![],
            behind: e1.behind.clone(),
        },
        Fanned {
            seq: e3.seq,
            sent: vec![sent(e3.send[0].clone(), false)],
            sending: vec![e3.send[1].clone()],
            behind: vec![],
        },
    ];
    let rows = webhooks::record_fanned(&mut conn, &fanned, 30_000)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3, "behind, retry, sending: {rows:?}");
    assert!(rows.iter().any(|(id, _)| *id == e3.send[1].id));
    let messages: Vec<(Uuid, i64, String, i32, bool, bool, Value)> = sqlx::query_as(
        "SELECT webhook_id, seq, state, attempts, lease_until IS NOT NULL, next_attempt_at > now() + interval '30 minutes', payload
         FROM webhook_messages ORDER BY seq",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let shape: Vec<(Uuid, &str, i32, bool, bool)> = messages
        .iter()
        .map(|m| (m.0, m.2.as_str(), m.3, m.4, m.5))
        .collect();
    assert_eq!(
        shape,
        [
            (b, "pending", 0, false, false),
            (b, "pending", 0, false, false),
            (a, "pending", 1, false, true),
            (b, "pending", 0, true, false),
        ]
    );
    assert_eq!(
        messages[1].6,
        json!({"n": 1}),
        "its payload copied from its event"
    );
    let attempts: Vec<(Uuid, String, Option<i64>)> = sqlx::query_as(
        "SELECT webhook_id, outcome, event_seq FROM webhook_attempts ORDER BY outcome",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        attempts,
        [
            (a, "delivered".to_owned(), Some(seqs[0])),
            (a, "failed".to_owned(), Some(seqs[2]))
        ]
    );

    // r1's second event now: `b` is behind its pending messages still.
    let next = webhooks::claim_events(&pool, 10, 30_000).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(
        (next[0].seq, to(&next[0].send), to(&next[0].behind)),
        (seqs[1], vec![a], vec![b])
    );

    // The delivered message, sent again by its attempt's id: a row made
    // from its event, with the same webhook-id.
    let attempt: Uuid =
        sqlx::query_scalar("SELECT id FROM webhook_attempts WHERE outcome = 'delivered'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    let again = webhooks::redeliver(&mut conn, a, attempt).await.unwrap();
    assert_eq!(again, Some(derived));
    let (state, payload): (String, Value) =
        sqlx::query_as("SELECT state, payload FROM webhook_messages WHERE id = $1")
            .bind(derived)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!((state.as_str(), payload), ("pending", json!({"n": 1})));
    assert_eq!(
        webhooks::redeliver(&mut conn, b, attempt).await.unwrap(),
        None,
        "not b's"
    );
}

/// A tenant has at most `MAX_SUBSCRIPTIONS` subscriptions (every event goes
/// to each): the next is a 409; other tenants are not affected, and
/// deleting one makes room.
#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_tenant_has_at_most_a_hundred_subscriptions(pool: PgPool) {
    let app = TestApp::new(pool);
    let acme = token(&app, "acme", "operator").await;
    let other = token(&app, "other", "operator").await;
    let body = json!({"url": "https://93.184.216.34/hook", "events": ["operation.failed"]});
    let mut last = String::new();
    for _ in 0..executord::push::MAX_SUBSCRIPTIONS {
        let made = as_(&app, &acme, "POST", "/api/v1/webhooks", Some(body.clone())).await;
        assert_eq!(made.status, 201, "{}", made.body);
        last = made.body["id"].as_str().unwrap().to_owned();
    }
    let refused = as_(&app, &acme, "POST", "/api/v1/webhooks", Some(body.clone())).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    assert!(
        refused.body["detail"].as_str().unwrap().contains("100"),
        "{}",
        refused.body
    );
    assert_eq!(app.engine.count("webhooks").await, 100);

    let theirs = as_(&app, &other, "POST", "/api/v1/webhooks", Some(body.clone())).await;
    assert_eq!(theirs.status, 201, "another tenant's limit is its own");
    let gone = as_(
        &app,
        &acme,
        "DELETE",
        &format!("/api/v1/webhooks/{last}"),
        None,
    )
    .await;
    assert_eq!(gone.status, 204);
    let again = as_(&app, &acme, "POST", "/api/v1/webhooks", Some(body)).await;
    assert_eq!(again.status, 201, "{}", again.body);
}

/// Each outbox trigger works for a subscription that wants one of its event
/// types alone (each looks for a subscription that wants one of its own
/// types before it writes): one to `resource.deleted` gets the deletion and
/// none of the state changes, one to `operation.failed` the failure and not
/// the successes.
#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_subscription_to_one_event_type_gets_those_events_alone(pool: PgPool) {
    let app = TestApp::new(pool);
    let acme = token(&app, "acme", "operator").await;
    for events in [json!(["resource.deleted"]), json!(["operation.failed"])] {
        let url = "https://93.184.216.34/hook";
        let created = as_(
            &app,
            &acme,
            "POST",
            "/api/v1/webhooks",
            Some(json!({"url": url, "events": events})),
        )
        .await;
        assert_eq!(created.status, 201, "{}", created.body);
    }
    let made = as_(
        &app,
        &acme,
        "POST",
        "/api/v1/resources",
        Some(instance("web-1")),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    app.run_until_idle().await;
    let id = made.body["id"].as_str().unwrap();
    let path = format!("/api/v1/resources/{id}");
    let deleted = as_(&app, &acme, "DELETE", &path, None).await;
    assert_eq!(deleted.status, 202, "{}", deleted.body);
    app.run_until_idle().await;
    let failing = json!({"kind": "instance", "name": "web-2",
        "attributes": {"tenant": "acme", "flavor": "small", "sim": {"fail_on": "create_instance"}}});
    let made = as_(&app, &acme, "POST", "/api/v1/resources", Some(failing)).await;
    assert_eq!(made.status, 201, "{}", made.body);
    app.run_until_idle().await;

    let outbox: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM webhook_events ORDER BY seq")
            .fetch_all(&app.engine.pool)
            .await
            .unwrap();
    assert_eq!(outbox, ["resource.deleted", "operation.failed"]);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn webhook_subscriptions_refuse_internal_addresses_and_stay_within_their_tenant(
    pool: PgPool,
) {
    let app = TestApp::new(pool);
    let acme = token(&app, "acme", "operator").await;
    let other = token(&app, "other", "operator").await;
    let viewer = token(&app, "acme", "viewer").await;
    let events = json!(["operation.failed", "resource.state_changed"]);
    for url in [
        "http://127.0.0.1:9000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest",
        "http://[::1]/hook",
        "http://[::ffff:192.168.0.1]/hook",
        "http://100.64.0.7/hook",
        "ftp://93.184.216.34/hook",
        "not a url",
    ] {
        let refused = as_(
            &app,
            &acme,
            "POST",
            "/api/v1/webhooks",
            Some(json!({"url": url, "events": events})),
        )
        .await;
        assert_eq!(refused.status, 422, "{url}: {}", refused.body);
        assert_eq!(
            refused.body["errors"][0]["pointer"], "/url",
            "{}",
            refused.body
        );
    }
    let unknown = as_(
        &app,
        &acme,
        "POST",
        "/api/v1/webhooks",
        Some(json!({"url": "https://93.184.216.34/hook", "events": ["operation.exploded"]})),
    )
    .await;
    assert_eq!(unknown.status, 422);
    let read_only = as_(
        &app,
        &viewer,
        "POST",
        "/api/v1/webhooks",
        Some(json!({"url": "https://93.184.216.34/hook", "events": events})),
    )
    .await;
    assert_eq!(read_only.status, 403);

    let created = as_(&app, &acme, "POST", "/api/v1/webhooks",
        Some(json!({"url": "https://93.184.216.34/hook", "events": events, "description": "billing"}))).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let secret = created.body["secret"].as_str().unwrap();
    assert!(
        secret.starts_with("whsec_") && secret.len() >= 6 + 32,
        "{secret}"
    );
    assert_eq!(
        created.header("location"),
        Some(format!("/api/v1/webhooks/{id}").as_str())
    );
    let got = as_(&app, &acme, "GET", &format!("/api/v1/webhooks/{id}"), None).await;
    assert_eq!(got.status, 200);
    assert!(got.body.get("secret").is_none(), "the secret is shown once");

    // Another tenant sees nothing of it.
    for (method, path) in [
        ("GET", format!("/api/v1/webhooks/{id}")),
        ("PATCH", format!("/api/v1/webhooks/{id}")),
        ("GET", format!("/api/v1/webhooks/{id}/deliveries")),
        ("DELETE", format!("/api/v1/webhooks/{id}")),
    ] {
        let body = (method == "PATCH").then(|| json!({"enabled": false}));
        assert_eq!(
            as_(&app, &other, method, &path, body).await.status,
            404,
            "{method} {path}"
        );
    }
    let theirs = as_(&app, &other, "GET", "/api/v1/webhooks", None).await;
    assert_eq!(theirs.body["items"].as_array().unwrap().len(), 0);
    assert_eq!(
        as_(&app, &acme, "GET", "/api/v1/webhooks", None).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Only its tenant's events reach its outbox.
    for (who, name) in [(&acme, "a-1"), (&other, "o-1")] {
        assert_eq!(
            as_(&app, who, "POST", "/api/v1/resources", Some(instance(name)))
                .await
                .status,
            201
        );
    }
    app.run_until_idle().await;
    let outbox: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT tenant, event_type, payload->>'type' FROM webhook_events ORDER BY seq",
    )
    .fetch_all(&app.engine.pool)
    .await
    .unwrap();
    assert_eq!(
        outbox.len(),
        3,
        "acme's three transitions, no operation.succeeded: {outbox:?}"
    );
    assert!(
        outbox
            .iter()
            .all(|(t, e, p)| t == "acme" && e == "resource.state_changed" && p == e)
    );

    // PATCH: a refused URL is 422; events and enabled change.
    let bad = as_(
        &app,
        &acme,
        "PATCH",
        &format!("/api/v1/webhooks/{id}"),
        Some(json!({"url": "http://192.168.1.1/"})),
    )
    .await;
    assert_eq!(bad.status, 422);
    let patched = as_(
        &app,
        &acme,
        "PATCH",
        &format!("/api/v1/webhooks/{id}"),
        Some(json!({"events": ["operation.succeeded"], "enabled": false})),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.body["events"], json!(["operation.succeeded"]));
    assert_eq!(patched.body["enabled"], false);
    // Its messages and attempts go with it (made here as a delivery would).
    sqlx::query(
        "WITH e AS (SELECT * FROM webhook_events ORDER BY seq LIMIT 1),
              m AS (INSERT INTO webhook_messages (id, webhook_id, tenant, resource_id, event_type, payload)
                    SELECT webhook_message_id(e.id, $1), $1, e.tenant, e.resource_id, e.event_type, e.payload FROM e
                    RETURNING id)
         INSERT INTO webhook_attempts (id, webhook_id, message_id, event_type, outcome, duration_ms, event_seq)
         SELECT gen_random_uuid(), $1, m.id, 'resource.state_changed', 'failed', 1, e.seq FROM m, e",
    )
    .bind(uuid::Uuid::parse_str(&id).unwrap())
    .execute(&app.engine.pool)
    .await
    .unwrap();
    let listed = as_(
        &app,
        &acme,
        "GET",
        &format!("/api/v1/webhooks/{id}/deliveries"),
        None,
    )
    .await;
    assert_eq!(listed.status, 200);
    assert_eq!(
        listed.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        listed.body
    );
    assert_eq!(
        as_(
            &app,
            &acme,
            "DELETE",
            &format!("/api/v1/webhooks/{id}"),
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(
        app.engine.count("webhook_messages").await + app.engine.count("webhook_attempts").await,
        0,
        "deleted with it"
    );
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: String,
    status: u16,
}

/// A webhook receiver on a real socket: `/gone` answers 410; otherwise the
/// first `fail_first` requests answer 503, the rest 200.
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16, fail_first: usize) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (got2, stop2) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut served = 0;
            while !stop2.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                if let Some(received) = read_request(stream, |path| {
                    if path == "/gone" {
                        410
                    } else {
                        served += 1;
                        if served <= fail_first { 503 } else { 200 }
                    }
                }) {
                    got2.lock().unwrap().push(received);
                }
            }
        });
        Self {
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn read_request(mut stream: TcpStream, answer: impl FnOnce(&str) -> u16) -> Option<Received> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let mut lines = head.lines();
    let path = lines.next()?.split(' ').nth(1)?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&data[head_end..]).to_string();
    let status = answer(&path);
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    Some(Received {
        path,
        headers,
        body,
        status,
    })
}

/// Checks Standard Webhooks signatures with Python's standard library,
/// independently of the service's code: one line per message, "ok" or not.
fn verify_with_python(secret: &str, messages: &[Received]) {
    let input: Vec<Value> = messages
        .iter()
        .map(|m| {
            json!({"id": m.headers["webhook-id"], "ts": m.headers["webhook-timestamp"],
                        "sig": m.headers["webhook-signature"], "body": m.body})
        })
        .collect();
    let script = r#"
import base64, hashlib, hmac, json, sys
secret, items = sys.argv[1], json.load(sys.stdin)
key = base64.b64decode(secret[len("whsec_"):])
for m in items:
    mac = hmac.new(key, f"{m['id']}.{m['ts']}.{m['body']}".encode(), hashlib.sha256).digest()
    want = "v1," + base64.b64encode(mac).decode()
    print("ok" if any(hmac.compare_digest(want, s) for s in m["sig"].split(" ")) else "bad " + m["id"])
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::from(input).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), messages.len(), "{text}");
    assert!(text.lines().all(|l| l == "ok"), "signatures: {text}");
}

fn call(
    port: u16,
    auth: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> crate::support::process::Reply {
    let headers = if auth.is_empty() {
        String::new()
    } else {
        format!("Authorization: {auth}\r\n")
    };
    try_http_with(port, method, path, body, &headers, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

const PUSH_FLAGS: &[&str] = &[
    "--webhook-allow-private",
    "--webhook-retry-base-ms",
    "300",
    "--webhook-timeout-secs",
    "2",
];

#[test]
fn a_receiver_that_fails_first_gets_every_event_signed_in_order_and_kill_9_before_delivery_loses_none()
 {
    let h = Harness::new("push-deliver");
    let api = h.api_with("api", PUSH_FLAGS);
    let mut worker = h.worker("worker-1", PUSH_FLAGS);
    let port = free_port();
    let receiver = Receiver::start(port, 2);

    let hook = call(
        api.port,
        "",
        "POST",
        "/api/v1/webhooks",
        Some(&json!({
        "url": format!("http://127.0.0.1:{port}/hook"),
        "events": ["operation.succeeded", "resource.state_changed"]})),
    )
    .body;
    let secret = hook["secret"].as_str().unwrap().to_owned();
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    let gone = call(
        api.port,
        "",
        "POST",
        "/api/v1/webhooks",
        Some(&json!({
        "url": format!("http://127.0.0.1:{port}/gone"), "events": ["operation.succeeded"]})),
    )
    .body;

    let (resource, operation) =
        api.create_instance("vm-1", &json!({"tenant": "acme", "flavor": "small"}));
    let delivered = |r: &Receiver, op: &str| {
        r.got().iter().any(|m| {
            m.status == 200 && m.body.contains("operation.succeeded") && m.body.contains(op)
        })
    };
    wait_until(
        Duration::from_secs(60),
        "operation.succeeded to be delivered",
        || delivered(&receiver, &operation),
    );

    let got: Vec<Received> = receiver
        .got()
        .into_iter()
        .filter(|m| m.path == "/hook")
        .collect();
    // The first two attempts (of the first message) failed, then it came again with the same id.
    assert_eq!(got[0].status, 503);
    assert_eq!(got[1].status, 503);
    assert_eq!(got[0].headers["webhook-id"], got[2].headers["webhook-id"]);
    assert_eq!(got[1].headers["webhook-id"], got[2].headers["webhook-id"]);
    verify_with_python(&secret, &got);
    // In order: the resource's transitions by seq, then its operation's end.
    let ok: Vec<Value> = got
        .iter()
        .filter(|m| m.status == 200)
        .map(|m| serde_json::from_str(&m.body).unwrap())
        .collect();
    let types: Vec<&str> = ok.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "resource.state_changed",
            "resource.state_changed",
            "resource.state_changed",
            "operation.succeeded"
        ],
        "{ok:?}"
    );
    let transitions: Vec<&str> = ok[..3]
        .iter()
        .map(|p| p["data"]["transition"].as_str().unwrap())
        .collect();
    assert_eq!(transitions, ["create", "begin_creating", "set_ok"]);
    assert!(
        ok.iter()
            .all(|p| p["version"] == 1 && p["timestamp"].is_string())
    );
    assert_eq!(ok[3]["data"]["id"], operation.as_str());
    assert_eq!(ok[3]["data"]["resource_id"], resource.as_str());
    assert_eq!(ok[3]["data"]["state"], "succeeded");
    let ts: i64 = got[2].headers["webhook-timestamp"].parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 120);

    // Every attempt is listed, with its status and duration.
    let attempts = call(
        api.port,
        "",
        "GET",
        &format!("/api/v1/webhooks/{hook_id}/deliveries?limit=500"),
        None,
    )
    .body;
    let items = attempts["items"].as_array().unwrap();
    assert_eq!(items.len(), got.len(), "{attempts}");
    assert_eq!(
        items
            .iter()
            .filter(|a| a["status_code"] == 503 && a["outcome"] == "failed")
            .count(),
        2
    );
    assert!(
        items
            .iter()
            .all(|a| a["duration_ms"].is_number() && a["created_at"].is_string())
    );
    // The 410 disabled its subscription.
    wait_until(
        Duration::from_secs(30),
        "the 410 to disable its subscription",
        || {
            call(
                api.port,
                "",
                "GET",
                &format!("/api/v1/webhooks/{}", gone["id"].as_str().unwrap()),
                None,
            )
            .body["enabled"]
                == false
        },
    );

    // Redeliver: the same webhook-id again.
    let first = items.last().unwrap();
    let again = call(
        api.port,
        "",
        "POST",
        &format!(
            "/api/v1/webhooks/{hook_id}/deliveries/{}/redeliver",
            first["id"].as_str().unwrap()
        ),
        None,
    );
    assert_eq!(again.status, 202, "{}", again.body);
    let id = first["webhook_id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(30), "the redelivery", || {
        receiver
            .got()
            .iter()
            .filter(|m| m.status == 200 && m.headers.get("webhook-id") == Some(&id))
            .count()
            == 2
    });

    // kill -9 between commit and delivery: the receiver is down, the
    // operation ends and its messages are committed, the worker dies.
    drop(receiver);
    let stop = call(
        api.port,
        "",
        "POST",
        &format!("/api/v1/resources/{resource}/actions/stop"),
        Some(&json!({})),
    );
    assert_eq!(stop.status, 202);
    let stop_op = stop.body["id"].as_str().unwrap().to_owned();
    wait_until(
        Duration::from_secs(60),
        "the stop to end with its messages pending",
        || {
            h.count("SELECT count(*) FROM operations WHERE state = 'succeeded' AND kind = 'action'") == 1
            && h.count("SELECT count(*) FROM webhook_attempts WHERE outcome = 'failed' AND status_code IS NULL") >= 1
        },
    );
    worker.kill9();
    // Pending: the messages queued behind the failed one, and the events
    // not fanned out yet (their message ids are derived, not stored).
    let pending: Vec<uuid::Uuid> = h
        .block_on(
            sqlx::query_scalar(
                "SELECT id FROM webhook_messages WHERE state = 'pending'
                 UNION ALL
                 SELECT webhook_message_id(id, $1) FROM webhook_events WHERE fanned_out_at IS NULL",
            )
            .bind(uuid::Uuid::parse_str(&hook_id).unwrap())
            .fetch_all(&h.pool),
        )
        .unwrap();
    assert!(
        pending.len() >= 3,
        "begin_stopping… set_ok and the ending are pending: {pending:?}"
    );
    let receiver = Receiver::start(port, 0);
    let _worker = h.worker("worker-2", PUSH_FLAGS);
    wait_until(
        Duration::from_secs(60),
        "the pending messages after the restart",
        || delivered(&receiver, &stop_op),
    );
    let ids: BTreeSet<String> = receiver
        .got()
        .iter()
        .map(|m| m.headers["webhook-id"].clone())
        .collect();
    for id in &pending {
        assert!(
            ids.contains(&format!("msg_{}", id.simple())),
            "{id} was delivered after the restart"
        );
    }
    verify_with_python(&secret, &receiver.got());
    assert_eq!(h.count("SELECT count(*) FROM webhook_messages WHERE state = 'pending' AND webhook_id IN (SELECT id FROM webhooks WHERE enabled)"), 0);
    assert_eq!(
        h.count("SELECT count(*) FROM webhook_events WHERE fanned_out_at IS NULL"),
        0
    );
    let metrics = call(api.port, "", "GET", "/metrics", None);
    assert_eq!(metrics.status, 200);
}

#[test]
fn a_receiver_that_never_answers_holds_back_no_other_subscription() {
    let h = Harness::new("push-silent");
    let flags = ["--webhook-allow-private", "--webhook-timeout-secs", "10"];
    let api = h.api_with("api", &flags);
    let _worker = h.worker("worker-1", &flags);
    // Connections to it complete (the kernel's backlog) and are never answered:
    // each POST to it holds its send for the whole 10 s timeout.
    let silent = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let port = free_port();
    let receiver = Receiver::start(port, 0);
    for url in [
        format!("http://127.0.0.1:{silent_port}/hook"),
        format!("http://127.0.0.1:{port}/hook"),
    ] {
        let hook = call(
            api.port,
            "",
            "POST",
            "/api/v1/webhooks",
            Some(&json!({"url": url, "events": ["operation.succeeded", "resource.state_changed"]})),
        );
        assert_eq!(hook.status, 201, "{}", hook.body);
    }

    for i in 0..3 {
        let (_, operation) = api.create_instance(
            &format!("vm-{i}"),
            &json!({"tenant": "acme", "flavor": "small"}),
        );
        wait_until(Duration::from_secs(30), "the create to succeed", || {
            api.call("GET", &format!("/api/v1/operations/{operation}"), None)
                .body["state"]
                == "succeeded"
        });
        // Well inside the silent receiver's 10 s: its sends do not hold back
        // this subscription's.
        wait_until(
            Duration::from_secs(5),
            "the answering receiver to get the operation's end",
            || {
                receiver
                    .got()
                    .iter()
                    .any(|m| m.body.contains("operation.succeeded") && m.body.contains(&operation))
            },
        );
    }
    drop(silent);
}

/// Reads Server-Sent Events from a raw socket until `done` says so.
struct SseClient {
    stream: TcpStream,
    raw: Vec<u8>,
    text: String,
}

/// One event: (id, type, data).
type SseEvent = (Option<i64>, String, Value);

impl SseClient {
    fn open(port: u16, path: &str, headers: &str) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n{headers}\r\n"
        )
        .unwrap();
        Self {
            stream,
            raw: Vec::new(),
            text: String::new(),
        }
    }

    /// Decodes what arrived so far (chunked transfer coding) into `text`.
    fn pump(&mut self) {
        let mut buf = [0u8; 16384];
        match self.stream.read(&mut buf) {
            Ok(n) => self.raw.extend_from_slice(&buf[..n]),
            Err(_) => return,
        }
        let Some(head) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            return;
        };
        let mut body = &self.raw[head + 4..];
        let mut text = Vec::new();
        while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
            let Ok(size) =
                usize::from_str_radix(std::str::from_utf8(&body[..end]).unwrap_or("x"), 16)
            else {
                break;
            };
            if body.len() < end + 2 + size + 2 {
                break;
            }
            text.extend_from_slice(&body[end + 2..end + 2 + size]);
            body = &body[end + 2 + size + 2..];
        }
        self.text = String::from_utf8_lossy(&text).to_string();
    }

    fn events(&self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for block in self.text.split("\n\n") {
            let (mut id, mut kind, mut data) = (None, String::new(), None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str(v.trim()).ok();
                }
            }
            if let Some(data) = data {
                out.push((id, kind, data));
            }
        }
        out
    }

    fn until(
        &mut self,
        limit: Duration,
        what: &str,
        done: impl Fn(&[SseEvent]) -> bool,
    ) -> Vec<SseEvent> {
        let started = Instant::now();
        loop {
            self.pump();
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(started.elapsed() < limit, "{what}: {}", self.text);
        }
    }
}

#[test]
fn the_event_stream_resumes_from_last_event_id_without_gaps_and_shows_only_the_tenant_s_events() {
    let h = Harness::new("push-stream");
    h.block_on(executord::db::migrate(&h.pool)).unwrap();
    let tokens: Vec<String> = ["acme", "other"]
        .iter()
        .map(|tenant| {
            let (token, hash, prefix) = executord::auth::new_token();
            h.block_on(async {
                let mut conn = h.pool.acquire().await.unwrap();
                executord::db::tokens::insert(&mut conn, "t", tenant, "operator", &hash, &prefix)
                    .await
                    .unwrap();
            });
            format!("Bearer {token}")
        })
        .collect();
    let (acme, other) = (&tokens[0], &tokens[1]);
    let api = h.api("api");
    let _worker = h.worker("worker", &[]);
    let create = |auth: &str, name: &str| {
        let reply = call(
            api.port,
            auth,
            "POST",
            "/api/v1/resources",
            Some(
                &json!({"kind": "instance", "name": name, "attributes": {"tenant": "x", "flavor": "small"}}),
            ),
        );
        assert_eq!(reply.status, 201, "{}", reply.body);
        (
            reply.body["id"].as_str().unwrap().to_owned(),
            reply.body["current_operation_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    };
    let ended = |op: String| {
        move |events: &[SseEvent]| {
            events
                .iter()
                .any(|(_, t, d)| t == "operation.succeeded" && d["data"]["id"] == op.as_str())
        }
    };

    let mut theirs = SseClient::open(
        api.port,
        "/api/v1/events/stream",
        &format!("Authorization: {other}\r\n"),
    );
    let mut first = SseClient::open(
        api.port,
        "/api/v1/events/stream?last_event_id=0",
        &format!("Authorization: {acme}\r\n"),
    );
    let (r1, op1) = create(acme, "vm-1");
    let seen = first.until(
        Duration::from_secs(60),
        "the first operation's end",
        ended(op1),
    );
    assert!(String::from_utf8_lossy(&first.raw).contains("text/event-stream"));
    let last = seen.iter().filter_map(|(id, _, _)| *id).max().unwrap();
    drop(first);

    // While no one listens: another creation, and the first one stopped.
    let (_r2, _op2) = create(acme, "vm-2");
    let stop = call(
        api.port,
        acme,
        "POST",
        &format!("/api/v1/resources/{r1}/actions/stop"),
        Some(&json!({})),
    );
    let op3 = stop.body["id"].as_str().unwrap().to_owned();
    let (theirs_id, theirs_op) = create(other, "o-1");
    let mut resumed = SseClient::open(
        api.port,
        "/api/v1/events/stream",
        &format!("Authorization: {acme}\r\nLast-Event-ID: {last}\r\n"),
    );
    let more = resumed.until(
        Duration::from_secs(60),
        "the stop's end after resuming",
        ended(op3),
    );

    // Every acme event exactly once across both connections, in seq order.
    let acme_seqs: Vec<i64> = h
        .block_on(
            sqlx::query_scalar(
                "SELECT seq FROM resource_events WHERE tenant = 'acme' ORDER BY seq",
            )
            .fetch_all(&h.pool),
        )
        .unwrap();
    let got: Vec<i64> = seen
        .iter()
        .chain(&more)
        .filter_map(|(id, _, _)| *id)
        .collect();
    let upto = *got.last().unwrap();
    let expected: Vec<i64> = acme_seqs.into_iter().filter(|s| *s <= upto).collect();
    assert_eq!(got, expected, "no gap, no repeat, in order");
    assert!(
        more.iter()
            .all(|(_, _, d)| d["data"]["resource_id"] != theirs_id.as_str())
    );
    assert!(
        seen.iter()
            .chain(&more)
            .all(|(_, t, d)| d["type"] == t.as_str() && d["version"] == 1)
    );

    // The other tenant's stream has only its own.
    let only = theirs.until(
        Duration::from_secs(60),
        "the other tenant's operation",
        ended(theirs_op),
    );
    assert!(
        only.iter()
            .all(|(_, _, d)| d["data"]["resource_id"] == theirs_id.as_str()),
        "{only:?}"
    );

    // Filters: one type only.
    let mut typed = SseClient::open(
        api.port,
        "/api/v1/events/stream?last_event_id=0&type=operation.succeeded",
        &format!("Authorization: {acme}\r\n"),
    );
    let ops = typed.until(Duration::from_secs(30), "the filtered backlog", |e| {
        e.len() >= 3
    });
    assert!(
        ops.iter()
            .all(|(id, t, _)| t == "operation.succeeded" && id.is_some())
    );
    let bad = call(
        api.port,
        acme,
        "GET",
        "/api/v1/events/stream?type=nope",
        None,
    );
    assert_eq!(bad.status, 422);
}
