//! The SMPP carrier's pure pieces, apart from any socket: the text's encoding
//! (GSM 03.38 7-bit, unpacked, or UCS2) within one segment, the source and
//! destination addresses, what a `submit_sm_resp` status means for the
//! router, the delivery receipt (TLVs, or the `id:... stat:...` text), and
//! how message ids are matched.
//!
//! Nothing here logs; an error or reason built here never holds the text,
//! the destination or a credential.

use std::time::Duration;

use super::config::SmppConfig;

/// `data_coding` of the SMSC's default alphabet (GSM 03.38, one septet per
/// octet, as SMSCs expect over SMPP).
pub(crate) const DC_DEFAULT: u8 = 0x00;
/// `data_coding` of UCS2 (UTF-16 big-endian).
pub(crate) const DC_UCS2: u8 = 0x08;
/// Septets in one GSM 7-bit segment.
pub(crate) const GSM7_SEGMENT: usize = 160;
/// UTF-16 units in one UCS2 segment.
pub(crate) const UCS2_SEGMENT: usize = 70;

/// The GSM 03.38 default alphabet by code point (0x1B, the escape to the
/// extension table, is never produced from text).
const GSM7_BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1b}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The GSM 03.38 extension table: each character goes as 0x1B then this code.
const GSM7_EXT: [(char, u8); 10] = [
    ('\u{c}', 0x0A),
    ('^', 0x14),
    ('{', 0x28),
    ('}', 0x29),
    ('\\', 0x2F),
    ('[', 0x3C),
    ('~', 0x3D),
    (']', 0x3E),
    ('|', 0x40),
    ('€', 0x65),
];

/// The septets of `c` in GSM 03.38: one code, or the escape and a code.
fn gsm7(c: char) -> Option<(u8, Option<u8>)> {
    if c != '\u{1b}'
        && let Some(i) = GSM7_BASIC.iter().position(|&b| b == c)
    {
        return Some((i as u8, None));
    }
    GSM7_EXT
        .iter()
        .find(|(e, _)| *e == c)
        .map(|&(_, code)| (0x1B, Some(code)))
}

/// A text ready for `short_message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Encoded {
    /// `DC_DEFAULT` or `DC_UCS2`.
    pub(crate) data_coding: u8,
    /// The octets.
    pub(crate) bytes: Vec<u8>,
}

/// Why a text cannot go as one `submit_sm`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TooLong {
    /// "GSM 7-bit" or "UCS2".
    pub(crate) coding: &'static str,
    /// Septets or UTF-16 units the text needs.
    pub(crate) units: usize,
    /// What one segment holds.
    pub(crate) max: usize,
}

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the text needs {} {} units, more than one SMS segment ({}); \
             the SMPP carrier sends no concatenated messages",
            self.units, self.coding, self.max
        )
    }
}

/// Encodes `text` in GSM 03.38 7-bit (unpacked, `data_coding` 0) when every
/// character is in the default alphabet or its extension, else in UCS2
/// (`data_coding` 8); either must fit one segment (160 septets, 70 UTF-16
/// units). Router texts always fit; a longer one is refused, not split.
pub(crate) fn encode_text(text: &str) -> Result<Encoded, TooLong> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut gsm = true;
    for c in text.chars() {
        match gsm7(c) {
            Some((a, b)) => {
                bytes.push(a);
                bytes.extend(b);
            }
            None => {
                gsm = false;
                break;
            }
        }
    }
    if gsm {
        if bytes.len() > GSM7_SEGMENT {
            return Err(TooLong {
                coding: "GSM 7-bit",
                units: bytes.len(),
                max: GSM7_SEGMENT,
            });
        }
        return Ok(Encoded {
            data_coding: DC_DEFAULT,
            bytes,
        });
    }
    let units: Vec<u16> = text.encode_utf16().collect();
    if units.len() > UCS2_SEGMENT {
        return Err(TooLong {
            coding: "UCS2",
            units: units.len(),
            max: UCS2_SEGMENT,
        });
    }
    Ok(Encoded {
        data_coding: DC_UCS2,
        bytes: units.iter().flat_map(|u| u.to_be_bytes()).collect(),
    })
}

/// Decodes unpacked GSM 03.38 septets (the tests' round trip).
#[cfg(test)]
pub(crate) fn decode_gsm7(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut escaped = false;
    for &b in bytes {
        if escaped {
            escaped = false;
            match GSM7_EXT.iter().find(|(_, code)| *code == b) {
                Some(&(c, _)) => out.push(c),
                None => out.push(' '),
            }
        } else if b == 0x1B {
            escaped = true;
        } else {
            out.push(GSM7_BASIC.get(usize::from(b)).copied().unwrap_or(' '));
        }
    }
    out
}

/// A `submit_sm` address: TON, NPI and the digits or name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Address {
    pub(crate) ton: u8,
    pub(crate) npi: u8,
    pub(crate) addr: String,
}

/// The source address for a sender: `+digits` international (TON 1, NPI 1),
/// digits (a short code) with the configured TON/NPI, and anything else
/// alphanumeric (TON 5, NPI 0, at most 11 characters). The error says what
/// is wrong without the sender.
pub(crate) fn source_address(sender: &str, cfg: &SmppConfig) -> Result<Address, &'static str> {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(d) = sender.strip_prefix('+') {
        if digits(d) {
            return Ok(Address {
                ton: 1,
                npi: 1,
                addr: d.to_owned(),
            });
        }
        return Err("a sender starting with + must be followed by 1 to 20 digits");
    }
    if digits(sender) {
        return Ok(Address {
            ton: cfg.source_ton,
            npi: cfg.source_npi,
            addr: sender.to_owned(),
        });
    }
    if sender.is_empty()
        || sender.len() > 11
        || !sender.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err("an alphanumeric sender id must be 1 to 11 printable ASCII characters");
    }
    Ok(Address {
        ton: 5,
        npi: 0,
        addr: sender.to_owned(),
    })
}

/// The destination address of an E.164 number (`+` dropped).
pub(crate) fn dest_address(to: &str, cfg: &SmppConfig) -> Result<Address, &'static str> {
    let d = to.strip_prefix('+').unwrap_or(to);
    if d.is_empty() || d.len() > 20 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the destination is not an E.164 number");
    }
    Ok(Address {
        ton: cfg.dest_ton,
        npi: cfg.dest_npi,
        addr: d.to_owned(),
    })
}

/// What a `submit_sm_resp` error status means for the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusClass {
    /// Too fast or queue full: back off, never a breaker failure.
    Throttle,
    /// This message can never go (bad destination, bad length).
    Reject,
    /// Anything else: a transient failure (another try, another carrier).
    Fail,
}

/// ESME_RTHROTTLED.
pub(crate) const ESME_RTHROTTLED: u32 = 0x58;
/// ESME_RMSGQFUL.
pub(crate) const ESME_RMSGQFUL: u32 = 0x14;

/// Classifies a non-zero `command_status` of a `submit_sm_resp`.
pub(crate) fn classify_status(status: u32) -> StatusClass {
    match status {
        ESME_RTHROTTLED | ESME_RMSGQFUL => StatusClass::Throttle,
        // ESME_RINVMSGLEN, ESME_RINVDSTADR, ESME_RINVDSTTON, ESME_RINVDSTNPI,
        // ESME_RX_R_APPN (the receiver refused it for good).
        0x01 | 0x0B | 0x50 | 0x51 | 0x66 => StatusClass::Reject,
        _ => StatusClass::Fail,
    }
}

/// The SMPP name of a status with its code, e.g. `ESME_RTHROTTLED (0x58)`.
pub(crate) fn status_name(status: u32) -> String {
    let named = format!("{:?}", rusmpp::CommandStatus::from(status));
    match named.strip_prefix("Esme") {
        Some(rest) if !rest.contains('(') => {
            format!("ESME_{} (0x{status:02X})", rest.to_ascii_uppercase())
        }
        _ => format!("status 0x{status:08X}"),
    }
}

/// How long a throttled carrier waits after `streak` throttles in a row
/// (0 for the first): 500 ms doubling, at most 30 s.
pub(crate) fn throttle_backoff(streak: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << streak.min(6))).min(Duration::from_secs(30))
}

/// What a delivery receipt says about its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReceiptState {
    /// Reached the handset.
    Delivered,
    /// Will never reach it: the state's name (`UNDELIVERABLE`, `EXPIRED`...).
    Undelivered(&'static str),
    /// Not final (ENROUTE, ACCEPTED, UNKNOWN...): keep waiting.
    Pending,
}

/// The `message_state` TLV's meaning.
pub(crate) fn state_of_tlv(state: u8) -> ReceiptState {
    match state {
        2 => ReceiptState::Delivered,
        3 => ReceiptState::Undelivered("EXPIRED"),
        4 => ReceiptState::Undelivered("DELETED"),
        5 => ReceiptState::Undelivered("UNDELIVERABLE"),
        8 => ReceiptState::Undelivered("REJECTED"),
        _ => ReceiptState::Pending,
    }
}

/// The meaning of a receipt text's `stat:` (SMPP 3.4 appendix B).
pub(crate) fn state_of_stat(stat: &str) -> ReceiptState {
    let s = stat.to_ascii_uppercase();
    match s.as_str() {
        "DELIVRD" | "DELIVERED" => ReceiptState::Delivered,
        "UNDELIV" | "UNDELIVERABLE" => ReceiptState::Undelivered("UNDELIVERABLE"),
        "EXPIRED" => ReceiptState::Undelivered("EXPIRED"),
        "DELETED" => ReceiptState::Undelivered("DELETED"),
        "REJECTD" | "REJECTED" => ReceiptState::Undelivered("REJECTED"),
        _ => ReceiptState::Pending,
    }
}

/// What a receipt's text says: `id:`, `stat:` and `err:` (when present).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReceiptText {
    /// The message id, as the SMSC wrote it.
    pub(crate) id: Option<String>,
    /// The final state's short name, e.g. `DELIVRD`.
    pub(crate) stat: Option<String>,
    /// The error code, e.g. `000` (only letters and digits, at most 10).
    pub(crate) err: Option<String>,
}

/// Parses `id:IIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done
/// date:YYMMDDhhmm stat:DDDDDDD err:E text:...`, keys in any case and order;
/// whatever follows `text:` is the message's start and is never read.
pub(crate) fn parse_receipt_text(text: &str) -> ReceiptText {
    let lower = text.to_ascii_lowercase();
    // The original text, up to its `text:` field.
    let end = find_key(&lower, "text:").unwrap_or(text.len());
    let (head, lower_head) = (&text[..end], &lower[..end]);
    let value = |key: &str| -> Option<String> {
        let at = find_key(lower_head, key)? + key.len();
        let v: String = head[at..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        (!v.is_empty()).then_some(v)
    };
    ReceiptText {
        id: value("id:").filter(|v| v.len() <= 64),
        stat: value("stat:").filter(|v| v.len() <= 16),
        err: value("err:")
            .filter(|v| v.len() <= 10 && v.chars().all(|c| c.is_ascii_alphanumeric())),
    }
}

/// Where `key` starts in `s` at the start or after whitespace.
fn find_key(s: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find(key) {
        let at = from + i;
        if at == 0 || s[..at].ends_with(char::is_whitespace) {
            return Some(at);
        }
        from = at + key.len();
    }
    None
}

/// A message id as looked up: lower case, leading zeros dropped.
pub(crate) fn id_key(id: &str) -> String {
    let lower = id.trim().to_ascii_lowercase();
    let trimmed = lower.trim_start_matches('0');
    if trimmed.is_empty() && !lower.is_empty() {
        "0".into()
    } else {
        trimmed.to_owned()
    }
}

/// The other spellings an SMSC may give the same id in its receipt: a
/// decimal id in hexadecimal, a hexadecimal id in decimal (some SMSCs answer
/// `submit_sm_resp` in one and write receipts in the other).
pub(crate) fn id_alternates(id: &str) -> Vec<String> {
    let key = id_key(id);
    let mut out = Vec::new();
    if !key.is_empty() && key.len() <= 20 && key.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = key.parse::<u64>() {
            out.push(format!("{n:x}"));
        }
    }
    if !key.is_empty() && key.len() <= 16 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        if let Ok(n) = u64::from_str_radix(&key, 16) {
            let d = n.to_string();
            if d != key {
                out.push(d);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::template;
    use proptest::prelude::*;

    #[test]
    fn the_gsm_table_has_every_code_point_once() {
        let mut seen = std::collections::HashSet::new();
        for c in GSM7_BASIC {
            assert!(seen.insert(c), "{c:?} twice");
        }
        for (c, _) in GSM7_EXT {
            assert!(!seen.contains(&c), "{c:?} in both tables");
        }
        assert_eq!(gsm7('@'), Some((0x00, None)));
        assert_eq!(gsm7('A'), Some((0x41, None)));
        assert_eq!(gsm7('à'), Some((0x7F, None)));
        assert_eq!(gsm7('€'), Some((0x1B, Some(0x65))));
        assert_eq!(gsm7('\u{1b}'), None, "the escape is no character");
    }

    #[test]
    fn gsm_text_goes_as_septets_and_other_text_as_ucs2() {
        let e = encode_text("123456 est votre code de vérification Acme. Il expire dans 5 min.")
            .unwrap();
        assert_eq!(e.data_coding, DC_DEFAULT);
        assert_eq!(e.bytes[0], b'1');
        assert!(e.bytes.contains(&0x05), "é is 0x05");
        let e = encode_text("[€]").unwrap();
        assert_eq!(e.bytes, [0x1B, 0x3C, 0x1B, 0x65, 0x1B, 0x3E]);
        let e = encode_text("Ваш код 123456").unwrap();
        assert_eq!(e.data_coding, DC_UCS2);
        assert_eq!(&e.bytes[..2], &[0x04, 0x12]);
        // A character outside the BMP is two UTF-16 units.
        let e = encode_text("😀").unwrap();
        assert_eq!(e.bytes, [0xD8, 0x3D, 0xDE, 0x00]);
    }

    #[test]
    fn longer_than_one_segment_is_refused_never_split() {
        assert!(encode_text(&"a".repeat(160)).is_ok());
        let e = encode_text(&"a".repeat(161)).unwrap_err();
        assert_eq!((e.coding, e.units, e.max), ("GSM 7-bit", 161, 160));
        // Extension characters count twice.
        assert!(encode_text(&"€".repeat(81)).is_err());
        assert!(encode_text(&"ж".repeat(70)).is_ok());
        let e = encode_text(&"ж".repeat(71)).unwrap_err();
        assert_eq!((e.coding, e.units), ("UCS2", 71));
        assert!(!e.to_string().contains('ж'));
    }

    proptest! {
        #[test]
        fn the_choice_agrees_with_the_templates_cost(s in "[ -~àéèüöäñ€\\[\\]{}Жж😀\n]{0,80}") {
            let (units, max) = template::sms_cost(&s);
            match encode_text(&s) {
                Ok(e) => {
                    prop_assert!(units <= max);
                    if max == GSM7_SEGMENT {
                        prop_assert_eq!(e.data_coding, DC_DEFAULT);
                        prop_assert_eq!(e.bytes.len(), units);
                        prop_assert_eq!(decode_gsm7(&e.bytes), s.clone());
                    } else {
                        prop_assert_eq!(e.data_coding, DC_UCS2);
                        prop_assert_eq!(e.bytes.len(), units * 2);
                    }
                }
                Err(e) => {
                    prop_assert!(units > max);
                    prop_assert_eq!((e.units, e.max), (units, max));
                }
            }
        }

        #[test]
        fn receipt_texts_give_their_id_and_state(
            id in "[0-9A-Fa-f]{1,20}",
            stat in prop::sample::select(vec!["DELIVRD", "UNDELIV", "EXPIRED", "DELETED", "REJECTD", "ENROUTE", "ACCEPTD", "UNKNOWN"]),
            err in "[0-9]{3}",
            tail in "[ -~]{0,40}",
            upper in any::<bool>(),
        ) {
            let mut t = format!(
                "id:{id} sub:001 dlvrd:001 submit date:2501311200 done date:2501311201 stat:{stat} err:{err} text:{tail}"
            );
            if upper {
                t = t.replace("id:", "ID:").replace("stat:", "STAT:");
            }
            let r = parse_receipt_text(&t);
            prop_assert_eq!(r.id.as_deref(), Some(id.as_str()));
            prop_assert_eq!(r.stat.as_deref(), Some(stat));
            prop_assert_eq!(r.err.as_deref(), Some(err.as_str()));
            let want = match stat {
                "DELIVRD" => ReceiptState::Delivered,
                "ENROUTE" | "ACCEPTD" | "UNKNOWN" => ReceiptState::Pending,
                _ => ReceiptState::Undelivered("x"),
            };
            match (state_of_stat(stat), want) {
                (ReceiptState::Undelivered(_), ReceiptState::Undelivered(_)) => {}
                (got, want) => prop_assert_eq!(got, want),
            }
        }

        #[test]
        fn any_text_parses_without_panicking(s in "\\PC{0,120}") {
            let _ = parse_receipt_text(&s);
        }
    }

    #[test]
    fn the_message_text_after_text_is_never_read() {
        let r = parse_receipt_text("id:42 stat:UNDELIV err:001 text:stat:DELIVRD id:7");
        assert_eq!(r.id.as_deref(), Some("42"));
        assert_eq!(r.stat.as_deref(), Some("UNDELIV"));
        let r = parse_receipt_text("text:id:7 stat:DELIVRD");
        assert_eq!(r, ReceiptText::default());
        // `subid:` or `xid:` is no `id:`.
        let r = parse_receipt_text("subid:9 id:10 stat:DELIVRD");
        assert_eq!(r.id.as_deref(), Some("10"));
    }

    #[test]
    fn statuses_are_classified_and_named() {
        assert_eq!(classify_status(0x58), StatusClass::Throttle);
        assert_eq!(classify_status(0x14), StatusClass::Throttle);
        assert_eq!(classify_status(0x0B), StatusClass::Reject);
        assert_eq!(classify_status(0x08), StatusClass::Fail);
        assert_eq!(classify_status(0x45), StatusClass::Fail);
        assert_eq!(status_name(0x58), "ESME_RTHROTTLED (0x58)");
        assert_eq!(status_name(0x0E), "ESME_RINVPASWD (0x0E)");
        assert_eq!(status_name(0x0B), "ESME_RINVDSTADR (0x0B)");
        assert_eq!(status_name(0x0123_4567), "status 0x01234567");
        assert_eq!(throttle_backoff(0), Duration::from_millis(500));
        assert_eq!(throttle_backoff(1), Duration::from_secs(1));
        assert_eq!(throttle_backoff(40), Duration::from_secs(30));
    }

    #[test]
    fn senders_and_destinations_become_addresses() {
        let cfg = SmppConfig::default();
        let a = |s: &str| source_address(s, &cfg);
        assert_eq!(
            a("97671").unwrap(),
            Address {
                ton: 3,
                npi: 0,
                addr: "97671".into()
            }
        );
        assert_eq!(
            a("+15550100001").unwrap(),
            Address {
                ton: 1,
                npi: 1,
                addr: "15550100001".into()
            }
        );
        assert_eq!(
            a("Watchword").unwrap(),
            Address {
                ton: 5,
                npi: 0,
                addr: "Watchword".into()
            }
        );
        assert!(a("Watchword Inc").is_err(), "12 characters");
        assert!(a("+1-555").is_err());
        assert!(a("Wätchword").is_err());
        assert!(a("").is_err());
        let d = dest_address("+14255551234", &cfg).unwrap();
        assert_eq!((d.ton, d.npi, d.addr.as_str()), (1, 1, "14255551234"));
        assert!(dest_address("user@example.com", &cfg).is_err());
    }

    #[test]
    fn ids_match_across_case_zeros_and_bases() {
        assert_eq!(id_key("00A1b2"), "a1b2");
        assert_eq!(id_key("000"), "0");
        assert_eq!(id_alternates("1A2F00"), vec!["1715968".to_owned()]);
        // Decimal digits are also valid hexadecimal: both readings offered.
        assert_eq!(
            id_alternates("1715968"),
            vec!["1a2f00".to_owned(), "24205672".to_owned()]
        );
        assert!(id_alternates("msg-77").is_empty());
    }
}
