//! The honesty tests of the open loop: a server that stalls for 1 s during a
//! 10 s run at 1,000 req/s shows up in response time (p99 >= 500 ms) but not in
//! service time; against a server that keeps up, every scheduled request is
//! sent and answered (counts, not wall time); flows route codes from the outbox.
//!
//! These tests must never use a non-loopback address.

mod common;

use common::{Mock, MockBackend, Stall, resp_server};
use std::sync::Arc;
use std::time::Duration;
use watchword_loadgen::mix::{Mix, Scenario};
use watchword_loadgen::run::{Mode, Pacing, RunConfig, run, scheduled_count};
use watchword_loadgen::target::RedisBackend;

fn redis(addr: String) -> Arc<RedisBackend> {
    Arc::new(RedisBackend {
        addr,
        ttl_s: 300,
        attempts: 5,
        queue: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_stall_shows_in_response_time_not_service_time() {
    for pacing in [Pacing::Connection, Pacing::Thread] {
        a_stall_shows_in_response_time(pacing).await;
    }
}

async fn a_stall_shows_in_response_time(pacing: Pacing) {
    let (addr, _) = resp_server(Some(Stall {
        after: Duration::from_secs(4),
        length: Duration::from_secs(1),
    }))
    .await;
    let cfg = RunConfig {
        mode: Mode::Open { rate: 1_000.0 },
        connections: 2,
        depth: 4,
        duration: Duration::from_secs(10),
        warmup: Duration::ZERO,
        mix: Mix::single(Scenario::Ping),
        pacing,
        ..RunConfig::default()
    };
    let r = run(redis(addr), cfg).await.unwrap();
    eprintln!("{pacing:?}\n{}", r.to_text());
    assert_eq!(r.errors, 0);
    assert_eq!(r.completed, 10_000);
    // ~10% of the requests were due during the stall: the p99 is deep in it.
    assert!(
        r.response.p99_us >= 500_000,
        "response p99 {} µs should show the stall",
        r.response.p99_us
    );
    // Only the 8 requests in flight when it began waited on the wire.
    assert!(
        r.service.p99_us < 100_000,
        "service p99 {} µs should not show the stall",
        r.service.p99_us
    );
    assert!(r.service.max_us >= 500_000, "the in-flight ones did wait");
    // Everything due during the stall was sent late, and counted.
    assert!(r.late_sends >= 800, "late sends {}", r.late_sends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scheduled_request_is_sent_when_the_server_keeps_up() {
    for pacing in [Pacing::Connection, Pacing::Thread] {
        every_scheduled_request_is_sent(pacing).await;
    }
}

async fn every_scheduled_request_is_sent(pacing: Pacing) {
    let (addr, served) = resp_server(None).await;
    let (rate, duration, warmup) = (2_000.0, Duration::from_secs(2), Duration::from_millis(500));
    let cfg = RunConfig {
        mode: Mode::Open { rate },
        connections: 4,
        depth: 2,
        duration,
        warmup,
        mix: Mix::single(Scenario::Ping),
        pacing,
        ..RunConfig::default()
    };
    let r = run(redis(addr), cfg).await.unwrap();
    let total = scheduled_count(warmup + duration, rate);
    let expected = total - scheduled_count(warmup, rate);
    assert_eq!(expected, 4_000);
    assert_eq!(r.errors, 0);
    // Counts over the fixed schedule: within ±1% of the target (in fact exact).
    assert!(
        r.completed.abs_diff(expected) * 100 <= expected,
        "completed {} of {expected}",
        r.completed
    );
    assert_eq!(r.completed, expected);
    assert_eq!(r.started, expected);
    // Every scheduled request reached the server (plus 2 SCRIPT LOADs per connection).
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), total + 8);
    assert_eq!(r.target_rate, Some(rate));
    // No start leaves before its time, and (the server keeping up) none
    // leaves more than a timer tick or two late.
    assert!(
        r.response.p50_us < 5_000,
        "{pacing:?}: response p50 {} us",
        r.response.p50_us
    );
    assert!(r.generator_cpu_us_per_request > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_keeps_depth_busy() {
    let (addr, _) = resp_server(None).await;
    let cfg = RunConfig {
        mode: Mode::Closed,
        connections: 2,
        depth: 4,
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(100),
        mix: Mix::single(Scenario::Ping),
        ..RunConfig::default()
    };
    let r = run(redis(addr), cfg).await.unwrap();
    assert!(r.completed > 100, "closed loop completed {}", r.completed);
    assert_eq!(r.late_sends, 0);
    assert_eq!(r.target_rate, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_get_their_codes_from_the_outbox_and_lost_codes_time_out() {
    let mock = Arc::new(Mock {
        delay: Duration::from_millis(5),
        lose_every: 10,
        outbox: Default::default(),
        codes: Default::default(),
        issued: Default::default(),
    });
    let cfg = RunConfig {
        mode: Mode::Open { rate: 500.0 },
        connections: 2,
        depth: 2,
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        mix: "flow=1".parse().unwrap(),
        flow_timeout: Duration::from_millis(200),
        ..RunConfig::default()
    };
    let r = run(Arc::new(MockBackend(mock)), cfg).await.unwrap();
    let f = r.flow.as_ref().expect("flow report");
    assert_eq!(f.started, 500);
    assert_eq!(f.approved, 450, "{:?}", f.errors);
    assert_eq!(f.errors.get("code_timeout"), Some(&50));
    assert!(f.delivery.p50_us >= 5_000, "delivery {:?}", f.delivery);
    assert!(f.end_to_end.p50_us >= f.delivery.p50_us);
    let v = r.op("flow:verify").unwrap();
    assert_eq!(v.outcomes.get("approved"), Some(&450));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mix_splits_by_weight_and_reports_every_op() {
    let mock = Arc::new(Mock {
        delay: Duration::from_millis(1),
        lose_every: 0,
        outbox: Default::default(),
        codes: Default::default(),
        issued: Default::default(),
    });
    let cfg = RunConfig {
        mode: Mode::Open { rate: 2_000.0 },
        connections: 2,
        depth: 2,
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        mix: "flow=80,wrong=10,resend=5,unknown=5".parse().unwrap(),
        pool_size: 100,
        ..RunConfig::default()
    };
    let r = run(Arc::new(MockBackend(mock)), cfg).await.unwrap();
    assert_eq!(r.completed, 2_000);
    let n = |name: &str| r.op(name).map_or(0, |o| o.count);
    assert_eq!(
        n("flow:issue") + n("wrong:verify") + n("resend") + n("unknown:verify"),
        2_000
    );
    assert!(
        (1_500..1_700).contains(&n("flow:issue")),
        "{}",
        n("flow:issue")
    );
    assert!((120..280).contains(&n("wrong:verify")));
    assert_eq!(
        r.op("unknown:verify").unwrap().outcomes.get("unknown"),
        Some(&n("unknown:verify"))
    );
    assert_eq!(
        r.op("wrong:verify").unwrap().outcomes.get("rejected"),
        Some(&n("wrong:verify"))
    );
    assert!((r.op("flow:issue").unwrap().target_rate.unwrap() - 1_600.0).abs() < 1e-6);
}
