//! The pull executor: refreshes a resource's runtime state and status now,
//! through its kind's pull method (`schedule_updating`, as Waldur's pull).

use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Executor, ExecutorError, Prepared, lock_resource, schedule};
use crate::catalog::{Catalog, Form, Kind, Step};
use crate::db::resources::Schedule;
use crate::domain::{OperationKind, Transition};

/// How long a pull (or an import's pull) may take before it fails.
const PULL_TIMEOUT_S: u64 = 120;

/// The one step of a pull: a single reading of the kind's pull method. It
/// ends at the first answer, whatever the runtime state (or none), except an
/// erred one, which fails it (and errs the resource). `None` if the kind has
/// no pull method.
pub fn pull_step(kind: &Kind) -> Option<Step> {
    let method = kind.pull_method.clone()?;
    let erred = kind.erred_runtime_states.clone();
    // Every runtime state that is not erred ends it, and so does a reply
    // without one (read as the empty state).
    let success = kind
        .runtime_states
        .iter()
        .filter(|s| !erred.contains(s))
        .cloned()
        .chain([String::new()])
        .collect();
    Some(Step::PollRuntimeState {
        method,
        success,
        erred,
        interval_ms: 500,
        timeout_s: PULL_TIMEOUT_S,
        call_timeout_s: None,
    })
}

/// Pull a resource now. Success: `set_ok` (an erred resource whose object is
/// healthy recovers); failure: `set_erred` with the backend's message.
#[derive(Debug)]
pub struct Pull<'c> {
    catalog: &'c Catalog,
    resource_id: Uuid,
    scope: Option<String>,
}

impl<'c> Pull<'c> {
    /// A pull of `resource_id`.
    pub fn new(catalog: &'c Catalog, resource_id: Uuid) -> Self {
        Self {
            catalog,
            resource_id,
            scope: None,
        }
    }

    /// Confines it to the resources of `tenant` (`None`: every tenant's).
    pub fn within(mut self, tenant: Option<&str>) -> Self {
        self.scope = tenant.map(str::to_owned);
        self
    }
}

impl Executor for Pull<'_> {
    const KIND: OperationKind = OperationKind::Pull;
    const BEGIN: Transition = Transition::BeginUpdating;

    async fn pre_apply(
        &self,
        conn: &mut PgConnection,
        operation_id: Uuid,
    ) -> Result<Prepared, ExecutorError> {
        let resource = lock_resource(conn, self.resource_id, self.scope.as_deref(), None).await?;
        let kind = self.catalog.kind(&resource.kind).ok_or_else(|| {
            ExecutorError::Conflict(format!("kind `{}` is not in the catalog", resource.kind))
        })?;
        let step = pull_step(kind).ok_or_else(|| {
            ExecutorError::Conflict(format!("`{}` resources have no pull method", kind.name))
        })?;
        if resource.backend_id.is_none() {
            return Err(ExecutorError::Conflict(
                "The resource has no backend object to pull yet".into(),
            ));
        }
        let resource = schedule(
            conn,
            &resource,
            Transition::ScheduleUpdating,
            &Schedule {
                operation_id,
                ..Schedule::default()
            },
        )
        .await?;
        let tasks = super::plan(
            self.catalog,
            kind,
            resource.id,
            &super::plan::Children::new(),
            Self::BEGIN,
            &[Form::Step { step, on: None }],
            kind.queue,
        )?;
        Ok(Prepared {
            resource,
            tasks,
            composite: false,
            queue: kind.queue,
            request: json!({}),
            action: None,
        })
    }
}
