//! The SMSC fixture shared by the SMPP carrier's tests (included with
//! `#[path]`): `tests/smsc/smsc.js` (the `smpp` npm package's server) run
//! with node on 127.0.0.1, its event lines collected, its control lines
//! sent, and the process killed by its pid when dropped.
//!
//! Test-only; it must never listen beyond loopback or outlive its test.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

pub const SYSTEM_ID: &str = "watchword";
pub const PASSWORD: &str = "s3cretpw";

pub fn smsc_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/smsc")
}

/// Whether the SMSC can run here; if not, says what is missing, and fails
/// in CI.
pub fn smsc_ready() -> bool {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let missing = if !node {
        Some("node is not installed (apt-get install nodejs npm)")
    } else if !smsc_dir().join("node_modules/smpp/package.json").is_file() {
        Some("the smpp npm package is not installed (cd engine/tests/smsc && npm ci)")
    } else {
        None
    };
    if let Some(what) = missing {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what}; .ci/run installs it"
        );
        eprintln!("SKIPPED: {what}");
        return false;
    }
    true
}

/// A running `smsc.js`: its event lines, its control input; killed by pid
/// on drop.
pub struct Smsc {
    child: Child,
    stdin: Mutex<ChildStdin>,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub port: u16,
}

impl Smsc {
    /// Starts on a free port.
    pub async fn start() -> Smsc {
        Self::start_on(0).await
    }

    /// Starts on `port` (0: a free one, read from its first line).
    pub async fn start_on(port: u16) -> Smsc {
        let mut child = Command::new("node")
            .arg("smsc.js")
            .arg(port.to_string())
            .arg(SYSTEM_ID)
            .arg(PASSWORD)
            .current_dir(smsc_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node smsc.js");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                l.lock().push(line);
            }
        });
        let mut s = Smsc {
            child,
            stdin: Mutex::new(stdin),
            lines,
            port: 0,
        };
        assert!(
            s.wait_for(|l| l.starts_with("LISTENING "), 1, Duration::from_secs(10))
                .await,
            "the SMSC did not start"
        );
        let first = s.find("LISTENING ").unwrap();
        s.port = field(&first, "port").parse().unwrap();
        s
    }

    /// Sends a control line and waits for its `OK`.
    pub async fn control(&self, line: &str) {
        writeln!(self.stdin.lock(), "{line}").unwrap();
        let ok = format!("OK {line}");
        assert!(
            self.wait_for(|l| l == ok, 1, Duration::from_secs(5)).await,
            "the SMSC did not take {line:?}"
        );
    }

    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.lines.lock().iter().filter(|l| pred(l)).count()
    }

    pub fn find(&self, prefix: &str) -> Option<String> {
        self.lines
            .lock()
            .iter()
            .find(|l| l.starts_with(prefix))
            .cloned()
    }

    pub fn all(&self, prefix: &str) -> Vec<String> {
        (self.lines.lock().iter())
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Waits until `n` lines match.
    pub async fn wait_for(&self, pred: impl Fn(&str) -> bool, n: usize, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.count(&pred) >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.count(&pred) >= n
    }

    /// The SUBMIT lines, once there are `n` (the SMSC prints each right
    /// after its answer, which may reach the carrier first).
    pub async fn submits(&self, n: usize) -> Vec<String> {
        assert!(
            self.wait_for(|l| l.starts_with("SUBMIT "), n, Duration::from_secs(5))
                .await,
            "{:?}",
            self.all("SUBMIT ")
        );
        self.all("SUBMIT ")
    }

    /// Kills it (by its pid) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Smsc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of `key=` in an event line.
pub fn field(line: &str, key: &str) -> String {
    let k = format!("{key}=");
    line.split(' ')
        .find_map(|w| w.strip_prefix(k.as_str()))
        .unwrap_or_default()
        .to_owned()
}
