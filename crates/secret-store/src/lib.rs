//! Persistent storage for sealed secrets and the usage log.
//!
//! The [`SecretStore`] trait is what the token manager asks of storage: keep
//! one sealed secret per [`SecretAddress`](vault_types::SecretAddress) with
//! its non-secret metadata, replace it only when the caller saw the current
//! version (optimistic concurrency), delete it, and append usage records in
//! the same transaction as the change they describe. The store never sees
//! plaintext: values arrive already sealed by the encryption layer.
//!
//! [`SqliteStore`] is the embedded default: one file, WAL mode,
//! `synchronous=FULL`, versioned migrations, all blocking calls on tokio's
//! blocking pool. [`PostgresStore`] lets several replicas share one
//! database.
//!
//! [`fault::FaultyStore`] wraps any store and fails or delays its calls on
//! purpose, to prove that the layers above cope (clear errors, nothing
//! lost, recovery).
//!
//! ```
//! use vault_secret_store::{SecretStore, SqliteStore};
//!
//! # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! # rt.block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let store = SqliteStore::open(&dir.path().join("vault.db")).await?;
//! store.health().await?;
//! # Ok::<(), vault_secret_store::Error>(())
//! # }).unwrap();
//! ```

mod chain;
mod error;
pub mod fault;
mod group;
mod migrate;
mod model;
mod pg_tls;
mod postgres;
mod row;
mod sqlite;
mod store;

pub use error::{Error, Result};
pub use migrate::{MigrationReport, migrate_sqlite_to_postgres};
pub use model::{
    AuditAction, AuditEntry, AuditKeyRecord, AuditMac, AuditOutcome, AuditPage, AuditProblem,
    AuditQuery, AuditRecord, AuditVerification, EngineRecord, KeyUsage, LeaseOutcome,
    NewNotification, PendingNotification, RefreshState, RewrapItem, Rewrapped, SecretMeta,
    SecretStatus, SecretWrite, StoreStats, StoredSecret,
};
pub use postgres::{PostgresOptions, PostgresStore, describe_postgres_url, parse_postgres_url};
pub use sqlite::{SqliteOptions, SqliteStore, backup_database, restore_database, sidecar_file};
pub use store::SecretStore;

#[cfg(test)]
mod tests;
