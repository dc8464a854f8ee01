//! Users' PINs in memory (DOMAIN.md §6): a long-lived numeric secret of 4 to
//! 12 digits, drawn from the CSPRNG without bias at each reset, of which only
//! a verifier is kept: an HMAC-SHA256 of tenant, subject and PIN under a key
//! derived from the master key, compared in constant time.
//!
//! This module must never keep, log or return a PIN except the one value a
//! reset answers (a [`Pin`], whose `Debug` is masked), and never compare a
//! PIN in a way whose time depends on where it differs.

use std::collections::HashMap;

use subtle::ConstantTimeEq;

use crate::secret::MasterKey;
use crate::store::StoredPin;

/// Shortest PIN.
pub const MIN_PIN_LEN: u8 = 4;
/// Longest PIN.
pub const MAX_PIN_LEN: u8 = 12;
/// The tenant default when its configuration says nothing (DOMAIN.md §6).
pub const DEFAULT_PIN_LEN: u8 = 5;

/// The keyed-hash domain of PIN verifiers.
const DOMAIN: &str = "watchword pin verifier v1";

/// A PIN just drawn, shown once to the administrator who reset it (and
/// e-mailed when asked). Its `Debug` and `Display` are masked; it is zeroed
/// when dropped.
pub struct Pin(String);

impl Pin {
    /// The digits (for the one-time answer and the e-mail only).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `*` for each digit.
    pub fn masked(&self) -> String {
        mask(self.0.len())
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pin({})", self.masked())
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        // Overwrite the digits in place (same length: no reallocation) and
        // keep the write observable.
        let zeros = "0".repeat(self.0.len());
        self.0.replace_range(.., &zeros);
        std::hint::black_box(&self.0);
    }
}

/// `*` repeated `len` times: how a PIN shows everywhere but its reset.
pub fn mask(len: usize) -> String {
    "*".repeat(len)
}

/// Where a PIN stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinState {
    /// It is checked.
    Active,
    /// Too many wrong PINs: an administrator must reset it.
    Locked,
}

impl PinState {
    /// Lower-case name, as in the API and the store.
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Locked => "locked",
        }
    }
}

/// What the API shows of a PIN (never the PIN).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinInfo {
    /// Its digits.
    pub length: u8,
    /// Where it stands.
    pub state: PinState,
    /// Wrong PINs in a row.
    pub failcount: u32,
}

/// One user's PIN in memory.
pub(crate) struct PinEntry {
    verifier: [u8; 32],
    pub(crate) length: u8,
    pub(crate) failcount: u32,
    pub(crate) state: PinState,
    created_at_ms: u64,
}

impl std::fmt::Debug for PinEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinEntry")
            .field("length", &self.length)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The verifier of `pin` for `subject` of `tenant`.
fn verifier(key: &MasterKey, tenant: &str, subject: &str, pin: &[u8]) -> [u8; 32] {
    let mut data = Vec::with_capacity(tenant.len() + subject.len() + pin.len() + 2);
    data.extend_from_slice(tenant.as_bytes());
    data.push(0);
    data.extend_from_slice(subject.as_bytes());
    data.push(0);
    data.extend_from_slice(pin);
    let v = key.keyed_hash(DOMAIN, &data);
    data.fill(0);
    v
}

/// Draws `length` decimal digits from the system's CSPRNG without bias
/// (bytes of 250 and above are redrawn, so each digit is `b % 10` of a
/// uniform value below 250).
pub(crate) fn draw(length: u8) -> Result<Pin, ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(usize::from(length));
    let mut buf = [0u8; 32];
    while out.len() < usize::from(length) {
        rng.fill(&mut buf)?;
        for b in buf.iter().filter(|b| **b < 250) {
            if out.len() == usize::from(length) {
                break;
            }
            out.push(char::from(b'0' + b % 10));
        }
    }
    buf.fill(0);
    Ok(Pin(out))
}

impl PinEntry {
    /// A new active PIN's entry.
    pub(crate) fn new(
        key: &MasterKey,
        tenant: &str,
        subject: &str,
        pin: &Pin,
        now_ms: u64,
    ) -> PinEntry {
        PinEntry {
            verifier: verifier(key, tenant, subject, pin.expose().as_bytes()),
            length: u8::try_from(pin.expose().len()).unwrap_or(MAX_PIN_LEN),
            failcount: 0,
            state: PinState::Active,
            created_at_ms: now_ms,
        }
    }

    /// The entry of a stored PIN.
    pub(crate) fn from_stored(p: &StoredPin) -> Result<PinEntry, String> {
        let bad = |what: &str| format!("the PIN of {:?}: {what}", p.subject);
        Ok(PinEntry {
            verifier: p
                .verifier
                .as_slice()
                .try_into()
                .map_err(|_| bad("a verifier of the wrong size"))?,
            length: p.length,
            failcount: p.failcount,
            state: match p.state.as_str() {
                "active" => PinState::Active,
                "locked" => PinState::Locked,
                _ => return Err(bad("unknown state")),
            },
            created_at_ms: p.created_at_ms,
        })
    }

    /// The stored row.
    pub(crate) fn to_stored(&self, tenant: &str, subject: &str) -> StoredPin {
        StoredPin {
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            verifier: self.verifier.to_vec(),
            length: self.length,
            failcount: self.failcount,
            state: self.state.name().to_owned(),
            created_at_ms: self.created_at_ms,
        }
    }

    /// What the API shows.
    pub(crate) fn info(&self) -> PinInfo {
        PinInfo {
            length: self.length,
            state: self.state,
            failcount: self.failcount,
        }
    }

    /// Whether `pin` is this PIN, in constant time (a PIN of another length
    /// is compared all the same, and never matches).
    pub(crate) fn matches(&self, key: &MasterKey, tenant: &str, subject: &str, pin: &[u8]) -> bool {
        let v = verifier(key, tenant, subject, pin);
        bool::from(v.ct_eq(&self.verifier))
    }
}

/// A tenant's PINs by subject.
pub(crate) type PinTable = HashMap<Box<str>, PinEntry>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_has_its_length_in_digits_and_shows_masked() {
        for len in MIN_PIN_LEN..=MAX_PIN_LEN {
            let p = draw(len).unwrap();
            assert_eq!(p.expose().len(), usize::from(len));
            assert!(p.expose().bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(
                format!("{p:?}"),
                format!("Pin({})", "*".repeat(usize::from(len)))
            );
        }
    }

    #[test]
    fn digits_are_drawn_without_visible_bias() {
        // 100,000 digits: each count within 5% of 10,000 (a biased draw
        // such as byte % 10 over 0..=255 gives 0-5 about 2.3% more often,
        // which this bound does not catch; the rejection in `draw` is
        // checked by reading it, this test catches gross mistakes).
        let mut counts = [0u32; 10];
        for _ in 0..10_000 {
            for b in draw(10).unwrap().expose().bytes() {
                counts[usize::from(b - b'0')] += 1;
            }
        }
        for c in counts {
            assert!((9_500..=10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn a_verifier_matches_only_its_pin_user_and_tenant() {
        let key = MasterKey::generate();
        let pin = Pin("12345".into());
        let e = PinEntry::new(&key, "t", "ann", &pin, 1);
        assert!(e.matches(&key, "t", "ann", b"12345"));
        assert!(!e.matches(&key, "t", "ann", b"12346"));
        assert!(!e.matches(&key, "t", "ann", b"1234"));
        assert!(!e.matches(&key, "t", "bob", b"12345"));
        assert!(!e.matches(&key, "u", "ann", b"12345"));
        assert!(!e.matches(&MasterKey::generate(), "t", "ann", b"12345"));
        let stored = e.to_stored("t", "ann");
        assert!(!format!("{stored:?}").contains("verifier: ["));
        let back = PinEntry::from_stored(&stored).unwrap();
        assert!(back.matches(&key, "t", "ann", b"12345"));
    }
}
