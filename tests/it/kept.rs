//! The connections the API keeps between requests (`db::Kept`): reused
//! without the pool's round trip, never handed on in an unknown state or
//! after the server closed it, and never held while someone else waits for one.

use std::time::Duration;

use executord::db::Kept;

use crate::support::app::TestApp;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

async fn backend_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_request_s_connection_is_kept_for_the_next_and_given_back_when_idle(pool: PgPool) {
    let kept = Kept::new(pool.clone(), 2);
    let first = backend_pid(&mut kept.acquire().await.unwrap()).await;
    assert_eq!(kept.kept(), 1);
    let second = backend_pid(&mut kept.acquire().await.unwrap()).await;
    assert_eq!(first, second, "the kept connection is the one lent next");

    let (mut a, mut b, mut c) = (
        kept.acquire().await.unwrap(),
        kept.acquire().await.unwrap(),
        kept.acquire().await.unwrap(),
    );
    for conn in [&mut a, &mut b, &mut c] {
        backend_pid(conn).await;
    }
    drop((a, b, c));
    assert_eq!(kept.kept(), 2, "at most `most` are kept");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(kept.kept(), 0, "unused, they go back to the pool");
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_busy_api_still_gives_each_connection_back_to_the_pool_in_time(pool: PgPool) {
    let kept = Kept::with_turnover(pool.clone(), 2, Duration::from_millis(300));
    let mut conn = kept.acquire().await.unwrap();
    // Its turnover counts from here (it left the pool just before), not
    // from before a connect that a loaded machine may make slow.
    let started = std::time::Instant::now();
    let first = backend_pid(&mut conn).await;
    drop(conn);
    // Busy: never unused for long (and well within its turnover, however
    // slowly a loaded machine runs each round).
    while started.elapsed() < Duration::from_millis(150) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(backend_pid(&mut kept.acquire().await.unwrap()).await, first);
        assert_eq!(kept.kept(), 1, "kept while it is young");
    }
    tokio::time::sleep(Duration::from_millis(320).saturating_sub(started.elapsed())).await;
    assert_eq!(backend_pid(&mut kept.acquire().await.unwrap()).await, first);
    assert_eq!(kept.kept(), 0, "past its turnover it went back to the pool");
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_connection_left_in_a_transaction_is_not_kept(pool: PgPool) {
    let kept = Kept::new(pool.clone(), 2);
    {
        let mut conn = kept.acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("CREATE TABLE left_open (x int)")
            .execute(&mut *tx)
            .await
            .unwrap();
        // Dropped without commit or rollback: sqlx queues the rollback
        // for the connection's next use.
    }
    assert_eq!(kept.kept(), 0);
    for _ in 0..3 {
        let mut conn = kept.acquire().await.unwrap();
        let seen: Option<String> = sqlx::query_scalar("SELECT to_regclass('left_open')::text")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(
            seen, None,
            "a request never runs inside another's transaction"
        );
    }
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_request_dropped_mid_statement_does_not_pass_its_answer_to_the_next(pool: PgPool) {
    let kept = Kept::new(pool.clone(), 2);
    {
        let mut conn = kept.acquire().await.unwrap();
        let slow =
            sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_sleep(0.3)").fetch_one(&mut *conn);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), slow)
                .await
                .is_err()
        );
    }
    let mut conn = kept.acquire().await.unwrap();
    let answer: i32 = sqlx::query_scalar("SELECT 2")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(answer, 2);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_connection_goes_back_to_the_pool_when_someone_waits_for_one(pool: PgPool) {
    let small = two_connections(&pool).await;
    let kept = Kept::new(small.clone(), 2);
    let (mut a, mut b) = (kept.acquire().await.unwrap(), kept.acquire().await.unwrap());
    backend_pid(&mut a).await;
    backend_pid(&mut b).await;
    let waiter = tokio::spawn({
        let small = small.clone();
        async move { small.acquire().await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(a);
    tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("the pool's waiter gets the connection the request gave back")
        .unwrap()
        .unwrap();
    assert_eq!(kept.kept(), 0);
    drop(b);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn kept_connections_go_back_soon_when_the_pool_runs_out(pool: PgPool) {
    let small = two_connections(&pool).await;
    let kept = Kept::new(small.clone(), 2);
    backend_pid(&mut kept.acquire().await.unwrap()).await;
    assert_eq!(kept.kept(), 1);
    // The runner takes the pool's other connection, then wants one more.
    let _held = small.acquire().await.unwrap();
    let started = std::time::Instant::now();
    small.acquire().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "the kept connection went back long before it would have expired ({:?})",
        started.elapsed()
    );
    assert_eq!(kept.kept(), 0);
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn a_kept_connection_the_server_closed_is_dropped_once_given_back(pool: PgPool) {
    let kept = Kept::new(pool.clone(), 2);
    let pid = backend_pid(&mut kept.acquire().await.unwrap()).await;
    terminate(&pool, &[pid]).await;
    let failed = sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&mut *kept.acquire().await.unwrap())
        .await;
    assert!(failed.is_err(), "the closed connection was lent again");
    assert_eq!(kept.kept(), 1, "it cannot be told from a good one");
    kept.give_all_back();
    assert_eq!(kept.kept(), 0);
    let again = backend_pid(&mut kept.acquire().await.unwrap()).await;
    assert_ne!(again, pid, "the pool checked it and opened another");
}

#[sqlx::test(migrator = "executord::db::MIGRATOR")]
async fn after_the_server_closes_the_api_s_connections_one_request_fails_at_most(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let id = app.ok_instance("web-1").await;
    let path = format!("/api/v1/resources/{id}");
    assert_eq!(app.get(&path).await.status, 200);
    // Every connection to the test's database but the one that asks.
    let others: Vec<i32> = sqlx::query_scalar(
        "WITH others AS MATERIALIZED (
             SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
         )
         SELECT pid FROM others WHERE pg_terminate_backend(pid)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!others.is_empty());
    wait_until_gone(&pool, &others).await;
    let statuses = [
        app.get(&path).await.status,
        app.get(&path).await.status,
        app.get(&path).await.status,
        app.get(&path).await.status,
    ];
    assert!(
        matches!(statuses, [200 | 503, 200, 200, 200]),
        "the broken connection is not lent again: {statuses:?}"
    );
}

/// A pool of two connections to the test's database.
async fn two_connections(pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap()
}

/// Terminates the server processes `pids` and waits until they are gone.
async fn terminate(pool: &PgPool, pids: &[i32]) {
    sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int4[]) AS pid")
        .bind(pids)
        .execute(pool)
        .await
        .unwrap();
    wait_until_gone(pool, pids).await;
}

async fn wait_until_gone(pool: &PgPool, pids: &[i32]) {
    for _ in 0..100 {
        let alive: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind(pids)
                .fetch_one(pool)
                .await
                .unwrap();
        if alive == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the server processes {pids:?} did not end");
}
