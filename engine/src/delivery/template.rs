//! Message texts: per-locale templates (English, French) for SMS, voice and
//! e-mail, with the code, the service name and the minutes left; an SMS always
//! fits one segment (GSM-7 160 or UCS-2 70 characters). An e-mail's text
//! starts with a `Subject: ` line in its locale, then a blank line, then the
//! body (the SMTP carrier makes the header of it).
//!
//! The rendered text holds the code: it goes to a carrier and nowhere else.
//! This module must never log or keep what it renders.

use std::fmt::Write as _;

use super::carrier::MessagePurpose;
use crate::code::Code;
use crate::types::Channel;

/// A supported message language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lang {
    En,
    Fr,
}

impl Lang {
    /// The language for a BCP 47 tag (`fr`, `fr-CA`, `fr_FR`); English otherwise.
    pub(crate) fn from_tag(tag: &str) -> Self {
        let primary = tag.split(['-', '_']).next().unwrap_or("");
        if primary.eq_ignore_ascii_case("fr") {
            Self::Fr
        } else {
            Self::En
        }
    }
}

/// GSM 03.38 basic character set.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// GSM 03.38 extension table: two septets each.
const GSM7_EXT: &str = "^{}\\[~]|€\u{c}";

/// Septets each ASCII byte takes in GSM-7 (0: GSM-7 cannot carry it).
const ASCII_SEPTETS: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = match i as u8 {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => 1,
            b' ' | b'!' | b'"' | b'#' | b'%' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' => 1,
            b'-' | b'.' | b'/' | b':' | b';' | b'<' | b'=' | b'>' | b'?' | b'@' | b'$' | b'_' => 1,
            b'\n' | b'\r' => 1,
            b'^' | b'{' | b'}' | b'\\' | b'[' | b'~' | b']' | b'|' | b'\x0c' => 2,
            _ => 0,
        };
        i += 1;
    }
    t
};

/// Septets `c` takes in GSM-7 (1 or 2), or `None` if GSM-7 cannot carry it.
fn gsm7_septets(c: char) -> Option<usize> {
    if c.is_ascii() {
        // ASCII fast path: no scan of the tables.
        return match ASCII_SEPTETS[c as usize] {
            0 => None,
            n => Some(usize::from(n)),
        };
    }
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXT.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// The number of characters `text` takes in one SMS, and the segment's size:
/// `(septets, 160)` for GSM-7, `(UTF-16 units, 70)` otherwise.
pub(crate) fn sms_cost(text: &str) -> (usize, usize) {
    if text.is_ascii() {
        // Every message in English: one table look-up per byte.
        let mut septets = 0;
        for &b in text.as_bytes() {
            match ASCII_SEPTETS[usize::from(b)] {
                0 => return (text.len(), 70),
                n => septets += usize::from(n),
            }
        }
        return (septets, 160);
    }
    let mut septets = 0;
    for c in text.chars() {
        match gsm7_septets(c) {
            Some(n) => septets += n,
            None => return (text.encode_utf16().count(), 70),
        }
    }
    (septets, 160)
}

/// Whether `text` fits in one SMS segment.
pub(crate) fn fits_one_segment(text: &str) -> bool {
    // At most 70 bytes is at most 70 UTF-16 units: fits whatever the encoding.
    if text.len() <= 70 {
        return true;
    }
    let (n, max) = sms_cost(text);
    n <= max
}

fn minutes_left(expires_at_ms: u64, now_ms: u64) -> u64 {
    expires_at_ms.saturating_sub(now_ms).div_ceil(60_000).max(1)
}

fn sms(lang: Lang, code: &str, service: &str, minutes: u64) -> String {
    let mut s = String::with_capacity(96);
    let _ = match lang {
        Lang::En => write!(
            s,
            "{code} is your {service} verification code. It expires in {minutes} min."
        ),
        Lang::Fr => write!(
            s,
            "{code} est votre code de vérification {service}. Il expire dans {minutes} min."
        ),
    };
    s
}

/// Renders the text for `channel`. For voice, the code is read digit by digit,
/// twice. `service` is shortened if an SMS would not fit one segment.
#[cfg(test)]
pub(crate) fn render(
    purpose: MessagePurpose,
    channel: Channel,
    locale: &str,
    code: &Code,
    service: &str,
    expires_at_ms: u64,
    now_ms: u64,
) -> String {
    render_in(
        purpose,
        channel,
        Lang::from_tag(locale),
        code,
        service,
        expires_at_ms,
        now_ms,
    )
}

/// [`render`] in a language already read from the locale (the router keeps
/// a message's language, not its locale tag).
pub(crate) fn render_in(
    purpose: MessagePurpose,
    channel: Channel,
    lang: Lang,
    code: &Code,
    service: &str,
    expires_at_ms: u64,
    now_ms: u64,
) -> String {
    let (buf, n) = code.digits();
    let code = std::str::from_utf8(&buf[..n]).unwrap_or("");
    let minutes = minutes_left(expires_at_ms, now_ms);
    if purpose == MessagePurpose::PinNotice {
        let (subject, text) = match lang {
            Lang::En => (
                format!("Your new {service} PIN"),
                format!(
                    "Your new {service} PIN is {code}. Keep it to yourself: {service} never asks for it by phone or e-mail."
                ),
            ),
            Lang::Fr => (
                format!("Votre nouveau code PIN {service}"),
                format!(
                    "Votre nouveau code PIN {service} est {code}. Gardez-le pour vous : {service} ne le demande jamais par téléphone ni par e-mail."
                ),
            ),
        };
        // An e-mail starts with its subject line, as the code's does.
        return if channel == Channel::Email {
            format!("Subject: {subject}\n\n{text}\n")
        } else {
            text
        };
    }
    if purpose == MessagePurpose::CallConfirmation {
        return match lang {
            Lang::En => format!(
                "Hello. This is {service}. Someone is signing in or registering this phone with your account. To confirm, press the pound key. If it was not you, hang up."
            ),
            Lang::Fr => format!(
                "Bonjour. Ici {service}. Quelqu'un se connecte ou enregistre ce téléphone sur votre compte. Pour confirmer, appuyez sur la touche dièse. Si ce n'est pas vous, raccrochez."
            ),
        };
    }
    match channel {
        Channel::Sms => {
            let text = sms(lang, code, service, minutes);
            if fits_one_segment(&text) {
                return text;
            }
            // Shorten the service name until it fits; drop it if need be.
            let mut chars: Vec<char> = service.chars().collect();
            while !chars.is_empty() {
                chars.pop();
                let short: String = chars.iter().collect();
                let text = sms(lang, code, short.trim_end(), minutes);
                if fits_one_segment(&text) {
                    return text;
                }
            }
            sms(lang, code, "", minutes)
        }
        Channel::Voice => {
            let mut spoken = String::with_capacity(n * 3);
            for (i, d) in code.chars().enumerate() {
                if i > 0 {
                    spoken.push_str(", ");
                }
                spoken.push(d);
            }
            match lang {
                Lang::En => format!(
                    "Hello. Your {service} verification code is: {spoken}. Again: {spoken}. It expires in {minutes} minutes."
                ),
                Lang::Fr => format!(
                    "Bonjour. Votre code de vérification {service} est : {spoken}. Je répète : {spoken}. Il expire dans {minutes} minutes."
                ),
            }
        }
        Channel::Email => match lang {
            Lang::En => format!(
                "Subject: Your {service} verification code\n\nYour {service} verification code is {code}.\nIt expires in {minutes} minutes. If you did not ask for it, ignore this message.\n"
            ),
            Lang::Fr => format!(
                "Subject: Votre code de vérification {service}\n\nVotre code de vérification {service} est {code}.\nIl expire dans {minutes} minutes. Si vous ne l'avez pas demandé, ignorez ce message.\n"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code() -> Code {
        Code::from_parts(123456, 6).unwrap()
    }

    #[test]
    fn english_and_french_sms_carry_code_service_and_minutes() {
        let en = render(
            MessagePurpose::Code,
            Channel::Sms,
            "en-US",
            &code(),
            "Acme VPN",
            300_000,
            0,
        );
        assert_eq!(
            en,
            "123456 is your Acme VPN verification code. It expires in 5 min."
        );
        let fr = render(
            MessagePurpose::Code,
            Channel::Sms,
            "fr-CA",
            &code(),
            "Acme VPN",
            250_000,
            0,
        );
        assert!(fr.starts_with("123456 est votre code"), "{fr}");
        assert!(fr.contains("5 min"));
        assert_eq!(sms_cost(&fr).1, 160, "é is GSM-7");
    }

    #[test]
    fn long_or_unicode_service_names_still_fit_one_segment() {
        let long = "A".repeat(300);
        let t = render(
            MessagePurpose::Code,
            Channel::Sms,
            "en",
            &code(),
            &long,
            60_000,
            0,
        );
        assert!(fits_one_segment(&t));
        assert!(t.contains("123456"));
        let uni = "服务".repeat(40);
        let t = render(
            MessagePurpose::Code,
            Channel::Sms,
            "fr",
            &code(),
            &uni,
            60_000,
            0,
        );
        assert!(fits_one_segment(&t), "{t}");
        assert_eq!(sms_cost(&t).1, 70);
        assert!(t.contains("123456"));
    }

    #[test]
    fn the_ascii_fast_path_agrees_with_the_tables() {
        for b in 0u8..128 {
            let c = char::from(b);
            let slow = if GSM7_BASIC.contains(c) {
                Some(1)
            } else if GSM7_EXT.contains(c) {
                Some(2)
            } else {
                None
            };
            assert_eq!(gsm7_septets(c), slow, "{b:#x}");
        }
        assert_eq!(sms_cost("a{b"), (4, 160));
        assert_eq!(sms_cost("a`b"), (3, 70));
    }

    #[test]
    fn a_confirmation_call_asks_for_pound_and_carries_no_code() {
        for lang in ["en", "fr"] {
            let t = render(
                MessagePurpose::CallConfirmation,
                Channel::Voice,
                lang,
                &code(),
                "Acme",
                60_000,
                0,
            );
            assert!(!t.contains("123456") && !t.contains("1, 2, 3"), "{t}");
            assert!(t.contains("Acme"));
        }
        let en = render(
            MessagePurpose::CallConfirmation,
            Channel::Voice,
            "en",
            &code(),
            "Acme",
            60_000,
            0,
        );
        assert!(en.contains("press the pound key"), "{en}");
    }

    #[test]
    fn a_pin_notice_carries_the_pin_in_english_and_french() {
        let en = render(
            MessagePurpose::PinNotice,
            Channel::Email,
            "en",
            &code(),
            "Acme",
            60_000,
            0,
        );
        assert!(
            en.starts_with("Subject: Your new Acme PIN\n\nYour new Acme PIN is 123456."),
            "{en}"
        );
        let fr = render(
            MessagePurpose::PinNotice,
            Channel::Email,
            "fr-CA",
            &code(),
            "Acme",
            60_000,
            0,
        );
        assert!(
            fr.starts_with(
                "Subject: Votre nouveau code PIN Acme\n\nVotre nouveau code PIN Acme est 123456."
            ),
            "{fr}"
        );
    }

    #[test]
    fn voice_reads_digits_and_email_has_a_subject() {
        let v = render(
            MessagePurpose::Code,
            Channel::Voice,
            "en",
            &code(),
            "Acme",
            60_000,
            0,
        );
        assert!(v.contains("1, 2, 3, 4, 5, 6"));
        let e = render(
            MessagePurpose::Code,
            Channel::Email,
            "fr",
            &code(),
            "Acme",
            60_000,
            0,
        );
        assert!(e.starts_with("Subject: Votre code"));
        assert!(e.contains("123456"));
    }
}
