//! In-process wake-ups fed by Postgres LISTEN/NOTIFY: "queue X has ready
//! tasks" wakes the runner; "operation Y finished" answers long polls.
//! Notifications are hints: the runner also polls, and waiters re-read the
//! database, so a lost notification costs latency, never correctness.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, broadcast, watch};
use uuid::Uuid;

use crate::db::{CANCEL_CHANNEL, OPERATIONS_CHANNEL, TASKS_CHANNEL};
use crate::domain::Queue;

/// The process's wake-up hub. A clone shares it (one reference count: it
/// goes with every request's state).
#[derive(Debug, Clone)]
pub struct Events(Arc<Hub>);

#[derive(Debug)]
struct Hub {
    origin: Box<str>,
    queues: [Notify; 3],
    finished: broadcast::Sender<Uuid>,
    cancelled: broadcast::Sender<Uuid>,
    stopping: watch::Sender<bool>,
    news: Mutex<News>,
    /// Told when the task sending the news has nothing left to send.
    sent: Notify,
}

/// What was announced here and is not yet sent to the other processes.
#[derive(Debug, Default)]
struct News {
    queues: Vec<Queue>,
    finished: Vec<Uuid>,
    /// Whether a task is sending it (at most one at a time).
    sending: bool,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// A hub with nobody listening yet.
    pub fn new() -> Self {
        let origin = uuid::Uuid::new_v4().simple().to_string();
        Self(Arc::new(Hub {
            origin: origin[..12].into(),
            queues: [Notify::new(), Notify::new(), Notify::new()],
            finished: broadcast::channel(1024).0,
            cancelled: broadcast::channel(1024).0,
            stopping: watch::channel(false).0,
            news: Mutex::default(),
            sent: Notify::new(),
        }))
    }

    fn index(queue: Queue) -> usize {
        match queue {
            Queue::Regular => 0,
            Queue::Heavy => 1,
            Queue::Background => 2,
        }
    }

    /// Tells this process at once, then the others through NOTIFY, that
    /// `queues` have ready tasks and `finished` operations ended. Call after
    /// the commit.
    ///
    /// The NOTIFY is sent by a task of its own, so the claim or recording
    /// that announces does not wait for it; what is announced while one is
    /// being sent goes together in the next (one statement, whatever the
    /// number of claims and recordings meanwhile).
    pub fn announce(&self, pool: &PgPool, queues: &[Queue], finished: &[Uuid]) {
        for &queue in queues {
            self.wake(queue);
        }
        for &id in finished {
            self.operation_finished(id);
        }
        if queues.is_empty() && finished.is_empty() {
            return;
        }
        let mut news = self.0.news.lock().unwrap_or_else(PoisonError::into_inner);
        for &queue in queues {
            if !news.queues.contains(&queue) {
                news.queues.push(queue);
            }
        }
        news.finished.extend_from_slice(finished);
        if !news.sending {
            news.sending = true;
            tokio::spawn(self.clone().send_news(pool.clone()));
        }
    }

    /// Sends what was announced until nothing is left to send.
    async fn send_news(self, pool: PgPool) {
        loop {
            let (queues, finished) = {
                let mut news = self.0.news.lock().unwrap_or_else(PoisonError::into_inner);
                if news.queues.is_empty() && news.finished.is_empty() {
                    news.sending = false;
                    self.0.sent.notify_waiters();
                    return;
                }
                (
                    std::mem::take(&mut news.queues),
                    std::mem::take(&mut news.finished),
                )
            };
            if let Err(e) = crate::db::announce(&pool, &self.0.origin, &queues, &finished).await {
                tracing::warn!(error = %e, "notifying other processes failed; they will poll");
            }
        }
    }

    /// Resolves once everything announced so far has been sent to the
    /// other processes (or failed to be): a runner that stops waits for its
    /// last announcements before the pool closes.
    pub async fn announced(&self) {
        loop {
            let sent = self.0.sent.notified();
            tokio::pin!(sent);
            sent.as_mut().enable();
            if !self
                .0
                .news
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sending
            {
                return;
            }
            sent.await;
        }
    }

    /// Wakes the pool of `queue` (a wake-up is kept if nobody waits yet).
    pub fn wake(&self, queue: Queue) {
        self.0.queues[Self::index(queue)].notify_one();
    }

    /// Waits for a wake-up of `queue`.
    pub async fn woken(&self, queue: Queue) {
        self.0.queues[Self::index(queue)].notified().await;
    }

    /// Announces that an operation finished.
    pub fn operation_finished(&self, id: Uuid) {
        let _ = self.0.finished.send(id);
    }

    /// Subscribes to finished operations; subscribe before reading, then wait.
    pub fn subscribe_finished(&self) -> broadcast::Receiver<Uuid> {
        self.0.finished.subscribe()
    }

    /// Tells long polls the process is stopping, so they answer now.
    pub fn begin_shutdown(&self) {
        self.0.stopping.send_replace(true);
    }

    /// Whether the process is stopping.
    pub fn is_stopping(&self) -> bool {
        *self.0.stopping.borrow()
    }

    /// Resolves once the process begins to stop.
    pub async fn stopping(&self) {
        let mut rx = self.0.stopping.subscribe();
        if rx.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Subscribes to tasks whose operation was cancelled while they ran.
    pub fn subscribe_cancelled(&self) -> broadcast::Receiver<Uuid> {
        self.0.cancelled.subscribe()
    }

    /// Feeds the hub from LISTEN until the process ends, reconnecting after errors.
    pub async fn listen(self, pool: PgPool) {
        loop {
            match self.listen_once(&pool).await {
                Ok(()) => return,
                Err(_) if pool.is_closed() => return,
                Err(e) => tracing::warn!(error = %e, "LISTEN connection lost; reconnecting"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn listen_once(&self, pool: &PgPool) -> sqlx::Result<()> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener
            .listen_all([TASKS_CHANNEL, OPERATIONS_CHANNEL, CANCEL_CHANNEL])
            .await?;
        // Anything announced while we were not listening: look again.
        for queue in Queue::ALL {
            self.wake(queue);
        }
        loop {
            let notification = listener.recv().await?;
            let payload = match notification.payload().split_once(' ') {
                Some((origin, _)) if origin == &*self.0.origin => continue,
                Some((_, body)) => body,
                None => notification.payload(),
            };
            match notification.channel() {
                TASKS_CHANNEL => {
                    if let Some(queue) = Queue::parse(payload) {
                        self.wake(queue);
                    }
                }
                OPERATIONS_CHANNEL => {
                    for id in payload.split(',').filter_map(|id| id.parse().ok()) {
                        self.operation_finished(id);
                    }
                }
                CANCEL_CHANNEL => {
                    if let Ok(id) = payload.parse() {
                        let _ = self.0.cancelled.send(id);
                    }
                }
                _ => {}
            }
        }
    }
}
