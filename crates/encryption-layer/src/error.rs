//! Errors of the encryption layer.

use vault_types::ErrorKind;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong sealing or opening a value, or loading keys.
///
/// No variant ever carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sealed bytes do not follow the sealed format.
    #[error("sealed value is malformed: {0}")]
    Malformed(&'static str),
    /// The sealed bytes use a format version this build does not know.
    #[error("sealed value uses unsupported format version {0}")]
    UnsupportedFormat(u8),
    /// The value was wrapped by a master key that is not available.
    #[error("master key {key_id} is not available")]
    UnknownKey {
        /// The id of the key that would be needed.
        key_id: String,
    },
    /// Authentication failed: wrong key, wrong associated data, or tampering.
    #[error("decryption failed: wrong key, wrong address or tampered data")]
    Decrypt,
    /// Encryption failed (should not happen with valid inputs).
    #[error("encryption failed")]
    Encrypt,
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Random,
    /// Master key material is missing or invalid.
    #[error("invalid master key: {0}")]
    InvalidKey(String),
    /// The key provider cannot do what was asked (rotate keys held in an
    /// environment variable, derive a key from a KMS key, …).
    #[error("{0}")]
    Unsupported(String),
    /// A remote KMS could not be reached or refused the request. The
    /// message names the KMS and what it said; never key material.
    #[error("key management service: {0}")]
    Kms(String),
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::UnknownKey { .. }
            | Self::InvalidKey(_)
            | Self::Io { .. }
            | Self::Random
            | Self::Kms(_) => ErrorKind::Unavailable,
            Self::Unsupported(_) => ErrorKind::Conflict,
            Self::Malformed(_) | Self::UnsupportedFormat(_) | Self::Decrypt | Self::Encrypt => {
                ErrorKind::Internal
            }
        }
    }
}
