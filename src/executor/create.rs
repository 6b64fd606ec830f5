//! The create executor: inserts the resource in `creation_scheduled`.

use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Executor, ExecutorError, Prepared};
use crate::catalog::{Catalog, Kind};
use crate::db;
use crate::domain::{FieldError, OperationKind, ResourceName, Transition, check_json};

/// Create a resource of a kind. Success: `set_ok`; failure: `set_erred`.
#[derive(Debug)]
pub struct Create<'c> {
    tenant: String,
    kind: &'c Kind,
    name: ResourceName,
    attributes: Value,
}

impl<'c> Create<'c> {
    /// Parses a create request against the catalog; every problem is reported.
    pub fn parse(
        catalog: &'c Catalog,
        kind: &str,
        name: &str,
        attributes: Value,
    ) -> Result<Self, ExecutorError> {
        let mut errors = Vec::new();
        let parsed_name = ResourceName::parse(name)
            .map_err(|e| errors.push(FieldError::new("/name", e.to_string())));
        let Some(kind) = catalog.kind(kind) else {
            let known: Vec<&str> = catalog.kinds().map(|k| k.name.as_str()).collect();
            errors.push(FieldError::new(
                "/kind",
                format!("unknown kind `{kind}` (known: {})", known.join(", ")),
            ));
            return Err(ExecutorError::Invalid(errors));
        };
        match check_json("/attributes", &attributes) {
            Ok(()) => errors.extend(kind.schema.validate("/attributes", &attributes)),
            Err(e) => errors.push(e),
        }
        match parsed_name {
            Ok(name) if errors.is_empty() => Ok(Self {
                tenant: String::new(),
                kind,
                name,
                attributes,
            }),
            _ => Err(ExecutorError::Invalid(errors)),
        }
    }
}

impl Create<'_> {
    /// Makes the resource belong to `tenant` (default: the empty tenant of an open service).
    pub fn for_tenant(mut self, tenant: &str) -> Self {
        tenant.clone_into(&mut self.tenant);
        self
    }
}

impl Executor for Create<'_> {
    const KIND: OperationKind = OperationKind::Create;
    const BEGIN: Transition = Transition::BeginCreating;

    async fn pre_apply(
        &self,
        conn: &mut PgConnection,
        operation_id: Uuid,
    ) -> Result<Prepared, ExecutorError> {
        let resource = db::resources::insert(
            conn,
            &db::resources::NewResource {
                id: Uuid::now_v7(),
                tenant: &self.tenant,
                kind: &self.kind.name,
                name: self.name.as_str(),
                attributes: &self.attributes,
                operation_id,
            },
        )
        .await?;
        Ok(Prepared {
            resource,
            chain: self.kind.create.clone(),
            queue: self.kind.queue,
            request: json!({"name": self.name.as_str(), "attributes": self.attributes}),
            action: None,
        })
    }
}
