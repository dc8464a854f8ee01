//! The router: admission (keyed limits), the bounded intake, carrier choice by
//! priority and weight, pacing, circuit breakers, retries with back-off and
//! jitter, failover, sender rotation, and receipts — until every accepted
//! message ends delivered or failed.
//!
//! The pipeline has no task and no timer per message. An accepted message is
//! a [`Record`] that moves by value: the router picks a carrier for it and
//! pushes it into that carrier's bounded queue ([`queue`]); one of the
//! carrier's few long-lived lanes ([`lane`]) takes it, asks the ledger once
//! more whether it may still be sent, and sends it, up to the carrier's window
//! of sends at once in one task; the answer decides whether it is done, waits
//! for its receipt in the [`ReceiptBook`], or goes to the router's one timer
//! ([`timers`], owned by one task) for its back-off, then round again. The same
//! timer wakes lanes for their pace and their answer timeouts, and the book at
//! its next receipt deadline.
//!
//! It must never send after the ledger says a challenge is no longer
//! deliverable, never drop a message silently (a full queue is an explicit
//! refusal), never hold a lock across an `.await`, and never log a code or a
//! full destination.

mod lane;
mod queue;
mod timers;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast};
use tokio::time::Instant;

use self::lane::{Flight, LaneShared, Sent};
use self::queue::{CarrierQueue, Pushed};
use self::timers::{TimerKey, TimerQueue};

use super::breaker::{Admit, Breaker, BreakerState};
use super::carrier::{
    Carrier, CarrierMessage, DialPlan, MessagePurpose, Receipt, ReceiptSink, ReceiptToken,
    Receipts, SendOutcome,
};
use super::config::{CarrierConfig, CarrierKind, RetryConfig, RouterConfig, RouterConfigError};
use super::destination::{Destination, ExtensionKind};
use super::http::HttpCarrier;
use super::limits::{KeyedLimiter, Taken, key_of};
use super::pace::Pacer;
use super::simulated::{OutboxMessage, SimulatedCarrier};
use super::smpp::SmppCarrier;
use super::smtp::SmtpCarrier;
use super::template;
use super::{CarrierSlot, ChallengeLedger, SlotHint};
use crate::clock::Clock;
use crate::code::Code;
use crate::snapshot::{HashSeeds, LimiterWindows};
use crate::types::{ChallengeId, Channel, DeliveryState, TenantId};

/// A refusal by a keyed limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rate limit per {scope} reached; retry in {retry_after_ms} ms")]
pub struct RateLimited {
    /// Earliest time a retry may succeed, ms.
    pub retry_after_ms: u32,
    /// Which limit: "destination", "subject", "tenant", "country", "prefix", "carrier".
    pub scope: &'static str,
}

/// The intake queue is full (or the router is draining).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the delivery queue is full; retry in {retry_after_ms} ms")]
pub struct QueueFull {
    /// A suggested wait, ms.
    pub retry_after_ms: u32,
}

/// One message to deliver.
#[derive(Clone, Debug)]
pub struct DeliveryJob {
    /// Whose challenge.
    pub tenant: TenantId,
    /// The challenge.
    pub id: ChallengeId,
    /// Where the table keeps it ([`SlotHint::NONE`] if unknown).
    pub slot_hint: SlotHint,
    /// SMS, voice or e-mail.
    pub channel: Channel,
    /// Where.
    pub destination: Destination,
    /// The code to write in the message.
    pub code: Code,
    /// The challenge's deadline (engine clock, Unix ms); nothing is sent after it.
    pub expires_at_ms: u64,
    /// Message locale; empty means English (the caller should pass the tenant's default).
    pub locale: String,
    /// The service name written in the message.
    pub service_name: String,
    /// The carrier of the previous send, avoided if another can serve (NONE for a first send).
    pub avoid_carrier: CarrierSlot,
    /// The tenant routes voice extensions through an operator.
    pub operator_assistance: bool,
    /// A code to type back, or a confirmation call (voice only).
    pub purpose: MessagePurpose,
}

/// Counts since start (tests, tools, the health endpoint).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Jobs handed over through a permit.
    pub accepted: u64,
    /// Jobs that ended delivered (a receipt said so).
    pub delivered: u64,
    /// Jobs that ended failed.
    pub failed: u64,
    /// Jobs a carrier accepted and whose receipt is still awaited.
    pub awaiting_receipt: u64,
    /// Sends handed to carriers (every try).
    pub tries: u64,
}

struct CarrierMetrics {
    accepted: Counter,
    throttled: Counter,
    rejected: Counter,
    failed: Counter,
    timeout: Counter,
    latency: Histogram,
    breaker: Gauge,
    queue: Gauge,
}

impl CarrierMetrics {
    fn new(name: &str) -> Self {
        let sends = |result: &'static str| metrics::counter!("watchword_carrier_sends_total", "carrier" => name.to_owned(), "result" => result);
        Self {
            accepted: sends("accepted"),
            throttled: sends("throttled"),
            rejected: sends("rejected"),
            failed: sends("failed"),
            timeout: sends("timeout"),
            latency: metrics::histogram!("watchword_carrier_send_seconds", "carrier" => name.to_owned()),
            breaker: metrics::gauge!("watchword_carrier_breaker_state", "carrier" => name.to_owned()),
            queue: metrics::gauge!("watchword_carrier_queue_depth", "carrier" => name.to_owned()),
        }
    }
}

/// A rotation of senders, each with its own pace.
struct SenderSet {
    senders: Vec<(String, Option<Pacer>)>,
    next: AtomicUsize,
}

impl SenderSet {
    fn new(senders: &[String], rate_per_s: u32) -> Self {
        Self {
            senders: senders
                .iter()
                .map(|s| (s.clone(), Pacer::new(rate_per_s, 1)))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next sender with room, skipping saturated ones: its index and a
    /// zero wait. If all are saturated, reserves the earliest slot and says
    /// how long until it comes (the message waits in the router's timer).
    fn take(&self) -> (usize, Duration) {
        let n = self.senders.len();
        let start = if n == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed)
        };
        let mut best = (Duration::MAX, 0);
        for i in 0..n {
            let k = (start + i) % n;
            match self.senders[k]
                .1
                .as_ref()
                .map_or(Ok(()), Pacer::try_acquire)
            {
                Ok(()) => return (k, Duration::ZERO),
                Err(w) if w < best.0 => best = (w, k),
                Err(_) => {}
            }
        }
        let wait = self.senders[best.1]
            .1
            .as_ref()
            .map_or(Duration::ZERO, Pacer::reserve);
        (best.1, wait)
    }

    /// The name of sender `i` ("" past the end).
    fn name(&self, i: usize) -> &str {
        self.senders.get(i).map_or("", |(n, _)| n.as_str())
    }
}

struct CarrierRt {
    name: String,
    slot: CarrierSlot,
    imp: Arc<dyn Carrier>,
    channels: [bool; 4],
    countries: Vec<String>,
    prefixes: Vec<String>,
    priority: u8,
    weight: u32,
    pacer: Option<Pacer>,
    /// Sends awaiting this carrier's answer, shared by its lanes.
    window: Window,
    /// Messages waiting for this carrier (bounded by `queue_capacity`).
    queue: CarrierQueue<Record>,
    /// The lanes that send this carrier's messages.
    lanes: Box<[LaneShared]>,
    max_queue_delay: Duration,
    timeout: Duration,
    breaker: Breaker,
    /// Throttled until this many ns after the router's epoch.
    throttled_until: AtomicU64,
    senders: SenderSet,
    m: CarrierMetrics,
}

impl CarrierRt {
    fn serves(&self, channel: Channel, dest: &Destination) -> bool {
        if !self.channels[usize::from(channel.wire())] {
            return false;
        }
        if dest.is_email() || (self.countries.is_empty() && self.prefixes.is_empty()) {
            return true;
        }
        dest.country()
            .is_some_and(|c| self.countries.iter().any(|x| x.eq_ignore_ascii_case(c)))
            || self
                .prefixes
                .iter()
                .any(|p| dest.address().starts_with(p.as_str()))
    }

    /// How long until this carrier stops being saturated, and whether its
    /// queue is full; `None` if it is not saturated. Saturated: its queue is
    /// full (it can take nothing), or, with a throughput limit, the time its
    /// pace needs to send what is queued is over `max_queue_delay` (admission
    /// refuses new messages for it; a message already accepted that finds no
    /// other carrier joins its queue rather than wait outside, where no
    /// backlog would count it).
    fn saturated_for(&self) -> Option<(Duration, bool)> {
        let queued = self.queue.len();
        if queued >= self.queue.capacity() {
            return Some((Duration::from_millis(100), true));
        }
        let pacer = self.pacer.as_ref()?;
        let backlog = pacer
            .interval()
            .saturating_mul(u32::try_from(queued).unwrap_or(u32::MAX))
            .max(pacer.backlog());
        (backlog > self.max_queue_delay).then(|| {
            let wait = (backlog - self.max_queue_delay).max(Duration::from_millis(10));
            (wait, false)
        })
    }

    /// Wakes every lane (a window slot came free, or the router is ending).
    fn wake_lanes(&self) {
        for l in self.lanes.iter() {
            l.waker.wake();
        }
    }
}

/// A carrier's window: at most `max` sends awaiting its answer at once,
/// whichever lane sent them.
struct Window {
    max: usize,
    used: AtomicUsize,
}

impl Window {
    /// Takes a slot if one is free.
    fn try_take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a slot back; true if the window was full (lanes waiting for a
    /// slot must be woken).
    fn put(&self) -> bool {
        self.used.fetch_sub(1, Ordering::AcqRel) == self.max
    }
}

/// A message as the router keeps it: a [`DeliveryJob`] made compact (the
/// language instead of the locale tag, the service name boxed, the carrier
/// to avoid folded into the record's tried carriers), 104 bytes.
struct Job {
    id: ChallengeId,
    code: Code,
    expires_at_ms: u64,
    destination: Destination,
    service_name: Box<str>,
    slot_hint: SlotHint,
    tenant: TenantId,
    channel: Channel,
    lang: template::Lang,
    operator_assistance: bool,
    purpose: MessagePurpose,
}

/// One accepted message on its way: the job and where its tries stand (136
/// bytes). It moves by value from the router to a carrier's queue, to a
/// lane, to the carrier's in-flight sends, to the timer (boxed) for a
/// back-off, and round again. It holds one slot of the intake: whatever ends
/// it gives the slot back ([`Inner::end`]); nothing drops a record otherwise
/// while the router runs.
pub(crate) struct Record {
    job: Job,
    /// Every try starts before this, ns after the router's epoch (a record
    /// is kept small: it is the bulk of a message's memory in flight).
    budget_end: u64,
    /// Carriers tried, a bit per slot (the carrier to avoid counts as tried).
    tried: u64,
    /// Tries made (a carrier picked for it).
    tries: u8,
    /// The carrier of the latest try.
    last_slot: CarrierSlot,
    /// It holds its carrier's half-open probe.
    probe: bool,
    /// It has waited once at least: the ledger is asked before a pick.
    waited: bool,
    /// A sender reserved for it while it waited for that sender's slot
    /// ([`NO_SENDER`]: none).
    sender: u16,
    /// Why the latest try failed.
    #[allow(clippy::box_collection)] // A thin pointer: 8 bytes, not 24.
    last_reason: Option<Box<String>>,
}

/// An entry of the router's timer.
enum Due {
    /// A message's back-off, or its wait for an available carrier, is over:
    /// route it again.
    Retry(Box<Record>),
    /// A message's sender slot has come: back to its lane, which sends it
    /// (it holds a slot of the carrier's window).
    Dispatch {
        carrier: u8,
        lane: u8,
        rec: Box<Record>,
    },
    /// A lane's pace allows its next send, or one of its sends is overdue.
    Lane { carrier: u8, lane: u8 },
    /// The receipt book's oldest awaited receipt is due.
    Receipts,
}

/// A send's receipt while the carrier's answer is awaited.
enum Early {
    /// None yet.
    Pending,
    /// The receipt came first: delivered.
    Delivered,
    /// The receipt came first: not delivered, and why (a thin box keeps
    /// the entry at 16 bytes).
    #[allow(clippy::box_collection)] // A thin pointer: 16 bytes an entry, not 24.
    Undelivered(Box<String>),
}

/// Which message a receipt is for.
#[derive(Clone, Copy)]
struct Ticket {
    id: ChallengeId,
    hint: SlotHint,
    slot: CarrierSlot,
}

/// Tokens are consecutive integers: a multiply spreads them over the table's
/// buckets (low bits) and tags (high bits); the fold keeps the buckets spread
/// within a shard, whose tokens share their low bits.
#[derive(Default)]
struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^ (h >> 32)
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

type TokenMap<V> = hashbrown::HashMap<u64, V, BuildHasherDefault<TokenHasher>>;

#[derive(Default)]
struct BookShard {
    /// Sends handed to a carrier whose answer is awaited: a receipt that
    /// comes first waits here (24 bytes an entry; the message's details are
    /// in its record meanwhile).
    waiting: TokenMap<Early>,
    /// Accepted sends whose receipt is awaited.
    armed: TokenMap<Ticket>,
    /// Armed entries' receipt deadlines, oldest first (one timeout for all,
    /// so arming order is deadline order).
    deadlines: VecDeque<(Instant, u64)>,
}

/// Receipts awaited, by token. Bounded by the accept rate times the receipt
/// timeout, and at most `BOOK_SHARDS * BOOK_SHARD_CAP` armed entries: past
/// that the oldest awaited receipts end as failed, never silently. Waiting
/// entries are bounded by the carriers' windows.
struct ReceiptBook {
    shards: Box<[crossbeam::utils::CachePadded<Mutex<BookShard>>]>,
    ledger: Arc<dyn ChallengeLedger>,
    names: Vec<String>,
    timeout: Duration,
    delivered: AtomicU64,
    failed: AtomicU64,
    awaiting: AtomicU64,
    /// Set while a wake-up of the book is in the router's timer.
    wake_scheduled: AtomicBool,
    outcome_delivered: Counter,
    outcome_failed: Counter,
}

const BOOK_SHARDS: usize = 16;
/// Awaited receipts per shard (about a million in all, ~100 MB at most).
const BOOK_SHARD_CAP: usize = 65_536;

impl ReceiptBook {
    fn shard(&self, token: u64) -> &Mutex<BookShard> {
        &self.shards[(token as usize) % BOOK_SHARDS]
    }

    fn name(&self, slot: CarrierSlot) -> &str {
        self.names
            .get(usize::from(slot.0))
            .map_or("", String::as_str)
    }

    /// A send is about to go: its receipt may come before its answer.
    fn register(&self, token: u64) {
        self.shard(token)
            .lock()
            .waiting
            .insert(token, Early::Pending);
    }

    /// The send was not accepted: a receipt for it is ignored.
    fn cancel(&self, token: u64) {
        self.shard(token).lock().waiting.remove(&token);
    }

    /// The send was accepted (and `Sent` recorded): wait for the receipt,
    /// or end the message with the receipt that came first. Returns a
    /// deadline when the router's timer must be asked to wake the book (none
    /// is scheduled yet).
    fn arm(&self, token: u64, ticket: Ticket) -> Option<Instant> {
        let mut at = None;
        let early = {
            let mut s = self.shard(token).lock();
            match s.waiting.remove(&token)? {
                Early::Pending => {
                    let deadline = Instant::now() + self.timeout;
                    s.armed.insert(token, ticket);
                    s.deadlines.push_back((deadline, token));
                    at = Some(deadline);
                    None
                }
                Early::Delivered => Some(Ok(())),
                Early::Undelivered(reason) => Some(Err(reason)),
            }
        };
        match early {
            Some(outcome) => {
                self.finish(
                    &ticket,
                    outcome.as_ref().map(|_| ()).map_err(|r| r.as_str()),
                );
                None
            }
            None => {
                self.awaiting.fetch_add(1, Ordering::Relaxed);
                self.evict_over_cap(token);
                let first = !self.wake_scheduled.load(Ordering::Acquire)
                    && !self.wake_scheduled.swap(true, Ordering::AcqRel);
                at.filter(|_| first)
            }
        }
    }

    /// Keeps a shard within `BOOK_SHARD_CAP` awaited receipts: the oldest end
    /// as failed (their receipt is the most overdue), never silently.
    fn evict_over_cap(&self, token: u64) {
        let mut evicted = Vec::new();
        {
            let mut s = self.shard(token).lock();
            while s.armed.len() > BOOK_SHARD_CAP {
                let Some((_, old)) = s.deadlines.pop_front() else {
                    break;
                };
                if let Some(t) = s.armed.remove(&old) {
                    evicted.push(t);
                }
            }
        }
        for t in &evicted {
            self.awaiting.fetch_sub(1, Ordering::Relaxed);
            self.finish(t, Err("no delivery receipt (too many receipts awaited)"));
        }
    }

    fn finish(&self, e: &Ticket, outcome: Result<(), &str>) {
        let name = self.name(e.slot);
        match outcome {
            Ok(()) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                self.outcome_delivered.increment(1);
                self.ledger.delivery_update(
                    e.id,
                    e.hint,
                    DeliveryState::Delivered,
                    e.slot,
                    name,
                    None,
                );
            }
            Err(reason) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.outcome_failed.increment(1);
                self.ledger.delivery_update(
                    e.id,
                    e.hint,
                    DeliveryState::Failed,
                    e.slot,
                    name,
                    Some(reason),
                );
            }
        }
    }

    /// Ends armed entries whose receipt is overdue. Returns how many.
    fn expire(&self, now: Instant) -> usize {
        let mut ended = Vec::new();
        for s in self.shards.iter() {
            let mut s = s.lock();
            while let Some(&(deadline, token)) = s.deadlines.front() {
                if deadline > now {
                    break;
                }
                s.deadlines.pop_front();
                if let Some(t) = s.armed.remove(&token) {
                    ended.push(t);
                }
            }
            if s.deadlines.capacity() > 1024 && s.deadlines.len() < s.deadlines.capacity() / 4 {
                s.deadlines.shrink_to_fit();
            }
        }
        if !ended.is_empty() {
            let reason = format!("no delivery receipt within {} s", self.timeout.as_secs());
            for t in &ended {
                self.awaiting.fetch_sub(1, Ordering::Relaxed);
                self.finish(t, Err(&reason));
            }
        }
        ended.len()
    }

    /// The earliest receipt deadline (entries whose receipt came since may
    /// still be counted: a wake-up then finds nothing to end).
    fn next_deadline(&self) -> Option<Instant> {
        self.shards
            .iter()
            .filter_map(|s| s.lock().deadlines.front().map(|d| d.0))
            .min()
    }
}

impl ReceiptSink for ReceiptBook {
    fn report(&self, token: ReceiptToken, receipt: Receipt) {
        let done = {
            let mut s = self.shard(token.0).lock();
            if let Some(e) = s.waiting.get_mut(&token.0) {
                if matches!(e, Early::Pending) {
                    *e = match receipt {
                        Receipt::Delivered => Early::Delivered,
                        Receipt::Undelivered { reason } => Early::Undelivered(Box::new(reason)),
                    };
                }
                return;
            }
            match s.armed.remove(&token.0) {
                Some(t) => t,
                None => return,
            }
        };
        self.awaiting.fetch_sub(1, Ordering::Relaxed);
        match receipt {
            Receipt::Delivered => self.finish(&done, Ok(())),
            Receipt::Undelivered { reason } => self.finish(&done, Err(&reason)),
        }
    }
}

struct Limits {
    hash: ahash::RandomState,
    destination: Option<KeyedLimiter>,
    subject: Option<KeyedLimiter>,
    tenant: Option<KeyedLimiter>,
    country: Option<KeyedLimiter>,
    /// Longest prefix first.
    prefixes: Vec<(String, KeyedLimiter)>,
    key_gauges: Vec<(&'static str, Gauge)>,
}

impl Limits {
    /// Each limiter with its snapshot name.
    fn named(&self) -> impl Iterator<Item = (String, &KeyedLimiter)> {
        [
            ("destination", &self.destination),
            ("subject", &self.subject),
            ("tenant", &self.tenant),
            ("country", &self.country),
        ]
        .into_iter()
        .filter_map(|(n, l)| l.as_ref().map(|l| (n.to_owned(), l)))
        .chain(
            self.prefixes
                .iter()
                .map(|(p, l)| (format!("prefix:{p}"), l)),
        )
    }

    fn all(&self) -> impl Iterator<Item = &KeyedLimiter> {
        [
            &self.destination,
            &self.subject,
            &self.tenant,
            &self.country,
        ]
        .into_iter()
        .flatten()
        .chain(self.prefixes.iter().map(|(_, l)| l))
    }
}

struct Inner {
    carriers: Vec<CarrierRt>,
    /// SMS sender pools by country (a few: a scan beats hashing the key).
    pools: Vec<(String, SenderSet)>,
    limits: Limits,
    ledger: Arc<dyn ChallengeLedger>,
    clock: Arc<dyn Clock>,
    retry: RetryConfig,
    intake: Arc<Semaphore>,
    capacity: usize,
    draining: AtomicBool,
    outbox: Option<broadcast::Sender<Arc<OutboxMessage>>>,
    book: Arc<ReceiptBook>,
    receipts: Receipts,
    next_token: AtomicU64,
    epoch: Instant,
    /// Every deadline of the pipeline (see [`timers`]); locked for one
    /// operation at a time, never across an `.await`. Bounded by the intake's
    /// capacity plus one wake-up per lane and the book's.
    timers: Mutex<TimerQueue<Due>>,
    /// Wakes the timer task when a deadline earlier than its sleep comes.
    timer_wake: Arc<Notify>,
    sims: Vec<(String, Arc<SimulatedCarrier>)>,
    accepted: AtomicU64,
    failed: AtomicU64,
    tries: AtomicU64,
    intake_gauge: Gauge,
    /// Messages finished per second over the janitor's last tick (the retry
    /// hint of a full queue is made from it).
    finish_rate: AtomicU64,
    /// `watchword_rate_limited_total{scope="carrier"}`: refused because every carrier was saturated.
    carrier_saturated_refusals: metrics::Counter,
    /// Confirmation calls whose outcome a carrier may report by callback
    /// ([`Router::carrier_call`]), by send token. Bounded by
    /// [`CALLS_AWAITED`]; the janitor drops those whose challenge ended.
    calls: Mutex<TokenMap<CallTicket>>,
    /// Where call outcomes reported by callback go (the call book).
    handsets: std::sync::OnceLock<std::sync::Weak<dyn super::Handsets>>,
}

/// Confirmation calls whose callback may still come, at most: past that a
/// call rings all the same, and its outcome, which no callback can then
/// report, ends as not answered when its challenge expires.
const CALLS_AWAITED: usize = 65_536;

/// A confirmation call sent through a carrier, for its call-outcome callback.
#[derive(Clone, Copy)]
struct CallTicket {
    tenant: TenantId,
    id: ChallengeId,
    slot: CarrierSlot,
    expires_at_ms: u64,
}

/// What a carrier's call-outcome callback reports of a confirmation call
/// (the HTTP carrier's `POST /v1/carriers/{name}/calls`).
#[derive(Clone, PartialEq, Eq)]
pub enum CallReport {
    /// The call connected: the message reached the person (its delivery
    /// receipt); the call goes on.
    Answered,
    /// The call ended after these keys were pressed (`#` or `PIN#`
    /// confirms; anything else, or nothing, declines).
    Completed {
        /// The DTMF keys, in order (never logged).
        digits: String,
    },
    /// Nobody answered, the line was busy, or the call could not be made.
    NotAnswered {
        /// Short reason for the delivery state ("no_answer", "busy", "failed").
        reason: &'static str,
    },
}

impl std::fmt::Debug for CallReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Answered => f.write_str("Answered"),
            // The digits may be a PIN: never shown.
            Self::Completed { digits } => write!(f, "Completed({} keys)", digits.len()),
            Self::NotAnswered { reason } => write!(f, "NotAnswered({reason})"),
        }
    }
}

/// The delivery router; cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("carriers", &self.inner.carriers.len())
            .finish()
    }
}

/// A reserved slot in the intake queue.
pub struct DeliveryPermit {
    inner: Arc<Inner>,
    permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for DeliveryPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeliveryPermit")
    }
}

impl DeliveryPermit {
    /// Hands the job to the router; infallible once reserved. It picks a
    /// carrier and queues the message there at once (or keeps it in the
    /// router's timer until a carrier can take it); it never waits.
    pub fn send(self, job: DeliveryJob) {
        let inner = self.inner;
        // The record holds the slot from here; `Inner::end` gives it back.
        self.permit.forget();
        inner.accepted.fetch_add(1, Ordering::Relaxed);
        let n = inner.carriers.len();
        let tried = if usize::from(job.avoid_carrier.0) < n {
            1 << job.avoid_carrier.0
        } else {
            0
        };
        let job = Job {
            id: job.id,
            code: job.code,
            expires_at_ms: job.expires_at_ms,
            destination: job.destination,
            service_name: job.service_name.into_boxed_str(),
            slot_hint: job.slot_hint,
            tenant: job.tenant,
            channel: job.channel,
            lang: template::Lang::from_tag(&job.locale),
            operator_assistance: job.operator_assistance,
            purpose: job.purpose,
        };
        let rec = Record {
            job,
            budget_end: inner
                .since_epoch(Instant::now() + Duration::from_millis(inner.retry.budget_ms)),
            tried,
            tries: 0,
            last_slot: CarrierSlot::NONE,
            probe: false,
            waited: false,
            sender: NO_SENDER,
            last_reason: None,
        };
        inner.route(rec);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The timer task and the lanes hold only weak references: wake them
        // so that they end.
        self.timer_wake.notify_one();
        for c in &self.carriers {
            c.wake_lanes();
        }
    }
}

enum TryResult {
    Accepted,
    Rejected(String),
    Retry(String),
}

impl Router {
    /// Every limiter's windows, for a snapshot: `destination`, `subject`,
    /// `tenant`, `country`, and `prefix:<prefix>` for each prefix limit.
    pub fn limiter_windows(&self) -> Vec<LimiterWindows> {
        self.inner
            .limits
            .named()
            .map(|(name, l)| LimiterWindows {
                name,
                windows: l.export(),
            })
            .collect()
    }

    /// Puts a snapshot's windows back into the limiters of the same names
    /// and kind, pruned to their windows at `now`; `subject` and `tenant`
    /// windows only when `tenant_keys_hold` (their keys hold a tenant's
    /// position in the configuration). Returns the keys restored and the
    /// names of the windows set aside.
    pub fn restore_limiter_windows(
        &self,
        windows: &[LimiterWindows],
        tenant_keys_hold: bool,
    ) -> (u64, Vec<String>) {
        let now = self.inner.clock.now_ms();
        let mut restored = 0;
        let mut set_aside = Vec::new();
        for w in windows {
            let tenant_keyed = w.name == "subject" || w.name == "tenant";
            let target = self.inner.limits.named().find(|(n, _)| *n == w.name);
            match target {
                Some((_, l)) if tenant_keys_hold || !tenant_keyed => {
                    match l.import(&w.windows, now) {
                        Some(n) => restored += n,
                        None => set_aside.push(w.name.clone()),
                    }
                }
                _ => set_aside.push(w.name.clone()),
            }
        }
        (restored, set_aside)
    }

    /// The carriers' names, by their slot numbers.
    pub fn carrier_names(&self) -> Vec<String> {
        self.inner.carriers.iter().map(|c| c.name.clone()).collect()
    }

    /// Builds every configured carrier and starts the router's tasks: each
    /// carrier's lanes (one per runtime worker, up to four), the timer task
    /// and the janitor; they end when the last handle is dropped. Call inside
    /// a tokio runtime.
    pub fn start(
        config: RouterConfig,
        ledger: Arc<dyn ChallengeLedger>,
        clock: Arc<dyn Clock>,
    ) -> Result<Router, RouterConfigError> {
        Self::start_with_carriers(config, ledger, clock, Vec::new())
    }

    /// Like [`Router::start`], with the named carriers' implementations given
    /// by the caller instead of built from their `kind` (tests, embedders).
    pub fn start_with_carriers(
        config: RouterConfig,
        ledger: Arc<dyn ChallengeLedger>,
        clock: Arc<dyn Clock>,
        custom: Vec<(String, Arc<dyn Carrier>)>,
    ) -> Result<Router, RouterConfigError> {
        Self::start_seeded(config, ledger, clock, custom, HashSeeds::random())
    }

    /// Like [`Router::start_with_carriers`], the limiters keying their
    /// windows with a hasher of the given seeds (a restart restores the
    /// windows a snapshot kept under the seeds they were written with).
    pub fn start_seeded(
        config: RouterConfig,
        ledger: Arc<dyn ChallengeLedger>,
        clock: Arc<dyn Clock>,
        mut custom: Vec<(String, Arc<dyn Carrier>)>,
        seeds: HashSeeds,
    ) -> Result<Router, RouterConfigError> {
        config.validate()?;
        let rt = tokio::runtime::Handle::try_current().map_err(|_| {
            RouterConfigError("the router must start inside a tokio runtime".into())
        })?;
        let any_sim = config
            .carriers
            .iter()
            .any(|c| c.kind == CarrierKind::Simulated && !custom.iter().any(|(n, _)| *n == c.name));
        let outbox = any_sim.then(|| broadcast::channel(config.outbox_capacity).0);
        let lanes = lanes_per_carrier(&rt);
        let mut lane_rx = Vec::with_capacity(config.carriers.len());
        let mut sims = Vec::new();
        let mut carriers = Vec::with_capacity(config.carriers.len());
        for (i, c) in config.carriers.iter().enumerate() {
            let imp: Arc<dyn Carrier> =
                if let Some(p) = custom.iter().position(|(n, _)| *n == c.name) {
                    custom.swap_remove(p).1
                } else {
                    match c.kind {
                        CarrierKind::Simulated => {
                            let s = Arc::new(SimulatedCarrier::new(
                                &c.name,
                                c.simulated.clone(),
                                outbox.clone(),
                            ));
                            sims.push((c.name.clone(), Arc::clone(&s)));
                            Arc::new(s)
                        }
                        CarrierKind::Http => Arc::new(
                            HttpCarrier::new(&c.http)
                                .map_err(|e| {
                                    RouterConfigError(format!("carriers[{i}] ({}).{}", c.name, e.0))
                                })?
                                .named(&c.name, &c.http),
                        ),
                        CarrierKind::Smpp => Arc::new(SmppCarrier::new(c).map_err(|e| {
                            RouterConfigError(format!("carriers[{i}] ({}).{}", c.name, e.0))
                        })?),
                        CarrierKind::Smtp => Arc::new(SmtpCarrier::new(&c.smtp).map_err(|e| {
                            RouterConfigError(format!("carriers[{i}] ({}).{}", c.name, e.0))
                        })?),
                    }
                };
            let (rt_c, rx) = carrier_rt(i, c, imp, lanes);
            carriers.push(rt_c);
            lane_rx.push(rx);
        }
        if let Some((n, _)) = custom.first() {
            return Err(RouterConfigError(format!(
                "custom carrier {n:?} is not configured"
            )));
        }
        let pools = config
            .senders
            .pools
            .iter()
            .map(|p| {
                (
                    p.country.to_ascii_uppercase(),
                    SenderSet::new(&p.senders, p.rate_per_s),
                )
            })
            .collect();
        let l = &config.limits;
        let mut prefixes: Vec<(String, KeyedLimiter)> = l
            .prefixes
            .iter()
            .filter_map(|p| KeyedLimiter::new("prefix", p.limit).map(|k| (p.prefix.clone(), k)))
            .collect();
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let key_gauges = ["destination", "subject", "tenant", "country", "prefix"]
            .into_iter()
            .map(|s| (s, metrics::gauge!("watchword_limiter_keys", "scope" => s)))
            .collect();
        let limits = Limits {
            hash: seeds.hasher(),
            destination: KeyedLimiter::new("destination", l.destination),
            subject: KeyedLimiter::new("subject", l.subject),
            tenant: KeyedLimiter::new("tenant", l.tenant),
            country: KeyedLimiter::new("country", l.country),
            prefixes,
            key_gauges,
        };
        let book = Arc::new(ReceiptBook {
            shards: (0..BOOK_SHARDS).map(|_| Default::default()).collect(),
            ledger: Arc::clone(&ledger),
            names: carriers.iter().map(|c| c.name.clone()).collect(),
            timeout: Duration::from_millis(config.receipt_timeout_ms),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            awaiting: AtomicU64::new(0),
            wake_scheduled: AtomicBool::new(false),
            outcome_delivered: metrics::counter!("watchword_delivery_outcomes_total", "result" => "delivered"),
            outcome_failed: metrics::counter!("watchword_delivery_outcomes_total", "result" => "failed"),
        });
        let receipts = Receipts(Arc::clone(&book) as Arc<dyn ReceiptSink>);
        let inner = Arc::new(Inner {
            carriers,
            pools,
            limits,
            ledger,
            clock,
            retry: config.retry.clone(),
            intake: Arc::new(Semaphore::new(config.queue_capacity)),
            capacity: config.queue_capacity,
            draining: AtomicBool::new(false),
            outbox,
            book,
            receipts,
            next_token: AtomicU64::new(1),
            epoch: Instant::now(),
            timers: Mutex::new(TimerQueue::new(
                config.queue_capacity + lanes * config.carriers.len() + 64,
            )),
            timer_wake: Arc::new(Notify::new()),
            sims,
            accepted: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            tries: AtomicU64::new(0),
            intake_gauge: metrics::gauge!("watchword_router_queue_depth"),
            finish_rate: AtomicU64::new(0),
            carrier_saturated_refusals: metrics::counter!("watchword_rate_limited_total", "scope" => "carrier"),
            calls: Mutex::default(),
            handsets: std::sync::OnceLock::new(),
        });
        for (i, rx) in lane_rx.into_iter().enumerate() {
            lane::spawn(&rt, &inner, i, rx);
        }
        rt.spawn(timer_task(
            Arc::downgrade(&inner),
            Arc::clone(&inner.timer_wake),
        ));
        rt.spawn(janitor(
            Arc::downgrade(&inner),
            Duration::from_millis(config.janitor_interval_ms),
        ));
        Ok(Router { inner })
    }

    /// Whether some carrier serves `channel` to `dest`.
    pub fn has_route(&self, channel: Channel, dest: &Destination) -> bool {
        self.inner.carriers.iter().any(|c| c.serves(channel, dest))
    }

    /// Checks every keyed limit and, if all allow it, counts one send against
    /// each (destination, subject, tenant, country, prefix); also refuses when
    /// every carrier of the route is saturated.
    pub fn admit(
        &self,
        tenant: TenantId,
        tenant_name: &str,
        subject: &str,
        channel: Channel,
        dest: &Destination,
    ) -> Result<(), RateLimited> {
        let inner = &*self.inner;
        let l = &inner.limits;
        let now = inner.clock.now_ms();
        let h = &l.hash;
        let prefix = l
            .prefixes
            .iter()
            .find(|(p, _)| !dest.is_email() && dest.address().starts_with(p.as_str()));
        let checks: [(Option<&KeyedLimiter>, u64); 5] = [
            (l.destination.as_ref(), key_of(h, (1u8, dest.address()))),
            (l.subject.as_ref(), key_of(h, (2u8, tenant.0, subject))),
            (l.tenant.as_ref(), key_of(h, (3u8, tenant.0))),
            (
                l.country.as_ref().filter(|_| dest.country().is_some()),
                key_of(h, (4u8, dest.country().unwrap_or(""))),
            ),
            (
                prefix.map(|(_, k)| k),
                key_of(h, (5u8, prefix.map_or("", |(p, _)| p.as_str()))),
            ),
        ];
        let mut taken: [Option<(&KeyedLimiter, Taken)>; 5] = [None; 5];
        let undo = |taken: &[Option<(&KeyedLimiter, Taken)>; 5]| {
            for (lim, t) in taken.iter().flatten() {
                lim.undo(*t);
            }
        };
        for (i, (lim, key)) in checks.iter().enumerate() {
            let Some(lim) = lim else { continue };
            match lim.acquire(*key, now) {
                Ok(t) => taken[i] = Some((lim, t)),
                Err(ms) => {
                    undo(&taken);
                    lim.refused.increment(1);
                    tracing::debug!(tenant = tenant_name, scope = lim.scope, "rate limited");
                    return Err(RateLimited {
                        retry_after_ms: ms.min(u64::from(u32::MAX)) as u32,
                        scope: lim.scope,
                    });
                }
            }
        }
        let mut soonest: Option<Duration> = None;
        for c in inner.carriers.iter().filter(|c| c.serves(channel, dest)) {
            match c.saturated_for() {
                None => return Ok(()),
                Some((t, _)) => soonest = Some(soonest.map_or(t, |s| s.min(t))),
            }
        }
        if let Some(t) = soonest {
            undo(&taken);
            inner.carrier_saturated_refusals.increment(1);
            return Err(RateLimited {
                retry_after_ms: t.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
                scope: "carrier",
            });
        }
        Ok(())
    }

    /// Reserves a slot in the bounded intake queue; refuses at once when full
    /// or draining. A full queue's retry hint is the time the router takes,
    /// at the rate it has been finishing messages, to finish a twentieth of
    /// its capacity (100 ms to 10 s; 1 s while it has finished none lately).
    pub fn try_reserve(&self) -> Result<DeliveryPermit, QueueFull> {
        if self.inner.draining.load(Ordering::Relaxed) {
            return Err(QueueFull {
                retry_after_ms: 1_000,
            });
        }
        match Arc::clone(&self.inner.intake).try_acquire_owned() {
            Ok(permit) => Ok(DeliveryPermit {
                inner: Arc::clone(&self.inner),
                permit,
            }),
            Err(_) => Err(QueueFull {
                retry_after_ms: self.inner.full_hint_ms(),
            }),
        }
    }

    /// The carrier's name for a slot; "" for `NONE` or an unknown slot.
    pub fn carrier_name(&self, slot: CarrierSlot) -> &str {
        self.inner
            .carriers
            .get(usize::from(slot.0))
            .map_or("", |c| c.name.as_str())
    }

    /// A feed of everything the simulated carriers deliver; `None` without one.
    pub fn outbox_subscribe(&self) -> Option<broadcast::Receiver<Arc<OutboxMessage>>> {
        self.inner.outbox.as_ref().map(broadcast::Sender::subscribe)
    }

    /// Stops taking new jobs and waits, up to `deadline`, until every queued
    /// or in-flight job has ended or is only awaiting its receipt.
    pub async fn drain(&self, deadline: Duration) {
        self.inner.draining.store(true, Ordering::Relaxed);
        let all = self.inner.capacity as u32;
        let _ = tokio::time::timeout(deadline, self.inner.intake.acquire_many(all)).await;
    }

    /// Sends still allowed to this destination in its window (255 when unlimited).
    pub fn sends_left(&self, dest: &Destination) -> u8 {
        let l = &self.inner.limits;
        match &l.destination {
            Some(lim) => {
                let key = key_of(&l.hash, (1u8, dest.address()));
                lim.remaining(key, self.inner.clock.now_ms()).min(255) as u8
            }
            None => u8::MAX,
        }
    }

    /// Counts since start.
    pub fn stats(&self) -> RouterStats {
        let i = &self.inner;
        RouterStats {
            accepted: i.accepted.load(Ordering::Relaxed),
            delivered: i.book.delivered.load(Ordering::Relaxed),
            failed: i.failed.load(Ordering::Relaxed) + i.book.failed.load(Ordering::Relaxed),
            awaiting_receipt: i.book.awaiting.load(Ordering::Relaxed),
            tries: i.tries.load(Ordering::Relaxed),
        }
    }

    /// The simulated carrier of that name, to switch outages at run time.
    pub fn simulated(&self, name: &str) -> Option<Arc<SimulatedCarrier>> {
        self.inner
            .sims
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| Arc::clone(s))
    }

    /// Gives every simulated carrier the place where its handsets answer
    /// confirmation calls (see [`SimulatedCarrier::attach_handsets`]).
    /// The same place also takes the outcomes carriers report by callback
    /// ([`Router::carrier_call`]).
    pub fn attach_handsets(&self, handsets: std::sync::Weak<dyn super::Handsets>) {
        for (_, s) in &self.inner.sims {
            s.attach_handsets(handsets.clone());
        }
        let _ = self.inner.handsets.set(handsets);
    }

    /// A call outcome the carrier `name` sent by callback (the HTTP
    /// carrier's webhook, after its signature was checked) for its
    /// confirmation call `token`: the call's delivery receipt (answered or
    /// completed: delivered; not answered: failed), and, when the call
    /// ended, its outcome to the call book, which consumes the challenge on
    /// `#`. False when no confirmation call of that carrier awaits an
    /// outcome under that token (unknown, ended already, expired, another
    /// carrier's, or not a call).
    pub fn carrier_call(&self, name: &str, token: ReceiptToken, report: CallReport) -> bool {
        let ticket = {
            let mut calls = self.inner.calls.lock();
            let ours = calls
                .get(&token.0)
                .copied()
                .filter(|t| self.inner.book.name(t.slot) == name);
            let Some(ticket) = ours else { return false };
            // "answered" is not the end of the call: its outcome may follow.
            if report != CallReport::Answered {
                calls.remove(&token.0);
            }
            ticket
        };
        // Ignored when the receipt was settled already (an "answered"
        // before) or timed out.
        self.inner.book.report(
            token,
            match &report {
                CallReport::Answered | CallReport::Completed { .. } => Receipt::Delivered,
                CallReport::NotAnswered { reason } => Receipt::Undelivered {
                    reason: format!("call {reason}"),
                },
            },
        );
        let answer = match report {
            CallReport::Answered => return true,
            CallReport::Completed { digits } => super::HandsetAnswer::Digits(digits),
            CallReport::NotAnswered { .. } => super::HandsetAnswer::NotAnswered,
        };
        if let Some(h) = self.inner.handsets.get().and_then(std::sync::Weak::upgrade) {
            h.answer(ticket.tenant, ticket.id, answer);
        }
        true
    }

    /// A receipt the carrier `name` sent by callback (the HTTP carrier's
    /// webhook, after its signature was checked) for its send `token`.
    /// False when no receipt from that carrier is awaited under that token
    /// (unknown, already settled, timed out, or another carrier's).
    pub fn carrier_receipt(&self, name: &str, token: ReceiptToken, receipt: Receipt) -> bool {
        let book = &self.inner.book;
        // Only an accepted send (armed) awaits a receipt; one still waiting
        // for the carrier's answer has not been taken yet.
        let ours = book
            .shard(token.0)
            .lock()
            .armed
            .get(&token.0)
            .is_some_and(|t| book.name(t.slot) == name);
        if ours {
            book.report(token, receipt);
        }
        ours
    }

    /// The breaker state of the named carrier.
    pub fn breaker_state(&self, name: &str) -> Option<BreakerState> {
        self.inner
            .carriers
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.breaker.state())
    }

    /// Jobs in the intake queue (queued, in flight or backing off).
    pub fn queue_depth(&self) -> usize {
        self.inner.capacity - self.inner.intake.available_permits()
    }

    /// Keys held by every keyed limiter together.
    pub fn limiter_keys(&self) -> usize {
        self.inner.limits.all().map(KeyedLimiter::len).sum()
    }
}

/// Lanes per carrier: one per runtime worker, up to four (a lane sends well
/// over a million messages a second; more lanes only spread a busy carrier's
/// work over the workers).
fn lanes_per_carrier(rt: &tokio::runtime::Handle) -> usize {
    rt.metrics().num_workers().clamp(1, 4)
}

/// A carrier's runtime state, and the receiving ends of its lanes' channels.
fn carrier_rt(
    i: usize,
    c: &CarrierConfig,
    imp: Arc<dyn Carrier>,
    lanes: usize,
) -> (CarrierRt, Vec<tokio::sync::mpsc::Receiver<Record>>) {
    let mut channels = [false; 4];
    for ch in &c.channels {
        channels[usize::from(ch.wire())] = true;
    }
    let (queue, rx) = CarrierQueue::new(c.queue_capacity, lanes);
    let rt = CarrierRt {
        name: c.name.clone(),
        slot: CarrierSlot(i as u8),
        imp,
        channels,
        countries: c.countries.clone(),
        prefixes: c.prefixes.clone(),
        priority: c.priority,
        weight: c.weight.max(1),
        pacer: Pacer::new(c.throughput_limit(), 2),
        window: Window {
            max: c.in_flight_limit().max(1),
            used: AtomicUsize::new(0),
        },
        queue,
        lanes: (0..lanes).map(|_| LaneShared::default()).collect(),
        max_queue_delay: Duration::from_millis(c.max_queue_delay_ms),
        timeout: Duration::from_millis(c.timeout_ms),
        breaker: Breaker::new(c.breaker.clone()),
        throttled_until: AtomicU64::new(0),
        senders: SenderSet::new(&c.senders, c.sender_rate_per_s),
        m: CarrierMetrics::new(&c.name),
    };
    (rt, rx)
}

/// The janitor: gauges every second, idle limiter keys every `interval`.
/// Ends when the router is dropped.
async fn janitor(inner: Weak<Inner>, interval: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep = Instant::now();
    let mut last_tick = (Instant::now(), 0u64);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let depth = (inner.capacity - inner.intake.available_permits()) as u64;
        let finished = inner.accepted.load(Ordering::Relaxed).saturating_sub(depth);
        let secs = now.duration_since(last_tick.0).as_secs_f64();
        if secs > 0.0 {
            let rate = finished.saturating_sub(last_tick.1) as f64 / secs;
            inner
                .finish_rate
                .store(rate.ceil() as u64, Ordering::Relaxed);
        }
        last_tick = (now, finished);
        inner
            .intake_gauge
            .set((inner.capacity - inner.intake.available_permits()) as f64);
        for c in &inner.carriers {
            c.m.queue.set(c.queue.len() as f64);
            c.m.breaker.set(c.breaker.state().gauge());
        }
        {
            // Calls whose challenge ended: no outcome can matter any more.
            let ms = inner.clock.now_ms();
            inner.calls.lock().retain(|_, t| t.expires_at_ms > ms);
        }
        if now.duration_since(last_sweep) >= interval {
            last_sweep = now;
            // A pass visits every key of every limit (millions in a busy
            // deployment): run it on the blocking pool, never on a runtime
            // worker, where it would hold up every connection that worker
            // serves for the whole pass.
            let pass = inner.clone();
            let counted = tokio::task::spawn_blocking(move || {
                let ms = pass.clock.now_ms();
                let mut per_scope: HashMap<&'static str, usize> = HashMap::new();
                for lim in pass.limits.all() {
                    *per_scope.entry(lim.scope).or_default() += lim.retain_recent(ms);
                }
                per_scope
            })
            .await;
            if let Ok(per_scope) = counted {
                for (scope, g) in &inner.limits.key_gauges {
                    g.set(per_scope.get(scope).copied().unwrap_or(0) as f64);
                }
            }
        }
    }
}

impl Inner {
    /// `t` as ns after the router's epoch.
    fn since_epoch(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// The retry hint of a full intake queue, ms (see [`Router::try_reserve`]).
    fn full_hint_ms(&self) -> u32 {
        let rate = self.finish_rate.load(Ordering::Relaxed);
        if rate == 0 {
            return 1_000;
        }
        let twentieth = (self.capacity as u64).div_ceil(20);
        (twentieth.saturating_mul(1_000) / rate).clamp(100, 10_000) as u32
    }

    /// Notes a confirmation call about to be sent as `token` through the
    /// carrier `slot`, for its call-outcome callback. Past [`CALLS_AWAITED`]
    /// the call is not noted (see there).
    fn await_call(&self, token: u64, job: &Job, slot: CarrierSlot) {
        let mut calls = self.calls.lock();
        if calls.len() < CALLS_AWAITED {
            calls.insert(
                token,
                CallTicket {
                    tenant: job.tenant,
                    id: job.id,
                    slot,
                    expires_at_ms: job.expires_at_ms,
                },
            );
        }
    }

    /// Whether `job` may still be sent at `now_ms` (the engine clock's reading).
    fn deliverable(&self, job: &Job, now_ms: u64) -> bool {
        now_ms < job.expires_at_ms && self.ledger.deliverable(job.id, job.slot_hint)
    }

    fn throttle_left(&self, c: &CarrierRt) -> Option<Duration> {
        let until = c.throttled_until.load(Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        let now = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64;
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Chooses a carrier: serving, not open, not saturated, not throttled, not
    /// in `skip`; untried ones first; lowest priority value; spread by
    /// weight; failing all, the one whose pacing backlog is shortest among
    /// those saturated only by it. `Err(None)`
    /// when no carrier serves the route at all, `Err(Some(wait))` when none is
    /// available before `wait`.
    fn pick(
        &self,
        channel: Channel,
        dest: &Destination,
        tried: u64,
        skip: u64,
    ) -> Result<(usize, bool), Option<Duration>> {
        let mut excluded = skip;
        loop {
            let mut any_serving = false;
            let mut wait = Duration::MAX;
            let mut avail = 0u64;
            let mut backlogged: Option<(Duration, usize)> = None;
            for (i, c) in self.carriers.iter().enumerate() {
                if !c.serves(channel, dest) {
                    continue;
                }
                any_serving = true;
                if excluded & (1 << i) != 0 {
                    wait = wait.min(Duration::from_millis(10));
                    continue;
                }
                if let Some(t) = self.throttle_left(c) {
                    wait = wait.min(t);
                    continue;
                }
                if let Admit::No(t) = c.breaker.peek() {
                    wait = wait.min(t);
                    continue;
                }
                if let Some((t, full)) = c.saturated_for() {
                    wait = wait.min(t);
                    if !full && backlogged.is_none_or(|(b, _)| t < b) {
                        backlogged = Some((t, i));
                    }
                    continue;
                }
                avail |= 1 << i;
            }
            if !any_serving {
                return Err(None);
            }
            if avail == 0 {
                match backlogged {
                    Some((_, i)) => avail = 1 << i,
                    None => return Err(Some(wait)),
                }
            }
            let fresh = avail & !tried;
            let set = if fresh != 0 { fresh } else { avail };
            let best = (0..self.carriers.len())
                .filter(|&i| set & (1 << i) != 0)
                .map(|i| self.carriers[i].priority)
                .min()
                .unwrap_or(0);
            let group = || {
                (0..self.carriers.len())
                    .filter(move |&i| set & (1 << i) != 0 && self.carriers[i].priority == best)
            };
            let total: u64 = group().map(|i| u64::from(self.carriers[i].weight)).sum();
            let mut r = if total > 1 {
                rand::rng().random_range(0..total)
            } else {
                0
            };
            let mut chosen = 0;
            for i in group() {
                let w = u64::from(self.carriers[i].weight);
                if r < w {
                    chosen = i;
                    break;
                }
                r -= w;
            }
            match self.carriers[chosen].breaker.admit() {
                Admit::Yes => return Ok((chosen, false)),
                Admit::Probe => return Ok((chosen, true)),
                Admit::No(_) => excluded |= 1 << chosen,
            }
        }
    }

    fn sender_set<'a>(&'a self, c: &'a CarrierRt, job: &Job) -> &'a SenderSet {
        if job.channel == Channel::Sms
            && let Some(cc) = job.destination.country()
            && let Some((_, pool)) = self.pools.iter().find(|(c, _)| c == cc)
        {
            return pool;
        }
        &c.senders
    }

    fn fail(&self, job: &Job, slot: CarrierSlot, reason: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.book.outcome_failed.increment(1);
        let name = self
            .carriers
            .get(usize::from(slot.0))
            .map_or("", |c| c.name.as_str());
        self.ledger.delivery_update(
            job.id,
            job.slot_hint,
            DeliveryState::Failed,
            slot,
            name,
            Some(reason),
        );
    }

    /// A try's window slot is given back; lanes waiting for one are woken.
    fn window_put(&self, c: &CarrierRt) {
        if c.window.put() {
            c.wake_lanes();
        }
    }

    /// Puts `due` in the timer. The value comes back if the timer is full
    /// (it never is: it holds as many entries as the intake has slots, plus
    /// one per lane and the book's).
    fn schedule(&self, at: Instant, due: Due) -> Result<TimerKey, Due> {
        let inserted = self.timers.lock().insert(at, due);
        let (key, earliest) = inserted?;
        if earliest {
            self.timer_wake.notify_one();
        }
        Ok(key)
    }

    fn cancel_timer(&self, key: TimerKey) {
        let cancelled = self.timers.lock().cancel(key);
        drop(cancelled);
    }

    /// Keeps `rec` in the timer until `at`, then routes it again; ends it as
    /// failed if the timer cannot take it.
    fn park(&self, rec: Record, at: Instant) {
        if let Err(Due::Retry(rec)) = self.schedule(at, Due::Retry(Box::new(rec))) {
            self.fail_rec(*rec, "the delivery timer is full");
        }
    }

    /// Ends `rec` as failed.
    fn fail_rec(&self, rec: Record, reason: &str) {
        self.fail(&rec.job, rec.last_slot, reason);
        self.end(rec);
    }

    /// `rec` has ended (its outcome recorded): its intake slot comes back.
    fn end(&self, rec: Record) {
        drop(rec);
        debug_assert!(self.intake.available_permits() < self.capacity);
        self.intake.add_permits(1);
    }

    /// Chooses a carrier for `rec` and queues it there; when none can take
    /// it now, keeps it in the timer until one may (within its retry
    /// budget); ends it when it is no longer deliverable or has no route.
    fn route(&self, mut rec: Record) {
        // The lane asks again right before the send; this check only spares
        // a pick and a queue slot for a challenge that ended while it waited.
        if rec.waited && !self.deliverable(&rec.job, self.clock.now_ms()) {
            return self.fail_rec(rec, NOT_PENDING);
        }
        rec.waited = true;
        let mut full = 0u64;
        loop {
            match self.pick(rec.job.channel, &rec.job.destination, rec.tried, full) {
                Ok((idx, probe)) => {
                    let c = &self.carriers[idx];
                    let before = (rec.tried, rec.tries, rec.last_slot);
                    rec.tried |= 1 << idx;
                    rec.tries += 1;
                    rec.last_slot = c.slot;
                    rec.probe = probe;
                    match c.queue.try_push(rec) {
                        Ok(()) => return,
                        // Filled since the pick looked: another carrier, or a wait.
                        Err(Pushed::Full(r) | Pushed::Closed(r)) => {
                            rec = r;
                            if probe {
                                c.breaker.release_probe();
                            }
                            (rec.tried, rec.tries, rec.last_slot) = before;
                            rec.probe = false;
                            full |= 1 << idx;
                        }
                    }
                }
                Err(None) => {
                    return self.fail_rec(rec, "no carrier serves this channel and destination");
                }
                Err(Some(wait)) => {
                    let at = Instant::now() + wait;
                    if self.since_epoch(at) > rec.budget_end {
                        let reason = format!(
                            "no carrier available within the retry budget; last: {}",
                            rec.last_reason
                                .as_deref()
                                .map_or("no try was made", String::as_str)
                        );
                        return self.fail_rec(rec, &reason);
                    }
                    return self.park(rec, at);
                }
            }
        }
    }

    /// Sends `rec` through carrier `c` from lane `lane` (the lane holds a
    /// slot of the window and of the pace for it): its sender, the ledger's
    /// last word, the text, the receipt-book entry, the send. An answer that
    /// comes at once is handled here; otherwise the send comes back as a
    /// [`Flight`] for the lane to await.
    ///
    /// `now` is the lane's reading of the clock for this round of sends: it
    /// dates the send (an answer within the send call counts as taking no
    /// time) and starts its answer timeout.
    fn launch(
        &self,
        c: &CarrierRt,
        lane: usize,
        mut rec: Record,
        now: Instant,
        cx: &mut Context<'_>,
    ) -> Option<Flight> {
        let sender = match rec.job.channel {
            Channel::Sms => {
                let set = self.sender_set(c, &rec.job);
                let reserved = std::mem::replace(&mut rec.sender, NO_SENDER);
                let i = match reserved {
                    NO_SENDER => match set.take() {
                        (i, wait) if wait.is_zero() => i,
                        (i, wait) => {
                            // Every sender is at its pace: wait for the slot
                            // reserved, keeping the window slot, as a send
                            // already under way.
                            rec.sender = i as u16;
                            let due = Due::Dispatch {
                                carrier: c.slot.0,
                                lane: lane as u8,
                                rec: Box::new(rec),
                            };
                            if let Err(Due::Dispatch { rec, .. }) = self.schedule(now + wait, due) {
                                self.window_put(c);
                                if rec.probe {
                                    c.breaker.release_probe();
                                }
                                self.fail_rec(*rec, "the delivery timer is full");
                            }
                            return None;
                        }
                    },
                    i => usize::from(i),
                };
                set.name(i)
            }
            _ => c.senders.name(0),
        };
        // The last word before the send: is the challenge still pending? The
        // same reading of the clock dates the message's text.
        let now_ms = self.clock.now_ms();
        if !self.deliverable(&rec.job, now_ms) {
            if rec.probe {
                c.breaker.release_probe();
            }
            self.window_put(c);
            self.fail_rec(rec, NOT_PENDING);
            return None;
        }
        let job = &rec.job;
        let dial_plan = match (job.channel, job.destination.extension()) {
            (Channel::Voice, Some((ext, kind))) => {
                if kind == ExtensionKind::Operator || job.operator_assistance {
                    DialPlan::Operator(ext.to_owned())
                } else {
                    DialPlan::Tones(ext.to_owned())
                }
            }
            _ => DialPlan::Direct,
        };
        let text = template::render_in(
            job.purpose,
            job.channel,
            job.lang,
            &job.code,
            &job.service_name,
            job.expires_at_ms,
            now_ms,
        );
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.book.register(token);
        if job.purpose == MessagePurpose::CallConfirmation {
            self.await_call(token, job, c.slot);
        }
        let msg = CarrierMessage {
            tenant: job.tenant,
            id: job.id,
            channel: job.channel,
            to: job.destination.address().to_owned(),
            dial_plan,
            purpose: job.purpose,
            sender: sender.to_owned(),
            text,
            token: ReceiptToken(token),
        };
        self.tries.fetch_add(1, Ordering::Relaxed);
        let mut fut = lane::start_send(|| c.imp.send(msg, &self.receipts));
        let sent = Sent {
            rec,
            token,
            t0: self.since_epoch(now),
        };
        match lane::poll_send(&mut fut, cx) {
            Poll::Ready(answer) => {
                self.answered(c, sent, Some(answer), now);
                None
            }
            Poll::Pending => Some(Flight::new(fut, sent)),
        }
    }

    /// The carrier's answer to one send (`None`: none within its timeout),
    /// seen by its lane at `now`: the breaker, the metrics, the ledger, the
    /// receipt book, and what becomes of the message.
    fn answered(&self, c: &CarrierRt, sent: Sent, answer: Option<SendOutcome>, now: Instant) {
        let Sent { rec, token, t0 } = sent;
        let took = self.since_epoch(now).saturating_sub(t0);
        c.m.latency.record(took as f64 / 1e9);
        self.window_put(c);
        let result = match answer {
            None => {
                self.book.cancel(token);
                c.m.timeout.increment(1);
                if c.breaker.failure() {
                    tracing::warn!(carrier = %c.name, "circuit breaker opened");
                }
                TryResult::Retry(format!(
                    "{}: no answer within {} ms",
                    c.name,
                    c.timeout.as_millis()
                ))
            }
            Some(SendOutcome::Accepted) => {
                c.m.accepted.increment(1);
                if c.breaker.success() {
                    tracing::info!(carrier = %c.name, "circuit breaker closed");
                }
                self.ledger.delivery_update(
                    rec.job.id,
                    rec.job.slot_hint,
                    DeliveryState::Sent,
                    c.slot,
                    &c.name,
                    None,
                );
                let ticket = Ticket {
                    id: rec.job.id,
                    hint: rec.job.slot_hint,
                    slot: c.slot,
                };
                if let Some(at) = self.book.arm(token, ticket) {
                    // Cannot fail: the timer keeps room for the book's wake-up.
                    let _ = self.schedule(at, Due::Receipts);
                }
                TryResult::Accepted
            }
            Some(SendOutcome::Throttled { retry_after }) => {
                self.book.cancel(token);
                c.m.throttled.increment(1);
                c.breaker.success();
                let until = (now + retry_after)
                    .saturating_duration_since(self.epoch)
                    .as_nanos() as u64;
                c.throttled_until.fetch_max(until, Ordering::Relaxed);
                TryResult::Retry(format!("{}: throttled", c.name))
            }
            Some(SendOutcome::Rejected { reason }) => {
                self.book.cancel(token);
                c.m.rejected.increment(1);
                c.breaker.success();
                TryResult::Rejected(format!("{}: rejected: {reason}", c.name))
            }
            Some(SendOutcome::Failed { reason }) => {
                self.book.cancel(token);
                c.m.failed.increment(1);
                if c.breaker.failure() {
                    tracing::warn!(carrier = %c.name, "circuit breaker opened");
                }
                TryResult::Retry(format!("{}: {reason}", c.name))
            }
        };
        match result {
            TryResult::Accepted => self.end(rec),
            TryResult::Rejected(reason) => self.fail_rec(rec, &reason),
            TryResult::Retry(reason) => self.retry_later(rec, reason, now),
        }
    }

    /// After a failed try: another try after a back-off with jitter, within
    /// the tries and the time of the retry budget, or the end.
    fn retry_later(&self, mut rec: Record, reason: String, now: Instant) {
        let tries = u32::from(rec.tries);
        if tries >= self.retry.max_tries {
            let reason = format!("all {tries} tries failed; last: {reason}");
            return self.fail_rec(rec, &reason);
        }
        let at = now + self.backoff(tries);
        if self.since_epoch(at) > rec.budget_end {
            let reason = format!("retry budget exhausted after {tries} tries; last: {reason}");
            return self.fail_rec(rec, &reason);
        }
        rec.last_reason = Some(Box::new(reason));
        self.park(rec, at);
    }

    /// Fires one timer entry.
    fn fire(&self, due: Due) {
        match due {
            Due::Retry(rec) => self.route(*rec),
            Due::Dispatch { carrier, lane, rec } => {
                self.carriers[usize::from(carrier)].lanes[usize::from(lane)].ready(*rec);
            }
            Due::Lane { carrier, lane } => {
                self.carriers[usize::from(carrier)].lanes[usize::from(lane)]
                    .waker
                    .wake();
            }
            Due::Receipts => {
                self.book.wake_scheduled.store(false, Ordering::Release);
                self.book.expire(Instant::now());
                if let Some(at) = self.book.next_deadline()
                    && !self.book.wake_scheduled.swap(true, Ordering::AcqRel)
                {
                    let _ = self.schedule(at, Due::Receipts);
                }
            }
        }
    }

    fn backoff(&self, tries: u32) -> Duration {
        let base = self.retry.base_backoff_ms.max(1);
        let exp = base.saturating_mul(1u64 << (tries.saturating_sub(1)).min(20));
        let cap = exp.min(self.retry.max_backoff_ms.max(base));
        // Equal jitter: half fixed, half random.
        let half = cap / 2;
        Duration::from_millis(half + rand::rng().random_range(0..=cap - half))
    }
}

/// [`Record::sender`] when no sender is reserved.
const NO_SENDER: u16 = u16::MAX;

const NOT_PENDING: &str = "the challenge is no longer pending (expired, used or cancelled)";

/// Entries the timer task fires per lock of the timer.
const TIMER_BATCH: usize = 256;

/// The timer task: sleeps until the earliest deadline of the router's timer
/// (or until an earlier one is scheduled), then fires what is due, outside
/// the timer's lock. Ends when the router is dropped.
async fn timer_task(inner: Weak<Inner>, wake: Arc<Notify>) {
    let mut due = Vec::with_capacity(TIMER_BATCH);
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else { return };
            let now = Instant::now();
            let next = {
                let mut t = inner.timers.lock();
                while due.len() < TIMER_BATCH {
                    match t.pop_due(now) {
                        Some((_, d)) => due.push(d),
                        None => break,
                    }
                }
                t.next_deadline()
            };
            let more = due.len() == TIMER_BATCH;
            for d in due.drain(..) {
                inner.fire(d);
            }
            (!more).then_some(next)
        };
        match next {
            // A full batch: let other tasks run, then go on.
            None => tokio::task::yield_now().await,
            Some(Some(at)) => {
                sleep.as_mut().reset(at);
                tokio::select! {
                    () = &mut sleep => {}
                    () = wake.notified() => {}
                }
            }
            Some(None) => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a message costs while in flight, and what keeps it so: the
    /// in-flight set's node (a `FuturesUnordered` task: 64 bytes of links and
    /// counts around a [`lane::Flight`]) must stay within mimalloc's 256-byte
    /// class, and a receipt awaited before the answer is a 24-byte entry.
    #[test]
    fn a_message_in_flight_stays_small() {
        let (record, flight, waiting) = (
            size_of::<Record>(),
            size_of::<lane::Flight>(),
            size_of::<(u64, Early)>(),
        );
        println!("record {record} B, in-flight node's future {flight} B, book entry {waiting} B");
        assert!(record <= 136, "record {record}");
        assert!(flight <= 192, "flight {flight}");
        assert!(waiting <= 24, "book entry {waiting}");
        assert!(size_of::<Due>() <= 16, "timer entry");
    }
}
