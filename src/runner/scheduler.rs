//! The periodic-job scheduler. Every runner process runs one; exactly one of
//! them, the holder of a session advisory lock, enqueues jobs. If the
//! leader's connection dies, Postgres drops the lock and another process
//! takes over at its next tick. Enqueueing is idempotent in the database: a
//! job is enqueued only when its interval has passed (`job_schedule`, so a new
//! leader keeps the rhythm) and never while a task of it is pending or
//! running (a unique partial index), so a split second of two leaders could
//! not enqueue twice either.

use std::time::Duration;

use sqlx::{Connection, PgPool};
use tokio::sync::watch;

use crate::catalog::{Job, JobArgs};
use crate::db;
use crate::domain::Queue;

/// The advisory lock key of the scheduler's leadership.
const LEADER_LOCK: i64 = 0x6578_6563_7574_6f72; // "executor"

/// How often each job runs.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// Pull runtime states; `None` disables.
    pub pull: Option<Duration>,
    /// Sweep stranded resources; `None` disables.
    pub sweep: Option<Duration>,
    /// Prune old history; `None` disables.
    pub prune: Option<Duration>,
    /// How long finished operations are kept.
    pub retention: Duration,
    /// How often the leader looks at the schedule, and followers try to lead.
    pub tick: Duration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            pull: Some(Duration::from_secs(60)),
            sweep: Some(Duration::from_secs(60)),
            prune: Some(Duration::from_secs(3600)),
            retention: Duration::from_secs(7 * 24 * 3600),
            tick: Duration::from_secs(1),
        }
    }
}

/// A scheduler; see the module docs.
#[derive(Debug)]
pub struct Scheduler {
    pool: PgPool,
    config: ScheduleConfig,
    leader: watch::Sender<Option<i32>>,
}

impl Scheduler {
    /// A scheduler over `pool`.
    pub fn new(pool: PgPool, config: ScheduleConfig) -> Self {
        Self {
            pool,
            config,
            leader: watch::channel(None).0,
        }
    }

    /// While this scheduler leads: the backend pid of its lock-holding connection.
    pub fn leadership(&self) -> watch::Receiver<Option<i32>> {
        self.leader.subscribe()
    }

    /// Tries to lead, and leads, until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            if let Err(e) = self.lead(&mut shutdown).await {
                tracing::warn!(error = format!("{e:#}"), "scheduler lost its leadership");
            }
            self.leader.send_replace(None);
            tokio::select! {
                () = tokio::time::sleep(self.config.tick) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn lead(&self, shutdown: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
        // A connection of its own, outside the pool: the lock lives and dies with it.
        let mut conn = self.pool.acquire().await?.detach();
        let (leads, pid) = db::jobs::try_lead(&mut conn, LEADER_LOCK).await?;
        if !leads {
            conn.close().await.ok();
            return Ok(());
        }
        self.leader.send_replace(Some(pid));
        tracing::info!(pid, "this process now schedules periodic jobs");
        let jobs = [
            (Job::Pull, self.config.pull),
            (Job::Sweep, self.config.sweep),
            (Job::Prune, self.config.prune),
        ];
        while !*shutdown.borrow() {
            let mut enqueued = false;
            for (job, every) in jobs {
                let Some(every) = every else { continue };
                let retention_s = (job == Job::Prune).then_some(self.config.retention.as_secs());
                let args = serde_json::to_value(JobArgs::new(job, retention_s))?;
                let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
                if db::jobs::enqueue_due(&mut conn, job.as_str(), every_ms, &args).await? {
                    tracing::debug!(job = job.as_str(), "job enqueued");
                    enqueued = true;
                }
            }
            if enqueued {
                db::notify_ready(&mut conn, Queue::Background).await?;
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.tick) => {}
                _ = shutdown.changed() => {}
            }
        }
        conn.close().await.ok();
        Ok(())
    }
}
