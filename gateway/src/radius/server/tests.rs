//! Unit tests of the RADIUS server's logic: reply encoding, the request
//! parser, and a real server on loopback with an in-memory engine for the
//! BlastRADIUS rules, the duplicate cache and the per-client bounds. They
//! must never bind a fixed port or leave a server running (the harness
//! stops it when dropped).

use std::sync::Mutex;

use tokio::net::UdpSocket;
use watchword_engine::directory::Directory;
use watchword_engine::{ChallengeInfo, SystemClock};

use super::*;
use crate::radius::packet::{RequestBuilder, verify_reply};

const SECRET: &[u8] = b"unit-test-secret-0123";

fn request(id: u8, user: &str, password: Option<&[u8]>, proxy: &[&[u8]]) -> Vec<u8> {
    let mut b = RequestBuilder::new(id, [id; 16]);
    b.push(USER_NAME, user.as_bytes()).unwrap();
    if let Some(p) = password {
        b.push_user_password(p, SECRET).unwrap();
    }
    for p in proxy {
        b.push(PROXY_STATE, p).unwrap();
    }
    b.finish(SECRET)
}

#[test]
fn replies_put_the_message_authenticator_first_and_keep_proxy_states() {
    let req_bytes = request(7, "ann", Some(b"123456"), &[b"one", b"", b"three"]);
    let req = decode(&req_bytes).unwrap();
    let challenge = Decision::Challenge {
        state: "ws1-state".into(),
        message: "Enter the code".into(),
    };
    let (code, reply) = encode_reply(&req, &challenge, SECRET);
    assert_eq!(code, Code::ACCESS_CHALLENGE);
    let view = verify_reply(&reply, req.authenticator(), SECRET, true).unwrap();
    assert_eq!(view.identifier(), 7);
    let types: Vec<u8> = view.attributes().map(|a| a.0).collect();
    assert_eq!(
        types,
        [80, STATE, 18, PROXY_STATE, PROXY_STATE, PROXY_STATE]
    );
    assert!(
        view.all(PROXY_STATE)
            .eq([&b"one"[..], b"", b"three"].into_iter())
    );
    assert_eq!(view.first(STATE), Some(&b"ws1-state"[..]));

    let (code, reply) = encode_reply(&req, &Decision::Reject("Wrong code."), SECRET);
    assert_eq!(code, Code::ACCESS_REJECT);
    let view = verify_reply(&reply, req.authenticator(), SECRET, true).unwrap();
    assert!(!view.has(STATE), "a reject carries no State");
    assert_eq!(view.first(18), Some(&b"Wrong code."[..]));

    let (code, reply) = encode_reply(&req, &Decision::Accept, SECRET);
    assert_eq!(code, Code::ACCESS_ACCEPT);
    verify_reply(&reply, req.authenticator(), SECRET, true).unwrap();
}

#[test]
fn a_reply_that_cannot_fit_becomes_a_bare_reject() {
    // Proxy-States filling the request leave no room for a long challenge.
    let big = [7u8; 253];
    let proxies: Vec<&[u8]> = (0..15).map(|_| &big[..]).collect();
    let req_bytes = request(1, "ann", None, &proxies);
    let req = decode(&req_bytes).unwrap();
    let challenge = Decision::Challenge {
        state: "s".repeat(200),
        message: "m".repeat(400),
    };
    let (code, reply) = encode_reply(&req, &challenge, SECRET);
    assert_eq!(code, Code::ACCESS_REJECT);
    let view = verify_reply(&reply, req.authenticator(), SECRET, true).unwrap();
    assert_eq!(view.all(PROXY_STATE).count(), 15);
}

#[test]
fn check_results_map_to_decisions_and_states_are_bound_to_the_client() {
    let states = StateBinding::new().unwrap();
    let of = |r| Decision::of(r, &states, "vpn");
    assert_eq!(of(CheckResult::Accept), Decision::Accept);
    let r = CheckResult::Reject {
        reason: RejectReason::Locked,
        attempts_left: 0,
        state: "kept".into(),
    };
    assert!(matches!(of(r), Decision::Reject(w) if w.contains("locked")));
    let c = CheckResult::Challenge(ChallengeInfo {
        state: "st".into(),
        method: MethodType::Sms,
        masked_destination: "+1*******00".into(),
        expires_at_ms: 0,
        message: "Enter the code sent to +1*******00".into(),
    });
    let Decision::Challenge { state, message } = of(c) else {
        panic!("a challenge");
    };
    assert_eq!(message, "Enter the code sent to +1*******00");
    assert_eq!(states.open("vpn", &state), Some("st"));
    assert_eq!(states.open("other", &state), None);
}

#[test]
fn the_parser_finds_what_the_decision_needs() {
    let secret = Secret::new(SECRET);
    let bytes = request(1, "ann", Some(b"654321"), &[]);
    let p = decode(&bytes).unwrap();
    let parsed = parse(&p, &secret).unwrap();
    assert_eq!(parsed.user, Some("ann"));
    assert_eq!(parsed.password.unwrap().as_bytes(), b"654321");
    assert!(!parsed.unsupported_auth);
    assert_eq!(
        nas_ip(&p, "192.0.2.1".parse().unwrap()).to_string(),
        "192.0.2.1"
    );

    let mut b = RequestBuilder::new(2, [2; 16]);
    b.push(USER_NAME, b"ann").unwrap();
    b.push(CHAP_PASSWORD, &[1; 17]).unwrap();
    b.push(NAS_IP_ADDRESS, &[10, 0, 0, 9]).unwrap();
    let bytes = b.finish(SECRET);
    let p = decode(&bytes).unwrap();
    assert!(parse(&p, &secret).unwrap().unsupported_auth);
    assert_eq!(
        nas_ip(&p, "192.0.2.1".parse().unwrap()).to_string(),
        "10.0.0.9"
    );

    let mut b = RequestBuilder::new(3, [3; 16]);
    b.push(EAP_MESSAGE, &[2, 0, 0, 5, 1]).unwrap();
    b.push(
        NAS_IPV6_ADDRESS,
        &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    )
    .unwrap();
    let bytes = b.finish(SECRET);
    let p = decode(&bytes).unwrap();
    let parsed = parse(&p, &secret).unwrap();
    assert!(parsed.unsupported_auth && parsed.user.is_none());
    assert_eq!(
        nas_ip(&p, "192.0.2.1".parse().unwrap()).to_string(),
        "2001:db8::1"
    );

    // A User-Password whose length is not a multiple of 16: malformed.
    let mut b = RequestBuilder::new(4, [4; 16]);
    b.push(USER_PASSWORD, &[0; 15]).unwrap();
    let bytes = b.finish(SECRET);
    assert!(parse(&decode(&bytes).unwrap(), &secret).is_none());
}

/// Keeps the audit identity of every record.
#[derive(Default)]
struct Who(Mutex<Vec<(String, String, Option<String>)>>);

impl EventSink for Who {
    fn record(&self, _: &watchword_engine::Event<'_>) {}

    fn record_other(&self, r: &Record<'_>) {
        self.0.lock().unwrap().push((
            r.result.to_owned(),
            r.client_ip.unwrap_or("").to_owned(),
            r.reason.map(str::to_owned),
        ));
    }
}

struct Harness {
    addr: SocketAddr,
    signals: Shutdown,
    who: Arc<Who>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.signals.close.cancel();
    }
}

impl Harness {
    fn counter(&self, name: &str, client: &str, reason: Option<&str>) -> u64 {
        let text = self.metrics.render();
        let want = match reason {
            Some(r) => format!("{name}{{client=\"{client}\",reason=\"{r}\"}} "),
            None => format!("{name}{{client=\"{client}\"}} "),
        };
        text.lines()
            .find_map(|l| l.strip_prefix(&want))
            .map_or(0, |v| v.trim().parse().unwrap())
    }
}

/// A server with client `a` (127.0.0.1, first factor upstream, towards a
/// socket that never answers) and client `b` (127.0.0.2, lax: no
/// Message-Authenticator required).
async fn harness(prefix: &str) -> (Harness, UdpSocket) {
    let metrics = crate::metrics::install();
    let cfg = crate::config::Config::development();
    let who = Arc::new(Who::default());
    let engine = Engine::start_with_directory(
        crate::app::engine_config(&cfg),
        SystemClock::shared(),
        who.clone(),
        Directory::in_memory(vec!["demo".into()]),
    )
    .unwrap();
    let blackhole = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tenant = engine.tenant_id("demo").unwrap();
    let client = |name: &str, addr: &str, strict: bool, ff: FirstFactor| RadiusClient {
        name: format!("{prefix}-{name}"),
        prefix: addr.parse().unwrap(),
        secret: Secret::new(SECRET),
        tenant,
        require_message_authenticator: strict,
        first_factor: ff,
    };
    let settings = RadiusSettings {
        clients: vec![
            client("a", "127.0.0.1", true, FirstFactor::Upstream),
            client("b", "127.0.0.2", false, FirstFactor::None),
        ],
        call_wait: Duration::from_secs(5),
        max_in_flight: 2,
        reply_cache_entries: 4,
        upstream: Some(UpstreamSettings {
            addr: blackhole.local_addr().unwrap(),
            secret: Secret::new(b"upstream-secret-0123"),
            timeout: Duration::from_millis(1500),
            require_message_authenticator: true,
        }),
    };
    let signals = Shutdown::default();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = RadiusServer::new(socket, settings, engine, who.clone(), signals.close.clone())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(signals.clone()));
    let h = Harness {
        addr,
        signals,
        who,
        metrics,
    };
    (h, blackhole)
}

async fn recv(s: &UdpSocket, wait_ms: u64) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_millis(wait_ms), s.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

async fn nas(ip: &str, server: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).await.unwrap();
    s.connect(server).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_duplicates_and_one_client_never_disturbs_another() {
    let (h, blackhole) = harness("unit1").await;
    let a = nas("127.0.0.1", h.addr).await;
    let b = nas("127.0.0.2", h.addr).await;

    // Client a: two requests wait for the silent upstream (its budget),
    // the third is refused as full; a retransmission of a waiting one is a
    // duplicate. Meanwhile client b is answered at once.
    let r1 = request(1, "ann", Some(b"password-1"), &[]);
    let r2 = request(2, "ann", Some(b"password-2"), &[]);
    let r3 = request(3, "ann", Some(b"password-3"), &[]);
    for r in [&r1, &r2, &r3, &r1] {
        a.send(r).await.unwrap();
    }
    let mut up = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), blackhole.recv(&mut up))
        .await
        .unwrap()
        .unwrap();
    let fwd = decode(&up[..n]).unwrap();
    assert_eq!(
        check_message_authenticator(&fwd, b"upstream-secret-0123"),
        MessageAuth::Valid,
        "the upstream request carries a Message-Authenticator"
    );
    let hidden = fwd.first(USER_PASSWORD).unwrap();
    let pw = reveal_user_password(hidden, b"upstream-secret-0123", fwd.authenticator()).unwrap();
    assert!(
        pw.as_bytes().starts_with(b"password-"),
        "re-hidden for the upstream"
    );

    let rb = request(9, "nobody", None, &[]);
    b.send(&rb).await.unwrap();
    let reply = recv(&b, 1000).await.expect("client b is answered");
    let view = verify_reply(&reply, &[9; 16], SECRET, true).unwrap();
    assert_eq!(view.code(), Code::ACCESS_REJECT);

    // Both waiting requests of a end in Access-Reject after the timeout.
    let mut rejects = 0;
    while let Some(reply) = recv(&a, 2500).await {
        let v = decode(&reply).unwrap();
        assert_eq!(v.code(), Code::ACCESS_REJECT);
        assert!(matches!(v.identifier(), 1 | 2));
        rejects += 1;
    }
    assert_eq!(rejects, 2, "the third request was never answered");
    assert_eq!(
        h.counter("watchword_radius_discarded_total", "unit1-a", Some("full")),
        1
    );
    assert_eq!(
        h.counter(
            "watchword_radius_discarded_total",
            "unit1-a",
            Some("duplicate")
        ),
        1
    );
    assert_eq!(
        h.counter("watchword_radius_rejects_total", "unit1-a", None),
        2
    );
    assert_eq!(
        h.counter("watchword_radius_requests_total", "unit1-a", None),
        4
    );

    // A retransmission of an answered request gets the same bytes again.
    a.send(&r1).await.unwrap();
    let again = recv(&a, 1000).await.expect("resent");
    a.send(&r1).await.unwrap();
    assert_eq!(recv(&a, 1000).await.as_deref(), Some(&again[..]));
    assert_eq!(
        h.counter("watchword_radius_resent_total", "unit1-a", None),
        2
    );

    // Client b's cache holds 4 replies: a fifth new request is answered
    // and pushes the oldest reply out early (counted); a retransmission of
    // one still cached is answered from the cache.
    for id in 10..13 {
        b.send(&request(id, "nobody", None, &[])).await.unwrap();
        assert!(recv(&b, 1000).await.is_some());
    }
    let r12 = request(12, "nobody", None, &[]);
    b.send(&request(13, "nobody", None, &[])).await.unwrap();
    assert!(recv(&b, 1000).await.is_some(), "answered, not refused");
    assert_eq!(
        h.counter(
            "watchword_radius_reply_cache_evicted_total",
            "unit1-b",
            None
        ),
        1
    );
    let resent = h.counter("watchword_radius_resent_total", "unit1-b", None);
    b.send(&r12).await.unwrap();
    assert!(recv(&b, 1000).await.is_some());
    assert_eq!(
        h.counter("watchword_radius_resent_total", "unit1-b", None),
        resent + 1
    );
    assert_eq!(
        h.counter("watchword_radius_discarded_total", "unit1-b", Some("full")),
        0
    );

    // Every decision is audited with the client's name and the NAS address.
    let records = h.who.0.lock().unwrap().clone();
    assert!(
        records.iter().any(
            |r| r.1 == "radius:unit1-a/127.0.0.1" && r.2.as_deref() == Some("upstream_timeout")
        ),
        "{records:?}"
    );
    assert!(records.iter().any(|r| r.1 == "radius:unit1-b/127.0.0.2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blastradius_rules_discard_without_answering() {
    let (h, _blackhole) = harness("unit2").await;
    let a = nas("127.0.0.1", h.addr).await;
    let b = nas("127.0.0.2", h.addr).await;
    let unknown = nas("127.0.0.3", h.addr).await;

    // Client a requires a Message-Authenticator.
    let mut bare = RequestBuilder::without_message_authenticator(1, [1; 16]);
    bare.push(USER_NAME, b"ann").unwrap();
    let bare = bare.finish(SECRET);
    a.send(&bare).await.unwrap();
    // A wrong one, for a client that does not require it.
    let mut bad = request(2, "nobody", None, &[]);
    bad[30] ^= 1;
    b.send(&bad).await.unwrap();
    // Proxy-State without a Message-Authenticator, to the lax client.
    let mut proxy = RequestBuilder::without_message_authenticator(3, [3; 16]);
    proxy.push(USER_NAME, b"nobody").unwrap();
    proxy.push(PROXY_STATE, b"p").unwrap();
    b.send(&proxy.finish(SECRET)).await.unwrap();
    // Not an Access-Request; malformed; from no client.
    let mut acct = request(4, "nobody", None, &[]);
    acct[0] = 4;
    b.send(&acct).await.unwrap();
    b.send(&[1, 2, 0, 19]).await.unwrap();
    unknown
        .send(&request(5, "nobody", None, &[]))
        .await
        .unwrap();
    // CHAP: answered with Access-Reject asking for PAP.
    let mut chap = RequestBuilder::new(6, [6; 16]);
    chap.push(USER_NAME, b"ann").unwrap();
    chap.push(CHAP_PASSWORD, &[1; 17]).unwrap();
    b.send(&chap.finish(SECRET)).await.unwrap();
    let reply = recv(&b, 1000).await.expect("an answer to CHAP");
    let view = verify_reply(&reply, &[6; 16], SECRET, true).unwrap();
    assert_eq!(view.code(), Code::ACCESS_REJECT);
    assert!(
        std::str::from_utf8(view.first(18).unwrap())
            .unwrap()
            .contains("PAP")
    );
    // Without Message-Authenticator but lax: answered; an overlong answer
    // is rejected without reaching the engine.
    let mut lax = RequestBuilder::without_message_authenticator(7, [7; 16]);
    lax.push(USER_NAME, b"ann").unwrap();
    lax.push_user_password(&[b'1'; 65], SECRET).unwrap();
    b.send(&lax.finish(SECRET)).await.unwrap();
    let reply = recv(&b, 1000).await.expect("an answer");
    let view = verify_reply(&reply, &[7; 16], SECRET, true).unwrap();
    assert!(
        std::str::from_utf8(view.first(18).unwrap())
            .unwrap()
            .contains("64")
    );

    assert_eq!(recv(&a, 300).await, None);
    assert_eq!(recv(&b, 100).await, None);
    assert_eq!(recv(&unknown, 100).await, None);
    let c = |client: &str, reason: &str| {
        h.counter("watchword_radius_discarded_total", client, Some(reason))
    };
    assert_eq!(c("unit2-a", "missing_message_authenticator"), 1);
    assert_eq!(c("unit2-b", "bad_authenticator"), 1);
    assert_eq!(c("unit2-b", "missing_message_authenticator"), 1);
    assert_eq!(c("unit2-b", "unsupported_code"), 1);
    assert_eq!(c("unit2-b", "malformed"), 1);
    assert!(c("_unknown", "unknown_client") >= 1);
    let records = h.who.0.lock().unwrap().clone();
    assert!(
        records
            .iter()
            .any(|r| r.2.as_deref() == Some("pap_required"))
    );
    assert!(
        records
            .iter()
            .any(|r| r.2.as_deref() == Some("answer_too_long"))
    );
}
