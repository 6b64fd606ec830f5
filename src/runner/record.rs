//! Recording an outcome: the task row, the resource change it causes, the
//! release of the next step, and at the chain's end the operation's hook,
//! all in one transaction fenced by the lease token.

use std::collections::BTreeSet;

use anyhow::Context;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::db;
use crate::db::operations::Operation;
use crate::db::resources::{Ending, Guard};
use crate::db::tasks::Task;
use crate::db::throttle::Acquired;
use crate::domain::{OperationState, Queue, TaskState};
use crate::executor::hooks;
use crate::tasks::Outcome;

/// What recording did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The outcome was applied.
    Applied,
    /// The lease had passed to another holder: the outcome was refused.
    Fenced,
}

enum Decision {
    Done(Option<serde_json::Value>),
    Reschedule {
        delay_ms: i64,
        counts_as_attempt: bool,
        status: Option<String>,
        error: Option<String>,
    },
    Park(String),
    Fail(String),
}

/// Who goes on with the next step at once, when it is on the same queue.
#[derive(Debug, Clone, Copy)]
pub struct Continue<'a> {
    /// The lease to take on the next step.
    pub lease_ms: i64,
    /// The runner taking it.
    pub worker: &'a str,
}

/// Applies `outcome` of the task held under `token`, in one transaction.
pub async fn record(
    pool: &sqlx::PgPool,
    catalog: &Catalog,
    task_id: Uuid,
    token: Uuid,
    outcome: Outcome,
) -> anyhow::Result<Recorded> {
    Ok(
        record_and_continue(pool, catalog, task_id, token, outcome, None)
            .await?
            .0,
    )
}

/// Like [`record`]; and when the step succeeded and the next one runs on the
/// same queue, claims it in the same transaction for `cont`, which then runs
/// it at once (a crash after the commit leaves it leased, so it is not lost).
pub async fn record_and_continue(
    pool: &sqlx::PgPool,
    catalog: &Catalog,
    task_id: Uuid,
    token: Uuid,
    outcome: Outcome,
    cont: Option<Continue<'_>>,
) -> anyhow::Result<(Recorded, Option<Task>)> {
    let mut tx = pool
        .begin()
        .await
        .context("beginning the outcome transaction")?;
    let Some(task) = db::tasks::lock_held(&mut tx, task_id, token).await? else {
        return Ok((Recorded::Fenced, None));
    };
    let Some(operation_id) = task.operation_id else {
        record_job(&mut tx, &task, outcome).await?;
        tx.commit().await.context("committing the job's outcome")?;
        return Ok((Recorded::Applied, None));
    };
    let operation = db::operations::get(&mut tx, operation_id)
        .await?
        .context("the task's operation is missing")?;
    let decision = decide(&mut tx, &task, &operation, outcome).await?;
    let mut ready = BTreeSet::new();
    let mut next = None;
    match decision {
        Decision::Done(result) => {
            db::tasks::finish(
                &mut tx,
                task.id,
                TaskState::Succeeded,
                result.as_ref(),
                None,
            )
            .await?;
            db::operations::step_done(&mut tx, operation.id).await?;
            if let Some(cont) = cont {
                next = db::tasks::claim_next(
                    &mut tx,
                    operation.id,
                    task.position,
                    task.queue,
                    cont.lease_ms,
                    cont.worker,
                )
                .await?;
            }
            if next.is_none() {
                match db::tasks::release_next(&mut tx, operation.id, task.position).await? {
                    Some(queue) => {
                        ready.insert(queue);
                    }
                    None => succeed(&mut tx, catalog, &operation, task.id, &mut ready).await?,
                }
            }
        }
        Decision::Reschedule {
            delay_ms,
            counts_as_attempt,
            status,
            error,
        } => {
            db::tasks::reschedule(
                &mut tx,
                task.id,
                delay_ms,
                counts_as_attempt,
                status.as_deref(),
                error.as_deref(),
            )
            .await?;
            if delay_ms == 0 {
                ready.insert(task.queue);
            }
        }
        Decision::Park(status) => {
            db::tasks::park(&mut tx, task.id, &status).await?;
            crate::metrics::throttle_waited();
        }
        Decision::Fail(error) => {
            tracing::warn!(task_id = %task.id, operation_id = %operation.id, %error, "step failed");
            db::tasks::finish(&mut tx, task.id, TaskState::Failed, None, Some(&error)).await?;
            fail(&mut tx, &operation, &error, Some(task.id), &mut ready).await?;
        }
    }
    for queue in ready {
        db::notify_ready(&mut tx, queue).await?;
    }
    tx.commit().await.context("committing the outcome")?;
    Ok((Recorded::Applied, next))
}

async fn decide(
    conn: &mut PgConnection,
    task: &Task,
    operation: &Operation,
    outcome: Outcome,
) -> anyhow::Result<Decision> {
    Ok(match outcome {
        Outcome::Transition(transition) => {
            let ending = Ending {
                task_id: Some(task.id),
                ..Ending::default()
            };
            let done = db::resources::transition(
                conn,
                operation.resource_id,
                Guard::Operation(operation.id),
                transition,
                &ending,
            )
            .await?;
            match done {
                Some(_) => Decision::Done(None),
                None => {
                    let state = db::resources::get(conn, operation.resource_id)
                        .await?
                        .map_or_else(|| "gone".to_owned(), |r| r.state.to_string());
                    Decision::Fail(format!(
                        "{transition} is not allowed: the resource is {state}"
                    ))
                }
            }
        }
        Outcome::Throttle { scope, limit } => {
            match db::throttle::acquire(conn, &scope, operation.id, task.id, limit).await? {
                Acquired::Granted => Decision::Done(Some(json!({"scope": scope}))),
                Acquired::Queued { held, position } => Decision::Park(format!(
                    "waiting for a throttle slot: {held}/{limit} in use for {scope} (place {position} in line)"
                )),
            }
        }
        Outcome::Done(reply) => {
            store_reply(conn, operation, &reply).await?;
            Decision::Done(reply_json(&reply))
        }
        Outcome::Poll {
            reply,
            delay,
            status,
        } => {
            store_reply(conn, operation, &reply).await?;
            Decision::Reschedule {
                delay_ms: i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
                counts_as_attempt: false,
                status: Some(status),
                error: None,
            }
        }
        Outcome::Retry { error, delay } => Decision::Reschedule {
            delay_ms: i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
            counts_as_attempt: true,
            status: Some(format!("retrying in {delay:.1?} after a transient failure")),
            error: Some(error),
        },
        Outcome::Fail(error) => Decision::Fail(error),
        Outcome::JobDone(_) => Decision::Fail("a job outcome for an operation's step".into()),
        Outcome::Erred(reply, error) => {
            store_reply(conn, operation, &reply).await?;
            Decision::Fail(error)
        }
    })
}

async fn store_reply(
    conn: &mut PgConnection,
    operation: &Operation,
    reply: &crate::backend::BackendReply,
) -> sqlx::Result<()> {
    if reply.backend_id.is_none() && reply.runtime_state.is_none() && reply.attributes.is_none() {
        return Ok(());
    }
    db::resources::record_backend_reply(
        conn,
        operation.resource_id,
        reply.backend_id.as_deref(),
        reply.runtime_state.as_deref(),
        reply.attributes.as_ref(),
    )
    .await
}

fn reply_json(reply: &crate::backend::BackendReply) -> Option<serde_json::Value> {
    let mut out = serde_json::Map::new();
    if let Some(id) = &reply.backend_id {
        out.insert("backend_id".into(), json!(id));
    }
    if let Some(rs) = &reply.runtime_state {
        out.insert("runtime_state".into(), json!(rs));
    }
    if let Some(attributes) = &reply.attributes {
        out.insert("attributes".into(), json!(attributes));
    }
    if let Some(done) = reply.done {
        out.insert("done".into(), json!(done));
    }
    (!out.is_empty()).then_some(serde_json::Value::Object(out))
}

/// The last step succeeded: run the success hook and end the operation.
async fn succeed(
    conn: &mut PgConnection,
    catalog: &Catalog,
    operation: &Operation,
    task_id: Uuid,
    ready: &mut BTreeSet<Queue>,
) -> anyhow::Result<()> {
    match hooks::on_success(conn, catalog, operation, Some(task_id)).await? {
        Ok(()) => {
            db::operations::finish(conn, operation.id, OperationState::Succeeded, None).await?;
            crate::metrics::operation_finished(operation.kind, OperationState::Succeeded);
            ready.extend(hooks::release(conn, operation.id).await?);
            tracing::info!(operation_id = %operation.id, resource_id = %operation.resource_id, "operation succeeded");
        }
        Err(error) => fail(conn, operation, &error, Some(task_id), ready).await?,
    }
    Ok(())
}

/// A step failed for good: cancel the rest, run the failure hook, end the operation.
async fn fail(
    conn: &mut PgConnection,
    operation: &Operation,
    error: &str,
    task_id: Option<Uuid>,
    ready: &mut BTreeSet<Queue>,
) -> anyhow::Result<()> {
    db::tasks::cancel_pending(conn, operation.id).await?;
    hooks::on_failure(conn, operation, error, task_id).await?;
    db::operations::finish(conn, operation.id, OperationState::Failed, Some(error)).await?;
    crate::metrics::operation_finished(operation.kind, OperationState::Failed);
    ready.extend(hooks::release(conn, operation.id).await?);
    tracing::info!(operation_id = %operation.id, resource_id = %operation.resource_id, %error, "operation failed");
    Ok(())
}

/// A periodic job's outcome: it has no operation, so only its row changes.
async fn record_job(conn: &mut PgConnection, task: &Task, outcome: Outcome) -> anyhow::Result<()> {
    match outcome {
        Outcome::JobDone(summary) => {
            db::tasks::finish(conn, task.id, TaskState::Succeeded, Some(&summary), None).await?;
        }
        Outcome::Retry { error, delay } => {
            let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            db::tasks::reschedule(conn, task.id, delay_ms, true, None, Some(&error)).await?;
        }
        Outcome::Fail(error) => {
            tracing::warn!(job = ?task.job, %error, "job failed");
            db::tasks::finish(conn, task.id, TaskState::Failed, None, Some(&error)).await?;
        }
        other => {
            let error = format!("a job cannot end with {other:?}");
            db::tasks::finish(conn, task.id, TaskState::Failed, None, Some(&error)).await?;
        }
    }
    Ok(())
}
