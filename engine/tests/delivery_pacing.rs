//! Carrier throughput limits: a carrier limited to 100 messages/s receives 100
//! (within ±2%) in every second, and a carrier whose pacing backlog is too long
//! counts as saturated (admission answers RATE_LIMITED per carrier).
//!
//! The regular tests run on paused tokio time and count per simulated second;
//! the `#[ignore]`d one measures the same over 10 real seconds and prints the
//! figures (`cargo test -p watchword-engine --test delivery_pacing -- --ignored --nocapture`).

#[path = "delivery_support.rs"]
mod support;

use std::time::Duration;

use support::TestLedger;
use tokio::time::Instant;
use watchword_engine::delivery::{
    CarrierConfig, CarrierSlot, DeliveryJob, Limit, Router, RouterConfig, SimulatedConfig,
    SlotHint, TenantDelivery, normalize,
};
use watchword_engine::{Channel, Code, ManualClock, TenantId};

fn limited(per_s: u32) -> RouterConfig {
    let mut cfg = RouterConfig {
        carriers: vec![CarrierConfig {
            name: "limited".into(),
            throughput_per_s: per_s,
            simulated: SimulatedConfig {
                latency_min_ms: 0,
                latency_max_ms: 0,
                receipt_delay_ms: 0,
                ..SimulatedConfig::default()
            },
            ..CarrierConfig::default()
        }],
        ..RouterConfig::default()
    };
    cfg.limits.destination = Limit::new(0, 1);
    cfg.limits.subject = Limit::new(0, 1);
    // The short codes must not be the bottleneck here.
    for p in &mut cfg.senders.pools {
        p.rate_per_s = 0;
    }
    cfg
}

fn submit(router: &Router, ledger: &TestLedger, n: u64) {
    let t = TenantDelivery::default();
    let destination = normalize(Channel::Sms, "+1 425 555 1234", &t).unwrap();
    for i in 0..n {
        let id = ledger.add(i, Duration::from_secs(600));
        router.try_reserve().unwrap().send(DeliveryJob {
            tenant: TenantId(0),
            id,
            slot_hint: SlotHint::NONE,
            channel: Channel::Sms,
            destination: destination.clone(),
            code: Code::from_parts(1234, 4).unwrap(),
            expires_at_ms: u64::MAX,
            locale: String::new(),
            service_name: "Acme".into(),
            avoid_carrier: CarrierSlot::NONE,
            operator_assistance: false,
            purpose: watchword_engine::delivery::MessagePurpose::Code,
        });
    }
}

/// Counts outbox arrivals per second for `secs` seconds after a 1 s warm-up.
async fn per_second(router: &Router, secs: usize) -> Vec<usize> {
    let mut outbox = router.outbox_subscribe().unwrap();
    let start = Instant::now();
    let mut counts = vec![0usize; secs + 1];
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), outbox.recv()).await {
        let s = start.elapsed().as_secs_f64();
        let k = s as usize;
        if k < counts.len() {
            counts[k] += 1;
        } else {
            break;
        }
    }
    counts.remove(0);
    counts
}

#[tokio::test(start_paused = true)]
async fn a_carrier_limited_to_100_per_second_gets_100_each_second() {
    let ledger = TestLedger::new();
    let router = Router::start(limited(100), ledger.clone(), ManualClock::new(0)).unwrap();
    submit(&router, &ledger, 1_500);
    let counts = per_second(&router, 10).await;
    for (s, &n) in counts.iter().enumerate() {
        assert!(
            (98..=102).contains(&n),
            "second {}: {n} ({counts:?})",
            s + 1
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_long_pacing_backlog_refuses_admission_per_carrier() {
    let ledger = TestLedger::new();
    let mut cfg = limited(10);
    cfg.carriers[0].max_queue_delay_ms = 1_000;
    let router = Router::start(cfg, ledger.clone(), ManualClock::new(0)).unwrap();
    let t = TenantDelivery::default();
    let d = normalize(Channel::Sms, "+1 425 555 9999", &t).unwrap();
    assert!(
        router
            .admit(TenantId(0), "demo", "x", Channel::Sms, &d)
            .is_ok()
    );
    submit(&router, &ledger, 30);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let e = router
        .admit(TenantId(0), "demo", "x", Channel::Sms, &d)
        .unwrap_err();
    assert_eq!(e.scope, "carrier");
    assert!(e.retry_after_ms > 0);
    // Everything queued is still delivered, at 10/s.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(router.stats().delivered, 30);
    assert!(
        router
            .admit(TenantId(0), "demo", "x", Channel::Sms, &d)
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes 11 real seconds; prints per-second figures"]
async fn measured_100_per_second_over_10_real_seconds() {
    let ledger = TestLedger::new();
    let mut cfg = limited(100);
    cfg.carriers[0].max_queue_delay_ms = 60_000;
    let router = Router::start(cfg, ledger.clone(), ManualClock::new(0)).unwrap();
    submit(&router, &ledger, 1_300);
    let counts = per_second(&router, 10).await;
    let total: usize = counts.iter().sum();
    let worst = counts
        .iter()
        .map(|&n| (n as f64 - 100.0).abs())
        .fold(0.0, f64::max);
    println!("per-second counts over 10 s: {counts:?}; total {total}; worst deviation {worst}%");
    for &n in &counts {
        assert!((98..=102).contains(&n), "{counts:?}");
    }
}
