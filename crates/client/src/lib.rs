//! A typed async client for engines that call Vault Engine.
//!
//! ```no_run
//! # async fn run() -> Result<(), vault_client::Error> {
//! use vault_client::{TokenOptions, VaultClient};
//!
//! let vault = VaultClient::new("http://127.0.0.1:8200", "execution", "engine-token")?;
//! let slack = vault
//!     .token("pf_203", "slack", &TokenOptions::default().scopes(["chat:write"]))
//!     .await?;
//! let bearer = slack.access_token.expose();
//! # let _ = bearer;
//! # Ok(())
//! # }
//! ```
//!
//! Errors come back as [`Error`] variants an engine can act on
//! (`ReauthRequired`, `InsufficientScope`, …). Answers 503 and 429 are
//! retried with exponential backoff (honouring `Retry-After`, capped), up to
//! a configurable number of times: always for reads, and for stores and
//! deletes only when the answer says nothing was written (see
//! [`VaultClient::with_retries`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use vault_types::Secret;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No secret at that address (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// The provider rejected the grant; the user must reconnect (409).
    #[error("re-authorization required: {0}")]
    ReauthRequired(String),
    /// The stored token is expired and cannot be refreshed (409).
    #[error("token expired: {0}")]
    TokenExpired(String),
    /// The stored token lacks a required scope (403).
    #[error("insufficient scope: {0}")]
    InsufficientScope(String),
    /// The engine's credentials were refused (401).
    #[error("unauthenticated")]
    Unauthenticated,
    /// The engine may not do this (403); the stable error code.
    #[error("forbidden ({0})")]
    Forbidden(String),
    /// Too many requests, still after retrying (429).
    #[error("rate limited ({code}); retry after {retry_after:?}")]
    RateLimited {
        /// The stable error code.
        code: String,
        /// The server's `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// The vault or something behind it is unavailable, still after
    /// retrying (503); the stable error code.
    #[error("unavailable ({code}): {message}")]
    Unavailable {
        /// The stable error code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// Any other error answer: status, stable code, message.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The stable error code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The request could not be sent or the answer not read.
    #[error("transport: {0}")]
    Transport(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Options of [`VaultClient::token`].
#[derive(Debug, Clone, Default)]
pub struct TokenOptions {
    env: Option<String>,
    scopes: Vec<String>,
    force_refresh: bool,
}

impl TokenOptions {
    /// The environment (default: the vault's default environment).
    pub fn env(mut self, env: impl Into<String>) -> Self {
        self.env = Some(env.into());
        self
    }

    /// Scopes the token must carry.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Refresh the token first (the provider rejected the current one).
    pub fn force_refresh(mut self) -> Self {
        self.force_refresh = true;
        self
    }
}

/// A token to store.
#[derive(Debug, Clone, Serialize)]
pub struct TokenData {
    /// The access token or API key.
    pub access_token: Secret,
    /// The refresh token, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<Secret>,
    /// Lifetime in seconds; `None`: does not expire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    /// Granted scopes.
    pub scopes: Vec<String>,
}

/// A store request.
#[derive(Debug, Clone, Serialize)]
pub struct StoreRequest {
    /// Project.
    pub project_id: String,
    /// Platform.
    pub platform: String,
    /// Environment (default: the vault's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The token.
    pub token_data: TokenData,
    /// Non-secret facts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// An access token handed out by the vault.
#[derive(Debug, Clone, Deserialize)]
pub struct AccessToken {
    /// The token.
    pub access_token: Secret,
    /// Token type, e.g. `Bearer`.
    pub token_type: String,
    /// Expiry (RFC 3339), or `None` for tokens that do not expire.
    pub valid_until: Option<String>,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// The stored version it came from.
    pub version: u64,
    /// The secret's status (`active`, `refresh_failing`).
    pub status: String,
}

/// Metadata of a stored secret (never a token).
#[derive(Debug, Clone, Deserialize)]
pub struct SecretInfo {
    /// Environment.
    pub environment: String,
    /// Project.
    pub project: String,
    /// Platform (lower case).
    pub platform: String,
    /// Version.
    pub version: u64,
    /// Status.
    pub status: String,
    /// Expiry (RFC 3339), if any.
    pub valid_until: Option<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Whether a refresh token is stored.
    pub has_refresh_token: bool,
    /// Last refresh by the vault (RFC 3339), if any.
    #[serde(default)]
    pub last_refresh_at: Option<String>,
    /// Kind of the last refresh failure, if any.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// What a delete did.
#[derive(Debug, Clone, Deserialize)]
pub struct Deleted {
    /// The version deleted.
    pub version: u64,
    /// Per token: `revoked`, `not_supported` or `failed`.
    pub revocation: Vec<Revocation>,
}

/// One token's revocation.
#[derive(Debug, Clone, Deserialize)]
pub struct Revocation {
    /// `access_token` or `refresh_token`.
    pub token: String,
    /// `revoked`, `not_supported` or `failed`.
    pub outcome: String,
    /// The failure kind, when failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// The client. Cheap to clone.
#[derive(Clone)]
pub struct VaultClient {
    base: String,
    engine_id: String,
    token: Secret,
    http: reqwest::Client,
    retries: u32,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("base", &self.base)
            .field("engine_id", &self.engine_id)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    code: String,
    message: String,
}

/// Percent-encodes one path segment (identifiers are `[A-Za-z0-9._:-]`,
/// anything else is escaped and refused by the vault).
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl VaultClient {
    /// A client for the vault at `base_url`, calling as `engine_id`.
    pub fn new(
        base_url: impl Into<String>,
        engine_id: impl Into<String>,
        token: impl Into<Secret>,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(Self {
            base: base_url.into().trim_end_matches('/').to_owned(),
            engine_id: engine_id.into(),
            token: token.into(),
            http,
            retries: 3,
        })
    }

    /// Retries of 503 and 429 answers (default 3). Reads are retried on
    /// both; stores and deletes only on 429 and on 503s that come before
    /// anything is written (`access_resolver_unavailable`,
    /// `key_unavailable`), so a write is never repeated after it may have
    /// been committed.
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Uses `http` (timeouts, TLS roots, client certificates).
    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<T> {
        let mut attempt = 0u32;
        loop {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .header("X-Engine-Id", &self.engine_id)
                .bearer_auth(self.token.expose())
                .query(query);
            if let Some(b) = body {
                req = req.json(b);
            }
            let res = req
                .send()
                .await
                .map_err(|e| Error::Transport(e.to_string()))?;
            let status = res.status().as_u16();
            if res.status().is_success() {
                return res
                    .json()
                    .await
                    .map_err(|e| Error::Transport(e.to_string()));
            }
            let retry_after = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs);
            let (code, message) = match res.json::<ErrorBody>().await {
                Ok(b) => (b.error.code, b.error.message),
                Err(_) => (format!("http_{status}"), String::new()),
            };
            // A read may always be asked again. A write only when the answer
            // says nothing was done: a 429 comes before the request is
            // looked at, and an unavailable access resolver or key comes
            // before anything is written. Any other 503 (storage, usage log)
            // may follow a commit, and repeating the write could put back a
            // token that a refresh or another store has replaced since.
            let nothing_done = status == 429
                || matches!(
                    code.as_str(),
                    "access_resolver_unavailable" | "key_unavailable"
                );
            let repeatable = method == reqwest::Method::GET || nothing_done;
            if (status == 503 || status == 429) && repeatable && attempt < self.retries {
                attempt += 1;
                let backoff = Duration::from_millis(100 * 2u64.pow(attempt.min(10)));
                let wait = retry_after.unwrap_or(backoff).min(Duration::from_secs(10));
                tokio::time::sleep(wait).await;
                continue;
            }
            return Err(match (status, code.as_str()) {
                (401, _) => Error::Unauthenticated,
                (404, "not_found") => Error::NotFound(message),
                (409, "reauth_required") => Error::ReauthRequired(message),
                (409, "token_expired") => Error::TokenExpired(message),
                (403, "insufficient_scope") => Error::InsufficientScope(message),
                (403, _) => Error::Forbidden(code),
                (429, _) => Error::RateLimited { code, retry_after },
                (503, _) => Error::Unavailable { code, message },
                _ => Error::Api {
                    status,
                    code,
                    message,
                },
            });
        }
    }

    fn env_query(env: Option<&str>) -> Vec<(&'static str, String)> {
        env.map(|e| vec![("env", e.to_owned())]).unwrap_or_default()
    }

    /// Stores (or replaces) a token; the stored secret's metadata.
    pub async fn store(&self, request: &StoreRequest) -> Result<SecretInfo> {
        let mut body =
            serde_json::to_value(request).map_err(|e| Error::Transport(e.to_string()))?;
        body["engine_id"] = self.engine_id.clone().into();
        self.call(reqwest::Method::POST, "/vault/store", &[], Some(&body))
            .await
    }

    /// A valid access token for `project`/`platform`.
    pub async fn token(
        &self,
        project: &str,
        platform: &str,
        options: &TokenOptions,
    ) -> Result<AccessToken> {
        let mut query = Self::env_query(options.env.as_deref());
        if !options.scopes.is_empty() {
            query.push(("scopes", options.scopes.join(",")));
        }
        if options.force_refresh {
            query.push(("force_refresh", "true".into()));
        }
        let path = format!("/vault/token/{}/{}", segment(project), segment(platform));
        self.call(reqwest::Method::GET, &path, &query, None).await
    }

    /// The secret's status and metadata (no token).
    pub async fn status(
        &self,
        project: &str,
        platform: &str,
        env: Option<&str>,
    ) -> Result<SecretInfo> {
        let path = format!("/vault/status/{}/{}", segment(project), segment(platform));
        self.call(reqwest::Method::GET, &path, &Self::env_query(env), None)
            .await
    }

    /// Revokes and deletes the secret.
    pub async fn delete(
        &self,
        project: &str,
        platform: &str,
        env: Option<&str>,
    ) -> Result<Deleted> {
        let path = format!("/vault/delete/{}/{}", segment(project), segment(platform));
        self.call(reqwest::Method::DELETE, &path, &Self::env_query(env), None)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("pf_203"), "pf_203");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn debug_hides_the_token() {
        let c = VaultClient::new("http://x", "e", "engine-SECRET").unwrap();
        assert!(!format!("{c:?}").contains("engine-SECRET"));
    }
}
