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

use std::collections::HashMap;

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

/// One token held in memory. Its `Debug` prints no secret.
pub(crate) struct TokenEntry {
    pub(crate) subject: Option<Box<str>>,
    pub(crate) kind: Kind,
    pub(crate) params: Params,
    pub(crate) secret: Secret,
    pub(crate) counter: u64,
    pub(crate) last_step: u64,
    pub(crate) drift: i64,
    pub(crate) failcount: u32,
    pub(crate) state: TokenState,
    pub(crate) created_at_ms: u64,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("kind", &self.kind)
            .field("params", &self.params)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
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
    /// The entry of a stored token, its secret opened with `key`.
    pub(crate) fn from_stored(t: &StoredToken, key: &MasterKey) -> Result<TokenEntry, String> {
        let bad = |what: &str| format!("token {:?}: {what}", t.serial);
        let kind = match t.kind.as_str() {
            "totp" => Kind::Totp,
            "hotp" => Kind::Hotp,
            _ => return Err(bad("unknown kind")),
        };
        let algorithm = Algorithm::parse(&t.algorithm).ok_or_else(|| bad("unknown algorithm"))?;
        let secret = key
            .open(&t.secret_sealed, &seal_context(&t.tenant, &t.serial))
            .map_err(|e| bad(&e.to_string()))?;
        Ok(TokenEntry {
            subject: t.subject.as_deref().map(Into::into),
            kind,
            params: Params {
                algorithm,
                digits: t.digits,
                period: if t.period == 0 { 30 } else { t.period },
            },
            secret: Secret::new(secret),
            counter: t.counter,
            last_step: t.last_step,
            drift: t.drift,
            failcount: t.failcount,
            state: TokenState::parse(&t.state).ok_or_else(|| bad("unknown state"))?,
            created_at_ms: t.created_at_ms,
        })
    }

    /// The stored row, its secret sealed with `key`.
    pub(crate) fn to_stored(&self, tenant: &str, serial: &str, key: &MasterKey) -> StoredToken {
        StoredToken {
            tenant: tenant.to_owned(),
            serial: serial.to_owned(),
            subject: self.subject.as_deref().map(str::to_owned),
            kind: kind_name(self.kind).to_owned(),
            algorithm: self.params.algorithm.name().to_owned(),
            digits: self.params.digits,
            period: match self.kind {
                Kind::Totp => self.params.period,
                Kind::Hotp => 0,
            },
            secret_sealed: key.seal(self.secret.expose(), &seal_context(tenant, serial)),
            counter: self.counter,
            last_step: self.last_step,
            drift: self.drift,
            failcount: self.failcount,
            state: self.state.name().to_owned(),
            created_at_ms: self.created_at_ms,
        }
    }

    /// What the API shows.
    pub(crate) fn info(&self, serial: &str) -> TokenInfo {
        TokenInfo {
            serial: serial.to_owned(),
            kind: kind_name(self.kind),
            algorithm: self.params.algorithm,
            digits: self.params.digits,
            period: match self.kind {
                Kind::Totp => self.params.period,
                Kind::Hotp => 0,
            },
            subject: self.subject.as_deref().map(str::to_owned),
            state: self.state,
            failcount: self.failcount,
        }
    }

    /// Checks `code` at `now_s`: on a match the step or counter moves past
    /// it and the failures reset; a mismatch changes nothing here (the
    /// caller counts failures once it knows no other token took the code).
    /// Whether it matched.
    pub(crate) fn verify(&mut self, code: &[u8], now_s: u64, window: u8, lookahead: u32) -> bool {
        let Ok(token) = Token::new(&self.secret, self.params) else {
            return false;
        };
        let matched = match self.kind {
            Kind::Totp => {
                let last = (self.last_step > 0).then_some(self.last_step);
                token
                    .verify_totp(code, now_s, window, self.drift, last)
                    .map(|m| {
                        self.last_step = m.step;
                        self.drift = m.drift;
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

/// A tenant's tokens by serial, and each user's serials.
#[derive(Debug, Default)]
pub(crate) struct TokenTable {
    pub(crate) by_serial: HashMap<Box<str>, TokenEntry>,
    pub(crate) by_subject: HashMap<Box<str>, Vec<Box<str>>>,
}

impl TokenTable {
    /// Adds or replaces a token, keeping the subject index in step.
    pub(crate) fn put(&mut self, serial: &str, entry: TokenEntry) {
        self.remove(serial);
        if let Some(s) = &entry.subject {
            self.by_subject
                .entry(s.clone())
                .or_default()
                .push(serial.into());
        }
        self.by_serial.insert(serial.into(), entry);
    }

    /// Removes a token and its index entry.
    pub(crate) fn remove(&mut self, serial: &str) -> Option<TokenEntry> {
        let old = self.by_serial.remove(serial)?;
        if let Some(s) = &old.subject
            && let Some(list) = self.by_subject.get_mut(s)
        {
            list.retain(|x| &**x != serial);
            if list.is_empty() {
                self.by_subject.remove(s);
            }
        }
        Some(old)
    }

    /// The serials of a user's tokens.
    pub(crate) fn of(&self, subject: &str) -> Vec<Box<str>> {
        self.by_subject.get(subject).cloned().unwrap_or_default()
    }

    /// Forgets every token of a deleted user (the store's cascade did the same).
    pub(crate) fn remove_subject(&mut self, subject: &str) {
        for serial in self.of(subject) {
            self.remove(&serial);
        }
    }
}
