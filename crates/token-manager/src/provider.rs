//! OAuth providers: definitions, built-ins, and the HTTP client that
//! refreshes and revokes tokens at them.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use vault_types::Secret;

/// How a platform's credentials behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// OAuth 2.0 with refresh tokens (RFC 6749 §6).
    Oauth2,
    /// OAuth 2.0 tokens that do not expire and are never refreshed (they may
    /// still be revoked).
    Oauth2Static,
    /// Static API keys: never expire, never refreshed, not revocable here.
    ApiKey,
}

/// How the vault authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with client id and secret.
    Basic,
    /// `client_id` and `client_secret` in the request body.
    Body,
}

/// Encoding of token and revocation request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    Form,
    /// `application/json` (Notion).
    Json,
}

/// Provider behaviour that departs from the RFCs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quirks {
    /// Answers carry `"ok": false` and an `"error"` with HTTP 200 (Slack).
    pub ok_envelope: bool,
    /// The revocation endpoint takes access tokens only; refresh tokens
    /// cannot be revoked there (Slack's `auth.revoke`).
    pub revoke_access_token_only: bool,
    /// Revoking one token of a grant revokes the whole grant, so a second
    /// revocation answering `invalid_token` means "already revoked" (Google).
    pub revoke_is_grant_wide: bool,
}

/// Everything the vault needs to know about one provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderDefinition {
    /// Provider (and platform) name, lower case.
    pub name: String,
    /// How its credentials behave.
    pub kind: AuthKind,
    /// Token endpoint (refresh), for `oauth2`.
    pub token_url: Option<String>,
    /// Revocation endpoint, when the provider has one.
    pub revoke_url: Option<String>,
    /// Client authentication at the token endpoint.
    pub client_auth: ClientAuth,
    /// Body encoding.
    pub body_format: BodyFormat,
    /// Separator of the `scope` field in token responses.
    pub scope_separator: String,
    /// Departures from the RFCs.
    pub quirks: Quirks,
}

impl ProviderDefinition {
    /// A generic RFC 6749 / RFC 7009 provider.
    pub fn generic(name: &str, token_url: Option<String>, revoke_url: Option<String>) -> Self {
        Self {
            name: name.to_owned(),
            kind: AuthKind::Oauth2,
            token_url,
            revoke_url,
            client_auth: ClientAuth::Basic,
            body_format: BodyFormat::Form,
            scope_separator: " ".into(),
            quirks: Quirks::default(),
        }
    }

    /// The built-in definition for `name`, if there is one: `slack`,
    /// `google`, `notion`, `stripe`.
    pub fn builtin(name: &str) -> Option<Self> {
        let d = match name {
            // Slack token rotation: POST https://slack.com/api/oauth.v2.access
            // with grant_type=refresh_token; client id and secret by Basic
            // auth or in the body (docs.slack.dev: oauth.v2.access, "Using
            // token rotation"). Errors come as HTTP 200 {"ok": false}. A new
            // refresh token comes back on every refresh and the old one is
            // revoked. Revocation: auth.revoke with the token.
            "slack" => Self {
                client_auth: ClientAuth::Body,
                scope_separator: ",".into(),
                quirks: Quirks {
                    ok_envelope: true,
                    revoke_access_token_only: true,
                    revoke_is_grant_wide: false,
                },
                ..Self::generic(
                    "slack",
                    Some("https://slack.com/api/oauth.v2.access".into()),
                    Some("https://slack.com/api/auth.revoke".into()),
                )
            },
            // Google: POST https://oauth2.googleapis.com/token; refresh
            // responses normally carry no refresh token (the old one stays
            // valid). Revocation: POST https://oauth2.googleapis.com/revoke
            // with token=…; revoking either token revokes the grant
            // (developers.google.com/identity/protocols/oauth2/web-server).
            "google" => Self {
                client_auth: ClientAuth::Body,
                quirks: Quirks {
                    revoke_is_grant_wide: true,
                    ..Quirks::default()
                },
                ..Self::generic(
                    "google",
                    Some("https://oauth2.googleapis.com/token".into()),
                    Some("https://oauth2.googleapis.com/revoke".into()),
                )
            },
            // Notion: POST https://api.notion.com/v1/oauth/token with HTTP
            // Basic client auth and a JSON body; a refresh returns a new
            // access and refresh token. Revocation: POST /v1/oauth/revoke
            // (developers.notion.com/reference/refresh-a-token). Older
            // integrations have no refresh token and never expire: such
            // tokens are simply never refreshed.
            "notion" => Self {
                body_format: BodyFormat::Json,
                ..Self::generic(
                    "notion",
                    Some("https://api.notion.com/v1/oauth/token".into()),
                    Some("https://api.notion.com/v1/oauth/revoke".into()),
                )
            },
            // Stripe secret and restricted keys are static: no expiry, no
            // refresh; they are rolled in the dashboard (docs.stripe.com/keys).
            "stripe" => Self {
                kind: AuthKind::ApiKey,
                ..Self::generic("stripe", None, None)
            },
            _ => return None,
        };
        Some(d)
    }
}

/// A configured provider: its definition and the vault's client credentials.
#[derive(Clone)]
pub struct ProviderConfig {
    /// The definition.
    pub definition: ProviderDefinition,
    /// OAuth client id.
    pub client_id: Option<String>,
    /// OAuth client secret (from an environment variable or a file).
    pub client_secret: Option<Secret>,
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("definition", &self.definition)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .finish()
    }
}

/// Tokens returned by a successful refresh.
#[derive(Debug, Clone)]
pub struct Refreshed {
    /// The new access token.
    pub access_token: Secret,
    /// A new refresh token, when the provider rotated it.
    pub refresh_token: Option<Secret>,
    /// Lifetime of the new access token; `None`: not given.
    pub expires_in: Option<u64>,
    /// Scopes, when the response listed them.
    pub scopes: Option<Vec<String>>,
    /// Token type, when given.
    pub token_type: Option<String>,
}

/// Why a call to a provider failed. Never carries a token or a response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The grant is dead (`invalid_grant`, revoked, rotated away): the user
    /// must reconnect. Never retried.
    #[error("the provider rejected the grant ({0})")]
    InvalidGrant(String),
    /// HTTP 429; retry after the given delay when known.
    #[error("the provider is rate limiting")]
    RateLimited {
        /// `Retry-After`, when the provider sent one.
        retry_after: Option<Duration>,
    },
    /// The call timed out.
    #[error("the provider did not answer in time")]
    Timeout,
    /// The provider could not be reached.
    #[error("the provider could not be reached")]
    Connect,
    /// The provider answered 5xx.
    #[error("the provider failed with status {0}")]
    Server(u16),
    /// The provider refused the request for another reason (4xx, or an
    /// `ok: false` error other than a dead grant), e.g. bad client credentials.
    #[error("the provider refused the request ({0})")]
    Rejected(String),
    /// The answer could not be understood.
    #[error("the provider's answer could not be understood")]
    InvalidResponse,
    /// The provider does not support the operation, or is not configured for it.
    #[error("not supported by the provider")]
    NotSupported,
}

impl ProviderError {
    /// A short stable name for status fields, audit details and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidGrant(_) => "invalid_grant",
            Self::RateLimited { .. } => "rate_limited",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Server(_) => "server_error",
            Self::Rejected(_) => "rejected",
            Self::InvalidResponse => "invalid_response",
            Self::NotSupported => "not_supported",
        }
    }

    /// Whether the grant is dead (no point retrying).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::InvalidGrant(_))
    }
}

/// Which token a revocation is about (RFC 7009 `token_type_hint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// The access token.
    Access,
    /// The refresh token.
    Refresh,
}

impl TokenKind {
    fn hint(self) -> &'static str {
        match self {
            Self::Access => "access_token",
            Self::Refresh => "refresh_token",
        }
    }
}

/// Refreshes and revokes tokens of one platform.
#[async_trait]
pub trait Provider: fmt::Debug + Send + Sync + 'static {
    /// Whether tokens of this platform can be refreshed.
    fn can_refresh(&self) -> bool;

    /// Exchanges a refresh token for new tokens (RFC 6749 §6).
    async fn refresh(
        &self,
        refresh_token: &Secret,
        scopes: &[String],
    ) -> Result<Refreshed, ProviderError>;

    /// Revokes one token (RFC 7009 or the provider's own endpoint).
    /// `NotSupported` when the provider cannot revoke this kind of token.
    async fn revoke(&self, token: &Secret, kind: TokenKind) -> Result<(), ProviderError>;

    /// Whether revoking one token ends the whole grant, every token issued
    /// to the same user and client with it (Google). Tokens thrown away
    /// because a newer store won are then left to expire rather than
    /// revoked: the newer token may belong to the same grant.
    fn revocation_is_grant_wide(&self) -> bool {
        false
    }
}

/// Providers by platform name.
#[derive(Debug, Clone, Default)]
pub struct ProviderRegistry {
    by_platform: HashMap<String, Arc<dyn Provider>>,
}

impl ProviderRegistry {
    /// An empty registry: every platform is a manual token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `provider` for `platform` (lower-cased).
    pub fn insert(&mut self, platform: &str, provider: Arc<dyn Provider>) {
        self.by_platform
            .insert(platform.to_ascii_lowercase(), provider);
    }

    /// The provider of `platform`, if one is configured.
    pub fn get(&self, platform: &str) -> Option<&Arc<dyn Provider>> {
        self.by_platform.get(platform)
    }

    /// Builds HTTP providers for `configs` sharing one client whose every
    /// call times out after `timeout`.
    pub fn from_configs(
        configs: Vec<ProviderConfig>,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // Idle connections are dropped before common server keep-alive
            // timeouts (5 s and up): a refresh sent on a connection the
            // server is closing at that moment fails, and a refresh is not
            // safely retried (the provider may have rotated the token).
            .pool_idle_timeout(Duration::from_secs(3))
            // Never follow a redirect with a token in the body.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("vault-engine/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| ProviderError::NotSupported)?;
        let mut registry = Self::new();
        for config in configs {
            let name = config.definition.name.clone();
            registry.insert(
                &name,
                Arc::new(HttpProvider {
                    config,
                    http: http.clone(),
                }),
            );
        }
        Ok(registry)
    }
}

/// A provider spoken to over HTTP, driven by its [`ProviderDefinition`].
pub struct HttpProvider {
    config: ProviderConfig,
    http: reqwest::Client,
}

impl fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProvider")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Largest provider answer read, in bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Error codes that mean the grant is dead. `invalid_grant` is RFC 6749's;
/// the others are Slack's spellings of the same thing.
const DEAD_GRANT_CODES: &[&str] = &[
    "invalid_grant",
    // GitHub: the refresh token is expired, revoked or already used.
    "bad_refresh_token",
    "invalid_refresh_token",
    "token_revoked",
    "token_expired",
    "invalid_auth",
    "account_inactive",
];

fn transport_error(e: &reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout
    } else {
        ProviderError::Connect
    }
}

fn retry_after(value: Option<&str>) -> Option<Duration> {
    value?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(24 * 3600)))
}

/// Reads at most [`MAX_RESPONSE_BYTES`] of the body.
async fn read_body(mut res: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| transport_error(&e))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ProviderError::InvalidResponse);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A short error code from an error body, only when it is a plain
/// identifier (a provider echoing a token must not put it in our logs).
fn error_code(json: &serde_json::Value) -> String {
    json.get("error")
        .and_then(|e| e.as_str())
        .filter(|c| KNOWN_ERROR_CODES.contains(c) || DEAD_GRANT_CODES.contains(c))
        .unwrap_or("unknown")
        .to_owned()
}

/// The error codes of a provider's answer that are repeated (in errors,
/// logs and a secret's `last_error`), besides [`DEAD_GRANT_CODES`]: RFC
/// 6749 §4.1.2.1 and §5.2, RFC 6750 §3.1, RFC 7009 §2.2.1, and Slack's
/// own. Any other value is `unknown`: a lower-case token echoed in `error`
/// looks just like a code, and must not reach a log.
const KNOWN_ERROR_CODES: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
    "server_error",
    "temporarily_unavailable",
    "invalid_token",
    "insufficient_scope",
    "unsupported_token_type",
    "not_authed",
    "ratelimited",
    "invalid_client_id",
    "bad_client_secret",
    "invalid_grant_type",
];

fn classify_error_code(code: String) -> ProviderError {
    if DEAD_GRANT_CODES.contains(&code.as_str()) {
        ProviderError::InvalidGrant(code)
    } else {
        ProviderError::Rejected(code)
    }
}

/// A lifetime in seconds: a whole number, or a non-negative one with a
/// fraction (rounded down), as a JSON number or a string.
fn parse_expires_in(v: Option<&serde_json::Value>) -> Result<Option<u64>, ProviderError> {
    let seconds = |whole: Option<u64>, any: Option<f64>| {
        whole.or_else(|| any.filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
    };
    let parsed = match v {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Number(n)) => seconds(n.as_u64(), n.as_f64()),
        Some(serde_json::Value::String(s)) => {
            let s = s.trim();
            seconds(s.parse().ok(), s.parse().ok())
        }
        Some(_) => None,
    };
    parsed.map(Some).ok_or(ProviderError::InvalidResponse)
}

fn secret_field(json: &serde_json::Value, name: &str) -> Option<Secret> {
    json.get(name)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(Secret::from)
}

impl HttpProvider {
    fn def(&self) -> &ProviderDefinition {
        &self.config.definition
    }

    /// Sends `fields` to `url` with client authentication as configured.
    async fn post(
        &self,
        url: &str,
        mut fields: Vec<(&'static str, String)>,
        client_auth: bool,
    ) -> Result<reqwest::Response, ProviderError> {
        let def = self.def();
        let mut req = self.http.post(url).header("accept", "application/json");
        if client_auth {
            let id = self.config.client_id.clone().unwrap_or_default();
            let secret = self
                .config
                .client_secret
                .as_ref()
                .map(|s| s.expose().to_owned());
            match def.client_auth {
                ClientAuth::Basic => req = req.basic_auth(id, secret),
                ClientAuth::Body => {
                    fields.push(("client_id", id));
                    if let Some(secret) = secret {
                        fields.push(("client_secret", secret));
                    }
                }
            }
        }
        req = match def.body_format {
            BodyFormat::Form => req.form(&fields),
            BodyFormat::Json => {
                let map: serde_json::Map<String, serde_json::Value> = fields
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v)))
                    .collect();
                req.json(&map)
            }
        };
        req.send().await.map_err(|e| transport_error(&e))
    }
}

/// Reads a provider's answer off the wire: status, `Retry-After` and body.
/// The body of a 429 or 5xx is never read.
async fn receive(res: reqwest::Response) -> Result<(u16, Option<String>, Vec<u8>), ProviderError> {
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = if status == 429 || status >= 500 {
        Vec::new()
    } else {
        read_body(res).await?
    };
    Ok((status, retry, body))
}

/// Parses a provider's answer to a token or revocation request: its HTTP
/// `status`, its `Retry-After` header and its `body`.
///
/// Returns the JSON object of a successful answer, or the error it stands
/// for. Pure, so that it can be tested and fuzzed without a network. The
/// error carries nothing from the body but a short identifier-like error
/// code, so a provider echoing a token cannot put it in our logs.
pub fn read_answer(
    def: &ProviderDefinition,
    status: u16,
    retry_after_header: Option<&str>,
    body: &[u8],
) -> Result<serde_json::Value, ProviderError> {
    if status == 429 {
        return Err(ProviderError::RateLimited {
            retry_after: retry_after(retry_after_header),
        });
    }
    if (500..600).contains(&status) {
        return Err(ProviderError::Server(status));
    }
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(ProviderError::InvalidResponse);
    }
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&status) {
        return Err(match json {
            Some(j) => classify_error_code(error_code(&j)),
            None => ProviderError::Rejected(format!("http_{status}")),
        });
    }
    let json = json
        .filter(serde_json::Value::is_object)
        .ok_or(ProviderError::InvalidResponse)?;
    if def.quirks.ok_envelope && json.get("ok") != Some(&serde_json::Value::Bool(true)) {
        return Err(classify_error_code(error_code(&json)));
    }
    Ok(json)
}

/// Parses a provider's answer to a refresh request (RFC 6749 §5.1) into the
/// new tokens, or the error it stands for; see [`read_answer`].
pub fn read_refresh_answer(
    def: &ProviderDefinition,
    status: u16,
    retry_after_header: Option<&str>,
    body: &[u8],
) -> Result<Refreshed, ProviderError> {
    let json = read_answer(def, status, retry_after_header, body)?;
    // Some providers (GitHub's token endpoint) answer errors with HTTP 200:
    // an answer with an error code and no token is that error.
    if json.get("access_token").is_none() && json.get("error").is_some_and(|e| e.is_string()) {
        return Err(classify_error_code(error_code(&json)));
    }
    let access_token = secret_field(&json, "access_token").ok_or(ProviderError::InvalidResponse)?;
    let scopes = json.get("scope").and_then(|s| s.as_str()).map(|s| {
        s.split(def.scope_separator.as_str())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    });
    Ok(Refreshed {
        access_token,
        refresh_token: secret_field(&json, "refresh_token"),
        // The tokens are what matters: a provider that rotated the
        // refresh token has already invalidated the old one, so an answer
        // is never thrown away over its lifetime. An unusable one counts as
        // missing (the previous lifetime is assumed).
        expires_in: parse_expires_in(json.get("expires_in")).unwrap_or_else(|_| {
            tracing::warn!(
                "a refresh answer's expires_in is unusable; assuming the previous lifetime"
            );
            None
        }),
        scopes,
        token_type: json
            .get("token_type")
            .and_then(|t| t.as_str())
            .map(str::to_owned),
    })
}

#[async_trait]
impl Provider for HttpProvider {
    fn can_refresh(&self) -> bool {
        self.def().kind == AuthKind::Oauth2 && self.def().token_url.is_some()
    }

    async fn refresh(
        &self,
        refresh_token: &Secret,
        _scopes: &[String],
    ) -> Result<Refreshed, ProviderError> {
        let url = match (&self.def().kind, &self.def().token_url) {
            (AuthKind::Oauth2, Some(url)) => url.clone(),
            _ => return Err(ProviderError::NotSupported),
        };
        // RFC 6749 §6: no scope parameter, so the grant's scope is kept.
        let fields = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh_token.expose().to_owned()),
        ];
        let res = self.post(&url, fields, true).await?;
        let (status, retry, body) = receive(res).await?;
        read_refresh_answer(self.def(), status, retry.as_deref(), &body)
    }

    async fn revoke(&self, token: &Secret, kind: TokenKind) -> Result<(), ProviderError> {
        let def = self.def();
        if def.kind == AuthKind::ApiKey {
            return Err(ProviderError::NotSupported);
        }
        let Some(url) = def.revoke_url.clone() else {
            return Err(ProviderError::NotSupported);
        };
        if kind == TokenKind::Refresh && def.quirks.revoke_access_token_only {
            return Err(ProviderError::NotSupported);
        }
        let mut fields = vec![("token", token.expose().to_owned())];
        // Slack's auth.revoke authenticates with the token itself; the
        // others take RFC 7009 client authentication and a type hint.
        let client_auth = !def.quirks.ok_envelope && self.config.client_id.is_some();
        if !def.quirks.ok_envelope {
            fields.push(("token_type_hint", kind.hint().to_owned()));
        }
        let res = self.post(&url, fields, client_auth).await?;
        let (status, retry, body) = receive(res).await?;
        match read_answer(def, status, retry.as_deref(), &body) {
            Ok(_) => Ok(()),
            // RFC 7009 §2.2: an invalid token counts as revoked; a grant-wide
            // revocation already killed the second token of the pair.
            Err(ProviderError::Rejected(code)) if code == "invalid_token" => Ok(()),
            Err(ProviderError::InvalidGrant(_)) if def.quirks.revoke_is_grant_wide => Ok(()),
            // RFC 7009 answers may have an empty body.
            Err(ProviderError::InvalidResponse) if !def.quirks.ok_envelope => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn revocation_is_grant_wide(&self) -> bool {
        self.def().quirks.revoke_is_grant_wide
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins() {
        let slack = ProviderDefinition::builtin("slack").unwrap();
        assert!(slack.quirks.ok_envelope);
        assert_eq!(slack.scope_separator, ",");
        assert_eq!(
            ProviderDefinition::builtin("notion").unwrap().body_format,
            BodyFormat::Json
        );
        assert_eq!(
            ProviderDefinition::builtin("stripe").unwrap().kind,
            AuthKind::ApiKey
        );
        assert!(ProviderDefinition::builtin("acme").is_none());
    }

    #[test]
    fn error_codes_are_classified_and_never_echo_values() {
        let j = serde_json::json!({"error": "invalid_grant"});
        assert!(classify_error_code(error_code(&j)).is_permanent());
        let j = serde_json::json!({"ok": false, "error": "invalid_refresh_token"});
        assert!(classify_error_code(error_code(&j)).is_permanent());
        let j = serde_json::json!({"error": "bad token xoxb-123 given"});
        assert_eq!(error_code(&j), "unknown");
        // A token that looks like a code (lower-case hex, say) is not one.
        let j = serde_json::json!({"error": "9f86d081884c7d659a2feaa0c55ad015"});
        assert_eq!(error_code(&j), "unknown");
        let j = serde_json::json!({"error": "invalid_client"});
        assert_eq!(
            classify_error_code(error_code(&j)),
            ProviderError::Rejected("invalid_client".into())
        );
    }

    #[test]
    fn an_error_answered_with_200_is_that_error() {
        let def = ProviderDefinition::generic("github", None, None);
        let answer = |body: &str| read_refresh_answer(&def, 200, None, body.as_bytes());
        let dead = answer(
            r#"{"error":"bad_refresh_token","error_description":"The refresh token passed is incorrect or expired.","error_uri":"https://docs.example/"}"#,
        );
        assert!(dead.unwrap_err().is_permanent(), "a dead grant");
        assert_eq!(
            answer(r#"{"error":"unsupported_grant_type"}"#).unwrap_err(),
            ProviderError::Rejected("unsupported_grant_type".into())
        );
        // A token echoed as the code is not repeated.
        assert_eq!(
            answer(r#"{"error":"ghr_1234abcd"}"#).unwrap_err(),
            ProviderError::Rejected("unknown".into())
        );
        // With a token, the answer is the token (an `error` beside it is
        // ignored); without either, it is invalid.
        assert!(answer(r#"{"access_token":"ghu_1","error":"x"}"#).is_ok());
        assert_eq!(
            answer(r#"{"token":"ghu_1"}"#).unwrap_err(),
            ProviderError::InvalidResponse
        );
    }

    #[test]
    fn expires_in_forms() {
        use serde_json::json;
        assert_eq!(parse_expires_in(Some(&json!(3600))).unwrap(), Some(3600));
        assert_eq!(parse_expires_in(Some(&json!("3600"))).unwrap(), Some(3600));
        assert_eq!(parse_expires_in(Some(&json!(3599.9))).unwrap(), Some(3599));
        assert_eq!(parse_expires_in(None).unwrap(), None);
        assert_eq!(
            parse_expires_in(Some(&json!("3600.0"))).unwrap(),
            Some(3600)
        );
        assert_eq!(parse_expires_in(Some(&json!(" 60 "))).unwrap(), Some(60));
        assert!(parse_expires_in(Some(&json!(-1))).is_err());
        assert!(parse_expires_in(Some(&json!("-1"))).is_err());
        assert!(parse_expires_in(Some(&json!("NaN"))).is_err());
        assert!(parse_expires_in(Some(&json!("inf"))).is_err());
        assert!(parse_expires_in(Some(&json!("soon"))).is_err());
    }

    #[test]
    fn debug_redacts_the_client_secret() {
        let c = ProviderConfig {
            definition: ProviderDefinition::builtin("slack").unwrap(),
            client_id: Some("123.456".into()),
            client_secret: Some(Secret::from("shh-client-secret")),
        };
        let dbg = format!("{c:?}");
        assert!(dbg.contains("123.456"));
        assert!(!dbg.contains("shh-client-secret"));
    }
}
