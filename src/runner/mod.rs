//! The runner: worker pools per queue that claim ready tasks, run them under
//! a lease with heartbeats, and record each outcome in one transaction.
//!
//! - Two claim loops per queue each claim as many ready rows as the free
//!   slots they reserved (at most half the queue's), in one
//!   `FOR UPDATE SKIP LOCKED` statement; wakes on NOTIFY, polls as a fallback.
//! - A lease that is not renewed expires and the task returns to `ready`; the
//!   old holder's late outcome is refused by the lease token (fencing).
//! - Outcomes go to the runner's recorder, which applies whatever has
//!   gathered in one transaction (group commit): under load a batch costs a
//!   few statements and one flush for many tasks; alone, a task is recorded
//!   at once.
//! - Graceful shutdown: stop claiming, let in-flight tasks finish within a
//!   grace period, release the rest for another process.

pub mod record;
pub mod scheduler;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::db;
use crate::db::tasks::{Claimed, Task};
use crate::domain::Queue;
use crate::events::Events;
use crate::tasks::{self, TaskContext};

pub use record::Recorded;

/// Most steps of one chain a runner slot runs in a row before it lets the queue have a turn.
pub const MAX_INLINE_STEPS: usize = 64;

/// Claim loops per queue, each claiming for at most its share of the
/// queue's slots: while one claim's transaction runs (it records the state
/// transitions it took, a few statements), the other can claim.
pub const CLAIMERS: usize = 2;

/// Most outcomes recorded in one transaction.
pub const MAX_BATCH: usize = 256;

/// How long a stopping runner waits for its last announcements to be sent.
const ANNOUNCED_WITHIN: Duration = Duration::from_secs(5);

/// How often a runner looks for young tables that doubled.
const STATISTICS_EVERY: Duration = Duration::from_secs(1);

/// How long the recorder and a queue's claims keep their connection while
/// they have nothing to do, before it goes back to the pool.
const HOLD_WHILE_IDLE: Duration = Duration::from_millis(500);

type Answer = Option<(Recorded, Option<Claimed>)>;
type Outcomes = mpsc::UnboundedReceiver<(record::Item, oneshot::Sender<Answer>)>;

/// Where a runner's slots send their outcomes.
#[derive(Debug, Clone)]
struct Recorder {
    outcomes: mpsc::UnboundedSender<(record::Item, oneshot::Sender<Answer>)>,
}

impl Recorder {
    /// Records `item` with whatever else is waiting; `None` if that failed
    /// (the lease then expires and the task runs again).
    async fn record(&self, item: record::Item) -> Answer {
        let (answer, answered) = oneshot::channel();
        self.outcomes.send((item, answer)).ok()?;
        answered.await.ok().flatten()
    }
}

/// How a runner behaves.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Concurrent tasks of the `regular` queue.
    pub regular: usize,
    /// Concurrent tasks of the `heavy` queue.
    pub heavy: usize,
    /// Concurrent tasks of the `background` queue.
    pub background: usize,
    /// How long a claim lasts without a heartbeat.
    pub lease: Duration,
    /// Longest sleep between looks at the queue when no notification arrives.
    pub poll_interval: Duration,
    /// How long in-flight tasks may run on after shutdown begins before they are released.
    pub shutdown_grace: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            regular: 32,
            heavy: 4,
            background: 2,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl RunnerConfig {
    /// The pool size of `queue`.
    pub fn concurrency(&self, queue: Queue) -> usize {
        match queue {
            Queue::Regular => self.regular,
            Queue::Heavy => self.heavy,
            Queue::Background => self.background,
        }
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A runner; cheap to clone.
#[derive(Debug, Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ctx: TaskContext,
    config: RunnerConfig,
    events: Events,
    worker: String,
}

impl Runner {
    /// A runner over `ctx`, woken through `events`.
    pub fn new(ctx: TaskContext, config: RunnerConfig, events: Events) -> Self {
        let worker = format!(
            "{}:{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Self {
            inner: Arc::new(Inner {
                ctx,
                config,
                events,
                worker,
            }),
        }
    }

    /// This runner's name in `tasks.worker`.
    pub fn worker(&self) -> &str {
        &self.inner.worker
    }

    fn pool(&self) -> &PgPool {
        &self.inner.ctx.pool
    }

    /// Runs the pools of `queues` until `shutdown` turns true, then shuts down gracefully.
    pub async fn run(self, queues: Vec<Queue>, shutdown: watch::Receiver<bool>) {
        let (recorder, recording) = self.recorder();
        let mut pools = JoinSet::new();
        for queue in queues {
            let concurrency = self.inner.config.concurrency(queue);
            if concurrency == 0 {
                continue;
            }
            let slots = Arc::new(Semaphore::new(concurrency));
            let share = concurrency.div_ceil(CLAIMERS);
            for _ in 0..CLAIMERS {
                pools.spawn(self.clone().pool_loop(
                    queue,
                    slots.clone(),
                    share,
                    recorder.clone(),
                    shutdown.clone(),
                ));
            }
        }
        pools.spawn(self.clone().reaper(shutdown.clone()));
        pools.spawn(self.clone().statistics(shutdown));
        while pools.join_next().await.is_some() {}
        drop(recorder);
        let _ = recording.await;
        // The other processes hear of the last steps before the pool closes
        // (bounded: a database that does not answer costs them a poll).
        let _ = tokio::time::timeout(ANNOUNCED_WITHIN, self.inner.events.announced()).await;
        tracing::info!(worker = %self.inner.worker, "runner stopped");
    }

    /// Starts the recorder; it stops once every [`Recorder`] is dropped.
    /// While it records a batch, the next one gathers: one recording
    /// transaction at a time, as large as the outcomes that came meanwhile.
    fn recorder(&self) -> (Recorder, JoinHandle<()>) {
        let (outcomes, receiver) = mpsc::unbounded_channel();
        let handle = tokio::spawn(self.clone().recorder_loop(receiver));
        (Recorder { outcomes }, handle)
    }

    async fn recorder_loop(self, mut receiver: Outcomes) {
        let mut held = db::Held::new(self.pool().clone());
        loop {
            let first = match tokio::time::timeout(HOLD_WHILE_IDLE, receiver.recv()).await {
                Ok(Some(first)) => first,
                Ok(None) => break,
                Err(_) => {
                    held.release();
                    match receiver.recv().await {
                        Some(first) => first,
                        None => break,
                    }
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            self.record(&mut held, batch).await;
        }
    }

    /// Records a batch, answers its slots, then announces what it made ready or ended.
    async fn record(
        &self,
        held: &mut db::Held,
        batch: Vec<(record::Item, oneshot::Sender<Answer>)>,
    ) {
        let (items, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let cont = record::Continue {
            lease_ms: self.inner.config.lease_ms(),
            worker: &self.inner.worker,
        };
        let ctx = &self.inner.ctx;
        crate::metrics::outcomes_recorded(items.len());
        let settled = record::record_all(held, &ctx.catalog, &items, Some(cont)).await;
        for (result, answer) in settled.results.into_iter().zip(answers) {
            let _ = answer.send(result);
        }
        let ready: Vec<Queue> = settled.ready.into_iter().collect();
        self.inner
            .events
            .announce(&ctx.pool, &ready, &settled.finished);
    }

    /// One of a queue's [`CLAIMERS`]: claims ready tasks for at most
    /// `share` of the queue's `slots` at a time (reserved before the claim,
    /// so the claimers never claim more than there are slots), and runs them.
    async fn pool_loop(
        self,
        queue: Queue,
        slots: Arc<Semaphore>,
        share: usize,
        recorder: Recorder,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut in_flight = JoinSet::new();
        let mut held = db::Held::new(self.pool().clone());
        let mut found_work = tokio::time::Instant::now();
        while !*shutdown.borrow() {
            while in_flight.try_join_next().is_some() {}
            let free = slots.available_permits().min(share);
            let reserved = u32::try_from(free)
                .ok()
                .filter(|&n| n > 0)
                .and_then(|n| slots.clone().try_acquire_many_owned(n).ok());
            let mut wait = self.inner.config.poll_interval;
            if let Some(mut reserved) = reserved {
                let claimed = async {
                    let conn = held.get().await?;
                    self.claim(conn, queue, free).await
                }
                .await;
                match claimed {
                    Ok(claimed) => {
                        if claimed.claimed > 0 {
                            found_work = tokio::time::Instant::now();
                        }
                        let full = claimed.claimed == free;
                        for claimed in claimed.run {
                            let Some(permit) = reserved.split(1) else {
                                break;
                            };
                            in_flight.spawn(self.clone().execute(
                                claimed,
                                permit,
                                recorder.clone(),
                                shutdown.clone(),
                            ));
                        }
                        if full {
                            continue;
                        }
                        let due = async { db::tasks::next_due(held.get().await?, queue).await };
                        match due.await {
                            Ok(Some(due)) => {
                                let until = (due - chrono::Utc::now()).to_std().unwrap_or_default();
                                wait = wait.min(until);
                            }
                            Ok(None) => {}
                            Err(_) => held.release(),
                        }
                    }
                    Err(e) => {
                        held.release();
                        tracing::warn!(
                            queue = queue.as_str(),
                            error = format!("{e:#}"),
                            "claiming ready tasks failed"
                        );
                    }
                }
            }
            if wait.is_zero() {
                continue;
            }
            // The connection stays held while claims find work (under load
            // the next comes within milliseconds) and goes back to the pool
            // once they have found none for a while, however often they poll.
            let keep = HOLD_WHILE_IDLE.saturating_sub(found_work.elapsed());
            let first = if keep.is_zero() {
                held.release();
                wait
            } else {
                wait.min(keep)
            };
            if !self.nap(queue, &mut shutdown, first).await && wait > first {
                held.release();
                self.nap(queue, &mut shutdown, wait - first).await;
            }
        }
        while in_flight.join_next().await.is_some() {}
    }

    /// Claims up to `free` ready tasks of `queue` on `conn`, recording at
    /// once the state transitions among them ([`record::claim`]), and
    /// announces what that made ready or ended.
    async fn claim(
        &self,
        conn: &mut sqlx::PgConnection,
        queue: Queue,
        free: usize,
    ) -> anyhow::Result<record::Claim> {
        let cont = record::Continue {
            lease_ms: self.inner.config.lease_ms(),
            worker: &self.inner.worker,
        };
        let limit = i64::try_from(free).unwrap_or(i64::MAX);
        let claim = record::claim(conn, &self.inner.ctx.catalog, queue, limit, cont).await?;
        if !claim.ready.is_empty() || !claim.finished.is_empty() {
            let ready: Vec<Queue> = claim.ready.iter().copied().collect();
            self.inner
                .events
                .announce(self.pool(), &ready, &claim.finished);
        }
        Ok(claim)
    }

    /// Sleeps up to `limit`; whether it was woken first (work for `queue`,
    /// or shutdown).
    async fn nap(
        &self,
        queue: Queue,
        shutdown: &mut watch::Receiver<bool>,
        limit: Duration,
    ) -> bool {
        tokio::select! {
            () = self.inner.events.woken(queue) => true,
            () = tokio::time::sleep(limit) => false,
            _ = shutdown.changed() => true,
        }
    }

    async fn reaper(self, mut shutdown: watch::Receiver<bool>) {
        let every = (self.inner.config.lease / 4).max(Duration::from_millis(100));
        while !*shutdown.borrow() {
            self.reap().await;
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Keeps the planner's statistics of young tables fresh (see
    /// [`db::stats`]): the runner's statements run on kept generic plans.
    async fn statistics(self, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            match db::stats::analyze_grown(self.pool()).await {
                Ok(tables) if !tables.is_empty() => {
                    tracing::debug!(?tables, "analyzed tables that doubled");
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "analyzing young tables failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(STATISTICS_EVERY) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn reap(&self) {
        match db::tasks::reap_expired(self.pool()).await {
            Ok(queues) => {
                if !queues.is_empty() {
                    tracing::warn!(count = queues.len(), "leases expired; tasks queued again");
                    crate::metrics::leases_expired(queues.len());
                }
                for queue in queues {
                    self.inner.events.wake(queue);
                }
            }
            Err(e) => tracing::warn!(error = %e, "returning expired leases failed"),
        }
    }

    /// Runs one claimed task under its lease and records the outcome; then
    /// goes on with the chain's next step while it is claimed inline (at most
    /// [`MAX_INLINE_STEPS`] in a row, so one long chain cannot hold a slot forever).
    async fn execute(
        self,
        claimed: Claimed,
        permit: OwnedSemaphorePermit,
        recorder: Recorder,
        shutdown: watch::Receiver<bool>,
    ) {
        let queue = claimed.task.queue;
        let mut current = Some(claimed);
        let mut steps = 0;
        while let Some(claimed) = current.take() {
            steps += 1;
            let inline = steps < MAX_INLINE_STEPS;
            current = self
                .execute_one(claimed, inline, &recorder, shutdown.clone())
                .await;
        }
        drop(permit);
        self.inner.events.wake(queue);
    }

    /// Runs and records one task; the next step if it was claimed inline.
    async fn execute_one(
        &self,
        claimed: Claimed,
        inline: bool,
        recorder: &Recorder,
        shutdown: watch::Receiver<bool>,
    ) -> Option<Claimed> {
        let Claimed { task, target } = claimed;
        let task = &task;
        let token = task.lease_token?;
        let started = std::time::Instant::now();
        let mut cancelled = self.inner.events.subscribe_cancelled();
        let cancel = async {
            loop {
                match cancelled.recv().await {
                    Ok(id) if id == task.id => return,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        let outcome = tokio::select! {
            outcome = tasks::run(&self.inner.ctx, task, target.map(|t| t.0)) => outcome,
            () = cancel => {
                tracing::info!(task_id = %task.id, "operation cancelled; stopping the task");
                return None;
            }
            () = self.heartbeat(task) => {
                tracing::warn!(task_id = %task.id, "lease lost mid-run; abandoning the task");
                return None;
            }
            () = grace_over(shutdown.clone(), self.inner.config.shutdown_grace) => {
                match db::tasks::release(self.pool(), task.id, token).await {
                    Ok(Some(queue)) => tracing::info!(task_id = %task.id, queue = queue.as_str(), "released at shutdown"),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(task_id = %task.id, error = %e, "release failed; the lease will expire"),
                }
                return None;
            }
        };
        crate::metrics::task_ran(&task.task_type, outcome.label(), started.elapsed());
        if outcome.label() == "retried" {
            crate::metrics::task_retried(&task.task_type);
        }
        let item = record::Item {
            task_id: task.id,
            token,
            outcome,
            // No new work is taken on once shutdown has begun.
            go_on: inline && !*shutdown.borrow(),
        };
        match recorder.record(item).await? {
            (Recorded::Applied, next) => next,
            (Recorded::Fenced, _) => {
                tracing::warn!(task_id = %task.id, "late outcome refused: the lease passed to another runner");
                None
            }
        }
    }

    /// Renews the lease until it is lost; returns only then.
    async fn heartbeat(&self, task: &Task) {
        let Some(token) = task.lease_token else {
            return;
        };
        let every = self.inner.config.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            match db::tasks::heartbeat(self.pool(), task.id, token, self.inner.config.lease_ms())
                .await
            {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::warn!(task_id = %task.id, error = %e, "heartbeat failed"),
            }
        }
    }

    /// Drives every queue until no task is ready or running, for tests and
    /// one-shot use. Returns the number of tasks run; fails after `limit`.
    pub async fn run_until_idle(&self, limit: Duration) -> anyhow::Result<usize> {
        let started = tokio::time::Instant::now();
        let (_keep, never) = watch::channel(false);
        let (recorder, _recording) = self.recorder();
        let slots: Vec<(Queue, Arc<Semaphore>)> = Queue::ALL
            .into_iter()
            .map(|q| {
                (
                    q,
                    Arc::new(Semaphore::new(self.inner.config.concurrency(q).max(1))),
                )
            })
            .collect();
        let mut batch = JoinSet::new();
        let mut ran = 0;
        loop {
            anyhow::ensure!(started.elapsed() < limit, "still busy after {limit:?}");
            self.reap().await;
            let mut claimed_any = false;
            for (queue, slots) in &slots {
                let free = slots.available_permits();
                if free == 0 {
                    continue;
                }
                let mut conn = self.pool().acquire().await.context("taking a connection")?;
                let claimed = self
                    .claim(&mut conn, *queue, free)
                    .await
                    .context("claiming ready tasks")?;
                drop(conn);
                claimed_any |= claimed.claimed > 0;
                ran += claimed.claimed;
                for claimed in claimed.run {
                    let permit = slots.clone().try_acquire_owned().context("slot")?;
                    batch.spawn(self.clone().execute(
                        claimed,
                        permit,
                        recorder.clone(),
                        never.clone(),
                    ));
                }
            }
            if !batch.is_empty() {
                // Claim again as soon as a slot frees or something may have
                // become ready (a step's branches start while it runs on).
                let tick = Duration::from_millis(if claimed_any { 5 } else { 20 });
                let _ = tokio::time::timeout(tick, batch.join_next()).await;
                continue;
            }
            if db::tasks::count_live(self.pool()).await? == 0 {
                return Ok(ran);
            }
            let mut next = None;
            for queue in Queue::ALL {
                if let Some(due) = db::tasks::next_due(self.pool(), queue).await? {
                    next = Some(next.map_or(due, |n: chrono::DateTime<chrono::Utc>| n.min(due)));
                }
            }
            let wait = next
                .and_then(|due| (due - chrono::Utc::now()).to_std().ok())
                .unwrap_or(Duration::from_millis(20))
                .min(Duration::from_millis(200));
            tokio::time::sleep(wait).await;
        }
    }
}

/// Resolves `grace` after shutdown begins; never if it does not.
async fn grace_over(mut shutdown: watch::Receiver<bool>, grace: Duration) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(grace).await;
}
