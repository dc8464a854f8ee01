//! The HTTP carrier against a real HTTP/1.1 server started by each test on
//! 127.0.0.1: status mapping (2xx, 429 + Retry-After, 4xx, 5xx), keep-alive
//! reuse, connection failures, and a server that never answers, through the
//! router's timeout and failover.
//!
//! Real sockets and real time with short timeouts; nothing here asserts on how
//! long something took.

#[path = "delivery_support.rs"]
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use support::TestLedger;
use watchword_engine::delivery::{
    Carrier, CarrierConfig, CarrierKind, CarrierMessage, CarrierSlot, DeliveryJob, DialPlan,
    HttpCarrier, HttpConfig, Limit, Receipt, ReceiptToken, Receipts, Router, RouterConfig,
    SendOutcome, SlotHint, TenantDelivery, normalize,
};
use watchword_engine::{ChallengeId, Channel, Code, DeliveryState, ManualClock, TenantId};

/// A loopback server whose answer the test sets: a status (0 = never answer)
/// and an optional Retry-After.
struct Server {
    addr: SocketAddr,
    status: AtomicU16,
    retry_after: Mutex<Option<String>>,
    connections: AtomicU64,
    requests: AtomicU64,
    bodies: Mutex<Vec<serde_json::Value>>,
}

async fn serve() -> Arc<Server> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Arc::new(Server {
        addr: listener.local_addr().unwrap(),
        status: AtomicU16::new(200),
        retry_after: Mutex::new(None),
        connections: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        bodies: Mutex::new(Vec::new()),
    });
    let s = Arc::clone(&server);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            s.connections.fetch_add(1, Ordering::Relaxed);
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let s = Arc::clone(&s);
                    async move {
                        s.requests.fetch_add(1, Ordering::Relaxed);
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        if let Ok(v) = serde_json::from_slice(&body) {
                            s.bodies.lock().push(v);
                        }
                        let status = s.status.load(Ordering::Relaxed);
                        if status == 0 {
                            std::future::pending::<()>().await;
                        }
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
                        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                        if let Some(ra) = s.retry_after.lock().clone() {
                            resp.headers_mut()
                                .insert("retry-after", ra.parse().unwrap());
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    server
}

fn carrier(addr: SocketAddr) -> HttpCarrier {
    HttpCarrier::new(&HttpConfig {
        url: format!("http://{addr}/v1/messages"),
        authorization: "Bearer test".into(),
        ..HttpConfig::default()
    })
    .unwrap()
}

fn msg(n: u64) -> CarrierMessage {
    CarrierMessage {
        tenant: TenantId(0),
        id: support::id(n),
        channel: Channel::Voice,
        to: "+14255551234".into(),
        dial_plan: DialPlan::Tones("5678".into()),
        purpose: watchword_engine::delivery::MessagePurpose::Code,
        sender: "+15550100001".into(),
        text: "Your code is 1, 2, 3".into(),
        token: ReceiptToken(n),
    }
}

#[tokio::test]
async fn status_codes_map_to_outcomes_and_retry_after_is_honoured() {
    let server = serve().await;
    let c = carrier(server.addr);
    let receipts = Receipts::discard();
    assert_eq!(c.send(msg(1), &receipts).await, SendOutcome::Accepted);
    let body = server.bodies.lock()[0].clone();
    assert_eq!(body["to"], "+14255551234");
    assert_eq!(body["channel"], "voice");
    assert_eq!(body["dial_plan"], "tones");
    assert_eq!(body["extension"], "5678");
    assert_eq!(body["from"], "+15550100001");

    server.status.store(429, Ordering::Relaxed);
    *server.retry_after.lock() = Some("7".into());
    assert_eq!(
        c.send(msg(2), &receipts).await,
        SendOutcome::Throttled {
            retry_after: Duration::from_secs(7)
        }
    );
    *server.retry_after.lock() = None;
    assert_eq!(
        c.send(msg(3), &receipts).await,
        SendOutcome::Throttled {
            retry_after: Duration::from_secs(1)
        }
    );
    server.status.store(400, Ordering::Relaxed);
    assert!(
        matches!(c.send(msg(4), &receipts).await, SendOutcome::Rejected { reason } if reason.contains("400"))
    );
    server.status.store(503, Ordering::Relaxed);
    assert!(
        matches!(c.send(msg(5), &receipts).await, SendOutcome::Failed { reason } if reason.contains("503"))
    );
    server.status.store(204, Ordering::Relaxed);
    assert_eq!(c.send(msg(6), &receipts).await, SendOutcome::Accepted);
}

#[tokio::test]
async fn sequential_sends_reuse_one_kept_alive_connection() {
    let server = serve().await;
    let c = carrier(server.addr);
    let got = Arc::new(AtomicU64::new(0));
    let g = Arc::clone(&got);
    let receipts = Receipts::from_fn(move |_, r| {
        assert_eq!(r, Receipt::Delivered);
        g.fetch_add(1, Ordering::Relaxed);
    });
    for n in 0..20 {
        assert_eq!(c.send(msg(n), &receipts).await, SendOutcome::Accepted);
    }
    assert_eq!(server.requests.load(Ordering::Relaxed), 20);
    assert_eq!(
        server.connections.load(Ordering::Relaxed),
        1,
        "keep-alive pool reused the connection"
    );
    assert_eq!(got.load(Ordering::Relaxed), 20, "a 2xx counts as delivered");
}

#[tokio::test]
async fn a_closed_port_is_a_transient_failure() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let c = carrier(addr);
    let out = c.send(msg(1), &Receipts::discard()).await;
    assert!(
        matches!(out, SendOutcome::Failed { ref reason } if reason.contains("connect")),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_and_the_router_fails_over() {
    let silent = serve().await;
    silent.status.store(0, Ordering::Relaxed);
    let good = serve().await;
    let http = |name: &str, priority: u8, addr: SocketAddr| CarrierConfig {
        name: name.into(),
        kind: CarrierKind::Http,
        priority,
        timeout_ms: 300,
        http: HttpConfig {
            url: format!("http://{addr}/send"),
            ..HttpConfig::default()
        },
        ..CarrierConfig::default()
    };
    let mut cfg = RouterConfig {
        carriers: vec![http("silent", 0, silent.addr), http("good", 1, good.addr)],
        ..RouterConfig::default()
    };
    cfg.limits.destination = Limit::new(0, 1);
    cfg.retry.base_backoff_ms = 10;
    let ledger = TestLedger::new();
    let router = Router::start(cfg, ledger.clone(), ManualClock::new(0)).unwrap();
    assert!(
        router.outbox_subscribe().is_none(),
        "no simulated carrier, no outbox"
    );
    let t = TenantDelivery::default();
    let ids: Vec<ChallengeId> = (1..=3)
        .map(|n| {
            let id = ledger.add(n, Duration::from_secs(300));
            router.try_reserve().unwrap().send(DeliveryJob {
                tenant: TenantId(0),
                id,
                slot_hint: SlotHint::NONE,
                channel: Channel::Sms,
                destination: normalize(Channel::Sms, "+1 425 555 1234", &t).unwrap(),
                code: Code::from_parts(123456, 6).unwrap(),
                expires_at_ms: u64::MAX,
                locale: "fr".into(),
                service_name: "Acme".into(),
                avoid_carrier: CarrierSlot::NONE,
                operator_assistance: false,
                purpose: watchword_engine::delivery::MessagePurpose::Code,
            });
            id
        })
        .collect();
    router.drain(Duration::from_secs(10)).await;
    for id in ids {
        let (state, carrier, _) = ledger.last(id).unwrap();
        assert_eq!(state, DeliveryState::Delivered);
        assert_eq!(carrier, "good");
    }
    assert_eq!(silent.requests.load(Ordering::Relaxed), 3);
    let bodies = good.bodies.lock();
    assert_eq!(bodies.len(), 3);
    let text = bodies[0]["text"].as_str().unwrap();
    assert!(text.starts_with("123456 est votre code"), "{text}");
    assert!(["97671", "69829", "51789", "99399"].contains(&bodies[0]["from"].as_str().unwrap()));
    assert_eq!(router.stats().delivered, 3);
}
