//! The help-desk console in a real headless browser: Chromium driven by
//! Selenium (Debian `chromium`, `chromium-driver`, `python3-selenium`, which
//! `.ci/run` installs) against a gateway started here. A wrong key is
//! refused; an agent signs in, looks a user up (methods masked, tokens'
//! state), verifies a caller end to end with the code read from the
//! simulated outbox, is refused a PIN reset; an admin resets the PIN (shown
//! once) and a locked token. A screenshot of each page is kept under
//! `target/tmp/console-screenshots/`. Without the browser the test says
//! what is missing and passes (fails under `CI`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::Receiver;
use watchword_gateway::app::{Running, start};
use watchword_gateway::config::Config;
use watchword_gateway::{Client, ClientConfig, Delivered};

const ADMIN: &str = "demo-admin-key";
const HELPDESK: &str = "demo-helpdesk-key";

/// The system's Python, where Debian's python3-selenium lives (a pyenv
/// `python3` first in PATH would not see it).
fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Whether Chromium, its driver and Selenium for Python are here.
fn browser_present() -> bool {
    let selenium = Command::new(python())
        .args(["-c", "import selenium"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let driver = std::path::Path::new("/usr/bin/chromedriver").exists();
    let found = selenium && driver;
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium, chromium-driver or python3-selenium is not installed; .ci/run installs them"
        );
        eprintln!(
            "SKIPPED: the console's browser test needs chromium, chromium-driver and python3-selenium (apt-get install them)"
        );
    }
    found
}

async fn http(
    r: &Running,
    method: &str,
    path: &str,
    key: &str,
    body: &str,
) -> (u16, Value, String) {
    let addr = r.http_addr.expect("the HTTP API is on");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::Null),
        head.to_owned(),
    )
}

async fn next_code(rx: &mut Receiver<Delivered>) -> String {
    let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a message")
        .expect("the outbox is open");
    d.text
        .chars()
        .filter(char::is_ascii_digit)
        .take(6)
        .collect()
}

/// The browser's script: prints `NEED_CODE` when the agent waits for the
/// caller's code and reads it from stdin; `DONE` at the end.
const SCRIPT: &str = include_str!("console.py");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_verifies_a_caller_and_an_admin_resets_in_a_real_browser() {
    if !browser_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::development();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.server.metrics_listen = "127.0.0.1:0".into();
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.radius.listen = String::new();
    cfg.audit.path = dir.path().join("audit.jsonl");
    cfg.storage.path = dir.path().join("data");
    let r = start(cfg).await.unwrap();
    let sim = Client::connect(ClientConfig {
        addr: r.addr.to_string(),
        tenant: "demo".into(),
        key: "demo-key".into(),
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    let mut outbox = sim.subscribe_outbox().await.unwrap();

    // The console's files keep to themselves.
    let (s, _, head) = http(&r, "GET", "/console/", "", "").await;
    assert_eq!(s, 200);
    let head = head.to_ascii_lowercase();
    for h in [
        "content-security-policy: default-src 'none'; script-src 'self'",
        "x-frame-options: deny",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
    ] {
        assert!(head.contains(h), "{h} in {head}");
    }

    // Ann: an SMS method (confirmed), a token locked by wrong codes.
    let (s, _, _) = http(
        &r,
        "PUT",
        "/v1/users/ann",
        ADMIN,
        r#"{"display_name": "Ann Lee"}"#,
    )
    .await;
    assert_eq!(s, 201);
    let (s, m, _) = http(
        &r,
        "POST",
        "/v1/users/ann/methods",
        ADMIN,
        r#"{"type": "sms", "destination": "+14255550100"}"#,
    )
    .await;
    assert_eq!(s, 201, "{m}");
    let code = next_code(&mut outbox).await;
    let confirm = format!(
        "/v1/users/ann/methods/{}/confirm",
        m["id"].as_str().unwrap()
    );
    let (s, _, _) = http(
        &r,
        "POST",
        &confirm,
        ADMIN,
        &json!({"code": code}).to_string(),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = http(
        &r,
        "POST",
        "/v1/users/ann/tokens",
        ADMIN,
        r#"{"type": "totp"}"#,
    )
    .await;
    assert_eq!(s, 201);
    for _ in 0..10 {
        let (s, _, _) = http(
            &r,
            "POST",
            "/v1/check",
            ADMIN,
            r#"{"subject": "ann", "answer": "x"}"#,
        )
        .await;
        assert_eq!(s, 200);
    }

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = dir.path().join("console.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let base = format!("http://{}", r.http_addr.unwrap());
    let mut child = Command::new(python())
        .arg(&script)
        .args([base.as_str(), shots.to_str().unwrap(), ADMIN, HELPDESK])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut pin = None;
    let mut done = false;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(90), rx.recv())
        .await
        .expect("the browser script goes on")
    {
        if line == "NEED_CODE" {
            let code = next_code(&mut outbox).await;
            writeln!(stdin, "{code}").unwrap();
            stdin.flush().unwrap();
        } else if let Some(p) = line.strip_prefix("PIN ") {
            pin = Some(p.to_owned());
        } else if line == "DONE" {
            done = true;
        }
    }
    let status = child.wait().unwrap();
    assert!(
        status.success() && done,
        "the browser script failed: {status}"
    );
    for name in [
        "1-signin",
        "3-user",
        "5-verified",
        "6-pin-reset",
        "7-token-reset",
    ] {
        assert!(shots.join(format!("{name}.png")).exists(), "{name}");
    }
    // What the browser saw as the new PIN is the user's PIN now.
    let pin = pin.expect("the PIN shown once");
    let (s, p, _) = http(&r, "GET", "/v1/users/ann/pin", HELPDESK, "").await;
    assert_eq!((s, &p["masked"]), (200, &json!("*****")));
    r.shutdown();
    let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap_or_default();
    assert!(log.contains("\"helpdesk_verification\"") && !log.contains(&pin));
}
