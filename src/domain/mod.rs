//! Pure domain types: states, transitions, names, callers. Nothing here knows about
//! HTTP; the `sqlx::Type` derives only name the text spelling of each enum.

mod caller;
mod field_error;
mod limits;
mod name;
mod operation;
mod state;

pub use caller::{Caller, Role, TokenRef};
pub use field_error::FieldError;
pub use limits::{MAX_DEPTH, MAX_JSON_BYTES, check_json};
pub use name::{MAX_NAME_CHARS, NameError, ResourceName};
pub use operation::{OperationKind, OperationState, Queue, TaskState};
pub use state::{ResourceState, Transition};
