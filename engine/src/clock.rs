//! Time for the engine: one [`Clock`] trait so that tests move time by hand
//! instead of sleeping.
//!
//! Every deadline in the engine is a Unix time in milliseconds read from a
//! `Clock`. This module must never read `SystemTime` anywhere but in
//! [`SystemClock::new`]: the running clock is monotonic (a monotonic reading
//! offset from a wall-clock anchor), so a wall-clock step cannot resurrect an
//! expired code or expire a live one.
//!
//! On Linux the running clock is `CLOCK_MONOTONIC_COARSE` (a few nanoseconds
//! a read instead of ~50 on this project's VMs; its resolution is the kernel
//! tick, 1 to 4 ms), used only when its resolution is 4 ms or better; every
//! deadline decision reads the same clock, so "expired" has one meaning.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of the current time, in Unix milliseconds, that never goes backwards.
pub trait Clock: Send + Sync + 'static {
    /// The current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The real clock: a wall-clock anchor taken once, advanced by a monotonic `Instant`.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    anchor_unix_ms: u64,
    anchor: Instant,
    /// The coarse monotonic reading at the anchor, when the coarse clock is used.
    coarse_anchor_ms: Option<u64>,
}

#[cfg(target_os = "linux")]
fn coarse_ms() -> Option<u64> {
    use rustix::time::{ClockId, clock_getres, clock_gettime};
    let res = clock_getres(ClockId::MonotonicCoarse);
    if res.tv_sec != 0 || res.tv_nsec > 4_000_000 {
        return None;
    }
    let t = clock_gettime(ClockId::MonotonicCoarse);
    Some(t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000)
}

#[cfg(not(target_os = "linux"))]
fn coarse_ms() -> Option<u64> {
    None
}

impl SystemClock {
    /// A clock anchored at the current wall-clock time.
    pub fn new() -> Self {
        let anchor_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            anchor_unix_ms,
            anchor: Instant::now(),
            coarse_anchor_ms: coarse_ms(),
        }
    }

    /// A shared handle, the form the engine takes.
    pub fn shared() -> Arc<dyn Clock> {
        Arc::new(Self::new())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        if let Some(anchor) = self.coarse_anchor_ms {
            #[cfg(target_os = "linux")]
            {
                let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
                let now = t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000;
                return self.anchor_unix_ms + now.saturating_sub(anchor);
            }
        }
        self.anchor_unix_ms + self.anchor.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_near_wall_time_and_monotonic() {
        let c = SystemClock::new();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let a = c.now_ms();
        assert!(a.abs_diff(wall) < 1000, "{a} vs {wall}");
        let mut last = a;
        for _ in 0..10_000 {
            let n = c.now_ms();
            assert!(n >= last);
            last = n;
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(5);
        assert_eq!(c.now_ms(), 5);
        c.advance_s(2);
        assert_eq!(c.now_ms(), 2005);
    }
}

/// A clock that only moves when told to; for tests and simulations.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A manual clock starting at `start_ms` (Unix milliseconds).
    pub fn new(start_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            now_ms: AtomicU64::new(start_ms),
        })
    }

    /// Moves the clock forward by `ms` milliseconds.
    pub fn advance_ms(&self, ms: u64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Moves the clock forward by `s` seconds.
    pub fn advance_s(&self, s: u64) {
        self.advance_ms(s * 1000);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}
