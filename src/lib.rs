//! executord runs *executors*: logical operations on resources (create,
//! update, delete, and named actions such as start, stop, resize), each a
//! durable chain of tasks against a backend, with the resource's state kept
//! right whatever happens.
//!
//! The chain is rows written in the request's own transaction, so a
//! rolled-back request leaves nothing behind and a committed one can never
//! lose its chain. Runners claim ready rows with `FOR UPDATE SKIP LOCKED`,
//! hold them under fenced leases, and record each outcome, the resource change
//! it causes and the release of the next step in one transaction.
//!
//! Dependencies point one way: `api → executor → db → domain`;
//! `runner → tasks → backend`. How an operation ends is written in one
//! place, [`lifecycle`], which the executor's controls, the runner's
//! recorder and the sweeper share.

pub mod api;
pub mod app;
pub mod auth;
pub mod backend;
pub mod catalog;
pub mod config;
pub mod db;
pub mod domain;
pub mod embedded;
pub mod events;
pub mod executor;
pub mod fakecloud;
pub mod lifecycle;
pub mod metrics;
pub mod push;
pub mod runner;
pub mod server;
pub mod tasks;
pub mod ui;
