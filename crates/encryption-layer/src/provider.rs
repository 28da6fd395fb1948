//! The key-provider seam.

use std::fmt;

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Length of a data key in bytes (AES-256).
pub const DATA_KEY_LEN: usize = 32;

/// A plaintext data key. Zeroized on drop; `Debug` prints nothing of it.
pub struct DataKey(Zeroizing<[u8; DATA_KEY_LEN]>);

impl DataKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; DATA_KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies a key of exactly [`DATA_KEY_LEN`] bytes out of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let mut raw = Zeroizing::new([0u8; DATA_KEY_LEN]);
        if bytes.len() != DATA_KEY_LEN {
            return Err(Error::Malformed("data key has the wrong length"));
        }
        raw.copy_from_slice(bytes);
        Ok(Self(raw))
    }

    /// A fresh random key from the system generator.
    pub fn generate() -> Result<Self> {
        use ring::rand::SecureRandom;
        let mut raw = Zeroizing::new([0u8; DATA_KEY_LEN]);
        ring::rand::SystemRandom::new()
            .fill(raw.as_mut())
            .map_err(|_| Error::Random)?;
        Ok(Self(raw))
    }

    /// The raw key bytes.
    pub fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }

    /// A second copy of the key (for a cache); also zeroized on drop.
    pub fn duplicate(&self) -> Self {
        Self(self.0.clone())
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

/// A data key encrypted by a master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Id of the master key that wrapped it (ASCII, 1–64 bytes).
    pub key_id: String,
    /// The provider-specific ciphertext of the data key.
    pub bytes: Vec<u8>,
}

/// Holds master keys and wraps and unwraps data keys with them.
///
/// A local key file, an environment variable or a remote KMS: the envelope
/// does not care which. A provider knows one or more master key versions,
/// each with its own id; `active_key_id` is the one new values are sealed
/// under, and `unwrap` accepts every id in `key_ids`, so values sealed
/// before a rotation stay readable until they are rewrapped and the old
/// version is retired.
#[async_trait]
pub trait KeyProvider: fmt::Debug + Send + Sync + 'static {
    /// A short name of the kind of provider (`local`, `aws-kms`, `transit`).
    fn kind(&self) -> &'static str;

    /// The id of the key used for new values.
    fn active_key_id(&self) -> String;

    /// Every key id this provider can unwrap under, the active one included.
    fn key_ids(&self) -> Vec<String>;

    /// Whether `key_id` is one of [`KeyProvider::key_ids`] (checked on every
    /// cached unwrap; providers answer it without building the list).
    fn has_key(&self, key_id: &str) -> bool {
        self.key_ids().iter().any(|k| k == key_id)
    }

    /// Encrypts `data_key` under the active master key.
    async fn wrap(&self, data_key: &DataKey) -> Result<WrappedKey>;

    /// Decrypts a data key that was wrapped under `key_id`.
    async fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey>;

    /// A 256-bit key for another purpose, derived from the active master
    /// key and `label`: the same label always gives the same key while the
    /// master key stays. Remote KMS providers cannot derive keys.
    async fn derive(&self, label: &str) -> Result<DataKey> {
        let _ = label;
        Err(Error::Unsupported(format!(
            "the {} key provider cannot derive keys",
            self.kind()
        )))
    }

    /// Creates a new master key version and makes it the active one;
    /// returns its id. Values sealed under older versions stay readable.
    async fn rotate(&self) -> Result<String> {
        Err(Error::Unsupported(format!(
            "the {} key provider cannot create key versions itself",
            self.kind()
        )))
    }

    /// Forgets master key version `key_id` for good. Callers must make
    /// sure nothing is still sealed under it; the active key cannot be
    /// retired.
    async fn retire(&self, key_id: &str) -> Result<()> {
        let _ = key_id;
        Err(Error::Unsupported(format!(
            "the {} key provider cannot retire key versions itself",
            self.kind()
        )))
    }

    /// Picks up versions another process added or retired (a rotation made
    /// by the command-line tool, another replica). True when anything
    /// changed.
    async fn reload(&self) -> Result<bool> {
        Ok(false)
    }

    /// Checks that the provider works: a data key wraps and unwraps under
    /// the active key (for a KMS: it is reachable and lets us use the key).
    async fn check(&self) -> Result<()> {
        let probe = DataKey::from_bytes([0x5a; DATA_KEY_LEN]);
        let wrapped = self.wrap(&probe).await?;
        let back = self.unwrap(&wrapped.key_id, &wrapped.bytes).await?;
        if back.expose() == probe.expose() {
            Ok(())
        } else {
            Err(Error::Decrypt)
        }
    }
}
