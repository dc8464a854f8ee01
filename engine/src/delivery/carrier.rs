//! The carrier contract: send one message, answer accepted / throttled /
//! rejected / failed; report the delivery receipt later through [`Receipts`].
//!
//! A carrier implementation must never retry on its own (the router owns
//! retries and failover), never log a message's text (it holds the code) and
//! never log a full destination.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::types::{ChallengeId, Channel, TenantId};

/// How a voice call reaches the person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DialPlan {
    /// Dial the number; no extension (always the case for SMS and e-mail).
    Direct,
    /// Dial the number, then play these digits as tones once connected.
    Tones(String),
    /// Dial the number, ask the operator who answers to transfer the call to
    /// this extension, and play the prompt once transferred.
    Operator(String),
}

impl DialPlan {
    /// Short name for logs: "direct", "tones", "operator".
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Tones(_) => "tones",
            Self::Operator(_) => "operator",
        }
    }
}

/// What a message is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MessagePurpose {
    /// It carries a one-time code to be typed back.
    #[default]
    Code,
    /// A confirmation call: the person answers and presses `#` (or `PIN#`).
    /// Its text holds no code. Voice channel only.
    CallConfirmation,
    /// A user's new PIN, e-mailed after a reset when the administrator asks:
    /// the message's code is the PIN (nothing to type back).
    PinNotice,
}

/// What a simulated handset did with a confirmation call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandsetAnswer {
    /// The person answered and keyed these digits (`#`, `PIN#`, anything
    /// else declines; empty is a hang-up).
    Digits(String),
    /// Nobody answered before the carrier's ring timeout.
    NotAnswered,
}

/// Where simulated carriers report what their handsets did with confirmation
/// calls, and ask whether somebody plays the tenant's handsets (a subscriber
/// to the outbox) or the carrier may answer by itself (`auto_answer`).
pub trait Handsets: Send + Sync + 'static {
    /// Whether some connection of `tenant` is subscribed to the outbox now.
    fn subscribed(&self, tenant: TenantId) -> bool;
    /// The outcome of the confirmation call `id`.
    fn answer(&self, tenant: TenantId, id: ChallengeId, answer: HandsetAnswer);
}

/// Identifies one send for its later receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReceiptToken(pub u64);

/// One message handed to a carrier.
#[derive(Clone, Debug)]
pub struct CarrierMessage {
    /// Whose challenge.
    pub tenant: TenantId,
    /// The challenge.
    pub id: ChallengeId,
    /// SMS, voice or e-mail.
    pub channel: Channel,
    /// E.164 number without extension, or the e-mail address.
    pub to: String,
    /// For voice: how to reach an extension.
    pub dial_plan: DialPlan,
    /// A code to type back, or a call to answer.
    pub purpose: MessagePurpose,
    /// Sender id, caller id or from address.
    pub sender: String,
    /// The text (holds the code: never log it).
    pub text: String,
    /// Quote this in [`Receipts::report`].
    pub token: ReceiptToken,
}

/// A carrier's immediate answer to one send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Taken; a receipt may follow.
    Accepted,
    /// Too fast: try again after `retry_after` (SMPP 0x58, HTTP 429).
    Throttled {
        /// The carrier's Retry-After.
        retry_after: Duration,
    },
    /// Refused for good (bad number, blocked destination).
    Rejected {
        /// Why, without the destination.
        reason: String,
    },
    /// A transient failure (error, 5xx, connection loss).
    Failed {
        /// Why, without the destination.
        reason: String,
    },
}

/// What a carrier's receipt says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Receipt {
    /// It reached the handset or mailbox.
    Delivered,
    /// It did not.
    Undelivered {
        /// Why, without the destination.
        reason: String,
    },
}

/// A boxed send future.
pub type SendFuture = Pin<Box<dyn Future<Output = SendOutcome> + Send + 'static>>;

/// A carrier. Implementations are shared across tasks.
pub trait Carrier: Send + Sync + 'static {
    /// Sends one message. The router drops the future at its timeout. A
    /// receipt, if any, goes to `receipts` (before or after the answer).
    fn send(&self, msg: CarrierMessage, receipts: &Receipts) -> SendFuture;
}

/// Where carriers report receipts; cheap to clone.
#[derive(Clone)]
pub struct Receipts(pub(crate) Arc<dyn ReceiptSink>);

impl Receipts {
    /// Reports the receipt for one send. Unknown or late tokens are ignored.
    pub fn report(&self, token: ReceiptToken, receipt: Receipt) {
        self.0.report(token, receipt);
    }

    /// A sink that drops every receipt (tools and tests of carriers alone).
    pub fn discard() -> Self {
        struct Null;
        impl ReceiptSink for Null {
            fn report(&self, _: ReceiptToken, _: Receipt) {}
        }
        Self(Arc::new(Null))
    }

    /// Receipts forwarded to a function (tests of carriers alone).
    pub fn from_fn(f: impl Fn(ReceiptToken, Receipt) + Send + Sync + 'static) -> Self {
        struct F<T>(T);
        impl<T: Fn(ReceiptToken, Receipt) + Send + Sync + 'static> ReceiptSink for F<T> {
            fn report(&self, t: ReceiptToken, r: Receipt) {
                (self.0)(t, r)
            }
        }
        Self(Arc::new(F(f)))
    }
}

/// The receiving end of [`Receipts`].
pub(crate) trait ReceiptSink: Send + Sync + 'static {
    fn report(&self, token: ReceiptToken, receipt: Receipt);
}
