//! The SMTP test server fixture shared by the SMTP carrier's tests (included
//! with `#[path]`): `tests/smtp/server.py` (Python's aiosmtpd) started on
//! 127.0.0.1 on a free port (or its previous one, on restart), the messages it
//! stored read back, and the process killed by its pid when dropped.
//!
//! Test-only; it must never listen beyond loopback or outlive its test.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub const PYTHON: &str = "/usr/bin/python3";
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp/server.py");

/// Whether /usr/bin/python3 has aiosmtpd; if not, says what is missing, and
/// fails in CI.
pub fn aiosmtpd_present() -> bool {
    let found = Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "aiosmtpd is not installed for {PYTHON}; .ci/run installs it (python3-aiosmtpd)"
        );
        eprintln!(
            "SKIPPED: aiosmtpd is not installed for {PYTHON} \
             (apt-get install python3-aiosmtpd, or pip install aiosmtpd)"
        );
    }
    found
}

/// A running `server.py`, killed by its pid when dropped.
pub struct SmtpServer {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    /// Where it stores messages (and its stderr, `server.log`).
    pub dir: tempfile::TempDir,
}

impl SmtpServer {
    /// Starts a server on a free port with `args` (server.py's options).
    pub fn start(args: &[&str]) -> Self {
        let mut s = Self {
            child: None,
            port: 0,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            dir: tempfile::tempdir().unwrap(),
        };
        s.spawn();
        s
    }

    /// Starts the process on `self.port` (0: any) and waits for its port.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let mut child = Command::new(PYTHON)
            .arg(SCRIPT)
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--port", &self.port.to_string()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // The guard owns the process from here: a failed wait kills it.
        self.child = Some(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Drain until the process ends.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "server.py did not start; its log: {}",
                    std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
                )
            });
        let v: Value = serde_json::from_str(&line).unwrap();
        self.port = u16::try_from(v["port"].as_u64().unwrap()).unwrap();
    }

    /// Kills the process (SIGKILL, by its pid) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Every message it accepted.
    pub fn messages(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                out.push(serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap());
            }
        }
        out
    }

    /// The one message to `rcpt`.
    pub fn message_to(&self, rcpt: &str) -> Value {
        let all: Vec<Value> = self
            .messages()
            .into_iter()
            .filter(|m| m["rcpt_tos"][0] == rcpt)
            .collect();
        assert_eq!(all.len(), 1, "messages to {rcpt}: {all:?}");
        all.into_iter().next().unwrap()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.kill();
    }
}
