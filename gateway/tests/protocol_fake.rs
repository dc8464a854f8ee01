//! Protocol-level integration tests over real TCP on loopback against a fake
//! backend: authentication, framing errors, malformed payloads, roles, pushes,
//! slow clients, pipelining, many connections, and the HELLO and idle
//! timeouts. Only the timeout tests depend on timing, with wide margins.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use watchword_engine::{ChallengeId, TenantId, VerifyOutcome};
use watchword_gateway::protocol::{Request, Status};
use watchword_gateway::server::ServerSettings;
use watchword_gateway::{Client, ClientConfig, ClientError};

fn cfg(addr: &str, tenant: &str, key: &str) -> ClientConfig {
    ClientConfig {
        addr: addr.into(),
        tenant: tenant.into(),
        key: key.into(),
        ..ClientConfig::default()
    }
}

#[tokio::test]
async fn wrong_key_and_wrong_tenant_get_the_same_answer_and_close() {
    let srv = fake_server(ServerSettings::default()).await;
    let mut answers = Vec::new();
    for (t, k) in [("alpha", "nope"), ("nobody", "alpha-key"), ("alpha", "")] {
        let mut s = connect_raw(&srv.addr).await;
        s.write_all(&enc(&hello(t, k), 5)).await.unwrap();
        let (op, st, id, payload) = read_frame(&mut s).await.unwrap();
        assert_eq!((op, st, id), (0x81, Status::Unauthenticated as u8, 5));
        assert!(
            closed(&mut s).await,
            "connection must close after UNAUTHENTICATED"
        );
        answers.push(payload);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[1], answers[2]);
    assert!(!message(&answers[0]).contains("alpha-key"));
    // Either of a tenant's keys works.
    authed_raw(&srv.addr, "alpha", "alpha-key-2").await;
}

#[tokio::test]
async fn any_op_before_hello_is_unauthenticated_and_closes() {
    let srv = fake_server(ServerSettings::default()).await;
    for op in [0x02u8, 0x10, 0x30, 0x77] {
        let mut s = connect_raw(&srv.addr).await;
        s.write_all(&raw(op, 3, &[])).await.unwrap();
        let (rop, st, id, _) = read_frame(&mut s).await.unwrap();
        assert_eq!((rop, st, id), (op | 0x80, Status::Unauthenticated as u8, 3));
        assert!(closed(&mut s).await);
    }
}

#[tokio::test]
async fn unsupported_version_in_hello_closes() {
    let srv = fake_server(ServerSettings::default()).await;
    let mut s = connect_raw(&srv.addr).await;
    let req = Request::Hello {
        version: 2,
        tenant: "alpha".into(),
        key: "alpha-key".into(),
    };
    s.write_all(&enc(&req, 8)).await.unwrap();
    let (_, st, id, p) = read_frame(&mut s).await.unwrap();
    assert_eq!((st, id), (Status::Unsupported as u8, 8));
    assert!(message(&p).contains("version 2"));
    assert!(closed(&mut s).await);
}

#[tokio::test]
async fn malformed_hello_is_bad_frame_and_stays_open() {
    let srv = fake_server(ServerSettings::default()).await;
    let mut s = connect_raw(&srv.addr).await;
    s.write_all(&raw(0x01, 4, &[0, 1, 0, 9, b'a']))
        .await
        .unwrap();
    let (_, st, id, p) = read_frame(&mut s).await.unwrap();
    assert_eq!((st, id), (Status::BadFrame as u8, 4));
    assert!(message(&p).contains("tenant"), "{}", message(&p));
    s.write_all(&enc(&hello("alpha", "alpha-key"), 5))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut s).await.unwrap().1, 0);
}

#[tokio::test]
async fn oversize_and_undersize_lengths_answer_req_id_zero_then_close() {
    let srv = fake_server(ServerSettings {
        max_frame: 1024,
        ..ServerSettings::default()
    })
    .await;
    for len in [0u32, 5, 1025, u32::MAX] {
        let mut s = authed_raw(&srv.addr, "alpha", "alpha-key").await;
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0x02, 0, 0, 0, 0, 7]);
        s.write_all(&bytes).await.unwrap();
        let (op, st, id, p) = read_frame(&mut s).await.unwrap();
        assert_eq!((op, st, id), (0x80, Status::BadFrame as u8, 0), "len {len}");
        assert!(message(&p).contains(&len.to_string()));
        assert!(closed(&mut s).await, "len {len}");
    }
    // Before HELLO too.
    let mut s = connect_raw(&srv.addr).await;
    s.write_all(&2000u32.to_be_bytes()).await.unwrap();
    assert_eq!(read_frame(&mut s).await.unwrap().1, Status::BadFrame as u8);
    assert!(closed(&mut s).await);
}

#[tokio::test]
async fn malformed_payloads_are_bad_frame_for_that_request_and_stay_open() {
    let srv = fake_server(ServerSettings::default()).await;
    let mut s = authed_raw(&srv.addr, "alpha", "alpha-key").await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // VERIFY with a truncated id.
        (raw(0x11, 10, &[1; 10]), "too short"),
        // VERIFY_SUBJECT whose subject is not UTF-8.
        (raw(0x12, 11, &[0, 2, 0xc3, 0x28, 0, 1, b'1']), "UTF-8"),
        // PING with a payload.
        (raw(0x02, 12, &[0]), "too long"),
        // A str longer than 1024 bytes.
        (
            raw(0x12, 13, &{
                let mut p = vec![0x04, 0x01];
                p.extend(std::iter::repeat_n(b'a', 1025));
                p.extend([0, 0]);
                p
            }),
            "longer",
        ),
        // A str length pointing past the payload.
        (raw(0x12, 14, &[0, 50, b'a']), "too short"),
    ];
    for (bytes, want) in cases {
        let rid = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
        s.write_all(&bytes).await.unwrap();
        let (_, st, id, p) = read_frame(&mut s).await.unwrap();
        assert_eq!((st, id), (Status::BadFrame as u8, rid));
        assert!(message(&p).contains(want), "{} !~ {want}", message(&p));
    }
    // Unknown op: UNSUPPORTED, still open.
    s.write_all(&raw(0x7e, 20, &[1, 2, 3])).await.unwrap();
    let (op, st, id, _) = read_frame(&mut s).await.unwrap();
    assert_eq!((op, st, id), (0xfe, Status::Unsupported as u8, 20));
    // Unknown channel: INVALID_ARGUMENT.
    let mut p = vec![0, 1, b's', 9, 0, 1, b'x', 0, 0, 0, 0, 0, 0, 0];
    p.truncate(14);
    s.write_all(&raw(0x10, 21, &p)).await.unwrap();
    let (_, st, id, _) = read_frame(&mut s).await.unwrap();
    assert_eq!((st, id), (Status::InvalidArgument as u8, 21));
    s.write_all(&raw(0x02, 22, &[])).await.unwrap();
    assert_eq!(read_frame(&mut s).await.unwrap().1, 0);
}

#[tokio::test]
async fn roles_and_internal() {
    let srv = fake_server(ServerSettings::default()).await;
    let beta = Client::connect(cfg(&srv.addr, "beta", "beta-key"))
        .await
        .unwrap();
    match beta.subscribe_outbox().await {
        Err(ClientError::Status { status, .. }) => assert_eq!(status, Status::Forbidden),
        other => panic!("{other:?}"),
    }
    match beta.status(ChallengeId([1; 16])).await {
        Err(ClientError::Status { status, .. }) => assert_eq!(status, Status::Internal),
        other => panic!("{other:?}"),
    }
    beta.ping().await.unwrap();
}

#[tokio::test]
async fn outbox_pushes_only_the_tenants_own_messages() {
    let srv = fake_server(ServerSettings::default()).await;
    let alpha = Client::connect(cfg(&srv.addr, "alpha", "alpha-key"))
        .await
        .unwrap();
    let mut rx = alpha.subscribe_outbox().await.unwrap();
    srv.fake
        .outbox
        .send((TenantId(1), delivered(1, "beta's")))
        .unwrap();
    srv.fake
        .outbox
        .send((TenantId(0), delivered(2, "alpha's")))
        .unwrap();
    let d = rx.recv().await.unwrap();
    assert_eq!(d.text, "alpha's");
    assert_eq!(d.id, ChallengeId([2; 16]));
}

#[tokio::test]
async fn a_slow_client_with_half_a_frame_does_not_disturb_others() {
    let srv = fake_server(ServerSettings::default()).await;
    let mut slow = authed_raw(&srv.addr, "alpha", "alpha-key").await;
    let frame = raw(0x02, 77, &[]);
    slow.write_all(&frame[..5]).await.unwrap();
    let other = Client::connect(cfg(&srv.addr, "beta", "beta-key"))
        .await
        .unwrap();
    for _ in 0..10 {
        other.ping().await.unwrap();
    }
    slow.write_all(&frame[5..]).await.unwrap();
    let (op, st, id, _) = read_frame(&mut slow).await.unwrap();
    assert_eq!((op, st, id), (0x82, 0, 77));
}

#[tokio::test]
async fn pipelined_requests_on_one_connection() {
    let srv = fake_server(ServerSettings {
        max_in_flight: 8,
        ..ServerSettings::default()
    })
    .await;
    // Raw: many frames in one write, answered by req_id.
    let mut s = authed_raw(&srv.addr, "alpha", "alpha-key").await;
    let mut burst = Vec::new();
    for i in 0..100u32 {
        burst.extend(raw(0x02, 1000 + i, &[]));
    }
    s.write_all(&burst).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        let (_, st, id, _) = read_frame(&mut s).await.unwrap();
        assert_eq!(st, 0);
        seen.insert(id);
    }
    assert_eq!(seen.len(), 100);
    // Client: concurrent callers share one connection.
    let c = Client::connect(cfg(&srv.addr, "alpha", "alpha-key"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let code = if i % 2 == 0 { "000000" } else { "1" };
            let r = c.verify(ChallengeId([0; 16]), code).await.unwrap();
            (i, r.outcome)
        }));
    }
    for t in tasks {
        let (i, o) = t.await.unwrap();
        if i % 2 == 0 {
            assert_eq!(o, VerifyOutcome::Approved);
        } else {
            assert_eq!(o, VerifyOutcome::Rejected { attempts_left: 4 });
        }
    }
}

#[tokio::test]
async fn a_thousand_concurrent_connections() {
    let srv = fake_server(ServerSettings::default()).await;
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let addr = srv.addr.clone();
        tasks.push(tokio::spawn(async move {
            let c = Client::connect(ClientConfig {
                connect_timeout: Duration::from_secs(60),
                ..cfg(
                    &addr,
                    if i % 2 == 0 { "alpha" } else { "beta" },
                    if i % 2 == 0 { "alpha-key" } else { "beta-key" },
                )
            })
            .await
            .unwrap();
            c.ping().await.unwrap();
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    // All 1000 are open at once: each still answers.
    for c in &clients {
        c.ping().await.unwrap();
    }
}

#[tokio::test]
async fn connection_limit_is_enforced_before_accept() {
    let srv = fake_server(ServerSettings {
        max_connections: 1,
        ..ServerSettings::default()
    })
    .await;
    let first = Client::connect(cfg(&srv.addr, "alpha", "alpha-key"))
        .await
        .unwrap();
    // The second connection is queued by the kernel but not served.
    let second = Client::connect(ClientConfig {
        connect_timeout: Duration::from_millis(300),
        ..cfg(&srv.addr, "alpha", "alpha-key")
    })
    .await;
    assert!(matches!(second, Err(ClientError::Timeout)), "{second:?}");
    drop(first);
    // Once the first is gone, a new one is served.
    let third = Client::connect(ClientConfig {
        connect_timeout: Duration::from_secs(30),
        ..cfg(&srv.addr, "alpha", "alpha-key")
    })
    .await
    .unwrap();
    third.ping().await.unwrap();
}

#[tokio::test]
async fn hello_must_arrive_within_five_seconds() {
    let srv = fake_server(ServerSettings::default()).await;
    let mut s = connect_raw(&srv.addr).await;
    // Half a HELLO does not count: the server closes after 5 s (real time;
    // this test takes that long, in parallel with the others).
    s.write_all(&enc(&hello("alpha", "alpha-key"), 1)[..7])
        .await
        .unwrap();
    assert!(closed(&mut s).await);
}

#[tokio::test]
async fn an_idle_session_is_closed_after_the_idle_timeout_and_an_active_one_is_not() {
    let srv = fake_server(ServerSettings {
        idle_timeout: Duration::from_secs(2),
        ..ServerSettings::default()
    })
    .await;
    // Silent after HELLO: closed after the idle timeout (2 s), not at the
    // 5 s HELLO deadline the connection's timer was first set for.
    let start = tokio::time::Instant::now();
    let mut quiet = authed_raw(&srv.addr, "alpha", "alpha-key").await;
    assert!(closed(&mut quiet).await);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_millis(4500),
        "closed after {waited:?}"
    );
    // A PING every 500 ms for 7 s keeps a session open past both the idle
    // timeout and the HELLO deadline; silence then closes it.
    let mut busy = authed_raw(&srv.addr, "alpha", "alpha-key").await;
    for i in 0..14 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        busy.write_all(&raw(0x02, 100 + i, b"")).await.unwrap();
        let (op, st, id, _) = read_frame(&mut busy).await.expect("still open");
        assert_eq!((op, st, id), (0x82, 0, 100 + i));
    }
    assert!(closed(&mut busy).await);
}

/// A hand-written server that answers each batch of pings in reverse order:
/// the client must match answers to callers by req_id.
#[tokio::test]
async fn the_client_matches_out_of_order_answers_by_req_id() {
    use watchword_gateway::protocol::Response;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let (_, _, id, _) = read_frame(&mut s).await.unwrap();
        let mut out = bytes::BytesMut::new();
        Response::Hello {
            version: 1,
            server_name: "rev".into(),
            max_frame: 65536,
        }
        .encode(0x01, id, &mut out);
        s.write_all(&out).await.unwrap();
        loop {
            let mut batch = Vec::new();
            for _ in 0..10 {
                match read_frame(&mut s).await {
                    Some((op, _, id, payload)) => batch.push((op, id, payload)),
                    None => return,
                }
            }
            let mut out = bytes::BytesMut::new();
            for (op, id, payload) in batch.into_iter().rev() {
                // VERIFY answers carry the code's length as attempts_left, so
                // each caller can check it got its own answer.
                let n = u16::from_be_bytes([payload[16], payload[17]]) as u8;
                Response::Verified(VerifyOutcome::Rejected { attempts_left: n })
                    .encode(op, id, &mut out);
            }
            s.write_all(&out).await.unwrap();
        }
    });
    let c = Client::connect(cfg(&addr, "x", "y")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 1..=10u8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let code = "7".repeat(usize::from(i));
            let r = c.verify(ChallengeId([i; 16]), &code).await.unwrap();
            assert_eq!(r.outcome, VerifyOutcome::Rejected { attempts_left: i });
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Shutdown with a drain the test controls: while draining, ISSUE answers
/// SHUTTING_DOWN, other requests (pipelined too) are still answered and new
/// connections are refused; once the drain ends, connections close and the
/// sequence finishes.
#[tokio::test]
async fn shutdown_answers_shutting_down_while_draining_then_closes() {
    use watchword_gateway::server::graceful_shutdown;
    let srv = fake_server(ServerSettings::default()).await;
    let c = Client::connect(cfg(&srv.addr, "alpha", "alpha-key"))
        .await
        .unwrap();
    let mut raw_conn = authed_raw(&srv.addr, "alpha", "alpha-key").await;
    let issue = watchword_gateway::IssueRequest {
        subject: "s".into(),
        channel: watchword_engine::Channel::Sms,
        destination: "+14255550100".into(),
        code_len: 0,
        ttl_s: 0,
        locale: String::new(),
        client_ip: String::new(),
    };
    c.issue(&issue).await.unwrap();
    let seq = {
        let fake = srv.fake.clone();
        let signals = srv.signals.clone();
        let tracker = srv.tracker.clone();
        tokio::spawn(async move {
            graceful_shutdown(&fake, &signals, &tracker, Duration::from_secs(30)).await;
        })
    };
    // begin_shutdown runs before the drain, which waits for the gate.
    let status = loop {
        match c.issue(&issue).await {
            Ok(_) => tokio::task::yield_now().await,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            status,
            ClientError::Status {
                status: Status::ShuttingDown,
                retry_after_ms: 1000,
                ..
            }
        ),
        "{status:?}"
    );
    // Still served while draining: a pipelined burst is answered in full.
    let mut burst = Vec::new();
    for i in 0..50u32 {
        burst.extend(raw(0x02, 500 + i, &[]));
    }
    raw_conn.write_all(&burst).await.unwrap();
    for _ in 0..50 {
        assert_eq!(read_frame(&mut raw_conn).await.unwrap().1, 0);
    }
    assert_eq!(
        c.verify(ChallengeId([0; 16]), "000000")
            .await
            .unwrap()
            .outcome,
        VerifyOutcome::Approved
    );
    // The drain ends: every connection is closed and the sequence returns.
    srv.fake.drain_gate.notify_one();
    seq.await.unwrap();
    assert!(closed(&mut raw_conn).await);
    assert!(c.ping().await.is_err());
    assert!(tokio::net::TcpStream::connect(&srv.addr).await.is_err());
}
