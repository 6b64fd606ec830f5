//! Pure domain types: states, transitions, names. Nothing here knows about
//! HTTP; the `sqlx::Type` derives only name the text spelling of each enum.

mod field_error;
mod name;
mod operation;
mod state;

pub use field_error::FieldError;
pub use name::{MAX_NAME_CHARS, ResourceName};
pub use operation::{OperationKind, OperationState, Queue, TaskState};
pub use state::{ResourceState, Transition};
