//! Shared fixtures: an engine over a real Postgres database (one per test,
//! from `#[sqlx::test]`), the simulated backend, and a runner to drive it.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

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
    pub ctx: TaskContext,
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
            backends: backends.and(catalog.declared_backends()),
            backend_timeout: Duration::from_secs(5),
            retry_base: Duration::from_millis(10),
        };
        let runner = Runner::new(ctx.clone(), config, events.clone());
        Self {
            ctx,
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

    /// One round by hand: claims up to `n` due tasks of `queue`, runs and records each.
    pub async fn step(&self, queue: executord::domain::Queue, n: i64) -> usize {
        let claimed = executord::db::tasks::claim(&self.pool, queue, n, 5000, "test")
            .await
            .unwrap();
        let n = claimed.len();
        for claimed in claimed {
            let task = claimed.task;
            let outcome =
                executord::tasks::run(&self.ctx, &task, claimed.target.map(|t| t.0)).await;
            let token = task.lease_token.unwrap();
            executord::runner::record::record(&self.pool, &self.catalog, task.id, token, outcome)
                .await
                .unwrap();
        }
        n
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

/// The real router over an engine, called with `oneshot`.
pub struct TestApp {
    pub engine: Engine,
    pub router: axum::Router,
}

pub struct Reply {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestApp {
    pub fn new(pool: PgPool) -> Self {
        Self::over(Engine::new(pool))
    }

    pub fn over(engine: Engine) -> Self {
        let router =
            executord::app::router(executord::app::AppState::from(executord::app::Shared {
                backends: engine.ctx.backends.clone(),
                ..executord::app::Shared::new(
                    engine.pool.clone(),
                    engine.catalog.clone(),
                    engine.events.clone(),
                )
            }));
        Self { engine, router }
    }

    pub async fn send(&self, request: axum::http::Request<axum::body::Body>) -> Reply {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut builder = axum::http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let body = match body {
            Some(json) => {
                builder = builder.header("content-type", "application/json");
                axum::body::Body::from(json.to_string())
            }
            None => axum::body::Body::empty(),
        };
        self.send(builder.body(body).unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None, &[]).await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Reply {
        self.call("POST", path, Some(&body), &[]).await
    }

    pub async fn patch_json(&self, path: &str, body: Value) -> Reply {
        self.call("PATCH", path, Some(&body), &[]).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.call("DELETE", path, None, &[]).await
    }

    pub async fn run_until_idle(&self) -> usize {
        self.engine.drain().await
    }

    /// Creates an instance through the API and drives it to `ok`; returns its id.
    pub async fn ok_instance(&self, name: &str) -> String {
        let created = self
            .post_json(
                "/api/v1/resources",
                serde_json::json!({"kind": "instance", "name": name, "attributes": {"tenant": "acme", "flavor": "small"}}),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.body);
        self.run_until_idle().await;
        created.body["id"].as_str().unwrap().to_owned()
    }
}
