//! The config-backed resolver.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ring::digest::{SHA256, digest};
use subtle::ConstantTimeEq;
use vault_types::validate_identifier;

use crate::{AccessRequest, AccessResolver, EngineCredentials, Error, Grant, Principal, Result};

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

/// Where engines beyond the configured ones come from (the engines managed
/// with `vault-server engine …`, kept in the database).
#[async_trait]
pub trait EngineSource: fmt::Debug + Send + Sync + 'static {
    /// Every managed engine. A revoked one is listed with no grants and a
    /// token hash no token has, so it stays known (and refused) rather
    /// than being passed on to another resolver.
    async fn engines(&self) -> Result<Vec<EngineConfig>>;
}

type EngineMap = HashMap<String, Engine>;

struct Snapshot {
    engines: Arc<EngineMap>,
    loaded_at: Instant,
}

/// An [`AccessResolver`] over engines listed in configuration and,
/// optionally, an [`EngineSource`] re-read at most every `reload_every`
/// (so a revoked or rotated engine token stops working within that time).
///
/// Tokens are compared by hash in constant time. An unknown engine id costs
/// the same hash-and-compare as a known one, so timing does not tell which
/// part of the credentials was wrong. Deny by default: an action is allowed
/// only when one of the engine's grants allows it.
pub struct ConfigResolver {
    fixed: Vec<EngineConfig>,
    fallback: Vec<EngineConfig>,
    source: Option<(Arc<dyn EngineSource>, Duration)>,
    snapshot: RwLock<Snapshot>,
    reloading: tokio::sync::Mutex<()>,
}

impl fmt::Debug for ConfigResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<_> = snapshot.engines.keys().collect();
        ids.sort();
        f.debug_struct("ConfigResolver")
            .field("engines", &ids)
            .field("source", &self.source.as_ref().map(|(s, d)| (s, d)))
            .finish()
    }
}

fn engine_map(
    fixed: &[EngineConfig],
    dynamic: Vec<EngineConfig>,
    fallback: &[EngineConfig],
) -> Result<EngineMap> {
    // The fallback (the development engine) exists only while no engine
    // is configured or managed at all, revoked ones included.
    let fixed = if fixed.is_empty() && dynamic.is_empty() {
        fallback
    } else {
        fixed
    };
    let mut map = HashMap::with_capacity(fixed.len() + dynamic.len());
    for (engine, from_config) in fixed
        .iter()
        .cloned()
        .map(|e| (e, true))
        .chain(dynamic.into_iter().map(|e| (e, false)))
    {
        validate_identifier("engine id", &engine.id)
            .map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let raw = hex::decode(engine.token_sha256.trim()).ok();
        let token_hash: [u8; 32] = raw.and_then(|r| r.try_into().ok()).ok_or_else(|| {
            Error::InvalidConfig(format!(
                "engine {}: token_sha256 must be 64 hex digits",
                engine.id
            ))
        })?;
        if map.contains_key(&engine.id) {
            if from_config {
                return Err(Error::InvalidConfig(format!(
                    "engine {} is configured twice",
                    engine.id
                )));
            }
            // The configuration wins over a managed engine of the same id.
            continue;
        }
        map.insert(
            engine.id,
            Engine {
                token_hash,
                grants: engine.grants,
            },
        );
    }
    Ok(map)
}

impl ConfigResolver {
    /// Allows an administrative request when one of the engine's grants
    /// satisfies `enough`.
    async fn admin_if(&self, principal: &Principal, enough: impl Fn(&Grant) -> bool) -> Result<()> {
        let engines = self.engines().await?;
        let allowed = engines
            .get(&principal.engine_id)
            .is_some_and(|e| e.grants.iter().any(&enough));
        if allowed {
            Ok(())
        } else {
            Err(Error::Forbidden {
                engine_id: principal.engine_id.clone(),
                action: "admin",
            })
        }
    }

    /// Validates the engine list and builds a resolver over it alone.
    pub fn new(engines: Vec<EngineConfig>) -> Result<Self> {
        let map = engine_map(&engines, Vec::new(), &[])?;
        Ok(Self {
            fixed: engines,
            fallback: Vec::new(),
            source: None,
            snapshot: RwLock::new(Snapshot {
                engines: Arc::new(map),
                loaded_at: Instant::now(),
            }),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// A resolver over `engines` and those of `source`, re-read at most
    /// every `reload_every`. `fallback` engines (the development engine)
    /// count only while there is no other engine at all.
    pub async fn with_source(
        engines: Vec<EngineConfig>,
        fallback: Vec<EngineConfig>,
        source: Arc<dyn EngineSource>,
        reload_every: Duration,
    ) -> Result<Self> {
        let map = engine_map(&engines, source.engines().await?, &fallback)?;
        Ok(Self {
            fixed: engines,
            fallback,
            source: Some((source, reload_every)),
            snapshot: RwLock::new(Snapshot {
                engines: Arc::new(map),
                loaded_at: Instant::now(),
            }),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The current engines, re-read from the source when they are older
    /// than the reload period. A failed re-read is an error (fail closed).
    async fn engines(&self) -> Result<Arc<EngineMap>> {
        let fresh = |s: &Snapshot| match &self.source {
            Some((_, every)) => s.loaded_at.elapsed() < *every,
            None => true,
        };
        {
            let s = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
            if fresh(&s) {
                return Ok(Arc::clone(&s.engines));
            }
        }
        let _one_reload = self.reloading.lock().await;
        {
            let s = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
            if fresh(&s) {
                return Ok(Arc::clone(&s.engines));
            }
        }
        let Some((source, _)) = &self.source else {
            return Err(Error::Unavailable("no engine source".into()));
        };
        let map = Arc::new(engine_map(
            &self.fixed,
            source.engines().await?,
            &self.fallback,
        )?);
        let mut s = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        s.engines = Arc::clone(&map);
        s.loaded_at = Instant::now();
        Ok(map)
    }

    /// How many engines are known now.
    pub async fn len(&self) -> Result<usize> {
        Ok(self.engines().await?.len())
    }

    /// Whether `engine_id` is known to this resolver (for chaining).
    pub async fn knows(&self, engine_id: &str) -> Result<bool> {
        Ok(self.engines().await?.contains_key(engine_id))
    }
}

#[async_trait]
impl AccessResolver for ConfigResolver {
    async fn authenticate(&self, credentials: &EngineCredentials) -> Result<Principal> {
        const NO_ENGINE: [u8; 32] = [0; 32];
        let engines = self.engines().await?;
        let presented = digest(&SHA256, credentials.token.expose().as_bytes());
        let engine = engines.get(&credentials.engine_id);
        let expected = engine.map_or(&NO_ENGINE, |e| &e.token_hash);
        let token_ok: bool = presented.as_ref().ct_eq(expected.as_slice()).into();
        if engine.is_some() && token_ok && !credentials.token.is_empty() {
            Ok(Principal {
                engine_id: credentials.engine_id.clone(),
                token_sha256: hex::encode(presented),
            })
        } else {
            Err(Error::Unauthenticated)
        }
    }

    async fn authorize_admin(&self, principal: &Principal) -> Result<()> {
        self.admin_if(principal, |g| g.has_action(crate::Action::Admin))
            .await
    }

    async fn authorize_vault_admin(&self, principal: &Principal) -> Result<()> {
        self.admin_if(principal, |g| g.covers_everything(crate::Action::Admin))
            .await
    }

    async fn authorize(&self, principal: &Principal, request: &AccessRequest<'_>) -> Result<()> {
        let engines = self.engines().await?;
        let allowed = engines
            .get(&principal.engine_id)
            .is_some_and(|e| e.grants.iter().any(|g| g.permits(request)));
        if allowed {
            Ok(())
        } else {
            Err(Error::Forbidden {
                engine_id: principal.engine_id.clone(),
                action: request.action.as_str(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use vault_types::SecretAddress;

    use super::*;
    use crate::Action;

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
            token_sha256: String::new(),
        };
        let prod = SecretAddress::new("prod", "pf_1", "slack").unwrap();
        let dev = SecretAddress::new("dev", "pf_1", "slack").unwrap();
        let req = AccessRequest::new;
        r.authorize(&exec, &req(Action::Read, &prod)).await.unwrap();
        assert!(r.authorize(&exec, &req(Action::Read, &dev)).await.is_err());
        assert!(
            r.authorize(&exec, &req(Action::Store, &prod))
                .await
                .is_err()
        );
        let ghost = Principal {
            engine_id: "ghost".into(),
            token_sha256: String::new(),
        };
        assert!(
            r.authorize(&ghost, &req(Action::Read, &prod))
                .await
                .is_err()
        );
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

    #[derive(Debug)]
    struct Managed(std::sync::Mutex<Vec<EngineConfig>>);

    #[async_trait]
    impl EngineSource for Managed {
        async fn engines(&self) -> Result<Vec<EngineConfig>> {
            Ok(self.0.lock().unwrap().clone())
        }
    }

    #[tokio::test]
    async fn managed_engines_are_reloaded_after_the_period() {
        let managed = Arc::new(Managed(std::sync::Mutex::new(vec![EngineConfig {
            id: "ops".into(),
            token_sha256: token_sha256_hex("ops-1"),
            grants: vec!["read:*:*:*".parse().unwrap()],
        }])));
        let r = ConfigResolver::with_source(
            vec![],
            vec![],
            Arc::clone(&managed) as Arc<dyn EngineSource>,
            Duration::from_millis(50),
        )
        .await
        .unwrap();
        let creds = |t: &str| EngineCredentials::new("ops", t);
        r.authenticate(&creds("ops-1")).await.unwrap();
        // Rotate: the old token works until the period ends, then only the new one.
        managed.0.lock().unwrap()[0].token_sha256 = token_sha256_hex("ops-2");
        r.authenticate(&creds("ops-1")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(r.authenticate(&creds("ops-1")).await.is_err());
        r.authenticate(&creds("ops-2")).await.unwrap();
        // Revoke.
        managed.0.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(r.authenticate(&creds("ops-2")).await.is_err());
        assert!(!r.knows("ops").await.unwrap());
    }

    #[tokio::test]
    async fn the_fallback_engine_lives_only_while_no_other_exists() {
        let managed = Arc::new(Managed(std::sync::Mutex::new(vec![])));
        let dev = EngineConfig {
            id: "dev".into(),
            token_sha256: token_sha256_hex("dev-token"),
            grants: vec!["*:*:*:*".parse().unwrap()],
        };
        let r = ConfigResolver::with_source(
            vec![],
            vec![dev],
            Arc::clone(&managed) as Arc<dyn EngineSource>,
            Duration::from_millis(20),
        )
        .await
        .unwrap();
        r.authenticate(&EngineCredentials::new("dev", "dev-token"))
            .await
            .unwrap();
        // A revoked managed engine still counts as an engine.
        managed.0.lock().unwrap().push(EngineConfig {
            id: "ops".into(),
            token_sha256: "00".repeat(32),
            grants: vec![],
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            r.authenticate(&EngineCredentials::new("dev", "dev-token"))
                .await
                .is_err()
        );
        assert!(r.knows("ops").await.unwrap(), "revoked engines stay known");
    }

    #[test]
    fn debug_lists_ids_only() {
        let dbg = format!("{:?}", resolver());
        assert!(dbg.contains("execution"));
        assert!(!dbg.contains(&token_sha256_hex("exec-token")));
    }
}
