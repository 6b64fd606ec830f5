//! The action executor: a named action of the resource's kind (start, stop, resize, ...).

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    Executor, ExecutorError, Prepared, hold_children, lock_resource, plan, schedule, wrong_state,
};
use crate::catalog::Catalog;
use crate::db::resources::Schedule;
use crate::domain::{FieldError, OperationKind, Transition, check_json};

/// Run a named action. Success: `set_ok` (with the action's runtime state); failure: `set_erred`.
#[derive(Debug)]
pub struct Action<'c> {
    catalog: &'c Catalog,
    resource_id: Uuid,
    name: String,
    params: Value,
    if_match: Option<i64>,
    scope: Option<String>,
}

impl<'c> Action<'c> {
    /// The action `name` on `resource_id` with `params`.
    pub fn new(
        catalog: &'c Catalog,
        resource_id: Uuid,
        name: String,
        params: Value,
        if_match: Option<i64>,
    ) -> Self {
        Self {
            catalog,
            resource_id,
            name,
            params,
            if_match,
            scope: None,
        }
    }

    /// Confines it to the resources of `tenant` (`None`: every tenant's).
    pub fn within(mut self, tenant: Option<&str>) -> Self {
        self.scope = tenant.map(str::to_owned);
        self
    }
}

impl Executor for Action<'_> {
    const KIND: OperationKind = OperationKind::Action;
    const BEGIN: Transition = Transition::BeginUpdating;

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
        let action = kind.actions.get(&self.name).ok_or_else(|| {
            let known: Vec<&str> = kind.actions.keys().map(String::as_str).collect();
            ExecutorError::NotFound(format!(
                "`{}` resources have no action `{}` (actions: {})",
                kind.name,
                self.name,
                known.join(", ")
            ))
        })?;
        let mut errors = match check_json("", &self.params) {
            Ok(()) => action.params.validate("", &self.params),
            Err(e) => vec![e],
        };
        if errors.is_empty() {
            for field in &action.increase_only {
                let new = self.params.get(field).and_then(Value::as_f64);
                // What the backend last reported wins over what was asked for at creation.
                let current = resource
                    .status
                    .get(field)
                    .or_else(|| resource.attributes.get(field))
                    .and_then(Value::as_f64);
                if let (Some(new), Some(current)) = (new, current)
                    && new <= current
                {
                    errors.push(FieldError::new(
                        format!("/{field}"),
                        format!("must be larger than the current {field} ({current})"),
                    ));
                }
            }
        }
        if !errors.is_empty() {
            return Err(ExecutorError::Invalid(errors));
        }
        if !action.states.contains(&resource.state) {
            return Err(wrong_state(&resource, &action.states));
        }
        if !action.runtime_states.is_empty()
            && !resource
                .runtime_state
                .as_ref()
                .is_some_and(|rs| action.runtime_states.contains(rs))
        {
            return Err(ExecutorError::Conflict(format!(
                "Runtime state is {}. Valid runtime states for `{}`: {}",
                resource.runtime_state.as_deref().unwrap_or("unknown"),
                action.name,
                action.runtime_states.join(", ")
            )));
        }
        let resource = schedule(
            conn,
            &resource,
            Transition::ScheduleUpdating,
            &Schedule {
                operation_id,
                action: Some(&action.name),
                action_details: Some(&self.params),
                ..Schedule::default()
            },
        )
        .await?;
        let children = if kind.children.is_empty() {
            super::plan::Children::new()
        } else {
            hold_children(conn, &resource, operation_id, false).await?
        };
        let tasks = plan(
            self.catalog,
            kind,
            resource.id,
            &children,
            Self::BEGIN,
            &action.chain,
            action.queue,
        )?;
        Ok(Prepared {
            resource,
            tasks,
            composite: !children.is_empty(),
            queue: action.queue,
            request: self.params.clone(),
            action: Some(action.name.clone()),
        })
    }
}
