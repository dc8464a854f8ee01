//! Forwarding audit records to a local syslog daemon (`[audit] syslog`):
//! each record as the MSG of an RFC 5424 message (`<PRI>1 TIMESTAMP HOSTNAME
//! watchword PROCID audit - {json}`, severity informational, the configured
//! facility), one datagram each, over a Unix datagram socket (`unix:/dev/log`)
//! or UDP to a loopback address (`udp:127.0.0.1:514`).
//!
//! The writer thread hands each line it wrote to a bounded lock-free queue
//! ([`Feed::offer`]); a thread of its own sends them. A full queue or a failed
//! send drops the record for syslog only (the file has it), counted in
//! `watchword_audit_syslog_dropped_total{reason}` and logged at most once a
//! minute.
//!
//! This module must never block the recording path or the writer thread, never
//! send anywhere but the configured local daemon, and never send anything but
//! the audit lines it is given (masked, never a code or a key).

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crossbeam::queue::ArrayQueue;

/// The facilities `[audit] syslog_facility` accepts, with their RFC 5424 codes.
pub const FACILITIES: [(&str, u8); 12] = [
    ("auth", 4),
    ("authpriv", 10),
    ("daemon", 3),
    ("user", 1),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// RFC 5424 severity of every record: informational.
const SEVERITY: u8 = 6;

/// The longest a send waits for a daemon that does not read.
const SEND_TIMEOUT: Duration = Duration::from_millis(100);

/// How often the sender looks at the queue when nobody wakes it.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// The shortest time between two log lines about dropped records.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// The RFC 5424 code of facility `name`; `None` when it is not one of
/// [`FACILITIES`].
pub fn facility(name: &str) -> Option<u8> {
    FACILITIES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

/// Where records are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A Unix datagram socket, e.g. `/dev/log`.
    Unix(PathBuf),
    /// UDP to a loopback address.
    Udp(SocketAddr),
}

impl Target {
    /// Reads `[audit] syslog`: `""` (off: `None`), `unix:/absolute/path` or
    /// `udp:ip:port` with a loopback ip. The error says what is wrong.
    pub fn parse(s: &str) -> Result<Option<Target>, String> {
        const FORMS: &str = "expected \"\" (off), \"unix:/dev/log\" or \"udp:127.0.0.1:514\"";
        if s.is_empty() {
            return Ok(None);
        }
        if let Some(path) = s.strip_prefix("unix:") {
            let p = PathBuf::from(path);
            if !p.is_absolute() {
                return Err(format!("{s:?}: the socket path must be absolute ({FORMS})"));
            }
            return Ok(Some(Target::Unix(p)));
        }
        if let Some(addr) = s.strip_prefix("udp:") {
            let a: SocketAddr = addr
                .parse()
                .map_err(|e| format!("{s:?}: {addr:?} is not an ip:port address: {e} ({FORMS})"))?;
            if !a.ip().is_loopback() || a.port() == 0 {
                return Err(format!(
                    "{s:?}: records go to a local daemon only: the address must be loopback \
                     with a port (the daemon may relay them, e.g. over TLS)"
                ));
            }
            return Ok(Some(Target::Udp(a)));
        }
        Err(format!("{s:?} is no syslog target ({FORMS})"))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Udp(a) => write!(f, "udp:{a}"),
        }
    }
}

/// The HOSTNAME field: the machine's host name as RFC 5424 allows it
/// (printable US-ASCII, no space, at most 255 bytes), or `-`.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let h: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if h.is_empty() { "-".into() } else { h }
}

/// The header of one message, up to the MSG: `<PRI>1 TIMESTAMP HOSTNAME
/// watchword PROCID audit - `. `ts_ms` is the record's time.
pub(crate) fn header(out: &mut String, pri: u8, ts_ms: u64, host: &str, pid: u32) {
    use std::fmt::Write;
    let t = UNIX_EPOCH + Duration::from_millis(ts_ms);
    let _ = write!(
        out,
        "<{pri}>1 {} {host} watchword {pid} audit - ",
        humantime::format_rfc3339_millis(t)
    );
}

/// What the writer thread holds: the queue and a way to wake the sender.
/// Dropping it lets the sender send what is queued and end.
pub(crate) struct Feed {
    queue: Arc<ArrayQueue<String>>,
    closed: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    sender: Thread,
}

impl Feed {
    /// Starts the sender thread for `target`, queueing at most `capacity`
    /// records; records not sent are added to `dropped`.
    pub(crate) fn start(
        target: Target,
        facility: u8,
        capacity: usize,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<Feed> {
        let socket = match &target {
            Target::Unix(_) => {
                let s = UnixDatagram::unbound()?;
                s.set_write_timeout(Some(SEND_TIMEOUT))?;
                Socket::Unix(s)
            }
            Target::Udp(a) => {
                let local: SocketAddr = if a.is_ipv4() {
                    "127.0.0.1:0".parse().expect("literal")
                } else {
                    "[::1]:0".parse().expect("literal")
                };
                let s = UdpSocket::bind(local)?;
                s.set_write_timeout(Some(SEND_TIMEOUT))?;
                Socket::Udp(s)
            }
        };
        let queue = Arc::new(ArrayQueue::new(capacity.max(1)));
        let closed = Arc::new(AtomicBool::new(false));
        let mut sender = Sender {
            socket,
            target,
            pri: facility * 8 + SEVERITY,
            host: hostname(),
            pid: std::process::id(),
            dropped: Arc::clone(&dropped),
            msg: String::with_capacity(1024),
            failed_unlogged: 0,
            full_seen: 0,
            last_report: None,
            last_error: String::new(),
        };
        let handle = std::thread::Builder::new()
            .name("watchword-syslog".into())
            .spawn({
                let queue = Arc::clone(&queue);
                let closed = Arc::clone(&closed);
                move || sender.run(&queue, &closed)
            })?;
        Ok(Feed {
            queue,
            closed,
            dropped,
            sender: handle.thread().clone(),
        })
    }

    /// Queues `line` for the daemon, or drops it (counted) when the queue is
    /// full. Never blocks.
    pub(crate) fn offer(&self, line: String) {
        if self.queue.push(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("watchword_audit_syslog_dropped_total", "reason" => "full")
                .increment(1);
        }
    }

    /// Wakes the sender (after a batch of offers).
    pub(crate) fn wake(&self) {
        if !self.queue.is_empty() {
            self.sender.unpark();
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        self.sender.unpark();
    }
}

enum Socket {
    Unix(UnixDatagram),
    Udp(UdpSocket),
}

struct Sender {
    socket: Socket,
    target: Target,
    pri: u8,
    host: String,
    pid: u32,
    dropped: Arc<AtomicU64>,
    msg: String,
    /// Sends failed since the last report, and the last error.
    failed_unlogged: u64,
    last_error: String,
    /// Queue drops seen at the last report.
    full_seen: u64,
    last_report: Option<Instant>,
}

impl Sender {
    fn run(&mut self, queue: &ArrayQueue<String>, closed: &AtomicBool) {
        loop {
            let last = closed.load(Ordering::Acquire);
            while let Some(line) = queue.pop() {
                self.send(&line);
            }
            self.report();
            if last {
                return;
            }
            std::thread::park_timeout(DRAIN_EVERY);
        }
    }

    fn send(&mut self, line: &str) {
        let ts_ms =
            super::archive::ts_ms_of(line.as_bytes()).unwrap_or_else(super::archive::now_ms);
        self.msg.clear();
        header(&mut self.msg, self.pri, ts_ms, &self.host, self.pid);
        self.msg.push_str(line);
        let bytes = self.msg.as_bytes();
        let r = match (&self.socket, &self.target) {
            (Socket::Unix(s), Target::Unix(p)) => s.send_to(bytes, p),
            (Socket::Udp(s), Target::Udp(a)) => s.send_to(bytes, a),
            _ => Err(std::io::Error::other("socket and target differ")),
        };
        match r {
            Ok(_) => metrics::counter!("watchword_audit_syslog_sent_total").increment(1),
            Err(e) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("watchword_audit_syslog_dropped_total", "reason" => "error")
                    .increment(1);
                self.failed_unlogged += 1;
                self.last_error = e.to_string();
            }
        }
    }

    /// Logs the records not forwarded since the last report, at most once a
    /// minute.
    fn report(&mut self) {
        let dropped = self.dropped.load(Ordering::Relaxed);
        let full = dropped.saturating_sub(self.full_seen + self.failed_unlogged);
        if full == 0 && self.failed_unlogged == 0 {
            return;
        }
        if self.last_report.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
            return;
        }
        tracing::warn!(
            target_daemon = %self.target,
            queue_full = full,
            send_failed = self.failed_unlogged,
            last_error = %self.last_error,
            "audit records not forwarded to syslog (the audit file has them)"
        );
        self.full_seen = dropped;
        self.failed_unlogged = 0;
        self.last_report = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_facilities_are_read_or_refused_with_a_reason() {
        assert_eq!(Target::parse(""), Ok(None));
        assert_eq!(
            Target::parse("unix:/dev/log"),
            Ok(Some(Target::Unix("/dev/log".into())))
        );
        assert_eq!(
            Target::parse("udp:127.0.0.1:514"),
            Ok(Some(Target::Udp("127.0.0.1:514".parse().unwrap())))
        );
        assert!(Target::parse("udp:[::1]:514").unwrap().is_some());
        for (bad, why) in [
            ("unix:dev/log", "absolute"),
            ("udp:10.0.0.1:514", "loopback"),
            ("udp:127.0.0.1:0", "loopback"),
            ("udp:localhost:514", "not an ip:port"),
            ("tcp:127.0.0.1:514", "no syslog target"),
            ("/dev/log", "no syslog target"),
        ] {
            let e = Target::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(facility("authpriv"), Some(10));
        assert_eq!(facility("auth"), Some(4));
        assert_eq!(facility("local7"), Some(23));
        assert_eq!(facility("kern"), None);
    }

    #[test]
    fn the_header_is_rfc_5424() {
        let mut m = String::new();
        header(&mut m, 10 * 8 + SEVERITY, 1_738_324_800_123, "gw1", 42);
        assert_eq!(
            m,
            "<86>1 2025-01-31T12:00:00.123Z gw1 watchword 42 audit - "
        );
        let h = hostname();
        assert!(!h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()));
    }
}
