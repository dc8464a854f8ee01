//! The HTTP carrier over TLS, against a real HTTPS server started by each test
//! on 127.0.0.1 (tokio-rustls under hyper), with certificates each test makes
//! with rcgen: a CA trusted through `ca_file`, a CA nobody trusts, a
//! certificate for another name, an expired one, keep-alive of one TLS
//! connection, the failure reason as far as the router's ledger, and the
//! configuration's checks of `ca_file`.
//!
//! Real sockets and real time; nothing here asserts on how long something
//! took, and nothing leaves the loopback address.

#[path = "delivery_support.rs"]
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::TestLedger;
use watchword_engine::delivery::{
    Carrier, CarrierConfig, CarrierKind, CarrierMessage, CarrierSlot, DeliveryJob, DialPlan,
    HttpCarrier, HttpConfig, Limit, MessagePurpose, ReceiptToken, Receipts, Router, RouterConfig,
    SendOutcome, SlotHint, TenantDelivery, normalize,
};
use watchword_engine::{Channel, Code, DeliveryState, ManualClock, TenantId};

/// A certificate authority the test controls.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// The CA's certificate as a PEM file.
    fn pem_file(&self, dir: &tempfile::TempDir, name: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }

    /// A server certificate for `names`, valid now unless `expired`.
    fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "carrier");
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &*self.issuer).unwrap();
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// A server's certificate chain and key.
struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// A loopback HTTPS server answering 200 to every request, counting TCP
/// connections, finished handshakes and requests, and keeping the bodies.
struct Server {
    addr: SocketAddr,
    connections: AtomicU64,
    handshakes: AtomicU64,
    requests: AtomicU64,
    bodies: Mutex<Vec<serde_json::Value>>,
    authorization: Mutex<Vec<String>>,
}

async fn serve_tls(leaf: Leaf) -> Arc<Server> {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(leaf.chain, leaf.key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Arc::new(Server {
        addr: listener.local_addr().unwrap(),
        connections: AtomicU64::new(0),
        handshakes: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        bodies: Mutex::new(Vec::new()),
        authorization: Mutex::new(Vec::new()),
    });
    let s = Arc::clone(&server);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            s.connections.fetch_add(1, Ordering::Relaxed);
            let s = Arc::clone(&s);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return; // the client refused our certificate
                };
                s.handshakes.fetch_add(1, Ordering::Relaxed);
                let svc = service_fn(move |req: Request<Incoming>| {
                    let s = Arc::clone(&s);
                    async move {
                        s.requests.fetch_add(1, Ordering::Relaxed);
                        if let Some(a) = req.headers().get("authorization") {
                            s.authorization
                                .lock()
                                .push(a.to_str().unwrap_or_default().to_owned());
                        }
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        if let Ok(v) = serde_json::from_slice(&body) {
                            s.bodies.lock().push(v);
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    server
}

fn carrier(url: String, ca_file: &std::path::Path) -> HttpCarrier {
    HttpCarrier::new(&HttpConfig {
        url,
        authorization: "Bearer test-token".into(),
        ca_file: ca_file.to_str().unwrap().into(),
        ..HttpConfig::default()
    })
    .unwrap()
}

fn msg(n: u64) -> CarrierMessage {
    CarrierMessage {
        tenant: TenantId(0),
        id: support::id(n),
        channel: Channel::Sms,
        to: "+14255551234".into(),
        dial_plan: DialPlan::Direct,
        purpose: MessagePurpose::Code,
        sender: "+15550100001".into(),
        text: "Your code is 918273".into(),
        token: ReceiptToken(n),
    }
}

/// The reason of a failed send, checked to hold nothing it must not.
fn failure(out: SendOutcome) -> String {
    let SendOutcome::Failed { reason } = out else {
        panic!("expected a failure, got {out:?}");
    };
    for secret in [
        "4255551234",
        "918273",
        "s3cret",
        "test-token",
        "/v1/messages",
    ] {
        assert!(!reason.contains(secret), "{secret} leaked in {reason:?}");
    }
    reason
}

#[tokio::test]
async fn a_carrier_trusting_its_ca_file_delivers_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Carrier Test CA");
    let server = serve_tls(ca.leaf(&["127.0.0.1", "localhost"], false)).await;
    let ca_file = ca.pem_file(&dir, "ca.pem");
    for host in ["127.0.0.1".to_owned(), "localhost".to_owned()] {
        let url = format!("https://{host}:{}/v1/messages", server.addr.port());
        let c = carrier(url, &ca_file);
        assert_eq!(
            c.send(msg(1), &Receipts::discard()).await,
            SendOutcome::Accepted
        );
    }
    let bodies = server.bodies.lock();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["to"], "+14255551234");
    assert_eq!(bodies[0]["channel"], "sms");
    assert_eq!(bodies[0]["text"], "Your code is 918273");
    assert_eq!(bodies[0]["purpose"], "code");
    assert_eq!(server.authorization.lock()[0], "Bearer test-token");
}

#[tokio::test]
async fn a_certificate_from_a_ca_not_in_the_ca_file_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = Ca::new("Trusted CA");
    let other = Ca::new("Other CA");
    let server = serve_tls(other.leaf(&["127.0.0.1"], false)).await;
    let url = format!("https://user:s3cret@{}/v1/messages", server.addr);
    let c = carrier(url, &trusted.pem_file(&dir, "ca.pem"));
    let reason = failure(c.send(msg(1), &Receipts::discard()).await);
    assert_eq!(reason, "tls: certificate not trusted (UnknownIssuer)");
    assert_eq!(server.requests.load(Ordering::Relaxed), 0, "nothing sent");
    assert!(server.bodies.lock().is_empty());
}

#[tokio::test]
async fn the_system_store_does_not_trust_a_private_ca() {
    let ca = Ca::new("Private CA");
    let server = serve_tls(ca.leaf(&["127.0.0.1"], false)).await;
    let cfg = HttpConfig {
        url: format!("https://{}/v1/messages", server.addr),
        ..HttpConfig::default()
    };
    match HttpCarrier::new(&cfg) {
        Ok(c) => {
            let reason = failure(c.send(msg(1), &Receipts::discard()).await);
            assert_eq!(reason, "tls: certificate not trusted (UnknownIssuer)");
        }
        // A machine without a system trust store: refused at start, clearly.
        Err(e) => assert!(e.0.contains("trust store has none"), "{e}"),
    }
    assert_eq!(server.requests.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_hostname_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Carrier Test CA");
    let server = serve_tls(ca.leaf(&["sms.carrier.example"], false)).await;
    let ca_file = ca.pem_file(&dir, "ca.pem");
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("https://{host}:{}/v1/messages", server.addr.port());
        let reason = failure(
            carrier(url, &ca_file)
                .send(msg(1), &Receipts::discard())
                .await,
        );
        assert!(reason.starts_with("tls: hostname mismatch"), "{reason}");
        assert!(!reason.contains(host), "{reason}");
    }
    assert_eq!(server.requests.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Carrier Test CA");
    let server = serve_tls(ca.leaf(&["127.0.0.1"], true)).await;
    let url = format!("https://{}/v1/messages", server.addr);
    let c = carrier(url, &ca.pem_file(&dir, "ca.pem"));
    let reason = failure(c.send(msg(1), &Receipts::discard()).await);
    assert_eq!(reason, "tls: certificate expired");
}

#[tokio::test]
async fn sequential_https_sends_reuse_one_tls_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Carrier Test CA");
    let server = serve_tls(ca.leaf(&["127.0.0.1"], false)).await;
    let url = format!("https://{}/v1/messages", server.addr);
    let c = carrier(url, &ca.pem_file(&dir, "ca.pem"));
    for n in 0..5 {
        assert_eq!(
            c.send(msg(n), &Receipts::discard()).await,
            SendOutcome::Accepted
        );
    }
    assert_eq!(server.requests.load(Ordering::Relaxed), 5);
    assert_eq!(
        server.connections.load(Ordering::Relaxed),
        1,
        "one TCP connection"
    );
    assert_eq!(
        server.handshakes.load(Ordering::Relaxed),
        1,
        "one TLS handshake"
    );
}

#[tokio::test]
async fn a_tls_failure_reaches_the_ledger_as_the_reason_and_the_router_fails_over() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Carrier Test CA");
    let stranger = Ca::new("Stranger CA");
    let ca_file = ca.pem_file(&dir, "ca.pem");
    let bad = serve_tls(stranger.leaf(&["127.0.0.1"], false)).await;
    let good = serve_tls(ca.leaf(&["127.0.0.1"], false)).await;
    let https = |name: &str, priority: u8, addr: SocketAddr| CarrierConfig {
        name: name.into(),
        kind: CarrierKind::Http,
        priority,
        timeout_ms: 5_000,
        http: HttpConfig {
            url: format!("https://{addr}/send"),
            ca_file: ca_file.to_str().unwrap().into(),
            ..HttpConfig::default()
        },
        ..CarrierConfig::default()
    };
    let job = |id| DeliveryJob {
        tenant: TenantId(0),
        id,
        slot_hint: SlotHint::NONE,
        channel: Channel::Sms,
        destination: normalize(Channel::Sms, "+1 425 555 1234", &TenantDelivery::default())
            .unwrap(),
        code: Code::from_parts(123456, 6).unwrap(),
        expires_at_ms: u64::MAX,
        locale: "en".into(),
        service_name: "Acme".into(),
        avoid_carrier: CarrierSlot::NONE,
        operator_assistance: false,
        purpose: MessagePurpose::Code,
    };
    // Alone, the untrusted carrier fails the message with the TLS reason.
    let mut cfg = RouterConfig {
        carriers: vec![https("untrusted", 0, bad.addr)],
        ..RouterConfig::default()
    };
    cfg.limits.destination = Limit::new(0, 1);
    cfg.retry.max_tries = 2;
    cfg.retry.base_backoff_ms = 10;
    let ledger = TestLedger::new();
    let router = Router::start(cfg.clone(), ledger.clone(), ManualClock::new(0)).unwrap();
    let id = ledger.add(1, Duration::from_secs(300));
    router.try_reserve().unwrap().send(job(id));
    router.drain(Duration::from_secs(10)).await;
    let (state, _, reason) = ledger.last(id).unwrap();
    assert_eq!(state, DeliveryState::Failed);
    let reason = reason.unwrap();
    assert!(
        reason.contains("untrusted: tls: certificate not trusted (UnknownIssuer)"),
        "{reason}"
    );
    assert!(
        !reason.contains("4255551234") && !reason.contains("123456"),
        "{reason}"
    );

    // Beside a trusted one, the router fails over and the message arrives.
    cfg.carriers.push(https("trusted", 1, good.addr));
    let ledger = TestLedger::new();
    let router = Router::start(cfg, ledger.clone(), ManualClock::new(0)).unwrap();
    let id = ledger.add(2, Duration::from_secs(300));
    router.try_reserve().unwrap().send(job(id));
    router.drain(Duration::from_secs(10)).await;
    let (state, carrier, _) = ledger.last(id).unwrap();
    assert_eq!(
        (state, carrier.as_str()),
        (DeliveryState::Delivered, "trusted")
    );
    assert_eq!(good.bodies.lock().len(), 1);
    assert_eq!(bad.requests.load(Ordering::Relaxed), 0);
}

#[test]
fn the_configuration_checks_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Carrier Test CA");
    let good = ca.pem_file(&dir, "ca.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    let key_only = dir.path().join("key.pem");
    std::fs::write(&key_only, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.pem");
    let check = |url: &str, ca_file: &std::path::Path| {
        let cfg = RouterConfig {
            carriers: vec![CarrierConfig {
                name: "sms".into(),
                kind: CarrierKind::Http,
                http: HttpConfig {
                    url: url.into(),
                    ca_file: ca_file.to_str().unwrap().into(),
                    ..HttpConfig::default()
                },
                ..CarrierConfig::default()
            }],
            ..RouterConfig::default()
        };
        cfg.validate().map_err(|e| e.0)
    };
    let https = "https://sms.carrier.example/v1/messages";
    assert_eq!(check(https, &good), Ok(()));
    assert_eq!(check(https, std::path::Path::new("")), Ok(()));
    let e = check("http://sms.carrier.example/v1", &good).unwrap_err();
    assert!(
        e.starts_with("carriers[0] (sms).http.ca_file: only with an https:// url"),
        "{e}"
    );
    let e = check(https, &missing).unwrap_err();
    assert!(
        e.starts_with("carriers[0] (sms).http.ca_file: ") && e.contains("cannot read"),
        "{e}"
    );
    for no_cert in [&empty, &key_only] {
        let e = check(https, no_cert).unwrap_err();
        assert!(
            e.starts_with("carriers[0] (sms).http.ca_file: ")
                && e.contains("holds no PEM certificate"),
            "{e}"
        );
    }
    let e = check(https, &broken).unwrap_err();
    assert!(
        e.starts_with("carriers[0] (sms).http.ca_file: ") && e.contains("not a usable CA"),
        "{e}"
    );
    let e = check("ftp://sms.carrier.example/", std::path::Path::new("")).unwrap_err();
    assert_eq!(
        e,
        "carriers[0] (sms).http.url: must start with http:// or https://"
    );
}
