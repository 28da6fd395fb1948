//! Configuration: defaults, then a TOML file, then environment variables.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use vault_access_resolver::GrantSpec;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or parsed.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range or inconsistent.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The whole configuration. Unknown keys are rejected.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory for the embedded default's files (database, key, dev token).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// HTTP server.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where secrets are stored.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Where the master key comes from.
    #[serde(default)]
    pub keys: KeysConfig,
    /// Vault behaviour.
    #[serde(default)]
    pub vault: VaultConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Pre-approved engines. When empty, a development engine is created.
    #[serde(default)]
    pub engines: Vec<EngineEntry>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// HTTP worker threads.
    #[serde(default = "default_workers")]
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: default_bind(),
            workers: default_workers(),
        }
    }
}

/// Storage back ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// One SQLite file (the embedded default).
    Sqlite,
}

/// `[storage]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Which back end.
    #[serde(default = "default_backend")]
    pub backend: StorageBackend,
    /// SQLite file; default `<data_dir>/vault.db`.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            path: None,
        }
    }
}

/// Key providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyProviderKind {
    /// A base64 key in a file.
    File,
    /// A base64 key in an environment variable.
    Env,
}

/// `[keys]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Which provider.
    #[serde(default = "default_key_provider")]
    pub provider: KeyProviderKind,
    /// Key file for `provider = "file"`; default `<data_dir>/master.key`.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Whether a missing key file may be created (only ever while the
    /// database holds no secrets).
    #[serde(default = "yes")]
    pub create_if_missing: bool,
    /// Environment variable for `provider = "env"`.
    #[serde(default = "default_key_env")]
    pub env_var: String,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            provider: default_key_provider(),
            file: None,
            create_if_missing: true,
            env_var: default_key_env(),
        }
    }
}

/// `[vault]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Environment used when a request names none.
    #[serde(default = "default_environment")]
    pub default_environment: String,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            default_environment: default_environment(),
        }
    }
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Output format.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// Filter directive when `RUST_LOG` is not set, e.g. `info` or `vault=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

/// `[[engines]]`: one pre-approved engine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineEntry {
    /// Engine id (`X-Engine-Id`).
    pub id: String,
    /// Hex SHA-256 of the engine's bearer token.
    pub token_sha256: String,
    /// Grants, e.g. `"read:prod:*:*"`.
    #[serde(default)]
    pub grants: Vec<GrantSpec>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./vault-data")
}
fn default_bind() -> String {
    "127.0.0.1:8200".into()
}
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
fn default_backend() -> StorageBackend {
    StorageBackend::Sqlite
}
fn default_key_provider() -> KeyProviderKind {
    KeyProviderKind::File
}
fn default_key_env() -> String {
    "VAULT_MASTER_KEY".into()
}
fn default_environment() -> String {
    "prod".into()
}
fn default_log_format() -> LogFormat {
    LogFormat::Human
}
fn default_log_level() -> String {
    "info".into()
}
fn yes() -> bool {
    true
}

impl Config {
    /// Loads defaults, then `file` (when given), then `VAULT__SECTION__KEY`
    /// environment variables, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix("VAULT")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let config: Self = builder.build()?.try_deserialize()?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML string (no environment), for tests and tools.
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        let config: Self = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.server.workers == 0 || self.server.workers > 256 {
            return Err(ConfigError::Invalid(
                "server.workers must be between 1 and 256".into(),
            ));
        }
        vault_types::validate_identifier(
            "vault.default_environment",
            &self.vault.default_environment,
        )
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        for engine in &self.engines {
            for grant in &engine.grants {
                grant
                    .to_grant()
                    .map_err(|e| ConfigError::Invalid(format!("engine {}: {e}", engine.id)))?;
            }
        }
        Ok(())
    }

    /// The SQLite database file.
    pub fn database_path(&self) -> PathBuf {
        self.storage
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("vault.db"))
    }

    /// The master key file.
    pub fn key_file(&self) -> PathBuf {
        self.keys
            .file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }

    /// Where the development engine's token is written.
    pub fn dev_token_file(&self) -> PathBuf {
        self.data_dir.join("dev-engine.token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_embedded_default() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.server.bind, "127.0.0.1:8200");
        assert_eq!(c.storage.backend, StorageBackend::Sqlite);
        assert_eq!(c.database_path(), PathBuf::from("./vault-data/vault.db"));
        assert_eq!(c.key_file(), PathBuf::from("./vault-data/master.key"));
        assert_eq!(c.vault.default_environment, "prod");
        assert!(c.engines.is_empty());
    }

    #[test]
    fn full_config_parses() {
        let c = Config::from_toml(
            r#"
            data_dir = "/var/lib/vault"
            [server]
            bind = "0.0.0.0:9000"
            workers = 4
            [storage]
            backend = "sqlite"
            path = "/data/v.db"
            [keys]
            provider = "env"
            env_var = "MY_KEY"
            [vault]
            default_environment = "staging"
            [log]
            format = "json"
            level = "debug"
            [[engines]]
            id = "execution"
            token_sha256 = "00"
            grants = ["read:prod:*:*", { actions = ["store"], environments = ["dev"], projects = ["a:b"], platforms = ["*"] }]
            "#,
        )
        .unwrap();
        assert_eq!(c.server.workers, 4);
        assert_eq!(c.keys.provider, KeyProviderKind::Env);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.engines[0].grants.len(), 2);
        assert_eq!(c.database_path(), PathBuf::from("/data/v.db"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        for bad in [
            "nonsense = 1",
            "[server]\nbindd = \"x\"",
            "[storage]\nbackend = \"mysql\"",
            "[server]\nworkers = 0",
            "[vault]\ndefault_environment = \"a b\"",
            "[[engines]]\nid = \"x\"\ntoken_sha256 = \"00\"\ngrants = [\"fly:*:*:*\"]",
        ] {
            assert!(
                Config::from_toml(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
