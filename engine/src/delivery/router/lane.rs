//! A carrier's lane: one of the few long-lived tasks that send a carrier's
//! messages. It takes messages from its channel of the carrier's queue in
//! batches, and for each takes a slot of the carrier's window (shared by its
//! lanes) and of its pace, then hands it to the router to send; the sends
//! awaiting the carrier's answer are futures in one `FuturesUnordered`, and
//! an answer that comes at once (a carrier that answers in the send call) is
//! handled there and then, without entering it.
//!
//! A lane has no timer of its own: when its pace makes it wait, or when the
//! oldest send's answer timeout comes, it asks the router's timer to wake it
//! (one wake-up scheduled at a time, the earliest it needs). At an answer
//! timeout it drops the overdue sends' futures, as `tokio::time::timeout`
//! would, and reports them as timed out.
//!
//! It must never send past the carrier's window or pace, never hold more than
//! one batch of messages outside the carrier's queue accounting, never hold a
//! lock across an `.await` (it has none: it is a hand-written future), and
//! never starve its worker thread: it yields after a bounded amount of work.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::timers::TimerKey;
use super::{Due, Inner, Record};
use crate::delivery::carrier::{SendFuture, SendOutcome};

/// Messages a lane takes from its channel at once.
const BATCH: usize = 128;
/// Messages and answers a lane handles per poll before it yields.
const BUDGET: usize = 512;
/// Answer timeouts are checked at this granularity (a send times out at most
/// this much late), so that a stream of sends to a carrier that hangs costs
/// at most a hundred sweeps a second.
const SWEEP_GRAIN: Duration = Duration::from_millis(10);

/// What a lane shares with the rest of the router.
#[derive(Default)]
pub(super) struct LaneShared {
    /// Woken by the timer, by a window slot coming free, and at drop.
    pub(super) waker: AtomicWaker,
    /// Messages back from a wait for their sender's slot, each holding a
    /// slot of the carrier's window (so at most the window's size).
    ready: Mutex<Vec<Record>>,
    has_ready: AtomicBool,
}

impl LaneShared {
    /// Hands back a message whose sender's slot has come (it holds a window
    /// slot), and wakes the lane.
    pub(super) fn ready(&self, rec: Record) {
        self.ready.lock().push(rec);
        self.has_ready.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn take_ready(&self, into: &mut Vec<Record>) {
        if self.has_ready.swap(false, Ordering::AcqRel) {
            std::mem::swap(&mut *self.ready.lock(), into);
        }
    }
}

/// The answer of a send that panicked (a carrier's bug must not take its
/// lane, and every message in it, down with it).
fn panicked() -> SendOutcome {
    SendOutcome::Failed {
        reason: "the carrier's send panicked".into(),
    }
}

/// Starts a send; a carrier whose `send` panics answers it as failed.
pub(super) fn start_send(send: impl FnOnce() -> SendFuture) -> SendFuture {
    std::panic::catch_unwind(AssertUnwindSafe(send))
        .unwrap_or_else(|_| Box::pin(std::future::ready(panicked())))
}

/// Polls a send's future; one that panics answers as failed (and is
/// replaced, so that it is never polled again).
pub(super) fn poll_send(fut: &mut SendFuture, cx: &mut Context<'_>) -> Poll<SendOutcome> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
        Ok(p) => p,
        Err(_) => {
            *fut = Box::pin(std::future::pending());
            Poll::Ready(panicked())
        }
    }
}

/// A send handed to its carrier: what its answer is handled with.
pub(super) struct Sent {
    pub(super) rec: Record,
    pub(super) token: u64,
    /// When it was sent, ns after the router's epoch.
    pub(super) t0: u64,
}

/// A send awaiting its carrier's answer, up to its deadline (its send time
/// plus the carrier's timeout: not stored, to keep the in-flight set's nodes
/// small).
pub(super) struct Flight {
    fut: SendFuture,
    /// The waker of the last poll that found it pending: an answer timeout
    /// wakes it so that it reports itself timed out.
    waker: Option<Waker>,
    timed_out: bool,
    sent: Option<Sent>,
}

impl Flight {
    pub(super) fn new(fut: SendFuture, sent: Sent) -> Self {
        Self {
            fut,
            waker: None,
            timed_out: false,
            sent: Some(sent),
        }
    }

    /// Times the send out if `timeout` has passed since it was sent
    /// (dropping the carrier's future); otherwise returns its deadline.
    fn expire(&mut self, now: Instant, epoch: Instant, timeout: Duration) -> Option<Instant> {
        if self.timed_out {
            return None;
        }
        let deadline = epoch + Duration::from_nanos(self.sent.as_ref()?.t0) + timeout;
        if deadline > now {
            return Some(deadline);
        }
        self.timed_out = true;
        self.fut = Box::pin(std::future::pending());
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        None
    }
}

impl Future for Flight {
    /// The send, and the carrier's answer (`None`: none within the timeout).
    type Output = (Sent, Option<SendOutcome>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let answer = if this.timed_out {
            None
        } else {
            match poll_send(&mut this.fut, cx) {
                Poll::Ready(o) => Some(o),
                Poll::Pending => {
                    if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        this.waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        };
        match this.sent.take() {
            Some(sent) => Poll::Ready((sent, answer)),
            None => Poll::Pending,
        }
    }
}

/// One lane of one carrier.
pub(super) struct Lane {
    inner: Weak<Inner>,
    carrier: usize,
    me: usize,
    rx: mpsc::Receiver<Record>,
    /// Taken from the channel, not yet sent, newest first (popped from the
    /// end); still counted in the carrier's queue. At most [`BATCH`].
    buf: Vec<Record>,
    ready: Vec<Record>,
    flights: FuturesUnordered<Flight>,
    /// When the oldest send's answer timeout comes (rounded up to the grain).
    next_sweep: Option<Instant>,
    /// The wake-up asked of the router's timer, if any.
    wake: Option<(Instant, TimerKey)>,
}

impl Lane {
    pub(super) fn new(
        inner: Weak<Inner>,
        carrier: usize,
        me: usize,
        rx: mpsc::Receiver<Record>,
    ) -> Self {
        Self {
            inner,
            carrier,
            me,
            rx,
            buf: Vec::with_capacity(BATCH),
            ready: Vec::new(),
            flights: FuturesUnordered::new(),
            next_sweep: None,
            wake: None,
        }
    }

    /// Asks the router's timer to wake this lane at `at`, unless a wake-up
    /// at or before it is coming already; a later one is cancelled.
    fn wake_at(&mut self, inner: &Inner, at: Instant, now: Instant) {
        if let Some((t, key)) = self.wake {
            if t > now {
                if t <= at {
                    return;
                }
                inner.cancel_timer(key);
            }
            self.wake = None;
        }
        let due = Due::Lane {
            carrier: self.carrier as u8,
            lane: self.me as u8,
        };
        // The timer holds room for one wake-up per lane: this cannot fail.
        if let Ok(key) = inner.schedule(at, due) {
            self.wake = Some((at, key));
        }
    }

    fn grain(inner: &Inner, t: Instant) -> Instant {
        let g = SWEEP_GRAIN.as_nanos();
        let since = t.saturating_duration_since(inner.epoch).as_nanos();
        let up = since.div_ceil(g) * g;
        inner.epoch + Duration::from_nanos(up as u64)
    }

    fn push_flight(&mut self, inner: &Inner, f: Flight, now: Instant) {
        let timeout = inner.carriers[self.carrier].timeout;
        let at = Self::grain(inner, now + timeout);
        self.flights.push(f);
        if self.next_sweep.is_none_or(|t| at < t) {
            self.next_sweep = Some(at);
            self.wake_at(inner, at, now);
        }
    }

    /// Times out every overdue send and finds the next deadline.
    fn sweep(&mut self, inner: &Inner, now: Instant) {
        let timeout = inner.carriers[self.carrier].timeout;
        let mut next: Option<Instant> = None;
        for f in self.flights.iter_mut() {
            if let Some(d) = f.expire(now, inner.epoch, timeout) {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        self.next_sweep = next.map(|t| Self::grain(inner, t));
        if let Some(t) = self.next_sweep {
            self.wake_at(inner, t, now);
        }
    }
}

impl Future for Lane {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let Some(inner) = this.inner.upgrade() else {
            return Poll::Ready(());
        };
        let c = &inner.carriers[this.carrier];
        let shared = &c.lanes[this.me];
        shared.waker.register(cx.waker());
        let mut budget = BUDGET;
        loop {
            let mut progress = false;
            let now = Instant::now();
            // Answers.
            while budget > 0 {
                match this.flights.poll_next_unpin(cx) {
                    Poll::Ready(Some((sent, answer))) => {
                        inner.answered(c, sent, answer, now);
                        budget -= 1;
                        progress = true;
                    }
                    _ => break,
                }
            }
            if this.next_sweep.is_some_and(|t| t <= now) {
                this.sweep(&inner, now);
                progress = true;
            }
            // Messages back from their sender's wait: they hold a window slot.
            shared.take_ready(&mut this.ready);
            while let Some(rec) = this.ready.pop() {
                if let Some(f) = inner.launch(c, this.me, rec, now, cx) {
                    this.push_flight(&inner, f, now);
                }
                budget = budget.saturating_sub(1);
                progress = true;
            }
            // New messages: a window slot, then a slot of the pace, each.
            while budget > 0 {
                if this.buf.is_empty() {
                    match this.rx.poll_recv_many(cx, &mut this.buf, BATCH) {
                        Poll::Ready(0) => return Poll::Ready(()),
                        Poll::Ready(_) => this.buf.reverse(),
                        Poll::Pending => break,
                    }
                }
                // A slot coming free (an answer here or in another lane) wakes us.
                if !c.window.try_take() {
                    break;
                }
                if let Some(p) = &c.pacer
                    && let Err(wait) = p.try_acquire()
                {
                    inner.window_put(c);
                    this.wake_at(&inner, now + wait, now);
                    break;
                }
                let Some(rec) = this.buf.pop() else { break };
                c.queue.release();
                if let Some(f) = inner.launch(c, this.me, rec, now, cx) {
                    this.push_flight(&inner, f, now);
                }
                budget -= 1;
                progress = true;
            }
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }
}

/// Spawns a carrier's lanes on `rt`.
pub(super) fn spawn(
    rt: &tokio::runtime::Handle,
    inner: &Arc<Inner>,
    carrier: usize,
    rxs: Vec<mpsc::Receiver<Record>>,
) {
    for (me, rx) in rxs.into_iter().enumerate() {
        // Outside tokio's cooperative budget: the lane keeps its own
        // ([`BUDGET`]) and yields after it. Under tokio's (128 steps a poll)
        // every send future and the channel past the 128th step answered
        // Pending and woke itself at once, so that a busy lane was polled
        // again and again for nothing (a third of the gateway's CPU under
        // an ISSUE load went to those spurious polls and wake-ups).
        rt.spawn(tokio::task::unconstrained(Lane::new(
            Arc::downgrade(inner),
            carrier,
            me,
            rx,
        )));
    }
}
