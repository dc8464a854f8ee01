//! A carrier's circuit breaker: consecutive failures open it for a cooldown
//! that doubles after each failed probe; after the cooldown one half-open probe
//! goes through, and its success closes the breaker.
//!
//! Runs on tokio's clock. Its lock is held for a few instructions and never
//! across an `.await`. While the breaker is closed with no failure counted,
//! `peek`, `admit` and `success` read one atomic flag and take no lock (every
//! message asks them).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::config::BreakerConfig;

/// The breaker's state, as exported in the gauge: 0 closed, 1 half-open, 2 open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Traffic flows.
    Closed,
    /// One probe is allowed (or in flight).
    HalfOpen,
    /// No traffic until the cooldown ends.
    Open,
}

impl BreakerState {
    /// The gauge value.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

#[derive(Debug)]
struct Inner {
    failures: u32,
    /// Set while open (or half-open): when the next probe may go.
    open_until: Option<Instant>,
    cooldown: Duration,
    probe_in_flight: bool,
}

/// One carrier's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
    /// False while closed with no failure counted and no probe out; written
    /// under the lock, read without it by the fast paths.
    dirty: AtomicBool,
}

/// Whether a send may go, and if so whether it is the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Yes,
    Probe,
    /// Not before this long.
    No(Duration),
}

impl Breaker {
    pub(crate) fn new(cfg: BreakerConfig) -> Self {
        let cooldown = Duration::from_millis(cfg.cooldown_ms);
        Self {
            cfg,
            inner: Mutex::new(Inner {
                failures: 0,
                open_until: None,
                cooldown,
                probe_in_flight: false,
            }),
            dirty: AtomicBool::new(false),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        let g = self.inner.lock();
        match g.open_until {
            None => BreakerState::Closed,
            Some(t) if g.probe_in_flight || Instant::now() >= t => BreakerState::HalfOpen,
            Some(_) => BreakerState::Open,
        }
    }

    /// Whether a send could go now, without claiming the probe.
    pub(crate) fn peek(&self) -> Admit {
        if !self.dirty.load(Ordering::Acquire) {
            return Admit::Yes;
        }
        let g = self.inner.lock();
        match g.open_until {
            None => Admit::Yes,
            Some(_) if g.probe_in_flight => Admit::No(Duration::from_millis(10)),
            Some(t) => {
                let now = Instant::now();
                if now >= t {
                    Admit::Probe
                } else {
                    Admit::No(t - now)
                }
            }
        }
    }

    /// Claims the right to send (the probe, when half-open).
    pub(crate) fn admit(&self) -> Admit {
        if !self.dirty.load(Ordering::Acquire) {
            return Admit::Yes;
        }
        let mut g = self.inner.lock();
        match g.open_until {
            None => Admit::Yes,
            Some(_) if g.probe_in_flight => Admit::No(Duration::from_millis(10)),
            Some(t) => {
                let now = Instant::now();
                if now >= t {
                    g.probe_in_flight = true;
                    Admit::Probe
                } else {
                    Admit::No(t - now)
                }
            }
        }
    }

    /// The carrier answered (accepted, rejected or throttled). Returns true if
    /// this closed the breaker.
    pub(crate) fn success(&self) -> bool {
        if !self.dirty.load(Ordering::Acquire) {
            return false;
        }
        let mut g = self.inner.lock();
        g.failures = 0;
        g.probe_in_flight = false;
        let was_open = g.open_until.take().is_some();
        self.dirty.store(false, Ordering::Release);
        if was_open {
            g.cooldown = Duration::from_millis(self.cfg.cooldown_ms);
        }
        was_open
    }

    /// A send failed or timed out. Returns true if this opened the breaker.
    pub(crate) fn failure(&self) -> bool {
        let mut g = self.inner.lock();
        g.failures = g.failures.saturating_add(1);
        self.dirty.store(true, Ordering::Release);
        let now = Instant::now();
        if g.probe_in_flight || g.open_until.is_some() {
            // A failed probe (or a straggler): open again, longer.
            let was_probe = std::mem::take(&mut g.probe_in_flight);
            if was_probe {
                let max = Duration::from_millis(self.cfg.max_cooldown_ms.max(self.cfg.cooldown_ms));
                g.cooldown = (g.cooldown * 2).min(max);
            }
            g.open_until = Some(now + g.cooldown);
            return false;
        }
        if g.failures >= self.cfg.failure_threshold {
            g.open_until = Some(now + g.cooldown);
            return true;
        }
        false
    }

    /// A probe that never reached the carrier gives its claim back.
    pub(crate) fn release_probe(&self) {
        self.inner.lock().probe_in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            cooldown_ms: 1_000,
            max_cooldown_ms: 3_000,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_probes_backs_off_and_closes() {
        let b = Breaker::new(cfg());
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.failure());
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(b.admit(), Admit::No(_)));
        tokio::time::advance(Duration::from_millis(1_000)).await;
        assert_eq!(b.admit(), Admit::Probe);
        assert!(matches!(b.admit(), Admit::No(_)), "one probe at a time");
        b.failure();
        // Cooldown doubled to 2 s.
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert!(matches!(b.admit(), Admit::No(_)));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(b.admit(), Admit::Probe);
        b.failure();
        tokio::time::advance(Duration::from_millis(3_000)).await; // capped at 3 s
        assert_eq!(b.admit(), Admit::Probe);
        assert!(b.success());
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(), Admit::Yes);
    }
}
