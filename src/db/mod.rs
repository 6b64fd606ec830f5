//! All SQL lives here, one module per table. Handlers and the runner call
//! these functions; nothing else writes SQL.

pub mod events;
pub mod idempotency;
pub mod jobs;
pub mod operations;
pub mod reconcile;
pub mod resources;
pub mod stats;
pub mod system;
pub mod tasks;
pub mod throttle;
pub mod tokens;
pub mod webhooks;

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Postgres};

use crate::domain::Queue;

/// The channel that announces ready tasks; the payload is the queue name,
/// optionally after the sender's origin and a space.
pub const TASKS_CHANNEL: &str = "executord_tasks";
/// The channel that announces finished operations; the payload is their ids,
/// separated by commas, optionally after the sender's origin and a space.
pub const OPERATIONS_CHANNEL: &str = "executord_operations";

/// Longest list of ids in one notification (PostgreSQL allows 8000 bytes).
const IDS_PER_NOTIFICATION: usize = 150;

/// The channel that asks runners to stop a task now; the payload is its id.
pub const CANCEL_CHANNEL: &str = "executord_cancel";

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A connection idle for longer than this is pinged before it is handed out.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Opens a pool of at most `max_connections` to `url`.
///
/// A connection handed out is checked with a ping only if it sat idle for a
/// second or more; the pool's default pings before every hand-out, a round
/// trip each (sqlx also pings every connection given back, in a task of its
/// own, which cannot be turned off; [`Held`] saves both). One that broke
/// meanwhile fails its statement, and the pool drops it: a request answers
/// 503, a runner's claim is made again, an outcome's lease expires and its
/// step runs again, as after any lost connection.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse().context("parsing the database URL")?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options.application_name("executord"))
        .await
        .context("connecting to PostgreSQL")
}

/// A connection that one loop (the runner's recorder, a queue's claims)
/// keeps between its statements while it is busy. PostgreSQL prepares and
/// plans a statement per connection: run on whichever connection of the
/// pool is free, each of the loop's statements is planned on every one of
/// them in turn (five custom plans each before a generic one, and again
/// after every `ANALYZE`); kept on one, about once.
#[derive(Debug)]
pub struct Held {
    pool: PgPool,
    conn: Option<PoolConnection<Postgres>>,
}

impl Held {
    /// Nothing held yet; connections come from `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool, conn: None }
    }

    /// The held connection, taken from the pool first if none is held.
    pub async fn get(&mut self) -> sqlx::Result<&mut PgConnection> {
        if self.conn.is_none() {
            self.conn = Some(self.pool.acquire().await?);
        }
        self.conn.as_deref_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// Gives the connection back to the pool: when the loop goes idle, or
    /// after an error (the next [`Held::get`] takes a checked one).
    pub fn release(&mut self) {
        self.conn = None;
    }
}

/// How long [`Kept`] keeps a connection nobody asked for before it goes
/// back to the pool.
const KEEP_IDLE: Duration = Duration::from_millis(500);

/// How often [`Kept`] looks at what it keeps.
const SWEEP: Duration = Duration::from_millis(50);

/// How long [`Kept`] may keep a connection out of the pool, however busy:
/// then it goes back, so the pool checks it and closes it when it is older
/// than the pool's `max_lifetime`.
const TURNOVER: Duration = Duration::from_secs(60);

/// Connections the API keeps between its requests. sqlx pings every
/// connection given back to its pool (a round trip, in a task of its own,
/// which cannot be turned off): for a GET, whose answer is one statement,
/// that doubled the round trips. A request takes a kept connection if there
/// is one, else one from the pool; when it is done the connection is kept
/// for the next request, without the ping, unless
///
/// - it may be in an unknown state: a transaction left open or a rollback
///   still to send (a request dropped mid-statement, by a client that went
///   away); it goes back to the pool, whose ping settles it;
/// - as many as it may keep are kept already, or the pool has no idle connection
///   left (someone else may be waiting for one): it goes back to the pool.
///
/// A connection the server closed (a restart, a terminated backend) cannot
/// be told from a good one without a round trip; the API gives all it keeps
/// back to the pool, which checks them, after any request that failed with
/// a 5xx ([`Kept::give_all_back`]), so such a connection fails one request,
/// as it would from the pool.
///
/// A kept connection unused for half a second goes back to the pool, so an
/// idle API holds none; all go back within 50 ms when the pool has none
/// idle left, so a runner waiting for one is not kept waiting by the API;
/// and each goes back a minute after it left the pool, however busy the
/// API, so the pool still checks it and retires it when it is too old.
/// Statements are prepared and planned per connection, so the requests'
/// statements are also planned on fewer connections.
#[derive(Debug, Clone)]
pub struct Kept {
    inner: Arc<KeptInner>,
}

#[derive(Debug)]
struct KeptInner {
    pool: PgPool,
    most: usize,
    /// How long a connection may stay out of the pool.
    turnover: Duration,
    /// The kept connections, most recently kept last.
    idle: Mutex<Vec<Idle>>,
}

/// A kept connection.
#[derive(Debug)]
struct Idle {
    conn: PoolConnection<Postgres>,
    /// Since when it is kept.
    since: Instant,
    /// When it left the pool.
    out: Instant,
}

impl Kept {
    /// Keeps at most `most` connections of `pool`. Inside a Tokio runtime,
    /// a task gives back connections kept too long (it ends with the last
    /// clone); outside one, they go back only as they are taken again.
    pub fn new(pool: PgPool, most: usize) -> Self {
        Self::with_turnover(pool, most, TURNOVER)
    }

    /// As [`Kept::new`], a connection going back to the pool at the latest
    /// `turnover` after it left it.
    pub fn with_turnover(pool: PgPool, most: usize, turnover: Duration) -> Self {
        let inner = Arc::new(KeptInner {
            pool,
            most,
            turnover,
            idle: Mutex::new(Vec::new()),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&inner)));
        }
        Self { inner }
    }

    /// Gives every kept connection back to the pool, which checks each
    /// (pings it) and drops those that are broken. For after a request that
    /// failed: a connection the server closed looks like any other until it
    /// is used, so it would be kept and fail the next request too.
    pub fn give_all_back(&self) {
        self.inner.expire(true);
    }

    /// How many connections are kept now.
    pub fn kept(&self) -> usize {
        self.inner.idle.lock().map_or(0, |idle| idle.len())
    }

    /// A connection for one request: the one kept last, or one from the pool.
    pub async fn acquire(&self) -> sqlx::Result<Lent> {
        let kept = self.inner.idle.lock().ok().and_then(|mut idle| idle.pop());
        let (conn, out) = match kept {
            Some(kept) => (kept.conn, kept.out),
            None => (self.inner.pool.acquire().await?, Instant::now()),
        };
        Ok(Lent {
            conn: Some(conn),
            out,
            kept: Arc::clone(&self.inner),
        })
    }
}

impl KeptInner {
    /// Keeps `conn`, out of the pool since `out`, if it is clean, not due
    /// back and there is room; else it goes back to the pool.
    fn give_back(&self, conn: PoolConnection<Postgres>, out: Instant) {
        if conn.is_in_transaction()
            || conn.should_flush()
            || out.elapsed() >= self.turnover
            || self.pool_is_exhausted()
        {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.len() < self.most {
            idle.push(Idle {
                conn,
                since: Instant::now(),
                out,
            });
        }
    }

    /// Whether the pool has no idle connection and may open no other:
    /// someone may be waiting for one.
    fn pool_is_exhausted(&self) -> bool {
        self.pool.num_idle() == 0 && self.pool.size() >= self.pool.options().get_max_connections()
    }

    /// Gives back to the pool the connections kept longer than `KEEP_IDLE`,
    /// or all of them when asked to or when the pool is exhausted.
    fn expire(&self, all: bool) {
        let all = all || self.pool_is_exhausted();
        let stale: Vec<_> = match self.idle.lock() {
            Ok(mut idle) => {
                let stale = if all {
                    idle.len()
                } else {
                    idle.partition_point(|kept| kept.since.elapsed() >= KEEP_IDLE)
                };
                idle.drain(..stale).collect()
            }
            Err(_) => Vec::new(),
        };
        // Dropped outside the lock: each starts its return to the pool.
        drop(stale);
    }
}

async fn sweep(inner: Weak<KeptInner>) {
    loop {
        tokio::time::sleep(SWEEP).await;
        match inner.upgrade() {
            Some(inner) => inner.expire(false),
            None => return,
        }
    }
}

/// A connection lent to one request by [`Kept`]; given back when dropped.
#[derive(Debug)]
pub struct Lent {
    conn: Option<PoolConnection<Postgres>>,
    /// When the connection left the pool.
    out: Instant,
    kept: Arc<KeptInner>,
}

impl std::ops::Deref for Lent {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        // Some until dropped.
        self.conn
            .as_deref()
            .unwrap_or_else(|| unreachable!("a lent connection is taken only on drop"))
    }
}

impl std::ops::DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("a lent connection is taken only on drop"))
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.kept.give_back(conn, self.out);
        }
    }
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")
}

/// Whether the database answers and every migration is applied.
pub async fn ready(pool: &PgPool) -> anyhow::Result<()> {
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await?;
    let expected = MIGRATOR.iter().count() as i64;
    anyhow::ensure!(
        applied >= expected,
        "{applied} of {expected} migrations applied"
    );
    Ok(())
}

/// Announces, after the fact, that `queues` have ready tasks and that
/// `finished` operations ended, from `origin` (so its own listener can skip
/// what the process already knows). Its own short transaction does not wait
/// for its commit to be flushed: a notification is a hint, and one lost in a
/// crash costs a poll interval, never correctness. Keeping NOTIFY out of the
/// transactions that change state matters: at commit PostgreSQL serialises
/// every notifying transaction, flush included, behind one lock.
pub async fn announce(
    pool: &PgPool,
    origin: &str,
    queues: &[Queue],
    finished: &[uuid::Uuid],
) -> sqlx::Result<()> {
    let mut channels = Vec::new();
    let mut payloads = Vec::new();
    for queue in queues {
        channels.push(TASKS_CHANNEL);
        payloads.push(format!("{origin} {}", queue.as_str()));
    }
    for ids in finished.chunks(IDS_PER_NOTIFICATION) {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        channels.push(OPERATIONS_CHANNEL);
        payloads.push(format!("{origin} {}", ids.join(",")));
    }
    if channels.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT pg_notify(n.channel, n.payload)
         FROM (SELECT set_config('synchronous_commit', 'off', true)) AS quick,
              UNNEST($1::text[], $2::text[]) AS n(channel, payload)",
    )
    .bind(channels)
    .bind(payloads)
    .execute(pool)
    .await?;
    Ok(())
}

/// Announces, on commit, that `queue` has ready tasks.
pub async fn notify_ready(conn: &mut PgConnection, queue: Queue) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(TASKS_CHANNEL)
        .bind(queue.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// Announces, on commit, that an operation finished.
pub async fn notify_finished(
    conn: &mut PgConnection,
    operation_id: uuid::Uuid,
) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(OPERATIONS_CHANNEL)
        .bind(operation_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Asks, on commit, whichever runner holds `task_id` to stop it.
pub async fn notify_cancel(conn: &mut PgConnection, task_id: uuid::Uuid) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CANCEL_CHANNEL)
        .bind(task_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}
