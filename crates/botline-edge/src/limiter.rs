//! A keyed token-bucket limiter (governor's GCRA) whose memory stays bounded.
//!
//! governor's keyed limiter keeps one 8-byte state per key it has seen until
//! [`retain_recent`](governor::RateLimiter::retain_recent) drops the idle ones; a flood of
//! distinct addresses creates keys faster than they go idle. [`CappedStore`] therefore gives at
//! most `max_keys` keys a bucket of their own: a key it does not hold, arriving while it is
//! full, is counted in one shared overflow bucket. Under such a flood, clients that keep sending
//! keep their own buckets and new ones share a small allowance, until housekeeping (every
//! `cleanup_interval`, and at most every second while the store is full) drops idle keys (whose
//! bucket has refilled) and shrinks the table. A client that was idle long enough to be dropped
//! and comes back while the table is full again shares the overflow bucket like a new one; so
//! this limiter bounds memory and slows a flood, and the webhook secret (which skips it) is what
//! keeps Telegram's own requests from ever being limited.

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use std::fmt;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often housekeeping may run while the store is full.
const FULL_CLEANUP_INTERVAL: Duration = Duration::from_secs(1);

/// A governor state store holding at most `max_keys` keys, plus one shared overflow bucket.
pub(crate) struct CappedStore<K: Hash + Eq + Clone> {
    keys: DashMapStateStore<K>,
    overflow: InMemoryState,
    max_keys: usize,
    /// Set when a key went to the overflow bucket since the last housekeeping; shared with the
    /// [`KeyedLimiter`], as governor does not lend its state store out.
    full: Arc<AtomicBool>,
}

impl<K: Hash + Eq + Clone> CappedStore<K> {
    fn new(max_keys: usize, full: Arc<AtomicBool>) -> Self {
        Self {
            keys: DashMapStateStore::default(),
            overflow: InMemoryState::default(),
            max_keys,
            full,
        }
    }
}

impl<K: Hash + Eq + Clone> StateStore for CappedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // Concurrent first sightings may overshoot `max_keys` by the number of threads at most.
        if self.keys.contains_key(key) || self.keys.len() < self.max_keys {
            self.keys.measure_and_replace(key, f)
        } else {
            self.full.store(true, Ordering::Relaxed);
            self.overflow.measure_and_replace(&NotKeyed::NonKey, f)
        }
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for CappedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.keys, drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&self.keys);
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

type Limiter<K> =
    RateLimiter<K, CappedStore<K>, DefaultClock, NoOpMiddleware<<DefaultClock as Clock>::Instant>>;

/// A keyed limiter with bounded state and housekeeping done in passing, on the request that
/// finds it due (no background task, so it behaves the same in a Lambda).
pub(crate) struct KeyedLimiter<K: Hash + Eq + Clone> {
    limiter: Limiter<K>,
    full: Arc<AtomicBool>,
    cleanup_interval: Duration,
    started: Instant,
    /// Nanoseconds after `started` of the last housekeeping.
    last_cleanup: AtomicU64,
}

impl<K: Hash + Eq + Clone> fmt::Debug for KeyedLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("keys", &self.limiter.len())
            .field("cleanup_interval", &self.cleanup_interval)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `burst` at once, `rate` per second; callers validated both as non-zero.
    pub(crate) fn new(rate: u32, burst: u32, max_keys: usize, cleanup_interval: Duration) -> Self {
        let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst);
        let full = Arc::new(AtomicBool::new(false));
        let store = CappedStore::new(max_keys.max(1), Arc::clone(&full));
        Self {
            limiter: RateLimiter::new(quota, store, DefaultClock::default()),
            full,
            cleanup_interval,
            started: Instant::now(),
            last_cleanup: AtomicU64::new(0),
        }
    }

    /// `Ok` if `key` may go on now; else how long until it may.
    pub(crate) fn check(&self, key: &K) -> Result<(), Duration> {
        self.housekeep_if_due();
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Keys with a bucket of their own.
    pub(crate) fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Drops idle keys (whose bucket is full again) and shrinks the table.
    pub(crate) fn housekeep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    fn housekeep_if_due(&self) {
        let now = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let last = self.last_cleanup.load(Ordering::Relaxed);
        let since = Duration::from_nanos(now.saturating_sub(last));
        let full = self.full.load(Ordering::Relaxed);
        let due = since >= self.cleanup_interval || (full && since >= FULL_CLEANUP_INTERVAL);
        if due
            && self
                .last_cleanup
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.full.store(false, Ordering::Relaxed);
            self.housekeep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn burst_then_wait() {
        let limiter = KeyedLimiter::<u64>::new(1, 3, 100, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(limiter.check(&1), Ok(()));
        }
        let wait = limiter.check(&1).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another key has its own bucket.
        assert_eq!(limiter.check(&2), Ok(()));
    }

    #[test]
    fn a_million_distinct_addresses_stay_within_the_cap() {
        let max_keys = 10_000;
        let limiter = KeyedLimiter::<IpAddr>::new(10, 20, max_keys, Duration::from_secs(3600));
        let started = Instant::now();
        let mut admitted = 0u64;
        for n in 0..1_000_000u32 {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
            if limiter.check(&addr).is_ok() {
                admitted += 1;
            }
        }
        let elapsed = started.elapsed().as_secs() + 1;
        assert!(limiter.len() <= max_keys, "{} keys", limiter.len());
        // Past the cap, new addresses shared one bucket (burst 20, 10 a second), and the rest of
        // the flood was refused. Housekeeping, at most once a second while the store is full,
        // drops the keys whose bucket has refilled (here: every address that sent once, 0.1 s
        // later) and so lets at most `max_keys` new addresses in per second of the run.
        let bound = max_keys as u64 * (elapsed + 1) + 20 + 10 * elapsed;
        assert!(
            admitted <= bound,
            "{admitted} admitted, at most {bound} expected"
        );
    }

    #[test]
    fn housekeeping_drops_idle_keys_and_frees_the_cap() {
        let limiter = KeyedLimiter::<u32>::new(1000, 1, 100, Duration::from_secs(3600));
        for key in 0..100 {
            assert_eq!(limiter.check(&key), Ok(()));
        }
        assert_eq!(limiter.len(), 100);
        // Full: key 100 shares the overflow bucket.
        assert_eq!(limiter.check(&100), Ok(()));
        assert!(limiter.check(&101).is_err());
        // A 1000/s bucket of 1 is full again after 1 ms; housekeeping runs at most once a
        // second while the store is full.
        std::thread::sleep(FULL_CLEANUP_INTERVAL + Duration::from_millis(50));
        assert_eq!(limiter.check(&102), Ok(()));
        assert!(limiter.len() <= 1, "{} keys left", limiter.len());
    }
}
