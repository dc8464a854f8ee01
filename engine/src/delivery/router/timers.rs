//! The delivery pipeline's one timer structure: every deadline the router
//! keeps (a message's back-off before its next try, its wait for a carrier or
//! for a sender's slot, a lane's pacing and answer-timeout wake-ups, the
//! receipt book's next expiry) is an entry of one [`TimerQueue`], owned by the
//! router's timer task, which sleeps until the earliest deadline and fires
//! what is due. No message has a timer or a task of its own.
//!
//! A min-heap of `(deadline, sequence, slot)` over a slab of values: insert
//! and pop are O(log n), cancel is O(1) (the heap entry goes stale and is
//! skipped when it surfaces; stale entries are swept out once they outnumber
//! the live ones). Entries with the same deadline fire in insertion order.
//!
//! It must never fire an entry before its deadline, fire one twice, lose one,
//! or fire a cancelled one; and never hold more than its bound of live
//! entries: a full queue refuses the insert and hands the value back, and the
//! caller ends that message as failed, never silently. It is a plain data
//! structure: no clock of its own, no locking, no task (the router keeps it
//! behind a mutex locked for one operation at a time, never across an
//! `.await`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use tokio::time::Instant;

/// Names one inserted entry, to cancel it. A key is never reused: cancelling
/// an entry that has fired or was cancelled already does nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerKey {
    slot: u32,
    seq: u64,
}

struct Slot<T> {
    /// The sequence number of the entry in this slot (0 when free).
    seq: u64,
    value: Option<T>,
}

/// Deadlines with values, earliest first, bounded.
pub(crate) struct TimerQueue<T> {
    heap: BinaryHeap<Reverse<(Instant, u64, u32)>>,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    next_seq: u64,
    live: usize,
    cap: usize,
}

impl<T> TimerQueue<T> {
    /// An empty queue holding at most `cap` live entries. Nothing is
    /// allocated until entries come.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            next_seq: 1,
            live: 0,
            cap: cap.min(u32::MAX as usize),
        }
    }

    /// Live entries (inserted, neither fired nor cancelled).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Adds `value`, due at `deadline`. Returns its key and whether it is now
    /// the earliest entry (the owner's sleep must then be shortened), or the
    /// value back when the queue holds its bound already.
    pub(crate) fn insert(&mut self, deadline: Instant, value: T) -> Result<(TimerKey, bool), T> {
        if self.live >= self.cap {
            return Err(value);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Slot {
                    seq,
                    value: Some(value),
                };
                i
            }
            None => {
                self.slots.push(Slot {
                    seq,
                    value: Some(value),
                });
                (self.slots.len() - 1) as u32
            }
        };
        let earliest = self.peek_live().is_none_or(|first| deadline < first);
        self.heap.push(Reverse((deadline, seq, slot)));
        self.live += 1;
        Ok((TimerKey { slot, seq }, earliest))
    }

    /// Removes an entry before it fires; `None` if it fired or was cancelled.
    pub(crate) fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let s = self.slots.get_mut(key.slot as usize)?;
        if s.seq != key.seq {
            return None;
        }
        let v = s.value.take()?;
        s.seq = 0;
        self.free.push(key.slot);
        self.live -= 1;
        // Cancelled entries stay in the heap until they surface: sweep them
        // out once they outnumber the live ones, so the heap stays within
        // twice the bound.
        if self.heap.len() > 2 * self.live + 64 {
            let slots = &self.slots;
            self.heap
                .retain(|Reverse((_, seq, slot))| slots[*slot as usize].seq == *seq);
        }
        Some(v)
    }

    /// Drops stale entries off the top and returns the earliest live deadline.
    fn peek_live(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, seq, slot))) = self.heap.peek() {
            if self.slots[slot as usize].seq == seq {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// The earliest live deadline, if any.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.peek_live()
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, T)> {
        let at = self.peek_live()?;
        if at > now {
            return None;
        }
        let Reverse((at, _, slot)) = self.heap.pop()?;
        let s = &mut self.slots[slot as usize];
        let v = s.value.take()?;
        s.seq = 0;
        self.free.push(slot);
        self.live -= 1;
        if self.live == 0 && self.slots.len() > 1024 {
            // A burst is over: give its memory back.
            self.slots = Vec::new();
            self.free = Vec::new();
            self.heap = BinaryHeap::new();
        }
        Some((at, v))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn fires_in_deadline_order_then_insertion_order() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut q = TimerQueue::new(10);
        assert!(
            q.insert(ms(30), "c").unwrap().1,
            "the first is the earliest"
        );
        assert!(q.insert(ms(10), "a").unwrap().1);
        assert!(!q.insert(ms(20), "b").unwrap().1);
        assert!(!q.insert(ms(10), "a2").unwrap().1, "a tie is not earlier");
        assert_eq!(q.next_deadline(), Some(ms(10)));
        assert_eq!(q.pop_due(ms(9)), None, "nothing before its deadline");
        let mut got = Vec::new();
        while let Some((_, v)) = q.pop_due(ms(100)) {
            got.push(v);
        }
        assert_eq!(got, ["a", "a2", "b", "c"]);
        assert_eq!(q.len(), 0);
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn cancel_removes_once_and_a_full_queue_gives_the_value_back() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new(2);
        let (a, _) = q.insert(t0, 1).unwrap();
        let (b, _) = q.insert(t0, 2).unwrap();
        assert_eq!(
            q.insert(t0, 3).unwrap_err(),
            3,
            "full: the value comes back"
        );
        assert_eq!(q.cancel(a), Some(1));
        assert_eq!(q.cancel(a), None, "a key cancels once");
        let (c, _) = q.insert(t0, 4).unwrap();
        assert_ne!(a, c, "a reused slot gets a new key");
        assert_eq!(q.cancel(a), None, "an old key never reaches a new entry");
        assert_eq!(q.pop_due(t0), Some((t0, 2)));
        assert_eq!(q.cancel(b), None, "fired entries cannot be cancelled");
        assert_eq!(q.pop_due(t0), Some((t0, 4)));
        assert_eq!(q.pop_due(t0), None);
    }

    #[test]
    fn many_cancellations_keep_the_heap_small() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new(1_000_000);
        let keep = q.insert(t0 + Duration::from_secs(1), 0u32).unwrap().0;
        for i in 0..100_000u32 {
            let (k, _) = q.insert(t0 + Duration::from_secs(2), i).unwrap();
            q.cancel(k);
        }
        assert!(q.heap.len() <= 2 * q.len() + 64, "heap {}", q.heap.len());
        assert_eq!(q.cancel(keep), Some(0));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u16),
        Cancel(usize),
        Advance(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u16..500).prop_map(Op::Insert),
            2 => any::<usize>().prop_map(Op::Cancel),
            2 => (0u16..200).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Against a model: every entry fires exactly once, at or after its
        /// deadline, in (deadline, insertion) order; a cancelled entry never
        /// fires; the bound holds.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec(op(), 1..400), cap in 1usize..64) {
            let t0 = Instant::now();
            let mut q = TimerQueue::new(cap);
            // Live entries by (deadline offset, insertion number).
            let mut model: BTreeMap<(u64, u64), u64> = BTreeMap::new();
            let mut keys: Vec<(TimerKey, (u64, u64))> = Vec::new();
            let mut now = 0u64;
            let mut n = 0u64;
            let mut fired = Vec::new();
            let fire = |q: &mut TimerQueue<u64>, model: &mut BTreeMap<(u64, u64), u64>, now: u64, fired: &mut Vec<u64>| {
                let mut last = None;
                while let Some((at, v)) = q.pop_due(t0 + Duration::from_millis(now)) {
                    let (&k, &want) = model.iter().next().expect("the model has it");
                    prop_assert_eq!(v, want);
                    prop_assert_eq!(at, t0 + Duration::from_millis(k.0));
                    prop_assert!(k.0 <= now, "fired before its deadline");
                    prop_assert!(last <= Some(k), "out of order");
                    last = Some(k);
                    model.remove(&k);
                    fired.push(v);
                }
                prop_assert!(model.keys().next().is_none_or(|k| k.0 > now), "a due entry was not fired");
                Ok(())
            };
            for op in ops {
                match op {
                    Op::Insert(d) => {
                        let at = now + u64::from(d);
                        n += 1;
                        match q.insert(t0 + Duration::from_millis(at), n) {
                            Ok((k, earliest)) => {
                                prop_assert!(model.len() < cap);
                                prop_assert_eq!(earliest, model.keys().next().is_none_or(|f| at < f.0));
                                model.insert((at, n), n);
                                keys.push((k, (at, n)));
                            }
                            Err(v) => {
                                prop_assert_eq!(v, n);
                                prop_assert_eq!(model.len(), cap);
                            }
                        }
                    }
                    Op::Cancel(i) if !keys.is_empty() => {
                        let (k, mk) = keys[i % keys.len()];
                        let got = q.cancel(k);
                        prop_assert_eq!(got, model.remove(&mk));
                    }
                    Op::Cancel(_) => {}
                    Op::Advance(d) => {
                        now += u64::from(d);
                        fire(&mut q, &mut model, now, &mut fired)?;
                    }
                }
                prop_assert_eq!(q.len(), model.len());
            }
            now += 1_000;
            fire(&mut q, &mut model, now, &mut fired)?;
            prop_assert!(model.is_empty(), "none lost");
            prop_assert_eq!(q.len(), 0);
            let mut unique = fired.clone();
            unique.sort_unstable();
            unique.dedup();
            prop_assert_eq!(unique.len(), fired.len(), "none fired twice");
        }
    }
}
