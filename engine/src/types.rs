//! The engine's shared vocabulary: challenge ids, channels, tenants, states and
//! outcomes, with the numeric values that protocol v1 puts on the wire.
//!
//! Nothing here may hold or print a code or a full destination.

use std::fmt;

/// A challenge id: 16 unguessable bytes chosen by the server.
///
/// The top bits carry the index of the table shard that holds the challenge
/// (see `table`); every other bit comes from a CSPRNG, so an id still carries at
/// least 116 random bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChallengeId(pub [u8; 16]);

impl ChallengeId {
    /// The id as a big-endian 128-bit integer.
    pub fn as_u128(self) -> u128 {
        u128::from_be_bytes(self.0)
    }
}

impl fmt::Debug for ChallengeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChallengeId({self})")
    }
}

impl ChallengeId {
    /// Lower-case hex, 32 ASCII characters, without formatting machinery
    /// (the audit log writes several per challenge).
    pub fn hex(&self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
        }
        out
    }
}

impl fmt::Display for ChallengeId {
    /// Lower-case hex, 32 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex();
        // Always ASCII hex digits.
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

/// A tenant's index in the configured tenant list. Challenges of one tenant are
/// invisible to every other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub u16);

/// How a code reaches its person. Wire values: 1 sms, 2 voice, 3 email.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// A text message to a phone number.
    Sms = 1,
    /// A voice call that reads the code out.
    Voice = 2,
    /// An e-mail carrying the code in its body.
    Email = 3,
}

impl Channel {
    /// Every channel, in wire order.
    pub const ALL: [Channel; 3] = [Channel::Sms, Channel::Voice, Channel::Email];

    /// The channel for a wire value, or `None` if it is not one.
    pub fn from_wire(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Sms),
            2 => Some(Self::Voice),
            3 => Some(Self::Email),
            _ => None,
        }
    }

    /// The wire value.
    pub fn wire(self) -> u8 {
        self as u8
    }

    /// Lower-case name, for logs, metrics and configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Voice => "voice",
            Self::Email => "email",
        }
    }
}

/// The life-cycle state of a challenge. Wire values as in STATUS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChallengeState {
    /// Issued, not yet verified, not expired.
    Pending = 0,
    /// Verified with the right code; consumed.
    Approved = 1,
    /// Its time ran out before a right code arrived.
    Expired = 2,
    /// Too many wrong codes.
    Locked = 3,
    /// Cancelled by the upstream system.
    Cancelled = 4,
    /// Replaced by a newer challenge for the same subject, channel and destination.
    Superseded = 5,
}

impl ChallengeState {
    /// The wire value.
    pub fn wire(self) -> u8 {
        self as u8
    }

    /// Lower-case name, for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Expired => "expired",
            Self::Locked => "locked",
            Self::Cancelled => "cancelled",
            Self::Superseded => "superseded",
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Pending,
            1 => Self::Approved,
            2 => Self::Expired,
            3 => Self::Locked,
            4 => Self::Cancelled,
            _ => Self::Superseded,
        }
    }
}

/// Where the delivery of a challenge's latest message stands. Wire values as in STATUS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeliveryState {
    /// Accepted by the router, not yet taken by a carrier.
    Queued = 0,
    /// A carrier accepted it.
    Sent = 1,
    /// A carrier's receipt says it reached the handset.
    Delivered = 2,
    /// Every try was exhausted, or it was refused for good.
    Failed = 3,
}

impl DeliveryState {
    /// The wire value.
    pub fn wire(self) -> u8 {
        self as u8
    }

    /// Lower-case name, for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Queued,
            1 => Self::Sent,
            2 => Self::Delivered,
            _ => Self::Failed,
        }
    }
}

/// What a verify attempt came to. Wire values as in VERIFY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VerifyOutcome {
    /// The code matched; the challenge is consumed.
    Approved,
    /// Wrong code; this many tries remain.
    Rejected {
        /// Wrong codes still allowed before the challenge locks.
        attempts_left: u8,
    },
    /// The challenge's time ran out.
    Expired,
    /// Too many wrong codes; the challenge is dead.
    Locked,
    /// No such pending challenge for this tenant.
    Unknown,
}

impl VerifyOutcome {
    /// The wire value of the outcome.
    pub fn wire(self) -> u8 {
        match self {
            Self::Approved => 0,
            Self::Rejected { .. } => 1,
            Self::Expired => 2,
            Self::Locked => 3,
            Self::Unknown => 4,
        }
    }

    /// The attempts left that the wire response carries (0 unless REJECTED).
    pub fn attempts_left(self) -> u8 {
        match self {
            Self::Rejected { attempts_left } => attempts_left,
            _ => 0,
        }
    }

    /// Lower-case name, for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Rejected { .. } => "rejected",
            Self::Expired => "expired",
            Self::Locked => "locked",
            Self::Unknown => "unknown",
        }
    }
}
