//! The storage seam.

use std::fmt::Debug;

use async_trait::async_trait;
use vault_types::SecretAddress;

use crate::{AuditRecord, Result, SecretWrite, StoredSecret};

/// Durable storage of sealed secrets and of the usage log.
///
/// Every mutating call carries the audit record that describes it and
/// commits both in one transaction: a change is never stored without its
/// record, nor recorded without being stored.
#[async_trait]
pub trait SecretStore: Debug + Send + Sync + 'static {
    /// The current version of the secret at `address`, if any.
    async fn get(&self, address: &SecretAddress) -> Result<Option<StoredSecret>>;

    /// Stores `write` if the current version is `expected` (`None`: no
    /// secret yet); otherwise fails with [`Error::Conflict`](crate::Error::Conflict)
    /// and changes nothing. `write.version` must be `expected + 1` (or 1).
    async fn put(
        &self,
        write: SecretWrite,
        expected: Option<u64>,
        audit: AuditRecord,
    ) -> Result<()>;

    /// Deletes the secret at `address` (every version) and returns the
    /// version that was deleted, or `None` when there was none; in that case
    /// the audit record is written with outcome
    /// [`AuditOutcome::NotFound`](crate::AuditOutcome::NotFound).
    async fn delete(&self, address: &SecretAddress, audit: AuditRecord) -> Result<Option<u64>>;

    /// Appends one usage record, durably.
    async fn append_audit(&self, record: AuditRecord) -> Result<()>;

    /// The newest `limit` usage records, newest first.
    async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditRecord>>;

    /// The distinct master-key ids that stored secrets are sealed under
    /// (checked at start-up: a key the vault cannot load means it must not
    /// serve).
    async fn key_ids_in_use(&self) -> Result<Vec<String>>;

    /// Checks that the store can serve requests.
    async fn health(&self) -> Result<()>;
}
