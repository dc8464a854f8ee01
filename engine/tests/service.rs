//! The engine facade end to end: issue through the default (simulated)
//! carriers, read the code where the person's phone would, verify it; and the
//! refusals an upstream system relies on (bad input, rate limits, shutdown).

use std::sync::Arc;
use std::time::Duration;

use watchword_engine::delivery::OutboxMessage;
use watchword_engine::{
    ChallengeState, Channel, DeliveryState, Engine, EngineConfig, EngineError, EventKind,
    IssueParams, MemorySink, SystemClock, TenantPolicy, VerifyOutcome,
};

fn params<'a>(subject: &'a str, destination: &'a str) -> IssueParams<'a> {
    IssueParams {
        subject,
        channel: Channel::Sms,
        destination,
        code_len: 0,
        ttl_s: 0,
        locale: "",
        client_ip: "203.0.113.9",
    }
}

fn engine() -> (Engine, Arc<MemorySink>) {
    let sink = Arc::new(MemorySink::default());
    let mut config = EngineConfig::default();
    config.tenants.push(TenantPolicy {
        name: "other".into(),
        default_country: "FR".into(),
        locale: "fr".into(),
        ..TenantPolicy::default()
    });
    let engine =
        Engine::start(config, SystemClock::shared(), sink.clone()).expect("default config");
    (engine, sink)
}

/// The code in a delivered SMS: the first run of `len` digits.
fn code_in(text: &str, len: usize) -> String {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() == len)
        .expect("a code in the text")
        .to_owned()
}

async fn next_for(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<OutboxMessage>>,
    id: watchword_engine::ChallengeId,
) -> Arc<OutboxMessage> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = rx.recv().await.expect("outbox open");
            if m.id == id {
                return m;
            }
        }
    })
    .await
    .expect("the message arrives")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_deliver_verify() {
    let (engine, sink) = engine();
    let demo = engine.tenant_id("demo").unwrap();
    let (mut outbox, _handsets) = engine.outbox_subscribe(demo).expect("simulated carriers");
    let issued = engine
        .issue(demo, &params("alice", "(425) 555-1234"))
        .unwrap();
    assert_eq!(issued.masked_destination.as_str(), "+14*******34");
    let msg = next_for(&mut outbox, issued.id).await;
    assert_eq!(msg.destination, "+14255551234");
    assert_eq!(msg.channel, Channel::Sms);
    let code = code_in(&msg.text, 6);
    assert!(!format!("{:?}", engine.status(demo, issued.id).unwrap()).contains(&code));
    assert_eq!(
        engine.verify(demo, issued.id, code.as_bytes()).unwrap(),
        VerifyOutcome::Approved
    );
    let status = engine.status(demo, issued.id).unwrap();
    assert_eq!(status.state, ChallengeState::Approved);
    assert!(status.delivery >= DeliveryState::Sent, "{status:?}");
    assert!(!status.carrier.is_empty());
    // The audit events never hold the code.
    for e in sink.events() {
        assert!(!format!("{e:?}").contains(&code));
    }
    assert_eq!(sink.count(EventKind::Approved), 1);
    // The request's client IP reaches the audit trail on the issued event only.
    let events = sink.events();
    let issued_ev = events.iter().find(|e| e.kind == EventKind::Issued).unwrap();
    assert_eq!(issued_ev.client_ip.as_deref(), Some("203.0.113.9"));
    assert!(
        events
            .iter()
            .filter(|e| e.kind != EventKind::Issued)
            .all(|e| e.client_ip.is_none())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_sends_the_same_code_and_the_sixth_send_is_rate_limited() {
    let (engine, _) = engine();
    let demo = engine.tenant_id("demo").unwrap();
    let (mut outbox, _handsets) = engine
        .outbox_subscribe(watchword_engine::TenantId(0))
        .unwrap();
    let issued = engine
        .issue(demo, &params("bob", "+1 425 555 0101"))
        .unwrap();
    let first = code_in(&next_for(&mut outbox, issued.id).await.text, 6);
    for left in (0..4).rev() {
        let r = engine.resend(demo, issued.id).unwrap();
        assert_eq!(r.sends_left, left);
        let again = code_in(&next_for(&mut outbox, issued.id).await.text, 6);
        assert_eq!(again, first);
    }
    match engine.resend(demo, issued.id) {
        Err(EngineError::RateLimited {
            retry_after_ms,
            message,
        }) => {
            assert!(retry_after_ms > 0 && retry_after_ms <= 300_000);
            assert!(message.contains("destination"), "{message}");
        }
        other => panic!("expected RATE_LIMITED, got {other:?}"),
    }
    // A new ISSUE to the same destination is limited too (five in five minutes).
    assert!(matches!(
        engine.issue(demo, &params("bob", "+1 425 555 0101")),
        Err(EngineError::RateLimited { .. })
    ));
    assert_eq!(
        engine.verify(demo, issued.id, first.as_bytes()).unwrap(),
        VerifyOutcome::Approved
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_and_stores_nothing() {
    let (engine, _) = engine();
    let demo = engine.tenant_id("demo").unwrap();
    let cases = [
        params("carol", "not a number"),
        params("carol", "+1 425"),
        IssueParams {
            channel: Channel::Email,
            ..params("carol", "carol@")
        },
        IssueParams {
            code_len: 3,
            ..params("carol", "+14255550102")
        },
        IssueParams {
            ttl_s: 4000,
            ..params("carol", "+14255550102")
        },
        params("", "+14255550102"),
    ];
    for p in cases {
        match engine.issue(demo, &p) {
            Err(EngineError::InvalidArgument(msg)) => {
                assert!(!msg.is_empty());
                assert!(!msg.contains("4255550102"), "{msg}");
            }
            other => panic!("expected INVALID_ARGUMENT for {p:?}, got {other:?}"),
        }
    }
    assert_eq!(engine.table().pending(), 0);
    assert!(matches!(
        engine.verify_subject(demo, "", b"123456"),
        Err(EngineError::InvalidArgument(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_use_their_own_defaults_and_cannot_see_each_other() {
    let (engine, _) = engine();
    let demo = engine.tenant_id("demo").unwrap();
    let other = engine.tenant_id("other").unwrap();
    let (mut outbox, _handsets) = engine
        .outbox_subscribe(watchword_engine::TenantId(0))
        .unwrap();
    // A French national number, with the tenant's default country.
    let issued = engine
        .issue(other, &params("dora", "04 25 55 51 23"))
        .unwrap();
    let msg = next_for(&mut outbox, issued.id).await;
    assert_eq!(msg.destination, "+33425555123");
    assert!(msg.text.contains("code"), "{}", msg.text);
    assert!(msg.text.contains("votre"), "French template: {}", msg.text);
    assert!(matches!(
        engine.status(demo, issued.id),
        Err(EngineError::NotFound)
    ));
    assert!(matches!(
        engine.cancel(demo, issued.id),
        Err(EngineError::NotFound)
    ));
    assert!(engine.cancel(other, issued.id).is_ok());
    assert_eq!(
        engine.status(other, issued.id).unwrap().state,
        ChallengeState::Cancelled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_issues_but_still_verifies() {
    let (engine, _) = engine();
    let demo = engine.tenant_id("demo").unwrap();
    let (mut outbox, _handsets) = engine
        .outbox_subscribe(watchword_engine::TenantId(0))
        .unwrap();
    let issued = engine.issue(demo, &params("erin", "+14255550103")).unwrap();
    let code = code_in(&next_for(&mut outbox, issued.id).await.text, 6);
    engine.begin_shutdown();
    assert!(matches!(
        engine.issue(demo, &params("erin2", "+14255550104")),
        Err(EngineError::ShuttingDown)
    ));
    engine.drain(Duration::from_secs(5)).await;
    assert_eq!(
        engine.verify(demo, issued.id, code.as_bytes()).unwrap(),
        VerifyOutcome::Approved
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_engine_configuration_names_the_field() {
    let mut config = EngineConfig::default();
    config.tenants.push(TenantPolicy::default());
    let err = Engine::start(
        config,
        SystemClock::shared(),
        Arc::new(MemorySink::default()),
    )
    .unwrap_err();
    assert!(err.starts_with("tenants[1].name"), "{err}");
    let config = EngineConfig {
        tenants: vec![TenantPolicy {
            default_country: "usa".into(),
            ..TenantPolicy::default()
        }],
        ..EngineConfig::default()
    };
    let err = Engine::start(
        config,
        SystemClock::shared(),
        Arc::new(MemorySink::default()),
    )
    .unwrap_err();
    assert!(err.starts_with("tenants[0].default_country"), "{err}");
}
