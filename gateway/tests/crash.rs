//! An acknowledged write survives `kill -9`: a real `watchword serve` child
//! takes user writes from eight concurrent clients through the HTTP API and
//! is killed with SIGKILL at a random moment, three times; after each restart
//! every write it had acknowledged is there with its value (or a later one
//! of the same client), and the store checks clean.

mod child;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use child::{ADMIN_KEY, BIN, Server, http};
use rand::Rng;

/// Writes as fast as answers come until `stop`; returns, per subject, the
/// last value acknowledged.
fn writer(addr: String, round: u32, w: u32, stop: Arc<AtomicBool>) -> HashMap<String, u64> {
    let mut acked = HashMap::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Forty subjects per writer, each written again and again.
        let subject = format!("crash-{round}-{w}-{}", i % 40);
        let body = format!(r#"{{"display_name": "v{i}"}}"#);
        match http(
            &addr,
            "PUT",
            &format!("/v1/users/{subject}"),
            ADMIN_KEY,
            &body,
        ) {
            Ok((200 | 201, _)) => {
                acked.insert(subject, i);
            }
            Ok((status, body)) => panic!("PUT {subject}: {status} {body}"),
            // The server died under the request: not acknowledged.
            Err(_) => break,
        }
        i += 1;
    }
    acked
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut server = Server::start();
    let mut rng = rand::rng();
    let mut all: HashMap<String, u64> = HashMap::new();
    for round in 0..3u32 {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(HashMap::new()));
        let threads: Vec<_> = (0..8u32)
            .map(|w| {
                let (addr, stop, acked) = (server.http_addr(), stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    let got = writer(addr, round, w, stop);
                    acked.lock().unwrap().extend(got);
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1200)));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        assert!(
            acked.len() > 10,
            "round {round}: only {} writes acknowledged",
            acked.len()
        );
        all.extend(acked);
        server.restart();
        for (subject, v) in &all {
            let (status, body) = http(
                &server.http_addr(),
                "GET",
                &format!("/v1/users/{subject}"),
                ADMIN_KEY,
                "",
            )
            .unwrap();
            assert_eq!(
                status, 200,
                "round {round}: acknowledged {subject} is gone: {body}"
            );
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            let name = json["display_name"].as_str().unwrap();
            let got: u64 = name.trim_start_matches('v').parse().unwrap();
            assert!(
                got >= *v,
                "round {round}: {subject} went back from v{v} to {name}"
            );
        }
    }
    server.kill9();
    let out = std::process::Command::new(BIN)
        .args(["check-store", "--config", server.config_arg()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-store: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The current TOTP code of a base32 secret.
fn totp_now(b32: &str) -> String {
    use watchword_engine::oath::{Algorithm, Params, Secret, Token, base32_decode};
    let secret = Secret::new(base32_decode(b32).unwrap());
    let p = Params {
        algorithm: Algorithm::Sha1,
        digits: 6,
        period: 30,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Token::new(&secret, p).unwrap().totp(now)
}

#[test]
fn a_token_code_accepted_just_before_kill_9_is_refused_after_the_restart() {
    let mut server = Server::start();
    let addr = server.http_addr();
    let (s, _) = http(&addr, "PUT", "/v1/users/ann", ADMIN_KEY, "{}").unwrap();
    assert_eq!(s, 201);
    let (s, body) = http(
        &addr,
        "POST",
        "/v1/users/ann/tokens",
        ADMIN_KEY,
        r#"{"type": "totp"}"#,
    )
    .unwrap();
    assert_eq!(s, 201, "{body}");
    let t: serde_json::Value = serde_json::from_str(&body).unwrap();
    let uri = t["otpauth_uri"].as_str().unwrap();
    let b32 = uri
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("secret="))
        .unwrap()
        .to_owned();
    let check = format!(r#"{{"subject": "ann", "answer": "{}"}}"#, totp_now(&b32));
    let (s, answer) = http(&addr, "POST", "/v1/check", child::CLIENT_KEY, &check).unwrap();
    assert_eq!((s, answer.as_str()), (200, r#"{"result":"accept"}"#));
    // No shutdown, no flush: the accept's write was acknowledged before the answer.
    server.kill9();
    server.restart();
    let (s, answer) = http(
        &server.http_addr(),
        "POST",
        "/v1/check",
        child::CLIENT_KEY,
        &check,
    )
    .unwrap();
    assert_eq!(s, 200);
    assert!(
        answer.contains("wrong_answer"),
        "the code verified again after kill -9: {answer}"
    );
}
