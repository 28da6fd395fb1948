//! Errors of the token manager.

use vault_types::ErrorKind;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a store, fetch or delete did not succeed. Never carries a token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is invalid; the message says how.
    #[error("{0}")]
    InvalidInput(String),
    /// No secret at the address.
    #[error("no secret stored for {0}")]
    NotFound(String),
    /// The stored token lacks scopes the caller requires.
    #[error("the stored token lacks required scopes: {}", missing.join(", "))]
    InsufficientScope {
        /// The required scopes the token does not have.
        missing: Vec<String>,
    },
    /// The token has expired and cannot be refreshed.
    #[error("the {platform} token has expired and cannot be refreshed; store a new one")]
    TokenExpired {
        /// The platform whose token expired.
        platform: String,
    },
    /// The provider rejected the grant; the user must reconnect.
    #[error("the {platform} connection must be re-authorized by the user")]
    ReauthRequired {
        /// The platform concerned.
        platform: String,
    },
    /// The token needs a refresh and the refresh failed for a reason that
    /// may pass (timeout, provider down, rate limited).
    #[error("refreshing the {platform} token failed ({kind}); retry later")]
    RefreshFailed {
        /// The platform concerned.
        platform: String,
        /// Kind of the failure, e.g. `timeout`.
        kind: String,
    },
    /// A forced refresh came too soon after the last attempt.
    #[error("the {platform} token was refreshed or attempted moments ago; retry later")]
    RefreshRateLimited {
        /// The platform concerned.
        platform: String,
        /// Seconds until a new attempt may be made (`Retry-After`).
        retry_after_secs: u64,
    },
    /// A refresh was asked for a token that cannot be refreshed.
    #[error(
        "the {platform} token cannot be refreshed (no refresh token or no provider configured)"
    )]
    NotRefreshable {
        /// The platform concerned.
        platform: String,
    },
    /// Concurrent writers kept changing the secret.
    #[error("the secret was changed concurrently; retry")]
    Conflict,
    /// The usage record could not be written, so the request was not served.
    #[error("the usage log is unavailable")]
    AuditUnavailable(#[source] vault_secret_store::Error),
    /// Storage failed.
    #[error("storage failed")]
    Store(#[from] vault_secret_store::Error),
    /// Sealing or opening failed, or a key operation was refused. The
    /// encryption layer's messages never hold key material or plaintext.
    #[error("{0}")]
    Crypto(#[from] vault_encryption_layer::Error),
}

impl Error {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidInput(_) => ErrorKind::InvalidInput,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::InsufficientScope { .. } => ErrorKind::Forbidden,
            Self::TokenExpired { .. }
            | Self::ReauthRequired { .. }
            | Self::NotRefreshable { .. }
            | Self::Conflict => ErrorKind::Conflict,
            Self::RefreshFailed { .. } => ErrorKind::Unavailable,
            Self::RefreshRateLimited { .. } => ErrorKind::RateLimited,
            Self::AuditUnavailable(_) => ErrorKind::Unavailable,
            Self::Store(e) => e.kind(),
            Self::Crypto(e) => e.kind(),
        }
    }

    /// A stable machine-readable code for API error bodies and audit details.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "invalid_request",
            Self::NotFound(_) => "not_found",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::TokenExpired { .. } => "token_expired",
            Self::ReauthRequired { .. } => "reauth_required",
            Self::RefreshFailed { .. } => "refresh_failed",
            Self::RefreshRateLimited { .. } => "refresh_rate_limited",
            Self::NotRefreshable { .. } => "not_refreshable",
            Self::Conflict => "conflict",
            Self::AuditUnavailable(_) => "audit_unavailable",
            Self::Store(e) => match e.kind() {
                ErrorKind::Conflict => "conflict",
                ErrorKind::Unavailable => "storage_unavailable",
                _ => "internal",
            },
            Self::Crypto(vault_encryption_layer::Error::UnknownKey { .. }) => "key_unavailable",
            Self::Crypto(vault_encryption_layer::Error::Unsupported(_)) => "unsupported",
            Self::Crypto(e) => match e.kind() {
                ErrorKind::Unavailable => "key_unavailable",
                _ => "decryption_failed",
            },
        }
    }
}
