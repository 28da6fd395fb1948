//! Configuration: defaults, then a TOML file, then environment variables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vault_access_resolver::GrantSpec;
use vault_token_manager::provider::{AuthKind, BodyFormat, ClientAuth, ProviderDefinition};

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or parsed. The message
    /// quotes no line of the file and no password of a connection string.
    #[error("configuration: {0}")]
    Load(String),
    /// A value is out of range or inconsistent.
    #[error("configuration: {0}")]
    Invalid(String),
}

impl From<config::ConfigError> for ConfigError {
    fn from(e: config::ConfigError) -> Self {
        Self::Load(redact_credentials(&without_snippets(&e.to_string())))
    }
}

/// Drops the quoted source lines of a TOML parse error (`4 | url = "…`),
/// keeping where and what: a broken line may hold a connection string.
fn without_snippets(message: &str) -> String {
    message
        .lines()
        .filter(|line| {
            let rest = line
                .trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit());
            !rest.trim_start().starts_with('|')
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Replaces the password of every `scheme://user:password@host` and every
/// `password=…` in `text` with `***`.
pub(crate) fn redact_credentials(text: &str) -> String {
    // Passwords are not always percent-encoded: a raw `/` or `?` in one must
    // not end it early, so a URL runs to the next space or quote.
    let stops = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '&');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c != '&' && stops(c))
            .unwrap_or(tail.len());
        let url = &tail[..end];
        match url
            .rfind('@')
            .and_then(|at| url[..at].find(':').map(|colon| (colon, at)))
        {
            Some((colon, at)) => {
                out.push_str(&url[..=colon]);
                out.push_str("***");
                out.push_str(&url[at..]);
            }
            None => out.push_str(url),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    // Key-value connection strings and URL query parameters.
    let mut text = out;
    let mut from = 0;
    while let Some(i) = text[from..].to_ascii_lowercase().find("password=") {
        let start = from + i + "password=".len();
        let len = text[start..]
            .find(|c: char| c == '&' || stops(c))
            .unwrap_or(text.len() - start);
        text.replace_range(start..start + len, "***");
        from = start + 3;
    }
    text
}

/// The whole configuration. Unknown keys are rejected.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// OAuth providers by platform name. A platform without an entry is a
    /// manual token: served until it expires, never refreshed.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderEntry>,
    /// Refresh timing and the background refresher.
    #[serde(default)]
    pub refresh: RefreshConfig,
    /// Notifications to the Integration Manager.
    #[serde(default)]
    pub notifications: Option<NotificationsConfig>,
    /// Who may call the vault: resolver choice and abuse limits.
    #[serde(default)]
    pub access: AccessConfig,
    /// The usage log: forwarding, file copy, retention.
    #[serde(default)]
    pub audit: AuditConfig,
}

/// `[audit]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Append a JSON-lines copy of the usage log to this file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Delete records older than this many days (0 or absent: keep all),
    /// never before every sink has delivered them.
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// How often retention runs, in seconds.
    #[serde(default = "default_prune_interval")]
    pub prune_interval_secs: u64,
    /// Forward the usage log to the Logs Engine.
    #[serde(default)]
    pub forward: Option<ForwardConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            file: None,
            retention_days: None,
            prune_interval_secs: default_prune_interval(),
            forward: None,
        }
    }
}

/// `[audit.forward]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Receiver URL (JSON batches are POSTed there).
    pub url: String,
    /// Environment variable holding the `Authorization` header value.
    #[serde(default)]
    pub authorization_env: Option<String>,
    /// Most records per batch.
    #[serde(default = "default_forward_batch")]
    pub batch: u32,
    /// Pause when there is nothing to send, in milliseconds.
    #[serde(default = "default_forward_interval")]
    pub interval_ms: u64,
    /// Timeout of one delivery.
    #[serde(default = "default_http_timeout")]
    pub timeout_secs: u64,
    /// Longest pause between retries while the receiver fails.
    #[serde(default = "default_forward_backoff")]
    pub max_backoff_secs: u64,
}

/// Which access resolver decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolverKind {
    /// Engines from `[[engines]]` and `vault-server engine …` (the default).
    Local,
    /// The Engine Control Core decides every request.
    Ecc,
    /// Local engines first; engines unknown locally are asked of the core.
    Chain,
}

/// `[access]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// `local`, `ecc` or `chain`.
    #[serde(default = "default_resolver")]
    pub resolver: ResolverKind,
    /// Managed engines are re-read at most this often: a revoked or
    /// rotated engine token stops working within this many seconds.
    #[serde(default = "default_engine_reload")]
    pub engine_reload_secs: u64,
    /// The Engine Control Core, for `ecc` and `chain`.
    #[serde(default)]
    pub ecc: Option<EccSettings>,
    /// Failed authentications from one engine id or one address before
    /// both are locked out.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// How long a lockout lasts, and the window failures are counted in.
    #[serde(default = "default_lockout")]
    pub lockout_secs: u64,
    /// Requests per second one engine may make (0: unlimited).
    #[serde(default)]
    pub engine_rate_per_sec: u32,
    /// Burst above the rate.
    #[serde(default = "default_burst")]
    pub engine_burst: u32,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            resolver: default_resolver(),
            engine_reload_secs: default_engine_reload(),
            ecc: None,
            max_failures: default_max_failures(),
            lockout_secs: default_lockout(),
            engine_rate_per_sec: 0,
            engine_burst: default_burst(),
        }
    }
}

/// `[access.ecc]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EccSettings {
    /// Where decisions are asked (the contract is in docs/access-control.md).
    pub url: String,
    /// Timeout of one call, in milliseconds.
    #[serde(default = "default_ecc_timeout")]
    pub timeout_ms: u64,
    /// Longest time a decision is cached (never longer than the core's TTL).
    #[serde(default = "default_ecc_cache")]
    pub cache_ttl_secs: u64,
    /// Environment variable holding an `Authorization` header value for the core.
    #[serde(default)]
    pub authorization_env: Option<String>,
}

/// `[providers.NAME]`: a provider's client credentials and, for other than
/// the built-ins (`slack`, `google`, `notion`, `stripe`), its endpoints.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    /// `oauth2`, `oauth2_static` or `api_key`; built-ins know their own.
    #[serde(default)]
    pub kind: Option<AuthKind>,
    /// Token endpoint (overrides a built-in's).
    #[serde(default)]
    pub token_url: Option<String>,
    /// Revocation endpoint (overrides a built-in's).
    #[serde(default)]
    pub revoke_url: Option<String>,
    /// OAuth client id.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Environment variable holding the client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// File holding the client secret.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// `basic` or `body`.
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
    /// `form` or `json`.
    #[serde(default)]
    pub body_format: Option<BodyFormat>,
    /// Separator of `scope` in token responses.
    #[serde(default)]
    pub scope_separator: Option<String>,
}

impl ProviderEntry {
    /// The definition for platform `name`: the built-in one overridden by
    /// this entry, or a generic OAuth 2.0 one.
    pub fn definition(&self, name: &str) -> Result<ProviderDefinition, ConfigError> {
        let mut def = ProviderDefinition::builtin(name)
            .unwrap_or_else(|| ProviderDefinition::generic(name, None, None));
        let builtin = ProviderDefinition::builtin(name).is_some();
        if let Some(kind) = self.kind {
            def.kind = kind;
        }
        if self.token_url.is_some() {
            def.token_url = self.token_url.clone();
        }
        if self.revoke_url.is_some() {
            def.revoke_url = self.revoke_url.clone();
        }
        if let Some(a) = self.client_auth {
            def.client_auth = a;
        }
        if let Some(f) = self.body_format {
            def.body_format = f;
        }
        if let Some(sep) = &self.scope_separator {
            def.scope_separator = sep.clone();
        }
        let invalid = |msg: &str| ConfigError::Invalid(format!("providers.{name}: {msg}"));
        if !builtin && self.kind.is_none() {
            return Err(invalid(
                "kind is required for a provider that is not built in",
            ));
        }
        if def.kind == AuthKind::Oauth2 && def.token_url.is_none() {
            return Err(invalid("token_url is required for kind = \"oauth2\""));
        }
        for url in [&def.token_url, &def.revoke_url].into_iter().flatten() {
            check_url(&format!("providers.{name} URL"), url)?;
        }
        if def.kind == AuthKind::Oauth2 && self.client_id.is_none() {
            return Err(invalid("client_id is required to refresh tokens"));
        }
        if self.client_secret_env.is_some() && self.client_secret_file.is_some() {
            return Err(invalid(
                "give client_secret_env or client_secret_file, not both",
            ));
        }
        Ok(def)
    }
}

/// `[refresh]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshConfig {
    /// Run the background refresher.
    #[serde(default = "yes")]
    pub background: bool,
    /// Milliseconds between looks for due tokens.
    #[serde(default = "default_refresh_interval")]
    pub interval_ms: u64,
    /// Most refreshes in flight.
    #[serde(default = "default_refresh_concurrency")]
    pub concurrency: usize,
    /// Most due tokens taken per look.
    #[serde(default = "default_refresh_batch")]
    pub batch: u32,
    /// Random delay before each background refresh, at most this many ms.
    #[serde(default = "default_refresh_jitter")]
    pub max_jitter_ms: u64,
    /// Refresh at most this long before expiry…
    #[serde(default = "default_margin")]
    pub margin_secs: u64,
    /// …or this fraction of the lifetime, whichever is smaller.
    #[serde(default = "default_margin_ratio")]
    pub margin_ratio: f64,
    /// Forced refreshes within this many seconds of the last one answer
    /// the current token.
    #[serde(default = "default_force_cooldown")]
    pub force_cooldown_secs: u64,
    /// First backoff after a failure, doubling per failure.
    #[serde(default = "default_backoff_base")]
    pub backoff_base_secs: u64,
    /// Longest backoff.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_secs: u64,
    /// Timeout of every call to a provider.
    #[serde(default = "default_http_timeout")]
    pub http_timeout_secs: u64,
    /// How long a replica may hold a token's refresh lease before the
    /// others assume it died and take over; longer than a provider call.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            background: true,
            interval_ms: default_refresh_interval(),
            concurrency: default_refresh_concurrency(),
            batch: default_refresh_batch(),
            max_jitter_ms: default_refresh_jitter(),
            margin_secs: default_margin(),
            margin_ratio: default_margin_ratio(),
            force_cooldown_secs: default_force_cooldown(),
            backoff_base_secs: default_backoff_base(),
            backoff_max_secs: default_backoff_max(),
            http_timeout_secs: default_http_timeout(),
            lease_secs: default_lease(),
        }
    }
}

/// `[notifications]`: signed webhooks when a secret needs re-authorization
/// and when it recovers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Where to POST them.
    pub url: String,
    /// Environment variable holding the HMAC signing secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the HMAC signing secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Milliseconds between delivery rounds.
    #[serde(default = "default_notify_interval")]
    pub interval_ms: u64,
    /// Timeout of one delivery.
    #[serde(default = "default_http_timeout")]
    pub timeout_secs: u64,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// HTTP worker threads.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// HTTPS; plain HTTP when absent.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: default_bind(),
            workers: default_workers(),
            tls: None,
        }
    }
}

/// `[server.tls]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates: when given, engines must present a client
    /// certificate signed by one of them (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// Storage back ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// One SQLite file (the embedded default).
    Sqlite,
    /// A PostgreSQL database shared by any number of replicas.
    Postgres,
}

/// `[storage]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Which back end.
    #[serde(default = "default_backend")]
    pub backend: StorageBackend,
    /// SQLite file; default `<data_dir>/vault.db`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// PostgreSQL connection string for `backend = "postgres"`
    /// (`postgres://user:password@host:5432/vault`). Keep the password
    /// out of the file: set it through `VAULT__STORAGE__URL`.
    #[serde(default)]
    pub url: Option<String>,
    /// Most PostgreSQL connections this replica opens.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// PEM file of the CAs that sign the PostgreSQL server's certificate
    /// (with `sslmode=require` in the URL); default: the Mozilla roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            path: None,
            url: None,
            pool_size: default_pool_size(),
            tls_ca_file: None,
        }
    }
}

/// Key providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyProviderKind {
    /// Base64 keys in a file (a key ring: the last line is active).
    File,
    /// Base64 keys in an environment variable (comma separated).
    Env,
    /// AWS KMS wraps the data keys (`[keys.aws_kms]`).
    AwsKms,
    /// A HashiCorp Vault / OpenBao Transit engine wraps the data keys
    /// (`[keys.transit]`).
    Transit,
}

/// `[keys.aws_kms]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AwsKmsSection {
    /// The region (requests are signed for it).
    pub region: String,
    /// The KMS key new data keys are wrapped under: id, alias or ARN.
    pub key_id: String,
    /// Keys used before, still accepted for unwrapping until rewrapped.
    #[serde(default)]
    pub previous_key_ids: Vec<String>,
    /// The endpoint; default `https://kms.<region>.amazonaws.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Variable holding the access key id.
    #[serde(default = "default_aws_access_key_env")]
    pub access_key_id_env: String,
    /// Variable holding the secret access key.
    #[serde(default = "default_aws_secret_key_env")]
    pub secret_access_key_env: String,
    /// Variable holding a session token (optional; used when set).
    #[serde(default = "default_aws_session_token_env")]
    pub session_token_env: String,
    /// Time limit of one KMS request.
    #[serde(default = "default_kms_timeout")]
    pub timeout_secs: u64,
}

/// `[keys.transit]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransitSection {
    /// The server, e.g. `https://openbao.internal:8200`.
    pub address: String,
    /// The Transit key's name.
    pub key_name: String,
    /// Where the Transit engine is mounted.
    #[serde(default = "default_transit_mount")]
    pub mount: String,
    /// Variable holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File holding the token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Time limit of one request.
    #[serde(default = "default_kms_timeout")]
    pub timeout_secs: u64,
}

/// `[keys]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// For `provider = "aws-kms"`.
    #[serde(default)]
    pub aws_kms: Option<AwsKmsSection>,
    /// For `provider = "transit"`.
    #[serde(default)]
    pub transit: Option<TransitSection>,
    /// With a remote KMS: how long an unwrapped data key stays in memory.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_secs: u64,
    /// With a remote KMS: how many unwrapped data keys stay in memory.
    #[serde(default = "default_cache_entries")]
    pub cache_max_entries: usize,
    /// Values rewrapped per transaction after a rotation.
    #[serde(default = "default_rewrap_batch")]
    pub rewrap_batch: u32,
    /// How often the server looks for key rotations made elsewhere and
    /// for values to rewrap.
    #[serde(default = "default_key_check")]
    pub check_interval_secs: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            provider: default_key_provider(),
            file: None,
            create_if_missing: true,
            env_var: default_key_env(),
            aws_kms: None,
            transit: None,
            cache_ttl_secs: default_cache_ttl(),
            cache_max_entries: default_cache_entries(),
            rewrap_batch: default_rewrap_batch(),
            check_interval_secs: default_key_check(),
        }
    }
}

/// `[vault]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
fn default_pool_size() -> usize {
    16
}
fn default_lease() -> u64 {
    30
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
fn default_aws_access_key_env() -> String {
    "AWS_ACCESS_KEY_ID".into()
}
fn default_aws_secret_key_env() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}
fn default_aws_session_token_env() -> String {
    "AWS_SESSION_TOKEN".into()
}
fn default_kms_timeout() -> u64 {
    5
}
fn default_transit_mount() -> String {
    "transit".into()
}
fn default_cache_ttl() -> u64 {
    300
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_rewrap_batch() -> u32 {
    500
}
fn default_key_check() -> u64 {
    5
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
fn default_prune_interval() -> u64 {
    3600
}
fn default_forward_batch() -> u32 {
    500
}
fn default_forward_interval() -> u64 {
    1000
}
fn default_forward_backoff() -> u64 {
    60
}
fn default_resolver() -> ResolverKind {
    ResolverKind::Local
}
fn default_engine_reload() -> u64 {
    5
}
fn default_max_failures() -> u32 {
    5
}
fn default_lockout() -> u64 {
    900
}
fn default_burst() -> u32 {
    50
}
fn default_ecc_timeout() -> u64 {
    2000
}
fn default_ecc_cache() -> u64 {
    30
}
fn default_refresh_interval() -> u64 {
    5000
}
fn default_refresh_concurrency() -> usize {
    32
}
fn default_refresh_batch() -> u32 {
    2000
}
fn default_refresh_jitter() -> u64 {
    500
}
fn default_margin() -> u64 {
    300
}
fn default_margin_ratio() -> f64 {
    0.1
}
fn default_force_cooldown() -> u64 {
    10
}
fn default_backoff_base() -> u64 {
    5
}
fn default_backoff_max() -> u64 {
    900
}
fn default_http_timeout() -> u64 {
    10
}
fn default_notify_interval() -> u64 {
    2000
}

impl Config {
    /// Loads defaults, then `file` (when given), then `VAULT__SECTION__KEY`
    /// environment variables, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// [`Config::load`] with the variables taken from `env` instead of the
    /// process environment when given (for tests).
    ///
    /// Variables are read as strings and converted by the field they set,
    /// so a string field keeps `0123` or `2141029472.691202649728` exactly
    /// (a client id), while numeric and boolean fields still parse theirs.
    fn load_with_env(
        file: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
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
                .source(env.map(|vars| vars.into_iter().collect())),
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
        for (name, entry) in &self.providers {
            vault_types::validate_identifier("provider name", name)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if name.to_ascii_lowercase() != *name {
                return Err(ConfigError::Invalid(format!(
                    "providers.{name}: provider names are lower case"
                )));
            }
            entry.definition(name)?;
        }
        let r = &self.refresh;
        if r.interval_ms == 0 || r.concurrency == 0 || r.batch == 0 || r.http_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "refresh: interval_ms, concurrency, batch and http_timeout_secs must be positive"
                    .into(),
            ));
        }
        // Each slot is a provider call in flight; beyond this the refresher's
        // semaphore could not even be created.
        if r.concurrency > 10_000 {
            return Err(ConfigError::Invalid(
                "refresh.concurrency must be at most 10000".into(),
            ));
        }
        check_log_filter(&self.log.level)?;
        if r.backoff_base_secs == 0
            || r.backoff_max_secs < r.backoff_base_secs
            || r.backoff_max_secs > 86_400
            || r.max_jitter_ms > 60_000
            || r.margin_secs > 86_400
            || r.force_cooldown_secs > 86_400
            || r.http_timeout_secs > 300
        {
            return Err(ConfigError::Invalid(
                "refresh: need 1 <= backoff_base_secs <= backoff_max_secs <= 86400, \
                 max_jitter_ms <= 60000, margin_secs and force_cooldown_secs <= 86400, \
                 http_timeout_secs <= 300"
                    .into(),
            ));
        }
        // A claimed lease is used without renewal while half of it is
        // left, so half a lease must outlast a provider call.
        if r.lease_secs <= 2 * r.http_timeout_secs || r.lease_secs > 3600 {
            return Err(ConfigError::Invalid(
                "refresh: lease_secs must be more than twice http_timeout_secs (a refresh \
                 must finish inside what is left of its lease) and at most 3600"
                    .into(),
            ));
        }
        let st = &self.storage;
        match st.backend {
            StorageBackend::Sqlite => {}
            StorageBackend::Postgres => {
                let url = st.url.as_deref().ok_or_else(|| {
                    ConfigError::Invalid(
                        "storage: backend = \"postgres\" needs storage.url \
                         (or VAULT__STORAGE__URL)"
                            .into(),
                    )
                })?;
                vault_secret_store::parse_postgres_url(url).map_err(|_| {
                    ConfigError::Invalid(
                        "storage.url is not a PostgreSQL connection string \
                         (postgres://user:password@host:5432/db)"
                            .into(),
                    )
                })?;
            }
        }
        if st.pool_size == 0 || st.pool_size > 1000 {
            return Err(ConfigError::Invalid(
                "storage.pool_size must be between 1 and 1000".into(),
            ));
        }
        if !(0.0..=1.0).contains(&r.margin_ratio) {
            return Err(ConfigError::Invalid(
                "refresh.margin_ratio must be between 0 and 1".into(),
            ));
        }
        if let Some(n) = &self.notifications {
            check_url("notifications.url", &n.url)?;
            if n.secret_env.is_some() == n.secret_file.is_some() {
                return Err(ConfigError::Invalid(
                    "notifications: give exactly one of secret_env and secret_file".into(),
                ));
            }
            // The sending replica renews its job lease before each delivery
            // once half of it is gone: one delivery must fit in that half.
            if n.timeout_secs.saturating_mul(2) >= self.refresh.lease_secs {
                return Err(ConfigError::Invalid(
                    "notifications.timeout_secs must be less than half of refresh.lease_secs \
                     (one replica sends at a time, under that lease)"
                        .into(),
                ));
            }
        }
        if self.audit.prune_interval_secs == 0
            || self.audit.retention_days.is_some_and(|d| d > 36_500)
        {
            return Err(ConfigError::Invalid(
                "audit: prune_interval_secs must be positive and retention_days at most 36500"
                    .into(),
            ));
        }
        if let Some(f) = &self.audit.forward {
            check_url("audit.forward.url", &f.url)?;
            if f.batch == 0
                || f.batch > 10_000
                || f.interval_ms == 0
                || f.timeout_secs == 0
                || f.max_backoff_secs == 0
                || f.max_backoff_secs > 3600
            {
                return Err(ConfigError::Invalid(
                    "audit.forward: batch 1..=10000, positive interval_ms and timeout_secs, max_backoff_secs 1..=3600".into(),
                ));
            }
            if f.timeout_secs.saturating_mul(2) >= self.refresh.lease_secs {
                return Err(ConfigError::Invalid(
                    "audit.forward.timeout_secs must be less than half of refresh.lease_secs \
                     (one replica forwards at a time, under that lease)"
                        .into(),
                ));
            }
        }
        let a = &self.access;
        if a.resolver != ResolverKind::Local && a.ecc.is_none() {
            return Err(ConfigError::Invalid(
                "access.resolver = \"ecc\" or \"chain\" needs [access.ecc] url".into(),
            ));
        }
        if let Some(ecc) = &a.ecc {
            check_url("access.ecc.url", &ecc.url)?;
            if ecc.timeout_ms == 0 {
                return Err(ConfigError::Invalid(
                    "access.ecc.timeout_ms must be positive".into(),
                ));
            }
        }
        if let Some(ecc) = &a.ecc
            && (ecc.timeout_ms > 60_000 || ecc.cache_ttl_secs > 86_400)
        {
            return Err(ConfigError::Invalid(
                "access.ecc: timeout_ms at most 60000, cache_ttl_secs at most 86400".into(),
            ));
        }
        if a.lockout_secs > 604_800 || a.engine_reload_secs > 86_400 {
            return Err(ConfigError::Invalid(
                "access: lockout_secs at most 604800, engine_reload_secs at most 86400".into(),
            ));
        }
        if a.max_failures == 0 || a.lockout_secs == 0 || a.engine_reload_secs == 0 {
            return Err(ConfigError::Invalid(
                "access: max_failures, lockout_secs and engine_reload_secs must be positive".into(),
            ));
        }
        let k = &self.keys;
        if k.rewrap_batch == 0 || k.rewrap_batch > 10_000 || k.check_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "keys: rewrap_batch 1..=10000 and a positive check_interval_secs".into(),
            ));
        }
        if k.cache_ttl_secs > 86_400 || k.cache_max_entries > 10_000_000 {
            return Err(ConfigError::Invalid(
                "keys: cache_ttl_secs at most 86400, cache_max_entries at most 10000000".into(),
            ));
        }
        match k.provider {
            KeyProviderKind::AwsKms => {
                let Some(aws) = &k.aws_kms else {
                    return Err(ConfigError::Invalid(
                        "keys.provider = \"aws-kms\" needs [keys.aws_kms] region and key_id".into(),
                    ));
                };
                if aws.region.trim().is_empty() || aws.key_id.trim().is_empty() {
                    return Err(ConfigError::Invalid(
                        "keys.aws_kms: region and key_id must not be empty".into(),
                    ));
                }
                if let Some(endpoint) = &aws.endpoint {
                    check_url("keys.aws_kms.endpoint", endpoint)?;
                }
                if aws.timeout_secs == 0 || aws.timeout_secs > 300 {
                    return Err(ConfigError::Invalid(
                        "keys.aws_kms.timeout_secs must be 1..=300".into(),
                    ));
                }
            }
            KeyProviderKind::Transit => {
                let Some(t) = &k.transit else {
                    return Err(ConfigError::Invalid(
                        "keys.provider = \"transit\" needs [keys.transit] address and key_name"
                            .into(),
                    ));
                };
                check_url("keys.transit.address", &t.address)?;
                if t.token_env.is_some() == t.token_file.is_some() {
                    return Err(ConfigError::Invalid(
                        "keys.transit: give exactly one of token_env and token_file".into(),
                    ));
                }
                if t.key_name.trim().is_empty() || t.timeout_secs == 0 || t.timeout_secs > 300 {
                    return Err(ConfigError::Invalid(
                        "keys.transit: key_name must not be empty, timeout_secs 1..=300".into(),
                    ));
                }
            }
            KeyProviderKind::File | KeyProviderKind::Env => {}
        }
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

    /// The effective configuration as TOML, for `config check`: engine
    /// token hashes and the database password are masked (the
    /// configuration holds no other secret; client secrets and keys are
    /// named by variable or file only).
    pub fn effective_toml(&self) -> Result<String, ConfigError> {
        let mut shown = self.clone();
        for engine in &mut shown.engines {
            engine.token_sha256 = "[redacted]".into();
        }
        if let Some(url) = &mut shown.storage.url {
            // The connection string may carry a password.
            *url = format!(
                "{} (password, if any, redacted)",
                vault_secret_store::describe_postgres_url(url)
            );
        }
        // Receivers' URLs may carry a secret in the user part, the path (a
        // webhook's key) or the query: only the scheme and host are shown.
        if let Some(n) = &mut shown.notifications {
            n.url = redact_url(&n.url);
        }
        if let Some(f) = &mut shown.audit.forward {
            f.url = redact_url(&f.url);
        }
        if let Some(ecc) = &mut shown.access.ecc {
            ecc.url = redact_url(&ecc.url);
        }
        toml::to_string_pretty(&shown).map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// Where the development engine's token is written.
    pub fn dev_token_file(&self) -> PathBuf {
        self.data_dir.join("dev-engine.token")
    }
}

/// The scheme, host and port of `url`, with anything that may be secret
/// (user, password, path, query, fragment) replaced by a note.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!(
                "{}://{}{port}/[path, query and credentials redacted]",
                u.scheme(),
                u.host_str().unwrap_or("")
            )
        }
        Err(_) => "[redacted]".into(),
    }
}

/// Checks `log.level`: comma-separated directives, each a level
/// (`trace`, `debug`, `info`, `warn`, `error`, `off`) or `target=level`.
/// A bare word that is not a level would be read as a target shown at every
/// level, leaving everything else silent (`warning` would hide the vault's
/// own warnings).
fn check_log_filter(filter: &str) -> Result<(), ConfigError> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |s: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s.trim()));
    let ok = !filter.trim().is_empty()
        && filter.split(',').all(|d| match d.rsplit_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(d),
        });
    if ok {
        Ok(())
    } else {
        // The value is not repeated: a secret pasted into the wrong key
        // must not reach the terminal or a log.
        Err(ConfigError::Invalid(format!(
            "log.level: each comma-separated directive must be one of {} or target=level",
            LEVELS.join(", ")
        )))
    }
}

/// Checks that `url` is HTTPS, or plain HTTP to a loopback host only:
/// credentials never cross a network unencrypted. The URL is parsed as the
/// HTTP client will parse it, so the host checked is the host connected to
/// (`http://localhost:1@x.example/` goes to `x.example`).
pub(crate) fn check_url(what: &str, url: &str) -> Result<(), ConfigError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| ConfigError::Invalid(format!("{what} is not a valid URL ({e})")))?;
    if parsed.scheme() == "https" && parsed.host().is_some() {
        return Ok(());
    }
    let loopback = parsed.scheme() == "http"
        && match parsed.host() {
            Some(url::Host::Domain(name)) => name == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
    if loopback {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "{what} must be https:// (plain http:// is allowed to loopback only)"
        )))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_redacted_from_messages() {
        use super::redact_credentials as r;
        assert_eq!(
            r("bad \"postgres://vault:s3cr/t?x@db:5432/vault\" here"),
            "bad \"postgres://vault:***@db:5432/vault\" here"
        );
        assert_eq!(r("postgres://db/vault"), "postgres://db/vault");
        assert_eq!(r("postgres://vault@db/vault"), "postgres://vault@db/vault");
        assert_eq!(
            r("host=db password=hunter2 user=vault"),
            "host=db password=*** user=vault"
        );
        assert_eq!(
            r("postgres://db/v?Password=a/b&sslmode=require"),
            "postgres://db/v?Password=***&sslmode=require"
        );
        assert_eq!(r("a://b:c@d and e://f:g@h"), "a://b:***@d and e://f:***@h");
    }

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
    fn the_effective_configuration_hides_receivers_secrets() {
        let c = Config::from_toml(
            "[notifications]\nurl = \"https://u:PW-SECRET@hooks.example:8443/services/PATH-SECRET?k=Q-SECRET\"\n\
             secret_env = \"HOOK\"\n\
             [audit.forward]\nurl = \"https://logs.example/in?token=F-SECRET\"\n\
             [access]\nresolver = \"ecc\"\n[access.ecc]\nurl = \"https://ecc.example/v1/E-SECRET\"",
        )
        .unwrap();
        let shown = c.effective_toml().unwrap();
        for secret in [
            "PW-SECRET",
            "PATH-SECRET",
            "Q-SECRET",
            "F-SECRET",
            "E-SECRET",
        ] {
            assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
        }
        assert!(shown.contains("https://hooks.example:8443/"), "{shown}");
        assert!(shown.contains("https://logs.example/"), "{shown}");
        assert!(shown.contains("https://ecc.example/"), "{shown}");
    }

    #[test]
    fn log_filters_of_levels_and_targets_are_accepted() {
        for ok in [
            "info",
            "WARN",
            "off",
            "info,vault_api=debug",
            "warn, actix_web=error",
        ] {
            check_log_filter(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn environment_values_keep_their_text_and_still_set_numbers() {
        let env = [
            (
                "VAULT__PROVIDERS__SLACK__CLIENT_ID",
                "2141029472.691202649728",
            ),
            ("VAULT__PROVIDERS__SLACK__CLIENT_SECRET_ENV", "S"),
            ("VAULT__PROVIDERS__NOTION__CLIENT_ID", "0123"),
            ("VAULT__PROVIDERS__NOTION__CLIENT_SECRET_ENV", "N"),
            ("VAULT__REFRESH__CONCURRENCY", "7"),
            ("VAULT__REFRESH__MARGIN_RATIO", "0.25"),
            ("VAULT__REFRESH__BACKGROUND", "false"),
            ("VAULT__SERVER__BIND", "127.0.0.1:9"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let c = Config::load_with_env(None, Some(env)).unwrap();
        assert_eq!(
            c.providers["slack"].client_id.as_deref(),
            Some("2141029472.691202649728")
        );
        assert_eq!(c.providers["notion"].client_id.as_deref(), Some("0123"));
        assert_eq!(c.refresh.concurrency, 7);
        assert!((c.refresh.margin_ratio - 0.25).abs() < f64::EPSILON);
        assert!(!c.refresh.background);
        assert_eq!(c.server.bind, "127.0.0.1:9");
    }

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in [
            "https://x.example/a",
            "http://127.0.0.1:8080/t",
            "http://localhost/t",
            "http://[::1]:9/t",
        ] {
            assert!(check_url("u", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1/t",
            "http://x.example",
            "ftp://127.0.0.1/",
            "http://127.0.0.1.evil/",
            "http://localhost:1@logs.example/t",
            "http://127.0.0.1@logs.example/t",
            "http://[::1]@logs.example/t",
            "not a url",
        ] {
            assert!(check_url("u", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_effective_configuration_masks_token_hashes_and_reparses() {
        let c = Config::from_toml(
            "[[engines]]\nid = \"x\"\ntoken_sha256 = \"ab\"\ngrants = [\"read:*:*:*\"]\n[providers.slack]\nclient_id = \"1.2\"\nclient_secret_env = \"S\"",
        )
        .unwrap();
        let shown = c.effective_toml().unwrap();
        assert!(
            shown.contains("[redacted]") && !shown.contains("\"ab\""),
            "{shown}"
        );
        assert!(shown.contains("client_secret_env = \"S\""));
        assert!(
            Config::from_toml(&shown).is_ok(),
            "the output is a valid configuration"
        );
    }

    #[test]
    fn postgres_storage_needs_a_url_and_its_password_is_masked() {
        let err = Config::from_toml("[storage]\nbackend = \"postgres\"").unwrap_err();
        assert!(err.to_string().contains("storage.url"), "{err}");
        let err = Config::from_toml("[storage]\nbackend = \"postgres\"\nurl = \"not a url ://\"")
            .unwrap_err();
        assert!(err.to_string().contains("connection string"), "{err}");
        let c = Config::from_toml(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://vault:pw-SECRET@db:5432/vault\"\npool_size = 8",
        )
        .unwrap();
        assert_eq!(c.storage.pool_size, 8);
        let shown = c.effective_toml().unwrap();
        assert!(!shown.contains("pw-SECRET"), "{shown}");
        assert!(shown.contains("postgres://vault@db:5432/vault"), "{shown}");
        // A lease shorter than a provider call is refused, and so is one
        // whose second half is (a claim is used while half is left).
        for lease in [5, 11, 20] {
            let err = Config::from_toml(&format!(
                "[refresh]\nhttp_timeout_secs = 10\nlease_secs = {lease}"
            ))
            .unwrap_err();
            assert!(err.to_string().contains("lease_secs"), "{lease}: {err}");
        }
        assert!(Config::from_toml("[refresh]\nhttp_timeout_secs = 10\nlease_secs = 21").is_ok());
    }

    #[test]
    fn the_replica_sample_is_valid_once_given_its_url() {
        // The connection string comes from VAULT__STORAGE__URL in the
        // sample; without it the configuration is refused.
        let sample = include_str!("../../../examples/deploy/replica.toml");
        assert!(Config::from_toml(sample).is_err());
        let c = Config::from_toml(&sample.replace(
            "pool_size = 16",
            "pool_size = 16\nurl = \"postgres://vault@db.internal:5432/vault\"",
        ))
        .unwrap();
        assert_eq!(c.storage.backend, StorageBackend::Postgres);
        assert_eq!(c.keys.provider, KeyProviderKind::AwsKms);
    }

    #[test]
    fn the_sample_configuration_is_valid() {
        let c = Config::from_toml(include_str!("../../../examples/vault.toml")).unwrap();
        assert_eq!(c.server.bind, "127.0.0.1:8200");
        assert_eq!(c.refresh.concurrency, 32);
    }

    #[test]
    fn providers_merge_over_builtins() {
        let c = Config::from_toml(
            r#"
            [providers.slack]
            client_id = "123.456"
            client_secret_env = "SLACK_CLIENT_SECRET"
            token_url = "http://127.0.0.1:9/slack"
            [providers.acme]
            kind = "oauth2"
            token_url = "https://auth.acme.example/oauth/token"
            revoke_url = "https://auth.acme.example/oauth/revoke"
            client_id = "vault"
            client_secret_env = "ACME_CLIENT_SECRET"
            client_auth = "basic"
            [providers.stripe]
            "#,
        )
        .unwrap();
        let slack = c.providers["slack"].definition("slack").unwrap();
        assert_eq!(slack.token_url.as_deref(), Some("http://127.0.0.1:9/slack"));
        assert_eq!(
            slack.revoke_url.as_deref(),
            Some("https://slack.com/api/auth.revoke")
        );
        assert!(slack.quirks.ok_envelope);
        let acme = c.providers["acme"].definition("acme").unwrap();
        assert_eq!(acme.client_auth, ClientAuth::Basic);
        assert_eq!(
            c.providers["stripe"].definition("stripe").unwrap().kind,
            AuthKind::ApiKey
        );
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
            "[providers.acme]\nclient_id = \"x\"",
            "[providers.acme]\nkind = \"oauth2\"\nclient_id = \"x\"",
            "[providers.acme]\nkind = \"oauth2\"\ntoken_url = \"ftp://x\"\nclient_id = \"x\"",
            "[providers.slack]\nclient_secret_env = \"X\"",
            "[providers.Slack]\nclient_id = \"x\"",
            "[providers.slack]\nclient_id = \"x\"\nsurprise = 1",
            "[refresh]\nmargin_ratio = 2.0",
            "[notifications]\nurl = \"http://x\"",
            "[notifications]\nurl = \"http://example.com/hook\"\nsecret_env = \"X\"",
            "[providers.acme]\nkind = \"oauth2\"\ntoken_url = \"http://auth.example/t\"\nclient_id = \"x\"",
            "[refresh]\nbackoff_base_secs = 0",
            "[refresh]\nmax_jitter_ms = 18446744073709551615",
            "[access]\nresolver = \"ecc\"",
            "[access.ecc]\nurl = \"http://ecc.internal/v1\"",
            "[refresh]\nconcurrency = 9223372036854775807",
            "[refresh]\nconcurrency = 10001",
            "[log]\nlevel = \"warning\"",
            "[notifications]\nurl = \"https://h.example/x\"\nsecret_env = \"H\"\ntimeout_secs = 15",
            "[audit.forward]\nurl = \"https://l.example/x\"\ntimeout_secs = 15",
            "[log]\nlevel = \"info,vault\"",
            "[log]\nlevel = \"=debug\"",
            "[log]\nlevel = \"\"",
        ] {
            assert!(
                Config::from_toml(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
