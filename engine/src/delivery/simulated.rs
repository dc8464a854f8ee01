//! The simulated carrier: configurable latency, failures, throttling,
//! rejections, lost messages, receipt delay, and outages scheduled or switched
//! at run time. What it delivers goes to the outbox (the people's phones).
//!
//! It logs which dial plan a voice call got, never the text (it holds the code)
//! and never the full number.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::carrier::{
    Carrier, CarrierMessage, DialPlan, Receipt, Receipts, SendFuture, SendOutcome,
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
}

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
        }
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
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        this.deliver(msg, &receipts);
                    });
                }
            }
            outcome
        })
    }
}
