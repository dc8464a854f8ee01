//! The pipeline's own guarantees, beyond the router's rules: a carrier's
//! window holds across the lanes that share it (on a multi-threaded runtime,
//! where a carrier has several), and a carrier whose send panics fails that
//! send without taking its lane, or any other message, down with it.
//!
//! The window test runs on real time with short sends and asserts nothing
//! about how long they took; the panic test runs on paused time.

#![allow(clippy::field_reassign_with_default)]

#[path = "delivery_support.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::TestLedger;
use watchword_engine::delivery::{
    BreakerState, Carrier, CarrierConfig, CarrierMessage, CarrierSlot, DeliveryJob, Limit,
    MessagePurpose, Receipt, Receipts, Router, RouterConfig, SendFuture, SendOutcome,
    SimulatedConfig, SlotHint, TenantDelivery, normalize,
};
use watchword_engine::{Channel, Code, ManualClock, TenantId};

fn job(id: watchword_engine::ChallengeId) -> DeliveryJob {
    let t = TenantDelivery::default();
    DeliveryJob {
        tenant: TenantId(0),
        id,
        slot_hint: SlotHint::NONE,
        channel: Channel::Email,
        destination: normalize(Channel::Email, "ann@example.com", &t).unwrap(),
        code: Code::from_parts(123456, 6).unwrap(),
        expires_at_ms: u64::MAX,
        locale: String::new(),
        service_name: "Acme".into(),
        avoid_carrier: CarrierSlot::NONE,
        operator_assistance: false,
        purpose: MessagePurpose::Code,
    }
}

fn config(carriers: Vec<CarrierConfig>) -> RouterConfig {
    let mut cfg = RouterConfig {
        carriers,
        ..RouterConfig::default()
    };
    cfg.limits.destination = Limit::new(0, 1);
    cfg.limits.subject = Limit::new(0, 1);
    cfg
}

/// Answers every send after 2 ms, counting the sends under way at once.
#[derive(Default)]
struct Counting {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Carrier for Counting {
    fn send(&self, msg: CarrierMessage, receipts: &Receipts) -> SendFuture {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        let now = Arc::clone(&self.now);
        let receipts = receipts.clone();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            now.fetch_sub(1, Ordering::SeqCst);
            receipts.report(msg.token, Receipt::Delivered);
            SendOutcome::Accepted
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carriers_window_holds_across_its_lanes() {
    let ledger = TestLedger::new();
    let carrier = Arc::new(Counting::default());
    let most = Arc::clone(&carrier.most);
    let cfg = config(vec![CarrierConfig {
        name: "windowed".into(),
        max_in_flight: 3,
        ..CarrierConfig::default()
    }]);
    let custom: Vec<(String, Arc<dyn Carrier>)> = vec![("windowed".into(), carrier)];
    let router =
        Router::start_with_carriers(cfg, ledger.clone(), ManualClock::new(0), custom).unwrap();
    // From two producer tasks, so that both lanes get messages.
    let producers: Vec<_> = (0..2u64)
        .map(|p| {
            let router = router.clone();
            let ledger = ledger.clone();
            tokio::spawn(async move {
                for i in 0..150u64 {
                    let id = ledger.add(p * 1_000 + i, Duration::from_secs(600));
                    router.try_reserve().unwrap().send(job(id));
                    if i % 10 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    for _ in 0..3_000 {
        if router.stats().delivered == 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(router.stats().delivered, 300);
    assert_eq!(ledger.tally(), (300, 0, 0));
    assert_eq!(
        most.load(Ordering::SeqCst),
        3,
        "never more than the window, and the window was used"
    );
    assert_eq!(router.queue_depth(), 0);
}

/// Panics in `send` for even tokens, and in the future's poll for odd ones.
struct Panicking;

impl Carrier for Panicking {
    fn send(&self, msg: CarrierMessage, _: &Receipts) -> SendFuture {
        assert!(msg.token.0 % 2 == 1, "a carrier bug in send");
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            panic!("a carrier bug in its future");
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_carrier_that_panics_fails_its_sends_and_its_lane_goes_on() {
    let ledger = TestLedger::new();
    let backup = SimulatedConfig {
        latency_min_ms: 5,
        latency_max_ms: 5,
        ..SimulatedConfig::default()
    };
    let cfg = config(vec![
        CarrierConfig {
            name: "buggy".into(),
            ..CarrierConfig::default()
        },
        CarrierConfig {
            name: "backup".into(),
            priority: 1,
            simulated: backup,
            ..CarrierConfig::default()
        },
    ]);
    let custom: Vec<(String, Arc<dyn Carrier>)> = vec![("buggy".into(), Arc::new(Panicking))];
    let router =
        Router::start_with_carriers(cfg, ledger.clone(), ManualClock::new(0), custom).unwrap();
    for n in 0..20 {
        let id = ledger.add(n, Duration::from_secs(600));
        router.try_reserve().unwrap().send(job(id));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..600 {
        if router.queue_depth() == 0 && router.stats().awaiting_receipt == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        ledger.tally(),
        (20, 0, 0),
        "every message went round the bug"
    );
    assert_eq!(ledger.regressions(), 0);
    assert_eq!(router.queue_depth(), 0);
    // The panics counted as failures: the breaker opened.
    assert_ne!(router.breaker_state("buggy"), Some(BreakerState::Closed));
}
