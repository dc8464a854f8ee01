//! OATH one-time passwords: HOTP (RFC 4226) and TOTP (RFC 6238) with SHA-1,
//! SHA-256 and SHA-512, 6 or 8 digits, 30 or 60 s steps, counters and time
//! steps of 64 bits; the verification windows (TOTP drift, HOTP look-ahead,
//! resynchronisation with two consecutive codes); base32 as authenticator
//! apps and the Entra CSV layout write it; and the `otpauth://` URI of an
//! enrollment.
//!
//! Pure logic: the time is an argument, nothing is stored here. The HMAC is
//! ring's; the dynamic truncation, the windows and the replay rule (a step or
//! counter at or before the last accepted one never verifies) are ours,
//! tested with every vector of RFC 4226 Appendix D and RFC 6238 Appendix B.
//! This module must never log, print or put in an error a secret or a code;
//! [`Secret`]'s `Debug` prints its length only.

use std::fmt;

use subtle::ConstantTimeEq;

/// The HMAC of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// HMAC-SHA-1 (the RFCs' default and most hardware tokens).
    Sha1,
    /// HMAC-SHA-256.
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

impl Algorithm {
    /// The name as in `otpauth://` URIs and the API (`SHA1`, `SHA256`, `SHA512`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
            Self::Sha512 => "SHA512",
        }
    }

    /// The algorithm for a name, any case, with or without the dash
    /// (`sha1`, `SHA-256`, ...).
    pub fn parse(name: &str) -> Option<Algorithm> {
        let n: String = name
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_ascii_uppercase();
        match n.as_str() {
            "SHA1" => Some(Self::Sha1),
            "SHA256" => Some(Self::Sha256),
            "SHA512" => Some(Self::Sha512),
            _ => None,
        }
    }

    fn ring(self) -> ring::hmac::Algorithm {
        match self {
            Self::Sha1 => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => ring::hmac::HMAC_SHA256,
            Self::Sha512 => ring::hmac::HMAC_SHA512,
        }
    }
}

/// A token's shared secret. Its `Debug` prints only its length; it is
/// zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

impl Secret {
    /// A secret of these bytes.
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// A fresh random secret of `len` bytes from the system's CSPRNG.
    pub fn generate(len: usize) -> Result<Secret, OathError> {
        use ring::rand::SecureRandom;
        let mut b = vec![0u8; len];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| OathError::Random)?;
        Ok(Secret(b))
    }

    /// The bytes (to seal them for the store: never to show).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret in base32, unpadded (for an enrollment's URI, once).
    pub fn to_base32(&self) -> String {
        base32_encode(&self.0)
    }
}

/// Why an OATH operation was refused. Never carries a secret or a code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OathError {
    /// Digits other than 6 or 8.
    #[error("digits: must be 6 or 8, got {0}")]
    Digits(u8),
    /// A step other than 30 or 60 seconds.
    #[error("period: must be 30 or 60 seconds, got {0}")]
    Period(u32),
    /// A secret shorter than 80 bits or longer than 512 bytes.
    #[error("secret: must be 10 to 512 bytes, got {0}")]
    SecretLength(usize),
    /// Not base32.
    #[error("secret: not base32 ({0})")]
    Base32(&'static str),
    /// The system's random source failed.
    #[error("the system's random source failed")]
    Random,
}

/// What a token computes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// The HMAC.
    pub algorithm: Algorithm,
    /// Code length: 6 or 8.
    pub digits: u8,
    /// TOTP step, seconds: 30 or 60 (ignored for HOTP).
    pub period: u32,
}

impl Params {
    /// Checks digits and period.
    pub fn validate(&self) -> Result<(), OathError> {
        if self.digits != 6 && self.digits != 8 {
            return Err(OathError::Digits(self.digits));
        }
        if self.period != 30 && self.period != 60 {
            return Err(OathError::Period(self.period));
        }
        Ok(())
    }
}

/// Checks a secret's length: at least 80 bits (RFC 4226 §4, R6 asks 128,
/// recommends 160; hardware tokens of 80 bits exist), at most 512 bytes.
pub fn validate_secret(secret: &[u8]) -> Result<(), OathError> {
    if (10..=512).contains(&secret.len()) {
        Ok(())
    } else {
        Err(OathError::SecretLength(secret.len()))
    }
}

const POW10: [u32; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// HOTP(K, C) truncated to 31 bits (RFC 4226 §5.3), before the modulo.
fn truncated(key: &ring::hmac::Key, counter: u64) -> u32 {
    let tag = ring::hmac::sign(key, &counter.to_be_bytes());
    let h = tag.as_ref();
    let offset = usize::from(h[h.len() - 1] & 0x0f);
    u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ])
}

/// The code for `counter`, as `digits` ASCII digits (leading zeros kept).
fn code_at(key: &ring::hmac::Key, counter: u64, digits: u8) -> [u8; 8] {
    let mut v = truncated(key, counter) % POW10[usize::from(digits)];
    let mut out = [b'0'; 8];
    for i in (0..usize::from(digits)).rev() {
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out
}

/// A secret keyed for its algorithm, ready to compute many codes.
pub struct Token {
    key: ring::hmac::Key,
    params: Params,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// A TOTP code that verified: the step it matched and the drift to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TotpMatch {
    /// The time step the code was made for; the next code must be later.
    pub step: u64,
    /// Steps between the token's clock and ours at this success (kept and
    /// applied to the window next time).
    pub drift: i64,
}

impl Token {
    /// A token computing with `secret` under `params`.
    pub fn new(secret: &Secret, params: Params) -> Result<Token, OathError> {
        Token::from_bytes(secret.expose(), params)
    }

    /// The token of a secret's bytes (held elsewhere, e.g. packed in the
    /// directory's memory).
    pub fn from_bytes(secret: &[u8], params: Params) -> Result<Token, OathError> {
        params.validate()?;
        validate_secret(secret)?;
        Ok(Token {
            key: ring::hmac::Key::new(params.algorithm.ring(), secret),
            params,
        })
    }

    /// Its parameters.
    pub fn params(&self) -> Params {
        self.params
    }

    /// HOTP value for `counter` (tests, enrollment checks; never logged).
    pub fn hotp(&self, counter: u64) -> String {
        let c = code_at(&self.key, counter, self.params.digits);
        String::from_utf8_lossy(&c[..usize::from(self.params.digits)]).into_owned()
    }

    /// The TOTP time step of `unix_s`.
    pub fn step_at(&self, unix_s: u64) -> u64 {
        unix_s / u64::from(self.params.period)
    }

    /// TOTP value at `unix_s` (tests; never logged).
    pub fn totp(&self, unix_s: u64) -> String {
        self.hotp(self.step_at(unix_s))
    }

    /// Whether `code` is the code of `counter`, in constant time with respect
    /// to the digits (a code of the wrong length never matches).
    fn matches(&self, counter: u64, code: &[u8]) -> bool {
        let digits = usize::from(self.params.digits);
        let want = code_at(&self.key, counter, self.params.digits);
        code.len() == digits && bool::from(want[..digits].ct_eq(code))
    }

    /// TOTP verification at `unix_s`: the steps within `window` of the
    /// current step moved by the remembered `drift` are tried, nearest
    /// first; a step at or before `last_step` never verifies (replay).
    pub fn verify_totp(
        &self,
        code: &[u8],
        unix_s: u64,
        window: u8,
        drift: i64,
        last_step: Option<u64>,
    ) -> Option<TotpMatch> {
        let now = self.step_at(unix_s);
        let center = now.saturating_add_signed(drift);
        let w = i64::from(window);
        let mut offsets: Vec<i64> = (-w..=w).collect();
        offsets.sort_by_key(|o| o.abs());
        for o in offsets {
            let Some(step) = center.checked_add_signed(o) else {
                continue;
            };
            if last_step.is_some_and(|last| step <= last) {
                continue;
            }
            if self.matches(step, code) {
                return Some(TotpMatch {
                    step,
                    drift: (i128::from(step) - i128::from(now)) as i64,
                });
            }
        }
        None
    }

    /// HOTP verification: the counters `next .. next + lookahead` are tried;
    /// on a match, the counter to expect next (one past it).
    pub fn verify_hotp(&self, code: &[u8], next: u64, lookahead: u32) -> Option<u64> {
        (0..u64::from(lookahead.max(1)))
            .filter_map(|i| next.checked_add(i))
            .find(|&c| self.matches(c, code))
            .map(|c| c + 1)
    }

    /// Resynchronisation: the first counter (or step) from `from` within
    /// `search` whose code is `code1` and whose next code is `code2`; the
    /// counter (step) of `code2`.
    pub fn resync(&self, code1: &[u8], code2: &[u8], from: u64, search: u32) -> Option<u64> {
        (0..u64::from(search))
            .filter_map(|i| from.checked_add(i))
            .find(|&c| {
                self.matches(c, code1) && c.checked_add(1).is_some_and(|n| self.matches(n, code2))
            })
            .map(|c| c + 1)
    }
}

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Base32 (RFC 4648), unpadded.
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(B32[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(B32[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Base32 as people and token vendors write it: any case, spaces and dashes
/// ignored, `=` padding optional, and trailing bits that do not make a whole
/// byte dropped (the Entra example secret needs that). At most 1024 symbols.
pub fn base32_decode(text: &str) -> Result<Vec<u8>, OathError> {
    if text.len() > 1024 {
        return Err(OathError::Base32("longer than 1024 characters"));
    }
    let body = text.trim_end_matches('=');
    if body.contains('=') {
        return Err(OathError::Base32("padding in the middle"));
    }
    let mut out = Vec::with_capacity(body.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in body.chars().filter(|c| *c != ' ' && *c != '-') {
        let v = match c.to_ascii_uppercase() {
            u @ 'A'..='Z' => u as u32 - 'A' as u32,
            d @ '2'..='7' => d as u32 - '2' as u32 + 26,
            _ => return Err(OathError::Base32("a character outside A-Z and 2-7")),
        };
        acc = ((acc << 5) | v) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

/// The kind of an `otpauth://` URI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Time-based.
    Totp,
    /// Counter-based.
    Hotp,
}

/// The `otpauth://` URI of an enrollment (Key Uri Format): the label is
/// `issuer:account`, both percent-encoded. It holds the secret: shown
/// once, to the enrolling user, and nowhere else.
pub fn otpauth_uri(
    kind: Kind,
    issuer: &str,
    account: &str,
    secret: &Secret,
    params: Params,
    counter: u64,
) -> String {
    let enc = |s: &str| {
        let mut o = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                o.push(char::from(b));
            } else {
                o.push_str(&format!("%{b:02X}"));
            }
        }
        o
    };
    let mut uri = format!(
        "otpauth://{}/{}:{}?secret={}&issuer={}&algorithm={}&digits={}",
        match kind {
            Kind::Totp => "totp",
            Kind::Hotp => "hotp",
        },
        enc(issuer),
        enc(account),
        secret.to_base32(),
        enc(issuer),
        params.algorithm.name(),
        params.digits
    );
    match kind {
        Kind::Totp => uri.push_str(&format!("&period={}", params.period)),
        Kind::Hotp => uri.push_str(&format!("&counter={counter}")),
    }
    uri
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token(secret: &[u8], algorithm: Algorithm, digits: u8) -> Token {
        Token::new(
            &Secret::new(secret.to_vec()),
            Params {
                algorithm,
                digits,
                period: 30,
            },
        )
        .unwrap()
    }

    const RFC_SEED: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc4226_appendix_d() {
        let truncated_values = [
            1_284_755_224u32,
            1_094_287_082,
            137_359_152,
            1_726_969_429,
            1_640_338_314,
            868_254_676,
            1_918_287_922,
            82_162_583,
            673_399_871,
            645_520_489,
        ];
        let hotp = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        let t = token(RFC_SEED, Algorithm::Sha1, 6);
        for (c, (tv, code)) in truncated_values.iter().zip(hotp).enumerate() {
            assert_eq!(truncated(&t.key, c as u64), *tv, "counter {c}");
            assert_eq!(t.hotp(c as u64), code, "counter {c}");
        }
    }

    #[test]
    fn rfc6238_appendix_b_all_three_algorithms() {
        let seeds = [
            (Algorithm::Sha1, &b"12345678901234567890"[..]),
            (Algorithm::Sha256, &b"12345678901234567890123456789012"[..]),
            (
                Algorithm::Sha512,
                &b"1234567890123456789012345678901234567890123456789012345678901234"[..],
            ),
        ];
        let table: [(u64, [&str; 3]); 6] = [
            (59, ["94287082", "46119246", "90693936"]),
            (1_111_111_109, ["07081804", "68084774", "25091201"]),
            (1_111_111_111, ["14050471", "67062674", "99943326"]),
            (1_234_567_890, ["89005924", "91819424", "93441116"]),
            (2_000_000_000, ["69279037", "90698825", "38618901"]),
            // Beyond 2^32 seconds: the step no longer fits 32 bits' worth
            // of time (the RFC's year-2603 row).
            (20_000_000_000, ["65353130", "77737706", "47863826"]),
        ];
        for (time, codes) in table {
            for ((alg, seed), want) in seeds.iter().zip(codes) {
                let t = token(seed, *alg, 8);
                assert_eq!(t.totp(time), want, "{alg:?} at {time}");
                let m = t.verify_totp(want.as_bytes(), time, 1, 0, None).unwrap();
                assert_eq!((m.step, m.drift), (time / 30, 0));
            }
        }
    }

    #[test]
    fn totp_window_drift_and_replay() {
        let t = token(RFC_SEED, Algorithm::Sha1, 6);
        let now = 1_800_000_000;
        let step = t.step_at(now);
        let ahead = t.hotp(step + 1);
        let m = t.verify_totp(ahead.as_bytes(), now, 1, 0, None).unwrap();
        assert_eq!((m.step, m.drift), (step + 1, 1));
        // The same code again: refused (its step is the last accepted one).
        assert_eq!(
            t.verify_totp(ahead.as_bytes(), now, 1, 0, Some(m.step)),
            None
        );
        // An older step inside the window: refused too.
        let older = t.hotp(step);
        assert_eq!(
            t.verify_totp(older.as_bytes(), now, 1, 0, Some(m.step)),
            None
        );
        // Two steps ahead is outside the default window, inside it with the
        // remembered drift.
        let two = t.hotp(step + 2);
        assert_eq!(t.verify_totp(two.as_bytes(), now, 1, 0, None), None);
        assert_eq!(
            t.verify_totp(two.as_bytes(), now, 1, 1, None)
                .map(|m| m.drift),
            Some(2)
        );
        // Wrong length never matches.
        assert_eq!(t.verify_totp(&ahead.as_bytes()[..5], now, 1, 0, None), None);
    }

    #[test]
    fn hotp_look_ahead_and_resync() {
        let t = token(RFC_SEED, Algorithm::Sha1, 6);
        assert_eq!(
            t.verify_hotp(b"520489", 0, 10),
            Some(10),
            "counter 9 within 10"
        );
        assert_eq!(t.verify_hotp(b"520489", 0, 9), None, "counter 9 beyond 9");
        assert_eq!(t.verify_hotp(b"755224", 1, 10), None, "a used counter");
        let (a, b) = (t.hotp(500), t.hotp(501));
        assert_eq!(t.resync(a.as_bytes(), b.as_bytes(), 0, 1000), Some(501));
        assert_eq!(
            t.resync(b.as_bytes(), a.as_bytes(), 0, 1000),
            None,
            "not consecutive"
        );
    }

    #[test]
    fn base32_as_vendors_write_it() {
        assert_eq!(
            base32_decode("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap(),
            RFC_SEED
        );
        assert_eq!(
            base32_decode("gezd gnbv-gy3t qojq gezd gnbv gy3t qojq").unwrap(),
            RFC_SEED
        );
        assert_eq!(base32_decode("MZXW6===").unwrap(), b"foo");
        assert_eq!(base32_decode("MZXW6").unwrap(), b"foo");
        // Trailing bits that make no whole byte are dropped.
        assert_eq!(base32_decode("MZXW6Y").unwrap(), b"foo");
        for bad in ["MZ1W6", "MZ=XW6", "MZXW6!"] {
            assert!(base32_decode(bad).is_err(), "{bad}");
        }
        assert!(base32_decode(&"A".repeat(1025)).is_err());
    }

    #[test]
    fn an_enrollment_uri_names_everything_an_app_needs() {
        let s = Secret::new(RFC_SEED.to_vec());
        let p = Params {
            algorithm: Algorithm::Sha256,
            digits: 8,
            period: 60,
        };
        let u = otpauth_uri(Kind::Totp, "Acme VPN", "ann@example.com", &s, p, 0);
        assert_eq!(
            u,
            "otpauth://totp/Acme%20VPN:ann%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Acme%20VPN&algorithm=SHA256&digits=8&period=60"
        );
        assert!(otpauth_uri(Kind::Hotp, "A", "b", &s, p, 7).ends_with("&counter=7"));
        assert_eq!(format!("{s:?}"), "Secret(<20 bytes redacted>)");
    }

    #[test]
    fn bad_parameters_are_refused() {
        let s = Secret::new(RFC_SEED.to_vec());
        let p = |digits, period| Params {
            algorithm: Algorithm::Sha1,
            digits,
            period,
        };
        assert_eq!(Token::new(&s, p(7, 30)).unwrap_err(), OathError::Digits(7));
        assert_eq!(Token::new(&s, p(6, 45)).unwrap_err(), OathError::Period(45));
        assert_eq!(
            Token::new(&Secret::new(vec![1; 9]), p(6, 30)).unwrap_err(),
            OathError::SecretLength(9)
        );
        assert_eq!(Algorithm::parse("sha-256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::parse("md5"), None);
    }

    proptest! {
        #[test]
        fn base32_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            prop_assert_eq!(base32_decode(&base32_encode(&bytes)).unwrap(), bytes);
        }

        #[test]
        fn a_code_verifies_once_per_step(step_offset in 0u64..1000, secret in proptest::collection::vec(any::<u8>(), 10..64)) {
            let t = token(&secret, Algorithm::Sha1, 6);
            let now = 1_700_000_000 + step_offset * 30;
            let code = t.totp(now);
            let m = t.verify_totp(code.as_bytes(), now, 1, 0, None).unwrap();
            prop_assert_eq!(t.verify_totp(code.as_bytes(), now, 1, 0, Some(m.step)), None);
        }
    }
}
