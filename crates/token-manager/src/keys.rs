//! Key management: the usage-log key ring, master-key rotation, the
//! rewrap of stored values and retirement of old versions.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use vault_encryption_layer::{DataKey, sealed_key_id};
use vault_secret_store::{
    AuditAction, AuditKeyRecord, AuditMac, AuditOutcome, KeyUsage, Rewrapped,
};
use vault_types::SecretAddress;

use crate::model::RequestContext;
use crate::{Error, Result, TokenManager};

/// The label version 1 of the usage-log key is derived under from a local
/// master key (vaults created before the key had versions used it; keeping
/// it keeps their chains verifiable).
pub const LEGACY_AUDIT_KEY_LABEL: &str = "audit-log-mac-v1";

fn audit_key_aad(version: u32) -> Vec<u8> {
    format!("vault-audit-key#{version}").into_bytes()
}

/// Every version of the usage-log key, opened: HMAC-SHA256 with the
/// newest for new records, any of them for verification. Keys are zeroized
/// on drop; `Debug` shows versions only.
pub struct AuditKeyring {
    keys: BTreeMap<u32, DataKey>,
    current: u32,
}

impl fmt::Debug for AuditKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKeyring")
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish()
    }
}

impl AuditKeyring {
    /// A ring of one key (tests, tools).
    pub fn single(key: DataKey) -> Self {
        Self {
            keys: BTreeMap::from([(1, key)]),
            current: 1,
        }
    }

    /// The version new records are made with.
    pub fn current_version(&self) -> u32 {
        self.current
    }

    /// The newest version loaded (newer than the current one while a
    /// rotation's grace runs).
    pub fn newest_version(&self) -> u32 {
        self.keys
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.current)
    }
}

impl AuditMac for AuditKeyring {
    fn mac(&self, data: &[u8]) -> [u8; 32] {
        self.mac_with(self.current, data).unwrap_or([0; 32])
    }

    fn version(&self) -> u32 {
        self.current
    }

    fn knows(&self, version: u32) -> bool {
        self.keys.contains_key(&version)
    }

    fn mac_with(&self, version: u32, data: &[u8]) -> Option<[u8; 32]> {
        self.keys
            .get(&version)
            .map(|k| vault_encryption_layer::hmac_sha256(k.expose(), data))
    }
}

/// What `keys status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// The kind of key provider (`local`, `aws-kms`, `transit`).
    pub provider: String,
    /// The master key new values are sealed under.
    pub active: String,
    /// Every master key the provider can still unwrap with.
    pub available: Vec<String>,
    /// What each master key seals now.
    pub usage: Vec<KeyUsage>,
    /// Values still sealed under another key than the active one.
    pub pending_rewrap: u64,
    /// Available old keys that nothing references: safe to retire.
    pub retirable: Vec<String>,
    /// The newest usage-log key version.
    pub audit_key_version: u32,
}

/// What one pass of [`TokenManager::rewrap_step`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewrapProgress {
    /// Values rewrapped in this step.
    pub rewrapped: u64,
    /// Values that could not be opened to rewrap (their key is missing,
    /// or they are corrupt); left as they are and reported.
    pub failed: u64,
    /// Where the next step resumes; `None` when the pass is complete.
    pub next: Option<SecretAddress>,
}

fn random_key() -> Result<DataKey> {
    Ok(DataKey::generate()?)
}

impl TokenManager {
    /// The newest usage-log key version in the store (0: none yet).
    async fn newest_audit_key(&self) -> Result<u32> {
        Ok(self
            .inner
            .store
            .audit_keys()
            .await?
            .iter()
            .map(|r| r.version)
            .max()
            .unwrap_or(0))
    }

    /// Opens every usage-log key version, creating version 1 on first use
    /// (derived from a local master key as earlier builds did, or random
    /// with a remote KMS), and chains the usage log with them.
    pub async fn load_audit_keys(&self) -> Result<Arc<AuditKeyring>> {
        let store = &self.inner.store;
        let envelope = &self.inner.envelope;
        let mut records = store.audit_keys().await?;
        if records.is_empty() {
            let key = match envelope.key_provider().derive(LEGACY_AUDIT_KEY_LABEL).await {
                Ok(key) => key,
                Err(vault_encryption_layer::Error::Unsupported(_)) => random_key()?,
                Err(e) => return Err(e.into()),
            };
            let sealed = envelope.seal(key.expose(), &audit_key_aad(1)).await?;
            let record = AuditKeyRecord {
                version: 1,
                key_id: sealed_key_id(&sealed)?.to_owned(),
                sealed,
                created_at: self.now(),
            };
            // Another process may have created it first: then theirs counts.
            if let Err(e) = store.add_audit_key(record).await {
                tracing::debug!(error = %e, "usage-log key 1 was created concurrently");
            }
            records = store.audit_keys().await?;
        }
        let mut keys = BTreeMap::new();
        for r in &records {
            let opened = envelope.open(&r.sealed, &audit_key_aad(r.version)).await?;
            keys.insert(r.version, DataKey::from_slice(&opened)?);
        }
        let current = self.usable_audit_key(&records);
        let ring = Arc::new(AuditKeyring { keys, current });
        store.chain_audit(Arc::clone(&ring) as Arc<dyn AuditMac>);
        Ok(ring)
    }

    /// The newest usage-log key version new records may be made with: the
    /// oldest one, or one added at least the grace ago (so that every
    /// process has loaded it before anything is signed with it).
    fn usable_audit_key(&self, records: &[AuditKeyRecord]) -> u32 {
        let now = self.now();
        let grace = time::Duration::try_from(self.inner.audit_key_grace).ok();
        let oldest = records.iter().map(|r| r.version).min().unwrap_or(1);
        records
            .iter()
            .filter(|r| {
                r.version == oldest
                    || grace
                        .and_then(|g| r.created_at.checked_add(g))
                        .is_some_and(|usable| usable <= now)
            })
            .map(|r| r.version)
            .max()
            .unwrap_or(oldest)
    }

    /// Creates a new usage-log key version; new records are made with it
    /// once the grace set with
    /// [`TokenManagerBuilder::audit_key_grace`](crate::TokenManagerBuilder::audit_key_grace)
    /// has passed (at once without one). Records made with older versions
    /// keep verifying with theirs.
    pub async fn rotate_audit_key(&self, ctx: &RequestContext) -> Result<u32> {
        let current = self.newest_audit_key().await?;
        if current == 0 {
            self.load_audit_keys().await?;
            return Box::pin(self.rotate_audit_key(ctx)).await;
        }
        let version = current + 1;
        let key = random_key()?;
        let sealed = self
            .inner
            .envelope
            .seal(key.expose(), &audit_key_aad(version))
            .await?;
        self.inner
            .store
            .add_audit_key(AuditKeyRecord {
                version,
                key_id: sealed_key_id(&sealed)?.to_owned(),
                sealed,
                created_at: self.now(),
            })
            .await?;
        self.load_audit_keys().await?;
        self.record_event(
            ctx,
            AuditAction::Admin,
            None,
            AuditOutcome::Success,
            &format!("usage-log key rotated to version {version}"),
        )
        .await?;
        tracing::info!(version, "rotated the usage-log key");
        Ok(version)
    }

    /// Creates a new master key version (where the provider can) and seals
    /// new values under it at once; [`TokenManager::rewrap_step`] then
    /// moves the stored ones. Returns the new key id.
    pub async fn rotate_master_key(&self, ctx: &RequestContext) -> Result<String> {
        let id = self.inner.envelope.key_provider().rotate().await?;
        self.record_event(
            ctx,
            AuditAction::Admin,
            None,
            AuditOutcome::Success,
            &format!("master key rotated to {id}"),
        )
        .await?;
        Ok(id)
    }

    /// Picks up master-key versions another process added or retired, a
    /// usage-log key another process rotated, and a rotated usage-log key
    /// whose grace has passed. True when anything changed.
    pub async fn reload_keys(&self, audit: &mut Option<Arc<AuditKeyring>>) -> Result<bool> {
        // A master key source that fails to reload must not keep the
        // usage-log keys from being picked up (their grace counts on it).
        let master = self.inner.envelope.key_provider().reload().await;
        let mut changed = false;
        let newest = self.newest_audit_key().await?;
        let loaded = audit
            .as_ref()
            .map(|a| (a.newest_version(), a.current_version()));
        // Current <= loaded newest <= the store's newest: one comparison
        // covers a version added elsewhere and a grace still running.
        if newest > 0 && loaded.is_none_or(|(_, current)| current != newest) {
            let ring = self.load_audit_keys().await?;
            changed |= loaded != Some((ring.newest_version(), ring.current_version()));
            *audit = Some(ring);
        }
        Ok(master? || changed)
    }

    /// Rewraps up to `batch` stored values that are not under the active
    /// master key, starting after `after`, in one short transaction (reads
    /// and writes go on meanwhile; a value changed in between is skipped,
    /// its new version being under the active key already). Usage-log keys
    /// are rewrapped at the start of each pass.
    pub async fn rewrap_step(
        &self,
        after: Option<SecretAddress>,
        batch: u32,
    ) -> Result<RewrapProgress> {
        let envelope = &self.inner.envelope;
        let store = &self.inner.store;
        let active = envelope.key_provider().active_key_id();
        let mut progress = RewrapProgress::default();
        if after.is_none() {
            for k in store.audit_keys().await? {
                if k.key_id == active {
                    continue;
                }
                match envelope.rewrap(&k.sealed).await {
                    Ok(sealed) => {
                        let key_id = sealed_key_id(&sealed)?.to_owned();
                        if store
                            .rewrap_audit_key(k.version, k.sealed, sealed, key_id)
                            .await?
                        {
                            progress.rewrapped += 1;
                        }
                    }
                    Err(e) => {
                        tracing::error!(version = k.version, error = %e, "cannot rewrap a usage-log key");
                        progress.failed += 1;
                    }
                }
            }
        }
        let items = store.secrets_to_rewrap(&active, after, batch).await?;
        let full = items.len() as u32 == batch;
        progress.next = if full {
            items.last().map(|i| i.address.clone())
        } else {
            None
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match envelope.rewrap(&item.sealed).await {
                Ok(sealed) => {
                    let key_id = sealed_key_id(&sealed)?.to_owned();
                    out.push(Rewrapped {
                        item,
                        sealed,
                        key_id,
                    });
                }
                Err(e) => {
                    tracing::error!(address = %item.address, error = %e, "cannot rewrap a stored value");
                    progress.failed += 1;
                }
            }
        }
        progress.rewrapped += store.rewrap_secrets(out).await?;
        Ok(progress)
    }

    /// Runs rewrap steps until a pass is complete, calling `on_step` after
    /// each with the running total. Returns the totals.
    pub async fn rewrap_all(
        &self,
        batch: u32,
        mut on_step: impl FnMut(&RewrapProgress),
    ) -> Result<RewrapProgress> {
        let mut total = RewrapProgress::default();
        let mut after = None;
        loop {
            let step = self.rewrap_step(after, batch).await?;
            total.rewrapped += step.rewrapped;
            total.failed += step.failed;
            after = step.next.clone();
            total.next = step.next;
            on_step(&total);
            if after.is_none() {
                return Ok(total);
            }
        }
    }

    /// The state of the master keys and the rewrap.
    pub async fn key_status(&self) -> Result<KeyStatus> {
        let provider = self.inner.envelope.key_provider();
        let active = provider.active_key_id();
        let available = provider.key_ids();
        let usage = self.inner.store.key_usage().await?;
        let pending_rewrap = usage
            .iter()
            .filter(|u| u.key_id != active)
            .map(|u| u.secrets + u.audit_keys)
            .sum();
        let retirable = available
            .iter()
            .filter(|id| **id != active && !usage.iter().any(|u| u.key_id == **id))
            .cloned()
            .collect();
        let audit_key_version = self.newest_audit_key().await?;
        Ok(KeyStatus {
            provider: provider.kind().to_owned(),
            active,
            available,
            usage,
            pending_rewrap,
            retirable,
            audit_key_version,
        })
    }

    /// Retires master key version `key_id`: refused while it is active or
    /// while anything stored is still sealed under it.
    pub async fn retire_key(&self, ctx: &RequestContext, key_id: &str) -> Result<()> {
        let status = self.key_status().await?;
        if key_id == status.active {
            return Err(Error::InvalidInput(format!(
                "{key_id} is the active master key; rotate first"
            )));
        }
        if let Some(u) = status.usage.iter().find(|u| u.key_id == key_id) {
            return Err(Error::InvalidInput(format!(
                "{key_id} still seals {} secret(s) and {} usage-log key(s); let the rewrap finish first",
                u.secrets, u.audit_keys
            )));
        }
        self.inner.envelope.key_provider().retire(key_id).await?;
        self.record_event(
            ctx,
            AuditAction::Admin,
            None,
            AuditOutcome::Success,
            &format!("master key {key_id} retired"),
        )
        .await?;
        Ok(())
    }
}

/// How the background key maintenance runs.
#[derive(Debug, Clone, Copy)]
pub struct KeyMaintenanceConfig {
    /// How often to look for rotations by other processes and for values
    /// to rewrap.
    pub interval: Duration,
    /// Values rewrapped per transaction.
    pub batch: u32,
    /// Pause between batches, so a rewrap of millions of values leaves
    /// room for requests.
    pub pause: Duration,
}

impl Default for KeyMaintenanceConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            batch: 500,
            pause: Duration::from_millis(20),
        }
    }
}

/// Runs forever: picks up key rotations made elsewhere and rewraps stored
/// values under the active master key in batches. Resumable by design: what
/// is left to do is read from the store each pass, so a restart (or a
/// crash) mid-way loses nothing and continues.
pub async fn run_key_maintenance(
    manager: TokenManager,
    mut audit: Option<Arc<AuditKeyring>>,
    config: KeyMaintenanceConfig,
) {
    loop {
        if let Err(e) = manager.reload_keys(&mut audit).await {
            tracing::warn!(error = %e, "reloading keys failed");
        }
        let mut after = None;
        let mut total = 0u64;
        let mut reloaded = tokio::time::Instant::now();
        loop {
            match manager.rewrap_step(after, config.batch).await {
                Ok(step) => {
                    total += step.rewrapped;
                    after = step.next;
                    if after.is_none() {
                        break;
                    }
                    tokio::time::sleep(config.pause).await;
                    // A long pass must not delay picking up rotations past
                    // the interval: the graces of other processes count on it.
                    if reloaded.elapsed() >= config.interval {
                        reloaded = tokio::time::Instant::now();
                        if let Err(e) = manager.reload_keys(&mut audit).await {
                            tracing::warn!(error = %e, "reloading keys failed");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rewrap step failed; retrying later");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(
                rewrapped = total,
                "rewrapped stored values under the active master key"
            );
        }
        tokio::time::sleep(config.interval).await;
    }
}
