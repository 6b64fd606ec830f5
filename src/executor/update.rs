//! The update executor: changes the name or updatable attributes, then pushes
//! them to the backend. The new values are stored when the update is accepted
//! (as Waldur does), so reads show them at once.

use serde_json::{Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Executor, ExecutorError, Prepared, hold_children, lock_resource, plan, schedule};
use crate::catalog::Catalog;
use crate::db::resources::Schedule;
use crate::domain::{FieldError, OperationKind, ResourceName, Transition, check_json};

/// Update a resource. Success: `set_ok`; failure: `set_erred`.
#[derive(Debug)]
pub struct Update<'c> {
    catalog: &'c Catalog,
    resource_id: Uuid,
    name: Option<String>,
    attributes: Option<Map<String, Value>>,
    if_match: Option<i64>,
    scope: Option<String>,
}

impl<'c> Update<'c> {
    /// An update of `resource_id`; the changes are checked against its kind when applied.
    pub fn new(
        catalog: &'c Catalog,
        resource_id: Uuid,
        name: Option<String>,
        attributes: Option<Map<String, Value>>,
        if_match: Option<i64>,
    ) -> Self {
        Self {
            catalog,
            resource_id,
            name,
            attributes,
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

impl Executor for Update<'_> {
    const KIND: OperationKind = OperationKind::Update;
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
        let mut errors = Vec::new();
        if self.name.is_none() && self.attributes.as_ref().is_none_or(Map::is_empty) {
            errors.push(FieldError::new(
                "",
                "nothing to update: give `name` and/or `attributes`",
            ));
        }
        let name = match self.name.as_deref().map(ResourceName::parse) {
            Some(Ok(name)) if !kind.updatable.iter().any(|f| f == "name") => {
                errors.push(FieldError::new(
                    "/name",
                    format!("`{}` resources cannot be renamed", kind.name),
                ));
                Some(name)
            }
            Some(Ok(name)) => Some(name),
            Some(Err(e)) => {
                errors.push(FieldError::new("/name", e.to_string()));
                None
            }
            None => None,
        };
        let mut merged = resource.attributes.clone();
        for (key, value) in self.attributes.iter().flatten() {
            if !kind.updatable.iter().any(|f| f == key) {
                errors.push(FieldError::new(
                    format!("/attributes/{key}"),
                    format!(
                        "may not be changed by an update (updatable: {})",
                        kind.updatable.join(", ")
                    ),
                ));
            } else if let Some(object) = merged.as_object_mut() {
                object.insert(key.clone(), value.clone());
            }
        }
        if errors.is_empty() {
            match check_json("/attributes", &merged) {
                Ok(()) => errors.extend(kind.schema.validate("/attributes", &merged)),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(ExecutorError::Invalid(errors));
        }
        let mut request = Map::new();
        if let Some(name) = &name {
            request.insert("name".into(), Value::String(name.to_string()));
        }
        let attributes = self
            .attributes
            .clone()
            .filter(|a| !a.is_empty())
            .map(Value::Object);
        if let Some(attributes) = &attributes {
            request.insert("attributes".into(), attributes.clone());
        }
        let resource = schedule(
            conn,
            &resource,
            Transition::ScheduleUpdating,
            &Schedule {
                operation_id,
                name: name.as_ref().map(ResourceName::as_str),
                attributes: attributes.as_ref(),
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
            &kind.update,
            kind.queue,
        )?;
        Ok(Prepared {
            resource,
            tasks,
            composite: !children.is_empty(),
            queue: kind.queue,
            request: Value::Object(request),
            action: None,
        })
    }
}
