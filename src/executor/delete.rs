//! The delete executor: `schedule_deleting`.

use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Executor, ExecutorError, Prepared, hold_children, lock_resource, plan, schedule};
use crate::catalog::Catalog;
use crate::db::resources::Schedule;
use crate::domain::{OperationKind, Transition};

/// Delete a resource. Success: the row is deleted (its operations stay); failure: `set_erred`.
#[derive(Debug)]
pub struct Delete<'c> {
    catalog: &'c Catalog,
    resource_id: Uuid,
    if_match: Option<i64>,
    scope: Option<String>,
    /// For a forced delete: its request (`force`, `reason`, `actor`).
    forced: Option<Value>,
}

impl<'c> Delete<'c> {
    /// A delete of `resource_id`, optionally only at version `if_match`.
    pub fn new(catalog: &'c Catalog, resource_id: Uuid, if_match: Option<i64>) -> Self {
        Self {
            catalog,
            resource_id,
            if_match,
            scope: None,
            forced: None,
        }
    }

    /// Forces it (admins only): if the chain fails, the record is removed
    /// anyway, the failure left in the history. `details` say who asked.
    pub fn forced(mut self, reason: &str, details: &Value) -> Self {
        self.forced = Some(json!({"force": true, "reason": reason, "by": details}));
        self
    }

    /// Confines it to the resources of `tenant` (`None`: every tenant's).
    pub fn within(mut self, tenant: Option<&str>) -> Self {
        self.scope = tenant.map(str::to_owned);
        self
    }
}

impl Executor for Delete<'_> {
    const KIND: OperationKind = OperationKind::Delete;
    const BEGIN: Transition = Transition::BeginDeleting;

    async fn pre_apply(
        &self,
        conn: &mut PgConnection,
        operation_id: Uuid,
    ) -> Result<Prepared, ExecutorError> {
        let resource =
            lock_resource(conn, self.resource_id, self.scope.as_deref(), self.if_match).await?;
        let kind = self.catalog.kind(&resource.kind).ok_or_else(|| {
            ExecutorError::Conflict(format!("kind `{}` is not in the catalog", resource.kind))
        })?;
        let resource = schedule(
            conn,
            &resource,
            Transition::ScheduleDeleting,
            &Schedule {
                operation_id,
                ..Schedule::default()
            },
        )
        .await?;
        let children = if kind.children.is_empty() {
            super::plan::Children::new()
        } else {
            hold_children(conn, &resource, operation_id, true).await?
        };
        let tasks = plan(
            self.catalog,
            kind,
            resource.id,
            &children,
            Self::BEGIN,
            &kind.delete,
            kind.queue,
        )?;
        Ok(Prepared {
            resource,
            tasks,
            composite: !children.is_empty(),
            queue: kind.queue,
            request: self.forced.clone().unwrap_or_else(|| json!({})),
            action: None,
        })
    }
}
