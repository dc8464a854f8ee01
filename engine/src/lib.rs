//! Watchword's engine: the lock-sharded in-memory challenge table and the
//! rate-limited multi-carrier delivery router behind the gateway.
//!
//! The table API is synchronous and never awaits; the router is async where it
//! does I/O. Nothing in this crate logs, counts or returns a code or a full
//! destination.

pub mod calls;
pub mod check;
pub mod clock;
pub mod code;
pub mod delivery;
pub mod directory;
pub mod events;
pub mod helpdesk;
pub mod import;
pub mod mask;
pub mod memory;
pub mod oath;
pub mod pskc;
pub mod secret;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod table;
pub mod types;

pub use check::{ChallengeInfo, CheckRequest, CheckResult, CheckStep, RejectReason};
pub use clock::{Clock, ManualClock, SystemClock};
pub use code::Code;
pub use events::{Event, EventKind, EventSink, MemorySink, NullSink, OwnedEvent, Record};
pub use mask::{MaskedDestination, mask_destination};
pub use service::{
    Engine, EngineConfig, EngineError, IssueParams, Issued, PinMode, Resent, RestoreReport,
    SnapshotFile, StatusView, TenantPolicy,
};
pub use types::{ChallengeId, ChallengeState, Channel, DeliveryState, TenantId, VerifyOutcome};
