//! The engine workloads, on the library directly: W1 (drain), W2 (idle
//! latency) and W4 (chain overhead).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use chrono::{DateTime, Utc};
use executord::domain::Queue;
use executord::executor::{Create, Executor};
use serde_json::json;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::env::Env;
use crate::stats::{Latency, Metrics};

/// W1: queue `ops` single-step operations with the runner stopped, then start it.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct W1Args {
    /// Single-step operations queued before the runner starts.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) ops: usize,
    /// Finished operations (with their task and resource) put in the tables first.
    #[arg(long, default_value_t = 0)]
    pub(crate) history: i64,
    /// Concurrent connections queueing the work.
    #[arg(long, default_value_t = 4)]
    pub(crate) producers: usize,
    /// Operations per queueing transaction.
    #[arg(long, default_value_t = 250)]
    pub(crate) batch: usize,
}

/// W2: one single-step operation every `interval_ms` on an idle runner.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct W2Args {
    /// Operations measured per run.
    #[arg(long, default_value_t = 500)]
    pub(crate) ops: usize,
    /// Operations committed (and not measured) before them.
    #[arg(long, default_value_t = 20)]
    pub(crate) warmup: usize,
    /// Time between commits.
    #[arg(long, default_value_t = 10)]
    pub(crate) interval_ms: u64,
}

/// W4: chains of `steps` no-op steps, one after the other.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct W4Args {
    /// Chains measured per run.
    #[arg(long, default_value_t = 200)]
    pub(crate) ops: usize,
    /// Chains run (and not measured) before them.
    #[arg(long, default_value_t = 10)]
    pub(crate) warmup: usize,
    /// Steps per chain, the executor's begin_creating included.
    #[arg(long, default_value_t = 10)]
    pub(crate) steps: usize,
    /// Finished operations (with their task and resource) put in the tables
    /// first, so the planner sees tables of a service's size rather than
    /// freshly emptied ones.
    #[arg(long, default_value_t = 0)]
    pub(crate) history: i64,
    /// With --history: fill the history once, and before each later run
    /// delete only what the runs before it made (their chains' operations,
    /// tasks, events and resources), so a large history is not rebuilt per run.
    #[arg(long)]
    pub(crate) keep_history: bool,
}

/// A running runner and the switch that stops it.
struct Running {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl Running {
    /// Starts a runner on every queue, as `executord serve` does.
    fn start(env: &Env) -> Self {
        let (stop, stopping) = watch::channel(false);
        let handle = tokio::spawn(env.runner().run(Queue::ALL.to_vec(), stopping));
        Self { stop, handle }
    }

    async fn stop(self) -> Result<()> {
        self.stop.send(true).ok();
        self.handle.await.context("the runner panicked")
    }
}

/// Creates one operation of `kind` in its own transaction on `conn`; its id
/// and the client's clock right after COMMIT returned.
async fn create_one(
    env: &Env,
    conn: &mut sqlx::PgConnection,
    kind: &str,
    name: &str,
) -> Result<(Uuid, DateTime<Utc>)> {
    let create = Create::parse(&env.catalog, kind, name, json!({}))?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let applied = create.apply(&mut tx).await?;
    tx.commit().await?;
    Ok((applied.operation.id, Utc::now()))
}

/// A timestamp column that may be NULL.
type Stamp = Option<DateTime<Utc>>;

fn ms(later: DateTime<Utc>, earlier: DateTime<Utc>) -> f64 {
    (later - earlier)
        .num_microseconds()
        .map_or(f64::NAN, |us| us as f64 / 1000.0)
}

/// Queues `ops` operations of `kind` from `producers` connections in
/// transactions of `batch`.
async fn enqueue(env: &Env, kind: &str, args: &W1Args, tag: &str) -> Result<()> {
    let mut producers = tokio::task::JoinSet::new();
    let per = args.ops.div_ceil(args.producers.max(1));
    for p in 0..args.producers.max(1) {
        let first = p * per;
        let last = ((p + 1) * per).min(args.ops);
        let pool = env.client.clone();
        let catalog = env.catalog.clone();
        let kind = kind.to_owned();
        let batch = args.batch.max(1);
        let tag = tag.to_owned();
        producers.spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut i = first;
            while i < last {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                for n in i..(i + batch).min(last) {
                    let create = Create::parse(&catalog, &kind, &format!("{tag}-{n}"), json!({}))?;
                    create.apply(&mut tx).await?;
                }
                tx.commit().await?;
                i += batch;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = producers.join_next().await {
        done.context("a producer panicked")??;
    }
    Ok(())
}

/// One W1 run.
pub(crate) async fn w1(env: &Env, args: &W1Args) -> Result<Metrics> {
    env.reset().await?;
    if args.history > 0 {
        let t = tokio::time::Instant::now();
        env.prefill_history(args.history).await?;
        eprintln!(
            "  history: {} finished operations in {:.1} s",
            args.history,
            t.elapsed().as_secs_f64()
        );
    }
    let t = tokio::time::Instant::now();
    enqueue(env, "noop1", args, "w1").await?;
    let enqueue_s = t.elapsed().as_secs_f64();
    // No checkpoint owed from queueing, and fresh statistics, as in W1h.
    env.settle().await?;
    let load = env.conditions();
    let probe = env.probe().await?;
    let mut finishes = env.events.subscribe_finished();
    let t0 = env.db_now().await?;
    let wall = tokio::time::Instant::now();
    let runner = Running::start(env);
    // Counted from the LISTEN feed, so the bench adds no queries while the
    // runner drains; a quiet second means a look at the tables instead.
    let mut seen = 0;
    while seen < args.ops {
        match tokio::time::timeout(Duration::from_secs(1), finishes.recv()).await {
            Ok(Ok(_)) => seen += 1,
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                seen += usize::try_from(n).unwrap_or(usize::MAX);
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => bail!("the LISTEN feed stopped"),
            Err(_) if !env.busy().await? => break,
            Err(_) => {}
        }
        ensure!(
            wall.elapsed() < Duration::from_secs(1800),
            "W1 still draining after 30 minutes"
        );
    }
    let wall_s = wall.elapsed().as_secs_f64();
    env.wait_drained(Duration::from_millis(20), Duration::from_secs(60))
        .await?;
    let mut costs = Metrics::default();
    let report = probe
        .finish(env, args.ops as f64, "task", &mut costs)
        .await?;
    runner.stop().await?;
    let (tasks, last): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT count(*), max(finished_at) FROM tasks WHERE finished_at >= $1 AND state = 'succeeded'",
    )
    .bind(t0)
    .fetch_one(&env.client)
    .await?;
    let succeeded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM operations WHERE finished_at >= $1 AND state = 'succeeded'",
    )
    .bind(t0)
    .fetch_one(&env.client)
    .await?;
    ensure!(
        tasks as usize == args.ops && succeeded as usize == args.ops,
        "expected {} succeeded tasks and operations, found {tasks} and {succeeded}",
        args.ops
    );
    let last = last.context("no task finished")?;
    let drain_s = ms(last, t0) / 1000.0;
    let mut m = Metrics::default();
    m.add("drain rate (DB clock)", "tasks/s", tasks as f64 / drain_s);
    m.add(
        "drain rate (wall, to the last finish NOTIFY)",
        "tasks/s",
        tasks as f64 / wall_s,
    );
    m.add("drain time", "s", drain_s);
    m.add(
        "queueing rate (not a target)",
        "ops/s",
        args.ops as f64 / enqueue_s,
    );
    m.extend(costs);
    load.into_metrics(&mut m);
    eprintln!(
        "  {tasks} tasks in {drain_s:.2} s: {:.0} tasks/s (queued at {:.0} ops/s; {load})",
        tasks as f64 / drain_s,
        args.ops as f64 / enqueue_s
    );
    eprint!("{report}");
    Ok(m)
}

/// One W2 run.
pub(crate) async fn w2(env: &Env, args: &W2Args) -> Result<Metrics> {
    env.reset().await?;
    let runner = Running::start(env);
    // Let the runner reach its idle wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut conn = env.client.acquire().await?;
    let mut ticks = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut committed = Vec::with_capacity(args.ops);
    let load = env.conditions();
    let mut probe = None;
    for i in 0..args.warmup + args.ops {
        if i == args.warmup {
            probe = Some(env.probe().await?);
        }
        ticks.tick().await;
        let (id, at) = create_one(env, &mut conn, "noop1", &format!("w2-{i}")).await?;
        if i >= args.warmup {
            committed.push((id, at));
        }
    }
    drop(conn);
    env.wait_drained(Duration::from_millis(20), Duration::from_secs(60))
        .await?;
    let probe = probe.context("no operation measured")?;
    let mut m = Metrics::default();
    let report = probe
        .finish(
            env,
            args.ops as f64,
            "operation (incl. creating it)",
            &mut m,
        )
        .await?;
    runner.stop().await?;
    let ids: Vec<Uuid> = committed.iter().map(|(id, _)| *id).collect();
    let rows: Vec<(Uuid, Stamp, Stamp)> = sqlx::query_as(
        "SELECT o.id, t.started_at, o.finished_at FROM operations o
         JOIN tasks t ON t.operation_id = o.id AND t.position = 0
         WHERE o.id = ANY($1) AND o.state = 'succeeded'",
    )
    .bind(&ids)
    .fetch_all(&env.client)
    .await?;
    ensure!(
        rows.len() == ids.len(),
        "{} of {} operations succeeded",
        rows.len(),
        ids.len()
    );
    let at: HashMap<Uuid, DateTime<Utc>> = committed.into_iter().collect();
    let mut start = Vec::with_capacity(rows.len());
    let mut done = Vec::with_capacity(rows.len());
    for (id, started, finished) in rows {
        let commit = at[&id];
        start.push(ms(started.context("started_at missing")?, commit));
        done.push(ms(finished.context("finished_at missing")?, commit));
    }
    let start = Latency::of(start);
    let done = Latency::of(done);
    eprintln!("  commit → first step start: {} ({load})", start.line("ms"));
    let mut latencies = Metrics::default();
    start.into_metrics("commit → step start", "ms", &mut latencies);
    done.into_metrics("commit → operation finished_at", "ms", &mut latencies);
    latencies.extend(m);
    load.into_metrics(&mut latencies);
    eprint!("{report}");
    Ok(latencies)
}

/// Waits for the LISTEN feed to announce `id` finished; when it announced it.
async fn finished(
    events: &mut broadcast::Receiver<Uuid>,
    id: Uuid,
    limit: Duration,
) -> Result<DateTime<Utc>> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(done)) if done == id => return Ok(Utc::now()),
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => bail!("the LISTEN feed stopped"),
            Err(_) => bail!("operation {id} not announced finished within {limit:?}"),
        }
    }
}

/// One W4 run.
pub(crate) async fn w4(env: &Env, args: &W4Args) -> Result<Metrics> {
    let kind = format!("noop{}", args.steps);
    if args.history > 0 && args.keep_history && env.history_len().await? >= args.history {
        env.forget_kind(&kind).await?;
        env.settle().await?;
    } else {
        env.reset().await?;
        if args.history > 0 {
            env.prefill_history(args.history).await?;
            env.settle().await?;
        }
    }
    ensure!(
        env.catalog.kind(&kind).is_some(),
        "no kind {kind} in the bench catalog"
    );
    let runner = Running::start(env);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut conn = env.client.acquire().await?;
    let mut committed = Vec::with_capacity(args.ops);
    let load = env.conditions();
    let mut probe = None;
    for i in 0..args.warmup + args.ops {
        if i == args.warmup {
            probe = Some(env.probe().await?);
        }
        let mut events = env.events.subscribe_finished();
        let (id, at) = create_one(env, &mut conn, &kind, &format!("w4-{i}")).await?;
        let seen = finished(&mut events, id, Duration::from_secs(30)).await?;
        if i >= args.warmup {
            committed.push((id, at, seen));
        }
    }
    drop(conn);
    let probe = probe.context("no chain measured")?;
    let mut costs = Metrics::default();
    let report = probe
        .finish(env, (args.ops * args.steps) as f64, "step", &mut costs)
        .await?;
    runner.stop().await?;
    let ids: Vec<Uuid> = committed.iter().map(|(id, _, _)| *id).collect();
    let rows: Vec<(Uuid, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT id, finished_at FROM operations WHERE id = ANY($1) AND state = 'succeeded'",
    )
    .bind(&ids)
    .fetch_all(&env.client)
    .await?;
    ensure!(
        rows.len() == ids.len(),
        "{} of {} chains succeeded",
        rows.len(),
        ids.len()
    );
    let finished_at: HashMap<Uuid, Option<DateTime<Utc>>> = rows.into_iter().collect();
    let mut done = Vec::with_capacity(ids.len());
    let mut seen = Vec::with_capacity(ids.len());
    for (id, at, observed) in committed {
        let end = finished_at
            .get(&id)
            .copied()
            .flatten()
            .context("finished_at missing")?;
        done.push(ms(end, at));
        seen.push(ms(observed, at));
    }
    let done = Latency::of(done);
    let seen = Latency::of(seen);
    eprintln!("  commit → last step done: {} ({load})", done.line("ms"));
    let mut m = Metrics::default();
    done.into_metrics("commit → finished_at", "ms", &mut m);
    seen.into_metrics("commit → finish NOTIFY seen", "ms", &mut m);
    m.add("per step (p50 / steps)", "ms", done.p50 / args.steps as f64);
    m.extend(costs);
    load.into_metrics(&mut m);
    eprint!("{report}");
    Ok(m)
}
