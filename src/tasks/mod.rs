//! The built-in task types. Running a task does only what happens outside
//! Postgres (backend calls) and returns an [`Outcome`]; everything it means
//! for the database is applied by the runner in one transaction.

mod backend_call;
mod jobs;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use crate::backend::{BackendReply, Backends};
use crate::catalog::{Catalog, JobArgs, Step, TENANT_SCOPE};
use crate::db::resources::Target;
use crate::db::tasks::Task;
use crate::db::throttle::Scope;
use crate::domain::{ResourceState, Transition};

/// What a task run produced, for the runner to record: a step of an
/// operation's chain and a periodic job end in different ways.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A step's.
    Step(StepOutcome),
    /// A job's.
    Job(JobOutcome),
}

impl Outcome {
    /// Its label in the task duration histogram.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Step(StepOutcome::Transition(_) | StepOutcome::Done(_))
            | Self::Job(JobOutcome::Done(_)) => "succeeded",
            Self::Step(StepOutcome::Throttle { .. }) => "throttle",
            Self::Step(StepOutcome::Poll { .. }) => "polling",
            Self::Step(StepOutcome::Retry { .. }) | Self::Job(JobOutcome::Retry { .. }) => {
                "retried"
            }
            Self::Step(
                StepOutcome::Fail(_) | StepOutcome::Erred(..) | StepOutcome::BackendFailed { .. },
            )
            | Self::Job(JobOutcome::Fail(_)) => "failed",
        }
    }
}

impl From<StepOutcome> for Outcome {
    fn from(outcome: StepOutcome) -> Self {
        Self::Step(outcome)
    }
}

impl From<JobOutcome> for Outcome {
    fn from(outcome: JobOutcome) -> Self {
        Self::Job(outcome)
    }
}

/// What a step of an operation's chain produced.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// Apply this transition (a compare-and-set) and count the step done.
    Transition(Transition),
    /// Take a slot of `scope` (at most `limit` held), or wait in line for one.
    Throttle {
        /// The scope: the resource's tenant, and a name such as `instance.tenant:acme`.
        scope: Scope,
        /// Slots in the scope.
        limit: i32,
    },
    /// The step is done; store what the backend reported.
    Done(BackendReply),
    /// Not done yet: store what the backend reported and run again after `delay`.
    /// A poll does not use up an attempt.
    Poll {
        /// What the backend reported.
        reply: BackendReply,
        /// When to look again.
        delay: Duration,
        /// What it is waiting for, for people.
        status: String,
    },
    /// A transient failure: run again after `delay`.
    Retry {
        /// What went wrong.
        error: String,
        /// Backoff before the next attempt.
        delay: Duration,
    },
    /// Failed for good: the operation fails with this message.
    Fail(String),
    /// A backend call failed for good: as [`StepOutcome::Fail`], and the
    /// backend's whole error is kept as the task's `error_details`.
    BackendFailed {
        /// The message, as [`StepOutcome::Fail`]'s.
        error: String,
        /// The error as [`crate::backend::BackendError::to_json`] writes it.
        details: Value,
    },
    /// The backend reports an erred runtime state: store it, then fail like [`StepOutcome::Fail`].
    Erred(BackendReply, String),
}

/// What a periodic job produced: only its own row changes.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// It finished; the summary is stored as its result.
    Done(Value),
    /// It could not finish (say, the database went away): run again after `delay`.
    Retry {
        /// What went wrong.
        error: String,
        /// Backoff before the next attempt.
        delay: Duration,
    },
    /// Failed for good.
    Fail(String),
}

/// What running a task needs.
#[derive(Clone)]
pub struct TaskContext {
    /// The database.
    pub pool: PgPool,
    /// The kinds.
    pub catalog: Arc<Catalog>,
    /// The backends, by name.
    pub backends: Backends,
    /// Longest a single backend call may take before it counts as a transient failure.
    pub backend_timeout: Duration,
    /// First retry delay; doubled on each attempt, with jitter.
    pub retry_base: Duration,
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("backends", &self.backends)
            .field("backend_timeout", &self.backend_timeout)
            .finish_non_exhaustive()
    }
}

/// Runs one claimed task: a step of an operation on `target` (what its claim
/// read that it acts on), or a periodic job (a task without an operation).
#[tracing::instrument(skip_all, fields(task_id = %task.id, operation_id = ?task.operation_id, task_type = %task.task_type, attempt = task.attempts))]
pub async fn run(ctx: &TaskContext, task: &Task, target: Option<Target>) -> Outcome {
    let gave_up = gave_up(task);
    if task.operation_id.is_none() {
        return Outcome::Job(
            match (
                gave_up,
                serde_json::from_value::<JobArgs>(task.args.clone()),
            ) {
                (Some(error), _) => JobOutcome::Fail(error),
                (None, Ok(args)) => jobs::run(ctx, args).await,
                (None, Err(e)) => JobOutcome::Fail(format!("unreadable job arguments: {e}")),
            },
        );
    }
    Outcome::Step(
        match (gave_up, serde_json::from_value::<Step>(task.args.clone())) {
            (Some(error), _) => StepOutcome::Fail(error),
            (None, Ok(step)) => run_step(ctx, task, target, step).await,
            (None, Err(e)) => StepOutcome::Fail(format!("unreadable step arguments: {e}")),
        },
    )
}

/// The failure of a task claimed more often than it may be.
fn gave_up(task: &Task) -> Option<String> {
    (task.attempts > task.max_attempts).then(|| {
        let last = task
            .last_error
            .as_deref()
            .unwrap_or("its runner was lost each time");
        format!("gave up after {} attempts: {last}", task.max_attempts)
    })
}

/// Runs a claimed state transition at once: what [`run`] returns for it, so
/// that it can be recorded in the transaction that claimed it. `None` for
/// any other step, and for a periodic job.
///
/// A throttle also needs nothing outside PostgreSQL, but taking its slot
/// locks its scope until the commit, and a transaction that takes slots of
/// several scopes must lock them all first, in name order, or two such
/// transactions deadlock. The recorder does that for each batch
/// (`db::throttle::lock_scopes`), so a throttle goes to the runner and is
/// decided in the recorder's transaction, as a backend call's outcome is.
pub fn run_in_database(task: &Task) -> Option<StepOutcome> {
    task.operation_id?;
    if task.task_type != "state_transition" {
        return None;
    }
    Some(
        match (
            gave_up(task),
            serde_json::from_value::<Step>(task.args.clone()),
        ) {
            (Some(error), _) => StepOutcome::Fail(error),
            (None, Ok(Step::StateTransition { transition })) => StepOutcome::Transition(transition),
            (None, Ok(_)) => return None,
            (None, Err(e)) => StepOutcome::Fail(format!("unreadable step arguments: {e}")),
        },
    )
}

async fn run_step(
    ctx: &TaskContext,
    task: &Task,
    target: Option<Target>,
    step: Step,
) -> StepOutcome {
    match step {
        Step::StateTransition { transition } => StepOutcome::Transition(transition),
        Step::Throttle { scope, limit, key } => {
            throttle_scope(target.as_ref(), &scope, key.as_deref()).map_or_else(
                StepOutcome::Fail,
                |scope| StepOutcome::Throttle { scope, limit },
            )
        }
        // An undo step has nothing to undo on a resource the backend never
        // made, and stops at its resource's first failed undo (which erred it).
        Step::BackendMethod { .. }
        | Step::PollRuntimeState { .. }
        | Step::PollBackendCheck { .. }
            if task.undo
                && target.as_ref().is_some_and(|t| {
                    t.resource.backend_id.is_none() || t.state == ResourceState::Erred
                }) =>
        {
            StepOutcome::Done(BackendReply::default())
        }
        Step::BackendMethod { .. }
        | Step::PollRuntimeState { .. }
        | Step::PollBackendCheck { .. } => backend_call::run(ctx, task, target, &step).await,
    }
}

/// The scope a throttle step takes a slot of: always within the resource's
/// own tenant, so no request can reach another tenant's slots. Its name is
/// `<key>:<value>`. For the scope `tenant` the value is the resource's tenant,
/// not the attribute a caller wrote, so inventing tenants escapes nothing;
/// only a service running open, which has no tenants, uses the attribute.
fn throttle_scope(
    target: Option<&Target>,
    attribute: &str,
    key: Option<&str>,
) -> Result<Scope, String> {
    let target = target.ok_or("the operation or its resource is gone")?;
    let resource = &target.resource;
    let value = if attribute == TENANT_SCOPE && !target.tenant.is_empty() {
        target.tenant.clone()
    } else {
        match resource.attributes.get(attribute) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        }
    };
    let key = key.map_or_else(|| format!("{}.{attribute}", resource.kind), str::to_owned);
    Ok(Scope {
        tenant: target.tenant.clone(),
        name: format!("{key}:{value}"),
    })
}

/// Exponential backoff with ±25% jitter: `base · 2^(attempt-1)`, at most five minutes.
pub fn backoff(base: Duration, attempt: i32) -> Duration {
    let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    let raw = base
        .saturating_mul(2u32.saturating_pow(exp))
        .min(Duration::from_secs(300));
    raw.mul_f64(rand::random_range(0.75..1.25))
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        for attempt in 1..=5 {
            let expected = 100.0 * f64::from(1u32 << (attempt - 1));
            let got = backoff(base, attempt).as_secs_f64() * 1000.0;
            assert!(
                got >= expected * 0.75 && got <= expected * 1.25,
                "attempt {attempt}: {got}"
            );
        }
        assert!(backoff(base, 40) <= Duration::from_secs(375));
    }
}
