//! The router end to end through simulated carriers: admission limits, the
//! bounded intake, sender pools, dial plans, templates, outbox, accounting.
//!
//! Runs on paused tokio time; it must never depend on wall-clock timing.

#![allow(clippy::field_reassign_with_default)]

#[path = "delivery_support.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use support::TestLedger;
use watchword_engine::delivery::{
    CarrierConfig, CarrierSlot, DeliveryJob, Limit, Router, RouterConfig, SimulatedConfig,
    SlotHint, TenantDelivery, normalize,
};
use watchword_engine::{Channel, Code, DeliveryState, ManualClock, TenantId};

fn tenant() -> TenantDelivery {
    TenantDelivery::default()
}

fn job(id: watchword_engine::ChallengeId, ch: Channel, raw: &str) -> DeliveryJob {
    DeliveryJob {
        tenant: TenantId(0),
        id,
        slot_hint: SlotHint::NONE,
        channel: ch,
        destination: normalize(ch, raw, &tenant()).unwrap(),
        code: Code::from_parts(424242, 6).unwrap(),
        expires_at_ms: u64::MAX,
        locale: "en".into(),
        service_name: "Acme".into(),
        avoid_carrier: CarrierSlot::NONE,
        operator_assistance: false,
        purpose: watchword_engine::delivery::MessagePurpose::Code,
    }
}

async fn settle() {
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn default_profile_delivers_sms_from_a_us_short_code_into_the_outbox() {
    let ledger = TestLedger::new();
    let clock = ManualClock::new(1_000_000);
    let router = Router::start(RouterConfig::default(), ledger.clone(), clock).unwrap();
    let mut outbox = router.outbox_subscribe().unwrap();
    let id = ledger.add(1, Duration::from_secs(300));
    let j = job(id, Channel::Sms, "(425) 555-1234");
    assert!(router.has_route(Channel::Sms, &j.destination));
    router
        .admit(TenantId(0), "demo", "alice", Channel::Sms, &j.destination)
        .unwrap();
    router.try_reserve().unwrap().send(j);
    let m = outbox.recv().await.unwrap();
    assert_eq!(m.destination, "+14255551234");
    assert!(["97671", "69829", "51789", "99399"].contains(&m.sender.as_str()));
    assert!(m.text.starts_with("424242 is your Acme verification code"));
    assert_eq!(m.carrier, "sim-primary");
    settle().await;
    let last = ledger.last(id).unwrap();
    assert_eq!(last.0, DeliveryState::Delivered);
    assert_eq!(last.1, "sim-primary");
    let s = router.stats();
    assert_eq!((s.accepted, s.delivered, s.failed), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn voice_extensions_follow_the_dial_plan() {
    let ledger = TestLedger::new();
    let router =
        Router::start(RouterConfig::default(), ledger.clone(), ManualClock::new(0)).unwrap();
    let mut outbox = router.outbox_subscribe().unwrap();
    let cases = [
        ("425-555-1234 x5678", false, "then tones 5678 after connect"),
        (
            "425-555-1234 x@5678",
            false,
            "ask the operator to transfer to 5678",
        ),
        (
            "425-555-1234 ext. 5678",
            true,
            "ask the operator to transfer to 5678",
        ),
    ];
    for (n, (raw, operator, want)) in cases.into_iter().enumerate() {
        let id = ledger.add(n as u64, Duration::from_secs(300));
        let mut j = job(id, Channel::Voice, raw);
        j.operator_assistance = operator;
        router.try_reserve().unwrap().send(j);
        let m = outbox.recv().await.unwrap();
        assert!(m.text.contains(want), "{raw}: {}", m.text);
        assert_eq!(m.destination, "+14255551234");
        assert!(m.text.contains("4, 2, 4, 2, 4, 2"));
    }
    // SMS drops the extension.
    let id = ledger.add(10, Duration::from_secs(300));
    router
        .try_reserve()
        .unwrap()
        .send(job(id, Channel::Sms, "425-555-1234x5678"));
    let m = outbox.recv().await.unwrap();
    assert_eq!(m.destination, "+14255551234");
    assert!(!m.text.contains("5678"));
}

#[tokio::test(start_paused = true)]
async fn five_sends_per_destination_in_five_minutes_then_retry_after() {
    let ledger = TestLedger::new();
    let clock = ManualClock::new(10_000_000);
    let router = Router::start(RouterConfig::default(), ledger, clock.clone()).unwrap();
    let d = normalize(Channel::Sms, "+1 425 555 1234", &tenant()).unwrap();
    for i in 0..5 {
        assert_eq!(router.sends_left(&d), 5 - i);
        router
            .admit(TenantId(0), "demo", &format!("u{i}"), Channel::Sms, &d)
            .unwrap();
        clock.advance_s(10);
    }
    assert_eq!(router.sends_left(&d), 0);
    let e = router
        .admit(TenantId(0), "demo", "u9", Channel::Sms, &d)
        .unwrap_err();
    assert_eq!(e.scope, "destination");
    assert_eq!(e.retry_after_ms, 250_000);
    // The same number with an extension is the same destination.
    let dx = normalize(Channel::Sms, "+1 425 555 1234 x12", &tenant()).unwrap();
    assert!(
        router
            .admit(TenantId(0), "demo", "u9", Channel::Sms, &dx)
            .is_err()
    );
    clock.advance_ms(250_000);
    assert!(
        router
            .admit(TenantId(0), "demo", "u9", Channel::Sms, &d)
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_by_one_limit_counts_against_none() {
    let ledger = TestLedger::new();
    let clock = ManualClock::new(0);
    let mut cfg = RouterConfig::default();
    cfg.limits.subject = Limit::new(2, 60_000);
    let router = Router::start(cfg, ledger, clock).unwrap();
    let a = normalize(Channel::Sms, "+1 425 555 1234", &tenant()).unwrap();
    let b = normalize(Channel::Sms, "+1 425 555 1235", &tenant()).unwrap();
    let c = normalize(Channel::Sms, "+1 425 555 1236", &tenant()).unwrap();
    router
        .admit(TenantId(0), "demo", "bob", Channel::Sms, &a)
        .unwrap();
    router
        .admit(TenantId(0), "demo", "bob", Channel::Sms, &b)
        .unwrap();
    let e = router
        .admit(TenantId(0), "demo", "bob", Channel::Sms, &c)
        .unwrap_err();
    assert_eq!(e.scope, "subject");
    assert_eq!(router.sends_left(&c), 5, "the refused send was not counted");
}

#[tokio::test(start_paused = true)]
async fn prefix_and_country_limits_stop_pumping() {
    let ledger = TestLedger::new();
    let mut cfg = RouterConfig::default();
    cfg.limits.prefixes = vec![watchword_engine::delivery::PrefixLimit {
        prefix: "+44".into(),
        limit: Limit::new(3, 60_000),
    }];
    cfg.limits.country = Limit::new(4, 60_000);
    let router = Router::start(cfg, ledger, ManualClock::new(0)).unwrap();
    let gb = |n: u32| normalize(Channel::Sms, &format!("+44 7911 123{n:03}"), &tenant()).unwrap();
    for n in 0..3 {
        router
            .admit(TenantId(0), "demo", &format!("s{n}"), Channel::Sms, &gb(n))
            .unwrap();
    }
    let e = router
        .admit(TenantId(0), "demo", "s9", Channel::Sms, &gb(9))
        .unwrap_err();
    assert_eq!(e.scope, "prefix");
    let fr =
        |n: u32| normalize(Channel::Sms, &format!("+33 6 12 34 56 {n:02}"), &tenant()).unwrap();
    for n in 0..4 {
        router
            .admit(TenantId(0), "demo", &format!("f{n}"), Channel::Sms, &fr(n))
            .unwrap();
    }
    let e = router
        .admit(TenantId(0), "demo", "f9", Channel::Sms, &fr(9))
        .unwrap_err();
    assert_eq!(e.scope, "country");
    assert!(e.retry_after_ms > 0);
}

#[tokio::test(start_paused = true)]
async fn full_queue_is_an_immediate_refusal_and_drain_waits() {
    let ledger = TestLedger::new();
    let mut cfg = RouterConfig::default();
    cfg.queue_capacity = 3;
    cfg.carriers[0].simulated.latency_min_ms = 1_000;
    cfg.carriers[0].simulated.latency_max_ms = 1_000;
    let router = Router::start(cfg, ledger.clone(), ManualClock::new(0)).unwrap();
    let permits: Vec<_> = (0..3).map(|_| router.try_reserve().unwrap()).collect();
    let full = router.try_reserve().unwrap_err();
    assert!(full.retry_after_ms > 0);
    for (n, p) in permits.into_iter().enumerate() {
        let id = ledger.add(n as u64, Duration::from_secs(300));
        p.send(job(id, Channel::Sms, "+1 425 555 1234"));
    }
    assert_eq!(router.queue_depth(), 3);
    router.drain(Duration::from_secs(30)).await;
    assert_eq!(router.queue_depth(), 0);
    assert!(router.try_reserve().is_err(), "draining refuses new jobs");
    settle().await;
    assert_eq!(ledger.tally(), (3, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn routes_follow_channels_and_countries() {
    let ledger = TestLedger::new();
    let cfg = RouterConfig {
        carriers: vec![
            CarrierConfig {
                name: "fr-only".into(),
                channels: vec![Channel::Sms],
                countries: vec!["FR".into()],
                ..CarrierConfig::default()
            },
            CarrierConfig {
                name: "mail".into(),
                channels: vec![Channel::Email],
                senders: vec!["codes@example.com".into()],
                ..CarrierConfig::default()
            },
        ],
        ..RouterConfig::default()
    };
    let router = Router::start(cfg, ledger.clone(), ManualClock::new(0)).unwrap();
    let t = tenant();
    assert!(router.has_route(
        Channel::Sms,
        &normalize(Channel::Sms, "+33 6 12 34 56 78", &t).unwrap()
    ));
    assert!(!router.has_route(
        Channel::Sms,
        &normalize(Channel::Sms, "+1 425 555 1234", &t).unwrap()
    ));
    assert!(!router.has_route(
        Channel::Voice,
        &normalize(Channel::Voice, "+33 6 12 34 56 78", &t).unwrap()
    ));
    let mail = normalize(Channel::Email, "jane@example.com", &t).unwrap();
    assert!(router.has_route(Channel::Email, &mail));
    assert_eq!(router.carrier_name(CarrierSlot(1)), "mail");
    assert_eq!(router.carrier_name(CarrierSlot::NONE), "");
    let mut outbox = router.outbox_subscribe().unwrap();
    let id = ledger.add(1, Duration::from_secs(60));
    let mut j = job(id, Channel::Email, "jane@example.com");
    j.locale = "fr-FR".into();
    router.try_reserve().unwrap().send(j);
    let m = outbox.recv().await.unwrap();
    assert_eq!(m.sender, "codes@example.com");
    assert!(
        m.text
            .contains("Votre code de vérification Acme est 424242")
    );
    assert!(m.text.contains("1 minutes") || m.text.contains("Il expire"));
}

#[tokio::test(start_paused = true)]
async fn lost_messages_end_failed_after_the_receipt_timeout() {
    let ledger = TestLedger::new();
    let mut cfg = RouterConfig::default();
    cfg.carriers.truncate(1);
    cfg.carriers[0].simulated = SimulatedConfig {
        lost_rate: 1.0,
        ..SimulatedConfig::default()
    };
    cfg.receipt_timeout_ms = 5_000;
    let router = Router::start(cfg, ledger.clone(), ManualClock::new(0)).unwrap();
    let id = ledger.add(1, Duration::from_secs(300));
    router
        .try_reserve()
        .unwrap()
        .send(job(id, Channel::Sms, "+1 425 555 1234"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ledger.last(id).unwrap().0, DeliveryState::Sent);
    assert_eq!(router.stats().awaiting_receipt, 1);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let last = ledger.last(id).unwrap();
    assert_eq!(last.0, DeliveryState::Failed);
    assert!(last.2.unwrap().contains("no delivery receipt"));
    assert_eq!(router.stats().awaiting_receipt, 0);
}

#[tokio::test(start_paused = true)]
async fn senders_rotate_and_respect_their_own_rate() {
    let ledger = TestLedger::new();
    let mut cfg = RouterConfig::default();
    cfg.carriers.truncate(1);
    cfg.carriers[0].simulated.latency_max_ms = 0;
    cfg.carriers[0].simulated.latency_min_ms = 0;
    cfg.carriers[0].simulated.receipt_delay_ms = 0;
    cfg.senders.pools[0].rate_per_s = 2; // 4 short codes x 2/s = 8/s
    cfg.limits.destination = Limit::new(0, 1);
    let router = Router::start(cfg, ledger.clone(), ManualClock::new(0)).unwrap();
    let mut outbox = router.outbox_subscribe().unwrap();
    let start = tokio::time::Instant::now();
    for n in 0..40 {
        let id = ledger.add(n, Duration::from_secs(300));
        router
            .try_reserve()
            .unwrap()
            .send(job(id, Channel::Sms, "+1 425 555 1234"));
    }
    let mut per_sender = std::collections::HashMap::<String, usize>::new();
    for _ in 0..40 {
        let m = outbox.recv().await.unwrap();
        *per_sender.entry(m.sender.clone()).or_default() += 1;
    }
    let took = start.elapsed();
    assert_eq!(per_sender.len(), 4);
    assert!(per_sender.values().all(|&n| n == 10), "{per_sender:?}");
    // 40 messages at 8/s: about 5 s (the first 4 go at once).
    assert!(took >= Duration::from_millis(4_400), "{took:?}");
    let _ = Arc::clone(&ledger);
}

#[test]
fn the_configuration_round_trips_and_refuses_unknown_fields() {
    let cfg = RouterConfig::default();
    cfg.validate().unwrap();
    let json = serde_json::to_string(&cfg).unwrap();
    let back: RouterConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, cfg);
    // Every field has a default: a partial file is a whole configuration.
    let partial: RouterConfig =
        serde_json::from_str(r#"{"queue_capacity": 10, "carriers": [{"name": "x", "kind": "http", "http": {"url": "http://127.0.0.1:9/send"}}]}"#)
            .unwrap();
    assert_eq!(partial.queue_capacity, 10);
    assert_eq!(
        partial.carriers[0].max_in_flight,
        CarrierConfig::default().max_in_flight
    );
    partial.validate().unwrap();
    assert!(serde_json::from_str::<RouterConfig>(r#"{"queue_capacty": 10}"#).is_err());
    let mut bad = RouterConfig::default();
    bad.carriers[1].name = bad.carriers[0].name.clone();
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("duplicate")
    );
    let mut bad = RouterConfig::default();
    bad.retry.max_tries = 6;
    assert!(bad.validate().is_err());
    let mut bad = RouterConfig::default();
    bad.limits.subject = Limit::new(10, 8 * 24 * 3_600 * 1_000);
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("limits.subject.window_ms: at most")
    );
    // The source documents' sender pools are the defaults.
    assert_eq!(
        cfg.senders.pools[0].senders,
        ["97671", "69829", "51789", "99399"]
    );
    assert_eq!(cfg.senders.pools[1].senders, ["759731", "673801"]);
    assert_eq!(cfg.limits.destination, Limit::new(5, 300_000));
}
