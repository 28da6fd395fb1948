//! Abuse limits: lockout after repeated authentication failures, and a
//! request rate per engine.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits on callers.
#[derive(Debug, Clone)]
pub struct AccessLimits {
    /// Failed authentications from one engine id, or one client address,
    /// within `lockout` before both are locked out for `lockout`.
    pub max_failures: u32,
    /// Length of the failure window and of a lockout.
    pub lockout: Duration,
    /// Requests per second one authenticated engine may make (0: no limit).
    pub engine_rate_per_sec: u32,
    /// Requests an engine may make at once above its rate.
    pub engine_burst: u32,
}

impl Default for AccessLimits {
    fn default() -> Self {
        Self {
            max_failures: 5,
            lockout: Duration::from_secs(900),
            engine_rate_per_sec: 0,
            engine_burst: 50,
        }
    }
}

#[derive(Debug)]
struct Failures {
    count: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Entries kept before expired ones are dropped.
const MAX_ENTRIES: usize = 100_000;

/// The limiter state, shared by all workers.
#[derive(Debug)]
pub(crate) struct Limiter {
    limits: AccessLimits,
    failures: Mutex<HashMap<String, Failures>>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// The keys a request is counted under: its claimed engine id and its
/// client address. Unknown and known engine ids are counted alike, so the
/// limiter tells nothing about which ids exist.
pub(crate) fn keys(engine_id: Option<&str>, ip: Option<IpAddr>) -> [String; 2] {
    let engine = match engine_id {
        Some(id) if vault_types::validate_identifier("engine id", id).is_ok() => {
            format!("engine:{id}")
        }
        Some(_) => "engine:<invalid>".to_owned(),
        None => "engine:<none>".to_owned(),
    };
    let ip = ip.map_or_else(|| "ip:<unknown>".to_owned(), |ip| format!("ip:{ip}"));
    [engine, ip]
}

impl Limiter {
    pub(crate) fn new(limits: AccessLimits) -> Self {
        Self {
            limits,
            failures: Mutex::default(),
            buckets: Mutex::default(),
        }
    }

    /// Seconds until the lockout of any of `keys` ends, if one is locked.
    pub(crate) fn locked(&self, keys: &[String]) -> Option<u64> {
        let now = Instant::now();
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .filter_map(|k| map.get(k)?.locked_until)
            .filter(|until| *until > now)
            .map(|until| (until - now).as_secs().max(1))
            .max()
    }

    /// Counts a failed authentication; true when it starts a lockout.
    pub(crate) fn fail(&self, keys: &[String]) -> bool {
        let now = Instant::now();
        let window = self.limits.lockout;
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, f| {
                now.duration_since(f.since) < window || f.locked_until.is_some_and(|u| u > now)
            });
        }
        let mut started = false;
        for key in keys {
            let entry = map.entry(key.clone()).or_insert(Failures {
                count: 0,
                since: now,
                locked_until: None,
            });
            if now.duration_since(entry.since) >= window
                && entry.locked_until.is_none_or(|u| u <= now)
            {
                *entry = Failures {
                    count: 0,
                    since: now,
                    locked_until: None,
                };
            }
            entry.count += 1;
            if entry.count >= self.limits.max_failures
                && entry.locked_until.is_none_or(|u| u <= now)
            {
                entry.locked_until = Some(now + window);
                started = true;
            }
        }
        started
    }

    /// Forgets the failures of `keys` after a successful authentication.
    pub(crate) fn succeed(&self, keys: &[String]) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            if map.get(key).is_some_and(|f| f.locked_until.is_none()) {
                map.remove(key);
            }
        }
    }

    /// Takes one request from `engine_id`'s bucket; `Err(seconds)` to wait
    /// when it is empty.
    pub(crate) fn admit(&self, engine_id: &str) -> Result<(), u64> {
        let rate = f64::from(self.limits.engine_rate_per_sec);
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = f64::from(self.limits.engine_burst.max(1));
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        let bucket = map.entry(engine_id.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: u32, rate: u32, burst: u32) -> Limiter {
        Limiter::new(AccessLimits {
            max_failures: max,
            lockout: Duration::from_secs(60),
            engine_rate_per_sec: rate,
            engine_burst: burst,
        })
    }

    #[test]
    fn lockout_after_max_failures_by_engine_or_address() {
        let l = limiter(3, 0, 1);
        let k = keys(Some("execution"), "10.0.0.1".parse().ok());
        assert!(!l.fail(&k));
        assert!(!l.fail(&k));
        assert!(l.locked(&k).is_none());
        assert!(l.fail(&k), "third failure starts the lockout");
        assert!(l.locked(&k).unwrap() > 50);
        // The same address with another engine id is locked too…
        let other = keys(Some("ghost"), "10.0.0.1".parse().ok());
        assert!(l.locked(&other).is_some());
        // …and the same engine from another address.
        let moved = keys(Some("execution"), "10.0.0.2".parse().ok());
        assert!(l.locked(&moved).is_some());
        // A success does not lift a lockout.
        l.succeed(&k);
        assert!(l.locked(&k).is_some());
    }

    #[test]
    fn success_forgets_earlier_failures() {
        let l = limiter(3, 0, 1);
        let k = keys(Some("execution"), None);
        l.fail(&k);
        l.fail(&k);
        l.succeed(&k);
        assert!(!l.fail(&k));
        assert!(!l.fail(&k));
    }

    #[test]
    fn unknown_and_invalid_ids_are_counted_alike() {
        assert_eq!(keys(Some("a b"), None)[0], "engine:<invalid>");
        assert_eq!(keys(Some("nobody"), None)[0], "engine:nobody");
    }

    #[test]
    fn engine_rate_is_a_token_bucket() {
        let l = limiter(5, 1, 3);
        for _ in 0..3 {
            assert!(l.admit("e").is_ok());
        }
        assert_eq!(l.admit("e"), Err(1));
        assert!(l.admit("other").is_ok(), "buckets are per engine");
        let unlimited = limiter(5, 0, 1);
        for _ in 0..1000 {
            assert!(unlimited.admit("e").is_ok());
        }
    }
}
