//! The access-resolver seam.

use std::fmt;

use async_trait::async_trait;
use vault_types::Secret;

use crate::{AccessRequest, Result};

/// What a caller presents: its engine id and its bearer token.
#[derive(Clone)]
pub struct EngineCredentials {
    /// The claimed engine id (from `X-Engine-Id`).
    pub engine_id: String,
    /// The bearer token.
    pub token: Secret,
}

impl EngineCredentials {
    /// Builds credentials.
    pub fn new(engine_id: impl Into<String>, token: impl Into<Secret>) -> Self {
        Self {
            engine_id: engine_id.into(),
            token: token.into(),
        }
    }
}

impl fmt::Debug for EngineCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineCredentials")
            .field("engine_id", &self.engine_id)
            .field("token", &self.token)
            .finish()
    }
}

/// An authenticated engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The engine's id.
    pub engine_id: String,
    /// Hex SHA-256 of the token it authenticated with (for resolvers that
    /// decide remotely; the token itself never leaves the vault).
    pub token_sha256: String,
}

/// Decides who is calling and what it may do.
#[async_trait]
pub trait AccessResolver: fmt::Debug + Send + Sync + 'static {
    /// Identifies the caller, or fails with
    /// [`Error::Unauthenticated`](crate::Error::Unauthenticated).
    async fn authenticate(&self, credentials: &EngineCredentials) -> Result<Principal>;

    /// Allows `request` for `principal`, or fails with
    /// [`Error::Forbidden`](crate::Error::Forbidden) (or
    /// [`Error::Unavailable`](crate::Error::Unavailable) when no decision
    /// can be had: callers must treat that as a denial).
    async fn authorize(&self, principal: &Principal, request: &AccessRequest<'_>) -> Result<()>;

    /// Allows vault-wide administrative requests (the usage log) for
    /// `principal` if it holds the `admin` action anywhere; which records
    /// it then sees is decided per address with [`AccessResolver::authorize`].
    async fn authorize_admin(&self, principal: &Principal) -> Result<()>;

    /// Allows requests that act on the whole vault at once (the master and
    /// usage-log keys: their status and rotation) for `principal`. An
    /// `admin` grant on some addresses is not enough: it must cover every
    /// environment, project and platform.
    async fn authorize_vault_admin(&self, principal: &Principal) -> Result<()>;
}
