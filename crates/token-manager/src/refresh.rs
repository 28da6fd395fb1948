//! Refreshing tokens: single flight per address, persist before use,
//! backoff after failures, `reauth_required` when the grant is dead.

use vault_secret_store::{
    AuditAction, AuditOutcome, LeaseOutcome, RefreshState, SecretMeta, SecretStatus, SecretWrite,
    StoredSecret,
};
use vault_types::{Secret, SecretAddress};

use crate::manager::{audit_record, expiry, from_ms, to_ms, trace_audit};
use crate::model::{SealedToken, normalise_scopes};
use crate::notify::Event;
use crate::provider::{ProviderError, Refreshed, TokenKind};
use crate::{Error, RequestContext, Result, TokenManager};

/// Waiting out a refresh lease another process holds: with growing pauses
/// (5 ms up to 100 ms), until a holder that died has surely lost it (twice
/// the lease, and a second).
struct HeldLease {
    give_up: std::time::Instant,
    delay: std::time::Duration,
}

impl HeldLease {
    fn new(ttl: std::time::Duration) -> Self {
        Self {
            give_up: std::time::Instant::now() + ttl * 2 + std::time::Duration::from_secs(1),
            delay: std::time::Duration::from_millis(5),
        }
    }

    /// Pauses before the next try, or gives up: `refresh_in_progress`.
    async fn wait(&mut self, platform: &str) -> Result<()> {
        if std::time::Instant::now() >= self.give_up {
            return Err(Error::RefreshFailed {
                platform: platform.to_owned(),
                kind: "refresh_in_progress".into(),
            });
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(std::time::Duration::from_millis(100));
        Ok(())
    }
}

/// The error of a refresh whose new access token expired as it arrived.
const EXPIRED_ON_ARRIVAL: &str = "expired_on_arrival";

impl TokenManager {
    /// Refreshes the token at `address` unless someone already replaced the
    /// version the caller saw (`seen_version`).
    ///
    /// This is the single-flight path: callers for one address queue on one
    /// lock; the first calls the provider and commits the new version
    /// before anyone gets it; the others find the version changed and take
    /// the committed result without calling the provider. Returns the
    /// secret as it is afterwards.
    pub(crate) async fn refresh_locked(
        &self,
        ctx: &RequestContext,
        address: &SecretAddress,
        seen_version: u64,
    ) -> Result<(StoredSecret, SealedToken)> {
        let platform = address.platform().to_owned();
        let provider = self
            .refresher(&platform)
            .cloned()
            .ok_or_else(|| Error::NotRefreshable {
                platform: platform.clone(),
            })?;
        let lock = self.inner.locks.get(address);
        let _guard = lock.lock().await;

        let (stored, token) = match self.take_lease(address, seen_version).await? {
            Leased::Done(done) => return Ok(done),
            Leased::Mine(stored, token) => (stored, token),
        };
        let result = self
            .refresh_leased(ctx, &provider, &platform, stored, token)
            .await;
        self.release_claim(address).await;
        result
    }

    /// Checks whether `stored` (still the version the caller saw) may be
    /// refreshed now.
    fn check_refreshable(&self, stored: &StoredSecret, platform: &str) -> Result<()> {
        if stored.meta.status == SecretStatus::ReauthRequired {
            return Err(Error::ReauthRequired {
                platform: platform.to_owned(),
            });
        }
        if stored
            .meta
            .refresh
            .next_attempt_at
            .is_some_and(|n| n > self.now())
        {
            return Err(Error::RefreshFailed {
                platform: platform.to_owned(),
                kind: stored
                    .meta
                    .refresh
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "backoff".into()),
            });
        }
        Ok(())
    }

    /// Takes the refresh lease of `address` in the store, which every
    /// process sharing the store honours: exactly one of them calls the
    /// provider. While another holds it, waits for that holder's committed
    /// result (the version moves on) and returns it instead; a holder that
    /// died lets its lease run out, and then this one takes over.
    async fn take_lease(&self, address: &SecretAddress, seen_version: u64) -> Result<Leased> {
        let platform = address.platform();
        let holder = &self.inner.holder;
        let ttl = self.inner.policy.lease;
        let mut held = HeldLease::new(ttl);
        loop {
            let stored = self.current(address).await?;
            if stored.version != seen_version {
                let token = self.open(&stored).await?;
                return Ok(Leased::Done((stored, token)));
            }
            self.check_refreshable(&stored, platform)?;
            match self
                .inner
                .store
                .acquire_refresh_lease(address, holder, ttl)
                .await?
            {
                LeaseOutcome::Acquired => {
                    // The previous holder may have committed and let go
                    // between the read above and this lease: read again
                    // under the lease before calling the provider.
                    let checked = async {
                        let stored = self.current(address).await?;
                        let token = self.open(&stored).await?;
                        if stored.version != seen_version {
                            return Ok(Leased::Done((stored, token)));
                        }
                        self.check_refreshable(&stored, platform)?;
                        Ok(Leased::Mine(stored, token))
                    }
                    .await;
                    if !matches!(checked, Ok(Leased::Mine(..))) {
                        let _ = self
                            .inner
                            .store
                            .release_refresh_lease(address, holder)
                            .await;
                    }
                    return checked;
                }
                LeaseOutcome::Missing => return Err(Error::NotFound(address.to_string())),
                LeaseOutcome::Held => held.wait(platform).await?,
            }
        }
    }

    /// Takes `address`'s refresh lease for work that must not overlap a
    /// refresh on any replica (a delete), waiting out another holder as a
    /// refresh does. False when there is no such secret.
    pub(crate) async fn hold_refresh_lease(&self, address: &SecretAddress) -> Result<bool> {
        let ttl = self.inner.policy.lease;
        let mut held = HeldLease::new(ttl);
        loop {
            match self
                .inner
                .store
                .acquire_refresh_lease(address, &self.inner.holder, ttl)
                .await?
            {
                LeaseOutcome::Acquired => return Ok(true),
                LeaseOutcome::Missing => return Ok(false),
                LeaseOutcome::Held => held.wait(address.platform()).await?,
            }
        }
    }

    /// The refresh itself, under the lease: stores tokens refreshed earlier
    /// but not yet stored, or calls the provider and commits its answer.
    async fn refresh_leased(
        &self,
        ctx: &RequestContext,
        provider: &std::sync::Arc<dyn crate::provider::Provider>,
        platform: &str,
        stored: StoredSecret,
        token: SealedToken,
    ) -> Result<(StoredSecret, SealedToken)> {
        // Counted from here to the end of the write: a graceful stop waits
        // for it, because the provider may rotate the refresh token the
        // moment it answers.
        let _busy = self.refreshing();
        let address = stored.address.clone();
        let platform = platform.to_owned();
        let stashed = self
            .inner
            .unpersisted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&address);
        if let Some((base, refreshed)) = stashed
            && base == stored.version
        {
            // Tokens refreshed earlier but not yet stored: store them rather
            // than spend the (possibly rotated-away) refresh token.
            return self.persist_refreshed(ctx, stored, token, refreshed).await;
        }
        let Some(refresh_token) = token.refresh_token.clone() else {
            return Err(Error::NotRefreshable { platform });
        };
        // Stopping: no new provider call, whose answer might not be written
        // in time. (Counted before this check, and the stop sets its flag
        // before it counts: one of the two sees the other.)
        if self.is_stopping() {
            return Err(Error::RefreshRateLimited {
                platform,
                retry_after_secs: 1,
            });
        }
        let started = std::time::Instant::now();
        let result = provider.refresh(&refresh_token, &token.scopes).await;
        let metrics = &self.inner.metrics;
        metrics.provider_latency.observe(
            &[("platform", platform.as_str()), ("operation", "refresh")],
            started.elapsed(),
        );
        let outcome = match &result {
            Ok(_) => "success",
            Err(e) => e.kind(),
        };
        metrics
            .refreshes
            .inc(&[("platform", platform.as_str()), ("outcome", outcome)]);
        match result {
            Ok(refreshed) => self.persist_refreshed(ctx, stored, token, refreshed).await,
            Err(e) => self.record_refresh_failure(ctx, stored, e).await,
        }
    }

    async fn current(&self, address: &SecretAddress) -> Result<StoredSecret> {
        self.inner
            .store
            .get(address)
            .await?
            .ok_or_else(|| Error::NotFound(address.to_string()))
    }

    /// Seals and commits the refreshed tokens as a new version before
    /// anyone is given them. A write that fails for another reason than a
    /// concurrent change is retried; if it still fails, the tokens are kept
    /// in memory for the next attempt, because the provider may already
    /// have invalidated the old refresh token.
    async fn persist_refreshed(
        &self,
        ctx: &RequestContext,
        stored: StoredSecret,
        old: SealedToken,
        refreshed: Refreshed,
    ) -> Result<(StoredSecret, SealedToken)> {
        let mut last_error = None;
        for delay_ms in [0u64, 50, 250] {
            if delay_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            }
            match self.write_refreshed(ctx, &stored, &old, &refreshed).await {
                Ok(done) => return Ok(done),
                Err(Error::Store(vault_secret_store::Error::Conflict { .. })) => {
                    // A new token was stored while we refreshed (the user
                    // reconnected): it wins. Ours is revoked, best effort.
                    self.revoke_discarded(&stored.address, &refreshed, old.refresh_token.as_ref());
                    let current = self.current(&stored.address).await?;
                    let token = self.open(&current).await?;
                    return Ok((current, token));
                }
                Err(e) => last_error = Some(e),
            }
        }
        tracing::error!(
            address = %stored.address,
            "refreshed tokens could not be stored; kept in memory for the next attempt"
        );
        self.inner
            .unpersisted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stored.address.clone(), (stored.version, refreshed));
        Err(last_error.unwrap_or(Error::Conflict))
    }

    async fn write_refreshed(
        &self,
        ctx: &RequestContext,
        stored: &StoredSecret,
        old: &SealedToken,
        refreshed: &Refreshed,
    ) -> Result<(StoredSecret, SealedToken)> {
        let address = stored.address.clone();
        let now = self.now();
        let version = stored.version + 1;
        // No expires_in in the answer: assume the previous lifetime rather
        // than a token that never expires (and is never refreshed again).
        let previous_lifetime = old
            .valid_until
            .and_then(|v| from_ms(v).ok())
            // Expiries are rounded down to whole seconds: round back up.
            .map(|v| (v - stored.updated_at).as_seconds_f64().ceil())
            .filter(|s| *s >= 1.0)
            .map(|s| s as u64);
        let lifetime = refreshed.expires_in.or(previous_lifetime);
        let valid_until = lifetime.map(|s| expiry(now, s));
        let scopes = refreshed
            .scopes
            .as_deref()
            .and_then(|s| normalise_scopes(s, "scopes").ok())
            .unwrap_or_else(|| old.scopes.clone());
        let token = SealedToken {
            access_token: refreshed.access_token.clone(),
            // A rotated refresh token replaces the old one, which the
            // provider has invalidated; no refresh token in the answer means
            // the old one stays valid (Google).
            refresh_token: refreshed
                .refresh_token
                .clone()
                .or_else(|| old.refresh_token.clone()),
            token_type: old.token_type.clone(),
            valid_until: valid_until.map(to_ms),
            scopes: scopes.clone(),
        };
        let sealed = self.seal(&token, &address, version).await?;
        let has_refresh_token = token.refresh_token.is_some();
        // A token that expires as it arrives (`expires_in: 0`) is stored
        // (its refresh token may have rotated) but counts as a failed
        // refresh: the next attempt waits out a backoff instead of every
        // fetch calling the provider again.
        let expired_on_arrival = lifetime == Some(0);
        let failed = expired_on_arrival.then(|| {
            let failures = stored.meta.refresh.failure_count.saturating_add(1);
            let delay = self.backoff_delay(failures, self.inner.policy.backoff_max);
            (failures, now + delay)
        });
        let meta = SecretMeta {
            status: if expired_on_arrival {
                SecretStatus::RefreshFailing
            } else {
                SecretStatus::Active
            },
            valid_until,
            scopes,
            has_refresh_token,
            token_type: token.token_type.clone(),
            metadata: stored.meta.metadata.clone(),
            refresh: RefreshState {
                refresh_due: self.refresh_due(
                    address.platform(),
                    valid_until,
                    lifetime,
                    has_refresh_token,
                ),
                last_refresh_at: Some(now),
                failure_count: failed.map_or(0, |(n, _)| n),
                next_attempt_at: failed.map(|(_, at)| at),
                last_error: failed.map(|_| EXPIRED_ON_ARRIVAL.to_owned()),
            },
        };
        // The key the value really is sealed under (a rotation may have
        // happened meanwhile), so the rewrap can never miss it.
        let key_id = vault_encryption_layer::sealed_key_id(&sealed)?.to_owned();
        let write = SecretWrite {
            address: address.clone(),
            version,
            sealed: sealed.clone(),
            key_id: key_id.clone(),
            meta: meta.clone(),
            at: now,
        };
        let record = audit_record(
            now,
            ctx,
            AuditAction::Refresh,
            Some(&address),
            AuditOutcome::Success,
            expired_on_arrival.then_some(EXPIRED_ON_ARRIVAL),
        );
        self.inner
            .store
            .put(write, Some(stored.version), record.clone(), None)
            .await?;
        trace_audit(&record);
        Ok((
            StoredSecret {
                address,
                version,
                sealed,
                key_id,
                meta,
                created_at: stored.created_at,
                updated_at: now,
            },
            token,
        ))
    }

    /// Revokes refreshed tokens that will not be stored (lost to a
    /// concurrent store, or made pointless), in the background and best
    /// effort: they must not stay valid unused. The refresh token only if
    /// it is not `kept` (one that did not rotate).
    fn revoke_discarded(
        &self,
        address: &SecretAddress,
        refreshed: &Refreshed,
        kept: Option<&Secret>,
    ) {
        let Some(provider) = self.inner.providers.get(address.platform()).cloned() else {
            return;
        };
        if provider.revocation_is_grant_wide() {
            // Revoking ours would end the grant the stored token may share.
            tracing::debug!(address = %address, "a discarded token is left to expire (grant-wide revocation)");
            return;
        }
        let mut tokens = vec![(TokenKind::Access, refreshed.access_token.clone())];
        if let Some(rt) = &refreshed.refresh_token
            && kept != Some(rt)
        {
            tokens.push((TokenKind::Refresh, rt.clone()));
        }
        let address = address.clone();
        tokio::spawn(async move {
            for (kind, token) in tokens {
                if let Err(e) = provider.revoke(&token, kind).await {
                    tracing::debug!(address = %address, error = e.kind(), "could not revoke a discarded token");
                }
            }
        });
    }

    async fn record_refresh_failure(
        &self,
        ctx: &RequestContext,
        stored: StoredSecret,
        error: ProviderError,
    ) -> Result<(StoredSecret, SealedToken)> {
        let address = stored.address.clone();
        let platform = address.platform().to_owned();
        let kind = error.kind();
        let now = self.now();
        let failures = stored.meta.refresh.failure_count.saturating_add(1);
        let (status, refresh, notification, err) = if error.is_permanent() {
            // Another replica, or the Integration Manager, may have replaced
            // the secret a moment ago: a dead old grant says nothing about a
            // new one.
            let current = self.current(&address).await?;
            if current.version != stored.version {
                let token = self.open(&current).await?;
                return Ok((current, token));
            }
            (
                SecretStatus::ReauthRequired,
                RefreshState {
                    refresh_due: None,
                    last_refresh_at: stored.meta.refresh.last_refresh_at,
                    last_error: Some(kind.to_owned()),
                    failure_count: failures,
                    next_attempt_at: None,
                },
                self.notification(Event::ReauthRequired, &address, now, Some(kind)),
                Error::ReauthRequired {
                    platform: platform.clone(),
                },
            )
        } else {
            let mut delay = self.backoff_delay(failures, self.inner.policy.backoff_max);
            if let ProviderError::RateLimited {
                retry_after: Some(after),
            } = &error
            {
                delay = delay.max(*after);
            }
            let retry_at = now + delay;
            (
                SecretStatus::RefreshFailing,
                RefreshState {
                    refresh_due: stored.meta.refresh.refresh_due,
                    last_refresh_at: stored.meta.refresh.last_refresh_at,
                    last_error: Some(kind.to_owned()),
                    failure_count: failures,
                    next_attempt_at: Some(retry_at),
                },
                None,
                Error::RefreshFailed {
                    platform: platform.clone(),
                    kind: kind.to_owned(),
                },
            )
        };
        tracing::warn!(
            address = %address,
            error_kind = kind,
            failures,
            status = status.as_str(),
            "token refresh failed"
        );
        let record = audit_record(
            now,
            ctx,
            AuditAction::Refresh,
            Some(&address),
            AuditOutcome::Failed,
            Some(kind),
        );
        trace_audit(&record);
        match self
            .inner
            .store
            .update_state(
                &address,
                stored.version,
                status,
                refresh,
                record,
                notification,
            )
            .await
        {
            Ok(()) => Err(err),
            Err(vault_secret_store::Error::Conflict { .. }) => {
                let current = self.current(&address).await?;
                let token = self.open(&current).await?;
                Ok((current, token))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A refresh asked for by an engine whose token was rejected. Rate
    /// limited per address: within the cooldown after the last refresh the
    /// current token is answered; during backoff after failures, an error.
    pub(crate) async fn forced_refresh(
        &self,
        ctx: &RequestContext,
        stored: StoredSecret,
        token: SealedToken,
    ) -> Result<(StoredSecret, SealedToken)> {
        let platform = stored.address.platform().to_owned();
        if token.refresh_token.is_none() || self.refresher(&platform).is_none() {
            return Err(Error::NotRefreshable { platform });
        }
        let now = self.now();
        let cooldown = self.inner.policy.force_cooldown;
        let refresh = &stored.meta.refresh;
        if let Some(next) = refresh.next_attempt_at.filter(|n| *n > now) {
            return Err(Error::RefreshRateLimited {
                platform,
                retry_after_secs: seconds_until(now, next),
            });
        }
        if refresh.last_refresh_at.is_some_and(|t| now - t < cooldown) {
            return Ok((stored, token));
        }
        self.refresh_locked(ctx, &stored.address.clone(), stored.version)
            .await
    }

    /// Starts a refresh in the background (the token is still valid but in
    /// its refresh margin); at most one spawned per address at a time, none
    /// once the manager is stopping.
    pub(crate) fn spawn_background_refresh(&self, address: &SecretAddress, seen_version: u64) {
        if self.is_stopping() {
            return;
        }
        let fresh = self
            .inner
            .spawned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address.clone());
        if !fresh {
            return;
        }
        let this = self.clone();
        let address = address.clone();
        let task = async move {
            // Forgets the address even if the refresh panics.
            let _forget = OnDrop(Some(|| {
                this.inner
                    .spawned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&address);
            }));
            let ctx = background_context();
            if let Err(e) = this.refresh_locked(&ctx, &address, seen_version).await {
                tracing::debug!(address = %address, error = %e, "background refresh did not succeed");
            }
        };
        // On the runtime the manager was built on, not the caller's: a
        // server's HTTP workers each run their own, which ends (cancelling
        // what it runs) when the worker stops.
        match &self.inner.spawner {
            Some(runtime) => drop(runtime.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    /// Refreshes `address` if its refresh is (still) due; for the
    /// background refresher.
    pub(crate) async fn refresh_if_due(&self, address: &SecretAddress) {
        let Ok(Some(stored)) = self.inner.store.get(address).await else {
            return;
        };
        let now = self.now();
        let due = stored.meta.refresh.refresh_due.is_some_and(|d| d <= now)
            && stored.meta.status != SecretStatus::ReauthRequired
            && stored.meta.refresh.next_attempt_at.is_none_or(|n| n <= now);
        if !due {
            return;
        }
        let ctx = background_context();
        match self.refresh_locked(&ctx, address, stored.version).await {
            Ok(_) => {}
            // Recorded already, with the backoff or the reauth state.
            Err(
                Error::RefreshFailed { .. }
                | Error::ReauthRequired { .. }
                | Error::RefreshRateLimited { .. }
                | Error::NotFound(_),
            ) => {}
            // Nothing can refresh it (provider removed, no refresh token):
            // stop listing it as due.
            Err(Error::NotRefreshable { .. }) => {
                let refresh = RefreshState {
                    refresh_due: None,
                    ..stored.meta.refresh.clone()
                };
                self.park(&ctx, &stored, refresh, "not_refreshable").await;
            }
            // Refreshed tokens wait in memory for the store: no backoff,
            // the next round writes them.
            Err(_) if self.has_unpersisted(address) => {}
            // Anything else (a key or storage failure before the provider
            // was asked): back off like a failed refresh, so a stuck row
            // cannot keep others from their turn.
            Err(e) => {
                tracing::warn!(address = %address, error = %e, "scheduled refresh failed before reaching the provider");
                let failures = stored.meta.refresh.failure_count.saturating_add(1);
                let delay = self.backoff_delay(failures, self.inner.policy.backoff_max);
                let refresh = RefreshState {
                    failure_count: failures,
                    last_error: Some(e.code().to_owned()),
                    next_attempt_at: Some(now + delay),
                    ..stored.meta.refresh.clone()
                };
                self.park(&ctx, &stored, refresh, e.code()).await;
            }
        }
    }

    /// Whether tokens refreshed for `address` are waiting in memory for
    /// the store.
    pub(crate) fn has_unpersisted(&self, address: &SecretAddress) -> bool {
        self.inner
            .unpersisted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(address)
    }

    /// Tries again to store tokens refreshed earlier that the store
    /// refused, renewing their refresh leases as it does. Tokens that a
    /// newer version (the user reconnected) or a delete made pointless are
    /// dropped and revoked, best effort.
    pub(crate) async fn retry_unpersisted(&self) {
        let waiting: Vec<(SecretAddress, u64)> = self
            .inner
            .unpersisted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(address, (base, _))| (address.clone(), *base))
            .collect();
        let ctx = background_context();
        for (address, base) in waiting {
            match self.refresh_locked(&ctx, &address, base).await {
                // Stored: nothing waits any more, and this does nothing.
                // Or a newer version won: the waiting tokens go.
                Ok((_, current)) => self.discard_unpersisted(&address, base, Some(&current)),
                Err(Error::NotFound(_) | Error::ReauthRequired { .. }) => {
                    self.discard_unpersisted(&address, base, None);
                }
                Err(e) => {
                    tracing::warn!(address = %address, error = %e, "refreshed tokens still cannot be stored");
                }
            }
        }
    }

    /// Drops the tokens refreshed on `base` that wait for `address`, and
    /// revokes them unless they are what `current` holds.
    pub(crate) fn discard_unpersisted(
        &self,
        address: &SecretAddress,
        base: u64,
        current: Option<&SealedToken>,
    ) {
        let mut waiting = self
            .inner
            .unpersisted
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if waiting.get(address).is_some_and(|(b, _)| *b == base)
            && let Some((_, refreshed)) = waiting.remove(address)
        {
            drop(waiting);
            if current.is_none_or(|c| c.access_token != refreshed.access_token) {
                let kept = current.and_then(|c| c.refresh_token.as_ref());
                self.revoke_discarded(address, &refreshed, kept);
            }
        }
    }

    /// Claims up to `limit` tokens due at `now` for this process (their
    /// refresh leases), skipping those another process holds.
    pub(crate) async fn claim_due(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<SecretAddress>> {
        Ok(self
            .inner
            .store
            .claim_due_for_refresh(now, limit, &self.inner.holder, self.inner.policy.lease)
            .await?)
    }

    /// Gives back this process's refresh lease of `address` (after a
    /// refresh, or a claim no refresh used); a no-op when it was already
    /// given back. Kept while refreshed tokens wait in memory for the
    /// store (the background refresher renews it while it retries the
    /// write), so no other replica spends the old refresh token.
    pub(crate) async fn release_claim(&self, address: &SecretAddress) {
        if self.has_unpersisted(address) {
            return;
        }
        if let Err(e) = self
            .inner
            .store
            .release_refresh_lease(address, &self.inner.holder)
            .await
        {
            // It runs out on its own; others wait until then.
            tracing::warn!(address = %address, error = %e, "could not give a refresh lease back");
        }
    }

    /// Writes refresh bookkeeping after a background attempt that did not
    /// reach the provider.
    async fn park(
        &self,
        ctx: &RequestContext,
        stored: &StoredSecret,
        refresh: RefreshState,
        why: &str,
    ) {
        let record = audit_record(
            self.now(),
            ctx,
            AuditAction::Refresh,
            Some(&stored.address),
            AuditOutcome::Failed,
            Some(why),
        );
        let result = self
            .inner
            .store
            .update_state(
                &stored.address,
                stored.version,
                stored.meta.status,
                refresh,
                record,
                None,
            )
            .await;
        if let Err(e) = result {
            tracing::warn!(address = %stored.address, error = %e, "could not record a refresh failure");
        }
    }

    /// Refreshes every token that is due now, with at most `concurrency`
    /// in flight, and returns how many were due. One pass of the
    /// background refresher, without its jitter or schedule (for tools,
    /// tests and benchmarks).
    pub async fn refresh_due_now(&self, concurrency: usize, batch: u32) -> Result<usize> {
        let due = self.claim_due(self.now(), batch).await?;
        let count = due.len();
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = Vec::with_capacity(count);
        for address in due {
            let this = self.clone();
            let permits = std::sync::Arc::clone(&permits);
            tasks.push(tokio::spawn(async move {
                if let Ok(_p) = permits.acquire().await {
                    this.refresh_if_due(&address).await;
                }
                this.release_claim(&address).await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok(count)
    }
}

/// What waiting for a refresh lease came to.
enum Leased {
    /// Another process refreshed meanwhile: its committed result.
    Done((StoredSecret, SealedToken)),
    /// This process holds the lease; the secret as read under it.
    Mine(StoredSecret, SealedToken),
}

/// Runs a closure when dropped (also while unwinding from a panic).
impl TokenManager {
    /// Counts a refresh in progress until the guard is dropped.
    fn refreshing(&self) -> OnDrop<impl FnOnce() + '_> {
        use std::sync::atomic::Ordering;
        self.inner.refreshing.fetch_add(1, Ordering::SeqCst);
        OnDrop(Some(move || {
            self.inner.refreshing.fetch_sub(1, Ordering::SeqCst);
        }))
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.inner
            .stopping
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops gracefully: no new background refresh starts, refreshes whose
    /// provider call is under way are waited for (at most `wait`) so their
    /// tokens are written, tokens the background refresher claimed but had
    /// not started give their leases back, and tokens refreshed earlier that
    /// the store refused get one more try. Returns how many refreshed tokens are
    /// still not stored (logged as an error: with providers that rotate
    /// refresh tokens, those connections may need re-authorization).
    ///
    /// Call it when the server has stopped taking requests and before the
    /// runtime ends; background tasks end at their next round.
    pub async fn shutdown(&self, wait: std::time::Duration) -> usize {
        use std::sync::atomic::Ordering;
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.stop.notify_waiters();
        let until = std::time::Instant::now() + wait;
        while self.inner.refreshing.load(Ordering::SeqCst) > 0
            || self.inner.claimed.load(Ordering::SeqCst) > 0
        {
            if std::time::Instant::now() >= until {
                tracing::warn!(
                    in_flight = self.inner.refreshing.load(Ordering::SeqCst),
                    "stopping with refreshes still waiting for their provider"
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.retry_unpersisted().await;
        let left = self
            .inner
            .unpersisted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        if left > 0 {
            tracing::error!(
                count = left,
                "refreshed tokens could not be stored before stopping; their connections may \
                 need re-authorization"
            );
        }
        left
    }
}

pub(crate) struct OnDrop<F: FnOnce()>(pub(crate) Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// The usage-log identity of refreshes the vault starts itself.
fn background_context() -> RequestContext {
    let id = vault_encryption_layer::random_u64().unwrap_or(0);
    RequestContext::new(format!("bg-{id:016x}"), Some("vault".into()))
}

/// Whole seconds from `now` until `at`, rounded up, at least 1 (for a
/// `Retry-After`).
fn seconds_until(now: time::OffsetDateTime, at: time::OffsetDateTime) -> u64 {
    let ms = u64::try_from((at - now).whole_milliseconds()).unwrap_or(0);
    ms.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests;
