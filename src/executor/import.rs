//! The import executor: adopts an existing backend object as a resource.
//! The resource is inserted in `creation_scheduled` with its backend id, and
//! the kind's import chain (by default, one pull) reads it. Success:
//! `set_ok`; failure or cancel: the row is removed again (history kept), so
//! a failed import leaves no resource behind.

use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::pull::pull_step;
use super::{Executor, ExecutorError, Prepared};
use crate::catalog::{Catalog, Form, Kind};
use crate::db;
use crate::domain::{FieldError, OperationKind, ResourceName, Transition, check_json};

/// The longest backend id accepted.
const MAX_BACKEND_ID: usize = 255;

/// Import a backend object of a kind.
#[derive(Debug)]
pub struct Import<'c> {
    catalog: &'c Catalog,
    tenant: String,
    kind: &'c Kind,
    chain: Vec<Form>,
    name: ResourceName,
    backend_id: String,
    attributes: Value,
}

impl<'c> Import<'c> {
    /// Parses an import request against the catalog; every problem is reported.
    pub fn parse(
        catalog: &'c Catalog,
        kind: &str,
        name: &str,
        backend_id: &str,
        attributes: Value,
    ) -> Result<Self, ExecutorError> {
        let mut errors = Vec::new();
        let parsed_name = ResourceName::parse(name)
            .map_err(|e| errors.push(FieldError::new("/name", e.to_string())));
        if backend_id.trim().is_empty()
            || backend_id.len() > MAX_BACKEND_ID
            || backend_id.contains('\0')
        {
            errors.push(FieldError::new(
                "/backend_id",
                format!("must be 1 to {MAX_BACKEND_ID} bytes, not blank, without NUL"),
            ));
        }
        let Some(kind) = catalog.kind(kind) else {
            let known: Vec<&str> = catalog.kinds().map(|k| k.name.as_str()).collect();
            errors.push(FieldError::new(
                "/kind",
                format!("unknown kind `{kind}` (known: {})", known.join(", ")),
            ));
            return Err(ExecutorError::Invalid(errors));
        };
        let chain = match &kind.import {
            Some(chain) => Some(chain.clone()),
            None => pull_step(kind).map(|step| vec![Form::Step { step, on: None }]),
        };
        let Some(chain) = chain else {
            errors.push(FieldError::new(
                "/kind",
                format!(
                    "`{}` resources cannot be imported: the kind has no import chain and no pull method",
                    kind.name
                ),
            ));
            return Err(ExecutorError::Invalid(errors));
        };
        match check_json("/attributes", &attributes) {
            Ok(()) => errors.extend(kind.schema.validate("/attributes", &attributes)),
            Err(e) => errors.push(e),
        }
        match parsed_name {
            Ok(name) if errors.is_empty() => Ok(Self {
                catalog,
                tenant: String::new(),
                kind,
                chain,
                name,
                backend_id: backend_id.to_owned(),
                attributes,
            }),
            _ => Err(ExecutorError::Invalid(errors)),
        }
    }

    /// Makes the resource belong to `tenant` (default: the empty tenant of an open service).
    pub fn for_tenant(mut self, tenant: &str) -> Self {
        tenant.clone_into(&mut self.tenant);
        self
    }
}

impl Executor for Import<'_> {
    const KIND: OperationKind = OperationKind::Import;
    const BEGIN: Transition = Transition::BeginCreating;

    async fn pre_apply(
        &self,
        conn: &mut PgConnection,
        operation_id: Uuid,
    ) -> Result<Prepared, ExecutorError> {
        let kind = &self.kind.name;
        // Under this lock no other import of the object can pass the check.
        db::reconcile::lock_backend_object(conn, kind, &self.backend_id).await?;
        if let Some(id) = db::reconcile::managed_by(conn, kind, &self.backend_id).await? {
            return Err(ExecutorError::Conflict(format!(
                "The backend object `{}` of kind `{kind}` is already managed as resource {id}",
                self.backend_id
            )));
        }
        let resource = db::reconcile::insert_imported(
            conn,
            &db::reconcile::Imported {
                id: Uuid::now_v7(),
                tenant: &self.tenant,
                kind,
                name: self.name.as_str(),
                backend_id: &self.backend_id,
                attributes: &self.attributes,
                operation_id,
            },
        )
        .await?;
        let tasks = super::plan(
            self.catalog,
            self.kind,
            resource.id,
            &super::plan::Children::new(),
            Self::BEGIN,
            &self.chain,
            self.kind.queue,
        )?;
        Ok(Prepared {
            resource,
            tasks,
            composite: false,
            queue: self.kind.queue,
            request: json!({
                "name": self.name.as_str(),
                "backend_id": self.backend_id,
                "attributes": self.attributes,
            }),
            action: None,
        })
    }
}
