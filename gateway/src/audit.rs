//! The audit trail (DOMAIN.md §3): an [`EventSink`] that appends one JSON
//! object per challenge event to a JSON Lines file.
//!
//! Each line: time, server name and IP, tenant, subject (the user id), the
//! challenge id, the method (channel), the masked destination, the event, its
//! result (`ok`, `success`, `failure`, `ended`), the denial or failure reason,
//! attempts left, the carrier, and the client IP when the gateway knew it.
//!
//! Buffering: `record` never blocks, never does I/O and makes no system call: it
//! formats the line and puts it on a bounded lock-free queue (`buffer_events`).
//! When the queue is full the event is **dropped**, counted in
//! `watchword_audit_dropped_total`, and once room returns an `audit_gap` line
//! records how many were lost. A writer thread wakes every few milliseconds (or
//! at once when the queue is half full), appends what is queued, flushes and
//! fsyncs every `flush_interval_ms` and at [`AuditLog::close`], and rotates the
//! file by size: it renames the full file `PATH.<UTC time>` and starts a new
//! one. Waking the writer per event cost a futex call per event, a fifth of
//! the gateway's CPU under an issue load.
//!
//! Rotated files are compressed and retained by age and disk budget by the
//! archiver thread ([`archive`]); each written line may also go to a local
//! syslog daemon ([`syslog`]). Neither runs on the recording path or the
//! writer thread: the writer only renames files and hands lines over.
//!
//! This module must never write a code, a key or a full destination: events
//! carry only masked destinations and never a code.

mod archive;
pub mod syslog;

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;

use watchword_engine::{Event, EventKind, EventSink, Record};

use crate::config::AuditConfig;

/// The longest [`AuditLog::flush`] waits for the writer.
const FLUSH_WAIT: Duration = Duration::from_secs(30);

/// Messages waiting for the archiver thread at most.
const ARCHIVER_QUEUE: usize = 1024;

/// How often the writer looks at the queue when nobody wakes it.
const DRAIN_EVERY: Duration = Duration::from_millis(5);

/// What the recording side and the writer thread share.
struct Shared {
    /// Formatted lines, oldest first.
    lines: ArrayQueue<String>,
    /// Flush requests, acknowledged once everything queued before them is fsynced.
    flushes: parking_lot::Mutex<Vec<SyncSender<()>>>,
    /// Set when the log is dropped: the writer writes what is left and ends.
    closed: AtomicBool,
}

/// The audit log. Cheap to share (`Arc`); implements [`EventSink`].
pub struct AuditLog {
    shared: Arc<Shared>,
    writer_thread: Thread,
    dropped: Arc<AtomicU64>,
    unreported: AtomicU64,
    deleted_early: Arc<AtomicU64>,
    syslog_dropped: Arc<AtomicU64>,
    archiver: SyncSender<archive::Msg>,
    server: String,
    server_ip: String,
    tenants: Vec<String>,
    writer: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

fn result_of(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Issued | EventKind::Resent | EventKind::Sent | EventKind::Delivered => "ok",
        EventKind::Approved => "success",
        EventKind::Rejected
        | EventKind::Expired
        | EventKind::Locked
        | EventKind::DeliveryFailed
        | EventKind::Refused => "failure",
        EventKind::Cancelled | EventKind::Superseded => "ended",
    }
}

impl AuditLog {
    /// Opens (appends to) the file and starts the writer, archiver and (when
    /// `cfg.syslog` is set) syslog threads. Rotated files of the former
    /// scheme (`PATH.1`, `PATH.2`, ...) are renamed to the stamp of their
    /// modification time, to be compressed and retained like the others.
    /// `tenants` are the tenant names in `TenantId` order.
    pub fn open(
        cfg: &AuditConfig,
        server: &str,
        server_ip: &str,
        tenants: Vec<String>,
    ) -> std::io::Result<Arc<AuditLog>> {
        if let Some(dir) = cfg.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let names = archive::Names::new(&cfg.path);
        let legacy = names.scan()?.legacy;
        if !legacy.is_empty() {
            let n = names.adopt_legacy(&legacy)?;
            tracing::info!(
                files = n,
                "audit files of the former rotation scheme renamed to their time, to be compressed"
            );
        }
        let newest = names
            .scan()?
            .rotated
            .iter()
            .map(|r| r.stamp_ms)
            .max()
            .unwrap_or(0);
        let syslog = match syslog::Target::parse(&cfg.syslog) {
            Ok(t) => t,
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)),
        };
        let syslog_dropped = Arc::new(AtomicU64::new(0));
        let feed = match syslog {
            None => None,
            Some(target) => {
                let facility = syslog::facility(&cfg.syslog_facility).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("unknown syslog facility {:?}", cfg.syslog_facility),
                    )
                })?;
                Some(syslog::Feed::start(
                    target,
                    facility,
                    cfg.buffer_events,
                    Arc::clone(&syslog_dropped),
                )?)
            }
        };
        let file = open_append(&cfg.path)?;
        let size = file.metadata()?.len();
        let shared = Arc::new(Shared {
            lines: ArrayQueue::new(cfg.buffer_events.max(1)),
            flushes: parking_lot::Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        });
        let dropped = Arc::new(AtomicU64::new(0));
        let deleted_early = Arc::new(AtomicU64::new(0));
        // Bounded: a `Sealed` that finds it full is dropped, which loses
        // nothing (the archiver keeps the highest stamp it was told, and the
        // next rotation's message covers the file); `Settle` waits for room.
        let (to_archiver, archiver_rx) = sync_channel(ARCHIVER_QUEUE);
        let archiver = archive::Archiver::new(
            names.clone(),
            archive::Retention::of(cfg),
            newest,
            Arc::clone(&deleted_early),
        );
        std::thread::Builder::new()
            .name("watchword-audit-archive".into())
            .spawn(move || archiver.run(&archiver_rx))?;
        let w = Writer {
            names,
            out: BufWriter::with_capacity(256 * 1024, file),
            size,
            max_bytes: cfg.max_file_bytes.max(4096),
            last_stamp_ms: newest,
            archiver: to_archiver.clone(),
            syslog: feed,
            interval: Duration::from_millis(cfg.flush_interval_ms.max(1)),
            last_error_log: None,
            errors_unlogged: 0,
        };
        let handle = std::thread::Builder::new()
            .name("watchword-audit".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || w.run(&shared)
            })?;
        Ok(Arc::new(AuditLog {
            shared,
            writer_thread: handle.thread().clone(),
            dropped,
            unreported: AtomicU64::new(0),
            deleted_early,
            syslog_dropped,
            archiver: to_archiver,
            server: server.to_owned(),
            server_ip: server_ip.to_owned(),
            tenants,
            writer: parking_lot::Mutex::new(Some(handle)),
        }))
    }

    /// Events dropped because the buffer was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records deleted by the disk budget (or `max_files`) while younger than
    /// `min_age_hours`, since start (`watchword_audit_deleted_early_total`).
    pub fn deleted_early(&self) -> u64 {
        self.deleted_early.load(Ordering::Relaxed)
    }

    /// Records not forwarded to syslog (queue full or send failed), since
    /// start (`watchword_audit_syslog_dropped_total`).
    pub fn syslog_dropped(&self) -> u64 {
        self.syslog_dropped.load(Ordering::Relaxed)
    }

    /// Waits until the archiver has compressed every file rotated so far and
    /// applied retention (call [`AuditLog::flush`] first for the lines
    /// queued). Blocking, and as long as compressing those files takes.
    pub fn archive(&self) {
        let (ack, done) = sync_channel(1);
        if self.archiver.send(archive::Msg::Settle(ack)).is_ok()
            && done.recv_timeout(FLUSH_WAIT).is_err()
        {
            tracing::error!(
                waited_s = FLUSH_WAIT.as_secs(),
                "audit archiver did not finish its pass"
            );
        }
    }

    /// Waits until every line queued so far is written, flushed and fsynced.
    /// Blocking: call from a blocking context (e.g. `spawn_blocking`).
    pub fn flush(&self) {
        let (ack, done) = sync_channel(1);
        self.shared.flushes.lock().push(ack);
        self.writer_thread.unpark();
        // The writer answers within one write and fsync. If it is gone (it
        // never panics by design) the request would wait forever: bound it,
        // so a shutdown cannot hang on the audit log.
        if done.recv_timeout(FLUSH_WAIT).is_err() {
            tracing::error!(
                waited_s = FLUSH_WAIT.as_secs(),
                "audit log writer did not confirm the flush"
            );
        }
    }

    /// The final flush at shutdown: everything queued so far is written and
    /// fsynced before this returns. Events recorded afterwards are still
    /// queued and written, but only fsynced by a later flush or interval (the
    /// writer thread ends when the log is dropped). Blocking.
    pub fn close(&self) {
        self.flush();
        // Detach the writer; it ends by itself once the log is dropped.
        drop(self.writer.lock().take());
    }

    fn push(&self, line: String) {
        let lines = &self.shared.lines;
        // Losses are reported where they happened: before the next line kept.
        let lost = self.unreported.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let gap = format!("{{\"event\":\"audit_gap\",\"dropped\":{lost}}}");
            if lines.push(gap).is_err() {
                self.unreported.fetch_add(lost, Ordering::Relaxed);
            }
        }
        if lines.push(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.unreported.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("watchword_audit_dropped_total").increment(1);
        } else if lines.len() == lines.capacity() / 2 {
            // Wake the writer early only when the queue is filling up.
            self.writer_thread.unpark();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.writer_thread.unpark();
    }
}

impl EventSink for AuditLog {
    fn record(&self, e: &Event<'_>) {
        self.push(self.line(e));
    }

    fn record_other(&self, r: &Record<'_>) {
        self.push(self.record_line(r));
    }
}

/// The most a line holds besides its variable strings: the names, quotes and
/// punctuation of every field, a 20-digit timestamp, the 32-digit challenge
/// id, a 3-digit attempt count and the longest event, result and method names
/// (a `delivered` line of today has 221 such bytes).
const LINE_FIXED_BYTES: usize = 272;

impl AuditLog {
    /// The bytes to reserve for `e`'s line so that it is built in one
    /// allocation: typical lines run 270 to 300 bytes, and a fixed 256 made
    /// nearly every one grow (allocate and copy again), 2% of the gateway's
    /// CPU under an issue load. Only escapes can outgrow it.
    fn line_room(server: &str, server_ip: &str, tenant: &str, e: &Event<'_>) -> usize {
        let variable = [
            server,
            server_ip,
            tenant,
            e.subject,
            e.destination.as_str(),
            e.reason.unwrap_or_default(),
            e.carrier.unwrap_or_default(),
            e.client_ip.unwrap_or_default(),
        ];
        LINE_FIXED_BYTES + variable.iter().map(|v| v.len()).sum::<usize>()
    }

    /// One JSON object, its fields in a fixed order: ts_ms, server, server_ip,
    /// tenant, event, result, subject, challenge, method, destination,
    /// attempts_left, then reason, carrier and client_ip when present.
    /// Written by hand: serde_json and `fmt` were a fifth of the gateway's CPU
    /// under an issue load (three lines per challenge).
    fn line(&self, e: &Event<'_>) -> String {
        let tenant = self
            .tenants
            .get(usize::from(e.tenant.0))
            .map_or("?", String::as_str);
        let mut l =
            String::with_capacity(Self::line_room(&self.server, &self.server_ip, tenant, e));
        let mut num = itoa::Buffer::new();
        l.push_str("{\"ts_ms\":");
        l.push_str(num.format(e.at_ms));
        field(&mut l, "server", &self.server);
        field(&mut l, "server_ip", &self.server_ip);
        field(&mut l, "tenant", tenant);
        field(&mut l, "event", e.kind.name());
        field(&mut l, "result", result_of(e.kind));
        field(&mut l, "subject", e.subject);
        l.push_str(",\"challenge\":\"");
        // Hex digits are ASCII.
        l.push_str(std::str::from_utf8(&e.id.hex()).unwrap_or_default());
        l.push('"');
        field(&mut l, "method", e.channel.name());
        field(&mut l, "destination", e.destination.as_str());
        l.push_str(",\"attempts_left\":");
        l.push_str(num.format(e.attempts_left));
        if let Some(reason) = e.reason {
            field(&mut l, "reason", reason);
        }
        if let Some(carrier) = e.carrier {
            field(&mut l, "carrier", carrier);
        }
        if let Some(ip) = e.client_ip.filter(|ip| !ip.is_empty()) {
            field(&mut l, "client_ip", ip);
        }
        l.push('}');
        l
    }
}

impl AuditLog {
    /// One JSON object for a decision or a directory change, its fields in
    /// the order of an event's line: ts_ms, server, server_ip, tenant, event,
    /// result, subject, then challenge, method, destination, reason and
    /// client_ip when present.
    fn record_line(&self, r: &Record<'_>) -> String {
        let tenant = self
            .tenants
            .get(usize::from(r.tenant.0))
            .map_or("?", String::as_str);
        let mut l = String::with_capacity(LINE_FIXED_BYTES + r.subject.len() + tenant.len());
        let mut num = itoa::Buffer::new();
        l.push_str("{\"ts_ms\":");
        l.push_str(num.format(r.at_ms));
        field(&mut l, "server", &self.server);
        field(&mut l, "server_ip", &self.server_ip);
        field(&mut l, "tenant", tenant);
        field(&mut l, "event", r.event);
        field(&mut l, "result", r.result);
        field(&mut l, "subject", r.subject);
        if let Some(id) = r.challenge {
            l.push_str(",\"challenge\":\"");
            l.push_str(std::str::from_utf8(&id.hex()).unwrap_or_default());
            l.push('"');
        }
        if let Some(m) = r.method {
            field(&mut l, "method", m);
        }
        if let Some(d) = &r.destination {
            field(&mut l, "destination", d.as_str());
        }
        if let Some(reason) = r.reason {
            field(&mut l, "reason", reason);
        }
        if let Some(ip) = r.client_ip.filter(|ip| !ip.is_empty()) {
            field(&mut l, "client_ip", ip);
        }
        if let Some(agent) = r.agent {
            field(&mut l, "agent", agent);
        }
        l.push('}');
        l
    }
}

/// Appends `,"name":"value"` with `value` escaped as a JSON string.
fn field(l: &mut String, name: &str, value: &str) {
    l.push_str(",\"");
    l.push_str(name);
    l.push_str("\":\"");
    let needs_escape = |b: u8| b == b'"' || b == b'\\' || b < 0x20;
    if !value.bytes().any(needs_escape) {
        l.push_str(value);
    } else {
        for c in value.chars() {
            match c {
                '"' => l.push_str("\\\""),
                '\\' => l.push_str("\\\\"),
                '\n' => l.push_str("\\n"),
                '\r' => l.push_str("\\r"),
                '\t' => l.push_str("\\t"),
                '\u{8}' => l.push_str("\\b"),
                '\u{c}' => l.push_str("\\f"),
                c if u32::from(c) < 0x20 => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    let b = c as u8;
                    l.push_str("\\u00");
                    l.push(char::from(HEX[usize::from(b >> 4)]));
                    l.push(char::from(HEX[usize::from(b & 0x0f)]));
                }
                c => l.push(c),
            }
        }
    }
    l.push('"');
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

struct Writer {
    names: archive::Names,
    out: BufWriter<File>,
    size: u64,
    max_bytes: u64,
    /// The stamp of the newest rotated file: the next one is later.
    last_stamp_ms: u64,
    archiver: SyncSender<archive::Msg>,
    syslog: Option<syslog::Feed>,
    interval: Duration,
    /// When an I/O error was last logged, and how many were not logged since:
    /// a failing disk gets one error line per second, not one per event.
    last_error_log: Option<Instant>,
    errors_unlogged: u64,
}

impl Writer {
    fn report_error(&mut self, what: &str, e: &std::io::Error) {
        metrics::counter!("watchword_audit_write_errors_total").increment(1);
        if self
            .last_error_log
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            self.errors_unlogged += 1;
            return;
        }
        tracing::error!(error = %e, more_since_last_report = self.errors_unlogged, "audit log {what} failed");
        self.last_error_log = Some(Instant::now());
        self.errors_unlogged = 0;
    }

    fn run(mut self, shared: &Shared) {
        let mut last_sync = Instant::now();
        let mut dirty = false;
        loop {
            // Closed is read first, flush requests next, lines last: a line
            // queued before either is then written before it is acted on.
            let closed = shared.closed.load(Ordering::Acquire);
            let flushes = std::mem::take(&mut *shared.flushes.lock());
            while let Some(line) = shared.lines.pop() {
                if let Err(e) = self.write(&line) {
                    self.report_error("write", &e);
                }
                if let Some(feed) = &self.syslog {
                    feed.offer(line);
                }
                dirty = true;
            }
            if let Some(feed) = &self.syslog {
                feed.wake();
            }
            if closed || !flushes.is_empty() || last_sync.elapsed() >= self.interval {
                if dirty || !flushes.is_empty() {
                    self.sync();
                    dirty = false;
                }
                last_sync = Instant::now();
                for ack in flushes {
                    let _ = ack.send(());
                }
            }
            if closed {
                return;
            }
            let next_sync = self.interval.saturating_sub(last_sync.elapsed());
            std::thread::park_timeout(DRAIN_EVERY.min(next_sync));
        }
    }

    fn write(&mut self, line: &str) -> std::io::Result<()> {
        let n = line.len() as u64 + 1;
        if self.size > 0 && self.size + n > self.max_bytes {
            // A failed rotation keeps the current file: the line is written
            // there rather than lost.
            if let Err(e) = self.rotate() {
                self.report_error("rotation", &e);
            }
        }
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.size += n;
        Ok(())
    }

    fn sync(&mut self) {
        let r = self
            .out
            .flush()
            .and_then(|()| self.out.get_ref().sync_data());
        if let Err(e) = r {
            self.report_error("flush", &e);
        }
    }

    /// Renames the current file `PATH.<stamp>` (later than any before it)
    /// and opens a new one; once nothing more can reach the old file, tells
    /// the archiver it is sealed. Every line is in exactly one file: the old
    /// file holds what was written before, the new one what comes after.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.sync();
        let mut stamp_ms = archive::now_ms().max(self.last_stamp_ms + 1);
        while self.names.taken(stamp_ms) {
            stamp_ms += 1;
        }
        let rotated = self.names.plain(stamp_ms);
        match std::fs::rename(&self.names.current, &rotated) {
            // Removed from under us (by hand, or another rotator): start anew.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.out = BufWriter::with_capacity(256 * 1024, open_append(&self.names.current)?);
                self.size = 0;
                return Ok(());
            }
            r => r?,
        }
        self.last_stamp_ms = stamp_ms;
        let file = match open_append(&self.names.current) {
            Ok(f) => f,
            Err(e) => {
                // Keep writing to the old file under its old name.
                let _ = std::fs::rename(&rotated, &self.names.current);
                return Err(e);
            }
        };
        let old = std::mem::replace(&mut self.out, BufWriter::with_capacity(256 * 1024, file));
        self.size = 0;
        // Whatever the failed flush of `sync` left is written (or lost) now,
        // before the archiver may touch the file.
        if let Err(e) = old.into_inner().map_err(|e| e.into_error()) {
            self.report_error("flush", &e);
        }
        let _ = self.archiver.try_send(archive::Msg::Sealed(stamp_ms));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use watchword_engine::{ChallengeId, Channel, TenantId, mask_destination};

    /// The line as serde_json writes it: the oracle for [`AuditLog::line`].
    #[derive(Serialize)]
    struct Line<'a> {
        ts_ms: u64,
        server: &'a str,
        server_ip: &'a str,
        tenant: &'a str,
        event: &'a str,
        result: &'a str,
        subject: &'a str,
        challenge: String,
        method: &'a str,
        destination: &'a str,
        attempts_left: u8,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        carrier: Option<&'a str>,
        #[serde(skip_serializing_if = "str::is_empty")]
        client_ip: &'a str,
    }

    fn oracle(log: &AuditLog, e: &Event<'_>) -> String {
        serde_json::to_string(&Line {
            ts_ms: e.at_ms,
            server: &log.server,
            server_ip: &log.server_ip,
            tenant: log
                .tenants
                .get(usize::from(e.tenant.0))
                .map_or("?", String::as_str),
            event: e.kind.name(),
            result: result_of(e.kind),
            subject: e.subject,
            challenge: e.id.to_string(),
            method: e.channel.name(),
            destination: e.destination.as_str(),
            attempts_left: e.attempts_left,
            reason: e.reason,
            carrier: e.carrier,
            client_ip: e.client_ip.unwrap_or(""),
        })
        .unwrap()
    }

    #[test]
    fn lines_are_exactly_what_serde_json_writes_whatever_the_strings() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AuditConfig {
            path: dir.path().join("a.jsonl"),
            ..AuditConfig::default()
        };
        let log = AuditLog::open(&cfg, "gw \"1\"", "127.0.0.1", vec!["démo".into()]).unwrap();
        let nasty = [
            "plain",
            "",
            "quote\" back\\slash",
            "tab\tnl\ncr\r\u{1}\u{8}\u{c}\u{1f}",
            "ünï€😀",
            "\u{7f}",
        ];
        for (i, s) in nasty.iter().enumerate() {
            for kind in [
                EventKind::Issued,
                EventKind::Rejected,
                EventKind::DeliveryFailed,
            ] {
                let e = Event {
                    subject: s,
                    at_ms: u64::MAX - i as u64,
                    attempts_left: i as u8,
                    reason: (i % 2 == 0).then_some(*s),
                    carrier: (i % 3 == 0).then_some("sim-primary"),
                    client_ip: [None, Some(""), Some("203.0.113.9")][i % 3],
                    tenant: TenantId((i % 2) as u16),
                    ..event(kind)
                };
                let ours = log.line(&e);
                assert_eq!(ours, oracle(&log, &e));
                let _: serde_json::Value = serde_json::from_str(&ours).unwrap();
            }
        }
    }

    #[test]
    fn a_line_without_escapes_fits_the_room_reserved_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let (_, log) = log_in(&dir, AuditConfig::default());
        for kind in EventKind::ALL {
            for channel in [Channel::Sms, Channel::Voice, Channel::Email] {
                let e = Event {
                    at_ms: u64::MAX,
                    attempts_left: u8::MAX,
                    channel,
                    reason: Some("r"),
                    carrier: Some("c"),
                    client_ip: Some("203.0.113.9"),
                    ..event(kind)
                };
                let line = log.line(&e);
                let room = AuditLog::line_room(&log.server, &log.server_ip, "demo", &e);
                assert!(line.len() <= room, "{kind:?}: {} > {room}", line.len());
            }
        }
    }

    fn event(kind: EventKind) -> Event<'static> {
        Event {
            kind,
            at_ms: 1,
            tenant: TenantId(0),
            id: ChallengeId([0xab; 16]),
            subject: "user-1",
            channel: Channel::Sms,
            destination: mask_destination("+14255551234"),
            attempts_left: 5,
            carrier: None,
            reason: None,
            client_ip: None,
        }
    }

    /// A log in `dir` with `cfg`'s settings (its path is set here).
    fn log_in(dir: &tempfile::TempDir, cfg: AuditConfig) -> (AuditConfig, Arc<AuditLog>) {
        let cfg = AuditConfig {
            path: dir.path().join("a.jsonl"),
            ..cfg
        };
        let log = AuditLog::open(&cfg, "gw", "127.0.0.1", vec!["demo".into()]).unwrap();
        (cfg, log)
    }

    /// The trail's files in `dir` besides the current one, by name.
    fn rotated_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("a.jsonl."))
            .collect();
        names.sort();
        names
    }

    /// Every line of the trail in `dir`, oldest first: the rotated files
    /// (decompressed) by stamp, then the current file.
    fn trail(dir: &Path) -> Vec<String> {
        let mut text = String::new();
        for name in rotated_in(dir) {
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            let plain = if name.ends_with(".zst") {
                zstd::stream::decode_all(&bytes[..]).unwrap()
            } else {
                bytes
            };
            text.push_str(std::str::from_utf8(&plain).unwrap());
        }
        if let Ok(current) = std::fs::read_to_string(dir.join("a.jsonl")) {
            text.push_str(&current);
        }
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn rotation_compresses_every_file_and_loses_or_repeats_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let (_, log) = log_in(
            &dir,
            AuditConfig {
                max_file_bytes: 4096,
                ..AuditConfig::default()
            },
        );
        log.record(&Event {
            client_ip: Some("203.0.113.9"),
            ..event(EventKind::Issued)
        });
        let subjects: Vec<String> = (0..600).map(|i| format!("user-{i}")).collect();
        for (i, s) in subjects.iter().enumerate() {
            log.record(&Event {
                subject: s,
                at_ms: 1 + i as u64,
                ..event(EventKind::Rejected)
            });
            if i % 100 == 0 {
                // Rotations on both sides of a flush.
                log.flush();
            }
        }
        log.close();
        log.archive();
        let names = rotated_in(dir.path());
        // 601 lines of about 300 bytes in files of 4 KiB: dozens of rotations,
        // each compressed, no plain or temporary file left.
        assert!(names.len() >= 30, "{names:?}");
        for n in &names {
            let stamp = n
                .strip_prefix("a.jsonl.")
                .and_then(|r| r.strip_suffix(".zst"))
                .unwrap_or_else(|| panic!("not a compressed rotated file: {n}"));
            assert!(archive::parse_stamp(stamp).is_some(), "{n}");
        }
        let lines = trail(dir.path());
        assert_eq!(lines.len(), 601, "no line lost or repeated");
        let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["event"], "issued");
        assert_eq!(first["client_ip"], "203.0.113.9");
        assert_eq!(first["destination"], "+14*******34");
        assert_eq!(first["tenant"], "demo");
        for (line, s) in lines[1..].iter().zip(&subjects) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["subject"], s.as_str(), "in order");
        }
        let all = lines.join("\n");
        assert!(!all.contains("4255551234"));
        assert!(lines.iter().all(|l| l.len() < 4096));
        // zstd's own tool reads them too, when it is installed.
        if let Ok(out) = std::process::Command::new("zstdcat")
            .arg(dir.path().join(&names[0]))
            .output()
        {
            assert!(out.status.success());
            assert!(String::from_utf8_lossy(&out.stdout).starts_with(&lines[0]));
        }
    }

    /// Writes `lines` records (`ts_ms` from `first_ts`, one a millisecond)
    /// to `path`, plain.
    fn write_records(path: &Path, first_ts: u64, lines: u64) {
        let mut text = String::new();
        for i in 0..lines {
            text.push_str(&format!(
                "{{\"ts_ms\":{},\"event\":\"issued\",\"subject\":\"u{i}\"}}\n",
                first_ts + i
            ));
        }
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_start_after_a_crash_finishes_the_compression_and_adopts_old_names() {
        let dir = tempfile::tempdir().unwrap();
        let names = archive::Names::new(&dir.path().join("a.jsonl"));
        let now = archive::now_ms();
        // Rotated, not compressed: the crash came before the compression.
        let plain = names.plain(now - 3_000);
        write_records(&plain, now - 4_000, 10);
        // A compression that was under way: its temporary file is dropped.
        let mut tmp = names.plain(now - 2_000).into_os_string();
        tmp.push(".zst.tmp");
        std::fs::write(&tmp, b"partial").unwrap();
        // Compressed and renamed, the plain file not yet deleted.
        let both = names.plain(now - 1_000);
        write_records(&both, now - 1_500, 5);
        let f = archive::Rotated {
            path: both.clone(),
            stamp_ms: now - 1_000,
            compressed: false,
            bytes: 0,
        };
        archive::compress(&f).unwrap();
        write_records(&both, now - 1_500, 5);
        // The former scheme: .2 older than .1.
        let old = |n: u32, ago_ms: u64, first: u64| {
            let p = dir.path().join(format!("a.jsonl.{n}"));
            write_records(&p, first, 3);
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + Duration::from_millis(now - ago_ms))
                .unwrap();
        };
        old(2, 20_000, 100);
        old(1, 10_000, 200);
        let (_, log) = log_in(&dir, AuditConfig::default());
        log.record(&event(EventKind::Issued));
        log.close();
        log.archive();
        let names = rotated_in(dir.path());
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.iter().all(|n| n.ends_with(".zst")), "{names:?}");
        assert_eq!(
            names[0],
            format!("a.jsonl.{}.zst", archive::stamp(now - 20_000)),
            "a former file is named by its modification time"
        );
        let ts: Vec<u64> = trail(dir.path())
            .iter()
            .map(|l| archive::ts_ms_of(l.as_bytes()).unwrap())
            .collect();
        let mut want: Vec<u64> = (100..103).chain(200..203).collect();
        want.extend((0..10).map(|i| now - 4_000 + i));
        want.extend((0..5).map(|i| now - 1_500 + i));
        want.push(1);
        assert_eq!(ts, want);
    }

    #[test]
    fn rotated_files_past_the_age_limit_are_deleted_by_their_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let names = archive::Names::new(&dir.path().join("a.jsonl"));
        let now = archive::now_ms();
        const DAY: u64 = 24 * 3600 * 1000;
        for days in [120, 91, 89, 1] {
            write_records(&names.plain(now - days * DAY), now - days * DAY - 10, 2);
        }
        let (_, log) = log_in(
            &dir,
            AuditConfig {
                max_age_days: 90,
                ..AuditConfig::default()
            },
        );
        log.archive();
        let kept = rotated_in(dir.path());
        assert_eq!(
            kept,
            vec![
                format!("a.jsonl.{}.zst", archive::stamp(now - 89 * DAY)),
                format!("a.jsonl.{}.zst", archive::stamp(now - DAY)),
            ]
        );
        assert_eq!(log.deleted_early(), 0, "age is no early deletion");
    }

    /// A log subscriber that keeps what it is given.
    #[derive(Clone, Default)]
    struct Captured(Arc<parking_lot::Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Writes `lines` records to the rotated file of `stamp_ms` and
    /// compresses it; returns its size.
    fn rotated_file(
        names: &archive::Names,
        stamp_ms: u64,
        first_ts: u64,
        lines: u64,
        extra: &str,
    ) -> u64 {
        let path = names.plain(stamp_ms);
        write_records(&path, first_ts, lines);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(extra.as_bytes())
            .unwrap();
        archive::compress(&archive::Rotated {
            path,
            stamp_ms,
            compressed: false,
            bytes: 0,
        })
        .unwrap()
    }

    /// Runs `f` with a log subscriber; returns what it logged.
    fn logged(f: impl FnOnce()) -> String {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let c = captured.clone();
                move || c.clone()
            })
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(captured.0.lock().clone()).unwrap()
    }

    #[test]
    fn the_budget_deletes_the_oldest_first_and_counts_and_logs_early_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let names = archive::Names::new(&dir.path().join("a.jsonl"));
        const H: u64 = 3600 * 1000;
        let now = 1_000 * 24 * H;
        // Two old files, then two of the last hours. The first young one
        // holds 100 records from 30 h ago (older than min_age_hours: not
        // counted), a gap line (no record) and one record from 3 h ago.
        let young_extra = format!(
            "{{\"event\":\"audit_gap\",\"dropped\":1}}\n{{\"ts_ms\":{},\"event\":\"issued\"}}\n",
            now - 3 * H
        );
        let sizes = [
            rotated_file(&names, now - 72 * H, now - 73 * H, 100, ""),
            rotated_file(&names, now - 48 * H, now - 49 * H, 100, ""),
            rotated_file(&names, now - 2 * H, now - 30 * H, 100, &young_extra),
            rotated_file(&names, now - H, now - 90 * 60 * 1000, 100, ""),
        ];
        std::fs::write(&names.current, "").unwrap();
        let one = *sizes.iter().max().unwrap();
        assert!(one + 10 < 2 * sizes.iter().min().unwrap());
        let deleted_early = Arc::new(AtomicU64::new(0));
        let retention = archive::Retention {
            max_age_ms: Some(90 * 24 * H),
            // Room for one file.
            max_total_bytes: one + 10,
            max_files: None,
            min_age_ms: 24 * H,
        };
        let mut a =
            archive::Archiver::new(names.clone(), retention, now, Arc::clone(&deleted_early));
        let t0 = Instant::now();
        let log = logged(|| a.pass(now, t0));
        assert_eq!(
            rotated_in(dir.path()),
            vec![format!("a.jsonl.{}.zst", archive::stamp(now - H))],
            "the oldest went first"
        );
        // Of the file rotated 2 h ago, one record was of the last 24 h.
        assert_eq!(deleted_early.load(Ordering::Relaxed), 1);
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{log}");
        assert!(errors[0].contains("records=1"), "{log}");
        assert!(errors[0].contains("files=1"), "{log}");
        assert!(
            errors[0].contains(&format!("newest_record_age_s={}", 3 * 3600)),
            "{log}"
        );
        // More early deletions within the minute are counted at once and
        // logged when the minute is over, together.
        rotated_file(&names, now - H / 2, now - H, 100, "");
        rotated_file(&names, now - H / 4, now - H / 2, 100, "");
        let log = logged(|| {
            a.pass(now, t0 + Duration::from_secs(10));
            assert_eq!(deleted_early.load(Ordering::Relaxed), 1 + 100 + 100);
        });
        assert!(!log.contains("ERROR"), "{log}");
        let log = logged(|| a.pass(now, t0 + Duration::from_secs(60)));
        assert!(
            log.contains("records=200") && log.contains("files=2"),
            "{log}"
        );
        assert_eq!(
            rotated_in(dir.path()),
            vec![format!("a.jsonl.{}.zst", archive::stamp(now - H / 4))],
        );
    }

    #[test]
    fn a_syslog_daemon_that_is_not_there_costs_the_file_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, log) = log_in(
            &dir,
            AuditConfig {
                syslog: format!("unix:{}", dir.path().join("nobody.sock").display()),
                ..AuditConfig::default()
            },
        );
        for _ in 0..100 {
            log.record(&event(EventKind::Issued));
        }
        log.close();
        let text = std::fs::read_to_string(&cfg.path).unwrap();
        assert_eq!(text.lines().count(), 100);
        // The sender drops (and counts) each record it could not send.
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.syslog_dropped() < 100 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(log.syslog_dropped(), 100);
    }

    #[test]
    fn a_full_buffer_drops_counts_and_reports_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, log) = log_in(
            &dir,
            AuditConfig {
                buffer_events: 8,
                ..AuditConfig::default()
            },
        );
        // A burst far larger than the buffer, faster than the writer wakes.
        for _ in 0..5_000 {
            log.record(&event(EventKind::Rejected));
        }
        log.flush();
        // Room again: the next record also reports the gap.
        log.record(&event(EventKind::Approved));
        log.close();
        let dropped = log.dropped();
        assert!(dropped > 0, "a burst of 5,000 into 8 slots must drop");
        let text = std::fs::read_to_string(&cfg.path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let events = lines.iter().filter(|l| l["event"] != "audit_gap").count() as u64;
        let reported: u64 = lines
            .iter()
            .filter(|l| l["event"] == "audit_gap")
            .map(|l| l["dropped"].as_u64().unwrap())
            .sum();
        assert_eq!(events + dropped, 5_001, "every event is written or counted");
        assert_eq!(reported, dropped, "every drop is reported by a gap line");
        assert_eq!(lines.last().unwrap()["event"], "approved");
    }

    #[test]
    fn a_log_file_removed_from_under_the_writer_is_started_anew() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, log) = log_in(
            &dir,
            AuditConfig {
                max_file_bytes: 4096,
                max_files: Some(3),
                ..AuditConfig::default()
            },
        );
        log.record(&event(EventKind::Issued));
        log.flush();
        std::fs::remove_file(&cfg.path).unwrap();
        for _ in 0..40 {
            log.record(&event(EventKind::Rejected));
        }
        log.close();
        // Rotation found no file to rename and opened a new one; lines
        // written after that are on disk.
        let rest = std::fs::read_to_string(&cfg.path).unwrap();
        assert!(rest.lines().count() > 0);
        assert!(rest.lines().all(|l| l.contains("\"rejected\"")));
    }
}
