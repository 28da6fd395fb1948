//! What goes into and comes out of the token manager.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use vault_secret_store::SecretStatus;
use vault_types::{Secret, SecretAddress};

use crate::provider::TokenKind;

use crate::{Error, Result};

/// Limits on what a caller may store.
pub mod limits {
    /// Longest access or refresh token, in bytes.
    pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
    /// Most scopes on one token.
    pub const MAX_SCOPES: usize = 256;
    /// Longest scope, in bytes.
    pub const MAX_SCOPE_BYTES: usize = 256;
    /// Longest token type, in bytes.
    pub const MAX_TOKEN_TYPE_BYTES: usize = 32;
    /// Largest `metadata` object, serialised as JSON, in bytes.
    pub const MAX_METADATA_BYTES: usize = 8 * 1024;
    /// Longest accepted `expires_in`: ten years, in seconds.
    pub const MAX_EXPIRES_IN: u64 = 10 * 365 * 24 * 3600;
}

/// Who is asking, for the usage log.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// An id unique to this request.
    pub request_id: String,
    /// The authenticated engine, if any.
    pub engine_id: Option<String>,
}

impl RequestContext {
    /// Builds a context.
    pub fn new(request_id: impl Into<String>, engine_id: Option<String>) -> Self {
        Self {
            request_id: request_id.into(),
            engine_id,
        }
    }
}

/// A token as handed over by the party that ran the OAuth flow (or a
/// manually entered API key).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenData {
    /// The access token (or API key).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub access_token: Secret,
    /// The refresh token, when the provider issued one.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub refresh_token: Option<Secret>,
    /// Lifetime of the access token in seconds; `None`: it does not expire.
    /// A whole number written as a float (`3600.0`) counts, as JSON Schema
    /// says it does.
    #[serde(default, deserialize_with = "whole_seconds")]
    pub expires_in: Option<u64>,
    /// Scopes granted to the token.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Token type; `Bearer` when not given.
    #[serde(default)]
    pub token_type: Option<String>,
}

/// `null`, a non-negative integer, or a float with no fractional part.
fn whole_seconds<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Int(u64),
        Float(f64),
    }
    match Option::<Seconds>::deserialize(d)? {
        None => Ok(None),
        Some(Seconds::Int(n)) => Ok(Some(n)),
        // 2^64 itself rounds to u64::MAX below, so it is refused too.
        Some(Seconds::Float(f))
            if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_615.0).contains(&f) =>
        {
            Ok(Some(f as u64))
        }
        Some(Seconds::Float(_)) => Err(serde::de::Error::custom(
            "expires_in must be a whole number of seconds",
        )),
    }
}

impl TokenData {
    /// A non-expiring token without refresh token or scopes.
    pub fn new(access_token: Secret) -> Self {
        Self {
            access_token,
            refresh_token: None,
            expires_in: None,
            scopes: Vec::new(),
            token_type: None,
        }
    }
}

/// A request to store (create or replace) a secret.
#[derive(Debug, Clone)]
pub struct StoreRequest {
    /// Where to store it.
    pub address: SecretAddress,
    /// The token.
    pub token: TokenData,
    /// Free-form non-secret facts, e.g. a Slack team id.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl StoreRequest {
    /// A request without metadata.
    pub fn new(address: SecretAddress, token: TokenData) -> Self {
        Self {
            address,
            token,
            metadata: None,
        }
    }
}

/// The body of a store request as engines send it (`POST /vault/store`,
/// and one line of `vault-server import`).
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StoreBody {
    /// The storing engine; must match the authenticated one when given.
    #[serde(default)]
    pub engine_id: Option<String>,
    /// Project.
    pub project_id: String,
    /// Platform (any case).
    pub platform: String,
    /// Environment; the vault's default when absent.
    #[serde(default)]
    pub environment: Option<String>,
    /// The token.
    pub token_data: TokenData,
    /// Non-secret facts (a JSON object, at most 8 KiB).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl StoreBody {
    /// The store request at the address the body names, with
    /// `default_environment` when it names none.
    pub fn into_request(
        self,
        default_environment: &str,
    ) -> std::result::Result<StoreRequest, vault_types::IdentifierError> {
        let env = self.environment.as_deref().unwrap_or(default_environment);
        let address = SecretAddress::new(env, &self.project_id, &self.platform)?;
        let mut request = StoreRequest::new(address, self.token_data);
        request.metadata = self.metadata;
        Ok(request)
    }
}

/// Says what is wrong with a JSON document without echoing any of its
/// values (they may be tokens): `not valid JSON`, `missing field `x``,
/// `an unknown field` or `not the expected shape`.
pub fn describe_json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if e.is_syntax() || e.is_eof() {
        "not valid JSON".to_owned()
    } else if msg.starts_with("missing field") {
        // The field name is ours, not the caller's.
        msg.split(" at line")
            .next()
            .unwrap_or("missing field")
            .to_owned()
    } else if msg.starts_with("unknown field") {
        "an unknown field".to_owned()
    } else {
        "not the expected shape".to_owned()
    }
}

/// Metadata about a stored secret: never a token value.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretInfo {
    /// Where it lives.
    pub address: SecretAddress,
    /// Current version.
    pub version: u64,
    /// Life-cycle state.
    pub status: SecretStatus,
    /// When the access token stops working; `None`: never.
    pub valid_until: Option<OffsetDateTime>,
    /// Scopes of the token.
    pub scopes: Vec<String>,
    /// Whether a refresh token is stored.
    pub has_refresh_token: bool,
    /// Token type.
    pub token_type: String,
    /// When this version was stored.
    pub stored_at: OffsetDateTime,
    /// When the first version at this address was stored.
    pub created_at: OffsetDateTime,
    /// Non-secret metadata given at store time.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// When the token was last refreshed by the vault.
    pub last_refresh_at: Option<OffsetDateTime>,
    /// Kind of the last refresh failure, if the last attempt failed.
    pub last_error: Option<String>,
    /// No refresh is attempted before this time (backoff after failures).
    pub next_refresh_attempt_at: Option<OffsetDateTime>,
}

/// An access token handed to an engine.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The access token.
    pub access_token: Secret,
    /// Token type, e.g. `Bearer`.
    pub token_type: String,
    /// When it stops working; `None`: never.
    pub valid_until: Option<OffsetDateTime>,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// The stored version it came from.
    pub version: u64,
    /// Life-cycle state of the secret (`refresh_failing` while a valid
    /// token is served but refreshes fail).
    pub status: SecretStatus,
    /// When the vault last refreshed it.
    pub last_refresh_at: Option<OffsetDateTime>,
    /// Kind of the last refresh failure, if the last attempt failed.
    pub last_error: Option<String>,
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// The address that was deleted.
    pub address: SecretAddress,
    /// The version that was current when it was deleted.
    pub version: u64,
    /// What happened at the provider, per token.
    pub revocations: Vec<Revocation>,
}

/// The outcome of revoking one token at its provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Which token.
    pub token: TokenKind,
    /// What happened.
    pub outcome: RevocationOutcome,
}

/// What revoking a token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevocationOutcome {
    /// The provider revoked it (or already considered it invalid).
    Revoked,
    /// The provider cannot revoke it, or no provider is configured.
    NotSupported,
    /// The revocation failed; the kind of failure (e.g. `timeout`).
    Failed(String),
}

impl RevocationOutcome {
    /// A stable name: `revoked`, `not_supported` or `failed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::NotSupported => "not_supported",
            Self::Failed(_) => "failed",
        }
    }
}

/// The sealed plaintext of a stored token. Holds the authoritative expiry
/// and scopes; the clear-text copies in the store are for indexing only.
#[derive(Serialize, Deserialize)]
pub(crate) struct SealedToken {
    pub(crate) access_token: Secret,
    pub(crate) refresh_token: Option<Secret>,
    pub(crate) token_type: String,
    pub(crate) valid_until: Option<i64>,
    pub(crate) scopes: Vec<String>,
}

fn check_token(field: &str, token: &Secret) -> Result<()> {
    if token.is_empty() {
        return Err(Error::InvalidInput(format!("{field} must not be empty")));
    }
    if token.len() > limits::MAX_TOKEN_BYTES {
        return Err(Error::InvalidInput(format!(
            "{field} must be at most {} bytes",
            limits::MAX_TOKEN_BYTES
        )));
    }
    // RFC 6749 Appendix A.12 and A.17: tokens are printable ASCII (VSCHAR).
    if !token.expose().bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(Error::InvalidInput(format!(
            "{field} must be printable ASCII"
        )));
    }
    Ok(())
}

/// Parses a comma-separated list of scopes (`""` is none), each checked
/// as a stored token's scopes are; duplicates are dropped.
pub fn scope_list(list: &str) -> Result<Vec<String>> {
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let scopes: Vec<String> = list.split(',').map(str::to_owned).collect();
    normalise_scopes(&scopes, "scopes")
}

/// A character of a scope: RFC 6749 §3.3's scope-token (printable ASCII
/// but space, `"` and `\`), without the comma that separates scopes in
/// queries.
fn scope_char(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x5b | 0x5d..=0x7e)
}

/// Validates scopes and removes duplicates, keeping the first occurrence.
pub(crate) fn normalise_scopes(scopes: &[String], field: &str) -> Result<Vec<String>> {
    if scopes.len() > limits::MAX_SCOPES {
        return Err(Error::InvalidInput(format!(
            "at most {} {field} are allowed",
            limits::MAX_SCOPES
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(scopes.len());
    for s in scopes {
        if s.is_empty() || s.len() > limits::MAX_SCOPE_BYTES || !s.bytes().all(scope_char) {
            return Err(Error::InvalidInput(format!(
                "each of {field} must be 1 to {} printable ASCII characters without spaces, \
                 commas, quotes or backslashes",
                limits::MAX_SCOPE_BYTES
            )));
        }
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    Ok(out)
}

impl StoreRequest {
    /// Checks every field as [`TokenManager::store`](crate::TokenManager::store)
    /// would, without storing anything (for dry runs and bulk imports).
    pub fn check(&self) -> Result<()> {
        self.validate().map(|_| ())
    }

    /// Checks every field; returns the normalised scopes and token type.
    pub(crate) fn validate(&self) -> Result<(Vec<String>, String)> {
        let t = &self.token;
        check_token("access_token", &t.access_token)?;
        if let Some(rt) = &t.refresh_token {
            check_token("refresh_token", rt)?;
        }
        if t.expires_in.is_some_and(|e| e > limits::MAX_EXPIRES_IN) {
            return Err(Error::InvalidInput(format!(
                "expires_in must be at most {} seconds",
                limits::MAX_EXPIRES_IN
            )));
        }
        let scopes = normalise_scopes(&t.scopes, "scopes")?;
        let token_type = t.token_type.clone().unwrap_or_else(|| "Bearer".to_owned());
        if token_type.is_empty()
            || token_type.len() > limits::MAX_TOKEN_TYPE_BYTES
            || !token_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(Error::InvalidInput(format!(
                "token_type must be 1 to {} letters, digits, '-', '_' or '.'",
                limits::MAX_TOKEN_TYPE_BYTES
            )));
        }
        if let Some(m) = &self.metadata {
            let size = serde_json::to_vec(m).map(|v| v.len()).unwrap_or(usize::MAX);
            if size > limits::MAX_METADATA_BYTES {
                return Err(Error::InvalidInput(format!(
                    "metadata must be at most {} bytes of JSON",
                    limits::MAX_METADATA_BYTES
                )));
            }
        }
        Ok((scopes, token_type))
    }
}
