//! The config-backed resolver.

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use ring::digest::{SHA256, digest};
use subtle::ConstantTimeEq;
use vault_types::{SecretAddress, validate_identifier};

use crate::{AccessResolver, Action, EngineCredentials, Error, Grant, Principal, Result};

/// One pre-approved engine, as configured.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The engine id it authenticates as.
    pub id: String,
    /// Hex SHA-256 of its bearer token (64 hex digits, either case).
    pub token_sha256: String,
    /// What it may do.
    pub grants: Vec<Grant>,
}

/// Hex SHA-256 of a token, as expected in [`EngineConfig::token_sha256`].
pub fn token_sha256_hex(token: &str) -> String {
    hex::encode(digest(&SHA256, token.as_bytes()))
}

struct Engine {
    token_hash: [u8; 32],
    grants: Vec<Grant>,
}

/// An [`AccessResolver`] over a fixed list of engines from configuration.
///
/// Tokens are compared by hash in constant time. An unknown engine id costs
/// the same hash-and-compare as a known one, so timing does not tell which
/// part of the credentials was wrong. Deny by default: an action is allowed
/// only when one of the engine's grants allows it.
pub struct ConfigResolver {
    engines: HashMap<String, Engine>,
}

impl fmt::Debug for ConfigResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<_> = self.engines.keys().collect();
        ids.sort();
        f.debug_struct("ConfigResolver")
            .field("engines", &ids)
            .finish()
    }
}

impl ConfigResolver {
    /// Validates the engine list and builds the resolver.
    pub fn new(engines: Vec<EngineConfig>) -> Result<Self> {
        let mut map = HashMap::with_capacity(engines.len());
        for engine in engines {
            validate_identifier("engine id", &engine.id)
                .map_err(|e| Error::InvalidConfig(e.to_string()))?;
            let raw = hex::decode(engine.token_sha256.trim()).ok();
            let token_hash: [u8; 32] = raw.and_then(|r| r.try_into().ok()).ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "engine {}: token_sha256 must be 64 hex digits",
                    engine.id
                ))
            })?;
            let entry = Engine {
                token_hash,
                grants: engine.grants,
            };
            if map.insert(engine.id.clone(), entry).is_some() {
                return Err(Error::InvalidConfig(format!(
                    "engine {} is configured twice",
                    engine.id
                )));
            }
        }
        Ok(Self { engines: map })
    }

    /// How many engines are configured.
    pub fn len(&self) -> usize {
        self.engines.len()
    }

    /// Whether no engine is configured.
    pub fn is_empty(&self) -> bool {
        self.engines.is_empty()
    }
}

#[async_trait]
impl AccessResolver for ConfigResolver {
    async fn authenticate(&self, credentials: &EngineCredentials) -> Result<Principal> {
        const NO_ENGINE: [u8; 32] = [0; 32];
        let presented = digest(&SHA256, credentials.token.expose().as_bytes());
        let engine = self.engines.get(&credentials.engine_id);
        let expected = engine.map_or(&NO_ENGINE, |e| &e.token_hash);
        let token_ok: bool = presented.as_ref().ct_eq(expected.as_slice()).into();
        if engine.is_some() && token_ok && !credentials.token.is_empty() {
            Ok(Principal {
                engine_id: credentials.engine_id.clone(),
            })
        } else {
            Err(Error::Unauthenticated)
        }
    }

    async fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        address: &SecretAddress,
    ) -> Result<()> {
        let allowed = self
            .engines
            .get(&principal.engine_id)
            .is_some_and(|e| e.grants.iter().any(|g| g.allows(action, address)));
        if allowed {
            Ok(())
        } else {
            Err(Error::Forbidden {
                engine_id: principal.engine_id.clone(),
                action: action.as_str(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> ConfigResolver {
        ConfigResolver::new(vec![
            EngineConfig {
                id: "execution".into(),
                token_sha256: token_sha256_hex("exec-token"),
                grants: vec!["read:prod:*:*".parse().unwrap()],
            },
            EngineConfig {
                id: "integration".into(),
                token_sha256: token_sha256_hex("int-token").to_uppercase(),
                grants: vec!["store:*:*:*".parse().unwrap()],
            },
        ])
        .unwrap()
    }

    #[tokio::test]
    async fn authenticates_by_token_hash() {
        let r = resolver();
        let p = r
            .authenticate(&EngineCredentials::new("execution", "exec-token"))
            .await
            .unwrap();
        assert_eq!(p.engine_id, "execution");
        // Upper-case hex in config works too.
        r.authenticate(&EngineCredentials::new("integration", "int-token"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn wrong_unknown_or_swapped_credentials_are_all_unauthenticated() {
        let r = resolver();
        for (id, token) in [
            ("execution", "wrong"),
            ("execution", ""),
            ("nobody", "exec-token"),
            ("integration", "exec-token"),
            ("", ""),
        ] {
            let err = r
                .authenticate(&EngineCredentials::new(id, token))
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Unauthenticated), "{id}/{token}");
            assert_eq!(err.to_string(), "missing or invalid engine credentials");
        }
    }

    #[tokio::test]
    async fn deny_by_default() {
        let r = resolver();
        let exec = Principal {
            engine_id: "execution".into(),
        };
        let prod = SecretAddress::new("prod", "pf_1", "slack").unwrap();
        let dev = SecretAddress::new("dev", "pf_1", "slack").unwrap();
        r.authorize(&exec, Action::Read, &prod).await.unwrap();
        assert!(r.authorize(&exec, Action::Read, &dev).await.is_err());
        assert!(r.authorize(&exec, Action::Store, &prod).await.is_err());
        let ghost = Principal {
            engine_id: "ghost".into(),
        };
        assert!(r.authorize(&ghost, Action::Read, &prod).await.is_err());
    }

    #[test]
    fn invalid_config_is_rejected() {
        let bad_hash = EngineConfig {
            id: "x".into(),
            token_sha256: "abc".into(),
            grants: vec![],
        };
        assert!(ConfigResolver::new(vec![bad_hash]).is_err());
        let bad_id = EngineConfig {
            id: "has space".into(),
            token_sha256: token_sha256_hex("t"),
            grants: vec![],
        };
        assert!(ConfigResolver::new(vec![bad_id]).is_err());
        let dup = EngineConfig {
            id: "x".into(),
            token_sha256: token_sha256_hex("t"),
            grants: vec![],
        };
        assert!(ConfigResolver::new(vec![dup.clone(), dup]).is_err());
    }

    #[test]
    fn debug_lists_ids_only() {
        let dbg = format!("{:?}", resolver());
        assert!(dbg.contains("execution"));
        assert!(!dbg.contains(&token_sha256_hex("exec-token")));
    }
}
