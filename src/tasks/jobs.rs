//! The periodic jobs, run as `job` tasks on the background queue.
//!
//! Each decides from the database, never from a timer alone, and changes a
//! resource only by a compare-and-set on the version it read with nothing in
//! flight, so a job racing an operation always loses cleanly.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use super::{JobOutcome, TaskContext};
use crate::backend::{BackendCall, BackendError, ResourceView};
use crate::catalog::{Job, JobArgs};
use crate::db;
use crate::db::jobs::Prunable;
use crate::db::resources::{Guard, Resource};
use crate::domain::{ResourceState, Transition};
use crate::lifecycle::{self, Ending};

const BATCH: i64 = 100;
const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

pub(super) async fn run(ctx: &TaskContext, args: JobArgs) -> JobOutcome {
    let JobArgs {
        job, retention_s, ..
    } = args;
    let result = match job {
        Job::Pull => pull(ctx).await,
        Job::Sweep => sweep(ctx).await,
        Job::Prune => {
            prune(
                ctx,
                retention_s.map_or(DEFAULT_RETENTION, Duration::from_secs),
            )
            .await
        }
    };
    match result {
        Ok(summary) => JobOutcome::Done(summary),
        Err(e) => JobOutcome::Retry {
            error: format!("{e:#}"),
            delay: Duration::from_secs(5),
        },
    }
}

/// Refreshes the runtime state of stable resources through their kind's pull
/// method: a vanished or erred backend object errs the resource; an erred
/// resource whose object is healthy again is recovered.
async fn pull(ctx: &TaskContext) -> anyhow::Result<Value> {
    let (mut seen, mut updated, mut erred, mut recovered, mut failed) = (0, 0, 0, 0, 0);
    let mut after = None;
    loop {
        let mut conn = ctx.pool.acquire().await?;
        let batch = db::resources::list_pullable(&mut conn, after, BATCH).await?;
        drop(conn);
        let Some(last) = batch.last() else { break };
        after = Some(last.id);
        for resource in batch {
            seen += 1;
            match pull_one(ctx, &resource).await {
                Ok(Pulled::Same) => {}
                Ok(Pulled::Updated) => updated += 1,
                Ok(Pulled::Erred) => erred += 1,
                Ok(Pulled::Recovered) => recovered += 1,
                Err(e) => {
                    failed += 1;
                    tracing::warn!(resource_id = %resource.id, error = %e, "pull failed");
                }
            }
        }
    }
    Ok(
        json!({"seen": seen, "updated": updated, "erred": erred, "recovered": recovered, "failed": failed}),
    )
}

enum Pulled {
    Same,
    Updated,
    Erred,
    Recovered,
}

async fn pull_one(ctx: &TaskContext, resource: &Resource) -> anyhow::Result<Pulled> {
    let Some(kind) = ctx.catalog.kind(&resource.kind) else {
        return Ok(Pulled::Same);
    };
    let (Some(method), Some(backend)) = (&kind.pull_method, ctx.backends.get(&kind.backend)) else {
        return Ok(Pulled::Same);
    };
    let call = BackendCall {
        idempotency_key: Uuid::new_v4(),
        resource: ResourceView {
            id: resource.id,
            kind: resource.kind.clone(),
            name: resource.name.clone(),
            backend_id: resource.backend_id.clone(),
            runtime_state: resource.runtime_state.clone(),
            attributes: resource.attributes.clone(),
            status: resource.status.clone(),
        },
        parent: None,
        params: json!({}),
    };
    let timeout = backend.timeout().unwrap_or(ctx.backend_timeout);
    let reply = tokio::time::timeout(timeout, backend.call(method, call)).await;
    let (problem, healthy, runtime_state) = match reply {
        Err(_) => anyhow::bail!("{method} timed out"),
        Ok(Err(BackendError::NotFound(message))) => (
            Some(format!("the backend object is gone: {message}")),
            false,
            None,
        ),
        Ok(Err(e)) => anyhow::bail!("{method}: {e}"),
        Ok(Ok(reply)) => match reply.runtime_state {
            None => return Ok(Pulled::Same),
            Some(state) if kind.erred_runtime_states.contains(&state) => (
                Some(format!("the backend reports runtime state {state}")),
                false,
                Some(state),
            ),
            Some(state) => (
                None,
                kind.healthy_runtime_states.contains(&state),
                Some(state),
            ),
        },
    };
    let change = match (problem, healthy, resource.state) {
        (Some(message), _, ResourceState::Ok) => Some((Transition::SetErred, Some(message))),
        (None, true, ResourceState::Erred) => Some((Transition::Recover, None)),
        _ => None,
    };
    let mut conn = ctx.pool.acquire().await?;
    if let Some((transition, message)) = change {
        let ending = db::resources::Ending {
            error_message: message.as_deref(),
            runtime_state: runtime_state.as_deref(),
            ..db::resources::Ending::default()
        };
        let guard = Guard::Version(resource.version);
        let done =
            db::resources::transition(&mut conn, resource.id, guard, transition, &ending).await?;
        return Ok(match (done, transition) {
            (None, _) => Pulled::Same,
            (Some(_), Transition::Recover) => Pulled::Recovered,
            (Some(_), _) => Pulled::Erred,
        });
    }
    match runtime_state {
        Some(state) if resource.runtime_state.as_deref() != Some(state.as_str()) => {
            let done =
                db::resources::set_runtime_state(&mut conn, resource.id, resource.version, &state)
                    .await?;
            Ok(if done { Pulled::Updated } else { Pulled::Same })
        }
        _ => Ok(Pulled::Same),
    }
}

/// Errs resources left in a transitional state whose operation is gone,
/// finished, or has no step left that could move it; such an operation is
/// failed too, through [`lifecycle::finish`] like every other ending.
/// Decided from the operation and task rows, re-checked under lock.
async fn sweep(ctx: &TaskContext) -> anyhow::Result<Value> {
    let mut conn = ctx.pool.acquire().await?;
    let stranded = db::jobs::stranded(&mut conn, BATCH).await?;
    drop(conn);
    let mut swept = 0;
    for resource in stranded {
        let mut tx = ctx.pool.begin().await?;
        if !db::jobs::still_stranded(&mut tx, resource.id, resource.version).await? {
            continue;
        }
        let operation = match resource.operation_id {
            Some(id) => db::operations::get(&mut tx, id).await?,
            None => None,
        };
        let why = match (resource.operation_id, &operation) {
            (None, _) => "no operation".to_owned(),
            (Some(op), None) => format!("its operation {op} does not exist"),
            (Some(op), Some(o)) if o.state.is_finished() => {
                format!("its operation {op} is {}", o.state)
            }
            (Some(op), Some(_)) => format!("its operation {op} has no step left to run"),
        };
        let message = format!(
            "Left {} with {why}; marked erred by the sweeper",
            resource.state
        );
        // `still_stranded` locked the row at the version seen, under the
        // operation it names: the `set_erred` below cannot miss.
        let finished = match &operation {
            // The operation ends failed (if it has not ended) and its
            // resource errs, as any failed operation's does.
            Some(operation) => {
                let ending = Ending::Failed {
                    operation,
                    error: &message,
                    task_id: None,
                };
                let finished = lifecycle::finish(&mut tx, &ctx.catalog, &[ending]).await?;
                finished.notify(&mut tx).await?;
                Some(finished)
            }
            // No operation to end: only the resource errs.
            None => {
                let ending = db::resources::Ending {
                    error_message: Some(&message),
                    ends_operation: true,
                    ..db::resources::Ending::default()
                };
                let guard = Guard::Version(resource.version);
                db::resources::transition(
                    &mut tx,
                    resource.id,
                    guard,
                    Transition::SetErred,
                    &ending,
                )
                .await?;
                None
            }
        };
        tx.commit().await?;
        if let Some(finished) = finished {
            finished.committed();
        }
        swept += 1;
        tracing::warn!(resource_id = %resource.id, %message, "swept a stranded resource");
    }
    Ok(json!({"swept": swept}))
}

/// Deletes finished history past the retention, in small batches.
async fn prune(ctx: &TaskContext, retention: Duration) -> anyhow::Result<Value> {
    const PRUNE_BATCH: i64 = 500;
    let before = chrono::Utc::now() - chrono::Duration::from_std(retention)?;
    let mut summary = serde_json::Map::new();
    for what in Prunable::ALL {
        let mut total = 0;
        loop {
            let mut conn = ctx.pool.acquire().await?;
            let n = db::jobs::prune(&mut conn, what, before, PRUNE_BATCH).await?;
            total += n;
            if n < PRUNE_BATCH.unsigned_abs() {
                break;
            }
        }
        summary.insert(what.as_str().to_owned(), json!(total));
    }
    Ok(Value::Object(summary))
}
