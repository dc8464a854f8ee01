//! The restart snapshot: what the engine holds only in memory (pending
//! challenges and their tombstones, the keyed limiters' windows, pending
//! registrations, and the keys and hash seeds that make them usable again),
//! written at a graceful shutdown and read back at the next start.
//!
//! File layout: an 8-byte magic, a plain header (format, the writing build's
//! version, when it was written), then the body sealed with AES-256-GCM
//! under the master key's `snapshot` subkey, the magic and header as
//! associated data. A changed, cut or foreign file therefore fails to open
//! as a whole: it is never half-loaded. The header is readable without the
//! key, so a snapshot from another version is refused with both versions
//! named.
//!
//! The hash seeds are kept because the table's shard of a challenge is
//! written into its id and its subject index is keyed by the same hasher,
//! and because the limiters key their windows by keyed hashes of the
//! destinations (never the destinations themselves): a restart with new
//! seeds could find neither.
//!
//! This module must never write a code, seed or destination outside the
//! sealed body, nor put one in an error message.

use std::fmt;

use crate::secret::MasterKey;
use crate::types::ChallengeId;

/// The first bytes of every snapshot file.
const MAGIC: &[u8; 8] = b"WWSNAP\0\x01";
/// The body's layout version.
const FORMAT: u16 = 1;
/// The master key's subkey domain for snapshots.
const KEY_DOMAIN: &str = "snapshot";
/// The body's last four bytes: a body that ends anywhere else is cut.
const END: u32 = 0x454e_4421;
/// The hasher seed check: the table's hasher applied to this must give the
/// stored value, or the build hashes differently.
const PROBE: &[u8] = b"watchword snapshot probe";

/// The version of the build, written in every snapshot.
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a snapshot could not be read. No message carries a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not a snapshot file at all, or cut before its header ended.
    #[error("not a Watchword snapshot (bad magic or header)")]
    NotASnapshot,
    /// Written by another version of Watchword or in another layout.
    #[error(
        "written by watchword {found} (snapshot format {format}); this is watchword {BUILD_VERSION} (format {FORMAT})"
    )]
    OtherVersion {
        /// The writer's version.
        found: String,
        /// The writer's format number.
        format: u16,
    },
    /// The body did not authenticate: another master key, or the file was
    /// changed or cut.
    #[error("cannot be opened: another master key, or the file was changed or cut")]
    Unauthentic,
    /// The body authenticated but does not parse (a bug: never expected).
    #[error("its content is malformed ({0})")]
    Malformed(&'static str),
    /// The seeds hash differently in this build (another CPU feature set).
    #[error("this build hashes differently from the one that wrote it")]
    OtherBuild,
}

/// The 256 bits of seed of an `ahash` hasher.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HashSeeds(pub [u64; 4]);

impl fmt::Debug for HashSeeds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashSeeds(<redacted>)")
    }
}

impl HashSeeds {
    /// Fresh seeds from the CSPRNG.
    pub fn random() -> HashSeeds {
        HashSeeds(rand::random())
    }

    /// The hasher these seeds make.
    pub fn hasher(&self) -> ahash::RandomState {
        let [a, b, c, d] = self.0;
        ahash::RandomState::with_seeds(a, b, c, d)
    }

    fn probe(&self) -> u64 {
        self.hasher().hash_one(PROBE)
    }
}

/// The keys and seeds the engine's in-memory state depends on; kept in the
/// snapshot so a restart can use that state again.
#[derive(Clone)]
pub struct EngineSeeds {
    /// The challenge table's hasher (shard choice, id and subject indexes).
    pub table: HashSeeds,
    /// The limiters' key hasher.
    pub limits: HashSeeds,
    /// The key that seals CHECK states (`ws1`, `wt1`).
    pub state_seal: [u8; 32],
    /// The table's shard count (written into every challenge id).
    pub shards: u32,
}

impl fmt::Debug for EngineSeeds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineSeeds")
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

impl EngineSeeds {
    /// Fresh seeds for a table of `shards` shards.
    pub fn random(shards: u32) -> EngineSeeds {
        EngineSeeds {
            table: HashSeeds::random(),
            limits: HashSeeds::random(),
            state_seal: rand::random(),
            shards,
        }
    }
}

/// One challenge (pending, or a tombstone) as the snapshot holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct EntryRecord<'a> {
    /// Index into the snapshot's tenant names.
    pub tenant: u16,
    /// The challenge id.
    pub id: ChallengeId,
    /// The code's stored value and its digit count.
    pub code: (u64, u8),
    /// When it expires, Unix ms.
    pub expires_at_ms: u64,
    /// When its tombstone is forgotten, Unix ms (0 while pending).
    pub forget_at_ms: u64,
    /// `ChallengeState` as a byte.
    pub state: u8,
    /// `Channel` on the wire.
    pub channel: u8,
    /// Wrong codes still allowed.
    pub attempts_left: u8,
    /// Sends so far.
    pub sends: u8,
    /// `DeliveryState` as a byte.
    pub delivery: u8,
    /// Index into the snapshot's carrier names, or `u8::MAX`.
    pub carrier: u8,
    /// The subject.
    pub subject: &'a [u8],
    /// The normalised destination.
    pub destination: &'a [u8],
}

impl fmt::Debug for EntryRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntryRecord")
            .field("tenant", &self.tenant)
            .field("id", &self.id)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// One keyed limiter's windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimiterWindows {
    /// `destination`, `subject`, `tenant`, `country`, or `prefix:<prefix>`.
    pub name: String,
    /// What it remembers per key.
    pub windows: Windows,
}

/// A limiter's per-key memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Windows {
    /// Exact logs: the low 32 bits of each send's ms time, oldest first.
    Exact(Vec<(u64, Vec<u32>)>),
    /// GCRA: the theoretical arrival time per key, microseconds.
    Gcra(Vec<(u64, u64)>),
}

/// A registration waiting for its code.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfirmationRecord {
    /// Index into the snapshot's tenant names.
    pub tenant: u16,
    /// The method being confirmed.
    pub method: u64,
    /// The challenge whose code confirms it.
    pub challenge: ChallengeId,
    /// The user.
    pub subject: String,
    /// When it lapses, Unix ms.
    pub expires_at_ms: u64,
}

impl fmt::Debug for ConfirmationRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfirmationRecord")
            .field("tenant", &self.tenant)
            .field("challenge", &self.challenge)
            .finish_non_exhaustive()
    }
}

/// Writes a snapshot body section by section, in the order [`Reader`]
/// reads it back; [`Writer::seal`] makes the file's bytes.
pub struct Writer {
    buf: Vec<u8>,
    entries_at: usize,
    entries: u32,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("bytes", &self.buf.len())
            .finish_non_exhaustive()
    }
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
    buf.extend_from_slice(&s[..s.len().min(usize::from(u16::MAX))]);
}

impl Writer {
    /// Starts a body: seeds, tenant names, carrier names; entries follow.
    pub fn new(seeds: &EngineSeeds, tenants: &[String], carriers: &[String], room: usize) -> Self {
        let mut buf = Vec::with_capacity(room + 4096);
        for s in seeds.table.0.iter().chain(&seeds.limits.0) {
            buf.extend_from_slice(&s.to_le_bytes());
        }
        buf.extend_from_slice(&seeds.table.probe().to_le_bytes());
        buf.extend_from_slice(&seeds.state_seal);
        buf.extend_from_slice(&seeds.shards.to_le_bytes());
        buf.extend_from_slice(&(tenants.len() as u16).to_le_bytes());
        for t in tenants {
            put_str(&mut buf, t.as_bytes());
        }
        buf.push(carriers.len().min(254) as u8);
        for c in carriers.iter().take(254) {
            put_str(&mut buf, c.as_bytes());
        }
        let entries_at = buf.len();
        buf.extend_from_slice(&0u32.to_le_bytes());
        Writer {
            buf,
            entries_at,
            entries: 0,
        }
    }

    /// Appends one challenge.
    pub fn entry(&mut self, e: &EntryRecord<'_>) {
        let b = &mut self.buf;
        b.extend_from_slice(&e.tenant.to_le_bytes());
        b.extend_from_slice(&e.id.0);
        b.extend_from_slice(&e.code.0.to_le_bytes());
        b.push(e.code.1);
        b.extend_from_slice(&e.expires_at_ms.to_le_bytes());
        b.extend_from_slice(&e.forget_at_ms.to_le_bytes());
        b.extend_from_slice(&[
            e.state,
            e.channel,
            e.attempts_left,
            e.sends,
            e.delivery,
            e.carrier,
        ]);
        put_str(b, e.subject);
        put_str(b, e.destination);
        self.entries += 1;
    }

    /// Challenges appended so far.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Ends the body with the limiters and registrations, and seals it:
    /// the bytes of the file.
    pub fn seal(
        mut self,
        limiters: &[LimiterWindows],
        confirmations: &[ConfirmationRecord],
        now_ms: u64,
        key: &MasterKey,
    ) -> Vec<u8> {
        let n = self.entries.to_le_bytes();
        self.buf[self.entries_at..self.entries_at + 4].copy_from_slice(&n);
        let b = &mut self.buf;
        b.extend_from_slice(&(limiters.len() as u16).to_le_bytes());
        for l in limiters {
            put_str(b, l.name.as_bytes());
            match &l.windows {
                Windows::Exact(keys) => {
                    b.push(0);
                    b.extend_from_slice(&(keys.len() as u32).to_le_bytes());
                    for (k, stamps) in keys {
                        b.extend_from_slice(&k.to_le_bytes());
                        b.push(stamps.len().min(255) as u8);
                        for s in stamps.iter().take(255) {
                            b.extend_from_slice(&s.to_le_bytes());
                        }
                    }
                }
                Windows::Gcra(keys) => {
                    b.push(1);
                    b.extend_from_slice(&(keys.len() as u32).to_le_bytes());
                    for (k, tat) in keys {
                        b.extend_from_slice(&k.to_le_bytes());
                        b.extend_from_slice(&tat.to_le_bytes());
                    }
                }
            }
        }
        b.extend_from_slice(&(confirmations.len() as u32).to_le_bytes());
        for c in confirmations {
            b.extend_from_slice(&c.tenant.to_le_bytes());
            b.extend_from_slice(&c.method.to_le_bytes());
            b.extend_from_slice(&c.challenge.0);
            put_str(b, c.subject.as_bytes());
            b.extend_from_slice(&c.expires_at_ms.to_le_bytes());
        }
        b.extend_from_slice(&END.to_le_bytes());

        let header = header(now_ms);
        let sealed = key.seal_in(KEY_DOMAIN, std::mem::take(&mut self.buf), &header);
        let mut file = header;
        file.extend_from_slice(&sealed);
        file
    }
}

/// The magic and the plain header: format, version, time written.
fn header(now_ms: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(64);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT.to_le_bytes());
    put_str(&mut h, BUILD_VERSION.as_bytes());
    h.extend_from_slice(&now_ms.to_le_bytes());
    h
}

/// What a snapshot's plain header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The writer's version.
    pub version: String,
    /// When it was written, Unix ms.
    pub written_at_ms: u64,
}

/// Reads the plain header; `Ok((header, header_len))`.
fn read_header(file: &[u8]) -> Result<(Header, usize), SnapshotError> {
    if file.len() < MAGIC.len() + 2 || &file[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    let mut c = Cursor {
        b: file,
        at: MAGIC.len(),
    };
    let bad = |_| SnapshotError::NotASnapshot;
    let format = c.u16().map_err(bad)?;
    let version = String::from_utf8_lossy(c.str().map_err(bad)?).into_owned();
    let written_at_ms = c.u64().map_err(bad)?;
    if format != FORMAT || version != BUILD_VERSION {
        return Err(SnapshotError::OtherVersion {
            found: version,
            format,
        });
    }
    Ok((
        Header {
            version,
            written_at_ms,
        },
        c.at,
    ))
}

/// Opens a snapshot file's bytes and reads it back section by section.
pub struct Reader {
    body: Vec<u8>,
    at: usize,
    /// The header.
    pub header: Header,
    /// The seeds and keys.
    pub seeds: EngineSeeds,
    /// Tenant names, by the index entries use.
    pub tenants: Vec<String>,
    /// Carrier names, by the index entries use.
    pub carriers: Vec<String>,
    /// Challenges still to read.
    pub entries_left: u32,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("header", &self.header)
            .field("entries_left", &self.entries_left)
            .finish_non_exhaustive()
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(SnapshotError::Malformed("cut short"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn str(&mut self) -> Result<&'a [u8], SnapshotError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn string(&mut self) -> Result<String, SnapshotError> {
        String::from_utf8(self.str()?.to_vec()).map_err(|_| SnapshotError::Malformed("a name"))
    }
}

impl Reader {
    /// Checks the header, opens the body with `key` and reads the seeds and
    /// names. Nothing is trusted before the whole body has authenticated.
    pub fn open(file: Vec<u8>, key: &MasterKey) -> Result<Reader, SnapshotError> {
        let (header, header_len) = read_header(&file)?;
        let aad = file[..header_len].to_vec();
        let mut file = file;
        let sealed = file.split_off(header_len);
        let body = key
            .open_in(KEY_DOMAIN, sealed, &aad)
            .map_err(|_| SnapshotError::Unauthentic)?;
        let mut c = Cursor { b: &body, at: 0 };
        let mut seed = [0u64; 8];
        for s in &mut seed {
            *s = c.u64()?;
        }
        let probe = c.u64()?;
        let state_seal = c.array()?;
        let shards = c.u32()?;
        let n = c.u16()?;
        let tenants = (0..n).map(|_| c.string()).collect::<Result<_, _>>()?;
        let n = c.u8()?;
        let carriers = (0..n).map(|_| c.string()).collect::<Result<_, _>>()?;
        let entries_left = c.u32()?;
        let table = HashSeeds([seed[0], seed[1], seed[2], seed[3]]);
        if table.probe() != probe {
            return Err(SnapshotError::OtherBuild);
        }
        if !shards.is_power_of_two() {
            return Err(SnapshotError::Malformed("shard count"));
        }
        let at = c.at;
        Ok(Reader {
            body,
            at,
            header,
            seeds: EngineSeeds {
                table,
                limits: HashSeeds([seed[4], seed[5], seed[6], seed[7]]),
                state_seal,
                shards,
            },
            tenants,
            carriers,
            entries_left,
        })
    }

    /// The next challenge, `None` after the last.
    pub fn next_entry(&mut self) -> Result<Option<EntryRecord<'_>>, SnapshotError> {
        if self.entries_left == 0 {
            return Ok(None);
        }
        self.entries_left -= 1;
        let mut c = Cursor {
            b: &self.body,
            at: self.at,
        };
        let tenant = c.u16()?;
        let id = ChallengeId(c.array()?);
        let code = (c.u64()?, c.u8()?);
        let expires_at_ms = c.u64()?;
        let forget_at_ms = c.u64()?;
        let [state, channel, attempts_left, sends, delivery, carrier] = c.array()?;
        let subject = c.str()?;
        let destination = c.str()?;
        self.at = c.at;
        Ok(Some(EntryRecord {
            tenant,
            id,
            code,
            expires_at_ms,
            forget_at_ms,
            state,
            channel,
            attempts_left,
            sends,
            delivery,
            carrier,
            subject,
            destination,
        }))
    }

    /// After the last entry: the limiters' windows and the registrations.
    pub fn finish(
        mut self,
    ) -> Result<(Vec<LimiterWindows>, Vec<ConfirmationRecord>), SnapshotError> {
        while self.next_entry()?.is_some() {}
        let mut c = Cursor {
            b: &self.body,
            at: self.at,
        };
        let n = c.u16()?;
        let mut limiters = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let name = c.string()?;
            let windows = match c.u8()? {
                0 => {
                    let keys = c.u32()? as usize;
                    let mut v = Vec::with_capacity(keys.min(c.b.len() / 9));
                    for _ in 0..keys {
                        let k = c.u64()?;
                        let len = c.u8()?;
                        let stamps = (0..len).map(|_| c.u32()).collect::<Result<_, _>>()?;
                        v.push((k, stamps));
                    }
                    Windows::Exact(v)
                }
                1 => {
                    let keys = c.u32()? as usize;
                    let mut v = Vec::with_capacity(keys.min(c.b.len() / 16));
                    for _ in 0..keys {
                        v.push((c.u64()?, c.u64()?));
                    }
                    Windows::Gcra(v)
                }
                _ => return Err(SnapshotError::Malformed("limiter kind")),
            };
            limiters.push(LimiterWindows { name, windows });
        }
        let n = c.u32()? as usize;
        let mut confirmations = Vec::with_capacity(n.min(c.b.len() / 36));
        for _ in 0..n {
            confirmations.push(ConfirmationRecord {
                tenant: c.u16()?,
                method: c.u64()?,
                challenge: ChallengeId(c.array()?),
                subject: c.string()?,
                expires_at_ms: c.u64()?,
            });
        }
        if c.u32()? != END || c.at != c.b.len() {
            return Err(SnapshotError::Malformed("end marker"));
        }
        Ok((limiters, confirmations))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(key: &MasterKey) -> Vec<u8> {
        let seeds = EngineSeeds::random(64);
        let mut w = Writer::new(&seeds, &["demo".into(), "b".into()], &["sim".into()], 0);
        w.entry(&EntryRecord {
            tenant: 1,
            id: ChallengeId([7; 16]),
            code: (123_456, 6),
            expires_at_ms: 10_000,
            forget_at_ms: 0,
            state: 0,
            channel: 1,
            attempts_left: 3,
            sends: 1,
            delivery: 2,
            carrier: 0,
            subject: b"ann",
            destination: b"+14255550100",
        });
        let limiters = vec![
            LimiterWindows {
                name: "destination".into(),
                windows: Windows::Exact(vec![(9, vec![1, 2, 3])]),
            },
            LimiterWindows {
                name: "tenant".into(),
                windows: Windows::Gcra(vec![(4, 5)]),
            },
        ];
        let conf = vec![ConfirmationRecord {
            tenant: 0,
            method: 77,
            challenge: ChallengeId([1; 16]),
            subject: "bob".into(),
            expires_at_ms: 99,
        }];
        w.seal(&limiters, &conf, 5, key)
    }

    #[test]
    fn a_snapshot_reads_back_what_was_written() {
        let key = MasterKey::generate();
        let mut r = Reader::open(sample(&key), &key).unwrap();
        assert_eq!(r.tenants, ["demo", "b"]);
        assert_eq!(r.carriers, ["sim"]);
        assert_eq!(r.header.written_at_ms, 5);
        assert_eq!(r.seeds.shards, 64);
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(
            (e.tenant, e.code, e.subject),
            (1, (123_456, 6), &b"ann"[..])
        );
        assert_eq!(e.destination, b"+14255550100");
        assert!(r.next_entry().unwrap().is_none());
        let (limiters, conf) = r.finish().unwrap();
        assert_eq!(limiters.len(), 2);
        assert_eq!(limiters[1].windows, Windows::Gcra(vec![(4, 5)]));
        assert_eq!(conf[0].subject, "bob");
    }

    #[test]
    fn a_changed_cut_or_foreign_snapshot_is_refused_whole() {
        let key = MasterKey::generate();
        let file = sample(&key);
        // Any changed byte after the header fails authentication.
        for at in [file.len() - 1, file.len() / 2, 40] {
            let mut bad = file.clone();
            bad[at] ^= 1;
            assert!(Reader::open(bad, &key).is_err(), "byte {at}");
        }
        for cut in [file.len() - 1, file.len() - 17, 30] {
            assert!(
                Reader::open(file[..cut].to_vec(), &key).is_err(),
                "cut {cut}"
            );
        }
        assert_eq!(
            Reader::open(file.clone(), &MasterKey::generate()).unwrap_err(),
            SnapshotError::Unauthentic
        );
        assert_eq!(
            Reader::open(b"hello world".to_vec(), &key).unwrap_err(),
            SnapshotError::NotASnapshot
        );
        // Another version: named in the error, even without the right key.
        let mut other = Vec::from(&MAGIC[..]);
        other.extend_from_slice(&FORMAT.to_le_bytes());
        put_str(&mut other, b"9.9.9");
        other.extend_from_slice(&0u64.to_le_bytes());
        let err = Reader::open(other, &key).unwrap_err();
        assert!(err.to_string().contains("9.9.9"), "{err}");
    }

    #[test]
    fn no_secret_in_the_clear() {
        let key = MasterKey::generate();
        let file = sample(&key);
        let text = String::from_utf8_lossy(&file);
        assert!(!text.contains("4255550100") && !text.contains("ann"));
        assert!(!format!("{:?}", EngineSeeds::random(1)).contains('['));
    }
}
