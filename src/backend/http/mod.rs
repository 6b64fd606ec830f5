//! The `http` driver: a declared backend reached over HTTP (see `docs/BACKENDS.md`).

use async_trait::async_trait;

use super::declared::{HttpDecl, method_infos};
use super::{Backend, BackendCall, BackendError, BackendReply, MethodInfo};

/// A backend reached over HTTP.
#[derive(Debug)]
pub struct HttpBackend {
    name: String,
    methods: Vec<MethodInfo>,
    decl: HttpDecl,
}

impl HttpBackend {
    /// The backend `name` declares; the error says what is wrong with the declaration.
    pub fn new(name: &str, decl: HttpDecl) -> Result<Self, String> {
        Ok(Self {
            name: name.to_owned(),
            methods: method_infos(&decl.methods),
            decl,
        })
    }
}

#[async_trait]
impl Backend for HttpBackend {
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
            "backend `{}`: the http driver cannot call `{method}` yet",
            self.name
        )))
    }
}
