//! The task types that call a backend: `backend_method`, `poll_runtime_state`
//! and `poll_backend_check`. Polls never sleep in a worker: a poll that is not
//! done returns [`StepOutcome::Poll`] and the row is rescheduled.

use std::time::Duration;

use chrono::Utc;

use super::{StepOutcome, TaskContext, backoff};
use crate::backend::{BackendCall, BackendError, BackendReply};
use crate::catalog::Step;
use crate::db::resources::Target;
use crate::db::tasks::Task;

pub(super) async fn run(
    ctx: &TaskContext,
    task: &Task,
    target: Option<Target>,
    step: &Step,
) -> StepOutcome {
    let (method, step_timeout) = match step {
        Step::BackendMethod {
            method, timeout_s, ..
        }
        | Step::PollRuntimeState {
            method,
            call_timeout_s: timeout_s,
            ..
        }
        | Step::PollBackendCheck {
            method,
            call_timeout_s: timeout_s,
            ..
        } => (method, timeout_s.map(Duration::from_secs)),
        Step::StateTransition { .. } | Step::Throttle { .. } => {
            return StepOutcome::Fail("not a backend step".into());
        }
    };
    let reply = match call(ctx, task, target, method, step_timeout).await {
        Ok(reply) => reply,
        Err(e) if e.is_transient() && task.attempts < task.max_attempts => {
            // The backend's own `Retry-After` is a floor under the backoff.
            let delay =
                backoff(ctx.retry_base, task.attempts).max(e.retry_after().unwrap_or_default());
            return StepOutcome::Retry {
                error: e.to_string(),
                delay,
            };
        }
        Err(e) => {
            return StepOutcome::BackendFailed {
                error: e.to_string(),
                details: e.to_json(method),
            };
        }
    };
    match step {
        Step::PollRuntimeState {
            success,
            erred,
            interval_ms,
            timeout_s,
            ..
        } => {
            let seen = reply.runtime_state.clone().unwrap_or_default();
            if success.contains(&seen) {
                StepOutcome::Done(reply)
            } else if erred.contains(&seen) {
                StepOutcome::Erred(reply, format!("the backend reports runtime state {seen}"))
            } else {
                not_yet(
                    task,
                    reply,
                    *interval_ms,
                    *timeout_s,
                    format!(
                        "waiting for runtime state {}; now {seen}",
                        success.join(" or ")
                    ),
                )
            }
        }
        Step::PollBackendCheck {
            method,
            interval_ms,
            timeout_s,
            ..
        } => {
            if reply.done == Some(true) {
                StepOutcome::Done(reply)
            } else {
                not_yet(
                    task,
                    reply,
                    *interval_ms,
                    *timeout_s,
                    format!("waiting for {method}"),
                )
            }
        }
        _ => StepOutcome::Done(reply),
    }
}

fn not_yet(
    task: &Task,
    reply: BackendReply,
    interval_ms: u64,
    timeout_s: u64,
    status: String,
) -> StepOutcome {
    let started = task.started_at.unwrap_or_else(Utc::now);
    let waited = (Utc::now() - started).to_std().unwrap_or_default();
    if waited >= Duration::from_secs(timeout_s) {
        return StepOutcome::Fail(format!("timed out after {timeout_s}s {status}"));
    }
    StepOutcome::Poll {
        reply,
        delay: Duration::from_millis(interval_ms),
        status,
    }
}

async fn call(
    ctx: &TaskContext,
    task: &Task,
    target: Option<Target>,
    method: &str,
    step_timeout: Option<Duration>,
) -> Result<BackendReply, BackendError> {
    let Target {
        resource,
        request,
        parent,
        ..
    } = target
        .ok_or_else(|| BackendError::Permanent("the operation or its resource is gone".into()))?;
    let backend = ctx
        .catalog
        .kind(&resource.kind)
        .ok_or_else(|| {
            BackendError::Permanent(format!("kind `{}` is not in the catalog", resource.kind))
        })
        .and_then(|k| {
            ctx.backends.get(&k.backend).ok_or_else(|| {
                BackendError::Permanent(format!("backend `{}` is not configured", k.backend))
            })
        })?;
    let call = BackendCall {
        idempotency_key: task.id,
        resource,
        parent,
        params: request,
    };
    // The step's own time limit, else the backend's, else the runner's.
    let timeout = step_timeout
        .or_else(|| backend.timeout())
        .unwrap_or(ctx.backend_timeout);
    match tokio::time::timeout(timeout, backend.call(method, call)).await {
        Ok(result) => result,
        Err(_) => Err(BackendError::Transient(format!(
            "{method} timed out after {timeout:?}"
        ))),
    }
}
