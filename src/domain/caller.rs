//! Who is calling: a tenant and a role, from an API token.

use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, in every tenant.
    Admin,
    /// Read, and run executors, in its tenant.
    Operator,
    /// Read only, in its tenant.
    Viewer,
}

impl Role {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Viewer => "viewer",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Admin, Self::Operator, Self::Viewer]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant it acts for; new resources belong to it.
    pub tenant: String,
    /// What it may do.
    pub role: Role,
    /// The token it called with; `None` while the service runs open.
    pub token: Option<TokenRef>,
}

/// A token, as the history names who did something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRef {
    /// Its id.
    pub id: uuid::Uuid,
    /// Its name (a label for people; may be empty).
    pub name: String,
}

impl Caller {
    /// The caller of a service running open (no tokens): an admin of the empty tenant.
    pub fn open() -> Self {
        Self {
            tenant: String::new(),
            role: Role::Admin,
            token: None,
        }
    }

    /// The tenant its reads and writes are confined to; `None` for an admin, who sees all.
    pub fn scope(&self) -> Option<&str> {
        (self.role != Role::Admin).then_some(self.tenant.as_str())
    }

    /// Who it is, for the history: its token's id and name, tenant and
    /// role (`"token": null` while the service runs open).
    pub fn actor(&self) -> serde_json::Value {
        serde_json::json!({
            "token": self.token,
            "tenant": self.tenant,
            "role": self.role.as_str(),
        })
    }

    /// Whether it may change things.
    pub fn may_write(&self) -> bool {
        self.role != Role::Viewer
    }
}
