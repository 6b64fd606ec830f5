//! Success and failure hooks, run in the transaction that records an
//! operation's last step.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::db;
use crate::db::operations::Operation;
use crate::db::resources::{Ending, Guard};
use crate::domain::{OperationKind, Queue, Transition};

/// The success hook: `set_ok` (with an action's runtime state on success), or
/// for a delete, the row is deleted. `Err` says why it could not be applied.
pub async fn on_success(
    conn: &mut PgConnection,
    catalog: &Catalog,
    operation: &Operation,
    task_id: Option<Uuid>,
) -> sqlx::Result<Result<(), String>> {
    if operation.kind == OperationKind::Delete {
        let deleted = db::resources::delete(conn, operation.resource_id, operation.id).await?;
        return Ok(deleted
            .then_some(())
            .ok_or_else(|| "the resource was no longer deleting under this operation".to_owned()));
    }
    let runtime_state = operation.action.as_deref().and_then(|action| {
        catalog
            .kind(&operation.resource_kind)
            .and_then(|kind| kind.actions.get(action))
            .and_then(|a| a.runtime_state_on_success.as_deref())
    });
    let ending = Ending {
        runtime_state,
        ends_operation: true,
        task_id,
        ..Ending::default()
    };
    let done = db::resources::transition(
        conn,
        operation.resource_id,
        Guard::Operation(operation.id),
        Transition::SetOk,
        &ending,
    )
    .await?;
    Ok(done
        .map(|_| ())
        .ok_or_else(|| "set_ok is not allowed from the resource's current state".to_owned()))
}

/// The failure hook: `set_erred` with the message (the backend's own, when it gave one).
pub async fn on_failure(
    conn: &mut PgConnection,
    operation: &Operation,
    message: &str,
    task_id: Option<Uuid>,
) -> sqlx::Result<()> {
    let ending = Ending {
        error_message: Some(message),
        ends_operation: true,
        task_id,
        ..Ending::default()
    };
    db::resources::transition(
        conn,
        operation.resource_id,
        Guard::Operation(operation.id),
        Transition::SetErred,
        &ending,
    )
    .await?;
    Ok(())
}

/// Whatever the ending: frees the operation's throttle slots, handing each to
/// the oldest waiter, and announces the end. Returns the queues that got work.
pub async fn release(conn: &mut PgConnection, operation_id: Uuid) -> sqlx::Result<Vec<Queue>> {
    let granted = db::throttle::release(conn, operation_id).await?;
    let queues = if granted.is_empty() {
        Vec::new()
    } else {
        db::tasks::wake(conn, &granted).await?
    };
    db::notify_finished(conn, operation_id).await?;
    Ok(queues)
}
