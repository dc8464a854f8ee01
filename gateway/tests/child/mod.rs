//! A real `watchword serve` child for the binary's end-to-end tests: free
//! loopback ports, a temporary configuration and data directory, a health
//! wait, `kill -9` and a restart on the same data. Dropping it kills the
//! child, also on panic: a test never leaves a server running.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_watchword");
/// The admin key of the test configuration's tenant `demo`.
pub(crate) const ADMIN_KEY: &str = "test-admin-key-1";
/// Its client key.
pub(crate) const CLIENT_KEY: &str = "test-client-key-1";

/// A free loopback port (bound, read, released; the server binds it next).
pub(crate) fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A `watchword serve --config F` child; dropping it kills the child.
pub(crate) struct Server {
    child: Child,
    /// The data, configuration and log directory.
    pub(crate) dir: tempfile::TempDir,
    /// The configuration file.
    pub(crate) config: PathBuf,
    /// The HTTP API base URL.
    pub(crate) url: String,
    http_port: u16,
    /// The protocol listener's port.
    pub(crate) proto_port: u16,
    /// Server logs written so far (each start writes the next).
    logs: u32,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts a server on fresh ports and a fresh directory.
    pub(crate) fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (listen, metrics, http) = (free_port(), free_port(), free_port());
        let config = dir.path().join("watchword.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{listen}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n\
             [storage]\npath = {data:?}\n\
             [audit]\npath = {audit:?}\n\
             [[tenants]]\nname = \"demo\"\nkeys = [\"demo-key\"]\nrole = \"simulator\"\n\
             http_keys = [{{ key = \"{ADMIN_KEY}\", role = \"admin\" }}, \
             {{ key = \"{CLIENT_KEY}\", role = \"client\" }}]\n",
            data = dir.path().join("data").display().to_string(),
            audit = dir.path().join("audit.jsonl").display().to_string(),
        );
        std::fs::write(&config, text).unwrap();
        let child = spawn(&config, &dir.path().join("server.log"));
        let server = Server {
            child,
            dir,
            config,
            url: format!("http://127.0.0.1:{http}"),
            http_port: http,
            proto_port: listen,
            logs: 1,
        };
        server.wait_healthy(http);
        server
    }

    /// Kills the child with SIGKILL (no shutdown, no flush) and reaps it.
    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same configuration and data.
    pub(crate) fn restart(&mut self) {
        self.kill9();
        self.start_again(&[]);
        self.wait_healthy(self.http_port);
    }

    /// Sends SIGTERM and waits (up to 60 s) for the exit; true if it exited 0.
    pub(crate) fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "no exit 60 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `serve` again with `extra` arguments (the previous child must
    /// have ended); does not wait for health.
    pub(crate) fn start_again(&mut self, extra: &[&str]) {
        self.logs += 1;
        let log = self.dir.path().join(format!("server{}.log", self.logs));
        self.child = spawn_with(&self.config, &log, extra);
    }

    /// Waits up to 30 s for the child to exit; its status code and log.
    pub(crate) fn wait_exit(&mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running after 30 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        (status.code(), self.log())
    }

    /// The latest start's log.
    pub(crate) fn log(&self) -> String {
        let name = if self.logs == 1 {
            "server.log".to_owned()
        } else {
            format!("server{}.log", self.logs)
        };
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Waits for `GET /healthz` on the HTTP port.
    pub(crate) fn wait_ready(&self) {
        self.wait_healthy(self.http_port);
    }

    /// The HTTP API's `host:port`.
    pub(crate) fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// Polls `GET /healthz` for up to 20 s.
    pub(crate) fn wait_healthy(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if healthz(port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = self.log();
        panic!("the server did not answer /healthz within 20 s; its log:\n{log}");
    }

    /// Runs `watchword ARGS --url URL --key KEY`.
    pub(crate) fn api(&self, key: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["--url", &self.url, "--key", key])
            .env_remove("WATCHWORD_URL")
            .env_remove("WATCHWORD_KEY")
            .output()
            .unwrap()
    }

    /// The configuration path as text.
    pub(crate) fn config_arg(&self) -> &str {
        self.config.to_str().unwrap()
    }
}

/// Whether `GET /healthz` answers 200 on `port`.
pub(crate) fn healthz(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

fn spawn(config: &std::path::Path, log: &std::path::Path) -> Child {
    spawn_with(config, log, &[])
}

fn spawn_with(config: &std::path::Path, log: &std::path::Path, extra: &[&str]) -> Child {
    let log = File::create(log).unwrap();
    Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

/// One HTTP/1.1 request on a fresh connection: the status and the body.
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    key: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
