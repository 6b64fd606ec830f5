//! One step of a chain, as the catalog writes it and as a task row stores it
//! (`tasks.args`): chains are data.

use serde::{Deserialize, Serialize};

use crate::domain::Transition;

fn default_interval_ms() -> u64 {
    500
}

fn default_poll_timeout_s() -> u64 {
    600
}

/// A step of a chain. The `type` field names the task type that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Applies a named resource transition; fails if the resource is not in one of its source states.
    StateTransition {
        /// The transition to apply.
        transition: Transition,
    },
    /// Calls an effect method of the kind's backend and stores what it reports.
    BackendMethod {
        /// The backend method.
        method: String,
        /// Attempts before a transient failure becomes final (default from the runner's config).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_attempts: Option<i32>,
        /// Longest one call may take, in seconds (default from the runner's config).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_s: Option<u64>,
    },
    /// Calls a pull method until the runtime state is one of `success` (done)
    /// or `erred` (fails at once), rescheduling itself in between.
    PollRuntimeState {
        /// The backend's pull method.
        method: String,
        /// Runtime states that end the poll successfully.
        success: Vec<String>,
        /// Runtime states that fail the step at once.
        #[serde(default)]
        erred: Vec<String>,
        /// Time between polls, in milliseconds.
        #[serde(default = "default_interval_ms")]
        interval_ms: u64,
        /// The step fails if not done this long after it first ran, in seconds.
        #[serde(default = "default_poll_timeout_s")]
        timeout_s: u64,
        /// Longest one call may take, in seconds (default from the runner's config).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_timeout_s: Option<u64>,
    },
    /// Calls a check method until it answers `done`, rescheduling itself in between.
    PollBackendCheck {
        /// The backend's check method.
        method: String,
        /// Time between polls, in milliseconds.
        #[serde(default = "default_interval_ms")]
        interval_ms: u64,
        /// The step fails if not done this long after it first ran, in seconds.
        #[serde(default = "default_poll_timeout_s")]
        timeout_s: u64,
        /// Longest one call may take, in seconds (default from the runner's config).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_timeout_s: Option<u64>,
    },
    /// Takes one of `limit` slots of a scope (e.g. per tenant) and holds it
    /// until the operation ends; waits in FIFO order while all are taken.
    /// Scopes are always counted within the resource's own tenant.
    Throttle {
        /// The attribute whose value names the scope, or [`TENANT_SCOPE`]: the
        /// resource's own tenant.
        scope: String,
        /// Slots per scope value.
        limit: i32,
        /// A name shared by throttles that count together; default `<kind>.<scope>`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
}

/// The throttle scope that names the resource's own tenant (the tenant of
/// the token that created it), whatever its attributes say. Only a service
/// running open, which has no tenants, takes the attribute `tenant` instead.
pub const TENANT_SCOPE: &str = "tenant";

/// What a periodic job's task row runs (`tasks.args`, `{"type": "job",
/// "job": …}`): jobs are enqueued by the scheduler and are never steps of a
/// chain, so they have a type of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobArgs {
    /// Always `job`: the task type's name, as stored in `tasks.type`.
    #[serde(rename = "type")]
    pub task_type: JobType,
    /// Which job.
    pub job: Job,
    /// For `prune`: how old finished work must be, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_s: Option<u64>,
}

impl JobArgs {
    /// The arguments of `job`.
    pub fn new(job: Job, retention_s: Option<u64>) -> Self {
        Self {
            task_type: JobType::Job,
            job,
            retention_s,
        }
    }
}

/// The one task type of jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    /// `job`.
    Job,
}

/// The periodic jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Job {
    /// Refresh the runtime state of stable resources; err the vanished, recover the healed.
    Pull,
    /// Err resources left in a transitional state with no live operation.
    Sweep,
    /// Delete finished operations, job tasks and idempotency keys past the retention.
    Prune,
}

impl Job {
    /// Every job.
    pub const ALL: [Job; 3] = [Self::Pull, Self::Sweep, Self::Prune];

    /// Its name, as stored in `tasks.job`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Sweep => "sweep",
            Self::Prune => "prune",
        }
    }
}

impl Step {
    /// The task type's name, as stored in `tasks.type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::StateTransition { .. } => "state_transition",
            Self::BackendMethod { .. } => "backend_method",
            Self::PollRuntimeState { .. } => "poll_runtime_state",
            Self::PollBackendCheck { .. } => "poll_backend_check",
            Self::Throttle { .. } => "throttle",
        }
    }
}
