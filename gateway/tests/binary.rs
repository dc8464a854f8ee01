//! The `watchword` binary as an operator uses it: `print-config`,
//! `check-config` (exit status and the list of mistakes), and `serve` followed
//! by SIGTERM (drains, flushes the audit log, exits 0).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use watchword_engine::Channel;
use watchword_gateway::{Client, ClientConfig, IssueRequest};

const BIN: &str = env!("CARGO_BIN_EXE_watchword");

#[test]
fn print_config_output_passes_check_config() {
    let out = Command::new(BIN).arg("print-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("listen = \"127.0.0.1:7400\""));
    assert!(text.contains("# "));
    // Simulated carriers print no HTTP carrier settings (the example of an
    // HTTP carrier is commented out).
    assert!(!text.contains("\n[router.carriers.http]"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("w.toml");
    std::fs::write(&f, text).unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_lists_every_mistake_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "[server]\nlisten = \"0.0.0.0:1\"\nmax_in_flight = 0\n[[tenants]]\nname = \"t\"\nkeys = []\nrole = \"admin\"\n[[tenants]]\nname = \"u\"\nkeys = [\"0123456789\"]\nttl_s = 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    let name = f.display().to_string();
    for field in [
        "server.listen",
        "server.max_in_flight",
        "tenants[0]",
        "tenants[1].ttl_s",
    ] {
        assert!(
            err.contains(&format!("{name}: {field}")),
            "{field} missing:\n{err}"
        );
    }
}

#[tokio::test]
async fn serve_then_sigterm_exits_zero_with_the_audit_log_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("w.toml");
    let audit = dir.path().join("audit.jsonl");
    std::fs::write(
        &f,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             [[tenants]]\nname = \"demo\"\nkeys = [\"demo-key\"]\nrole = \"simulator\"\n\
             [audit]\npath = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = {:?}\n",
            audit.display().to_string(),
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&f)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("a listening line").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let c = Client::connect(ClientConfig {
        addr,
        ..ClientConfig::default()
    })
    .await
    .unwrap();
    let issued = c
        .issue(&IssueRequest {
            subject: "bin".into(),
            channel: Channel::Sms,
            destination: "+14255550177".into(),
            code_len: 0,
            ttl_s: 0,
            locale: String::new(),
            client_ip: String::new(),
        })
        .await
        .unwrap();
    let kill = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(&audit).unwrap();
    assert!(log.contains(&issued.id.to_string()));
}
