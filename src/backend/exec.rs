//! The `exec` driver: a declared backend driven by running a command (see `docs/BACKENDS.md`).

use async_trait::async_trait;

use super::declared::{ExecDecl, method_infos};
use super::{Backend, BackendCall, BackendError, BackendReply, MethodInfo};

/// A backend driven by running a command.
#[derive(Debug)]
pub struct ExecBackend {
    name: String,
    methods: Vec<MethodInfo>,
    decl: ExecDecl,
}

impl ExecBackend {
    /// The backend `name` declares; the error says what is wrong with the declaration.
    pub fn new(name: &str, decl: ExecDecl, _dir: &std::path::Path) -> Result<Self, String> {
        Ok(Self {
            name: name.to_owned(),
            methods: method_infos(&decl.methods),
            decl,
        })
    }
}

#[async_trait]
impl Backend for ExecBackend {
    fn methods(&self) -> &[MethodInfo] {
        &self.methods
    }

    fn runtime_states(&self) -> Vec<&str> {
        self.decl
            .runtime_states
            .iter()
            .map(String::as_str)
            .collect()
    }

    async fn call(&self, method: &str, _call: BackendCall) -> Result<BackendReply, BackendError> {
        Err(BackendError::Permanent(format!(
            "backend `{}`: the exec driver cannot call `{method}` yet",
            self.name
        )))
    }
}
