//! The SMPP 3.4 carrier (`kind = "smpp"`): SMS through an SMSC over
//! transceiver binds, built on `rusmppc` (connection, sequence numbers,
//! response timeouts, `enquire_link` keep-alive) and `rusmpp`'s PDUs.
//!
//! What it adds on top: several binds with a window of outstanding
//! `submit_sm` each and a pace per bind; reconnection with exponential
//! back-off and jitter; the text's encoding (GSM 7-bit or UCS2, one segment);
//! the meaning of each `submit_sm_resp` status for the router (throttled,
//! rejected or failed); and delivery receipts (`deliver_sm`), matched to
//! their send through a bounded, expiring map of message ids.
//!
//! Decisions (see docs/operations.md, "SMPP carriers"):
//! - A send takes a window slot on a bound bind. The router never lets more
//!   sends in flight than the binds' windows together, so a full window means
//!   binds are down: the send waits for a slot up to half the carrier's
//!   `timeout_ms`, then answers `Throttled` (never a failure, so congestion
//!   never opens the breaker).
//! - No bind up: the send answers `Failed` ("no SMPP bind ...") at once (it
//!   only waits while the first bind attempt is under way), so the router's
//!   breaker opens and traffic fails over while the binds reconnect.
//! - ESME_RTHROTTLED and ESME_RMSGQFUL answer `Throttled` with a back-off
//!   that doubles while they last; invalid destinations `Rejected`; other
//!   statuses, timeouts and lost connections `Failed`.
//!
//! Like every carrier it never retries by itself. It must never log or put in
//! a reason the message's text, a full number or the bind password; and
//! because `rusmpp` logs whole PDUs (text and password included) at debug
//! level under the `rusmpp::codec` target, whoever installs a tracing
//! subscriber must keep that target off (the gateway does).

pub mod config;
mod wire;

pub use config::SmppConfig;

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use rand::Rng;
use rusmpp::pdus::{BindTransceiver, DeliverSm, DeliverSmResp, SubmitSm};
use rusmpp::tlvs::TlvValue;
use rusmpp::types::{COctetString, EmptyOrFullCOctetString, OctetString};
use rusmpp::values::{
    DataCoding, EsmClass, InterfaceVersion, Npi, PriorityFlag, RegisteredDelivery,
    ReplaceIfPresentFlag, ServiceType, Ton,
};
use rusmpp::{Command, CommandStatus, Pdu};
use rusmppc::error::Error as SmppError;
use rusmppc::{Client, ConnectionBuilder, Event};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::wire::ReceiptState;
use super::carrier::{
    Carrier, CarrierMessage, Receipt, ReceiptToken, Receipts, SendFuture, SendOutcome,
};
use super::config::{CarrierConfig, RouterConfigError};
use super::pace::Pacer;
use crate::types::Channel;

/// Message ids awaiting their receipt at once; beyond, the oldest is
/// forgotten (the router's receipt timeout then ends its message).
const MAX_AWAITED: usize = 262_144;
/// Receipts that arrive before their `submit_sm_resp` was handled are kept
/// this long, and this many at most, for it.
const ORPHAN_TTL: Duration = Duration::from_secs(30);
const MAX_ORPHANS: usize = 4_096;
/// The longest a closing bind waits for its `unbind_resp`.
const UNBIND_WAIT: Duration = Duration::from_secs(1);

/// A carrier reached over SMPP 3.4 transceiver binds.
pub struct SmppCarrier {
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for SmppCarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmppCarrier")
            .field("name", &self.shared.name)
            .field("host", &self.shared.cfg.host)
            .field("port", &self.shared.cfg.port)
            .field("binds", &self.shared.binds.len())
            .field("binds_up", &self.binds_up())
            .finish()
    }
}

/// Ends the binds (each unbinds, then closes) when the router lets go.
impl Drop for SmppCarrier {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

struct Shared {
    name: String,
    cfg: SmppConfig,
    /// The carrier's `timeout_ms`: connect, bind and response timeouts.
    timeout: Duration,
    binds: Vec<Bind>,
    /// Round robin over the binds.
    next: AtomicUsize,
    /// A window slot was freed, or a bind went up or down.
    changed: Notify,
    awaited: Mutex<Awaited>,
    /// Throttling answers in a row (reset by an accepted submit).
    throttle_streak: AtomicU32,
    binds_up: Gauge,
    receipts_delivered: Counter,
    receipts_undelivered: Counter,
    receipts_unmatched: Counter,
}

struct Bind {
    /// The bound session, while it is up.
    client: Mutex<Option<Client>>,
    /// True until its first bind attempt ends.
    starting: AtomicBool,
    /// Why it is not up (for "no SMPP bind" reasons); never a secret.
    last_error: Mutex<String>,
    window: Arc<Semaphore>,
    pacer: Option<Pacer>,
}

/// A window slot; freeing it wakes sends waiting for one.
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Release first, then wake: a woken send must find the slot free.
        drop(self.permit.take());
        self.shared.changed.notify_waiters();
    }
}

struct AwaitedEntry {
    token: ReceiptToken,
    receipts: Receipts,
    deadline: Instant,
}

/// Message id -> the send that awaits its receipt, and receipts that came
/// first. Bounded in size and in time.
#[derive(Default)]
struct Awaited {
    map: HashMap<String, AwaitedEntry>,
    order: VecDeque<(Instant, String)>,
    orphans: HashMap<String, (Receipt, Instant)>,
    orphan_order: VecDeque<(Instant, String)>,
}

impl Awaited {
    fn prune(&mut self, now: Instant) {
        while let Some((deadline, key)) = self.order.front() {
            if *deadline > now && self.map.len() < MAX_AWAITED {
                break;
            }
            if self.map.get(key).is_some_and(|e| e.deadline == *deadline) {
                self.map.remove(key);
            }
            self.order.pop_front();
        }
        while let Some((until, key)) = self.orphan_order.front() {
            if *until > now && self.orphans.len() < MAX_ORPHANS {
                break;
            }
            if self.orphans.get(key).is_some_and(|(_, u)| u == until) {
                self.orphans.remove(key);
            }
            self.orphan_order.pop_front();
        }
    }
}

/// Why no slot could be had.
enum NoSlot {
    /// No bind is up: the reason of the last failure.
    NoBind(String),
    /// Binds are up and their windows stayed full.
    Full,
}

/// The events of one bound session.
type Events = Pin<Box<dyn Stream<Item = Event> + Send>>;

impl SmppCarrier {
    /// Starts the carrier of `c` (its `smpp` settings, `name` and
    /// `timeout_ms`): each bind connects and binds in the background, and
    /// keeps doing so until the carrier is dropped. Call inside a tokio
    /// runtime.
    pub fn new(c: &CarrierConfig) -> Result<Self, RouterConfigError> {
        c.smpp
            .validate()
            .map_err(|e| RouterConfigError(format!("smpp.{e}")))?;
        let rt = tokio::runtime::Handle::try_current().map_err(|_| {
            RouterConfigError("the SMPP carrier must start inside a tokio runtime".into())
        })?;
        let cfg = c.smpp.clone();
        let binds = (0..cfg.binds)
            .map(|_| Bind {
                client: Mutex::new(None),
                starting: AtomicBool::new(true),
                last_error: Mutex::new("binding".into()),
                window: Arc::new(Semaphore::new(cfg.window as usize)),
                pacer: Pacer::new(cfg.throughput_per_bind, 1),
            })
            .collect();
        let counter = |result: &'static str| metrics::counter!("watchword_smpp_receipts_total", "carrier" => c.name.clone(), "result" => result);
        let shared = Arc::new(Shared {
            name: c.name.clone(),
            timeout: Duration::from_millis(c.timeout_ms.max(1)),
            binds,
            next: AtomicUsize::new(0),
            changed: Notify::new(),
            awaited: Mutex::new(Awaited::default()),
            throttle_streak: AtomicU32::new(0),
            binds_up: metrics::gauge!("watchword_smpp_binds_up", "carrier" => c.name.clone()),
            receipts_delivered: counter("delivered"),
            receipts_undelivered: counter("undelivered"),
            receipts_unmatched: counter("unmatched"),
            cfg,
        });
        let cancel = CancellationToken::new();
        for i in 0..shared.binds.len() {
            rt.spawn(run_bind(Arc::clone(&shared), i, cancel.clone()));
        }
        Ok(Self { shared, cancel })
    }

    /// Binds up now.
    pub fn binds_up(&self) -> usize {
        self.shared.binds_up_now()
    }
}

impl Carrier for SmppCarrier {
    fn send(&self, msg: CarrierMessage, receipts: &Receipts) -> SendFuture {
        let shared = Arc::clone(&self.shared);
        let receipts = receipts.clone();
        Box::pin(async move { shared.send(msg, receipts).await })
    }
}

impl Shared {
    fn binds_up_now(&self) -> usize {
        self.binds
            .iter()
            .filter(|b| b.client.lock().is_some())
            .count()
    }

    async fn send(self: Arc<Self>, msg: CarrierMessage, receipts: Receipts) -> SendOutcome {
        if msg.channel != Channel::Sms {
            return SendOutcome::Rejected {
                reason: "an SMPP carrier sends SMS only".into(),
            };
        }
        let text = match wire::encode_text(&msg.text) {
            Ok(t) => t,
            Err(e) => {
                return SendOutcome::Rejected {
                    reason: e.to_string(),
                };
            }
        };
        let dest = match wire::dest_address(&msg.to, &self.cfg) {
            Ok(d) => d,
            Err(e) => return SendOutcome::Rejected { reason: e.into() },
        };
        let source = match wire::source_address(&msg.sender, &self.cfg) {
            Ok(s) => s,
            Err(e) => {
                return SendOutcome::Failed {
                    reason: format!("sender: {e}"),
                };
            }
        };
        let Some(submit) = self.submit_sm(&source, &dest, text) else {
            return SendOutcome::Failed {
                reason: "could not encode the submit_sm".into(),
            };
        };
        let (i, client, slot) = match Arc::clone(&self).take_slot().await {
            Ok(s) => s,
            Err(NoSlot::NoBind(why)) => {
                return SendOutcome::Failed {
                    reason: format!("no SMPP bind ({why})"),
                };
            }
            Err(NoSlot::Full) => {
                return SendOutcome::Throttled {
                    retry_after: Duration::from_millis(200),
                };
            }
        };
        if let Some(p) = &self.binds[i].pacer {
            p.until_ready().await;
        }
        let answer = client.submit_sm(submit).await;
        drop(slot);
        match answer {
            Ok(resp) => {
                self.throttle_streak.store(0, Ordering::Relaxed);
                let id = resp.message_id().to_str().unwrap_or_default().trim();
                if !self.cfg.registered_delivery {
                    receipts.report(msg.token, Receipt::Delivered);
                } else if id.is_empty() {
                    tracing::debug!(carrier = %self.name, "submit_sm_resp without a message id: no receipt can match");
                } else {
                    self.await_receipt(id, msg.token, receipts);
                }
                SendOutcome::Accepted
            }
            Err(SmppError::UnexpectedResponse { response }) => self.refused(&response),
            Err(SmppError::ResponseTimeout { .. }) => SendOutcome::Failed {
                reason: format!("no submit_sm_resp within {} ms", self.timeout.as_millis()),
            },
            Err(_) => SendOutcome::Failed {
                reason: "the SMPP connection was lost before the submit_sm_resp".into(),
            },
        }
    }

    /// The outcome of a `submit_sm` answered with an error status.
    fn refused(&self, response: &Command) -> SendOutcome {
        let status = u32::from(response.status());
        let name = wire::status_name(status);
        if status == 0 {
            return SendOutcome::Failed {
                reason: format!("the SMSC answered {:?} to submit_sm", response.id()),
            };
        }
        match wire::classify_status(status) {
            wire::StatusClass::Throttle => {
                let streak = self.throttle_streak.fetch_add(1, Ordering::Relaxed);
                SendOutcome::Throttled {
                    retry_after: wire::throttle_backoff(streak),
                }
            }
            wire::StatusClass::Reject => SendOutcome::Rejected {
                reason: format!("the SMSC refused it: {name}"),
            },
            wire::StatusClass::Fail => SendOutcome::Failed {
                reason: format!("the SMSC answered {name}"),
            },
        }
    }

    fn submit_sm(
        &self,
        source: &wire::Address,
        dest: &wire::Address,
        text: wire::Encoded,
    ) -> Option<SubmitSm> {
        let addr = |a: &wire::Address| COctetString::<1, 21>::from_str(&a.addr).ok();
        let registered = if self.cfg.registered_delivery { 1 } else { 0 };
        Some(
            SubmitSm::builder()
                .service_type(ServiceType::default())
                .source_addr_ton(Ton::from(source.ton))
                .source_addr_npi(Npi::from(source.npi))
                .source_addr(addr(source)?)
                .dest_addr_ton(Ton::from(dest.ton))
                .dest_addr_npi(Npi::from(dest.npi))
                .destination_addr(addr(dest)?)
                .esm_class(EsmClass::default())
                .priority_flag(PriorityFlag::default())
                .schedule_delivery_time(EmptyOrFullCOctetString::empty())
                .validity_period(EmptyOrFullCOctetString::empty())
                .registered_delivery(RegisteredDelivery::from(registered))
                .replace_if_present_flag(ReplaceIfPresentFlag::default())
                .data_coding(DataCoding::from(text.data_coding))
                .short_message(OctetString::new(text.bytes).ok()?)
                .build(),
        )
    }

    /// A window slot on a bound bind, round robin. Waits while binds are up
    /// and full (up to half the timeout) or while the first bind attempts are
    /// under way; with no bind up, answers at once.
    async fn take_slot(self: Arc<Self>) -> Result<(usize, Client, Slot), NoSlot> {
        let deadline = Instant::now() + self.timeout / 2;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let n = self.binds.len();
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            let (mut any_up, mut any_starting) = (false, false);
            for k in 0..n {
                let i = (start + k) % n;
                let b = &self.binds[i];
                let client = b.client.lock().clone();
                match client {
                    Some(client) => {
                        any_up = true;
                        if let Ok(permit) = Arc::clone(&b.window).try_acquire_owned() {
                            let slot = Slot {
                                permit: Some(permit),
                                shared: Arc::clone(&self),
                            };
                            return Ok((i, client, slot));
                        }
                    }
                    None => any_starting |= b.starting.load(Ordering::Relaxed),
                }
            }
            let no_bind = || {
                let why = (self.binds.iter())
                    .map(|b| b.last_error.lock().clone())
                    .next()
                    .unwrap_or_default();
                NoSlot::NoBind(why)
            };
            if !any_up && !any_starting {
                return Err(no_bind());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(if any_up { NoSlot::Full } else { no_bind() });
            }
        }
    }

    /// Remembers that `id`'s receipt goes to `token` (or reports it now if
    /// the receipt came first).
    fn await_receipt(&self, id: &str, token: ReceiptToken, receipts: Receipts) {
        let key = wire::id_key(id);
        let now = Instant::now();
        let early = {
            let mut a = self.awaited.lock();
            a.prune(now);
            let early = std::iter::once(key.clone())
                .chain(wire::id_alternates(id))
                .find_map(|k| a.orphans.remove(&k));
            if early.is_none() {
                let deadline = now + Duration::from_millis(self.cfg.receipt_timeout_ms);
                a.order.push_back((deadline, key.clone()));
                a.map.insert(
                    key,
                    AwaitedEntry {
                        token,
                        receipts: receipts.clone(),
                        deadline,
                    },
                );
            }
            early
        };
        if let Some((receipt, _)) = early {
            receipts.report(token, receipt);
        }
    }

    /// A final receipt for `id`: to its send, or kept a while if unknown yet.
    fn on_receipt(&self, id: &str, receipt: Receipt) {
        match &receipt {
            Receipt::Delivered => self.receipts_delivered.increment(1),
            Receipt::Undelivered { .. } => self.receipts_undelivered.increment(1),
        }
        let key = wire::id_key(id);
        let now = Instant::now();
        let found = {
            let mut a = self.awaited.lock();
            a.prune(now);
            let found = std::iter::once(key.clone())
                .chain(wire::id_alternates(id))
                .find_map(|k| a.map.remove(&k));
            if found.is_none() {
                let until = now + ORPHAN_TTL;
                a.orphan_order.push_back((until, key.clone()));
                a.orphans.insert(key, (receipt.clone(), until));
            }
            found
        };
        match found {
            Some(e) => e.receipts.report(e.token, receipt),
            None => self.receipts_unmatched.increment(1),
        }
    }

    /// Reads a `deliver_sm`: a final delivery receipt goes to its send;
    /// anything else (a mobile-originated message, an intermediate
    /// notification) is acknowledged and ignored.
    fn on_deliver_sm(&self, d: &DeliverSm) {
        // Message type bits 2-5: 0001 is an SMSC delivery receipt.
        if u8::from(d.esm_class) & 0x3C != 0x04 {
            return;
        }
        let (mut tlv_id, mut tlv_state) = (None, None);
        for tlv in d.tlvs() {
            match tlv.value() {
                Some(TlvValue::ReceiptedMessageId(id)) => {
                    tlv_id = id.to_str().ok().map(str::to_owned);
                }
                Some(TlvValue::MessageState(s)) => tlv_state = Some(u8::from(*s)),
                _ => {}
            }
        }
        let bytes = d.short_message().bytes();
        let text = if u8::from(d.data_coding) == wire::DC_UCS2 {
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        } else {
            String::from_utf8_lossy(bytes).into_owned()
        };
        let parsed = wire::parse_receipt_text(&text);
        let Some(id) = tlv_id.filter(|i| !i.is_empty()).or(parsed.id) else {
            tracing::debug!(carrier = %self.name, "delivery receipt without a message id");
            return;
        };
        let state = match (tlv_state, parsed.stat.as_deref()) {
            (Some(s), _) => wire::state_of_tlv(s),
            (None, Some(stat)) => wire::state_of_stat(stat),
            (None, None) => ReceiptState::Pending,
        };
        let receipt = match state {
            ReceiptState::Pending => return,
            ReceiptState::Delivered => Receipt::Delivered,
            ReceiptState::Undelivered(name) => Receipt::Undelivered {
                reason: match parsed.err {
                    Some(err) => format!("the SMSC reported it {name} (err {err})"),
                    None => format!("the SMSC reported it {name}"),
                },
            },
        };
        self.on_receipt(&id, receipt);
    }

    /// Connects and binds bind `i` as a transceiver. The error says why,
    /// without the credentials.
    async fn bind(&self, i: usize) -> Result<(Client, Events), String> {
        let ms = self.timeout.as_millis();
        let addr = (self.cfg.host.as_str(), self.cfg.port);
        let stream =
            match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr)).await {
                Err(_) => return Err(format!("could not connect to the SMSC within {ms} ms")),
                Ok(Err(e)) => return Err(format!("could not connect to the SMSC: {}", e.kind())),
                Ok(Ok(s)) => s,
            };
        let _ = stream.set_nodelay(true);
        let (client, events) = ConnectionBuilder::new()
            .enquire_link_interval(Duration::from_secs(self.cfg.enquire_link_s))
            .enquire_link_response_timeout(self.timeout)
            .response_timeout(self.timeout)
            .disable_interface_version_check()
            .connected(stream);
        let (Ok(system_id), Ok(password), Ok(system_type)) = (
            COctetString::from_str(&self.cfg.system_id),
            COctetString::from_str(&self.cfg.password),
            COctetString::from_str(&self.cfg.system_type),
        ) else {
            let _ = client.close().await;
            return Err("bind: system_id, password or system_type is not usable".into());
        };
        let bind = BindTransceiver::builder()
            .system_id(system_id)
            .password(password)
            .system_type(system_type)
            .interface_version(InterfaceVersion::Smpp3_4)
            .addr_ton(Ton::Unknown)
            .addr_npi(Npi::Unknown)
            .address_range(COctetString::empty())
            .build();
        let why = match client.bind_transceiver(bind).await {
            Ok(_) => {
                tracing::debug!(carrier = %self.name, bind = i, "bind_transceiver accepted");
                return Ok((client, Box::pin(events)));
            }
            Err(SmppError::UnexpectedResponse { response }) => format!(
                "bind refused: {}",
                wire::status_name(u32::from(response.status()))
            ),
            Err(SmppError::ResponseTimeout { .. }) => {
                format!("no bind_transceiver_resp within {ms} ms")
            }
            Err(e) => format!("bind failed: {}", error_reason(&e)),
        };
        let _ = client.close().await;
        Err(why)
    }

    /// Serves bind `i`'s session until it ends; returns why.
    async fn serve(
        &self,
        i: usize,
        client: &Client,
        events: &mut Events,
        cancel: &CancellationToken,
    ) -> Option<String> {
        let mut last_error = None;
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return None,
                e = events.next() => e,
            };
            match event {
                None => {
                    return Some(
                        last_error.unwrap_or_else(|| "the SMSC closed the connection".into()),
                    );
                }
                Some(Event::Error(e)) => last_error = Some(error_reason(&e)),
                Some(Event::Incoming(command)) => {
                    let seq = command.sequence_number();
                    match command.pdu() {
                        Some(Pdu::DeliverSm(d)) => {
                            self.on_deliver_sm(d);
                            let _ = client.deliver_sm_resp(seq, DeliverSmResp::default()).await;
                        }
                        Some(Pdu::Unbind) => {
                            let _ = client.unbind_resp(seq).await;
                            let _ = client.close().await;
                            return Some("the SMSC unbound".into());
                        }
                        // A late answer (its send timed out) or anything else
                        // that needs no answer.
                        _ if command.id().is_response() => {}
                        _ => {
                            tracing::debug!(carrier = %self.name, bind = i, id = ?command.id(), "unsupported SMSC operation refused");
                            let _ = client
                                .status(CommandStatus::EsmeRinvcmdid)
                                .generic_nack(seq)
                                .await;
                        }
                    }
                }
            }
        }
    }

    fn set_client(&self, i: usize, client: Option<Client>) {
        *self.binds[i].client.lock() = client;
        self.binds_up.set(self.binds_up_now() as f64);
        self.changed.notify_waiters();
    }
}

/// A rusmppc error in words, without any PDU's content.
fn error_reason(e: &SmppError) -> String {
    match e {
        SmppError::Dns(io) | SmppError::Connect(io) => format!("could not connect: {}", io.kind()),
        SmppError::Io(io) => format!("connection error: {}", io.kind()),
        SmppError::ConnectionClosed => "connection closed".into(),
        SmppError::Encode(_) => "could not encode a PDU".into(),
        SmppError::Decode(_) => "the SMSC sent a PDU that could not be decoded".into(),
        SmppError::EnquireLinkTimeout { timeout } => {
            format!("no enquire_link_resp within {} ms", timeout.as_millis())
        }
        SmppError::ResponseTimeout { timeout, .. } => {
            format!("no answer within {} ms", timeout.as_millis())
        }
        SmppError::UnexpectedResponse { response } => {
            format!(
                "the SMSC answered {}",
                wire::status_name(u32::from(response.status()))
            )
        }
        SmppError::UnsupportedInterfaceVersion { .. } => "unsupported interface version".into(),
        _ => "SMPP error".into(),
    }
}

/// The back-off before bind attempt `n` (0 for the first retry): doubling
/// from `reconnect_min_ms` to `reconnect_max_ms`, with equal jitter.
fn reconnect_delay(cfg: &SmppConfig, n: u32) -> Duration {
    let min = cfg.reconnect_min_ms.max(1);
    let cap = min
        .saturating_mul(1u64 << n.min(30))
        .min(cfg.reconnect_max_ms.max(min));
    let half = cap / 2;
    Duration::from_millis(half + rand::rng().random_range(0..=cap - half))
}

/// Keeps bind `i` up until `cancel`: binds, serves, and binds again after a
/// back-off when refused or lost.
async fn run_bind(shared: Arc<Shared>, i: usize, cancel: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return,
            a = shared.bind(i) => a,
        };
        let why = match attempt {
            Ok((client, mut events)) => {
                failures = 0;
                shared.set_client(i, Some(client.clone()));
                shared.binds[i].starting.store(false, Ordering::Relaxed);
                tracing::info!(carrier = %shared.name, bind = i, "SMPP bind up");
                let why = shared.serve(i, &client, &mut events, &cancel).await;
                shared.set_client(i, None);
                match why {
                    Some(why) => why,
                    None => {
                        // Closing: unbind politely, briefly.
                        let _ = tokio::time::timeout(UNBIND_WAIT, client.unbind()).await;
                        let _ = client.close().await;
                        return;
                    }
                }
            }
            Err(why) => why,
        };
        let delay = reconnect_delay(&shared.cfg, failures);
        failures = failures.saturating_add(1);
        tracing::warn!(carrier = %shared.name, bind = i, reason = %why, retry_in_ms = delay.as_millis() as u64, "SMPP bind down");
        *shared.binds[i].last_error.lock() = why;
        shared.binds[i].starting.store(false, Ordering::Relaxed);
        shared.changed.notify_waiters();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_double_with_jitter_up_to_the_cap() {
        let cfg = SmppConfig {
            reconnect_min_ms: 100,
            reconnect_max_ms: 1_000,
            ..SmppConfig::default()
        };
        for _ in 0..50 {
            let d0 = reconnect_delay(&cfg, 0).as_millis();
            assert!((50..=100).contains(&d0), "{d0}");
            let d2 = reconnect_delay(&cfg, 2).as_millis();
            assert!((200..=400).contains(&d2), "{d2}");
            let d9 = reconnect_delay(&cfg, 9).as_millis();
            assert!((500..=1_000).contains(&d9), "{d9}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn receipts_find_their_send_in_either_order_and_expire() {
        let c = CarrierConfig {
            name: "smpp".into(),
            smpp: SmppConfig {
                host: "127.0.0.1".into(),
                port: 9,
                system_id: "ww".into(),
                receipt_timeout_ms: 1_000,
                ..SmppConfig::default()
            },
            ..CarrierConfig::default()
        };
        let carrier = SmppCarrier::new(&c).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = Arc::clone(&got);
        let receipts = Receipts::from_fn(move |t, r| g.lock().push((t.0, r)));
        let s = &carrier.shared;
        // Receipt after the answer; the receipt spells the id in decimal.
        s.await_receipt("1A2F00", ReceiptToken(1), receipts.clone());
        s.on_receipt("1715968", Receipt::Delivered);
        // Receipt before the answer.
        s.on_receipt("00b7", Receipt::Undelivered { reason: "x".into() });
        s.await_receipt("B7", ReceiptToken(2), receipts.clone());
        // Expired before its receipt.
        s.await_receipt("c8", ReceiptToken(3), receipts.clone());
        tokio::time::advance(Duration::from_millis(1_500)).await;
        s.on_receipt("c8", Receipt::Delivered);
        assert_eq!(
            *got.lock(),
            vec![
                (1, Receipt::Delivered),
                (2, Receipt::Undelivered { reason: "x".into() })
            ]
        );
        assert!(s.awaited.lock().map.is_empty());
    }
}
