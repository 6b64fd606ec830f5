//! Operator overrides (admins only): say a resource is `ok` or `erred`,
//! or forget it without touching its backend (`unlink`). Each is recorded in
//! the resource's history with the reason and who did it. A forced delete
//! is the delete executor with `force` ([`super::Delete::forced`]).
//!
//! An override needs nothing in flight on the resource: a running
//! operation would overwrite it (cancel the operation first).

use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{ExecutorError, lock_resource};
use crate::db;
use crate::db::reconcile::{Forget, ForgetGuard};
use crate::db::resources::Resource;
use crate::domain::{Caller, FieldError, Transition};

/// The longest reason accepted, in characters.
pub const MAX_REASON: usize = 1000;

/// Checks an override's reason: required, not blank, at most [`MAX_REASON`] characters.
pub fn check_reason(reason: Option<&str>) -> Result<String, ExecutorError> {
    match reason.map(str::trim) {
        Some(r) if !r.is_empty() && r.chars().count() <= MAX_REASON && !r.contains('\0') => {
            Ok(r.to_owned())
        }
        _ => Err(ExecutorError::Invalid(vec![FieldError::new(
            "/reason",
            format!("a reason is required: 1 to {MAX_REASON} characters, without NUL"),
        )])),
    }
}

/// What the history keeps about an override: who did it.
pub fn override_details(caller: &Caller) -> Value {
    json!({"override": true, "actor": caller.actor()})
}

async fn lock_idle(conn: &mut PgConnection, id: Uuid) -> Result<Resource, ExecutorError> {
    let resource = lock_resource(conn, id, None, None).await?;
    if let Some(op) = resource.current_operation_id {
        return Err(ExecutorError::Conflict(format!(
            "Resource is {} (operation {op} is in flight); cancel it first",
            resource.state
        )));
    }
    Ok(resource)
}

/// `set_ok` or `set_erred` by an admin, whatever the state, with nothing in
/// flight. The caller commits.
pub async fn set_state(
    conn: &mut PgConnection,
    id: Uuid,
    transition: Transition,
    reason: &str,
    caller: &Caller,
) -> Result<Resource, ExecutorError> {
    let resource = lock_idle(conn, id).await?;
    let details = override_details(caller);
    db::reconcile::override_state(conn, id, resource.version, transition, reason, &details)
        .await?
        .ok_or_else(|| ExecutorError::Conflict("The resource changed meanwhile".into()))
}

/// Forgets the resource without touching its backend (its operations and
/// history stay). The caller commits.
pub async fn unlink(
    conn: &mut PgConnection,
    id: Uuid,
    reason: &str,
    caller: &Caller,
) -> Result<(), ExecutorError> {
    let resource = lock_idle(conn, id).await?;
    let details = override_details(caller);
    let why = Forget {
        transition: "unlink",
        reason,
        details: Some(&details),
        task_id: None,
    };
    // A composite's children are forgotten with it: none outlives its parent.
    let children = db::resources::lock_children(conn, id).await?;
    if let Some(busy) = children.iter().find(|c| c.current_operation_id.is_some()) {
        return Err(ExecutorError::Conflict(format!(
            "Its child {} has an operation in flight",
            busy.id
        )));
    }
    for child in &children {
        let guard = ForgetGuard::Version(child.version);
        db::reconcile::forget(conn, child.id, guard, &why).await?;
    }
    if db::reconcile::forget(conn, id, ForgetGuard::Version(resource.version), &why).await? {
        Ok(())
    } else {
        Err(ExecutorError::Conflict(
            "The resource changed meanwhile".into(),
        ))
    }
}
