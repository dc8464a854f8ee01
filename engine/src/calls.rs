//! Confirmation calls: a challenge whose message is a call the person answers
//! with `#` instead of a code typed back (seed 001). The call's challenge
//! lives in the table like any other (expiry, supersede, delivery, audit);
//! this book keeps what the table cannot: the call's outcome, which the
//! simulated handsets (CALL_ANSWER, or `auto_answer`) or the carrier's ring
//! timeout report, and a watch for whoever waits on it (a held CHECK, a
//! method's registration).
//!
//! An outcome is taken once ([`CallBook::take`]): that is what makes a call's
//! state single-use. The book is bounded; entries whose challenge ended long
//! ago are purged. It must never hold its lock across an `.await` and never
//! keep or log the digits a handset keyed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::code::Code;
use crate::delivery::{HandsetAnswer, Handsets};
use crate::table::ChallengeTable;
use crate::types::{ChallengeId, TenantId, VerifyOutcome};

/// Where a confirmation call stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// Ringing, or not reported yet.
    Ringing,
    /// Answered with `#` (or `PIN#`): the challenge was consumed.
    Confirmed,
    /// Answered with other digits, or hung up.
    Declined,
    /// Nobody answered before the ring timeout, or the challenge expired.
    NotAnswered,
}

impl CallOutcome {
    /// Lower-case name for the audit trail.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ringing => "ringing",
            Self::Confirmed => "confirmed",
            Self::Declined => "declined",
            Self::NotAnswered => "not_answered",
        }
    }
}

struct CallEntry {
    tenant: TenantId,
    subject: Box<str>,
    code: Code,
    expires_at_ms: u64,
    outcome: watch::Sender<CallOutcome>,
}

/// What a waiter needs to know of a call.
#[derive(Debug)]
pub struct CallHandle {
    /// The outcome as it changes.
    pub outcome: watch::Receiver<CallOutcome>,
    /// Whose call.
    pub subject: Box<str>,
    /// When its challenge expires, Unix ms.
    pub expires_at_ms: u64,
}

/// The book is full: no more calls may ring now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many confirmation calls in progress")]
pub struct CallsFull;

/// Decides whether the digits keyed before `#` on a confirmation call are
/// acceptable: `true` when the tenant asks no PIN on calls, or when they are
/// the user's active PIN (a wrong one is counted by the gate).
pub type PinGate = Box<dyn Fn(TenantId, &str, &[u8]) -> bool + Send + Sync>;

/// Every confirmation call in progress.
pub struct CallBook {
    calls: Mutex<HashMap<ChallengeId, CallEntry>>,
    table: Arc<ChallengeTable>,
    subscribers: Box<[AtomicUsize]>,
    capacity: usize,
    pin_gate: Option<PinGate>,
}

impl std::fmt::Debug for CallBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallBook")
            .field("calls", &self.calls.lock().len())
            .finish_non_exhaustive()
    }
}

impl CallBook {
    /// A book for `tenants` tenants holding at most `capacity` calls.
    pub fn new(table: Arc<ChallengeTable>, tenants: usize, capacity: usize) -> CallBook {
        CallBook {
            calls: Mutex::default(),
            table,
            subscribers: (0..tenants).map(|_| AtomicUsize::new(0)).collect(),
            capacity,
            pin_gate: None,
        }
    }

    /// The book, with `gate` judging the digits keyed before `#`.
    pub fn with_pin_gate(mut self, gate: PinGate) -> CallBook {
        self.pin_gate = Some(gate);
        self
    }

    /// Calls in progress (or with an outcome not yet taken).
    pub fn len(&self) -> usize {
        self.calls.lock().len()
    }

    /// Whether no call is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a call about to ring for the challenge `id`, whose code the
    /// book uses to consume the challenge when the call is confirmed.
    pub fn register(
        &self,
        tenant: TenantId,
        id: ChallengeId,
        subject: &str,
        code: Code,
        expires_at_ms: u64,
    ) -> Result<(), CallsFull> {
        let mut calls = self.calls.lock();
        if calls.len() >= self.capacity {
            return Err(CallsFull);
        }
        calls.insert(
            id,
            CallEntry {
                tenant,
                subject: subject.into(),
                code,
                expires_at_ms,
                outcome: watch::channel(CallOutcome::Ringing).0,
            },
        );
        Ok(())
    }

    /// Forgets a call that never rang (its message was refused).
    pub fn forget(&self, id: ChallengeId) {
        self.calls.lock().remove(&id);
    }

    /// A watch on the call `id` of `tenant`, if the book has it.
    pub fn watch(&self, tenant: TenantId, id: ChallengeId) -> Option<CallHandle> {
        let calls = self.calls.lock();
        let e = calls.get(&id).filter(|e| e.tenant == tenant)?;
        Some(CallHandle {
            outcome: e.outcome.subscribe(),
            subject: e.subject.clone(),
            expires_at_ms: e.expires_at_ms,
        })
    }

    /// Takes the call's final outcome, once: the first caller gets it and
    /// the entry is gone; a call still ringing stays and gives `None`.
    pub fn take(&self, tenant: TenantId, id: ChallengeId) -> Option<CallOutcome> {
        let mut calls = self.calls.lock();
        let e = calls.get(&id).filter(|e| e.tenant == tenant)?;
        let outcome = *e.outcome.borrow();
        if outcome == CallOutcome::Ringing {
            return None;
        }
        calls.remove(&id);
        Some(outcome)
    }

    /// Ends a ringing call whose challenge expired as not answered, and
    /// takes the outcome (see [`CallBook::take`]).
    pub fn expire(&self, tenant: TenantId, id: ChallengeId) -> Option<CallOutcome> {
        self.settle(tenant, id, CallOutcome::NotAnswered);
        self.take(tenant, id)
    }

    /// What a handset did. The first outcome wins; `false` when the book has
    /// no such call for this tenant.
    pub fn answer(&self, tenant: TenantId, id: ChallengeId, answer: &HandsetAnswer) -> bool {
        let outcome = match answer {
            HandsetAnswer::Digits(d)
                if d.ends_with('#') && d[..d.len() - 1].bytes().all(|b| b.is_ascii_digit()) =>
            {
                let pin = &d.as_bytes()[..d.len() - 1];
                let subject = self
                    .calls
                    .lock()
                    .get(&id)
                    .filter(|e| e.tenant == tenant)
                    .map(|e| e.subject.clone());
                // The gate reads the directory: called outside the lock.
                match (&self.pin_gate, subject) {
                    (Some(gate), Some(subject)) if !gate(tenant, &subject, pin) => {
                        CallOutcome::Declined
                    }
                    _ => CallOutcome::Confirmed,
                }
            }
            HandsetAnswer::Digits(_) => CallOutcome::Declined,
            HandsetAnswer::NotAnswered => CallOutcome::NotAnswered,
        };
        self.settle(tenant, id, outcome)
    }

    /// Sets the outcome of a ringing call: a confirmation consumes the
    /// challenge (it may have expired meanwhile: then it was not answered in
    /// time); any other end cancels it.
    fn settle(&self, tenant: TenantId, id: ChallengeId, outcome: CallOutcome) -> bool {
        let code = {
            let calls = self.calls.lock();
            match calls.get(&id).filter(|e| e.tenant == tenant) {
                None => return false,
                Some(e) if *e.outcome.borrow() != CallOutcome::Ringing => return true,
                Some(e) => e.code,
            }
        };
        // The table calls outside the book's lock: they write audit events.
        let outcome = match outcome {
            CallOutcome::Confirmed => {
                let (buf, n) = code.digits();
                match self.table.verify(tenant, id, &buf[..n]) {
                    VerifyOutcome::Approved => CallOutcome::Confirmed,
                    _ => CallOutcome::NotAnswered,
                }
            }
            other => {
                self.table.cancel(tenant, id);
                other
            }
        };
        let calls = self.calls.lock();
        if let Some(e) = calls.get(&id) {
            e.outcome.send_if_modified(|o| {
                if *o == CallOutcome::Ringing {
                    *o = outcome;
                    true
                } else {
                    false
                }
            });
        }
        true
    }

    /// Drops calls whose challenge ended more than `grace_ms` before
    /// `now_ms` (nobody took their outcome). Returns how many.
    pub fn purge(&self, now_ms: u64, grace_ms: u64) -> usize {
        let mut calls = self.calls.lock();
        let before = calls.len();
        calls.retain(|_, e| e.expires_at_ms.saturating_add(grace_ms) > now_ms);
        before - calls.len()
    }

    /// Counts one more outbox subscriber of `tenant`; the guard counts it
    /// out when dropped.
    pub fn subscriber(self: &Arc<Self>, tenant: TenantId) -> SubscriberGuard {
        if let Some(c) = self.subscribers.get(usize::from(tenant.0)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        SubscriberGuard {
            book: Arc::clone(self),
            tenant,
        }
    }
}

/// Holds one outbox subscription of a tenant in the count that decides
/// whether simulated handsets answer by themselves.
pub struct SubscriberGuard {
    book: Arc<CallBook>,
    tenant: TenantId,
}

impl std::fmt::Debug for SubscriberGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriberGuard")
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        if let Some(c) = self.book.subscribers.get(usize::from(self.tenant.0)) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Handsets for CallBook {
    fn subscribed(&self, tenant: TenantId) -> bool {
        self.subscribers
            .get(usize::from(tenant.0))
            .is_some_and(|c| c.load(Ordering::Relaxed) > 0)
    }

    fn answer(&self, tenant: TenantId, id: ChallengeId, answer: HandsetAnswer) {
        CallBook::answer(self, tenant, id, &answer);
    }
}
