//! AES-256-GCM envelope encryption for the vault.
//!
//! Every sealed value gets its own random 256-bit data key. The data key
//! encrypts the value; a [`KeyProvider`] wraps the data key: a local key
//! ring ([`LocalKeyProvider`], from a key file or an environment
//! variable), AWS KMS ([`AwsKmsProvider`]) or a Vault/OpenBao Transit
//! engine ([`TransitProvider`]), with [`CachingKeyProvider`] in front of a
//! remote one so reads do not cost a round trip each. The sealed bytes carry a format version, the
//! id of the master key that wrapped the data key and the wrapped data key
//! itself, so master keys can rotate without re-encrypting every value.
//! The caller's associated data (for the vault: the secret's address and
//! version) is authenticated but not stored, so a sealed value copied to
//! another address fails to open.
//!
//! The rest of the vault never names `ring`: it sees [`Envelope`] and
//! [`KeyProvider`] only.
//!
//! ```
//! use std::sync::Arc;
//! use vault_encryption_layer::{Envelope, LocalKeyProvider};
//!
//! # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! # rt.block_on(async {
//! let keys = Arc::new(LocalKeyProvider::generate()?);
//! let envelope = Envelope::new(keys);
//! let sealed = envelope.seal(b"xoxb-123", b"prod/pf_203/slack#1").await?;
//! let opened = envelope.open(&sealed, b"prod/pf_203/slack#1").await?;
//! assert_eq!(&opened[..], b"xoxb-123");
//! assert!(envelope.open(&sealed, b"prod/pf_203/notion#1").await.is_err());
//! # Ok::<(), vault_encryption_layer::Error>(())
//! # }).unwrap();
//! ```

mod aws_kms;
mod cache;
mod envelope;
mod error;
mod http;
mod local;
mod provider;
mod sigv4;
mod transit;
mod util;

pub use aws_kms::{AwsKmsConfig, AwsKmsProvider, aws_vault_key_id};
pub use cache::{CacheLimits, CacheStats, CachingKeyProvider};
pub use sigv4::AwsCredentials;
pub use transit::{TransitConfig, TransitProvider};

pub use envelope::{Envelope, FORMAT_VERSION, sealed_key_id};
pub use error::{Error, Result};
pub use local::LocalKeyProvider;
pub use provider::{DATA_KEY_LEN, DataKey, KeyProvider, WrappedKey};
pub use util::{hmac_sha256, random_u64};
