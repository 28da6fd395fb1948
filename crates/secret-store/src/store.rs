//! The storage seam.

use std::fmt::Debug;

use async_trait::async_trait;
use time::OffsetDateTime;
use vault_types::SecretAddress;

use crate::{
    AuditEntry, AuditKeyRecord, AuditMac, AuditPage, AuditQuery, AuditRecord, AuditVerification,
    EngineRecord, KeyUsage, LeaseOutcome, NewNotification, PendingNotification, RefreshState,
    Result, RewrapItem, Rewrapped, SecretStatus, SecretWrite, StoreStats, StoredSecret,
};

/// Durable storage of sealed secrets, the usage log and the notification
/// outbox.
///
/// Every mutating call carries the audit record that describes it and
/// commits both in one transaction: a change is never stored without its
/// record, nor recorded without being stored.
#[async_trait]
pub trait SecretStore: Debug + Send + Sync + 'static {
    /// The current version of the secret at `address`, if any.
    async fn get(&self, address: &SecretAddress) -> Result<Option<StoredSecret>>;

    /// Stores `write` if the current version is `expected` (`None`: no
    /// secret yet); otherwise fails with [`Error::Conflict`](crate::Error::Conflict)
    /// and changes nothing. `write.version` must be `expected + 1` (or 1).
    /// The audit record and the optional notification commit with it. A
    /// new version ends any refresh lease on the address (whoever waited
    /// for it finds the version moved on).
    async fn put(
        &self,
        write: SecretWrite,
        expected: Option<u64>,
        audit: AuditRecord,
        notification: Option<NewNotification>,
    ) -> Result<()>;

    /// Stores many new secrets (each version 1, none stored yet) in one
    /// transaction with `audits` appended in order (a usage record per
    /// secret, or one describing the batch): all or nothing
    /// ([`Error::Conflict`](crate::Error::Conflict) if one exists). For bulk
    /// imports and loading benchmarks.
    async fn put_new_batch(&self, writes: Vec<SecretWrite>, audits: Vec<AuditRecord>)
    -> Result<()>;

    /// Updates the status and refresh bookkeeping of the secret at
    /// `address` without a new version, if its version is still `expected`
    /// ([`Error::Conflict`](crate::Error::Conflict) otherwise). The audit
    /// record and the optional notification commit with it.
    async fn update_state(
        &self,
        address: &SecretAddress,
        expected: u64,
        status: SecretStatus,
        refresh: RefreshState,
        audit: AuditRecord,
        notification: Option<NewNotification>,
    ) -> Result<()>;

    /// Deletes the secret at `address` (every version) and returns the
    /// version that was deleted, or `None` when there was none; in that case
    /// the audit record is written with outcome
    /// [`AuditOutcome::NotFound`](crate::AuditOutcome::NotFound). With
    /// `expected`, only that version is deleted
    /// ([`Error::Conflict`](crate::Error::Conflict), nothing changed and
    /// nothing recorded, when another is current).
    async fn delete(
        &self,
        address: &SecretAddress,
        expected: Option<u64>,
        audit: AuditRecord,
    ) -> Result<Option<u64>>;

    /// Addresses whose refresh is due at `now`: `refresh_due <= now`, not
    /// `reauth_required`, not backing off. Earliest first, at most `limit`.
    /// Served from an index, so the cost follows the number due, not the
    /// number stored.
    async fn due_for_refresh(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<SecretAddress>>;

    /// Like [`due_for_refresh`](SecretStore::due_for_refresh), but takes
    /// the refresh lease of every address it returns for `holder` (for
    /// `ttl`), and skips addresses under a lease that has not expired (its
    /// own included: those are in flight already): background refreshers
    /// of several replicas calling at once get disjoint sets.
    async fn claim_due_for_refresh(
        &self,
        now: OffsetDateTime,
        limit: u32,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Vec<SecretAddress>>;

    /// Takes the refresh lease of `address` for `holder` for `ttl`: granted
    /// when no one holds it, when the holder's lease has expired (a crashed
    /// replica), or when `holder` holds it already (then it is extended).
    /// Lease times come from the store's own clock, so replicas with skewed
    /// clocks still agree. The lease lives beside the secret and goes when
    /// it is deleted; it never changes the secret's version.
    async fn acquire_refresh_lease(
        &self,
        address: &SecretAddress,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<LeaseOutcome>;

    /// Gives the refresh lease of `address` back, if `holder` holds it.
    async fn release_refresh_lease(&self, address: &SecretAddress, holder: &str) -> Result<()>;

    /// Takes or renews the lease of the background job `name` (a usage-log
    /// forwarder, the webhook sender) for `holder` for `ttl`: true when
    /// `holder` holds it now. Replicas sharing the store run such a job one
    /// at a time; a holder that stops renewing loses it when it runs out.
    async fn acquire_job_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool>;

    /// Every address of `project`, in every environment.
    async fn list_project(&self, project: &str) -> Result<Vec<SecretAddress>>;

    /// Appends one usage record, durably.
    async fn append_audit(&self, record: AuditRecord) -> Result<()>;

    /// The newest `limit` usage records, newest first.
    async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditRecord>>;

    /// Usage records matching `query`, newest first.
    async fn query_audit(&self, query: AuditQuery) -> Result<AuditPage>;

    /// Up to `limit` usage records after sequence number `after`, oldest
    /// first (for export and forwarding).
    async fn audit_after(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>>;

    /// How far the usage-log sink `name` has delivered (0: nothing yet).
    async fn audit_cursor(&self, name: &str) -> Result<i64>;

    /// Records that sink `name` has delivered every record up to `seq`
    /// (cursors never move back).
    async fn set_audit_cursor(&self, name: &str, seq: i64) -> Result<()>;

    /// Deletes the usage records written before `before`, but none after
    /// sequence number `max_seq` (records not yet delivered everywhere) and
    /// at most `limit` of them, and leaves a checkpoint signed with the
    /// chain key so the rest of the chain still verifies. Returns the last
    /// pruned sequence number; call again until `None` to prune all. Each
    /// call is one short transaction, so appends (every token read) wait
    /// for one chunk at most, not for the whole backlog.
    /// Needs the chain key ([`SecretStore::chain_audit`]).
    async fn prune_audit(
        &self,
        before: OffsetDateTime,
        max_seq: i64,
        limit: u32,
    ) -> Result<Option<i64>>;

    /// From now on, chain every usage record with `mac` (see [`AuditMac`]).
    fn chain_audit(&self, mac: std::sync::Arc<dyn AuditMac>);

    /// Walks the whole usage log and checks the chain with `mac`: reports
    /// the first record that was changed, removed or inserted.
    async fn verify_audit(&self, mac: std::sync::Arc<dyn AuditMac>) -> Result<AuditVerification>;

    /// Notifications whose next delivery attempt is due at `now`, oldest first.
    async fn pending_notifications(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<PendingNotification>>;

    /// Removes a delivered notification.
    async fn notification_delivered(&self, id: i64) -> Result<()>;

    /// Records a failed delivery; the next attempt is not before `retry_at`.
    async fn notification_failed(&self, id: i64, retry_at: OffsetDateTime) -> Result<()>;

    /// Inserts or replaces a managed engine.
    async fn put_engine(&self, engine: EngineRecord) -> Result<()>;

    /// Every managed engine, revoked ones included, by id.
    async fn list_engines(&self) -> Result<Vec<EngineRecord>>;

    /// The distinct master-key ids that stored secrets are sealed under
    /// (checked at start-up: a key the vault cannot load means it must not
    /// serve).
    async fn key_ids_in_use(&self) -> Result<Vec<String>>;

    /// How many secrets and usage-log keys each master key seals.
    async fn key_usage(&self) -> Result<Vec<KeyUsage>>;

    /// Up to `limit` secrets not sealed under master key `key_id`, in
    /// address order after `after` (for a rewrap that resumes where it
    /// stopped and never loops on one value).
    async fn secrets_to_rewrap(
        &self,
        key_id: &str,
        after: Option<SecretAddress>,
        limit: u32,
    ) -> Result<Vec<RewrapItem>>;

    /// Writes rewrapped values back in one transaction. A secret whose
    /// version or sealed value changed since it was read is left alone
    /// (its new value is already under the active key). Returns how many
    /// were replaced. Neither the version nor the update time changes:
    /// the value is the same.
    async fn rewrap_secrets(&self, items: Vec<Rewrapped>) -> Result<u64>;

    /// Every usage-log key version, oldest first.
    async fn audit_keys(&self) -> Result<Vec<AuditKeyRecord>>;

    /// Adds a usage-log key version; fails with
    /// [`Error::Invalid`](crate::Error::Invalid) if that version exists.
    async fn add_audit_key(&self, key: AuditKeyRecord) -> Result<()>;

    /// Replaces the sealed form of usage-log key `version` if it is still
    /// `old` (a master-key rewrap). True when replaced.
    async fn rewrap_audit_key(
        &self,
        version: u32,
        old: Vec<u8>,
        sealed: Vec<u8>,
        key_id: String,
    ) -> Result<bool>;

    /// Checks that the store can serve requests.
    async fn health(&self) -> Result<()>;

    /// Checks that the store can take writes now.
    async fn ready(&self) -> Result<()>;

    /// Whether the usage-log writer is running.
    fn audit_writer_alive(&self) -> bool;

    /// Counts for metrics.
    async fn stats(&self) -> Result<StoreStats>;
}
