//! Crash safety, with the real binary: one API process and worker processes
//! on a private PostgreSQL cluster per test, a simulated cloud whose calls
//! take 300 ms, 3 s leases. Workers are killed with SIGKILL and stopped with
//! SIGTERM mid-run, the database is restarted mid-load, 200 conflicting
//! requests race for one resource, the API is stopped with a long poll
//! open, and slow clients flood it. Each test ends by reading the database:
//! every operation succeeded, no task is left behind, no backend effect was
//! applied twice, and every resource's state history is one unbroken chain.
//!
//! What each test proves, and the numbers it printed, are in docs/RELIABILITY.md
//! (run with `--nocapture` to see the `crash:` summary lines).
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use crate::support::process::{
    GRACE_SECS, Harness, LEASE_SECS, Proc, exchange, secs, try_http, try_raw, wait_until,
};
use serde_json::{Value, json};
use uuid::Uuid;

/// What a worker held when it was killed.
struct Kill {
    /// Its `running` tasks (id, type), stranded until their lease expires.
    held: Vec<(Uuid, String)>,
    /// The database's clock at the kill.
    at: chrono::DateTime<chrono::Utc>,
    /// The test's clock at the kill.
    instant: Instant,
}

/// Waits until `victim` is mid-run (several tasks held, some of them in a
/// backend call), then `kill -9`s it.
fn kill_mid_run(h: &Harness, victim: &mut Proc) -> Kill {
    wait_until(Duration::from_secs(30), "the worker to be mid-run", || {
        let held = h.running_of(victim);
        held.len() >= 4 && held.iter().filter(|(_, t)| t == "backend_method").count() >= 2
    });
    victim.kill9();
    let instant = Instant::now();
    // No lease of the victim can expire for seconds: effects up to now are its own.
    let at = h.db_now();
    // It is dead: what it still holds is exactly what it stranded.
    let held = h.running_of(victim);
    assert!(
        held.iter().any(|(_, t)| t == "backend_method"),
        "the kill came mid-run: {held:?}"
    );
    Kill { held, at, instant }
}

/// Waits until none of `kill.held` is still leased by the dead worker;
/// returns the time since the kill.
fn wait_requeued(h: &Harness, victim: &Proc, kill: &Kill) -> Duration {
    let ids: Vec<Uuid> = kill.held.iter().map(|(id, _)| *id).collect();
    wait_until(
        Duration::from_secs(LEASE_SECS + 10),
        "the dead worker's leases to expire",
        || {
            let left: i64 = h
                .block_on(
                    sqlx::query_scalar(
                        "SELECT count(*) FROM tasks WHERE id = ANY($1) AND state = 'running' AND worker LIKE $2",
                    )
                    .bind(&ids)
                    .bind(victim.worker_pattern())
                    .fetch_one(&h.pool),
                )
                .unwrap();
            left == 0
        },
    );
    kill.instant.elapsed()
}

/// The tasks of `kill.held` that did not end `succeeded` by another worker,
/// and how many of their effects the dead worker had applied (replayed since).
fn check_stranded(h: &Harness, victim: &Proc, kill: &Kill) -> (i64, i64) {
    let ids: Vec<Uuid> = kill.held.iter().map(|(id, _)| *id).collect();
    let (wrong, replayed): (i64, i64) = h
        .block_on(
            sqlx::query_as(
                "SELECT
                   (SELECT count(*) FROM tasks WHERE id = ANY($1) AND (state <> 'succeeded' OR worker LIKE $2)),
                   (SELECT count(*) FROM sim_effects WHERE idempotency_key = ANY($1) AND created_at <= $3)",
            )
            .bind(&ids)
            .bind(victim.worker_pattern())
            .bind(kill.at)
            .fetch_one(&h.pool),
        )
        .unwrap();
    (wrong, replayed)
}

#[test]
fn kill_9_of_a_worker_mid_run_loses_no_operation_and_repeats_no_effect() {
    const N: usize = 50;
    let h = Harness::new("kill");
    let api = h.api("api");
    let mut a = h.worker("worker-a", &[]);
    let mut b = h.worker("worker-b", &[]);

    // Wave 1: creations (10 tenants of 5, so the 4-slot throttle also queues).
    let started = Instant::now();
    let ids: Vec<String> = (0..N)
        .map(|i| {
            api.create_instance(
                &format!("vm-{i}"),
                &json!({"tenant": format!("t{}", i % 10), "flavor": "small"}),
            )
            .0
        })
        .collect();
    let kill_a = kill_mid_run(&h, &mut a);
    let requeued_a = wait_requeued(&h, &a, &kill_a);
    h.wait_all_finished(Duration::from_secs(LEASE_SECS + 10));
    let recovery_a = kill_a.instant.elapsed();
    assert!(
        recovery_a <= Duration::from_secs(LEASE_SECS + 10),
        "every operation ended within the lease plus 10 s of the kill: {recovery_a:?}"
    );
    let wave_1 = started.elapsed();
    let (wrong_a, replayed_a) = check_stranded(&h, &a, &kill_a);
    assert_eq!(
        wrong_a, 0,
        "the killed worker's tasks all succeeded elsewhere"
    );

    // Wave 2: a replacement for A, every instance stopped, and B killed mid-run.
    let _a2 = h.worker("worker-a2", &[]);
    let started = Instant::now();
    for id in &ids {
        let reply = api.call(
            "POST",
            &format!("/api/v1/resources/{id}/actions/stop"),
            Some(&json!({})),
        );
        assert_eq!(reply.status, 202, "stop {id}: {}", reply.body);
    }
    let kill_b = kill_mid_run(&h, &mut b);
    let requeued_b = wait_requeued(&h, &b, &kill_b);
    h.wait_all_finished(Duration::from_secs(LEASE_SECS + 10));
    let recovery_b = kill_b.instant.elapsed();
    assert!(
        recovery_b <= Duration::from_secs(LEASE_SECS + 10),
        "every operation ended within the lease plus 10 s of the kill: {recovery_b:?}"
    );
    let wave_2 = started.elapsed();
    let (wrong_b, replayed_b) = check_stranded(&h, &b, &kill_b);
    assert_eq!(
        wrong_b, 0,
        "the killed worker's tasks all succeeded elsewhere"
    );

    let settled = h.assert_settled();
    assert_eq!(settled.operations, 2 * N as i64);
    assert_eq!(
        h.count("SELECT count(*) FROM resources WHERE state = 'ok' AND runtime_state = 'SHUTOFF'"),
        N as i64
    );
    eprintln!(
        "crash: kill -9: {} operations ({N} creates, {N} stops), 2 workers killed mid-run; \
         stranded tasks {} and {} (backend calls {} and {}), requeued {} and {} after the kill, \
         all operations done {} and {} after the kill (waves took {} and {}); \
         effects the dead worker had applied, replayed not repeated: {} and {}; \
         {} tasks, {} backend calls, {} effects, none applied twice, {} tasks claimed more than once",
        settled.operations,
        kill_a.held.len(),
        kill_b.held.len(),
        kill_a
            .held
            .iter()
            .filter(|(_, t)| t == "backend_method")
            .count(),
        kill_b
            .held
            .iter()
            .filter(|(_, t)| t == "backend_method")
            .count(),
        secs(requeued_a),
        secs(requeued_b),
        secs(recovery_a),
        secs(recovery_b),
        secs(wave_1),
        secs(wave_2),
        replayed_a,
        replayed_b,
        settled.tasks,
        settled.backend_calls,
        settled.effects,
        settled.reclaimed,
    );
}

/// A server with two volumes and a floating IP: five backend objects.
fn create_server(api: &crate::support::process::Api, name: &str, tenant: &str) -> (String, String) {
    let body = json!({"kind": "server", "name": name, "attributes": {
        "tenant": tenant, "flavor": "small",
        "volumes": [{"size_gb": 10}, {"size_gb": 20}], "floating_ip": true,
    }});
    let reply = api.call("POST", "/api/v1/resources", Some(&body));
    assert_eq!(reply.status, 201, "create {name}: {}", reply.body);
    (
        reply.body["id"].as_str().unwrap().to_owned(),
        reply.body["current_operation_id"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

#[test]
fn kill_9_mid_composite_chain_and_cancels_mid_chain_leave_every_resource_final_and_nothing_orphaned()
 {
    const N: usize = 8;
    let h = Harness::new("composite");
    let api = h.api("api");
    let mut a = h.worker("worker-a", &[]);
    let _b = h.worker("worker-b", &[]);

    // Servers, each a graph of 40-odd tasks over five resources; worker A
    // dies mid-run.
    let started = Instant::now();
    for i in 0..N {
        create_server(&api, &format!("srv-{i}"), &format!("t{}", i % 4));
    }
    let kill = kill_mid_run(&h, &mut a);
    wait_requeued(&h, &a, &kill);
    h.wait_all_finished(Duration::from_secs(LEASE_SECS + 60));
    let (wrong, replayed) = check_stranded(&h, &a, &kill);
    assert_eq!(
        wrong, 0,
        "the killed worker's tasks all succeeded elsewhere"
    );
    let settled = h.assert_settled();
    assert_eq!(settled.operations, N as i64);
    assert_eq!(h.count("SELECT count(*) FROM resources"), 5 * N as i64);
    assert_eq!(
        h.count("SELECT count(*) FROM resources WHERE parent_id IS NOT NULL AND state = 'ok'"),
        4 * N as i64
    );
    let created_in = started.elapsed();

    // More servers, each cancelled once its volumes are being made: each
    // winds down, its compensation deletes what it made.
    let cancelled: Vec<(String, String)> = (0..4)
        .map(|i| create_server(&api, &format!("late-{i}"), "t9"))
        .collect();
    wait_until(
        Duration::from_secs(30),
        "the late servers to be making volumes",
        || {
            h.count(
            "SELECT count(DISTINCT t.operation_id) FROM tasks t JOIN resources r ON r.id = t.resource_id
             WHERE r.name LIKE 'late-%' AND t.args->>'method' = 'create_volume'
               AND t.state IN ('running', 'succeeded')",
        ) >= 4
        },
    );
    for (_, operation) in &cancelled {
        let reply = api.call(
            "POST",
            &format!("/api/v1/operations/{operation}/cancel"),
            Some(&json!({})),
        );
        assert_eq!(reply.status, 200, "cancel {operation}: {}", reply.body);
    }
    h.wait_all_finished(Duration::from_secs(60));
    for (id, operation) in &cancelled {
        let op = api.call("GET", &format!("/api/v1/operations/{operation}"), None);
        assert_eq!(op.body["state"], "cancelled", "{}", op.body);
        let server = api.call("GET", &format!("/api/v1/resources/{id}"), None);
        assert_eq!(server.body["state"], "erred", "{}", server.body);
        assert_eq!(server.body["children"], json!([]), "{}", server.body);
    }
    assert_eq!(
        h.count("SELECT count(*) FROM tasks WHERE state IN ('waiting', 'ready', 'running')"),
        0
    );
    assert_eq!(
        h.count("SELECT count(*) FROM sim_effects WHERE applied > 1"),
        0,
        "no effect applied twice"
    );
    // Nothing orphaned: every live simulated object belongs to a resource.
    let objects =
        h.count("SELECT count(*) FROM sim_objects WHERE next_state IS DISTINCT FROM 'gone'");
    let backed =
        h.count("SELECT count(DISTINCT backend_id) FROM resources WHERE backend_id IS NOT NULL");
    assert_eq!(
        objects, backed,
        "live simulated objects = resources with a backend object"
    );
    assert!(
        h.history_violations().is_empty(),
        "{:?}",
        h.history_violations()
    );
    eprintln!(
        "crash: composite: {N} servers ({} tasks) with a worker killed mid-run, all ok in {}; \
         stranded {} tasks, effects replayed not repeated {replayed}; 4 cancelled mid-chain, \
         all undone; {objects} live objects for {backed} backed resources",
        settled.tasks,
        secs(created_in),
        kill.held.len(),
    );
}

/// Every answer the background load got, with when it was sent.
struct Sent {
    at: Instant,
    result: std::io::Result<crate::support::process::Reply>,
}

#[test]
fn a_database_restart_mid_load_answers_503_and_every_accepted_operation_completes() {
    const N: usize = 40;
    const OUTAGE: Duration = Duration::from_secs(6);
    const LOAD_THREADS: usize = 8;
    const LOAD_PAUSE_MS: u64 = 20;
    const BLOCKED: usize = 3;
    let mut h = Harness::new("restart");
    let api = h.api("api");
    let mut w1 = h.worker("worker-1", &[]);
    let mut w2 = h.worker("worker-2", &[]);
    let port = api.port;

    // A settled resource that the test will hold a row lock on.
    let (locked, op) = api.create_instance("locked", &json!({"tenant": "lock", "flavor": "small"}));
    let done = api.call("GET", &format!("/api/v1/operations/{op}?wait=30"), None);
    assert_eq!(done.body["state"], "succeeded", "{}", done.body);

    let mut accepted: Vec<Uuid> = vec![op.parse().unwrap()];
    accepted.extend((0..N).map(|i| {
        let (_, op) = api.create_instance(
            &format!("vm-{i}"),
            &json!({"tenant": format!("t{}", i % 10), "flavor": "small"}),
        );
        op.parse::<Uuid>().unwrap()
    }));

    // A steady trickle of creations throughout: before, during and after the outage.
    let stop_load = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Vec::<Sent>::new()));
    let load: Vec<_> = (0..LOAD_THREADS)
        .map(|thread| {
            let (stop_load, sent) = (stop_load.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop_load.load(Ordering::Relaxed) {
                    let body = json!({"kind": "instance", "name": format!("load-{thread}-{n}"),
                    "attributes": {"tenant": format!("load{}", n % 5), "flavor": "small"}});
                    let at = Instant::now();
                    let result = try_http(
                        port,
                        "POST",
                        "/api/v1/resources",
                        Some(&body),
                        Duration::from_secs(30),
                    );
                    sent.lock().unwrap().push(Sent { at, result });
                    n += 1;
                    std::thread::sleep(Duration::from_millis(LOAD_PAUSE_MS));
                }
            })
        })
        .collect();

    wait_until(Duration::from_secs(30), "tasks in flight", || {
        h.count("SELECT count(*) FROM tasks WHERE state = 'running' AND type = 'backend_method'")
            >= 2
    });
    // Requests inside the database when it stops: the test holds the row
    // lock of `locked`, and updates of it queue behind that lock.
    let mut lock = h.block_on(h.pool.begin()).unwrap();
    h.block_on(
        sqlx::query("SELECT 1 FROM resources WHERE id = $1::uuid FOR UPDATE")
            .bind(&locked)
            .execute(&mut *lock),
    )
    .unwrap();
    let blocked: Vec<_> = (0..BLOCKED)
        .map(|i| {
            let path = format!("/api/v1/resources/{locked}");
            std::thread::spawn(move || {
                let body = json!({"name": format!("blocked-{i}")});
                try_http(port, "PATCH", &path, Some(&body), Duration::from_secs(30))
            })
        })
        .collect();
    const QUEUED: &str = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                          AND query ILIKE '%FOR UPDATE%' AND pid <> pg_backend_pid()";
    wait_until(
        Duration::from_secs(10),
        "the updates to queue behind the lock",
        || h.count(QUEUED) >= BLOCKED as i64,
    );

    let down_at = Instant::now();
    h.crash_db();
    let stopped_in = down_at.elapsed();
    // Its session is gone with the server.
    let _ = h.block_on(lock.rollback());

    // While it is down: /readyz says so, and requests get a quick 503.
    let mut readyz = Vec::new();
    let mut probes = Vec::new();
    while down_at.elapsed() < OUTAGE {
        readyz.push(try_http(
            port,
            "GET",
            "/readyz",
            None,
            Duration::from_secs(30),
        ));
        for (method, path, body) in [
            (
                "POST",
                "/api/v1/resources".to_owned(),
                Some(
                    json!({"kind": "instance", "name": "probe", "attributes": {"tenant": "p", "flavor": "small"}}),
                ),
            ),
            ("GET", format!("/api/v1/operations/{}", accepted[0]), None),
            ("GET", "/api/v1/resources".to_owned(), None),
        ] {
            probes.push((
                method,
                try_http(port, method, &path, body.as_ref(), Duration::from_secs(30)),
            ));
        }
    }
    let up_at = Instant::now();
    h.start_db();
    let restarted_in = up_at.elapsed();
    let ready_again = wait_until(
        Duration::from_secs(30),
        "/readyz to answer 200 again",
        || {
            try_http(port, "GET", "/readyz", None, Duration::from_secs(10))
                .is_ok_and(|r| r.status == 200)
        },
    );
    let outage = down_at.elapsed();
    // A little load after the restart too.
    std::thread::sleep(Duration::from_secs(1));
    stop_load.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().unwrap();
    }

    let mut problems = Vec::new();
    for reply in &readyz {
        match reply {
            Ok(r) if r.status == 503 => {}
            Ok(r) => problems.push(format!(
                "/readyz during the outage: {} {}",
                r.status, r.body
            )),
            Err(e) => problems.push(format!("/readyz during the outage: no answer ({e})")),
        }
    }
    for (method, reply) in &probes {
        match reply {
            Ok(r) if r.status == 503 => {}
            Ok(r) => problems.push(format!(
                "{method} during the outage: {} {}",
                r.status, r.body
            )),
            Err(e) => problems.push(format!("{method} during the outage: no answer ({e})")),
        }
    }
    for thread in blocked {
        match thread.join().unwrap() {
            Ok(r) if r.status == 503 => {}
            Ok(r) => problems.push(format!(
                "an update waiting in the database when it stopped: {} {}",
                r.status, r.body
            )),
            Err(e) => problems.push(format!(
                "an update waiting in the database when it stopped: no answer ({e})"
            )),
        }
    }
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let (mut load_201, mut load_503) = (0, 0);
    let mut slowest = Duration::ZERO;
    for s in &sent {
        match &s.result {
            Ok(r) if r.status == 201 => {
                load_201 += 1;
                accepted.push(
                    r.body["current_operation_id"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap(),
                );
            }
            Ok(r) if r.status == 503 => {
                load_503 += 1;
                slowest = slowest.max(r.elapsed);
            }
            Ok(r) => problems.push(format!(
                "load request {:.1} s after the stop: {} {}",
                s.at.saturating_duration_since(down_at).as_secs_f64(),
                r.status,
                r.body
            )),
            Err(e) => problems.push(format!("load request got no answer: {e}")),
        }
    }
    let answers = readyz
        .iter()
        .chain(probes.iter().map(|(_, r)| r))
        .filter_map(|r| r.as_ref().ok());
    let slowest = answers.map(|r| r.elapsed).fold(slowest, Duration::max);
    if slowest > Duration::from_secs(10) {
        problems.push(format!("an answer during the outage took {slowest:?}"));
    }

    // After it: every accepted operation completes, on the same processes.
    let completed_in = h.wait_all_finished(Duration::from_secs(LEASE_SECS + 20)) + ready_again;
    assert!(
        w1.is_alive() && w2.is_alive(),
        "the workers outlived the outage"
    );
    let done: i64 = h
        .block_on(
            sqlx::query_scalar(
                "SELECT count(*) FROM operations WHERE id = ANY($1) AND state = 'succeeded'",
            )
            .bind(&accepted)
            .fetch_one(&h.pool),
        )
        .unwrap();
    assert_eq!(
        done,
        accepted.len() as i64,
        "every accepted operation succeeded"
    );
    let settled = h.assert_settled();
    eprintln!(
        "crash: database restart: outage {} (stop took {}, start {}), /readyz 200 again {} after the start; \
         {} /readyz and {} API probes during the outage, slowest 503 {}; background load {} requests: {} accepted, {} 503; \
         {} operations accepted in all ({} in the database), all done {} after the restart; {} tasks claimed more than once",
        secs(outage),
        secs(stopped_in),
        secs(restarted_in),
        secs(ready_again),
        readyz.len(),
        probes.len(),
        secs(slowest),
        sent.len(),
        load_201,
        load_503,
        accepted.len(),
        settled.operations,
        secs(completed_in),
        settled.reclaimed,
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn sigterm_mid_load_finishes_or_releases_every_task_and_the_next_process_takes_over() {
    const HUNG: usize = 6;
    const N: usize = 40;
    let h = Harness::new("sigterm");
    let api = h.api("api");
    // A's backend calls may hang for a minute: its hung calls can only end by release.
    let mut a = h.worker("worker-a", &["--backend-timeout-secs", "60"]);

    // The first effectful call of each of these hangs in every process (the
    // sim's `hang_calls`): in flight for good, until A releases them.
    let hung: Vec<Uuid> = (0..HUNG)
        .map(|i| {
            let attributes =
                json!({"tenant": format!("h{i}"), "flavor": "small", "sim": {"hang_calls": 1}});
            api.create_instance(&format!("hung-{i}"), &attributes)
                .0
                .parse()
                .unwrap()
        })
        .collect();
    for i in HUNG..N {
        api.create_instance(
            &format!("vm-{i}"),
            &json!({"tenant": format!("t{}", i % 10), "flavor": "small"}),
        );
    }
    let hung_calls = || -> Vec<Uuid> {
        h.block_on(
            sqlx::query_scalar(
                "SELECT t.id FROM tasks t JOIN operations o ON o.id = t.operation_id
                 WHERE o.resource_id = ANY($1) AND t.type = 'backend_method' AND t.state = 'running'",
            )
            .bind(&hung)
            .fetch_all(&h.pool),
        )
        .unwrap()
    };
    wait_until(
        Duration::from_secs(30),
        "hung calls and other work in flight",
        || hung_calls().len() == HUNG && h.running_of(&a).len() >= HUNG + 2,
    );
    let hung_tasks = hung_calls();
    let in_flight = h.running_of(&a).len();

    let term_at = h.db_now();
    let term = Instant::now();
    a.term();
    let exit = a
        .wait_exit(Duration::from_secs(GRACE_SECS + 15))
        .expect("worker A exits after SIGTERM");
    let exited_in = term.elapsed();
    assert!(exit.success(), "worker A exits cleanly: {exit}");

    // Nothing stranded: no worker runs now, and no task is left `running`.
    assert_eq!(
        h.count("SELECT count(*) FROM tasks WHERE state = 'running'"),
        0,
        "tasks stranded in running:\n{}",
        h.describe_live_tasks()
    );
    let released: Vec<Uuid> = h
        .block_on(
            sqlx::query_scalar(
                "SELECT id FROM tasks WHERE state = 'ready' AND status = 'released by a stopping runner'",
            )
            .fetch_all(&h.pool),
        )
        .unwrap();
    for task in &hung_tasks {
        assert!(released.contains(task), "the hung call {task} was released");
    }
    let finished_in_grace: i64 = h
        .block_on(
            sqlx::query_scalar(
                "SELECT count(*) FROM tasks WHERE worker LIKE $1 AND finished_at >= $2 AND state = 'succeeded'",
            )
            .bind(a.worker_pattern())
            .bind(term_at)
            .fetch_one(&h.pool),
        )
        .unwrap();
    assert_eq!(
        a.log_count("released at shutdown"),
        released.len(),
        "A logged each release"
    );
    let unfinished = h.unfinished_operations();
    assert!(unfinished > 0, "work was left for the next process");

    // The next process (which cuts its own first hung call after 2 s) takes over.
    let takeover = Instant::now();
    let mut b = h.worker("worker-b", &["--backend-timeout-secs", "2"]);
    h.wait_all_finished(Duration::from_secs(LEASE_SECS + 20));
    let takeover_in = takeover.elapsed();
    let not_by_b: i64 = h
        .block_on(
            sqlx::query_scalar(
                "SELECT count(*) FROM tasks WHERE id = ANY($1) AND (state <> 'succeeded' OR worker NOT LIKE $2)",
            )
            .bind(&released)
            .bind(b.worker_pattern())
            .fetch_one(&h.pool),
        )
        .unwrap();
    assert_eq!(not_by_b, 0, "every released task was finished by B");
    let settled = h.assert_settled();
    assert_eq!(settled.operations, N as i64);

    // An idle worker stops at once, and leaves nothing behind either.
    let term = Instant::now();
    b.term();
    let exit = b
        .wait_exit(Duration::from_secs(GRACE_SECS + 15))
        .expect("worker B exits after SIGTERM");
    assert!(exit.success(), "worker B exits cleanly: {exit}");
    let idle_exit = term.elapsed();
    assert_eq!(
        h.count("SELECT count(*) FROM tasks WHERE state = 'running'"),
        0
    );
    eprintln!(
        "crash: SIGTERM: {N} creations ({HUNG} with a hung backend call); A held {in_flight} tasks at SIGTERM, \
         exited after {} (grace {GRACE_SECS} s) with {finished_in_grace} tasks finished during the grace period, \
         {} released ({HUNG} hung calls among them), 0 left running; {unfinished} operations left, \
         finished by B {} after its start; idle B exited {} after SIGTERM; {} tasks, {} effects, none applied twice",
        secs(exited_in),
        released.len(),
        secs(takeover_in),
        secs(idle_exit),
        settled.tasks,
        settled.effects,
    );
}

#[test]
fn two_hundred_concurrent_conflicting_requests_accept_exactly_one() {
    const N: usize = 200;
    let h = Harness::new("conflicts");
    let api = h.api("api");
    let mut w = h.worker("worker", &[]);
    let (id, op) = api.create_instance("contested", &json!({"tenant": "acme", "flavor": "small"}));
    let done = api.call("GET", &format!("/api/v1/operations/{op}?wait=30"), None);
    assert_eq!(done.body["state"], "succeeded", "{}", done.body);
    // No runner during the race: the winner's operation stays in flight, so
    // every other request must conflict whenever it arrives.
    w.term();
    assert!(w.wait_exit(Duration::from_secs(GRACE_SECS + 15)).is_some());

    let requests: Vec<(&str, String, Option<Value>)> = (0..N)
        .map(|i| match i % 4 {
            0 => (
                "POST",
                format!("/api/v1/resources/{id}/actions/stop"),
                Some(json!({})),
            ),
            1 => (
                "POST",
                format!("/api/v1/resources/{id}/actions/restart"),
                Some(json!({})),
            ),
            2 => (
                "PATCH",
                format!("/api/v1/resources/{id}"),
                Some(json!({"name": format!("renamed-{i}")})),
            ),
            _ => ("DELETE", format!("/api/v1/resources/{id}"), None),
        })
        .collect();
    let barrier = Arc::new(Barrier::new(N));
    let port = api.port;
    let started = Instant::now();
    let threads: Vec<_> = requests
        .into_iter()
        .enumerate()
        .map(|(i, (method, path, body))| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // Connected first, sent together.
                let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                barrier.wait();
                let reply = exchange(
                    stream,
                    method,
                    &path,
                    body.as_ref(),
                    Duration::from_secs(60),
                );
                (i, method, path, reply)
            })
        })
        .collect();
    let replies: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let burst = started.elapsed();

    let mut winners = Vec::new();
    let mut conflicts = 0;
    let mut other = Vec::new();
    let mut slowest = Duration::ZERO;
    for (i, method, path, reply) in &replies {
        match reply {
            Ok(r) => {
                slowest = slowest.max(r.elapsed);
                match r.status {
                    202 => winners.push((*i, r.body.clone())),
                    409 if r.body["status"] == 409 => conflicts += 1,
                    _ => other.push(format!("{method} {path}: {} {}", r.status, r.body)),
                }
            }
            Err(e) => other.push(format!("{method} {path}: no answer ({e})")),
        }
    }
    assert!(
        other.is_empty(),
        "answers other than 202 and 409:\n{}",
        other.join("\n")
    );
    assert_eq!(winners.len(), 1, "exactly one accepted: {winners:?}");
    assert_eq!(conflicts, N - 1);
    let (winner, operation) = winners.pop().unwrap();
    let winner_op: Uuid = operation["id"].as_str().unwrap().parse().unwrap();
    let resource: Uuid = id.parse().unwrap();

    // The 199 losers left no trace: one new operation, one new event.
    let (operations, events, current): (i64, i64, Option<Uuid>) = h
        .block_on(
            sqlx::query_as(
                "SELECT (SELECT count(*) FROM operations WHERE resource_id = $1),
                        (SELECT count(*) FROM resource_events WHERE resource_id = $1),
                        (SELECT current_operation_id FROM resources WHERE id = $1)",
            )
            .bind(resource)
            .fetch_one(&h.pool),
        )
        .unwrap();
    assert_eq!((operations, events, current), (2, 4, Some(winner_op)));

    // Then the winner runs to its end, and the history is one chain.
    let _w2 = h.worker("worker-2", &[]);
    h.wait_all_finished(Duration::from_secs(LEASE_SECS + 10));
    let settled = h.assert_settled();
    let state: Option<(String, Option<String>, String)> = h
        .block_on(
            sqlx::query_as("SELECT state, runtime_state, name FROM resources WHERE id = $1")
                .bind(resource)
                .fetch_optional(&h.pool),
        )
        .unwrap();
    let kind = match winner % 4 {
        0 => "stop",
        1 => "restart",
        2 => "update",
        _ => "delete",
    };
    match kind {
        "stop" => assert_eq!(
            state,
            Some(("ok".into(), Some("SHUTOFF".into()), "contested".into()))
        ),
        "restart" => assert_eq!(
            state,
            Some(("ok".into(), Some("ACTIVE".into()), "contested".into()))
        ),
        "update" => assert_eq!(
            state,
            Some((
                "ok".into(),
                Some("ACTIVE".into()),
                format!("renamed-{winner}")
            ))
        ),
        _ => assert_eq!(state, None),
    }
    let history: Vec<(Option<String>, Option<String>)> = h
        .block_on(
            sqlx::query_as(
                "SELECT from_state, to_state FROM resource_events WHERE resource_id = $1 ORDER BY seq",
            )
            .bind(resource)
            .fetch_all(&h.pool),
        )
        .unwrap();
    eprintln!(
        "crash: 200 conflicting requests (50 each of stop, restart, update, delete): sent in {}, slowest answer {}; \
         1 accepted (request {winner}, a {kind}), {conflicts} answered 409; history {:?}; {} operations, {} effects",
        secs(burst),
        secs(slowest),
        history,
        settled.operations,
        settled.effects,
    );
}

#[test]
fn sigterm_of_the_api_answers_open_long_polls_and_exits_within_the_grace_period() {
    let h = Harness::new("longpoll");
    let mut api = h.api("api");
    // No runner anywhere: the operation stays scheduled, so the long poll stays open.
    let (_, op) = api.create_instance("waited-on", &json!({"tenant": "acme", "flavor": "small"}));
    let port = api.port;
    let poll = std::thread::spawn(move || {
        try_http(
            port,
            "GET",
            &format!("/api/v1/operations/{op}?wait=30"),
            None,
            Duration::from_secs(60),
        )
    });
    // It reaches its wait loop within milliseconds.
    std::thread::sleep(Duration::from_secs(1));

    let term = Instant::now();
    api.proc.term();
    let exit = api.proc.wait_exit(Duration::from_secs(40));
    let exited_in = term.elapsed();
    let answer = poll.join().unwrap();
    let answered_in = answer.as_ref().map(|r| r.elapsed).ok();
    eprintln!(
        "crash: SIGTERM of the API with a ?wait=30 long poll open: exited after {}, the poll answered {:?} after {:?}",
        secs(exited_in),
        answer
            .as_ref()
            .map(|r| (r.status, r.body["state"].clone()))
            .ok(),
        answered_in,
    );
    let exit = exit.expect("the API exits after SIGTERM");
    assert!(exit.success(), "the API exits cleanly: {exit}");
    let answer = answer.expect("the long poll gets an answer");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        exited_in <= Duration::from_secs(GRACE_SECS + 5),
        "the API took {exited_in:?} to exit after SIGTERM (grace {GRACE_SECS} s): an open long poll held it"
    );
}

/// Whether the server has closed `stream` (end of file or reset), without
/// waiting. A stalled client must never get an answer: any byte fails the test.
fn is_closed(mut stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    let closed = match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!(
            "a stalled client got an answer: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

/// Reads one answer of `Content-Length` size from a kept-alive connection; returns its status.
fn read_one_answer(stream: &mut TcpStream) -> u16 {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed mid-answer");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if body.len() >= length {
                return head.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        }
    }
}

/// One request that must be answered `status` within `bound`; returns how long it took.
fn timed_call(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    status: u16,
    bound: Duration,
) -> Duration {
    let reply = try_http(port, method, path, body, bound)
        .unwrap_or_else(|e| panic!("{method} {path} was not answered within {bound:?}: {e}"));
    assert_eq!(reply.status, status, "{method} {path}: {}", reply.body);
    reply.elapsed
}

/// A counter's value in the Prometheus text, 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// A client that asks and never reads: once the socket buffers between it
/// and the service are full, the response cannot be written. After the write
/// stall timeout the service closes the connection (and counts it), so such
/// clients cannot hold the connection cap or the event stream's slots.
#[test]
fn a_client_that_stops_reading_is_cut_off_after_the_write_stall_timeout() {
    const REQUESTS: usize = 40;
    let h = Harness::new("stalled-reader");
    let api = h.api_with("api", &["--write-stall-timeout-secs", "2"]);
    let port = api.port;
    const ASSET: &str = "/docs/swagger-ui-bundle.js";
    let fetch = |path: &str| try_http(port, "GET", path, None, Duration::from_secs(30)).unwrap();
    let one = fetch(ASSET);
    assert_eq!(one.status, 200, "{}", one.head);
    let size = one.text.len();
    assert!(
        size > 500_000,
        "a large response to fill the buffers: {size} bytes"
    );
    // Far more than the kernel buffers on both sides hold.
    let asks = format!("GET {ASSET} HTTP/1.1\r\nHost: x\r\n\r\n").repeat(REQUESTS);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(asks.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let metrics = fetch("/metrics").text;
    assert_eq!(
        metric(
            &metrics,
            "executord_http_connections_closed_total{reason=\"write_stalled\"}"
        ),
        1.0,
        "{metrics}"
    );
    // What had been written before the close is there to read, then the end.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    let ended = loop {
        match client.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(
        ended,
        "the service closed the connection ({got} bytes read)"
    );
    assert!(
        got < size * REQUESTS,
        "cut off after {got} of {} bytes",
        size * REQUESTS
    );
}

#[test]
fn a_slow_loris_flood_cannot_starve_normal_requests_and_stalled_clients_are_cut_off() {
    const CAP: usize = 64;
    const STALLED: usize = 300;
    const TIMEOUT: Duration = Duration::from_secs(4);
    /// What a normal request may take while the flood hangs: well under `TIMEOUT`,
    /// so it was not served by waiting for stalled clients to time out.
    const BOUND: Duration = Duration::from_secs(2);
    let h = Harness::new("slowloris");
    let api = h.api_with(
        "api",
        &[
            "--max-connections",
            &CAP.to_string(),
            "--header-read-timeout-secs",
            &TIMEOUT.as_secs().to_string(),
        ],
    );
    let port = api.port;

    // A client that drips its head, a byte every 200 ms: progress does not
    // extend its time.
    let drip = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let head = b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
        let started = Instant::now();
        let mut buf = [0u8; 512];
        for sent in 0.. {
            if started.elapsed() > TIMEOUT + Duration::from_secs(5) {
                return None;
            }
            let byte = head.get(sent).copied().unwrap_or(b'a');
            if stream.write_all(&[byte]).is_err() {
                return Some((started.elapsed(), sent));
            }
            match stream.read(&mut buf) {
                Ok(0) => return Some((started.elapsed(), sent + 1)),
                Ok(n) => panic!(
                    "the dripping client got an answer: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return Some((started.elapsed(), sent + 1)),
            }
        }
        None
    });
    // A kept-alive client that goes quiet after one request.
    let mut kept = TcpStream::connect(("127.0.0.1", port)).unwrap();
    kept.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(read_one_answer(&mut kept), 200);
    let quiet = Instant::now();
    kept.set_read_timeout(Some(TIMEOUT + Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    let kept_end = kept.read(&mut buf);
    let idle_closed_after = quiet.elapsed();
    assert!(
        matches!(kept_end, Ok(0))
            || kept_end
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "an idle kept-alive connection is closed, not answered or left open: {kept_end:?} after {idle_closed_after:?}"
    );
    let (drip_closed_after, drip_bytes) = drip
        .join()
        .unwrap()
        .expect("the dripping client is cut off");
    for (what, after) in [
        ("the idle kept-alive connection", idle_closed_after),
        ("the dripping client", drip_closed_after),
    ] {
        assert!(
            after >= TIMEOUT - Duration::from_millis(500)
                && after <= TIMEOUT + Duration::from_secs(2),
            "{what} was closed after {after:?}, not after the {TIMEOUT:?} header timeout"
        );
    }

    // The flood: many connections that send part of a head, then nothing.
    let flood = Instant::now();
    let stalled: Vec<TcpStream> = (0..STALLED)
        .map(|i| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(
                stream,
                "GET /api/v1/kinds HTTP/1.1\r\nHost: localhost\r\nX-Stalled: {i}"
            )
            .unwrap();
            stream
        })
        .collect();
    let opened_in = flood.elapsed();

    // Normal requests while it hangs: each within BOUND.
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        slowest = slowest
            .max(timed_call(port, "GET", "/readyz", None, 200, BOUND))
            .max(timed_call(port, "GET", "/api/v1/kinds", None, 200, BOUND))
            .max(timed_call(
                port,
                "POST",
                "/api/v1/resources",
                Some(&json!({"kind": "instance", "name": format!("during-flood-{i}"), "attributes": {"tenant": "acme", "flavor": "small"}})),
                201,
                BOUND,
            ));
    }
    let served_by = flood.elapsed();
    let still_stalled = stalled.iter().filter(|s| !is_closed(s)).count();
    assert!(
        still_stalled > 0 && served_by < TIMEOUT,
        "the normal requests were served while stalled clients held connections \
         ({still_stalled} still open {served_by:?} after the flood began)"
    );

    // Every stalled connection is closed by the server: the oldest to make
    // room, the rest at the header timeout.
    let mut closed_at: Vec<Option<Duration>> = vec![None; STALLED];
    while closed_at.iter().any(Option::is_none)
        && flood.elapsed() < TIMEOUT + opened_in + Duration::from_secs(3)
    {
        for (stream, at) in stalled.iter().zip(closed_at.iter_mut()) {
            if at.is_none() && is_closed(stream) {
                *at = Some(flood.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let open = closed_at.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        open,
        0,
        "{open} stalled connections still open {:?} after the flood began",
        flood.elapsed()
    );
    let closed_at: Vec<Duration> = closed_at.into_iter().flatten().collect();
    let timed_out = closed_at
        .iter()
        .filter(|at| **at >= TIMEOUT - Duration::from_millis(500))
        .count();
    let last = closed_at.iter().max().copied().unwrap_or_default();
    assert!(
        timed_out > 0,
        "some stalled connections lasted until the header timeout"
    );

    timed_call(port, "GET", "/readyz", None, 200, BOUND);
    let mut scrape = TcpStream::connect(("127.0.0.1", port)).unwrap();
    scrape.set_read_timeout(Some(BOUND)).unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    scrape.read_to_string(&mut text).unwrap();
    let evicted = metric(
        &text,
        "executord_http_connections_closed_total{reason=\"evicted\"}",
    );
    let timeouts = metric(
        &text,
        "executord_http_connections_closed_total{reason=\"header_timeout\"}",
    );
    assert!(
        evicted >= 1.0 && timeouts >= 3.0 && evicted + timeouts >= (STALLED + 2) as f64,
        "the server counts each connection it closed: {evicted} evicted, {timeouts} timed out"
    );
    eprintln!(
        "crash: slow loris (cap {CAP}, header timeout {}): an idle kept-alive connection closed after {}, \
         a client dripping a byte per 200 ms cut off after {} ({drip_bytes} bytes); {STALLED} stalled connections \
         opened in {:.0} ms, 15 normal requests meanwhile, slowest {:.0} ms, all served {} into the flood with \
         {still_stalled} stalled still open; {} stalled closed by the timeout, the rest evicted; the last closed {} in; \
         the server counted {evicted} evictions and {timeouts} header timeouts",
        secs(TIMEOUT),
        secs(idle_closed_after),
        secs(drip_closed_after),
        opened_in.as_secs_f64() * 1000.0,
        slowest.as_secs_f64() * 1000.0,
        secs(served_by),
        timed_out,
        secs(last),
    );
}

#[test]
fn over_long_uris_and_over_large_heads_get_414_and_431_problem_json() {
    let h = Harness::new("heads");
    let api = h.api("api");
    let port = api.port;
    let get = |target: &str, fields: &str| {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{fields}\r\n"
        );
        try_raw(port, request.as_bytes(), Duration::from_secs(10))
    };
    let fields = |n: usize, size: usize| -> String {
        (0..n)
            .map(|i| format!("X-H{i}: {}\r\n", "v".repeat(size)))
            .collect()
    };

    // Just within the limits: an 8000-byte target and 90 fields, 63 KB in all.
    let within = get(
        &format!("/readyz?pad={}", "a".repeat(8000)),
        &fields(90, 600),
    )
    .unwrap();
    assert_eq!(within.status, 200, "{}", within.head);

    let cases = [
        (
            "a 9 KiB target",
            get(&format!("/readyz?pad={}", "a".repeat(9 * 1024)), ""),
            414,
        ),
        ("120 header fields", get("/readyz", &fields(120, 8)), 431),
        (
            "a 70 KiB header field",
            get("/readyz", &fields(1, 70 * 1024)),
            431,
        ),
    ];
    for (what, reply, status) in cases {
        let reply = reply.unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        assert_eq!(reply.status, status, "{what}: {}", reply.head);
        assert!(
            reply
                .head
                .to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{what}: {}",
            reply.head
        );
        assert_eq!(reply.body["status"], status, "{what}: {}", reply.body);
        assert!(reply.body["detail"].is_string(), "{what}: {}", reply.body);
    }

    // Beyond hyper's own limits, or unparseable: hyper answers, with no body.
    let bare = [
        (
            "a malformed request line",
            try_raw(port, b"GET /a b HTTP/1.1\r\n\r\n", Duration::from_secs(10)),
        ),
        ("300 header fields", get("/readyz", &fields(300, 8))),
        (
            "a 200 KiB header field",
            get("/readyz", &fields(1, 200 * 1024)),
        ),
    ];
    let bare: Vec<String> = bare
        .into_iter()
        .map(|(what, reply)| match reply {
            Ok(reply) => format!("{what}: {} with {}", reply.status, reply.body),
            Err(e) => format!("{what}: {e}"),
        })
        .collect();
    assert!(api.call("GET", "/readyz", None).status == 200);
    eprintln!(
        "crash: request heads: a 9 KiB target 414, 120 fields 431, a 70 KiB field 431, each \
         problem+json; hyper's own answers: {}",
        bare.join("; ")
    );
}

/// A pooled connection that the database closed while it sat idle (a
/// restart, an administrator, an idle timeout) is found broken before it is
/// used: the pool pings a connection idle for a second or more. The requests
/// after it are answered, not failed.
#[test]
fn connections_the_database_closed_while_idle_are_replaced_before_use() {
    let h = Harness::new("idle-closed");
    let api = h.api("api");
    let list = |when: &str| {
        for _ in 0..8 {
            let reply = try_http(
                api.port,
                "GET",
                "/api/v1/resources",
                None,
                Duration::from_secs(10),
            )
            .unwrap();
            assert_eq!(reply.status, 200, "{when}: {}", reply.body);
        }
    };
    list("before");
    let closed = h.count(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'executord' AND query NOT ILIKE '%LISTEN%'",
    );
    assert!(closed >= 1, "the API holds no pooled connection to close");
    std::thread::sleep(Duration::from_millis(1500));
    list(&format!("after {closed} connections were closed"));
}
