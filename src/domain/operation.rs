//! Operations (one executor run) and their tasks (one row per step).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which executor an operation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum OperationKind {
    /// Create executor: inserts the resource; success `set_ok`, failure `set_erred`.
    Create,
    /// Update executor: `schedule_updating`; success `set_ok`, failure `set_erred`.
    Update,
    /// Delete executor: `schedule_deleting`; success deletes the row, failure `set_erred`.
    Delete,
    /// A named action: `schedule_updating`; success `set_ok`, failure `set_erred`.
    Action,
    /// Adopts an existing backend object: inserts the resource; success
    /// `set_ok`, failure (or cancel) removes the row again, its history kept.
    Import,
    /// Refreshes runtime state and status now: `schedule_updating`; success
    /// `set_ok`, failure `set_erred`.
    Pull,
}

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum OperationState {
    /// Written by the executor's request; left when a runner claims its first task.
    Scheduled,
    /// A runner claimed one of its tasks; left when the last task succeeds or one fails.
    Running,
    /// A step failed, or it was cancelled, while other steps still ran, or
    /// its kind undoes a failed create: it waits for those steps, runs its
    /// compensation, then ends `failed` or `cancelled`.
    Compensating,
    /// Every task succeeded and the success hook ran (terminal).
    Succeeded,
    /// A task failed for good; the failure hook ran and the rest were cancelled (terminal).
    Failed,
    /// Stopped before its end (terminal).
    Cancelled,
}

impl OperationKind {
    /// The wire and database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Action => "action",
            Self::Import => "import",
            Self::Pull => "pull",
        }
    }
}

impl std::fmt::Display for OperationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl OperationState {
    /// Every state.
    pub const ALL: [OperationState; 6] = [
        Self::Scheduled,
        Self::Running,
        Self::Compensating,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// Whether the operation has ended.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// The wire and database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the wire and database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for OperationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a task (one step of an operation) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum TaskState {
    /// A later step, or a throttle waiting for a slot. Moved to `ready` when the
    /// previous step succeeds or a slot is handed over; to `cancelled` when an earlier step fails.
    Waiting,
    /// Runnable from `run_at` on. Claimed by a runner (`running`).
    Ready,
    /// Held by a runner under a lease. Left by its recorded outcome, or back to
    /// `ready` when the lease expires.
    Running,
    /// Done (terminal).
    Succeeded,
    /// Failed for good (terminal); the operation failed with it.
    Failed,
    /// Never ran because the operation ended first (terminal).
    Cancelled,
}

impl TaskState {
    /// Whether the task has ended.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// A worker pool. Each queue has its own concurrency, so slow work never
/// starves the regular queue.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    ToSchema,
    sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Queue {
    /// Ordinary steps.
    Regular,
    /// Long-running steps.
    Heavy,
    /// Periodic and housekeeping work.
    Background,
}

impl Queue {
    /// Every queue.
    pub const ALL: [Queue; 3] = [Self::Regular, Self::Heavy, Self::Background];

    /// The database spelling, also the NOTIFY payload.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Regular => "regular",
            Self::Heavy => "heavy",
            Self::Background => "background",
        }
    }

    /// Parses the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.as_str() == s)
    }
}
