//! The Engine Control Core resolver and the chained resolver.
//!
//! # Contract
//!
//! The vault POSTs JSON to the configured URL, once per decision it does
//! not have cached:
//!
//! ```json
//! {
//!   "engine_id": "execution",
//!   "token_sha256": "<hex SHA-256 of the engine's bearer token>",
//!   "action": "authenticate" | "store" | "read" | "delete" | "admin",
//!   "environment": "prod",      // null for "authenticate"
//!   "project": "pf_203",        // null for "authenticate"
//!   "platform": "slack",        // null for "authenticate"
//!   "scopes": ["chat:write"]    // scopes a read requires; may be empty
//! }
//! ```
//!
//! The engine's token itself never leaves the vault: the core compares
//! hashes. It answers HTTP 200 with
//!
//! ```json
//! { "allow": true, "ttl_seconds": 30 }
//! ```
//!
//! `ttl_seconds` is optional; the vault caches the decision for the shorter
//! of it and its own configured period (`0`: do not cache). Any other status,
//! a body that is not this shape, a timeout or a connection error is **no
//! decision**: the request is refused with 503
//! `access_resolver_unavailable` (fail closed), never allowed.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};
use vault_types::Secret;

use crate::{
    AccessRequest, AccessResolver, ConfigResolver, EngineCredentials, Error, Principal, Result,
};

/// Settings of the [`EccResolver`].
#[derive(Clone)]
pub struct EccConfig {
    /// Where decisions are asked.
    pub url: String,
    /// Timeout of one call.
    pub timeout: Duration,
    /// Longest time a decision is cached.
    pub cache_ttl: Duration,
    /// An `Authorization` header value the core expects from the vault.
    pub authorization: Option<Secret>,
}

impl fmt::Debug for EccConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EccConfig")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("cache_ttl", &self.cache_ttl)
            .field("authorization", &self.authorization)
            .finish()
    }
}

#[derive(Serialize)]
struct Ask<'a> {
    engine_id: &'a str,
    token_sha256: &'a str,
    action: &'a str,
    environment: Option<&'a str>,
    project: Option<&'a str>,
    platform: Option<&'a str>,
    scopes: &'a [String],
}

#[derive(Deserialize)]
struct Answer {
    allow: bool,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

/// Largest answer read from the core, in bytes: a decision is a few dozen.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// Most cached decisions; past that the cache is emptied of expired ones,
/// or entirely.
const MAX_CACHED: usize = 100_000;

/// An [`AccessResolver`] that asks the Engine Control Core over HTTP.
pub struct EccResolver {
    config: EccConfig,
    http: reqwest::Client,
    cache: Mutex<HashMap<String, (bool, Instant)>>,
}

impl fmt::Debug for EccResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EccResolver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EccResolver {
    /// A resolver asking `config.url`.
    pub fn new(config: EccConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::InvalidConfig(format!("engine control core client: {e}")))?;
        Ok(Self {
            config,
            http,
            cache: Mutex::default(),
        })
    }

    async fn decide(&self, ask: &Ask<'_>) -> Result<bool> {
        let key = format!(
            "{}\0{}\0{}\0{}\0{}\0{}\0{}",
            ask.engine_id,
            ask.token_sha256,
            ask.action,
            ask.environment.unwrap_or(""),
            ask.project.unwrap_or(""),
            ask.platform.unwrap_or(""),
            ask.scopes.join(",")
        );
        let now = Instant::now();
        if let Some((allow, until)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && *until > now
        {
            return Ok(*allow);
        }
        let mut req = self.http.post(&self.config.url).json(ask);
        if let Some(auth) = &self.config.authorization {
            req = req.header(reqwest::header::AUTHORIZATION, auth.expose());
        }
        let unavailable = |what: &str| Error::Unavailable(format!("engine control core {what}"));
        let res = req.send().await.map_err(|e| {
            if e.is_timeout() {
                unavailable("timed out")
            } else {
                unavailable("unreachable")
            }
        })?;
        if !res.status().is_success() {
            return Err(unavailable(&format!("answered {}", res.status().as_u16())));
        }
        let mut res = res;
        let mut body = Vec::new();
        while let Some(chunk) = res
            .chunk()
            .await
            .map_err(|_| unavailable("answer unreadable"))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(unavailable("answer too large"));
            }
            body.extend_from_slice(&chunk);
        }
        let answer: Answer =
            serde_json::from_slice(&body).map_err(|_| unavailable("answer malformed"))?;
        let ttl = answer.ttl_seconds.map_or(self.config.cache_ttl, |s| {
            Duration::from_secs(s).min(self.config.cache_ttl)
        });
        if !ttl.is_zero() {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= MAX_CACHED {
                cache.retain(|_, (_, until)| *until > now);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
            }
            cache.insert(key, (answer.allow, now + ttl));
        }
        Ok(answer.allow)
    }
}

#[async_trait]
impl AccessResolver for EccResolver {
    async fn authenticate(&self, credentials: &EngineCredentials) -> Result<Principal> {
        let token_sha256 = hex::encode(digest(&SHA256, credentials.token.expose().as_bytes()));
        let allow = self
            .decide(&Ask {
                engine_id: &credentials.engine_id,
                token_sha256: &token_sha256,
                action: "authenticate",
                environment: None,
                project: None,
                platform: None,
                scopes: &[],
            })
            .await?;
        if allow && !credentials.token.is_empty() {
            Ok(Principal {
                engine_id: credentials.engine_id.clone(),
                token_sha256,
            })
        } else {
            Err(Error::Unauthenticated)
        }
    }

    async fn authorize_admin(&self, principal: &Principal) -> Result<()> {
        let allow = self
            .decide(&Ask {
                engine_id: &principal.engine_id,
                token_sha256: &principal.token_sha256,
                action: "admin",
                environment: None,
                project: None,
                platform: None,
                scopes: &[],
            })
            .await?;
        if allow {
            Ok(())
        } else {
            Err(Error::Forbidden {
                engine_id: principal.engine_id.clone(),
                action: "admin",
            })
        }
    }

    /// The core is asked the same question as for [`authorize_admin`]
    /// (`admin` with no address): its answer is about the whole vault.
    ///
    /// [`authorize_admin`]: AccessResolver::authorize_admin
    async fn authorize_vault_admin(&self, principal: &Principal) -> Result<()> {
        self.authorize_admin(principal).await
    }

    async fn authorize(&self, principal: &Principal, request: &AccessRequest<'_>) -> Result<()> {
        let allow = self
            .decide(&Ask {
                engine_id: &principal.engine_id,
                token_sha256: &principal.token_sha256,
                action: request.action.as_str(),
                environment: Some(request.address.environment()),
                project: Some(request.address.project()),
                platform: Some(request.address.platform()),
                scopes: request.scopes,
            })
            .await?;
        if allow {
            Ok(())
        } else {
            Err(Error::Forbidden {
                engine_id: principal.engine_id.clone(),
                action: request.action.as_str(),
            })
        }
    }
}

/// Local engines first, then the Engine Control Core: an engine the local
/// resolver knows (configuration or managed engines) is decided locally,
/// every other engine by the core.
#[derive(Debug)]
pub struct ChainResolver {
    local: Arc<ConfigResolver>,
    remote: Arc<dyn AccessResolver>,
}

impl ChainResolver {
    /// Chains `local` before `remote`.
    pub fn new(local: Arc<ConfigResolver>, remote: Arc<dyn AccessResolver>) -> Self {
        Self { local, remote }
    }
}

#[async_trait]
impl AccessResolver for ChainResolver {
    async fn authenticate(&self, credentials: &EngineCredentials) -> Result<Principal> {
        if self.local.knows(&credentials.engine_id).await? {
            self.local.authenticate(credentials).await
        } else {
            self.remote.authenticate(credentials).await
        }
    }

    async fn authorize(&self, principal: &Principal, request: &AccessRequest<'_>) -> Result<()> {
        if self.local.knows(&principal.engine_id).await? {
            self.local.authorize(principal, request).await
        } else {
            self.remote.authorize(principal, request).await
        }
    }

    async fn authorize_admin(&self, principal: &Principal) -> Result<()> {
        if self.local.knows(&principal.engine_id).await? {
            self.local.authorize_admin(principal).await
        } else {
            self.remote.authorize_admin(principal).await
        }
    }

    async fn authorize_vault_admin(&self, principal: &Principal) -> Result<()> {
        if self.local.knows(&principal.engine_id).await? {
            self.local.authorize_vault_admin(principal).await
        } else {
            self.remote.authorize_vault_admin(principal).await
        }
    }
}

#[cfg(test)]
mod tests;
