//! A bounded in-memory cache of unwrapped data keys in front of a remote
//! key provider.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ring::digest;

use crate::Result;
use crate::provider::{DataKey, KeyProvider, WrappedKey};

/// Limits of a [`CachingKeyProvider`].
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// How long an unwrapped data key is kept.
    pub ttl: Duration,
    /// How many unwrapped data keys are kept at most.
    pub max_entries: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            max_entries: 10_000,
        }
    }
}

/// Hits and misses of a [`CachingKeyProvider`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Unwraps answered from the cache.
    pub hits: u64,
    /// Unwraps that went to the provider.
    pub misses: u64,
    /// Keys held now.
    pub entries: u64,
}

type Fingerprint = [u8; 32];

struct Entry {
    at: Instant,
    key: DataKey,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<Fingerprint, Entry>,
    order: VecDeque<(Instant, Fingerprint)>,
}

impl Cache {
    /// Drops expired keys and, to make room for one more, the oldest live
    /// ones while full (each zeroized as it is dropped).
    fn evict(&mut self, now: Instant, limits: CacheLimits, make_room: bool) {
        while let Some(&(at, fp)) = self.order.front() {
            let expired = now.duration_since(at) >= limits.ttl;
            if !expired && (!make_room || self.entries.len() < limits.max_entries) {
                break;
            }
            self.order.pop_front();
            // Only remove the entry if it is the one this order slot
            // recorded (a re-inserted key has a newer slot).
            if self.entries.get(&fp).is_some_and(|e| e.at == at) {
                self.entries.remove(&fp);
            }
        }
    }
}

/// Keeps unwrapped data keys in memory for a bounded time and count, so
/// reading a value does not cost a round trip to a remote KMS every time.
///
/// Keys are looked up by a SHA-256 fingerprint of the master key id and
/// the wrapped bytes; each is zeroized when evicted. Wrapping always goes
/// to the provider (a fresh data key per value); the key it wrapped is
/// cached too, so reading a value just written is free.
pub struct CachingKeyProvider {
    inner: Arc<dyn KeyProvider>,
    limits: CacheLimits,
    cache: Mutex<Cache>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl fmt::Debug for CachingKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingKeyProvider")
            .field("inner", &self.inner)
            .field("limits", &self.limits)
            .field("stats", &self.stats())
            .finish()
    }
}

fn fingerprint(key_id: &str, wrapped: &[u8]) -> Fingerprint {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&(key_id.len() as u32).to_be_bytes());
    ctx.update(key_id.as_bytes());
    ctx.update(wrapped);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl CachingKeyProvider {
    /// A cache in front of `inner`.
    pub fn new(inner: Arc<dyn KeyProvider>, limits: CacheLimits) -> Self {
        Self {
            inner,
            limits,
            cache: Mutex::new(Cache::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Hits, misses and the current size (expired keys dropped first).
    pub fn stats(&self) -> CacheStats {
        let entries = {
            let mut cache = self.lock();
            cache.evict(Instant::now(), self.limits, false);
            cache.entries.len() as u64
        };
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries,
        }
    }

    /// Forgets every cached key (zeroizing them).
    pub fn clear(&self) {
        let mut cache = self.lock();
        cache.entries.clear();
        cache.order.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, fp: Fingerprint, key: &DataKey) {
        if self.limits.max_entries == 0 {
            return;
        }
        let now = Instant::now();
        let mut cache = self.lock();
        cache.evict(now, self.limits, true);
        cache.order.push_back((now, fp));
        cache.entries.insert(
            fp,
            Entry {
                at: now,
                key: key.duplicate(),
            },
        );
    }

    /// The key cached under `fp`, if it has not expired. Every lookup
    /// first drops the keys that have (the oldest first, so this costs
    /// nothing when none has; what is left is live): without writes, reads
    /// alone must not keep unwrapped keys in memory past their time.
    fn lookup(&self, fp: &Fingerprint) -> Option<DataKey> {
        let mut cache = self.lock();
        cache.evict(Instant::now(), self.limits, false);
        cache.entries.get(fp).map(|e| e.key.duplicate())
    }
}

#[async_trait]
impl KeyProvider for CachingKeyProvider {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn active_key_id(&self) -> String {
        self.inner.active_key_id()
    }

    fn key_ids(&self) -> Vec<String> {
        self.inner.key_ids()
    }

    fn has_key(&self, key_id: &str) -> bool {
        self.inner.has_key(key_id)
    }

    async fn wrap(&self, data_key: &DataKey) -> Result<WrappedKey> {
        let wrapped = self.inner.wrap(data_key).await?;
        self.insert(fingerprint(&wrapped.key_id, &wrapped.bytes), data_key);
        Ok(wrapped)
    }

    async fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey> {
        // A key that has been retired must not keep working from the cache.
        if !self.inner.has_key(key_id) {
            return self.inner.unwrap(key_id, wrapped).await;
        }
        let fp = fingerprint(key_id, wrapped);
        if let Some(key) = self.lookup(&fp) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(key);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let key = self.inner.unwrap(key_id, wrapped).await?;
        self.insert(fp, &key);
        Ok(key)
    }

    async fn derive(&self, label: &str) -> Result<DataKey> {
        self.inner.derive(label).await
    }

    async fn rotate(&self) -> Result<String> {
        self.inner.rotate().await
    }

    async fn retire(&self, key_id: &str) -> Result<()> {
        self.inner.retire(key_id).await?;
        self.clear();
        Ok(())
    }

    async fn reload(&self) -> Result<bool> {
        let changed = self.inner.reload().await?;
        if changed {
            self.clear();
        }
        Ok(changed)
    }

    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalKeyProvider;

    #[tokio::test]
    async fn expired_keys_are_dropped_by_reads_alone() {
        let cache = CachingKeyProvider::new(
            Arc::new(LocalKeyProvider::generate().unwrap()),
            CacheLimits {
                ttl: Duration::from_millis(200),
                max_entries: 100,
            },
        );
        let mut wrapped = Vec::new();
        for _ in 0..3 {
            let key = DataKey::generate().unwrap();
            wrapped.push(cache.wrap(&key).await.unwrap());
        }
        let first = &wrapped[0];
        cache.unwrap(&first.key_id, &first.bytes).await.unwrap();
        assert_eq!((cache.stats().hits, cache.stats().entries), (1, 3));
        std::thread::sleep(Duration::from_millis(300));
        // A read of a key never cached (a miss, which fails), after the
        // others expired: they are gone.
        assert!(
            cache
                .unwrap(&first.key_id, b"not a wrapped key")
                .await
                .is_err()
        );
        assert_eq!(cache.lock().entries.len(), 0);
        assert_eq!(cache.stats().entries, 0);
    }

    #[tokio::test]
    async fn a_full_cache_keeps_its_live_keys_on_reads() {
        let cache = CachingKeyProvider::new(
            Arc::new(LocalKeyProvider::generate().unwrap()),
            CacheLimits {
                ttl: Duration::from_secs(300),
                max_entries: 2,
            },
        );
        let mut wrapped = Vec::new();
        for _ in 0..2 {
            wrapped.push(cache.wrap(&DataKey::generate().unwrap()).await.unwrap());
        }
        for _ in 0..3 {
            for w in &wrapped {
                cache.unwrap(&w.key_id, &w.bytes).await.unwrap();
            }
        }
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (6, 0, 2));
        // A third key makes room by dropping the oldest.
        cache.wrap(&DataKey::generate().unwrap()).await.unwrap();
        assert_eq!(cache.stats().entries, 2);
    }
}
