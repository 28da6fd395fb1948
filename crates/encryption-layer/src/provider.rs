//! The key-provider seam.

use std::fmt;

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::Result;

/// Length of a data key in bytes (AES-256).
pub const DATA_KEY_LEN: usize = 32;

/// A plaintext data key. Zeroized on drop; `Debug` prints nothing of it.
pub struct DataKey(Zeroizing<[u8; DATA_KEY_LEN]>);

impl DataKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; DATA_KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The raw key bytes.
    pub fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
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
/// does not care which. `active_key_id` is the key new values are sealed
/// under; `unwrap` must accept every key id the provider still knows, so
/// values sealed before a rotation stay readable.
#[async_trait]
pub trait KeyProvider: fmt::Debug + Send + Sync + 'static {
    /// The id of the key used for new values.
    fn active_key_id(&self) -> &str;

    /// Encrypts `data_key` under the active master key.
    async fn wrap(&self, data_key: &DataKey) -> Result<WrappedKey>;

    /// Decrypts a data key that was wrapped under `key_id`.
    async fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey>;

    /// A 256-bit key for another purpose (e.g. the usage-log MAC), derived
    /// from the active master key and `label`: the same label always gives
    /// the same key while the master key stays.
    async fn derive(&self, label: &str) -> Result<DataKey>;
}
