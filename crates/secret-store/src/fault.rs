//! A store that fails on purpose, for proving that everything above it
//! copes: [`FaultyStore`] wraps any [`SecretStore`] and, as its
//! [`FaultPlan`] says, delays calls, fails them before they reach the
//! store, or fails them after the store did the work (a reply lost on the
//! way back: the caller sees an error for a change that was made).
//!
//! Injected errors are [`Error::Unavailable`], as a database that went away
//! would give. The plan can change while requests run, so a test can break
//! the store under load and then watch the vault recover.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use vault_types::SecretAddress;

use crate::{
    AuditEntry, AuditKeyRecord, AuditMac, AuditPage, AuditQuery, AuditRecord, AuditVerification,
    EngineRecord, Error, KeyUsage, LeaseOutcome, NewNotification, PendingNotification,
    RefreshState, Result, RewrapItem, Rewrapped, SecretStatus, SecretStore, SecretWrite,
    StoreStats, StoredSecret,
};

/// What a [`FaultyStore`] does to the calls it passes on; shared, and
/// changeable at any time.
#[derive(Debug)]
pub struct FaultPlan {
    fail_before: AtomicU32,
    fail_after: AtomicU32,
    max_delay_us: AtomicU64,
    rng: AtomicU64,
    injected: AtomicU64,
}

impl FaultPlan {
    /// A plan that injects nothing yet; `seed` makes the choices repeatable
    /// for one order of calls.
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            fail_before: AtomicU32::new(0),
            fail_after: AtomicU32::new(0),
            max_delay_us: AtomicU64::new(0),
            rng: AtomicU64::new(seed),
            injected: AtomicU64::new(0),
        })
    }

    /// Fails this many calls in 1000 before they reach the store.
    pub fn fail_before(&self, per_mille: u32) {
        self.fail_before
            .store(per_mille.min(1000), Ordering::Relaxed);
    }

    /// Fails this many calls in 1000 after the store carried them out.
    pub fn fail_after(&self, per_mille: u32) {
        self.fail_after
            .store(per_mille.min(1000), Ordering::Relaxed);
    }

    /// Delays every call by a random time up to `max`.
    pub fn delay(&self, max: Duration) {
        let us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
        self.max_delay_us.store(us, Ordering::Relaxed);
    }

    /// Stops injecting anything.
    pub fn clear(&self) {
        self.fail_before(0);
        self.fail_after(0);
        self.delay(Duration::ZERO);
    }

    /// How many errors were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// The next pseudo-random number (SplitMix64).
    fn next(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn roll(&self, per_mille: &AtomicU32) -> Result<()> {
        let p = per_mille.load(Ordering::Relaxed);
        if p > 0 && (self.next() % 1000) < u64::from(p) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Unavailable("injected fault".into()));
        }
        Ok(())
    }
}

/// A [`SecretStore`] that passes every call to another one, through a
/// [`FaultPlan`].
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn SecretStore>,
    plan: Arc<FaultPlan>,
}

impl FaultyStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn SecretStore>, plan: Arc<FaultPlan>) -> Self {
        Self { inner, plan }
    }

    async fn call<T>(&self, op: impl Future<Output = Result<T>>) -> Result<T> {
        let max = self.plan.max_delay_us.load(Ordering::Relaxed);
        if max > 0 {
            tokio::time::sleep(Duration::from_micros(self.plan.next() % (max + 1))).await;
        }
        self.plan.roll(&self.plan.fail_before)?;
        let out = op.await?;
        self.plan.roll(&self.plan.fail_after)?;
        Ok(out)
    }
}

#[async_trait]
impl SecretStore for FaultyStore {
    async fn get(&self, address: &SecretAddress) -> Result<Option<StoredSecret>> {
        self.call(self.inner.get(address)).await
    }

    async fn put(
        &self,
        write: SecretWrite,
        expected: Option<u64>,
        audit: AuditRecord,
        notification: Option<NewNotification>,
    ) -> Result<()> {
        self.call(self.inner.put(write, expected, audit, notification))
            .await
    }

    async fn put_new_batch(
        &self,
        writes: Vec<SecretWrite>,
        audits: Vec<AuditRecord>,
    ) -> Result<()> {
        self.call(self.inner.put_new_batch(writes, audits)).await
    }

    async fn update_state(
        &self,
        address: &SecretAddress,
        expected: u64,
        status: SecretStatus,
        refresh: RefreshState,
        audit: AuditRecord,
        notification: Option<NewNotification>,
    ) -> Result<()> {
        self.call(
            self.inner
                .update_state(address, expected, status, refresh, audit, notification),
        )
        .await
    }

    async fn delete(
        &self,
        address: &SecretAddress,
        expected: Option<u64>,
        audit: AuditRecord,
    ) -> Result<Option<u64>> {
        self.call(self.inner.delete(address, expected, audit)).await
    }

    async fn due_for_refresh(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<SecretAddress>> {
        self.call(self.inner.due_for_refresh(now, limit)).await
    }

    async fn claim_due_for_refresh(
        &self,
        now: OffsetDateTime,
        limit: u32,
        holder: &str,
        ttl: Duration,
    ) -> Result<Vec<SecretAddress>> {
        self.call(self.inner.claim_due_for_refresh(now, limit, holder, ttl))
            .await
    }

    async fn acquire_refresh_lease(
        &self,
        address: &SecretAddress,
        holder: &str,
        ttl: Duration,
    ) -> Result<LeaseOutcome> {
        self.call(self.inner.acquire_refresh_lease(address, holder, ttl))
            .await
    }

    async fn release_refresh_lease(&self, address: &SecretAddress, holder: &str) -> Result<()> {
        self.call(self.inner.release_refresh_lease(address, holder))
            .await
    }

    async fn acquire_job_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        self.call(self.inner.acquire_job_lease(name, holder, ttl))
            .await
    }

    async fn list_project(&self, project: &str) -> Result<Vec<SecretAddress>> {
        self.call(self.inner.list_project(project)).await
    }

    async fn append_audit(&self, record: AuditRecord) -> Result<()> {
        self.call(self.inner.append_audit(record)).await
    }

    async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditRecord>> {
        self.call(self.inner.recent_audit(limit)).await
    }

    async fn query_audit(&self, query: AuditQuery) -> Result<AuditPage> {
        self.call(self.inner.query_audit(query)).await
    }

    async fn audit_after(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>> {
        self.call(self.inner.audit_after(after, limit)).await
    }

    async fn audit_cursor(&self, name: &str) -> Result<i64> {
        self.call(self.inner.audit_cursor(name)).await
    }

    async fn set_audit_cursor(&self, name: &str, seq: i64) -> Result<()> {
        self.call(self.inner.set_audit_cursor(name, seq)).await
    }

    async fn prune_audit(
        &self,
        before: OffsetDateTime,
        max_seq: i64,
        limit: u32,
    ) -> Result<Option<i64>> {
        self.call(self.inner.prune_audit(before, max_seq, limit))
            .await
    }

    fn chain_audit(&self, mac: Arc<dyn AuditMac>) {
        self.inner.chain_audit(mac);
    }

    async fn verify_audit(&self, mac: Arc<dyn AuditMac>) -> Result<AuditVerification> {
        self.call(self.inner.verify_audit(mac)).await
    }

    async fn pending_notifications(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<PendingNotification>> {
        self.call(self.inner.pending_notifications(now, limit))
            .await
    }

    async fn notification_delivered(&self, id: i64) -> Result<()> {
        self.call(self.inner.notification_delivered(id)).await
    }

    async fn notification_failed(&self, id: i64, retry_at: OffsetDateTime) -> Result<()> {
        self.call(self.inner.notification_failed(id, retry_at))
            .await
    }

    async fn put_engine(&self, engine: EngineRecord) -> Result<()> {
        self.call(self.inner.put_engine(engine)).await
    }

    async fn list_engines(&self) -> Result<Vec<EngineRecord>> {
        self.call(self.inner.list_engines()).await
    }

    async fn key_ids_in_use(&self) -> Result<Vec<String>> {
        self.call(self.inner.key_ids_in_use()).await
    }

    async fn key_usage(&self) -> Result<Vec<KeyUsage>> {
        self.call(self.inner.key_usage()).await
    }

    async fn secrets_to_rewrap(
        &self,
        key_id: &str,
        after: Option<SecretAddress>,
        limit: u32,
    ) -> Result<Vec<RewrapItem>> {
        self.call(self.inner.secrets_to_rewrap(key_id, after, limit))
            .await
    }

    async fn rewrap_secrets(&self, items: Vec<Rewrapped>) -> Result<u64> {
        self.call(self.inner.rewrap_secrets(items)).await
    }

    async fn audit_keys(&self) -> Result<Vec<AuditKeyRecord>> {
        self.call(self.inner.audit_keys()).await
    }

    async fn add_audit_key(&self, key: AuditKeyRecord) -> Result<()> {
        self.call(self.inner.add_audit_key(key)).await
    }

    async fn rewrap_audit_key(
        &self,
        version: u32,
        old: Vec<u8>,
        sealed: Vec<u8>,
        key_id: String,
    ) -> Result<bool> {
        self.call(self.inner.rewrap_audit_key(version, old, sealed, key_id))
            .await
    }

    async fn health(&self) -> Result<()> {
        self.call(self.inner.health()).await
    }

    async fn ready(&self) -> Result<()> {
        self.call(self.inner.ready()).await
    }

    fn audit_writer_alive(&self) -> bool {
        self.inner.audit_writer_alive()
    }

    async fn stats(&self) -> Result<StoreStats> {
        self.call(self.inner.stats()).await
    }
}
