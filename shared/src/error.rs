//! The error every port returns (the table, ECS, IAM, SQS), stripped of SDK
//! types so domain code can branch on what happened, not on who said it.

use std::fmt;

/// A storage failure, stripped of SDK types so domain code can branch on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The service asked us to slow down; retry with backoff.
    Throttled,
    /// No answer, or a 5xx; retry with backoff.
    Unavailable,
    /// A concurrent writer got in between; retry from a fresh read.
    Conflict,
    /// The request is wrong for the account (no such table, no permission): retrying cannot help.
    Rejected,
    /// An item does not have the shape this code writes.
    Corrupt,
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Throttled => "throttled",
            Self::Unavailable => "unavailable",
            Self::Conflict => "conflict",
            Self::Rejected => "rejected",
            Self::Corrupt => "corrupt item",
        })
    }
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Conflict, message)
    }

    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Corrupt, message)
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Throttled | StoreErrorKind::Unavailable | StoreErrorKind::Conflict)
    }
}
