//! Errors of access resolution.

use vault_types::ErrorKind;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why access was refused or could not be decided.
///
/// Messages never say which part of the credentials was wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller could not be identified (missing, unknown or wrong credentials).
    #[error("missing or invalid engine credentials")]
    Unauthenticated,
    /// The caller is known but has no grant for this.
    #[error("engine {engine_id} may not {action} this secret")]
    Forbidden {
        /// The authenticated engine.
        engine_id: String,
        /// The action it asked for.
        action: &'static str,
    },
    /// The resolver's configuration is invalid.
    #[error("invalid access configuration: {0}")]
    InvalidConfig(String),
    /// The resolver could not reach a decision (e.g. a remote resolver is down).
    #[error("access resolver unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unauthenticated => ErrorKind::Unauthenticated,
            Self::Forbidden { .. } => ErrorKind::Forbidden,
            Self::InvalidConfig(_) => ErrorKind::Internal,
            Self::Unavailable(_) => ErrorKind::Unavailable,
        }
    }
}
