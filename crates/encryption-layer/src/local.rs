//! A master key held locally: from a file or an environment variable.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::provider::{DATA_KEY_LEN, DataKey, KeyProvider, WrappedKey};
use crate::{Error, Result};

const KEY_LEN: usize = 32;
const WRAP_AAD_PREFIX: &[u8] = b"vault-data-key-v1\0";

/// A 256-bit master key held in this process.
///
/// The key id is derived from the key itself (`local-` and 16 hex digits of
/// an HMAC of a fixed label), so a different key under the same file name is
/// reported as a missing key id instead of as corrupt data.
///
/// Wrapped data key layout: `nonce(12) || AES-256-GCM(master, data key) ||
/// tag(16)`, with associated data `"vault-data-key-v1\0" || key id`.
///
/// The raw key bytes are zeroized on drop. `ring`'s expanded key schedule
/// is kept for the provider's lifetime; `ring` does not expose a way to
/// zeroize it.
pub struct LocalKeyProvider {
    key_id: String,
    key: LessSafeKey,
    derivation: hmac::Key,
    rng: SystemRandom,
}

impl fmt::Debug for LocalKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyProvider")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl LocalKeyProvider {
    /// A provider for the given raw key bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != KEY_LEN {
            return Err(Error::InvalidKey(format!(
                "master key must be {KEY_LEN} bytes, got {}",
                bytes.len()
            )));
        }
        let id_key = hmac::Key::new(hmac::HMAC_SHA256, bytes);
        let tag = hmac::sign(&id_key, b"vault-engine master key id v1");
        let mut key_id = String::from("local-");
        for b in &tag.as_ref()[..8] {
            key_id.push_str(&format!("{b:02x}"));
        }
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| Error::InvalidKey("bad key".into()))?;
        Ok(Self {
            key_id,
            key: LessSafeKey::new(unbound),
            derivation: hmac::Key::new(hmac::HMAC_SHA256, bytes),
            rng: SystemRandom::new(),
        })
    }

    /// A provider for a base64-encoded 32-byte key (surrounding white space
    /// is ignored). `source` names where it came from, for error messages.
    pub fn from_base64(source: &str, encoded: &str) -> Result<Self> {
        let encoded = encoded.trim();
        if encoded.is_empty() {
            return Err(Error::InvalidKey(format!("{source} is empty")));
        }
        let bytes = Zeroizing::new(
            BASE64
                .decode(encoded)
                .map_err(|_| Error::InvalidKey(format!("{source} is not valid base64")))?,
        );
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::InvalidKey(msg) => Error::InvalidKey(format!("{source}: {msg}")),
            other => other,
        })
    }

    /// A provider with a fresh random key (for tests and examples).
    pub fn generate() -> Result<Self> {
        let bytes = random_key()?;
        Self::from_bytes(bytes.as_ref())
    }

    /// Reads a base64 key from the environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self> {
        let value =
            Zeroizing::new(std::env::var(var).map_err(|_| {
                Error::InvalidKey(format!("environment variable {var} is not set"))
            })?);
        Self::from_base64(&format!("environment variable {var}"), &value)
    }

    /// Reads a base64 key from `path`. When the file does not exist and
    /// `create` is true, a new random key is written there first (mode
    /// 0600, created exclusively, synced to disk).
    pub fn from_file(path: &Path, create: bool) -> Result<Self> {
        let io_err = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        if create && !path.exists() {
            let bytes = random_key()?;
            let encoded = Zeroizing::new(BASE64.encode(bytes.as_ref()));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io_err)?;
            file.write_all(encoded.as_bytes()).map_err(io_err)?;
            file.write_all(b"\n").map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
            tracing::info!(path = %path.display(), "generated a new master key file");
        }
        let meta = std::fs::metadata(path).map_err(io_err)?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                "master key file is readable by other users; chmod 600 it"
            );
        }
        let contents = Zeroizing::new(std::fs::read_to_string(path).map_err(io_err)?);
        Self::from_base64(&format!("key file {}", path.display()), &contents)
    }

    fn check_key_id(&self, key_id: &str) -> Result<()> {
        let same = key_id.len() == self.key_id.len()
            && bool::from(key_id.as_bytes().ct_eq(self.key_id.as_bytes()));
        if same {
            Ok(())
        } else {
            Err(Error::UnknownKey {
                key_id: key_id.to_owned(),
            })
        }
    }

    fn wrap_aad(&self) -> Vec<u8> {
        let mut aad = WRAP_AAD_PREFIX.to_vec();
        aad.extend_from_slice(self.key_id.as_bytes());
        aad
    }
}

fn random_key() -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    SystemRandom::new()
        .fill(bytes.as_mut())
        .map_err(|_| Error::Random)?;
    Ok(bytes)
}

#[async_trait]
impl KeyProvider for LocalKeyProvider {
    fn active_key_id(&self) -> &str {
        &self.key_id
    }

    async fn wrap(&self, data_key: &DataKey) -> Result<WrappedKey> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| Error::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + DATA_KEY_LEN + 16);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(data_key.expose());
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.wrap_aad()),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| Error::Encrypt)?;
        out.extend_from_slice(tag.as_ref());
        Ok(WrappedKey {
            key_id: self.key_id.clone(),
            bytes: out,
        })
    }

    async fn derive(&self, label: &str) -> Result<DataKey> {
        // HMAC-SHA256(master, "vault-engine derive v1\0" || label): a PRF,
        // so derived keys say nothing of the master key or of each other.
        let mut input = b"vault-engine derive v1\0".to_vec();
        input.extend_from_slice(label.as_bytes());
        let tag = hmac::sign(&self.derivation, &input);
        let mut raw = [0u8; DATA_KEY_LEN];
        raw.copy_from_slice(tag.as_ref());
        let key = DataKey::from_bytes(raw);
        zeroize::Zeroize::zeroize(&mut raw);
        Ok(key)
    }

    async fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey> {
        self.check_key_id(key_id)?;
        if wrapped.len() != NONCE_LEN + DATA_KEY_LEN + 16 {
            return Err(Error::Malformed("wrapped data key has the wrong length"));
        }
        let (nonce, ciphertext) = wrapped.split_at(NONCE_LEN);
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(nonce);
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(self.wrap_aad()),
                buf.as_mut_slice(),
            )
            .map_err(|_| Error::Decrypt)?;
        let mut raw = [0u8; DATA_KEY_LEN];
        raw.copy_from_slice(plain);
        let key = DataKey::from_bytes(raw);
        zeroize::Zeroize::zeroize(&mut raw);
        Ok(key)
    }
}

#[cfg(test)]
mod tests;
