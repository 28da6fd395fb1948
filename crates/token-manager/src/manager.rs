//! The token manager.

use std::fmt;
use std::sync::Arc;

use time::OffsetDateTime;
use vault_encryption_layer::Envelope;
use vault_secret_store::{
    AuditAction, AuditOutcome, AuditRecord, SecretMeta, SecretStatus, SecretStore, SecretWrite,
    StoredSecret,
};
use vault_types::{Clock, SecretAddress};
use zeroize::Zeroizing;

use crate::model::{SealedToken, normalise_scopes};
use crate::{DeleteOutcome, Error, IssuedToken, RequestContext, Result, SecretInfo, StoreRequest};

/// How often a store retries when a concurrent writer replaced the secret
/// between its read and its write. Every lost attempt means another writer
/// committed, so up to this many simultaneous writers of one address all
/// succeed.
const STORE_ATTEMPTS: usize = 8;

/// Stores, fetches and deletes credentials; see the crate docs.
#[derive(Clone)]
pub struct TokenManager {
    store: Arc<dyn SecretStore>,
    envelope: Envelope,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenManager")
            .field("store", &self.store)
            .field("envelope", &self.envelope)
            .finish_non_exhaustive()
    }
}

fn audit_record(
    at: OffsetDateTime,
    ctx: &RequestContext,
    action: AuditAction,
    address: Option<&SecretAddress>,
    outcome: AuditOutcome,
    detail: Option<&str>,
) -> AuditRecord {
    AuditRecord {
        at,
        request_id: ctx.request_id.clone(),
        engine_id: ctx.engine_id.clone(),
        action,
        environment: address.map(|a| a.environment().to_owned()),
        project: address.map(|a| a.project().to_owned()),
        platform: address.map(|a| a.platform().to_owned()),
        outcome,
        detail: detail.map(str::to_owned),
    }
}

/// Emits the usage record as a tracing event too (it holds no secret).
fn trace_audit(r: &AuditRecord) {
    tracing::info!(
        target: "vault::audit",
        request_id = %r.request_id,
        engine_id = r.engine_id.as_deref().unwrap_or("-"),
        action = r.action.as_str(),
        environment = r.environment.as_deref().unwrap_or("-"),
        project = r.project.as_deref().unwrap_or("-"),
        platform = r.platform.as_deref().unwrap_or("-"),
        outcome = r.outcome.as_str(),
        detail = r.detail.as_deref().unwrap_or("-"),
        "audit"
    );
}

fn info_of(s: &StoredSecret) -> SecretInfo {
    SecretInfo {
        address: s.address.clone(),
        version: s.version,
        status: s.meta.status,
        valid_until: s.meta.valid_until,
        scopes: s.meta.scopes.clone(),
        has_refresh_token: s.meta.has_refresh_token,
        token_type: s.meta.token_type.clone(),
        stored_at: s.updated_at,
        created_at: s.created_at,
        metadata: s.meta.metadata.clone(),
    }
}

fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_ms(ms: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).map_err(|_| {
        Error::Crypto(vault_encryption_layer::Error::Malformed(
            "expiry out of range",
        ))
    })
}

impl TokenManager {
    /// A token manager over `store`, sealing with `envelope`, telling time by `clock`.
    pub fn new(store: Arc<dyn SecretStore>, envelope: Envelope, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            envelope,
            clock,
        }
    }

    /// The store behind this manager.
    pub fn secret_store(&self) -> &Arc<dyn SecretStore> {
        &self.store
    }

    /// Appends a usage record (and emits it as a tracing event).
    async fn audit(&self, record: AuditRecord) -> Result<()> {
        trace_audit(&record);
        self.store
            .append_audit(record)
            .await
            .map_err(Error::AuditUnavailable)
    }

    /// Records a refused or failed request that never reached the store
    /// (bad credentials, missing grant, invalid input).
    ///
    /// `address` is the secret it was about, when known; `detail` a stable
    /// error code.
    pub async fn record_refusal(
        &self,
        ctx: &RequestContext,
        action: AuditAction,
        address: Option<&SecretAddress>,
        outcome: AuditOutcome,
        detail: &str,
    ) -> Result<()> {
        let record = audit_record(
            self.clock.now(),
            ctx,
            action,
            address,
            outcome,
            Some(detail),
        );
        self.audit(record).await
    }

    async fn record_failure(
        &self,
        ctx: &RequestContext,
        action: AuditAction,
        address: &SecretAddress,
        err: Error,
    ) -> Error {
        let outcome = match err {
            Error::NotFound(_) => AuditOutcome::NotFound,
            Error::InsufficientScope { .. } => AuditOutcome::Denied,
            _ => AuditOutcome::Failed,
        };
        let record = audit_record(
            self.clock.now(),
            ctx,
            action,
            Some(address),
            outcome,
            Some(err.code()),
        );
        match self.audit(record).await {
            Ok(()) => err,
            // Nothing is served either way; the audit failure is the one to report.
            Err(audit_err) => audit_err,
        }
    }

    /// Seals and stores a token, replacing any previous version at the
    /// address. Returns the stored secret's metadata. The change and its
    /// usage record commit together; an invalid request is recorded as
    /// failed and changes nothing.
    pub async fn store(&self, ctx: &RequestContext, request: StoreRequest) -> Result<SecretInfo> {
        let address = request.address.clone();
        let (scopes, token_type) = match request.validate() {
            Ok(v) => v,
            Err(e) => {
                return Err(self
                    .record_failure(ctx, AuditAction::Store, &address, e)
                    .await);
            }
        };
        for _ in 0..STORE_ATTEMPTS {
            // Millisecond precision: what the store keeps, so the answer
            // matches later reads.
            let now = from_ms(to_ms(self.clock.now()))?;
            let existing = self.store.get(&address).await?;
            let current = existing.as_ref().map(|s| s.version);
            let created_at = existing.map_or(now, |s| s.created_at);
            let version = current.unwrap_or(0) + 1;
            let valid_until = request.token.expires_in.map(|secs| {
                // Whole seconds, rounded down: never later than the provider said.
                (now + time::Duration::seconds(secs as i64))
                    .replace_nanosecond(0)
                    .unwrap_or(now)
            });
            let sealed_token = SealedToken {
                access_token: request.token.access_token.clone(),
                refresh_token: request.token.refresh_token.clone(),
                token_type: token_type.clone(),
                valid_until: valid_until.map(to_ms),
                scopes: scopes.clone(),
            };
            let plaintext = Zeroizing::new(
                serde_json::to_vec(&sealed_token)
                    .map_err(|_| Error::InvalidInput("token does not serialise".into()))?,
            );
            let sealed = self
                .envelope
                .seal(&plaintext, &address.aad(version))
                .await?;
            let write = SecretWrite {
                address: address.clone(),
                version,
                sealed,
                key_id: self.envelope.key_provider().active_key_id().to_owned(),
                meta: SecretMeta {
                    status: SecretStatus::Active,
                    valid_until,
                    scopes: scopes.clone(),
                    has_refresh_token: request.token.refresh_token.is_some(),
                    token_type: token_type.clone(),
                    metadata: request.metadata.clone(),
                },
                at: now,
            };
            let record = audit_record(
                now,
                ctx,
                AuditAction::Store,
                Some(&address),
                AuditOutcome::Success,
                None,
            );
            let meta = write.meta.clone();
            match self.store.put(write, current, record.clone()).await {
                Ok(()) => {
                    trace_audit(&record);
                    return Ok(SecretInfo {
                        address,
                        version,
                        status: meta.status,
                        valid_until: meta.valid_until,
                        scopes: meta.scopes,
                        has_refresh_token: meta.has_refresh_token,
                        token_type: meta.token_type,
                        stored_at: now,
                        created_at,
                        metadata: meta.metadata,
                    });
                }
                Err(vault_secret_store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict)
    }

    /// Returns a valid access token for `address` carrying every scope in
    /// `required_scopes`.
    ///
    /// Fails with [`Error::NotFound`], [`Error::InsufficientScope`],
    /// [`Error::TokenExpired`] or [`Error::ReauthRequired`]; an expired
    /// token is never returned. The read is recorded in the usage log
    /// before the token is returned; when it cannot be, the token is not
    /// returned.
    pub async fn fetch(
        &self,
        ctx: &RequestContext,
        address: &SecretAddress,
        required_scopes: &[String],
    ) -> Result<IssuedToken> {
        let result = match normalise_scopes(required_scopes, "required scopes") {
            Ok(required) => self.fetch_inner(address, &required).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(token) => {
                let record = audit_record(
                    self.clock.now(),
                    ctx,
                    AuditAction::Read,
                    Some(address),
                    AuditOutcome::Success,
                    None,
                );
                self.audit(record).await?;
                Ok(token)
            }
            Err(err) => Err(self
                .record_failure(ctx, AuditAction::Read, address, err)
                .await),
        }
    }

    async fn fetch_inner(
        &self,
        address: &SecretAddress,
        required: &[String],
    ) -> Result<IssuedToken> {
        let stored = self
            .store
            .get(address)
            .await?
            .ok_or_else(|| Error::NotFound(address.to_string()))?;
        if stored.meta.status == SecretStatus::ReauthRequired {
            return Err(Error::ReauthRequired {
                platform: address.platform().to_owned(),
            });
        }
        let token = self.open(&stored).await?;
        let missing: Vec<String> = required
            .iter()
            .filter(|s| !token.scopes.contains(s))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(Error::InsufficientScope { missing });
        }
        let valid_until = token.valid_until.map(from_ms).transpose()?;
        if valid_until.is_some_and(|t| t <= self.clock.now()) {
            // The refresh seam: an expired token is refreshed here once the
            // vault knows how to refresh its platform. Until then it is an
            // error, never an expired token served as valid.
            return Err(Error::TokenExpired {
                platform: address.platform().to_owned(),
            });
        }
        Ok(IssuedToken {
            access_token: token.access_token,
            token_type: token.token_type,
            valid_until,
            scopes: token.scopes,
            version: stored.version,
        })
    }

    async fn open(&self, stored: &StoredSecret) -> Result<SealedToken> {
        let plaintext = self
            .envelope
            .open(&stored.sealed, &stored.address.aad(stored.version))
            .await?;
        serde_json::from_slice(&plaintext).map_err(|_| {
            Error::Crypto(vault_encryption_layer::Error::Malformed(
                "sealed token does not decode",
            ))
        })
    }

    /// Metadata of the secret at `address` (no token value, no usage record).
    pub async fn info(&self, address: &SecretAddress) -> Result<SecretInfo> {
        self.store
            .get(address)
            .await?
            .map(|s| info_of(&s))
            .ok_or_else(|| Error::NotFound(address.to_string()))
    }

    /// Deletes the secret at `address`, every version of it.
    pub async fn delete(
        &self,
        ctx: &RequestContext,
        address: &SecretAddress,
    ) -> Result<DeleteOutcome> {
        let record = audit_record(
            self.clock.now(),
            ctx,
            AuditAction::Delete,
            Some(address),
            AuditOutcome::Success,
            None,
        );
        let deleted = self.store.delete(address, record.clone()).await?;
        match deleted {
            Some(version) => {
                trace_audit(&record);
                Ok(DeleteOutcome {
                    address: address.clone(),
                    version,
                })
            }
            None => {
                trace_audit(&AuditRecord {
                    outcome: AuditOutcome::NotFound,
                    ..record
                });
                Err(Error::NotFound(address.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests;
