//! Shared fixtures: an engine over a real Postgres database (one per test,
//! from `#[sqlx::test]`), the simulated backend, and a runner to drive it.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use executord::backend::Backends;
use executord::backend::sim::{Sim, SimConfig};
use executord::catalog::Catalog;
use executord::db::operations::Operation;
use executord::db::resources::Resource;
use executord::db::tasks::Task;
use executord::events::Events;
use executord::executor::{Applied, Create, Executor, ExecutorError};
use executord::runner::{Runner, RunnerConfig};
use executord::tasks::TaskContext;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

pub struct Engine {
    pub pool: PgPool,
    pub sim: Arc<Sim>,
    pub catalog: Arc<Catalog>,
    pub events: Events,
    pub runner: Runner,
}

pub fn fast_runner_config() -> RunnerConfig {
    RunnerConfig {
        lease: Duration::from_secs(5),
        poll_interval: Duration::from_millis(50),
        shutdown_grace: Duration::from_secs(2),
        ..RunnerConfig::default()
    }
}

impl Engine {
    pub fn new(pool: PgPool) -> Self {
        Self::with(pool, SimConfig::instant(), None, fast_runner_config())
    }

    pub fn with(pool: PgPool, sim: SimConfig, catalog: Option<&str>, config: RunnerConfig) -> Self {
        let sim = Arc::new(Sim::new(sim));
        let backends = Backends::new().with("sim", sim.clone());
        let catalog = Arc::new(match catalog {
            Some(text) => Catalog::parse(text, &backends).unwrap(),
            None => Catalog::default_catalog(&backends).unwrap(),
        });
        let events = Events::new();
        let ctx = TaskContext {
            pool: pool.clone(),
            catalog: catalog.clone(),
            backends,
            backend_timeout: Duration::from_secs(5),
            retry_base: Duration::from_millis(10),
        };
        let runner = Runner::new(ctx, config, events.clone());
        Self {
            pool,
            sim,
            catalog,
            events,
            runner,
        }
    }

    /// Applies an executor in its own transaction and commits.
    pub async fn apply<E: Executor + Sync>(&self, executor: E) -> Result<Applied, ExecutorError> {
        let mut tx = self.pool.begin().await.unwrap();
        let applied = executor.apply(&mut tx).await?;
        tx.commit().await.unwrap();
        Ok(applied)
    }

    pub async fn create(&self, kind: &str, name: &str, attributes: Value) -> Applied {
        let create = Create::parse(&self.catalog, kind, name, attributes).unwrap();
        self.apply(create).await.unwrap()
    }

    pub async fn drain(&self) -> usize {
        self.runner
            .run_until_idle(Duration::from_secs(60))
            .await
            .unwrap()
    }

    pub async fn resource(&self, id: Uuid) -> Option<Resource> {
        let mut conn = self.pool.acquire().await.unwrap();
        executord::db::resources::get(&mut conn, id).await.unwrap()
    }

    pub async fn operation(&self, id: Uuid) -> Operation {
        let mut conn = self.pool.acquire().await.unwrap();
        executord::db::operations::get(&mut conn, id)
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn tasks(&self, operation_id: Uuid) -> Vec<Task> {
        let mut conn = self.pool.acquire().await.unwrap();
        executord::db::tasks::list_for_operation(&mut conn, operation_id)
            .await
            .unwrap()
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}
