//! The token manager.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use vault_encryption_layer::Envelope;
use vault_secret_store::{
    AuditAction, AuditOutcome, AuditPage, AuditQuery, AuditRecord, NewNotification, RefreshState,
    SecretMeta, SecretStatus, SecretStore, SecretWrite, StoredSecret,
};
use vault_types::metrics::{CounterVec, HistogramVec, render_gauge};
use vault_types::{Clock, SecretAddress};
use zeroize::Zeroizing;

use crate::locks::KeyedLocks;
use crate::model::{SealedToken, normalise_scopes};
use crate::notify::{Event, payload};
use crate::provider::{Provider, ProviderRegistry, Refreshed, TokenKind};
use crate::{
    DeleteOutcome, Error, IssuedToken, RequestContext, Result, Revocation, RevocationOutcome,
    SecretInfo, StoreRequest,
};

/// How often a store retries when a concurrent writer replaced the secret
/// between its read and its write. Every lost attempt means another writer
/// committed, so up to this many simultaneous writers of one address all
/// succeed.
const STORE_ATTEMPTS: usize = 8;

/// When to refresh, and how to back off.
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    /// Refresh this long before expiry at most…
    pub margin: Duration,
    /// …or this fraction of the token's lifetime, whichever is smaller.
    pub margin_ratio: f64,
    /// A forced refresh within this long of the last refresh or attempt
    /// answers the current token instead of calling the provider.
    pub force_cooldown: Duration,
    /// First backoff after a failed refresh; doubles per failure.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// How long a process may hold a token's refresh lease (shared through
    /// the store by every replica) before the others take it over, assuming
    /// it died. Longer than a provider call's timeout plus the write.
    pub lease: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            margin: Duration::from_secs(300),
            margin_ratio: 0.1,
            force_cooldown: Duration::from_secs(10),
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(900),
            lease: Duration::from_secs(30),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn SecretStore>,
    pub(crate) envelope: Envelope,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) providers: ProviderRegistry,
    pub(crate) policy: RefreshPolicy,
    pub(crate) notifications: bool,
    pub(crate) locks: KeyedLocks,
    /// Addresses with a background refresh already spawned by a read.
    pub(crate) spawned: Mutex<HashSet<SecretAddress>>,
    /// Refreshed tokens the store could not take (by address, with the
    /// version they replace). The provider may already have invalidated the
    /// old refresh token, so they are kept and written by the next attempt
    /// instead of being lost.
    pub(crate) unpersisted: Mutex<HashMap<SecretAddress, (u64, Refreshed)>>,
    /// Refresh outcomes and provider latency.
    pub(crate) metrics: TokenMetrics,
    /// Whether reads are recorded (always, outside benchmarks).
    pub(crate) audit_reads: bool,
    /// How long a new usage-log key version waits before new records are
    /// made with it (see [`TokenManagerBuilder::audit_key_grace`]).
    pub(crate) audit_key_grace: std::time::Duration,
    /// Who this process is when it holds refresh leases: unique per
    /// process start, so a restarted replica does not inherit a lease.
    pub(crate) holder: String,
    /// Set by [`TokenManager::shutdown`]: no new background refresh starts.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    /// Wakes background loops when stopping.
    pub(crate) stop: tokio::sync::Notify,
    /// Refreshes between taking their lease and the end of their write.
    pub(crate) refreshing: std::sync::atomic::AtomicUsize,
    /// Tokens the background refresher claimed and has not released yet.
    pub(crate) claimed: std::sync::atomic::AtomicUsize,
    /// The runtime the manager was built on (a server's main runtime), for
    /// refreshes spawned from request handlers.
    pub(crate) spawner: Option<tokio::runtime::Handle>,
}

/// The token manager's own metrics.
#[derive(Debug)]
pub(crate) struct TokenMetrics {
    pub(crate) refreshes: CounterVec,
    pub(crate) provider_latency: HistogramVec,
}

impl Default for TokenMetrics {
    fn default() -> Self {
        Self {
            refreshes: CounterVec::new(
                "vault_refreshes_total",
                "Token refreshes by platform and outcome (success or the error kind).",
            ),
            provider_latency: HistogramVec::new(
                "vault_provider_request_duration_seconds",
                "Duration of calls to OAuth providers, by platform and operation.",
            ),
        }
    }
}

/// Stores, fetches, refreshes and deletes credentials; see the crate docs.
///
/// Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct TokenManager {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenManager")
            .field("store", &self.inner.store)
            .field("envelope", &self.inner.envelope)
            .field("providers", &self.inner.providers)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

/// Builds a [`TokenManager`].
#[derive(Debug)]
pub struct TokenManagerBuilder {
    store: Arc<dyn SecretStore>,
    envelope: Envelope,
    clock: Arc<dyn Clock>,
    providers: ProviderRegistry,
    policy: RefreshPolicy,
    notifications: bool,
    audit_reads: bool,
    audit_key_grace: std::time::Duration,
}

impl TokenManagerBuilder {
    /// Skips the usage record of successful reads. Only for measuring what
    /// auditing costs (`examples/audit_overhead.rs`); a vault that serves
    /// tokens without recording them breaks its own guarantees, and the
    /// server never sets this.
    #[doc(hidden)]
    pub fn skip_read_audit_for_benchmarks(mut self) -> Self {
        self.audit_reads = false;
        self
    }

    /// The providers that refresh and revoke tokens, by platform. Without
    /// any, every secret is a manual token: served until it expires.
    pub fn providers(mut self, providers: ProviderRegistry) -> Self {
        self.providers = providers;
        self
    }

    /// When to refresh and how to back off.
    pub fn refresh_policy(mut self, policy: RefreshPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How long a usage-log key version added by a rotation waits before
    /// new records are made with it (default: none). Every process writing
    /// to the same store must have loaded a version before any record or
    /// anchor is signed with it, or its appends fail over a head it cannot
    /// check; several processes should wait longer than each reloads keys
    /// ([`run_key_maintenance`](crate::run_key_maintenance)'s interval).
    pub fn audit_key_grace(mut self, grace: std::time::Duration) -> Self {
        self.audit_key_grace = grace;
        self
    }

    /// Whether to queue notifications (re-authorization needed, recovered)
    /// for delivery by [`TokenManager::run_notifier`].
    pub fn notifications(mut self, enabled: bool) -> Self {
        self.notifications = enabled;
        self
    }

    /// The token manager.
    pub fn build(self) -> TokenManager {
        TokenManager {
            inner: Arc::new(Inner {
                store: self.store,
                envelope: self.envelope,
                clock: self.clock,
                providers: self.providers,
                policy: self.policy,
                notifications: self.notifications,
                locks: KeyedLocks::default(),
                spawned: Mutex::default(),
                unpersisted: Mutex::default(),
                metrics: TokenMetrics::default(),
                audit_reads: self.audit_reads,
                audit_key_grace: self.audit_key_grace,
                holder: format!(
                    "{}-{:016x}",
                    std::process::id(),
                    vault_encryption_layer::random_u64().unwrap_or(0)
                ),
                stopping: std::sync::atomic::AtomicBool::new(false),
                stop: tokio::sync::Notify::new(),
                refreshing: std::sync::atomic::AtomicUsize::new(0),
                claimed: std::sync::atomic::AtomicUsize::new(0),
                spawner: tokio::runtime::Handle::try_current().ok(),
            }),
        }
    }
}

pub(crate) fn audit_record(
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
pub(crate) fn trace_audit(r: &AuditRecord) {
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
        last_refresh_at: s.meta.refresh.last_refresh_at,
        last_error: s.meta.refresh.last_error.clone(),
        next_refresh_attempt_at: s.meta.refresh.next_attempt_at,
    }
}

pub(crate) fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub(crate) fn from_ms(ms: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).map_err(|_| {
        Error::Crypto(vault_encryption_layer::Error::Malformed(
            "expiry out of range",
        ))
    })
}

/// `now + secs`, rounded down to whole seconds: never later than the
/// provider said.
pub(crate) fn expiry(now: OffsetDateTime, secs: u64) -> OffsetDateTime {
    let secs = secs.min(crate::limits::MAX_EXPIRES_IN) as i64;
    (now + time::Duration::seconds(secs))
        .replace_nanosecond(0)
        .unwrap_or(now)
}

impl TokenManager {
    /// A token manager over `store`, sealing with `envelope`, telling time
    /// by `clock`, with no providers (every secret is a manual token).
    pub fn new(store: Arc<dyn SecretStore>, envelope: Envelope, clock: Arc<dyn Clock>) -> Self {
        Self::builder(store, envelope, clock).build()
    }

    /// A builder, to add providers, a refresh policy and notifications.
    pub fn builder(
        store: Arc<dyn SecretStore>,
        envelope: Envelope,
        clock: Arc<dyn Clock>,
    ) -> TokenManagerBuilder {
        TokenManagerBuilder {
            store,
            envelope,
            clock,
            providers: ProviderRegistry::new(),
            policy: RefreshPolicy::default(),
            notifications: false,
            audit_reads: true,
            audit_key_grace: std::time::Duration::ZERO,
        }
    }

    /// The store behind this manager.
    pub fn secret_store(&self) -> &Arc<dyn SecretStore> {
        &self.inner.store
    }

    /// The current time, by the injected clock, in milliseconds (what the
    /// store keeps, so answers match later reads).
    pub(crate) fn now(&self) -> OffsetDateTime {
        let now = self.inner.clock.now();
        from_ms(to_ms(now)).unwrap_or(now)
    }

    /// The provider that can refresh `platform`'s tokens, if any.
    pub(crate) fn refresher(&self, platform: &str) -> Option<&Arc<dyn Provider>> {
        self.inner
            .providers
            .get(platform)
            .filter(|p| p.can_refresh())
    }

    /// When a token should be refreshed: `margin` or `margin_ratio` of its
    /// lifetime before expiry, whichever is smaller; `None` when it will
    /// never be refreshed.
    pub(crate) fn refresh_due(
        &self,
        platform: &str,
        valid_until: Option<OffsetDateTime>,
        lifetime_secs: Option<u64>,
        has_refresh_token: bool,
    ) -> Option<OffsetDateTime> {
        if !has_refresh_token || self.refresher(platform).is_none() {
            return None;
        }
        let valid_until = valid_until?;
        let policy = &self.inner.policy;
        let by_ratio = lifetime_secs
            .map(|l| {
                l.min(crate::limits::MAX_EXPIRES_IN) as f64 * policy.margin_ratio.clamp(0.0, 1.0)
            })
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .unwrap_or(policy.margin);
        let margin = policy.margin.min(by_ratio);
        Some(valid_until - margin)
    }

    /// Exponential backoff with jitter: `base * 2^(failures-1)`, capped at
    /// `cap`, then scaled by a random factor in [0.5, 1].
    pub(crate) fn backoff_delay(&self, failures: u32, cap: Duration) -> Duration {
        let base = self.inner.policy.backoff_base;
        let exp = failures.saturating_sub(1).min(20);
        let delay = base.saturating_mul(1u32 << exp).min(cap);
        let r = vault_encryption_layer::random_u64().unwrap_or(u64::MAX);
        let factor = 0.5 + (r % 1001) as f64 / 2000.0;
        delay.mul_f64(factor)
    }

    /// Appends a usage record (and emits it as a tracing event).
    pub(crate) async fn audit(&self, record: AuditRecord) -> Result<()> {
        // Traced once durable, so the log never shows a record the usage
        // log does not have.
        let traced = record.clone();
        self.inner
            .store
            .append_audit(record)
            .await
            .map_err(Error::AuditUnavailable)?;
        trace_audit(&traced);
        Ok(())
    }

    /// Records a request the token manager did not handle itself: a
    /// refused or failed one that never reached the store (bad credentials,
    /// missing grant, invalid input), or an administrative one.
    ///
    /// `address` is the secret it was about, when known; `detail` a stable
    /// error code.
    pub async fn record_event(
        &self,
        ctx: &RequestContext,
        action: AuditAction,
        address: Option<&SecretAddress>,
        outcome: AuditOutcome,
        detail: &str,
    ) -> Result<()> {
        let record = audit_record(self.now(), ctx, action, address, outcome, Some(detail));
        self.audit(record).await
    }

    pub(crate) async fn record_failure(
        &self,
        ctx: &RequestContext,
        action: AuditAction,
        address: &SecretAddress,
        err: Error,
    ) -> Error {
        let outcome = match err {
            Error::NotFound(_) => AuditOutcome::NotFound,
            Error::InsufficientScope { .. } | Error::RefreshRateLimited { .. } => {
                AuditOutcome::Denied
            }
            _ => AuditOutcome::Failed,
        };
        let record = audit_record(
            self.now(),
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

    pub(crate) fn notification(
        &self,
        event: Event,
        address: &SecretAddress,
        at: OffsetDateTime,
        reason: Option<&str>,
    ) -> Option<NewNotification> {
        self.inner.notifications.then(|| NewNotification {
            payload: payload(event, address, at, reason),
        })
    }

    /// Seals `request` as version `version` of its address.
    async fn sealed_write(
        &self,
        request: &StoreRequest,
        scopes: &[String],
        token_type: &str,
        version: u64,
        now: OffsetDateTime,
    ) -> Result<SecretWrite> {
        let address = &request.address;
        let scopes = scopes.to_vec();
        let token_type = token_type.to_owned();
        let valid_until = request.token.expires_in.map(|secs| expiry(now, secs));
        let has_refresh_token = request.token.refresh_token.is_some();
        let sealed_token = SealedToken {
            access_token: request.token.access_token.clone(),
            refresh_token: request.token.refresh_token.clone(),
            token_type: token_type.clone(),
            valid_until: valid_until.map(to_ms),
            scopes: scopes.clone(),
        };
        let sealed = self.seal(&sealed_token, address, version).await?;
        // The key the value really is sealed under (a rotation may have
        // happened meanwhile), so the rewrap can never miss it.
        let key_id = vault_encryption_layer::sealed_key_id(&sealed)?.to_owned();
        let write = SecretWrite {
            address: address.clone(),
            version,
            sealed,
            key_id,
            meta: SecretMeta {
                status: SecretStatus::Active,
                valid_until,
                scopes: scopes.clone(),
                has_refresh_token,
                token_type: token_type.clone(),
                metadata: request.metadata.clone(),
                refresh: RefreshState {
                    refresh_due: self.refresh_due(
                        address.platform(),
                        valid_until,
                        request.token.expires_in,
                        has_refresh_token,
                    ),
                    ..RefreshState::default()
                },
            },
            at: now,
        };
        Ok(write)
    }

    /// Stores many tokens at addresses that hold nothing yet, in one
    /// transaction with one usage record describing the batch (for loading
    /// benchmarks): all or nothing. Returns how many were stored.
    pub async fn store_new_batch(
        &self,
        ctx: &RequestContext,
        requests: Vec<StoreRequest>,
    ) -> Result<u64> {
        self.put_batch(ctx, requests, false, |_| {}).await
    }

    /// Imports many tokens at addresses that hold nothing yet, in one
    /// transaction with a usage record for each address (so the usage log
    /// shows what was imported where): all or nothing. Calls `sealed(n)`
    /// after the `n`th token is sealed (sealing is the slow part with a key
    /// service), for progress reports. Returns how many were stored.
    pub async fn import_batch(
        &self,
        ctx: &RequestContext,
        requests: Vec<StoreRequest>,
        sealed: impl FnMut(u64) + Send,
    ) -> Result<u64> {
        self.put_batch(ctx, requests, true, sealed).await
    }

    async fn put_batch(
        &self,
        ctx: &RequestContext,
        requests: Vec<StoreRequest>,
        record_each: bool,
        mut sealed: impl FnMut(u64) + Send,
    ) -> Result<u64> {
        let now = self.now();
        let mut writes = Vec::with_capacity(requests.len());
        for request in &requests {
            let (scopes, token_type) = request.validate()?;
            writes.push(
                self.sealed_write(request, &scopes, &token_type, 1, now)
                    .await?,
            );
            sealed(writes.len() as u64);
        }
        let n = writes.len() as u64;
        let records = if record_each {
            writes
                .iter()
                .map(|w| {
                    audit_record(
                        now,
                        ctx,
                        AuditAction::Store,
                        Some(&w.address),
                        AuditOutcome::Success,
                        Some("imported"),
                    )
                })
                .collect()
        } else {
            vec![audit_record(
                now,
                ctx,
                AuditAction::Store,
                None,
                AuditOutcome::Success,
                Some(&format!("batch of {n} new secrets")),
            )]
        };
        self.inner.store.put_new_batch(writes, records).await?;
        Ok(n)
    }

    /// Seals and stores a token, replacing any previous version at the
    /// address. Returns the stored secret's metadata. The change and its
    /// usage record commit together; an invalid request is recorded as
    /// failed and changes nothing. Storing over a secret that needed
    /// re-authorization queues a "recovered" notification.
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
        match self.store_valid(ctx, &request, &scopes, &token_type).await {
            Ok(info) => Ok(info),
            // The store failed: a record of the failure would not be
            // written either, and the store's error is the one to report.
            Err(e @ (Error::Store(_) | Error::AuditUnavailable(_))) => Err(e),
            // Sealing failed (a key service down, say), or other writers
            // kept winning: recorded as failed, like an invalid request.
            Err(e) => Err(self
                .record_failure(ctx, AuditAction::Store, &address, e)
                .await),
        }
    }

    /// Stores a validated request: the attempts of [`TokenManager::store`].
    async fn store_valid(
        &self,
        ctx: &RequestContext,
        request: &StoreRequest,
        scopes: &[String],
        token_type: &str,
    ) -> Result<SecretInfo> {
        let address = request.address.clone();
        for _ in 0..STORE_ATTEMPTS {
            let now = self.now();
            let existing = self.inner.store.get(&address).await?;
            let current = existing.as_ref().map(|s| s.version);
            let recovered = existing
                .as_ref()
                .is_some_and(|s| s.meta.status == SecretStatus::ReauthRequired);
            let created_at = existing.map_or(now, |s| s.created_at);
            let version = current.unwrap_or(0) + 1;
            let write = self
                .sealed_write(request, scopes, token_type, version, now)
                .await?;
            let record = audit_record(
                now,
                ctx,
                AuditAction::Store,
                Some(&address),
                AuditOutcome::Success,
                None,
            );
            let notification = if recovered {
                self.notification(Event::Recovered, &address, now, None)
            } else {
                None
            };
            let stored = StoredSecret {
                address: address.clone(),
                version,
                sealed: Vec::new(),
                key_id: write.key_id.clone(),
                meta: write.meta.clone(),
                created_at,
                updated_at: now,
            };
            match self
                .inner
                .store
                .put(write, current, record.clone(), notification)
                .await
            {
                Ok(()) => {
                    trace_audit(&record);
                    return Ok(info_of(&stored));
                }
                Err(vault_secret_store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict)
    }

    pub(crate) async fn seal(
        &self,
        token: &SealedToken,
        address: &SecretAddress,
        version: u64,
    ) -> Result<Vec<u8>> {
        let plaintext = Zeroizing::new(
            serde_json::to_vec(token)
                .map_err(|_| Error::InvalidInput("token does not serialise".into()))?,
        );
        Ok(self
            .inner
            .envelope
            .seal(&plaintext, &address.aad(version))
            .await?)
    }

    pub(crate) async fn open(&self, stored: &StoredSecret) -> Result<SealedToken> {
        let plaintext = self
            .inner
            .envelope
            .open(&stored.sealed, &stored.address.aad(stored.version))
            .await?;
        serde_json::from_slice(&plaintext).map_err(|_| {
            Error::Crypto(vault_encryption_layer::Error::Malformed(
                "sealed token does not decode",
            ))
        })
    }

    /// Returns a valid access token for `address` carrying every scope in
    /// `required_scopes`, refreshing it first when it has expired.
    ///
    /// A token inside its refresh margin is returned as it is while a
    /// background refresh runs. Fails with [`Error::NotFound`],
    /// [`Error::InsufficientScope`], [`Error::TokenExpired`] (expired and not
    /// refreshable), [`Error::ReauthRequired`] or [`Error::RefreshFailed`];
    /// an expired token is never returned. The read is recorded in the
    /// usage log before the token is returned; when it cannot be, the token
    /// is not returned.
    pub async fn fetch(
        &self,
        ctx: &RequestContext,
        address: &SecretAddress,
        required_scopes: &[String],
    ) -> Result<IssuedToken> {
        self.fetch_with(ctx, address, required_scopes, false).await
    }

    /// [`TokenManager::fetch`], with `force_refresh` to refresh the token
    /// even though it has not expired (the engine saw the provider reject
    /// it). Forced refreshes go through the same single-flight path and are
    /// rate limited per address.
    pub async fn fetch_with(
        &self,
        ctx: &RequestContext,
        address: &SecretAddress,
        required_scopes: &[String],
        force_refresh: bool,
    ) -> Result<IssuedToken> {
        let result = match normalise_scopes(required_scopes, "required scopes") {
            Ok(required) => {
                self.fetch_inner(ctx, address, &required, force_refresh)
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(token) => {
                if self.inner.audit_reads {
                    let record = audit_record(
                        self.now(),
                        ctx,
                        AuditAction::Read,
                        Some(address),
                        AuditOutcome::Success,
                        None,
                    );
                    self.audit(record).await?;
                }
                Ok(token)
            }
            Err(err) => Err(self
                .record_failure(ctx, AuditAction::Read, address, err)
                .await),
        }
    }

    async fn fetch_inner(
        &self,
        ctx: &RequestContext,
        address: &SecretAddress,
        required: &[String],
        force: bool,
    ) -> Result<IssuedToken> {
        let mut stored = self
            .inner
            .store
            .get(address)
            .await?
            .ok_or_else(|| Error::NotFound(address.to_string()))?;
        if stored.meta.status == SecretStatus::ReauthRequired {
            return Err(Error::ReauthRequired {
                platform: address.platform().to_owned(),
            });
        }
        let mut token = self.open(&stored).await?;
        check_scopes(&token, required)?;
        let now = self.now();
        let expired = |t: &SealedToken, now: OffsetDateTime| -> Result<bool> {
            Ok(t.valid_until
                .map(from_ms)
                .transpose()?
                .is_some_and(|v| v <= now))
        };
        if force {
            (stored, token) = self.forced_refresh(ctx, stored, token).await?;
        } else if expired(&token, now)? {
            if token.refresh_token.is_none() || self.refresher(address.platform()).is_none() {
                return Err(Error::TokenExpired {
                    platform: address.platform().to_owned(),
                });
            }
            (stored, token) = self.refresh_locked(ctx, address, stored.version).await?;
        } else if stored.meta.refresh.refresh_due.is_some_and(|d| d <= now)
            && stored.meta.refresh.next_attempt_at.is_none_or(|n| n <= now)
        {
            self.spawn_background_refresh(address, stored.version);
        }
        check_scopes(&token, required)?;
        // Read the clock again: a refresh above may have taken a while.
        if expired(&token, self.now())? {
            return Err(Error::TokenExpired {
                platform: address.platform().to_owned(),
            });
        }
        Ok(IssuedToken {
            valid_until: token.valid_until.map(from_ms).transpose()?,
            access_token: token.access_token,
            token_type: token.token_type,
            scopes: token.scopes,
            version: stored.version,
            status: stored.meta.status,
            last_refresh_at: stored.meta.refresh.last_refresh_at,
            last_error: stored.meta.refresh.last_error,
        })
    }

    /// Metadata of the secret at `address` (no token value), recorded in
    /// the usage log.
    pub async fn status(
        &self,
        ctx: &RequestContext,
        address: &SecretAddress,
    ) -> Result<SecretInfo> {
        let found = self.inner.store.get(address).await;
        match found {
            Ok(Some(s)) => {
                let record = audit_record(
                    self.now(),
                    ctx,
                    AuditAction::Status,
                    Some(address),
                    AuditOutcome::Success,
                    None,
                );
                self.audit(record).await?;
                Ok(info_of(&s))
            }
            Ok(None) => Err(self
                .record_failure(
                    ctx,
                    AuditAction::Status,
                    address,
                    Error::NotFound(address.to_string()),
                )
                .await),
            Err(e) => Err(e.into()),
        }
    }

    /// Metadata of the secret at `address` (no token value, no usage record).
    pub async fn info(&self, address: &SecretAddress) -> Result<SecretInfo> {
        self.inner
            .store
            .get(address)
            .await?
            .map(|s| info_of(&s))
            .ok_or_else(|| Error::NotFound(address.to_string()))
    }

    /// Appends the token manager's metrics in the Prometheus text format:
    /// refreshes by outcome, provider latency, stored secrets by status,
    /// pending notifications and the size of the usage log.
    pub async fn render_metrics(&self, out: &mut String) -> Result<()> {
        self.inner.metrics.refreshes.render(out);
        self.inner.metrics.provider_latency.render(out);
        let stats = self.inner.store.stats().await?;
        let by_status: Vec<_> = [
            SecretStatus::Active,
            SecretStatus::RefreshFailing,
            SecretStatus::ReauthRequired,
        ]
        .into_iter()
        .map(|status| {
            let n = stats
                .secrets_by_status
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| *n);
            (vec![("status", status.as_str().to_owned())], n as f64)
        })
        .collect();
        render_gauge(
            out,
            "vault_secrets",
            "Stored secrets by status.",
            &by_status,
        );
        render_gauge(
            out,
            "vault_notifications_pending",
            "Notifications waiting for delivery.",
            &[(Vec::new(), stats.notifications_pending as f64)],
        );
        render_gauge(
            out,
            "vault_audit_records",
            "Sequence number of the newest usage record.",
            &[(Vec::new(), stats.audit_records as f64)],
        );
        render_gauge(
            out,
            "vault_audit_queue_depth",
            "Usage records waiting for the group commit.",
            &[(Vec::new(), stats.audit_queue as f64)],
        );
        let lag: Vec<_> = stats
            .audit_cursors
            .iter()
            .map(|(sink, seq)| {
                let behind = (stats.audit_records as i64 - seq).max(0);
                (vec![("sink", sink.clone())], behind as f64)
            })
            .collect();
        render_gauge(
            out,
            "vault_audit_forward_lag_records",
            "Usage records a sink has not delivered yet.",
            &lag,
        );
        Ok(())
    }

    /// Checks that the vault can serve: storage takes writes, the master key
    /// seals and opens, and the usage-log writer runs.
    pub async fn readiness(&self) -> Vec<(&'static str, Result<()>)> {
        let database = self.inner.store.ready().await.map_err(Error::from);
        let key = async {
            let sealed = self.inner.envelope.seal(b"ready", b"readiness").await?;
            self.inner.envelope.open(&sealed, b"readiness").await?;
            Ok::<(), Error>(())
        }
        .await;
        let audit_writer = if self.inner.store.audit_writer_alive() {
            Ok(())
        } else {
            Err(Error::AuditUnavailable(vault_secret_store::Error::Invalid(
                "the usage-log writer has stopped",
            )))
        };
        vec![
            ("database", database),
            ("master_key", key),
            ("audit_writer", audit_writer),
        ]
    }

    /// Usage records matching `query`, newest first, and where the next
    /// page starts.
    pub async fn query_audit(&self, query: AuditQuery) -> Result<AuditPage> {
        Ok(self.inner.store.query_audit(query).await?)
    }

    /// Every address of `project`, in every environment.
    pub async fn list_project(&self, project: &str) -> Result<Vec<SecretAddress>> {
        Ok(self.inner.store.list_project(project).await?)
    }

    /// Revokes the secret's tokens at the provider where it supports that,
    /// then deletes the secret (every version) whatever the revocation did:
    /// the caller asked for it to be gone. Each revocation and the delete
    /// are recorded in the usage log.
    pub async fn delete(
        &self,
        ctx: &RequestContext,
        address: &SecretAddress,
    ) -> Result<DeleteOutcome> {
        // No refresh may rotate the tokens between revocation and delete:
        // not in this process (the lock), nor on another replica (the
        // refresh lease, which the delete ends with the row).
        let lock = self.inner.locks.get(address);
        let _guard = lock.lock().await;
        let held = match self.hold_refresh_lease(address).await {
            Ok(held) => held,
            Err(e) => {
                return Err(self
                    .record_failure(ctx, AuditAction::Delete, address, e)
                    .await);
            }
        };
        let result = self.delete_held(ctx, address).await;
        if held && result.is_err() {
            self.release_claim(address).await;
        }
        result
    }

    /// The delete, under the refresh lease.
    async fn delete_held(
        &self,
        ctx: &RequestContext,
        address: &SecretAddress,
    ) -> Result<DeleteOutcome> {
        for _ in 0..STORE_ATTEMPTS {
            let record = audit_record(
                self.now(),
                ctx,
                AuditAction::Delete,
                Some(address),
                AuditOutcome::Success,
                None,
            );
            let Some(stored) = self.inner.store.get(address).await? else {
                let missing = AuditRecord {
                    outcome: AuditOutcome::NotFound,
                    detail: Some("not_found".into()),
                    ..record
                };
                trace_audit(&missing);
                self.inner.store.delete(address, None, missing).await?;
                return Err(Error::NotFound(address.to_string()));
            };
            let revocations = self.revoke_all(ctx, &stored).await;
            // Only the version whose tokens were just revoked is deleted: a
            // token stored meanwhile is revoked too before it goes.
            match self
                .inner
                .store
                .delete(address, Some(stored.version), record.clone())
                .await
            {
                Ok(_) => {
                    trace_audit(&record);
                    // Tokens refreshed here that the store had refused are
                    // live at the provider too.
                    self.discard_unpersisted(address, stored.version, None);
                    return Ok(DeleteOutcome {
                        address: address.clone(),
                        version: stored.version,
                        revocations,
                    });
                }
                Err(vault_secret_store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict)
    }

    async fn revoke_all(&self, ctx: &RequestContext, stored: &StoredSecret) -> Vec<Revocation> {
        let address = &stored.address;
        let provider = self.inner.providers.get(address.platform());
        let token = match self.open(stored).await {
            Ok(t) => t,
            Err(e) => {
                let outcome = RevocationOutcome::Failed(e.code().to_owned());
                self.record_revocation(ctx, address, TokenKind::Access, &outcome)
                    .await;
                return vec![Revocation {
                    token: TokenKind::Access,
                    outcome,
                }];
            }
        };
        let mut pairs = vec![(TokenKind::Access, token.access_token.clone())];
        if let Some(rt) = &token.refresh_token {
            pairs.push((TokenKind::Refresh, rt.clone()));
        }
        let mut out = Vec::with_capacity(pairs.len());
        for (kind, secret) in pairs {
            let started = std::time::Instant::now();
            let outcome = match provider {
                None => RevocationOutcome::NotSupported,
                Some(p) => match p.revoke(&secret, kind).await {
                    Ok(()) => RevocationOutcome::Revoked,
                    Err(crate::provider::ProviderError::NotSupported) => {
                        RevocationOutcome::NotSupported
                    }
                    Err(e) => RevocationOutcome::Failed(e.kind().to_owned()),
                },
            };
            if provider.is_some() {
                self.inner.metrics.provider_latency.observe(
                    &[("platform", address.platform()), ("operation", "revoke")],
                    started.elapsed(),
                );
            }
            self.record_revocation(ctx, address, kind, &outcome).await;
            out.push(Revocation {
                token: kind,
                outcome,
            });
        }
        out
    }

    async fn record_revocation(
        &self,
        ctx: &RequestContext,
        address: &SecretAddress,
        kind: TokenKind,
        outcome: &RevocationOutcome,
    ) {
        let which = match kind {
            TokenKind::Access => "access_token",
            TokenKind::Refresh => "refresh_token",
        };
        let detail = match outcome {
            RevocationOutcome::Failed(k) => format!("{which}:failed:{k}"),
            other => format!("{which}:{}", other.as_str()),
        };
        let result = match outcome {
            RevocationOutcome::Failed(_) => AuditOutcome::Failed,
            _ => AuditOutcome::Success,
        };
        let record = audit_record(
            self.now(),
            ctx,
            AuditAction::Revoke,
            Some(address),
            result,
            Some(&detail),
        );
        if let Err(e) = self.audit(record).await {
            tracing::error!(error = %e, "could not record a revocation");
        }
    }
}

fn check_scopes(token: &SealedToken, required: &[String]) -> Result<()> {
    let missing: Vec<String> = required
        .iter()
        .filter(|s| !token.scopes.contains(s))
        .cloned()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::InsufficientScope { missing })
    }
}

#[cfg(test)]
mod tests;
