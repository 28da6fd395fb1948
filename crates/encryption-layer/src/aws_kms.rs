//! AWS KMS as the master key: data keys are wrapped by KMS `Encrypt` and
//! unwrapped by KMS `Decrypt`, over SigV4-signed HTTPS.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::digest;
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use crate::http::exchange;
use crate::provider::{DataKey, KeyProvider, WrappedKey};
use crate::sigv4::{self, AwsCredentials};
use crate::{Error, Result};

/// The encryption context every wrap is bound to: a blob wrapped for
/// another purpose with the same KMS key does not unwrap here.
const CONTEXT_KEY: &str = "purpose";
const CONTEXT_VALUE: &str = "vault-engine-data-key-v1";

/// Where and how to reach AWS KMS.
#[derive(Debug, Clone)]
pub struct AwsKmsConfig {
    /// The KMS endpoint, e.g. `https://kms.eu-west-1.amazonaws.com`.
    pub endpoint: String,
    /// The region requests are signed for.
    pub region: String,
    /// The KMS key new data keys are wrapped under (key id, alias or ARN).
    pub key_id: String,
    /// KMS keys used before, still accepted for unwrapping.
    pub previous_key_ids: Vec<String>,
    /// The credentials requests are signed with.
    pub credentials: AwsCredentials,
    /// Time limit of one request.
    pub timeout: Duration,
}

/// The vault's id for a KMS key: `aws:` and the key as configured when
/// that fits the sealed format's 64 bytes, else `aws:` and a SHA-256
/// prefix of it.
pub fn aws_vault_key_id(kms_key: &str) -> String {
    let direct = format!("aws:{kms_key}");
    if direct.len() <= 64 && direct.bytes().all(|b| b.is_ascii_graphic()) {
        return direct;
    }
    let hash = digest::digest(&digest::SHA256, kms_key.as_bytes());
    let hex: String = hash.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("aws:{hex}")
}

/// Master keys in AWS KMS (or anything that speaks its JSON API).
///
/// Each seal costs one `Encrypt` call and each open one `Decrypt` call;
/// put a [`crate::CachingKeyProvider`] in front so reads are served from
/// memory. KMS rotates key material behind a key id by itself; moving to
/// another KMS key is a configuration change (`key_id` becomes the new
/// key, the old one moves to `previous_key_ids`) followed by a rewrap.
pub struct AwsKmsProvider {
    config: AwsKmsConfig,
    /// (vault key id, KMS key id), the active one first.
    keys: Vec<(String, String)>,
    url: reqwest::Url,
    host: String,
    http: reqwest::Client,
}

impl fmt::Debug for AwsKmsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsProvider")
            .field("endpoint", &self.config.endpoint)
            .field("region", &self.config.region)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct EncryptResponse {
    #[serde(rename = "CiphertextBlob")]
    ciphertext_blob: String,
}

#[derive(Deserialize)]
struct DecryptResponse {
    #[serde(rename = "Plaintext")]
    plaintext: Zeroizing<String>,
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    #[serde(rename = "__type", default)]
    kind: String,
    #[serde(default, alias = "Message")]
    message: String,
}

impl AwsKmsProvider {
    /// A provider for `config` (no request is made yet; see
    /// [`KeyProvider::check`]).
    pub fn new(config: AwsKmsConfig) -> Result<Self> {
        let url = reqwest::Url::parse(&config.endpoint)
            .map_err(|e| Error::InvalidKey(format!("aws-kms endpoint: {e}")))?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => {
                return Err(Error::InvalidKey("aws-kms endpoint has no host".to_owned()));
            }
        };
        if config.key_id.trim().is_empty() {
            return Err(Error::InvalidKey("aws-kms key_id is empty".to_owned()));
        }
        let mut keys = vec![(aws_vault_key_id(&config.key_id), config.key_id.clone())];
        for old in &config.previous_key_ids {
            let id = aws_vault_key_id(old);
            if !keys.iter().any(|(k, _)| *k == id) {
                keys.push((id, old.clone()));
            }
        }
        let http = crate::http::client(config.timeout).map_err(Error::Kms)?;
        Ok(Self {
            config,
            keys,
            url,
            host,
            http,
        })
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        operation: &str,
        body: serde_json::Value,
    ) -> Result<T> {
        let body = Zeroizing::new(serde_json::to_vec(&body).map_err(|_| Error::Encrypt)?);
        let target = format!("TrentService.{operation}");
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", target.as_str()),
        ];
        let path = match self.url.path() {
            "" => "/",
            p => p,
        };
        let signed = sigv4::sign(
            &sigv4::Request {
                method: "POST",
                host: &self.host,
                path,
                query: &[],
                headers: &headers,
                body: &body,
            },
            &self.config.credentials,
            &self.config.region,
            "kms",
            time::OffsetDateTime::now_utc(),
        );
        let mut request = self.http.post(self.url.clone());
        for (k, v) in headers.iter() {
            request = request.header(*k, *v);
        }
        for (k, v) in signed {
            request = request.header(k, v);
        }
        let (status, bytes) = exchange(request.body(body.to_vec()))
            .await
            .map_err(|reason| {
                Error::Kms(format!("{operation} at {}: {reason}", self.config.endpoint))
            })?;
        if !status.is_success() {
            let err: ErrorResponse = serde_json::from_slice(&bytes).unwrap_or_default();
            // KMS's answer to a wrapped key it did not make, or one that was
            // changed: the stored value is damaged or was swapped, which no
            // retry mends (not the service being unavailable).
            let kind = err.kind.rsplit('#').next().unwrap_or_default();
            if status == reqwest::StatusCode::BAD_REQUEST
                && matches!(kind, "InvalidCiphertextException" | "IncorrectKeyException")
            {
                return Err(Error::Decrypt);
            }
            let message = format!(
                "{operation} at {} answered {status}: {} {}",
                self.config.endpoint, err.kind, err.message
            );
            return Err(Error::Kms(crate::http::short_message(message)));
        }
        serde_json::from_slice(&bytes).map_err(|_| {
            Error::Kms(format!(
                "{operation} at {} answered with an unexpected body",
                self.config.endpoint
            ))
        })
    }

    fn kms_key(&self, key_id: &str) -> Result<&str> {
        self.keys
            .iter()
            .find(|(id, _)| id == key_id)
            .map(|(_, kms)| kms.as_str())
            .ok_or_else(|| Error::UnknownKey {
                key_id: key_id.to_owned(),
            })
    }
}

#[async_trait]
impl KeyProvider for AwsKmsProvider {
    fn kind(&self) -> &'static str {
        "aws-kms"
    }

    fn active_key_id(&self) -> String {
        self.keys[0].0.clone()
    }

    fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|(id, _)| id.clone()).collect()
    }

    fn has_key(&self, key_id: &str) -> bool {
        self.keys.iter().any(|(id, _)| id == key_id)
    }

    async fn wrap(&self, data_key: &DataKey) -> Result<WrappedKey> {
        let plaintext = Zeroizing::new(BASE64.encode(data_key.expose()));
        let (vault_id, kms_id) = &self.keys[0];
        let response: EncryptResponse = self
            .call(
                "Encrypt",
                json!({
                    "KeyId": kms_id,
                    "Plaintext": plaintext.as_str(),
                    "EncryptionContext": { CONTEXT_KEY: CONTEXT_VALUE },
                }),
            )
            .await?;
        let bytes = BASE64
            .decode(response.ciphertext_blob)
            .map_err(|_| Error::Kms("Encrypt answered a blob that is not base64".into()))?;
        Ok(WrappedKey {
            key_id: vault_id.clone(),
            bytes,
        })
    }

    async fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey> {
        let kms_id = self.kms_key(key_id)?;
        let response: DecryptResponse = self
            .call(
                "Decrypt",
                json!({
                    "KeyId": kms_id,
                    "CiphertextBlob": BASE64.encode(wrapped),
                    "EncryptionContext": { CONTEXT_KEY: CONTEXT_VALUE },
                }),
            )
            .await?;
        let raw =
            Zeroizing::new(BASE64.decode(response.plaintext.as_bytes()).map_err(|_| {
                Error::Kms("Decrypt answered a plaintext that is not base64".into())
            })?);
        DataKey::from_slice(&raw)
    }
}
