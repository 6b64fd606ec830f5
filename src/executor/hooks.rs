//! Success and failure hooks, run in the transaction that records an
//! operation's last step.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::db;
use crate::db::operations::Operation;
use crate::db::resources::{Ending, Guard, Owned};
use crate::domain::{OperationKind, Queue, Transition};

/// The success hooks of operations whose last step succeeded (each with
/// that step's task): `set_ok` (with an action's runtime state on success),
/// or for a delete, the row is deleted. One answer per operation, in order;
/// `Err` says why it could not be applied.
pub async fn on_success(
    conn: &mut PgConnection,
    catalog: &Catalog,
    ended: &[(&Operation, Uuid)],
) -> sqlx::Result<Vec<Result<(), String>>> {
    let mut answers = vec![Ok(()); ended.len()];
    let (mut places, mut rows) = (Vec::new(), Vec::new());
    for (i, &(operation, task_id)) in ended.iter().enumerate() {
        if operation.kind == OperationKind::Delete {
            if !db::resources::delete(conn, operation.resource_id, operation.id).await? {
                answers[i] = Err("the resource was no longer deleting under this operation".into());
            }
            continue;
        }
        let runtime_state = operation.action.as_deref().and_then(|action| {
            catalog
                .kind(&operation.resource_kind)
                .and_then(|kind| kind.actions.get(action))
                .and_then(|a| a.runtime_state_on_success.as_deref())
        });
        places.push(i);
        rows.push(Owned {
            resource_id: operation.resource_id,
            operation_id: operation.id,
            task_id,
            runtime_state,
        });
    }
    if rows.is_empty() {
        return Ok(answers);
    }
    let applied = db::resources::transition_many(conn, Transition::SetOk, true, &rows).await?;
    for (i, row) in places.into_iter().zip(&rows) {
        if !applied.contains(&row.resource_id) {
            answers[i] = Err("set_ok is not allowed from the resource's current state".into());
        }
    }
    Ok(answers)
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

/// Whatever the ending: frees the operations' throttle slots, handing each
/// to the oldest waiter. Returns the queues that got work. Announcing the
/// ends is the caller's part.
pub async fn release(conn: &mut PgConnection, operation_ids: &[Uuid]) -> sqlx::Result<Vec<Queue>> {
    let granted = db::throttle::release(conn, operation_ids).await?;
    if granted.is_empty() {
        return Ok(Vec::new());
    }
    db::tasks::wake(conn, &granted).await
}
