//! The router: admission (keyed limits), the bounded intake, carrier choice by
//! priority and weight, pacing, circuit breakers, retries with back-off and
//! jitter, failover, sender rotation, and receipts — until every accepted
//! message ends delivered or failed.
//!
//! It must never send after the ledger says a challenge is no longer
//! deliverable, never drop a message silently (a full queue is an explicit
//! refusal), never hold a lock across an `.await`, and never log a code or a
//! full destination.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio::time::Instant;

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

    /// The next sender with room, skipping saturated ones; if all are
    /// saturated, reserves the earliest slot and waits for it.
    async fn take(&self) -> &str {
        let n = self.senders.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best = (Duration::MAX, 0);
        for i in 0..n {
            let k = (start + i) % n;
            let (name, pacer) = &self.senders[k];
            match pacer.as_ref().map_or(Ok(()), Pacer::try_acquire) {
                Ok(()) => return name,
                Err(w) if w < best.0 => best = (w, k),
                Err(_) => {}
            }
        }
        let (name, pacer) = &self.senders[best.1];
        if let Some(p) = pacer {
            let wait = p.reserve();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        name
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
    window: Semaphore,
    queued: AtomicUsize,
    queue_cap: usize,
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

    /// How long until this carrier stops being saturated (its waiting queue is
    /// full, or its pacing backlog is over `max_queue_delay`); `None` if it is not.
    fn saturated_for(&self) -> Option<Duration> {
        if self.queued.load(Ordering::Relaxed) >= self.queue_cap {
            return Some(Duration::from_millis(100));
        }
        let backlog = self.pacer.as_ref()?.backlog();
        (backlog > self.max_queue_delay)
            .then(|| (backlog - self.max_queue_delay).max(Duration::from_millis(10)))
    }
}

#[derive(Clone, Copy)]
enum BookState {
    /// Registered before the send; not yet accepted.
    Waiting,
    /// Accepted; the receipt is awaited.
    Armed,
    /// The receipt came before the acceptance was recorded.
    Early(bool),
}

struct BookEntry {
    id: ChallengeId,
    hint: SlotHint,
    slot: CarrierSlot,
    state: BookState,
    reason: Option<String>,
}

#[derive(Default)]
struct BookShard {
    map: HashMap<u64, BookEntry>,
    deadlines: VecDeque<(Instant, u64)>,
}

/// Receipts awaited, by token. Bounded by the accept rate times the receipt timeout.
struct ReceiptBook {
    shards: Box<[Mutex<BookShard>]>,
    ledger: Arc<dyn ChallengeLedger>,
    names: Vec<String>,
    timeout: Duration,
    delivered: AtomicU64,
    failed: AtomicU64,
    awaiting: AtomicU64,
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

    fn register(&self, token: u64, id: ChallengeId, hint: SlotHint, slot: CarrierSlot) {
        self.shard(token).lock().map.insert(
            token,
            BookEntry {
                id,
                hint,
                slot,
                state: BookState::Waiting,
                reason: None,
            },
        );
    }

    fn cancel(&self, token: u64) {
        self.shard(token).lock().map.remove(&token);
    }

    /// The send was accepted (and `Sent` recorded): wait for the receipt.
    fn arm(&self, token: u64) {
        let early = {
            let mut s = self.shard(token).lock();
            let Some(e) = s.map.get_mut(&token) else {
                return;
            };
            match e.state {
                BookState::Early(delivered) => {
                    let e = s.map.remove(&token);
                    e.map(|e| (e, delivered))
                }
                _ => {
                    e.state = BookState::Armed;
                    s.deadlines
                        .push_back((Instant::now() + self.timeout, token));
                    None
                }
            }
        };
        match early {
            Some((e, delivered)) => self.finish(&e, delivered),
            None => {
                self.awaiting.fetch_add(1, Ordering::Relaxed);
                self.evict_over_cap(token);
            }
        }
    }

    /// Keeps a shard within `BOOK_SHARD_CAP` awaited receipts: the oldest end
    /// as failed (their receipt is the most overdue), never silently.
    fn evict_over_cap(&self, token: u64) {
        let mut evicted = Vec::new();
        {
            let mut s = self.shard(token).lock();
            while s.map.len() > BOOK_SHARD_CAP {
                let Some((_, old)) = s.deadlines.pop_front() else {
                    break;
                };
                if let Some(mut e) = s.map.remove(&old) {
                    e.reason = Some("no delivery receipt (too many receipts awaited)".into());
                    evicted.push(e);
                }
            }
        }
        for e in &evicted {
            self.awaiting.fetch_sub(1, Ordering::Relaxed);
            self.finish(e, false);
        }
    }

    fn finish(&self, e: &BookEntry, delivered: bool) {
        let name = self.name(e.slot);
        if delivered {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            self.outcome_delivered.increment(1);
            self.ledger
                .delivery_update(e.id, e.hint, DeliveryState::Delivered, e.slot, name, None);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.outcome_failed.increment(1);
            let reason = e
                .reason
                .as_deref()
                .unwrap_or("the carrier reported it undelivered");
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
                if let Some(mut e) = s.map.remove(&token) {
                    e.reason = Some(format!(
                        "no delivery receipt within {} s",
                        self.timeout.as_secs()
                    ));
                    ended.push(e);
                }
            }
            if s.deadlines.capacity() > 1024 && s.deadlines.len() < s.deadlines.capacity() / 4 {
                s.deadlines.shrink_to_fit();
            }
        }
        for e in &ended {
            self.awaiting.fetch_sub(1, Ordering::Relaxed);
            self.finish(e, false);
        }
        ended.len()
    }
}

impl ReceiptSink for ReceiptBook {
    fn report(&self, token: ReceiptToken, receipt: Receipt) {
        let (delivered, reason) = match receipt {
            Receipt::Delivered => (true, None),
            Receipt::Undelivered { reason } => (false, Some(reason)),
        };
        let done = {
            let mut s = self.shard(token.0).lock();
            let Some(e) = s.map.get_mut(&token.0) else {
                return;
            };
            match e.state {
                BookState::Waiting => {
                    e.state = BookState::Early(delivered);
                    e.reason = reason;
                    None
                }
                BookState::Armed => s.map.remove(&token.0).map(|mut e| {
                    e.reason = reason;
                    e
                }),
                BookState::Early(_) => None,
            }
        };
        if let Some(e) = done {
            self.awaiting.fetch_sub(1, Ordering::Relaxed);
            self.finish(&e, delivered);
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
    pools: HashMap<String, SenderSet>,
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
    rt: tokio::runtime::Handle,
    sims: Vec<(String, Arc<SimulatedCarrier>)>,
    accepted: AtomicU64,
    failed: AtomicU64,
    tries: AtomicU64,
    intake_gauge: Gauge,
    /// `watchword_rate_limited_total{scope="carrier"}`: refused because every carrier was saturated.
    carrier_saturated_refusals: metrics::Counter,
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
    /// Hands the job to the router; infallible once reserved.
    pub fn send(self, job: DeliveryJob) {
        let inner = self.inner;
        inner.accepted.fetch_add(1, Ordering::Relaxed);
        let rt = inner.rt.clone();
        rt.spawn(run_job(inner, job, self.permit));
    }
}

enum TryResult {
    Accepted,
    NotDeliverable,
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

    /// Builds every configured carrier and starts the janitor. Call inside a
    /// tokio runtime.
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
                        CarrierKind::Http => Arc::new(HttpCarrier::new(&c.http).map_err(|e| {
                            RouterConfigError(format!("carriers[{i}] ({}).{}", c.name, e.0))
                        })?),
                        CarrierKind::Smpp => Arc::new(SmppCarrier::new(c).map_err(|e| {
                            RouterConfigError(format!("carriers[{i}] ({}).{}", c.name, e.0))
                        })?),
                        CarrierKind::Smtp => Arc::new(SmtpCarrier::new(&c.smtp).map_err(|e| {
                            RouterConfigError(format!("carriers[{i}] ({}).{}", c.name, e.0))
                        })?),
                    }
                };
            carriers.push(carrier_rt(i, c, imp));
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
            shards: (0..BOOK_SHARDS).map(|_| Mutex::default()).collect(),
            ledger: Arc::clone(&ledger),
            names: carriers.iter().map(|c| c.name.clone()).collect(),
            timeout: Duration::from_millis(config.receipt_timeout_ms),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            awaiting: AtomicU64::new(0),
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
            rt: rt.clone(),
            sims,
            accepted: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            tries: AtomicU64::new(0),
            intake_gauge: metrics::gauge!("watchword_router_queue_depth"),
            carrier_saturated_refusals: metrics::counter!("watchword_rate_limited_total", "scope" => "carrier"),
        });
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
                Some(t) => soonest = Some(soonest.map_or(t, |s| s.min(t))),
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
    /// or draining.
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
                retry_after_ms: 100,
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
    pub fn attach_handsets(&self, handsets: std::sync::Weak<dyn super::Handsets>) {
        for (_, s) in &self.inner.sims {
            s.attach_handsets(handsets.clone());
        }
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

fn carrier_rt(i: usize, c: &CarrierConfig, imp: Arc<dyn Carrier>) -> CarrierRt {
    let mut channels = [false; 4];
    for ch in &c.channels {
        channels[usize::from(ch.wire())] = true;
    }
    CarrierRt {
        name: c.name.clone(),
        slot: CarrierSlot(i as u8),
        imp,
        channels,
        countries: c.countries.clone(),
        prefixes: c.prefixes.clone(),
        priority: c.priority,
        weight: c.weight.max(1),
        pacer: Pacer::new(c.throughput_limit(), 2),
        window: Semaphore::new(c.in_flight_limit()),
        queued: AtomicUsize::new(0),
        queue_cap: c.queue_capacity,
        max_queue_delay: Duration::from_millis(c.max_queue_delay_ms),
        timeout: Duration::from_millis(c.timeout_ms),
        breaker: Breaker::new(c.breaker.clone()),
        throttled_until: AtomicU64::new(0),
        senders: SenderSet::new(&c.senders, c.sender_rate_per_s),
        m: CarrierMetrics::new(&c.name),
    }
}

/// The janitor: receipt deadlines every second, idle limiter keys every
/// `interval`, gauges. Ends when the router is dropped.
async fn janitor(inner: Weak<Inner>, interval: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep = Instant::now();
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        inner.book.expire(now);
        inner
            .intake_gauge
            .set((inner.capacity - inner.intake.available_permits()) as f64);
        for c in &inner.carriers {
            c.m.queue.set(c.queued.load(Ordering::Relaxed) as f64);
            c.m.breaker.set(c.breaker.state().gauge());
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
    /// Whether `job` may still be sent at `now_ms` (the engine clock's reading).
    fn deliverable(&self, job: &DeliveryJob, now_ms: u64) -> bool {
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

    /// Chooses a carrier: serving, not open, not saturated, not throttled;
    /// untried ones first; lowest priority value; spread by weight. `Err(None)`
    /// when no carrier serves the route at all, `Err(Some(wait))` when none is
    /// available before `wait`.
    fn pick(
        &self,
        channel: Channel,
        dest: &Destination,
        tried: u64,
    ) -> Result<(usize, bool), Option<Duration>> {
        let mut excluded = 0u64;
        loop {
            let mut any_serving = false;
            let mut wait = Duration::MAX;
            let mut avail = 0u64;
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
                if let Some(t) = c.saturated_for() {
                    wait = wait.min(t);
                    continue;
                }
                avail |= 1 << i;
            }
            if !any_serving {
                return Err(None);
            }
            if avail == 0 {
                return Err(Some(wait));
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

    fn sender_set<'a>(&'a self, c: &'a CarrierRt, job: &DeliveryJob) -> &'a SenderSet {
        if job.channel == Channel::Sms {
            if let Some(pool) = job.destination.country().and_then(|cc| self.pools.get(cc)) {
                return pool;
            }
        }
        &c.senders
    }

    fn fail(&self, job: &DeliveryJob, slot: CarrierSlot, reason: &str) {
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

    /// One try through carrier `c`.
    async fn try_send(&self, c: &CarrierRt, job: &DeliveryJob, probe: bool) -> TryResult {
        c.queued.fetch_add(1, Ordering::Relaxed);
        let window = c.window.acquire().await;
        if let Some(p) = &c.pacer {
            p.until_ready().await;
        }
        c.queued.fetch_sub(1, Ordering::Relaxed);
        let sender = match job.channel {
            Channel::Sms => self.sender_set(c, job).take().await,
            _ => c.senders.senders[0].0.as_str(),
        };
        // The last word before the send: is the challenge still pending? The
        // same reading of the clock dates the message's text.
        let now_ms = self.clock.now_ms();
        if !self.deliverable(job, now_ms) {
            if probe {
                c.breaker.release_probe();
            }
            return TryResult::NotDeliverable;
        }
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
        let text = template::render(
            job.purpose,
            job.channel,
            &job.locale,
            &job.code,
            &job.service_name,
            job.expires_at_ms,
            now_ms,
        );
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.book.register(token, job.id, job.slot_hint, c.slot);
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
        let t0 = Instant::now();
        let answer = tokio::time::timeout(c.timeout, c.imp.send(msg, &self.receipts)).await;
        c.m.latency.record(t0.elapsed().as_secs_f64());
        drop(window);
        let outcome = match answer {
            Ok(o) => o,
            Err(_) => {
                self.book.cancel(token);
                c.m.timeout.increment(1);
                if c.breaker.failure() {
                    tracing::warn!(carrier = %c.name, "circuit breaker opened");
                }
                return TryResult::Retry(format!(
                    "{}: no answer within {} ms",
                    c.name,
                    c.timeout.as_millis()
                ));
            }
        };
        match outcome {
            SendOutcome::Accepted => {
                c.m.accepted.increment(1);
                if c.breaker.success() {
                    tracing::info!(carrier = %c.name, "circuit breaker closed");
                }
                self.ledger.delivery_update(
                    job.id,
                    job.slot_hint,
                    DeliveryState::Sent,
                    c.slot,
                    &c.name,
                    None,
                );
                self.book.arm(token);
                TryResult::Accepted
            }
            SendOutcome::Throttled { retry_after } => {
                self.book.cancel(token);
                c.m.throttled.increment(1);
                c.breaker.success();
                let until = (Instant::now() + retry_after)
                    .saturating_duration_since(self.epoch)
                    .as_nanos() as u64;
                c.throttled_until.fetch_max(until, Ordering::Relaxed);
                TryResult::Retry(format!("{}: throttled", c.name))
            }
            SendOutcome::Rejected { reason } => {
                self.book.cancel(token);
                c.m.rejected.increment(1);
                c.breaker.success();
                TryResult::Rejected(format!("{}: rejected: {reason}", c.name))
            }
            SendOutcome::Failed { reason } => {
                self.book.cancel(token);
                c.m.failed.increment(1);
                if c.breaker.failure() {
                    tracing::warn!(carrier = %c.name, "circuit breaker opened");
                }
                TryResult::Retry(format!("{}: {reason}", c.name))
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

const NOT_PENDING: &str = "the challenge is no longer pending (expired, used or cancelled)";

async fn run_job(inner: Arc<Inner>, job: DeliveryJob, permit: OwnedSemaphorePermit) {
    let budget_end = Instant::now() + Duration::from_millis(inner.retry.budget_ms);
    let n = inner.carriers.len();
    let mut tried: u64 = if usize::from(job.avoid_carrier.0) < n {
        1 << job.avoid_carrier.0
    } else {
        0
    };
    let mut tries = 0u32;
    let mut last_slot = CarrierSlot::NONE;
    let mut last_reason = String::from("no try was made");
    let mut waited = false;
    loop {
        // try_send asks again right before each send; this check only spares
        // a wait or a pick for a challenge that ended while we slept.
        if waited && !inner.deliverable(&job, inner.clock.now_ms()) {
            inner.fail(&job, last_slot, NOT_PENDING);
            break;
        }
        waited = true;
        let (idx, probe) = match inner.pick(job.channel, &job.destination, tried) {
            Ok(p) => p,
            Err(None) => {
                inner.fail(
                    &job,
                    last_slot,
                    "no carrier serves this channel and destination",
                );
                break;
            }
            Err(Some(wait)) => {
                if Instant::now() + wait > budget_end {
                    let reason = format!(
                        "no carrier available within the retry budget; last: {last_reason}"
                    );
                    inner.fail(&job, last_slot, &reason);
                    break;
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let c = &inner.carriers[idx];
        tried |= 1 << idx;
        tries += 1;
        last_slot = c.slot;
        match inner.try_send(c, &job, probe).await {
            TryResult::Accepted => break,
            TryResult::NotDeliverable => {
                inner.fail(&job, last_slot, NOT_PENDING);
                break;
            }
            TryResult::Rejected(reason) => {
                inner.fail(&job, last_slot, &reason);
                break;
            }
            TryResult::Retry(reason) => last_reason = reason,
        }
        if tries >= inner.retry.max_tries {
            let reason = format!("all {tries} tries failed; last: {last_reason}");
            inner.fail(&job, last_slot, &reason);
            break;
        }
        let delay = inner.backoff(tries);
        if Instant::now() + delay > budget_end {
            let reason = format!("retry budget exhausted after {tries} tries; last: {last_reason}");
            inner.fail(&job, last_slot, &reason);
            break;
        }
        tokio::time::sleep(delay).await;
    }
    drop(permit);
}
