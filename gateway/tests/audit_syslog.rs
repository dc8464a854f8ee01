//! The audit trail forwarded to a real syslog daemon (`[audit] syslog`,
//! docs/operations.md "Audit log"): an `rsyslogd` (Debian `rsyslog`) started
//! here with its own configuration, listening on a Unix datagram socket in a
//! temporary directory and on a free loopback UDP port, writing what it
//! receives to a file in that directory. Records sent both ways are found in
//! that file, parsed as RFC 5424 (priority, app-name, procid, msgid,
//! timestamp) with the JSON record as the message.
//!
//! A test whose outside program is missing says so and passes, except in CI
//! (`CI` set), where a missing program is a failure. The daemon listens on
//! loopback and a temporary socket only and is killed by its pid when the
//! test ends, also on panic. These tests must never use a fixed port or the
//! system's /dev/log, or leave a process running.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use watchword_engine::{ChallengeId, Channel, Event, EventKind, EventSink, TenantId};
use watchword_gateway::audit::AuditLog;
use watchword_gateway::config::AuditConfig;

/// Whether `rsyslogd` runs; if not, says what is missing, and fails in CI.
fn rsyslogd_present() -> bool {
    let found = std::process::Command::new("rsyslogd")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "rsyslogd is not installed (apt-get install rsyslog); .ci/run installs it"
        );
        eprintln!("SKIPPED: rsyslogd is not installed (apt-get install rsyslog)");
    }
    found
}

/// A free loopback UDP port (bound, read, released; the daemon binds it next).
fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// An `rsyslogd` of this test; dropping it kills it by its pid.
struct Rsyslogd {
    child: Child,
    socket: PathBuf,
    port: u16,
    out: PathBuf,
}

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Rsyslogd {
    /// Starts one in `dir`: Unix socket `dir/log.sock`, UDP on 127.0.0.1 at a
    /// free port, every message to `dir/out.log` as
    /// `PRI|FACILITY|APP-NAME|PROCID|MSGID|TIMESTAMP|MSG`.
    fn start(dir: &Path) -> Rsyslogd {
        let socket = dir.join("log.sock");
        let out = dir.join("out.log");
        let port = free_udp_port();
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{dir}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{socket}" UseSpecialParser="off" ParseHostname="on" UseSysTimeStamp="off" IgnoreTimestamp="off")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{port}")
template(name="fields" type="string" string="%pri%|%syslogfacility-text%|%app-name%|%procid%|%msgid%|%timereported:::date-rfc3339%|%msg%\n")
*.* action(type="omfile" file="{out}" template="fields")
"#,
                dir = dir.display(),
                socket = socket.display(),
                out = out.display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("rsyslogd.stderr")).unwrap();
        let child = std::process::Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Rsyslogd {
            child,
            socket,
            port,
            out,
        };
        d.wait_ready(dir);
        d
    }

    /// Waits until a probe sent each way is in the output file.
    fn wait_ready(&self, dir: &Path) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let unix = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        loop {
            let out = std::fs::read_to_string(&self.out).unwrap_or_default();
            if out.contains("probe-unix") && out.contains("probe-udp") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not start: {}",
                std::fs::read_to_string(dir.join("rsyslogd.stderr")).unwrap_or_default()
            );
            if !out.contains("probe-unix") {
                let _ = unix.send_to(b"<14>1 - - probe - - - probe-unix", &self.socket);
            }
            if !out.contains("probe-udp") {
                let _ = udp.send_to(b"<14>1 - - probe - - - probe-udp", ("127.0.0.1", self.port));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The output lines of app-name `watchword`, waiting until `want` are
    /// there (or 20 s).
    fn records(&self, want: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lines: Vec<String> = std::fs::read_to_string(&self.out)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.split('|').nth(2) == Some("watchword"))
                .map(str::to_owned)
                .collect();
            if lines.len() >= want || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

const T0: u64 = 1_738_324_800_123; // 2025-01-31T12:00:00.123Z

/// Records `n` events with subjects `{prefix}-{i}` at `T0 + i` ms to a log
/// forwarding to `syslog` with `facility`, and waits for the file.
fn record(dir: &Path, name: &str, syslog: String, facility: &str, prefix: &str, n: u64) {
    let cfg = AuditConfig {
        path: dir.join(name),
        syslog,
        syslog_facility: facility.into(),
        ..AuditConfig::default()
    };
    let log = AuditLog::open(&cfg, "gw", "127.0.0.1", vec!["demo".into()]).unwrap();
    let destination = watchword_engine::mask_destination("+14255551234");
    for i in 0..n {
        let subject = format!("{prefix}-{i}");
        log.record(&Event {
            kind: EventKind::Issued,
            at_ms: T0 + i,
            tenant: TenantId(0),
            id: ChallengeId([0xab; 16]),
            subject: &subject,
            channel: Channel::Sms,
            destination,
            attempts_left: 5,
            carrier: None,
            reason: None,
            client_ip: Some("203.0.113.9"),
        });
    }
    log.close();
    assert_eq!(log.syslog_dropped(), 0);
    let file = std::fs::read_to_string(&cfg.path).unwrap();
    assert_eq!(file.lines().count() as u64, n, "the file has every record");
}

#[test]
fn records_reach_rsyslogd_over_a_unix_socket_and_loopback_udp() {
    if !rsyslogd_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = Rsyslogd::start(dir.path());
    const N: u64 = 50;
    record(
        dir.path(),
        "unix.jsonl",
        format!("unix:{}", daemon.socket.display()),
        "authpriv",
        "via-unix",
        N,
    );
    record(
        dir.path(),
        "udp.jsonl",
        format!("udp:127.0.0.1:{}", daemon.port),
        "local3",
        "via-udp",
        N,
    );
    let lines = daemon.records(2 * N as usize);
    assert_eq!(lines.len(), 2 * N as usize, "{lines:#?}");
    let pid = std::process::id().to_string();
    for (prefix, pri, facility) in [("via-unix", "86", "authpriv"), ("via-udp", "158", "local3")] {
        let mut subjects = Vec::new();
        for l in &lines {
            let f: Vec<&str> = l.splitn(7, '|').collect();
            let record: serde_json::Value = serde_json::from_str(f[6])
                .unwrap_or_else(|e| panic!("MSG is not the JSON record ({e}): {l}"));
            let subject = record["subject"].as_str().unwrap();
            if !subject.starts_with(prefix) {
                continue;
            }
            assert_eq!(
                &f[..5],
                &[pri, facility, "watchword", pid.as_str(), "audit"],
                "{l}"
            );
            let i: u64 = subject.rsplit('-').next().unwrap().parse().unwrap();
            assert_eq!(record["ts_ms"], T0 + i);
            let stamp = humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + Duration::from_millis(T0 + i),
            )
            .to_string();
            assert_eq!(f[5], stamp, "TIMESTAMP is the record's time: {l}");
            assert_eq!(record["destination"], "+14*******34");
            assert!(!l.contains("4255551234"), "{l}");
            subjects.push(i);
        }
        subjects.sort_unstable();
        assert_eq!(subjects, (0..N).collect::<Vec<_>>(), "{prefix}");
    }
}
