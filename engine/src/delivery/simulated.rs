//! The simulated carrier: configurable latency, failures, throttling,
//! rejections, lost messages, receipt delay, and outages scheduled or switched
//! at run time. What it delivers goes to the outbox (the people's phones).
//!
//! It logs which dial plan a voice call got, never the text (it holds the code)
//! and never the full number.
//!
//! Receipts due after `receipt_delay_ms` wait in one bounded FIFO per carrier
//! (the delay is the carrier's constant, so arrival order is due order),
//! drained by one task: a task and a timer per message cost about a fifth of
//! the gateway's CPU per ISSUE at saturation. A full line loses the receipt, as a
//! carrier that drops delivery reports does; the router's receipt timeout then
//! ends the message as failed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use super::carrier::{
    Carrier, CarrierMessage, DialPlan, HandsetAnswer, Handsets, MessagePurpose, Receipt, Receipts,
    SendFuture, SendOutcome,
};
use super::config::{OutageMode, SimulatedConfig};
use crate::types::{ChallengeId, Channel, TenantId};

/// A message as the person receives it (outbox subscribers play the phones).
#[derive(Clone, Debug)]
pub struct OutboxMessage {
    /// Whose challenge.
    pub tenant: TenantId,
    /// The challenge.
    pub id: ChallengeId,
    /// SMS, voice or e-mail.
    pub channel: Channel,
    /// The E.164 number (without extension) or e-mail address.
    pub destination: String,
    /// The carrier that delivered it.
    pub carrier: String,
    /// The sender id, caller id or from address.
    pub sender: String,
    /// What the person reads or hears; for voice it starts with the dial plan.
    pub text: String,
}

/// Counters of one simulated carrier (tests and tools).
#[derive(Debug, Default)]
pub struct SimCounters {
    /// Sends received.
    pub sends: AtomicU64,
    /// Sends accepted.
    pub accepted: AtomicU64,
    /// Sends failed (including outages).
    pub failed: AtomicU64,
    /// Sends throttled.
    pub throttled: AtomicU64,
    /// Sends rejected.
    pub rejected: AtomicU64,
    /// Sends left hanging (outage in hang mode).
    pub hung: AtomicU64,
    /// Messages put in the outbox.
    pub delivered: AtomicU64,
    /// Messages accepted and never delivered.
    pub lost: AtomicU64,
    /// Receipts lost because the receipt line was full (also counted in `lost`).
    pub line_overflow: AtomicU64,
}

/// Receipts a carrier holds at most while their delay runs (the router's
/// receipt book holds about as many awaited receipts).
const RECEIPT_LINE_CAPACITY: usize = 1 << 20;

/// A message accepted, waiting for its receipt delay.
struct DueReceipt {
    at: Instant,
    msg: CarrierMessage,
    receipts: Receipts,
}

/// The bounded FIFO of receipts waiting for their delay, and the wake-up of
/// the one task that drains it.
#[derive(Default)]
struct ReceiptLine {
    queue: Mutex<VecDeque<DueReceipt>>,
    /// Signalled when the queue goes from empty to not empty, and at drop.
    wake: Arc<Notify>,
    drainer_started: AtomicBool,
}

/// Receipts delivered per lock of the line (a push waits for at most this many pops).
const LINE_BATCH: usize = 256;

const UP: u8 = 0;
const DOWN_FAIL: u8 = 1;
const DOWN_HANG: u8 = 2;

/// A simulated carrier.
pub struct SimulatedCarrier {
    name: String,
    cfg: SimulatedConfig,
    epoch: Instant,
    outage: AtomicU8,
    outbox: Option<broadcast::Sender<Arc<OutboxMessage>>>,
    counters: Arc<SimCounters>,
    line: ReceiptLine,
    line_capacity: usize,
    line_full: metrics::Counter,
    /// Where confirmation calls are answered (set once by the engine).
    handsets: std::sync::OnceLock<Weak<dyn Handsets>>,
}

impl Drop for SimulatedCarrier {
    fn drop(&mut self) {
        // The drainer holds only a weak reference: wake it so that it ends.
        self.line.wake.notify_one();
    }
}

impl std::fmt::Debug for SimulatedCarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedCarrier")
            .field("name", &self.name)
            .finish()
    }
}

impl SimulatedCarrier {
    /// A simulated carrier delivering into `outbox` (if any). Scheduled outages
    /// count from now.
    pub fn new(
        name: &str,
        cfg: SimulatedConfig,
        outbox: Option<broadcast::Sender<Arc<OutboxMessage>>>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            cfg,
            epoch: Instant::now(),
            outage: AtomicU8::new(UP),
            outbox,
            counters: Arc::default(),
            line: ReceiptLine::default(),
            line_capacity: RECEIPT_LINE_CAPACITY,
            line_full: metrics::counter!(
                "watchword_simulated_receipts_lost_total",
                "carrier" => name.to_owned(),
                "reason" => "line_full"
            ),
            handsets: std::sync::OnceLock::new(),
        }
    }

    /// Where this carrier's handsets answer confirmation calls. Set once; a
    /// second call is ignored. Without it, a call is delivered and never
    /// answered.
    pub fn attach_handsets(&self, handsets: Weak<dyn Handsets>) {
        let _ = self.handsets.set(handsets);
    }

    /// A confirmation call rang: the carrier answers it by itself after
    /// `auto_answer.delay_ms` when nobody of the tenant holds the handsets
    /// (no outbox subscriber), and reports it not answered after
    /// `ring_timeout_ms` otherwise (a later answer from a subscriber wins;
    /// the engine keeps the first outcome).
    fn ring(&self, tenant: TenantId, id: ChallengeId) {
        let Some(handsets) = self.handsets.get().cloned() else {
            return;
        };
        let Some(h) = handsets.upgrade() else { return };
        let auto = self
            .cfg
            .auto_answer
            .as_ref()
            .filter(|_| !h.subscribed(tenant))
            .map(|a| (Duration::from_millis(a.delay_ms), a.digits.clone()));
        let (after, answer) = match auto {
            Some((delay, digits)) => (delay, HandsetAnswer::Digits(digits)),
            None => (
                Duration::from_millis(self.cfg.ring_timeout_ms),
                HandsetAnswer::NotAnswered,
            ),
        };
        drop(h);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(h) = handsets.upgrade() {
                h.answer(tenant, id, answer);
            }
        });
    }

    /// Switches an outage on (`Some`) or off (`None`) now.
    pub fn set_outage(&self, mode: Option<OutageMode>) {
        let v = match mode {
            None => UP,
            Some(OutageMode::Fail) => DOWN_FAIL,
            Some(OutageMode::Hang) => DOWN_HANG,
        };
        self.outage.store(v, Ordering::Relaxed);
    }

    /// The counters.
    pub fn counters(&self) -> &Arc<SimCounters> {
        &self.counters
    }

    fn current_outage(&self) -> u8 {
        let manual = self.outage.load(Ordering::Relaxed);
        if manual != UP || self.cfg.outages.is_empty() {
            return manual;
        }
        let t = self.epoch.elapsed().as_millis() as u64;
        self.cfg
            .outages
            .iter()
            .find(|o| t >= o.start_ms && t < o.start_ms + o.duration_ms)
            .map_or(UP, |o| match o.mode {
                OutageMode::Fail => DOWN_FAIL,
                OutageMode::Hang => DOWN_HANG,
            })
    }

    fn decide(&self) -> SendOutcome {
        let c = &self.cfg;
        if c.failure_rate == 0.0 && c.throttle_rate == 0.0 && c.reject_rate == 0.0 {
            return SendOutcome::Accepted;
        }
        let x: f64 = rand::rng().random();
        if x < c.failure_rate {
            SendOutcome::Failed {
                reason: "simulated failure".into(),
            }
        } else if x < c.failure_rate + c.throttle_rate {
            SendOutcome::Throttled {
                retry_after: Duration::from_millis(c.throttle_retry_after_ms),
            }
        } else if x < c.failure_rate + c.throttle_rate + c.reject_rate {
            SendOutcome::Rejected {
                reason: "simulated rejection".into(),
            }
        } else {
            SendOutcome::Accepted
        }
    }

    fn deliver(&self, msg: CarrierMessage, receipts: &Receipts) {
        let lost = self.cfg.lost_rate > 0.0 && rand::rng().random::<f64>() < self.cfg.lost_rate;
        if lost {
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if msg.channel == Channel::Voice {
            tracing::debug!(carrier = %self.name, dial_plan = msg.dial_plan.kind(), "simulated voice call");
        }
        let token = msg.token;
        if msg.purpose == MessagePurpose::CallConfirmation {
            self.ring(msg.tenant, msg.id);
        }
        let Some(outbox) = self.outbox.as_ref().filter(|o| o.receiver_count() > 0) else {
            // Nobody is holding the phones: delivered all the same.
            self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            receipts.report(token, Receipt::Delivered);
            return;
        };
        let text = match (&msg.channel, &msg.dial_plan) {
            (Channel::Voice, DialPlan::Direct) => format!("[dial {}] {}", msg.to, msg.text),
            (Channel::Voice, DialPlan::Tones(ext)) => {
                format!(
                    "[dial {}, then tones {ext} after connect] {}",
                    msg.to, msg.text
                )
            }
            (Channel::Voice, DialPlan::Operator(ext)) => format!(
                "[dial {}, ask the operator to transfer to {ext}, speak once transferred] {}",
                msg.to, msg.text
            ),
            _ => msg.text,
        };
        let out = OutboxMessage {
            tenant: msg.tenant,
            id: msg.id,
            channel: msg.channel,
            destination: msg.to,
            carrier: self.name.clone(),
            sender: msg.sender,
            text,
        };
        // A subscriber gone since the check is not an error either.
        let _ = outbox.send(Arc::new(out));
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        receipts.report(token, Receipt::Delivered);
    }

    /// Queues an accepted message's receipt for `at`; starts the drainer on first use.
    fn queue_receipt(self: &Arc<Self>, at: Instant, msg: CarrierMessage, receipts: Receipts) {
        let line = &self.line;
        let was_empty = {
            let mut q = line.queue.lock();
            if q.len() >= self.line_capacity {
                drop(q);
                self.counters.lost.fetch_add(1, Ordering::Relaxed);
                self.counters.line_overflow.fetch_add(1, Ordering::Relaxed);
                self.line_full.increment(1);
                return;
            }
            q.push_back(DueReceipt { at, msg, receipts });
            q.len() == 1
        };
        // A plain load first: the swap's write would bounce the line between
        // the workers on every receipt, though it succeeds only once.
        if !line.drainer_started.load(Ordering::Acquire)
            && !line.drainer_started.swap(true, Ordering::AcqRel)
        {
            tokio::spawn(drain_receipts(Arc::downgrade(self), Arc::clone(&line.wake)));
        } else if was_empty {
            line.wake.notify_one();
        }
    }
}

/// The one task per carrier that delivers queued receipts when they are due.
/// Ends when the carrier is dropped.
async fn drain_receipts(carrier: Weak<SimulatedCarrier>, wake: Arc<Notify>) {
    let mut batch = Vec::with_capacity(LINE_BATCH);
    loop {
        let next_due = {
            let Some(c) = carrier.upgrade() else { return };
            let now = Instant::now();
            // The head left after the pops is the next due: a receipt queued
            // while this batch is delivered is due later than it, or, on an
            // empty line, wakes the `notified` below (its permit is kept).
            let head = {
                let mut q = c.line.queue.lock();
                while batch.len() < LINE_BATCH && q.front().is_some_and(|d| d.at <= now) {
                    batch.extend(q.pop_front());
                }
                q.front().map(|d| d.at)
            };
            let more = batch.len() == LINE_BATCH;
            for d in batch.drain(..) {
                c.deliver(d.msg, &d.receipts);
            }
            (!more).then_some(head)
        };
        match next_due {
            // A full batch: let other tasks run, then go on.
            None => tokio::task::yield_now().await,
            Some(Some(at)) => tokio::time::sleep_until(at).await,
            Some(None) => wake.notified().await,
        }
    }
}

impl Carrier for Arc<SimulatedCarrier> {
    fn send(&self, msg: CarrierMessage, receipts: &Receipts) -> SendFuture {
        let c = &self.counters;
        c.sends.fetch_add(1, Ordering::Relaxed);
        let outage = self.current_outage();
        let latency = if self.cfg.latency_max_ms == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(
                rand::rng().random_range(self.cfg.latency_min_ms..=self.cfg.latency_max_ms),
            )
        };
        if outage == DOWN_HANG {
            c.hung.fetch_add(1, Ordering::Relaxed);
            return Box::pin(std::future::pending());
        }
        let outcome = if outage == DOWN_FAIL {
            SendOutcome::Failed {
                reason: "simulated outage".into(),
            }
        } else {
            self.decide()
        };
        let counter = match &outcome {
            SendOutcome::Accepted => &c.accepted,
            SendOutcome::Failed { .. } => &c.failed,
            SendOutcome::Throttled { .. } => &c.throttled,
            SendOutcome::Rejected { .. } => &c.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let accepted = outcome == SendOutcome::Accepted;
        let delay = Duration::from_millis(self.cfg.receipt_delay_ms);
        if accepted && latency.is_zero() && delay.is_zero() {
            // Fast path: delivered before the answer.
            self.deliver(msg, receipts);
            return Box::pin(std::future::ready(outcome));
        }
        let this = Arc::clone(self);
        let receipts = receipts.clone();
        Box::pin(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if accepted {
                if delay.is_zero() {
                    this.deliver(msg, &receipts);
                } else {
                    this.queue_receipt(Instant::now() + delay, msg, receipts);
                }
            }
            outcome
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::carrier::{ReceiptSink, ReceiptToken};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, Instant)>>);

    impl ReceiptSink for Recorder {
        fn report(&self, token: ReceiptToken, receipt: Receipt) {
            assert_eq!(receipt, Receipt::Delivered);
            self.0.lock().push((token.0, Instant::now()));
        }
    }

    fn message(token: u64) -> CarrierMessage {
        CarrierMessage {
            tenant: TenantId(0),
            id: ChallengeId([token as u8; 16]),
            channel: Channel::Email,
            to: "ann@example.com".into(),
            dial_plan: DialPlan::Direct,
            purpose: super::super::carrier::MessagePurpose::Code,
            sender: "otp@example.com".into(),
            text: "123456".into(),
            token: ReceiptToken(token),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn receipts_come_after_their_delay_in_order_and_a_full_line_loses_them() {
        let cfg = SimulatedConfig {
            latency_min_ms: 0,
            latency_max_ms: 0,
            receipt_delay_ms: 50,
            ..SimulatedConfig::default()
        };
        let mut sim = SimulatedCarrier::new("sim", cfg, None);
        sim.line_capacity = 3;
        let sim = Arc::new(sim);
        let recorder = Arc::new(Recorder::default());
        let receipts = Receipts(recorder.clone());
        let start = Instant::now();
        for token in 1..=5 {
            assert_eq!(
                sim.send(message(token), &receipts).await,
                SendOutcome::Accepted
            );
        }
        let c = sim.counters();
        assert_eq!(c.line_overflow.load(Ordering::Relaxed), 2);
        assert_eq!(c.lost.load(Ordering::Relaxed), 2);
        tokio::time::sleep(Duration::from_millis(49)).await;
        assert!(recorder.0.lock().is_empty(), "no receipt before its delay");
        tokio::time::sleep(Duration::from_millis(2)).await;
        let got = recorder.0.lock().clone();
        assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(got.iter().all(|r| r.1 - start >= Duration::from_millis(50)));
        // The line has room again once drained.
        sim.send(message(6), &receipts).await;
        tokio::time::sleep(Duration::from_millis(51)).await;
        assert_eq!(recorder.0.lock().last().map(|r| r.0), Some(6));
        assert_eq!(c.delivered.load(Ordering::Relaxed), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_drainer_ends_with_its_carrier() {
        let cfg = SimulatedConfig {
            latency_min_ms: 0,
            latency_max_ms: 0,
            ..SimulatedConfig::default()
        };
        let sim = Arc::new(SimulatedCarrier::new("sim", cfg, None));
        let receipts = Receipts::discard();
        sim.send(message(1), &receipts).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let weak = Arc::downgrade(&sim);
        let wake = Arc::clone(&sim.line.wake);
        // The carrier, the drainer and this test.
        assert_eq!(Arc::strong_count(&wake), 3);
        drop(sim);
        assert!(
            weak.upgrade().is_none(),
            "the drainer does not keep the carrier"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(Arc::strong_count(&wake), 1, "the drainer has ended");
    }
}
