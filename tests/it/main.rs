//! executord's integration tests, in one binary (one build, one link):
//! every test that touches data runs on real PostgreSQL, HTTP tests go
//! through the real router, and crash tests run the real binary.
//!
//! - `engine`, `controls`, `jobs`: the runner, chains, operator controls and
//!   periodic jobs;
//! - `api`, `auth`, `metrics`: the HTTP API through the real router;
//! - `exec_backend`, `http_backend`: the drivers of catalog-declared
//!   backends, the PostgreSQL example and the fake cloud;
//! - `rabbitmq`: the RabbitMQ example's request templates against a real
//!   RabbitMQ (started by scripts/test);
//! - `kept`: the connections the API keeps between requests;
//! - `system`: the operator views and the console's routes;
//! - `e2e`: the binary on its embedded database, the README's tour, CLI
//!   commands beside a live service;
//! - `crash`: kill -9, database restarts, SIGTERM, racing and slow clients
//!   (docs/RELIABILITY.md); they run one at a time (`.config/nextest.toml`).
#![allow(clippy::unwrap_used, clippy::needless_pass_by_value)] // tests may unwrap

mod support;

mod api;
mod auth;
mod composite;
mod controls;
mod crash;
mod e2e;
mod engine;
mod exec_backend;
mod http_backend;
mod jobs;
mod kept;
mod metrics;
mod push;
mod rabbitmq;
mod reconcile;
mod system;
