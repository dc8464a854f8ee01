//! Masking of destinations for responses, logs, metrics and the audit trail.
//!
//! A full phone number or e-mail address must never leave the engine except
//! towards a carrier. This module produces the only form that may.

use std::fmt;

const MASK_CAP: usize = 64;

/// A masked destination held inline (no allocation): `+14*******34` for a
/// phone number, `j***@example.com` for an e-mail address.
#[derive(Clone, Copy)]
pub struct MaskedDestination {
    buf: [u8; MASK_CAP],
    len: u8,
}

impl MaskedDestination {
    /// The masked text.
    pub fn as_str(&self) -> &str {
        // Built only from ASCII and whole UTF-8 sequences below.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("***")
    }

    fn push(&mut self, s: &[u8]) {
        let room = MASK_CAP - usize::from(self.len);
        let n = s.len().min(room);
        let start = usize::from(self.len);
        self.buf[start..start + n].copy_from_slice(&s[..n]);
        self.len += n as u8;
    }
}

impl fmt::Display for MaskedDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MaskedDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// Masks a normalised destination: for a phone number (E.164, possibly with an
/// extension) the `+`, the first two digits and the last two digits stay and the
/// extension is dropped; for an e-mail address the first character of the local
/// part and the domain stay (a long domain is cut at a character boundary).
pub fn mask_destination(dest: &str) -> MaskedDestination {
    let mut m = MaskedDestination {
        buf: [0; MASK_CAP],
        len: 0,
    };
    if let Some(at) = dest.rfind('@').filter(|_| !dest.starts_with('+')) {
        let first = dest.chars().next().filter(|_| at > 0);
        if let Some(c) = first {
            let mut tmp = [0u8; 4];
            m.push(c.encode_utf8(&mut tmp).as_bytes());
        }
        m.push(b"***@");
        let domain = &dest[at + 1..];
        let mut cut = domain.len().min(MASK_CAP - usize::from(m.len));
        while !domain.is_char_boundary(cut) {
            cut -= 1;
        }
        m.push(&domain.as_bytes()[..cut]);
        return m;
    }
    let main = dest.split(['x', ',', ';']).next().unwrap_or("");
    let bytes = main.as_bytes();
    let digit_count = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    m.push(b"+");
    for (seen, &b) in bytes.iter().filter(|b| b.is_ascii_digit()).enumerate() {
        let keep = seen < 2 || seen + 2 >= digit_count;
        m.push(if keep && digit_count > 4 {
            std::slice::from_ref(&b)
        } else {
            b"*"
        });
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_keep_only_edges() {
        assert_eq!(mask_destination("+14255551234").as_str(), "+14*******34");
        assert_eq!(
            mask_destination("+14255551234x5678").as_str(),
            "+14*******34"
        );
        assert_eq!(mask_destination("+331").as_str(), "+***");
    }

    #[test]
    fn emails_keep_first_letter_and_domain() {
        assert_eq!(
            mask_destination("jane@example.com").as_str(),
            "j***@example.com"
        );
        assert_eq!(
            mask_destination("émile@exemple.fr").as_str(),
            "é***@exemple.fr"
        );
    }

    #[test]
    fn never_contains_the_middle_digits() {
        let m = mask_destination("+4915123456789");
        assert!(!m.as_str().contains("51234567"));
    }
}
