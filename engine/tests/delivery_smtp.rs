//! The SMTP carrier against a real SMTP server: `tests/smtp/server.py`
//! (Python's aiosmtpd under /usr/bin/python3), started by each test on
//! 127.0.0.1 on a free port, storing every message it accepts as JSON for the
//! test to read back, and answering 550 / 451 / 421 / "too many" by the
//! recipient's local part (or every recipient with `--refuse`).
//!
//! Covered: a code e-mailed through the router in English and French (the
//! subject localized, the code in the plain and the HTML part, the HTML
//! escaped, Message-ID and Date set); the reply codes' outcomes; a 4xx
//! failing over to a second carrier and a 550 not; STARTTLS with AUTH and a
//! trusted `ca_file`, an untrusted or misnamed certificate, a server without
//! STARTTLS, a wrong password, implicit TLS; the server killed in the middle
//! of a send and brought back (the pool recovers); one connection reused for
//! sequential sends; the configuration's checks.
//!
//! A test that needs aiosmtpd and does not find it says so and passes,
//! except in CI (`CI` set), where that is a failure. Every server is killed
//! by its pid when its test ends, also on panic (a Drop guard). Nothing here
//! asserts on how long something took, and nothing leaves the loopback
//! address.

#[path = "smtp_support.rs"]
mod smtp_support;
#[path = "delivery_support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use smtp_support::{SmtpServer, aiosmtpd_present};
use support::TestLedger;
use watchword_engine::delivery::{
    Carrier, CarrierConfig, CarrierKind, CarrierMessage, CarrierSlot, DeliveryJob, DialPlan, Limit,
    MessagePurpose, Receipt, ReceiptToken, Receipts, Router, RouterConfig, SendOutcome, SlotHint,
    SmtpCarrier, SmtpConfig, SmtpTls, TenantDelivery, normalize,
};
use watchword_engine::{Channel, Code, DeliveryState, ManualClock, TenantId};

const PASSWORD: &str = "s3cret-smtp-pw";

// ---------------------------------------------------------------- certificates

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
    fn pem_file(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }

    /// A server certificate for `names` and its key, as PEM files.
    fn leaf_files(&self, dir: &Path, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "mail server");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &*self.issuer).unwrap();
        let (c, k) = (dir.join("server-cert.pem"), dir.join("server-key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

// ---------------------------------------------------------------- helpers

fn smtp(port: u16, tls: SmtpTls) -> SmtpConfig {
    SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        tls,
        from: "Watchword <codes@watchword.test>".into(),
        helo_name: "watchword.test".into(),
        ..SmtpConfig::default()
    }
}

fn carrier(cfg: &SmtpConfig) -> SmtpCarrier {
    SmtpCarrier::new(cfg).unwrap()
}

const CODE: &str = "918273";

fn msg(to: &str) -> CarrierMessage {
    CarrierMessage {
        tenant: TenantId(0),
        id: support::id(1),
        channel: Channel::Email,
        to: to.into(),
        dial_plan: DialPlan::Direct,
        purpose: MessagePurpose::Code,
        sender: "codes@watchword.test".into(),
        text: format!(
            "Subject: Your Acme verification code\n\nYour Acme verification code is {CODE}.\n\
             It expires in 5 minutes.\n"
        ),
        token: ReceiptToken(1),
    }
}

/// The reason of a send that did not go, checked to hold nothing it must not.
fn reason_of(out: &SendOutcome) -> String {
    let reason = match out {
        SendOutcome::Failed { reason } | SendOutcome::Rejected { reason } => reason.clone(),
        other => panic!("expected a failure or a rejection, got {other:?}"),
    };
    for secret in [
        CODE,
        "@example.com",
        "jane",
        "fail",
        "rate",
        "slow",
        PASSWORD,
    ] {
        assert!(!reason.contains(secret), "{secret} leaked in {reason:?}");
    }
    reason
}

fn failed(out: SendOutcome) -> String {
    assert!(matches!(out, SendOutcome::Failed { .. }), "{out:?}");
    reason_of(&out)
}

fn smtp_carrier(name: &str, priority: u8, cfg: SmtpConfig) -> CarrierConfig {
    CarrierConfig {
        name: name.into(),
        kind: CarrierKind::Smtp,
        channels: vec![Channel::Email],
        priority,
        timeout_ms: 10_000,
        smtp: cfg,
        ..CarrierConfig::default()
    }
}

fn router_config(carriers: Vec<CarrierConfig>) -> RouterConfig {
    let mut cfg = RouterConfig {
        carriers,
        ..RouterConfig::default()
    };
    cfg.limits.destination = Limit::new(0, 1);
    cfg.limits.subject = Limit::new(0, 1);
    cfg.retry.max_tries = 3;
    cfg.retry.base_backoff_ms = 10;
    cfg
}

fn job(id: watchword_engine::ChallengeId, to: &str, locale: &str, service: &str) -> DeliveryJob {
    DeliveryJob {
        tenant: TenantId(0),
        id,
        slot_hint: SlotHint::NONE,
        channel: Channel::Email,
        destination: normalize(Channel::Email, to, &TenantDelivery::default()).unwrap(),
        code: Code::from_parts(918_273, 6).unwrap(),
        expires_at_ms: 300_000,
        locale: locale.into(),
        service_name: service.into(),
        avoid_carrier: CarrierSlot::NONE,
        operator_assistance: false,
        purpose: MessagePurpose::Code,
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn a_code_reaches_the_mailbox_with_a_localized_subject_in_both_parts() {
    if !aiosmtpd_present() {
        return;
    }
    let server = SmtpServer::start(&[]);
    let cfg = router_config(vec![smtp_carrier(
        "mail",
        0,
        smtp(server.port, SmtpTls::None),
    )]);
    let ledger = TestLedger::new();
    let router = Router::start(cfg, ledger.clone(), ManualClock::new(0)).unwrap();
    let en = ledger.add(1, Duration::from_secs(300));
    let fr = ledger.add(2, Duration::from_secs(300));
    let service = "Acme <R&D>";
    router
        .try_reserve()
        .unwrap()
        .send(job(en, "jane@example.com", "en-US", service));
    router
        .try_reserve()
        .unwrap()
        .send(job(fr, "Jean@Example.COM", "fr-CA", service));
    router.drain(Duration::from_secs(20)).await;
    for id in [en, fr] {
        let (state, carrier, _) = ledger.last(id).unwrap();
        assert_eq!(
            (state, carrier.as_str()),
            (DeliveryState::Delivered, "mail")
        );
    }

    let m = server.message_to("jane@example.com");
    assert_eq!(m["subject"], "Your Acme <R&D> verification code");
    assert_eq!(m["content_type"], "multipart/alternative");
    assert_eq!(m["from"], "Watchword <codes@watchword.test>");
    assert_eq!(m["mail_from"], "codes@watchword.test");
    assert_eq!(m["to"], "jane@example.com");
    let plain = m["plain"].as_str().unwrap();
    assert!(
        plain.contains("Your Acme <R&D> verification code is 918273."),
        "{plain}"
    );
    assert!(!plain.contains("Subject:"), "{plain}");
    let html = m["html"].as_str().unwrap();
    assert!(
        html.contains("<p>Your Acme &lt;R&amp;D&gt; verification code is 918273.</p>"),
        "{html}"
    );
    assert!(!html.contains("<R&D>"), "{html}");
    let mid = m["message_id"].as_str().unwrap();
    assert!(
        mid.starts_with('<') && mid.ends_with("@watchword.test>"),
        "{mid}"
    );
    assert_ne!(m["date"], "None");

    // The French one: the address as normalized (domain lower-cased).
    let m = server.message_to("Jean@example.com");
    assert_eq!(m["subject"], "Votre code de vérification Acme <R&D>");
    assert!(
        m["plain"]
            .as_str()
            .unwrap()
            .contains("Votre code de vérification Acme <R&D> est 918273."),
        "{m}"
    );
    assert!(
        m["html"]
            .as_str()
            .unwrap()
            .contains("Votre code de vérification Acme &lt;R&amp;D&gt; est 918273."),
        "{m}"
    );
    assert_ne!(
        m["message_id"],
        server.message_to("jane@example.com")["message_id"]
    );
}

#[tokio::test]
async fn replies_map_to_rejected_failed_and_throttled_and_receipts_say_delivered() {
    if !aiosmtpd_present() {
        return;
    }
    let server = SmtpServer::start(&[]);
    let c = carrier(&smtp(server.port, SmtpTls::None));
    let receipts = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink = {
        let r = Arc::clone(&receipts);
        Receipts::from_fn(move |t, rc| r.lock().push((t, rc)))
    };
    assert_eq!(
        c.send(msg("jane@example.com"), &sink).await,
        SendOutcome::Accepted
    );
    assert_eq!(
        *receipts.lock(),
        vec![(ReceiptToken(1), Receipt::Delivered)],
        "a 250 after DATA is reported delivered"
    );

    let out = c.send(msg("fail550@example.com"), &sink).await;
    assert!(matches!(out, SendOutcome::Rejected { .. }), "{out:?}");
    assert_eq!(
        reason_of(&out),
        "the mail server refused the message (550 5.1.1)"
    );
    assert_eq!(
        failed(c.send(msg("fail451@example.com"), &sink).await),
        "the mail server answered 451 4.3.0 (transient)"
    );
    assert_eq!(
        failed(c.send(msg("fail421@example.com"), &sink).await),
        "the mail server answered 421 4.3.2 (transient)"
    );
    for to in ["rate421@example.com", "rate451@example.com"] {
        assert_eq!(
            c.send(msg(to), &sink).await,
            SendOutcome::Throttled {
                retry_after: watchword_engine::delivery::smtp::THROTTLE_RETRY_AFTER
            },
            "{to}"
        );
    }
    assert_eq!(receipts.lock().len(), 1, "no receipt for what did not go");
    // Each failure dropped its connection; the next send opens another.
    assert_eq!(
        c.send(msg("again@example.com"), &sink).await,
        SendOutcome::Accepted
    );
    assert_eq!(server.messages().len(), 2);
}

#[tokio::test]
async fn sequential_sends_reuse_one_pooled_connection() {
    if !aiosmtpd_present() {
        return;
    }
    let server = SmtpServer::start(&[]);
    let c = carrier(&smtp(server.port, SmtpTls::None));
    for n in 0..6 {
        let to = format!("user{n}@example.com");
        assert_eq!(
            c.send(msg(&to), &Receipts::discard()).await,
            SendOutcome::Accepted
        );
    }
    let ports: std::collections::HashSet<u64> = server
        .messages()
        .iter()
        .map(|m| m["peer_port"].as_u64().unwrap())
        .collect();
    assert_eq!(server.messages().len(), 6);
    assert_eq!(ports.len(), 1, "one connection: {ports:?}");
}

#[tokio::test]
async fn a_send_that_times_out_or_is_dropped_closes_its_connection() {
    if !aiosmtpd_present() {
        return;
    }
    let server = SmtpServer::start(&[]);
    let c = carrier(&SmtpConfig {
        timeout_ms: 700,
        ..smtp(server.port, SmtpTls::None)
    });
    assert_eq!(
        c.send(msg("first@example.com"), &Receipts::discard()).await,
        SendOutcome::Accepted
    );
    // The server holds DATA: the carrier's own timeout ends the send.
    let reason = failed(c.send(msg("slow@example.com"), &Receipts::discard()).await);
    assert_eq!(reason, "timed out (no answer within smtp.timeout_ms)");
    // The router drops a send at its timeout: the same, from outside.
    let dropped = tokio::time::timeout(
        Duration::from_millis(300),
        c.send(msg("slow@example.com"), &Receipts::discard()),
    )
    .await;
    assert!(dropped.is_err());
    // Neither connection went back to the pool with a reply still owed: the
    // next message gets its own answer, on a new connection.
    assert_eq!(
        c.send(msg("next@example.com"), &Receipts::discard()).await,
        SendOutcome::Accepted
    );
    let first = server.message_to("first@example.com")["peer_port"].clone();
    let next = server.message_to("next@example.com")["peer_port"].clone();
    assert_ne!(first, next, "a new connection after the timeouts");
}

#[tokio::test]
async fn through_the_router_a_4xx_fails_over_to_the_second_carrier_and_a_550_does_not() {
    if !aiosmtpd_present() {
        return;
    }
    let busy = SmtpServer::start(&["--refuse", "451 4.3.0 Local error in processing"]);
    let refusing = SmtpServer::start(&["--refuse", "550 5.1.1 Mailbox unavailable"]);
    let good = SmtpServer::start(&[]);

    // 451 from the first carrier: failed over, delivered by the second.
    let cfg = router_config(vec![
        smtp_carrier("mail-a", 0, smtp(busy.port, SmtpTls::None)),
        smtp_carrier("mail-b", 1, smtp(good.port, SmtpTls::None)),
    ]);
    let ledger = TestLedger::new();
    let router = Router::start(cfg, ledger.clone(), ManualClock::new(0)).unwrap();
    let id = ledger.add(1, Duration::from_secs(300));
    router
        .try_reserve()
        .unwrap()
        .send(job(id, "jane@example.com", "en", "Acme"));
    router.drain(Duration::from_secs(20)).await;
    let (state, carrier, _) = ledger.last(id).unwrap();
    assert_eq!(
        (state, carrier.as_str()),
        (DeliveryState::Delivered, "mail-b")
    );
    assert!(
        good.message_to("jane@example.com")["plain"]
            .as_str()
            .unwrap()
            .contains("918273")
    );
    assert!(busy.messages().is_empty());

    // 550 from the first carrier: rejected for good, the second never tried.
    let cfg = router_config(vec![
        smtp_carrier("mail-a", 0, smtp(refusing.port, SmtpTls::None)),
        smtp_carrier("mail-b", 1, smtp(good.port, SmtpTls::None)),
    ]);
    let ledger = TestLedger::new();
    let router = Router::start(cfg, ledger.clone(), ManualClock::new(0)).unwrap();
    let id = ledger.add(2, Duration::from_secs(300));
    router
        .try_reserve()
        .unwrap()
        .send(job(id, "joe@example.com", "en", "Acme"));
    router.drain(Duration::from_secs(20)).await;
    let (state, carrier, reason) = ledger.last(id).unwrap();
    assert_eq!((state, carrier.as_str()), (DeliveryState::Failed, "mail-a"));
    let reason = reason.unwrap();
    assert!(
        reason.contains("mail-a: rejected: the mail server refused the message (550 5.1.1)"),
        "{reason}"
    );
    assert!(
        !reason.contains("joe") && !reason.contains("918273"),
        "{reason}"
    );
    assert_eq!(good.messages().len(), 1, "nothing more reached mail-b");
}

#[tokio::test]
async fn starttls_with_auth_and_a_trusted_ca_file_delivers() {
    if !aiosmtpd_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Mail Test CA");
    let (cert, key) = ca.leaf_files(dir.path(), &["127.0.0.1", "localhost"]);
    let auth = format!("watchword:{PASSWORD}");
    let server = SmtpServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--require-starttls",
        "--auth",
        &auth,
    ]);
    let ca_file = ca.pem_file(dir.path(), "ca.pem");
    let mut cfg = SmtpConfig {
        username: "watchword".into(),
        password: PASSWORD.into(),
        ca_file: ca_file.to_str().unwrap().into(),
        ..smtp(server.port, SmtpTls::Starttls)
    };
    assert_eq!(
        carrier(&cfg)
            .send(msg("jane@example.com"), &Receipts::discard())
            .await,
        SendOutcome::Accepted
    );
    let m = server.message_to("jane@example.com");
    assert_eq!(m["tls"], "starttls");
    assert_eq!(m["auth_login"], "watchword");
    assert!(m["html"].as_str().unwrap().contains("918273"));

    // The wrong password: the carrier is wrong, not the address (fails over).
    cfg.password = "not-the-password".into();
    let reason = failed(
        carrier(&cfg)
            .send(msg("joe@example.com"), &Receipts::discard())
            .await,
    );
    assert!(
        reason.starts_with("the mail server refused the login (535"),
        "{reason}"
    );
    assert!(!reason.contains("not-the-password"), "{reason}");
}

#[tokio::test]
async fn an_untrusted_or_misnamed_certificate_fails_with_a_clear_reason() {
    if !aiosmtpd_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Mail Test CA");
    let stranger = Ca::new("Stranger CA");
    let (cert, key) = ca.leaf_files(dir.path(), &["mail.example.net"]);
    let server = SmtpServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--require-starttls",
    ]);
    let with_ca = |ca: &Ca, name: &str| SmtpConfig {
        ca_file: ca.pem_file(dir.path(), name).to_str().unwrap().into(),
        username: "watchword".into(),
        password: PASSWORD.into(),
        ..smtp(server.port, SmtpTls::Starttls)
    };
    let reason = failed(
        carrier(&with_ca(&stranger, "stranger.pem"))
            .send(msg("jane@example.com"), &Receipts::discard())
            .await,
    );
    assert_eq!(reason, "tls: certificate not trusted (UnknownIssuer)");
    let reason = failed(
        carrier(&with_ca(&ca, "ca.pem"))
            .send(msg("jane@example.com"), &Receipts::discard())
            .await,
    );
    assert!(reason.starts_with("tls: hostname mismatch"), "{reason}");
    // The system's store does not know the test CA either.
    match SmtpCarrier::new(&SmtpConfig {
        ca_file: String::new(),
        ..with_ca(&ca, "ca2.pem")
    }) {
        Ok(c) => {
            let reason = failed(c.send(msg("jane@example.com"), &Receipts::discard()).await);
            assert_eq!(reason, "tls: certificate not trusted (UnknownIssuer)");
        }
        Err(e) => assert!(e.0.contains("trust store has none"), "{e}"),
    }
    assert!(server.messages().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn starttls_is_required_and_implicit_tls_delivers() {
    if !aiosmtpd_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Mail Test CA");
    let ca_file = ca.pem_file(dir.path(), "ca.pem");
    let ca_file = ca_file.to_str().unwrap();
    // A server that offers no STARTTLS: never a silent downgrade.
    let plain = SmtpServer::start(&[]);
    let reason = failed(
        carrier(&SmtpConfig {
            ca_file: ca_file.into(),
            ..smtp(plain.port, SmtpTls::Starttls)
        })
        .send(msg("jane@example.com"), &Receipts::discard())
        .await,
    );
    assert_eq!(
        reason,
        "the mail server does not offer STARTTLS (tls = \"starttls\" requires it)"
    );
    assert!(plain.messages().is_empty());

    // Implicit TLS (port 465 style).
    let (cert, key) = ca.leaf_files(dir.path(), &["127.0.0.1"]);
    let implicit = SmtpServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--implicit-tls",
    ]);
    let c = carrier(&SmtpConfig {
        ca_file: ca_file.into(),
        ..smtp(implicit.port, SmtpTls::Tls)
    });
    assert_eq!(
        c.send(msg("jane@example.com"), &Receipts::discard()).await,
        SendOutcome::Accepted
    );
    assert_eq!(implicit.message_to("jane@example.com")["tls"], "implicit");
}

#[tokio::test]
async fn a_server_killed_mid_send_fails_and_the_pool_recovers_when_it_returns() {
    if !aiosmtpd_present() {
        return;
    }
    let mut server = SmtpServer::start(&[]);
    let c = Arc::new(carrier(&smtp(server.port, SmtpTls::None)));
    assert_eq!(
        c.send(msg("first@example.com"), &Receipts::discard()).await,
        SendOutcome::Accepted
    );
    // A send the server holds at DATA (its pooled connection reused), then
    // the server dies under it.
    let sent = Arc::new(AtomicU64::new(0));
    let slow = {
        let (c, sent) = (Arc::clone(&c), Arc::clone(&sent));
        tokio::spawn(async move {
            sent.store(1, Ordering::SeqCst);
            c.send(msg("slow@example.com"), &Receipts::discard()).await
        })
    };
    while sent.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill();
    let reason = failed(slow.await.unwrap());
    assert!(
        reason == "the mail server closed the connection"
            || reason.starts_with("the mail server connection failed"),
        "{reason}"
    );
    // While it is down: refused connections, said so.
    let reason = failed(c.send(msg("down@example.com"), &Receipts::discard()).await);
    assert_eq!(
        reason,
        "could not connect to the mail server (ConnectionRefused)"
    );
    // Back on the same port: the same carrier sends again.
    server.restart();
    assert_eq!(
        c.send(msg("back@example.com"), &Receipts::discard()).await,
        SendOutcome::Accepted
    );
    assert_eq!(server.message_to("back@example.com")["tls"], "none");
}

#[test]
fn the_configuration_names_the_smtp_field() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Mail Test CA");
    let good_ca = ca.pem_file(dir.path(), "ca.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    let check = |f: &dyn Fn(&mut CarrierConfig)| {
        let mut c = smtp_carrier(
            "mail",
            0,
            SmtpConfig {
                host: "smtp.example.net".into(),
                ..SmtpConfig::default()
            },
        );
        c.senders = vec!["codes@example.net".into()];
        f(&mut c);
        router_config(vec![c]).validate().map_err(|e| e.0)
    };
    assert_eq!(check(&|_| {}), Ok(()));
    let at = "carriers[0] (mail).";
    let want = |f: &dyn Fn(&mut CarrierConfig), field: &str, why: &str| {
        let e = check(f).unwrap_err();
        assert!(
            e.starts_with(&format!("{at}{field}: ")) && e.contains(why),
            "want {field}: {why}, got {e}"
        );
        assert!(!e.contains(PASSWORD), "{e}");
    };
    want(&|c| c.smtp.host.clear(), "smtp.host", "must be set");
    want(
        &|c| c.smtp.host = "smtp://mail.example.net:587".into(),
        "smtp.host",
        "no scheme, no port",
    );
    want(&|c| c.smtp.port = 0, "smtp.port", "1..=65535");
    want(
        &|c| c.channels = Channel::ALL.to_vec(),
        "channels",
        "e-mail only",
    );
    want(
        &|c| c.smtp.password = PASSWORD.into(),
        "smtp.username",
        "with smtp.password",
    );
    want(
        &|c| c.smtp.username = "u".into(),
        "smtp.password",
        "with smtp.username",
    );
    want(&|c| c.smtp.pool_size = 0, "smtp.pool_size", "at least 1");
    want(&|c| c.smtp.timeout_ms = 0, "smtp.timeout_ms", "positive");
    want(
        &|c| c.smtp.from = "not an address".into(),
        "smtp.from",
        "not a mailbox",
    );
    want(
        &|c| c.senders = vec!["Watchword".into()],
        "senders",
        "set smtp.from",
    );
    assert_eq!(
        check(&|c| {
            c.senders = vec!["Watchword".into()];
            c.smtp.from = "Acme <codes@acme.example>".into();
        }),
        Ok(())
    );
    want(
        &|c| c.smtp.helo_name = "bad name".into(),
        "smtp.helo_name",
        "not a domain name",
    );
    want(
        &|c| {
            c.smtp.tls = SmtpTls::None;
            c.smtp.ca_file = good_ca.to_str().unwrap().into();
        },
        "smtp.ca_file",
        "only with tls",
    );
    want(
        &|c| c.smtp.ca_file = empty.to_str().unwrap().into(),
        "smtp.ca_file",
        "holds no PEM certificate",
    );
    assert_eq!(
        check(&|c| c.smtp.ca_file = good_ca.to_str().unwrap().into()),
        Ok(())
    );

    // As written in a file: the block, its defaults and the tls names.
    let cfg: CarrierConfig = serde_json::from_value(serde_json::json!({
        "name": "mail",
        "kind": "smtp",
        "channels": ["email"],
        "smtp": {"host": "smtp.example.net", "tls": "tls", "port": 465},
    }))
    .unwrap();
    assert_eq!(cfg.kind, CarrierKind::Smtp);
    assert_eq!((cfg.smtp.tls, cfg.smtp.port), (SmtpTls::Tls, 465));
    assert_eq!(SmtpConfig::default().port, 587);
    assert_eq!(SmtpConfig::default().tls, SmtpTls::Starttls);
}
