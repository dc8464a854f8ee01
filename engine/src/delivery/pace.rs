//! Throughput pacing for carriers and senders: a GCRA on one atomic word, on
//! tokio's clock (so `tokio::time::pause()` reaches it).
//!
//! A pacer only says when the next send may go; it must never sleep while a
//! lock is held, and never allow more than its rate plus its burst.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A rate of `per_s` sends a second with a burst of `burst`.
#[derive(Debug)]
pub(crate) struct Pacer {
    epoch: Instant,
    /// Theoretical arrival time, ns after `epoch`.
    tat: AtomicU64,
    interval_ns: u64,
    tolerance_ns: u64,
}

impl Pacer {
    /// `None` when `per_s` is 0 (unlimited).
    pub(crate) fn new(per_s: u32, burst: u32) -> Option<Self> {
        (per_s > 0).then(|| {
            let interval_ns = 1_000_000_000 / u64::from(per_s);
            Self {
                epoch: Instant::now(),
                tat: AtomicU64::new(0),
                interval_ns,
                tolerance_ns: interval_ns * u64::from(burst.max(1) - 1),
            }
        })
    }

    fn now_ns(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64
    }

    /// Takes one slot now, or says how long until one may be free.
    pub(crate) fn try_acquire(&self) -> Result<(), Duration> {
        let now = self.now_ns();
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let base = tat.max(now);
            if base - now > self.tolerance_ns {
                return Err(Duration::from_nanos(base - now - self.tolerance_ns));
            }
            match self.tat.compare_exchange_weak(
                tat,
                base + self.interval_ns,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Takes the next free slot, whenever it is, and says how long until it
    /// comes. Each caller gets its own slot, so waiters never stampede.
    pub(crate) fn reserve(&self) -> Duration {
        let now = self.now_ns();
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let base = tat.max(now);
            match self.tat.compare_exchange_weak(
                tat,
                base + self.interval_ns,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Duration::from_nanos((base - now).saturating_sub(self.tolerance_ns));
                }
                Err(seen) => tat = seen,
            }
        }
    }

    /// The time between two slots.
    pub(crate) fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    /// How far ahead of now the slots are already taken.
    pub(crate) fn backlog(&self) -> Duration {
        let now = self.now_ns();
        let tat = self.tat.load(Ordering::Acquire);
        Duration::from_nanos(tat.saturating_sub(now).saturating_sub(self.tolerance_ns))
    }

    /// Waits for a reserved slot. The router's lanes never sleep on a
    /// pacer (they ask the router's timer to wake them); an SMPP bind paces
    /// its own submits with it.
    pub(crate) async fn until_ready(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_at_the_rate_with_the_burst() {
        let p = Pacer::new(100, 2).unwrap();
        assert!(p.try_acquire().is_ok());
        assert!(p.try_acquire().is_ok());
        let wait = p.try_acquire().unwrap_err();
        assert_eq!(wait, Duration::from_millis(10));
        let start = Instant::now();
        for _ in 0..100 {
            p.until_ready().await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(990) && took <= Duration::from_millis(1010),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_are_distinct_slots() {
        let p = Pacer::new(10, 1).unwrap();
        let ms: Vec<u128> = (0..5).map(|_| p.reserve().as_millis()).collect();
        assert_eq!(ms, vec![0, 100, 200, 300, 400]);
        assert_eq!(p.backlog(), Duration::from_millis(500));
    }
}
