//! End-to-end tests over real TCP on loopback with the real engine and its
//! simulated carriers: the full flow reading codes through OUTBOX_SUBSCRIBE,
//! every engine status, tenant isolation, supersede, locking, the five-sends
//! limit, TLS, metrics and health, the audit log and shutdown draining.
//! Nothing here asserts on elapsed time.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::Receiver;
use watchword_engine::delivery::CarrierConfig;
use watchword_engine::{ChallengeId, ChallengeState, Channel, VerifyOutcome};
use watchword_gateway::app::{Running, start};
use watchword_gateway::config::{Config, TenantConfig};
use watchword_gateway::server::Role;
use watchword_gateway::{
    Client, ClientConfig, ClientError, ClientTls, Delivered, IssueRequest, Status,
};

fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::development();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.server.metrics_listen = "127.0.0.1:0".into();
    cfg.audit.path = dir.join("audit.jsonl");
    cfg.audit.flush_interval_ms = 20;
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.storage.path = dir.join("data");
    // Tests run side by side: no RADIUS on the profile's fixed port.
    cfg.radius.listen = String::new();
    cfg.tenants.push(TenantConfig {
        name: "acme".into(),
        keys: vec!["acme-key-1".into()],
        role: Role::Client,
        ..TenantConfig::default()
    });
    cfg
}

fn client_cfg(r: &Running, tenant: &str, key: &str) -> ClientConfig {
    ClientConfig {
        addr: r.addr.to_string(),
        tenant: tenant.into(),
        key: key.into(),
        ..ClientConfig::default()
    }
}

async fn demo(r: &Running) -> Client {
    Client::connect(client_cfg(r, "demo", "demo-key"))
        .await
        .unwrap()
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

/// The next delivered message for `id` (others are skipped).
async fn delivered_for(rx: &mut Receiver<Delivered>, id: ChallengeId) -> Delivered {
    loop {
        let d = rx.recv().await.expect("outbox open");
        if d.id == id {
            return d;
        }
    }
}

fn code_in(text: &str, len: usize) -> String {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() == len)
        .expect("a code in the text")
        .to_owned()
}

fn status_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (Status, u32) {
    match r {
        Err(ClientError::Status {
            status,
            retry_after_ms,
            ..
        }) => (status, retry_after_ms),
        other => panic!("expected a status error, got {other:?}"),
    }
}

#[tokio::test]
async fn full_flow_issue_read_code_verify() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(config(dir.path())).await.unwrap();
    let c = demo(&r).await;
    let mut outbox = c.subscribe_outbox().await.unwrap();
    let issued = c.issue(&sms("user-1", "+1 (425) 555-0134")).await.unwrap();
    assert_eq!(issued.masked_destination, "+14*******34");
    let msg = delivered_for(&mut outbox, issued.id).await;
    assert_eq!(msg.channel, Channel::Sms);
    assert_eq!(msg.destination, "+14255550134");
    let code = code_in(&msg.text, 6);
    // A wrong code of the wrong length is a REJECTED attempt.
    let v = c.verify(issued.id, "12").await.unwrap();
    assert_eq!(v.outcome, VerifyOutcome::Rejected { attempts_left: 4 });
    let v = c.verify(issued.id, &code).await.unwrap();
    assert_eq!(v.outcome, VerifyOutcome::Approved);
    let v = c.verify(issued.id, &code).await.unwrap();
    assert_eq!(v.outcome, VerifyOutcome::Unknown);
    let s = c.status(issued.id).await.unwrap();
    assert_eq!(s.state, ChallengeState::Approved);
    // VERIFY_SUBJECT and CANCEL.
    let second = c.issue(&sms("user-2", "+14255550135")).await.unwrap();
    let code2 = code_in(&delivered_for(&mut outbox, second.id).await.text, 6);
    let v = c.verify_subject("user-2", &code2).await.unwrap();
    assert_eq!(v.outcome, VerifyOutcome::Approved);
    let third = c.issue(&sms("user-3", "+14255550136")).await.unwrap();
    c.cancel(third.id).await.unwrap();
    assert_eq!(
        c.status(third.id).await.unwrap().state,
        ChallengeState::Cancelled
    );
    assert_eq!(status_of(c.cancel(third.id).await).0, Status::NotFound);
    assert_eq!(
        c.verify(third.id, "000000").await.unwrap().outcome,
        VerifyOutcome::Unknown
    );
    r.shutdown();
    r.wait().await;
    // The audit log was flushed at shutdown: issues with the client IP, no code.
    let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(log.contains("\"event\":\"issued\""));
    assert!(log.contains("\"event\":\"approved\""));
    // The two codes offered after the end (used, cancelled) are written too.
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"event\":\"refused\""))
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0].contains("\"result\":\"failure\""));
    assert!(refused[0].contains("\"subject\":\"user-1\""));
    assert!(refused[0].contains("\"reason\":\"challenge already used\""));
    assert!(refused[1].contains("\"reason\":\"challenge cancelled\""));
    assert!(log.contains("203.0.113.7"));
    assert!(!log.contains(&code) && !log.contains(&code2));
    assert!(!log.contains("4255550134"));
    assert!(!log.contains("demo-key"));
}

#[tokio::test]
async fn tenants_cannot_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(config(dir.path())).await.unwrap();
    let a = demo(&r).await;
    let b = Client::connect(client_cfg(&r, "acme", "acme-key-1"))
        .await
        .unwrap();
    let id = a.issue(&sms("u", "+14255550100")).await.unwrap().id;
    assert_eq!(status_of(b.status(id).await).0, Status::NotFound);
    assert_eq!(status_of(b.cancel(id).await).0, Status::NotFound);
    assert_eq!(status_of(b.resend(id).await).0, Status::NotFound);
    assert_eq!(
        b.verify(id, "123456").await.unwrap().outcome,
        VerifyOutcome::Unknown
    );
    assert_eq!(
        b.verify_subject("u", "123456").await.unwrap().outcome,
        VerifyOutcome::Unknown
    );
    // Untouched by the other tenant's attempts.
    assert_eq!(a.status(id).await.unwrap().attempts_left, 5);
    // A client-role tenant may not read the outbox.
    assert_eq!(status_of(b.subscribe_outbox().await).0, Status::Forbidden);
}

#[tokio::test]
async fn supersede_lock_and_five_sends() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(config(dir.path())).await.unwrap();
    let c = demo(&r).await;
    let mut outbox = c.subscribe_outbox().await.unwrap();
    // Supersede: the old challenge stops verifying.
    let old = c.issue(&sms("s", "+14255550111")).await.unwrap();
    let old_code = code_in(&delivered_for(&mut outbox, old.id).await.text, 6);
    let new = c.issue(&sms("s", "+14255550111")).await.unwrap();
    assert_ne!(old.id, new.id);
    assert_eq!(
        c.verify(old.id, &old_code).await.unwrap().outcome,
        VerifyOutcome::Unknown
    );
    assert_eq!(
        c.status(old.id).await.unwrap().state,
        ChallengeState::Superseded
    );
    // Lock after five wrong codes.
    let l = c.issue(&sms("lock", "+14255550122")).await.unwrap();
    let right = code_in(&delivered_for(&mut outbox, l.id).await.text, 6);
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    for left in (1..=4).rev() {
        let o = c.verify(l.id, wrong).await.unwrap().outcome;
        assert_eq!(
            o,
            VerifyOutcome::Rejected {
                attempts_left: left
            }
        );
    }
    assert_eq!(
        c.verify(l.id, wrong).await.unwrap().outcome,
        VerifyOutcome::Locked
    );
    let after = c.verify(l.id, &right).await.unwrap().outcome;
    assert!(
        matches!(after, VerifyOutcome::Locked | VerifyOutcome::Unknown),
        "{after:?}"
    );
    // Five sends in five minutes: ISSUE is the first, four RESENDs, then refused.
    let f = c.issue(&sms("five", "+14255550133")).await.unwrap();
    let mut lefts = Vec::new();
    for _ in 0..4 {
        lefts.push(c.resend(f.id).await.unwrap().sends_left);
    }
    assert_eq!(lefts, vec![3, 2, 1, 0]);
    let (st, retry) = status_of(c.resend(f.id).await);
    assert_eq!(st, Status::RateLimited);
    assert!(retry > 0);
    // The same destination is limited for a new ISSUE too.
    assert_eq!(
        status_of(c.issue(&sms("other", "+14255550133")).await).0,
        Status::RateLimited
    );
}

#[tokio::test]
async fn invalid_arguments_capacity_and_no_route() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.table.capacity = 1;
    cfg.table.shards = 1;
    cfg.router.carriers = vec![CarrierConfig {
        name: "sms-only".into(),
        channels: vec![Channel::Sms],
        ..CarrierConfig::default()
    }];
    let r = start(cfg).await.unwrap();
    let c = demo(&r).await;
    for bad in [
        sms("u", "not a number"),
        IssueRequest {
            code_len: 3,
            ..sms("u", "+14255550100")
        },
        IssueRequest {
            ttl_s: 5,
            ..sms("u", "+14255550100")
        },
        sms("", "+14255550100"),
    ] {
        let (st, _) = status_of(c.issue(&bad).await);
        assert_eq!(st, Status::InvalidArgument, "{bad:?}");
    }
    let email = IssueRequest {
        channel: Channel::Email,
        ..sms("u", "jane@example.com")
    };
    assert_eq!(status_of(c.issue(&email).await).0, Status::NoRoute);
    c.issue(&sms("first", "+14255550100")).await.unwrap();
    assert_eq!(
        status_of(c.issue(&sms("second", "+14255550101")).await).0,
        Status::Capacity
    );
    assert_eq!(
        status_of(c.status(ChallengeId([0; 16])).await).0,
        Status::NotFound
    );
}

#[tokio::test]
async fn shutdown_refuses_new_issues_then_drains_and_closes() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(config(dir.path())).await.unwrap();
    let c = demo(&r).await;
    let mut outbox = c.subscribe_outbox().await.unwrap();
    let before = c.issue(&sms("d", "+14255550144")).await.unwrap();
    let code = code_in(&delivered_for(&mut outbox, before.id).await.text, 6);
    r.shutdown();
    // Until the drain finishes, the connection stays open and ISSUE answers
    // SHUTTING_DOWN; once it has finished the connection is closed.
    let mut saw_shutting_down = false;
    // (A new subject and destination each time, so no rate limit interferes.)
    for i in 0..5_000 {
        let (subject, dest) = (format!("late-{i}"), format!("+1425556{i:04}"));
        match c.issue(&sms(&subject, &dest)).await {
            Ok(_) => continue, // shutdown not yet begun
            Err(ClientError::Status { status, .. }) => {
                assert_eq!(status, Status::ShuttingDown);
                saw_shutting_down = true;
                break;
            }
            Err(ClientError::Closed) | Err(ClientError::Io(_)) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    // VERIFY is still answered while draining (or the connection is gone).
    match c.verify(before.id, &code).await {
        Ok(v) => assert_eq!(v.outcome, VerifyOutcome::Approved),
        Err(ClientError::Closed | ClientError::Io(_)) => {}
        Err(e) => panic!("{e:?}"),
    }
    let addr = r.addr;
    r.wait().await;
    assert!(saw_shutting_down || c.ping().await.is_err());
    // No longer accepting.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn tls_with_a_certificate_generated_here() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut cfg = config(dir.path());
    cfg.server.tls_cert = Some(cert_path.clone());
    cfg.server.tls_key = Some(key_path);
    let r = start(cfg).await.unwrap();
    let c = Client::connect(ClientConfig {
        tls: Some(ClientTls {
            server_name: "localhost".into(),
            ca_cert_pem: cert_path,
        }),
        ..client_cfg(&r, "demo", "demo-key")
    })
    .await
    .unwrap();
    c.ping().await.unwrap();
    let mut outbox = c.subscribe_outbox().await.unwrap();
    let i = c.issue(&sms("tls", "+14255550166")).await.unwrap();
    let code = code_in(&delivered_for(&mut outbox, i.id).await.text, 6);
    assert_eq!(
        c.verify(i.id, &code).await.unwrap().outcome,
        VerifyOutcome::Approved
    );
    // Plain TCP to a TLS port does not get a protocol answer.
    let plain = Client::connect(ClientConfig {
        connect_timeout: Duration::from_secs(10),
        ..client_cfg(&r, "demo", "demo-key")
    })
    .await;
    assert!(plain.is_err());
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn metrics_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(config(dir.path())).await.unwrap();
    let c = demo(&r).await;
    c.ping().await.unwrap();
    let _ = c.status(ChallengeId([1; 16])).await;
    assert!(
        http_get(r.metrics_addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        http_get(r.metrics_addr, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let m = http_get(r.metrics_addr, "/metrics").await;
    assert!(m.starts_with("HTTP/1.1 200"));
    assert!(m.contains("watchword_requests_total"), "{m}");
    assert!(m.contains("status=\"NOT_FOUND\""), "{m}");
    assert!(m.contains("watchword_request_duration_seconds"), "{m}");
    // What the senders may carry, from the configuration: 4 US short codes
    // at 100/s each, and each carrier's own 2 senders at 1/s.
    for line in [
        "watchword_sender_capacity_per_second{pool=\"US\",channel=\"sms\"} 400\n",
        "watchword_senders{pool=\"US\",channel=\"sms\"} 4\n",
        "watchword_sender_capacity_per_second{carrier=\"sim-primary\",channel=\"sms\"} 2\n",
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
    assert!(
        http_get(r.metrics_addr, "/nope")
            .await
            .starts_with("HTTP/1.1 404")
    );
}

/// A huge page is zeroed inside the worker that first touches it (7-14 ms on
/// this project's VM): a started gateway has them off unless configured on.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_started_gateway_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    assert!(!cfg.server.transparent_huge_pages, "off by default");
    let _r = start(cfg).await.unwrap();
    assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
}

/// The value of an unlabelled series in a scrape.
fn series(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn one_pending_gauge_equals_the_table_and_every_metric_has_help() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(config(dir.path())).await.unwrap();
    let c = demo(&r).await;
    let (_sim, mut rx) = {
        let sim = Client::connect(client_cfg(&r, "demo", "demo-key"))
            .await
            .unwrap();
        let rx = sim.subscribe_outbox().await.unwrap();
        (sim, rx)
    };
    // A mixed run: issued, approved, locked, superseded, left pending.
    let mut ids = Vec::new();
    for i in 0..12 {
        let req = sms(&format!("user-{i}"), &format!("+1425555{:04}", 100 + i));
        ids.push(c.issue(&req).await.unwrap().id);
    }
    // Messages arrive in any order: keep them all until the first four are in.
    let mut texts = std::collections::HashMap::new();
    while ids[..4].iter().any(|id| !texts.contains_key(id)) {
        let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a message")
            .expect("outbox open");
        texts.insert(d.id, d.text);
    }
    for id in &ids[..4] {
        let code = code_in(&texts[id], 6);
        assert_eq!(
            c.verify(*id, &code).await.unwrap().outcome,
            VerifyOutcome::Approved
        );
    }
    for _ in 0..5 {
        let _ = c.verify(ids[4], "not-it").await;
    }
    let _ = c.issue(&sms("user-5", "+14255550105")).await.unwrap();
    let m = http_get(r.metrics_addr, "/metrics").await;
    let pending = series(&m, "watchword_challenges_pending").expect("the gauge");
    assert_eq!(pending as usize, r.engine.table().pending(), "{m}");
    assert_eq!(
        pending as usize,
        12 - 4 - 1,
        "issued 13, approved 4, locked 1, superseded 1"
    );
    assert!(
        !m.contains("watchword_pending_challenges"),
        "one name for one figure"
    );
    // Every series has a HELP text.
    for l in m.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = l.split(' ').next().unwrap();
        assert!(m.contains(&format!("# HELP {name} ")), "no HELP for {name}");
    }
    r.shutdown();
}

#[tokio::test]
async fn a_guess_flood_is_answered_rate_limited_with_a_retry_hint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.tenants[0].verify_per_s = 4;
    cfg.tenants[0].verify_gap_ms = 2_000;
    let r = start(cfg).await.unwrap();
    let c = demo(&r).await;
    let a = c.issue(&sms("flood-a", "+14255550160")).await.unwrap();
    let b = c.issue(&sms("flood-b", "+14255550161")).await.unwrap();
    let d = c.issue(&sms("flood-d", "+14255550162")).await.unwrap();
    // A wrong code, then at once another: held by the challenge's gap.
    let v = c.verify(a.id, "000000").await.unwrap();
    assert_eq!(v.outcome, VerifyOutcome::Rejected { attempts_left: 4 });
    let (status, wait) = status_of(c.verify(a.id, "111111").await);
    assert_eq!(status, Status::RateLimited);
    assert!((1..=2_000).contains(&wait), "{wait}");
    // Other challenges are not held; the tenant's 4 a second are.
    let v = c.verify(b.id, "000000").await.unwrap();
    assert_eq!(v.outcome, VerifyOutcome::Rejected { attempts_left: 4 });
    let _ = c.verify_subject("flood-b", "222222").await;
    // A fifth guess within the second, on a challenge never tried: the
    // tenant's rate refuses it.
    let (status, _) = status_of(c.verify(d.id, "333333").await);
    assert_eq!(status, Status::RateLimited);
    assert_eq!(c.status(d.id).await.unwrap().attempts_left, 5);
    // Refused guesses counted no attempt.
    assert_eq!(c.status(a.id).await.unwrap().attempts_left, 4);
    r.shutdown();
    r.wait().await;
}
