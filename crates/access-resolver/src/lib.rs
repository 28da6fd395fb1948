//! Who is calling the vault, and what it may do.
//!
//! Every request names its engine (`X-Engine-Id`) and proves it with a
//! bearer token. An [`AccessResolver`] turns those [`EngineCredentials`]
//! into a [`Principal`] (or refuses: unauthenticated) and then decides
//! whether that principal may perform an [`Action`] on a secret address
//! (or refuses: forbidden).
//!
//! [`ConfigResolver`] is the embedded implementation: engines are listed in
//! the configuration, or managed in the database through an
//! [`EngineSource`], with the SHA-256 of their token (compared in constant
//! time; the token itself is never stored) and a list of [`Grant`]s.
//! [`EccResolver`] asks the Engine Control Core over HTTP (the contract is
//! in its module docs) and fails closed; [`ChainResolver`] asks the local
//! resolver about the engines it knows and the core about the others.
//!
//! ```
//! use vault_access_resolver::{
//!     AccessRequest, AccessResolver, Action, ConfigResolver, EngineConfig, EngineCredentials,
//! };
//! use vault_types::SecretAddress;
//!
//! # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! # rt.block_on(async {
//! let resolver = ConfigResolver::new(vec![EngineConfig {
//!     id: "execution".into(),
//!     token_sha256: vault_access_resolver::token_sha256_hex("s3cret"),
//!     grants: vec!["read:prod:*:*".parse()?],
//! }])?;
//! let caller = resolver
//!     .authenticate(&EngineCredentials::new("execution", "s3cret"))
//!     .await?;
//! let slack = SecretAddress::new("prod", "pf_203", "slack")?;
//! resolver.authorize(&caller, &AccessRequest::new(Action::Read, &slack)).await?;
//! assert!(resolver.authorize(&caller, &AccessRequest::new(Action::Delete, &slack)).await.is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod config;
mod ecc;
mod error;
mod grant;
mod resolver;

pub use config::{ConfigResolver, EngineConfig, EngineSource, token_sha256_hex};
pub use ecc::{ChainResolver, EccConfig, EccResolver};
pub use error::{Error, Result};
pub use grant::{AccessRequest, Action, Grant, GrantParseError, GrantSpec, Pattern};
pub use resolver::{AccessResolver, EngineCredentials, Principal};
