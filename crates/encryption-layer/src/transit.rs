//! HashiCorp Vault / OpenBao Transit as the master key: data keys are
//! wrapped by `transit/encrypt/<key>` and unwrapped by
//! `transit/decrypt/<key>`; Transit key versions are our key versions.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use crate::http::exchange;
use crate::provider::{DataKey, KeyProvider, WrappedKey};
use crate::{Error, Result};

/// Where and how to reach the Transit engine.
#[derive(Clone)]
pub struct TransitConfig {
    /// The server's address, e.g. `https://openbao.internal:8200`.
    pub address: String,
    /// Where the Transit engine is mounted (`transit` by default).
    pub mount: String,
    /// The Transit key's name.
    pub key_name: String,
    /// The token sent as `X-Vault-Token`.
    pub token: Zeroizing<String>,
    /// Time limit of one request.
    pub timeout: Duration,
}

impl fmt::Debug for TransitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransitConfig")
            .field("address", &self.address)
            .field("mount", &self.mount)
            .field("key_name", &self.key_name)
            .field("token", &"[redacted]")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Master keys in a Transit engine. Key id `transit:<name>:v<N>` is
/// version N of the Transit key; [`KeyProvider::rotate`] asks Transit for
/// a new version, [`KeyProvider::retire`] raises the key's
/// `min_decryption_version` past the oldest one.
pub struct TransitProvider {
    config: TransitConfig,
    http: reqwest::Client,
    latest: AtomicU32,
    min_decryption: AtomicU32,
}

impl fmt::Debug for TransitProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransitProvider")
            .field("config", &self.config)
            .field("latest", &self.latest)
            .field("min_decryption", &self.min_decryption)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Deserialize)]
struct KeyInfo {
    latest_version: u32,
    min_decryption_version: u32,
}

#[derive(Deserialize)]
struct Encrypted {
    ciphertext: String,
}

#[derive(Deserialize)]
struct Decrypted {
    plaintext: Zeroizing<String>,
}

#[derive(Deserialize, Default)]
struct Errors {
    #[serde(default)]
    errors: Vec<String>,
}

impl TransitProvider {
    /// Connects to Transit and reads the key's versions; fails clearly
    /// when the server is unreachable, the token is refused or the key
    /// does not exist.
    pub async fn connect(config: TransitConfig) -> Result<Self> {
        // Every sealed value names its key as `transit:<name>:v<version>`
        // in at most 64 bytes: a longer name would fail every seal later.
        let longest = format!("transit:{}:v{}", config.key_name, u32::MAX).len();
        if longest > crate::envelope::MAX_KEY_ID_LEN {
            return Err(Error::Kms(format!(
                "transit key name is {} bytes; at most {} fit in a sealed value's key id",
                config.key_name.len(),
                crate::envelope::MAX_KEY_ID_LEN - (longest - config.key_name.len())
            )));
        }
        let http = crate::http::client(config.timeout).map_err(Error::Kms)?;
        let provider = Self {
            config,
            http,
            latest: AtomicU32::new(0),
            min_decryption: AtomicU32::new(1),
        };
        provider.reload().await?;
        Ok(provider)
    }

    fn prefix(&self) -> String {
        format!("transit:{}:v", self.config.key_name)
    }

    fn key_id(&self, version: u32) -> String {
        format!("{}{version}", self.prefix())
    }

    fn version_of(&self, key_id: &str) -> Option<u32> {
        key_id.strip_prefix(&self.prefix())?.parse().ok()
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/v1/{}/{path}",
            self.config.address.trim_end_matches('/'),
            self.config.mount.trim_matches('/')
        )
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<T>> {
        let (status, bytes) = exchange(request.header("X-Vault-Token", self.config.token.as_str()))
            .await
            .map_err(|reason| {
                Error::Kms(format!(
                    "transit {what} at {}: {reason}",
                    self.config.address
                ))
            })?;
        if !status.is_success() {
            let errors: Errors = serde_json::from_slice(&bytes).unwrap_or_default();
            // Transit's answer to a ciphertext that was changed or is not
            // one of its own: a damaged or swapped value, not an outage.
            if what == "decrypt"
                && status == reqwest::StatusCode::BAD_REQUEST
                && errors.errors.iter().any(|e| {
                    e.contains("message authentication failed") || e.contains("invalid ciphertext")
                })
            {
                return Err(Error::Decrypt);
            }
            let message = format!(
                "transit {what} at {} answered {status}: {}",
                self.config.address,
                errors.errors.join("; ")
            );
            return Err(Error::Kms(crate::http::short_message(message)));
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice::<Envelope<T>>(&bytes)
            .map(|e| Some(e.data))
            .map_err(|_| {
                Error::Kms(format!(
                    "transit {what} at {} answered with an unexpected body",
                    self.config.address
                ))
            })
    }

    async fn read_key(&self) -> Result<KeyInfo> {
        let url = self.url(&format!("keys/{}", self.config.key_name));
        self.send::<KeyInfo>("read key", self.http.get(url))
            .await?
            .ok_or_else(|| Error::Kms("transit read key answered nothing".into()))
    }
}

#[async_trait]
impl KeyProvider for TransitProvider {
    fn kind(&self) -> &'static str {
        "transit"
    }

    fn active_key_id(&self) -> String {
        self.key_id(self.latest.load(Ordering::Acquire))
    }

    fn key_ids(&self) -> Vec<String> {
        let min = self.min_decryption.load(Ordering::Acquire).max(1);
        let latest = self.latest.load(Ordering::Acquire);
        (min..=latest).map(|v| self.key_id(v)).collect()
    }

    fn has_key(&self, key_id: &str) -> bool {
        let min = self.min_decryption.load(Ordering::Acquire).max(1);
        let latest = self.latest.load(Ordering::Acquire);
        self.version_of(key_id)
            .is_some_and(|v| (min..=latest).contains(&v))
    }

    async fn wrap(&self, data_key: &DataKey) -> Result<WrappedKey> {
        let version = self.latest.load(Ordering::Acquire);
        let plaintext = Zeroizing::new(BASE64.encode(data_key.expose()));
        let url = self.url(&format!("encrypt/{}", self.config.key_name));
        let body = json!({ "plaintext": plaintext.as_str(), "key_version": version });
        let out: Encrypted = self
            .send("encrypt", self.http.post(url).json(&body))
            .await?
            .ok_or_else(|| Error::Kms("transit encrypt answered nothing".into()))?;
        if !out.ciphertext.starts_with(&format!("vault:v{version}:")) {
            return Err(Error::Kms(
                "transit encrypt answered a ciphertext of another key version".into(),
            ));
        }
        Ok(WrappedKey {
            key_id: self.key_id(version),
            bytes: out.ciphertext.into_bytes(),
        })
    }

    async fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey> {
        let unknown = || Error::UnknownKey {
            key_id: key_id.to_owned(),
        };
        let version = self.version_of(key_id).ok_or_else(unknown)?;
        if !self.has_key(key_id) {
            return Err(unknown());
        }
        let ciphertext = std::str::from_utf8(wrapped)
            .map_err(|_| Error::Malformed("transit ciphertext is not text"))?;
        // The version in the ciphertext must be the one the sealed value
        // names, so a rewrapped value cannot be swapped back.
        if !ciphertext.starts_with(&format!("vault:v{version}:")) {
            return Err(Error::Decrypt);
        }
        let url = self.url(&format!("decrypt/{}", self.config.key_name));
        let out: Decrypted = self
            .send(
                "decrypt",
                self.http
                    .post(url)
                    .json(&json!({ "ciphertext": ciphertext })),
            )
            .await?
            .ok_or_else(|| Error::Kms("transit decrypt answered nothing".into()))?;
        let raw = Zeroizing::new(
            BASE64
                .decode(out.plaintext.as_bytes())
                .map_err(|_| Error::Kms("transit decrypt answered no base64".into()))?,
        );
        DataKey::from_slice(&raw)
    }

    async fn rotate(&self) -> Result<String> {
        let url = self.url(&format!("keys/{}/rotate", self.config.key_name));
        self.send::<serde_json::Value>("rotate", self.http.post(url))
            .await?;
        self.reload().await?;
        let id = self.active_key_id();
        tracing::info!(key_id = %id, "created a new transit key version");
        Ok(id)
    }

    async fn retire(&self, key_id: &str) -> Result<()> {
        let version = self.version_of(key_id).ok_or_else(|| Error::UnknownKey {
            key_id: key_id.to_owned(),
        })?;
        let min = self.min_decryption.load(Ordering::Acquire).max(1);
        if version != min {
            return Err(Error::Unsupported(format!(
                "transit retires versions oldest first: retire {} before {key_id}",
                self.key_id(min)
            )));
        }
        if version >= self.latest.load(Ordering::Acquire) {
            return Err(Error::Unsupported(format!(
                "{key_id} is the active master key; rotate first"
            )));
        }
        let url = self.url(&format!("keys/{}/config", self.config.key_name));
        let body = json!({ "min_decryption_version": version + 1 });
        self.send::<serde_json::Value>("configure key", self.http.post(url).json(&body))
            .await?;
        self.reload().await?;
        tracing::info!(key_id, "retired a transit key version");
        Ok(())
    }

    async fn reload(&self) -> Result<bool> {
        let info = self.read_key().await?;
        // Versions are never deleted above the newest: a slow reload that
        // read the key before a rotation here must not take it back.
        let old_latest = self.latest.fetch_max(info.latest_version, Ordering::AcqRel);
        // Retirement only raises the minimum: the same holds for it (a
        // minimum lowered by hand at the server is seen after a restart).
        let old_min = self
            .min_decryption
            .fetch_max(info.min_decryption_version, Ordering::AcqRel);
        Ok(old_latest < info.latest_version || old_min < info.min_decryption_version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_name_too_long_for_a_sealed_value_is_refused_before_any_call() {
        let config = |name: &str| TransitConfig {
            // Nothing listens on port 1: reaching it would fail otherwise.
            address: "http://127.0.0.1:1".into(),
            mount: "transit".into(),
            key_name: name.into(),
            token: Zeroizing::new("s.test".into()),
            timeout: Duration::from_secs(2),
        };
        let err = TransitProvider::connect(config(&"k".repeat(45)))
            .await
            .expect_err("too long");
        assert!(err.to_string().contains("at most 44"), "{err}");
        // 44 bytes fit: refused only for the unreachable server.
        let err = TransitProvider::connect(config(&"k".repeat(44)))
            .await
            .expect_err("unreachable");
        assert!(err.to_string().contains("could not connect"), "{err}");
    }
}
