//! Store, fetch and delete third-party credentials.
//!
//! [`TokenManager`] is the vault's core, usable as a library without the
//! HTTP server. It validates what it is given, seals tokens with the
//! encryption layer (bound to their address and version), keeps them in a
//! [`SecretStore`](vault_secret_store::SecretStore), hands out access tokens
//! only while they are valid and carry the scopes asked for, and appends a
//! usage record for every action — before the caller gets an answer.
//!
//! Refresh tokens are kept sealed and never returned by [`TokenManager`].
//!
//! ```
//! use std::sync::Arc;
//! use vault_encryption_layer::{Envelope, LocalKeyProvider};
//! use vault_secret_store::SqliteStore;
//! use vault_token_manager::{RequestContext, StoreRequest, TokenData, TokenManager};
//! use vault_types::{SecretAddress, SystemClock};
//!
//! # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! # rt.block_on(async {
//! let dir = tempfile::tempdir()?;
//! let store = Arc::new(SqliteStore::open(&dir.path().join("vault.db")).await?);
//! let envelope = Envelope::new(Arc::new(LocalKeyProvider::generate()?));
//! let tokens = TokenManager::new(store, envelope, Arc::new(SystemClock));
//!
//! let ctx = RequestContext::new("req-1", Some("integration".into()));
//! let slack = SecretAddress::new("prod", "pf_203", "Slack")?;
//! let mut data = TokenData::new("xoxb-abc".into());
//! data.expires_in = Some(3600);
//! data.scopes = vec!["chat:write".into()];
//! let info = tokens.store(&ctx, StoreRequest::new(slack.clone(), data)).await?;
//! assert_eq!(info.version, 1);
//!
//! let token = tokens.fetch(&ctx, &slack, &["chat:write".into()]).await?;
//! assert_eq!(token.access_token.expose(), "xoxb-abc");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod background;
mod error;
mod forward;
mod keys;
mod locks;
mod manager;
mod model;
mod notify;
pub mod provider;
mod refresh;

pub use background::{NotifierConfig, RefresherConfig};
pub use error::{Error, Result};
pub use forward::{AuditSink, ForwarderConfig, audit_entry_json};
pub use keys::{
    AuditKeyring, KeyMaintenanceConfig, KeyStatus, LEGACY_AUDIT_KEY_LABEL, RewrapProgress,
    run_key_maintenance,
};
pub use manager::{RefreshPolicy, TokenManager, TokenManagerBuilder};
pub use model::{
    DeleteOutcome, IssuedToken, RequestContext, Revocation, RevocationOutcome, SecretInfo,
    StoreBody, StoreRequest, TokenData, describe_json_error, limits, scope_list,
};
pub use notify::{SIGNATURE_HEADER, sign_webhook};
pub use vault_secret_store::{
    AuditAction, AuditEntry, AuditOutcome, AuditPage, AuditQuery, AuditRecord, KeyUsage,
    SecretStatus,
};
