//! A carrier's waiting line: the bounded queue between the router, which
//! picks a carrier for a message, and the carrier's lanes, the few
//! long-lived tasks that send. One channel per lane; a message goes to the
//! lane its producer thread turns to next (no shared counter to bounce
//! between cores).
//!
//! The bound is the carrier's `queue_capacity`: a slot is taken by
//! [`CarrierQueue::try_push`] and given back by [`CarrierQueue::release`]
//! once the lane starts the message's send (or ends it), so messages waiting
//! in a lane's hands count too. A full queue refuses the push and hands the
//! message back ([`Pushed::Full`]); the router then tries another carrier, or
//! keeps the message in its timer until one has room, or ends it as failed
//! when its retry budget runs out. A full queue is also what makes the
//! carrier unavailable to admission (`RATE_LIMITED`, scope `carrier`). It
//! must never block, never hold more than its bound, and never lose a
//! message: every refusal returns it.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

/// Why a push was refused; the message comes back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed<T> {
    /// The queue holds its bound.
    Full(T),
    /// Every lane has ended (the router is being dropped).
    Closed(T),
}

/// A bounded multi-lane queue.
pub(crate) struct CarrierQueue<T> {
    cap: usize,
    used: AtomicUsize,
    lanes: Box<[mpsc::Sender<T>]>,
}

thread_local! {
    /// The lane this thread pushes to next (round robin per thread).
    static NEXT_LANE: Cell<usize> = const { Cell::new(0) };
}

impl<T> CarrierQueue<T> {
    /// A queue of at most `cap` messages over `lanes` lanes (at least one),
    /// and the lanes' receiving ends. Each lane's channel is sized to the
    /// whole bound, so a push that got a slot always fits; nothing is
    /// allocated ahead.
    pub(crate) fn new(cap: usize, lanes: usize) -> (Self, Vec<mpsc::Receiver<T>>) {
        let cap = cap.max(1);
        let (tx, rx): (Vec<_>, Vec<_>) = (0..lanes.max(1)).map(|_| mpsc::channel(cap)).unzip();
        (
            Self {
                cap,
                used: AtomicUsize::new(0),
                lanes: tx.into_boxed_slice(),
            },
            rx,
        )
    }

    /// Messages queued (pushed, not yet released).
    pub(crate) fn len(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The bound.
    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    /// Queues `v` if a slot is free, else hands it back.
    pub(crate) fn try_push(&self, v: T) -> Result<(), Pushed<T>> {
        let took = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.cap).then_some(n + 1)
            });
        if took.is_err() {
            return Err(Pushed::Full(v));
        }
        let n = self.lanes.len();
        let lane = if n == 1 {
            0
        } else {
            NEXT_LANE.with(|c| {
                let l = c.get();
                c.set(l.wrapping_add(1));
                l % n
            })
        };
        match self.lanes[lane].try_send(v) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.release();
                match e {
                    // Cannot happen (every channel holds the whole bound);
                    // refused all the same rather than lost.
                    mpsc::error::TrySendError::Full(v) => Err(Pushed::Full(v)),
                    mpsc::error::TrySendError::Closed(v) => Err(Pushed::Closed(v)),
                }
            }
        }
    }

    /// One message left the queue (its lane started its send, or ended it).
    pub(crate) fn release(&self) {
        self.used.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_a_full_queue_hands_the_message_back_and_a_release_makes_room() {
        let (q, mut rx) = CarrierQueue::new(3, 2);
        for i in 0..3 {
            q.try_push(i).unwrap();
        }
        assert_eq!(q.len(), 3);
        assert_eq!(
            q.try_push(99),
            Err(Pushed::Full(99)),
            "full: refused, not lost"
        );
        assert_eq!(q.len(), 3);
        // A lane takes one: it still counts until it is released (it waits
        // in the lane's hands for a window slot or the carrier's pace).
        let got = rx.iter_mut().find_map(|r| r.try_recv().ok()).unwrap();
        assert_eq!(q.try_push(98), Err(Pushed::Full(98)));
        q.release();
        q.try_push(got).unwrap();
        assert_eq!(q.len(), 3);
        // Everything pushed is in some lane, spread over both.
        let per_lane: Vec<usize> = rx
            .iter_mut()
            .map(|r| std::iter::from_fn(|| r.try_recv().ok()).count())
            .collect();
        assert_eq!(per_lane.iter().sum::<usize>(), 3);
        assert!(per_lane.iter().all(|&n| n > 0), "{per_lane:?}");
    }

    #[test]
    fn a_queue_whose_lanes_ended_refuses_as_closed() {
        let (q, rx) = CarrierQueue::new(4, 1);
        drop(rx);
        assert_eq!(q.try_push(7), Err(Pushed::Closed(7)));
        assert_eq!(q.len(), 0, "the slot was given back");
    }

    #[test]
    fn concurrent_pushes_never_pass_the_bound() {
        let (q, _rx) = CarrierQueue::new(1_000, 4);
        let q = std::sync::Arc::new(q);
        let ok = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..1_000 {
                        if q.try_push(i).is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(ok.load(Ordering::Relaxed), 1_000);
        assert_eq!(q.len(), 1_000);
    }
}
