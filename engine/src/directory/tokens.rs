//! A tenant's OATH tokens in memory: each token's parameters, its secret
//! (opened from the store with the master key at start, or drawn at
//! enrollment), and its replay-sensitive state; and the index of the tokens
//! each user holds.
//!
//! A verification takes the tenant's token lock, checks and moves the
//! token's state, and queues the new state for the store in the same
//! critical section: two concurrent checks of one code cannot both pass,
//! and the caller answers only once the new state is durable. This module
//! must never log or return a secret or a code.

use hashbrown::HashTable;

use crate::oath::{Algorithm, Kind, Params, Secret, Token};
use crate::secret::MasterKey;
use crate::store::StoredToken;

/// Where a token stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenState {
    /// It verifies codes.
    Active,
    /// Too many wrong codes in a row: an administrator must reset it.
    Locked,
    /// Switched off.
    Disabled,
}

impl TokenState {
    /// Lower-case name, as in the API and the store.
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Locked => "locked",
            Self::Disabled => "disabled",
        }
    }

    fn parse(s: &str) -> Option<TokenState> {
        Some(match s {
            "active" => Self::Active,
            "locked" => Self::Locked,
            "disabled" => Self::Disabled,
            _ => return None,
        })
    }
}

/// One token held in memory, packed for a directory of millions: its
/// serial, owner and secret share one heap allocation (`data`: three
/// little-endian `u16` lengths, then the bytes), zeroed when dropped. Its
/// `Debug` prints no secret.
pub(crate) struct TokenEntry {
    data: Box<[u8]>,
    pub(crate) counter: u64,
    pub(crate) last_step: u64,
    pub(crate) created_at_ms: u64,
    pub(crate) params: Params,
    pub(crate) drift: i32,
    pub(crate) failcount: u32,
    pub(crate) kind: Kind,
    pub(crate) state: TokenState,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("serial", &self.serial())
            .field("kind", &self.kind)
            .field("params", &self.params)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Drop for TokenEntry {
    fn drop(&mut self) {
        self.data.fill(0);
        std::hint::black_box(&self.data);
    }
}

/// Packs serial, subject and secret into one allocation. Serials are at
/// most 128 bytes, subjects 255 and secrets 512 (checked before).
fn pack(serial: &str, subject: Option<&str>, secret: &[u8]) -> Box<[u8]> {
    let subject = subject.unwrap_or("");
    let mut data = Vec::with_capacity(6 + serial.len() + subject.len() + secret.len());
    for len in [serial.len(), subject.len(), secret.len()] {
        data.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_le_bytes());
    }
    data.extend_from_slice(serial.as_bytes());
    data.extend_from_slice(subject.as_bytes());
    data.extend_from_slice(secret);
    data.into_boxed_slice()
}

/// What the API shows of a token (never the secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its serial.
    pub serial: String,
    /// `totp` or `hotp`.
    pub kind: &'static str,
    /// Its HMAC.
    pub algorithm: Algorithm,
    /// 6 or 8.
    pub digits: u8,
    /// TOTP step, seconds (0 for HOTP).
    pub period: u32,
    /// Whose.
    pub subject: Option<String>,
    /// Where it stands.
    pub state: TokenState,
    /// Wrong codes in a row.
    pub failcount: u32,
}

/// The associated data a token's secret is sealed under: tenant and serial,
/// so a sealed secret copied to another row does not open.
pub(crate) fn seal_context(tenant: &str, serial: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(tenant.len() + serial.len() + 1);
    aad.extend_from_slice(tenant.as_bytes());
    aad.push(0);
    aad.extend_from_slice(serial.as_bytes());
    aad
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Totp => "totp",
        Kind::Hotp => "hotp",
    }
}

impl TokenEntry {
    /// A new active token with no failures.
    pub(crate) fn new(
        serial: &str,
        subject: Option<&str>,
        kind: Kind,
        params: Params,
        secret: &[u8],
        counter: u64,
        created_at_ms: u64,
    ) -> TokenEntry {
        TokenEntry {
            data: pack(serial, subject, secret),
            counter,
            last_step: 0,
            created_at_ms,
            params,
            drift: 0,
            failcount: 0,
            kind,
            state: TokenState::Active,
        }
    }

    fn lens(&self) -> [usize; 3] {
        let at = |i: usize| {
            usize::from(u16::from_le_bytes([
                self.data.get(i).copied().unwrap_or(0),
                self.data.get(i + 1).copied().unwrap_or(0),
            ]))
        };
        [at(0), at(2), at(4)]
    }

    fn part(&self, which: usize) -> &[u8] {
        let lens = self.lens();
        let from = 6 + lens[..which].iter().sum::<usize>();
        self.data.get(from..from + lens[which]).unwrap_or(&[])
    }

    /// Its serial.
    pub(crate) fn serial(&self) -> &str {
        std::str::from_utf8(self.part(0)).unwrap_or("")
    }

    /// Whose it is, if anyone's.
    pub(crate) fn subject(&self) -> Option<&str> {
        let s = std::str::from_utf8(self.part(1)).unwrap_or("");
        (!s.is_empty()).then_some(s)
    }

    /// Gives it to `subject` (or to no one).
    pub(crate) fn set_subject(&mut self, subject: Option<&str>) {
        let data = pack(self.serial(), subject, self.part(2));
        self.data.fill(0);
        self.data = data;
    }

    /// The secret's bytes (to verify or seal: never to show).
    fn secret(&self) -> &[u8] {
        self.part(2)
    }

    /// The token's HMAC key.
    pub(crate) fn token(&self) -> Result<Token, crate::oath::OathError> {
        Token::from_bytes(self.secret(), self.params)
    }

    /// The entry of a stored token, its secret opened with `key`.
    pub(crate) fn from_stored(t: &StoredToken, key: &MasterKey) -> Result<TokenEntry, String> {
        let bad = |what: &str| format!("token {:?}: {what}", t.serial);
        let kind = match t.kind.as_str() {
            "totp" => Kind::Totp,
            "hotp" => Kind::Hotp,
            _ => return Err(bad("unknown kind")),
        };
        let algorithm = Algorithm::parse(&t.algorithm).ok_or_else(|| bad("unknown algorithm"))?;
        let secret = Secret::new(
            key.open(&t.secret_sealed, &seal_context(&t.tenant, &t.serial))
                .map_err(|e| bad(&e.to_string()))?,
        );
        let params = Params {
            algorithm,
            digits: t.digits,
            period: if t.period == 0 { 30 } else { t.period },
        };
        let mut e = TokenEntry::new(
            &t.serial,
            t.subject.as_deref(),
            kind,
            params,
            secret.expose(),
            t.counter,
            t.created_at_ms,
        );
        e.last_step = t.last_step;
        e.drift = i32::try_from(t.drift).map_err(|_| bad("drift out of range"))?;
        e.failcount = t.failcount;
        e.state = TokenState::parse(&t.state).ok_or_else(|| bad("unknown state"))?;
        Ok(e)
    }

    /// The stored row, its secret sealed with `key`.
    pub(crate) fn to_stored(&self, tenant: &str, key: &MasterKey) -> StoredToken {
        let serial = self.serial();
        StoredToken {
            tenant: tenant.to_owned(),
            serial: serial.to_owned(),
            subject: self.subject().map(str::to_owned),
            kind: kind_name(self.kind).to_owned(),
            algorithm: self.params.algorithm.name().to_owned(),
            digits: self.params.digits,
            period: match self.kind {
                Kind::Totp => self.params.period,
                Kind::Hotp => 0,
            },
            secret_sealed: key.seal(self.secret(), &seal_context(tenant, serial)),
            counter: self.counter,
            last_step: self.last_step,
            drift: i64::from(self.drift),
            failcount: self.failcount,
            state: self.state.name().to_owned(),
            created_at_ms: self.created_at_ms,
        }
    }

    /// What the API shows.
    pub(crate) fn info(&self) -> TokenInfo {
        TokenInfo {
            serial: self.serial().to_owned(),
            kind: kind_name(self.kind),
            algorithm: self.params.algorithm,
            digits: self.params.digits,
            period: match self.kind {
                Kind::Totp => self.params.period,
                Kind::Hotp => 0,
            },
            subject: self.subject().map(str::to_owned),
            state: self.state,
            failcount: self.failcount,
        }
    }

    /// Checks `code` at `now_s`: on a match the step or counter moves past
    /// it and the failures reset; a mismatch changes nothing here (the
    /// caller counts failures once it knows no other token took the code).
    /// Whether it matched.
    pub(crate) fn verify(&mut self, code: &[u8], now_s: u64, window: u8, lookahead: u32) -> bool {
        let Ok(token) = self.token() else {
            return false;
        };
        let matched = match self.kind {
            Kind::Totp => {
                let last = (self.last_step > 0).then_some(self.last_step);
                token
                    .verify_totp(code, now_s, window, i64::from(self.drift), last)
                    .map(|m| {
                        self.last_step = m.step;
                        self.drift = clamp_drift(m.drift);
                    })
            }
            Kind::Hotp => token
                .verify_hotp(code, self.counter, lookahead)
                .map(|next| self.counter = next),
        };
        if matched.is_some() {
            self.failcount = 0;
        }
        matched.is_some()
    }
}

/// A drift in steps, held in 32 bits (a resync moves it at most 1000).
pub(crate) fn clamp_drift(drift: i64) -> i32 {
    i32::try_from(drift).unwrap_or(if drift < 0 { i32::MIN } else { i32::MAX })
}

/// Where a token sits in its table's slab.
pub(crate) type Slot = u32;

/// A tenant's tokens: a slab of entries and two hash indexes of slot
/// numbers (by serial, and by owner: several tokens may share one), so a
/// token costs its entry, its one allocation and two 4-byte index cells.
#[derive(Default)]
pub(crate) struct TokenTable {
    slots: Vec<Option<TokenEntry>>,
    free: Vec<Slot>,
    by_serial: HashTable<Slot>,
    by_subject: HashTable<Slot>,
    hasher: ahash::RandomState,
}

impl std::fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenTable")
            .field("tokens", &self.len())
            .finish_non_exhaustive()
    }
}

impl TokenTable {
    /// How many tokens it holds.
    pub(crate) fn len(&self) -> usize {
        self.by_serial.len()
    }

    fn entry(&self, slot: Slot) -> Option<&TokenEntry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    fn slot_of(&self, serial: &str) -> Option<Slot> {
        let hash = self.hasher.hash_one(serial);
        let slots = &self.slots;
        self.by_serial
            .find(hash, |&s| {
                slots
                    .get(s as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|e| e.serial() == serial)
            })
            .copied()
    }

    /// The token with this serial.
    pub(crate) fn get(&self, serial: &str) -> Option<&TokenEntry> {
        self.slot_of(serial).and_then(|s| self.entry(s))
    }

    /// The token with this serial, to change it.
    pub(crate) fn get_mut(&mut self, serial: &str) -> Option<&mut TokenEntry> {
        let slot = self.slot_of(serial)?;
        self.at_mut(slot)
    }

    /// The token in `slot`, to change it.
    pub(crate) fn at_mut(&mut self, slot: Slot) -> Option<&mut TokenEntry> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// Whether the serial is taken.
    pub(crate) fn contains(&self, serial: &str) -> bool {
        self.slot_of(serial).is_some()
    }

    /// Adds a token, replacing one with the same serial.
    pub(crate) fn put(&mut self, entry: TokenEntry) {
        self.remove(entry.serial());
        let serial_hash = self.hasher.hash_one(entry.serial());
        let subject_hash = entry.subject().map(|s| self.hasher.hash_one(s));
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(cell) = self.slots.get_mut(slot as usize) {
                    *cell = Some(entry);
                }
                slot
            }
            None => {
                self.slots.push(Some(entry));
                Slot::try_from(self.slots.len() - 1).unwrap_or(Slot::MAX)
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        let rehash_serial = |&s: &Slot| {
            slots
                .get(s as usize)
                .and_then(Option::as_ref)
                .map_or(0, |e| hasher.hash_one(e.serial()))
        };
        self.by_serial
            .insert_unique(serial_hash, slot, rehash_serial);
        if let Some(hash) = subject_hash {
            let rehash_subject = |&s: &Slot| {
                slots
                    .get(s as usize)
                    .and_then(Option::as_ref)
                    .and_then(TokenEntry::subject)
                    .map_or(0, |x| hasher.hash_one(x))
            };
            self.by_subject.insert_unique(hash, slot, rehash_subject);
        }
    }

    /// Removes a token and its index cells.
    pub(crate) fn remove(&mut self, serial: &str) -> Option<TokenEntry> {
        let slot = self.slot_of(serial)?;
        let serial_hash = self.hasher.hash_one(serial);
        if let Ok(cell) = self.by_serial.find_entry(serial_hash, |&s| s == slot) {
            cell.remove();
        }
        let entry = self.slots.get_mut(slot as usize)?.take()?;
        if let Some(subject) = entry.subject() {
            let hash = self.hasher.hash_one(subject);
            if let Ok(cell) = self.by_subject.find_entry(hash, |&s| s == slot) {
                cell.remove();
            }
        }
        self.free.push(slot);
        Some(entry)
    }

    /// The slots of a user's tokens.
    pub(crate) fn of(&self, subject: &str) -> Vec<Slot> {
        let hash = self.hasher.hash_one(subject);
        self.by_subject
            .iter_hash(hash)
            .copied()
            .filter(|&s| self.entry(s).is_some_and(|e| e.subject() == Some(subject)))
            .collect()
    }

    /// A user's tokens.
    pub(crate) fn tokens_of<'a>(
        &'a self,
        subject: &'a str,
    ) -> impl Iterator<Item = &'a TokenEntry> {
        let hash = self.hasher.hash_one(subject);
        self.by_subject
            .iter_hash(hash)
            .filter_map(|&s| self.entry(s))
            .filter(move |e| e.subject() == Some(subject))
    }

    /// Forgets every token of a deleted user (the store's cascade did the same).
    pub(crate) fn remove_subject(&mut self, subject: &str) {
        let serials: Vec<String> = self
            .tokens_of(subject)
            .map(|e| e.serial().to_owned())
            .collect();
        for serial in serials {
            self.remove(&serial);
        }
    }

    /// Gives back the slack of a bulk load.
    pub(crate) fn shrink_to_fit(&mut self) {
        self.slots.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn entry(serial: &str, subject: Option<&str>) -> TokenEntry {
        let params = Params {
            algorithm: Algorithm::Sha1,
            digits: 6,
            period: 30,
        };
        TokenEntry::new(serial, subject, Kind::Totp, params, &[7u8; 20], 0, 1)
    }

    #[test]
    fn a_packed_entry_gives_back_its_serial_owner_and_secret() {
        let mut e = entry("SN-1", Some("alice@example.com"));
        assert_eq!(e.serial(), "SN-1");
        assert_eq!(e.subject(), Some("alice@example.com"));
        assert_eq!(e.secret(), &[7u8; 20]);
        e.set_subject(None);
        assert_eq!(
            (e.serial(), e.subject(), e.secret()),
            ("SN-1", None, &[7u8; 20][..])
        );
        assert!(!format!("{e:?}").contains("7, 7"));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put(u8, Option<u8>),
        Remove(u8),
        RemoveSubject(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..24, proptest::option::of(0u8..6)).prop_map(|(s, u)| Op::Put(s, u)),
            (0u8..24).prop_map(Op::Remove),
            (0u8..6).prop_map(Op::RemoveSubject),
        ]
    }

    proptest! {
        /// The slab and its two indexes agree with a plain map after any
        /// sequence of puts (replacing), removals and user deletions.
        #[test]
        fn the_table_agrees_with_a_plain_map(ops in proptest::collection::vec(op(), 0..200)) {
            let mut table = TokenTable::default();
            let mut model: BTreeMap<String, Option<String>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Put(s, u) => {
                        let (serial, subject) = (format!("S{s}"), u.map(|u| format!("u{u}")));
                        table.put(entry(&serial, subject.as_deref()));
                        model.insert(serial, subject);
                    }
                    Op::Remove(s) => {
                        let serial = format!("S{s}");
                        prop_assert_eq!(table.remove(&serial).is_some(), model.remove(&serial).is_some());
                    }
                    Op::RemoveSubject(u) => {
                        let subject = format!("u{u}");
                        table.remove_subject(&subject);
                        model.retain(|_, v| v.as_deref() != Some(subject.as_str()));
                    }
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for (serial, subject) in &model {
                let e = table.get(serial).expect("in the model, so in the table");
                prop_assert_eq!(e.subject(), subject.as_deref());
            }
            for u in 0..6u8 {
                let subject = format!("u{u}");
                let mut got: Vec<String> = table.tokens_of(&subject).map(|e| e.serial().to_owned()).collect();
                got.sort();
                let want: Vec<String> = model
                    .iter()
                    .filter(|(_, v)| v.as_deref() == Some(subject.as_str()))
                    .map(|(k, _)| k.clone())
                    .collect();
                prop_assert_eq!(&got, &want);
                prop_assert_eq!(table.of(&subject).len(), want.len());
            }
        }
    }
}
