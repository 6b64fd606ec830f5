//! The bench environment: the database (embedded with its durable defaults,
//! or `DATABASE_URL`), a catalog of no-op kinds, the LISTEN feed, runners,
//! and the helpers every workload shares (reset, history, counters, the
//! machine description, `pg_stat_statements`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use executord::backend::Backends;
use executord::backend::noop::{self, Noop};
use executord::catalog::Catalog;
use executord::embedded::EmbeddedPostgres;
use executord::events::Events;
use executord::runner::{Runner, RunnerConfig};
use executord::tasks::TaskContext;
use sqlx::PgPool;

/// What the engine workloads share.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct EnvArgs {
    /// Runs of each workload; the summary shows their median and min–max.
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
    /// Where the embedded PostgreSQL cluster lives (ignored with DATABASE_URL).
    /// Default: target/bench-pg, or target/bench-pg-profile with --profile.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Pool size of the runner (the service's `--db-connections`, 32 by
    /// default, is shared with its API).
    #[arg(long, default_value_t = 20)]
    pub(crate) db_connections: u32,
    /// Concurrent tasks of the regular queue (`RunnerConfig::default()`; the
    /// service's `--regular-concurrency` defaults to 16).
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Profile each run: load pg_stat_statements (restarting the embedded
    /// cluster once) and print the statements that took the most time, and
    /// sample what executord's connections wait on (pg_stat_activity).
    #[arg(long)]
    pub(crate) profile: bool,
    /// With DATABASE_URL: allow the bench to TRUNCATE executord's tables there.
    #[arg(long)]
    pub(crate) allow_truncate: bool,
}

/// The database, catalog and wake-ups, started once per bench process.
pub(crate) struct Env {
    /// The runner's pool (the LISTEN connection comes from it too, as in the service).
    pub(crate) pool: PgPool,
    /// The producers' and the measurements' own pool, so they never wait for the runner's.
    pub(crate) client: PgPool,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) events: Events,
    backends: Backends,
    embedded: Option<EmbeddedPostgres>,
    pub(crate) args: EnvArgs,
    pgss: bool,
    /// The embedded server's process, whose tree's CPU time is measured.
    postmaster: Option<u32>,
    /// Where the embedded cluster lives (its disk is probed), if embedded.
    data_dir: Option<PathBuf>,
}

/// The kinds the workloads create: `noop1` (only the `begin_creating`
/// step the executor adds) and `noop<steps>` (that step plus `steps - 1`
/// calls of the noop backend).
pub(crate) fn catalog_text(steps: usize) -> String {
    let mut text = String::from(
        "[kinds.noop1]\n\
         description = \"One step: begin_creating, recorded with the success hook in the claim that takes it.\"\n\
         backend = \"noop\"\n\
         schema = { type = \"object\" }\n\
         create = []\n",
    );
    if steps > 1 {
        let calls = vec!["{ type = \"backend_method\", method = \"noop\" }"; steps - 1].join(", ");
        text.push_str(&format!(
            "\n[kinds.noop{steps}]\n\
             description = \"begin_creating, then {} calls of noop.\"\n\
             backend = \"noop\"\n\
             schema = {{ type = \"object\" }}\n\
             create = [{calls}]\n",
            steps - 1
        ));
    }
    text
}

impl Env {
    /// Starts (or adopts) the database, migrates it, and starts the LISTEN feed.
    pub(crate) async fn start(args: EnvArgs, chain_steps: usize) -> Result<Self> {
        let url = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
        if url.is_some() && !args.allow_truncate {
            bail!(
                "DATABASE_URL is set: the bench TRUNCATEs executord's tables between runs; \
                 pass --allow-truncate if that database is yours to wipe"
            );
        }
        let data_dir = args.data_dir.clone().unwrap_or_else(|| {
            PathBuf::from(if args.profile {
                "target/bench-pg-profile"
            } else {
                "target/bench-pg"
            })
        });
        let (mut embedded, url) = match url {
            Some(url) => (None, url),
            None => {
                let pg = EmbeddedPostgres::start(&data_dir).await?;
                let url = pg.database_url();
                (Some(pg), url)
            }
        };
        let mut pgss = false;
        if args.profile {
            let pool = executord::db::connect(&url, 2).await?;
            let loaded: String = sqlx::query_scalar("SHOW shared_preload_libraries")
                .fetch_one(&pool)
                .await?;
            if !loaded.contains("pg_stat_statements") {
                match embedded.take() {
                    Some(pg) => {
                        sqlx::raw_sql(
                            "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
                        )
                        .execute(&pool)
                        .await?;
                        pool.close().await;
                        pg.stop().await?;
                        embedded = Some(EmbeddedPostgres::start(&data_dir).await?);
                    }
                    None => bail!(
                        "--profile: the server at DATABASE_URL does not preload pg_stat_statements"
                    ),
                }
            } else {
                pool.close().await;
            }
            pgss = true;
        }
        let pool = executord::db::connect(&url, args.db_connections).await?;
        // Named apart from the runner's connections ("executord"), so the
        // wait sampler sees only the engine's.
        let client = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect_with(
                url.parse::<sqlx::postgres::PgConnectOptions>()?
                    .application_name("executord-bench"),
            )
            .await
            .context("connecting the bench's own pool")?;
        executord::db::migrate(&pool).await?;
        if pgss {
            sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .execute(&client)
                .await
                .context("creating the pg_stat_statements extension")?;
        }
        let backends = Backends::new().with(noop::NAME, Arc::new(Noop));
        let catalog = Arc::new(Catalog::parse(&catalog_text(chain_steps), &backends)?);
        let events = Events::new();
        tokio::spawn(events.clone().listen(pool.clone()));
        let embedded_dir = embedded.as_ref().map(|_| data_dir.clone());
        let postmaster = embedded.as_ref().and_then(|_| {
            std::fs::read_to_string(data_dir.join("pg").join("postmaster.pid"))
                .ok()
                .and_then(|pid| pid.lines().next().and_then(|l| l.trim().parse().ok()))
        });
        Ok(Self {
            pool,
            client,
            catalog,
            events,
            backends,
            embedded,
            args,
            pgss,
            postmaster,
            data_dir: embedded_dir,
        })
    }

    /// A runner with the library's defaults but `--concurrency` regular slots.
    pub(crate) fn runner(&self) -> Runner {
        let ctx = TaskContext {
            pool: self.pool.clone(),
            catalog: self.catalog.clone(),
            backends: self.backends.clone(),
            backend_timeout: Duration::from_secs(60),
            retry_base: Duration::from_millis(1000),
        };
        let config = RunnerConfig {
            regular: self.args.concurrency,
            ..RunnerConfig::default()
        };
        Runner::new(ctx, config, self.events.clone())
    }

    /// Empties executord's tables and checkpoints, so every run starts alike.
    /// The emptied tables are not vacuumed or analyzed: TRUNCATE leaves their
    /// statistics unknown, as on a fresh install, and the planner then goes by
    /// their real size. Analyzed while empty, they would be planned as empty
    /// for the whole run, long after they had filled (sequential scans and
    /// hash joins where a service's tables get index lookups).
    pub(crate) async fn reset(&self) -> Result<()> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT quote_ident(tablename) FROM pg_tables
             WHERE schemaname = current_schema() AND tablename <> '_sqlx_migrations'",
        )
        .fetch_all(&self.client)
        .await?;
        if !tables.is_empty() {
            let sql = format!("TRUNCATE {} RESTART IDENTITY CASCADE", tables.join(", "));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&self.client)
                .await
                .context("emptying the tables")?;
        }
        self.checkpoint().await;
        Ok(())
    }

    /// How many finished operations of the history (`prefill_history`) are
    /// in the tables, counting only as many as have their last event (the
    /// last table filled), so an interrupted fill does not count as done.
    pub(crate) async fn history_len(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT least(
                 (SELECT count(*) FROM operations WHERE resource_kind = 'noop1' AND state = 'succeeded'),
                 (SELECT count(*) FROM resource_events WHERE transition = 'set_ok'))",
        )
        .fetch_one(&self.client)
        .await?)
    }

    /// Deletes what runs of `kind` made: its operations (their tasks go
    /// with them), its resources and their events, and the simulated or
    /// throttling state nothing else uses.
    pub(crate) async fn forget_kind(&self, kind: &str) -> Result<()> {
        sqlx::query(
            "WITH gone AS (DELETE FROM resources WHERE kind = $1 RETURNING id),
                  events AS (DELETE FROM resource_events WHERE resource_id IN (SELECT id FROM gone))
             DELETE FROM operations WHERE resource_kind = $1",
        )
        .bind(kind)
        .execute(&self.client)
        .await
        .context("deleting the runs before")?;
        Ok(())
    }

    /// A `CHECKPOINT`, so no run meets one owed from before it.
    async fn checkpoint(&self) {
        if let Err(e) = sqlx::raw_sql("CHECKPOINT").execute(&self.client).await {
            eprintln!("bench: CHECKPOINT failed ({e}); runs may meet a checkpoint mid-way");
        }
    }

    /// `VACUUM ANALYZE` of the database and a `CHECKPOINT`: the state a
    /// steady system with autovacuum is in, and no checkpoint owed from setup.
    pub(crate) async fn settle(&self) -> Result<()> {
        sqlx::raw_sql("VACUUM (ANALYZE)")
            .execute(&self.client)
            .await
            .context("vacuuming")?;
        self.checkpoint().await;
        Ok(())
    }

    /// Inserts `n` finished single-step create operations (resource `ok`,
    /// operation and task `succeeded`, and the resource's three events when
    /// `resource_events` exists), dated over the past two days' first
    /// minutes, with v7-like ids that sort before new ones, as a service's
    /// history would. Columns added later keep their defaults.
    pub(crate) async fn prefill_history(&self, n: i64) -> Result<()> {
        // A uuid v7 from the row's timestamp plus bits of md5(i || salt).
        fn v7(salt: &str) -> String {
            format!(
                "(lpad(to_hex((extract(epoch FROM s.at) * 1000)::bigint), 12, '0') || '7' \
                 || substr(md5(s.i::text || '{salt}'), 1, 3) || '8' \
                 || substr(md5(s.i::text || '{salt}'), 4, 15))::uuid"
            )
        }
        let series = "WITH s AS (
                SELECT i, $2::timestamptz - interval '2 days' + i * interval '1 millisecond' AS at
                FROM generate_series(1, $1::bigint) AS i
            )";
        let mut statements = vec![
            (
                "resources",
                format!(
                    "{series}
                     INSERT INTO resources (id, kind, name, state, attributes, version, created_at, updated_at)
                     SELECT {r}, 'noop1', 'history-' || s.i, 'ok', '{{}}'::jsonb, 3, s.at, s.at + interval '3 ms'
                     FROM s",
                    r = v7("r")
                ),
            ),
            (
                "operations",
                format!(
                    "{series}
                     INSERT INTO operations (id, resource_id, resource_kind, kind, state, request, step_count,
                                             created_at, updated_at, started_at, finished_at)
                     SELECT {o}, {r}, 'noop1', 'create', 'succeeded',
                            jsonb_build_object('name', 'history-' || s.i, 'attributes', '{{}}'::jsonb),
                            1, s.at, s.at + interval '3 ms', s.at + interval '1 ms', s.at + interval '3 ms'
                     FROM s",
                    o = v7("o"),
                    r = v7("r")
                ),
            ),
            (
                "tasks",
                format!(
                    "{series}
                     INSERT INTO tasks (id, operation_id, resource_id, position, type, args, queue, state, attempts,
                                        max_attempts, run_at, worker, created_at, updated_at, started_at, finished_at)
                     SELECT {t}, {o}, {r}, 0, 'state_transition',
                            '{{\"type\": \"state_transition\", \"transition\": \"begin_creating\"}}'::jsonb,
                            'regular', 'succeeded', 1, 5, s.at, 'history', s.at, s.at + interval '3 ms',
                            s.at + interval '1 ms', s.at + interval '3 ms'
                     FROM s",
                    t = v7("t"),
                    o = v7("o"),
                    r = v7("r")
                ),
            ),
        ];
        let events: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('resource_events')::text")
                .fetch_one(&self.client)
                .await?;
        if events.is_some() {
            statements.push((
                "resource_events",
                format!(
                    "{series}
                     INSERT INTO resource_events (resource_id, operation_id, task_id, transition,
                                                  from_state, to_state, created_at)
                     SELECT {r}, {o}, e.task, e.transition, e.from_state, e.to_state, s.at + e.after
                     FROM s, LATERAL (VALUES
                         (NULL::uuid, 'create', NULL, 'creation_scheduled', interval '0 ms'),
                         ({t}, 'begin_creating', 'creation_scheduled', 'creating', interval '3 ms'),
                         ({t}, 'set_ok', 'creating', 'ok', interval '3 ms')
                     ) AS e(task, transition, from_state, to_state, after)
                     ORDER BY s.i",
                    r = v7("r"),
                    o = v7("o"),
                    t = v7("t")
                ),
            ));
        }
        let base = self.db_now().await?;
        // One connection, which skips foreign-key checks (and triggers) when
        // allowed: the rows are consistent by construction, and checking each
        // task's operation made a million-operation history take many minutes.
        let mut conn = self.client.acquire().await?;
        let fast = sqlx::raw_sql("SET session_replication_role = replica")
            .execute(&mut *conn)
            .await
            .is_ok();
        for (what, sql) in statements {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(n)
                .bind(base)
                .execute(&mut *conn)
                .await
                .with_context(|| {
                    format!(
                        "filling the history of {what} (if the schema changed, update \
                         prefill_history in examples/bench/env.rs)"
                    )
                })?;
        }
        if fast {
            sqlx::raw_sql("RESET session_replication_role")
                .execute(&mut *conn)
                .await?;
        }
        drop(conn);
        self.settle().await
    }

    /// The database's clock now.
    pub(crate) async fn db_now(&self) -> Result<DateTime<Utc>> {
        Ok(sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&self.client)
            .await?)
    }

    /// The conditions a run starts in: the load average and, for the
    /// embedded cluster, how long a flush takes on its disk.
    pub(crate) fn conditions(&self) -> Conditions {
        Conditions {
            load: load_average(),
            flush_ms: self.data_dir.as_deref().map_or(f64::NAN, flush_probe),
        }
    }

    /// Whether any task is ready or running. Cheap however big the history
    /// is (both states have a partial index); a chain always has one of its
    /// steps ready or running until it ends, so "none" means all are done.
    pub(crate) async fn busy(&self) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE state = 'ready')
                 OR EXISTS (SELECT 1 FROM tasks WHERE state = 'running')",
        )
        .fetch_one(&self.client)
        .await?)
    }

    /// Waits until no task is ready or running, looking every `every`.
    pub(crate) async fn wait_drained(&self, every: Duration, limit: Duration) -> Result<()> {
        let started = tokio::time::Instant::now();
        while self.busy().await? {
            if started.elapsed() > limit {
                bail!("tasks still ready or running after {limit:?}");
            }
            tokio::time::sleep(every).await;
        }
        Ok(())
    }

    /// Starts measuring a run's costs: WAL, write transactions, CPU, and
    /// with `--profile` statements and waits.
    pub(crate) async fn probe(&self) -> Result<Probe> {
        let profiler = if self.args.profile {
            Some(Profiler::start(self.client.clone(), self.pgss).await?)
        } else {
            None
        };
        Ok(Probe {
            counters: self.counters().await?,
            cpu: (process_cpu(None), self.postmaster.and_then(tree_cpu)),
            wall: tokio::time::Instant::now(),
            profiler,
        })
    }

    /// WAL position and the next transaction id, exact (unlike pg_stat_*,
    /// which backends report late).
    async fn counters(&self) -> Result<(String, String)> {
        Ok(sqlx::query_as(
            "SELECT pg_current_wal_lsn()::text, pg_snapshot_xmax(pg_current_snapshot())::text",
        )
        .fetch_one(&self.client)
        .await?)
    }

    /// The machine and the server settings that matter for these numbers.
    pub(crate) async fn describe(&self) -> Result<String> {
        let settings: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, current_setting(name) FROM pg_settings
             WHERE name IN ('fsync', 'synchronous_commit', 'wal_sync_method', 'full_page_writes',
                            'shared_buffers', 'max_wal_size', 'commit_delay', 'wal_level',
                            'max_connections', 'shared_preload_libraries')
             ORDER BY name",
        )
        .fetch_all(&self.client)
        .await?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&self.client)
            .await?;
        let where_ = match &self.embedded {
            Some(_) => "embedded cluster (unix socket)",
            None => "DATABASE_URL",
        };
        let mut out = machine();
        out.push_str(&format!("postgres: {version}, {where_}\n"));
        let line: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("settings: {}\n", line.join(" ")));
        out.push_str(&format!(
            "runner: {} regular slots, pool of {} connections; release build: {}\n",
            self.args.concurrency,
            self.args.db_connections,
            !cfg!(debug_assertions)
        ));
        Ok(out)
    }

    /// Closes the pools and stops the embedded cluster.
    pub(crate) async fn stop(self) -> Result<()> {
        self.pool.close().await;
        self.client.close().await;
        if let Some(pg) = self.embedded {
            pg.stop().await?;
        }
        Ok(())
    }
}

/// What else was going on when a run started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conditions {
    load: f64,
    flush_ms: f64,
}

impl Conditions {
    /// Adds them to a run's figures.
    pub(crate) fn into_metrics(self, metrics: &mut crate::stats::Metrics) {
        metrics.add("load average (1 min) at start", "", self.load);
        metrics.add(
            "disk: 8 kB write + fdatasync at start, p50",
            "ms",
            self.flush_ms,
        );
    }
}

impl std::fmt::Display for Conditions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "load average {:.2}, flush {:.2} ms",
            self.load, self.flush_ms
        )
    }
}

/// A run's costs, measured from [`Env::probe`] to [`Probe::finish`].
pub(crate) struct Probe {
    counters: (String, String),
    cpu: (f64, Option<f64>),
    wall: tokio::time::Instant,
    profiler: Option<Profiler>,
}

impl Probe {
    /// Adds the costs per `unit` (`per` of them were done) to `metrics`, and
    /// returns the profile's text (empty without `--profile`).
    pub(crate) async fn finish(
        self,
        env: &Env,
        per: f64,
        unit: &str,
        metrics: &mut crate::stats::Metrics,
    ) -> Result<String> {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = (process_cpu(None), env.postmaster.and_then(tree_cpu));
        let after = env.counters().await?;
        let (wal, xacts): (f64, f64) = sqlx::query_as(
            "SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::float8, ($3::bigint - $4::bigint)::float8",
        )
        .bind(&after.0)
        .bind(&self.counters.0)
        .bind(&after.1)
        .bind(&self.counters.1)
        .fetch_one(&env.client)
        .await?;
        metrics.add(format!("WAL per {unit}"), "bytes", wal / per);
        metrics.add(format!("write transactions per {unit}"), "", xacts / per);
        let bench_cpu = cpu.0 - self.cpu.0;
        metrics.add(
            format!("CPU of this process (runner) per {unit}"),
            "µs",
            bench_cpu / per * 1e6,
        );
        let mut busy = bench_cpu;
        if let (Some(before), Some(after)) = (self.cpu.1, cpu.1) {
            metrics.add(
                format!("CPU of PostgreSQL per {unit}"),
                "µs",
                (after - before) / per * 1e6,
            );
            busy += after - before;
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        metrics.add(
            "CPU used of all cores (runner + PostgreSQL)",
            "%",
            busy / wall / cores * 100.0,
        );
        match self.profiler {
            Some(profiler) => profiler.finish(per, unit).await,
            None => Ok(String::new()),
        }
    }
}

/// With `--profile`: pg_stat_statements (when loaded) and a sampler of
/// what executord's connections wait on, from start to finish.
pub(crate) struct Profiler {
    client: PgPool,
    pgss: bool,
    stop: tokio::sync::oneshot::Sender<()>,
    sampler: tokio::task::JoinHandle<Waits>,
}

impl Profiler {
    /// Resets pg_stat_statements (if `pgss`) and starts sampling waits.
    pub(crate) async fn start(client: PgPool, pgss: bool) -> Result<Self> {
        if pgss {
            sqlx::raw_sql("SELECT pg_stat_statements_reset()")
                .execute(&client)
                .await?;
        }
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let sampler = tokio::spawn(sample_waits(client.clone(), stopped));
        Ok(Self {
            client,
            pgss,
            stop,
            sampler,
        })
    }

    /// The top statements and the waits, per `unit` (`per` of them were done).
    pub(crate) async fn finish(self, per: f64, unit: &str) -> Result<String> {
        self.stop.send(()).ok();
        let waits = waits(self.sampler.await.context("the wait sampler panicked")?);
        let mut report = String::new();
        if self.pgss {
            report.push_str(&statements(&self.client, per, unit).await?);
        }
        report.push_str(&waits);
        Ok(report)
    }
}

/// The statements that took the most server time since the reset.
async fn statements(client: &PgPool, per: f64, unit: &str) -> Result<String> {
    let rows: Vec<(i64, f64, f64, i64, String)> = sqlx::query_as(
        "SELECT calls, total_exec_time, mean_exec_time, rows,
                left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
         FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND query NOT LIKE '%pg_stat%' AND query NOT LIKE '%pg_current_%'
           AND query NOT LIKE 'SELECT EXISTS (SELECT 1 FROM tasks%'
         ORDER BY total_exec_time DESC LIMIT 25",
    )
    .fetch_all(client)
    .await?;
    let (total_ms, calls): (f64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(total_exec_time), 0)::float8, coalesce(sum(calls), 0)::bigint
         FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND query NOT LIKE '%pg_stat%' AND query NOT LIKE '%pg_current_%'
           AND query NOT LIKE 'SELECT EXISTS (SELECT 1 FROM tasks%'",
    )
    .fetch_one(client)
    .await?;
    let mut out = format!(
        "  pg_stat_statements: {total_ms:.0} ms of execution in {calls} statements: \
         {:.1} statements and {:.3} ms per {unit}\n\
         \x20 {:>9} {:>9} {:>10} {:>8} {:>8}  statement\n",
        calls as f64 / per,
        total_ms / per,
        "calls",
        format!("/{unit}"),
        "total ms",
        "mean ms",
        "rows"
    );
    for (calls, total_ms, mean_ms, rows, query) in rows {
        out.push_str(&format!(
            "  {calls:>9} {:>9.2} {total_ms:>10.1} {mean_ms:>8.3} {rows:>8}  {query}\n",
            calls as f64 / per
        ));
    }
    Ok(out)
}

/// How often each state was seen, and in how many samples.
type Waits = (std::collections::BTreeMap<String, u64>, u64);

/// Samples, every 10 ms until stopped, what executord's busy connections
/// are doing.
async fn sample_waits(client: PgPool, mut stop: tokio::sync::oneshot::Receiver<()>) -> Waits {
    let mut seen = std::collections::BTreeMap::new();
    let mut samples = 0;
    loop {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT CASE WHEN state = 'idle in transaction' THEN 'idle in transaction: waiting for executord''s next statement'
                         WHEN wait_event IS NULL THEN 'executing (on CPU or waiting for one)'
                         ELSE wait_event_type || ': ' || wait_event END
             FROM pg_stat_activity
             WHERE application_name = 'executord' AND backend_type = 'client backend'
               AND state <> 'idle'",
        )
        .fetch_all(&client)
        .await
        .unwrap_or_else(|e| vec![format!("(sampling failed: {e})")]);
        samples += 1;
        for what in rows {
            *seen.entry(what).or_default() += 1;
        }
        tokio::select! {
            _ = &mut stop => return (seen, samples),
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
}

/// The wait sampler's tally, as text.
fn waits((seen, samples): Waits) -> String {
    let total: u64 = seen.values().sum();
    let mut rows: Vec<(String, u64)> = seen.into_iter().collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.1));
    let mut out = format!(
        "  executord's busy connections, sampled every 10 ms from pg_stat_activity \
         ({samples} samples, {:.1} busy on average):\n",
        total as f64 / samples.max(1) as f64
    );
    for (what, n) in rows {
        out.push_str(&format!(
            "  {:>6.1}%  {:>5.2} connections  {what}\n",
            n as f64 * 100.0 / total.max(1) as f64,
            n as f64 / samples.max(1) as f64
        ));
    }
    out
}

/// CPU seconds (user + system) of `pid` (this process when `None`), at the
/// usual 100 clock ticks per second.
pub(crate) fn process_cpu(pid: Option<u32>) -> f64 {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |p| format!("/proc/{p}/stat"),
    );
    stat_ticks(&path, false).unwrap_or(0.0) / 100.0
}

/// utime + stime (and, with `children`, the reaped children's) of a stat file.
fn stat_ticks(path: &str, children: bool) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: utime, stime, cutime, cstime are the 12th to 15th fields.
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    let own = tick(11)? + tick(12)?;
    Some(if children {
        own + tick(13)? + tick(14)?
    } else {
        own
    })
}

/// CPU seconds of `root` and its live descendants (plus its reaped children).
pub(crate) fn tree_cpu(root: u32) -> Option<f64> {
    let mut total = stat_ticks(&format!("/proc/{root}/stat"), true)?;
    let mut stack = children(root);
    while let Some(pid) = stack.pop() {
        total += stat_ticks(&format!("/proc/{pid}/stat"), false).unwrap_or(0.0);
        stack.extend(children(pid));
    }
    Some(total / 100.0)
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Milliseconds one 8 kB write plus `fdatasync` takes in `dir` (a commit's
/// WAL flush, roughly): the median of 30, or `NaN` if the probe fails.
/// The disk's speed on a shared machine varies over minutes, and the
/// durable workloads follow it.
pub(crate) fn flush_probe(dir: &std::path::Path) -> f64 {
    use std::io::Write;
    let path = dir.join("bench-flush-probe");
    let run = || -> std::io::Result<Vec<f64>> {
        let mut file = std::fs::File::create(&path)?;
        let block = [0u8; 8192];
        let mut times = Vec::with_capacity(30);
        for _ in 0..30 {
            let t = std::time::Instant::now();
            file.write_all(&block)?;
            file.sync_data()?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(times)
    };
    let times = run();
    let _ = std::fs::remove_file(&path);
    times.map_or(f64::NAN, |t| {
        crate::stats::percentile(&crate::stats::sorted(t), 50.0)
    })
}

/// The 1-minute load average.
pub(crate) fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// nproc, CPU model, memory and kernel, from /proc.
pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim())
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "machine: {cpus} CPUs ({model}), {mem_gib:.1} GiB memory, Linux {}\n",
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_catalog_parses() {
        let backends = Backends::new().with(noop::NAME, Arc::new(Noop));
        let catalog = Catalog::parse(&catalog_text(10), &backends).expect("catalog");
        assert_eq!(catalog.kind("noop1").map(|k| k.create.len()), Some(0));
        assert_eq!(catalog.kind("noop10").map(|k| k.create.len()), Some(9));
        let only_one = Catalog::parse(&catalog_text(1), &backends).expect("catalog");
        assert!(only_one.kind("noop10").is_none());
    }
}
