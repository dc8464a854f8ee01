//! Challenge events: every state change of a challenge and of its delivery, and
//! every code offered to a challenge that had already ended, goes to an
//! [`EventSink`] (the gateway's audit log, metrics, tests).
//!
//! An event carries what the audit trail needs (DOMAIN.md §3): tenant, subject,
//! challenge id, channel, masked destination, result and reason. It never
//! carries a code, and never a full destination.

use crate::mask::MaskedDestination;
use crate::types::{ChallengeId, Channel, TenantId};

/// What happened to a challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A challenge was created.
    Issued,
    /// The upstream system asked for the same code to be sent again.
    Resent,
    /// A right code consumed the challenge.
    Approved,
    /// A wrong code was counted.
    Rejected,
    /// The challenge's time ran out (seen by a verify or by the sweeper).
    Expired,
    /// The last allowed wrong code locked the challenge.
    Locked,
    /// The upstream system cancelled the challenge.
    Cancelled,
    /// A newer challenge for the same subject, channel and destination replaced it.
    Superseded,
    /// A carrier accepted a message for the challenge.
    Sent,
    /// A carrier's receipt says the message reached the handset.
    Delivered,
    /// Every try of a message was exhausted or refused for good.
    DeliveryFailed,
    /// A code was offered for a challenge that had already ended (used,
    /// expired, locked, cancelled or superseded); nothing changed. The reason
    /// says which end it had met.
    Refused,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [Self; 12] = [
        Self::Issued,
        Self::Resent,
        Self::Approved,
        Self::Rejected,
        Self::Expired,
        Self::Locked,
        Self::Cancelled,
        Self::Superseded,
        Self::Sent,
        Self::Delivered,
        Self::DeliveryFailed,
        Self::Refused,
    ];

    /// Lower-case name, as written in the audit log and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Resent => "resent",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Locked => "locked",
            Self::Cancelled => "cancelled",
            Self::Superseded => "superseded",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::DeliveryFailed => "delivery_failed",
            Self::Refused => "refused",
        }
    }
}

/// One event. Borrowed fields live only for the call to [`EventSink::record`].
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    /// What happened.
    pub kind: EventKind,
    /// When, in Unix milliseconds, by the engine's clock.
    pub at_ms: u64,
    /// Whose challenge.
    pub tenant: TenantId,
    /// The challenge.
    pub id: ChallengeId,
    /// The upstream user id.
    pub subject: &'a str,
    /// The delivery channel.
    pub channel: Channel,
    /// The destination, masked.
    pub destination: MaskedDestination,
    /// Wrong attempts still allowed after this event.
    pub attempts_left: u8,
    /// The carrier involved, for delivery events.
    pub carrier: Option<&'a str>,
    /// Why, for denials and failures (never containing a code or destination).
    pub reason: Option<&'a str>,
    /// The end user's address as the upstream system saw it, on `Issued`
    /// events when the request gave one.
    pub client_ip: Option<&'a str>,
}

/// An audit record that is not a challenge's own state change: a decision
/// of the user-level CHECK, or a change to the directory (a user or method
/// created, confirmed, failed, deleted). Never a code, a PIN, a secret or a
/// full destination.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// When, in Unix milliseconds, by the engine's clock.
    pub at_ms: u64,
    /// Whose.
    pub tenant: TenantId,
    /// What happened: `check`, `user_created`, `method_confirmed`, ...
    pub event: &'a str,
    /// `success`, `failure`, `challenge` or `info`.
    pub result: &'a str,
    /// The upstream user id.
    pub subject: &'a str,
    /// The method involved (`sms`, `call`, ...).
    pub method: Option<&'a str>,
    /// Its destination, masked.
    pub destination: Option<MaskedDestination>,
    /// The challenge involved.
    pub challenge: Option<ChallengeId>,
    /// Why, for denials (words such as `wrong_answer`).
    pub reason: Option<&'a str>,
    /// The end user's address as the upstream system saw it.
    pub client_ip: Option<&'a str>,
    /// The help-desk agent's key that acted, by its fingerprint (never the
    /// key).
    pub agent: Option<&'a str>,
}

/// Receives every event. Called outside every table lock; must not block for
/// long (buffer, do not write synchronously) and must not panic.
pub trait EventSink: Send + Sync + 'static {
    /// Takes one event.
    fn record(&self, event: &Event<'_>);

    /// Takes one record of a decision or a directory change. The default
    /// drops it.
    fn record_other(&self, _record: &Record<'_>) {}

    /// Whether this sink wants events at all; `false` lets the table skip
    /// copying them out. Asked once, when the table is built.
    fn enabled(&self) -> bool {
        true
    }
}

/// A sink that drops everything (benchmarks, tools).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl EventSink for NullSink {
    fn record(&self, _event: &Event<'_>) {}

    fn enabled(&self) -> bool {
        false
    }
}

/// An owned copy of an event, for sinks that keep them (tests, queues).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedEvent {
    /// What happened.
    pub kind: EventKind,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// Whose challenge.
    pub tenant: TenantId,
    /// The challenge.
    pub id: ChallengeId,
    /// The upstream user id.
    pub subject: String,
    /// The delivery channel.
    pub channel: Channel,
    /// The masked destination.
    pub destination: String,
    /// Wrong attempts still allowed.
    pub attempts_left: u8,
    /// The carrier involved.
    pub carrier: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// The end user's address, on `Issued` events.
    pub client_ip: Option<String>,
}

impl From<&Event<'_>> for OwnedEvent {
    fn from(e: &Event<'_>) -> Self {
        Self {
            kind: e.kind,
            at_ms: e.at_ms,
            tenant: e.tenant,
            id: e.id,
            subject: e.subject.to_owned(),
            channel: e.channel,
            destination: e.destination.as_str().to_owned(),
            attempts_left: e.attempts_left,
            carrier: e.carrier.map(str::to_owned),
            reason: e.reason.map(str::to_owned),
            client_ip: e.client_ip.map(str::to_owned),
        }
    }
}

/// A sink that keeps every event in memory, for tests. Unbounded by design:
/// only for tests with a bounded number of operations.
#[derive(Debug, Default)]
pub struct MemorySink {
    events: parking_lot::Mutex<Vec<OwnedEvent>>,
    records: parking_lot::Mutex<Vec<OwnedRecord>>,
}

/// An owned copy of a [`Record`], for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedRecord {
    /// What happened.
    pub event: String,
    /// Its result.
    pub result: String,
    /// The upstream user id.
    pub subject: String,
    /// The method.
    pub method: Option<String>,
    /// The masked destination.
    pub destination: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// The agent's key fingerprint.
    pub agent: Option<String>,
}

impl MemorySink {
    /// Every event recorded so far, in order.
    pub fn events(&self) -> Vec<OwnedEvent> {
        self.events.lock().clone()
    }

    /// Every record (decisions, directory changes) so far, in order.
    pub fn records(&self) -> Vec<OwnedRecord> {
        self.records.lock().clone()
    }

    /// How many events of `kind` were recorded.
    pub fn count(&self, kind: EventKind) -> usize {
        self.events.lock().iter().filter(|e| e.kind == kind).count()
    }
}

impl EventSink for MemorySink {
    fn record(&self, event: &Event<'_>) {
        self.events.lock().push(OwnedEvent::from(event));
    }

    fn record_other(&self, r: &Record<'_>) {
        self.records.lock().push(OwnedRecord {
            event: r.event.to_owned(),
            result: r.result.to_owned(),
            subject: r.subject.to_owned(),
            method: r.method.map(str::to_owned),
            destination: r.destination.map(|d| d.as_str().to_owned()),
            reason: r.reason.map(str::to_owned),
            agent: r.agent.map(str::to_owned),
        });
    }
}
