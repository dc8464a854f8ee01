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
use crate::snapshot::Windows;

/// Shards per limit. Many small maps rather than a few large ones: the
/// janitor holds one shard's lock for a whole `retain` over its keys, and a
/// map doubles (rehashing every key) under the same lock, while admissions
/// for that shard wait. At a million keys per limit, 16 shards meant
/// milliseconds per lock hold; 256 keep it near a hundred microseconds.
const SHARDS: usize = 256;
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

/// Log sizes: a limit keeps the smallest that fits its `max` (entries of 32,
/// 56 and 80 bytes with the key; protocol v1's 5-in-5-minutes takes the first).
const LOG_SIZES: [u32; 3] = [5, 11, EXACT_MAX];
/// Longest window a limit may have. Exact logs keep 32-bit millisecond stamps
/// compared with wrapping arithmetic, which is exact while no stamp is older
/// than 24 days; the janitor forgets stamps one window after they were taken.
pub(crate) const MAX_WINDOW_MS: u64 = 7 * 24 * 3_600 * 1_000;
/// Longest janitor interval, for the same reason.
pub(crate) const MAX_JANITOR_INTERVAL_MS: u64 = 24 * 3_600 * 1_000;

/// The last sends of one key, oldest first, within the window: the low 32
/// bits of their millisecond times. Sized to the limit: at a million keys a
/// 16-slot log of u64 stamps cost 300 MB per limit once the map had doubled.
#[derive(Clone, Copy)]
struct Log<const N: usize> {
    stamps: [u32; N],
    len: u8,
}

impl<const N: usize> Default for Log<N> {
    fn default() -> Self {
        Self {
            stamps: [0; N],
            len: 0,
        }
    }
}

/// What the limiter asks of an exact log, whatever its size.
trait SendLog: Default {
    fn prune(&mut self, now: u32, window: u32);
    fn is_empty(&self) -> bool;
    fn count(&self) -> u32;
    /// Age in ms of the oldest stamp kept.
    fn oldest_age(&self, now: u32) -> u32;
    fn push(&mut self, now: u32);
    fn remove(&mut self, at: u32);
    /// The stamps kept, oldest first.
    fn stamps(&self) -> &[u32];
    /// The most stamps it keeps.
    fn room(&self) -> usize;
}

impl<const N: usize> SendLog for Log<N> {
    fn prune(&mut self, now: u32, window: u32) {
        let n = usize::from(self.len);
        let keep_from = self.stamps[..n]
            .iter()
            .position(|&t| now.wrapping_sub(t) < window)
            .unwrap_or(n);
        if keep_from > 0 {
            self.stamps.copy_within(keep_from..n, 0);
            self.len -= keep_from as u8;
        }
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn count(&self) -> u32 {
        u32::from(self.len)
    }
    fn oldest_age(&self, now: u32) -> u32 {
        now.wrapping_sub(self.stamps[0])
    }
    fn push(&mut self, now: u32) {
        self.stamps[usize::from(self.len)] = now;
        self.len += 1;
    }
    fn stamps(&self) -> &[u32] {
        &self.stamps[..usize::from(self.len)]
    }
    fn room(&self) -> usize {
        N
    }
    fn remove(&mut self, at: u32) {
        let n = usize::from(self.len);
        if let Some(i) = self.stamps[..n].iter().rposition(|&t| t == at) {
            self.stamps.copy_within(i + 1..n, i);
            self.len -= 1;
        }
    }
}

// The entry sizes the memory figures count on (key and log).
const _: () = assert!(std::mem::size_of::<(u64, Log<5>)>() == 32);
const _: () = assert!(std::mem::size_of::<(u64, Log<11>)>() == 56);
const _: () = assert!(std::mem::size_of::<(u64, Log<16>)>() == 80);

type Shards<V> = Box<[Mutex<Map<V>>]>;

/// Runs `$body` with `$s` bound to the shards of whichever exact log the
/// store holds, or `$gcra` for a GCRA store.
macro_rules! on_store {
    ($store:expr, $s:ident => $body:expr, $g:ident => $gcra:expr) => {
        match $store {
            Store::Log5($s) => $body,
            Store::Log11($s) => $body,
            Store::Log16($s) => $body,
            Store::Gcra($g) => $gcra,
        }
    };
}

enum Store {
    Log5(Shards<Log<5>>),
    Log11(Shards<Log<11>>),
    Log16(Shards<Log<{ EXACT_MAX as usize }>>),
    /// Theoretical arrival time per key, in microseconds.
    Gcra(Shards<u64>),
}

fn shards<V>() -> Shards<V> {
    (0..SHARDS).map(|_| Mutex::new(Map::default())).collect()
}

/// One keyed limit.
pub(crate) struct KeyedLimiter {
    /// The name in RATE_LIMITED answers and in the key gauge.
    pub(crate) scope: &'static str,
    limit: Limit,
    store: Store,
    /// `watchword_rate_limited_total{scope}`: sends this limit refused.
    pub(crate) refused: metrics::Counter,
}

/// What a successful acquire did, to undo it if a later limit refuses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Taken {
    key: u64,
    at: u64,
}

/// The exact-log operations, on whichever log size the limit uses.
fn log_acquire<L: SendLog>(map: &mut Map<L>, key: u64, now: u32, limit: Limit) -> Result<(), u64> {
    let window = limit.window_ms as u32;
    let log = map.entry(key).or_default();
    log.prune(now, window);
    if log.count() >= limit.max {
        return Err(u64::from(window.saturating_sub(log.oldest_age(now))).max(1));
    }
    log.push(now);
    Ok(())
}

fn log_remaining<L: SendLog>(map: &mut Map<L>, key: u64, now: u32, limit: Limit) -> u32 {
    match map.get_mut(&key) {
        Some(log) => {
            log.prune(now, limit.window_ms as u32);
            limit.max.saturating_sub(log.count())
        }
        None => limit.max,
    }
}

fn log_retain<L: SendLog>(shards: &[Mutex<Map<L>>], now: u32, window: u32) -> usize {
    let mut total = 0;
    for s in shards {
        let mut map = s.lock();
        map.retain(|_, log| {
            log.prune(now, window);
            !log.is_empty()
        });
        shrink_if_mostly_empty(&mut map);
        total += map.len();
    }
    total
}

impl KeyedLimiter {
    /// A limiter; `None` when the limit is off. Windows beyond
    /// [`MAX_WINDOW_MS`] are refused by the configuration's validation.
    pub(crate) fn new(scope: &'static str, limit: Limit) -> Option<Self> {
        if limit.max == 0 {
            return None;
        }
        let limit = Limit::new(limit.max, limit.window_ms.min(MAX_WINDOW_MS));
        let store = if limit.max <= LOG_SIZES[0] {
            Store::Log5(shards())
        } else if limit.max <= LOG_SIZES[1] {
            Store::Log11(shards())
        } else if limit.max <= LOG_SIZES[2] {
            Store::Log16(shards())
        } else {
            Store::Gcra(shards())
        };
        Some(Self {
            scope,
            limit,
            store,
            refused: metrics::counter!("watchword_rate_limited_total", "scope" => scope),
        })
    }

    fn shard(key: u64) -> usize {
        // The bits just below the top 7 pick the shard: the map's buckets use
        // the low bits and its control tags the top 7, so neither loses
        // entropy to the shard choice.
        ((key << 7) >> (64 - SHARDS.trailing_zeros())) as usize
    }

    /// The GCRA emission interval in microseconds: a whole-millisecond
    /// interval would round 200,000 per second down to 1,000 per second.
    fn interval_us(&self) -> u64 {
        (self.limit.window_ms.saturating_mul(1_000) / u64::from(self.limit.max)).max(1)
    }

    /// Counts one send for `key` at `now` (ms), or answers the ms to wait.
    pub(crate) fn acquire(&self, key: u64, now: u64) -> Result<Taken, u64> {
        let stamp = now as u32;
        let shard = Self::shard(key);
        on_store! { &self.store,
            s => log_acquire(&mut s[shard].lock(), key, stamp, self.limit)?,
            shards => {
                let interval = self.interval_us();
                let tolerance = interval * u64::from(self.limit.max - 1);
                let mut map = shards[shard].lock();
                let tat = map.entry(key).or_insert(0);
                *tat = gcra_step(*tat, now, interval, tolerance)?;
            }
        }
        Ok(Taken { key, at: now })
    }

    /// Undoes one [`KeyedLimiter::acquire`].
    pub(crate) fn undo(&self, taken: Taken) {
        let shard = Self::shard(taken.key);
        let stamp = taken.at as u32;
        on_store! { &self.store,
            s => {
                if let Some(log) = s[shard].lock().get_mut(&taken.key) {
                    log.remove(stamp);
                }
            },
            shards => {
                let interval = self.interval_us();
                if let Some(tat) = shards[shard].lock().get_mut(&taken.key) {
                    *tat = tat.saturating_sub(interval);
                }
            }
        }
    }

    /// Sends still allowed for `key` now.
    pub(crate) fn remaining(&self, key: u64, now: u64) -> u32 {
        let shard = Self::shard(key);
        on_store! { &self.store,
            s => log_remaining(&mut s[shard].lock(), key, now as u32, self.limit),
            shards => {
                let interval = self.interval_us();
                let now_us = now.saturating_mul(1_000);
                let map = shards[shard].lock();
                let used = map
                    .get(&key)
                    .map_or(0, |&tat| tat.saturating_sub(now_us).div_ceil(interval));
                self.limit.max.saturating_sub(used as u32)
            }
        }
    }

    /// Drops keys with nothing left to remember, shrinks the maps, returns the key count.
    pub(crate) fn retain_recent(&self, now: u64) -> usize {
        let window = self.limit.window_ms as u32;
        on_store! { &self.store,
            s => log_retain(s, now as u32, window),
            shards => {
                let now_us = now.saturating_mul(1_000);
                let mut total = 0;
                for s in shards.iter() {
                    let mut map = s.lock();
                    map.retain(|_, tat| *tat > now_us);
                    shrink_if_mostly_empty(&mut map);
                    total += map.len();
                }
                total
            }
        }
    }

    /// Keys held now.
    pub(crate) fn len(&self) -> usize {
        on_store! { &self.store,
            s => s.iter().map(|s| s.lock().len()).sum(),
            g => g.iter().map(|s| s.lock().len()).sum()
        }
    }
}

fn log_export<L: SendLog>(shards: &[Mutex<Map<L>>]) -> Vec<(u64, Vec<u32>)> {
    let mut out = Vec::new();
    for s in shards {
        let map = s.lock();
        out.extend(map.iter().map(|(k, log)| (*k, log.stamps().to_vec())));
    }
    out
}

/// Puts exported logs back: stamps older than the window are dropped, and
/// at most the log's room of the newest kept.
fn log_import<L: SendLog>(
    shards: &[Mutex<Map<L>>],
    keys: &[(u64, Vec<u32>)],
    now: u32,
    window: u32,
) -> u64 {
    let mut restored = 0;
    for (key, stamps) in keys {
        let mut log = L::default();
        let skip = stamps.len().saturating_sub(log.room());
        for &t in &stamps[skip..] {
            if now.wrapping_sub(t) < window {
                log.push(t);
            }
        }
        if !log.is_empty() {
            shards[KeyedLimiter::shard(*key)].lock().insert(*key, log);
            restored += 1;
        }
    }
    restored
}

impl KeyedLimiter {
    /// Every key's memory, for a snapshot.
    pub(crate) fn export(&self) -> Windows {
        on_store! { &self.store,
            s => Windows::Exact(log_export(s)),
            shards => Windows::Gcra(
                shards
                    .iter()
                    .flat_map(|s| s.lock().iter().map(|(k, t)| (*k, *t)).collect::<Vec<_>>())
                    .collect()
            )
        }
    }

    /// Puts a snapshot's memory back at `now` (ms); `None` when the snapshot
    /// kept the other kind (the limit's size crossed the exact-log bound).
    pub(crate) fn import(&self, windows: &Windows, now: u64) -> Option<u64> {
        let window = self.limit.window_ms as u32;
        match windows {
            Windows::Exact(keys) => on_store! { &self.store,
                s => Some(log_import(s, keys, now as u32, window)),
                _g => None
            },
            Windows::Gcra(keys) => match &self.store {
                Store::Gcra(shards) => {
                    let now_us = now.saturating_mul(1_000);
                    let mut restored = 0;
                    for &(key, tat) in keys.iter().filter(|(_, tat)| *tat > now_us) {
                        shards[Self::shard(key)].lock().insert(key, tat);
                        restored += 1;
                    }
                    Some(restored)
                }
                _ => None,
            },
        }
    }
}

/// One GCRA decision: with theoretical arrival time `tat` (µs), emission
/// `interval` and burst `tolerance` (µs), a send at `now_ms` is allowed
/// (the new arrival time) or refused (the ms to wait, at least 1).
fn gcra_step(tat: u64, now_ms: u64, interval: u64, tolerance: u64) -> Result<u64, u64> {
    let now_us = now_ms.saturating_mul(1_000);
    let base = tat.max(now_us);
    if base - now_us > tolerance {
        return Err((base - now_us - tolerance).div_ceil(1_000).max(1));
    }
    Ok(base + interval)
}

/// A keyless rate limit, lock-free: one tenant's VERIFY or CHECK attempts.
/// A GCRA over one atomic theoretical arrival time, on the engine's clock:
/// `per_s` attempts a second, a burst of one second's worth.
pub(crate) struct RateGate {
    interval_us: u64,
    tolerance_us: u64,
    tat_us: std::sync::atomic::AtomicU64,
}

impl RateGate {
    /// A gate for `per_s` attempts a second; `None` when 0 (no limit).
    pub(crate) fn per_second(per_s: u32) -> Option<RateGate> {
        (per_s > 0).then(|| {
            let interval_us = (1_000_000 / u64::from(per_s)).max(1);
            RateGate {
                interval_us,
                tolerance_us: interval_us * u64::from(per_s - 1),
                tat_us: std::sync::atomic::AtomicU64::new(0),
            }
        })
    }

    /// Lets one attempt through at `now` (ms), or answers the ms to wait.
    pub(crate) fn acquire(&self, now_ms: u64) -> Result<(), u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut tat = self.tat_us.load(Relaxed);
        loop {
            let next = gcra_step(tat, now_ms, self.interval_us, self.tolerance_us)?;
            match self
                .tat_us
                .compare_exchange_weak(tat, next, Relaxed, Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

/// Gives memory back once a map is mostly empty, but not on every janitor
/// pass: shrinking a map that is about to grow again only churns pages.
fn shrink_if_mostly_empty<V>(map: &mut Map<V>) {
    if map.capacity() > 1_024 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
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
    fn the_shard_comes_from_bits_the_maps_do_not_use() {
        // The map's control tags are the top 7 bits, its buckets the low ones.
        let base = 0x0123_4567_89ab_cdef_u64;
        for top in 0..128u64 {
            let k = (base & (u64::MAX >> 7)) | (top << 57);
            assert_eq!(KeyedLimiter::shard(k), KeyedLimiter::shard(base));
        }
        assert_eq!(
            KeyedLimiter::shard(base ^ 0xffff),
            KeyedLimiter::shard(base)
        );
        let mut seen = vec![false; SHARDS];
        for i in 0..SHARDS as u64 {
            seen[KeyedLimiter::shard(i << (57 - SHARDS.trailing_zeros()))] = true;
        }
        assert!(seen.iter().all(|&s| s), "every shard is reachable");
    }

    #[test]
    fn a_rate_gate_allows_its_burst_then_its_rate() {
        assert!(RateGate::per_second(0).is_none());
        let g = RateGate::per_second(100).unwrap();
        for _ in 0..100 {
            assert!(g.acquire(1_000).is_ok());
        }
        assert_eq!(g.acquire(1_000), Err(10));
        assert!(g.acquire(1_010).is_ok(), "one more every 10 ms");
        assert!(g.acquire(1_010).is_err());
        assert!(g.acquire(3_000).is_ok(), "idle time refills the burst");
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

    #[test]
    fn gcra_sustains_rates_finer_than_one_per_millisecond() {
        // 200,000 per second: after the burst, 200 per millisecond, not 1.
        let l = KeyedLimiter::new("tenant", Limit::new(200_000, 1_000)).unwrap();
        let mut admitted = 0u64;
        for ms in 0..3_000u64 {
            while l.acquire(9, ms).is_ok() {
                admitted += 1;
            }
        }
        // The burst (200,000) plus 3 s at 200 per ms, within one interval.
        assert!(
            (799_000..=800_200).contains(&admitted),
            "admitted {admitted}"
        );
        assert_eq!(l.acquire(9, 2_999).unwrap_err(), 1);
    }

    #[test]
    fn exact_logs_of_both_sizes_hold_across_the_32_bit_wrap() {
        // Stamps keep the low 32 bits of the time: the window still holds
        // when the clock passes a multiple of 2^32 ms.
        let start = (1u64 << 33) - 2_000;
        for max in [5u32, 10, 16] {
            let l = KeyedLimiter::new("destination", Limit::new(max, 300_000)).unwrap();
            for i in 0..u64::from(max) {
                assert!(l.acquire(3, start + i * 500).is_ok(), "max {max}, send {i}");
            }
            let after_wrap = start + 4_000;
            assert_eq!(l.remaining(3, after_wrap), 0, "max {max}");
            assert_eq!(l.acquire(3, after_wrap).unwrap_err(), 300_000 - 4_000);
            assert!(l.acquire(3, start + 300_000).is_ok(), "max {max}");
            let t = l.acquire(4, after_wrap).unwrap();
            l.undo(t);
            assert_eq!(l.remaining(4, after_wrap), max, "undo gives the send back");
            assert_eq!(l.retain_recent(start + 400_000), 1, "max {max}");
        }
    }
}
