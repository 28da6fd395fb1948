//! Errors of the storage layer.

use vault_types::ErrorKind;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in storage. No variant carries secret data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stored version is not the one the caller expected.
    #[error("the secret was changed concurrently (expected version {expected:?}, found {found:?})")]
    Conflict {
        /// The version the caller expected (`None`: no secret).
        expected: Option<u64>,
        /// The version found (`None`: no secret).
        found: Option<u64>,
    },
    /// The database reported an error.
    #[error("database error")]
    Database(#[from] rusqlite::Error),
    /// PostgreSQL reported an error (its text can quote stored values, so
    /// it is not shown).
    #[error("database error")]
    Postgres(#[from] tokio_postgres::Error),
    /// No database connection could be had (pool exhausted, server down,
    /// a standby that takes no writes).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// TLS to the database cannot be set up (a CA file that does not read).
    #[error("database TLS: {0}")]
    Tls(String),
    /// The database was written by a newer build.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// Version found in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// A stored row does not decode.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The caller passed something the store cannot hold.
    #[error("invalid write: {0}")]
    Invalid(&'static str),
    /// Preparing the database file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A blocking storage task panicked or was cancelled.
    #[error("storage task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl Error {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Conflict { .. } => ErrorKind::Conflict,
            Self::Database(_)
            | Self::Postgres(_)
            | Self::Unavailable(_)
            | Self::Tls(_)
            | Self::Io { .. }
            | Self::Task(_)
            | Self::SchemaTooNew { .. } => ErrorKind::Unavailable,
            Self::Corrupt(_) | Self::Invalid(_) => ErrorKind::Internal,
        }
    }
}
