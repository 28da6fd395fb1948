//! Request and response bodies.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};
use vault_token_manager::provider::TokenKind;
use vault_token_manager::{DeleteOutcome, IssuedToken, RevocationOutcome, SecretInfo};
use vault_types::{Secret, SecretAddress};

/// Query of `GET /vault/token/...`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenQuery {
    /// Environment; the vault's default when absent.
    #[serde(default)]
    pub(crate) env: Option<String>,
    /// Comma-separated scopes the token must carry.
    #[serde(default)]
    pub(crate) scopes: Option<String>,
    /// Refresh even though the token has not expired.
    #[serde(default)]
    pub(crate) force_refresh: Option<bool>,
}

/// Query of `POST /vault/refresh/...` and `GET /vault/status/...`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScopedQuery {
    /// Environment; the vault's default when absent.
    #[serde(default)]
    pub(crate) env: Option<String>,
    /// Comma-separated scopes the token must carry (a grant with a scope
    /// restriction applies only when they are named).
    #[serde(default)]
    pub(crate) scopes: Option<String>,
}

/// Query naming an environment.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnvQuery {
    /// Environment; the vault's default when absent.
    #[serde(default)]
    pub(crate) env: Option<String>,
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    // Formatting a UTC timestamp in RFC 3339 only fails for years outside
    // 0..=9999, which validated expiries cannot reach.
    t.format(&Rfc3339).unwrap_or_default()
}

/// Metadata of a stored secret (store response): never a token.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SecretInfoBody {
    environment: String,
    project: String,
    platform: String,
    version: u64,
    status: &'static str,
    valid_until: Option<String>,
    scopes: Vec<String>,
    has_refresh_token: bool,
    token_type: String,
    stored_at: String,
    created_at: String,
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    last_refresh_at: Option<String>,
    last_error: Option<String>,
    next_refresh_attempt_at: Option<String>,
}

impl From<SecretInfo> for SecretInfoBody {
    fn from(i: SecretInfo) -> Self {
        Self {
            environment: i.address.environment().to_owned(),
            project: i.address.project().to_owned(),
            platform: i.address.platform().to_owned(),
            version: i.version,
            status: i.status.as_str(),
            valid_until: i.valid_until.map(rfc3339),
            scopes: i.scopes,
            has_refresh_token: i.has_refresh_token,
            token_type: i.token_type,
            stored_at: rfc3339(i.stored_at),
            created_at: rfc3339(i.created_at),
            metadata: i.metadata,
            last_refresh_at: i.last_refresh_at.map(rfc3339),
            last_error: i.last_error,
            next_refresh_attempt_at: i.next_refresh_attempt_at.map(rfc3339),
        }
    }
}

/// `GET /vault/token/...` response.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenBody {
    #[schema(value_type = String)]
    access_token: Secret,
    token_type: String,
    valid_until: Option<String>,
    scopes: Vec<String>,
    version: u64,
    status: &'static str,
    last_refresh_at: Option<String>,
    last_error: Option<String>,
    environment: String,
    project: String,
    platform: String,
}

impl TokenBody {
    pub(crate) fn new(t: IssuedToken, address: &SecretAddress) -> Self {
        Self {
            access_token: t.access_token,
            token_type: t.token_type,
            valid_until: t.valid_until.map(rfc3339),
            scopes: t.scopes,
            version: t.version,
            status: t.status.as_str(),
            last_refresh_at: t.last_refresh_at.map(rfc3339),
            last_error: t.last_error,
            environment: address.environment().to_owned(),
            project: address.project().to_owned(),
            platform: address.platform().to_owned(),
        }
    }
}

/// One token's revocation in a delete response.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RevocationBody {
    token: &'static str,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `DELETE /vault/delete/...` response: one per deleted secret.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeleteBody {
    deleted: bool,
    environment: String,
    project: String,
    platform: String,
    version: u64,
    revocation: Vec<RevocationBody>,
}

impl From<DeleteOutcome> for DeleteBody {
    fn from(d: DeleteOutcome) -> Self {
        Self {
            deleted: true,
            environment: d.address.environment().to_owned(),
            project: d.address.project().to_owned(),
            platform: d.address.platform().to_owned(),
            version: d.version,
            revocation: d
                .revocations
                .into_iter()
                .map(|r| RevocationBody {
                    token: match r.token {
                        TokenKind::Access => "access_token",
                        TokenKind::Refresh => "refresh_token",
                    },
                    outcome: r.outcome.as_str(),
                    error: match r.outcome {
                        RevocationOutcome::Failed(kind) => Some(kind),
                        _ => None,
                    },
                })
                .collect(),
        }
    }
}

/// `DELETE /vault/delete/{project}` response.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeleteProjectBody {
    pub(crate) project: String,
    pub(crate) deleted: Vec<DeleteBody>,
}

/// Query of `GET /vault/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditParams {
    /// Only records of this project.
    #[serde(default)]
    pub(crate) project: Option<String>,
    /// Only records of this platform.
    #[serde(default)]
    pub(crate) platform: Option<String>,
    /// Only records of this environment.
    #[serde(default)]
    pub(crate) environment: Option<String>,
    /// Only records of this engine.
    #[serde(default)]
    pub(crate) engine: Option<String>,
    /// Only this action (store, read, delete, refresh, revoke, status, admin).
    #[serde(default)]
    pub(crate) action: Option<String>,
    /// Records at or after this time (RFC 3339).
    #[serde(default)]
    pub(crate) since: Option<String>,
    /// Records before this time (RFC 3339).
    #[serde(default)]
    pub(crate) until: Option<String>,
    /// Page size, 1–1000 (default 100).
    #[serde(default)]
    pub(crate) limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub(crate) cursor: Option<i64>,
}

/// One usage record in `GET /vault/audit`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditEntryBody {
    id: i64,
    at: String,
    request_id: String,
    engine_id: Option<String>,
    action: &'static str,
    environment: Option<String>,
    project: Option<String>,
    platform: Option<String>,
    outcome: &'static str,
    detail: Option<String>,
}

impl From<vault_token_manager::AuditEntry> for AuditEntryBody {
    fn from(e: vault_token_manager::AuditEntry) -> Self {
        let r = e.record;
        Self {
            id: e.seq,
            at: rfc3339(r.at),
            request_id: r.request_id,
            engine_id: r.engine_id,
            action: r.action.as_str(),
            environment: r.environment,
            project: r.project,
            platform: r.platform,
            outcome: r.outcome.as_str(),
            detail: r.detail,
        }
    }
}

/// `GET /vault/audit` response.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditPageBody {
    pub(crate) records: Vec<AuditEntryBody>,
    /// Pass as `cursor` for the next (older) page; null when there is none.
    /// A page examines at most 100,000 records, so one with few (or no)
    /// records may still have a next page: follow the cursor until null.
    pub(crate) next_cursor: Option<i64>,
}

/// `GET /vault/keys`: ids and counts only, never key material.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyStatusBody {
    provider: String,
    active_key_id: String,
    available_key_ids: Vec<String>,
    usage: Vec<KeyUsageBody>,
    pending_rewrap: u64,
    retirable_key_ids: Vec<String>,
    audit_key_version: u32,
}

#[derive(Debug, Serialize, ToSchema)]
struct KeyUsageBody {
    key_id: String,
    secrets: u64,
    audit_keys: u64,
}

impl From<vault_token_manager::KeyStatus> for KeyStatusBody {
    fn from(s: vault_token_manager::KeyStatus) -> Self {
        Self {
            provider: s.provider,
            active_key_id: s.active,
            available_key_ids: s.available,
            usage: s
                .usage
                .into_iter()
                .map(|u| KeyUsageBody {
                    key_id: u.key_id,
                    secrets: u.secrets,
                    audit_keys: u.audit_keys,
                })
                .collect(),
            pending_rewrap: s.pending_rewrap,
            retirable_key_ids: s.retirable,
            audit_key_version: s.audit_key_version,
        }
    }
}
