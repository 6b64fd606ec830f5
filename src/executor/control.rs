//! Operator controls on a whole operation: cancel one that is scheduled or
//! running, retry one that failed from its failed step.
//!
//! Both lock the operation's tasks before the operation row, the order the
//! runner's recording transaction uses, so they never deadlock with it.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::ExecutorError;
use crate::catalog::{Catalog, Step};
use crate::db;
use crate::db::operations::Operation;
use crate::domain::{OperationKind, OperationState, ResourceState, TaskState};
use crate::lifecycle::{self, Ending, Finished};

async fn lock_operation(
    conn: &mut PgConnection,
    id: Uuid,
    scope: Option<&str>,
) -> Result<(Vec<db::tasks::Task>, Operation), ExecutorError> {
    let missing = || ExecutorError::NotFound(format!("no operation with id {id}"));
    // Checked before any lock is taken, so another tenant cannot make us wait.
    db::operations::get_in(conn, id, scope)
        .await?
        .ok_or_else(missing)?;
    let tasks = db::tasks::lock_for_operation(conn, id).await?;
    let operation = db::operations::lock(conn, id).await?.ok_or_else(missing)?;
    Ok((tasks, operation))
}

/// Cancels a scheduled or running operation: pending tasks are cancelled, a
/// running one is fenced (its runner is told to stop, and its outcome would
/// be refused), the resource ends `erred`, and throttle slots are handed on.
/// The caller commits, then calls [`Finished::committed`].
pub async fn cancel(
    conn: &mut PgConnection,
    catalog: &Catalog,
    id: Uuid,
    scope: Option<&str>,
) -> Result<(Operation, Finished), ExecutorError> {
    let (_, operation) = lock_operation(conn, id, scope).await?;
    if operation.state == OperationState::Compensating {
        return Err(ExecutorError::Conflict(
            "Operation is compensating: it is already winding down".into(),
        ));
    }
    if operation.state.is_finished() {
        return Err(ExecutorError::Conflict(format!(
            "Operation is {}; only a scheduled or running operation can be cancelled",
            operation.state
        )));
    }
    let finished = lifecycle::finish(
        conn,
        catalog,
        &[Ending::Cancelled {
            operation: &operation,
        }],
    )
    .await?;
    finished.notify(conn).await?;
    let operation = db::operations::get(conn, id).await?.unwrap_or(operation);
    Ok((operation, finished))
}

/// Runs a failed operation again from its failed step; the steps before it
/// keep their results. The resource must still be `erred` and untouched
/// since: nothing in flight and no later operation.
pub async fn retry(
    conn: &mut PgConnection,
    id: Uuid,
    scope: Option<&str>,
) -> Result<Operation, ExecutorError> {
    let (tasks, operation) = lock_operation(conn, id, scope).await?;
    if operation.state != OperationState::Failed {
        return Err(ExecutorError::Conflict(format!(
            "Operation is {}; only a failed operation can be retried",
            operation.state
        )));
    }
    if let Some(at) = operation.compensation_at {
        return Err(ExecutorError::Conflict(format!(
            "Its compensation ran (from step {at}): what it made was undone, so it cannot \
             go on from its failed step. Delete the resource and create it again"
        )));
    }
    let untouched = |why: &str| {
        ExecutorError::Conflict(format!("The resource was changed since the failure: {why}"))
    };
    let resource = db::resources::lock(conn, operation.resource_id)
        .await?
        .ok_or_else(|| untouched("it is gone"))?;
    if resource.state != ResourceState::Erred || resource.current_operation_id.is_some() {
        return Err(untouched(&format!("it is {}", resource.state)));
    }
    if db::operations::has_later(conn, resource.id, id).await? {
        return Err(untouched("a later operation ran on it"));
    }
    let failed = tasks
        .iter()
        .find(|t| t.state == TaskState::Failed)
        .ok_or_else(|| ExecutorError::Conflict("the operation has no failed step".into()))?;
    let details = (operation.kind == OperationKind::Action).then_some(&operation.request);
    let state = resumed_state(operation.kind, &tasks, resource.id);
    db::resources::resume(
        conn,
        resource.id,
        resource.version,
        id,
        state,
        operation.action.as_deref(),
        details,
    )
    .await?
    .ok_or_else(|| untouched("it moved on"))?;
    if operation.graph {
        for child in db::resources::lock_children(conn, resource.id).await? {
            if child.current_operation_id.is_some() {
                return Err(untouched(&format!("its child {} is in flight", child.id)));
            }
            let acted_on = tasks.iter().any(|t| t.resource_id == Some(child.id));
            if child.state == ResourceState::Erred && acted_on {
                let state = resumed_state(operation.kind, &tasks, child.id);
                db::resources::resume(conn, child.id, child.version, id, state, None, None)
                    .await?
                    .ok_or_else(|| untouched("a child moved on"))?;
            } else {
                db::resources::hold(conn, child.id, id).await?;
            }
        }
    }
    // Slots were freed when the operation failed: take them again before
    // going on (their scopes locked first, in name order).
    let mut throttles = Vec::new();
    for throttle in tasks
        .iter()
        .filter(|t| t.position < failed.position && t.state == TaskState::Succeeded)
    {
        let Ok(Step::Throttle { limit, .. }) = serde_json::from_value(throttle.args.clone()) else {
            continue;
        };
        // The scope's name was stored when the slot was granted; its tenant is the operation's.
        let Some(name) = throttle
            .result
            .as_ref()
            .and_then(|r| r.get("scope"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let scope = db::throttle::Scope {
            tenant: operation.tenant.clone(),
            name: name.to_owned(),
        };
        throttles.push((throttle, scope, limit));
    }
    if !throttles.is_empty() {
        let keys: Vec<String> = throttles.iter().map(|(_, scope, _)| scope.key()).collect();
        db::throttle::lock_scopes(conn, &keys, &[]).await?;
    }
    let mut parked = false;
    for (throttle, scope, limit) in throttles {
        let acquired = db::throttle::acquire(conn, &scope, id, throttle.id, limit).await?;
        if let Some(status) = acquired.waiting_status(&scope, limit) {
            db::tasks::reopen(conn, throttle.id, TaskState::Waiting, &status).await?;
            parked = true;
        }
    }
    let (next, status) = if parked {
        (TaskState::Waiting, "retried; waiting for its throttle slot")
    } else {
        (TaskState::Ready, "retried")
    };
    for task in tasks.iter().filter(|t| t.state == TaskState::Failed) {
        db::tasks::reopen(conn, task.id, next, status).await?;
    }
    db::tasks::reopen_cancelled(conn, id).await?;
    let operation = db::operations::reopen(conn, id).await?;
    if !parked {
        db::notify_ready(conn, failed.queue).await?;
    }
    tracing::info!(operation_id = %id, from_step = failed.position, "operation retried");
    Ok(operation)
}

/// The state a retry puts `resource` back in: where its first transition in
/// the operation's `tasks` took it, or the scheduled state before it if
/// that transition did not run.
fn resumed_state(kind: OperationKind, tasks: &[db::tasks::Task], resource: Uuid) -> ResourceState {
    let began = tasks
        .iter()
        .find(|t| t.resource_id == Some(resource) && t.task_type == "state_transition")
        .is_some_and(|t| t.state == TaskState::Succeeded);
    match (kind, began) {
        (OperationKind::Create | OperationKind::Import, false) => ResourceState::CreationScheduled,
        (OperationKind::Create | OperationKind::Import, true) => ResourceState::Creating,
        (OperationKind::Update | OperationKind::Action | OperationKind::Pull, false) => {
            ResourceState::UpdateScheduled
        }
        (OperationKind::Update | OperationKind::Action | OperationKind::Pull, true) => {
            ResourceState::Updating
        }
        (OperationKind::Delete, false) => ResourceState::DeletionScheduled,
        (OperationKind::Delete, true) => ResourceState::Deleting,
    }
}
