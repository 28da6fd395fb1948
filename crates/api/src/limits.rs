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
    /// Authentications under way for this key: counted before they are
    /// decided, so parallel guesses cannot all slip past the check.
    in_flight: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Refusing since the last request admitted.
    refusing: bool,
}

/// An engine over its request rate: how long to wait, and whether this is
/// the first refusal since it was last admitted (the one worth recording).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Throttled {
    pub(crate) wait_secs: u64,
    pub(crate) first: bool,
}

/// The failure counts, and when expired ones were last dropped.
#[derive(Debug, Default)]
struct FailureTable {
    entries: HashMap<String, Failures>,
    pruned_at: Option<Instant>,
}

impl FailureTable {
    /// Once the table is full, drops expired entries, and if it is still
    /// full of live ones (a flood of distinct keys) all but the lockouts.
    /// That walks the whole table under the lock every login needs: at most
    /// once a second, however many failures arrive.
    fn prune(&mut self, now: Instant, window: Duration) {
        let due = self
            .pruned_at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        if self.entries.len() < MAX_ENTRIES || !due {
            return;
        }
        self.entries.retain(|_, f| {
            now.duration_since(f.since) < window || f.locked_until.is_some_and(|u| u > now)
        });
        if self.entries.len() >= MAX_ENTRIES {
            self.entries
                .retain(|_, f| f.locked_until.is_some_and(|u| u > now));
        }
        self.pruned_at = Some(now);
    }
}

/// Entries kept before expired ones are dropped.
const MAX_ENTRIES: usize = 100_000;

/// The limiter state, shared by all workers.
#[derive(Debug)]
pub(crate) struct Limiter {
    limits: AccessLimits,
    failures: Mutex<FailureTable>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// The keys a request is counted under: its client address (an IPv6
/// address by its /64, which one host usually holds whole) and, when it
/// claims a well-formed engine id, that id. Unknown and known engine ids
/// are counted alike, so the limiter tells nothing about which ids exist.
/// A request without an id, or with a malformed one, cannot be guessing
/// an engine's token: it is counted under its address alone, so such
/// requests from elsewhere cannot lock out anyone else.
pub(crate) fn keys(engine_id: Option<&str>, ip: Option<IpAddr>) -> Vec<String> {
    let ip = match ip {
        Some(IpAddr::V4(v4)) => format!("ip:{v4}"),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let s = v6.segments();
                format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        None => "ip:<unknown>".to_owned(),
    };
    match engine_id {
        Some(id) if vault_types::validate_identifier("engine id", id).is_ok() => {
            vec![format!("engine:{id}"), ip]
        }
        _ => vec![ip],
    }
}

/// One authentication under way. Ends with [`Attempt::succeed`],
/// [`Attempt::fail`] or [`Attempt::abandon`]; dropped without one (the
/// client went away and its request was cancelled), it is abandoned, so
/// a cancelled request never stays counted as under way.
pub(crate) struct Attempt<'a> {
    limiter: &'a Limiter,
    keys: Vec<String>,
    open: bool,
}

impl Attempt<'_> {
    /// See [`Limiter::succeed`].
    pub(crate) fn succeed(mut self) {
        self.open = false;
        self.limiter.succeed(&self.keys);
    }

    /// See [`Limiter::fail`]; true when it starts a lockout.
    pub(crate) fn fail(mut self) -> bool {
        self.open = false;
        self.limiter.fail(&self.keys)
    }

    /// See [`Limiter::abandon`].
    pub(crate) fn abandon(mut self) {
        self.open = false;
        self.limiter.abandon(&self.keys);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.open {
            self.limiter.abandon(&self.keys);
        }
    }
}

impl Limiter {
    pub(crate) fn new(limits: AccessLimits) -> Self {
        Self {
            limits,
            failures: Mutex::default(),
            buckets: Mutex::default(),
        }
    }

    /// Starts an authentication under `keys`, as an [`Attempt`] that must
    /// be ended; `Err(seconds)` while any key is locked out.
    pub(crate) fn attempt(&self, keys: Vec<String>) -> Result<Attempt<'_>, u64> {
        self.begin(&keys)?;
        Ok(Attempt {
            limiter: self,
            keys,
            open: true,
        })
    }

    /// Starts an authentication under `keys`: `Err(seconds)` while any of
    /// them is locked out, or, once an address has failed, when its
    /// failures plus authentications already under way from it reach the
    /// limit (so parallel guesses from one place cannot all slip past the
    /// check, while an engine that never failed is never slowed down by its
    /// own concurrency). An engine id is not capped that way: its failures
    /// may be somebody else's, and they must not throttle the real engine
    /// before they amount to a lockout. Each `Ok` must be followed by
    /// [`Limiter::fail`], [`Limiter::succeed`] or [`Limiter::abandon`].
    pub(crate) fn begin(&self, keys: &[String]) -> Result<(), u64> {
        let now = Instant::now();
        let mut table = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let map = &mut table.entries;
        let window = self.limits.lockout;
        let mut wait = None;
        for key in keys {
            if let Some(f) = map.get(key) {
                if let Some(until) = f.locked_until.filter(|u| *u > now) {
                    wait = wait.max(Some((until - now).as_secs().max(1)));
                } else if key.starts_with("ip:")
                    && now.duration_since(f.since) < window
                    && f.count > 0
                    && f.count + f.in_flight >= self.limits.max_failures
                {
                    wait = wait.max(Some(1));
                }
            }
        }
        if let Some(wait) = wait {
            return Err(wait);
        }
        for key in keys {
            map.entry(key.clone())
                .or_insert(Failures {
                    count: 0,
                    in_flight: 0,
                    since: now,
                    locked_until: None,
                })
                .in_flight += 1;
        }
        Ok(())
    }

    /// Counts a failed authentication; true when it starts a lockout.
    pub(crate) fn fail(&self, keys: &[String]) -> bool {
        let now = Instant::now();
        let window = self.limits.lockout;
        let mut table = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        table.prune(now, window);
        let map = &mut table.entries;
        let mut started = false;
        for key in keys {
            let entry = map.entry(key.clone()).or_insert(Failures {
                count: 0,
                in_flight: 1,
                since: now,
                locked_until: None,
            });
            entry.in_flight = entry.in_flight.saturating_sub(1);
            if now.duration_since(entry.since) >= window
                && entry.locked_until.is_none_or(|u| u <= now)
            {
                entry.count = 0;
                entry.since = now;
                entry.locked_until = None;
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

    /// Ends a successful authentication. The address's failures are
    /// forgotten; the engine id's are not (they lapse with the window), so
    /// the real engine's traffic cannot wipe out an attacker's count.
    pub(crate) fn succeed(&self, keys: &[String]) {
        let mut table = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let map = &mut table.entries;
        for key in keys {
            if let Some(f) = map.get_mut(key) {
                f.in_flight = f.in_flight.saturating_sub(1);
                if key.starts_with("ip:") && f.locked_until.is_none() {
                    f.count = 0;
                }
                if f.count == 0 && f.in_flight == 0 && f.locked_until.is_none() {
                    map.remove(key);
                }
            }
        }
    }

    /// Ends an authentication that reached no decision (the resolver was
    /// unavailable, or the client hung up): it counts neither way, and a
    /// key with nothing else counted is forgotten (otherwise every
    /// undecided attempt under a new engine id would stay in the table).
    pub(crate) fn abandon(&self, keys: &[String]) {
        let mut table = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let map = &mut table.entries;
        for key in keys {
            if let Some(f) = map.get_mut(key) {
                f.in_flight = f.in_flight.saturating_sub(1);
                if f.count == 0 && f.in_flight == 0 && f.locked_until.is_none() {
                    map.remove(key);
                }
            }
        }
    }

    /// Takes one request from `engine_id`'s bucket; [`Throttled`] when it
    /// is empty.
    pub(crate) fn admit(&self, engine_id: &str) -> Result<(), Throttled> {
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
            refusing: false,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.refusing = false;
            Ok(())
        } else {
            let first = !bucket.refusing;
            bucket.refusing = true;
            Err(Throttled {
                wait_secs: ((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64,
                first,
            })
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
        let attempt = |l: &Limiter| {
            l.begin(&k).unwrap();
            l.fail(&k)
        };
        assert!(!attempt(&l));
        assert!(!attempt(&l));
        assert!(l.begin(&k).is_ok());
        assert!(l.fail(&k), "third failure starts the lockout");
        assert!(l.begin(&k).unwrap_err() > 50);
        // The same address with another engine id is locked too…
        let other = keys(Some("ghost"), "10.0.0.1".parse().ok());
        assert!(l.begin(&other).is_err());
        // …and the same engine from another address.
        let moved = keys(Some("execution"), "10.0.0.2".parse().ok());
        assert!(l.begin(&moved).is_err());
    }

    #[test]
    fn parallel_guesses_are_counted_once_a_key_has_failed() {
        let l = limiter(3, 0, 1);
        let k = keys(Some("execution"), "10.0.0.1".parse().ok());
        // An engine that never failed: any concurrency is fine.
        for _ in 0..10 {
            assert!(l.begin(&k).is_ok());
        }
        for _ in 0..10 {
            l.succeed(&k);
        }
        // After one failure, failures plus guesses under way are capped.
        l.begin(&k).unwrap();
        l.fail(&k);
        assert!(l.begin(&k).is_ok());
        assert!(l.begin(&k).is_ok());
        assert!(
            l.begin(&k).is_err(),
            "one failed, two under way: a third waits"
        );
        l.abandon(&k);
        assert!(l.begin(&k).is_ok());
    }

    #[test]
    fn the_real_engine_cannot_wipe_an_attackers_count() {
        let l = limiter(3, 0, 1);
        let attacker = keys(Some("execution"), "10.0.0.66".parse().ok());
        let engine = keys(Some("execution"), "10.0.0.1".parse().ok());
        for _ in 0..2 {
            l.begin(&attacker).unwrap();
            l.fail(&attacker);
            l.begin(&engine).unwrap();
            l.succeed(&engine);
        }
        l.begin(&attacker).unwrap();
        assert!(l.fail(&attacker), "the third guess locks the id out");
    }

    #[test]
    fn success_forgets_the_failures_of_its_address() {
        let l = limiter(3, 0, 1);
        let k = keys(None, "10.0.0.9".parse().ok());
        for _ in 0..2 {
            l.begin(&k).unwrap();
            l.fail(&k);
        }
        l.begin(&k).unwrap();
        l.succeed(&k);
        for _ in 0..2 {
            l.begin(&k).unwrap();
            assert!(!l.fail(&k));
        }
    }

    #[test]
    fn unknown_ids_are_counted_and_malformed_or_missing_ones_by_address_only() {
        assert_eq!(
            keys(Some("nobody"), None),
            ["engine:nobody", "ip:<unknown>"]
        );
        let ip = "10.0.0.9".parse().ok();
        assert_eq!(keys(Some("a b"), ip), ["ip:10.0.0.9"]);
        assert_eq!(keys(None, ip), ["ip:10.0.0.9"]);
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_slash_64() {
        let a = keys(None, "2001:db8:1:2:aaaa::1".parse().ok());
        let b = keys(None, "2001:db8:1:2:ffff:1:2:3".parse().ok());
        let c = keys(None, "2001:db8:1:3::1".parse().ok());
        assert_eq!(a, ["ip:2001:db8:1:2::/64"]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(keys(None, "::ffff:10.0.0.9".parse().ok()), ["ip:10.0.0.9"]);
    }

    #[test]
    fn requests_without_credentials_do_not_lock_out_other_addresses() {
        let l = limiter(5, 0, 1);
        for n in 1..=5 {
            let k = keys(None, format!("10.0.1.{n}").parse().ok());
            l.begin(&k).unwrap();
            l.fail(&k);
        }
        let sixth = keys(None, "10.0.1.6".parse().ok());
        assert!(l.begin(&sixth).is_ok());
    }

    #[test]
    fn failures_under_an_engine_id_do_not_throttle_the_engine_before_a_lockout() {
        let l = limiter(5, 0, 1);
        let attacker = keys(Some("execution"), "10.0.0.66".parse().ok());
        for _ in 0..4 {
            l.begin(&attacker).unwrap();
            assert!(!l.fail(&attacker));
        }
        // The real engine, from its own address, with many requests at once.
        let engine = keys(Some("execution"), "10.0.0.1".parse().ok());
        for _ in 0..20 {
            assert!(l.begin(&engine).is_ok());
        }
        for _ in 0..20 {
            l.succeed(&engine);
        }
        // The attacker's own address is capped, and the fifth failure locks
        // the id out everywhere.
        l.begin(&attacker).unwrap();
        assert!(l.fail(&attacker));
        assert!(l.begin(&engine).is_err());
    }

    #[test]
    fn a_dropped_attempt_is_no_longer_under_way() {
        let l = limiter(3, 0, 1);
        let k = keys(Some("execution"), "10.0.0.1".parse().ok());
        assert!(!l.attempt(k.clone()).unwrap().fail());
        // One failure: two more under way reach the cap. Requests that are
        // cancelled mid-way (the guard dropped) must not hold it.
        for _ in 0..10 {
            let a = l.attempt(k.clone()).unwrap();
            let b = l.attempt(k.clone()).unwrap();
            assert!(l.attempt(k.clone()).is_err(), "capped while both run");
            drop((a, b));
        }
        l.attempt(k.clone()).unwrap().succeed();
        let table = l.failures.lock().unwrap();
        assert!(table.entries.values().all(|f| f.in_flight == 0));
    }

    #[test]
    fn undecided_attempts_under_new_ids_leave_nothing_behind() {
        let l = limiter(3, 0, 1);
        for i in 0..1_000 {
            let k = keys(Some(&format!("engine-{i}")), "10.0.0.1".parse().ok());
            if i % 2 == 0 {
                l.attempt(k).unwrap().abandon();
            } else {
                drop(l.attempt(k).unwrap());
            }
        }
        assert!(l.failures.lock().unwrap().entries.is_empty());
        // A key with failures counted keeps them through an undecided
        // attempt.
        let k = keys(Some("execution"), "10.0.0.1".parse().ok());
        assert!(!l.attempt(k.clone()).unwrap().fail());
        l.attempt(k.clone()).unwrap().abandon();
        let table = l.failures.lock().unwrap();
        assert_eq!(table.entries.len(), 2);
        assert!(
            table
                .entries
                .values()
                .all(|f| f.count == 1 && f.in_flight == 0)
        );
    }

    #[test]
    fn a_full_table_is_pruned_at_most_once_a_second() {
        let l = limiter(1, 0, 1);
        let now = Instant::now();
        {
            let mut table = l.failures.lock().unwrap();
            for n in 0..MAX_ENTRIES {
                table.entries.insert(
                    format!("ip:locked-{n}"),
                    Failures {
                        count: 1,
                        in_flight: 0,
                        since: now,
                        locked_until: Some(now + Duration::from_secs(60)),
                    },
                );
            }
        }
        let fail = |ip: &str| {
            let k = keys(None, ip.parse().ok());
            l.begin(&k).unwrap();
            l.fail(&k);
            let table = l.failures.lock().unwrap();
            (table.entries.len(), table.pruned_at)
        };
        let (len, first) = fail("10.0.2.1");
        assert_eq!(len, MAX_ENTRIES + 1, "live lockouts are kept");
        assert!(first.is_some());
        let (len, second) = fail("10.0.2.2");
        assert_eq!(len, MAX_ENTRIES + 2);
        assert_eq!(second, first, "no second walk within the second");
    }

    #[test]
    fn engine_rate_is_a_token_bucket() {
        let l = limiter(5, 1, 3);
        for _ in 0..3 {
            assert!(l.admit("e").is_ok());
        }
        let throttled = |first| {
            Err(Throttled {
                wait_secs: 1,
                first,
            })
        };
        assert_eq!(l.admit("e"), throttled(true));
        assert_eq!(l.admit("e"), throttled(false), "one refusal is the first");
        assert!(l.admit("other").is_ok(), "buckets are per engine");
        std::thread::sleep(Duration::from_millis(1100));
        assert!(l.admit("e").is_ok(), "a token came back");
        assert_eq!(l.admit("e"), throttled(true), "a new run of refusals");
        let unlimited = limiter(5, 0, 1);
        for _ in 0..1000 {
            assert!(unlimited.admit("e").is_ok());
        }
    }
}
