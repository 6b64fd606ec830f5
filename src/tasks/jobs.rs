//! The periodic jobs, run as `job` tasks on the background queue.
//!
//! Each decides from the database, never from a timer alone, and changes a
//! resource only by a compare-and-set on the version it read with nothing in
//! flight, so a job racing an operation always loses cleanly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use serde_json::{Value, json};
use uuid::Uuid;

use super::{JobOutcome, TaskContext};
use crate::backend::{BackendCall, ErrorClass, ResourceView};
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

/// Pulls of one backend in flight at once, per pull job.
const PULLS_PER_BACKEND: usize = 16;

/// Refreshes the runtime state and status of stable resources through their
/// kind's pull method, each kind at most every `pull_interval_s` (its
/// catalog's; without one, every run). Pulls run in parallel, a batch at a
/// time, at most [`PULLS_PER_BACKEND`] per backend. A changed runtime state
/// or status is recorded with a `drift` event (before and after); a vanished
/// or erred backend object errs the resource; an erred resource whose
/// object is healthy again is recovered.
async fn pull(ctx: &TaskContext) -> anyhow::Result<Value> {
    let mut tally = Tally::default();
    let mut conn = ctx.pool.acquire().await?;
    let last: HashMap<String, chrono::DateTime<chrono::Utc>> =
        db::reconcile::kinds_pulled(&mut conn)
            .await?
            .into_iter()
            .collect();
    drop(conn);
    let now = chrono::Utc::now();
    let mut limits: HashMap<&str, Arc<Semaphore>> = HashMap::new();
    for kind in ctx.catalog.kinds() {
        if kind.pull_method.is_none() {
            continue;
        }
        if let (Some(interval), Some(at)) = (kind.pull_interval, last.get(&kind.name))
            && (now - *at).to_std().unwrap_or_default() < interval
        {
            continue;
        }
        let mut conn = ctx.pool.acquire().await?;
        db::reconcile::kind_pulled(&mut conn, &kind.name).await?;
        drop(conn);
        let limit = limits
            .entry(kind.backend.as_str())
            .or_insert_with(|| Arc::new(Semaphore::new(PULLS_PER_BACKEND)))
            .clone();
        let mut after = None;
        loop {
            let mut conn = ctx.pool.acquire().await?;
            let batch =
                db::reconcile::pullable_of_kind(&mut conn, &kind.name, after, BATCH).await?;
            drop(conn);
            let Some(last) = batch.last() else { break };
            after = Some(last.id);
            let pulls = batch.iter().map(|resource| {
                let limit = limit.clone();
                async move {
                    let _slot = limit.acquire().await;
                    (resource.id, pull_one(ctx, resource).await)
                }
            });
            for (resource_id, pulled) in futures::future::join_all(pulls).await {
                tally.seen += 1;
                match pulled {
                    Ok(Pulled::Same) => {}
                    Ok(Pulled::Drifted) => tally.drifted += 1,
                    Ok(Pulled::Erred) => tally.erred += 1,
                    Ok(Pulled::Recovered) => tally.recovered += 1,
                    Err(e) => {
                        tally.failed += 1;
                        tracing::warn!(%resource_id, error = %e, "pull failed");
                    }
                }
            }
        }
    }
    Ok(json!({
        "seen": tally.seen, "updated": tally.drifted, "erred": tally.erred,
        "recovered": tally.recovered, "failed": tally.failed,
    }))
}

#[derive(Default)]
struct Tally {
    seen: u64,
    drifted: u64,
    erred: u64,
    recovered: u64,
    failed: u64,
}

enum Pulled {
    Same,
    Drifted,
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
    let (problem, healthy, runtime_state, reported) = match reply {
        Err(_) => anyhow::bail!("{method} timed out"),
        Ok(Err(e)) if e.class() == ErrorClass::NotFound => (
            Some(format!("the backend object is gone: {e}")),
            false,
            None,
            None,
        ),
        Ok(Err(e)) => anyhow::bail!("{method}: {e}"),
        Ok(Ok(reply)) => match reply.runtime_state {
            None if reply.status.is_none() => return Ok(Pulled::Same),
            Some(state) if kind.erred_runtime_states.contains(&state) => (
                Some(format!("the backend reports runtime state {state}")),
                false,
                Some(state),
                reply.status,
            ),
            state => (
                None,
                state
                    .as_ref()
                    .is_some_and(|s| kind.healthy_runtime_states.contains(s)),
                state,
                reply.status,
            ),
        },
    };
    // The status as the pull leaves it: the stored one with the reported keys merged in.
    let mut status = resource.status.clone();
    if let (Some(reported), Some(stored)) = (&reported, status.as_object_mut()) {
        stored.extend(reported.clone());
    }
    let state_changed = runtime_state
        .as_deref()
        .is_some_and(|s| resource.runtime_state.as_deref() != Some(s));
    let details = json!({
        "before": {"runtime_state": resource.runtime_state, "status": resource.status},
        "after": {
            "runtime_state": runtime_state.as_deref().or(resource.runtime_state.as_deref()),
            "status": status,
            "gone": problem.is_some() && runtime_state.is_none(),
        },
    });
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
            details: Some(&details),
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
    if !state_changed && status == resource.status {
        return Ok(Pulled::Same);
    }
    let drift = db::reconcile::Drift {
        runtime_state: runtime_state.as_deref().filter(|_| state_changed),
        status: &status,
        details: &details,
    };
    let done =
        db::reconcile::record_drift(&mut conn, resource.id, resource.version, &drift).await?;
    Ok(if done { Pulled::Drifted } else { Pulled::Same })
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
