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
//! file by size (`path.1`, `path.2`, ...). Waking the writer per event cost a
//! futex call per event, a fifth of the gateway's CPU under an issue load.
//!
//! This module must never write a code, a key or a full destination: events
//! carry only masked destinations and never a code.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
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
    /// Opens (appends to) the file and starts the writer thread. `tenants`
    /// are the tenant names in `TenantId` order.
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
        let file = open_append(&cfg.path)?;
        let size = file.metadata()?.len();
        let shared = Arc::new(Shared {
            lines: ArrayQueue::new(cfg.buffer_events.max(1)),
            flushes: parking_lot::Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        });
        let dropped = Arc::new(AtomicU64::new(0));
        let w = Writer {
            path: cfg.path.clone(),
            out: BufWriter::with_capacity(256 * 1024, file),
            size,
            max_bytes: cfg.max_file_bytes.max(4096),
            max_files: cfg.max_files,
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
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    max_bytes: u64,
    max_files: u32,
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
                dirty = true;
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
            self.rotate()?;
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

    fn rotated(&self, i: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.sync();
        if self.max_files == 0 {
            match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                r => r?,
            }
        } else {
            let _ = std::fs::remove_file(self.rotated(self.max_files));
            for i in (1..self.max_files).rev() {
                let _ = std::fs::rename(self.rotated(i), self.rotated(i + 1));
            }
            match std::fs::rename(&self.path, self.rotated(1)) {
                // Removed from under us (by hand, or another rotator): start anew.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                r => r?,
            }
        }
        self.out = BufWriter::with_capacity(256 * 1024, open_append(&self.path)?);
        self.size = 0;
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

    #[test]
    fn writes_rotates_and_never_holds_the_full_number() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, log) = log_in(
            &dir,
            AuditConfig {
                max_file_bytes: 4096,
                max_files: 5,
                ..AuditConfig::default()
            },
        );
        log.record(&Event {
            client_ip: Some("203.0.113.9"),
            ..event(EventKind::Issued)
        });
        for _ in 0..20 {
            log.record(&event(EventKind::Rejected));
        }
        log.close();
        let first = std::fs::read_to_string(cfg.path.with_extension("jsonl.1")).unwrap();
        let line: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
        assert_eq!(line["event"], "issued");
        assert_eq!(line["client_ip"], "203.0.113.9");
        assert_eq!(line["destination"], "+14*******34");
        assert_eq!(line["tenant"], "demo");
        assert!(!cfg.path.with_extension("jsonl.2").exists());
        let rest = std::fs::read_to_string(&cfg.path).unwrap();
        assert_eq!(first.lines().count() + rest.lines().count(), 21);
        let all = first + &rest;
        assert!(!all.contains("4255551234"));
        assert!(all.lines().all(|l| l.len() < 4096));
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
                max_files: 3,
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
