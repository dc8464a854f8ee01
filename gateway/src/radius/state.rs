//! Binds the State of an Access-Challenge to the RADIUS client it was sent
//! to (radius.md: a State that belongs to another client gets
//! Access-Reject). The engine seals its states to the tenant; two clients
//! of one tenant would otherwise accept each other's. The State on the wire
//! is the engine's state, a dot, and 16 hex digits of an HMAC-SHA256 tag
//! over the client's name and that state, under a key drawn at start (the
//! challenges it guards live in memory too).
//!
//! This module must never accept a State whose tag it did not make for the
//! same client, compare tags in variable time, or show its key.

use ring::hmac;
use subtle::ConstantTimeEq;

/// Hex digits of the tag.
const TAG_HEX: usize = 16;

/// The key that tags States. `Debug` shows nothing of it.
pub struct StateBinding(hmac::Key);

impl std::fmt::Debug for StateBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateBinding(<key redacted>)")
    }
}

impl StateBinding {
    /// A binding with a fresh random key.
    pub fn new() -> Result<StateBinding, String> {
        let rng = ring::rand::SystemRandom::new();
        hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map(StateBinding)
            .map_err(|_| "the system's random source failed".to_owned())
    }

    fn tag(&self, client: &str, state: &str) -> [u8; TAG_HEX] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(&(client.len() as u32).to_be_bytes());
        ctx.update(client.as_bytes());
        ctx.update(state.as_bytes());
        let full = ctx.sign();
        let mut out = [0u8; TAG_HEX];
        for (pair, b) in out.chunks_exact_mut(2).zip(full.as_ref()) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0x0f)];
        }
        out
    }

    /// The State to send to `client` for the engine's `state`.
    pub fn bind(&self, client: &str, state: &str) -> String {
        let tag = self.tag(client, state);
        let mut s = String::with_capacity(state.len() + 1 + TAG_HEX);
        s.push_str(state);
        s.push('.');
        s.push_str(std::str::from_utf8(&tag).unwrap_or_default());
        s
    }

    /// The engine's state inside a State this binding made for `client`;
    /// `None` for anything else.
    pub fn open<'a>(&self, client: &str, wire: &'a str) -> Option<&'a str> {
        let (state, tag) = wire.rsplit_once('.')?;
        if tag.len() != TAG_HEX {
            return None;
        }
        let expected = self.tag(client, state);
        bool::from(expected.ct_eq(tag.as_bytes())).then_some(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_state_opens_only_for_its_client() {
        let b = StateBinding::new().unwrap();
        let wire = b.bind("vpn-a", "ws1abc");
        assert_eq!(wire.len(), "ws1abc".len() + 17);
        assert_eq!(b.open("vpn-a", &wire), Some("ws1abc"));
        assert_eq!(b.open("vpn-b", &wire), None, "another client");
        assert_eq!(b.open("vpn-a", "ws1abc"), None, "no tag");
        let other = StateBinding::new().unwrap();
        assert_eq!(other.open("vpn-a", &wire), None, "another key (a restart)");
        let mut bytes = wire.clone().into_bytes();
        bytes[2] ^= 1;
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(b.open("vpn-a", &tampered), None);
        assert_eq!(format!("{b:?}"), "StateBinding(<key redacted>)");
    }

    proptest! {
        #[test]
        fn bind_then_open_round_trips_and_nothing_else_opens(
            client in "[a-z0-9.-]{1,20}",
            state in "\\PC{0,64}",
            junk in "\\PC{0,90}",
        ) {
            let b = StateBinding::new().unwrap();
            let wire = b.bind(&client, &state);
            prop_assert_eq!(b.open(&client, &wire), Some(state.as_str()));
            prop_assert_eq!(b.open(&client, &junk), None);
            let other = format!("{client}x");
            prop_assert_eq!(b.open(&other, &wire), None);
        }
    }
}
