//! Keyed admission limits (per destination, subject, tenant, country, prefix),
//! on the engine's clock.
//!
//! Keys are 64-bit keyed hashes, never the destination itself; state per key is
//! small and fixed, in lock-sharded maps. The janitor reclaims idle keys so that
//! attacker-chosen keys cannot grow the store without bound. A lock here is
//! held only for one map operation, never across an `.await`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use parking_lot::Mutex;

use super::config::Limit;

const SHARDS: usize = 16;
/// Above this many sends per window a limit is a GCRA instead of an exact log.
pub(crate) const EXACT_MAX: u32 = 16;

/// Hashes are already keyed (`ahash::RandomState`): no need to hash again.
#[derive(Default)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map<V> = HashMap<u64, V, BuildHasherDefault<IdentityHasher>>;

/// The last sends of one key, oldest first, within the window.
#[derive(Clone, Copy, Default)]
struct Log {
    stamps: [u64; EXACT_MAX as usize],
    len: u8,
}

impl Log {
    fn prune(&mut self, now: u64, window: u64) {
        let keep_from = self
            .stamps
            .iter()
            .take(usize::from(self.len))
            .position(|&t| t + window > now)
            .unwrap_or(usize::from(self.len));
        if keep_from > 0 {
            self.stamps.copy_within(keep_from..usize::from(self.len), 0);
            self.len -= keep_from as u8;
        }
    }
}

enum Store {
    Exact(Box<[Mutex<Map<Log>>]>),
    Gcra(Box<[Mutex<Map<u64>>]>),
}

/// One keyed limit.
pub(crate) struct KeyedLimiter {
    /// The name in RATE_LIMITED answers and in the key gauge.
    pub(crate) scope: &'static str,
    limit: Limit,
    store: Store,
}

/// What a successful acquire did, to undo it if a later limit refuses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Taken {
    key: u64,
    at: u64,
}

impl KeyedLimiter {
    /// A limiter; `None` when the limit is off.
    pub(crate) fn new(scope: &'static str, limit: Limit) -> Option<Self> {
        if limit.max == 0 {
            return None;
        }
        let store = if limit.max <= EXACT_MAX {
            Store::Exact((0..SHARDS).map(|_| Mutex::new(Map::default())).collect())
        } else {
            Store::Gcra((0..SHARDS).map(|_| Mutex::new(Map::default())).collect())
        };
        Some(Self {
            scope,
            limit,
            store,
        })
    }

    fn shard(key: u64) -> usize {
        // High bits pick the shard; the map's buckets use the low ones.
        (key >> 60) as usize % SHARDS
    }

    fn interval(&self) -> u64 {
        (self.limit.window_ms / u64::from(self.limit.max)).max(1)
    }

    /// Counts one send for `key` at `now` (ms), or answers the ms to wait.
    pub(crate) fn acquire(&self, key: u64, now: u64) -> Result<Taken, u64> {
        let window = self.limit.window_ms;
        match &self.store {
            Store::Exact(shards) => {
                let mut map = shards[Self::shard(key)].lock();
                let log = map.entry(key).or_default();
                log.prune(now, window);
                if u32::from(log.len) >= self.limit.max {
                    return Err((log.stamps[0] + window).saturating_sub(now).max(1));
                }
                log.stamps[usize::from(log.len)] = now;
                log.len += 1;
                Ok(Taken { key, at: now })
            }
            Store::Gcra(shards) => {
                let interval = self.interval();
                let tolerance = interval * u64::from(self.limit.max - 1);
                let mut map = shards[Self::shard(key)].lock();
                let tat = map.entry(key).or_insert(0);
                let base = (*tat).max(now);
                if base - now > tolerance {
                    return Err(base - now - tolerance);
                }
                *tat = base + interval;
                Ok(Taken { key, at: now })
            }
        }
    }

    /// Undoes one [`KeyedLimiter::acquire`].
    pub(crate) fn undo(&self, taken: Taken) {
        match &self.store {
            Store::Exact(shards) => {
                let mut map = shards[Self::shard(taken.key)].lock();
                if let Some(log) = map.get_mut(&taken.key) {
                    let n = usize::from(log.len);
                    if let Some(i) = log.stamps[..n].iter().rposition(|&t| t == taken.at) {
                        log.stamps.copy_within(i + 1..n, i);
                        log.len -= 1;
                    }
                }
            }
            Store::Gcra(shards) => {
                let interval = self.interval();
                let mut map = shards[Self::shard(taken.key)].lock();
                if let Some(tat) = map.get_mut(&taken.key) {
                    *tat = tat.saturating_sub(interval);
                }
            }
        }
    }

    /// Sends still allowed for `key` now.
    pub(crate) fn remaining(&self, key: u64, now: u64) -> u32 {
        match &self.store {
            Store::Exact(shards) => {
                let mut map = shards[Self::shard(key)].lock();
                match map.get_mut(&key) {
                    Some(log) => {
                        log.prune(now, self.limit.window_ms);
                        self.limit.max.saturating_sub(u32::from(log.len))
                    }
                    None => self.limit.max,
                }
            }
            Store::Gcra(shards) => {
                let interval = self.interval();
                let map = shards[Self::shard(key)].lock();
                let used = map
                    .get(&key)
                    .map_or(0, |&tat| tat.saturating_sub(now).div_ceil(interval));
                self.limit.max.saturating_sub(used as u32)
            }
        }
    }

    /// Drops keys with nothing left to remember, shrinks the maps, returns the key count.
    pub(crate) fn retain_recent(&self, now: u64) -> usize {
        let window = self.limit.window_ms;
        let mut total = 0;
        match &self.store {
            Store::Exact(shards) => {
                for s in shards.iter() {
                    let mut map = s.lock();
                    map.retain(|_, log| {
                        log.prune(now, window);
                        log.len > 0
                    });
                    map.shrink_to_fit();
                    total += map.len();
                }
            }
            Store::Gcra(shards) => {
                for s in shards.iter() {
                    let mut map = s.lock();
                    map.retain(|_, tat| *tat > now);
                    map.shrink_to_fit();
                    total += map.len();
                }
            }
        }
        total
    }

    /// Keys held now.
    pub(crate) fn len(&self) -> usize {
        match &self.store {
            Store::Exact(shards) => shards.iter().map(|s| s.lock().len()).sum(),
            Store::Gcra(shards) => shards.iter().map(|s| s.lock().len()).sum(),
        }
    }
}

/// Hashes a key with the process's random state (keys are never stored in clear).
pub(crate) fn key_of(state: &ahash::RandomState, parts: impl Hash) -> u64 {
    state.hash_one(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_in_any_five_minutes_first_send_included() {
        let l = KeyedLimiter::new("destination", Limit::new(5, 300_000)).unwrap();
        for i in 0..5 {
            assert!(l.acquire(7, i * 1000).is_ok());
        }
        assert_eq!(l.remaining(7, 5000), 0);
        assert_eq!(l.acquire(7, 5000).unwrap_err(), 295_000);
        // One minute later the window still holds all five.
        assert!(l.acquire(7, 65_000).is_err());
        assert!(l.acquire(7, 300_000).is_ok());
        assert!(l.acquire(8, 5000).is_ok(), "other keys are independent");
    }

    #[test]
    fn gcra_mode_allows_the_burst_then_the_rate_and_undo_gives_back() {
        let l = KeyedLimiter::new("tenant", Limit::new(100, 1_000)).unwrap();
        for _ in 0..100 {
            assert!(l.acquire(1, 0).is_ok());
        }
        assert_eq!(l.acquire(1, 0).unwrap_err(), 10);
        let t = l.acquire(1, 10).unwrap();
        l.undo(t);
        assert!(l.acquire(1, 10).is_ok());
    }

    #[test]
    fn janitor_reclaims_idle_keys() {
        let l = KeyedLimiter::new("destination", Limit::new(5, 1_000)).unwrap();
        for k in 0..1000u64 {
            let _ = l.acquire(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), 0);
        }
        assert_eq!(l.len(), 1000);
        assert_eq!(l.retain_recent(500), 1000);
        assert_eq!(l.retain_recent(1_000), 0);
        let g = KeyedLimiter::new("tenant", Limit::new(100, 1_000)).unwrap();
        let _ = g.acquire(1, 0);
        assert_eq!(g.retain_recent(5), 1);
        assert_eq!(g.retain_recent(10), 0);
    }
}
