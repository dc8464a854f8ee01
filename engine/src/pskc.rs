//! PSKC (RFC 6030) token files: plain secrets, secrets encrypted with a
//! pre-shared key (AES-128-CBC, the HMAC-SHA1 MAC of the ciphertext checked
//! before anything is decrypted), or with a key derived from a passphrase
//! (PBKDF2). Each key package becomes a token or a skip with its reason; a
//! wrong key or passphrase, or a MAC that does not verify, skips every
//! package with one clear reason and imports nothing.
//!
//! Elements are matched by namespace URI, never by prefix. A document with a
//! DOCTYPE (entity definitions) is refused, nesting is bounded, and nothing
//! is allocated on a length the input claims. This module must never log or
//! return a secret, a key or a passphrase.

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine as _;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

use crate::import::{ImportedToken, Row};
use crate::oath::{Algorithm, Kind, Params, Secret, validate_secret};

const PSKC_NS: &[u8] = b"urn:ietf:params:xml:ns:keyprov:pskc";
const XENC_NS: &[u8] = b"http://www.w3.org/2001/04/xmlenc#";
const DSIG_NS: &[u8] = b"http://www.w3.org/2000/09/xmldsig#";
const PKCS5_NS: &[u8] = b"http://www.rsasecurity.com/rsalabs/pkcs/schemas/pkcs-5v2-0#";
const XENC11_NS: &[u8] = b"http://www.w3.org/2009/xmlenc11#";
const AES128_CBC: &str = "http://www.w3.org/2001/04/xmlenc#aes128-cbc";
const HMAC_SHA1: &str = "http://www.w3.org/2000/09/xmldsig#hmac-sha1";

/// Most nested elements a file may have.
const MAX_DEPTH: usize = 32;
/// Most PBKDF2 iterations accepted (a file may not make the server spin).
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// How the file's secrets are to be opened.
#[derive(Clone, Default)]
pub struct Keys {
    /// The pre-shared key (16 bytes for AES-128).
    pub key: Option<Vec<u8>>,
    /// The passphrase for a PBKDF2-derived key.
    pub password: Option<String>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A value as the file holds it: plain, or encrypted (IV + ciphertext)
/// with an optional MAC.
#[derive(Default)]
struct Value {
    plain: Option<String>,
    cipher: Option<Vec<u8>>,
    method: Option<String>,
    mac: Option<Vec<u8>>,
}

#[derive(Default)]
struct Package {
    serial: Option<String>,
    key_id: Option<String>,
    algorithm: Option<String>,
    digits: Option<u8>,
    secret: Value,
    counter: Option<u64>,
    period: Option<u32>,
}

#[derive(Default)]
struct Container {
    pbkdf2: Option<(Vec<u8>, u32, usize)>,
    mac_algorithm: Option<String>,
    mac_key: Value,
    packages: Vec<Package>,
}

fn b64(text: &str) -> Option<Vec<u8>> {
    let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(clean).ok()
}

/// Decrypts `cipher` (IV first) with AES-128-CBC and PKCS#7 padding.
fn aes128_cbc(key: &[u8], cipher: &[u8]) -> Option<Vec<u8>> {
    if key.len() != 16 || cipher.len() < 32 || cipher.len() % 16 != 0 {
        return None;
    }
    let (iv, body) = cipher.split_at(16);
    cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
        .ok()?
        .decrypt_padded_vec_mut::<Pkcs7>(body)
        .ok()
}

/// Parses a PSKC file into rows. Errors only for what is not a PSKC file
/// at all (not XML, a DOCTYPE, too deep, no KeyContainer).
pub fn parse(xml: &[u8], keys: &Keys) -> Result<Vec<Row>, String> {
    let c = read(xml)?;
    let skip_all = |reason: &str| {
        c.packages
            .iter()
            .map(|p| Row::Skipped {
                serial: serial_of(p),
                reason: reason.to_owned(),
            })
            .collect::<Vec<_>>()
    };
    // The key that opens the secrets, if any are encrypted.
    let needs_key = c.packages.iter().any(|p| p.secret.cipher.is_some());
    let key: Option<Vec<u8>> = if !needs_key {
        None
    } else if let Some((salt, iterations, len)) = &c.pbkdf2 {
        let Some(password) = &keys.password else {
            return Ok(skip_all("the file is encrypted with a passphrase: give it"));
        };
        if *iterations == 0 || *iterations > MAX_ITERATIONS || !(16..=64).contains(len) {
            return Ok(skip_all(&format!(
                "unsupported PBKDF2 parameters (iterations 1 to {MAX_ITERATIONS}, key 16 to 64 bytes)"
            )));
        }
        let mut out = vec![0u8; *len];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA1,
            std::num::NonZeroU32::new(*iterations).unwrap_or(std::num::NonZeroU32::MIN),
            salt,
            password.as_bytes(),
            &mut out,
        );
        Some(out)
    } else {
        // A pre-shared key: named (ds:KeyName) or not (an empty EncryptionKey).
        match &keys.key {
            Some(k) => Some(k.clone()),
            None => {
                return Ok(skip_all(
                    "the file is encrypted with a pre-shared key: give it",
                ));
            }
        }
    };
    // The MAC key, when the file has a MAC method: its MACKey encrypted
    // with the same key, or else the encryption key itself (RFC 6030 §6.1.1).
    let mac_key = match (&key, &c.mac_key.cipher, &c.mac_algorithm) {
        (Some(k), Some(cipher), _) => match aes128_cbc(k, cipher) {
            Some(m) => Some(m),
            None => {
                return Ok(skip_all(
                    "wrong key or passphrase (the MAC key does not decrypt)",
                ));
            }
        },
        (Some(k), None, Some(_)) => Some(k.clone()),
        _ => None,
    };
    if c.mac_algorithm.as_deref().is_some_and(|a| a != HMAC_SHA1) {
        return Ok(skip_all("unsupported MAC algorithm"));
    }
    let mut rows = Vec::with_capacity(c.packages.len());
    for p in &c.packages {
        rows.push(package(p, key.as_deref(), mac_key.as_deref()));
    }
    // One clear error for a wrong key: every package failing its MAC.
    let all_bad_mac = !rows.is_empty()
        && rows
            .iter()
            .all(|r| matches!(r, Row::Skipped { reason, .. } if reason.starts_with("MAC")));
    if all_bad_mac {
        return Ok(skip_all(
            "wrong key or passphrase, or a tampered file (no MAC verifies)",
        ));
    }
    Ok(rows)
}

fn serial_of(p: &Package) -> String {
    p.serial
        .clone()
        .or_else(|| p.key_id.clone())
        .unwrap_or_default()
}

fn package(p: &Package, key: Option<&[u8]>, mac_key: Option<&[u8]>) -> Row {
    let serial = serial_of(p);
    let skip = |reason: &str| Row::Skipped {
        serial: serial.clone(),
        reason: reason.to_owned(),
    };
    if serial.is_empty() {
        return skip("no serial (DeviceInfo/SerialNo or Key/@Id)");
    }
    let kind = match p.algorithm.as_deref() {
        Some(a) if a.ends_with(":hotp") || a.ends_with("#hotp") => Kind::Hotp,
        Some(a) if a.ends_with(":totp") || a.ends_with("#totp") => Kind::Totp,
        _ => return skip("unsupported algorithm (HOTP or TOTP)"),
    };
    let secret = if let Some(plain) = &p.secret.plain {
        match b64(plain) {
            Some(s) => s,
            None => return skip("bad secret (not base64)"),
        }
    } else if let Some(cipher) = &p.secret.cipher {
        if p.secret.method.as_deref().is_some_and(|m| m != AES128_CBC) {
            return skip("unsupported encryption (aes128-cbc)");
        }
        if let Some(mk) = mac_key {
            let Some(mac) = &p.secret.mac else {
                return skip("MAC missing");
            };
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, mk);
            if ring::hmac::verify(&k, cipher, mac).is_err() {
                return skip("MAC does not verify");
            }
        }
        match key.and_then(|k| aes128_cbc(k, cipher)) {
            Some(s) => s,
            None => return skip("the secret does not decrypt"),
        }
    } else {
        return skip("no secret");
    };
    if validate_secret(&secret).is_err() {
        return skip("bad secret (must be 10 to 512 bytes)");
    }
    let digits = p.digits.unwrap_or(6);
    let period = p.period.unwrap_or(30);
    let params = Params {
        algorithm: Algorithm::Sha1,
        digits,
        period,
    };
    if params.validate().is_err() {
        return skip("unsupported digits or time interval (6 or 8; 30 or 60)");
    }
    Row::Token(ImportedToken {
        serial,
        subject: None,
        kind,
        params,
        secret: Secret::new(secret),
        counter: p.counter.unwrap_or(0),
    })
}

/// Reads the document into the container's parts.
fn read(xml: &[u8]) -> Result<Container, String> {
    let mut reader = NsReader::from_reader(xml);
    reader.config_mut().trim_text(true);
    let mut c = Container::default();
    let mut stack: Vec<Vec<u8>> = Vec::new();
    let mut saw_container = false;
    let mut text = String::new();
    let mut buf = Vec::new();
    loop {
        let (ns, event) = reader
            .read_resolved_event_into(&mut buf)
            .map_err(|e| format!("not XML: {e}"))?;
        let ns: Option<Vec<u8>> = match ns {
            ResolveResult::Bound(n) => Some(n.as_ref().to_vec()),
            _ => None,
        };
        match event {
            Event::DocType(_) => return Err("a DOCTYPE is refused (no entity definitions)".into()),
            Event::Start(ref e) | Event::Empty(ref e) => {
                let local = e.local_name().as_ref().to_vec();
                let name = qualify(ns.as_deref(), &local);
                let attr = |key: &[u8]| {
                    e.attributes()
                        .flatten()
                        .find(|a| a.key.local_name().as_ref() == key)
                        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
                };
                let path = |names: &[&str]| {
                    stack.len() >= names.len()
                        && stack[stack.len() - names.len()..]
                            .iter()
                            .zip(names)
                            .all(|(a, b)| a.as_slice() == b.as_bytes())
                };
                match name.as_str() {
                    "pskc:KeyContainer" => saw_container = true,
                    "pskc:KeyPackage" => c.packages.push(Package::default()),
                    "pskc:Key" => {
                        if let Some(p) = c.packages.last_mut() {
                            p.key_id = attr(b"Id");
                            p.algorithm = attr(b"Algorithm");
                        }
                    }
                    "pskc:ResponseFormat" => {
                        if let Some(p) = c.packages.last_mut() {
                            p.digits = attr(b"Length").and_then(|l| l.parse().ok());
                        }
                    }
                    "pskc:MACMethod" => c.mac_algorithm = attr(b"Algorithm"),
                    "xenc:EncryptionMethod" => {
                        let alg = attr(b"Algorithm");
                        if path(&["pskc:Secret", "pskc:EncryptedValue"]) {
                            if let Some(p) = c.packages.last_mut() {
                                p.secret.method = alg;
                            }
                        } else if path(&["pskc:MACKey"]) {
                            c.mac_key.method = alg;
                        }
                    }
                    _ => {}
                }
                if matches!(event, Event::Start(_)) {
                    if stack.len() >= MAX_DEPTH {
                        return Err(format!("nested deeper than {MAX_DEPTH} elements"));
                    }
                    stack.push(name.into_bytes());
                }
                text.clear();
            }
            Event::Text(t) => {
                text.push_str(&t.decode().map_err(|e| format!("bad text: {e}"))?);
            }
            Event::GeneralRef(r) => {
                // Only the five predefined entities and character references:
                // nothing a document could define.
                let c = match r.as_ref() {
                    b"amp" => Some('&'),
                    b"lt" => Some('<'),
                    b"gt" => Some('>'),
                    b"quot" => Some('"'),
                    b"apos" => Some('\''),
                    _ => r.resolve_char_ref().ok().flatten(),
                };
                text.push(c.ok_or("an undefined entity is refused")?);
            }
            Event::End(_) => {
                let name = stack.pop().unwrap_or_default();
                let under = |names: &[&str]| {
                    stack.len() >= names.len()
                        && stack[stack.len() - names.len()..]
                            .iter()
                            .zip(names)
                            .all(|(a, b)| a.as_slice() == b.as_bytes())
                };
                let value = std::mem::take(&mut text);
                match String::from_utf8_lossy(&name).as_ref() {
                    "pskc:SerialNo" if under(&["pskc:DeviceInfo"]) => {
                        if let Some(p) = c.packages.last_mut() {
                            p.serial = Some(value);
                        }
                    }
                    "pskc:PlainValue" => {
                        if let Some(p) = c.packages.last_mut() {
                            if under(&["pskc:Secret"]) {
                                p.secret.plain = Some(value);
                            } else if under(&["pskc:Counter"]) {
                                p.counter = value.trim().parse().ok();
                            } else if under(&["pskc:TimeInterval"]) {
                                p.period = value.trim().parse().ok();
                            }
                        }
                    }
                    "xenc:CipherValue" => {
                        let bytes = b64(&value);
                        if under(&["pskc:MACKey", "xenc:CipherData"]) {
                            c.mac_key.cipher = bytes;
                        } else if under(&["pskc:Secret", "pskc:EncryptedValue", "xenc:CipherData"])
                            && let Some(p) = c.packages.last_mut()
                        {
                            p.secret.cipher = bytes;
                        }
                    }
                    "pskc:ValueMAC" if under(&["pskc:Secret"]) => {
                        if let Some(p) = c.packages.last_mut() {
                            p.secret.mac = b64(&value);
                        }
                    }
                    // PBKDF2-params (in the xenc11 or the pkcs5 namespace;
                    // their children often in none).
                    n if stack.iter().any(|a| a.ends_with(b":PBKDF2-params")) => {
                        let e = c.pbkdf2.get_or_insert((Vec::new(), 0, 16));
                        match n.rsplit(':').next().unwrap_or("") {
                            "Specified" => e.0 = b64(&value).unwrap_or_default(),
                            "IterationCount" => e.1 = value.trim().parse().unwrap_or(0),
                            "KeyLength" => e.2 = value.trim().parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !saw_container {
        return Err("no PSKC KeyContainer (namespace urn:ietf:params:xml:ns:keyprov:pskc)".into());
    }
    Ok(c)
}

/// `prefix:local` with our own prefix for each known namespace URI.
fn qualify(ns: Option<&[u8]>, local: &[u8]) -> String {
    let prefix = match ns {
        Some(PSKC_NS) => "pskc",
        Some(XENC_NS) => "xenc",
        Some(DSIG_NS) => "dsig",
        Some(PKCS5_NS) => "pkcs5",
        Some(XENC11_NS) => "xenc11",
        _ => "other",
    };
    format!("{prefix}:{}", String::from_utf8_lossy(local))
}
