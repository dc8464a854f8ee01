//! Checking the signature on an HTTP carrier's callback (delivery receipts
//! and call outcomes): `X-Watchword-Signature: sha256=<hex>` is the
//! HMAC-SHA256, under the carrier's `callback_secret`, of
//! `<X-Watchword-Timestamp>.<raw body>`; the timestamp (Unix seconds) must be
//! within [`MAX_SKEW`] of now, against replays of old callbacks.
//!
//! It must never compare MACs in variable time, never put the secret, the
//! expected MAC or the body in an error, and never accept an unsigned body.

use std::time::Duration;

use ring::hmac;

use super::carrier::ReceiptToken;

/// How far a callback's timestamp may be from now, either way.
pub const MAX_SKEW: Duration = Duration::from_secs(300);
/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-watchword-signature";
/// The header carrying the signed timestamp.
pub const TIMESTAMP_HEADER: &str = "x-watchword-timestamp";

/// Why a callback's signature was refused (no secret, MAC or body in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// A header is missing or not of the form the scheme needs.
    Malformed(&'static str),
    /// The timestamp is more than [`MAX_SKEW`] from now.
    Stale,
    /// The MAC does not match.
    Mismatch,
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(why) => f.write_str(why),
            Self::Stale => f.write_str("the X-Watchword-Timestamp is more than 5 minutes off"),
            Self::Mismatch => f.write_str("the X-Watchword-Signature does not match"),
        }
    }
}

/// The signature header value for `body` sent at `timestamp` (what a carrier
/// computes; used by tests and documentation examples).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Checks a callback: `signature` and `timestamp` are the header values,
/// `now_unix` the current time in Unix seconds. The MAC is compared in
/// constant time (ring's `hmac::verify`).
pub fn verify(
    secret: &[u8],
    signature: Option<&str>,
    timestamp: Option<&str>,
    body: &[u8],
    now_unix: u64,
) -> Result<(), SignatureError> {
    let timestamp = timestamp
        .ok_or(SignatureError::Malformed(
            "X-Watchword-Timestamp is missing",
        ))?
        .trim();
    let ts: u64 = timestamp
        .parse()
        .map_err(|_| SignatureError::Malformed("X-Watchword-Timestamp must be Unix seconds"))?;
    let signature = signature
        .ok_or(SignatureError::Malformed(
            "X-Watchword-Signature is missing",
        ))?
        .trim();
    let hex = signature
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed(
            "X-Watchword-Signature must be sha256=<hex>",
        ))?;
    let mac = decode_hex(hex).ok_or(SignatureError::Malformed(
        "X-Watchword-Signature must be sha256=<64 hex digits>",
    ))?;
    if ts.abs_diff(now_unix) > MAX_SKEW.as_secs() {
        return Err(SignatureError::Stale);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut signed = Vec::with_capacity(timestamp.len() + 1 + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    hmac::verify(&key, &signed, &mac).map_err(|_| SignatureError::Mismatch)
}

/// 32 bytes from 64 hex digits (either case), else `None`.
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some((digit(p[0])? << 4) | digit(p[1])?))
        .collect()
}

/// A receipt token as the HTTP carrier shows it (lowercase hex, 16 digits).
pub fn format_token(token: ReceiptToken) -> String {
    format!("{:016x}", token.0)
}

/// A receipt token read back from a callback (the form [`format_token`]
/// writes), else `None`.
pub fn parse_token(s: &str) -> Option<ReceiptToken> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok().map(ReceiptToken)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-s3cret";
    const NOW: u64 = 1_800_000_000;
    const BODY: &[u8] = br#"{"receipt_token":"000000000000002a","status":"delivered"}"#;

    #[test]
    fn the_right_signature_is_accepted() {
        let sig = sign(SECRET, NOW, BODY);
        assert!(sig.starts_with("sha256=") && sig.len() == 71, "{sig}");
        let ts = NOW.to_string();
        verify(SECRET, Some(&sig), Some(&ts), BODY, NOW).unwrap();
        // Upper-case hex and a timestamp within the skew pass too.
        let upper = format!("sha256={}", sig[7..].to_uppercase());
        verify(SECRET, Some(&upper), Some(&ts), BODY, NOW + 299).unwrap();
        verify(SECRET, Some(&sig), Some(&ts), BODY, NOW - 299).unwrap();
    }

    #[test]
    fn a_wrong_secret_or_a_tampered_body_or_timestamp_is_refused() {
        let ts = NOW.to_string();
        let wrong = sign(b"another-secret-of-16b", NOW, BODY);
        assert_eq!(
            verify(SECRET, Some(&wrong), Some(&ts), BODY, NOW),
            Err(SignatureError::Mismatch)
        );
        let sig = sign(SECRET, NOW, BODY);
        let tampered = br#"{"receipt_token":"000000000000002a","status":"failed"}"#;
        assert_eq!(
            verify(SECRET, Some(&sig), Some(&ts), tampered, NOW),
            Err(SignatureError::Mismatch)
        );
        // The timestamp is inside the MAC: moving it breaks the signature.
        let moved = (NOW + 1).to_string();
        assert_eq!(
            verify(SECRET, Some(&sig), Some(&moved), BODY, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_stale_timestamp_is_refused_even_when_correctly_signed() {
        let old = NOW - 301;
        let sig = sign(SECRET, old, BODY);
        assert_eq!(
            verify(SECRET, Some(&sig), Some(&old.to_string()), BODY, NOW),
            Err(SignatureError::Stale)
        );
        let future = NOW + 301;
        let sig = sign(SECRET, future, BODY);
        assert_eq!(
            verify(SECRET, Some(&sig), Some(&future.to_string()), BODY, NOW),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn malformed_headers_are_refused_without_showing_anything_secret() {
        let ts = NOW.to_string();
        let sig = sign(SECRET, NOW, BODY);
        for (s, t) in [
            (None, Some(ts.as_str())),
            (Some(sig.as_str()), None),
            (Some(sig.as_str()), Some("yesterday")),
            (Some(&sig[7..]), Some(ts.as_str())),
            (Some("sha256=abcd"), Some(ts.as_str())),
            (
                Some(&*format!("sha256={}", "zz".repeat(32))),
                Some(ts.as_str()),
            ),
        ] {
            let e = verify(SECRET, s, t, BODY, NOW).unwrap_err();
            assert!(matches!(e, SignatureError::Malformed(_)), "{e:?}");
            let shown = e.to_string();
            assert!(!shown.contains("s3cret") && !shown.contains(&sig[7..]));
        }
    }

    #[test]
    fn tokens_round_trip_as_hex() {
        let t = ReceiptToken(0x2a);
        assert_eq!(format_token(t), "000000000000002a");
        assert_eq!(parse_token("000000000000002a"), Some(t));
        assert_eq!(parse_token("2A"), Some(t));
        assert_eq!(
            parse_token(&format_token(ReceiptToken(u64::MAX))),
            Some(ReceiptToken(u64::MAX))
        );
        for bad in ["", "-1", "0x2a", "12345678901234567", "g"] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }
}
