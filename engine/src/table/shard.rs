//! One shard of the challenge table: a chunked slab of entries, the id and
//! subject indexes over it, and the timing wheel that tells the sweeper what
//! is due. Everything here runs under the shard's mutex, held by the caller.
//!
//! Invariants this file must never break:
//! - every entry in a subject chain is `Pending` (finishing unlinks it);
//! - every live entry's slot is in exactly one of `by_id` and `by_id_old`,
//!   and every chain head's in exactly one of `by_subject` and
//!   `by_subject_old` (see `index`: a growing index moves over gradually);
//! - every live entry has a wheel reference in the bucket of its deadline
//!   (stale references are tolerated: the sweeper acts only on entries whose
//!   own deadline has passed);
//! - nothing here allocates per verify.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crossbeam::utils::CachePadded;
use hashbrown::HashTable;

use super::IssueSpec;
use super::index::{TwoTables, find_in, spare_room_wanted};
use crate::code::Code;
use crate::delivery::CarrierSlot;
use crate::snapshot::EntryRecord;
use crate::types::{ChallengeId, ChallengeState, Channel, DeliveryState};

/// Slots per slab chunk: growth costs at most one chunk, never a doubling.
const CHUNK: usize = 1024;
/// Slab slots whose index references an insert moves over while a grown
/// index is worked off (about a microsecond of work per insert).
const MIGRATE_STEP: u32 = 16;
/// Slots per wheel-bucket chunk once a bucket has outgrown its first chunk.
const BUCKET_CHUNK: usize = 1024;

/// A wheel bucket: slot references in chunks of [`BUCKET_CHUNK`]. Growing it
/// never copies more than one chunk: a plain `Vec` doubling under the shard
/// lock copied up to hundreds of kilobytes when an expiry storm moved a
/// shard's tens of thousands of tombstones into one bucket, and set the
/// verify p99.9. Popping gives chunks back as they empty.
#[derive(Default)]
struct Bucket {
    chunks: Vec<Vec<u32>>,
}

impl Bucket {
    fn push(&mut self, slot: u32) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < BUCKET_CHUNK => c.push(slot),
            // The first chunk grows like a Vec (small buckets stay small);
            // later ones are allocated whole.
            Some(_) => {
                let mut c = Vec::with_capacity(BUCKET_CHUNK);
                c.push(slot);
                self.chunks.push(c);
            }
            None => self.chunks.push(vec![slot]),
        }
    }

    /// The most recently pushed reference.
    fn pop(&mut self) -> Option<u32> {
        loop {
            let last = self.chunks.last_mut()?;
            if let Some(slot) = last.pop() {
                if last.is_empty() {
                    self.chunks.pop();
                }
                return Some(slot);
            }
            self.chunks.pop();
        }
    }

    /// References the bucket has room for without allocating.
    fn capacity(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }
}

/// One-second buckets in the wheel (68 minutes: one lap covers the longest TTL).
const WHEEL: u64 = 4096;
/// "No slot" in chains and the free list.
const NIL: u32 = u32::MAX;
/// The `state` byte of a free slab slot.
const VACANT: u8 = u8::MAX;

/// Text bytes an entry holds without a heap block: a 12-byte subject with an
/// E.164 number (24 bytes) or a short e-mail address fits.
const INLINE_TEXT: usize = 38;

/// An entry's subject and destination bytes: inside the entry when they fit
/// in [`INLINE_TEXT`] bytes, else in a heap block of their own. Inline text
/// saves a malloc at issue, a free (often from the sweeper's thread) when the
/// entry is forgotten, a cache miss at every verify that reads the subject,
/// and the heap block's 32 bytes. Events copy it out the same way (a short
/// text is copied, not allocated).
#[derive(Clone)]
pub(super) enum Text {
    Inline { len: u8, bytes: [u8; INLINE_TEXT] },
    Heap(Box<[u8]>),
}

impl Text {
    fn new(subject: &[u8], destination: &[u8]) -> Self {
        let len = subject.len() + destination.len();
        if len <= INLINE_TEXT {
            let mut bytes = [0; INLINE_TEXT];
            bytes[..subject.len()].copy_from_slice(subject);
            bytes[subject.len()..len].copy_from_slice(destination);
            Self::Inline {
                len: len as u8,
                bytes,
            }
        } else {
            let mut text = Vec::with_capacity(len);
            text.extend_from_slice(subject);
            text.extend_from_slice(destination);
            Self::Heap(text.into_boxed_slice())
        }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(b) => b,
        }
    }

    /// Bytes held on the heap (0 when inline).
    fn heap_bytes(&self) -> usize {
        match self {
            Self::Inline { .. } => 0,
            Self::Heap(b) => b.len(),
        }
    }
}

/// One challenge (or tombstone, or free slot): 96 bytes, its text included
/// when it fits inline.
pub(super) struct Entry {
    pub(super) id: ChallengeId,
    code: u64,
    pub(super) expires_at_ms: u64,
    /// Subject bytes, then destination bytes.
    text: Text,
    /// When a tombstone is forgotten, seconds after the shard epoch; while
    /// pending, when its last wrong code came (ms after the epoch, low 32
    /// bits; 0: none yet).
    forget_at_s: u32,
    /// The next-older pending entry of the same subject.
    prev: u32,
    pub(super) subject_len: u16,
    pub(super) tenant: u16,
    channel: u8,
    state: u8,
    pub(super) attempts_left: u8,
    pub(super) sends: u8,
    code_len: u8,
    pub(super) delivery: u8,
    pub(super) carrier: u8,
}

impl Entry {
    pub(super) fn new(
        id: ChallengeId,
        spec: &IssueSpec<'_>,
        code: Code,
        expires_at_ms: u64,
    ) -> Self {
        let (value, len) = code.raw();
        Self {
            id,
            code: value,
            expires_at_ms,
            text: Text::new(spec.subject.as_bytes(), spec.destination.as_bytes()),
            forget_at_s: 0,
            prev: NIL,
            subject_len: spec.subject.len() as u16,
            tenant: spec.tenant.0,
            channel: spec.channel.wire(),
            state: ChallengeState::Pending as u8,
            attempts_left: spec.max_attempts,
            sends: 1,
            code_len: len,
            delivery: DeliveryState::Queued as u8,
            carrier: CarrierSlot::NONE.0,
        }
    }

    fn vacant() -> Self {
        Self {
            id: ChallengeId([0; 16]),
            code: 0,
            expires_at_ms: 0,
            text: Text::Inline {
                len: 0,
                bytes: [0; INLINE_TEXT],
            },
            forget_at_s: 0,
            prev: NIL,
            subject_len: 0,
            tenant: 0,
            channel: 0,
            state: VACANT,
            attempts_left: 0,
            sends: 0,
            code_len: 0,
            delivery: 0,
            carrier: 0,
        }
    }

    fn is_vacant(&self) -> bool {
        self.state == VACANT
    }

    pub(super) fn state(&self) -> ChallengeState {
        ChallengeState::from_u8(self.state)
    }

    pub(super) fn channel(&self) -> Channel {
        Channel::from_wire(self.channel).unwrap_or(Channel::Sms)
    }

    pub(super) fn code(&self) -> Code {
        Code::from_raw(self.code, self.code_len)
    }

    /// A copy of the subject and destination bytes, for an event.
    pub(super) fn text_copy(&self) -> Text {
        self.text.clone()
    }

    pub(super) fn text(&self) -> &[u8] {
        self.text.bytes()
    }

    /// The subject's bytes: compared and hashed without UTF-8 validation
    /// (it was valid when stored).
    pub(super) fn subject_bytes(&self) -> &[u8] {
        &self.text()[..usize::from(self.subject_len)]
    }

    fn destination_bytes(&self) -> &[u8] {
        &self.text()[usize::from(self.subject_len)..]
    }

    pub(super) fn subject(&self) -> &str {
        std::str::from_utf8(self.subject_bytes()).unwrap_or("")
    }

    pub(super) fn destination(&self) -> &str {
        std::str::from_utf8(self.destination_bytes()).unwrap_or("")
    }
}

impl Entry {
    /// The snapshot's view of this entry; `forget_at_ms` is 0 while pending.
    pub(super) fn record(&self, forget_at_ms: u64) -> EntryRecord<'_> {
        EntryRecord {
            tenant: self.tenant,
            id: self.id,
            code: (self.code, self.code_len),
            expires_at_ms: self.expires_at_ms,
            forget_at_ms,
            state: self.state,
            channel: self.channel,
            attempts_left: self.attempts_left,
            sends: self.sends,
            delivery: self.delivery,
            carrier: self.carrier,
            subject: self.subject_bytes(),
            destination: self.destination_bytes(),
        }
    }

    /// An entry read back from a snapshot, under this run's tenant and
    /// carrier numbers; `None` when a field is out of range.
    pub(super) fn from_record(r: &EntryRecord<'_>, tenant: u16, carrier: u8) -> Option<Self> {
        let ok = !r.subject.is_empty()
            && r.subject.len() <= super::MAX_SUBJECT_LEN
            && std::str::from_utf8(r.subject).is_ok()
            && std::str::from_utf8(r.destination).is_ok()
            && r.destination.len() <= super::MAX_DESTINATION_LEN
            && (crate::code::MIN_CODE_LEN..=crate::code::MAX_CODE_LEN).contains(&r.code.1)
            && r.state <= ChallengeState::Superseded as u8
            && Channel::from_wire(r.channel).is_some()
            && r.delivery <= DeliveryState::Failed as u8;
        ok.then(|| Self {
            id: r.id,
            code: r.code.0,
            expires_at_ms: r.expires_at_ms,
            text: Text::new(r.subject, r.destination),
            forget_at_s: 0,
            prev: NIL,
            subject_len: r.subject.len() as u16,
            tenant,
            channel: r.channel,
            state: r.state,
            attempts_left: r.attempts_left,
            sends: r.sends,
            code_len: r.code.1,
            delivery: r.delivery,
            carrier,
        })
    }
}

/// What a verify did to one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Transition {
    Approved,
    Rejected,
    Locked,
    NowExpired,
    AlreadyFinished(ChallengeState),
}

/// What one sweep slice did.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SweepOutcome {
    pub(super) expired: usize,
    pub(super) forgotten: usize,
    /// Nothing more is due in this shard.
    pub(super) done: bool,
}

/// One shard. See the module comment for its invariants.
///
/// Field order is layout (`repr(C)`): the shard sits right after its lock
/// word, and the fields every issue and verify write come first, so that an
/// operation dirties the lock's cache line and one more. Spread over five
/// lines, they moved between the two cores on nearly every operation when two
/// threads worked on the same shards.
#[repr(C)]
pub(super) struct Shard {
    // Written by every issue and verify.
    by_id: HashTable<u32>,
    /// Head (newest pending entry) of each subject chain.
    by_subject: HashTable<u32>,
    /// Pending (not finished) entries in this shard, exact.
    pending: u32,
    /// Change of `pending` not yet added to the table-wide counter.
    unflushed: i32,
    /// Entries held (pending and tombstones).
    live: u32,
    /// The most entries held since the sweeper last considered shrinking
    /// the id index.
    live_high_water: u32,
    /// Slots at or above this were never handed out.
    fresh: u32,
    /// Vacant slots below `fresh`, most recently freed last. A stack of slot
    /// numbers rather than a list threaded through the vacant entries: taking
    /// a slot then reads only the stack's hot tail, where following a link
    /// read the (cold) slot first and stalled every issue on a cache miss.
    free: Vec<u32>,
    /// Bytes of entry text held on the heap (texts too long to be inline).
    text_bytes: usize,
    // Read by every operation, written rarely.
    chunks: Vec<Box<[Entry]>>,
    hasher: ahash::RandomState,
    wheel: Vec<Bucket>,
    epoch_ms: u64,
    /// How large `unflushed` may grow before it is added.
    flush_batch: i32,
    /// The table-wide pending count, behind by at most `flush_batch` per shard.
    global_pending: Arc<CachePadded<AtomicI64>>,
    /// A grown id index's previous table while its slots move over (see
    /// `index`); empty otherwise.
    by_id_old: HashTable<u32>,
    /// The same for the subject index.
    by_subject_old: HashTable<u32>,
    /// A bigger id index, allocated by the sweeper outside the lock, for the
    /// next growth.
    by_id_spare: Option<HashTable<u32>>,
    /// The same for the subject index.
    by_subject_spare: Option<HashTable<u32>>,
    /// The next slab slot whose id reference moves over from `by_id_old`.
    id_cursor: u32,
    /// The next slab slot whose subject reference moves over from
    /// `by_subject_old`.
    subject_cursor: u32,
    // The sweeper's.
    /// The next wheel second to process.
    cursor_s: u64,
    /// References taken from the bucket being swept that belong to a later lap.
    carry: Bucket,
    /// Whether finished challenges stay as tombstones (a grace period above
    /// zero); without one, `finish` forgets a challenge as soon as its event
    /// has been read out of it.
    keep_tombstones: bool,
}

fn entry_in(chunks: &[Box<[Entry]>], slot: u32) -> &Entry {
    &chunks[slot as usize / CHUNK][slot as usize % CHUNK]
}

/// The hash an entry is kept under in the id index.
fn id_hash_of(hasher: &ahash::RandomState, e: &Entry) -> u64 {
    hasher.hash_one(e.id.0)
}

/// The hash an entry is kept under in the subject index.
fn subject_hash_of(hasher: &ahash::RandomState, e: &Entry) -> u64 {
    hasher.hash_one((e.tenant, e.subject_bytes()))
}

/// The id index's hash of a slot's entry (for rehashing).
fn id_hash_in(chunks: &[Box<[Entry]>], hasher: &ahash::RandomState, slot: u32) -> u64 {
    id_hash_of(hasher, entry_in(chunks, slot))
}

/// The subject index's hash of a slot's entry (for rehashing).
fn subject_hash_in(chunks: &[Box<[Entry]>], hasher: &ahash::RandomState, slot: u32) -> u64 {
    subject_hash_of(hasher, entry_in(chunks, slot))
}

/// A shard's two indexes, each as its pair of tables, beside what rehashing
/// them reads: the borrows `Shard::indexes` splits off.
struct Indexes<'a> {
    ids: TwoTables<'a>,
    subjects: TwoTables<'a>,
    id_spare: &'a mut Option<HashTable<u32>>,
    subject_spare: &'a mut Option<HashTable<u32>>,
    id_cursor: &'a mut u32,
    subject_cursor: &'a mut u32,
    chunks: &'a [Box<[Entry]>],
    hasher: &'a ahash::RandomState,
}

/// Moves the references of the next [`MIGRATE_STEP`] slab slots from
/// `cursor` on out of `tables.old`, if it holds any. `key` gives the hash an
/// entry would be indexed under, `None` for one this index cannot hold. Once
/// the walk has passed every slot handed out, whatever is left (nothing,
/// unless an invariant broke) moves at once.
fn migrate_walk(
    mut tables: TwoTables<'_>,
    cursor: &mut u32,
    fresh: u32,
    chunks: &[Box<[Entry]>],
    key: impl Fn(&Entry) -> Option<u64>,
    rehash: impl Fn(&u32) -> u64,
) {
    if tables.old.is_empty() {
        return;
    }
    let end = cursor.saturating_add(MIGRATE_STEP).min(fresh);
    for slot in *cursor..end {
        if let Some(hash) = key(entry_in(chunks, slot)) {
            tables.move_over(hash, slot, &rehash);
        }
    }
    *cursor = end;
    if end >= fresh {
        debug_assert!(tables.old.is_empty(), "every reference moved over");
        tables.finish(&rehash);
    }
}

impl Shard {
    pub(super) fn new(
        epoch_ms: u64,
        hasher: ahash::RandomState,
        global_pending: Arc<CachePadded<AtomicI64>>,
        flush_batch: i32,
        keep_tombstones: bool,
    ) -> Self {
        Self {
            pending: 0,
            unflushed: 0,
            flush_batch,
            global_pending,
            chunks: Vec::new(),
            fresh: 0,
            free: Vec::new(),
            live: 0,
            live_high_water: 0,
            text_bytes: 0,
            by_id: HashTable::new(),
            by_subject: HashTable::new(),
            by_id_old: HashTable::new(),
            by_subject_old: HashTable::new(),
            by_id_spare: None,
            by_subject_spare: None,
            id_cursor: 0,
            subject_cursor: 0,
            hasher,
            wheel: (0..WHEEL).map(|_| Bucket::default()).collect(),
            cursor_s: 0,
            carry: Bucket::default(),
            epoch_ms,
            keep_tombstones,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.live as usize
    }

    /// Pending entries in this shard, exact.
    pub(super) fn pending(&self) -> usize {
        self.pending as usize
    }

    /// The pending count this shard has added that the global counter does
    /// not show yet (never negative for the capacity check's purpose).
    pub(super) fn unflushed_growth(&self) -> i64 {
        i64::from(self.unflushed.max(0))
    }

    fn count_pending(&mut self, delta: i32) {
        self.pending = self.pending.wrapping_add_signed(delta);
        self.unflushed += delta;
        if self.unflushed.abs() >= self.flush_batch {
            self.global_pending
                .fetch_add(i64::from(self.unflushed), Ordering::Relaxed);
            self.unflushed = 0;
        }
    }

    pub(super) fn reserved_bytes(&self) -> usize {
        let slab = self.chunks.len() * CHUNK * size_of::<Entry>();
        let spares = [&self.by_id_spare, &self.by_subject_spare]
            .into_iter()
            .flatten()
            .map(HashTable::capacity)
            .sum::<usize>();
        let slots = self.by_id.capacity()
            + self.by_subject.capacity()
            + self.by_id_old.capacity()
            + self.by_subject_old.capacity()
            + spares;
        let index = slots * (size_of::<u32>() + 1);
        let wheel: usize = self
            .wheel
            .iter()
            .map(|b| b.capacity() * size_of::<u32>())
            .sum();
        let free = self.free.capacity() * size_of::<u32>();
        slab + free + index + wheel + self.text_bytes
    }

    pub(super) fn entry(&self, slot: u32) -> &Entry {
        entry_in(&self.chunks, slot)
    }

    pub(super) fn entry_mut(&mut self, slot: u32) -> &mut Entry {
        &mut self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
    }

    /// Whether an index is working off a growth (its old table not empty).
    fn growing(&self) -> bool {
        !self.by_id_old.is_empty() || !self.by_subject_old.is_empty()
    }

    fn indexes(&mut self) -> Indexes<'_> {
        Indexes {
            ids: TwoTables {
                current: &mut self.by_id,
                old: &mut self.by_id_old,
            },
            subjects: TwoTables {
                current: &mut self.by_subject,
                old: &mut self.by_subject_old,
            },
            id_spare: &mut self.by_id_spare,
            subject_spare: &mut self.by_subject_spare,
            id_cursor: &mut self.id_cursor,
            subject_cursor: &mut self.subject_cursor,
            chunks: &self.chunks,
            hasher: &self.hasher,
        }
    }

    pub(super) fn find_id(&self, id_hash: u64, id: ChallengeId) -> Option<u32> {
        let chunks = &self.chunks;
        find_in(&self.by_id, &self.by_id_old, id_hash, &mut |s| {
            entry_in(chunks, s).id == id
        })
    }

    /// Like [`Self::find_id`], trying `hint` (a slot the id was once kept in)
    /// before the index; `id_hash` is computed only if the hint misses.
    pub(super) fn find_id_hinted(
        &self,
        id: ChallengeId,
        hint: u32,
        id_hash: impl FnOnce() -> u64,
    ) -> Option<u32> {
        let at_hint = self
            .chunks
            .get(hint as usize / CHUNK)
            .and_then(|c| c.get(hint as usize % CHUNK));
        if at_hint.is_some_and(|e| !e.is_vacant() && e.id == id) {
            return Some(hint);
        }
        self.find_id(id_hash(), id)
    }

    /// The head of the subject chain: its newest pending entry.
    pub(super) fn newest_for_subject(&self, hash: u64, tenant: u16, subject: &[u8]) -> Option<u32> {
        let chunks = &self.chunks;
        find_in(&self.by_subject, &self.by_subject_old, hash, &mut |s| {
            let e = entry_in(chunks, s);
            e.tenant == tenant && e.subject_bytes() == subject
        })
    }

    /// The live pending entry with the same tenant, subject, channel and
    /// destination as `spec`, if any.
    pub(super) fn find_same_target(
        &self,
        head: Option<u32>,
        spec: &IssueSpec<'_>,
        now: u64,
    ) -> Option<u32> {
        let mut cur = head?;
        while cur != NIL {
            let e = self.entry(cur);
            if e.channel == spec.channel.wire()
                && e.destination_bytes() == spec.destination.as_bytes()
                && e.expires_at_ms > now
            {
                return Some(cur);
            }
            cur = e.prev;
        }
        None
    }

    fn alloc_slot(&mut self) -> u32 {
        if let Some(slot) = self.free.pop() {
            return slot;
        }
        if self.fresh as usize == self.chunks.len() * CHUNK {
            let chunk: Vec<Entry> = (0..CHUNK).map(|_| Entry::vacant()).collect();
            self.chunks.push(chunk.into_boxed_slice());
        }
        self.fresh += 1;
        self.fresh - 1
    }

    fn due_second(&self, deadline_ms: u64) -> u64 {
        deadline_ms.saturating_sub(self.epoch_ms).div_ceil(1000)
    }

    pub(super) fn forget_at_ms(&self, e: &Entry) -> u64 {
        self.epoch_ms + u64::from(e.forget_at_s) * 1000
    }

    /// The deadline the sweeper acts on: expiry while pending, forgetting after.
    fn deadline_ms(&self, e: &Entry) -> u64 {
        if e.state() == ChallengeState::Pending {
            e.expires_at_ms
        } else {
            self.forget_at_ms(e)
        }
    }

    fn wheel_push(&mut self, slot: u32, deadline_ms: u64) {
        let second = self.due_second(deadline_ms).max(self.cursor_s);
        self.wheel[(second % WHEEL) as usize].push(slot);
    }

    /// Stores a new pending entry at the head of its subject chain, whose
    /// current head the caller looked up (under the same lock).
    pub(super) fn insert(
        &mut self,
        mut entry: Entry,
        id_hash: u64,
        subject_hash: u64,
        head: Option<u32>,
    ) -> u32 {
        if self.growing() {
            self.migrate_step();
        }
        let slot = self.alloc_slot();
        let expires = entry.expires_at_ms;
        entry.prev = head.unwrap_or(NIL);
        self.text_bytes += entry.text.heap_bytes();
        *self.entry_mut(slot) = entry;

        let Indexes {
            mut ids,
            mut subjects,
            id_spare,
            subject_spare,
            id_cursor,
            subject_cursor,
            chunks,
            hasher,
        } = self.indexes();
        let rehash_subject = |s: &u32| subject_hash_in(chunks, hasher, *s);
        let replaced = head
            .is_some_and(|old_head| subjects.replace(subject_hash, old_head, slot, rehash_subject));
        if !replaced && subjects.insert(subject_hash, slot, subject_spare, rehash_subject) {
            *subject_cursor = 0;
        }
        if ids.insert(id_hash, slot, id_spare, |s| id_hash_in(chunks, hasher, *s)) {
            *id_cursor = 0;
        }
        self.live += 1;
        self.live_high_water = self.live_high_water.max(self.live);
        self.count_pending(1);
        self.wheel_push(slot, expires);
        slot
    }

    /// Hands every entry to `out` for a snapshot, with its forget time
    /// (0 while pending): each subject's pending entries oldest first, so
    /// that restoring them in order rebuilds the chain.
    pub(super) fn export(&self, out: &mut impl FnMut(EntryRecord<'_>)) {
        let mut chain = Vec::new();
        for slot in 0..self.fresh {
            let e = self.entry(slot);
            if e.is_vacant() {
                continue;
            }
            if e.state() != ChallengeState::Pending {
                out(e.record(self.forget_at_ms(e)));
                continue;
            }
            let hash = subject_hash_of(&self.hasher, e);
            if self.newest_for_subject(hash, e.tenant, e.subject_bytes()) != Some(slot) {
                continue; // Not a head: written with its chain.
            }
            chain.clear();
            let mut cur = slot;
            while cur != NIL {
                chain.push(cur);
                cur = self.entry(cur).prev;
            }
            for &s in chain.iter().rev() {
                out(self.entry(s).record(0));
            }
        }
    }

    /// Stores a finished entry read back from a snapshot as a tombstone
    /// until `forget_at_ms`; nothing (false) when tombstones are off.
    pub(super) fn insert_tombstone(
        &mut self,
        mut entry: Entry,
        id_hash: u64,
        forget_at_ms: u64,
    ) -> bool {
        if !self.keep_tombstones {
            return false;
        }
        if self.growing() {
            self.migrate_step();
        }
        let slot = self.alloc_slot();
        let forget_s = forget_at_ms.saturating_sub(self.epoch_ms).div_ceil(1000);
        entry.forget_at_s = u32::try_from(forget_s).unwrap_or(u32::MAX);
        entry.prev = NIL;
        self.text_bytes += entry.text.heap_bytes();
        *self.entry_mut(slot) = entry;
        let Indexes {
            mut ids,
            id_spare,
            id_cursor,
            chunks,
            hasher,
            ..
        } = self.indexes();
        if ids.insert(id_hash, slot, id_spare, |s| id_hash_in(chunks, hasher, *s)) {
            *id_cursor = 0;
        }
        self.live += 1;
        self.live_high_water = self.live_high_water.max(self.live);
        let deadline = self.forget_at_ms(self.entry(slot));
        self.wheel_push(slot, deadline);
        true
    }

    /// Takes a pending entry out of its subject chain.
    fn unlink_subject(&mut self, slot: u32) {
        let e = self.entry(slot);
        let hash = subject_hash_of(&self.hasher, e);
        let prev = e.prev;
        let Some(head_slot) = self.newest_for_subject(hash, e.tenant, e.subject_bytes()) else {
            return;
        };
        if head_slot == slot {
            let Indexes {
                mut subjects,
                chunks,
                hasher,
                ..
            } = self.indexes();
            if prev == NIL {
                subjects.remove(hash, slot);
            } else {
                subjects.replace(hash, slot, prev, |s| subject_hash_in(chunks, hasher, *s));
            }
        } else {
            let mut cur = head_slot;
            while cur != NIL {
                let next = self.entry(cur).prev;
                if next == slot {
                    self.entry_mut(cur).prev = prev;
                    break;
                }
                cur = next;
            }
        }
        self.entry_mut(slot).prev = NIL;
    }

    /// Ends a pending entry in `state` and hands it to `read` (which copies
    /// out what the event needs). With a grace period the entry stays as a
    /// tombstone, forgotten by the sweeper at `forget_at_ms`; without one it
    /// is forgotten here, once `read` is done, and its slot is free for the
    /// next issue. (Its expiry's wheel reference then goes stale, which the
    /// sweeper tolerates.)
    pub(super) fn finish<R>(
        &mut self,
        slot: u32,
        state: ChallengeState,
        forget_at_ms: u64,
        read: impl FnOnce(&Entry) -> R,
    ) -> R {
        debug_assert_eq!(self.entry(slot).state(), ChallengeState::Pending);
        self.unlink_subject(slot);
        self.count_pending(-1);
        let forget_s = forget_at_ms.saturating_sub(self.epoch_ms).div_ceil(1000);
        let e = self.entry_mut(slot);
        e.state = state as u8;
        e.forget_at_s = u32::try_from(forget_s).unwrap_or(u32::MAX);
        let out = read(self.entry(slot));
        if self.keep_tombstones {
            let deadline = self.forget_at_ms(self.entry(slot));
            self.wheel_push(slot, deadline);
        } else {
            self.forget(slot);
        }
        out
    }

    /// Frees a tombstone's slot.
    fn forget(&mut self, slot: u32) {
        let id_hash = id_hash_of(&self.hasher, self.entry(slot));
        self.indexes().ids.remove(id_hash, slot);
        self.text_bytes -= self.entry(slot).text.heap_bytes();
        *self.entry_mut(slot) = Entry::vacant();
        self.free.push(slot);
        self.live -= 1;
    }

    /// `now` as milliseconds after the epoch plus one, low 32 bits, never 0
    /// (0 means "no wrong code yet"); differences are taken with wrapping
    /// arithmetic, exact while a challenge lives (an hour at most), far
    /// below the 49-day wrap.
    fn relative_ms(&self, now: u64) -> u32 {
        (now.saturating_sub(self.epoch_ms).wrapping_add(1) as u32).max(1)
    }

    /// How long, in ms, before a pending, unexpired entry takes another code
    /// when its last wrong one came less than `gap_ms` ago; `None` when it
    /// may be tried now.
    pub(super) fn too_soon(&self, slot: u32, now: u64, gap_ms: u32) -> Option<u32> {
        let e = self.entry(slot);
        if gap_ms == 0
            || e.forget_at_s == 0
            || e.state() != ChallengeState::Pending
            || e.expires_at_ms <= now
        {
            return None;
        }
        let since = self.relative_ms(now).wrapping_sub(e.forget_at_s);
        (since < gap_ms).then(|| gap_ms - since)
    }

    /// One verify attempt against a slot, deadline checked first; `read`
    /// sees the entry after the attempt (before a finished one is forgotten)
    /// and what the attempt did.
    pub(super) fn verify_slot<R>(
        &mut self,
        slot: u32,
        code: &[u8],
        now: u64,
        grace_ms: u64,
        read: impl FnOnce(&Entry, Transition) -> R,
    ) -> R {
        let e = self.entry(slot);
        let state = e.state();
        let (t, ends_in) = if state != ChallengeState::Pending {
            (Transition::AlreadyFinished(state), None)
        } else if e.expires_at_ms <= now {
            (Transition::NowExpired, Some(ChallengeState::Expired))
        } else if e.code().matches(code) {
            (Transition::Approved, Some(ChallengeState::Approved))
        } else {
            let at = self.relative_ms(now);
            let e = self.entry_mut(slot);
            e.attempts_left = e.attempts_left.saturating_sub(1);
            // While pending, `forget_at_s` holds when the last wrong code came
            // (see `too_soon`); `finish` sets the real forget time.
            e.forget_at_s = at;
            if e.attempts_left == 0 {
                (Transition::Locked, Some(ChallengeState::Locked))
            } else {
                (Transition::Rejected, None)
            }
        };
        match ends_in {
            Some(end) => self.finish(slot, end, now + grace_ms, |e| read(e, t)),
            None => read(self.entry(slot), t),
        }
    }

    /// Handles at most `slice` wheel references that are due by `now`.
    pub(super) fn sweep_slice(
        &mut self,
        now: u64,
        grace_ms: u64,
        slice: usize,
        mut on_expired: impl FnMut(&Entry),
    ) -> SweepOutcome {
        let now_s = now.saturating_sub(self.epoch_ms) / 1000;
        let mut out = SweepOutcome::default();
        let mut handled = 0;
        while self.cursor_s <= now_s {
            let bucket = (self.cursor_s % WHEEL) as usize;
            while let Some(slot) = self.wheel[bucket].pop() {
                handled += 1;
                let e = self.entry(slot);
                if !e.is_vacant() {
                    let deadline = self.deadline_ms(e);
                    if deadline <= now {
                        if e.state() == ChallengeState::Pending {
                            self.finish(
                                slot,
                                ChallengeState::Expired,
                                now + grace_ms,
                                &mut on_expired,
                            );
                            out.expired += 1;
                        } else {
                            self.forget(slot);
                            out.forgotten += 1;
                        }
                    } else if (self.due_second(deadline) % WHEEL) as usize == bucket {
                        // Due on a later lap of the wheel: keep it here.
                        self.carry.push(slot);
                    }
                    // Otherwise a stale reference: the entry has its own.
                }
                if handled >= slice {
                    return out;
                }
            }
            // The bucket is empty now (its chunks went as it was popped);
            // what belongs to a later lap goes back in.
            self.wheel[bucket] = std::mem::take(&mut self.carry);
            self.cursor_s += 1;
        }
        self.give_back_memory();
        out.done = true;
        out
    }

    /// The room of the spare id and subject index tables worth allocating
    /// now (see `index::spare_room_wanted`), for the sweeper to allocate
    /// outside the lock and hand in with [`Shard::take_spares`].
    pub(super) fn spares_wanted(&self) -> (Option<usize>, Option<usize>) {
        (
            spare_room_wanted(&self.by_id, &self.by_id_old, &self.by_id_spare),
            spare_room_wanted(
                &self.by_subject,
                &self.by_subject_old,
                &self.by_subject_spare,
            ),
        )
    }

    /// Whether the shard holds a spare id and subject index table.
    #[cfg(test)]
    pub(super) fn has_spares(&self) -> (bool, bool) {
        (self.by_id_spare.is_some(), self.by_subject_spare.is_some())
    }

    /// Keeps the spare tables the sweeper allocated, where they are still
    /// wanted (the shard may have changed while the lock was released), and
    /// hands back the others for the caller to drop after unlocking.
    pub(super) fn take_spares(
        &mut self,
        id: Option<HashTable<u32>>,
        subject: Option<HashTable<u32>>,
    ) -> [Option<HashTable<u32>>; 2] {
        let (want_id, want_subject) = self.spares_wanted();
        let keep = |want: Option<usize>, t: Option<HashTable<u32>>, slot: &mut Option<_>| match t {
            Some(t) if want.is_some_and(|room| t.capacity() >= room) => {
                *slot = Some(t);
                None
            }
            other => other,
        };
        [
            keep(want_id, id, &mut self.by_id_spare),
            keep(want_subject, subject, &mut self.by_subject_spare),
        ]
    }

    /// Moves the index references of the next [`MIGRATE_STEP`] slab slots
    /// from each `_old` table that is not empty to its current table (see
    /// `index`).
    fn migrate_step(&mut self) {
        let fresh = self.fresh;
        let Indexes {
            ids,
            subjects,
            id_cursor,
            subject_cursor,
            chunks,
            hasher,
            ..
        } = self.indexes();
        migrate_walk(
            ids,
            id_cursor,
            fresh,
            chunks,
            |e| (!e.is_vacant()).then(|| id_hash_of(hasher, e)),
            |s| id_hash_in(chunks, hasher, *s),
        );
        migrate_walk(
            subjects,
            subject_cursor,
            fresh,
            chunks,
            // Only chain heads are indexed, and every head is pending.
            |e| (e.state() == ChallengeState::Pending).then(|| subject_hash_of(hasher, e)),
            |s| subject_hash_in(chunks, hasher, *s),
        );
    }

    /// Shrinks indexes that have become mostly empty, so memory comes back
    /// after a mass expiry.
    ///
    /// The id index (which holds tombstones too) shrinks only when it stayed
    /// under a quarter full since the last pass, not merely at this moment:
    /// a shard whose tombstones come and go in waves would otherwise shrink
    /// after every wave and pay the rehashes of regrowing it under its lock
    /// (7% of the issue-verify cycle's time in the table benchmark).
    fn give_back_memory(&mut self) {
        if self.live == 0 {
            if !self.chunks.is_empty() {
                self.chunks = Vec::new();
                self.fresh = 0;
                self.free = Vec::new();
                for b in &mut self.wheel {
                    *b = Bucket::default();
                }
            }
            if self.by_id.capacity() > 4096 {
                self.by_id = HashTable::new();
            }
            // Nothing is left to move over, nor to grow into.
            self.by_id_old = HashTable::new();
            self.by_subject_old = HashTable::new();
            self.by_id_spare = None;
            self.by_subject_spare = None;
            self.id_cursor = 0;
            self.subject_cursor = 0;
        }
        if self.growing() {
            // Nothing to give back while a growth is worked off.
            return;
        }
        let high_water = self.live_high_water as usize;
        self.live_high_water = self.live;
        let Indexes {
            ids,
            subjects,
            chunks,
            hasher,
            ..
        } = self.indexes();
        let (by_id, by_subject) = (ids.current, subjects.current);
        if by_id.capacity() > 4096 && high_water * 4 < by_id.capacity() {
            by_id.shrink_to_fit(|&s| id_hash_in(chunks, hasher, s));
        }
        if by_subject.capacity() > 4096 && by_subject.len() * 4 < by_subject.capacity() {
            by_subject.shrink_to_fit(|&s| subject_hash_in(chunks, hasher, s));
        }
    }
}

#[cfg(test)]
mod bucket_tests {
    use super::*;

    #[test]
    fn a_bucket_pops_newest_first_across_chunks_and_gives_chunks_back() {
        let mut b = Bucket::default();
        let n = 3 * BUCKET_CHUNK as u32 + 5;
        for s in 0..n {
            b.push(s);
        }
        assert_eq!(b.chunks.len(), 4);
        assert!(b.chunks[1..].iter().all(|c| c.capacity() == BUCKET_CHUNK));
        for s in (0..n).rev() {
            assert_eq!(b.pop(), Some(s));
        }
        assert_eq!(b.pop(), None);
        assert!(b.chunks.is_empty(), "every chunk was given back");
        b.push(7);
        assert_eq!(b.pop(), Some(7));
    }
}

#[cfg(test)]
mod text_tests {
    use super::*;

    #[test]
    fn an_entry_is_96_bytes_and_short_text_stays_inline() {
        assert_eq!(size_of::<Entry>(), 96);
        let short = Text::new(b"user-0000042", b"+14255550100");
        assert_eq!(short.heap_bytes(), 0);
        assert_eq!(short.bytes(), b"user-0000042+14255550100");
        let exact = Text::new(&[b'a'; 20], &[b'b'; INLINE_TEXT - 20]);
        assert_eq!(exact.heap_bytes(), 0);
        assert_eq!(exact.bytes().len(), INLINE_TEXT);
    }

    #[test]
    fn long_text_goes_to_the_heap_whole() {
        let subject = [b's'; 256];
        let destination = b"someone.with.a.long.name@example.org";
        let t = Text::new(&subject, destination);
        assert_eq!(t.heap_bytes(), 256 + destination.len());
        assert_eq!(&t.bytes()[..256], &subject[..]);
        assert_eq!(&t.bytes()[256..], &destination[..]);
    }
}
