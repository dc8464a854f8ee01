//! The reply cache of one RADIUS client (RFC 5080 §2.2.2): a request is
//! known by its source address and port, Identifier and Request
//! Authenticator; while it is processed a retransmission is discarded, once
//! answered a retransmission gets the same reply bytes again, for
//! [`REPLY_TTL`].
//!
//! The cache is owned by the server's receive loop (no lock). Every entry
//! expires [`REPLY_TTL`] after its reply, checked on every read as well as
//! by the sweep. Both the entries and the requests in progress (the
//! client's in-flight budget) are bounded: a new request that finds the
//! requests in progress at their bound is refused (the caller counts it);
//! one that finds the entries at their bound pushes out the oldest answered
//! reply before its 30 s (counted in [`ReplyCache::evicted_early`]): past
//! `capacity / 30` requests a second from one client, replies are kept for
//! less than 30 s rather than new requests refused. This module must never
//! hold a reply past its deadline, grow past its bound, or look inside a
//! packet.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a reply is kept for retransmissions (radius.md: 30 s).
pub const REPLY_TTL: Duration = Duration::from_secs(30);

/// What identifies a request for duplicate detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// Source address and port (IPv4-mapped addresses in canonical form).
    pub peer: SocketAddr,
    /// The Identifier byte.
    pub identifier: u8,
    /// The Request Authenticator.
    pub authenticator: [u8; 16],
}

#[derive(Debug)]
enum Slot {
    InProgress,
    Done { reply: Box<[u8]>, expires: Instant },
}

/// What [`ReplyCache::begin`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin<'a> {
    /// A new request: it is now in progress; finish or abandon it.
    New,
    /// Already answered: send these bytes again.
    Resend(&'a [u8]),
    /// Still being processed: discard the retransmission.
    InProgress,
    /// The cache holds its maximum of requests in progress (or of
    /// entries, all of them in progress): refuse the request.
    Full,
}

/// One client's reply cache. Not thread-safe by design: one task owns it.
#[derive(Debug)]
pub struct ReplyCache {
    map: HashMap<Key, Slot, ahash::RandomState>,
    /// Answered entries by deadline; all share one TTL, so insertion order
    /// is deadline order.
    order: VecDeque<(Instant, Key)>,
    capacity: usize,
    max_in_progress: usize,
    ttl: Duration,
    in_progress: usize,
    evicted_early: u64,
}

impl ReplyCache {
    /// A cache of at most `capacity` entries (in progress and answered), of
    /// which at most `max_in_progress` in progress, keeping replies for `ttl`.
    pub fn new(capacity: usize, max_in_progress: usize, ttl: Duration) -> ReplyCache {
        ReplyCache {
            map: HashMap::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            max_in_progress: max_in_progress.max(1),
            ttl,
            in_progress: 0,
            evicted_early: 0,
        }
    }

    /// Answered replies pushed out before their deadline to make room, since
    /// the cache was made.
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early
    }

    /// Makes room for one entry by forgetting the oldest answered reply.
    /// False when every entry is in progress.
    fn evict_oldest(&mut self) -> bool {
        while let Some((deadline, key)) = self.order.pop_front() {
            if matches!(self.map.get(&key), Some(Slot::Done { expires, .. }) if *expires == deadline)
            {
                self.map.remove(&key);
                self.evicted_early += 1;
                return true;
            }
        }
        false
    }

    /// Entries held (in progress and answered, expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Requests begun and neither finished nor abandoned.
    pub fn in_progress(&self) -> usize {
        self.in_progress
    }

    /// Looks `key` up at `now`: a new request is recorded as in progress.
    pub fn begin(&mut self, key: Key, now: Instant) -> Begin<'_> {
        self.sweep(now);
        let full = self.in_progress >= self.max_in_progress;
        match self.map.get(&key) {
            // Expired but not yet swept (a deadline equal to now): forget it.
            Some(Slot::Done { expires, .. }) if *expires <= now => {
                self.map.remove(&key);
            }
            Some(Slot::InProgress) => return Begin::InProgress,
            Some(Slot::Done { .. }) => {
                return match self.map.get(&key) {
                    Some(Slot::Done { reply, .. }) => Begin::Resend(reply),
                    _ => Begin::InProgress,
                };
            }
            None if full => return Begin::Full,
            None => {}
        }
        if self.in_progress >= self.max_in_progress
            || (self.map.len() >= self.capacity && !self.evict_oldest())
        {
            return Begin::Full;
        }
        self.map.insert(key, Slot::InProgress);
        self.in_progress += 1;
        Begin::New
    }

    /// Records the reply of a request in progress; it is resent to
    /// retransmissions until `now` + TTL. Ignored for a key not in progress.
    pub fn finish(&mut self, key: Key, reply: Vec<u8>, now: Instant) {
        if let Some(slot @ Slot::InProgress) = self.map.get_mut(&key) {
            let expires = now + self.ttl;
            // Exactly the reply's bytes (the encoder's buffer is larger).
            let reply = reply.into_boxed_slice();
            *slot = Slot::Done { reply, expires };
            self.order.push_back((expires, key));
            self.in_progress -= 1;
        }
    }

    /// Forgets a request in progress that gets no reply (a retransmission
    /// will be processed afresh). Ignored for a key not in progress.
    pub fn abandon(&mut self, key: Key) {
        if let Some(Slot::InProgress) = self.map.get(&key) {
            self.map.remove(&key);
            self.in_progress -= 1;
        }
    }

    /// Removes every reply whose deadline is `now` or earlier, and gives
    /// back memory after a burst.
    pub fn sweep(&mut self, now: Instant) {
        while let Some(&(deadline, key)) = self.order.front() {
            if deadline > now {
                break;
            }
            self.order.pop_front();
            if matches!(self.map.get(&key), Some(Slot::Done { expires, .. }) if *expires == deadline)
            {
                self.map.remove(&key);
            }
        }
    }

    /// Returns spare memory after a burst (called by the periodic sweep).
    pub fn shrink(&mut self) {
        if self.map.capacity() > 4 * self.map.len() + 1024 {
            self.map.shrink_to_fit();
        }
        if self.order.capacity() > 4 * self.order.len() + 1024 {
            self.order.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(port: u16, id: u8) -> Key {
        Key {
            peer: SocketAddr::from(([127, 0, 0, 1], port)),
            identifier: id,
            authenticator: [id; 16],
        }
    }

    #[test]
    fn duplicates_are_discarded_then_answered_then_forgotten() {
        let t0 = Instant::now();
        let mut c = ReplyCache::new(8, 8, REPLY_TTL);
        assert_eq!(c.begin(key(1, 1), t0), Begin::New);
        assert_eq!(c.begin(key(1, 1), t0), Begin::InProgress);
        assert_eq!(c.in_progress(), 1);
        c.finish(key(1, 1), vec![1, 2, 3], t0);
        assert_eq!(c.in_progress(), 0);
        let later = t0 + Duration::from_secs(29);
        assert_eq!(c.begin(key(1, 1), later), Begin::Resend(&[1, 2, 3]));
        // Another port, Identifier or authenticator is another request.
        assert_eq!(c.begin(key(2, 1), t0), Begin::New);
        let mut other = key(1, 1);
        other.authenticator[0] ^= 1;
        assert_eq!(c.begin(other, t0), Begin::New);
        assert_eq!(c.begin(key(1, 2), t0), Begin::New);
        // Expiry: exactly 30 s after the reply.
        assert_eq!(c.begin(key(1, 1), t0 + REPLY_TTL), Begin::New);
    }

    #[test]
    fn a_full_cache_refuses_only_when_every_entry_is_in_progress() {
        let t0 = Instant::now();
        let mut c = ReplyCache::new(2, 2, REPLY_TTL);
        assert_eq!(c.begin(key(1, 1), t0), Begin::New);
        assert_eq!(c.begin(key(1, 2), t0), Begin::New);
        assert_eq!(c.begin(key(1, 3), t0), Begin::Full);
        // Known keys still answer while full.
        assert_eq!(c.begin(key(1, 1), t0), Begin::InProgress);
        c.abandon(key(1, 1));
        assert_eq!(c.begin(key(1, 3), t0), Begin::New);
        c.finish(key(1, 2), vec![9], t0);
        c.finish(key(1, 3), vec![8], t0);
        // Full of answered replies: the oldest makes room, counted.
        assert_eq!(c.begin(key(1, 4), t0), Begin::New);
        assert_eq!(c.evicted_early(), 1);
        assert_eq!(
            c.begin(key(1, 2), t0),
            Begin::New,
            "its reply was pushed out"
        );
        assert_eq!(c.evicted_early(), 2, "and 3's to make room");
        assert_eq!(c.len(), 2);
        assert_eq!(
            c.begin(key(1, 5), t0 + REPLY_TTL),
            Begin::Full,
            "both in progress"
        );
        c.shrink();
        // The in-progress budget: answered entries do not count.
        let mut c = ReplyCache::new(8, 1, REPLY_TTL);
        assert_eq!(c.begin(key(1, 1), t0), Begin::New);
        assert_eq!(c.begin(key(1, 2), t0), Begin::Full);
        assert_eq!(
            c.begin(key(1, 1), t0),
            Begin::InProgress,
            "a duplicate, not full"
        );
        c.finish(key(1, 1), vec![1], t0);
        assert_eq!(c.begin(key(1, 2), t0), Begin::New);
    }

    #[test]
    fn finish_and_abandon_ignore_unknown_keys() {
        let t0 = Instant::now();
        let mut c = ReplyCache::new(4, 4, REPLY_TTL);
        c.finish(key(1, 1), vec![1], t0);
        c.abandon(key(1, 1));
        assert!(c.is_empty());
        assert_eq!(c.begin(key(1, 1), t0), Begin::New);
        c.finish(key(1, 1), vec![1], t0);
        c.abandon(key(1, 1));
        c.finish(key(1, 1), vec![2], t0);
        assert_eq!(c.begin(key(1, 1), t0), Begin::Resend(&[1]));
    }

    /// The reference: a list of (key, reply, deadline, answer order)
    /// scanned linearly.
    #[derive(Default)]
    struct Model {
        entries: Vec<(Key, Option<Vec<u8>>, u64, u64)>,
        answered: u64,
    }

    impl Model {
        fn begin(
            &mut self,
            k: Key,
            now: u64,
            cap: usize,
            busy_cap: usize,
        ) -> Result<Option<Vec<u8>>, bool> {
            self.entries
                .retain(|(_, reply, deadline, _)| reply.is_none() || *deadline > now);
            match self.entries.iter().find(|e| e.0 == k) {
                Some((_, Some(r), _, _)) => Ok(Some(r.clone())),
                Some((_, None, _, _)) => Err(false),
                None if self.entries.iter().filter(|e| e.1.is_none()).count() >= busy_cap => {
                    Err(true)
                }
                None => {
                    if self.entries.len() >= cap {
                        // The oldest answered reply makes room, if any.
                        let oldest = self
                            .entries
                            .iter()
                            .enumerate()
                            .filter(|(_, e)| e.1.is_some())
                            .min_by_key(|(_, e)| e.3)
                            .map(|(i, _)| i);
                        match oldest {
                            Some(i) => {
                                self.entries.remove(i);
                            }
                            None => return Err(true),
                        }
                    }
                    self.entries.push((k, None, 0, 0));
                    Ok(None)
                }
            }
        }
    }

    proptest! {
        /// Any sequence of begins, finishes, abandons and clock moves gives
        /// the model's answers; the bound holds throughout.
        #[test]
        fn the_cache_behaves_like_its_model(
            cap in 1usize..6,
            busy_cap in 1usize..6,
            ops in proptest::collection::vec((0u8..4, 0u8..6, 0u64..20_000), 1..200),
        ) {
            let t0 = Instant::now();
            let ttl = Duration::from_secs(30);
            let mut c = ReplyCache::new(cap, busy_cap, ttl);
            let mut m = Model::default();
            let mut now = 0u64;
            for (op, k, arg) in ops {
                let k = key(1, k);
                let at = t0 + Duration::from_millis(now);
                match op {
                    0 => {
                        let got = match c.begin(k, at) {
                            Begin::New => Ok(None),
                            Begin::Resend(r) => Ok(Some(r.to_vec())),
                            Begin::InProgress => Err(false),
                            Begin::Full => Err(true),
                        };
                        prop_assert_eq!(got, m.begin(k, now, cap, busy_cap));
                    }
                    1 => {
                        c.finish(k, arg.to_be_bytes().to_vec(), at);
                        if let Some(e) = m.entries.iter_mut().find(|e| e.0 == k && e.1.is_none()) {
                            m.answered += 1;
                            e.1 = Some(arg.to_be_bytes().to_vec());
                            e.2 = now + 30_000;
                            e.3 = m.answered;
                        }
                    }
                    2 => {
                        c.abandon(k);
                        m.entries.retain(|e| !(e.0 == k && e.1.is_none()));
                    }
                    _ => now += arg,
                }
                prop_assert!(c.len() <= cap && c.in_progress() <= busy_cap);
                let busy = m.entries.iter().filter(|e| e.1.is_none()).count();
                prop_assert_eq!(c.in_progress(), busy);
            }
        }
    }
}
