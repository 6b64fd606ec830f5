//! Per-field validation errors, pointing into the request with a JSON pointer.

use serde::Serialize;
use utoipa::ToSchema;

/// One thing wrong with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON pointer (RFC 6901) to the field in the request body, e.g. `/attributes/flavor`.
    #[schema(example = "/attributes/flavor")]
    pub pointer: String,
    /// What is wrong with it.
    #[schema(example = "\"huge\" is not one of \"small\", \"medium\" or \"large\"")]
    pub detail: String,
}

impl FieldError {
    /// A field error at `pointer`.
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}
