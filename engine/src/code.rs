//! One-time codes: drawn from a CSPRNG without modulo bias, compared in
//! constant time.
//!
//! A [`Code`] never prints its digits through `Debug` or `Display`; the only way
//! to the digits is [`Code::digits`], which the router uses to write the message
//! text. This module must never log or format a code anywhere else.

use rand::Rng;
use subtle::ConstantTimeEq;

/// The shortest code length accepted.
pub const MIN_CODE_LEN: u8 = 4;
/// The longest code length accepted.
pub const MAX_CODE_LEN: u8 = 12;

/// A decimal one-time code of 4..=12 digits, held as an integer (leading zeros
/// are significant: the length is stored beside it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Code {
    value: u64,
    len: u8,
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Code(<{} digits redacted>)", self.len)
    }
}

impl Code {
    /// Draws a fresh code of `len` digits (4..=12) from the thread's CSPRNG
    /// (ChaCha12, seeded and periodically reseeded from the OS).
    ///
    /// `random_range` uses rejection sampling, so every code in
    /// `0..10^len` is equally likely: no modulo bias.
    ///
    /// # Panics
    /// Never for lengths the table accepts; a length outside 4..=12 is clamped.
    pub fn generate(len: u8) -> Self {
        Self::generate_with(len, &mut rand::rng())
    }

    /// [`Code::generate`] with a CSPRNG handle the caller already holds. The
    /// generator must be cryptographically secure (`rand::rngs::ThreadRng`).
    pub(crate) fn generate_with(len: u8, rng: &mut rand::rngs::ThreadRng) -> Self {
        let len = len.clamp(MIN_CODE_LEN, MAX_CODE_LEN);
        let bound = 10u64.pow(u32::from(len));
        let value = rng.random_range(0..bound);
        Self { value, len }
    }

    /// Builds a code from its numeric value and length (tests and tools only).
    pub fn from_parts(value: u64, len: u8) -> Option<Self> {
        (MIN_CODE_LEN..=MAX_CODE_LEN)
            .contains(&len)
            .then_some(())
            .filter(|_| value < 10u64.pow(u32::from(len)))
            .map(|_| Self { value, len })
    }

    /// The stored form: the numeric value and the number of digits.
    pub(crate) fn raw(&self) -> (u64, u8) {
        (self.value, self.len)
    }

    /// Rebuilds a code from its stored form (see [`Code::raw`]).
    pub(crate) fn from_raw(value: u64, len: u8) -> Self {
        Self { value, len }
    }

    /// The number of digits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Always false: a code has at least four digits.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The digits as ASCII, most significant first, in a fixed buffer; only the
    /// first [`Code::len`] bytes are meaningful. For message text only.
    pub fn digits(&self) -> ([u8; MAX_CODE_LEN as usize], usize) {
        let mut out = [b'0'; MAX_CODE_LEN as usize];
        let n = usize::from(self.len);
        let mut v = self.value;
        for slot in out[..n].iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        (out, n)
    }

    /// Whether `typed` is this code, in time that depends only on the lengths.
    ///
    /// A typed code of another length, or with a non-digit, never matches (the
    /// caller counts it as a wrong attempt).
    pub fn matches(&self, typed: &[u8]) -> bool {
        if typed.len() != usize::from(self.len) {
            return false;
        }
        let mut value: u64 = 0;
        let mut all_digits: u8 = 1;
        for &b in typed {
            let d = b.wrapping_sub(b'0');
            // 1 when d <= 9, computed without a data-dependent branch.
            let is_digit = ((u16::from(d) + 0xF6) >> 8) as u8 ^ 1;
            all_digits &= is_digit;
            value = value.wrapping_mul(10).wrapping_add(u64::from(d & 0x0F));
        }
        let equal = value.ct_eq(&self.value) & all_digits.ct_eq(&1);
        equal.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_have_the_requested_length_and_verify() {
        for len in MIN_CODE_LEN..=MAX_CODE_LEN {
            for _ in 0..200 {
                let c = Code::generate(len);
                let (d, n) = c.digits();
                assert_eq!(n, usize::from(len));
                assert!(d[..n].iter().all(u8::is_ascii_digit));
                assert!(c.matches(&d[..n]));
            }
        }
    }

    #[test]
    fn leading_zeros_are_significant() {
        let c = Code::from_parts(42, 6).unwrap();
        assert!(c.matches(b"000042"));
        assert!(!c.matches(b"42"));
        assert!(!c.matches(b"0000042"));
    }

    #[test]
    fn non_digits_never_match() {
        let c = Code::from_parts(123456, 6).unwrap();
        assert!(c.matches(b"123456"));
        // ':' is '9'+1 and '/' is '0'-1: digit arithmetic must not alias them.
        assert!(!c.matches(b"12345:"));
        assert!(!c.matches(b"12345/"));
        assert!(!c.matches(b"12345F"));
        assert!(!c.matches(b"123457"));
        // A byte whose low nibble equals the digit must still be refused.
        assert!(!c.matches(b"12345\x16"));
    }

    #[test]
    fn debug_never_shows_digits() {
        let c = Code::from_parts(987654, 6).unwrap();
        assert!(!format!("{c:?}").contains("987654"));
    }

    #[test]
    fn digits_are_uniform_enough() {
        // Chi-square over the first digit of 4-digit codes: 10 buckets, 20k draws.
        let mut counts = [0u32; 10];
        for _ in 0..20_000 {
            let (d, _) = Code::generate(4).digits();
            counts[usize::from(d[0] - b'0')] += 1;
        }
        let expected = 2000.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        // 9 degrees of freedom: p = 0.0001 at 33.7. A biased generator fails.
        assert!(chi2 < 33.7, "chi2 {chi2} counts {counts:?}");
    }
}
