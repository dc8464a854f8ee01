//! HTTP carrier delivery receipts through the real listeners: a gateway with
//! an `http` carrier (receipts = true) pointing at a loopback fake carrier
//! that records what it is POSTed; the test then plays the carrier's signed
//! callback on the HTTP API and reads the delivery state back over STATUS.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use watchword_engine::delivery::{CarrierConfig, CarrierKind, HttpConfig, callback};
use watchword_engine::{Channel, DeliveryState};
use watchword_gateway::app::{Running, start};
use watchword_gateway::config::Config;
use watchword_gateway::{Client, ClientConfig, IssueRequest};

const SECRET: &str = "a-test-callback-secret-0123";

/// A fake HTTP carrier on loopback: answers 200 to every POST (keep-alive)
/// and sends each JSON body it got down the channel.
async fn fake_carrier() -> (String, mpsc::UnboundedReceiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/messages", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_fake(s, tx.clone()));
        }
    });
    (url, rx)
}

async fn serve_fake(mut s: TcpStream, tx: mpsc::UnboundedSender<Value>) {
    let mut buf = Vec::new();
    loop {
        // Read one request: headers, then Content-Length bytes of body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
        let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

fn config(dir: &std::path::Path, carrier_url: &str) -> Config {
    let mut cfg = Config::development();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.server.metrics_listen = "127.0.0.1:0".into();
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.audit.path = dir.join("audit.jsonl");
    cfg.audit.flush_interval_ms = 20;
    cfg.storage.path = dir.join("data");
    cfg.radius.listen = String::new();
    cfg.router.carriers = vec![CarrierConfig {
        name: "webhooks".into(),
        kind: CarrierKind::Http,
        channels: vec![Channel::Sms, Channel::Voice],
        http: HttpConfig {
            url: carrier_url.into(),
            receipts: true,
            callback_secret: SECRET.into(),
            ..HttpConfig::default()
        },
        ..CarrierConfig::default()
    }];
    cfg
}

/// A request to the HTTP API with extra header lines (each `Name: value`);
/// the status and JSON answer. No answer may hold the callback secret.
async fn request(r: &Running, method: &str, path: &str, headers: &str, body: &str) -> (u16, Value) {
    let addr = r.http_addr.expect("the HTTP API is on");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    assert!(!text.contains(SECRET), "{text}");
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let payload = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(payload).unwrap_or(Value::Null))
}

/// POSTs `body` to `path` on the HTTP API with the given signature headers.
async fn post_signed(r: &Running, path: &str, body: &str, sig: &str, ts: u64) -> (u16, Value) {
    let headers = format!("X-Watchword-Timestamp: {ts}\r\nX-Watchword-Signature: {sig}\r\n");
    request(r, "POST", path, &headers, body).await
}

/// A protocol connection as the demo tenant.
async fn demo_client(r: &Running) -> Client {
    Client::connect(ClientConfig {
        addr: r.addr.to_string(),
        tenant: "demo".into(),
        key: "demo-key".into(),
        ..ClientConfig::default()
    })
    .await
    .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sms(subject: &str, dest: &str) -> IssueRequest {
    IssueRequest {
        subject: subject.into(),
        channel: Channel::Sms,
        destination: dest.into(),
        code_len: 0,
        ttl_s: 0,
        locale: String::new(),
        client_ip: "203.0.113.7".into(),
    }
}

/// The delivery state STATUS shows for `id`, once it is no longer `Queued`.
async fn delivery_of(c: &Client, id: watchword_engine::ChallengeId) -> DeliveryState {
    for _ in 0..200 {
        let d = c.status(id).await.unwrap().delivery;
        if d != DeliveryState::Queued {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("still queued");
}

#[tokio::test]
async fn signed_callbacks_settle_http_deliveries_and_bad_ones_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (url, mut posted) = fake_carrier().await;
    let r = start(config(dir.path(), &url)).await.unwrap();
    let c = demo_client(&r).await;
    let path = "/v1/carriers/webhooks/receipts";

    // The carrier gets the token and the callback path; a 2xx leaves it Sent.
    let first = c.issue(&sms("user-1", "+14255550134")).await.unwrap();
    let body = tokio::time::timeout(Duration::from_secs(10), posted.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body["callback"], path, "{body}");
    let token = body["receipt_token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 16, "{body}");
    assert_eq!(delivery_of(&c, first.id).await, DeliveryState::Sent);

    // A bad signature: 401, and nothing changes.
    let delivered = format!(r#"{{"receipt_token":"{token}","status":"delivered"}}"#);
    let ts = now();
    let forged = callback::sign(b"not-the-secret-at-all", ts, delivered.as_bytes());
    let (st, v) = post_signed(&r, path, &delivered, &forged, ts).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("unauthenticated")),
        "{v}"
    );
    // A stale, correctly signed one: 401 too.
    let old = ts - 600;
    let stale = callback::sign(SECRET.as_bytes(), old, delivered.as_bytes());
    let (st, v) = post_signed(&r, path, &delivered, &stale, old).await;
    assert_eq!(st, 401, "{v}");
    assert!(v["message"].as_str().unwrap().contains("5 minutes"), "{v}");
    assert_eq!(
        c.status(first.id).await.unwrap().delivery,
        DeliveryState::Sent
    );
    // An unknown carrier: 404.
    let sig = callback::sign(SECRET.as_bytes(), ts, delivered.as_bytes());
    let (st, _) = post_signed(&r, "/v1/carriers/other/receipts", &delivered, &sig, ts).await;
    assert_eq!(st, 404);

    // The signed "delivered" callback: 202, and STATUS says Delivered.
    let (st, v) = post_signed(&r, path, &delivered, &sig, ts).await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(delivery_of(&c, first.id).await, DeliveryState::Delivered);
    // The same callback again: nothing is awaited under that token.
    let (st, _) = post_signed(&r, path, &delivered, &sig, ts).await;
    assert_eq!(st, 404);

    // A "failed" callback: Failed.
    let second = c.issue(&sms("user-2", "+14255550135")).await.unwrap();
    let body = tokio::time::timeout(Duration::from_secs(10), posted.recv())
        .await
        .unwrap()
        .unwrap();
    let token = body["receipt_token"].as_str().unwrap().to_owned();
    assert_eq!(delivery_of(&c, second.id).await, DeliveryState::Sent);
    let failed =
        format!(r#"{{"receipt_token":"{token}","status":"failed","reason":"handset off"}}"#);
    let ts = now();
    let sig = callback::sign(SECRET.as_bytes(), ts, failed.as_bytes());
    // Malformed bodies, correctly signed: 4xx, nothing changes.
    for bad in [
        format!(r#"{{"receipt_token":"{token}","status":"lost"}}"#),
        r#"{"receipt_token":"not hex","status":"failed"}"#.to_owned(),
        "{".to_owned(),
    ] {
        let bsig = callback::sign(SECRET.as_bytes(), ts, bad.as_bytes());
        let (st, v) = post_signed(&r, path, &bad, &bsig, ts).await;
        assert!(st == 400 || st == 422, "{st} {v}");
    }
    assert_eq!(
        c.status(second.id).await.unwrap().delivery,
        DeliveryState::Sent
    );
    let (st, v) = post_signed(&r, path, &failed, &sig, ts).await;
    assert_eq!(st, 202, "{v}");
    let mut d = DeliveryState::Sent;
    for _ in 0..200 {
        d = c.status(second.id).await.unwrap().delivery;
        if d != DeliveryState::Sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(d, DeliveryState::Failed);

    // Bodies over 4 KiB are refused before anything else.
    let big = format!(
        r#"{{"receipt_token":"{}","status":"failed"}}"#,
        "0".repeat(5000)
    );
    let bsig = callback::sign(SECRET.as_bytes(), ts, big.as_bytes());
    let (st, _) = post_signed(&r, path, &big, &bsig, ts).await;
    assert_eq!(st, 413);

    r.shutdown();
}

/// An admin-API request with a bearer key; the status and JSON answer.
async fn admin(r: &Running, method: &str, path: &str, body: &str) -> (u16, Value) {
    request(
        r,
        method,
        path,
        "Authorization: Bearer demo-admin-key\r\n",
        body,
    )
    .await
}

/// The next call the fake carrier was asked to make: its receipt token.
async fn next_call(posted: &mut mpsc::UnboundedReceiver<Value>) -> String {
    let body = tokio::time::timeout(Duration::from_secs(10), posted.recv())
        .await
        .expect("a call")
        .unwrap();
    assert_eq!(body["channel"], "voice", "{body}");
    assert_eq!(body["purpose"], "call_confirmation", "{body}");
    assert_eq!(
        body["call_callback"], "/v1/carriers/webhooks/calls",
        "{body}"
    );
    body["receipt_token"].as_str().unwrap().to_owned()
}

/// Posts a correctly signed call-outcome callback.
async fn call_outcome(r: &Running, body: &str) -> (u16, Value) {
    let ts = now();
    let sig = callback::sign(SECRET.as_bytes(), ts, body.as_bytes());
    post_signed(r, "/v1/carriers/webhooks/calls", body, &sig, ts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_outcome_callbacks_confirm_decline_and_fail_confirmation_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (url, mut posted) = fake_carrier().await;
    let r = start(config(dir.path(), &url)).await.unwrap();
    let (s, v) = admin(&r, "PUT", "/v1/users/ann", r#"{"default_method": "call"}"#).await;
    assert_eq!(s, 201, "{v}");

    // Registration: the carrier is asked to call; the person answers and
    // presses #, which the carrier reports; the method becomes active.
    let (s, m) = admin(
        &r,
        "POST",
        "/v1/users/ann/methods",
        r#"{"type": "call", "destination": "(425) 555-0199"}"#,
    )
    .await;
    assert_eq!(s, 201, "{m}");
    let mid = m["id"].as_str().unwrap().to_owned();
    let token = next_call(&mut posted).await;
    let (s, v) = call_outcome(
        &r,
        &format!(r#"{{"receipt_token":"{token}","status":"answered"}}"#),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    // Malformed outcomes, correctly signed: refused, nothing changes.
    for (bad, says) in [
        (
            format!(r#"{{"receipt_token":"{token}","status":"answered","digits":"1"}}"#),
            "digits",
        ),
        (
            format!(r#"{{"receipt_token":"{token}","status":"completed","digits":"12a#"}}"#),
            "digits",
        ),
        (
            format!(
                r#"{{"receipt_token":"{token}","status":"completed","digits":"{}"}}"#,
                "1".repeat(33)
            ),
            "digits",
        ),
        (
            format!(r#"{{"receipt_token":"{token}","status":"hung_up"}}"#),
            "status",
        ),
        (
            r#"{"receipt_token":"xyz","status":"completed"}"#.to_owned(),
            "receipt_token",
        ),
    ] {
        let (s, v) = call_outcome(&r, &bad).await;
        assert!(s == 400 || s == 422, "{bad}: {s} {v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{bad}: {v}");
    }
    // Unsigned: 401.
    let confirm = format!(r##"{{"receipt_token":"{token}","status":"completed","digits":"#"}}"##);
    let ts = now();
    let forged = callback::sign(b"not-the-secret-at-all", ts, confirm.as_bytes());
    let (s, _) = post_signed(&r, "/v1/carriers/webhooks/calls", &confirm, &forged, ts).await;
    assert_eq!(s, 401);
    let (_, m) = admin(&r, "GET", &format!("/v1/users/ann/methods/{mid}"), "").await;
    assert_eq!(m["state"], "pending", "{m}");
    let (s, v) = call_outcome(&r, &confirm).await;
    assert_eq!(s, 202, "{v}");
    let mut state = Value::Null;
    for _ in 0..200 {
        state = admin(&r, "GET", &format!("/v1/users/ann/methods/{mid}"), "")
            .await
            .1["state"]
            .clone();
        if state != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state, "active");
    // The call ended: a second outcome for it is not awaited.
    let (s, _) = call_outcome(&r, &confirm).await;
    assert_eq!(s, 404);

    // A CHECK held on the call's state ends when the carrier reports #.
    let c = demo_client(&r).await;
    let ch = c.check("ann", "", "", "192.0.2.9").await.unwrap();
    assert_eq!(ch.result, 2, "{ch:?}");
    let token = next_call(&mut posted).await;
    let id = watchword_engine::check::parse_state(&ch.state).unwrap();
    assert_eq!(delivery_of(&c, id).await, DeliveryState::Sent);
    let held = {
        let st = ch.state.clone();
        let c2 = demo_client(&r).await;
        tokio::spawn(async move { c2.check("ann", "", &st, "").await })
    };
    let (s, v) = call_outcome(
        &r,
        &format!(r#"{{"receipt_token":"{token}","status":"answered"}}"#),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(
        delivery_of_not(&c, id, DeliveryState::Sent).await,
        DeliveryState::Delivered
    );
    let (s, v) = call_outcome(
        &r,
        &format!(r##"{{"receipt_token":"{token}","status":"completed","digits":"#"}}"##),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let done = held.await.unwrap().unwrap();
    assert_eq!(done.result, 0, "{done:?}");

    // Other keys decline: REJECT reason 6.
    let ch = c.check("ann", "call", "", "").await.unwrap();
    let token = next_call(&mut posted).await;
    let (s, _) = call_outcome(
        &r,
        &format!(r#"{{"receipt_token":"{token}","status":"completed","digits":"24680"}}"#),
    )
    .await;
    assert_eq!(s, 202);
    let done = c.check("ann", "", &ch.state, "").await.unwrap();
    assert_eq!((done.result, done.reason), (1, 6), "{done:?}");

    // Nobody answers: REJECT reason 6, and the call's delivery failed.
    let ch = c.check("ann", "call", "", "").await.unwrap();
    let id = watchword_engine::check::parse_state(&ch.state).unwrap();
    let token = next_call(&mut posted).await;
    assert_eq!(delivery_of(&c, id).await, DeliveryState::Sent);
    let (s, _) = call_outcome(
        &r,
        &format!(r#"{{"receipt_token":"{token}","status":"no_answer"}}"#),
    )
    .await;
    assert_eq!(s, 202);
    let done = c.check("ann", "", &ch.state, "").await.unwrap();
    assert_eq!((done.result, done.reason), (1, 6), "{done:?}");
    assert_eq!(
        delivery_of_not(&c, id, DeliveryState::Sent).await,
        DeliveryState::Failed
    );

    // An SMS's token is not a call's: 404 on the calls path.
    let sms_id = c.issue(&sms("user-9", "+14255550136")).await.unwrap().id;
    let body = tokio::time::timeout(Duration::from_secs(10), posted.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(body.get("call_callback").is_none(), "{body}");
    let token = body["receipt_token"].as_str().unwrap();
    let (s, _) = call_outcome(
        &r,
        &format!(r##"{{"receipt_token":"{token}","status":"completed","digits":"#"}}"##),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(
        c.status(sms_id).await.unwrap().delivery,
        DeliveryState::Sent
    );

    // The audit trail never holds the keys pressed with a PIN-like value.
    r.shutdown();
    r.wait().await;
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(!audit.contains("24680"), "the keys pressed are not audited");
    assert!(
        !audit.contains("5550199"),
        "no full number in the audit trail"
    );
}

/// The delivery state STATUS shows for `id`, once it is no longer `from`.
async fn delivery_of_not(
    c: &Client,
    id: watchword_engine::ChallengeId,
    from: DeliveryState,
) -> DeliveryState {
    for _ in 0..200 {
        let d = c.status(id).await.unwrap().delivery;
        if d != from {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("still {from:?}");
}
