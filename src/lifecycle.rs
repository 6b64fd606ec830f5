//! How an operation ends: the one place that writes it.
//!
//! Every ending goes through [`finish`]: the recorder's (a chain's last step
//! succeeded, or a step failed for good), a cancel by request, and the
//! sweeper's (an operation left with nothing that could move its resource).
//! In the caller's transaction it writes the resource's transition (the
//! success hook, or `set_erred` with the error), the operation's end, the
//! cancelled tail of its chain and the throttle slots handed on, and the
//! resource's history with the transition. It returns what to announce and,
//! once the caller has committed, what to log and count
//! ([`Finished::committed`]): an ending in a transaction that rolls back is
//! never counted.
//!
//! An operation whose tasks form a graph (a composite resource's, or one
//! with parallel branches) does not end at its first failure or at a cancel:
//! it winds down. It turns `compensating`, its pending steps are cancelled,
//! and its running steps are left to finish, so that what they make is
//! recorded, not lost. When none is left, its kind's compensation (for a
//! create) is appended and runs; when that is done too, it ends `failed` or
//! `cancelled`. Its children are then settled: undone or never made ones are
//! removed, the others erred or let go.

use std::collections::BTreeSet;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::db;
use crate::db::operations::Operation;
use crate::db::resources::{Guard, Owned};
use crate::domain::{OperationKind, OperationState, Queue, ResourceState, Transition};
use crate::executor::plan::{Children, Planner};

/// How an operation ends.
#[derive(Debug, Clone, Copy)]
pub enum Ending<'a> {
    /// Its chain's last step (`task_id`) succeeded: the success hook runs
    /// (`set_ok`, with an action's runtime state on success, or for a delete
    /// the row is deleted). If the hook cannot be applied, the operation
    /// fails instead.
    Succeeded {
        /// The operation.
        operation: &'a Operation,
        /// Its last step.
        task_id: Uuid,
    },
    /// It failed: the rest of its chain is cancelled and the resource errs
    /// with `error`.
    Failed {
        /// The operation.
        operation: &'a Operation,
        /// Why, shown on the operation and the resource.
        error: &'a str,
        /// The step that failed, if a step did.
        task_id: Option<Uuid>,
    },
    /// It was cancelled by request: a running step is fenced (its runner is
    /// told to stop), pending ones are cancelled, and the resource errs. A
    /// graph winds down instead.
    Cancelled {
        /// The operation.
        operation: &'a Operation,
    },
    /// A step of a `compensating` operation ended: once none is left to
    /// run, its compensation is appended, or it ends as it was to.
    Progressed {
        /// The operation.
        operation: &'a Operation,
    },
}

/// What [`finish`] did, to announce and, after the commit, to count.
#[derive(Debug, Default)]
#[must_use = "an ending is logged and counted by `committed` after the commit"]
pub struct Finished {
    /// Queues whose tasks became ready (throttle slots handed on).
    pub ready: BTreeSet<Queue>,
    /// The operations that ended.
    pub operations: Vec<Uuid>,
    /// Running steps fenced by a cancel, whose runners are told to stop.
    pub stopped: Vec<Uuid>,
    /// How each ended, for the log and the metrics.
    ended: Vec<Ended>,
    /// How many of `operations` have had their throttle slots freed.
    freed: usize,
}

/// One operation's end, told once its transaction committed.
#[derive(Debug)]
struct Ended {
    operation_id: Uuid,
    resource_id: Uuid,
    kind: OperationKind,
    state: OperationState,
    error: Option<String>,
}

impl Finished {
    /// Adds what another [`end`] did, whose slots are still held.
    pub fn extend(&mut self, other: Self) {
        debug_assert_eq!(other.freed, 0, "slots freed twice");
        self.ready.extend(other.ready);
        self.operations.extend(other.operations);
        self.stopped.extend(other.stopped);
        self.ended.extend(other.ended);
    }

    /// Logs each ending and counts it in `executord_operations_total`. Call
    /// once, after the transaction that ended them committed.
    pub fn committed(&self) {
        debug_assert_eq!(
            self.freed,
            self.operations.len(),
            "operations ended without their throttle slots freed"
        );
        for ended in &self.ended {
            crate::metrics::operation_finished(ended.kind, ended.state);
            let (operation_id, resource_id) = (ended.operation_id, ended.resource_id);
            match &ended.error {
                None => {
                    tracing::info!(%operation_id, %resource_id, state = %ended.state, "operation ended");
                }
                Some(error) => {
                    tracing::info!(%operation_id, %resource_id, state = %ended.state, %error, "operation ended");
                }
            }
        }
    }

    /// Sends the notifications of these endings in `conn`'s transaction
    /// (PostgreSQL delivers them on commit): ready queues, ended operations,
    /// fenced steps. The runner's recorder announces after its commit
    /// instead, batched ([`db::announce`]).
    pub async fn notify(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        for &queue in &self.ready {
            db::notify_ready(conn, queue).await?;
        }
        for &id in &self.operations {
            db::notify_finished(conn, id).await?;
        }
        for &task in &self.stopped {
            db::notify_cancel(conn, task).await?;
        }
        Ok(())
    }

    /// Frees the throttle slots of the operations that ended and were not
    /// freed yet, handing each to the oldest waiter of its scope; the
    /// queues that got work go to [`Finished::ready`]. A transaction frees
    /// the slots of all the operations it ended at once, at its end: their
    /// scopes are locked in name order in one statement (`db::throttle`),
    /// where freeing them at each ending could lock two scopes in an order
    /// another transaction locks the other way.
    pub async fn free_slots(&mut self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let ended = &self.operations[self.freed..];
        if ended.is_empty() {
            return Ok(());
        }
        let granted = db::throttle::release(conn, ended).await?;
        self.freed = self.operations.len();
        if !granted.is_empty() {
            self.ready.extend(db::tasks::wake(conn, &granted).await?);
        }
        Ok(())
    }

    fn ended(&mut self, operation: &Operation, state: OperationState, error: Option<&str>) {
        self.operations.push(operation.id);
        self.ended.push(Ended {
            operation_id: operation.id,
            resource_id: operation.resource_id,
            kind: operation.kind,
            state,
            error: error.map(str::to_owned),
        });
    }
}

/// Ends operations in the caller's transaction and frees their throttle
/// slots: [`end`], then [`Finished::free_slots`].
pub async fn finish(
    conn: &mut PgConnection,
    catalog: &Catalog,
    endings: &[Ending<'_>],
) -> sqlx::Result<Finished> {
    let mut finished = end(conn, catalog, endings).await?;
    finished.free_slots(conn).await?;
    Ok(finished)
}

/// Ends operations in the caller's transaction, their throttle slots still
/// held: the caller frees them ([`Finished::free_slots`]) before it commits.
/// Successes are applied a batch at a time; failures and cancels one by one.
/// An operation that has already ended is left as it is (its resource still
/// errs on a failure, when the resource is still under it: the sweeper's
/// case).
pub async fn end(
    conn: &mut PgConnection,
    catalog: &Catalog,
    endings: &[Ending<'_>],
) -> sqlx::Result<Finished> {
    let mut finished = Finished::default();
    let successes: Vec<(&Operation, Uuid)> = endings
        .iter()
        .filter_map(|e| match *e {
            Ending::Succeeded { operation, task_id } => Some((operation, task_id)),
            _ => None,
        })
        .collect();
    if !successes.is_empty() {
        succeed(conn, catalog, &successes, &mut finished).await?;
    }
    for ending in endings {
        match *ending {
            Ending::Succeeded { .. } => {}
            Ending::Failed {
                operation,
                error,
                task_id,
            } if !operation.graph => fail(conn, operation, error, task_id, &mut finished).await?,
            Ending::Failed {
                operation, error, ..
            } => {
                let ends_as = OperationState::Failed;
                wind_down(conn, catalog, operation, ends_as, error, &mut finished).await?;
            }
            Ending::Cancelled { operation } if !operation.graph => {
                cancel(conn, operation, &mut finished).await?;
            }
            Ending::Cancelled { operation } => {
                let ends_as = OperationState::Cancelled;
                wind_down(conn, catalog, operation, ends_as, CANCELLED, &mut finished).await?;
            }
            Ending::Progressed { operation } => {
                progress(conn, catalog, operation.id, &mut finished).await?;
            }
        }
    }
    Ok(finished)
}

/// Chains whose last step succeeded: the success hooks, then the operations'
/// end; an operation whose hook cannot be applied fails.
async fn succeed(
    conn: &mut PgConnection,
    catalog: &Catalog,
    ended: &[(&Operation, Uuid)],
    finished: &mut Finished,
) -> sqlx::Result<()> {
    let answers = on_success(conn, catalog, ended).await?;
    let mut succeeded = Vec::with_capacity(ended.len());
    for (&(operation, task_id), answer) in ended.iter().zip(answers) {
        match answer {
            Ok(()) => succeeded.push(operation),
            Err(error) => fail(conn, operation, error, Some(task_id), finished).await?,
        }
    }
    if succeeded.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = succeeded.iter().map(|o| o.id).collect();
    for operation in succeeded.iter().filter(|o| o.graph) {
        settle_children(conn, operation, None).await?;
    }
    db::operations::succeed_many(conn, &ids).await?;
    for operation in succeeded {
        finished.ended(operation, OperationState::Succeeded, None);
    }
    Ok(())
}

/// The success hooks, one answer per operation in order; `Err` says why it
/// could not be applied.
async fn on_success(
    conn: &mut PgConnection,
    catalog: &Catalog,
    ended: &[(&Operation, Uuid)],
) -> sqlx::Result<Vec<Result<(), &'static str>>> {
    let mut answers = vec![Ok(()); ended.len()];
    let (mut places, mut rows) = (Vec::new(), Vec::new());
    for (i, &(operation, task_id)) in ended.iter().enumerate() {
        if operation.kind == OperationKind::Delete {
            if !db::resources::delete(conn, operation.resource_id, operation.id).await? {
                answers[i] = Err("the resource was no longer deleting under this operation");
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
            answers[i] = Err("set_ok is not allowed from the resource's current state");
        }
    }
    Ok(answers)
}

/// A failure: the rest of the chain cancelled, the resource erred with the
/// message, the operation ended `failed`.
async fn fail(
    conn: &mut PgConnection,
    operation: &Operation,
    error: &str,
    task_id: Option<Uuid>,
    finished: &mut Finished,
) -> sqlx::Result<()> {
    db::tasks::cancel_pending(conn, operation.id).await?;
    set_erred(conn, operation, error, task_id).await?;
    if db::operations::finish(conn, operation.id, OperationState::Failed, Some(error)).await? {
        finished.ended(operation, OperationState::Failed, Some(error));
    }
    Ok(())
}

/// A cancel by request: the running step fenced, the pending ones
/// cancelled, the resource erred, the operation ended `cancelled`.
async fn cancel(
    conn: &mut PgConnection,
    operation: &Operation,
    finished: &mut Finished,
) -> sqlx::Result<()> {
    const WHY: &str = CANCELLED;
    let stopped = db::tasks::fence_running(conn, operation.id, "cancelled while running").await?;
    db::tasks::cancel_pending(conn, operation.id).await?;
    let message = format!("Operation {} was cancelled", operation.id);
    set_erred(conn, operation, &message, None).await?;
    if db::operations::finish(conn, operation.id, OperationState::Cancelled, Some(WHY)).await? {
        finished.stopped.extend(stopped);
        finished.ended(operation, OperationState::Cancelled, Some(WHY));
    }
    Ok(())
}

/// Why a cancelled operation ended.
const CANCELLED: &str = "cancelled by request";

/// A graph's failure or cancel: pending steps cancelled, the operation
/// `compensating` (the first reason kept), then [`progress`].
async fn wind_down(
    conn: &mut PgConnection,
    catalog: &Catalog,
    operation: &Operation,
    ends_as: OperationState,
    error: &str,
    finished: &mut Finished,
) -> sqlx::Result<()> {
    db::tasks::cancel_pending(conn, operation.id).await?;
    db::operations::wind_down(conn, operation.id, ends_as, error).await?;
    progress(conn, catalog, operation.id, finished).await
}

/// A `compensating` operation with nothing left to run: its compensation
/// is appended (a failed or cancelled create whose kind declares one, once),
/// or it ends.
async fn progress(
    conn: &mut PgConnection,
    catalog: &Catalog,
    id: Uuid,
    finished: &mut Finished,
) -> sqlx::Result<()> {
    let Some(operation) = db::operations::get(conn, id).await? else {
        return Ok(());
    };
    if operation.state != OperationState::Compensating
        || !db::tasks::count_pending(conn, &[id]).await?.is_empty()
    {
        return Ok(());
    }
    if operation.compensation_at.is_none() && operation.kind == OperationKind::Create {
        let tasks = plan_compensation(conn, catalog, &operation).await?;
        if !tasks.is_empty() {
            let queues: Vec<Queue> = tasks
                .iter()
                .filter(|t| t.blocked_by == 0)
                .map(|t| t.queue)
                .collect();
            db::operations::add_compensation(conn, &operation, tasks).await?;
            finished.ready.extend(queues);
            tracing::info!(operation_id = %id, "operation compensating: undoing what it made");
            return Ok(());
        }
    }
    let ends_as = operation.ends_as.unwrap_or(OperationState::Failed);
    let error = operation
        .error
        .clone()
        .unwrap_or_else(|| "failed".to_owned());
    let message = if ends_as == OperationState::Cancelled {
        format!("Operation {id} was cancelled")
    } else {
        error.clone()
    };
    set_erred(conn, &operation, &message, None).await?;
    settle_children(conn, &operation, Some(&message)).await?;
    if db::operations::finish(conn, id, ends_as, Some(&error)).await? {
        finished.ended(&operation, ends_as, Some(&error));
    }
    Ok(())
}

/// The kind's compensation for `operation`'s resource and the children it
/// holds, as tasks numbered after its own; none if the kind declares none.
async fn plan_compensation(
    conn: &mut PgConnection,
    catalog: &Catalog,
    operation: &Operation,
) -> sqlx::Result<Vec<db::tasks::NewTask>> {
    let Some(kind) = catalog.kind(&operation.resource_kind) else {
        return Ok(Vec::new());
    };
    if kind.compensate.is_empty() {
        return Ok(Vec::new());
    }
    let mut children = Children::new();
    for child in db::resources::lock_held_children(conn, operation.id).await? {
        children
            .entry(child.role.unwrap_or_default())
            .or_default()
            .push(child.id);
    }
    let existing = usize::try_from(operation.step_count).unwrap_or(0);
    let mut planner = Planner::compensation(catalog, &children, kind.queue, existing);
    match planner.chain(operation.resource_id, kind, None, &kind.compensate) {
        Ok(()) => Ok(planner.finish()),
        Err(e) => {
            tracing::error!(operation_id = %operation.id, error = %e, "the compensation cannot be planned");
            Ok(Vec::new())
        }
    }
}

/// Settles the children an ended composite operation holds, then lets them
/// go. On success (`failure` is `None`), a delete's children are removed and
/// the others left as their chains made them. On failure, once compensation
/// ran, the undone ones are removed and those whose undo failed stay
/// `erred`; without compensation those in flight err (and a retry takes
/// them up again).
async fn settle_children(
    conn: &mut PgConnection,
    operation: &Operation,
    failure: Option<&str>,
) -> sqlx::Result<()> {
    let id = operation.id;
    for child in db::resources::lock_held_children(conn, id).await? {
        match failure {
            None if operation.kind == OperationKind::Delete => {
                db::resources::remove_child(conn, child.id, id, "deleted with its parent").await?;
            }
            None => {}
            // A forced delete forgets the children with their parent.
            Some(message) if forgets_on_failure(operation).is_some() => {
                let reason = format!("forgotten with its parent: {message}");
                db::resources::remove_child(conn, child.id, id, &reason).await?;
            }
            // Its undo failed: it stays `erred`, with the undo's message.
            Some(_)
                if operation.compensation_at.is_some() && child.state == ResourceState::Erred => {}
            Some(message) if operation.compensation_at.is_some() => {
                let reason = format!("undone: {message}");
                db::resources::remove_child(conn, child.id, id, &reason).await?;
            }
            Some(message) if child.state.is_transitional() => {
                let why = format!("operation {id} of its parent failed: {message}");
                let ending = db::resources::Ending {
                    error_message: Some(&why),
                    ..db::resources::Ending::default()
                };
                let guard = Guard::Operation(id);
                db::resources::transition(conn, child.id, guard, Transition::SetErred, &ending)
                    .await?;
            }
            Some(_) => {}
        }
    }
    db::resources::release_held(conn, id).await
}

/// The failure hook: `set_erred` with the message (the backend's own, when
/// it gave one), if the resource is still under this operation. An import
/// and a forced delete forget the resource instead
/// ([`forgets_on_failure`]): the row goes, its history
/// (with the failure) stays.
async fn set_erred(
    conn: &mut PgConnection,
    operation: &Operation,
    message: &str,
    task_id: Option<Uuid>,
) -> sqlx::Result<()> {
    if let Some(transition) = forgets_on_failure(operation) {
        let why = db::reconcile::Forget {
            transition,
            reason: message,
            details: None,
            task_id,
        };
        let guard = db::reconcile::ForgetGuard::Operation(operation.id);
        db::reconcile::forget(conn, operation.resource_id, guard, &why).await?;
        return Ok(());
    }
    let ending = db::resources::Ending {
        error_message: Some(message),
        ends_operation: true,
        task_id,
        ..db::resources::Ending::default()
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

/// Whether a failed (or cancelled) `operation` forgets its resource rather
/// than erring it, and the history's name for that: an import leaves no
/// resource behind (`import_failed`), nor does a delete forced by an admin
/// (`force_delete`, its request has `"force": true`).
pub fn forgets_on_failure(operation: &Operation) -> Option<&'static str> {
    match operation.kind {
        OperationKind::Import => Some("import_failed"),
        OperationKind::Delete
            if operation
                .request
                .get("force")
                .and_then(serde_json::Value::as_bool)
                == Some(true) =>
        {
            Some("force_delete")
        }
        _ => None,
    }
}
