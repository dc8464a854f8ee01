//! The master key: 32 random bytes kept in a file outside the data directory.
//! It seals token seeds (AES-256-GCM) before they reach the store, keys PIN
//! verifiers (HMAC-SHA256), and gives the check value the store keeps to notice
//! a wrong key file at start.
//!
//! Each use has its own subkey derived with HKDF-SHA256, so a sealed blob and a
//! keyed hash never share a key. This module must never print, log or put into
//! an error message a key byte, a plaintext or a derived subkey; [`MasterKey`]'s
//! `Debug` prints `MasterKey(<redacted>)`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

/// The length of a master key in bytes.
pub const KEY_LEN: usize = 32;

/// The first byte of every sealed blob: the format (AES-256-GCM under the
/// HKDF "seal" subkey, 96-bit random nonce, 128-bit tag).
const SEAL_VERSION: u8 = 1;
/// Version byte + nonce + tag: the size of a sealed empty plaintext.
const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + 16;

/// HKDF salt: fixed, names the scheme (RFC 5869 allows a non-secret constant).
const HKDF_SALT: &[u8] = b"watchword master key v1";
/// HKDF info of the sealing subkey.
const INFO_SEAL: &[u8] = b"watchword/seal/aes-256-gcm/v1";
/// HKDF info prefix of the keyed-hash subkeys (the domain follows).
const INFO_HASH: &[u8] = b"watchword/keyed-hash/";
/// HKDF info prefix of the per-domain sealing subkeys (the domain follows).
const INFO_SEAL_DOMAIN: &[u8] = b"watchword/sealed-domain/";

/// The longest key file accepted: 64 hex characters and a CR LF.
const MAX_FILE_LEN: u64 = 66;

/// Why a master key could not be loaded or created, or why sealed data did not
/// open. No message carries a key byte or any plaintext.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file does not exist.
    #[error("master key file {} does not exist; create one with `watchword keygen {}` (keep it outside the data directory)", .path.display(), .path.display())]
    Missing {
        /// The path looked at.
        path: PathBuf,
    },
    /// The key file exists but could not be read (or its permissions looked at).
    #[error("master key file {} cannot be read: {source}", .path.display())]
    Unreadable {
        /// The path looked at.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The key file's content is not 64 lowercase hex characters.
    #[error("master key file {} is not in the expected format: {reason} (expected 64 lowercase hex characters and an optional newline, as written by `watchword keygen`)", .path.display())]
    Format {
        /// The path looked at.
        path: PathBuf,
        /// What is wrong, without any of the content.
        reason: &'static str,
    },
    /// The key file can be read or written by group or others.
    #[error("master key file {} has mode {mode:03o}: it must not be accessible to group or others; run `chmod 600 {}`", .path.display(), .path.display())]
    PermissionsTooOpen {
        /// The path looked at.
        path: PathBuf,
        /// The file's permission bits.
        mode: u32,
    },
    /// `create` found a file (or something else) already at the path.
    #[error("master key file {} already exists; refusing to overwrite it", .path.display())]
    AlreadyExists {
        /// The path that was to be created.
        path: PathBuf,
    },
    /// `create` could not write the new key file.
    #[error("master key file {} could not be written: {source}", .path.display())]
    Write {
        /// The path that was to be created.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// Sealed data failed authentication or is malformed.
    #[error("sealed data does not open: wrong master key or corrupted data")]
    Open,
}

/// 32 random bytes kept in a file outside the data directory.
///
/// The raw bytes live in one heap allocation (moving the value copies no key
/// bytes) and are overwritten with zeros on drop; the subkeys live inside
/// `ring`'s key types. `Debug` prints `MasterKey(<redacted>)`.
pub struct MasterKey {
    bytes: Box<[u8; KEY_LEN]>,
    seal: LessSafeKey,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        // Best effort without `unsafe`: the fence and `black_box` keep the
        // compiler from dropping the writes as dead stores.
        self.bytes.fill(0);
        std::hint::black_box(&mut *self.bytes);
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

impl MasterKey {
    /// A new key from the operating system's CSPRNG.
    ///
    /// # Panics
    /// If the operating system's random generator fails (nothing safe to do then).
    pub fn generate() -> MasterKey {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the operating system's random generator failed");
        let key = MasterKey::from_bytes(bytes);
        wipe(&mut bytes);
        key
    }

    /// A key from given bytes (tests, and [`MasterKey::load`]).
    pub fn from_bytes(b: [u8; KEY_LEN]) -> MasterKey {
        let bytes = Box::new(b);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&bytes[..]);
        let okm = prk
            .expand(&[INFO_SEAL], &AES_256_GCM)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let seal = LessSafeKey::new(UnboundKey::from(okm));
        MasterKey { bytes, seal }
    }

    /// Reads a key file: 64 lowercase hex characters, optionally followed by a
    /// newline. On unix a file readable or writable by group or others is
    /// refused.
    pub fn load(path: &Path) -> Result<MasterKey, KeyError> {
        let unreadable = |source| KeyError::Unreadable {
            path: path.to_owned(),
            source,
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(KeyError::Missing {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(unreadable(e)),
        };
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.is_file() {
            return Err(KeyError::Format {
                path: path.to_owned(),
                reason: "not a regular file",
            });
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(KeyError::PermissionsTooOpen {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        // Read at most one byte more than a valid file can hold: the size is
        // checked before anything else is believed.
        let mut text = Vec::with_capacity(MAX_FILE_LEN as usize + 1);
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut text)
            .map_err(unreadable)?;
        let result = parse_hex_key(&text).map_err(|reason| KeyError::Format {
            path: path.to_owned(),
            reason,
        });
        wipe(&mut text);
        let mut bytes = result?;
        let key = MasterKey::from_bytes(bytes);
        wipe(&mut bytes);
        Ok(key)
    }

    /// Generates a key and writes it to a new file at `path` (mode 0600 on
    /// unix) as 64 lowercase hex characters and a newline, then syncs the file
    /// and its directory. An existing file is never overwritten.
    pub fn create(path: &Path) -> Result<MasterKey, KeyError> {
        let key = MasterKey::generate();
        let write_err = |source| KeyError::Write {
            path: path.to_owned(),
            source,
        };
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = match options.open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(KeyError::AlreadyExists {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(write_err(e)),
        };
        let mut text = key.hex();
        text.push(b'\n');
        let written = file.write_all(&text).and_then(|()| file.sync_all());
        wipe(&mut text);
        if let Err(e) = written {
            drop(file);
            // The file is ours (create_new) and incomplete: do not leave it.
            let _ = std::fs::remove_file(path);
            return Err(write_err(e));
        }
        drop(file);
        sync_parent_dir(path).map_err(write_err)?;
        Ok(key)
    }

    /// Encrypts `plaintext` bound to `aad` (which is authenticated, not
    /// stored): `version (1 byte) || nonce (12 bytes) || ciphertext || tag (16 bytes)`.
    ///
    /// # Panics
    /// If the operating system's random generator fails.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the operating system's random generator failed");
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .expect("AES-GCM sealing fails only on inputs far beyond any seed's size");
        out.extend_from_slice(&body);
        out
    }

    /// Decrypts what [`MasterKey::seal`] produced under the same key and `aad`.
    /// Any mismatch (key, aad, a changed byte, a cut blob, an unknown version)
    /// is [`KeyError::Open`].
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        if sealed.len() < SEAL_OVERHEAD || sealed[0] != SEAL_VERSION {
            return Err(KeyError::Open);
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN])
            .map_err(|_| KeyError::Open)?;
        let mut body = sealed[1 + NONCE_LEN..].to_vec();
        let len = self
            .seal
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .map_err(|_| KeyError::Open)?
            .len();
        body.truncate(len);
        Ok(body)
    }

    /// The AES-256-GCM key of `domain` (HKDF-SHA256, info
    /// `watchword/sealed-domain/<domain>`), unrelated to the token seeds' key.
    fn domain_key(&self, domain: &str) -> LessSafeKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&self.bytes[..]);
        let info = [INFO_SEAL_DOMAIN, domain.as_bytes()];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        LessSafeKey::new(UnboundKey::from(okm))
    }

    /// Like [`MasterKey::seal`] under the subkey of `domain`, encrypting
    /// `body` in place (large bodies are not copied).
    ///
    /// # Panics
    /// If the operating system's random generator fails.
    pub fn seal_in(&self, domain: &str, mut body: Vec<u8>, aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the operating system's random generator failed");
        self.domain_key(domain)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .expect("AES-GCM seals up to 64 GiB");
        let mut out = Vec::with_capacity(1 + NONCE_LEN);
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.append(&mut body);
        out
    }

    /// Opens what [`MasterKey::seal_in`] sealed under `domain` and `aad`, in
    /// place. Any mismatch is [`KeyError::Open`].
    pub fn open_in(
        &self,
        domain: &str,
        mut sealed: Vec<u8>,
        aad: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        if sealed.len() < SEAL_OVERHEAD || sealed[0] != SEAL_VERSION {
            return Err(KeyError::Open);
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN])
            .map_err(|_| KeyError::Open)?;
        let len = self
            .domain_key(domain)
            .open_within(nonce, Aad::from(aad), &mut sealed, 1 + NONCE_LEN..)
            .map_err(|_| KeyError::Open)?
            .len();
        sealed.truncate(len);
        Ok(sealed)
    }

    /// HMAC-SHA256 of `data` under a subkey derived from the master key and
    /// `domain` (HKDF-SHA256, info `watchword/keyed-hash/<domain>`): different
    /// domains give unrelated hashes, and none shares a key with sealing.
    pub fn keyed_hash(&self, domain: &str, data: &[u8]) -> [u8; 32] {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&self.bytes[..]);
        let info = [INFO_HASH, domain.as_bytes()];
        let okm = prk
            .expand(&info, hmac::HMAC_SHA256)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let key = hmac::Key::from(okm);
        let tag = hmac::sign(&key, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// `keyed_hash("key-check", b"")`: stored in the database at its first open
    /// and compared at every later one, to refuse a wrong key file. It reveals
    /// nothing about the key.
    pub fn check_value(&self) -> [u8; 32] {
        self.keyed_hash("key-check", b"")
    }

    /// The key as lowercase hex (for writing the key file).
    fn hex(&self) -> Vec<u8> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = Vec::with_capacity(2 * KEY_LEN + 1);
        for b in self.bytes.iter() {
            out.push(DIGITS[usize::from(b >> 4)]);
            out.push(DIGITS[usize::from(b & 0x0f)]);
        }
        out
    }
}

/// Parses 64 lowercase hex characters and an optional `\n` (or `\r\n`).
/// The error says what is wrong, never what the content was.
fn parse_hex_key(text: &[u8]) -> Result<[u8; KEY_LEN], &'static str> {
    let hex = text
        .strip_suffix(b"\r\n")
        .or_else(|| text.strip_suffix(b"\n"))
        .unwrap_or(text);
    if hex.len() != 2 * KEY_LEN {
        return Err(if hex.len() < 2 * KEY_LEN {
            "too short"
        } else {
            "too long"
        });
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Err("uppercase hex digits"),
        _ => Err("a character that is not a hex digit"),
    };
    let mut out = [0u8; KEY_LEN];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(out)
}

/// Overwrites a buffer that held key material.
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(buf);
}

/// Makes a newly created entry in `path`'s directory durable (unix: fsync the
/// directory; elsewhere nothing to do).
pub(crate) fn sync_parent_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> MasterKey {
        MasterKey::from_bytes([b; KEY_LEN])
    }

    #[test]
    fn seal_open_round_trip() {
        let k = MasterKey::generate();
        for len in [0usize, 1, 20, 64, 1000] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sealed = k.seal(&plain, b"tenant/serial");
            assert_eq!(sealed.len(), SEAL_OVERHEAD + len);
            assert_eq!(sealed[0], SEAL_VERSION);
            assert_eq!(k.open(&sealed, b"tenant/serial").unwrap(), plain);
        }
    }

    #[test]
    fn sealing_twice_uses_fresh_nonces() {
        let k = key(1);
        assert_ne!(k.seal(b"seed", b""), k.seal(b"seed", b""));
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = key(1).seal(b"seed bytes", b"aad");
        assert!(matches!(key(2).open(&sealed, b"aad"), Err(KeyError::Open)));
    }

    #[test]
    fn tampered_byte_fails() {
        let k = key(3);
        let sealed = k.seal(b"seed bytes", b"aad");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(k.open(&bad, b"aad"), Err(KeyError::Open)),
                "byte {i}"
            );
        }
        assert!(matches!(
            k.open(&sealed[..sealed.len() - 1], b"aad"),
            Err(KeyError::Open)
        ));
        assert!(matches!(k.open(&[], b"aad"), Err(KeyError::Open)));
    }

    #[test]
    fn wrong_aad_fails() {
        let k = key(4);
        let sealed = k.seal(b"seed bytes", b"acme/T1");
        assert!(matches!(k.open(&sealed, b"acme/T2"), Err(KeyError::Open)));
        assert!(matches!(k.open(&sealed, b""), Err(KeyError::Open)));
    }

    #[test]
    fn open_error_message_names_no_secret() {
        let msg = KeyError::Open.to_string();
        assert_eq!(
            msg,
            "sealed data does not open: wrong master key or corrupted data"
        );
    }

    #[test]
    fn keyed_hash_separates_domains_and_keys() {
        let k = key(5);
        assert_eq!(k.keyed_hash("pin", b"1234"), k.keyed_hash("pin", b"1234"));
        assert_ne!(k.keyed_hash("pin", b"1234"), k.keyed_hash("pin2", b"1234"));
        assert_ne!(k.keyed_hash("pin", b"1234"), k.keyed_hash("pin", b"1235"));
        assert_ne!(
            k.keyed_hash("pin", b"1234"),
            key(6).keyed_hash("pin", b"1234")
        );
        assert_eq!(k.check_value(), k.keyed_hash("key-check", b""));
        assert_ne!(k.check_value(), key(6).check_value());
        // The subkey is not the master key itself.
        let direct = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &[5; KEY_LEN]), b"");
        assert_ne!(k.check_value()[..], direct.as_ref()[..]);
    }

    #[test]
    fn create_then_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let created = MasterKey::create(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        assert!(
            text[..64]
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let loaded = MasterKey::load(&path).unwrap();
        assert_eq!(created.check_value(), loaded.check_value());
        let sealed = created.seal(b"x", b"y");
        assert_eq!(loaded.open(&sealed, b"y").unwrap(), b"x");
    }

    #[test]
    fn load_accepts_no_newline_and_refuses_bad_formats() {
        let dir = tempfile::tempdir().unwrap();
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let write = |name: &str, content: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
            p
        };
        let a = MasterKey::load(&write("a", hex)).unwrap();
        let b = MasterKey::load(&write("b", &format!("{hex}\n"))).unwrap();
        let mut raw = [0u8; KEY_LEN];
        for (i, r) in raw.iter_mut().enumerate() {
            *r = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        assert_eq!(a.check_value(), MasterKey::from_bytes(raw).check_value());
        assert_eq!(a.check_value(), b.check_value());
        for (name, content) in [
            ("short", &hex[..62]),
            ("long", &format!("{hex}00")[..]),
            ("upper", &hex.to_uppercase()[..]),
            ("junk", &format!("{}zz", &hex[..62])[..]),
            ("twolines", &format!("{hex}\n\n")[..]),
            ("empty", ""),
        ] {
            let err = MasterKey::load(&write(name, content)).unwrap_err();
            assert!(matches!(err, KeyError::Format { .. }), "{name}: {err}");
            assert!(
                !err.to_string().contains(&hex[..8]),
                "{name}: message leaks content"
            );
        }
    }

    #[test]
    fn load_missing_file_says_how_to_create_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.key");
        let err = MasterKey::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::Missing { .. }));
        assert!(err.to_string().contains("watchword keygen"), "{err}");
    }

    #[test]
    fn create_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let first = MasterKey::create(&path).unwrap();
        let before = std::fs::read(&path).unwrap();
        let err = MasterKey::create(&path).unwrap_err();
        assert!(matches!(err, KeyError::AlreadyExists { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(
            MasterKey::load(&path).unwrap().check_value(),
            first.check_value()
        );
    }

    #[cfg(unix)]
    #[test]
    fn too_open_permissions_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        MasterKey::create(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = MasterKey::load(&path).unwrap_err();
            assert!(
                matches!(err, KeyError::PermissionsTooOpen { .. }),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        MasterKey::load(&path).unwrap();
    }

    #[test]
    fn debug_prints_no_key_bytes() {
        let k = MasterKey::from_bytes([0xab; KEY_LEN]);
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "MasterKey(<redacted>)");
        let pretty = format!("{k:#?}");
        assert!(
            !pretty.contains("ab") && !pretty.contains("171"),
            "{pretty}"
        );
    }
}
