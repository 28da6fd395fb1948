//! Wiring: picks the implementations the configuration names and starts
//! the HTTP server.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use ring::rand::{SecureRandom, SystemRandom};
use std::time::Duration;
use vault_access_resolver::{
    AccessResolver, ChainResolver, ConfigResolver, EccConfig, EccResolver, EngineConfig,
    EngineSource, token_sha256_hex,
};
use vault_api::{AccessLimits, ApiState};
use vault_encryption_layer::{
    AwsCredentials, AwsKmsConfig, AwsKmsProvider, CacheLimits, CachingKeyProvider, Envelope,
    KeyProvider, LocalKeyProvider, TransitConfig, TransitProvider,
};
use vault_secret_store::{PostgresOptions, PostgresStore, SecretStore, SqliteStore};
use zeroize::Zeroizing;

use vault_token_manager::provider::{ProviderConfig, ProviderRegistry};
use vault_token_manager::{
    AuditKeyring, AuditSink, ForwarderConfig, KeyMaintenanceConfig, NotifierConfig, RefreshPolicy,
    RefresherConfig, TokenManager,
};
use vault_types::{Clock, Secret, SystemClock};

use crate::config::{Config, KeyProviderKind, ResolverKind, StorageBackend};

/// Why the server could not start. Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Opening or migrating storage failed.
    #[error("storage: {0}")]
    Storage(#[from] vault_secret_store::Error),
    /// Loading the master key failed.
    #[error("master key: {0}")]
    Keys(#[from] vault_encryption_layer::Error),
    /// The database holds secrets sealed under a key that is not loaded.
    #[error(
        "the database holds secrets sealed under master key {needed}, but the configured key provider has only {loaded}; configure the key with id {needed}"
    )]
    MissingKey {
        /// The key id the stored secrets need.
        needed: String,
        /// The key ids that were loaded.
        loaded: String,
    },
    /// The key provider does not work (a KMS unreachable, a key refused).
    #[error("the {provider} key provider does not work, so the vault will not serve: {source}")]
    KeyCheck {
        /// The kind of provider.
        provider: String,
        /// What failed.
        #[source]
        source: vault_encryption_layer::Error,
    },
    /// Stored keys do not open with the configured master key.
    #[error(
        "the usage-log keys stored in the database do not open with the configured master key ({0}); is this the key this database was written with?"
    )]
    WrongKey(String),
    /// The database holds secrets but the key file is gone.
    #[error(
        "the database holds secrets sealed under master key {needed}, but the key file {path} does not exist; restore it (a new key would not open them)"
    )]
    KeyFileMissing {
        /// The key id the stored secrets need.
        needed: String,
        /// The configured key file.
        path: String,
    },
    /// The engine list is invalid.
    #[error("engines: {0}")]
    Access(#[from] vault_access_resolver::Error),
    /// A configured secret (client secret, webhook key) could not be read.
    #[error("{0}")]
    Secret(String),
    /// The TLS certificate, key or client CA could not be used.
    #[error("tls: {0}")]
    Tls(String),
    /// The provider HTTP client could not be built.
    #[error("providers: {0}")]
    Providers(String),
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartupError {
    let what = what.into();
    move |source| StartupError::Io { what, source }
}

pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), StartupError> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("creating {}", dir.display())))
}

/// An opened vault for command-line tools: the store, its token manager
/// and the usage-log keys (records the tool writes are chained).
#[derive(Debug)]
pub struct Opened {
    /// The store.
    pub store: Arc<dyn SecretStore>,
    /// The token manager over it.
    pub tokens: TokenManager,
    /// The usage-log keys.
    pub audit_keys: Arc<AuditKeyring>,
}

impl Opened {
    /// Walks the whole usage log with this vault's keys (for the command
    /// line: the error is its message).
    pub async fn verify_audit(&self) -> Result<vault_secret_store::AuditVerification, String> {
        self.store
            .verify_audit(Arc::clone(&self.audit_keys) as _)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Opens the configured vault for a command-line tool: the same checks as
/// the server's start (the key provider works and holds every key the
/// database needs). `allow_create`: a missing key file may be created as
/// the server would (only while the database holds nothing sealed).
pub async fn open_vault(config: &Config, allow_create: bool) -> Result<Opened, StartupError> {
    open_vault_with_clock(config, allow_create, Arc::new(SystemClock), false, None).await
}

/// Wraps the store a vault opens, before anything uses it: a layer that
/// measures, traces or (in tests) injects faults.
pub type StoreLayer = Box<dyn FnOnce(Arc<dyn SecretStore>) -> Arc<dyn SecretStore> + Send>;

/// How long a key change waits for every process to have seen it: each
/// reloads keys within one check interval; two of them and a margin for
/// work in flight. A master key is retired, and a new usage-log key is
/// signed with, only after this, so that no process still seals under the
/// key removed or meets a signature it cannot check.
fn key_grace(config: &Config) -> Duration {
    Duration::from_secs(
        config
            .keys
            .check_interval_secs
            .saturating_mul(2)
            .saturating_add(10),
    )
}

async fn open_vault_with_clock(
    config: &Config,
    allow_create: bool,
    clock: Arc<dyn Clock>,
    notifications: bool,
    layer: Option<StoreLayer>,
) -> Result<Opened, StartupError> {
    let store = open_store(config).await?;
    let store = match layer {
        Some(layer) => layer(store),
        None => store,
    };
    let in_use = store.key_ids_in_use().await?;
    let keys = load_keys(config, &in_use, allow_create).await?;
    let tokens = TokenManager::builder(Arc::clone(&store), Envelope::new(keys), clock)
        .providers(providers(config)?)
        .refresh_policy(refresh_policy(config))
        .notifications(notifications)
        .audit_key_grace(key_grace(config))
        .build();
    let audit_keys = tokens.load_audit_keys().await.map_err(|e| match e {
        vault_token_manager::Error::Crypto(c @ vault_encryption_layer::Error::Decrypt) => {
            StartupError::WrongKey(c.to_string())
        }
        vault_token_manager::Error::Crypto(c) => StartupError::Keys(c),
        vault_token_manager::Error::Store(s) => StartupError::Storage(s),
        other => StartupError::WrongKey(other.to_string()),
    })?;
    Ok(Opened {
        store,
        tokens,
        audit_keys,
    })
}

/// A token manager over the configured store, key and providers, for
/// command-line tools that write secrets (a missing key is created as the
/// server would, and records are chained).
pub async fn tool_token_manager(config: &Config) -> Result<TokenManager, StartupError> {
    Ok(open_vault(config, true).await?.tokens)
}

/// A running vault: its address and a handle to stop it.
pub struct Application {
    server: Server,
    local_addr: SocketAddr,
    tokens: vault_token_manager::TokenManager,
    stop_wait: Duration,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Opens the configured store (running its migrations).
pub(crate) async fn open_store(config: &Config) -> Result<Arc<dyn SecretStore>, StartupError> {
    match config.storage.backend {
        StorageBackend::Sqlite => {
            let path = config.database_path();
            let store = SqliteStore::open(&path).await?;
            tracing::info!(path = %path.display(), "opened SQLite store");
            Ok(Arc::new(store))
        }
        StorageBackend::Postgres => {
            let url = config.storage.url.as_deref().unwrap_or_default();
            let options = PostgresOptions {
                pool_size: config.storage.pool_size,
                tls_ca_file: config.storage.tls_ca_file.clone(),
                ..PostgresOptions::default()
            };
            let store = PostgresStore::connect(url, options).await?;
            tracing::info!(target = %store.target(), "opened PostgreSQL store");
            Ok(Arc::new(store))
        }
    }
}

fn env_value(what: &str, var: &str) -> Result<Zeroizing<String>, StartupError> {
    // The untrimmed copy is wiped too.
    let value = Zeroizing::new(std::env::var(var).map_err(|_| {
        StartupError::Secret(format!("{what}: environment variable {var} is not set"))
    })?);
    if value.trim().is_empty() {
        return Err(StartupError::Secret(format!(
            "{what}: environment variable {var} is empty"
        )));
    }
    Ok(Zeroizing::new(value.trim().to_owned()))
}

/// Builds the configured key provider (a remote one behind the data-key
/// cache).
async fn key_provider(
    config: &Config,
    in_use: &[String],
    allow_create: bool,
) -> Result<Arc<dyn KeyProvider>, StartupError> {
    let k = &config.keys;
    let cache = CacheLimits {
        ttl: Duration::from_secs(k.cache_ttl_secs),
        max_entries: k.cache_max_entries,
    };
    let remote: Arc<dyn KeyProvider> = match k.provider {
        KeyProviderKind::File | KeyProviderKind::Env => {
            return Ok(Arc::new(local_keys(config, in_use, allow_create)?));
        }
        KeyProviderKind::AwsKms => {
            let aws = k
                .aws_kms
                .as_ref()
                .ok_or_else(|| StartupError::Secret("keys.aws_kms is not configured".into()))?;
            let session_token = std::env::var(&aws.session_token_env)
                .ok()
                .filter(|t| !t.trim().is_empty())
                .map(|t| Zeroizing::new(t.trim().to_owned()));
            let credentials = AwsCredentials {
                access_key_id: env_value("keys.aws_kms access key id", &aws.access_key_id_env)?
                    .to_string(),
                secret_access_key: env_value(
                    "keys.aws_kms secret access key",
                    &aws.secret_access_key_env,
                )?,
                session_token,
            };
            Arc::new(AwsKmsProvider::new(AwsKmsConfig {
                endpoint: aws
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| format!("https://kms.{}.amazonaws.com", aws.region)),
                region: aws.region.clone(),
                key_id: aws.key_id.clone(),
                previous_key_ids: aws.previous_key_ids.clone(),
                credentials,
                timeout: Duration::from_secs(aws.timeout_secs),
            })?)
        }
        KeyProviderKind::Transit => {
            let t = k
                .transit
                .as_ref()
                .ok_or_else(|| StartupError::Secret("keys.transit is not configured".into()))?;
            let token = read_secret(
                "keys.transit token",
                t.token_env.as_deref(),
                t.token_file.as_deref(),
            )?
            .ok_or_else(|| StartupError::Secret("keys.transit: no token".into()))?;
            let provider = TransitProvider::connect(TransitConfig {
                address: t.address.clone(),
                mount: t.mount.clone(),
                key_name: t.key_name.clone(),
                token: Zeroizing::new(token.expose().to_owned()),
                timeout: Duration::from_secs(t.timeout_secs),
            })
            .await
            .map_err(|source| StartupError::KeyCheck {
                provider: "transit".into(),
                source,
            })?;
            Arc::new(provider)
        }
    };
    Ok(Arc::new(CachingKeyProvider::new(remote, cache)))
}

/// Loads the master keys and checks, before anything is served, that the
/// provider works (for a KMS: reachable, the key usable) and holds every
/// key the database needs.
async fn load_keys(
    config: &Config,
    in_use: &[String],
    allow_create: bool,
) -> Result<Arc<dyn KeyProvider>, StartupError> {
    let keys = key_provider(config, in_use, allow_create).await?;
    keys.check()
        .await
        .map_err(|source| StartupError::KeyCheck {
            provider: keys.kind().to_owned(),
            source,
        })?;
    let available = keys.key_ids();
    if let Some(needed) = in_use.iter().find(|id| !available.contains(id)) {
        return Err(StartupError::MissingKey {
            needed: needed.clone(),
            loaded: available.join(", "),
        });
    }
    tracing::info!(
        provider = keys.kind(),
        key_id = %keys.active_key_id(),
        versions = available.len(),
        "loaded master key"
    );
    Ok(keys)
}

fn local_keys(
    config: &Config,
    in_use: &[String],
    allow_create: bool,
) -> Result<LocalKeyProvider, StartupError> {
    let keys = match config.keys.provider {
        KeyProviderKind::File => {
            let path = config.key_file();
            if !path.exists() {
                if let Some(needed) = in_use.first() {
                    return Err(StartupError::KeyFileMissing {
                        needed: needed.clone(),
                        path: path.display().to_string(),
                    });
                }
                if let Some(dir) = path.parent() {
                    ensure_private_dir(dir)?;
                }
            }
            LocalKeyProvider::from_file(
                &path,
                allow_create && config.keys.create_if_missing && in_use.is_empty(),
            )?
            .with_retire_grace(key_grace(config))
        }
        _ => LocalKeyProvider::from_env(&config.keys.env_var)?,
    };
    Ok(keys)
}

/// Reads the development engine's token, creating it (mode 0600) on first use.
fn dev_engine_token(path: &Path) -> Result<String, StartupError> {
    if path.exists() {
        let token = std::fs::read_to_string(path)
            .map_err(io(format!("reading {}", path.display())))?
            .trim()
            .to_owned();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    if let Some(dir) = path.parent() {
        ensure_private_dir(dir)?;
    }
    let mut raw = [0u8; 32];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| vault_encryption_layer::Error::Random)?;
    let token = hex::encode(raw);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("writing {}", path.display())))?;
    writeln!(file, "{token}")
        .and_then(|()| file.sync_all())
        .map_err(io(format!("writing {}", path.display())))?;
    Ok(token)
}

/// The managed engines in the database, as the access resolver sees them.
#[derive(Debug)]
pub struct DbEngines {
    store: Arc<dyn SecretStore>,
}

impl DbEngines {
    /// Engines kept in `store`.
    pub fn new(store: Arc<dyn SecretStore>) -> Self {
        Self { store }
    }
}

#[async_trait::async_trait]
impl EngineSource for DbEngines {
    async fn engines(&self) -> vault_access_resolver::Result<Vec<EngineConfig>> {
        let records =
            self.store.list_engines().await.map_err(|e| {
                vault_access_resolver::Error::Unavailable(format!("engine list: {e}"))
            })?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            if r.revoked_at.is_some() {
                // Known and refused: no grants, a hash no token has.
                out.push(EngineConfig {
                    id: r.id,
                    token_sha256: "00".repeat(32),
                    grants: Vec::new(),
                });
                continue;
            }
            let grants = r
                .grants
                .iter()
                .map(|g| g.parse())
                .collect::<Result<Vec<_>, _>>();
            match grants {
                Ok(grants) => out.push(EngineConfig {
                    id: r.id,
                    token_sha256: r.token_sha256,
                    grants,
                }),
                Err(e) => {
                    tracing::error!(engine = %r.id, error = %e, "managed engine has an invalid grant; ignored")
                }
            }
        }
        Ok(out)
    }
}

fn configured_engines(config: &Config) -> Result<Vec<EngineConfig>, StartupError> {
    config
        .engines
        .iter()
        .map(|e| {
            let grants = e
                .grants
                .iter()
                .map(|g| g.to_grant())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| {
                    vault_access_resolver::Error::InvalidConfig(format!("engine {}: {err}", e.id))
                })?;
            Ok(EngineConfig {
                id: e.id.clone(),
                token_sha256: e.token_sha256.clone(),
                grants,
            })
        })
        .collect()
}

async fn resolver(
    config: &Config,
    store: &Arc<dyn SecretStore>,
) -> Result<Arc<dyn AccessResolver>, StartupError> {
    let engines = configured_engines(config)?;
    let any_managed = !store.list_engines().await?.is_empty();
    let mut fallback = Vec::new();
    if engines.is_empty() && !any_managed && config.access.resolver == ResolverKind::Local {
        let path = config.dev_token_file();
        let token = dev_engine_token(&path)?;
        tracing::warn!(
            token_file = %path.display(),
            "no engines are configured: DEVELOPMENT SETUP with engine `dev` holding every grant; \
             its token is in the token file. Configure [[engines]] or add one with \
             `vault-server engine add` (the dev engine then stops working) before storing real credentials"
        );
        fallback.push(EngineConfig {
            id: "dev".into(),
            token_sha256: token_sha256_hex(&token),
            grants: vec![
                "*:*:*:*"
                    .parse()
                    .map_err(|e| vault_access_resolver::Error::InvalidConfig(format!("{e}")))?,
            ],
        });
    }
    let local = Arc::new(
        ConfigResolver::with_source(
            engines,
            fallback,
            Arc::new(DbEngines::new(Arc::clone(store))),
            Duration::from_secs(config.access.engine_reload_secs),
        )
        .await?,
    );
    let ecc = match &config.access.ecc {
        Some(e) => {
            let authorization = match &e.authorization_env {
                Some(var) => read_secret("access.ecc authorization", Some(var), None)?,
                None => None,
            };
            Some(Arc::new(EccResolver::new(EccConfig {
                url: e.url.clone(),
                timeout: Duration::from_millis(e.timeout_ms),
                cache_ttl: Duration::from_secs(e.cache_ttl_secs),
                authorization,
            })?))
        }
        None => None,
    };
    let resolver: Arc<dyn AccessResolver> = match (config.access.resolver, ecc) {
        (ResolverKind::Ecc, Some(ecc)) => ecc,
        (ResolverKind::Chain, Some(ecc)) => Arc::new(ChainResolver::new(local, ecc)),
        _ => local,
    };
    tracing::info!(resolver = ?config.access.resolver, "access resolver ready");
    Ok(resolver)
}

/// Builds the rustls server configuration (ring provider; client
/// certificates required when a client CA is given).
fn tls_config(t: &crate::config::TlsConfig) -> Result<rustls::ServerConfig, StartupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls_err = |what: &str, e: &dyn std::fmt::Display| StartupError::Tls(format!("{what}: {e}"));
    let read_certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, StartupError> {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| tls_err(&path.display().to_string(), &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err(&path.display().to_string(), &e))?;
        if certs.is_empty() {
            return Err(StartupError::Tls(format!(
                "{}: no certificate",
                path.display()
            )));
        }
        Ok(certs)
    };
    let certs = read_certs(&t.cert)?;
    let key = PrivateKeyDer::from_pem_file(&t.key)
        .map_err(|e| tls_err(&t.key.display().to_string(), &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("protocol versions", &e))?;
    let builder = match &t.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| tls_err(&ca.display().to_string(), &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| tls_err("client verifier", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("certificate and key", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Reads a secret named by an environment variable or a file.
fn read_secret(
    what: &str,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<Secret>, StartupError> {
    // Read into a buffer that is wiped when dropped: only the trimmed copy
    // in the Secret remains.
    let value = Zeroizing::new(match (env, file) {
        (Some(var), _) => std::env::var(var).map_err(|_| {
            StartupError::Secret(format!("{what}: environment variable {var} is not set"))
        })?,
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            StartupError::Secret(format!("{what}: reading {}: {e}", path.display()))
        })?,
        (None, None) => return Ok(None),
    });
    let value = value.trim();
    if value.is_empty() {
        return Err(StartupError::Secret(format!("{what} is empty")));
    }
    Ok(Some(Secret::from(value)))
}

fn providers(config: &Config) -> Result<ProviderRegistry, StartupError> {
    let mut configs = Vec::new();
    for (name, entry) in &config.providers {
        let definition = entry
            .definition(name)
            .map_err(|e| StartupError::Providers(e.to_string()))?;
        let client_secret = read_secret(
            &format!("providers.{name} client secret"),
            entry.client_secret_env.as_deref(),
            entry.client_secret_file.as_deref(),
        )?;
        tracing::info!(
            platform = %name,
            kind = ?definition.kind,
            token_url = definition.token_url.as_deref().unwrap_or("-"),
            "provider configured"
        );
        configs.push(ProviderConfig {
            definition,
            client_id: entry.client_id.clone(),
            client_secret,
        });
    }
    ProviderRegistry::from_configs(
        configs,
        Duration::from_secs(config.refresh.http_timeout_secs),
    )
    .map_err(|e| StartupError::Providers(e.to_string()))
}

/// The usage-log sinks the configuration names. Cursor names are stable
/// ("forward", "file"): a restart resumes where delivery stopped.
pub fn forwarders(config: &Config) -> Result<Vec<ForwarderConfig>, StartupError> {
    let mut out = Vec::new();
    if let Some(f) = &config.audit.forward {
        let authorization = match &f.authorization_env {
            Some(var) => read_secret("audit.forward authorization", Some(var), None)?,
            None => None,
        };
        out.push(ForwarderConfig {
            name: "forward".into(),
            sink: AuditSink::Http {
                url: f.url.clone(),
                authorization,
                timeout: Duration::from_secs(f.timeout_secs),
            },
            batch: f.batch,
            interval: Duration::from_millis(f.interval_ms),
            max_backoff: Duration::from_secs(f.max_backoff_secs),
        });
    }
    if let Some(path) = &config.audit.file {
        out.push(ForwarderConfig {
            name: "file".into(),
            sink: AuditSink::File { path: path.clone() },
            batch: 1000,
            interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        });
    }
    Ok(out)
}

fn refresh_policy(config: &Config) -> RefreshPolicy {
    let r = &config.refresh;
    RefreshPolicy {
        margin: Duration::from_secs(r.margin_secs),
        margin_ratio: r.margin_ratio,
        force_cooldown: Duration::from_secs(r.force_cooldown_secs),
        backoff_base: Duration::from_secs(r.backoff_base_secs),
        backoff_max: Duration::from_secs(r.backoff_max_secs),
        lease: Duration::from_secs(r.lease_secs),
    }
}

impl Application {
    /// Opens storage, loads keys, builds the resolver and binds the HTTP
    /// server. Must run inside an actix system (`actix_web::rt::System`).
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Application::build`] with an injected clock (tests move time with
    /// [`vault_types::ManualClock`]).
    pub async fn build_with_clock(
        config: &Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartupError> {
        Self::build_with_layer(config, clock, None).await
    }

    /// [`Application::build_with_clock`] with the store wrapped in `layer`.
    pub async fn build_with_layer(
        config: &Config,
        clock: Arc<dyn Clock>,
        layer: Option<StoreLayer>,
    ) -> Result<Self, StartupError> {
        // The same checks as every tool: the key provider works, holds every
        // key the database needs and opens the usage-log keys, which chain
        // every record from now on.
        let opened =
            open_vault_with_clock(config, true, clock, config.notifications.is_some(), layer)
                .await?;
        let store = opened.store;
        let access = resolver(config, &store).await?;
        let notifier = match &config.notifications {
            Some(n) => {
                let secret = read_secret(
                    "notifications secret",
                    n.secret_env.as_deref(),
                    n.secret_file.as_deref(),
                )?
                .ok_or_else(|| StartupError::Secret("notifications: no secret".into()))?;
                Some(NotifierConfig {
                    url: n.url.clone(),
                    secret,
                    interval: Duration::from_millis(n.interval_ms.max(10)),
                    timeout: Duration::from_secs(n.timeout_secs.max(1)),
                })
            }
            None => None,
        };
        let tokens = opened.tokens;
        actix_web::rt::spawn(vault_token_manager::run_key_maintenance(
            tokens.clone(),
            Some(opened.audit_keys),
            KeyMaintenanceConfig {
                interval: Duration::from_secs(config.keys.check_interval_secs),
                batch: config.keys.rewrap_batch,
                ..KeyMaintenanceConfig::default()
            },
        ));
        // Background work runs on the server's own runtime and ends with it.
        if config.refresh.background {
            let r = &config.refresh;
            actix_web::rt::spawn(tokens.clone().run_refresher(RefresherConfig {
                interval: Duration::from_millis(r.interval_ms),
                concurrency: r.concurrency,
                batch: r.batch,
                max_jitter: Duration::from_millis(r.max_jitter_ms),
            }));
        }
        let sinks = forwarders(config)?;
        let sink_names: Vec<String> = sinks.iter().map(|s| s.name.clone()).collect();
        for forwarder in sinks {
            tracing::info!(sink = %forwarder.name, "usage-log forwarding enabled");
            actix_web::rt::spawn(tokens.clone().run_audit_forwarder(forwarder));
        }
        if let Some(days) = config.audit.retention_days.filter(|d| *d > 0) {
            tracing::info!(days, "usage-log retention enabled");
            actix_web::rt::spawn(tokens.clone().run_audit_retention(
                Duration::from_secs(u64::from(days) * 86_400),
                sink_names,
                Duration::from_secs(config.audit.prune_interval_secs),
            ));
        }
        if let Some(n) = notifier {
            // The URL may carry a secret in its user part, path or query:
            // log the host only.
            let host = url::Url::parse(&n.url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_else(|| "?".to_owned());
            tracing::info!(host = %host, "notifications enabled");
            actix_web::rt::spawn(tokens.clone().run_notifier(n));
        }
        let a = &config.access;
        let limits = AccessLimits {
            max_failures: a.max_failures,
            lockout: Duration::from_secs(a.lockout_secs),
            engine_rate_per_sec: a.engine_rate_per_sec,
            engine_burst: a.engine_burst,
        };
        let stopping = tokens.clone();
        let state = ApiState::with_limits(
            tokens,
            access,
            config.vault.default_environment.clone(),
            limits,
        );

        let tls = config.server.tls.as_ref().map(tls_config).transpose()?;
        let listener = TcpListener::bind(&config.server.bind)
            .map_err(io(format!("binding {}", config.server.bind)))?;
        let local_addr = listener
            .local_addr()
            .map_err(io("reading the bound address"))?;
        if tls.is_none() && !local_addr.ip().is_loopback() {
            tracing::warn!(
                address = %local_addr,
                "serving plain HTTP beyond loopback: tokens cross the network unencrypted; \
                 configure [server.tls] or terminate TLS in front of the vault"
            );
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = vault_api::server(state, listener, config.server.workers, tls)
            .map_err(io("starting the HTTP server"))?;
        tracing::info!(address = %local_addr, scheme, "vault listening");
        Ok(Self {
            server,
            local_addr,
            tokens: stopping,
            // A refresh under way ends within one provider timeout, and its
            // write (with its retries) within a few seconds more.
            stop_wait: Duration::from_secs(config.refresh.http_timeout_secs.saturating_add(5)),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that can stop the server.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT/SIGTERM (graceful) or [`ServerHandle::stop`].
    ///
    /// A graceful stop finishes the requests under way, then waits (at most
    /// `refresh.http_timeout_secs` + 5 s) for refreshes whose provider call
    /// has started, so the tokens a provider has just rotated are written
    /// before the process ends, and gives back the refresh leases it holds
    /// for tokens it has not started.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        self.tokens.shutdown(self.stop_wait).await;
        served
    }
}
