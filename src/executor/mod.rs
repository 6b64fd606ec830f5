//! Executors: one logical operation on a resource, applied inside the
//! caller's transaction.
//!
//! `apply` locks the resource, checks its state, makes the scheduling
//! transition, and inserts the operation and its chain of tasks, with a
//! NOTIFY that Postgres delivers only on commit. The caller commits: a
//! rolled-back request leaves no trace, and a committed one can never lose
//! its chain. The success and failure hooks run later, in the transaction
//! that records the last step ([`crate::lifecycle`]).

mod action;
pub mod control;
mod create;
mod delete;
mod import;
pub mod overrides;
pub mod plan;
mod pull;
mod update;

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::catalog::{Catalog, Form, Kind, Step};
use crate::db;
use crate::db::operations::{NewOperation, Operation};
use crate::db::resources::Resource;
use crate::db::tasks::NewTask;
use crate::domain::{FieldError, OperationKind, Queue, ResourceState, Transition};

pub use action::Action;
pub use create::Create;
pub use delete::Delete;
pub use import::Import;
pub use pull::{Pull, pull_step};
pub use update::Update;

/// Claims a step may use before it fails for good, unless the step says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 5;

/// Why an executor refused to apply.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The resource (or action) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The input is invalid; each entry points at a field.
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// The resource is not in a state (or runtime state) that allows this operation.
    #[error("{0}")]
    Conflict(String),
    /// The caller's `If-Match` version is not the resource's.
    #[error("the resource is at version {current}, not {expected}")]
    VersionMismatch {
        /// The version the caller expected.
        expected: i64,
        /// The resource's version.
        current: i64,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What an executor's `pre_apply` decided.
#[derive(Debug)]
pub struct Prepared {
    /// The resource after its scheduling transition.
    pub resource: Resource,
    /// The operation's task graph, its `begin_*` step first.
    pub tasks: Vec<NewTask>,
    /// Whether it holds children of its resource.
    pub composite: bool,
    /// The queue the chain runs on.
    pub queue: Queue,
    /// The validated input, stored on the operation and passed to backend calls.
    pub request: Value,
    /// The action's name, for actions.
    pub action: Option<String>,
}

/// What a committed apply produced.
#[derive(Debug)]
pub struct Applied {
    /// The resource after its scheduling transition.
    pub resource: Resource,
    /// The operation, in `scheduled`.
    pub operation: Operation,
}

/// A logical operation on a resource.
pub trait Executor {
    /// Which executor this is.
    const KIND: OperationKind;
    /// The transition its first step makes.
    const BEGIN: Transition;

    /// Locks and checks the resource and makes the scheduling transition, for `operation_id`.
    fn pre_apply(
        &self,
        conn: &mut PgConnection,
        operation_id: Uuid,
    ) -> impl Future<Output = Result<Prepared, ExecutorError>> + Send;

    /// Does everything inside the caller's transaction; the caller commits.
    fn apply(
        &self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = Result<Applied, ExecutorError>> + Send
    where
        Self: Sync,
    {
        async move {
            let operation_id = Uuid::now_v7();
            let prepared = self.pre_apply(conn, operation_id).await?;
            let operation = db::operations::insert(
                conn,
                &NewOperation {
                    id: operation_id,
                    tenant: &prepared.resource.tenant,
                    resource_id: prepared.resource.id,
                    resource_kind: &prepared.resource.kind,
                    kind: Self::KIND,
                    action: prepared.action.as_deref(),
                    request: &prepared.request,
                    composite: prepared.composite,
                },
                prepared.tasks,
                prepared.queue,
            )
            .await?;
            tracing::info!(
                resource_id = %prepared.resource.id,
                operation_id = %operation_id,
                kind = ?Self::KIND,
                "operation scheduled"
            );
            Ok(Applied {
                resource: prepared.resource,
                operation,
            })
        }
    }
}

fn new_task(step: &Step, queue: Queue) -> Result<NewTask, ExecutorError> {
    let max_attempts = match step {
        Step::BackendMethod {
            max_attempts: Some(n),
            ..
        } => *n,
        _ => DEFAULT_MAX_ATTEMPTS,
    };
    let args = serde_json::to_value(step)
        .map_err(|e| ExecutorError::Conflict(format!("unstorable step: {e}")))?;
    Ok(NewTask {
        task_type: step.type_name(),
        args,
        queue,
        max_attempts,
        resource_id: Uuid::nil(),
        next: Vec::new(),
        blocked_by: 0,
        undo: false,
    })
}

/// The task graph of `chain` on `resource` (of `kind`, with `children`),
/// after its `begin` step.
fn plan(
    catalog: &Catalog,
    kind: &Kind,
    resource: Uuid,
    children: &plan::Children,
    begin: Transition,
    chain: &[Form],
    queue: Queue,
) -> Result<Vec<NewTask>, ExecutorError> {
    let mut planner = plan::Planner::new(catalog, children, queue);
    planner.chain(resource, kind, Some(begin), chain)?;
    Ok(planner.finish())
}

/// Puts a composite resource's children under `operation_id` (for a delete,
/// scheduled for deletion too), so none can be changed by itself while it
/// runs; returns them by role. A child with an operation of its own in
/// flight is a 409.
async fn hold_children(
    conn: &mut PgConnection,
    parent: &Resource,
    operation_id: Uuid,
    delete: bool,
) -> Result<plan::Children, ExecutorError> {
    let mut children = plan::Children::new();
    for child in db::resources::lock_children(conn, parent.id).await? {
        if let Some(op) = child.current_operation_id {
            return Err(ExecutorError::Conflict(format!(
                "its child {} ({}) has operation {op} in flight",
                child.id, child.kind
            )));
        }
        let held = if delete {
            schedule(
                conn,
                &child,
                Transition::ScheduleDeleting,
                &db::resources::Schedule {
                    operation_id,
                    ..db::resources::Schedule::default()
                },
            )
            .await?
        } else {
            db::resources::hold(conn, child.id, operation_id).await?;
            child
        };
        let role = held.role.clone().unwrap_or_default();
        children.entry(role).or_default().push(held.id);
    }
    Ok(children)
}

/// Locks the resource `id` if `scope` may see it, checking `If-Match` when given.
async fn lock_resource(
    conn: &mut PgConnection,
    id: Uuid,
    scope: Option<&str>,
    if_match: Option<i64>,
) -> Result<Resource, ExecutorError> {
    let resource = db::resources::lock_in(conn, id, scope)
        .await?
        .ok_or_else(|| ExecutorError::NotFound(format!("no resource with id {id}")))?;
    if let Some(expected) = if_match
        && expected != resource.version
    {
        return Err(ExecutorError::VersionMismatch {
            expected,
            current: resource.version,
        });
    }
    if let (Some(op), false) = (
        resource.current_operation_id,
        resource.state.is_transitional(),
    ) {
        let parent = resource
            .parent_id
            .map_or_else(String::new, |p| format!(" (its parent {p})"));
        return Err(ExecutorError::Conflict(format!(
            "Resource is held by operation {op} of another resource{parent}, in flight"
        )));
    }
    Ok(resource)
}

/// The 409 for a resource whose state does not allow the operation.
fn wrong_state(resource: &Resource, valid: &[ResourceState]) -> ExecutorError {
    let valid: Vec<&str> = valid.iter().map(|s| s.as_str()).collect();
    let in_flight = match resource.current_operation_id {
        Some(op) if resource.state.is_transitional() => format!(" (operation {op} is in flight)"),
        _ => String::new(),
    };
    ExecutorError::Conflict(format!(
        "Resource is {}{in_flight}. Valid states for operation: {}",
        resource.state,
        valid.join(", ")
    ))
}

/// Applies a scheduling transition to a locked resource, or the 409 that says why not.
async fn schedule(
    conn: &mut PgConnection,
    resource: &Resource,
    transition: Transition,
    schedule: &db::resources::Schedule<'_>,
) -> Result<Resource, ExecutorError> {
    if transition.apply(resource.state).is_none() {
        return Err(wrong_state(resource, transition.sources()));
    }
    db::resources::schedule(conn, resource.id, transition, schedule)
        .await?
        .ok_or_else(|| wrong_state(resource, transition.sources()))
}
