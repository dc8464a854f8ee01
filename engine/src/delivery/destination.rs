//! Destinations: phone numbers normalised to E.164 (with their extension and how
//! a voice call must reach it) and validated e-mail addresses.
//!
//! Error messages say precisely what is wrong and must never echo the number
//! or address back (they end up in responses and logs).

use std::fmt;
use std::str::FromStr;

use phonenumber::country;

use super::config::TenantDelivery;
use crate::types::Channel;

/// The longest raw destination accepted, in bytes.
pub const MAX_RAW_LEN: usize = 320;
/// The longest extension accepted, in digits.
pub const MAX_EXTENSION_DIGITS: usize = 10;

/// How a voice call reaches an extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExtensionKind {
    /// `x5678`: dialled as tones after the call connects (unless the tenant
    /// uses operator assistance).
    Tones,
    /// `x@5678`: the operator who answers is asked to transfer the call.
    Operator,
}

/// A normalised destination.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The stored form: `+14255551234`, `+14255551234x5678`, `+14255551234x@5678`
    /// or `jane@example.com`.
    text: String,
    /// Length of the E.164 part (the whole text for e-mail); 32 bits keep a
    /// destination at 32 bytes (every message in flight carries one).
    main_len: u32,
    /// The extension's kind, if any.
    ext: Option<ExtensionKind>,
    /// The number's region, if a phone number.
    region: Option<country::Id>,
    /// Whether this is an e-mail address.
    email: bool,
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Destination({})",
            crate::mask::mask_destination(&self.text)
        )
    }
}

impl Destination {
    /// The normalised form stored in the table.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The ISO 3166 alpha-2 country of a phone number; `None` for e-mail.
    pub fn country(&self) -> Option<&str> {
        self.region.as_ref().map(|r| r.as_ref())
    }

    /// The E.164 number without extension, or the e-mail address.
    pub fn address(&self) -> &str {
        &self.text[..self.main_len as usize]
    }

    /// The extension digits and how to reach them, if any.
    pub fn extension(&self) -> Option<(&str, ExtensionKind)> {
        let kind = self.ext?;
        let skip = match kind {
            ExtensionKind::Tones => 1,
            ExtensionKind::Operator => 2,
        };
        Some((&self.text[self.main_len as usize + skip..], kind))
    }

    /// Whether this is an e-mail address.
    pub fn is_email(&self) -> bool {
        self.email
    }
}

/// Why a destination was refused. `Display` is a precise reason fit for an
/// INVALID_ARGUMENT message; it never contains the destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDestination {
    /// Nothing was given.
    #[error("is empty")]
    Empty,
    /// Longer than any destination could be.
    #[error("is longer than {MAX_RAW_LEN} bytes")]
    TooLong,
    /// Characters that belong in no phone number.
    #[error("contains characters that are not part of a phone number")]
    BadCharacters,
    /// Too few digits.
    #[error("has too few digits to be a phone number")]
    TooShort,
    /// Too many digits.
    #[error("has too many digits to be a phone number")]
    TooManyDigits,
    /// The country calling code does not exist.
    #[error("starts with an unknown country calling code")]
    UnknownCountryCode,
    /// A national number, and the tenant's default country is not usable.
    #[error("is in national format but the tenant's default country {0:?} is not a known country")]
    BadDefaultCountry(String),
    /// Parses, but is not a valid number for its country.
    #[error("is not a valid phone number for country {0}")]
    NotValidForCountry(String),
    /// The extension is malformed.
    #[error("has an extension that is not 1 to {MAX_EXTENSION_DIGITS} digits")]
    BadExtension,
    /// The e-mail address has no `@`.
    #[error("is not an e-mail address (no '@')")]
    EmailNoAt,
    /// The e-mail address is malformed.
    #[error("is not a valid e-mail address ({0})")]
    EmailInvalid(&'static str),
}

/// Normalises `raw` for `channel`: E.164 for SMS and voice (national formats in
/// the tenant's default country), a checked address for e-mail. Accepts its own
/// output, so a stored destination normalises to itself.
pub fn normalize(
    channel: Channel,
    raw: &str,
    tenant: &TenantDelivery,
) -> Result<Destination, InvalidDestination> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(InvalidDestination::Empty);
    }
    if raw.len() > MAX_RAW_LEN {
        return Err(InvalidDestination::TooLong);
    }
    match channel {
        Channel::Email => normalize_email(raw),
        Channel::Sms | Channel::Voice => normalize_phone(raw, &tenant.default_country),
    }
}

fn normalize_email(raw: &str) -> Result<Destination, InvalidDestination> {
    let Some(at) = raw.rfind('@') else {
        return Err(InvalidDestination::EmailNoAt);
    };
    if at == 0 {
        return Err(InvalidDestination::EmailInvalid("empty local part"));
    }
    if at + 1 == raw.len() {
        return Err(InvalidDestination::EmailInvalid("empty domain"));
    }
    if raw.len() > 254 {
        return Err(InvalidDestination::EmailInvalid("longer than 254 bytes"));
    }
    if raw.contains(['<', '>', ' ', '\t', ',', ';']) {
        return Err(InvalidDestination::EmailInvalid("not a bare address"));
    }
    let parsed = email_address::EmailAddress::from_str(raw).map_err(|e| {
        use email_address::Error as E;
        InvalidDestination::EmailInvalid(match e {
            E::LocalPartEmpty => "empty local part",
            E::LocalPartTooLong => "local part longer than 64 bytes",
            E::DomainEmpty => "empty domain",
            E::DomainTooLong => "domain too long",
            E::SubDomainEmpty => "empty label in domain",
            E::SubDomainTooLong => "domain label longer than 63 bytes",
            E::DomainInvalidSeparator => "misplaced dot or hyphen in domain",
            E::InvalidCharacter => "invalid character",
            E::UnbalancedQuotes => "unbalanced quotes",
            E::InvalidComment => "invalid comment",
            E::InvalidIPAddress => "invalid IP address literal",
            E::UnsupportedDomainLiteral => "domain literals are not supported",
            _ => "malformed",
        })
    })?;
    // No display names, no domain literals: only a bare address.
    if parsed.as_str() != raw || parsed.domain().starts_with('[') {
        return Err(InvalidDestination::EmailInvalid("not a bare address"));
    }
    if !parsed.domain().contains('.') {
        return Err(InvalidDestination::EmailInvalid("domain has no dot"));
    }
    // Built in place, in one allocation (`format!` grew it twice).
    let mut text = String::with_capacity(raw.len());
    text.push_str(parsed.local_part());
    text.push('@');
    let domain_at = text.len();
    text.push_str(parsed.domain());
    text[domain_at..].make_ascii_lowercase();
    Ok(Destination {
        main_len: u32::try_from(text.len()).map_err(|_| InvalidDestination::TooLong)?,
        text,
        ext: None,
        region: None,
        email: true,
    })
}

/// A number split from its extension digits.
type Split<'a> = (&'a str, Option<(&'a str, ExtensionKind)>);

/// Splits `raw` into the main number and an optional extension.
fn split_extension(raw: &str) -> Result<Split<'_>, InvalidDestination> {
    let lower_find = |needle: &str| {
        raw.as_bytes()
            .windows(needle.len())
            .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
    };
    // Longest markers first: "extension", "ext.", "ext", "x@", "x", "#".
    let markers: [(&str, Option<ExtensionKind>); 6] = [
        ("extension", None),
        ("ext.", None),
        ("ext", None),
        ("x@", Some(ExtensionKind::Operator)),
        ("x", None),
        ("#", None),
    ];
    for (m, kind) in markers {
        if let Some(pos) = lower_find(m) {
            let mut rest = raw[pos + m.len()..].trim_start_matches([' ', '.', ':']);
            let mut kind = kind.unwrap_or(ExtensionKind::Tones);
            if let Some(r) = rest.strip_prefix('@') {
                kind = ExtensionKind::Operator;
                rest = r.trim_start();
            }
            let rest = rest.trim_end();
            if rest.is_empty()
                || rest.len() > MAX_EXTENSION_DIGITS
                || !rest.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(InvalidDestination::BadExtension);
            }
            return Ok((raw[..pos].trim_end(), Some((rest, kind))));
        }
    }
    Ok((raw, None))
}

fn normalize_phone(raw: &str, default_country: &str) -> Result<Destination, InvalidDestination> {
    let (main, ext) = split_extension(raw)?;
    // Only what phone numbers are written with.
    if !main
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b' ' | b'-' | b'.' | b'(' | b')' | b'/'))
    {
        return Err(InvalidDestination::BadCharacters);
    }
    let plus = main.bytes().filter(|&b| b == b'+').count();
    if plus > 1 || (plus == 1 && !main.starts_with('+')) {
        return Err(InvalidDestination::BadCharacters);
    }
    let digits = main.bytes().filter(u8::is_ascii_digit).count();
    if digits < 4 {
        return Err(InvalidDestination::TooShort);
    }
    if digits > 17 {
        return Err(InvalidDestination::TooManyDigits);
    }
    let (e164, region) = cached_parse(main, default_country)?;
    let mut text = String::with_capacity(e164.len() + ext.map_or(0, |(d, _)| d.len() + 2));
    text.push_str(&e164);
    let main_len = text.len() as u32;
    let ext_kind = ext.map(|(digits, kind)| {
        text.push('x');
        if kind == ExtensionKind::Operator {
            text.push('@');
        }
        text.push_str(digits);
        kind
    });
    Ok(Destination {
        text,
        main_len,
        ext: ext_kind,
        region,
        email: false,
    })
}

/// A parse result: the E.164 number and its region, or why it is invalid.
type Parsed = Result<(Box<str>, Option<country::Id>), InvalidDestination>;

const CACHE_SHARDS: usize = 16;
/// Entries per shard; a full shard is cleared (65 536 entries at most in all).
const CACHE_SHARD_CAP: usize = 4_096;

/// Recent parses, keyed by (default country, number as written). The phone
/// metadata library costs tens of microseconds per parse; a resend, a retry
/// or a returning user hits this instead. Bounded; a lock is held for one map
/// operation only.
struct ParseCache {
    hash: ahash::RandomState,
    #[allow(clippy::type_complexity)]
    shards: Vec<
        parking_lot::Mutex<
            std::collections::HashMap<
                u64,
                (Box<str>, Box<str>, Parsed),
                std::hash::BuildHasherDefault<super::limits::IdentityHasher>,
            >,
        >,
    >,
}

static CACHE: std::sync::OnceLock<ParseCache> = std::sync::OnceLock::new();

/// Compiled patterns the phone metadata library may keep. Its default (100)
/// is smaller than the patterns of the North American numbering plan alone
/// (about 25 regions share +1), so it recompiled regexes on nearly every
/// first-seen number (~70 us a parse); the whole metadata set fits in this.
const PATTERN_CACHE: usize = 8192;

/// Lets the library keep every compiled pattern instead of recompiling.
fn enlarge_pattern_cache() {
    let cache = phonenumber::metadata::DATABASE.cache();
    let mut guard = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if guard.capacity() < PATTERN_CACHE {
        guard.set_capacity(PATTERN_CACHE);
    }
}

fn cached_parse(main: &str, default_country: &str) -> Parsed {
    let cache = CACHE.get_or_init(|| {
        enlarge_pattern_cache();
        ParseCache {
            hash: ahash::RandomState::new(),
            shards: (0..CACHE_SHARDS).map(|_| Default::default()).collect(),
        }
    });
    let h = cache.hash.hash_one((default_country, main));
    let shard = &cache.shards[(h >> 60) as usize % CACHE_SHARDS];
    if let Some((cc, m, parsed)) = shard.lock().get(&h) {
        if **cc == *default_country && **m == *main {
            return parsed.clone();
        }
    }
    let parsed = parse_uncached(main, default_country);
    let mut map = shard.lock();
    if map.len() >= CACHE_SHARD_CAP {
        map.clear();
    }
    map.insert(h, (default_country.into(), main.into(), parsed.clone()));
    parsed
}

/// Whether `national` is a number of some type in `meta` (the library's
/// `number_type(..) != Unknown`).
fn is_valid_type(meta: &phonenumber::Metadata, national: &str) -> bool {
    let d = meta.descriptors();
    d.general().is_match(national)
        && [
            d.premium_rate(),
            d.toll_free(),
            d.shared_cost(),
            d.voip(),
            d.personal_number(),
            d.pager(),
            d.uan(),
            d.voicemail(),
            d.fixed_line(),
            d.mobile(),
        ]
        .into_iter()
        .flatten()
        .any(|t| t.is_match(national))
}

/// The metadata that applies to a number (the library's `source_for`, once,
/// with the national number's leading zeros kept).
fn metadata_for(cc: u16, national: &str) -> Option<&'static phonenumber::Metadata> {
    let db: &'static phonenumber::metadata::Database = &phonenumber::metadata::DATABASE;
    let regions = db.region(&cc)?;
    if let [only] = regions.as_slice() {
        return if *only == "001" {
            db.by_code(&cc).and_then(|m| m.into_iter().next())
        } else {
            db.by_id(*only)
        };
    }
    regions.into_iter().find_map(|r| {
        let meta = db.by_id(r)?;
        let hit = match meta.leading_digits() {
            Some(p) => p.find(national).is_some_and(|m| m.start() == 0),
            None => is_valid_type(meta, national),
        };
        hit.then_some(meta)
    })
}

/// The phone metadata library's parse and validity check (the slow part).
fn parse_uncached(main: &str, default_country: &str) -> Parsed {
    // "00" is the international prefix in most of the world; accept it whatever
    // the tenant's country (the library only knows the default country's own).
    let mut buf = String::with_capacity(main.len() + 1);
    let main = if let Some(rest) = main.strip_prefix("00") {
        buf.push('+');
        buf.push_str(rest);
        buf.as_str()
    } else {
        main
    };
    let region = if main.starts_with('+') {
        None
    } else {
        let id = country::Id::from_str(&default_country.to_ascii_uppercase())
            .map_err(|_| InvalidDestination::BadDefaultCountry(default_country.to_owned()))?;
        Some(id)
    };
    let number = phonenumber::parse(region, main).map_err(|e| {
        use phonenumber::ParseError as P;
        match e {
            P::InvalidCountryCode => InvalidDestination::UnknownCountryCode,
            P::TooShortAfterIdd | P::TooShortNsn => InvalidDestination::TooShort,
            P::TooLong => InvalidDestination::TooManyDigits,
            _ => InvalidDestination::BadCharacters,
        }
    })?;
    let cc = number.code().value();
    // One region lookup serves both the region and the validity check (the
    // library's `is_valid` and `country().id()` would each redo it).
    let national = number.national().to_string();
    let meta = metadata_for(cc, &national);
    let region = meta.and_then(|m| country::Id::from_str(m.id()).ok());
    let valid = meta.is_some_and(|m| is_valid_type(m, &national));
    if !valid {
        let name = region.map_or_else(|| format!("+{cc}"), |r| r.as_ref().to_owned());
        return Err(InvalidDestination::NotValidForCountry(name));
    }
    let mut text = String::with_capacity(20);
    use std::fmt::Write as _;
    let _ = write!(text, "+{cc}{national}");
    Ok((text.into_boxed_str(), region))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(cc: &str) -> TenantDelivery {
        TenantDelivery {
            default_country: cc.into(),
            ..TenantDelivery::default()
        }
    }

    fn ok(ch: Channel, raw: &str, cc: &str) -> String {
        normalize(ch, raw, &t(cc)).unwrap().as_str().to_owned()
    }

    #[test]
    fn common_notations_become_e164() {
        assert_eq!(ok(Channel::Sms, "+1 425-555-1234", "US"), "+14255551234");
        assert_eq!(ok(Channel::Sms, "(425) 555 1234", "US"), "+14255551234");
        assert_eq!(ok(Channel::Sms, "0033 4 25 55 51 23", "US"), "+33425555123");
        assert_eq!(ok(Channel::Sms, "04 25 55 51 23", "FR"), "+33425555123");
        assert_eq!(
            ok(Channel::Voice, "+39 06 1234 5678", "US"),
            "+390612345678"
        );
        let d = normalize(Channel::Sms, "+1 425-555-1234", &t("FR")).unwrap();
        assert_eq!(d.country(), Some("US"));
    }

    #[test]
    fn extensions_keep_their_kind_and_normalise_to_themselves() {
        for (raw, want) in [
            ("425-555-1234x5678", "+14255551234x5678"),
            ("425-555-1234 ext. 5678", "+14255551234x5678"),
            ("425-555-1234 x@5678", "+14255551234x@5678"),
            ("+14255551234x@5678", "+14255551234x@5678"),
        ] {
            let d = normalize(Channel::Voice, raw, &t("US")).unwrap();
            assert_eq!(d.as_str(), want);
            assert_eq!(d.address(), "+14255551234");
            let again = normalize(Channel::Voice, d.as_str(), &t("FR")).unwrap();
            assert_eq!(again, d);
        }
        let d = normalize(Channel::Voice, "+14255551234x@5678", &t("US")).unwrap();
        assert_eq!(d.extension(), Some(("5678", ExtensionKind::Operator)));
    }

    #[test]
    fn invalid_numbers_get_a_reason_without_the_number() {
        for raw in [
            "",
            "hello",
            "12",
            "+999 1234 5678",
            "425-555-1234x",
            "+1 425 555 12345678901",
        ] {
            let e = normalize(Channel::Sms, raw, &t("US")).unwrap_err();
            let msg = e.to_string();
            assert!(!msg.is_empty());
            assert!(!msg.contains("5551234"), "{msg}");
        }
        assert_eq!(
            normalize(Channel::Sms, "+1 123 456 7890", &t("US")).unwrap_err(),
            InvalidDestination::NotValidForCountry("+1".into())
        );
    }

    #[test]
    fn validity_agrees_with_the_library() {
        let t = t("US");
        for raw in [
            "+14255551234",
            "+1 123 456 7890",
            "+1 800 555 0199",
            "+1 268 464 1234",
            "+39 06 1234 5678",
            "+33 6 12 34 56 78",
            "+33 1 23",
            "+44 7911 123456",
            "+44 7700 900123",
            "+49 30 123456",
            "+81 3 1234 5678",
            "+7 495 123 45 67",
            "+86 10 1234 5678",
            "+61 2 1234 5678",
            "+882 1234 5678",
        ] {
            let lib = phonenumber::parse(None, raw).map(|n| phonenumber::is_valid(&n));
            let ours = normalize(Channel::Sms, raw, &t);
            if let Ok(lib) = lib {
                assert_eq!(ours.is_ok(), lib, "{raw}: {ours:?}");
            }
            if let (Ok(d), Ok(n)) = (&ours, phonenumber::parse(None, raw)) {
                // The library loses the region of numbers with a leading zero
                // (Italy); where it knows it, we agree.
                if let Some(want) = n.country().id() {
                    assert_eq!(d.country(), Some(want.as_ref()), "{raw}");
                }
            }
        }
    }

    #[test]
    fn italian_numbers_keep_their_leading_zero_and_region() {
        let d = normalize(Channel::Voice, "+39 06 1234 5678", &t("US")).unwrap();
        assert_eq!(d.as_str(), "+390612345678");
        assert_eq!(d.country(), Some("IT"));
    }

    #[test]
    fn emails_are_checked_and_domain_lowercased() {
        assert_eq!(
            ok(Channel::Email, "Jane@Example.COM", "US"),
            "Jane@example.com"
        );
        for raw in [
            "jane",
            "@example.com",
            "jane@",
            "jane@@x.com",
            "Jane <jane@x.com>",
            "jane@localhost",
        ] {
            assert!(normalize(Channel::Email, raw, &t("US")).is_err(), "{raw}");
        }
    }
}
