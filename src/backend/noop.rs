//! A backend that does nothing, for benchmarks: its one effect method,
//! `noop`, answers at once with an empty reply, so a chain of `noop` steps
//! measures the engine (claim, run, record) and nothing else.
//!
//! A catalog uses it like any backend:
//!
//! ```toml
//! [kinds.noop10]
//! backend = "noop"
//! schema = { type = "object" }
//! create = [{ type = "backend_method", method = "noop" }]
//! ```

use async_trait::async_trait;

use super::{Backend, BackendCall, BackendError, BackendReply, MethodInfo, MethodRole};

/// The name catalogs use for [`Noop`] (`backend = "noop"`).
pub const NAME: &str = "noop";

static METHODS: &[MethodInfo] = &[MethodInfo {
    name: std::borrow::Cow::Borrowed("noop"),
    role: MethodRole::Effect,
}];

/// A backend whose only method, `noop` (an effect), returns an empty
/// [`BackendReply`] at once. It has no objects and no runtime states, and a
/// repeated call is trivially idempotent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

#[async_trait]
impl Backend for Noop {
    fn methods(&self) -> &[MethodInfo] {
        METHODS
    }

    fn runtime_states(&self) -> Vec<&str> {
        Vec::new()
    }

    async fn call(&self, method: &str, _call: BackendCall) -> Result<BackendReply, BackendError> {
        match method {
            "noop" => Ok(BackendReply::default()),
            other => Err(BackendError::Permanent(format!(
                "the noop backend has no method `{other}`"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::backend::{Backends, ResourceView};
    use crate::catalog::Catalog;

    fn call() -> BackendCall {
        BackendCall {
            idempotency_key: Uuid::now_v7(),
            resource: ResourceView {
                id: Uuid::now_v7(),
                kind: "noop1".to_owned(),
                name: "n-1".to_owned(),
                backend_id: None,
                runtime_state: None,
                attributes: json!({}),
                status: json!({}),
            },
            parent: None,
            params: json!({}),
        }
    }

    #[tokio::test]
    async fn noop_answers_an_empty_reply() {
        let reply = Noop.call("noop", call()).await;
        assert_eq!(reply, Ok(BackendReply::default()));
    }

    #[tokio::test]
    async fn other_methods_are_refused() {
        let reply = Noop.call("create_instance", call()).await;
        assert!(matches!(reply, Err(BackendError::Permanent(m)) if m.contains("create_instance")));
    }

    #[test]
    fn it_offers_one_effect_method_and_no_runtime_states() {
        assert_eq!(Noop.methods().len(), 1);
        assert_eq!(Noop.methods()[0].name, "noop");
        assert_eq!(Noop.methods()[0].role, MethodRole::Effect);
        assert!(Noop.runtime_states().is_empty());
    }

    #[test]
    fn a_catalog_can_chain_noop_steps() {
        let backends = Backends::new().with(NAME, Arc::new(Noop));
        let catalog = Catalog::parse(
            r#"
            [kinds.noop3]
            backend = "noop"
            schema = { type = "object" }
            create = [
              { type = "backend_method", method = "noop" },
              { type = "backend_method", method = "noop" },
            ]
            "#,
            &backends,
        )
        .expect("a valid catalog");
        assert_eq!(catalog.kind("noop3").map(|k| k.create.len()), Some(2));
        let refused = Catalog::parse(
            r#"
            [kinds.bad]
            backend = "noop"
            schema = { type = "object" }
            create = [{ type = "backend_method", method = "nope" }]
            "#,
            &backends,
        );
        assert!(refused.is_err());
    }
}
