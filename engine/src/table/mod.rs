//! The lock-sharded challenge table: every pending one-time code lives here.
//!
//! Layout. `N` shards (a power of two), each a cache-padded `parking_lot` mutex
//! over a [`Shard`]: a chunked slab of fixed-size entries, two `hashbrown`
//! index tables of 4-byte slab slots (by id, and by tenant + subject), and a
//! one-second timing wheel of slots to sweep.
//!
//! Sharding is by subject: the shard is chosen from the high bits of the
//! `ahash` of (tenant, subject) — below the top 7 bits that hashbrown keeps for
//! its control tags, so shard choice and bucket tags stay independent — and the
//! shard index is written into the top bits of the challenge id. Every
//! operation, by id or by subject, therefore takes exactly one shard lock, and
//! supersede is atomic under it. The remaining >= 116 id bits come from the
//! CSPRNG.
//!
//! This module must never: hold a lock across `.await` (the API is synchronous),
//! take two shard locks at once, call the event sink with a lock held, evict a
//! live challenge to make room, or let an expired code verify whether or not the
//! sweeper has run.

mod index;
mod shard;
mod sweeper;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crossbeam::utils::CachePadded;
use parking_lot::Mutex;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::code::{Code, MAX_CODE_LEN, MIN_CODE_LEN};
use crate::delivery::{CarrierSlot, ChallengeLedger, SlotHint};
use crate::events::{Event, EventKind, EventSink};
use crate::mask::mask_destination;
use crate::snapshot::{EntryRecord, HashSeeds, Reader, SnapshotError, Writer};
use crate::types::{ChallengeId, ChallengeState, Channel, DeliveryState, TenantId, VerifyOutcome};

use shard::{Entry, Shard, Text, Transition};
pub use sweeper::Sweeper;

/// Shortest accepted validity, seconds.
pub const MIN_TTL_S: u16 = 30;
/// Longest accepted validity, seconds.
pub const MAX_TTL_S: u16 = 3600;
/// Longest accepted subject, bytes.
pub const MAX_SUBJECT_LEN: usize = 256;
/// Longest accepted (normalised) destination, bytes.
pub const MAX_DESTINATION_LEN: usize = 320;
/// Most shards a table may have (ids keep at least 116 random bits).
pub const MAX_SHARDS: usize = 4096;

/// Sizing and timing of the table. `Default` is the production default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TableConfig {
    /// Number of shards; 0 picks `(cores x 16).next_power_of_two()`. Otherwise
    /// a power of two, at most 4096. More shards than dashmap's `cores x 4`:
    /// while the sweeper works through a mass expiry it holds one shard lock
    /// at a time, and a verify collides with it with probability 1/shards.
    pub shards: usize,
    /// Most pending challenges held at once; issuing beyond it fails with a
    /// capacity error (a live challenge is never evicted).
    pub capacity: usize,
    /// How long a finished challenge stays visible to STATUS, seconds. 0: no
    /// tombstones; a finished challenge is forgotten in the same step that
    /// finishes it (its event still carries everything), and a later STATUS
    /// or VERIFY of it answers UNKNOWN rather than LOCKED or EXPIRED.
    pub tombstone_grace_s: u32,
    /// Most wheel entries the sweeper handles under one shard lock.
    pub sweep_slice: usize,
    /// How often the sweeper wakes, milliseconds.
    pub sweep_interval_ms: u64,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            shards: 0,
            capacity: 20_000_000,
            tombstone_grace_s: 60,
            sweep_slice: 8,
            sweep_interval_ms: 100,
        }
    }
}

impl TableConfig {
    /// The shard count this configuration resolves to.
    pub fn resolved_shards(&self) -> usize {
        if self.shards == 0 {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores * 16).next_power_of_two().min(MAX_SHARDS)
        } else {
            self.shards
        }
    }

    /// Checks every field; the error names the field and the reason.
    pub fn validate(&self) -> Result<(), IssueError> {
        let shards = self.resolved_shards();
        if !shards.is_power_of_two() || shards > MAX_SHARDS {
            return Err(IssueError::invalid(
                "table.shards",
                format!("must be 0 (automatic) or a power of two up to {MAX_SHARDS}, got {shards}"),
            ));
        }
        if self.capacity == 0 || self.capacity > u32::MAX as usize / 2 {
            return Err(IssueError::invalid(
                "table.capacity",
                format!(
                    "must be between 1 and {}, got {}",
                    u32::MAX / 2,
                    self.capacity
                ),
            ));
        }
        if self.sweep_slice == 0 {
            return Err(IssueError::invalid(
                "table.sweep_slice",
                "must be at least 1".into(),
            ));
        }
        if self.sweep_interval_ms == 0 {
            return Err(IssueError::invalid(
                "table.sweep_interval_ms",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// One request to create a challenge, with every default already resolved.
#[derive(Clone, Copy, Debug)]
pub struct IssueSpec<'a> {
    /// Whose challenge.
    pub tenant: TenantId,
    /// The upstream user id, 1..=256 bytes.
    pub subject: &'a str,
    /// How the code travels.
    pub channel: Channel,
    /// The normalised destination, 1..=320 bytes.
    pub destination: &'a str,
    /// Digits in the code, 4..=12.
    pub code_len: u8,
    /// Validity in seconds, 30..=3600.
    pub ttl_s: u16,
    /// Wrong codes allowed before the challenge locks, at least 1.
    pub max_attempts: u8,
    /// The end user's address as seen upstream (may be empty); written on
    /// the `Issued` event only, never stored.
    pub client_ip: &'a str,
}

/// What [`ChallengeTable::issue`] hands back: the code goes to the router only.
#[derive(Clone, Copy, Debug)]
pub struct IssuedChallenge {
    /// The new challenge's id.
    pub id: ChallengeId,
    /// The code to deliver (never to the caller on the wire).
    pub code: Code,
    /// When it stops verifying, Unix milliseconds.
    pub expires_at_ms: u64,
    /// The pending challenge it replaced, if any.
    pub superseded: Option<ChallengeId>,
    /// Where the table keeps it, for the router's updates.
    pub slot_hint: SlotHint,
}

/// Why an issue was refused. Nothing was stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// A field's value is not acceptable.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, as named on the wire or in configuration.
        field: &'static str,
        /// Why it is not acceptable.
        reason: String,
    },
    /// The table holds its configured maximum of pending challenges.
    #[error("the challenge table is full ({capacity} pending challenges)")]
    Capacity {
        /// The configured cap.
        capacity: usize,
    },
}

impl IssueError {
    fn invalid(field: &'static str, reason: String) -> Self {
        Self::InvalidArgument { field, reason }
    }
}

/// What a pending challenge needs to be sent again (see [`ChallengeTable::resend`]).
#[derive(Clone, Debug)]
pub struct ResendTicket {
    /// The challenge.
    pub id: ChallengeId,
    /// The same code as before.
    pub code: Code,
    /// The channel.
    pub channel: Channel,
    /// The normalised destination, for the router only.
    pub destination: String,
    /// The subject, for rate limits and audit.
    pub subject: String,
    /// When it expires, Unix milliseconds.
    pub expires_at_ms: u64,
    /// The carrier that carried the last send, to be avoided.
    pub last_carrier: CarrierSlot,
    /// Sends so far, this one included.
    pub sends: u8,
    /// Where the table keeps it, for the router's updates.
    pub slot_hint: SlotHint,
}

impl ResendTicket {
    fn of(e: &Entry, slot: u32) -> Self {
        Self {
            id: e.id,
            slot_hint: SlotHint(slot),
            code: e.code(),
            channel: e.channel(),
            destination: e.destination().to_owned(),
            subject: e.subject().to_owned(),
            expires_at_ms: e.expires_at_ms,
            last_carrier: CarrierSlot(e.carrier),
            sends: e.sends,
        }
    }
}

/// What STATUS reports about a challenge (live or a recent tombstone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusInfo {
    /// Where its life cycle stands.
    pub state: ChallengeState,
    /// Wrong codes still allowed.
    pub attempts_left: u8,
    /// Where its latest message stands.
    pub delivery: DeliveryState,
    /// The carrier of the latest message.
    pub carrier: CarrierSlot,
    /// When it expires (or expired), Unix milliseconds.
    pub expires_at_ms: u64,
    /// Sends so far.
    pub sends: u8,
}

/// What [`ChallengeTable::restore`] did with a snapshot's challenges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreCounts {
    /// Pending challenges restored.
    pub pending: u64,
    /// Tombstones restored (still visible to STATUS).
    pub tombstones: u64,
    /// Pending challenges that expired while the server was down.
    pub expired: u64,
    /// Tombstones whose grace ended while the server was down, or not kept
    /// because this run keeps none (`tombstone_grace_s = 0`).
    pub forgotten: u64,
    /// Challenges of tenants no longer configured.
    pub dropped_unknown_tenant: u64,
    /// Challenges of tenants whose position in the configuration changed.
    pub dropped_moved_tenant: u64,
}

/// The pre-registered metric handles (no registry look-up on the hot path).
struct TableMetrics {
    issued: metrics::Counter,
    superseded: metrics::Counter,
    capacity_refused: metrics::Counter,
    verify: [metrics::Counter; 5],
    expired: metrics::Counter,
    cancelled: metrics::Counter,
    forgotten: metrics::Counter,
    pending: metrics::Gauge,
    tombstones: metrics::Gauge,
}

impl TableMetrics {
    fn new() -> Self {
        let verify = |outcome: &'static str| metrics::counter!("watchword_verify_total", "outcome" => outcome);
        Self {
            issued: metrics::counter!("watchword_challenges_issued_total"),
            superseded: metrics::counter!("watchword_challenges_superseded_total"),
            capacity_refused: metrics::counter!("watchword_challenges_capacity_refused_total"),
            verify: [
                verify("approved"),
                verify("rejected"),
                verify("expired"),
                verify("locked"),
                verify("unknown"),
            ],
            expired: metrics::counter!("watchword_challenges_expired_total"),
            cancelled: metrics::counter!("watchword_challenges_cancelled_total"),
            forgotten: metrics::counter!("watchword_challenges_forgotten_total"),
            pending: metrics::gauge!("watchword_challenges_pending"),
            tombstones: metrics::gauge!("watchword_challenges_tombstones"),
        }
    }
}

/// An event's data copied out of a shard, so the sink runs after the lock is
/// released. Holds no code; the destination is masked on emission.
struct PendingEvent {
    kind: EventKind,
    id: ChallengeId,
    tenant: TenantId,
    channel: Channel,
    attempts_left: u8,
    /// Subject then destination, as the entry holds them (inline when short).
    text: Text,
    subject_len: u16,
}

impl PendingEvent {
    fn from_entry(kind: EventKind, e: &Entry) -> Self {
        Self {
            kind,
            id: e.id,
            tenant: TenantId(e.tenant),
            channel: e.channel(),
            attempts_left: e.attempts_left,
            text: e.text_copy(),
            subject_len: e.subject_len,
        }
    }

    fn emit(&self, sink: &dyn EventSink, at_ms: u64, carrier: Option<&str>, reason: Option<&str>) {
        self.emit_from(sink, at_ms, carrier, reason, None);
    }

    fn emit_from(
        &self,
        sink: &dyn EventSink,
        at_ms: u64,
        carrier: Option<&str>,
        reason: Option<&str>,
        client_ip: Option<&str>,
    ) {
        let (subject, destination) = self.text.bytes().split_at(usize::from(self.subject_len));
        let subject = std::str::from_utf8(subject).unwrap_or("");
        let destination = std::str::from_utf8(destination).unwrap_or("");
        sink.record(&Event {
            kind: self.kind,
            at_ms,
            tenant: self.tenant,
            id: self.id,
            subject,
            channel: self.channel,
            destination: mask_destination(destination),
            attempts_left: self.attempts_left,
            carrier,
            reason,
            client_ip,
        });
    }
}

/// How long a request waits for a busy shard lock before it parks.
const SPIN_BEFORE_PARK: std::time::Duration = std::time::Duration::from_micros(50);
/// How long it spins before it starts yielding the CPU between looks.
const SPIN_BEFORE_YIELD: std::time::Duration = std::time::Duration::from_micros(5);

/// The lock-sharded table of challenges. Share it as `Arc<ChallengeTable>`.
pub struct ChallengeTable {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    shard_bits: u32,
    hasher: ahash::RandomState,
    clock: Arc<dyn Clock>,
    sink: Arc<dyn EventSink>,
    /// Pending challenges across shards, behind by at most one flush batch
    /// per shard; for the capacity check and lock-free reads.
    pending_approx: Arc<CachePadded<AtomicI64>>,
    events: bool,
    config: TableConfig,
    epoch_ms: u64,
    metrics: TableMetrics,
}

impl std::fmt::Debug for ChallengeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChallengeTable")
            .field("shards", &self.shards.len())
            .field("pending_approx", &self.pending_approx())
            .finish_non_exhaustive()
    }
}

impl ChallengeTable {
    /// A new, empty table.
    pub fn new(
        config: TableConfig,
        clock: Arc<dyn Clock>,
        sink: Arc<dyn EventSink>,
    ) -> Result<Self, IssueError> {
        Self::with_seeds(config, clock, sink, HashSeeds::random())
    }

    /// A new, empty table whose hasher has the given seeds (a restart
    /// restores a snapshot into a table with the seeds it was written with).
    pub fn with_seeds(
        config: TableConfig,
        clock: Arc<dyn Clock>,
        sink: Arc<dyn EventSink>,
        seeds: HashSeeds,
    ) -> Result<Self, IssueError> {
        config.validate()?;
        let n = config.resolved_shards();
        let epoch_ms = clock.now_ms();
        let hasher = seeds.hasher();
        let pending_approx = Arc::new(CachePadded::new(AtomicI64::new(0)));
        // Exact for small tables (tests); at most 64 behind per shard for big ones.
        let flush_batch = (config.capacity / (n * 64)).clamp(1, 64) as i32;
        let shards = (0..n)
            .map(|_| {
                CachePadded::new(Mutex::new(Shard::new(
                    epoch_ms,
                    hasher.clone(),
                    pending_approx.clone(),
                    flush_batch,
                    config.tombstone_grace_s > 0,
                )))
            })
            .collect();
        let events = sink.enabled();
        Ok(Self {
            shards,
            shard_bits: n.trailing_zeros(),
            hasher,
            clock,
            sink,
            pending_approx,
            events,
            config,
            epoch_ms,
            metrics: TableMetrics::new(),
        })
    }

    /// The configuration the table runs with.
    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// The number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Pending challenges right now, exactly (tombstones not included).
    /// Locking behaviour: takes each shard lock in turn, one at a time.
    pub fn pending(&self) -> usize {
        self.shards.iter().map(|s| s.lock().pending()).sum()
    }

    /// Pending challenges without taking any lock: behind the exact count by
    /// at most 64 per shard on large tables (exact on small ones).
    pub fn pending_approx(&self) -> usize {
        self.pending_approx.load(Ordering::Relaxed).max(0) as usize
    }

    fn event(&self, kind: EventKind, entry: &Entry) -> Option<PendingEvent> {
        self.events.then(|| PendingEvent::from_entry(kind, entry))
    }

    /// Entries held, pending and tombstones. Locking behaviour: takes each
    /// shard lock in turn, one at a time.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether the table holds nothing at all. Locks like [`Self::len`].
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the table's own structures reserve (slabs, indexes, wheels; the
    /// per-entry heap text included). Locks like [`Self::len`].
    pub fn reserved_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().reserved_bytes()).sum()
    }

    fn subject_hash(&self, tenant: TenantId, subject: &str) -> u64 {
        self.hasher.hash_one((tenant.0, subject.as_bytes()))
    }

    fn shard_of_hash(&self, hash: u64) -> usize {
        if self.shard_bits == 0 {
            0
        } else {
            // Skip the top 7 bits: hashbrown's control tags come from them.
            ((hash << 7) >> (64 - self.shard_bits)) as usize
        }
    }

    fn shard_of_id(&self, id: ChallengeId) -> usize {
        if self.shard_bits == 0 {
            0
        } else {
            (id.as_u128() >> (128 - self.shard_bits)) as usize
        }
    }

    fn new_id(&self, shard: usize, rng: &mut impl RngCore) -> ChallengeId {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        if self.shard_bits == 0 {
            return ChallengeId(bytes);
        }
        let keep = u128::MAX >> self.shard_bits;
        let v = (u128::from_be_bytes(bytes) & keep) | ((shard as u128) << (128 - self.shard_bits));
        ChallengeId(v.to_be_bytes())
    }

    fn id_hash(&self, id: ChallengeId) -> u64 {
        self.hasher.hash_one(id.0)
    }

    fn grace_ms(&self) -> u64 {
        u64::from(self.config.tombstone_grace_s) * 1000
    }

    /// Validates a request; the error names the field and the reason.
    pub fn validate(spec: &IssueSpec<'_>) -> Result<(), IssueError> {
        if spec.subject.is_empty() {
            return Err(IssueError::invalid("subject", "must not be empty".into()));
        }
        if spec.subject.len() > MAX_SUBJECT_LEN {
            return Err(IssueError::invalid(
                "subject",
                format!(
                    "is {} bytes; at most {MAX_SUBJECT_LEN} allowed",
                    spec.subject.len()
                ),
            ));
        }
        if spec.destination.is_empty() {
            return Err(IssueError::invalid(
                "destination",
                "must not be empty".into(),
            ));
        }
        if spec.destination.len() > MAX_DESTINATION_LEN {
            return Err(IssueError::invalid(
                "destination",
                format!(
                    "is {} bytes; at most {MAX_DESTINATION_LEN} allowed",
                    spec.destination.len()
                ),
            ));
        }
        if !(MIN_CODE_LEN..=MAX_CODE_LEN).contains(&spec.code_len) {
            return Err(IssueError::invalid(
                "code_len",
                format!(
                    "must be between {MIN_CODE_LEN} and {MAX_CODE_LEN} digits, got {}",
                    spec.code_len
                ),
            ));
        }
        if !(MIN_TTL_S..=MAX_TTL_S).contains(&spec.ttl_s) {
            return Err(IssueError::invalid(
                "ttl_s",
                format!(
                    "must be between {MIN_TTL_S} and {MAX_TTL_S} seconds, got {}",
                    spec.ttl_s
                ),
            ));
        }
        if spec.max_attempts == 0 {
            return Err(IssueError::invalid(
                "max_attempts",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Creates a challenge with a fresh code, superseding the pending one for
    /// the same tenant, subject, channel and destination.
    ///
    /// Locking behaviour: takes the subject's shard lock once; the sink is
    /// called after it is released.
    pub fn issue(&self, spec: &IssueSpec<'_>) -> Result<IssuedChallenge, IssueError> {
        Self::validate(spec)?;
        let now = self.clock.now_ms();
        let hash = self.subject_hash(spec.tenant, spec.subject);
        let shard_ix = self.shard_of_hash(hash);
        let mut rng = rand::rng();
        let id = self.new_id(shard_ix, &mut rng);
        let code = Code::generate_with(spec.code_len, &mut rng);
        let expires_at_ms = now + u64::from(spec.ttl_s) * 1000;
        let grace = self.grace_ms();
        let id_hash = self.id_hash(id);

        let (issued, superseded, slot) = {
            let mut shard = self.lock_shard(shard_ix);
            let mut head = shard.newest_for_subject(hash, spec.tenant.0, spec.subject.as_bytes());
            let old = shard.find_same_target(head, spec, now);
            // A new pending challenge must fit under the cap; superseding one
            // adds nothing. A live challenge is never evicted to make room.
            if old.is_none() {
                let approx = self.pending_approx.load(Ordering::Relaxed) + shard.unflushed_growth();
                if approx.max(0) as usize >= self.config.capacity {
                    drop(shard);
                    self.metrics.capacity_refused.increment(1);
                    return Err(IssueError::Capacity {
                        capacity: self.config.capacity,
                    });
                }
            }
            let superseded = old.map(|slot| {
                shard.finish(slot, ChallengeState::Superseded, now + grace, |e| {
                    (e.id, self.event(EventKind::Superseded, e))
                })
            });
            if superseded.is_some() {
                head = shard.newest_for_subject(hash, spec.tenant.0, spec.subject.as_bytes());
            }
            let slot = shard.insert(
                Entry::new(id, spec, code, expires_at_ms),
                id_hash,
                hash,
                head,
            );
            (
                self.event(EventKind::Issued, shard.entry(slot)),
                superseded,
                slot,
            )
        };

        self.metrics.issued.increment(1);
        let superseded_id = superseded.as_ref().map(|(id, _)| *id);
        if let Some((_, ev)) = superseded {
            self.metrics.superseded.increment(1);
            if let Some(ev) = ev {
                ev.emit(
                    &*self.sink,
                    now,
                    None,
                    Some("superseded by a newer challenge"),
                );
            }
        }
        if let Some(ev) = issued {
            let client_ip = (!spec.client_ip.is_empty()).then_some(spec.client_ip);
            ev.emit_from(&*self.sink, now, None, None, client_ip);
        }
        Ok(IssuedChallenge {
            id,
            code,
            expires_at_ms,
            superseded: superseded_id,
            slot_hint: SlotHint(slot),
        })
    }

    fn record_verify(&self, outcome: VerifyOutcome) -> VerifyOutcome {
        self.metrics.verify[usize::from(outcome.wire())].increment(1);
        outcome
    }

    /// Checks `code` against challenge `id` of `tenant`.
    ///
    /// Locking behaviour: takes the id's shard lock once; the sink is called
    /// after it is released.
    pub fn verify(&self, tenant: TenantId, id: ChallengeId, code: &[u8]) -> VerifyOutcome {
        // With no gap the attempt is never refused for coming too soon.
        self.verify_spaced(tenant, id, code, 0)
            .unwrap_or(VerifyOutcome::Unknown)
    }

    /// [`Self::verify`], refusing the attempt (`Err(ms to wait)`, nothing
    /// counted, nothing changed) when the challenge's last wrong code came
    /// less than `gap_ms` ago: a floor under the lockout that spreads a
    /// guesser's attempts out in time.
    pub fn verify_spaced(
        &self,
        tenant: TenantId,
        id: ChallengeId,
        code: &[u8],
        gap_ms: u32,
    ) -> Result<VerifyOutcome, u32> {
        let now = self.clock.now_ms();
        let grace = self.grace_ms();
        let (outcome, event) = {
            let mut shard = self.lock_shard(self.shard_of_id(id));
            match shard.find_id(self.id_hash(id), id) {
                Some(slot) if shard.entry(slot).tenant == tenant.0 => {
                    if let Some(wait) = shard.too_soon(slot, now, gap_ms) {
                        return Err(wait);
                    }
                    shard.verify_slot(slot, code, now, grace, |e, t| self.transition_event(e, t))
                }
                _ => (VerifyOutcome::Unknown, None),
            }
        };
        self.after_transition(event, now);
        Ok(self.record_verify(outcome))
    }

    /// Checks `code` against the newest pending challenge of `subject`.
    ///
    /// Expired challenges met on the way are expired (and reported EXPIRED if
    /// no live one remains). Locking behaviour: takes the subject's shard lock
    /// once; the sink is called after it is released.
    pub fn verify_subject(&self, tenant: TenantId, subject: &str, code: &[u8]) -> VerifyOutcome {
        // With no gap the attempt is never refused for coming too soon.
        self.verify_subject_spaced(tenant, subject, code, 0)
            .unwrap_or(VerifyOutcome::Unknown)
    }

    /// [`Self::verify_subject`] with the floor of [`Self::verify_spaced`].
    pub fn verify_subject_spaced(
        &self,
        tenant: TenantId,
        subject: &str,
        code: &[u8],
        gap_ms: u32,
    ) -> Result<VerifyOutcome, u32> {
        if subject.is_empty() || subject.len() > MAX_SUBJECT_LEN {
            return Ok(self.record_verify(VerifyOutcome::Unknown));
        }
        let now = self.clock.now_ms();
        let grace = self.grace_ms();
        let hash = self.subject_hash(tenant, subject);
        let mut expired_events = Vec::new();
        let (outcome, event) = {
            let mut shard = self.lock_shard(self.shard_of_hash(hash));
            let mut found = None;
            let mut saw_expired = false;
            while let Some(slot) = shard.newest_for_subject(hash, tenant.0, subject.as_bytes()) {
                if shard.entry(slot).expires_at_ms <= now {
                    expired_events.extend(shard.finish(
                        slot,
                        ChallengeState::Expired,
                        now + grace,
                        |e| self.event(EventKind::Expired, e),
                    ));
                    self.metrics.expired.increment(1);
                    saw_expired = true;
                    continue;
                }
                found = Some(slot);
                break;
            }
            match found {
                Some(slot) => match shard.too_soon(slot, now, gap_ms) {
                    Some(wait) => (Err(wait), None),
                    None => {
                        let (o, ev) = shard.verify_slot(slot, code, now, grace, |e, t| {
                            self.transition_event(e, t)
                        });
                        (Ok(o), ev)
                    }
                },
                None if saw_expired => (Ok(VerifyOutcome::Expired), None),
                None => (Ok(VerifyOutcome::Unknown), None),
            }
        };
        for ev in &expired_events {
            ev.emit(&*self.sink, now, None, Some("validity period ended"));
        }
        self.after_transition(event, now);
        outcome.map(|o| self.record_verify(o))
    }

    /// Maps a shard transition to the verify outcome and the event to emit.
    fn transition_event(
        &self,
        entry: &Entry,
        t: Transition,
    ) -> (VerifyOutcome, Option<(PendingEvent, Option<&'static str>)>) {
        let ev = |kind, reason| self.event(kind, entry).map(|e| (e, reason));
        match t {
            Transition::Approved => (VerifyOutcome::Approved, ev(EventKind::Approved, None)),
            Transition::Rejected => (
                VerifyOutcome::Rejected {
                    attempts_left: entry.attempts_left,
                },
                ev(EventKind::Rejected, Some("wrong code")),
            ),
            Transition::Locked => (
                VerifyOutcome::Locked,
                ev(EventKind::Locked, Some("too many wrong codes")),
            ),
            Transition::NowExpired => {
                self.metrics.expired.increment(1);
                (
                    VerifyOutcome::Expired,
                    ev(EventKind::Expired, Some("validity period ended")),
                )
            }
            // Every authentication attempt is audited (DOMAIN §3), also one
            // against a challenge that had already ended: a run of them is
            // what guessing looks like after a lock.
            Transition::AlreadyFinished(state) => {
                let (outcome, reason) = match state {
                    ChallengeState::Expired => {
                        (VerifyOutcome::Expired, "challenge already expired")
                    }
                    ChallengeState::Locked => {
                        (VerifyOutcome::Locked, "challenge locked by wrong codes")
                    }
                    ChallengeState::Approved => (VerifyOutcome::Unknown, "challenge already used"),
                    ChallengeState::Cancelled => (VerifyOutcome::Unknown, "challenge cancelled"),
                    ChallengeState::Superseded => {
                        (VerifyOutcome::Unknown, "challenge replaced by a newer one")
                    }
                    ChallengeState::Pending => (VerifyOutcome::Unknown, "challenge not pending"),
                };
                (outcome, ev(EventKind::Refused, Some(reason)))
            }
        }
    }

    fn after_transition(&self, event: Option<(PendingEvent, Option<&'static str>)>, now: u64) {
        if let Some((ev, reason)) = event {
            ev.emit(&*self.sink, now, None, reason);
        }
    }

    /// Counts one more send of a pending challenge and hands back what the
    /// router needs to send the same code again; `None` if it is not pending
    /// (unknown, another tenant's, finished or past its deadline).
    ///
    /// The delivery state goes back to `Queued`. Locking behaviour: one shard lock.
    pub fn resend(&self, tenant: TenantId, id: ChallengeId) -> Option<ResendTicket> {
        let now = self.clock.now_ms();
        let (ticket, ev) = {
            let mut shard = self.lock_shard(self.shard_of_id(id));
            let slot = shard.find_id(self.id_hash(id), id)?;
            let e = shard.entry_mut(slot);
            if e.tenant != tenant.0
                || e.state() != ChallengeState::Pending
                || e.expires_at_ms <= now
            {
                return None;
            }
            e.sends = e.sends.saturating_add(1);
            e.delivery = DeliveryState::Queued as u8;
            let ticket = ResendTicket::of(e, slot);
            (ticket, self.event(EventKind::Resent, e))
        };
        if let Some(ev) = ev {
            ev.emit(&*self.sink, now, None, None);
        }
        Some(ticket)
    }

    /// Looks at a pending challenge without changing it (for a resend that the
    /// router may still refuse). Same `None` cases as [`Self::resend`].
    pub fn peek_pending(&self, tenant: TenantId, id: ChallengeId) -> Option<ResendTicket> {
        let now = self.clock.now_ms();
        let shard = self.lock_shard(self.shard_of_id(id));
        let slot = shard.find_id(self.id_hash(id), id)?;
        let e = shard.entry(slot);
        if e.tenant != tenant.0 || e.state() != ChallengeState::Pending || e.expires_at_ms <= now {
            return None;
        }
        Some(ResendTicket::of(e, slot))
    }

    /// Ends a pending challenge; `false` if there was none to end (unknown,
    /// another tenant's, already finished or expired). Locking: one shard lock.
    pub fn cancel(&self, tenant: TenantId, id: ChallengeId) -> bool {
        let now = self.clock.now_ms();
        let grace = self.grace_ms();
        let ev = {
            let mut shard = self.lock_shard(self.shard_of_id(id));
            let Some(slot) = shard.find_id(self.id_hash(id), id) else {
                return false;
            };
            let e = shard.entry(slot);
            if e.tenant != tenant.0 || e.state() != ChallengeState::Pending {
                return false;
            }
            if e.expires_at_ms <= now {
                let ev = shard.finish(slot, ChallengeState::Expired, now + grace, |e| {
                    self.event(EventKind::Expired, e)
                });
                drop(shard);
                self.metrics.expired.increment(1);
                if let Some(ev) = ev {
                    ev.emit(&*self.sink, now, None, Some("validity period ended"));
                }
                return false;
            }
            shard.finish(slot, ChallengeState::Cancelled, now + grace, |e| {
                self.event(EventKind::Cancelled, e)
            })
        };
        self.metrics.cancelled.increment(1);
        if let Some(ev) = ev {
            ev.emit(
                &*self.sink,
                now,
                None,
                Some("cancelled by the upstream system"),
            );
        }
        true
    }

    /// What STATUS reports, for a pending challenge or a tombstone still in its
    /// grace period; `None` otherwise. A pending challenge past its deadline
    /// reports `Expired`. Locking: one shard lock.
    pub fn status(&self, tenant: TenantId, id: ChallengeId) -> Option<StatusInfo> {
        let now = self.clock.now_ms();
        let shard = self.lock_shard(self.shard_of_id(id));
        let slot = shard.find_id(self.id_hash(id), id)?;
        let e = shard.entry(slot);
        if e.tenant != tenant.0 {
            return None;
        }
        let mut state = e.state();
        if state == ChallengeState::Pending && e.expires_at_ms <= now {
            state = ChallengeState::Expired;
        } else if state != ChallengeState::Pending && shard.forget_at_ms(e) <= now {
            return None;
        }
        Some(StatusInfo {
            state,
            attempts_left: e.attempts_left,
            delivery: DeliveryState::from_u8(e.delivery),
            carrier: CarrierSlot(e.carrier),
            expires_at_ms: e.expires_at_ms,
            sends: e.sends,
        })
    }

    /// Takes shard `ix`'s lock for a request. A request that meets the
    /// sweeper spins for up to [`SPIN_BEFORE_PARK`] before it parks: a slice
    /// takes a microsecond or two, while waking a parked thread took tens of
    /// microseconds here and set the verify p99.9 during an expiry storm.
    fn lock_shard(&self, ix: usize) -> parking_lot::MutexGuard<'_, Shard> {
        let mutex = &self.shards[ix];
        if let Some(g) = mutex.try_lock() {
            return g;
        }
        let start = std::time::Instant::now();
        loop {
            for _ in 0..64 {
                std::hint::spin_loop();
                // Read before trying: a failed try still takes the line
                // away from the holder.
                if !mutex.is_locked()
                    && let Some(g) = mutex.try_lock()
                {
                    return g;
                }
            }
            let waited = start.elapsed();
            if waited >= SPIN_BEFORE_PARK {
                return mutex.lock();
            }
            if waited >= SPIN_BEFORE_YIELD {
                // The holder may have been preempted on this very core:
                // spinning would keep it off the CPU; a yield lets it run
                // and costs a fraction of a microsecond when it does not.
                std::thread::yield_now();
            }
        }
    }

    /// Frees what is due: pending challenges past their deadline become
    /// `Expired` tombstones, tombstones past their grace are forgotten.
    ///
    /// Works in slices of at most `sweep_slice` wheel entries per shard lock,
    /// so verifies are never stalled behind a long sweep. Returns how many
    /// entries changed. Locking: each shard lock in turn, briefly, repeatedly.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_ms();
        let grace = self.grace_ms();
        let slice = self.config.sweep_slice;
        let mut changed = 0;
        let mut events: Vec<PendingEvent> = Vec::new();
        for shard in self.shards.iter() {
            loop {
                let mut s = shard.lock();
                let events_on = self.events;
                let outcome = s.sweep_slice(now, grace, slice, |e| {
                    if events_on {
                        events.push(PendingEvent::from_entry(EventKind::Expired, e));
                    }
                });
                // Hand the lock straight to a waiting verify: with a plain
                // unlock this loop re-takes it before the waiter wakes, and
                // the waiter starves for many slices.
                parking_lot::MutexGuard::unlock_fair(s);
                changed += outcome.expired + outcome.forgotten;
                self.metrics.expired.increment(outcome.expired as u64);
                self.metrics.forgotten.increment(outcome.forgotten as u64);
                for ev in events.drain(..) {
                    ev.emit(&*self.sink, now, None, Some("validity period ended"));
                }
                if outcome.done {
                    break;
                }
                // Leave a window in which a verify spinning on this shard gets
                // the lock: re-taking it at once wins the race nearly always,
                // and the verify then parks (tens of microseconds to wake).
                std::thread::yield_now();
            }
        }
        self.prepare_growth();
        changed
    }

    /// Allocates, outside any lock, the bigger index tables that shards
    /// nearing a growth will need, and hands them in: allocating and first
    /// touching a 2.5 MB table under the lock took 4 to 10 ms.
    /// Locking: each shard lock in turn, briefly, twice when it wants one.
    fn prepare_growth(&self) {
        for shard in self.shards.iter() {
            let (id, subject) = shard.lock().spares_wanted();
            if id.is_none() && subject.is_none() {
                continue;
            }
            let id = id.map(hashbrown::HashTable::with_capacity);
            let subject = subject.map(hashbrown::HashTable::with_capacity);
            // Bound first: the guard is a temporary of this statement, so
            // unwanted tables are freed below, after the lock is released.
            let unused = shard.lock().take_spares(id, subject);
            drop(unused);
        }
    }

    /// Publishes the pending and tombstone gauges. Locks like [`Self::len`].
    pub fn publish_gauges(&self) {
        let len = self.len();
        let pending = self.pending();
        self.metrics.pending.set(pending as f64);
        self.metrics
            .tombstones
            .set(len.saturating_sub(pending) as f64);
    }

    /// Writes every pending challenge and tombstone into a snapshot. Each
    /// shard lock is held while its entries are encoded (tens of
    /// microseconds); meant for a shutdown, after the listeners stopped.
    pub fn export(&self, w: &mut Writer) {
        for shard in self.shards.iter() {
            shard.lock().export(&mut |r| w.entry(&r));
        }
    }

    /// Restores a snapshot's challenges into this (empty) table, which must
    /// have the seeds and shard count the snapshot was written with.
    /// `tenants` and `carriers` map the snapshot's numbers to this run's
    /// (`None` / [`CarrierSlot::NONE`] for names gone from the
    /// configuration). Pending challenges that expired meanwhile are dropped
    /// with an `expired` event; tombstones past their grace are dropped.
    pub fn restore(
        &self,
        r: &mut Reader,
        tenants: &[Option<TenantId>],
        carriers: &[CarrierSlot],
    ) -> Result<RestoreCounts, SnapshotError> {
        let now = self.clock.now_ms();
        let mut counts = RestoreCounts::default();
        while let Some(rec) = r.next_entry()? {
            let Some(tenant) = tenants.get(usize::from(rec.tenant)).copied().flatten() else {
                counts.dropped_unknown_tenant += 1;
                continue;
            };
            let carrier = carriers
                .get(usize::from(rec.carrier))
                .copied()
                .unwrap_or(CarrierSlot::NONE);
            let Some(entry) = Entry::from_record(&rec, tenant.0, carrier.0) else {
                return Err(SnapshotError::Malformed("a challenge's fields"));
            };
            self.restore_one(entry, &rec, now, &mut counts);
        }
        Ok(counts)
    }

    fn restore_one(
        &self,
        entry: Entry,
        rec: &EntryRecord<'_>,
        now: u64,
        counts: &mut RestoreCounts,
    ) {
        let pending = entry.state() == ChallengeState::Pending;
        if pending && entry.expires_at_ms <= now {
            counts.expired += 1;
            self.metrics.expired.increment(1);
            if self.events {
                PendingEvent::from_entry(EventKind::Expired, &entry).emit(
                    &*self.sink,
                    now,
                    None,
                    Some("validity period ended during a restart"),
                );
            }
            return;
        }
        if !pending && rec.forget_at_ms <= now {
            counts.forgotten += 1;
            return;
        }
        let hash = self.hasher.hash_one((entry.tenant, entry.subject_bytes()));
        let shard_ix = self.shard_of_id(entry.id);
        if self.shard_of_hash(hash) != shard_ix {
            // Only when the tenant's position in the configuration moved:
            // the shard written into the id no longer matches the subject's.
            counts.dropped_moved_tenant += 1;
            return;
        }
        let id_hash = self.id_hash(entry.id);
        let mut shard = self.lock_shard(shard_ix);
        if shard.find_id(id_hash, entry.id).is_some() {
            return;
        }
        if pending {
            let head = shard.newest_for_subject(hash, entry.tenant, entry.subject_bytes());
            shard.insert(entry, id_hash, hash, head);
            counts.pending += 1;
        } else {
            if shard.insert_tombstone(entry, id_hash, rec.forget_at_ms) {
                counts.tombstones += 1;
            } else {
                counts.forgotten += 1;
            }
        }
    }

    /// The table's creation time, Unix milliseconds (the wheel's epoch).
    pub fn epoch_ms(&self) -> u64 {
        self.epoch_ms
    }
}

impl ChallengeLedger for ChallengeTable {
    fn deliverable(&self, id: ChallengeId, hint: SlotHint) -> bool {
        let now = self.clock.now_ms();
        let shard = self.lock_shard(self.shard_of_id(id));
        shard
            .find_id_hinted(id, hint.0, || self.id_hash(id))
            .is_some_and(|slot| {
                let e = shard.entry(slot);
                e.state() == ChallengeState::Pending && e.expires_at_ms > now
            })
    }

    fn delivery_update(
        &self,
        id: ChallengeId,
        hint: SlotHint,
        state: DeliveryState,
        carrier: CarrierSlot,
        carrier_name: &str,
        reason: Option<&str>,
    ) {
        let now = self.clock.now_ms();
        let ev = {
            let mut shard = self.lock_shard(self.shard_of_id(id));
            let Some(slot) = shard.find_id_hinted(id, hint.0, || self.id_hash(id)) else {
                return;
            };
            let e = shard.entry_mut(slot);
            // A receipt may come after a failover moved the message to another
            // carrier: never go back from a later state to an earlier one.
            if (state as u8) < e.delivery && state != DeliveryState::Queued {
                return;
            }
            e.delivery = state as u8;
            if carrier != CarrierSlot::NONE {
                e.carrier = carrier.0;
            }
            let kind = match state {
                DeliveryState::Queued => return,
                DeliveryState::Sent => EventKind::Sent,
                DeliveryState::Delivered => EventKind::Delivered,
                DeliveryState::Failed => EventKind::DeliveryFailed,
            };
            self.event(kind, e)
        };
        let carrier_name = (!carrier_name.is_empty()).then_some(carrier_name);
        if let Some(ev) = ev {
            ev.emit(&*self.sink, now, carrier_name, reason);
        }
    }
}
