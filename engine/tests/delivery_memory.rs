//! Memory per message in flight: 100,000 messages sent to a carrier that
//! holds every answer until the test releases it, the process's resident
//! memory read before and after (Linux `/proc/self/statm`); then the release,
//! and every message must end delivered.
//!
//! What the growth counts: each message's record (the job with its heap
//! strings, its intake permit, its try state) inside the lane's in-flight
//! set, its entry in the receipt book, and the carrier's own state per send,
//! here what an SMPP-like carrier keeps once a PDU is written (the token it
//! answers with). The ledger keeps counters only, so that the figure is the
//! router's. Messages go in a thousand at a time, each thousand once the
//! lanes have taken the previous one, so that the figure is that of messages
//! awaiting an answer, not of a transient queue. It runs on mimalloc, the
//! allocator of the `watchword` binary, and is the only test in its file: it
//! runs alone in its process.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use watchword_engine::delivery::{
    Carrier, CarrierConfig, CarrierMessage, CarrierSlot, ChallengeLedger, DeliveryJob, Limit,
    MessagePurpose, Receipt, ReceiptToken, Receipts, Router, RouterConfig, SendFuture, SendOutcome,
    SlotHint, TenantDelivery, normalize,
};
use watchword_engine::{ChallengeId, Channel, Code, DeliveryState, ManualClock, TenantId};

const N: u64 = 100_000;

/// Counts what the router reports; everything is deliverable.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ChallengeLedger for Counts {
    fn deliverable(&self, _: ChallengeId, _: SlotHint) -> bool {
        true
    }
    fn delivery_update(
        &self,
        _: ChallengeId,
        _: SlotHint,
        state: DeliveryState,
        _: CarrierSlot,
        _: &str,
        _: Option<&str>,
    ) {
        let c = match state {
            DeliveryState::Sent => &self.sent,
            DeliveryState::Delivered => &self.delivered,
            DeliveryState::Failed => &self.failed,
            _ => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A carrier that answers nothing until released, then accepts everything
/// and reports each delivered. Like an SMPP connection's window, it keeps a
/// table of the sends awaiting an answer, sized ahead (a waker each).
struct Gate {
    open: AtomicBool,
    waiting: Mutex<Vec<Waker>>,
    held: AtomicU64,
}

impl Gate {
    fn new(window: usize) -> Self {
        Self {
            open: AtomicBool::new(false),
            waiting: Mutex::new(Vec::with_capacity(window)),
            held: AtomicU64::new(0),
        }
    }

    fn release(&self) {
        self.open.store(true, Ordering::Release);
        for w in self.waiting.lock().iter() {
            w.wake_by_ref();
        }
    }
}

/// One send held at the gate: the token to answer with, and its place in
/// the gate's list of wakers (each poll replaces its own waker there).
struct Held {
    gate: Arc<Gate>,
    token: ReceiptToken,
    receipts: Receipts,
    slot: Option<u32>,
}

impl Future for Held {
    type Output = SendOutcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SendOutcome> {
        if !self.gate.open.load(Ordering::Acquire) {
            let slot = {
                let mut w = self.gate.waiting.lock();
                match self.slot {
                    Some(i) => {
                        w[i as usize].clone_from(cx.waker());
                        i
                    }
                    None => {
                        w.push(cx.waker().clone());
                        (w.len() - 1) as u32
                    }
                }
            };
            if self.slot.replace(slot).is_none() {
                self.gate.held.fetch_add(1, Ordering::Relaxed);
            }
            if !self.gate.open.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        self.receipts.report(self.token, Receipt::Delivered);
        Poll::Ready(SendOutcome::Accepted)
    }
}

/// The carrier's handle on the gate.
struct GateCarrier(Arc<Gate>);

impl Carrier for GateCarrier {
    fn send(&self, msg: CarrierMessage, receipts: &Receipts) -> SendFuture {
        Box::pin(Held {
            gate: Arc::clone(&self.0),
            token: msg.token,
            receipts: receipts.clone(),
            slot: None,
        })
    }
}

/// Resident memory, bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_messages_in_flight_take_under_50_mb() {
    let gate = Arc::new(Gate::new(N as usize));
    let mut cfg = RouterConfig {
        carriers: vec![CarrierConfig {
            name: "gate".into(),
            max_in_flight: N as usize,
            queue_capacity: N as usize,
            timeout_ms: 600_000,
            ..CarrierConfig::default()
        }],
        queue_capacity: N as usize,
        ..RouterConfig::default()
    };
    cfg.limits.destination = Limit::new(0, 1);
    cfg.limits.subject = Limit::new(0, 1);
    for p in &mut cfg.senders.pools {
        p.rate_per_s = 0;
    }
    let ledger = Arc::new(Counts::default());
    let custom: Vec<(String, Arc<dyn Carrier>)> =
        vec![("gate".into(), Arc::new(GateCarrier(gate.clone())))];
    let router =
        Router::start_with_carriers(cfg, ledger.clone(), ManualClock::new(0), custom).unwrap();
    let t = TenantDelivery::default();
    let destination = normalize(Channel::Sms, "+1 425 555 1234", &t).unwrap();
    let job = |n: u64| {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.to_le_bytes());
        DeliveryJob {
            tenant: TenantId(0),
            id: ChallengeId(id),
            slot_hint: SlotHint::NONE,
            channel: Channel::Sms,
            destination: destination.clone(),
            code: Code::from_parts(123456, 6).unwrap(),
            expires_at_ms: u64::MAX,
            locale: "en".into(),
            service_name: "Acme".into(),
            avoid_carrier: CarrierSlot::NONE,
            operator_assistance: false,
            purpose: MessagePurpose::Code,
        }
    };
    // Warm up (the first messages grow the structures' first blocks), and
    // let them through.
    for n in 0..1_000 {
        router.try_reserve().unwrap().send(job(n));
    }
    let started = std::time::Instant::now();
    while gate.held.load(Ordering::Relaxed) < 1_000 {
        assert!(started.elapsed() < Duration::from_secs(60), "warm-up stuck");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = rss();
    for batch in 1..N / 1_000 {
        for n in batch * 1_000..(batch + 1) * 1_000 {
            router.try_reserve().unwrap().send(job(n));
        }
        while gate.held.load(Ordering::Relaxed) < (batch + 1) * 1_000 {
            assert!(started.elapsed() < Duration::from_secs(120), "stuck");
            tokio::task::yield_now().await;
        }
    }
    while gate.held.load(Ordering::Relaxed) < N {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "held {}",
            gate.held.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = rss();
    let grown = after.saturating_sub(before);
    let per = grown as f64 / (N - 1_000) as f64;
    println!(
        "{N} messages awaiting the carrier's answer: resident memory {:.1} MB -> {:.1} MB, \
         {per:.0} bytes per message; {:.1} MB for {N}",
        before as f64 / 1e6,
        after as f64 / 1e6,
        per * N as f64 / 1e6
    );
    assert_eq!(router.queue_depth(), N as usize, "all in flight");
    assert!(
        per * (N as f64) < 50e6,
        "{per:.0} bytes per message in flight: {:.1} MB for {N}",
        per * N as f64 / 1e6
    );
    // The release: every message ends delivered.
    gate.release();
    while ledger.delivered.load(Ordering::Relaxed) < N {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "delivered {}",
            ledger.delivered.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = router.stats();
    assert_eq!((s.accepted, s.delivered, s.failed), (N, N, 0));
    assert_eq!(ledger.sent.load(Ordering::Relaxed), N);
    assert_eq!(ledger.failed.load(Ordering::Relaxed), 0);
    assert_eq!(router.queue_depth(), 0);
}
