//! Fault injection through the router: a primary carrier down, 30% random
//! failures, throttling, a carrier that never answers, expiry and approval
//! mid-delivery. Every run checks that accepted = delivered + failed, that
//! nothing was sent once the challenge stopped being deliverable, that the
//! retry budget (5 tries within 5 minutes) held, and where it applies that
//! traffic returned to the primary after it recovered.
//!
//! Runs on paused tokio time (deterministic, fast); it must never assert on
//! wall-clock timing.

#![allow(clippy::field_reassign_with_default)]

#[path = "delivery_support.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::{Recording, TestLedger, tries_per_id};
use watchword_engine::delivery::{
    BreakerState, Carrier, CarrierConfig, CarrierSlot, DeliveryJob, Limit, OutageMode, Router,
    RouterConfig, SimulatedCarrier, SimulatedConfig, SlotHint, TenantDelivery, normalize,
};
use watchword_engine::{ChallengeId, Channel, Code, DeliveryState, ManualClock, TenantId};

struct Rig {
    router: Router,
    ledger: Arc<TestLedger>,
    sims: Vec<Arc<SimulatedCarrier>>,
    recs: Vec<Arc<Recording>>,
    next: u64,
}

fn sim(latency_ms: u64) -> SimulatedConfig {
    SimulatedConfig {
        latency_min_ms: latency_ms,
        latency_max_ms: latency_ms,
        receipt_delay_ms: 50,
        ..SimulatedConfig::default()
    }
}

/// Two SMS carriers, "primary" (priority 0) and "backup" (priority 1).
fn rig(
    primary: SimulatedConfig,
    backup: SimulatedConfig,
    tweak: impl FnOnce(&mut RouterConfig),
) -> Rig {
    let ledger = TestLedger::new();
    let carrier = |name: &str, priority: u8| CarrierConfig {
        name: name.into(),
        priority,
        timeout_ms: 2_000,
        ..CarrierConfig::default()
    };
    let mut cfg = RouterConfig {
        carriers: vec![carrier("primary", 0), carrier("backup", 1)],
        ..RouterConfig::default()
    };
    cfg.limits.destination = Limit::new(0, 1);
    cfg.limits.subject = Limit::new(0, 1);
    tweak(&mut cfg);
    let mut sims = Vec::new();
    let mut recs = Vec::new();
    let mut custom: Vec<(String, Arc<dyn Carrier>)> = Vec::new();
    for (c, s) in cfg.carriers.iter().zip([primary, backup]) {
        let sim = Arc::new(SimulatedCarrier::new(&c.name, s, None));
        let rec = Recording::new(Arc::new(Arc::clone(&sim)), Arc::clone(&ledger));
        custom.push((c.name.clone(), rec.clone()));
        sims.push(sim);
        recs.push(rec);
    }
    let router =
        Router::start_with_carriers(cfg, ledger.clone(), ManualClock::new(0), custom).unwrap();
    Rig {
        router,
        ledger,
        sims,
        recs,
        next: 0,
    }
}

impl Rig {
    fn send(&mut self, ttl: Duration) -> ChallengeId {
        self.send_avoiding(ttl, CarrierSlot::NONE)
    }

    fn send_avoiding(&mut self, ttl: Duration, avoid: CarrierSlot) -> ChallengeId {
        self.next += 1;
        let id = self.ledger.add(self.next, ttl);
        let t = TenantDelivery::default();
        let raw = format!("+1 425 555 {:04}", self.next % 10_000);
        let destination = normalize(Channel::Sms, &raw, &t).unwrap();
        self.router
            .admit(TenantId(0), "demo", "subject", Channel::Sms, &destination)
            .unwrap();
        self.router.try_reserve().unwrap().send(DeliveryJob {
            tenant: TenantId(0),
            id,
            slot_hint: SlotHint::NONE,
            channel: Channel::Sms,
            destination,
            code: Code::from_parts(123456, 6).unwrap(),
            expires_at_ms: u64::MAX,
            locale: String::new(),
            service_name: "Acme".into(),
            avoid_carrier: avoid,
            operator_assistance: false,
            purpose: watchword_engine::delivery::MessagePurpose::Code,
        });
        id
    }

    /// Lets paused time run until every job has ended (or 20 simulated minutes).
    async fn settle(&self) {
        for _ in 0..1200 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if self.router.queue_depth() == 0 && self.router.stats().awaiting_receipt == 0 {
                break;
            }
        }
    }

    fn count(&self, i: usize) -> u64 {
        self.recs[i].count()
    }

    /// The invariants every fault run must keep.
    fn check(&self) {
        let (delivered, failed, unfinished) = self.ledger.tally();
        let s = self.router.stats();
        assert_eq!(
            unfinished, 0,
            "every accepted message ends delivered or failed"
        );
        assert_eq!(
            s.accepted as usize,
            delivered + failed,
            "accepted = delivered + failed"
        );
        assert_eq!(s.delivered as usize, delivered);
        assert_eq!(s.failed as usize, failed);
        assert_eq!(
            self.ledger.regressions(),
            0,
            "no state went backwards or ended twice"
        );
        for r in &self.recs {
            assert_eq!(
                r.violations(),
                0,
                "a send happened after the challenge stopped being deliverable"
            );
        }
        let recs: Vec<&Recording> = self.recs.iter().map(|r| &**r).collect();
        for (id, (tries, first, last)) in tries_per_id(&recs) {
            assert!(tries <= 5, "{id:?} got {tries} tries");
            assert!(
                last - first <= Duration::from_secs(300),
                "{id:?} tried over {:?}",
                last - first
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn primary_down_fails_over_then_traffic_returns_after_recovery() {
    let mut rig = rig(sim(20), sim(20), |_| {});
    rig.sims[0].set_outage(Some(OutageMode::Fail));
    // A steady stream (one every 50 ms), so the breaker can learn.
    for _ in 0..100 {
        rig.send(Duration::from_secs(300));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.settle().await;
    rig.check();
    assert_eq!(
        rig.ledger.tally(),
        (100, 0, 0),
        "the backup carried everything"
    );
    assert_ne!(
        rig.router.breaker_state("primary"),
        Some(BreakerState::Closed)
    );
    let primary_tries_while_down = rig.count(0);
    assert!(
        primary_tries_while_down < 100,
        "the open breaker kept traffic off: {primary_tries_while_down}"
    );
    assert_eq!(rig.sims[0].counters().accepted.load(Ordering::Relaxed), 0);

    // Recovery: after the cooldown one probe closes the breaker.
    rig.sims[0].set_outage(None);
    tokio::time::sleep(Duration::from_secs(130)).await;
    rig.send(Duration::from_secs(300));
    rig.settle().await;
    assert_eq!(
        rig.router.breaker_state("primary"),
        Some(BreakerState::Closed)
    );
    let backup_before = rig.count(1);
    let primary_before = rig.count(0);
    for _ in 0..50 {
        rig.send(Duration::from_secs(300));
    }
    rig.settle().await;
    rig.check();
    assert_eq!(
        rig.count(0) - primary_before,
        50,
        "traffic is back on the primary"
    );
    assert_eq!(rig.count(1), backup_before);
    assert_eq!(rig.ledger.tally(), (151, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn thirty_percent_random_failures_are_retried_within_budget() {
    let flaky = SimulatedConfig {
        failure_rate: 0.3,
        ..sim(10)
    };
    let mut rig = rig(flaky.clone(), flaky, |c| {
        // Keep both breakers mostly closed: this run is about retries.
        for k in &mut c.carriers {
            k.breaker.failure_threshold = 50;
        }
    });
    for _ in 0..500 {
        rig.send(Duration::from_secs(300));
    }
    rig.settle().await;
    rig.check();
    let (delivered, failed, _) = rig.ledger.tally();
    // P(5 failures in a row) = 0.3^5 = 0.24%: expect about one.
    assert!(delivered >= 490, "delivered {delivered}, failed {failed}");
    let s = rig.router.stats();
    assert!(s.tries > 500 && s.tries < 900, "tries {}", s.tries);
    // Failover spreads retries onto the backup.
    assert!(rig.count(1) > 50, "backup got {}", rig.count(1));
}

#[tokio::test(start_paused = true)]
async fn a_throttling_carrier_is_skipped_for_its_retry_after() {
    let throttling = SimulatedConfig {
        throttle_rate: 1.0,
        throttle_retry_after_ms: 10_000,
        ..sim(5)
    };
    let mut rig = rig(throttling, sim(5), |_| {});
    for _ in 0..50 {
        rig.send(Duration::from_secs(300));
    }
    rig.settle().await;
    rig.check();
    assert_eq!(rig.ledger.tally(), (50, 0, 0));
    // Throttling is not a failure: the breaker stays closed, and the carrier is
    // left alone for its Retry-After (only the first wave of sends hit it).
    assert_eq!(
        rig.router.breaker_state("primary"),
        Some(BreakerState::Closed)
    );
    assert!(
        rig.count(0) <= 50,
        "primary throttled {} times",
        rig.count(0)
    );
    let throttled_before = rig.count(0);
    for _ in 0..20 {
        rig.send(Duration::from_secs(300));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rig.count(0), throttled_before, "still inside Retry-After");
    rig.settle().await;
    rig.check();
}

#[tokio::test(start_paused = true)]
async fn a_lone_throttling_carrier_is_waited_for_not_failed() {
    let mut rig = rig(
        SimulatedConfig {
            throttle_rate: 0.3,
            throttle_retry_after_ms: 3_000,
            ..sim(5)
        },
        sim(5),
        |c| c.carriers.truncate(1),
    );
    for _ in 0..40 {
        rig.send(Duration::from_secs(300));
    }
    rig.settle().await;
    rig.check();
    let (delivered, failed, _) = rig.ledger.tally();
    assert!(delivered >= 38, "delivered {delivered}, failed {failed}");
}

#[tokio::test(start_paused = true)]
async fn a_carrier_that_never_answers_times_out_and_opens_its_breaker() {
    let mut rig = rig(sim(5), sim(5), |_| {});
    rig.sims[0].set_outage(Some(OutageMode::Hang));
    for _ in 0..60 {
        rig.send(Duration::from_secs(300));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.settle().await;
    rig.check();
    assert_eq!(rig.ledger.tally(), (60, 0, 0));
    assert_ne!(
        rig.router.breaker_state("primary"),
        Some(BreakerState::Closed)
    );
    let hung = rig.sims[0].counters().hung.load(Ordering::Relaxed);
    assert!((5..60).contains(&hung), "hung {hung}");
    // Recovery brings traffic back.
    rig.sims[0].set_outage(None);
    tokio::time::sleep(Duration::from_secs(130)).await;
    rig.send(Duration::from_secs(300));
    rig.settle().await;
    let before = rig.count(0);
    for _ in 0..10 {
        rig.send(Duration::from_secs(300));
    }
    rig.settle().await;
    rig.check();
    assert_eq!(rig.count(0) - before, 10);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_sent_after_expiry_or_approval() {
    let down = SimulatedConfig {
        failure_rate: 1.0,
        ..sim(100)
    };
    let mut rig = rig(down.clone(), down, |c| {
        c.retry.base_backoff_ms = 2_000;
        for k in &mut c.carriers {
            k.breaker.failure_threshold = 1_000;
        }
    });
    // Expire during the retries.
    let expiring: Vec<_> = (0..20).map(|_| rig.send(Duration::from_secs(3))).collect();
    // Approved during the retries.
    let approved: Vec<_> = (0..20)
        .map(|_| rig.send(Duration::from_secs(300)))
        .collect();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for id in &approved {
        rig.ledger.approve(*id);
    }
    rig.settle().await;
    rig.check();
    for id in expiring.iter().chain(&approved) {
        let (state, _, reason) = rig.ledger.last(*id).unwrap();
        assert_eq!(state, DeliveryState::Failed);
        assert!(reason.unwrap().contains("no longer pending"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_queue_never_sends_expired_challenges() {
    let mut rig = rig(sim(1_000), sim(1_000), |c| {
        c.carriers.truncate(1);
        c.carriers[0].max_in_flight = 1;
    });
    for _ in 0..20 {
        rig.send(Duration::from_millis(5_500));
    }
    rig.settle().await;
    rig.check();
    let (delivered, failed, _) = rig.ledger.tally();
    // One send a second: at 0, 1, 2, 3, 4 and 5 s; the rest expired in the queue.
    assert_eq!((delivered, failed), (6, 14));
    assert_eq!(rig.count(0), 6);
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_holds_five_tries_within_five_minutes() {
    let down = SimulatedConfig {
        failure_rate: 1.0,
        ..sim(10)
    };
    // Short backoffs: the try count is the limit.
    let mut rig = rig(down.clone(), down.clone(), |c| {
        for k in &mut c.carriers {
            k.breaker.failure_threshold = 1_000;
        }
    });
    for _ in 0..30 {
        rig.send(Duration::from_secs(3_600));
    }
    rig.settle().await;
    rig.check();
    assert_eq!(rig.ledger.tally(), (0, 30, 0));
    assert_eq!(rig.router.stats().tries, 150, "exactly five tries each");
    let (_, _, reason) = rig.ledger.last(support::id(1)).unwrap();
    assert!(reason.unwrap().contains("all 5 tries failed"));

    // Long backoffs: the five-minute budget is the limit.
    let mut rig = rig_long(down);
    for _ in 0..10 {
        rig.send(Duration::from_secs(3_600));
    }
    rig.settle().await;
    rig.check();
    assert_eq!(rig.ledger.tally(), (0, 10, 0));
    let (_, _, reason) = rig.ledger.last(support::id(1)).unwrap();
    assert!(reason.unwrap().contains("retry budget exhausted"));
}

fn rig_long(down: SimulatedConfig) -> Rig {
    rig(down.clone(), down, |c| {
        c.retry.base_backoff_ms = 60_000;
        c.retry.max_backoff_ms = 240_000;
        for k in &mut c.carriers {
            k.breaker.failure_threshold = 1_000;
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_resend_prefers_another_carrier_than_the_last() {
    let mut rig = rig(sim(5), sim(5), |_| {});
    for _ in 0..10 {
        rig.send_avoiding(Duration::from_secs(300), CarrierSlot(0));
    }
    rig.settle().await;
    rig.check();
    assert_eq!((rig.count(0), rig.count(1)), (0, 10));
    for _ in 0..10 {
        rig.send_avoiding(Duration::from_secs(300), CarrierSlot(1));
    }
    rig.settle().await;
    assert_eq!((rig.count(0), rig.count(1)), (10, 10));
}

#[tokio::test(start_paused = true)]
async fn rejections_end_at_once_and_weights_spread_traffic() {
    let mut rig = rig(
        SimulatedConfig {
            reject_rate: 1.0,
            ..sim(5)
        },
        sim(5),
        |c| c.carriers.truncate(1),
    );
    let id = rig.send(Duration::from_secs(300));
    rig.settle().await;
    rig.check();
    let (state, _, reason) = rig.ledger.last(id).unwrap();
    assert_eq!(state, DeliveryState::Failed);
    assert!(reason.unwrap().contains("rejected"));
    assert_eq!(rig.count(0), 1, "a rejection is final");

    let mut rig = rig_weights();
    for _ in 0..1000 {
        rig.send(Duration::from_secs(300));
    }
    rig.settle().await;
    rig.check();
    let (a, b) = (rig.count(0), rig.count(1));
    assert_eq!(a + b, 1000);
    assert!((700..=800).contains(&a), "3:1 weights gave {a}:{b}");
}

fn rig_weights() -> Rig {
    rig(sim(1), sim(1), |c| {
        c.carriers[1].priority = 0;
        c.carriers[0].weight = 3;
        c.carriers[1].weight = 1;
    })
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_outage_moves_traffic_and_it_comes_back_after() {
    let scheduled = SimulatedConfig {
        outages: vec![watchword_engine::delivery::OutageConfig {
            start_ms: 0,
            duration_ms: 10_000,
            mode: OutageMode::Fail,
        }],
        ..sim(5)
    };
    let mut rig = rig(scheduled, sim(5), |c| {
        for k in &mut c.carriers {
            k.breaker.cooldown_ms = 2_000;
            k.breaker.max_cooldown_ms = 2_000;
        }
    });
    for _ in 0..40 {
        rig.send(Duration::from_secs(300));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.settle().await;
    assert_eq!(rig.sims[0].counters().accepted.load(Ordering::Relaxed), 0);
    // The outage is over; a probe closes the breaker, then the primary carries all.
    tokio::time::sleep(Duration::from_secs(5)).await;
    rig.send(Duration::from_secs(300));
    rig.settle().await;
    let before = rig.count(0);
    for _ in 0..20 {
        rig.send(Duration::from_secs(300));
    }
    rig.settle().await;
    rig.check();
    assert_eq!(rig.count(0) - before, 20);
    assert_eq!(rig.ledger.tally(), (61, 0, 0));
}
