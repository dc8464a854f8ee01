//! PSKC (RFC 6030) imports: files shaped as the RFC's examples (a plain
//! HOTP secret; secrets encrypted with a pre-shared AES key and MACed;
//! secrets under a PBKDF2-derived key), written here with known secrets;
//! wrong keys, tampering and hostile XML; and files made by the Python
//! `pskc` package's csv2pskc (Debian `python3-pskc`, installed by
//! `.ci/run`; without it the interop test says so and passes, except in CI).

use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine as _;
use watchword_engine::import::Row;
use watchword_engine::oath::{Kind, Token};
use watchword_engine::pskc::{Keys, parse};

const SECRET: &[u8] = b"12345678901234567890";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// IV then AES-128-CBC with PKCS#7, as xmlenc's aes128-cbc.
fn encrypt(key: &[u8], iv: [u8; 16], plain: &[u8]) -> Vec<u8> {
    let mut out = iv.to_vec();
    out.extend(
        cbc::Encryptor::<aes::Aes128>::new_from_slices(key, &iv)
            .unwrap()
            .encrypt_padded_vec_mut::<Pkcs7>(plain),
    );
    out
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    ring::hmac::sign(&k, data).as_ref().to_vec()
}

fn tokens(rows: &[Row]) -> Vec<(&str, &[u8], Kind, u8)> {
    rows.iter()
        .filter_map(|r| match r {
            Row::Token(t) => Some((
                t.serial.as_str(),
                t.secret.expose(),
                t.kind,
                t.params.digits,
            )),
            Row::Skipped { .. } => None,
        })
        .collect()
}

fn reasons(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .filter_map(|r| match r {
            Row::Skipped { reason, .. } => Some(reason.clone()),
            Row::Token(_) => None,
        })
        .collect()
}

/// The shape of RFC 6030 Figure 2: one HOTP key, its secret in clear.
fn plain_hotp() -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<KeyContainer Version="1.0" Id="exampleID1" xmlns="urn:ietf:params:xml:ns:keyprov:pskc">
  <KeyPackage>
    <DeviceInfo><Manufacturer>Manufacturer</Manufacturer><SerialNo>987654321</SerialNo></DeviceInfo>
    <CryptoModuleInfo><Id>CM_ID_001</Id></CryptoModuleInfo>
    <Key Id="12345678" Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:hotp">
      <Issuer>Issuer-A</Issuer>
      <AlgorithmParameters><ResponseFormat Length="8" Encoding="DECIMAL"/></AlgorithmParameters>
      <Data>
        <Secret><PlainValue>{}</PlainValue></Secret>
        <Counter><PlainValue>0</PlainValue></Counter>
      </Data>
    </Key>
  </KeyPackage>
</KeyContainer>"#,
        b64(SECRET)
    )
}

#[test]
fn a_plain_secret_imports_as_written() {
    let rows = parse(plain_hotp().as_bytes(), &Keys::default()).unwrap();
    assert_eq!(tokens(&rows), [("987654321", SECRET, Kind::Hotp, 8)]);
    let Row::Token(t) = &rows[0] else {
        unreachable!()
    };
    // RFC 4226 Appendix D, counter 0, eight digits.
    assert_eq!(
        Token::new(&t.secret, t.params).unwrap().hotp(t.counter),
        "84755224"
    );
}

/// The shape of RFC 6030 Figure 6: a pre-shared AES-128 key named in the
/// container, a MAC key encrypted with it, every secret encrypted and MACed.
fn psk_file(key: &[u8], mac_key: &[u8], tamper: bool) -> String {
    let enc_mac_key = encrypt(key, [7; 16], mac_key);
    let enc_secret = encrypt(key, [9; 16], SECRET);
    let mut value_mac = mac(mac_key, &enc_secret);
    if tamper {
        value_mac[0] ^= 1;
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<pskc:KeyContainer xmlns:pskc="urn:ietf:params:xml:ns:keyprov:pskc"
  xmlns:xenc="http://www.w3.org/2001/04/xmlenc#" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" Version="1.0">
  <pskc:EncryptionKey><ds:KeyName>Pre-shared-key</ds:KeyName></pskc:EncryptionKey>
  <pskc:MACMethod Algorithm="http://www.w3.org/2000/09/xmldsig#hmac-sha1">
    <pskc:MACKey>
      <xenc:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>
      <xenc:CipherData><xenc:CipherValue>{}</xenc:CipherValue></xenc:CipherData>
    </pskc:MACKey>
  </pskc:MACMethod>
  <pskc:KeyPackage>
    <pskc:DeviceInfo><pskc:SerialNo>987654321</pskc:SerialNo></pskc:DeviceInfo>
    <pskc:Key Id="12345678" Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:totp">
      <pskc:AlgorithmParameters><pskc:ResponseFormat Length="6" Encoding="DECIMAL"/></pskc:AlgorithmParameters>
      <pskc:Data>
        <pskc:Secret>
          <pskc:EncryptedValue>
            <xenc:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>
            <xenc:CipherData><xenc:CipherValue>{}</xenc:CipherValue></xenc:CipherData>
          </pskc:EncryptedValue>
          <pskc:ValueMAC>{}</pskc:ValueMAC>
        </pskc:Secret>
        <pskc:TimeInterval><pskc:PlainValue>60</pskc:PlainValue></pskc:TimeInterval>
      </pskc:Data>
    </pskc:Key>
  </pskc:KeyPackage>
</pskc:KeyContainer>"#,
        b64(&enc_mac_key),
        b64(&enc_secret),
        b64(&value_mac)
    )
}

#[test]
fn a_pre_shared_key_opens_its_file_and_only_it() {
    let key = [0x12u8; 16];
    let mac_key = [0x34u8; 20];
    let file = psk_file(&key, &mac_key, false);
    let with = |k: &[u8]| Keys {
        key: Some(k.to_vec()),
        password: None,
    };
    let rows = parse(file.as_bytes(), &with(&key)).unwrap();
    assert_eq!(tokens(&rows), [("987654321", SECRET, Kind::Totp, 6)]);
    let Row::Token(t) = &rows[0] else {
        unreachable!()
    };
    assert_eq!(t.params.period, 60);
    // A wrong key: one clear reason, nothing imported.
    let rows = parse(file.as_bytes(), &with(&[0x99; 16])).unwrap();
    assert!(tokens(&rows).is_empty());
    assert!(
        reasons(&rows)[0].starts_with("wrong key"),
        "{:?}",
        reasons(&rows)
    );
    // No key at all.
    let rows = parse(file.as_bytes(), &Keys::default()).unwrap();
    assert!(reasons(&rows)[0].contains("pre-shared key"));
    // A tampered MAC: nothing decrypted, nothing imported.
    let rows = parse(psk_file(&key, &mac_key, true).as_bytes(), &with(&key)).unwrap();
    assert!(tokens(&rows).is_empty());
    assert!(
        reasons(&rows)[0].contains("tampered"),
        "{:?}",
        reasons(&rows)
    );
    assert!(
        !format!("{:?}", with(&key)).contains("12"),
        "Keys' Debug shows no key"
    );
}

/// The shape of RFC 6030 Figure 7: a key derived with PBKDF2 from a passphrase.
fn pbkdf2_file(password: &str, iterations: u32) -> String {
    pbkdf2_file_claiming(password, iterations, iterations)
}

/// As [`pbkdf2_file`], the file claiming `claimed` iterations.
fn pbkdf2_file_claiming(password: &str, iterations: u32, claimed: u32) -> String {
    let salt = b"Ej7/PEpyEpw=";
    let mut key = [0u8; 16];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA1,
        std::num::NonZeroU32::new(iterations.max(1)).unwrap(),
        salt,
        password.as_bytes(),
        &mut key,
    );
    let enc_secret = encrypt(&key, [3; 16], SECRET);
    let value_mac = mac(&key, &enc_secret);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<pskc:KeyContainer xmlns:pskc="urn:ietf:params:xml:ns:keyprov:pskc"
  xmlns:xenc11="http://www.w3.org/2009/xmlenc11#"
  xmlns:pkcs5="http://www.rsasecurity.com/rsalabs/pkcs/schemas/pkcs-5v2-0#"
  xmlns:xenc="http://www.w3.org/2001/04/xmlenc#" Version="1.0">
  <pskc:EncryptionKey>
    <xenc11:DerivedKey>
      <xenc11:KeyDerivationMethod Algorithm="http://www.rsasecurity.com/rsalabs/pkcs/schemas/pkcs-5v2-0#pbkdf2">
        <pkcs5:PBKDF2-params>
          <Salt><Specified>{}</Specified></Salt>
          <IterationCount>{claimed}</IterationCount>
          <KeyLength>16</KeyLength>
          <PRF/>
        </pkcs5:PBKDF2-params>
      </xenc11:KeyDerivationMethod>
    </xenc11:DerivedKey>
  </pskc:EncryptionKey>
  <pskc:MACMethod Algorithm="http://www.w3.org/2000/09/xmldsig#hmac-sha1"/>
  <pskc:KeyPackage>
    <pskc:Key Id="123456" Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:hotp">
      <pskc:Data>
        <pskc:Secret>
          <pskc:EncryptedValue>
            <xenc:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>
            <xenc:CipherData><xenc:CipherValue>{}</xenc:CipherValue></xenc:CipherData>
          </pskc:EncryptedValue>
          <pskc:ValueMAC>{}</pskc:ValueMAC>
        </pskc:Secret>
      </pskc:Data>
    </pskc:Key>
  </pskc:KeyPackage>
</pskc:KeyContainer>"#,
        b64(salt),
        b64(&enc_secret),
        b64(&value_mac)
    )
}

#[test]
fn a_passphrase_derives_the_key_and_a_wrong_one_imports_nothing() {
    let file = pbkdf2_file("qwerty", 1000);
    let pass = |p: &str| Keys {
        key: None,
        password: Some(p.into()),
    };
    let rows = parse(file.as_bytes(), &pass("qwerty")).unwrap();
    assert_eq!(
        tokens(&rows),
        [("123456", SECRET, Kind::Hotp, 6)],
        "the serial is Key/@Id without a SerialNo"
    );
    let rows = parse(file.as_bytes(), &pass("wrong")).unwrap();
    assert!(tokens(&rows).is_empty());
    assert!(
        reasons(&rows)[0].starts_with("wrong key or passphrase"),
        "{:?}",
        reasons(&rows)
    );
    // An iteration count past the cap is refused before any work.
    let rows = parse(
        pbkdf2_file_claiming("qwerty", 1000, 5_000_000).as_bytes(),
        &pass("qwerty"),
    )
    .unwrap();
    assert!(reasons(&rows)[0].contains("PBKDF2"), "{:?}", reasons(&rows));
}

#[test]
fn hostile_or_foreign_xml_is_refused() {
    let doctype = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>
<KeyContainer xmlns="urn:ietf:params:xml:ns:keyprov:pskc"><KeyPackage>&lol2;</KeyPackage></KeyContainer>"#;
    assert!(
        parse(doctype.as_bytes(), &Keys::default())
            .unwrap_err()
            .contains("DOCTYPE")
    );
    let deep = format!(
        r#"<KeyContainer xmlns="urn:ietf:params:xml:ns:keyprov:pskc">{}{}</KeyContainer>"#,
        "<a>".repeat(100),
        "</a>".repeat(100)
    );
    assert!(
        parse(deep.as_bytes(), &Keys::default())
            .unwrap_err()
            .contains("deeper")
    );
    // The right local names in another namespace are not PSKC.
    let foreign = plain_hotp().replace(
        "urn:ietf:params:xml:ns:keyprov:pskc\"",
        "urn:example:not-pskc\"",
    );
    assert!(parse(foreign.as_bytes(), &Keys::default()).is_err());
    assert!(parse(b"not xml at all <", &Keys::default()).is_err());
    let undefined = plain_hotp().replace("Issuer-A", "&undefined;");
    assert!(parse(undefined.as_bytes(), &Keys::default()).is_err());
}

/// csv2pskc of the Python pskc package, run with the system's Python.
fn csv2pskc(args: &[&str], csv: &std::path::Path) -> Option<Vec<u8>> {
    let probe = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import pskc.scripts.csv2pskc"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3-pskc is not installed (apt-get install python3-pskc); .ci/run installs it"
        );
        eprintln!("SKIPPED: python3-pskc is not installed (apt-get install python3-pskc)");
        return None;
    }
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "from pskc.scripts import csv2pskc; csv2pskc.main()"])
        .args(args)
        .arg(csv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.stdout)
}

#[test]
fn files_written_by_python_pskc_import_with_their_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("t.csv");
    std::fs::write(
        &csv,
        "serial,secret,algorithm,response_length,time_interval\n\
         11111111,3132333435363738393031323334353637383930,urn:ietf:params:xml:ns:keyprov:pskc:totp,6,30\n\
         22222222,3132333435363738393031323334353637383930,urn:ietf:params:xml:ns:keyprov:pskc:hotp,8,\n",
    )
    .unwrap();
    let Some(by_password) = csv2pskc(&["-p", "hunter2"], &csv) else {
        return;
    };
    let keys = Keys {
        key: None,
        password: Some("hunter2".into()),
    };
    let rows = parse(&by_password, &keys).unwrap();
    assert_eq!(
        tokens(&rows),
        [
            ("11111111", SECRET, Kind::Totp, 6),
            ("22222222", SECRET, Kind::Hotp, 8)
        ]
    );
    let key_hex = "000102030405060708090a0b0c0d0e0f";
    let by_key = csv2pskc(&["-s", key_hex], &csv).unwrap();
    let keys = Keys {
        key: Some((0u8..16).collect()),
        password: None,
    };
    let rows = parse(&by_key, &keys).unwrap();
    assert_eq!(tokens(&rows).len(), 2, "{:?}", reasons(&rows));
    assert!(tokens(&rows).iter().all(|t| t.1 == SECRET));
}
