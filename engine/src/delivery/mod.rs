//! The delivery router: carriers, rate limits, retries, failover, sender pools.
//!
//! The router never touches the challenge table directly: it sees it through
//! [`ChallengeLedger`], asks it before every try whether the challenge may still
//! be sent to, and reports every change of delivery state to it.

mod breaker;
pub mod callback;
pub mod carrier;
pub mod config;
pub mod destination;
pub mod http;
mod limits;
pub(crate) use limits::RateGate;
mod pace;
pub mod router;
pub mod simulated;
pub mod smpp;
pub mod smtp;
mod template;

pub use breaker::BreakerState;
pub use carrier::{
    Carrier, CarrierMessage, DialPlan, HandsetAnswer, Handsets, MessagePurpose, Receipt,
    ReceiptToken, Receipts, SendFuture, SendOutcome,
};
pub use config::{
    AutoAnswer, BreakerConfig, CarrierConfig, CarrierKind, HttpConfig, Limit, LimitsConfig,
    OutageConfig, OutageMode, PrefixLimit, RetryConfig, RouterConfig, RouterConfigError,
    SenderPool, SenderPoolsConfig, SimulatedConfig, TenantDelivery,
};
pub use config::{SmtpConfig, SmtpTls};
pub use destination::{Destination, ExtensionKind, InvalidDestination, normalize};
pub use http::HttpCarrier;
pub use router::{
    CallReport, DeliveryJob, DeliveryPermit, QueueFull, RateLimited, Router, RouterStats,
};
pub use simulated::{OutboxMessage, SimCounters, SimulatedCarrier};
pub use smpp::{SmppCarrier, SmppConfig};
pub use smtp::SmtpCarrier;

use crate::types::{ChallengeId, DeliveryState};

/// A carrier's index in the router's carrier list; the table stores it in one
/// byte. `CarrierSlot::NONE` means no carrier has taken the message yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CarrierSlot(pub u8);

impl CarrierSlot {
    /// No carrier yet.
    pub const NONE: CarrierSlot = CarrierSlot(u8::MAX);
}

/// Where the table keeps a challenge, carried beside its id so that the
/// router's checks and updates skip the id index. The table checks it against
/// the id before use: a stale or absent hint costs only the lookup it saves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotHint(pub u32);

impl SlotHint {
    /// No hint: the table looks the id up.
    pub const NONE: SlotHint = SlotHint(u32::MAX);
}

/// What the router needs from the challenge table (implemented by
/// `table::ChallengeTable`).
pub trait ChallengeLedger: Send + Sync + 'static {
    /// Whether a message for `id` may still be sent now: the challenge exists,
    /// is pending and its deadline has not passed. Checked before every try.
    /// `hint` is where the table said it kept the challenge (never trusted
    /// without the id matching).
    fn deliverable(&self, id: ChallengeId, hint: SlotHint) -> bool;

    /// Records where the latest message of `id` stands (and through which
    /// carrier), and emits the matching event (`Sent`, `Delivered`,
    /// `DeliveryFailed` with `reason`). A later state never goes back to an
    /// earlier one for the same send. Unknown or forgotten ids are ignored.
    /// `hint` as for [`Self::deliverable`].
    fn delivery_update(
        &self,
        id: ChallengeId,
        hint: SlotHint,
        state: DeliveryState,
        carrier: CarrierSlot,
        carrier_name: &str,
        reason: Option<&str>,
    );
}
