//! The audit trail's rotated files: their names, their compression and their
//! retention (docs/operations.md, "Audit log").
//!
//! The writer thread renames a full audit file to `PATH.<stamp>`, the UTC
//! time of the rotation (`20250131T120000.123Z`, later than every record in
//! it, strictly increasing), then tells the archiver thread here that the
//! file is sealed. The archiver compresses each sealed file to
//! `PATH.<stamp>.zst` (zstd level 3, frame checksum) through a temporary
//! `PATH.<stamp>.zst.tmp` that is fsynced and renamed before the plain file is
//! deleted, so a crash leaves the plain file or a complete `.zst`, never a
//! partial one alone; the next start finishes the work. It then deletes the
//! oldest rotated files past `max_age_days`, beyond `max_files`, or while the
//! trail (the current file and every rotated file) is over `max_total_bytes`.
//! A file deleted by the budget or the count while records in it are younger
//! than `min_age_hours` is counted record by record
//! (`watchword_audit_deleted_early_total`) and logged as an error at most once
//! a minute.
//!
//! This module must never run on the recording path or the writer thread
//! (compressing 64 MiB takes a fraction of a second), never touch the current
//! file or a rotated file before it is sealed, never delete a plain file
//! before its `.zst` is durable, and never write a record of its own: it only
//! copies what the writer wrote (masked, never a code or a key).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::AuditConfig;

/// The zstd level of rotated files: about 10:1 on audit lines at a few
/// hundred MB/s on one core.
const LEVEL: i32 = 3;

/// How often the archiver looks at the files when no rotation wakes it (age
/// retention and the early-deletion report need no more).
const IDLE: Duration = Duration::from_secs(30);

/// The shortest time between two early-deletion error lines.
const EARLY_REPORT_EVERY: Duration = Duration::from_secs(60);

/// The shortest time between two archiver I/O error lines.
const ERROR_REPORT_EVERY: Duration = Duration::from_secs(1);

/// The length of a stamp, `20250131T120000.123Z`.
const STAMP_LEN: usize = 20;

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `ms` (since the Unix epoch) as a file name stamp: ISO 8601 basic format,
/// UTC, milliseconds (`20250131T120000.123Z`). Fixed width, so names sort by
/// time.
pub(crate) fn stamp(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t)
        .to_string()
        .replace(['-', ':'], "")
}

/// The milliseconds a stamp made by [`stamp`] stands for; `None` for anything
/// else.
pub(crate) fn parse_stamp(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != STAMP_LEN || b[8] != b'T' || b[15] != b'.' || b[19] != b'Z' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !(digits(0..8) && digits(9..15) && digits(16..19)) {
        return None;
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..19]
    );
    let t = humantime::parse_rfc3339(&rfc).ok()?;
    let ms = u64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()?;
    (stamp(ms) == s).then_some(ms)
}

/// One rotated file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rotated {
    /// Its path.
    pub(crate) path: PathBuf,
    /// Its stamp: when it was rotated, milliseconds since the Unix epoch.
    pub(crate) stamp_ms: u64,
    /// Whether it is the `.zst`.
    pub(crate) compressed: bool,
    /// Its size on disk, bytes.
    pub(crate) bytes: u64,
}

/// What a look at the directory found beside the current file.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Rotated files, plain and compressed, oldest first (a plain file before
    /// the `.zst` of the same stamp).
    pub(crate) rotated: Vec<Rotated>,
    /// Temporary files of compressions that did not finish.
    pub(crate) temps: Vec<PathBuf>,
    /// Rotated files of the former scheme (`PATH.1` newest, `PATH.2`, ...).
    pub(crate) legacy: Vec<PathBuf>,
}

/// The names of the trail's files: the current file and what rotation makes
/// of it.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// The current file.
    pub(crate) current: PathBuf,
    dir: PathBuf,
    base: OsString,
}

impl Names {
    /// The names around the current file `current`.
    pub(crate) fn new(current: &Path) -> Names {
        let dir = match current.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Names {
            current: current.to_path_buf(),
            dir,
            base: current.file_name().unwrap_or_default().to_os_string(),
        }
    }

    /// `PATH.<stamp><suffix>`.
    fn with(&self, stamp_ms: u64, suffix: &str) -> PathBuf {
        let mut name = self.base.clone();
        name.push(".");
        name.push(stamp(stamp_ms));
        name.push(suffix);
        self.dir.join(name)
    }

    /// The plain rotated file of `stamp_ms`.
    pub(crate) fn plain(&self, stamp_ms: u64) -> PathBuf {
        self.with(stamp_ms, "")
    }

    /// Whether a rotated file of `stamp_ms` exists, plain or compressed.
    pub(crate) fn taken(&self, stamp_ms: u64) -> bool {
        self.with(stamp_ms, "").exists() || self.with(stamp_ms, ".zst").exists()
    }

    /// Everything in the directory that belongs to the trail.
    pub(crate) fn scan(&self) -> std::io::Result<Scan> {
        let mut scan = Scan::default();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(suffix) = suffix_of(&name, &self.base) else {
                continue;
            };
            let path = entry.path();
            if !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()) {
                scan.legacy.push(path);
                continue;
            }
            if suffix.len() < STAMP_LEN || !suffix.is_char_boundary(STAMP_LEN) {
                continue;
            }
            let (stamp_part, kind) = suffix.split_at(STAMP_LEN);
            let Some(stamp_ms) = parse_stamp(stamp_part) else {
                continue;
            };
            match kind {
                "" | ".zst" => {
                    let bytes = entry.metadata().map_or(0, |m| m.len());
                    scan.rotated.push(Rotated {
                        path,
                        stamp_ms,
                        compressed: kind == ".zst",
                        bytes,
                    });
                }
                ".zst.tmp" => scan.temps.push(path),
                _ => {}
            }
        }
        scan.rotated
            .sort_by_key(|r| (r.stamp_ms, r.compressed, r.path.clone()));
        Ok(scan)
    }

    /// Renames rotated files of the former scheme (`PATH.1` newest) to the
    /// stamp of their modification time, so that the archiver compresses and
    /// retains them like any other. Returns how many were renamed.
    pub(crate) fn adopt_legacy(&self, legacy: &[PathBuf]) -> std::io::Result<usize> {
        let mut renamed = 0;
        for old in legacy {
            let mtime = std::fs::metadata(old)?.modified().unwrap_or(UNIX_EPOCH);
            let mut ms = u64::try_from(
                mtime
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis(),
            )
            .unwrap_or(0);
            while self.taken(ms) {
                ms += 1;
            }
            std::fs::rename(old, self.plain(ms))?;
            renamed += 1;
        }
        Ok(renamed)
    }
}

/// What follows `base.` in `name`, when `name` starts with it.
fn suffix_of<'a>(name: &'a OsStr, base: &OsStr) -> Option<&'a str> {
    let name = name.to_str()?;
    let base = base.to_str()?;
    name.strip_prefix(base)?.strip_prefix('.')
}

/// Why a rotated file is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// Its newest record is older than `max_age_days`.
    Age,
    /// The trail is over `max_total_bytes`.
    Budget,
    /// More rotated files than `max_files`.
    Count,
}

impl Why {
    fn name(self) -> &'static str {
        match self {
            Why::Age => "age",
            Why::Budget => "budget",
            Why::Count => "count",
        }
    }
}

/// The retention rules, in milliseconds and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    /// Rotated files older than this go (`None`: no age limit).
    pub(crate) max_age_ms: Option<u64>,
    /// The disk budget of the whole trail.
    pub(crate) max_total_bytes: u64,
    /// Rotated files kept at most (`None`: no count limit).
    pub(crate) max_files: Option<u32>,
    /// A record younger than this deleted by the budget or the count is
    /// deleted early.
    pub(crate) min_age_ms: u64,
}

impl Retention {
    /// The rules of `cfg`.
    pub(crate) fn of(cfg: &AuditConfig) -> Retention {
        const DAY_MS: u64 = 24 * 3600 * 1000;
        Retention {
            max_age_ms: (cfg.max_age_days > 0).then(|| u64::from(cfg.max_age_days) * DAY_MS),
            max_total_bytes: cfg.max_total_bytes,
            max_files: cfg.max_files,
            min_age_ms: u64::from(cfg.min_age_hours) * 3600 * 1000,
        }
    }
}

/// The rotated files to delete at `now_ms`, as indexes into `files` (oldest
/// first, as [`Names::scan`] sorts them) with the reason: first those past
/// the age limit, then the oldest beyond the count, then the oldest while
/// the trail (`current_bytes` plus every rotated file) is over the budget.
/// Pure: time is an argument.
pub(crate) fn plan(
    files: &[Rotated],
    current_bytes: u64,
    now_ms: u64,
    r: &Retention,
) -> Vec<(usize, Why)> {
    let mut total = current_bytes + files.iter().map(|f| f.bytes).sum::<u64>();
    let mut left = files.len();
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let why = if r
            .max_age_ms
            .is_some_and(|max| now_ms.saturating_sub(f.stamp_ms) > max)
        {
            Why::Age
        } else if r.max_files.is_some_and(|max| left > max as usize) {
            Why::Count
        } else if total > r.max_total_bytes {
            Why::Budget
        } else {
            // Every later file is newer and the trail no larger.
            break;
        };
        out.push((i, why));
        left -= 1;
        total -= f.bytes;
    }
    out
}

/// Whether deleting a file rotated at `stamp_ms` for `why` at `now_ms`
/// deletes records younger than `min_age_ms`.
pub(crate) fn is_early(why: Why, stamp_ms: u64, now_ms: u64, min_age_ms: u64) -> bool {
    why != Why::Age && now_ms.saturating_sub(stamp_ms) < min_age_ms
}

/// The records of a rotated file at or after `since_ms` (by their `ts_ms`;
/// a line without one, such as `audit_gap`, is no record), and the newest
/// `ts_ms` in it.
pub(crate) fn young_records(f: &Rotated, since_ms: u64) -> std::io::Result<(u64, Option<u64>)> {
    let file = File::open(&f.path)?;
    let reader: Box<dyn Read> = if f.compressed {
        Box::new(zstd::stream::read::Decoder::new(file)?)
    } else {
        Box::new(file)
    };
    let mut young = 0;
    let mut newest: Option<u64> = None;
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let mut line = Vec::with_capacity(512);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if let Some(ts) = ts_ms_of(&line) {
            newest = Some(newest.map_or(ts, |n| n.max(ts)));
            if ts >= since_ms {
                young += 1;
            }
        }
    }
    Ok((young, newest))
}

/// The `ts_ms` a record line starts with (`{"ts_ms":123,...`).
pub(crate) fn ts_ms_of(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"ts_ms\":")?;
    let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..n]).ok()?.parse().ok()
}

/// Compresses the plain rotated file `f` to its `.zst`: through a temporary
/// file, fsynced, renamed, the directory fsynced, and only then the plain
/// file deleted. On failure the temporary file is removed and the plain file
/// kept. Returns the `.zst`'s size.
pub(crate) fn compress(f: &Rotated) -> std::io::Result<u64> {
    let mut zst = f.path.clone().into_os_string();
    zst.push(".zst");
    let zst = PathBuf::from(zst);
    let mut tmp = zst.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let r = (|| {
        let src = File::open(&f.path)?;
        let mtime = src.metadata()?.modified().ok();
        let out = BufWriter::with_capacity(256 * 1024, File::create(&tmp)?);
        let mut enc = zstd::stream::write::Encoder::new(out, LEVEL)?;
        enc.include_checksum(true)?;
        std::io::copy(&mut BufReader::with_capacity(1024 * 1024, src), &mut enc)?;
        let out = enc.finish()?.into_inner().map_err(|e| e.into_error())?;
        if let Some(t) = mtime {
            // `ls -lt` keeps the order of the records; not needed otherwise.
            let _ = out.set_modified(t);
        }
        out.sync_all()?;
        let size = out.metadata()?.len();
        drop(out);
        std::fs::rename(&tmp, &zst)?;
        sync_dir(&zst)?;
        Ok(size)
    })();
    match r {
        Ok(size) => {
            std::fs::remove_file(&f.path)?;
            Ok(size)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Fsyncs the directory holding `path`, so that a rename in it is durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Early deletions waiting to be logged, at most one error line a minute.
#[derive(Debug, Default)]
pub(crate) struct EarlyReport {
    records: u64,
    files: u64,
    /// The youngest newest record among the files deleted, milliseconds old.
    newest_age_ms: Option<u64>,
    last: Option<Instant>,
}

/// One early-deletion error line's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Early {
    /// Records younger than `min_age_hours` deleted.
    pub(crate) records: u64,
    /// Files deleted with such records.
    pub(crate) files: u64,
    /// How old the youngest deleted file's newest record was, milliseconds.
    pub(crate) newest_age_ms: u64,
}

impl EarlyReport {
    /// Notes a file deleted early: `records` young records, its newest
    /// record `newest_age_ms` old.
    pub(crate) fn note(&mut self, records: u64, newest_age_ms: u64) {
        self.records += records;
        self.files += 1;
        self.newest_age_ms = Some(
            self.newest_age_ms
                .map_or(newest_age_ms, |a| a.min(newest_age_ms)),
        );
    }

    /// What to log at `now`, if anything is waiting and no line was logged
    /// in the last minute. Pure: time is an argument.
    pub(crate) fn due(&mut self, now: Instant) -> Option<Early> {
        if self.files == 0
            || self
                .last
                .is_some_and(|t| now.saturating_duration_since(t) < EARLY_REPORT_EVERY)
        {
            return None;
        }
        let e = Early {
            records: self.records,
            files: self.files,
            newest_age_ms: self.newest_age_ms.unwrap_or(0),
        };
        *self = EarlyReport {
            last: Some(now),
            ..EarlyReport::default()
        };
        Some(e)
    }
}

/// What the writer and the log tell the archiver.
#[derive(Debug)]
pub(crate) enum Msg {
    /// The file of this stamp is rotated and complete: nothing more is
    /// written to it.
    Sealed(u64),
    /// Run a pass now, then answer.
    Settle(SyncSender<()>),
}

/// The archiver: compresses sealed rotated files and applies retention.
pub(crate) struct Archiver {
    names: Names,
    retention: Retention,
    /// Files up to this stamp are complete (rotated before this start, or
    /// sealed by the writer since).
    sealed_ms: u64,
    deleted_early: Arc<AtomicU64>,
    early: EarlyReport,
    last_error_log: Option<Instant>,
    errors_unlogged: u64,
}

impl Archiver {
    /// An archiver of `names`' files; every file there now, up to
    /// `sealed_ms`, is complete. Early-deleted records are added to
    /// `deleted_early`.
    pub(crate) fn new(
        names: Names,
        retention: Retention,
        sealed_ms: u64,
        deleted_early: Arc<AtomicU64>,
    ) -> Archiver {
        Archiver {
            names,
            retention,
            sealed_ms,
            deleted_early,
            early: EarlyReport::default(),
            last_error_log: None,
            errors_unlogged: 0,
        }
    }

    /// The thread's loop: a pass at start, at each rotation, at each settle
    /// request and every [`IDLE`]; ends when every sender is gone.
    pub(crate) fn run(mut self, rx: &Receiver<Msg>) {
        let mut acks = Vec::new();
        let mut alive = true;
        while alive {
            self.pass(now_ms(), Instant::now());
            for ack in acks.drain(..) {
                let _ = SyncSender::send(&ack, ());
            }
            let mut next = rx.recv_timeout(IDLE);
            loop {
                match next {
                    Ok(Msg::Sealed(s)) => self.sealed_ms = self.sealed_ms.max(s),
                    Ok(Msg::Settle(ack)) => acks.push(ack),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        alive = false;
                        break;
                    }
                }
                next = match rx.try_recv() {
                    Ok(m) => Ok(m),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        Err(RecvTimeoutError::Disconnected)
                    }
                };
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }

    fn report_error(&mut self, what: &str, path: &Path, e: &std::io::Error, now: Instant) {
        metrics::counter!("watchword_audit_archive_errors_total").increment(1);
        if self
            .last_error_log
            .is_some_and(|t| now.saturating_duration_since(t) < ERROR_REPORT_EVERY)
        {
            self.errors_unlogged += 1;
            return;
        }
        tracing::error!(error = %e, file = %path.display(), more_since_last_report = self.errors_unlogged, "audit log {what} failed");
        self.last_error_log = Some(now);
        self.errors_unlogged = 0;
    }

    /// One round at `now_ms` (wall time, for ages) and `now` (for the error
    /// reports): stale temporary files removed; files past the age or count
    /// limit deleted; each sealed plain file compressed, oldest first; then
    /// every limit applied again, the disk budget included (so it weighs the
    /// files as stored, compressed); the disk gauge set and early deletions
    /// reported.
    pub(crate) fn pass(&mut self, now_ms: u64, now: Instant) {
        let unbounded = Retention {
            max_total_bytes: u64::MAX,
            ..self.retention
        };
        if let Some((files, _)) = self.apply(&unbounded, now_ms, now) {
            for f in files.iter().filter(|f| !f.compressed) {
                match compress(f) {
                    Ok(_) => {
                        metrics::counter!("watchword_audit_compressed_files_total").increment(1);
                    }
                    Err(e) => self.report_error("compression", &f.path, &e, now),
                }
            }
        }
        let retention = self.retention;
        if let Some((files, current_bytes)) = self.apply(&retention, now_ms, now) {
            let on_disk = current_bytes + files.iter().map(|f| f.bytes).sum::<u64>();
            metrics::gauge!("watchword_audit_disk_bytes").set(on_disk as f64);
        }
        if let Some(e) = self.early.due(now) {
            tracing::error!(
                records = e.records,
                files = e.files,
                newest_record_age_s = e.newest_age_ms / 1000,
                min_age_hours = self.retention.min_age_ms / 3_600_000,
                "audit records younger than min_age_hours were deleted to keep the trail \
                 within audit.max_total_bytes (or max_files): the budget is too small for \
                 the traffic, and the trail is missing them"
            );
        }
    }

    /// Scans the directory (stale temporary files and plain copies of
    /// compressed files removed) and deletes what `r` says must go. Returns
    /// the sealed rotated files left, oldest first, and the current file's
    /// size; `None` when the directory cannot be read.
    fn apply(&mut self, r: &Retention, now_ms: u64, now: Instant) -> Option<(Vec<Rotated>, u64)> {
        let scan = match self.names.scan() {
            Ok(s) => s,
            Err(e) => {
                let dir = self.names.dir.clone();
                self.report_error("directory scan", &dir, &e, now);
                return None;
            }
        };
        // Only this thread compresses: a temporary file is from a
        // compression that did not finish (a crash, a failure).
        for t in &scan.temps {
            let _ = std::fs::remove_file(t);
        }
        // A file not yet sealed may still be written to: left alone.
        let sealed = self.sealed_ms;
        let files: Vec<Rotated> = scan
            .rotated
            .into_iter()
            .filter(|f| f.stamp_ms <= sealed)
            .collect();
        let files = self.drop_leftovers(files, now);
        let current_bytes = std::fs::metadata(&self.names.current).map_or(0, |m| m.len());
        let doomed = plan(&files, current_bytes, now_ms, r);
        let mut gone = vec![false; files.len()];
        for (i, why) in doomed {
            gone[i] = self.delete(&files[i], why, now_ms, now);
        }
        let kept = files
            .into_iter()
            .zip(gone)
            .filter(|(_, g)| !*g)
            .map(|(f, _)| f)
            .collect();
        Some((kept, current_bytes))
    }

    /// `files` without the plain files whose `.zst` is there too (deleted
    /// now: the `.zst` was fsynced before its rename).
    fn drop_leftovers(&mut self, files: Vec<Rotated>, now: Instant) -> Vec<Rotated> {
        let mut out: Vec<Rotated> = Vec::with_capacity(files.len());
        for (i, f) in files.iter().enumerate() {
            let has_zst = !f.compressed
                && files[i + 1..]
                    .iter()
                    .take_while(|z| z.stamp_ms == f.stamp_ms)
                    .any(|z| z.compressed);
            if has_zst {
                if let Err(e) = std::fs::remove_file(&f.path) {
                    self.report_error(
                        "removal of a compressed file's plain copy",
                        &f.path,
                        &e,
                        now,
                    );
                    out.push(f.clone());
                }
                continue;
            }
            out.push(f.clone());
        }
        out
    }

    /// Deletes `f` for `why`, counting its young records first when the
    /// deletion is early. True when it is gone.
    fn delete(&mut self, f: &Rotated, why: Why, now_ms: u64, now: Instant) -> bool {
        let early = is_early(why, f.stamp_ms, now_ms, self.retention.min_age_ms);
        let counted = if early {
            let since = now_ms.saturating_sub(self.retention.min_age_ms);
            match young_records(f, since) {
                Ok(c) => Some(c),
                Err(e) => {
                    self.report_error("count of early-deleted records", &f.path, &e, now);
                    None
                }
            }
        } else {
            None
        };
        if let Err(e) = std::fs::remove_file(&f.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                self.report_error("deletion", &f.path, &e, now);
                return false;
            }
        }
        metrics::counter!("watchword_audit_deleted_files_total", "reason" => why.name())
            .increment(1);
        if early {
            let (records, newest) = counted.unwrap_or((0, None));
            self.deleted_early.fetch_add(records, Ordering::Relaxed);
            metrics::counter!("watchword_audit_deleted_early_total").increment(records);
            // The stamp when the file holds no readable record.
            let newest_ms = newest.unwrap_or(f.stamp_ms);
            self.early.note(records, now_ms.saturating_sub(newest_ms));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600 * 1000;
    const D: u64 = 24 * H;

    #[test]
    fn stamps_round_trip_and_sort_by_time() {
        let ms = 1_738_324_800_123; // 2025-01-31T12:00:00.123Z
        assert_eq!(stamp(ms), "20250131T120000.123Z");
        assert_eq!(parse_stamp("20250131T120000.123Z"), Some(ms));
        assert_eq!(parse_stamp(&stamp(0)), Some(0));
        for bad in [
            "20250131T120000.123",
            "20250131T120000Z",
            "2025-01-31T12:00:00.123Z",
            "20251331T120000.123Z",
            "20250131X120000.123Z",
        ] {
            assert_eq!(parse_stamp(bad), None, "{bad}");
        }
        assert!(stamp(ms) < stamp(ms + 1) && stamp(ms + 999) < stamp(ms + 1000));
    }

    fn rotated(stamp_ms: u64, bytes: u64) -> Rotated {
        Rotated {
            path: PathBuf::from(format!("a.{}.zst", stamp(stamp_ms))),
            stamp_ms,
            compressed: true,
            bytes,
        }
    }

    fn rules() -> Retention {
        Retention {
            max_age_ms: Some(90 * D),
            max_total_bytes: 1000,
            max_files: None,
            min_age_ms: 24 * H,
        }
    }

    #[test]
    fn age_retention_deletes_what_is_older_than_the_limit_only() {
        let now = 200 * D;
        let files = [
            rotated(now - 120 * D, 10),
            rotated(now - 91 * D, 10),
            rotated(now - 90 * D, 10),
            rotated(now - H, 10),
        ];
        let p = plan(&files, 0, now, &rules());
        assert_eq!(p, vec![(0, Why::Age), (1, Why::Age)]);
        // The same files a day later: the one at the limit goes too.
        let p = plan(&files, 0, now + D, &rules());
        assert_eq!(p, vec![(0, Why::Age), (1, Why::Age), (2, Why::Age)]);
        // No age limit: nothing.
        let r = Retention {
            max_age_ms: None,
            ..rules()
        };
        assert!(plan(&files, 0, now + 1000 * D, &r).is_empty());
        // Deleting by age is never early.
        assert!(!is_early(Why::Age, now - H, now, 24 * H));
    }

    #[test]
    fn budget_retention_deletes_oldest_first_until_the_trail_fits() {
        let now = 10 * D;
        let files = [
            rotated(now - 5 * D, 300),
            rotated(now - 4 * D, 300),
            rotated(now - 3 * D, 300),
            rotated(now - H, 300),
        ];
        // 200 (current) + 1200 = 1400 > 1000: the two oldest go (800 left).
        assert_eq!(
            plan(&files, 200, now, &rules()),
            vec![(0, Why::Budget), (1, Why::Budget)]
        );
        // Within budget: nothing.
        assert!(
            plan(
                &files,
                0,
                now,
                &Retention {
                    max_total_bytes: 1200,
                    ..rules()
                }
            )
            .is_empty()
        );
        // The count limit, then the budget, oldest first.
        let r = Retention {
            max_files: Some(3),
            ..rules()
        };
        assert_eq!(
            plan(&files, 200, now, &r),
            vec![(0, Why::Count), (1, Why::Budget)]
        );
        // Even the newest goes when the current file alone fills the budget;
        // that one is early (rotated an hour ago, min age 24 h).
        let p = plan(&files, 1000, now, &rules());
        assert_eq!(p.len(), 4);
        assert!(!is_early(p[0].1, files[0].stamp_ms, now, 24 * H));
        assert!(is_early(p[3].1, files[3].stamp_ms, now, 24 * H));
    }

    #[test]
    fn an_early_deletion_is_logged_at_most_once_a_minute_with_everything_since() {
        let t0 = Instant::now();
        let mut r = EarlyReport::default();
        assert_eq!(r.due(t0), None);
        r.note(10, 5_000);
        assert_eq!(
            r.due(t0),
            Some(Early {
                records: 10,
                files: 1,
                newest_age_ms: 5_000
            })
        );
        r.note(3, 9_000);
        r.note(4, 2_000);
        assert_eq!(r.due(t0 + Duration::from_secs(59)), None);
        assert_eq!(
            r.due(t0 + Duration::from_secs(60)),
            Some(Early {
                records: 7,
                files: 2,
                newest_age_ms: 2_000
            })
        );
        assert_eq!(r.due(t0 + Duration::from_secs(600)), None);
    }

    #[test]
    fn ts_ms_is_read_from_the_start_of_a_line_only() {
        assert_eq!(ts_ms_of(b"{\"ts_ms\":123,\"server\":\"x\"}\n"), Some(123));
        assert_eq!(ts_ms_of(b"{\"event\":\"audit_gap\",\"dropped\":3}"), None);
        assert_eq!(ts_ms_of(b"{\"ts_ms\":,"), None);
    }
}
