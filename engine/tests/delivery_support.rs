//! Shared helpers for the delivery tests (included with `#[path]`): an
//! in-memory ledger and a recording carrier wrapper.
//!
//! Test-only; it must never be used by production code.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use watchword_engine::delivery::{
    Carrier, CarrierMessage, CarrierSlot, ChallengeLedger, Receipts, SendFuture, SlotHint,
};
use watchword_engine::{ChallengeId, DeliveryState};

/// What the ledger knows about one challenge.
#[derive(Debug, Clone)]
pub struct Rec {
    pub expires: Instant,
    pub approved: bool,
    pub updates: Vec<(DeliveryState, String, Option<String>)>,
}

/// An in-memory ledger on tokio's clock.
#[derive(Default)]
pub struct TestLedger {
    pub recs: Mutex<HashMap<ChallengeId, Rec>>,
}

impl TestLedger {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn add(&self, n: u64, ttl: Duration) -> ChallengeId {
        let id = id(n);
        self.recs.lock().insert(
            id,
            Rec {
                expires: Instant::now() + ttl,
                approved: false,
                updates: Vec::new(),
            },
        );
        id
    }

    pub fn approve(&self, id: ChallengeId) {
        if let Some(r) = self.recs.lock().get_mut(&id) {
            r.approved = true;
        }
    }

    pub fn last(&self, id: ChallengeId) -> Option<(DeliveryState, String, Option<String>)> {
        self.recs
            .lock()
            .get(&id)
            .and_then(|r| r.updates.last().cloned())
    }

    /// (delivered, failed, unfinished) over every challenge.
    pub fn tally(&self) -> (usize, usize, usize) {
        let recs = self.recs.lock();
        let mut t = (0, 0, 0);
        for r in recs.values() {
            match r.updates.last().map(|u| u.0) {
                Some(DeliveryState::Delivered) => t.0 += 1,
                Some(DeliveryState::Failed) => t.1 += 1,
                _ => t.2 += 1,
            }
        }
        t
    }

    /// Challenges whose state went backwards or ended twice.
    pub fn regressions(&self) -> usize {
        let recs = self.recs.lock();
        recs.values()
            .filter(|r| {
                let finals = r
                    .updates
                    .iter()
                    .filter(|u| matches!(u.0, DeliveryState::Delivered | DeliveryState::Failed))
                    .count();
                finals > 1 || r.updates.windows(2).any(|w| w[1].0 < w[0].0)
            })
            .count()
    }
}

pub fn id(n: u64) -> ChallengeId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    ChallengeId(b)
}

impl ChallengeLedger for TestLedger {
    fn deliverable(&self, id: ChallengeId, _hint: SlotHint) -> bool {
        self.recs
            .lock()
            .get(&id)
            .is_some_and(|r| !r.approved && Instant::now() < r.expires)
    }

    fn delivery_update(
        &self,
        id: ChallengeId,
        _hint: SlotHint,
        state: DeliveryState,
        _carrier: CarrierSlot,
        carrier_name: &str,
        reason: Option<&str>,
    ) {
        if let Some(r) = self.recs.lock().get_mut(&id) {
            r.updates
                .push((state, carrier_name.to_owned(), reason.map(str::to_owned)));
        }
    }
}

/// One send seen by a recording carrier.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: ChallengeId,
    pub at: Instant,
    pub deliverable: bool,
}

/// Wraps a carrier and records every send and whether it was still allowed.
pub struct Recording {
    pub inner: Arc<dyn Carrier>,
    pub ledger: Arc<TestLedger>,
    pub seen: Mutex<Vec<Seen>>,
    pub sends: AtomicU64,
}

impl Recording {
    pub fn new(inner: Arc<dyn Carrier>, ledger: Arc<TestLedger>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            ledger,
            seen: Mutex::new(Vec::new()),
            sends: AtomicU64::new(0),
        })
    }

    pub fn count(&self) -> u64 {
        self.sends.load(Ordering::Relaxed)
    }

    pub fn violations(&self) -> usize {
        self.seen.lock().iter().filter(|s| !s.deliverable).count()
    }
}

impl Carrier for Recording {
    fn send(&self, msg: CarrierMessage, receipts: &Receipts) -> SendFuture {
        self.sends.fetch_add(1, Ordering::Relaxed);
        self.seen.lock().push(Seen {
            id: msg.id,
            at: Instant::now(),
            deliverable: self.ledger.deliverable(msg.id, SlotHint::NONE),
        });
        self.inner.send(msg, receipts)
    }
}

/// Every recorded send, all carriers together, per challenge: (tries, first, last).
pub fn tries_per_id(all: &[&Recording]) -> HashMap<ChallengeId, (usize, Instant, Instant)> {
    let mut m: HashMap<ChallengeId, (usize, Instant, Instant)> = HashMap::new();
    for r in all {
        for s in r.seen.lock().iter() {
            let e = m.entry(s.id).or_insert((0, s.at, s.at));
            e.0 += 1;
            e.1 = e.1.min(s.at);
            e.2 = e.2.max(s.at);
        }
    }
    m
}
