//! The directory through the real listeners: every HTTP endpoint of
//! admin-api.md (users, methods, check, health) with its keys, roles, errors
//! and tenant isolation; the protocol's CHECK and CALL_ANSWER; durability
//! across a restart; and a scan of everything both front ends answered for a
//! code, a full destination or a key.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::Receiver;
use watchword_engine::ChallengeId;
use watchword_gateway::app::{Running, start};
use watchword_gateway::config::{Config, HttpKey, HttpRole, TenantConfig};
use watchword_gateway::server::Role;
use watchword_gateway::{Client, ClientConfig, Delivered};

fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::development();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.server.metrics_listen = "127.0.0.1:0".into();
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.audit.path = dir.join("audit.jsonl");
    // Tests run side by side: no RADIUS on the profile's fixed port.
    cfg.radius.listen = String::new();
    cfg.audit.flush_interval_ms = 20;
    cfg.storage.path = dir.join("data");
    cfg.tenants.push(TenantConfig {
        name: "acme".into(),
        keys: vec!["acme-key-1".into()],
        role: Role::Client,
        http_keys: vec![HttpKey {
            key: "acme-admin-key".into(),
            role: HttpRole::Admin,
        }],
        ..TenantConfig::default()
    });
    cfg
}

/// Everything the front ends answered during a test, for the leak scan.
#[derive(Default)]
struct Seen(Vec<String>);

/// One HTTP/1.1 request over a fresh connection; the status and JSON body
/// (Null when the body is empty or not JSON).
async fn http(
    r: &Running,
    seen: &mut Seen,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, Value, String) {
    let addr = r.http_addr.expect("the HTTP API is on");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(k) = key {
        req.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(40), s.read_to_end(&mut raw))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    seen.0.push(text.clone());
    let v = serde_json::from_str(payload).unwrap_or(Value::Null);
    (status, v, head.to_owned())
}

const ADMIN: Option<&str> = Some("demo-admin-key");
const HELPDESK: Option<&str> = Some("demo-helpdesk-key");
const CLIENT: Option<&str> = Some("demo-client-key");

/// A protocol connection as `tenant`.
async fn connect(r: &Running, tenant: &str, key: &str) -> Client {
    Client::connect(ClientConfig {
        addr: r.addr.to_string(),
        tenant: tenant.into(),
        key: key.into(),
        ..ClientConfig::default()
    })
    .await
    .unwrap()
}

async fn simulator(r: &Running) -> (Client, Receiver<Delivered>) {
    let c = connect(r, "demo", "demo-key").await;
    let rx = c.subscribe_outbox().await.unwrap();
    (c, rx)
}

async fn next_message(rx: &mut Receiver<Delivered>) -> Delivered {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a message")
        .expect("outbox open")
}

async fn delivered_for(rx: &mut Receiver<Delivered>, id: ChallengeId) -> Delivered {
    loop {
        let d = next_message(rx).await;
        if d.id == id {
            return d;
        }
    }
}

fn code_in(text: &str) -> String {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() == 6)
        .expect("a code in the text")
        .to_owned()
}

fn other_code(code: &str) -> &'static str {
    if code == "000000" { "111111" } else { "000000" }
}

fn id_of_state(state: &str) -> ChallengeId {
    watchword_engine::check::parse_state(state).expect("a state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_methods_and_check_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(config(dir.path())).await.unwrap();
    let mut seen = Seen::default();
    let mut codes = Vec::new();
    let (_sim, mut outbox) = simulator(&r).await;

    let body = r#"{"display_name": "Ann Lee", "email": "ann@example.com", "locale": "fr"}"#;
    let (s, u, _) = http(&r, &mut seen, "PUT", "/v1/users/ann", ADMIN, Some(body)).await;
    assert_eq!(s, 201, "{u}");
    assert_eq!(u["subject"], "ann");
    assert_eq!(u["email"], "a***@example.com", "addresses are masked");
    assert_eq!(u["enabled"], true);
    assert!(u["created_at"].as_str().unwrap().ends_with('Z'));
    let (s, u, _) = http(
        &r,
        &mut seen,
        "PUT",
        "/v1/users/ann",
        ADMIN,
        Some(r#"{"default_method": "email"}"#),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(u["display_name"], "Ann Lee", "PUT merges");
    assert_eq!(u["default_method"], "email");
    for sub in ["bob", "cid"] {
        let (s, _, _) = http(
            &r,
            &mut seen,
            "PUT",
            &format!("/v1/users/{sub}"),
            ADMIN,
            Some("{}"),
        )
        .await;
        assert_eq!(s, 201);
    }
    let (s, page, _) = http(&r, &mut seen, "GET", "/v1/users?limit=2", HELPDESK, None).await;
    assert_eq!(s, 200);
    assert_eq!(page["users"].as_array().unwrap().len(), 2);
    assert_eq!(page["next"], "bob");
    let (_, page, _) = http(
        &r,
        &mut seen,
        "GET",
        "/v1/users?after=bob&limit=2",
        HELPDESK,
        None,
    )
    .await;
    assert_eq!(page["users"][0]["subject"], "cid");
    assert_eq!(page["next"], Value::Null);

    // A method: pending, confirmed by its code.
    let (s, m, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/users/ann/methods",
        ADMIN,
        Some(r#"{"type": "email", "destination": "ann@example.com"}"#),
    )
    .await;
    assert_eq!(s, 201, "{m}");
    assert_eq!(m["state"], "pending");
    assert_eq!(m["destination"], "a***@example.com");
    let mid = m["id"].as_str().unwrap().to_owned();
    let code = code_in(&next_message(&mut outbox).await.text);
    codes.push(code.clone());
    let confirm = format!("/v1/users/ann/methods/{mid}/confirm");
    let wrong = format!(r#"{{"code": "{}"}}"#, other_code(&code));
    let (s, e, _) = http(&r, &mut seen, "POST", &confirm, ADMIN, Some(&wrong)).await;
    assert_eq!(
        (s, &e["error"], &e["attempts_left"]),
        (422, &json!("invalid_argument"), &json!(4))
    );
    let right = format!(r#"{{"code": "{code}"}}"#);
    let (s, m, _) = http(&r, &mut seen, "POST", &confirm, ADMIN, Some(&right)).await;
    assert_eq!((s, &m["state"]), (200, &json!("active")), "{m}");
    assert!(m["effective_at"].is_string() && m["confirmed_at"].is_string());
    let (s, m2, _) = http(
        &r,
        &mut seen,
        "GET",
        &format!("/v1/users/ann/methods/{mid}"),
        HELPDESK,
        None,
    )
    .await;
    assert_eq!((s, &m2["state"]), (200, &json!("active")));

    // CHECK: challenge, wrong answer, accept, replay.
    let (s, c, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/check",
        CLIENT,
        Some(r#"{"subject": "ann", "client_ip": "192.0.2.1"}"#),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(c["result"], "challenge", "{c}");
    assert_eq!(c["method"], "email");
    assert_eq!(c["destination"], "a***@example.com");
    assert_eq!(c["message"], "Enter the code sent to a***@example.com");
    let state = c["state"].as_str().unwrap().to_owned();
    let code = code_in(&delivered_for(&mut outbox, id_of_state(&state)).await.text);
    codes.push(code.clone());
    let wrong = json!({"subject": "ann", "answer": other_code(&code), "state": state}).to_string();
    let (_, c, _) = http(&r, &mut seen, "POST", "/v1/check", CLIENT, Some(&wrong)).await;
    assert_eq!(
        (&c["result"], &c["reason"], &c["attempts_left"]),
        (&json!("reject"), &json!("wrong_answer"), &json!(4))
    );
    assert_eq!(c["state"], state.as_str());
    let right = json!({"subject": "ann", "answer": code, "state": state}).to_string();
    let (_, c, _) = http(&r, &mut seen, "POST", "/v1/check", CLIENT, Some(&right)).await;
    assert_eq!(c, json!({"result": "accept"}));
    let (_, c, _) = http(&r, &mut seen, "POST", "/v1/check", CLIENT, Some(&right)).await;
    assert_eq!(
        (&c["result"], &c["reason"]),
        (&json!("reject"), &json!("unknown_state"))
    );
    let (_, c, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/check",
        CLIENT,
        Some(r#"{"subject": "nobody"}"#),
    )
    .await;
    assert_eq!(c["reason"], "unknown_user");
    let (_, c, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/check",
        CLIENT,
        Some(r#"{"subject": "bob"}"#),
    )
    .await;
    assert_eq!(c["reason"], "no_method");

    // Deletes.
    let (s, _, _) = http(
        &r,
        &mut seen,
        "DELETE",
        &format!("/v1/users/ann/methods/{mid}"),
        ADMIN,
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _, _) = http(
        &r,
        &mut seen,
        "GET",
        &format!("/v1/users/ann/methods/{mid}"),
        ADMIN,
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (s, _, _) = http(&r, &mut seen, "DELETE", "/v1/users/ann", ADMIN, None).await;
    assert_eq!(s, 204);
    let (s, e, _) = http(&r, &mut seen, "GET", "/v1/users/ann", ADMIN, None).await;
    assert_eq!((s, &e["error"]), (404, &json!("not_found")));
    let (s, _, _) = http(&r, &mut seen, "GET", "/healthz", None, None).await;
    assert_eq!(s, 200);
    let (s, _, _) = http(&r, &mut seen, "GET", "/readyz", None, None).await;
    assert_eq!(s, 200);
    // The description's examples are made up: kept out of the leak scan.
    let mut docs = Seen::default();
    let (s, doc, _) = http(&r, &mut docs, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!((s, &doc["openapi"]), (200, &json!("3.1.0")));

    // The audit trail has the decisions and the directory changes.
    r.shutdown();
    r.wait().await;
    let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    for event in [
        "\"user_created\"",
        "\"method_added\"",
        "\"method_confirmed\"",
        "\"check\"",
        "\"user_deleted\"",
    ] {
        assert!(log.contains(event), "{event} missing from the audit log");
    }
    assert!(log.contains("\"reason\":\"wrong_answer\""));
    leak_scan(&seen, &codes, &log);
}

/// No code, full destination or key in anything answered or audited.
fn leak_scan(seen: &Seen, codes: &[String], log: &str) {
    let secrets = [
        "ann@example.com",
        "4255550100",
        "4255550199",
        "demo-admin-key",
        "demo-client-key",
        "acme-admin-key",
    ];
    for text in seen.0.iter().map(String::as_str).chain([log]) {
        for s in secrets {
            assert!(!text.contains(s), "{s} leaked in: {text}");
        }
        for c in codes {
            assert!(
                !text.contains(c.as_str()) || text.contains("\"answer\""),
                "a code leaked in: {text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_roles_and_tenants_are_enforced_on_every_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(config(dir.path())).await.unwrap();
    let mut seen = Seen::default();
    let (s, _, _) = http(&r, &mut seen, "PUT", "/v1/users/ann", ADMIN, Some("{}")).await;
    assert_eq!(s, 201);
    let (_, _, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/users/ann/methods",
        ADMIN,
        Some(r#"{"type": "sms", "destination": "+14255550100"}"#),
    )
    .await;
    let mid = r
        .engine
        .directory()
        .user(watchword_engine::TenantId(0), "ann")
        .unwrap()
        .methods[0]
        .id
        .to_string();
    let endpoints: Vec<(&str, String, Option<&str>, HttpRole)> = vec![
        ("PUT", "/v1/users/ann".into(), Some("{}"), HttpRole::Admin),
        ("GET", "/v1/users/ann".into(), None, HttpRole::Helpdesk),
        ("GET", "/v1/users".into(), None, HttpRole::Helpdesk),
        (
            "POST",
            "/v1/users/ann/methods".into(),
            Some(r#"{"type": "email", "destination": "a@example.org"}"#),
            HttpRole::Admin,
        ),
        (
            "GET",
            format!("/v1/users/ann/methods/{mid}"),
            None,
            HttpRole::Helpdesk,
        ),
        (
            "POST",
            format!("/v1/users/ann/methods/{mid}/confirm"),
            Some(r#"{"code": "000000"}"#),
            HttpRole::Admin,
        ),
        (
            "DELETE",
            format!("/v1/users/ann/methods/{mid}"),
            None,
            HttpRole::Admin,
        ),
        (
            "POST",
            "/v1/check".into(),
            Some(r#"{"subject": "ann"}"#),
            HttpRole::Client,
        ),
        ("DELETE", "/v1/users/ann".into(), None, HttpRole::Admin),
    ];
    let mut unauth_bodies = Vec::new();
    for (method, path, body, need) in &endpoints {
        for key in [None, Some("wrong-key-123"), Some("")] {
            let (s, e, _) = http(&r, &mut seen, method, path, key, *body).await;
            assert_eq!(s, 401, "{method} {path} with {key:?}");
            unauth_bodies.push(e);
        }
        for (key, role) in [(CLIENT, HttpRole::Client), (HELPDESK, HttpRole::Helpdesk)] {
            if role < *need {
                let (s, e, _) = http(&r, &mut seen, method, path, key, *body).await;
                assert_eq!(
                    (s, &e["error"]),
                    (403, &json!("forbidden")),
                    "{method} {path} as {role:?}"
                );
            }
        }
        // Another tenant's admin sees none of demo's users.
        if !path.starts_with("/v1/check") && path != "/v1/users" && *method != "PUT" {
            let (s, e, _) = http(&r, &mut seen, method, path, Some("acme-admin-key"), *body).await;
            assert_eq!(
                (s, &e["error"]),
                (404, &json!("not_found")),
                "{method} {path} as acme"
            );
        }
    }
    assert!(
        unauth_bodies.windows(2).all(|w| w[0] == w[1]),
        "a missing and a wrong key get the same answer"
    );
    let (_, list, _) = http(
        &r,
        &mut seen,
        "GET",
        "/v1/users",
        Some("acme-admin-key"),
        None,
    )
    .await;
    assert_eq!(list["users"], json!([]), "acme lists none of demo's users");
    let (_, c, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/check",
        Some("acme-admin-key"),
        Some(r#"{"subject": "ann"}"#),
    )
    .await;
    assert_eq!(c["reason"], "unknown_user");
    // The user is still there, untouched by the refused calls.
    assert!(
        r.engine
            .directory()
            .user(watchword_engine::TenantId(0), "ann")
            .is_some()
    );
    r.shutdown();
    r.wait().await;
}

/// A request and what must come back: method, path, body, status, error
/// code, and a word the message must contain.
type Case = (
    &'static str,
    String,
    Option<String>,
    u16,
    &'static str,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_specific_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(config(dir.path())).await.unwrap();
    let mut seen = Seen::default();
    let long = "x".repeat(257);
    let big = format!(r#"{{"display_name": "{}"}}"#, "x".repeat(1_100_000));
    let cases: Vec<Case> = vec![
        (
            "PUT",
            "/v1/users/ann".into(),
            Some("{not json".into()),
            400,
            "bad_request",
            "not valid JSON",
        ),
        (
            "PUT",
            "/v1/users/ann".into(),
            Some(r#"{"colour": "red"}"#.into()),
            400,
            "bad_request",
            "colour",
        ),
        (
            "PUT",
            "/v1/users/ann".into(),
            Some(r#"{"enabled": "123456"}"#.into()),
            400,
            "bad_request",
            "wrong type",
        ),
        (
            "PUT",
            "/v1/users/ann".into(),
            Some(big),
            413,
            "too_large",
            "bytes",
        ),
        (
            "PUT",
            format!("/v1/users/{long}"),
            Some("{}".into()),
            422,
            "invalid_argument",
            "subject",
        ),
        (
            "PUT",
            "/v1/users/ann".into(),
            Some(r#"{"email": "nope"}"#.into()),
            422,
            "invalid_argument",
            "email",
        ),
        (
            "PUT",
            "/v1/users/ann".into(),
            Some(r#"{"default_method": "pigeon"}"#.into()),
            422,
            "invalid_argument",
            "default_method",
        ),
        (
            "GET",
            "/v1/users?limit=1001".into(),
            None,
            422,
            "invalid_argument",
            "limit",
        ),
        (
            "GET",
            "/v1/users?limit=abc".into(),
            None,
            422,
            "invalid_argument",
            "limit",
        ),
        (
            "POST",
            "/v1/check".into(),
            Some(r#"{"answer": "1"}"#.into()),
            400,
            "bad_request",
            "subject",
        ),
        (
            "POST",
            "/v1/check".into(),
            Some(format!(
                r#"{{"subject": "ann", "answer": "{}"}}"#,
                "1".repeat(65)
            )),
            422,
            "invalid_argument",
            "answer",
        ),
        (
            "GET",
            "/v1/nothing".into(),
            None,
            404,
            "not_found",
            "endpoint",
        ),
        (
            "POST",
            "/v1/users/ann".into(),
            Some("{}".into()),
            405,
            "bad_request",
            "method",
        ),
        (
            "GET",
            "/v1/users/%FF%FE".into(),
            None,
            400,
            "bad_request",
            "path",
        ),
    ];
    for (method, path, body, status, code, says) in &cases {
        let (s, e, _) = http(&r, &mut seen, method, path, ADMIN, body.as_deref()).await;
        assert_eq!(
            (s, e["error"].as_str()),
            (*status, Some(*code)),
            "{method} {path}: {e}"
        );
        assert!(
            e["message"].as_str().unwrap().contains(says),
            "{method} {path}: {e}"
        );
    }
    assert!(
        !seen.0.iter().any(|t| t.contains("123456")),
        "a value was echoed"
    );
    assert_eq!(r.engine.directory().len(), 0, "nothing was stored");
    let (s, _, _) = http(&r, &mut seen, "PUT", "/v1/users/ann", ADMIN, Some("{}")).await;
    assert_eq!(s, 201);
    for (body, says) in [
        (r#"{"type": "pigeon", "destination": "x"}"#, "type"),
        (
            r#"{"type": "sms", "destination": "not a number"}"#,
            "destination",
        ),
        (
            r#"{"type": "email", "destination": "no-at-sign"}"#,
            "destination",
        ),
        (r#"{"type": "sms"}"#, "destination"),
    ] {
        let (s, e, _) = http(
            &r,
            &mut seen,
            "POST",
            "/v1/users/ann/methods",
            ADMIN,
            Some(body),
        )
        .await;
        assert!(s == 422 || s == 400, "{body}: {s} {e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{body}: {e}");
    }
    let (s, e, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/users/nobody/methods",
        ADMIN,
        Some(r#"{"type": "sms", "destination": "+14255550100"}"#),
    )
    .await;
    assert_eq!((s, &e["message"]), (404, &json!("no such user")));
    assert!(
        r.engine
            .directory()
            .user(watchword_engine::TenantId(0), "ann")
            .unwrap()
            .methods
            .is_empty()
    );
    r.shutdown();
    r.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_call_answer_over_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(config(dir.path())).await.unwrap();
    let mut seen = Seen::default();
    let (sim, mut outbox) = simulator(&r).await;
    let (s, _, _) = http(
        &r,
        &mut seen,
        "PUT",
        "/v1/users/ann",
        ADMIN,
        Some(r#"{"default_method": "call"}"#),
    )
    .await;
    assert_eq!(s, 201);
    // A call method, confirmed by the handset pressing #.
    let (s, m, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/users/ann/methods",
        ADMIN,
        Some(r#"{"type": "call", "destination": "(425) 555-0199"}"#),
    )
    .await;
    assert_eq!(s, 201, "{m}");
    let ring = next_message(&mut outbox).await;
    assert!(ring.text.contains("press the pound key"));
    sim.call_answer(ring.id, "#").await.unwrap();
    let mid = m["id"].as_str().unwrap().to_owned();
    let mut state = String::new();
    for _ in 0..200 {
        let (_, m, _) = http(
            &r,
            &mut seen,
            "GET",
            &format!("/v1/users/ann/methods/{mid}"),
            HELPDESK,
            None,
        )
        .await;
        state = m["state"].as_str().unwrap().to_owned();
        if state != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state, "active");

    // A client connection checks; the CHECK on the call's state is held
    // until the handset answers.
    let client = connect(&r, "demo", "demo-key").await;
    let ch = client.check("ann", "", "", "192.0.2.9").await.unwrap();
    seen.0.push(format!("{ch:?}"));
    assert_eq!((ch.result, ch.method), (2, 5), "{ch:?}");
    assert_eq!(ch.masked_destination, "+14*******99");
    assert_eq!(ch.message, "Answer the call and press #");
    let held = {
        let c2 = connect(&r, "demo", "demo-key").await;
        let st = ch.state.clone();
        tokio::spawn(async move { c2.check("ann", "", &st, "").await })
    };
    let ring = delivered_for(&mut outbox, id_of_state(&ch.state)).await;
    // The held CHECK does not block its connection: a PING on it passes.
    client.ping().await.unwrap();
    sim.call_answer(ring.id, "#").await.unwrap();
    let done = held.await.unwrap().unwrap();
    seen.0.push(format!("{done:?}"));
    assert_eq!(done.result, 0, "{done:?}");
    let again = client.check("ann", "", &ch.state, "").await.unwrap();
    seen.0.push(format!("{again:?}"));
    assert_eq!((again.result, again.reason), (1, 7), "single-use");
    // Declined.
    let ch = client.check("ann", "call", "", "").await.unwrap();
    seen.0.push(format!("{ch:?}"));
    let ring = delivered_for(&mut outbox, id_of_state(&ch.state)).await;
    sim.call_answer(ring.id, "9").await.unwrap();
    let done = client.check("ann", "", &ch.state, "").await.unwrap();
    seen.0.push(format!("{done:?}"));
    assert_eq!((done.result, done.reason), (1, 6));
    // CALL_ANSWER needs the simulator role; an unknown id is NOT_FOUND.
    let acme = connect(&r, "acme", "acme-key-1").await;
    let e = acme.call_answer(ring.id, "#").await.unwrap_err();
    seen.0.push(format!("{e:?}"));
    assert!(format!("{e:?}").contains("Forbidden"), "{e:?}");
    let e = sim
        .call_answer(ChallengeId([7; 16]), "#")
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("NotFound"), "{e:?}");
    // acme cannot check demo's user; an oversized answer is INVALID_ARGUMENT.
    let ch = acme.check("ann", "", "", "").await.unwrap();
    seen.0.push(format!("{ch:?}"));
    assert_eq!((ch.result, ch.reason), (1, 4));
    let e = client
        .check("ann", &"1".repeat(65), "", "")
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("InvalidArgument"), "{e:?}");
    // Everything both front ends answered, and the audit trail: no key, no
    // full number (the simulator's DELIVERED pushes carry it by design and
    // are not answers).
    r.shutdown();
    r.wait().await;
    let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    leak_scan(&seen, &[], &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_methods_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = Seen::default();
    let r = start(config(dir.path())).await.unwrap();
    let (_sim, mut outbox) = simulator(&r).await;
    let (s, _, _) = http(
        &r,
        &mut seen,
        "PUT",
        "/v1/users/ann",
        ADMIN,
        Some(r#"{"display_name": "Ann"}"#),
    )
    .await;
    assert_eq!(s, 201);
    let (_, m, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/users/ann/methods",
        ADMIN,
        Some(r#"{"type": "sms", "destination": "+14255550100"}"#),
    )
    .await;
    let mid = m["id"].as_str().unwrap().to_owned();
    let code = code_in(&next_message(&mut outbox).await.text);
    let (s, _, _) = http(
        &r,
        &mut seen,
        "POST",
        &format!("/v1/users/ann/methods/{mid}/confirm"),
        ADMIN,
        Some(&format!(r#"{{"code": "{code}"}}"#)),
    )
    .await;
    assert_eq!(s, 200);
    r.shutdown();
    r.wait().await;
    drop(_sim);

    let r = start(config(dir.path())).await.unwrap();
    let (s, u, _) = http(&r, &mut seen, "GET", "/v1/users/ann", ADMIN, None).await;
    assert_eq!(s, 200);
    assert_eq!(u["display_name"], "Ann");
    assert_eq!(u["methods"][0]["state"], "active");
    assert_eq!(u["methods"][0]["id"], mid.as_str());
    let (_, c, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/check",
        CLIENT,
        Some(r#"{"subject": "ann"}"#),
    )
    .await;
    assert_eq!(c["result"], "challenge");
    r.shutdown();
    r.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_speaks_tls_with_the_protocols_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut cfg = config(dir.path());
    cfg.server.tls_cert = Some(cert_path);
    cfg.server.tls_key = Some(key_path);
    let r = start(cfg).await.unwrap();
    let (connector, name) =
        watchword_gateway::tls::client_connector(&watchword_gateway::ClientTls {
            server_name: "localhost".into(),
            ca_cert_pem: dir.path().join("cert.pem"),
        })
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(r.http_addr.unwrap())
        .await
        .unwrap();
    let mut s = connector.connect(name, tcp).await.unwrap();
    s.write_all(b"GET /v1/users/ann HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer demo-admin-key\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(text.contains("no such user"));
    // Plain HTTP to the TLS listener gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(r.http_addr.unwrap())
        .await
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), plain.read_to_end(&mut raw)).await;
    assert!(!String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
    r.shutdown();
    r.wait().await;
}

/// The secret in an enrollment's otpauth URI.
fn uri_secret(uri: &str) -> watchword_engine::oath::Secret {
    let b32 = uri
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("secret="))
        .expect("a secret in the URI");
    watchword_engine::oath::Secret::new(watchword_engine::oath::base32_decode(b32).unwrap())
}

fn totp_now(secret: &watchword_engine::oath::Secret) -> String {
    let p = watchword_engine::oath::Params {
        algorithm: watchword_engine::oath::Algorithm::Sha1,
        digits: 6,
        period: 30,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    watchword_engine::oath::Token::new(secret, p)
        .unwrap()
        .totp(now)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_enrolled_once_checks_and_stays_used_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = Seen::default();
    let r = start(config(dir.path())).await.unwrap();
    let (s, _, _) = http(&r, &mut seen, "PUT", "/v1/users/ann", ADMIN, Some("{}")).await;
    assert_eq!(s, 201);
    let (s, e, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/users/ann/tokens",
        ADMIN,
        Some(r#"{"type": "totp", "digits": 7}"#),
    )
    .await;
    assert_eq!((s, &e["error"]), (422, &json!("invalid_argument")), "{e}");
    // The enrollment answer is the one place the secret appears.
    let mut enrollment = Seen::default();
    let (s, t, _) = http(
        &r,
        &mut enrollment,
        "POST",
        "/v1/users/ann/tokens",
        ADMIN,
        Some(r#"{"type": "totp"}"#),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let serial = t["serial"].as_str().unwrap().to_owned();
    let uri = t["otpauth_uri"].as_str().unwrap().to_owned();
    assert!(
        uri.starts_with("otpauth://totp/Watchword:ann?secret="),
        "{uri}"
    );
    assert!(t["qr_svg"].as_str().unwrap().starts_with("<?xml"));
    let secret = uri_secret(&uri);
    let b32 = secret.to_base32();
    let (s, info, _) = http(
        &r,
        &mut seen,
        "GET",
        &format!("/v1/tokens/{serial}"),
        HELPDESK,
        None,
    )
    .await;
    assert_eq!(
        (s, &info["state"], &info["subject"]),
        (200, &json!("active"), &json!("ann"))
    );
    let (s, _, _) = http(
        &r,
        &mut seen,
        "GET",
        &format!("/v1/tokens/{serial}"),
        Some("acme-admin-key"),
        None,
    )
    .await;
    assert_eq!(s, 404, "another tenant's token");
    let code = totp_now(&secret);
    let body = json!({"subject": "ann", "answer": code}).to_string();
    let (_, c, _) = http(&r, &mut seen, "POST", "/v1/check", CLIENT, Some(&body)).await;
    assert_eq!(c, json!({"result": "accept"}));
    r.shutdown();
    r.wait().await;

    // After a restart the accepted code is still used; the token still works.
    let r = start(config(dir.path())).await.unwrap();
    let (_, c, _) = http(&r, &mut seen, "POST", "/v1/check", CLIENT, Some(&body)).await;
    assert_eq!(
        (&c["result"], &c["reason"]),
        (&json!("reject"), &json!("wrong_answer")),
        "replayed after a restart"
    );
    let (s, info, _) = http(
        &r,
        &mut seen,
        "POST",
        &format!("/v1/tokens/{serial}/reset"),
        ADMIN,
        None,
    )
    .await;
    assert_eq!((s, &info["failcount"]), (200, &json!(0)));
    let (s, _, _) = http(
        &r,
        &mut seen,
        "DELETE",
        &format!("/v1/tokens/{serial}"),
        ADMIN,
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _, _) = http(
        &r,
        &mut seen,
        "GET",
        &format!("/v1/tokens/{serial}"),
        ADMIN,
        None,
    )
    .await;
    assert_eq!(s, 404);
    r.shutdown();
    r.wait().await;
    // Nothing but the enrollment answer ever carried the secret.
    let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(log.contains("\"token_enrolled\""));
    for text in seen.0.iter().map(String::as_str).chain([log.as_str()]) {
        assert!(!text.contains(&b32), "the secret leaked: {text}");
    }
    let db = std::fs::read(dir.path().join("data").join("watchword.db")).unwrap();
    assert!(
        !db.windows(secret.expose().len())
            .any(|w| w == secret.expose()),
        "the secret in clear in the database"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_import_from_csv_assign_and_resync() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = Seen::default();
    let r = start(config(dir.path())).await.unwrap();
    let b32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    let csv = format!(
        "upn,serial number,secret key,time interval,manufacturer,model\n\
         zoe@example.com,HW-1,{b32},30,Contoso,HardwareKey\n\
         ,HW-2,{b32},30,Contoso,HardwareKey\n\
         ,HW-3,not-base32,30,Contoso,HardwareKey\n\
         ,HW-1,{b32},30,Contoso,HardwareKey\n"
    );
    let (s, rep, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/tokens/import?format=csv",
        ADMIN,
        Some(&csv),
    )
    .await;
    assert_eq!(s, 200, "{rep}");
    assert_eq!(rep["imported"], 2);
    let skipped = rep["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 2);
    assert!(
        skipped
            .iter()
            .any(|x| x["serial"] == "HW-3" && x["reason"].as_str().unwrap().contains("bad secret"))
    );
    assert!(
        skipped
            .iter()
            .any(|x| x["serial"] == "HW-1" && x["reason"] == "duplicate serial")
    );
    let (s, e, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/tokens/import?format=pskc",
        ADMIN,
        Some("<x/>"),
    )
    .await;
    assert_eq!((s, &e["error"]), (422, &json!("invalid_argument")));
    // A PSKC file with a plain HOTP secret (RFC 6030 Figure 2's shape),
    // assigned, then its first code checks.
    let pskc = r#"<?xml version="1.0" encoding="UTF-8"?>
<KeyContainer Version="1.0" xmlns="urn:ietf:params:xml:ns:keyprov:pskc"><KeyPackage>
<DeviceInfo><SerialNo>PSKC-1</SerialNo></DeviceInfo>
<Key Id="1" Algorithm="urn:ietf:params:xml:ns:keyprov:pskc:hotp">
<AlgorithmParameters><ResponseFormat Length="6" Encoding="DECIMAL"/></AlgorithmParameters>
<Data><Secret><PlainValue>MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=</PlainValue></Secret>
<Counter><PlainValue>0</PlainValue></Counter></Data></Key></KeyPackage></KeyContainer>"#;
    let (s, rep, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/tokens/import?format=pskc",
        ADMIN,
        Some(pskc),
    )
    .await;
    assert_eq!((s, &rep["imported"]), (200, &json!(1)), "{rep}");
    let (s, _, _) = http(&r, &mut seen, "PUT", "/v1/users/pat", ADMIN, Some("{}")).await;
    assert_eq!(s, 201);
    let (s, _, _) = http(
        &r,
        &mut seen,
        "PUT",
        "/v1/users/pat/tokens/PSKC-1",
        ADMIN,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let body = json!({"subject": "pat", "answer": "755224"}).to_string();
    let (_, c, _) = http(&r, &mut seen, "POST", "/v1/check", CLIENT, Some(&body)).await;
    assert_eq!(c, json!({"result": "accept"}), "RFC 4226's counter-0 code");
    // The upn made its user; its code checks.
    let secret =
        watchword_engine::oath::Secret::new(watchword_engine::oath::base32_decode(b32).unwrap());
    let body = json!({"subject": "zoe@example.com", "answer": totp_now(&secret)}).to_string();
    let (_, c, _) = http(&r, &mut seen, "POST", "/v1/check", CLIENT, Some(&body)).await;
    assert_eq!(c, json!({"result": "accept"}));
    // An unassigned token goes to a user; another user's is a conflict.
    let (s, _, _) = http(&r, &mut seen, "PUT", "/v1/users/amy", ADMIN, Some("{}")).await;
    assert_eq!(s, 201);
    let (s, t, _) = http(
        &r,
        &mut seen,
        "PUT",
        "/v1/users/amy/tokens/HW-2",
        ADMIN,
        None,
    )
    .await;
    assert_eq!((s, &t["subject"]), (200, &json!("amy")));
    let (s, _, _) = http(
        &r,
        &mut seen,
        "PUT",
        "/v1/users/amy/tokens/HW-1",
        ADMIN,
        None,
    )
    .await;
    assert_eq!(s, 409);
    // Resync: two consecutive codes ten steps ahead move the token's drift.
    let p = watchword_engine::oath::Params {
        algorithm: watchword_engine::oath::Algorithm::Sha1,
        digits: 6,
        period: 30,
    };
    let tok = watchword_engine::oath::Token::new(&secret, p).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (c1, c2) = (tok.totp(now + 300), tok.totp(now + 330));
    let body = json!({"code1": c1, "code2": c2}).to_string();
    let (s, t, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/tokens/HW-2/resync",
        ADMIN,
        Some(&body),
    )
    .await;
    assert_eq!((s, &t["serial"]), (200, &json!("HW-2")), "{t}");
    let (s, _, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/tokens/HW-2/resync",
        ADMIN,
        Some(&body),
    )
    .await;
    assert_eq!(s, 422, "the same codes again are behind the token now");
    r.shutdown();
    r.wait().await;
    for text in &seen.0 {
        assert!(!text.contains(b32), "the secret in an answer: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_is_shown_once_masked_after_and_checked_in_front_of_the_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = Seen::default();
    let mut cfg = config(dir.path());
    for t in &mut cfg.tenants {
        if t.name == "demo" {
            t.pin_mode = "prefix".into();
        }
    }
    let r = start(cfg).await.unwrap();
    let (s, _, _) = http(&r, &mut seen, "PUT", "/v1/users/ann", ADMIN, Some("{}")).await;
    assert_eq!(s, 201);
    let (s, p, _) = http(&r, &mut seen, "GET", "/v1/users/ann/pin", HELPDESK, None).await;
    assert_eq!((s, p), (200, json!({"set": false})));
    // Only an admin resets; a helpdesk key reads; nobody else.
    let (s, _, _) = http(&r, &mut seen, "POST", "/v1/users/ann/pin", HELPDESK, None).await;
    assert_eq!(s, 403);
    let (s, e, _) = http(&r, &mut seen, "POST", "/v1/users/nobody/pin", ADMIN, None).await;
    assert_eq!((s, &e["error"]), (404, &json!("not_found")), "{e}");
    let (s, e, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/users/ann/pin",
        ADMIN,
        Some(r#"{"email": true}"#),
    )
    .await;
    assert_eq!((s, &e["error"]), (422, &json!("invalid_argument")), "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("no e-mail address"),
        "{e}"
    );
    // The reset's answer is the one place the PIN appears.
    let mut reset = Seen::default();
    let (s, p, _) = http(
        &r,
        &mut reset,
        "POST",
        "/v1/users/ann/pin",
        ADMIN,
        Some("{}"),
    )
    .await;
    assert_eq!((s, &p["length"]), (200, &json!(5)), "{p}");
    let pin = p["pin"].as_str().unwrap().to_owned();
    assert!(pin.len() == 5 && pin.bytes().all(|b| b.is_ascii_digit()));
    let (s, p, _) = http(&r, &mut seen, "GET", "/v1/users/ann/pin", HELPDESK, None).await;
    assert_eq!(
        (s, p),
        (
            200,
            json!({"set": true, "length": 5, "masked": "*****", "state": "active"})
        )
    );
    // A token, then CHECK with the PIN in front of its code.
    let (s, t, _) = http(
        &r,
        &mut reset,
        "POST",
        "/v1/users/ann/tokens",
        ADMIN,
        Some(r#"{"type": "totp"}"#),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let secret = uri_secret(t["otpauth_uri"].as_str().unwrap());
    let code = totp_now(&secret);
    let check = |answer: String| format!(r#"{{"subject": "ann", "answer": "{answer}"}}"#);
    let (s, c, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/check",
        ADMIN,
        Some(&check(code.clone())),
    )
    .await;
    assert_eq!(
        (s, &c["result"], &c["reason"]),
        (200, &json!("reject"), &json!("wrong_answer"))
    );
    let (s, c, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/check",
        ADMIN,
        Some(&check(format!("{pin}{code}"))),
    )
    .await;
    assert_eq!((s, &c["result"]), (200, &json!("accept")), "{c}");
    // E-mailed on request, in the user's language, to the profile's address.
    let (_sim, mut outbox) = simulator(&r).await;
    let (s, _, _) = http(
        &r,
        &mut seen,
        "PUT",
        "/v1/users/ann",
        ADMIN,
        Some(r#"{"email": "ann@example.com", "locale": "fr"}"#),
    )
    .await;
    assert_eq!(s, 200);
    let (s, p, _) = http(
        &r,
        &mut reset,
        "POST",
        "/v1/users/ann/pin",
        ADMIN,
        Some(r#"{"email": true}"#),
    )
    .await;
    assert_eq!(
        (s, &p["emailed_to"]),
        (200, &json!("a***@example.com")),
        "{p}"
    );
    let mailed_pin = p["pin"].as_str().unwrap().to_owned();
    let mail = next_message(&mut outbox).await;
    assert_eq!(mail.destination, "ann@example.com");
    assert!(
        mail.text.contains(&mailed_pin) && mail.text.contains("Votre nouveau code PIN"),
        "{}",
        mail.text
    );
    // Nothing the API answered after the resets, nor the log, holds a PIN.
    r.shutdown();
    let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap_or_default();
    assert!(!log.contains(&pin) && !log.contains(&mailed_pin));
    assert!(
        seen.0
            .iter()
            .all(|text| !text.contains(&pin) && !text.contains(&mailed_pin))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_help_desk_verifies_a_caller_by_a_code_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    for t in &mut cfg.tenants {
        if t.name == "demo" {
            // Caller IDs count at once: the engine test moves the clock
            // through the 48 h hold; here the HTTP contract is the point.
            t.contact_hold_hours = 0;
        }
    }
    let r = start(cfg).await.unwrap();
    let mut seen = Seen::default();
    let (_sim, mut outbox) = simulator(&r).await;
    let (s, _, _) = http(&r, &mut seen, "PUT", "/v1/users/ann", ADMIN, Some("{}")).await;
    assert_eq!(s, 201);
    let verify = |caller: &str| format!(r#"{{"subject": "ann", "caller_id": "{caller}"}}"#);
    let path = "/v1/helpdesk/verifications";
    // No contact yet: a clear 422.
    let (s, e, _) = http(&r, &mut seen, "POST", path, HELPDESK, Some(&verify(""))).await;
    assert_eq!((s, &e["error"]), (422, &json!("invalid_argument")), "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("no confirmed contact"),
        "{e}"
    );
    // A client key may not; an unknown user is 404.
    let (s, _, _) = http(&r, &mut seen, "POST", path, CLIENT, Some(&verify(""))).await;
    assert_eq!(s, 403);
    let (s, _, _) = http(
        &r,
        &mut seen,
        "POST",
        path,
        HELPDESK,
        Some(r#"{"subject": "nobody", "caller_id": ""}"#),
    )
    .await;
    assert_eq!(s, 404);
    // A phone, confirmed.
    let (s, m, _) = http(
        &r,
        &mut seen,
        "POST",
        "/v1/users/ann/methods",
        ADMIN,
        Some(r#"{"type": "sms", "destination": "+14255550100"}"#),
    )
    .await;
    assert_eq!(s, 201, "{m}");
    let mid = m["id"].as_str().unwrap().to_owned();
    let code = code_in(&next_message(&mut outbox).await.text);
    let (s, _, _) = http(
        &r,
        &mut seen,
        "POST",
        &format!("/v1/users/ann/methods/{mid}/confirm"),
        ADMIN,
        Some(&format!(r#"{{"code": "{code}"}}"#)),
    )
    .await;
    assert_eq!(s, 200);
    // The caller ID matches the phone (another notation): verified.
    let (s, v, _) = http(
        &r,
        &mut seen,
        "POST",
        path,
        HELPDESK,
        Some(&verify("(425) 555-0100")),
    )
    .await;
    assert_eq!((s, v), (200, json!({"verified": true, "by": "caller_id"})));
    // Another number: a code goes to the phone; the agent checks it.
    let (s, v, _) = http(
        &r,
        &mut seen,
        "POST",
        path,
        HELPDESK,
        Some(&verify("+14255550199")),
    )
    .await;
    assert_eq!(
        (s, &v["verified"], &v["method"]),
        (201, &json!(false), &json!("sms")),
        "{v}"
    );
    assert!(!v["sent_to"].as_str().unwrap().contains("5550100"));
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    let id = v["id"].as_str().unwrap().to_owned();
    let code = code_in(&next_message(&mut outbox).await.text);
    let check = format!("{path}/{id}");
    let (s, o, _) = http(
        &r,
        &mut seen,
        "POST",
        &check,
        HELPDESK,
        Some(&format!(r#"{{"code": "{}"}}"#, other_code(&code))),
    )
    .await;
    assert_eq!(
        (s, o),
        (
            200,
            json!({"verified": false, "outcome": "rejected", "attempts_left": 4})
        )
    );
    let right = format!(r#"{{"code": "{code}"}}"#);
    let (s, o, _) = http(&r, &mut seen, "POST", &check, HELPDESK, Some(&right)).await;
    assert_eq!(
        (s, &o["verified"], &o["outcome"]),
        (200, &json!(true), &json!("approved"))
    );
    let (s, _, _) = http(&r, &mut seen, "POST", &check, HELPDESK, Some(&right)).await;
    assert_eq!(s, 404, "an ended verification");
    // The audit trail names the way and the agent's key by fingerprint.
    r.shutdown();
    let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"helpdesk_verification\""))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("\"reason\":\"caller_id\"")),
        "{log}"
    );
    assert!(
        lines.iter().all(|l| l.contains("\"agent\":\"key:")),
        "{log}"
    );
    assert!(!log.contains("demo-helpdesk-key") && !log.contains(&code));
}
