//! Time for the engine: one [`Clock`] trait so that tests move time by hand
//! instead of sleeping.
//!
//! Every deadline in the engine is a Unix time in milliseconds read from a
//! `Clock`. This module must never read `SystemTime` anywhere but in
//! [`SystemClock::new`]: the running clock is monotonic (an `Instant` offset
//! from a wall-clock anchor), so a wall-clock step cannot resurrect an expired
//! code or expire a live one.

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
        self.anchor_unix_ms + self.anchor.elapsed().as_millis() as u64
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
