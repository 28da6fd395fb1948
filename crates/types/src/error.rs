//! Coarse error kinds shared by every layer.

use std::fmt;

/// What kind of failure an error is, in terms a caller can act on.
///
/// Every library error exposes one of these; only the HTTP layer maps kinds
/// to status codes, in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request itself is malformed or invalid.
    InvalidInput,
    /// The caller could not be identified.
    Unauthenticated,
    /// The caller is known but may not do this.
    Forbidden,
    /// The thing asked for does not exist.
    NotFound,
    /// The request conflicts with the current state (e.g. an expired token).
    Conflict,
    /// Too many requests of this kind; retry later.
    RateLimited,
    /// A dependency (database, key provider, resolver) is unavailable; retry later.
    Unavailable,
    /// A bug or an unexpected state inside the vault.
    Internal,
}

impl ErrorKind {
    /// A short lower-case name, used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
