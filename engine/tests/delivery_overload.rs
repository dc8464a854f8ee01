//! Overload: delivery that cannot keep up. A flood of messages to a slow
//! carrier fills the router's bounded intake; from then on every new ISSUE is
//! refused at once (CAPACITY with a retry hint), never answered late, and
//! costs the person none of their sends; every message accepted still ends
//! delivered or failed.
//!
//! Runs on paused tokio time; the promptness checks read the tokio clock (a
//! refusal must not await) and the wall clock (a refusal must not spin).

#![allow(clippy::field_reassign_with_default)]

#[path = "delivery_support.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use support::TestLedger;
use watchword_engine::delivery::{
    CarrierConfig, CarrierSlot, DeliveryJob, Limit, MessagePurpose, Router, RouterConfig,
    SimulatedConfig, SlotHint, TenantDelivery, normalize,
};
use watchword_engine::{
    Channel, Code, DeliveryState, Engine, EngineConfig, EngineError, IssueParams, ManualClock,
    NullSink, TenantId,
};

/// One carrier answering in 500 ms, five sends at once: 10 messages a second.
fn slow() -> RouterConfig {
    let mut cfg = RouterConfig {
        carriers: vec![CarrierConfig {
            name: "slow".into(),
            max_in_flight: 5,
            simulated: SimulatedConfig {
                latency_min_ms: 500,
                latency_max_ms: 500,
                receipt_delay_ms: 100,
                ..SimulatedConfig::default()
            },
            ..CarrierConfig::default()
        }],
        queue_capacity: 100,
        ..RouterConfig::default()
    };
    cfg.limits.destination = Limit::new(0, 1);
    cfg.limits.subject = Limit::new(0, 1);
    cfg
}

fn job(id: watchword_engine::ChallengeId, n: u64) -> DeliveryJob {
    let t = TenantDelivery::default();
    DeliveryJob {
        tenant: TenantId(0),
        id,
        slot_hint: SlotHint::NONE,
        channel: Channel::Sms,
        destination: normalize(Channel::Sms, &format!("+1 425 555 {:04}", n % 10_000), &t).unwrap(),
        code: Code::from_parts(123456, 6).unwrap(),
        expires_at_ms: u64::MAX,
        locale: String::new(),
        service_name: "Acme".into(),
        avoid_carrier: CarrierSlot::NONE,
        operator_assistance: false,
        purpose: MessagePurpose::Code,
    }
}

#[tokio::test(start_paused = true)]
async fn a_flood_on_a_slow_carrier_is_refused_at_once_and_every_accepted_message_ends() {
    let ledger = TestLedger::new();
    let router = Router::start(slow(), ledger.clone(), ManualClock::new(0)).unwrap();
    let mut accepted = 0u64;
    let mut refused = 0u64;
    let mut slowest = Duration::ZERO;
    let mut last_hint = 0;
    // Thirty seconds of 200 messages a second against a carrier that does 10.
    for tick in 0..300u64 {
        let t0 = tokio::time::Instant::now();
        for k in 0..20u64 {
            let n = tick * 20 + k;
            let j = job(support::id(n), n);
            let wall = std::time::Instant::now();
            match router.try_reserve() {
                Ok(p) => {
                    ledger.add(n, Duration::from_secs(600));
                    p.send(j);
                    accepted += 1;
                }
                Err(full) => {
                    assert!(full.retry_after_ms >= 100, "a retry hint: {full:?}");
                    last_hint = full.retry_after_ms;
                    refused += 1;
                }
            }
            slowest = slowest.max(wall.elapsed());
        }
        assert_eq!(
            tokio::time::Instant::now(),
            t0,
            "a reservation or a refusal never waits"
        );
        assert!(
            router.queue_depth() <= 100,
            "the intake holds its bound: {}",
            router.queue_depth()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        slowest < Duration::from_millis(50),
        "slowest reservation or refusal took {slowest:?}"
    );
    // 100 at once, then about ten a second as the carrier frees slots.
    assert!(
        (300..=500).contains(&accepted),
        "accepted {accepted}, refused {refused}"
    );
    assert_eq!(accepted + refused, 6_000);
    // The hint follows the rate the router finishes messages at: a
    // twentieth of its 100 slots at about 10 a second is about 500 ms.
    assert!((300..=1_000).contains(&last_hint), "hint {last_hint} ms");
    // Every accepted message ends, delivered (nothing fails here).
    for _ in 0..120 {
        if router.queue_depth() == 0 && router.stats().awaiting_receipt == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let s = router.stats();
    assert_eq!(s.accepted, accepted);
    assert_eq!(s.delivered + s.failed, accepted);
    assert_eq!(ledger.tally(), (accepted as usize, 0, 0));
    assert_eq!(ledger.regressions(), 0);
}

fn issue<'a>(subject: &'a str, destination: &'a str) -> IssueParams<'a> {
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

#[tokio::test(start_paused = true)]
async fn issue_answers_capacity_at_once_when_delivery_cannot_keep_up() {
    let mut config = EngineConfig::default();
    config.router = slow();
    config.router.queue_capacity = 40;
    config.router.limits.destination = Limit::new(5, 300_000);
    let clock = ManualClock::new(1_700_000_000_000);
    let engine = Engine::start(config, clock, Arc::new(NullSink)).unwrap();
    let demo = engine.tenant_id("demo").unwrap();
    // The phone metadata loads on first use (hundreds of ms): not the router's.
    normalize(Channel::Sms, "+1 425 555 0000", &TenantDelivery::default()).unwrap();
    let t0 = tokio::time::Instant::now();
    let mut issued = Vec::new();
    let mut refused = Vec::new();
    for n in 0..400u32 {
        let subject = format!("user{n}");
        let destination = format!("+1 425 555 {n:04}");
        let wall = std::time::Instant::now();
        match engine.issue(demo, &issue(&subject, &destination)) {
            Ok(i) => issued.push(i.id),
            Err(EngineError::Capacity {
                retry_after_ms,
                message,
            }) => {
                assert!(retry_after_ms > 0, "{message}");
                assert!(message.contains("delivery queue"), "{message}");
                refused.push(destination);
            }
            Err(e) => panic!("unexpected refusal: {e:?}"),
        }
        assert!(
            wall.elapsed() < Duration::from_millis(50),
            "ISSUE {n} took {:?}",
            wall.elapsed()
        );
    }
    assert_eq!(tokio::time::Instant::now(), t0, "no ISSUE waited");
    assert_eq!(issued.len(), 40, "the intake's capacity, then refusals");
    assert_eq!(refused.len(), 360);
    // A refusal for capacity cost the person none of their five sends.
    let t = TenantDelivery::default();
    let d = normalize(Channel::Sms, &refused[0], &t).unwrap();
    assert_eq!(engine.router().sends_left(&d), 5);
    // Every accepted message ends delivered.
    tokio::time::sleep(Duration::from_secs(30)).await;
    for id in &issued {
        let s = engine.status(demo, *id).unwrap();
        assert_eq!(s.delivery, DeliveryState::Delivered, "{id:?}");
    }
    // With room again, ISSUE is accepted.
    engine
        .issue(demo, &issue("late", "+1 425 555 9999"))
        .unwrap();
}
