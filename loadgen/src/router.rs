//! Routes codes delivered to the simulated phones (the outbox) to the flows
//! waiting for them, by challenge id.
//!
//! The map is bounded: a code that arrives before its flow asks is parked for a
//! short while, and when the map is full the newcomer is dropped and counted
//! (that flow then times out and counts as an error). This module must never
//! hold its lock across an `.await` and never grow without bound.

use crate::target::{Delivery, Key};
use ahash::AHashMap;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

enum Slot {
    Waiting(oneshot::Sender<(String, Instant)>),
    Arrived(String, Instant),
}

/// What [`CodeRouter::wait`] found.
pub enum Wait {
    /// The code was already there: `(code, arrival time)`.
    Ready(String, Instant),
    /// Await this for the code.
    Pending(oneshot::Receiver<(String, Instant)>),
    /// The map is full; the flow cannot wait.
    Full,
}

/// The bounded id → waiting-flow map.
pub struct CodeRouter {
    map: Mutex<AHashMap<Key, Slot>>,
    cap: usize,
    /// Deliveries dropped because the map was full.
    pub dropped: AtomicU64,
    /// Deliveries received.
    pub received: AtomicU64,
}

impl CodeRouter {
    /// A router holding at most `cap` entries.
    pub fn new(cap: usize) -> Self {
        Self {
            map: Mutex::new(AHashMap::with_capacity(cap.min(1 << 16))),
            cap,
            dropped: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }

    /// Hands a delivered code to its flow, or parks it. Locking behaviour:
    /// takes the map lock briefly.
    pub fn deliver(&self, id: Key, code: String, at: Instant) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let mut m = self.map.lock();
        match m.remove(&id) {
            Some(Slot::Waiting(tx)) => {
                drop(m);
                let _ = tx.send((code, at));
            }
            Some(Slot::Arrived(..)) | None => {
                if m.len() < self.cap {
                    m.insert(id, Slot::Arrived(code, at));
                } else {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Registers interest in `id`'s code. Locking behaviour: takes the map lock briefly.
    pub fn wait(&self, id: Key) -> Wait {
        let mut m = self.map.lock();
        if let Some(Slot::Arrived(..)) = m.get(&id) {
            if let Some(Slot::Arrived(code, at)) = m.remove(&id) {
                return Wait::Ready(code, at);
            }
        }
        if m.len() >= self.cap {
            return Wait::Full;
        }
        let (tx, rx) = oneshot::channel();
        m.insert(id, Slot::Waiting(tx));
        Wait::Pending(rx)
    }

    /// Forgets a flow that gave up. Locking behaviour: takes the map lock briefly.
    pub fn cancel(&self, id: &Key) {
        let mut m = self.map.lock();
        if let Some(Slot::Waiting(_)) = m.get(id) {
            m.remove(id);
        }
    }

    /// Drops parked codes older than `age` (codes nobody waits for: the pool's,
    /// resends'). Locking behaviour: holds the map lock for one pass.
    pub fn sweep(&self, age: Duration) {
        let now = Instant::now();
        self.map.lock().retain(|_, s| match s {
            Slot::Arrived(_, at) => now.duration_since(*at) < age,
            Slot::Waiting(tx) => !tx.is_closed(),
        });
    }

    /// Entries currently held.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Feeds deliveries from `rx` into the router until the channel closes,
    /// sweeping parked codes older than 2 s every half second.
    pub async fn run(self: std::sync::Arc<Self>, mut rx: mpsc::Receiver<Delivery>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                d = rx.recv() => match d {
                    Some(d) => self.deliver(d.id, d.code, Instant::now()),
                    None => break,
                },
                _ = tick.tick() => self.sweep(Duration::from_secs(2)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_and_late_codes_both_reach_the_flow_and_the_map_is_bounded() {
        let r = CodeRouter::new(2);
        r.deliver([1; 16], "111111".into(), Instant::now());
        assert!(matches!(r.wait([1; 16]), Wait::Ready(c, _) if c == "111111"));
        let Wait::Pending(mut rx) = r.wait([2; 16]) else {
            panic!("expected pending")
        };
        r.deliver([2; 16], "222222".into(), Instant::now());
        assert_eq!(rx.try_recv().unwrap().0, "222222");
        r.deliver([3; 16], "3".into(), Instant::now());
        r.deliver([4; 16], "4".into(), Instant::now());
        r.deliver([5; 16], "5".into(), Instant::now());
        assert_eq!(r.dropped.load(Ordering::Relaxed), 1);
        assert!(matches!(r.wait([6; 16]), Wait::Full));
        r.sweep(Duration::ZERO);
        assert!(r.is_empty());
    }
}
