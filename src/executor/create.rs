//! The create executor: inserts the resource in `creation_scheduled`.

use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Executor, ExecutorError, Prepared, plan};
use crate::catalog::{Catalog, ChildDecl, Kind};
use crate::db;
use crate::domain::{FieldError, OperationKind, ResourceName, Transition, check_json};

/// Create a resource of a kind, with its children if the kind is composite.
/// Success: `set_ok`; failure: `set_erred`, after the kind's compensation.
#[derive(Debug)]
pub struct Create<'c> {
    catalog: &'c Catalog,
    tenant: String,
    kind: &'c Kind,
    name: ResourceName,
    attributes: Value,
    children: Vec<NewChild>,
}

/// A child to create with its parent.
#[derive(Debug)]
struct NewChild {
    role: String,
    kind: String,
    name: String,
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
        let children = match &parsed_name {
            Ok(parent) if errors.is_empty() => {
                children(catalog, kind, parent.as_str(), &attributes, &mut errors)
            }
            _ => Vec::new(),
        };
        match parsed_name {
            Ok(name) if errors.is_empty() => Ok(Self {
                catalog,
                tenant: String::new(),
                kind,
                name,
                attributes,
                children,
            }),
            _ => Err(ExecutorError::Invalid(errors)),
        }
    }
}

/// The children a composite kind's attributes call for, each checked
/// against its own kind's schema; problems go to `errors`, pointing at the
/// parent's attribute that made the child.
fn children(
    catalog: &Catalog,
    kind: &Kind,
    parent: &str,
    attributes: &Value,
    errors: &mut Vec<FieldError>,
) -> Vec<NewChild> {
    let mut out = Vec::new();
    for (role, decl) in &kind.children {
        let Some(child_kind) = catalog.kind(&decl.kind) else {
            errors.push(FieldError::new(
                "/kind",
                format!("kind `{}` is not in the catalog", decl.kind),
            ));
            continue;
        };
        for (pointer, name, mut child) in instances(decl, role, parent, attributes) {
            let Some(object) = child.as_object_mut() else {
                errors.push(FieldError::new(pointer, "must be an object"));
                continue;
            };
            for key in &decl.inherit {
                if let Some(value) = attributes.get(key) {
                    object.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
            for mut e in child_kind.schema.validate(&pointer, &child) {
                if e.pointer.is_empty() {
                    e.pointer = pointer.clone();
                }
                errors.push(e);
            }
            if let Err(e) = ResourceName::parse(&name) {
                errors.push(FieldError::new(
                    "/name",
                    format!("its {role} would be named `{name}`: {e}"),
                ));
            }
            out.push(NewChild {
                role: role.clone(),
                kind: decl.kind.clone(),
                name,
                attributes: child,
            });
        }
    }
    out
}

/// Each child of a role: where its attributes come from (a JSON pointer into
/// the request), its name, and its own attributes before inheritance.
fn instances(
    decl: &ChildDecl,
    role: &str,
    parent: &str,
    attributes: &Value,
) -> Vec<(String, String, Value)> {
    if let Some(each) = &decl.each {
        let items = attributes
            .get(each)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        return items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                (
                    format!("/attributes/{each}/{i}"),
                    format!("{parent}-{role}-{}", i + 1),
                    item,
                )
            })
            .collect();
    }
    if let Some(when) = &decl.when
        && attributes.get(when) != Some(&Value::Bool(true))
    {
        return Vec::new();
    }
    vec![(
        format!("/attributes/{role}"),
        format!("{parent}-{role}"),
        json!({}),
    )]
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
                parent: None,
            },
        )
        .await?;
        let mut children = plan::Children::new();
        for child in &self.children {
            let row = db::resources::insert(
                conn,
                &db::resources::NewResource {
                    id: Uuid::now_v7(),
                    tenant: &self.tenant,
                    kind: &child.kind,
                    name: &child.name,
                    attributes: &child.attributes,
                    operation_id,
                    parent: Some((resource.id, &child.role)),
                },
            )
            .await?;
            children.entry(child.role.clone()).or_default().push(row.id);
        }
        let tasks = super::plan(
            self.catalog,
            self.kind,
            resource.id,
            &children,
            Self::BEGIN,
            &self.kind.create,
            self.kind.queue,
        )?;
        Ok(Prepared {
            resource,
            tasks,
            composite: !children.is_empty(),
            queue: self.kind.queue,
            request: json!({"name": self.name.as_str(), "attributes": self.attributes}),
            action: None,
        })
    }
}
